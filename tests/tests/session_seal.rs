//! A session belongs to the plugin that started it: the agent, run as the
//! spy pod runs it, takes its key only from a line whose digest matches its
//! arguments, obeys only lines sealed under that key, and writes nothing a
//! second reader of its stdout (another attacher, the pod's log) can read.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spy_protocol::record::{Line, Record};
use spy_protocol::seal::{Direction, Opener, Sealer, SessionKey};
use tlsspy_tests::support::{require_root, wait_timeout, workspace_bin};

fn agent(digest: &str, heartbeat_timeout: u64) -> std::process::Child {
    Command::new(workspace_bin("tlsspy-agent"))
        .args(["--session", "--session-key-digest", digest, "--heartbeat-timeout"])
        .arg(heartbeat_timeout.to_string())
        .args(["--node", "seal-test", "--stats-interval", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tlsspy-agent")
}

#[test]
fn a_session_is_refused_without_its_digest() {
    let output = Command::new(workspace_bin("tlsspy-agent"))
        .args(["--session", "--heartbeat-timeout", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("run tlsspy-agent");
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--session-key-digest"), "{stderr}");
}

#[test]
fn a_wrong_key_and_clear_commands_start_nothing() {
    let key = SessionKey::generate().expect("random");
    let intruder = SessionKey::generate().expect("random");
    let mut agent = agent(&key.digest(), 2);
    let mut stdin = agent.stdin.take().expect("stdin");
    // Someone else's key, then the clear commands of the old protocol.
    stdin.write_all(intruder.line().as_bytes()).expect("write");
    stdin.write_all(b"go\nhb\n").expect("write");
    let started = Instant::now();
    let status = wait_timeout(&mut agent, Duration::from_secs(30)).expect("the agent gives up by itself");
    drop(stdin);
    let mut stdout = String::new();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut agent.stdout.take().expect("stdout"), &mut stdout).expect("read");
    std::io::Read::read_to_string(&mut agent.stderr.take().expect("stderr"), &mut stderr).expect("read");
    assert!(!status.success(), "no session without the key");
    assert!(started.elapsed() >= Duration::from_secs(2), "the clear lines kept nothing alive but the wait");
    assert_eq!(stdout, "", "nothing is written before the plugin's own go");
    assert!(stderr.contains("no session key on stdin"), "{stderr}");
    assert!(stderr.contains("does not match the digest"), "{stderr}");
}

#[test]
fn only_the_key_holder_reads_records_and_commands_the_spy() {
    if !require_root("only_the_key_holder_reads_records_and_commands_the_spy") {
        return;
    }
    let key = SessionKey::generate().expect("random");
    let intruder = SessionKey::generate().expect("random");
    let mut agent = agent(&key.digest(), 10);
    let mut stdin = agent.stdin.take().expect("stdin");
    let mut sealer = Sealer::new(&key, Direction::ToSpy);
    let mut forger = Sealer::new(&intruder, Direction::ToSpy);
    stdin.write_all(key.line().as_bytes()).expect("key");
    stdin.write_all(sealer.seal(b"go").as_bytes()).expect("go");
    stdin.flush().expect("flush");

    let stdout = BufReader::new(agent.stdout.take().expect("stdout"));
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut opener = Opener::new(&key, Direction::ToPlugin);
    let first = lines_rx.recv_timeout(Duration::from_secs(30)).expect("the hello line");
    assert!(first.starts_with("s "), "sealed, not clear JSON: {first}");
    assert!(!first.contains("hello"), "{first}");
    // A second reader with the wrong key learns nothing.
    assert!(Opener::new(&intruder, Direction::ToPlugin).open(&first).is_err());
    let hello: Line = serde_json::from_slice(&opener.open(&first).expect("opens under the key")).expect("a record");
    assert!(matches!(hello.record, Record::Hello(_)), "{:?}", hello.record);

    // Another attacher's stop, sealed under its key or in clear, is dropped…
    stdin.write_all(forger.seal(b"stop").as_bytes()).expect("forged stop");
    stdin.write_all(b"stop\n").expect("clear stop");
    stdin.flush().expect("flush");
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.try_wait().expect("wait").is_none(), "a forged stop must not end the session");
    // …and the plugin's own stop ends it, with a sealed bye.
    stdin.write_all(sealer.seal(b"stop").as_bytes()).expect("stop");
    stdin.flush().expect("flush");
    let status = wait_timeout(&mut agent, Duration::from_secs(30)).expect("the agent ends on stop");
    assert!(status.success(), "{status:?}");
    let mut records = Vec::new();
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(5)) {
        assert!(line.starts_with("s "), "every stdout line is sealed: {line}");
        let plain = opener.open(&line).expect("each line opens in order");
        records.push(serde_json::from_slice::<Line>(&plain).expect("a record").record);
    }
    assert!(
        records.iter().any(|r| matches!(r, Record::Bye(b) if b.reason.contains("stopped by the plugin"))),
        "{records:?}"
    );
}
