//! A plain HTTP peer for tests of the client and the commands: it answers every request with one canned
//! status and body, and records what it received.

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub auth: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the request body is JSON")
    }
}

pub struct Peer {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Peer {
    pub async fn start(status: StatusCode, body: impl Into<String>) -> Peer {
        let body = Bytes::from(body.into());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (log, body) = (log.clone(), body.clone());
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (log, body) = (log.clone(), body.clone());
                    async move {
                        let seen = record(req).await;
                        log.lock().unwrap().push(seen);
                        let mut resp = http::Response::new(Full::new(body));
                        *resp.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
                );
            }
        });
        Peer { url, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The one request it received.
    pub fn only(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        seen.into_iter().next().unwrap()
    }
}

async fn record(req: Request<Incoming>) -> Seen {
    let (parts, body) = req.into_parts();
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let (auth, content_type) = (header(header::AUTHORIZATION), header(header::CONTENT_TYPE));
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    Seen {
        method: parts.method,
        uri: parts.uri.to_string(),
        auth,
        content_type,
        body,
    }
}
