//! What the plugin may do, checked before it does anything: one
//! SelfSubjectAccessReview per verb, so a missing permission is named
//! up front instead of surfacing half-way through a session.
//!
//! [`PERMISSIONS`] is the one list; `deploy/rbac.yaml` grants exactly it
//! (a test holds the two together).
//!
//! On top of those, one rule per target ([`TargetAccess`]): tlsspy shows a
//! pod's plaintext only to someone who could already read that pod's
//! memory, i.e. who may `create pods/exec` (or `pods/attach`) on it. The
//! spy pod itself is privileged, so without this check anyone allowed to
//! run spies could read every pod on a node.

#![forbid(unsafe_code)]

use std::collections::HashMap;

use anyhow::bail;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};

use super::targets::{PodState, PodTarget, TargetEvent, WorkloadKind};
use super::{MANAGED_BY, MANAGED_BY_LABEL};

/// Where the spy pods run unless `--spy-namespace` says otherwise: a
/// namespace of their own (deploy/rbac.yaml makes it), so that allowing
/// privileged pods there allows nothing in the targets' namespaces, and
/// `pods/attach` there reaches only spies.
pub const DEFAULT_SPY_NAMESPACE: &str = "tlsspy";

/// The pod subresources that already let their holder read a pod's
/// memory; holding `create` on either one is what [`TargetAccess`] asks.
pub const MEMORY_READERS: [&str; 2] = ["exec", "attach"];

/// Where a permission is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Where the target pods are (a ClusterRole in deploy/rbac.yaml, so
    /// `-A` and any `-n` work).
    Targets,
    /// In the spy namespace (a Role there in deploy/rbac.yaml).
    Spies,
    /// In every namespace, and only nice to have: peer names. Without it
    /// the names come from the targets' namespace, or not at all, and the
    /// session says so (not checked up front: it never stops a session).
    PeerNames,
}

#[derive(Clone, Copy, Debug)]
pub struct Permission {
    pub group: &'static str,
    pub resource: &'static str,
    /// "" or e.g. "attach".
    pub subresource: &'static str,
    pub verbs: &'static [&'static str],
    pub scope: Scope,
    /// Checked only when a target of this kind is named.
    pub only_for: Option<WorkloadKind>,
    /// What the plugin does with it, for the error message.
    pub why: &'static str,
}

const fn targets(group: &'static str, resource: &'static str, kind: WorkloadKind) -> Permission {
    Permission {
        group,
        resource,
        subresource: "",
        verbs: &["get"],
        scope: Scope::Targets,
        only_for: Some(kind),
        why: "to find a workload's pods",
    }
}

/// Every permission the plugin uses.
pub const PERMISSIONS: &[Permission] = &[
    Permission {
        group: "",
        resource: "pods",
        subresource: "",
        verbs: &["get", "list", "watch"],
        scope: Scope::Targets,
        only_for: None,
        why: "to find the target pods and follow them",
    },
    Permission {
        group: "",
        resource: "pods",
        subresource: "",
        verbs: &["get", "list", "watch", "create", "delete"],
        scope: Scope::Spies,
        only_for: None,
        why: "to run, watch and remove the spy pods",
    },
    Permission {
        group: "",
        resource: "pods",
        subresource: "attach",
        verbs: &["create", "get"],
        scope: Scope::Spies,
        only_for: None,
        why: "to talk to the spy pods",
    },
    targets("apps", "deployments", WorkloadKind::Deployment),
    targets("apps", "statefulsets", WorkloadKind::StatefulSet),
    targets("apps", "daemonsets", WorkloadKind::DaemonSet),
    targets("apps", "replicasets", WorkloadKind::ReplicaSet),
    targets("batch", "jobs", WorkloadKind::Job),
    peer_names("", "pods"),
    peer_names("", "services"),
    peer_names("discovery.k8s.io", "endpointslices"),
];

const fn peer_names(group: &'static str, resource: &'static str) -> Permission {
    Permission {
        group,
        resource,
        subresource: "",
        verbs: &["list", "watch"],
        scope: Scope::PeerNames,
        only_for: None,
        why: "to name peers by their pod or service",
    }
}

/// One denied check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub verb: &'static str,
    /// `pods/attach`, `deployments.apps`.
    pub resource: String,
    pub namespace: Option<String>,
    pub why: &'static str,
}

impl Missing {
    /// "create pods/attach in namespace "default"".
    fn what(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {} in namespace \"{ns}\"", self.verb, self.resource),
            None => format!("{} {} in all namespaces", self.verb, self.resource),
        }
    }
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.what(), self.why)
    }
}

/// Checks every permission the session needs. `target_ns` is `None` for -A.
pub async fn preflight(
    client: &Client,
    target_ns: Option<&str>,
    spy_ns: &str,
    kinds: &[WorkloadKind],
) -> anyhow::Result<()> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut checks = Vec::new();
    for permission in PERMISSIONS {
        if permission.only_for.is_some_and(|kind| !kinds.contains(&kind)) {
            continue;
        }
        let namespace = match permission.scope {
            Scope::Targets => target_ns,
            Scope::Spies => Some(spy_ns),
            Scope::PeerNames => continue,
        };
        for &verb in permission.verbs {
            checks.push((permission, verb, namespace.map(String::from)));
        }
    }
    let answers = futures::future::join_all(checks.iter().map(|(permission, verb, namespace)| {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(permission.group.to_string()),
                    resource: Some(permission.resource.to_string()),
                    // kubectl auth can-i needs --subresource for this; we set it ourselves.
                    subresource: Some(permission.subresource.to_string()).filter(|s| !s.is_empty()),
                    verb: Some(verb.to_string()),
                    namespace: namespace.clone(),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let reviews = reviews.clone();
        async move { reviews.create(&PostParams::default(), &review).await }
    }))
    .await;
    let mut missing = Vec::new();
    for ((permission, verb, namespace), answer) in checks.iter().zip(answers) {
        match answer {
            Ok(review) if review.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => missing.push(Missing {
                verb,
                resource: qualified(permission),
                namespace: namespace.clone(),
                why: permission.why,
            }),
            // A cluster that cannot answer (old, or reviews forbidden) is
            // not a reason to stop: the real requests will tell.
            Err(err) => {
                log::debug!("cannot check permissions ({err}); going on without");
                return Ok(());
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.iter().map(|m| format!("  - {m}")).collect();
    let more = match missing.len() {
        1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    bail!(
        "you are not allowed to {}{more}; tlsspy needs:\n{}\nAsk a cluster admin for the permissions in \
         deploy/rbac.yaml (it also makes the `tlsspy` namespace, where the spy pods run by default).",
        missing[0].what(),
        list.join("\n")
    )
}

/// The review that asks "may I `create pods/<subresource>` on this pod?".
fn pod_review(namespace: &str, pod: &str, subresource: &str) -> SelfSubjectAccessReview {
    SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(String::new()),
                resource: Some("pods".into()),
                subresource: Some(subresource.into()),
                verb: Some("create".into()),
                namespace: Some(namespace.into()),
                name: Some(pod.into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    }
}

/// Whether the user may read the memory of pod `namespace/pod`: allowed
/// `create pods/exec` or `create pods/attach` on it, by name. Fails
/// closed: a review the cluster cannot answer is a no (logged).
pub async fn may_read_memory(client: &Client, namespace: &str, pod: &str) -> bool {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    for subresource in MEMORY_READERS {
        match reviews.create(&PostParams::default(), &pod_review(namespace, pod, subresource)).await {
            Ok(review) if review.status.as_ref().is_some_and(|s| s.allowed) => return true,
            Ok(_) => {}
            Err(err) => {
                log::warn!("cannot check whether you may {subresource} into {namespace}/{pod} ({err}): refused");
                return false;
            }
        }
    }
    false
}

/// What a refused target is told, by name.
pub fn refusal(namespace: &str, pod: &str) -> String {
    format!(
        "you may not exec into {namespace}/{pod}: tlsspy shows plaintext only to those who could read the pod's \
         memory; ask for create pods/exec (or pods/attach) on it"
    )
}

/// The per-target rule, remembered per pod UID so each pod is reviewed
/// once however often the watch reports it.
pub struct TargetAccess {
    client: Client,
    follow: bool,
    /// Pod UID → allowed.
    verdicts: HashMap<String, bool>,
}

/// What becomes of one watch event.
#[derive(Debug)]
pub enum Screened {
    /// Hand it on to the session.
    Pass(TargetEvent),
    /// A newly matched pod the user may not read: say this, drop the event.
    Refused(String),
    /// A pod refused before: drop the event silently.
    Quiet,
}

impl TargetAccess {
    pub fn new(client: Client, follow: bool) -> TargetAccess {
        TargetAccess { client, follow, verdicts: HashMap::new() }
    }

    /// The first targets, reviewed together: the allowed ones, and a
    /// refusal line for each other one.
    pub async fn screen_initial(&mut self, pods: Vec<PodTarget>) -> (Vec<PodTarget>, Vec<String>) {
        let answers =
            futures::future::join_all(pods.iter().map(|pod| may_read_memory(&self.client, &pod.namespace, &pod.name)))
                .await;
        let (mut allowed, mut refused) = (Vec::new(), Vec::new());
        for (pod, ok) in pods.into_iter().zip(answers) {
            self.verdicts.insert(pod.uid.clone(), ok);
            if ok {
                allowed.push(pod);
            } else {
                refused.push(refusal(&pod.namespace, &pod.name));
            }
        }
        (allowed, refused)
    }

    /// One watch event: a pod not reviewed yet is reviewed before the
    /// session sees it (without --follow the session takes no new pods,
    /// so those pass unreviewed and are ignored there).
    pub async fn screen(&mut self, change: TargetEvent) -> Screened {
        match change {
            TargetEvent::Changed(PodState::Ready(pod), uid) => {
                let allowed = match self.verdicts.get(&uid) {
                    Some(&known) => known,
                    None if !self.follow => return Screened::Pass(TargetEvent::Changed(PodState::Ready(pod), uid)),
                    None => {
                        let ok = may_read_memory(&self.client, &pod.namespace, &pod.name).await;
                        self.verdicts.insert(uid.clone(), ok);
                        if !ok {
                            return Screened::Refused(format!("tlsspy: {}", refusal(&pod.namespace, &pod.name)));
                        }
                        true
                    }
                };
                if allowed {
                    Screened::Pass(TargetEvent::Changed(PodState::Ready(pod), uid))
                } else {
                    Screened::Quiet
                }
            }
            TargetEvent::Gone(uid) => {
                // A UID never comes back: forget it, so the table stays as
                // small as the set of live pods.
                self.verdicts.remove(&uid);
                Screened::Pass(TargetEvent::Gone(uid))
            }
            other => Screened::Pass(other),
        }
    }
}

/// Makes sure the spy namespace exists. The default one is created when
/// missing (allowing privileged pods, as deploy/rbac.yaml does); one named
/// with --spy-namespace is never created. A namespace we may not read is
/// taken as it is: creating the spy pod will tell.
pub async fn ensure_spy_namespace(client: &Client, namespace: &str, named_by_user: bool) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get_opt(namespace).await {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
        Err(err) => {
            log::debug!("cannot read namespace {namespace} ({err}); going on");
            return Ok(());
        }
    }
    if named_by_user {
        bail!(
            "the spy namespace \"{namespace}\" (--spy-namespace) does not exist: create it with \
             `kubectl create namespace {namespace}` and allow privileged pods there \
             (`kubectl label namespace {namespace} pod-security.kubernetes.io/enforce=privileged`)"
        );
    }
    let wanted = Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.into()),
            labels: Some(
                [
                    ("pod-security.kubernetes.io/enforce".to_string(), "privileged".to_string()),
                    (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match api.create(&PostParams::default(), &wanted).await {
        Ok(_) => {
            eprintln!("tlsspy: created namespace \"{namespace}\" for the spy pods");
            Ok(())
        }
        // Someone else made it in between: as good.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(err) => bail!(
            "the spy namespace \"{namespace}\" does not exist and tlsspy cannot create it ({err}); ask a cluster \
             admin to run `kubectl apply -f deploy/rbac.yaml` (it makes the namespace and the roles), or name a \
             namespace that allows privileged pods with --spy-namespace"
        ),
    }
}

/// `pods`, `pods/attach`, `deployments.apps`.
pub fn qualified(permission: &Permission) -> String {
    let mut name = permission.resource.to_string();
    if !permission.group.is_empty() {
        name = format!("{name}.{}", permission.group);
    }
    if !permission.subresource.is_empty() {
        name = format!("{name}/{}", permission.subresource);
    }
    name
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    /// (kind of role, group, resource incl. subresource, verb).
    type Grant = (String, String, String, String);

    fn granted_by_yaml() -> (BTreeSet<Grant>, Vec<Value>) {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac.yaml");
        let text = std::fs::read_to_string(path).expect("deploy/rbac.yaml");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("deploy/rbac.yaml parses");
        let mut grants = BTreeSet::new();
        for doc in &docs {
            let kind = doc["kind"].as_str().unwrap_or_default();
            if kind != "ClusterRole" && kind != "Role" {
                continue;
            }
            for rule in doc["rules"].as_array().expect("rules") {
                let strings = |k: &str| -> Vec<String> {
                    rule[k].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect()
                };
                for group in strings("apiGroups") {
                    for resource in strings("resources") {
                        for verb in strings("verbs") {
                            grants.insert((kind.to_string(), group.clone(), resource.clone(), verb));
                        }
                    }
                }
            }
        }
        (grants, docs)
    }

    fn needed() -> BTreeSet<Grant> {
        let mut needed = BTreeSet::new();
        for p in PERMISSIONS {
            let kind = match p.scope {
                Scope::Targets | Scope::PeerNames => "ClusterRole",
                Scope::Spies => "Role",
            };
            let resource = if p.subresource.is_empty() {
                p.resource.to_string()
            } else {
                format!("{}/{}", p.resource, p.subresource)
            };
            for verb in p.verbs {
                needed.insert((kind.to_string(), p.group.to_string(), resource.clone(), verb.to_string()));
            }
        }
        needed
    }

    #[test]
    fn deploy_rbac_yaml_grants_exactly_what_preflight_checks() {
        let (granted, docs) = granted_by_yaml();
        assert_eq!(granted, needed(), "deploy/rbac.yaml and PERMISSIONS disagree");
        // No wildcards sneak in through the back door.
        assert!(granted.iter().all(|(_, g, r, v)| g != "*" && r != "*" && v != "*"));
        // The spy namespace allows privileged pods, and the Role lives there.
        let namespace = docs.iter().find(|d| d["kind"] == "Namespace").expect("a Namespace");
        assert_eq!(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged");
        let role = docs.iter().find(|d| d["kind"] == "Role").expect("a Role");
        assert_eq!(role["metadata"]["namespace"], namespace["metadata"]["name"]);
        // Every role is bound.
        for role in docs.iter().filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole") {
            let name = &role["metadata"]["name"];
            assert!(
                docs.iter().any(|d| d["kind"].as_str().is_some_and(|k| k.ends_with("Binding"))
                    && d["roleRef"]["name"] == *name
                    && d["roleRef"]["kind"] == role["kind"]),
                "{name} is not bound"
            );
        }
    }

    #[test]
    fn pod_reviews_ask_for_exec_on_the_pod_by_name() {
        let review = pod_review("shop", "web-1", "exec");
        let attributes = review.spec.resource_attributes.expect("resource attributes");
        assert_eq!(attributes.verb.as_deref(), Some("create"));
        assert_eq!(attributes.resource.as_deref(), Some("pods"));
        assert_eq!(attributes.subresource.as_deref(), Some("exec"));
        assert_eq!(attributes.namespace.as_deref(), Some("shop"));
        assert_eq!(attributes.name.as_deref(), Some("web-1"));
        assert_eq!(attributes.group.as_deref(), Some(""));
        assert_eq!(MEMORY_READERS, ["exec", "attach"]);
    }

    #[test]
    fn refusals_name_the_pod_and_what_to_ask_for() {
        let text = refusal("shop", "web-1");
        assert!(text.starts_with("you may not exec into shop/web-1: "), "{text}");
        assert!(text.contains("could read the pod's memory"), "{text}");
        assert!(text.contains("create pods/exec"), "{text}");
    }

    #[test]
    fn missing_permissions_read_well() {
        let m = Missing {
            verb: "create",
            resource: qualified(&PERMISSIONS[2]),
            namespace: Some("default".into()),
            why: PERMISSIONS[2].why,
        };
        assert_eq!(m.to_string(), "create pods/attach in namespace \"default\" (to talk to the spy pods)");
        assert_eq!(qualified(&PERMISSIONS[3]), "deployments.apps");
    }
}
