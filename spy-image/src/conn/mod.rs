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
use stream::StreamOffsets;

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
            gap_bytes: _,
            handshakes,
            handshakes_decrypted,
        } = *self;
        Stats {
            bytes,
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
        let placed = state.offsets.place(ev.direction, ev.call_offset, ev.data.len() as u64, ev.call_len);
        if placed.lost {
            self.stats.gap_bytes = self.stats.gap_bytes.saturating_add(placed.gap);
            state.parser.gap(ev.direction, placed.gap, &mut parsed);
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
