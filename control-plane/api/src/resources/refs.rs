//! References between resources: an HTTPRoute's parentRefs and backendRefs name Services (and ports).

use super::types::{Kind, Resource, ResourceKey};

/// One reference from a route to a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    pub service: ResourceKey,
    pub port: Option<u16>,
    /// The referring item, e.g. `spec.rules[0].backendRefs[1]`.
    pub item: String,
}

impl Reference {
    pub fn name_field(&self) -> String {
        format!("{}.name", self.item)
    }
}

/// Every Service reference `r` makes (none unless it is a route). Namespaces default to the route's.
pub(crate) fn references(r: &Resource) -> Vec<Reference> {
    let Resource::HttpRoute(route) = r else {
        return Vec::new();
    };
    let own = &route.metadata.namespace;
    let reference = |item: String, name: &str, namespace: &Option<String>, port| Reference {
        service: ResourceKey {
            kind: Kind::Service,
            namespace: namespace.clone().unwrap_or_else(|| own.clone()),
            name: name.to_string(),
        },
        port,
        item,
    };
    let parents = route.spec.parent_refs.iter().enumerate().map(|(i, p)| {
        reference(
            format!("spec.parentRefs[{i}]"),
            &p.name,
            &p.namespace,
            p.port,
        )
    });
    let backends = route.spec.rules.iter().enumerate().flat_map(|(i, rule)| {
        rule.backend_refs
            .iter()
            .enumerate()
            .map(move |(j, b)| (format!("spec.rules[{i}].backendRefs[{j}]"), b))
    });
    parents
        .chain(backends.map(|(item, b)| reference(item, &b.name, &b.namespace, b.port)))
        .collect()
}

/// What is wrong with a reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broken {
    NoService,
    NoPort(u16),
}

/// A reference that does not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dangling {
    pub service: ResourceKey,
    /// The field to fix: the reference's `name` or `port`.
    pub field: String,
    pub broken: Broken,
}

impl Dangling {
    pub fn reason(&self) -> String {
        let service = &self.service;
        match self.broken {
            Broken::NoService => format!(
                "dangling reference: Service {}/{} does not exist",
                service.namespace, service.name
            ),
            Broken::NoPort(port) => format!(
                "dangling reference: Service {}/{} has no port {port}",
                service.namespace, service.name
            ),
        }
    }
}

/// The references of `r` that `lookup` cannot resolve.
pub(crate) fn dangling<'a>(
    r: &Resource,
    lookup: impl Fn(&ResourceKey) -> Option<&'a Resource>,
) -> Vec<Dangling> {
    references(r)
        .into_iter()
        .filter_map(|reference| {
            let broken = match lookup(&reference.service) {
                Some(Resource::Service(s)) => match reference.port {
                    Some(port) if !s.spec.ports.iter().any(|p| p.port == port) => {
                        Broken::NoPort(port)
                    }
                    _ => return None,
                },
                _ => Broken::NoService,
            };
            let field = match broken {
                Broken::NoService => reference.name_field(),
                Broken::NoPort(_) => format!("{}.port", reference.item),
            };
            Some(Dangling {
                service: reference.service,
                field,
                broken,
            })
        })
        .collect()
}

/// The references of `r` that do not resolve among `all`, as `(field, reason)` pairs.
/// [`super::ResourceSet`] runs this check on every change; this is for callers that keep their own
/// collection.
pub fn dangling_references(r: &Resource, all: &[&Resource]) -> Vec<(String, String)> {
    let lookup = |key: &ResourceKey| all.iter().copied().find(|x| x.key() == *key);
    dangling_references_by(r, lookup)
}

/// [`dangling_references`] with the caller's own lookup: a map keeps checking a whole state linear
/// where a search of a slice per reference is quadratic (8,000 resources: seconds under the lock).
pub fn dangling_references_by<'a>(
    r: &Resource,
    lookup: impl Fn(&ResourceKey) -> Option<&'a Resource>,
) -> Vec<(String, String)> {
    dangling(r, lookup)
        .into_iter()
        .map(|d| {
            let reason = d.reason();
            (d.field, reason)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_documents;

    fn resources(text: &str) -> Vec<Resource> {
        parse_documents("f", text)
            .unwrap()
            .into_iter()
            .map(|p| p.resource)
            .collect()
    }

    const DOCS: &str = "\
apiVersion: weft.dev/v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  ports: [{port: 9080}]
---
apiVersion: weft.dev/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{name: reviews, port: 9080}]
  rules:
  - backendRefs:
    - {name: reviews, port: 9080}
    - {name: ratings, namespace: other}
    - {name: reviews, port: 1}
";

    #[test]
    fn references_default_to_the_route_namespace() {
        let all = resources(DOCS);
        let refs = references(&all[1]);
        let shown: Vec<_> = refs
            .iter()
            .map(|r| (r.item.as_str(), r.service.to_string()))
            .collect();
        assert_eq!(
            shown,
            [
                ("spec.parentRefs[0]", "Service shop/reviews".to_string()),
                (
                    "spec.rules[0].backendRefs[0]",
                    "Service shop/reviews".to_string()
                ),
                (
                    "spec.rules[0].backendRefs[1]",
                    "Service other/ratings".to_string()
                ),
                (
                    "spec.rules[0].backendRefs[2]",
                    "Service shop/reviews".to_string()
                ),
            ]
        );
        assert!(references(&all[0]).is_empty());
    }

    #[test]
    fn missing_services_and_ports() {
        let all = resources(DOCS);
        let refs: Vec<&Resource> = all.iter().collect();
        let d = dangling_references(&all[1], &refs);
        assert_eq!(
            d,
            [
                (
                    "spec.rules[0].backendRefs[1].name".to_string(),
                    "dangling reference: Service other/ratings does not exist".to_string()
                ),
                (
                    "spec.rules[0].backendRefs[2].port".to_string(),
                    "dangling reference: Service shop/reviews has no port 1".to_string()
                ),
            ]
        );
    }
}
