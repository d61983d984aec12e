//! A lightweight client of the real control-plane protocol: registers a workload, receives snapshots,
//! answers ACK (or NACK when told to). Used to put many proxies on a control plane from one process
//! (benchmarks) and to observe exactly what the control plane sends (tests).

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use weft_api::control::{
    encode, FrameDecoder, FromControl, FromProxy, Hello, Registration, Snapshot, PATH_STREAM,
    PROTOCOL_VERSION,
};
use weft_certs::{Identity, SpiffeId};

/// How the simulated proxy answers snapshots.
#[derive(Debug, Clone)]
pub enum Reply {
    Ack,
    /// NACK every snapshot with this reason.
    Nack(String),
    /// Answer nothing (a proxy that never gets to acknowledge).
    Silent,
}

/// What the simulated proxy has seen. Only the newest snapshot is kept whole (a thousand simulated
/// proxies keeping every one would hold gigabytes).
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// When each snapshot arrived, in order.
    pub arrivals: Vec<Instant>,
    /// The newest snapshot.
    pub last: Option<(Instant, Snapshot)>,
    /// Why the stream ended, once it has.
    pub ended: Option<String>,
}

pub struct SimProxy {
    pub seen: Arc<Mutex<Seen>>,
    /// Bumped on every snapshot and at the end of the stream.
    pub changed: watch::Receiver<u64>,
    tx: mpsc::Sender<Bytes>,
    task: tokio::task::JoinHandle<()>,
    conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Drop for SimProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Closes the connection: the control plane sees this proxy go away.
        self.conn.abort();
    }
}

impl SimProxy {
    /// Connects with `identity` (mutual TLS, expecting the control plane to be `control_id`) and sends
    /// the hello. Errors if the connection or the stream request fails.
    pub async fn connect(
        api: SocketAddr,
        identity: &Identity,
        control_id: &SpiffeId,
        registration: Registration,
        reply: Reply,
    ) -> anyhow::Result<SimProxy> {
        Self::connect_with(api, identity, control_id, registration, reply, false).await
    }

    /// As [`connect`](Self::connect); with `light`, snapshots are only read for their version (for
    /// benchmarks with many simulated proxies in one process, where decoding every endpoint list of every
    /// snapshot would measure this process rather than the control plane).
    pub async fn connect_with(
        api: SocketAddr,
        identity: &Identity,
        control_id: &SpiffeId,
        registration: Registration,
        reply: Reply,
        light: bool,
    ) -> anyhow::Result<SimProxy> {
        let tcp = tokio::net::TcpStream::connect(api).await?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(identity.client_config(control_id));
        let name = rustls::pki_types::ServerName::IpAddress(api.ip().into());
        let tls = connector.connect(name, tcp).await?;
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        let conn = tokio::spawn(conn);
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let body = StreamBody::new(Box::pin(futures_util::stream::unfold(
            rx,
            |mut rx| async move {
                let b = rx.recv().await?;
                Some((Ok::<_, Infallible>(Frame::data(b)), rx))
            },
        )));
        let req = http::Request::post(format!("https://{api}{PATH_STREAM}")).body(body)?;
        let hello = FromProxy::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            proxy_version: "sim".into(),
            workload: registration,
            applied_version: None,
        });
        tx.send(encode(&hello)).await?;
        let resp = send.send_request(req).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::bail!(
                "stream refused: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (changed_tx, changed) = watch::channel(0u64);
        let task = tokio::spawn(receive(
            resp.into_body(),
            seen.clone(),
            changed_tx,
            tx.clone(),
            reply,
            light,
        ));
        Ok(SimProxy {
            seen,
            changed,
            tx,
            task,
            conn,
        })
    }

    pub async fn send(&self, msg: &FromProxy) -> anyhow::Result<()> {
        Ok(self.tx.send(encode(msg)).await?)
    }

    pub fn snapshot_count(&self) -> usize {
        self.seen.lock().unwrap().arrivals.len()
    }

    pub fn last(&self) -> Option<(Instant, Snapshot)> {
        self.seen.lock().unwrap().last.clone()
    }

    /// Waits until at least `n` snapshots arrived (or the stream ended, or `timeout` passed).
    pub async fn wait_snapshots(&mut self, n: usize, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.snapshot_count() >= n {
                return true;
            }
            if self.seen.lock().unwrap().ended.is_some() {
                return false;
            }
            if tokio::time::timeout_at(deadline, self.changed.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }
}

async fn receive(
    mut body: hyper::body::Incoming,
    seen: Arc<Mutex<Seen>>,
    changed: watch::Sender<u64>,
    tx: mpsc::Sender<Bytes>,
    reply: Reply,
    light: bool,
) {
    let mut decoder = FrameDecoder::default();
    let reason = loop {
        let next = if light {
            decoder.next::<VersionOnly>().map(|m| {
                m.map(|v| {
                    FromControl::Snapshot(Snapshot {
                        version: v.version,
                        ..empty()
                    })
                })
            })
        } else {
            decoder.next::<FromControl>()
        };
        match next {
            Err(e) => break e.to_string(),
            Ok(Some(FromControl::Snapshot(s))) => {
                let version = s.version;
                {
                    let now = Instant::now();
                    let mut seen = seen.lock().unwrap();
                    seen.arrivals.push(now);
                    seen.last = Some((now, s));
                }
                let answer = match &reply {
                    Reply::Ack => Some(FromProxy::Ack { version }),
                    Reply::Nack(reason) => Some(FromProxy::Nack {
                        version,
                        reason: reason.clone(),
                    }),
                    Reply::Silent => None,
                };
                if let Some(answer) = answer {
                    let _ = tx.send(encode(&answer)).await;
                }
                changed.send_modify(|n| *n += 1);
                continue;
            }
            Ok(None) => {}
        }
        match body.frame().await {
            None => break "stream ended".into(),
            Some(Err(e)) => break e.to_string(),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    decoder.push(&d);
                }
            }
        }
    };
    seen.lock().unwrap().ended = Some(reason);
    changed.send_modify(|n| *n += 1);
}

/// A snapshot read for its version only; serde skips the rest without building it.
#[derive(serde::Deserialize)]
struct VersionOnly {
    version: u64,
}

fn empty() -> Snapshot {
    Snapshot {
        version: 0,
        mesh: None,
        services: None,
        routes: None,
        policies: None,
        trust_bundle_pem: None,
        revoked_serials: None,
    }
}
