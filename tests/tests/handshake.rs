//! Every TLS connection seen: real clients over loopback, spied for real
//! (root), their handshakes read from a packet capture in the target's
//! network namespace and tied to the same connection ids as the plaintext.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use spy_protocol::record::{Handshake, Record, Stats};
use tlsspy_tests::support::*;

fn run(command: Command) -> Output {
    let output = run_plugin(command);
    assert!(output.status.success(), "exit {:?}:\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    output
}

fn records_of(output: &Output) -> Vec<Record> {
    parse_records(&String::from_utf8_lossy(&output.stdout))
}

fn handshakes(records: &[Record]) -> Vec<&Handshake> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Handshake(h) => Some(h),
            _ => None,
        })
        .collect()
}

fn final_stats(records: &[Record]) -> &Stats {
    match records.last() {
        Some(Record::Bye(bye)) => &bye.stats,
        other => panic!("the stream ends with bye, not {other:?}"),
    }
}

/// Connection ids of plaintext records (exchanges and chunks) whose text
/// contains `needle`.
fn plaintext_ids(records: &[Record], needle: &str) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Chunk(c) if contains(&c.data.to_bytes(), needle.as_bytes()) => Some(c.conn.id.clone()),
            Record::Exchange(x) if x.request.as_ref().is_some_and(|r| r.path.contains(needle)) => {
                Some(x.conn.id.clone())
            }
            _ => None,
        })
        .collect()
}

/// A python client over OpenSSL: `args` are SNI ("-" for none), ALPN
/// list, version ("1.2"/"1.3"), path. Sends one HTTP/1.0 GET.
const PYTHON_CLIENT: &str = r#"
import socket, ssl, sys
port, cafile, sni, alpn, version, path = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=cafile)
if sni == "-":
    ctx.check_hostname = False
ctx.set_alpn_protocols(alpn.split(","))
v = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
ctx.minimum_version = ctx.maximum_version = v
raw = socket.create_connection(("127.0.0.1", int(port)))
tls = ctx.wrap_socket(raw, server_hostname=None if sni == "-" else sni)
tls.sendall(("GET /%s HTTP/1.0\r\nHost: x\r\n\r\n" % path).encode())
data = b""
while True:
    piece = tls.recv(65536)
    if not piece:
        break
    data += piece
sys.stderr.write("client got %d bytes, alpn %s\n" % (len(data), tls.selected_alpn_protocol()))
"#;

#[test]
fn a_python_client_shows_its_handshake_and_its_plaintext_on_one_connection() {
    if !require_root("a_python_client_shows_its_handshake_and_its_plaintext_on_one_connection") {
        return;
    }
    let cert = Certificate::new();
    let (_server, port) = python_https_server(&cert);
    let mark = marker("py");
    let mut cmd = plugin();
    cmd.args(["local", "-o", "json", "--", "python3", "-c", PYTHON_CLIENT, &port.to_string()]).arg(cert.cert()).args([
        "localhost",
        "h2,http/1.1",
        "1.3",
        &mark,
    ]);
    let records = records_of(&run(cmd));

    let ids = plaintext_ids(&records, &mark);
    assert_eq!(ids.len(), 1, "one exchange: {records:?}");
    let hs = handshakes(&records);
    assert_eq!(hs.len(), 1, "{hs:?}");
    let h = hs[0];
    assert_eq!(h.conn.id, ids[0], "the handshake and the plaintext share the connection id");
    assert!(h.decrypted && h.reason.is_none(), "{h:?}");
    assert_eq!(h.sni.as_deref(), Some("localhost"));
    assert_eq!(h.alpn_offered, ["h2", "http/1.1"]);
    assert_eq!(h.versions_offered, ["TLSv1.3"]);
    assert_eq!(h.version.as_deref(), Some("TLSv1.3"));
    assert!(h.cipher.as_deref().is_some_and(|c| c.starts_with("TLS_AES_") || c.starts_with("TLS_CHACHA20")), "{h:?}");
    assert!(h.ja4.as_deref().is_some_and(|j| j.starts_with("t13d") && j.ends_with(|c: char| c.is_ascii_hexdigit())));
    assert_eq!(h.conn.remote.map(|a| a.port()), Some(port));
    assert_eq!(h.conn.role, spy_protocol::record::Role::Client);
    assert_eq!(h.conn.process, "python3");
    let stats = final_stats(&records);
    assert_eq!((stats.handshakes.handshakes, stats.handshakes.decrypted), (1, 1));
    assert_eq!(stats.handshakes.namespaces, 1);
}

/// openssl s_server on loopback, answering with its status page.
fn openssl_server(cert: &Certificate, version: &str) -> (Guard, u16) {
    let port = free_port();
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-alpn", "h2,http/1.1", "-accept", &port.to_string()])
        .arg(if version == "1.2" { "-tls1_2" } else { "-tls1_3" })
        .arg("-cert")
        .arg(cert.cert())
        .arg("-key")
        .arg(cert.key())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let guard = Guard(child);
    wait_for_port(port, Duration::from_secs(10));
    (guard, port)
}

#[test]
fn tls_versions_sni_and_alpn_combinations_are_reported() {
    if !require_root("tls_versions_sni_and_alpn_combinations_are_reported") {
        return;
    }
    let cert = Certificate::new();
    let cases =
        [("1.2", "localhost", "h2"), ("1.2", "-", "http/1.1"), ("1.3", "localhost", "http/1.1"), ("1.3", "-", "h2")];
    for (version, sni, alpn) in cases {
        let (_server, port) = openssl_server(&cert, version);
        let mark = marker("matrix");
        let mut cmd = plugin();
        cmd.args(["local", "-o", "json", "--raw", "--", "python3", "-c", PYTHON_CLIENT, &port.to_string()])
            .arg(cert.cert())
            .args([sni, alpn, version, &mark]);
        let records = records_of(&run(cmd));
        let case = format!("TLS {version}, SNI {sni}, ALPN {alpn}");
        let hs = handshakes(&records);
        assert_eq!(hs.len(), 1, "{case}: {hs:?}");
        let h = hs[0];
        assert!(h.decrypted, "{case}: {h:?}");
        assert_eq!(plaintext_ids(&records, &mark), std::slice::from_ref(&h.conn.id), "{case}");
        let expected_sni = (sni != "-").then(|| sni.to_string());
        assert_eq!(h.sni, expected_sni, "{case}");
        assert_eq!(h.alpn_offered, [alpn], "{case}");
        assert_eq!(h.version.as_deref(), Some(if version == "1.2" { "TLSv1.2" } else { "TLSv1.3" }), "{case}");
        let ja4 = h.ja4.as_deref().unwrap_or_default();
        let prefix = format!("t{}{}", version.replace("1.", "1"), if sni == "-" { 'i' } else { 'd' });
        assert!(ja4.starts_with(&prefix), "{case}: {ja4}");
        let alpn_chars = if alpn == "h2" { "h2_" } else { "h1_" };
        assert!(ja4.contains(alpn_chars), "{case}: {ja4}");
        if version == "1.2" {
            // TLS 1.2 says the chosen protocol in the clear; 1.3 encrypts it.
            assert_eq!(h.alpn.as_deref(), Some(alpn), "{case}");
        } else {
            assert_eq!(h.alpn, None, "{case}");
        }
    }
}

/// Builds the rustls client fixture (crates from the local registry cache).
fn rustls_client() -> PathBuf {
    let manifest = fixture("rustls-client/Cargo.toml");
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--offline", "--quiet", "--message-format=json", "--manifest-path"])
        .arg(&manifest)
        // Out of the source tree, whatever CARGO_TARGET_DIR says.
        .arg("--target-dir")
        .arg(concat!(env!("CARGO_TARGET_TMPDIR"), "/rustls-client"))
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo build the rustls client");
    assert!(output.status.success(), "building {}", manifest.display());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("the rustls client's executable")
}

#[test]
fn a_rustls_client_shows_with_a_closed_lock_and_the_reason() {
    if !require_root("a_rustls_client_shows_with_a_closed_lock_and_the_reason") {
        return;
    }
    let client = rustls_client();
    let cert = Certificate::end_entity();
    let (_server, port) = python_https_server(&cert);
    let mark = marker("rustls");
    let addr = format!("127.0.0.1:{port}");
    let path = format!("/{mark}");

    let mut cmd = plugin();
    cmd.args(["local", "-o", "json", "--"]).arg(&client).args([&addr, "localhost"]).arg(cert.cert()).args([
        "h2,http/1.1",
        "1.3",
        &path,
    ]);
    let output = run(cmd);
    assert!(String::from_utf8_lossy(&output.stderr).contains(&format!("hello {mark}")), "the client worked");
    let records = records_of(&output);
    let hs = handshakes(&records);
    assert_eq!(hs.len(), 1, "{records:?}");
    let h = hs[0];
    assert!(!h.decrypted, "{h:?}");
    assert_eq!(h.sni.as_deref(), Some("localhost"));
    assert_eq!(h.alpn_offered, ["h2", "http/1.1"]);
    assert_eq!(h.version.as_deref(), Some("TLSv1.3"));
    let reason = h.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("no TLS library tlsspy can probe") && reason.contains("rustls"), "{reason}");
    // The reason is the target's.
    let target = records
        .iter()
        .find_map(|r| match r {
            Record::Target(t) if t.pid == h.conn.pid => Some(t),
            _ => None,
        })
        .expect("the target record");
    assert!(!target.probed);
    assert_eq!(target.reason.as_deref(), Some(reason));
    assert!(plaintext_ids(&records, &mark).is_empty(), "nothing decrypted");
    assert_eq!(final_stats(&records).handshakes.handshakes, 1);

    // TLS 1.2 to an IP address: no SNI. Live lines and the summary say it
    // with a closed lock; --tls-only shows handshakes alone.
    let mut cmd = plugin();
    cmd.args(["local", "--tls-only", "--"])
        .arg(&client)
        .args([&addr, "127.0.0.1"])
        .arg(cert.cert())
        .args(["http/1.1", "1.2", &path]);
    let output = run(cmd);
    let live = String::from_utf8_lossy(&output.stdout);
    let line = live.lines().find(|l| l.starts_with("🔒")).unwrap_or_else(|| panic!("a closed lock:\n{live}"));
    assert!(line.contains("sni=- alpn=http/1.1 (offered) version=TLSv1.2"), "{line}");
    assert!(live.contains("not decrypted: no TLS library tlsspy can probe in this process: it uses rustls"), "{live}");
    assert!(!live.contains("🔓"), "{live}");
    let row = live
        .lines()
        .find(|l| l.starts_with('│') && l.contains("tlsspy-rustls"))
        .unwrap_or_else(|| panic!("summary row:\n{live}"));
    let cells: Vec<&str> = row.split(['│', '┆']).map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(&cells[1..4], ["1", "0", "1"], "{row}");
}

/// Short-lived clients, many at once: each exits right after its request,
/// often before the capture reads its packets. The kernel recorded who
/// connected, so every handshake is still its own client's.
#[test]
fn many_short_lived_clients_each_get_their_handshake() {
    if !require_root("many_short_lived_clients_each_get_their_handshake") {
        return;
    }
    const CLIENTS: usize = 24;
    let client = rustls_client();
    let cert = Certificate::end_entity();
    let (_server, port) = python_https_server(&cert);
    let mark = marker("burst");
    let script = format!(
        "for i in $(seq {CLIENTS}); do \"$0\" 127.0.0.1:{port} localhost \"$1\" http/1.1 1.3 /{mark}-$i 2>/dev/null & done; wait"
    );
    let mut cmd = plugin();
    cmd.args(["local", "-o", "json", "--", "sh", "-c", &script]).arg(&client).arg(cert.cert());
    let output = run(cmd);
    let records = records_of(&output);
    let hs = handshakes(&records);
    let mut pids: Vec<u32> = hs.iter().map(|h| h.conn.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!((hs.len(), pids.len()), (CLIENTS, CLIENTS), "one handshake per client: {hs:#?}");
    for h in &hs {
        assert!(!h.decrypted && h.sni.as_deref() == Some("localhost"), "{h:?}");
        assert!(h.conn.process.starts_with("tlsspy-rustls"), "named after the client: {h:?}");
        // rustls, or, for a client gone before anything could look at its
        // executable, that: never silence.
        let reason = h.reason.as_deref().unwrap_or_default();
        assert!(reason.contains("rustls") || reason.contains("exited before"), "{h:?}");
    }
}

/// A process that runs an HTTPS server and a client of it in its own
/// network namespace, and waits for `go` before its request.
const NETNS_SCRIPT: &str = r#"
import os, socket, ssl, sys, threading, time
cert, key, go, mark = sys.argv[1:5]
srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
srv_ctx.load_cert_chain(cert, key)
srv_ctx.set_alpn_protocols(["http/1.1"])
listener = socket.create_server(("127.0.0.1", 4443))
def serve():
    conn, _ = listener.accept()
    tls = srv_ctx.wrap_socket(conn, server_side=True)
    tls.recv(1000)
    tls.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello " + mark.encode())
    tls.close()
threading.Thread(target=serve, daemon=True).start()
while not os.path.exists(go):
    time.sleep(0.02)
ctx = ssl.create_default_context(cafile=cert)
ctx.set_alpn_protocols(["http/1.1"])
tls = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 4443)), server_hostname="localhost")
tls.sendall(("GET /" + mark + " HTTP/1.0\r\n\r\n").encode())
print(tls.recv(1000).decode(), flush=True)
time.sleep(0.5)
"#;

#[test]
fn a_target_in_its_own_network_namespace_is_watched_there() {
    if !require_root("a_target_in_its_own_network_namespace_is_watched_there") {
        return;
    }
    let cert = Certificate::new();
    let work = tempfile::tempdir().expect("tempdir");
    let go = work.path().join("go");
    let mark = marker("netns");
    let mut inner = Command::new("unshare");
    inner
        .args(["--net", "sh", "-c", "ip link set lo up && exec python3 -c \"$0\" \"$@\"", NETNS_SCRIPT])
        .arg(cert.cert())
        .arg(cert.key())
        .arg(&go)
        .arg(&mark)
        .stdout(Stdio::null());
    let _inner = Guard(inner.spawn().expect("unshare"));
    let pid = (0..200)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(25));
            find_python_with_arg(&mark)
        })
        .expect("the namespaced python started");
    // Found by its command line, it may still be starting (or still be the
    // `sh` about to exec it): `--pid` judges it at once.
    wait_for_mapping(pid, "libssl", Duration::from_secs(10));
    let own_ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("its netns");
    assert_ne!(own_ns, std::fs::read_link("/proc/self/ns/net").expect("ours"), "it has a namespace of its own");

    let mut cmd = plugin();
    cmd.args(["local", "-o", "json", "--raw", "--pid", &pid.to_string()]);
    let mut spy = BackgroundSpy::start(cmd);
    assert!(spy.wait_for("\"kind\":\"target\"", Duration::from_secs(20)));
    std::fs::write(&go, "go").expect("release the client");
    assert!(spy.wait_for("\"kind\":\"handshake\"", Duration::from_secs(15)), "a handshake inside the namespace");
    let (status, lines) = spy.interrupt();
    assert!(status.success());
    let records = parse_records(&lines.join("\n"));
    let hs = handshakes(&records);
    assert!(!hs.is_empty(), "{records:?}");
    let h = hs[0];
    assert!(h.decrypted, "{h:?}");
    assert_eq!(h.sni.as_deref(), Some("localhost"));
    assert_eq!(h.alpn.as_deref(), None, "TLS 1.3 hides the chosen ALPN");
    assert_eq!(h.alpn_offered, ["http/1.1"]);
    let port = h.conn.local.map(|a| a.port());
    let remote = h.conn.remote.map(|a| a.port());
    assert!(port == Some(4443) || remote == Some(4443), "{h:?}");
    // Its connection is one whose plaintext was captured.
    assert!(plaintext_ids(&records, &mark).contains(&h.conn.id), "{records:?}");
    assert_eq!(final_stats(&records).handshakes.namespaces, 1);
}

/// A target that talks to a plain TCP server on port 443 (in a namespace
/// of its own, so the port is free): HTTP, random bytes, a cut
/// ClientHello, and a whole one answered by junk.
const NOT_TLS_SCRIPT: &str = r#"
import os, socket, ssl, sys, threading, time
go = sys.argv[1]
listener = socket.create_server(("127.0.0.1", 443))
def serve():
    while True:
        conn, _ = listener.accept()
        try:
            conn.recv(65536)
            conn.sendall(b"NOT TLS AT ALL\r\n")
        except OSError:
            pass
        conn.close()
threading.Thread(target=serve, daemon=True).start()
while not os.path.exists(go):
    time.sleep(0.02)
# A real ClientHello, from OpenSSL through memory BIOs.
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
ctx = ssl.create_default_context()
obj = ctx.wrap_bio(incoming, outgoing, server_hostname="junk.test")
try:
    obj.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = outgoing.read()
payloads = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" + os.urandom(300), hello[:60], hello]
for payload in payloads:
    s = socket.create_connection(("127.0.0.1", 443))
    s.sendall(payload)
    # Owners are read from /proc while a connection is open: give a busy
    # machine's capture time to see this one's.
    time.sleep(0.3)
    if payload is hello:
        s.recv(100)
    s.shutdown(socket.SHUT_WR)
    s.recv(100)
    s.close()
    time.sleep(0.1)
time.sleep(0.5)
"#;

#[test]
fn non_tls_and_broken_handshakes_are_counted_not_fatal() {
    if !require_root("non_tls_and_broken_handshakes_are_counted_not_fatal") {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let go = work.path().join("go");
    let mut inner = Command::new("unshare");
    inner
        .args(["--net", "sh", "-c", "ip link set lo up && exec python3 -c \"$0\" \"$@\"", NOT_TLS_SCRIPT])
        .arg(&go)
        .stdout(Stdio::null());
    let _inner = Guard(inner.spawn().expect("unshare"));
    let go_arg = go.display().to_string();
    let pid = (0..200)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(25));
            find_python_with_arg(&go_arg)
        })
        .expect("the namespaced python started");
    wait_for_mapping(pid, "libssl", Duration::from_secs(10));

    let mut cmd = plugin();
    cmd.args(["local", "-o", "json", "--pid", &pid.to_string()]);
    let mut spy = BackgroundSpy::start(cmd);
    assert!(spy.wait_for("\"kind\":\"target\"", Duration::from_secs(20)));
    std::fs::write(&go, "go").expect("release the client");
    // The target exits when done, and the spy with it.
    assert!(spy.wait_for("\"kind\":\"bye\"", Duration::from_secs(30)), "the session ends with its target");
    let (status, lines) = spy.interrupt();
    assert!(status.success(), "{status:?}");
    let records = parse_records(&lines.join("\n"));
    let stats = final_stats(&records).handshakes.clone();
    assert_eq!(stats.not_tls_flows, 2, "HTTP and random bytes: {stats:?}");
    assert_eq!(stats.malformed_flows, 1, "the cut ClientHello: {stats:?}");
    // The whole hello is shown, though the server never answered with TLS.
    let hs = handshakes(&records);
    assert_eq!(hs.len(), 1, "{hs:?}");
    assert_eq!(hs[0].sni.as_deref(), Some("junk.test"));
    assert_eq!(hs[0].version, None);
    assert_eq!(hs[0].conn.remote.map(|a| a.port()), Some(443));
}

fn find_python_with_arg(arg: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_python = args.first().is_some_and(|a| a.ends_with(b"python3"));
        (is_python && args.contains(&arg.as_bytes())).then_some(pid)
    })
}
