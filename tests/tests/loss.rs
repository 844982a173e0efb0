//! Loss is always told, and closed connections are let go at once: real
//! OpenSSL (Python's ssl module) spied for real with eBPF (root).
//!
//! To lose events for real, the client stops the spy (its parent, the
//! plugin in `local` mode) with SIGSTOP while it pulls 4 MiB through a
//! 1 MiB ring buffer, then lets it go on: nothing drains the ring
//! meanwhile, exactly as when the spy is descheduled on a busy node.

use std::process::Output;

use spy_protocol::record::{Bye, Record};
use tlsspy_tests::support::*;

fn records_of(output: &Output) -> Vec<Record> {
    parse_records(&String::from_utf8_lossy(&output.stdout))
}

fn bye_of(records: &[Record]) -> &Bye {
    match records.last() {
        Some(Record::Bye(bye)) => bye,
        other => panic!("the stream does not end with bye: {other:?}"),
    }
}

/// A Python client on one keep-alive connection: a request before, 16
/// responses of 256 KiB while the spy is stopped, a request after.
fn client_script(cert: &Certificate, port: u16, before: &str, after: &str) -> String {
    format!(
        r#"
import http.client, os, signal, ssl, sys, time
ctx = ssl.create_default_context(cafile={cafile:?})
conn = http.client.HTTPSConnection("127.0.0.1", {port}, context=ctx)
def get(path):
    conn.request("GET", path)
    return conn.getresponse().read()
assert get("/{before}") == b"hello {before}\n"
time.sleep(0.5)  # the spy drains what it has
spy = os.getppid()
os.kill(spy, signal.SIGSTOP)
try:
    for _ in range(16):
        assert len(get("/big/262144")) == 262144
finally:
    os.kill(spy, signal.SIGCONT)
time.sleep(0.5)
assert get("/{after}") == b"hello {after}\n"
"#,
        cafile = cert.cert().display().to_string(),
    )
}

/// Whole TLS calls lost between others are marked where they happened:
/// the exchange they broke says how many calls and bytes were lost there,
/// no exchange is made of spliced pieces, what follows the gap is still
/// shown, and the counters reach the bye record and the end line.
#[test]
fn lost_calls_are_marked_where_they_happened_and_counted() {
    if !require_root("lost_calls_are_marked_where_they_happened_and_counted") {
        return;
    }
    let cert = Certificate::new();
    let (_server, port) = python_https_server(&cert);
    let (before, after) = (marker("before"), marker("after"));
    let mut cmd = plugin();
    cmd.args(["local", "-o", "json", "--ring-buffer-mib", "1", "--", "python3", "-c"]);
    cmd.arg(client_script(&cert, port, &before, &after));
    let output = run_plugin(cmd);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}: {stderr}", output.status);
    let records = records_of(&output);
    let stats = &bye_of(&records).stats;

    // The kernel lost events, and user space found where.
    assert!(stats.lost_events > 0, "the 1 MiB ring never filled: {stats:?}");
    assert!(stats.gaps > 0 && stats.gap_calls > 0 && stats.gap_bytes > 0, "{stats:?}");
    eprintln!(
        "lost {} events ({} bytes); {} gaps, {} TLS calls, {} bytes",
        stats.lost_events, stats.lost_bytes, stats.gaps, stats.gap_calls, stats.gap_bytes
    );

    let all = exchanges(&records);
    // What came before the loss is whole.
    let first = all.iter().find(|x| x.request.as_ref().is_some_and(|r| r.path == format!("/{before}")));
    let first = first.expect("the request before the loss is an exchange");
    assert_eq!(first.incomplete, None, "{first:?}");
    // The exchange the loss broke says so, with what was lost there.
    let broken: Vec<&str> =
        all.iter().filter_map(|x| x.incomplete.as_deref()).filter(|why| why.contains("lost here")).collect();
    assert!(!broken.is_empty(), "no exchange says where calls were lost: {all:#?}");
    assert!(broken.iter().any(|why| why.contains("TLS calls lost here (") || why.contains("TLS call lost here (")));
    // Never spliced: every exchange told complete is a real request with
    // its own, whole response.
    for x in all.iter().filter(|x| x.incomplete.is_none()) {
        let path = x.request.as_ref().map(|r| r.path.clone()).unwrap_or_default();
        let size = x.response.as_ref().map_or(0, |r| r.body.size);
        match path.as_str() {
            "/big/262144" => assert_eq!(size, 262144, "{x:?}"),
            p if p == format!("/{before}") || p == format!("/{after}") => {
                assert_eq!(size, p.len() as u64 + "hello \n".len() as u64 - 1, "{x:?}")
            }
            other => panic!("an exchange made of pieces that do not belong together: {other} {x:?}"),
        }
    }
    // What follows the gap is still shown (as an exchange or raw chunks).
    let json = String::from_utf8_lossy(&output.stdout);
    assert!(json.contains(&after), "the request after the loss is missing");
    // A warning names the connection where the first loss was.
    let warning = records.iter().find_map(|r| match r {
        Record::Warning(w) if w.message.contains(" lost here (") && w.message.contains(" at byte ") => Some(w),
        _ => None,
    });
    let warning = warning.expect("no warning tells where the loss was");
    eprintln!("warning: {}\nbroken: {}", warning.message, broken[0]);
    // The end line tells it all, and the flag that helps.
    let end = stderr.lines().rev().find(|l| l.starts_with("tlsspy: ")).expect("an end line");
    eprintln!("end line: {end}");
    assert!(end.contains("; LOST ") && end.contains(" data events ("), "{end}");
    assert!(
        end.contains(&format!("{} TLS calls and {} bytes at {} places", stats.gap_calls, stats.gap_bytes, stats.gaps))
    );
    assert!(end.contains("raise --ring-buffer-mib"), "{end}");
    assert!(!end.contains("0 events lost"), "{end}");
}

/// Without loss, the line says so, and the gap counters stay zero.
#[test]
fn no_loss_no_gap() {
    if !require_root("no_loss_no_gap") {
        return;
    }
    let cert = Certificate::new();
    let (_server, port) = python_https_server(&cert);
    let mark = marker("whole");
    let client = format!(
        r#"
import http.client, ssl
ctx = ssl.create_default_context(cafile={cafile:?})
conn = http.client.HTTPSConnection("127.0.0.1", {port}, context=ctx)
for _ in range(8):
    conn.request("GET", "/big/262144")
    assert len(conn.getresponse().read()) == 262144
conn.request("GET", "/{mark}")
conn.getresponse().read()
"#,
        cafile = cert.cert().display().to_string(),
    );
    let mut cmd = plugin();
    cmd.args(["local", "-o", "json", "--", "python3", "-c", &client]);
    let output = run_plugin(cmd);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let records = records_of(&output);
    let stats = &bye_of(&records).stats;
    assert_eq!((stats.lost_events, stats.gaps, stats.gap_calls, stats.gap_bytes), (0, 0, 0, 0), "{stats:?}");
    assert_eq!((stats.lost_process_events, stats.lost_close_events), (0, 0), "{stats:?}");
    let all = exchanges(&records);
    assert_eq!(all.len(), 9, "{all:#?}");
    assert!(all.iter().all(|x| x.incomplete.is_none()), "{all:#?}");
    let end = stderr.lines().rev().find(|l| l.starts_with("tlsspy: ")).expect("an end line");
    assert!(end.contains("; 0 events lost"), "{end}");
}

/// A connection the target closes is finished and forgotten at once (the
/// close seen in the kernel), not after the idle timeout or at the end of
/// the session: the bye record counts each one as closed, none as idle.
#[test]
fn closed_connections_are_forgotten_at_once() {
    if !require_root("closed_connections_are_forgotten_at_once") {
        return;
    }
    let cert = Certificate::new();
    let (_server, port) = python_https_server(&cert);
    let mark = marker("closed");
    let client = format!(
        r#"
import http.client, ssl, time
ctx = ssl.create_default_context(cafile={cafile:?})
for i in range(3):
    conn = http.client.HTTPSConnection("127.0.0.1", {port}, context=ctx)
    conn.request("GET", f"/{mark}-{{i}}")
    conn.getresponse().read()
    conn.close()
# Still running: anything forgotten from here on was forgotten at its close.
time.sleep(1)
"#,
        cafile = cert.cert().display().to_string(),
    );
    let mut cmd = plugin();
    cmd.args(["local", "-o", "json", "--", "python3", "-c", &client]);
    let output = run_plugin(cmd);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let records = records_of(&output);
    let stats = &bye_of(&records).stats;
    assert_eq!(stats.connections, 3, "{stats:?}");
    assert_eq!(stats.memory.closed_connections, 3, "{stats:?}");
    assert_eq!((stats.memory.idle_connections, stats.memory.evicted_connections), (0, 0), "{stats:?}");
    // Each exchange is whole: a close finishes it, it does not cut it.
    let all = exchanges(&records);
    assert_eq!(all.len(), 3, "{all:#?}");
    assert!(all.iter().all(|x| x.incomplete.is_none()), "{all:#?}");
    let end = stderr.lines().rev().find(|l| l.starts_with("tlsspy: ")).expect("an end line");
    assert!(end.contains("3 closed connections forgotten at once"), "{end}");
}
