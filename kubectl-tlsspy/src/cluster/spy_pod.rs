//! One spy pod per node: its spec, its start (with progress and plain-word
//! failures), and its removal. [`run`] is the whole life of one spy.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use indicatif::ProgressBar;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;
use spy_protocol::limits;
use spy_protocol::seal::SessionKey;
use spy_protocol::session::Command;
use tokio::sync::{mpsc, watch};

use super::attach::{self, StreamEnd};
use super::{SpyEvent, SpyFailure, MANAGED_BY, MANAGED_BY_LABEL, SESSION_LABEL};

/// The spy image this plugin version asks for (the release publishes it).
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/tlsspy/tlsspy-agent:v", env!("CARGO_PKG_VERSION"));
/// The spy pod's one container.
pub const CONTAINER: &str = "tlsspy";
/// What is left of a spy once the plugin asked it to stop: the pod's grace period.
const GRACE_SECONDS: i64 = 2;
/// How long the spy pod's status is awaited after the agent ended by itself,
/// to tell the user why.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(3);
/// How long a refused attach waits for the container's exit to be reported.
const ATTACH_REFUSED_EXIT_WAIT: Duration = Duration::from_secs(1);

/// How every spy pod of a session runs.
#[derive(Clone, Debug)]
pub struct SpyConfig {
    pub image: String,
    pub namespace: String,
    pub session: String,
    pub startup_timeout: Duration,
    pub heartbeat_timeout: Duration,
    /// The plugin gives up on a spy that sends nothing for this long.
    pub silence_timeout: Duration,
    /// activeDeadlineSeconds: the cluster's own backstop.
    pub deadline: Duration,
    /// Extra agent flags (--max-body, --raw, --show-secrets).
    pub agent_args: Vec<String>,
    /// The agent's `--memory-budget`, which its container's memory limit
    /// is made from.
    pub memory_budget: u64,
    /// The agent's `--ring-buffer-mib` (in `agent_args`), which the limit
    /// grows with.
    pub ring_buffer_mib: u32,
    /// RUST_LOG of the agent.
    pub log_level: String,
}

/// The spy pod for `node`. Its arguments carry only the digest of the
/// pod's session key: anyone who may read the pod reads them.
pub fn pod_spec(config: &SpyConfig, node: &str, key: &SessionKey) -> Pod {
    let mut command = vec![
        "tlsspy-agent".to_string(),
        "--session".into(),
        "--session-key-digest".into(),
        key.digest(),
        "--node".into(),
        "$(NODE)".into(),
        "--heartbeat-timeout".into(),
        config.heartbeat_timeout.as_secs().max(1).to_string(),
        "--memory-budget".into(),
        limits::format_size(config.memory_budget),
    ];
    command.extend(config.agent_args.iter().cloned());
    let host_path = |name: &str, path: &str| json!({"name": name, "hostPath": {"path": path}});
    let mount = |name: &str, path: &str| json!({"name": name, "mountPath": path});
    let value = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "tlsspy-",
            "namespace": config.namespace,
            "labels": {
                MANAGED_BY_LABEL: MANAGED_BY,
                "app.kubernetes.io/name": "tlsspy-agent",
                SESSION_LABEL: config.session,
            },
        },
        "spec": {
            // Pinned to the node: no scheduler, no affinity to get wrong.
            "nodeName": node,
            "restartPolicy": "Never",
            "tolerations": [{"operator": "Exists"}],
            "hostPID": true,
            "activeDeadlineSeconds": config.deadline.as_secs().max(1),
            "terminationGracePeriodSeconds": GRACE_SECONDS,
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "containers": [{
                "name": CONTAINER,
                "image": config.image,
                "command": command,
                "env": [
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "RUST_LOG", "value": config.log_level},
                ],
                "stdin": true,
                "stdinOnce": true,
                "tty": false,
                // An agent that dies early leaves its last words in the pod status.
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": {"privileged": true},
                "resources": resources(config.memory_budget, config.ring_buffer_mib),
                "volumeMounts": [
                    mount("sys", "/sys"),
                    mount("bpf", "/sys/fs/bpf"),
                    mount("tracing", "/sys/kernel/tracing"),
                ],
            }],
            "volumes": [
                host_path("sys", "/sys"),
                host_path("bpf", "/sys/fs/bpf"),
                host_path("tracing", "/sys/kernel/tracing"),
            ],
        },
    });
    // The JSON above is a valid Pod by construction.
    serde_json::from_value(value).unwrap_or_default()
}

/// The spy container's resources. Memory: the limit is the agent's budget
/// (connections and packet reassembly, which it keeps itself within by
/// evicting) plus its fixed overhead of 96 MiB
/// (`spy_protocol::limits::AGENT_FIXED_OVERHEAD`: the 32 MiB ring buffer it
/// maps, its code and heap at rest, the eBPF maps, a few capture socket
/// buffers); the request is that overhead alone, what it holds at rest, so
/// that a busy node still admits the pod. CPU: a small request and no
/// limit, since a throttled spy drops events rather than slowing anything.
fn resources(memory_budget: u64, ring_buffer_mib: u32) -> serde_json::Value {
    json!({
        "requests": {"cpu": SPY_CPU_REQUEST, "memory": limits::AGENT_FIXED_OVERHEAD.to_string()},
        "limits": {"memory": limits::pod_memory_limit(memory_budget, ring_buffer_mib).to_string()},
    })
}

/// What the spy asks of a node's CPU at rest.
const SPY_CPU_REQUEST: &str = "100m";

/// The whole life of one node's spy: create, wait, attach, stream, remove.
/// Ends with [`SpyEvent::Ended`].
pub async fn run(
    client: Client,
    config: Arc<SpyConfig>,
    node: String,
    commands: mpsc::UnboundedReceiver<Command>,
    stop: watch::Receiver<bool>,
    events: mpsc::Sender<SpyEvent>,
    progress: ProgressBar,
) {
    let api: Api<Pod> = Api::namespaced(client, &config.namespace);
    let mut created = None;
    let outcome = life(&api, &config, &node, commands, stop, &events, &progress, &mut created).await;
    progress.finish_and_clear();
    if let Some(name) = &created {
        delete(&api, name).await;
    }
    let _ = events.send(SpyEvent::Ended { node, pod: created, outcome }).await;
}

#[allow(clippy::too_many_arguments, reason = "one call site; the pieces of a spy's life")]
async fn life(
    api: &Api<Pod>,
    config: &SpyConfig,
    node: &str,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut stop: watch::Receiver<bool>,
    events: &mpsc::Sender<SpyEvent>,
    progress: &ProgressBar,
    created: &mut Option<String>,
) -> Result<String, SpyFailure> {
    progress.set_message(format!("{node}: creating the spy pod"));
    // One key per spy pod, never shared: the nonces count lines per pod, so
    // two pods under one key would reuse nonces.
    let key = SessionKey::generate().map_err(|err| SpyFailure { message: err.to_string(), fatal: true })?;
    let pod = api
        .create(&PostParams::default(), &pod_spec(config, node, &key))
        .await
        .map_err(|err| create_failure(err, config))?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    *created = Some(name.clone());
    progress.set_message(format!("{node}: created pod {}/{name}", config.namespace));
    tokio::select! {
        started = wait_running(api, &name, node, config, progress) => started?,
        () = attach::stopped(&mut stop) => return Ok("stopped before the spy started".into()),
    }
    progress.set_message(format!("{node}: running, attaching"));
    let end = match attach::stream(
        api,
        &name,
        node,
        &key,
        attach::Timeouts {
            heartbeat: config.heartbeat_timeout,
            startup: config.startup_timeout,
            silence: config.silence_timeout,
        },
        &mut commands,
        &mut stop,
        events,
        progress,
    )
    .await
    {
        Ok(end) => end,
        // An agent that ended before we attached (it waits for "go" only so
        // long) is refused by the API server; its exit says more than the refusal.
        Err(failure) if !failure.fatal => match container_exit(api, &name, ATTACH_REFUSED_EXIT_WAIT).await {
            Some(exit) => return Err(exit_failure(node, None, None, Some(&exit))),
            None => return Err(failure),
        },
        Err(failure) => return Err(failure),
    };
    match end {
        StreamEnd::Stopped { reason } => Ok(reason),
        StreamEnd::AgentEnded { errors, bye } => Err(ended_by_itself(api, &name, node, errors, bye).await),
        // Not fatal: the other nodes' spies go on (this pod is deleted by `run`).
        StreamEnd::Silent { after } => Err(SpyFailure {
            message: format!(
                "the spy on node {node} sent nothing for {}s (a network cut, or the spy is stuck): gave up on it \
                 and deleted its pod {name}",
                after.as_secs_f64()
            ),
            fatal: false,
        }),
    }
}

fn create_failure(err: kube::Error, config: &SpyConfig) -> SpyFailure {
    let ns = &config.namespace;
    match err {
        kube::Error::Api(status) if status.code == 403 && status.message.contains("violates PodSecurity") => {
            SpyFailure {
                message: format!(
                "namespace \"{ns}\" does not allow the spy pod, which must run privileged with hostPID and hostPath \
                 mounts ({}).\nRun the spies in a namespace whose Pod Security allows privileged pods: \
                 --spy-namespace NAMESPACE (deploy/rbac.yaml makes one, `tlsspy`), or label this one: \
                 kubectl label namespace {ns} pod-security.kubernetes.io/enforce=privileged",
                status.message
            ),
                fatal: true,
            }
        }
        kube::Error::Api(status) if status.code == 403 => {
            SpyFailure { message: format!("not allowed to create the spy pod: {}", status.message), fatal: true }
        }
        kube::Error::Api(status) if status.code == 404 => SpyFailure {
            message: format!("cannot create the spy pod: {} (does namespace \"{ns}\" exist?)", status.message),
            fatal: true,
        },
        other => SpyFailure { message: format!("cannot create the spy pod: {other}"), fatal: false },
    }
}

/// Where a starting spy pod stands.
#[derive(Debug, PartialEq, Eq)]
enum Startup {
    Waiting(String),
    Running,
    Failed(String),
}

fn startup(pod: &Pod, node: &str, image: &str) -> Startup {
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_default();
    let container = status.container_statuses.iter().flatten().find(|c| c.name == CONTAINER);
    let state = container.and_then(|c| c.state.clone()).unwrap_or_default();
    if let Some(condition) =
        status.conditions.iter().flatten().find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        let why = condition.message.clone().or(condition.reason.clone()).unwrap_or_default();
        return Startup::Failed(format!("the spy pod cannot be placed on node {node}: {why}"));
    }
    if phase == "Succeeded" || phase == "Failed" {
        let detail = match &state.terminated {
            Some(t) => t
                .message
                .clone()
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| format!("{} (exit code {})", t.reason.clone().unwrap_or_default(), t.exit_code)),
            None => {
                let reason = status.reason.clone().unwrap_or_else(|| phase.clone());
                match status.message.clone() {
                    Some(message) => format!("{reason}: {message}"),
                    None => reason,
                }
            }
        };
        return Startup::Failed(format!("the spy pod ended before it could be attached: {detail}"));
    }
    if phase == "Running" && state.running.is_some() {
        return Startup::Running;
    }
    let Some(waiting) = state.waiting else {
        return Startup::Waiting("waiting for the node's kubelet".into());
    };
    let reason = waiting.reason.unwrap_or_default();
    let message = waiting.message.map(|m| format!(": {m}")).unwrap_or_default();
    match reason.as_str() {
        "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => Startup::Failed(format!(
            "node {node} cannot pull the spy image {image} ({reason}{message}); check --image, and that the node \
             can reach its registry"
        )),
        "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" | "CrashLoopBackOff" => {
            Startup::Failed(format!("the spy container cannot start ({reason}{message})"))
        }
        "ContainerCreating" | "" => Startup::Waiting(format!("pulling {image} and starting")),
        other => Startup::Waiting(other.to_string()),
    }
}

async fn wait_running(
    api: &Api<Pod>,
    name: &str,
    node: &str,
    config: &SpyConfig,
    progress: &ProgressBar,
) -> Result<(), SpyFailure> {
    let failure = |message: String| SpyFailure { message, fatal: false };
    let mut last = "waiting for the node's kubelet".to_string();
    let mut events = watcher(api.clone(), watcher::Config::default().fields(&format!("metadata.name={name}"))).boxed();
    let deadline = tokio::time::Instant::now() + config.startup_timeout;
    loop {
        let event = match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => {
                return Err(failure(format!(
                    "the spy pod on node {node} did not start within {}s (last: {last}); a slow image pull? raise --timeout",
                    config.startup_timeout.as_secs()
                )))
            }
            Ok(None) => return Err(failure("the watch on the spy pod ended".into())),
            Ok(Some(Err(err))) => {
                log::debug!("watching spy pod {name}: {err}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Ok(Some(Ok(event))) => event,
        };
        let pod = match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => pod,
            watcher::Event::Delete(_) => return Err(failure(format!("the spy pod {name} was deleted while starting"))),
            watcher::Event::Init | watcher::Event::InitDone => continue,
        };
        match startup(&pod, node, &config.image) {
            Startup::Running => return Ok(()),
            Startup::Failed(why) => return Err(failure(why)),
            Startup::Waiting(stage) => {
                progress.set_message(format!("{node}: {stage}"));
                last = stage;
            }
        }
    }
}

/// Why an agent ended while the plugin still wanted it.
async fn ended_by_itself(
    api: &Api<Pod>,
    name: &str,
    node: &str,
    errors: Vec<String>,
    bye: Option<String>,
) -> SpyFailure {
    // The agent's own last words are the best reason ("this kernel has no BTF…").
    let said = errors.iter().rev().find_map(|l| l.strip_prefix("tlsspy-agent: ")).map(String::from);
    let exit = container_exit(api, name, EXIT_STATUS_WAIT).await;
    exit_failure(node, said, bye, exit.as_ref())
}

/// The spy container's exit, once the kubelet has reported it (`None` if it
/// has not within `wait`).
async fn container_exit(api: &Api<Pod>, name: &str, wait: Duration) -> Option<ContainerStateTerminated> {
    let until = tokio::time::Instant::now() + wait;
    loop {
        if let Ok(pod) = api.get(name).await {
            let terminated = pod
                .status
                .and_then(|s| s.container_statuses)
                .into_iter()
                .flatten()
                .find(|c| c.name == CONTAINER)
                .and_then(|c| c.state)
                .and_then(|s| s.terminated);
            if terminated.is_some() {
                return terminated;
            }
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The best sentence for an agent that ended: its own words, its bye, its exit.
fn exit_failure(
    node: &str,
    said: Option<String>,
    bye: Option<String>,
    exit: Option<&ContainerStateTerminated>,
) -> SpyFailure {
    let message = match (said, bye, exit) {
        (Some(said), _, _) => format!("the spy on node {node} failed: {said}"),
        (None, Some(bye), _) => format!("the spy on node {node} ended: {bye}"),
        (None, None, Some(t)) if t.message.as_ref().is_some_and(|m| !m.trim().is_empty()) => {
            let message = t.message.as_deref().unwrap_or_default().trim();
            // The agent's fatal line, as the container's termination message.
            format!("the spy on node {node} failed: {}", message.strip_prefix("tlsspy-agent: ").unwrap_or(message))
        }
        (None, None, Some(t)) => format!(
            "the spy on node {node} ended: {} (exit code {})",
            t.reason.clone().unwrap_or_default(),
            t.exit_code
        ),
        (None, None, None) => format!("lost the connection to the spy on node {node}"),
    };
    SpyFailure { message, fatal: false }
}

/// Deletes a spy pod; a pod already gone is fine.
pub async fn delete(api: &Api<Pod>, name: &str) {
    let params = DeleteParams { grace_period_seconds: Some(GRACE_SECONDS as u32), ..DeleteParams::default() };
    match api.delete(name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(err) => log::warn!("cannot delete spy pod {name}: {err}; `kubectl tlsspy cleanup` will"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SpyConfig {
        SpyConfig {
            image: DEFAULT_IMAGE.into(),
            namespace: "tlsspy".into(),
            session: "abc123".into(),
            startup_timeout: Duration::from_secs(60),
            heartbeat_timeout: Duration::from_secs(10),
            silence_timeout: Duration::from_secs(30),
            deadline: Duration::from_secs(3600),
            agent_args: vec!["--max-body".into(), "100".into()],
            memory_budget: 64 << 20,
            ring_buffer_mib: limits::DEFAULT_RING_BUFFER_MIB,
            log_level: "warn".into(),
        }
    }

    #[test]
    fn spy_pod_spec_has_what_the_design_says() {
        let key = SessionKey::generate().expect("random");
        let pod = serde_json::to_value(pod_spec(&config(), "node-7", &key)).expect("json");
        assert_eq!(pod["metadata"]["generateName"], "tlsspy-");
        assert_eq!(pod["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(pod["metadata"]["labels"][SESSION_LABEL], "abc123");
        let spec = &pod["spec"];
        assert_eq!(spec["nodeName"], "node-7");
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["tolerations"], json!([{"operator": "Exists"}]));
        assert_eq!(spec["hostPID"], true);
        assert_eq!(spec["activeDeadlineSeconds"], 3600);
        let c = &spec["containers"][0];
        assert_eq!(c["securityContext"]["privileged"], true);
        assert_eq!((c["stdin"].clone(), c["stdinOnce"].clone()), (json!(true), json!(true)));
        assert_eq!(
            c["command"],
            json!([
                "tlsspy-agent",
                "--session",
                "--session-key-digest",
                key.digest(),
                "--node",
                "$(NODE)",
                "--heartbeat-timeout",
                "10",
                "--memory-budget",
                "64MiB",
                "--max-body",
                "100"
            ])
        );
        // The key itself is nowhere in the pod: only its digest.
        let text = pod.to_string();
        assert!(!text.contains(key.line().trim_end().trim_start_matches("key ")));
        // The limit is the budget the agent is told, plus its fixed overhead.
        let mib = 1u64 << 20;
        assert_eq!(c["resources"]["limits"]["memory"], json!((64 * mib + limits::AGENT_FIXED_OVERHEAD).to_string()));
        assert_eq!(c["resources"]["requests"]["memory"], json!(limits::AGENT_FIXED_OVERHEAD.to_string()));
        assert_eq!(c["resources"]["requests"]["cpu"], "100m");
        assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
        let paths: Vec<&str> = spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter_map(|v| v["hostPath"]["path"].as_str())
            .collect();
        assert_eq!(paths, ["/sys", "/sys/fs/bpf", "/sys/kernel/tracing"]);
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "tlsspy-x"}, "status": status})).expect("pod")
    }

    #[test]
    fn startup_failures_are_plain_words() {
        let pulling = pod(
            json!({"phase": "Pending", "containerStatuses": [{"name": CONTAINER, "ready": false, "restartCount": 0, "image": "i", "imageID": "",
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"i\""}}}]}),
        );
        let Startup::Failed(why) = startup(&pulling, "n1", "i") else { panic!() };
        assert_eq!(why, "node n1 cannot pull the spy image i (ImagePullBackOff: Back-off pulling image \"i\"); check --image, and that the node can reach its registry");
        let unschedulable = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]}),
        );
        assert_eq!(
            startup(&unschedulable, "n1", "i"),
            Startup::Failed("the spy pod cannot be placed on node n1: 0/3 nodes are available".into())
        );
        let died = pod(
            json!({"phase": "Failed", "containerStatuses": [{"name": CONTAINER, "ready": false, "restartCount": 0, "image": "i", "imageID": "",
            "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "tlsspy-agent: this kernel has no BTF\n"}}}]}),
        );
        assert_eq!(
            startup(&died, "n1", "i"),
            Startup::Failed(
                "the spy pod ended before it could be attached: tlsspy-agent: this kernel has no BTF".into()
            )
        );
        let running = pod(
            json!({"phase": "Running", "containerStatuses": [{"name": CONTAINER, "ready": true, "restartCount": 0, "image": "i", "imageID": "", "state": {"running": {}}}]}),
        );
        assert_eq!(startup(&running, "n1", "i"), Startup::Running);
    }
}
