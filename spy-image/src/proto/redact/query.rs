//! Secret query parameters in paths and URLs (`/cb?code=abc&state=x` →
//! `/cb?code=<redacted>&state=x`), and the same pairs in form bodies.

use std::borrow::Cow;

use super::names::is_secret;
use super::REDACTED;

/// Header values that are URLs: their query strings are redacted too.
pub(crate) const URL_HEADERS: &[&str] = &["location", "content-location", "referer", "x-original-url"];

/// `url` (a path, an absolute URL, or a Location value) with the values of
/// secret query parameters redacted, in the query and in the fragment
/// (OAuth's implicit flow puts `access_token` there). Borrowed when
/// nothing changed.
pub(crate) fn redact_query(url: &str) -> Cow<'_, str> {
    let Some(start) = url.find(['?', '#']) else {
        return Cow::Borrowed(url);
    };
    let (head, rest) = url.split_at(start);
    // Each part after a `?` or `#` is a list of pairs.
    let mut out = String::with_capacity(url.len());
    out.push_str(head);
    let mut changed = false;
    for (i, part) in rest.split_inclusive(['?', '#']).enumerate() {
        // `split_inclusive` keeps each separator at the end of its piece;
        // the first piece is just the separator that starts `rest`.
        let (pairs, sep) = match part.char_indices().last() {
            Some((at, c @ ('?' | '#'))) => (&part[..at], Some(c)),
            _ => (part, None),
        };
        if i > 0 {
            let redacted = redact_pairs(pairs);
            changed |= matches!(redacted, Cow::Owned(_));
            out.push_str(&redacted);
        } else {
            out.push_str(pairs);
        }
        if let Some(sep) = sep {
            out.push(sep);
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(url)
    }
}

/// `a=1&client_secret=x` (a query string or a form body) with secret
/// values redacted. Names are percent-decoded before they are looked up
/// (`client%5Fsecret`); `;` separates pairs too (old HTML forms).
pub(crate) fn redact_pairs(pairs: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut changed = false;
    let mut start = 0;
    for (at, sep) in pairs.match_indices(['&', ';']).map(|(i, s)| (i, Some(s))).chain([(pairs.len(), None)]) {
        let pair = &pairs[start..at];
        match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() && is_secret(&decode_name(name)) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
                changed = true;
            }
            _ => out.push_str(pair),
        }
        if let Some(sep) = sep {
            out.push_str(sep);
        }
        start = at + 1;
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(pairs)
    }
}

/// A form-encoded name as the application reads it (`+` is a space).
fn decode_name(name: &str) -> Cow<'_, str> {
    if !name.contains(['%', '+']) {
        return Cow::Borrowed(name);
    }
    let spaced = name.replace('+', " ");
    Cow::Owned(percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn secret_parameters_are_redacted_and_the_rest_kept() {
        assert_eq!(redact_query("/cb?code=abc&state=x"), "/cb?code=<redacted>&state=x");
        assert_eq!(
            redact_query("/a?access_token=t1&id=2&api_key=k"),
            "/a?access_token=<redacted>&id=2&api_key=<redacted>"
        );
        assert_eq!(
            redact_query("https://app/cb#access_token=t&token_type=bearer"),
            "https://app/cb#access_token=<redacted>&token_type=<redacted>"
        );
        assert_eq!(redact_query("/x?client%5Fsecret=s"), "/x?client%5Fsecret=<redacted>");
        assert_eq!(redact_query("/x?a=1;sig=zz"), "/x?a=1;sig=<redacted>");
        assert_eq!(redact_query("/x?q=a?token=b"), "/x?q=a?token=<redacted>");
    }

    #[test]
    fn nothing_to_redact_borrows() {
        for url in ["/", "/users?id=1&page=2", "/x?token=", "/x?token", "/p#frag", "/?"] {
            assert!(matches!(redact_query(url), Cow::Borrowed(_)), "{url}");
            assert_eq!(redact_query(url), url);
        }
    }

    #[test]
    fn form_bodies_are_pairs() {
        assert_eq!(
            redact_pairs("grant_type=client_credentials&client_id=me&client_secret=s3"),
            "grant_type=client_credentials&client_id=me&client_secret=<redacted>"
        );
        assert_eq!(redact_pairs("pass+word=x"), "pass+word=x", "'pass word' is no name we know");
        assert_eq!(redact_pairs("password=a%26b&x=1"), "password=<redacted>&x=1");
    }

    proptest! {
        /// Whatever the input: no panic, and a secret parameter's value
        /// does not survive.
        #[test]
        fn no_secret_value_survives(
            prefix in "[ -~]{0,20}",
            name in prop::sample::select(vec!["token", "access_token", "code", "password", "client_secret", "sig"]),
            value in "[A-Za-z0-9]{6,20}",
            suffix in "(&[a-z]{1,5}=[a-z]{0,5}){0,3}",
        ) {
            let url = format!("/p?{}{name}={value}{suffix}", if prefix.contains(['&', '?', '#', ';', '=']) { "" } else { "x=1&" });
            let out = redact_query(&url);
            prop_assert!(!out.contains(&value), "{url} -> {out}");
            let _ = redact_query(&prefix);
            let _ = redact_pairs(&prefix);
        }
    }
}
