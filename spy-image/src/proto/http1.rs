//! HTTP/1.x: request and response heads (httparse), bodies by length,
//! chunks or close, keep-alive and pipelining (responses match requests in
//! order), interim 1xx responses, and upgrades (the rest is unclaimed).

use std::borrow::Cow;
use std::collections::VecDeque;

use super::body::BodyBuf;
use super::{redact, Flow, Input, ParseOptions, Parsed};
use spy_protocol::record::{Direction, Exchange, Header, Protocol, Request, Response};

/// Headers per message; more is treated as bad framing.
pub(crate) const MAX_HEADERS: usize = 128;
/// Bytes of a header section (request or status line included), and of a
/// chunked trailer section.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Bytes of a chunk-size line (extensions included).
pub(crate) const MAX_CHUNK_LINE: usize = 4096;
/// Largest chunk size taken: 15 hex digits' worth, the limit we had before
/// httparse read the digits (it takes 16). No real body comes near it; a
/// bigger size is garbage, and this keeps any sum of sizes far from overflow.
const MAX_CHUNK_SIZE: u64 = (1 << 60) - 1;
/// Pipelined requests waiting for their responses.
pub(crate) const MAX_PENDING: usize = 1024;

#[derive(Debug)]
pub(crate) struct Http1 {
    opts: ParseOptions,
    req_dir: Direction,
    requests: Reader,
    responses: Reader,
    /// Requests in order, each until it and its response are complete.
    queue: VecDeque<Slot>,
    next_seq: u64,
}

#[derive(Debug, Default)]
struct Reader {
    input: Input,
    state: ReadState,
}

#[derive(Debug, Default)]
enum ReadState {
    #[default]
    Head,
    Body(Box<InFlight>),
    /// Requests: an Upgrade or CONNECT request waits for its response to
    /// say whether the connection switches protocols.
    Hold,
    /// After `Connection: close`: anything more is unclaimed.
    Closed,
}

/// A message whose body is being received.
#[derive(Debug)]
struct InFlight {
    framing: Framing,
    body: BodyBuf,
    trailers: Vec<Header>,
    /// The slot this message belongs to; `None` for a response with no
    /// request (we joined the connection after the request went by).
    seq: Option<u64>,
    orphan: Option<Response>,
    close: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// A request and, once it arrives, its response.
#[derive(Debug)]
struct Slot {
    seq: u64,
    request: Request,
    req_done: bool,
    head_method: bool,
    connect: bool,
    upgrade: bool,
    close: bool,
    response: Option<Response>,
    resp_done: bool,
    resp_end_ts: u64,
}

/// What the headers of a message say about its framing.
#[derive(Debug, Default)]
struct HeadInfo {
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    upgrade: bool,
}

enum Step {
    Idle,
    Progress,
    Switch,
}

impl Http1 {
    pub(crate) fn new(opts: ParseOptions, req_dir: Direction) -> Self {
        Http1 {
            opts,
            req_dir,
            requests: Reader::default(),
            responses: Reader::default(),
            queue: VecDeque::new(),
            next_seq: 0,
        }
    }

    pub(crate) fn request_direction(&self) -> Direction {
        self.req_dir
    }

    pub(crate) fn feed(&mut self, dir: Direction, ts: u64, data: &[u8], out: &mut Vec<Parsed>) -> Flow {
        let data = match self.body_straight(dir, ts, data, out) {
            Ok(rest) => rest,
            Err(message) => return self.give_up(message, out),
        };
        if !data.is_empty() {
            self.reader(dir).input.push(ts, data);
        }
        self.pump(out)
    }

    /// Body bytes that follow what is buffered are read straight from the
    /// event, not copied through the buffer first: past `max_body` they are
    /// only counted, so a large body costs no copy at all. Returns what is
    /// left for the buffer (the next head, or nothing).
    fn body_straight<'d>(
        &mut self,
        dir: Direction,
        ts: u64,
        data: &'d [u8],
        out: &mut Vec<Parsed>,
    ) -> Result<&'d [u8], String> {
        let (max_body, show_secrets) = (self.opts.max_body, self.opts.show_secrets);
        let is_request = dir == self.req_dir;
        let reader = self.reader(dir);
        let ReadState::Body(f) = &mut reader.state else { return Ok(data) };
        if !reader.input.is_empty() {
            return Ok(data);
        }
        // As if pushed and consumed: the same times and stream offset.
        reader.input.arrived(ts);
        let (used, done) = f.advance(data, max_body, show_secrets)?;
        reader.input.skip(used as u64);
        if done {
            if is_request {
                self.complete_request(out);
            } else {
                self.complete_response(false, out);
            }
        }
        Ok(&data[used..])
    }

    pub(crate) fn gap(&mut self, dir: Direction, len: u64, out: &mut Vec<Parsed>) -> Flow {
        let reader = self.reader(dir);
        let stepped = reader.input.is_empty()
            && match &mut reader.state {
                ReadState::Closed => true,
                ReadState::Body(f) => {
                    let fits = match &mut f.framing {
                        Framing::UntilClose => true,
                        Framing::Length(rem) | Framing::Chunked(Chunk::Data(rem)) if *rem >= len => {
                            *rem -= len;
                            true
                        }
                        _ => false,
                    };
                    if fits {
                        f.body.skip(len);
                    }
                    fits
                }
                ReadState::Head | ReadState::Hold => false,
            };
        if !stepped {
            return self.give_up(format!("HTTP/1: {len} bytes lost in the {dir:?} stream"), out);
        }
        reader.input.skip(len);
        self.pump(out)
    }

    pub(crate) fn finish(&mut self, reason: &str, out: &mut Vec<Parsed>) {
        self.flush_all(reason, true, out);
    }

    fn reader(&mut self, dir: Direction) -> &mut Reader {
        if dir == self.req_dir {
            &mut self.requests
        } else {
            &mut self.responses
        }
    }

    fn pump(&mut self, out: &mut Vec<Parsed>) -> Flow {
        loop {
            let requests = match self.step_requests(out) {
                Ok(step) => step,
                Err(message) => return self.give_up(message, out),
            };
            let responses = match self.step_responses(out) {
                Ok(step) => step,
                Err(message) => return self.give_up(message, out),
            };
            if matches!(responses, Step::Switch) {
                self.emit_ready(out);
                self.requests.input.flush(self.req_dir, out);
                self.responses.input.flush(self.req_dir.flip(), out);
                return Flow::Passthrough;
            }
            if matches!((requests, responses), (Step::Idle, Step::Idle)) {
                return Flow::Continue;
            }
        }
    }

    fn step_requests(&mut self, out: &mut Vec<Parsed>) -> Result<Step, String> {
        let (max_body, show_secrets) = (self.opts.max_body, self.opts.show_secrets);
        match &mut self.requests.state {
            ReadState::Hold => Ok(Step::Idle),
            ReadState::Closed => {
                self.requests.input.flush(self.req_dir, out);
                Ok(Step::Idle)
            }
            ReadState::Body(f) => {
                let (used, done) = f.advance(self.requests.input.bytes(), max_body, show_secrets)?;
                self.requests.input.consume(used);
                if done {
                    self.complete_request(out);
                    return Ok(Step::Progress);
                }
                Ok(if used > 0 { Step::Progress } else { Step::Idle })
            }
            ReadState::Head => {
                let bytes = self.requests.input.bytes();
                if bytes.is_empty() {
                    return Ok(Step::Idle);
                }
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut headers);
                let used = match req.parse(bytes) {
                    Ok(httparse::Status::Complete(n)) => n,
                    Ok(httparse::Status::Partial) if bytes.len() > MAX_HEAD_BYTES => {
                        return Err(format!("HTTP/1: request header section over {MAX_HEAD_BYTES} bytes"))
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::Idle),
                    Err(e) => return Err(format!("HTTP/1: bad request head: {e}")),
                };
                let info = head_info(req.headers)?;
                let method = req.method.unwrap_or_default().to_owned();
                let version = req.version.unwrap_or(1);
                let request = Request {
                    authority: req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("host")).map(|h| lossy(h.value)),
                    path: req.path.unwrap_or_default().to_owned(),
                    version: format!("HTTP/1.{version}"),
                    headers: headers_of(req.headers, self.opts.show_secrets),
                    body: Default::default(),
                    ts_ns: self.requests.input.front_ts(),
                    method,
                };
                self.requests.input.consume(used);
                let framing = if info.transfer_encoding {
                    if !info.chunked {
                        return Err("HTTP/1: request transfer-coding is not chunked".into());
                    }
                    Some(Framing::Chunked(Chunk::Size))
                } else {
                    info.content_length.filter(|&n| n > 0).map(Framing::Length)
                };
                if self.queue.len() >= MAX_PENDING {
                    return Err(format!("HTTP/1: more than {MAX_PENDING} requests without responses"));
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                self.queue.push_back(Slot {
                    seq,
                    head_method: request.method == "HEAD",
                    connect: request.method == "CONNECT",
                    upgrade: info.upgrade,
                    close: info.close || (version == 0 && !info.keep_alive),
                    request,
                    req_done: false,
                    response: None,
                    resp_done: false,
                    resp_end_ts: 0,
                });
                match framing {
                    Some(framing) => {
                        self.requests.state = ReadState::Body(Box::new(InFlight::new(framing, Some(seq), None, false)));
                    }
                    None => self.complete_request(out),
                }
                Ok(Step::Progress)
            }
        }
    }

    /// The request being read is complete: its body goes into its slot.
    fn complete_request(&mut self, out: &mut Vec<Parsed>) {
        let max_body = self.opts.max_body;
        let state = std::mem::take(&mut self.requests.state);
        let Some(slot) = self.queue.back_mut() else {
            return;
        };
        if let ReadState::Body(f) = state {
            let encoding = header_value(&slot.request.headers, "content-encoding");
            slot.request.body = f.body.finish(encoding.as_deref(), max_body);
            slot.request.headers.extend(f.trailers);
        }
        slot.req_done = true;
        self.requests.state = if slot.upgrade || slot.connect {
            ReadState::Hold
        } else if slot.close {
            ReadState::Closed
        } else {
            ReadState::Head
        };
        self.emit_ready(out);
    }

    fn step_responses(&mut self, out: &mut Vec<Parsed>) -> Result<Step, String> {
        let (max_body, show_secrets) = (self.opts.max_body, self.opts.show_secrets);
        let resp_dir = self.req_dir.flip();
        match &mut self.responses.state {
            ReadState::Hold => Ok(Step::Idle),
            ReadState::Closed => {
                self.responses.input.flush(resp_dir, out);
                Ok(Step::Idle)
            }
            ReadState::Body(f) => {
                let (used, done) = f.advance(self.responses.input.bytes(), max_body, show_secrets)?;
                self.responses.input.consume(used);
                if done {
                    self.complete_response(false, out);
                    return Ok(Step::Progress);
                }
                Ok(if used > 0 { Step::Progress } else { Step::Idle })
            }
            ReadState::Head => {
                let bytes = self.responses.input.bytes();
                if bytes.is_empty() {
                    return Ok(Step::Idle);
                }
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut resp = httparse::Response::new(&mut headers);
                let used = match resp.parse(bytes) {
                    Ok(httparse::Status::Complete(n)) => n,
                    Ok(httparse::Status::Partial) if bytes.len() > MAX_HEAD_BYTES => {
                        return Err(format!("HTTP/1: response header section over {MAX_HEAD_BYTES} bytes"))
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::Idle),
                    Err(e) => return Err(format!("HTTP/1: bad response head: {e}")),
                };
                let info = head_info(resp.headers)?;
                let status = resp.code.unwrap_or_default();
                let version = resp.version.unwrap_or(1);
                let response = Response {
                    status,
                    reason: resp.reason.filter(|r| !r.is_empty()).map(str::to_owned),
                    version: format!("HTTP/1.{version}"),
                    headers: headers_of(resp.headers, self.opts.show_secrets),
                    trailers: Vec::new(),
                    body: Default::default(),
                    ts_ns: self.responses.input.front_ts(),
                };
                self.responses.input.consume(used);
                if (100..200).contains(&status) && status != 101 {
                    // Interim (100 Continue, 103 Early Hints): the final
                    // response is still to come.
                    return Ok(Step::Progress);
                }
                let close = info.close || (version == 0 && !info.keep_alive);
                let slot = self.queue.iter_mut().find(|s| s.response.is_none());
                let (head_method, connect, seq) = match &slot {
                    Some(s) => (s.head_method, s.connect, Some(s.seq)),
                    None => (false, false, None),
                };
                let switch = status == 101 || (connect && (200..300).contains(&status));
                let framing = if switch || head_method || status == 204 || status == 304 {
                    None
                } else if info.transfer_encoding {
                    Some(if info.chunked { Framing::Chunked(Chunk::Size) } else { Framing::UntilClose })
                } else {
                    match info.content_length {
                        Some(0) => None,
                        Some(n) => Some(Framing::Length(n)),
                        None => Some(Framing::UntilClose),
                    }
                };
                let orphan = match slot {
                    Some(slot) => {
                        slot.response = Some(response);
                        if !switch && matches!(self.requests.state, ReadState::Hold) && (slot.upgrade || slot.connect) {
                            // Not switching after all: requests go on.
                            self.requests.state = ReadState::Head;
                        }
                        None
                    }
                    None => Some(response),
                };
                let framing = framing.unwrap_or(Framing::Length(0));
                self.responses.state = ReadState::Body(Box::new(InFlight::new(framing, seq, orphan, close)));
                if switch {
                    self.complete_response(false, out);
                    return Ok(Step::Switch);
                }
                if framing == Framing::Length(0) {
                    self.complete_response(false, out);
                }
                Ok(Step::Progress)
            }
        }
    }

    /// The response being read is complete (`at_close`: its end is the
    /// connection's end).
    fn complete_response(&mut self, at_close: bool, out: &mut Vec<Parsed>) {
        let max_body = self.opts.max_body;
        let ReadState::Body(f) = std::mem::take(&mut self.responses.state) else {
            return;
        };
        let f = *f;
        let end_ts = self.responses.input.last_ts();
        let mut close = f.close;
        let finish = |response: &mut Response| {
            let encoding = header_value(&response.headers, "content-encoding");
            response.body = f.body.finish(encoding.as_deref(), max_body);
            response.trailers = f.trailers;
        };
        match (f.seq.and_then(|seq| self.queue.iter_mut().find(|s| s.seq == seq)), f.orphan) {
            (Some(slot), _) => {
                if let Some(response) = &mut slot.response {
                    finish(response);
                }
                slot.resp_done = true;
                slot.resp_end_ts = end_ts;
                close |= slot.close;
            }
            (None, Some(mut response)) => {
                finish(&mut response);
                out.push(exchange(None, Some(response), None, None));
            }
            (None, None) => {}
        }
        if !at_close {
            self.responses.state = if close { ReadState::Closed } else { ReadState::Head };
        }
        self.emit_ready(out);
    }

    /// Emits finished exchanges from the front of the queue, in order.
    fn emit_ready(&mut self, out: &mut Vec<Parsed>) {
        while self.queue.front().is_some_and(|s| s.req_done && s.resp_done) {
            if let Some(slot) = self.queue.pop_front() {
                let latency = Some(slot.resp_end_ts.saturating_sub(slot.request.ts_ns) / 1000);
                out.push(exchange(Some(slot.request), slot.response, latency, None));
            }
        }
    }

    /// Bad framing: say so once, emit what we have, pass the rest through.
    fn give_up(&mut self, message: String, out: &mut Vec<Parsed>) -> Flow {
        out.push(Parsed::Error { message: message.clone() });
        self.flush_all(&format!("parse error: {message}"), false, out);
        Flow::Passthrough
    }

    /// Emits everything pending. `closing`: the connection really ended, so
    /// a response delimited by the close is complete.
    fn flush_all(&mut self, reason: &str, closing: bool, out: &mut Vec<Parsed>) {
        let max_body = self.opts.max_body;
        if closing && matches!(&self.responses.state, ReadState::Body(f) if f.framing == Framing::UntilClose) {
            self.complete_response(true, out);
        }
        // Partial bodies go into their messages.
        if let ReadState::Body(f) = std::mem::take(&mut self.requests.state) {
            if let Some(slot) = f.seq.and_then(|seq| self.queue.iter_mut().find(|s| s.seq == seq)) {
                let encoding = header_value(&slot.request.headers, "content-encoding");
                slot.request.body = f.body.finish(encoding.as_deref(), max_body);
            }
        }
        if let ReadState::Body(f) = std::mem::take(&mut self.responses.state) {
            let f = *f;
            let target =
                f.seq.and_then(|seq| self.queue.iter_mut().find(|s| s.seq == seq)).and_then(|s| s.response.as_mut());
            let mut orphan = f.orphan;
            if let Some(response) = target.or(orphan.as_mut()) {
                let encoding = header_value(&response.headers, "content-encoding");
                response.body = f.body.finish(encoding.as_deref(), max_body);
                response.trailers = f.trailers;
            }
            if let Some(response) = orphan {
                out.push(exchange(None, Some(response), None, Some(reason.to_owned())));
            }
        }
        self.requests.input.flush(self.req_dir, out);
        self.responses.input.flush(self.req_dir.flip(), out);
        self.emit_ready(out);
        for slot in self.queue.drain(..) {
            let complete = slot.req_done && slot.resp_done;
            let latency = complete.then(|| slot.resp_end_ts.saturating_sub(slot.request.ts_ns) / 1000);
            out.push(exchange(Some(slot.request), slot.response, latency, (!complete).then(|| reason.to_owned())));
        }
        self.requests.state = ReadState::Closed;
        self.responses.state = ReadState::Closed;
    }
}

impl InFlight {
    fn new(framing: Framing, seq: Option<u64>, orphan: Option<Response>, close: bool) -> Self {
        InFlight { framing, body: BodyBuf::default(), trailers: Vec::new(), seq, orphan, close }
    }

    /// Takes body bytes from `bytes`: how many were used, and whether the
    /// body is complete.
    fn advance(&mut self, bytes: &[u8], max_body: usize, show_secrets: bool) -> Result<(usize, bool), String> {
        match &mut self.framing {
            Framing::Length(rem) => {
                let n = take_len(bytes.len(), *rem);
                self.body.push(&bytes[..n], max_body);
                *rem -= n as u64;
                Ok((n, *rem == 0))
            }
            Framing::UntilClose => {
                self.body.push(bytes, max_body);
                Ok((bytes.len(), false))
            }
            Framing::Chunked(_) => self.advance_chunked(bytes, max_body, show_secrets),
        }
    }

    fn advance_chunked(&mut self, bytes: &[u8], max_body: usize, show_secrets: bool) -> Result<(usize, bool), String> {
        let mut pos = 0;
        loop {
            let Framing::Chunked(chunk) = &mut self.framing else {
                return Ok((pos, false));
            };
            let rest = &bytes[pos..];
            match chunk {
                Chunk::Size => {
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        if rest.len() > MAX_CHUNK_LINE {
                            return Err(format!("HTTP/1: chunk-size line over {MAX_CHUNK_LINE} bytes"));
                        }
                        return Ok((pos, false));
                    };
                    let size = chunk_size(&rest[..=nl])?;
                    pos += nl + 1;
                    *chunk = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                }
                Chunk::Data(rem) => {
                    if rest.is_empty() {
                        return Ok((pos, false));
                    }
                    let n = take_len(rest.len(), *rem);
                    self.body.push(&rest[..n], max_body);
                    *rem -= n as u64;
                    pos += n;
                    if *rem == 0 {
                        *chunk = Chunk::DataEnd;
                    }
                }
                Chunk::DataEnd => match rest {
                    [] | [b'\r'] => return Ok((pos, false)),
                    [b'\n', ..] => {
                        pos += 1;
                        *chunk = Chunk::Size;
                    }
                    [b'\r', b'\n', ..] => {
                        pos += 2;
                        *chunk = Chunk::Size;
                    }
                    _ => return Err("HTTP/1: chunk data not followed by CRLF".into()),
                },
                Chunk::Trailers => {
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    return match httparse::parse_headers(rest, &mut headers) {
                        Ok(httparse::Status::Complete((n, trailers))) => {
                            self.trailers = headers_of(trailers, show_secrets);
                            Ok((pos + n, true))
                        }
                        Ok(httparse::Status::Partial) if rest.len() > MAX_HEAD_BYTES => {
                            Err(format!("HTTP/1: trailer section over {MAX_HEAD_BYTES} bytes"))
                        }
                        Ok(httparse::Status::Partial) => Ok((pos, false)),
                        Err(e) => Err(format!("HTTP/1: bad trailers: {e}")),
                    };
                }
            }
        }
    }
}

/// Record headers, secrets redacted unless `show_secrets`.
fn headers_of(headers: &[httparse::Header<'_>], show_secrets: bool) -> Vec<Header> {
    headers.iter().map(|h| redact::header(h.name.to_owned(), lossy(h.value), false, show_secrets)).collect()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// First value of a header (from an unredacted list, or a harmless one).
fn header_value(headers: &[Header], name: &str) -> Option<String> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.clone())
}

fn take_len(available: usize, remaining: u64) -> usize {
    usize::try_from(remaining).map_or(available, |rem| rem.min(available))
}

/// `1a;ext=1\r\n` → 26, from a chunk-size line up to and including its LF.
///
/// httparse reads the hex digits (no overflow: it stops at 16) and skips
/// extensions. Around it we keep what this parser accepted before: a bare
/// LF line end (RFC 9112 §2.2 lets a recipient take one) and blanks before
/// the digits; and what httparse allows but we did not: an empty size (it
/// reads as 0, which would end the body) and sizes past [`MAX_CHUNK_SIZE`].
fn chunk_size(line: &[u8]) -> Result<u64, String> {
    let bad = || {
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        format!("HTTP/1: bad chunk size {:?}", String::from_utf8_lossy(size.trim_ascii()))
    };
    let blanks = line.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    let line = &line[blanks..];
    if !line.first().is_some_and(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    let crlf: Cow<'_, [u8]> = match line {
        [.., b'\r', b'\n'] => Cow::Borrowed(line),
        [head @ .., b'\n'] => Cow::Owned([head, b"\r\n"].concat()),
        _ => Cow::Borrowed(line),
    };
    match httparse::parse_chunk_size(&crlf) {
        Ok(httparse::Status::Complete((_, size))) if size <= MAX_CHUNK_SIZE => Ok(size),
        _ => Err(bad()),
    }
}

fn tokens(value: &[u8]) -> impl Iterator<Item = String> + '_ {
    value
        .split(|&b| b == b',')
        .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

fn head_info(headers: &[httparse::Header<'_>]) -> Result<HeadInfo, String> {
    let mut info = HeadInfo::default();
    for h in headers {
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "content-length" => {
                for token in tokens(h.value) {
                    let n: u64 = token.parse().map_err(|_| format!("HTTP/1: bad content-length {token:?}"))?;
                    if info.content_length.is_some_and(|m| m != n) {
                        return Err("HTTP/1: conflicting content-length values".into());
                    }
                    info.content_length = Some(n);
                }
            }
            "transfer-encoding" => {
                info.transfer_encoding = true;
                info.chunked = tokens(h.value).last().is_some_and(|t| t == "chunked");
            }
            "connection" => {
                for token in tokens(h.value) {
                    match token.as_str() {
                        "close" => info.close = true,
                        "keep-alive" => info.keep_alive = true,
                        _ => {}
                    }
                }
            }
            "upgrade" => info.upgrade = true,
            _ => {}
        }
    }
    Ok(info)
}

fn exchange(
    request: Option<Request>,
    response: Option<Response>,
    latency_us: Option<u64>,
    incomplete: Option<String>,
) -> Parsed {
    Parsed::Exchange(Box::new(Exchange {
        conn: Default::default(),
        protocol: Protocol::Http1,
        stream_id: None,
        request,
        response,
        grpc: None,
        latency_us,
        incomplete,
    }))
}

/// Memory held, for the agent's budget (see `held`): a walk over the
/// queued requests, which [`MAX_PENDING`] bounds.
impl Http1 {
    pub(crate) fn held_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.requests.held_bytes()
            + self.responses.held_bytes()
            + self.queue.capacity() * std::mem::size_of::<Slot>()
            + self
                .queue
                .iter()
                .map(|slot| {
                    super::held::request(&slot.request) + slot.response.as_ref().map_or(0, super::held::response)
                        - std::mem::size_of::<Request>()
                })
                .sum::<usize>()
    }
}

impl Reader {
    fn held_bytes(&self) -> usize {
        self.input.held_bytes()
            + match &self.state {
                ReadState::Body(f) => {
                    std::mem::size_of::<InFlight>()
                        + f.body.held_bytes()
                        + super::held::headers(&f.trailers)
                        + f.orphan.as_ref().map_or(0, super::held::response)
                }
                ReadState::Head | ReadState::Hold | ReadState::Closed => 0,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(line: &str) -> Result<u64, String> {
        chunk_size(line.as_bytes())
    }

    #[test]
    fn chunk_sizes_are_hex_with_optional_extensions() {
        assert_eq!(size("1a\r\n"), Ok(26));
        assert_eq!(size("1A;name=value;x\r\n"), Ok(26));
        assert_eq!(size("0\r\n"), Ok(0));
        assert_eq!(size("5 ;ext\r\n"), Ok(5));
        assert_eq!(size("5\t\r\n"), Ok(5));
        // Accepted as before: a bare LF, blanks before the digits.
        assert_eq!(size("1a\n"), Ok(26));
        assert_eq!(size("1a;ext\n"), Ok(26));
        assert_eq!(size(" \t1a\r\n"), Ok(26));
        assert_eq!(size("fffffffffffffff\r\n"), Ok(MAX_CHUNK_SIZE));
    }

    #[test]
    fn bad_chunk_sizes_are_errors_never_panics() {
        for line in [
            "\r\n",
            "\n",
            ";ext\r\n",
            "  \r\n",
            "zz\r\n",
            "5 x\r\n",
            "+5\r\n",
            "-5\r\n",
            "0x5\r\n",
            "5\r\r\n",
            // Past 15 digits' worth; past what u64 holds.
            "1000000000000000\r\n",
            "ffffffffffffffff\r\n",
            "ffffffffffffffffff\r\n",
        ] {
            assert!(size(line).is_err(), "{line:?}");
        }
        assert_eq!(size("zz;ext\r\n"), Err("HTTP/1: bad chunk size \"zz\"".into()));
        assert!(chunk_size(b"\xff\r\n").is_err());
    }
}
