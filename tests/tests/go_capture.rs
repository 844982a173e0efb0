//! Go crypto/tls capture, end to end: Go HTTPS clients and servers built
//! here from `tests/fixtures/go/` (standard library only) as a normal, a
//! stripped (`-ldflags=-s -w`) and a PIE executable, spied for real with
//! eBPF through `kubectl-tlsspy local` (root).
//!
//! Oracles that do not trust the spy: for HTTP/1.1 a Python TLS peer
//! (`fixtures/raw_tls_peer.py`) records the exact bytes it exchanged with
//! the Go program; for HTTP/2 (Go's default over TLS) the Go peer checks
//! every body it got, and each exchange record must pair a request path with
//! the body the server made from that path.
//!
//! Each Go program is compiled once per test binary (a `OnceLock`), with a
//! Go build cache under `$CARGO_TARGET_TMPDIR/go-capture` so later runs only
//! link. Without Go the tests skip with a message, except under `CI=true`,
//! where they fail. Each test runs with every release `tests/src/go.rs`
//! requires: Debian's golang-1.23-go, the machine's Go 1.26 in
//! /usr/local/go and Go 1.27.3, which `.ci/install-deps` takes from the Go
//! module proxy.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use spy_protocol::record::{Direction, Exchange, Protocol, Record, TlsLibrary};
use tlsspy_tests::go::Toolchain;
use tlsspy_tests::support::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Normal,
    Stripped,
    Pie,
}

const VARIANTS: [Variant; 3] = [Variant::Normal, Variant::Stripped, Variant::Pie];

impl Variant {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Variant::Normal => &[],
            Variant::Stripped => &["-ldflags=-s -w"],
            Variant::Pie => &["-buildmode=pie"],
        }
    }
}

struct GoBuilds {
    /// `go env GOVERSION` of the toolchain, e.g. `go1.23.5`.
    version: String,
    tlsprobe: Vec<(Variant, PathBuf)>,
    notls: PathBuf,
}

impl GoBuilds {
    fn tlsprobe(&self, variant: Variant) -> &Path {
        &self.tlsprobe.iter().find(|(v, _)| *v == variant).expect("variant built").1
    }
}

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-capture")
}

fn toolchain(go: &Path) -> Toolchain {
    Toolchain { go: go.to_path_buf(), work: work_dir() }
}

fn go_build(toolchain: &Toolchain, source: &str, flags: &[&str], out: &Path) {
    toolchain.build(source, flags, out).unwrap_or_else(|err| panic!("{}", spy_image::error::chain(&err)));
}

/// The Go test programs, built once per test binary with each release of
/// the matrix: Debian's 1.23 and every newer release here (the machine's
/// 1.26 and the proxy's 1.27.3 after `.ci/install-deps`). Older releases
/// get the stripped-client check of `every_installed_go_release_…`.
/// `None`: no Go here (outside CI only).
fn matrix() -> Option<&'static [GoBuilds]> {
    static BUILDS: OnceLock<Option<Vec<GoBuilds>>> = OnceLock::new();
    BUILDS
        .get_or_init(|| {
            let installed = tlsspy_tests::go::installed();
            if in_ci() {
                let missing = tlsspy_tests::go::missing_required();
                assert!(missing.is_empty(), "CI=true but Go {missing:?} not installed: run .ci/install-deps");
            }
            let Some(first) = installed.iter().position(|g| g.release >= (1, 23, 0)) else {
                assert!(!in_ci(), "CI=true but no Go toolchain: run .ci/install-deps");
                eprintln!("SKIP: no Go toolchain ≥ 1.23 (install golang-1.23-go); Go capture tests not run");
                return None;
            };
            let bin = work_dir().join("bin");
            std::fs::create_dir_all(&bin).expect("create bin dir");
            let builds = installed[first..]
                .iter()
                .map(|installed| {
                    let go = toolchain(&installed.go);
                    let version = installed.version.clone();
                    let tlsprobe = VARIANTS
                        .iter()
                        .map(|&variant| {
                            let out = bin.join(format!("tlsprobe-{version}-{variant:?}").to_lowercase());
                            go_build(&go, "tlsprobe", variant.flags(), &out);
                            (variant, out)
                        })
                        .collect();
                    let notls = bin.join(format!("notls-{version}"));
                    go_build(&go, "notls", &["-ldflags=-s -w"], &notls);
                    GoBuilds { version, tlsprobe, notls }
                })
                .collect::<Vec<_>>();
            eprintln!("Go matrix: {}", builds.iter().map(|b| b.version.as_str()).collect::<Vec<_>>().join(", "));
            Some(builds)
        })
        .as_deref()
}

/// Root and Go are both needed; says why a test does not run.
fn setup(test: &str) -> Option<&'static [GoBuilds]> {
    if !require_root(test) {
        return None;
    }
    matrix()
}

/// Spies on a command: `kubectl-tlsspy local -o json [--raw] -- program args…`.
fn spy_command(raw: bool, program: &Path, args: &[&str]) -> (Output, Vec<Record>) {
    let mut cmd = plugin();
    cmd.args(["local", "-o", "json"]);
    if raw {
        cmd.arg("--raw");
    }
    cmd.arg("--").arg(program).args(args);
    let output = run_plugin(cmd);
    let records = parse_records(&String::from_utf8_lossy(&output.stdout));
    (output, records)
}

/// A Go HTTPS server (`tlsprobe serve`) on a free port.
fn go_server(program: &Path, cert: &Certificate, h1: bool) -> (Guard, u16) {
    let mut cmd = Command::new(program);
    cmd.arg("serve").arg("-cert").arg(cert.cert()).arg("-key").arg(cert.key());
    if h1 {
        cmd.arg("-h1");
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("start tlsprobe serve");
    let stdout = child.stdout.take().expect("stdout");
    let guard = Guard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read the server's port");
    let port = line
        .strip_prefix("listening ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from tlsprobe serve: {line:?}"));
    // It prints the port once listening: no probe connection needed.
    (guard, port)
}

/// The Python peer as a server, recording into `out`.req / `out`.resp.
fn raw_peer_server(cert: &Certificate, out: &Path) -> (Guard, u16) {
    let port = free_port();
    let child = Command::new("python3")
        .arg(fixture("raw_tls_peer.py"))
        .arg("server")
        .arg(port.to_string())
        .arg(cert.cert())
        .arg(cert.key())
        .arg(out)
        .spawn()
        .expect("run python3");
    let guard = Guard(child);
    wait_for_port(port, Duration::from_secs(10));
    (guard, port)
}

fn read_peer(out: &Path, ext: &str) -> Vec<u8> {
    let path = out.with_extension(ext);
    std::fs::read(&path).unwrap_or_else(|e| panic!("the raw peer wrote no {}: {e}", path.display()))
}

fn go_target(records: &[Record], pid: Option<u32>) -> &spy_protocol::record::Target {
    records
        .iter()
        .find_map(|r| match r {
            Record::Target(t) if pid.is_none_or(|p| p == t.pid) && !t.tls.is_empty() => Some(t),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no target record with a TLS stack in {records:#?}"))
}

fn assert_go_probed(records: &[Record], go_version: &str, pid: Option<u32>, what: &str) {
    let target = go_target(records, pid);
    assert!(target.probed, "{what}: {target:?}");
    let stack = target.tls.iter().find(|s| s.library == TlsLibrary::GoCryptoTls).expect("a Go stack");
    assert!(stack.probed, "{what}: {stack:?}");
    assert_eq!(stack.version.as_deref(), Some(go_version), "{what}");
}

fn assert_no_loss(records: &[Record], what: &str) {
    let Some(Record::Bye(bye)) = records.last() else { panic!("{what}: the stream does not end with bye") };
    assert_eq!((bye.stats.lost_events, bye.stats.lost_bytes), (0, 0), "{what}");
    assert_eq!(bye.stats.calls_without_socket, 0, "{what}: every Go call found its socket");
}

fn exchanges(records: &[Record]) -> impl Iterator<Item = &Exchange> {
    records.iter().filter_map(|r| match r {
        Record::Exchange(e) => Some(&**e),
        _ => None,
    })
}

/// (request path, response status, response body) of every exchange.
fn exchange_summaries(records: &[Record]) -> Vec<(String, u16, String)> {
    exchanges(records)
        .filter_map(|e| {
            let request = e.request.as_ref()?;
            let response = e.response.as_ref()?;
            let body = response.body.data.as_ref().map(|d| d.to_bytes()).unwrap_or_default();
            Some((request.path.clone(), response.status, String::from_utf8_lossy(&body).into_owned()))
        })
        .collect()
}

/// Spies on a Go HTTP/1.1 client fetching one URL from the raw peer at
/// `port` and checks both directions byte for byte against the peer's record.
fn check_client_http1(program: &Path, go_version: &str, cert: &Certificate, peer_out: &Path, port: u16, what: &str) {
    let mark = marker("goclient");
    let url = format!("https://127.0.0.1:{port}/{mark}");
    let ca = cert.cert().display().to_string();
    let (output, records) = spy_command(true, program, &["get", "-ca", &ca, "-h1", &url]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{what}: {stderr}");
    assert!(stderr.contains(&format!("HTTP/1.1 hello /{mark}")), "{what}: the client's own output: {stderr}");
    assert_go_probed(&records, go_version, None, what);

    let request = read_peer(peer_out, "req");
    let response = read_peer(peer_out, "resp");
    assert!(contains(&request, mark.as_bytes()), "{what}: the peer saw this run's request");
    let sent = stream_with(&records, Direction::Send, mark.as_bytes()).expect("the request was captured");
    assert_eq!(String::from_utf8_lossy(&sent), String::from_utf8_lossy(&request), "{what}: request bytes");
    let received = stream_with(&records, Direction::Recv, mark.as_bytes()).expect("the response was captured");
    assert_eq!(String::from_utf8_lossy(&received), String::from_utf8_lossy(&response), "{what}: response bytes");

    let chunk = records
        .iter()
        .find_map(|r| match r {
            Record::Chunk(c) => Some(c),
            _ => None,
        })
        .expect("a chunk");
    assert_eq!(chunk.conn.remote.map(|a| a.port()), Some(port), "{what}: the socket was found");
    assert_eq!(chunk.conn.tls_library, Some(TlsLibrary::GoCryptoTls), "{what}");
    assert_no_loss(&records, what);
}

#[test]
fn go_client_http1_request_and_response_bytes_are_exact() {
    let Some(matrix) = setup("go_client_http1_request_and_response_bytes_are_exact") else { return };
    for builds in matrix {
        let cert = Certificate::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("peer");
        let (_peer, port) = raw_peer_server(&cert, &out);
        for variant in VARIANTS {
            let what = format!("{} {variant:?} Go client, HTTP/1.1", builds.version);
            check_client_http1(builds.tlsprobe(variant), &builds.version, &cert, &out, port, &what);
        }
    }
}

/// Every Go release installed here (Debian's 1.19, 1.21, 1.22, 1.23, the
/// machine's 1.26, the proxy's 1.27.3 after `.ci/install-deps`), stripped, so struct offsets come from the
/// per-release table: each is captured byte for byte.
#[test]
fn every_installed_go_release_is_captured_when_stripped() {
    let Some(_) = setup("every_installed_go_release_is_captured_when_stripped") else { return };
    let cert = Certificate::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("peer");
    let (_peer, port) = raw_peer_server(&cert, &out);
    let mut checked = Vec::new();
    for installed in tlsspy_tests::go::installed() {
        let go = toolchain(&installed.go);
        let version = go.version().expect("go env GOVERSION");
        let program = work_dir().join(format!("bin/tlsprobe-{version}-stripped"));
        go_build(&go, "tlsprobe", Variant::Stripped.flags(), &program);
        check_client_http1(&program, &version, &cert, &out, port, &format!("{version} stripped Go client"));
        checked.push(version);
    }
    eprintln!("captured Go clients built with: {}", checked.join(", "));
}

#[test]
fn go_server_http1_request_and_response_bytes_are_exact() {
    let Some(matrix) = setup("go_server_http1_request_and_response_bytes_are_exact") else { return };
    for builds in matrix {
        let cert = Certificate::new();
        let dir = tempfile::tempdir().expect("tempdir");
        for variant in VARIANTS {
            let what = format!("{} {variant:?} Go server, HTTP/1.1", builds.version);
            let (server, port) = go_server(builds.tlsprobe(variant), &cert, true);
            let mut cmd = plugin();
            cmd.args(["local", "-o", "json", "--raw", "--pid", &server.pid().to_string()]);
            let mut spy = BackgroundSpy::start(cmd);
            assert!(
                spy.wait_for("\"kind\":\"target\"", Duration::from_secs(20)),
                "{what}: the spy reported its target"
            );

            let mark = marker(&format!("goserver-{variant:?}"));
            let out = dir.path().join(format!("client-{variant:?}"));
            let status = Command::new("python3")
                .arg(fixture("raw_tls_peer.py"))
                .arg("client")
                .arg(port.to_string())
                .arg(cert.cert())
                .arg(format!("/{mark}"))
                .arg(&out)
                .status()
                .expect("python3");
            assert!(status.success(), "{what}: the raw client");
            assert!(spy.wait_for(&format!("hello /{mark}"), Duration::from_secs(10)), "{what}: the response was seen");
            let (status, lines) = spy.interrupt();
            assert!(status.success(), "{what}: the spy exits cleanly: {status:?}");
            let records = parse_records(&lines.join("\n"));
            assert_go_probed(&records, &builds.version, Some(server.pid()), &what);

            let request = read_peer(&out, "req");
            let response = read_peer(&out, "resp");
            let received =
                stream_with(&records, Direction::Recv, mark.as_bytes()).expect("the server read the request");
            assert_eq!(String::from_utf8_lossy(&received), String::from_utf8_lossy(&request), "{what}: request bytes");
            let sent = stream_with(&records, Direction::Send, mark.as_bytes()).expect("the server's response");
            assert_eq!(String::from_utf8_lossy(&sent), String::from_utf8_lossy(&response), "{what}: response bytes");
            let conn = records
                .iter()
                .find_map(|r| match r {
                    Record::Chunk(c) => Some(&c.conn),
                    _ => None,
                })
                .expect("a chunk");
            assert_eq!(conn.local.map(|a| a.port()), Some(port), "{what}: the server's side of the socket");
            assert_no_loss(&records, &what);
        }
    }
}

#[test]
fn go_client_http2_exchanges_carry_path_and_body() {
    let Some(matrix) = setup("go_client_http2_exchanges_carry_path_and_body") else { return };
    for builds in matrix {
        let cert = Certificate::new();
        let (_server, port) = go_server(builds.tlsprobe(Variant::Normal), &cert, false);
        let ca = cert.cert().display().to_string();
        for variant in VARIANTS {
            let what = format!("{} {variant:?} Go client, HTTP/2", builds.version);
            let mark = marker(&format!("goh2client-{variant:?}"));
            let urls: Vec<String> = (0..3).map(|i| format!("https://127.0.0.1:{port}/{mark}-{i}")).collect();
            let mut args = vec!["get", "-ca", &ca];
            args.extend(urls.iter().map(String::as_str));
            let (output, records) = spy_command(false, builds.tlsprobe(variant), &args);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{what}: {stderr}");
            assert!(stderr.contains(&format!("HTTP/2.0 hello /{mark}-0")), "{what}: HTTP/2 was spoken: {stderr}");
            assert_go_probed(&records, &builds.version, None, &what);
            let found = exchange_summaries(&records);
            for i in 0..3 {
                let path = format!("/{mark}-{i}");
                assert!(
                    found.contains(&(path.clone(), 200, format!("hello {path}\n"))),
                    "{what}: no exchange for {path} in {found:#?}"
                );
            }
            assert!(exchanges(&records).all(|e| e.protocol == Protocol::Http2), "{what}: all HTTP/2");
            assert_no_loss(&records, &what);
        }
    }
}

#[test]
fn go_server_http2_exchanges_carry_path_and_body() {
    let Some(matrix) = setup("go_server_http2_exchanges_carry_path_and_body") else { return };
    for builds in matrix {
        let cert = Certificate::new();
        let ca = cert.cert().display().to_string();
        for variant in VARIANTS {
            let what = format!("{} {variant:?} Go server, HTTP/2", builds.version);
            let (server, port) = go_server(builds.tlsprobe(variant), &cert, false);
            let mut cmd = plugin();
            cmd.args(["local", "-o", "json", "--pid", &server.pid().to_string()]);
            let mut spy = BackgroundSpy::start(cmd);
            assert!(
                spy.wait_for("\"kind\":\"target\"", Duration::from_secs(20)),
                "{what}: the spy reported its target"
            );

            let mark = marker(&format!("goh2server-{variant:?}"));
            let urls: Vec<String> = (0..3).map(|i| format!("https://127.0.0.1:{port}/{mark}-{i}")).collect();
            let output = Command::new(builds.tlsprobe(Variant::Stripped))
                .args(["get", "-ca", &ca])
                .args(&urls)
                .output()
                .expect("run the Go client");
            assert!(output.status.success(), "{what}: {}", String::from_utf8_lossy(&output.stderr));
            assert!(String::from_utf8_lossy(&output.stdout).starts_with("HTTP/2.0 "), "{what}: HTTP/2 was spoken");
            assert!(spy.wait_for(&format!("hello /{mark}-2"), Duration::from_secs(10)), "{what}: the last exchange");
            let (status, lines) = spy.interrupt();
            assert!(status.success(), "{what}: the spy exits cleanly: {status:?}");
            let records = parse_records(&lines.join("\n"));
            assert_go_probed(&records, &builds.version, Some(server.pid()), &what);
            let found = exchange_summaries(&records);
            for i in 0..3 {
                let path = format!("/{mark}-{i}");
                assert!(
                    found.contains(&(path.clone(), 200, format!("hello {path}\n"))),
                    "{what}: no exchange for {path} in {found:#?}"
                );
            }
            let exchange = exchanges(&records).next().expect("an exchange");
            assert_eq!(exchange.protocol, Protocol::Http2, "{what}");
            assert_eq!(exchange.conn.local.map(|a| a.port()), Some(port), "{what}: the server's side of the socket");
            assert_no_loss(&records, &what);
        }
    }
}

/// 200 goroutines, one request each, all at once: every id is in exactly one
/// exchange, and that exchange's response is the one made for that id.
fn concurrent_goroutines_never_mix_up(h1: bool) {
    let Some(matrix) = matrix() else { return };
    for builds in matrix {
        let what = if h1 { "HTTP/1.1 (many connections)" } else { "HTTP/2 (one connection)" };
        let what = &format!("{} {what}", builds.version);
        let cert = Certificate::new();
        let (_server, port) = go_server(builds.tlsprobe(Variant::Normal), &cert, h1);
        let mark = marker(if h1 { "conc1" } else { "conc2" });
        let base = format!("https://127.0.0.1:{port}/{mark}");
        let ca = cert.cert().display().to_string();
        let mut args = vec!["concurrent", "-ca", &ca, "-n", "200"];
        if h1 {
            args.push("-h1");
        }
        args.push(&base);
        let (output, records) = spy_command(false, builds.tlsprobe(Variant::Stripped), &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{what}: {stderr}");
        assert!(stderr.contains("concurrent ok 200"), "{what}: the client checked its own bodies: {stderr}");

        // Every exchange is whole: a response seen before its request (events
        // out of causal order) would leave a half exchange here.
        for exchange in exchanges(&records) {
            assert!(
                exchange.request.is_some() && exchange.response.is_some() && exchange.incomplete.is_none(),
                "{what}: a half exchange: {exchange:?}"
            );
        }
        let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (path, status, body) in exchange_summaries(&records) {
            let Some(id) = path.strip_prefix(&format!("/{mark}-")) else { continue };
            assert_eq!(status, 200, "{what}: {path}");
            assert_eq!(body, format!("hello {path}\n"), "{what}: the response of {path} belongs to {path}");
            by_id.entry(id.to_string()).or_default().push(body);
        }
        for i in 0..200 {
            let seen = by_id.get(&i.to_string()).map_or(0, Vec::len);
            assert_eq!(seen, 1, "{what}: id {i} is in {seen} exchanges");
        }
        assert_no_loss(&records, what);
    }
}

#[test]
fn two_hundred_goroutines_on_one_http2_connection_never_mix_up() {
    if require_root("two_hundred_goroutines_on_one_http2_connection_never_mix_up") {
        concurrent_goroutines_never_mix_up(false);
    }
}

#[test]
fn two_hundred_goroutines_over_http1_never_mix_up() {
    if require_root("two_hundred_goroutines_over_http1_never_mix_up") {
        concurrent_goroutines_never_mix_up(true);
    }
}

#[test]
fn goroutines_whose_stacks_grow_and_shrink_run_correctly_while_spied() {
    let Some(matrix) = setup("goroutines_whose_stacks_grow_and_shrink_run_correctly_while_spied") else { return };
    for builds in matrix {
        let cert = Certificate::new();
        let (_server, port) = go_server(builds.tlsprobe(Variant::Normal), &cert, true);
        let mark = marker("deep");
        let addr = format!("127.0.0.1:{port}");
        let ca = cert.cert().display().to_string();
        let (workers, rounds) = (8, 25);
        let args = [
            "deep",
            "-ca",
            &ca,
            "-addr",
            &addr,
            "-workers",
            &workers.to_string(),
            "-rounds",
            &rounds.to_string(),
            "-mark",
            &mark,
        ];
        let program = builds.tlsprobe(Variant::Pie);

        // Unspied first: the same work must give the same output spied.
        let alone = Command::new(program).args(args).output().expect("run tlsprobe deep");
        assert!(alone.status.success(), "unspied: {}", String::from_utf8_lossy(&alone.stderr));
        let expected = String::from_utf8_lossy(&alone.stdout).into_owned();
        assert!(expected.starts_with(&format!("deep ok {} requests", workers * rounds)), "{expected}");

        let (output, records) = spy_command(false, program, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "the spied target did not crash: {:?}\n{stderr}", output.status);
        assert!(stderr.contains(expected.trim_end()), "spied output {stderr:?} differs from unspied {expected:?}");

        let found = exchange_summaries(&records);
        for w in 0..workers {
            for r in 0..rounds {
                let path = format!("/{mark}-{w}-{r}");
                assert!(
                    found.contains(&(path.clone(), 200, format!("hello {path}\n"))),
                    "no exchange for {path} ({} exchanges)",
                    found.len()
                );
            }
        }
        assert_no_loss(&records, "deep recursion");
    }
}

#[test]
fn a_go_program_without_crypto_tls_is_reported_with_the_reason() {
    let Some(matrix) = setup("a_go_program_without_crypto_tls_is_reported_with_the_reason") else { return };
    for builds in matrix {
        let (output, records) = spy_command(false, &builds.notls, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(stderr.contains("notls done"), "the target ran: {stderr}");
        let target = go_target(&records, None);
        assert!(!target.probed, "{target:?}");
        let stack = &target.tls[0];
        assert_eq!(stack.library, TlsLibrary::GoCryptoTls, "{target:?}");
        assert!(!stack.probed);
        assert_eq!(stack.version.as_deref(), Some(builds.version.as_str()), "{target:?}");
        let reason = target.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("crypto/tls.(*Conn).Write is not in this binary"),
            "the reason names what is missing: {reason:?}"
        );

        // Spied by pid, the same reason is the one sentence the plugin fails with.
        // It must outlive the spy's start (loading the probes takes a while on
        // a busy machine): a zombie has no mappings left to examine.
        let mut child = Command::new(&builds.notls).arg("60s").stdout(Stdio::null()).spawn().expect("start notls");
        std::thread::sleep(Duration::from_millis(100));
        let mut cmd = plugin();
        cmd.args(["local", "--pid", &child.id().to_string()]);
        let output = run_plugin(cmd);
        let _ = child.kill();
        let _ = child.wait();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains("crypto/tls.(*Conn).Write is not in this binary"), "{stderr}");
    }
}

#[test]
fn a_go_binary_of_a_release_we_do_not_probe_is_reported_and_left_alone() {
    let Some(matrix) = setup("a_go_binary_of_a_release_we_do_not_probe_is_reported_and_left_alone") else { return };
    for builds in matrix {
        // No pre-1.17 toolchain here: a real build whose version string (build
        // info and runtime.Version) is rewritten to go1.16, same length, so the
        // program still runs and the spy must refuse it by its release.
        let version = &builds.version;
        let old_release = format!("go1.16{}", &version["go1.23".len()..]);
        assert_eq!(old_release.len(), version.len(), "{version}: a two-digit minor");
        let mut bytes = std::fs::read(builds.tlsprobe(Variant::Stripped)).expect("read tlsprobe");
        let mut patched = 0;
        let mut at = 0;
        while let Some(pos) = bytes[at..].windows(version.len()).position(|w| w == version.as_bytes()) {
            bytes[at + pos..at + pos + version.len()].copy_from_slice(old_release.as_bytes());
            at += pos + version.len();
            patched += 1;
        }
        assert!(patched > 0, "the version string is in the binary");
        let dir = tempfile::tempdir().expect("tempdir");
        let program = dir.path().join("tlsprobe-go116");
        std::fs::write(&program, &bytes).expect("write");
        std::fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");

        let cert = Certificate::new();
        let out = dir.path().join("peer");
        let (_peer, port) = raw_peer_server(&cert, &out);
        let ca = cert.cert().display().to_string();
        let url = format!("https://127.0.0.1:{port}/{}", marker("go116"));
        let (output, records) = spy_command(true, &program, &["get", "-ca", &ca, "-h1", &url]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "the target runs normally: {stderr}");
        assert!(stderr.contains("HTTP/1.1 hello /go116"), "{stderr}");
        let target = go_target(&records, None);
        assert!(!target.probed, "{target:?}");
        assert_eq!(target.tls[0].library, TlsLibrary::GoCryptoTls);
        assert_eq!(target.tls[0].version.as_deref(), Some(old_release.as_str()));
        let reason = target.reason.as_deref().unwrap_or_default();
        assert!(reason.contains(&format!("Go version {old_release} is not supported")), "{reason}");
        assert!(!records.iter().any(|r| matches!(r, Record::Chunk(_))), "nothing was captured from a refused binary");
    }
}
