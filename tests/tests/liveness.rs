//! Liveness and clean-up, end to end (root, eBPF): a session survives a
//! plugin whose stdout nobody reads; a spy that goes silent is given up and
//! its pod deleted; every way a session ends removes its pod, and the time
//! that takes is printed (`--nocapture`) for the notes. Local mode ends on
//! time (--duration, SIGTERM) and quietly under `| head`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spy_protocol::record::{Line, Record};
use tlsspy_tests::apiserver::{resources, ApiServer, Image};
use tlsspy_tests::support::*;

const WAIT: Duration = Duration::from_secs(30);
/// The spy's heartbeat timeout here (the default is 10 s).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// The plugin's silence timeout here (the default is 30 s).
const SILENCE_TIMEOUT: Duration = Duration::from_secs(3);
/// What ending a spy pod may take beyond its trigger: the delete, the
/// pod's 2 s grace period, the probes' detach (about 1 s), a busy machine.
const POD_GONE_SLACK: Duration = Duration::from_secs(8);

fn server() -> ApiServer {
    let agent = workspace_bin("tlsspy-agent");
    ApiServer::builder()
        .image(&format!("ghcr.io/tlsspy/tlsspy-agent:v{}", spy_protocol::VERSION), Image::executable(&agent))
        .image("python:3", Image::host())
        .start()
        .expect("test API server starts")
}

fn kubectl_create(server: &ApiServer, object: &Value) {
    let mut child = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .env("HOME", server.dir())
        .arg("--kubeconfig")
        .arg(server.kubeconfig_path())
        .args(["create", "--validate=false", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child.stdin.take().expect("stdin").write_all(object.to_string().as_bytes()).expect("write");
    let out = child.wait_with_output().expect("kubectl");
    assert!(out.status.success(), "kubectl create: {}", String::from_utf8_lossy(&out.stderr));
}

/// A pod "web" running the python HTTPS server fixture; returns its port.
fn https_pod(server: &ApiServer, cert: &Certificate) -> u16 {
    let port = free_port();
    kubectl_create(
        server,
        &json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [{
                "name": "main", "image": "python:3",
                "command": ["python3", fixture("https_server.py"), port.to_string(), cert.cert(), cert.key()],
            }]},
        }),
    );
    let running = server.wait_pod("default", "web", WAIT, |p| {
        p.and_then(|p| p.pointer("/status/phase")).and_then(Value::as_str) == Some("Running")
    });
    assert!(running.is_some(), "pod web never ran");
    wait_for_port(port, WAIT);
    port
}

fn curl(cert: &Certificate, port: u16, path: &str) {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--http1.1", "--cacert"])
        .arg(cert.cert())
        .arg(format!("https://127.0.0.1:{port}/{path}"))
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "curl {path}");
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

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn wait_until(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let until = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < until, "{what} after {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a pid this test started (or its spy's).
    unsafe { libc::kill(pid as i32, signal) };
}

/// The plugin in the background. Its stdout is handed back unread: a test
/// decides whether, and when, anyone reads it.
struct Plugin {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Plugin {
    fn start(server: &ApiServer, args: &[&str]) -> (Plugin, ChildStdout) {
        let mut child = Command::new(workspace_bin("kubectl-tlsspy"))
            .arg("--kubeconfig")
            .arg(server.kubeconfig_path())
            .args(["--heartbeat-timeout", &format!("{}s", HEARTBEAT_TIMEOUT.as_secs())])
            .args(["--silence-timeout", &format!("{}s", SILENCE_TIMEOUT.as_secs()), "--timeout", "20s"])
            .args(args)
            .env("HOME", server.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl-tlsspy runs");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                eprint!("{text}");
                sink.lock().expect("lock").push_str(&text);
            }
        });
        (Plugin { child, stderr }, stdout)
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    fn wait_stderr(&self, needle: &str) {
        wait_until(&format!("stderr never said {needle:?}"), WAIT, || self.stderr().contains(needle));
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        wait_timeout(&mut self.child, timeout)
            .unwrap_or_else(|| panic!("the plugin did not exit; stderr:\n{}", self.stderr()))
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads stdout lines into a channel, from now on.
fn read_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a record satisfying `cond` on `lines`.
fn wait_record(lines: &mpsc::Receiver<String>, what: &str, cond: impl Fn(&Record) -> bool) -> Record {
    let until = Instant::now() + WAIT;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| panic!("no {what} record"));
        if let Some(record) = serde_json::from_str::<Line>(&line).ok().map(|l| l.record).filter(&cond) {
            return record;
        }
    }
}

fn target_web(record: &Record) -> bool {
    matches!(record, Record::Target(t) if t.probed && t.pod.as_ref().is_some_and(|p| p.name == "web"))
}

/// kube's attach moves stdin and stdout in one loop: a plugin that stopped
/// reading its spy because its own stdout was full used to stop its
/// heartbeats too, and lost a healthy spy after the heartbeat timeout. Now
/// the session outlives a stdout nobody reads, and SIGTERM still ends it at
/// once (the pod first, then at most 2 s for the unread output).
#[test]
fn a_plugin_whose_stdout_nobody_reads_keeps_its_spy_and_still_ends_on_sigterm() {
    if !require_root("a_plugin_whose_stdout_nobody_reads_keeps_its_spy_and_still_ends_on_sigterm") {
        return;
    }
    let s = server();
    let cert = Certificate::new();
    let port = https_pod(&s, &cert);
    let (mut plugin, stdout) = Plugin::start(&s, &["pod/web", "-o", "json", "--max-body", "1MiB"]);
    plugin.wait_stderr("spying on default/web");
    let spy = spy_pid(&s);
    // Wait for the probes (the target record is in the unread pipe), then
    // fill the pipe (64 KiB) many times over: 200 KiB bodies.
    std::thread::sleep(Duration::from_secs(2));
    for n in 0..40 {
        curl(&cert, port, &format!("big/{}", 200_000 + n));
    }
    let blocked = Instant::now();
    // Three heartbeat timeouts with nobody reading our stdout.
    std::thread::sleep(HEARTBEAT_TIMEOUT * 3);
    assert!(alive(spy), "the spy ended while the plugin's stdout was blocked:\n{}", plugin.stderr());
    assert_eq!(spy_pods(&s).len(), 1);
    let stderr = plugin.stderr();
    assert!(!stderr.contains("no heartbeat") && !stderr.contains("error:"), "{stderr}");
    eprintln!("the spy was alive {:?} into a blocked stdout", blocked.elapsed());

    // SIGTERM with stdout still blocked: the pod goes at once, and the
    // plugin does not wait for ever for a reader.
    let termed = Instant::now();
    signal(plugin.child.id(), libc::SIGTERM);
    wait_until("the spy pod outlived SIGTERM", POD_GONE_SLACK, || spy_pods(&s).is_empty());
    let pod_gone = termed.elapsed();
    let status = plugin.wait(Duration::from_secs(10));
    let exited = termed.elapsed();
    eprintln!("SIGTERM with a blocked stdout: spy pod gone after {pod_gone:?}, plugin exited after {exited:?}");
    assert!(status.success(), "{status:?}: {}", plugin.stderr());
    drop(stdout);
    let stderr = plugin.stderr();
    // Every exchange reached the plugin (its queues hold 40 of these; that
    // what they cannot hold is dropped and counted is tested beside them).
    let end = stderr.lines().find(|l| l.contains("TLS calls captured")).unwrap_or_default();
    assert!(end.contains(" 40 exchanges"), "{stderr}");
    assert!(stderr.contains("stdout did not take the last records"), "{stderr}");
    assert!(!alive(spy), "the spy outlived its pod");
}

/// Unblocked again, the session goes on: nothing was lost but what the
/// queues could not hold, and new traffic still comes through.
#[test]
fn a_session_resumes_after_its_stdout_was_held() {
    if !require_root("a_session_resumes_after_its_stdout_was_held") {
        return;
    }
    let s = server();
    let cert = Certificate::new();
    let port = https_pod(&s, &cert);
    let (mut plugin, stdout) = Plugin::start(&s, &["pod/web", "-o", "json"]);
    plugin.wait_stderr("spying on default/web");
    std::thread::sleep(Duration::from_secs(2));
    for n in 0..200 {
        curl(&cert, port, &format!("held-{n}"));
    }
    std::thread::sleep(HEARTBEAT_TIMEOUT * 2);
    let lines = read_lines(stdout);
    wait_record(&lines, "target", target_web);
    let mark = marker("resumed");
    curl(&cert, port, &mark);
    wait_record(
        &lines,
        "exchange after the hold",
        |r| matches!(r, Record::Exchange(e) if e.request.as_ref().is_some_and(|q| q.path.contains(&mark))),
    );
    let interrupted = Instant::now();
    signal(plugin.child.id(), libc::SIGINT);
    wait_until("the spy pod outlived SIGINT", POD_GONE_SLACK, || spy_pods(&s).is_empty());
    eprintln!("SIGINT: spy pod gone after {:?}", interrupted.elapsed());
    assert!(plugin.wait(WAIT).success(), "{}", plugin.stderr());
}

/// A spy that sends nothing (stopped here with SIGSTOP: like a network cut,
/// its connection stays open) is given up after the silence timeout, and
/// its pod deleted: the plugin neither hangs nor leaves the pod behind.
#[test]
fn a_silent_spy_is_given_up_and_its_pod_deleted() {
    if !require_root("a_silent_spy_is_given_up_and_its_pod_deleted") {
        return;
    }
    let s = server();
    let cert = Certificate::new();
    https_pod(&s, &cert);
    let (mut plugin, stdout) = Plugin::start(&s, &["pod/web", "-o", "json"]);
    let lines = read_lines(stdout);
    wait_record(&lines, "target", target_web);
    let spy = spy_pid(&s);
    // An idle spy is not a silent one: it sends keep-alive stats.
    std::thread::sleep(SILENCE_TIMEOUT * 2);
    assert_eq!(spy_pods(&s).len(), 1, "an idle spy was given up:\n{}", plugin.stderr());

    signal(spy, libc::SIGSTOP);
    let silenced = Instant::now();
    wait_until("the silent spy's pod was not deleted", SILENCE_TIMEOUT + POD_GONE_SLACK, || spy_pods(&s).is_empty());
    let pod_gone = silenced.elapsed();
    let status = plugin.wait(WAIT);
    eprintln!(
        "silent spy: given up and its pod gone {pod_gone:?} after it went silent (timeout {SILENCE_TIMEOUT:?}); \
         plugin exited after {:?}",
        silenced.elapsed()
    );
    assert!(pod_gone >= SILENCE_TIMEOUT, "given up before the timeout: {pod_gone:?}");
    assert_eq!(status.code(), Some(1), "a lost spy is a failed session: {}", plugin.stderr());
    let stderr = plugin.stderr();
    assert!(stderr.contains("the spy on node node-1 sent nothing for 3s"), "{stderr}");
    assert!(stderr.contains("gave up on it and deleted its pod"), "{stderr}");
    signal(spy, libc::SIGKILL);
}

/// --duration: the pod goes when the duration is up.
#[test]
fn duration_ends_the_session_and_its_pod_on_time() {
    if !require_root("duration_ends_the_session_and_its_pod_on_time") {
        return;
    }
    let s = server();
    let cert = Certificate::new();
    https_pod(&s, &cert);
    let started = Instant::now();
    let (mut plugin, stdout) = Plugin::start(&s, &["pod/web", "-o", "json", "--duration", "5s"]);
    let lines = read_lines(stdout);
    wait_record(&lines, "target", target_web);
    let pod = spy_pods(&s).pop().expect("a spy pod");
    // --duration 5s + --timeout 20s + 60 s.
    assert_eq!(pod["spec"]["activeDeadlineSeconds"], 85, "{pod}");
    assert!(plugin.wait(WAIT).success(), "{}", plugin.stderr());
    wait_until("the spy pod outlived --duration", POD_GONE_SLACK, || spy_pods(&s).is_empty());
    eprintln!("--duration 5s: spy pod gone {:?} after the plugin started", started.elapsed());
}

// Local mode.

fn local(args: &[&str]) -> Command {
    let mut command = Command::new(workspace_bin("kubectl-tlsspy"));
    command.arg("local").args(args).stdin(Stdio::null());
    command
}

/// `--duration 1` ends the session after a second even when the command
/// would run on: the command gets SIGTERM (SIGKILL 2 s later). The second
/// counts from when the command is started under the probes; the bound
/// here counts from the spy's hello, just before the probes are attached:
/// one second, the attach, and the probes' detach at the end (about 1 s
/// each on this VM, more on a busy machine). The old way took over 5 s.
#[test]
fn local_duration_ends_on_time_with_its_command() {
    if !require_root("local_duration_ends_on_time_with_its_command") {
        return;
    }
    let started = Instant::now();
    let mut child = local(&["-o", "json", "--duration", "1", "--", "sleep", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let lines = read_lines(child.stdout.take().expect("stdout"));
    wait_record(&lines, "hello", |r| matches!(r, Record::Hello(_)));
    let up = Instant::now();
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("exits");
    let (took, total) = (up.elapsed(), started.elapsed());
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    eprintln!("local --duration 1 -- sleep 5: {took:?} from the spy's hello to exit, {total:?} in all");
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(took < Duration::from_secs(4), "{took:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// SIGTERM ends a local session at once, and its command with it.
#[test]
fn local_sigterm_ends_the_session_and_its_command() {
    if !require_root("local_sigterm_ends_the_session_and_its_command") {
        return;
    }
    let mut child = local(&["-o", "json", "--", "sleep", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let lines = read_lines(child.stdout.take().expect("stdout"));
    // The target record comes once the command runs under the probes.
    wait_record(&lines, "target", |r| matches!(r, Record::Target(_)));
    let sleeper = children_of(child.id());
    assert_eq!(sleeper.len(), 1, "one command: {sleeper:?}");
    let termed = Instant::now();
    signal(child.id(), libc::SIGTERM);
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("exits after SIGTERM");
    let took = termed.elapsed();
    eprintln!("local: SIGTERM to exit {took:?}");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(!alive(sleeper[0]), "the command outlived the session");
}

/// `| head -1`: a closed stdout is a normal end (exit 0), not an error and
/// never a panic (the summary table used to panic on it).
#[test]
fn local_under_head_exits_quietly() {
    if !require_root("local_under_head_exits_quietly") {
        return;
    }
    let cert = Certificate::new();
    let (_server, port) = python_https_server(&cert);
    let url = format!("https://127.0.0.1:{port}/head");
    let script = format!("curl -s -o /dev/null --cacert {} {url}; sleep 0.5", cert.cert().display());
    let mut child =
        local(&["--", "sh", "-c", &script]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("runs");
    // head -1: one line, then the pipe closes.
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    // Up to the exchange's line, so that what is left to write is the
    // summary table (which used to panic on a closed stdout).
    let mut first = String::new();
    while !first.contains("/head") {
        first.clear();
        assert!(stdout.read_line(&mut first).expect("a line") > 0, "no exchange line");
    }
    drop(stdout);
    let status = wait_timeout(&mut child, WAIT).expect("exits");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!stderr.contains("error") && !stderr.contains("panicked"), "{stderr}");
}

/// A stdout nobody reads does not hold the local session up: records go
/// through the render queue (dropped and counted when it is full), so
/// `--duration` ends the session, and its command, on time while the
/// output waits for its reader. Before the queue, the spy blocked on the
/// full pipe and noticed neither the duration nor the command.
#[test]
fn local_duration_holds_while_stdout_is_not_read() {
    if !require_root("local_duration_holds_while_stdout_is_not_read") {
        return;
    }
    const BODY: usize = 4 << 20;
    let cert = Certificate::new();
    let nginx = Nginx::start(&cert, &[BODY]);
    // 4 MiB of plaintext as --raw JSON: far more than a pipe holds.
    let script = format!(
        "curl -s --http1.1 -o /dev/null --cacert {} https://127.0.0.1:{}/bytes/{BODY}; exec sleep 30",
        cert.cert().display(),
        nginx.port
    );
    let started = Instant::now();
    let mut child = local(&["-o", "json", "--raw", "--duration", "3", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    std::thread::sleep(Duration::from_secs(1));
    let command = children_of(child.id());
    assert_eq!(command.len(), 1, "one command: {command:?}");
    // Nobody reads stdout; the command must still be ended at 3 s (plus
    // the probes' attach and the 2 s SIGTERM grace, on a busy machine).
    wait_until("the command outlived --duration while stdout was not read", Duration::from_secs(12), || {
        !alive(command[0])
    });
    let ended = started.elapsed();
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stdout.read_to_end(&mut sink);
        sink
    });
    let status = wait_timeout(&mut child, WAIT).expect("exits once its stdout is read");
    let out = reader.join().expect("reader");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    let end_line = stderr.lines().rfind(|l| l.starts_with("tlsspy: ")).unwrap_or_default().to_string();
    eprintln!(
        "local --duration 3, stdout unread: command ended after {ended:?}; {} bytes read after; {end_line}",
        out.len()
    );
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(out.len() > 1 << 20, "the records waited for their reader ({} bytes)", out.len());
    assert!(!stderr.contains("panicked"), "{stderr}");
}
