//! Entry points for the fuzz targets (`fuzz/`) and their corpus tests: the private parsers that read
//! outside bytes, reachable without a socket. Each calls exactly what the data path calls.

use crate::dns::server::{Server, Step};
pub use crate::path::detect::Detected;
use crate::path::h1_guard::{ConflictFlag, Scan};

/// Whether the HTTP/1 framing guard flags `chunks`, read in this order, as a head with both
/// `Content-Length` and `Transfer-Encoding`.
pub fn h1_conflict(chunks: &[&[u8]]) -> bool {
    let flag = ConflictFlag::default();
    let mut scan = Scan::default();
    for c in chunks {
        scan.feed(c, &flag);
    }
    flag.is_set()
}

/// Protocol detection's decision on the bytes read so far (`None`: more bytes could change it).
pub fn classify(buf: &[u8]) -> Option<Detected> {
    crate::path::detect::classify(buf)
}

/// Whether `buf` starts with an HTTP/1 request line with any method token.
pub fn request_line(buf: &[u8]) -> bool {
    crate::path::detect::request_line(buf)
}

/// What the DNS responder sends back for one received message (`None`: nothing is sent).
/// `server` must have no forwarder: a relayed question would need the network.
pub fn dns_reply(server: &Server, packet: &[u8]) -> Option<Vec<u8>> {
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 53));
    match server.decide(packet, peer) {
        Step::Reply(bytes) => Some(bytes),
        Step::Drop | Step::Forward(..) => None,
    }
}
