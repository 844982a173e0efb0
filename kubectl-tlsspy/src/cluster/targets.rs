//! Targets: what the user named (pod/NAME, deploy/NAME, -l SELECTOR) →
//! pods → (node, container ids); and a watch that keeps that answer fresh
//! for `--follow`.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use futures::{Stream, StreamExt as _};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ListParams;
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Api, Client};

/// A workload whose pods are the targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    Job,
}

impl WorkloadKind {
    /// The name kubectl uses in messages (`deployment "api" not found`).
    pub fn noun(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
            WorkloadKind::DaemonSet => "daemonset",
            WorkloadKind::ReplicaSet => "replicaset",
            WorkloadKind::Job => "job",
        }
    }
}

/// One TARGET word of the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetRef {
    Pod(String),
    Workload(WorkloadKind, String),
}

/// `pod/NAME`, `NAME`, `deploy/NAME`… as kubectl spells resource types.
pub fn parse_target(text: &str) -> anyhow::Result<TargetRef> {
    let Some((kind, name)) = text.split_once('/') else {
        return valid_name(text).map(|n| TargetRef::Pod(n.to_string()));
    };
    let name = valid_name(name)?.to_string();
    let kind = match kind.to_ascii_lowercase().as_str() {
        "pod" | "pods" | "po" => return Ok(TargetRef::Pod(name)),
        "deploy" | "deployment" | "deployments" | "deployment.apps" | "deployments.apps" => WorkloadKind::Deployment,
        "sts" | "statefulset" | "statefulsets" | "statefulset.apps" | "statefulsets.apps" => WorkloadKind::StatefulSet,
        "ds" | "daemonset" | "daemonsets" | "daemonset.apps" | "daemonsets.apps" => WorkloadKind::DaemonSet,
        "rs" | "replicaset" | "replicasets" | "replicaset.apps" | "replicasets.apps" => WorkloadKind::ReplicaSet,
        "job" | "jobs" | "job.batch" | "jobs.batch" => WorkloadKind::Job,
        other => bail!(
            "`{text}`: tlsspy cannot spy on a `{other}`; name a pod/NAME, deploy/NAME, sts/NAME, ds/NAME, rs/NAME or job/NAME"
        ),
    };
    Ok(TargetRef::Workload(kind, name))
}

fn valid_name(name: &str) -> anyhow::Result<&str> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !ok {
        bail!("`{name}` is not a valid Kubernetes object name");
    }
    Ok(name)
}

/// A label selector as the API takes it in `?labelSelector=`.
pub fn selector_string(selector: &LabelSelector) -> String {
    let mut parts = Vec::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        parts.push(format!("{key}={value}"));
    }
    for expr in selector.match_expressions.iter().flatten() {
        let values = expr.values.clone().unwrap_or_default().join(",");
        parts.push(match expr.operator.as_str() {
            "In" => format!("{} in ({values})", expr.key),
            "NotIn" => format!("{} notin ({values})", expr.key),
            "Exists" => expr.key.clone(),
            "DoesNotExist" => format!("!{}", expr.key),
            other => format!("{} {other} ({values})", expr.key),
        });
    }
    parts.join(",")
}

/// Which pods the session is about: named ones, and ones matching selectors.
#[derive(Clone, Debug)]
pub struct Query {
    /// `None`: every namespace (-A).
    pub namespace: Option<String>,
    pub pods: Vec<String>,
    /// (what the user called it, label selector).
    pub selectors: Vec<(String, String)>,
    pub container: Option<String>,
}

impl Query {
    /// Turns workloads into their pod selectors.
    pub async fn resolve(
        client: &Client,
        namespace: Option<&str>,
        targets: &[TargetRef],
        selector: Option<&str>,
        container: Option<String>,
    ) -> anyhow::Result<Query> {
        let mut query =
            Query { namespace: namespace.map(String::from), pods: Vec::new(), selectors: Vec::new(), container };
        if let Some(selector) = selector {
            query.selectors.push((format!("pods matching {selector}"), selector.to_string()));
        }
        for target in targets {
            match target {
                TargetRef::Pod(name) => query.pods.push(name.clone()),
                TargetRef::Workload(kind, name) => {
                    let Some(ns) = namespace else {
                        bail!("a {} cannot be named across all namespaces: give -n NAMESPACE", kind.noun());
                    };
                    let selector = workload_selector(client, ns, *kind, name).await?;
                    query.selectors.push((format!("{} {name}", kind.noun()), selector));
                }
            }
        }
        Ok(query)
    }

    fn api(&self, client: &Client) -> Api<Pod> {
        match &self.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }

    fn where_(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("in namespace \"{ns}\""),
            None => "in any namespace".to_string(),
        }
    }

    /// The target pods as they are now. Without `follow`, a named pod that
    /// is missing or not running, or a selector matching nothing running,
    /// is an error.
    pub async fn initial(&self, client: &Client, follow: bool) -> anyhow::Result<Vec<PodTarget>> {
        let api = self.api(client);
        let mut found: BTreeMap<String, PodTarget> = BTreeMap::new();
        for name in &self.pods {
            let pod = api.get_opt(name).await.with_context(|| format!("cannot read pod \"{name}\""))?;
            match (pod, follow) {
                (Some(pod), _) => {
                    match classify(&pod, self.container.as_deref()) {
                        PodState::Ready(target) => {
                            found.insert(target.uid.clone(), target);
                        }
                        PodState::Unsuitable(why) => bail!("pod \"{name}\" {why}"),
                        PodState::Waiting(why) if !follow => {
                            bail!("pod \"{name}\" is not running ({why}); wait for it, or add --follow to start when it does")
                        }
                        PodState::Waiting(_) => {}
                    }
                }
                (None, false) => bail!("pod \"{name}\" not found {}", self.where_()),
                (None, true) => {}
            }
        }
        for (what, selector) in &self.selectors {
            let pods = api
                .list(&ListParams::default().labels(selector))
                .await
                .with_context(|| format!("cannot list {what}"))?;
            let mut running = 0;
            for pod in &pods.items {
                if let PodState::Ready(target) = classify(pod, self.container.as_deref()) {
                    running += 1;
                    found.insert(target.uid.clone(), target);
                }
            }
            if running == 0 && !follow {
                let hint = if pods.items.is_empty() { "none exists" } else { "none is running yet" };
                bail!("no running pod for {what} {} ({hint}); add --follow to wait for them", self.where_());
            }
        }
        Ok(found.into_values().collect())
    }

    /// Changes to the target pods, for as long as the session lasts.
    pub fn watch(&self, client: &Client) -> impl Stream<Item = TargetEvent> + Send + use<> {
        let api = self.api(client);
        let mut configs = Vec::new();
        for name in &self.pods {
            configs.push(watcher::Config::default().fields(&format!("metadata.name={name}")));
        }
        for (_, selector) in &self.selectors {
            configs.push(watcher::Config::default().labels(selector));
        }
        let container = self.container.clone();
        let streams = configs.into_iter().map(move |config| {
            let container = container.clone();
            watcher(api.clone(), config)
                .default_backoff()
                .filter_map(move |event| {
                    let container = container.clone();
                    async move {
                        match event {
                            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                                Some(TargetEvent::Changed(classify(&pod, container.as_deref()), uid_of(&pod)))
                            }
                            Ok(watcher::Event::Delete(pod)) => Some(TargetEvent::Gone(uid_of(&pod))),
                            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                            Err(err) => Some(TargetEvent::Trouble(err.to_string())),
                        }
                    }
                })
                .boxed()
        });
        futures::stream::select_all(streams)
    }
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// What the watch says about a target pod.
#[derive(Debug)]
pub enum TargetEvent {
    Changed(PodState, String),
    Gone(String),
    /// The watch failed (it retries with back-off).
    Trouble(String),
}

async fn workload_selector(client: &Client, ns: &str, kind: WorkloadKind, name: &str) -> anyhow::Result<String> {
    let not_found = || anyhow::anyhow!("{} \"{name}\" not found in namespace \"{ns}\"", kind.noun());
    let context = || format!("cannot read {} \"{name}\"", kind.noun());
    let selector = match kind {
        WorkloadKind::Deployment => {
            let d = Api::<Deployment>::namespaced(client.clone(), ns).get_opt(name).await.with_context(context)?;
            d.ok_or_else(not_found)?.spec.map(|s| s.selector)
        }
        WorkloadKind::StatefulSet => {
            let s = Api::<StatefulSet>::namespaced(client.clone(), ns).get_opt(name).await.with_context(context)?;
            s.ok_or_else(not_found)?.spec.map(|s| s.selector)
        }
        WorkloadKind::DaemonSet => {
            let d = Api::<DaemonSet>::namespaced(client.clone(), ns).get_opt(name).await.with_context(context)?;
            d.ok_or_else(not_found)?.spec.map(|s| s.selector)
        }
        WorkloadKind::ReplicaSet => {
            let r = Api::<ReplicaSet>::namespaced(client.clone(), ns).get_opt(name).await.with_context(context)?;
            r.ok_or_else(not_found)?.spec.map(|s| s.selector)
        }
        WorkloadKind::Job => {
            let j = Api::<Job>::namespaced(client.clone(), ns).get_opt(name).await.with_context(context)?;
            // The API server fills in a controller-uid selector; job-name is
            // the label every job's pods carry when it did not.
            Some(j.ok_or_else(not_found)?.spec.and_then(|s| s.selector).unwrap_or_else(|| LabelSelector {
                match_labels: Some([("job-name".to_string(), name.to_string())].into()),
                ..LabelSelector::default()
            }))
        }
    };
    let selector = selector.map(|s| selector_string(&s)).unwrap_or_default();
    if selector.is_empty() {
        bail!("{} \"{name}\" has an empty pod selector: name its pods instead", kind.noun());
    }
    Ok(selector)
}

/// A running target pod: where it runs and its containers' runtime ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodTarget {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    /// (container name, runtime id such as `containerd://…`).
    pub containers: Vec<(String, String)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PodState {
    /// At least one (selected) container runs.
    Ready(PodTarget),
    /// Not running yet, or not any more: why, in a few words.
    Waiting(String),
    /// Never a target (no such container).
    Unsuitable(String),
}

/// Whether a pod can be spied on now, and on which containers.
pub fn classify(pod: &Pod, container: Option<&str>) -> PodState {
    let spec_names: Vec<&str> = pod.spec.iter().flat_map(|s| s.containers.iter().map(|c| c.name.as_str())).collect();
    if let Some(wanted) = container {
        if !spec_names.contains(&wanted) {
            return PodState::Unsuitable(format!("has no container \"{wanted}\" (it has: {})", spec_names.join(", ")));
        }
    }
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_else(|| "Pending".into());
    if pod.metadata.deletion_timestamp.is_some() {
        return PodState::Waiting("being deleted".into());
    }
    if phase != "Running" {
        let detail = status
            .container_statuses
            .iter()
            .flatten()
            .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .or(status.reason.clone());
        return PodState::Waiting(match detail {
            Some(detail) => format!("{phase}: {detail}"),
            None => phase,
        });
    }
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return PodState::Waiting("not scheduled".into());
    };
    let containers: Vec<(String, String)> = status
        .container_statuses
        .iter()
        .flatten()
        .filter(|c| container.is_none_or(|wanted| c.name == wanted))
        .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        .filter_map(|c| Some((c.name.clone(), c.container_id.clone().filter(|id| !id.is_empty())?)))
        .collect();
    if containers.is_empty() {
        return PodState::Waiting("no container running".into());
    }
    PodState::Ready(PodTarget {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: uid_of(pod),
        node,
        containers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_parse_like_kubectl() {
        assert_eq!(parse_target("foo").expect("pod"), TargetRef::Pod("foo".into()));
        assert_eq!(parse_target("pod/foo").expect("pod"), TargetRef::Pod("foo".into()));
        assert_eq!(parse_target("po/foo").expect("pod"), TargetRef::Pod("foo".into()));
        assert_eq!(parse_target("deploy/api").expect("d"), TargetRef::Workload(WorkloadKind::Deployment, "api".into()));
        assert_eq!(parse_target("sts/db").expect("s"), TargetRef::Workload(WorkloadKind::StatefulSet, "db".into()));
        assert_eq!(parse_target("ds/agent").expect("ds"), TargetRef::Workload(WorkloadKind::DaemonSet, "agent".into()));
        assert_eq!(parse_target("job/once").expect("job"), TargetRef::Workload(WorkloadKind::Job, "once".into()));
        assert!(parse_target("svc/api").unwrap_err().to_string().contains("cannot spy on a `svc`"));
        assert!(parse_target("pod/").is_err());
        assert!(parse_target("Foo").is_err());
    }

    #[test]
    fn selectors_render_every_operator() {
        let selector: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "api"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "team", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        }))
        .expect("selector");
        assert_eq!(selector_string(&selector), "app=api,tier in (a,b),env notin (dev),team,!legacy");
    }

    fn pod(phase: &str, containers: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "app"}, {"name": "sidecar"}]},
            "status": {"phase": phase, "containerStatuses": containers},
        }))
        .expect("pod")
    }

    #[test]
    fn running_containers_with_ids_are_targets() {
        let statuses = json!([
            {"name": "app", "ready": true, "restartCount": 0, "image": "x", "imageID": "", "containerID": "containerd://aaa", "state": {"running": {}}},
            {"name": "sidecar", "ready": false, "restartCount": 0, "image": "x", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
        ]);
        let PodState::Ready(target) = classify(&pod("Running", statuses.clone()), None) else { panic!("not ready") };
        assert_eq!(target.node, "node-1");
        assert_eq!(target.containers, [("app".to_string(), "containerd://aaa".to_string())]);
        assert!(matches!(classify(&pod("Running", statuses.clone()), Some("sidecar")), PodState::Waiting(_)));
        let PodState::Unsuitable(why) = classify(&pod("Running", statuses), Some("db")) else { panic!() };
        assert_eq!(why, "has no container \"db\" (it has: app, sidecar)");
        let pending = json!([{"name": "app", "ready": false, "restartCount": 0, "image": "x", "imageID": "", "state": {"waiting": {"reason": "ContainerCreating"}}}]);
        assert_eq!(classify(&pod("Pending", pending), None), PodState::Waiting("Pending: ContainerCreating".into()));
    }
}
