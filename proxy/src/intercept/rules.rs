//! The interception rule set, as data: what `weft-proxy init` installs in a pod's network namespace.
//! Pure (no system calls), so the order and every exclusion are unit-tested.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Ports never redirected on the way in: the tunnel (mTLS from peers), health and admin.
pub const PROXY_INBOUND_PORTS: [u16; 3] = [15008, 15020, 15000];
/// The health port of other pods, reached directly (not through the sidecar) only at mesh addresses,
/// so a Prometheus in a pod can scrape its peers. The tunnel port (15008) is not exempt: only a
/// sidecar, excluded by its mark and user, has the certificate to speak to it.
pub const PEER_HEALTH_PORT: u16 = 15020;

pub const CHAIN_OUTPUT: &str = "WEFT_OUTPUT";
pub const CHAIN_INBOUND: &str = "WEFT_INBOUND";
/// Filter-table chains: what the nat table cannot send to the sidecar (anything but TCP: UDP other
/// than DNS, UDP-Lite, SCTP, ...) is refused here.
pub const CHAIN_FILTER_OUT: &str = "WEFT_FILTER_OUT";
pub const CHAIN_FILTER_IN: &str = "WEFT_FILTER_IN";

/// Our chains, by table.
pub const CHAINS: [(&str, &str); 4] = [
    ("nat", CHAIN_OUTPUT),
    ("nat", CHAIN_INBOUND),
    ("filter", CHAIN_FILTER_OUT),
    ("filter", CHAIN_FILTER_IN),
];

/// The sysctls `init` sets in the pod's namespace: IPv6 off, so nothing leaves the pod by a family the
/// IPv4 rules do not see. `--cleanup` sets them back to 0.
pub const IPV6_SYSCTLS: [&str; 2] = [
    "net/ipv6/conf/all/disable_ipv6",
    "net/ipv6/conf/default/disable_ipv6",
];

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
    /// The mesh's pod ranges: the only destinations whose health port the app reaches directly.
    pub mesh_cidrs: Vec<Cidr>,
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

    /// `nat` or `filter`.
    pub fn table(&self) -> &'static str {
        table_of(self.chain)
    }
}

fn table_of(chain: &str) -> &'static str {
    CHAINS
        .iter()
        .find(|(_, c)| *c == chain)
        .map(|(t, _)| *t)
        .unwrap_or("nat")
}

/// The jumps from the built-in chains into ours: (table, built-in chain, match).
pub fn jumps() -> [(&'static str, &'static str, String); 4] {
    [
        ("nat", "OUTPUT", format!("-j {CHAIN_OUTPUT}")),
        ("nat", "PREROUTING", format!("-p tcp -j {CHAIN_INBOUND}")),
        ("filter", "OUTPUT", format!("-j {CHAIN_FILTER_OUT}")),
        ("filter", "INPUT", format!("-j {CHAIN_FILTER_IN}")),
    ]
}

/// Every rule, in order: the first that matches decides.
pub fn rules(s: &Settings) -> Vec<Rule> {
    let mut out = nat_output(s);
    out.extend(nat_inbound(s));
    out.extend(filter_output(s));
    out.extend(filter_input(s));
    out
}

/// The proxy's own sockets: nothing after these may catch them, or they would loop back to it.
fn proxy_exclusions(chain: &'static str, s: &Settings) -> Vec<Rule> {
    let mut out = vec![Rule::new(
        chain,
        format!("-m mark --mark {:#x} -j RETURN", s.mark),
        "the proxy's own traffic (socket mark)",
    )];
    if let Some(uid) = s.proxy_uid {
        out.push(Rule::new(
            chain,
            format!("-m owner --uid-owner {uid} -j RETURN"),
            "the proxy's own traffic (its user)",
        ));
    }
    out
}

fn loopback_and_excluded(chain: &'static str, s: &Settings) -> Vec<Rule> {
    let mut out = vec![
        Rule::new(chain, "-o lo -j RETURN", "loopback stays in the pod"),
        Rule::new(
            chain,
            "-d 127.0.0.0/8 -j RETURN",
            "loopback stays in the pod",
        ),
    ];
    for c in &s.exclude_outbound_cidrs {
        out.push(Rule::new(
            chain,
            format!("-d {c} -j RETURN"),
            "excluded destination range",
        ));
    }
    out
}

fn nat_output(s: &Settings) -> Vec<Rule> {
    let mut out = proxy_exclusions(CHAIN_OUTPUT, s);
    let o = |spec: String, why| Rule::new(CHAIN_OUTPUT, spec, why);
    // DNS before the loopback exclusion, so `nameserver 127.0.0.1` reaches the proxy's responder.
    if let Some(port) = s.dns_port {
        for proto in ["udp", "tcp"] {
            out.push(o(
                format!("-p {proto} --dport 53 -j REDIRECT --to-ports {port}"),
                "the app's DNS to the proxy's responder",
            ));
        }
    }
    out.extend(loopback_and_excluded(CHAIN_OUTPUT, s));
    for c in &s.mesh_cidrs {
        out.push(o(
            format!("-d {c} -p tcp --dport {PEER_HEALTH_PORT} -j RETURN"),
            "health port of mesh pods, reached directly",
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
    out
}

fn nat_inbound(s: &Settings) -> Vec<Rule> {
    let i = |spec: String, why| Rule::new(CHAIN_INBOUND, spec, why);
    let mut out = vec![i("-i lo -j RETURN".into(), "loopback stays in the pod")];
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

/// What the pod sends: TCP passes (the nat table sends the app's to the sidecar), so do ICMP (the
/// kernel's errors; the app may open no ICMP socket), DNS, loopback and excluded ranges and ports. The
/// rest (UDP, and datagram protocols an unprivileged user may also open, such as UDP-Lite) would skip
/// the sidecar, so it is refused.
fn filter_output(s: &Settings) -> Vec<Rule> {
    let mut out = proxy_exclusions(CHAIN_FILTER_OUT, s);
    let f = |spec: String, why| Rule::new(CHAIN_FILTER_OUT, spec, why);
    out.extend(loopback_and_excluded(CHAIN_FILTER_OUT, s));
    out.push(f(
        "-p tcp -j RETURN".into(),
        "TCP: the nat table sends it to the proxy",
    ));
    out.push(f("-p icmp -j RETURN".into(), "ICMP errors and replies"));
    out.push(f(
        "-p udp --dport 53 -j RETURN".into(),
        "the app's DNS (redirected to the proxy unless --no-dns)",
    ));
    for p in &s.exclude_outbound_ports {
        out.push(f(
            format!("-p udp --dport {p} -j RETURN"),
            "excluded destination port",
        ));
    }
    out.push(f(
        "-j REJECT --reject-with icmp-admin-prohibited".into(),
        "anything else would bypass the proxy",
    ));
    out
}

/// What arrives at the pod: loopback, TCP (the nat table sends it to the proxy or its ports), ICMP,
/// replies to what the pod sent and excluded ports pass; the rest is dropped.
fn filter_input(s: &Settings) -> Vec<Rule> {
    let f = |spec: String, why| Rule::new(CHAIN_FILTER_IN, spec, why);
    let mut out = vec![
        f("-i lo -j RETURN".into(), "loopback stays in the pod"),
        f(
            "-p tcp -j RETURN".into(),
            "TCP: the nat table sends it to the proxy",
        ),
        f("-p icmp -j RETURN".into(), "ICMP errors and replies"),
        f(
            "-m conntrack --ctstate ESTABLISHED,RELATED -j RETURN".into(),
            "replies to the pod's own UDP (DNS)",
        ),
    ];
    for p in &s.exclude_inbound_ports {
        out.push(f(
            format!("-p udp --dport {p} -j RETURN"),
            "excluded inbound port",
        ));
    }
    out.push(f(
        "-j DROP".into(),
        "UDP and the like from outside the pod would bypass the proxy",
    ));
    out
}

/// The `iptables-restore --noflush` input: declaring our chains creates or empties them, then every
/// rule is appended; the built-in chains are untouched (their jumps are added separately, once).
pub fn restore_input(s: &Settings) -> String {
    let all = rules(s);
    let mut text = String::new();
    for table in ["nat", "filter"] {
        let _ = writeln!(text, "*{table}");
        for (_, chain) in CHAINS.iter().filter(|(t, _)| *t == table) {
            let _ = writeln!(text, ":{chain} - [0:0]");
        }
        for r in all.iter().filter(|r| r.table() == table) {
            let _ = writeln!(text, "{}", r.restore_line());
        }
        text.push_str("COMMIT\n");
    }
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
            mesh_cidrs: vec!["198.18.0.0/16".parse().unwrap()],
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
        assert!(
            !out.iter().any(|r| r.contains("15008")),
            "the tunnel port is not exempt: {out:?}"
        );
        assert!(
            out.contains(&"-d 198.18.0.0/16 -p tcp --dport 15020 -j RETURN".to_string()),
            "{out:?}"
        );
        assert!(
            !out.contains(&"-p tcp --dport 15020 -j RETURN".to_string()),
            "the health port is exempt only at mesh addresses: {out:?}"
        );
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
        assert!(
            text.contains("COMMIT\n*filter\n:WEFT_FILTER_OUT - [0:0]\n:WEFT_FILTER_IN - [0:0]\n")
        );
        assert!(text.ends_with("COMMIT\n"));
        let filter = &text[text.find("*filter").unwrap()..];
        assert!(
            !filter.contains("REDIRECT")
                && !text[..text.find("*filter").unwrap()].contains("REJECT")
        );
        assert!(text.contains(
            "-A WEFT_OUTPUT -m mark --mark 0x539 -j RETURN -m comment --comment \"weft: the proxy's own traffic (socket mark)\""
        ));
    }

    #[test]
    fn everything_but_tcp_icmp_and_dns_is_refused_both_ways() {
        let mut s = settings();
        s.proxy_uid = Some(1337);
        s.exclude_outbound_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
        s.exclude_inbound_ports = vec![5353];
        let out = specs(&s, CHAIN_FILTER_OUT);
        assert_eq!(out[0], "-m mark --mark 0x539 -j RETURN");
        assert_eq!(out[1], "-m owner --uid-owner 1337 -j RETURN");
        assert_eq!(
            out.last().unwrap(),
            "-j REJECT --reject-with icmp-admin-prohibited",
            "the refusal comes last, for every protocol: {out:?}"
        );
        for want in [
            "-p udp --dport 53 -j RETURN",
            "-p tcp -j RETURN",
            "-p icmp -j RETURN",
            "-o lo -j RETURN",
            "-d 10.0.0.0/8 -j RETURN",
        ] {
            assert!(out.contains(&want.to_string()), "{want}: {out:?}");
        }
        let inbound = specs(&s, CHAIN_FILTER_IN);
        assert!(
            inbound.contains(&"-m conntrack --ctstate ESTABLISHED,RELATED -j RETURN".to_string())
        );
        assert!(inbound.contains(&"-p udp --dport 5353 -j RETURN".to_string()));
        assert_eq!(inbound.last().unwrap(), "-j DROP");
        let jumps = jumps();
        assert!(jumps.contains(&("filter", "OUTPUT", "-j WEFT_FILTER_OUT".into())));
        assert!(jumps.contains(&("filter", "INPUT", "-j WEFT_FILTER_IN".into())));
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
