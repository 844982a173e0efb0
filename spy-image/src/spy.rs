//! The spy: watches target processes, probes their TLS stacks, and turns
//! kernel events into records for a sink.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::capture::{CaptureEvent, CaptureStats, Captures};
use crate::conn::{DataEvent, Plaintext, ProcessMeta, Tracker, WireHandshake};
use crate::probes::event::{self, KernelEvent};
use crate::probes::{KernelStats, LoadOptions, ProbeError, Probes};
use crate::proto::ParseOptions;
use spy_protocol::record::{
    Bye, Direction, Handshake, HandshakeStats, Hello, Linkage, PodRef, Record, Stats, Target, TlsLibrary, TlsStack,
    Warning,
};
use spy_protocol::sink::Sink;
use crate::targets::container;
use crate::targets::process::{self, FileId};
use crate::targets::tls_stack::{self, DetectedStack};

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
        }
    }
}

/// Messages to a running spy.
#[derive(Debug)]
pub enum Control {
    /// Spy on one more process.
    AddProcess { pid: u32, pod: Option<PodRef> },
    /// Spy on every process of a container (by its runtime id).
    AddContainer { id: String, pod: PodRef },
    /// End the session, saying why.
    Stop(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SpyError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    #[error("cannot read the ring buffer: {0}")]
    Ring(std::io::Error),
    #[error("cannot write records: {0}")]
    Output(std::io::Error),
}

struct TargetState {
    pod: Option<PodRef>,
    /// Files already examined for this process.
    examined: HashSet<FileId>,
    stacks: Vec<TlsStack>,
    /// When the process started its current program (or was added).
    since: Instant,
    /// A `target` record went out for the current program.
    reported: bool,
    /// The program a starting process is about to exec: examined in its
    /// place when the process is gone before its mappings could be read (a
    /// short command), so its target record still names its TLS stack, or
    /// why it has none.
    program: Option<PathBuf>,
    /// The same program, kept until the process execs a second time: where
    /// a built-in TLS stack is looked for once /proc/PID/exe is gone.
    started_as: Option<PathBuf>,
    /// Execs seen since it became a target.
    execs: u32,
    /// The name the kernel gave at the last exec: the process's name once
    /// /proc no longer has it.
    comm: Option<String>,
    /// A TLS stack tlsspy recognises but does not probe, once looked for.
    unprobed: Option<Option<&'static str>>,
}

impl TargetState {
    fn new(pod: Option<PodRef>) -> Self {
        TargetState {
            pod,
            examined: HashSet::new(),
            stacks: Vec::new(),
            since: Instant::now(),
            reported: false,
            program: None,
            started_as: None,
            execs: 0,
            comm: None,
            unprobed: None,
        }
    }

    /// Right after an exec the dynamic linker is still mapping libraries
    /// (and programs dlopen TLS late): such a process is scanned often.
    fn is_young(&self) -> bool {
        self.since.elapsed() < YOUNG_PROCESS
    }
}

/// How long after an exec a process is rescanned at every tick and a
/// "no TLS library" verdict is held back.
const YOUNG_PROCESS: Duration = Duration::from_secs(2);
/// How often the ring buffer is drained when the kernel did not wake us:
/// the most a small batch of events waits.
const RING_DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// Rescans of settled processes happen every this many ticks.
const SETTLED_RESCAN_EVERY: u32 = 8;

pub struct Spy {
    probes: Probes,
    tracker: Tracker,
    options: SpyOptions,
    targets: HashMap<u32, TargetState>,
    /// What each file holds, examined once per (device, inode): a Go
    /// executable is analysed once however many processes run it.
    libraries: HashMap<FileId, Option<DetectedStack>>,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC: kernel timestamps are monotonic.
    wall_offset_ns: i128,
    out: Vec<Record>,
    decode_errors: u64,
    /// Packet captures of the targets' network namespaces (None when
    /// handshakes are not watched).
    captures: Option<Captures>,
    capture_events: Option<mpsc::Receiver<CaptureEvent>>,
    /// Executables searched for a built-in TLS stack tlsspy cannot probe.
    built_in_tls: HashMap<FileId, Option<&'static str>>,
    /// What exited targets allowed, for handshakes read after they ended.
    gone: HashMap<u32, Plaintext>,
    /// Exited targets whose target record never went out.
    gone_unreported: HashSet<u32>,
}

/// Exited targets remembered for late handshakes.
const MAX_GONE: usize = 1024;

impl Spy {
    /// Loads the probes. Nothing is traced until processes are added.
    pub fn start(options: SpyOptions) -> Result<Spy, SpyError> {
        let probes = Probes::load(&options.load)?;
        let (captures, capture_events) = if options.handshakes {
            let (captures, events) = Captures::new(Some(probes.socket_owners()));
            (Some(captures), Some(events))
        } else {
            (None, None)
        };
        Ok(Spy {
            captures,
            capture_events,
            built_in_tls: HashMap::new(),
            gone: HashMap::new(),
            gone_unreported: HashSet::new(),
            probes,
            tracker: Tracker::new(options.parse.clone(), options.raw),
            options,
            targets: HashMap::new(),
            libraries: HashMap::new(),
            wall_offset_ns: wall_offset_ns(),
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
            ts_ns: self.wall_ns(monotonic_ns()),
        })
    }

    /// Probes a library or executable file before any process maps it, so
    /// a command we are about to start is traced from its first TLS call.
    /// `Ok(false)`: nothing to probe in it (a Go program we cannot probe is
    /// reported with its reason once it runs).
    pub fn attach_library(&mut self, path: &Path, is_exe: bool) -> Result<bool, SpyError> {
        let Ok(file) = FileId::of(path) else { return Ok(false) };
        match self.examine(file, path, is_exe) {
            Some(DetectedStack::Openssl(library)) => self.probes.attach_openssl(file, path, &library)?,
            Some(DetectedStack::Go(bin)) => {
                if let Err(err) = self.probes.attach_go(file, path, &bin) {
                    // Not fatal: the target record says why once it runs.
                    log::info!("{err}");
                    return Ok(false);
                }
            }
            Some(DetectedStack::GoUnsupported { .. }) | None => return Ok(false),
        }
        Ok(true)
    }

    /// Starts tracing `pid`: the kernel filter first (so nothing between
    /// now and the attach is missed), then its TLS libraries.
    pub fn add_process(&mut self, pid: u32, pod: Option<PodRef>) -> Result<(), SpyError> {
        if !process::exists(pid) {
            return Err(SpyError::NoSuchProcess(pid));
        }
        self.probes.add_target(pid, self.options.follow_children)?;
        self.watch_network(pid);
        let mut state = TargetState::new(pod);
        // A running process has its libraries mapped: report at once.
        state.since = Instant::now() - YOUNG_PROCESS;
        self.targets.insert(pid, state);
        self.scan(pid);
        Ok(())
    }

    /// Starts tracing every process of a container. Processes it starts
    /// later are followed as children of these.
    pub fn add_container(&mut self, id: &str, pod: PodRef) {
        let pids = match container::pids_of(id) {
            Ok(pids) => pids,
            Err(err) => {
                self.out.push(Record::Warning(Warning { message: err.to_string(), pid: None }));
                return;
            }
        };
        for pid in pids {
            if self.targets.contains_key(&pid) {
                continue;
            }
            match self.add_process(pid, Some(pod.clone())) {
                Ok(()) => {
                    let meta = self.process_meta(pid);
                    self.tracker.describe_process(pid, meta);
                }
                Err(err) => self.out.push(Record::Warning(Warning { message: err.to_string(), pid: Some(pid) })),
            }
        }
    }

    /// Starts tracing a process that is about to exec `program`, the
    /// program to spy on: its report waits for the exec.
    pub fn add_starting_process(&mut self, pid: u32, program: &Path) -> Result<(), SpyError> {
        if !process::exists(pid) {
            return Err(SpyError::NoSuchProcess(pid));
        }
        self.probes.add_target(pid, self.options.follow_children)?;
        self.watch_network(pid);
        let mut state = TargetState::new(None);
        state.reported = true; // the exec resets this
        state.program = Some(program.to_path_buf());
        state.started_as = Some(program.to_path_buf());
        self.targets.insert(pid, state);
        Ok(())
    }

    /// Starts watching the network namespace of `pid` for handshakes (a
    /// namespace already watched just gains a process).
    fn watch_network(&mut self, pid: u32) {
        let Some(captures) = self.captures.as_mut() else { return };
        if let Err(err) = captures.watch(pid) {
            self.out.push(Record::Warning(Warning { message: err.to_string(), pid: Some(pid) }));
        }
    }

    /// A handshake seen on the wire: tied to its connection, decrypted or
    /// not, and why not.
    fn on_capture(&mut self, event: CaptureEvent) {
        match event {
            CaptureEvent::Handshake(seen) => {
                let mut record = Handshake { ts_ns: seen.ts_ns, ..Handshake::default() };
                if let Some(hello) = &seen.client_hello {
                    hello.describe(&mut record);
                }
                if let Some(hello) = &seen.server_hello {
                    hello.describe(&mut record);
                }
                let seen = *seen;
                let owner = seen.owner;
                if let (Some(what), Some(state)) = (owner.unprobed, self.targets.get_mut(&owner.pid)) {
                    if !matches!(state.unprobed, Some(Some(_))) {
                        state.unprobed = Some(Some(what));
                    }
                }
                let plaintext = match self.targets.contains_key(&owner.pid) {
                    true => self.plaintext_of(owner.pid),
                    false => self.plaintext_of_gone(&owner),
                };
                let handshake = WireHandshake {
                    pid: owner.pid,
                    local: owner.local,
                    remote: owner.remote,
                    role: owner.role,
                    process: owner.process.clone(),
                    record,
                };
                let now = self.wall_ns(monotonic_ns());
                self.tracker.on_handshake(handshake, plaintext, now, &mut self.out);
            }
            CaptureEvent::Failed { pid, message } => {
                self.out.push(Record::Warning(Warning { message, pid: Some(pid) }));
            }
        }
    }

    /// A target that exited before its handshake was read: what was known
    /// of it then, or what the capture saw while it lived. Its target
    /// record goes out now if it never did.
    fn plaintext_of_gone(&mut self, owner: &crate::capture::owner::Owner) -> Plaintext {
        let known = self.gone.get(&owner.pid).cloned();
        let reason = |what: &str| format!("no TLS library tlsspy can probe in this process: it uses {what}");
        let mut unprobed = owner.unprobed;
        if unprobed.is_none() && !matches!(known, Some(Plaintext::Expected { .. })) {
            if let Some(exe) = &owner.exe {
                let id = exe.metadata().ok().map(|m| {
                    use std::os::unix::fs::MetadataExt as _;
                    FileId { dev: m.dev(), ino: m.ino() }
                });
                unprobed = match id {
                    Some(id) => *self
                        .built_in_tls
                        .entry(id)
                        .or_insert_with(|| crate::targets::unprobed::built_in_hint_of(exe)),
                    None => crate::targets::unprobed::built_in_hint_of(exe),
                };
            }
        }
        let plaintext = match (known, unprobed) {
            (Some(Plaintext::Expected { wait_ns }), _) => Plaintext::Expected { wait_ns },
            (_, Some(what)) => Plaintext::NotProbed(reason(what)),
            (Some(known), None) => known,
            (None, None) => {
                Plaintext::NotProbed("the process exited before its TLS library could be identified".into())
            }
        };
        if self.gone_unreported.remove(&owner.pid) {
            let process = owner.process.clone().unwrap_or_else(|| "?".into());
            let reason = match &plaintext {
                Plaintext::NotProbed(reason) => Some(reason.clone()),
                Plaintext::Expected { .. } => None,
            };
            let probed = reason.is_none();
            self.out.push(Record::Target(Target {
                pid: owner.pid,
                process,
                probed,
                reason,
                ..Target::default()
            }));
        }
        plaintext
    }

    /// Whether plaintext of `pid` can be captured; the reason from its
    /// target record when not.
    fn plaintext_of(&mut self, pid: u32) -> Plaintext {
        if !self.targets.contains_key(&pid) {
            return self.gone.get(&pid).cloned().unwrap_or_else(|| {
                Plaintext::NotProbed("the process exited before its TLS library could be identified".into())
            });
        }
        let probed = |spy: &Spy| spy.targets.get(&pid).is_some_and(|s| s.stacks.iter().any(|t| t.probed));
        if !probed(self) && self.targets.contains_key(&pid) {
            // It made a TLS connection: whatever library did it is mapped
            // by now.
            self.scan(pid);
            if !probed(self) {
                self.look_for_unprobed_tls(pid);
            }
        }
        // Its connection is shown: so is what the spy found in it.
        if let Some(state) = self.targets.get_mut(&pid) {
            if !state.reported {
                state.reported = true;
                let record = self.target_record(pid);
                self.out.push(record);
            }
        }
        self.verdict(pid)
    }

    /// Plaintext expected, or why not, from what is known of `pid` now.
    fn verdict(&self, pid: u32) -> Plaintext {
        if self.targets.get(&pid).is_some_and(|s| s.stacks.iter().any(|t| t.probed)) {
            return Plaintext::Expected { wait_ns: self.options.plaintext_wait.as_nanos() as u64 };
        }
        match self.target_record(pid) {
            Record::Target(target) => Plaintext::NotProbed(target.reason.unwrap_or_else(|| "not probed".into())),
            _ => Plaintext::NotProbed("not probed".into()),
        }
    }

    /// Examines the process's mapped files for TLS stacks it has not
    /// examined yet, attaches to them, and reports the target when a stack
    /// was found, or once it is settled without one.
    fn scan(&mut self, pid: u32) {
        let mut report = false;
        let (files, exe) = match process::mapped_files(pid) {
            // A zombie has no mappings: as good as gone.
            Ok(files) if !files.is_empty() => (files, process::exe(pid)),
            // Gone; its exit event cleans up. A command we started is
            // described from the program it was to run.
            _ => match self.targets.get_mut(&pid).and_then(|s| s.program.take()).and_then(program_file) {
                Some(file) => {
                    let exe = Some(file.path.clone());
                    (vec![file], exe)
                }
                None => return,
            },
        };
        let mut found = Vec::new();
        {
            let Some(state) = self.targets.get_mut(&pid) else { return };
            for file in files {
                if state.examined.insert(file.file_id) {
                    found.push(file);
                }
            }
        }
        for file in found {
            let is_exe = exe.as_deref() == Some(file.path.as_str());
            let Some(detected) = self.examine(file.file_id, &file.host_path, is_exe) else {
                continue;
            };
            let outcome = |attached: Result<(), ProbeError>| match attached {
                Ok(()) => (true, None),
                Err(err) => (false, Some(err.to_string())),
            };
            let (library, linkage, version, (probed, reason)) = match detected {
                DetectedStack::Openssl(library) => (
                    library.library,
                    library.linkage,
                    library.version.clone(),
                    outcome(self.probes.attach_openssl(file.file_id, &file.host_path, &library)),
                ),
                DetectedStack::Go(bin) => (
                    TlsLibrary::GoCryptoTls,
                    Linkage::Static,
                    Some(bin.go_version.clone()),
                    outcome(self.probes.attach_go(file.file_id, &file.host_path, &bin)),
                ),
                DetectedStack::GoUnsupported { version, reason } => (
                    TlsLibrary::GoCryptoTls,
                    Linkage::Static,
                    version,
                    (false, Some(format!("Go crypto/tls cannot be probed: {reason}"))),
                ),
            };
            let stack = TlsStack { library, linkage, path: file.path.clone(), version, probed, reason };
            if let Some(state) = self.targets.get_mut(&pid) {
                state.stacks.push(stack);
                report = true;
            }
        }
        if let Some(state) = self.targets.get_mut(&pid) {
            if !state.reported && !state.is_young() {
                report = true;
            }
            if report {
                state.reported = true;
            }
        }
        if report {
            self.look_for_unprobed_tls(pid);
            let record = self.target_record(pid);
            self.out.push(record);
        }
    }

    /// Names the TLS stack tlsspy cannot probe in a process without a
    /// probed one (a library it maps, or one built into its executable).
    fn look_for_unprobed_tls(&mut self, pid: u32) {
        let Some(state) = self.targets.get(&pid) else { return };
        if matches!(state.unprobed, Some(Some(_))) || state.stacks.iter().any(|s| s.probed) {
            return;
        }
        let files = process::mapped_files(pid).unwrap_or_default();
        let mut found = crate::targets::unprobed::library_hint(&files);
        if found.is_none() {
            // The running executable; once the process is gone, the program
            // we started it as. Neither: it stays unknown (not "none found").
            let running = process::proc_dir(pid).join("exe");
            let exe = match FileId::of(&running) {
                Ok(id) => Some((id, running)),
                Err(_) => state.started_as.clone().and_then(|p| FileId::of(&p).ok().map(|id| (id, p))),
            };
            let Some((id, exe)) = exe else { return };
            found = *self.built_in_tls.entry(id).or_insert_with(|| crate::targets::unprobed::built_in_hint(&exe));
        }
        if let Some(state) = self.targets.get_mut(&pid) {
            state.unprobed = Some(found);
        }
    }

    /// Reports a target that cannot be scanned any more from the library
    /// its probes fired in.
    fn report_from_probe(&mut self, pid: u32, library_id: u16) {
        let Some(state) = self.targets.get_mut(&pid) else { return };
        if state.reported {
            return;
        }
        let Some(library) = self.probes.library(library_id) else { return };
        let path = library.path.to_string_lossy().into_owned();
        // /proc/PID/root/usr/lib/... → /usr/lib/... as the process saw it.
        let path = match path.strip_prefix("/proc/").and_then(|p| p.split_once("/root")) {
            Some((_, inside)) => inside.to_string(),
            None => path,
        };
        state.stacks.push(TlsStack {
            library: library.library,
            linkage: library.linkage,
            path,
            version: library.version.clone(),
            probed: true,
            reason: None,
        });
        state.reported = true;
        let record = self.target_record(pid);
        self.out.push(record);
    }

    /// What TLS stack the file holds (cheap to clone: a Go analysis is
    /// shared).
    fn examine(&mut self, file: FileId, path: &Path, is_exe: bool) -> Option<DetectedStack> {
        self.libraries
            .entry(file)
            .or_insert_with(|| match tls_stack::detect(path, is_exe) {
                Ok(found) => found,
                Err(err) => {
                    log::debug!("{err}");
                    None
                }
            })
            .clone()
    }

    fn target_record(&self, pid: u32) -> Record {
        let state = self.targets.get(&pid);
        let tls = state.map(|s| s.stacks.clone()).unwrap_or_default();
        let probed = tls.iter().any(|s| s.probed);
        let reason = if probed {
            None
        } else if let Some(failed) = tls.iter().find_map(|s| s.reason.clone()) {
            Some(failed)
        } else if let Some(what) = state.and_then(|s| s.unprobed.flatten()) {
            Some(format!("no TLS library tlsspy can probe in this process: it uses {what}"))
        } else if state.is_some_and(|s| s.unprobed.is_none()) && !process::exists(pid) {
            Some("the process exited before its TLS library could be identified".to_string())
        } else {
            Some(
                "no TLS library found: the process maps no libssl, its executable exports no \
                 SSL_read/SSL_write, and it is no Go program"
                    .to_string(),
            )
        };
        let meta = self.process_meta(pid);
        Record::Target(Target {
            pid,
            ns_pid: meta.ns_pid,
            process: meta.name,
            exe: process::exe(pid),
            container_id: None,
            pod: meta.pod,
            tls,
            probed,
            reason,
        })
    }

    fn process_meta(&self, pid: u32) -> ProcessMeta {
        ProcessMeta {
            name: process::name(pid)
                .ok()
                .or_else(|| self.targets.get(&pid).and_then(|s| s.comm.clone()))
                .unwrap_or_else(|| "?".to_string()),
            ns_pid: process::ns_pid(pid),
            pod: self.targets.get(&pid).and_then(|s| s.pod.clone()),
        }
    }

    /// Runs until told to stop (or, with `exit_when_targets_gone`, until
    /// every target exited). Returns the final counters.
    pub async fn run(
        mut self,
        sink: &mut dyn Sink,
        mut control: mpsc::Receiver<Control>,
    ) -> Result<Stats, SpyError> {
        let ring = self.probes.take_ring().ok_or_else(|| {
            SpyError::Ring(std::io::Error::other("the ring buffer was already taken"))
        })?;
        // SAFETY: the RingBuf owns its map fd, which stays open and the same
        // for as long as the RingBuf lives, and the AsyncFd owns the RingBuf.
        let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| SpyError::Ring(e.into()))?;
        for pid in self.targets.keys().copied().collect::<Vec<_>>() {
            let meta = self.process_meta(pid);
            self.tracker.describe_process(pid, meta);
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
                    Some(Control::AddProcess { pid, pod }) => {
                        if let Err(err) = self.add_process(pid, pod) {
                            self.out.push(Record::Warning(Warning { message: err.to_string(), pid: Some(pid) }));
                        } else {
                            let meta = self.process_meta(pid);
                            self.tracker.describe_process(pid, meta);
                        }
                    }
                    Some(Control::AddContainer { id, pod }) => self.add_container(&id, pod),
                    Some(Control::Stop(reason)) => break reason,
                    None => break "control channel closed".to_string(),
                },
                _ = rescan.tick() => {
                    ticks = ticks.wrapping_add(1);
                    let settled_too = ticks.is_multiple_of(SETTLED_RESCAN_EVERY);
                    let due: Vec<u32> = self
                        .targets
                        .iter()
                        .filter(|(_, s)| settled_too || s.is_young() || !s.reported)
                        .map(|(&pid, _)| pid)
                        .collect();
                    for pid in due {
                        self.scan(pid);
                    }
                    let now = self.wall_ns(monotonic_ns());
                    self.tracker.expire_handshakes(now, &mut self.out);
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
        let mut tail = Vec::new();
        self.tracker.finish(&mut tail);
        self.out.extend(tail);
        let stats = self.stats();
        self.out.push(Record::Stats(stats.clone()));
        self.out.push(Record::Bye(Bye { reason, stats: stats.clone() }));
        self.flush(sink)?;
        Ok(stats)
    }

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
                // A program that makes TLS calls has its libraries mapped
                // by now: describe it before its first record.
                if self.targets.get(&header.tgid).is_some_and(|s| !s.reported) {
                    if let Some(state) = self.targets.get_mut(&header.tgid) {
                        state.since = Instant::now() - YOUNG_PROCESS;
                    }
                    self.scan(header.tgid);
                    // Too late to look (a short command already exited):
                    // the probe that fired names the library.
                    self.report_from_probe(header.tgid, header.library_id);
                }
                let (local, remote) = event::addresses(&header.tuple);
                let library = match header.source {
                    spy_ebpf::source::GO => TlsLibrary::GoCryptoTls,
                    _ => TlsLibrary::Openssl,
                };
                let direction = match header.direction {
                    spy_ebpf::direction::SEND => Direction::Send,
                    _ => Direction::Recv,
                };
                let ev = DataEvent {
                    tgid: header.tgid,
                    tid: header.tid,
                    ts_ns: self.wall_ns(header.ts_ns),
                    conn_ptr: header.conn_ptr,
                    direction,
                    library,
                    call_len: header.call_len,
                    call_offset: header.call_offset,
                    local,
                    remote,
                    comm: event::comm(&header.comm),
                    data,
                };
                self.tracker.on_data(&ev, &mut self.out);
            }
            KernelEvent::Fork(proc_event) => {
                let pid = proc_event.tgid;
                let pod = self.targets.get(&proc_event.parent_tgid).and_then(|s| s.pod.clone());
                // Threads also fork; only processes get a /proc/PID entry of their own
                // with Tgid == pid.
                if is_process(pid) {
                    // Same program as its parent until it execs: nothing new to report.
                    let mut state = TargetState::new(pod);
                    state.reported = true;
                    self.targets.insert(pid, state);
                    self.watch_network(pid);
                    let meta = self.process_meta(pid);
                    self.tracker.describe_process(pid, meta);
                }
            }
            KernelEvent::Exec(proc_event) => {
                let pid = proc_event.tgid;
                if let Some(state) = self.targets.get_mut(&pid) {
                    // A new program: new mappings, new name.
                    state.examined.clear();
                    state.stacks.clear();
                    state.since = Instant::now();
                    state.reported = false;
                    state.comm = Some(event::comm(&proc_event.comm).to_string());
                    state.unprobed = None;
                    state.execs += 1;
                    if state.execs > 1 {
                        state.started_as = None;
                    }
                    let meta = self.process_meta(pid);
                    self.tracker.describe_process(pid, meta);
                    self.scan(pid);
                    // A short-lived program may be gone before anyone asks.
                    self.look_for_unprobed_tls(pid);
                }
            }
            KernelEvent::Exit(proc_event) => {
                let pid = proc_event.tgid;
                if self.targets.contains_key(&pid) {
                    // Its handshakes may still be on their way from the capture.
                    let verdict = self.verdict(pid);
                    if self.gone.len() >= MAX_GONE {
                        self.gone.clear();
                        self.gone_unreported.clear();
                    }
                    self.gone.insert(pid, verdict);
                    if self.targets.get(&pid).is_some_and(|s| !s.reported) {
                        self.gone_unreported.insert(pid);
                    }
                }
                if self.targets.remove(&pid).is_some() {
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
        if self.targets.values().any(|s| s.stacks.iter().any(|t| t.probed)) {
            return None;
        }
        let reasons: Vec<String> = self
            .targets
            .keys()
            .map(|&pid| match self.target_record(pid) {
                Record::Target(t) => format!(
                    "process {} ({}): {}",
                    t.pid,
                    t.process,
                    t.reason.unwrap_or_else(|| "not probed".into())
                ),
                _ => String::new(),
            })
            .collect();
        Some(reasons.join("; "))
    }

    fn stats(&self) -> Stats {
        let kernel = self.probes.kernel_stats();
        let t = &self.tracker.stats;
        Stats {
            calls: kernel.calls,
            events: kernel.events,
            lost_events: kernel.lost_events,
            lost_bytes: kernel.lost_bytes,
            bytes: t.bytes,
            calls_without_socket: kernel.no_fd,
            connections: t.connections,
            exchanges: t.exchanges,
            chunks: t.chunks,
            parse_errors: t.parse_errors,
            probe_hits: kernel.entry_hits,
            handshakes: handshake_stats(t.handshakes, t.handshakes_decrypted, self.capture_stats()),
        }
    }

    pub fn capture_stats(&self) -> CaptureStats {
        self.captures.as_ref().map(Captures::stats).unwrap_or_default()
    }

    fn wall_ns(&self, monotonic: u64) -> u64 {
        u64::try_from(i128::from(monotonic) + self.wall_offset_ns).unwrap_or(0)
    }
}

/// The program file as a mapping of its own (for a process already gone).
fn program_file(path: PathBuf) -> Option<process::MappedFile> {
    let file_id = FileId::of(&path).ok()?;
    Some(process::MappedFile { path: path.to_string_lossy().into_owned(), host_path: path, file_id })
}

async fn next_capture_event(events: &mut Option<mpsc::Receiver<CaptureEvent>>) -> Option<CaptureEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

fn handshake_stats(handshakes: u64, decrypted: u64, capture: CaptureStats) -> HandshakeStats {
    HandshakeStats {
        handshakes,
        decrypted,
        namespaces: capture.namespaces,
        packets: capture.packets,
        dropped_packets: capture.dropped_packets,
        not_tls_flows: capture.flows.not_tls,
        malformed_flows: capture.flows.malformed,
        joined_midway_flows: capture.flows.joined_midway,
        other_flows: capture.flows.others,
        evicted_flows: capture.flows.evicted,
        dropped_handshakes: capture.dropped_handshakes,
    }
}

fn is_process(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Tgid:")).map(|l| l[5..].trim() == pid.to_string()))
        .unwrap_or(false)
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

fn monotonic_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

fn wall_offset_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
