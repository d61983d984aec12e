//! Authorization at the destination: the workload's policies (compiled in the mesh view, see
//! [`weft_api::authz`]) applied to an arriving request or stream, with the 403, the log line and the
//! counters a refusal gets.

pub use weft_api::authz::{normalize, Authorizer, Decision, HttpSubject, Subject};

use crate::path::body::{self, Body};
use crate::path::headers::PROXY_ERROR;
use crate::state::Proxy;
use http::{HeaderValue, Response, StatusCode};

/// The header naming the policy that refused a request.
pub const DENIED_BY: &str = "weft-denied-by";

/// Applies the proxy's policies to `subject`: `None` to go ahead, or the 403 to answer. Denials and
/// audit-mode would-be denials are logged and counted.
pub fn authorize(proxy: &Proxy, subject: &Subject<'_>) -> Option<Response<Body>> {
    let mesh = proxy.mesh();
    if mesh.authorizer.is_empty() {
        return None;
    }
    let v = mesh.authorizer.check(subject);
    let source = subject.source.map(|s| s.as_str()).unwrap_or("(plaintext)");
    let what = subject.http.as_ref().map(|h| (h.method, h.path));
    if let Some(a) = &v.audit {
        proxy.metrics.authz_denial(&a.policy, "audit");
        tracing::info!(policy = %a.policy, reason = a.reason, source, port = subject.port, request = ?what, "authorization audit: this would be denied");
    }
    let Decision::Deny(d) = v.decision else {
        return None;
    };
    proxy.metrics.authz_denial(&d.policy, "enforce");
    tracing::info!(policy = %d.policy, reason = d.reason, source, port = subject.port, request = ?what, "request denied by authorization policy");
    let mut r = Response::new(body::full(format!(
        "weft-proxy: denied by AuthorizationPolicy {} ({})\n",
        d.policy, d.reason
    )));
    *r.status_mut() = StatusCode::FORBIDDEN;
    r.headers_mut()
        .insert(PROXY_ERROR, HeaderValue::from_static("denied"));
    if let Ok(v) = HeaderValue::from_str(&d.policy) {
        r.headers_mut().insert(DENIED_BY, v);
    }
    Some(r)
}
