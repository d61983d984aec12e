//! Service and Workload rules.

use super::{names, Problems};
use crate::resources::types::{ServiceSpec, TrafficPolicy, WorkloadSpec};
use std::collections::HashMap;
use std::net::IpAddr;

pub(super) fn service(p: &mut Problems, spec: &ServiceSpec) {
    if spec.ports.is_empty() {
        p.add("spec.ports", "a Service needs at least one port");
    }
    let mut ports = HashMap::new();
    let mut port_names = HashMap::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        p.port(format!("{at}.port"), port.port);
        if let Some(target) = port.target_port {
            p.port(format!("{at}.targetPort"), target);
        }
        if let Some(first) = ports.insert(port.port, i) {
            p.add(
                format!("{at}.port"),
                format!(
                    "port {} is already listed at spec.ports[{first}]",
                    port.port
                ),
            );
        }
        if let Some(name) = &port.name {
            p.check(format!("{at}.name"), names::dns_label(name));
            if let Some(first) = port_names.insert(name.as_str(), i) {
                p.add(
                    format!("{at}.name"),
                    format!("port name `{name}` is already used by spec.ports[{first}]"),
                );
            }
        }
    }
    p.labels("spec.selector", &spec.selector);
    for (i, sa) in spec.service_accounts.iter().flatten().enumerate() {
        p.check(format!("spec.serviceAccounts[{i}]"), names::dns_label(sa));
    }
    if let Some(t) = &spec.traffic_policy {
        traffic_policy(p, "spec.trafficPolicy", t);
    }
}

/// Bounds on every count, so a typo (an extra zero or three) is an error, not a silent change.
const MAX_COUNT: u32 = 1_000_000;

fn traffic_policy(p: &mut Problems, at: &str, t: &TrafficPolicy) {
    if t.connect_timeout.is_some_and(|d| d.get().is_zero()) {
        p.add(format!("{at}.connectTimeout"), "must be longer than 0");
    }
    if t.connect_retries.is_some_and(|n| n > 10) {
        p.add(format!("{at}.connectRetries"), "at most 10");
    }
    if let Some(c) = &t.connection_pool {
        let at = format!("{at}.connectionPool");
        for (field, v) in [
            ("maxConnections", c.max_connections),
            ("maxRequests", c.max_requests),
        ] {
            if v.is_some_and(|n| n == 0 || n > MAX_COUNT) {
                p.add(format!("{at}.{field}"), format!("must be 1 to {MAX_COUNT}"));
            }
        }
        if c.max_pending_requests.is_some_and(|n| n > MAX_COUNT) {
            p.add(
                format!("{at}.maxPendingRequests"),
                format!("must be 0 to {MAX_COUNT}"),
            );
        }
    }
    if let Some(o) = &t.outlier_detection {
        let at = format!("{at}.outlierDetection");
        if o.consecutive_errors.is_some_and(|n| n > 1000) {
            p.add(format!("{at}.consecutiveErrors"), "must be 0 (off) to 1000");
        }
        if o.base_ejection_time.is_some_and(|d| d.get().is_zero()) {
            p.add(format!("{at}.baseEjectionTime"), "must be longer than 0");
        }
        if let (Some(base), Some(max)) = (o.base_ejection_time, o.max_ejection_time) {
            if max < base {
                p.add(
                    format!("{at}.maxEjectionTime"),
                    format!("{max} is shorter than baseEjectionTime ({base})"),
                );
            }
        }
        if o.max_ejection_percent.is_some_and(|n| n > 100) {
            p.add(format!("{at}.maxEjectionPercent"), "must be 0 to 100");
        }
    }
    if let Some(b) = &t.retry_budget {
        let at = format!("{at}.retryBudget");
        if b.percent.is_some_and(|n| n > 1000) {
            p.add(format!("{at}.percent"), "must be 0 to 1000");
        }
        if b.min_retries_per_second.is_some_and(|n| n > MAX_COUNT) {
            p.add(
                format!("{at}.minRetriesPerSecond"),
                format!("must be 0 to {MAX_COUNT}"),
            );
        }
    }
}

pub(super) fn workload(p: &mut Problems, spec: &WorkloadSpec) {
    if let Err(reason) = endpoint_address(spec.address) {
        p.add("spec.address", reason);
    }
    if let Some(sa) = &spec.service_account {
        p.check("spec.serviceAccount", names::service_account(sa));
    }
    if let Some(port) = spec.tunnel_port {
        p.port("spec.tunnelPort", port);
        if spec.service_account.is_none() {
            p.add(
                "spec.tunnelPort",
                "a tunnel port needs `serviceAccount`: the proxy behind it is verified by that identity",
            );
        }
    }
}

/// An address traffic can be sent to: one host, not "any", not a group.
fn endpoint_address(addr: IpAddr) -> Result<(), String> {
    let what = if addr.is_unspecified() {
        "unspecified"
    } else if addr.is_multicast() {
        "multicast"
    } else if matches!(addr, IpAddr::V4(v4) if v4.is_broadcast()) {
        "the broadcast address"
    } else {
        return Ok(());
    };
    Err(format!(
        "{addr} is {what}; a workload needs the address of one host"
    ))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{clean, errors, one};

    const SERVICE: &str = "\
apiVersion: weft.dev/v1
kind: Service
metadata:
  name: reviews
spec:
  selector:
    app: reviews
  ports:
  - name: http
    port: 9080
    targetPort: 8080
    protocol: http
  - name: grpc
    port: 9090
";

    const POLICY: &str = "  trafficPolicy:
    connectTimeout: 1s
    connectRetries: 2
    connectionPool:
      maxConnections: 100
      maxRequests: 50
      maxPendingRequests: 0
    outlierDetection:
      consecutiveErrors: 3
      baseEjectionTime: 5s
      maxEjectionTime: 1m
      maxEjectionPercent: 100
    retryBudget:
      percent: 20
      minRetriesPerSecond: 5
";

    #[test]
    fn a_traffic_policy_is_clean() {
        clean(&format!("{SERVICE}{POLICY}"));
    }

    #[test]
    fn traffic_policy_bounds() {
        let with = |from: &str, to: &str| format!("{SERVICE}{}", POLICY.replace(from, to));
        one(
            &with("maxRequests: 50", "maxRequests: 0"),
            20,
            "spec.trafficPolicy.connectionPool.maxRequests",
            "must be 1 to",
        );
        one(
            &with("maxEjectionPercent: 100", "maxEjectionPercent: 101"),
            26,
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "0 to 100",
        );
        one(
            &with("maxEjectionTime: 1m", "maxEjectionTime: 1s"),
            25,
            "spec.trafficPolicy.outlierDetection.maxEjectionTime",
            "shorter than baseEjectionTime",
        );
        one(
            &with("connectRetries: 2", "connectRetries: 11"),
            17,
            "spec.trafficPolicy.connectRetries",
            "at most 10",
        );
    }

    const WORKLOAD: &str = "\
apiVersion: weft.dev/v1
kind: Workload
metadata:
  name: db-1
  labels:
    app: db
spec:
  address: 10.1.2.3
  serviceAccount: db
  tunnelPort: 15008
";

    #[test]
    fn good_service_and_workload() {
        clean(SERVICE);
        clean(WORKLOAD);
    }

    #[test]
    fn service_without_ports() {
        let text = SERVICE.split("  ports:").next().unwrap().to_string() + "  ports: []\n";
        one(&text, 8, "spec.ports", "at least one port");
    }

    #[test]
    fn zero_ports() {
        one(
            &SERVICE.replace("port: 9090", "port: 0"),
            14,
            "spec.ports[1].port",
            "port 0",
        );
        one(
            &SERVICE.replace("targetPort: 8080", "targetPort: 0"),
            11,
            "spec.ports[0].targetPort",
            "port 0",
        );
    }

    #[test]
    fn duplicate_port() {
        one(
            &SERVICE.replace("port: 9090", "port: 9080"),
            14,
            "spec.ports[1].port",
            "already listed at spec.ports[0]",
        );
    }

    #[test]
    fn duplicate_port_name() {
        one(
            &SERVICE.replace("name: grpc", "name: http"),
            13,
            "spec.ports[1].name",
            "`http` is already used by spec.ports[0]",
        );
    }

    #[test]
    fn port_name_must_be_a_label() {
        one(
            &SERVICE.replace("name: grpc", "name: GRPC"),
            13,
            "spec.ports[1].name",
            "DNS label",
        );
    }

    #[test]
    fn selector_labels() {
        one(
            &SERVICE.replace("app: reviews", "app: \"re views\""),
            7,
            "spec.selector.app",
            "value",
        );
    }

    #[test]
    fn workload_addresses() {
        for (addr, what) in [
            ("0.0.0.0", "unspecified"),
            ("\"::\"", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
        ] {
            one(&WORKLOAD.replace("10.1.2.3", addr), 8, "spec.address", what);
        }
    }

    #[test]
    fn tunnel_port_requires_a_service_account() {
        one(
            &WORKLOAD.replace("  serviceAccount: db\n", ""),
            9,
            "spec.tunnelPort",
            "needs `serviceAccount`",
        );
        one(
            &WORKLOAD.replace("15008", "0"),
            10,
            "spec.tunnelPort",
            "port 0",
        );
    }

    #[test]
    fn plaintext_workload_needs_no_identity() {
        clean(&WORKLOAD.replace("  serviceAccount: db\n  tunnelPort: 15008\n", ""));
    }

    #[test]
    fn service_account_name() {
        let e = errors(&WORKLOAD.replace("serviceAccount: db", "serviceAccount: DB"));
        assert_eq!(e[0].field, "spec.serviceAccount");
        assert_eq!(e[0].line, Some(9));
    }
}
