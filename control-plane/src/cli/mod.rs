//! `weftctl`: its command line, the operator API client, the resource files `apply` sends, the commands,
//! and how answers are shown. The binary (`src/bin/weftctl.rs`) wires these together and keeps the
//! offline `ca` / `cert` commands.

pub mod args;
pub mod client;
pub mod commands;
pub mod files;
pub mod progressive;
pub mod render;
pub mod revoke;
pub mod shift;
#[cfg(test)]
mod testing;
pub mod top;
pub mod why;
