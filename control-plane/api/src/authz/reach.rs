//! Whether a caller can get past a workload's policies at all, whatever it asks: what the control plane
//! needs to tell counts a caller can really have seen from counts it made up.

use super::{Authorizer, Operation, Rule};
use crate::resources::{PolicyAction, PolicyMode};
use weft_certs::SpiffeId;

impl Authorizer {
    /// False only when the enforced policies refuse every request and stream from `source`: a DENY
    /// policy without rules, or with a rule on its identity alone; or ALLOW policies apply and none has
    /// a rule its identity can match. Anything that depends on the request counts as admissible, so this
    /// never refuses what [`check`](Self::check) could allow.
    pub fn may_admit(&self, source: &SpiffeId) -> bool {
        let enforced = || {
            self.policies
                .iter()
                .filter(|p| p.mode == PolicyMode::Enforce)
        };
        let refused_outright = enforced()
            .filter(|p| p.action == PolicyAction::Deny)
            .any(|p| {
                p.rules.is_empty()
                    || p.rules
                        .iter()
                        .any(|r| from_matches(r, source) && r.to.iter().all(unconditional))
            });
        if refused_outright {
            return false;
        }
        let mut allows = enforced()
            .filter(|p| p.action == PolicyAction::Allow)
            .peekable();
        allows.peek().is_none() || allows.any(|p| p.rules.iter().any(|r| from_matches(r, source)))
    }
}

fn from_matches(r: &Rule, source: &SpiffeId) -> bool {
    r.from.is_empty() || r.from.iter().any(|f| f.matches(Some(source)))
}

/// An operation with nothing to match (an empty `to` list is `all` of none: also unconditional).
fn unconditional(o: &Operation) -> bool {
    o.ports.is_empty() && o.methods.is_empty() && o.paths.is_empty() && o.headers.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{parse_documents, Resource};

    fn authorizer(yaml: &str) -> Authorizer {
        let docs: Vec<_> = parse_documents("p.yaml", yaml)
            .unwrap()
            .into_iter()
            .filter_map(|d| match d.resource {
                Resource::AuthorizationPolicy(p) => Some(p),
                _ => None,
            })
            .collect();
        Authorizer::compile(&docs, 1 << 16).unwrap()
    }

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://t.local/ns/default/sa/{sa}")).unwrap()
    }

    #[test]
    fn only_a_caller_refused_whatever_it_asks_is_inadmissible() {
        assert!(authorizer("").may_admit(&id("evil")));
        let allow = authorizer(
            "apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  action: ALLOW\n  rules:\n    - from: [{principals: [\"spiffe://t.local/ns/default/sa/frontend\"]}]\n      to: [{methods: [GET]}]\n",
        );
        assert!(allow.may_admit(&id("frontend")));
        assert!(!allow.may_admit(&id("evil")));
        let deny = authorizer(
            "apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: d}\nspec:\n  action: DENY\n  rules:\n    - from: [{principals: [\"spiffe://t.local/ns/default/sa/evil\"]}]\n    - from: [{principals: [\"spiffe://t.local/ns/default/sa/other\"]}]\n      to: [{paths: [/admin]}]\n",
        );
        assert!(!deny.may_admit(&id("evil")));
        assert!(deny.may_admit(&id("other")), "refused only on some paths");
        let audit = authorizer(
            "apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: d}\nspec:\n  action: DENY\n  mode: audit\n",
        );
        assert!(audit.may_admit(&id("evil")));
    }
}
