//! SPIFFE IDs and trust domains, parsed and printed in one place.
//!
//! The rules are those of the SPIFFE ID specification: scheme `spiffe` in lowercase, a non-empty trust domain
//! of `[a-z0-9._-]` (no port, no userinfo, at most 255 bytes), a path of non-empty segments of
//! `[A-Za-z0-9._-]` that are neither `.` nor `..`, no trailing slash, no query or fragment, and at most
//! 2048 bytes in all.

use crate::error::SpiffeIdError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

const SCHEME: &str = "spiffe://";
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// How much of an over-long ID an error message repeats.
const TOO_LONG_PREFIX: usize = 64;

/// A SPIFFE trust domain such as `cluster.local`: the authority part of every ID it issues.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TrustDomain(Arc<str>);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`, not `spiffe://example.org`).
    pub fn new(name: &str) -> Result<TrustDomain, SpiffeIdError> {
        // Reusing the ID parser keeps one set of rules; errors then show the name as `spiffe://<name>`.
        let id = format!("{SCHEME}{name}");
        if let Some(slash) = name.find('/') {
            return Err(SpiffeIdError::BadTrustDomainChar {
                id,
                ch: '/',
                pos: SCHEME.len() + slash,
            });
        }
        SpiffeId::parse(&id)?;
        Ok(TrustDomain(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ID of the trust domain itself, `spiffe://<td>`, which Weft CAs carry as their URI SAN.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            id: format!("{SCHEME}{}", self.0).into(),
            td_len: self.0.len(),
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrustDomain::new(s)
    }
}

/// A SPIFFE ID, `spiffe://<trust-domain><path>`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: Arc<str>,
    /// Length of the trust domain, which starts right after the scheme.
    td_len: usize,
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong {
                prefix: prefix(s, TOO_LONG_PREFIX).to_owned(),
                len: s.len(),
            });
        }
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeIdError::BadScheme { id: s.to_owned() })?;
        if let Some((pos, ch)) = s.char_indices().find(|&(_, c)| c == '?' || c == '#') {
            return Err(SpiffeIdError::QueryOrFragment {
                id: s.to_owned(),
                ch,
                pos,
            });
        }
        let td_len = rest.find('/').unwrap_or(rest.len());
        check_trust_domain(s, &rest[..td_len])?;
        check_path(s, SCHEME.len() + td_len)?;
        Ok(SpiffeId {
            id: s.into(),
            td_len,
        })
    }

    /// `spiffe://<td>/ns/<namespace>/sa/<service_account>`, the identity of a workload.
    pub fn for_workload(
        td: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        check_workload_name("namespace", namespace)?;
        check_workload_name("service account", service_account)?;
        SpiffeId::parse(&format!("{SCHEME}{td}/ns/{namespace}/sa/{service_account}"))
    }

    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..SCHEME.len() + self.td_len]
    }

    /// The trust domain as its own type (allocates).
    pub fn to_trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain().into())
    }

    /// `""` for a trust domain's own ID, otherwise `/seg/...`.
    pub fn path(&self) -> &str {
        &self.id[SCHEME.len() + self.td_len..]
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The namespace when the path is exactly `/ns/<namespace>/sa/<service-account>`.
    pub fn namespace(&self) -> Option<&str> {
        self.workload_parts().map(|(ns, _)| ns)
    }

    /// The service account when the path is exactly `/ns/<namespace>/sa/<service-account>`.
    pub fn service_account(&self) -> Option<&str> {
        self.workload_parts().map(|(_, sa)| sa)
    }

    fn workload_parts(&self) -> Option<(&str, &str)> {
        let mut segments = self.path().strip_prefix('/')?.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SpiffeId").field(&&*self.id).finish()
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseVisitor(SpiffeId::parse, "a SPIFFE ID"))
    }
}

/// Validates inside `visit_str`, so the parser attributes an error to the value's own line and field
/// rather than to the enclosing map.
struct ParseVisitor<T, E>(fn(&str) -> Result<T, E>, &'static str);

impl<'de, T, E: fmt::Display> serde::de::Visitor<'de> for ParseVisitor<T, E> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }
    fn visit_str<Er: serde::de::Error>(self, v: &str) -> Result<T, Er> {
        (self.0)(v).map_err(Er::custom)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseVisitor(TrustDomain::new, "a SPIFFE trust domain"))
    }
}

// === rules ===

fn check_trust_domain(id: &str, td: &str) -> Result<(), SpiffeIdError> {
    let owned = || id.to_owned();
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain { id: owned() });
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong {
            id: owned(),
            len: td.len(),
        });
    }
    // Name the URI features people reach for before the generic character error.
    if td.contains('@') {
        return Err(SpiffeIdError::Userinfo { id: owned() });
    }
    if td.contains(':') {
        return Err(SpiffeIdError::Port { id: owned() });
    }
    match td.char_indices().find(|&(_, c)| !is_trust_domain_char(c)) {
        Some((i, ch)) => Err(SpiffeIdError::BadTrustDomainChar {
            id: owned(),
            ch,
            pos: SCHEME.len() + i,
        }),
        None => Ok(()),
    }
}

/// Checks the path that starts at byte `start` of `id` (empty, or `/` followed by segments).
fn check_path(id: &str, start: usize) -> Result<(), SpiffeIdError> {
    let path = &id[start..];
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash { id: id.to_owned() });
    }
    // Every segment starts right after a '/'.
    let mut seg_start = start + 1;
    for segment in path[1..].split('/') {
        check_segment(id, segment, seg_start)?;
        seg_start += segment.len() + 1;
    }
    Ok(())
}

fn check_segment(id: &str, segment: &str, pos: usize) -> Result<(), SpiffeIdError> {
    match segment_problem(segment) {
        None => Ok(()),
        Some(SegmentProblem::Empty) => Err(SpiffeIdError::EmptySegment {
            id: id.to_owned(),
            pos,
        }),
        Some(SegmentProblem::Dots) => Err(SpiffeIdError::DotSegment {
            id: id.to_owned(),
            segment: segment.to_owned(),
            pos,
        }),
        Some(SegmentProblem::BadChar { ch, offset }) => Err(SpiffeIdError::BadPathChar {
            id: id.to_owned(),
            ch,
            pos: pos + offset,
        }),
    }
}

fn check_workload_name(field: &'static str, value: &str) -> Result<(), SpiffeIdError> {
    let reason = match segment_problem(value) {
        None => return Ok(()),
        Some(SegmentProblem::Empty) => "it is empty".to_owned(),
        Some(SegmentProblem::Dots) => format!("\"{value}\" is a relative path segment"),
        Some(SegmentProblem::BadChar { ch, offset }) => format!(
            "it has character '{ch}' at {offset}; allowed are letters, digits, '.', '-', '_'"
        ),
    };
    Err(SpiffeIdError::BadWorkloadName {
        field,
        value: value.to_owned(),
        reason,
    })
}

enum SegmentProblem {
    Empty,
    Dots,
    BadChar { ch: char, offset: usize },
}

fn segment_problem(segment: &str) -> Option<SegmentProblem> {
    if segment.is_empty() {
        return Some(SegmentProblem::Empty);
    }
    if segment == "." || segment == ".." {
        return Some(SegmentProblem::Dots);
    }
    segment
        .char_indices()
        .find(|&(_, c)| !is_path_char(c))
        .map(|(offset, ch)| SegmentProblem::BadChar { ch, offset })
}

fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).expect("valid trust domain")
    }

    #[test]
    fn parses_valid_ids() {
        let cases = [
            ("spiffe://example.org", "example.org", ""),
            (
                "spiffe://example.org/ns/default/sa/web",
                "example.org",
                "/ns/default/sa/web",
            ),
            ("spiffe://a-b_c.9/x", "a-b_c.9", "/x"),
            (
                "spiffe://td/Upper.Case-ok_9/..x/.y",
                "td",
                "/Upper.Case-ok_9/..x/.y",
            ),
        ];
        for (input, td, path) in cases {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.as_str(), input);
            assert_eq!(id.trust_domain(), td);
            assert_eq!(id.path(), path);
            assert_eq!(id.to_string(), input);
        }
    }

    /// Whether an error is the expected variant.
    type Matches = fn(&SpiffeIdError) -> bool;

    #[test]
    fn refuses_each_rule_with_its_reason() {
        let long_td = format!("spiffe://{}", "a".repeat(256));
        let long_id = format!("spiffe://td/{}", "a".repeat(2048));
        let cases: Vec<(&str, Matches, &str)> = vec![
            ("", |e| matches!(e, SpiffeIdError::Empty), "empty"),
            (
                "SPIFFE://td/x",
                |e| matches!(e, SpiffeIdError::BadScheme { .. }),
                "lowercase",
            ),
            (
                "https://td/x",
                |e| matches!(e, SpiffeIdError::BadScheme { .. }),
                "scheme",
            ),
            (
                "spiffe:/td/x",
                |e| matches!(e, SpiffeIdError::BadScheme { .. }),
                "scheme",
            ),
            (
                "spiffe://",
                |e| matches!(e, SpiffeIdError::EmptyTrustDomain { .. }),
                "trust domain is empty",
            ),
            (
                "spiffe:///ns/x",
                |e| matches!(e, SpiffeIdError::EmptyTrustDomain { .. }),
                "trust domain is empty",
            ),
            (
                &long_td,
                |e| matches!(e, SpiffeIdError::TrustDomainTooLong { len: 256, .. }),
                "256 bytes",
            ),
            (
                &long_id,
                |e| matches!(e, SpiffeIdError::TooLong { len: 2060, .. }),
                "2060 bytes",
            ),
            (
                "spiffe://td:8080/x",
                |e| matches!(e, SpiffeIdError::Port { .. }),
                "port",
            ),
            (
                "spiffe://user@td/x",
                |e| matches!(e, SpiffeIdError::Userinfo { .. }),
                "userinfo",
            ),
            (
                "spiffe://Bad/x",
                |e| {
                    matches!(
                        e,
                        SpiffeIdError::BadTrustDomainChar {
                            ch: 'B',
                            pos: 9,
                            ..
                        }
                    )
                },
                "trust domain has character 'B' at 9",
            ),
            (
                "spiffe://td/x?y=1",
                |e| {
                    matches!(
                        e,
                        SpiffeIdError::QueryOrFragment {
                            ch: '?',
                            pos: 13,
                            ..
                        }
                    )
                },
                "query or fragment",
            ),
            (
                "spiffe://td/x#frag",
                |e| matches!(e, SpiffeIdError::QueryOrFragment { ch: '#', .. }),
                "query or fragment",
            ),
            (
                "spiffe://td/x/",
                |e| matches!(e, SpiffeIdError::TrailingSlash { .. }),
                "ends with '/'",
            ),
            (
                "spiffe://td/",
                |e| matches!(e, SpiffeIdError::TrailingSlash { .. }),
                "ends with '/'",
            ),
            (
                "spiffe://td/a//b",
                |e| matches!(e, SpiffeIdError::EmptySegment { pos: 14, .. }),
                "empty segment at 14",
            ),
            (
                "spiffe://td/a/./b",
                |e| matches!(e, SpiffeIdError::DotSegment { pos: 14, .. }),
                "\".\" segment",
            ),
            (
                "spiffe://td/a/../b",
                |e| matches!(e, SpiffeIdError::DotSegment { .. }),
                "\"..\" segment",
            ),
            (
                "spiffe://td/a/b%20c",
                |e| {
                    matches!(
                        e,
                        SpiffeIdError::BadPathChar {
                            ch: '%',
                            pos: 15,
                            ..
                        }
                    )
                },
                "path has character '%' at 15",
            ),
            (
                "spiffe://td/ns/caf\u{e9}",
                |e| matches!(e, SpiffeIdError::BadPathChar { ch: '\u{e9}', .. }),
                "path has character",
            ),
        ];
        for (input, is_expected, message_part) in cases {
            let err = SpiffeId::parse(input).expect_err(input);
            assert!(is_expected(&err), "{input}: unexpected error {err:?}");
            let message = err.to_string();
            assert!(
                message.contains(message_part),
                "{input}: message {message:?} lacks {message_part:?}"
            );
        }
    }

    #[test]
    fn error_message_names_id_character_and_allowed_set() {
        let err = SpiffeId::parse("spiffe://Bad/x").expect_err("uppercase trust domain");
        assert_eq!(
            err.to_string(),
            "invalid SPIFFE ID \"spiffe://Bad/x\": trust domain has character 'B' at 9; \
             allowed are lowercase letters, digits, '.', '-', '_'"
        );
    }

    #[test]
    fn boundary_lengths_are_accepted() {
        let td_255 = format!("spiffe://{}", "a".repeat(255));
        assert!(SpiffeId::parse(&td_255).is_ok());
        let id_2048 = format!("spiffe://td/{}", "a".repeat(2048 - 12));
        assert_eq!(id_2048.len(), 2048);
        assert!(SpiffeId::parse(&id_2048).is_ok());
    }

    #[test]
    fn workload_ids() {
        let id =
            SpiffeId::for_workload(&td("cluster.local"), "default", "web").expect("valid workload");
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/default/sa/web");
        assert_eq!(id.namespace(), Some("default"));
        assert_eq!(id.service_account(), Some("web"));

        for other in [
            "spiffe://td",
            "spiffe://td/ns/a",
            "spiffe://td/ns/a/sa/b/extra",
            "spiffe://td/xs/a/sa/b",
        ] {
            let id = SpiffeId::parse(other).expect("valid id");
            assert_eq!(id.namespace(), None, "{other}");
            assert_eq!(id.service_account(), None, "{other}");
        }
    }

    #[test]
    fn workload_names_must_be_single_segments() {
        let td = td("td");
        let err = SpiffeId::for_workload(&td, "a/b", "web").expect_err("slash in namespace");
        assert!(matches!(
            err,
            SpiffeIdError::BadWorkloadName {
                field: "namespace",
                ..
            }
        ));
        assert!(err.to_string().contains("character '/' at 1"), "{err}");
        let err = SpiffeId::for_workload(&td, "default", "").expect_err("empty sa");
        assert!(err.to_string().contains("service account"), "{err}");
        let err = SpiffeId::for_workload(&td, "..", "web").expect_err("dot namespace");
        assert!(err.to_string().contains("relative"), "{err}");
    }

    #[test]
    fn trust_domains() {
        let td = td("example.org");
        assert_eq!(td.as_str(), "example.org");
        assert_eq!(td.id().as_str(), "spiffe://example.org");
        assert_eq!(td.id().trust_domain(), "example.org");
        assert_eq!(td.id().path(), "");
        assert!(matches!(
            TrustDomain::new("a/b"),
            Err(SpiffeIdError::BadTrustDomainChar {
                ch: '/',
                pos: 10,
                ..
            })
        ));
        assert!(TrustDomain::new("Example").is_err());
        assert!(TrustDomain::new("").is_err());
        assert_eq!(
            "x.y".parse::<TrustDomain>().expect("valid"),
            TrustDomain::new("x.y").expect("valid")
        );
    }

    #[test]
    fn serde_round_trip_validates() {
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").expect("valid");
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, "\"spiffe://td/ns/a/sa/b\"");
        let back: SpiffeId = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, id);
        let err = serde_json::from_str::<SpiffeId>("\"spiffe://Bad/x\"").expect_err("invalid");
        assert!(err.to_string().contains("character 'B' at 9"), "{err}");

        let td: TrustDomain = serde_json::from_str("\"td.example\"").expect("deserialize td");
        assert_eq!(
            serde_json::to_string(&td).expect("serialize td"),
            "\"td.example\""
        );
        assert!(serde_json::from_str::<TrustDomain>("\"td:80\"").is_err());
    }

    #[test]
    fn ids_are_ordered_and_hashable_by_text() {
        use std::collections::BTreeSet;
        let a = SpiffeId::parse("spiffe://td/a").expect("valid");
        let b = SpiffeId::parse("spiffe://td/b").expect("valid");
        let set: BTreeSet<_> = [b.clone(), a.clone(), a.clone()].into_iter().collect();
        assert_eq!(set.into_iter().collect::<Vec<_>>(), vec![a, b]);
    }
}
