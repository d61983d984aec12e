//! Weft control plane: the mesh CA and workload identity issuance, the resource store, the registry of
//! connected proxies and the config push (`weft-control`), and the operator CLI (`weftctl`).

pub mod backend;
pub mod ca_dir;
pub mod claims;
pub mod cli;
pub mod config_dir;
pub mod follow;
pub mod http_util;
pub mod hub;
pub mod issuer;
pub mod leader;
pub mod metrics;
pub mod migrate;
pub mod open_streams;
pub mod operator_api;
pub use weft_api::persist;
pub mod netns;
pub mod pod;
pub mod presence;
pub mod proxy_api;
pub mod reach;
pub mod resources_api;
pub mod revocation;
pub mod rope;
pub mod server;
pub mod serving;
pub mod shared_ca;
pub mod state_dir;
pub mod state_lock;
pub mod stats;
pub mod store;
pub mod store_key;
pub mod tokens;
pub mod view;
pub mod vips;
pub mod why;
