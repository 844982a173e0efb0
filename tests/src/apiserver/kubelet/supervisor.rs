//! The pod supervisor: one task per pod that drives it from Pending to its
//! end, as a kubelet's pod worker does: image "pulls" (with ErrImagePull and
//! back-off for unknown images), init containers in order, then the regular
//! containers, restarts with back-off by restart policy, the active deadline,
//! ephemeral containers, and graceful deletion. It publishes the pod status
//! after every step and records the events a kubelet would.
//!
//! The kubelet talks to a supervisor only through [`Cmd`]s; what supervisors
//! share of their node is in [`Node`].

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::cgroups::CgroupRoots;
use super::container::{self, ContainerRun};
use super::events::record_event;
use super::images::{normalize_image, ImageTable};
use super::pod_status::{self, Conditions, PodView};
use super::state::{CState, ExitInfo, Kind, Phase, State};
use super::sync::{self, lock};
use crate::apiserver::admission::qos_class;
use crate::apiserver::resources::{by_name, ResourceDef};
use crate::apiserver::store::{name_of, namespace_of, random_bytes, Store};
use crate::apiserver::time;

/// First back-off after a failed image pull or a crashed container.
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How long ErrImagePull shows before ImagePullBackOff.
const PULL_ERROR_SHOWN: Duration = Duration::from_secs(1);

pub(super) fn pods() -> &'static ResourceDef {
    by_name("", "pods").expect("pods is a built-in resource")
}

/// What every supervisor of a node shares: where status and events go, what
/// images exist, where cgroups go, and the node's address.
pub(super) struct Node {
    pub(super) store: Arc<Store>,
    pub(super) images: Arc<RwLock<ImageTable>>,
    pub(super) cgroups: CgroupRoots,
    pub(super) ip: String,
}

impl Node {
    fn event(&self, pod: &Value, kind: &str, reason: &str, message: &str, field_path: Option<&str>) {
        record_event(&self.store, pod, kind, reason, message, "kubelet", field_path);
    }
}

/// What the kubelet tells a pod's supervisor, from changes to the pod object.
pub(super) enum Cmd {
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

    /// Every container run the pod has had, latest run of each name.
    pub(super) fn containers(&self) -> Vec<Arc<ContainerRun>> {
        lock(&self.containers).values().cloned().collect()
    }

    /// Passes a command on; a supervisor that has ended needs none.
    pub(super) fn send(&self, cmd: Cmd) {
        let _ = self.cmd.send(cmd);
    }
}

/// Starts supervising `pod` (bound here, Pending): returns its handle and
/// the supervisor, which the caller spawns; it returns once the pod is gone.
pub(super) fn start(node: Arc<Node>, pod: Value, pod_ip: String) -> (Arc<PodRun>, impl Future<Output = ()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let run = Arc::new(PodRun {
        uid: pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string(),
        namespace: namespace_of(&pod).to_string(),
        name: name_of(&pod).to_string(),
        containers: Mutex::new(HashMap::new()),
        cmd: tx,
    });
    let sup = Supervisor::new(node, run.clone(), pod, pod_ip);
    (run, sup.run(rx))
}

/// Drives one pod: image pulls, init containers, containers, restarts,
/// deadline, termination; publishes status after every step.
struct Supervisor {
    node: Arc<Node>,
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
    fn new(node: Arc<Node>, run: Arc<PodRun>, pod: Value, pod_ip: String) -> Self {
        let mut containers = Vec::new();
        for (field, kind) in
            [("initContainers", Kind::Init), ("containers", Kind::Regular), ("ephemeralContainers", Kind::Ephemeral)]
        {
            for c in pod["spec"][field].as_array().into_iter().flatten() {
                let reason =
                    if kind == Kind::Init || !has_init(&pod) { "ContainerCreating" } else { "PodInitializing" };
                containers.push(CState::waiting(c.clone(), kind, reason));
            }
        }
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let deadline = pod
            .pointer("/spec/activeDeadlineSeconds")
            .and_then(Value::as_u64)
            .map(|s| Instant::now() + Duration::from_secs(s));
        let init_at = has_init(&pod).then_some(0);
        Supervisor {
            node,
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
            host_ip: &self.node.ip,
            pod_ip: &self.pod_ip,
            start_time: &self.start_time,
            qos_class: qos_class(&self.pod["spec"]),
            reason: self.reason.as_ref(),
        };
        pod_status::pod_status(&view, &mut self.conditions, &time::now())
    }

    fn publish(&mut self) {
        let status = self.status();
        let r = self.node.store.update(pods(), &self.run.namespace, &self.run.name, |p| {
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
        self.node.event(&self.pod, kind, reason, message, fp.as_deref());
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
                let images = sync::read(&self.node.images);
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
            self.containers[i].state = State::Waiting {
                reason: "ImagePullBackOff".into(),
                message: Some(format!("Back-off pulling image \"{image}\"")),
            };
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
        let image = sync::read(&self.node.images).get(c.image()).unwrap_or_default();
        let id: String = random_bytes::<32>().iter().map(|b| format!("{b:02x}")).collect();
        c.id = Some(id.clone());
        let name = c.name().to_string();
        let image_name = c.image().to_string();
        let fp = c.field_path();
        if !c.ever_started {
            self.node.event(
                &self.pod,
                "Normal",
                "Pulled",
                &format!("Container image \"{image_name}\" already present on machine"),
                Some(&fp),
            );
        }
        let spec = self.containers[i].spec.clone();
        match container::spawn(&self.node.cgroups, &self.pod, &self.pod_ip, &spec, &image, &id, self.exit_tx.clone())
            .await
        {
            Ok(run) => {
                self.node.event(&self.pod, "Normal", "Created", &format!("Created container: {name}"), Some(&fp));
                self.node.event(&self.pod, "Normal", "Started", &format!("Started container {name}"), Some(&fp));
                let c = &mut self.containers[i];
                c.state = State::Running { started: run.started.clone() };
                c.ever_started = true;
                lock(&self.run.containers).insert(name, run);
            }
            Err(message) => {
                self.node.event(&self.pod, "Warning", "Failed", &format!("Error: {message}"), Some(&fp));
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
            let message = format!(
                "back-off {}s restarting failed container={name} pod={}_{}({})",
                backoff.as_secs(),
                self.run.name,
                self.run.namespace,
                self.run.uid
            );
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
            let known = sync::read(&self.node.images).get(self.containers[i].image()).is_some();
            if self.phase.terminal() || self.deleting {
                continue;
            }
            if known {
                self.start(i).await;
            } else {
                let image = self.containers[i].image().to_string();
                self.event(
                    "Warning",
                    "Failed",
                    &format!("Failed to pull image \"{image}\": not found"),
                    Some(&self.containers[i]),
                );
                self.containers[i].state = State::Waiting {
                    reason: "ErrImagePull".into(),
                    message: Some(format!("image {image:?} not found")),
                };
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
            self.node.event(
                &self.pod,
                "Normal",
                "Killing",
                &format!("Stopping container {}", c.name()),
                Some(&c.field_path()),
            );
            run.kill(libc::SIGTERM);
            tokio::spawn(async move {
                let mut exit = run.exit_watch();
                let exited =
                    tokio::time::timeout(grace, async { exit.wait_for(Option::is_some).await.map(drop) }).await;
                if exited.is_err() {
                    run.kill(libc::SIGKILL);
                }
            });
        }
    }

    fn finish_deleted(mut self) {
        self.publish();
        let _ = self.node.store.delete(pods(), &self.run.namespace, &self.run.name);
        self.cleanup();
    }

    /// The pod's own cgroup directories go last; the kubelet forgets the pod
    /// once this supervisor has returned.
    fn cleanup(self) {
        self.node.cgroups.remove_pod(&self.run.uid);
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
