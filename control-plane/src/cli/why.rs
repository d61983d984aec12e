//! `weftctl why`: asks the control plane (`POST /v1/why`) how a request from one identity to a service
//! would be treated, and shows the answer: route rule and split, endpoints, and the policy decision at
//! each.

use super::args::{ListFormat, WhyArgs};
use super::client::Client;
use super::commands::{CommandError, Exit, Reply};
use std::fmt::Write;
use weft_api::authz::PolicyResult;
use weft_api::operator::{WhyAnswer, WhyRequest};

pub async fn why(client: &Client, a: WhyArgs) -> Result<Reply, CommandError> {
    let q = request(&a)?;
    let answer: WhyAnswer = client
        .post("/v1/why", &q, super::client::REQUEST_TIMEOUT)
        .await?;
    let stdout = match a.output {
        ListFormat::Table => render(&answer),
        ListFormat::Json => {
            let mut s = serde_json::to_string_pretty(&answer)
                .map_err(|e| CommandError::Unreadable(e.to_string()))?;
            s.push('\n');
            s
        }
    };
    Ok(Reply {
        stdout,
        stderr: String::new(),
        exit: if answer.verdict == "allowed" {
            Exit::Done
        } else {
            Exit::Refused
        },
    })
}

/// The question as the API takes it.
pub fn request(a: &WhyArgs) -> Result<WhyRequest, CommandError> {
    let headers = a
        .header
        .iter()
        .map(|h| {
            let (k, v) = h
                .split_once(':')
                .or_else(|| h.split_once('='))
                .ok_or_else(|| {
                    CommandError::Usage(format!("--header {h:?}: expected `NAME: VALUE`"))
                })?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect::<Result<Vec<_>, CommandError>>()?;
    let to = if a.to.contains('/') {
        a.to.clone()
    } else {
        format!("{}/{}", a.namespace, a.to)
    };
    Ok(WhyRequest {
        from: a.from.clone(),
        to,
        port: a.port,
        tcp: a.tcp,
        method: (!a.tcp).then(|| a.method.clone()),
        path: (!a.tcp).then(|| a.path.clone()),
        headers,
    })
}

/// The answer for a terminal.
pub fn render(w: &WhyAnswer) -> String {
    let mut s = String::new();
    let workloads = if w.source_workloads.is_empty() {
        "no registered workload has this identity".to_string()
    } else {
        format!("workloads {}", w.source_workloads.join(", "))
    };
    let _ = writeln!(s, "request   {} to {}", w.request, w.service);
    let _ = writeln!(s, "from      {} ({workloads})", w.source);
    match &w.route.rule {
        Some(r) => {
            let _ = writeln!(s, "route     {r}: {}", w.route.reason);
        }
        None => {
            let _ = writeln!(s, "route     {}", w.route.reason);
        }
    }
    for b in &w.route.backends {
        let subset = b
            .subset
            .as_deref()
            .map(|v| format!(" version {v}"))
            .unwrap_or_default();
        let chosen = if b.chosen { "  <- this request" } else { "" };
        let _ = writeln!(
            s,
            "          -> {}{subset} {:.0}%{chosen}",
            b.service, b.percent
        );
    }
    if w.endpoints.is_empty() {
        let _ = writeln!(s, "endpoints none");
    } else {
        let _ = writeln!(s, "endpoints");
    }
    for e in &w.endpoints {
        let _ = writeln!(
            s,
            "  {}  {}  {}  {}",
            e.workload,
            e.address,
            e.version.as_deref().unwrap_or("-"),
            e.identity.as_deref().unwrap_or("(no identity)")
        );
        let decision = match &e.authorization {
            Some(x) => x.decision.to_string(),
            None => e.decision.clone(),
        };
        let _ = writeln!(s, "      {decision}");
        if let Some(p) = &e.matched_path {
            let _ = writeln!(s, "      path matched as {p}");
        }
        if let Some(x) = &e.authorization {
            for p in &x.policies {
                let _ = writeln!(s, "      policy {}", policy_line(p));
            }
        }
        if let Some(n) = &e.note {
            let _ = writeln!(s, "      note: {n}");
        }
    }
    let _ = writeln!(s, "verdict   {}: {}", w.verdict, w.summary);
    s
}

fn policy_line(p: &PolicyResult) -> String {
    let action = format!("{:?}", p.action).to_uppercase();
    let mode = match p.mode {
        weft_api::resources::PolicyMode::Audit => " (audit)",
        weft_api::resources::PolicyMode::Enforce => "",
    };
    let matched = match p.matched {
        None => "no rule matches".to_string(),
        Some(None) => "matches (no rules)".to_string(),
        Some(Some(i)) => format!("rules[{i}] matches"),
    };
    format!("{} {action}{mode}: {matched}", p.policy)
}
