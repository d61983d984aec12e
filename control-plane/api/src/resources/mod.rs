//! Mesh resources: their types, how they are read from YAML (with file, line and field in every error),
//! the checks within and across documents, and diffs for dry runs. See `docs/resources.md`.

mod diff;
mod parse;
mod types;
mod validate;

pub use diff::diff;
pub use parse::{parse_documents, Parsed};
pub use types::*;
pub use validate::{dangling_references, dns_label, REGEX_SIZE_LIMIT};
