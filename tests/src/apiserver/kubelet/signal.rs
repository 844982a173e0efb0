//! Signals to container processes: the one place in the kubelet that needs
//! `unsafe`, because std can only SIGKILL a child it spawned, while a
//! container is stopped with SIGTERM first and its whole process group and
//! cgroup must be reached, including processes that are not our children.
//! Everything else in the kubelet forbids unsafe code.

/// Sends `sig` to every process of the group `pgid` (a container's main
/// process leads its own group).
pub(super) fn group(pgid: u32, sig: i32) {
    let Ok(pgid) = i32::try_from(pgid) else { return };
    // 0 would be our own group, 1 init's; neither is ever a container's.
    if pgid <= 1 {
        return;
    }
    kill(-pgid, sig);
}

/// Sends `sig` to one process.
pub(super) fn process(pid: i32, sig: i32) {
    // 0 and below address groups, 1 is init: never a container process.
    if pid <= 1 {
        return;
    }
    kill(pid, sig);
}

#[allow(unsafe_code, reason = "kill(2) has no safe std wrapper for signals other than SIGKILL")]
fn kill(target: i32, sig: i32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    // Failure (the process is gone, or not ours) is the expected end of a
    // container that already exited; there is nothing else to do about it.
    unsafe {
        libc::kill(target, sig);
    }
}
