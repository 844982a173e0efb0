//! The agent's one memory budget, shared by the stages that hold traffic:
//! the connection tracker (parser state per connection, `conn::budget`)
//! and the packet captures (out-of-order segments held for reassembly,
//! `capture::flows`). Each stage says what it holds; the tracker evicts
//! connections when the sum is over the budget, and a capture holds no new
//! segment that would take the sum over it.
//!
//! Captures run on their own threads: the counts are atomics, read and
//! written without a lock. What they say is an estimate (see
//! `proto::held`), good to within the slack the fixed overhead allows.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What the stages hold against one budget.
#[derive(Debug)]
pub struct MemoryGauge {
    budget: u64,
    connections: AtomicU64,
    reassembly: AtomicU64,
    /// The most held at once, as told.
    peak: AtomicU64,
}

impl MemoryGauge {
    pub fn new(budget: u64) -> Arc<MemoryGauge> {
        Arc::new(MemoryGauge {
            budget,
            connections: AtomicU64::new(0),
            reassembly: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        })
    }

    /// No budget (tests, and tools that count without bounding).
    pub fn unlimited() -> Arc<MemoryGauge> {
        MemoryGauge::new(u64::MAX)
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Everything held, as last told.
    pub fn held(&self) -> u64 {
        self.connections.load(Ordering::Relaxed).saturating_add(self.reassembly())
    }

    pub fn reassembly(&self) -> u64 {
        self.reassembly.load(Ordering::Relaxed)
    }

    /// The most held at once so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(self.held())
    }

    /// The tracker's total (it keeps the sum over its connections itself).
    pub fn set_connections(&self, bytes: u64) {
        self.connections.store(bytes, Ordering::Relaxed);
        self.peak.fetch_max(self.held(), Ordering::Relaxed);
    }

    pub fn over_budget(&self) -> bool {
        self.held() > self.budget
    }

    /// Reassembly takes `bytes` if that keeps the sum within the budget.
    /// Two captures may both pass the check at once: the overshoot is at
    /// most one segment each, which the slack covers.
    pub fn try_hold(&self, bytes: u64) -> bool {
        if self.held().saturating_add(bytes) > self.budget {
            return false;
        }
        self.reassembly.fetch_add(bytes, Ordering::Relaxed);
        self.peak.fetch_max(self.held(), Ordering::Relaxed);
        true
    }

    /// Reassembly lets go of `bytes` it held.
    pub fn release(&self, bytes: u64) {
        let _ =
            self.reassembly.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| Some(held.saturating_sub(bytes)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembly_is_held_only_within_the_budget() {
        let gauge = MemoryGauge::new(100);
        gauge.set_connections(60);
        assert!(gauge.try_hold(40));
        assert!(!gauge.try_hold(1));
        assert_eq!(gauge.held(), 100);
        assert_eq!(gauge.peak(), 100);
        assert!(!gauge.over_budget());
        gauge.set_connections(61);
        assert!(gauge.over_budget());
        gauge.release(40);
        gauge.release(40);
        assert_eq!(gauge.reassembly(), 0);
        assert!(MemoryGauge::unlimited().try_hold(u64::MAX / 2));
    }
}
