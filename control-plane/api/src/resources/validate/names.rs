//! Checks on single values: names, labels, HTTP tokens, patterns. Each answers `Err(reason)` with the
//! offending value in the reason.

use weft_certs::{SpiffeId, TrustDomain};

pub type Check = Result<(), String>;

/// Compiled size limit for operator-written regular expressions: bounds the memory and build time one
/// pattern can cost every proxy it is pushed to.
pub const REGEX_SIZE_LIMIT: usize = 64 << 10;

const DNS_LABEL_MAX: usize = 63;
const DNS_SUBDOMAIN_MAX: usize = 253;

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// An RFC 1123 label, as Kubernetes names are: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn dns_label(s: &str) -> Check {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > DNS_LABEL_MAX {
        return Err(format!(
            "`{s}` is {} characters; the limit is {DNS_LABEL_MAX}",
            s.len()
        ));
    }
    let ends_ok = s.starts_with(is_lower_alnum) && s.ends_with(is_lower_alnum);
    if !ends_ok || !s.chars().all(|c| is_lower_alnum(c) || c == '-') {
        return Err(format!(
            "`{s}` is not a DNS label: lowercase letters, digits and '-', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Dot-separated DNS labels, at most 253 characters.
pub fn dns_subdomain(s: &str) -> Check {
    if s.len() > DNS_SUBDOMAIN_MAX {
        return Err(format!(
            "`{s}` is {} characters; the limit is {DNS_SUBDOMAIN_MAX}",
            s.len()
        ));
    }
    if s.split('.').all(|l| dns_label(l).is_ok()) {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a DNS name: dot-separated labels of lowercase letters, digits and '-'"
        ))
    }
}

/// A route hostname: a DNS name, optionally with a leading `*.` wildcard label.
pub fn hostname(s: &str) -> Check {
    let name = s.strip_prefix("*.").unwrap_or(s);
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("`{s}` is an IP address; hostnames are DNS names"));
    }
    dns_subdomain(name)
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters: a label key's name or a value.
fn label_word(s: &str) -> bool {
    s.len() <= DNS_LABEL_MAX
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A label or annotation key: `[prefix/]name`, the prefix a DNS name, the name a label word.
pub fn label_key(s: &str) -> Check {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    if let Some(prefix) = prefix {
        dns_subdomain(prefix).map_err(|e| format!("key `{s}` has a bad prefix: {e}"))?;
    }
    if label_word(name) {
        Ok(())
    } else {
        Err(format!(
            "key `{s}`: the name part must be 1-63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ))
    }
}

/// A label value: empty, or a label word.
pub fn label_value(s: &str) -> Check {
    if s.is_empty() || label_word(s) {
        Ok(())
    } else {
        Err(format!(
            "value `{s}` must be at most 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ))
    }
}

pub fn header_name(s: &str) -> Check {
    http::HeaderName::from_bytes(s.as_bytes())
        .map(drop)
        .map_err(|_| format!("`{s}` is not a valid HTTP header name"))
}

pub fn header_value(s: &str) -> Check {
    http::HeaderValue::from_str(s)
        .map(drop)
        .map_err(|_| format!("`{s}` is not a valid HTTP header value (control characters?)"))
}

/// An HTTP method token, written in upper case (`get` is refused in favour of `GET`), so one spelling
/// names it; requests are matched against it whatever their case.
pub fn method(s: &str) -> Check {
    if http::Method::from_bytes(s.as_bytes()).is_err() {
        return Err(format!("`{s}` is not a valid HTTP method"));
    }
    let upper = s.to_ascii_uppercase();
    let standard = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if upper != s && standard.contains(&upper.as_str()) {
        return Err(format!(
            "methods are written in upper case: write `{upper}`, not `{s}`"
        ));
    }
    Ok(())
}

/// Compiles `s` as the proxies will, within [`REGEX_SIZE_LIMIT`].
pub fn regex(s: &str) -> Check {
    regex::RegexBuilder::new(s)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(drop)
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => format!(
                "regular expression `{s}` compiles to more than {} KiB; simplify it",
                REGEX_SIZE_LIMIT >> 10
            ),
            other => format!("invalid regular expression: {other}"),
        })
}

/// A request path for Exact and PathPrefix matches: absolute, no query or fragment, no whitespace.
pub fn http_path(s: &str) -> Check {
    if !s.starts_with('/') {
        return Err(format!("path `{s}` must start with '/'"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| matches!(c, '?' | '#') || c.is_whitespace() || c.is_control())
    {
        return Err(format!("path `{s}` must not contain {c:?}"));
    }
    Ok(())
}

/// A policy path: absolute (`/api/users`), or with one `*` at the start or end (`/api/*`, `*.png`, `*`).
pub fn policy_path(s: &str) -> Check {
    let stars = s.matches('*').count();
    let glob_ok = stars == 0 || (stars == 1 && (s.starts_with('*') || s.ends_with('*')));
    if !glob_ok {
        return Err(format!(
            "path `{s}`: `*` may appear once, at the start (suffix match) or the end (prefix match)"
        ));
    }
    if !s.starts_with('/') && !s.starts_with('*') {
        return Err(format!("path `{s}` must start with '/' or be a `*` glob"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("path `{s}` must not contain whitespace"));
    }
    Ok(())
}

/// `*` or a SPIFFE ID.
pub fn principal(s: &str) -> Check {
    if s == "*" {
        return Ok(());
    }
    SpiffeId::parse(s).map(drop).map_err(|e| e.to_string())
}

/// `namespace/serviceAccount`.
pub fn service_account_ref(s: &str) -> Check {
    let Some((ns, sa)) = s.split_once('/') else {
        return Err(format!("`{s}` must be `namespace/serviceAccount`"));
    };
    dns_label(ns).map_err(|e| format!("namespace of `{s}`: {e}"))?;
    service_account(sa).map_err(|e| format!("service account of `{s}`: {e}"))
}

/// Kubernetes allows dots in service account names; SPIFFE path segments do too.
pub fn service_account(s: &str) -> Check {
    dns_subdomain(s)
}

pub fn trust_domain(s: &str) -> Check {
    TrustDomain::new(s).map(drop).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_ok(check: fn(&str) -> Check, values: &[&str]) {
        for v in values {
            assert_eq!(check(v), Ok(()), "{v:?}");
        }
    }

    fn all_bad(check: fn(&str) -> Check, values: &[&str]) {
        for v in values {
            assert!(check(v).is_err(), "{v:?} accepted");
        }
    }

    #[test]
    fn dns_labels() {
        all_ok(dns_label, &["a", "reviews", "v1-2", "0a", &"a".repeat(63)]);
        all_bad(
            dns_label,
            &["", "A", "a_b", "-a", "a-", "a.b", &"a".repeat(64)],
        );
        assert!(dns_label("Reviews").unwrap_err().contains("`Reviews`"));
    }

    #[test]
    fn dns_names_and_hostnames() {
        all_ok(dns_subdomain, &["a", "a.b.c", "weft.dev"]);
        all_bad(dns_subdomain, &["", "a..b", ".a", "A.b", &"a.".repeat(127)]);
        all_ok(hostname, &["shop.example.com", "*.example.com"]);
        all_bad(
            hostname,
            &["*", "a.*.com", "10.0.0.1", "shop.example.com:80"],
        );
    }

    #[test]
    fn label_keys_and_values() {
        all_ok(
            label_key,
            &["app", "app.kubernetes.io/name", "A_b.c", "x/y"],
        );
        all_bad(
            label_key,
            &["", "/a", "a/", "-a", "Bad.Prefix/a", &"k".repeat(64)],
        );
        all_ok(label_value, &["", "v1", "A.b_c-d"]);
        all_bad(label_value, &["-v", "v ", "a/b", &"v".repeat(64)]);
    }

    #[test]
    fn http_tokens() {
        all_ok(header_name, &["x-user", "X-User", "content-type"]);
        all_bad(header_name, &["", "x user", ":authority", "a:b"]);
        all_ok(header_value, &["", "a b", "v1"]);
        all_bad(header_value, &["a\nb", "a\u{0}"]);
        all_ok(method, &["GET", "PATCH", "PURGE", "mkcol"]);
        all_bad(method, &["", "G ET", "get", "Post"]);
        assert!(method("get").unwrap_err().contains("write `GET`"));
    }

    #[test]
    fn regular_expressions() {
        all_ok(regex, &["^/api/v[0-9]+/", ".*"]);
        assert!(regex("(")
            .unwrap_err()
            .contains("invalid regular expression"));
        let huge = regex(r"\w{500}\w{500}").unwrap_err();
        assert!(huge.contains("64 KiB"), "{huge}");
    }

    #[test]
    fn paths() {
        all_ok(http_path, &["/", "/api/v1", "/a%20b"]);
        all_bad(http_path, &["", "api", "/a?b", "/a#b", "/a b"]);
        all_ok(policy_path, &["/", "/api/*", "*.png", "*", "/exact"]);
        all_bad(policy_path, &["", "api", "/a/*/b", "**", "*a*", "/a b"]);
    }

    #[test]
    fn identities() {
        all_ok(principal, &["*", "spiffe://weft.local/ns/a/sa/b"]);
        all_bad(
            principal,
            &["", "weft.local/ns/a", "spiffe://UPPER/x", "spiffe://a/b/"],
        );
        all_ok(service_account_ref, &["shop/reviews", "a/b.c"]);
        all_bad(
            service_account_ref,
            &["reviews", "/b", "a/", "A/b", "a/b/c"],
        );
        all_ok(trust_domain, &["weft.local", "example.org"]);
        all_bad(trust_domain, &["", "Weft.local", "a/b", "spiffe://a"]);
    }
}
