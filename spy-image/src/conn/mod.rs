//! Connections: decoded TLS data events in, ordered per-direction byte
//! streams out to each connection's protocol parser, records out of that.
//!
//! Pure: the spy decodes kernel events into [`DataEvent`] and tells the
//! tracker what it knows about each process; the tracker knows nothing of
//! eBPF.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::capture::owner::normalize;
use crate::proto::{ConnectionParser, ParseOptions, Parsed};
use spy_protocol::record::{Chunk, Connection, Direction, Handshake, Payload, PodRef, Record, Role, TlsLibrary};

/// A reserved id no connection claimed is forgotten after this long.
const RESERVATION_TTL_NS: u64 = 60_000_000_000;
/// Reserved ids kept at most (a handshake storm must not grow memory).
const MAX_RESERVATIONS: usize = 16 * 1024;
/// Exited processes whose names are kept for handshakes that come late.
const MAX_EXITED_REMEMBERED: usize = 1024;

/// A TLS handshake seen on the wire, already tied to the target process
/// that owns the socket.
#[derive(Clone, Debug)]
pub struct WireHandshake {
    pub pid: u32,
    /// The target's end.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub role: Role,
    /// The owner's name as the capture found it: for a process the spy
    /// never described (a short-lived child gone before its fork was read).
    pub process: Option<String>,
    /// What the hellos said; `conn`, `decrypted` and `reason` are filled in
    /// by the tracker.
    pub record: Handshake,
}

/// Whether the plaintext of a target's connections can be captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plaintext {
    /// A TLS stack of the process is probed: its plaintext should follow
    /// the handshake within `wait_ns`.
    Expected { wait_ns: u64 },
    /// Nothing in the process is probed, and why.
    NotProbed(String),
}

/// The id a connection's 4-tuple goes by, and its handshake while it waits
/// for the first plaintext.
#[derive(Debug)]
struct TupleEntry {
    id: String,
    /// The decrypted connection with this tuple, once there is one.
    conn: Option<ConnKey>,
    /// A handshake waiting for plaintext, with its deadline.
    pending: Option<(Handshake, u64)>,
    /// The decrypted connection that had this tuple and closed: its
    /// handshake may still be on its way from the capture.
    closed: Option<Connection>,
    reserved_ns: u64,
}

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
    /// Next expected `call_offset` within the current call, per direction;
    /// a mismatch means the kernel lost an event in the middle of a call.
    expected_call_offset: [u64; 2],
    /// Bytes of each direction's stream so far, gaps included.
    stream_offset: [u64; 2],
    seen_data: bool,
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
                    expected_call_offset: [0, 0],
                    stream_offset: [0, 0],
                    seen_data: false,
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

        let dir = ev.direction as usize;
        let mut parsed = Vec::new();
        if ev.call_offset != state.expected_call_offset[dir] && ev.call_offset != 0 {
            // Part of this call was lost: bytes between what we expected
            // and where this event starts never arrived.
            let lost = ev.call_offset.saturating_sub(state.expected_call_offset[dir]);
            self.stats.gap_bytes += lost;
            state.stream_offset[dir] += lost;
            state.parser.gap(ev.direction, lost, &mut parsed);
        }
        let end = ev.call_offset + ev.data.len() as u64;
        state.expected_call_offset[dir] = if end >= ev.call_len { 0 } else { end };

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
            let offset = state.stream_offset[dir];
            parsed.push(Parsed::Unclaimed { direction: ev.direction, ts_ns: ev.ts_ns, offset, data: ev.data.to_vec() });
        }
        state.stream_offset[dir] += ev.data.len() as u64;
        // Most events finish nothing (a body's middle): no copy of the
        // connection for those.
        if !parsed.is_empty() {
            let conn = state.record.clone();
            self.emit(conn, parsed, out);
        }
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

    /// A handshake seen on the wire: reported with the id of the
    /// connection it opened. Plaintext usually follows the handshake, so
    /// for a probed process it waits (until the first plaintext, or
    /// `wait_ns`) to say whether it was decrypted; the id is reserved so
    /// the plaintext, when it comes, carries the same one.
    pub fn on_handshake(&mut self, hs: WireHandshake, plaintext: Plaintext, now_ns: u64, out: &mut Vec<Record>) {
        let tuple = (normalize(hs.local), normalize(hs.remote));
        self.last_ts_ns = self.last_ts_ns.max(now_ns);
        let decrypted_conn = match self.tuples.get(&tuple) {
            // The connection closed before its handshake came off the wire.
            Some(TupleEntry { closed: Some(conn), .. }) => Some(conn.clone()),
            entry => entry.and_then(|e| e.conn).and_then(|key| self.conns.get_mut(&key)).map(|state| {
                if hs.role != Role::Unknown {
                    state.record.role = hs.role;
                }
                state.record.clone()
            }),
        };
        let mut record = hs.record;
        if let Some(conn) = decrypted_conn {
            // The plaintext came first.
            record.conn = conn;
            record.decrypted = true;
            record.reason = None;
            self.emit_handshake(record, out);
            return;
        }
        // A new connection (or a new one on a reused 4-tuple).
        if self.tuples.len() >= MAX_RESERVATIONS {
            self.forget_reservations(now_ns, true);
        }
        let id = format!("c{}", self.next_id);
        self.next_id += 1;
        let meta = self
            .processes
            .get(&hs.pid)
            .or_else(|| self.exited.iter().rev().find(|(pid, _)| *pid == hs.pid).map(|(_, meta)| meta));
        record.conn = Connection {
            id: id.clone(),
            pid: hs.pid,
            ns_pid: meta.and_then(|m| m.ns_pid),
            process: meta.map(|m| m.name.clone()).or(hs.process).unwrap_or_else(|| "?".to_string()),
            pod: meta.and_then(|m| m.pod.clone()),
            local: Some(hs.local),
            remote: Some(hs.remote),
            remote_name: None,
            role: hs.role,
            tls_library: None,
        };
        let pending = match plaintext {
            Plaintext::Expected { wait_ns } => Some((record, now_ns.saturating_add(wait_ns))),
            Plaintext::NotProbed(reason) => {
                record.decrypted = false;
                record.reason = Some(reason);
                self.emit_handshake(record, out);
                None
            }
        };
        self.tuples.insert(tuple, TupleEntry { id, conn: None, pending, closed: None, reserved_ns: now_ns });
    }

    /// Handshakes whose plaintext did not come in time are reported as
    /// not decrypted; stale reservations are forgotten.
    pub fn expire_handshakes(&mut self, now_ns: u64, out: &mut Vec<Record>) {
        let mut late = Vec::new();
        for entry in self.tuples.values_mut() {
            if entry.pending.as_ref().is_some_and(|(_, deadline)| now_ns >= *deadline) {
                if let Some((record, _)) = entry.pending.take() {
                    late.push(record);
                }
            }
        }
        late.sort_by_key(|r| r.ts_ns);
        for mut record in late {
            record.reason = Some(NO_PLAINTEXT.to_string());
            self.emit_handshake(record, out);
        }
        self.forget_reservations(now_ns, false);
    }

    fn forget_reservations(&mut self, now_ns: u64, all_stale: bool) {
        self.tuples.retain(|_, e| {
            e.conn.is_some()
                || e.pending.is_some()
                || (!all_stale && now_ns.saturating_sub(e.reserved_ns) < RESERVATION_TTL_NS)
        });
    }

    /// A new connection (or one whose socket just became known) claims the
    /// id its handshake reserved, and the waiting handshake goes out first.
    fn link_tuple(&mut self, key: ConnKey, out: &mut Vec<Record>) {
        let Some(state) = self.conns.get_mut(&key) else { return };
        let Some(tuple) = tuple_of(&state.record) else { return };
        match self.tuples.get_mut(&tuple) {
            Some(entry) if entry.conn.is_none() && entry.closed.is_none() => {
                entry.conn = Some(key);
                state.record.id = entry.id.clone();
                if let Some((mut record, _)) = entry.pending.take() {
                    if record.conn.role != Role::Unknown {
                        state.record.role = record.conn.role;
                    }
                    record.conn = state.record.clone();
                    record.decrypted = true;
                    record.reason = None;
                    self.emit_handshake(record, out);
                }
            }
            // A live connection has the tuple already: keep the first.
            Some(entry) if entry.conn.is_some() => {}
            // Unknown, or a closed connection's: this one takes it over.
            _ => {
                let entry = TupleEntry {
                    id: state.record.id.clone(),
                    conn: Some(key),
                    pending: None,
                    closed: None,
                    reserved_ns: 0,
                };
                self.tuples.insert(tuple, entry);
            }
        }
    }

    fn emit_handshake(&mut self, record: Handshake, out: &mut Vec<Record>) {
        self.stats.handshakes += 1;
        if record.decrypted {
            self.stats.handshakes_decrypted += 1;
        }
        out.push(Record::Handshake(record));
    }

    /// The session ends: flush every connection.
    pub fn finish(&mut self, out: &mut Vec<Record>) {
        let mut waiting: Vec<Handshake> = self.tuples.values_mut().filter_map(|e| e.pending.take().map(|p| p.0)).collect();
        waiting.sort_by_key(|r| r.ts_ns);
        for mut record in waiting {
            record.reason = Some(NO_PLAINTEXT.to_string());
            self.emit_handshake(record, out);
        }
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.close(key, "session ended", out);
        }
    }

    fn close(&mut self, key: ConnKey, reason: &str, out: &mut Vec<Record>) {
        if let Some(mut state) = self.conns.remove(&key) {
            if let Some(tuple) = tuple_of(&state.record) {
                if let Some(entry) = self.tuples.get_mut(&tuple).filter(|e| e.conn == Some(key)) {
                    entry.conn = None;
                    entry.closed = Some(state.record.clone());
                    entry.reserved_ns = self.last_ts_ns;
                }
            }
            let mut parsed = Vec::new();
            state.parser.finish(reason, &mut parsed);
            self.emit(state.record, parsed, out);
        }
    }

    fn new_connection(&mut self, ev: &DataEvent<'_>) -> Connection {
        // A handshake seen on the wire may have reserved this one's id.
        let reserved = match (ev.local, ev.remote) {
            (Some(local), Some(remote)) => self
                .tuples
                .get(&(normalize(local), normalize(remote)))
                .filter(|e| e.conn.is_none() && e.closed.is_none())
                .map(|e| e.id.clone()),
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
            let mut conn_for = || if i == last { conn.take().unwrap_or_default() } else { conn.clone().unwrap_or_default() };
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
                    }));
                }
                Parsed::Error { .. } => self.stats.parse_errors += 1,
            }
        }
    }
}

/// Why a probed process's connection was not decrypted.
const NO_PLAINTEXT: &str =
    "no plaintext seen: this connection does not go through a TLS library tlsspy probes in this process";

fn tuple_of(conn: &Connection) -> Option<(SocketAddr, SocketAddr)> {
    Some((normalize(conn.local?), normalize(conn.remote?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(conn_ptr: u64, direction: Direction, data: &'a [u8]) -> DataEvent<'a> {
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

    fn wire(local: &str, remote: &str, sni: &str) -> WireHandshake {
        WireHandshake {
            pid: 10,
            local: local.parse().expect("addr"),
            remote: remote.parse().expect("addr"),
            role: Role::Client,
            process: None,
            record: Handshake { sni: Some(sni.into()), ts_ns: 5, ..Handshake::default() },
        }
    }

    fn handshakes(out: &[Record]) -> Vec<&Handshake> {
        out.iter()
            .filter_map(|r| match r {
                Record::Handshake(h) => Some(h),
                _ => None,
            })
            .collect()
    }

    const WAIT: Plaintext = Plaintext::Expected { wait_ns: 1000 };

    #[test]
    fn a_handshake_before_plaintext_waits_and_shares_the_id() {
        let mut tracker = Tracker::new(ParseOptions::default(), true);
        let mut out = Vec::new();
        tracker.on_handshake(wire("127.0.0.1:40000", "127.0.0.1:443", "a.test"), WAIT, 100, &mut out);
        assert!(out.is_empty(), "waits for plaintext");
        tracker.on_data(&event(1, Direction::Send, b"GET"), &mut out);
        let [Record::Handshake(h), Record::Chunk(c)] = out.as_slice() else { panic!("{out:?}") };
        assert!(h.decrypted && h.reason.is_none());
        assert_eq!(h.conn.id, c.conn.id);
        assert_eq!(h.conn.id, "c1");
        assert_eq!(h.conn.tls_library, Some(TlsLibrary::Openssl));
        assert_eq!(c.conn.role, Role::Client);
        // Nothing is left to expire.
        tracker.expire_handshakes(u64::MAX, &mut out);
        assert_eq!(handshakes(&out).len(), 1);
    }

    #[test]
    fn a_handshake_after_plaintext_takes_the_connection_id() {
        let mut tracker = Tracker::new(ParseOptions::default(), true);
        let mut out = Vec::new();
        tracker.on_data(&event(1, Direction::Send, b"GET"), &mut out);
        // The wire shows IPv4 where the socket said ::ffff:… : same connection.
        tracker.on_handshake(wire("[::ffff:127.0.0.1]:40000", "127.0.0.1:443", "a.test"), WAIT, 100, &mut out);
        let hs = handshakes(&out);
        assert_eq!(hs.len(), 1);
        assert!(hs[0].decrypted);
        let Record::Chunk(c) = &out[0] else { panic!() };
        assert_eq!(hs[0].conn.id, c.conn.id);
    }

    #[test]
    fn a_handshake_after_the_connection_closed_still_takes_its_id() {
        let mut tracker = Tracker::new(ParseOptions::default(), true);
        let mut out = Vec::new();
        tracker.on_data(&event(1, Direction::Send, b"GET"), &mut out);
        tracker.process_exited(10, &mut out);
        tracker.on_handshake(wire("127.0.0.1:40000", "127.0.0.1:443", "a.test"), WAIT, 100, &mut out);
        let hs = handshakes(&out);
        assert_eq!(hs.len(), 1);
        assert!(hs[0].decrypted);
        assert_eq!(hs[0].conn.id, "c1");
        assert_eq!(hs[0].conn.process, "curl");
    }

    #[test]
    fn handshakes_without_plaintext_say_why() {
        let mut tracker = Tracker::new(ParseOptions::default(), true);
        let mut out = Vec::new();
        // Nothing probed: at once, with the target's reason.
        tracker.on_handshake(
            wire("127.0.0.1:40001", "127.0.0.1:443", "rustls.test"),
            Plaintext::NotProbed("rustls".into()),
            100,
            &mut out,
        );
        let hs = handshakes(&out);
        assert!(!hs[0].decrypted);
        assert_eq!(hs[0].reason.as_deref(), Some("rustls"));
        assert_eq!(hs[0].conn.id, "c1");
        // Probed, but no plaintext in time.
        tracker.on_handshake(wire("127.0.0.1:40002", "127.0.0.1:443", "b.test"), WAIT, 100, &mut out);
        tracker.expire_handshakes(500, &mut out);
        assert_eq!(handshakes(&out).len(), 1);
        tracker.expire_handshakes(1100, &mut out);
        let hs = handshakes(&out);
        assert_eq!(hs.len(), 2);
        assert!(!hs[1].decrypted && hs[1].reason.as_deref().is_some_and(|r| r.contains("no plaintext")));
        // At the session's end, waiting ones go out too.
        tracker.on_handshake(wire("127.0.0.1:40003", "127.0.0.1:443", "c.test"), WAIT, 2000, &mut out);
        tracker.finish(&mut out);
        assert_eq!(handshakes(&out).len(), 3);
        assert_eq!((tracker.stats.handshakes, tracker.stats.handshakes_decrypted), (3, 0));
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
