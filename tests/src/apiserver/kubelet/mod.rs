//! The "kubelet": runs each bound pod's containers as real local processes,
//! each in a cgroup named as containerd names it, and reports pod status,
//! container states and events back to the store.

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
mod sync;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::resources::{by_name, ResourceDef};
use super::store::{name_of, namespace_of, random_bytes, Change, EventType, Store};
use super::time;

pub use cgroups::CgroupRoots;
pub use container::ContainerRun;
pub use events::record_event;
use pod_status::{Conditions, PodView};
pub use state::ExitInfo;
use state::{CState, Kind, Phase, State};
use sync::lock;
pub use images::{normalize_image, Image, ImageTable};

/// First back-off after a failed image pull or a crashed container.
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How long ErrImagePull shows before ImagePullBackOff.
const PULL_ERROR_SHOWN: Duration = Duration::from_secs(1);

fn pods() -> &'static ResourceDef {
    by_name("", "pods").expect("pods is a built-in resource")
}

fn nodes() -> &'static ResourceDef {
    by_name("", "nodes").expect("nodes is a built-in resource")
}

enum Cmd {
    /// Graceful stop (pod deletion): SIGTERM, SIGKILL after the grace period, then remove the pod.
    Terminate(Duration),
    /// The pod object is gone: kill now.
    Kill,
    /// New ephemeral containers in this pod object.
    Ephemeral(Value),
}

/// A pod this kubelet runs.
pub struct PodRun {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    containers: Mutex<HashMap<String, Arc<ContainerRun>>>,
    cmd: mpsc::UnboundedSender<Cmd>,
}

impl PodRun {
    pub fn container(&self, name: &str) -> Option<Arc<ContainerRun>> {
        lock(&self.containers).get(name).cloned()
    }
}

/// Runs pods bound to its nodes.
pub struct Kubelet {
    store: Arc<Store>,
    images: Arc<RwLock<ImageTable>>,
    cgroups: CgroupRoots,
    pods: Mutex<HashMap<String, Arc<PodRun>>>,
    next_ip: AtomicU32,
    node_ip: String,
}

impl Kubelet {
    pub fn new(store: Arc<Store>, images: Arc<RwLock<ImageTable>>, node_ip: &str) -> Arc<Self> {
        Arc::new(Kubelet {
            store,
            images,
            cgroups: CgroupRoots::discover(),
            pods: Mutex::new(HashMap::new()),
            next_ip: AtomicU32::new(0),
            node_ip: node_ip.to_string(),
        })
    }

    /// The run of a pod by namespace and name.
    pub fn pod(&self, ns: &str, name: &str) -> Option<Arc<PodRun>> {
        lock(&self.pods).values().find(|p| p.namespace == ns && p.name == name).cloned()
    }

    /// Process ids of every running container's main process.
    pub fn all_pids(&self) -> Vec<u32> {
        let pods: Vec<Arc<PodRun>> = lock(&self.pods).values().cloned().collect();
        pods.iter().flat_map(|p| lock(&p.containers).values().filter(|c| c.is_running()).map(|c| c.pid).collect::<Vec<_>>()).collect()
    }

    /// Kills every container at once (server shutdown).
    pub fn kill_all(&self) {
        let pods: Vec<Arc<PodRun>> = lock(&self.pods).values().cloned().collect();
        for p in pods {
            for c in lock(&p.containers).values() {
                c.kill(libc::SIGKILL);
            }
        }
    }

    /// Removes the cgroups of every container and pod, waiting up to `timeout`
    /// for killed processes to leave them.
    pub fn remove_cgroups_blocking(&self, timeout: Duration) {
        let pods: Vec<Arc<PodRun>> = lock(&self.pods).values().cloned().collect();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for p in &pods {
            for c in lock(&p.containers).values() {
                dirs.extend(c.cgroups().iter().cloned());
                dirs.extend(c.cgroups().iter().filter_map(|d| d.parent().map(Path::to_path_buf)));
            }
        }
        let until = Instant::now() + timeout;
        loop {
            cgroups::remove(&dirs);
            if dirs.iter().all(|d| !d.exists()) || Instant::now() > until {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
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

    fn on_pod_change(self: &Arc<Self>, change: &Change) {
        let pod = &change.object;
        let uid = pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();
        let known = lock(&self.pods).get(&uid).cloned();
        match change.kind {
            EventType::Deleted => {
                if let Some(run) = lock(&self.pods).remove(&uid) {
                    let _ = run.cmd.send(Cmd::Kill);
                }
            }
            EventType::Added | EventType::Modified => {
                let deleting = pod.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null());
                if let Some(run) = known {
                    if deleting {
                        let grace = pod.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_u64).unwrap_or(30);
                        let _ = run.cmd.send(Cmd::Terminate(Duration::from_secs(grace)));
                    }
                    let count = |p: Option<&Value>| {
                        p.and_then(|p| p.pointer("/spec/ephemeralContainers")).and_then(Value::as_array).map_or(0, Vec::len)
                    };
                    if count(Some(pod)) > count(change.old.as_ref()) {
                        let _ = run.cmd.send(Cmd::Ephemeral(pod.clone()));
                    }
                    return;
                }
                let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default();
                let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending");
                // Pods bound to a node that does not exist stay Pending, as nobody runs them.
                if node.is_empty() || self.store.get(nodes(), "", node).is_err() {
                    return;
                }
                if deleting {
                    // Bound but never started here: nothing to stop.
                    let _ = self.store.delete(pods(), namespace_of(pod), name_of(pod));
                    return;
                }
                if phase != "Pending" {
                    return;
                }
                let (tx, rx) = mpsc::unbounded_channel();
                let run = Arc::new(PodRun {
                    uid: uid.clone(),
                    namespace: namespace_of(pod).to_string(),
                    name: name_of(pod).to_string(),
                    containers: Mutex::new(HashMap::new()),
                    cmd: tx,
                });
                lock(&self.pods).insert(uid, run.clone());
                let sup = Supervisor::new(self.clone(), run, pod.clone());
                tokio::spawn(sup.run(rx));
            }
        }
    }

    fn pod_ip(&self, pod: &Value) -> String {
        if pod.pointer("/spec/hostNetwork") == Some(&json!(true)) {
            return self.node_ip.clone();
        }
        // Every 127/8 address is local, so a pod gets its own that its processes can bind or be reached on.
        let n = self.next_ip.fetch_add(1, Ordering::SeqCst);
        format!("127.1.{}.{}", (n / 250) % 250, n % 250 + 1)
    }

    fn event(&self, pod: &Value, kind: &str, reason: &str, message: &str, field_path: Option<&str>) {
        record_event(&self.store, pod, kind, reason, message, "kubelet", field_path);
    }
}

/// Drives one pod: image pulls, init containers, containers, restarts,
/// deadline, termination; publishes status after every step.
struct Supervisor {
    k: Arc<Kubelet>,
    run: Arc<PodRun>,
    pod: Value,
    containers: Vec<CState>,
    phase: Phase,
    reason: Option<(String, String)>,
    start_time: String,
    pod_ip: String,
    conditions: Conditions,
    exit_tx: mpsc::UnboundedSender<(String, ExitInfo)>,
    exit_rx: mpsc::UnboundedReceiver<(String, ExitInfo)>,
    /// Index of the init container being run; `None` once they are all done.
    init_at: Option<usize>,
    deadline: Option<Instant>,
    /// Set when the pod is being deleted: remove it once every container is gone.
    deleting: bool,
}

impl Supervisor {
    fn new(k: Arc<Kubelet>, run: Arc<PodRun>, pod: Value) -> Self {
        let mut containers = Vec::new();
        for (field, kind) in [("initContainers", Kind::Init), ("containers", Kind::Regular), ("ephemeralContainers", Kind::Ephemeral)] {
            for c in pod["spec"][field].as_array().into_iter().flatten() {
                let reason = if kind == Kind::Init || !has_init(&pod) { "ContainerCreating" } else { "PodInitializing" };
                containers.push(CState::waiting(c.clone(), kind, reason));
            }
        }
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let pod_ip = k.pod_ip(&pod);
        let deadline = pod.pointer("/spec/activeDeadlineSeconds").and_then(Value::as_u64).map(|s| Instant::now() + Duration::from_secs(s));
        let init_at = has_init(&pod).then_some(0);
        Supervisor {
            k,
            run,
            pod,
            containers,
            phase: Phase::Pending,
            reason: None,
            start_time: time::now(),
            pod_ip,
            conditions: Conditions::default(),
            exit_tx,
            exit_rx,
            init_at,
            deadline,
            deleting: false,
        }
    }

    fn restart_policy(&self) -> &str {
        self.pod["spec"]["restartPolicy"].as_str().unwrap_or("Always")
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30))
    }

    fn status(&mut self) -> Value {
        let view = PodView {
            phase: self.phase,
            containers: &self.containers,
            initialized: self.init_at.is_none(),
            host_ip: &self.k.node_ip,
            pod_ip: &self.pod_ip,
            start_time: &self.start_time,
            qos_class: super::admission::qos_class(&self.pod["spec"]),
            reason: self.reason.as_ref(),
        };
        pod_status::pod_status(&view, &mut self.conditions, &time::now())
    }

    fn publish(&mut self) {
        let status = self.status();
        let r = self.k.store.update(pods(), &self.run.namespace, &self.run.name, |p| {
            p["status"] = status;
            Ok(())
        });
        match r {
            Ok(p) => self.pod["metadata"] = p["metadata"].clone(),
            Err(e) => log::debug!("status of pod {}/{} not written: {e}", self.run.namespace, self.run.name),
        }
    }

    fn event(&self, kind: &str, reason: &str, message: &str, c: Option<&CState>) {
        let fp = c.map(CState::field_path);
        self.k.event(&self.pod, kind, reason, message, fp.as_deref());
    }

    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        self.publish();
        if !self.pull_images(&mut cmds).await {
            return self.finish_deleted();
        }
        self.start_due().await;
        self.publish();
        loop {
            if self.deleting && !self.containers.iter().any(|c| c.running()) {
                return self.finish_deleted();
            }
            let next_restart = self.containers.iter().filter_map(|c| c.restart_at).min();
            let deadline = if self.phase.terminal() || self.deleting { None } else { self.deadline };
            tokio::select! {
                Some((name, exit)) = self.exit_rx.recv() => self.on_exit(&name, exit).await,
                cmd = cmds.recv() => match cmd {
                    None | Some(Cmd::Kill) => {
                        self.kill_all(Duration::ZERO);
                        return self.cleanup();
                    }
                    Some(Cmd::Terminate(grace)) => {
                        if !self.deleting {
                            self.deleting = true;
                            self.kill_all(grace);
                        }
                    }
                    Some(Cmd::Ephemeral(pod)) => self.add_ephemeral(&pod).await,
                },
                _ = sleep_until(next_restart), if next_restart.is_some() => {
                    self.start_due().await;
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.phase = Phase::Failed;
                    self.reason = Some(("DeadlineExceeded".into(), "Pod was active on the node longer than the specified deadline".into()));
                    self.event("Warning", "DeadlineExceeded", "Pod was active on the node longer than the specified deadline", None);
                    for c in &mut self.containers {
                        c.restart_at = None;
                    }
                    self.kill_all(self.grace());
                }
            }
            self.publish();
        }
    }

    /// Waits until every image resolves (ErrImagePull, then ImagePullBackOff with
    /// growing back-off). False if the pod was deleted meanwhile.
    async fn pull_images(&mut self, cmds: &mut mpsc::UnboundedReceiver<Cmd>) -> bool {
        let mut backoff = BACKOFF_START;
        loop {
            let missing = {
                let images = sync::read(&self.k.images);
                self.containers.iter().position(|c| c.kind != Kind::Ephemeral && images.get(c.image()).is_none())
            };
            let Some(i) = missing else { break };
            let image = self.containers[i].image().to_string();
            let full = normalize_image(&image);
            let message = format!(
                "failed to pull and unpack image \"{full}\": failed to resolve reference \"{full}\": {full}: not found"
            );
            let c = &self.containers[i];
            self.event("Normal", "Pulling", &format!("Pulling image \"{image}\""), Some(c));
            self.event("Warning", "Failed", &format!("Failed to pull image \"{image}\": {message}"), Some(c));
            self.event("Warning", "Failed", "Error: ErrImagePull", Some(c));
            self.containers[i].state = State::Waiting { reason: "ErrImagePull".into(), message: Some(message) };
            self.publish();
            if !self.wait_or_stop(PULL_ERROR_SHOWN, cmds).await {
                return false;
            }
            let c = &self.containers[i];
            self.event("Normal", "BackOff", &format!("Back-off pulling image \"{image}\""), Some(c));
            self.event("Warning", "Failed", "Error: ImagePullBackOff", Some(c));
            self.containers[i].state =
                State::Waiting { reason: "ImagePullBackOff".into(), message: Some(format!("Back-off pulling image \"{image}\"")) };
            self.publish();
            if !self.wait_or_stop(backoff, cmds).await {
                return false;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        true
    }

    async fn wait_or_stop(&mut self, d: Duration, cmds: &mut mpsc::UnboundedReceiver<Cmd>) -> bool {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => return true,
                cmd = cmds.recv() => match cmd {
                    None | Some(Cmd::Kill) | Some(Cmd::Terminate(_)) => return false,
                    Some(Cmd::Ephemeral(pod)) => self.add_ephemeral(&pod).await,
                },
            }
        }
    }

    /// Starts whatever should run now: the next init container, or every
    /// regular container once init is done, and containers whose back-off is over.
    async fn start_due(&mut self) {
        if self.phase.terminal() || self.deleting {
            return;
        }
        let now = Instant::now();
        for i in 0..self.containers.len() {
            let c = &self.containers[i];
            let due = match c.kind {
                Kind::Init => {
                    let idx = self.containers[..=i].iter().filter(|c| c.kind == Kind::Init).count() - 1;
                    self.init_at == Some(idx) && !c.running() && c.terminated().is_none()
                }
                Kind::Regular => self.init_at.is_none() && !c.running() && c.terminated().is_none(),
                Kind::Ephemeral => false,
            };
            let backoff_over = c.restart_at.is_none_or(|t| t <= now);
            if due && backoff_over {
                self.start(i).await;
            }
        }
        if self.init_at.is_none() && self.containers.iter().any(|c| c.kind == Kind::Regular && c.running()) {
            self.phase = Phase::Running;
        }
    }

    async fn start(&mut self, i: usize) {
        let c = &mut self.containers[i];
        c.restart_at = None;
        let image = sync::read(&self.k.images).get(c.image()).unwrap_or_default();
        let id: String = random_bytes::<32>().iter().map(|b| format!("{b:02x}")).collect();
        c.id = Some(id.clone());
        let name = c.name().to_string();
        let image_name = c.image().to_string();
        let fp = c.field_path();
        if !c.ever_started {
            self.k.event(&self.pod, "Normal", "Pulled", &format!("Container image \"{image_name}\" already present on machine"), Some(&fp));
        }
        let spec = self.containers[i].spec.clone();
        match container::spawn(&self.k.cgroups, &self.pod, &self.pod_ip, &spec, &image, &id, self.exit_tx.clone()).await {
            Ok(run) => {
                self.k.event(&self.pod, "Normal", "Created", &format!("Created container: {name}"), Some(&fp));
                self.k.event(&self.pod, "Normal", "Started", &format!("Started container {name}"), Some(&fp));
                let c = &mut self.containers[i];
                c.state = State::Running { started: run.started.clone() };
                c.ever_started = true;
                lock(&self.run.containers).insert(name, run);
            }
            Err(message) => {
                self.k.event(&self.pod, "Warning", "Failed", &format!("Error: {message}"), Some(&fp));
                let exit = ExitInfo::start_error(message, time::now());
                let _ = self.exit_tx.send((name, exit));
                self.containers[i].state = State::Waiting { reason: "ContainerCreating".into(), message: None };
            }
        }
    }

    async fn on_exit(&mut self, name: &str, exit: ExitInfo) {
        let policy = self.restart_policy().to_string();
        let Some(i) = self.containers.iter().position(|c| c.name() == name) else { return };
        let kind = self.containers[i].kind;
        let ok = exit.code == 0;
        let restart = !self.deleting
            && !self.phase.terminal()
            && kind != Kind::Ephemeral
            && (policy == "Always" && kind == Kind::Regular || policy != "Never" && !ok);
        let c = &mut self.containers[i];
        if restart {
            let backoff = BACKOFF_START.saturating_mul(1 << c.restarts.min(5)).min(BACKOFF_MAX);
            c.restarts += 1;
            c.last = Some(exit.clone());
            c.restart_at = Some(Instant::now() + backoff);
            let message = format!("back-off {}s restarting failed container={name} pod={}_{}({})", backoff.as_secs(), self.run.name, self.run.namespace, self.run.uid);
            c.state = State::Waiting { reason: "CrashLoopBackOff".into(), message: Some(message.clone()) };
            self.event("Warning", "BackOff", "Back-off restarting failed container", Some(&self.containers[i]));
            return;
        }
        c.state = State::Terminated(exit);
        if kind == Kind::Init {
            if ok {
                let inits = self.containers.iter().filter(|c| c.kind == Kind::Init).count();
                self.init_at = self.init_at.map(|n| n + 1).filter(|n| *n < inits);
                self.start_due().await;
            } else {
                self.phase = Phase::Failed;
            }
            return;
        }
        if self.phase.terminal() {
            return;
        }
        let regular: Vec<&CState> = self.containers.iter().filter(|c| c.kind == Kind::Regular).collect();
        let all_done = regular.iter().all(|c| c.terminated().is_some() && c.restart_at.is_none());
        if all_done && !self.deleting {
            let failed = regular.iter().any(|c| c.terminated().is_some_and(|e| e.code != 0));
            self.phase = if failed { Phase::Failed } else { Phase::Succeeded };
            // Ephemeral containers do not outlive the pod.
            for c in self.containers.iter().filter(|c| c.kind == Kind::Ephemeral && c.running()) {
                if let Some(run) = self.run.container(c.name()) {
                    run.kill(libc::SIGKILL);
                }
            }
        }
    }

    async fn add_ephemeral(&mut self, pod: &Value) {
        let new: Vec<Value> = pod["spec"]["ephemeralContainers"].as_array().cloned().unwrap_or_default();
        self.pod["spec"]["ephemeralContainers"] = json!(new);
        for spec in new {
            let name = spec["name"].as_str().unwrap_or_default().to_string();
            if self.containers.iter().any(|c| c.name() == name) {
                continue;
            }
            self.containers.push(CState::waiting(spec, Kind::Ephemeral, "ContainerCreating"));
            let i = self.containers.len() - 1;
            let known = sync::read(&self.k.images).get(self.containers[i].image()).is_some();
            if self.phase.terminal() || self.deleting {
                continue;
            }
            if known {
                self.start(i).await;
            } else {
                let image = self.containers[i].image().to_string();
                self.event("Warning", "Failed", &format!("Failed to pull image \"{image}\": not found"), Some(&self.containers[i]));
                self.containers[i].state = State::Waiting { reason: "ErrImagePull".into(), message: Some(format!("image {image:?} not found")) };
            }
        }
        self.publish();
    }

    /// SIGTERM to every running container, SIGKILL after `grace` (at once if zero).
    fn kill_all(&mut self, grace: Duration) {
        for c in &mut self.containers {
            c.restart_at = None;
            if !c.running() {
                continue;
            }
            let Some(run) = self.run.container(c.name()) else { continue };
            if grace.is_zero() {
                run.kill(libc::SIGKILL);
                continue;
            }
            self.k.event(&self.pod, "Normal", "Killing", &format!("Stopping container {}", c.name()), Some(&c.field_path()));
            run.kill(libc::SIGTERM);
            tokio::spawn(async move {
                let mut exit = run.exit_watch();
                let exited = tokio::time::timeout(grace, async { exit.wait_for(Option::is_some).await.map(drop) }).await;
                if exited.is_err() {
                    run.kill(libc::SIGKILL);
                }
            });
        }
    }

    fn finish_deleted(mut self) {
        self.publish();
        let _ = self.k.store.delete(pods(), &self.run.namespace, &self.run.name);
        self.cleanup();
    }

    fn cleanup(self) {
        lock(&self.k.pods).remove(&self.run.uid);
        self.k.cgroups.remove_pod(&self.run.uid);
    }
}

fn has_init(pod: &Value) -> bool {
    pod["spec"]["initContainers"].as_array().is_some_and(|a| !a.is_empty())
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
