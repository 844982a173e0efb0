//! A finished HTTP/2 stream as a record [`Exchange`]: request and response
//! from its two sides, gRPC service, message counts and status on top.
//!
//! Pure: the stream is consumed, nothing else is touched.

use super::super::grpc;
use super::super::ParseOptions;
use super::stream::Side;
use spy_protocol::record::{Exchange, Grpc, Protocol, Request, Response};

/// Stream `id` as an exchange; `incomplete` says why it did not finish
/// normally.
pub(super) fn exchange(id: u32, req: Side, resp: Side, incomplete: Option<String>, opts: &ParseOptions) -> Exchange {
    let content_type = req.content_type.as_deref().or(resp.content_type.as_deref());
    let grpc = content_type.is_some_and(grpc::is_grpc).then(|| {
        let (service, method) = grpc::split_path(req.pseudo.path.as_deref().unwrap_or_default());
        let (mut status, mut message) = grpc::status(&resp.trailers);
        if status.is_none() {
            // Trailers-only response: the status is in the headers.
            (status, message) = grpc::status(resp.headers.as_deref().unwrap_or_default());
        }
        Grpc {
            service,
            method,
            request_messages: req.grpc.count,
            response_messages: resp.grpc.count,
            request_sizes: req.grpc.sizes.clone(),
            response_sizes: resp.grpc.sizes.clone(),
            status,
            message,
        }
    });
    let headless = (req.seen && req.headers.is_none()) || (resp.seen && resp.headers.is_none());
    let incomplete = incomplete.or_else(|| headless.then(|| "headers not seen (joined mid-stream)".to_owned()));
    let latency_us = (resp.ended && req.seen).then(|| resp.end_ts.saturating_sub(req.start_ts) / 1000);
    let request = req.seen.then(|| {
        let mut headers = req.headers.unwrap_or_default();
        headers.extend(req.trailers);
        Request {
            method: req.pseudo.method.unwrap_or_default(),
            authority: req.pseudo.authority,
            path: req.pseudo.path.unwrap_or_default(),
            version: "HTTP/2".into(),
            headers,
            body: req.body.finish(req.content_encoding.as_deref(), opts.max_body),
            ts_ns: req.start_ts,
        }
    });
    let response = resp.seen.then(|| Response {
        status: resp.pseudo.status.as_deref().and_then(|s| s.parse().ok()).unwrap_or_default(),
        reason: None,
        version: "HTTP/2".into(),
        headers: resp.headers.unwrap_or_default(),
        trailers: resp.trailers,
        body: resp.body.finish(resp.content_encoding.as_deref(), opts.max_body),
        ts_ns: resp.start_ts,
    });
    Exchange {
        conn: Default::default(),
        protocol: if grpc.is_some() { Protocol::Grpc } else { Protocol::Http2 },
        stream_id: Some(id),
        request,
        response,
        grpc,
        latency_us,
        incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spy_protocol::record::Header;

    fn header(name: &str, value: &str) -> Header {
        Header { name: name.into(), value: value.into(), redacted: false, unknown: false }
    }

    fn request(path: &str, content_type: &str) -> Side {
        let mut side = Side {
            seen: true,
            ended: true,
            start_ts: 1_000_000,
            headers: Some(Vec::new()),
            content_type: Some(content_type.into()),
            ..Side::default()
        };
        side.pseudo.method = Some("POST".into());
        side.pseudo.path = Some(path.into());
        side
    }

    fn response(status: &str, headers: Vec<Header>, end_ts: u64) -> Side {
        let mut side =
            Side { seen: true, ended: true, start_ts: 2_000_000, end_ts, headers: Some(headers), ..Side::default() };
        side.pseudo.status = Some(status.into());
        side
    }

    #[test]
    fn a_grpc_trailers_only_response_gives_its_status_from_the_headers() {
        let resp = response("200", vec![header("grpc-status", "5"), header("grpc-message", "no%20such")], 4_000_000);
        let req = request("/pkg.Svc/Get", "application/grpc");
        let e = exchange(3, req, resp, None, &ParseOptions::default());
        assert_eq!(e.protocol, Protocol::Grpc);
        assert_eq!(e.stream_id, Some(3));
        let grpc = e.grpc.expect("gRPC");
        assert_eq!((grpc.service.as_str(), grpc.method.as_str()), ("pkg.Svc", "Get"));
        assert_eq!((grpc.status, grpc.message.as_deref()), (Some(5), Some("no such")));
        assert_eq!(e.latency_us, Some(3_000));
        assert_eq!(e.incomplete, None);
        assert_eq!(e.response.map(|r| r.status), Some(200));
    }

    #[test]
    fn trailers_win_over_headers_for_the_grpc_status() {
        let mut resp = response("200", vec![header("grpc-status", "2")], 0);
        resp.trailers = vec![header("grpc-status", "0")];
        let req = request("/pkg.Svc/Get", "application/grpc");
        let e = exchange(1, req, resp, None, &ParseOptions::default());
        assert_eq!(e.grpc.and_then(|g| g.status), Some(0));
        // The response ended before the request began: no negative latency.
        assert_eq!(e.latency_us, Some(0));
    }

    #[test]
    fn sides_without_headers_and_missing_sides_are_described() {
        // Joined mid-stream: body bytes came, the headers had gone by.
        let resp = Side { seen: true, ..Side::default() };
        let e = exchange(5, Side::default(), resp, None, &ParseOptions::default());
        assert_eq!(e.protocol, Protocol::Http2);
        assert!(e.request.is_none() && e.latency_us.is_none());
        assert_eq!(e.incomplete.as_deref(), Some("headers not seen (joined mid-stream)"));
        // A reason from the stream layer is kept.
        let req = request("/x", "text/plain");
        let reset = Some("stream reset (CANCEL)".to_owned());
        let e = exchange(7, req, Side::default(), reset, &ParseOptions::default());
        assert!(e.response.is_none() && e.grpc.is_none());
        assert_eq!(e.incomplete.as_deref(), Some("stream reset (CANCEL)"));
        assert_eq!(e.request.map(|r| (r.method, r.version)), Some(("POST".into(), "HTTP/2".into())));
    }
}
