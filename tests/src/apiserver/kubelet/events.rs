//! core/v1 Events as a kubelet (or the scheduler) records them: `kubectl
//! describe` and `kubectl get events` show them, and the end-to-end tests
//! check their reasons and messages (a failed image pull, say).

#![forbid(unsafe_code)]

use serde_json::{json, Value};

use crate::apiserver::resources::{by_name, ResourceDef};
use crate::apiserver::store::{name_of, namespace_of, random_bytes, Store};
use crate::apiserver::time;

fn events() -> &'static ResourceDef {
    by_name("", "events").expect("events is a built-in resource")
}

/// What an event says, apart from the object it is about.
struct Report<'a> {
    kind: &'a str,
    reason: &'a str,
    message: &'a str,
    component: &'a str,
    field_path: Option<&'a str>,
}

/// Creates a core/v1 Event about `obj`, as kubelet or scheduler would.
pub fn record_event(
    store: &Store,
    obj: &Value,
    kind: &str,
    reason: &str,
    message: &str,
    component: &str,
    field_path: Option<&str>,
) {
    let suffix: String = random_bytes::<8>().iter().map(|b| format!("{b:02x}")).collect();
    let report = Report { kind, reason, message, component, field_path };
    if let Err(e) = store.create(events(), event_object(obj, &report, &suffix, &time::now())) {
        log::debug!("event not recorded: {e}");
    }
}

/// The Event object, named `<object name>.<suffix>` as clients name theirs;
/// a kubelet's event also says which node it comes from.
fn event_object(obj: &Value, r: &Report<'_>, suffix: &str, now: &str) -> Value {
    let node = obj.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default();
    let mut involved = json!({
        "kind": obj["kind"],
        "namespace": namespace_of(obj),
        "name": name_of(obj),
        "uid": obj["metadata"]["uid"],
        "apiVersion": obj["apiVersion"],
        "resourceVersion": obj["metadata"]["resourceVersion"],
    });
    if let Some(fp) = r.field_path {
        involved["fieldPath"] = json!(fp);
    }
    let mut source = json!({"component": r.component});
    if r.component == "kubelet" {
        source["host"] = json!(node);
    }
    json!({
        "metadata": {"name": format!("{}.{suffix}", name_of(obj)), "namespace": namespace_of(obj)},
        "involvedObject": involved,
        "reason": r.reason,
        "message": r.message,
        "source": source,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "type": r.kind,
        "eventTime": null,
        "reportingComponent": r.component,
        "reportingInstance": if r.component == "kubelet" { node } else { "" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": "7"},
            "spec": {"nodeName": "node-1"},
        })
    }

    #[test]
    fn kubelet_events_name_node_and_container() {
        let r = Report {
            kind: "Normal",
            reason: "Started",
            message: "Started container web",
            component: "kubelet",
            field_path: Some("spec.containers{web}"),
        };
        let ev = event_object(&pod(), &r, "00ff", "t0");
        assert_eq!(ev["metadata"], json!({"name": "web.00ff", "namespace": "shop"}));
        assert_eq!(
            ev["involvedObject"],
            json!({"kind": "Pod", "namespace": "shop", "name": "web", "uid": "u1", "apiVersion": "v1", "resourceVersion": "7", "fieldPath": "spec.containers{web}"})
        );
        assert_eq!(ev["source"], json!({"component": "kubelet", "host": "node-1"}));
        assert_eq!((ev["reportingInstance"].as_str(), ev["type"].as_str()), (Some("node-1"), Some("Normal")));
        assert_eq!(
            (ev["firstTimestamp"].as_str(), ev["lastTimestamp"].as_str(), ev["count"].as_u64()),
            (Some("t0"), Some("t0"), Some(1))
        );
    }

    #[test]
    fn other_components_name_no_node() {
        let r = Report {
            kind: "Normal",
            reason: "Scheduled",
            message: "assigned",
            component: "default-scheduler",
            field_path: None,
        };
        let ev = event_object(&pod(), &r, "01", "t0");
        assert_eq!(ev["source"], json!({"component": "default-scheduler"}));
        assert_eq!(ev["reportingInstance"], "");
        assert!(ev["involvedObject"].get("fieldPath").is_none());
    }
}
