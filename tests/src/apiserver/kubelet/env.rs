//! A container's environment, as the kubelet and the runtime build it: the
//! runtime's defaults, then the image's, then the pod spec's `env` with
//! `$(VAR)` references and `fieldRef`s resolved. Pure: the same pod gives the
//! same environment, so it is tested without starting anything.

#![forbid(unsafe_code)]

use serde_json::Value;

use super::images::Image;
use crate::apiserver::store::name_of;

/// The PATH of a container whose image sets none (containerd's default).
pub(super) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Expands `$(VAR)` from the container's environment; `$$(` escapes.
/// An unknown variable stays as written, as Kubernetes leaves it.
pub(super) fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(end) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &tail[2..2 + end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..3 + end]),
            }
            rest = &tail[3 + end..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The value of a `valueFrom.fieldRef`: a field of the pod, or one of the
/// status fields the kubelet knows before it writes them.
fn field_ref(pod: &Value, pod_ip: &str, path: &str) -> Option<String> {
    if let Some(key) = path.strip_prefix("metadata.labels['").and_then(|p| p.strip_suffix("']")) {
        return pod.pointer("/metadata/labels").and_then(|l| l.get(key)).and_then(Value::as_str).map(String::from);
    }
    if let Some(key) = path.strip_prefix("metadata.annotations['").and_then(|p| p.strip_suffix("']")) {
        return pod.pointer("/metadata/annotations").and_then(|l| l.get(key)).and_then(Value::as_str).map(String::from);
    }
    match path {
        "status.podIP" => Some(pod_ip.to_string()),
        "status.hostIP" => Some("127.0.0.1".into()),
        _ => pod.pointer(&format!("/{}", path.replace('.', "/"))).and_then(Value::as_str).map(String::from),
    }
}

/// The environment of container `spec` in `pod`, in order: a later entry of
/// the same name wins, and `$(VAR)` sees only the entries before it.
/// Sources this kubelet cannot resolve (secrets, config maps) are left out.
pub(super) fn container_env(pod: &Value, pod_ip: &str, spec: &Value, image: &Image) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        ("HOSTNAME".to_string(), name_of(pod).to_string()),
        ("HOME".to_string(), "/root".to_string()),
    ];
    env.extend(image.env.iter().cloned());
    for e in spec["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            Some(expand(v, &env))
        } else if let Some(path) = e.pointer("/valueFrom/fieldRef/fieldPath").and_then(Value::as_str) {
            field_ref(pod, pod_ip, path)
        } else if e.get("value").is_none() && e.get("valueFrom").is_none() {
            Some(String::new())
        } else {
            None
        };
        if let Some(v) = value {
            env.push((name, v));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn env_expansion() {
        let env = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand("x$(A)y$(B)$$(A)", &env), "x1y$(B)$(A)");
    }

    #[test]
    fn expansion_leaves_other_dollars_alone() {
        let env = vars(&[("A", "1"), ("A", "2")]);
        assert_eq!(expand("$(A)", &env), "2", "the last definition wins");
        assert_eq!(expand("cost: 5$", &env), "cost: 5$");
        assert_eq!(expand("$HOME and ${A}", &env), "$HOME and ${A}");
        assert_eq!(expand("$(A", &env), "$(A", "unterminated");
        assert_eq!(expand("$$", &env), "$");
        assert_eq!(expand("$(A)$(A)", &env), "22");
        assert_eq!(expand("", &env), "");
    }

    #[test]
    fn environment_layers_defaults_image_and_spec() {
        let pod = json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}, "annotations": {"team": "blue"}},
            "spec": {"nodeName": "node-1"},
        });
        let image = Image::host().with_env("LANG", "C.UTF-8").with_env("PATH", "/app/bin");
        let spec = json!({"name": "web", "env": [
            {"name": "GREETING", "value": "hello $(HOSTNAME) in $(LANG)"},
            {"name": "LATER", "value": "$(AFTER)"},
            {"name": "AFTER", "value": "x"},
            {"name": "EMPTY"},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['team']"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "MISSING", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['nope']"}}},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ]});
        let env = container_env(&pod, "127.1.0.7", &spec, &image);
        let want = vars(&[
            ("PATH", DEFAULT_PATH),
            ("HOSTNAME", "web-1"),
            ("HOME", "/root"),
            ("LANG", "C.UTF-8"),
            ("PATH", "/app/bin"),
            ("GREETING", "hello web-1 in C.UTF-8"),
            ("LATER", "$(AFTER)"),
            ("AFTER", "x"),
            ("EMPTY", ""),
            ("NS", "shop"),
            ("NODE", "node-1"),
            ("APP", "web"),
            ("TEAM", "blue"),
            ("POD_IP", "127.1.0.7"),
            ("HOST_IP", "127.0.0.1"),
        ]);
        assert_eq!(env, want);
    }
}
