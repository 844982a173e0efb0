//! The test API server against real kubectl (subprocesses) and kube-rs.
//!
//! These tests run pods as real processes in cgroups, so they need root.
//! Without root they skip with a message, except under `CI=true`, where they fail.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::{json, Value};
use tlsspy_tests::apiserver::{ApiServer, Image, Rule};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(20);
/// kubectl 1.32 itself; `/usr/bin/kubectl` dispatches on the server's version.
const KUBECTL_132: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// False (after saying why) when the test cannot run here; panics under CI=true instead.
fn can_run(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root (cgroups, running pods as processes), and CI=true forbids skipping");
    }
    eprintln!("SKIPPED {test}: needs root (cgroups, running pods as processes); run as root or in CI");
    false
}

fn server() -> ApiServer {
    ApiServer::builder()
        .image("busybox", Image::host())
        .image("python:3", Image::host())
        .namespace("locked", &[("pod-security.kubernetes.io/enforce", "baseline")])
        .user("viewer", &[Rule::new(&["get", "list", "watch"], &["pods", "pods/log"])])
        .user(
            "attacher",
            &[Rule::new(&["get", "list", "watch", "create", "delete"], &["pods"]).in_namespace("default")],
        )
        .start()
        .expect("test API server starts")
}

/// Every kubectl here: the dispatcher on PATH and 1.32 itself when installed.
fn kubectls() -> Vec<String> {
    let mut v = vec![std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())];
    if Path::new(KUBECTL_132).exists() {
        v.push(KUBECTL_132.into());
    }
    v
}

fn kubectl_cmd(bin: &str, server: &ApiServer, kubeconfig: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    // HOME keeps kubectl's discovery cache in the server's directory.
    c.env("HOME", server.dir()).arg("--kubeconfig").arg(kubeconfig).args(args);
    c
}

fn kubectl(bin: &str, server: &ApiServer, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = kubectl_cmd(bin, server, kubeconfig, args);
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = ChildGuard(c.spawn().expect("kubectl runs"));
    {
        let mut w = child.0.stdin.take().expect("piped stdin");
        if let Some(s) = stdin {
            w.write_all(s.as_bytes()).expect("write kubectl stdin");
        }
    }
    let out = child.wait_output(Duration::from_secs(60));
    eprintln!(
        "$ {bin} {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Kills a child process when dropped (also on panic).
struct ChildGuard(Child);

impl ChildGuard {
    fn wait_output(&mut self, timeout: Duration) -> Output {
        let until = Instant::now() + timeout;
        loop {
            if let Some(_status) = self.0.try_wait().expect("try_wait") {
                break;
            }
            assert!(Instant::now() < until, "child did not finish in {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.0.wait().expect("wait");
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let Some(mut o) = self.0.stdout.take() {
            std::io::Read::read_to_end(&mut o, &mut stdout).expect("read stdout");
        }
        if let Some(mut e) = self.0.stderr.take() {
            std::io::Read::read_to_end(&mut e, &mut stderr).expect("read stderr");
        }
        Output { status, stdout, stderr }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn pod_json(name: &str, labels: Value, command: &[&str], extra: Value) -> String {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox", "command": command}]},
    });
    tlsspy_tests::apiserver::patch::merge_patch(&mut pod, &extra);
    pod.to_string()
}

fn wait_phase(server: &ApiServer, ns: &str, name: &str, phase: &str) -> Value {
    let got = server.wait_pod(ns, name, WAIT, |p| {
        p.and_then(|p| p.pointer("/status/phase")).and_then(Value::as_str) == Some(phase)
    });
    got.flatten().unwrap_or_else(|| panic!("pod {ns}/{name} never reached {phase}: {:#?}", server.pod(ns, name)))
}

fn wait_gone(server: &ApiServer, ns: &str, name: &str) {
    server.wait_pod(ns, name, WAIT, |p| p.is_none()).unwrap_or_else(|| panic!("pod {ns}/{name} was not removed"));
}

fn pid_alive(pid: u32) -> bool {
    // A zombie is gone for our purposes; the kubelet reaps its children.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn wait_pid_gone(pid: u32) {
    let until = Instant::now() + WAIT;
    while pid_alive(pid) {
        assert!(Instant::now() < until, "process {pid} still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kubectl_version_get_and_selectors() {
    if !can_run("kubectl_version_get_and_selectors") {
        return;
    }
    let s = server();
    let kc = s.kubeconfig_path();
    for bin in kubectls() {
        let v = kubectl(&bin, &s, &kc, &["version"], None);
        assert!(v.status.success());
        assert!(stdout(&v).contains("Server Version: v1.33.0"), "{}", stdout(&v));
    }
    let k = &kubectls()[0];
    let create = |name: &str, app: &str| {
        let o = kubectl(
            k,
            &s,
            &kc,
            &["create", "--validate=false", "-f", "-"],
            Some(&pod_json(name, json!({"app": app}), &["sleep", "300"], json!({}))),
        );
        assert!(o.status.success(), "{}", stderr(&o));
    };
    create("api-1", "api");
    create("web-1", "web");
    wait_phase(&s, "default", "api-1", "Running");
    wait_phase(&s, "default", "web-1", "Running");
    for bin in kubectls() {
        let o = kubectl(&bin, &s, &kc, &["get", "pods"], None);
        let out = stdout(&o);
        assert!(out.starts_with("NAME"), "{out}");
        assert!(out.lines().any(|l| l.starts_with("api-1 ") && l.contains("1/1") && l.contains("Running")), "{out}");
        let o = kubectl(&bin, &s, &kc, &["get", "pods", "-l", "app=api", "-o", "name"], None);
        assert_eq!(stdout(&o).trim(), "pod/api-1");
        let o = kubectl(&bin, &s, &kc, &["get", "pods", "-l", "app!=api,app notin (db)", "-o", "name"], None);
        assert_eq!(stdout(&o).trim(), "pod/web-1");
        let o = kubectl(&bin, &s, &kc, &["get", "pods", "-l", "app in (api,web)", "-o", "name"], None);
        assert_eq!(stdout(&o).lines().count(), 2);
        let o = kubectl(
            &bin,
            &s,
            &kc,
            &["get", "pods", "--field-selector", "spec.nodeName=node-1,metadata.name=web-1", "-o", "name"],
            None,
        );
        assert_eq!(stdout(&o).trim(), "pod/web-1");
        let o = kubectl(&bin, &s, &kc, &["get", "pod", "api-1", "-o", "json"], None);
        let pod: Value = serde_json::from_slice(&o.stdout).expect("pod JSON");
        assert_eq!(pod["status"]["phase"], "Running");
        let id = pod.pointer("/status/containerStatuses/0/containerID").and_then(Value::as_str).expect("containerID");
        let hex = id.strip_prefix("containerd://").expect("containerd id");
        assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_eq!(pod.pointer("/status/containerStatuses/0/ready"), Some(&json!(true)));
        assert_eq!(pod.pointer("/status/hostIP"), Some(&json!("127.0.0.1")));
        let o = kubectl(&bin, &s, &kc, &["get", "pod", "nope"], None);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("Error from server (NotFound): pods \"nope\" not found"), "{}", stderr(&o));
        let o = kubectl(&bin, &s, &kc, &["get", "nodes", "-o", "name"], None);
        assert_eq!(stdout(&o).trim(), "node/node-1");
    }
    let o = kubectl(
        k,
        &s,
        &kc,
        &["create", "--validate=false", "-f", "-"],
        Some(&pod_json("api-1", json!({}), &["true"], json!({}))),
    );
    assert!(
        stderr(&o).contains(
            "Error from server (AlreadyExists): error when creating \"STDIN\": pods \"api-1\" already exists"
        ),
        "{}",
        stderr(&o)
    );
}

#[test]
fn kubectl_container_cgroup_names_container_id() {
    if !can_run("kubectl_container_cgroup_names_container_id") {
        return;
    }
    let s = server();
    let kc = s.kubeconfig_path();
    let o = kubectl(
        &kubectls()[0],
        &s,
        &kc,
        &[
            "run",
            "target",
            "--image=python:3",
            "--restart=Never",
            "--command",
            "--",
            "python3",
            "-c",
            "import time; time.sleep(300)",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let pod = wait_phase(&s, "default", "target", "Running");
    let id = pod.pointer("/status/containerStatuses/0/containerID").and_then(Value::as_str).expect("containerID");
    let id = id.trim_start_matches("containerd://");
    let pid = s.container_pid("default", "target", "target").expect("running container");
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup of the container process");
    let uid = pod.pointer("/metadata/uid").and_then(Value::as_str).expect("uid");
    assert!(cgroup.lines().any(|l| l.ends_with(&format!("/kubepods/besteffort/pod{uid}/{id}"))), "{cgroup}");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(
        String::from_utf8_lossy(&cmdline).contains("time.sleep(300)"),
        "cmdline of {pid}: {:?}",
        String::from_utf8_lossy(&cmdline)
    );
}

#[test]
fn kubectl_watch_sees_added_then_deleted() {
    if !can_run("kubectl_watch_sees_added_then_deleted") {
        return;
    }
    let s = server();
    let kc = s.kubeconfig_path();
    for bin in kubectls() {
        let name = format!("w{}", kubectls().iter().position(|b| *b == bin).unwrap_or(0));
        let mut c = kubectl_cmd(&bin, &s, &kc, &["get", "pods", "-w", "--output-watch-events"]);
        c.stdout(Stdio::piped()).stderr(Stdio::null()).stdin(Stdio::null());
        let mut watch = ChildGuard(c.spawn().expect("kubectl watch runs"));
        let (tx, rx) = mpsc::channel();
        let out = watch.0.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Let the watch start before the pod exists.
        std::thread::sleep(Duration::from_millis(1500));
        let o = kubectl(
            &bin,
            &s,
            &kc,
            &["create", "--validate=false", "-f", "-"],
            Some(&pod_json(&name, json!({}), &["sleep", "300"], json!({}))),
        );
        assert!(o.status.success());
        wait_phase(&s, "default", &name, "Running");
        let o = kubectl(&bin, &s, &kc, &["delete", "pod", &name], None);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains(&format!("pod \"{name}\" deleted")));
        let mut seen = Vec::new();
        let until = Instant::now() + WAIT;
        while !seen.iter().any(|l: &String| l.starts_with("DELETED") && l.contains(&name)) {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => seen.push(l),
                Err(_) => panic!("no DELETED event for {name}; saw {seen:#?}"),
            }
        }
        let added = seen.iter().position(|l| l.starts_with("ADDED") && l.contains(&name)).expect("ADDED event");
        let deleted = seen.iter().position(|l| l.starts_with("DELETED") && l.contains(&name)).expect("DELETED event");
        assert!(added < deleted, "{seen:#?}");
        assert!(s.pod("default", &name).is_none());
    }
}

#[test]
fn kubectl_delete_kills_the_process() {
    if !can_run("kubectl_delete_kills_the_process") {
        return;
    }
    let s = server();
    let kc = s.kubeconfig_path();
    // A shell that ignores SIGTERM: deletion must escalate to SIGKILL after the grace period.
    let o = kubectl(
        &kubectls()[0],
        &s,
        &kc,
        &["create", "--validate=false", "-f", "-"],
        Some(&pod_json(
            "stubborn",
            json!({}),
            &["sh", "-c", "trap '' TERM; while :; do sleep 1; done"],
            json!({"spec": {"terminationGracePeriodSeconds": 2}}),
        )),
    );
    assert!(o.status.success());
    wait_phase(&s, "default", "stubborn", "Running");
    let pid = s.container_pid("default", "stubborn", "main").expect("pid");
    assert!(pid_alive(pid));
    let started = Instant::now();
    let o = kubectl(&kubectls()[0], &s, &kc, &["delete", "pod", "stubborn"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_pid_gone(pid);
    wait_gone(&s, "default", "stubborn");
    assert!(started.elapsed() >= Duration::from_secs(2), "SIGKILL came before the grace period ended");
}

#[test]
fn kubectl_attach_echoes_through_cat() {
    if !can_run("kubectl_attach_echoes_through_cat") {
        return;
    }
    let s = server();
    let kc = s.kubeconfig_path();
    for (i, bin) in kubectls().iter().enumerate() {
        let name = format!("cat{i}");
        let o = kubectl(
            bin,
            &s,
            &kc,
            &["create", "--validate=false", "-f", "-"],
            Some(&pod_json(
                &name,
                json!({}),
                &["cat"],
                json!({"spec": {"containers": [{"name": "main", "image": "busybox", "command": ["cat"], "stdin": true}]}}),
            )),
        );
        assert!(o.status.success());
        wait_phase(&s, "default", &name, "Running");
        let o = kubectl(bin, &s, &kc, &["attach", "-i", &name], Some("hello from kubectl\n"));
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("hello from kubectl"), "stdout: {}", stdout(&o));
        // kubectl closes stdin at its EOF (v5 CLOSE frame): cat ends, the pod succeeds.
        let pod = wait_phase(&s, "default", &name, "Succeeded");
        assert_eq!(pod.pointer("/status/containerStatuses/0/state/terminated/exitCode"), Some(&json!(0)));
        assert_eq!(pod.pointer("/status/containerStatuses/0/state/terminated/reason"), Some(&json!("Completed")));
    }
}

#[test]
fn kubectl_auth_can_i_and_forbidden() {
    if !can_run("kubectl_auth_can_i_and_forbidden") {
        return;
    }
    let s = server();
    let admin = s.kubeconfig_path();
    let viewer = s.kubeconfig_for("viewer").expect("viewer kubeconfig");
    let attacher = s.kubeconfig_for("attacher").expect("attacher kubeconfig");
    for bin in kubectls() {
        let o = kubectl(&bin, &s, &admin, &["auth", "can-i", "create", "pods"], None);
        assert_eq!((o.status.code(), stdout(&o).trim()), (Some(0), "yes"));
        let o = kubectl(&bin, &s, &viewer, &["auth", "can-i", "create", "pods"], None);
        assert_eq!((o.status.code(), stdout(&o).trim()), (Some(1), "no"));
        let o = kubectl(&bin, &s, &viewer, &["auth", "can-i", "list", "pods"], None);
        assert_eq!((o.status.code(), stdout(&o).trim()), (Some(0), "yes"));
        let o = kubectl(&bin, &s, &attacher, &["auth", "can-i", "create", "pods", "-n", "kube-system"], None);
        assert_eq!(stdout(&o).trim(), "no");
        let o = kubectl(&bin, &s, &attacher, &["auth", "can-i", "create", "pods", "--subresource=attach"], None);
        assert_eq!(stdout(&o).trim(), "no");
        s.allow("attacher", Rule::new(&["create", "get"], &["pods/attach"]).in_namespace("default"));
        let o = kubectl(&bin, &s, &attacher, &["auth", "can-i", "create", "pods", "--subresource=attach"], None);
        assert_eq!(stdout(&o).trim(), "yes");
        s.revoke_all("attacher");
        s.allow(
            "attacher",
            Rule::new(&["get", "list", "watch", "create", "delete"], &["pods"]).in_namespace("default"),
        );

        let o = kubectl(&bin, &s, &viewer, &["run", "x", "--image=busybox", "--restart=Never"], None);
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains(r#"Error from server (Forbidden): pods is forbidden: User "viewer" cannot create resource "pods" in API group "" in the namespace "default""#),
            "{}",
            stderr(&o)
        );
        let o = kubectl(&bin, &s, &viewer, &["get", "nodes"], None);
        assert!(
            stderr(&o).contains(
                r#"nodes is forbidden: User "viewer" cannot list resource "nodes" in API group "" at the cluster scope"#
            ),
            "{}",
            stderr(&o)
        );
    }
}

async fn client(server: &ApiServer, user: &str) -> Client {
    // Both rustls providers may be compiled in when other crates ask for aws-lc; pick ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = server.kubeconfig_for(user).expect("kubeconfig");
    let kc = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kube config");
    Client::try_from(config).expect("kube client")
}

fn pod(value: Value) -> Pod {
    serde_json::from_value(value).expect("a valid Pod")
}

async fn wait_phase_async(api: &Api<Pod>, name: &str, phase: &str) -> Pod {
    let cond = move |p: Option<&Pod>| p.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some(phase);
    let r = tokio::time::timeout(WAIT, kube::runtime::wait::await_condition(api.clone(), name, cond)).await;
    r.unwrap_or_else(|_| panic!("{name} never reached {phase}")).expect("watch").expect("pod exists")
}

fn kube_status(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_watcher_sees_adds_and_deletes() {
    if !can_run("kube_watcher_sees_adds_and_deletes") {
        return;
    }
    let s = server();
    let c = client(&s, "admin").await;
    let pods: Api<Pod> = Api::default_namespaced(c);
    for (i, cfg) in [watcher::Config::default(), watcher::Config::default().streaming_lists()].into_iter().enumerate() {
        let cfg = cfg.labels(&format!("round={i}"));
        let mut events = watcher(pods.clone(), cfg).boxed();
        // The initial list completes (empty) before anything exists.
        loop {
            match tokio::time::timeout(WAIT, events.try_next()).await.expect("watcher event").expect("watcher ok") {
                Some(watcher::Event::InitDone) => break,
                Some(_) => {}
                None => panic!("watch ended"),
            }
        }
        let p = pod(json!({
            "metadata": {"generateName": "gen-", "labels": {"round": i.to_string()}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "300"]}]},
        }));
        let created = pods.create(&PostParams::default(), &p).await.expect("create");
        let name = created.metadata.name.clone().expect("generated name");
        assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
        // Pods of another round are not seen.
        let other = pod(json!({"metadata": {"name": format!("other-{i}"), "labels": {"round": "x"}},
            "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sleep", "300"]}]}}));
        pods.create(&PostParams::default(), &other).await.expect("create other");
        wait_phase_async(&pods, &name, "Running").await;
        pods.delete(&name, &DeleteParams::default()).await.expect("delete");
        let (mut applied, mut deleted) = (false, false);
        while !deleted {
            let ev = tokio::time::timeout(WAIT, events.try_next())
                .await
                .expect("watcher event")
                .expect("watcher ok")
                .expect("stream");
            match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    assert_eq!(p.metadata.labels.as_ref().and_then(|l| l.get("round")), Some(&i.to_string()));
                    applied |= p.metadata.name.as_deref() == Some(&name);
                }
                watcher::Event::Delete(p) => {
                    assert_eq!(p.metadata.name.as_deref(), Some(name.as_str()));
                    deleted = true;
                }
                _ => {}
            }
        }
        assert!(applied, "no Apply before Delete");
    }
    // Listing with a field selector, as the plugin does per node.
    let list = pods.list(&ListParams::default().fields("spec.nodeName=node-1")).await.expect("list");
    assert!(list.items.iter().all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("node-1")));
    assert_eq!(list.items.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_attach_writes_reads_and_closes_stdin() {
    if !can_run("kube_attach_writes_reads_and_closes_stdin") {
        return;
    }
    let s = server();
    let c = client(&s, "admin").await;
    let pods: Api<Pod> = Api::default_namespaced(c);
    let p = pod(json!({
        "metadata": {"name": "echo"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "cat", "image": "busybox", "command": ["cat"], "stdin": true, "stdinOnce": true}]},
    }));
    pods.create(&PostParams::default(), &p).await.expect("create");
    wait_phase_async(&pods, "echo", "Running").await;
    let pid = s.container_pid("default", "echo", "cat").expect("pid");
    let mut att = pods
        .attach("echo", &AttachParams::default().container("cat").stdin(true).stdout(true).stderr(true))
        .await
        .expect("attach");
    let mut stdin = att.stdin().expect("stdin");
    let mut out = att.stdout().expect("stdout");
    stdin.write_all(b"hello\n").await.expect("write");
    let mut buf = vec![0u8; 6];
    tokio::time::timeout(WAIT, out.read_exact(&mut buf)).await.expect("echo in time").expect("read");
    assert_eq!(buf, b"hello\n");
    // kube sends stdin EOF only on shutdown(), not on drop.
    stdin.shutdown().await.expect("shutdown");
    let status = att.take_status().expect("status future");
    let done = wait_phase_async(&pods, "echo", "Succeeded").await;
    let st =
        done.status.and_then(|s| s.container_statuses).and_then(|c| c.into_iter().next()).expect("container status");
    assert_eq!(st.state.and_then(|s| s.terminated).map(|t| t.exit_code), Some(0));
    let status = tokio::time::timeout(WAIT, status).await.expect("status in time").expect("status sent");
    assert_eq!(status.status.as_deref(), Some("Success"));
    tokio::time::timeout(WAIT, att.join()).await.expect("join in time").expect("join");
    wait_pid_gone(pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_errors_forbidden_not_found_already_exists() {
    if !can_run("kube_errors_forbidden_not_found_already_exists") {
        return;
    }
    let s = server();
    let viewer: Api<Pod> = Api::default_namespaced(client(&s, "viewer").await);
    let admin: Api<Pod> = Api::default_namespaced(client(&s, "admin").await);
    let p = pod(
        json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sleep", "300"]}]}}),
    );
    let st = kube_status(viewer.create(&PostParams::default(), &p).await.expect_err("viewer may not create"));
    assert_eq!((st.code, st.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        st.message,
        r#"pods is forbidden: User "viewer" cannot create resource "pods" in API group "" in the namespace "default""#
    );
    admin.create(&PostParams::default(), &p).await.expect("admin creates");
    let st = kube_status(admin.create(&PostParams::default(), &p).await.expect_err("duplicate"));
    assert_eq!(
        (st.code, st.reason.as_str(), st.message.as_str()),
        (409, "AlreadyExists", r#"pods "x" already exists"#)
    );
    let st = kube_status(admin.get("nope").await.expect_err("missing"));
    assert_eq!((st.code, st.reason.as_str(), st.message.as_str()), (404, "NotFound", r#"pods "nope" not found"#));
    wait_phase_async(&admin, "x", "Running").await;
    let err = viewer.attach("x", &AttachParams::default().stdin(true)).await.err().expect("viewer may not attach");
    let text = format!("{err:?}");
    assert!(text.contains("403") || text.contains("Forbidden"), "{text}");
    let st = kube_status(viewer.delete("x", &DeleteParams::default()).await.expect_err("viewer may not delete"));
    assert_eq!(
        st.message,
        r#"pods "x" is forbidden: User "viewer" cannot delete resource "pods" in API group "" in the namespace "default""#
    );
    let nameless = pod(json!({"spec": {"containers": [{"name": "main", "image": "busybox"}]}}));
    let st = kube_status(admin.create(&PostParams::default(), &nameless).await.expect_err("no name"));
    assert_eq!((st.code, st.reason.as_str()), (422, "Invalid"));
    assert_eq!(st.message, r#"Pod "" is invalid: metadata.name: Required value: name or generateName is required"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_rejects_privileged_hostpid_pods() {
    if !can_run("pod_security_rejects_privileged_hostpid_pods") {
        return;
    }
    let s = server();
    let c = client(&s, "admin").await;
    let spy = json!({
        "metadata": {"generateName": "tlsspy-"},
        "spec": {
            "hostPID": true, "restartPolicy": "Never",
            "containers": [{"name": "spy", "image": "busybox", "command": ["sleep", "300"], "securityContext": {"privileged": true},
                            "volumeMounts": [{"name": "sys", "mountPath": "/sys"}]}],
            "volumes": [{"name": "sys", "hostPath": {"path": "/sys"}}],
        },
    });
    let locked: Api<Pod> = Api::namespaced(c.clone(), "locked");
    let st = kube_status(locked.create(&PostParams::default(), &pod(spy.clone())).await.expect_err("baseline rejects"));
    assert_eq!((st.code, st.reason.as_str()), (403, "Forbidden"));
    assert!(st.message.starts_with(r#"pods "tlsspy-"#), "{}", st.message);
    assert!(
        st.message.ends_with(r#" is forbidden: violates PodSecurity "baseline:latest": host namespaces (hostPID=true), hostPath volumes (volume "sys"), privileged (container "spy" must not set securityContext.privileged=true)"#),
        "{}",
        st.message
    );
    s.create_namespace("strict", &[("pod-security.kubernetes.io/enforce", "restricted")]).expect("namespace");
    let strict: Api<Pod> = Api::namespaced(c.clone(), "strict");
    let st =
        kube_status(strict.create(&PostParams::default(), &pod(spy.clone())).await.expect_err("restricted rejects"));
    assert!(
        st.message.contains(r#"violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#),
        "{}",
        st.message
    );
    let open: Api<Pod> = Api::default_namespaced(c);
    let created = open.create(&PostParams::default(), &pod(spy)).await.expect("default namespace is privileged");
    let name = created.metadata.name.expect("name");
    wait_phase_async(&open, &name, "Running").await;
}

#[test]
fn unknown_image_backs_off_and_deadline_fails_pod() {
    if !can_run("unknown_image_backs_off_and_deadline_fails_pod") {
        return;
    }
    let s = server();
    let kc = s.kubeconfig_path();
    let k = &kubectls()[0];
    let o = kubectl(
        k,
        &s,
        &kc,
        &["create", "--validate=false", "-f", "-"],
        Some(&pod_json(
            "pull",
            json!({}),
            &["true"],
            json!({"spec": {"containers": [{"name": "main", "image": "ghcr.io/nobody/missing:v1", "command": ["true"]}]}}),
        )),
    );
    assert!(o.status.success());
    let reason = |p: Option<&Value>| {
        p.and_then(|p| p.pointer("/status/containerStatuses/0/state/waiting/reason"))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let p = s
        .wait_pod("default", "pull", WAIT, |p| reason(p).as_deref() == Some("ImagePullBackOff"))
        .flatten()
        .expect("ImagePullBackOff");
    assert_eq!(p["status"]["phase"], "Pending");
    let o = kubectl(k, &s, &kc, &["get", "pod", "pull"], None);
    assert!(stdout(&o).contains("ImagePullBackOff"), "{}", stdout(&o));
    let o = kubectl(k, &s, &kc, &["get", "events", "--field-selector", "involvedObject.name=pull", "-o", "json"], None);
    let events: Value = serde_json::from_slice(&o.stdout).expect("events JSON");
    let warned = events["items"].as_array().into_iter().flatten().any(|e| {
        e["type"] == "Warning"
            && e["reason"] == "Failed"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Failed to pull image \"ghcr.io/nobody/missing:v1\""))
    });
    assert!(warned, "{events:#}");
    // Once the image exists, the pod starts on its next retry (not waited for here: back-off is 10 s).

    let o = kubectl(
        k,
        &s,
        &kc,
        &["create", "--validate=false", "-f", "-"],
        Some(&pod_json(
            "deadline",
            json!({}),
            &["sleep", "300"],
            json!({"spec": {"activeDeadlineSeconds": 2, "terminationGracePeriodSeconds": 1}}),
        )),
    );
    assert!(o.status.success());
    wait_phase(&s, "default", "deadline", "Running");
    let pid = s.container_pid("default", "deadline", "main").expect("pid");
    let p = wait_phase(&s, "default", "deadline", "Failed");
    assert_eq!(p["status"]["reason"], "DeadlineExceeded");
    assert_eq!(p["status"]["message"], "Pod was active on the node longer than the specified deadline");
    wait_pid_gone(pid);
    let p = s
        .wait_pod("default", "deadline", WAIT, |p| {
            p.and_then(|p| p.pointer("/status/containerStatuses/0/state/terminated")).is_some()
        })
        .flatten()
        .expect("terminated");
    assert_eq!(p.pointer("/status/containerStatuses/0/state/terminated/exitCode"), Some(&json!(143)));
}

#[test]
fn dropping_the_server_kills_its_processes() {
    if !can_run("dropping_the_server_kills_its_processes") {
        return;
    }
    let s = server();
    let kc = s.kubeconfig_path();
    let o = kubectl(
        &kubectls()[0],
        &s,
        &kc,
        &["create", "--validate=false", "-f", "-"],
        Some(&pod_json("long", json!({}), &["sleep", "300"], json!({}))),
    );
    assert!(o.status.success());
    wait_phase(&s, "default", "long", "Running");
    let pid = s.container_pid("default", "long", "main").expect("pid");
    let cgroups: Vec<PathBuf> = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("/kubepods/"))
        .map(|l| PathBuf::from(l.rsplit(':').next().unwrap_or_default()))
        .collect();
    assert!(!cgroups.is_empty());
    drop(s);
    wait_pid_gone(pid);
}
