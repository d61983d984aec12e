//! `control.address`: one control-plane address or a list of them, each an `IP:PORT` or a
//! `HOST:PORT` name that the system resolver turns into addresses at every connect attempt.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;

/// One entry of `control.address`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ControlAddress {
    /// An address used as written.
    Socket(SocketAddr),
    /// A DNS name and port, resolved (to any number of addresses) at each connect attempt.
    Name { host: String, port: u16 },
}

impl ControlAddress {
    /// `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`; the reason when it is none of them.
    pub fn parse(text: &str) -> Result<ControlAddress, String> {
        let text = text.trim();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(format!("`{text}`: port 0 cannot be connected to"));
            }
            return Ok(ControlAddress::Socket(addr));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("`{text}` is not IP:PORT or HOST:PORT (no port)"));
        };
        let port: u16 = match port.parse() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("`{text}`: `{port}` is not a port (1-65535)")),
        };
        if !is_dns_name(host) {
            return Err(format!(
                "`{text}`: `{host}` is neither an IP address nor a DNS name"
            ));
        }
        Ok(ControlAddress::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for ControlAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlAddress::Socket(a) => write!(f, "{a}"),
            ControlAddress::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Letters, digits and `-` in dot-separated labels of 1 to 63 characters, at most 253 in all; a
/// label neither starts nor ends with `-` (RFC 1123).
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // All-numeric labels would be a mistyped IPv4 address, not a name.
        && !host.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// `control.address` as written: one entry (every config before lists) or a list. Entries are kept as
/// text so that a bad one is refused by the config check, naming `control.address[i]` and the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlAddresses(Vec<String>);

impl ControlAddresses {
    /// The entries, parsed; the field (`control.address` or `control.address[i]`) and reason of the
    /// first that is not an address, or of an empty list.
    pub fn parse(&self) -> Result<Vec<ControlAddress>, (String, String)> {
        if self.0.is_empty() {
            return Err((
                "control.address".into(),
                "names no control plane: give IP:PORT, HOST:PORT or a list of them".into(),
            ));
        }
        let field = |i: usize| {
            if self.0.len() == 1 {
                "control.address".to_string()
            } else {
                format!("control.address[{i}]")
            }
        };
        let mut out: Vec<ControlAddress> = Vec::with_capacity(self.0.len());
        for (i, text) in self.0.iter().enumerate() {
            let addr = ControlAddress::parse(text).map_err(|e| (field(i), e))?;
            if out.contains(&addr) {
                return Err((field(i), format!("`{addr}` is listed twice")));
            }
            out.push(addr);
        }
        Ok(out)
    }
}

/// The entries as written, `, ` between them (one entry reads as it did before lists).
impl fmt::Display for ControlAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

impl From<Vec<String>> for ControlAddresses {
    fn from(v: Vec<String>) -> Self {
        ControlAddresses(v)
    }
}

impl From<SocketAddr> for ControlAddresses {
    fn from(a: SocketAddr) -> Self {
        ControlAddresses(vec![a.to_string()])
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for ControlAddresses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match OneOrMany::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected IP:PORT, HOST:PORT or a list of them")
        })? {
            OneOrMany::One(s) => Ok(ControlAddresses(vec![s])),
            OneOrMany::Many(v) => Ok(ControlAddresses(v)),
        }
    }
}

impl Serialize for ControlAddresses {
    /// One entry reads back as it was written before lists: a plain string.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_names_and_what_is_refused() {
        let ok = |s: &str| ControlAddress::parse(s).unwrap();
        assert_eq!(
            ok("10.0.0.2:15010"),
            ControlAddress::Socket("10.0.0.2:15010".parse().unwrap())
        );
        assert_eq!(
            ok("[::1]:15010"),
            ControlAddress::Socket("[::1]:15010".parse().unwrap())
        );
        assert_eq!(
            ok("Control.Weft-System.svc:15010"),
            ControlAddress::Name {
                host: "control.weft-system.svc".into(),
                port: 15010
            }
        );
        for bad in [
            "10.0.0.2",
            "10.0.0.2:0",
            "10.0.0.2:99999",
            "10.0.0.256:15010",
            "::1:15010",
            "-bad.example:15010",
            "a_b.example:15010",
            ":15010",
            "host:",
        ] {
            assert!(ControlAddress::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn a_list_is_refused_naming_the_entry() {
        let list = |v: &[&str]| ControlAddresses(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            list(&["10.0.0.2:15010", "cp.example:15010"])
                .parse()
                .unwrap()
                .len(),
            2
        );
        let (field, reason) = list(&["10.0.0.2:15010", "nope"]).parse().unwrap_err();
        assert_eq!(field, "control.address[1]");
        assert!(reason.contains("`nope`"), "{reason}");
        let (field, _) = list(&["nope"]).parse().unwrap_err();
        assert_eq!(field, "control.address");
        let (field, reason) = list(&[]).parse().unwrap_err();
        assert_eq!(field, "control.address");
        assert!(reason.contains("no control plane"), "{reason}");
        let (field, reason) = list(&["10.0.0.2:1", "10.0.0.2:1"]).parse().unwrap_err();
        assert_eq!(
            (field.as_str(), reason.contains("twice")),
            ("control.address[1]", true)
        );
    }
}
