//! A readable line diff of two resources' YAML, as `weftctl apply --dry-run` shows it.
//!
//! Unified style: each hunk starts with `@@ -old_start,old_len +new_start,new_len @@`, then its lines
//! prefixed with `-` (removed), `+` (added) or ` ` (context, two lines around each change).

use super::types::Resource;

/// Lines of unchanged context shown around each change.
const CONTEXT: usize = 2;
/// Largest table the longest-common-subsequence pass may build (after trimming the common start and
/// end); beyond it the changed middle is shown as removed then added, which is still correct.
const MAX_TABLE: usize = 4 << 20;

/// The diff from `old` to `new` (`None`: absent, so everything is added or removed); empty when equal.
pub fn diff(old: Option<&Resource>, new: Option<&Resource>) -> String {
    let a = old.map(Resource::to_yaml).unwrap_or_default();
    let b = new.map(Resource::to_yaml).unwrap_or_default();
    diff_lines(&a, &b)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Same,
    Removed,
    Added,
}

/// The diff of two texts, line by line.
pub(crate) fn diff_lines(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let ops = edit_script(&a, &b);
    render(&ops, &a, &b)
}

/// The operations turning `a` into `b`, in order.
fn edit_script(a: &[&str], b: &[&str]) -> Vec<Op> {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (mid_a, mid_b) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut ops = vec![Op::Same; prefix];
    ops.extend(middle(mid_a, mid_b));
    ops.extend(std::iter::repeat_n(Op::Same, suffix));
    ops
}

/// Longest common subsequence over the part that differs.
fn middle(a: &[&str], b: &[&str]) -> Vec<Op> {
    let (n, m) = (a.len(), b.len());
    if (n + 1).saturating_mul(m + 1) > MAX_TABLE {
        let mut ops = vec![Op::Removed; n];
        ops.extend(std::iter::repeat_n(Op::Added, m));
        return ops;
    }
    // lcs[i * (m + 1) + j]: length of the LCS of a[i..] and b[j..].
    let width = m + 1;
    let mut lcs = vec![0u32; (n + 1) * width];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i * width + j] = if a[i] == b[j] {
                lcs[(i + 1) * width + j + 1] + 1
            } else {
                lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
            };
        }
    }
    let mut ops = Vec::with_capacity(n + m);
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push(Op::Same);
            i += 1;
            j += 1;
        } else if j == m || (i < n && lcs[(i + 1) * width + j] >= lcs[i * width + j + 1]) {
            ops.push(Op::Removed);
            i += 1;
        } else {
            ops.push(Op::Added);
            j += 1;
        }
    }
    ops
}

/// Groups changes into hunks; changes closer than twice the context share one.
fn hunks(ops: &[Op]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (k, _) in ops.iter().enumerate().filter(|(_, op)| **op != Op::Same) {
        let start = k.saturating_sub(CONTEXT);
        let end = (k + CONTEXT + 1).min(ops.len());
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = end,
            _ => out.push((start, end)),
        }
    }
    out
}

fn render(ops: &[Op], a: &[&str], b: &[&str]) -> String {
    let mut out = String::new();
    // Lines of a and b before position k of the script.
    let mut before = vec![(0usize, 0usize); ops.len() + 1];
    for (k, op) in ops.iter().enumerate() {
        let (i, j) = before[k];
        before[k + 1] = match op {
            Op::Same => (i + 1, j + 1),
            Op::Removed => (i + 1, j),
            Op::Added => (i, j + 1),
        };
    }
    for (start, end) in hunks(ops) {
        let (a0, b0) = before[start];
        let (a1, b1) = before[end];
        out.push_str(&format!(
            "@@ -{} +{} @@\n",
            range(a0, a1 - a0),
            range(b0, b1 - b0)
        ));
        for k in start..end {
            let (i, j) = before[k];
            let (mark, line) = match ops[k] {
                Op::Same => (' ', a[i]),
                Op::Removed => ('-', a[i]),
                Op::Added => ('+', b[j]),
            };
            out.push(mark);
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `start,len` as unified diffs write it: 1-based, and the line before when the range is empty.
fn range(lines_before: usize, len: usize) -> String {
    let start = if len == 0 {
        lines_before
    } else {
        lines_before + 1
    };
    format!("{start},{len}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_documents;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(diff_lines("a\nb\n", "a\nb\n"), "");
        assert_eq!(diff_lines("", ""), "");
    }

    #[test]
    fn one_changed_line_with_context() {
        let a = "1\n2\n3\n4\n5\n6\n7\n";
        let b = "1\n2\n3\nfour\n5\n6\n7\n";
        assert_eq!(
            diff_lines(a, b),
            "@@ -2,5 +2,5 @@\n 2\n 3\n-4\n+four\n 5\n 6\n"
        );
    }

    #[test]
    fn distant_changes_make_separate_hunks() {
        let a = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n";
        let b = "A\nb\nc\nd\ne\nf\ng\nh\ni\nJ\n";
        assert_eq!(
            diff_lines(a, b),
            "@@ -1,3 +1,3 @@\n-a\n+A\n b\n c\n@@ -8,3 +8,3 @@\n h\n i\n-j\n+J\n"
        );
    }

    #[test]
    fn close_changes_share_a_hunk() {
        let d = diff_lines("a\nb\nc\nd\ne\n", "A\nb\nc\nd\nE\n");
        assert_eq!(d.matches("@@ -").count(), 1, "{d}");
    }

    #[test]
    fn pure_additions_and_removals() {
        assert_eq!(diff_lines("", "x\ny\n"), "@@ -0,0 +1,2 @@\n+x\n+y\n");
        assert_eq!(diff_lines("x\n", ""), "@@ -1,1 +0,0 @@\n-x\n");
        assert_eq!(
            diff_lines("a\nb\n", "a\nnew\nb\n"),
            "@@ -1,2 +1,3 @@\n a\n+new\n b\n"
        );
    }

    #[test]
    fn moved_lines_keep_the_longest_common_part() {
        let d = diff_lines("a\nb\nc\n", "b\nc\na\n");
        assert_eq!(d, "@@ -1,3 +1,3 @@\n-a\n b\n c\n+a\n");
    }

    #[test]
    fn oversized_middles_fall_back_to_replace() {
        let a: String = (0..3000).map(|i| format!("a{i}\n")).collect();
        let b: String = (0..3000).map(|i| format!("b{i}\n")).collect();
        let d = diff_lines(&a, &b);
        assert_eq!(d.lines().filter(|l| l.starts_with('-')).count(), 3000);
        assert_eq!(d.lines().filter(|l| l.starts_with('+')).count(), 3000);
    }

    #[test]
    fn resource_diff_shows_the_weight_change() {
        let doc = |w: u32| {
            format!(
                "apiVersion: weft.dev/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  parentRefs: [{{name: s}}]\n  rules:\n  - backendRefs:\n    - {{name: s, subset: v1, weight: {w}}}\n    - {{name: s, subset: v2, weight: {}}}\n",
                100 - w
            )
        };
        let old = parse_documents("f", &doc(100)).unwrap().remove(0).resource;
        let new = parse_documents("f", &doc(90)).unwrap().remove(0).resource;
        let d = diff(Some(&old), Some(&new));
        assert!(d.contains("-      weight: 100\n+      weight: 90\n"), "{d}");
        assert!(d.contains("-      weight: 0\n+      weight: 10\n"), "{d}");
        assert_eq!(diff(Some(&old), Some(&old)), "");
        let created = diff(None, Some(&new));
        assert!(
            created.lines().skip(1).all(|l| l.starts_with('+')),
            "{created}"
        );
    }
}
