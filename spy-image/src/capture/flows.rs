//! TCP flows of one network namespace: each direction's first bytes
//! reassembled in order and read for TLS hellos. Pure: segments in,
//! handshakes out; who owns a flow is asked of the caller.
//!
//! Bounded: a flow is looked at until its hellos are found (at most
//! [`MAX_HANDSHAKE_BYTES`] per direction); after that it is a tombstone that
//! only counts packets, until it closes or idles out. At most [`MAX_FLOWS`]
//! flows are remembered. A flow being read counts its state against the
//! budget; a tombstone is small (its key and addresses), so a table full of
//! them stays a few MiB, part of the agent's fixed overhead.
//!
//! Who owns a flow is asked before any of its bytes are held: a flow no
//! target owns (or not yet known to) holds no out-of-order segment at all,
//! and after [`MAX_OWNER_ASKS`] asks it is a tombstone. Out-of-order bytes
//! of targets' flows count against the agent's memory budget
//! ([`MemoryGauge`]): past it a segment is not held and its flow's
//! handshake is reported as cut.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::memory::MemoryGauge;

use crate::proto::tls_handshake::{ClientHello, HelloEvent, HelloReader, ServerHello, MAX_HANDSHAKE_BYTES};

use super::packet::{Segment, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Flows remembered per namespace; the least recently seen goes first.
pub const MAX_FLOWS: usize = 16 * 1024;
/// Out-of-order bytes held per direction while waiting for a hole to fill.
pub const MAX_OUT_OF_ORDER_BYTES: usize = 64 * 1024;
/// A ClientHello whose ServerHello does not come within this long is
/// reported alone.
pub const SERVER_HELLO_WAIT_NS: u64 = 3_000_000_000;
/// Flows silent this long are forgotten.
pub const FLOW_IDLE_NS: u64 = 120_000_000_000;
/// Times the owner of a flow is asked (its SYN and its first payloads)
/// before a flow nobody watched owns is let go. More than one: a server's
/// connection has an owner only once accept() returned, which may be after
/// the client's first bytes. Each ask reads /proc: bounded per flow.
pub const MAX_OWNER_ASKS: u8 = 3;

/// Counters for the `stats` record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Flows of watched processes whose handshake was reported.
    pub tls: u64,
    /// Flows of watched processes that do not start with TLS.
    pub not_tls: u64,
    /// Flows that start like TLS but whose hellos are broken, cut or missing.
    pub malformed: u64,
    /// Flows already open when the capture started (their start was missed).
    pub joined_midway: u64,
    /// Flows of processes that are not targets (ignored).
    pub others: u64,
    /// Flows forgotten because the table was full, or not followed because
    /// the memory budget was.
    pub evicted: u64,
    /// Out-of-order segments not held: their flow has no known target owner.
    pub unowned_segments: u64,
    /// Out-of-order segments of targets' flows not held: the memory budget
    /// was reached.
    pub over_budget_segments: u64,
    /// Their bytes.
    pub over_budget_bytes: u64,
}

/// Every field named, so a new counter cannot be left out of the sum.
impl std::ops::AddAssign<&FlowStats> for FlowStats {
    fn add_assign(&mut self, other: &FlowStats) {
        let FlowStats {
            tls,
            not_tls,
            malformed,
            joined_midway,
            others,
            evicted,
            unowned_segments,
            over_budget_segments,
            over_budget_bytes,
        } = other;
        self.tls += tls;
        self.not_tls += not_tls;
        self.malformed += malformed;
        self.joined_midway += joined_midway;
        self.others += others;
        self.evicted += evicted;
        self.unowned_segments += unowned_segments;
        self.over_budget_segments += over_budget_segments;
        self.over_budget_bytes += over_budget_bytes;
    }
}

/// A handshake, as far as it was seen.
#[derive(Clone, Debug, PartialEq)]
pub struct SeenHandshake<O> {
    pub owner: O,
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// When the ClientHello (or the first hello seen) passed, Unix ns.
    pub ts_ns: u64,
    pub client_hello: Option<ClientHello>,
    pub server_hello: Option<ServerHello>,
}

/// Who owns a flow, asked once per flow (and again until known).
pub trait Owners<O> {
    fn owner(&mut self, client: SocketAddr, server: SocketAddr) -> Option<O>;
}

impl<O, F: FnMut(SocketAddr, SocketAddr) -> Option<O>> Owners<O> for F {
    fn owner(&mut self, client: SocketAddr, server: SocketAddr) -> Option<O> {
        self(client, server)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey(SocketAddr, SocketAddr);

impl FlowKey {
    fn of(a: SocketAddr, b: SocketAddr) -> FlowKey {
        if a <= b {
            FlowKey(a, b)
        } else {
            FlowKey(b, a)
        }
    }
}

const CLIENT: usize = 0;
const SERVER: usize = 1;

#[derive(Debug)]
struct Side {
    /// Sequence number of the next byte the reader wants.
    next_seq: Option<u32>,
    out_of_order: BTreeMap<u32, Vec<u8>>,
    out_of_order_bytes: usize,
    reader: HelloReader,
    /// The reader's buffers as last counted against the budget.
    reader_bytes: usize,
    /// Bytes went into the reader.
    fed: bool,
}

impl Side {
    /// Brings the budget up to date with the reader's buffers after a feed.
    /// Growth past the budget stops the reader: its handshake is reported
    /// as cut, like out-of-order bytes over the budget.
    fn count_reader(&mut self, gauge: &MemoryGauge, events: &mut Vec<HelloEvent>, stats: &mut FlowStats) {
        let now = self.reader.held_bytes();
        if now <= self.reader_bytes {
            gauge.release((self.reader_bytes - now) as u64);
            self.reader_bytes = now;
            return;
        }
        let grown = (now - self.reader_bytes) as u64;
        if gauge.try_hold(grown) {
            self.reader_bytes = now;
        } else {
            stats.over_budget_bytes += grown;
            events.push(HelloEvent::Malformed("handshake bytes over the spy's memory budget"));
            self.reader.stop();
            gauge.release(self.reader_bytes as u64);
            self.reader_bytes = 0;
        }
    }

    fn new() -> Side {
        Side {
            next_seq: None,
            out_of_order: BTreeMap::new(),
            out_of_order_bytes: 0,
            reader: HelloReader::new(),
            reader_bytes: 0,
            fed: false,
        }
    }
}

/// A flow: what every flow keeps, tombstones included, and while its
/// hellos are read, the reading state in a box of its own. A tombstone is
/// only the small part (about 150 bytes with its key and table slot): the
/// table holds many of them, most of a flood's flows end as one.
#[derive(Debug)]
struct Flow<O> {
    client: SocketAddr,
    server: SocketAddr,
    last_seen_ns: u64,
    fins: [bool; 2],
    /// Some while reading hellos; None once reported or given up on
    /// (packets are then only counted).
    reading: Option<Box<Reading<O>>>,
}

/// A flow's state while its hellos are read.
#[derive(Debug)]
struct Reading<O> {
    /// Some when a watched process owns the flow; asked until known, at
    /// most [`MAX_OWNER_ASKS`] times.
    owner: Option<O>,
    owner_asks: u8,
    sides: [Side; 2],
    client_hello: Option<ClientHello>,
    server_hello: Option<ServerHello>,
    first_hello_ns: Option<u64>,
}

impl<O> Reading<O> {
    /// What the box of a flow being read holds against the budget (its
    /// hello readers' buffers are counted as they fill).
    const BOX_BYTES: u64 = size_of::<Reading<O>>() as u64;
}

/// Every flow of one namespace.
#[derive(Debug)]
pub struct FlowTable<O> {
    flows: HashMap<FlowKey, Flow<O>>,
    /// Where out-of-order bytes are counted (the agent's budget).
    gauge: Arc<MemoryGauge>,
    pub stats: FlowStats,
}

impl<O: Clone> Default for FlowTable<O> {
    fn default() -> Self {
        FlowTable::new()
    }
}

impl<O: Clone> FlowTable<O> {
    pub fn new() -> Self {
        FlowTable::with_gauge(MemoryGauge::unlimited())
    }

    /// A table whose out-of-order bytes count against `gauge`.
    pub fn with_gauge(gauge: Arc<MemoryGauge>) -> Self {
        FlowTable { flows: HashMap::new(), gauge, stats: FlowStats::default() }
    }

    /// Out-of-order bytes held by every flow.
    pub fn held_bytes(&self) -> usize {
        self.flows
            .values()
            .filter_map(|f| f.reading.as_ref())
            .map(|r| r.sides.iter().map(|s| s.out_of_order_bytes).sum::<usize>())
            .sum()
    }

    /// Forgets a flow, and what it held (its reading state is kept for
    /// [`FlowTable::settle`], but no longer counted).
    fn remove(&mut self, key: &FlowKey) -> Option<Flow<O>> {
        let mut flow = self.flows.remove(key)?;
        flow.release(&self.gauge);
        Some(flow)
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Takes one segment seen at `now_ns`; finished handshakes go to `out`.
    pub fn on_segment(
        &mut self,
        segment: &Segment<'_>,
        now_ns: u64,
        owners: &mut dyn Owners<O>,
        out: &mut Vec<SeenHandshake<O>>,
    ) {
        let key = FlowKey::of(segment.src, segment.dst);
        let syn_only = segment.has(TCP_SYN) && !segment.has(TCP_ACK);
        if !self.flows.contains_key(&key) {
            let Some((client, server)) = self.orientation(segment, syn_only) else { return };
            if self.flows.len() >= MAX_FLOWS {
                self.evict_oldest(out);
            }
            if !self.gauge.try_hold(Reading::<O>::BOX_BYTES) {
                // Not followed at all: the budget is full.
                self.stats.evicted += 1;
                return;
            }
            let mut flow = Flow::new(client, server, now_ns);
            if syn_only {
                // The client is inside connect() now, its socket certainly
                // open: the best moment to find its owner (asked again at
                // the first bytes if it is not a target's, e.g. a server's).
                if let Some(reading) = &mut flow.reading {
                    reading.owner = owners.owner(client, server);
                    reading.owner_asks = 1;
                }
            }
            self.flows.insert(key, flow);
        }
        let outcome = {
            let Some(flow) = self.flows.get_mut(&key) else { return };
            flow.last_seen_ns = now_ns;
            if segment.has(TCP_RST) {
                None
            } else {
                let side = if segment.src == flow.client { CLIENT } else { SERVER };
                if segment.has(TCP_FIN) {
                    flow.fins[side] = true;
                }
                let (client, server) = (flow.client, flow.server);
                if let Some(reading) = &mut flow.reading {
                    let mut events = Vec::new();
                    let payload = !segment.payload.is_empty();
                    if payload && reading.owner.is_none() && reading.owner_asks < MAX_OWNER_ASKS {
                        // Before any of its bytes are held.
                        reading.owner_asks += 1;
                        reading.owner = owners.owner(client, server);
                    }
                    let unowned = reading.owner.is_none() && reading.owner_asks >= MAX_OWNER_ASKS;
                    if !unowned {
                        reading.take(side, segment, &mut events, &self.gauge, &mut self.stats);
                    }
                    if unowned {
                        // Not a target's connection: stop looking at it.
                        // (Not at its first hello: a server's end is its
                        // own only once accept() returned, which on a busy
                        // machine may be after the ClientHello came; it has
                        // certainly returned by the ServerHello.)
                        flow.release(&self.gauge);
                        flow.reading = None;
                        self.stats.others += 1;
                        Some(Outcome::Pending)
                    } else {
                        Some(reading.apply(side, events, now_ns))
                    }
                } else {
                    Some(Outcome::Pending)
                }
            }
        };
        match outcome {
            // A reset ends the flow at once.
            None => {
                if let Some(flow) = self.remove(&key) {
                    self.settle(flow, out);
                }
                return;
            }
            Some(outcome) => self.conclude(key, outcome, out),
        }
        if self.flows.get(&key).is_some_and(|f| f.fins == [true, true]) {
            if let Some(flow) = self.remove(&key) {
                self.settle(flow, out);
            }
        }
    }

    /// Which end is the client of a flow not seen before, or None when the
    /// flow cannot be followed from here.
    fn orientation(&mut self, segment: &Segment<'_>, syn_only: bool) -> Option<(SocketAddr, SocketAddr)> {
        if syn_only {
            return Some((segment.src, segment.dst));
        }
        if segment.payload.is_empty() {
            return None; // an ACK of a flow we never saw start
        }
        // Joined mid-way: only a hello at the very start of the payload
        // says where the stream stands and who is who.
        match segment.payload {
            [22, 3, _, _, _, 1, ..] => Some((segment.src, segment.dst)),
            [22, 3, _, _, _, 2, ..] => Some((segment.dst, segment.src)),
            _ => {
                self.stats.joined_midway += 1;
                None
            }
        }
    }

    fn conclude(&mut self, key: FlowKey, outcome: Outcome, out: &mut Vec<SeenHandshake<O>>) {
        let Some(flow) = self.flows.get_mut(&key) else { return };
        if matches!(outcome, Outcome::Pending) {
            return;
        }
        // Done reading: the flow becomes a tombstone.
        flow.release(&self.gauge);
        let Some(mut reading) = flow.reading.take() else { return };
        if reading.owner.is_none() {
            // Read to its end, and still nobody's we watch.
            self.stats.others += 1;
            return;
        }
        let (client, server, last_seen_ns) = (flow.client, flow.server, flow.last_seen_ns);
        match outcome {
            Outcome::Pending => {}
            Outcome::Report => {
                self.stats.tls += 1;
                if let Some(handshake) = reading.report(client, server, last_seen_ns) {
                    out.push(handshake);
                }
            }
            Outcome::NotTls => self.stats.not_tls += 1,
            Outcome::Malformed => {
                // What was seen of a broken handshake is still worth showing.
                if reading.client_hello.is_some() || reading.server_hello.is_some() {
                    self.stats.tls += 1;
                    if let Some(handshake) = reading.report(client, server, last_seen_ns) {
                        out.push(handshake);
                    }
                } else {
                    self.stats.malformed += 1;
                }
            }
        }
    }

    /// A flow that ends (or is forgotten) reports what it saw.
    fn settle(&mut self, flow: Flow<O>, out: &mut Vec<SeenHandshake<O>>) {
        let Some(mut reading) = flow.reading else { return };
        if reading.client_hello.is_some() || reading.server_hello.is_some() {
            if let Some(handshake) = reading.report(flow.client, flow.server, flow.last_seen_ns) {
                self.stats.tls += 1;
                out.push(handshake);
            }
        } else if reading.owner.is_some() && reading.sides.iter().any(|s| s.next_seq.is_some()) {
            // Started, owned, bytes seen, yet no hello: a cut handshake.
            self.stats.malformed += 1;
        }
    }

    /// Time passes: hellos whose answer is late are reported alone, idle
    /// flows are forgotten.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<SeenHandshake<O>>) {
        let late: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, f)| {
                f.reading
                    .as_ref()
                    .is_some_and(|r| r.first_hello_ns.is_some_and(|t| now_ns.saturating_sub(t) > SERVER_HELLO_WAIT_NS))
            })
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            self.conclude(key, Outcome::Report, out);
        }
        let idle: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, f)| now_ns.saturating_sub(f.last_seen_ns) > FLOW_IDLE_NS)
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            if let Some(flow) = self.remove(&key) {
                self.settle(flow, out);
            }
        }
    }

    /// The capture ends: every flow still reading reports what it saw.
    pub fn flush(&mut self, out: &mut Vec<SeenHandshake<O>>) {
        let mut flows: Vec<Flow<O>> = self.flows.drain().map(|(_, f)| f).collect();
        for flow in &mut flows {
            flow.release(&self.gauge);
        }
        for flow in flows {
            self.settle(flow, out);
        }
    }

    fn evict_oldest(&mut self, out: &mut Vec<SeenHandshake<O>>) {
        let oldest = self.flows.iter().min_by_key(|(_, f)| f.last_seen_ns).map(|(k, _)| *k);
        if let Some(flow) = oldest.and_then(|k| self.remove(&k)) {
            self.stats.evicted += 1;
            self.settle(flow, out);
        }
    }
}

enum Outcome {
    Pending,
    Report,
    NotTls,
    Malformed,
}

impl<O: Clone> Flow<O> {
    /// A new flow being read; its box was counted by the caller.
    fn new(client: SocketAddr, server: SocketAddr, now_ns: u64) -> Flow<O> {
        Flow {
            client,
            server,
            last_seen_ns: now_ns,
            fins: [false, false],
            reading: Some(Box::new(Reading {
                owner: None,
                owner_asks: 0,
                sides: [Side::new(), Side::new()],
                client_hello: None,
                server_hello: None,
                first_hello_ns: None,
            })),
        }
    }

    /// Stops counting what the flow's reading state holds, and lets go of
    /// its out-of-order bytes; the hellos found are kept for a report.
    /// Counted once: afterwards the flow is a tombstone (or gone).
    fn release(&mut self, gauge: &MemoryGauge) {
        let Some(reading) = &mut self.reading else { return };
        for side in &mut reading.sides {
            gauge.release((side.out_of_order_bytes + side.reader_bytes) as u64);
            side.out_of_order.clear();
            side.out_of_order_bytes = 0;
            side.reader_bytes = 0;
        }
        gauge.release(Reading::<O>::BOX_BYTES);
    }
}

impl<O: Clone> Reading<O> {
    /// Puts a segment's bytes in order into its side's reader. Out of
    /// order, they are held only for a flow a target owns, and only within
    /// the budget.
    fn take(
        &mut self,
        side_index: usize,
        segment: &Segment<'_>,
        events: &mut Vec<HelloEvent>,
        gauge: &MemoryGauge,
        stats: &mut FlowStats,
    ) {
        let owned = self.owner.is_some();
        let side = &mut self.sides[side_index];
        if side.reader.is_done() {
            return;
        }
        let mut seq = segment.seq;
        if segment.has(TCP_SYN) {
            // The SYN takes one sequence number; data starts after it.
            seq = seq.wrapping_add(1);
            side.next_seq = Some(seq);
        }
        if segment.payload.is_empty() {
            return;
        }
        let next = *side.next_seq.get_or_insert(seq);
        let ahead = seq.wrapping_sub(next) as i32;
        let mut data = segment.payload;
        if ahead < 0 {
            // A retransmission overlapping what we already have.
            let overlap = ahead.unsigned_abs() as usize;
            if overlap >= data.len() {
                return;
            }
            data = &data[overlap..];
            seq = next;
        }
        if seq != next {
            // A hole before this segment: hold it until the hole fills.
            if !owned {
                stats.unowned_segments += 1;
                return;
            }
            if side.out_of_order_bytes + data.len() > MAX_OUT_OF_ORDER_BYTES {
                events.push(HelloEvent::Malformed("too many bytes out of order"));
                side.reader.stop();
                return;
            }
            if side.out_of_order.get(&seq).is_some_and(|held| held.len() >= data.len()) {
                return; // a retransmission of a segment already held
            }
            if !gauge.try_hold(data.len() as u64) {
                stats.over_budget_segments += 1;
                stats.over_budget_bytes += data.len() as u64;
                events.push(HelloEvent::Malformed("out-of-order bytes over the spy's memory budget"));
                side.reader.stop();
                return;
            }
            side.out_of_order_bytes += data.len();
            if let Some(again) = side.out_of_order.insert(seq, data.to_vec()) {
                // A retransmission of a segment already held.
                side.out_of_order_bytes -= again.len();
                gauge.release(again.len() as u64);
            }
            return;
        }
        side.fed = true;
        side.reader.feed(data, events);
        let mut next = next.wrapping_add(data.len() as u32);
        if segment.truncated() {
            // The capture cut this packet: the rest of the stream has a hole
            // we can never fill.
            if !side.reader.is_done() {
                events.push(HelloEvent::Malformed("a handshake segment was cut by the capture"));
                side.reader.stop();
            }
            side.count_reader(gauge, events, stats);
            return;
        }
        while let Some(entry) = side.out_of_order.first_entry() {
            let at = *entry.key();
            let behind = next.wrapping_sub(at) as i32;
            if behind < 0 {
                break; // still a hole
            }
            let bytes = entry.remove();
            side.out_of_order_bytes -= bytes.len();
            gauge.release(bytes.len() as u64);
            let skip = behind as usize;
            if skip < bytes.len() {
                side.reader.feed(&bytes[skip..], events);
                next = next.wrapping_add((bytes.len() - skip) as u32);
            }
        }
        side.next_seq = Some(next);
        side.count_reader(gauge, events, stats);
        if side.reader.is_done() {
            gauge.release(side.out_of_order_bytes as u64);
            side.out_of_order.clear();
            side.out_of_order_bytes = 0;
        }
    }

    fn apply(&mut self, side: usize, events: Vec<HelloEvent>, now_ns: u64) -> Outcome {
        for event in events {
            match event {
                HelloEvent::Client(hello) => {
                    self.first_hello_ns.get_or_insert(now_ns);
                    if self.client_hello.is_none() {
                        self.client_hello = Some(hello);
                    }
                }
                HelloEvent::Server(hello) => {
                    self.first_hello_ns.get_or_insert(now_ns);
                    let retry = hello.hello_retry;
                    self.server_hello = Some(hello);
                    if !retry {
                        return Outcome::Report;
                    }
                }
                HelloEvent::NotTls(_) => {
                    if self.client_hello.is_some() || self.server_hello.is_some() {
                        return Outcome::Report;
                    }
                    // The client began a TLS record the server answers
                    // with something else: a broken handshake, not plain text.
                    let client = &self.sides[CLIENT];
                    if side == SERVER && client.fed && !client.reader.is_done() {
                        return Outcome::Malformed;
                    }
                    return Outcome::NotTls;
                }
                HelloEvent::Malformed(_) => return Outcome::Malformed,
            }
        }
        Outcome::Pending
    }

    fn report(&mut self, client: SocketAddr, server: SocketAddr, last_seen_ns: u64) -> Option<SeenHandshake<O>> {
        let owner = self.owner.clone()?;
        Some(SeenHandshake {
            owner,
            client,
            server,
            ts_ns: self.first_hello_ns.unwrap_or(last_seen_ns),
            client_hello: self.client_hello.take(),
            server_hello: self.server_hello.take(),
        })
    }
}

// A hello never needs more than this of a direction.
const _: () = assert!(MAX_OUT_OF_ORDER_BYTES >= MAX_HANDSHAKE_BYTES);

#[cfg(test)]
mod tests;
