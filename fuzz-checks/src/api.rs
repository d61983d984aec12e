//! Resource YAML, the control protocol's frames, and path normalisation.

use weft_api::authz::normalize::normalize as normalize_path;
use weft_api::control::{encode, FrameDecoder, FrameError, FromControl, FromProxy, Hello};
use weft_api::resources::{parse_documents, problems, ResourceSet};
use weft_control::proxy_api::{MAX_HELLO, MAX_STREAM_MESSAGE};

/// A resource file as `weftctl apply` and the control plane read it: parsed, validated, checked
/// against an empty mesh. Never a panic; whatever parses and validates also serialises.
pub fn resource_yaml(data: &[u8]) {
    let text = super::text(data);
    let Ok(parsed) = parse_documents("fuzz.yaml", &text) else {
        return;
    };
    for p in &parsed {
        let _ = problems(&p.resource);
    }
    let set = ResourceSet::new();
    let _ = set.check_new(&parsed);
}

/// What a decoder yields from a byte stream delivered in chunks of `chunk` bytes: the messages, then the
/// first error (or the end-of-stream check).
fn decode<T: serde::de::DeserializeOwned>(
    data: &[u8],
    chunk: usize,
    first_limit: usize,
    limit: usize,
) -> (Vec<T>, Option<String>) {
    let mut d = FrameDecoder::with_limit(first_limit);
    let mut out = Vec::new();
    for part in data.chunks(chunk.max(1)) {
        d.push(part);
        loop {
            match d.next::<T>() {
                Ok(Some(m)) => {
                    out.push(m);
                    d.set_limit(limit);
                }
                Ok(None) => break,
                Err(e) => return (out, Some(kind(&e))),
            }
        }
    }
    (out, d.finish().err().map(|e| kind(&e)))
}

fn kind(e: &FrameError) -> String {
    match e {
        FrameError::TooLarge { .. } | FrameError::Truncated(_) => e.to_string(),
        FrameError::Json(_) => "json".into(),
    }
}

/// Control frames, both directions: the same messages and error whatever the chunking (the first byte
/// picks a chunk size), and every decoded message survives encode then decode unchanged.
pub fn control_frames(data: &[u8]) {
    let chunk = data.first().map_or(1, |b| usize::from(*b % 17) + 1);
    // The control plane's side: a Hello under its small limit, then the proxy's messages.
    let hello = decode::<Hello>(data, data.len(), MAX_HELLO, MAX_HELLO);
    assert_eq!(hello, decode::<Hello>(data, chunk, MAX_HELLO, MAX_HELLO));
    for h in &hello.0 {
        assert_eq!(&round_trip(h), h);
    }
    let from_proxy = decode::<FromProxy>(data, data.len(), MAX_HELLO, MAX_STREAM_MESSAGE);
    assert_eq!(
        from_proxy,
        decode::<FromProxy>(data, chunk, MAX_HELLO, MAX_STREAM_MESSAGE)
    );
    for m in &from_proxy.0 {
        assert_eq!(&round_trip(m), m);
    }
    // The proxy's side.
    let limit = weft_api::control::MAX_FRAME;
    let from_control = decode::<FromControl>(data, data.len(), limit, limit);
    assert_eq!(
        from_control,
        decode::<FromControl>(data, chunk, limit, limit)
    );
    for m in &from_control.0 {
        assert_eq!(&round_trip(m), m);
    }
}

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(m: &T) -> T {
    let mut d = FrameDecoder::default();
    d.push(&encode(m));
    d.next::<T>()
        .expect("our own frame decodes")
        .expect("a whole frame")
}

/// Normalisation is idempotent, and its output has the shape policies are written against: absolute, no
/// query or fragment, no empty, `.` or `..` segment, no escape of an unreserved character.
pub fn normalize(data: &[u8]) {
    let raw = super::text(data);
    let Ok(n) = normalize_path(&raw) else {
        return;
    };
    assert_eq!(
        normalize_path(&n).as_ref(),
        Ok(&n),
        "not idempotent on {raw:?}"
    );
    assert!(n.starts_with('/'));
    assert!(!n.contains(['?', '#', '\\']), "{n:?}");
    assert!(!n.contains("//"), "{n:?}");
    for seg in n.split('/') {
        assert!(seg != "." && seg != "..", "{n:?} from {raw:?}");
    }
}
