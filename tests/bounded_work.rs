//! The operator API under the worst resource documents that fit its size limits (issue 17): deep flow
//! and block nesting, an alias bomb, too many documents, too many keys, a document over the size
//! limit, and, beside them, a valid apply as large as real meshes get. All are sent at once to a real
//! `weft-control`. Each gets its own answer (refusals naming file, line and limit) within a bound;
//! while they are in flight `/live`, `token create` and `get` answer within a second; nothing of a
//! refused apply is applied, and a good apply works afterwards.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft::control::ControlProc;

/// How long any one worst case may take to be answered (a busy answer and its retries included).
const CASE_BOUND: Duration = Duration::from_secs(60);
/// How long `/live`, `token create` and `get` may take while the worst cases run.
const PROBE_BOUND: Duration = Duration::from_secs(1);

struct Case {
    file: &'static str,
    text: String,
    /// The status and a piece of the answer's details (empty for an apply that succeeds).
    status: u16,
    says: String,
}

fn service(name: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\n\
         spec:\n  selector: {{app: {name}}}\n  ports:\n  - name: http\n    port: 9080\n"
    )
}

/// A valid document that is refused along with the bad one after it: nothing of a refused apply lands.
fn keeper(case: &str) -> String {
    format!("{}---\n", service(&format!("kept-{case}")))
}

fn header(kind: &str, name: &str) -> String {
    format!("apiVersion: weft.dev/v1\nkind: {kind}\nmetadata: {{name: {name}}}\n")
}

/// A 2,000-service mesh: a Service, a Workload, an HTTPRoute and an AuthorizationPolicy each.
fn mesh(services: usize) -> String {
    let mut text = String::new();
    for i in 0..services {
        let n = format!("svc-{i}");
        text.push_str(&service(&n));
        text.push_str(&format!(
            "---\napiVersion: weft.dev/v1\nkind: Workload\nmetadata:\n  name: {n}-v1\n  \
             labels: {{app: {n}, version: v1}}\nspec:\n  address: 10.{}.{}.{}\n---\n",
            i / 62_500 % 250,
            i / 250 % 250,
            i % 250 + 1,
        ));
        text.push_str(&format!(
            "{}spec:\n  parentRefs: [{{name: {n}}}]\n  rules:\n  - backendRefs: [{{name: {n}, weight: 100}}]\n---\n",
            header("HTTPRoute", &n)
        ));
        text.push_str(&format!(
            "{}spec:\n  selector: {{matchLabels: {{app: {n}}}}}\n  action: ALLOW\n  rules:\n  - from: [{{namespaces: [default]}}]\n---\n",
            header("AuthorizationPolicy", &n)
        ));
    }
    text
}

fn cases() -> Vec<Case> {
    let deep = 400_000;
    let mut cases = vec![Case {
        file: "deep-flow.yaml",
        // The fifth line of the bad document: `spec: ` then 63 brackets fit, the 64th does not.
        text: format!(
            "{}{}spec: {}{}\n",
            keeper("flow"),
            header("Service", "deep"),
            "[".repeat(deep),
            "]".repeat(deep)
        ),
        status: 400,
        says: format!(
            "deep-flow.yaml:{}:70: nesting deeper than 64 levels",
            service("x").lines().count() + 5
        ),
    }];
    let block: String = (0..300)
        .map(|i| format!("{}k{i}:\n", "  ".repeat(i + 1)))
        .collect();
    cases.push(Case {
        file: "deep-block.yaml",
        text: format!(
            "{}{}spec:\n{block}",
            keeper("block"),
            header("MeshConfig", "default")
        ),
        status: 400,
        says: format!(
            "deep-block.yaml:{}:129: nesting deeper than 64 levels",
            // The keeper and its `---`, four lines of header, then 63 levels that fit.
            service("x").lines().count() + 1 + 4 + 64
        ),
    });
    let mut bomb = format!(
        "{}{}spec:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
        keeper("bomb"),
        header("MeshConfig", "default")
    );
    for i in 1..40 {
        let p = format!("*a{}", i - 1);
        bomb.push_str(&format!("  a{i}: &a{i} [{}]\n", vec![p; 10].join(", ")));
    }
    cases.push(Case {
        file: "alias-bomb.yaml",
        text: bomb,
        status: 400,
        says: format!(
            "alias-bomb.yaml:{}:7: anchors and aliases",
            service("x").lines().count() + 1 + 5
        ),
    });
    let many: String = (0..60_000)
        .map(|i| {
            format!(
                "{}spec: {{ports: [{{port: 80}}]}}\n---\n",
                header("Service", &format!("m{i}"))
            )
        })
        .collect();
    cases.push(Case {
        file: "many-documents.yaml",
        text: format!("{}{many}", keeper("many")),
        status: 400,
        says: "more than 50000 documents in one apply".into(),
    });
    let keys: String = (0..60_000).map(|i| format!("    k{i}: v\n")).collect();
    cases.push(Case {
        file: "many-keys.yaml",
        text: format!(
            "{}apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: keys\n  labels:\n{keys}spec:\n  ports: [{{port: 80}}]\n",
            keeper("keys")
        ),
        status: 400,
        says: "more than 100000 nodes in one document".into(),
    });
    cases.push(Case {
        file: "huge-document.yaml",
        text: format!(
            "{}{}  annotations: {{note: {}}}\nspec: {{ports: [{{port: 80}}]}}\n",
            keeper("huge"),
            header("Service", "huge").replace("{name: huge}", "\n  name: huge"),
            "x".repeat(1_100_000)
        ),
        status: 413,
        says: "the limit is 1048576 bytes per document".into(),
    });
    // Valid and large: a 2,000-service mesh, and one document just under the size limit.
    let notes: String = (0..1000)
        .map(|i| format!("    note{i}: {}\n", "n".repeat(1000)))
        .collect();
    cases.push(Case {
        file: "mesh.yaml",
        text: format!(
            "{}---\napiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: annotated\n  annotations:\n{notes}spec:\n  ports: [{{port: 80}}]\n",
            mesh(2000)
        ),
        status: 200,
        says: String::new(),
    });
    cases
}

fn body(file: &str, text: &str) -> String {
    serde_json::json!({ "files": [{ "name": file, "text": text }] }).to_string()
}

/// Sends one case, retrying while the answer is "busy" (503 with Retry-After); counts itself in
/// flight while its request is with the server.
fn send(cp: &ControlProc, case: &Case, in_flight: &AtomicUsize) -> (u16, String, Duration) {
    let body = body(case.file, &case.text);
    let started = Instant::now();
    loop {
        in_flight.fetch_add(1, Ordering::SeqCst);
        let answer = cp.request("POST", "/v1/apply", Some(&body), true);
        in_flight.fetch_sub(1, Ordering::SeqCst);
        let (status, text) = answer.unwrap_or_else(|e| panic!("{}: {e}", case.file));
        let busy = status == 503 && text.contains("being read already");
        if !busy || started.elapsed() > CASE_BOUND {
            return (status, text, started.elapsed());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One round of the requests that must stay fast; each answered within [`PROBE_BOUND`].
fn probe(cp: &ControlProc, round: usize) {
    let timed = |what: &str, f: &dyn Fn()| {
        let t = Instant::now();
        f();
        let took = t.elapsed();
        assert!(took < PROBE_BOUND, "{what} took {took:?} in round {round}");
    };
    timed("/live", &|| {
        let (status, _) = weft::net::http_get(cp.operator, "/live").unwrap();
        assert_eq!(status, 200);
    });
    timed("token create", &|| {
        assert!(!cp.token("default", "web", 60).is_empty());
    });
    timed("get", &|| {
        let (status, text) = cp
            .request(
                "GET",
                "/v1/resources/service/default/kept-never",
                None,
                true,
            )
            .unwrap();
        assert_eq!(status, 404, "{text}");
    });
}

fn service_names(cp: &ControlProc) -> Vec<String> {
    let list = cp.api("GET", "/v1/resources/service", None);
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn worst_case_documents_get_their_answers_and_never_delay_the_others() {
    let cp = Arc::new(ControlProc::start("bounded-work"));
    let cases = Arc::new(cases());
    let in_flight = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..cases.len())
        .map(|i| {
            let (cp, cases, in_flight, started) = (
                cp.clone(),
                cases.clone(),
                in_flight.clone(),
                started.clone(),
            );
            std::thread::spawn(move || {
                started.fetch_add(1, Ordering::SeqCst);
                send(&cp, &cases[i], &in_flight)
            })
        })
        .collect();
    // Probing starts once every case is being sent and one is with the server.
    while (started.load(Ordering::SeqCst) < cases.len() || in_flight.load(Ordering::SeqCst) == 0)
        && senders.iter().any(|s| !s.is_finished())
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut rounds_in_flight = 0;
    let mut round = 0;
    while senders.iter().any(|s| !s.is_finished()) {
        probe(&cp, round);
        round += 1;
        if in_flight.load(Ordering::SeqCst) > 0 {
            rounds_in_flight += 1;
        }
    }
    assert!(
        rounds_in_flight > 0,
        "no probe round was answered while a worst case was with the server ({round} rounds)"
    );
    for (case, sender) in cases.iter().zip(senders) {
        let (status, text, took) = sender.join().unwrap();
        eprintln!("{}: {status} after {took:?}", case.file);
        assert_eq!(status, case.status, "{}: {text}", case.file);
        assert!(text.contains(&case.says), "{}: {text}", case.file);
        assert!(took < CASE_BOUND, "{}: answered after {took:?}", case.file);
    }
    // Nothing of a refused apply landed; the valid ones did, whole.
    let names = service_names(&cp);
    assert!(!names.iter().any(|n| n.starts_with("kept-")), "{names:?}");
    assert_eq!(names.len(), 2001, "the mesh and the annotated service");
    let metrics = weft::net::http_get(cp.operator, "/metrics").unwrap().1;
    for reason in ["depth", "alias", "documents", "nodes", "document_bytes"] {
        let line = format!("weft_control_resource_documents_refused_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
    let log = cp.log();
    assert!(log.contains("nesting deeper than 64 levels"), "{log}");
    // And a good apply still works.
    cp.api(
        "POST",
        "/v1/apply",
        Some(&body("after.yaml", &service("after"))),
    );
    assert!(service_names(&cp).contains(&"after".to_string()));
}
