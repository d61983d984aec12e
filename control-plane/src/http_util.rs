//! Small pieces both API ports share: JSON answers, error bodies, bounded request bodies.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use serde::{de::DeserializeOwned, Serialize};
use std::convert::Infallible;
use weft_api::control::ErrorBody;

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("API types always serialize");
    bytes.push(b'\n');
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub fn error(status: StatusCode, error: impl Into<String>, details: Vec<String>) -> Response<Body> {
    json(
        status,
        &ErrorBody {
            error: error.into(),
            details,
        },
    )
}

/// An operator request whose change could not be saved: logged, and answered 507 (no space), 503
/// (read-only, or the etcd store unreachable) or 500. Nothing was changed: the state in memory and on disk is the last saved one,
/// and the same request succeeds once the state directory is writable again.
pub fn not_saved(what: &str, e: &weft_api::persist::StateError) -> Response<Body> {
    use weft_api::persist::Storage;
    let status = match e.storage() {
        Storage::Full => StatusCode::INSUFFICIENT_STORAGE,
        Storage::ReadOnly | Storage::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Storage::Other => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::error!(error = %e, "{what} not saved; nothing was changed, the last saved state stays in force");
    error(
        status,
        format!("{what} not saved: {e}; nothing was changed"),
        vec![],
    )
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r
}

/// Reads a JSON request body of at most `limit` bytes that arrives whole `within` the given time (a
/// client that trickles it is answered 408 and holds its connection no longer); the error is the
/// answer to send.
pub async fn read_json<T: DeserializeOwned>(
    body: hyper::body::Incoming,
    limit: usize,
    within: std::time::Duration,
) -> Result<T, Response<Body>> {
    decode_json(&read_body(body, limit, within).await?).map_err(|answer| *answer)
}

/// A JSON request body already read; the error is the answer to send (400).
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Box<Response<Body>>> {
    serde_json::from_slice(bytes).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("malformed request: {e}"),
            vec![],
        ))
    })
}

/// [`read_json`]'s reading half: the body's bytes, bounded in size and time.
pub async fn read_body(
    body: hyper::body::Incoming,
    limit: usize,
    within: std::time::Duration,
) -> Result<Bytes, Response<Body>> {
    let read = Limited::new(body, limit).collect();
    let Ok(read) = tokio::time::timeout(within, read).await else {
        return Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {within:?}"),
            vec![],
        ));
    };
    match read {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            let status = if e.is::<http_body_util::LengthLimitError>() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            Err(error(
                status,
                format!("cannot read the request body (limit {limit} bytes): {e}"),
                vec![],
            ))
        }
    }
}
