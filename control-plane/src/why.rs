//! `POST /v1/why`: how the mesh would treat a request from one identity to one service, worked out from
//! the control plane's view (resources, registered workloads) with the same route matching and
//! authorization code the proxies run (`weft_api::routing`, `weft_api::authz`).
//!
//! The caller's sidecar picks a route rule and a backend; the request then reaches one endpoint of that
//! backend, whose sidecar normalises the path and applies the policies of its workload. Every endpoint
//! the request can reach is explained, since policies select workloads by label and may differ between
//! them.

use crate::view::{applicable_policies, MeshResources};
use http::{HeaderName, HeaderValue, Method};
use weft_api::authz::{normalize::normalize, Authorizer, HttpSubject, Subject};
use weft_api::control::{Endpoint, ServiceView};
use weft_api::operator::{WhyAnswer, WhyBackend, WhyEndpoint, WhyRequest, WhyRoute};
use weft_api::resources::{Fallback, PortProtocol, ServicePort};
use weft_api::routing::{header_edits, Backend, Choice, HeaderEdit, RequestView, RouteTable, Rule};
use weft_certs::{SpiffeId, TrustDomain};

/// The compiled-regex limit the proxies use by default.
const MAX_REGEX_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WhyError {
    #[error("--from {0:?}: {1}")]
    Source(String, String),
    #[error("no service {0}")]
    NoService(String),
    #[error("service {service} has no port {port} (its ports: {ports})")]
    NoPort {
        service: String,
        port: u16,
        ports: String,
    },
    #[error("service {0} has no ports")]
    NoPorts(String),
    #[error("{0}")]
    Request(String),
    #[error("{0}")]
    Routes(String),
}

impl WhyError {
    /// Whether the question names something that does not exist (404) rather than being malformed.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            WhyError::NoService(_) | WhyError::NoPort { .. } | WhyError::NoPorts(_)
        )
    }
}

/// What a rule carries for an explanation: its request header edits (policies see the edited
/// headers) and its fallback.
struct RuleInfo {
    request_headers: HeaderEdit,
    fallback: Option<Fallback>,
}

/// The answer to `q`. `services` is every service with its endpoints (as pushed to proxies);
/// `registered` is every registered workload as (`namespace/name`, identity).
pub fn explain(
    res: &MeshResources,
    services: &[ServiceView],
    registered: &[(String, SpiffeId)],
    td: &TrustDomain,
    q: &WhyRequest,
) -> Result<WhyAnswer, WhyError> {
    let source = source_identity(td, &q.from)?;
    let (ns, name) = q.to.split_once('/').unwrap_or(("default", q.to.as_str()));
    let svc = find_service(services, ns, name)?;
    let port = asked_port(svc, q.port)?;
    let tcp = q.tcp || port.effective_protocol() == PortProtocol::Tcp;
    let request = if tcp { None } else { Some(http_request(q)?) };
    let view = request.as_ref().map(RequestView::of);

    let table = compile_routes(res)?;
    let rule = table.rule(ns, name, port.port, view.as_ref());
    let (route, targets) = match rule {
        None => no_rule(ns, name, port.port, tcp),
        Some(r) => by_rule(r, port.port, tcp, view.as_ref()),
    };

    // The destination sees the request after the rule's header edits.
    let mut headers = request
        .as_ref()
        .map(|r| r.headers.clone())
        .unwrap_or_default();
    if let Some(r) = rule {
        r.payload.request_headers.apply(&mut headers);
    }
    let arriving = request.as_ref().map(|r| Arriving {
        method: r.method.as_str(),
        path: r.uri.path(),
        headers: &headers,
    });
    let endpoints = reachable_endpoints(
        res,
        services,
        &targets,
        port.port,
        &source,
        arriving.as_ref(),
    )?;

    let fallback = rule.and_then(|r| r.payload.fallback.as_ref());
    let (verdict, summary) = verdict(&route, &endpoints, fallback);
    Ok(WhyAnswer {
        source_workloads: registered
            .iter()
            .filter(|(_, id)| *id == source)
            .map(|(w, _)| w.clone())
            .collect(),
        source: source.to_string(),
        service: format!("{ns}/{name}:{}", port.port),
        request: match &request {
            None => "tcp".to_string(),
            Some(r) => format!("{} {}", r.method, r.uri),
        },
        route,
        endpoints,
        verdict,
        summary,
    })
}

/// The port asked about, or the service's first.
fn asked_port(svc: &ServiceView, port: Option<u16>) -> Result<&ServicePort, WhyError> {
    let service = || format!("{}/{}", svc.namespace, svc.name);
    match port {
        Some(p) => svc
            .ports
            .iter()
            .find(|sp| sp.port == p)
            .ok_or_else(|| WhyError::NoPort {
                service: service(),
                port: p,
                ports: port_list(svc),
            }),
        None => svc
            .ports
            .first()
            .ok_or_else(|| WhyError::NoPorts(service())),
    }
}

/// Every route, compiled as the proxies compile them, keeping what an explanation needs of each rule.
fn compile_routes(res: &MeshResources) -> Result<RouteTable<RuleInfo>, WhyError> {
    RouteTable::compile(&res.routes, MAX_REGEX_BYTES, |rule, _| {
        Ok(RuleInfo {
            request_headers: header_edits(rule)?.0,
            fallback: rule.fallback.clone(),
        })
    })
    .map_err(|e| WhyError::Routes(e.to_string()))
}

/// No rule takes the request: every endpoint of the service itself.
fn no_rule(ns: &str, name: &str, port: u16, tcp: bool) -> (WhyRoute, Vec<Backend>) {
    let route = WhyRoute {
        rule: None,
        reason: if tcp {
            "no route rule without matches is attached to this port: every endpoint of the service"
                .into()
        } else {
            "no route rule matches: every endpoint of the service".into()
        },
        backends: vec![WhyBackend {
            service: format!("{ns}/{name}:{port}"),
            subset: None,
            percent: 100.0,
            chosen: false,
        }],
    };
    let target = Backend {
        namespace: ns.to_string(),
        name: name.to_string(),
        subset: None,
        port: None,
    };
    (route, vec![target])
}

/// The rule's split, and the backends the request can reach: those with weight, or the one a sticky
/// rule picks.
fn by_rule(
    r: &Rule<RuleInfo>,
    port: u16,
    tcp: bool,
    view: Option<&RequestView<'_>>,
) -> (WhyRoute, Vec<Backend>) {
    let total: u64 = r.backends.iter().map(|(_, w)| u64::from(*w)).sum();
    // A sticky rule with the session key in the request goes to one backend, the same every time.
    let chosen = r.sticky_key(view).map(|k| r.pick(k));
    let is_chosen = |b: &Backend| matches!(&chosen, Some(Choice::Backend(c)) if c == b);
    let backends = r
        .backends
        .iter()
        .map(|(b, w)| WhyBackend {
            service: format!("{}/{}:{}", b.namespace, b.name, b.port.unwrap_or(port)),
            subset: b.subset.clone(),
            percent: if total == 0 {
                0.0
            } else {
                f64::from(*w) * 100.0 / total as f64
            },
            chosen: is_chosen(b),
        })
        .collect();
    let targets = r
        .backends
        .iter()
        .filter(|(b, w)| *w > 0 && (chosen.is_none() || is_chosen(b)))
        .map(|(b, _)| b.clone())
        .collect();
    let reason = match (tcp, r.session()) {
        (true, _) => "the first rule without matches attached to this port".to_string(),
        (false, Some((_, key))) if chosen.is_some() => {
            format!("the first rule that matches; sticky on `{key}`, which picks one backend")
        }
        _ => "the first rule that matches".to_string(),
    };
    let route = WhyRoute {
        rule: Some(r.name.clone()),
        reason,
        backends,
    };
    (route, targets)
}

/// Every endpoint of the targets' subsets on the asked port (or the backend's own port).
fn reachable_endpoints(
    res: &MeshResources,
    services: &[ServiceView],
    targets: &[Backend],
    port: u16,
    source: &SpiffeId,
    arriving: Option<&Arriving<'_>>,
) -> Result<Vec<WhyEndpoint>, WhyError> {
    let mut endpoints = Vec::new();
    for b in targets {
        let bsvc = find_service(services, &b.namespace, &b.name)?;
        let bport = b.port.unwrap_or(port);
        let Some(sp) = bsvc.ports.iter().find(|p| p.port == bport) else {
            continue;
        };
        let target_port = sp.target_port.unwrap_or(sp.port);
        for e in bsvc.endpoints.iter().filter(|e| {
            b.subset
                .as_deref()
                .is_none_or(|v| e.labels.get("version").map(String::as_str) == Some(v))
        }) {
            endpoints.push(endpoint(res, bsvc, e, source, target_port, arriving));
        }
    }
    Ok(endpoints)
}

/// `namespace/serviceAccount` or a SPIFFE ID of this trust domain.
fn source_identity(td: &TrustDomain, from: &str) -> Result<SpiffeId, WhyError> {
    let bad = |why: String| WhyError::Source(from.to_string(), why);
    if from.starts_with("spiffe://") {
        let id = SpiffeId::parse(from).map_err(|e| bad(e.to_string()))?;
        if id.trust_domain() != td.as_str() {
            return Err(bad(format!("not of this mesh's trust domain {td}")));
        }
        return Ok(id);
    }
    let (ns, sa) = from
        .split_once('/')
        .ok_or_else(|| bad("expected NAMESPACE/SERVICE_ACCOUNT or a SPIFFE ID".into()))?;
    SpiffeId::for_workload(td, ns, sa).map_err(|e| bad(e.to_string()))
}

fn find_service<'a>(
    services: &'a [ServiceView],
    ns: &str,
    name: &str,
) -> Result<&'a ServiceView, WhyError> {
    services
        .iter()
        .find(|s| s.namespace == ns && s.name == name)
        .ok_or_else(|| WhyError::NoService(format!("{ns}/{name}")))
}

fn port_list(svc: &ServiceView) -> String {
    let ports: Vec<String> = svc.ports.iter().map(|p| p.port.to_string()).collect();
    ports.join(", ")
}

fn http_request(q: &WhyRequest) -> Result<http::request::Parts, WhyError> {
    let method = q.method.as_deref().unwrap_or("GET");
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| WhyError::Request(format!("--method {method:?} is not an HTTP method")))?;
    let path = q.path.as_deref().unwrap_or("/");
    let mut b = http::Request::builder().method(method).uri(path);
    for (k, v) in &q.headers {
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| WhyError::Request(format!("--header {k:?}: not a header name")))?;
        let value = HeaderValue::from_str(v.trim())
            .map_err(|_| WhyError::Request(format!("--header {k}: not a header value")))?;
        b = b.header(name, value);
    }
    b.body(())
        .map(|r| r.into_parts().0)
        .map_err(|e| WhyError::Request(format!("--path {path:?}: {e}")))
}

/// The request as the destination's sidecar sees it.
struct Arriving<'a> {
    method: &'a str,
    path: &'a str,
    headers: &'a http::HeaderMap,
}

fn endpoint(
    res: &MeshResources,
    svc: &ServiceView,
    e: &Endpoint,
    source: &SpiffeId,
    target_port: u16,
    req: Option<&Arriving<'_>>,
) -> WhyEndpoint {
    let mut out = WhyEndpoint {
        workload: format!("{}/{}", svc.namespace, e.workload),
        address: e.address,
        identity: e.identity.as_ref().map(|i| i.to_string()),
        version: e.labels.get("version").cloned(),
        ready: e.ready,
        decision: String::new(),
        matched_path: None,
        authorization: None,
        note: (!e.ready).then(|| "not ready: it gets no traffic".to_string()),
    };
    if e.tunnel_port.is_none() {
        out.decision = "not checked".into();
        out.note = Some("no sidecar: reached in plaintext, no policy is enforced there".into());
        return out;
    }
    let docs: Vec<_> = applicable_policies(res, &svc.namespace, &e.labels)
        .into_iter()
        .cloned()
        .collect();
    let authorizer = match Authorizer::compile(&docs, MAX_REGEX_BYTES) {
        Ok(a) => a,
        Err(err) => {
            out.decision = "refused config".into();
            out.note = Some(format!("its sidecar refuses these policies: {err}"));
            return out;
        }
    };
    // With no policy the path goes on as it came; with policies it is normalised first.
    let path = match req {
        Some(r) if !authorizer.is_empty() => match normalize(r.path) {
            Ok(p) => Some(p),
            Err(err) => {
                out.decision = "bad path".into();
                out.note = Some(format!("answered 400 before any policy: {err}"));
                return out;
            }
        },
        Some(r) => Some(r.path.to_string()),
        None => None,
    };
    let x = authorizer.explain(&Subject {
        source: Some(source),
        port: target_port,
        http: req.zip(path.as_deref()).map(|(r, path)| HttpSubject {
            method: r.method,
            path,
            headers: r.headers,
        }),
    });
    out.decision = if x.decision.allowed {
        "allowed"
    } else {
        "denied"
    }
    .into();
    if !authorizer.is_empty() {
        out.matched_path = path;
    }
    if !x.audit.allowed {
        let audit = format!("audit mode: would be {}", x.audit);
        out.note = Some(match out.note {
            Some(n) => format!("{n}; {audit}"),
            None => audit,
        });
    }
    out.authorization = Some(x);
    out
}

/// The overall verdict over the ready endpoints, and one sentence on it.
fn verdict(
    route: &WhyRoute,
    endpoints: &[WhyEndpoint],
    fallback: Option<&Fallback>,
) -> (String, String) {
    let ready: Vec<&WhyEndpoint> = endpoints.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        let why = if route.backends.iter().all(|b| b.percent == 0.0) {
            "the matching rule's backends all weigh 0".to_string()
        } else {
            let names: Vec<String> = route
                .backends
                .iter()
                .filter(|b| b.percent > 0.0)
                .map(|b| match &b.subset {
                    Some(s) => format!("{} version {s}", b.service),
                    None => b.service.clone(),
                })
                .collect();
            format!("no ready endpoint in {}", names.join(", "))
        };
        let then = match fallback {
            Some(f) if f.response.is_some() => "; the rule's fallback response answers",
            Some(_) => "; the rule's fallback service is tried",
            None => "; the caller's sidecar answers 503 no_endpoint",
        };
        return ("no endpoint".into(), format!("{why}{then}"));
    }
    let passes = |e: &&WhyEndpoint| e.decision == "allowed" || e.decision == "not checked";
    let refused: Vec<&&WhyEndpoint> = ready.iter().filter(|e| !passes(e)).collect();
    let reasons = |list: &[&&WhyEndpoint]| {
        let mut r: Vec<String> = list.iter().map(|e| describe(e)).collect();
        r.sort();
        r.dedup();
        r.join("; ")
    };
    if refused.is_empty() {
        let all: Vec<&&WhyEndpoint> = ready.iter().collect();
        ("allowed".into(), reasons(&all))
    } else if refused.len() == ready.len() {
        ("denied".into(), reasons(&refused))
    } else {
        (
            "partly denied".into(),
            format!(
                "{} of {} ready endpoints refuse it: {}",
                refused.len(),
                ready.len(),
                reasons(&refused)
            ),
        )
    }
}

fn describe(e: &WhyEndpoint) -> String {
    match (&e.authorization, &e.note) {
        (Some(x), _) => x.decision.to_string(),
        (None, Some(note)) => format!("{} ({note})", e.decision),
        (None, None) => e.decision.clone(),
    }
}

#[cfg(test)]
mod tests;
