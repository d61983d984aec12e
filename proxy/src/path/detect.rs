//! Protocol detection on the outbound side: read the client's first bytes (for at most the detection
//! window) and decide HTTP/1, HTTP/2 (prior knowledge), TLS (the app's own; carried opaque, its SNI
//! recorded) or opaque TCP. Biased towards availability: anything not clearly HTTP, including a client
//! that stays silent because the server speaks first, is carried as opaque TCP, which always works, just
//! without HTTP features. The cost for a server-first protocol is the window (`limits.detect_timeout`,
//! 100 ms by default) added before its first byte.

use bytes::{Buf, Bytes, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    /// A TLS ClientHello: the app's own TLS, carried opaque.
    Tls,
    Opaque,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];
/// Enough for the HTTP/2 preface and any method token; a few hundred bytes would not change a decision.
const PEEK_BYTES: usize = 64;
/// A TLS record header: handshake content type, then major version 3.
const TLS_HANDSHAKE: u8 = 0x16;
/// The largest TLS record (header + 16 KiB), the most read to see a whole ClientHello.
const TLS_PEEK_BYTES: usize = 5 + (1 << 14);

/// What the bytes so far say, or `None` when more bytes could still change the answer.
pub(crate) fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    if buf[0] == TLS_HANDSHAKE {
        return classify_tls(buf);
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if buf.len() >= H2_PREFACE.len() {
            Some(Detected::Http2)
        } else {
            None
        };
    }
    let mut could_be_method = false;
    for m in METHODS {
        let n = buf.len().min(m.len());
        if buf[..n] == m[..n] {
            if buf.len() >= m.len() {
                return Some(Detected::Http1);
            }
            could_be_method = true;
        }
    }
    if could_be_method {
        None
    } else {
        Some(Detected::Opaque)
    }
}

/// TLS once the first record (the ClientHello, for its SNI) is complete.
fn classify_tls(buf: &[u8]) -> Option<Detected> {
    match buf.get(1) {
        None => return None,
        Some(3) => {}
        Some(_) => return Some(Detected::Opaque),
    }
    if buf.len() < 5 {
        return None;
    }
    let record = 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if buf.len() >= record.min(TLS_PEEK_BYTES) {
        Some(Detected::Tls)
    } else {
        None
    }
}

fn looks_tls(buf: &[u8]) -> bool {
    buf.first() == Some(&TLS_HANDSHAKE) && buf.get(1).is_none_or(|v| *v == 3)
}

/// The server name a ClientHello asks for, if `prefix` holds one that parses.
pub fn sni(prefix: &[u8]) -> Option<String> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = prefix;
    while !rest.is_empty() {
        if acceptor.read_tls(&mut rest).ok()? == 0 {
            break;
        }
    }
    match acceptor.accept() {
        Ok(Some(hello)) => hello.client_hello().server_name().map(str::to_string),
        _ => None,
    }
}

/// Reads from `io` until the protocol is clear, EOF, or `window` passes. The bytes read are handed back
/// inside a [`Rewind`] so the next reader sees the stream from its first byte.
pub async fn detect<IO>(mut io: IO, window: Duration) -> io::Result<(Detected, Rewind<IO>)>
where
    IO: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(PEEK_BYTES);
    let deadline = tokio::time::Instant::now() + window;
    let detected = loop {
        if let Some(d) = classify(&buf) {
            break d;
        }
        if buf.len() >= PEEK_BYTES && !looks_tls(&buf) {
            break Detected::Opaque;
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) if looks_tls(&buf) => break Detected::Tls,
            Ok(Ok(0)) | Err(_) => break Detected::Opaque,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok((detected, Rewind::new(buf.freeze(), io)))
}

/// Longest first line [`http1_any_method`] reads before it calls the stream opaque.
const REQUEST_LINE_BYTES: usize = 8 * 1024;

/// For a stream already classified opaque: whether its first line is an HTTP/1 request line with any
/// method token (`delete /x HTTP/1.1`, `PROPFIND / HTTP/1.1`). An app may well parse those as HTTP, so
/// the plaintext inbound path carries them as HTTP, under the same header rules and per-request
/// policies. Reads at most [`REQUEST_LINE_BYTES`] within `window`; the bytes are kept for replay.
pub async fn http1_any_method<IO>(
    io: Rewind<IO>,
    window: Duration,
) -> io::Result<(bool, Rewind<IO>)>
where
    IO: AsyncRead + Unpin,
{
    let Rewind { prefix, mut inner } = io;
    let mut buf = BytesMut::from(&prefix[..]);
    let deadline = tokio::time::Instant::now() + window;
    let starts_like_token = |b: &[u8]| b.first().is_some_and(|c| is_token(*c));
    while starts_like_token(&buf)
        && memchr::memchr(b'\n', &buf).is_none()
        && buf.len() < REQUEST_LINE_BYTES
    {
        match tokio::time::timeout_at(deadline, inner.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
    let yes = request_line(&buf);
    Ok((yes, Rewind::new(buf.freeze(), inner)))
}

/// `METHOD SP TARGET SP HTTP/1.x` up to the first line end, the method any token.
pub(crate) fn request_line(buf: &[u8]) -> bool {
    let Some(end) = memchr::memchr(b'\n', buf) else {
        return false;
    };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method.iter().all(|c| is_token(*c))
        && !target.is_empty()
        && (version == b"HTTP/1.1" || version == b"HTTP/1.0")
}

/// RFC 9110 `tchar`.
fn is_token(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

pin_project_lite::pin_project! {
    /// An IO that first replays bytes already read from it.
    pub struct Rewind<IO> {
        prefix: Bytes,
        #[pin]
        inner: IO,
    }
}

impl<IO> Rewind<IO> {
    pub fn new(prefix: Bytes, inner: IO) -> Self {
        Rewind { prefix, inner }
    }
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }
    /// The bytes read during detection and not yet replayed.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }
}

impl<IO: AsyncRead> AsyncRead for Rewind<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(out.remaining());
            out.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, out)
    }
}

impl<IO: AsyncWrite> AsyncWrite for Rewind<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_lines_with_any_method_are_recognised() {
        assert!(request_line(b"delete /x HTTP/1.1\r\nHost: a\r\n"));
        assert!(request_line(b"PROPFIND / HTTP/1.0\n"));
        assert!(!request_line(b"EHLO mail.example\r\n"));
        assert!(!request_line(b"delete /x HTTP/1.1"), "no line end yet");
        assert!(!request_line(b"de lete /x HTTP/1.1\r\n"));
        assert!(!request_line(b"\x16\x03\x01 / HTTP/1.1\r\n"));
    }

    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classification() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), None);
        assert_eq!(classify(b"\x16\x03\x01\x00\x01\x01"), Some(Detected::Tls));
        assert_eq!(classify(b"\x16\x07"), Some(Detected::Opaque));
        assert_eq!(classify(b"GETX"), Some(Detected::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Detected::Opaque));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_is_opaque_after_the_window() {
        let (client, server) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        let (d, _io) = detect(server, Duration::from_millis(100)).await.unwrap();
        assert_eq!(d, Detected::Opaque);
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        drop(client);
    }

    #[tokio::test]
    async fn tls_client_hello_is_detected_with_its_sni() {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("db.example.internal").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        // Dribbled in two writes: detection waits for the whole record.
        client.write_all(&hello[..7]).await.unwrap();
        let task = tokio::spawn(detect(server, Duration::from_secs(5)));
        tokio::task::yield_now().await;
        client.write_all(&hello[7..]).await.unwrap();
        let (d, io) = task.await.unwrap().unwrap();
        assert_eq!(d, Detected::Tls);
        assert_eq!(sni(io.prefix()).as_deref(), Some("db.example.internal"));
        assert_eq!(sni(b"\x16\x03\x01\x00\x02\x01\x00"), None);
    }

    #[tokio::test]
    async fn bytes_are_replayed() {
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        drop(client);
        let (d, mut io) = detect(server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(d, Detected::Http1);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }

    #[tokio::test]
    async fn split_preface_waits_for_the_rest() {
        let (mut client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(detect(server, Duration::from_secs(5)));
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        tokio::task::yield_now().await;
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        let (d, _) = task.await.unwrap().unwrap();
        assert_eq!(d, Detected::Http2);
    }
}
