//! How weftctl shows what the control plane answered: change lines and rollouts, resource tables per
//! kind, proxy status, join tokens, and times ("3m ago", "in 23h"). Pure functions of their inputs
//! (the current time is a parameter), so each is tested on its own.

use serde::Serialize;
use std::fmt::Write as _;
use weft_api::operator::{
    ApplyResponse, Change, ChangeAction, ProxyStatus, Rollout, RolloutState, TokenInfo,
};
use weft_api::resources::{
    AuthorizationPolicySpec, Document, HttpRouteSpec, Kind, Labels, MeshConfigSpec, Resource,
    ServiceSpec, WorkloadSpec,
};

// === apply and delete ===

/// One line per change (with its diff on a dry run), then how the rollout went.
pub fn apply(resp: &ApplyResponse) -> String {
    let mut out = String::new();
    for c in &resp.changes {
        out.push_str(&change(c, resp.dry_run));
    }
    if resp.dry_run {
        out.push_str("dry run: nothing was changed\n");
    }
    if let Some(r) = &resp.rollout {
        out.push_str(&rollout(r));
    }
    out
}

/// `service default/reviews configured`, and on a dry run the indented diff.
pub fn change(c: &Change, dry_run: bool) -> String {
    let action = match c.action {
        ChangeAction::Created => "created",
        ChangeAction::Configured => "configured",
        ChangeAction::Unchanged => "unchanged",
        ChangeAction::Deleted => "deleted",
    };
    let mut out = format!(
        "{} {}/{} {action}{}\n",
        c.key.kind.as_str().to_ascii_lowercase(),
        c.key.namespace,
        c.key.name,
        if dry_run { " (dry run)" } else { "" }
    );
    if dry_run {
        for line in c.diff.lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}

/// `acked by 3/3 proxies in 120 ms`, or what stands in the way, proxy by proxy.
pub fn rollout(r: &Rollout) -> String {
    let total = r.proxies.len();
    let acked = r
        .proxies
        .iter()
        .filter(|p| p.state == RolloutState::Acked)
        .count();
    if total == 0 {
        return "no proxy's configuration changed\n".into();
    }
    if r.complete {
        return format!(
            "acked by {acked}/{total} proxies in {} ms{}\n",
            r.waited_ms,
            by_replica(r)
        );
    }
    let mut out = format!(
        "NOT confirmed: acked by {acked}/{total} proxies after {} ms\n",
        r.waited_ms
    );
    for p in &r.proxies {
        let state = match &p.state {
            RolloutState::Acked => continue,
            RolloutState::Nacked { reason } => format!("NACK: {}", one_line(reason)),
            RolloutState::Pending => "pending (no answer yet)".into(),
            RolloutState::Disconnected => "disconnected".into(),
        };
        match &p.replica {
            Some(replica) => {
                let _ = writeln!(out, "  {} (replica {replica}): {state}", p.proxy);
            }
            None => {
                let _ = writeln!(out, "  {}: {state}", p.proxy);
            }
        }
    }
    out
}

/// ` (replica r-1: 2, r-2: 1)`: how many proxies of each control-plane replica the rollout counted
/// (replicas sharing etcd); empty when no replica is named.
fn by_replica(r: &Rollout) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for p in &r.proxies {
        if let Some(replica) = &p.replica {
            *counts.entry(replica).or_default() += 1;
        }
    }
    if counts.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(replica, n)| format!("replica {replica}: {n}"))
        .collect();
    format!(" ({})", parts.join(", "))
}

// === tables ===

/// Columns padded to their widest cell (counted in characters); no trailing spaces.
pub fn table<S: AsRef<str>>(header: &[&str], rows: &[Vec<S>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.as_ref().chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (c, w) in cells.zip(&widths) {
            let _ = write!(l, "{c:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.iter().map(AsRef::as_ref));
    }
    out
}

/// Resources of one kind: NAMESPACE, NAME and a few columns of their spec.
pub fn resources(kind: Kind, items: &[Resource]) -> String {
    let rows: Vec<Vec<String>> = items.iter().map(resource_row).collect();
    table(&resource_header(kind), &rows)
}

fn resource_header(kind: Kind) -> Vec<&'static str> {
    let spec: &[&str] = match kind {
        Kind::Service => &["PORTS", "SELECTOR"],
        Kind::Workload => &["ADDRESS", "LABELS", "SERVICE-ACCOUNT", "TUNNEL-PORT"],
        Kind::HttpRoute => &["PARENTS", "HOSTNAMES", "RULES", "BACKENDS"],
        Kind::AuthorizationPolicy => &["ACTION", "MODE", "SELECTOR", "RULES"],
        Kind::MeshConfig => &["TRUST-DOMAIN", "MTLS", "OUTBOUND", "CERT-TTL"],
    };
    let mut h = vec!["NAMESPACE", "NAME"];
    h.extend_from_slice(spec);
    h
}

fn resource_row(r: &Resource) -> Vec<String> {
    let m = r.metadata();
    let mut row = vec![m.namespace.clone(), m.name.clone()];
    row.extend(match r {
        Resource::Service(d) => service_cells(&d.spec),
        Resource::Workload(d) => workload_cells(d),
        Resource::HttpRoute(d) => route_cells(&d.spec),
        Resource::AuthorizationPolicy(d) => policy_cells(&d.spec),
        Resource::MeshConfig(d) => mesh_cells(&d.spec),
    });
    row
}

/// `9080/http`, or `80:8080/tcp` when the workload listens on another port.
fn service_cells(s: &ServiceSpec) -> Vec<String> {
    let ports: Vec<String> = s
        .ports
        .iter()
        .map(|p| match p.target_port.filter(|t| *t != p.port) {
            Some(t) => format!("{}:{t}/{}", p.port, wire(&p.effective_protocol())),
            None => format!("{}/{}", p.port, wire(&p.effective_protocol())),
        })
        .collect();
    vec![ports.join(","), labels(&s.selector)]
}

fn workload_cells(d: &Document<WorkloadSpec>) -> Vec<String> {
    vec![
        d.spec.address.to_string(),
        labels(&d.metadata.labels),
        d.spec.service_account.clone().unwrap_or_else(|| "-".into()),
        d.spec
            .tunnel_port
            .map_or_else(|| "- (plaintext)".into(), |p| p.to_string()),
    ]
}

/// Backends per rule as `name[/subset]=weight`, rules separated by `; `.
fn route_cells(s: &HttpRouteSpec) -> Vec<String> {
    let parents: Vec<String> = s
        .parent_refs
        .iter()
        .map(|p| {
            let name = qualified(p.namespace.as_deref(), &p.name);
            p.port.map_or(name.clone(), |port| format!("{name}:{port}"))
        })
        .collect();
    let backends: Vec<String> = s
        .rules
        .iter()
        .map(|rule| {
            let b: Vec<String> = rule
                .backend_refs
                .iter()
                .map(|b| {
                    let mut s = qualified(b.namespace.as_deref(), &b.name);
                    if let Some(subset) = &b.subset {
                        let _ = write!(s, "/{subset}");
                    }
                    if rule.backend_refs.len() > 1 {
                        let _ = write!(s, "={}", b.weight);
                    }
                    s
                })
                .collect();
            b.join(",")
        })
        .collect();
    vec![
        parents.join(","),
        or_dash(s.hostnames.join(",")),
        s.rules.len().to_string(),
        backends.join("; "),
    ]
}

fn policy_cells(s: &AuthorizationPolicySpec) -> Vec<String> {
    let selector = s
        .selector
        .as_ref()
        .map_or_else(|| "<all workloads>".into(), |sel| labels(&sel.match_labels));
    vec![
        wire(&s.action),
        wire(&s.mode),
        selector,
        s.rules.len().to_string(),
    ]
}

fn mesh_cells(s: &MeshConfigSpec) -> Vec<String> {
    vec![
        s.trust_domain.clone().unwrap_or_else(|| "-".into()),
        wire(&s.mtls_mode),
        wire(&s.outbound_traffic_policy),
        s.certificate_ttl
            .map_or_else(|| "24h (default)".into(), |t| t.to_string()),
    ]
}

/// Proxies as `weftctl status` shows them.
pub fn status(proxies: &[ProxyStatus], now: u64) -> String {
    if proxies.iter().any(|p| p.replica.is_some()) {
        return status_across_replicas(proxies, now);
    }
    let rows: Vec<Vec<String>> = proxies.iter().map(|p| status_row(p, now)).collect();
    table(
        &[
            "PROXY",
            "IDENTITY",
            "ADDRESS",
            "READY",
            "CONNECTED",
            "SENT",
            "ACKED",
            "LAST-NACK",
            "CERT-EXPIRES",
            "SEEN",
        ],
        &rows,
    )
}

fn status_row(p: &ProxyStatus, now: u64) -> Vec<String> {
    vec![
        p.proxy.clone(),
        p.identity.to_string(),
        p.address.to_string(),
        yes_no(p.ready),
        yes_no(p.connected),
        p.sent_version.to_string(),
        p.acked_version
            .map_or_else(|| "-".into(), |v| v.to_string()),
        p.last_nack.as_ref().map_or_else(
            || "-".into(),
            |n| format!("{}: {}", n.version, one_line(&n.reason)),
        ),
        p.cert_not_after
            .map_or_else(|| "-".into(), |t| relative(t, now)),
        ago(p.last_seen_ms),
    ]
}

/// Proxies of several replicas: each row names its replica, and SENT-REV and ACKED-REV are store
/// revisions, which every replica shares (versions are each replica's own numbering).
fn status_across_replicas(proxies: &[ProxyStatus], now: u64) -> String {
    let rows: Vec<Vec<String>> = proxies
        .iter()
        .map(|p| {
            let revision = |r: Option<u64>| r.map_or_else(|| "-".into(), |r| r.to_string());
            let nack = p.last_nack.as_ref().map_or_else(
                || "-".into(),
                |n| match n.revision {
                    Some(r) => format!("rev {r}: {}", one_line(&n.reason)),
                    None => format!("version {}: {}", n.version, one_line(&n.reason)),
                },
            );
            vec![
                p.proxy.clone(),
                p.replica.clone().unwrap_or_else(|| "-".into()),
                p.identity.to_string(),
                p.address.to_string(),
                yes_no(p.ready),
                yes_no(p.connected),
                revision(p.sent_revision),
                revision(p.acked_revision),
                nack,
                p.cert_not_after
                    .map_or_else(|| "-".into(), |t| relative(t, now)),
                ago(p.last_seen_ms),
            ]
        })
        .collect();
    table(
        &[
            "PROXY",
            "REPLICA",
            "IDENTITY",
            "ADDRESS",
            "READY",
            "CONNECTED",
            "SENT-REV",
            "ACKED-REV",
            "LAST-NACK",
            "CERT-EXPIRES",
            "SEEN",
        ],
        &rows,
    )
}

/// `config revision 7: 3/4 proxies connected`, then with replicas how many of each replica's
/// proxies are connected: ` (replica r-1: 2/2, replica r-2: 1/2)`.
pub fn status_summary(revision: u64, proxies: &[ProxyStatus]) -> String {
    let connected = proxies.iter().filter(|p| p.connected).count();
    let mut out = format!(
        "config revision {revision}: {connected}/{} proxies connected",
        proxies.len()
    );
    let mut by_replica: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for p in proxies {
        if let Some(replica) = &p.replica {
            let (up, all) = by_replica.entry(replica).or_default();
            *up += usize::from(p.connected);
            *all += 1;
        }
    }
    if !by_replica.is_empty() {
        let parts: Vec<String> = by_replica
            .iter()
            .map(|(replica, (up, all))| format!("replica {replica}: {up}/{all}"))
            .collect();
        let _ = write!(out, " ({})", parts.join(", "));
    }
    out.push('\n');
    out
}

/// Join tokens, never their secrets.
pub fn tokens(tokens: &[TokenInfo], now: u64) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            let state = if t.revoked {
                "revoked"
            } else if t.expires_at <= now {
                "expired"
            } else if t.max_uses.is_some_and(|m| t.uses >= m) {
                "used"
            } else {
                "valid"
            };
            vec![
                t.id.clone(),
                t.identity.to_string(),
                state.to_string(),
                relative(t.expires_at, now),
                match t.max_uses {
                    Some(m) => format!("{}/{m}", t.uses),
                    None => t.uses.to_string(),
                },
                relative(t.created_at, now),
                claim(t),
            ]
        })
        .collect();
    table(
        &[
            "ID", "IDENTITY", "STATE", "EXPIRES", "USES", "CREATED", "WORKLOAD",
        ],
        &rows,
    )
}

/// The workload a token's certificates may register: `name {k=v,...}`, or `*` for any.
fn claim(t: &TokenInfo) -> String {
    let Some(name) = &t.workload else {
        return "*".into();
    };
    let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name} {{{}}}", labels.join(","))
}

// === times ===

/// A span in its largest whole unit: `45s`, `3m`, `2h`, `5d`.
pub fn span(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// How long ago something happened, given in milliseconds: `just now`, `3m ago`.
pub fn ago(ms: u64) -> String {
    if ms < 1000 {
        "just now".into()
    } else {
        format!("{} ago", span(ms / 1000))
    }
}

/// A moment (Unix seconds) relative to `now`: `in 23h` or `5m ago`.
pub fn relative(unix: u64, now: u64) -> String {
    if unix > now {
        format!("in {}", span(unix - now))
    } else if unix == now {
        "now".into()
    } else {
        format!("{} ago", span(now - unix))
    }
}

/// A moment as `2026-11-23 14:05:00 UTC`.
pub fn utc(unix: u64) -> String {
    let Ok(t) = i64::try_from(unix)
        .map_err(|_| ())
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).map_err(|_| ()))
    else {
        return format!("{unix} (Unix time)");
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

// === small pieces ===

/// An enum as it is written in documents (`STRICT`, `ALLOW_ANY`, `http`).
fn wire<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

fn labels(l: &Labels) -> String {
    or_dash(
        l.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn qualified(namespace: Option<&str>, name: &str) -> String {
    namespace.map_or_else(|| name.to_string(), |ns| format!("{ns}/{name}"))
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// Table cells and summary lines stay on one line whatever a reason contains.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::operator::{Nack, ProxyRollout};
    use weft_api::resources::{parse_documents, ResourceKey};

    fn key(kind: Kind, name: &str) -> ResourceKey {
        ResourceKey {
            kind,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn proxy(name: &str, state: RolloutState) -> ProxyRollout {
        ProxyRollout {
            proxy: format!("default/{name}"),
            version: 7,
            state,
            replica: None,
        }
    }

    fn rollout_of(complete: bool, proxies: Vec<ProxyRollout>) -> Rollout {
        Rollout {
            revision: 3,
            proxies,
            complete,
            waited_ms: 120,
        }
    }

    #[test]
    fn change_lines() {
        let c = Change {
            key: key(Kind::Service, "reviews"),
            action: ChangeAction::Configured,
            diff: " spec:\n-  a: 1\n+  a: 2\n".into(),
        };
        assert_eq!(change(&c, false), "service default/reviews configured\n");
        assert_eq!(
            change(&c, true),
            "service default/reviews configured (dry run)\n     spec:\n    -  a: 1\n    +  a: 2\n"
        );
        let c = Change {
            key: key(Kind::HttpRoute, "r"),
            action: ChangeAction::Deleted,
            diff: String::new(),
        };
        assert_eq!(change(&c, false), "httproute default/r deleted\n");
    }

    #[test]
    fn rollout_summaries() {
        let all = rollout_of(
            true,
            vec![
                proxy("a", RolloutState::Acked),
                proxy("b", RolloutState::Acked),
                proxy("c", RolloutState::Acked),
            ],
        );
        assert_eq!(rollout(&all), "acked by 3/3 proxies in 120 ms\n");
        assert_eq!(
            rollout(&rollout_of(true, vec![])),
            "no proxy's configuration changed\n"
        );
        let some = rollout_of(
            false,
            vec![
                proxy("a", RolloutState::Acked),
                proxy(
                    "b",
                    RolloutState::Nacked {
                        reason: "regex too\nlarge".into(),
                    },
                ),
                proxy("c", RolloutState::Pending),
                proxy("d", RolloutState::Disconnected),
            ],
        );
        assert_eq!(
            rollout(&some),
            "NOT confirmed: acked by 1/4 proxies after 120 ms\n  \
             default/b: NACK: regex too large\n  \
             default/c: pending (no answer yet)\n  \
             default/d: disconnected\n"
        );
    }

    #[test]
    fn rollouts_across_replicas_name_each_proxys_replica() {
        let on = |name: &str, replica: &str, state| ProxyRollout {
            replica: Some(replica.into()),
            ..proxy(name, state)
        };
        let all = rollout_of(
            true,
            vec![
                on("a", "r-1", RolloutState::Acked),
                on("b", "r-2", RolloutState::Acked),
                on("c", "r-2", RolloutState::Acked),
            ],
        );
        assert_eq!(
            rollout(&all),
            "acked by 3/3 proxies in 120 ms (replica r-1: 1, replica r-2: 2)\n"
        );
        let some = rollout_of(
            false,
            vec![
                on("a", "r-1", RolloutState::Acked),
                on(
                    "b",
                    "r-2",
                    RolloutState::Nacked {
                        reason: "bad".into(),
                    },
                ),
            ],
        );
        assert_eq!(
            rollout(&some),
            "NOT confirmed: acked by 1/2 proxies after 120 ms\n  default/b (replica r-2): NACK: bad\n"
        );
    }

    #[test]
    fn apply_puts_it_together() {
        let resp = ApplyResponse {
            dry_run: false,
            revision: 4,
            changes: vec![
                Change {
                    key: key(Kind::Service, "a"),
                    action: ChangeAction::Created,
                    diff: "+x".into(),
                },
                Change {
                    key: key(Kind::Service, "b"),
                    action: ChangeAction::Unchanged,
                    diff: String::new(),
                },
            ],
            rollout: Some(rollout_of(true, vec![proxy("a", RolloutState::Acked)])),
        };
        assert_eq!(
            apply(&resp),
            "service default/a created\nservice default/b unchanged\nacked by 1/1 proxies in 120 ms\n"
        );
        let dry = ApplyResponse {
            dry_run: true,
            rollout: None,
            ..resp
        };
        assert_eq!(
            apply(&dry),
            "service default/a created (dry run)\n    +x\nservice default/b unchanged (dry run)\n\
             dry run: nothing was changed\n"
        );
    }

    #[test]
    fn tables_align_by_characters() {
        let t = table(&["A", "BB"], &[vec!["xxx", "y"], vec!["é", ""]]);
        assert_eq!(t, "A    BB\nxxx  y\né\n");
        assert_eq!(table::<String>(&["ONLY"], &[]), "ONLY\n");
    }

    const DOCS: &str = "apiVersion: weft.dev/v1
kind: Service
metadata: {name: reviews}
spec:
  ports:
    - {port: 9080, protocol: http}
    - {port: 80, targetPort: 8080, protocol: tcp}
  selector: {app: reviews}
---
apiVersion: weft.dev/v1
kind: Workload
metadata: {name: legacy-db, namespace: shop, labels: {app: db}}
spec: {address: 10.0.0.9}
---
apiVersion: weft.dev/v1
kind: HTTPRoute
metadata: {name: reviews}
spec:
  parentRefs: [{name: reviews, port: 9080}]
  rules:
    - matches: [{path: {value: /api}}]
      backendRefs:
        - {name: reviews, subset: v1, weight: 90}
        - {name: reviews, subset: v2, weight: 10}
    - backendRefs: [{name: fallback, namespace: other}]
---
apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: deny-all}
spec: {action: DENY, mode: audit}
---
apiVersion: weft.dev/v1
kind: MeshConfig
metadata: {name: default, namespace: weft-system}
spec: {mtlsMode: PERMISSIVE, certificateTtl: 12h}
";

    fn parsed() -> Vec<Resource> {
        parse_documents("t.yaml", DOCS)
            .unwrap()
            .into_iter()
            .map(|p| p.resource)
            .collect()
    }

    #[test]
    fn resource_tables_show_each_kinds_essentials() {
        let r = parsed();
        assert_eq!(
            resources(Kind::Service, &r[0..1]),
            "NAMESPACE  NAME     PORTS                  SELECTOR\n\
             default    reviews  9080/http,80:8080/tcp  app=reviews\n"
        );
        assert_eq!(
            resources(Kind::Workload, &r[1..2]),
            "NAMESPACE  NAME       ADDRESS   LABELS  SERVICE-ACCOUNT  TUNNEL-PORT\n\
             shop       legacy-db  10.0.0.9  app=db  -                - (plaintext)\n"
        );
        assert_eq!(
            resources(Kind::HttpRoute, &r[2..3]),
            "NAMESPACE  NAME     PARENTS       HOSTNAMES  RULES  BACKENDS\n\
             default    reviews  reviews:9080  -          2      reviews/v1=90,reviews/v2=10; other/fallback\n"
        );
        assert_eq!(
            resources(Kind::AuthorizationPolicy, &r[3..4]),
            "NAMESPACE  NAME      ACTION  MODE   SELECTOR         RULES\n\
             default    deny-all  DENY    audit  <all workloads>  0\n"
        );
        assert_eq!(
            resources(Kind::MeshConfig, &r[4..5]),
            "NAMESPACE    NAME     TRUST-DOMAIN  MTLS        OUTBOUND   CERT-TTL\n\
             weft-system  default  -             PERMISSIVE  ALLOW_ANY  12h\n"
        );
    }

    fn proxy_status(connected: bool) -> ProxyStatus {
        ProxyStatus {
            proxy: "default/reviews-1".into(),
            identity: "spiffe://weft.local/ns/default/sa/reviews".parse().unwrap(),
            address: "10.0.0.7".parse().unwrap(),
            connected,
            ready: true,
            sent_version: 12,
            acked_version: Some(11),
            last_nack: Some(Nack {
                version: 12,
                reason: "bad regex".into(),
                revision: None,
            }),
            cert_not_after: Some(1_000 + 23 * 3600),
            last_seen_ms: 185_000,
            replica: None,
            sent_revision: None,
            acked_revision: None,
        }
    }

    #[test]
    fn status_table() {
        let mut fresh = proxy_status(true);
        fresh.proxy = "default/ratings-1".into();
        fresh.acked_version = None;
        fresh.last_nack = None;
        fresh.cert_not_after = None;
        fresh.last_seen_ms = 20;
        let t = status(&[proxy_status(false), fresh], 1_000);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "PROXY              IDENTITY                                   ADDRESS   READY  CONNECTED  SENT  ACKED  LAST-NACK      CERT-EXPIRES  SEEN"
        );
        assert_eq!(
            lines[1],
            "default/reviews-1  spiffe://weft.local/ns/default/sa/reviews  10.0.0.7  yes    no         12    11     12: bad regex  in 23h        3m ago"
        );
        assert_eq!(
            lines[2],
            "default/ratings-1  spiffe://weft.local/ns/default/sa/reviews  10.0.0.7  yes    yes        12    -      -              -             just now"
        );
    }

    #[test]
    fn status_across_replicas_names_each_rows_replica_and_shows_revisions() {
        let on = |name: &str, replica: &str, connected: bool| ProxyStatus {
            proxy: format!("default/{name}"),
            replica: Some(replica.into()),
            sent_revision: Some(41),
            acked_revision: Some(40),
            ..proxy_status(connected)
        };
        let mut nacked = on("b-1", "r-b", true);
        nacked.last_nack = Some(Nack {
            version: 1_796_000_000_123,
            reason: "route refers\nto nothing".into(),
            revision: Some(41),
        });
        nacked.last_seen_ms = 0;
        let mut fresh = on("a-1", "r-a", true);
        (fresh.sent_revision, fresh.acked_revision) = (None, None);
        fresh.last_nack = None;
        let rows = [fresh, nacked, on("b-2", "r-b", false)];
        let t = status(&rows, 1_000);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "PROXY        REPLICA  IDENTITY                                   ADDRESS   READY  CONNECTED  SENT-REV  ACKED-REV  LAST-NACK                        CERT-EXPIRES  SEEN",
                "default/a-1  r-a      spiffe://weft.local/ns/default/sa/reviews  10.0.0.7  yes    yes        -         -          -                                in 23h        3m ago",
                "default/b-1  r-b      spiffe://weft.local/ns/default/sa/reviews  10.0.0.7  yes    yes        41        40         rev 41: route refers to nothing  in 23h        just now",
                // A NACK without its revision (not seen from this release) says its version.
                "default/b-2  r-b      spiffe://weft.local/ns/default/sa/reviews  10.0.0.7  yes    no         41        40         version 12: bad regex            in 23h        3m ago",
            ]
        );
        assert_eq!(
            status_summary(44, &rows),
            "config revision 44: 2/3 proxies connected (replica r-a: 1/1, replica r-b: 1/2)\n"
        );
        assert_eq!(
            status_summary(7, &[proxy_status(true)]),
            "config revision 7: 1/1 proxies connected\n"
        );
    }

    #[test]
    fn token_table() {
        let t = |id: &str, expires_at, revoked| TokenInfo {
            id: id.into(),
            namespace: "shop".into(),
            service_account: "cart".into(),
            identity: "spiffe://weft.local/ns/shop/sa/cart".parse().unwrap(),
            created_at: 400,
            expires_at,
            revoked,
            uses: 2,
            max_uses: None,
            workload: None,
            labels: Default::default(),
        };
        let mut bound = t("c3", 4_600, true);
        bound.workload = Some("cart-1".into());
        bound.labels = [("app".to_string(), "cart".to_string())].into();
        let out = tokens(&[t("a1", 4_600, false), t("b2", 900, false), bound], 1_000);
        assert_eq!(
            out,
            "ID  IDENTITY                             STATE    EXPIRES  USES  CREATED  WORKLOAD\n\
             a1  spiffe://weft.local/ns/shop/sa/cart  valid    in 1h    2     10m ago  *\n\
             b2  spiffe://weft.local/ns/shop/sa/cart  expired  1m ago   2     10m ago  *\n\
             c3  spiffe://weft.local/ns/shop/sa/cart  revoked  in 1h    2     10m ago  cart-1 {app=cart}\n"
        );
    }

    #[test]
    fn times_read_well() {
        assert_eq!(span(59), "59s");
        assert_eq!(span(60), "1m");
        assert_eq!(span(3_599), "59m");
        assert_eq!(span(3_600), "1h");
        assert_eq!(span(86_400 * 3 + 5), "3d");
        assert_eq!(ago(999), "just now");
        assert_eq!(ago(3_000), "3s ago");
        assert_eq!(ago(180_000), "3m ago");
        assert_eq!(relative(100, 40), "in 1m");
        assert_eq!(relative(40, 100), "1m ago");
        assert_eq!(relative(40, 40), "now");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_795_000_000), "2026-11-18 11:06:40 UTC");
        assert_eq!(utc(u64::MAX), format!("{} (Unix time)", u64::MAX));
    }
}
