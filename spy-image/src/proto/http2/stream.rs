//! The HTTP/2 stream table: what each open stream has shown so far, each
//! way, and which streams just closed.
//!
//! Frames are already decoded when they get here; the table knows nothing
//! of framing or HPACK state, only decoded header fields, body bytes and
//! stream ends. Whether a stream is finished is decided here; turning one
//! into a record is left to `exchange`.

use std::collections::{BTreeMap, VecDeque};

use super::super::body::BodyBuf;
use super::super::grpc::MessageCounter;
use super::super::{hpack, redact};
use spy_protocol::record::{Direction, Header};

/// Open streams tracked per connection; past it the oldest is emitted as
/// incomplete. Each holds two bodies of at most `max_body`.
pub(crate) const MAX_STREAMS: usize = 512;
/// Recently finished stream ids, so that late frames (a WINDOW_UPDATE, a
/// DATA frame racing a reset) do not open a ghost stream.
const CLOSED_MEMORY: usize = 256;

/// Pseudo-headers of one message.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Pseudo {
    pub(super) method: Option<String>,
    pub(super) path: Option<String>,
    pub(super) authority: Option<String>,
    pub(super) status: Option<String>,
}

/// One decoded header block, sorted for the record.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct HeaderList {
    pub(super) pseudo: Pseudo,
    /// Regular headers in order (secrets redacted unless shown).
    pub(super) headers: Vec<Header>,
    pub(super) content_type: Option<String>,
    pub(super) content_encoding: Option<String>,
}

impl HeaderList {
    /// Sorts decoded fields: pseudo-headers and the content headers are
    /// picked out (the first of each counts), the rest kept in order.
    /// Content-Type and Content-Encoding also stay in the list.
    pub(super) fn sort(fields: Vec<hpack::Field>, show_secrets: bool) -> HeaderList {
        let mut list = HeaderList::default();
        for field in fields {
            let never_indexed = field.never_indexed && !show_secrets;
            let value = field.value.map(|v| String::from_utf8_lossy(&v).into_owned());
            let Some(name) = field.name.map(|n| String::from_utf8_lossy(&n).into_owned()) else {
                list.headers.push(redact::unknown_name(value, show_secrets));
                continue;
            };
            let value = value.unwrap_or_default();
            let slot = match name.as_str() {
                ":method" => &mut list.pseudo.method,
                ":path" => &mut list.pseudo.path,
                ":authority" => &mut list.pseudo.authority,
                ":status" => &mut list.pseudo.status,
                "content-type" => &mut list.content_type,
                "content-encoding" => &mut list.content_encoding,
                _ => {
                    list.headers.push(redact::header(name, value, never_indexed, show_secrets));
                    continue;
                }
            };
            if !name.starts_with(':') {
                list.headers.push(redact::header(name.clone(), value.clone(), never_indexed, show_secrets));
            }
            // A never-indexed :path or :authority is hidden like any other
            // field; :method and :status are protocol, not data.
            let hide = never_indexed && matches!(name.as_str(), ":path" | ":authority");
            slot.get_or_insert(if hide { redact::REDACTED.to_owned() } else { value });
        }
        list
    }

    /// Which way the client writes, if the pseudo-headers tell: a request
    /// goes from it (`:method`), a response to it (`:status`).
    pub(super) fn client_direction(&self, from: Direction) -> Option<Direction> {
        if self.pseudo.method.is_some() {
            Some(from)
        } else if self.pseudo.status.is_some() {
            Some(from.flip())
        } else {
            None
        }
    }
}

/// One direction of a stream: a request or a response.
#[derive(Debug, Default)]
pub(super) struct Side {
    pub(super) seen: bool,
    pub(super) ended: bool,
    pub(super) start_ts: u64,
    pub(super) end_ts: u64,
    pub(super) headers: Option<Vec<Header>>,
    pub(super) trailers: Vec<Header>,
    pub(super) pseudo: Pseudo,
    pub(super) content_type: Option<String>,
    pub(super) content_encoding: Option<String>,
    pub(super) body: BodyBuf,
    pub(super) grpc: MessageCounter,
}

impl Side {
    /// A header block for this side: the first final one is the message's
    /// headers (interim 1xx responses are passed over), later ones are
    /// trailers.
    pub(super) fn add_headers(&mut self, list: HeaderList) {
        let interim = list.pseudo.status.as_deref().is_some_and(|s| s.starts_with('1') && s.len() == 3);
        if self.headers.is_none() {
            if !interim {
                self.headers = Some(list.headers);
                self.pseudo = list.pseudo;
                self.content_type = list.content_type;
                self.content_encoding = list.content_encoding;
            }
        } else {
            self.trailers.extend(list.headers);
        }
    }
}

/// Both directions of one stream, indexed by [`Direction`].
#[derive(Debug, Default)]
pub(super) struct Stream {
    pub(super) sides: [Side; 2],
}

impl Stream {
    /// Side `dir` ended at `ts`. True when the stream is then complete: the
    /// response ended, and the request did too or was never seen (joined
    /// mid-way). `client` is the direction the client writes.
    pub(super) fn end_side(&mut self, dir: Direction, ts: u64, client: Direction) -> bool {
        let side = &mut self.sides[dir as usize];
        side.ended = true;
        side.end_ts = ts;
        let (req, resp) = (&self.sides[client as usize], &self.sides[client.flip() as usize]);
        resp.ended && (req.ended || !req.seen)
    }

    /// Why a reset with `code` leaves the stream incomplete; `None` when
    /// it does not: a server that answered in full may reset the rest of
    /// the request with NO_ERROR (RFC 9113 §8.1).
    pub(super) fn reset_reason(&self, code: u32, client: Direction) -> Option<String> {
        let answered = code == 0 && self.sides[client.flip() as usize].ended;
        (!answered).then(|| format!("stream reset ({})", error_name(code)))
    }

    /// (request, response), `client` being the direction the client writes.
    pub(super) fn into_sides(self, client: Direction) -> (Side, Side) {
        let [send, recv] = self.sides;
        if client == Direction::Send {
            (send, recv)
        } else {
            (recv, send)
        }
    }
}

/// Whether a stream id may open a stream now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// Open, or free to open.
    Open,
    /// Just closed: a late frame, ignored.
    Closed,
    /// New, and the table is full: this stream must be emitted first.
    Evict(u32),
}

/// Open streams by id, and the ids that recently closed.
#[derive(Debug, Default)]
pub(super) struct StreamTable {
    open: BTreeMap<u32, Stream>,
    closed: VecDeque<u32>,
}

impl StreamTable {
    pub(super) fn admission(&self, id: u32) -> Admission {
        if self.closed.contains(&id) {
            return Admission::Closed;
        }
        if !self.open.contains_key(&id) && self.open.len() >= MAX_STREAMS {
            if let Some(&oldest) = self.open.keys().next() {
                return Admission::Evict(oldest);
            }
        }
        Admission::Open
    }

    /// Side `dir` of stream `id`, opened if new; `ts` is when it was first
    /// seen. Ask [`StreamTable::admission`] first.
    pub(super) fn open(&mut self, id: u32, dir: Direction, ts: u64) -> &mut Side {
        let side = &mut self.open.entry(id).or_default().sides[dir as usize];
        if !side.seen {
            side.seen = true;
            side.start_ts = ts;
        }
        side
    }

    pub(super) fn get(&self, id: u32) -> Option<&Stream> {
        self.open.get(&id)
    }

    pub(super) fn get_mut(&mut self, id: u32) -> Option<&mut Stream> {
        self.open.get_mut(&id)
    }

    /// Side `dir` of stream `id` if it is open.
    pub(super) fn side_mut(&mut self, id: u32, dir: Direction) -> Option<&mut Side> {
        self.open.get_mut(&id).map(|s| &mut s.sides[dir as usize])
    }

    pub(super) fn is_open(&self, id: u32) -> bool {
        self.open.contains_key(&id)
    }

    pub(super) fn is_closed(&self, id: u32) -> bool {
        self.closed.contains(&id)
    }

    /// Takes stream `id` out of the table and remembers it closed.
    pub(super) fn close(&mut self, id: u32) -> Option<Stream> {
        let stream = self.open.remove(&id)?;
        self.remember_closed(id);
        Some(stream)
    }

    /// Remembers `id` closed without it ever being open (its headers could
    /// not be read).
    pub(super) fn remember_closed(&mut self, id: u32) {
        if self.closed.len() >= CLOSED_MEMORY {
            self.closed.pop_front();
        }
        self.closed.push_back(id);
    }

    /// Open stream ids, oldest first.
    pub(super) fn ids(&self) -> Vec<u32> {
        self.open.keys().copied().collect()
    }
}

/// An RST_STREAM / GOAWAY error code by its RFC 9113 §7 name.
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
    NAMES.get(code as usize).map_or_else(|| format!("error {code:#x}"), |n| (*n).to_owned())
}

/// Memory held, for the agent's budget (see `proto::held`).
impl StreamTable {
    /// A walk over the open streams, which [`MAX_STREAMS`] bounds.
    pub(super) fn held_bytes(&self) -> usize {
        self.closed.capacity() * std::mem::size_of::<u32>()
            + self.open.values().map(|s| std::mem::size_of::<(u32, Stream)>() + s.held_bytes()).sum::<usize>()
    }
}

impl Stream {
    fn held_bytes(&self) -> usize {
        self.sides.iter().map(Side::held_bytes).sum()
    }
}

impl Side {
    fn held_bytes(&self) -> usize {
        use super::super::held::{headers, opt_string};
        let Pseudo { method, path, authority, status } = &self.pseudo;
        self.headers.as_ref().map_or(0, headers)
            + headers(&self.trailers)
            + opt_string(method)
            + opt_string(path)
            + opt_string(authority)
            + opt_string(status)
            + opt_string(&self.content_type)
            + opt_string(&self.content_encoding)
            + self.body.held_bytes()
            + self.grpc.held_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spy_protocol::record::Direction::{Recv, Send};

    fn field(name: &str, value: &str) -> hpack::Field {
        hpack::Field {
            name: Some(name.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            never_indexed: false,
        }
    }

    fn names(headers: &[Header]) -> Vec<&str> {
        headers.iter().map(|h| h.name.as_str()).collect()
    }

    #[test]
    fn fields_are_sorted_into_pseudo_content_and_the_rest() {
        let list = HeaderList::sort(
            vec![
                field(":method", "POST"),
                field(":path", "/a"),
                field(":path", "/second-is-ignored"),
                field("content-type", "application/grpc"),
                field("authorization", "Bearer x"),
                hpack::Field { name: None, value: Some(b"v".to_vec()), never_indexed: false },
                field("content-encoding", "gzip"),
            ],
            false,
        );
        assert_eq!(list.pseudo.method.as_deref(), Some("POST"));
        assert_eq!(list.pseudo.path.as_deref(), Some("/a"));
        assert_eq!(list.content_type.as_deref(), Some("application/grpc"));
        assert_eq!(list.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(names(&list.headers), ["content-type", "authorization", "", "content-encoding"]);
        assert!(list.headers[1].redacted && list.headers[2].unknown);
        assert_eq!(list.client_direction(Send), Some(Send));

        let response = HeaderList::sort(vec![field(":status", "200")], false);
        assert_eq!(response.client_direction(Send), Some(Recv));
        assert_eq!(HeaderList::default().client_direction(Send), None);
    }

    #[test]
    fn interim_responses_are_passed_over_and_later_blocks_are_trailers() {
        let list = |fields| HeaderList::sort(fields, false);
        let mut side = Side::default();
        side.add_headers(list(vec![field(":status", "100"), field("x-interim", "1")]));
        assert!(side.headers.is_none());
        side.add_headers(list(vec![field(":status", "200"), field("x-a", "1")]));
        side.add_headers(list(vec![field("grpc-status", "0")]));
        assert_eq!(side.pseudo.status.as_deref(), Some("200"));
        assert_eq!(side.headers.as_deref().map(names), Some(vec!["x-a"]));
        assert_eq!(names(&side.trailers), ["grpc-status"]);
    }

    #[test]
    fn a_stream_is_complete_when_its_response_ends_after_its_request() {
        let mut stream = Stream::default();
        stream.sides[Send as usize].seen = true;
        stream.sides[Recv as usize].seen = true;
        assert!(!stream.end_side(Recv, 5, Send), "the request goes on");
        assert!(stream.end_side(Send, 7, Send));
        assert_eq!(stream.sides[Send as usize].end_ts, 7);
        // Joined mid-way: no request seen, the response's end is enough.
        let mut joined = Stream::default();
        assert!(joined.end_side(Send, 1, Recv));
    }

    #[test]
    fn resets_leave_a_stream_incomplete_unless_it_was_answered() {
        let mut stream = Stream::default();
        assert_eq!(stream.reset_reason(8, Send).as_deref(), Some("stream reset (CANCEL)"));
        assert_eq!(stream.reset_reason(0, Send).as_deref(), Some("stream reset (NO_ERROR)"));
        stream.sides[Recv as usize].ended = true;
        assert_eq!(stream.reset_reason(0, Send), None);
        assert_eq!(stream.reset_reason(0x42, Send).as_deref(), Some("stream reset (error 0x42)"));
    }

    #[test]
    fn the_table_is_bounded_and_remembers_closed_ids() {
        let mut table = StreamTable::default();
        for id in 0..MAX_STREAMS as u32 {
            assert_eq!(table.admission(id * 2 + 1), Admission::Open);
            table.open(id * 2 + 1, Send, u64::from(id));
        }
        assert_eq!(table.admission(1), Admission::Open, "already open");
        assert_eq!(table.admission(100_001), Admission::Evict(1));
        assert!(table.close(1).is_some());
        assert!(table.is_closed(1) && !table.is_open(1));
        assert_eq!(table.admission(1), Admission::Closed);
        assert!(table.close(1).is_none());
        for id in 0..CLOSED_MEMORY as u32 {
            table.remember_closed(1_000_000 + id);
        }
        assert!(!table.is_closed(1), "forgotten after {CLOSED_MEMORY}");
        assert_eq!(table.ids().len(), MAX_STREAMS - 1);
    }

    #[test]
    fn sides_keep_when_they_were_first_seen() {
        let mut table = StreamTable::default();
        table.open(3, Recv, 10);
        table.open(3, Recv, 20);
        let stream = table.get(3).expect("open");
        assert_eq!(stream.sides[Recv as usize].start_ts, 10);
        assert!(!stream.sides[Send as usize].seen);
    }
}
