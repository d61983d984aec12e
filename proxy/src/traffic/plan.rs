//! Decide once: where an outbound request (or opaque connection) goes and under which policy, resolved
//! from one snapshot of the mesh view into a plain value before any work starts. Dispatch then works
//! from the plan alone and never goes back to the mesh view, for fallbacks and upgrades included.

use crate::path::errors::ProxyError;
use crate::state::Proxy;
use crate::telemetry::stats::StatsKey;
use crate::traffic::destination::DestState;
use crate::traffic::mesh::{MeshView, Routed};
use crate::traffic::route::{RequestView, RulePolicy, DEFAULT_POLICY};
use crate::traffic::service_name::ServiceName;
use std::net::SocketAddr;
use std::sync::Arc;
use weft_api::resources::Fallback;
use weft_api::{Target, Upstream};

/// Where a request goes, as logs and metrics name it.
#[derive(Clone, Debug)]
pub enum Destination {
    /// A service, and the version (subset) its routes chose, if any.
    Service {
        service: ServiceName,
        subset: Option<String>,
    },
    /// A fixed peer: an explicit listener's, or a pod addressed directly.
    Peer(SocketAddr),
}

/// Everything the work of one request needs, decided up front.
#[derive(Clone)]
pub struct Plan {
    pub destination: Destination,
    /// Ready endpoints of the chosen backend; empty when none is ready.
    pub candidates: Arc<[Upstream]>,
    /// The destination's bulkhead, retry budget and connection policy.
    pub state: Arc<DestState>,
    /// The route rule that took the request (timeouts, retries, header edits, fallback).
    pub rule: Arc<RulePolicy>,
    /// Where the request goes when no endpoint is left, resolved with the rest.
    pub fallback: Option<Arc<FallbackPlan>>,
    /// `namespace/name` (or the peer's address), for errors and logs.
    pub what: Arc<str>,
}

/// A rule's fallback, resolved against the same mesh view as its plan.
pub enum FallbackPlan {
    /// The rule's static answer.
    Response(Arc<Fallback>),
    /// Another service (its ready endpoints, under the default policy).
    Service(Plan),
    /// A service or port the mesh view does not have: the request fails for want of an endpoint
    /// (with this reason, or the primary's when `None`).
    Unresolved(Option<String>),
}

/// The plan for a request (or, with `req` absent, an opaque connection) to `target`.
pub fn decide(
    proxy: &Proxy,
    target: &Target,
    req: Option<&RequestView<'_>>,
) -> Result<Plan, ProxyError> {
    match target {
        Target::Fixed(up) => Ok(Plan::fixed(proxy, up.clone())),
        Target::Service {
            namespace,
            name,
            port,
        } => {
            let mesh = proxy.mesh();
            let routed = mesh.route(namespace, name, *port, req)?;
            Ok(Plan::routed(proxy, &mesh, routed))
        }
    }
}

impl Plan {
    fn routed(proxy: &Proxy, mesh: &MeshView, r: Routed) -> Plan {
        let b = r.backend;
        let service = ServiceName::new(b.namespace, b.name);
        let candidates: Arc<[Upstream]> = r.candidates.into();
        let fallback = r.rule.fallback.as_ref().and_then(|f| {
            fallback_plan(proxy, mesh, f, &service.namespace, &candidates).map(Arc::new)
        });
        Plan {
            state: proxy.destinations.get(
                &service.namespace,
                &service.name,
                r.traffic_policy.as_ref(),
            ),
            what: service.to_string().into(),
            destination: Destination::Service {
                service,
                subset: b.subset,
            },
            candidates,
            rule: r.rule,
            fallback,
        }
    }

    /// A fixed peer: no routes, the default policy.
    pub fn fixed(proxy: &Proxy, up: Upstream) -> Plan {
        let what = up.peer.to_string();
        Plan {
            state: proxy.destinations.get("", &what, None),
            destination: Destination::Peer(up.peer),
            candidates: Arc::from([up]),
            rule: DEFAULT_POLICY.clone(),
            fallback: None,
            what: what.into(),
        }
    }

    /// The key of the per-version stats reported upstream (services only).
    pub fn stats_key(&self) -> Option<StatsKey> {
        match &self.destination {
            Destination::Service { service, subset } => Some(StatsKey {
                namespace: service.namespace.clone(),
                service: service.name.clone(),
                subset: subset.clone(),
            }),
            Destination::Peer(_) => None,
        }
    }

    /// Why no endpoint could take the request.
    pub fn no_endpoint(&self) -> ProxyError {
        let why = if self.candidates.is_empty() {
            "no ready endpoint with a proxy"
        } else {
            "every endpoint is ejected"
        };
        ProxyError::NoEndpoint(format!("{} ({why})", self.what))
    }
}

/// Resolves a rule's fallback: its static answer, or the ready endpoints of the service it names
/// (on the port it names, else the primary's target port, else the service's first port).
fn fallback_plan(
    proxy: &Proxy,
    mesh: &MeshView,
    f: &Arc<Fallback>,
    namespace: &str,
    candidates: &[Upstream],
) -> Option<FallbackPlan> {
    if f.response.is_some() {
        return Some(FallbackPlan::Response(f.clone()));
    }
    let b = f.backend_ref.as_ref()?;
    let service = ServiceName::new(b.namespace.as_deref().unwrap_or(namespace), &b.name);
    let port = b
        .port
        .or_else(|| candidates.first().map(|u| u.target_port))
        .or_else(|| mesh.first_port(&service.namespace, &service.name));
    let Some(port) = port else {
        return Some(FallbackPlan::Unresolved(None));
    };
    let (candidates, policy) = match mesh.endpoints(&service.namespace, &service.name, port, None) {
        Ok(found) => found,
        Err(ProxyError::NoEndpoint(why)) => return Some(FallbackPlan::Unresolved(Some(why))),
        Err(e) => return Some(FallbackPlan::Unresolved(Some(e.to_string()))),
    };
    Some(FallbackPlan::Service(Plan {
        state: proxy
            .destinations
            .get(&service.namespace, &service.name, policy.as_ref()),
        what: service.to_string().into(),
        destination: Destination::Service {
            service,
            subset: None,
        },
        candidates: candidates.into(),
        rule: DEFAULT_POLICY.clone(),
        fallback: None,
    }))
}
