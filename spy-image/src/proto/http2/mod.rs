//! HTTP/2 (RFC 9113): frames per direction, HPACK per direction, streams
//! matched by id into exchanges, gRPC on top.
//!
//! Data goes one way: bytes → frames ([`frame`], the codec of one
//! direction) → streams ([`stream`], the table of open streams) →
//! exchanges ([`exchange`], a finished stream as a record). This file holds
//! the connection: it feeds each direction's bytes to its codec, decodes
//! header blocks with that direction's HPACK table, works out which side
//! is the client, and decides what a bad frame costs (framing errors drop
//! the connection, a bad header block only its stream).

mod exchange;
mod frame;
mod stream;

pub(crate) use frame::{plausible_first_frame, FirstFrame, FRAME_HEADER_LEN, MAX_HEADER_BLOCK};
pub(crate) use stream::MAX_STREAMS;

use super::hpack;
use super::{Flow, Input, ParseOptions, Parsed, H2_PREFACE};
use frame::{FrameEvent, Framer, HeaderBlock, Stepped};
use spy_protocol::record::Direction;
use stream::{Admission, HeaderList, Side, StreamTable};

/// One direction's bytes and framing.
#[derive(Debug, Default)]
struct Dir {
    input: Input,
    /// The preface question is settled (seen and consumed, or not there).
    started: bool,
    framer: Framer,
}

#[derive(Debug)]
pub(crate) struct Http2 {
    dirs: [Dir; 2],
    streams: Streams,
}

/// The connection above the framing: what frames mean once decoded.
#[derive(Debug)]
struct Streams {
    opts: ParseOptions,
    /// The direction the client writes: from the preface, the server's
    /// SETTINGS, or pseudo-headers (:method / :status) once decoded.
    client: Option<Direction>,
    first_dir: Option<Direction>,
    /// Each endpoint encodes with its own table: one decoder per direction.
    hpack: [hpack::Decoder; 2],
    table: StreamTable,
}

impl Http2 {
    pub(crate) fn new(opts: ParseOptions, client: Option<Direction>) -> Self {
        Http2 {
            dirs: Default::default(),
            streams: Streams {
                opts,
                client,
                first_dir: None,
                hpack: Default::default(),
                table: StreamTable::default(),
            },
        }
    }

    pub(crate) fn client_direction(&self) -> Option<Direction> {
        self.streams.client
    }

    pub(crate) fn feed(&mut self, dir: Direction, ts: u64, data: &[u8], out: &mut Vec<Parsed>) -> Flow {
        self.streams.first_dir.get_or_insert(dir);
        self.dirs[dir as usize].input.push(ts, data);
        match self.process(dir, out) {
            Ok(()) => Flow::Continue,
            Err(message) => self.give_up(message, out),
        }
    }

    pub(crate) fn gap(&mut self, dir: Direction, len: u64, out: &mut Vec<Parsed>) -> Flow {
        let dirstate = &mut self.dirs[dir as usize];
        let stepped = if dirstate.input.is_empty() && dirstate.started { dirstate.framer.step_over(len) } else { None };
        match stepped {
            Some(Stepped::Data(id)) => {
                if let Some(side) = self.streams.table.side_mut(id, dir) {
                    side.body.skip(len);
                    side.grpc.skip();
                }
            }
            Some(Stepped::Unread) => {}
            None => {
                return self
                    .give_up(format!("HTTP/2: {len} bytes lost in the {dir:?} stream outside a DATA payload"), out);
            }
        }
        self.dirs[dir as usize].input.skip(len);
        match self.process(dir, out) {
            Ok(()) => Flow::Continue,
            Err(message) => self.give_up(message, out),
        }
    }

    pub(crate) fn finish(&mut self, reason: &str, out: &mut Vec<Parsed>) {
        self.flush_all(reason, out);
    }

    fn process(&mut self, dir: Direction, out: &mut Vec<Parsed>) -> Result<(), String> {
        let Http2 { dirs, streams } = self;
        let Dir { input, started, framer } = &mut dirs[dir as usize];
        if !*started {
            let bytes = input.bytes();
            if bytes.starts_with(H2_PREFACE) {
                input.consume(H2_PREFACE.len());
                streams.client = Some(dir);
            } else if H2_PREFACE.starts_with(bytes) {
                return Ok(());
            }
            *started = true;
        }
        framer.run(input, &mut |event| streams.on_frame(dir, event, out))
    }

    fn flush_all(&mut self, reason: &str, out: &mut Vec<Parsed>) {
        self.streams.emit_all(reason, out);
        for dir in [Direction::Send, Direction::Recv] {
            self.dirs[dir as usize].input.flush(dir, out);
        }
    }

    fn give_up(&mut self, message: String, out: &mut Vec<Parsed>) -> Flow {
        out.push(Parsed::Error { message: message.clone() });
        self.flush_all(&format!("parse error: {message}"), out);
        Flow::Passthrough
    }
}

impl Streams {
    fn client_dir(&self) -> Direction {
        self.client.or(self.first_dir).unwrap_or(Direction::Send)
    }

    /// What one frame event from `dir` does to the streams.
    fn on_frame(&mut self, dir: Direction, event: FrameEvent<'_>, out: &mut Vec<Parsed>) {
        match event {
            FrameEvent::DataStart { stream, ts } => {
                self.touch(dir, stream, ts, out);
            }
            FrameEvent::Data { stream, bytes } => {
                if let Some(side) = self.table.side_mut(stream, dir) {
                    side.body.push(bytes, self.opts.max_body);
                    side.grpc.push(bytes);
                }
            }
            FrameEvent::EndStream { stream, ts } => self.end_side(dir, stream, ts, out),
            FrameEvent::Headers { block, ts } => self.end_block(dir, block, ts, out),
            FrameEvent::Reset { stream, code } => self.reset(stream, code, out),
        }
    }

    /// The stream `id` as seen from `dir`, created unless it just closed.
    fn touch(&mut self, dir: Direction, id: u32, ts: u64, out: &mut Vec<Parsed>) -> Option<&mut Side> {
        match self.table.admission(id) {
            Admission::Closed => return None,
            Admission::Evict(oldest) => self.emit(oldest, Some(format!("more than {MAX_STREAMS} open streams")), out),
            Admission::Open => {}
        }
        Some(self.table.open(id, dir, ts))
    }

    /// A complete header block from `dir`, its last bytes seen at `ts`.
    fn end_block(&mut self, dir: Direction, block: HeaderBlock, ts: u64, out: &mut Vec<Parsed>) {
        let decoder = &mut self.hpack[dir as usize];
        let decoded = if block.oversized {
            decoder.forget();
            Err(format!("HTTP/2: header block over {MAX_HEADER_BLOCK} bytes on stream {}", block.stream))
        } else {
            decoder.decode(&block.buf).map_err(|e| format!("{e} on stream {}", block.stream))
        };
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(message) => {
                // A bad message drops its stream; the connection goes on.
                out.push(Parsed::Error { message: message.clone() });
                if !block.promise && self.table.is_open(block.stream) {
                    self.emit(block.stream, Some(message), out);
                } else if !block.promise && !self.table.is_closed(block.stream) {
                    self.table.remember_closed(block.stream);
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
        let list = HeaderList::sort(decoded.fields, self.opts.show_secrets);
        if let Some(client) = list.client_direction(dir) {
            self.client = Some(client);
        }
        let Some(side) = self.touch(dir, block.stream, block.ts, out) else {
            return;
        };
        side.add_headers(list);
        if block.end_stream {
            self.end_side(dir, block.stream, ts, out);
        }
    }

    fn end_side(&mut self, dir: Direction, id: u32, ts: u64, out: &mut Vec<Parsed>) {
        let client = self.client_dir();
        let Some(stream) = self.table.get_mut(id) else {
            return;
        };
        if stream.end_side(dir, ts, client) {
            self.emit(id, None, out);
        }
    }

    fn reset(&mut self, id: u32, code: u32, out: &mut Vec<Parsed>) {
        let client = self.client_dir();
        let Some(stream) = self.table.get(id) else {
            return;
        };
        let incomplete = stream.reset_reason(code, client);
        self.emit(id, incomplete, out);
    }

    /// Emits stream `id`; `incomplete` says why it did not finish normally.
    fn emit(&mut self, id: u32, incomplete: Option<String>, out: &mut Vec<Parsed>) {
        let Some(stream) = self.table.close(id) else {
            return;
        };
        let (req, resp) = stream.into_sides(self.client_dir());
        out.push(Parsed::Exchange(Box::new(exchange::exchange(id, req, resp, incomplete, &self.opts))));
    }

    /// Emits every open stream as incomplete for `reason`.
    fn emit_all(&mut self, reason: &str, out: &mut Vec<Parsed>) {
        for id in self.table.ids() {
            self.emit(id, Some(reason.to_owned()), out);
        }
    }
}

impl Http2 {
    /// Memory held, for the agent's budget: both directions' buffers and
    /// header blocks, both HPACK tables, every open stream.
    pub(crate) fn held_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.dirs.iter().map(|d| d.input.held_bytes() + d.framer.held_bytes()).sum::<usize>()
            + self.streams.hpack.iter().map(hpack::Decoder::held_bytes).sum::<usize>()
            + self.streams.table.held_bytes()
    }
}
