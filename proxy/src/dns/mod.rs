//! The sidecar's DNS responder: apps in the pod resolve mesh service names with no configuration of
//! their own. `weft-proxy init` redirects the app's port-53 traffic here (`dns.listen`, by default
//! `127.0.0.1:15053`); service names are answered from the proxy's current mesh view with the service's
//! VIP, other names are relayed to `dns.upstreams`. See `docs/proxy-config.md` ("DNS").
//!
//! - [`names`]: which names are the mesh's and what they answer (pure).
//! - [`server`]: the UDP and TCP listeners, limits and metrics.
//! - [`forward`]: relaying other names to the upstream resolvers.
//! - [`metrics`]: what the responder counts of the questions it answers.

pub mod forward;
pub mod metrics;
pub mod names;
pub mod server;

pub use forward::{Forwarder, Transport};
pub use names::{Answer, Names};
pub use server::{serve, Lookup, Server, Settings};

use crate::config::DnsConfig;
use crate::state::Proxy;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, UdpSocket};

/// Binds TCP on `addr`, then UDP on the port TCP got (so port 0 gives both the same port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let tcp = TcpListener::bind(addr).await?;
    let udp = UdpSocket::bind(tcp.local_addr()?).await?;
    Ok((udp, tcp))
}

/// The responder configured by `cfg`, answering from whatever `lookup` returns.
pub fn server(
    cfg: &DnsConfig,
    lookup: Lookup,
    metrics: Arc<crate::telemetry::metrics::Metrics>,
) -> Arc<Server> {
    let forwarder = (!cfg.upstreams.is_empty()).then(|| {
        Forwarder::new(
            cfg.upstreams.clone(),
            cfg.forward_timeout.get(),
            cfg.max_forwards,
        )
    });
    let settings = Settings {
        ttl: u32::try_from(cfg.ttl.get().as_secs()).unwrap_or(u32::MAX),
        max_tcp_connections: cfg.max_tcp_connections,
        tcp_idle_timeout: cfg.tcp_idle_timeout.get(),
    };
    Server::new(lookup, forwarder, settings, metrics)
}

/// Runs the proxy's responder until it drains: names come from the mesh view in force at each question;
/// relative names are relative to the workload's namespace (`default` without a workload).
pub async fn run(udp: UdpSocket, tcp: TcpListener, proxy: Arc<Proxy>) {
    let Some(cfg) = proxy.config.dns.clone() else {
        return;
    };
    let namespace = proxy
        .config
        .workload
        .as_ref()
        .map_or("default", |w| w.namespace.as_str());
    let names = Names::new(namespace, &cfg.cluster_domain);
    let view = proxy.clone();
    let lookup: Lookup =
        Arc::new(move |qname, qtype| names.answer(&view.mesh().services, qname, qtype));
    let server = server(&cfg, lookup, proxy.metrics.clone());
    serve(udp, tcp, server, proxy.shutdown.clone()).await;
}

#[cfg(test)]
mod tests;
