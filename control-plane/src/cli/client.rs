//! A small client for the operator API: one HTTP/1.1 request per call, bearer token, JSON in and out,
//! every failure turned into a message that says what to do.

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use weft_api::control::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the control plane at {server}: {reason} (is weft-control running? --server / WEFT_SERVER)")]
    Unreachable { server: String, reason: String },
    #[error("cannot read the operator token {path}: {reason} (--token-file / WEFT_TOKEN_FILE; the control plane writes <state-dir>/operator.token)")]
    Token { path: PathBuf, reason: String },
    #[error("the control plane refused the operator token from {path} (401): {message}")]
    Unauthorized { path: PathBuf, message: String },
    #[error("{message}")]
    Refused {
        status: StatusCode,
        message: String,
        details: Vec<String>,
    },
    #[error("unexpected answer from the control plane ({status}): {reason}")]
    Malformed { status: StatusCode, reason: String },
}

pub struct Client {
    server: String,
    authority: String,
    token: String,
    token_path: PathBuf,
    timeout: Duration,
}

impl Client {
    /// `server` like `http://127.0.0.1:15014`; the token is read from `token_file`.
    pub fn new(server: &str, token_file: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let authority = server
            .strip_prefix("http://")
            .unwrap_or(server)
            .trim_end_matches('/')
            .to_string();
        let token = std::fs::read_to_string(token_file)
            .map_err(|e| ClientError::Token {
                path: token_file.to_path_buf(),
                reason: e.to_string(),
            })?
            .trim()
            .to_string();
        Ok(Client {
            server: server.to_string(),
            authority,
            token,
            token_path: token_file.to_path_buf(),
            timeout,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None::<&()>).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            server: self.server.clone(),
            reason,
        };
        let bytes = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).map_err(|e| unreachable(e.to_string()))?),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| unreachable(e.to_string()))?;
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(&self.authority)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(conn);
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, ClientError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))??;
        decode(status, &body, &self.token_path)
    }
}

fn decode<T: DeserializeOwned>(
    status: StatusCode,
    body: &[u8],
    token_path: &Path,
) -> Result<T, ClientError> {
    if status.is_success() {
        return serde_json::from_slice(body).map_err(|e| ClientError::Malformed {
            status,
            reason: e.to_string(),
        });
    }
    let err: ErrorBody = serde_json::from_slice(body).unwrap_or_else(|_| ErrorBody {
        error: String::from_utf8_lossy(body).trim().to_string(),
        details: Vec::new(),
    });
    if status == StatusCode::UNAUTHORIZED {
        return Err(ClientError::Unauthorized {
            path: token_path.to_path_buf(),
            message: err.error,
        });
    }
    Err(ClientError::Refused {
        status,
        message: err.error,
        details: err.details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_values_or_clear_errors() {
        let p = Path::new("/x/operator.token");
        let ok: serde_json::Value = decode(StatusCode::OK, b"{\"a\":1}", p).unwrap();
        assert_eq!(ok["a"], 1);
        let e = decode::<serde_json::Value>(StatusCode::UNAUTHORIZED, b"{\"error\":\"no\"}", p)
            .unwrap_err();
        assert!(e.to_string().contains("/x/operator.token"), "{e}");
        let e = decode::<serde_json::Value>(
            StatusCode::UNPROCESSABLE_ENTITY,
            b"{\"error\":\"apply refused\",\"details\":[\"f.yaml:3: bad\"]}",
            p,
        )
        .unwrap_err();
        match e {
            ClientError::Refused { details, .. } => assert_eq!(details, ["f.yaml:3: bad"]),
            other => panic!("{other}"),
        }
        let e = decode::<serde_json::Value>(StatusCode::OK, b"not json", p).unwrap_err();
        assert!(matches!(e, ClientError::Malformed { .. }));
    }
}
