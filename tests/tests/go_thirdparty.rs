//! Real third-party Go programs, built from their modules at the versions
//! pinned in `tests/fixtures/go-thirdparty/*/go.mod` and stripped as they
//! ship (`scripts/build-thirdparty-go.sh`, which `.ci/install-deps` runs):
//!
//! - Caddy, an HTTPS server users deploy (cgo, dynamically linked), spied
//!   by pid while curl talks to it over HTTP/1.1 and HTTP/2;
//! - grpc-health-probe, the gRPC health client Kubernetes probes run,
//!   spied from its start against the Python gRPC server.
//!
//! Both directions of each exchange are checked against what the peer that
//! is not spied printed or was sent, with the peer's address and one
//! connection id for the handshake and the exchange. Without the programs
//! (no module proxy) the tests skip with a message, except under `CI=true`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use spy_protocol::record::{Exchange, Protocol, Record, TlsLibrary};
use tlsspy_tests::support::*;

/// The built programs by name (`caddy`, `grpc-health-probe`), `None` when
/// they cannot be built here (outside CI only).
fn programs() -> Option<&'static Vec<PathBuf>> {
    static PROGRAMS: OnceLock<Option<Vec<PathBuf>>> = OnceLock::new();
    PROGRAMS
        .get_or_init(|| {
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-thirdparty-go.sh");
            let output = Command::new("bash").arg(&script).output().expect("run build-thirdparty-go.sh");
            if !output.status.success() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
                let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                assert!(!in_ci(), "CI=true but the third-party Go programs do not build:\n{tail}");
                eprintln!("SKIP: the third-party Go programs do not build here (module proxy?):\n{tail}");
                return None;
            }
            Some(String::from_utf8_lossy(&output.stdout).lines().map(PathBuf::from).collect())
        })
        .as_ref()
}

fn program(name: &str) -> Option<PathBuf> {
    programs()?.iter().find(|p| p.file_name().is_some_and(|f| f == name)).cloned()
}

fn setup(test: &str, name: &str) -> Option<PathBuf> {
    if !require_root(test) {
        return None;
    }
    let found = program(name);
    assert!(found.is_some() || programs().is_none(), "build-thirdparty-go.sh printed no {name}");
    found
}

/// The exchange whose request path is `path`.
fn exchange_for<'a>(records: &'a [Record], path: &str) -> &'a Exchange {
    exchanges(records)
        .into_iter()
        .find(|e| e.request.as_ref().is_some_and(|r| r.path == path))
        .unwrap_or_else(|| panic!("no exchange for {path} in {records:#?}"))
}

/// The handshake record of connection `id`.
fn handshake_of<'a>(records: &'a [Record], id: &str) -> &'a spy_protocol::record::Handshake {
    records
        .iter()
        .find_map(|r| match r {
            Record::Handshake(h) if h.conn.id == id => Some(h),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no handshake record for connection {id} in {:#?}", handshakes(records)))
}

fn assert_probed_go(records: &[Record], pid: Option<u32>, what: &str) -> String {
    let target = records
        .iter()
        .find_map(|r| match r {
            Record::Target(t) if pid.is_none_or(|p| p == t.pid) && !t.tls.is_empty() => Some(t),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{what}: no target record with a TLS stack"));
    let stack = target.tls.iter().find(|s| s.library == TlsLibrary::GoCryptoTls).expect("a Go stack");
    assert!(target.probed && stack.probed, "{what}: {target:?}");
    stack.version.clone().unwrap_or_default()
}

fn assert_no_loss(records: &[Record], what: &str) {
    let Some(Record::Bye(bye)) = records.last() else { panic!("{what}: the stream does not end with bye") };
    assert_eq!((bye.stats.lost_events, bye.stats.lost_bytes), (0, 0), "{what}");
}

#[test]
fn caddy_stripped_is_spied_as_a_server_over_http1_and_http2() {
    let Some(caddy) = setup("caddy_stripped_is_spied_as_a_server_over_http1_and_http2", "caddy") else { return };
    let cert = Certificate::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let caddyfile = dir.path().join("Caddyfile");
    std::fs::write(
        &caddyfile,
        format!(
            "{{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\tstorage file_system {data}\n}}\n\
             https://127.0.0.1:{port}, https://[::1]:{port} {{\n\ttls {cert} {key}\n\trespond \"caddy hello {{path}}\" 200\n}}\n",
            data = dir.path().join("data").display(),
            cert = cert.cert().display(),
            key = cert.key().display(),
        ),
    )
    .expect("write Caddyfile");
    let server = Guard(
        Command::new(&caddy)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&caddyfile)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start caddy"),
    );
    wait_for_port(port, Duration::from_secs(20));

    let mut cmd = plugin();
    cmd.args(["local", "-o", "json", "--pid", &server.pid().to_string()]);
    let mut spy = BackgroundSpy::start(cmd);
    assert!(spy.wait_for("\"kind\":\"target\"", Duration::from_secs(30)), "the spy reported its target");

    let mark = marker("caddy");
    let mut curl_ports = Vec::new();
    // Caddy listens on a dual-stack socket: the first two connections reach
    // it as v4-mapped IPv6 addresses, the third over IPv6 itself.
    for (flag, suffix, host) in
        [("--http1.1", "h1", "127.0.0.1"), ("--http2", "h2", "127.0.0.1"), ("--http2", "v6", "[::1]")]
    {
        let url = format!("https://{host}:{port}/{mark}-{suffix}");
        let output = Command::new("curl")
            .args(["-sS", "--globoff", flag])
            .arg("--cacert")
            .arg(cert.cert())
            .args(["-w", "\n%{local_port} %{http_version}", &url])
            .output()
            .expect("run curl");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "curl {flag}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.starts_with(&format!("caddy hello /{mark}-{suffix}")), "caddy answered: {stdout}");
        let local_port: u16 = stdout.lines().last().and_then(|l| l.split(' ').next()?.parse().ok()).expect("port");
        curl_ports.push(local_port);
    }
    assert!(spy.wait_for(&format!("/{mark}-v6"), Duration::from_secs(15)), "the HTTP/2 exchange was seen");
    let (status, lines) = spy.interrupt();
    assert!(status.success(), "the spy exits cleanly: {status:?}");
    let records = parse_records(&lines.join("\n"));
    let version = assert_probed_go(&records, Some(server.pid()), "caddy");
    assert!(version.starts_with("go1.26"), "built with the machine's Go: {version}");

    let v4: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let v6: std::net::IpAddr = "::1".parse().unwrap();
    for ((suffix, protocol, peer_ip), curl_port) in
        [("h1", Protocol::Http1, v4), ("h2", Protocol::Http2, v4), ("v6", Protocol::Http2, v6)]
            .into_iter()
            .zip(curl_ports)
    {
        let what = format!("caddy {suffix}");
        let path = format!("/{mark}-{suffix}");
        let exchange = exchange_for(&records, &path);
        assert_eq!(exchange.protocol, protocol, "{what}");
        let response = exchange.response.as_ref().unwrap_or_else(|| panic!("{what}: a response"));
        assert_eq!(response.status, 200, "{what}");
        assert_eq!(body_text(&response.body), format!("caddy hello {path}"), "{what}: the response body");
        assert_eq!(exchange.conn.local.map(|a| a.port()), Some(port), "{what}: caddy's side of the socket");
        assert_eq!(exchange.conn.remote.map(|a| a.port()), Some(curl_port), "{what}: the peer is this curl");
        assert_eq!(
            exchange.conn.remote.map(|a| a.ip()),
            Some(peer_ip),
            "{what}: the peer's address, v4-mapped shown as IPv4"
        );
        assert_eq!(exchange.conn.tls_library, Some(TlsLibrary::GoCryptoTls), "{what}");
        let handshake = handshake_of(&records, &exchange.conn.id);
        assert!(handshake.decrypted, "{what}: the handshake is joined to the decrypted connection");
    }
    assert_no_loss(&records, "caddy");
}

#[test]
fn grpc_health_probe_stripped_is_spied_as_a_client() {
    let Some(probe) = setup("grpc_health_probe_stripped_is_spied_as_a_client", "grpc-health-probe") else { return };
    let cert = Certificate::new();
    let port = free_port();
    let _server = Guard(
        Command::new("python3")
            .arg(fixture("grpc_server.py"))
            .arg(port.to_string())
            .arg(cert.cert())
            .arg(cert.key())
            .spawn()
            .expect("python3 grpc server (pip install grpcio)"),
    );
    wait_for_port(port, Duration::from_secs(20));
    let mark = marker("tlsspy-health");
    let mut cmd = plugin();
    cmd.args(["local", "-o", "json", "--"])
        .arg(&probe)
        .args(["-addr", &format!("127.0.0.1:{port}"), "-tls", "-tls-ca-cert"])
        .arg(cert.cert())
        .args(["-tls-server-name", "localhost", "-service", &mark, "-connect-timeout", "10s", "-rpc-timeout", "10s"]);
    let output = run_plugin(cmd);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("status: SERVING"), "the probe's own verdict: {stderr}");
    let records = parse_records(&String::from_utf8_lossy(&output.stdout));
    let version = assert_probed_go(&records, None, "grpc-health-probe");
    assert!(version.starts_with("go1.26"), "{version}");

    let exchange = exchange_for(&records, "/grpc.health.v1.Health/Check");
    assert_eq!(exchange.protocol, Protocol::Grpc);
    let grpc = exchange.grpc.as_ref().expect("grpc");
    assert_eq!(
        (grpc.service.as_str(), grpc.method.as_str(), grpc.request_messages, grpc.response_messages, grpc.status),
        ("grpc.health.v1.Health", "Check", 1, 1, Some(0))
    );
    // HealthCheckRequest{service: mark}: tag, length, the name; the answer
    // is HealthCheckResponse{status: SERVING}, 2 bytes.
    assert_eq!(grpc.request_sizes, vec![2 + mark.len() as u32], "the request message");
    assert_eq!(grpc.response_sizes, vec![2], "the response message");
    let request = exchange.request.as_ref().expect("request");
    assert!(body_text(&request.body).contains(&mark), "the service name went out: {request:?}");
    assert_eq!(exchange.conn.remote.map(|a| a.port()), Some(port), "the peer is the server");
    let handshake = handshake_of(&records, &exchange.conn.id);
    assert!(handshake.decrypted);
    assert!(handshake.alpn_offered.iter().any(|a| a == "h2"), "{handshake:?}");
    assert_no_loss(&records, "grpc-health-probe");
}

fn handshakes(records: &[Record]) -> Vec<&spy_protocol::record::Handshake> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Handshake(h) => Some(h),
            _ => None,
        })
        .collect()
}
