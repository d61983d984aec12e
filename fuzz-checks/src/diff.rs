//! Differential targets: two pieces of Weft that must agree, given the same generated input.
//!
//! - `authz_why`: the proxy's decision (`Authorizer::check`, applied to every request) and the account
//!   `weftctl why` gives of it (`Authorizer::explain`), on generated policies and requests.
//! - `route_authz`: an `HTTPRoute` path match and an authorization path rule that claim the same
//!   meaning, on the same normalised path: `Exact p` against the rule `p`; `PathPrefix p` (element-wise)
//!   against the rules `p` and `p/*`.

use arbitrary::{Arbitrary, Unstructured};
use serde_json::{json, Value};
use weft_api::authz::{normalize::normalize, Authorizer, Decision, HttpSubject, Subject};
use weft_api::resources::{AuthorizationPolicySpec, Document, HttpRouteSpec};
use weft_api::routing::RequestView;
use weft_certs::SpiffeId;
use weft_proxy::traffic::route::RouteTable;

const REGEX_LIMIT: usize = 1 << 20;
const NAMESPACES: [&str; 3] = ["default", "shop", "weft-system"];
const ACCOUNTS: [&str; 3] = ["default/reviews", "shop/web", "default/*"];
const PRINCIPALS: [&str; 3] = [
    "*",
    "spiffe://fuzz.local/ns/default/sa/reviews",
    "spiffe://other/ns/shop/sa/web",
];
const METHODS: [&str; 4] = ["GET", "POST", "DELETE", "PROPFIND"];
const PATHS: [&str; 10] = [
    "*",
    "/",
    "/a",
    "/a/",
    "/a/*",
    "*/b",
    "/a/b",
    "/a/./b/../c",
    "/A",
    "/a%2Fb",
];
const HEADERS: [&str; 2] = ["x-user", "x-group"];
const VALUES: [&str; 4] = ["alice", "bob", "al.*", "[a-z]+"];

#[derive(Arbitrary, Debug)]
struct PolicyCase {
    ns: u8,
    deny: bool,
    audit: bool,
    rules: Vec<RuleCase>,
}

#[derive(Arbitrary, Debug)]
struct RuleCase {
    /// (which field, first pick, second pick).
    from: Vec<(u8, u8, u8)>,
    to: Vec<OpCase>,
}

#[derive(Arbitrary, Debug)]
struct OpCase {
    ports: Vec<u8>,
    methods: Vec<u8>,
    paths: Vec<u8>,
    headers: Vec<(u8, u8, bool)>,
}

#[derive(Arbitrary, Debug)]
struct RequestCase {
    source: Option<(u8, u8)>,
    port: u8,
    http: Option<HttpCase>,
}

#[derive(Arbitrary, Debug)]
struct HttpCase {
    method: u8,
    path: String,
    headers: Vec<(u8, u8)>,
}

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

fn policy_doc(i: usize, p: &PolicyCase) -> Option<Document<AuthorizationPolicySpec>> {
    let rules: Vec<Value> = p
        .rules
        .iter()
        .take(4)
        .map(|RuleCase { from, to }| {
            let from: Vec<Value> = from
                .iter()
                .take(3)
                .map(|(k, a, b)| match k % 3 {
                    0 => json!({"principals": [pick(&PRINCIPALS, *a), pick(&PRINCIPALS, *b)]}),
                    1 => json!({"namespaces": [pick(&NAMESPACES, *a)]}),
                    _ => json!({"serviceAccounts": [pick(&ACCOUNTS, *a), pick(&ACCOUNTS, *b)]}),
                })
                .collect();
            let to: Vec<Value> = to.iter().take(3).map(|o| json!({
            "ports": o.ports.iter().take(3).map(|p| 8000 + u16::from(p % 3)).collect::<Vec<_>>(),
            "methods": o.methods.iter().take(3).map(|m| pick(&METHODS, *m)).collect::<Vec<_>>(),
            "paths": o.paths.iter().take(3).map(|m| pick(&PATHS, *m)).collect::<Vec<_>>(),
            "headers": o.headers.iter().take(2).map(|(n, v, re)| json!({
                "name": pick(&HEADERS, *n), "value": pick(&VALUES, *v),
                "type": if *re { "RegularExpression" } else { "Exact" },
            })).collect::<Vec<_>>(),
        })).collect();
            json!({"from": from, "to": to})
        })
        .collect();
    let doc = json!({
        "apiVersion": "weft.dev/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": format!("p{i}"), "namespace": pick(&NAMESPACES, p.ns)},
        "spec": {
            "action": if p.deny { "DENY" } else { "ALLOW" },
            "mode": if p.audit { "audit" } else { "enforce" },
            "rules": rules,
        },
    });
    serde_json::from_value(doc).ok()
}

/// The proxy's verdict and `weftctl why`'s explanation agree on every generated case.
pub fn authz_why(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(policies) = Vec::<PolicyCase>::arbitrary(&mut u) else {
        return;
    };
    let Ok(req) = RequestCase::arbitrary(&mut u) else {
        return;
    };
    let docs: Vec<_> = policies
        .iter()
        .take(5)
        .enumerate()
        .filter_map(|(i, p)| policy_doc(i, p))
        .collect();
    let Ok(authorizer) = Authorizer::compile(&docs, REGEX_LIMIT) else {
        return;
    };
    let source = req.source.map(|(ns, sa)| {
        let raw = format!(
            "spiffe://fuzz.local/ns/{}/sa/{}",
            pick(&NAMESPACES, ns),
            pick(&["reviews", "web"], sa)
        );
        SpiffeId::parse(&raw).expect("a workload ID")
    });
    let mut headers = http::HeaderMap::new();
    let http = match &req.http {
        Some(HttpCase {
            method: m,
            path,
            headers: hs,
        }) => {
            for (n, v) in hs.iter().take(3) {
                headers.append(
                    pick(&HEADERS, *n),
                    http::HeaderValue::from_static(pick(&VALUES, *v)),
                );
            }
            // The proxy checks the normalised path; a path that does not normalise is a 400 before any policy.
            let Ok(path) = normalize(path) else {
                return;
            };
            Some((pick(&METHODS, *m), path))
        }
        None => None,
    };
    let subject = Subject {
        source: source.as_ref(),
        port: 8000 + u16::from(req.port % 3),
        http: http.as_ref().map(|(method, path)| HttpSubject {
            method,
            path,
            headers: &headers,
        }),
    };
    let verdict = authorizer.check(&subject);
    let why = authorizer.explain(&subject);
    match &verdict.decision {
        Decision::Allow => assert!(
            why.decision.allowed,
            "proxy allows, why says denied: {why:?}"
        ),
        Decision::Deny(d) => {
            assert!(
                !why.decision.allowed,
                "proxy denies ({d:?}), why says allowed"
            );
            assert_eq!(why.decision.policy.as_deref(), Some(d.policy.as_str()));
            assert_eq!(why.decision.reason, d.reason);
        }
    }
    match &verdict.audit {
        None => assert!(why.audit.allowed, "{why:?}"),
        Some(d) => {
            assert!(!why.audit.allowed);
            assert_eq!(why.audit.policy.as_deref(), Some(d.policy.as_str()));
        }
    }
}

const SEGMENTS: [&str; 6] = ["a", "b", "ab", "", ".", "a.b"];

fn path_of(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let n = u.int_in_range(0..=4)?;
    let mut p = String::new();
    for _ in 0..n {
        p.push('/');
        p.push_str(SEGMENTS[usize::from(u.arbitrary::<u8>()?) % SEGMENTS.len()]);
    }
    Ok(if p.is_empty() { "/".into() } else { p })
}

/// Router and authorizer agree on the same normalised path where they claim the same semantics.
pub fn route_authz(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(pattern), Ok(path), Ok(prefix)) =
        (path_of(&mut u), path_of(&mut u), u.arbitrary::<bool>())
    else {
        return;
    };
    // Patterns as an operator writes them for both: normalised, no trailing slash but the root.
    if normalize(&pattern).as_ref() != Ok(&pattern) || (pattern.len() > 1 && pattern.ends_with('/'))
    {
        return;
    }
    let Ok(path) = normalize(&path) else {
        return;
    };
    let kind = if prefix { "PathPrefix" } else { "Exact" };
    let route: Document<HttpRouteSpec> = serde_json::from_value(json!({
        "apiVersion": "weft.dev/v1", "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": {"parentRefs": [{"name": "svc"}], "rules": [{
            "matches": [{"path": {"type": kind, "value": pattern}}],
            "backendRefs": [{"name": "svc"}],
        }]},
    }))
    .expect("route document");
    let table = RouteTable::compile(&[route], REGEX_LIMIT).expect("route compiles");
    let headers = http::HeaderMap::new();
    let view = RequestView {
        method: &http::Method::GET,
        path: &path,
        query: None,
        headers: &headers,
    };
    let routed = table.policy("default", "svc", 80, Some(&view)).is_some();

    let mut paths = vec![pattern.clone()];
    if prefix {
        paths.push(format!("{}/*", pattern.trim_end_matches('/')));
    }
    let policy: Document<AuthorizationPolicySpec> = serde_json::from_value(json!({
        "apiVersion": "weft.dev/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"action": "ALLOW", "rules": [{"to": [{"paths": paths}]}]},
    }))
    .expect("policy document");
    let authorizer = Authorizer::compile(&[policy], REGEX_LIMIT).expect("policy compiles");
    let subject = Subject {
        source: None,
        port: 80,
        http: Some(HttpSubject {
            method: "GET",
            path: &path,
            headers: &headers,
        }),
    };
    let allowed = authorizer.check(&subject).decision == Decision::Allow;
    assert_eq!(
        routed, allowed,
        "{kind} {pattern:?} on {path:?}: router {routed}, authorizer {allowed}"
    );
}
