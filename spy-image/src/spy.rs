//! The spy's loop: moves values between the stages and decides nothing
//! itself. Kernel events are decoded and mapped in `probes::event`; process
//! events go to the target lifecycle (`targets::lifecycle`), data events and
//! handshakes to the connection tracker (`conn`); the records both produce
//! go to a sink.

use std::path::Path;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use spy_protocol::record::{Bye, Hello, PodRef, Record, Stats, Warning};
use spy_protocol::sink::Sink;

use crate::capture::{CaptureEvent, CaptureStats, Captures};
use crate::conn::{Budget, Tracker, WireHandshake};
use crate::error::chain;
use crate::memory::MemoryGauge;
use crate::probes::clock::WallClock;
use crate::probes::event::{self, KernelEvent};
use crate::probes::{KernelStats, LoadOptions, ProbeError, Probes};
use crate::proto::ParseOptions;
use crate::targets::host::ProcHost;
use crate::targets::lifecycle::{TargetError, Targets};

#[derive(Clone, Debug)]
pub struct SpyOptions {
    /// Trace what targets fork (and what those exec), too.
    pub follow_children: bool,
    pub parse: ParseOptions,
    /// No protocol parsing: chunks exactly as moved.
    pub raw: bool,
    pub load: LoadOptions,
    /// How often targets' mapped files are checked for newly loaded TLS
    /// libraries (dlopen), besides at every exec.
    pub rescan_interval: Duration,
    /// How often a `stats` record is sent (None: only at the end).
    pub stats_interval: Option<Duration>,
    /// End the session when every target has exited.
    pub exit_when_targets_gone: bool,
    /// The node name for the `hello` record.
    pub node: Option<String>,
    /// Watch each target's network namespace for TLS handshakes, so every
    /// TLS connection is shown, decrypted or not.
    pub handshakes: bool,
    /// How long a handshake of a probed process waits for the first
    /// plaintext before it is reported as not decrypted.
    pub plaintext_wait: Duration,
    /// Bytes the connections and the packet captures may hold together
    /// (`--memory-budget`); past it the least recently used connections go.
    pub memory_budget: u64,
    /// Connections silent this long are forgotten.
    pub idle_timeout: Duration,
}

impl Default for SpyOptions {
    fn default() -> Self {
        SpyOptions {
            follow_children: true,
            parse: ParseOptions::default(),
            raw: false,
            load: LoadOptions::default(),
            rescan_interval: Duration::from_secs(2),
            stats_interval: None,
            exit_when_targets_gone: false,
            node: None,
            handshakes: true,
            plaintext_wait: Duration::from_secs(5),
            memory_budget: spy_protocol::limits::DEFAULT_MEMORY_BUDGET,
            idle_timeout: Duration::from_secs(spy_protocol::limits::IDLE_TIMEOUT_SECS),
        }
    }
}

/// Messages to a running spy.
#[derive(Debug)]
pub enum Control {
    /// Spy on every process of a container (by its runtime id) that sits
    /// in the cgroup of the pod with UID `pod_uid`.
    AddContainer { id: String, pod_uid: String, pod: PodRef },
    /// End the session, saying why.
    Stop(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SpyError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Target(#[from] TargetError<ProbeError>),
    #[error("cannot read the ring buffer")]
    Ring(#[source] std::io::Error),
    #[error("cannot write records")]
    Output(#[source] std::io::Error),
}

/// How often the ring buffer is drained when the kernel did not wake us:
/// the most a small batch of events waits.
const RING_DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// Rescans of settled processes happen every this many ticks.
const SETTLED_RESCAN_EVERY: u32 = 8;

pub struct Spy {
    probes: Probes,
    targets: Targets<ProcHost>,
    tracker: Tracker,
    options: SpyOptions,
    clock: WallClock,
    /// Records made since the last flush, in the order they happened.
    out: Vec<Record>,
    decode_errors: u64,
    /// Packet captures of the targets' network namespaces (None when
    /// handshakes are not watched).
    captures: Option<Captures>,
    capture_events: Option<mpsc::Receiver<CaptureEvent>>,
}

impl Spy {
    /// Loads the probes. Nothing is traced until processes are added.
    pub fn start(options: SpyOptions) -> Result<Spy, SpyError> {
        let probes = Probes::load(&options.load)?;
        let gauge = MemoryGauge::new(options.memory_budget);
        let (captures, capture_events) = if options.handshakes {
            let (captures, events) = Captures::new(Some(probes.socket_owners()), gauge.clone());
            (Some(captures), Some(events))
        } else {
            (None, None)
        };
        let mut tracker = Tracker::new(options.parse.clone(), options.raw);
        let idle_ns = u64::try_from(options.idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        tracker.set_budget(Budget::new(gauge, idle_ns));
        Ok(Spy {
            captures,
            capture_events,
            probes,
            targets: Targets::new(ProcHost, options.follow_children, options.plaintext_wait),
            tracker,
            options,
            clock: WallClock::new(),
            out: Vec::new(),
            decode_errors: 0,
        })
    }

    pub fn hello(&self) -> Record {
        Record::Hello(Hello {
            spy_version: crate::VERSION.to_string(),
            kernel: kernel_release(),
            node: self.options.node.clone(),
            btf: true,
            ts_ns: self.clock.now_ns(),
        })
    }

    /// Probes a library or executable file before any process maps it, so
    /// a command we are about to start is traced from its first TLS call.
    /// `Ok(false)`: nothing to probe in it.
    pub fn attach_library(&mut self, path: &Path, is_exe: bool) -> Result<bool, SpyError> {
        Ok(self.targets.attach_file(path, is_exe, &mut self.probes)?)
    }

    /// Starts tracing `pid`, a running process: the kernel filter, its
    /// network namespace, then its TLS libraries.
    pub fn add_process(&mut self, pid: u32, pod: Option<PodRef>) -> Result<(), SpyError> {
        self.targets.add_process(pid, pod, &mut self.probes)?;
        self.watch_network(pid);
        let meta = self.targets.examine_new(pid, &mut self.probes, &mut self.out);
        self.tracker.describe_process(pid, meta);
        Ok(())
    }

    /// Starts tracing every process of a container that the kubelet put in
    /// the pod's cgroup. Processes it starts later are followed as
    /// children of these.
    pub fn add_container(&mut self, id: &str, pod_uid: &str, pod: PodRef) {
        for pid in self.targets.new_container_pids(id, pod_uid, &mut self.out) {
            if let Err(err) = self.add_process(pid, Some(pod.clone())) {
                self.out.push(Record::Warning(Warning { message: chain(&err), pid: Some(pid) }));
            }
        }
    }

    /// Starts tracing a process that is about to exec `program`, the
    /// program to spy on: its report waits for the exec.
    pub fn add_starting_process(&mut self, pid: u32, program: &Path) -> Result<(), SpyError> {
        self.targets.add_starting_process(pid, program, &mut self.probes)?;
        self.watch_network(pid);
        Ok(())
    }

    /// Starts watching the network namespace of `pid` for handshakes (a
    /// namespace already watched just gains a process).
    fn watch_network(&mut self, pid: u32) {
        let Some(captures) = self.captures.as_mut() else { return };
        if let Err(err) = captures.watch(pid) {
            self.out.push(Record::Warning(Warning { message: chain(&err), pid: Some(pid) }));
        }
    }

    /// A handshake seen on the wire: the lifecycle says whether its owner's
    /// plaintext can be captured, the tracker ties it to its connection.
    fn on_capture(&mut self, event: CaptureEvent) {
        match event {
            CaptureEvent::Handshake(seen) => {
                let plaintext = self.targets.handshake_verdict(&seen.owner, &mut self.probes, &mut self.out);
                let handshake = WireHandshake::from_seen(&seen);
                self.tracker.on_handshake(handshake, plaintext, self.clock.now_ns(), &mut self.out);
            }
            CaptureEvent::Failed { pid, message } => {
                self.out.push(Record::Warning(Warning { message, pid: Some(pid) }));
            }
        }
    }

    /// Runs until told to stop (or, with `exit_when_targets_gone`, until
    /// every target exited). Returns the final counters.
    pub async fn run(mut self, sink: &mut dyn Sink, mut control: mpsc::Receiver<Control>) -> Result<Stats, SpyError> {
        let ring = self
            .probes
            .take_ring()
            .ok_or_else(|| SpyError::Ring(std::io::Error::other("the ring buffer was already taken")))?;
        // SAFETY: the RingBuf owns its map fd, which stays open and the same
        // for as long as the RingBuf lives, and the AsyncFd owns the RingBuf.
        let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| SpyError::Ring(e.into()))?;
        for pid in self.targets.pids() {
            self.tracker.describe_process(pid, self.targets.process_meta(pid));
        }
        self.flush(sink)?;

        let mut rescan = tokio::time::interval(self.options.rescan_interval / SETTLED_RESCAN_EVERY);
        let mut ticks = 0u32;
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // The kernel wakes us only for a full batch (TLSSPY_WAKEUP_BYTES);
        // smaller ones are picked up on this tick.
        let mut drain = tokio::time::interval(RING_DRAIN_INTERVAL);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let stats_every = self.options.stats_interval.unwrap_or(Duration::from_secs(3600));
        let mut stats_tick = tokio::time::interval(stats_every);
        stats_tick.tick().await;
        let mut capture_events = self.capture_events.take();

        let reason = loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard.map_err(SpyError::Ring)?;
                    let ring = guard.get_inner_mut();
                    while let Some(item) = ring.next() {
                        self.handle(&item);
                    }
                    guard.clear_ready();
                }
                _ = drain.tick() => {
                    let ring = ring.get_mut();
                    while let Some(item) = ring.next() {
                        self.handle(&item);
                    }
                }
                Some(event) = next_capture_event(&mut capture_events) => {
                    // Kernel events first: the exec, the library's first
                    // call and the plaintext of this connection happened
                    // before its handshake was read off the wire.
                    {
                        let ring = ring.get_mut();
                        while let Some(item) = ring.next() {
                            self.handle(&item);
                        }
                    }
                    self.on_capture(event);
                    // Take what else is queued in the same turn.
                    while let Some(event) = capture_events.as_mut().and_then(|rx| rx.try_recv().ok()) {
                        self.on_capture(event);
                    }
                }
                message = control.recv() => match message {
                    Some(Control::AddContainer { id, pod_uid, pod }) => self.add_container(&id, &pod_uid, pod),
                    Some(Control::Stop(reason)) => break reason,
                    None => break "control channel closed".to_string(),
                },
                _ = rescan.tick() => {
                    ticks = ticks.wrapping_add(1);
                    let settled_too = ticks.is_multiple_of(SETTLED_RESCAN_EVERY);
                    self.targets.rescan(settled_too, &mut self.probes, &mut self.out);
                    self.tracker.expire_handshakes(self.clock.now_ns(), &mut self.out);
                    self.tracker.evict_idle(self.clock.now_ns(), &mut self.out);
                }
                _ = stats_tick.tick(), if self.options.stats_interval.is_some() => {
                    let stats = self.stats();
                    self.out.push(Record::Stats(stats));
                }
            }
            self.flush(sink)?;
            if self.options.exit_when_targets_gone && self.targets.is_empty() {
                break "every target exited".to_string();
            }
        };

        // Events already in the ring belong to this session.
        {
            let ring = ring.get_mut();
            while let Some(item) = ring.next() {
                self.handle(&item);
            }
        }
        // So do the handshakes the captures still hold.
        if let Some(captures) = self.captures.as_mut() {
            captures.stop();
        }
        while let Some(event) = capture_events.as_mut().and_then(|rx| rx.try_recv().ok()) {
            self.on_capture(event);
        }
        self.tracker.finish(&mut self.out);
        let stats = self.stats();
        self.out.push(Record::Stats(stats.clone()));
        self.out.push(Record::Bye(Bye { reason, stats: stats.clone() }));
        self.flush(sink)?;
        Ok(stats)
    }

    /// One ring buffer record to the stage it belongs to.
    fn handle(&mut self, bytes: &[u8]) {
        let event = match event::decode(bytes) {
            Ok(event) => event,
            Err(err) => {
                self.decode_errors += 1;
                log::warn!("{err}");
                return;
            }
        };
        match event {
            KernelEvent::Data { header, data } => {
                // The target is described before its first record.
                self.targets.on_tls_call(header.tgid, header.library_id, &mut self.probes, &mut self.out);
                let ev = event::data_event(&header, data, self.clock.wall_ns(header.ts_ns));
                self.tracker.on_data(&ev, &mut self.out);
            }
            KernelEvent::Fork(proc_event) => {
                if let Some(meta) = self.targets.on_fork(proc_event.tgid, proc_event.parent_tgid) {
                    self.watch_network(proc_event.tgid);
                    self.tracker.describe_process(proc_event.tgid, meta);
                }
            }
            KernelEvent::Exec(proc_event) => {
                let comm = event::comm(&proc_event.comm);
                if let Some(meta) = self.targets.on_exec(proc_event.tgid, comm, &mut self.probes, &mut self.out) {
                    self.tracker.describe_process(proc_event.tgid, meta);
                }
            }
            KernelEvent::Close(close) => {
                let (conn_ptr, fd) = event::closed(&close);
                self.tracker.connection_closed(close.tgid, conn_ptr, fd, &mut self.out);
            }
            KernelEvent::Exit(proc_event) => {
                let pid = proc_event.tgid;
                if self.targets.on_exit(pid) {
                    self.tracker.process_exited(pid, &mut self.out);
                    if let Some(captures) = self.captures.as_mut() {
                        captures.unwatch(pid);
                    }
                }
            }
        }
    }

    fn flush(&mut self, sink: &mut dyn Sink) -> Result<(), SpyError> {
        for record in self.out.drain(..) {
            sink.record(record).map_err(SpyError::Output)?;
        }
        sink.flush().map_err(SpyError::Output)
    }

    pub fn kernel_stats(&self) -> KernelStats {
        self.probes.kernel_stats()
    }

    /// Why none of the targets can be spied on, when that is so.
    pub fn nothing_to_probe(&self) -> Option<String> {
        self.targets.nothing_to_probe()
    }

    /// The counters of every stage, added up.
    fn stats(&self) -> Stats {
        let mut stats =
            self.probes.kernel_stats().as_record() + self.tracker.stats.as_record() + self.capture_stats().as_record();
        // The gauge is one for both: the tracker's view of it, plus what
        // the captures counted as not held.
        let captured = stats.memory.clone();
        stats.memory = self.tracker.memory_stats();
        stats.memory.dropped_bytes = stats.memory.dropped_bytes.saturating_add(captured.dropped_bytes);
        stats.memory.unbuffered_segments = captured.unbuffered_segments;
        stats.undecoded_events = self.decode_errors;
        stats
    }

    pub fn capture_stats(&self) -> CaptureStats {
        self.captures.as_ref().map(Captures::stats).unwrap_or_default()
    }
}

async fn next_capture_event(events: &mut Option<mpsc::Receiver<CaptureEvent>>) -> Option<CaptureEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
