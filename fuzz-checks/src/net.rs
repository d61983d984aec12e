//! The outbound side's first bytes (HTTP/1 framing guard, protocol detection, TLS SNI) and the DNS
//! responder.

use hickory_proto::op::{Message, MessageType};
use hickory_proto::serialize::binary::BinDecodable;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use weft_api::control::ServiceView;
use weft_proxy::dns::{Names, Server, Settings};
use weft_proxy::fuzzing::{self, Detected};
use weft_proxy::telemetry::metrics::Metrics;

/// The framing guard decides the same however the bytes are split into reads, and the same as a plain
/// line-by-line reading of RFC 9112 heads: a head (lines up to a blank line, empty or a lone `\r`) with
/// a line starting `content-length:` and one starting `transfer-encoding:` (any case).
pub fn h1_guard(data: &[u8]) {
    let whole = fuzzing::h1_conflict(&[data]);
    assert_eq!(whole, reference_conflict(data), "guard vs reference");
    let cut = data.first().map_or(0, |b| usize::from(*b)) % (data.len() + 1);
    let (a, b) = data.split_at(cut);
    assert_eq!(fuzzing::h1_conflict(&[a, b]), whole, "split at {cut}");
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    assert_eq!(fuzzing::h1_conflict(&bytes), whole, "byte by byte");
}

fn reference_conflict(data: &[u8]) -> bool {
    let (mut cl, mut te) = (false, false);
    let mut lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    // The last piece has no `\n` yet: its line has not ended.
    let open = lines.pop().unwrap_or_default();
    for line in lines {
        if line.is_empty() || line == b"\r" {
            if cl && te {
                return true;
            }
            (cl, te) = (false, false);
            continue;
        }
        let lower = line.to_ascii_lowercase();
        cl |= lower.starts_with(b"content-length:");
        te |= lower.starts_with(b"transfer-encoding:");
    }
    let _ = open;
    false
}

/// Detection: once the bytes decide a protocol, more bytes never change the decision (detection stops
/// reading there), and the stream handed on replays exactly the bytes read.
pub fn detect(data: &[u8]) {
    let mut decided = None;
    for n in 0..=data.len().min(128) {
        let d = fuzzing::classify(&data[..n]);
        if let Some(prev) = decided {
            assert_eq!(d, Some(prev), "decision changed at {n} bytes");
        }
        decided = decided.or(d);
    }
    let _ = fuzzing::request_line(data);
    let (got, replay) = RUNTIME.block_on(async {
        use tokio::io::AsyncReadExt;
        let (d, mut rewind) = weft_proxy::path::detect::detect(data, Duration::from_secs(1))
            .await
            .expect("reading a slice cannot fail");
        let mut all = Vec::new();
        rewind.read_to_end(&mut all).await.expect("replay");
        (d, all)
    });
    assert_eq!(
        replay, data,
        "the replayed stream differs from what was sent"
    );
    if let Some(d) = fuzzing::classify(data) {
        assert_eq!(got, d, "detect() vs classify() on the whole input");
    }
}

/// SNI peeking: never panics; a name is only found in what detection calls TLS.
pub fn tls_sni(data: &[u8]) {
    if let Some(name) = weft_proxy::path::detect::sni(data) {
        assert!(!name.is_empty());
        assert_eq!(
            fuzzing::classify(data),
            Some(Detected::Tls),
            "SNI {name:?} outside TLS"
        );
    }
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
});

static DNS: LazyLock<Arc<Server>> = LazyLock::new(|| {
    let names = Names::new("default", "cluster.local");
    let services = vec![ServiceView {
        name: "reviews".into(),
        namespace: "default".into(),
        ports: Vec::new(),
        vip: Some([10, 96, 0, 10].into()),
        endpoints: Vec::new(),
        traffic_policy: None,
    }];
    let lookup = Arc::new(move |q: &str, t| names.answer(&services, q, t));
    let settings = Settings {
        ttl: 5,
        max_tcp_connections: 1,
        tcp_idle_timeout: Duration::from_secs(1),
    };
    Server::new(lookup, None, settings, Arc::new(Metrics::new()))
});

/// The DNS responder: any reply parses, is a response, and carries the question's id; a response is
/// never answered.
pub fn dns(data: &[u8]) {
    let Some(reply) = fuzzing::dns_reply(&DNS, data) else {
        return;
    };
    let m = Message::from_bytes(&reply).expect("our reply parses");
    assert_eq!(m.metadata.message_type, MessageType::Response);
    let id = u16::from_be_bytes([data[0], data[1]]);
    assert_eq!(m.metadata.id, id, "reply id");
    assert!(m.answers.len() <= 1, "one answer at most");
}
