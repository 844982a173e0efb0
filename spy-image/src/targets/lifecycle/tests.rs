//! Target lifecycle over a fake node: no root, no /proc, no probes.

use std::cell::RefCell;
use std::collections::HashMap;

use super::*;
use crate::targets::tls_stack::OpensslFunction;

#[derive(Default)]
struct FakeProcess {
    name: String,
    exe: String,
    files: Vec<MappedFile>,
    is_thread: bool,
}

/// A node whose processes and files the test sets up.
#[derive(Default)]
struct FakeHost {
    processes: RefCell<HashMap<u32, FakeProcess>>,
    /// What each file holds, by path.
    stacks: HashMap<PathBuf, DetectedStack>,
    /// Built-in TLS stacks tlsspy does not probe, by executable path.
    built_in: HashMap<PathBuf, &'static str>,
    /// Files that exist (by path) with their ids.
    files: HashMap<PathBuf, FileId>,
    containers: HashMap<String, Vec<u32>>,
    detected: RefCell<u32>,
}

impl Host for &FakeHost {
    fn exists(&self, pid: u32) -> bool {
        self.processes.borrow().contains_key(&pid)
    }
    fn is_process(&self, pid: u32) -> bool {
        self.processes.borrow().get(&pid).is_some_and(|p| !p.is_thread)
    }
    fn name(&self, pid: u32) -> Option<String> {
        self.processes.borrow().get(&pid).map(|p| p.name.clone())
    }
    fn exe(&self, pid: u32) -> Option<String> {
        self.processes.borrow().get(&pid).map(|p| p.exe.clone())
    }
    fn ns_pid(&self, _pid: u32) -> Option<u32> {
        None
    }
    fn mapped_files(&self, pid: u32) -> Vec<MappedFile> {
        self.processes.borrow().get(&pid).map(|p| p.files.clone()).unwrap_or_default()
    }
    fn container_pids(&self, id: &str, pod_uid: &str) -> Result<Vec<u32>, String> {
        if pod_uid != POD_UID {
            return Err(format!("refused container {id}: not in pod {pod_uid}"));
        }
        self.containers.get(id).cloned().ok_or_else(|| format!("no process of container {id} runs on this node"))
    }
    fn file_id(&self, path: &Path) -> Option<FileId> {
        if let Some(pid) = path.to_str().and_then(|p| p.strip_prefix("/proc/")?.strip_suffix("/exe")?.parse().ok()) {
            let exe = self.exe(pid)?;
            return self.files.get(Path::new(&exe)).copied();
        }
        self.files.get(path).copied()
    }
    fn open_file_id(&self, _file: &File) -> Option<FileId> {
        None
    }
    fn detect(&self, file: &MappedFile, _is_exe: bool) -> Option<DetectedStack> {
        *self.detected.borrow_mut() += 1;
        self.stacks.get(&file.host_path).cloned()
    }
    fn library_hint(&self, files: &[MappedFile]) -> Option<&'static str> {
        files.iter().any(|f| f.path.contains("libgnutls")).then_some("GnuTLS")
    }
    fn built_in_hint(&self, exe: &Path) -> Option<&'static str> {
        let exe = match exe.to_str().and_then(|p| p.strip_prefix("/proc/")?.strip_suffix("/exe")?.parse().ok()) {
            Some(pid) => PathBuf::from(self.exe(pid)?),
            None => exe.to_path_buf(),
        };
        self.built_in.get(&exe).copied()
    }
    fn open_built_in_hint(&self, _exe: &File) -> Option<&'static str> {
        None
    }
}

#[derive(Debug)]
struct Refused(&'static str);
impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
impl std::error::Error for Refused {}

/// Probes that record what they were asked to do.
#[derive(Default)]
struct FakeProbes {
    traced: Vec<u32>,
    attached: Vec<PathBuf>,
    refuse: Option<&'static str>,
    libraries: Vec<ProbedLibrary>,
}

impl Attach for FakeProbes {
    type Error = Refused;
    fn add_target(&mut self, pid: u32, _follow_children: bool) -> Result<(), Refused> {
        self.traced.push(pid);
        Ok(())
    }
    fn attach_openssl(&mut self, file: &MappedFile, _library: &OpensslProbes) -> Result<(), Refused> {
        if let Some(why) = self.refuse {
            return Err(Refused(why));
        }
        self.attached.push(file.host_path.clone());
        Ok(())
    }
    fn attach_go(&mut self, file: &MappedFile, _bin: &GoBinary) -> Result<(), Refused> {
        self.attached.push(file.host_path.clone());
        Ok(())
    }
    fn probed_library(&self, id: u16) -> Option<ProbedLibrary> {
        self.libraries.get(usize::from(id).checked_sub(1)?).cloned()
    }
}

/// The pod UID the fake host puts its containers in.
const POD_UID: &str = "0b1c2d3e";
const LIBSSL: &str = "/usr/lib/libssl.so.3";

fn openssl() -> DetectedStack {
    DetectedStack::Openssl(OpensslProbes {
        library: TlsLibrary::Openssl,
        linkage: Linkage::Shared,
        version: Some("3.0.11".into()),
        offsets: vec![(OpensslFunction::Write, 0x100), (OpensslFunction::Read, 0x200)],
    })
}

fn mapped(path: &str, ino: u64) -> MappedFile {
    MappedFile {
        path: path.into(),
        host_path: path.into(),
        file_id: FileId { dev: 1, ino, ..FileId::default() },
        open: None,
    }
}

/// A node with curl (maps libssl), rustls-client (a built-in stack we do
/// not probe), plain (no TLS at all) and gnutls-cli.
fn node() -> FakeHost {
    let mut host = FakeHost::default();
    host.stacks.insert(LIBSSL.into(), openssl());
    host.files.insert(LIBSSL.into(), FileId { dev: 1, ino: 1, ..FileId::default() });
    for (ino, exe) in
        [(10, "/usr/bin/curl"), (11, "/usr/bin/rustls-client"), (12, "/usr/bin/plain"), (13, "/usr/bin/gnutls-cli")]
    {
        host.files.insert(exe.into(), FileId { dev: 1, ino, ..FileId::default() });
    }
    host.built_in.insert("/usr/bin/rustls-client".into(), "rustls");
    host
}

fn run(host: &FakeHost, pid: u32, exe: &str, libraries: &[&str]) {
    let mut files = vec![mapped(exe, host.files.get(Path::new(exe)).map_or(99, |f| f.ino))];
    files.extend(libraries.iter().map(|l| mapped(l, host.files.get(Path::new(l)).map_or(98, |f| f.ino))));
    let name = exe.rsplit('/').next().unwrap_or(exe).to_string();
    host.processes.borrow_mut().insert(pid, FakeProcess { name, exe: exe.into(), files, is_thread: false });
}

fn targets(out: &[Record]) -> Vec<&Target> {
    out.iter()
        .filter_map(|r| match r {
            Record::Target(t) => Some(t),
            _ => None,
        })
        .collect()
}

const WAIT: Duration = Duration::from_secs(5);

/// A running process added as the spy adds one: traced, then examined.
fn add(
    lifecycle: &mut Targets<&FakeHost>,
    pid: u32,
    pod: Option<PodRef>,
    probes: &mut FakeProbes,
    out: &mut Vec<Record>,
) -> Result<ProcessMeta, TargetError<Refused>> {
    lifecycle.add_process(pid, pod, probes)?;
    Ok(lifecycle.examine_new(pid, probes, out))
}

#[test]
fn a_process_that_maps_libssl_is_probed_and_reported_once() {
    let host = node();
    run(&host, 10, "/usr/bin/curl", &[LIBSSL]);
    let mut probes = FakeProbes::default();
    let mut lifecycle = Targets::new(&host, true, WAIT);
    let mut out = Vec::new();
    let meta = add(&mut lifecycle, 10, None, &mut probes, &mut out).expect("added");
    assert_eq!(meta.name, "curl");
    assert_eq!(probes.traced, [10]);
    assert_eq!(probes.attached, [PathBuf::from(LIBSSL)]);
    let [target] = targets(&out)[..] else { panic!("{out:?}") };
    assert!(target.probed && target.reason.is_none());
    assert_eq!(target.tls[0].path, LIBSSL);
    assert_eq!(target.tls[0].version.as_deref(), Some("3.0.11"));
    // Nothing new on a rescan.
    lifecycle.rescan(true, &mut probes, &mut out);
    assert_eq!(targets(&out).len(), 1);
    assert_eq!(lifecycle.nothing_to_probe(), None);
    assert_eq!(
        lifecycle.handshake_verdict(&owner(10), &mut probes, &mut out),
        Plaintext::Expected { wait_ns: WAIT.as_nanos() as u64 }
    );
}

#[test]
fn a_library_is_examined_once_for_every_process_that_maps_it() {
    let host = node();
    run(&host, 10, "/usr/bin/curl", &[LIBSSL]);
    run(&host, 11, "/usr/bin/curl", &[LIBSSL]);
    let mut probes = FakeProbes::default();
    let mut lifecycle = Targets::new(&host, true, WAIT);
    let mut out = Vec::new();
    add(&mut lifecycle, 10, None, &mut probes, &mut out).expect("added");
    add(&mut lifecycle, 11, None, &mut probes, &mut out).expect("added");
    assert_eq!(*host.detected.borrow(), 2, "curl and libssl, each once");
    assert_eq!(targets(&out).len(), 2);
}

#[test]
fn every_reason_is_said_in_words() {
    let host = node();
    run(&host, 20, "/usr/bin/plain", &[]);
    run(&host, 21, "/usr/bin/rustls-client", &[]);
    run(&host, 22, "/usr/bin/gnutls-cli", &["/usr/lib/libgnutls.so.30"]);
    run(&host, 23, "/usr/bin/curl", &[LIBSSL]);
    let mut probes = FakeProbes::default();
    let mut lifecycle = Targets::new(&host, true, WAIT);
    let mut out = Vec::new();
    for pid in [20, 21, 22] {
        add(&mut lifecycle, pid, None, &mut probes, &mut out).expect("added");
    }
    probes.refuse = Some("cannot attach a uprobe to SSL_write in /usr/lib/libssl.so.3: permission denied");
    add(&mut lifecycle, 23, None, &mut probes, &mut out).expect("added");
    let reasons: Vec<(u32, String)> =
        targets(&out).iter().map(|t| (t.pid, t.reason.clone().unwrap_or_default())).collect();
    assert_eq!(
        reasons,
        [
            (20, reason::NONE_FOUND.to_string()),
            (21, reason::unprobed("rustls")),
            (22, reason::unprobed("GnuTLS")),
            (23, "cannot attach a uprobe to SSL_write in /usr/lib/libssl.so.3: permission denied".to_string()),
        ]
    );
    assert!(targets(&out).iter().all(|t| !t.probed));
    let summary = lifecycle.nothing_to_probe().expect("nothing probed");
    assert!(summary.contains("process 21 (rustls-client): no TLS library tlsspy can probe"), "{summary}");
    // A handshake of such a target says the same.
    assert_eq!(
        lifecycle.handshake_verdict(&owner(21), &mut probes, &mut out),
        Plaintext::NotProbed(reason::unprobed("rustls"))
    );
}

#[test]
fn a_fork_is_the_same_program_and_an_exec_a_new_one() {
    let host = node();
    run(&host, 30, "/usr/bin/plain", &[]);
    let mut probes = FakeProbes::default();
    let mut lifecycle = Targets::new(&host, true, WAIT);
    let mut out = Vec::new();
    let pod = PodRef { namespace: "ns".into(), name: "web".into(), container: Some("main".into()) };
    add(&mut lifecycle, 30, Some(pod.clone()), &mut probes, &mut out).expect("added");
    out.clear();
    // A thread is no target; a process is, in its parent's pod, unreported.
    host.processes.borrow_mut().insert(31, FakeProcess { is_thread: true, ..FakeProcess::default() });
    assert!(lifecycle.on_fork(31, 30).is_none());
    run(&host, 32, "/usr/bin/plain", &[]);
    let meta = lifecycle.on_fork(32, 30).expect("a process");
    assert_eq!(meta.pod.as_ref(), Some(&pod));
    assert!(out.is_empty());
    // It execs curl: probed at once, reported in its parent's pod.
    run(&host, 32, "/usr/bin/curl", &[LIBSSL]);
    let meta = lifecycle.on_exec(32, "curl", &mut probes, &mut out).expect("a target");
    assert_eq!(meta.name, "curl");
    let [target] = targets(&out)[..] else { panic!("{out:?}") };
    assert!(target.probed);
    assert_eq!(target.pod.as_ref(), Some(&pod));
    // Not a target: nothing.
    assert!(lifecycle.on_exec(99, "x", &mut probes, &mut out).is_none());
}

#[test]
fn a_young_program_without_tls_is_not_judged_until_it_settles_or_shows_a_connection() {
    let host = node();
    run(&host, 40, "/usr/bin/plain", &[]);
    let mut probes = FakeProbes::default();
    let mut lifecycle = Targets::new(&host, true, WAIT);
    let mut out = Vec::new();
    add(&mut lifecycle, 40, None, &mut probes, &mut out).expect("added");
    out.clear();
    // It just exec'd: no "no TLS library" verdict yet.
    assert!(lifecycle.on_exec(40, "plain", &mut probes, &mut out).is_some());
    lifecycle.rescan(false, &mut probes, &mut out);
    assert!(targets(&out).is_empty(), "{out:?}");
    // Its connection is shown: so is what was found in it, once.
    let verdict = lifecycle.handshake_verdict(&owner(40), &mut probes, &mut out);
    assert_eq!(verdict, Plaintext::NotProbed(reason::NONE_FOUND.into()));
    lifecycle.handshake_verdict(&owner(40), &mut probes, &mut out);
    assert_eq!(targets(&out).len(), 1);
}

#[test]
fn a_command_gone_before_it_was_read_is_examined_as_the_program_it_was_started_as() {
    let host = node();
    host.processes.borrow_mut().insert(50, FakeProcess { name: "tlsspy".into(), ..FakeProcess::default() });
    let mut probes = FakeProbes::default();
    let mut lifecycle = Targets::new(&host, true, WAIT);
    let mut out = Vec::new();
    lifecycle.add_starting_process(50, Path::new("/usr/bin/rustls-client"), &mut probes).expect("added");
    assert!(out.is_empty(), "its report waits for the exec");
    // It exec'd and exited before its mappings or exe were read.
    host.processes.borrow_mut().remove(&50);
    let meta = lifecycle.on_exec(50, "rustls-client", &mut probes, &mut out).expect("a target");
    assert_eq!(meta.name, "rustls-client", "the kernel's name, /proc has none");
    assert!(targets(&out).is_empty(), "young: no verdict yet");
    assert!(lifecycle.on_exit(50));
    // Its handshake comes off the wire after it exited: the reason is
    // still its TLS stack, and its target record goes out then.
    let verdict = lifecycle.handshake_verdict(&owner(50), &mut probes, &mut out);
    assert_eq!(verdict, Plaintext::NotProbed(reason::unprobed("rustls")));
    let [target] = targets(&out)[..] else { panic!("{out:?}") };
    assert_eq!((target.pid, target.probed), (50, false));
    assert_eq!(target.reason.as_deref(), Some(reason::unprobed("rustls").as_str()));
}

#[test]
fn an_exited_target_answers_for_its_late_handshakes() {
    let host = node();
    run(&host, 60, "/usr/bin/curl", &[LIBSSL]);
    run(&host, 61, "/usr/bin/plain", &[]);
    let mut probes = FakeProbes::default();
    let mut lifecycle = Targets::new(&host, true, WAIT);
    let mut out = Vec::new();
    add(&mut lifecycle, 60, None, &mut probes, &mut out).expect("added");
    add(&mut lifecycle, 61, None, &mut probes, &mut out).expect("added");
    assert!(lifecycle.on_exit(60) && lifecycle.on_exit(61) && !lifecycle.on_exit(62));
    assert!(lifecycle.is_empty());
    host.processes.borrow_mut().clear();
    let expected = Plaintext::Expected { wait_ns: WAIT.as_nanos() as u64 };
    assert_eq!(lifecycle.handshake_verdict(&owner(60), &mut probes, &mut out), expected);
    assert_eq!(
        lifecycle.handshake_verdict(&owner(61), &mut probes, &mut out),
        Plaintext::NotProbed(reason::NONE_FOUND.into())
    );
    // Never seen at all: it says so, and does not claim "none found".
    assert_eq!(
        lifecycle.handshake_verdict(&owner(63), &mut probes, &mut out),
        Plaintext::NotProbed(reason::EXITED_UNIDENTIFIED.into())
    );
}

#[test]
fn a_target_gone_before_its_report_is_reported_from_the_probe_that_fired() {
    let host = node();
    host.processes.borrow_mut().insert(70, FakeProcess { name: "tlsspy".into(), ..FakeProcess::default() });
    let mut probes = FakeProbes {
        libraries: vec![ProbedLibrary {
            path: "/proc/70/root/usr/lib/libssl.so.3".into(),
            library: TlsLibrary::Openssl,
            linkage: Linkage::Shared,
            version: Some("3.0.11".into()),
        }],
        ..FakeProbes::default()
    };
    let mut lifecycle = Targets::new(&host, true, WAIT);
    let mut out = Vec::new();
    lifecycle.add_starting_process(70, Path::new("/usr/bin/gone"), &mut probes).expect("added");
    host.processes.borrow_mut().remove(&70);
    lifecycle.on_exec(70, "short", &mut probes, &mut out);
    out.clear();
    lifecycle.on_tls_call(70, 1, &mut probes, &mut out);
    let [target] = targets(&out)[..] else { panic!("{out:?}") };
    assert!(target.probed);
    assert_eq!(target.tls[0].path, LIBSSL, "the path inside the container");
    // Once.
    lifecycle.on_tls_call(70, 1, &mut probes, &mut out);
    assert_eq!(targets(&out).len(), 1);
}

#[test]
fn containers_add_their_processes_and_an_unknown_one_warns() {
    let mut host = node();
    host.containers.insert("abc".into(), vec![80, 81]);
    run(&host, 80, "/usr/bin/curl", &[LIBSSL]);
    run(&host, 81, "/usr/bin/plain", &[]);
    let mut probes = FakeProbes::default();
    let mut lifecycle = Targets::new(&host, true, WAIT);
    let mut out = Vec::new();
    let pod = PodRef { namespace: "ns".into(), name: "web".into(), container: Some("main".into()) };
    assert_eq!(lifecycle.new_container_pids("abc", POD_UID, &mut out), [80, 81]);
    let meta = add(&mut lifecycle, 80, Some(pod.clone()), &mut probes, &mut out).expect("added");
    assert_eq!(meta.pod.as_ref(), Some(&pod));
    // Known ones are not new.
    assert_eq!(lifecycle.new_container_pids("abc", POD_UID, &mut out), [81]);
    let before = out.len();
    assert!(lifecycle.new_container_pids("nope", POD_UID, &mut out).is_empty());
    assert!(matches!(&out[before..], [Record::Warning(w)] if w.message.contains("container nope")));
    // Another pod's UID gets nothing, and a warning that says so.
    let before = out.len();
    assert!(lifecycle.new_container_pids("abc", "other-uid", &mut out).is_empty());
    assert!(matches!(&out[before..], [Record::Warning(w)] if w.message.starts_with("refused container abc")));
    assert!(matches!(lifecycle.add_process(999, None, &mut probes), Err(TargetError::NoSuchProcess(999))));
}

#[test]
fn a_file_probed_before_it_runs_says_whether_it_holds_tls() {
    let host = node();
    let mut probes = FakeProbes::default();
    let mut lifecycle = Targets::new(&host, true, WAIT);
    assert!(lifecycle.attach_file(Path::new(LIBSSL), false, &mut probes).expect("attached"));
    assert!(!lifecycle.attach_file(Path::new("/usr/bin/plain"), true, &mut probes).expect("nothing"));
    assert!(!lifecycle.attach_file(Path::new("/no/such/file"), true, &mut probes).expect("nothing"));
    assert_eq!(probes.attached, [PathBuf::from(LIBSSL)]);
}

#[test]
fn paths_are_shown_as_the_process_sees_them() {
    assert_eq!(path_inside(Path::new("/proc/12/root/usr/lib/libssl.so.3")), "/usr/lib/libssl.so.3");
    assert_eq!(path_inside(Path::new("/usr/lib/libssl.so.3")), "/usr/lib/libssl.so.3");
}

fn owner(pid: u32) -> Owner {
    Owner {
        pid,
        local: "127.0.0.1:40000".parse().expect("addr"),
        remote: "127.0.0.1:443".parse().expect("addr"),
        role: spy_protocol::record::Role::Client,
        process: Some("client".into()),
        unprobed: None,
        exe: None,
    }
}

#[test]
fn a_process_added_twice_keeps_what_is_known_of_it() {
    let host = node();
    run(&host, 90, "/usr/bin/curl", &[LIBSSL]);
    let mut probes = FakeProbes::default();
    let mut lifecycle = Targets::new(&host, true, WAIT);
    let mut out = Vec::new();
    add(&mut lifecycle, 90, None, &mut probes, &mut out).expect("added");
    add(&mut lifecycle, 90, None, &mut probes, &mut out).expect("added again");
    assert_eq!(targets(&out).len(), 1, "one target record");
    assert_eq!(probes.traced, [90]);
    assert_eq!(probes.attached.len(), 1);
}
