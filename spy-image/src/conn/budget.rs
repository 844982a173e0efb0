//! The connections' share of the agent's memory budget
//! ([`crate::memory::MemoryGauge`]): what each connection holds, in the
//! order they were last used, so that over the budget the least recently
//! used go first, and connections silent too long go at all.
//!
//! Kept cheap on the data path: an event adds its own length to its
//! connection's estimate (what it can add to the parser at most, but for
//! HPACK's indexed fields and new streams), and the parser's state is
//! walked (`ConnectionParser::held_bytes`) only when the connection is new,
//! when it finished something (memory went back), or when
//! [`RECOUNT_BYTES`] went in since the last walk. The order is a BTreeMap
//! keyed by last use: O(log n) per event.
//!
//! Every way a connection ends goes through `Tracker::close`, which
//! [`Budget::forget`]s it: an eviction, an idle timeout, a process exit,
//! or a close the kernel reports (SSL_free, or close of its socket:
//! `Tracker::connection_closed`), which frees it at once.

use std::collections::{BTreeMap, HashMap};
use std::mem::size_of;
use std::net::SocketAddr;
use std::sync::Arc;

use spy_protocol::record::{MemoryStats, Record};

use super::handshakes::TupleEntry;
use super::{ConnKey, ConnState, Tracker};
use crate::memory::MemoryGauge;

/// Bytes fed to a connection between two walks of its parser state.
pub const RECOUNT_BYTES: u64 = 16 * 1024;

/// Why an evicted connection's unfinished exchanges are incomplete.
pub const EVICTED: &str = "forgotten to stay within the spy's memory budget (--memory-budget)";
/// Why an idle connection's unfinished exchanges are incomplete.
pub const IDLE: &str = "forgotten after a long silence";

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The estimate: the last walk plus what was fed since.
    held: u64,
    /// Fed since the last walk.
    unverified: u64,
    /// Its key in the use order.
    stamp: (u64, u64),
}

/// What each connection holds, and in which order they were used.
#[derive(Debug)]
pub struct Budget {
    gauge: Arc<MemoryGauge>,
    /// Connections silent this long are forgotten (ns).
    idle_ns: u64,
    entries: HashMap<ConnKey, Entry>,
    /// (last use, tie-breaker) → connection: the least recently used first.
    order: BTreeMap<(u64, u64), ConnKey>,
    serial: u64,
    held: u64,
    pub stats: BudgetStats,
}

/// What the budget let go of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetStats {
    pub evicted_connections: u64,
    pub idle_connections: u64,
    /// Forgotten because the target ended them (SSL_free, close).
    pub closed_connections: u64,
    pub dropped_bytes: u64,
}

impl Budget {
    pub fn new(gauge: Arc<MemoryGauge>, idle_ns: u64) -> Budget {
        Budget {
            gauge,
            idle_ns,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            serial: 0,
            held: 0,
            stats: BudgetStats::default(),
        }
    }

    /// No bound and no idle timeout.
    pub fn unlimited() -> Budget {
        Budget::new(MemoryGauge::unlimited(), u64::MAX)
    }

    pub fn gauge(&self) -> &Arc<MemoryGauge> {
        &self.gauge
    }

    /// Bytes the connections hold, by the estimate.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// `key` was used at `now_ns` and took `fed` bytes. True when its
    /// estimate should be made exact now (new, or too much unverified).
    fn touch(&mut self, key: ConnKey, now_ns: u64, fed: u64) -> bool {
        self.serial += 1;
        let stamp = (now_ns, self.serial);
        let (recount, previous) = match self.entries.get_mut(&key) {
            Some(entry) => {
                entry.held = entry.held.saturating_add(fed);
                entry.unverified = entry.unverified.saturating_add(fed);
                (entry.unverified >= RECOUNT_BYTES, Some(std::mem::replace(&mut entry.stamp, stamp)))
            }
            None => {
                self.entries.insert(key, Entry { held: fed, unverified: fed, stamp });
                (true, None)
            }
        };
        if let Some(previous) = previous {
            self.order.remove(&previous);
        }
        self.order.insert(stamp, key);
        self.held = self.held.saturating_add(fed);
        self.gauge.set_connections(self.held);
        recount
    }

    /// The exact estimate of `key`, from a walk.
    fn set(&mut self, key: ConnKey, held: u64) {
        if let Some(entry) = self.entries.get_mut(&key) {
            self.held = self.held.saturating_sub(entry.held).saturating_add(held);
            entry.held = held;
            entry.unverified = 0;
            self.gauge.set_connections(self.held);
        }
    }

    /// `key` ended: it holds nothing any more. Returns what it held.
    pub(super) fn forget(&mut self, key: &ConnKey) -> u64 {
        let Some(entry) = self.entries.remove(key) else { return 0 };
        self.order.remove(&entry.stamp);
        self.held = self.held.saturating_sub(entry.held);
        self.gauge.set_connections(self.held);
        entry.held
    }

    fn least_recent(&self) -> Option<(ConnKey, u64)> {
        self.order.iter().next().map(|(&(last, _), &key)| (key, last))
    }

    pub fn stats(&self) -> MemoryStats {
        let BudgetStats { evicted_connections, idle_connections, closed_connections, dropped_bytes } = self.stats;
        MemoryStats {
            held_bytes: self.gauge.held(),
            reassembly_bytes: self.gauge.reassembly(),
            peak_bytes: self.gauge.peak(),
            budget_bytes: self.gauge.budget(),
            evicted_connections,
            idle_connections,
            closed_connections,
            dropped_bytes,
            ..MemoryStats::default()
        }
    }
}

/// What one connection holds besides its parser: its state and record, its
/// key twice (map and order), its budget entry, its 4-tuple's entry (and
/// the id that keeps). The tables' slots are counted at one and a half
/// times their size: a hash table is between half and seven eighths full.
fn connection_bytes(state: &ConnState) -> u64 {
    let record = &state.record;
    let strings = 2 * record.id.capacity()
        + record.process.capacity()
        + record.pod.as_ref().map_or(0, |p| p.namespace.capacity() + p.name.capacity())
        + record.remote_name.as_ref().map_or(0, String::capacity);
    let slots = size_of::<ConnState>()
        + 2 * size_of::<ConnKey>()
        + size_of::<Entry>()
        + size_of::<TupleEntry>()
        + size_of::<(SocketAddr, SocketAddr)>();
    let order = size_of::<(u64, u64)>() + size_of::<ConnKey>();
    (slots * 3 / 2 + order + strings + state.parser.held_bytes()) as u64
}

impl Tracker {
    /// Gives the tracker its share of a memory budget, and an idle timeout.
    pub fn set_budget(&mut self, budget: Budget) {
        self.budget = budget;
    }

    pub fn memory_stats(&self) -> MemoryStats {
        self.budget.stats()
    }

    /// After an event of `key` (`fed` bytes; `finished`: the parser emitted
    /// something, so its state likely shrank): the estimate, then the
    /// budget kept.
    pub(super) fn account(&mut self, key: ConnKey, now_ns: u64, fed: usize, finished: bool, out: &mut Vec<Record>) {
        let recount = self.budget.touch(key, now_ns, fed as u64);
        if recount || finished {
            if let Some(state) = self.conns.get(&key) {
                let held = connection_bytes(state);
                self.budget.set(key, held);
            }
        }
        self.keep_budget(out);
    }

    /// Over the budget: forget connections, least recently used first,
    /// until under it (or none is left; what captures hold is theirs).
    pub(super) fn keep_budget(&mut self, out: &mut Vec<Record>) {
        while self.budget.gauge.over_budget() {
            let Some((key, _)) = self.budget.least_recent() else { break };
            let held = self.budget.forget(&key);
            self.budget.stats.evicted_connections += 1;
            self.budget.stats.dropped_bytes = self.budget.stats.dropped_bytes.saturating_add(held);
            log::debug!("evicted connection {key:?} ({held} bytes) to stay within the memory budget");
            self.close(key, EVICTED, out);
        }
    }

    /// Forgets connections silent since before `now_ns` minus the idle
    /// timeout.
    pub fn evict_idle(&mut self, now_ns: u64, out: &mut Vec<Record>) {
        let cutoff = now_ns.saturating_sub(self.budget.idle_ns);
        while let Some((key, last)) = self.budget.least_recent() {
            if last >= cutoff {
                break;
            }
            self.budget.forget(&key);
            self.budget.stats.idle_connections += 1;
            self.close(key, IDLE, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::tests::event;
    use crate::proto::ParseOptions;
    use spy_protocol::record::Direction;

    const MIB: u64 = 1024 * 1024;

    /// An HTTP/1 request head that never ends: the parser holds all of it.
    fn partial_head(pad: usize) -> Vec<u8> {
        let mut head = b"GET /held HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..pad / 1000 {
            head.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "p".repeat(990)).as_bytes());
        }
        head
    }

    fn tracker(budget: u64, idle_ns: u64) -> Tracker {
        let mut tracker = Tracker::new(ParseOptions::default(), false);
        tracker.set_budget(Budget::new(MemoryGauge::new(budget), idle_ns));
        tracker
    }

    /// Connections that each hold 32 KiB of an unfinished head, 1000 of
    /// them against a 4 MiB budget: the estimate stays within the budget,
    /// the oldest go first, each says why, and the drop is counted.
    #[test]
    fn over_the_budget_the_least_recently_used_go_first() {
        let mut tracker = tracker(4 * MIB, u64::MAX);
        let head = partial_head(32 * 1024);
        let mut out = Vec::new();
        for ptr in 0..1000u64 {
            let mut ev = event(ptr + 1, Direction::Send, &head);
            ev.ts_ns = ptr + 1;
            ev.local = Some(format!("127.0.0.1:{}", 20000 + ptr).parse().expect("addr"));
            tracker.on_data(&ev, &mut out);
            assert!(tracker.budget.gauge().held() <= 4 * MIB, "{}", tracker.budget.gauge().held());
        }
        let stats = tracker.memory_stats();
        assert!(stats.evicted_connections > 800, "{stats:?}");
        assert!(stats.dropped_bytes >= stats.evicted_connections * 32 * 1024, "{stats:?}");
        // What is left is the most recent, and what held that much.
        assert!(tracker.conns.contains_key(&ConnKey { tgid: 10, conn_ptr: 1000 }));
        assert!(!tracker.conns.contains_key(&ConnKey { tgid: 10, conn_ptr: 1 }));
        assert!(stats.held_bytes >= (1000 - stats.evicted_connections) * 32 * 1024, "{stats:?}");
        // Each eviction is told: the unfinished request, as incomplete.
        let told = out.iter().filter(|r| matches!(r, Record::Chunk(_) | Record::Exchange(_))).count();
        assert!(told as u64 >= stats.evicted_connections, "{told} records for {stats:?}");
        // A connection that ends gives its bytes back.
        tracker.finish(&mut out);
        assert_eq!(tracker.budget.held(), 0);
        assert_eq!(tracker.budget.gauge().held(), 0);
    }

    /// The estimate follows what the parser holds, both ways: a head that
    /// grows is counted, and a finished exchange gives its bytes back.
    #[test]
    fn the_estimate_follows_the_parser() {
        let mut tracker = tracker(64 * MIB, u64::MAX);
        let mut out = Vec::new();
        // Under the HTTP/1 parser's 64 KiB head limit, so it holds it all.
        let head = partial_head(60 * 1024);
        for piece in head.chunks(1000) {
            tracker.on_data(&event(1, Direction::Send, piece), &mut out);
        }
        let grown = tracker.budget.held();
        assert!(grown >= 60 * 1024, "{grown}");
        tracker.on_data(&event(1, Direction::Send, b"\r\n"), &mut out);
        tracker.on_data(&event(1, Direction::Recv, b"HTTP/1.1 204 No Content\r\n\r\n"), &mut out);
        let after = tracker.budget.held();
        // The request's headers went; the input buffer keeps its capacity
        // (still allocated), and the estimate says so.
        assert!(after < grown, "{after} after the exchange ended (was {grown})");
        assert!(out.iter().any(|r| matches!(r, Record::Exchange(_))));
    }

    #[test]
    fn silent_connections_are_forgotten_after_the_idle_timeout() {
        let mut tracker = tracker(64 * MIB, 1_000);
        let mut out = Vec::new();
        let mut old = event(1, Direction::Send, b"GET /old HTTP/1.1\r\n");
        old.ts_ns = 100;
        tracker.on_data(&old, &mut out);
        let mut new = event(2, Direction::Send, b"GET /new HTTP/1.1\r\n");
        new.ts_ns = 900;
        new.local = Some("127.0.0.1:40001".parse().expect("addr"));
        tracker.on_data(&new, &mut out);
        tracker.evict_idle(1_500, &mut out);
        assert_eq!(tracker.memory_stats().idle_connections, 1);
        assert!(!tracker.conns.contains_key(&ConnKey { tgid: 10, conn_ptr: 1 }));
        assert!(tracker.conns.contains_key(&ConnKey { tgid: 10, conn_ptr: 2 }));
        assert_eq!(tracker.memory_stats().evicted_connections, 0);
    }
}
