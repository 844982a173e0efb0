//! One container run: its process (started inside its cgroups), its stdin,
//! its output kept for `pods/log` and copied to attach sessions, and how it
//! ended. The supervisor decides when containers run; this module only runs
//! one and reports its exit.

#![forbid(unsafe_code)]

use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{broadcast, mpsc, watch};

use super::cgroups::{self, CgroupRoots};
use super::images::Image;
use super::state::ExitInfo;
use super::sync::lock;
use super::{argv, env, process, signal};
use crate::apiserver::admission::qos_class;
use crate::apiserver::time;

/// Bytes of container output kept for `pods/log`.
const LOG_LIMIT: usize = 1 << 20;
/// Output chunks queued per attach session before the container's writes block.
const SESSION_QUEUE: usize = 256;
/// Output chunks queued for each `pods/log?follow` reader; a slower one misses chunks.
const FOLLOW_QUEUE: usize = 1024;
/// Bytes read from an output pipe at once.
const READ_CHUNK: usize = 32 * 1024;
/// How long to wait for output pipes to drain after a container's main process exits.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts, and the pause between them, to remove a finished container's
/// cgroups while its killed processes leave them.
const CGROUP_REMOVE_TRIES: usize = 20;
const CGROUP_REMOVE_PAUSE: Duration = Duration::from_millis(50);
/// Channel numbers of the attach protocol (see `attach.rs`).
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
/// The wrapper: writes its own pid to each `cgroup.procs` named before `--`,
/// then execs the command after it; it exits 125 if it cannot join one.
const JOIN_CGROUPS: &str = r#"while [ "$1" != "--" ]; do echo $$ > "$1" || { echo "cannot join cgroup $1" >&2; exit 125; }; shift; done; shift; exec "$@""#;

/// One running container instance: its process, pipes and attach sessions.
pub struct ContainerRun {
    pub name: String,
    /// 64 hex characters; `containerd://<id>` in the pod status.
    pub id: String,
    pub pid: u32,
    pub started: String,
    pub stdin_once: bool,
    pub has_stdin: bool,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    sessions: Mutex<Vec<mpsc::Sender<(u8, Bytes)>>>,
    attaches: AtomicU32,
    exit: watch::Sender<Option<ExitInfo>>,
    log: Mutex<Vec<u8>>,
    log_tx: broadcast::Sender<Bytes>,
    cgroups: Vec<PathBuf>,
}

impl ContainerRun {
    /// Registers an attach session; output chunks arrive as (channel, bytes), 1 stdout, 2 stderr.
    pub fn attach(&self) -> mpsc::Receiver<(u8, Bytes)> {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        self.attaches.fetch_add(1, Ordering::SeqCst);
        lock(&self.sessions).push(tx);
        rx
    }

    /// Called when an attach session ends: `stdinOnce` closes stdin after the first one.
    pub async fn detach(&self, used_stdin: bool) {
        if self.stdin_once && used_stdin {
            self.close_stdin().await;
        }
    }

    pub async fn write_stdin(&self, data: &[u8]) -> std::io::Result<()> {
        let mut guard = self.stdin.lock().await;
        match guard.as_mut() {
            Some(w) => {
                w.write_all(data).await?;
                w.flush().await
            }
            None => Ok(()),
        }
    }

    /// The process reads EOF on stdin from now on.
    pub async fn close_stdin(&self) {
        if let Some(mut w) = self.stdin.lock().await.take() {
            let _ = w.shutdown().await;
        }
    }

    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exit.subscribe()
    }

    /// Captured output (stdout and stderr interleaved), and a receiver for what follows.
    pub fn logs(&self) -> (Vec<u8>, broadcast::Receiver<Bytes>) {
        let log = lock(&self.log);
        (log.clone(), self.log_tx.subscribe())
    }

    pub fn is_running(&self) -> bool {
        self.exit.borrow().is_none()
    }

    /// The container's cgroups, one per hierarchy.
    pub(super) fn cgroups(&self) -> &[PathBuf] {
        &self.cgroups
    }

    /// Signals the main process's group and every process in the container's
    /// cgroups (which catches those that left the group).
    pub(super) fn kill(&self, sig: i32) {
        signal::group(self.pid, sig);
        for cg in &self.cgroups {
            for pid in cgroups::procs(cg) {
                signal::process(pid, sig);
            }
        }
    }
}

/// Starts a container's process. The process joins its cgroups through a tiny
/// `sh` that writes its own pid to each `cgroup.procs` and then execs the
/// command, so the command and all its children are in the cgroups from their
/// first instruction.
pub(super) async fn spawn(
    roots: &CgroupRoots,
    pod: &Value,
    pod_ip: &str,
    spec: &Value,
    image: &Image,
    id: &str,
    exit_tx: mpsc::UnboundedSender<(String, ExitInfo)>,
) -> Result<Arc<ContainerRun>, String> {
    let env = env::container_env(pod, pod_ip, spec, image);
    let argv = argv::argv(spec, image, &env)?;
    let workdir = argv::working_dir(spec)?;
    let uid = pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
    let cgroups = roots.create(qos_class(&pod["spec"]), uid, id);
    let has_stdin = spec["stdin"] == json!(true);
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(JOIN_CGROUPS).arg(process::WRAPPER_NAME);
    for cg in &cgroups {
        cmd.arg(cg.join("cgroup.procs"));
    }
    cmd.arg("--").args(&argv);
    cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v))).current_dir(workdir);
    cmd.stdin(if has_stdin { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.process_group(0).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        cgroups::remove(&cgroups);
        argv::oci_error(&e.to_string())
    })?;
    let pid = child.id().unwrap_or(0);
    process::wait_exec(pid).await;
    if !cgroups.is_empty() {
        process::wait_in_cgroup(pid, id).await;
    }
    let (exit, _) = watch::channel(None);
    let (log_tx, _) = broadcast::channel(FOLLOW_QUEUE);
    let run = Arc::new(ContainerRun {
        name: spec["name"].as_str().unwrap_or_default().to_string(),
        id: id.to_string(),
        pid,
        started: time::now(),
        stdin_once: spec["stdinOnce"] == json!(true),
        has_stdin,
        stdin: tokio::sync::Mutex::new(child.stdin.take()),
        sessions: Mutex::new(Vec::new()),
        attaches: AtomicU32::new(0),
        exit,
        log: Mutex::new(Vec::new()),
        log_tx,
        cgroups,
    });
    let readers = [
        child.stdout.take().map(|o| tokio::spawn(pump(run.clone(), STDOUT, o))),
        child.stderr.take().map(|e| tokio::spawn(pump(run.clone(), STDERR, e))),
    ];
    let waiter = run.clone();
    tokio::spawn(async move {
        let status = child.wait().await;
        let finished = time::now();
        // A container ends with its main process: whatever it left behind goes too.
        waiter.kill(libc::SIGKILL);
        for r in readers.into_iter().flatten() {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, r).await;
        }
        let (code, signal) = match &status {
            Ok(s) => (s.code(), s.signal()),
            Err(_) => (None, None),
        };
        let exit = ExitInfo::ended(code, signal, waiter.started.clone(), finished);
        // Sessions end after all output was queued to them.
        lock(&waiter.sessions).clear();
        waiter.exit.send_replace(Some(exit.clone()));
        for _ in 0..CGROUP_REMOVE_TRIES {
            cgroups::remove(&waiter.cgroups);
            if waiter.cgroups.iter().all(|d| !d.exists()) {
                break;
            }
            tokio::time::sleep(CGROUP_REMOVE_PAUSE).await;
        }
        let _ = exit_tx.send((waiter.name.clone(), exit));
    });
    Ok(run)
}

/// Copies one output pipe to the log and to every attached session.
/// With nobody attached the bytes go to the log only, as a runtime without a tty does.
async fn pump(run: Arc<ContainerRun>, channel: u8, mut pipe: impl AsyncRead + Unpin) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = Bytes::copy_from_slice(&buf[..n]);
        append_capped(&mut lock(&run.log), &chunk, LOG_LIMIT);
        let _ = run.log_tx.send(chunk.clone());
        let sessions: Vec<mpsc::Sender<(u8, Bytes)>> = lock(&run.sessions).clone();
        let mut closed = false;
        for s in &sessions {
            closed |= s.send((channel, chunk.clone())).await.is_err();
        }
        if closed {
            lock(&run.sessions).retain(|s| !s.is_closed());
        }
    }
}

/// Appends `chunk` to `log`, dropping the oldest bytes past `limit`, as a
/// runtime rotates a container's log: `pods/log` shows the latest output.
fn append_capped(log: &mut Vec<u8>, chunk: &[u8], limit: usize) {
    log.extend_from_slice(chunk);
    if log.len() > limit {
        let cut = log.len() - limit;
        log.drain(..cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_keep_the_latest_bytes() {
        let mut log = Vec::new();
        append_capped(&mut log, b"hello ", 8);
        assert_eq!(log, b"hello ");
        append_capped(&mut log, b"world", 8);
        assert_eq!(log, b"lo world");
        append_capped(&mut log, b"0123456789", 8);
        assert_eq!(log, b"23456789", "a chunk longer than the limit keeps its tail");
        append_capped(&mut log, b"", 8);
        assert_eq!(log, b"23456789");
    }
}
