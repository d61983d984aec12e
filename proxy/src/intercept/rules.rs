//! The interception rule set, as data: what `weft-proxy init` installs in a pod's network namespace.
//! Pure (no system calls), so the order and every exclusion are unit-tested.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Ports never redirected on the way in: the tunnel (mTLS from peers), health and admin.
pub const PROXY_INBOUND_PORTS: [u16; 3] = [15008, 15020, 15000];
/// Destination ports never redirected on the way out: peers' tunnel and health ports.
pub const PROXY_OUTBOUND_PORTS: [u16; 2] = [15008, 15020];

pub const CHAIN_OUTPUT: &str = "WEFT_OUTPUT";
pub const CHAIN_INBOUND: &str = "WEFT_INBOUND";

/// What `init` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub mark: u32,
    pub proxy_uid: Option<u32>,
    /// `None`: the app's DNS is left alone.
    pub dns_port: Option<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

/// An IPv4 block such as `10.0.0.0/8` (pods are IPv4-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("`{s}` is not an IPv4 address or CIDR"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("`{s}`: the prefix must be 0-32"))?;
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One rule: a chain, its match and its target, with a comment saying why it is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: &'static str,
    pub spec: String,
    pub why: &'static str,
}

impl Rule {
    fn new(chain: &'static str, spec: impl Into<String>, why: &'static str) -> Rule {
        Rule {
            chain,
            spec: spec.into(),
            why,
        }
    }

    /// The rule as an `iptables-restore` line.
    pub fn restore_line(&self) -> String {
        format!(
            "-A {} {} -m comment --comment \"weft: {}\"",
            self.chain, self.spec, self.why
        )
    }
}

/// The jumps from the built-in chains into ours: (built-in chain, match).
pub fn jumps() -> [(&'static str, String); 2] {
    [
        ("OUTPUT", format!("-j {CHAIN_OUTPUT}")),
        ("PREROUTING", format!("-p tcp -j {CHAIN_INBOUND}")),
    ]
}

/// Every rule, in order: the first that matches decides.
pub fn rules(s: &Settings) -> Vec<Rule> {
    let mut out = Vec::new();
    let o = |spec: String, why| Rule::new(CHAIN_OUTPUT, spec, why);
    // The proxy's own sockets first: nothing below may catch them, or they would loop back to it.
    out.push(o(
        format!("-m mark --mark {:#x} -j RETURN", s.mark),
        "the proxy's own traffic (socket mark)",
    ));
    if let Some(uid) = s.proxy_uid {
        out.push(o(
            format!("-m owner --uid-owner {uid} -j RETURN"),
            "the proxy's own traffic (its user)",
        ));
    }
    // DNS before the loopback exclusion, so `nameserver 127.0.0.1` reaches the proxy's responder.
    if let Some(port) = s.dns_port {
        for proto in ["udp", "tcp"] {
            out.push(o(
                format!("-p {proto} --dport 53 -j REDIRECT --to-ports {port}"),
                "the app's DNS to the proxy's responder",
            ));
        }
    }
    out.push(o("-o lo -j RETURN".into(), "loopback stays in the pod"));
    out.push(o(
        "-d 127.0.0.0/8 -j RETURN".into(),
        "loopback stays in the pod",
    ));
    for c in &s.exclude_outbound_cidrs {
        out.push(o(format!("-d {c} -j RETURN"), "excluded destination range"));
    }
    for p in PROXY_OUTBOUND_PORTS {
        out.push(o(
            format!("-p tcp --dport {p} -j RETURN"),
            "peer proxy port, never redirected",
        ));
    }
    for p in &s.exclude_outbound_ports {
        out.push(o(
            format!("-p tcp --dport {p} -j RETURN"),
            "excluded destination port",
        ));
    }
    out.push(o(
        format!("-p tcp -j REDIRECT --to-ports {}", s.outbound_port),
        "the app's outgoing TCP to the proxy",
    ));

    let i = |spec: String, why| Rule::new(CHAIN_INBOUND, spec, why);
    out.push(i("-i lo -j RETURN".into(), "loopback stays in the pod"));
    for p in PROXY_INBOUND_PORTS {
        out.push(i(
            format!("-p tcp --dport {p} -j RETURN"),
            "proxy port, never redirected",
        ));
    }
    for p in &s.exclude_inbound_ports {
        out.push(i(
            format!("-p tcp --dport {p} -j RETURN"),
            "excluded inbound port",
        ));
    }
    out.push(i(
        format!("-p tcp -j REDIRECT --to-ports {}", s.inbound_port),
        "incoming TCP to the proxy",
    ));
    out
}

/// The `iptables-restore --noflush` input: declaring our chains creates or empties them, then every
/// rule is appended; the built-in chains are untouched (their jumps are added separately, once).
pub fn restore_input(s: &Settings) -> String {
    let mut text = String::from("*nat\n");
    for chain in [CHAIN_OUTPUT, CHAIN_INBOUND] {
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    for r in rules(s) {
        let _ = writeln!(text, "{}", r.restore_line());
    }
    text.push_str("COMMIT\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            outbound_port: 15001,
            inbound_port: 15006,
            mark: 1337,
            proxy_uid: None,
            dns_port: Some(15053),
            exclude_outbound_ports: vec![],
            exclude_inbound_ports: vec![],
            exclude_outbound_cidrs: vec![],
        }
    }

    fn specs(s: &Settings, chain: &str) -> Vec<String> {
        rules(s)
            .into_iter()
            .filter(|r| r.chain == chain)
            .map(|r| r.spec)
            .collect()
    }

    #[test]
    fn outbound_order_mark_then_dns_then_loopback_then_redirect() {
        let out = specs(&settings(), CHAIN_OUTPUT);
        assert_eq!(out[0], "-m mark --mark 0x539 -j RETURN");
        assert_eq!(out[1], "-p udp --dport 53 -j REDIRECT --to-ports 15053");
        assert_eq!(out[2], "-p tcp --dport 53 -j REDIRECT --to-ports 15053");
        assert_eq!(out[3], "-o lo -j RETURN");
        assert!(out.contains(&"-p tcp --dport 15008 -j RETURN".to_string()));
        assert_eq!(
            out.last().unwrap(),
            "-p tcp -j REDIRECT --to-ports 15001",
            "the catch-all comes last"
        );
    }

    #[test]
    fn exclusions_uid_and_no_dns() {
        let mut s = settings();
        s.dns_port = None;
        s.proxy_uid = Some(1337);
        s.exclude_outbound_ports = vec![5432];
        s.exclude_inbound_ports = vec![22];
        s.exclude_outbound_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
        let out = specs(&s, CHAIN_OUTPUT);
        assert_eq!(out[1], "-m owner --uid-owner 1337 -j RETURN");
        assert!(!out.iter().any(|r| r.contains("--dport 53")));
        let redirect = out.iter().position(|r| r.contains("REDIRECT")).unwrap();
        for want in ["-d 10.0.0.0/8 -j RETURN", "-p tcp --dport 5432 -j RETURN"] {
            let at = out.iter().position(|r| r == want).expect(want);
            assert!(at < redirect, "{want} must come before the redirect");
        }
        let inbound = specs(&s, CHAIN_INBOUND);
        for p in [15008, 15020, 15000, 22] {
            assert!(inbound.contains(&format!("-p tcp --dport {p} -j RETURN")));
        }
        assert_eq!(
            inbound.last().unwrap(),
            "-p tcp -j REDIRECT --to-ports 15006"
        );
    }

    #[test]
    fn restore_input_declares_chains_and_commits() {
        let text = restore_input(&settings());
        assert!(text.starts_with("*nat\n:WEFT_OUTPUT - [0:0]\n:WEFT_INBOUND - [0:0]\n"));
        assert!(text.ends_with("COMMIT\n"));
        assert!(text.contains(
            "-A WEFT_OUTPUT -m mark --mark 0x539 -j RETURN -m comment --comment \"weft: the proxy's own traffic (socket mark)\""
        ));
    }

    #[test]
    fn cidrs_parse_strictly() {
        assert_eq!(
            "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        for bad in ["10.0.0.0/33", "x/8", "::1/128", "10.0.0/8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
