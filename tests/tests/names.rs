//! Peer names kept current from the API: the plugin's `names` module
//! against the test API server (pods run as real processes: root).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tlsspy_tests::apiserver::{ApiServer, Image, Rule};
use tlsspy_tests::support::require_root;

#[path = "../../kubectl-tlsspy/src/names.rs"]
#[allow(dead_code, reason = "the plugin's module, compiled here to test it against the API server")]
mod names;

const WAIT: Duration = Duration::from_secs(20);

async fn client(server: &ApiServer) -> Client {
    client_as(server, "admin").await
}

async fn client_as(server: &ApiServer, user: &str) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = server.kubeconfig_for(user).expect("kubeconfig");
    let kc = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kube config");
    Client::try_from(config).expect("kube client")
}

/// Waits until the index names `ip:port` as `expected` (None: names nothing).
async fn eventually(names: &names::SharedPeerNames, ip: IpAddr, port: u16, expected: Option<&str>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = names.read().expect("index").name_of(ip, port).map(|n| n.to_string());
        if got.as_deref() == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{ip}:{port} is named {got:?}, not {expected:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_names_follow_pods_services_and_endpoint_slices() {
    if !require_root("peer_names_follow_pods_services_and_endpoint_slices") {
        return;
    }
    let server = ApiServer::builder().image("busybox", Image::host()).start().expect("test API server starts");
    let client = client(&server).await;
    let index = names::SharedPeerNames::default();
    let (notices_tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    let scope = names::NamesScope { fallback: Some("default".into()) };
    let watch = tokio::spawn(names::keep_current(client.clone(), Arc::clone(&index), scope, notices_tx));

    // A pod: named by its IP once it runs.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "api-1"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "300"]}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod).await.expect("create pod");
    let running = kube::runtime::wait::await_condition(pods.clone(), "api-1", |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()).and_then(|s| s.pod_ip.as_ref()).is_some()
    });
    let running = tokio::time::timeout(WAIT, running).await.expect("an IP in time").expect("watch").expect("pod");
    let pod_ip: IpAddr = running.status.and_then(|s| s.pod_ip).expect("pod IP").parse().expect("an IP");
    eventually(&index, pod_ip, 8443, Some("default/api-1")).await;

    // A service: named by its ClusterIP, and gone when deleted.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "api"},
        "spec": {"selector": {"app": "api"}, "ports": [{"port": 443}]},
    }))
    .expect("service");
    let created = services.create(&PostParams::default(), &service).await.expect("create service");
    let cluster_ip: IpAddr = created.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP").parse().expect("an IP");
    eventually(&index, cluster_ip, 443, Some("default/api")).await;

    // An EndpointSlice with an address that is no pod: named by its service.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "db-abc", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.10"]}],
        "ports": [{"port": 5432}],
    }))
    .expect("slice");
    slices.create(&PostParams::default(), &slice).await.expect("create slice");
    let external: IpAddr = "192.0.2.10".parse().expect("ip");
    eventually(&index, external, 5432, Some("default/db")).await;

    services.delete("api", &DeleteParams::default()).await.expect("delete service");
    eventually(&index, cluster_ip, 443, None).await;
    slices.delete("db-abc", &DeleteParams::default()).await.expect("delete slice");
    eventually(&index, external, 5432, None).await;
    pods.delete("api-1", &DeleteParams::default().grace_period(0)).await.expect("delete pod");
    eventually(&index, pod_ip, 8443, None).await;

    assert!(!watch.is_finished(), "the watches keep running: {watch:?}");
    assert!(notices.try_recv().is_err(), "an admin is allowed everything: nothing to say");
    watch.abort();
}

/// A user who may list only in the targets' namespace still gets names
/// from there, and is told why peers elsewhere are not named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_names_fall_back_to_the_targets_namespace() {
    if !require_root("peer_names_fall_back_to_the_targets_namespace") {
        return;
    }
    let mut in_shop = Rule::new(&["get", "list", "watch"], &["pods", "services", "endpointslices"]);
    in_shop.namespaces = vec!["shop".into()];
    let server = ApiServer::builder()
        .image("busybox", Image::host())
        .user("shop-viewer", &[in_shop])
        .start()
        .expect("test API server starts");
    let admin = client(&server).await;
    for namespace in ["shop", "other"] {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}})).expect("namespace");
        Api::<Namespace>::all(admin.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
    }
    for (namespace, ip) in [("shop", "127.3.0.1"), ("other", "127.3.0.2")] {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "api"},
            "spec": {"clusterIP": ip, "ports": [{"port": 443}]},
        }))
        .expect("service");
        Api::<Service>::namespaced(admin.clone(), namespace)
            .create(&PostParams::default(), &service)
            .await
            .expect("create service");
    }

    let index = names::SharedPeerNames::default();
    let (notices_tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    let scope = names::NamesScope { fallback: Some("shop".into()) };
    let viewer = client_as(&server, "shop-viewer").await;
    let watch = tokio::spawn(names::keep_current(viewer, Arc::clone(&index), scope, notices_tx));
    let shop: IpAddr = "127.3.0.1".parse().expect("ip");
    eventually(&index, shop, 443, Some("shop/api")).await;
    let mut said = Vec::new();
    while said.len() < 3 {
        let notice = tokio::time::timeout(WAIT, notices.recv()).await.expect("a notice per kind").expect("open");
        said.push(notice);
    }
    for what in ["pods", "services", "endpointslices.discovery.k8s.io"] {
        assert!(
            said.iter().any(|n| n.contains(&format!("by their {what} in namespace \"shop\" only"))
                && n.contains("deploy/rbac.yaml")),
            "{said:#?}"
        );
    }
    let other: IpAddr = "127.3.0.2".parse().expect("ip");
    assert_eq!(index.read().expect("index").name_of(other, 443), None, "outside the namespace: not listed");
    watch.abort();
}
