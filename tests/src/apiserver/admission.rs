//! What happens to a pod between the request and storage: defaulting,
//! validation, and Pod Security Admission.

use serde_json::{json, Value};

use super::status::{ApiError, FieldError};

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used \
for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
'-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for \
validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Validates `metadata.name` of any object (names are DNS-1123 subdomains for the types we serve).
pub fn validate_name(kind: &str, obj: &Value) -> Result<(), ApiError> {
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        return Err(ApiError::invalid(
            kind,
            "",
            &[FieldError::required("metadata.name", "name or generateName is required")],
        ));
    }
    let ok = if kind == "Namespace" { is_dns1123_label(name) } else { is_dns1123_subdomain(name) };
    if !ok {
        let msg = if kind == "Namespace" { DNS1123_LABEL_MSG } else { DNS1123_SUBDOMAIN_MSG };
        return Err(ApiError::invalid(kind, name, &[FieldError::invalid("metadata.name", &json!(name), msg)]));
    }
    Ok(())
}

fn containers(spec: &Value, field: &str) -> Vec<Value> {
    spec.get(field).and_then(Value::as_array).cloned().unwrap_or_default()
}

/// Fills the defaults the API server sets on a new pod.
pub fn default_pod(pod: &mut Value) {
    let spec = &mut pod["spec"];
    let defaults = [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("securityContext", json!({})),
        ("serviceAccountName", json!("default")),
        ("enableServiceLinks", json!(true)),
        ("priority", json!(0)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
    ];
    for (k, v) in defaults {
        if spec.get(k).is_none_or(Value::is_null) {
            spec[k] = v;
        }
    }
    for field in ["containers", "initContainers", "ephemeralContainers"] {
        if let Some(list) = spec.get_mut(field).and_then(Value::as_array_mut) {
            for c in list {
                default_container(c);
            }
        }
    }
    if pod.pointer("/status/phase").is_none() {
        pod["status"] = json!({"phase": "Pending", "qosClass": qos_class(&pod["spec"])});
    }
}

pub fn default_container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or_default();
    let untagged = !last.contains(':') && !image.contains('@');
    let policy = if untagged || image.ends_with(":latest") { "Always" } else { "IfNotPresent" };
    for (k, v) in [
        ("imagePullPolicy", json!(policy)),
        ("terminationMessagePath", json!("/dev/termination-log")),
        ("terminationMessagePolicy", json!("File")),
        ("resources", json!({})),
    ] {
        if c.get(k).is_none_or(Value::is_null) {
            c[k] = v;
        }
    }
}

/// BestEffort, Burstable or Guaranteed, from the containers' resources.
pub fn qos_class(spec: &Value) -> &'static str {
    let all: Vec<Value> = [containers(spec, "containers"), containers(spec, "initContainers")].concat();
    let (mut any, mut guaranteed) = (false, true);
    for c in &all {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|m| !m.is_empty()) || lim.is_some_and(|m| !m.is_empty()) {
            any = true;
        }
        let full = ["cpu", "memory"].iter().all(|r| {
            let l = lim.and_then(|m| m.get(*r));
            l.is_some() && req.and_then(|m| m.get(*r)).is_none_or(|q| Some(q) == l)
        });
        guaranteed &= full;
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn validate_containers(spec: &Value, field: &str, required: bool, errs: &mut Vec<FieldError>, seen: &mut Vec<String>) {
    let list = containers(spec, field);
    if list.is_empty() && required {
        errs.push(FieldError::required(&format!("spec.{field}"), ""));
    }
    for (i, c) in list.iter().enumerate() {
        let name = c["name"].as_str().unwrap_or_default();
        let path = format!("spec.{field}[{i}]");
        if name.is_empty() {
            errs.push(FieldError::required(&format!("{path}.name"), ""));
        } else if !is_dns1123_label(name) {
            errs.push(FieldError::invalid(&format!("{path}.name"), &json!(name), DNS1123_LABEL_MSG));
        } else if seen.iter().any(|s| s == name) {
            errs.push(FieldError::duplicate(&format!("{path}.name"), &json!(name)));
        } else {
            seen.push(name.to_string());
        }
        if c["image"].as_str().unwrap_or_default().trim().is_empty() {
            errs.push(FieldError::required(&format!("{path}.image"), ""));
        }
    }
}

/// Validates a new pod (the subset of ValidatePodCreate that clients trip over).
pub fn validate_pod(pod: &Value) -> Result<(), ApiError> {
    validate_name("Pod", pod)?;
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let spec = &pod["spec"];
    let mut errs = Vec::new();
    let mut seen = Vec::new();
    validate_containers(spec, "containers", true, &mut errs, &mut seen);
    validate_containers(spec, "initContainers", false, &mut errs, &mut seen);
    validate_containers(spec, "ephemeralContainers", false, &mut errs, &mut seen);
    if let Some(d) = spec.get("activeDeadlineSeconds").filter(|v| !v.is_null()) {
        if d.as_i64().is_none_or(|d| d <= 0) {
            errs.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                d,
                "must be between 1 and 2147483647, inclusive",
            ));
        }
    }
    let policy = spec["restartPolicy"].as_str().unwrap_or_default();
    if !["Always", "OnFailure", "Never"].contains(&policy) {
        errs.push(FieldError {
            reason: "FieldValueNotSupported",
            field: "spec.restartPolicy".into(),
            message: format!("Unsupported value: {policy:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
        });
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("Pod", name, &errs))
    }
}

/// Checks a pod update through the main resource: the spec is immutable but for a few fields.
pub fn validate_pod_update(old: &Value, new: &Value) -> Result<(), ApiError> {
    let strip = |spec: &Value| {
        let mut s = spec.clone();
        for field in ["containers", "initContainers"] {
            if let Some(list) = s.get_mut(field).and_then(Value::as_array_mut) {
                for c in list {
                    c["image"] = Value::Null;
                }
            }
        }
        if let Some(m) = s.as_object_mut() {
            for f in ["activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds", "schedulingGates"] {
                m.remove(f);
            }
        }
        s
    };
    if strip(&old["spec"]) != strip(&new["spec"]) {
        let name = new["metadata"]["name"].as_str().unwrap_or_default();
        return Err(ApiError::invalid(
            "Pod",
            name,
            &[FieldError::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`,\
                 `spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions \
                 to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was \
                 previously negative)",
            )],
        ));
    }
    validate_pod(new)
}

/// Checks an update through `pods/ephemeralcontainers`: existing ephemeral containers are immutable.
pub fn validate_ephemeral_update(old: &Value, new: &Value) -> Result<(), ApiError> {
    let name = new["metadata"]["name"].as_str().unwrap_or_default();
    let old_list = containers(&old["spec"], "ephemeralContainers");
    let new_list = containers(&new["spec"], "ephemeralContainers");
    for o in &old_list {
        let n = o["name"].as_str().unwrap_or_default();
        if !new_list.iter().any(|c| c == o) {
            return Err(ApiError::invalid(
                "Pod",
                name,
                &[FieldError::forbidden(
                    "spec.ephemeralContainers",
                    &format!("existing ephemeral containers {n:?} may not be changed"),
                )],
            ));
        }
    }
    validate_pod(new)
}

/// A Pod Security Standards level, from `pod-security.kubernetes.io/enforce`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn of_namespace(ns: &Value) -> (Level, String) {
        let labels = ns.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let level = match get("pod-security.kubernetes.io/enforce") {
            Some("baseline") => Level::Baseline,
            Some("restricted") => Level::Restricted,
            _ => Level::Privileged,
        };
        let version = get("pod-security.kubernetes.io/enforce-version").unwrap_or("latest").to_string();
        (level, version)
    }

    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

/// "container "a"" or "containers "a", "b"".
fn containers_phrase(names: &[String]) -> String {
    if names.len() == 1 {
        format!("container {}", quoted(names))
    } else {
        format!("containers {}", quoted(names))
    }
}

const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Pod Security Admission: the reasons a pod violates a level, in the order the
/// real checks run (their ids' order), each worded as the real checks word it.
pub fn pod_security_violations(pod: &Value, level: Level) -> Vec<String> {
    if level == Level::Privileged {
        return vec![];
    }
    let spec = &pod["spec"];
    let all: Vec<Value> =
        [containers(spec, "initContainers"), containers(spec, "containers"), containers(spec, "ephemeralContainers")]
            .concat();
    let name = |c: &Value| c["name"].as_str().unwrap_or_default().to_string();
    let sc = |c: &Value, f: &str| c.pointer(&format!("/securityContext/{f}")).cloned().unwrap_or(Value::Null);
    let psc = |f: &str| spec.pointer(&format!("/securityContext/{f}")).cloned().unwrap_or(Value::Null);
    let restricted = level == Level::Restricted;
    let mut out = Vec::new();

    // allowPrivilegeEscalation (restricted)
    if restricted {
        let bad: Vec<String> =
            all.iter().filter(|c| sc(c, "allowPrivilegeEscalation") != json!(false)).map(name).collect();
        if !bad.is_empty() {
            out.push(format!(
                "allowPrivilegeEscalation != false ({} must set securityContext.allowPrivilegeEscalation=false)",
                containers_phrase(&bad)
            ));
        }
    }
    // capabilities_baseline / capabilities_restricted
    let added = |c: &Value| -> Vec<String> {
        sc(c, "capabilities")["add"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    if restricted {
        let no_drop: Vec<String> = all
            .iter()
            .filter(|c| !sc(c, "capabilities")["drop"].as_array().is_some_and(|d| d.iter().any(|x| x == "ALL")))
            .map(name)
            .collect();
        let mut parts = Vec::new();
        if !no_drop.is_empty() {
            parts.push(format!("{} must set securityContext.capabilities.drop=[\"ALL\"]", containers_phrase(&no_drop)));
        }
        for c in &all {
            let bad: Vec<String> = added(c).into_iter().filter(|a| a != "NET_BIND_SERVICE").collect();
            if !bad.is_empty() {
                parts.push(format!(
                    "container {:?} must not include {} in securityContext.capabilities.add",
                    name(c),
                    quoted(&bad)
                ));
            }
        }
        if !parts.is_empty() {
            out.push(format!("unrestricted capabilities ({})", parts.join("; ")));
        }
    } else {
        let mut parts = Vec::new();
        for c in &all {
            let bad: Vec<String> = added(c).into_iter().filter(|a| !BASELINE_CAPS.contains(&a.as_str())).collect();
            if !bad.is_empty() {
                parts.push(format!(
                    "container {:?} must not include {} in securityContext.capabilities.add",
                    name(c),
                    quoted(&bad)
                ));
            }
        }
        if !parts.is_empty() {
            out.push(format!("non-default capabilities ({})", parts.join("; ")));
        }
    }
    // hostNamespaces
    let host: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|f| spec[**f] == json!(true))
        .map(|f| format!("{f}=true"))
        .collect();
    if !host.is_empty() {
        out.push(format!("host namespaces ({})", host.join(", ")));
    }
    // hostPathVolumes (baseline) / restrictedVolumes (restricted overrides it)
    let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    let host_paths: Vec<String> = volumes
        .iter()
        .filter(|v| v.get("hostPath").is_some_and(|h| !h.is_null()))
        .map(|v| v["name"].as_str().unwrap_or_default().to_string())
        .collect();
    if !host_paths.is_empty() && !restricted {
        let word = if host_paths.len() == 1 { "volume" } else { "volumes" };
        out.push(format!("hostPath volumes ({word} {})", quoted(&host_paths)));
    }
    // hostPorts
    let mut port_parts = Vec::new();
    for c in &all {
        let ports: Vec<String> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["hostPort"].as_i64().filter(|p| *p != 0))
            .map(|p| p.to_string())
            .collect();
        if !ports.is_empty() {
            let word = if ports.len() == 1 { "hostPort" } else { "hostPorts" };
            port_parts.push(format!("container {:?} uses {word} {}", name(c), ports.join(", ")));
        }
    }
    if !port_parts.is_empty() {
        out.push(format!("hostPort ({})", port_parts.join("; ")));
    }
    // privileged
    let privileged: Vec<String> = all.iter().filter(|c| sc(c, "privileged") == json!(true)).map(name).collect();
    if !privileged.is_empty() {
        out.push(format!(
            "privileged ({} must not set securityContext.privileged=true)",
            containers_phrase(&privileged)
        ));
    }
    // restrictedVolumes
    if restricted && !host_paths.is_empty() {
        let word = if host_paths.len() == 1 { "volume" } else { "volumes" };
        let verb = if host_paths.len() == 1 { "uses" } else { "use" };
        out.push(format!(
            "restricted volume types ({word} {} {verb} restricted volume type \"hostPath\")",
            quoted(&host_paths)
        ));
    }
    // runAsNonRoot
    if restricted && psc("runAsNonRoot") != json!(true) {
        let bad: Vec<String> = all.iter().filter(|c| sc(c, "runAsNonRoot") != json!(true)).map(name).collect();
        if !bad.is_empty() {
            let who = if bad.len() == 1 {
                format!("pod or container {}", quoted(&bad))
            } else {
                format!("pod or containers {}", quoted(&bad))
            };
            out.push(format!("runAsNonRoot != true ({who} must set securityContext.runAsNonRoot=true)"));
        }
    }
    // runAsUser
    if restricted {
        let mut bad = Vec::new();
        if psc("runAsUser") == json!(0) {
            bad.push("pod must not set runAsUser=0".to_string());
        }
        let cs: Vec<String> = all.iter().filter(|c| sc(c, "runAsUser") == json!(0)).map(name).collect();
        if !cs.is_empty() {
            bad.push(format!("{} must not set runAsUser=0", containers_phrase(&cs)));
        }
        if !bad.is_empty() {
            out.push(format!("runAsUser=0 ({})", bad.join("; ")));
        }
    }
    // seccompProfile_restricted
    if restricted {
        let pod_ok = matches!(psc("seccompProfile")["type"].as_str(), Some("RuntimeDefault" | "Localhost"));
        let bad: Vec<String> = all
            .iter()
            .filter(|c| {
                let t = sc(c, "seccompProfile")["type"].clone();
                if t.is_null() {
                    !pod_ok
                } else {
                    !matches!(t.as_str(), Some("RuntimeDefault" | "Localhost"))
                }
            })
            .map(name)
            .collect();
        if !bad.is_empty() {
            let who = if bad.len() == 1 {
                format!("pod or container {}", quoted(&bad))
            } else {
                format!("pod or containers {}", quoted(&bad))
            };
            out.push(format!("seccompProfile ({who} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"));
        }
    }
    out
}

/// The Forbidden answer for a pod that violates its namespace's enforced level.
pub fn check_pod_security(pod: &Value, namespace: &Value) -> Result<(), ApiError> {
    let (level, version) = Level::of_namespace(namespace);
    let violations = pod_security_violations(pod, level);
    if violations.is_empty() {
        return Ok(());
    }
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let why = format!("violates PodSecurity \"{}:{version}\": {}", level.name(), violations.join(", "));
    Err(ApiError::forbidden(
        super::resources::by_name("", "pods").unwrap_or(&super::resources::RESOURCES[2]),
        name,
        &why,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_message_matches_real_wording() {
        let pod = json!({"spec": {"hostPID": true, "containers": [{"name": "spy", "securityContext": {"privileged": true}}],
            "volumes": [{"name": "sys", "hostPath": {"path": "/sys"}}, {"name": "bpf", "hostPath": {"path": "/sys/fs/bpf"}}]}});
        assert_eq!(
            pod_security_violations(&pod, Level::Baseline),
            vec![
                "host namespaces (hostPID=true)".to_string(),
                "hostPath volumes (volumes \"sys\", \"bpf\")".to_string(),
                "privileged (container \"spy\" must not set securityContext.privileged=true)".to_string(),
            ]
        );
        assert!(pod_security_violations(&pod, Level::Privileged).is_empty());
    }
}
