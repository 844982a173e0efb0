//! The HTTP/2 frame codec of one direction: frame headers, the frame types
//! we read, and the caps that keep hostile lengths cheap.
//!
//! Bytes go in, [`FrameEvent`]s come out; nothing here knows about
//! streams, HPACK or records. Payloads are streamed, never buffered whole:
//! DATA is handed on piece by piece as it arrives, header blocks (HEADERS
//! or PUSH_PROMISE plus their CONTINUATIONs) accumulate up to
//! [`MAX_HEADER_BLOCK`], and control frames we do not need are skipped. So
//! a frame that claims 16 MB costs nothing but counting.

use crate::proto::Input;

pub(crate) const FRAME_HEADER_LEN: usize = 9;
/// Bytes of one header block (HEADERS or PUSH_PROMISE plus CONTINUATIONs).
/// Past it the block is dropped, its stream with it, and the HPACK table
/// forgotten (its inserts are lost).
pub(crate) const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Detection only: a first frame longer than this is not taken for HTTP/2.
const DETECT_MAX_FRAME_LEN: u32 = 1 << 20;

pub(super) const DATA: u8 = 0x0;
pub(super) const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
pub(super) const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
pub(super) const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
pub(super) const CONTINUATION: u8 = 0x9;

pub(super) const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
pub(super) const FLAG_END_HEADERS: u8 = 0x4;
pub(super) const FLAG_PADDED: u8 = 0x8;
pub(super) const FLAG_PRIORITY: u8 = 0x20;

/// The 9-byte header every frame starts with (RFC 9113 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FrameHead {
    pub(super) len: u32,
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) stream: u32,
}

impl FrameHead {
    /// The header at the front of `b`, and whether the reserved bit was
    /// set; `None` until all [`FRAME_HEADER_LEN`] bytes are there.
    pub(super) fn parse(b: &[u8]) -> Option<(FrameHead, bool)> {
        let b: &[u8; FRAME_HEADER_LEN] = b.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
        let len = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        let raw_stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        let reserved = raw_stream & 0x8000_0000 != 0;
        Some((FrameHead { len, kind: b[3], flags: b[4], stream: raw_stream & 0x7fff_ffff }, reserved))
    }

    pub(super) fn has(&self, flag: u8) -> bool {
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
        HEADERS => (on_stream, FLAG_END_STREAM | FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY),
        PRIORITY => (on_stream && h.len == 5, 0),
        RST_STREAM => (on_stream && h.len == 4, 0),
        SETTINGS => (!on_stream && h.len % 6 == 0 && (!h.has(FLAG_ACK) || h.len == 0), FLAG_ACK),
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
    Some(if h.kind == SETTINGS && !h.has(FLAG_ACK) { FirstFrame::Settings } else { FirstFrame::Other })
}

/// Bytes before a frame's content: pad length, priority, promised id.
pub(super) fn prefix_len(head: &FrameHead) -> usize {
    let padded = usize::from(head.has(FLAG_PADDED) && matches!(head.kind, DATA | HEADERS | PUSH_PROMISE));
    match head.kind {
        HEADERS if head.has(FLAG_PRIORITY) => padded + 5,
        PUSH_PROMISE => padded + 4,
        DATA | HEADERS => padded,
        _ => 0,
    }
}

/// A header block being gathered from HEADERS/PUSH_PROMISE + CONTINUATION.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct HeaderBlock {
    pub(super) stream: u32,
    /// From a PUSH_PROMISE: decoded for the HPACK table only.
    pub(super) promise: bool,
    /// The block's bytes; emptied once it is oversized.
    pub(super) buf: Vec<u8>,
    /// Past [`MAX_HEADER_BLOCK`]: its bytes were dropped.
    pub(super) oversized: bool,
    /// The HEADERS frame carried END_STREAM.
    pub(super) end_stream: bool,
    /// When its first frame header arrived.
    pub(super) ts: u64,
}

impl HeaderBlock {
    /// More bytes of the block, within [`MAX_HEADER_BLOCK`].
    fn extend(&mut self, bytes: &[u8]) {
        if self.buf.len() + bytes.len() > MAX_HEADER_BLOCK {
            self.oversized = true;
            self.buf = Vec::new();
        }
        if !self.oversized {
            self.buf.extend_from_slice(bytes);
        }
    }
}

/// What a direction's frames say, in order, for the stream layer.
#[derive(Debug)]
pub(super) enum FrameEvent<'a> {
    /// A DATA frame on `stream` begins; its header arrived at `ts`.
    DataStart { stream: u32, ts: u64 },
    /// Payload bytes of the current DATA frame (padding excluded).
    Data { stream: u32, bytes: &'a [u8] },
    /// A DATA frame with END_STREAM is over; its last bytes came at `ts`.
    EndStream { stream: u32, ts: u64 },
    /// A header block is complete; its last bytes came at `ts`.
    Headers { block: HeaderBlock, ts: u64 },
    /// RST_STREAM on `stream` with its error code.
    Reset { stream: u32, code: u32 },
}

/// Where bytes lost in capture fell, when the framing can step over them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stepped {
    /// Inside the payload of a DATA frame on this stream: its body has a hole.
    Data(u32),
    /// Inside padding or a frame we skip anyway.
    Unread,
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

/// One direction's framing: where it is in the current frame, and the
/// header block it is gathering.
#[derive(Debug)]
pub(super) struct Framer {
    state: FrameState,
    block: Option<HeaderBlock>,
}

impl Default for Framer {
    fn default() -> Self {
        Framer { state: FrameState::Head, block: None }
    }
}

impl Framer {
    /// Reads frames from the front of `input` while whole pieces are there,
    /// telling `sink` what they say. `Err`: the framing is broken (the
    /// connection cannot be followed any further).
    pub(super) fn run(&mut self, input: &mut Input, sink: &mut impl FnMut(FrameEvent<'_>)) -> Result<(), String> {
        loop {
            let avail = input.bytes().len();
            match self.state {
                FrameState::Head => {
                    let Some((head, _)) = FrameHead::parse(input.bytes()) else {
                        return Ok(());
                    };
                    let ts = input.front_ts();
                    input.consume(FRAME_HEADER_LEN);
                    self.start_frame(head, ts, sink)?;
                }
                FrameState::Prefix(head) => {
                    let need = prefix_len(&head);
                    if avail < need {
                        return Ok(());
                    }
                    let pad = if head.has(FLAG_PADDED) { u32::from(input.bytes()[0]) } else { 0 };
                    let need = need as u32;
                    if need + pad > head.len {
                        return Err(format!("HTTP/2: padding longer than frame on stream {}", head.stream));
                    }
                    input.consume(need as usize);
                    self.state = FrameState::Content { head, remaining: head.len - need - pad, pad };
                }
                FrameState::Content { head, remaining: 0, pad } => {
                    if pad > 0 {
                        self.state = FrameState::Padding { head, remaining: pad };
                    } else {
                        self.state = FrameState::Head;
                        self.end_frame(head, input.last_ts(), sink);
                    }
                }
                FrameState::Content { head, remaining, pad } => {
                    if avail == 0 {
                        return Ok(());
                    }
                    let n = (remaining as usize).min(avail);
                    self.content(&head, &input.bytes()[..n], sink);
                    input.consume(n);
                    self.state = FrameState::Content { head, remaining: remaining - n as u32, pad };
                }
                FrameState::Padding { head, remaining: 0 } => {
                    self.state = FrameState::Head;
                    self.end_frame(head, input.last_ts(), sink);
                }
                FrameState::Padding { head, remaining } => {
                    if avail == 0 {
                        return Ok(());
                    }
                    let n = (remaining as usize).min(avail);
                    input.consume(n);
                    self.state = FrameState::Padding { head, remaining: remaining - n as u32 };
                }
                FrameState::Skip { remaining: 0 } => self.state = FrameState::Head,
                FrameState::Skip { remaining } => {
                    if avail == 0 {
                        return Ok(());
                    }
                    let n = (remaining as usize).min(avail);
                    input.consume(n);
                    self.state = FrameState::Skip { remaining: remaining - n as u32 };
                }
                FrameState::Rst(head) => {
                    let Some(code) = input.bytes().get(..4) else {
                        return Ok(());
                    };
                    let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
                    input.consume(4);
                    self.state = FrameState::Head;
                    sink(FrameEvent::Reset { stream: head.stream, code });
                }
            }
        }
    }

    /// `len` bytes were lost at the current position (the input is empty):
    /// steps over them if they fall within a payload whose length is known
    /// and whose bytes we would not parse. `None`: they cannot be stepped
    /// over, and the framing is lost.
    pub(super) fn step_over(&mut self, len: u64) -> Option<Stepped> {
        let within = |remaining: u32| u64::from(remaining) >= len;
        match &mut self.state {
            FrameState::Content { head, remaining, .. } if head.kind == DATA && within(*remaining) => {
                *remaining -= len as u32;
                Some(Stepped::Data(head.stream))
            }
            FrameState::Padding { remaining, .. } | FrameState::Skip { remaining } if within(*remaining) => {
                *remaining -= len as u32;
                Some(Stepped::Unread)
            }
            _ => None,
        }
    }

    fn start_frame(&mut self, head: FrameHead, ts: u64, sink: &mut impl FnMut(FrameEvent<'_>)) -> Result<(), String> {
        check_sequence(&head, self.block.as_ref().map(|b| b.stream))?;
        let content = |head: FrameHead| {
            if prefix_len(&head) > 0 {
                FrameState::Prefix(head)
            } else {
                FrameState::Content { head, remaining: head.len, pad: 0 }
            }
        };
        self.state = match head.kind {
            DATA => {
                sink(FrameEvent::DataStart { stream: head.stream, ts });
                content(head)
            }
            HEADERS | PUSH_PROMISE => {
                self.block = Some(HeaderBlock {
                    stream: head.stream,
                    promise: head.kind == PUSH_PROMISE,
                    buf: Vec::new(),
                    oversized: false,
                    end_stream: head.kind == HEADERS && head.has(FLAG_END_STREAM),
                    ts,
                });
                content(head)
            }
            CONTINUATION => content(head),
            RST_STREAM => FrameState::Rst(head),
            // SETTINGS, PING, GOAWAY, WINDOW_UPDATE, PRIORITY and unknown
            // types change nothing we show.
            _ => FrameState::Skip { remaining: head.len },
        };
        Ok(())
    }

    /// Payload bytes of the current frame.
    fn content(&mut self, head: &FrameHead, bytes: &[u8], sink: &mut impl FnMut(FrameEvent<'_>)) {
        if head.kind == DATA {
            sink(FrameEvent::Data { stream: head.stream, bytes });
        } else if let Some(block) = &mut self.block {
            block.extend(bytes);
        }
    }

    fn end_frame(&mut self, head: FrameHead, ts: u64, sink: &mut impl FnMut(FrameEvent<'_>)) {
        match head.kind {
            DATA if head.has(FLAG_END_STREAM) => sink(FrameEvent::EndStream { stream: head.stream, ts }),
            HEADERS | PUSH_PROMISE | CONTINUATION if head.has(FLAG_END_HEADERS) => {
                if let Some(block) = self.block.take() {
                    sink(FrameEvent::Headers { block, ts });
                }
            }
            _ => {}
        }
    }
}

/// Whether frame `head` may come now, `open_block` being the stream whose
/// header block awaits its CONTINUATION (RFC 9113 §6.10: nothing else may
/// come between), and whether its flags fit its length.
fn check_sequence(head: &FrameHead, open_block: Option<u32>) -> Result<(), String> {
    if let Some(stream) = open_block {
        if head.kind != CONTINUATION || head.stream != stream {
            return Err(format!("HTTP/2: header block of stream {stream} not continued"));
        }
    }
    let needs_stream = matches!(head.kind, DATA | HEADERS | PUSH_PROMISE | CONTINUATION | RST_STREAM);
    if needs_stream && head.stream == 0 {
        return Err(format!("HTTP/2: frame type {} on stream 0", head.kind));
    }
    if prefix_len(head) > head.len as usize {
        return Err(format!("HTTP/2: frame type {} too short for its flags", head.kind));
    }
    match head.kind {
        CONTINUATION if open_block.is_none() => {
            Err(format!("HTTP/2: CONTINUATION without HEADERS on stream {}", head.stream))
        }
        RST_STREAM if head.len != 4 => Err("HTTP/2: RST_STREAM length is not 4".into()),
        _ => Ok(()),
    }
}

impl Framer {
    /// Memory held: the header block being gathered (for the agent's budget).
    pub(super) fn held_bytes(&self) -> usize {
        self.block.as_ref().map_or(0, |b| b.buf.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(len: u32, kind: u8, flags: u8, stream: u32) -> Vec<u8> {
        let mut b = len.to_be_bytes()[1..].to_vec();
        b.push(kind);
        b.push(flags);
        b.extend_from_slice(&stream.to_be_bytes());
        b
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = raw(payload.len() as u32, kind, flags, stream);
        b.extend_from_slice(payload);
        b
    }

    /// What `wire` gives when fed in two pieces split at `split`, events
    /// owned so they can be compared.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        DataStart(u32),
        Data(u32, Vec<u8>),
        EndStream(u32),
        Headers(HeaderBlock),
        Reset(u32, u32),
        Error(String),
    }

    fn feed_split(wire: &[u8], split: usize) -> Vec<Seen> {
        let mut framer = Framer::default();
        let mut input = Input::default();
        let mut seen = Vec::new();
        for piece in [&wire[..split], &wire[split..]] {
            input.push(0, piece);
            let result = framer.run(&mut input, &mut |event| {
                seen.push(match event {
                    FrameEvent::DataStart { stream, .. } => Seen::DataStart(stream),
                    FrameEvent::Data { stream, bytes } => Seen::Data(stream, bytes.to_vec()),
                    FrameEvent::EndStream { stream, .. } => Seen::EndStream(stream),
                    FrameEvent::Headers { block, .. } => Seen::Headers(block),
                    FrameEvent::Reset { stream, code } => Seen::Reset(stream, code),
                })
            });
            if let Err(message) = result {
                seen.push(Seen::Error(message));
                break;
            }
        }
        // DATA pieces depend on the split: join neighbours of one stream.
        let mut joined: Vec<Seen> = Vec::new();
        for s in seen {
            match (joined.last_mut(), s) {
                (Some(Seen::Data(a, bytes)), Seen::Data(b, more)) if *a == b => {
                    bytes.extend(more);
                }
                (_, s) => joined.push(s),
            }
        }
        joined
    }

    #[test]
    fn frame_heads_decode_only_when_whole_at_every_split() {
        let wire = raw(0x01_02_03, HEADERS, FLAG_END_HEADERS, 0x8000_0007);
        for split in 0..FRAME_HEADER_LEN {
            assert_eq!(FrameHead::parse(&wire[..split]), None, "split {split}");
        }
        let mut longer = wire.clone();
        longer.push(0xff);
        for bytes in [&wire[..], &longer[..]] {
            assert_eq!(
                FrameHead::parse(bytes),
                Some((FrameHead { len: 0x01_02_03, kind: HEADERS, flags: FLAG_END_HEADERS, stream: 7 }, true))
            );
        }
    }

    #[test]
    fn first_frames_are_judged_strictly() {
        assert_eq!(plausible_first_frame(&raw(6, SETTINGS, 0, 0)), Some(FirstFrame::Settings));
        assert_eq!(plausible_first_frame(&raw(0, SETTINGS, FLAG_ACK, 0)), Some(FirstFrame::Other));
        assert_eq!(plausible_first_frame(&raw(10, HEADERS, FLAG_END_HEADERS, 1)), Some(FirstFrame::Other));
        // SETTINGS on a stream, an ACK with a payload, a length that is no
        // multiple of 6, a flag the type lacks, the reserved bit, an
        // unknown type, a huge frame, too few bytes.
        for bad in [
            raw(6, SETTINGS, 0, 1),
            raw(6, SETTINGS, FLAG_ACK, 0),
            raw(7, SETTINGS, 0, 0),
            raw(8, PING, FLAG_END_HEADERS, 0),
            raw(4, WINDOW_UPDATE, 0, 0x8000_0000),
            raw(4, 0x20, 0, 1),
            raw(DETECT_MAX_FRAME_LEN + 1, DATA, 0, 1),
            raw(6, SETTINGS, 0, 0)[..8].to_vec(),
        ] {
            assert_eq!(plausible_first_frame(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn prefixes_follow_type_and_flags() {
        let head = |kind, flags| FrameHead { len: 100, kind, flags, stream: 1 };
        assert_eq!(prefix_len(&head(DATA, 0)), 0);
        assert_eq!(prefix_len(&head(DATA, FLAG_PADDED)), 1);
        assert_eq!(prefix_len(&head(HEADERS, FLAG_PRIORITY)), 5);
        assert_eq!(prefix_len(&head(HEADERS, FLAG_PRIORITY | FLAG_PADDED)), 6);
        assert_eq!(prefix_len(&head(PUSH_PROMISE, FLAG_PADDED)), 5);
        // CONTINUATION has no padding field, whatever its flags say.
        assert_eq!(prefix_len(&head(CONTINUATION, FLAG_PADDED)), 0);
    }

    #[test]
    fn frames_give_the_same_events_at_every_split() {
        let mut wire = frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]);
        // Padded, prioritised HEADERS continued twice.
        wire.extend(frame(
            HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            3,
            &[2, 0, 0, 0, 0, 9, b'a', b'b', 0, 0],
        ));
        wire.extend(frame(CONTINUATION, 0, 3, b"cd"));
        wire.extend(frame(CONTINUATION, FLAG_END_HEADERS, 3, b"e"));
        wire.extend(frame(DATA, FLAG_PADDED | FLAG_END_STREAM, 3, &[1, b'x', b'y', 0]));
        wire.extend(frame(0x20, 0xff, 0, b"unknown types are skipped"));
        wire.extend(frame(RST_STREAM, 0, 5, &[0, 0, 0, 8]));
        wire.extend(frame(DATA, 0, 5, b""));
        let expected = vec![
            Seen::Headers(HeaderBlock {
                stream: 3,
                promise: false,
                buf: b"abcde".to_vec(),
                oversized: false,
                end_stream: true,
                ts: 0,
            }),
            Seen::DataStart(3),
            Seen::Data(3, b"xy".to_vec()),
            Seen::EndStream(3),
            Seen::Reset(5, 8),
            Seen::DataStart(5),
        ];
        for split in 0..=wire.len() {
            assert_eq!(feed_split(&wire, split), expected, "split {split}");
        }
    }

    #[test]
    fn header_blocks_past_the_cap_are_marked_and_dropped() {
        let chunk = vec![0u8; MAX_HEADER_BLOCK / 2 + 1];
        let mut wire = frame(HEADERS, 0, 1, &chunk);
        wire.extend(frame(CONTINUATION, FLAG_END_HEADERS, 1, &chunk));
        let seen = feed_split(&wire, wire.len());
        let [Seen::Headers(block)] = &seen[..] else {
            panic!("one block: {seen:?}");
        };
        assert!(block.oversized && block.buf.is_empty(), "{block:?}");
    }

    #[test]
    fn broken_sequences_are_framing_errors() {
        let headers = frame(HEADERS, 0, 1, b"a");
        let cases: [(Vec<u8>, &str); 6] = [
            ([headers.clone(), frame(DATA, 0, 1, b"")].concat(), "HTTP/2: header block of stream 1 not continued"),
            (
                [headers, frame(CONTINUATION, FLAG_END_HEADERS, 3, b"")].concat(),
                "HTTP/2: header block of stream 1 not continued",
            ),
            (frame(CONTINUATION, FLAG_END_HEADERS, 1, b""), "HTTP/2: CONTINUATION without HEADERS on stream 1"),
            (frame(DATA, 0, 0, b""), "HTTP/2: frame type 0 on stream 0"),
            (frame(RST_STREAM, 0, 1, &[0; 3]), "HTTP/2: RST_STREAM length is not 4"),
            (frame(HEADERS, FLAG_PRIORITY, 1, &[0; 4]), "HTTP/2: frame type 1 too short for its flags"),
        ];
        for (wire, message) in cases {
            for split in 0..=wire.len() {
                let seen = feed_split(&wire, split);
                assert_eq!(seen.last(), Some(&Seen::Error(message.into())), "split {split}");
            }
        }
        let padded = frame(DATA, FLAG_PADDED, 1, &[5, 0, 0]);
        assert_eq!(
            feed_split(&padded, padded.len()).last(),
            Some(&Seen::Error("HTTP/2: padding longer than frame on stream 1".into()))
        );
    }

    #[test]
    fn lost_bytes_are_stepped_over_only_inside_known_payloads() {
        let mut framer = Framer::default();
        let mut input = Input::default();
        let mut run = |framer: &mut Framer, bytes: &[u8]| {
            input.push(0, bytes);
            framer.run(&mut input, &mut |_| {}).expect("framing");
        };
        // Between frames: nothing to step over.
        assert_eq!(framer.step_over(1), None);
        run(&mut framer, &raw(10, DATA, 0, 7));
        assert_eq!(framer.step_over(4), Some(Stepped::Data(7)));
        assert_eq!(framer.step_over(7), None, "past the frame");
        assert_eq!(framer.step_over(6), Some(Stepped::Data(7)));
        run(&mut framer, &raw(3, PING, 0, 0));
        assert_eq!(framer.step_over(3), Some(Stepped::Unread));
        run(&mut framer, &raw(3, HEADERS, 0, 1));
        assert_eq!(framer.step_over(1), None, "inside a header block");
    }
}
