//! The admin port (loopback: `/config`, `/identity`, and `POST /shutdown` only when `admin.shutdown` is
//! set: every process in the pod reaches this port, and the app must not stop its sidecar) and the
//! health port (`/ready`, `/live`, `/metrics`).

use crate::path::body::{self, Body};
use crate::path::listen::{self, Accept, ConnLimiter, Connections};
use crate::state::Proxy;
use crate::telemetry::labels::{Listener, Reason};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

#[derive(Clone, Copy)]
enum Port {
    Admin,
    Health,
}

pub async fn run_admin(listener: TcpListener, proxy: Arc<Proxy>) {
    serve(listener, proxy, Port::Admin).await
}

pub async fn run_health(listener: TcpListener, proxy: Arc<Proxy>) {
    serve(listener, proxy, Port::Health).await
}

async fn serve(listener: TcpListener, proxy: Arc<Proxy>, port: Port) {
    // Admin and health keep answering while the proxy drains (readiness must be seen to fail), so they
    // stop with the runtime rather than with the drain signal, and are not part of the drained tasks.
    // Anyone who reaches them is unauthenticated: connections are capped and a client that sends no
    // complete request head in time is cut, so idle or slow clients cannot keep probes from answering.
    let name = port.name();
    let opts = Accept {
        name,
        limiter: ConnLimiter::new(proxy.config.limits.max_admin_connections),
        stop: None,
        connections: Connections::Detached,
        quiet_refusals: false,
    };
    let metrics = proxy.metrics.clone();
    listen::accept(listener, &metrics, opts, move |tcp, client| {
        let proxy = proxy.clone();
        async move {
            let p = proxy.clone();
            let svc = hyper::service::service_fn(move |req| {
                let proxy = p.clone();
                async move { Ok::<_, std::convert::Infallible>(route(req, &proxy, port)) }
            });
            let res = listen::http1_builder(&proxy)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
            if let Err(e) = res {
                listen::report(&proxy, name, client, &e);
            }
        }
    })
    .await
}

impl Port {
    fn name(self) -> Listener {
        match self {
            Port::Admin => Listener::Admin,
            Port::Health => Listener::Health,
        }
    }
}

fn route(req: Request<Incoming>, proxy: &Proxy, port: Port) -> Response<Body> {
    match (port, req.method(), req.uri().path()) {
        (Port::Health, &Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (Port::Health, &Method::GET, "/ready") => {
            if proxy.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else if proxy.shutdown.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
        (Port::Health, &Method::GET, "/metrics") => {
            let mut r = Response::new(body::full(proxy.metrics.encode()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (Port::Admin, &Method::GET, "/config") => json(&config_doc(proxy)),
        (Port::Admin, &Method::GET, "/identity") => json(&identity_doc(proxy)),
        (Port::Admin, &Method::POST, "/shutdown") if proxy.config.admin.shutdown => {
            tracing::info!("shutdown requested on the admin port");
            proxy.shutdown.cancel();
            text(StatusCode::OK, "draining\n")
        }
        (Port::Admin, m, path) if m != Method::GET && m != Method::HEAD => {
            proxy.metrics.reject(Listener::Admin, Reason::WriteDisabled);
            tracing::warn!(method = %m, path, "admin write refused: writes are off (`admin.shutdown` enables POST /shutdown)");
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                "weft-proxy: writes on the admin port are off (admin.shutdown: true enables POST /shutdown; signals stop the proxy)\n",
            )
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The bootstrap config, plus (with a control plane) the mesh view in force under `mesh`.
fn config_doc(proxy: &Proxy) -> serde_json::Value {
    let mut doc = serde_json::to_value(&proxy.config).unwrap_or_default();
    if proxy.config.control.is_some() {
        if let Some(obj) = doc.as_object_mut() {
            let mesh = serde_json::to_value(proxy.mesh().to_snapshot()).unwrap_or_default();
            obj.insert("mesh".into(), mesh);
        }
    }
    doc
}

fn identity_doc(proxy: &Proxy) -> serde_json::Value {
    let cred = proxy.identity.credential();
    let secs = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let now = SystemTime::now();
    serde_json::json!({
        "spiffe_id": cred.id().to_string(),
        "serial": cred.serial_hex(),
        "not_before_unix": secs(cred.not_before()),
        "not_after_unix": secs(cred.not_after()),
        "expires_in_seconds": cred.not_after().duration_since(now).map(|d| d.as_secs()).unwrap_or(0),
        "trust_bundle_roots": proxy.identity.bundle().len(),
    })
}

fn text(status: StatusCode, t: &'static str) -> Response<Body> {
    let mut r = Response::new(body::full(t));
    *r.status_mut() = status;
    r
}

fn json<T: serde::Serialize>(v: &T) -> Response<Body> {
    match serde_json::to_vec_pretty(v) {
        Ok(bytes) => {
            let mut r = Response::new(body::full(bytes));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode admin response");
            text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode\n")
        }
    }
}
