//! Reading resource files: several documents per file, every error with the file's own line.
//!
//! Each document is read twice. A lenient first pass reads only `apiVersion` and `kind`, and checks that
//! `metadata` and `spec` are there, so an unknown kind is reported as such (with the valid ones) rather
//! than as a confusing type error. The second pass deserializes the typed document for that kind, with
//! unknown fields refused, so the parser itself locates wrong types and typos.

use super::locate::DocSource;
use super::resource::kind_list;
use super::types::{Document, Kind, Resource, API_VERSION};
use crate::yaml::{self, YamlDocument, YamlError};
use crate::yaml_limits::{self, Limits};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use std::time::{Duration, Instant};

/// One document read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub resource: Resource,
    /// The file as the caller named it.
    pub file: String,
    /// 1-based line where the document's content starts.
    pub line: usize,
    /// The document's text, to locate fields in errors found after parsing.
    pub source: DocSource,
}

impl Parsed {
    /// A resource that did not come from YAML text (JSON, a state file): errors point at `file:line`.
    pub fn detached(resource: Resource, file: &str, line: usize) -> Parsed {
        Parsed {
            resource,
            file: file.to_string(),
            line,
            source: DocSource::detached(line),
        }
    }

    /// An error about `field` of this document, at the line where the field is written.
    pub fn error(&self, field: &str, reason: impl Into<String>) -> YamlError {
        let at = self.source.locate(field);
        YamlError {
            file: self.file.clone(),
            line: Some(at.line),
            column: Some(at.column),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// `file:line`, for messages that name where a document came from.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// What the first pass reads. Not `deny_unknown_fields`: the typed pass reports those.
#[derive(Deserialize)]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<IgnoredAny>,
    spec: Option<IgnoredAny>,
}

/// Reads every document of `text` (the contents of `file`). Documents are separated by `---`; empty
/// ones are skipped. Either every document is good, or the answer is every error of every document.
/// The text is held to [`yaml_limits::LIMITS`] first; a document over a limit is the only error.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Parsed>, Vec<YamlError>> {
    Batch::new(yaml_limits::LIMITS, None)
        .read(file, text)
        .map_err(|e| match e {
            BatchError::Limit(e) => vec![e.error],
            BatchError::Invalid(errors) => errors,
            BatchError::Deadline(d) => vec![YamlError {
                file: file.to_string(),
                line: None,
                column: None,
                field: String::new(),
                reason: format!("not read within {d:?}"),
            }],
        })
}

/// Why a batch was not read.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchError {
    /// A document over one of the limits: nothing of it was parsed.
    Limit(yaml_limits::LimitError),
    /// The deadline passed between two documents.
    Deadline(Duration),
    /// Documents that do not parse: every error of every document.
    Invalid(Vec<YamlError>),
}

/// The documents of one change (an apply, a reload of the watched directory), read file by file
/// under one set of limits (the document count spans files) and, optionally, one deadline.
pub struct Batch {
    limits: Limits,
    deadline: Option<(Instant, Duration)>,
    documents: usize,
}

impl Batch {
    /// `within`: the time the whole batch may take from now, checked between documents.
    pub fn new(limits: Limits, within: Option<Duration>) -> Batch {
        Batch {
            limits,
            deadline: within.map(|d| (Instant::now() + d, d)),
            documents: 0,
        }
    }

    /// Reads one file of the batch: limits first, document by document, then the parser.
    pub fn read(&mut self, file: &str, text: &str) -> Result<Vec<Parsed>, BatchError> {
        let docs: Vec<_> = yaml::split_documents(text)
            .into_iter()
            .filter(|d| !d.is_empty())
            .collect();
        for doc in &docs {
            self.documents += 1;
            if self.documents > self.limits.max_documents {
                let max = self.limits.max_documents;
                return Err(BatchError::Limit(yaml_limits::too_many_documents(
                    file, doc, max,
                )));
            }
            yaml_limits::check_document(file, doc, &self.limits).map_err(BatchError::Limit)?;
        }
        let mut parsed = Vec::new();
        let mut errors = Vec::new();
        for doc in &docs {
            self.check_deadline()?;
            match parse_one(file, doc) {
                Ok(p) => parsed.push(p),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(parsed)
        } else {
            Err(BatchError::Invalid(errors))
        }
    }

    /// Fails once the batch's deadline has passed.
    pub fn check_deadline(&self) -> Result<(), BatchError> {
        match self.deadline {
            Some((at, within)) if Instant::now() >= at => Err(BatchError::Deadline(within)),
            _ => Ok(()),
        }
    }
}

fn parse_one(file: &str, doc: &YamlDocument<'_>) -> Result<Parsed, Vec<YamlError>> {
    let source = DocSource::new(doc);
    let header: Header = yaml::from_document(file, doc).map_err(|e| vec![humanize(e)])?;
    let kind = check_header(file, &source, &header)?;
    let resource = read_typed(file, doc, kind).map_err(|e| vec![humanize(e)])?;
    Ok(Parsed {
        resource,
        file: file.to_string(),
        line: source.start().line,
        source,
    })
}

/// Every problem with the header at once; the kind when there is none.
fn check_header(file: &str, source: &DocSource, h: &Header) -> Result<Kind, Vec<YamlError>> {
    let error = |field: &str, reason: String| {
        let at = source.locate(field);
        YamlError {
            file: file.to_string(),
            line: Some(at.line),
            column: Some(at.column),
            field: field.to_string(),
            reason,
        }
    };
    let mut errors = Vec::new();
    match h.api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => errors.push(error(
            "apiVersion",
            format!("apiVersion `{other}` is not supported; expected `{API_VERSION}`"),
        )),
        None => errors.push(error(
            "apiVersion",
            format!("missing; every document needs `apiVersion: {API_VERSION}`"),
        )),
    }
    let kind = match h.kind.as_deref() {
        Some(name) => {
            let kind = Kind::from_document(name);
            if kind.is_none() {
                errors.push(error("kind", unknown_kind(name)));
            }
            kind
        }
        None => {
            let reason = format!(
                "missing; every document needs a kind, one of {}",
                kind_list()
            );
            errors.push(error("kind", reason));
            None
        }
    };
    for (field, present) in [
        ("metadata", h.metadata.is_some()),
        ("spec", h.spec.is_some()),
    ] {
        if !present {
            errors.push(error(
                field,
                format!("missing or empty; every document needs `{field}`"),
            ));
        }
    }
    match kind {
        Some(kind) if errors.is_empty() => Ok(kind),
        _ => Err(errors),
    }
}

fn unknown_kind(name: &str) -> String {
    let hint = Kind::ALL
        .into_iter()
        .find(|k| k.as_str().eq_ignore_ascii_case(name))
        .map(|k| format!(" (kinds are case-sensitive: did you mean `{k}`?)"))
        .unwrap_or_default();
    format!(
        "unknown kind `{name}`; expected one of {}{hint}",
        kind_list()
    )
}

fn read_typed(file: &str, doc: &YamlDocument<'_>, kind: Kind) -> Result<Resource, YamlError> {
    Ok(match kind {
        Kind::Service => Resource::Service(typed(file, doc)?),
        Kind::Workload => Resource::Workload(typed(file, doc)?),
        Kind::HttpRoute => Resource::HttpRoute(typed(file, doc)?),
        Kind::AuthorizationPolicy => Resource::AuthorizationPolicy(typed(file, doc)?),
        Kind::MeshConfig => Resource::MeshConfig(typed(file, doc)?),
    })
}

fn typed<S: DeserializeOwned>(
    file: &str,
    doc: &YamlDocument<'_>,
) -> Result<Document<S>, YamlError> {
    yaml::from_document(file, doc)
}

/// serde names Rust types in its messages (`expected struct RouteMatch`, `expected u16`); operators
/// think in YAML shapes and ranges.
fn humanize(mut e: YamlError) -> YamlError {
    let mut reason = e.reason.replace(
        "expected struct Header",
        "expected a mapping with apiVersion, kind, metadata and spec",
    );
    for (rust, shown) in [
        ("u16", "an integer from 0 to 65535"),
        ("u32", "an integer from 0 to 4294967295"),
        ("a borrowed string", "a string"),
    ] {
        if let Some(head) = reason.strip_suffix(&format!("expected {rust}")) {
            reason = format!("{head}expected {shown}");
        }
    }
    if let Some(i) = reason.find("expected struct ") {
        reason.truncate(i);
        reason.push_str("expected a mapping");
    }
    e.reason = reason;
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "\
apiVersion: weft.dev/v1
kind: Service
metadata:
  name: reviews
spec:
  ports:
  - port: 9080
";

    fn errors(text: &str) -> Vec<YamlError> {
        parse_documents("f.yaml", text).unwrap_err()
    }

    fn one_error(text: &str) -> YamlError {
        let mut e = errors(text);
        assert_eq!(e.len(), 1, "{e:?}");
        e.remove(0)
    }

    #[test]
    fn reads_a_document() {
        let parsed = parse_documents("f.yaml", SERVICE).unwrap();
        assert_eq!(parsed.len(), 1);
        let p = &parsed[0];
        assert_eq!((p.file.as_str(), p.line), ("f.yaml", 1));
        assert_eq!(p.resource.key().to_string(), "Service default/reviews");
    }

    #[test]
    fn several_documents_and_empty_ones() {
        let text = format!("# header\n---\n{SERVICE}---\n---\n# nothing\n---\n{SERVICE}");
        let parsed = parse_documents("f.yaml", &text).unwrap();
        let lines: Vec<_> = parsed.iter().map(|p| p.line).collect();
        assert_eq!(lines, [3, 14]);
    }

    #[test]
    fn an_empty_file_holds_no_documents() {
        assert_eq!(parse_documents("f", "").unwrap(), []);
        assert_eq!(parse_documents("f", "# only\n---\n").unwrap(), []);
    }

    #[test]
    fn unknown_kind_lists_the_valid_ones() {
        let e = one_error(&SERVICE.replace("kind: Service", "kind: Gateway"));
        assert_eq!((e.line, e.field.as_str()), (Some(2), "kind"));
        assert!(e.reason.contains("unknown kind `Gateway`"), "{e}");
        assert!(e.reason.contains("HTTPRoute, AuthorizationPolicy"), "{e}");
    }

    #[test]
    fn kind_in_the_wrong_case_gets_a_hint() {
        let e = one_error(&SERVICE.replace("kind: Service", "kind: service"));
        assert!(e.reason.contains("did you mean `Service`"), "{e}");
    }

    #[test]
    fn wrong_api_version() {
        let e = one_error(&SERVICE.replace("weft.dev/v1", "weft.dev/v2"));
        assert_eq!((e.line, e.field.as_str()), (Some(1), "apiVersion"));
        assert!(e.reason.contains("`weft.dev/v2` is not supported"), "{e}");
    }

    #[test]
    fn missing_header_fields_are_all_reported() {
        let e = errors("apiVersion: weft.dev/v1\n\nfoo: 1\n");
        let fields: Vec<_> = e.iter().map(|e| (e.field.as_str(), e.line)).collect();
        assert_eq!(
            fields,
            [("kind", Some(1)), ("metadata", Some(1)), ("spec", Some(1))]
        );
    }

    #[test]
    fn missing_api_version() {
        let e = one_error(&SERVICE.replace("apiVersion: weft.dev/v1\n", ""));
        assert_eq!(e.field, "apiVersion");
        assert!(e.reason.contains("missing"), "{e}");
    }

    #[test]
    fn document_that_is_not_a_mapping() {
        let e = one_error("- a\n- b\n");
        assert!(
            e.reason.contains("expected a mapping with apiVersion"),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_is_located_by_the_parser() {
        let e = one_error(&SERVICE.replace("  - port: 9080", "  - port: 9080\n    colour: red"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(8), "spec.ports[0].colour")
        );
        assert!(e.reason.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn wrong_type_is_located_by_the_parser() {
        let e = one_error(&SERVICE.replace("port: 9080", "port: http"));
        assert_eq!((e.line, e.field.as_str()), (Some(7), "spec.ports[0].port"));
        assert!(
            e.reason.contains("expected an integer from 0 to 65535"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            format!("f.yaml:7:11: field `spec.ports[0].port`: {}", e.reason)
        );
    }

    #[test]
    fn out_of_range_port() {
        let e = one_error(&SERVICE.replace("port: 9080", "port: 70000"));
        assert_eq!((e.line, e.field.as_str()), (Some(7), "spec.ports[0].port"));
    }

    #[test]
    fn struct_names_do_not_leak() {
        let e = one_error(&SERVICE.replace("  - port: 9080", "  - 9080"));
        assert!(e.reason.ends_with("expected a mapping"), "{e}");
    }

    #[test]
    fn errors_in_the_third_document_carry_file_lines() {
        let bad = SERVICE.replace("name: reviews", "name: reviews\n  colour: red");
        let text = format!("{SERVICE}---\n{SERVICE}---\n{bad}");
        let e = one_error(&text);
        assert_eq!((e.line, e.field.as_str()), (Some(21), "metadata.colour"));
    }

    #[test]
    fn every_bad_document_is_reported() {
        let text = format!(
            "{}---\n{SERVICE}---\n{}",
            SERVICE.replace("kind: Service", "kind: Nope"),
            SERVICE.replace("port: 9080", "port: -1"),
        );
        let lines: Vec<_> = errors(&text).iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(2), Some(23)]);
    }

    #[test]
    fn syntax_errors_are_located() {
        let text = format!("{SERVICE}---\nkind: [\n");
        let e = one_error(&text);
        assert_eq!(e.line, Some(9));
        let text = format!(
            "{SERVICE}---\n{}",
            SERVICE.replace("  - port: 9080", "  - {port: [}")
        );
        let e = one_error(&text);
        assert_eq!(e.line, Some(15));
        assert!(
            !e.reason.contains("line"),
            "document-relative line left in {e}"
        );
    }

    #[test]
    fn each_kind_reads_into_its_variant() {
        for (kind, spec) in [
            ("Service", "{ports: [{port: 80}]}"),
            ("Workload", "{address: 10.0.0.1}"),
            (
                "HTTPRoute",
                "{parentRefs: [{name: a}], rules: [{backendRefs: [{name: a}]}]}",
            ),
            ("AuthorizationPolicy", "{action: ALLOW}"),
            ("MeshConfig", "{}"),
        ] {
            let text = format!(
                "apiVersion: weft.dev/v1\nkind: {kind}\nmetadata: {{name: x}}\nspec: {spec}\n"
            );
            let p = parse_documents("f", &text).unwrap();
            assert_eq!(p[0].resource.kind().as_str(), kind);
        }
    }

    #[test]
    fn detached_errors_point_at_their_line() {
        let p = parse_documents("f", SERVICE).unwrap().remove(0);
        let d = Parsed::detached(p.resource, "api", 4);
        let e = d.error("spec.ports[0].port", "bad");
        assert_eq!(e.to_string(), "api:4:1: field `spec.ports[0].port`: bad");
    }
}
