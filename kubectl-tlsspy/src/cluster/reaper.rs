//! The reaper: a helper process that deletes a session's spy pods when the
//! plugin dies without doing it itself (SIGKILL, SIGHUP, a crash, an early
//! error return).
//!
//! ```text
//! plugin ──stdin pipe──▶ kubectl-tlsspy __reap --session ID --spy-namespace NS …
//!   normal end: writes "done", the reaper exits at once
//!   any death:  the pipe closes (the kernel closes it, even on SIGKILL),
//!               the reaper deletes the session's pods by label and exits
//! ```
//!
//! The reaper runs in its own session (no controlling terminal), so Ctrl-C
//! or a closed terminal reaches the plugin, which cleans up by itself, and
//! not the reaper, which must outlive it. It deletes by the session label,
//! so pods a `--follow` session created later are covered too.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;

use super::spy_pod;
use super::{connect, MANAGED_BY, MANAGED_BY_LABEL, SESSION_LABEL};
use crate::cli::{KubeArgs, ReapArgs};

/// The hidden subcommand that runs the reaper.
pub const SUBCOMMAND: &str = "__reap";
/// What the plugin writes when it removed its pods itself.
const DONE: &str = "done";
/// The reaper gives up after this long: a cluster that cannot be reached
/// in that time will not be reached by a process nobody watches.
const REAP_LIMIT: Duration = Duration::from_secs(30);
/// A pod whose create request was in flight when the plugin died shows up
/// shortly after: the reaper looks again until it saw none for this long.
const SETTLE: Duration = Duration::from_secs(2);
/// Between two looks.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// The plugin's end of the pipe. Dropped without [`Reaper::done`], the
/// reaper deletes the session's pods.
pub struct Reaper {
    pipe: ChildStdin,
    // Not waited for: it outlives the plugin on purpose.
    _child: Child,
}

impl Reaper {
    /// Starts the reaper for `session`'s pods in `namespaces`, with the
    /// plugin's kubeconfig choices. `None` (and a log line) when it cannot
    /// start: the session goes on as before, and the next run or
    /// `kubectl tlsspy cleanup` removes what a killed plugin leaves.
    pub fn spawn(kube: &KubeArgs, namespaces: &[String], session: &str) -> Option<Reaper> {
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(err) => {
                log::warn!("no reaper for this session (cannot find this program: {err}); if the plugin is killed, `kubectl tlsspy cleanup` removes its spy pods");
                return None;
            }
        };
        let mut command = Command::new(exe);
        command.arg(SUBCOMMAND).args(["--session", session]);
        for namespace in namespaces {
            command.args(["--spy-namespace", namespace]);
        }
        if let Some(path) = &kube.kubeconfig {
            command.arg("--kubeconfig").arg(path);
        }
        for (flag, value) in [("--context", &kube.context), ("--cluster", &kube.cluster), ("--user", &kube.user)] {
            if let Some(value) = value {
                command.args([flag, value]);
            }
        }
        // stdout is the user's data: never the reaper's. stderr stays, for
        // real errors only.
        command.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::inherit());
        super::detach::detach(&mut command);
        match command.spawn() {
            Ok(mut child) => {
                let pipe = child.stdin.take()?;
                Some(Reaper { pipe, _child: child })
            }
            Err(err) => {
                log::warn!("no reaper for this session ({err}); if the plugin is killed, `kubectl tlsspy cleanup` removes its spy pods");
                None
            }
        }
    }

    /// The plugin removed its pods: the reaper ends without touching anything.
    pub fn done(mut self) {
        // A reaper that is gone already cannot be told; it had nothing to do.
        let _ = writeln!(self.pipe, "{DONE}");
    }
}

/// `kubectl-tlsspy __reap`: waits for the plugin to end; deletes its
/// session's pods unless it said it did.
pub fn run(args: ReapArgs) -> anyhow::Result<ExitCode> {
    if plugin_said_done(std::io::stdin().lock()) {
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome = runtime.block_on(async { tokio::time::timeout(REAP_LIMIT, reap(&args)).await });
    let why = match outcome {
        Ok(Ok(())) => return Ok(ExitCode::SUCCESS),
        Ok(Err(err)) => format!("{err:#}"),
        Err(_) => format!("no answer from the cluster within {}s", REAP_LIMIT.as_secs()),
    };
    // stderr may be a closed pipe by now: nothing to do about that.
    let _ = writeln!(
        std::io::stderr(),
        "tlsspy: cannot remove the spy pods of the ended session {} ({why}); once they stopped (their heartbeat \
         timeout), `kubectl tlsspy cleanup -n {}` removes them",
        args.session,
        args.namespaces.join(" / -n ")
    );
    Ok(ExitCode::FAILURE)
}

/// Blocks until the plugin's end of the pipe closes; whether it said "done" first.
fn plugin_said_done(pipe: impl std::io::BufRead) -> bool {
    // A read error is a broken pipe: the plugin is gone too.
    pipe.lines().map_while(Result::ok).any(|line| line.trim() == DONE)
}

/// Deletes the session's pods, looking again until none showed up for [`SETTLE`].
async fn reap(args: &ReapArgs) -> anyhow::Result<()> {
    let (client, _) = connect(&args.kube).await?;
    let params =
        ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY},{SESSION_LABEL}={}", args.session));
    let apis: Vec<Api<Pod>> = args.namespaces.iter().map(|ns| Api::namespaced(client.clone(), ns)).collect();
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        let mut found = 0;
        for api in &apis {
            let pods = api.list(&params).await?;
            // Pods already being deleted need no second delete.
            let live = pods.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none());
            for name in live.filter_map(|p| p.metadata.name.as_deref()) {
                spy_pod::delete(api, name).await;
                found += 1;
            }
        }
        if found > 0 {
            log::debug!("reaper: deleted {found} spy pod(s) of session {}", args.session);
            quiet_since = tokio::time::Instant::now();
        } else if quiet_since.elapsed() >= SETTLE {
            return Ok(());
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_done_spares_the_pods() {
        assert!(plugin_said_done(&b"done\n"[..]));
        assert!(plugin_said_done(&b"done"[..]), "a last line without newline counts");
        assert!(!plugin_said_done(&b""[..]), "EOF alone: the plugin died");
        assert!(!plugin_said_done(&b"do"[..]), "half a word: the plugin died writing it");
    }
}
