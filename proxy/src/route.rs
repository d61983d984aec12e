//! Routing: which backend (service, subset, port) an HTTP request or a TCP connection to a mesh service
//! goes to, from the `HTTPRoute`s attached to that service.
//!
//! Order: routes sorted by namespace and name, their rules in file order; the first rule with a match
//! (or with no matches at all) wins. Within a rule a backend is picked at random by weight. A service
//! with no rule that applies sends to all its ready endpoints (its default subset). Opaque TCP has no
//! request to match, so only rules without matches apply to it.

use crate::retry::RetryRule;
use regex::{Regex, RegexBuilder};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use weft_api::resources::{
    Document, Fallback, HeaderModifier, HttpRouteSpec, PathMatchType, RateLimit, RouteFilterType,
    RouteMatch, RouteRule, SessionPersistenceType, ValueMatch, ValueMatchType,
};

/// Where a rule sends traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub namespace: String,
    pub name: String,
    /// Endpoints labelled `version: <subset>`; `None` is every endpoint.
    pub subset: Option<String>,
    /// The backend service's port; `None` keeps the port the client used.
    pub port: Option<u16>,
}

/// The parts of a request a rule can match on.
pub struct RequestView<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

impl<'a> RequestView<'a> {
    pub fn of(parts: &'a http::request::Parts) -> RequestView<'a> {
        RequestView {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
        }
    }
}

/// Every service's rules, compiled once per snapshot.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_service: HashMap<(String, String), Vec<Rule>>,
    /// Some rule has a rate limit (the destination side looks for one only then).
    has_rate_limits: bool,
}

#[derive(Debug)]
struct Rule {
    /// The service port the route is attached to; `None` is every port.
    port: Option<u16>,
    matches: Vec<Match>,
    backends: Vec<(Backend, u32)>,
    total_weight: u64,
    policy: Arc<RulePolicy>,
}

/// What a rule says about the requests it takes, besides where they go.
#[derive(Debug, Default)]
pub struct RulePolicy {
    /// `namespace/route rules[i]` (or the rule's name): for logs and rate-limit buckets.
    pub name: String,
    pub request_timeout: Option<Duration>,
    pub per_try_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub retry: RetryRule,
    pub request_headers: HeaderEdit,
    pub response_headers: HeaderEdit,
    pub fallback: Option<Fallback>,
    pub rate_limit: Option<RateLimit>,
    sticky: Option<(SessionPersistenceType, String)>,
}

/// The policy of requests no rule takes: default retries, no timeouts.
pub static DEFAULT_POLICY: LazyLock<Arc<RulePolicy>> =
    LazyLock::new(|| Arc::new(RulePolicy::default()));

/// A compiled header modifier.
#[derive(Debug, Default)]
pub struct HeaderEdit {
    set: Vec<(http::HeaderName, http::HeaderValue)>,
    add: Vec<(http::HeaderName, http::HeaderValue)>,
    remove: Vec<http::HeaderName>,
}

impl HeaderEdit {
    fn compile(m: &HeaderModifier) -> Result<HeaderEdit, String> {
        let pair = |h: &weft_api::resources::HeaderValue| {
            Ok::<_, String>((
                http::HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| format!("`{}` is not a header name", h.name))?,
                http::HeaderValue::from_str(&h.value)
                    .map_err(|_| format!("the value of `{}` is not a header value", h.name))?,
            ))
        };
        Ok(HeaderEdit {
            set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: m
                .remove
                .iter()
                .map(|n| {
                    http::HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| format!("`{n}` is not a header name"))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

#[derive(Debug)]
struct Match {
    path: Option<PathRule>,
    headers: Vec<(http::HeaderName, ValueRule)>,
    query: Vec<(String, ValueRule)>,
    method: Option<http::Method>,
}

#[derive(Debug)]
enum PathRule {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum ValueRule {
    Exact(String),
    Regex(Regex),
}

/// Why a snapshot's routes cannot be used (the proxy NACKs it).
#[derive(Debug, thiserror::Error)]
#[error("route {route} {field}: {reason}")]
pub struct RouteError {
    route: String,
    field: String,
    reason: String,
}

/// What the chosen rule says, or that no rule applies.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice {
    Backend(Backend),
    /// No rule applies: the service's own endpoints.
    Default,
    /// A rule matched but all its backends weigh 0.
    NoWeight,
}

impl RouteTable {
    /// Compiles every route; regexes are limited to `max_regex_bytes` of compiled program.
    pub fn compile(
        routes: &[Document<HttpRouteSpec>],
        max_regex_bytes: usize,
    ) -> Result<RouteTable, RouteError> {
        let mut sorted: Vec<&Document<HttpRouteSpec>> = routes.iter().collect();
        sorted.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        let mut by_service: HashMap<(String, String), Vec<Rule>> = HashMap::new();
        for route in sorted {
            let ns = &route.metadata.namespace;
            let err = |field: String, reason: String| RouteError {
                route: format!("{ns}/{}", route.metadata.name),
                field,
                reason,
            };
            for parent in &route.spec.parent_refs {
                let svc_ns = parent.namespace.clone().unwrap_or_else(|| ns.clone());
                for (i, rule) in route.spec.rules.iter().enumerate() {
                    let name = match &rule.name {
                        Some(n) => format!("{ns}/{} {n}", route.metadata.name),
                        None => format!("{ns}/{} rules[{i}]", route.metadata.name),
                    };
                    let compiled = compile_rule(rule, ns, parent.port, max_regex_bytes, name)
                        .map_err(|(field, reason)| err(format!("rules[{i}]{field}"), reason))?;
                    by_service
                        .entry((svc_ns.clone(), parent.name.clone()))
                        .or_default()
                        .push(compiled);
                }
            }
        }
        let has_rate_limits = by_service
            .values()
            .flatten()
            .any(|r| r.policy.rate_limit.is_some());
        Ok(RouteTable {
            by_service,
            has_rate_limits,
        })
    }

    pub fn has_rate_limits(&self) -> bool {
        self.has_rate_limits
    }

    /// The backend for a request (or, with `req` absent, an opaque connection) to `namespace/name:port`.
    pub fn choose(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        req: Option<&RequestView<'_>>,
    ) -> Choice {
        self.route(namespace, name, port, req).0
    }

    /// The backend and the policy of the rule that takes the request (the default policy when none does).
    pub fn route(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        req: Option<&RequestView<'_>>,
    ) -> (Choice, Arc<RulePolicy>) {
        match self.rule(namespace, name, port, req) {
            None => (Choice::Default, DEFAULT_POLICY.clone()),
            Some(r) => {
                let roll = r.policy.sticky_key(req).unwrap_or_else(rand::random::<u64>);
                (r.pick(roll), r.policy.clone())
            }
        }
    }

    /// The policy of the rule that takes a request, if any does (the destination side's view, for rate
    /// limits).
    pub fn policy(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        req: &RequestView<'_>,
    ) -> Option<Arc<RulePolicy>> {
        self.rule(namespace, name, port, Some(req))
            .map(|r| r.policy.clone())
    }

    fn rule(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        req: Option<&RequestView<'_>>,
    ) -> Option<&Rule> {
        let rules = self
            .by_service
            .get(&(namespace.to_string(), name.to_string()))?;
        rules.iter().find(|r| {
            r.port.is_none_or(|p| p == port)
                && match req {
                    Some(req) => r.matches.is_empty() || r.matches.iter().any(|m| m.accepts(req)),
                    None => r.matches.is_empty(),
                }
        })
    }
}

impl RulePolicy {
    /// A stable hash of the session header or cookie, when the rule is sticky and the request has one.
    /// FNV-1a: fixed by definition, so every proxy of every release maps a value the same way (std's
    /// hasher may change between releases).
    fn sticky_key(&self, req: Option<&RequestView<'_>>) -> Option<u64> {
        let (kind, name) = self.sticky.as_ref()?;
        let headers = req?.headers;
        let value = match kind {
            SessionPersistenceType::Header => headers.get(name.as_str())?.as_bytes().to_vec(),
            SessionPersistenceType::Cookie => cookie(headers, name)?.into_bytes(),
        };
        Some(fnv1a(&value))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Spread the low bits: `pick` takes the hash modulo the total weight.
    h ^ (h >> 29)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_string())
}

impl Rule {
    /// The backend `roll` lands on when each backend owns a share of the rolls by its weight.
    fn pick(&self, roll: u64) -> Choice {
        if self.total_weight == 0 {
            return Choice::NoWeight;
        }
        let mut at = roll % self.total_weight;
        for (b, w) in &self.backends {
            if at < u64::from(*w) {
                return Choice::Backend(b.clone());
            }
            at -= u64::from(*w);
        }
        Choice::NoWeight
    }
}

fn compile_rule(
    rule: &RouteRule,
    route_ns: &str,
    port: Option<u16>,
    limit: usize,
    name: String,
) -> Result<Rule, (String, String)> {
    let matches = rule
        .matches
        .iter()
        .enumerate()
        .map(|(j, m)| compile_match(m, limit).map_err(|(f, r)| (format!(".matches[{j}]{f}"), r)))
        .collect::<Result<Vec<_>, _>>()?;
    let backends: Vec<(Backend, u32)> = rule
        .backend_refs
        .iter()
        .map(|b| {
            (
                Backend {
                    namespace: b.namespace.clone().unwrap_or_else(|| route_ns.to_string()),
                    name: b.name.clone(),
                    subset: b.subset.clone(),
                    port: b.port,
                },
                b.weight,
            )
        })
        .collect();
    let total_weight = backends.iter().map(|(_, w)| u64::from(*w)).sum();
    Ok(Rule {
        port,
        matches,
        backends,
        total_weight,
        policy: Arc::new(compile_policy(rule, name)?),
    })
}

fn compile_policy(rule: &RouteRule, name: String) -> Result<RulePolicy, (String, String)> {
    let mut request_headers = HeaderEdit::default();
    let mut response_headers = HeaderEdit::default();
    for (i, f) in rule.filters.iter().enumerate() {
        let (modifier, slot) = match f.kind {
            RouteFilterType::RequestHeaderModifier => {
                (&f.request_header_modifier, &mut request_headers)
            }
            RouteFilterType::ResponseHeaderModifier => {
                (&f.response_header_modifier, &mut response_headers)
            }
        };
        if let Some(m) = modifier {
            *slot = HeaderEdit::compile(m).map_err(|r| (format!(".filters[{i}]"), r))?;
        }
    }
    let t = rule.timeouts.clone().unwrap_or_default();
    Ok(RulePolicy {
        name,
        request_timeout: t.request.map(|d| d.get()),
        per_try_timeout: t.backend_request.map(|d| d.get()),
        idle_timeout: t.idle.map(|d| d.get()),
        retry: RetryRule::from_policy(rule.retry.as_ref()),
        request_headers,
        response_headers,
        fallback: rule.fallback.clone(),
        rate_limit: rule.rate_limit.clone(),
        sticky: rule
            .session_persistence
            .as_ref()
            .map(|s| (s.kind, s.session_name.clone())),
    })
}

fn compile_match(m: &RouteMatch, limit: usize) -> Result<Match, (String, String)> {
    let path = match &m.path {
        None => None,
        Some(p) => Some(match p.kind {
            PathMatchType::Exact => PathRule::Exact(p.value.clone()),
            PathMatchType::PathPrefix => {
                PathRule::Prefix(p.value.trim_end_matches('/').to_string())
            }
            PathMatchType::RegularExpression => {
                PathRule::Regex(regex(&p.value, limit).map_err(|r| (".path".to_string(), r))?)
            }
        }),
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(k, h)| {
            let field = || format!(".headers[{k}]");
            let name = http::HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| (field(), format!("`{}` is not a header name", h.name)))?;
            Ok((name, value_rule(h, limit).map_err(|r| (field(), r))?))
        })
        .collect::<Result<Vec<_>, (String, String)>>()?;
    let query = m
        .query_params
        .iter()
        .enumerate()
        .map(|(k, q)| {
            let rule = value_rule(q, limit).map_err(|r| (format!(".queryParams[{k}]"), r))?;
            Ok((q.name.clone(), rule))
        })
        .collect::<Result<Vec<_>, (String, String)>>()?;
    let method = match &m.method {
        None => None,
        Some(s) => Some(
            http::Method::from_bytes(s.as_bytes())
                .map_err(|_| (".method".to_string(), format!("`{s}` is not a method")))?,
        ),
    };
    Ok(Match {
        path,
        headers,
        query,
        method,
    })
}

fn value_rule(v: &ValueMatch, limit: usize) -> Result<ValueRule, String> {
    Ok(match v.kind {
        ValueMatchType::Exact => ValueRule::Exact(v.value.clone()),
        ValueMatchType::RegularExpression => ValueRule::Regex(regex(&v.value, limit)?),
    })
}

/// Regexes match the whole value, as the Gateway API specifies.
fn regex(pattern: &str, limit: usize) -> Result<Regex, String> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(limit)
        .build()
        .map_err(|e| format!("regex not accepted by this proxy (limit {limit} bytes): {e}"))
}

impl Match {
    fn accepts(&self, req: &RequestView<'_>) -> bool {
        if let Some(m) = &self.method {
            if m != req.method {
                return false;
            }
        }
        if let Some(p) = &self.path {
            if !p.accepts(req.path) {
                return false;
            }
        }
        let headers_ok = self.headers.iter().all(|(name, rule)| {
            req.headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| rule.accepts(v)))
        });
        headers_ok
            && self
                .query
                .iter()
                .all(|(name, rule)| query_values(req.query, name).any(|v| rule.accepts(v)))
    }
}

impl PathRule {
    fn accepts(&self, path: &str) -> bool {
        match self {
            PathRule::Exact(p) => path == p,
            // Element-wise: `/api` takes `/api` and `/api/x`, not `/apix`.
            PathRule::Prefix(p) => {
                p.is_empty()
                    || path
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathRule::Regex(r) => r.is_match(path),
        }
    }
}

impl ValueRule {
    fn accepts(&self, v: &str) -> bool {
        match self {
            ValueRule::Exact(e) => e == v,
            ValueRule::Regex(r) => r.is_match(v),
        }
    }
}

fn query_values<'a>(query: Option<&'a str>, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(move |pair| match pair.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if pair == name => Some(""),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml: &str) -> RouteTable {
        let doc: Document<HttpRouteSpec> = weft_api::yaml::from_str("test.yaml", yaml).unwrap();
        RouteTable::compile(&[doc], 1 << 20).unwrap()
    }

    const CANARY: &str = r#"
apiVersion: weft.dev/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: default}
spec:
  parentRefs: [{name: reviews}]
  rules:
    - matches:
        - headers: [{name: x-user-group, value: beta}]
        - path: {type: PathPrefix, value: /beta}
          method: POST
      backendRefs: [{name: reviews, subset: v2}]
    - backendRefs:
        - {name: reviews, subset: v1, weight: 90}
        - {name: reviews, subset: v2, weight: 10}
"#;

    fn get(path: &str) -> http::request::Parts {
        http::Request::get(path).body(()).unwrap().into_parts().0
    }

    fn subset(c: Choice) -> Option<String> {
        match c {
            Choice::Backend(b) => b.subset,
            other => panic!("no backend: {other:?}"),
        }
    }

    #[test]
    fn header_and_path_matches_pick_their_rule() {
        let t = table(CANARY);
        let mut beta = get("/x");
        beta.headers.insert("x-user-group", "beta".parse().unwrap());
        let r = RequestView::of(&beta);
        assert_eq!(
            subset(t.choose("default", "reviews", 9080, Some(&r))),
            Some("v2".into())
        );
        let mut post = get("/beta/1");
        post.method = http::Method::POST;
        assert_eq!(
            subset(t.choose("default", "reviews", 9080, Some(&RequestView::of(&post)))),
            Some("v2".into())
        );
        // GET /beta/1 misses the method; /betamax misses the prefix element-wise.
        let mut splits = 0;
        for p in ["/beta/1", "/betamax"] {
            let g = get(p);
            for _ in 0..200 {
                if subset(t.choose("default", "reviews", 9080, Some(&RequestView::of(&g))))
                    == Some("v1".into())
                {
                    splits += 1;
                }
            }
        }
        assert!(splits > 300, "the 90/10 rule serves unmatched requests");
    }

    #[test]
    fn weights_split_by_share() {
        let t = table(CANARY);
        let rule = &t.by_service[&("default".to_string(), "reviews".to_string())][1];
        let v2 = (0..100u64)
            .filter(|roll| subset(rule.pick(*roll)) == Some("v2".into()))
            .count();
        assert_eq!(v2, 10);
    }

    #[test]
    fn tcp_uses_only_rules_without_matches_and_other_services_default() {
        let t = table(CANARY);
        assert!(matches!(
            t.choose("default", "reviews", 9080, None),
            Choice::Backend(_)
        ));
        assert_eq!(t.choose("default", "ratings", 9080, None), Choice::Default);
        assert_eq!(t.choose("other", "reviews", 9080, None), Choice::Default);
    }

    #[test]
    fn regex_matches_the_whole_value_and_zero_weights_say_so() {
        let t = table(
            r#"
apiVersion: weft.dev/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: svc, port: 80}]
  rules:
    - matches: [{path: {type: RegularExpression, value: "/v[0-9]+"}}]
      backendRefs: [{name: svc, subset: a}]
    - matches: [{queryParams: [{name: canary, value: "1"}]}]
      backendRefs: [{name: svc, subset: b, weight: 0}]
"#,
        );
        let r = get("/v12");
        assert_eq!(
            subset(t.choose("default", "svc", 80, Some(&RequestView::of(&r)))),
            Some("a".into())
        );
        let r = get("/v12/x");
        assert_eq!(
            t.choose("default", "svc", 80, Some(&RequestView::of(&r))),
            Choice::Default
        );
        let r = get("/x?a=b&canary=1");
        assert_eq!(
            t.choose("default", "svc", 80, Some(&RequestView::of(&r))),
            Choice::NoWeight
        );
        // The route is attached to port 80 only.
        let r = get("/v1");
        assert_eq!(
            t.choose("default", "svc", 81, Some(&RequestView::of(&r))),
            Choice::Default
        );
    }
}
