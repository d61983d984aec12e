//! Mesh resources: their types, how they are read from YAML (with file, line and field in every error),
//! and the checks that span documents.

mod types;

pub use types::*;
