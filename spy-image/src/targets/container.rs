//! Container id → host pids, through /proc/*/cgroup. Works for containerd,
//! CRI-O and Docker ids on cgroup v1 and v2, with no runtime socket.

use std::fs;

/// Shortest id accepted: a shorter one could match unrelated cgroup paths.
const MIN_ID_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContainerError {
    #[error("`{0}` is not a container id (expected hex, optionally with a runtime:// prefix)")]
    BadId(String),
    #[error("no process of container {0} runs on this node (it may have exited or restarted)")]
    NotFound(String),
}

/// "containerd://abc…", "cri-o://abc…", "docker://abc…" or "abc…" → "abc…".
pub fn normalize_id(id: &str) -> Result<&str, ContainerError> {
    let bare = id.split_once("://").map_or(id, |(_, rest)| rest);
    if bare.len() < MIN_ID_LEN || !bare.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ContainerError::BadId(id.to_string()));
    }
    Ok(bare)
}

/// Whether a /proc/PID/cgroup text places the process in the container.
pub fn cgroup_mentions(cgroup: &str, bare_id: &str) -> bool {
    cgroup.lines().any(|line| {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        // The id is a whole path element or a runtime-decorated one:
        // .../<id>, .../cri-containerd-<id>.scope, .../docker-<id>.scope,
        // .../crio-<id>.scope.
        path.split('/').any(|element| {
            let element = element.strip_suffix(".scope").unwrap_or(element);
            element == bare_id || element.rsplit_once('-').is_some_and(|(_, tail)| tail == bare_id)
        })
    })
}

/// Host pids of the processes in the container (thread-group leaders).
pub fn pids_of(id: &str) -> Result<Vec<u32>, ContainerError> {
    let bare = normalize_id(id)?;
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else { return Err(ContainerError::NotFound(id.to_string())) };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Ok(cgroup) = fs::read_to_string(entry.path().join("cgroup")) {
            if cgroup_mentions(&cgroup, bare) {
                pids.push(pid);
            }
        }
    }
    if pids.is_empty() {
        return Err(ContainerError::NotFound(id.to_string()));
    }
    pids.sort_unstable();
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4a3e9f0c2b1d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";

    #[test]
    fn ids_lose_their_runtime_prefix() {
        assert_eq!(normalize_id(&format!("containerd://{ID}")), Ok(ID));
        assert_eq!(normalize_id(&format!("cri-o://{ID}")), Ok(ID));
        assert_eq!(normalize_id(ID), Ok(ID));
        assert!(normalize_id("containerd://xyz").is_err());
        assert!(normalize_id("abc").is_err());
    }

    #[test]
    fn cgroup_v1_v2_and_runtime_formats() {
        let v2 = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-{ID}.scope\n"
        );
        let v1 = format!("12:memory:/kubepods/besteffort/pod0b1c/{ID}\n11:cpu:/kubepods/besteffort/pod0b1c/{ID}\n");
        let crio = format!("0::/kubepods.slice/crio-{ID}.scope\n");
        let docker = format!("0::/system.slice/docker-{ID}.scope\n");
        for text in [&v2, &v1, &crio, &docker] {
            assert!(cgroup_mentions(text, ID), "{text}");
        }
        let other = "0::/user.slice/user-0.slice/session-1.scope\n";
        assert!(!cgroup_mentions(other, ID));
        // A longer id that merely starts with ours is another container.
        assert!(!cgroup_mentions(&format!("0::/kubepods/{ID}ff\n"), ID));
    }
}
