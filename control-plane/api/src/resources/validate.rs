//! Checks on resources beyond their shape: names, ports, weights, regexes, identities; and references
//! between documents. Each problem is `(field path, reason)`; the caller locates the field in its file.

use super::types::*;
use std::collections::BTreeSet;

type Problems = Vec<(String, String)>;

/// Largest compiled regex a route or policy may use.
pub const REGEX_SIZE_LIMIT: usize = 64 << 10;
const MAX_WEIGHT: u32 = 1_000_000;

/// Checks one document on its own.
pub fn document(r: &Resource) -> Problems {
    let mut p = Problems::new();
    metadata(r.metadata(), &mut p);
    match r {
        Resource::Service(d) => service(&d.spec, &mut p),
        Resource::Workload(d) => workload(&d.spec, &mut p),
        Resource::HttpRoute(d) => route(&d.spec, &mut p),
        Resource::AuthorizationPolicy(d) => policy(&d.spec, &mut p),
        Resource::MeshConfig(d) => mesh(&d.metadata, &d.spec, &mut p),
    }
    p
}

fn push(p: &mut Problems, field: impl Into<String>, reason: impl Into<String>) {
    p.push((field.into(), reason.into()));
}

/// Kubernetes' DNS label: 1-63 of [a-z0-9-], starting and ending alphanumeric.
pub fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
        ))
    }
}

fn metadata(m: &Metadata, p: &mut Problems) {
    if let Err(e) = dns_label(&m.name) {
        push(p, "metadata.name", e);
    }
    if let Err(e) = dns_label(&m.namespace) {
        push(p, "metadata.namespace", e);
    }
    for (k, v) in &m.labels {
        let key_ok = !k.is_empty()
            && k.len() <= 253
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
        if !key_ok {
            push(
                p,
                format!("metadata.labels.{k}"),
                "label keys are letters, digits, '-', '_', '.' or '/'",
            );
        }
        let value_ok = v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !value_ok {
            push(
                p,
                format!("metadata.labels.{k}"),
                format!("label value {v:?} must be at most 63 letters, digits, '-', '_' or '.'"),
            );
        }
    }
}

fn service(s: &ServiceSpec, p: &mut Problems) {
    if s.ports.is_empty() {
        push(p, "spec.ports", "a Service needs at least one port");
    }
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, port) in s.ports.iter().enumerate() {
        if port.port == 0 {
            push(p, format!("spec.ports[{i}].port"), "port 0 is not a port");
        } else if !numbers.insert(port.port) {
            push(
                p,
                format!("spec.ports[{i}].port"),
                format!("port {} is listed twice", port.port),
            );
        }
        if port.target_port == Some(0) {
            push(
                p,
                format!("spec.ports[{i}].targetPort"),
                "port 0 is not a port",
            );
        }
        if let Some(n) = &port.name {
            if !names.insert(n.clone()) {
                push(
                    p,
                    format!("spec.ports[{i}].name"),
                    format!("port name {n:?} is used twice"),
                );
            }
        }
    }
}

fn workload(w: &WorkloadSpec, p: &mut Problems) {
    if w.address.is_unspecified() {
        push(
            p,
            "spec.address",
            "an unspecified address (0.0.0.0 or ::) cannot be an endpoint",
        );
    }
    if let Some(sa) = &w.service_account {
        if let Err(e) = dns_label(sa) {
            push(p, "spec.serviceAccount", e);
        }
    }
    match (w.tunnel_port, &w.service_account) {
        (Some(0), _) => push(p, "spec.tunnelPort", "port 0 is not a port"),
        (Some(_), None) => push(
            p,
            "spec.tunnelPort",
            "a tunnel port needs a serviceAccount (the identity its proxy presents)",
        ),
        _ => {}
    }
}

fn route(r: &HttpRouteSpec, p: &mut Problems) {
    if r.parent_refs.is_empty() {
        push(
            p,
            "spec.parentRefs",
            "an HTTPRoute needs at least one parentRef (the service it governs)",
        );
    }
    if r.rules.is_empty() {
        push(p, "spec.rules", "an HTTPRoute needs at least one rule");
    }
    for (i, rule) in r.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, m) in rule.matches.iter().enumerate() {
            route_match(m, &format!("{at}.matches[{j}]"), p);
        }
        backends(&rule.backend_refs, &at, p);
        if let Some(t) = &rule.timeouts {
            for (name, d) in [
                ("request", t.request),
                ("backendRequest", t.backend_request),
            ] {
                if d.is_some_and(|d| d.get().is_zero()) {
                    push(
                        p,
                        format!("{at}.timeouts.{name}"),
                        "a timeout of zero would fail every request",
                    );
                }
            }
        }
        if let Some(retry) = &rule.retry {
            if retry.attempts.is_some_and(|a| a > 10) {
                push(p, format!("{at}.retry.attempts"), "at most 10 attempts");
            }
            for (k, c) in retry.codes.iter().enumerate() {
                if !(100..=599).contains(c) {
                    push(
                        p,
                        format!("{at}.retry.codes[{k}]"),
                        format!("{c} is not an HTTP status"),
                    );
                }
            }
        }
        for (k, f) in rule.filters.iter().enumerate() {
            let m = match f.kind {
                RouteFilterType::RequestHeaderModifier => &f.request_header_modifier,
                RouteFilterType::ResponseHeaderModifier => &f.response_header_modifier,
            };
            if m.is_none() {
                push(
                    p,
                    format!("{at}.filters[{k}]"),
                    format!("a {:?} filter needs its modifier block", f.kind),
                );
            }
        }
    }
}

fn route_match(m: &RouteMatch, at: &str, p: &mut Problems) {
    if let Some(path) = &m.path {
        match path.kind {
            PathMatchType::RegularExpression => regex(&path.value, &format!("{at}.path.value"), p),
            _ if !path.value.starts_with('/') => push(
                p,
                format!("{at}.path.value"),
                format!("path {:?} must start with '/'", path.value),
            ),
            _ => {}
        }
    }
    for (k, h) in m.headers.iter().enumerate() {
        if http_header_name(&h.name).is_err() {
            push(
                p,
                format!("{at}.headers[{k}].name"),
                format!("{:?} is not a valid header name", h.name),
            );
        }
        if h.kind == ValueMatchType::RegularExpression {
            regex(&h.value, &format!("{at}.headers[{k}].value"), p);
        }
    }
    for (k, q) in m.query_params.iter().enumerate() {
        if q.kind == ValueMatchType::RegularExpression {
            regex(&q.value, &format!("{at}.queryParams[{k}].value"), p);
        }
    }
    if let Some(method) = &m.method {
        if !is_token(method) {
            push(
                p,
                format!("{at}.method"),
                format!("{method:?} is not an HTTP method"),
            );
        }
    }
}

fn backends(refs: &[BackendRef], at: &str, p: &mut Problems) {
    if refs.is_empty() {
        push(
            p,
            format!("{at}.backendRefs"),
            "a rule needs at least one backendRef",
        );
        return;
    }
    let mut seen = BTreeSet::new();
    let mut total: u64 = 0;
    for (k, b) in refs.iter().enumerate() {
        if b.weight > MAX_WEIGHT {
            push(
                p,
                format!("{at}.backendRefs[{k}].weight"),
                format!("weight {} is over the maximum {MAX_WEIGHT}", b.weight),
            );
        }
        total += u64::from(b.weight);
        if !seen.insert((&b.name, &b.namespace, &b.subset, b.port)) {
            push(
                p,
                format!("{at}.backendRefs[{k}]"),
                "the same backend is listed twice in one rule; merge their weights",
            );
        }
    }
    if total == 0 {
        push(
            p,
            format!("{at}.backendRefs"),
            "the weights add up to 0, so no backend could receive traffic",
        );
    }
}

fn regex(pattern: &str, field: &str, p: &mut Problems) {
    if let Err(e) = regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
    {
        push(p, field, format!("invalid regular expression: {e}"));
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn http_header_name(s: &str) -> Result<(), ()> {
    if is_token(s) {
        Ok(())
    } else {
        Err(())
    }
}

fn policy(s: &AuthorizationPolicySpec, p: &mut Problems) {
    for (i, rule) in s.rules.iter().enumerate() {
        for (j, from) in rule.from.iter().enumerate() {
            let at = format!("spec.rules[{i}].from[{j}]");
            for (k, pr) in from.principals.iter().enumerate() {
                if pr != "*" {
                    if let Err(e) = weft_certs::SpiffeId::parse(pr) {
                        push(
                            p,
                            format!("{at}.principals[{k}]"),
                            format!("not `*` or a SPIFFE ID: {e}"),
                        );
                    }
                }
            }
            for (k, ns) in from.namespaces.iter().enumerate() {
                if ns != "*" {
                    if let Err(e) = dns_label(ns) {
                        push(p, format!("{at}.namespaces[{k}]"), e);
                    }
                }
            }
            for (k, sa) in from.service_accounts.iter().enumerate() {
                let ok = sa.split_once('/').is_some_and(|(ns, name)| {
                    dns_label(ns).is_ok() && (name == "*" || dns_label(name).is_ok())
                });
                if !ok {
                    push(
                        p,
                        format!("{at}.serviceAccounts[{k}]"),
                        format!("{sa:?} must be namespace/serviceAccount"),
                    );
                }
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let at = format!("spec.rules[{i}].to[{j}]");
            for (k, port) in to.ports.iter().enumerate() {
                if *port == 0 {
                    push(p, format!("{at}.ports[{k}]"), "port 0 is not a port");
                }
            }
            for (k, m) in to.methods.iter().enumerate() {
                if m != "*" && !is_token(m) {
                    push(
                        p,
                        format!("{at}.methods[{k}]"),
                        format!("{m:?} is not an HTTP method"),
                    );
                }
            }
            for (k, path) in to.paths.iter().enumerate() {
                if !(path.starts_with('/') || path.starts_with('*')) {
                    push(
                        p,
                        format!("{at}.paths[{k}]"),
                        format!("path {path:?} must start with '/' (or be a '*' glob)"),
                    );
                }
            }
            for (k, h) in to.headers.iter().enumerate() {
                if http_header_name(&h.name).is_err() {
                    push(
                        p,
                        format!("{at}.headers[{k}].name"),
                        format!("{:?} is not a valid header name", h.name),
                    );
                }
                if h.kind == ValueMatchType::RegularExpression {
                    regex(&h.value, &format!("{at}.headers[{k}].value"), p);
                }
            }
        }
    }
}

fn mesh(m: &Metadata, s: &MeshConfigSpec, p: &mut Problems) {
    if m.name != "default" {
        push(
            p,
            "metadata.name",
            "the mesh has one MeshConfig, named `default`",
        );
    }
    if let Some(td) = &s.trust_domain {
        if let Err(e) = weft_certs::TrustDomain::new(td) {
            push(p, "spec.trustDomain", e.to_string());
        }
    }
    if let Some(ttl) = s.certificate_ttl {
        let secs = ttl.get().as_secs();
        if !(2..=365 * 24 * 3600).contains(&secs) {
            push(p, "spec.certificateTtl", "between 2s and 365d");
        }
    }
    if s.proxy_grace_period
        .is_some_and(|g| g.get().as_secs() > 3600)
    {
        push(p, "spec.proxyGracePeriod", "at most 1h");
    }
    if let Some(ns) = &s.root_namespace {
        if let Err(e) = dns_label(ns) {
            push(p, "spec.rootNamespace", e);
        }
    }
}

/// References from `r` that do not resolve among `all`: routes to services that do not exist, or to
/// ports the service does not have.
pub fn dangling_references(r: &Resource, all: &[&Resource]) -> Problems {
    let Resource::HttpRoute(route) = r else {
        return Problems::new();
    };
    let own_ns = &route.metadata.namespace;
    let service = |name: &str, ns: &Option<String>| {
        let ns = ns.as_deref().unwrap_or(own_ns);
        all.iter().find_map(|x| match x {
            Resource::Service(s) if s.metadata.name == name && s.metadata.namespace == ns => {
                Some(s)
            }
            _ => None,
        })
    };
    let mut p = Problems::new();
    for (i, parent) in route.spec.parent_refs.iter().enumerate() {
        let ns = parent.namespace.as_deref().unwrap_or(own_ns);
        match service(&parent.name, &parent.namespace) {
            None => push(
                &mut p,
                format!("spec.parentRefs[{i}].name"),
                format!(
                    "dangling reference: Service {ns}/{} does not exist",
                    parent.name
                ),
            ),
            Some(s) => {
                if let Some(port) = parent.port {
                    if !s.spec.ports.iter().any(|x| x.port == port) {
                        push(
                            &mut p,
                            format!("spec.parentRefs[{i}].port"),
                            format!("Service {ns}/{} has no port {port}", parent.name),
                        );
                    }
                }
            }
        }
    }
    for (i, rule) in route.spec.rules.iter().enumerate() {
        for (k, b) in rule.backend_refs.iter().enumerate() {
            let ns = b.namespace.as_deref().unwrap_or(own_ns);
            match service(&b.name, &b.namespace) {
                None => push(
                    &mut p,
                    format!("spec.rules[{i}].backendRefs[{k}].name"),
                    format!("dangling reference: Service {ns}/{} does not exist", b.name),
                ),
                Some(s) => {
                    if let Some(port) = b.port {
                        if !s.spec.ports.iter().any(|x| x.port == port) {
                            push(
                                &mut p,
                                format!("spec.rules[{i}].backendRefs[{k}].port"),
                                format!("Service {ns}/{} has no port {port}", b.name),
                            );
                        }
                    }
                }
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::super::parse_documents;

    fn problems(yaml: &str) -> Vec<String> {
        parse_documents("v.yaml", yaml)
            .unwrap()
            .iter()
            .flat_map(|d| d.validate())
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn weights_that_make_no_sense_are_refused_at_their_line() {
        let p = problems("apiVersion: weft.dev/v1\nkind: HTTPRoute\nmetadata:\n  name: r\nspec:\n  parentRefs:\n    - name: s\n  rules:\n    - backendRefs:\n        - name: s\n          weight: 0\n        - name: s\n          subset: v2\n          weight: 0\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("v.yaml:9") && p[0].contains("add up to 0"),
            "{p:?}"
        );
        let p = problems("apiVersion: weft.dev/v1\nkind: HTTPRoute\nmetadata:\n  name: r\nspec:\n  parentRefs:\n    - name: s\n  rules:\n    - backendRefs:\n        - name: s\n        - name: s\n");
        assert!(
            p[0].contains("listed twice") && p[0].contains("v.yaml:11"),
            "{p:?}"
        );
    }

    #[test]
    fn names_ports_regexes_and_identities_are_checked() {
        let p = problems("apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: Bad_Name\nspec:\n  ports:\n    - port: 80\n    - port: 80\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("v.yaml:4") && p[0].contains("metadata.name"),
            "{p:?}"
        );
        assert!(p[1].contains("v.yaml:8") && p[1].contains("twice"), "{p:?}");
        let p = problems("apiVersion: weft.dev/v1\nkind: HTTPRoute\nmetadata:\n  name: r\nspec:\n  parentRefs:\n    - name: s\n  rules:\n    - matches:\n        - path:\n            type: RegularExpression\n            value: \"(unclosed\"\n      backendRefs:\n        - name: s\n");
        assert!(
            p[0].contains("v.yaml:12") && p[0].contains("regular expression"),
            "{p:?}"
        );
        let p = problems("apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\nspec:\n  action: DENY\n  rules:\n    - from:\n        - principals: [\"spiffe://x/ns/a/sa/b\", \"not-an-id\"]\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("principals[1]"), "{p:?}");
        let p = problems("apiVersion: weft.dev/v1\nkind: MeshConfig\nmetadata:\n  name: other\nspec:\n  certificateTtl: 1s\n");
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn dangling_references_are_found() {
        let docs = parse_documents("v.yaml", "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports: [{port: 80}]\n---\napiVersion: weft.dev/v1\nkind: HTTPRoute\nmetadata:\n  name: r\nspec:\n  parentRefs:\n    - name: s\n  rules:\n    - backendRefs:\n        - name: gone\n        - name: s\n          port: 81\n").unwrap();
        let all: Vec<_> = docs.iter().map(|d| &d.resource).collect();
        let p = super::dangling_references(&docs[1].resource, &all);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].1.contains("default/gone does not exist"));
        assert!(p[1].1.contains("no port 81"));
        assert_eq!(docs[1].error(&p[0].0, "").line, Some(17));
    }
}
