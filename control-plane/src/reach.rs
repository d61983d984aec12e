//! Whether a caller's requests can have reached a service's endpoints past their authorization
//! policies: the control plane keeps a proxy's request counts only for destinations it can reach
//! (see [`crate::stats`]). Compiled policy sets are cached per (namespace, labels) for one resource
//! revision, so a report costs lookups, not compilations.

use crate::view::{applicable_policies, MeshResources};
use std::collections::HashMap;
use std::sync::Mutex;
use weft_api::authz::Authorizer;
use weft_api::resources::Labels;
use weft_certs::SpiffeId;

/// The compiled-regex limit the proxies use by default (policies' header regexes).
const MAX_REGEX_BYTES: usize = 64 * 1024;

/// Compiled policy sets by (namespace, labels); `None` for a set the proxies would refuse.
type Sets = HashMap<(String, Labels), Option<Authorizer>>;

#[derive(Default)]
pub struct ReachCache {
    /// The revision the cached sets belong to, and the sets.
    sets: Mutex<(u64, Sets)>,
}

impl ReachCache {
    /// Whether `source` can get past the policies of at least one endpoint with `labels` (in `ns`, at
    /// `revision` of `res`). No endpoints: reachable, since the caller's own proxy answers (503).
    pub fn any_admits(
        &self,
        res: &MeshResources,
        revision: u64,
        ns: &str,
        labels: &[Labels],
        source: &SpiffeId,
    ) -> bool {
        if labels.is_empty() {
            return true;
        }
        let mut guard = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        if guard.0 != revision {
            *guard = (revision, HashMap::new());
        }
        labels.iter().any(|l| {
            let set = guard
                .1
                .entry((ns.to_string(), l.clone()))
                .or_insert_with(|| {
                    let docs: Vec<_> = applicable_policies(res, ns, l)
                        .into_iter()
                        .cloned()
                        .collect();
                    Authorizer::compile(&docs, MAX_REGEX_BYTES).ok()
                });
            // A set the proxies would refuse is not in force there: nothing to hold against the caller.
            set.as_ref().is_none_or(|a| a.may_admit(source))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::resources::{parse_documents, Resource};

    fn resources(yaml: &str) -> MeshResources {
        let policies = parse_documents("p.yaml", yaml)
            .unwrap()
            .into_iter()
            .filter_map(|p| match p.resource {
                Resource::AuthorizationPolicy(d) => Some(d),
                _ => None,
            })
            .collect();
        MeshResources {
            policies,
            ..Default::default()
        }
    }

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://t.local/ns/default/sa/{sa}")).unwrap()
    }

    #[test]
    fn a_caller_every_endpoint_refuses_cannot_reach_and_the_cache_follows_revisions() {
        let res = resources(
            "apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  selector: {matchLabels: {app: reviews}}\n  action: ALLOW\n  rules:\n    - from: [{principals: [\"spiffe://t.local/ns/default/sa/frontend\"]}]\n",
        );
        let reviews: Labels = [("app".to_string(), "reviews".to_string())].into();
        let other: Labels = [("app".to_string(), "other".to_string())].into();
        let cache = ReachCache::default();
        let ends = [reviews.clone()];
        assert!(cache.any_admits(&res, 1, "default", &ends, &id("frontend")));
        assert!(!cache.any_admits(&res, 1, "default", &ends, &id("evil")));
        assert!(
            cache.any_admits(&res, 1, "default", &[], &id("evil")),
            "no endpoints"
        );
        let mixed = [reviews, other];
        assert!(cache.any_admits(&res, 1, "default", &mixed, &id("evil")));
        let none = MeshResources::default();
        assert!(
            cache.any_admits(&none, 2, "default", &ends, &id("evil")),
            "new revision"
        );
    }
}
