//! Finds where a field path such as `spec.rules[0].backendRefs[1].weight` is written in a document, so
//! problems found after parsing point at the file line an operator has to edit.
//!
//! The parser's own locations are lost once a document is a typed value, and serde_yaml offers no span
//! tree. Resource files (and the proxy's config file) are block-style YAML, where indentation alone says
//! which key belongs to which mapping, so a small indentation walk is enough. What it cannot follow (flow
//! collections, anchors) resolves to the deepest part of the path it did find, and at worst to the
//! document's first line.

use crate::yaml::YamlDocument;
use std::sync::Arc;

/// A position in a file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// The text of one parsed document and where it sits in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocSource {
    text: Arc<str>,
    /// File line of the text's first line.
    first_line: usize,
    /// Column offset of the text on its first line (after a `---`).
    first_column: usize,
    /// Where the document's content begins: the answer when nothing better is found.
    start: Position,
}

impl DocSource {
    /// The source of one document (see [`crate::yaml::split_documents`]): resource files, and the
    /// proxy's own config file, whose validation errors name lines the same way.
    pub fn new(doc: &YamlDocument<'_>) -> DocSource {
        let mut source = DocSource {
            text: doc.text.into(),
            first_line: doc.first_line,
            first_column: doc.first_column,
            start: Position {
                line: doc.first_line,
                column: 1,
            },
        };
        let lines = Lines::new(&source.text);
        if let Some(first) = lines.next_content(0, lines.len()) {
            source.start = source.position(first, lines.indent(first));
        }
        source
    }

    /// A source with no text (a resource that came as JSON): every field is at `line`.
    pub fn detached(line: usize) -> DocSource {
        DocSource {
            text: "".into(),
            first_line: line,
            first_column: 0,
            start: Position { line, column: 1 },
        }
    }

    /// Where the document's content begins.
    pub fn start(&self) -> Position {
        self.start
    }

    /// Where `field` is written: the key's position, or a sequence item's `-`. A path that cannot be
    /// followed to the end resolves to the deepest part found.
    pub fn locate(&self, field: &str) -> Position {
        let lines = Lines::new(&self.text);
        let Some(first) = lines.next_content(0, lines.len()) else {
            return self.start;
        };
        let mut region = Region {
            line: first,
            col: lines.indent(first),
            end: lines.len(),
        };
        let mut found = self.start;
        let segments = parse_path(field);
        let mut i = 0;
        while i < segments.len() {
            let step = match &segments[i] {
                Segment::Index(n) => lines.item(&region, *n).map(|(at, inner)| (at, inner, 1)),
                Segment::Key(_) => lines.key_run(&region, &segments[i..]),
            };
            let Some(((line, col), inner, used)) = step else {
                break;
            };
            found = self.position(line, col);
            region = inner;
            i += used;
        }
        found
    }

    /// The file line of `field` (see [`DocSource::locate`]).
    pub fn line_of(&self, field: &str) -> usize {
        self.locate(field).line
    }

    fn position(&self, line: usize, col: usize) -> Position {
        let shift = if line == 0 { self.first_column } else { 0 };
        Position {
            line: self.first_line + line,
            column: col + shift + 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `a.b[2].c` → `a`, `b`, `[2]`, `c`. Dots inside keys (label keys such as `app.kubernetes.io/name`) are
/// split here and joined again while matching.
fn parse_path(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key.to_string()));
        }
        while let Some(open) = rest.strip_prefix('[') {
            let Some((n, after)) = open.split_once(']') else {
                break;
            };
            match n.parse() {
                Ok(n) => out.push(Segment::Index(n)),
                Err(_) => out.push(Segment::Key(n.to_string())),
            }
            rest = after;
        }
    }
    out
}

/// A node's extent: its content starts at (`line`, `col`); lines up to `end` (exclusive) may continue it.
#[derive(Debug, Clone, Copy)]
struct Region {
    line: usize,
    col: usize,
    end: usize,
}

struct Lines<'a> {
    lines: Vec<&'a str>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Lines<'a> {
        Lines {
            lines: text.lines().map(|l| l.trim_end_matches('\r')).collect(),
        }
    }

    fn len(&self) -> usize {
        self.lines.len()
    }

    fn indent(&self, line: usize) -> usize {
        let l = self.lines[line];
        l.len() - l.trim_start_matches(' ').len()
    }

    fn is_content(&self, line: usize) -> bool {
        let t = self.lines[line].trim();
        !t.is_empty() && !t.starts_with('#')
    }

    fn next_content(&self, from: usize, end: usize) -> Option<usize> {
        (from..end).find(|&l| self.is_content(l))
    }

    /// The text at `col` of `line`, empty when the line is shorter.
    fn at(&self, line: usize, col: usize) -> &'a str {
        self.lines[line].get(col..).unwrap_or("")
    }

    /// The entries of a block collection whose entries start at the region's column.
    fn entries(&self, r: &Region) -> impl Iterator<Item = usize> + '_ {
        let r = *r;
        std::iter::once(r.line).chain(
            (r.line + 1..r.end).filter(move |&l| self.is_content(l) && self.indent(l) == r.col),
        )
    }

    /// Matches the longest run of key segments (rejoined with dots) that names a key of the mapping.
    fn key_run(&self, r: &Region, segments: &[Segment]) -> Option<((usize, usize), Region, usize)> {
        let keys: Vec<&str> = segments
            .iter()
            .map_while(|s| match s {
                Segment::Key(k) => Some(k.as_str()),
                Segment::Index(_) => None,
            })
            .collect();
        (1..=keys.len()).rev().find_map(|n| {
            let key = keys[..n].join(".");
            self.key(r, &key).map(|(at, inner)| (at, inner, n))
        })
    }

    /// The position of `key` in the mapping at `r`, and the region of its value.
    fn key(&self, r: &Region, key: &str) -> Option<((usize, usize), Region)> {
        self.entries(r).find_map(|line| {
            let text = self.at(line, r.col);
            let after = strip_key(text, key)?;
            let value_col = self.lines[line].len() - after.len();
            Some(((line, r.col), self.value(line, r.col, value_col, r.end)))
        })
    }

    /// The region of a value that follows `key:` (whose text resumes at `value_col`).
    fn value(&self, line: usize, key_col: usize, value_col: usize, end: usize) -> Region {
        let rest = self.at(line, value_col);
        let trimmed = rest.trim_start();
        let empty = Region {
            line,
            col: key_col,
            end: line + 1,
        };
        if trimmed.starts_with(['|', '>']) {
            return empty;
        }
        if !ends_line(trimmed) {
            let col = value_col + rest.len() - trimmed.len();
            return Region {
                line,
                col,
                end: line + 1,
            };
        }
        let Some(first) = self.next_content(line + 1, end) else {
            return empty;
        };
        let indent = self.indent(first);
        let compact_sequence = indent == key_col && is_item(self.at(first, indent));
        if indent <= key_col && !compact_sequence {
            return empty;
        }
        let stop = (first + 1..end)
            .find(|&l| {
                self.is_content(l) && {
                    let i = self.indent(l);
                    i < indent || (i == indent && compact_sequence && !is_item(self.at(l, i)))
                }
            })
            .unwrap_or(end);
        Region {
            line: first,
            col: indent,
            end: stop,
        }
    }

    /// The position of item `n`'s `-` in the sequence at `r`, and the region of the item's content.
    fn item(&self, r: &Region, n: usize) -> Option<((usize, usize), Region)> {
        if !is_item(self.at(r.line, r.col)) {
            return None;
        }
        let items: Vec<usize> = self
            .entries(r)
            .filter(|&l| is_item(self.at(l, r.col)))
            .collect();
        let line = *items.get(n)?;
        let end = items.get(n + 1).copied().unwrap_or(r.end);
        let rest = &self.at(line, r.col)[1..];
        let trimmed = rest.trim_start();
        let inner = if ends_line(trimmed) {
            match self.next_content(line + 1, end) {
                Some(first) => Region {
                    line: first,
                    col: self.indent(first),
                    end,
                },
                None => Region {
                    line,
                    col: r.col,
                    end: line + 1,
                },
            }
        } else {
            Region {
                line,
                col: r.col + 1 + rest.len() - trimmed.len(),
                end,
            }
        };
        Some(((line, r.col), inner))
    }
}

/// `key: ...` (plain or quoted) → the text after the colon.
fn strip_key<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    let after = [("", ""), ("\"", "\""), ("'", "'")]
        .iter()
        .find_map(|(open, close)| {
            text.strip_prefix(open)?
                .strip_prefix(key)?
                .strip_prefix(close)
        })?;
    let after = after.trim_start_matches(' ').strip_prefix(':')?;
    match after.chars().next() {
        None | Some(' ' | '\t') => Some(after),
        Some(_) => None,
    }
}

/// A block sequence entry: `-` followed by a space or the end of the line.
fn is_item(text: &str) -> bool {
    matches!(text.strip_prefix('-'), Some(rest) if rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// Nothing left on the line but a comment, or an anchor or tag whose node follows on the next lines.
fn ends_line(rest: &str) -> bool {
    let rest = rest.trim();
    rest.is_empty()
        || rest.starts_with('#')
        || ((rest.starts_with('&') || rest.starts_with('!')) && !rest.contains(' '))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::split_documents;

    fn source(text: &str) -> DocSource {
        DocSource::new(&split_documents(text)[0])
    }

    fn at(text: &str, field: &str) -> (usize, usize) {
        let p = source(text).locate(field);
        (p.line, p.column)
    }

    const ROUTE: &str = "\
# a route
apiVersion: weft.dev/v1
kind: HTTPRoute
metadata:
  name: reviews
  labels:
    app.kubernetes.io/name: reviews
spec:
  parentRefs:
  - name: reviews
  rules:
  - matches:
    - path:
        value: /a
    backendRefs:
    - name: reviews
      weight: 1
    -   name: other

        weight: 9   # heavy
  - backendRefs:
      - name: b
        port: 80
";

    #[test]
    fn top_level_and_nested_keys() {
        assert_eq!(at(ROUTE, "kind"), (3, 1));
        assert_eq!(at(ROUTE, "metadata.name"), (5, 3));
        assert_eq!(at(ROUTE, "spec.rules"), (11, 3));
    }

    #[test]
    fn compact_sequences_at_the_key_indent() {
        assert_eq!(at(ROUTE, "spec.parentRefs[0].name"), (10, 5));
        assert_eq!(at(ROUTE, "spec.rules[0]"), (12, 3));
        assert_eq!(at(ROUTE, "spec.rules[0].matches[0].path.value"), (14, 9));
        assert_eq!(at(ROUTE, "spec.rules[0].backendRefs[0].weight"), (17, 7));
    }

    #[test]
    fn items_with_wide_dash_spacing_and_blank_lines() {
        assert_eq!(at(ROUTE, "spec.rules[0].backendRefs[1]"), (18, 5));
        assert_eq!(at(ROUTE, "spec.rules[0].backendRefs[1].weight"), (20, 9));
    }

    #[test]
    fn first_key_of_a_later_item() {
        assert_eq!(at(ROUTE, "spec.rules[1].backendRefs"), (21, 5));
        assert_eq!(at(ROUTE, "spec.rules[1].backendRefs[0].port"), (23, 9));
    }

    #[test]
    fn keys_with_dots() {
        assert_eq!(at(ROUTE, "metadata.labels.app.kubernetes.io/name"), (7, 5));
    }

    #[test]
    fn missing_parts_resolve_to_the_deepest_found() {
        assert_eq!(at(ROUTE, "spec.rules[0].backendRefs[0].port"), (16, 5));
        assert_eq!(at(ROUTE, "spec.rules[7].name"), (11, 3));
        assert_eq!(at(ROUTE, "nothing.here"), (2, 1));
        assert_eq!(at(ROUTE, ""), (2, 1));
    }

    #[test]
    fn flow_collections_resolve_to_their_key() {
        let text = "spec:\n  ports: [80, 0]\n  selector: {app: a}\n";
        assert_eq!(at(text, "spec.ports[1]"), (2, 3));
        assert_eq!(at(text, "spec.selector.app"), (3, 3));
    }

    #[test]
    fn quoted_keys_and_values_that_look_like_keys() {
        let text = "spec:\n  note: \"name: x\"\n  \"name\": y\n";
        assert_eq!(at(text, "spec.name"), (3, 3));
    }

    #[test]
    fn keys_are_not_matched_by_prefix() {
        let text = "spec:\n  portsx: 1\n  ports: 2\n";
        assert_eq!(at(text, "spec.ports"), (3, 3));
    }

    #[test]
    fn block_scalars_are_skipped() {
        let text = "a: |\n  b: 1\nb: 2\n";
        assert_eq!(at(text, "b"), (3, 1));
        assert_eq!(at(text, "a.b"), (1, 1));
    }

    #[test]
    fn positions_are_file_positions_in_later_documents() {
        let text = "a: 1\n---\n# c\nspec:\n  ports:\n  - port: 1\n";
        let docs = split_documents(text);
        let s = DocSource::new(&docs[1]);
        assert_eq!(s.start(), Position { line: 4, column: 1 });
        assert_eq!(s.line_of("spec.ports[0].port"), 6);
    }

    #[test]
    fn detached_sources_answer_their_line() {
        assert_eq!(DocSource::detached(7).line_of("spec.x"), 7);
    }

    #[test]
    fn crlf_line_endings() {
        assert_eq!(at("a:\r\n  b: 1\r\n  c: 2\r\n", "a.c"), (3, 3));
    }
}
