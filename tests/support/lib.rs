//! Weft's end-to-end support library, shared by `tests/` and `examples/`.
//!
//! Each area lives in its own module; add new ones below.

pub mod apps;
pub mod bins;
pub mod control;
pub mod control_sim;
pub mod etcd;
pub mod fs_fault;
pub mod mesh;
pub mod net;
pub mod nodes;
pub mod pair;
pub mod pki;
pub mod pods;
pub mod proxy;
pub mod replicas;
pub mod tls_probe;
