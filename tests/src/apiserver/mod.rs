//! A test Kubernetes API server that speaks the real wire protocol, for
//! kubectl and kube-rs, with a "kubelet" that runs pods as local processes.
//!
//! ```no_run
//! use tlsspy_tests::apiserver::{ApiServer, Image, Rule};
//! let server = ApiServer::builder()
//!     .image("ghcr.io/tlsspy/agent:v0.1.0", Image::executable("/path/to/tlsspy-agent"))
//!     .image("python:3", Image::host())
//!     .namespace("locked", &[("pod-security.kubernetes.io/enforce", "baseline")])
//!     .user("viewer", &[Rule::new(&["get", "list", "watch"], &["pods"])])
//!     .start()?;
//! let kubeconfig = server.kubeconfig_for("viewer")?;
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! What runs where: HTTPS (rustls, a CA made at start) on 127.0.0.1, served by
//! hyper on a runtime of its own (so tests may block on kubectl subprocesses);
//! objects live in a [`store::Store`]; the [`kubelet::Kubelet`] follows pod
//! changes and runs containers as processes in containerd-named cgroups.

#![deny(unsafe_code)]

pub mod admission;
pub mod attach;
pub mod http;
pub mod kubelet;
pub mod patch;
pub mod proto;
pub mod rbac;
pub mod resources;
pub mod selector;
pub mod status;
pub mod store;
pub mod table;
pub mod time;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use base64::Engine as _;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

pub use kubelet::{normalize_image, Image};
pub use rbac::Rule;
pub use store::Store;

/// The cluster name in kubeconfigs written by the server.
pub const CLUSTER: &str = "tlsspy-test";
/// The user every server has, allowed everything (group system:masters).
pub const ADMIN: &str = "admin";
/// The node every server has unless the builder names others.
pub const DEFAULT_NODE: &str = "node-1";
/// The node's InternalIP: all nodes are this machine.
pub const NODE_IP: &str = "127.0.0.1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding 127.0.0.1")]
    Bind(#[source] std::io::Error),
    #[error("starting the server runtime")]
    Runtime(#[source] std::io::Error),
    #[error("making the server certificate")]
    Tls(#[from] tls::TlsError),
    #[error("creating the server's temporary directory")]
    TempDir(#[source] std::io::Error),
    #[error("writing kubeconfig {path}")]
    Kubeconfig { path: PathBuf, source: std::io::Error },
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    #[error("seeding object {what}")]
    Seed { what: String, source: status::ApiError },
}

/// State shared by the HTTP handlers and the kubelet.
pub struct Shared {
    pub store: Arc<Store>,
    rbac: RwLock<rbac::Rbac>,
    pub images: Arc<RwLock<kubelet::ImageTable>>,
    pub kubelet: Arc<kubelet::Kubelet>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Shared {
    pub fn rbac(&self) -> RwLockReadGuard<'_, rbac::Rbac> {
        self.rbac.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Configures a server before it starts.
#[derive(Default)]
pub struct Builder {
    nodes: Vec<String>,
    namespaces: Vec<(String, Vec<(String, String)>)>,
    users: Vec<(String, Vec<Rule>)>,
    images: Vec<(String, Image)>,
}

impl Builder {
    /// Adds a node (all nodes are this machine). Without any, there is one: [`DEFAULT_NODE`].
    pub fn node(mut self, name: &str) -> Self {
        self.nodes.push(name.into());
        self
    }

    /// Adds a namespace with labels (e.g. `pod-security.kubernetes.io/enforce`).
    /// `default`, `kube-system`, `kube-public` and `kube-node-lease` always exist.
    pub fn namespace(mut self, name: &str, labels: &[(&str, &str)]) -> Self {
        self.namespaces.push((name.into(), labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()));
        self
    }

    /// Adds a user (bearer token made up at start) allowed what `rules` say.
    pub fn user(mut self, name: &str, rules: &[Rule]) -> Self {
        self.users.push((name.into(), rules.to_vec()));
        self
    }

    /// Maps an image name to what it runs here. Unknown images fail to pull.
    pub fn image(mut self, name: &str, image: Image) -> Self {
        self.images.push((name.into(), image));
        self
    }

    pub fn start(self) -> Result<ApiServer, Error> {
        ApiServer::start_with(self)
    }
}

/// A running test API server. Dropping it kills every container process.
pub struct ApiServer {
    shared: Arc<Shared>,
    ca_pem: String,
    dir: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
}

fn token() -> String {
    store::random_bytes::<24>().iter().map(|b| format!("{b:02x}")).collect()
}

impl ApiServer {
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn start_with(b: Builder) -> Result<ApiServer, Error> {
        let certs = tls::generate()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(Error::Bind)?;
        listener.set_nonblocking(true).map_err(Error::Bind)?;
        let addr = listener.local_addr().map_err(Error::Bind)?;
        let dir = tempfile::Builder::new().prefix("tlsspy-apiserver-").tempdir().map_err(Error::TempDir)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-apiserver")
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;

        let store = Arc::new(Store::new());
        let images = Arc::new(RwLock::new(kubelet::ImageTable::default()));
        for (name, img) in b.images {
            images.write().unwrap_or_else(|e| e.into_inner()).insert(&name, img);
        }
        let mut rb = rbac::Rbac::default();
        rb.add_user(ADMIN, &token(), &["system:masters", "system:authenticated"]);
        for (name, rules) in b.users {
            rb.add_user(&name, &token(), &["system:authenticated"]);
            for r in rules {
                rb.allow(&name, r);
            }
        }
        let kubelet = {
            let _guard = runtime.enter();
            kubelet::Kubelet::new(store.clone(), images.clone(), NODE_IP)
        };
        let shared = Arc::new(Shared {
            store: store.clone(),
            rbac: RwLock::new(rb),
            images,
            kubelet: kubelet.clone(),
            addr: addr.to_string(),
        });

        let seed = |res: &str, obj: Value| -> Result<(), Error> {
            let def = resources::by_name("", res).expect("seeded resources are built-in");
            store.create(def, obj).map(drop).map_err(|source| Error::Seed { what: res.to_string(), source })
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            seed("namespaces", namespace_object(ns, &[]))?;
        }
        for (ns, labels) in &b.namespaces {
            seed("namespaces", namespace_object(ns, labels))?;
        }
        let nodes = if b.nodes.is_empty() { vec![DEFAULT_NODE.to_string()] } else { b.nodes };
        for n in &nodes {
            seed("nodes", node_object(n))?;
        }

        let changes = store.hook();
        runtime.spawn(kubelet.run(changes));
        let acceptor = tokio_rustls::TlsAcceptor::from(certs.server.clone());
        let serve_shared = shared.clone();
        runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    log::error!("test API server cannot listen: {e}");
                    return;
                }
            };
            serve(listener, acceptor, serve_shared).await;
        });
        let server = ApiServer { shared, ca_pem: certs.ca_pem, dir, runtime: Some(runtime) };
        server.write_kubeconfig(ADMIN, &server.kubeconfig_path())?;
        Ok(server)
    }

    /// Starts a server with the defaults (one node, admin user, no images).
    pub fn start() -> Result<ApiServer, Error> {
        Builder::default().start()
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr.parse().expect("the server address is an ip:port")
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.shared.addr)
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The admin kubeconfig (written at start).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A directory that lives as long as the server (kubectl's cache, scratch files).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn token_for(&self, user: &str) -> Option<String> {
        self.shared.rbac().token_of(user)
    }

    /// Writes a kubeconfig whose current context is `user` (every user has a
    /// context `<user>@tlsspy-test` in it) and returns its path.
    pub fn kubeconfig_for(&self, user: &str) -> Result<PathBuf, Error> {
        let path = self.dir.path().join(format!("kubeconfig-{user}"));
        self.write_kubeconfig(user, &path)?;
        Ok(path)
    }

    /// Writes a kubeconfig for `user` at `path`.
    pub fn write_kubeconfig(&self, user: &str, path: &std::path::Path) -> Result<(), Error> {
        if self.token_for(user).is_none() {
            return Err(Error::NoSuchUser(user.into()));
        }
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        let mut users = String::new();
        let mut contexts = String::new();
        let mut names: Vec<String> = self.users();
        names.sort();
        for u in &names {
            let t = self.token_for(u).unwrap_or_default();
            users.push_str(&format!("- name: {u}\n  user:\n    token: {t}\n"));
            contexts.push_str(&format!(
                "- name: {u}@{CLUSTER}\n  context:\n    cluster: {CLUSTER}\n    user: {u}\n    namespace: default\n"
            ));
        }
        let text = format!(
            "apiVersion: v1\nkind: Config\npreferences: {{}}\nclusters:\n- name: {CLUSTER}\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {ca}\nusers:\n{users}contexts:\n{contexts}current-context: {user}@{CLUSTER}\n",
            self.url()
        );
        std::fs::write(path, text).map_err(|source| Error::Kubeconfig { path: path.into(), source })
    }

    fn users(&self) -> Vec<String> {
        // Users are found through their tokens; the admin and every added user have one.
        let rbac = self.shared.rbac();
        let mut names = vec![ADMIN.to_string()];
        names.extend(rbac.user_names());
        names.sort();
        names.dedup();
        names
    }

    /// Adds a user at run time; returns its token.
    pub fn add_user(&self, name: &str, rules: &[Rule]) -> String {
        let t = token();
        let mut rb = self.shared.rbac.write().unwrap_or_else(|e| e.into_inner());
        rb.add_user(name, &t, &["system:authenticated"]);
        for r in rules {
            rb.allow(name, r.clone());
        }
        t
    }

    /// Grants a user one more rule.
    pub fn allow(&self, user: &str, rule: Rule) {
        self.shared.rbac.write().unwrap_or_else(|e| e.into_inner()).allow(user, rule);
    }

    /// Takes every rule from a user.
    pub fn revoke_all(&self, user: &str) {
        self.shared.rbac.write().unwrap_or_else(|e| e.into_inner()).revoke_all(user);
    }

    /// Maps an image name to what it runs (pods pulling it retry and then start).
    pub fn set_image(&self, name: &str, image: Image) {
        self.shared.images.write().unwrap_or_else(|e| e.into_inner()).insert(name, image);
    }

    /// Creates a namespace with labels.
    pub fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<Value, status::ApiError> {
        let labels: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.shared
            .store
            .create(resources::by_name("", "namespaces").expect("built-in"), namespace_object(name, &labels))
    }

    /// Direct access to stored objects (no RBAC, no admission).
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// A stored object by group, plural, namespace and name.
    pub fn get(&self, group: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let res = resources::by_name(group, plural)?;
        self.shared.store.get(res, ns, name).ok()
    }

    pub fn pod(&self, ns: &str, name: &str) -> Option<Value> {
        self.get("", "pods", ns, name)
    }

    /// Host pid of a running container's main process.
    pub fn container_pid(&self, ns: &str, pod: &str, container: &str) -> Option<u32> {
        let c = self.shared.kubelet.pod(ns, pod)?.container(container)?;
        c.is_running().then_some(c.pid)
    }

    /// Pids of every running container's main process.
    pub fn running_pids(&self) -> Vec<u32> {
        self.shared.kubelet.all_pids()
    }

    /// Waits (polling, up to `timeout`) until the pod satisfies `cond`; returns it.
    pub fn wait_pod(
        &self,
        ns: &str,
        name: &str,
        timeout: Duration,
        cond: impl Fn(Option<&Value>) -> bool,
    ) -> Option<Option<Value>> {
        let until = std::time::Instant::now() + timeout;
        loop {
            let p = self.pod(ns, name);
            if cond(p.as_ref()) {
                return Some(p);
            }
            if std::time::Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The shared state, for tests that drive handlers directly.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.kubelet.kill_all();
        if let Some(rt) = self.runtime.take() {
            // Works inside and outside async contexts (tests use both).
            rt.shutdown_background();
        }
        self.shared.kubelet.remove_cgroups_blocking(Duration::from_secs(2));
    }
}

async fn serve(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor, shared: Arc<Shared>) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    log::debug!("TLS handshake: {e}");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req| http::handle(shared.clone(), req));
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).with_upgrades();
            if let Err(e) = conn.await {
                log::debug!("connection: {e}");
            }
        });
    }
}

fn namespace_object(name: &str, labels: &[(String, String)]) -> Value {
    let mut l = serde_json::Map::new();
    for (k, v) in labels {
        l.insert(k.clone(), json!(v));
    }
    l.insert("kubernetes.io/metadata.name".into(), json!(name));
    json!({
        "metadata": {"name": name, "labels": l},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

fn node_object(name: &str) -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let now = time::now();
    let arch = if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" };
    let condition = |t: &str, s: &str, reason: &str, msg: &str| json!({"type": t, "status": s, "reason": reason, "message": msg, "lastHeartbeatTime": now, "lastTransitionTime": now});
    json!({
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch,
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": arch,
            },
        },
        "spec": {},
        "status": {
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": NODE_IP}, {"type": "Hostname", "address": name}],
            "capacity": {"cpu": cpus.to_string(), "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"},
            "allocatable": {"cpu": cpus.to_string(), "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": kernel,
                "osImage": "tlsspy test node",
                "containerRuntimeVersion": "containerd://1.7.24",
                "kubeletVersion": "v1.33.0",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch,
            },
        },
    })
}
