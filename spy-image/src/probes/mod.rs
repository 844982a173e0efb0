//! The kernel-facing part of the spy: loads the eBPF object, attaches
//! tracepoints and uprobes, keeps the in-kernel target filter, and hands out
//! the ring buffer. Everything here needs root and a kernel with BTF.

pub mod attach;
pub mod clock;
pub mod event;
pub mod socket_owners;

use std::collections::HashMap as StdHashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::trace_point::TracePointLinkId;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use aya::programs::{ProgramError, TracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use spy_ebpf::{globals, maps, programs, stat};

use crate::targets::go::{GoAbi, GoArch, GoBinary, GoFunctionProbe};
use crate::targets::process::FileId;
use crate::targets::tls_stack::{OpensslFunction, OpensslProbes};
use socket_owners::SocketOwners;
use spy_protocol::record::{Linkage, TlsLibrary};

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
/// Tests point this elsewhere to see the no-BTF error on a kernel with BTF.
const BTF_PATH_OVERRIDE_ENV: &str = "TLSSPY_BTF_PATH";
const TRACEFS: &str = "/sys/kernel/tracing";

/// Syscalls whose first argument is the fd an SSL call reads or writes.
const FD_IO_SYSCALLS: [&str; 8] = [
    "sys_enter_write",
    "sys_enter_read",
    "sys_enter_writev",
    "sys_enter_readv",
    "sys_enter_sendto",
    "sys_enter_recvfrom",
    "sys_enter_sendmsg",
    "sys_enter_recvmsg",
];

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "tlsspy needs root to load eBPF programs (CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN); \
         run it with sudo, or in the privileged spy pod"
    )]
    NotRoot,
    #[error(
        "this kernel has no BTF ({BTF_PATH} is missing): tlsspy needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (most distributions since 2020 ship one)"
    )]
    NoBtf,
    #[error("cannot mount tracefs on {TRACEFS}: {0}; mount it by hand (`mount -t tracefs nodev {TRACEFS}`)")]
    Tracefs(std::io::Error),
    #[error("the eBPF programs were not built for this architecture")]
    NoObject,
    #[error("the kernel refused to load tlsspy's eBPF programs")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {name} is missing from the object")]
    MissingProgram { name: &'static str },
    #[error("eBPF map {name} is missing from the object")]
    MissingMap { name: &'static str },
    #[error("cannot use eBPF map {name}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("cannot load or attach eBPF program {name}")]
    Program { name: &'static str, source: ProgramError },
    #[error("cannot attach a uprobe to {function} in {path}")]
    Uprobe { function: &'static str, path: PathBuf, source: ProgramError },
    #[error("Go crypto/tls in {path} cannot be probed: {reason}")]
    GoUnsupported { path: PathBuf, reason: String },
}

/// Kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub calls: u64,
    pub events: u64,
    pub lost_events: u64,
    pub lost_bytes: u64,
    pub no_fd: u64,
    pub proc_lost: u64,
    pub close_lost: u64,
    /// Probe hits of targets: TLS call entries and returns.
    pub entry_hits: u64,
    pub return_hits: u64,
}

impl KernelStats {
    /// The kernel's part of the `stats` record.
    /// Every field is named: a new counter must be mapped, or said to
    /// have no place in the record (`_`).
    pub fn as_record(&self) -> spy_protocol::record::Stats {
        let KernelStats {
            calls,
            events,
            lost_events,
            lost_bytes,
            no_fd,
            proc_lost,
            close_lost,
            entry_hits,
            return_hits: _,
        } = *self;
        spy_protocol::record::Stats {
            calls,
            events,
            lost_events,
            lost_bytes,
            calls_without_socket: no_fd,
            probe_hits: entry_hits,
            lost_process_events: proc_lost,
            lost_close_events: close_lost,
            ..Default::default()
        }
    }
}

pub struct Probes {
    ebpf: Ebpf,
    targets: HashMap<MapData, u32, u32>,
    stats: PerCpuArray<MapData, u64>,
    ring: Option<RingBuf<MapData>>,
    /// Per Go executable (by library id): the offsets its probes need.
    go_configs: HashMap<MapData, u32, GoConfigValue>,
    /// Who owns each target's connections (read by the handshake capture).
    socket_owners: Arc<SocketOwners>,
    /// Libraries already probed: uprobes live on inodes, so one attach
    /// serves every process that maps the file. The value is the library id
    /// the probes carry as their attach cookie.
    attached: StdHashMap<FileId, u16>,
    /// Probed libraries by id - 1.
    libraries: Vec<AttachedLibrary>,
    /// The kernel takes attach cookies (5.15+); turned off at the first refusal.
    cookies: bool,
    /// Every attachment, to detach them all at once on drop.
    links: Vec<(&'static str, LinkId)>,
}

#[derive(Debug)]
enum LinkId {
    TracePoint(TracePointLinkId),
    UProbe(UProbeLinkId),
}

/// A file with probes on it: a TLS library, or an executable with one
/// linked in (a static OpenSSL, Go's crypto/tls).
#[derive(Clone, Debug)]
pub struct AttachedLibrary {
    pub path: PathBuf,
    pub library: TlsLibrary,
    pub linkage: Linkage,
    pub version: Option<String>,
}

/// The Go architecture the probes run on: a Go binary for another one runs
/// emulated (qemu-user), where uprobes on its file never fire.
#[cfg(target_arch = "x86_64")]
const HOST_GO_ARCH: Option<GoArch> = Some(GoArch::Amd64);
#[cfg(target_arch = "aarch64")]
const HOST_GO_ARCH: Option<GoArch> = Some(GoArch::Arm64);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const HOST_GO_ARCH: Option<GoArch> = None;

/// The maps user space works with, taken out of the loaded object.
struct Maps {
    targets: HashMap<MapData, u32, u32>,
    stats: PerCpuArray<MapData, u64>,
    ring: RingBuf<MapData>,
    go_configs: HashMap<MapData, u32, GoConfigValue>,
    socket_owners: Arc<SocketOwners>,
}

/// The `go_configs` map's value: [`spy_ebpf::GoConfig`] as aya plain data.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct GoConfigValue(spy_ebpf::GoConfig);

// SAFETY: GoConfig is repr(C), four u32 fields and no padding (its layout
// is asserted in spy-ebpf); every bit pattern is a valid value.
unsafe impl aya::Pod for GoConfigValue {}

/// Why a Go binary cannot be probed here, before anything is attached.
fn go_unsupported(bin: &GoBinary) -> Option<String> {
    if bin.abi != GoAbi::Register {
        // ABI0 puts arguments on the stack and g in thread-local storage;
        // the probes read registers only, and a wrong guess would copy
        // the wrong bytes.
        return Some(format!(
            "{} on {} passes arguments on the stack (ABI0); only the register ABI (amd64 \
             from go1.17, arm64 from go1.18) is probed",
            bin.go_version, bin.arch
        ));
    }
    if HOST_GO_ARCH != Some(bin.arch) {
        return Some(format!(
            "the binary is for {} but this machine runs {}: an emulated program never hits uprobes",
            bin.arch,
            std::env::consts::ARCH
        ));
    }
    None
}

/// A byte offset the eBPF side takes as u32.
fn offset_u32(value: u64, what: &str) -> Result<u32, String> {
    u32::try_from(value).map_err(|_| format!("{what} offset {value} is implausibly large"))
}

/// Room for bursts while user space is descheduled: at 200 MB/s of
/// plaintext (64 KiB responses at full speed here), 32 MiB is 160 ms.
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 32 * 1024 * 1024;

/// Options for loading.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_buffer_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES }
    }
}

/// Checks what loading needs, in the order a person can fix it.
pub fn preflight() -> Result<(), ProbeError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ProbeError::NotRoot);
    }
    let btf = std::env::var_os(BTF_PATH_OVERRIDE_ENV).map_or_else(|| PathBuf::from(BTF_PATH), PathBuf::from);
    if !btf.exists() {
        return Err(ProbeError::NoBtf);
    }
    Ok(())
}

impl Probes {
    /// Loads the programs and attaches the tracepoints. No uprobe yet: those
    /// come per library with [`Probes::attach_openssl`].
    pub fn load(options: &LoadOptions) -> Result<Probes, ProbeError> {
        Self::load_programs(options, true)
    }

    /// Loads the programs; with `tracepoints` false nothing is attached yet
    /// (benchmarks time uprobe attaching alone).
    pub fn load_programs(options: &LoadOptions, tracepoints: bool) -> Result<Probes, ProbeError> {
        preflight()?;
        if spy_ebpf::OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        ensure_tracefs()?;
        raise_memlock_limit();

        let self_tgid = std::process::id();
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::SELF_TGID, &self_tgid, true)
            .map_max_entries(maps::EVENTS, options.ring_buffer_bytes)
            .load(spy_ebpf::OBJECT)
            .map_err(ProbeError::Load)?;

        let targets = HashMap::try_from(take_map(&mut ebpf, maps::TARGET_TGIDS)?)
            .map_err(|source| ProbeError::Map { name: maps::TARGET_TGIDS, source })?;
        let stats = PerCpuArray::try_from(take_map(&mut ebpf, maps::STATS)?)
            .map_err(|source| ProbeError::Map { name: maps::STATS, source })?;
        let ring = RingBuf::try_from(take_map(&mut ebpf, maps::EVENTS)?)
            .map_err(|source| ProbeError::Map { name: maps::EVENTS, source })?;
        let go_configs = HashMap::try_from(take_map(&mut ebpf, maps::GO_CONFIGS)?)
            .map_err(|source| ProbeError::Map { name: maps::GO_CONFIGS, source })?;
        let socket_owners = HashMap::try_from(take_map(&mut ebpf, maps::SOCKET_OWNERS)?)
            .map_err(|source| ProbeError::Map { name: maps::SOCKET_OWNERS, source })?;
        let maps = Maps { targets, stats, ring, go_configs, socket_owners: Arc::new(SocketOwners::new(socket_owners)) };

        for name in [
            programs::SSL_WRITE_ENTER,
            programs::SSL_READ_ENTER,
            programs::SSL_WRITE_EX_ENTER,
            programs::SSL_READ_EX_ENTER,
            programs::SSL_RETURN,
            programs::SSL_FREE_ENTER,
            programs::GO_WRITE_ENTER,
            programs::GO_READ_ENTER,
            programs::GO_RETURN,
        ] {
            uprobe(&mut ebpf, name)?.load().map_err(|source| ProbeError::Program { name, source })?;
        }
        if !tracepoints {
            return Ok(Probes::new(ebpf, maps, Vec::new()));
        }

        let mut links = Vec::new();
        let fd_io = tracepoint(&mut ebpf, programs::SYS_ENTER_FD_IO)?;
        fd_io.load().map_err(|source| ProbeError::Program { name: programs::SYS_ENTER_FD_IO, source })?;
        for syscall in FD_IO_SYSCALLS {
            let link = fd_io
                .attach("syscalls", syscall)
                .map_err(|source| ProbeError::Program { name: programs::SYS_ENTER_FD_IO, source })?;
            links.push((programs::SYS_ENTER_FD_IO, LinkId::TracePoint(link)));
        }
        let accept = tracepoint(&mut ebpf, programs::SYS_EXIT_ACCEPT)?;
        accept.load().map_err(|source| ProbeError::Program { name: programs::SYS_EXIT_ACCEPT, source })?;
        for syscall in ["sys_exit_accept", "sys_exit_accept4"] {
            let link = accept
                .attach("syscalls", syscall)
                .map_err(|source| ProbeError::Program { name: programs::SYS_EXIT_ACCEPT, source })?;
            links.push((programs::SYS_EXIT_ACCEPT, LinkId::TracePoint(link)));
        }
        for (name, category, event) in [
            (programs::SYS_ENTER_CLOSE, "syscalls", "sys_enter_close"),
            (programs::SYS_ENTER_CONNECT, "syscalls", "sys_enter_connect"),
            (programs::SYS_EXIT_CONNECT, "syscalls", "sys_exit_connect"),
            (programs::SCHED_PROCESS_FORK, "sched", "sched_process_fork"),
            (programs::SCHED_PROCESS_EXEC, "sched", "sched_process_exec"),
            (programs::SCHED_PROCESS_EXIT, "sched", "sched_process_exit"),
        ] {
            let program = tracepoint(&mut ebpf, name)?;
            program.load().map_err(|source| ProbeError::Program { name, source })?;
            let link = program.attach(category, event).map_err(|source| ProbeError::Program { name, source })?;
            links.push((name, LinkId::TracePoint(link)));
        }

        Ok(Probes::new(ebpf, maps, links))
    }

    fn new(ebpf: Ebpf, maps: Maps, links: Vec<(&'static str, LinkId)>) -> Probes {
        let Maps { targets, stats, ring, go_configs, socket_owners } = maps;
        Probes {
            ebpf,
            targets,
            stats,
            ring: Some(ring),
            go_configs,
            socket_owners,
            attached: StdHashMap::new(),
            libraries: Vec::new(),
            cookies: true,
            links,
        }
    }

    /// Who owns the targets' connections, for the handshake capture.
    pub fn socket_owners(&self) -> Arc<SocketOwners> {
        Arc::clone(&self.socket_owners)
    }

    /// Starts tracing `tgid` (and, with `follow_children`, what it forks).
    pub fn add_target(&mut self, tgid: u32, follow_children: bool) -> Result<(), ProbeError> {
        let flags = if follow_children { spy_ebpf::TARGET_FOLLOW_CHILDREN } else { 0 };
        self.targets.insert(tgid, flags, 0).map_err(|source| ProbeError::Map { name: maps::TARGET_TGIDS, source })
    }

    pub fn remove_target(&mut self, tgid: u32) {
        // Already gone when the process exited: the kernel side removed it.
        let _ = self.targets.remove(&tgid);
    }

    /// Whether the library file was probed already (by any process).
    pub fn is_attached(&self, file: FileId) -> bool {
        self.attached.contains_key(&file)
    }

    /// Puts entry and return probes on every SSL_read/SSL_write(_ex) the
    /// library exports. Probes on a file serve every process mapping it.
    /// They go on `probe_path` (the file the offsets were computed from,
    /// e.g. `/proc/self/fd/N`); errors and records name `host_path`.
    pub fn attach_openssl(
        &mut self,
        file: FileId,
        host_path: &Path,
        probe_path: &Path,
        library: &OpensslProbes,
    ) -> Result<(), ProbeError> {
        if self.attached.contains_key(&file) {
            return Ok(());
        }
        let id = u16::try_from(self.libraries.len() + 1).unwrap_or(0);
        for &(function, offset) in &library.offsets {
            let entry = match function {
                OpensslFunction::Write => programs::SSL_WRITE_ENTER,
                OpensslFunction::Read => programs::SSL_READ_ENTER,
                OpensslFunction::WriteEx => programs::SSL_WRITE_EX_ENTER,
                OpensslFunction::ReadEx => programs::SSL_READ_EX_ENTER,
                OpensslFunction::Free => {
                    // An entry probe only: the connection ends as it is called.
                    let link =
                        self.attach_one(programs::SSL_FREE_ENTER, offset, host_path, None).map_err(|source| {
                            ProbeError::Uprobe { function: function.symbol(), path: host_path.to_path_buf(), source }
                        })?;
                    self.links.push((programs::SSL_FREE_ENTER, LinkId::UProbe(link)));
                    continue;
                }
            };
            // The entry probe carries the library id as its cookie; the
            // return probe finds it in the call record.
            let cookie = (self.cookies && name_takes_cookie(entry)).then_some(u64::from(id));
            let attached = self.attach_one(entry, offset, probe_path, cookie).or_else(|err| {
                if cookie.is_some() {
                    log::info!(
                        "attach cookies refused ({}); events will not name their library",
                        crate::error::chain(&err)
                    );
                    self.cookies = false;
                    self.attach_one(entry, offset, probe_path, None)
                } else {
                    Err(err)
                }
            });
            let entry_link = attached.map_err(|source| ProbeError::Uprobe {
                function: function.symbol(),
                path: host_path.to_path_buf(),
                source,
            })?;
            self.links.push((entry, LinkId::UProbe(entry_link)));
            let return_link = self.attach_one(programs::SSL_RETURN, offset, probe_path, None).map_err(|source| {
                ProbeError::Uprobe { function: function.symbol(), path: host_path.to_path_buf(), source }
            })?;
            self.links.push((programs::SSL_RETURN, LinkId::UProbe(return_link)));
        }
        self.attached.insert(file, id);
        self.libraries.push(AttachedLibrary {
            path: host_path.to_path_buf(),
            library: library.library,
            linkage: library.linkage,
            version: library.version.clone(),
        });
        Ok(())
    }

    /// Puts probes on a Go executable's `crypto/tls.(*Conn).Write` and
    /// `Read`: one at each entry, one at each RET (never a uretprobe). The
    /// returns go first, so every call whose entry is recorded has its
    /// return probed. On any failure nothing stays attached.
    /// As for [`Probes::attach_openssl`], probes go on `probe_path`.
    pub fn attach_go(
        &mut self,
        file: FileId,
        host_path: &Path,
        probe_path: &Path,
        bin: &GoBinary,
    ) -> Result<(), ProbeError> {
        if self.attached.contains_key(&file) {
            return Ok(());
        }
        let unsupported = |reason: String| ProbeError::GoUnsupported { path: host_path.to_path_buf(), reason };
        if let Some(reason) = go_unsupported(bin) {
            return Err(unsupported(reason));
        }
        if !self.cookies {
            return Err(unsupported(
                "the kernel refused uprobe attach cookies (Linux 5.15+), which carry the \
                 binary's offsets to the Go probes"
                    .into(),
            ));
        }
        let o = &bin.offsets;
        let config = (|| {
            Ok::<_, String>(spy_ebpf::GoConfig {
                conn_iface: offset_u32(o.tls_conn_conn, "tls.Conn.conn")?,
                tcpconn_fd: offset_u32(o.tcp_conn_fd, "net.TCPConn.fd")?,
                netfd_sysfd: offset_u32(o.netfd_pfd.saturating_add(o.pfd_sysfd), "netFD.pfd.Sysfd")?,
                _pad: 0,
            })
        })()
        .map_err(unsupported)?;
        let id = u16::try_from(self.libraries.len() + 1)
            .map_err(|_| unsupported(format!("more than {} probed files", u16::MAX)))?;
        self.go_configs
            .insert(u32::from(id), GoConfigValue(config), 0)
            .map_err(|source| ProbeError::Map { name: maps::GO_CONFIGS, source })?;

        let mut links: Vec<(&'static str, UProbeLinkId)> = Vec::new();
        let result = self.attach_go_function_probes(host_path, probe_path, id, [&bin.write, &bin.read], &mut links);
        if let Err(err) = result {
            for (program, link) in links {
                if let Ok(probe) = uprobe(&mut self.ebpf, program) {
                    let _ = probe.detach(link);
                }
            }
            let _ = self.go_configs.remove(&u32::from(id));
            return Err(err);
        }
        // Kept for the parallel detach at drop.
        self.links.extend(links.into_iter().map(|(program, link)| (program, LinkId::UProbe(link))));
        self.attached.insert(file, id);
        self.libraries.push(AttachedLibrary {
            path: host_path.to_path_buf(),
            library: TlsLibrary::GoCryptoTls,
            linkage: Linkage::Static,
            version: Some(bin.go_version.clone()),
        });
        Ok(())
    }

    fn attach_go_function_probes(
        &mut self,
        path: &Path,
        probe_path: &Path,
        id: u16,
        functions: [&GoFunctionProbe; 2],
        links: &mut Vec<(&'static str, UProbeLinkId)>,
    ) -> Result<(), ProbeError> {
        let failed = |function: &GoFunctionProbe, source| ProbeError::Uprobe {
            function: function.symbol,
            path: path.to_path_buf(),
            source,
        };
        for function in functions {
            for &ret in &function.ret_file_offsets {
                let link =
                    self.attach_one(programs::GO_RETURN, ret, probe_path, None).map_err(|e| failed(function, e))?;
                links.push((programs::GO_RETURN, link));
            }
        }
        for (function, program) in functions.into_iter().zip([programs::GO_WRITE_ENTER, programs::GO_READ_ENTER]) {
            let link = self
                .attach_one(program, function.entry_file_offset, probe_path, Some(u64::from(id)))
                .map_err(|e| failed(function, e))?;
            links.push((program, link));
        }
        Ok(())
    }

    fn attach_one(
        &mut self,
        program: &'static str,
        offset: u64,
        path: &Path,
        cookie: Option<u64>,
    ) -> Result<UProbeLinkId, ProgramError> {
        let probe = uprobe(&mut self.ebpf, program).map_err(|e| match e {
            ProbeError::Program { source, .. } => source,
            other => ProgramError::IOError(std::io::Error::other(crate::error::chain(&other))),
        })?;
        let point = UProbeAttachPoint { location: UProbeAttachLocation::AbsoluteOffset(offset), cookie };
        probe.attach(point, path, UProbeScope::AllProcesses)
    }

    /// The library whose probes carry `id` as cookie.
    pub fn library(&self, id: u16) -> Option<&AttachedLibrary> {
        usize::from(id).checked_sub(1).and_then(|index| self.libraries.get(index))
    }

    /// The ring buffer, to be read by the event loop (taken once).
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }

    pub fn kernel_stats(&self) -> KernelStats {
        let sum = |index: u32| -> u64 { self.stats.get(&index, 0).map(|values| values.iter().sum()).unwrap_or(0) };
        KernelStats {
            calls: sum(stat::CALLS),
            events: sum(stat::EVENTS),
            lost_events: sum(stat::LOST_EVENTS),
            lost_bytes: sum(stat::LOST_BYTES),
            no_fd: sum(stat::NO_FD),
            proc_lost: sum(stat::PROC_LOST),
            close_lost: sum(stat::CLOSE_LOST),
            entry_hits: sum(stat::ENTRY_HITS),
            return_hits: sum(stat::RETURN_HITS),
        }
    }
}

/// Detaching one probe makes the kernel wait out a grace period (50–130 ms
/// each, measured on 6.18): twenty in a row kept a stopped spy, and its pod,
/// alive 1.6 s longer. Detached side by side, the waits overlap.
impl Drop for Probes {
    fn drop(&mut self) {
        let mut links: Vec<Box<dyn Send>> = Vec::with_capacity(self.links.len());
        for (name, id) in std::mem::take(&mut self.links) {
            let link: Option<Box<dyn Send>> = match id {
                LinkId::TracePoint(id) => tracepoint(&mut self.ebpf, name)
                    .ok()
                    .and_then(|p| p.take_link(id).ok())
                    .map(|link| Box::new(link) as Box<dyn Send>),
                LinkId::UProbe(id) => uprobe(&mut self.ebpf, name)
                    .ok()
                    .and_then(|p| p.take_link(id).ok())
                    .map(|link| Box::new(link) as Box<dyn Send>),
            };
            // A link not taken goes with its program, when `ebpf` drops.
            links.extend(link);
        }
        std::thread::scope(|scope| {
            for link in links {
                // No thread to spare: the closure, link and all, drops here instead.
                let _ = std::thread::Builder::new().name("detach".into()).spawn_scoped(scope, move || drop(link));
            }
        });
    }
}

fn name_takes_cookie(program: &str) -> bool {
    program != programs::SSL_RETURN
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap { name })
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, ProbeError> {
    let program = ebpf.program_mut(name).ok_or(ProbeError::MissingProgram { name })?;
    program.try_into().map_err(|source| ProbeError::Program { name, source })
}

fn tracepoint<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut TracePoint, ProbeError> {
    let program = ebpf.program_mut(name).ok_or(ProbeError::MissingProgram { name })?;
    program.try_into().map_err(|source| ProbeError::Program { name, source })
}

/// aya finds tracepoints through tracefs; a spy pod or a minimal host may
/// not have it mounted.
fn ensure_tracefs() -> Result<(), ProbeError> {
    if Path::new(TRACEFS).join("events").exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return Ok(());
    }
    let target = std::ffi::CString::new(TRACEFS).map_err(|e| ProbeError::Tracefs(e.into()))?;
    let fstype = c"tracefs";
    let source = c"nodev";
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(ProbeError::Tracefs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Kernels before 5.11 charge eBPF maps to RLIMIT_MEMLOCK; newer ones use
/// memcg accounting, where raising the limit may fail and does not matter.
fn raise_memlock_limit() {
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads one valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        log::info!(
            "could not raise RLIMIT_MEMLOCK ({}); kernels with memcg accounting do not need it",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::go::{GoStructOffsets, GoVersion, OffsetsSource, SymbolSource};

    fn go_binary(arch: GoArch, abi: GoAbi, version: GoVersion) -> GoBinary {
        let probe = |symbol| GoFunctionProbe {
            symbol,
            address: 0x40_1000,
            size: 64,
            entry_file_offset: 0x1000,
            ret_file_offsets: vec![0x1030],
            source: SymbolSource::Symtab,
        };
        GoBinary {
            go_version: format!("go{}.{}.{}", version.major, version.minor, version.patch),
            version,
            module_path: None,
            main_package: None,
            arch,
            abi,
            pie: false,
            stripped: false,
            write: probe(crate::targets::go::TLS_WRITE_SYMBOL),
            read: probe(crate::targets::go::TLS_READ_SYMBOL),
            offsets: GoStructOffsets { g_goid: 160, tls_conn_conn: 0, tcp_conn_fd: 0, netfd_pfd: 0, pfd_sysfd: 16 },
            offsets_source: OffsetsSource::Dwarf,
            dwarf_problem: None,
        }
    }

    #[test]
    fn register_abi_binaries_of_this_machine_are_probed() {
        let arch = HOST_GO_ARCH.expect("tests run on amd64 or arm64");
        assert_eq!(go_unsupported(&go_binary(arch, GoAbi::Register, GoVersion::new(1, 23, 4))), None);
    }

    #[test]
    fn abi0_binaries_get_a_reason_not_a_probe() {
        // arm64 Go 1.17 still passed arguments on the stack.
        let bin = go_binary(GoArch::Arm64, GoAbi::Stack, GoVersion::new(1, 17, 13));
        let reason = go_unsupported(&bin).expect("unsupported");
        assert!(reason.contains("go1.17.13 on arm64 passes arguments on the stack (ABI0)"), "{reason}");
    }

    #[test]
    fn binaries_for_another_architecture_get_a_reason() {
        let other = match HOST_GO_ARCH {
            Some(GoArch::Amd64) => GoArch::Arm64,
            _ => GoArch::Amd64,
        };
        let reason = go_unsupported(&go_binary(other, GoAbi::Register, GoVersion::new(1, 23, 4))).expect("unsupported");
        assert!(reason.contains(&format!("the binary is for {other}")), "{reason}");
    }
}
