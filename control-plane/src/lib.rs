//! Weft control plane. For now it holds the offline certificate tooling behind `weftctl ca` and
//! `weftctl cert`: a mesh CA kept in a directory, and workload certificates issued from it for proxies
//! run in explicit mode. The control-plane server (`weft-control`) builds on the same CA directory.

pub mod ca_dir;
