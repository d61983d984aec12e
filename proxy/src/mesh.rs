//! The mesh as the control plane last described it to this proxy: services with their endpoints, routes,
//! policies, mesh config. Each snapshot is merged onto the current view, checked, and swapped in whole;
//! requests in flight keep the view they started with.

use crate::errors::ForwardError;
use regex::RegexBuilder;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use weft_api::control::{ServiceView, Snapshot};
use weft_api::resources::{
    AuthorizationPolicySpec, Document, HttpRouteSpec, MeshConfigSpec, PathMatchType, ValueMatchType,
};
use weft_api::Upstream;
use weft_certs::TrustDomain;

#[derive(Debug, Default)]
pub struct MeshView {
    pub version: u64,
    pub mesh: MeshConfigSpec,
    pub services: Vec<ServiceView>,
    pub routes: Vec<Document<HttpRouteSpec>>,
    pub policies: Vec<Document<AuthorizationPolicySpec>>,
    pub trust_bundle_pem: Option<String>,
    index: HashMap<(String, String), usize>,
    /// Round-robin position; endpoint choice by load comes with the balancing work.
    next: AtomicUsize,
}

impl MeshView {
    /// The view `snapshot` describes on top of this one (absent sections unchanged), or why it is refused.
    pub fn merge(
        &self,
        snapshot: Snapshot,
        trust_domain: &TrustDomain,
        max_regex_bytes: usize,
    ) -> Result<MeshView, String> {
        let mut v = MeshView {
            version: snapshot.version,
            mesh: snapshot.mesh.unwrap_or_else(|| self.mesh.clone()),
            services: snapshot.services.unwrap_or_else(|| self.services.clone()),
            routes: snapshot.routes.unwrap_or_else(|| self.routes.clone()),
            policies: snapshot.policies.unwrap_or_else(|| self.policies.clone()),
            trust_bundle_pem: snapshot
                .trust_bundle_pem
                .or_else(|| self.trust_bundle_pem.clone()),
            index: HashMap::new(),
            next: AtomicUsize::new(0),
        };
        v.check(trust_domain, max_regex_bytes)?;
        v.index = v
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| ((s.namespace.clone(), s.name.clone()), i))
            .collect();
        Ok(v)
    }

    /// The view as one full snapshot (what is cached on disk and shown on `/config`).
    pub fn to_snapshot(&self) -> Snapshot {
        Snapshot {
            version: self.version,
            mesh: Some(self.mesh.clone()),
            services: Some(self.services.clone()),
            routes: Some(self.routes.clone()),
            policies: Some(self.policies.clone()),
            trust_bundle_pem: self.trust_bundle_pem.clone(),
        }
    }

    /// What this proxy can serve; anything else is a NACK with the reason.
    fn check(&self, td: &TrustDomain, max_regex_bytes: usize) -> Result<(), String> {
        for s in &self.services {
            for e in &s.endpoints {
                match (&e.tunnel_port, &e.identity) {
                    (Some(_), None) => {
                        return Err(format!(
                            "service {}/{}: endpoint {} has a tunnel port but no identity",
                            s.namespace, s.name, e.workload
                        ))
                    }
                    (_, Some(id)) if id.trust_domain() != td.as_str() => {
                        return Err(format!(
                            "service {}/{}: endpoint {} has identity {id}, outside this proxy's trust domain {td}",
                            s.namespace, s.name, e.workload
                        ))
                    }
                    _ => {}
                }
            }
        }
        for r in &self.routes {
            check_route_regexes(r, max_regex_bytes)?;
        }
        if let Some(pem) = &self.trust_bundle_pem {
            weft_certs::TrustBundle::from_pem(pem)
                .map_err(|e| format!("the trust bundle does not parse: {e}"))?;
        }
        Ok(())
    }

    /// A ready endpoint of `namespace/name` on service port `port`, as the tunnel target to send to.
    pub fn resolve(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
    ) -> Result<Upstream, ForwardError> {
        let what = || format!("{namespace}/{name}:{port}");
        let svc = self
            .index
            .get(&(namespace.to_string(), name.to_string()))
            .map(|&i| &self.services[i])
            .ok_or_else(|| ForwardError::NoEndpoint(format!("{} (no such service)", what())))?;
        let sp = svc.ports.iter().find(|p| p.port == port).ok_or_else(|| {
            ForwardError::NoEndpoint(format!("{} (the service has no such port)", what()))
        })?;
        let target_port = sp.target_port.unwrap_or(sp.port);
        let ready: Vec<_> = svc
            .endpoints
            .iter()
            .filter(|e| e.ready && e.tunnel_port.is_some() && e.identity.is_some())
            .collect();
        if ready.is_empty() {
            return Err(ForwardError::NoEndpoint(format!(
                "{} (no ready endpoint with a proxy)",
                what()
            )));
        }
        let e = ready[self.next.fetch_add(1, Ordering::Relaxed) % ready.len()];
        match (e.tunnel_port, &e.identity) {
            (Some(tp), Some(id)) => Ok(Upstream {
                peer: SocketAddr::new(e.address, tp),
                identity: id.clone(),
                target_port,
            }),
            _ => Err(ForwardError::NoEndpoint(what())),
        }
    }
}

fn check_route_regexes(r: &Document<HttpRouteSpec>, limit: usize) -> Result<(), String> {
    let compile = |pattern: &str, field: String| {
        RegexBuilder::new(pattern)
            .size_limit(limit)
            .build()
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "route {}/{} {field}: regex not accepted by this proxy (limit {limit} bytes): {e}",
                    r.metadata.namespace, r.metadata.name
                )
            })
    };
    for (i, rule) in r.spec.rules.iter().enumerate() {
        for (j, m) in rule.matches.iter().enumerate() {
            if let Some(p) = &m.path {
                if p.kind == PathMatchType::RegularExpression {
                    compile(&p.value, format!("rules[{i}].matches[{j}].path"))?;
                }
            }
            for (k, h) in m.headers.iter().chain(&m.query_params).enumerate() {
                if h.kind == ValueMatchType::RegularExpression {
                    compile(&h.value, format!("rules[{i}].matches[{j}] value {k}"))?;
                }
            }
        }
    }
    Ok(())
}
