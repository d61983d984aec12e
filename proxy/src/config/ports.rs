//! Rules across sections: no two of the proxy's listeners on one port.

use super::{Invalid, ProxyConfig};
use std::net::SocketAddr;

/// Every address the proxy listens on, named by its field, in the order the sections are checked: a
/// clash is reported on the later of the two.
fn listen_addresses(cfg: &ProxyConfig) -> Vec<(String, SocketAddr)> {
    let mut taken = vec![
        ("tunnel.listen".to_string(), cfg.tunnel.listen),
        ("admin".to_string(), cfg.admin.listen),
        ("health".to_string(), cfg.health),
    ];
    if let Some(i) = &cfg.interception {
        taken.push(("interception.outbound".into(), i.outbound));
        taken.push(("interception.inbound".into(), i.inbound));
    }
    for (i, l) in cfg.outbound.0.iter().enumerate() {
        taken.push((format!("outbound[{i}].listen"), l.listen));
    }
    if let Some(d) = &cfg.dns {
        taken.push(("dns.listen".to_string(), d.listen));
    }
    taken
}

/// No listener shares a port with an earlier one (port 0, "any free port", never clashes).
pub(super) fn check(cfg: &ProxyConfig) -> Result<(), Invalid> {
    let taken = listen_addresses(cfg);
    for (i, (field, addr)) in taken.iter().enumerate() {
        if addr.port() == 0 {
            continue;
        }
        if let Some((other, _)) = taken[..i].iter().find(|(_, a)| same_port(*a, *addr)) {
            return Err(Invalid::new(
                field.clone(),
                format!("{addr} is already used by `{other}`"),
            ));
        }
    }
    Ok(())
}

/// The same port on the same address, or on any address when either side listens on all of them.
fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
