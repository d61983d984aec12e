use super::*;

const SMALL: Limits = Limits {
    max_depth: 4,
    max_nodes: 12,
    max_document_bytes: 200,
    max_documents: 2,
};

const DEPTH_4: Limits = Limits {
    max_depth: 4,
    ..LIMITS
};

fn check(text: &str, limits: &Limits) -> Result<(), LimitError> {
    check_text("f.yaml", text, limits)
}

/// The refusal's limit and `line:column`.
#[track_caller]
fn refused(text: &str, limits: &Limits) -> (Limit, String) {
    let e = check(text, limits).unwrap_err();
    let at = format!("{}:{}", e.error.line.unwrap(), e.error.column.unwrap());
    (e.limit, at)
}

fn flow(depth: usize) -> String {
    format!("a: {}1{}\n", "[".repeat(depth), "]".repeat(depth))
}

fn block(depth: usize) -> String {
    (0..depth)
        .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
        .collect()
}

#[test]
fn flow_nesting_just_under_and_over() {
    // The key is one level, each bracket one more.
    assert!(check(&flow(63), &LIMITS).is_ok());
    assert_eq!(refused(&flow(64), &LIMITS), (Limit::Depth, "1:67".into()));
    let e = check(&flow(64), &LIMITS).unwrap_err();
    assert_eq!(e.to_string(), "f.yaml:1:67: nesting deeper than 64 levels");
}

#[test]
fn block_nesting_just_under_and_over() {
    assert!(check(&block(64), &LIMITS).is_ok());
    assert_eq!(
        refused(&block(65), &LIMITS),
        (Limit::Depth, "65:129".into())
    );
}

#[test]
fn compact_sequences_and_flow_inside_blocks_count_together() {
    assert!(check("- - - 1\n", &SMALL).is_ok());
    assert_eq!(refused("- - - - 1\n", &SMALL).0, Limit::Depth);
    assert!(check("a:\n  b: [1]\n", &SMALL).is_ok());
    assert!(check("a:\n  b: [[1]]\n", &SMALL).is_ok());
    assert_eq!(
        refused("a:\n  b: [[[1]]]\n", &SMALL),
        (Limit::Depth, "2:8".into())
    );
}

#[test]
fn levels_close_when_indentation_returns() {
    let text = "a:\n  b:\n    c: 1\nd:\n  e:\n    f: [1]\n";
    assert!(check(text, &DEPTH_4).is_ok());
}

#[test]
fn nodes_just_under_and_over() {
    let keys = |n: usize| (0..n).map(|i| format!("k{i}: v\n")).collect::<String>();
    // Each `key: value` line is two nodes.
    assert!(check(&keys(6), &SMALL).is_ok());
    assert_eq!(refused(&keys(7), &SMALL), (Limit::Nodes, "7:1".into()));
    assert!(check("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]\n", &SMALL).is_ok());
    assert_eq!(
        refused("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]\n", &SMALL),
        (Limit::Nodes, "1:35".into())
    );
}

#[test]
fn anchors_and_aliases_are_refused_where_they_are() {
    let (limit, at) = refused("a: &x 1\nb: *x\n", &LIMITS);
    assert_eq!((limit, at.as_str()), (Limit::Alias, "1:4"));
    assert_eq!(
        refused("a: [1, *x]\n", &LIMITS),
        (Limit::Alias, "1:8".into())
    );
    let e = check("- *x\n", &LIMITS).unwrap_err();
    assert!(e.to_string().contains("anchors and aliases"), "{e}");
}

#[test]
fn indicators_inside_scalars_and_comments_are_text() {
    let text = "\
a: 'it''s [[[ &x *y'
b: \"[[[ \\\" *z\"
c: a[b]*c&d
d: x # [[[[[ *e
# [[[[[[ &f
e: |
  [[[[[[ *g &h
  - - - - -
f: >-
    {{{{{{
g: 'multi
  [[[[[ *line'
h: \"more
  {{{{ &x\"
i: [a, 'b]]', \"c[[[\"]
";
    assert!(check(text, &DEPTH_4).is_ok(), "{:?}", check(text, &DEPTH_4));
}

#[test]
fn block_scalars_end_where_indentation_returns() {
    // `*x` at `b`'s level is past the scalar: an alias again.
    assert_eq!(
        refused("a: |\n  text\nb: *x\n", &LIMITS),
        (Limit::Alias, "3:4".into())
    );
    // In a sequence item's mapping, the scalar belongs to the key, not the dash.
    assert_eq!(
        refused("- a: |\n    text\n  b: *x\n", &LIMITS),
        (Limit::Alias, "3:6".into())
    );
}

#[test]
fn document_bytes_just_under_and_over() {
    let at = |n: usize| format!("a: {}\n", "x".repeat(n - 4));
    assert!(check(&at(200), &SMALL).is_ok());
    let e = check(&at(201), &SMALL).unwrap_err();
    assert_eq!(e.limit, Limit::DocumentBytes);
    assert!(e.to_string().contains("201 bytes; the limit is 200"), "{e}");
}

#[test]
fn documents_just_under_and_over() {
    assert!(check("a: 1\n---\nb: 2\n---\n# empty\n", &SMALL).is_ok());
    let e = check("a: 1\n---\nb: 2\n---\nc: 3\n", &SMALL).unwrap_err();
    assert_eq!(e.limit, Limit::Documents);
    assert_eq!(
        e.to_string(),
        "f.yaml:5:1: more than 2 documents in one apply"
    );
}

#[test]
fn lines_are_the_files_in_later_documents() {
    let text = "a: 1\n---\nb:\n  c: [[[[1]]]]\n";
    assert_eq!(refused(text, &SMALL), (Limit::Depth, "4:8".into()));
    assert_eq!(
        refused("a: 1\n--- [[[[[1]]]]]\n", &SMALL),
        (Limit::Depth, "2:8".into())
    );
}

#[test]
fn the_examples_and_a_large_mesh_pass() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        for f in std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = f.path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let text = std::fs::read_to_string(&path).unwrap();
                check_text(&path.display().to_string(), &text, &LIMITS).unwrap();
                seen += 1;
            }
        }
    }
    assert!(seen > 0);
}
