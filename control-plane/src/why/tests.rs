use super::*;
use weft_api::resources::{parse_documents, Resource};

const MESH: &str = r#"
apiVersion: weft.dev/v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{port: 9080, targetPort: 8080}]
---
apiVersion: weft.dev/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{name: reviews}]
  rules:
    - matches: [{headers: [{name: x-user-group, value: beta}]}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: x-debug, value: "1"}]}
      backendRefs: [{name: reviews, subset: v2}]
    - backendRefs:
        - {name: reviews, subset: v1, weight: 90}
        - {name: reviews, subset: v2, weight: 10}
---
apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: viewers, namespace: shop}
spec:
  action: ALLOW
  rules:
    - from: [{serviceAccounts: [shop/frontend]}]
      to: [{methods: [GET], paths: ["/reviews/*"]}]
---
apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: no-debug-on-v2, namespace: shop}
spec:
  selector: {matchLabels: {version: v2}}
  action: DENY
  rules:
    - to: [{headers: [{name: x-debug, value: "1"}]}]
"#;

fn td() -> TrustDomain {
    TrustDomain::new("mesh.test").unwrap()
}

fn resources() -> MeshResources {
    let mut m = MeshResources::default();
    for p in parse_documents("mesh.yaml", MESH).unwrap() {
        match p.resource {
            Resource::Service(_) => {}
            Resource::HttpRoute(d) => m.routes.push(d),
            Resource::AuthorizationPolicy(d) => m.policies.push(d),
            other => panic!("unexpected {other:?}"),
        }
    }
    m
}

fn endpoint(name: &str, ip: &str, version: &str, sidecar: bool) -> Endpoint {
    Endpoint {
        workload: name.into(),
        address: ip.parse().unwrap(),
        tunnel_port: sidecar.then_some(15008),
        identity: sidecar.then(|| SpiffeId::for_workload(&td(), "shop", "reviews").unwrap()),
        labels: [("app", "reviews"), ("version", version)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ready: true,
    }
}

fn services(endpoints: Vec<Endpoint>) -> Vec<ServiceView> {
    vec![ServiceView {
        name: "reviews".into(),
        namespace: "shop".into(),
        ports: vec![weft_api::resources::ServicePort {
            name: None,
            port: 9080,
            target_port: Some(8080),
            protocol: PortProtocol::Auto,
        }],
        vip: None,
        endpoints,
        traffic_policy: None,
    }]
}

fn ask(
    svcs: &[ServiceView],
    from: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> WhyAnswer {
    let q = WhyRequest {
        from: from.into(),
        to: "shop/reviews".into(),
        method: Some(method.into()),
        path: Some(path.into()),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let registered = vec![(
        "shop/frontend-1".to_string(),
        SpiffeId::for_workload(&td(), "shop", "frontend").unwrap(),
    )];
    explain(&resources(), svcs, &registered, &td(), &q).unwrap()
}

fn both_versions() -> Vec<ServiceView> {
    services(vec![
        endpoint("reviews-v1", "198.18.0.2", "v1", true),
        endpoint("reviews-v2", "198.18.0.3", "v2", true),
    ])
}

#[test]
fn an_allowed_request_names_the_rule_the_split_and_the_policy() {
    let a = ask(&both_versions(), "shop/frontend", "GET", "/reviews/1", &[]);
    assert_eq!(a.verdict, "allowed", "{a:#?}");
    assert_eq!(a.source, "spiffe://mesh.test/ns/shop/sa/frontend");
    assert_eq!(a.source_workloads, ["shop/frontend-1"]);
    assert_eq!(a.route.rule.as_deref(), Some("shop/reviews rules[1]"));
    let split: Vec<(Option<&str>, f64)> = a
        .route
        .backends
        .iter()
        .map(|b| (b.subset.as_deref(), b.percent))
        .collect();
    assert_eq!(split, [(Some("v1"), 90.0), (Some("v2"), 10.0)]);
    assert_eq!(a.endpoints.len(), 2);
    let x = a.endpoints[0].authorization.as_ref().unwrap();
    assert_eq!(x.decision.policy.as_deref(), Some("shop/viewers"));
    assert_eq!(x.decision.rule, Some(0));
    assert!(
        a.summary.contains("allowed by shop/viewers rules[0]"),
        "{}",
        a.summary
    );
}

#[test]
fn a_denied_request_names_the_policy_and_the_normalised_path_is_shown() {
    let a = ask(
        &both_versions(),
        "shop/frontend",
        "DELETE",
        "/reviews/1",
        &[],
    );
    assert_eq!(a.verdict, "denied");
    assert!(
        a.summary.contains("no ALLOW policy matched"),
        "{}",
        a.summary
    );

    let a = ask(
        &both_versions(),
        "shop/frontend",
        "GET",
        "/x/../reviews//%31",
        &[],
    );
    assert_eq!(a.verdict, "allowed", "{a:#?}");
    assert_eq!(a.endpoints[0].matched_path.as_deref(), Some("/reviews/1"));

    let a = ask(
        &both_versions(),
        "shop/frontend",
        "GET",
        "/reviews%2F1",
        &[],
    );
    assert_eq!(a.verdict, "denied");
    assert_eq!(a.endpoints[0].decision, "bad path");

    let a = ask(&both_versions(), "web/stranger", "GET", "/reviews/1", &[]);
    assert_eq!(a.verdict, "denied");
    assert!(a.source_workloads.is_empty());
}

#[test]
fn header_edits_of_the_rule_are_what_the_destination_judges() {
    // The beta rule sends to v2 and sets x-debug: 1, which v2's DENY policy refuses.
    let a = ask(
        &both_versions(),
        "shop/frontend",
        "GET",
        "/reviews/1",
        &[("x-user-group", "beta")],
    );
    assert_eq!(a.route.rule.as_deref(), Some("shop/reviews rules[0]"));
    assert_eq!(a.endpoints.len(), 1, "only v2 is a backend");
    assert_eq!(a.verdict, "denied");
    assert!(
        a.summary.contains("shop/no-debug-on-v2 rules[0]"),
        "{}",
        a.summary
    );
}

#[test]
fn partly_denied_when_policies_differ_between_endpoints() {
    let a = ask(
        &both_versions(),
        "shop/frontend",
        "GET",
        "/reviews/1",
        &[("x-debug", "1")],
    );
    assert_eq!(a.verdict, "partly denied", "{a:#?}");
    assert!(
        a.summary.starts_with("1 of 2 ready endpoints"),
        "{}",
        a.summary
    );
}

#[test]
fn no_ready_endpoint_and_no_sidecar_are_said() {
    let mut eps = vec![endpoint("reviews-v1", "198.18.0.2", "v1", true)];
    eps[0].ready = false;
    let a = ask(&services(eps), "shop/frontend", "GET", "/reviews/1", &[]);
    assert_eq!(a.verdict, "no endpoint");
    assert!(a.summary.contains("503 no_endpoint"), "{}", a.summary);

    let a = ask(
        &services(vec![endpoint("legacy", "198.18.0.9", "v1", false)]),
        "shop/frontend",
        "DELETE",
        "/anything",
        &[],
    );
    assert_eq!(a.verdict, "allowed");
    assert_eq!(a.endpoints[0].decision, "not checked");
}

#[test]
fn bad_questions_name_what_is_wrong() {
    let q = |from: &str, to: &str, port: Option<u16>| WhyRequest {
        from: from.into(),
        to: to.into(),
        port,
        ..Default::default()
    };
    let run = |q: WhyRequest| explain(&resources(), &both_versions(), &[], &td(), &q).unwrap_err();
    assert!(run(q("frontend", "shop/reviews", None))
        .to_string()
        .contains("NAMESPACE/SERVICE_ACCOUNT"));
    assert!(run(q("spiffe://other.td/ns/a/sa/b", "shop/reviews", None))
        .to_string()
        .contains("trust domain"));
    let e = run(q("shop/frontend", "shop/ratings", None));
    assert!(e.is_not_found() && e.to_string().contains("shop/ratings"));
    let e = run(q("shop/frontend", "shop/reviews", Some(1)));
    assert!(e.to_string().contains("its ports: 9080"), "{e}");
}
