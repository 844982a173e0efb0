//! Watching a container's process start, through /proc: a runtime reports a
//! container running only once its command runs in its cgroups, and the spy
//! finds containers' processes through exactly those files, so the kubelet
//! waits for both before it says "Running".

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// The name (`$0`) of the wrapper script that joins the cgroups: it shows in
/// /proc/PID/cmdline until the wrapper execs the command.
pub(super) const WRAPPER_NAME: &str = "tlsspy-kubelet";
/// How long a container may take to join its cgroups and exec.
const EXEC_TIMEOUT: Duration = Duration::from_secs(5);
/// How often /proc is read while waiting: starts take a few milliseconds.
const POLL: Duration = Duration::from_millis(2);

/// Waits until /proc/PID/cgroup names the container. Seen under parallel
/// tests: the exec was observed before the cgroup write was visible.
pub(super) async fn wait_in_cgroup(pid: u32, id: &str) {
    let until = Instant::now() + EXEC_TIMEOUT;
    while Instant::now() < until {
        match std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
            Ok(cgroup) if cgroup.contains(id) => return,
            Ok(_) => tokio::time::sleep(POLL).await,
            Err(_) => return, // gone: its exit is reported instead
        }
    }
}

/// Waits until the wrapper has exec'd the command; a process gone or a
/// zombie will never exec, so the wait ends there too.
pub(super) async fn wait_exec(pid: u32) {
    let until = Instant::now() + EXEC_TIMEOUT;
    while Instant::now() < until {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return };
        if !before_exec(&cmdline) {
            return;
        }
        if is_zombie(pid) {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether a /proc/PID/cmdline is still the wrapper's: it names the wrapper,
/// or reads empty (a process in the middle of exec reads so for an instant).
fn before_exec(cmdline: &[u8]) -> bool {
    let wrapper = [WRAPPER_NAME.as_bytes(), b"\0"].concat();
    cmdline.is_empty() || cmdline.windows(wrapper.len()).any(|w| w == wrapper)
}

/// A process that is gone or cannot be read counts as a zombie: either way it runs no more.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|stat| stat_is_zombie(&stat)).unwrap_or(true)
}

/// Reads the state from a /proc/PID/stat line: zombie (Z) or dead (X).
/// The state follows the ")" that ends the command name, which may itself
/// hold spaces or parentheses; a line without one is not a live process's.
fn stat_is_zombie(stat: &str) -> bool {
    stat.rsplit_once(')').is_none_or(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zombie_state_follows_the_last_parenthesis() {
        assert!(!stat_is_zombie("42 (sh) S 1 42 42 0 -1"));
        assert!(stat_is_zombie("42 (sh) Z 1 42 42 0 -1"));
        assert!(stat_is_zombie("42 (sh) X 1 42 42 0 -1"));
        // A command name may hold ") Z": only the last ")" ends it.
        assert!(!stat_is_zombie("42 (a) Z (b) R 1 42"));
        assert!(stat_is_zombie("42 (a) R (b) Z 1 42"));
        assert!(stat_is_zombie("garbage"));
    }

    #[test]
    fn wrapper_cmdline_means_not_yet_execd() {
        assert!(before_exec(b"/bin/sh\0-c\0script\0tlsspy-kubelet\0/sys/fs/cgroup/x/cgroup.procs\0--\0/bin/sleep\0"));
        assert!(before_exec(b""), "a process in the middle of exec reads empty");
        assert!(!before_exec(b"/bin/sleep\0infinity\0"));
        // The name must end where an argument ends.
        assert!(!before_exec(b"/bin/echo\0tlsspy-kubelet-x\0"));
    }

    #[test]
    fn own_process_is_no_zombie() {
        assert!(!is_zombie(std::process::id()));
    }
}
