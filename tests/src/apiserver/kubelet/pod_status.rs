//! The pod `status` the kubelet writes, built from the supervisor's state:
//! phase, conditions, and one status per container, shaped as a real kubelet
//! writes them (kubectl's columns and kube-rs clients read these fields).
//! Pure: the time is passed in, so the same state gives the same JSON.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::images::{image_id, normalize_image};
use super::state::{CState, Kind, Phase, State};

/// Pod conditions in the order a kubelet lists them.
const CONDITIONS: [&str; 5] = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"];

/// The pod's conditions over time: a condition's `lastTransitionTime` moves
/// only when its value changes, so it must outlive one status.
#[derive(Debug, Default)]
pub(super) struct Conditions(BTreeMap<&'static str, (bool, String)>);

impl Conditions {
    fn set(&mut self, kind: &'static str, value: bool, now: &str) {
        let entry = self.0.entry(kind).or_insert((value, now.to_string()));
        if entry.0 != value {
            *entry = (value, now.to_string());
        }
    }
}

/// What the status is made of, borrowed from the supervisor.
pub(super) struct PodView<'a> {
    pub(super) phase: Phase,
    pub(super) containers: &'a [CState],
    /// Every init container has succeeded (or there are none).
    pub(super) initialized: bool,
    pub(super) host_ip: &'a str,
    pub(super) pod_ip: &'a str,
    pub(super) start_time: &'a str,
    pub(super) qos_class: &'a str,
    /// Why the pod failed as a whole (`DeadlineExceeded`) and how to say it.
    pub(super) reason: Option<&'a (String, String)>,
}

/// The pod status at `now`; `conditions` remembers transition times between calls.
pub(super) fn pod_status(pod: &PodView<'_>, conditions: &mut Conditions, now: &str) -> Value {
    let regular: Vec<&CState> = pod.containers.iter().filter(|c| c.kind == Kind::Regular).collect();
    let all_ready = !regular.is_empty() && regular.iter().all(|c| c.running()) && !pod.phase.terminal();
    conditions.set(
        "PodReadyToStartContainers",
        !pod.phase.terminal() || pod.containers.iter().any(CState::running),
        now,
    );
    conditions.set("Initialized", pod.initialized, now);
    conditions.set("Ready", all_ready, now);
    conditions.set("ContainersReady", all_ready, now);
    conditions.set("PodScheduled", true, now);
    let conditions: Vec<Value> = CONDITIONS
        .iter()
        .filter_map(|t| conditions.0.get(t).map(|(v, at)| (t, v, at)))
        .map(|(t, v, at)| {
            let mut c = json!({"type": t, "status": if *v { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": at});
            if !*v && (*t == "Ready" || *t == "ContainersReady") {
                if pod.phase.terminal() {
                    c["reason"] = json!("PodCompleted");
                } else {
                    let not_ready: Vec<&str> = regular.iter().filter(|c| !c.running()).map(|c| c.name()).collect();
                    c["reason"] = json!("ContainersNotReady");
                    c["message"] = json!(format!("containers with unready status: [{}]", not_ready.join(" ")));
                }
            }
            c
        })
        .collect();
    let mut st = json!({
        "phase": pod.phase.as_str(),
        "conditions": conditions,
        "hostIP": pod.host_ip,
        "hostIPs": [{"ip": pod.host_ip}],
        "podIP": pod.pod_ip,
        "podIPs": [{"ip": pod.pod_ip}],
        "startTime": pod.start_time,
        "containerStatuses": container_statuses(Kind::Regular, pod.containers),
        "qosClass": pod.qos_class,
    });
    if pod.containers.iter().any(|c| c.kind == Kind::Init) {
        st["initContainerStatuses"] = json!(container_statuses(Kind::Init, pod.containers));
    }
    if pod.containers.iter().any(|c| c.kind == Kind::Ephemeral) {
        st["ephemeralContainerStatuses"] = json!(container_statuses(Kind::Ephemeral, pod.containers));
    }
    if let Some((reason, message)) = pod.reason {
        st["reason"] = json!(reason);
        st["message"] = json!(message);
    }
    st
}

/// The statuses of the containers of one kind, in spec order.
fn container_statuses(kind: Kind, containers: &[CState]) -> Vec<Value> {
    containers
        .iter()
        .filter(|c| c.kind == kind)
        .map(|c| {
            let mut s = json!({
                "name": c.name(),
                "state": state_json(&c.state, c.id.as_deref()),
                "lastState": c.last.as_ref().map_or(json!({}), |e| state_json(&State::Terminated(e.clone()), None)),
                "ready": c.running() && kind != Kind::Ephemeral,
                "restartCount": c.restarts,
                "image": normalize_image(c.image()),
                "imageID": if c.ever_started { image_id(c.image()) } else { String::new() },
            });
            if let Some(id) = &c.id {
                s["containerID"] = json!(format!("containerd://{id}"));
            }
            // Ephemeral containers take no probes and never count as ready or started.
            if kind != Kind::Ephemeral {
                s["started"] = json!(c.running());
            }
            s
        })
        .collect()
}

/// One `state` or `lastState` object; a terminated one names the container
/// ID it ended as (`id`), since the current one may be a later run's.
fn state_json(s: &State, id: Option<&str>) -> Value {
    match s {
        State::Waiting { reason, message } => {
            let mut w = json!({"reason": reason});
            if let Some(m) = message {
                w["message"] = json!(m);
            }
            json!({"waiting": w})
        }
        State::Running { started } => json!({"running": {"startedAt": started}}),
        State::Terminated(e) => {
            let mut t =
                json!({"exitCode": e.code, "reason": e.reason, "startedAt": e.started, "finishedAt": e.finished});
            if let Some(sig) = e.signal {
                t["signal"] = json!(sig);
            }
            if let Some(m) = &e.message {
                t["message"] = json!(m);
            }
            if let Some(id) = id {
                t["containerID"] = json!(format!("containerd://{id}"));
            }
            json!({"terminated": t})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::ExitInfo;
    use super::*;

    fn container(name: &str, kind: Kind, state: State) -> CState {
        let mut c = CState::waiting(json!({"name": name, "image": "nginx"}), kind, "ContainerCreating");
        if matches!(state, State::Running { .. }) {
            c.id = Some("c0ffee".into());
            c.ever_started = true;
        }
        c.state = state;
        c
    }

    fn running(name: &str, kind: Kind) -> CState {
        container(name, kind, State::Running { started: "t0".into() })
    }

    fn view<'a>(phase: Phase, containers: &'a [CState]) -> PodView<'a> {
        PodView {
            phase,
            containers,
            initialized: true,
            host_ip: "127.0.0.1",
            pod_ip: "127.1.0.1",
            start_time: "t0",
            qos_class: "BestEffort",
            reason: None,
        }
    }

    fn condition<'a>(st: &'a Value, kind: &str) -> &'a Value {
        st["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == kind)).expect("condition listed")
    }

    #[test]
    fn running_pod_is_ready() {
        let cs = [running("web", Kind::Regular)];
        let st = pod_status(&view(Phase::Running, &cs), &mut Conditions::default(), "t1");
        assert_eq!(st["phase"], "Running");
        assert_eq!((st["podIP"].as_str(), st["hostIPs"][0]["ip"].as_str()), (Some("127.1.0.1"), Some("127.0.0.1")));
        let types: Vec<&str> =
            st["conditions"].as_array().expect("list").iter().filter_map(|c| c["type"].as_str()).collect();
        assert_eq!(types, CONDITIONS);
        assert!(st["conditions"].as_array().expect("list").iter().all(|c| c["status"] == "True"));
        let c = &st["containerStatuses"][0];
        assert_eq!(c["name"], "web");
        assert_eq!((c["ready"].as_bool(), c["started"].as_bool()), (Some(true), Some(true)));
        assert_eq!(c["state"], json!({"running": {"startedAt": "t0"}}));
        assert_eq!(c["lastState"], json!({}));
        assert_eq!(c["containerID"], "containerd://c0ffee");
        assert_eq!(c["image"], "docker.io/library/nginx:latest");
        assert!(c["imageID"].as_str().is_some_and(|id| id.starts_with("docker.io/library/nginx@sha256:")));
        assert!(st.get("initContainerStatuses").is_none() && st.get("ephemeralContainerStatuses").is_none());
    }

    #[test]
    fn waiting_containers_are_named_in_ready_conditions() {
        let waiting = State::Waiting { reason: "ErrImagePull".into(), message: Some("not found".into()) };
        let crashed = State::Waiting { reason: "CrashLoopBackOff".into(), message: None };
        let cs = [
            container("web", Kind::Regular, waiting),
            running("side", Kind::Regular),
            container("db", Kind::Regular, crashed),
        ];
        let st = pod_status(&view(Phase::Pending, &cs), &mut Conditions::default(), "t1");
        for kind in ["Ready", "ContainersReady"] {
            let c = condition(&st, kind);
            assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some("ContainersNotReady")));
            assert_eq!(c["message"], "containers with unready status: [web db]");
        }
        assert_eq!(condition(&st, "PodReadyToStartContainers")["status"], "True");
        let web = &st["containerStatuses"][0];
        assert_eq!(web["state"], json!({"waiting": {"reason": "ErrImagePull", "message": "not found"}}));
        assert_eq!((web["ready"].as_bool(), web["imageID"].as_str()), (Some(false), Some("")));
        assert!(web.get("containerID").is_none());
    }

    #[test]
    fn finished_pods_say_completed() {
        let mut cs = [container(
            "job",
            Kind::Regular,
            State::Terminated(ExitInfo::ended(Some(0), None, "t0".into(), "t1".into())),
        )];
        cs[0].id = Some("feed".into());
        let reason = ("DeadlineExceeded".to_string(), "too long".to_string());
        let st = pod_status(
            &PodView { reason: Some(&reason), ..view(Phase::Succeeded, &cs) },
            &mut Conditions::default(),
            "t2",
        );
        let ready = condition(&st, "Ready");
        assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("PodCompleted")));
        assert!(ready.get("message").is_none());
        assert_eq!(condition(&st, "PodReadyToStartContainers")["status"], "False");
        assert_eq!(
            st["containerStatuses"][0]["state"],
            json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": "t0", "finishedAt": "t1", "containerID": "containerd://feed"}})
        );
        assert_eq!((st["reason"].as_str(), st["message"].as_str()), (Some("DeadlineExceeded"), Some("too long")));
    }

    #[test]
    fn transition_times_move_only_on_change() {
        let mut conditions = Conditions::default();
        let waiting =
            [container("web", Kind::Regular, State::Waiting { reason: "ContainerCreating".into(), message: None })];
        let up = [running("web", Kind::Regular)];
        let at = |st: &Value, kind: &str| condition(st, kind)["lastTransitionTime"].as_str().map(String::from);
        let st = pod_status(&view(Phase::Pending, &waiting), &mut conditions, "t1");
        assert_eq!(at(&st, "Ready").as_deref(), Some("t1"));
        let st = pod_status(&view(Phase::Pending, &waiting), &mut conditions, "t2");
        assert_eq!(at(&st, "Ready").as_deref(), Some("t1"), "still not ready: no transition");
        let st = pod_status(&view(Phase::Running, &up), &mut conditions, "t3");
        assert_eq!(at(&st, "Ready").as_deref(), Some("t3"));
        assert_eq!(at(&st, "PodScheduled").as_deref(), Some("t1"));
    }

    #[test]
    fn init_and_ephemeral_containers_have_lists_of_their_own() {
        let mut init = container(
            "setup",
            Kind::Init,
            State::Terminated(ExitInfo::ended(None, Some(15), "t0".into(), "t1".into())),
        );
        init.last = Some(ExitInfo::start_error("no such file".into(), "t0".into()));
        init.restarts = 1;
        let cs = [
            init,
            container("web", Kind::Regular, State::Waiting { reason: "PodInitializing".into(), message: None }),
            running("debug", Kind::Ephemeral),
        ];
        let st =
            pod_status(&PodView { initialized: false, ..view(Phase::Pending, &cs) }, &mut Conditions::default(), "t2");
        assert_eq!(condition(&st, "Initialized")["status"], "False");
        let setup = &st["initContainerStatuses"][0];
        assert_eq!(setup["state"]["terminated"]["exitCode"], 143);
        assert_eq!(setup["state"]["terminated"]["signal"], 15);
        assert_eq!(setup["lastState"]["terminated"]["message"], "no such file");
        assert!(setup["lastState"]["terminated"].get("containerID").is_none(), "an earlier run's ID is not kept");
        assert_eq!(setup["restartCount"], 1);
        let debug = &st["ephemeralContainerStatuses"][0];
        assert_eq!(debug["ready"], false, "ephemeral containers are never ready");
        assert!(debug.get("started").is_none());
        assert_eq!(st["containerStatuses"].as_array().map(Vec::len), Some(1));
    }
}
