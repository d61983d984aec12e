//! A snapshot frame as one HTTP/2 body chunk made of several shared buffers.
//!
//! `h2` queues every chunk of a response body as an entry of a slab per connection that keeps its
//! largest size for as long as the connection lives: a frame written as a hundred chunks cost each
//! proxy's connection ~33 KiB for good (docs/performance.md, "Services as changes"). A [`Rope`] is
//! one chunk, so one entry, and its pieces are still the cycle's shared sections, not copies. No
//! maintained crate we found offers this `Buf` over a list of `Bytes` (`bytes::Chain` joins two).

use bytes::{Buf, Bytes};
use std::collections::VecDeque;
use std::io::IoSlice;

#[derive(Debug, Default)]
pub struct Rope {
    pieces: VecDeque<Bytes>,
    remaining: usize,
}

impl From<Vec<Bytes>> for Rope {
    fn from(pieces: Vec<Bytes>) -> Rope {
        let pieces: VecDeque<Bytes> = pieces.into_iter().filter(|p| !p.is_empty()).collect();
        let remaining = pieces.iter().map(Bytes::len).sum();
        Rope { pieces, remaining }
    }
}

impl From<Bytes> for Rope {
    fn from(b: Bytes) -> Rope {
        Rope::from(vec![b])
    }
}

impl Buf for Rope {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.pieces.front().map_or(&[], |p| p)
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, piece) in dst.iter_mut().zip(&self.pieces) {
            *slot = IoSlice::new(piece);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of a rope");
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(front) = self.pieces.front_mut() else {
                return;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.pieces.pop_front();
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        // Within the first piece, a slice of it rather than a copy.
        match self.pieces.front_mut() {
            Some(front) if len <= front.len() => {
                let out = front.split_to(len);
                self.remaining -= len;
                if front.is_empty() {
                    self.pieces.pop_front();
                }
                out
            }
            _ => Bytes::from(self.copy_bytes(len)),
        }
    }
}

impl Rope {
    fn copy_bytes(&mut self, len: usize) -> Vec<u8> {
        assert!(len <= self.remaining, "copy past the end of a rope");
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let n = (len - out.len()).min(self.chunk().len());
            out.extend_from_slice(&self.chunk()[..n]);
            self.advance(n);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope() -> Rope {
        Rope::from(["ab", "", "cde", "f"].map(Bytes::from).to_vec())
    }

    #[test]
    fn reads_across_its_pieces_as_one_buffer() {
        let mut r = rope();
        assert_eq!(r.remaining(), 6);
        assert_eq!(r.chunk(), b"ab");
        r.advance(3);
        assert_eq!((r.remaining(), r.chunk()), (3, &b"de"[..]));
        let mut slots = [IoSlice::new(&[]); 4];
        assert_eq!(r.chunks_vectored(&mut slots), 2);
        assert_eq!((&*slots[0], &*slots[1]), (&b"de"[..], &b"f"[..]));
        assert_eq!(&r.copy_to_bytes(3)[..], b"def");
        assert_eq!((r.remaining(), r.chunk()), (0, &b""[..]));
    }

    #[test]
    fn copy_to_bytes_slices_the_first_piece_and_copies_across_pieces() {
        let shared = Bytes::from_static(b"abc");
        let mut r = Rope::from(vec![shared.clone(), Bytes::from_static(b"de")]);
        let first = r.copy_to_bytes(2);
        assert_eq!(first.as_ptr(), shared.as_ptr(), "a slice, not a copy");
        assert_eq!(&r.copy_to_bytes(3)[..], b"cde");
        let mut all = Vec::new();
        let mut r = rope();
        while r.has_remaining() {
            let n = r.chunk().len().min(2);
            all.extend_from_slice(&r.chunk()[..n]);
            r.advance(n);
        }
        assert_eq!(all, b"abcdef");
    }
}
