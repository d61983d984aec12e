//! Which names the sidecar answers for, and with what. Pure: the services, the pod's namespace and the
//! cluster domain go in, an [`Answer`] comes out; the server turns it into a DNS message.
//!
//! For a Service `reviews` in namespace `default` (cluster domain `cluster.local`), from a pod in
//! `default`: `reviews`, `reviews.default`, `reviews.default.svc` and `reviews.default.svc.cluster.local`.
//! The mesh zones are `svc` and `svc.<cluster domain>`; names under them that name no service are
//! NXDOMAIN. One- and two-label names that name no service are not ours ([`Answer::NotMesh`]).

use hickory_proto::rr::RecordType;
use std::net::IpAddr;
use weft_api::control::ServiceView;

/// What to answer for one question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A mesh service's VIP, of the family the question asked for (A: IPv4, AAAA: IPv6, or ANY).
    Address(IpAddr),
    /// The name exists in the mesh but has no record of the asked type (AAAA for an IPv4 VIP, any type
    /// before the VIP is allocated, a namespace): NOERROR with no answer records.
    NoData,
    /// A name inside the mesh zones that names nothing.
    NxDomain,
    /// Not a mesh name: the server forwards it upstream, or answers NXDOMAIN without upstreams.
    NotMesh,
}

/// The names this pod sees: its own namespace for relative names, and the cluster domain.
#[derive(Debug, Clone)]
pub struct Names {
    namespace: String,
    /// `svc.<cluster domain>`, lowercase, no trailing dot.
    svc_zone: String,
}

impl Names {
    /// `cluster_domain` is e.g. `cluster.local`; case and one trailing dot are ignored.
    pub fn new(namespace: &str, cluster_domain: &str) -> Names {
        let cd = cluster_domain.strip_suffix('.').unwrap_or(cluster_domain);
        Names {
            namespace: namespace.to_ascii_lowercase(),
            svc_zone: format!("svc.{}", cd.to_ascii_lowercase()),
        }
    }

    /// The answer for `qname` (as it came in the question: any case, trailing dot or not) of type `qtype`.
    ///
    /// The services are scanned in order: a pod sees at most a few hundred services, and a scan of that
    /// many short strings costs less than building an index on every snapshot for a lookup rate of a few
    /// queries per connection the app opens.
    pub fn answer(&self, services: &[ServiceView], qname: &str, qtype: RecordType) -> Answer {
        let name = qname
            .strip_suffix('.')
            .unwrap_or(qname)
            .to_ascii_lowercase();
        if name.is_empty() {
            return Answer::NotMesh;
        }
        let find = |ns: &str, svc: &str| {
            services
                .iter()
                .find(|s| s.name.eq_ignore_ascii_case(svc) && s.namespace.eq_ignore_ascii_case(ns))
        };
        let in_zone = if name == "svc" || name == self.svc_zone {
            // The zone apexes exist (they hold the services), so they are NODATA, never NXDOMAIN: a
            // resolver may take NXDOMAIN to mean nothing below the name exists either (RFC 8020).
            return Answer::NoData;
        } else if let Some(head) = name.strip_suffix(&format!(".{}", self.svc_zone)) {
            Some(head)
        } else {
            name.strip_suffix(".svc")
        };
        let labels: Vec<&str> = in_zone.unwrap_or(&name).split('.').collect();
        match (in_zone.is_some(), labels.as_slice()) {
            (true, [svc, ns]) => match find(ns, svc) {
                Some(s) => address(s, qtype),
                None => Answer::NxDomain,
            },
            // `<ns>.svc`: an empty non-terminal while the namespace has services (same reason as above).
            (true, [ns])
                if services
                    .iter()
                    .any(|s| s.namespace.eq_ignore_ascii_case(ns)) =>
            {
                Answer::NoData
            }
            (true, _) => Answer::NxDomain,
            (false, [svc]) => {
                find(&self.namespace, svc).map_or(Answer::NotMesh, |s| address(s, qtype))
            }
            (false, [svc, ns]) => find(ns, svc).map_or(Answer::NotMesh, |s| address(s, qtype)),
            (false, _) => Answer::NotMesh,
        }
    }
}

/// The service's VIP when the question asks for its family; otherwise the name exists with no such record.
fn address(s: &ServiceView, qtype: RecordType) -> Answer {
    match (s.vip, qtype) {
        (Some(ip @ IpAddr::V4(_)), RecordType::A | RecordType::ANY) => Answer::Address(ip),
        (Some(ip @ IpAddr::V6(_)), RecordType::AAAA | RecordType::ANY) => Answer::Address(ip),
        _ => Answer::NoData,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn svc(ns: &str, name: &str, vip: Option<IpAddr>) -> ServiceView {
        ServiceView {
            name: name.into(),
            namespace: ns.into(),
            ports: Vec::new(),
            vip,
            endpoints: Vec::new(),
            traffic_policy: None,
        }
    }

    const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 7));
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 9));

    fn mesh() -> Vec<ServiceView> {
        vec![
            svc("default", "reviews", Some(VIP)),
            svc("shop", "ratings", Some(OTHER)),
            svc("default", "pending", None),
            svc("v6", "web", Some("fd00::7".parse().unwrap())),
        ]
    }

    fn a(qname: &str) -> Answer {
        Names::new("default", "cluster.local").answer(&mesh(), qname, RecordType::A)
    }

    #[test]
    fn every_name_form_of_a_service_in_the_pods_namespace() {
        for q in [
            "reviews",
            "reviews.default",
            "reviews.default.svc",
            "reviews.default.svc.cluster.local",
        ] {
            assert_eq!(a(q), Answer::Address(VIP), "{q}");
        }
    }

    #[test]
    fn other_namespaces_need_the_namespace() {
        assert_eq!(a("ratings"), Answer::NotMesh);
        assert_eq!(a("ratings.shop"), Answer::Address(OTHER));
        assert_eq!(a("ratings.shop.svc"), Answer::Address(OTHER));
        assert_eq!(a("ratings.shop.svc.cluster.local"), Answer::Address(OTHER));
        let from_shop = Names::new("shop", "cluster.local");
        assert_eq!(
            from_shop.answer(&mesh(), "ratings", RecordType::A),
            Answer::Address(OTHER)
        );
        assert_eq!(
            from_shop.answer(&mesh(), "reviews", RecordType::A),
            Answer::NotMesh
        );
    }

    #[test]
    fn case_and_trailing_dot_do_not_matter() {
        for q in [
            "REVIEWS",
            "Reviews.Default.",
            "reviews.default.svc.",
            "rEvIeWs.DeFaUlT.SVC.Cluster.Local.",
        ] {
            assert_eq!(a(q), Answer::Address(VIP), "{q}");
        }
        let upper_domain = Names::new("default", "Cluster.Local.");
        assert_eq!(
            upper_domain.answer(&mesh(), "reviews.default.svc.cluster.local", RecordType::A),
            Answer::Address(VIP)
        );
    }

    #[test]
    fn other_types_of_a_mesh_name_are_nodata() {
        let n = Names::new("default", "cluster.local");
        for t in [
            RecordType::AAAA,
            RecordType::MX,
            RecordType::TXT,
            RecordType::SRV,
        ] {
            assert_eq!(n.answer(&mesh(), "reviews", t), Answer::NoData, "{t}");
            assert_eq!(
                n.answer(&mesh(), "reviews.default.svc.cluster.local", t),
                Answer::NoData,
                "{t}"
            );
        }
        assert_eq!(
            n.answer(&mesh(), "reviews", RecordType::ANY),
            Answer::Address(VIP)
        );
    }

    #[test]
    fn an_ipv6_vip_answers_aaaa_only() {
        let n = Names::new("default", "cluster.local");
        let v6: IpAddr = "fd00::7".parse().unwrap();
        assert_eq!(
            n.answer(&mesh(), "web.v6.svc", RecordType::AAAA),
            Answer::Address(v6)
        );
        assert_eq!(
            n.answer(&mesh(), "web.v6.svc", RecordType::A),
            Answer::NoData
        );
    }

    #[test]
    fn unknown_names_under_the_mesh_zones_are_nxdomain() {
        for q in [
            "nope.default.svc",
            "nope.default.svc.cluster.local",
            "reviews.shop.svc",
            "reviews.nowhere.svc.cluster.local",
            "x.reviews.default.svc",
            "_http._tcp.reviews.default.svc.cluster.local",
            "nowhere.svc",
            "example.com.default.svc",
            "example.com.svc",
        ] {
            assert_eq!(a(q), Answer::NxDomain, "{q}");
        }
    }

    #[test]
    fn zone_apexes_and_namespaces_with_services_exist() {
        for q in [
            "svc",
            "svc.cluster.local",
            "default.svc",
            "shop.svc.cluster.local",
        ] {
            assert_eq!(a(q), Answer::NoData, "{q}");
        }
    }

    #[test]
    fn a_service_without_a_vip_yet_is_nodata() {
        for q in [
            "pending",
            "pending.default",
            "pending.default.svc.cluster.local",
        ] {
            assert_eq!(a(q), Answer::NoData, "{q}");
        }
    }

    #[test]
    fn names_outside_the_mesh_are_not_ours() {
        for q in [
            "example.com",
            "example.com.",
            "www.example.com",
            "localhost",
            "nope",
            "nope.default",
            "cluster.local",
            "reviews.default.svc.other.domain",
            ".",
            "",
        ] {
            assert_eq!(a(q), Answer::NotMesh, "{q}");
        }
    }

    #[test]
    fn a_custom_cluster_domain_replaces_cluster_local() {
        let n = Names::new("default", "mesh.example");
        assert_eq!(
            n.answer(&mesh(), "reviews.default.svc.mesh.example", RecordType::A),
            Answer::Address(VIP)
        );
        assert_eq!(
            n.answer(&mesh(), "reviews.default.svc.cluster.local", RecordType::A),
            Answer::NotMesh
        );
        assert_eq!(
            n.answer(&mesh(), "nope.default.svc.mesh.example", RecordType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn an_empty_mesh_answers_only_the_zones() {
        let n = Names::new("default", "cluster.local");
        assert_eq!(n.answer(&[], "reviews", RecordType::A), Answer::NotMesh);
        assert_eq!(
            n.answer(&[], "reviews.default.svc", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            n.answer(&[], "default.svc", RecordType::A),
            Answer::NxDomain
        );
    }
}
