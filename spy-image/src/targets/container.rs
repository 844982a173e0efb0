//! Container id → host pids, through /proc/*/cgroup. Works for containerd,
//! CRI-O and Docker ids on cgroup v1 and v2, with no runtime socket.
//!
//! A process counts only when its cgroup path names the container id AND,
//! right above it, the pod UID the plugin sent: the kubelet puts every
//! container in `…/pod<UID>/<id>` (cgroupfs driver) or
//! `…-pod<UID_with_underscores>.slice/<runtime>-<id>.scope` (systemd
//! driver). So a session that names pod A cannot reach pod B's (or a
//! host service's) processes by sending B's container id.

use std::fs;

/// Shortest id accepted: a shorter one could match unrelated cgroup paths.
const MIN_ID_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContainerError {
    #[error("`{0}` is not a container id (expected hex, optionally with a runtime:// prefix)")]
    BadId(String),
    #[error("no process of container {0} runs on this node (it may have exited or restarted)")]
    NotFound(String),
    #[error(
        "refused container {id}: its processes are not in the cgroup of pod {pod_uid} (the container id \
         and pod UID the plugin sent do not belong together); nothing of it is spied on"
    )]
    NotInPod { id: String, pod_uid: String },
}

/// "containerd://abc…", "cri-o://abc…", "docker://abc…" or "abc…" → "abc…".
pub fn normalize_id(id: &str) -> Result<&str, ContainerError> {
    let bare = id.split_once("://").map_or(id, |(_, rest)| rest);
    if bare.len() < MIN_ID_LEN || !bare.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ContainerError::BadId(id.to_string()));
    }
    Ok(bare)
}

/// Where a /proc/PID/cgroup text places the process, for one container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Not in the container.
    Elsewhere,
    /// In a cgroup named for the container, but not under the pod's.
    OutsidePod,
    /// In the container, under the pod's cgroup.
    InPod,
}

/// Where the process whose /proc/PID/cgroup text this is sits, for the
/// container `bare_id` of the pod `pod_uid`.
pub fn placement(cgroup: &str, bare_id: &str, pod_uid: &str) -> Placement {
    let mut found = Placement::Elsewhere;
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        let elements: Vec<&str> = path.split('/').collect();
        for (at, element) in elements.iter().enumerate() {
            if !names_container(element, bare_id) {
                continue;
            }
            // The pod's cgroup is the container's parent.
            if at > 0 && names_pod(elements[at - 1], pod_uid) {
                return Placement::InPod;
            }
            found = Placement::OutsidePod;
        }
    }
    found
}

/// The id is a whole path element or a runtime-decorated one: `<id>`,
/// `cri-containerd-<id>.scope`, `docker-<id>.scope`, `crio-<id>.scope`.
fn names_container(element: &str, bare_id: &str) -> bool {
    let element = element.strip_suffix(".scope").unwrap_or(element);
    element == bare_id || element.rsplit_once('-').is_some_and(|(_, tail)| tail == bare_id)
}

/// `pod<uid>` (cgroupfs driver) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice`
/// (systemd driver, which cannot have `-` inside a unit name's part).
fn names_pod(element: &str, pod_uid: &str) -> bool {
    if pod_uid.is_empty() {
        return false;
    }
    if element.strip_prefix("pod") == Some(pod_uid) {
        return true;
    }
    let Some(unit) = element.strip_suffix(".slice") else { return false };
    let systemd_uid = pod_uid.replace('-', "_");
    unit.rsplit_once('-').is_some_and(|(_, tail)| tail.strip_prefix("pod") == Some(systemd_uid.as_str()))
}

/// Whether a /proc/PID/cgroup text places the process in the container
/// (of any pod).
pub fn cgroup_mentions(cgroup: &str, bare_id: &str) -> bool {
    cgroup.lines().any(|line| line.splitn(3, ':').nth(2).unwrap_or("").split('/').any(|e| names_container(e, bare_id)))
}

/// Host pids of the processes (thread-group leaders) of container `id` in
/// pod `pod_uid`. Processes named for the container but outside the pod's
/// cgroup are never returned; when those are all there is, the answer is
/// [`ContainerError::NotInPod`].
pub fn pids_of(id: &str, pod_uid: &str) -> Result<Vec<u32>, ContainerError> {
    let bare = normalize_id(id)?;
    let mut pids = Vec::new();
    let mut outside = false;
    let Ok(entries) = fs::read_dir("/proc") else { return Err(ContainerError::NotFound(id.to_string())) };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Ok(cgroup) = fs::read_to_string(entry.path().join("cgroup")) {
            match placement(&cgroup, bare, pod_uid) {
                Placement::InPod => pids.push(pid),
                Placement::OutsidePod => outside = true,
                Placement::Elsewhere => {}
            }
        }
    }
    if pids.is_empty() {
        if outside {
            return Err(ContainerError::NotInPod { id: id.to_string(), pod_uid: pod_uid.to_string() });
        }
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

    const UID: &str = "0b1c2d3e-4f50-4a61-a728-394a5b6c7d8e";

    #[test]
    fn the_pod_uid_must_be_the_containers_parent_cgroup() {
        let systemd_uid = UID.replace('-', "_");
        let in_pod = [
            // cgroupfs driver, v1 hybrid (as the test kubelet lays it out) and v2.
            format!("9:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n8:pids:/kubepods/besteffort/pod{UID}/{ID}\n"),
            format!("0::/kubepods/pod{UID}/{ID}\n"),
            // systemd driver, containerd and CRI-O, Guaranteed and Burstable.
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid}.slice/cri-containerd-{ID}.scope\n"),
            format!("0::/kubepods.slice/kubepods-pod{systemd_uid}.slice/crio-{ID}.scope\n"),
        ];
        for text in &in_pod {
            assert_eq!(placement(text, ID, UID), Placement::InPod, "{text}");
        }
        let other_uid = "9b1c2d3e-4f50-4a61-a728-394a5b6c7d8e";
        assert_eq!(placement(&in_pod[0], ID, other_uid), Placement::OutsidePod);
        assert_eq!(placement(&in_pod[2], ID, other_uid), Placement::OutsidePod);
        // A container id outside any pod (a docker container on the host).
        assert_eq!(placement(&format!("0::/system.slice/docker-{ID}.scope\n"), ID, UID), Placement::OutsidePod);
        // The UID elsewhere in the path does not count: it must be the parent.
        let planted = format!("0::/kubepods/pod{UID}/x/{ID}\n");
        assert_eq!(placement(&planted, ID, UID), Placement::OutsidePod);
        assert_eq!(placement("0::/user.slice/user-0.slice/session-1.scope\n", ID, UID), Placement::Elsewhere);
        // An empty UID names no pod.
        assert_eq!(placement(&format!("0::/kubepods/pod/{ID}\n"), ID, ""), Placement::OutsidePod);
        // A UID that merely ends like ours is another pod.
        assert_eq!(placement(&format!("0::/kubepods/podx{UID}/{ID}\n"), ID, UID), Placement::OutsidePod);
    }

    #[test]
    fn refusal_names_container_and_pod() {
        let err = ContainerError::NotInPod { id: ID.into(), pod_uid: UID.into() };
        let text = err.to_string();
        assert!(text.starts_with(&format!("refused container {ID}")), "{text}");
        assert!(text.contains(UID), "{text}");
    }
}
