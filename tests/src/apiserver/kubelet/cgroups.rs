//! Container cgroups, laid out as the kubelet's systemd-less cgroupfs driver
//! and containerd lay them out (`kubepods/<qos>/pod<uid>/<container id>`):
//! the spy finds a container's processes by that path in /proc/PID/cgroup, so
//! the tests see the same names a real node shows.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// The QoS directories under `kubepods`; a Guaranteed pod sits directly in it.
const QOS_DIRS: [&str; 3] = ["besteffort", "burstable", ""];

/// Where container cgroups go: one directory per writable hierarchy, under
/// this process's own cgroup there (so resource limits of whoever runs the
/// tests still apply to the containers).
#[derive(Debug, Clone, Default)]
pub struct CgroupRoots {
    pub bases: Vec<PathBuf>,
}

impl CgroupRoots {
    /// The cgroup v2 hierarchy plus the v1 `pids` and `name=systemd` ones, where mounted.
    /// (Controllers that need setup before a task can join, like cpuset, or that
    /// account resources, like memory, are left alone.)
    pub fn discover() -> Self {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        CgroupRoots { bases: bases(&own, &mountinfo) }
    }

    /// Creates `kubepods/<qos>/pod<uid>/<id>` in each hierarchy; returns the ones that exist.
    pub(super) fn create(&self, qos_class: &str, uid: &str, id: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for base in &self.bases {
            let dir = pod_dir(base, qos_dir(qos_class), uid).join(id);
            match std::fs::create_dir_all(&dir) {
                Ok(()) => out.push(dir),
                Err(e) => log::debug!("no cgroup {}: {e}", dir.display()),
            }
        }
        out
    }

    /// Removes the pod's own directories, whatever its QoS class was.
    pub(super) fn remove_pod(&self, uid: &str) {
        for base in &self.bases {
            for qos in QOS_DIRS {
                let _ = std::fs::remove_dir(pod_dir(base, qos, uid));
            }
        }
    }
}

/// Removes empty cgroup directories; one that still holds a process stays
/// (rmdir fails with EBUSY), so callers retry while killed processes leave.
pub(super) fn remove(dirs: &[PathBuf]) {
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

/// The processes in one cgroup (none if it is gone).
pub(super) fn procs(dir: &Path) -> Vec<i32> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    procs.lines().filter_map(|pid| pid.trim().parse().ok()).collect()
}

/// The hierarchies we use, from /proc/self/cgroup and /proc/self/mountinfo.
fn bases(own: &str, mountinfo: &str) -> Vec<PathBuf> {
    let mut bases = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let mut r = right.split_whitespace();
        let fstype = r.next().unwrap_or_default();
        let super_opts = r.nth(1).unwrap_or_default();
        let Some(mount_point) = left.split_whitespace().nth(4) else { continue };
        let wanted = match fstype {
            "cgroup2" => Some(""),
            "cgroup" => super_opts.split(',').find(|o| *o == "pids" || *o == "name=systemd"),
            _ => None,
        };
        let Some(controller) = wanted else { continue };
        let own_path = own_path(own, controller);
        bases.push(Path::new(mount_point).join(own_path.trim_start_matches('/')));
    }
    bases
}

/// This process's path in one hierarchy: "0::/x" for v2 (`controller` empty),
/// "N:pids:/x" for v1; the hierarchy's root if /proc/self/cgroup does not say.
fn own_path(own: &str, controller: &str) -> String {
    own.lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
            let hit = if controller.is_empty() { ctrls.is_empty() } else { ctrls.split(',').any(|c| c == controller) };
            hit.then(|| path.to_string())
        })
        .next()
        .unwrap_or_else(|| "/".into())
}

/// The directory under `kubepods` for a pod's QoS class.
fn qos_dir(qos_class: &str) -> &'static str {
    match qos_class {
        "Guaranteed" => "",
        "Burstable" => "burstable",
        _ => "besteffort",
    }
}

fn pod_dir(base: &Path, qos_dir: &str, uid: &str) -> PathBuf {
    let mut dir = base.join("kubepods");
    if !qos_dir.is_empty() {
        dir = dir.join(qos_dir);
    }
    dir.join(format!("pod{uid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:20 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
35 25 0:31 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
36 25 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,memory
";

    #[test]
    fn hybrid_hierarchies_under_our_own_cgroup() {
        let own = "12:pids:/user.slice/ci\n3:memory:/user.slice\n1:name=systemd:/user.slice/ci.scope\n0::/ci.scope\n";
        let got = bases(own, MOUNTINFO);
        let want: Vec<PathBuf> = [
            "/sys/fs/cgroup/unified/ci.scope",
            "/sys/fs/cgroup/systemd/user.slice/ci.scope",
            "/sys/fs/cgroup/pids/user.slice/ci",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(got, want, "memory is left alone");
    }

    #[test]
    fn unknown_own_cgroup_is_the_hierarchy_root() {
        let mountinfo = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(bases("", mountinfo), [PathBuf::from("/sys/fs/cgroup")]);
        assert!(bases("0::/x\n", "").is_empty(), "no cgroup mounted, no cgroups made");
    }

    #[test]
    fn pods_sit_in_their_qos_class_directory() {
        let base = Path::new("/sys/fs/cgroup/ci");
        assert_eq!(pod_dir(base, qos_dir("Guaranteed"), "u1"), Path::new("/sys/fs/cgroup/ci/kubepods/podu1"));
        assert_eq!(pod_dir(base, qos_dir("Burstable"), "u1"), Path::new("/sys/fs/cgroup/ci/kubepods/burstable/podu1"));
        assert_eq!(
            pod_dir(base, qos_dir("BestEffort"), "u1"),
            Path::new("/sys/fs/cgroup/ci/kubepods/besteffort/podu1")
        );
        // Removal walks every QoS directory: each class's is among them.
        for class in ["Guaranteed", "Burstable", "BestEffort"] {
            assert!(QOS_DIRS.contains(&qos_dir(class)));
        }
    }

    #[test]
    fn a_gone_cgroup_has_no_processes() {
        assert!(procs(Path::new("/nonexistent/cgroup")).is_empty());
    }
}
