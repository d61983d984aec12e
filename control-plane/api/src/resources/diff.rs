//! A readable line diff of two resources' YAML, for `apply --dry-run`.

use super::types::Resource;

/// `-` lines removed, `+` lines added, two lines of context around each change; empty when equal.
pub fn diff(old: Option<&Resource>, new: Option<&Resource>) -> String {
    let a = old.map(|r| r.to_yaml()).unwrap_or_default();
    let b = new.map(|r| r.to_yaml()).unwrap_or_default();
    lines_diff(&a, &b)
}

fn lines_diff(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    // Longest common subsequence table; resources are small, so O(n·m) is fine.
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    const CONTEXT: usize = 2;
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut out = String::new();
    let mut last_shown: Option<usize> = None;
    for (k, (op, line)) in ops.iter().enumerate() {
        let near = changed.iter().any(|&c| c.abs_diff(k) <= CONTEXT);
        if !near {
            continue;
        }
        if last_shown.is_some_and(|l| l + 1 < k) {
            out.push_str("  ...\n");
        }
        out.push(*op);
        out.push(' ');
        out.push_str(line);
        out.push('\n');
        last_shown = Some(k);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::lines_diff;

    #[test]
    fn shows_changes_with_context() {
        let a = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let b = "a\nb\nc\nd\nE\nf\ng\nh\n";
        let d = lines_diff(a, b);
        assert_eq!(d, "  c\n  d\n- e\n+ E\n  f\n  g\n");
        assert_eq!(lines_diff(a, a), "");
        assert_eq!(lines_diff("", "x\n"), "+ x\n");
    }
}
