//! The path an authorization policy is matched against (and the app is given): one canonical spelling
//! per resource, so that no encoding of a path slips past a rule written for it.
//!
//! In order: the query and fragment are cut off; `%XX` escapes of unreserved characters (letters,
//! digits, `-._~`) are decoded and other escapes upper-cased; an escaped `/` or `\` (`%2F`, `%5C`), a
//! raw `\`, an escaped or raw control character, or a malformed escape refuses the request (our
//! documented choice: an app and a policy could read them differently); runs of `/` become one; `.`
//! and `..` segments are resolved (never above the root). Case is kept: paths are case-sensitive.

/// Why a path cannot be normalised; the request is answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path has an encoded slash or backslash (%2F, %5C)")]
    EncodedSeparator,
    #[error("the path has a backslash")]
    Backslash,
    #[error("the path has a control character")]
    Control,
    #[error("the path has a malformed percent-escape")]
    BadEscape,
    #[error("the path does not start with '/'")]
    NotAbsolute,
}

pub fn normalize(raw: &str) -> Result<String, PathError> {
    let path = raw.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(path)?;
    Ok(resolve_segments(&decoded))
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let v = hex_value(hex[0])
                    .zip(hex_value(hex[1]))
                    .map(|(h, l)| h * 16 + l)
                    .ok_or(PathError::BadEscape)?;
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(PathError::Control),
                    _ if is_unreserved(v) => out.push(v as char),
                    _ => {
                        out.push('%');
                        out.push(hex[0].to_ascii_uppercase() as char);
                        out.push(hex[1].to_ascii_uppercase() as char);
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::Control),
            _ => {
                // Bytes ≥ 0x80 cannot come through `http::Uri`; keep them as they are all the same.
                let ch_len = utf8_len(b);
                let end = (i + ch_len).min(bytes.len());
                out.push_str(
                    std::str::from_utf8(&bytes[i..end]).map_err(|_| PathError::BadEscape)?,
                );
                i = end;
            }
        }
    }
    Ok(out)
}

fn utf8_len(b: u8) -> usize {
    match b {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// Merges slashes and resolves dot segments; a trailing slash is kept.
fn resolve_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "" => trailing = i == last,
            "." => trailing = i == last,
            ".." => {
                out.pop();
                trailing = i == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || trailing {
        s.push('/');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_spellings() {
        for (raw, want) in [
            ("/", "/"),
            ("/admin", "/admin"),
            ("/admin/", "/admin/"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/./admin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/../admin", "/admin"),
            ("/x/./y/../../admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/x/%2E%2E/admin", "/admin"),
            ("/x/%2e/admin", "/x/admin"),
            ("/admin?x=1", "/admin"),
            ("/admin#frag", "/admin"),
            ("/a%7eb", "/a~b"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/Admin", "/Admin"),
            ("/admin/.", "/admin/"),
            ("/admin/..", "/"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refused_spellings() {
        for (raw, want) in [
            ("/admin%2fsecret", PathError::EncodedSeparator),
            ("/admin%2Fsecret", PathError::EncodedSeparator),
            ("/admin%5csecret", PathError::EncodedSeparator),
            ("/admin\\secret", PathError::Backslash),
            ("/admin%00", PathError::Control),
            ("/admin%0a", PathError::Control),
            ("/admin%", PathError::BadEscape),
            ("/admin%zz", PathError::BadEscape),
            ("/admin%4", PathError::BadEscape),
            ("admin", PathError::NotAbsolute),
        ] {
            assert_eq!(normalize(raw), Err(want), "{raw}");
        }
    }
}
