//! Inbound from outside the mesh: TCP that arrived at the pod on an app port and was redirected here by
//! `weft-proxy init` (15006). Mesh peers never come this way — they use the tunnel port — so everything
//! here is plaintext from a client without an identity. Strict mTLS (the mesh default) refuses it;
//! permissive mode delivers it to the app: HTTP request by request (see [`crate::path::inbound_plain_http`]),
//! so headers only the mesh may set never reach the app from such a client; anything else byte for byte.

use crate::path::detect::{self, Detected};
use crate::path::listen;
use crate::path::splice::{splice, Splice};
use crate::state::Proxy;
use crate::telemetry::labels::{ConnProtocol, Direction, Listener, Reason};
use crate::telemetry::metrics::{ActiveGuard, ConnLabels};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use weft_api::resources::MtlsMode;

/// Accepts redirected plaintext until shutdown.
pub async fn run(listener: TcpListener, proxy: Arc<Proxy>) {
    listen::serve_data(listener, proxy, Listener::Inbound, handle_connection).await;
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

async fn handle_connection(tcp: TcpStream, client: SocketAddr, proxy: Arc<Proxy>) {
    let Some(port) = admit(&tcp, client, &proxy) else {
        return;
    };
    let _active = ActiveGuard::new(
        &proxy.metrics,
        ConnLabels {
            direction: Direction::Inbound,
            protocol: ConnProtocol::Plaintext,
        },
    );
    let window = proxy.config.limits.detect_timeout.get();
    let (detected, io) = match detect::detect(tcp, window).await {
        Ok(d) => d,
        Err(e) => return tracing::debug!(%client, error = %e, "inbound plaintext closed early"),
    };
    // Methods outside the usual ones (or in another case) still make a request an app may parse.
    let (detected, io) = match detected {
        Detected::Opaque => match detect::http1_any_method(io, window).await {
            Ok((true, io)) => (Detected::Http1, io),
            Ok((false, io)) => (Detected::Opaque, io),
            Err(e) => return tracing::debug!(%client, error = %e, "inbound plaintext closed early"),
        },
        other => (other, io),
    };
    match detected {
        Detected::Http1 | Detected::Http2 => {
            crate::path::inbound_plain_http::serve(io, detected, client, port, &proxy).await
        }
        Detected::Opaque | Detected::Tls => {
            let subject = crate::traffic::authz::Subject {
                source: None,
                port,
                http: None,
            };
            let mesh = proxy.mesh();
            if crate::traffic::authz::authorize(&proxy, &mesh, &subject).is_err() {
                return tracing::info!(%client, port, "inbound plaintext connection closed by authorization policy");
            }
            if crate::traffic::ratelimit::check(&proxy, &mesh, Listener::Inbound, None, port, None)
                .is_err()
            {
                return tracing::info!(%client, port, "inbound plaintext connection closed: over the route's rate limit");
            }
            drop(mesh);
            splice_to_app(io, client, port, &proxy).await
        }
    }
}

/// The checks before anything is read: a mesh view with this workload's policies (fail closed until
/// there is one), a port that is the app's, and PERMISSIVE mode. Every refusal closes the
/// connection, logged and counted. Authorization follows, per request for HTTP and per connection
/// otherwise.
fn admit(tcp: &TcpStream, client: SocketAddr, proxy: &Proxy) -> Option<u16> {
    if !proxy.has_policy_view() {
        proxy.metrics.reject(Listener::Inbound, Reason::NoConfig);
        tracing::warn!(%client, "inbound plaintext connection refused: no config from the control plane yet");
        return None;
    }
    let dst = match crate::socket::original_dst(tcp) {
        Ok(d) => d,
        Err(e) => {
            proxy
                .metrics
                .reject(Listener::Inbound, Reason::NoOriginalDst);
            tracing::warn!(%client, error = %e, "inbound connection closed: no original destination");
            return None;
        }
    };
    let port = dst.port();
    if let Err(refusal) = proxy.delivery.check(port) {
        let reason = refusal.reason();
        proxy.metrics.reject(Listener::Inbound, reason);
        tracing::warn!(%client, port, reason = reason.as_str(), "inbound plaintext connection refused");
        return None;
    }
    if mtls_mode(proxy) == MtlsMode::Strict {
        proxy.metrics.reject(Listener::Inbound, Reason::StrictMtls);
        tracing::info!(%client, port, "inbound plaintext connection refused: mTLS is STRICT (the client is not in the mesh)");
        return None;
    }
    Some(port)
}

/// Anything but HTTP: bytes both ways to the app port.
async fn splice_to_app<IO>(mut io: IO, client: SocketAddr, port: u16, proxy: &Proxy)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let app = proxy.delivery.app_addr(port);
    let timeout = proxy.config.limits.connect_timeout.get();
    let mut upstream = match crate::socket::connect(app, timeout).await {
        Ok(u) => u,
        Err(e) => {
            proxy.metrics.reject(Listener::Inbound, Reason::AppConnect);
            return tracing::info!(%client, %app, error = %e, "inbound plaintext: cannot reach the app");
        }
    };
    tracing::debug!(%client, %app, "inbound plaintext (PERMISSIVE) delivered to the app");
    let how = Splice::new(proxy, Direction::Inbound, Listener::Inbound);
    if let Err(e) = splice(&mut io, &mut upstream, &proxy.metrics, how).await {
        tracing::debug!(%client, %app, error = %e, "inbound plaintext ended with an error");
    }
}
