//! The request path: listeners and their accept loop, protocol detection and framing guards, the app's
//! connections going out (`outbound`), peers' and outside clients' coming in (`inbound`,
//! `inbound_plain`), the pool of tunnels to peers, the local app's client, and the errors the proxy
//! answers itself. docs/request-path.md walks through it in order.

pub mod body;
pub mod deliver;
pub mod detect;
pub mod errors;
pub mod h1_guard;
pub mod headers;
pub mod inbound;
pub mod inbound_plain;
pub mod inbound_plain_http;
pub mod listen;
pub mod local_app;
pub mod open_streams;
pub mod outbound;
pub mod peer_h2;
pub mod pool;
pub mod splice;
