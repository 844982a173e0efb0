//! Connection-level tests: detection, HTTP/1.x, HTTP/2 and gRPC through
//! [`ConnectionParser`], every split point, hostile input.

use proptest::prelude::*;

use super::*;
use spy_protocol::record::{Direction::Recv, Direction::Send, Exchange, Payload, Protocol};

const MB: usize = 1 << 20;

fn opts() -> ParseOptions {
    ParseOptions::default()
}

/// Feeds each step whole at ts = (i+1) ms, then finishes.
fn run_with(options: ParseOptions, steps: &[(Direction, &[u8])]) -> Vec<Parsed> {
    let mut parser = ConnectionParser::new(options);
    let mut out = Vec::new();
    for (i, (dir, data)) in steps.iter().enumerate() {
        parser.feed(*dir, ts(i), data, &mut out);
    }
    parser.finish("closed", &mut out);
    out
}

fn run(steps: &[(Direction, &[u8])]) -> Vec<Parsed> {
    run_with(opts(), steps)
}

fn ts(step: usize) -> u64 {
    (step as u64 + 1) * 1_000_000
}

fn exchanges(out: &[Parsed]) -> Vec<Exchange> {
    out.iter().filter_map(|p| if let Parsed::Exchange(e) = p { Some((**e).clone()) } else { None }).collect()
}

fn errors(out: &[Parsed]) -> Vec<String> {
    out.iter().filter_map(|p| if let Parsed::Error { message } = p { Some(message.clone()) } else { None }).collect()
}

/// Unclaimed bytes per direction, joined, with the offset they start at.
fn unclaimed(out: &[Parsed], dir: Direction) -> Runs {
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    for p in out {
        if let Parsed::Unclaimed { direction, offset, data, .. } = p {
            if *direction != dir {
                continue;
            }
            match runs.last_mut() {
                Some((start, bytes)) if *start + bytes.len() as u64 == *offset => bytes.extend_from_slice(data),
                _ => runs.push((*offset, data.clone())),
            }
        }
    }
    runs
}

fn body_text(body: &spy_protocol::record::Body) -> String {
    String::from_utf8(body.data.as_ref().map(Payload::to_bytes).unwrap_or_default()).expect("utf-8 body")
}

fn header<'a>(headers: &'a [spy_protocol::record::Header], name: &str) -> Option<&'a str> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
}

// ---------------------------------------------------------------- detection

#[test]
fn detection_reads_first_bytes() {
    assert_eq!(classify(Send, b"GET / HTTP/1.1\r\n"), Detected::Http1 { requests: Send });
    assert_eq!(classify(Recv, b"POST /x"), Detected::Http1 { requests: Recv });
    assert_eq!(classify(Recv, b"HTTP/1.1 200 OK\r\n"), Detected::Http1 { requests: Send });
    assert_eq!(classify(Send, b"GE"), Detected::NeedMore);
    assert_eq!(classify(Send, b"HTT"), Detected::NeedMore);
    assert_eq!(classify(Send, b"PRI * HTTP/2"), Detected::NeedMore);
    assert_eq!(classify(Recv, H2_PREFACE), Detected::Http2 { client: Some(Recv) });
    assert_eq!(classify(Send, &h2_frame(4, 0, 0, &[])), Detected::Http2 { client: Some(Recv) });
    assert_eq!(classify(Send, &h2_frame(1, 4, 3, &[0x82])), Detected::Http2 { client: None });
    assert_eq!(classify(Send, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc"), Detected::Unknown);
    assert_eq!(classify(Send, b"hello world"), Detected::Unknown);
    assert_eq!(classify(Send, b"220 smtp.example.com ESMTP"), Detected::Unknown);
}

#[test]
fn the_client_direction_comes_from_the_protocol() {
    let mut out = Vec::new();
    let mut parser = ConnectionParser::new(opts());
    assert_eq!(parser.client_direction(), None);
    parser.feed(Recv, 1, GET, &mut out);
    assert_eq!(parser.client_direction(), Some(Recv));

    let mut parser = ConnectionParser::new(opts());
    parser.feed(Send, 1, &settings(), &mut out);
    assert_eq!(parser.client_direction(), Some(Recv), "SETTINGS first: the spied process is the server");

    let mut parser = ConnectionParser::new(opts());
    parser.feed(Recv, 1, &headers_frame(1, true, &[(":status", "200")]), &mut out);
    assert_eq!(parser.client_direction(), Some(Send), "a :status was read: the spied process is the client");

    let mut parser = ConnectionParser::new(opts());
    parser.feed(Send, 1, b"SSH-2.0-OpenSSH_9.6\r\n", &mut out);
    assert_eq!(parser.client_direction(), None);
}

#[test]
fn unknown_protocols_pass_through_untouched_without_error() {
    let out = run(&[(Send, b"hello server"), (Recv, b"hello client"), (Send, b"bye")]);
    assert!(exchanges(&out).is_empty());
    assert!(errors(&out).is_empty());
    assert_eq!(unclaimed(&out, Send), vec![(0, b"hello serverbye".to_vec())]);
    assert_eq!(unclaimed(&out, Recv), vec![(0, b"hello client".to_vec())]);
}

#[test]
fn a_short_undecided_stream_is_flushed_at_finish() {
    let out = run(&[(Send, b"GE")]);
    assert_eq!(unclaimed(&out, Send), vec![(0, b"GE".to_vec())]);
}

// ---------------------------------------------------------------- HTTP/1

const GET: &[u8] =
    b"GET /items?id=7 HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer s3cr3t\r\nCookie: a=b\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: s=1\r\nContent-Length: 5\r\n\r\nhello";

#[test]
fn http1_exchange_as_client() {
    let out = run(&[(Send, GET), (Recv, OK)]);
    assert!(errors(&out).is_empty(), "{out:?}");
    let ex = exchanges(&out);
    assert_eq!(ex.len(), 1);
    let ex = &ex[0];
    assert_eq!(ex.protocol, Protocol::Http1);
    assert_eq!(ex.incomplete, None);
    let req = ex.request.as_ref().expect("request");
    assert_eq!((req.method.as_str(), req.path.as_str(), req.version.as_str()), ("GET", "/items?id=7", "HTTP/1.1"));
    assert_eq!(req.authority.as_deref(), Some("api.example.com"));
    assert_eq!(req.ts_ns, ts(0));
    let resp = ex.response.as_ref().expect("response");
    assert_eq!((resp.status, resp.reason.as_deref()), (200, Some("OK")));
    assert_eq!(body_text(&resp.body), "hello");
    assert_eq!(resp.body.size, 5);
    assert_eq!(resp.ts_ns, ts(1));
    assert_eq!(ex.latency_us, Some((ts(1) - ts(0)) / 1000));
}

#[test]
fn http1_exchange_as_server() {
    let out = run(&[(Recv, GET), (Send, OK)]);
    let ex = exchanges(&out);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].request.as_ref().expect("request").path, "/items?id=7");
    assert_eq!(ex[0].response.as_ref().expect("response").status, 200);
}

#[test]
fn http1_secrets_are_redacted_unless_asked() {
    let ex = exchanges(&run(&[(Send, GET), (Recv, OK)]));
    let req = ex[0].request.as_ref().expect("request");
    let auth = req.headers.iter().find(|h| h.name == "Authorization").expect("auth");
    assert!(auth.redacted);
    assert_eq!(auth.value, "<redacted>");
    assert_eq!(header(&req.headers, "cookie"), Some("<redacted>"));
    assert_eq!(header(&ex[0].response.as_ref().expect("resp").headers, "set-cookie"), Some("<redacted>"));
    assert_eq!(header(&ex[0].response.as_ref().expect("resp").headers, "content-type"), Some("text/plain"));

    let shown = ParseOptions { show_secrets: true, ..opts() };
    let ex = exchanges(&run_with(shown, &[(Send, GET), (Recv, OK)]));
    let req = ex[0].request.as_ref().expect("request");
    assert_eq!(header(&req.headers, "authorization"), Some("Bearer s3cr3t"));
    assert!(req.headers.iter().all(|h| !h.redacted));
}

fn numbered_get(i: usize) -> Vec<u8> {
    format!("GET /r/{i} HTTP/1.1\r\nHost: h\r\n\r\n").into_bytes()
}

fn numbered_ok(i: usize) -> Vec<u8> {
    let body = format!("response {i}");
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

#[test]
fn http1_pipelined_requests_match_responses_in_order() {
    let requests: Vec<u8> = (0..5).flat_map(numbered_get).collect();
    let responses: Vec<u8> = (0..5).flat_map(numbered_ok).collect();
    let out = run(&[(Send, &requests), (Recv, &responses)]);
    let ex = exchanges(&out);
    assert_eq!(ex.len(), 5);
    for (i, e) in ex.iter().enumerate() {
        assert_eq!(e.request.as_ref().expect("req").path, format!("/r/{i}"));
        assert_eq!(body_text(&e.response.as_ref().expect("resp").body), format!("response {i}"));
        assert_eq!(e.incomplete, None);
    }
}

#[test]
fn http1_keep_alive_sequence() {
    let (r0, a0, r1, a1) = (numbered_get(0), numbered_ok(0), numbered_get(1), numbered_ok(1));
    let out = run(&[(Send, &r0), (Recv, &a0), (Send, &r1), (Recv, &a1)]);
    let ex = exchanges(&out);
    assert_eq!(ex.len(), 2);
    assert_eq!(ex[1].request.as_ref().expect("req").ts_ns, ts(2));
    assert_eq!(ex[1].latency_us, Some((ts(3) - ts(2)) / 1000));
}

const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\nX-Token: t0p\r\n\r\n";

#[test]
fn http1_chunked_response_with_trailers() {
    let out = run(&[(Send, GET), (Recv, CHUNKED)]);
    let ex = exchanges(&out);
    assert_eq!(ex.len(), 1, "{out:?}");
    let resp = ex[0].response.as_ref().expect("resp");
    assert_eq!(body_text(&resp.body), "hello world");
    assert_eq!(resp.body.size, 11);
    assert_eq!(header(&resp.trailers, "x-checksum"), Some("abc"));
    assert_eq!(header(&resp.trailers, "x-token"), Some("<redacted>"));
    assert_eq!(ex[0].incomplete, None);
}

#[test]
fn http1_chunked_request_body() {
    let req = b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let ex = exchanges(&run(&[(Send, req), (Recv, b"HTTP/1.1 204 No Content\r\n\r\n")]));
    assert_eq!(ex.len(), 1);
    assert_eq!(body_text(&ex[0].request.as_ref().expect("req").body), "abc");
    assert_eq!(ex[0].response.as_ref().expect("resp").status, 204);
}

#[test]
fn http1_body_until_close() {
    let resp = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this until the end";
    let ex = exchanges(&run(&[(Send, b"GET / HTTP/1.0\r\n\r\n"), (Recv, resp)]));
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].incomplete, None);
    assert_eq!(body_text(&ex[0].response.as_ref().expect("resp").body), "all of this until the end");
}

#[test]
fn http1_head_204_304_have_no_body() {
    let reqs = b"HEAD /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\nGET /d HTTP/1.1\r\nHost: h\r\n\r\n";
    let resps = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let ex = exchanges(&run(&[(Send, reqs), (Recv, resps)]));
    let got: Vec<(u16, u64)> =
        ex.iter().map(|e| e.response.as_ref().map(|r| (r.status, r.body.size)).expect("resp")).collect();
    assert_eq!(got, [(200, 0), (204, 0), (304, 0), (200, 2)]);
    assert!(ex.iter().all(|e| e.incomplete.is_none()));
}

#[test]
fn http1_100_continue_does_not_complete_the_exchange() {
    let head = b"PUT /f HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    let out = run(&[
        (Send, head),
        (Recv, b"HTTP/1.1 100 Continue\r\n\r\n"),
        (Send, b"data"),
        (Recv, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    ]);
    let ex = exchanges(&out);
    assert_eq!(ex.len(), 1, "{out:?}");
    assert_eq!(ex[0].response.as_ref().expect("resp").status, 201);
    assert_eq!(body_text(&ex[0].request.as_ref().expect("req").body), "data");
    assert_eq!(ex[0].latency_us, Some((ts(3) - ts(0)) / 1000));
}

#[test]
fn http1_connection_close_then_bytes_are_unclaimed() {
    let req = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let out = run(&[(Send, req), (Recv, resp), (Recv, b"junk"), (Send, b"more")]);
    assert_eq!(exchanges(&out).len(), 1);
    assert!(errors(&out).is_empty());
    assert_eq!(unclaimed(&out, Recv), vec![(resp.len() as u64, b"junk".to_vec())]);
    assert_eq!(unclaimed(&out, Send), vec![(req.len() as u64, b"more".to_vec())]);
}

#[test]
fn http1_upgrade_101_passes_the_rest_through() {
    let req = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let mut server_bytes = resp.to_vec();
    server_bytes.extend_from_slice(b"\x81\x05hello");
    let out =
        run(&[(Send, req), (Send, b"\x81\x85abcdxxxxx"), (Recv, &server_bytes), (Send, b"GET / HTTP/1.1\r\n\r\n")]);
    let ex = exchanges(&out);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].response.as_ref().expect("resp").status, 101);
    assert_eq!(ex[0].incomplete, None);
    assert!(errors(&out).is_empty());
    let mut sent = b"\x81\x85abcdxxxxx".to_vec();
    sent.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(unclaimed(&out, Send), vec![(req.len() as u64, sent)]);
    assert_eq!(unclaimed(&out, Recv), vec![(resp.len() as u64, b"\x81\x05hello".to_vec())]);
}

#[test]
fn http1_refused_upgrade_goes_on_with_http() {
    let req = b"GET /a HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb";
    let ex = exchanges(&run(&[(Send, req), (Recv, resp)]));
    assert_eq!(ex.len(), 2);
    assert_eq!(ex[1].request.as_ref().expect("req").path, "/b");
    assert!(ex.iter().all(|e| e.incomplete.is_none()));
}

#[test]
fn http1_connect_tunnel_is_unclaimed() {
    let req = b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n";
    let resp = b"HTTP/1.1 200 Connection established\r\n\r\n";
    let out = run(&[(Send, req), (Recv, resp), (Send, b"\x00\x00\x00\x08startup")]);
    assert_eq!(exchanges(&out).len(), 1);
    assert_eq!(unclaimed(&out, Send), vec![(req.len() as u64, b"\x00\x00\x00\x08startup".to_vec())]);
}

#[test]
fn http1_gzip_response_is_decoded() {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(b"{\"ok\":true}").expect("gzip");
    let gz = enc.finish().expect("gzip");
    let mut resp =
        format!("HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n", gz.len()).into_bytes();
    resp.extend_from_slice(&gz);
    let ex = exchanges(&run(&[(Send, GET), (Recv, &resp)]));
    let body = &ex[0].response.as_ref().expect("resp").body;
    assert!(body.decoded);
    assert_eq!(body.size, gz.len() as u64);
    assert_eq!(body.content_encoding.as_deref(), Some("gzip"));
    assert_eq!(body_text(body), "{\"ok\":true}");
}

#[test]
fn http1_huge_content_length_keeps_max_body_and_counts_everything() {
    let options = ParseOptions { max_body: 1000, ..opts() };
    let mut parser = ConnectionParser::new(options);
    let mut out = Vec::new();
    parser.feed(Send, 1, GET, &mut out);
    parser.feed(Recv, 2, b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000\r\n\r\n", &mut out);
    let chunk = vec![b'x'; MB];
    for _ in 0..3 {
        parser.feed(Recv, 3, &chunk, &mut out);
    }
    // Three gigabytes lost in capture inside the body: counted, not kept.
    parser.gap(Recv, 3 << 30, &mut out);
    parser.feed(Recv, 4, &chunk, &mut out);
    assert!(out.is_empty(), "nothing is emitted before the body ends");
    parser.finish("closed", &mut out);
    let ex = exchanges(&out);
    assert_eq!(ex.len(), 1);
    let body = &ex[0].response.as_ref().expect("resp").body;
    assert_eq!(body.size, 4 * MB as u64 + (3 << 30));
    assert!(body.truncated);
    assert_eq!(body.data.as_ref().map(|d| d.to_bytes().len()), Some(1000));
    assert_eq!(ex[0].incomplete.as_deref(), Some("closed"));
}

#[test]
fn http1_a_gap_outside_a_body_gives_up_once() {
    let mut parser = ConnectionParser::new(opts());
    let mut out = Vec::new();
    parser.feed(Send, 1, GET, &mut out);
    parser.gap(Send, 10, &mut out);
    parser.feed(Send, 2, b"after", &mut out);
    parser.feed(Recv, 3, OK, &mut out);
    parser.finish("closed", &mut out);
    assert_eq!(errors(&out).len(), 1);
    let ex = exchanges(&out);
    assert_eq!(ex.len(), 1);
    assert!(ex[0].incomplete.as_deref().is_some_and(|r| r.starts_with("parse error")));
    assert_eq!(unclaimed(&out, Send), vec![(GET.len() as u64 + 10, b"after".to_vec())]);
    assert_eq!(unclaimed(&out, Recv), vec![(0, OK.to_vec())]);
}

#[test]
fn http1_unanswered_request_is_incomplete_at_finish() {
    let out = run(&[(Send, GET), (Send, b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")]);
    let ex = exchanges(&out);
    assert_eq!(ex.len(), 2);
    assert!(ex.iter().all(|e| e.incomplete.as_deref() == Some("closed") && e.response.is_none()));
    assert_eq!(ex[1].request.as_ref().expect("req").body.size, 3);
}

#[test]
fn http1_response_without_request_when_joined_mid_way() {
    let ex = exchanges(&run(&[(Recv, OK), (Send, GET), (Recv, OK)]));
    assert_eq!(ex.len(), 2);
    assert!(ex[0].request.is_none() && ex[0].response.is_some() && ex[0].incomplete.is_none());
    assert!(ex[1].request.is_some() && ex[1].response.is_some());
}

#[test]
fn http1_malformed_input_gives_up_once_and_keeps_the_bytes() {
    let bad = b"GET / HTTP/1.1\r\nHost h\r\n\r\n";
    let out = run(&[(Send, bad), (Send, b"more"), (Recv, OK)]);
    assert_eq!(errors(&out).len(), 1, "{out:?}");
    let mut all = bad.to_vec();
    all.extend_from_slice(b"more");
    assert_eq!(unclaimed(&out, Send), vec![(0, all)]);
    assert_eq!(unclaimed(&out, Recv), vec![(0, OK.to_vec())]);
}

#[test]
fn http1_limits_on_headers_and_chunks() {
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..http1::MAX_HEADERS + 1 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(errors(&run(&[(Send, &many)])).len(), 1);

    let mut long = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', http1::MAX_HEAD_BYTES + 10));
    let out = run(&[(Send, &long)]);
    assert_eq!(errors(&out).len(), 1);
    assert_eq!(unclaimed(&out, Send), vec![(0, long.clone())]);

    for resp in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    ] {
        let out = run(&[(Send, GET), (Recv, resp)]);
        assert_eq!(errors(&out).len(), 1, "{}", String::from_utf8_lossy(resp));
    }
    let mut endless_size = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1".to_vec();
    endless_size.extend(std::iter::repeat_n(b';', http1::MAX_CHUNK_LINE + 1));
    assert_eq!(errors(&run(&[(Send, GET), (Recv, &endless_size)])).len(), 1);
}

/// An HTTP/1 conversation touching most paths, as causal steps.
fn http1_conversation() -> Vec<(Direction, Vec<u8>)> {
    let mut pipelined = numbered_get(1);
    pipelined
        .extend_from_slice(b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\n\r\n");
    pipelined.extend_from_slice(b"HEAD /h HTTP/1.1\r\n\r\n");
    let mut answers = CHUNKED.to_vec();
    answers.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
    answers.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n");
    vec![
        (Send, GET.to_vec()),
        (Recv, OK.to_vec()),
        (Send, pipelined),
        (Recv, answers),
        (Send, b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec()),
        (Recv, b"HTTP/1.1 200 OK\r\n\r\nuntil close".to_vec()),
    ]
}

#[test]
fn http1_conversation_parses_fully() {
    let steps = http1_conversation();
    let refs: Vec<(Direction, &[u8])> = steps.iter().map(|(d, b)| (*d, b.as_slice())).collect();
    let out = run(&refs);
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    let ex = exchanges(&out);
    let paths: Vec<&str> = ex.iter().map(|e| e.request.as_ref().expect("req").path.as_str()).collect();
    assert_eq!(paths, ["/items?id=7", "/r/1", "/c", "/h", "/last"]);
    assert!(ex.iter().all(|e| e.incomplete.is_none()), "{ex:?}");
    assert_eq!(body_text(&ex[4].response.as_ref().expect("resp").body), "until close");
}

// ---------------------------------------------------------------- splits

/// Feeds `steps` cut at `cuts` (positions in each step), interleaving the
/// two directions as `picks` says but never feeding a step before the other
/// direction's earlier steps (a response before its request).
fn run_split(steps: &[(Direction, Vec<u8>)], cuts: &[Vec<usize>], picks: &[bool]) -> Vec<Parsed> {
    // Pieces per direction, each tagged with its step.
    let mut pieces: [Vec<(usize, Vec<u8>)>; 2] = [Vec::new(), Vec::new()];
    for (i, (dir, bytes)) in steps.iter().enumerate() {
        let mut points: Vec<usize> =
            cuts.get(i).map(|c| c.iter().map(|p| p % (bytes.len() + 1)).collect()).unwrap_or_default();
        points.extend([0, bytes.len()]);
        points.sort_unstable();
        points.dedup();
        for w in points.windows(2) {
            pieces[*dir as usize].push((i, bytes[w[0]..w[1]].to_vec()));
        }
    }
    let mut next = [0usize, 0usize];
    let mut parser = ConnectionParser::new(opts());
    let mut out = Vec::new();
    let mut pick = picks.iter().cycle();
    loop {
        let ready = |d: usize, next: &[usize; 2]| {
            let Some((step, _)) = pieces[d].get(next[d]) else {
                return false;
            };
            // Every earlier step of the other direction is fed.
            let other = 1 - d;
            pieces[other].get(next[other]).is_none_or(|(s, _)| s > step)
        };
        let want = usize::from(*pick.next().unwrap_or(&false));
        let d = if ready(want, &next) {
            want
        } else if ready(1 - want, &next) {
            1 - want
        } else {
            break;
        };
        let (step, bytes) = &pieces[d][next[d]];
        parser.feed(steps[*step].0, ts(*step), bytes, &mut out);
        next[d] += 1;
    }
    parser.finish("closed", &mut out);
    out
}

/// Results that must not depend on how bytes were cut: exchanges (by
/// stream id for HTTP/2, whose streams finish in any order), errors, and
/// unclaimed bytes joined per direction.
type Runs = Vec<(u64, Vec<u8>)>;

fn normalized(out: &[Parsed]) -> (Vec<Exchange>, Vec<String>, Runs, Runs) {
    let mut ex = exchanges(out);
    ex.sort_by_key(|e| e.stream_id);
    (ex, errors(out), unclaimed(out, Send), unclaimed(out, Recv))
}

fn whole(steps: &[(Direction, Vec<u8>)]) -> Vec<Parsed> {
    let refs: Vec<(Direction, &[u8])> = steps.iter().map(|(d, b)| (*d, b.as_slice())).collect();
    run(&refs)
}

#[test]
fn http1_every_single_split_point_gives_the_same_result() {
    let steps = http1_conversation();
    let expected = normalized(&whole(&steps));
    for i in 0..steps.len() {
        for cut in 0..=steps[i].1.len() {
            let mut cuts = vec![Vec::new(); steps.len()];
            cuts[i] = vec![cut];
            assert_eq!(normalized(&run_split(&steps, &cuts, &[false])), expected, "step {i} cut {cut}");
        }
    }
}

#[test]
fn http2_every_single_split_point_gives_the_same_result() {
    let steps = h2_conversation();
    let expected = normalized(&whole(&steps));
    assert_eq!(expected.0.len(), 3);
    for i in 0..steps.len() {
        for cut in 0..=steps[i].1.len() {
            let mut cuts = vec![Vec::new(); steps.len()];
            cuts[i] = vec![cut];
            assert_eq!(normalized(&run_split(&steps, &cuts, &[true])), expected, "step {i} cut {cut}");
        }
    }
}

fn cuts_strategy() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<bool>)> {
    (
        proptest::collection::vec(proptest::collection::vec(0usize..4096, 0..12), 8),
        proptest::collection::vec(any::<bool>(), 1..32),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn http1_any_cuts_and_interleaving_give_the_same_result((cuts, picks) in cuts_strategy()) {
        let steps = http1_conversation();
        prop_assert_eq!(normalized(&run_split(&steps, &cuts, &picks)), normalized(&whole(&steps)));
    }

    #[test]
    fn http2_any_cuts_and_interleaving_give_the_same_result((cuts, picks) in cuts_strategy()) {
        let steps = h2_conversation();
        prop_assert_eq!(normalized(&run_split(&steps, &cuts, &picks)), normalized(&whole(&steps)));
    }

    #[test]
    fn http2_fixture_any_cuts_give_the_same_result((cuts, picks) in cuts_strategy()) {
        let steps = fixture_steps();
        prop_assert_eq!(normalized(&run_split(&steps, &cuts, &picks)), normalized(&whole(&steps)));
    }

    #[test]
    fn hostile_bytes_never_panic(chunks in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..200)), 0..12), prefix in 0usize..4) {
        let mut parser = ConnectionParser::new(opts());
        let mut out = Vec::new();
        // Start like a real protocol sometimes, so the parsers get the junk.
        let starts: [&[u8]; 4] = [b"", GET, H2_PREFACE, b"HTTP/1.1 200 OK\r\n"];
        parser.feed(Send, 0, starts[prefix], &mut out);
        let mut fed = [starts[prefix].len() as u64, 0];
        for (send, data) in &chunks {
            let dir = if *send { Send } else { Recv };
            parser.feed(dir, 1, data, &mut out);
            fed[dir as usize] += data.len() as u64;
        }
        parser.finish("closed", &mut out);
        prop_assert!(errors(&out).len() <= 1 + chunks.len() * 4);
        // Unclaimed runs never overlap and stay within what was fed.
        for dir in [Send, Recv] {
            for (offset, data) in unclaimed(&out, dir) {
                prop_assert!(offset + data.len() as u64 <= fed[dir as usize]);
            }
        }
    }
}

// ---------------------------------------------------------------- HTTP/2

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn settings() -> Vec<u8> {
    h2_frame(4, 0, 0, &[0, 3, 0, 0, 0, 100])
}

/// HPACK literals without indexing, new names (no table state).
fn hpack_literal(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0);
        out.extend(hpack::tests::int(7, 0, name.len()));
        out.extend_from_slice(name.as_bytes());
        out.extend(hpack::tests::int(7, 0, value.len()));
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn headers_frame(stream: u32, end_stream: bool, headers: &[(&str, &str)]) -> Vec<u8> {
    h2_frame(1, 0x4 | u8::from(end_stream), stream, &hpack_literal(headers))
}

fn data_frame(stream: u32, end_stream: bool, data: &[u8]) -> Vec<u8> {
    h2_frame(0, u8::from(end_stream), stream, data)
}

fn grpc_msg(payload: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(payload);
    m
}

/// Three streams: a GET, a padded POST with priority and CONTINUATION, a
/// gRPC call with trailers; plus frames that must be tolerated.
fn h2_conversation() -> Vec<(Direction, Vec<u8>)> {
    let mut client = H2_PREFACE.to_vec();
    client.extend(settings());
    client.extend(h2_frame(8, 0, 0, &[0, 1, 0, 0]));
    client.extend(headers_frame(
        1,
        true,
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/a"),
            (":authority", "h"),
            ("authorization", "Bearer x"),
        ],
    ));
    // HEADERS with PADDED|PRIORITY, no END_HEADERS, then CONTINUATION.
    let block = hpack_literal(&[(":method", "POST"), (":path", "/b"), ("x-id", "b")]);
    let (first, rest) = block.split_at(7);
    let mut payload = vec![3];
    payload.extend_from_slice(&[0, 0, 0, 1, 16]);
    payload.extend_from_slice(first);
    payload.extend_from_slice(&[0, 0, 0]);
    client.extend(h2_frame(1, 0x8 | 0x20, 3, &payload));
    client.extend(h2_frame(9, 0x4, 3, rest));
    let mut padded = vec![4];
    padded.extend_from_slice(b"post body");
    padded.extend_from_slice(&[0; 4]);
    client.extend(h2_frame(0, 0x8 | 0x1, 3, &padded));
    client.extend(headers_frame(
        5,
        false,
        &[(":method", "POST"), (":path", "/pkg.Svc/Do"), ("content-type", "application/grpc")],
    ));
    let messages = [grpc_msg(b"one"), grpc_msg(b"two!")].concat();
    client.extend(data_frame(5, false, &messages[..6]));
    client.extend(h2_frame(0xfa, 0xff, 5, b"unknown frame type"));
    client.extend(data_frame(5, true, &messages[6..]));

    let mut server = settings();
    server.extend(h2_frame(4, 1, 0, &[]));
    server.extend(h2_frame(6, 0, 0, &[0; 8]));
    server.extend(headers_frame(3, false, &[(":status", "100")]));
    server.extend(headers_frame(1, false, &[(":status", "200"), ("set-cookie", "s=1")]));
    server.extend(headers_frame(3, false, &[(":status", "201")]));
    server.extend(data_frame(1, true, b"answer a"));
    server.extend(data_frame(3, true, b"answer b"));
    server.extend(h2_frame(2, 0, 3, &[0, 0, 0, 0, 5]));
    server.extend(headers_frame(5, false, &[(":status", "200"), ("content-type", "application/grpc")]));
    server.extend(data_frame(5, false, &grpc_msg(b"result")));
    server.extend(headers_frame(5, true, &[("grpc-status", "3"), ("grpc-message", "bad%20arg")]));
    server.extend(h2_frame(7, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0]));
    vec![(Send, client), (Recv, server)]
}

#[test]
fn http2_conversation_parses_fully() {
    let out = whole(&h2_conversation());
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    let mut ex = exchanges(&out);
    ex.sort_by_key(|e| e.stream_id);
    assert_eq!(ex.len(), 3);

    let a = &ex[0];
    assert_eq!((a.stream_id, a.protocol, a.incomplete.as_deref()), (Some(1), Protocol::Http2, None));
    let req = a.request.as_ref().expect("req");
    assert_eq!(
        (req.method.as_str(), req.path.as_str(), req.authority.as_deref(), req.version.as_str()),
        ("GET", "/a", Some("h"), "HTTP/2")
    );
    assert_eq!(header(&req.headers, ":scheme"), Some("https"));
    assert_eq!(header(&req.headers, "authorization"), Some("<redacted>"));
    let resp = a.response.as_ref().expect("resp");
    assert_eq!(resp.status, 200);
    assert_eq!(header(&resp.headers, "set-cookie"), Some("<redacted>"));
    assert_eq!(body_text(&resp.body), "answer a");
    assert_eq!(a.latency_us, Some((ts(1) - ts(0)) / 1000));

    let b = &ex[1];
    assert_eq!(b.incomplete, None);
    let req = b.request.as_ref().expect("req");
    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/b"));
    assert_eq!(header(&req.headers, "x-id"), Some("b"));
    assert_eq!(body_text(&req.body), "post body");
    assert_eq!(req.body.size, 9);
    let resp = b.response.as_ref().expect("resp");
    assert_eq!(resp.status, 201, "the interim 100 does not count");
    assert_eq!(body_text(&resp.body), "answer b");

    let c = &ex[2];
    assert_eq!(c.protocol, Protocol::Grpc);
    assert_eq!(c.incomplete, None);
    let grpc = c.grpc.as_ref().expect("grpc");
    assert_eq!((grpc.service.as_str(), grpc.method.as_str()), ("pkg.Svc", "Do"));
    assert_eq!((grpc.request_messages, grpc.request_sizes.as_slice()), (2, &[3, 4][..]));
    assert_eq!((grpc.response_messages, grpc.response_sizes.as_slice()), (1, &[6][..]));
    assert_eq!((grpc.status, grpc.message.as_deref()), (Some(3), Some("bad arg")));
    assert_eq!(header(&c.response.as_ref().expect("resp").trailers, "grpc-status"), Some("3"));
}

#[test]
fn http2_as_server_with_settings_first() {
    // The spied process is the server: it writes SETTINGS before it reads
    // the preface; its Recv carries the requests.
    let mut server = settings();
    let mut client = H2_PREFACE.to_vec();
    client.extend(settings());
    client.extend(headers_frame(1, true, &[(":method", "GET"), (":path", "/s")]));
    server.extend(headers_frame(1, true, &[(":status", "404")]));
    let out = run(&[(Send, &settings()), (Recv, &client), (Send, &server[settings().len()..])]);
    let ex = exchanges(&out);
    assert_eq!(ex.len(), 1, "{out:?}");
    assert_eq!(ex[0].request.as_ref().expect("req").path, "/s");
    assert_eq!(ex[0].response.as_ref().expect("resp").status, 404);
    assert_eq!(ex[0].incomplete, None);
}

#[test]
fn http2_fifty_interleaved_streams_keep_their_ids() {
    let mut client = H2_PREFACE.to_vec();
    client.extend(settings());
    let ids: Vec<u32> = (0..50).map(|i| 1 + 2 * i).collect();
    // Headers for all streams first, then bodies in round-robin pieces.
    for &id in &ids {
        client.extend(headers_frame(
            id,
            false,
            &[(":method", "POST"), (":path", "/echo"), ("x-request-id", &format!("req-{id}"))],
        ));
    }
    for piece in 0..3 {
        for &id in &ids {
            let text = format!("[{id}:{piece}]");
            client.extend(data_frame(id, piece == 2, text.as_bytes()));
        }
    }
    let mut server = settings();
    for &id in ids.iter().rev() {
        server.extend(headers_frame(id, false, &[(":status", "200"), ("x-request-id", &format!("req-{id}"))]));
    }
    for piece in 0..2 {
        for &id in ids.iter().rev() {
            server.extend(data_frame(id, piece == 1, format!("echo req-{id} part {piece};").as_bytes()));
        }
    }
    let out = run(&[(Send, &client), (Recv, &server)]);
    assert!(errors(&out).is_empty());
    let ex = exchanges(&out);
    assert_eq!(ex.len(), 50);
    for e in &ex {
        let id = e.stream_id.expect("stream id");
        let req = e.request.as_ref().expect("req");
        let resp = e.response.as_ref().expect("resp");
        assert_eq!(header(&req.headers, "x-request-id"), Some(format!("req-{id}").as_str()));
        assert_eq!(body_text(&req.body), format!("[{id}:0][{id}:1][{id}:2]"));
        assert_eq!(header(&resp.headers, "x-request-id"), Some(format!("req-{id}").as_str()));
        assert_eq!(body_text(&resp.body), format!("echo req-{id} part 0;echo req-{id} part 1;"));
        assert_eq!(e.incomplete, None);
    }
}

#[test]
fn http2_joined_mid_way_marks_unknown_headers_and_goes_on() {
    // No preface, no SETTINGS: HEADERS indexing dynamic entries 62 and 63
    // that were inserted before we attached.
    let mut req_block = vec![0x83, 0x84, 0xbe]; // :method POST, :path /, idx 62
    req_block.extend_from_slice(&[0x7f, 0x00, 3]); // indexed name 63, value…
    req_block.extend_from_slice(b"abc"); // …and inserted
    let mut client = h2_frame(1, 0x4, 7, &req_block);
    client.extend(data_frame(7, true, b"x"));
    client.extend(h2_frame(1, 0x5, 9, &[0x82, 0x84, 0xbe])); // idx 62 is now "abc"
    let mut server = h2_frame(1, 0x4, 7, &[0x88, 0xbf]);
    server.extend(data_frame(7, true, b"y"));
    server.extend(h2_frame(1, 0x5, 9, &[0x88]));
    // A DATA frame for a stream whose headers went by before we attached.
    server.extend(data_frame(5, true, b"tail of an older response"));
    let out = run(&[(Send, &client), (Recv, &server)]);
    assert!(errors(&out).is_empty(), "{out:?}");
    let mut ex = exchanges(&out);
    ex.sort_by_key(|e| e.stream_id);
    assert_eq!(ex.len(), 3);
    let old = &ex[0];
    assert_eq!(old.stream_id, Some(5));
    assert!(old.request.is_none());
    assert_eq!(body_text(&old.response.as_ref().expect("resp").body), "tail of an older response");
    assert_eq!(old.incomplete.as_deref(), Some("headers not seen (joined mid-stream)"));

    let first = &ex[1];
    let req = first.request.as_ref().expect("req");
    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/"));
    assert_eq!(req.headers.len(), 2);
    assert!(req.headers[0].unknown && req.headers[0].name.is_empty() && !req.headers[0].redacted);
    assert!(req.headers[1].unknown && req.headers[1].redacted, "a value under an unknown name may be a secret");
    let resp = first.response.as_ref().expect("resp");
    assert_eq!(resp.status, 200);
    assert!(resp.headers[0].unknown);
    assert_eq!(first.incomplete, None);

    let second = &ex[2];
    let req = second.request.as_ref().expect("req");
    assert!(req.headers[0].unknown && req.headers[0].redacted, "name still unknown, value known");
    assert_eq!(second.response.as_ref().expect("resp").status, 200);
}

#[test]
fn http2_reset_stream_is_incomplete() {
    let mut client = H2_PREFACE.to_vec();
    client.extend(headers_frame(1, false, &[(":method", "POST"), (":path", "/r")]));
    client.extend(data_frame(1, false, b"partial"));
    client.extend(h2_frame(3, 0, 1, &8u32.to_be_bytes()));
    client.extend(h2_frame(8, 0, 1, &[0, 0, 1, 0])); // late WINDOW_UPDATE
    client.extend(data_frame(1, true, b"late")); // racing the reset
    let out = run(&[(Send, &client)]);
    let ex = exchanges(&out);
    assert_eq!(ex.len(), 1, "{out:?}");
    assert_eq!(ex[0].incomplete.as_deref(), Some("stream reset (CANCEL)"));
    assert_eq!(body_text(&ex[0].request.as_ref().expect("req").body), "partial");
    assert!(ex[0].response.is_none());
}

#[test]
fn http2_grpc_trailers_only_response() {
    let mut client = H2_PREFACE.to_vec();
    client.extend(headers_frame(
        1,
        false,
        &[(":method", "POST"), (":path", "/a.B/C"), ("content-type", "application/grpc+proto")],
    ));
    client.extend(data_frame(1, true, &grpc_msg(b"")));
    let server = headers_frame(
        1,
        true,
        &[
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", "12"),
            ("grpc-message", "unimplemented"),
        ],
    );
    let ex = exchanges(&run(&[(Send, &client), (Recv, &server)]));
    let grpc = ex[0].grpc.as_ref().expect("grpc");
    assert_eq!((grpc.status, grpc.message.as_deref()), (Some(12), Some("unimplemented")));
    assert_eq!((grpc.request_messages, grpc.response_messages), (1, 0));
}

#[test]
fn http2_gap_inside_data_is_stepped_over() {
    let mut parser = ConnectionParser::new(opts());
    let mut out = Vec::new();
    let mut client = H2_PREFACE.to_vec();
    client.extend(headers_frame(1, false, &[(":method", "PUT"), (":path", "/big")]));
    let big = data_frame(1, true, &vec![b'z'; 1000]);
    client.extend_from_slice(&big[..100]);
    parser.feed(Send, 1, &client, &mut out);
    parser.gap(Send, 800, &mut out);
    parser.feed(Send, 2, &big[900..], &mut out);
    parser.feed(Recv, 3, &headers_frame(1, true, &[(":status", "204")]), &mut out);
    parser.finish("closed", &mut out);
    assert!(errors(&out).is_empty(), "{out:?}");
    let ex = exchanges(&out);
    let body = &ex[0].request.as_ref().expect("req").body;
    assert_eq!(body.size, 1000);
    assert!(body.truncated);
    assert_eq!(ex[0].incomplete, None);
}

#[test]
fn http2_sixteen_megabyte_header_block_is_capped() {
    let mut parser = ConnectionParser::new(opts());
    let mut out = Vec::new();
    parser.feed(Send, 1, H2_PREFACE, &mut out);
    // A HEADERS frame claiming 16 MB, and as much CONTINUATION as one likes.
    let len = (1u32 << 24) - 1;
    let mut head = len.to_be_bytes()[1..].to_vec();
    head.extend_from_slice(&[1, 0, 0, 0, 0, 1]);
    parser.feed(Send, 2, &head, &mut out);
    let junk = vec![0x40; 64 * 1024];
    let mut sent = 0usize;
    while sent + junk.len() <= len as usize {
        parser.feed(Send, 3, &junk, &mut out);
        sent += junk.len();
    }
    parser.feed(Send, 3, &junk[..len as usize - sent], &mut out);
    for _ in 0..8 {
        let mut cont = h2_frame(9, 0, 1, &[]);
        cont[..3].copy_from_slice(&len.to_be_bytes()[1..]);
        parser.feed(Send, 4, &cont, &mut out);
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(junk.len());
            parser.feed(Send, 4, &junk[..n], &mut out);
            left -= n;
        }
    }
    parser.feed(Send, 5, &h2_frame(9, 0x4, 1, &[]), &mut out);
    // The connection goes on: the next stream decodes.
    parser.feed(Send, 6, &headers_frame(3, true, &[(":method", "GET"), (":path", "/next")]), &mut out);
    parser.feed(Recv, 7, &headers_frame(3, true, &[(":status", "200")]), &mut out);
    if let State::Http2(h2) = &parser.state {
        assert!(format!("{h2:?}").len() < 100_000, "state stays small");
    }
    parser.finish("closed", &mut out);
    let errs = errors(&out);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("header block over"), "{errs:?}");
    let ex = exchanges(&out);
    assert!(ex.iter().any(|e| e.stream_id == Some(3) && e.incomplete.is_none()), "{ex:?}");
}

#[test]
fn http2_a_data_frame_claiming_16_mb_is_counted_not_kept() {
    let options = ParseOptions { max_body: 100, ..opts() };
    let mut parser = ConnectionParser::new(options);
    let mut out = Vec::new();
    let mut client = H2_PREFACE.to_vec();
    client.extend(headers_frame(1, false, &[(":method", "PUT"), (":path", "/")]));
    parser.feed(Send, 1, &client, &mut out);
    let len = (1u32 << 24) - 1;
    let mut head = data_frame(1, true, &[]);
    head[..3].copy_from_slice(&len.to_be_bytes()[1..]);
    parser.feed(Send, 2, &head, &mut out);
    let piece = vec![1u8; MB];
    for _ in 0..15 {
        parser.feed(Send, 3, &piece, &mut out);
    }
    parser.feed(Send, 3, &piece[..MB - 1], &mut out);
    parser.feed(Recv, 4, &headers_frame(1, true, &[(":status", "200")]), &mut out);
    parser.finish("closed", &mut out);
    let ex = exchanges(&out);
    let body = &ex[0].request.as_ref().expect("req").body;
    assert_eq!(body.size, u64::from(len));
    assert_eq!(body.data.as_ref().map(|d| d.to_bytes().len()), Some(100));
    assert_eq!(ex[0].incomplete, None);
}

#[test]
fn http2_bad_framing_gives_up_once_and_passes_through() {
    for bad in [
        h2_frame(0, 0, 0, b"data on stream 0"),
        h2_frame(0, 0x8, 1, &[200, 1, 2]), // padding longer than the frame
        h2_frame(9, 0x4, 1, &[0x82]),      // CONTINUATION out of nowhere
        h2_frame(3, 0, 1, &[0, 0]),        // short RST_STREAM
        [h2_frame(1, 0, 1, &[0x82]), h2_frame(0, 0, 1, b"x")].concat(), // block not continued
    ] {
        let mut client = H2_PREFACE.to_vec();
        client.extend(headers_frame(1, false, &[(":method", "GET"), (":path", "/")]));
        let before = client.len();
        client.extend_from_slice(&bad);
        let out = run(&[(Send, &client), (Send, b"after")]);
        assert_eq!(errors(&out).len(), 1, "{bad:?}: {out:?}");
        let ex = exchanges(&out);
        assert_eq!(ex.len(), 1);
        assert!(ex[0].incomplete.as_deref().is_some_and(|r| r.starts_with("parse error")));
        let runs = unclaimed(&out, Send);
        assert_eq!(runs.last().map(|(o, d)| o + d.len() as u64), Some(client.len() as u64 + 5));
        assert!(runs[0].0 >= before as u64 - 9);
    }
}

#[test]
fn http2_bad_hpack_drops_the_stream_not_the_connection() {
    let mut client = H2_PREFACE.to_vec();
    client.extend(h2_frame(1, 0x5, 1, &[0x80])); // index 0
    client.extend(headers_frame(3, true, &[(":method", "GET"), (":path", "/ok")]));
    let server = headers_frame(3, true, &[(":status", "200")]);
    let out = run(&[(Send, &client), (Recv, &server)]);
    assert_eq!(errors(&out).len(), 1);
    let mut ex = exchanges(&out);
    ex.sort_by_key(|e| e.stream_id);
    assert_eq!(ex.len(), 1, "the bad stream had nothing to show: {ex:?}");
    assert_eq!(ex[0].stream_id, Some(3));
    assert_eq!(ex[0].incomplete, None);
}

#[test]
fn http2_too_many_streams_emits_the_oldest() {
    let mut client = H2_PREFACE.to_vec();
    for i in 0..(http2::MAX_STREAMS as u32 + 3) {
        client.extend(headers_frame(1 + 2 * i, false, &[(":method", "GET"), (":path", "/")]));
    }
    let mut parser = ConnectionParser::new(opts());
    let mut out = Vec::new();
    parser.feed(Send, 1, &client, &mut out);
    let ex = exchanges(&out);
    assert_eq!(ex.len(), 3);
    assert_eq!(ex[0].stream_id, Some(1));
    assert!(ex[0].incomplete.as_deref().is_some_and(|r| r.contains("open streams")));
}

fn fixture_steps() -> Vec<(Direction, Vec<u8>)> {
    let client = include_bytes!("../../tests/fixtures/h2_client.bin").to_vec();
    let server = include_bytes!("../../tests/fixtures/h2_server.bin").to_vec();
    vec![(Send, client), (Recv, server)]
}

/// A conversation written by python's h2 (Huffman, dynamic table, gzip).
#[test]
fn http2_real_fixture_from_python_h2() {
    let out = whole(&fixture_steps());
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    let mut ex = exchanges(&out);
    ex.sort_by_key(|e| e.stream_id);
    assert_eq!(ex.len(), 3);
    for e in &ex {
        let req = e.request.as_ref().expect("req");
        assert_eq!(req.authority.as_deref(), Some("api.example.com"));
        assert_eq!(header(&req.headers, "user-agent"), Some("fixture/1.0"));
        assert_eq!(header(&req.headers, "authorization"), Some("<redacted>"));
        assert!(req.headers.iter().all(|h| !h.unknown));
        assert_eq!(e.incomplete, None);
    }
    assert_eq!(ex[0].request.as_ref().expect("req").path, "/v1/items?id=1");
    let body = &ex[0].response.as_ref().expect("resp").body;
    assert!(body.decoded);
    assert_eq!(body_text(body), r#"{"items":[1,2,3]}"#);
    assert_eq!(header(&ex[0].response.as_ref().expect("resp").headers, "set-cookie"), Some("<redacted>"));

    let post = &ex[1];
    assert_eq!(post.request.as_ref().expect("req").method, "POST");
    assert_eq!(body_text(&post.request.as_ref().expect("req").body), r#"{"name":"widget"}"#);
    assert_eq!(post.response.as_ref().expect("resp").status, 201);
    assert_eq!(header(&post.response.as_ref().expect("resp").headers, "location"), Some("/v1/items/4"));

    let call = &ex[2];
    assert_eq!(call.protocol, Protocol::Grpc);
    let grpc = call.grpc.as_ref().expect("grpc");
    assert_eq!((grpc.service.as_str(), grpc.method.as_str()), ("helloworld.Greeter", "SayHello"));
    assert_eq!(grpc.request_sizes, [7, 5]);
    assert_eq!(grpc.response_sizes, [13]);
    assert_eq!((grpc.status, grpc.message.as_deref()), (Some(0), Some("all good")));
}

#[test]
fn http2_fixture_fed_from_the_server_side() {
    let [(_, client), (_, server)]: [(Direction, Vec<u8>); 2] = fixture_steps().try_into().expect("two steps");
    let as_server = exchanges(&run(&[(Recv, &client), (Send, &server)]));
    let as_client = exchanges(&whole(&fixture_steps()));
    assert_eq!(as_server.len(), 3);
    let paths = |ex: &[Exchange]| ex.iter().map(|e| e.request.as_ref().map(|r| r.path.clone())).collect::<Vec<_>>();
    assert_eq!(paths(&as_server), paths(&as_client));
}

// ---------------------------------------------------------------- secrets

const LOGIN: &[u8] = b"POST /cb?code=c0de&state=s HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 33\r\n\r\n{\"user\":\"u\",\"password\":\"hunt3r\"}";
const REDIRECT: &[u8] = b"HTTP/1.1 302 Found\r\nLocation: /next?access_token=t0ken&x=1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 24\r\n\r\na=1&client_secret=s3cr3t";

/// Query strings, URL headers and body fields go the way headers go:
/// redacted unless --show-secrets.
#[test]
fn http1_query_location_and_body_secrets_are_redacted_unless_asked() {
    for show_secrets in [false, true] {
        let ex = exchanges(&run_with(ParseOptions { show_secrets, ..opts() }, &[(Send, LOGIN), (Recv, REDIRECT)]));
        let text = format!("{ex:?}");
        for secret in ["c0de", "hunt3r", "t0ken", "s3cr3t"] {
            assert_eq!(text.contains(secret), show_secrets, "{secret} with show_secrets={show_secrets}: {text}");
        }
        let req = ex[0].request.as_ref().expect("request");
        if !show_secrets {
            assert_eq!(req.path, "/cb?code=<redacted>&state=s");
            assert_eq!(body_text(&req.body), "{\"user\":\"u\",\"password\":\"<redacted>\"}");
            let resp = ex[0].response.as_ref().expect("response");
            assert_eq!(header(&resp.headers, "location"), Some("/next?access_token=<redacted>&x=1"));
            assert_eq!(body_text(&resp.body), "a=1&client_secret=<redacted>");
        }
    }
}

/// A field the sender marked never-indexed (HPACK §6.2.3) is redacted
/// whatever its name; gRPC metadata named like a secret and a query
/// parameter in :path are too.
#[test]
fn http2_never_indexed_fields_grpc_metadata_and_path_queries_are_redacted() {
    let mut block = hpack_literal(&[
        (":method", "POST"),
        (":path", "/pkg.Svc/Call?sig=s1g"),
        ("content-type", "application/grpc"),
        ("x-refresh-token", "gRPCm3ta"),
    ]);
    // Never indexed, new name: 0001 0000.
    block.push(0x10);
    block.extend(hpack::tests::int(7, 0, "x-plain".len()));
    block.extend_from_slice(b"x-plain");
    block.extend(hpack::tests::int(7, 0, "n3verIdx".len()));
    block.extend_from_slice(b"n3verIdx");
    let mut client = H2_PREFACE.to_vec();
    client.extend(settings());
    client.extend(h2_frame(1, 0x4, 1, &block));
    client.extend(data_frame(1, true, &grpc_msg(b"hi")));
    let mut server = settings();
    server.extend(headers_frame(1, false, &[(":status", "200"), ("content-type", "application/grpc")]));
    server.extend(headers_frame(1, true, &[("grpc-status", "0")]));
    for show_secrets in [false, true] {
        let out = run_with(ParseOptions { show_secrets, ..opts() }, &[(Send, &client), (Recv, &server)]);
        let ex = exchanges(&out);
        assert_eq!(ex.len(), 1, "{out:?}");
        let req = ex[0].request.as_ref().expect("request");
        let text = format!("{ex:?}");
        for secret in ["s1g", "gRPCm3ta", "n3verIdx"] {
            assert_eq!(text.contains(secret), show_secrets, "{secret} with show_secrets={show_secrets}: {text}");
        }
        assert_eq!(
            ex[0].grpc.as_ref().map(|g| g.method.as_str()),
            Some(if show_secrets { "Call?sig=s1g" } else { "Call?sig=<redacted>" })
        );
        assert_eq!(header(&req.headers, "x-plain").is_some_and(|v| v == "<redacted>"), !show_secrets);
    }
}
