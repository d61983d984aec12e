//! How weftctl shows what the control plane answered: change lines, rollouts, tables.

use std::fmt::Write as _;
use weft_api::operator::{ApplyResponse, ChangeAction, ProxyStatus, RolloutState, TokenInfo};

/// One line per change, the diffs on a dry run, then how the rollout went.
pub fn apply(resp: &ApplyResponse) -> String {
    let mut out = String::new();
    for c in &resp.changes {
        let action = match c.action {
            ChangeAction::Created => "created",
            ChangeAction::Configured => "configured",
            ChangeAction::Unchanged => "unchanged",
            ChangeAction::Deleted => "deleted",
        };
        let suffix = if resp.dry_run { " (dry run)" } else { "" };
        let _ = writeln!(
            out,
            "{} {}/{} {action}{suffix}",
            c.key.kind.as_str().to_ascii_lowercase(),
            c.key.namespace,
            c.key.name
        );
        if resp.dry_run && !c.diff.is_empty() {
            for line in c.diff.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    if let Some(r) = &resp.rollout {
        let acked = r
            .proxies
            .iter()
            .filter(|p| matches!(p.state, RolloutState::Acked))
            .count();
        if r.proxies.is_empty() {
            let _ = writeln!(out, "no proxy's config changed");
        } else if r.complete {
            let _ = writeln!(
                out,
                "acked by {acked}/{} proxies in {} ms",
                r.proxies.len(),
                r.waited_ms
            );
        } else {
            let _ = writeln!(
                out,
                "NOT confirmed: acked by {acked}/{} proxies after {} ms",
                r.proxies.len(),
                r.waited_ms
            );
            for p in &r.proxies {
                let state = match &p.state {
                    RolloutState::Acked => continue,
                    RolloutState::Nacked { reason } => format!("NACK: {reason}"),
                    RolloutState::Pending => "no answer yet".to_string(),
                    RolloutState::Disconnected => "disconnected".to_string(),
                };
                let _ = writeln!(out, "  {}: {state}", p.proxy);
            }
        }
    }
    out
}

/// Columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.len());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// "3s", "4m", "2h", "5d".
pub fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Time from now until `unix` seconds, or how long ago it passed.
pub fn until(unix: u64, now: u64) -> String {
    if unix >= now {
        format!("in {}", ago((unix - now) * 1000))
    } else {
        format!("{} ago", ago((now - unix) * 1000))
    }
}

pub fn status(proxies: &[ProxyStatus], now: u64) -> String {
    let rows: Vec<Vec<String>> = proxies
        .iter()
        .map(|p| {
            vec![
                p.proxy.clone(),
                p.identity.to_string(),
                p.address.to_string(),
                yes_no(p.ready),
                yes_no(p.connected),
                p.sent_version.to_string(),
                p.acked_version.map_or("-".into(), |v| v.to_string()),
                p.last_nack
                    .as_ref()
                    .map_or("-".into(), |n| format!("{}: {}", n.version, n.reason)),
                p.cert_not_after.map_or("-".into(), |t| until(t, now)),
                if p.connected {
                    "now".into()
                } else {
                    format!("{} ago", ago(p.last_seen_ms))
                },
            ]
        })
        .collect();
    table(
        &[
            "PROXY",
            "IDENTITY",
            "ADDRESS",
            "READY",
            "CONNECTED",
            "SENT",
            "ACKED",
            "LAST-NACK",
            "CERT-EXPIRES",
            "SEEN",
        ],
        &rows,
    )
}

pub fn tokens(tokens: &[TokenInfo], now: u64) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            let state = if t.revoked {
                "revoked".to_string()
            } else if t.expires_at <= now {
                "expired".to_string()
            } else {
                "valid".to_string()
            };
            vec![
                t.id.clone(),
                t.identity.to_string(),
                state,
                until(t.expires_at, now),
                t.uses.to_string(),
            ]
        })
        .collect();
    table(&["ID", "IDENTITY", "STATE", "EXPIRES", "USES"], &rows)
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::operator::{Change, ProxyRollout, Rollout};
    use weft_api::resources::{Kind, ResourceKey};

    fn key() -> ResourceKey {
        ResourceKey {
            kind: Kind::HttpRoute,
            namespace: "default".into(),
            name: "reviews".into(),
        }
    }

    #[test]
    fn apply_lines_and_rollout_summary() {
        let resp = ApplyResponse {
            dry_run: false,
            revision: 3,
            changes: vec![Change {
                key: key(),
                action: ChangeAction::Configured,
                diff: String::new(),
            }],
            rollout: Some(Rollout {
                revision: 3,
                complete: false,
                waited_ms: 10_000,
                proxies: vec![
                    ProxyRollout {
                        proxy: "default/a".into(),
                        version: 1,
                        state: RolloutState::Acked,
                    },
                    ProxyRollout {
                        proxy: "default/b".into(),
                        version: 1,
                        state: RolloutState::Nacked {
                            reason: "regex too large".into(),
                        },
                    },
                ],
            }),
        };
        let text = apply(&resp);
        assert!(
            text.contains("httproute default/reviews configured"),
            "{text}"
        );
        assert!(text.contains("NOT confirmed: acked by 1/2"), "{text}");
        assert!(text.contains("default/b: NACK: regex too large"), "{text}");
    }

    #[test]
    fn tables_align_and_times_read_well() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
        assert_eq!(ago(59_000), "59s");
        assert_eq!(ago(3_600_000), "1h");
        assert_eq!(until(100, 40), "in 1m");
        assert_eq!(until(40, 100), "1m ago");
    }
}
