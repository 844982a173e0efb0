//! HTTP/2 (RFC 9113): frames per direction, HPACK per direction, streams
//! matched by id into exchanges, gRPC on top.
//!
//! Frame payloads are streamed, never buffered whole: DATA goes straight to
//! its stream's (capped) body, header blocks accumulate up to
//! [`MAX_HEADER_BLOCK`], control frames we do not need are skipped. So a
//! frame that claims 16 MB costs nothing but counting.

use std::collections::{BTreeMap, VecDeque};

use super::body::BodyBuf;
use super::grpc::{self, MessageCounter};
use super::hpack;
use super::{redact, Flow, Input, ParseOptions, Parsed, H2_PREFACE};
use spy_protocol::record::{Direction, Exchange, Grpc, Header, Protocol, Request, Response};

pub(crate) const FRAME_HEADER_LEN: usize = 9;
/// Bytes of one header block (HEADERS or PUSH_PROMISE plus CONTINUATIONs).
/// Past it the block is dropped, its stream with it, and the HPACK table
/// forgotten (its inserts are lost).
pub(crate) const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Open streams tracked per connection; past it the oldest is emitted as
/// incomplete. Each holds two bodies of at most `max_body`.
pub(crate) const MAX_STREAMS: usize = 512;
/// Recently finished stream ids, so that late frames (a WINDOW_UPDATE, a
/// DATA frame racing a reset) do not open a ghost stream.
const CLOSED_MEMORY: usize = 256;
/// Detection only: a first frame longer than this is not taken for HTTP/2.
const DETECT_MAX_FRAME_LEN: u32 = 1 << 20;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameHead {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHead {
    fn parse(b: &[u8]) -> Option<(FrameHead, bool)> {
        let b: &[u8; FRAME_HEADER_LEN] = b.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
        let len = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        let raw_stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        let reserved = raw_stream & 0x8000_0000 != 0;
        Some((
            FrameHead {
                len,
                kind: b[3],
                flags: b[4],
                stream: raw_stream & 0x7fff_ffff,
            },
            reserved,
        ))
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// What a direction's first frame says, for detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FirstFrame {
    /// A SETTINGS frame: a server's first words (or a client's after the
    /// preface, which detection has already seen).
    Settings,
    Other,
}

/// Does `first` start with a frame header that a real peer would send?
/// Strict (known type, flags and lengths that fit it) so that other
/// protocols are not taken for HTTP/2.
pub(crate) fn plausible_first_frame(first: &[u8]) -> Option<FirstFrame> {
    let (h, reserved) = FrameHead::parse(first)?;
    let on_stream = h.stream != 0;
    let (fits, allowed_flags) = match h.kind {
        DATA => (on_stream, FLAG_END_STREAM | FLAG_PADDED),
        HEADERS => (
            on_stream,
            FLAG_END_STREAM | FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY,
        ),
        PRIORITY => (on_stream && h.len == 5, 0),
        RST_STREAM => (on_stream && h.len == 4, 0),
        SETTINGS => (
            !on_stream && h.len % 6 == 0 && (!h.has(FLAG_ACK) || h.len == 0),
            FLAG_ACK,
        ),
        PUSH_PROMISE => (on_stream && h.len >= 4, FLAG_END_HEADERS | FLAG_PADDED),
        PING => (!on_stream && h.len == 8, FLAG_ACK),
        GOAWAY => (!on_stream && h.len >= 8, 0),
        WINDOW_UPDATE => (h.len == 4, 0),
        CONTINUATION => (on_stream, FLAG_END_HEADERS),
        _ => (false, 0),
    };
    if !fits || reserved || h.flags & !allowed_flags != 0 || h.len > DETECT_MAX_FRAME_LEN {
        return None;
    }
    Some(if h.kind == SETTINGS && !h.has(FLAG_ACK) {
        FirstFrame::Settings
    } else {
        FirstFrame::Other
    })
}

#[derive(Clone, Copy, Debug)]
enum FrameState {
    Head,
    /// Waiting for the pad length, priority fields or promised stream id.
    Prefix(FrameHead),
    Content {
        head: FrameHead,
        remaining: u32,
        pad: u32,
    },
    Padding {
        head: FrameHead,
        remaining: u32,
    },
    /// RST_STREAM: waiting for its error code.
    Rst(FrameHead),
    Skip {
        remaining: u32,
    },
}

/// A header block being gathered from HEADERS/PUSH_PROMISE + CONTINUATION.
#[derive(Debug)]
struct HeaderBlock {
    stream: u32,
    promise: bool,
    buf: Vec<u8>,
    oversized: bool,
    end_stream: bool,
    ts: u64,
}

/// One direction: its bytes, framing and HPACK state.
#[derive(Debug)]
struct Dir {
    input: Input,
    /// The preface question is settled (seen and consumed, or not there).
    started: bool,
    state: FrameState,
    hpack: hpack::Decoder,
    block: Option<HeaderBlock>,
}

impl Default for Dir {
    fn default() -> Self {
        Dir {
            input: Input::default(),
            started: false,
            state: FrameState::Head,
            hpack: hpack::Decoder::default(),
            block: None,
        }
    }
}

/// Pseudo-headers of one message.
#[derive(Debug, Default)]
struct Pseudo {
    method: Option<String>,
    path: Option<String>,
    authority: Option<String>,
    status: Option<String>,
}

/// One direction of a stream: a request or a response.
#[derive(Debug, Default)]
struct Side {
    seen: bool,
    ended: bool,
    start_ts: u64,
    end_ts: u64,
    headers: Option<Vec<Header>>,
    trailers: Vec<Header>,
    pseudo: Pseudo,
    content_type: Option<String>,
    content_encoding: Option<String>,
    body: BodyBuf,
    grpc: MessageCounter,
}

#[derive(Debug, Default)]
struct Stream {
    sides: [Side; 2],
}

#[derive(Debug)]
pub(crate) struct Http2 {
    opts: ParseOptions,
    /// The direction the client writes: from the preface, the server's
    /// SETTINGS, or pseudo-headers (:method / :status) once decoded.
    client: Option<Direction>,
    first_dir: Option<Direction>,
    dirs: [Dir; 2],
    streams: BTreeMap<u32, Stream>,
    closed: VecDeque<u32>,
}

impl Http2 {
    pub(crate) fn new(opts: ParseOptions, client: Option<Direction>) -> Self {
        Http2 {
            opts,
            client,
            first_dir: None,
            dirs: Default::default(),
            streams: BTreeMap::new(),
            closed: VecDeque::new(),
        }
    }

    pub(crate) fn client_direction(&self) -> Option<Direction> {
        self.client
    }

    pub(crate) fn feed(
        &mut self,
        dir: Direction,
        ts: u64,
        data: &[u8],
        out: &mut Vec<Parsed>,
    ) -> Flow {
        self.first_dir.get_or_insert(dir);
        self.dirs[dir as usize].input.push(ts, data);
        match self.process(dir, out) {
            Ok(()) => Flow::Continue,
            Err(message) => self.give_up(message, out),
        }
    }

    pub(crate) fn gap(&mut self, dir: Direction, len: u64, out: &mut Vec<Parsed>) -> Flow {
        let d = dir as usize;
        let dirstate = &mut self.dirs[d];
        let within = |remaining: u32| u64::from(remaining) >= len;
        let stepped = dirstate.input.is_empty()
            && dirstate.started
            && match &mut dirstate.state {
                FrameState::Content {
                    head, remaining, ..
                } if head.kind == DATA && within(*remaining) => {
                    *remaining -= len as u32;
                    if let Some(side) = self.streams.get_mut(&head.stream).map(|s| &mut s.sides[d])
                    {
                        side.body.skip(len);
                        side.grpc.skip();
                    }
                    true
                }
                FrameState::Padding { remaining, .. } | FrameState::Skip { remaining }
                    if within(*remaining) =>
                {
                    *remaining -= len as u32;
                    true
                }
                _ => false,
            };
        if !stepped {
            return self.give_up(
                format!("HTTP/2: {len} bytes lost in the {dir:?} stream outside a DATA payload"),
                out,
            );
        }
        self.dirs[d].input.skip(len);
        match self.process(dir, out) {
            Ok(()) => Flow::Continue,
            Err(message) => self.give_up(message, out),
        }
    }

    pub(crate) fn finish(&mut self, reason: &str, out: &mut Vec<Parsed>) {
        self.flush_all(reason, out);
    }

    fn client_dir(&self) -> Direction {
        self.client.or(self.first_dir).unwrap_or(Direction::Send)
    }

    fn process(&mut self, dir: Direction, out: &mut Vec<Parsed>) -> Result<(), String> {
        let d = dir as usize;
        if !self.dirs[d].started {
            let bytes = self.dirs[d].input.bytes();
            if bytes.starts_with(H2_PREFACE) {
                self.dirs[d].input.consume(H2_PREFACE.len());
                self.client = Some(dir);
            } else if H2_PREFACE.starts_with(bytes) {
                return Ok(());
            }
            self.dirs[d].started = true;
        }
        loop {
            let avail = self.dirs[d].input.bytes().len();
            match self.dirs[d].state {
                FrameState::Head => {
                    let Some((head, _)) = FrameHead::parse(self.dirs[d].input.bytes()) else {
                        return Ok(());
                    };
                    let ts = self.dirs[d].input.front_ts();
                    self.dirs[d].input.consume(FRAME_HEADER_LEN);
                    self.start_frame(dir, head, ts, out)?;
                }
                FrameState::Prefix(head) => {
                    let need = prefix_len(&head);
                    if avail < need {
                        return Ok(());
                    }
                    let pad = if head.has(FLAG_PADDED) {
                        u32::from(self.dirs[d].input.bytes()[0])
                    } else {
                        0
                    };
                    let need = need as u32;
                    if need + pad > head.len {
                        return Err(format!(
                            "HTTP/2: padding longer than frame on stream {}",
                            head.stream
                        ));
                    }
                    self.dirs[d].input.consume(need as usize);
                    self.dirs[d].state = FrameState::Content {
                        head,
                        remaining: head.len - need - pad,
                        pad,
                    };
                }
                FrameState::Content {
                    head,
                    remaining: 0,
                    pad,
                } => {
                    if pad > 0 {
                        self.dirs[d].state = FrameState::Padding {
                            head,
                            remaining: pad,
                        };
                    } else {
                        self.dirs[d].state = FrameState::Head;
                        self.end_frame(dir, head, out);
                    }
                }
                FrameState::Content {
                    head,
                    remaining,
                    pad,
                } => {
                    if avail == 0 {
                        return Ok(());
                    }
                    let n = (remaining as usize).min(avail);
                    self.content(dir, &head, n);
                    self.dirs[d].input.consume(n);
                    self.dirs[d].state = FrameState::Content {
                        head,
                        remaining: remaining - n as u32,
                        pad,
                    };
                }
                FrameState::Padding { head, remaining: 0 } => {
                    self.dirs[d].state = FrameState::Head;
                    self.end_frame(dir, head, out);
                }
                FrameState::Padding { head, remaining } => {
                    if avail == 0 {
                        return Ok(());
                    }
                    let n = (remaining as usize).min(avail);
                    self.dirs[d].input.consume(n);
                    self.dirs[d].state = FrameState::Padding {
                        head,
                        remaining: remaining - n as u32,
                    };
                }
                FrameState::Skip { remaining: 0 } => self.dirs[d].state = FrameState::Head,
                FrameState::Skip { remaining } => {
                    if avail == 0 {
                        return Ok(());
                    }
                    let n = (remaining as usize).min(avail);
                    self.dirs[d].input.consume(n);
                    self.dirs[d].state = FrameState::Skip {
                        remaining: remaining - n as u32,
                    };
                }
                FrameState::Rst(head) => {
                    let Some(code) = self.dirs[d].input.bytes().get(..4) else {
                        return Ok(());
                    };
                    let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
                    self.dirs[d].input.consume(4);
                    self.dirs[d].state = FrameState::Head;
                    self.reset(head.stream, code, out);
                }
            }
        }
    }

    fn start_frame(
        &mut self,
        dir: Direction,
        head: FrameHead,
        ts: u64,
        out: &mut Vec<Parsed>,
    ) -> Result<(), String> {
        let d = dir as usize;
        if let Some(block) = &self.dirs[d].block {
            if head.kind != CONTINUATION || head.stream != block.stream {
                return Err(format!(
                    "HTTP/2: header block of stream {} not continued",
                    block.stream
                ));
            }
        }
        let needs_stream = matches!(
            head.kind,
            DATA | HEADERS | PUSH_PROMISE | CONTINUATION | RST_STREAM
        );
        if needs_stream && head.stream == 0 {
            return Err(format!("HTTP/2: frame type {} on stream 0", head.kind));
        }
        let content = |head: FrameHead| {
            if prefix_len(&head) > 0 {
                FrameState::Prefix(head)
            } else {
                FrameState::Content {
                    head,
                    remaining: head.len,
                    pad: 0,
                }
            }
        };
        if prefix_len(&head) > head.len as usize {
            return Err(format!(
                "HTTP/2: frame type {} too short for its flags",
                head.kind
            ));
        }
        self.dirs[d].state = match head.kind {
            DATA => {
                self.touch(dir, head.stream, ts, out);
                content(head)
            }
            HEADERS | PUSH_PROMISE => {
                self.dirs[d].block = Some(HeaderBlock {
                    stream: head.stream,
                    promise: head.kind == PUSH_PROMISE,
                    buf: Vec::new(),
                    oversized: false,
                    end_stream: head.kind == HEADERS && head.has(FLAG_END_STREAM),
                    ts,
                });
                content(head)
            }
            CONTINUATION if self.dirs[d].block.is_none() => {
                return Err(format!(
                    "HTTP/2: CONTINUATION without HEADERS on stream {}",
                    head.stream
                ));
            }
            CONTINUATION => content(head),
            RST_STREAM if head.len != 4 => return Err("HTTP/2: RST_STREAM length is not 4".into()),
            RST_STREAM => FrameState::Rst(head),
            // SETTINGS, PING, GOAWAY, WINDOW_UPDATE, PRIORITY and unknown
            // types change nothing we show.
            _ => FrameState::Skip {
                remaining: head.len,
            },
        };
        Ok(())
    }

    /// `n` payload bytes of the current frame, at the front of the input.
    fn content(&mut self, dir: Direction, head: &FrameHead, n: usize) {
        let d = dir as usize;
        let Http2 {
            dirs,
            streams,
            opts,
            ..
        } = self;
        let dirstate = &mut dirs[d];
        let bytes = &dirstate.input.bytes()[..n];
        if head.kind == DATA {
            if let Some(side) = streams.get_mut(&head.stream).map(|s| &mut s.sides[d]) {
                side.body.push(bytes, opts.max_body);
                side.grpc.push(bytes);
            }
        } else if let Some(block) = &mut dirstate.block {
            if block.buf.len() + n > MAX_HEADER_BLOCK {
                block.oversized = true;
                block.buf = Vec::new();
            }
            if !block.oversized {
                block.buf.extend_from_slice(bytes);
            }
        }
    }

    fn end_frame(&mut self, dir: Direction, head: FrameHead, out: &mut Vec<Parsed>) {
        match head.kind {
            DATA if head.has(FLAG_END_STREAM) => self.end_side(dir, head.stream, out),
            HEADERS | PUSH_PROMISE | CONTINUATION if head.has(FLAG_END_HEADERS) => {
                self.end_block(dir, out)
            }
            _ => {}
        }
    }

    /// The stream `id` as seen from `dir`, created unless it just closed.
    fn touch(
        &mut self,
        dir: Direction,
        id: u32,
        ts: u64,
        out: &mut Vec<Parsed>,
    ) -> Option<&mut Side> {
        if self.closed.contains(&id) {
            return None;
        }
        if !self.streams.contains_key(&id) && self.streams.len() >= MAX_STREAMS {
            if let Some(&oldest) = self.streams.keys().next() {
                self.emit(
                    oldest,
                    Some(format!("more than {MAX_STREAMS} open streams")),
                    out,
                );
            }
        }
        let side = &mut self.streams.entry(id).or_default().sides[dir as usize];
        if !side.seen {
            side.seen = true;
            side.start_ts = ts;
        }
        Some(side)
    }

    fn end_block(&mut self, dir: Direction, out: &mut Vec<Parsed>) {
        let d = dir as usize;
        let Some(block) = self.dirs[d].block.take() else {
            return;
        };
        let decoded = if block.oversized {
            self.dirs[d].hpack.forget();
            Err(format!(
                "HTTP/2: header block over {MAX_HEADER_BLOCK} bytes on stream {}",
                block.stream
            ))
        } else {
            self.dirs[d]
                .hpack
                .decode(&block.buf)
                .map_err(|e| format!("{e} on stream {}", block.stream))
        };
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(message) => {
                // A bad message drops its stream; the connection goes on.
                out.push(Parsed::Error {
                    message: message.clone(),
                });
                if !block.promise && self.streams.contains_key(&block.stream) {
                    self.emit(block.stream, Some(message), out);
                } else if !block.promise && !self.closed.contains(&block.stream) {
                    self.remember_closed(block.stream);
                }
                return;
            }
        };
        if decoded.truncated {
            out.push(Parsed::Error {
                message: format!(
                    "HTTP/2: header list over {} bytes on stream {}, rest dropped",
                    hpack::MAX_HEADER_LIST_SIZE,
                    block.stream
                ),
            });
        }
        if block.promise {
            // Decoded for the HPACK table's sake; pushed streams show up
            // with their response.
            return;
        }
        let show_secrets = self.opts.show_secrets;
        let mut pseudo = Pseudo::default();
        let mut headers = Vec::new();
        let (mut content_type, mut content_encoding) = (None, None);
        for field in decoded.fields {
            let value = field
                .value
                .map(|v| String::from_utf8_lossy(&v).into_owned());
            let Some(name) = field.name.map(|n| String::from_utf8_lossy(&n).into_owned()) else {
                headers.push(redact::unknown_name(value, show_secrets));
                continue;
            };
            let value = value.unwrap_or_default();
            let slot = match name.as_str() {
                ":method" => &mut pseudo.method,
                ":path" => &mut pseudo.path,
                ":authority" => &mut pseudo.authority,
                ":status" => &mut pseudo.status,
                "content-type" => &mut content_type,
                "content-encoding" => &mut content_encoding,
                _ => {
                    headers.push(redact::header(name, value, show_secrets));
                    continue;
                }
            };
            if !name.starts_with(':') {
                headers.push(redact::header(name, value.clone(), show_secrets));
            }
            slot.get_or_insert(value);
        }
        if pseudo.method.is_some() {
            self.client = Some(dir);
        } else if pseudo.status.is_some() {
            self.client = Some(dir.flip());
        }
        let Some(side) = self.touch(dir, block.stream, block.ts, out) else {
            return;
        };
        let interim = pseudo
            .status
            .as_deref()
            .is_some_and(|s| s.starts_with('1') && s.len() == 3);
        if side.headers.is_none() {
            if !interim {
                side.headers = Some(headers);
                side.pseudo = pseudo;
                side.content_type = content_type;
                side.content_encoding = content_encoding;
            }
        } else {
            side.trailers.extend(headers);
        }
        if block.end_stream {
            self.end_side(dir, block.stream, out);
        }
    }

    fn end_side(&mut self, dir: Direction, id: u32, out: &mut Vec<Parsed>) {
        let ts = self.dirs[dir as usize].input.last_ts();
        let client = self.client_dir();
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let side = &mut stream.sides[dir as usize];
        side.ended = true;
        side.end_ts = ts;
        let (req, resp) = (
            &stream.sides[client as usize],
            &stream.sides[client.flip() as usize],
        );
        if resp.ended && (req.ended || !req.seen) {
            self.emit(id, None, out);
        }
    }

    fn reset(&mut self, id: u32, code: u32, out: &mut Vec<Parsed>) {
        let client = self.client_dir();
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        // A server that answered in full may reset the rest of the request
        // with NO_ERROR (RFC 9113 §8.1): that exchange is complete.
        let answered = code == 0 && stream.sides[client.flip() as usize].ended;
        self.emit(
            id,
            (!answered).then(|| format!("stream reset ({})", error_name(code))),
            out,
        );
    }

    fn remember_closed(&mut self, id: u32) {
        if self.closed.len() >= CLOSED_MEMORY {
            self.closed.pop_front();
        }
        self.closed.push_back(id);
    }

    /// Emits stream `id`; `incomplete` says why it did not finish normally.
    fn emit(&mut self, id: u32, incomplete: Option<String>, out: &mut Vec<Parsed>) {
        let Some(stream) = self.streams.remove(&id) else {
            return;
        };
        self.remember_closed(id);
        let client = self.client_dir();
        let [send, recv] = stream.sides;
        let (req, resp) = if client == Direction::Send {
            (send, recv)
        } else {
            (recv, send)
        };
        out.push(Parsed::Exchange(Box::new(exchange(
            id, req, resp, incomplete, &self.opts,
        ))));
    }

    fn flush_all(&mut self, reason: &str, out: &mut Vec<Parsed>) {
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            self.emit(id, Some(reason.to_owned()), out);
        }
        for dir in [Direction::Send, Direction::Recv] {
            self.dirs[dir as usize].input.flush(dir, out);
        }
    }

    fn give_up(&mut self, message: String, out: &mut Vec<Parsed>) -> Flow {
        out.push(Parsed::Error {
            message: message.clone(),
        });
        self.flush_all(&format!("parse error: {message}"), out);
        Flow::Passthrough
    }
}

/// Bytes before a frame's content: pad length, priority, promised id.
fn prefix_len(head: &FrameHead) -> usize {
    let padded =
        usize::from(head.has(FLAG_PADDED) && matches!(head.kind, DATA | HEADERS | PUSH_PROMISE));
    match head.kind {
        HEADERS if head.has(FLAG_PRIORITY) => padded + 5,
        PUSH_PROMISE => padded + 4,
        DATA | HEADERS => padded,
        _ => 0,
    }
}

fn exchange(
    id: u32,
    req: Side,
    resp: Side,
    incomplete: Option<String>,
    opts: &ParseOptions,
) -> Exchange {
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
    let incomplete =
        incomplete.or_else(|| headless.then(|| "headers not seen (joined mid-stream)".to_owned()));
    let latency_us =
        (resp.ended && req.seen).then(|| resp.end_ts.saturating_sub(req.start_ts) / 1000);
    let request = req.seen.then(|| {
        let mut headers = req.headers.unwrap_or_default();
        headers.extend(req.trailers);
        Request {
            method: req.pseudo.method.unwrap_or_default(),
            authority: req.pseudo.authority,
            path: req.pseudo.path.unwrap_or_default(),
            version: "HTTP/2".into(),
            headers,
            body: req
                .body
                .finish(req.content_encoding.as_deref(), opts.max_body),
            ts_ns: req.start_ts,
        }
    });
    let response = resp.seen.then(|| Response {
        status: resp
            .pseudo
            .status
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or_default(),
        reason: None,
        version: "HTTP/2".into(),
        headers: resp.headers.unwrap_or_default(),
        trailers: resp.trailers,
        body: resp
            .body
            .finish(resp.content_encoding.as_deref(), opts.max_body),
        ts_ns: resp.start_ts,
    });
    Exchange {
        conn: Default::default(),
        protocol: if grpc.is_some() {
            Protocol::Grpc
        } else {
            Protocol::Http2
        },
        stream_id: Some(id),
        request,
        response,
        grpc,
        latency_us,
        incomplete,
    }
}

fn error_name(code: u32) -> String {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    NAMES
        .get(code as usize)
        .map_or_else(|| format!("error {code:#x}"), |n| (*n).to_owned())
}
