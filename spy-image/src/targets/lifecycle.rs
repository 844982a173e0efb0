//! The life of each target process: added, scanned for TLS stacks (and
//! probed through an [`Attach`]), forked, exec'd, exited; and the words
//! that say why a target's plaintext cannot be seen.
//!
//! Pure over two small traits: [`Host`] answers what /proc and the files
//! on the node say, [`Attach`] puts probes on a file. The spy's loop hands
//! process events in and takes records (`target`, `warning`) and process
//! descriptions out; nothing here calls back into the loop. Unit tests run
//! it over a fake host without root.

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spy_protocol::record::{Linkage, PodRef, Record, Target, TlsLibrary, TlsStack, Warning};

use crate::capture::owner::Owner;
use crate::conn::{Plaintext, ProcessMeta};
use crate::targets::go::GoBinary;
use crate::targets::process::{FileId, MappedFile};
use crate::targets::tls_stack::{DetectedStack, OpensslProbes};

/// What the node says about processes and files.
pub trait Host {
    fn exists(&self, pid: u32) -> bool;
    /// `pid` is a process (its thread group's leader), not a thread.
    fn is_process(&self, pid: u32) -> bool;
    fn name(&self, pid: u32) -> Option<String>;
    fn exe(&self, pid: u32) -> Option<String>;
    fn ns_pid(&self, pid: u32) -> Option<u32>;
    /// The files the process maps executable (empty: gone, or a zombie).
    fn mapped_files(&self, pid: u32) -> Vec<MappedFile>;
    /// The host processes of a container, by its runtime id, that sit in
    /// the cgroup of the pod with this UID (an error says why none).
    fn container_pids(&self, id: &str, pod_uid: &str) -> Result<Vec<u32>, String>;
    fn file_id(&self, path: &Path) -> Option<FileId>;
    fn open_file_id(&self, file: &File) -> Option<FileId>;
    /// The TLS stack a file holds (None: none, or unreadable), read
    /// through its open file when it has one.
    fn detect(&self, file: &MappedFile, is_exe: bool) -> Option<DetectedStack>;
    /// A TLS library tlsspy does not probe among mapped files.
    fn library_hint(&self, files: &[MappedFile]) -> Option<&'static str>;
    /// A TLS stack tlsspy does not probe, built into an executable.
    fn built_in_hint(&self, exe: &Path) -> Option<&'static str>;
    fn open_built_in_hint(&self, exe: &File) -> Option<&'static str>;
}

/// Puts probes on files and traces processes.
pub trait Attach {
    type Error: std::error::Error + 'static;
    /// Starts tracing a process in the kernel (its events, its children).
    fn add_target(&mut self, pid: u32, follow_children: bool) -> Result<(), Self::Error>;
    /// Probes go on `file.probe_path()` (the file analysed), and are named
    /// by `file.host_path`.
    fn attach_openssl(&mut self, file: &MappedFile, library: &OpensslProbes) -> Result<(), Self::Error>;
    fn attach_go(&mut self, file: &MappedFile, bin: &GoBinary) -> Result<(), Self::Error>;
    /// The library a probe hit came from, by the id its probes carry.
    fn probed_library(&self, id: u16) -> Option<ProbedLibrary>;
}

/// A file the probes are on, as a probe hit names it.
#[derive(Clone, Debug)]
pub struct ProbedLibrary {
    pub path: PathBuf,
    pub library: TlsLibrary,
    pub linkage: Linkage,
    pub version: Option<String>,
}

#[derive(Debug)]
pub enum TargetError<E> {
    NoSuchProcess(u32),
    Attach(E),
}

impl<E: fmt::Display> fmt::Display for TargetError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::NoSuchProcess(pid) => write!(f, "no process with pid {pid}"),
            // The attach error says what failed; it is this error's message,
            // not its source (its own source is ours), so a chain shows
            // each cause once.
            TargetError::Attach(err) => err.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for TargetError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TargetError::NoSuchProcess(_) => None,
            TargetError::Attach(err) => err.source(),
        }
    }
}

/// How long after an exec a process is rescanned at every tick and a
/// "no TLS library" verdict is held back: the dynamic linker is still
/// mapping libraries, and programs dlopen TLS late.
const YOUNG_PROCESS: Duration = Duration::from_secs(2);
/// Exited targets remembered for late handshakes.
const MAX_GONE: usize = 1024;

/// Why a target's plaintext cannot be seen, in the words a person reads.
pub mod reason {
    pub const EXITED_UNIDENTIFIED: &str = "the process exited before its TLS library could be identified";
    pub const NONE_FOUND: &str = "no TLS library found: the process maps no libssl, its executable exports no \
                                  SSL_read/SSL_write, and it is no Go program";
    pub const NOT_PROBED: &str = "not probed";

    pub fn unprobed(what: &str) -> String {
        format!("no TLS library tlsspy can probe in this process: it uses {what}")
    }

    pub fn go_unsupported(why: &str) -> String {
        format!("Go crypto/tls cannot be probed: {why}")
    }
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

    /// A process that has run its program for a while: its libraries are
    /// mapped, so its report need not wait.
    fn settled(pod: Option<PodRef>) -> Self {
        let mut state = TargetState::new(pod);
        state.since = Instant::now().checked_sub(YOUNG_PROCESS).unwrap_or(state.since);
        state
    }

    fn is_young(&self) -> bool {
        self.since.elapsed() < YOUNG_PROCESS
    }

    fn probed(&self) -> bool {
        self.stacks.iter().any(|s| s.probed)
    }
}

/// Every target of the session, and what was learnt of the files they map.
pub struct Targets<H> {
    host: H,
    follow_children: bool,
    /// How long a handshake of a probed process waits for its plaintext.
    plaintext_wait: Duration,
    targets: HashMap<u32, TargetState>,
    /// What each file holds, examined once per (device, inode): a Go
    /// executable is analysed once however many processes run it.
    libraries: HashMap<FileId, Option<DetectedStack>>,
    /// Executables searched for a built-in TLS stack tlsspy cannot probe.
    built_in_tls: HashMap<FileId, Option<&'static str>>,
    /// What exited targets allowed, for handshakes read after they ended.
    gone: HashMap<u32, Plaintext>,
    /// Exited targets whose target record never went out.
    gone_unreported: HashSet<u32>,
}

impl<H: Host> Targets<H> {
    pub fn new(host: H, follow_children: bool, plaintext_wait: Duration) -> Self {
        Targets {
            host,
            follow_children,
            plaintext_wait,
            targets: HashMap::new(),
            libraries: HashMap::new(),
            built_in_tls: HashMap::new(),
            gone: HashMap::new(),
            gone_unreported: HashSet::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    pub fn contains(&self, pid: u32) -> bool {
        self.targets.contains_key(&pid)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.targets.keys().copied().collect()
    }

    /// Probes a library or executable file before any process maps it, so
    /// a command about to start is traced from its first TLS call.
    /// `Ok(false)`: nothing to probe in it (a Go program we cannot probe is
    /// reported with its reason once it runs).
    pub fn attach_file<A: Attach>(&mut self, path: &Path, is_exe: bool, attach: &mut A) -> Result<bool, A::Error> {
        let Some(file) = self.program_file(path.to_path_buf()) else { return Ok(false) };
        match self.examine(&file, is_exe) {
            Some(DetectedStack::Openssl(library)) => attach.attach_openssl(&file, &library)?,
            Some(DetectedStack::Go(bin)) => {
                if let Err(err) = attach.attach_go(&file, &bin) {
                    // Not fatal: the target record says why once it runs.
                    log::info!("{}", crate::error::chain(&err));
                    return Ok(false);
                }
            }
            Some(DetectedStack::GoUnsupported { .. }) | None => return Ok(false),
        }
        Ok(true)
    }

    /// Starts tracing a running process in the kernel first, so nothing
    /// between now and the attach is missed; [`Targets::examine_new`]
    /// then probes its TLS libraries.
    pub fn add_process<A: Attach>(
        &mut self,
        pid: u32,
        pod: Option<PodRef>,
        attach: &mut A,
    ) -> Result<(), TargetError<A::Error>> {
        if !self.host.exists(pid) {
            return Err(TargetError::NoSuchProcess(pid));
        }
        if self.targets.contains_key(&pid) {
            // Added twice (`--pid X --pid X`): keep what is known of it.
            return Ok(());
        }
        attach.add_target(pid, self.follow_children).map_err(TargetError::Attach)?;
        // A running process has its libraries mapped: report at once.
        self.targets.insert(pid, TargetState::settled(pod));
        Ok(())
    }

    /// Probes a just-added process's TLS libraries; its target record goes
    /// to `out`. Returns its description.
    pub fn examine_new<A: Attach>(&mut self, pid: u32, attach: &mut A, out: &mut Vec<Record>) -> ProcessMeta {
        self.scan(pid, attach, out);
        self.process_meta(pid)
    }

    /// The processes of a container (by its runtime id, in the pod with
    /// this UID) that are not targets yet; a warning when the node runs
    /// none, or none in that pod.
    pub fn new_container_pids(&self, id: &str, pod_uid: &str, out: &mut Vec<Record>) -> Vec<u32> {
        match self.host.container_pids(id, pod_uid) {
            Ok(pids) => pids.into_iter().filter(|pid| !self.targets.contains_key(pid)).collect(),
            Err(message) => {
                out.push(Record::Warning(Warning { message, pid: None }));
                Vec::new()
            }
        }
    }

    /// Starts tracing a process that is about to exec `program`, the
    /// program to spy on: its report waits for the exec.
    pub fn add_starting_process<A: Attach>(
        &mut self,
        pid: u32,
        program: &Path,
        attach: &mut A,
    ) -> Result<(), TargetError<A::Error>> {
        if !self.host.exists(pid) {
            return Err(TargetError::NoSuchProcess(pid));
        }
        attach.add_target(pid, self.follow_children).map_err(TargetError::Attach)?;
        let mut state = TargetState::new(None);
        state.reported = true; // the exec resets this
        state.program = Some(program.to_path_buf());
        state.started_as = Some(program.to_path_buf());
        self.targets.insert(pid, state);
        Ok(())
    }

    /// A target forked. Returns the child's description when the child is
    /// a process (threads fork too) and so a new target.
    pub fn on_fork(&mut self, child: u32, parent: u32) -> Option<ProcessMeta> {
        if !self.host.is_process(child) {
            return None;
        }
        let pod = self.targets.get(&parent).and_then(|s| s.pod.clone());
        // Same program as its parent until it execs: nothing new to report.
        let mut state = TargetState::new(pod);
        state.reported = true;
        self.targets.insert(child, state);
        Some(self.process_meta(child))
    }

    /// A target started a new program: new mappings, new name. Returns its
    /// new description.
    pub fn on_exec<A: Attach>(
        &mut self,
        pid: u32,
        comm: &str,
        attach: &mut A,
        out: &mut Vec<Record>,
    ) -> Option<ProcessMeta> {
        let state = self.targets.get_mut(&pid)?;
        state.examined.clear();
        state.stacks.clear();
        state.since = Instant::now();
        state.reported = false;
        state.comm = Some(comm.to_string());
        state.unprobed = None;
        state.execs += 1;
        if state.execs > 1 {
            state.started_as = None;
        }
        let meta = self.process_meta(pid);
        self.scan(pid, attach, out);
        // A short-lived program may be gone before anyone asks.
        self.look_for_unprobed_tls(pid);
        Some(meta)
    }

    /// A target exited; what it allowed is kept for its handshakes, which
    /// may still be on their way. `false`: it was no target.
    pub fn on_exit(&mut self, pid: u32) -> bool {
        if !self.targets.contains_key(&pid) {
            return false;
        }
        let verdict = self.verdict(pid);
        if self.gone.len() >= MAX_GONE {
            self.gone.clear();
            self.gone_unreported.clear();
        }
        self.gone.insert(pid, verdict);
        if self.targets.remove(&pid).is_some_and(|s| !s.reported) {
            self.gone_unreported.insert(pid);
        }
        true
    }

    /// A target made a TLS call through the probes of `library_id`: a
    /// program that does has its libraries mapped by now, so it is
    /// described before its first record; when it can no longer be
    /// scanned (a short command already exited), the probe that fired
    /// names the library.
    pub fn on_tls_call<A: Attach>(&mut self, pid: u32, library_id: u16, attach: &mut A, out: &mut Vec<Record>) {
        let Some(state) = self.targets.get_mut(&pid) else { return };
        if state.reported {
            return;
        }
        state.since = Instant::now().checked_sub(YOUNG_PROCESS).unwrap_or(state.since);
        self.scan(pid, attach, out);
        self.report_from_probe(pid, library_id, attach, out);
    }

    /// Rescans the targets that are due: young or unreported ones at every
    /// tick, settled ones too when `settled_too`.
    pub fn rescan<A: Attach>(&mut self, settled_too: bool, attach: &mut A, out: &mut Vec<Record>) {
        let due: Vec<u32> = self
            .targets
            .iter()
            .filter(|(_, s)| settled_too || s.is_young() || !s.reported)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in due {
            self.scan(pid, attach, out);
        }
    }

    /// Whether the plaintext of a connection whose handshake `owner` made
    /// can be captured. A target whose connection is shown is described
    /// first (its target record goes to `out` if it never did).
    pub fn handshake_verdict<A: Attach>(&mut self, owner: &Owner, attach: &mut A, out: &mut Vec<Record>) -> Plaintext {
        if let (Some(what), Some(state)) = (owner.unprobed, self.targets.get_mut(&owner.pid)) {
            if !matches!(state.unprobed, Some(Some(_))) {
                state.unprobed = Some(Some(what));
            }
        }
        if self.targets.contains_key(&owner.pid) {
            self.plaintext_of(owner.pid, attach, out)
        } else {
            self.plaintext_of_gone(owner, out)
        }
    }

    /// Why none of the targets can be spied on, when that is so.
    pub fn nothing_to_probe(&self) -> Option<String> {
        if self.targets.values().any(TargetState::probed) {
            return None;
        }
        let reasons: Vec<String> = self
            .targets
            .keys()
            .map(|&pid| {
                let t = self.target_record(pid);
                format!("process {} ({}): {}", t.pid, t.process, t.reason.unwrap_or_else(|| reason::NOT_PROBED.into()))
            })
            .collect();
        Some(reasons.join("; "))
    }

    pub fn process_meta(&self, pid: u32) -> ProcessMeta {
        ProcessMeta {
            name: self
                .host
                .name(pid)
                .or_else(|| self.targets.get(&pid).and_then(|s| s.comm.clone()))
                .unwrap_or_else(|| "?".to_string()),
            ns_pid: self.host.ns_pid(pid),
            pod: self.targets.get(&pid).and_then(|s| s.pod.clone()),
        }
    }

    /// A target that exited before its handshake was read: what was known
    /// of it then, or what the capture saw while it lived. Its target
    /// record goes out now if it never did.
    fn plaintext_of_gone(&mut self, owner: &Owner, out: &mut Vec<Record>) -> Plaintext {
        let known = self.gone.get(&owner.pid).cloned();
        let mut unprobed = owner.unprobed;
        if unprobed.is_none() && !matches!(known, Some(Plaintext::Expected { .. })) {
            if let Some(exe) = &owner.exe {
                unprobed = match self.host.open_file_id(exe) {
                    Some(id) => match self.built_in_tls.get(&id) {
                        Some(found) => *found,
                        None => {
                            let found = self.host.open_built_in_hint(exe);
                            self.built_in_tls.insert(id, found);
                            found
                        }
                    },
                    None => self.host.open_built_in_hint(exe),
                };
            }
        }
        let plaintext = match (known, unprobed) {
            (Some(Plaintext::Expected { wait_ns }), _) => Plaintext::Expected { wait_ns },
            (_, Some(what)) => Plaintext::NotProbed(reason::unprobed(what)),
            (Some(known), None) => known,
            (None, None) => Plaintext::NotProbed(reason::EXITED_UNIDENTIFIED.into()),
        };
        if self.gone_unreported.remove(&owner.pid) {
            let reason = match &plaintext {
                Plaintext::NotProbed(reason) => Some(reason.clone()),
                Plaintext::Expected { .. } => None,
            };
            out.push(Record::Target(Target {
                pid: owner.pid,
                process: owner.process.clone().unwrap_or_else(|| "?".into()),
                probed: reason.is_none(),
                reason,
                ..Target::default()
            }));
        }
        plaintext
    }

    /// Whether plaintext of a live target can be captured; the reason from
    /// its target record when not.
    fn plaintext_of<A: Attach>(&mut self, pid: u32, attach: &mut A, out: &mut Vec<Record>) -> Plaintext {
        let probed = |targets: &Self| targets.targets.get(&pid).is_some_and(TargetState::probed);
        if !probed(self) {
            // It made a TLS connection: whatever library did it is mapped
            // by now.
            self.scan(pid, attach, out);
            if !probed(self) {
                self.look_for_unprobed_tls(pid);
            }
        }
        // Its connection is shown: so is what the spy found in it.
        if let Some(state) = self.targets.get_mut(&pid) {
            if !state.reported {
                state.reported = true;
                out.push(Record::Target(self.target_record(pid)));
            }
        }
        self.verdict(pid)
    }

    /// Plaintext expected, or why not, from what is known of `pid` now.
    fn verdict(&self, pid: u32) -> Plaintext {
        if self.targets.get(&pid).is_some_and(TargetState::probed) {
            let wait_ns = u64::try_from(self.plaintext_wait.as_nanos()).unwrap_or(u64::MAX);
            return Plaintext::Expected { wait_ns };
        }
        Plaintext::NotProbed(self.target_record(pid).reason.unwrap_or_else(|| reason::NOT_PROBED.into()))
    }

    /// Examines the process's mapped files for TLS stacks it has not
    /// examined yet, attaches to them, and reports the target when a stack
    /// was found, or once it is settled without one.
    fn scan<A: Attach>(&mut self, pid: u32, attach: &mut A, out: &mut Vec<Record>) {
        let mut files = self.host.mapped_files(pid);
        let mut exe = self.host.exe(pid);
        if files.is_empty() {
            // Gone (a zombie has no mappings: as good as gone); its exit
            // event cleans up. A command we started is described from the
            // program it was to run.
            let program = self.targets.get_mut(&pid).and_then(|s| s.program.take());
            let Some(file) = program.and_then(|path| self.program_file(path)) else { return };
            exe = Some(file.path.clone());
            files = vec![file];
        }
        let Some(state) = self.targets.get_mut(&pid) else { return };
        let found: Vec<MappedFile> = files.into_iter().filter(|f| state.examined.insert(f.file_id)).collect();
        let mut report = false;
        for file in found {
            let is_exe = exe.as_deref() == Some(file.path.as_str());
            let Some(detected) = self.examine(&file, is_exe) else { continue };
            let stack = attach_stack(detected, &file, attach);
            if let Some(state) = self.targets.get_mut(&pid) {
                state.stacks.push(stack);
                report = true;
            }
        }
        if let Some(state) = self.targets.get_mut(&pid) {
            report |= !state.reported && !state.is_young();
            if report {
                state.reported = true;
            }
        }
        if report {
            self.look_for_unprobed_tls(pid);
            out.push(Record::Target(self.target_record(pid)));
        }
    }

    /// Names the TLS stack tlsspy cannot probe in a process without a
    /// probed one (a library it maps, or one built into its executable).
    fn look_for_unprobed_tls(&mut self, pid: u32) {
        let Some(state) = self.targets.get(&pid) else { return };
        if matches!(state.unprobed, Some(Some(_))) || state.probed() {
            return;
        }
        let files = self.host.mapped_files(pid);
        let mut found = self.host.library_hint(&files);
        if found.is_none() {
            // The running executable; once the process is gone, the program
            // we started it as. Neither: it stays unknown (not "none found").
            let running = PathBuf::from(format!("/proc/{pid}/exe"));
            let exe = match self.host.file_id(&running) {
                Some(id) => Some((id, running)),
                None => state.started_as.clone().and_then(|p| self.host.file_id(&p).map(|id| (id, p))),
            };
            let Some((id, exe)) = exe else { return };
            found = match self.built_in_tls.get(&id) {
                Some(known) => *known,
                None => {
                    let hint = self.host.built_in_hint(&exe);
                    self.built_in_tls.insert(id, hint);
                    hint
                }
            };
        }
        if let Some(state) = self.targets.get_mut(&pid) {
            state.unprobed = Some(found);
        }
    }

    /// Reports a target that cannot be scanned any more from the library
    /// its probes fired in.
    fn report_from_probe<A: Attach>(&mut self, pid: u32, library_id: u16, attach: &A, out: &mut Vec<Record>) {
        let Some(state) = self.targets.get_mut(&pid) else { return };
        if state.reported {
            return;
        }
        let Some(library) = attach.probed_library(library_id) else { return };
        state.stacks.push(TlsStack {
            library: library.library,
            linkage: library.linkage,
            path: path_inside(&library.path),
            version: library.version,
            probed: true,
            reason: None,
        });
        state.reported = true;
        out.push(Record::Target(self.target_record(pid)));
    }

    /// What TLS stack the file holds (cheap to clone: a Go analysis is
    /// shared).
    /// What a file holds, analysed once per content identity (device,
    /// inode, size, mtime, ctime): a file rewritten in place is new.
    fn examine(&mut self, file: &MappedFile, is_exe: bool) -> Option<DetectedStack> {
        if let Some(known) = self.libraries.get(&file.file_id) {
            return known.clone();
        }
        let found = self.host.detect(file, is_exe);
        self.libraries.insert(file.file_id, found.clone());
        found
    }

    /// The program file as a mapping of its own (for a process already gone).
    fn program_file(&self, path: PathBuf) -> Option<MappedFile> {
        let file_id = self.host.file_id(&path)?;
        Some(MappedFile { path: path.to_string_lossy().into_owned(), host_path: path, file_id, open: None })
    }

    fn target_record(&self, pid: u32) -> Target {
        let state = self.targets.get(&pid);
        let tls = state.map(|s| s.stacks.clone()).unwrap_or_default();
        let probed = tls.iter().any(|s| s.probed);
        let reason = if probed {
            None
        } else if let Some(failed) = tls.iter().find_map(|s| s.reason.clone()) {
            Some(failed)
        } else if let Some(what) = state.and_then(|s| s.unprobed.flatten()) {
            Some(reason::unprobed(what))
        } else if state.is_some_and(|s| s.unprobed.is_none()) && !self.host.exists(pid) {
            Some(reason::EXITED_UNIDENTIFIED.to_string())
        } else {
            Some(reason::NONE_FOUND.to_string())
        };
        let meta = self.process_meta(pid);
        Target {
            pid,
            ns_pid: meta.ns_pid,
            process: meta.name,
            exe: self.host.exe(pid),
            container_id: None,
            pod: meta.pod,
            tls,
            probed,
            reason,
        }
    }
}

/// Attaches to what a file holds, and says how that went.
fn attach_stack<A: Attach>(detected: DetectedStack, file: &MappedFile, attach: &mut A) -> TlsStack {
    let outcome = |attached: Result<(), A::Error>| match attached {
        Ok(()) => (true, None),
        Err(err) => (false, Some(crate::error::chain(&err))),
    };
    let (library, linkage, version, (probed, reason)) = match detected {
        DetectedStack::Openssl(library) => {
            (library.library, library.linkage, library.version.clone(), outcome(attach.attach_openssl(file, &library)))
        }
        DetectedStack::Go(bin) => (
            TlsLibrary::GoCryptoTls,
            Linkage::Static,
            Some(bin.go_version.clone()),
            outcome(attach.attach_go(file, &bin)),
        ),
        DetectedStack::GoUnsupported { version, reason } => {
            (TlsLibrary::GoCryptoTls, Linkage::Static, version, (false, Some(reason::go_unsupported(&reason))))
        }
    };
    TlsStack { library, linkage, path: file.path.clone(), version, probed, reason }
}

/// `/proc/PID/root/usr/lib/...` → `/usr/lib/...`, as the process sees it.
fn path_inside(host_path: &Path) -> String {
    let path = host_path.to_string_lossy().into_owned();
    match path.strip_prefix("/proc/").and_then(|p| p.split_once("/root")) {
        Some((_, inside)) => inside.to_string(),
        None => path,
    }
}

#[cfg(test)]
mod tests;
