//! What a proxy sees: the sections of its snapshot, built from the resources and the registry.
//!
//! Sections every proxy shares (mesh config, services with endpoints, routes, trust bundle, revoked
//! serials) are encoded
//! once per push cycle; only the authorization policies depend on the workload, and those are cached per
//! (namespace, labels). Snapshot frames are assembled from the pre-encoded JSON, so a cycle costs one
//! encoding of each section however many proxies receive it (frame.rs); services also go as changes
//! to proxies that take them (service_changes.rs).

mod frame;
mod service_changes;

pub use frame::{Frame, SectionDigests, SharedSections, WorkloadPolicies};
pub use service_changes::ChangeCache;

use crate::hub::Registered;
use crate::vips::Vips;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use weft_api::control::{Endpoint, ServiceView};
use weft_api::resources::{
    AuthorizationPolicySpec, Document, HttpRouteSpec, Labels, MeshConfigSpec, ServiceSpec,
    WorkloadSpec,
};
use weft_certs::{SpiffeId, TrustDomain};

/// The resources in force, by kind.
#[derive(Debug, Clone, Default)]
pub struct MeshResources {
    pub mesh: MeshConfigSpec,
    pub services: Vec<Document<ServiceSpec>>,
    pub workloads: Vec<Document<WorkloadSpec>>,
    pub routes: Vec<Document<HttpRouteSpec>>,
    pub policies: Vec<Document<AuthorizationPolicySpec>>,
}

pub const DEFAULT_ROOT_NAMESPACE: &str = "weft-system";

impl MeshResources {
    pub fn root_namespace(&self) -> &str {
        self.mesh
            .root_namespace
            .as_deref()
            .unwrap_or(DEFAULT_ROOT_NAMESPACE)
    }
}

/// Policies that apply to a workload: its namespace's policies whose selector matches its labels, and
/// the root namespace's (mesh-wide) ones.
#[derive(Default)]
pub struct PolicyCache {
    by_workload: HashMap<(String, Labels), Arc<WorkloadPolicies>>,
}

impl PolicyCache {
    pub fn for_workload(&mut self, res: &MeshResources, reg: &Registered) -> Arc<WorkloadPolicies> {
        let key = (reg.namespace.clone(), reg.registration.labels.clone());
        self.by_workload
            .entry(key)
            .or_insert_with(|| {
                let applicable = applicable_policies(res, &reg.namespace, &reg.registration.labels);
                Arc::new(WorkloadPolicies(frame::Section::encode(&applicable)))
            })
            .clone()
    }
}

/// The policies that apply to a workload of `namespace` with `labels`: its namespace's whose selector
/// matches (or that have none), and the root namespace's.
pub fn applicable_policies<'a>(
    res: &'a MeshResources,
    namespace: &str,
    labels: &Labels,
) -> Vec<&'a Document<AuthorizationPolicySpec>> {
    let root = res.root_namespace();
    res.policies
        .iter()
        .filter(|p| {
            let ns = &p.metadata.namespace;
            ns == root
                || (ns == namespace
                    && p.spec
                        .selector
                        .as_ref()
                        .is_none_or(|s| selects(&s.match_labels, labels)))
        })
        .collect()
}

/// A selector matches labels that include every one of its pairs. An empty selector matches nothing
/// (a service without a selector has only the endpoints given to it explicitly).
fn selects(selector: &Labels, labels: &Labels) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Every service with its endpoints: registered proxies and static workloads its selector matches.
pub fn services_view(
    res: &MeshResources,
    registered: &[&Registered],
    td: &TrustDomain,
    vips: &Vips,
) -> Vec<ServiceView> {
    let mut out: Vec<ServiceView> = res
        .services
        .iter()
        .map(|svc| {
            let ns = &svc.metadata.namespace;
            let sel = &svc.spec.selector;
            let mut endpoints: Vec<Endpoint> = registered
                .iter()
                .filter(|r| {
                    &r.namespace == ns
                        && selects(sel, &r.registration.labels)
                        && serves(svc, &r.identity)
                })
                .map(|r| Endpoint {
                    workload: r.registration.name.clone(),
                    address: r.registration.address,
                    tunnel_port: Some(r.registration.tunnel_port),
                    identity: Some(r.identity.clone()),
                    labels: r.registration.labels.clone(),
                    ready: r.registration.ready,
                })
                .collect();
            endpoints.extend(
                res.workloads
                    .iter()
                    .filter(|w| &w.metadata.namespace == ns && selects(sel, &w.metadata.labels))
                    .map(|w| static_endpoint(w, td)),
            );
            endpoints.sort_by(|a, b| (a.address, &a.workload).cmp(&(b.address, &b.workload)));
            ServiceView {
                name: svc.metadata.name.clone(),
                namespace: ns.clone(),
                ports: svc.spec.ports.clone(),
                vip: vips.get(ns, &svc.metadata.name).map(IpAddr::V4),
                endpoints,
                traffic_policy: svc.spec.traffic_policy.clone(),
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// The labels of `ns/name`'s endpoints (registered and static), only those whose `version` is `subset`
/// when one is given; `None` when there is no such service.
pub fn endpoint_labels<'a>(
    res: &'a MeshResources,
    registered: &[&'a Registered],
    ns: &str,
    name: &str,
    subset: Option<&str>,
) -> Option<Vec<&'a Labels>> {
    let svc = res
        .services
        .iter()
        .find(|s| s.metadata.namespace == ns && s.metadata.name == name)?;
    let sel = &svc.spec.selector;
    let in_subset =
        |l: &Labels| subset.is_none_or(|v| l.get("version").map(String::as_str) == Some(v));
    let registered = registered
        .iter()
        .filter(|r| {
            r.namespace == ns && selects(sel, &r.registration.labels) && serves(svc, &r.identity)
        })
        .map(|r| &r.registration.labels);
    let statics = res
        .workloads
        .iter()
        .filter(|w| w.metadata.namespace == ns && selects(sel, &w.metadata.labels))
        .map(|w| &w.metadata.labels);
    Some(registered.chain(statics).filter(|l| in_subset(l)).collect())
}

/// Whether a registered proxy with `identity` may be an endpoint of `svc`: its service account is one
/// the service names (`serviceAccounts`, by default the service's own name). Labels are the workload's
/// word; the service account is its certificate's.
pub fn serves(svc: &Document<ServiceSpec>, identity: &SpiffeId) -> bool {
    let Some(sa) = identity.service_account() else {
        return false;
    };
    match &svc.spec.service_accounts {
        Some(allowed) => allowed.iter().any(|a| a == sa),
        None => sa == svc.metadata.name,
    }
}

fn static_endpoint(w: &Document<WorkloadSpec>, td: &TrustDomain) -> Endpoint {
    let identity = w.spec.service_account.as_ref().and_then(|sa| {
        SpiffeId::for_workload(td, &w.metadata.namespace, sa)
            .map_err(|e| tracing::warn!(workload = %w.metadata.name, error = %e, "static workload has no valid identity"))
            .ok()
    });
    Endpoint {
        workload: w.metadata.name.clone(),
        address: w.spec.address,
        tunnel_port: w.spec.tunnel_port.filter(|_| identity.is_some()),
        identity,
        labels: w.metadata.labels.clone(),
        ready: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_vips() -> Vips {
        Vips::load("198.19.0.0/16".parse().unwrap(), None)
    }
    use weft_api::control::{FrameDecoder, FromControl, Registration, ServiceView};
    use weft_api::resources::{Kind, Metadata, ServicePort, API_VERSION};

    fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> Metadata {
        Metadata {
            name: name.into(),
            namespace: ns.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: Labels::new(),
        }
    }

    fn reg(ns: &str, name: &str, app: &str, ip: &str) -> Registered {
        let td = TrustDomain::new("t.local").unwrap();
        Registered {
            namespace: ns.into(),
            identity: SpiffeId::for_workload(&td, ns, app).unwrap(),
            registration: Registration {
                name: name.into(),
                labels: meta(ns, name, &[("app", app)]).labels,
                address: ip.parse().unwrap(),
                tunnel_port: 15008,
                ports: vec![9080],
                ready: true,
            },
        }
    }

    fn resources() -> MeshResources {
        MeshResources {
            services: vec![Document {
                api_version: API_VERSION.into(),
                kind: Kind::Service,
                metadata: meta("default", "reviews", &[]),
                spec: ServiceSpec {
                    ports: vec![ServicePort {
                        name: None,
                        port: 9080,
                        target_port: None,
                        protocol: Default::default(),
                    }],
                    selector: meta("", "", &[("app", "reviews")]).labels,
                    service_accounts: None,
                    traffic_policy: None,
                },
            }],
            workloads: vec![Document {
                api_version: API_VERSION.into(),
                kind: Kind::Workload,
                metadata: meta("default", "legacy", &[("app", "reviews")]),
                spec: WorkloadSpec {
                    address: "198.18.9.9".parse().unwrap(),
                    service_account: None,
                    tunnel_port: None,
                },
            }],
            ..Default::default()
        }
    }

    #[test]
    fn endpoints_come_from_matching_registrations_and_static_workloads() {
        let td = TrustDomain::new("t.local").unwrap();
        let a = reg("default", "reviews-1", "reviews", "198.18.0.2");
        let b = reg("default", "ratings-1", "ratings", "198.18.0.3");
        let c = reg("other", "reviews-x", "reviews", "198.18.0.4");
        let view = services_view(&resources(), &[&a, &b, &c], &td, &no_vips());
        let eps: Vec<String> = view[0]
            .endpoints
            .iter()
            .map(|e| e.workload.clone())
            .collect();
        assert_eq!(eps, ["reviews-1", "legacy"]);
        assert!(view[0].endpoints[1].identity.is_none());
    }

    #[test]
    fn registered_endpoints_need_a_service_account_the_service_names() {
        let td = TrustDomain::new("t.local").unwrap();
        let mut impostor = reg("default", "reviews-9", "frontend", "198.18.0.7");
        impostor.registration.labels = meta("", "", &[("app", "reviews")]).labels;
        let real = reg("default", "reviews-1", "reviews", "198.18.0.2");
        let mut res = resources();
        let names = |res: &MeshResources| -> Vec<String> {
            services_view(res, &[&real, &impostor], &td, &no_vips())[0]
                .endpoints
                .iter()
                .map(|e| e.workload.clone())
                .collect()
        };
        assert_eq!(names(&res), ["reviews-1", "legacy"]);
        res.services[0].spec.service_accounts = Some(vec!["frontend".into()]);
        assert_eq!(names(&res), ["reviews-9", "legacy"]);
    }

    #[test]
    fn frames_decode_and_carry_only_changed_sections() {
        let td = TrustDomain::new("t.local").unwrap();
        let a = reg("default", "reviews-1", "reviews", "198.18.0.2");
        let res = resources();
        let shared = SharedSections::build(&res, &[&a], &td, "PEM", &no_vips(), &[]);
        let pol = PolicyCache::default().for_workload(&res, &a);
        let full = shared.frame(7, &pol, &[], None).to_bytes();
        let mut d = FrameDecoder::default();
        d.push(&full);
        let FromControl::Snapshot(s) = d.next::<FromControl>().unwrap().unwrap();
        assert_eq!(s.version, 7);
        assert_eq!(s.services.unwrap()[0].endpoints.len(), 2);
        assert_eq!(s.trust_bundle_pem.as_deref(), Some("PEM"));
        assert_eq!(s.revoked_serials, Some(vec![]));
        assert!(s.policies.unwrap().is_empty());

        let base = shared.digests(&pol);
        let b = reg("default", "reviews-2", "reviews", "198.18.0.5");
        let shared2 = SharedSections::build(&res, &[&a, &b], &td, "PEM", &no_vips(), &[]);
        let delta = shared2.frame(8, &pol, &[&base], None).to_bytes();
        d.push(&delta);
        let FromControl::Snapshot(s) = d.next::<FromControl>().unwrap().unwrap();
        assert!(s.services.is_some());
        assert!(s.mesh.is_none() && s.routes.is_none() && s.trust_bundle_pem.is_none());
        assert!(s.revoked_serials.is_none());

        // A revocation changes only its own section.
        let base = shared2.digests(&pol);
        let revoked = ["0a1b".to_string()];
        let shared3 = SharedSections::build(&res, &[&a, &b], &td, "PEM", &no_vips(), &revoked);
        d.push(&shared3.frame(9, &pol, &[&base], None).to_bytes());
        let FromControl::Snapshot(s) = d.next::<FromControl>().unwrap().unwrap();
        assert_eq!(s.revoked_serials, Some(vec!["0a1b".to_string()]));
        assert!(s.services.is_none() && s.trust_bundle_pem.is_none());
    }

    /// `resources()` with services `reviews`, `ratings` and `details`, each selecting its `app`.
    fn three_services() -> MeshResources {
        let mut res = resources();
        for name in ["ratings", "details"] {
            let mut svc = res.services[0].clone();
            svc.metadata.name = name.into();
            svc.spec.selector = meta("", "", &[("app", name)]).labels;
            res.services.push(svc);
        }
        res
    }

    fn snapshot(frame: Frame) -> weft_api::control::Snapshot {
        let mut d = FrameDecoder::default();
        d.push(&frame.to_bytes());
        let FromControl::Snapshot(s) = d.next::<FromControl>().unwrap().unwrap();
        s
    }

    fn names(services: &Option<Vec<ServiceView>>) -> Vec<String> {
        let all = services.iter().flatten();
        all.map(|s| s.name.clone()).collect()
    }

    #[test]
    fn services_go_as_the_ones_that_changed_to_a_proxy_that_takes_changes() {
        let td = TrustDomain::new("t.local").unwrap();
        let (res, pem, vips) = (three_services(), "PEM", no_vips());
        let r1 = reg("default", "reviews-1", "reviews", "198.18.0.2");
        let d1 = reg("default", "details-1", "details", "198.18.0.3");
        let before = SharedSections::build(&res, &[&r1, &d1], &td, pem, &vips, &[]);
        let pol = PolicyCache::default().for_workload(&res, &r1);
        let held = before.digests(&pol);
        let r2 = reg("default", "reviews-2", "reviews", "198.18.0.5");
        let after = SharedSections::build(&res, &[&r1, &r2, &d1], &td, pem, &vips, &[]);
        let mut cache = ChangeCache::default();
        let s = snapshot(after.frame(8, &pol, &[&held], Some(&mut cache)));
        assert_eq!(s.services, None, "the whole list was sent");
        assert_eq!(names(&s.services_changed), ["reviews"]);
        assert_eq!(s.services_changed.unwrap()[0].endpoints.len(), 3);
        assert_eq!(s.services_removed, None);
        assert!(s.mesh.is_none() && s.routes.is_none() && s.trust_bundle_pem.is_none());
        // A proxy of protocol 1 gets the whole list.
        let s = snapshot(after.frame(8, &pol, &[&held], None));
        assert_eq!(names(&s.services), ["details", "ratings", "reviews"]);
        assert_eq!(s.services_changed, None);
        // A proxy whose view is unknown gets everything.
        let s = snapshot(after.frame(8, &pol, &[], Some(&mut cache)));
        assert_eq!(names(&s.services), ["details", "ratings", "reviews"]);
        assert!(s.mesh.is_some() && s.routes.is_some() && s.policies.is_some());
    }

    #[test]
    fn a_frame_covers_every_view_the_proxy_may_hold() {
        let td = TrustDomain::new("t.local").unwrap();
        let (mut res, pem, vips) = (three_services(), "PEM", no_vips());
        let r1 = reg("default", "reviews-1", "reviews", "198.18.0.2");
        let r2 = reg("default", "reviews-2", "reviews", "198.18.0.5");
        let pol = PolicyCache::default().for_workload(&res, &r1);
        let acked = SharedSections::build(&res, &[&r1], &td, pem, &vips, &[]).digests(&pol);
        // Sent, not yet acknowledged: reviews-2 joined, and a revocation.
        let revoked = ["0a".to_string()];
        let sent = SharedSections::build(&res, &[&r1, &r2], &td, pem, &vips, &revoked);
        let sent = sent.digests(&pol);
        // Now reviews-2 and the revocation are gone again, and `details` is removed.
        res.services.retain(|s| s.metadata.name != "details");
        let now = SharedSections::build(&res, &[&r1], &td, pem, &vips, &[]);
        let mut cache = ChangeCache::default();
        let s = snapshot(now.frame(9, &pol, &[&acked, &sent], Some(&mut cache)));
        // Equal to the acknowledged view, but not to the one sent since: both come again.
        assert_eq!(names(&s.services_changed), ["reviews"]);
        assert_eq!(s.revoked_serials, Some(vec![]));
        let removed = s.services_removed.unwrap();
        assert_eq!(
            (removed[0].namespace.as_str(), removed[0].name.as_str()),
            ("default", "details")
        );
        assert_eq!(removed.len(), 1);
        // Against the acknowledged view alone, only the removal would be news.
        let s = snapshot(now.frame(9, &pol, &[&acked], Some(&mut cache)));
        assert_eq!(s.services_changed, None);
        assert_eq!(s.revoked_serials, None);
        assert_eq!(s.services_removed.map(|r| r.len()), Some(1));
    }

    #[test]
    fn the_whole_list_goes_when_it_is_no_larger_than_the_changes() {
        let td = TrustDomain::new("t.local").unwrap();
        let (res, pem, vips) = (three_services(), "PEM", no_vips());
        let pol =
            PolicyCache::default().for_workload(&res, &reg("default", "x", "x", "198.18.0.9"));
        let none = SharedSections::build(&res, &[], &td, pem, &vips, &[]).digests(&pol);
        let regs = [
            reg("default", "reviews-1", "reviews", "198.18.0.2"),
            reg("default", "ratings-1", "ratings", "198.18.0.3"),
            reg("default", "details-1", "details", "198.18.0.4"),
        ];
        let every: Vec<&Registered> = regs.iter().collect();
        let all_changed = SharedSections::build(&res, &every, &td, pem, &vips, &[]);
        let mut cache = ChangeCache::default();
        let s = snapshot(all_changed.frame(3, &pol, &[&none], Some(&mut cache)));
        assert_eq!(names(&s.services), ["details", "ratings", "reviews"]);
        assert_eq!((s.services_changed, s.services_removed), (None, None));
    }
}
