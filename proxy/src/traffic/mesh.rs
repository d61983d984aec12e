//! The mesh as the control plane last described it to this proxy: services with their endpoints, routes,
//! policies, mesh config. Each snapshot is merged onto the current view, checked, and swapped in whole;
//! requests in flight keep the view they started with.

use crate::path::errors::ProxyError;
use crate::traffic::authz::Authorizer;
use crate::traffic::route::{Backend, Choice, RequestView, RouteTable, RulePolicy};
use crate::traffic::service_name::ServiceName;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use weft_api::control::{Endpoint, ServiceRef, ServiceView, Snapshot};
use weft_api::resources::{
    AuthorizationPolicySpec, Document, HttpRouteSpec, MeshConfigSpec, PortProtocol, TrafficPolicy,
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
    /// Serials of revoked peer certificates (the whole list, as last pushed).
    pub revoked_serials: Option<Vec<String>>,
    /// Service by namespace, then name (looked up with borrowed `&str`s on every request).
    index: HashMap<String, HashMap<String, usize>>,
    /// Service by virtual IP.
    vips: HashMap<IpAddr, usize>,
    /// A meshed endpoint (one with a proxy) by its address.
    pods: HashMap<IpAddr, (usize, usize)>,
    route_table: RouteTable,
    /// The policies, compiled.
    pub authorizer: Authorizer,
}

/// The services after a snapshot: its whole list, or `current` with its changes, in (namespace, name)
/// order as the control plane sends them.
pub fn merge_services(
    current: &[ServiceView],
    all: Option<Vec<ServiceView>>,
    changed: Option<Vec<ServiceView>>,
    removed: Option<Vec<ServiceRef>>,
) -> Result<Vec<ServiceView>, String> {
    if let Some(all) = all {
        if changed.is_some() || removed.is_some() {
            return Err(
                "a snapshot carries services together with servicesChanged or servicesRemoved"
                    .to_string(),
            );
        }
        return Ok(all);
    }
    if changed.is_none() && removed.is_none() {
        return Ok(current.to_vec());
    }
    let key = |s: &ServiceView| (s.namespace.clone(), s.name.clone());
    let mut by_name: BTreeMap<(String, String), ServiceView> =
        current.iter().map(|s| (key(s), s.clone())).collect();
    for r in removed.unwrap_or_default() {
        by_name.remove(&(r.namespace, r.name));
    }
    for s in changed.unwrap_or_default() {
        by_name.insert(key(&s), s);
    }
    Ok(by_name.into_values().collect())
}

/// What an intercepted connection's original destination is, as far as the mesh knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A service's virtual IP and one of its ports.
    Service {
        namespace: String,
        name: String,
        port: u16,
        protocol: PortProtocol,
    },
    /// A workload with a proxy, addressed directly: tunnelled to it, still with its identity checked.
    Pod(Upstream),
    /// Not in the registry.
    Outside,
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
            services: merge_services(
                &self.services,
                snapshot.services,
                snapshot.services_changed,
                snapshot.services_removed,
            )?,
            routes: snapshot.routes.unwrap_or_else(|| self.routes.clone()),
            policies: snapshot.policies.unwrap_or_else(|| self.policies.clone()),
            trust_bundle_pem: snapshot
                .trust_bundle_pem
                .or_else(|| self.trust_bundle_pem.clone()),
            revoked_serials: snapshot
                .revoked_serials
                .or_else(|| self.revoked_serials.clone()),
            index: HashMap::new(),
            vips: HashMap::new(),
            pods: HashMap::new(),
            route_table: RouteTable::default(),
            authorizer: Authorizer::default(),
        };
        v.check(trust_domain)?;
        v.route_table =
            RouteTable::compile(&v.routes, max_regex_bytes).map_err(|e| e.to_string())?;
        v.authorizer =
            Authorizer::compile(&v.policies, max_regex_bytes).map_err(|e| e.to_string())?;
        v.build_indexes();
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
            revoked_serials: self.revoked_serials.clone(),
            ..Snapshot::default()
        }
    }

    /// What this proxy can serve; anything else is a NACK with the reason.
    fn check(&self, td: &TrustDomain) -> Result<(), String> {
        for s in &self.services {
            for e in &s.endpoints {
                match (&e.tunnel_port, &e.identity) {
                    (Some(_), None) => {
                        return Err(format!(
                            "service {}: endpoint {} has a tunnel port but no identity",
                            ServiceName::new(&s.namespace, &s.name), e.workload
                        ))
                    }
                    (_, Some(id)) if id.trust_domain() != td.as_str() => {
                        return Err(format!(
                            "service {}: endpoint {} has identity {id}, outside this proxy's trust domain {td}",
                            ServiceName::new(&s.namespace, &s.name), e.workload
                        ))
                    }
                    _ => {}
                }
            }
        }
        if let Some(pem) = &self.trust_bundle_pem {
            weft_certs::TrustBundle::from_pem(pem)
                .map_err(|e| format!("the trust bundle does not parse: {e}"))?;
        }
        Ok(())
    }

    fn build_indexes(&mut self) {
        for (i, s) in self.services.iter().enumerate() {
            self.index
                .entry(s.namespace.clone())
                .or_default()
                .insert(s.name.clone(), i);
            if let Some(vip) = s.vip {
                self.vips.insert(vip, i);
            }
            for (j, e) in s.endpoints.iter().enumerate() {
                if e.tunnel_port.is_some() && e.identity.is_some() {
                    self.pods.entry(e.address).or_insert((i, j));
                }
            }
        }
    }

    fn service(&self, namespace: &str, name: &str) -> Option<&ServiceView> {
        let i = *self.index.get(namespace)?.get(name)?;
        Some(&self.services[i])
    }

    /// Classifies an intercepted connection's original destination.
    pub fn destination(&self, dst: SocketAddr) -> Destination {
        if let Some(&i) = self.vips.get(&dst.ip()) {
            let s = &self.services[i];
            if let Some(p) = s.ports.iter().find(|p| p.port == dst.port()) {
                return Destination::Service {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    port: p.port,
                    protocol: p.effective_protocol(),
                };
            }
            return Destination::Outside;
        }
        if let Some(&(i, j)) = self.pods.get(&dst.ip()) {
            if let Some(up) = upstream(&self.services[i].endpoints[j], dst.port()) {
                return Destination::Pod(up);
            }
        }
        Destination::Outside
    }

    /// Where a request (or, with `req` absent, a TCP connection) to service `namespace/name` on port
    /// `port` goes: the backend its routes choose, that backend's ready endpoints (possibly none: the
    /// caller may fall back) and the rule's policy.
    pub fn route(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        req: Option<&RequestView<'_>>,
    ) -> Result<Routed, ProxyError> {
        let (choice, rule) = self.route_table.route(namespace, name, port, req);
        let backend = match choice {
            Choice::Default => Backend {
                namespace: namespace.to_string(),
                name: name.to_string(),
                subset: None,
                port: None,
            },
            Choice::Backend(b) => b,
            Choice::NoWeight => {
                return Err(ProxyError::NoEndpoint(format!(
                    "{}:{port} (the matching route rule's backends all weigh 0)",
                    ServiceName::new(namespace, name)
                )))
            }
        };
        let port = backend.port.unwrap_or(port);
        let (candidates, traffic_policy) = self.endpoints(
            &backend.namespace,
            &backend.name,
            port,
            backend.subset.as_deref(),
        )?;
        Ok(Routed {
            backend,
            candidates,
            traffic_policy,
            rule,
        })
    }

    /// Ready endpoints of `namespace/name:port`, limited to `version: subset` when given, and the
    /// service's traffic policy. An unknown service or port is an error; no ready endpoint is not.
    pub fn endpoints(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        subset: Option<&str>,
    ) -> Result<(Vec<Upstream>, Option<TrafficPolicy>), ProxyError> {
        let what = || match subset {
            Some(v) => format!("{}:{port} version {v}", ServiceName::new(namespace, name)),
            None => format!("{}:{port}", ServiceName::new(namespace, name)),
        };
        let svc = self
            .service(namespace, name)
            .ok_or_else(|| ProxyError::NoEndpoint(format!("{} (no such service)", what())))?;
        let sp = svc.ports.iter().find(|p| p.port == port).ok_or_else(|| {
            ProxyError::NoEndpoint(format!("{} (the service has no such port)", what()))
        })?;
        let target_port = sp.target_port.unwrap_or(sp.port);
        let ready: Vec<Upstream> = svc
            .endpoints
            .iter()
            .filter(|e| e.ready)
            .filter(|e| {
                subset.is_none_or(|v| e.labels.get("version").map(String::as_str) == Some(v))
            })
            .filter_map(|e| upstream(e, target_port))
            .collect();
        Ok((ready, svc.traffic_policy.clone()))
    }

    /// Peers of endpoints ready here but absent or not ready in `old`.
    pub fn newly_ready(&self, old: &MeshView) -> Vec<SocketAddr> {
        let ready = |v: &MeshView| -> std::collections::HashSet<SocketAddr> {
            v.services
                .iter()
                .flat_map(|s| &s.endpoints)
                .filter(|e| e.ready)
                .filter_map(|e| e.tunnel_port.map(|p| SocketAddr::new(e.address, p)))
                .collect()
        };
        let before = ready(old);
        ready(self)
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect()
    }

    pub fn has_rate_limits(&self) -> bool {
        self.route_table.has_rate_limits()
    }

    /// The first port of a service (a fallback service named without a port).
    pub fn first_port(&self, namespace: &str, name: &str) -> Option<u16> {
        self.service(namespace, name)?.ports.first().map(|p| p.port)
    }

    /// The services whose endpoints include this workload (by its identity and address) and expose
    /// `target_port`, with the service port that maps to it: the destination side's view of which
    /// routes govern an arriving request.
    pub fn own_services(
        &self,
        identity: &weft_certs::SpiffeId,
        address: Option<IpAddr>,
        target_port: u16,
    ) -> Vec<(&ServiceView, u16)> {
        self.services
            .iter()
            .filter(|s| {
                s.endpoints.iter().any(|e| {
                    e.identity.as_ref() == Some(identity) && address.is_none_or(|a| a == e.address)
                })
            })
            .filter_map(|s| {
                s.ports
                    .iter()
                    .find(|p| p.target_port.unwrap_or(p.port) == target_port)
                    .map(|p| (s, p.port))
            })
            .collect()
    }

    /// The policy of the rule of `service` that takes `req` (absent: an opaque stream), if one does.
    pub fn rule_policy(
        &self,
        service: &ServiceView,
        port: u16,
        req: Option<&RequestView<'_>>,
    ) -> Option<Arc<RulePolicy>> {
        self.route_table
            .policy(&service.namespace, &service.name, port, req)
    }
}

/// A routed request: where it goes and under which rule.
pub struct Routed {
    pub backend: Backend,
    /// Ready endpoints of the backend (its subset); empty when none is ready.
    pub candidates: Vec<Upstream>,
    pub traffic_policy: Option<TrafficPolicy>,
    pub rule: Arc<RulePolicy>,
}

/// The tunnel target for an endpoint that runs a proxy.
fn upstream(e: &Endpoint, target_port: u16) -> Option<Upstream> {
    match (e.tunnel_port, &e.identity) {
        (Some(tp), Some(id)) => Some(Upstream {
            peer: SocketAddr::new(e.address, tp),
            identity: id.clone(),
            target_port,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ns: &str, name: &str, endpoints: usize) -> ServiceView {
        let endpoint = |i: usize| Endpoint {
            workload: format!("{name}-{i}"),
            address: IpAddr::from([198, 18, 0, i as u8]),
            tunnel_port: None,
            identity: None,
            labels: Default::default(),
            ready: true,
        };
        ServiceView {
            name: name.into(),
            namespace: ns.into(),
            ports: Vec::new(),
            vip: None,
            endpoints: (0..endpoints).map(endpoint).collect(),
            traffic_policy: None,
        }
    }

    fn named(ns: &str, name: &str) -> ServiceRef {
        ServiceRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn changes_replace_add_and_remove_services_in_order() {
        let current = [service("a", "ratings", 1), service("a", "reviews", 1)];
        let merged = merge_services(
            &current,
            None,
            Some(vec![service("a", "reviews", 3), service("a", "details", 2)]),
            Some(vec![named("a", "ratings"), named("b", "never-had-it")]),
        )
        .unwrap();
        let names: Vec<(&str, usize)> = merged
            .iter()
            .map(|s| (s.name.as_str(), s.endpoints.len()))
            .collect();
        assert_eq!(names, [("details", 2), ("reviews", 3)]);
        // Nothing about services: ours stay; a whole list replaces ours.
        assert_eq!(merge_services(&current, None, None, None).unwrap(), current);
        let whole = vec![service("b", "x", 1)];
        assert_eq!(
            merge_services(&current, Some(whole.clone()), None, None).unwrap(),
            whole
        );
    }

    #[test]
    fn a_whole_list_with_changes_is_refused() {
        let e = merge_services(&[], Some(vec![]), Some(vec![]), None).unwrap_err();
        assert!(e.contains("servicesChanged"), "{e}");
        let e = merge_services(&[], Some(vec![]), None, Some(vec![])).unwrap_err();
        assert!(e.contains("servicesRemoved"), "{e}");
    }
}
