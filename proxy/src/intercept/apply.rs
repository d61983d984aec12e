//! Running the iptables tools: install the rule set atomically, add the jumps once, remove everything.
//!
//! Shelling out to `iptables-restore`/`iptables` rather than speaking netlink: they pick the kernel's
//! backend (nf_tables or legacy) the way the rest of the system does, and `iptables-restore` applies a
//! whole chain in one transaction.

use super::rules::{self, Settings, CHAINS, IPV6_SYSCTLS};
use std::io::Write as _;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("`{0}` not found on PATH: install iptables (Debian: apt-get install iptables)")]
    MissingTool(&'static str),
    #[error("`{tool}` was refused the permission to change the firewall: run `weft-proxy init` as root (it needs CAP_NET_ADMIN in the pod's network namespace): {stderr}")]
    NoPermission { tool: String, stderr: String },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("cannot set {path} (IPv6 off in the pod): {source}")]
    Sysctl {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot run `{tool}`: {source}")]
    Spawn {
        tool: &'static str,
        source: std::io::Error,
    },
}

impl InitError {
    /// Exit codes: 3 a missing tool, 4 a missing privilege, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            InitError::MissingTool(_) => 3,
            InitError::NoPermission { .. } => 4,
            InitError::Sysctl { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                4
            }
            InitError::Failed { .. } | InitError::Spawn { .. } | InitError::Sysctl { .. } => 1,
        }
    }
}

const IPTABLES: &str = "iptables";
const RESTORE: &str = "iptables-restore";

/// Installs (or replaces) the rules; the jumps are added only when absent, so a second run changes nothing.
/// IPv6 is then turned off in the namespace: the rules are IPv4 only.
pub fn install(s: &Settings) -> Result<(), InitError> {
    require_tools()?;
    restore(&rules::restore_input(s))?;
    for (table, chain, spec) in rules::jumps() {
        if !has_rule(table, chain, &spec)? {
            iptables(&["-t", table, "-A", chain], &spec)?;
        }
    }
    set_ipv6_disabled(true)
}

/// Removes the jumps and our chains and turns IPv6 back on; fine when nothing is installed.
pub fn cleanup() -> Result<(), InitError> {
    require_tools()?;
    for (table, chain, spec) in rules::jumps() {
        while has_rule(table, chain, &spec)? {
            iptables(&["-t", table, "-D", chain], &spec)?;
        }
    }
    for (table, chain) in CHAINS {
        if chain_exists(table, chain)? {
            iptables(&["-t", table, "-F", chain], "")?;
            iptables(&["-t", table, "-X", chain], "")?;
        }
    }
    set_ipv6_disabled(false)
}

/// What `install` would run, as text a reader (or a shell) can follow.
pub fn dry_run(s: &Settings) -> String {
    let mut out = String::new();
    for path in IPV6_SYSCTLS {
        out.push_str(&format!("sysctl -w {}=1\n", path.replace('/', ".")));
    }
    out.push_str(&format!("# {RESTORE} --noflush <<'EOF'\n"));
    out.push_str(&rules::restore_input(s));
    out.push_str("# EOF\n# then, for each jump not already present:\n");
    for (table, chain, spec) in rules::jumps() {
        out.push_str(&format!("{IPTABLES} -t {table} -A {chain} {spec}\n"));
    }
    out
}

/// Writes the IPv6 switches of the namespace this process is in (/proc/sys/net follows the caller's
/// network namespace). A kernel without IPv6 has nothing to turn off.
fn set_ipv6_disabled(off: bool) -> Result<(), InitError> {
    for rel in IPV6_SYSCTLS {
        let path = std::path::Path::new("/proc/sys").join(rel);
        if !path.exists() {
            continue;
        }
        std::fs::write(&path, if off { "1\n" } else { "0\n" }).map_err(|source| {
            InitError::Sysctl {
                path: path.display().to_string(),
                source,
            }
        })?;
    }
    Ok(())
}

fn require_tools() -> Result<(), InitError> {
    for tool in [IPTABLES, RESTORE] {
        if !on_path(tool) {
            return Err(InitError::MissingTool(tool));
        }
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn restore(input: &str) -> Result<(), InitError> {
    let mut child = Command::new(RESTORE)
        .args(["--noflush", "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| InitError::Spawn {
            tool: RESTORE,
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|source| InitError::Spawn {
                tool: RESTORE,
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| InitError::Spawn {
            tool: RESTORE,
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(classify(RESTORE, with_failing_line(&stderr, input)))
}

/// `iptables-restore` names the line it failed on; show that line too.
fn with_failing_line(stderr: &str, input: &str) -> String {
    let line_no = stderr
        .split("line ")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<usize>()
                .ok()
        })
        .and_then(|n| input.lines().nth(n.checked_sub(1)?));
    match line_no {
        Some(line) => format!("{stderr} (rule: {line})"),
        None => stderr.to_string(),
    }
}

fn has_rule(table: &str, chain: &str, spec: &str) -> Result<bool, InitError> {
    let out = run_iptables(&["-t", table, "-C", chain], spec)?;
    if out.status.success() {
        return Ok(true);
    }
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if permission_denied(&stderr) {
        return Err(classify(IPTABLES, stderr));
    }
    // Exit 1 "does not exist" (or "No chain/target" while ours is absent): not there.
    Ok(false)
}

fn chain_exists(table: &str, chain: &str) -> Result<bool, InitError> {
    let out = run_iptables(&["-t", table, "-S", chain], "")?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if permission_denied(&stderr) {
        return Err(classify(IPTABLES, stderr));
    }
    Ok(out.status.success())
}

fn iptables(args: &[&str], spec: &str) -> Result<(), InitError> {
    let out = run_iptables(args, spec)?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(classify(
        IPTABLES,
        format!("{} {spec}: {stderr}", args.join(" ")),
    ))
}

fn run_iptables(args: &[&str], spec: &str) -> Result<std::process::Output, InitError> {
    Command::new(IPTABLES)
        .arg("--wait")
        .args(args)
        .args(spec.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .map_err(|source| InitError::Spawn {
            tool: IPTABLES,
            source,
        })
}

fn permission_denied(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("permission denied") || s.contains("must be root") || s.contains("not permitted")
}

fn classify(tool: &str, stderr: String) -> InitError {
    if permission_denied(&stderr) {
        InitError::NoPermission {
            tool: tool.to_string(),
            stderr,
        }
    } else {
        InitError::Failed {
            command: tool.to_string(),
            stderr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_errors_quote_the_failing_rule() {
        let input = "*nat\n:WEFT_OUTPUT - [0:0]\n-A WEFT_OUTPUT -p tcp -j BOGUS\nCOMMIT\n";
        let msg = with_failing_line("iptables-restore: line 3 failed", input);
        assert!(
            msg.ends_with("(rule: -A WEFT_OUTPUT -p tcp -j BOGUS)"),
            "{msg}"
        );
        assert_eq!(with_failing_line("something else", input), "something else");
    }

    #[test]
    fn permission_errors_are_told_apart() {
        let e = classify(
            "iptables",
            "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)".into(),
        );
        assert_eq!(e.exit_code(), 4);
        assert_eq!(classify("iptables", "Bad argument".into()).exit_code(), 1);
        assert_eq!(InitError::MissingTool("iptables").exit_code(), 3);
    }
}
