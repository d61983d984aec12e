//! `weftctl shift` and `weftctl rollback`: traffic shifting as one command, written as an edit of the
//! service's `HTTPRoute` (named after the service) so the result is an ordinary resource an operator
//! can read, diff and apply by hand.
//!
//! Weights go in the route's catch-all rule (the one without matches; created when missing). A header
//! split (`--header x-user-group=beta v2`) is a rule with that one header match, kept first. The weights
//! a shift replaces are kept in the annotation `weft.dev/previous-weights`, which `rollback` restores.
//!
//! A progressive shift (`--to`, see `progressive`) moves the catch-all split one step at a time with
//! [`set_step`], and undoes everything it did with [`restore`].

use serde_json::{json, Value};

pub const PREVIOUS: &str = "weft.dev/previous-weights";

/// What to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shift {
    /// `v1=90 v2=10`: the catch-all rule's split.
    Weights(Vec<(String, u32)>),
    /// `--header NAME=VALUE SUBSET`: requests with that header go to one subset.
    Header {
        name: String,
        value: String,
        subset: String,
    },
}

/// Parses `SUBSET=WEIGHT` arguments.
pub fn parse_weights(args: &[String]) -> Result<Vec<(String, u32)>, String> {
    if args.is_empty() {
        return Err("give at least one SUBSET=WEIGHT, e.g. v1=90 v2=10".into());
    }
    let mut out: Vec<(String, u32)> = Vec::new();
    for a in args {
        let (subset, weight) = a
            .split_once('=')
            .ok_or_else(|| format!("`{a}`: expected SUBSET=WEIGHT, e.g. v2=10"))?;
        check_subset(subset)?;
        let weight: u32 = weight
            .parse()
            .map_err(|_| format!("`{a}`: the weight must be a whole number"))?;
        if out.iter().any(|(s, _)| s == subset) {
            return Err(format!("subset {subset} is named twice"));
        }
        out.push((subset.to_string(), weight));
    }
    if out.iter().all(|(_, w)| *w == 0) {
        return Err("every weight is 0: no request would have anywhere to go".into());
    }
    Ok(out)
}

pub fn check_subset(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a subset name (a `version` label value)"
        ))
    }
}

/// A new route for `namespace/service` with no rules yet.
pub fn new_route(namespace: &str, service: &str) -> Value {
    json!({
        "apiVersion": "weft.dev/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": service, "namespace": namespace},
        "spec": {"parentRefs": [{"name": service}], "rules": []}
    })
}

/// `route` with `shift` applied, and a line saying what changed.
pub fn apply_shift(
    mut route: Value,
    service: &str,
    shift: &Shift,
) -> Result<(Value, String), String> {
    let rules = rules_mut(&mut route)?;
    match shift {
        Shift::Weights(weights) => {
            let i = catch_all(rules);
            let before = describe(&rules[i]);
            rules[i]["backendRefs"] = backends(service, weights);
            let after = describe(&rules[i]);
            if !before.is_empty() {
                set_previous(&mut route, &before);
            }
            let from = if before.is_empty() {
                "(all endpoints)".to_string()
            } else {
                before
            };
            Ok((route, format!("{service}: {from} -> {after}")))
        }
        Shift::Header {
            name,
            value,
            subset,
        } => {
            let want = json!([{"headers": [{"name": name, "value": value}]}]);
            let i = match rules.iter().position(|r| r["matches"] == want) {
                Some(i) => i,
                None => {
                    rules.insert(0, json!({"matches": want}));
                    0
                }
            };
            rules[i]["backendRefs"] = backends(service, &[(subset.clone(), 1)]);
            Ok((
                route,
                format!("{service}: requests with {name}: {value} -> {subset}"),
            ))
        }
    }
}

/// `route` with the weights before the last shift put back.
pub fn rollback(route: Value, service: &str) -> Result<(Value, String), String> {
    let previous = route["metadata"]["annotations"][PREVIOUS]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| {
            format!("no earlier weights recorded for {service} (annotation {PREVIOUS})")
        })?;
    let args: Vec<String> = previous.split(' ').map(str::to_string).collect();
    let weights = parse_weights(&args).map_err(|e| format!("annotation {PREVIOUS}: {e}"))?;
    apply_shift(route, service, &Shift::Weights(weights))
}

/// The catch-all rule's `SUBSET=WEIGHT`s (empty when there is no such rule or it names no subset).
pub fn weights(route: &Value) -> Vec<(String, u32)> {
    let Some(rules) = route["spec"]["rules"].as_array() else {
        return Vec::new();
    };
    let Some(rule) = rules.iter().find(|r| has_no_matches(r)) else {
        return Vec::new();
    };
    rule["backendRefs"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .filter_map(|b| {
                    let subset = b["subset"].as_str()?;
                    let weight = b["weight"].as_u64().unwrap_or(1);
                    Some((
                        subset.to_string(),
                        u32::try_from(weight).unwrap_or(u32::MAX),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `route` with the catch-all split set to one step of a progressive shift. The annotation keeps
/// `previous`, the split from before the whole shift (removed when there was none), so that
/// `weftctl rollback` after a promotion goes back to where the shift began, not to its last step.
pub fn set_step(
    route: Value,
    service: &str,
    weights: &[(String, u32)],
    previous: Option<&str>,
) -> Result<(Value, String), String> {
    let (mut route, line) = apply_shift(route, service, &Shift::Weights(weights.to_vec()))?;
    match previous {
        Some(p) => set_previous(&mut route, p),
        None => remove_previous(&mut route),
    }
    Ok((route, line))
}

/// `current` with the catch-all rule and the annotation as they were in `before` (the route when a
/// progressive shift started); other rules, added meanwhile by someone else, are left alone.
pub fn restore(mut current: Value, before: &Value) -> Result<Value, String> {
    let original = before["spec"]["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| has_no_matches(r)))
        .cloned();
    let rules = rules_mut(&mut current)?;
    match (rules.iter().position(has_no_matches), original) {
        (Some(i), Some(rule)) => rules[i] = rule,
        (None, Some(rule)) => rules.push(rule),
        (Some(i), None) => {
            rules.remove(i);
        }
        (None, None) => {}
    }
    match before["metadata"]["annotations"].get(PREVIOUS) {
        Some(p) => set_previous(&mut current, p.as_str().unwrap_or_default()),
        None => remove_previous(&mut current),
    }
    Ok(current)
}

fn remove_previous(route: &mut Value) {
    // `get_mut`, not indexing: indexing a JSON object inserts the key it looks for.
    let annotations = route
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
        .and_then(Value::as_object_mut);
    if let Some(a) = annotations {
        a.remove(PREVIOUS);
    }
}

fn rules_mut(route: &mut Value) -> Result<&mut Vec<Value>, String> {
    if !route["spec"]["rules"].is_array() {
        route["spec"]["rules"] = json!([]);
    }
    route["spec"]["rules"]
        .as_array_mut()
        .ok_or_else(|| "the route's spec.rules is not a list".to_string())
}

fn has_no_matches(rule: &Value) -> bool {
    rule.get("matches")
        .is_none_or(|m| m.as_array().is_none_or(Vec::is_empty))
}

/// The rule without matches (appended when there is none).
fn catch_all(rules: &mut Vec<Value>) -> usize {
    match rules.iter().position(has_no_matches) {
        Some(i) => i,
        None => {
            rules.push(json!({}));
            rules.len() - 1
        }
    }
}

fn backends(service: &str, weights: &[(String, u32)]) -> Value {
    Value::Array(
        weights
            .iter()
            .map(|(s, w)| json!({"name": service, "subset": s, "weight": w}))
            .collect(),
    )
}

/// `v1=90 v2=10` for a rule's subsets (empty when it names none).
fn describe(rule: &Value) -> String {
    rule["backendRefs"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .filter_map(|b| {
                    let subset = b["subset"].as_str()?;
                    let weight = b["weight"].as_u64().unwrap_or(1);
                    Some(format!("{subset}={weight}"))
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn set_previous(route: &mut Value, previous: &str) {
    if !route["metadata"]["annotations"].is_object() {
        route["metadata"]["annotations"] = json!({});
    }
    route["metadata"]["annotations"][PREVIOUS] = json!(previous);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(args: &[&str]) -> Shift {
        Shift::Weights(
            parse_weights(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
        )
    }

    #[test]
    fn weights_parse_strictly() {
        let bad = |args: &[&str]| {
            parse_weights(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_err()
        };
        assert!(bad(&[]).contains("at least one"));
        assert!(bad(&["v1"]).contains("SUBSET=WEIGHT"));
        assert!(bad(&["v1=x"]).contains("whole number"));
        assert!(bad(&["v1=1", "v1=2"]).contains("twice"));
        assert!(bad(&["v1=0"]).contains("every weight is 0"));
        assert!(bad(&["v 1=3"]).contains("not a subset"));
    }

    #[test]
    fn a_shift_edits_the_catch_all_rule_and_remembers_the_old_split() {
        let route = new_route("default", "reviews");
        let (route, line) = apply_shift(route, "reviews", &w(&["v1=100"])).unwrap();
        assert_eq!(line, "reviews: (all endpoints) -> v1=100");
        let (route, line) = apply_shift(route, "reviews", &w(&["v1=90", "v2=10"])).unwrap();
        assert_eq!(line, "reviews: v1=100 -> v1=90 v2=10");
        assert_eq!(route["metadata"]["annotations"][PREVIOUS], "v1=100");
        let (route, _) = apply_shift(
            route,
            "reviews",
            &Shift::Header {
                name: "x-user-group".into(),
                value: "beta".into(),
                subset: "v2".into(),
            },
        )
        .unwrap();
        let rules = route["spec"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0]["matches"][0]["headers"][0]["value"], "beta");
        assert_eq!(rules[1]["backendRefs"][1]["weight"], 10);
        let (route, line) = rollback(route, "reviews").unwrap();
        assert_eq!(line, "reviews: v1=90 v2=10 -> v1=100");
        let (_, line) = rollback(route, "reviews").unwrap();
        assert_eq!(
            line, "reviews: v1=100 -> v1=90 v2=10",
            "rollback of a rollback goes forward"
        );
    }

    #[test]
    fn steps_keep_the_split_from_before_and_restore_undoes_only_the_catch_all_rule() {
        let (before, _) =
            apply_shift(new_route("default", "reviews"), "reviews", &w(&["v1=100"])).unwrap();
        assert_eq!(weights(&before), [("v1".to_string(), 100)]);
        let step = |route, v1, v2| {
            let ws = [("v1".to_string(), v1), ("v2".to_string(), v2)];
            set_step(route, "reviews", &ws, Some("v1=100")).unwrap()
        };
        let (route, line) = step(before.clone(), 75, 25);
        assert_eq!(line, "reviews: v1=100 -> v1=75 v2=25");
        let (route, _) = step(route, 50, 50);
        assert_eq!(route["metadata"]["annotations"][PREVIOUS], "v1=100");
        // Someone adds a header rule meanwhile; restoring keeps it.
        let (route, _) = apply_shift(
            route,
            "reviews",
            &Shift::Header {
                name: "x-beta".into(),
                value: "1".into(),
                subset: "v2".into(),
            },
        )
        .unwrap();
        let back = restore(route, &before).unwrap();
        assert_eq!(weights(&back), [("v1".to_string(), 100)]);
        assert_eq!(back["spec"]["rules"].as_array().unwrap().len(), 2);
        assert!(back["metadata"]["annotations"].get(PREVIOUS).is_none());
        // A route whose catch-all rule a shift added loses it again.
        let headers_only = apply_shift(
            new_route("default", "reviews"),
            "reviews",
            &Shift::Header {
                name: "x-beta".into(),
                value: "1".into(),
                subset: "v2".into(),
            },
        )
        .unwrap()
        .0;
        let (shifted, _) = set_step(
            headers_only.clone(),
            "reviews",
            &[("v1".into(), 90), ("v2".into(), 10)],
            None,
        )
        .unwrap();
        assert_eq!(weights(&shifted).len(), 2);
        assert_eq!(restore(shifted, &headers_only).unwrap(), headers_only);
    }

    #[test]
    fn rollback_without_history_says_so() {
        let e = rollback(new_route("default", "reviews"), "reviews").unwrap_err();
        assert!(e.contains("no earlier weights"), "{e}");
    }
}
