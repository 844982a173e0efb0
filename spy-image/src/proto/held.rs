//! How much memory parser state holds: the estimate the agent's memory
//! budget counts per connection (`conn::budget`).
//!
//! An estimate, not an allocator's count: each value is its own size plus
//! the capacity of what it owns on the heap. It leaves out allocator
//! rounding and the maps' spare slots; the budget's slack and the agent's
//! fixed overhead cover those. Each parser type adds its part next to its
//! own fields (`held_bytes` in http1, http2, hpack, body); the record types
//! that parsers fill are counted here.

use std::mem::size_of;

use spy_protocol::record::{Body, Header, Payload, Request, Response};

pub(crate) fn opt_string(s: &Option<String>) -> usize {
    s.as_ref().map_or(0, |s| s.capacity())
}

pub(crate) fn headers(headers: &Vec<Header>) -> usize {
    headers.capacity() * size_of::<Header>()
        + headers.iter().map(|h| h.name.capacity() + h.value.capacity()).sum::<usize>()
}

pub(crate) fn payload(payload: &Option<Payload>) -> usize {
    match payload {
        Some(Payload::Text(s) | Payload::Base64(s)) => s.capacity(),
        None => 0,
    }
}

/// A body already in record form (the owned parts only).
pub(crate) fn body(body: &Body) -> usize {
    payload(&body.data) + opt_string(&body.content_encoding)
}

pub(crate) fn request(request: &Request) -> usize {
    size_of::<Request>()
        + opt_string(&request.authority)
        + request.path.capacity()
        + request.method.capacity()
        + request.version.capacity()
        + headers(&request.headers)
        + body(&request.body)
}

pub(crate) fn response(response: &Response) -> usize {
    size_of::<Response>()
        + opt_string(&response.reason)
        + response.version.capacity()
        + headers(&response.headers)
        + headers(&response.trailers)
        + body(&response.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_counts_what_it_owns() {
        let small = request(&Request::default());
        let big = Request {
            path: "/".repeat(1000),
            headers: vec![Header { name: "x".repeat(100), value: "y".repeat(900), redacted: false, unknown: false }],
            ..Request::default()
        };
        assert!(request(&big) >= small + 2000, "{} vs {small}", request(&big));
    }
}
