//! Authorization by identity: the `AuthorizationPolicy`s that apply to one workload (those of its
//! namespace that select it and the mesh-wide ones), compiled once. The proxy applies them to every
//! request and opaque stream that arrives; the control plane uses the same code to explain a decision
//! (`weftctl why`).
//!
//! Deny wins: a matching DENY policy refuses; then, if any ALLOW policy applies, something must match one
//! of them; with no ALLOW policy, mesh traffic is allowed. A policy in `mode: audit` decides the same way
//! but only logs and counts what it would refuse. Opaque TCP has no method, path or headers: an ALLOW rule
//! that asks for them never matches it, while a DENY rule is applied on its identity and port parts alone
//! (the stricter reading of each).

pub mod normalize;
mod reach;

use crate::resources::{
    AuthorizationPolicySpec, Document, PolicyAction, PolicyMode, PolicyOperation, PolicySource,
    ValueMatchType,
};
use regex::{Regex, RegexBuilder};
use weft_certs::SpiffeId;

/// What is being authorized.
pub struct Subject<'a> {
    /// The verified caller; `None` for plaintext from outside the mesh.
    pub source: Option<&'a SpiffeId>,
    /// The app port.
    pub port: u16,
    /// `None` for an opaque stream.
    pub http: Option<HttpSubject<'a>>,
}

pub struct HttpSubject<'a> {
    pub method: &'a str,
    /// Already normalised (see [`normalize`]).
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused by this policy (`namespace/name`), or by the absence of a matching ALLOW policy.
    Deny(Denial),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// `namespace/name` of the DENY policy that matched, or of the first ALLOW policy none of which did.
    pub policy: String,
    pub reason: &'static str,
}

/// The result of one check: the decision, and what audit-mode policies would have refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub audit: Option<Denial>,
}

#[derive(Debug, Default)]
pub struct Authorizer {
    policies: Vec<Policy>,
}

#[derive(Debug)]
struct Policy {
    name: String,
    action: PolicyAction,
    mode: PolicyMode,
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    from: Vec<Source>,
    to: Vec<Operation>,
}

#[derive(Debug)]
struct Source {
    principals: Vec<String>,
    namespaces: Vec<String>,
    service_accounts: Vec<(String, String)>,
}

#[derive(Debug)]
struct Operation {
    ports: Vec<u16>,
    methods: Vec<String>,
    paths: Vec<PathGlob>,
    headers: Vec<(http::HeaderName, HeaderRule)>,
}

#[derive(Debug)]
enum PathGlob {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Any,
}

#[derive(Debug)]
enum HeaderRule {
    Exact(String),
    Regex(Regex),
}

#[derive(Debug, thiserror::Error)]
#[error("authorization policy {policy} {field}: {reason}")]
pub struct PolicyError {
    policy: String,
    field: String,
    reason: String,
}

impl Authorizer {
    pub fn compile(
        docs: &[Document<AuthorizationPolicySpec>],
        max_regex_bytes: usize,
    ) -> Result<Authorizer, PolicyError> {
        let mut policies = Vec::with_capacity(docs.len());
        for d in docs {
            let name = format!("{}/{}", d.metadata.namespace, d.metadata.name);
            let rules = d
                .spec
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    Ok(Rule {
                        from: r.from.iter().map(source).collect(),
                        to: r
                            .to
                            .iter()
                            .enumerate()
                            .map(|(j, o)| {
                                operation(o, max_regex_bytes)
                                    .map_err(|(f, e)| (format!("rules[{i}].to[{j}]{f}"), e))
                            })
                            .collect::<Result<_, _>>()?,
                    })
                })
                .collect::<Result<Vec<_>, (String, String)>>()
                .map_err(|(field, reason)| PolicyError {
                    policy: name.clone(),
                    field,
                    reason,
                })?;
            policies.push(Policy {
                name,
                action: d.spec.action,
                mode: d.spec.mode,
                rules,
            });
        }
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Authorizer { policies })
    }

    /// Whether any policy applies (then paths are normalised and forwarded normalised).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn check(&self, s: &Subject<'_>) -> Verdict {
        let denial = |o: Outcome| {
            o.denied.then(|| Denial {
                policy: o
                    .policy
                    .map(|i| self.policies[i].name.clone())
                    .unwrap_or_default(),
                reason: o.reason,
            })
        };
        Verdict {
            decision: match denial(self.decide(s, PolicyMode::Enforce)) {
                None => Decision::Allow,
                Some(d) => Decision::Deny(d),
            },
            audit: denial(self.decide(s, PolicyMode::Audit)),
        }
    }

    /// The decision for `s` with the policy and rule behind it, and how every policy fared: what
    /// `weftctl why` shows.
    pub fn explain(&self, s: &Subject<'_>) -> Explanation {
        let named = |o: Outcome| Explained {
            allowed: !o.denied,
            policy: o.policy.map(|i| self.policies[i].name.clone()),
            rule: o.hit.and_then(|h| h.rule()),
            reason: o.reason.to_string(),
        };
        Explanation {
            decision: named(self.decide(s, PolicyMode::Enforce)),
            audit: named(self.decide(s, PolicyMode::Audit)),
            policies: self
                .policies
                .iter()
                .map(|p| PolicyResult {
                    policy: p.name.clone(),
                    action: p.action,
                    mode: p.mode,
                    matched: p.hit(s).map(|h| h.rule()),
                })
                .collect(),
        }
    }

    fn decide(&self, s: &Subject<'_>, mode: PolicyMode) -> Outcome {
        let of_mode = |action| {
            self.policies
                .iter()
                .enumerate()
                .filter(move |(_, p)| p.mode == mode && p.action == action)
        };
        for (i, p) in of_mode(PolicyAction::Deny) {
            if let Some(hit) = p.hit(s) {
                return Outcome::new(true, Some(i), Some(hit), "matched a DENY policy");
            }
        }
        let mut first_allow = None;
        for (i, p) in of_mode(PolicyAction::Allow) {
            first_allow.get_or_insert(i);
            if let Some(hit) = p.hit(s) {
                return Outcome::new(false, Some(i), Some(hit), "matched an ALLOW policy");
            }
        }
        match first_allow {
            None => Outcome::new(false, None, None, "no ALLOW policy applies"),
            Some(i) => Outcome::new(true, Some(i), None, "no ALLOW policy matched"),
        }
    }
}

/// One pass's result, by index (the proxy's hot path allocates only for a denial).
struct Outcome {
    denied: bool,
    policy: Option<usize>,
    hit: Option<Hit>,
    reason: &'static str,
}

impl Outcome {
    fn new(denied: bool, policy: Option<usize>, hit: Option<Hit>, reason: &'static str) -> Self {
        Outcome {
            denied,
            policy,
            hit,
            reason,
        }
    }
}

/// How a policy matched.
#[derive(Clone, Copy)]
enum Hit {
    /// A DENY policy without rules matches everything.
    NoRules,
    Rule(usize),
}

impl Hit {
    fn rule(self) -> Option<usize> {
        match self {
            Hit::NoRules => None,
            Hit::Rule(i) => Some(i),
        }
    }
}

/// A decision spelled out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Explained {
    pub allowed: bool,
    /// `namespace/name` of the policy that decided (for "no ALLOW policy matched", the first ALLOW one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Index of the policy's rule that matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    pub reason: String,
}

impl std::fmt::Display for Explained {
    /// `allowed by shop/viewers rules[0]`, `denied by shop/no-debug rules[1] (matched a DENY policy)`,
    /// `allowed (no ALLOW policy applies)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.allowed { "allowed" } else { "denied" })?;
        match (&self.policy, self.rule) {
            (Some(p), Some(r)) => write!(f, " by {p} rules[{r}] ({})", self.reason),
            (Some(p), None) => write!(f, " by {p} ({})", self.reason),
            (None, _) => write!(f, " ({})", self.reason),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Explanation {
    /// What enforcing policies decide.
    pub decision: Explained,
    /// What audit-mode policies would decide (allowed when there are none).
    pub audit: Explained,
    /// Every policy that applies, in evaluation order.
    pub policies: Vec<PolicyResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyResult {
    pub policy: String,
    pub action: PolicyAction,
    pub mode: PolicyMode,
    /// `None`: no match; `Some(None)`: matched as a DENY without rules; `Some(Some(i))`: rule `i`.
    pub matched: Option<Option<usize>>,
}

impl Policy {
    /// An ALLOW policy without rules matches nothing; a DENY policy without rules, everything.
    fn hit(&self, s: &Subject<'_>) -> Option<Hit> {
        if self.rules.is_empty() {
            return (self.action == PolicyAction::Deny).then_some(Hit::NoRules);
        }
        let deny = self.action == PolicyAction::Deny;
        self.rules
            .iter()
            .position(|r| {
                (r.from.is_empty() || r.from.iter().any(|f| f.matches(s.source)))
                    && (r.to.is_empty() || r.to.iter().any(|o| o.matches(s, deny)))
            })
            .map(Hit::Rule)
    }
}

impl Source {
    /// Every listed field must hold; within a field, any value.
    fn matches(&self, id: Option<&SpiffeId>) -> bool {
        let Some(id) = id else {
            // Plaintext has no identity: it matches no source.
            return false;
        };
        let ns = id.namespace().unwrap_or("");
        let sa = id.service_account().unwrap_or("");
        (self.principals.is_empty() || self.principals.iter().any(|p| p == "*" || p == id.as_str()))
            && (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == "*" || n == ns))
            && (self.service_accounts.is_empty()
                || self
                    .service_accounts
                    .iter()
                    .any(|(n, a)| n == ns && a == sa))
    }
}

impl Operation {
    fn matches(&self, s: &Subject<'_>, deny: bool) -> bool {
        if !self.ports.is_empty() && !self.ports.contains(&s.port) {
            return false;
        }
        let wants_http =
            !self.methods.is_empty() || !self.paths.is_empty() || !self.headers.is_empty();
        let Some(h) = &s.http else {
            return !wants_http || deny;
        };
        (self.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(h.method)))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(h.path)))
            && self.headers.iter().all(|(name, rule)| {
                h.headers
                    .get_all(name)
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| rule.matches(v)))
            })
    }
}

impl PathGlob {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathGlob::Exact(p) => p == path,
            PathGlob::Prefix(p) => path.starts_with(p.as_str()),
            PathGlob::Suffix(p) => path.ends_with(p.as_str()),
            PathGlob::Any => true,
        }
    }
}

impl HeaderRule {
    fn matches(&self, v: &str) -> bool {
        match self {
            HeaderRule::Exact(e) => e == v,
            HeaderRule::Regex(r) => r.is_match(v),
        }
    }
}

fn source(s: &PolicySource) -> Source {
    Source {
        principals: s.principals.clone(),
        namespaces: s.namespaces.clone(),
        service_accounts: s
            .service_accounts
            .iter()
            .filter_map(|x| x.split_once('/'))
            .map(|(n, a)| (n.to_string(), a.to_string()))
            .collect(),
    }
}

fn operation(o: &PolicyOperation, limit: usize) -> Result<Operation, (String, String)> {
    let headers = o
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let name = http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                (
                    format!(".headers[{i}]"),
                    format!("`{}` is not a header name", h.name),
                )
            })?;
            let rule = match h.kind {
                ValueMatchType::Exact => HeaderRule::Exact(h.value.clone()),
                ValueMatchType::RegularExpression => HeaderRule::Regex(
                    RegexBuilder::new(&format!("^(?:{})$", h.value))
                        .size_limit(limit)
                        .build()
                        .map_err(|e| (format!(".headers[{i}]"), e.to_string()))?,
                ),
            };
            Ok((name, rule))
        })
        .collect::<Result<Vec<_>, (String, String)>>()?;
    Ok(Operation {
        ports: o.ports.clone(),
        methods: o.methods.clone(),
        paths: o.paths.iter().map(|p| glob(p)).collect(),
        headers,
    })
}

/// `*` alone, `/prefix*`, `*suffix` or an exact path. Exact and prefix patterns are normalised like
/// requests, so `/admin/` in a policy means what `/admin/` in a request means.
fn glob(p: &str) -> PathGlob {
    if p == "*" {
        PathGlob::Any
    } else if let Some(prefix) = p.strip_suffix('*') {
        PathGlob::Prefix(normalize_pattern(prefix))
    } else if let Some(suffix) = p.strip_prefix('*') {
        PathGlob::Suffix(suffix.to_string())
    } else {
        PathGlob::Exact(normalize_pattern(p))
    }
}

fn normalize_pattern(p: &str) -> String {
    match normalize::normalize(p) {
        // Keep a prefix's trailing slash: `/admin/*` must not match `/administrator`.
        Ok(n) if p.ends_with('/') && !n.ends_with('/') => n + "/",
        Ok(n) => n,
        Err(_) => p.to_string(),
    }
}

#[cfg(test)]
mod tests;
