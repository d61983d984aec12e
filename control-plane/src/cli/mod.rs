//! `weftctl`'s operator side: a client for the control plane's operator API and how its answers are
//! shown.

pub mod client;
pub mod render;
