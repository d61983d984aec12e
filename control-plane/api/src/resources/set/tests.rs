use super::*;
use crate::resources::parse_documents;

fn parse(file: &str, text: &str) -> Vec<Parsed> {
    match parse_documents(file, text) {
        Ok(p) => p,
        Err(e) => panic!("does not parse: {e:#?}"),
    }
}

/// A Service document (6 lines) with the given ports.
fn service(name: &str, ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("{{port: {p}}}")).collect();
    format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports: [{}]\n",
        ports.join(", ")
    )
}

/// An HTTPRoute document (11 lines) on Service `parent`, sending to `backend` on `port`.
fn route(name: &str, parent: &str, backend: &str, port: u16) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\nspec:\n  parentRefs:\n  - name: {parent}\n  rules:\n  - backendRefs:\n    - name: {backend}\n      port: {port}\n"
    )
}

fn key(kind: Kind, name: &str) -> ResourceKey {
    ResourceKey {
        kind,
        namespace: "default".into(),
        name: name.into(),
    }
}

fn actions(changes: &[Change]) -> Vec<(String, ChangeAction)> {
    changes
        .iter()
        .map(|c| (c.key.to_string(), c.action))
        .collect()
}

fn with_reviews() -> ResourceSet {
    let mut set = ResourceSet::new();
    let docs = parse("base.yaml", &service("reviews", &[9080, 9090]));
    set.apply(&docs).unwrap();
    set
}

#[track_caller]
fn one_error(result: Result<Vec<Change>, Vec<YamlError>>) -> YamlError {
    let mut e = result.unwrap_err();
    assert_eq!(e.len(), 1, "{e:#?}");
    e.remove(0)
}

#[test]
fn apply_creates_then_reports_unchanged() {
    let mut set = ResourceSet::new();
    let docs = parse("s.yaml", &service("reviews", &[9080]));
    let changes = set.apply(&docs).unwrap();
    assert_eq!(
        actions(&changes),
        [("Service default/reviews".into(), ChangeAction::Created)]
    );
    assert!(
        changes[0].diff.contains("+  - port: 9080"),
        "{}",
        changes[0].diff
    );
    assert_eq!(set.revision(), 1);
    let again = set.apply(&docs).unwrap();
    assert_eq!(again[0].action, ChangeAction::Unchanged);
    assert_eq!(again[0].diff, "");
    assert_eq!(set.revision(), 1);
}

#[test]
fn apply_configures_with_a_diff() {
    let mut set = with_reviews();
    let changes = set
        .apply(&parse("s.yaml", &service("reviews", &[9080])))
        .unwrap();
    assert_eq!(changes[0].action, ChangeAction::Configured);
    assert!(
        changes[0].diff.contains("-  - port: 9090"),
        "{}",
        changes[0].diff
    );
    assert_eq!(set.revision(), 2);
}

#[test]
fn check_new_changes_nothing() {
    let set = with_reviews();
    let before = set.clone();
    let changes = set
        .check_new(&parse("r.yaml", &route("r", "reviews", "reviews", 9080)))
        .unwrap();
    assert_eq!(changes[0].action, ChangeAction::Created);
    assert_eq!(set, before);
}

#[test]
fn get_filters_by_namespace_and_name() {
    let mut set = with_reviews();
    let other =
        service("ratings", &[80]).replace("  name: ratings", "  name: ratings\n  namespace: shop");
    set.apply(&parse("o.yaml", &other)).unwrap();
    assert_eq!(set.get(Kind::Service, None, None).len(), 2);
    assert_eq!(set.get(Kind::Service, Some("shop"), None).len(), 1);
    assert_eq!(set.get(Kind::Service, None, Some("reviews")).len(), 1);
    assert!(set.get(Kind::HttpRoute, None, None).is_empty());
    let stored = set.stored(&key(Kind::Service, "reviews")).unwrap();
    assert_eq!(stored.origin, Origin::Api);
}

#[test]
fn duplicate_names_in_one_change_name_both_places() {
    let text = format!(
        "{}---\n{}",
        service("reviews", &[1]),
        service("reviews", &[2])
    );
    let e = one_error(ResourceSet::new().check_new(&parse("dup.yaml", &text)));
    assert_eq!(e.file, "dup.yaml");
    assert_eq!((e.line, e.field.as_str()), (Some(11), "metadata.name"));
    assert!(e.reason.contains("also defined at dup.yaml:1"), "{e}");
}

#[test]
fn duplicates_across_files_of_one_change() {
    let mut docs = parse("a.yaml", &service("reviews", &[1]));
    docs.extend(parse("b.yaml", &service("reviews", &[1])));
    let e = one_error(ResourceSet::new().check_new(&docs));
    assert_eq!(e.file, "b.yaml");
    assert!(e.reason.contains("a.yaml:1"), "{e}");
}

#[test]
fn dangling_backend_is_located_in_the_route() {
    let set = with_reviews();
    let text = format!(
        "{}---\n{}",
        service("other", &[1]),
        route("r", "reviews", "ratings", 9080)
    );
    let e = one_error(set.check_new(&parse("r.yaml", &text)));
    assert_eq!(e.file, "r.yaml");
    assert_eq!(
        (e.line, e.field.as_str()),
        (Some(17), "spec.rules[0].backendRefs[0].name")
    );
    assert!(
        e.reason.contains("Service default/ratings does not exist"),
        "{e}"
    );
}

#[test]
fn missing_backend_port_is_located_at_the_port() {
    let e =
        one_error(with_reviews().check_new(&parse("r.yaml", &route("r", "reviews", "reviews", 1))));
    assert_eq!(
        (e.line, e.field.as_str()),
        (Some(11), "spec.rules[0].backendRefs[0].port")
    );
    assert!(e.reason.contains("has no port 1"), "{e}");
}

#[test]
fn dangling_parent() {
    let e =
        one_error(with_reviews().check_new(&parse("r.yaml", &route("r", "nope", "reviews", 9080))));
    assert_eq!(
        (e.line, e.field.as_str()),
        (Some(7), "spec.parentRefs[0].name")
    );
}

#[test]
fn a_route_and_its_service_in_one_change() {
    let text = format!(
        "{}---\n{}",
        route("r", "ratings", "ratings", 80),
        service("ratings", &[80])
    );
    let mut set = ResourceSet::new();
    let changes = set.apply(&parse("both.yaml", &text)).unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(set.len(), 2);
}

#[test]
fn dropping_a_port_a_route_uses_is_refused_at_the_service() {
    let mut set = with_reviews();
    set.apply(&parse("r.yaml", &route("r", "reviews", "reviews", 9090)))
        .unwrap();
    let e = one_error(set.check_new(&parse(
        "s.yaml",
        &format!("# c\n{}", service("reviews", &[9080])),
    )));
    assert_eq!(e.file, "s.yaml");
    assert_eq!((e.line, e.field.as_str()), (Some(7), "spec.ports"));
    assert!(e.reason.contains("port 9090 is still used by HTTPRoute default/r (api) at spec.rules[0].backendRefs[0].port"), "{e}");
}

#[test]
fn second_mesh_config_is_refused() {
    let mesh = "apiVersion: weft.dev/v1\nkind: MeshConfig\nmetadata: {name: default}\nspec: {}\n";
    let mut set = ResourceSet::new();
    set.apply(&parse("m.yaml", mesh)).unwrap();
    let other = mesh.replace("{name: default}", "{name: default, namespace: weft-system}");
    let e = one_error(set.check_new(&parse("m2.yaml", &other)));
    assert_eq!(
        (e.file.as_str(), e.line, e.field.as_str()),
        ("m2.yaml", Some(3), "metadata.name")
    );
    assert!(e.reason.contains("MeshConfig default/default (api)"), "{e}");
    // Replacing the one there is is fine.
    set.apply(&parse(
        "m.yaml",
        &mesh.replace("{}", "{mtlsMode: PERMISSIVE}"),
    ))
    .unwrap();
}

#[test]
fn document_rules_are_part_of_the_check() {
    let text = format!("{}---\n{}", service("a", &[80]), service("B", &[0]));
    let e = ResourceSet::new()
        .check_new(&parse("v.yaml", &text))
        .unwrap_err();
    let shown: Vec<_> = e.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        shown,
        [
            (Some(11), "metadata.name"),
            (Some(13), "spec.ports[0].port")
        ]
    );
}

#[test]
fn a_refused_change_changes_nothing() {
    let mut set = with_reviews();
    let before = set.clone();
    let text = format!(
        "{}---\n{}",
        service("ok", &[80]),
        route("r", "reviews", "missing", 80)
    );
    assert!(set.apply(&parse("x.yaml", &text)).is_err());
    assert_eq!(set, before);
}

#[test]
fn remove_refuses_while_referenced() {
    let mut set = with_reviews();
    set.apply(&parse("r.yaml", &route("r", "reviews", "reviews", 9080)))
        .unwrap();
    let err = set.remove(&key(Kind::Service, "reviews")).unwrap_err();
    let RemoveError::InUse { by, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(by.len(), 2);
    assert!(
        err.to_string()
            .contains("HTTPRoute default/r (api) at spec.parentRefs[0].name"),
        "{err}"
    );
    let change = set.remove(&key(Kind::HttpRoute, "r")).unwrap();
    assert_eq!(change.action, ChangeAction::Deleted);
    assert!(change.diff.starts_with("@@ -1,"), "{}", change.diff);
    set.remove(&key(Kind::Service, "reviews")).unwrap();
    assert!(set.is_empty());
    assert_eq!(set.revision(), 4);
}

#[test]
fn remove_unknown() {
    let err = ResourceSet::new()
        .remove(&key(Kind::Service, "x"))
        .unwrap_err();
    assert_eq!(err, RemoveError::NotFound(key(Kind::Service, "x")));
}

#[test]
fn check_remove_changes_nothing() {
    let set = with_reviews();
    set.check_remove(&key(Kind::Service, "reviews")).unwrap();
    assert_eq!(set.len(), 1);
}

// === watched directories ===

const DIR: &str = "/etc/weft/";

fn dir_docs(files: &[(&str, String)]) -> Vec<Parsed> {
    files
        .iter()
        .flat_map(|(name, text)| parse(&format!("{DIR}{name}"), text))
        .collect()
}

#[test]
fn replace_source_owns_its_files() {
    let mut set = ResourceSet::new();
    let docs = dir_docs(&[("s.yaml", format!("# c\n---\n{}", service("reviews", &[80])))]);
    let changes = set.replace_source(DIR, &docs).unwrap();
    assert_eq!(changes[0].action, ChangeAction::Created);
    let origin = &set.stored(&key(Kind::Service, "reviews")).unwrap().origin;
    assert_eq!(origin.to_string(), "/etc/weft/s.yaml:3");
    let err = set.remove(&key(Kind::Service, "reviews")).unwrap_err();
    assert!(matches!(err, RemoveError::OwnedByFile { .. }), "{err}");
    let e = one_error(set.check_new(&parse("api.yaml", &service("reviews", &[81]))));
    assert!(
        e.reason
            .contains("comes from the watched file /etc/weft/s.yaml:3"),
        "{e}"
    );
}

#[test]
fn replace_source_removes_what_is_gone() {
    let mut set = ResourceSet::new();
    let both = dir_docs(&[
        ("a.yaml", service("a", &[80])),
        ("b.yaml", service("b", &[80])),
    ]);
    set.replace_source(DIR, &both).unwrap();
    let changes = set
        .replace_source(DIR, &dir_docs(&[("a.yaml", service("a", &[80]))]))
        .unwrap();
    assert_eq!(
        actions(&changes),
        [
            ("Service default/a".into(), ChangeAction::Unchanged),
            ("Service default/b".into(), ChangeAction::Deleted),
        ]
    );
    assert_eq!(set.len(), 1);
    assert_eq!(set.revision(), 2);
}

#[test]
fn replace_source_is_all_or_nothing() {
    let mut set = ResourceSet::new();
    set.replace_source(DIR, &dir_docs(&[("a.yaml", service("a", &[80]))]))
        .unwrap();
    let before = set.clone();
    let docs = dir_docs(&[
        ("a.yaml", service("a", &[81])),
        ("b.yaml", service("b", &[0])),
    ]);
    let e = one_error(set.replace_source(DIR, &docs));
    assert_eq!((e.file.as_str(), e.line), ("/etc/weft/b.yaml", Some(6)));
    assert_eq!(set, before);
}

#[test]
fn replace_source_leaves_other_sources_alone() {
    let mut set = with_reviews();
    set.replace_source(
        "/other/",
        &[parse("/other/x.yaml", &service("x", &[1])).remove(0)],
    )
    .unwrap();
    set.replace_source(DIR, &[]).unwrap();
    assert_eq!(set.len(), 2);
}

#[test]
fn replace_source_refuses_what_the_api_owns() {
    let mut set = with_reviews();
    let e = one_error(set.replace_source(DIR, &dir_docs(&[("s.yaml", service("reviews", &[1]))])));
    assert_eq!((e.line, e.field.as_str()), (Some(4), "metadata.name"));
    assert!(e.reason.contains("applied through the API"), "{e}");
}

#[test]
fn replace_source_refuses_files_outside_its_prefix() {
    let e = one_error(
        ResourceSet::new().replace_source(DIR, &parse("/tmp/x.yaml", &service("x", &[1]))),
    );
    assert!(e.reason.contains("not under /etc/weft/"), "{e}");
}

#[test]
fn removing_a_file_whose_service_a_route_uses() {
    let mut set = ResourceSet::new();
    set.replace_source(DIR, &dir_docs(&[("s.yaml", service("reviews", &[80]))]))
        .unwrap();
    set.apply(&parse("r.yaml", &route("r", "reviews", "reviews", 80)))
        .unwrap();
    let e = one_error(set.replace_source(DIR, &[]));
    assert_eq!((e.file.as_str(), e.line), ("/etc/weft/s.yaml", Some(1)));
    assert!(
        e.reason.contains(
            "Service default/reviews would be removed, but \
             HTTPRoute default/r (api) at spec.parentRefs[0].name, \
             HTTPRoute default/r (api) at spec.rules[0].backendRefs[0].name still refer to it"
        ),
        "{e}"
    );
}

#[test]
fn restore_keeps_entries_and_revision() {
    let mut set = with_reviews();
    set.replace_source(DIR, &dir_docs(&[("a.yaml", service("a", &[80]))]))
        .unwrap();
    let saved = serde_json::to_string(&set.iter().collect::<Vec<_>>()).unwrap();
    let entries: Vec<Stored> = serde_json::from_str(&saved).unwrap();
    let back = ResourceSet::restore(entries, set.revision());
    assert_eq!(back, set);
}
