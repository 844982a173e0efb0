//! The one list of names whose values are secrets: header names, query
//! parameters, JSON and form field names, gRPC metadata keys. Every
//! redaction asks [`is_secret`], so adding a name here covers every output.

/// How a name is recognised as carrying a secret.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SecretName {
    /// The whole name.
    Exact(&'static str),
    /// A part of the name: catches the many vendor names (x-vault-token,
    /// x-csrf-token, client_secret, refresh_token, X-Amz-Credential…).
    Contains(&'static str),
}

use SecretName::{Contains, Exact};

/// Names are compared lowercased with `_` read as `-` (see [`normalize`]),
/// so `api_key`, `API-Key` and `x-api-key` are one entry. Short names that
/// are common words elsewhere (`key`, `code`, `sig`) only match whole.
pub(crate) const SECRET_NAMES: &[SecretName] = &[
    // Headers.
    Exact("authorization"),
    Exact("proxy-authorization"),
    Exact("cookie"),
    Exact("set-cookie"),
    // Query parameters and fields, often headers too.
    Exact("auth"),
    Exact("key"),
    // OAuth authorization codes.
    Exact("code"),
    Exact("sig"),
    Exact("pass"),
    Exact("passwd"),
    Exact("pwd"),
    Exact("jwt"),
    Exact("otp"),
    Exact("sid"),
    Exact("session"),
    Contains("token"),
    Contains("secret"),
    Contains("password"),
    Contains("passphrase"),
    Contains("signature"),
    Contains("api-key"),
    Contains("apikey"),
    Contains("access-key"),
    Contains("private-key"),
    Contains("credential"),
    Contains("session-id"),
    Contains("sessionid"),
    Contains("sessid"),
];

/// Names longer than this are lowercased on the heap; shorter ones (nearly
/// all) on the stack: this runs for every header of every message.
const SHORT_NAME: usize = 64;

/// Whether values under `name` are secrets (see [`SECRET_NAMES`]).
pub(crate) fn is_secret(name: &str) -> bool {
    is_secret_bytes(name.as_bytes())
}

pub(crate) fn is_secret_bytes(name: &[u8]) -> bool {
    if name.is_empty() {
        return false;
    }
    let mut buf = [0u8; SHORT_NAME];
    let heap: Vec<u8>;
    let norm: &[u8] = if name.len() <= SHORT_NAME {
        let norm = &mut buf[..name.len()];
        norm.copy_from_slice(name);
        normalize(norm);
        norm
    } else {
        let mut owned = name.to_vec();
        normalize(&mut owned);
        heap = owned;
        &heap
    };
    SECRET_NAMES.iter().any(|secret| match secret {
        Exact(exact) => norm == exact.as_bytes(),
        Contains(part) => norm.windows(part.len()).any(|w| w == part.as_bytes()),
    })
}

/// Lowercase, `_` as `-`: headers use dashes, parameters underscores.
fn normalize(name: &mut [u8]) {
    for b in name {
        *b = match b.to_ascii_lowercase() {
            b'_' => b'-',
            other => other,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_issue_are_secrets() {
        for name in [
            "Authorization",
            "cookie",
            "Set-Cookie",
            "X-Api-Key",
            "x-auth-token",
            "X-Vault-Token",
            "x-client-secret",
            "access_token",
            "token",
            "api_key",
            "key",
            "code",
            "sig",
            "password",
            "secret",
            "refresh_token",
            "client_secret",
            "X-Amz-Signature",
            "X-Amz-Credential",
            "PHPSESSID",
            "JSESSIONID",
        ] {
            assert!(is_secret(name), "{name}");
        }
    }

    #[test]
    fn ordinary_names_are_not() {
        for name in ["content-type", "host", "id", "state", "user", "monkey", "codec", "keyword", "", "accept"] {
            assert!(!is_secret(name), "{name}");
        }
        let long = format!("x-{}-token", "a".repeat(100));
        assert!(is_secret(&long), "long names go through the heap path");
    }
}
