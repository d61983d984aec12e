//! How `HTTPRoute`s choose: which rule of which route takes a request (or a TCP connection) to a mesh
//! service, and which backend (service, subset, port) it sends it to. The proxy routes with it; the
//! control plane explains with it (`weftctl why`).
//!
//! Order: routes sorted by namespace and name, their rules in file order; the first rule with a match
//! (or with no matches at all) wins. Within a rule a backend is picked by weight: at random, or by a
//! stable hash of the session header or cookie when the rule is sticky. A service with no rule that
//! applies sends to all its ready endpoints (its default subset). Opaque TCP has no request to match,
//! so only rules without matches apply to it.
//!
//! Each rule carries a payload `P` built once when the table is compiled: the proxy's timeouts, retries
//! and header edits; nothing for the control plane.

use crate::resources::{
    Document, HeaderModifier, HttpRouteSpec, PathMatchType, RouteFilterType, RouteMatch, RouteRule,
    SessionPersistenceType, ValueMatch, ValueMatchType,
};
use regex::{Regex, RegexBuilder};
use std::collections::HashMap;

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

/// Every service's rules, compiled once. Keyed by namespace, then name, so a request's lookup borrows
/// its `&str`s instead of building a key.
#[derive(Debug)]
pub struct RouteTable<P> {
    by_service: HashMap<String, HashMap<String, Vec<Rule<P>>>>,
}

impl<P> Default for RouteTable<P> {
    fn default() -> Self {
        RouteTable {
            by_service: HashMap::new(),
        }
    }
}

/// One rule of one route, for one parent service.
#[derive(Debug)]
pub struct Rule<P> {
    /// `namespace/route rules[i]`, or `namespace/route <name>` when the rule has a name.
    pub name: String,
    /// The service port the route is attached to; `None` is every port.
    pub port: Option<u16>,
    matches: Vec<Match>,
    pub backends: Vec<(Backend, u32)>,
    total_weight: u64,
    sticky: Option<(SessionPersistenceType, String)>,
    pub payload: P,
}

/// A compiled header modifier.
#[derive(Debug, Default)]
pub struct HeaderEdit {
    set: Vec<(http::HeaderName, http::HeaderValue)>,
    add: Vec<(http::HeaderName, http::HeaderValue)>,
    remove: Vec<http::HeaderName>,
}

impl HeaderEdit {
    pub fn compile(m: &HeaderModifier) -> Result<HeaderEdit, String> {
        let pair = |h: &crate::resources::HeaderValue| {
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

/// A rule's request and response header modifiers, compiled.
pub fn header_edits(rule: &RouteRule) -> Result<(HeaderEdit, HeaderEdit), FieldError> {
    let mut request = HeaderEdit::default();
    let mut response = HeaderEdit::default();
    for (i, f) in rule.filters.iter().enumerate() {
        let (modifier, slot) = match f.kind {
            RouteFilterType::RequestHeaderModifier => (&f.request_header_modifier, &mut request),
            RouteFilterType::ResponseHeaderModifier => (&f.response_header_modifier, &mut response),
        };
        if let Some(m) = modifier {
            *slot = HeaderEdit::compile(m).map_err(|r| (format!(".filters[{i}]"), r))?;
        }
    }
    Ok((request, response))
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

/// Why a route cannot be used (a proxy NACKs the snapshot that carries it).
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

/// A field of a rule that cannot be compiled, and why.
pub type FieldError = (String, String);

impl<P> RouteTable<P> {
    /// Compiles every route; regexes are limited to `max_regex_bytes` of compiled program. `payload`
    /// builds what each rule carries from the rule and its name.
    pub fn compile(
        routes: &[Document<HttpRouteSpec>],
        max_regex_bytes: usize,
        mut payload: impl FnMut(&RouteRule, &str) -> Result<P, FieldError>,
    ) -> Result<RouteTable<P>, RouteError> {
        let mut sorted: Vec<&Document<HttpRouteSpec>> = routes.iter().collect();
        sorted.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        let mut by_service: HashMap<String, HashMap<String, Vec<Rule<P>>>> = HashMap::new();
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
                    let compiled = compile_rule(rule, ns, parent.port, max_regex_bytes)
                        .and_then(|c| {
                            let p = payload(rule, &name)?;
                            Ok(c.with(name, p))
                        })
                        .map_err(|(field, reason)| err(format!("rules[{i}]{field}"), reason))?;
                    by_service
                        .entry(svc_ns.clone())
                        .or_default()
                        .entry(parent.name.clone())
                        .or_default()
                        .push(compiled);
                }
            }
        }
        Ok(RouteTable { by_service })
    }

    /// The rule that takes a request (if one does) and the backend it picks: by the request's session
    /// key when the rule is sticky, otherwise by `roll` (a random number on the data path).
    pub fn choose(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        req: Option<&RequestView<'_>>,
        roll: impl FnOnce() -> u64,
    ) -> (Choice, Option<&Rule<P>>) {
        match self.rule(namespace, name, port, req) {
            None => (Choice::Default, None),
            Some(r) => (r.pick(r.sticky_key(req).unwrap_or_else(roll)), Some(r)),
        }
    }

    /// Every compiled rule.
    pub fn rules(&self) -> impl Iterator<Item = &Rule<P>> {
        self.by_service.values().flat_map(|m| m.values()).flatten()
    }

    /// The rule that takes a request (or, with `req` absent, an opaque connection) to
    /// `namespace/name:port`, if one does.
    pub fn rule(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        req: Option<&RequestView<'_>>,
    ) -> Option<&Rule<P>> {
        let rules = self.by_service.get(namespace)?.get(name)?;
        rules.iter().find(|r| {
            r.port.is_none_or(|p| p == port)
                && match req {
                    Some(req) => r.matches.is_empty() || r.matches.iter().any(|m| m.accepts(req)),
                    None => r.matches.is_empty(),
                }
        })
    }
}

impl<P> Rule<P> {
    /// The backend `roll` lands on when each backend owns a share of the rolls by its weight.
    pub fn pick(&self, roll: u64) -> Choice {
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

    /// A stable hash of the session header or cookie, when the rule is sticky and the request has one.
    /// FNV-1a: fixed by definition, so every proxy of every release maps a value the same way (std's
    /// hasher may change between releases).
    pub fn sticky_key(&self, req: Option<&RequestView<'_>>) -> Option<u64> {
        let (kind, name) = self.sticky.as_ref()?;
        let headers = req?.headers;
        let value = match kind {
            SessionPersistenceType::Header => headers.get(name.as_str())?.as_bytes().to_vec(),
            SessionPersistenceType::Cookie => cookie(headers, name)?.into_bytes(),
        };
        Some(fnv1a(&value))
    }

    /// The session header or cookie a sticky rule hashes, if it is sticky.
    pub fn session(&self) -> Option<(SessionPersistenceType, &str)> {
        self.sticky.as_ref().map(|(k, n)| (*k, n.as_str()))
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

/// A rule's matching part, before it has a name and payload.
struct Compiled {
    port: Option<u16>,
    matches: Vec<Match>,
    backends: Vec<(Backend, u32)>,
    sticky: Option<(SessionPersistenceType, String)>,
}

impl Compiled {
    fn with<P>(self, name: String, payload: P) -> Rule<P> {
        let total_weight = self.backends.iter().map(|(_, w)| u64::from(*w)).sum();
        Rule {
            name,
            port: self.port,
            matches: self.matches,
            backends: self.backends,
            total_weight,
            sticky: self.sticky,
            payload,
        }
    }
}

fn compile_rule(
    rule: &RouteRule,
    route_ns: &str,
    port: Option<u16>,
    limit: usize,
) -> Result<Compiled, FieldError> {
    let matches = rule
        .matches
        .iter()
        .enumerate()
        .map(|(j, m)| compile_match(m, limit).map_err(|(f, r)| (format!(".matches[{j}]{f}"), r)))
        .collect::<Result<Vec<_>, _>>()?;
    let backends = rule
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
    Ok(Compiled {
        port,
        matches,
        backends,
        sticky: rule
            .session_persistence
            .as_ref()
            .map(|s| (s.kind, s.session_name.clone())),
    })
}

fn compile_match(m: &RouteMatch, limit: usize) -> Result<Match, FieldError> {
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
            // Case-insensitive, as authorization matches methods: `delete` is DELETE to many apps.
            if !m.as_str().eq_ignore_ascii_case(req.method.as_str()) {
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

    fn table(yaml: &str) -> RouteTable<()> {
        let doc: Document<HttpRouteSpec> = crate::yaml::from_str("test.yaml", yaml).unwrap();
        RouteTable::compile(&[doc], 1 << 20, |_, _| Ok(())).unwrap()
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

    /// Rolls 0, 1, 2, ... in turn, so a split over n calls is exact.
    fn choose(
        t: &RouteTable<()>,
        ns: &str,
        name: &str,
        port: u16,
        req: Option<&RequestView<'_>>,
    ) -> Choice {
        use std::sync::atomic::{AtomicU64, Ordering};
        static ROLL: AtomicU64 = AtomicU64::new(0);
        t.choose(ns, name, port, req, || ROLL.fetch_add(1, Ordering::Relaxed))
            .0
    }

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
            subset(choose(&t, "default", "reviews", 9080, Some(&r))),
            Some("v2".into())
        );
        let mut post = get("/beta/1");
        post.method = http::Method::POST;
        assert_eq!(
            subset(choose(
                &t,
                "default",
                "reviews",
                9080,
                Some(&RequestView::of(&post))
            )),
            Some("v2".into())
        );
        // GET /beta/1 misses the method; /betamax misses the prefix element-wise.
        let mut splits = 0;
        for p in ["/beta/1", "/betamax"] {
            let g = get(p);
            for _ in 0..200 {
                if subset(choose(
                    &t,
                    "default",
                    "reviews",
                    9080,
                    Some(&RequestView::of(&g)),
                )) == Some("v1".into())
                {
                    splits += 1;
                }
            }
        }
        assert!(splits > 300, "the 90/10 rule serves unmatched requests");
    }

    #[test]
    fn method_matches_ignore_case_as_authorization_does() {
        let t = table(CANARY);
        let mut post = get("/beta/1");
        post.method = http::Method::from_bytes(b"pOsT").unwrap();
        assert_eq!(
            subset(choose(
                &t,
                "default",
                "reviews",
                9080,
                Some(&RequestView::of(&post))
            )),
            Some("v2".into())
        );
    }

    #[test]
    fn weights_split_by_share() {
        let t = table(CANARY);
        let rule = &t.by_service["default"]["reviews"][1];
        let v2 = (0..100u64)
            .filter(|roll| subset(rule.pick(*roll)) == Some("v2".into()))
            .count();
        assert_eq!(v2, 10);
    }

    #[test]
    fn tcp_uses_only_rules_without_matches_and_other_services_default() {
        let t = table(CANARY);
        assert!(matches!(
            choose(&t, "default", "reviews", 9080, None),
            Choice::Backend(_)
        ));
        assert_eq!(
            choose(&t, "default", "ratings", 9080, None),
            Choice::Default
        );
        assert_eq!(choose(&t, "other", "reviews", 9080, None), Choice::Default);
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
            subset(choose(&t, "default", "svc", 80, Some(&RequestView::of(&r)))),
            Some("a".into())
        );
        let r = get("/v12/x");
        assert_eq!(
            choose(&t, "default", "svc", 80, Some(&RequestView::of(&r))),
            Choice::Default
        );
        let r = get("/x?a=b&canary=1");
        assert_eq!(
            choose(&t, "default", "svc", 80, Some(&RequestView::of(&r))),
            Choice::NoWeight
        );
        // The route is attached to port 80 only.
        let r = get("/v1");
        assert_eq!(
            choose(&t, "default", "svc", 81, Some(&RequestView::of(&r))),
            Choice::Default
        );
    }
}
