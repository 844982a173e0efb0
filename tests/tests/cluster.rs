//! `kubectl-tlsspy` in cluster mode, end to end, against the test API
//! server: its kubelet runs the spy pod's `tlsspy-agent` for real (root,
//! eBPF) and the target pods as real processes in containerd-named cgroups.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spy_protocol::record::{Line, PodRef, Record};
use tlsspy_tests::apiserver::{resources, ApiServer, Image, Rule};
use tlsspy_tests::support::*;

const WAIT: Duration = Duration::from_secs(30);
/// The spy's heartbeat timeout in these tests (the default is 10 s).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// A reaper told "done" exits at once; this is "at once" with scheduling slack.
const REAPER_DONE: Duration = Duration::from_millis(500);
const NO_BTF_IMAGE: &str = "ghcr.io/tlsspy/tlsspy-agent:no-btf";

fn agent_image() -> String {
    format!("ghcr.io/tlsspy/tlsspy-agent:v{}", spy_protocol::VERSION)
}

fn server() -> ApiServer {
    let agent = workspace_bin("tlsspy-agent");
    ApiServer::builder()
        .image(&agent_image(), Image::executable(&agent))
        // The same agent on a "node" whose kernel has no BTF.
        .image(NO_BTF_IMAGE, Image::executable(&agent).with_env("TLSSPY_BTF_PATH", "/nonexistent/vmlinux"))
        .image("python:3", Image::host())
        .namespace("locked", &[("pod-security.kubernetes.io/enforce", "baseline")])
        .user("viewer", &[Rule::new(&["get", "list", "watch"], &["pods"])])
        .start()
        .expect("test API server starts")
}

fn kubectl(server: &ApiServer, args: &[&str], stdin: &str) {
    let mut child = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .env("HOME", server.dir())
        .arg("--kubeconfig")
        .arg(server.kubeconfig_path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("kubectl");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A pod running the python HTTPS server fixture on `port`.
fn https_pod(server: &ApiServer, name: &str, labels: Value, cert: &Certificate, port: u16) {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [{
            "name": "main", "image": "python:3",
            "command": ["python3", fixture("https_server.py"), port.to_string(), cert.cert(), cert.key()],
        }]},
    });
    kubectl(server, &["create", "--validate=false", "-f", "-"], &pod.to_string());
    let running = server.wait_pod("default", name, WAIT, |p| {
        p.and_then(|p| p.pointer("/status/phase")).and_then(Value::as_str) == Some("Running")
    });
    assert!(running.is_some(), "pod {name} never ran");
    wait_for_port(port, WAIT);
}

fn curl(cert: &Certificate, port: u16, path: &str) {
    let out = Command::new("curl")
        .args(["-s", "--http1.1", "--cacert"])
        .arg(cert.cert())
        .arg(format!("https://127.0.0.1:{port}/{path}"))
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("hello {path}\n"));
}

/// Spy pods in the store (any namespace).
fn spy_pods(server: &ApiServer) -> Vec<Value> {
    let res = resources::by_name("", "pods").expect("pods");
    server
        .store()
        .list(res, None, |p| {
            p.pointer("/metadata/labels/app.kubernetes.io~1managed-by") == Some(&json!("kubectl-tlsspy"))
        })
        .0
}

fn spy_pid(server: &ApiServer) -> u32 {
    let until = Instant::now() + WAIT;
    loop {
        if let Some(pid) = spy_pods(server).iter().find_map(|p| {
            let ns = p.pointer("/metadata/namespace").and_then(Value::as_str)?;
            let name = p.pointer("/metadata/name").and_then(Value::as_str)?;
            server.container_pid(ns, name, "tlsspy")
        }) {
            return pid;
        }
        assert!(Instant::now() < until, "no spy process");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The session id of the (one) spy pod.
fn session_of(server: &ApiServer) -> String {
    let pods = spy_pods(server);
    let session = pods.first().and_then(|p| p.pointer("/metadata/labels/tlsspy.io~1session")).and_then(Value::as_str);
    session.expect("a spy pod with a session label").to_string()
}

/// Live reaper processes of `session`.
fn reapers(session: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let words: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            alive(pid) && words.contains(&&b"__reap"[..]) && words.contains(&session.as_bytes())
        })
        .collect()
}

/// (session id, controlling terminal) of a process, from /proc/PID/stat.
fn session_and_tty(pid: u32) -> (u32, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // After "(comm)": state ppid pgrp session tty_nr …
    let fields: Vec<&str> = stat.rsplit_once(") ").expect("comm").1.split(' ').collect();
    (fields[3].parse().expect("session"), fields[4].parse().expect("tty_nr"))
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn wait_until(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let until = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < until, "{what} after {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The plugin running in the background, stdout and stderr collected.
struct Plugin {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Plugin {
    fn start(server: &ApiServer, kubeconfig: &Path, args: &[&str]) -> Plugin {
        let mut child = Command::new(workspace_bin("kubectl-tlsspy"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--heartbeat-timeout", &format!("{}s", HEARTBEAT_TIMEOUT.as_secs()), "--timeout", "20s"])
            .args(args)
            .env("HOME", server.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl-tlsspy runs");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                eprint!("{text}");
                sink.lock().expect("lock").push_str(&text);
            }
        });
        Plugin { child: Some(child), lines, seen: Vec::new(), stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Waits for a record satisfying `cond`.
    fn wait_record(&mut self, what: &str, cond: impl Fn(&Record) -> bool) -> Record {
        let until = Instant::now() + WAIT;
        let matches = |line: &str| serde_json::from_str::<Line>(line).ok().map(|l| l.record).filter(|r| cond(r));
        if let Some(found) = self.seen.iter().find_map(|l| matches(l)) {
            return found;
        }
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = matches(&line);
                    self.seen.push(line);
                    if let Some(found) = found {
                        return found;
                    }
                }
                Err(_) => panic!("no {what} record; stderr:\n{}\nstdout:\n{}", self.stderr(), self.seen.join("\n")),
            }
        }
    }

    /// Collects the rest of stdout (after the plugin exited).
    fn drain(&mut self) {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
    }

    fn wait_stderr(&self, needle: &str) {
        let until = Instant::now() + WAIT;
        while !self.stderr().contains(needle) {
            assert!(Instant::now() < until, "stderr never said {needle:?}:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, signal) };
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = wait_timeout(child, timeout)
            .unwrap_or_else(|| panic!("the plugin did not exit; stderr:\n{}", self.stderr()));
        self.child = None;
        status
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn target_in(pod: &str) -> impl Fn(&Record) -> bool + '_ {
    move |r| matches!(r, Record::Target(t) if t.probed && t.pod.as_ref().is_some_and(|p| p.name == pod))
}

fn exchange_with(mark: &str) -> impl Fn(&Record) -> bool + '_ {
    move |r| matches!(r, Record::Exchange(e) if e.request.as_ref().is_some_and(|q| q.path.contains(mark)))
}

fn pod_of(record: &Record) -> Option<PodRef> {
    match record {
        Record::Exchange(e) => e.conn.pod.clone(),
        Record::Target(t) => t.pod.clone(),
        _ => None,
    }
}

fn main_of(name: &str) -> Option<PodRef> {
    Some(PodRef { namespace: "default".into(), name: name.into(), container: Some("main".into()) })
}

#[test]
fn pod_by_name_shows_its_https_exchange_with_pod_names() {
    if !require_root("pod_by_name_shows_its_https_exchange_with_pod_names") {
        return;
    }
    let s = server();
    let cert = Certificate::new();
    let port = free_port();
    https_pod(&s, "web", json!({"app": "web"}), &cert, port);
    let mut plugin = Plugin::start(&s, &s.kubeconfig_path(), &["pod/web", "-o", "json"]);
    plugin.wait_record("target", target_in("web"));
    let spy = spy_pid(&s);
    let pod = &spy_pods(&s)[0];
    assert_eq!(pod["spec"]["nodeName"], "node-1");
    assert_eq!(pod["spec"]["hostPID"], true);
    assert!(pod["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("tlsspy-")));

    let mark = marker("cluster");
    curl(&cert, port, &mark);
    let exchange = plugin.wait_record("exchange", exchange_with(&mark));
    assert_eq!(pod_of(&exchange), main_of("web"));
    let Record::Exchange(exchange) = exchange else { unreachable!() };
    assert_eq!(exchange.response.as_ref().map(|r| r.status), Some(200));
    let conn_id = exchange.conn.id.clone();
    plugin.wait_record("handshake", |r| matches!(r, Record::Handshake(h) if h.conn.id == conn_id && h.decrypted));

    plugin.signal(libc::SIGINT);
    let status = plugin.wait(WAIT);
    assert!(status.success(), "{status:?}: {}", plugin.stderr());
    plugin.drain();
    assert!(plugin.seen.iter().any(|l| l.contains(r#""kind":"bye""#)), "the spy said bye");
    wait_until("the spy process is still alive", WAIT, || !alive(spy));
    wait_until("the spy pod is still there", WAIT, || spy_pods(&s).is_empty());
    let stderr = plugin.stderr();
    assert!(stderr.contains("spying on default/web (container main) on node node-1"), "{stderr}");
    // The session's stats line sums every spy's counters, the handshake
    // capture's included (it once dropped them, and said nothing of them).
    let stats = stderr.lines().find(|l| l.starts_with("tlsspy: ") && l.contains("TLS calls captured"));
    let handshakes = stats
        .and_then(|l| l.split_once(" TLS handshakes seen ("))
        .and_then(|(before, after)| Some((before.rsplit(' ').next()?.parse::<u64>().ok()?, after)))
        .and_then(|(seen, after)| Some((seen, after.split(' ').next()?.parse::<u64>().ok()?)));
    assert!(handshakes.is_some_and(|(seen, decrypted)| seen >= 1 && decrypted >= 1), "{stats:?}");
}

/// Peers are named: the server sees its client by pod name, the client sees
/// the server by the name of the service whose ClusterIP it dialled.
#[test]
fn peers_are_named_by_pod_and_by_service() {
    if !require_root("peers_are_named_by_pod_and_by_service") {
        return;
    }
    let s = server();
    let cert = Certificate::new();
    let port = free_port();
    // A ClusterIP that reaches the server: loopback's whole 127/8 is local,
    // and the server listens on every address (no kube-proxy here).
    let cluster_ip = "127.2.0.1";
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web-svc"},
        "spec": {"clusterIP": cluster_ip, "selector": {"app": "web"}, "ports": [{"port": port}]},
    });
    kubectl(&s, &["create", "--validate=false", "-f", "-"], &service.to_string());
    let web = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [{
            "name": "main", "image": "python:3",
            "command": ["python3", fixture("https_server.py"), port.to_string(), cert.cert(), cert.key(), "--bind", "0.0.0.0"],
        }]},
    });
    kubectl(&s, &["create", "--validate=false", "-f", "-"], &web.to_string());
    wait_for_port(port, WAIT);
    // The client dials the service from its own pod IP, over and over.
    let mark = marker("peer");
    let script = format!(
        "while :; do curl -sk --http1.1 --interface \"$POD_IP\" https://{cluster_ip}:{port}/{mark} >/dev/null; sleep 0.2; done"
    );
    let client = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client", "labels": {"app": "client"}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [{
            "name": "main", "image": "python:3", "command": ["sh", "-c", script],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        }]},
    });
    kubectl(&s, &["create", "--validate=false", "-f", "-"], &client.to_string());
    let running = s.wait_pod("default", "client", WAIT, |p| {
        p.and_then(|p| p.pointer("/status/phase")).and_then(Value::as_str) == Some("Running")
    });
    let client_ip =
        running.flatten().and_then(|p| p.pointer("/status/podIP").and_then(Value::as_str).map(String::from));
    let client_ip = client_ip.expect("the client pod has an IP");

    let mut plugin = Plugin::start(&s, &s.kubeconfig_path(), &["pod/web", "pod/client", "-o", "json"]);
    let in_pod = |pod: &'static str| {
        let mark = mark.clone();
        move |r: &Record| exchange_with(&mark)(r) && pod_of(r).is_some_and(|p| p.name == pod)
    };
    let served = plugin.wait_record("the server's exchange", in_pod("web"));
    let Record::Exchange(served) = served else { unreachable!() };
    assert_eq!(served.conn.remote.map(|a| a.ip().to_string()), Some(client_ip.clone()));
    assert_eq!(served.conn.remote_name.as_deref(), Some("default/client"), "{:?}", served.conn);
    let sent = plugin.wait_record("the client's exchange", in_pod("client"));
    let Record::Exchange(sent) = sent else { unreachable!() };
    assert_eq!(sent.conn.remote.map(|a| a.to_string()), Some(format!("{cluster_ip}:{port}")));
    assert_eq!(sent.conn.remote_name.as_deref(), Some("default/web-svc"), "{:?}", sent.conn);

    plugin.signal(libc::SIGINT);
    let status = plugin.wait(WAIT);
    assert!(status.success(), "{status:?}: {}", plugin.stderr());
    let stderr = plugin.stderr();
    assert!(!stderr.contains("peers are not named"), "the admin may list everything: {stderr}");
}

#[test]
fn follow_picks_up_new_pods_and_lets_go_of_deleted_ones() {
    if !require_root("follow_picks_up_new_pods_and_lets_go_of_deleted_ones") {
        return;
    }
    let s = server();
    let cert = Certificate::new();
    let (port1, port2) = (free_port(), free_port());
    https_pod(&s, "api-1", json!({"app": "api"}), &cert, port1);
    https_pod(&s, "other", json!({"app": "other"}), &cert, free_port());
    let mut plugin = Plugin::start(&s, &s.kubeconfig_path(), &["-l", "app=api", "--follow", "-o", "json"]);
    plugin.wait_record("target api-1", target_in("api-1"));

    // A pod that starts matching later is spied on by the same spy.
    https_pod(&s, "api-2", json!({"app": "api"}), &cert, port2);
    plugin.wait_record("target api-2", target_in("api-2"));
    assert_eq!(spy_pods(&s).len(), 1, "one spy pod per node");
    let mark2 = marker("second");
    curl(&cert, port2, &mark2);
    assert_eq!(pod_of(&plugin.wait_record("exchange on api-2", exchange_with(&mark2))), main_of("api-2"));

    // A deleted pod is let go; the session goes on.
    kubectl(&s, &["delete", "pod", "api-1", "--wait=false"], "");
    plugin.wait_stderr("default/api-1 is gone");
    let mark3 = marker("after");
    curl(&cert, port2, &mark3);
    assert_eq!(pod_of(&plugin.wait_record("exchange after the delete", exchange_with(&mark3))), main_of("api-2"));
    assert!(!plugin.seen.iter().any(|l| l.contains("\"other\"")), "pods that do not match stay out");

    plugin.signal(libc::SIGTERM);
    assert!(plugin.wait(WAIT).success());
    wait_until("the spy pod is still there", WAIT, || spy_pods(&s).is_empty());
}

#[test]
fn spies_go_away_after_duration_sigint_sigterm_and_sigkill() {
    if !require_root("spies_go_away_after_duration_sigint_sigterm_and_sigkill") {
        return;
    }
    let s = server();
    let cert = Certificate::new();
    https_pod(&s, "web", json!({"app": "web"}), &cert, free_port());
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
                 "spec": {"containers": [{"name": "main", "image": "python:3"}]}}},
    });
    kubectl(&s, &["create", "--validate=false", "-f", "-"], &deployment.to_string());
    let kc = s.kubeconfig_path();

    // --duration: a normal end. (A deployment's pods are its targets.)
    let mut plugin = Plugin::start(&s, &kc, &["deploy/web", "-o", "json", "--duration", "3s"]);
    plugin.wait_record("target", target_in("web"));
    let spy = spy_pid(&s);
    let session = session_of(&s);
    assert!(plugin.wait(WAIT).success(), "{}", plugin.stderr());
    // The plugin removed its pods and said so: its reaper ends at once.
    wait_until("the reaper outlived a normal end", REAPER_DONE, || reapers(&session).is_empty());
    wait_until("the spy survived --duration", WAIT, || !alive(spy));
    wait_until("the spy pod survived --duration", WAIT, || spy_pods(&s).is_empty());

    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut plugin = Plugin::start(&s, &kc, &["web", "-o", "json"]);
        plugin.wait_record("target", target_in("web"));
        let spy = spy_pid(&s);
        let session = session_of(&s);
        plugin.signal(signal);
        assert!(plugin.wait(WAIT).success(), "signal {signal}: {}", plugin.stderr());
        wait_until("the reaper outlived a signal", REAPER_DONE, || reapers(&session).is_empty());
        wait_until("the spy survived a signal", WAIT, || !alive(spy));
        wait_until("the spy pod survived a signal", WAIT, || spy_pods(&s).is_empty());
    }

    // SIGKILL: the plugin cannot clean up; its reaper sees their pipe close
    // and deletes the pod, and the spy ends with its pod (or on stdin EOF).
    let mut plugin = Plugin::start(&s, &kc, &["web", "-o", "json"]);
    plugin.wait_record("target", target_in("web"));
    let spy = spy_pid(&s);
    let session = session_of(&s);
    let reaper = reapers(&session);
    assert_eq!(reaper.len(), 1, "one reaper per session");
    // Its own session, no terminal: Ctrl-C and a closed terminal reach the
    // plugin, which cleans up by itself, and not its reaper.
    let (sid, tty) = session_and_tty(reaper[0]);
    assert_eq!((sid, tty), (reaper[0], 0), "the reaper leads a session of its own, without a terminal");
    let killed = Instant::now();
    plugin.signal(libc::SIGKILL);
    plugin.wait(WAIT);
    wait_until("the spy outlived its plugin", HEARTBEAT_TIMEOUT, || !alive(spy));
    let left = HEARTBEAT_TIMEOUT.saturating_sub(killed.elapsed());
    wait_until("the spy pod outlived its plugin", left, || spy_pods(&s).is_empty());
    eprintln!("spy and spy pod gone {:?} after the plugin was killed", killed.elapsed());
    wait_until("the reaper did not end", WAIT, || reapers(&session).is_empty());
    assert!(!plugin.stderr().contains("cannot remove"), "the reaper had no trouble: {}", plugin.stderr());
}

#[test]
fn a_frozen_plugin_loses_its_spy_and_left_behind_pods_are_removed() {
    if !require_root("a_frozen_plugin_loses_its_spy_and_left_behind_pods_are_removed") {
        return;
    }
    let s = server();
    let cert = Certificate::new();
    https_pod(&s, "web", json!({}), &cert, free_port());
    let kc = s.kubeconfig_path();
    let mut frozen_plugin = Plugin::start(&s, &kc, &["pod/web", "-o", "json"]);
    frozen_plugin.wait_record("target", target_in("web"));
    let spy = spy_pid(&s);
    let session = session_of(&s);
    // A stopped plugin keeps its connection open but sends no heartbeat,
    // as when its network drops; its reaper waits, the pipe still open.
    frozen_plugin.signal(libc::SIGSTOP);
    let frozen = Instant::now();
    // The timeout, then the probes' detach (about 1 s), with slack for a busy machine.
    let ends_within = HEARTBEAT_TIMEOUT + Duration::from_secs(4);
    wait_until("the spy kept going without heartbeats", ends_within, || !alive(spy));
    eprintln!("spy ended {:?} after its plugin froze", frozen.elapsed());
    wait_until("the spy pod did not end", WAIT, || {
        spy_pods(&s).iter().all(|p| matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
    });
    assert_eq!(spy_pods(&s).len(), 1);

    // The next run removes the left-behind pod.
    let mut plugin = Plugin::start(&s, &kc, &["web", "-o", "json", "--duration", "1s"]);
    assert!(plugin.wait(WAIT).success(), "{}", plugin.stderr());
    assert!(plugin.stderr().contains("removed 1 spy pod(s) left behind by earlier sessions"), "{}", plugin.stderr());
    wait_until("spy pods remain", WAIT, || spy_pods(&s).is_empty());
    // The frozen plugin's reaper then has nothing to do, and says nothing.
    assert_eq!(reapers(&session).len(), 1, "the frozen plugin's reaper waits");
    frozen_plugin.signal(libc::SIGKILL);
    frozen_plugin.wait(WAIT);
    wait_until("the reaper did not end", WAIT, || reapers(&session).is_empty());
    assert!(!frozen_plugin.stderr().contains("cannot remove"), "{}", frozen_plugin.stderr());

    // `cleanup` removes ended spy pods.
    let left_behind = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "tlsspy-old", "labels": {
            "app.kubernetes.io/managed-by": "kubectl-tlsspy", "tlsspy.io/session": "0123456789ab"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "tlsspy", "image": "python:3", "command": ["/bin/true"]}]},
    });
    kubectl(&s, &["create", "--validate=false", "-f", "-"], &left_behind.to_string());
    let ended = s.wait_pod("default", "tlsspy-old", WAIT, |p| {
        p.and_then(|p| p.pointer("/status/phase")).and_then(Value::as_str) == Some("Succeeded")
    });
    assert!(ended.is_some(), "the left-behind pod never ended");
    let out = Command::new(workspace_bin("kubectl-tlsspy"))
        .arg("cleanup")
        // The left-behind pod is in `default`, not the spy namespace.
        .args(["-n", "default"])
        .arg("--kubeconfig")
        .arg(&kc)
        .output()
        .expect("cleanup runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, "pod/tlsspy-old deleted\n");
    wait_until("cleanup left the pod", WAIT, || spy_pods(&s).is_empty());
}

/// Runs the plugin to its end; returns (exit status, stderr).
fn run_to_end(server: &ApiServer, kubeconfig: &Path, args: &[&str]) -> (ExitStatus, String) {
    let mut plugin = Plugin::start(server, kubeconfig, args);
    let status = plugin.wait(WAIT);
    (status, plugin.stderr())
}

#[test]
fn failures_are_explained_in_one_sentence() {
    if !require_root("failures_are_explained_in_one_sentence") {
        return;
    }
    let s = server();
    let cert = Certificate::new();
    https_pod(&s, "web", json!({}), &cert, free_port());
    let admin = s.kubeconfig_path();

    let (status, err) = run_to_end(&s, &admin, &["pod/nope"]);
    assert!(!status.success());
    assert!(err.contains(r#"error: pod "nope" not found in namespace "default""#), "{err}");

    let viewer = s.kubeconfig_for("viewer").expect("viewer");
    let (status, err) = run_to_end(&s, &viewer, &["pod/web"]);
    assert!(!status.success());
    // The spy namespace is the dedicated `tlsspy`, not the targets'.
    assert!(err.contains("you are not allowed to create pods in namespace \"tlsspy\""), "{err}");
    assert!(err.contains("create pods/attach in namespace \"tlsspy\" (to talk to the spy pods)"), "{err}");
    assert!(err.contains("deploy/rbac.yaml"), "{err}");

    let (status, err) = run_to_end(&s, &admin, &["pod/web", "--spy-namespace", "locked"]);
    assert!(!status.success());
    assert!(err.contains("namespace \"locked\" does not allow the spy pod"), "{err}");
    assert!(err.contains("violates PodSecurity \"baseline:latest\""), "{err}");
    assert!(err.contains("--spy-namespace"), "{err}");

    let (status, err) = run_to_end(&s, &admin, &["pod/web", "--image", "ghcr.io/nobody/missing:v1"]);
    assert!(!status.success());
    assert!(err.contains("node node-1 cannot pull the spy image ghcr.io/nobody/missing:v1 (ErrImagePull"), "{err}");

    let (status, err) = run_to_end(&s, &admin, &["pod/web", "--image", NO_BTF_IMAGE]);
    assert!(!status.success());
    assert!(err.contains("error: the spy on node node-1 failed: this kernel has no BTF"), "{err}");

    // None of these left a spy pod behind.
    wait_until("spy pods remain", WAIT, || spy_pods(&s).is_empty());
}
