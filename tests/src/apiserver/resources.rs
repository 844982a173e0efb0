//! The resource types this server knows, and the discovery documents that describe them.

use serde_json::{json, Value};

/// A subresource as named in discovery (`pods/attach`).
#[derive(Debug)]
pub struct SubresourceDef {
    pub name: &'static str,
    /// Kind of what the subresource answers (`PodAttachOptions`, `Pod`).
    pub kind: &'static str,
    pub verbs: &'static [&'static str],
}

/// One resource type: where it lives and what it supports.
#[derive(Debug)]
pub struct ResourceDef {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub verbs: &'static [&'static str],
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [SubresourceDef],
    /// Field labels accepted by fieldSelector, beyond metadata.name/namespace.
    pub field_labels: &'static [&'static str],
}

impl ResourceDef {
    /// `pods`, or `deployments.apps` outside the core group (as in error messages).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn subresource(&self, name: &str) -> Option<&SubresourceDef> {
        self.subresources.iter().find(|s| s.name == name)
    }

    pub fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }
}

const ALL: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
const NO_COLLECTION_DELETE: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];
const STATUS: &[&str] = &["get", "patch", "update"];

macro_rules! sub {
    ($name:expr, $kind:expr, $verbs:expr) => {
        SubresourceDef { name: $name, kind: $kind, verbs: $verbs }
    };
}

/// Every resource type served, in discovery order.
pub static RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        verbs: NO_COLLECTION_DELETE,
        short_names: &["ns"],
        categories: &[],
        subresources: &[sub!("status", "Namespace", STATUS)],
        field_labels: &["status.phase"],
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        verbs: ALL,
        short_names: &["no"],
        categories: &[],
        subresources: &[sub!("status", "Node", STATUS)],
        field_labels: &["spec.unschedulable"],
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        verbs: ALL,
        short_names: &["po"],
        categories: &["all"],
        subresources: &[
            sub!("attach", "PodAttachOptions", &["create", "get"]),
            sub!("ephemeralcontainers", "Pod", STATUS),
            sub!("log", "Pod", &["get"]),
            sub!("status", "Pod", STATUS),
        ],
        field_labels: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        verbs: NO_COLLECTION_DELETE,
        short_names: &["svc"],
        categories: &["all"],
        subresources: &[sub!("status", "Service", STATUS)],
        field_labels: &["spec.clusterIP", "spec.type"],
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        verbs: ALL,
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
        field_labels: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
    },
    ResourceDef {
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        singular: "daemonset",
        kind: "DaemonSet",
        namespaced: true,
        verbs: ALL,
        short_names: &["ds"],
        categories: &["all"],
        subresources: &[sub!("status", "DaemonSet", STATUS)],
        field_labels: &[],
    },
    ResourceDef {
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind: "Deployment",
        namespaced: true,
        verbs: ALL,
        short_names: &["deploy"],
        categories: &["all"],
        subresources: &[sub!("status", "Deployment", STATUS)],
        field_labels: &[],
    },
    ResourceDef {
        group: "apps",
        version: "v1",
        plural: "replicasets",
        singular: "replicaset",
        kind: "ReplicaSet",
        namespaced: true,
        verbs: ALL,
        short_names: &["rs"],
        categories: &["all"],
        subresources: &[sub!("status", "ReplicaSet", STATUS)],
        field_labels: &[],
    },
    ResourceDef {
        group: "apps",
        version: "v1",
        plural: "statefulsets",
        singular: "statefulset",
        kind: "StatefulSet",
        namespaced: true,
        verbs: ALL,
        short_names: &["sts"],
        categories: &["all"],
        subresources: &[sub!("status", "StatefulSet", STATUS)],
        field_labels: &[],
    },
    ResourceDef {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        kind: "SelfSubjectAccessReview",
        namespaced: false,
        verbs: &["create"],
        short_names: &[],
        categories: &[],
        subresources: &[],
        field_labels: &[],
    },
    ResourceDef {
        group: "batch",
        version: "v1",
        plural: "jobs",
        singular: "job",
        kind: "Job",
        namespaced: true,
        verbs: ALL,
        short_names: &[],
        categories: &["all"],
        subresources: &[sub!("status", "Job", STATUS)],
        field_labels: &["status.successful"],
    },
    ResourceDef {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        verbs: ALL,
        short_names: &[],
        categories: &[],
        subresources: &[],
        field_labels: &[],
    },
];

/// API groups other than the core one, in `/apis` order.
pub const GROUPS: &[&str] = &["apps", "authorization.k8s.io", "batch", "discovery.k8s.io"];

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource with this group and plural (any version).
pub fn by_name(group: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES.iter().find(|r| r.group == group && r.plural == plural)
}

pub fn group_known(group: &str, version: &str) -> bool {
    RESOURCES.iter().any(|r| r.group == group && r.version == version)
}

fn in_group(group: &str) -> impl Iterator<Item = &'static ResourceDef> + '_ {
    RESOURCES.iter().filter(move |r| r.group == group)
}

/// `/api`: `APIVersions`.
pub fn api_versions(server_addr: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_addr}],
    })
}

fn group_entry(group: &str) -> Value {
    let gv = format!("{group}/v1");
    json!({
        "name": group,
        "versions": [{"groupVersion": gv, "version": "v1"}],
        "preferredVersion": {"groupVersion": gv, "version": "v1"},
    })
}

/// `/apis`: `APIGroupList`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = GROUPS.iter().map(|g| group_entry(g)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`: `APIGroup`.
pub fn api_group(group: &str) -> Value {
    let mut g = group_entry(group);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    g
}

/// `/api/v1` or `/apis/<group>/v1`: `APIResourceList`.
pub fn api_resource_list(group: &str) -> Value {
    let mut list = Vec::new();
    for r in in_group(group) {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        list.push(e);
        for s in r.subresources {
            let mut e = json!({
                "name": format!("{}/{}", r.plural, s.name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": s.kind,
                "verbs": s.verbs,
            });
            if s.kind != r.kind {
                // Options kinds of connect subresources live in the core group.
                e["group"] = json!("");
                e["version"] = json!("v1");
            }
            list.push(e);
        }
    }
    let gv = if group.is_empty() { "v1".to_string() } else { format!("{group}/v1") };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
}

/// Media type of aggregated discovery (kubectl asks for it first).
pub const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

fn discovery_group(group: &str) -> Value {
    let resources: Vec<Value> = in_group(group)
        .map(|r| {
            let subs: Vec<Value> = r
                .subresources
                .iter()
                .map(|s| {
                    let (g, v) = if s.kind == r.kind { (r.group, r.version) } else { ("", "v1") };
                    json!({
                        "subresource": s.name,
                        "responseKind": {"group": g, "version": v, "kind": s.kind},
                        "verbs": s.verbs,
                    })
                })
                .collect();
            let mut e = json!({
                "resource": r.plural,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": r.verbs,
            });
            if !r.short_names.is_empty() {
                e["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                e["categories"] = json!(r.categories);
            }
            if !subs.is_empty() {
                e["subresources"] = json!(subs);
            }
            e
        })
        .collect();
    json!({
        "metadata": {"name": group, "creationTimestamp": null},
        "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}],
    })
}

/// `/api` or `/apis` as an aggregated `APIGroupDiscoveryList` (apidiscovery.k8s.io/v2).
pub fn aggregated(core: bool) -> Value {
    let items: Vec<Value> =
        if core { vec![discovery_group("")] } else { GROUPS.iter().map(|g| discovery_group(g)).collect() };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}
