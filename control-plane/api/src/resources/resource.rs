//! What every resource answers regardless of kind, and its JSON and YAML forms.
//!
//! A [`Resource`] serializes as its document (`apiVersion`, `kind`, `metadata`, `spec`) in any serde
//! format; reading one back dispatches on `kind` by hand rather than through a tagged enum, which keeps
//! the document's own `kind` field and its `deny_unknown_fields` checks.

use super::types::{Document, Kind, Metadata, Resource, ResourceKey, API_VERSION};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A resource in JSON that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResourceJsonError {
    #[error("a resource is a JSON object with apiVersion, kind, metadata and spec")]
    NotAnObject,
    #[error("`kind` is missing or not a string")]
    MissingKind,
    #[error("unknown kind `{0}`; expected one of {list}", list = kind_list())]
    UnknownKind(String),
    #[error("apiVersion `{0}` is not supported; expected `{API_VERSION}`")]
    WrongApiVersion(String),
    #[error("invalid {kind}: {source}")]
    Invalid {
        kind: Kind,
        source: serde_json::Error,
    },
}

/// The kinds as documents spell them, for error messages.
pub(crate) fn kind_list() -> String {
    Kind::ALL.map(Kind::as_str).join(", ")
}

impl Kind {
    /// The kind exactly as a document spells it (`HTTPRoute`, not `httproute`).
    pub fn from_document(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Service(_) => Kind::Service,
            Resource::Workload(_) => Kind::Workload,
            Resource::HttpRoute(_) => Kind::HttpRoute,
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Resource::MeshConfig(_) => Kind::MeshConfig,
        }
    }

    pub fn metadata(&self) -> &Metadata {
        match self {
            Resource::Service(d) => &d.metadata,
            Resource::Workload(d) => &d.metadata,
            Resource::HttpRoute(d) => &d.metadata,
            Resource::AuthorizationPolicy(d) => &d.metadata,
            Resource::MeshConfig(d) => &d.metadata,
        }
    }

    pub fn api_version(&self) -> &str {
        match self {
            Resource::Service(d) => &d.api_version,
            Resource::Workload(d) => &d.api_version,
            Resource::HttpRoute(d) => &d.api_version,
            Resource::AuthorizationPolicy(d) => &d.api_version,
            Resource::MeshConfig(d) => &d.api_version,
        }
    }

    pub fn key(&self) -> ResourceKey {
        let m = self.metadata();
        ResourceKey {
            kind: self.kind(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
        }
    }

    /// Reads a resource from its JSON document, checking `apiVersion` and dispatching on `kind`.
    pub fn from_json(value: serde_json::Value) -> Result<Resource, ResourceJsonError> {
        let object = value.as_object().ok_or(ResourceJsonError::NotAnObject)?;
        let kind_name = object
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or(ResourceJsonError::MissingKind)?;
        let kind = Kind::from_document(kind_name)
            .ok_or_else(|| ResourceJsonError::UnknownKind(kind_name.to_string()))?;
        match object.get("apiVersion").and_then(|v| v.as_str()) {
            Some(API_VERSION) => {}
            other => {
                let shown = other.map_or_else(|| "(none)".to_string(), str::to_string);
                return Err(ResourceJsonError::WrongApiVersion(shown));
            }
        }
        let typed = |v| ResourceJsonError::Invalid { kind, source: v };
        Ok(match kind {
            Kind::Service => Resource::Service(json_document(value).map_err(typed)?),
            Kind::Workload => Resource::Workload(json_document(value).map_err(typed)?),
            Kind::HttpRoute => Resource::HttpRoute(json_document(value).map_err(typed)?),
            Kind::AuthorizationPolicy => {
                Resource::AuthorizationPolicy(json_document(value).map_err(typed)?)
            }
            Kind::MeshConfig => Resource::MeshConfig(json_document(value).map_err(typed)?),
        })
    }

    /// The resource as a JSON value (its document).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("resource documents always serialize")
    }

    /// The resource as a YAML document, for display and diffs.
    pub fn to_yaml(&self) -> String {
        crate::yaml::to_string(self).expect("resource documents always serialize")
    }
}

fn json_document<S: DeserializeOwned>(
    value: serde_json::Value,
) -> Result<Document<S>, serde_json::Error> {
    serde_json::from_value(value)
}

impl Serialize for Resource {
    fn serialize<Se: Serializer>(&self, s: Se) -> Result<Se::Ok, Se::Error> {
        match self {
            Resource::Service(d) => d.serialize(s),
            Resource::Workload(d) => d.serialize(s),
            Resource::HttpRoute(d) => d.serialize(s),
            Resource::AuthorizationPolicy(d) => d.serialize(s),
            Resource::MeshConfig(d) => d.serialize(s),
        }
    }
}

/// Through a JSON value, so any self-describing format works (state files, API bodies).
impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Resource::from_json(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::types::{ServicePort, ServiceSpec};
    use serde_json::json;

    fn service() -> Resource {
        Resource::Service(Document {
            api_version: API_VERSION.to_string(),
            kind: Kind::Service,
            metadata: Metadata {
                name: "reviews".into(),
                namespace: "shop".into(),
                labels: Default::default(),
                annotations: Default::default(),
            },
            spec: ServiceSpec {
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    port: 9080,
                    target_port: None,
                    protocol: Default::default(),
                }],
                selector: [("app".to_string(), "reviews".to_string())].into(),
                service_accounts: None,
                traffic_policy: None,
            },
        })
    }

    #[test]
    fn accessors() {
        let r = service();
        assert_eq!(r.kind(), Kind::Service);
        assert_eq!(r.metadata().name, "reviews");
        assert_eq!(r.key().to_string(), "Service shop/reviews");
    }

    #[test]
    fn json_is_the_document() {
        let v = service().to_json();
        assert_eq!(v["kind"], "Service");
        assert_eq!(v["apiVersion"], API_VERSION);
        assert_eq!(v["spec"]["ports"][0]["port"], 9080);
        assert_eq!(Resource::from_json(v).unwrap(), service());
    }

    #[test]
    fn deserialize_goes_through_from_json() {
        let text = serde_json::to_string(&service()).unwrap();
        let back: Resource = serde_json::from_str(&text).unwrap();
        assert_eq!(back, service());
    }

    #[test]
    fn json_errors() {
        let base = service().to_json();
        let with = |key: &str, value: serde_json::Value| {
            let mut v = base.clone();
            v[key] = value;
            Resource::from_json(v).unwrap_err().to_string()
        };
        assert!(Resource::from_json(json!([1])).is_err());
        assert!(with("kind", json!(3)).contains("`kind` is missing"));
        let unknown = with("kind", json!("Gateway"));
        assert!(
            unknown.contains("Gateway") && unknown.contains("HTTPRoute"),
            "{unknown}"
        );
        assert!(with("apiVersion", json!("v2")).contains("`v2`"));
        assert!(with("extra", json!(1)).contains("unknown field `extra`"));
    }

    #[test]
    fn yaml_output_starts_with_the_header() {
        let y = service().to_yaml();
        assert!(
            y.starts_with("apiVersion: weft.dev/v1\nkind: Service\n"),
            "{y}"
        );
    }

    #[test]
    fn document_kinds_are_exact() {
        assert_eq!(Kind::from_document("HTTPRoute"), Some(Kind::HttpRoute));
        assert_eq!(Kind::from_document("httproute"), None);
    }

    const ALL_KINDS: &str = "\
apiVersion: weft.dev/v1
kind: MeshConfig
metadata: {name: default}
spec: {trustDomain: weft.local, certificateTtl: 12h, mtlsMode: PERMISSIVE, proxyGracePeriod: 45s}
---
apiVersion: weft.dev/v1
kind: Service
metadata: {name: reviews, namespace: shop, labels: {app: reviews}, annotations: {note: x}}
spec:
  ports: [{name: http, port: 9080, targetPort: 8080, protocol: http}, {port: 9090, protocol: grpc}]
  selector: {app: reviews}
---
apiVersion: weft.dev/v1
kind: Workload
metadata: {name: db-1, namespace: shop, labels: {app: db}}
spec: {address: \"fd00::1\", serviceAccount: db, tunnelPort: 15008}
---
apiVersion: weft.dev/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{name: reviews, port: 9080}]
  hostnames: [reviews.example]
  rules:
  - name: canary
    matches:
    - path: {type: RegularExpression, value: \"^/api/v[0-9]+\"}
      headers: [{name: x-user, value: jason}]
      queryParams: [{type: RegularExpression, name: q, value: a.*}]
      method: POST
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-served-by, value: weft}], remove: [server]}
    backendRefs: [{name: reviews, subset: v1, weight: 3}, {name: reviews, namespace: shop, port: 9090}]
    timeouts: {request: 1500ms, backendRequest: 1s}
    retry: {attempts: 2, backoff: 25ms, codes: [503]}
---
apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: readers, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  mode: audit
  rules:
  - from: [{principals: [\"spiffe://weft.local/ns/shop/sa/a\"], namespaces: [\"*\"], serviceAccounts: [shop/b]}]
    to: [{ports: [9080], methods: [DELETE], paths: [\"/admin/*\"], headers: [{name: x-a, value: b}]}]
";

    fn all_kinds() -> Vec<Resource> {
        let parsed = crate::resources::parse_documents("all.yaml", ALL_KINDS).unwrap();
        assert!(parsed.iter().all(|p| p.validate().is_empty()));
        parsed.into_iter().map(|p| p.resource).collect()
    }

    #[test]
    fn yaml_to_json_and_back_for_every_kind() {
        let all = all_kinds();
        let kinds: Vec<Kind> = all.iter().map(Resource::kind).collect();
        assert_eq!(kinds, Kind::ALL);
        for r in all {
            let json = r.to_json();
            assert_eq!(json["kind"], r.kind().as_str());
            let text = serde_json::to_string(&json).unwrap();
            let back = Resource::from_json(serde_json::from_str(&text).unwrap()).unwrap();
            assert_eq!(back, r, "{text}");
        }
    }

    #[test]
    fn yaml_output_reads_back_as_the_same_resource() {
        for r in all_kinds() {
            let text = r.to_yaml();
            let back = crate::resources::parse_documents("out.yaml", &text).unwrap();
            assert_eq!(back.len(), 1);
            assert_eq!(back[0].resource, r, "{text}");
        }
    }
}
