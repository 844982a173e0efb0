//! Secrets: replaced by `<redacted>` before anything leaves the agent,
//! unless `--show-secrets`. One list of names ([`names::SECRET_NAMES`])
//! decides for every output:
//! - header values by name, and any HTTP/2 field the sender marked
//!   never-indexed (HPACK's own "this is sensitive" bit), whatever its
//!   name; gRPC metadata are such headers;
//! - secret query parameters in paths and URL headers ([`query`]);
//! - secret fields of JSON and form bodies ([`raw::redact_json_body`],
//!   [`query::redact_pairs`]);
//! - the same in plaintext no parser structured ([`raw::RawMasker`]):
//!   `--raw` chunks, and connections whose parser gave up.

mod names;
mod query;
mod raw;

pub use raw::{Masked, RawMasker};

use spy_protocol::record::{Body, Exchange, Header, Payload};

/// What replaces a secret value.
pub(crate) const REDACTED: &str = "<redacted>";

pub(crate) use names::is_secret;

/// A header for the record, its value redacted when it is a secret (by
/// name, or `never_indexed` on the wire).
pub(crate) fn header(name: String, value: String, never_indexed: bool, show_secrets: bool) -> Header {
    let redacted = !show_secrets && (never_indexed || is_secret(&name));
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

/// What headers cannot redact by name: query strings in the path and in
/// URL-valued headers, and secret fields of JSON and form bodies. Called
/// on every exchange a parser finishes, HTTP/1 and HTTP/2 alike.
pub(crate) fn exchange(x: &mut Exchange) {
    if let Some(request) = &mut x.request {
        if let std::borrow::Cow::Owned(path) = query::redact_query(&request.path) {
            request.path = path;
        }
        url_headers(&mut request.headers);
        body(&mut request.body, &request.headers);
    }
    // Service and method were cut from the path before it was redacted
    // (and name the summary's routes).
    if let Some(grpc) = &mut x.grpc {
        for part in [&mut grpc.service, &mut grpc.method] {
            if let std::borrow::Cow::Owned(redacted) = query::redact_query(part) {
                *part = redacted;
            }
        }
    }
    if let Some(response) = &mut x.response {
        url_headers(&mut response.headers);
        url_headers(&mut response.trailers);
        body(&mut response.body, &response.headers);
    }
}

fn url_headers(headers: &mut [Header]) {
    for h in headers.iter_mut().filter(|h| !h.redacted) {
        if query::URL_HEADERS.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
            if let std::borrow::Cow::Owned(value) = query::redact_query(&h.value) {
                h.value = value;
                h.redacted = true;
            }
        }
    }
}

/// How a body is searched for secret fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyKind {
    Json,
    Form,
    Other,
}

/// By Content-Type; a body that starts like a JSON object or array is
/// taken for JSON whatever it says (APIs mislabel, and a missed secret
/// costs more than a masked value).
fn body_kind(content_type: Option<&str>, data: &[u8]) -> BodyKind {
    let ct = content_type.map(|c| c.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    match ct.as_deref() {
        Some("application/x-www-form-urlencoded") => BodyKind::Form,
        Some(ct)
            if ct.ends_with("/json") || ct.ends_with("+json") || ct.ends_with("json-seq") || ct.contains("ndjson") =>
        {
            BodyKind::Json
        }
        _ if matches!(data.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'[')) => BodyKind::Json,
        _ => BodyKind::Other,
    }
}

fn body(body: &mut Body, headers: &[Header]) {
    let Some(data) = &body.data else { return };
    let content_type = headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-type")).map(|h| h.value.as_str());
    let bytes = data.to_bytes();
    let redacted = match body_kind(content_type, &bytes) {
        BodyKind::Json => match raw::redact_json_body(&bytes) {
            (out, true) => Some(out),
            (_, false) => None,
        },
        BodyKind::Form => match std::str::from_utf8(&bytes) {
            Ok(text) => match query::redact_pairs(text) {
                std::borrow::Cow::Owned(out) => Some(out.into_bytes()),
                std::borrow::Cow::Borrowed(_) => None,
            },
            // Not text: the pairs scan of the raw masker still finds names.
            Err(_) => match RawMasker::default().mask(&bytes) {
                Masked::Text { data, masked: true } => Some(data),
                Masked::Text { masked: false, .. } => None,
                Masked::Withheld => Some(Vec::new()),
            },
        },
        BodyKind::Other => None,
    };
    if let Some(out) = redacted {
        body.data = Some(Payload::from_vec(out, body.truncated));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spy_protocol::record::{Request, Response};

    #[test]
    fn secrets_are_redacted_by_name_case_insensitively() {
        for name in
            ["Authorization", "cookie", "Set-Cookie", "X-Api-Key", "x-auth-token", "X-Vault-Token", "x-client-secret"]
        {
            let h = header(name.into(), "hunter2".into(), false, false);
            assert!(h.redacted, "{name}");
            assert_eq!(h.value, REDACTED);
            assert_eq!(h.name, name);
        }
    }

    #[test]
    fn never_indexed_fields_are_redacted_whatever_their_name() {
        let h = header("x-plain".into(), "v".into(), true, false);
        assert!(h.redacted && h.value == REDACTED);
        let h = header("x-plain".into(), "v".into(), true, true);
        assert!(!h.redacted && h.value == "v");
    }

    #[test]
    fn ordinary_headers_and_show_secrets_keep_values() {
        let h = header("Content-Type".into(), "text/plain".into(), false, false);
        assert!(!h.redacted);
        assert_eq!(h.value, "text/plain");
        let h = header("Authorization".into(), "Bearer x".into(), false, true);
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

    fn plain(name: &str, value: &str) -> Header {
        Header { name: name.into(), value: value.into(), redacted: false, unknown: false }
    }

    fn with_body(data: &str) -> Body {
        Body { size: data.len() as u64, data: Some(Payload::Text(data.into())), ..Body::default() }
    }

    fn text(body: &Body) -> String {
        String::from_utf8(body.data.as_ref().expect("data").to_bytes()).expect("utf8")
    }

    #[test]
    fn exchanges_lose_query_url_header_and_body_secrets() {
        let mut x = Exchange {
            request: Some(Request {
                path: "/login?code=c0de&state=s".into(),
                headers: vec![
                    plain("Content-Type", "application/json; charset=utf-8"),
                    plain("Referer", "https://a/?sig=s1g"),
                ],
                body: with_body(r#"{"user":"u","password":"pw"}"#),
                ..Request::default()
            }),
            response: Some(Response {
                headers: vec![
                    plain("Location", "/next?access_token=t0k&x=1"),
                    plain("Content-Type", "application/x-www-form-urlencoded"),
                ],
                body: with_body("a=1&refresh_token=r3f"),
                ..Response::default()
            }),
            conn: Default::default(),
            protocol: spy_protocol::record::Protocol::Http1,
            stream_id: None,
            grpc: None,
            latency_us: None,
            incomplete: None,
        };
        exchange(&mut x);
        let request = x.request.as_ref().expect("request");
        assert_eq!(request.path, "/login?code=<redacted>&state=s");
        assert_eq!(request.headers[1].value, "https://a/?sig=<redacted>");
        assert!(request.headers[1].redacted && !request.headers[0].redacted);
        assert_eq!(text(&request.body), r#"{"user":"u","password":"<redacted>"}"#);
        let response = x.response.as_ref().expect("response");
        assert_eq!(response.headers[0].value, "/next?access_token=<redacted>&x=1");
        assert_eq!(text(&response.body), "a=1&refresh_token=<redacted>");
    }

    #[test]
    fn body_kinds_by_type_then_by_look() {
        assert_eq!(body_kind(Some("application/problem+json"), b"x"), BodyKind::Json);
        assert_eq!(body_kind(Some("Application/X-WWW-Form-Urlencoded; charset=x"), b"{"), BodyKind::Form);
        assert_eq!(body_kind(Some("text/plain"), b"  {\"a\":1}"), BodyKind::Json);
        assert_eq!(body_kind(None, b"hello"), BodyKind::Other);
    }
}
