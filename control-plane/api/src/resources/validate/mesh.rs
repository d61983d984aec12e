//! MeshConfig rules.

use super::{names, Problems};
use crate::duration::Duration;
use crate::resources::types::{Document, MeshConfigSpec};

/// The one MeshConfig's name.
pub const MESH_CONFIG_NAME: &str = "default";
/// Workload certificate lifetimes: renewal happens at about 2/3 of the lifetime, so below a couple of
/// seconds proxies would do little else; above a year a leaked key stays useful for too long.
pub const MIN_CERTIFICATE_TTL: Duration = Duration::from_secs(2);
/// A stolen leaf is good until it expires or is revoked: a day at most, as Istio's default.
pub const MAX_CERTIFICATE_TTL: Duration = Duration::from_secs(86_400);
/// Longest a disconnected proxy's workload may stay registered.
pub const MAX_PROXY_GRACE_PERIOD: Duration = Duration::from_secs(3_600);

pub(super) fn mesh(p: &mut Problems, d: &Document<MeshConfigSpec>) {
    if d.metadata.name != MESH_CONFIG_NAME {
        p.add(
            "metadata.name",
            format!(
                "there is one MeshConfig per mesh and it is named `{MESH_CONFIG_NAME}`, not `{}`",
                d.metadata.name
            ),
        );
    }
    let spec = &d.spec;
    if let Some(td) = &spec.trust_domain {
        p.check("spec.trustDomain", names::trust_domain(td));
    }
    if let Some(ttl) = spec.certificate_ttl {
        if !(MIN_CERTIFICATE_TTL..=MAX_CERTIFICATE_TTL).contains(&ttl) {
            p.add(
                "spec.certificateTtl",
                format!("{ttl} is outside {MIN_CERTIFICATE_TTL}..{MAX_CERTIFICATE_TTL}"),
            );
        }
    }
    if let Some(grace) = spec.proxy_grace_period {
        if grace > MAX_PROXY_GRACE_PERIOD {
            p.add(
                "spec.proxyGracePeriod",
                format!("{grace} is over the limit of {MAX_PROXY_GRACE_PERIOD}"),
            );
        }
    }
    if let Some(ns) = &spec.root_namespace {
        p.check("spec.rootNamespace", names::dns_label(ns));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{clean, one};

    const MESH: &str = "\
apiVersion: weft.dev/v1
kind: MeshConfig
metadata:
  name: default
spec:
  trustDomain: weft.local
  certificateTtl: 24h
  mtlsMode: STRICT
  outboundTrafficPolicy: REGISTRY_ONLY
  proxyGracePeriod: 30s
  rootNamespace: weft-system
";

    #[test]
    fn a_full_mesh_config_is_clean() {
        clean(MESH);
    }

    #[test]
    fn name_must_be_default() {
        one(
            &MESH.replace("name: default", "name: prod"),
            4,
            "metadata.name",
            "named `default`",
        );
    }

    #[test]
    fn trust_domain() {
        one(
            &MESH.replace("weft.local", "Weft.Local"),
            6,
            "spec.trustDomain",
            "trust domain",
        );
    }

    #[test]
    fn certificate_ttl_bounds() {
        clean(&MESH.replace("24h", "2s"));
        clean(&MESH.replace("24h", "1d"));
        one(
            &MESH.replace("24h", "1999ms"),
            7,
            "spec.certificateTtl",
            "outside 2s..1d",
        );
        one(
            &MESH.replace("24h", "25h"),
            7,
            "spec.certificateTtl",
            "25h is outside 2s..1d",
        );
        one(
            &MESH.replace("24h", "365d"),
            7,
            "spec.certificateTtl",
            "outside",
        );
    }

    #[test]
    fn grace_period_bound() {
        clean(&MESH.replace("30s", "1h"));
        clean(&MESH.replace("30s", "0s"));
        one(
            &MESH.replace("30s", "61m"),
            10,
            "spec.proxyGracePeriod",
            "limit of 1h",
        );
    }

    #[test]
    fn root_namespace() {
        one(
            &MESH.replace("weft-system", "Weft"),
            11,
            "spec.rootNamespace",
            "DNS label",
        );
    }
}
