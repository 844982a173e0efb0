//! Secrets in headers: replaced by `<redacted>` unless `--show-secrets`,
//! in parsed headers and in plaintext no parser claimed.

use spy_protocol::record::Header;

/// What replaces a secret value.
pub(crate) const REDACTED: &str = "<redacted>";

/// How a header name is recognised as carrying a secret.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SecretName {
    /// The whole name, case-insensitive.
    Exact(&'static str),
    /// A part of the name, case-insensitive: catches the many vendor
    /// headers (x-vault-token, x-csrf-token, x-client-secret…).
    Contains(&'static str),
}

/// Headers whose values are secrets.
pub(crate) const SECRET_HEADERS: &[SecretName] = &[
    SecretName::Exact("authorization"),
    SecretName::Exact("proxy-authorization"),
    SecretName::Exact("cookie"),
    SecretName::Exact("set-cookie"),
    SecretName::Exact("x-api-key"),
    SecretName::Exact("x-auth-token"),
    SecretName::Exact("x-amz-security-token"),
    SecretName::Exact("x-goog-api-key"),
    SecretName::Contains("token"),
    SecretName::Contains("secret"),
    SecretName::Contains("password"),
    SecretName::Contains("api-key"),
    SecretName::Contains("apikey"),
    SecretName::Contains("credential"),
    SecretName::Contains("session-id"),
];

/// Header names longer than this are lowercased on the heap; shorter ones
/// (nearly all) on the stack: this runs for every header of every message.
const SHORT_NAME: usize = 64;

pub(crate) fn is_secret(name: &str) -> bool {
    let mut buf = [0u8; SHORT_NAME];
    let heap;
    let lower: &[u8] = if name.len() <= SHORT_NAME {
        let lower = &mut buf[..name.len()];
        lower.copy_from_slice(name.as_bytes());
        lower.make_ascii_lowercase();
        lower
    } else {
        heap = name.to_ascii_lowercase();
        heap.as_bytes()
    };
    SECRET_HEADERS.iter().any(|secret| match secret {
        SecretName::Exact(exact) => lower == exact.as_bytes(),
        SecretName::Contains(part) => lower.windows(part.len()).any(|w| w == part.as_bytes()),
    })
}

/// A header for the record, its value redacted when it is a secret.
pub(crate) fn header(name: String, value: String, show_secrets: bool) -> Header {
    let redacted = !show_secrets && is_secret(&name);
    Header { name, value: if redacted { REDACTED.to_owned() } else { value }, redacted, unknown: false }
}

/// An HTTP/2 header whose name we could not learn (a dynamic-table entry we
/// never saw). Its value might be a secret, so it is redacted like one.
pub(crate) fn unknown_name(value: Option<String>, show_secrets: bool) -> Header {
    let redacted = value.is_some() && !show_secrets;
    Header {
        name: String::new(),
        value: match value {
            Some(_) if redacted => REDACTED.to_owned(),
            Some(value) => value,
            None => String::new(),
        },
        redacted,
        unknown: true,
    }
}

/// Masks the values of secret header lines (`Authorization: …`,
/// `Cookie: …`) in plaintext that no parser claimed: `--raw` output, and a
/// connection whose parser gave up (joined mid-body, too many headers).
/// Redaction must not depend on the parser succeeding.
///
/// It reads one direction of a connection as a stream cut anywhere, so a
/// secret split across two TLS calls is masked in both: the state carries
/// over. A value becomes `<redacted>` once, where it starts; its bytes up
/// to the line's end are dropped. Text that merely looks like a header line
/// (a body line `token: …`) is masked too: better one masked line too many.
#[derive(Clone, Debug, Default)]
pub struct HeaderLineMasker {
    state: MaskState,
    /// The header name read so far on this line (bounded).
    name: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum MaskState {
    /// At a line's start, or in its first word (a header name, maybe).
    #[default]
    Name,
    /// After a secret header's colon; `shown` once the marker went out.
    Secret { shown: bool },
    /// The rest of a line that is no secret header.
    Plain,
}

/// Longer words are no header names we know.
const MAX_NAME: usize = 64;

impl HeaderLineMasker {
    /// The bytes as they may be shown, and whether anything was masked.
    pub fn mask(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        let mut masked = false;
        for &b in input {
            match self.state {
                MaskState::Name => {
                    out.push(b);
                    if b == b':' {
                        let secret = std::str::from_utf8(&self.name).is_ok_and(|n| !n.is_empty() && is_secret(n));
                        self.state = if secret { MaskState::Secret { shown: false } } else { MaskState::Plain };
                    } else if b == b'\n' {
                        self.name.clear();
                    } else if is_token(b) && self.name.len() < MAX_NAME {
                        self.name.push(b);
                    } else {
                        self.state = MaskState::Plain;
                    }
                }
                MaskState::Secret { shown } => match b {
                    b'\r' | b'\n' => {
                        out.push(b);
                        self.end_line(b);
                    }
                    b' ' | b'\t' if !shown => out.push(b),
                    _ if !shown => {
                        out.extend_from_slice(REDACTED.as_bytes());
                        masked = true;
                        self.state = MaskState::Secret { shown: true };
                    }
                    _ => masked = true,
                },
                MaskState::Plain => {
                    out.push(b);
                    if b == b'\n' {
                        self.end_line(b);
                    }
                }
            }
        }
        (out, masked)
    }

    fn end_line(&mut self, b: u8) {
        self.state = if b == b'\n' { MaskState::Name } else { MaskState::Plain };
        self.name.clear();
    }
}

/// RFC 9110 token characters: what a header name is made of.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked_whole(input: &[u8]) -> Vec<u8> {
        HeaderLineMasker::default().mask(input).0
    }

    #[test]
    fn secret_header_lines_are_masked_and_others_kept() {
        let request =
            b"GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cret\r\nCookie:sid=1\r\nX-Trace: t\r\n\r\nbody";
        let (out, masked) = HeaderLineMasker::default().mask(request);
        assert!(masked);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: <redacted>\r\nCookie:<redacted>\r\nX-Trace: t\r\n\r\nbody"
        );
        let (out, masked) = HeaderLineMasker::default().mask(b"Content-Type: text/plain\nset-cookie: a=b\n");
        assert!(masked);
        assert_eq!(out, b"Content-Type: text/plain\nset-cookie: <redacted>\n");
        // A colon later in a line is no header.
        let (out, masked) = HeaderLineMasker::default().mask(b"GET /token: x HTTP/1.1\r\n");
        assert!(!masked);
        assert_eq!(out, b"GET /token: x HTTP/1.1\r\n");
    }

    /// Cut anywhere, and in as many pieces as there are bytes: the same
    /// output, no secret byte out.
    #[test]
    fn a_secret_split_across_calls_is_masked_at_every_split_point() {
        let input: &[u8] = b"POST / HTTP/1.1\r\nX-Api-Key:   k3y-value\r\nProxy-Authorization: Basic dXNlcg==\r\n\r\n";
        let whole = masked_whole(input);
        for cut in 0..=input.len() {
            let mut masker = HeaderLineMasker::default();
            let mut out = masker.mask(&input[..cut]).0;
            out.extend(masker.mask(&input[cut..]).0);
            assert_eq!(out, whole, "cut at {cut}");
        }
        let mut masker = HeaderLineMasker::default();
        let bytewise: Vec<u8> = input.iter().flat_map(|b| masker.mask(std::slice::from_ref(b)).0).collect();
        assert_eq!(bytewise, whole);
        let text = String::from_utf8_lossy(&whole);
        assert!(!text.contains("k3y") && !text.contains("dXNlcg"), "{text}");
    }

    #[test]
    fn secrets_are_redacted_by_name_case_insensitively() {
        for name in
            ["Authorization", "cookie", "Set-Cookie", "X-Api-Key", "x-auth-token", "X-Vault-Token", "x-client-secret"]
        {
            let h = header(name.into(), "hunter2".into(), false);
            assert!(h.redacted, "{name}");
            assert_eq!(h.value, REDACTED);
            assert_eq!(h.name, name);
        }
    }

    #[test]
    fn ordinary_headers_and_show_secrets_keep_values() {
        let h = header("Content-Type".into(), "text/plain".into(), false);
        assert!(!h.redacted);
        assert_eq!(h.value, "text/plain");
        let h = header("Authorization".into(), "Bearer x".into(), true);
        assert!(!h.redacted);
        assert_eq!(h.value, "Bearer x");
    }

    #[test]
    fn values_under_unknown_names_are_redacted_too() {
        let h = unknown_name(Some("Bearer x".into()), false);
        assert!(h.unknown && h.redacted);
        assert_eq!(h.value, REDACTED);
        let h = unknown_name(None, false);
        assert!(h.unknown && !h.redacted);
        let h = unknown_name(Some("v".into()), true);
        assert_eq!(h.value, "v");
    }
}
