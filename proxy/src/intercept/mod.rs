//! `weft-proxy init`: the iptables rules that make a pod's traffic pass through its sidecar (and refuse
//! what it cannot carry), installed in the network namespace the command runs in, with IPv6 off there
//! (see docs/interception.md).

pub mod apply;
pub mod rules;

pub use apply::InitError;
pub use rules::{Cidr, Settings};

/// What `init` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Install,
    /// Print the rules, touch nothing.
    DryRun,
    Cleanup,
}

/// Runs `action`; returns what to print on stdout.
pub fn run(action: Action, settings: &Settings) -> Result<String, InitError> {
    match action {
        Action::DryRun => Ok(apply::dry_run(settings)),
        Action::Install => {
            apply::install(settings)?;
            Ok(format!(
                "interception installed: outbound TCP -> {}, inbound TCP -> {}, proxy mark {:#x}{}{}; other protocols than TCP, ICMP and DNS refused, IPv6 off\n",
                settings.outbound_port,
                settings.inbound_port,
                settings.mark,
                match settings.proxy_uid {
                    Some(u) => format!(", proxy uid {u}"),
                    None => String::new(),
                },
                match settings.dns_port {
                    Some(p) => format!(", DNS -> {p}"),
                    None => String::new(),
                }
            ))
        }
        Action::Cleanup => {
            apply::cleanup()?;
            Ok("interception removed (IPv6 back on)\n".into())
        }
    }
}
