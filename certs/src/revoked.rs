//! The mesh's revocation list as the verifiers see it: serial numbers of leaves that must be refused even
//! though they chain to the bundle and have not expired.
//!
//! The control plane pushes the list (serials in lowercase hex, as [`leaf_serial_hex`] prints them); an
//! [`Identity`](crate::Identity) holds it behind an `ArcSwap`, so both verifiers read the newest list on
//! every handshake without a lock, and a new list reaches the next handshake at once.

use std::collections::HashSet;

/// A set of revoked leaf serials (lowercase hex, no separators).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokedSerials(HashSet<String>);

impl RevokedSerials {
    /// Builds the set; serials are normalised to lowercase hex without separators or leading `0x`.
    pub fn new<I, S>(serials: I) -> RevokedSerials
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        RevokedSerials(serials.into_iter().map(|s| normalize(s.as_ref())).collect())
    }

    pub fn contains(&self, serial_hex: &str) -> bool {
        !self.0.is_empty() && self.0.contains(serial_hex)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn normalize(s: &str) -> String {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    s.chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The serial number of a DER certificate in lowercase hex (the form the revocation list uses), or
/// `None` if it does not parse.
pub fn leaf_serial_hex(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(crate::x509::serial_hex(&cert))
}

/// A leaf's `notAfter` (DER), if it parses.
pub fn leaf_not_after(der: &[u8]) -> Option<std::time::SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(crate::x509::not_after(&cert))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_compared_in_one_form() {
        let r = RevokedSerials::new(["0x0A:1B", "ff"]);
        assert!(r.contains("0a1b"));
        assert!(r.contains("ff"));
        assert!(!r.contains("0a1c"));
        assert!(!RevokedSerials::default().contains(""));
    }
}
