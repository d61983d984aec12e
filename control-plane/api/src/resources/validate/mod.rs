//! Rules on one document at a time, beyond what its types already enforce. Every problem names the field
//! path it is about, so [`Parsed::validate`] can point at the line to edit.

mod mesh;
pub use mesh::MAX_CERTIFICATE_TTL;
pub(crate) mod names;
mod policy;
mod route;
mod service;

use super::parse::Parsed;
use super::types::{Labels, Metadata, Resource};
use crate::yaml::YamlError;
use names::Check;

/// Problems located and listed per document; more are counted, not listed.
pub const MAX_LOCATED: usize = 50;

/// One rule a document breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `spec.rules[0].backendRefs[1].weight`.
    pub field: String,
    pub reason: String,
}

#[derive(Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            reason: reason.into(),
        });
    }

    pub(crate) fn check(&mut self, field: impl Into<String>, result: Check) {
        if let Err(reason) = result {
            self.add(field, reason);
        }
    }

    /// Ports are `u16`, so only zero is out of range.
    pub(crate) fn port(&mut self, field: impl Into<String>, port: u16) {
        if port == 0 {
            self.add(field, "port 0 is not a port; use 1-65535");
        }
    }

    pub(crate) fn labels(&mut self, field: &str, labels: &Labels) {
        for (key, value) in labels {
            let at = format!("{field}.{key}");
            self.check(at.clone(), names::label_key(key));
            self.check(at, names::label_value(value));
        }
    }
}

/// Every problem with `resource`, in document order.
pub fn problems(resource: &Resource) -> Vec<Problem> {
    let mut p = Problems::default();
    metadata(&mut p, resource.metadata());
    match resource {
        Resource::Service(d) => service::service(&mut p, &d.spec),
        Resource::Workload(d) => service::workload(&mut p, &d.spec),
        Resource::HttpRoute(d) => route::route(&mut p, &d.spec),
        Resource::AuthorizationPolicy(d) => policy::policy(&mut p, &d.spec),
        Resource::MeshConfig(d) => mesh::mesh(&mut p, d),
    }
    p.0
}

fn metadata(p: &mut Problems, m: &Metadata) {
    p.check("metadata.name", names::dns_label(&m.name));
    p.check("metadata.namespace", names::dns_label(&m.namespace));
    p.labels("metadata.labels", &m.labels);
    for key in m.annotations.keys() {
        p.check(format!("metadata.annotations.{key}"), names::label_key(key));
    }
}

impl Parsed {
    /// Checks this document on its own (references to other documents are [`super::ResourceSet`]'s
    /// business); every error carries the line where its field is written.
    ///
    /// Locating a field walks the document, so only the first [`MAX_LOCATED`] problems are located
    /// and listed; the rest are counted in one last error at the document's start. (Measured: a
    /// document with 15,000 bad ports took 21 s when every problem was located.)
    pub fn validate(&self) -> Vec<YamlError> {
        let problems = problems(&self.resource);
        let more = problems.len().saturating_sub(MAX_LOCATED);
        let mut errors: Vec<YamlError> = problems
            .into_iter()
            .take(MAX_LOCATED)
            .map(|p| self.error(&p.field, p.reason))
            .collect();
        if more > 0 {
            errors.push(self.error("", format!("and {more} more problem(s) in this document")));
        }
        errors
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use crate::resources::parse_documents;
    use crate::yaml::YamlError;

    /// Validation errors of every document in `text` (which must parse).
    pub fn errors(text: &str) -> Vec<YamlError> {
        let parsed = match parse_documents("r.yaml", text) {
            Ok(p) => p,
            Err(e) => panic!("does not parse: {e:?}"),
        };
        parsed.iter().flat_map(|p| p.validate()).collect()
    }

    /// Asserts `text` has exactly one problem, at `line` and `field`, whose reason contains `reason`.
    #[track_caller]
    pub fn one(text: &str, line: usize, field: &str, reason: &str) {
        let e = errors(text);
        assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
        let e = &e[0];
        assert_eq!(e.file, "r.yaml");
        assert_eq!((e.line, e.field.as_str()), (Some(line), field), "{e}");
        assert!(e.reason.contains(reason), "`{}` lacks `{reason}`", e.reason);
    }

    #[track_caller]
    pub fn clean(text: &str) {
        let e = errors(text);
        assert!(e.is_empty(), "{e:#?}");
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{clean, errors, one};

    const SERVICE: &str = "\
apiVersion: weft.dev/v1
kind: Service
metadata:
  name: reviews
  namespace: shop
  labels:
    app.kubernetes.io/name: reviews
  annotations:
    note: free text, any characters!
spec:
  ports:
  - port: 9080
";

    #[test]
    fn a_good_document_has_no_problems() {
        clean(SERVICE);
    }

    #[test]
    fn name_must_be_a_dns_label() {
        one(
            &SERVICE.replace("name: reviews\n", "name: Reviews\n"),
            4,
            "metadata.name",
            "`Reviews`",
        );
    }

    #[test]
    fn namespace_must_be_a_dns_label() {
        one(
            &SERVICE.replace("namespace: shop", "namespace: shop_1"),
            5,
            "metadata.namespace",
            "DNS label",
        );
    }

    #[test]
    fn long_names_are_refused() {
        let long = "a".repeat(64);
        one(
            &SERVICE.replacen("name: reviews\n", &format!("name: {long}\n"), 1),
            4,
            "metadata.name",
            "limit is 63",
        );
    }

    #[test]
    fn label_keys_and_values() {
        let bad_key = SERVICE.replace("app.kubernetes.io/name: reviews", "-bad: reviews");
        one(&bad_key, 7, "metadata.labels.-bad", "key `-bad`");
        let bad_value = SERVICE.replace("name: reviews\n  annotations", "name: a b\n  annotations");
        one(
            &bad_value,
            7,
            "metadata.labels.app.kubernetes.io/name",
            "value `a b`",
        );
    }

    #[test]
    fn annotation_keys_are_checked_but_not_values() {
        one(
            &SERVICE.replace("note:", "bad key!:"),
            9,
            "metadata.annotations.bad key!",
            "key",
        );
    }

    #[test]
    fn problems_from_several_documents() {
        let text = format!(
            "{}---\n{}",
            SERVICE.replace("shop", "A"),
            SERVICE.replace("shop", "B")
        );
        let lines: Vec<_> = errors(&text).iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(5), Some(18)]);
    }
}
