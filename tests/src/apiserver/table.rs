//! Server-side printing: `meta.k8s.io/v1` Tables, which `kubectl get` asks for.

use serde_json::{json, Value};

use super::resources::ResourceDef;
use super::time::{human_age, parse_rfc3339};

/// How much of each object a Table row carries (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

fn col(name: &str, ty: &str, format: &str, priority: u8, description: &str) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

fn columns(res: &ResourceDef) -> Vec<Value> {
    let name = col("Name", "string", "name", 0, "Name must be unique within a namespace.");
    let age = col(
        "Age",
        "string",
        "",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    match (res.group, res.plural) {
        ("", "pods") => vec![
            name,
            col("Ready", "string", "", 0, "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", "", 0, "The aggregate status of the containers in this pod."),
            col("Restarts", "string", "", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            age,
            col("IP", "string", "", 1, "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
            col("Node", "string", "", 1, "NodeName is a request to schedule this pod onto a specific node."),
            col("Nominated Node", "string", "", 1, "nominatedNodeName is set only when this pod preempts other pods on the node."),
            col("Readiness Gates", "string", "", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
        ],
        ("", "nodes") => vec![
            name,
            col("Status", "string", "", 0, "The status of the node"),
            col("Roles", "string", "", 0, "The roles of the node"),
            age,
            col("Version", "string", "", 0, "Kubelet Version reported by the node."),
            col("Internal-IP", "string", "", 1, "List of addresses reachable to the node."),
        ],
        ("", "namespaces") => vec![name, col("Status", "string", "", 0, "The status of the namespace"), age],
        _ => vec![name, age],
    }
}

fn age_of(obj: &Value) -> String {
    obj.pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(parse_rfc3339)
        .map_or("<unknown>".into(), human_age)
}

/// The STATUS column of `kubectl get pods`, following the real printer's order of precedence.
pub fn pod_status_reason(pod: &Value) -> String {
    let st = &pod["status"];
    let mut reason = st["reason"].as_str().or(st["phase"].as_str()).unwrap_or("Pending").to_string();
    let inits = st["initContainerStatuses"].as_array().cloned().unwrap_or_default();
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        if c.pointer("/state/terminated/exitCode") == Some(&json!(0)) {
            continue;
        }
        initializing = true;
        reason = if let Some(r) = c.pointer("/state/terminated/reason").and_then(Value::as_str) {
            format!("Init:{r}")
        } else if let Some(r) =
            c.pointer("/state/waiting/reason").and_then(Value::as_str).filter(|r| *r != "PodInitializing")
        {
            format!("Init:{r}")
        } else {
            format!("Init:{i}/{}", inits.len())
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in st["containerStatuses"].as_array().into_iter().flatten().rev() {
            if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
                reason = r.to_string();
            } else if let Some(r) = c.pointer("/state/terminated/reason").and_then(Value::as_str) {
                reason = r.to_string();
            } else if c.pointer("/state/terminated").is_some() {
                reason = match c.pointer("/state/terminated/signal").and_then(Value::as_i64) {
                    Some(s) => format!("Signal:{s}"),
                    None => format!(
                        "ExitCode:{}",
                        c.pointer("/state/terminated/exitCode").and_then(Value::as_i64).unwrap_or(0)
                    ),
                };
            } else if c["ready"] == json!(true) && c.pointer("/state/running").is_some() {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
        reason = "Terminating".into();
    }
    reason
}

fn cells(res: &ResourceDef, obj: &Value) -> Vec<Value> {
    let name = json!(obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default());
    match (res.group, res.plural) {
        ("", "pods") => {
            let statuses =
                obj.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
            let total = obj.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
            let ready = statuses.iter().filter(|c| c["ready"] == json!(true)).count();
            let restarts: i64 = statuses.iter().filter_map(|c| c["restartCount"].as_i64()).sum();
            let s = |p: &str| json!(obj.pointer(p).and_then(Value::as_str).unwrap_or("<none>"));
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status_reason(obj)),
                json!(restarts.to_string()),
                json!(age_of(obj)),
                s("/status/podIP"),
                s("/spec/nodeName"),
                s("/status/nominatedNodeName"),
                json!("<none>"),
            ]
        }
        ("", "nodes") => {
            let ready = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready");
            let status = if ready.is_some_and(|c| c["status"] == "True") { "Ready" } else { "NotReady" };
            let roles: Vec<String> = obj
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(String::from))
                .collect();
            let roles = if roles.is_empty() { "<none>".to_string() } else { roles.join(",") };
            let ip = obj
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|a| a["type"] == "InternalIP")
                .and_then(|a| a["address"].as_str())
                .unwrap_or("<none>");
            vec![
                name,
                json!(status),
                json!(roles),
                json!(age_of(obj)),
                json!(obj.pointer("/status/nodeInfo/kubeletVersion").and_then(Value::as_str).unwrap_or_default()),
                json!(ip),
            ]
        }
        ("", "namespaces") => vec![
            name,
            json!(obj.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Active")),
            json!(age_of(obj)),
        ],
        _ => vec![name, json!(age_of(obj))],
    }
}

fn row(res: &ResourceDef, obj: &Value, include: Include) -> Value {
    let mut r = json!({"cells": cells(res, obj)});
    match include {
        Include::None => {}
        Include::Metadata => r["object"] = partial_metadata(obj),
        Include::Object => r["object"] = obj.clone(),
    }
    r
}

/// A `PartialObjectMetadata` of an object.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

/// A Table of objects; `with_columns` is false for watch events after the first.
pub fn table(res: &ResourceDef, objs: &[Value], rv: &str, include: Include, with_columns: bool) -> Value {
    let rows: Vec<Value> = objs.iter().map(|o| row(res, o, include)).collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": if with_columns { columns(res) } else { vec![] },
        "rows": rows,
    })
}
