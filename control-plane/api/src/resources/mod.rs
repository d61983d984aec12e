//! Mesh resources: their types, how they are read from YAML (with file, line and field in every error),
//! the checks within one document and across a set of them, and diffs for dry runs. The operator's
//! reference is `docs/resources.md`.
//!
//! The flow: [`parse_documents`] reads a file into [`Parsed`] documents (or every error, located);
//! [`Parsed::validate`] checks one document; a [`ResourceSet`] checks a whole change against the
//! resources in force and adopts it or refuses it as a whole.

mod diff;
mod locate;
mod parse;
mod refs;
mod resource;
mod set;
mod types;
mod validate;

pub use diff::diff;
pub use locate::{DocSource, Position};
pub use parse::{parse_documents, Batch, BatchError, Parsed};
pub use refs::{dangling_references, dangling_references_by};
pub use resource::ResourceJsonError;
pub use set::{Origin, Referrer, RemoveError, ResourceSet, Stored};
pub use types::*;
pub use validate::names::{dns_label, label_key, label_value, REGEX_SIZE_LIMIT};
pub use validate::{problems, Problem, MAX_CERTIFICATE_TTL, MAX_LOCATED};
