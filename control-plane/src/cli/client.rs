//! The operator API client: plain HTTP through hyper-util's pooled client, the bearer token from a file,
//! JSON in and out, and every failure turned into an error that says what happened and what to check.

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HttpClient};
use hyper_util::rt::TokioExecutor;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use weft_api::control::ErrorBody;

/// How long to wait for the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request that does not wait for a rollout may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read (a `get -A` of a big mesh stays far below it).
const MAX_ANSWER: usize = 64 << 20;
/// How much of an unexpected answer to quote in an error.
const QUOTE: usize = 200;

// === the server's address ===

/// The operator API's base URL: `http://host:port`, or `host:port` (HTTP implied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `scheme://authority`, no trailing slash.
    base: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server URL {input:?}: {reason}")]
pub struct ServerUrlError {
    input: String,
    reason: &'static str,
}

impl FromStr for ServerUrl {
    type Err = ServerUrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ServerUrlError {
            input: s.to_string(),
            reason,
        };
        let with_scheme = if s.contains("://") {
            s.to_string()
        } else {
            format!("http://{s}")
        };
        let uri: Uri = with_scheme
            .parse()
            .map_err(|_| err("write it as http://HOST:PORT"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(err("the operator API is plain HTTP; use http://")),
            _ => return Err(err("only http:// is supported")),
        }
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| err("no host"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(err("give only scheme, host and port (no path)"));
        }
        Ok(ServerUrl {
            base: format!("http://{authority}"),
        })
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

// === the operator token ===

/// Where the token file's path came from, so an error can say what to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenOrigin {
    Flag,
    Env,
    #[default]
    Default,
}

impl fmt::Display for TokenOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenOrigin::Flag => "given by --token-file",
            TokenOrigin::Env => "given by WEFT_TOKEN_FILE",
            TokenOrigin::Default => "the default; set --token-file or WEFT_TOKEN_FILE to change it",
        })
    }
}

/// The operator token and where it was read from.
#[derive(Clone)]
pub struct Credentials {
    token: String,
    path: PathBuf,
    origin: TokenOrigin,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("Credentials")
            .field("path", &self.path)
            .field("origin", &self.origin)
            .finish()
    }
}

impl Credentials {
    pub fn read(path: &Path, origin: TokenOrigin) -> Result<Credentials, ClientError> {
        let err = |reason: String| ClientError::Token {
            path: path.to_path_buf(),
            origin,
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(err("the file is empty".into()));
        }
        // It goes into a header: a file of anything else (a YAML file, a key) is the wrong file.
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(
                "the file does not hold an operator token (one line of printable characters)"
                    .into(),
            ));
        }
        Ok(Credentials {
            token: token.to_string(),
            path: path.to_path_buf(),
            origin,
        })
    }
}

// === errors ===

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the control plane at {server}: {reason} (is weft-control running there? set --server or WEFT_SERVER)")]
    Unreachable { server: ServerUrl, reason: String },
    #[error("the control plane at {server} did not answer within {}", weft_api::Duration(*.after))]
    Timeout { server: ServerUrl, after: Duration },
    #[error("the connection to the control plane at {server} failed: {reason} (is --server weft-control's operator port, 15014?)")]
    Connection { server: ServerUrl, reason: String },
    #[error("cannot read the operator token from {} ({origin}): {reason}; weft-control writes it to <state-dir>/operator.token", .path.display())]
    Token {
        path: PathBuf,
        origin: TokenOrigin,
        reason: String,
    },
    #[error("the control plane at {server} refused the operator token read from {} ({origin}): {message}", .path.display())]
    Unauthorized {
        server: ServerUrl,
        path: PathBuf,
        origin: TokenOrigin,
        message: String,
    },
    /// A 4xx with the server's reasons, e.g. every problem of a refused apply in `details`.
    #[error("{message}")]
    Refused {
        status: StatusCode,
        message: String,
        details: Vec<String>,
    },
    #[error("the control plane at {server} failed ({status}): {message}")]
    ServerError {
        server: ServerUrl,
        status: StatusCode,
        message: String,
        details: Vec<String>,
    },
    #[error("unexpected answer from {server} ({status}): {reason} (is --server weft-control's operator port, 15014?)")]
    Malformed {
        server: ServerUrl,
        status: StatusCode,
        reason: String,
    },
}

impl ClientError {
    /// Lines that go under the message (e.g. `file.yaml:3: ...` for each refused document).
    pub fn details(&self) -> &[String] {
        match self {
            ClientError::Refused { details, .. } | ClientError::ServerError { details, .. } => {
                details
            }
            _ => &[],
        }
    }
}

// === the client ===

pub struct Client {
    http: HttpClient<HttpConnector, Full<Bytes>>,
    server: ServerUrl,
    creds: Credentials,
}

impl Client {
    pub fn new(server: ServerUrl, creds: Credentials) -> Client {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let http = HttpClient::builder(TokioExecutor::new()).build(connector);
        Client {
            http,
            server,
            creds,
        }
    }

    pub fn server(&self) -> &ServerUrl {
        &self.server
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None, REQUEST_TIMEOUT).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).expect("API request types always serialize");
        self.call(Method::POST, path, Some(bytes.into()), timeout)
            .await
    }

    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None, timeout).await
    }

    /// One request: `path` (with its query) under the server's base URL, `timeout` for all of it.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let req = self.request(method, path, body)?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| self.send_error(&e))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| ClientError::Connection {
                    server: self.server.clone(),
                    reason: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok::<_, ClientError>((status, body))
        };
        let (status, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                server: self.server.clone(),
                after: timeout,
            })??;
        decode(status, &body, &self.server, &self.creds)
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.server))
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.creds.token),
            )
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        b.body(Full::new(body.unwrap_or_default()))
            .map_err(|e| ClientError::Malformed {
                server: self.server.clone(),
                status: StatusCode::BAD_REQUEST,
                reason: format!("cannot build a request for {path}: {e}"),
            })
    }

    fn send_error(&self, e: &hyper_util::client::legacy::Error) -> ClientError {
        let reason = causes(e);
        if e.is_connect() {
            ClientError::Unreachable {
                server: self.server.clone(),
                reason,
            }
        } else {
            ClientError::Connection {
                server: self.server.clone(),
                reason,
            }
        }
    }
}

/// The chain of causes under hyper-util's generic "client error (...)" text, e.g.
/// `tcp connect error: Connection refused (os error 111)`.
fn causes(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// Turns an answer into the expected value or the error that explains it.
fn decode<T: DeserializeOwned>(
    status: StatusCode,
    body: &[u8],
    server: &ServerUrl,
    creds: &Credentials,
) -> Result<T, ClientError> {
    let malformed = |reason: String| ClientError::Malformed {
        server: server.clone(),
        status,
        reason,
    };
    if status.is_success() {
        return serde_json::from_slice(body)
            .map_err(|e| malformed(format!("{e}; the answer began {}", quote(body))));
    }
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    if status == StatusCode::UNAUTHORIZED {
        return Err(ClientError::Unauthorized {
            server: server.clone(),
            path: creds.path.clone(),
            origin: creds.origin,
            message: parsed.map_or_else(|| quote(body), |b| b.error),
        });
    }
    let Some(err) = parsed else {
        return Err(malformed(format!(
            "expected a JSON error body, got {}",
            quote(body)
        )));
    };
    if status.is_server_error() {
        return Err(ClientError::ServerError {
            server: server.clone(),
            status,
            message: err.error,
            details: err.details,
        });
    }
    Err(ClientError::Refused {
        status,
        message: err.error,
        details: err.details,
    })
}

/// The start of a body, on one line, for error messages.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        return "an empty body".into();
    }
    match flat.char_indices().nth(QUOTE) {
        Some((cut, _)) => format!("{:?}...", &flat[..cut]),
        None => format!("{flat:?}"),
    }
}

/// A path segment made safe for a URL (ids are free text; names are already DNS labels).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::testing::Peer;
    use tokio::net::TcpListener;

    fn creds() -> Credentials {
        Credentials {
            token: "s3cret".into(),
            path: "/x/operator.token".into(),
            origin: TokenOrigin::Env,
        }
    }

    fn url(s: &str) -> ServerUrl {
        s.parse().unwrap()
    }

    #[test]
    fn server_urls() {
        assert_eq!(
            url("http://127.0.0.1:15014").to_string(),
            "http://127.0.0.1:15014"
        );
        assert_eq!(
            url("http://cp.local:15014/").to_string(),
            "http://cp.local:15014"
        );
        assert_eq!(url("10.0.0.5:9000").to_string(), "http://10.0.0.5:9000");
        assert_eq!(url("[::1]:15014").to_string(), "http://[::1]:15014");
        for bad in [
            "https://cp:15014",
            "ftp://cp",
            "http://cp:15014/api",
            "http://",
            "",
            "http://cp:1?x=1",
        ] {
            assert!(bad.parse::<ServerUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn token_files() {
        let dir = std::env::temp_dir().join(format!("weftctl-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "abc123\n").unwrap();
        let c = Credentials::read(&good, TokenOrigin::Flag).unwrap();
        assert_eq!(c.token, "abc123");
        assert!(!format!("{c:?}").contains("abc123"));

        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let e = Credentials::read(&empty, TokenOrigin::Flag)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty") && e.contains("--token-file"), "{e}");

        let yaml = dir.join("svc.yaml");
        std::fs::write(&yaml, "kind: Service\nmetadata: {}\n").unwrap();
        let e = Credentials::read(&yaml, TokenOrigin::Env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not hold an operator token"), "{e}");

        let e = Credentials::read(&dir.join("missing"), TokenOrigin::Default)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing") && e.contains("WEFT_TOKEN_FILE") && e.contains("operator.token"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn answers_become_values_or_clear_errors() {
        let s = url("http://cp:15014");
        let c = creds();
        let ok: serde_json::Value = decode(StatusCode::OK, b"{\"a\":1}", &s, &c).unwrap();
        assert_eq!(ok["a"], 1);

        let e = decode::<serde_json::Value>(
            StatusCode::UNAUTHORIZED,
            b"{\"error\":\"the operator token is not valid\"}",
            &s,
            &c,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/x/operator.token")
                && e.contains("WEFT_TOKEN_FILE")
                && e.contains("not valid"),
            "{e}"
        );

        let e = decode::<serde_json::Value>(
            StatusCode::UNPROCESSABLE_ENTITY,
            b"{\"error\":\"apply refused: 1 problem(s)\",\"details\":[\"f.yaml:3: bad\"]}",
            &s,
            &c,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "apply refused: 1 problem(s)");
        assert_eq!(e.details(), ["f.yaml:3: bad"]);

        let e = decode::<serde_json::Value>(
            StatusCode::INTERNAL_SERVER_ERROR,
            b"{\"error\":\"disk full\"}",
            &s,
            &c,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("failed (500 Internal Server Error): disk full"),
            "{e}"
        );

        let e = decode::<serde_json::Value>(StatusCode::OK, b"not json", &s, &c).unwrap_err();
        assert!(matches!(e, ClientError::Malformed { .. }));
        assert!(e.to_string().contains("\"not json\""), "{e}");

        let e = decode::<serde_json::Value>(
            StatusCode::NOT_FOUND,
            b"<html>\n<b>nope</b></html>",
            &s,
            &c,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("404") && e.contains("<html> <b>nope") && e.contains("15014"),
            "{e}"
        );
    }

    #[test]
    fn quotes_are_short_and_flat() {
        assert_eq!(quote(b""), "an empty body");
        assert_eq!(quote(b"a\n b"), "\"a b\"");
        let long = "x".repeat(500);
        let q = quote(long.as_bytes());
        assert!(q.len() < 210 && q.ends_with("..."), "{q}");
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("wjt-1.a_b~"), "wjt-1.a_b~");
        assert_eq!(segment("a/b c?"), "a%2Fb%20c%3F");
    }

    // === against a real HTTP peer ===

    async fn peer(status: StatusCode, body: &str) -> (ServerUrl, Peer) {
        let p = Peer::start(status, body).await;
        (url(&p.url), p)
    }

    #[tokio::test]
    async fn sends_the_token_method_path_and_body() {
        let (server, seen) = peer(StatusCode::OK, "{\"ok\":true}").await;
        let client = Client::new(server, creds());
        let v: serde_json::Value = client
            .post(
                "/v1/apply?dryRun=true",
                &serde_json::json!({"files": []}),
                REQUEST_TIMEOUT,
            )
            .await
            .unwrap();
        assert_eq!(v["ok"], true);
        let _: serde_json::Value = client.get("/v1/status").await.unwrap();
        let _: serde_json::Value = client
            .delete("/v1/tokens/abc", REQUEST_TIMEOUT)
            .await
            .unwrap();
        let seen = seen.seen();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].method, Method::POST);
        assert_eq!(seen[0].uri, "/v1/apply?dryRun=true");
        assert_eq!(seen[0].auth.as_deref(), Some("Bearer s3cret"));
        assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
        assert_eq!(seen[0].body, b"{\"files\":[]}");
        assert_eq!(
            (seen[1].method.clone(), seen[1].uri.as_str()),
            (Method::GET, "/v1/status")
        );
        assert!(seen[1].body.is_empty() && seen[1].content_type.is_none());
        assert_eq!(
            (seen[2].method.clone(), seen[2].uri.as_str()),
            (Method::DELETE, "/v1/tokens/abc")
        );
        assert!(seen
            .iter()
            .all(|s| s.auth.as_deref() == Some("Bearer s3cret")));
    }

    #[tokio::test]
    async fn a_401_names_the_token_file() {
        let (server, _) = peer(
            StatusCode::UNAUTHORIZED,
            "{\"error\":\"the operator token is not valid\"}",
        )
        .await;
        let e = Client::new(server, creds())
            .get::<serde_json::Value>("/v1/status")
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Unauthorized { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("/x/operator.token (given by WEFT_TOKEN_FILE)"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn refusals_carry_their_details() {
        let (server, _) = peer(
            StatusCode::UNPROCESSABLE_ENTITY,
            "{\"error\":\"apply refused: 2 problem(s); nothing was changed\",\"details\":[\"a.yaml:3: x\",\"b.yaml:9: y\"]}",
        )
        .await;
        let e = Client::new(server, creds())
            .post::<_, serde_json::Value>("/v1/apply", &(), REQUEST_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(e.details(), ["a.yaml:3: x", "b.yaml:9: y"]);
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_and_names_the_url() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = url(&format!("http://{}", l.local_addr().unwrap()));
        drop(l);
        let e = Client::new(server.clone(), creds())
            .get::<serde_json::Value>("/v1/status")
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains(&server.to_string()) && text.contains("refused"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = url(&format!("http://{}", l.local_addr().unwrap()));
        // Accepts and holds connections without answering.
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = l.accept().await {
                held.push(tcp);
            }
        });
        let e = Client::new(server, creds())
            .delete::<serde_json::Value>("/v1/tokens/x", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
        assert!(e.to_string().contains("within 200ms"), "{e}");
        hold.abort();
    }

    #[tokio::test]
    async fn a_server_that_hangs_up_is_a_connection_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = url(&format!("http://{}", l.local_addr().unwrap()));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                drop(tcp);
            }
        });
        let e = Client::new(server, creds())
            .get::<serde_json::Value>("/v1/status")
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Connection { .. }), "{e:?}");
        task.abort();
    }
}
