//! HTTPRoute rules.

use super::{names, Problems};
use crate::duration::Duration;
use crate::resources::types::{
    grpc_code, BackendRef, Fallback, HeaderModifier, HttpRouteSpec, ParentRef, PathMatch,
    PathMatchType, RateLimit, RetryPolicy, RouteFilter, RouteFilterType, RouteMatch, RouteRule,
    RouteTimeouts, SessionPersistence, SessionPersistenceType, ValueMatch, ValueMatchType,
};
use std::collections::HashMap;

/// Largest weight of one backend: weights are relative, and a bound keeps sums far from overflow.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Most attempts a retry policy may ask for: more turns an outage into a retry storm.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

pub(super) fn route(p: &mut Problems, spec: &HttpRouteSpec) {
    if spec.parent_refs.is_empty() {
        p.add(
            "spec.parentRefs",
            "a route needs at least one parentRef: the Service it governs",
        );
    }
    for (i, parent) in spec.parent_refs.iter().enumerate() {
        parent_ref(p, &format!("spec.parentRefs[{i}]"), parent);
    }
    for (i, host) in spec.hostnames.iter().enumerate() {
        p.check(format!("spec.hostnames[{i}]"), names::hostname(host));
    }
    if spec.rules.is_empty() {
        p.add("spec.rules", "a route needs at least one rule");
    }
    let mut rule_names = HashMap::new();
    for (i, r) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if let Some(name) = &r.name {
            p.check(format!("{at}.name"), names::dns_label(name));
            if let Some(first) = rule_names.insert(name.as_str(), i) {
                p.add(
                    format!("{at}.name"),
                    format!("rule name `{name}` is already used by spec.rules[{first}]"),
                );
            }
        }
        rule(p, &at, r);
    }
}

fn parent_ref(p: &mut Problems, at: &str, r: &ParentRef) {
    p.check(format!("{at}.name"), names::dns_label(&r.name));
    if let Some(ns) = &r.namespace {
        p.check(format!("{at}.namespace"), names::dns_label(ns));
    }
    if let Some(port) = r.port {
        p.port(format!("{at}.port"), port);
    }
}

fn rule(p: &mut Problems, at: &str, r: &RouteRule) {
    for (i, m) in r.matches.iter().enumerate() {
        route_match(p, &format!("{at}.matches[{i}]"), m);
    }
    for (i, f) in r.filters.iter().enumerate() {
        filter(p, &format!("{at}.filters[{i}]"), f);
    }
    backends(p, at, &r.backend_refs);
    if let Some(t) = &r.timeouts {
        timeouts(p, &format!("{at}.timeouts"), t);
    }
    if let Some(retry) = &r.retry {
        retry_policy(p, &format!("{at}.retry"), retry);
    }
    if let Some(s) = &r.session_persistence {
        session_persistence(p, &format!("{at}.sessionPersistence"), s);
    }
    if let Some(l) = &r.rate_limit {
        rate_limit(p, &format!("{at}.rateLimit"), l);
    }
    if let Some(f) = &r.fallback {
        fallback(p, &format!("{at}.fallback"), f);
    }
}

fn session_persistence(p: &mut Problems, at: &str, s: &SessionPersistence) {
    let check = match s.kind {
        SessionPersistenceType::Header => names::header_name(&s.session_name),
        SessionPersistenceType::Cookie => cookie_name(&s.session_name),
    };
    p.check(format!("{at}.sessionName"), check);
}

fn cookie_name(s: &str) -> names::Check {
    let separator = |c: char| "()<>@,;:\\\"/[]?={} \t".contains(c);
    if s.is_empty() || s.chars().any(|c| !c.is_ascii_graphic() || separator(c)) {
        return Err(format!("`{s}` is not a cookie name"));
    }
    Ok(())
}

/// Largest bucket: a bound keeps token arithmetic exact.
pub const MAX_RATE: u32 = 1_000_000;

fn rate_limit(p: &mut Problems, at: &str, l: &RateLimit) {
    if l.requests == 0 || l.requests > MAX_RATE {
        p.add(
            format!("{at}.requests"),
            format!("must be 1 to {MAX_RATE} (to refuse everything, use an AuthorizationPolicy)"),
        );
    }
    if l.per.get() < std::time::Duration::from_millis(1) || l.per.get().as_secs() > 86_400 {
        p.add(format!("{at}.per"), "must be between 1ms and 1d");
    }
    if let Some(b) = l.burst {
        if b == 0 || b > MAX_RATE {
            p.add(format!("{at}.burst"), format!("must be 1 to {MAX_RATE}"));
        }
    }
}

fn fallback(p: &mut Problems, at: &str, f: &Fallback) {
    match (&f.response, &f.backend_ref) {
        (Some(r), None) => {
            if !(200..=599).contains(&r.status) {
                p.add(
                    format!("{at}.response.status"),
                    format!("{} is not a final HTTP status (200-599)", r.status),
                );
            }
            if r.body.len() > 64 * 1024 {
                p.add(format!("{at}.response.body"), "is over 64 KiB");
            }
            for (i, h) in r.headers.iter().enumerate() {
                let item = format!("{at}.response.headers[{i}]");
                p.check(format!("{item}.name"), names::header_name(&h.name));
                p.check(format!("{item}.value"), names::header_value(&h.value));
            }
        }
        (None, Some(b)) => {
            p.check(format!("{at}.backendRef.name"), names::dns_label(&b.name));
            if let Some(ns) = &b.namespace {
                p.check(format!("{at}.backendRef.namespace"), names::dns_label(ns));
            }
            if let Some(port) = b.port {
                p.port(format!("{at}.backendRef.port"), port);
            }
        }
        _ => p.add(at, "give exactly one of `response` and `backendRef`"),
    }
}

fn route_match(p: &mut Problems, at: &str, m: &RouteMatch) {
    if let Some(path) = &m.path {
        path_match(p, &format!("{at}.path.value"), path);
    }
    value_matches(p, &format!("{at}.headers"), &m.headers, names::header_name);
    value_matches(p, &format!("{at}.queryParams"), &m.query_params, query_name);
    if let Some(method) = &m.method {
        p.check(format!("{at}.method"), names::method(method));
    }
}

fn path_match(p: &mut Problems, at: &str, m: &PathMatch) {
    let check = match m.kind {
        PathMatchType::Exact | PathMatchType::PathPrefix => names::http_path(&m.value),
        PathMatchType::RegularExpression => names::regex(&m.value),
    };
    p.check(at, check);
}

fn query_name(s: &str) -> names::Check {
    if s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '=' || c == '&')
    {
        return Err(format!("`{s}` is not a query parameter name"));
    }
    Ok(())
}

/// Header and query parameter matches. All entries of a match must hold, so the same name twice is
/// either redundant or unsatisfiable: refused.
fn value_matches(
    p: &mut Problems,
    at: &str,
    list: &[ValueMatch],
    name_check: fn(&str) -> names::Check,
) {
    let mut seen = HashMap::new();
    for (i, m) in list.iter().enumerate() {
        let item = format!("{at}[{i}]");
        p.check(format!("{item}.name"), name_check(&m.name));
        if let Some(first) = seen.insert(m.name.to_ascii_lowercase(), i) {
            p.add(
                format!("{item}.name"),
                format!("`{}` is already matched by {at}[{first}]", m.name),
            );
        }
        let value = match m.kind {
            ValueMatchType::Exact => names::header_value(&m.value),
            ValueMatchType::RegularExpression => names::regex(&m.value),
        };
        p.check(format!("{item}.value"), value);
    }
}

fn filter(p: &mut Problems, at: &str, f: &RouteFilter) {
    let (wanted, present, other) = match f.kind {
        RouteFilterType::RequestHeaderModifier => (
            "requestHeaderModifier",
            &f.request_header_modifier,
            (
                "responseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
        ),
        RouteFilterType::ResponseHeaderModifier => (
            "responseHeaderModifier",
            &f.response_header_modifier,
            ("requestHeaderModifier", f.request_header_modifier.is_some()),
        ),
    };
    if other.1 {
        p.add(
            format!("{at}.{}", other.0),
            format!("does not belong to a filter of type {:?}", f.kind),
        );
    }
    match present {
        Some(m) => header_modifier(p, &format!("{at}.{wanted}"), m),
        None => p.add(
            at,
            format!("a filter of type {:?} needs `{wanted}`", f.kind),
        ),
    }
}

fn header_modifier(p: &mut Problems, at: &str, m: &HeaderModifier) {
    if m.set.is_empty() && m.add.is_empty() && m.remove.is_empty() {
        p.add(at, "changes nothing: give `set`, `add` or `remove`");
    }
    for (list, entries) in [("set", &m.set), ("add", &m.add)] {
        for (i, h) in entries.iter().enumerate() {
            p.check(
                format!("{at}.{list}[{i}].name"),
                names::header_name(&h.name),
            );
            p.check(
                format!("{at}.{list}[{i}].value"),
                names::header_value(&h.value),
            );
        }
    }
    for (i, name) in m.remove.iter().enumerate() {
        p.check(format!("{at}.remove[{i}]"), names::header_name(name));
    }
}

/// At least one backend, each weight bounded, some weight in all, and no backend twice.
fn backends(p: &mut Problems, at: &str, list: &[BackendRef]) {
    if list.is_empty() {
        p.add(
            format!("{at}.backendRefs"),
            "a rule needs at least one backendRef",
        );
        return;
    }
    let mut seen = HashMap::new();
    let mut total = 0u64;
    for (i, b) in list.iter().enumerate() {
        let item = format!("{at}.backendRefs[{i}]");
        p.check(format!("{item}.name"), names::dns_label(&b.name));
        if let Some(ns) = &b.namespace {
            p.check(format!("{item}.namespace"), names::dns_label(ns));
        }
        if let Some(port) = b.port {
            p.port(format!("{item}.port"), port);
        }
        if let Some(subset) = &b.subset {
            let check = if subset.is_empty() {
                Err("must not be empty".into())
            } else {
                names::label_value(subset)
            };
            p.check(format!("{item}.subset"), check);
        }
        if b.weight > MAX_WEIGHT {
            p.add(
                format!("{item}.weight"),
                format!("weight {} is over the limit of {MAX_WEIGHT}", b.weight),
            );
        }
        total += u64::from(b.weight);
        let identity = (&b.name, &b.namespace, &b.subset, b.port);
        if let Some(first) = seen.insert(identity, i) {
            p.add(
                format!("{item}.name"),
                format!("the same backend as {at}.backendRefs[{first}]; merge them and add up their weights"),
            );
        }
    }
    if total == 0 {
        p.add(
            format!("{at}.backendRefs"),
            "every weight is 0, so the rule could send traffic nowhere; give at least one backend a weight",
        );
    }
}

fn timeouts(p: &mut Problems, at: &str, t: &RouteTimeouts) {
    nonzero(p, &format!("{at}.request"), t.request);
    nonzero(p, &format!("{at}.backendRequest"), t.backend_request);
    nonzero(p, &format!("{at}.idle"), t.idle);
    if let (Some(request), Some(backend)) = (t.request, t.backend_request) {
        if backend > request && !request.get().is_zero() {
            p.add(
                format!("{at}.backendRequest"),
                format!("{backend} is longer than the whole request's timeout ({request})"),
            );
        }
    }
}

fn nonzero(p: &mut Problems, at: &str, d: Option<Duration>) {
    if d.is_some_and(|d| d.get().is_zero()) {
        p.add(at, "must be longer than 0; leave it out for no timeout");
    }
}

fn retry_policy(p: &mut Problems, at: &str, r: &RetryPolicy) {
    if let Some(n) = r.attempts {
        if n > MAX_RETRY_ATTEMPTS {
            p.add(
                format!("{at}.attempts"),
                format!("{n} attempts is over the limit of {MAX_RETRY_ATTEMPTS}"),
            );
        }
    }
    if r.backoff.is_some_and(|b| b.get().is_zero()) {
        p.add(format!("{at}.backoff"), "must be longer than 0");
    }
    if let (Some(base), Some(max)) = (r.backoff, r.max_backoff) {
        if max < base {
            p.add(
                format!("{at}.maxBackoff"),
                format!("{max} is shorter than the first backoff ({base})"),
            );
        }
    }
    for (i, name) in r.grpc_codes.iter().enumerate() {
        if grpc_code(name).is_none() {
            p.add(
                format!("{at}.grpcCodes[{i}]"),
                format!("`{name}` is not a gRPC status name (write e.g. UNAVAILABLE)"),
            );
        }
    }
    for (i, code) in r.codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            p.add(
                format!("{at}.codes[{i}]"),
                format!("{code} is not an HTTP status code (100-599)"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{clean, errors, one};

    const ROUTE: &str = "\
apiVersion: weft.dev/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs:
  - name: reviews
    port: 9080
  hostnames: [reviews.shop.example]
  rules:
  - name: canary
    matches:
    - path:
        type: PathPrefix
        value: /api
      headers:
      - name: x-user
        value: jason
      - name: x-env
        type: RegularExpression
        value: ^(dev|qa)$
      queryParams:
      - name: debug
        value: \"1\"
      method: GET
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - name: x-canary
          value: \"yes\"
        remove: [x-debug]
    backendRefs:
    - name: reviews
      subset: v1
      weight: 90
    - name: reviews
      subset: v2
      weight: 10
    timeouts:
      request: 10s
      backendRequest: 2s
    retry:
      attempts: 3
      backoff: 100ms
      codes: [502, 503]
";

    const EXTRAS: &str = "    sessionPersistence:
      type: Cookie
      sessionName: user
    rateLimit:
      requests: 10
      per: 1s
      burst: 20
      perSource: true
    fallback:
      response:
        status: 200
        body: no reviews right now
";

    #[test]
    fn a_full_route_is_clean() {
        clean(ROUTE);
        clean(&format!("{ROUTE}{EXTRAS}"));
    }

    #[test]
    fn resilience_fields() {
        let with = |from: &str, to: &str| format!("{ROUTE}{}", EXTRAS.replace(from, to));
        one(
            &with("sessionName: user", "sessionName: \"a;b\""),
            49,
            "spec.rules[0].sessionPersistence.sessionName",
            "cookie name",
        );
        one(
            &with("requests: 10", "requests: 0"),
            51,
            "spec.rules[0].rateLimit.requests",
            "must be 1 to",
        );
        one(
            &with("status: 200", "status: 101"),
            57,
            "spec.rules[0].fallback.response.status",
            "final HTTP status",
        );
        one(
            &with(
                "      response:\n        status: 200\n        body: no reviews right now\n",
                "      {}\n",
            ),
            55,
            "spec.rules[0].fallback",
            "exactly one",
        );
        one(
            &ROUTE.replace(
                "codes: [502, 503]",
                "codes: [502]\n      grpcCodes: [UNAVAILABL]",
            ),
            47,
            "spec.rules[0].retry.grpcCodes[0]",
            "not a gRPC status name",
        );
    }

    #[test]
    fn needs_a_parent_ref() {
        let text = ROUTE.replace(
            "  parentRefs:\n  - name: reviews\n    port: 9080\n",
            "  parentRefs: []\n",
        );
        one(&text, 6, "spec.parentRefs", "at least one parentRef");
    }

    #[test]
    fn needs_a_rule() {
        let text = ROUTE.split("  rules:").next().unwrap().to_string() + "  rules: []\n";
        one(&text, 10, "spec.rules", "at least one rule");
    }

    #[test]
    fn rule_needs_a_backend() {
        let text =
            ROUTE.split("    backendRefs:").next().unwrap().to_string() + "    backendRefs: []\n";
        one(
            &text,
            33,
            "spec.rules[0].backendRefs",
            "at least one backendRef",
        );
    }

    #[test]
    fn weight_over_the_limit() {
        one(
            &ROUTE.replace("weight: 10\n", "weight: 1000001\n"),
            39,
            "spec.rules[0].backendRefs[1].weight",
            "limit of 1000000",
        );
    }

    #[test]
    fn all_weights_zero() {
        let text = ROUTE
            .replace("weight: 90", "weight: 0")
            .replace("weight: 10\n", "weight: 0\n");
        one(&text, 33, "spec.rules[0].backendRefs", "every weight is 0");
    }

    #[test]
    fn duplicate_backend() {
        one(
            &ROUTE.replace("subset: v2", "subset: v1"),
            37,
            "spec.rules[0].backendRefs[1].name",
            "same backend as spec.rules[0].backendRefs[0]",
        );
    }

    #[test]
    fn same_service_on_other_ports_is_not_a_duplicate() {
        let text = ROUTE
            .replace("      subset: v1\n", "      port: 1\n")
            .replace("      subset: v2\n", "      port: 2\n");
        clean(&text);
    }

    #[test]
    fn path_must_start_with_a_slash() {
        one(
            &ROUTE.replace("value: /api", "value: api"),
            15,
            "spec.rules[0].matches[0].path.value",
            "start with '/'",
        );
    }

    #[test]
    fn path_regex_must_compile() {
        let text = ROUTE.replace(
            "type: PathPrefix\n        value: /api",
            "type: RegularExpression\n        value: \"/api/(\"",
        );
        one(
            &text,
            15,
            "spec.rules[0].matches[0].path.value",
            "invalid regular expression",
        );
    }

    #[test]
    fn regex_size_is_bounded() {
        let text = ROUTE.replace("^(dev|qa)$", "\"\\\\w{300}\\\\w{300}\"");
        one(
            &text,
            21,
            "spec.rules[0].matches[0].headers[1].value",
            "64 KiB",
        );
    }

    #[test]
    fn header_names() {
        one(
            &ROUTE.replace("name: x-user", "name: x user"),
            17,
            "spec.rules[0].matches[0].headers[0].name",
            "header name",
        );
        one(
            &ROUTE.replace("name: x-env", "name: X-User"),
            19,
            "spec.rules[0].matches[0].headers[1].name",
            "already matched",
        );
    }

    #[test]
    fn query_param_names() {
        one(
            &ROUTE.replace("name: debug", "name: \"a=b\""),
            23,
            "spec.rules[0].matches[0].queryParams[0].name",
            "query parameter",
        );
    }

    #[test]
    fn methods() {
        one(
            &ROUTE.replace("method: GET", "method: \"G T\""),
            25,
            "spec.rules[0].matches[0].method",
            "not a valid HTTP method",
        );
        one(
            &ROUTE.replace("method: GET", "method: get"),
            25,
            "spec.rules[0].matches[0].method",
            "write `GET`",
        );
    }

    #[test]
    fn filter_type_and_modifier_must_agree() {
        let e = errors(&ROUTE.replace(
            "type: RequestHeaderModifier",
            "type: ResponseHeaderModifier",
        ));
        let shown: Vec<_> = e.iter().map(|e| (e.line, e.field.as_str())).collect();
        let at = "spec.rules[0].filters[0]";
        let modifier = format!("{at}.requestHeaderModifier");
        assert_eq!(shown, [(Some(28), modifier.as_str()), (Some(27), at)]);
        assert!(e[1].reason.contains("needs `responseHeaderModifier`"));
    }

    #[test]
    fn header_modifier_names() {
        one(
            &ROUTE.replace("name: x-canary", "name: \"x canary\""),
            30,
            "spec.rules[0].filters[0].requestHeaderModifier.set[0].name",
            "header name",
        );
        one(
            &ROUTE.replace("remove: [x-debug]", "remove: [\"a b\"]"),
            32,
            "spec.rules[0].filters[0].requestHeaderModifier.remove[0]",
            "header name",
        );
    }

    #[test]
    fn empty_header_modifier() {
        let text = ROUTE.replace(
            "        set:\n        - name: x-canary\n          value: \"yes\"\n        remove: [x-debug]\n",
            "        add: []\n",
        );
        one(
            &text,
            28,
            "spec.rules[0].filters[0].requestHeaderModifier",
            "changes nothing",
        );
    }

    #[test]
    fn zero_timeouts() {
        one(
            &ROUTE.replace("request: 10s", "request: 0s"),
            41,
            "spec.rules[0].timeouts.request",
            "longer than 0",
        );
    }

    #[test]
    fn backend_timeout_within_request_timeout() {
        one(
            &ROUTE.replace("backendRequest: 2s", "backendRequest: 20s"),
            42,
            "spec.rules[0].timeouts.backendRequest",
            "longer than the whole request",
        );
    }

    #[test]
    fn retry_attempts_and_codes() {
        one(
            &ROUTE.replace("attempts: 3", "attempts: 11"),
            44,
            "spec.rules[0].retry.attempts",
            "limit of 10",
        );
        let e = errors(&ROUTE.replace("codes: [502, 503]", "codes: [99, 600]"));
        let fields: Vec<_> = e.iter().map(|e| (e.field.as_str(), e.line)).collect();
        assert_eq!(
            fields,
            [
                ("spec.rules[0].retry.codes[0]", Some(46)),
                ("spec.rules[0].retry.codes[1]", Some(46))
            ]
        );
    }

    #[test]
    fn hostnames() {
        one(
            &ROUTE.replace("[reviews.shop.example]", "[\"Bad Host\"]"),
            9,
            "spec.hostnames[0]",
            "DNS name",
        );
    }

    #[test]
    fn parent_port_and_name() {
        one(
            &ROUTE.replace("port: 9080", "port: 0"),
            8,
            "spec.parentRefs[0].port",
            "port 0",
        );
        one(
            &ROUTE.replace("  - name: reviews\n    port", "  - name: Reviews\n    port"),
            7,
            "spec.parentRefs[0].name",
            "DNS label",
        );
    }

    #[test]
    fn duplicate_rule_names() {
        let extra = "  - name: canary\n    backendRefs:\n    - name: reviews\n";
        one(
            &format!("{ROUTE}{extra}"),
            47,
            "spec.rules[1].name",
            "already used by spec.rules[0]",
        );
    }
}
