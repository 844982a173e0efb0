//! Every TLS connection of the targets, decrypted or not: one packet
//! capture per network namespace that holds a target (not one per process),
//! TCP only, each connection's hellos read and reported with the target
//! that owns its socket.
//!
//! A capture is a thread: it enters the namespace (setns on
//! /proc/PID/ns/net), opens a filtered packet socket there, reassembles the
//! first bytes of each flow ([`flows`]), finds the owning target
//! ([`owner`]) and sends [`CaptureEvent`]s to the spy.

// Only the socket module (packet sockets, setns, a BPF filter) may hold
// unsafe code; it says so itself.
#![deny(unsafe_code)]

pub mod flows;
pub mod owner;
pub mod packet;
#[cfg(target_os = "linux")]
pub mod socket;

#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::HashMap;
    use std::fs::File;
    use std::os::unix::fs::MetadataExt as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use spy_protocol::record::{HandshakeStats, MemoryStats, Stats};
    use tokio::sync::mpsc;

    use super::flows::{FlowStats, FlowTable, Owners, SeenHandshake};
    use super::owner::{self, KernelOwners, Owner, OwnerResolver};
    use super::packet;
    use super::socket::{self, PacketSocket};
    use crate::memory::MemoryGauge;
    use crate::targets::process;
    use crate::targets::unprobed;

    /// Handshakes waiting for the spy; past this they are dropped and counted.
    pub const CAPTURE_QUEUE: usize = 1024;
    /// How often a capture checks timeouts and kernel drop counters.
    const TICK: Duration = Duration::from_millis(250);
    /// Scheduling priority of capture threads (root may raise it).
    const CAPTURE_NICE: libc::c_int = -10;
    /// How long `watch` waits for a new capture's socket to be open.
    const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
    /// Packets still read after a stop request (what was queued before it).
    const MAX_PACKETS_AFTER_STOP: u32 = 10_000;

    /// What captures tell the spy.
    #[derive(Debug)]
    pub enum CaptureEvent {
        Handshake(Box<SeenHandshake<Owner>>),
        /// A namespace could not be watched.
        Failed {
            pid: u32,
            message: String,
        },
    }

    /// Counters of all captures, for the `stats` record.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct CaptureStats {
        pub namespaces: u64,
        pub packets: u64,
        /// Packets the kernel dropped (socket buffer full).
        pub dropped_packets: u64,
        /// Packets that were not TCP segments we could read.
        pub skipped_packets: u64,
        /// Handshakes dropped because the spy fell behind.
        pub dropped_handshakes: u64,
        pub flows: FlowStats,
    }

    /// Every field named, so a new counter cannot be left out of the sum.
    impl std::ops::AddAssign<&CaptureStats> for CaptureStats {
        fn add_assign(&mut self, other: &CaptureStats) {
            let CaptureStats { namespaces, packets, dropped_packets, skipped_packets, dropped_handshakes, flows } =
                other;
            self.namespaces += namespaces;
            self.packets += packets;
            self.dropped_packets += dropped_packets;
            self.skipped_packets += skipped_packets;
            self.dropped_handshakes += dropped_handshakes;
            self.flows += flows;
        }
    }

    impl CaptureStats {
        /// The capture's part of the `stats` record.
        /// Every field is named: a new counter must be mapped, or said to
        /// have no place in the record (`_`).
        pub fn as_record(&self) -> Stats {
            let CaptureStats { namespaces, packets, dropped_packets, skipped_packets: _, dropped_handshakes, flows } =
                *self;
            let FlowStats {
                tls: _,
                not_tls,
                malformed,
                joined_midway,
                others,
                evicted,
                unowned_segments,
                over_budget_segments,
                over_budget_bytes,
            } = flows;
            Stats {
                memory: MemoryStats {
                    unbuffered_segments: unowned_segments + over_budget_segments,
                    dropped_bytes: over_budget_bytes,
                    ..MemoryStats::default()
                },
                handshakes: HandshakeStats {
                    namespaces,
                    packets,
                    dropped_packets,
                    not_tls_flows: not_tls,
                    malformed_flows: malformed,
                    joined_midway_flows: joined_midway,
                    other_flows: others,
                    evicted_flows: evicted,
                    dropped_handshakes,
                    ..HandshakeStats::default()
                },
                ..Stats::default()
            }
        }
    }

    #[derive(Debug, thiserror::Error)]
    pub enum CaptureError {
        #[error("cannot open the network namespace of process {pid}")]
        Namespace { pid: u32, source: std::io::Error },
        #[error("cannot start a capture thread: {0}")]
        Thread(std::io::Error),
    }

    struct NetnsCapture {
        pids: Arc<Mutex<Vec<u32>>>,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    /// The captures of a spy, one per network namespace of its targets.
    pub struct Captures {
        by_netns: HashMap<u64, NetnsCapture>,
        netns_of: HashMap<u32, u64>,
        /// Captures told to stop whose last handshakes may still come.
        stopping: Vec<JoinHandle<()>>,
        /// Every capture's counters, also of those that ended.
        stats: Vec<Arc<Mutex<CaptureStats>>>,
        events: mpsc::Sender<CaptureEvent>,
        kernel: Option<Arc<dyn KernelOwners>>,
        /// The agent's memory budget, which out-of-order segments count against.
        gauge: Arc<MemoryGauge>,
    }

    impl Captures {
        /// `kernel`: the owners the probes record (None: /proc alone).
        pub fn new(
            kernel: Option<Arc<dyn KernelOwners>>,
            gauge: Arc<MemoryGauge>,
        ) -> (Captures, mpsc::Receiver<CaptureEvent>) {
            let (events, rx) = mpsc::channel(CAPTURE_QUEUE);
            (
                Captures {
                    by_netns: HashMap::new(),
                    netns_of: HashMap::new(),
                    stopping: Vec::new(),
                    stats: Vec::new(),
                    events,
                    kernel,
                    gauge,
                },
                rx,
            )
        }

        /// Watches the connections of `pid`: starts a capture in its
        /// network namespace unless one runs there already. Returns once
        /// the capture's socket is open, so a connection the process makes
        /// from then on is seen from its first packet.
        pub fn watch(&mut self, pid: u32) -> Result<(), CaptureError> {
            if self.netns_of.contains_key(&pid) {
                return Ok(());
            }
            let path = format!("/proc/{pid}/ns/net");
            let ns = match File::open(&path) {
                Ok(ns) => ns,
                // Gone already (a short-lived child): nothing to watch.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(source) => return Err(CaptureError::Namespace { pid, source }),
            };
            let netns = ns.metadata().map_err(|source| CaptureError::Namespace { pid, source })?.ino();
            self.netns_of.insert(pid, netns);
            if let Some(capture) = self.by_netns.get(&netns) {
                lock(&capture.pids).push(pid);
                return Ok(());
            }
            let pids = Arc::new(Mutex::new(vec![pid]));
            let stop = Arc::new(AtomicBool::new(false));
            let stats = Arc::new(Mutex::new(CaptureStats { namespaces: 1, ..CaptureStats::default() }));
            self.stats.push(stats.clone());
            let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
            let worker = Worker {
                pid,
                ns,
                netns,
                kernel: self.kernel.clone(),
                gauge: self.gauge.clone(),
                pids: pids.clone(),
                stop: stop.clone(),
                stats,
                events: self.events.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("tlsspy-capture-{netns}"))
                .spawn(move || worker.run(ready_tx))
                .map_err(CaptureError::Thread)?;
            self.by_netns.insert(netns, NetnsCapture { pids, stop, thread: Some(thread) });
            // A failure to open is reported by the thread as an event.
            let _ = ready.recv_timeout(OPEN_TIMEOUT);
            Ok(())
        }

        /// `pid` is gone: a namespace without targets is no longer watched.
        pub fn unwatch(&mut self, pid: u32) {
            let Some(netns) = self.netns_of.remove(&pid) else { return };
            let Some(capture) = self.by_netns.get(&netns) else { return };
            let empty = {
                let mut pids = lock(&capture.pids);
                pids.retain(|&p| p != pid);
                pids.is_empty()
            };
            if empty {
                if let Some(mut capture) = self.by_netns.remove(&netns) {
                    // It reports what it holds and ends within one receive
                    // timeout; `stop` waits for it.
                    capture.stop.store(true, Ordering::Relaxed);
                    self.stopping.extend(capture.thread.take());
                }
            }
        }

        /// Stops every capture and waits for them: what they saw is in the
        /// channel when this returns.
        pub fn stop(&mut self) {
            for capture in self.by_netns.values() {
                capture.stop.store(true, Ordering::Relaxed);
            }
            for (_, mut capture) in self.by_netns.drain() {
                self.stopping.extend(capture.thread.take());
            }
            for thread in self.stopping.drain(..) {
                let _ = thread.join();
            }
            self.netns_of.clear();
        }

        pub fn stats(&self) -> CaptureStats {
            let mut total = CaptureStats::default();
            for stats in &self.stats {
                total += &*lock(stats);
            }
            total
        }
    }

    impl Drop for Captures {
        fn drop(&mut self) {
            for capture in self.by_netns.values() {
                capture.stop.store(true, Ordering::Relaxed);
            }
        }
    }

    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now_ns() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    }

    /// Owners, described while they live: name, libraries, executable
    /// (what the reason of a closed lock names). Cheap: the capture must
    /// keep up with the packets.
    struct DescribedOwners {
        /// First: what the kernel recorded at connect()/accept().
        kernel: Option<Arc<dyn KernelOwners>>,
        netns: u64,
        /// Then: /proc, for connections made before the spy came.
        resolver: OwnerResolver,
    }

    impl Owners<Owner> for DescribedOwners {
        fn owner(&mut self, client: std::net::SocketAddr, server: std::net::SocketAddr) -> Option<Owner> {
            let recorded = self.kernel.as_deref().and_then(|k| owner::kernel_owner(k, self.netns, client, server));
            let mut owner = match recorded {
                Some(owner) => owner,
                None => self.resolver.owner(client, server)?,
            };
            // The name now if it still runs, else the one the kernel recorded.
            owner.process = process::name(owner.pid).ok().or(owner.process);
            let files = process::mapped_files(owner.pid).unwrap_or_default();
            owner.unprobed = unprobed::library_hint(&files);
            owner.exe = File::open(process::proc_dir(owner.pid).join("exe")).ok().map(Arc::new);
            Some(owner)
        }
    }

    struct Worker {
        pid: u32,
        ns: File,
        netns: u64,
        kernel: Option<Arc<dyn KernelOwners>>,
        gauge: Arc<MemoryGauge>,
        pids: Arc<Mutex<Vec<u32>>>,
        stop: Arc<AtomicBool>,
        stats: Arc<Mutex<CaptureStats>>,
        events: mpsc::Sender<CaptureEvent>,
    }

    impl Worker {
        fn run(self, ready: std::sync::mpsc::SyncSender<()>) {
            // This thread lives in the target's namespace from here on.
            let opened = socket::enter_netns(&self.ns).and_then(|()| PacketSocket::open());
            let _ = ready.send(());
            // Who owns a connection is read from /proc while the process
            // lives: a capture that falls behind a busy machine loses that
            // race for short-lived clients. Ahead of ordinary work, then.
            socket::set_thread_nice(CAPTURE_NICE);
            let socket = match opened {
                Ok(socket) => socket,
                Err(err) => {
                    let message =
                        format!("cannot capture the TCP traffic of process {}'s network namespace: {err}", self.pid);
                    let _ = self.events.try_send(CaptureEvent::Failed { pid: self.pid, message });
                    return;
                }
            };
            let mut table: FlowTable<Owner> = FlowTable::with_gauge(self.gauge.clone());
            let mut owners = DescribedOwners {
                kernel: self.kernel.clone(),
                netns: self.netns,
                resolver: OwnerResolver::new(self.pids.clone()),
            };
            let mut buf = vec![0u8; socket::SNAPLEN as usize];
            let mut out = Vec::new();
            let mut local = CaptureStats::default();
            let mut last_tick = Instant::now();
            let mut after_stop = 0u32;
            loop {
                let stopping = self.stop.load(Ordering::Relaxed);
                if stopping {
                    after_stop += 1;
                    if after_stop > MAX_PACKETS_AFTER_STOP {
                        break;
                    }
                }
                // When stopping, take what is queued without waiting.
                match socket.recv(&mut buf, !stopping) {
                    Ok(Some(received)) => {
                        local.packets += 1;
                        match packet::parse(&buf[..received.len], received.wire_len) {
                            Ok(segment) => table.on_segment(&segment, now_ns(), &mut owners, &mut out),
                            Err(_) => local.skipped_packets += 1,
                        }
                    }
                    Ok(None) if stopping => break,
                    Ok(None) => {}
                    Err(err) => {
                        let message = format!("packet capture of process {}'s namespace failed: {err}", self.pid);
                        let _ = self.events.try_send(CaptureEvent::Failed { pid: self.pid, message });
                        break;
                    }
                }
                if last_tick.elapsed() >= TICK {
                    last_tick = Instant::now();
                    table.tick(now_ns(), &mut out);
                    local.dropped_packets += socket.take_drops().unwrap_or(0);
                    self.publish(&mut local, &table, &mut out);
                }
                if !out.is_empty() {
                    self.publish(&mut local, &table, &mut out);
                }
            }
            table.flush(&mut out);
            local.dropped_packets += socket.take_drops().unwrap_or(0);
            self.publish(&mut local, &table, &mut out);
        }

        fn publish(&self, local: &mut CaptureStats, table: &FlowTable<Owner>, out: &mut Vec<SeenHandshake<Owner>>) {
            for handshake in out.drain(..) {
                if self.events.try_send(CaptureEvent::Handshake(Box::new(handshake))).is_err() {
                    local.dropped_handshakes += 1;
                }
            }
            local.flows = table.stats;
            let mut shared = lock(&self.stats);
            let namespaces = shared.namespaces;
            *shared = *local;
            shared.namespaces = namespaces;
        }
    }
}
