//! Peer names kept current from the API: the plugin's `names` module
//! against the test API server (pods run as real processes: root).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tlsspy_tests::apiserver::{ApiServer, Image};
use tlsspy_tests::support::require_root;

#[path = "../../kubectl-tlsspy/src/names.rs"]
#[allow(dead_code, reason = "the plugin's module, compiled here to test it against the API server")]
mod names;

const WAIT: Duration = Duration::from_secs(20);

async fn client(server: &ApiServer) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = server.kubeconfig_for("admin").expect("kubeconfig");
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
    let watch = tokio::spawn(names::keep_current(client.clone(), Arc::clone(&index)));

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
    let cluster_ip: IpAddr =
        created.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP").parse().expect("an IP");
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
    watch.abort();
}
