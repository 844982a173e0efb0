//! Protocol parsers: a connection's two ordered byte streams in, exchanges out.
//!
//! Pure code, no I/O, nothing about pids or eBPF. The connection layer feeds
//! each direction's bytes in order; a parser answers with finished exchanges
//! and hands back whatever it does not claim, so nothing captured is dropped.
//!
//! A connection starts in detection: the first bytes of each direction say
//! HTTP/1.x (a request line or a status line), HTTP/2 (the client preface,
//! or a server's SETTINGS frame first, or a plausible frame when we joined
//! mid-way), or neither (then everything is passed through as
//! [`Parsed::Unclaimed`]). Either direction may carry the requests: the
//! spied process may be the client or the server.

#![forbid(unsafe_code)]

mod body;
mod grpc;
mod held;
mod hpack;
mod http1;
mod http2;
mod redact;
pub use redact::{Masked, RawMasker};
pub mod tls_handshake;

#[cfg(test)]
mod tests;

use spy_protocol::record::{Direction, Exchange};

pub use spy_protocol::DEFAULT_MAX_BODY;

/// Limits and choices that shape parsing.
#[derive(Clone, Debug)]
pub struct ParseOptions {
    /// Body bytes kept per message; the true size is always reported.
    pub max_body: usize,
    /// Keep Authorization, Cookie and similar header values.
    pub show_secrets: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions { max_body: DEFAULT_MAX_BODY, show_secrets: false }
    }
}

/// What parsing one connection produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// A request with its response. `conn` is left default: the caller fills it.
    Exchange(Box<Exchange>),
    /// Bytes no parser claimed, to be shown as a chunk.
    /// `offset` is where `data` starts in that direction's stream.
    Unclaimed { direction: Direction, ts_ns: u64, offset: u64, data: Vec<u8> },
    /// The parser gave up on a stream or on the connection (bad framing);
    /// counted in stats.
    Error { message: String },
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest HTTP method we recognise while detecting (longer tokens are not
/// taken for a request line).
const MAX_METHOD_LEN: usize = 24;

/// Which protocol a connection speaks, and which way its requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detected {
    /// Still too few bytes to tell.
    NeedMore,
    Http1 {
        requests: Direction,
    },
    /// `client`: the direction the client writes, when known.
    Http2 {
        client: Option<Direction>,
    },
    Unknown,
}

/// What a direction's first bytes look like.
fn classify(dir: Direction, first: &[u8]) -> Detected {
    if first.is_empty() {
        return Detected::NeedMore;
    }
    if first.starts_with(H2_PREFACE) {
        return Detected::Http2 { client: Some(dir) };
    }
    if H2_PREFACE.starts_with(first) {
        return Detected::NeedMore;
    }
    const STATUS_LINE: &[u8] = b"HTTP/1.";
    if first.starts_with(STATUS_LINE) {
        return Detected::Http1 { requests: dir.flip() };
    }
    if STATUS_LINE.starts_with(first) {
        return Detected::NeedMore;
    }
    let method_len = first.iter().take_while(|b| b.is_ascii_uppercase() || **b == b'-' || **b == b'_').count();
    if method_len > 0 && method_len <= MAX_METHOD_LEN {
        match first.get(method_len) {
            Some(b' ') => return Detected::Http1 { requests: dir },
            None => return Detected::NeedMore,
            Some(_) => {}
        }
    }
    match http2::plausible_first_frame(first) {
        Some(http2::FirstFrame::Settings) => Detected::Http2 { client: Some(dir.flip()) },
        Some(http2::FirstFrame::Other) => Detected::Http2 { client: None },
        None if first.len() < http2::FRAME_HEADER_LEN => Detected::NeedMore,
        None => Detected::Unknown,
    }
}

/// One direction's unconsumed bytes, where they sit in the stream, and when
/// they arrived. Parsers consume from the front.
#[derive(Debug, Default)]
pub(crate) struct Input {
    buf: Vec<u8>,
    pos: usize,
    /// Stream offset of the first unconsumed byte.
    offset: u64,
    /// Arrival time of the first unconsumed byte.
    front_ts: u64,
    /// Arrival time of the latest bytes.
    last_ts: u64,
}

impl Input {
    pub(crate) fn push(&mut self, ts: u64, data: &[u8]) {
        if self.is_empty() {
            self.buf.clear();
            self.pos = 0;
            self.front_ts = ts;
        }
        self.last_ts = ts;
        self.buf.extend_from_slice(data);
    }

    /// Bytes arrived at `ts` and were consumed without being pushed (the
    /// input is empty): the times move as [`Input::push`] then
    /// [`Input::consume`] would move them; the offset moves with [`Input::skip`].
    pub(crate) fn arrived(&mut self, ts: u64) {
        self.front_ts = ts;
        self.last_ts = ts;
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn consume(&mut self, n: usize) {
        let n = n.min(self.buf.len() - self.pos);
        self.pos += n;
        self.offset += n as u64;
        // Parsers consume only whole units, and what they leave is an
        // unfinished unit: after any progress, the rest arrived last.
        self.front_ts = self.last_ts;
        if self.is_empty() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 && self.pos > self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Bytes lost in capture: the stream offset moves on.
    pub(crate) fn skip(&mut self, len: u64) {
        self.offset = self.offset.saturating_add(len);
    }

    pub(crate) fn last_ts(&self) -> u64 {
        self.last_ts
    }

    pub(crate) fn front_ts(&self) -> u64 {
        self.front_ts
    }

    /// Hands every unconsumed byte back as unclaimed.
    pub(crate) fn flush(&mut self, direction: Direction, out: &mut Vec<Parsed>) {
        if !self.is_empty() {
            let data = self.buf[self.pos..].to_vec();
            out.push(Parsed::Unclaimed { direction, ts_ns: self.front_ts, offset: self.offset, data });
            let n = self.buf.len() - self.pos;
            self.consume(n);
        }
    }
}

/// What a protocol parser asks of the dispatcher after a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// The parser is done with this connection (it gave up, or the
    /// connection switched protocols) and has flushed what it held: pass
    /// the rest through.
    Passthrough,
}

#[derive(Debug)]
enum State {
    /// Chunks seen before the protocol is known, in arrival order.
    Detect(Vec<(Direction, u64, Vec<u8>)>),
    Http1(Box<http1::Http1>),
    Http2(Box<http2::Http2>),
    Passthrough,
}

/// Parses one connection. Created when the connection is first seen.
#[derive(Debug)]
pub struct ConnectionParser {
    options: ParseOptions,
    /// Bytes seen so far per direction: [send, recv].
    offsets: [u64; 2],
    state: State,
}

impl ConnectionParser {
    pub fn new(options: ParseOptions) -> Self {
        ConnectionParser { options, offsets: [0, 0], state: State::Detect(Vec::new()) }
    }

    /// Bytes that moved in `direction`, in order, at `ts_ns`.
    pub fn feed(&mut self, direction: Direction, ts_ns: u64, data: &[u8], out: &mut Vec<Parsed>) {
        if data.is_empty() {
            return;
        }
        let first = out.len();
        self.feed_inner(direction, ts_ns, data, out);
        self.redact(&mut out[first..]);
    }

    /// What every finished exchange goes through, whichever parser made
    /// it: query strings, URL headers and body fields (headers were
    /// redacted by name as they were parsed).
    fn redact(&self, items: &mut [Parsed]) {
        if self.options.show_secrets {
            return;
        }
        for item in items {
            if let Parsed::Exchange(x) = item {
                redact::exchange(x);
            }
        }
    }

    fn feed_inner(&mut self, direction: Direction, ts_ns: u64, data: &[u8], out: &mut Vec<Parsed>) {
        let offset = self.offsets[direction as usize];
        self.offsets[direction as usize] = offset.saturating_add(data.len() as u64);
        let flow = match &mut self.state {
            State::Passthrough => {
                out.push(Parsed::Unclaimed { direction, ts_ns, offset, data: data.to_vec() });
                Flow::Continue
            }
            State::Http1(p) => p.feed(direction, ts_ns, data, out),
            State::Http2(p) => p.feed(direction, ts_ns, data, out),
            State::Detect(pending) => {
                pending.push((direction, ts_ns, data.to_vec()));
                self.detect(out);
                Flow::Continue
            }
        };
        if flow == Flow::Passthrough {
            self.state = State::Passthrough;
        }
    }

    /// `len` bytes in `direction` were lost (the kernel dropped events): the
    /// stream cannot be trusted past this point unless the parser can step
    /// over them (inside a body of known length).
    pub fn gap(&mut self, direction: Direction, len: u64, out: &mut Vec<Parsed>) {
        let first = out.len();
        self.gap_inner(direction, len, out);
        self.redact(&mut out[first..]);
    }

    fn gap_inner(&mut self, direction: Direction, len: u64, out: &mut Vec<Parsed>) {
        self.offsets[direction as usize] = self.offsets[direction as usize].saturating_add(len);
        let flow = match &mut self.state {
            State::Passthrough => Flow::Continue,
            State::Http1(p) => p.gap(direction, len, out),
            State::Http2(p) => p.gap(direction, len, out),
            State::Detect(_) => {
                // Too early to know what the stream is: show it raw.
                self.flush_pending(out);
                Flow::Passthrough
            }
        };
        if flow == Flow::Passthrough {
            self.state = State::Passthrough;
        }
    }

    /// The direction the client writes (requests go that way), once the
    /// protocol says so: an HTTP/1 request line, the HTTP/2 preface, a
    /// server's SETTINGS, or HTTP/2 pseudo-headers. `None` while unknown.
    /// Better than "who spoke first" for `Connection::role`.
    pub fn client_direction(&self) -> Option<Direction> {
        match &self.state {
            State::Http1(p) => Some(p.request_direction()),
            State::Http2(p) => p.client_direction(),
            State::Detect(_) | State::Passthrough => None,
        }
    }

    /// The connection ended (or the session did): flush what is pending.
    pub fn finish(&mut self, reason: &str, out: &mut Vec<Parsed>) {
        let first = out.len();
        self.finish_inner(reason, out);
        self.redact(&mut out[first..]);
    }

    fn finish_inner(&mut self, reason: &str, out: &mut Vec<Parsed>) {
        match &mut self.state {
            State::Passthrough => {}
            State::Http1(p) => p.finish(reason, out),
            State::Http2(p) => p.finish(reason, out),
            State::Detect(_) => self.flush_pending(out),
        }
        self.state = State::Passthrough;
    }

    fn detect(&mut self, out: &mut Vec<Parsed>) {
        let State::Detect(pending) = &mut self.state else {
            return;
        };
        let mut decided = Detected::NeedMore;
        for dir in [Direction::Send, Direction::Recv] {
            let first: Vec<u8> =
                pending.iter().filter(|(d, _, _)| *d == dir).flat_map(|(_, _, b)| b.iter().copied()).collect();
            match classify(dir, &first) {
                Detected::NeedMore => {}
                found => {
                    decided = found;
                    break;
                }
            }
        }
        let chunks = std::mem::take(pending);
        self.state = match decided {
            Detected::NeedMore => {
                self.state = State::Detect(chunks);
                return;
            }
            // Replayed below as unclaimed.
            Detected::Unknown => State::Passthrough,
            Detected::Http1 { requests } => State::Http1(Box::new(http1::Http1::new(self.options.clone(), requests))),
            Detected::Http2 { client } => State::Http2(Box::new(http2::Http2::new(self.options.clone(), client))),
        };
        // Detection holds every byte from the start of both directions.
        let mut offsets = [0u64; 2];
        for (dir, ts, data) in chunks {
            let offset = offsets[dir as usize];
            offsets[dir as usize] += data.len() as u64;
            let flow = match &mut self.state {
                State::Http1(p) => p.feed(dir, ts, &data, out),
                State::Http2(p) => p.feed(dir, ts, &data, out),
                State::Passthrough | State::Detect(_) => {
                    out.push(Parsed::Unclaimed { direction: dir, ts_ns: ts, offset, data });
                    Flow::Continue
                }
            };
            if flow == Flow::Passthrough {
                self.state = State::Passthrough;
            }
        }
    }

    /// Detection chunks, raw, with their stream offsets.
    fn flush_pending(&mut self, out: &mut Vec<Parsed>) {
        let State::Detect(pending) = &mut self.state else {
            return;
        };
        let mut offsets = [0u64; 2];
        for (direction, ts_ns, data) in pending.drain(..) {
            let offset = offsets[direction as usize];
            offsets[direction as usize] += data.len() as u64;
            out.push(Parsed::Unclaimed { direction, ts_ns, offset, data });
        }
    }
}

impl Input {
    /// Memory held (for the agent's budget).
    pub(crate) fn held_bytes(&self) -> usize {
        self.buf.capacity()
    }
}

impl ConnectionParser {
    /// Memory this connection's parsing holds: buffered bytes, queued
    /// requests, open streams, HPACK tables (for the agent's budget; see
    /// `held`). Costs a walk over queued requests and open streams.
    pub fn held_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + match &self.state {
                State::Detect(pending) => {
                    pending.capacity() * std::mem::size_of::<(Direction, u64, Vec<u8>)>()
                        + pending.iter().map(|(_, _, data)| data.capacity()).sum::<usize>()
                }
                State::Http1(p) => p.held_bytes(),
                State::Http2(p) => p.held_bytes(),
                State::Passthrough => 0,
            }
    }
}
