//! Routing on the data path: the mesh's `HTTPRoute`s compiled (matching lives in
//! [`weft_api::routing`], shared with the control plane), each rule carrying the policy the proxy
//! applies to the requests it takes: timeouts, retries, header edits, fallback, rate limit.

use crate::traffic::retry::RetryRule;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use weft_api::resources::{Document, Fallback, HttpRouteSpec, RateLimit, RouteRule};
use weft_api::routing::{self, FieldError, HeaderEdit};

pub use weft_api::routing::{Backend, Choice, RequestView, RouteError};

/// Every service's rules, compiled once per snapshot.
#[derive(Debug, Default)]
pub struct RouteTable {
    table: routing::RouteTable<Arc<RulePolicy>>,
    /// Some rule has a rate limit (the destination side looks for one only then).
    has_rate_limits: bool,
}

/// What a rule says about the requests it takes, besides where they go.
#[derive(Debug, Default)]
pub struct RulePolicy {
    /// `namespace/route rules[i]` (or the rule's name): for logs and rate-limit buckets.
    pub name: String,
    pub request_timeout: Option<Duration>,
    pub per_try_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub retry: RetryRule,
    pub request_headers: HeaderEdit,
    pub response_headers: HeaderEdit,
    pub fallback: Option<Arc<Fallback>>,
    pub rate_limit: Option<RateLimit>,
}

/// The policy of requests no rule takes: default retries, no timeouts.
pub static DEFAULT_POLICY: LazyLock<Arc<RulePolicy>> =
    LazyLock::new(|| Arc::new(RulePolicy::default()));

impl RouteTable {
    /// Compiles every route; regexes are limited to `max_regex_bytes` of compiled program.
    pub fn compile(
        routes: &[Document<HttpRouteSpec>],
        max_regex_bytes: usize,
    ) -> Result<RouteTable, RouteError> {
        let table = routing::RouteTable::compile(routes, max_regex_bytes, |rule, name| {
            compile_policy(rule, name).map(Arc::new)
        })?;
        let has_rate_limits = table.rules().any(|r| r.payload.rate_limit.is_some());
        Ok(RouteTable {
            table,
            has_rate_limits,
        })
    }

    pub fn has_rate_limits(&self) -> bool {
        self.has_rate_limits
    }

    /// The backend for a request (or, with `req` absent, an opaque connection) to
    /// `namespace/name:port`, and the policy of the rule that takes it (the default policy when none
    /// does).
    pub fn route(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        req: Option<&RequestView<'_>>,
    ) -> (Choice, Arc<RulePolicy>) {
        match self
            .table
            .choose(namespace, name, port, req, rand::random::<u64>)
        {
            (choice, Some(rule)) => (choice, rule.payload.clone()),
            (choice, None) => (choice, DEFAULT_POLICY.clone()),
        }
    }

    /// The policy of the rule that takes a request (or, with `req` absent, an opaque stream: rules
    /// without matches), if any does (the destination side's view, for rate limits).
    pub fn policy(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        req: Option<&RequestView<'_>>,
    ) -> Option<Arc<RulePolicy>> {
        self.table
            .rule(namespace, name, port, req)
            .map(|r| r.payload.clone())
    }
}

fn compile_policy(rule: &RouteRule, name: &str) -> Result<RulePolicy, FieldError> {
    let (request_headers, response_headers) = routing::header_edits(rule)?;
    let t = rule.timeouts.clone().unwrap_or_default();
    Ok(RulePolicy {
        name: name.to_string(),
        request_timeout: t.request.map(|d| d.get()),
        per_try_timeout: t.backend_request.map(|d| d.get()),
        idle_timeout: t.idle.map(|d| d.get()),
        retry: RetryRule::from_policy(rule.retry.as_ref()),
        request_headers,
        response_headers,
        fallback: rule.fallback.clone().map(Arc::new),
        rate_limit: rule.rate_limit.clone(),
    })
}
