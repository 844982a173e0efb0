use super::*;
use crate::capture::packet::{self, tests::ipv4_packet};
use crate::proto::tls_handshake::tests::{sample_client_hello, sample_server_hello};

fn client() -> SocketAddr {
    "10.1.0.5:41000".parse().expect("addr")
}
fn server() -> SocketAddr {
    "10.1.0.9:443".parse().expect("addr")
}

/// Every flow belongs to pid 7.
fn everyone(_: SocketAddr, _: SocketAddr) -> Option<u32> {
    Some(7)
}

struct Wire {
    table: FlowTable<u32>,
    out: Vec<SeenHandshake<u32>>,
    now: u64,
}

impl Wire {
    fn new() -> Wire {
        Wire { table: FlowTable::new(), out: Vec::new(), now: 1_000 }
    }
    fn send(&mut self, from: SocketAddr, to: SocketAddr, seq: u32, flags: u8, payload: &[u8]) {
        self.send_with(from, to, seq, flags, payload, &mut everyone);
    }
    fn send_with(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        seq: u32,
        flags: u8,
        payload: &[u8],
        owners: &mut dyn Owners<u32>,
    ) {
        self.now += 1_000;
        let bytes = ipv4_packet(from, to, seq, flags, payload);
        let segment = packet::parse(&bytes, bytes.len()).expect("segment");
        self.table.on_segment(&segment, self.now, owners, &mut self.out);
    }
    fn open(&mut self) {
        self.send(client(), server(), 100, TCP_SYN, b"");
        self.send(server(), client(), 5000, TCP_SYN | TCP_ACK, b"");
        self.send(client(), server(), 101, TCP_ACK, b"");
    }
}

#[test]
fn a_client_hello_over_three_segments_out_of_order_is_reassembled() {
    let mut wire = Wire::new();
    wire.open();
    let hello = sample_client_hello(2500);
    let (a, rest) = hello.split_at(1000);
    let (b, c) = rest.split_at(1000);
    // The third segment arrives first, then a retransmission of the first.
    wire.send(client(), server(), 101 + 2000, TCP_ACK, c);
    wire.send(client(), server(), 101, TCP_ACK, a);
    wire.send(client(), server(), 101, TCP_ACK, &a[..500]);
    assert!(wire.out.is_empty());
    wire.send(client(), server(), 101 + 1000, TCP_ACK, b);
    assert!(wire.out.is_empty(), "waits for the ServerHello");
    wire.send(server(), client(), 5001, TCP_ACK, &sample_server_hello());
    let [seen] = wire.out.as_slice() else { panic!("{:?}", wire.out) };
    assert_eq!((seen.client, seen.server, seen.owner), (client(), server(), 7));
    assert_eq!(seen.client_hello.as_ref().and_then(|h| h.sni.as_deref()), Some("example.com"));
    assert_eq!(seen.server_hello.as_ref().map(|h| h.version()), Some(0x0304));
    assert_eq!(wire.table.stats.tls, 1);
    // Later traffic of the flow is only counted.
    wire.send(client(), server(), 101 + hello.len() as u32, TCP_ACK, &[23, 3, 3, 0, 5, 1, 2, 3, 4, 5]);
    assert_eq!(wire.out.len(), 1);
    assert_eq!(wire.table.stats, FlowStats { tls: 1, ..FlowStats::default() });
}

#[test]
fn plain_http_on_443_is_counted_as_not_tls() {
    let mut wire = Wire::new();
    wire.open();
    wire.send(client(), server(), 101, TCP_ACK, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    wire.send(server(), client(), 5001, TCP_ACK, b"HTTP/1.1 400 Bad Request\r\n\r\n");
    assert!(wire.out.is_empty());
    assert_eq!(wire.table.stats.not_tls, 1);
    assert_eq!(wire.table.stats.tls, 0);
}

#[test]
fn a_cut_hello_answered_by_junk_is_malformed() {
    let mut wire = Wire::new();
    wire.open();
    wire.send(client(), server(), 101, TCP_ACK, &sample_client_hello(32)[..60]);
    wire.send(server(), client(), 5001, TCP_ACK, b"NOT TLS\r\n");
    assert!(wire.out.is_empty());
    assert_eq!((wire.table.stats.malformed, wire.table.stats.not_tls), (1, 0));
}

#[test]
fn flows_of_other_processes_are_ignored() {
    let mut wire = Wire::new();
    let mut nobody = |_: SocketAddr, _: SocketAddr| -> Option<u32> { None };
    wire.send_with(client(), server(), 100, TCP_SYN, b"", &mut nobody);
    wire.send_with(server(), client(), 5000, TCP_SYN | TCP_ACK, b"", &mut nobody);
    wire.send_with(client(), server(), 101, TCP_ACK, &sample_client_hello(32), &mut nobody);
    wire.send_with(server(), client(), 5001, TCP_ACK, &sample_server_hello(), &mut nobody);
    wire.send_with(client(), server(), 400, TCP_ACK, &[23, 3, 3, 0, 1, 0], &mut nobody);
    assert!(wire.out.is_empty());
    assert_eq!(wire.table.stats.others, 1);
    assert_eq!((wire.table.stats.tls, wire.table.stats.not_tls), (0, 0), "{:?}", wire.table.stats);
}

#[test]
fn a_hello_without_answer_is_reported_alone_after_a_while_or_at_reset() {
    let mut wire = Wire::new();
    wire.open();
    wire.send(client(), server(), 101, TCP_ACK, &sample_client_hello(32));
    wire.table.tick(wire.now + 1_000, &mut wire.out);
    assert!(wire.out.is_empty());
    wire.table.tick(wire.now + SERVER_HELLO_WAIT_NS + 1, &mut wire.out);
    let [seen] = wire.out.as_slice() else { panic!("{:?}", wire.out) };
    assert!(seen.client_hello.is_some() && seen.server_hello.is_none());

    let mut wire = Wire::new();
    wire.open();
    wire.send(client(), server(), 101, TCP_ACK, &sample_client_hello(32));
    wire.send(server(), client(), 5001, TCP_RST, b"");
    assert_eq!(wire.out.len(), 1);
    assert!(wire.table.is_empty(), "a reset forgets the flow");
}

#[test]
fn flows_joined_midway_are_followed_only_from_a_hello() {
    let mut wire = Wire::new();
    wire.send(client(), server(), 9000, TCP_ACK, &[23, 3, 3, 0, 2, 0, 0]);
    assert_eq!(wire.table.stats.joined_midway, 1);
    assert!(wire.table.is_empty());
    // No SYN seen, but the payload starts with a ClientHello: followed.
    wire.send(client(), server(), 9000, TCP_ACK, &sample_client_hello(32));
    wire.send(server(), client(), 1, TCP_ACK, &sample_server_hello());
    assert_eq!(wire.out.len(), 1);
}

#[test]
fn a_hello_cut_by_the_capture_is_malformed() {
    let mut wire = Wire::new();
    wire.open();
    let hello = sample_client_hello(2500);
    let bytes = ipv4_packet(client(), server(), 101, TCP_ACK, &hello);
    let segment = packet::parse(&bytes[..1200], bytes.len()).expect("segment");
    wire.table.on_segment(&segment, 10_000, &mut everyone, &mut wire.out);
    assert!(wire.out.is_empty());
    assert_eq!(wire.table.stats.malformed, 1);
}

#[test]
fn the_table_is_bounded() {
    let mut wire = Wire::new();
    for i in 0..(MAX_FLOWS + 10) {
        let from = SocketAddr::new(client().ip(), (i % 60000) as u16 + 1);
        let to = SocketAddr::new(server().ip(), 443 + (i / 60000) as u16);
        wire.send(from, to, 1, TCP_SYN, b"");
    }
    assert_eq!(wire.table.len(), MAX_FLOWS);
    assert_eq!(wire.table.stats.evicted, 10);
}

#[test]
fn closed_flows_are_forgotten() {
    let mut wire = Wire::new();
    wire.open();
    wire.send(client(), server(), 101, TCP_ACK, &sample_client_hello(32));
    wire.send(server(), client(), 5001, TCP_ACK, &sample_server_hello());
    wire.send(client(), server(), 9999, TCP_FIN | TCP_ACK, b"");
    wire.send(server(), client(), 9999, TCP_FIN | TCP_ACK, b"");
    assert!(wire.table.is_empty());
    wire.send(client(), server(), 200, TCP_SYN, b"");
    wire.table.tick(wire.now + FLOW_IDLE_NS + 1, &mut wire.out);
    assert!(wire.table.is_empty(), "idle flows go too");
}

/// Issue 12: who owns a flow is asked before any of its bytes are held. A
/// flow no target owns holds no out-of-order byte, whatever it sends, and
/// its owner is asked a bounded number of times (each ask reads /proc).
#[test]
fn out_of_order_segments_of_a_non_target_are_never_held() {
    let gauge = MemoryGauge::new(1 << 30);
    let mut wire = Wire { table: FlowTable::with_gauge(gauge.clone()), out: Vec::new(), now: 1_000 };
    let mut asks = 0;
    let mut nobody = |_: SocketAddr, _: SocketAddr| -> Option<u32> {
        asks += 1;
        None
    };
    wire.send_with(client(), server(), 100, TCP_SYN, b"", &mut nobody);
    for k in 0..1000u32 {
        // All beyond a hole at 101: a reassembler would hold each one.
        wire.send_with(client(), server(), 2000 + k * 1000, TCP_ACK, &[0x16; 1000], &mut nobody);
        assert_eq!(wire.table.held_bytes(), 0);
        // At most the flow's own reading state, until it is a tombstone.
        assert!(gauge.peak() <= Reading::<u32>::BOX_BYTES, "{}", gauge.peak());
    }
    assert_eq!(gauge.reassembly(), 0, "a tombstone is not counted");
    assert_eq!(asks, usize::from(MAX_OWNER_ASKS));
    assert_eq!(wire.table.stats.others, 1);
    assert!(wire.table.stats.unowned_segments >= 1, "{:?}", wire.table.stats);
    assert!(wire.out.is_empty());
}

/// A server's connection has an owner once accept() returned, which may be
/// after the client's first bytes: asked again then, the hello is read.
#[test]
fn an_owner_found_after_the_syn_still_gets_its_hello() {
    let mut wire = Wire::new();
    let mut accepted = false;
    let mut later = |_: SocketAddr, _: SocketAddr| -> Option<u32> {
        let owner = accepted.then_some(9);
        accepted = true;
        owner
    };
    wire.send_with(client(), server(), 100, TCP_SYN, b"", &mut later);
    wire.send_with(server(), client(), 5000, TCP_SYN | TCP_ACK, b"", &mut later);
    wire.send_with(client(), server(), 101, TCP_ACK, &sample_client_hello(32), &mut later);
    wire.send(server(), client(), 5001, TCP_ACK, &sample_server_hello());
    let [seen] = wire.out.as_slice() else { panic!("{:?}", wire.out) };
    assert_eq!(seen.owner, 9);
}

/// Out-of-order bytes of targets' flows count against the budget: held
/// while the hole is open, given back when it fills or the flow ends, and
/// not held at all past the budget (the handshake is then cut, and said so).
#[test]
fn reassembly_counts_against_the_memory_budget() {
    let gauge = MemoryGauge::new(1 << 20);
    let mut wire = Wire { table: FlowTable::with_gauge(gauge.clone()), out: Vec::new(), now: 1_000 };
    wire.open();
    // A flow being read counts its own state too.
    let state = Reading::<u32>::BOX_BYTES;
    assert_eq!(gauge.reassembly(), state);
    let hello = sample_client_hello(2500);
    let (a, rest) = hello.split_at(1000);
    wire.send(client(), server(), 101 + 1000, TCP_ACK, rest);
    assert_eq!(gauge.reassembly(), state + rest.len() as u64);
    // The same segment again is held once.
    wire.send(client(), server(), 101 + 1000, TCP_ACK, rest);
    assert_eq!(gauge.reassembly(), state + rest.len() as u64);
    wire.send(client(), server(), 101, TCP_ACK, a);
    assert_eq!(gauge.reassembly(), state, "the hole filled, the hello read");
    assert_eq!(gauge.peak(), state + rest.len() as u64);

    // A flow that ends gives back what it held.
    let other = SocketAddr::new(client().ip(), 41001);
    wire.send(other, server(), 100, TCP_SYN, b"");
    wire.send(other, server(), 5000, TCP_ACK, &[0x16; 700]);
    assert_eq!(gauge.reassembly(), 2 * state + 700);
    wire.send(server(), other, 1, TCP_RST, b"");
    assert_eq!(gauge.reassembly(), state);

    // Past the budget nothing more is held.
    let tight = MemoryGauge::new(1000 + state);
    let mut wire = Wire { table: FlowTable::with_gauge(tight.clone()), out: Vec::new(), now: 1_000 };
    wire.open();
    wire.send(client(), server(), 101 + 1000, TCP_ACK, &hello[1000..1800]);
    wire.send(client(), server(), 101 + 1800, TCP_ACK, &hello[1800..]);
    assert_eq!(tight.reassembly(), 0, "a refused segment ends the reading: nothing kept");
    assert!(tight.peak() <= 1000 + state);
    assert_eq!(wire.table.stats.over_budget_segments, 1);
    assert_eq!(wire.table.stats.over_budget_bytes, (hello.len() - 1800) as u64);
    assert_eq!(wire.table.stats.malformed, 1);
}

/// A reader's buffers count while a hello is read in pieces, and go back
/// when it is read; a flow the budget has no room for is not followed, and
/// that is counted.
#[test]
fn hello_buffers_and_new_flows_count_against_the_budget() {
    let state = Reading::<u32>::BOX_BYTES;
    let gauge = MemoryGauge::new(1 << 20);
    let mut wire = Wire { table: FlowTable::with_gauge(gauge.clone()), out: Vec::new(), now: 1_000 };
    wire.open();
    let hello = sample_client_hello(3000);
    wire.send(client(), server(), 101, TCP_ACK, &hello[..2000]);
    assert!(gauge.reassembly() >= state + 2000, "a hello in pieces is counted: {}", gauge.reassembly());
    wire.send(client(), server(), 2101, TCP_ACK, &hello[2000..]);
    assert_eq!(gauge.reassembly(), state, "read: its buffers went back");

    let full = MemoryGauge::new(state);
    let mut wire = Wire { table: FlowTable::with_gauge(full.clone()), out: Vec::new(), now: 1_000 };
    wire.open();
    let other = SocketAddr::new(client().ip(), 41002);
    wire.send(other, server(), 100, TCP_SYN, b"");
    assert_eq!(wire.table.len(), 1, "no room for a second flow");
    assert_eq!(wire.table.stats.evicted, 1);
    assert_eq!(full.reassembly(), state);
}

/// On a busy machine the server's accept() may return after the
/// ClientHello came: the flow is read on, and its owner asked again, so
/// the handshake is still reported once the ServerHello shows whose it is.
#[test]
fn an_owner_found_only_at_the_server_hello_still_gets_the_handshake() {
    let mut wire = Wire::new();
    let mut asks = 0;
    let mut late = |_: SocketAddr, _: SocketAddr| -> Option<u32> {
        asks += 1;
        (asks >= 3).then_some(9)
    };
    wire.send_with(client(), server(), 100, TCP_SYN, b"", &mut late);
    wire.send_with(server(), client(), 5000, TCP_SYN | TCP_ACK, b"", &mut late);
    wire.send_with(client(), server(), 101, TCP_ACK, &sample_client_hello(32), &mut late);
    wire.send_with(server(), client(), 5001, TCP_ACK, &sample_server_hello(), &mut late);
    let [seen] = wire.out.as_slice() else { panic!("{:?}", wire.out) };
    assert_eq!(seen.owner, 9);
    assert!(seen.client_hello.is_some() && seen.server_hello.is_some(), "{seen:?}");
    assert_eq!(wire.table.stats.others, 0);
}
