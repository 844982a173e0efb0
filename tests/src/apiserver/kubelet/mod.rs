//! The "kubelet": runs each bound pod's containers as real local processes,
//! each in a cgroup named as containerd names it, and reports pod status,
//! container states and events back to the store, so that kubectl, kube-rs
//! and the spy see what a real node would show.
//!
//! This module follows pod changes and keeps one supervisor per pod; the
//! rest, in the order data flows:
//!
//! - `images`, `env`, `argv`: what a container runs, with which
//!   environment (no side effects);
//! - `cgroups`, `process`, `signal`, `container`: one container run
//!   as a process in its cgroups;
//! - `state`, `pod_status`: the supervisor's state and the status JSON
//!   made from it (pure); `events`: Events for the store;
//! - `supervisor`: drives one pod through all of the above.
//!
//! Unsafe code is denied here rather than forbidden because `signal` must
//! allow it for kill(2); every other submodule forbids it.

#![deny(unsafe_code)]

mod argv;
mod cgroups;
mod container;
mod env;
mod events;
mod images;
mod pod_status;
mod process;
mod signal;
mod state;
mod supervisor;
mod sync;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::resources::{by_name, ResourceDef};
use super::store::{name_of, namespace_of, Change, EventType, Store};

pub use cgroups::CgroupRoots;
pub use container::ContainerRun;
pub use events::record_event;
pub use images::{normalize_image, Image, ImageTable};
pub use state::ExitInfo;
pub use supervisor::PodRun;
use supervisor::{pods, Cmd, Node};
use sync::lock;

/// How often shutdown looks again whether killed processes have left their cgroups.
const CGROUP_REMOVE_PAUSE: Duration = Duration::from_millis(20);
/// Grace period of a pod deletion that names none (the API default).
const DEFAULT_DELETION_GRACE: u64 = 30;

fn nodes() -> &'static ResourceDef {
    by_name("", "nodes").expect("nodes is a built-in resource")
}

/// Runs pods bound to its nodes.
pub struct Kubelet {
    node: Arc<Node>,
    /// Pods being supervised, by uid.
    pods: Mutex<HashMap<String, Arc<PodRun>>>,
    next_ip: AtomicU32,
}

impl Kubelet {
    pub fn new(store: Arc<Store>, images: Arc<RwLock<ImageTable>>, node_ip: &str) -> Arc<Self> {
        Arc::new(Kubelet {
            node: Arc::new(Node { store, images, cgroups: CgroupRoots::discover(), ip: node_ip.to_string() }),
            pods: Mutex::new(HashMap::new()),
            next_ip: AtomicU32::new(0),
        })
    }

    /// The run of a pod by namespace and name.
    pub fn pod(&self, ns: &str, name: &str) -> Option<Arc<PodRun>> {
        lock(&self.pods).values().find(|p| p.namespace == ns && p.name == name).cloned()
    }

    /// Process ids of every running container's main process.
    pub fn all_pids(&self) -> Vec<u32> {
        self.containers().iter().filter(|c| c.is_running()).map(|c| c.pid).collect()
    }

    /// Kills every container at once (server shutdown).
    pub fn kill_all(&self) {
        for c in self.containers() {
            c.kill(libc::SIGKILL);
        }
    }

    /// Removes the cgroups of every container and pod, waiting up to `timeout`
    /// for killed processes to leave them.
    pub fn remove_cgroups_blocking(&self, timeout: Duration) {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for c in self.containers() {
            dirs.extend(c.cgroups().iter().cloned());
            dirs.extend(c.cgroups().iter().filter_map(|d| d.parent().map(Path::to_path_buf)));
        }
        let until = Instant::now() + timeout;
        loop {
            cgroups::remove(&dirs);
            if dirs.iter().all(|d| !d.exists()) || Instant::now() > until {
                return;
            }
            std::thread::sleep(CGROUP_REMOVE_PAUSE);
        }
    }

    /// Follows pod changes in the store.
    pub async fn run(self: Arc<Self>, mut changes: mpsc::UnboundedReceiver<Arc<Change>>) {
        while let Some(change) = changes.recv().await {
            if !change.res.is(pods().group, pods().plural) {
                continue;
            }
            self.on_pod_change(&change);
        }
    }

    /// Every container run of every pod.
    fn containers(&self) -> Vec<Arc<ContainerRun>> {
        let pods: Vec<Arc<PodRun>> = lock(&self.pods).values().cloned().collect();
        pods.iter().flat_map(|p| p.containers()).collect()
    }

    fn on_pod_change(self: &Arc<Self>, change: &Change) {
        let pod = &change.object;
        let uid = pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();
        let known = lock(&self.pods).get(&uid).cloned();
        match change.kind {
            EventType::Deleted => {
                if let Some(run) = lock(&self.pods).remove(&uid) {
                    run.send(Cmd::Kill);
                }
            }
            EventType::Added | EventType::Modified => {
                let deleting = pod.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null());
                if let Some(run) = known {
                    if deleting {
                        let grace = pod
                            .pointer("/metadata/deletionGracePeriodSeconds")
                            .and_then(Value::as_u64)
                            .unwrap_or(DEFAULT_DELETION_GRACE);
                        run.send(Cmd::Terminate(Duration::from_secs(grace)));
                    }
                    if ephemeral_count(Some(pod)) > ephemeral_count(change.old.as_ref()) {
                        run.send(Cmd::Ephemeral(pod.clone()));
                    }
                    return;
                }
                let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default();
                let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending");
                // Pods bound to a node that does not exist stay Pending, as nobody runs them.
                if node.is_empty() || self.node.store.get(nodes(), "", node).is_err() {
                    return;
                }
                if deleting {
                    // Bound but never started here: nothing to stop.
                    let _ = self.node.store.delete(pods(), namespace_of(pod), name_of(pod));
                    return;
                }
                if phase != "Pending" {
                    return;
                }
                let (run, supervise) = supervisor::start(self.node.clone(), pod.clone(), self.pod_ip(pod));
                lock(&self.pods).insert(uid.clone(), run);
                let kubelet = self.clone();
                tokio::spawn(async move {
                    supervise.await;
                    lock(&kubelet.pods).remove(&uid);
                });
            }
        }
    }

    fn pod_ip(&self, pod: &Value) -> String {
        if pod.pointer("/spec/hostNetwork") == Some(&json!(true)) {
            return self.node.ip.clone();
        }
        loopback_ip(self.next_ip.fetch_add(1, Ordering::SeqCst))
    }
}

/// The `n`th pod address. Every 127/8 address is local, so a pod gets its
/// own that its processes can bind or be reached on.
fn loopback_ip(n: u32) -> String {
    format!("127.1.{}.{}", (n / 250) % 250, n % 250 + 1)
}

fn ephemeral_count(pod: Option<&Value>) -> usize {
    pod.and_then(|p| p.pointer("/spec/ephemeralContainers")).and_then(Value::as_array).map_or(0, Vec::len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_addresses_are_distinct_loopback_addresses() {
        assert_eq!(loopback_ip(0), "127.1.0.1");
        assert_eq!(loopback_ip(249), "127.1.0.250");
        assert_eq!(loopback_ip(250), "127.1.1.1");
        let all: std::collections::HashSet<String> = (0..250 * 250).map(loopback_ip).collect();
        assert_eq!(all.len(), 250 * 250);
    }

    #[test]
    fn ephemeral_containers_are_counted_in_the_spec() {
        assert_eq!(ephemeral_count(None), 0);
        assert_eq!(ephemeral_count(Some(&json!({"spec": {}}))), 0);
        assert_eq!(ephemeral_count(Some(&json!({"spec": {"ephemeralContainers": [{"name": "a"}, {"name": "b"}]}}))), 2);
    }
}
