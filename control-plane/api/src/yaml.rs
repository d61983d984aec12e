//! The one module that touches `serde_yaml` (unmaintained upstream): swapping it out later means editing
//! only this file. Errors carry file, line, column, the field path and the reason.

use serde::de::DeserializeOwned;
use std::fmt;

/// A document that could not be read, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// File name (or `-`/`<inline>`) as given by the caller.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Dotted path of the offending field, e.g. `outbound[1].peer`; empty for the document root.
    pub field: String,
    /// What was wrong.
    pub reason: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for YamlError {}

/// Parses `text` (read from `file`) into `T`. Types with `deny_unknown_fields` and validating
/// `Deserialize` impls (SPIFFE IDs, addresses, durations) get their errors located by the parser.
/// The text is held to [`crate::yaml_limits::LIMITS`] before the parser sees it.
pub fn from_str<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, YamlError> {
    crate::yaml_limits::check_text(file, text, &crate::yaml_limits::LIMITS).map_err(|e| e.error)?;
    serde_yaml::from_str(text).map_err(|e| locate(file, &e))
}

/// One document of a multi-document file: its text and where that text starts in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct YamlDocument<'a> {
    /// The document's text, from just after its `---` marker (or the file's start) to the next marker.
    pub text: &'a str,
    /// 1-based file line of the text's first line.
    pub first_line: usize,
    /// 0-based column in the file where the text starts on its first line (3 after a `---`).
    pub first_column: usize,
}

impl YamlDocument<'_> {
    /// True when the document holds nothing but blank lines, comments and directives.
    pub fn is_empty(&self) -> bool {
        self.text.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || l.starts_with('%')
        })
    }

    /// Maps a 1-based (line, column) inside the text to the file's.
    pub fn to_file(&self, line: usize, column: usize) -> (usize, usize) {
        let column = if line == 1 {
            column + self.first_column
        } else {
            column
        };
        (self.first_line + line - 1, column)
    }
}

/// Splits a file into its documents at `---` (document start) and `...` (document end) markers. The YAML
/// spec forbids either marker at the start of a line inside any scalar, so a line-level split is exact.
pub fn split_documents(text: &str) -> Vec<YamlDocument<'_>> {
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let bom = text.len() - body.len();
    let mut docs = Vec::new();
    let mut start = (bom, 1, 0);
    let mut offset = bom;
    for (index, line) in body.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        let bare = line.trim_end_matches(['\n', '\r']);
        if let Some(next) = marker(bare) {
            docs.push(YamlDocument {
                text: &text[start.0..offset],
                first_line: start.1,
                first_column: start.2,
            });
            start = match next {
                Marker::Start => (offset + 3, line_no, 3),
                Marker::End => (offset + line.len(), line_no + 1, 0),
            };
        }
        offset += line.len();
    }
    docs.push(YamlDocument {
        text: &text[start.0..],
        first_line: start.1,
        first_column: start.2,
    });
    docs
}

enum Marker {
    Start,
    End,
}

fn marker(line: &str) -> Option<Marker> {
    let kind = if line.starts_with("---") {
        Marker::Start
    } else if line.starts_with("...") {
        Marker::End
    } else {
        return None;
    };
    match line[3..].chars().next() {
        None | Some(' ' | '\t') => Some(kind),
        Some(_) => None,
    }
}

/// Parses one document of a multi-document file; errors carry the file's line and column. The
/// caller holds the document to [`crate::yaml_limits`] first ([`crate::resources::Batch`] does).
pub fn from_document<T: DeserializeOwned>(
    file: &str,
    doc: &YamlDocument<'_>,
) -> Result<T, YamlError> {
    serde_yaml::from_str(doc.text).map_err(|e| {
        let mut err = locate(file, &e);
        if let (Some(line), Some(column)) = (err.line, err.column) {
            let (line, column) = doc.to_file(line, column);
            err.line = Some(line);
            err.column = Some(column);
        }
        err
    })
}

/// Serializes a value as YAML (for `/config`-style dumps); never fails for plain data types.
pub fn to_string<T: serde::Serialize>(value: &T) -> Result<String, YamlError> {
    serde_yaml::to_string(value).map_err(|e| locate("<output>", &e))
}

fn locate(file: &str, e: &serde_yaml::Error) -> YamlError {
    let (line, column) = match e.location() {
        Some(l) => (Some(l.line()), Some(l.column())),
        None => (None, None),
    };
    let text = e.to_string();
    let text = strip_location_suffix(&text);
    let (mut field, reason) = split_path(&text);
    if let Some(unknown) = unknown_field_name(reason) {
        field = if field.is_empty() {
            unknown.to_string()
        } else {
            format!("{field}.{unknown}")
        };
    }
    YamlError {
        file: file.to_string(),
        line,
        column,
        field,
        reason: reason.to_string(),
    }
}

/// Drops every ` at line L column C` from serde_yaml's message: the location is reported separately, and
/// inside a multi-document file these lines are the document's, not the file's. Parser context that
/// follows (`, while parsing a flow node`) stays.
fn strip_location_suffix(text: &str) -> String {
    const AT: &str = " at line ";
    let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(AT) {
        let tail = &rest[i + AT.len()..];
        let line_len = digits(tail);
        let column = tail[line_len..].strip_prefix(" column ");
        match column {
            Some(after) if line_len > 0 && digits(after) > 0 => {
                out.push_str(&rest[..i]);
                rest = &after[digits(after)..];
            }
            _ => {
                out.push_str(&rest[..i + AT.len()]);
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// serde_yaml prefixes messages with the field path (`a.b[2].c: reason`).
fn split_path(text: &str) -> (String, &str) {
    if let Some((head, rest)) = text.split_once(": ") {
        let path_like = !head.is_empty()
            && head
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']'));
        if path_like {
            return (head.to_string(), rest);
        }
    }
    (String::new(), text)
}

fn unknown_field_name(reason: &str) -> Option<&str> {
    let rest = reason.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        listen: std::net::SocketAddr,
        port: u16,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        items: Vec<Item>,
    }

    #[test]
    fn limits_come_before_the_parser() {
        let deep = format!("items: {}{}\n", "[".repeat(100), "]".repeat(100));
        let e = from_str::<Doc>("p.yaml", &deep).unwrap_err();
        assert_eq!(e.to_string(), "p.yaml:1:71: nesting deeper than 64 levels");
        let e = from_str::<Doc>("p.yaml", "items: &a []\n").unwrap_err();
        assert!(
            e.to_string().starts_with("p.yaml:1:8: anchors and aliases"),
            "{e}"
        );
    }

    #[test]
    fn bad_value_names_file_line_and_field() {
        let e = from_str::<Doc>(
            "x.yaml",
            "items:\n  - listen: 127.0.0.1:1\n    port: 1\n  - listen: nope\n    port: 2\n",
        )
        .unwrap_err();
        assert_eq!(e.file, "x.yaml");
        assert_eq!(e.line, Some(4));
        assert_eq!(e.field, "items[1].listen");
        assert!(e.reason.contains("socket address"), "{e}");
        assert!(e.to_string().starts_with("x.yaml:4:"), "{e}");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = from_str::<Doc>(
            "y.yaml",
            "items:\n  - listen: 127.0.0.1:1\n    port: 1\n    colour: red\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "items[0].colour");
        assert_eq!(e.line, Some(4));
    }

    #[test]
    fn missing_and_out_of_range() {
        let e = from_str::<Doc>("z", "items:\n  - listen: 127.0.0.1:1\n").unwrap_err();
        assert!(e.reason.contains("missing field `port`"), "{e}");
        let e =
            from_str::<Doc>("z", "items:\n  - listen: 127.0.0.1:1\n    port: 70000\n").unwrap_err();
        assert_eq!(e.field, "items[0].port");
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn splits_at_markers_and_keeps_file_lines() {
        let text = "a: 1\n---\nb: 2\nc: 3\n--- # two\n\n---\nd: 4\n...\n";
        let docs = split_documents(text);
        let shown: Vec<_> = docs.iter().map(|d| (d.first_line, d.text)).collect();
        assert_eq!(
            shown,
            vec![
                (1, "a: 1\n"),
                (2, "\nb: 2\nc: 3\n"),
                (5, " # two\n\n"),
                (7, "\nd: 4\n"),
                (10, ""),
            ]
        );
        let empty: Vec<_> = docs.iter().map(|d| d.is_empty()).collect();
        assert_eq!(empty, [false, false, true, false, true]);
    }

    #[test]
    fn markers_need_a_line_of_their_own() {
        let docs = split_documents("a: ---\n----\n  ---\nb: 1\r\n---\r\nc: 2\r\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].first_line, 5);
        assert_eq!(docs[1].text, "\r\nc: 2\r\n");
    }

    #[test]
    fn byte_order_mark_is_not_content() {
        let docs = split_documents("\u{feff}a: 1\n");
        assert_eq!(docs[0].text, "a: 1\n");
        assert_eq!(docs[0].first_line, 1);
    }

    #[test]
    fn errors_in_later_documents_carry_file_lines() {
        let text = "items: []\n---\nitems:\n  - listen: 127.0.0.1:1\n    port: x\n";
        let docs = split_documents(text);
        let e = from_document::<Doc>("f.yaml", &docs[1]).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (Some(5), "items[0].port"));
        assert!(e.to_string().starts_with("f.yaml:5:"), "{e}");
    }

    #[test]
    fn first_line_columns_shift_after_the_marker() {
        let docs = split_documents("x: 1\n--- 5\n");
        let e = from_document::<Doc>("f", &docs[1]).unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(e.column, Some(5));
    }

    #[test]
    fn parser_context_survives_location_stripping() {
        assert_eq!(
            strip_location_suffix("did not find x at line 2 column 1, while parsing a flow node"),
            "did not find x, while parsing a flow node"
        );
        assert_eq!(strip_location_suffix("bad at line 3 column 9"), "bad");
        assert_eq!(strip_location_suffix("at line four"), "at line four");
        assert_eq!(
            strip_location_suffix(
                "did not find ',' at line 11 column 53, while parsing a flow mapping at line 11 column 9"
            ),
            "did not find ',', while parsing a flow mapping"
        );
        assert_eq!(strip_location_suffix("x at line 1 y"), "x at line 1 y");
    }
}
