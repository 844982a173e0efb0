//! Who may see what, end to end against the test API server: tlsspy shows
//! a pod's plaintext only to a user who may `create pods/exec` (or
//! `pods/attach`) on that pod, checks it per pod by name (also for pods
//! `--follow` picks up later), and runs its spies in the `tlsspy`
//! namespace unless told otherwise.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spy_protocol::record::{Line, Record};
use tlsspy_tests::apiserver::{resources, ApiServer, Image, Rule};
use tlsspy_tests::support::*;

const WAIT: Duration = Duration::from_secs(30);
const PRIVILEGED: (&str, &str) = ("pod-security.kubernetes.io/enforce", "privileged");

/// What every user here may do: everything tlsspy needs (deploy/rbac.yaml:
/// read pods anywhere, run and attach to spies in `tlsspy`), plus exec on
/// the pods named in `exec` and attach on those in `attach`.
fn rules(exec: &[&str], attach: &[&str]) -> Vec<Rule> {
    let mut rules = vec![
        Rule::new(&["get", "list", "watch"], &["pods"]).groups(&[""]),
        Rule::new(&["get", "list", "watch", "create", "delete"], &["pods"]).groups(&[""]).in_namespace("tlsspy"),
        Rule::new(&["create", "get"], &["pods/attach"]).groups(&[""]).in_namespace("tlsspy"),
    ];
    if !exec.is_empty() {
        rules.push(Rule::new(&["create"], &["pods/exec"]).groups(&[""]).in_namespace("default").named(exec));
    }
    if !attach.is_empty() {
        rules.push(Rule::new(&["create"], &["pods/attach"]).groups(&[""]).in_namespace("default").named(attach));
    }
    rules
}

fn server(with_spy_namespace: bool) -> ApiServer {
    let agent = workspace_bin("tlsspy-agent");
    let mut builder = ApiServer::builder()
        .image(&format!("ghcr.io/tlsspy/tlsspy-agent:v{}", spy_protocol::VERSION), Image::executable(&agent))
        .image("python:3", Image::host())
        .user("alice", &rules(&["a"], &[]))
        .user("follower", &rules(&["a"], &["c"]))
        .user("nobody", &rules(&[], &[]));
    if with_spy_namespace {
        builder = builder.namespace("tlsspy", &[PRIVILEGED]);
    }
    builder.start().expect("test API server starts")
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

/// A running pod `name` (label app=web) serving HTTPS with python.
fn https_pod(server: &ApiServer, name: &str, cert: &Certificate) {
    let port = free_port();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
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

fn spy_pods(server: &ApiServer) -> Vec<Value> {
    let res = resources::by_name("", "pods").expect("pods");
    server
        .store()
        .list(res, None, |p| {
            p.pointer("/metadata/labels/app.kubernetes.io~1managed-by") == Some(&json!("kubectl-tlsspy"))
        })
        .0
}

/// The plugin in the background, its stdout lines and stderr collected.
struct Plugin {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// The stderr reader: joined once the plugin exited, so all it wrote
    /// is in `stderr` before a test looks.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Plugin {
    fn start(server: &ApiServer, kubeconfig: &Path, args: &[&str]) -> Plugin {
        let mut child = Command::new(workspace_bin("kubectl-tlsspy"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--heartbeat-timeout", "3s", "--timeout", "20s"])
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
        let stderr_reader = std::thread::spawn(move || {
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
        Plugin { child: Some(child), lines, seen: Vec::new(), stderr, stderr_reader: Some(stderr_reader) }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Waits for a probed target record of pod `name`.
    fn wait_target(&mut self, name: &str) {
        let until = Instant::now() + WAIT;
        loop {
            if self.seen.iter().any(|l| is_target_of(l, name)) {
                return;
            }
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no target record for {name}; stderr:\n{}", self.stderr()),
            }
        }
    }

    fn wait_stderr(&self, needle: &str) {
        let until = Instant::now() + WAIT;
        while !self.stderr().contains(needle) {
            assert!(Instant::now() < until, "stderr never said {needle:?}:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = wait_timeout(&mut child, WAIT).expect("the plugin ends on SIGTERM");
        self.join_stderr();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
            self.seen.push(line);
        }
        status
    }

    fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status =
            wait_timeout(&mut child, WAIT).unwrap_or_else(|| panic!("the plugin did not exit:\n{}", self.stderr()));
        self.join_stderr();
        status
    }

    fn join_stderr(&mut self) {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
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

fn is_target_of(line: &str, name: &str) -> bool {
    serde_json::from_str::<Line>(line).ok().is_some_and(
        |l| matches!(l.record, Record::Target(t) if t.probed && t.pod.as_ref().is_some_and(|p| p.name == name)),
    )
}

fn any_record_of(lines: &[String], name: &str) -> bool {
    lines.iter().any(|l| {
        serde_json::from_str::<Line>(l).ok().is_some_and(|l| match l.record {
            Record::Target(t) => t.pod.is_some_and(|p| p.name == name),
            Record::Exchange(e) => e.conn.pod.is_some_and(|p| p.name == name),
            _ => false,
        })
    })
}

#[test]
fn a_pod_the_user_may_not_exec_into_is_refused_by_name() {
    if !require_root("a_pod_the_user_may_not_exec_into_is_refused_by_name") {
        return;
    }
    let s = server(true);
    let cert = Certificate::new();
    https_pod(&s, "a", &cert);
    https_pod(&s, "b", &cert);
    let alice = s.kubeconfig_for("alice").expect("alice");
    let mut plugin = Plugin::start(&s, &alice, &["-l", "app=web", "-o", "json"]);
    plugin.wait_target("a");
    let stderr = plugin.stderr();
    assert!(
        stderr.contains(
            "tlsspy: you may not exec into default/b: tlsspy shows plaintext only to those who could read the \
             pod's memory; ask for create pods/exec"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("default/a:"), "a is allowed: {stderr}");
    // The spy runs in the dedicated namespace, not the targets'.
    let spies = spy_pods(&s);
    assert_eq!(spies.len(), 1);
    assert_eq!(spies[0]["metadata"]["namespace"], "tlsspy");
    assert!(plugin.stop().success(), "{}", plugin.stderr());
    assert!(!any_record_of(&plugin.seen, "b"), "b was refused, yet records name it:\n{}", plugin.seen.join("\n"));
}

#[test]
fn all_targets_refused_is_an_error_and_no_spy_pod_is_made() {
    if !require_root("all_targets_refused_is_an_error_and_no_spy_pod_is_made") {
        return;
    }
    let s = server(true);
    let cert = Certificate::new();
    https_pod(&s, "a", &cert);
    https_pod(&s, "b", &cert);
    let nobody = s.kubeconfig_for("nobody").expect("nobody");
    let mut plugin = Plugin::start(&s, &nobody, &["-l", "app=web", "-o", "json"]);
    let status = plugin.wait();
    let stderr = plugin.stderr();
    assert!(!status.success(), "{stderr}");
    for pod in ["a", "b"] {
        assert!(stderr.contains(&format!("you may not exec into default/{pod}: ")), "{stderr}");
    }
    assert!(stderr.contains("tlsspy may not show any of the 2 target pod(s) to you"), "{stderr}");
    assert!(spy_pods(&s).is_empty(), "a spy pod was made for refused targets");
    // By name too: pod/b alone is refused the same way.
    let mut plugin = Plugin::start(&s, &nobody, &["pod/b"]);
    assert!(!plugin.wait().success());
    assert!(plugin.stderr().contains("you may not exec into default/b: "), "{}", plugin.stderr());
    assert!(spy_pods(&s).is_empty());
}

#[test]
fn follow_reviews_every_new_pod() {
    if !require_root("follow_reviews_every_new_pod") {
        return;
    }
    let s = server(true);
    let cert = Certificate::new();
    https_pod(&s, "a", &cert);
    let follower = s.kubeconfig_for("follower").expect("follower");
    let mut plugin = Plugin::start(&s, &follower, &["-l", "app=web", "--follow", "-o", "json"]);
    plugin.wait_target("a");
    // b: no exec, no attach on it: refused when it appears.
    https_pod(&s, "b", &cert);
    plugin.wait_stderr("you may not exec into default/b: ");
    // c: attach (not exec) on it is enough.
    https_pod(&s, "c", &cert);
    plugin.wait_target("c");
    assert!(plugin.stop().success(), "{}", plugin.stderr());
    assert!(!any_record_of(&plugin.seen, "b"), "b was refused, yet records name it:\n{}", plugin.seen.join("\n"));
    assert_eq!(plugin.stderr().matches("you may not exec into default/b").count(), 1, "said once");
}

#[test]
fn the_spy_namespace_defaults_to_tlsspy_and_is_made_when_missing() {
    if !require_root("the_spy_namespace_defaults_to_tlsspy_and_is_made_when_missing") {
        return;
    }
    let s = server(false);
    let cert = Certificate::new();
    https_pod(&s, "a", &cert);
    assert!(s.get("", "namespaces", "", "tlsspy").is_none());
    let mut plugin = Plugin::start(&s, &s.kubeconfig_path(), &["pod/a", "-o", "json"]);
    plugin.wait_target("a");
    assert!(plugin.stderr().contains("tlsspy: created namespace \"tlsspy\" for the spy pods"), "{}", plugin.stderr());
    let namespace = s.get("", "namespaces", "", "tlsspy").expect("the plugin made namespace tlsspy");
    assert_eq!(namespace["metadata"]["labels"][PRIVILEGED.0], PRIVILEGED.1);
    let spies = spy_pods(&s);
    assert_eq!(spies.len(), 1);
    assert_eq!(spies[0]["metadata"]["namespace"], "tlsspy");
    assert!(plugin.stop().success(), "{}", plugin.stderr());

    // A namespace the user names is never made: it must exist.
    let mut plugin = Plugin::start(&s, &s.kubeconfig_path(), &["pod/a", "--spy-namespace", "spies"]);
    assert!(!plugin.wait().success());
    let stderr = plugin.stderr();
    assert!(stderr.contains("the spy namespace \"spies\" (--spy-namespace) does not exist"), "{stderr}");
    assert!(stderr.contains("kubectl create namespace spies"), "{stderr}");
    assert!(s.get("", "namespaces", "", "spies").is_none());
}
