//! What the supervisor knows about a pod and its containers, as plain data:
//! each container's kind, state, last exit and restarts, and the pod's phase.
//! No I/O here, so that the status written from it can be built and tested
//! without processes.

#![forbid(unsafe_code)]

use std::time::Instant;

use serde_json::Value;

/// How a container's main process ended.
#[derive(Debug, Clone)]
pub struct ExitInfo {
    pub code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started: String,
    pub finished: String,
}

impl ExitInfo {
    /// A process that ended, as runtimes report it: its exit code, or 128+N
    /// and the signal if signal N killed it; -1 if neither is known (the wait failed).
    pub(super) fn ended(code: Option<i32>, signal: Option<i32>, started: String, finished: String) -> Self {
        let (code, signal) = match (code, signal) {
            (Some(c), _) => (c, None),
            (None, Some(sig)) => (128 + sig, Some(sig)),
            (None, None) => (-1, None),
        };
        let reason = if code == 0 { "Completed" } else { "Error" };
        ExitInfo { code, signal, reason: reason.into(), message: None, started, finished }
    }

    /// A container whose process never ran: runc's exit code 128 and its message.
    pub(super) fn start_error(message: String, at: String) -> Self {
        ExitInfo {
            code: 128,
            signal: None,
            reason: "StartError".into(),
            message: Some(message),
            started: at.clone(),
            finished: at,
        }
    }
}

/// Which list of the pod spec a container comes from; it decides when the
/// container runs, whether it restarts, and where its status goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Init,
    Regular,
    Ephemeral,
}

#[derive(Debug, Clone)]
pub(super) enum State {
    Waiting { reason: String, message: Option<String> },
    Running { started: String },
    Terminated(ExitInfo),
}

/// One container of the pod spec, through all its runs.
pub(super) struct CState {
    pub(super) spec: Value,
    pub(super) kind: Kind,
    pub(super) state: State,
    /// How the previous run ended (`lastState`).
    pub(super) last: Option<ExitInfo>,
    pub(super) restarts: u32,
    /// The current (or last) run's container ID.
    pub(super) id: Option<String>,
    /// When a crashed container is started again.
    pub(super) restart_at: Option<Instant>,
    /// Whether it ever ran: only then does the status name an image ID.
    pub(super) ever_started: bool,
}

impl CState {
    /// A container not started yet, waiting for `reason`.
    pub(super) fn waiting(spec: Value, kind: Kind, reason: &str) -> Self {
        CState {
            spec,
            kind,
            state: State::Waiting { reason: reason.into(), message: None },
            last: None,
            restarts: 0,
            id: None,
            restart_at: None,
            ever_started: false,
        }
    }

    pub(super) fn name(&self) -> &str {
        self.spec["name"].as_str().unwrap_or_default()
    }

    pub(super) fn image(&self) -> &str {
        self.spec["image"].as_str().unwrap_or_default()
    }

    pub(super) fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    pub(super) fn terminated(&self) -> Option<&ExitInfo> {
        match &self.state {
            State::Terminated(e) => Some(e),
            _ => None,
        }
    }

    /// How events name the container (`involvedObject.fieldPath`).
    pub(super) fn field_path(&self) -> String {
        let field = match self.kind {
            Kind::Init => "initContainers",
            Kind::Regular => "containers",
            Kind::Ephemeral => "ephemeralContainers",
        };
        format!("spec.{field}{{{}}}", self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    /// A pod in a terminal phase never runs a container again.
    pub(super) fn terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ended(code: Option<i32>, signal: Option<i32>) -> ExitInfo {
        ExitInfo::ended(code, signal, "t0".into(), "t1".into())
    }

    #[test]
    fn exits_read_as_runtimes_report_them() {
        let ok = ended(Some(0), None);
        assert_eq!((ok.code, ok.signal, ok.reason.as_str()), (0, None, "Completed"));
        let failed = ended(Some(3), None);
        assert_eq!((failed.code, failed.signal, failed.reason.as_str()), (3, None, "Error"));
        let killed = ended(None, Some(libc::SIGKILL));
        assert_eq!((killed.code, killed.signal, killed.reason.as_str()), (137, Some(9), "Error"));
        let unknown = ended(None, None);
        assert_eq!((unknown.code, unknown.reason.as_str()), (-1, "Error"));
        assert_eq!((ok.started.as_str(), ok.finished.as_str()), ("t0", "t1"));
    }

    #[test]
    fn start_errors_end_where_they_begin() {
        let e = ExitInfo::start_error("no such file".into(), "t0".into());
        assert_eq!((e.code, e.reason.as_str(), e.message.as_deref()), (128, "StartError", Some("no such file")));
        assert_eq!((e.started.as_str(), e.finished.as_str()), ("t0", "t0"));
    }

    #[test]
    fn field_paths_name_the_spec_list() {
        let spec = json!({"name": "web", "image": "nginx"});
        assert_eq!(
            CState::waiting(spec.clone(), Kind::Init, "ContainerCreating").field_path(),
            "spec.initContainers{web}"
        );
        assert_eq!(
            CState::waiting(spec.clone(), Kind::Regular, "ContainerCreating").field_path(),
            "spec.containers{web}"
        );
        assert_eq!(
            CState::waiting(spec, Kind::Ephemeral, "ContainerCreating").field_path(),
            "spec.ephemeralContainers{web}"
        );
    }

    #[test]
    fn only_succeeded_and_failed_are_terminal() {
        assert!(!Phase::Pending.terminal());
        assert!(!Phase::Running.terminal());
        assert!(Phase::Succeeded.terminal());
        assert!(Phase::Failed.terminal());
        assert_eq!(Phase::Succeeded.as_str(), "Succeeded");
    }
}
