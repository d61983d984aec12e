//! Limits checked on YAML text before `serde_yaml` sees it, by one linear pass over the bytes.
//!
//! Measured in a release build (`parse_documents` + `validate`): libyaml's cost for balanced flow
//! nesting grows with the square of the depth (20 000 nested `[` take 2.9 s, 40 KB of text), and
//! serde_yaml replays an anchored node at every alias (it bounds alias jumps to 100 times the
//! document's events, not the events replayed), so n aliases of an n-node anchor cost n². Both are
//! refused here, along with more nodes or bytes than any real document holds, so what reaches the
//! parser costs time linear in its size. The scan is deliberately lexical: it follows quotes, comments,
//! block scalars, flow brackets and indentation, and nothing else, so it never rejects what it cannot
//! see; its counts are upper bounds within a small factor of the parser's.

use crate::yaml::{YamlDocument, YamlError};
use std::fmt;

/// How much one document (and one batch of them) may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Nesting levels: block indentation levels and flow `[`/`{` together.
    pub max_depth: usize,
    /// Nodes (scalars, entries, collections) in one document.
    pub max_nodes: usize,
    /// Bytes of one document's text.
    pub max_document_bytes: usize,
    /// Non-empty documents in one apply or one reload of the watched directory.
    pub max_documents: usize,
}

/// The limits of resource documents and the proxy's config file: far above any real file (a
/// 2,000-service mesh is ~8,000 documents of a few hundred bytes and under ten levels each).
pub const LIMITS: Limits = Limits {
    max_depth: 64,
    max_nodes: 100_000,
    max_document_bytes: 1 << 20,
    max_documents: 50_000,
};

/// Which limit a text broke: the label of the refusal's metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Depth,
    Nodes,
    Alias,
    DocumentBytes,
    Documents,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Depth => "depth",
            Limit::Nodes => "nodes",
            Limit::Alias => "alias",
            Limit::DocumentBytes => "document_bytes",
            Limit::Documents => "documents",
        }
    }
}

/// A text refused before parsing: which limit, and where (file, line, column, reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitError {
    pub limit: Limit,
    pub error: YamlError,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for LimitError {}

/// Checks one document of `file` against `limits` (everything but the document count).
pub fn check_document(
    file: &str,
    doc: &YamlDocument<'_>,
    limits: &Limits,
) -> Result<(), LimitError> {
    let refuse = |limit, line, column, reason: String| {
        let (line, column) = doc.to_file(line, column);
        Err(LimitError {
            limit,
            error: YamlError {
                file: file.to_string(),
                line: Some(line),
                column: Some(column),
                field: String::new(),
                reason,
            },
        })
    };
    if doc.text.len() > limits.max_document_bytes {
        let reason = format!(
            "document of {} bytes; the limit is {} bytes per document",
            doc.text.len(),
            limits.max_document_bytes
        );
        return refuse(Limit::DocumentBytes, 1, 1, reason);
    }
    let mut scan = Scan::default();
    for (index, line) in doc.text.lines().enumerate() {
        if let Err(found) = scan.line(line.as_bytes(), limits) {
            let reason = match found.limit {
                Limit::Depth => format!("nesting deeper than {} levels", limits.max_depth),
                Limit::Nodes => format!("more than {} nodes in one document", limits.max_nodes),
                _ => {
                    "anchors and aliases (`&name`, `*name`) are not supported; write the value out"
                        .to_string()
                }
            };
            return refuse(found.limit, index + 1, found.column + 1, reason);
        }
    }
    Ok(())
}

/// Checks a whole text the way [`check_document`] checks one document, document by document.
pub fn check_text(file: &str, text: &str, limits: &Limits) -> Result<(), LimitError> {
    let mut documents = 0;
    for doc in crate::yaml::split_documents(text) {
        if doc.is_empty() {
            continue;
        }
        documents += 1;
        if documents > limits.max_documents {
            return Err(too_many_documents(file, &doc, limits.max_documents));
        }
        check_document(file, &doc, limits)?;
    }
    Ok(())
}

/// The refusal of the document past the batch's `max` documents.
pub fn too_many_documents(file: &str, doc: &YamlDocument<'_>, max: usize) -> LimitError {
    // The document's first line of content, not its `---` marker.
    let first = doc.text.lines().enumerate().find_map(|(i, l)| {
        let t = l.trim_start();
        let column = l.len() - t.len() + 1;
        (!t.is_empty() && !t.starts_with('#')).then_some((i + 1, column))
    });
    let (line, column) = first.unwrap_or((1, 1));
    let (line, column) = doc.to_file(line, column);
    LimitError {
        limit: Limit::Documents,
        error: YamlError {
            file: file.to_string(),
            line: Some(line),
            column: Some(column),
            field: String::new(),
            reason: format!("more than {max} documents in one apply"),
        },
    }
}

/// A limit found on a line, at a 0-based byte column.
struct Found {
    limit: Limit,
    column: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    Single,
    Double,
}

/// The scanner's state between lines.
#[derive(Default)]
struct Scan {
    /// Columns of the open block nodes, innermost last.
    block: Vec<usize>,
    /// Open flow collections.
    flow: usize,
    /// Inside a quoted scalar that continues on the next line.
    quote: Option<Quote>,
    /// Inside a block scalar (`|`, `>`): its lines are those indented past this column.
    block_scalar: Option<usize>,
    nodes: usize,
}

impl Scan {
    fn line(&mut self, line: &[u8], limits: &Limits) -> Result<(), Found> {
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let content = &line[indent..];
        let blank = content.iter().all(u8::is_ascii_whitespace) || content.first() == Some(&b'#');
        if let Some(parent) = self.block_scalar {
            if blank || indent > parent {
                return Ok(());
            }
            self.block_scalar = None;
        }
        if self.quote.is_none() && self.flow == 0 {
            if blank {
                return Ok(());
            }
            while self.block.last().is_some_and(|&c| c >= indent) {
                self.block.pop();
            }
            self.open_block(indent, limits)?;
        }
        self.rest(line, indent, limits)
    }

    /// A block node starting at `column`.
    fn open_block(&mut self, column: usize, limits: &Limits) -> Result<(), Found> {
        self.block.push(column);
        self.node(column, limits)?;
        self.depth(column, limits)
    }

    fn depth(&self, column: usize, limits: &Limits) -> Result<(), Found> {
        if self.block.len() + self.flow > limits.max_depth {
            return Err(Found {
                limit: Limit::Depth,
                column,
            });
        }
        Ok(())
    }

    fn node(&mut self, column: usize, limits: &Limits) -> Result<(), Found> {
        self.nodes += 1;
        if self.nodes > limits.max_nodes {
            return Err(Found {
                limit: Limit::Nodes,
                column,
            });
        }
        Ok(())
    }

    /// The line from `start`: quotes, comments, indicators.
    fn rest(&mut self, line: &[u8], start: usize, limits: &Limits) -> Result<(), Found> {
        let mut i = start;
        // At the start of a token: where `[`, `{`, `&`, `*`, `|`, `>`, quotes and `- ` are indicators.
        let mut token_start = true;
        // Where the token before the current one began: a block scalar belongs to it (`key: |`, `- |`).
        let (mut owner, mut current) = (start, start);
        while i < line.len() {
            if let Some(q) = self.quote {
                i = self.in_quote(line, i, q);
                token_start = false;
                continue;
            }
            let b = line[i];
            let spaced = line.get(i + 1).is_none_or(|&n| n == b' ' || n == b'\t');
            if token_start && b != b' ' && b != b'\t' {
                (owner, current) = (current, i);
            }
            match b {
                b' ' | b'\t' => {
                    token_start = true;
                    i += 1;
                    continue;
                }
                b'#' if token_start => return Ok(()),
                b'"' | b'\'' if token_start => {
                    self.quote = Some(if b == b'"' {
                        Quote::Double
                    } else {
                        Quote::Single
                    });
                    self.node(i, limits)?;
                }
                b'[' | b'{' if token_start || self.flow > 0 => {
                    self.flow += 1;
                    self.node(i, limits)?;
                    self.depth(i, limits)?;
                }
                b']' | b'}' if self.flow > 0 => self.flow -= 1,
                b',' if self.flow > 0 => self.node(i, limits)?,
                b'&' | b'*' if token_start => {
                    return Err(Found {
                        limit: Limit::Alias,
                        column: i,
                    })
                }
                b'|' | b'>' if token_start && self.flow == 0 && block_scalar_header(&line[i..]) => {
                    self.block_scalar = Some(owner);
                    return Ok(());
                }
                // A compact block entry (`- - x`, `- key: v`): one more level on the same line.
                b'-' | b'?' if token_start && self.flow == 0 && spaced => {
                    self.open_block(i + 2, limits)?;
                }
                b':' if spaced => self.node(i, limits)?,
                _ => {}
            }
            token_start = matches!(b, b'[' | b'{' | b',') && self.flow > 0;
            i += 1;
        }
        Ok(())
    }

    /// Consumes quoted text from `i`; returns where scanning resumes.
    fn in_quote(&mut self, line: &[u8], mut i: usize, q: Quote) -> usize {
        while i < line.len() {
            match (q, line[i]) {
                (Quote::Double, b'\\') => i += 2,
                (Quote::Double, b'"') => {
                    self.quote = None;
                    return i + 1;
                }
                (Quote::Single, b'\'') if line.get(i + 1) == Some(&b'\'') => i += 2,
                (Quote::Single, b'\'') => {
                    self.quote = None;
                    return i + 1;
                }
                _ => i += 1,
            }
        }
        line.len()
    }
}

/// `|` or `>` with optional chomping and indentation indicators, then nothing but a comment.
fn block_scalar_header(text: &[u8]) -> bool {
    let rest = &text[1..];
    let head = rest
        .iter()
        .take_while(|b| matches!(b, b'+' | b'-' | b'1'..=b'9'))
        .count();
    let tail = &rest[head..];
    let space = tail
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let tail = &tail[space..];
    tail.is_empty() || (space > 0 && tail[0] == b'#')
}

#[cfg(test)]
mod tests;
