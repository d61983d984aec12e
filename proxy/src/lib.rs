//! `weft-proxy`: the Weft sidecar. Explicit outbound listeners carry an app's traffic to peer proxies
//! over one mutual-TLS HTTP/2 connection per peer; the tunnel port receives peers' traffic and delivers it
//! to the local app. See `docs/request-path.md` for the path a request takes.

pub mod admin;
pub mod config;
pub mod control;
pub mod dns;
#[doc(hidden)]
pub mod fuzzing;
pub mod intercept;
pub mod path;
pub mod socket;
pub mod state;
pub mod telemetry;
#[cfg(test)]
mod test_identity;
mod timer_tick;
pub mod traffic;

use anyhow::Context as _;
use config::ProxyConfig;
use state::Proxy;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use weft_certs::{Credential, Identity, TrustBundle};

/// Loads the identity files named in the config (explicit mode).
pub fn load_identity(cfg: &ProxyConfig) -> anyhow::Result<Identity> {
    let Some(f) = &cfg.identity else {
        anyhow::bail!("no `identity` files in the config");
    };
    let cred = Credential::from_pem_files(&f.cert, &f.key)?;
    let bundle = TrustBundle::from_pem_file(&f.bundle)?;
    Ok(Identity::new(cred, bundle)?)
}

/// A proxy whose listeners are bound; [`Running::serve`] runs it until `shutdown` is cancelled.
pub struct Running {
    pub proxy: Arc<Proxy>,
    listeners: Vec<(Kind, TcpListener)>,
}

enum Kind {
    Tunnel,
    Admin,
    Health,
    Outbound(Box<(weft_api::OutboundListener, weft_api::Target)>),
    /// The DNS responder: its UDP socket here, its TCP listener beside it.
    Dns(Box<tokio::net::UdpSocket>),
    /// The app's redirected outgoing TCP (transparent mode).
    InterceptedOutbound,
    /// Redirected incoming plaintext (transparent mode).
    InterceptedInbound,
}

/// Binds every listener (so a port clash fails start-up with a clear error) before serving any.
pub async fn bind(cfg: ProxyConfig, identity: Identity) -> anyhow::Result<Running> {
    let mut listeners = Vec::new();
    let mut add = |kind: Kind, l: TcpListener| listeners.push((kind, l));
    add(
        Kind::Tunnel,
        bind_one("tunnel.listen", cfg.tunnel.listen).await?,
    );
    add(Kind::Admin, bind_one("admin", cfg.admin.listen).await?);
    add(Kind::Health, bind_one("health", cfg.health).await?);
    for (i, o) in cfg.outbound.0.iter().enumerate() {
        let l = bind_one(&format!("outbound[{i}].listen"), o.listen).await?;
        let target = o
            .target()
            .map_err(|e| anyhow::anyhow!("outbound[{i}]: {e}"))?;
        add(Kind::Outbound(Box::new((o.clone(), target))), l);
    }
    if let Some(d) = &cfg.dns {
        let (udp, tcp) = dns::bind(d.listen)
            .await
            .with_context(|| format!("cannot listen on {} (`dns.listen`)", d.listen))?;
        add(Kind::Dns(Box::new(udp)), tcp);
    }
    if let Some(i) = &cfg.interception {
        socket::set_mark(i.mark);
        add(
            Kind::InterceptedOutbound,
            bind_one("interception.outbound", i.outbound).await?,
        );
        add(
            Kind::InterceptedInbound,
            bind_one("interception.inbound", i.inbound).await?,
        );
    }
    Ok(Running {
        proxy: Proxy::new(cfg, identity)
            .context("cannot open the access log (`access_log.path`)")?,
        listeners,
    })
}

async fn bind_one(field: &str, addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (`{field}`)"))
}

impl Running {
    /// Serves until the proxy's shutdown token is cancelled, then waits up to `drain_timeout` for
    /// in-flight connections. Returns true when everything drained in time.
    pub async fn serve(self) -> bool {
        let proxy = self.proxy;
        tokio::spawn(timer_tick::run(proxy.shutdown.clone()));
        for (kind, l) in self.listeners {
            let addr = l.local_addr().ok();
            let p = proxy.clone();
            match kind {
                Kind::Tunnel => {
                    tracing::info!(?addr, identity = %p.identity.id(), "tunnel listening (mTLS, HTTP/2)");
                    tokio::spawn(path::inbound::run(l, p));
                }
                Kind::Admin => {
                    tracing::info!(?addr, "admin listening");
                    tokio::spawn(admin::run_admin(l, p));
                }
                Kind::Health => {
                    tracing::info!(?addr, "health listening");
                    tokio::spawn(admin::run_health(l, p));
                }
                Kind::Outbound(spec) => {
                    let (o, target) = *spec;
                    tracing::info!(?addr, ?target, protocol = ?o.protocol, "outbound listener");
                    tokio::spawn(path::outbound::run(l, o, target, p));
                }
                Kind::Dns(udp) => {
                    tracing::info!(?addr, "dns responder listening (udp, tcp)");
                    tokio::spawn(dns::run(*udp, l, p));
                }
                Kind::InterceptedOutbound => {
                    tracing::info!(?addr, "intercepted outbound listening");
                    tokio::spawn(path::outbound::run_intercepted(l, p));
                }
                Kind::InterceptedInbound => {
                    tracing::info!(?addr, "intercepted inbound listening");
                    tokio::spawn(path::inbound_plain::run(l, p));
                }
            }
        }
        proxy.set_ready(true);
        proxy.shutdown.cancelled().await;
        proxy.set_ready(false);
        let deadline: Duration = proxy.config.drain_timeout.get();
        tracing::info!(active = proxy.tasks.len(), ?deadline, "draining");
        proxy.tasks.close();
        let drained = tokio::time::timeout(deadline, proxy.tasks.wait())
            .await
            .is_ok();
        if drained {
            tracing::info!("drained");
        } else {
            tracing::warn!(
                left = proxy.tasks.len(),
                "drain deadline passed; closing what is left"
            );
        }
        drained
    }
}
