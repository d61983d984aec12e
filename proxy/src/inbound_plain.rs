//! Inbound from outside the mesh: TCP that arrived at the pod on an app port and was redirected here by
//! `weft-proxy init` (15006). Mesh peers never come this way — they use the tunnel port — so everything
//! here is plaintext from a client without an identity. Strict mTLS (the mesh default) refuses it;
//! permissive mode delivers it to the app unchanged.

use crate::metrics::{ActiveGuard, ConnLabels, Direction};
use crate::serve::{self, ConnLimiter};
use crate::splice::splice;
use crate::state::Proxy;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use weft_api::resources::MtlsMode;

pub async fn run(listener: TcpListener, proxy: Arc<Proxy>) {
    let limiter = ConnLimiter::new(proxy.config.limits.max_connections);
    let p = proxy.clone();
    serve::accept_loop(listener, &proxy, limiter, "inbound", move |tcp, client| {
        let proxy = p.clone();
        async move { handle_connection(tcp, client, proxy).await }
    })
    .await;
}

/// The mode in force: the workload's override, else the mesh's.
pub fn mtls_mode(proxy: &Proxy) -> MtlsMode {
    proxy
        .config
        .interception
        .as_ref()
        .and_then(|i| i.mtls_mode)
        .unwrap_or_else(|| proxy.mesh().mesh.mtls_mode)
}

async fn handle_connection(mut tcp: TcpStream, client: SocketAddr, proxy: Arc<Proxy>) {
    let dst = match crate::socket::original_dst(&tcp) {
        Ok(d) => d,
        Err(e) => {
            proxy.metrics.reject("inbound", "no_original_dst");
            return tracing::warn!(%client, error = %e, "inbound connection closed: no original destination");
        }
    };
    let port = dst.port();
    if let Err(reason) = allowed(&proxy, port) {
        proxy.metrics.reject("inbound", reason);
        return tracing::warn!(%client, port, reason, "inbound plaintext connection refused");
    }
    if mtls_mode(&proxy) == MtlsMode::Strict {
        proxy.metrics.reject("inbound", "strict_mtls");
        return tracing::info!(%client, port, "inbound plaintext connection refused: mTLS is STRICT (the client is not in the mesh)");
    }
    let subject = crate::authz::Subject {
        source: None,
        port,
        http: None,
    };
    if crate::authz::authorize(&proxy, &subject).is_some() {
        return tracing::info!(%client, port, "inbound plaintext connection closed by authorization policy");
    }
    let _active = ActiveGuard::new(
        &proxy.metrics,
        ConnLabels {
            direction: Direction::inbound,
            protocol: "plaintext",
        },
    );
    let app = SocketAddr::new(proxy.config.tunnel.app_host, port);
    let timeout = proxy.config.limits.connect_timeout.get();
    let mut upstream = match crate::socket::connect(app, timeout).await {
        Ok(u) => u,
        Err(e) => {
            proxy.metrics.reject("inbound", "app_connect");
            return tracing::info!(%client, %app, error = %e, "inbound plaintext: cannot reach the app");
        }
    };
    tracing::debug!(%client, %app, "inbound plaintext (PERMISSIVE) delivered to the app");
    if let Err(e) = splice(&mut tcp, &mut upstream, &proxy.metrics, Direction::inbound).await {
        tracing::debug!(%client, %app, error = %e, "inbound plaintext ended with an error");
    }
}

/// Ports that must never be delivered as app traffic (the proxy's own), and the tunnel's allow-list.
fn allowed(proxy: &Proxy, port: u16) -> Result<(), &'static str> {
    let c = &proxy.config;
    let own = [c.tunnel.listen.port(), c.health.port(), c.admin.port()];
    let intercept = c
        .interception
        .as_ref()
        .map(|i| [i.outbound.port(), i.inbound.port()]);
    if own.contains(&port) || intercept.is_some_and(|p| p.contains(&port)) {
        return Err("proxy_port");
    }
    let list = &c.tunnel.allowed_ports;
    if !list.is_empty() && !list.contains(&port) {
        return Err("port_not_allowed");
    }
    Ok(())
}
