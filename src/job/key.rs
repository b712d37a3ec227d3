//! S3 URIs and object-key confinement (docs/reliability.md, contract items 7, 9 and 10; G15).
//!
//! S3 itself treats a key as opaque bytes, so `a/../b` is a legal, distinct object there. The danger is in
//! everything around it: S3-compatible servers and proxies that normalise paths, the embedded mode that maps keys
//! onto a local directory, and prefix checks that a normalising layer would bypass. So a key is accepted only in a
//! form that every such layer reads the same way: relative, `/`-separated, no empty, `.` or `..` segment, no
//! backslash, no control character, no percent-escape of a separator, dot, percent or control byte, NFC text, at
//! most [`MAX_KEY_BYTES`]. On top of that, [`check_key_allowed`] confines a key to configured bucket/prefix pairs.
use unicode_normalization::{is_nfc, UnicodeNormalization};

/// S3's own limit on a key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a key or URI was refused. The key is never echoed raw (it may hold control characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not an s3://bucket/key URI")]
    NotS3Uri,
    #[error("bucket name {0} is not a valid S3 bucket name")]
    BadBucket(String),
    #[error("empty key")]
    Empty,
    #[error("key is {0} bytes, over S3's {MAX_KEY_BYTES}")]
    TooLong(usize),
    #[error("absolute key (starts with `/`)")]
    Absolute,
    #[error("empty path segment (`//` or a trailing `/`)")]
    EmptySegment,
    #[error("`.` or `..` path segment")]
    DotSegment,
    #[error("backslash in key")]
    Backslash,
    #[error("control character at byte {0}")]
    ControlChar(usize),
    #[error("percent-encoded {0} in key")]
    PercentEncoded(String),
    #[error("key is not Unicode NFC (normalise it before uploading)")]
    NotNfc,
    #[error("s3://{bucket}/{key} is outside the allowed buckets and prefixes")]
    NotAllowed { bucket: String, key: String },
}

impl KeyError {
    /// Short machine-readable reason (the job-level kind is always `forbidden_key`; this says which rule).
    pub fn reason(&self) -> &'static str {
        match self {
            KeyError::NotS3Uri => "not_s3_uri",
            KeyError::BadBucket(_) => "bad_bucket",
            KeyError::Empty => "empty",
            KeyError::TooLong(_) => "too_long",
            KeyError::Absolute => "absolute",
            KeyError::EmptySegment => "empty_segment",
            KeyError::DotSegment => "dot_segment",
            KeyError::Backslash => "backslash",
            KeyError::ControlChar(_) => "control_char",
            KeyError::PercentEncoded(_) => "percent_encoded",
            KeyError::NotNfc => "not_nfc",
            KeyError::NotAllowed { .. } => "not_allowed",
        }
    }
}

/// A bucket and a key that passed [`check_key`]. Serialised as `s3://bucket/key`; deserialising checks again, so
/// no `S3Uri` anywhere holds an unchecked key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct S3Uri {
    pub bucket: String,
    pub key: String,
}

impl TryFrom<String> for S3Uri {
    type Error = KeyError;
    fn try_from(s: String) -> Result<Self, KeyError> {
        parse_s3_uri(&s)
    }
}

impl From<S3Uri> for String {
    fn from(u: S3Uri) -> String {
        u.to_string()
    }
}

impl std::fmt::Display for S3Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Splits `s3://bucket/key`, checking the bucket name and the key ([`check_key`]).
pub fn parse_s3_uri(uri: &str) -> Result<S3Uri, KeyError> {
    let rest = uri.strip_prefix("s3://").ok_or(KeyError::NotS3Uri)?;
    let (bucket, key) = rest.split_once('/').ok_or(KeyError::NotS3Uri)?;
    check_bucket(bucket)?;
    check_key(key)?;
    Ok(S3Uri { bucket: bucket.to_string(), key: key.to_string() })
}

/// S3's bucket naming rules (3–63 of `[a-z0-9.-]`, alphanumeric at both ends, no `..`, not an IPv4 address).
pub fn check_bucket(bucket: &str) -> Result<(), KeyError> {
    let bad = || KeyError::BadBucket(crate::job::quote(bucket));
    let b = bucket.as_bytes();
    let edge_ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !(3..=63).contains(&b.len())
        || !b.iter().all(|&c| edge_ok(c) || c == b'.' || c == b'-')
        || !edge_ok(b[0])
        || !edge_ok(b[b.len() - 1])
        || bucket.contains("..")
        || bucket.parse::<std::net::Ipv4Addr>().is_ok()
    {
        return Err(bad());
    }
    Ok(())
}

/// The key rules of this module's docs. Order matters only for which reason is reported.
pub fn check_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong(key.len()));
    }
    if let Some((i, _)) = key.char_indices().find(|(_, c)| c.is_control()) {
        // `char::is_control` is Unicode Cc: C0 (NUL included), DEL and C1.
        return Err(KeyError::ControlChar(i));
    }
    if key.contains('\\') {
        return Err(KeyError::Backslash);
    }
    if key.starts_with('/') {
        return Err(KeyError::Absolute);
    }
    check_percent_escapes(key)?;
    if !is_nfc(key) {
        return Err(KeyError::NotNfc);
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return Err(KeyError::EmptySegment);
        }
        if matches!(segment, "." | "..") {
            return Err(KeyError::DotSegment);
        }
    }
    // NFKC as well, folded before splitting: a layer that folds compatibility characters would read `．．` (fullwidth)
    // or `‥` (two-dot leader) as `..`, and `／` (fullwidth solidus) as a separator, so `a/．．／secrets` as
    // `a/../secrets`.
    if key.nfkc().collect::<String>().split('/').any(|segment| matches!(segment, "." | "..")) {
        return Err(KeyError::DotSegment);
    }
    Ok(())
}

/// Refuses `%XX` escapes that a decoding layer would turn into a dot, a separator, a percent (double encoding:
/// `%252e` → `%2e` → `.`) or a control byte. Other escapes (`%20`) are ordinary characters of the key.
fn check_percent_escapes(key: &str) -> Result<(), KeyError> {
    let b = key.as_bytes();
    for i in 0..b.len().saturating_sub(2) {
        if b[i] != b'%' {
            continue;
        }
        let hex = |c: u8| (c as char).to_digit(16);
        if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
            let byte = (hi * 16 + lo) as u8;
            let what = match byte {
                b'.' => "dot",
                b'/' => "slash",
                b'\\' => "backslash",
                b'%' => "percent",
                c if c < 0x20 || c == 0x7f => "control byte",
                _ => continue,
            };
            return Err(KeyError::PercentEncoded(format!("{what} (%{}{})", b[i + 1] as char, b[i + 2] as char)));
        }
    }
    Ok(())
}

/// A configured bucket/prefix pair that inputs may be read from. The prefix is a folder: `celeba` and `celeba/`
/// both allow `celeba/x.png`, neither allows `celeba2/x.png`; an empty prefix allows the whole bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedPrefix {
    bucket: String,
    /// Empty, or ends with `/`.
    prefix: String,
}

impl AllowedPrefix {
    /// Checks the pair with the same rules as keys, so a configured prefix cannot itself hold `..`.
    pub fn new(bucket: &str, prefix: &str) -> Result<Self, super::JobConfigError> {
        let err = |source| super::JobConfigError::AllowedPrefix {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            source,
        };
        check_bucket(bucket).map_err(err)?;
        let trimmed = prefix.trim_end_matches('/');
        if !trimmed.is_empty() {
            check_key(trimmed).map_err(err)?;
        }
        let prefix = if trimmed.is_empty() { String::new() } else { format!("{trimmed}/") };
        Ok(AllowedPrefix { bucket: bucket.to_string(), prefix })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Checks the key ([`check_key`]), then that some `(bucket, prefix)` pair holds it. The prefix is treated as a
/// folder (see [`AllowedPrefix`]); a pair whose prefix itself fails the key rules never matches.
pub fn check_key_allowed<B: AsRef<str>, P: AsRef<str>>(
    bucket: &str,
    key: &str,
    allowed: &[(B, P)],
) -> Result<(), KeyError> {
    check_bucket(bucket)?;
    check_key(key)?;
    let inside = |prefix: &str| {
        let folder = prefix.trim_end_matches('/');
        if folder.is_empty() {
            return true;
        }
        check_key(folder).is_ok() && key.len() > folder.len() + 1 && key.starts_with(folder) && key.as_bytes()[folder.len()] == b'/'
    };
    if allowed.iter().any(|(b, p)| b.as_ref() == bucket && inside(p.as_ref())) {
        return Ok(());
    }
    Err(KeyError::NotAllowed { bucket: crate::job::quote(bucket), key: crate::job::quote(key) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_has_its_reason() {
        let cases = [
            ("", "empty"),
            ("/abs.png", "absolute"),
            ("a//b.png", "empty_segment"),
            ("a/", "empty_segment"),
            ("a/../b", "dot_segment"),
            ("./a", "dot_segment"),
            ("a/\u{ff0e}\u{ff0e}/b", "dot_segment"),
            ("a\\b", "backslash"),
            ("a\u{0}b", "control_char"),
            ("a\u{85}b", "control_char"),
            ("a/%2e%2e/b", "percent_encoded"),
            ("a/%2E./b", "percent_encoded"),
            ("a%2fb", "percent_encoded"),
            ("a%252e", "percent_encoded"),
            ("a%00", "percent_encoded"),
            ("celeba/\u{ff0e}\u{ff0e}\u{ff0f}secrets/x", "dot_segment"),
            ("a\u{ff0f}\u{2025}\u{ff0f}b", "dot_segment"),
            ("cafe\u{301}.png", "not_nfc"),
        ];
        for (key, reason) in cases {
            assert_eq!(check_key(key).unwrap_err().reason(), reason, "{key:?}");
        }
        assert_eq!(check_key(&"a".repeat(MAX_KEY_BYTES + 1)).unwrap_err().reason(), "too_long");
        for ok in ["a.png", "a/b/c.png", "café.png", "x%20y.png", "...png", "a/.hidden", "100%.png", "a%2"] {
            assert!(check_key(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn uris() {
        let u = parse_s3_uri("s3://my-bucket/a/b.png").unwrap();
        assert_eq!((u.bucket.as_str(), u.key.as_str()), ("my-bucket", "a/b.png"));
        assert_eq!(u.to_string(), "s3://my-bucket/a/b.png");
        for bad in ["http://b/k", "s3://bucket", "s3://Bucket/k", "s3://ab/k", "s3://a..b/k", "s3://192.168.0.1/k", "s3://-ab/k"] {
            assert!(parse_s3_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_are_folders() {
        let allowed = [("images", "celeba")];
        assert!(check_key_allowed("images", "celeba/x.png", &allowed).is_ok());
        assert!(check_key_allowed("images", "celeba2/x.png", &allowed).is_err());
        assert!(check_key_allowed("images", "celeba", &allowed).is_err());
        assert!(check_key_allowed("images", "celeba/", &allowed).is_err());
        assert!(check_key_allowed("images", "anything/x.png", &[("images", "")]).is_ok());
        assert!(check_key_allowed("images", "x/y.png", &[("images", "../x")]).is_err());
        assert!(AllowedPrefix::new("images", "a/../b").is_err());
        assert_eq!(AllowedPrefix::new("images", "celeba").unwrap().prefix(), "celeba/");
        assert_eq!(AllowedPrefix::new("images", "/").unwrap().prefix(), "");
    }
}
