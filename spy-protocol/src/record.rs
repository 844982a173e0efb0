//! The records the spy emits: one JSON object per line, the only thing on the
//! agent's stdout, and the `-o json` output of the plugin.
//!
//! Pure data, no I/O. Changes are additive: a new field is optional, and a
//! reader ignores kinds and fields it does not know. Every line carries
//! [`FORMAT_VERSION`] as `v`.

#![forbid(unsafe_code)]

use std::net::SocketAddr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Bumped only for incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

/// One line of the record stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub v: u32,
    #[serde(flatten)]
    pub record: Record,
}

impl From<Record> for Line {
    fn from(record: Record) -> Self {
        Line { v: FORMAT_VERSION, record }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Hello(Hello),
    Target(Target),
    Handshake(Handshake),
    Exchange(Box<Exchange>),
    Chunk(Chunk),
    Stats(Stats),
    Warning(Warning),
    Bye(Bye),
}

/// First record of a session: who is spying, and where.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub spy_version: String,
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub btf: bool,
    /// Wall-clock time the session started, Unix nanoseconds.
    pub ts_ns: u64,
}

/// Where a process runs in Kubernetes, when it does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// A process the spy looked at: which TLS stacks it found and whether it
/// could probe them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Host pid.
    pub pid: u32,
    /// Pid inside the process's own pid namespace, when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    pub process: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// TLS stacks found in the process (may be empty).
    pub tls: Vec<TlsStack>,
    /// Plaintext of this process can be captured (at least one stack probed).
    pub probed: bool,
    /// Why not, when `probed` is false; or a note when only some stacks are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsLibrary {
    Openssl,
    Boringssl,
    GoCryptoTls,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Linkage {
    /// A shared library mapped by the process (libssl.so.3).
    Shared,
    /// Linked into the executable (node, envoy, Go).
    Static,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TlsStack {
    pub library: TlsLibrary,
    pub linkage: Linkage,
    /// The file probed, as the process sees it.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub probed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Server,
    #[default]
    Unknown,
}

/// Which way bytes went, seen from the target process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The target wrote these bytes (it sent them to the peer).
    Send,
    /// The target read these bytes (the peer sent them).
    Recv,
}

impl Direction {
    pub fn flip(self) -> Direction {
        match self {
            Direction::Send => Direction::Recv,
            Direction::Recv => Direction::Send,
        }
    }
}

/// A TLS connection of a target process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// Unique within a session; the same id ties chunks, exchanges and the
    /// handshake of one connection together.
    pub id: String,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    pub process: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// The target's own address, when the socket was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<SocketAddr>,
    /// The peer's address, when the socket was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<SocketAddr>,
    /// Kubernetes name of the peer (namespace/pod or namespace/service),
    /// filled in by the plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_name: Option<String>,
    #[serde(default = "unknown_role")]
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_library: Option<TlsLibrary>,
}

fn unknown_role() -> Role {
    Role::Unknown
}

/// Bytes for display: valid UTF-8 goes out as text, anything else as base64.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    Text(String),
    Base64(String),
}

impl Payload {
    pub fn from_bytes(bytes: &[u8]) -> Payload {
        match std::str::from_utf8(bytes) {
            Ok(text) => Payload::Text(text.to_owned()),
            Err(_) => Payload::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }
    }

    /// The same, taking the bytes: valid UTF-8 becomes text without a copy.
    /// `cut`: the bytes end where a limit cut them, so a character split
    /// by the cut is dropped rather than turning the whole into base64.
    pub fn from_vec(bytes: Vec<u8>, cut: bool) -> Payload {
        match String::from_utf8(bytes) {
            Ok(text) => Payload::Text(text),
            Err(err) => {
                let utf8 = err.utf8_error();
                let mut bytes = err.into_bytes();
                if cut && utf8.error_len().is_none() {
                    bytes.truncate(utf8.valid_up_to());
                    return Payload::Text(String::from_utf8(bytes).unwrap_or_default());
                }
                Payload::Base64(base64::engine::general_purpose::STANDARD.encode(&bytes))
            }
        }
    }

    /// The original bytes (invalid base64 decodes to nothing).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Payload::Text(text) => text.as_bytes().to_vec(),
            Payload::Base64(b64) => base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default(),
        }
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::Text(String::new())
    }
}

/// Plaintext that no protocol parser claimed, in the order it moved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub conn: Connection,
    pub direction: Direction,
    /// Wall-clock time of the TLS call, Unix nanoseconds.
    pub ts_ns: u64,
    /// Offset of these bytes in the connection's stream in this direction.
    pub offset: u64,
    /// Bytes the call moved (`data` may hold fewer when `truncated`).
    pub len: u64,
    pub data: Payload,
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// Values of secret header lines in `data` were replaced by
    /// `<redacted>` (see --show-secrets); `len` is still what moved.
    #[serde(default, skip_serializing_if = "is_false")]
    pub redacted: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http1,
    Http2,
    Grpc,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
    /// The value was replaced by `<redacted>` (a secret; see --show-secrets).
    #[serde(default, skip_serializing_if = "is_false")]
    pub redacted: bool,
    /// HTTP/2: the header named a dynamic-table entry we never saw (a
    /// connection joined mid-way); name and value are unknown.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unknown: bool,
}

/// A message body: what was kept, and the truth about what was not.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Body {
    /// Bytes on the wire (after transfer coding, before content coding).
    pub size: u64,
    /// The kept bytes, content-decoded (gzip, deflate) when `decoded` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub decoded: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    pub path: String,
    /// "HTTP/1.1", "HTTP/2".
    pub version: String,
    pub headers: Vec<Header>,
    pub body: Body,
    /// Wall-clock time of the first byte, Unix nanoseconds.
    pub ts_ns: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub version: String,
    pub headers: Vec<Header>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trailers: Vec<Header>,
    pub body: Body,
    /// Wall-clock time of the first byte, Unix nanoseconds.
    pub ts_ns: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Grpc {
    pub service: String,
    pub method: String,
    pub request_messages: u32,
    pub response_messages: u32,
    /// Sizes of the length-prefixed messages, in order (capped list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_sizes: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_sizes: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A request matched with its response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub conn: Connection,
    pub protocol: Protocol,
    /// HTTP/2 stream id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Response>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<Grpc>,
    /// From the request's first byte to the response's last, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// Why the exchange is incomplete (connection closed, stream reset,
    /// session ended), when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
}

/// What the TLS handshake of a connection showed (issue: every connection).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Handshake {
    pub conn: Connection,
    pub ts_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn_offered: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions_offered: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ciphers_offered: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ja4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<String>,
    /// Plaintext of this connection is captured too.
    pub decrypted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Counters, sent periodically and at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// TLS calls that moved data.
    pub calls: u64,
    /// Data events received from the kernel.
    pub events: u64,
    /// Data events the kernel could not deliver (ring buffer full).
    pub lost_events: u64,
    /// Plaintext bytes not delivered (lost events, unreadable memory, calls
    /// over the per-call cap).
    pub lost_bytes: u64,
    /// Plaintext bytes delivered.
    pub bytes: u64,
    /// TLS calls whose socket could not be identified.
    pub calls_without_socket: u64,
    pub connections: u64,
    pub exchanges: u64,
    pub chunks: u64,
    /// Streams or connections a parser gave up on (bad framing).
    pub parse_errors: u64,
    /// Probe hits in targets: TLS call entries (each one breakpoint trap;
    /// its return costs one more).
    #[serde(default)]
    pub probe_hits: u64,
    /// Records the agent dropped because its stdout was not keeping up
    /// (the plugin or the network behind it): the session never stalls on
    /// output, it counts what it could not send.
    #[serde(default)]
    pub dropped_records: u64,
    /// The wire capture of TLS handshakes.
    #[serde(default)]
    pub handshakes: HandshakeStats,
    /// What the agent held to stay within its memory budget, and what it
    /// let go of.
    #[serde(default)]
    pub memory: MemoryStats,
    /// Fork, exec and exit events of targets the ring buffer had no room
    /// for (a child then goes unfollowed, an exit unseen).
    #[serde(default)]
    pub lost_process_events: u64,
    /// Connection-close events (SSL_free, close) the ring buffer had no
    /// room for (those connections then wait for their idle timeout).
    #[serde(default)]
    pub lost_close_events: u64,
    /// Places in connections' streams where plaintext was lost (each is
    /// marked in the exchange it broke), the whole TLS calls lost at them,
    /// and their bytes.
    #[serde(default)]
    pub gaps: u64,
    #[serde(default)]
    pub gap_calls: u64,
    #[serde(default)]
    pub gap_bytes: u64,
    /// Ring buffer records the agent could not decode (never expected:
    /// a kernel object out of step with the agent).
    #[serde(default)]
    pub undecoded_events: u64,
}

/// The agent's memory budget at work (`--memory-budget`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryStats {
    /// Bytes held for connections and packet reassembly when counted (an
    /// estimate kept as data moves; of several spies, their sum).
    pub held_bytes: u64,
    /// Of those, out-of-order TCP segments the packet captures hold.
    pub reassembly_bytes: u64,
    /// The most held at once so far (of several spies, the sum of theirs).
    pub peak_bytes: u64,
    /// The budget those bytes are held to (of several spies, their sum).
    pub budget_bytes: u64,
    /// Connections forgotten, least recently used first, to stay within the
    /// budget (their partial exchanges were reported as incomplete).
    pub evicted_connections: u64,
    /// Connections forgotten after a long silence.
    pub idle_connections: u64,
    /// Connections forgotten at once because the target ended them
    /// (SSL_free, or close of their socket).
    pub closed_connections: u64,
    /// Bytes let go to stay within the budget: what evicted connections held,
    /// and out-of-order segments not held for reassembly.
    pub dropped_bytes: u64,
    /// Out-of-order TCP segments not held for reassembly: their flow's owner
    /// is not a target (or not known yet), or the budget was reached.
    pub unbuffered_segments: u64,
}

/// Counters of the handshake capture: every TLS connection, decrypted or not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HandshakeStats {
    /// `handshake` records sent.
    pub handshakes: u64,
    /// Of those, connections whose plaintext was captured too.
    pub decrypted: u64,
    /// Network namespaces watched.
    pub namespaces: u64,
    /// Packets the captures read.
    pub packets: u64,
    /// Packets the kernel dropped before we read them.
    pub dropped_packets: u64,
    /// Target connections whose first bytes are not TLS.
    pub not_tls_flows: u64,
    /// Target connections that start like TLS but whose hellos are broken,
    /// cut or missing.
    pub malformed_flows: u64,
    /// Connections already open when the capture started.
    pub joined_midway_flows: u64,
    /// Connections of processes that are not targets (ignored).
    pub other_flows: u64,
    /// Connections forgotten because the flow table was full, or not
    /// followed because the memory budget was.
    pub evicted_flows: u64,
    /// Handshakes dropped because the spy fell behind the capture.
    pub dropped_handshakes: u64,
}

/// Counters of several spies (one per node) add up to the session's.
/// Every field is named here, so a new counter cannot be left out of the
/// sum: the destructuring stops compiling until it is added.
impl std::ops::AddAssign<&Stats> for Stats {
    fn add_assign(&mut self, other: &Stats) {
        let Stats {
            calls,
            events,
            lost_events,
            lost_bytes,
            bytes,
            calls_without_socket,
            connections,
            exchanges,
            chunks,
            parse_errors,
            probe_hits,
            dropped_records,
            handshakes,
            memory,
            lost_process_events,
            lost_close_events,
            gaps,
            gap_calls,
            gap_bytes,
            undecoded_events,
        } = other;
        self.calls += calls;
        self.events += events;
        self.lost_events += lost_events;
        self.lost_bytes += lost_bytes;
        self.bytes += bytes;
        self.calls_without_socket += calls_without_socket;
        self.connections += connections;
        self.exchanges += exchanges;
        self.chunks += chunks;
        self.parse_errors += parse_errors;
        self.probe_hits += probe_hits;
        self.dropped_records += dropped_records;
        self.handshakes += handshakes;
        self.memory += memory;
        self.lost_process_events += lost_process_events;
        self.lost_close_events += lost_close_events;
        self.gaps += gaps;
        self.gap_calls += gap_calls;
        self.gap_bytes = self.gap_bytes.saturating_add(*gap_bytes);
        self.undecoded_events += undecoded_events;
    }
}

impl std::ops::AddAssign<&MemoryStats> for MemoryStats {
    fn add_assign(&mut self, other: &MemoryStats) {
        let MemoryStats {
            held_bytes,
            reassembly_bytes,
            peak_bytes,
            budget_bytes,
            evicted_connections,
            idle_connections,
            closed_connections,
            dropped_bytes,
            unbuffered_segments,
        } = other;
        self.held_bytes = self.held_bytes.saturating_add(*held_bytes);
        self.reassembly_bytes = self.reassembly_bytes.saturating_add(*reassembly_bytes);
        self.peak_bytes = self.peak_bytes.saturating_add(*peak_bytes);
        self.budget_bytes = self.budget_bytes.saturating_add(*budget_bytes);
        self.evicted_connections += evicted_connections;
        self.idle_connections += idle_connections;
        self.closed_connections += closed_connections;
        self.dropped_bytes = self.dropped_bytes.saturating_add(*dropped_bytes);
        self.unbuffered_segments += unbuffered_segments;
    }
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, other: Stats) {
        *self += &other;
    }
}

impl std::ops::Add for Stats {
    type Output = Stats;
    fn add(mut self, other: Stats) -> Stats {
        self += &other;
        self
    }
}

impl std::iter::Sum for Stats {
    fn sum<I: Iterator<Item = Stats>>(iter: I) -> Stats {
        iter.fold(Stats::default(), |total, s| total + s)
    }
}

impl<'a> std::iter::Sum<&'a Stats> for Stats {
    fn sum<I: Iterator<Item = &'a Stats>>(iter: I) -> Stats {
        iter.fold(Stats::default(), |mut total, s| {
            total += s;
            total
        })
    }
}

impl std::ops::AddAssign<&HandshakeStats> for HandshakeStats {
    fn add_assign(&mut self, other: &HandshakeStats) {
        let HandshakeStats {
            handshakes,
            decrypted,
            namespaces,
            packets,
            dropped_packets,
            not_tls_flows,
            malformed_flows,
            joined_midway_flows,
            other_flows,
            evicted_flows,
            dropped_handshakes,
        } = other;
        self.handshakes += handshakes;
        self.decrypted += decrypted;
        self.namespaces += namespaces;
        self.packets += packets;
        self.dropped_packets += dropped_packets;
        self.not_tls_flows += not_tls_flows;
        self.malformed_flows += malformed_flows;
        self.joined_midway_flows += joined_midway_flows;
        self.other_flows += other_flows;
        self.evicted_flows += evicted_flows;
        self.dropped_handshakes += dropped_handshakes;
    }
}

impl std::ops::AddAssign for HandshakeStats {
    fn add_assign(&mut self, other: HandshakeStats) {
        *self += &other;
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Warning {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Bye {
    pub reason: String,
    pub stats: Stats,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_with_kind_and_version() {
        let line = Line::from(Record::Warning(Warning { message: "x".into(), pid: Some(7) }));
        let json = serde_json::to_string(&line).expect("serialize");
        assert_eq!(json, r#"{"v":1,"kind":"warning","message":"x","pid":7}"#);
        let back: Line = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, line);
    }

    /// Every counter of every spy reaches the session's total, the
    /// handshake counters and probe hits included.
    #[test]
    fn stats_add_up_field_by_field() {
        let one = |n: u64| Stats {
            calls: n,
            events: n,
            lost_events: n,
            lost_bytes: n,
            bytes: n,
            calls_without_socket: n,
            connections: n,
            exchanges: n,
            chunks: n,
            parse_errors: n,
            probe_hits: n,
            dropped_records: n,
            handshakes: HandshakeStats {
                handshakes: n,
                decrypted: n,
                namespaces: n,
                packets: n,
                dropped_packets: n,
                not_tls_flows: n,
                malformed_flows: n,
                joined_midway_flows: n,
                other_flows: n,
                evicted_flows: n,
                dropped_handshakes: n,
            },
            memory: MemoryStats {
                held_bytes: n,
                reassembly_bytes: n,
                peak_bytes: n,
                budget_bytes: n,
                evicted_connections: n,
                idle_connections: n,
                closed_connections: n,
                dropped_bytes: n,
                unbuffered_segments: n,
            },
            lost_process_events: n,
            lost_close_events: n,
            gaps: n,
            gap_calls: n,
            gap_bytes: n,
            undecoded_events: n,
        };
        let spies = [one(1), one(2), one(4)];
        assert_eq!(spies.iter().sum::<Stats>(), one(7));
        assert_eq!(spies.into_iter().sum::<Stats>(), one(7));
        assert_eq!(std::iter::empty::<Stats>().sum::<Stats>(), Stats::default());
        // Through JSON too: every field is a number the sum sees.
        let json = serde_json::to_value(one(7)).expect("serialize");
        let numbers = |v: &serde_json::Value| -> Vec<u64> {
            fn walk(v: &serde_json::Value, out: &mut Vec<u64>) {
                match v {
                    serde_json::Value::Object(map) => map.values().for_each(|v| walk(v, out)),
                    other => out.extend(other.as_u64()),
                }
            }
            let mut out = Vec::new();
            walk(v, &mut out);
            out
        };
        assert!(numbers(&json).iter().all(|&n| n == 7), "{json}");
        assert_eq!(numbers(&json).len(), 38);
    }

    #[test]
    fn payload_keeps_text_as_text_and_binary_as_base64() {
        assert_eq!(Payload::from_bytes(b"GET /"), Payload::Text("GET /".into()));
        let binary = [0xff, 0x00, 0x10];
        let payload = Payload::from_bytes(&binary);
        assert!(matches!(payload, Payload::Base64(_)));
        assert_eq!(payload.to_bytes(), binary);
    }
}
