//! Authorization at the destination: the workload's policies (compiled in the mesh view, see
//! [`weft_api::authz`]) applied to an arriving request or stream, with the 403, the log line and the
//! counters a refusal gets.

pub use weft_api::authz::{normalize, Authorizer, Decision, HttpSubject, Subject};

use crate::path::errors::ProxyError;
use crate::state::Proxy;
use crate::telemetry::labels::AuthzMode;
use crate::traffic::mesh::MeshView;

/// Applies the policies of `mesh` (the request's view) to `subject`: refused with the 403's error.
/// Denials and audit-mode would-be denials are logged and counted.
pub fn authorize(proxy: &Proxy, mesh: &MeshView, subject: &Subject<'_>) -> Result<(), ProxyError> {
    if mesh.authorizer.is_empty() {
        return Ok(());
    }
    let v = mesh.authorizer.check(subject);
    let source = subject.source.map(|s| s.as_str()).unwrap_or("(plaintext)");
    let what = subject.http.as_ref().map(|h| (h.method, h.path));
    if let Some(a) = &v.audit {
        proxy.metrics.authz_denial(&a.policy, AuthzMode::Audit);
        tracing::info!(policy = %a.policy, reason = a.reason, source, port = subject.port, request = ?what, "authorization audit: this would be denied");
    }
    let Decision::Deny(d) = v.decision else {
        return Ok(());
    };
    proxy.metrics.authz_denial(&d.policy, AuthzMode::Enforce);
    tracing::info!(policy = %d.policy, reason = d.reason, source, port = subject.port, request = ?what, "request denied by authorization policy");
    Err(ProxyError::Denied {
        policy: d.policy,
        reason: d.reason,
    })
}
