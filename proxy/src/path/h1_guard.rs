//! A watch on the raw bytes of HTTP/1 request heads, for the one smuggling shape the HTTP/1 parser lets
//! through: a request with both `Content-Length` and `Transfer-Encoding`. hyper drops the
//! `Content-Length` and decodes the body as chunked (RFC 9112 6.3 allows that for an intermediary that then
//! closes the connection), so the service never sees the conflict. We refuse such a request with 400 instead,
//! as a proxy that sits in front of other parsers should.
//!
//! The watch scans header lines as they are read, without buffering: a line that starts with one of the two
//! names (any case) sets a bit for the current head; a blank line (empty or a lone `\r`) ends the head. Body bytes go through the
//! same scan, so a body that itself looks like such a head could raise the flag; the flag is only acted on
//! for requests that carry `Transfer-Encoding`, and hyper closes the connection after a conflicting request,
//! so at worst a chunked request on a connection that also carried a forged head is refused.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const CL: &[u8] = b"content-length:";
const TE: &[u8] = b"transfer-encoding:";

/// Set once a head with both framing headers was seen on the connection.
#[derive(Clone, Default)]
pub struct ConflictFlag(Arc<AtomicBool>);

impl ConflictFlag {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub(crate) struct Scan {
    /// The current line's first bytes, lowercased, up to the longest name we look for.
    prefix: [u8; 18],
    len: usize,
    /// Bytes in the current line so far (excluding its `\n`).
    line_bytes: usize,
    /// The current line so far is exactly `\r`.
    only_cr: bool,
    saw_cl: bool,
    saw_te: bool,
}

impl Scan {
    /// Jumps from line end to line end (memchr), looking only at the first bytes of each line, so a
    /// large body costs a vectorised search rather than a per-byte loop.
    pub(crate) fn feed(&mut self, mut data: &[u8], flag: &ConflictFlag) {
        while !data.is_empty() {
            let (line, rest, ended) = match memchr::memchr(b'\n', data) {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            self.take(line);
            if ended {
                self.end_line(flag);
            }
            data = rest;
        }
    }

    fn take(&mut self, part: &[u8]) {
        if part.is_empty() {
            return;
        }
        self.only_cr = self.line_bytes == 0 && part == b"\r";
        self.line_bytes += part.len();
        let room = self.prefix.len() - self.len;
        if room == 0 {
            return;
        }
        for &b in &part[..part.len().min(room)] {
            self.prefix[self.len] = b.to_ascii_lowercase();
            self.len += 1;
        }
        let p = &self.prefix[..self.len];
        if p.starts_with(CL) {
            self.saw_cl = true;
        } else if p.starts_with(TE) {
            self.saw_te = true;
        }
    }

    fn end_line(&mut self, flag: &ConflictFlag) {
        if self.line_bytes == 0 || self.only_cr {
            // Blank line: the end of a head.
            if self.saw_cl && self.saw_te {
                flag.0.store(true, Ordering::Relaxed);
            }
            self.saw_cl = false;
            self.saw_te = false;
        }
        self.len = 0;
        self.line_bytes = 0;
        self.only_cr = false;
    }
}

pin_project_lite::pin_project! {
    /// Passes bytes through unchanged while scanning what is read.
    pub struct H1Guard<IO> {
        #[pin]
        inner: IO,
        scan: Scan,
        flag: ConflictFlag,
    }
}

impl<IO> H1Guard<IO> {
    pub fn new(inner: IO, flag: ConflictFlag) -> Self {
        H1Guard {
            inner,
            scan: Scan::default(),
            flag,
        }
    }
}

impl<IO: AsyncRead> AsyncRead for H1Guard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            this.scan.feed(&buf.filled()[before..], this.flag);
        }
        res
    }
}

impl<IO: AsyncWrite> AsyncWrite for H1Guard<IO> {
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
    use super::*;

    fn scan(chunks: &[&[u8]]) -> bool {
        let flag = ConflictFlag::default();
        let mut s = Scan::default();
        for c in chunks {
            s.feed(c, &flag);
        }
        flag.is_set()
    }

    #[test]
    fn conflicting_heads_are_flagged_in_either_order_and_split_anywhere() {
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(scan(&[head]));
        let swapped = b"POST / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\ncontent-length: 6\r\n\r\n";
        assert!(scan(&[swapped]));
        for cut in 1..head.len() {
            assert!(scan(&[&head[..cut], &head[cut..]]), "split at {cut}");
        }
    }

    #[test]
    fn ordinary_heads_are_not() {
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 6\r\n\r\nabcdef"
        ]));
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n0\r\n\r\n"
        ]));
        // The two names in different requests on one connection.
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ]));
        // A value mentioning the other name is not a header line.
        assert!(!scan(&[
            b"GET / HTTP/1.1\r\nX-Note: transfer-encoding: chunked\r\nContent-Length: 0\r\n\r\n"
        ]));
    }
}
