//! Starting the reaper detached from the plugin's terminal: the one place
//! outside local mode where the plugin needs unsafe code (a `pre_exec`
//! hook), kept apart so the rest can forbid it.

#![allow(unsafe_code, reason = "setsid in a pre_exec hook: std has no stable setsid for Command")]

use std::process::Command;

/// The reaper in a session of its own: no controlling terminal, so no
/// SIGINT from Ctrl-C and no SIGHUP when the terminal closes.
#[cfg(unix)]
pub fn detach(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // std has no stable setsid for Command (process_group alone would leave
    // the terminal's session, and its SIGHUP and SIGTTOU, reachable).
    // SAFETY: setsid is async-signal-safe and touches no memory; the closure
    // allocates nothing and locks nothing, as pre_exec requires.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Windows: a new process group ignores the console's Ctrl-C, and a
/// detached process has no console to lose. The pipe semantics are the
/// same: the plugin's end closes when it dies.
#[cfg(windows)]
pub fn detach(command: &mut Command) {
    use std::os::windows::process::CommandExt as _;
    const DETACHED_PROCESS: u32 = 0x0000_0008;
    const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
    command.creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP);
}

#[cfg(not(any(unix, windows)))]
pub fn detach(_command: &mut Command) {}
