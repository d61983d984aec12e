//! AuthorizationPolicy rules.

use super::{names, Problems};
use crate::resources::types::{
    AuthorizationPolicySpec, PolicyOperation, PolicySource, ValueMatchType,
};

pub(super) fn policy(p: &mut Problems, spec: &AuthorizationPolicySpec) {
    if let Some(selector) = &spec.selector {
        p.labels("spec.selector.matchLabels", &selector.match_labels);
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            source(p, &format!("{at}.from[{j}]"), from);
        }
        for (j, to) in rule.to.iter().enumerate() {
            operation(p, &format!("{at}.to[{j}]"), to);
        }
    }
}

fn source(p: &mut Problems, at: &str, s: &PolicySource) {
    if s.principals.is_empty() && s.namespaces.is_empty() && s.service_accounts.is_empty() {
        p.add(
            at,
            "an empty `from` entry is ambiguous: list principals, namespaces or serviceAccounts",
        );
    }
    for (i, principal) in s.principals.iter().enumerate() {
        p.check(format!("{at}.principals[{i}]"), names::principal(principal));
    }
    for (i, ns) in s.namespaces.iter().enumerate() {
        let check = if ns == "*" {
            Ok(())
        } else {
            names::dns_label(ns)
        };
        p.check(format!("{at}.namespaces[{i}]"), check);
    }
    for (i, sa) in s.service_accounts.iter().enumerate() {
        p.check(
            format!("{at}.serviceAccounts[{i}]"),
            names::service_account_ref(sa),
        );
    }
}

fn operation(p: &mut Problems, at: &str, o: &PolicyOperation) {
    for (i, port) in o.ports.iter().enumerate() {
        p.port(format!("{at}.ports[{i}]"), *port);
    }
    for (i, method) in o.methods.iter().enumerate() {
        p.check(format!("{at}.methods[{i}]"), names::method(method));
    }
    for (i, path) in o.paths.iter().enumerate() {
        p.check(format!("{at}.paths[{i}]"), names::policy_path(path));
    }
    for (i, h) in o.headers.iter().enumerate() {
        p.check(
            format!("{at}.headers[{i}].name"),
            names::header_name(&h.name),
        );
        let value = match h.kind {
            ValueMatchType::Exact => names::header_value(&h.value),
            ValueMatchType::RegularExpression => names::regex(&h.value),
        };
        p.check(format!("{at}.headers[{i}].value"), value);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{clean, one};

    const POLICY: &str = "\
apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: reviews-readers
  namespace: shop
spec:
  selector:
    matchLabels:
      app: reviews
  action: ALLOW
  mode: audit
  rules:
  - from:
    - principals: [\"spiffe://weft.local/ns/shop/sa/productpage\"]
      namespaces: [shop]
      serviceAccounts: [shop/frontend]
    to:
    - ports: [9080]
      methods: [GET, HEAD]
      paths: [/reviews/*, \"*.json\", /health]
      headers:
      - name: x-tenant
        type: RegularExpression
        value: ^t-[0-9]+$
  - from:
    - principals: [\"*\"]
";

    #[test]
    fn a_full_policy_is_clean() {
        clean(POLICY);
    }

    #[test]
    fn empty_rules_are_allowed() {
        clean(POLICY.split("  rules:").next().unwrap());
    }

    #[test]
    fn principals_are_spiffe_ids_or_star() {
        one(
            &POLICY.replace("\"*\"", "productpage"),
            26,
            "spec.rules[1].from[0].principals[0]",
            "spiffe://",
        );
        let text = POLICY.replace(
            "spiffe://weft.local/ns/shop/sa/productpage",
            "spiffe://weft.local/ns/shop/",
        );
        one(
            &text,
            14,
            "spec.rules[0].from[0].principals[0]",
            "ends with '/'",
        );
    }

    #[test]
    fn service_accounts_are_namespace_slash_name() {
        one(
            &POLICY.replace("[shop/frontend]", "[frontend]"),
            16,
            "spec.rules[0].from[0].serviceAccounts[0]",
            "namespace/serviceAccount",
        );
    }

    #[test]
    fn namespaces_are_labels_or_star() {
        clean(&POLICY.replace("namespaces: [shop]", "namespaces: [\"*\"]"));
        one(
            &POLICY.replace("namespaces: [shop]", "namespaces: [Shop]"),
            15,
            "spec.rules[0].from[0].namespaces[0]",
            "DNS label",
        );
    }

    #[test]
    fn empty_from_entry() {
        let text = POLICY.replace("    - principals: [\"*\"]\n", "    - {}\n");
        one(&text, 26, "spec.rules[1].from[0]", "ambiguous");
    }

    #[test]
    fn ports_methods_paths_headers() {
        one(
            &POLICY.replace("ports: [9080]", "ports: [0]"),
            18,
            "spec.rules[0].to[0].ports[0]",
            "port 0",
        );
        one(
            &POLICY.replace("methods: [GET, HEAD]", "methods: [GET, \"HE AD\"]"),
            19,
            "spec.rules[0].to[0].methods[1]",
            "HTTP method",
        );
        one(
            &POLICY.replace("/health]", "health]"),
            20,
            "spec.rules[0].to[0].paths[2]",
            "start with '/'",
        );
        one(
            &POLICY.replace("/reviews/*", "/a/*/b"),
            20,
            "spec.rules[0].to[0].paths[0]",
            "`*` may appear once",
        );
        one(
            &POLICY.replace("^t-[0-9]+$", "\"[\""),
            24,
            "spec.rules[0].to[0].headers[0].value",
            "regular expression",
        );
    }

    #[test]
    fn selector_labels() {
        one(
            &POLICY.replace("app: reviews", "\"-app\": reviews"),
            9,
            "spec.selector.matchLabels.-app",
            "key",
        );
    }
}
