//! Reading resource documents from YAML: several documents per file, each error located at its line in
//! the file (not in the document), with the field path and the reason.

use super::types::*;
use crate::yaml::{self, YamlError};
use serde::Deserialize;

/// One document read from a file, with what is needed to locate its fields later.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub resource: Resource,
    pub file: String,
    /// 1-based line in the file where the document starts.
    pub line: usize,
    text: String,
}

impl Parsed {
    /// A located error about `field` (a path such as `spec.rules[0].backendRefs[1].weight`).
    pub fn error(&self, field: &str, reason: impl Into<String>) -> YamlError {
        YamlError {
            file: self.file.clone(),
            line: Some(self.line + locate(&self.text, field)),
            column: None,
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// Checks within this document (names, ports, weights, regexes, ...); empty when valid.
    pub fn validate(&self) -> Vec<YamlError> {
        super::validate::document(&self.resource)
            .into_iter()
            .map(|(field, reason)| self.error(&field, reason))
            .collect()
    }
}

/// The parts of a document needed to pick its type.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
}

/// Reads every document of `text` (from `file`). All documents are read; every problem is returned.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Parsed>, Vec<YamlError>> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (start, chunk) in split_documents(text) {
        if chunk
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        match parse_one(file, start, &chunk) {
            Ok(resource) => docs.push(Parsed {
                resource,
                file: file.to_string(),
                line: start,
                text: chunk,
            }),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors)
    }
}

fn parse_one(file: &str, start: usize, chunk: &str) -> Result<Resource, YamlError> {
    let shift = |mut e: YamlError| {
        e.line = Some(e.line.map_or(start, |l| l + start - 1));
        e
    };
    let at = |field: &str, reason: String| YamlError {
        file: file.to_string(),
        line: Some(start + locate(chunk, field)),
        column: None,
        field: field.to_string(),
        reason,
    };
    let header: Header = yaml::from_str(file, chunk).map_err(shift)?;
    match header.api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => {
            return Err(at(
                "apiVersion",
                format!("unsupported apiVersion {other:?}; this release reads {API_VERSION}"),
            ))
        }
        None => {
            return Err(at(
                "apiVersion",
                format!("missing; write apiVersion: {API_VERSION}"),
            ))
        }
    }
    let kind = header
        .kind
        .ok_or_else(|| at("kind", "missing field `kind`".into()))?;
    let typed = |k: Kind| -> Result<Resource, YamlError> {
        Ok(match k {
            Kind::Service => Resource::Service(yaml::from_str(file, chunk).map_err(shift)?),
            Kind::Workload => Resource::Workload(yaml::from_str(file, chunk).map_err(shift)?),
            Kind::HttpRoute => Resource::HttpRoute(yaml::from_str(file, chunk).map_err(shift)?),
            Kind::AuthorizationPolicy => {
                Resource::AuthorizationPolicy(yaml::from_str(file, chunk).map_err(shift)?)
            }
            Kind::MeshConfig => Resource::MeshConfig(yaml::from_str(file, chunk).map_err(shift)?),
        })
    };
    match Kind::ALL.iter().find(|k| k.as_str() == kind) {
        Some(k) => typed(*k),
        None => {
            let valid: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            Err(at(
                "kind",
                format!("unknown kind {kind:?}; valid kinds: {}", valid.join(", ")),
            ))
        }
    }
}

/// Splits at `---` lines; yields (1-based start line of the document's first line, its text).
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut start = 1;
    let mut cur = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") {
            out.push((start, std::mem::take(&mut cur)));
            start = i + 2;
            continue;
        }
        if t == "..." {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    out.push((start, cur));
    out
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some(close) = rest.find(']') {
            if let Ok(n) = rest[1..close].parse() {
                out.push(Step::Index(n));
            }
            rest = &rest[close + 1..];
        }
    }
    out
}

/// A content line's key column and text after any `- ` item markers; `None` for blank and comment lines.
fn content(line: &str) -> Option<(usize, &str)> {
    let mut col = line.len() - line.trim_start().len();
    let mut t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    while let Some(rest) = t.strip_prefix("- ") {
        let rest_trimmed = rest.trim_start();
        col += t.len() - rest_trimmed.len();
        t = rest_trimmed;
    }
    Some((col, t))
}

/// The 0-based line (within `doc`) of the field at `path`, for block-style YAML; stops at the deepest
/// part it can find (a value in flow style `{...}` is located at its key).
fn locate(doc: &str, path: &str) -> usize {
    let lines: Vec<&str> = doc.lines().collect();
    // The node found so far: its line, the column its children must be right of (None: document root),
    // and whether its own line holds its first field (a `- key: value` item).
    let (mut at, mut depth, mut inclusive) = (0usize, None::<usize>, true);
    for step in steps(path) {
        let hit = match step {
            Step::Key(k) => find_key(&lines, at, depth, inclusive, k),
            Step::Index(n) => find_item(&lines, at, depth, n),
        };
        match (hit, step) {
            (Some((line, col)), Step::Key(_)) => (at, depth, inclusive) = (line, Some(col), false),
            (Some((line, col)), Step::Index(_)) => (at, depth, inclusive) = (line, Some(col), true),
            (None, _) => break,
        }
    }
    at
}

fn find_key(
    lines: &[&str],
    at: usize,
    depth: Option<usize>,
    inclusive: bool,
    key: &str,
) -> Option<(usize, usize)> {
    let start = if inclusive { at } else { at + 1 };
    let mut level = None;
    for (i, line) in lines.iter().enumerate().skip(start) {
        let Some((col, text)) = content(line) else {
            continue;
        };
        if depth.is_some_and(|d| col <= d) {
            return None;
        }
        // The next item of the same sequence ends this one.
        let indent = line.len() - line.trim_start().len();
        if i > at
            && inclusive
            && line.trim_start().starts_with("- ")
            && depth.is_some_and(|d| indent <= d)
        {
            return None;
        }
        let level = *level.get_or_insert(col);
        if col < level {
            return None;
        }
        if col == level && text.split(':').next() == Some(key) && text[key.len()..].starts_with(':')
        {
            return Some((i, col));
        }
    }
    None
}

fn find_item(lines: &[&str], at: usize, depth: Option<usize>, n: usize) -> Option<(usize, usize)> {
    let mut seen = 0;
    let mut dash_col = None;
    for (i, line) in lines.iter().enumerate().skip(at + 1) {
        let Some((col, _)) = content(line) else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let is_item = line.trim_start().starts_with("- ");
        if !is_item {
            if depth.is_some_and(|d| col <= d) {
                return None;
            }
            continue;
        }
        // Sequences may sit at their key's own indentation.
        if depth.is_some_and(|d| indent < d) {
            return None;
        }
        let dc = *dash_col.get_or_insert(indent);
        if indent != dc {
            continue;
        }
        if seen == n {
            return Some((i, indent));
        }
        seen += 1;
    }
    None
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

    pub fn key(&self) -> ResourceKey {
        let m = self.metadata();
        ResourceKey {
            kind: self.kind(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
        }
    }

    /// The document as JSON (with `kind`), as the operator API and the state file carry it.
    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            Resource::Service(d) => serde_json::to_value(d),
            Resource::Workload(d) => serde_json::to_value(d),
            Resource::HttpRoute(d) => serde_json::to_value(d),
            Resource::AuthorizationPolicy(d) => serde_json::to_value(d),
            Resource::MeshConfig(d) => serde_json::to_value(d),
        };
        v.expect("resources always serialize")
    }

    pub fn from_json(v: serde_json::Value) -> Result<Resource, serde_json::Error> {
        use serde::de::Error as _;
        let kind = v
            .get("kind")
            .and_then(|k| k.as_str())
            .and_then(|k| Kind::ALL.iter().find(|x| x.as_str() == k).copied())
            .ok_or_else(|| serde_json::Error::custom("missing or unknown `kind`"))?;
        Ok(match kind {
            Kind::Service => Resource::Service(serde_json::from_value(v)?),
            Kind::Workload => Resource::Workload(serde_json::from_value(v)?),
            Kind::HttpRoute => Resource::HttpRoute(serde_json::from_value(v)?),
            Kind::AuthorizationPolicy => Resource::AuthorizationPolicy(serde_json::from_value(v)?),
            Kind::MeshConfig => Resource::MeshConfig(serde_json::from_value(v)?),
        })
    }

    /// The document as YAML, for display and diffs.
    pub fn to_yaml(&self) -> String {
        let r = match self {
            Resource::Service(d) => yaml::to_string(d),
            Resource::Workload(d) => yaml::to_string(d),
            Resource::HttpRoute(d) => yaml::to_string(d),
            Resource::AuthorizationPolicy(d) => yaml::to_string(d),
            Resource::MeshConfig(d) => yaml::to_string(d),
        };
        r.unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "apiVersion: weft.dev/v1
kind: Service
metadata:
  name: reviews
spec:
  ports:
    - port: 9080
  selector:
    app: reviews
---
apiVersion: weft.dev/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs:
    - name: reviews
  rules:
    - backendRefs:
        - name: reviews
          subset: v1
          weight: 90
        - name: reviews
          subset: v2
          weight: 10
";

    #[test]
    fn reads_several_documents_with_their_start_lines() {
        let docs = parse_documents("r.yaml", TWO).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].line, 1);
        assert_eq!(docs[1].line, 11);
        assert_eq!(docs[1].resource.kind(), Kind::HttpRoute);
        assert_eq!(docs[1].resource.key().namespace, "default");
    }

    #[test]
    fn errors_carry_the_line_in_the_file() {
        let bad = TWO.replace("weight: 10", "weight: ten");
        let e = &parse_documents("r.yaml", &bad).unwrap_err()[0];
        assert_eq!(e.line, Some(25), "{e}");
        assert!(e.field.contains("weight"), "{e}");
        let bad = TWO.replace("  selector:", "  selektor:");
        let e = &parse_documents("r.yaml", &bad).unwrap_err()[0];
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.to_string().contains("selektor"), "{e}");
    }

    #[test]
    fn unknown_kind_and_api_version_are_named() {
        let e = &parse_documents(
            "k.yaml",
            "apiVersion: weft.dev/v1\nkind: Gateway\nmetadata: {name: x}\nspec: {}\n",
        )
        .unwrap_err()[0];
        assert_eq!(e.line, Some(2));
        assert!(
            e.reason.contains("Gateway") && e.reason.contains("HTTPRoute"),
            "{e}"
        );
        let e = &parse_documents("k.yaml", "apiVersion: v9\nkind: Service\n").unwrap_err()[0];
        assert_eq!(e.line, Some(1));
        assert!(e.reason.contains("v9"), "{e}");
    }

    #[test]
    fn every_bad_document_is_reported() {
        let text = format!(
            "{}---\napiVersion: weft.dev/v1\nkind: Nope\n---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: a}}\nspec: {{ports: [{{port: x}}]}}\n",
            TWO.replace("weight: 10", "weight: -1")
        );
        let errs = parse_documents("m.yaml", &text).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn fields_are_located_for_later_checks() {
        let docs = parse_documents("r.yaml", TWO).unwrap();
        let e = docs[1].error("spec.rules[0].backendRefs[1].weight", "x");
        assert_eq!(e.line, Some(25), "{e}");
        let e = docs[1].error("spec.rules[0].backendRefs[1].name", "x");
        assert_eq!(e.line, Some(23), "{e}");
        let e = docs[1].error("spec.rules[0].backendRefs[0].subset", "x");
        assert_eq!(e.line, Some(21), "{e}");
        let e = docs[1].error("spec.parentRefs[0].name", "x");
        assert_eq!(e.line, Some(17), "{e}");
        let e = docs[0].error("metadata.name", "x");
        assert_eq!(e.line, Some(4), "{e}");
    }

    #[test]
    fn json_round_trip() {
        for d in parse_documents("r.yaml", TWO).unwrap() {
            let back = Resource::from_json(d.resource.to_json()).unwrap();
            assert_eq!(back, d.resource);
        }
    }
}
