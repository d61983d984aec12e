use super::normalize::normalize;
use super::*;
use crate::resources::parse_documents;

fn authorizer(yaml: &str) -> Authorizer {
    let docs: Vec<Document<AuthorizationPolicySpec>> = parse_documents("p.yaml", yaml)
        .unwrap()
        .into_iter()
        .map(|p| match p.resource {
            crate::resources::Resource::AuthorizationPolicy(d) => d,
            other => panic!("not a policy: {other:?}"),
        })
        .collect();
    Authorizer::compile(&docs, 64 * 1024).unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://mesh.test/{s}")).unwrap()
}

fn http(
    a: &Authorizer,
    from: Option<&SpiffeId>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Decision {
    let mut h = http::HeaderMap::new();
    for (k, v) in headers {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    a.check(&Subject {
        source: from,
        port: 9080,
        http: Some(HttpSubject {
            method,
            path,
            headers: &h,
        }),
    })
    .decision
}

fn tcp(a: &Authorizer, from: Option<&SpiffeId>, port: u16) -> Decision {
    a.check(&Subject {
        source: from,
        port,
        http: None,
    })
    .decision
}

const RATINGS: &str = "\
apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: ratings-callers, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{serviceAccounts: [shop/reviews]}]
    to: [{methods: [GET], paths: [/ratings/*], ports: [9080]}]
  - from: [{principals: [spiffe://mesh.test/ns/ops/sa/admin]}]
---
apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: no-debug, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{headers: [{name: x-debug, value: \"1\"}]}]
";

#[test]
fn allow_and_deny_exactly_as_written() {
    let a = authorizer(RATINGS);
    let reviews = id("ns/shop/sa/reviews");
    let other = id("ns/shop/sa/frontend");
    let admin = id("ns/ops/sa/admin");
    assert_eq!(
        http(&a, Some(&reviews), "GET", "/ratings/1", &[]),
        Decision::Allow
    );
    let denied = |d: Decision| match d {
        Decision::Deny(d) => d,
        Decision::Allow => panic!("allowed"),
    };
    let d = denied(http(&a, Some(&reviews), "POST", "/ratings/1", &[]));
    assert_eq!(d.policy, "shop/ratings-callers", "{d:?}");
    assert_eq!(d.reason, "no ALLOW policy matched");
    denied(http(&a, Some(&reviews), "GET", "/reviews/1", &[]));
    denied(http(&a, Some(&other), "GET", "/ratings/1", &[]));
    denied(http(&a, None, "GET", "/ratings/1", &[]));
    assert_eq!(
        http(&a, Some(&admin), "DELETE", "/anything", &[]),
        Decision::Allow
    );
    let d = denied(http(&a, Some(&admin), "GET", "/", &[("x-debug", "1")]));
    assert_eq!(d.policy, "shop/no-debug", "deny wins over allow");
    assert_eq!(d.reason, "matched a DENY policy");
    // Opaque TCP: a DENY rule asking for HTTP fields applies on its other parts (here: to all).
    assert_eq!(denied(tcp(&a, Some(&admin), 5432)).policy, "shop/no-debug");
    // An ALLOW rule with HTTP fields never matches TCP; identity-only rules do.
    let allow_only = authorizer(RATINGS.split("---").next().unwrap());
    denied(tcp(&allow_only, Some(&reviews), 9080));
    assert_eq!(tcp(&allow_only, Some(&admin), 5432), Decision::Allow);
}

#[test]
fn no_policy_allows_mesh_traffic_and_an_empty_allow_denies_all() {
    let none = Authorizer::default();
    assert_eq!(tcp(&none, Some(&id("ns/a/sa/b")), 1), Decision::Allow);
    let deny_all = authorizer(
        "apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: weft-system}\nspec: {action: ALLOW}\n",
    );
    assert!(matches!(
        tcp(&deny_all, Some(&id("ns/a/sa/b")), 1),
        Decision::Deny(_)
    ));
    assert!(matches!(
        http(&deny_all, Some(&id("ns/a/sa/b")), "GET", "/", &[]),
        Decision::Deny(_)
    ));
}

#[test]
fn namespaces_principals_wildcards_and_header_regex() {
    let a = authorizer(
        "apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{namespaces: [shop]}]
  - from: [{principals: [\"*\"]}]
    to: [{paths: [\"*.json\"], headers: [{name: x-env, type: RegularExpression, value: \"dev|qa\"}]}]
",
    );
    let inside = id("ns/shop/sa/x");
    let outside = id("ns/other/sa/x");
    assert_eq!(http(&a, Some(&inside), "GET", "/x", &[]), Decision::Allow);
    assert!(matches!(
        http(&a, Some(&outside), "GET", "/x", &[]),
        Decision::Deny(_)
    ));
    assert_eq!(
        http(&a, Some(&outside), "GET", "/a/b.json", &[("x-env", "qa")]),
        Decision::Allow
    );
    assert!(matches!(
        http(&a, Some(&outside), "GET", "/a/b.json", &[("x-env", "prod")]),
        Decision::Deny(_)
    ));
    assert!(
        matches!(
            http(&a, None, "GET", "/a/b.json", &[("x-env", "qa")]),
            Decision::Deny(_)
        ),
        "`*` is any authenticated caller, not plaintext"
    );
}

#[test]
fn audit_mode_refuses_nothing_and_says_what_it_would() {
    let a = authorizer(
        "apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: would-deny, namespace: shop}
spec:
  action: DENY
  mode: audit
  rules:
  - to: [{paths: [/admin/*]}]
",
    );
    let v = a.check(&Subject {
        source: Some(&id("ns/shop/sa/x")),
        port: 80,
        http: Some(HttpSubject {
            method: "GET",
            path: "/admin/users",
            headers: &http::HeaderMap::new(),
        }),
    });
    assert_eq!(v.decision, Decision::Allow);
    assert_eq!(v.audit.unwrap().policy, "shop/would-deny");
}

/// Spellings of `/admin/...` that must never get past `DENY paths: [/admin, /admin/*]`: each is either
/// refused outright by normalisation (400) or normalised onto the denied path.
const BYPASSES: &[&str] = &[
    "/admin",
    "/admin/",
    "/admin/users",
    "//admin",
    "///admin/users",
    "/./admin",
    "/admin/.",
    "/x/../admin",
    "/x/y/../../admin/users",
    "/../admin",
    "/../../admin/users",
    "/%61dmin",
    "/%61%64%6d%69%6e",
    "/a%64min",
    "/adm%69n/users",
    "/%2e/admin",
    "/%2E%2E/admin",
    "/x/%2e%2e/admin",
    "/x/%2E%2e/admin/users",
    "/.%2e/admin",
    "/admin%2fusers",
    "/admin%2Fusers",
    "/x%2f..%2fadmin",
    "/admin%5cusers",
    "/x%5c..%5cadmin",
    "/admin\\users",
    "/x\\..\\admin",
    "/admin?x=/public",
    "/admin#/public",
    "/admin%2F",
    "/admin%00",
    "/admin%00.json",
    "/admin%0d%0a",
    "/admin/%2e",
    "/admin/./users",
    "/admin//users",
    "/public/../admin",
    "/public/%2e%2e/admin",
    "/public/..%2fadmin",
    "/admin%",
    "/admin%g0",
];

#[test]
fn no_spelling_of_a_denied_path_gets_through() {
    let a = authorizer(
        "apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{paths: [/admin, /admin/*]}]
",
    );
    assert!(BYPASSES.len() >= 30);
    let caller = id("ns/shop/sa/x");
    for raw in BYPASSES {
        match normalize(raw) {
            Err(_) => {} // refused with 400 before any policy
            Ok(path) => assert!(
                matches!(
                    http(&a, Some(&caller), "GET", &path, &[]),
                    Decision::Deny(_)
                ),
                "{raw} normalised to {path} got through"
            ),
        }
    }
    for fine in ["/public", "/administrator", "/public/admin"] {
        let path = normalize(fine).unwrap();
        assert_eq!(
            http(&a, Some(&caller), "GET", &path, &[]),
            Decision::Allow,
            "{fine}"
        );
    }
}

#[test]
fn explain_names_the_policy_and_rule_that_decided() {
    let a = authorizer(RATINGS);
    let h = http::HeaderMap::new();
    let subject = |from, method, path| Subject {
        source: from,
        port: 9080,
        http: Some(HttpSubject {
            method,
            path,
            headers: &h,
        }),
    };
    let admin = id("ns/ops/sa/admin");
    let e = a.explain(&subject(Some(&admin), "DELETE", "/x"));
    assert!(e.decision.allowed);
    assert_eq!(e.decision.policy.as_deref(), Some("shop/ratings-callers"));
    assert_eq!(e.decision.rule, Some(1));
    assert_eq!(e.policies.len(), 2);
    assert_eq!(e.policies[1].matched, Some(Some(1)));
    assert_eq!(e.policies[0].matched, None, "the DENY policy's header rule");

    let stranger = id("ns/web/sa/x");
    let e = a.explain(&subject(Some(&stranger), "GET", "/ratings/1"));
    assert!(!e.decision.allowed);
    assert_eq!(e.decision.reason, "no ALLOW policy matched");
    assert_eq!(e.decision.rule, None);
    assert!(e.audit.allowed, "no audit policy: nothing would be denied");

    let open = Authorizer::default().explain(&subject(None, "GET", "/"));
    assert!(open.decision.allowed);
    assert_eq!(open.decision.reason, "no ALLOW policy applies");
    assert!(open.policies.is_empty());
}

#[test]
fn methods_match_whatever_their_case() {
    let a = authorizer(
        "apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-delete, namespace: shop}\nspec:\n  action: DENY\n  rules:\n  - to: [{methods: [DELETE]}]\n",
    );
    let caller = id("ns/shop/sa/frontend");
    for m in ["DELETE", "delete", "DeLeTe"] {
        assert!(
            matches!(http(&a, Some(&caller), m, "/x", &[]), Decision::Deny(_)),
            "{m} must be denied"
        );
    }
    assert_eq!(http(&a, Some(&caller), "GET", "/x", &[]), Decision::Allow);
}
