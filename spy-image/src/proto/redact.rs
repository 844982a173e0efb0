//! Secrets in headers: replaced by `<redacted>` unless `--show-secrets`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
