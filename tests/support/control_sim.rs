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
    encode, FrameDecoder, FromControl, FromProxy, Hello, Registration, ServiceView, Snapshot,
    PATH_STREAM, PROTOCOL_VERSION,
};
use weft_certs::{Identity, SpiffeId};
use weft_proxy::traffic::mesh::merge_services;

/// How a simulated proxy connects and reads.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Read snapshots only for their version (see [`SimProxy::connect_with`]).
    pub light: bool,
    /// The protocol its hello speaks (1: services always as whole lists).
    pub protocol: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            light: false,
            protocol: PROTOCOL_VERSION,
        }
    }
}

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
    /// When the answer (ACK or NACK) to each snapshot was handed to the stream, in order (none when
    /// [`Reply::Silent`]).
    pub answered: Vec<Instant>,
    /// The newest snapshot, as it came (services possibly as changes).
    pub last: Option<(Instant, Snapshot)>,
    /// The services the proxy holds: every snapshot merged as a proxy merges it.
    pub held: Vec<ServiceView>,
    /// Why the stream ended, once it has.
    pub ended: Option<String>,
    /// Once [`SimProxy::record_services`] was called: the services section of every snapshot that
    /// touched them since, in order (what the proxy held after each).
    pub services: Option<Vec<Vec<ServiceView>>>,
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
        let options = Options::default();
        Self::connect_with(api, identity, control_id, registration, reply, options).await
    }

    /// As [`connect`](Self::connect); with `light`, snapshots are only read for their version, from
    /// the first bytes of each frame, and the rest is skipped as it arrives without being kept (for
    /// benchmarks with many simulated proxies in one process, where buffering and scanning every
    /// endpoint list of every snapshot would measure this process rather than the control plane).
    pub async fn connect_with(
        api: SocketAddr,
        identity: &Identity,
        control_id: &SpiffeId,
        registration: Registration,
        reply: Reply,
        options: Options,
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
            protocol: options.protocol,
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
        let answers = Answers {
            seen: seen.clone(),
            changed: changed_tx,
            tx: tx.clone(),
            reply,
        };
        let task = if options.light {
            tokio::spawn(receive_light(resp.into_body(), answers))
        } else {
            tokio::spawn(receive(resp.into_body(), answers))
        };
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

    /// Keeps the services section of every snapshot from now on ([`Seen::services`]), for tests
    /// that check each view the proxy held rather than the newest. Starts with what it holds now,
    /// once any snapshot arrived (a new stream's first snapshot carries every section).
    pub fn record_services(&self) {
        let mut seen = self.seen.lock().unwrap();
        let held = seen.last.is_some().then(|| seen.held.clone());
        seen.services = Some(held.into_iter().collect());
    }

    /// The services it holds now.
    pub fn held(&self) -> Vec<ServiceView> {
        self.seen.lock().unwrap().held.clone()
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

/// Where a simulated proxy records what it received, and how it answers.
struct Answers {
    seen: Arc<Mutex<Seen>>,
    changed: watch::Sender<u64>,
    tx: mpsc::Sender<Bytes>,
    reply: Reply,
}

impl Answers {
    /// Records the snapshot's arrival, answers it, and records when the answer was handed on.
    async fn snapshot(&self, s: Snapshot) {
        let version = s.version;
        {
            let now = Instant::now();
            let mut seen = self.seen.lock().unwrap();
            seen.arrivals.push(now);
            let touches = s.services.is_some()
                || s.services_changed.is_some()
                || s.services_removed.is_some();
            if touches {
                let merged = merge_services(
                    &seen.held,
                    s.services.clone(),
                    s.services_changed.clone(),
                    s.services_removed.clone(),
                );
                seen.held = merged.unwrap_or_else(|e| panic!("snapshot {version}: {e}"));
                let held = seen.held.clone();
                if let Some(all) = seen.services.as_mut() {
                    all.push(held);
                }
            }
            seen.last = Some((now, s));
        }
        let answer = match &self.reply {
            Reply::Ack => Some(FromProxy::Ack { version }),
            Reply::Nack(reason) => Some(FromProxy::Nack {
                version,
                reason: reason.clone(),
            }),
            Reply::Silent => None,
        };
        if let Some(answer) = answer {
            let _ = self.tx.send(encode(&answer)).await;
            self.seen.lock().unwrap().answered.push(Instant::now());
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn ended(&self, reason: String) {
        self.seen.lock().unwrap().ended = Some(reason);
        self.changed.send_modify(|n| *n += 1);
    }
}

async fn receive(mut body: hyper::body::Incoming, answers: Answers) {
    let mut decoder = FrameDecoder::default();
    let reason = loop {
        match decoder.next::<FromControl>() {
            Err(e) => break e.to_string(),
            Ok(Some(FromControl::Snapshot(s))) => {
                answers.snapshot(s).await;
                continue;
            }
            Ok(None) => {}
        }
        match body.frame().await {
            None => break "stream ended".into(),
            Some(Err(e)) => break format!("{e}: {:?}", std::error::Error::source(&e)),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    decoder.push(&d);
                }
            }
        }
    };
    answers.ended(reason);
}

async fn receive_light(mut body: hyper::body::Incoming, answers: Answers) {
    let mut frames = LightFrames::default();
    let mut versions = Vec::new();
    let reason = loop {
        match body.frame().await {
            None => break "stream ended".into(),
            Some(Err(e)) => break format!("{e}: {:?}", std::error::Error::source(&e)),
            Some(Ok(f)) => {
                let Ok(d) = f.into_data() else { continue };
                if let Err(e) = frames.push(&d, &mut versions) {
                    break e;
                }
                for version in versions.drain(..) {
                    answers.snapshot(Snapshot { version, ..empty() }).await;
                }
            }
        }
    };
    answers.ended(reason);
}

/// How much of a frame is read to find its version: the control plane writes
/// `{"type":"snapshot","version":N` first (29 bytes and at most 20 digits).
const LIGHT_HEAD: usize = 64;

/// Snapshot frames read for their version only: the length prefix and the frame's first bytes are
/// kept, the rest is counted off as it arrives. A 10,000-proxy mesh's snapshot carries megabytes of
/// endpoints; buffering one per simulated proxy would hold gigabytes in the benchmark itself.
#[derive(Default)]
struct LightFrames {
    /// The length prefix and the first bytes of the frame being read, until its version is read.
    head: Vec<u8>,
    /// Bytes of the current frame still to skip once its version is read.
    skip: usize,
}

impl LightFrames {
    /// Feeds one chunk of the stream; the versions of frames whose head it completes go to `out`.
    fn push(&mut self, mut chunk: &[u8], out: &mut Vec<u64>) -> Result<(), String> {
        loop {
            if self.skip > 0 {
                if chunk.is_empty() {
                    return Ok(());
                }
                let n = self.skip.min(chunk.len());
                self.skip -= n;
                chunk = &chunk[n..];
                continue;
            }
            let len = self.frame_len();
            let want = len.map_or(4, |len| 4 + len.min(LIGHT_HEAD));
            let n = (want - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            if self.head.len() < want {
                return Ok(());
            }
            let Some(len) = len.or_else(|| self.frame_len().filter(|l| *l == 0)) else {
                continue; // The length is known now: read the frame's head.
            };
            out.push(version_in(&self.head[4..])?);
            self.skip = len - len.min(LIGHT_HEAD);
            self.head.clear();
        }
    }

    fn frame_len(&self) -> Option<usize> {
        let prefix: [u8; 4] = self.head.get(..4)?.try_into().ok()?;
        Some(u32::from_be_bytes(prefix) as usize)
    }
}

/// The number after the first `"version":` of a frame's head.
fn version_in(head: &[u8]) -> Result<u64, String> {
    const KEY: &[u8] = b"\"version\":";
    let at = head
        .windows(KEY.len())
        .position(|w| w == KEY)
        .ok_or_else(|| format!("no version in a frame's first {LIGHT_HEAD} bytes"))?;
    let digits: Vec<u8> = head[at + KEY.len()..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| "a frame's version is not a number".to_string())
}

fn empty() -> Snapshot {
    Snapshot::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn light_frames_read_each_version_whatever_the_chunking() {
        let frames: Vec<Bytes> = [1u64, 22, 333]
            .iter()
            .map(|&v| {
                let s = Snapshot {
                    version: v,
                    trust_bundle_pem: Some("x".repeat(v as usize)),
                    ..empty()
                };
                encode(&FromControl::Snapshot(s))
            })
            .collect();
        let stream: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        for size in [1, 3, 7, 64, 1000] {
            let (mut lf, mut out) = (LightFrames::default(), Vec::new());
            for chunk in stream.chunks(size) {
                lf.push(chunk, &mut out).unwrap();
            }
            assert_eq!(out, vec![1, 22, 333], "chunks of {size}");
            assert!(lf.head.is_empty() && lf.skip == 0);
        }
    }
}
