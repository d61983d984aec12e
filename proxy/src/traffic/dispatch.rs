//! One HTTP request, routed, on its way to a peer: the destination's bulkhead, then tries (each to an
//! endpoint the balancer picks, bounded by the per-try timeout) and retries within the policy and the
//! budget, all under the route's request timeout; a fallback when no endpoint is left. See
//! docs/traffic.md for the order and the answers the proxy makes itself.

use crate::path::body::{self, Body, IdleTimeout};
use crate::path::errors::ForwardError;
use crate::path::headers::TARGET_PORT;
use crate::path::pool::StreamSlot;
use crate::state::Proxy;
use crate::telemetry::access_log::CallInfo;
use crate::telemetry::stats::StatsKey;
use crate::traffic::balance::Outcome;
use crate::traffic::destination::DestState;
use crate::traffic::mesh::Routed;
use crate::traffic::retry::{self, Replay};
use crate::traffic::route::RulePolicy;

/// An opaque stream to a peer.
pub type TcpStream = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;
use http::{request, HeaderValue, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use weft_api::resources::{Fallback, StaticResponse};
use weft_api::Upstream;

pub const RETRIES_HEADER: &str = "weft-proxy-retries";
pub const FALLBACK_HEADER: &str = "weft-proxy-fallback";

/// Where one request may go.
#[derive(Clone)]
pub struct Plan {
    pub candidates: Arc<[Upstream]>,
    pub dest: Arc<DestState>,
    pub rule: Arc<RulePolicy>,
    /// For the per-version stats; `None` for a fixed peer.
    pub stats: Option<StatsKey>,
    /// `namespace/name` of the destination, for errors and logs.
    pub what: Arc<str>,
}

impl Plan {
    pub fn routed(proxy: &Proxy, r: Routed) -> Plan {
        let b = &r.backend;
        Plan {
            dest: proxy
                .destinations
                .get(&b.namespace, &b.name, r.traffic_policy.as_ref()),
            what: format!("{}/{}", b.namespace, b.name).into(),
            stats: Some(StatsKey {
                namespace: b.namespace.clone(),
                service: b.name.clone(),
                subset: b.subset.clone(),
            }),
            candidates: r.candidates.into(),
            rule: r.rule,
        }
    }

    /// A fixed peer (an explicit listener's, or a pod addressed directly).
    pub fn fixed(proxy: &Proxy, up: Upstream) -> Plan {
        let what = up.peer.to_string();
        Plan {
            dest: proxy.destinations.get("", &what, None),
            candidates: Arc::from([up]),
            rule: crate::traffic::route::DEFAULT_POLICY.clone(),
            stats: None,
            what: what.into(),
        }
    }
}

/// Sends the request along `plan`; every failure comes back as the response the client should see.
pub async fn send(
    proxy: &Arc<Proxy>,
    plan: Plan,
    mut parts: request::Parts,
    body: Body,
    client: SocketAddr,
) -> Result<Response<Body>, ForwardError> {
    let start = Instant::now();
    plan.rule.request_headers.apply(&mut parts.headers);
    let rule = plan.rule.clone();
    let work = with_fallback(proxy, &plan, parts, body, client);
    let result = match rule.request_timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .unwrap_or(Err(ForwardError::RequestTimeout(t))),
        None => work.await,
    };
    if let Some(key) = &plan.stats {
        let status = match &result {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.status().as_u16(),
        };
        proxy.upstream_stats.record(key, status, start.elapsed());
    }
    let mut resp = result?;
    rule.response_headers.apply(resp.headers_mut());
    let version = plan.stats.as_ref().and_then(|k| k.subset.clone());
    let route = (!rule.name.is_empty()).then(|| rule.name.clone());
    match resp.extensions_mut().get_mut::<CallInfo>() {
        Some(info) => {
            info.version = version;
            info.route = route;
        }
        None => {
            resp.extensions_mut().insert(CallInfo {
                version,
                route,
                ..CallInfo::default()
            });
        }
    }
    Ok(match rule.idle_timeout {
        Some(idle) => resp.map(|b| body::boxed(IdleTimeout::new(b, idle))),
        None => resp,
    })
}

async fn with_fallback(
    proxy: &Arc<Proxy>,
    plan: &Plan,
    parts: request::Parts,
    body: Body,
    client: SocketAddr,
) -> Result<Response<Body>, ForwardError> {
    let fallback = plan.rule.fallback.as_ref();
    match tries(proxy, plan, parts, body, client, fallback.is_some()).await {
        Tried::Done(r) => r,
        Tried::NoEndpoint(parts, body) => match fallback {
            Some(f) => fall_back(proxy, plan, f, parts, body, client).await,
            None => Err(no_endpoint(plan)),
        },
    }
}

fn no_endpoint(plan: &Plan) -> ForwardError {
    let why = if plan.candidates.is_empty() {
        "no ready endpoint with a proxy"
    } else {
        "every endpoint is ejected"
    };
    ForwardError::NoEndpoint(format!("{} ({why})", plan.what))
}

/// The rule's fallback: its static answer, or the request sent to another service.
async fn fall_back(
    proxy: &Arc<Proxy>,
    plan: &Plan,
    f: &Fallback,
    parts: request::Parts,
    body: Body,
    client: SocketAddr,
) -> Result<Response<Body>, ForwardError> {
    if let Some(r) = &f.response {
        tracing::debug!(destination = %plan.what, "no endpoint left: answering with the route's fallback response");
        return Ok(static_response(r));
    }
    let Some(b) = &f.backend_ref else {
        return Err(no_endpoint(plan));
    };
    let namespace = b.namespace.clone().unwrap_or_else(|| {
        plan.stats
            .as_ref()
            .map(|s| s.namespace.clone())
            .unwrap_or_default()
    });
    let port = b.port.or_else(|| {
        plan.candidates.first().map(|u| u.target_port) // only used when the fallback names no port
    });
    let mesh = proxy.mesh();
    let port = match port.or_else(|| mesh.first_port(&namespace, &b.name)) {
        Some(p) => p,
        None => return Err(no_endpoint(plan)),
    };
    let (candidates, policy) = mesh.endpoints(&namespace, &b.name, port, None)?;
    drop(mesh);
    let other = Plan {
        dest: proxy.destinations.get(&namespace, &b.name, policy.as_ref()),
        what: format!("{namespace}/{}", b.name).into(),
        stats: Some(StatsKey {
            namespace: namespace.clone(),
            service: b.name.clone(),
            subset: None,
        }),
        candidates: candidates.into(),
        rule: crate::traffic::route::DEFAULT_POLICY.clone(),
    };
    tracing::debug!(destination = %plan.what, fallback = %other.what, "no endpoint left: sending to the route's fallback service");
    let mut resp = match tries(proxy, &other, parts, body, client, false).await {
        Tried::Done(r) => r?,
        Tried::NoEndpoint(..) => return Err(no_endpoint(&other)),
    };
    if let Ok(v) = HeaderValue::from_str(&other.what[..]) {
        resp.headers_mut().insert(FALLBACK_HEADER, v);
    }
    if let Some(info) = resp.extensions_mut().get_mut::<CallInfo>() {
        info.flags.push("fallback");
    }
    Ok(resp)
}

fn static_response(r: &StaticResponse) -> Response<Body> {
    let mut resp = Response::new(body::full(r.body.clone()));
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    let h = resp.headers_mut();
    for kv in &r.headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(kv.name.as_bytes()),
            HeaderValue::from_str(&kv.value),
        ) {
            h.append(n, v);
        }
    }
    h.insert(FALLBACK_HEADER, HeaderValue::from_static("response"));
    resp.extensions_mut().insert(CallInfo {
        flags: vec!["fallback"],
        ..CallInfo::default()
    });
    resp
}

enum Tried {
    Done(Result<Response<Body>, ForwardError>),
    /// No endpoint could be tried at all: the request comes back untouched for a fallback.
    NoEndpoint(request::Parts, Body),
}

/// The first try and any retries.
async fn tries(
    proxy: &Arc<Proxy>,
    plan: &Plan,
    mut parts: request::Parts,
    body: Body,
    client: SocketAddr,
    can_fall_back: bool,
) -> Tried {
    let _slot = match plan.dest.request_slot().await {
        Ok(s) => s,
        Err(_) => return Tried::Done(Err(ForwardError::Overflow(plan.what.to_string()))),
    };
    let Some((first, flight)) =
        proxy
            .balancer
            .choose(&plan.candidates, &[], plan.dest.policy.ejection)
    else {
        return match can_fall_back {
            true => Tried::NoEndpoint(parts, body),
            false => Tried::Done(Err(no_endpoint(plan))),
        };
    };
    plan.dest.deposit();
    let policy = &plan.rule.retry;
    let limit = proxy.config.limits.retry_buffer_bytes;
    let mut replay = Replay::new(body, content_length(&parts.headers), limit);
    let mut tried = vec![first.peer];
    let mut next = Some((first, flight));
    let mut retries = 0u32;
    loop {
        let Some((up, flight)) = next.take() else {
            return Tried::Done(Err(no_endpoint(plan)));
        };
        parts
            .headers
            .insert(TARGET_PORT, HeaderValue::from(up.target_port));
        let body = match replay.take() {
            Ok(b) => b,
            // Only a retry can find the body gone; `retriable` below checked it could be replayed.
            Err(_) => return Tried::Done(Err(no_endpoint(plan))),
        };
        let req = http::Request::from_parts(parts.clone(), body);
        let result = try_once(proxy, plan, &up, req).await;
        let (outcome, retriable) = judge(&result, policy, &parts.method);
        flight.finish(outcome);
        let verdict = if !retriable {
            None
        } else if retries >= policy.attempts {
            Some("attempts_exhausted")
        } else if !replayable(&mut replay) {
            tracing::info!(%client, destination = %plan.what, method = %parts.method, path = parts.uri.path(), limit, retry = "body_too_large", "not retried: the request body is over the replay limit (or still streaming)");
            Some("not_retryable")
        } else if !plan.dest.withdraw() {
            Some("budget_exhausted")
        } else {
            Some("sent")
        };
        if let Some(v) = verdict {
            proxy.metrics.retry(v);
        }
        if verdict != Some("sent") {
            if verdict.is_some() {
                tracing::debug!(%client, destination = %plan.what, peer = %up.peer, retries, reason = verdict, "not retried");
            }
            let info = CallInfo {
                upstream: Some(up.peer),
                upstream_identity: Some(up.identity.to_string()),
                retries,
                flags: match verdict {
                    Some("budget_exhausted") => vec!["retry_budget_exhausted"],
                    Some("not_retryable") => vec!["body_not_retried"],
                    _ => Vec::new(),
                },
                ..CallInfo::default()
            };
            return Tried::Done(result.map(|r| note_retries(r, info)));
        }
        retries += 1;
        tracing::debug!(%client, destination = %plan.what, peer = %up.peer, retry = retries, "retrying");
        drop(result);
        tokio::time::sleep(policy.backoff(retries)).await;
        next = proxy
            .balancer
            .choose(&plan.candidates, &tried, plan.dest.policy.ejection);
        if let Some((u, _)) = &next {
            tried.push(u.peer);
        }
    }
}

async fn try_once(
    proxy: &Proxy,
    plan: &Plan,
    up: &Upstream,
    req: http::Request<Body>,
) -> Result<Response<Body>, ForwardError> {
    let send = proxy
        .peers
        .send_with(up, req, plan.dest.policy.connect_timeout);
    match plan.rule.per_try_timeout {
        Some(t) => tokio::time::timeout(t, send)
            .await
            .unwrap_or(Err(ForwardError::PerTryTimeout(t))),
        None => send.await,
    }
}

/// How a try counts for the endpoint's health, and whether it asks for a retry. A failed connect never
/// reached the app, so it is retried whatever the method.
fn judge(
    result: &Result<Response<Body>, ForwardError>,
    policy: &retry::RetryRule,
    method: &http::Method,
) -> (Outcome, bool) {
    match result {
        Err(e) if e.is_connect_failure() => (Outcome::ConnectFailure, true),
        Err(ForwardError::PerTryTimeout(_)) => (Outcome::Failure, policy.allows_method(method)),
        Err(e) => (
            Outcome::Failure,
            policy.allows_method(method) && policy.retriable(e.status(), &Default::default()),
        ),
        Ok(r) => {
            let s = r.status();
            let outcome = if s.is_server_error() {
                Outcome::Failure
            } else if s == StatusCode::TOO_MANY_REQUESTS {
                Outcome::Throttled
            } else {
                Outcome::Success
            };
            let retriable = policy.allows_method(method) && policy.retriable(s, r.headers());
            (outcome, retriable)
        }
    }
}

/// Whether the next try can have the body. The last try's response is dropped first, which ends its
/// stream and hands back any unread rest of the body.
fn replayable(replay: &mut Replay) -> bool {
    replay.take().is_ok()
}

/// Says on the response how many retries it took, and keeps what the access log wants to know.
fn note_retries(mut r: Response<Body>, info: CallInfo) -> Response<Body> {
    if info.retries > 0 {
        r.headers_mut()
            .insert(RETRIES_HEADER, HeaderValue::from(info.retries));
    }
    r.extensions_mut().insert(info);
    r
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Opaque TCP: a CONNECT stream to one of the plan's endpoints; a failed connect moves on to another
/// endpoint, up to the destination's `connectRetries`.
pub async fn connect_tcp(
    proxy: &Arc<Proxy>,
    plan: &Plan,
) -> Result<(TcpStream, StreamSlot, Upstream), ForwardError> {
    let policy = &plan.dest.policy;
    let mut tried = Vec::new();
    let mut last = None;
    for attempt in 0..=policy.connect_retries {
        let Some((up, flight)) = proxy
            .balancer
            .choose(&plan.candidates, &tried, policy.ejection)
        else {
            break;
        };
        tried.push(up.peer);
        match proxy.peers.connect_tcp(&up, policy.connect_timeout).await {
            Ok((io, slot)) => {
                flight.finish(Outcome::Success);
                return Ok((io, slot, up));
            }
            Err(e) => {
                // A refused CONNECT (the far app would not take it) carried no byte either.
                let connect = e.is_connect_failure()
                    || matches!(e, ForwardError::PeerRefused { status, .. } if status.is_server_error());
                flight.finish(if connect {
                    Outcome::ConnectFailure
                } else {
                    Outcome::Failure
                });
                tracing::debug!(destination = %plan.what, peer = %up.peer, attempt, error = %e, "tcp connect failed");
                if !connect {
                    return Err(e);
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| no_endpoint(plan)))
}
