//! Peer names: the addresses a connection talks to, named the way people
//! know them in the cluster: pod IPs as `namespace/pod`, ClusterIPs as
//! `namespace/service`, other endpoints of a service (EndpointSlices) as
//! `namespace/service`.
//!
//! [`PeerNames`] is a pure index fed with Pod, Service and EndpointSlice
//! objects; [`keep_current`] feeds it from watches so it stays current while
//! a session runs (`--follow`). Use:
//!
//! ```ignore
//! let names = SharedPeerNames::default();
//! let (notices, notices_rx) = tokio::sync::mpsc::unbounded_channel();
//! let scope = NamesScope { fallback: Some("shop".into()) };
//! let watch = tokio::spawn(names::keep_current(client.clone(), names.clone(), scope, notices));
//! // for every record on its way to the renderer:
//! names.read().unwrap_or_else(|p| p.into_inner()).enrich(&mut record);
//! // at exit:
//! watch.abort();
//! ```

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Client, ResourceExt as _};
use spy_protocol::record::{Connection, Record};
use tokio::sync::mpsc;

/// The label an EndpointSlice names its service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerKind {
    Pod,
    Service,
}

/// A peer's Kubernetes name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerName {
    pub kind: PeerKind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which watch an object came from (relists replace one kind at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Pods,
    Services,
    EndpointSlices,
}

/// (namespace, name) of an object.
type Key = (String, String);

#[derive(Clone, Debug, Default)]
struct ServiceEntry {
    cluster_ips: Vec<IpAddr>,
}

#[derive(Clone, Debug, Default)]
struct SliceEntry {
    /// The service the slice belongs to.
    service: String,
    addresses: Vec<IpAddr>,
    /// The slice's ports (empty: every port).
    ports: Vec<u16>,
}

/// Addresses → names, from pods, services and EndpointSlices.
#[derive(Debug, Default)]
pub struct PeerNames {
    pods: HashMap<Key, Vec<IpAddr>>,
    pod_ips: HashMap<IpAddr, Key>,
    services: HashMap<Key, ServiceEntry>,
    cluster_ips: HashMap<IpAddr, Key>,
    slices: HashMap<Key, SliceEntry>,
    /// Objects seen since a relist began, per kind; what is missing at its
    /// end was deleted while we were not watching.
    relisting: HashMap<Kind, HashSet<Key>>,
}

fn key_of<K: kube::Resource>(object: &K) -> Key {
    (object.namespace().unwrap_or_default(), object.name_any())
}

fn parse_ips<'a>(texts: impl Iterator<Item = &'a str>) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = texts.filter_map(|t| t.parse().ok()).collect();
    ips.sort();
    ips.dedup();
    ips
}

impl PeerNames {
    /// The name of the peer at `ip:port`: a service's ClusterIP first, then
    /// a pod's IP, then any other endpoint of a service.
    pub fn name_of(&self, ip: IpAddr, port: u16) -> Option<PeerName> {
        // ::ffff:a.b.c.d is a.b.c.d.
        let ip = ip.to_canonical();
        if let Some((namespace, name)) = self.cluster_ips.get(&ip) {
            return Some(PeerName { kind: PeerKind::Service, namespace: namespace.clone(), name: name.clone() });
        }
        if let Some((namespace, name)) = self.pod_ips.get(&ip) {
            return Some(PeerName { kind: PeerKind::Pod, namespace: namespace.clone(), name: name.clone() });
        }
        // Slices are few per service; endpoints that are no pod of ours
        // (external addresses, a pod not listed yet) are rare enough to scan.
        self.slices
            .iter()
            .filter(|(_, s)| s.addresses.contains(&ip) && (s.ports.is_empty() || s.ports.contains(&port)))
            .map(|((namespace, _), s)| PeerName {
                kind: PeerKind::Service,
                namespace: namespace.clone(),
                name: s.service.clone(),
            })
            .min_by(|a, b| a.name.cmp(&b.name))
    }

    pub fn name_of_addr(&self, addr: SocketAddr) -> Option<PeerName> {
        self.name_of(addr.ip(), addr.port())
    }

    /// Names the remote end of a record's connection.
    pub fn enrich(&self, record: &mut Record) {
        let conn: &mut Connection = match record {
            Record::Handshake(h) => &mut h.conn,
            Record::Exchange(x) => &mut x.conn,
            Record::Chunk(c) => &mut c.conn,
            _ => return,
        };
        if conn.remote_name.is_none() {
            conn.remote_name = conn.remote.and_then(|a| self.name_of_addr(a)).map(|n| n.to_string());
        }
    }

    /// A pod was added or changed. Pods on the host network share the
    /// node's address: they do not name it.
    pub fn apply_pod(&mut self, pod: &Pod) {
        let key = key_of(pod);
        self.mark(Kind::Pods, &key);
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
        let finished =
            pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
        let ips = if host_network || finished {
            Vec::new()
        } else {
            let status = pod.status.as_ref();
            let listed = status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().map(|p| p.ip.as_str());
            let single = status.and_then(|s| s.pod_ip.as_deref());
            parse_ips(listed.chain(single))
        };
        self.remove_pod_key(&key);
        for ip in &ips {
            self.pod_ips.insert(*ip, key.clone());
        }
        self.pods.insert(key, ips);
    }

    pub fn delete_pod(&mut self, pod: &Pod) {
        self.remove_pod_key(&key_of(pod));
    }

    fn remove_pod_key(&mut self, key: &Key) {
        for ip in self.pods.remove(key).unwrap_or_default() {
            if self.pod_ips.get(&ip) == Some(key) {
                self.pod_ips.remove(&ip);
            }
        }
    }

    pub fn apply_service(&mut self, service: &Service) {
        let key = key_of(service);
        self.mark(Kind::Services, &key);
        let spec = service.spec.as_ref();
        let listed = spec.and_then(|s| s.cluster_ips.as_ref()).into_iter().flatten().map(String::as_str);
        let single = spec.and_then(|s| s.cluster_ip.as_deref());
        // "None" (headless) does not parse: such a service has no address of its own.
        let cluster_ips = parse_ips(listed.chain(single));
        self.remove_service_key(&key);
        for ip in &cluster_ips {
            self.cluster_ips.insert(*ip, key.clone());
        }
        self.services.insert(key, ServiceEntry { cluster_ips });
    }

    pub fn delete_service(&mut self, service: &Service) {
        self.remove_service_key(&key_of(service));
    }

    fn remove_service_key(&mut self, key: &Key) {
        for ip in self.services.remove(key).map(|s| s.cluster_ips).unwrap_or_default() {
            if self.cluster_ips.get(&ip) == Some(key) {
                self.cluster_ips.remove(&ip);
            }
        }
    }

    pub fn apply_endpoint_slice(&mut self, slice: &EndpointSlice) {
        let key = key_of(slice);
        self.mark(Kind::EndpointSlices, &key);
        let Some(service) = slice.labels().get(SERVICE_NAME_LABEL).cloned() else {
            self.slices.remove(&key);
            return;
        };
        let addresses = parse_ips(slice.endpoints.iter().flat_map(|e| e.addresses.iter().map(String::as_str)));
        let ports = slice.ports.iter().flatten().filter_map(|p| p.port.and_then(|n| u16::try_from(n).ok())).collect();
        self.slices.insert(key, SliceEntry { service, addresses, ports });
    }

    pub fn delete_endpoint_slice(&mut self, slice: &EndpointSlice) {
        self.slices.remove(&key_of(slice));
    }

    /// A watch (re)lists `kind`: objects not seen again before
    /// [`PeerNames::relisted`] are gone.
    pub fn relisting(&mut self, kind: Kind) {
        self.relisting.insert(kind, HashSet::new());
    }

    /// The relist of `kind` is complete: forget what it did not list.
    pub fn relisted(&mut self, kind: Kind) {
        let Some(seen) = self.relisting.remove(&kind) else { return };
        let stale: Vec<Key> = match kind {
            Kind::Pods => self.pods.keys().filter(|k| !seen.contains(*k)).cloned().collect(),
            Kind::Services => self.services.keys().filter(|k| !seen.contains(*k)).cloned().collect(),
            Kind::EndpointSlices => self.slices.keys().filter(|k| !seen.contains(*k)).cloned().collect(),
        };
        for key in stale {
            match kind {
                Kind::Pods => self.remove_pod_key(&key),
                Kind::Services => self.remove_service_key(&key),
                Kind::EndpointSlices => {
                    self.slices.remove(&key);
                }
            }
        }
    }

    fn mark(&mut self, kind: Kind, key: &Key) {
        if let Some(seen) = self.relisting.get_mut(&kind) {
            seen.insert(key.clone());
        }
    }
}

/// The index shared between the watches and the renderer.
pub type SharedPeerNames = Arc<RwLock<PeerNames>>;

/// Where the names come from: every namespace when the user may list there,
/// else only the targets' namespace (peers elsewhere then show as addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamesScope {
    /// The namespace to fall back to when listing in every namespace is
    /// forbidden (`None` with -A: no fallback).
    pub fallback: Option<String>,
}

/// Keeps `names` current from pods, services and EndpointSlices of every
/// namespace (or of `scope.fallback` when that is all RBAC allows).
/// Transient watch errors are retried with backoff. What the user should
/// know (a kind that cannot be watched at all) is sent to `notices`, once.
/// Runs until dropped: abort its task at the end of the session.
pub async fn keep_current(
    client: Client,
    names: SharedPeerNames,
    scope: NamesScope,
    notices: mpsc::UnboundedSender<String>,
) {
    let pods = follow::<Pod>(&client, &scope, Kind::Pods, &names, &notices, |n, e| match e {
        Change::Apply(p) => n.apply_pod(&p),
        Change::Delete(p) => n.delete_pod(&p),
    });
    let services = follow::<Service>(&client, &scope, Kind::Services, &names, &notices, |n, e| match e {
        Change::Apply(s) => n.apply_service(&s),
        Change::Delete(s) => n.delete_service(&s),
    });
    let slices = follow::<EndpointSlice>(&client, &scope, Kind::EndpointSlices, &names, &notices, |n, e| match e {
        Change::Apply(s) => n.apply_endpoint_slice(&s),
        Change::Delete(s) => n.delete_endpoint_slice(&s),
    });
    futures::join!(pods, services, slices);
}

enum Change<K> {
    Apply(K),
    Delete(K),
}

/// Listing a kind was forbidden (RBAC).
struct Forbidden;

impl Kind {
    /// As RBAC names it.
    fn resource(self) -> &'static str {
        match self {
            Kind::Pods => "pods",
            Kind::Services => "services",
            Kind::EndpointSlices => "endpointslices.discovery.k8s.io",
        }
    }
}

/// Watches one kind: in every namespace, else in the fallback namespace.
async fn follow<K>(
    client: &Client,
    scope: &NamesScope,
    kind: Kind,
    names: &SharedPeerNames,
    notices: &mpsc::UnboundedSender<String>,
    apply: impl Fn(&mut PeerNames, Change<K>),
) where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
    K::DynamicType: Default,
{
    if watch_api(Api::<K>::all(client.clone()), kind, names, &apply).await.is_ok() {
        return;
    }
    let what = kind.resource();
    let Some(namespace) = &scope.fallback else {
        let _ = notices.send(format!(
            "tlsspy: peers are not named by their {what}: you may not list {what} in all namespaces \
             (deploy/rbac.yaml grants it)"
        ));
        return;
    };
    let _ = notices.send(format!(
        "tlsspy: peers are named by their {what} in namespace \"{namespace}\" only: you may not list {what} \
         in all namespaces (deploy/rbac.yaml grants it)"
    ));
    if watch_api(Api::<K>::namespaced(client.clone(), namespace), kind, names, &apply).await.is_err() {
        let _ = notices.send(format!(
            "tlsspy: peers are not named by their {what}: you may not list {what} in namespace \"{namespace}\""
        ));
    }
}

/// Feeds one watch into the index until it ends; `Err` when the list is forbidden.
async fn watch_api<K>(
    api: Api<K>,
    kind: Kind,
    names: &SharedPeerNames,
    apply: &impl Fn(&mut PeerNames, Change<K>),
) -> Result<(), Forbidden>
where
    K: kube::Resource + Clone + fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut events = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    loop {
        let event = match events.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(()),
            Err(err) => {
                if matches!(err, watcher::Error::InitialListFailed(kube::Error::Api(ref s)) if s.code == 403) {
                    log::debug!("watching {kind:?} for peer names: {err}");
                    return Err(Forbidden);
                }
                // Transient: the backoff retries.
                log::warn!("watching {kind:?} for peer names: {err}");
                continue;
            }
        };
        let mut index = names.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        match event {
            Event::Init => index.relisting(kind),
            Event::InitApply(object) | Event::Apply(object) => apply(&mut index, Change::Apply(object)),
            Event::Delete(object) => apply(&mut index, Change::Delete(object)),
            Event::InitDone => index.relisted(kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodIP, PodSpec, PodStatus, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn meta(ns: &str, name: &str) -> ObjectMeta {
        ObjectMeta { namespace: Some(ns.into()), name: Some(name.into()), ..ObjectMeta::default() }
    }

    fn pod(ns: &str, name: &str, ips: &[&str]) -> Pod {
        Pod {
            metadata: meta(ns, name),
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: ips.first().map(|s| s.to_string()),
                pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
                ..PodStatus::default()
            }),
        }
    }

    fn service(ns: &str, name: &str, ips: &[&str]) -> Service {
        Service {
            metadata: meta(ns, name),
            spec: Some(ServiceSpec {
                cluster_ip: ips.first().map(|s| s.to_string()),
                cluster_ips: Some(ips.iter().map(|s| s.to_string()).collect()),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    fn slice(ns: &str, name: &str, service: &str, addresses: &[&str], ports: &[i32]) -> EndpointSlice {
        let mut metadata = meta(ns, name);
        metadata.labels = Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into());
        EndpointSlice {
            metadata,
            address_type: "IPv4".into(),
            endpoints: vec![Endpoint {
                addresses: addresses.iter().map(|s| s.to_string()).collect(),
                ..Endpoint::default()
            }],
            ports: Some(ports.iter().map(|p| EndpointPort { port: Some(*p), ..EndpointPort::default() }).collect()),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn name(names: &PeerNames, addr: &str, port: u16) -> Option<String> {
        names.name_of(ip(addr), port).map(|n| n.to_string())
    }

    #[test]
    fn pods_services_and_slices_are_named() {
        let mut names = PeerNames::default();
        names.apply_pod(&pod("shop", "api-7", &["10.244.1.5", "fd00::5"]));
        names.apply_service(&service("shop", "api", &["10.96.0.10"]));
        names.apply_endpoint_slice(&slice("shop", "db-x1", "db", &["192.168.7.7"], &[5432]));
        assert_eq!(name(&names, "10.244.1.5", 8443), Some("shop/api-7".into()));
        assert_eq!(name(&names, "fd00::5", 8443), Some("shop/api-7".into()));
        assert_eq!(name(&names, "::ffff:10.244.1.5", 1), Some("shop/api-7".into()));
        assert_eq!(names.name_of(ip("10.96.0.10"), 443).map(|n| n.kind), Some(PeerKind::Service));
        assert_eq!(name(&names, "10.96.0.10", 443), Some("shop/api".into()));
        // An endpoint that is no pod: its service, on its port only.
        assert_eq!(name(&names, "192.168.7.7", 5432), Some("shop/db".into()));
        assert_eq!(name(&names, "192.168.7.7", 22), None);
        assert_eq!(name(&names, "10.0.0.1", 443), None);
    }

    #[test]
    fn changes_and_deletes_keep_the_index_right() {
        let mut names = PeerNames::default();
        names.apply_pod(&pod("a", "p", &["10.0.0.5"]));
        // The IP moves to another pod after the first one is rescheduled.
        names.apply_pod(&pod("a", "p", &["10.0.0.6"]));
        names.apply_pod(&pod("b", "q", &["10.0.0.5"]));
        assert_eq!(name(&names, "10.0.0.5", 1), Some("b/q".into()));
        assert_eq!(name(&names, "10.0.0.6", 1), Some("a/p".into()));
        // Deleting the old owner does not drop the new owner's IP.
        names.delete_pod(&pod("a", "p", &["10.0.0.6"]));
        assert_eq!(name(&names, "10.0.0.6", 1), None);
        assert_eq!(name(&names, "10.0.0.5", 1), Some("b/q".into()));
        // Finished and host-network pods name nothing.
        let mut done = pod("b", "q", &["10.0.0.5"]);
        done.status.as_mut().expect("status").phase = Some("Succeeded".into());
        names.apply_pod(&done);
        assert_eq!(name(&names, "10.0.0.5", 1), None);
        let mut host = pod("kube-system", "proxy", &["172.18.0.2"]);
        host.spec.as_mut().expect("spec").host_network = Some(true);
        names.apply_pod(&host);
        assert_eq!(name(&names, "172.18.0.2", 1), None);
        // Headless services have no address of their own.
        names.apply_service(&service("a", "headless", &["None"]));
        names.apply_service(&service("a", "svc", &["10.96.1.1"]));
        names.delete_service(&service("a", "svc", &[]));
        assert_eq!(name(&names, "10.96.1.1", 80), None);
    }

    #[test]
    fn a_relist_forgets_what_it_no_longer_lists() {
        let mut names = PeerNames::default();
        names.apply_pod(&pod("a", "old", &["10.0.0.1"]));
        names.apply_pod(&pod("a", "kept", &["10.0.0.2"]));
        names.apply_service(&service("a", "svc", &["10.96.0.1"]));
        names.relisting(Kind::Pods);
        names.apply_pod(&pod("a", "kept", &["10.0.0.2"]));
        names.relisted(Kind::Pods);
        assert_eq!(name(&names, "10.0.0.1", 1), None);
        assert_eq!(name(&names, "10.0.0.2", 1), Some("a/kept".into()));
        assert_eq!(name(&names, "10.96.0.1", 1), Some("a/svc".into()), "other kinds are untouched");
    }

    #[test]
    fn records_get_the_peer_name() {
        let mut names = PeerNames::default();
        names.apply_service(&service("shop", "api", &["10.96.0.10"]));
        let mut record = Record::Handshake(spy_protocol::record::Handshake {
            conn: Connection { remote: Some("10.96.0.10:443".parse().expect("addr")), ..Connection::default() },
            ..Default::default()
        });
        names.enrich(&mut record);
        let Record::Handshake(h) = record else { unreachable!() };
        assert_eq!(h.conn.remote_name.as_deref(), Some("shop/api"));
    }
}
