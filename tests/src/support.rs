//! Helpers for end-to-end tests: finding our binaries, root checks that
//! fail in CI instead of skipping, TLS material, loopback servers, and
//! reading the record stream.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use spy_protocol::record::{Direction, Line, Record};

/// Where [`workspace_bin`] looks instead of next to the test executable:
/// worktrees that share one target dir overwrite each other's binaries
/// there, so each can copy its own builds aside.
pub const BIN_DIR_ENV: &str = "TLSSPY_BIN_DIR";

/// A built binary of this workspace (scripts/test.sh builds them first).
/// `TLSSPY_BIN_DIR` points elsewhere: a shared target dir whose binaries
/// another worktree's build may replace at any moment.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => exe.parent().and_then(Path::parent).expect("target dir").to_path_buf(),
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The built plugin, as a command to add arguments to.
pub fn plugin() -> Command {
    Command::new(workspace_bin("kubectl-tlsspy"))
}

/// Runs the plugin with no stdin; it must not panic, whatever its exit.
pub fn run_plugin(mut command: Command) -> std::process::Output {
    let output = command.stdin(Stdio::null()).output().expect("run kubectl-tlsspy");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "kubectl-tlsspy panicked:\n{stderr}");
    output
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// True when the test may go on as root. Outside CI a non-root run skips
/// with a message; in CI (CI=true) it fails, so nothing silently stops
/// being tested.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(!in_ci(), "{test} needs root and eBPF; CI runs as root, so this must not skip");
    eprintln!("SKIP {test}: needs root and eBPF (run as root, as CI does)");
    false
}

/// A self-signed certificate for 127.0.0.1 and localhost.
pub struct Certificate {
    pub dir: tempfile::TempDir,
}

impl Certificate {
    pub fn new() -> Certificate {
        Certificate::with_extensions(&[])
    }

    /// Marked as not a CA: webpki (rustls) refuses a CA certificate as a
    /// server's own.
    pub fn end_entity() -> Certificate {
        Certificate::with_extensions(&["-addext", "basicConstraints=critical,CA:FALSE"])
    }

    fn with_extensions(extra: &[&str]) -> Certificate {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"])
            .args(extra)
            .arg("-keyout")
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.pem"))
            .stderr(Stdio::null())
            .status()
            .expect("run openssl (apt-get install openssl)");
        assert!(status.success(), "openssl req failed");
        Certificate { dir }
    }
    /// A CA and a leaf it signed, for clients that insist on the difference
    /// (rustls refuses a self-signed CA certificate as a server's own).
    /// `cert()` is the leaf followed by the CA; `ca()` is the CA alone.
    pub fn signed_by_ca() -> Certificate {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("CA");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.subject_alt_names.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        let leaf = params.signed_by(&key, &Issuer::new(ca, ca_key)).expect("leaf");
        std::fs::write(dir.path().join("cert.pem"), format!("{}{}", leaf.pem(), ca_cert.pem())).expect("cert");
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).expect("key");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).expect("ca");
        Certificate { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
}

impl Default for Certificate {
    fn default() -> Self {
        Certificate::new()
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// A child process killed when dropped, so no test leaves one behind.
pub struct Guard(pub Child);

impl Guard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until process `pid` maps a file whose path contains `needle`
/// (`libssl`): a process found by its command line may still be starting,
/// and `local --pid` judges a running process at once.
pub fn wait_for_mapping(pid: u32, needle: &str, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while !std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains(needle)) {
        assert!(std::time::Instant::now() < deadline, "process {pid} has not mapped {needle} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits until something accepts TCP connections on the port.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port} after {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The python HTTPS server of fixtures/https_server.py.
pub fn python_https_server(cert: &Certificate) -> (Guard, u16) {
    let port = free_port();
    let child = Command::new("python3")
        .arg(fixture("https_server.py"))
        .arg(port.to_string())
        .arg(cert.cert())
        .arg(cert.key())
        .stdout(Stdio::null())
        .spawn()
        .expect("run python3");
    let guard = Guard(child);
    wait_for_port(port, Duration::from_secs(10));
    (guard, port)
}

/// Parses a record stream (JSON lines); every line must be a record.
pub fn parse_records(stdout: &str) -> Vec<Record> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Line>(l).unwrap_or_else(|e| panic!("bad record line {l:?}: {e}")).record)
        .collect()
}

/// Each connection's bytes per direction, reassembled from chunk records
/// in stream order; keys are (connection id, direction).
pub fn streams(records: &[Record]) -> BTreeMap<(String, Direction), Vec<u8>> {
    type Pieces = Vec<(u64, Vec<u8>)>;
    let mut pieces: BTreeMap<(String, Direction), Pieces> = BTreeMap::new();
    for record in records {
        if let Record::Chunk(chunk) = record {
            pieces
                .entry((chunk.conn.id.clone(), chunk.direction))
                .or_default()
                .push((chunk.offset, chunk.data.to_bytes()));
        }
    }
    pieces
        .into_iter()
        .map(|(key, mut parts)| {
            parts.sort_by_key(|(offset, _)| *offset);
            let mut bytes = Vec::new();
            for (offset, data) in parts {
                assert_eq!(offset as usize, bytes.len(), "stream {key:?} has a hole or overlap at {offset}");
                bytes.extend_from_slice(&data);
            }
            (key, bytes)
        })
        .collect()
}

/// The bytes of the one stream in `direction` that contains `needle`.
pub fn stream_with(records: &[Record], direction: Direction, needle: &[u8]) -> Option<Vec<u8>> {
    streams(records)
        .into_iter()
        .find(|((_, d), bytes)| *d == direction && contains(bytes, needle))
        .map(|(_, bytes)| bytes)
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// A spy running in the background whose stdout lines are collected.
pub struct BackgroundSpy {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl BackgroundSpy {
    pub fn start(mut command: Command) -> BackgroundSpy {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start the spy");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        BackgroundSpy { child: Some(child), lines: rx, seen: Vec::new() }
    }

    /// The spy's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Waits for a stdout line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        if self.seen.iter().any(|l| l.contains(needle)) {
            return true;
        }
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Sends SIGINT and waits for a clean exit; returns all stdout lines.
    pub fn interrupt(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = wait_timeout(&mut child, Duration::from_secs(15)).expect("the spy exits after SIGINT");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for BackgroundSpy {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A marker unique to one test run.
pub fn marker(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// Debian's nginx with TLS, HTTP/2 and keep-alive, in a private prefix.
///   /echo?id=X  → 200 "id=X\n"
///   /bytes/N    → a static file of N bytes (files made with `with_file`)
pub struct Nginx {
    pub port: u16,
    pub dir: tempfile::TempDir,
    master: Guard,
}

impl Nginx {
    pub fn start(cert: &Certificate, files: &[usize]) -> Nginx {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("www")).expect("www");
        for &size in files {
            let bytes: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
            std::fs::write(root.join("www").join(size.to_string()), bytes).expect("file");
        }
        let port = free_port();
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 1000000;
    http2_max_concurrent_streams 256;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location /echo {{ default_type text/plain; return 200 "id=$arg_id\n"; }}
        location /bytes/ {{ alias {root}/www/; }}
    }}
}}
"#,
            root = root.display(),
            cert = cert.cert().display(),
            key = cert.key().display(),
        );
        std::fs::write(root.join("nginx.conf"), conf).expect("conf");
        let nginx =
            ["/usr/sbin/nginx", "nginx"].into_iter().find(|p| std::path::Path::new(p).exists()).unwrap_or("nginx");
        let master = Guard(
            Command::new(nginx)
                .arg("-p")
                .arg(root)
                .arg("-e")
                .arg(root.join("error.log"))
                .arg("-c")
                .arg(root.join("nginx.conf"))
                .stdout(Stdio::null())
                .spawn()
                .expect("run nginx (apt-get install nginx-light)"),
        );
        wait_for_port(port, Duration::from_secs(10));
        Nginx { port, dir, master }
    }

    pub fn master_pid(&self) -> u32 {
        self.master.pid()
    }

    /// The worker processes (they do the TLS).
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.master.pid())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Workers die with the master's SIGKILL only if told: stop them too.
        for pid in self.worker_pids() {
            // SAFETY: kill(2) on a process we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Direct children of a process, from /proc/*/stat.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// The exchange records of a stream.
pub fn exchanges(records: &[Record]) -> Vec<&spy_protocol::record::Exchange> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Exchange(x) => Some(x.as_ref()),
            _ => None,
        })
        .collect()
}

/// A body's kept bytes as text.
pub fn body_text(body: &spy_protocol::record::Body) -> String {
    body.data.as_ref().map(|d| String::from_utf8_lossy(&d.to_bytes()).into_owned()).unwrap_or_default()
}
