//! Request-path normalization before any route or policy looks at a path.
//!
//! Istio's recommended `DECODE_AND_MERGE_SLASHES` option, which is Envoy's
//! `normalize_path` (RFC 3986 §6.2.2: decode percent-encoded unreserved characters, remove
//! dot segments, backslash as slash) plus `merge_slashes` plus `UNESCAPE_AND_FORWARD` for
//! `%2F`/`%5C` (see istio.io "Authorization Policy - security best practices", "Understand
//! path normalization"). The normalized path is also what the upstream receives, so the
//! policy and the service always judge the same path.
//!
//! Stricter than Envoy where a difference could be exploited: a `;` path parameter (which
//! Java servers such as Keycloak's strip, `/admin;x=1/...`) and any encoded NUL or control
//! character are refused rather than passed on.

use std::fmt;

/// Longest path accepted, in bytes, before normalization.
pub const MAX_PATH_BYTES: usize = 8 * 1024;

/// Why a request path was refused; the caller answers 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRejection {
    /// Not an origin-form path (`/...`).
    NotAbsolute,
    /// Longer than [`MAX_PATH_BYTES`].
    TooLong,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A control character, raw or percent-encoded (including `%00`).
    ControlCharacter,
    /// A `;` path parameter, raw or encoded.
    PathParameter,
    /// A raw byte outside printable ASCII (must be percent-encoded).
    NonAscii,
}

impl fmt::Display for PathRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathRejection::NotAbsolute => "the path must start with '/'",
            PathRejection::TooLong => "the path is too long",
            PathRejection::BadEscape => "the path has a malformed percent-escape",
            PathRejection::ControlCharacter => "the path contains a control character",
            PathRejection::PathParameter => "the path contains a ';' parameter",
            PathRejection::NonAscii => "the path contains a character that must be escaped",
        })
    }
}

/// Splits `path_and_query` and normalizes the path; the query is returned unchanged.
pub fn normalize(path_and_query: &str) -> Result<(String, Option<&str>), PathRejection> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    Ok((normalize_path(path)?, query))
}

/// The normalized form of a path without its query.
pub fn normalize_path(path: &str) -> Result<String, PathRejection> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PathRejection::TooLong);
    }
    if !path.starts_with('/') {
        return Err(PathRejection::NotAbsolute);
    }
    let decoded = decode(path)?;
    // RFC 3986 first, then merged slashes: Envoy's `normalize_path` then `merge_slashes`.
    Ok(merge_slashes(&remove_dot_segments(&decoded)))
}

/// Decodes unreserved characters and `%2F`/`%5C`, maps `\` to `/`, upper-cases the hex of
/// every escape it keeps.
fn decode(path: &str) -> Result<String, PathRejection> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        match byte {
            b'%' => {
                let value = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or(PathRejection::BadEscape)?;
                match value {
                    b'/' | b'\\' => out.push('/'),
                    b';' => return Err(PathRejection::PathParameter),
                    v if v.is_ascii_control() => return Err(PathRejection::ControlCharacter),
                    v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                        out.push(char::from(v))
                    }
                    v => {
                        out.push('%');
                        out.push_str(&format!("{v:02X}"));
                    }
                }
                i += 3;
            }
            b'\\' => {
                out.push('/');
                i += 1;
            }
            b';' => return Err(PathRejection::PathParameter),
            b if b.is_ascii_control() => return Err(PathRejection::ControlCharacter),
            b if !b.is_ascii() || b == b' ' || b == b'#' => return Err(PathRejection::NonAscii),
            b => {
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    Ok(out)
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// RFC 3986 §5.2.4 on an absolute path; `..` above the root stays at the root.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let last = parts.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (index, segment) in parts.iter().enumerate() {
        match *segment {
            "." => trailing_slash = index == last,
            ".." => {
                segments.pop();
                trailing_slash = index == last;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || (trailing_slash && !out.ends_with('/')) {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> String {
        normalize_path(path).unwrap_or_else(|e| format!("refused: {e}"))
    }

    #[test]
    fn attacks_collapse_to_the_path_they_mean() {
        assert_eq!(norm("/api/loans/../admin/x"), "/api/admin/x");
        assert_eq!(norm("//api//admin/x"), "/api/admin/x");
        assert_eq!(norm("/api/loans/%2e%2e/admin/x"), "/api/admin/x");
        assert_eq!(norm("/api/loans/%2E%2E/admin/x"), "/api/admin/x");
        assert_eq!(norm("/api/admin%2Fx"), "/api/admin/x");
        assert_eq!(norm("/api/admin%2fx"), "/api/admin/x");
        assert_eq!(norm("/api\\admin\\x"), "/api/admin/x");
        assert_eq!(norm("/api/admin%5Cx"), "/api/admin/x");
        assert_eq!(norm("/api/./admin/./x"), "/api/admin/x");
        assert_eq!(norm("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(norm("/%61pi/admin"), "/api/admin");
        assert_eq!(norm("/api/loans/%2e%2e%2fadmin"), "/api/admin");
        // As Envoy: dot segments go before slashes merge, so `..` undoes the empty segment.
        assert_eq!(norm("/a/b//../c"), "/a/b/c");
    }

    #[test]
    fn ordinary_paths_are_unchanged() {
        for path in ["/", "/api/accounts", "/api/accounts/", "/realms/banking/x", "/a/b%20c"] {
            assert_eq!(norm(path), path);
        }
        assert_eq!(norm("/a/b%7e"), "/a/b~");
        assert_eq!(norm("/a/b%3f"), "/a/b%3F");
        assert_eq!(norm("/a/.."), "/");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/a/b/."), "/a/b/");
    }

    #[test]
    fn case_is_kept_and_double_encoding_decodes_once() {
        assert_eq!(norm("/API/ADMIN/x"), "/API/ADMIN/x");
        assert_eq!(norm("/api/loans/%252e%252e/admin"), "/api/loans/%252e%252e/admin");
    }

    #[test]
    fn dangerous_forms_are_refused() {
        assert_eq!(normalize_path("/api/admin;x=1/x"), Err(PathRejection::PathParameter));
        assert_eq!(normalize_path("/api/admin%3bx/x"), Err(PathRejection::PathParameter));
        assert_eq!(normalize_path("/api/%00admin"), Err(PathRejection::ControlCharacter));
        assert_eq!(normalize_path("/api/%zz"), Err(PathRejection::BadEscape));
        assert_eq!(normalize_path("/api/%2"), Err(PathRejection::BadEscape));
        assert_eq!(normalize_path("api"), Err(PathRejection::NotAbsolute));
        assert_eq!(normalize_path("/caf\u{e9}"), Err(PathRejection::NonAscii));
        assert_eq!(normalize_path(&"/a".repeat(MAX_PATH_BYTES)), Err(PathRejection::TooLong));
    }

    #[test]
    fn query_is_split_off_and_kept() {
        assert_eq!(
            normalize("/a//b?x=%2e%2e/../").map(|(p, q)| (p, q.map(str::to_owned))),
            Ok(("/a/b".to_owned(), Some("x=%2e%2e/../".to_owned())))
        );
    }
}
