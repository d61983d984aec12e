//! Weft control plane: the mesh CA and workload identity issuance, the resource store, the registry of
//! connected proxies and the config push (`weft-control`), and the operator CLI (`weftctl`).

pub mod ca_dir;
pub mod hub;
pub mod metrics;
pub mod persist;
pub mod tokens;
pub mod view;
