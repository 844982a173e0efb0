//! Connections: decoded TLS data events in, ordered per-direction byte
//! streams out to each connection's protocol parser, records out of that.
//!
//! Pure: the spy decodes kernel events into [`DataEvent`] and tells the
//! tracker what it knows about each process; the tracker knows nothing of
//! eBPF.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;

use spy_protocol::record::{
    Chunk, Connection, Direction, HandshakeStats, Payload, PodRef, Record, Role, Stats, TlsLibrary,
};

use crate::proto::{ConnectionParser, Masked, ParseOptions, Parsed, RawMasker};

pub mod budget;
mod handshakes;
mod stream;

pub use budget::Budget;

use handshakes::TupleEntry;
pub use handshakes::{Plaintext, WireHandshake};
pub use stream::CallPosition;
use stream::{Piece, Placed, StreamOffsets};

/// Exited processes whose names are kept for handshakes that come late.
const MAX_EXITED_REMEMBERED: usize = 1024;

/// One piece of plaintext a TLS call moved (a call larger than one kernel
/// event arrives as several, `call_offset` apart).
#[derive(Clone, Debug)]
pub struct DataEvent<'a> {
    pub tgid: u32,
    pub tid: u32,
    /// Wall-clock time, Unix nanoseconds.
    pub ts_ns: u64,
    /// The library's connection object (SSL*, *tls.Conn): unique per live
    /// connection within a process.
    pub conn_ptr: u64,
    pub direction: Direction,
    pub library: TlsLibrary,
    pub call_len: u64,
    pub call_offset: u64,
    /// The call's number and the bytes before it in its connection and
    /// direction, as the kernel counted them (`None`: the source numbers
    /// no calls; then only losses inside a call are found).
    pub position: Option<CallPosition>,
    /// The socket fd the call used, when known.
    pub fd: Option<i32>,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// The thread's name, used until the process is described.
    pub comm: &'a str,
    pub data: &'a [u8],
}

/// What the spy knows about a target process.
#[derive(Clone, Debug, Default)]
pub struct ProcessMeta {
    pub name: String,
    pub ns_pid: Option<u32>,
    pub pod: Option<PodRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConnKey {
    tgid: u32,
    conn_ptr: u64,
}

#[derive(Debug)]
struct ConnState {
    record: Connection,
    parser: ConnectionParser,
    offsets: StreamOffsets,
    seen_data: bool,
    /// Secrets in chunks (plaintext no parser claimed), per direction:
    /// redaction holds when parsing does not.
    maskers: [RawMasker; 2],
    /// The socket fd, for a close the kernel reports by fd.
    fd: Option<i32>,
    /// A warning about lost calls was sent (one per connection: the
    /// exchanges each gap broke say the rest).
    gap_warned: bool,
}

/// Counters the tracker keeps for the `stats` record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    pub connections: u64,
    pub exchanges: u64,
    pub chunks: u64,
    pub parse_errors: u64,
    pub bytes: u64,
    pub gap_bytes: u64,
    /// Places in the streams where the kernel lost plaintext, and the
    /// whole TLS calls lost at them.
    pub gaps: u64,
    pub gap_calls: u64,
    /// Handshake records sent, and how many of them were decrypted.
    pub handshakes: u64,
    pub handshakes_decrypted: u64,
}

impl TrackerStats {
    /// The tracker's part of the `stats` record.
    /// Every field is named: a new counter must be mapped, or said to
    /// have no place in the record (`_`).
    pub fn as_record(&self) -> Stats {
        let TrackerStats {
            connections,
            exchanges,
            chunks,
            parse_errors,
            bytes,
            gap_bytes,
            gaps,
            gap_calls,
            handshakes,
            handshakes_decrypted,
        } = *self;
        Stats {
            bytes,
            gap_bytes,
            gaps,
            gap_calls,
            connections,
            exchanges,
            chunks,
            parse_errors,
            handshakes: HandshakeStats { handshakes, decrypted: handshakes_decrypted, ..HandshakeStats::default() },
            ..Stats::default()
        }
    }
}

/// All connections of all targets.
#[derive(Debug)]
pub struct Tracker {
    options: ParseOptions,
    /// No protocol parsing: every byte becomes a chunk, exactly as moved.
    raw: bool,
    conns: HashMap<ConnKey, ConnState>,
    processes: HashMap<u32, ProcessMeta>,
    /// (tgid, fd) → the connection on that socket, for closes by fd.
    fds: HashMap<(u32, i32), ConnKey>,
    /// (local, remote) → the connection's id: how a handshake seen on the
    /// wire and the plaintext of the same connection meet.
    tuples: HashMap<(SocketAddr, SocketAddr), TupleEntry>,
    /// Processes that exited lately, for handshakes that arrive after them.
    exited: std::collections::VecDeque<(u32, ProcessMeta)>,
    /// The latest wall-clock time seen in events.
    last_ts_ns: u64,
    next_id: u64,
    pub stats: TrackerStats,
    /// What each connection holds against the agent's memory budget.
    budget: Budget,
}

impl Tracker {
    pub fn new(options: ParseOptions, raw: bool) -> Self {
        Tracker {
            options,
            raw,
            conns: HashMap::new(),
            fds: HashMap::new(),
            processes: HashMap::new(),
            tuples: HashMap::new(),
            exited: std::collections::VecDeque::new(),
            last_ts_ns: 0,
            next_id: 1,
            stats: TrackerStats::default(),
            budget: Budget::unlimited(),
        }
    }

    /// Describes a process; applies to connections opened from now on.
    pub fn describe_process(&mut self, tgid: u32, meta: ProcessMeta) {
        self.processes.insert(tgid, meta);
    }

    /// Feeds one event; finished records are appended to `out`.
    pub fn on_data(&mut self, ev: &DataEvent<'_>, out: &mut Vec<Record>) {
        let key = ConnKey { tgid: ev.tgid, conn_ptr: ev.conn_ptr };
        self.last_ts_ns = self.last_ts_ns.max(ev.ts_ns);

        // The library reuses a freed connection object for a new connection:
        // a different socket under the same pointer ends the old one.
        if let Some(state) = self.conns.get(&key) {
            let known = (state.record.local, state.record.remote);
            if ev.remote.is_some() && known.1.is_some() && (ev.local, ev.remote) != known {
                self.close(key, "connection object reused", out);
            }
        }

        if !self.conns.contains_key(&key) {
            let record = self.new_connection(ev);
            self.stats.connections += 1;
            self.conns.insert(
                key,
                ConnState {
                    record,
                    parser: ConnectionParser::new(self.options.clone()),
                    offsets: StreamOffsets::default(),
                    seen_data: false,
                    maskers: Default::default(),
                    fd: None,
                    gap_warned: false,
                },
            );
            self.link_tuple(key, out);
        } else if ev.remote.is_some() && self.conns.get(&key).is_some_and(|s| s.record.remote.is_none()) {
            if let Some(state) = self.conns.get_mut(&key) {
                state.record.local = ev.local;
                state.record.remote = ev.remote;
            }
            self.link_tuple(key, out);
        }
        self.note_fd(key, ev.fd);
        let Some(state) = self.conns.get_mut(&key) else { return };
        if !state.seen_data && state.record.role == Role::Unknown {
            // Who speaks first is, for HTTP and nearly every TLS protocol,
            // the client; parsers that know better will say so.
            state.record.role = match ev.direction {
                Direction::Send => Role::Client,
                Direction::Recv => Role::Server,
            };
        }
        state.seen_data = true;

        let mut parsed = Vec::new();
        let piece = Piece {
            position: ev.position,
            call_offset: ev.call_offset,
            len: ev.data.len() as u64,
            call_len: ev.call_len,
        };
        let placed = state.offsets.place(ev.direction, piece);
        if placed.lost {
            self.stats.gaps += 1;
            self.stats.gap_bytes = self.stats.gap_bytes.saturating_add(placed.gap);
            self.stats.gap_calls = self.stats.gap_calls.saturating_add(placed.lost_calls);
            let here = lost_here(&placed, ev.direction);
            state.parser.gap(ev.direction, placed.gap, &mut parsed);
            // What the gap broke says where and how much.
            mark_lost(&mut parsed, &here);
            if !state.gap_warned {
                state.gap_warned = true;
                out.push(Record::Warning(spy_protocol::record::Warning {
                    message: format!(
                        "connection {} ({}): {here} at byte {} of the stream; later losses on it are marked in \
                         its exchanges",
                        state.record.id, state.record.process, placed.offset
                    ),
                    pid: Some(ev.tgid),
                }));
            }
        }

        self.stats.bytes += ev.data.len() as u64;
        if !self.raw {
            state.parser.feed(ev.direction, ev.ts_ns, ev.data, &mut parsed);
            // The protocol knows better than "who spoke first".
            if let Some(client) = state.parser.client_direction() {
                state.record.role = match client {
                    Direction::Send => Role::Client,
                    Direction::Recv => Role::Server,
                };
            }
        } else {
            let offset = placed.offset;
            parsed.push(Parsed::Unclaimed { direction: ev.direction, ts_ns: ev.ts_ns, offset, data: ev.data.to_vec() });
        }
        // Most events finish nothing (a body's middle): no copy of the
        // connection for those.
        let finished = !parsed.is_empty();
        if finished {
            let conn = state.record.clone();
            let first = out.len();
            self.emit(conn, parsed, out);
            if !self.options.show_secrets {
                if let Some(state) = self.conns.get_mut(&key) {
                    mask_chunks(&mut state.maskers, &mut out[first..]);
                }
            }
        }
        self.account(key, ev.ts_ns, ev.data.len(), finished, out);
    }

    /// The kernel says a connection ended: the library freed its object
    /// (`conn_ptr`), or the process closed its socket (`fd`). Its exchanges
    /// are finished and it is forgotten at once, budget and all.
    pub fn connection_closed(&mut self, tgid: u32, conn_ptr: Option<u64>, fd: Option<i32>, out: &mut Vec<Record>) {
        let by_ptr = conn_ptr.map(|conn_ptr| ConnKey { tgid, conn_ptr });
        let by_fd = fd.and_then(|fd| self.fds.get(&(tgid, fd)).copied());
        for key in [by_ptr, by_fd].into_iter().flatten() {
            if self.conns.contains_key(&key) {
                self.budget.stats.closed_connections += 1;
                self.close(key, "connection closed", out);
            }
        }
    }

    /// Remembers the connection's socket fd (it may be learnt late).
    fn note_fd(&mut self, key: ConnKey, fd: Option<i32>) {
        let Some(fd) = fd.filter(|&fd| fd >= 0) else { return };
        let Some(state) = self.conns.get_mut(&key) else { return };
        if state.fd == Some(fd) {
            return;
        }
        if let Some(old) = state.fd.replace(fd) {
            if self.fds.get(&(key.tgid, old)) == Some(&key) {
                self.fds.remove(&(key.tgid, old));
            }
        }
        self.fds.insert((key.tgid, fd), key);
    }

    /// A process exited: its connections end.
    pub fn process_exited(&mut self, tgid: u32, out: &mut Vec<Record>) {
        let keys: Vec<ConnKey> = self.conns.keys().filter(|k| k.tgid == tgid).copied().collect();
        for key in keys {
            self.close(key, "process exited", out);
        }
        if let Some(meta) = self.processes.remove(&tgid) {
            if self.exited.len() >= MAX_EXITED_REMEMBERED {
                self.exited.pop_front();
            }
            self.exited.push_back((tgid, meta));
        }
    }

    /// The session ends: flush every connection.
    pub fn finish(&mut self, out: &mut Vec<Record>) {
        self.flush_waiting_handshakes(out);
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.close(key, "session ended", out);
        }
    }

    fn close(&mut self, key: ConnKey, reason: &str, out: &mut Vec<Record>) {
        self.budget.forget(&key);
        if let Some(mut state) = self.conns.remove(&key) {
            if let Some(fd) = state.fd {
                if self.fds.get(&(key.tgid, fd)) == Some(&key) {
                    self.fds.remove(&(key.tgid, fd));
                }
            }
            self.tuple_closed(key, &state.record, reason == budget::EVICTED);
            let mut parsed = Vec::new();
            state.parser.finish(reason, &mut parsed);
            let first = out.len();
            self.emit(state.record, parsed, out);
            if !self.options.show_secrets {
                mask_chunks(&mut state.maskers, &mut out[first..]);
            }
        }
    }

    fn new_connection(&mut self, ev: &DataEvent<'_>) -> Connection {
        // A handshake seen on the wire may have reserved this one's id.
        let reserved = match (ev.local, ev.remote) {
            (Some(local), Some(remote)) => self.reserved_id(local, remote),
            _ => None,
        };
        let id = reserved.unwrap_or_else(|| {
            self.next_id += 1;
            format!("c{}", self.next_id - 1)
        });
        let meta = self.processes.get(&ev.tgid);
        Connection {
            id,
            pid: ev.tgid,
            ns_pid: meta.and_then(|m| m.ns_pid),
            process: meta.map_or_else(|| ev.comm.to_string(), |m| m.name.clone()),
            pod: meta.and_then(|m| m.pod.clone()),
            local: ev.local,
            remote: ev.remote,
            remote_name: None,
            role: Role::Unknown,
            tls_library: Some(ev.library),
        }
    }

    fn emit(&mut self, conn: Connection, parsed: Vec<Parsed>, out: &mut Vec<Record>) {
        let mut conn = Some(conn);
        let last = parsed.len().saturating_sub(1);
        for (i, item) in parsed.into_iter().enumerate() {
            // The last record takes the connection; the others a copy.
            let mut conn_for =
                || if i == last { conn.take().unwrap_or_default() } else { conn.clone().unwrap_or_default() };
            match item {
                Parsed::Exchange(mut exchange) => {
                    exchange.conn = conn_for();
                    self.stats.exchanges += 1;
                    out.push(Record::Exchange(exchange));
                }
                Parsed::Unclaimed { direction, ts_ns, offset, data } => {
                    self.stats.chunks += 1;
                    out.push(Record::Chunk(Chunk {
                        conn: conn_for(),
                        direction,
                        ts_ns,
                        offset,
                        len: data.len() as u64,
                        data: Payload::from_vec(data, false),
                        truncated: false,
                        redacted: false,
                    }));
                }
                Parsed::Error { .. } => self.stats.parse_errors += 1,
            }
        }
    }
}

/// What a gap is, in words, for the exchange it broke.
fn lost_here(placed: &Placed, direction: Direction) -> String {
    let stream = match direction {
        Direction::Send => "sent",
        Direction::Recv => "received",
    };
    match (placed.lost_calls, placed.gap) {
        (0, 0) => format!("TLS data {stream} lost here (how much is unknown: the kernel's count started over)"),
        (0, bytes) => format!("part of a TLS call lost here ({bytes} bytes {stream})"),
        (1, bytes) => format!("1 TLS call lost here ({bytes} bytes {stream})"),
        (calls, bytes) => format!("{calls} TLS calls lost here ({bytes} bytes {stream})"),
    }
}

/// Puts `here` in front of why each exchange a gap broke is incomplete.
fn mark_lost(parsed: &mut [Parsed], here: &str) {
    for item in parsed {
        if let Parsed::Exchange(exchange) = item {
            exchange.incomplete = Some(match exchange.incomplete.take() {
                Some(why) => format!("{here}: {why}"),
                None => here.to_string(),
            });
        }
    }
}

/// Masks secrets in the chunks among `records`, each through its
/// direction's masker (the state of a value cut by a call carries over to
/// the next chunk). Binary chunks are withheld: empty data, `redacted`,
/// `len` still what moved.
fn mask_chunks(maskers: &mut [RawMasker; 2], records: &mut [Record]) {
    for record in records {
        if let Record::Chunk(chunk) = record {
            match maskers[chunk.direction as usize].mask(&chunk.data.to_bytes()) {
                Masked::Text { data, masked: true } => {
                    chunk.data = Payload::from_vec(data, false);
                    chunk.redacted = true;
                }
                Masked::Text { masked: false, .. } => {}
                Masked::Withheld => {
                    chunk.data = Payload::default();
                    chunk.redacted = true;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn event<'a>(conn_ptr: u64, direction: Direction, data: &'a [u8]) -> DataEvent<'a> {
        DataEvent {
            tgid: 10,
            tid: 10,
            ts_ns: 1,
            conn_ptr,
            direction,
            library: TlsLibrary::Openssl,
            call_len: data.len() as u64,
            call_offset: 0,
            position: None,
            fd: None,
            local: Some("127.0.0.1:40000".parse().expect("addr")),
            remote: Some("127.0.0.1:443".parse().expect("addr")),
            comm: "curl",
            data,
        }
    }

    #[test]
    fn first_writer_is_the_client_and_bytes_keep_their_offsets() {
        let mut tracker = Tracker::new(ParseOptions::default(), true);
        let mut out = Vec::new();
        tracker.on_data(&event(1, Direction::Send, b"hello"), &mut out);
        tracker.on_data(&event(1, Direction::Send, b" world"), &mut out);
        tracker.on_data(&event(1, Direction::Recv, b"ok"), &mut out);
        let chunks: Vec<&Chunk> = out
            .iter()
            .map(|r| match r {
                Record::Chunk(c) => c,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].conn.role, Role::Client);
        assert_eq!(chunks[1].offset, 5);
        assert_eq!(chunks[2].offset, 0);
        assert_eq!(chunks[0].conn.id, chunks[2].conn.id);
        assert_eq!(tracker.stats.connections, 1);
    }

    fn chunk_text(out: &[Record]) -> String {
        out.iter()
            .filter_map(|r| match r {
                Record::Chunk(c) => Some(String::from_utf8_lossy(&c.data.to_bytes()).into_owned()),
                _ => None,
            })
            .collect()
    }

    /// Redaction does not depend on a parser: raw chunks, and the chunks of
    /// a connection joined in the middle of a body, mask secret header
    /// lines even when a call cuts one in two; --show-secrets shows them.
    #[test]
    fn chunks_never_show_secret_headers_unless_asked() {
        let request: &[u8] = b"GET /a HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nCookie: sid=c00kie\r\n\r\n";
        let (head, tail) = request.split_at(34); // inside "Bearer s3cret"
        for raw in [true, false] {
            for show_secrets in [false, true] {
                let options = ParseOptions { show_secrets, ..ParseOptions::default() };
                let mut tracker = Tracker::new(options, raw);
                let mut out = Vec::new();
                if !raw {
                    // Joined mid-body: the parser cannot claim what follows.
                    tracker.on_data(&event(1, Direction::Send, b"~~ not http at all\r\n"), &mut out);
                }
                tracker.on_data(&event(1, Direction::Send, head), &mut out);
                tracker.on_data(&event(1, Direction::Send, tail), &mut out);
                tracker.finish(&mut out);
                let text = chunk_text(&out);
                assert!(text.contains("Authorization: "), "raw={raw}: {text:?}");
                assert_eq!(
                    text.contains("s3cret") || text.contains("c00kie") || text.contains("cret"),
                    show_secrets,
                    "raw={raw} show_secrets={show_secrets}: {text:?}"
                );
                let redacted = out.iter().any(|r| matches!(r, Record::Chunk(c) if c.redacted));
                assert_eq!(redacted, !show_secrets);
            }
        }
    }

    /// 130 headers: the HTTP/1 parser gives up and the connection falls
    /// back to chunks, which still lose every secret (headers, query,
    /// JSON body), the ones in the request that made it give up included.
    #[test]
    fn a_connection_the_parser_gave_up_on_keeps_its_secrets() {
        let mut request = b"POST /t?access_token=qu3ry&id=1 HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n".to_vec();
        for i in 0..130 {
            request.extend(format!("X-Pad-{i}: v\r\n").bytes());
        }
        request.extend(b"Content-Type: application/json\r\nContent-Length: 21\r\n\r\n{\"password\":\"pw0rd\"}");
        let mut tracker = Tracker::new(ParseOptions::default(), false);
        let mut out = Vec::new();
        for piece in request.chunks(7) {
            tracker.on_data(&event(1, Direction::Send, piece), &mut out);
        }
        tracker.finish(&mut out);
        assert!(tracker.stats.parse_errors > 0 && tracker.stats.exchanges == 0, "{:?}", tracker.stats);
        let text = chunk_text(&out);
        assert!(text.contains("X-Pad-129: v") && text.contains("id=1"), "{text}");
        for secret in ["qu3ry", "s3cret", "pw0rd"] {
            assert!(!text.contains(secret), "{secret}: {text}");
        }
    }

    /// HTTP/2 frames (HPACK's Huffman coding hides header text from any
    /// scan) and other binary data go out empty and marked redacted, with
    /// their length, unless --show-secrets.
    #[test]
    fn binary_chunks_are_withheld_unless_asked() {
        let frames: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        for show_secrets in [false, true] {
            let mut tracker = Tracker::new(ParseOptions { show_secrets, ..ParseOptions::default() }, true);
            let mut out = Vec::new();
            tracker.on_data(&event(1, Direction::Send, frames), &mut out);
            tracker.on_data(&event(1, Direction::Send, b"then text"), &mut out);
            let chunks: Vec<&Chunk> =
                out.iter().filter_map(|r| if let Record::Chunk(c) = r { Some(c) } else { None }).collect();
            assert_eq!(chunks.len(), 2);
            assert_eq!((chunks[0].len, chunks[1].len), (frames.len() as u64, 9));
            for chunk in chunks {
                assert_eq!(chunk.redacted, !show_secrets);
                assert_eq!(chunk.data.to_bytes().is_empty(), !show_secrets, "{chunk:?}");
            }
        }
    }

    /// An event as the kernel numbers it: call `seq` of its direction,
    /// after `start` bytes.
    fn numbered<'a>(direction: Direction, seq: u64, start: u64, data: &'a [u8]) -> DataEvent<'a> {
        DataEvent { position: Some(CallPosition { seq, start }), fd: Some(5), ..event(1, direction, data) }
    }

    fn exchanges(out: &[Record]) -> Vec<&spy_protocol::record::Exchange> {
        out.iter()
            .filter_map(|r| match r {
                Record::Exchange(e) => Some(&**e),
                _ => None,
            })
            .collect()
    }

    /// A whole TLS call lost between two others (the response's head) is
    /// never spliced: the exchange it broke says so, where it happened,
    /// with the calls and bytes lost, and a warning names the connection.
    #[test]
    fn a_lost_call_between_two_others_is_marked_in_the_exchange_it_broke() {
        let mut tracker = Tracker::new(ParseOptions::default(), false);
        let mut out = Vec::new();
        let request: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let head: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n";
        tracker.on_data(&numbered(Direction::Send, 0, 0, request), &mut out);
        // Recv call 0 (the head) never arrived; call 1 (the body) did.
        tracker.on_data(&numbered(Direction::Recv, 1, head.len() as u64, b"body"), &mut out);
        let broken = exchanges(&out);
        assert_eq!(broken.len(), 1, "{out:?}");
        let why = broken[0].incomplete.as_deref().expect("incomplete");
        assert!(why.starts_with(&format!("1 TLS call lost here ({} bytes received)", head.len())), "{why}");
        assert_eq!(broken[0].request.as_ref().map(|r| r.path.as_str()), Some("/a"));
        let warnings: Vec<&str> = out
            .iter()
            .filter_map(|r| match r {
                Record::Warning(w) => Some(w.message.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("connection c1 (curl): 1 TLS call lost here"), "{warnings:?}");
        assert_eq!((tracker.stats.gaps, tracker.stats.gap_calls), (1, 1));
        assert_eq!(tracker.stats.gap_bytes, head.len() as u64);
        let stats = tracker.stats.as_record();
        assert_eq!((stats.gaps, stats.gap_calls, stats.gap_bytes), (1, 1, head.len() as u64));
    }

    /// Found by the kernel_event fuzz target: a position near the end of
    /// u64 makes a gap that size; the streams saturate, nothing overflows.
    #[test]
    fn absurd_kernel_positions_do_not_overflow() {
        for raw in [false, true] {
            let mut tracker = Tracker::new(ParseOptions::default(), raw);
            let mut out = Vec::new();
            tracker.on_data(&numbered(Direction::Send, 0, 0, b"GET / HTTP/1.1\r\n\r\n"), &mut out);
            tracker.on_data(&numbered(Direction::Send, 9, u64::MAX - 3, b"abcdefgh"), &mut out);
            tracker.on_data(&numbered(Direction::Send, 10, u64::MAX, b"ijkl"), &mut out);
            tracker.finish(&mut out);
            assert_eq!(tracker.stats.gaps, 1, "raw={raw}");
        }
    }

    /// Calls that arrive in order, numbered, are parsed as they always were.
    #[test]
    fn numbered_calls_in_order_make_whole_exchanges() {
        let mut tracker = Tracker::new(ParseOptions::default(), false);
        let mut out = Vec::new();
        let (get, head) = (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n");
        tracker.on_data(&numbered(Direction::Send, 0, 0, get), &mut out);
        tracker.on_data(&numbered(Direction::Recv, 0, 0, head), &mut out);
        tracker.on_data(&numbered(Direction::Recv, 1, head.len() as u64, b"body"), &mut out);
        tracker.on_data(&numbered(Direction::Send, 1, get.len() as u64, get), &mut out);
        tracker.on_data(&numbered(Direction::Recv, 2, head.len() as u64 + 4, head), &mut out);
        tracker.on_data(&numbered(Direction::Recv, 3, 2 * head.len() as u64 + 4, b"more"), &mut out);
        let done = exchanges(&out);
        assert_eq!(done.len(), 2, "{out:?}");
        assert!(done.iter().all(|e| e.incomplete.is_none()), "{done:?}");
        assert_eq!(tracker.stats.gaps, 0);
    }

    /// SSL_free or a close of the socket ends the connection at once: its
    /// exchange is finished (a response that ends with the connection is
    /// complete), the budget lets its bytes go, and it is counted.
    #[test]
    fn a_closed_connection_is_forgotten_at_once() {
        for by_fd in [false, true] {
            let mut tracker = Tracker::new(ParseOptions::default(), false);
            let mut out = Vec::new();
            tracker.on_data(&numbered(Direction::Send, 0, 0, b"GET / HTTP/1.0\r\n\r\n"), &mut out);
            tracker.on_data(&numbered(Direction::Recv, 0, 0, b"HTTP/1.0 200 OK\r\n\r\nuntil close"), &mut out);
            assert!(tracker.budget.held() > 0);
            assert!(exchanges(&out).is_empty());
            // Another process's fd of the same number, or another object: not this one.
            tracker.connection_closed(11, None, Some(5), &mut out);
            tracker.connection_closed(10, Some(2), None, &mut out);
            assert_eq!(tracker.conns.len(), 1);
            if by_fd {
                tracker.connection_closed(10, None, Some(5), &mut out);
            } else {
                tracker.connection_closed(10, Some(1), None, &mut out);
            }
            assert!(tracker.conns.is_empty() && tracker.fds.is_empty(), "by_fd={by_fd}");
            assert_eq!(tracker.budget.held(), 0);
            assert_eq!(tracker.memory_stats().closed_connections, 1);
            let done = exchanges(&out);
            assert_eq!(done.len(), 1, "{out:?}");
            assert_eq!(done[0].incomplete, None, "{:?}", done[0]);
            // Told twice (SSL_free after close): nothing more happens.
            tracker.connection_closed(10, Some(1), Some(5), &mut out);
            assert_eq!(tracker.memory_stats().closed_connections, 1);
        }
    }

    #[test]
    fn a_reused_connection_object_starts_a_new_connection() {
        let mut tracker = Tracker::new(ParseOptions::default(), true);
        let mut out = Vec::new();
        tracker.on_data(&event(1, Direction::Send, b"a"), &mut out);
        let mut other = event(1, Direction::Send, b"b");
        other.local = Some("127.0.0.1:40001".parse().expect("addr"));
        tracker.on_data(&other, &mut out);
        assert_eq!(tracker.stats.connections, 2);
    }
}
