//! Copying bytes both ways between two streams, with half-close carried across (EOF on one side shuts
//! down writing on the other) and bytes counted.

use crate::telemetry::metrics::{BytesLabels, Direction, Flow, Metrics};
use tokio::io::{AsyncRead, AsyncWrite};

/// Per-direction copy buffer. 64 KiB lets one read fill several TLS records for bulk streams; small
/// messages never fill it.
const BUF: usize = 64 * 1024;

/// Copies until both directions are done. Returns (bytes a→b, bytes b→a).
pub async fn splice<A, B>(
    a: &mut A,
    b: &mut B,
    metrics: &Metrics,
    direction: Direction,
) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let res = tokio::io::copy_bidirectional_with_sizes(a, b, BUF, BUF).await;
    if let Ok((sent, received)) = res {
        let flow = |flow| BytesLabels { direction, flow };
        metrics
            .tcp_bytes
            .get_or_create(&flow(Flow::Sent))
            .inc_by(sent);
        metrics
            .tcp_bytes
            .get_or_create(&flow(Flow::Received))
            .inc_by(received);
    }
    res
}
