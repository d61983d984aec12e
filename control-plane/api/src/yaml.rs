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
pub fn from_str<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, YamlError> {
    serde_yaml::from_str(text).map_err(|e| locate(file, &e))
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
    let (mut field, reason) = split_path(text);
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

fn strip_location_suffix(text: &str) -> &str {
    match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => text,
    }
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
}
