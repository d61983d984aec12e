//! What every fuzz target checks. `fuzz/fuzz_targets/<name>.rs` hands libFuzzer's input to the function
//! of the same name here, and `tests/corpus.rs` feeds every file of `fuzz/corpus/<name>/` to it on stable,
//! so an input committed to a corpus is a regression test. A function panics when a property fails; an
//! input the product refuses is fine, as long as it is refused with an error rather than a panic.
//!
//! Structured targets (the differential ones) read their input through `arbitrary`.

pub mod api;
pub mod certs;
pub mod diff;
pub mod net;

/// A fuzz target: its name (the directory under `fuzz/corpus/`) and what it checks.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, in the order `tests/fuzz.sh` runs them.
pub const TARGETS: &[Target] = &[
    ("h1_guard", net::h1_guard),
    ("detect", net::detect),
    ("tls_sni", net::tls_sni),
    ("dns", net::dns),
    ("spiffe_id", certs::spiffe_id),
    ("x509", certs::x509),
    ("csr", certs::csr),
    ("resource_yaml", api::resource_yaml),
    ("control_frames", api::control_frames),
    ("normalize", api::normalize),
    ("authz_why", diff::authz_why),
    ("route_authz", diff::route_authz),
];

/// Input as text the way the product gets it: a lossy reading keeps most byte strings useful.
fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}
