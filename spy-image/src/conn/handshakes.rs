//! Handshakes seen on the wire, joined to the plaintext of the same
//! connection by its 4-tuple: the id a handshake reserves, the wait for the
//! first plaintext, and the verdict when none comes.
//!
//! A handshake and its connection's plaintext come from two sources (the
//! packet capture, the probes) in either order; whichever comes first
//! gives the connection its id, the other takes it.

#![forbid(unsafe_code)]

use std::net::SocketAddr;

use spy_protocol::record::{Connection, Handshake, Record, Role};

use super::{ConnKey, Tracker};
use crate::capture::flows::SeenHandshake;
use crate::capture::owner::{normalize, Owner};

/// A reserved id no connection claimed is forgotten after this long.
const RESERVATION_TTL_NS: u64 = 60_000_000_000;
/// Reserved ids kept at most (a handshake storm must not grow memory).
const MAX_RESERVATIONS: usize = 16 * 1024;

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
pub(super) struct TupleEntry {
    id: String,
    /// The decrypted connection with this tuple, once there is one.
    conn: Option<ConnKey>,
    /// A handshake waiting for plaintext, with its deadline. Boxed, as is
    /// `closed`: every live connection has an entry, few have either, and
    /// inline they would make each slot of the table ~700 bytes.
    pending: Option<Box<(Handshake, u64)>>,
    /// The decrypted connection that had this tuple and closed: its
    /// handshake may still be on its way from the capture.
    closed: Option<Box<Connection>>,
    reserved_ns: u64,
}

impl WireHandshake {
    /// What the capture saw, as the tracker takes it: the hellos described
    /// into a record, the socket's owner named.
    pub fn from_seen(seen: &SeenHandshake<Owner>) -> WireHandshake {
        let mut record = Handshake { ts_ns: seen.ts_ns, ..Handshake::default() };
        if let Some(hello) = &seen.client_hello {
            hello.describe(&mut record);
        }
        if let Some(hello) = &seen.server_hello {
            hello.describe(&mut record);
        }
        let owner = &seen.owner;
        WireHandshake {
            pid: owner.pid,
            local: owner.local,
            remote: owner.remote,
            role: owner.role,
            process: owner.process.clone(),
            record,
        }
    }
}

impl Tracker {
    /// The session ends: handshakes still waiting for plaintext are
    /// reported as not decrypted, in the order they happened.
    pub(super) fn flush_waiting_handshakes(&mut self, out: &mut Vec<Record>) {
        let mut waiting: Vec<Handshake> =
            self.tuples.values_mut().filter_map(|e| e.pending.take().map(|p| (*p).0)).collect();
        waiting.sort_by_key(|r| r.ts_ns);
        for mut record in waiting {
            record.reason = Some(NO_PLAINTEXT.to_string());
            self.emit_handshake(record, out);
        }
    }

    /// A decrypted connection closed: its tuple keeps the connection, whose
    /// handshake may still be on its way from the capture, for a while
    /// ([`RESERVATION_TTL_NS`]). Not when the budget evicted it (memory is
    /// what it was evicted for), nor past [`MAX_RESERVATIONS`] such
    /// entries: its late handshake is then shown as not decrypted.
    pub(super) fn tuple_closed(&mut self, key: ConnKey, conn: &Connection, evicted: bool) {
        let Some(tuple) = tuple_of(conn) else { return };
        if !self.tuples.get(&tuple).is_some_and(|e| e.conn == Some(key)) {
            return;
        }
        let lingering = self.tuples.len().saturating_sub(self.conns.len());
        if evicted || lingering >= MAX_RESERVATIONS {
            self.tuples.remove(&tuple);
        } else if let Some(entry) = self.tuples.get_mut(&tuple) {
            entry.conn = None;
            entry.closed = Some(Box::new(conn.clone()));
            entry.reserved_ns = self.last_ts_ns;
        }
    }

    /// The id a handshake reserved for a new connection with these
    /// addresses, if one did and no connection took it.
    pub(super) fn reserved_id(&self, local: SocketAddr, remote: SocketAddr) -> Option<String> {
        self.tuples
            .get(&(normalize(local), normalize(remote)))
            .filter(|e| e.conn.is_none() && e.closed.is_none())
            .map(|e| e.id.clone())
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
            Some(TupleEntry { closed: Some(conn), .. }) => Some(Connection::clone(conn)),
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
            Plaintext::Expected { wait_ns } => Some(Box::new((record, now_ns.saturating_add(wait_ns)))),
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
            if entry.pending.as_ref().is_some_and(|p| now_ns >= p.1) {
                if let Some(pending) = entry.pending.take() {
                    late.push(pending.0);
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
    pub(super) fn link_tuple(&mut self, key: ConnKey, out: &mut Vec<Record>) {
        let Some(state) = self.conns.get_mut(&key) else { return };
        let Some(tuple) = tuple_of(&state.record) else { return };
        match self.tuples.get_mut(&tuple) {
            Some(entry) if entry.conn.is_none() && entry.closed.is_none() => {
                entry.conn = Some(key);
                state.record.id = entry.id.clone();
                if let Some(pending) = entry.pending.take() {
                    let (mut record, _) = *pending;
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
    use crate::conn::tests::event;
    use crate::proto::ParseOptions;
    use spy_protocol::record::{Direction, TlsLibrary};

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
}
