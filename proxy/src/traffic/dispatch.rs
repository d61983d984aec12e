//! One HTTP request, planned, on its way to a peer: the destination's bulkhead, then tries (each to an
//! endpoint the balancer picks, bounded by the per-try timeout) and retries within the policy and the
//! budget, all under the route's request timeout; the plan's fallback when no endpoint is left. What
//! happened is noted on the request's record. See docs/traffic.md for the order and the answers the
//! proxy makes itself.

use crate::path::body::{self, Body, IdleTimeout};
use crate::path::errors::ProxyError;
use crate::path::headers::TARGET_PORT;
use crate::path::pool::StreamSlot;
use crate::state::Proxy;
use crate::telemetry::labels::{Flag, RetryResult};
use crate::telemetry::record::Record;
use crate::traffic::balance::{InFlight, Outcome};
use crate::traffic::plan::{FallbackPlan, Plan};
use crate::traffic::retry::{self, Replay};
use http::{request, HeaderValue, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use weft_api::resources::StaticResponse;
use weft_api::Upstream;

/// An opaque stream to a peer.
pub type TcpStream = crate::path::peer_h2::Tunnel;

pub const RETRIES_HEADER: &str = "weft-proxy-retries";
pub const FALLBACK_HEADER: &str = "weft-proxy-fallback";

/// Sends the request along `plan`.
pub async fn send(
    proxy: &Arc<Proxy>,
    plan: &Plan,
    mut parts: request::Parts,
    body: Body,
    client: SocketAddr,
    record: &mut Record,
) -> Result<Response<Body>, ProxyError> {
    let rule = &plan.rule;
    rule.request_headers.apply(&mut parts.headers);
    // The work is built where each branch awaits it: a future held in a local first is built on the
    // stack and then copied whole into this one's state, on every request.
    let mut resp = match rule.request_timeout {
        Some(t) => tokio::time::timeout(t, with_fallback(proxy, plan, parts, body, client, record))
            .await
            .unwrap_or(Err(ProxyError::RequestTimeout(t)))?,
        None => with_fallback(proxy, plan, parts, body, client, record).await?,
    };
    rule.response_headers.apply(resp.headers_mut());
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
    record: &mut Record,
) -> Result<Response<Body>, ProxyError> {
    let can_fall_back = plan.fallback.is_some();
    match tries(proxy, plan, parts, body, client, can_fall_back, record).await {
        Tried::Done(r) => r,
        Tried::NoEndpoint(parts, body) => match plan.fallback.as_deref() {
            // Boxed: taken only when no endpoint is left; inline, its state (a second `tries`) would
            // size every request's future.
            Some(f) => Box::pin(fall_back(proxy, plan, f, parts, body, client, record)).await,
            None => Err(plan.no_endpoint()),
        },
    }
}

/// The plan's fallback: the rule's static answer, or the request sent to the other service.
async fn fall_back(
    proxy: &Arc<Proxy>,
    plan: &Plan,
    f: &FallbackPlan,
    parts: request::Parts,
    body: Body,
    client: SocketAddr,
    record: &mut Record,
) -> Result<Response<Body>, ProxyError> {
    let other = match f {
        FallbackPlan::Response(f) => {
            let Some(r) = &f.response else {
                return Err(plan.no_endpoint());
            };
            tracing::debug!(destination = %plan.what, "no endpoint left: answering with the route's fallback response");
            record.flag(Flag::Fallback);
            return Ok(static_response(r));
        }
        FallbackPlan::Unresolved(Some(why)) => return Err(ProxyError::NoEndpoint(why.clone())),
        FallbackPlan::Unresolved(None) => return Err(plan.no_endpoint()),
        FallbackPlan::Service(other) => other,
    };
    tracing::debug!(destination = %plan.what, fallback = %other.what, "no endpoint left: sending to the route's fallback service");
    let mut resp = match tries(proxy, other, parts, body, client, false, record).await {
        Tried::Done(r) => r?,
        Tried::NoEndpoint(..) => return Err(other.no_endpoint()),
    };
    if let Ok(v) = HeaderValue::from_str(&other.what[..]) {
        resp.headers_mut().insert(FALLBACK_HEADER, v);
    }
    record.flag(Flag::Fallback);
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
    resp
}

enum Tried {
    Done(Result<Response<Body>, ProxyError>),
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
    record: &mut Record,
) -> Tried {
    // Our own expired certificate is not the endpoints' fault: refused before one is chosen, so
    // none is judged (or ejected) for it. The pool refuses too, whatever path reaches it.
    if let Some(not_after) = proxy.identity.expired_at() {
        return Tried::Done(Err(ProxyError::CertificateExpired { not_after }));
    }
    let _slot = match plan.state.request_slot().await {
        Ok(s) => s,
        Err(_) => return Tried::Done(Err(ProxyError::Overflow(plan.what.to_string()))),
    };
    let Some(first) = proxy
        .balancer
        .choose(&plan.candidates, &[], plan.state.policy.ejection)
    else {
        return match can_fall_back {
            true => Tried::NoEndpoint(parts, body),
            false => Tried::Done(Err(plan.no_endpoint())),
        };
    };
    plan.state.deposit();
    let limit = proxy.config.limits.retry_buffer_bytes;
    let mut replay = Replay::new(body, content_length(&parts.headers), limit);
    let mut tried = vec![first.0.peer];
    let mut next = Some(first);
    let mut retries = 0u32;
    loop {
        let Some((up, flight)) = next.take() else {
            return Tried::Done(Err(plan.no_endpoint()));
        };
        let result = try_endpoint(proxy, plan, &up, flight, &mut parts, &mut replay).await;
        let (result, retriable) = match result {
            Ok(r) => r,
            Err(gone) => return Tried::Done(Err(gone)),
        };
        let verdict = retry_verdict(proxy, plan, retriable, retries, &mut replay, &parts, client);
        if verdict != Some(RetryResult::Sent) {
            if verdict.is_some() {
                tracing::debug!(%client, destination = %plan.what, peer = %up.peer, retries, reason = ?verdict, "not retried");
            }
            return Tried::Done(result.map(|r| answered(r, &up, retries, verdict, record)));
        }
        retries += 1;
        tracing::debug!(%client, destination = %plan.what, peer = %up.peer, retry = retries, "retrying");
        drop(result);
        tokio::time::sleep(plan.rule.retry.backoff(retries)).await;
        next = proxy
            .balancer
            .choose(&plan.candidates, &tried, plan.state.policy.ejection);
        if let Some((u, _)) = &next {
            tried.push(u.peer);
        }
    }
}

/// One try to `up`: its outcome reported to the balancer, and whether the answer asks for a retry.
/// `Err` when the body cannot be sent again (only a retry can find it gone).
async fn try_endpoint(
    proxy: &Proxy,
    plan: &Plan,
    up: &Upstream,
    flight: InFlight,
    parts: &mut request::Parts,
    replay: &mut Replay,
) -> Result<(Result<Response<Body>, ProxyError>, bool), ProxyError> {
    parts
        .headers
        .insert(TARGET_PORT, HeaderValue::from(up.target_port));
    let body = replay.take().map_err(|_| plan.no_endpoint())?;
    let req = http::Request::from_parts(parts.clone(), body);
    let result = try_once(proxy, plan, up, req).await;
    let (outcome, retriable) = judge(&result, &plan.rule.retry, &parts.method);
    flight.finish(outcome);
    Ok((result, retriable))
}

/// Whether a retriable answer gets its retry: attempts, the body, then the destination's budget.
/// `None` when the answer did not ask for one. Every verdict is counted.
fn retry_verdict(
    proxy: &Proxy,
    plan: &Plan,
    retriable: bool,
    retries: u32,
    replay: &mut Replay,
    parts: &request::Parts,
    client: SocketAddr,
) -> Option<RetryResult> {
    if !retriable {
        return None;
    }
    let verdict = if retries >= plan.rule.retry.attempts {
        RetryResult::AttemptsExhausted
    } else if !replayable(replay) {
        let limit = proxy.config.limits.retry_buffer_bytes;
        tracing::info!(%client, destination = %plan.what, method = %parts.method, path = parts.uri.path(), limit, retry = "body_too_large", "not retried: the request body is over the replay limit (or still streaming)");
        RetryResult::NotRetryable
    } else if !plan.state.withdraw() {
        RetryResult::BudgetExhausted
    } else {
        RetryResult::Sent
    };
    proxy.metrics.retry(verdict);
    Some(verdict)
}

/// The answer that ends the tries: says on the response how many retries it took, and notes on the
/// record who answered and why a retry the policy wanted was not made.
fn answered(
    mut r: Response<Body>,
    up: &Upstream,
    retries: u32,
    verdict: Option<RetryResult>,
    record: &mut Record,
) -> Response<Body> {
    record.upstream(up);
    record.retries(retries);
    match verdict {
        Some(RetryResult::BudgetExhausted) => record.flag(Flag::RetryBudgetExhausted),
        Some(RetryResult::NotRetryable) => record.flag(Flag::BodyNotRetried),
        _ => {}
    }
    if retries > 0 {
        r.headers_mut()
            .insert(RETRIES_HEADER, HeaderValue::from(retries));
    }
    r
}

async fn try_once(
    proxy: &Proxy,
    plan: &Plan,
    up: &Upstream,
    req: http::Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let connect_timeout = plan.state.policy.connect_timeout;
    // Built in each branch, not held in a local first: see `send`.
    match plan.rule.per_try_timeout {
        Some(t) => tokio::time::timeout(t, proxy.peers.send_with(up, req, connect_timeout))
            .await
            .unwrap_or(Err(ProxyError::PerTryTimeout(t))),
        None => proxy.peers.send_with(up, req, connect_timeout).await,
    }
}

/// How a try counts for the endpoint's health, and whether it asks for a retry. A failed connect never
/// reached the app, so it is retried whatever the method.
fn judge(
    result: &Result<Response<Body>, ProxyError>,
    policy: &retry::RetryRule,
    method: &http::Method,
) -> (Outcome, bool) {
    match result {
        Err(e) if e.is_connect_failure() => (Outcome::ConnectFailure, true),
        Err(ProxyError::PerTryTimeout(_)) => (Outcome::Failure, policy.allows_method(method)),
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
) -> Result<(TcpStream, StreamSlot, Upstream), ProxyError> {
    if let Some(not_after) = proxy.identity.expired_at() {
        return Err(ProxyError::CertificateExpired { not_after });
    }
    let policy = &plan.state.policy;
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
                    || matches!(e, ProxyError::PeerRefused { status, .. } if status.is_server_error());
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
    Err(last.unwrap_or_else(|| plan.no_endpoint()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::labels::Direction;
    use std::mem::size_of_val;

    fn proxy() -> Arc<Proxy> {
        let yaml = "identity: {cert: a, key: b, bundle: c}\ntunnel: {listen: 127.0.0.1:0}\n\
                    admin: 127.0.0.1:0\nhealth: 127.0.0.1:0\n";
        let cfg = weft_api::yaml::from_str("proxy.yaml", yaml).expect("config");
        Proxy::new(cfg, crate::test_identity::web()).expect("proxy")
    }

    /// Every request allocates its dispatch future, and any move of it copies it whole (built in
    /// place it is not copied: `outbound.rs: built_in_box`). Most of it is the peer pool's future,
    /// which holds the connect it makes when no pooled connection is free; what dispatch adds around
    /// that (tries, retries, timeouts; the fallback boxed when taken) must stay small.
    #[tokio::test]
    async fn dispatch_futures_stay_small() {
        let proxy = proxy();
        let up = Upstream {
            peer: "127.0.0.1:1".parse().expect("address"),
            identity: weft_certs::SpiffeId::parse("spiffe://weft.local/ns/shop/sa/api")
                .expect("SPIFFE ID"),
            target_port: 8080,
        };
        let plan = Plan::fixed(&proxy, up.clone());
        let client: SocketAddr = "127.0.0.1:2".parse().expect("address");
        let mut head = http::Request::new(());
        let mut record = Record::http(&proxy, Direction::Outbound, &mut head);
        let parts = || http::Request::new(()).into_parts().0;
        let req = || http::Request::new(body::empty());

        let pool = size_of_val(&proxy.peers.send_with(&up, req(), None));
        let once = size_of_val(&try_once(&proxy, &plan, &up, req()));
        let send = size_of_val(&send(
            &proxy,
            &plan,
            parts(),
            body::empty(),
            client,
            &mut record,
        ));
        // Measured: the pool's 7,608, try_once 8,008, send 10,624 (10,952 with the fallback unboxed).
        assert!(
            once <= pool + 512,
            "try_once: {once} bytes around the pool's {pool}"
        );
        assert!(
            send <= pool + 3328,
            "send: {send} bytes around the pool's {pool}"
        );
    }
}
