//! `kubectl-tlsspy local`, end to end: real OpenSSL programs over loopback,
//! spied for real with eBPF (root). Each test checks exact bytes.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use spy_protocol::record::{Direction, Record};
use tlsspy_tests::support::*;

fn records_of(output: &Output) -> Vec<Record> {
    parse_records(&String::from_utf8_lossy(&output.stdout))
}

#[test]
fn curl_client_request_and_response_are_captured_exactly() {
    if !require_root("curl_client_request_and_response_are_captured_exactly") {
        return;
    }
    let cert = Certificate::new();
    let (_server, port) = python_https_server(&cert);
    let mark = marker("curl");
    let body_file = tempfile::NamedTempFile::new().expect("tempfile");

    let mut cmd = plugin();
    cmd.args(["local", "-o", "json", "--raw", "--", "curl", "-s", "--http1.1", "-H", "User-Agent: tlsspy-test"])
        .arg("--cacert")
        .arg(cert.cert())
        .arg("-o")
        .arg(body_file.path())
        .arg(format!("https://127.0.0.1:{port}/{mark}"));
    let output = run_plugin(cmd);
    assert!(output.status.success(), "exit {:?}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    let records = records_of(&output);

    let request =
        format!("GET /{mark} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\nUser-Agent: tlsspy-test\r\n\r\n");
    let sent = stream_with(&records, Direction::Send, mark.as_bytes()).expect("the request was captured");
    assert_eq!(String::from_utf8_lossy(&sent), request);

    let received = stream_with(&records, Direction::Recv, mark.as_bytes()).expect("the response was captured");
    let received = String::from_utf8_lossy(&received);
    assert!(received.starts_with("HTTP/1.1 200 OK\r\n"), "{received}");
    assert!(received.ends_with(&format!("\r\n\r\nhello {mark}\n")), "{received}");
    assert_eq!(std::fs::read_to_string(body_file.path()).expect("curl's output"), format!("hello {mark}\n"));

    // The connection is named by its socket: curl is the client of our port.
    let chunk = records
        .iter()
        .find_map(|r| match r {
            Record::Chunk(c) if c.direction == Direction::Send => Some(c),
            _ => None,
        })
        .expect("a chunk");
    assert_eq!(chunk.conn.remote.map(|a| a.port()), Some(port));
    assert_eq!(chunk.conn.process, "curl");
    assert!(matches!(records.last(), Some(Record::Bye(_))), "the stream ends with bye");
    let Some(Record::Bye(bye)) = records.last() else { unreachable!() };
    assert_eq!(bye.stats.lost_events, 0);
    assert!(records.iter().any(|r| matches!(r, Record::Target(t) if t.process == "curl" && t.probed)));
}

/// Redaction holds without the parser: `--raw` shows the bytes as they
/// moved, but the values of secret header lines only with --show-secrets,
/// in JSON and in the live view alike.
#[test]
fn raw_output_masks_secret_headers_unless_asked() {
    if !require_root("raw_output_masks_secret_headers_unless_asked") {
        return;
    }
    let cert = Certificate::new();
    let (_server, port) = python_https_server(&cert);
    for (format, show_secrets) in [("json", false), ("json", true), ("live", false)] {
        let mark = marker("secret");
        let mut cmd = plugin();
        cmd.args(["local", "-o", format, "--raw", "--full"]);
        if show_secrets {
            cmd.arg("--show-secrets");
        }
        cmd.args(["--", "curl", "-s", "--http1.1", "-o", "/dev/null", "-H", "Authorization: Bearer s3cret-tok3n"])
            .args(["-H", "Cookie: sid=c00kie-value", "--cacert"])
            .arg(cert.cert())
            .arg(format!("https://127.0.0.1:{port}/{mark}"));
        let output = run_plugin(cmd);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "exit {:?}: {}", output.status, String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains(&mark), "{format}: the request was captured: {stdout}");
        for secret in ["s3cret-tok3n", "c00kie-value"] {
            assert_eq!(stdout.contains(secret), show_secrets, "{format} show_secrets={show_secrets}: {stdout}");
        }
        if !show_secrets {
            assert!(stdout.contains("Authorization: <redacted>"), "{format}: {stdout}");
        }
        if format == "json" {
            let redacted = records_of(&output).iter().any(|r| matches!(r, Record::Chunk(c) if c.redacted));
            assert_eq!(redacted, !show_secrets);
        }
    }
}

#[test]
fn python_server_is_spied_by_pid_on_both_directions() {
    if !require_root("python_server_is_spied_by_pid_on_both_directions") {
        return;
    }
    let cert = Certificate::new();
    let (server, port) = python_https_server(&cert);
    let mark = marker("server");

    let mut cmd = plugin();
    cmd.args(["local", "-o", "json", "--raw", "--pid", &server.pid().to_string()]);
    let mut spy = BackgroundSpy::start(cmd);
    assert!(spy.wait_for("\"kind\":\"target\"", Duration::from_secs(20)), "the spy reported its target");

    let status = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--http1.1", "-H", "User-Agent: tlsspy-test", "--cacert"])
        .arg(cert.cert())
        .arg(format!("https://127.0.0.1:{port}/{mark}"))
        .status()
        .expect("curl");
    assert!(status.success());
    assert!(spy.wait_for(&format!("hello {mark}"), Duration::from_secs(10)), "the response was seen");
    let (status, lines) = spy.interrupt();
    assert!(status.success(), "the spy exits cleanly on SIGINT: {status:?}");
    let records = parse_records(&lines.join("\n"));

    let received = stream_with(&records, Direction::Recv, mark.as_bytes()).expect("the server read the request");
    assert_eq!(
        String::from_utf8_lossy(&received),
        format!("GET /{mark} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\nUser-Agent: tlsspy-test\r\n\r\n")
    );
    let sent = stream_with(&records, Direction::Send, mark.as_bytes()).expect("the server's response");
    assert!(String::from_utf8_lossy(&sent).ends_with(&format!("hello {mark}\n")));
    let conn = records
        .iter()
        .find_map(|r| match r {
            Record::Chunk(c) => Some(&c.conn),
            _ => None,
        })
        .expect("a chunk");
    assert_eq!(conn.local.map(|a| a.port()), Some(port), "the server's side of the socket");
    assert!(matches!(records.last(), Some(Record::Bye(b)) if b.reason == "interrupted"));
}

#[test]
fn a_200_kib_post_body_arrives_complete_and_byte_exact() {
    if !require_root("a_200_kib_post_body_arrives_complete_and_byte_exact") {
        return;
    }
    let cert = Certificate::new();
    let (_server, port) = python_https_server(&cert);
    let mark = marker("post");
    // 200 KiB that differ from byte to byte, marker up front; python sends
    // it with one SSL_write_ex, larger than one kernel event.
    let client = format!(
        r#"
import http.client, ssl, sys
ctx = ssl.create_default_context(cafile={cafile:?})
body = b"{mark}" + bytes((i * 13 + i // 256) % 256 for i in range(200 * 1024 - {mlen}))
conn = http.client.HTTPSConnection("127.0.0.1", {port}, context=ctx)
conn.request("POST", "/{mark}", body=body, headers={{"Content-Type": "application/octet-stream"}})
reply = conn.getresponse().read().decode()
assert reply.split()[0] == str(len(body)), reply
sys.stderr.write(reply)
"#,
        cafile = cert.cert().display().to_string(),
        mlen = mark.len(),
    );
    let mut cmd = plugin();
    // A binary body: withheld unless --show-secrets (see the 1 MiB test).
    cmd.args(["local", "-o", "json", "--raw", "--show-secrets", "--", "python3", "-c", &client]);
    let output = run_plugin(cmd);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let records = records_of(&output);

    let mut expected = mark.as_bytes().to_vec();
    expected.extend((0..200 * 1024 - mark.len()).map(|i| ((i * 13 + i / 256) % 256) as u8));
    let sent = stream_with(&records, Direction::Send, mark.as_bytes()).expect("the POST was captured");
    let header_end = sent.windows(4).position(|w| w == b"\r\n\r\n").expect("headers") + 4;
    let head = String::from_utf8_lossy(&sent[..header_end]);
    assert!(head.contains(&format!("Content-Length: {}", expected.len())), "{head}");
    assert_eq!(sent.len() - header_end, expected.len(), "the whole body, no more, no less");
    assert!(sent[header_end..] == expected[..], "the body is byte-exact");
    let Some(Record::Bye(bye)) = records.last() else { panic!("no bye") };
    assert_eq!((bye.stats.lost_events, bye.stats.lost_bytes), (0, 0));
}

#[test]
fn a_1_mib_response_read_in_many_calls_arrives_complete_and_in_order() {
    if !require_root("a_1_mib_response_read_in_many_calls_arrives_complete_and_in_order") {
        return;
    }
    let cert = Certificate::new();
    let (_server, port) = python_https_server(&cert);
    let size = 1024 * 1024;
    let mut cmd = plugin();
    // Binary raw data is withheld unless --show-secrets (no scan can find
    // secrets in it); this test is about the bytes, so it asks for them.
    cmd.args(["local", "-o", "json", "--raw", "--show-secrets", "--", "curl", "-s", "--http1.1", "-o", "/dev/null"])
        .arg("--cacert")
        .arg(cert.cert())
        .arg(format!("https://127.0.0.1:{port}/big/{size}"));
    let output = run_plugin(cmd);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let records = records_of(&output);
    let expected: Vec<u8> = (0..size).map(|i| ((i * 7 + i / 251) % 256) as u8).collect();
    let received = stream_with(&records, Direction::Recv, b"HTTP/1.1 200").expect("the response");
    let header_end = received.windows(4).position(|w| w == b"\r\n\r\n").expect("headers") + 4;
    assert_eq!(received.len() - header_end, size);
    assert!(received[header_end..] == expected[..], "the 1 MiB body is byte-exact and in order");
    let calls = records.iter().filter(|r| matches!(r, Record::Chunk(c) if c.direction == Direction::Recv)).count();
    assert!(calls > 16, "read through many SSL_read calls ({calls})");
}

#[test]
fn a_process_in_its_own_pid_and_mount_namespace_is_probed_through_its_root() {
    if !require_root("a_process_in_its_own_pid_and_mount_namespace_is_probed_through_its_root") {
        return;
    }
    let cert = Certificate::new();
    let (_server, port) = python_https_server(&cert);
    let mark = marker("netns");
    let work = tempfile::tempdir().expect("tempdir");
    let go_file = work.path().join("go");
    let libssl = ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/aarch64-linux-gnu/libssl.so.3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("libssl3 is installed");
    let client = format!(
        r#"
import os, ssl, time, urllib.request
while not os.path.exists({go:?}):
    time.sleep(0.02)
ctx = ssl.create_default_context(cafile={cafile:?})
print(urllib.request.urlopen("https://127.0.0.1:{port}/{mark}", context=ctx).read().decode(), flush=True)
"#,
        go = go_file.display().to_string(),
        cafile = cert.cert().display().to_string(),
    );
    // Inside: its own copy of libssl bind-mounted over the usual path, so
    // the library the process maps is another inode than the host's.
    let script = format!(
        "cp {libssl} {dir}/libssl.so.3 && mount --bind {dir}/libssl.so.3 {libssl} && exec python3 -c '{client}' {mark}",
        dir = work.path().display(),
        client = client.replace('\'', "'\\''"),
    );
    let inner = Guard(
        Command::new("unshare")
            .args(["--pid", "--mount", "--fork", "--mount-proc", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::null())
            .spawn()
            .expect("unshare"),
    );
    // The python process: the one whose command line carries the marker.
    let pid = (0..200)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(25));
            find_process_with_arg(&mark)
        })
        .expect("the namespaced python started");
    wait_for_mapping(pid, "libssl", Duration::from_secs(10));

    let mut cmd = plugin();
    cmd.args(["local", "-o", "json", "--raw", "--pid", &pid.to_string()]);
    let mut spy = BackgroundSpy::start(cmd);
    assert!(spy.wait_for("\"kind\":\"target\"", Duration::from_secs(20)));
    std::fs::write(&go_file, "go").expect("release the client");
    assert!(spy.wait_for(&format!("hello {mark}"), Duration::from_secs(15)), "captured inside the namespace");
    let (_, lines) = spy.interrupt();
    drop(inner);
    let records = parse_records(&lines.join("\n"));
    let target = records
        .iter()
        .find_map(|r| match r {
            Record::Target(t) if t.pid == pid => Some(t),
            _ => None,
        })
        .expect("target record");
    assert_eq!(target.ns_pid, Some(1), "the pid inside its namespace is shown");
    assert!(target.probed, "{target:?}");
    assert!(target.tls.iter().any(|s| s.path == libssl), "{target:?}");
    assert!(stream_with(&records, Direction::Send, mark.as_bytes()).is_some());
}

fn find_process_with_arg(arg: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_python = args.first().is_some_and(|a| a.ends_with(b"python3"));
        (is_python && args.contains(&arg.as_bytes())).then_some(pid)
    })
}

fn one_clear_sentence(output: &Output, expected: &str) {
    assert!(!output.status.success(), "must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(expected), "expected {expected:?} in:\n{stderr}");
    assert!(!stderr.contains("panicked"));
    assert!(stderr.lines().filter(|l| l.starts_with("error:")).count() == 1, "{stderr}");
}

#[test]
fn bad_input_gets_one_clear_sentence_and_a_failing_exit() {
    if !require_root("bad_input_gets_one_clear_sentence_and_a_failing_exit") {
        return;
    }
    // A pid that does not exist.
    let mut cmd = plugin();
    cmd.args(["local", "--pid", "4194300"]);
    one_clear_sentence(&run_plugin(cmd), "no process with pid 4194300");

    // A process with no TLS library.
    let sleeper = Guard(Command::new("sleep").arg("30").spawn().expect("sleep"));
    std::thread::sleep(Duration::from_millis(100));
    let mut cmd = plugin();
    cmd.args(["local", "--pid", &sleeper.pid().to_string()]);
    one_clear_sentence(&run_plugin(cmd), "no TLS library found");

    // A kernel without BTF (the path is redirected: ours has BTF).
    let mut cmd = plugin();
    cmd.env("TLSSPY_BTF_PATH", "/nonexistent/vmlinux").args(["local", "--pid", &sleeper.pid().to_string()]);
    one_clear_sentence(&run_plugin(cmd), "this kernel has no BTF");

    // Not root.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(workspace_bin("kubectl-tlsspy")).args([
        "local",
        "--pid",
        &sleeper.pid().to_string(),
    ]);
    one_clear_sentence(&run_plugin(cmd), "tlsspy needs root");

    // Nothing to spy on.
    let mut cmd = plugin();
    cmd.arg("local");
    one_clear_sentence(&run_plugin(cmd), "nothing to spy on");
}
