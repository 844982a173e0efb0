//! Request/response pairs from real programs, spied for real: HTTP/1.1 and
//! HTTP/2 against Debian's nginx, python clients, 50 concurrent HTTP/2
//! streams on one connection, and gRPC over an h2 client.

use std::process::{Command, Output};
use std::time::Duration;

use spy_protocol::record::{Protocol, Record, Role};
use tlsspy_tests::support::*;

fn run(command: Command) -> Output {
    let output = run_plugin(command);
    assert!(output.status.success(), "exit {:?}:\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    output
}

fn spy_command(args: &[&str]) -> Vec<Record> {
    let mut cmd = plugin();
    cmd.args(["local", "-o", "json"]).args(args);
    parse_records(&String::from_utf8_lossy(&run(cmd).stdout))
}

fn curl_args(cert: &Certificate) -> Vec<String> {
    vec![
        "curl".into(),
        "-s".into(),
        "-o".into(),
        "/dev/null".into(),
        "--cacert".into(),
        cert.cert().display().to_string(),
    ]
}

#[test]
fn curl_over_http1_and_http2_against_nginx_gives_one_exchange_each() {
    if !require_root("curl_over_http1_and_http2_against_nginx_gives_one_exchange_each") {
        return;
    }
    let cert = Certificate::new();
    let nginx = Nginx::start(&cert, &[]);
    for (flag, protocol, version) in
        [("--http1.1", Protocol::Http1, "HTTP/1.1"), ("--http2", Protocol::Http2, "HTTP/2")]
    {
        let mark = marker("curl");
        let mut args = vec!["--".to_string()];
        args.extend(curl_args(&cert));
        args.extend([flag.to_string(), "-H".into(), "Authorization: Bearer sekret".into()]);
        args.push(format!("https://127.0.0.1:{}/echo?id={mark}", nginx.port));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let records = spy_command(&args);
        let found = exchanges(&records);
        assert_eq!(found.len(), 1, "{flag}: {records:#?}");
        let x = found[0];
        assert_eq!(x.protocol, protocol);
        let request = x.request.as_ref().expect("request");
        assert_eq!((request.method.as_str(), request.version.as_str()), ("GET", version));
        assert_eq!(request.path, format!("/echo?id={mark}"));
        let auth = request.headers.iter().find(|h| h.name.eq_ignore_ascii_case("authorization")).expect("auth");
        assert!(auth.redacted && !auth.value.contains("sekret"), "secrets are redacted: {auth:?}");
        let response = x.response.as_ref().expect("response");
        assert_eq!(response.status, 200);
        assert_eq!(body_text(&response.body), format!("id={mark}\n"));
        assert!(x.latency_us.is_some());
        assert_eq!(x.conn.role, Role::Client);
        assert_eq!(x.conn.remote.map(|a| a.port()), Some(nginx.port));
        assert!(!records.iter().any(|r| matches!(r, Record::Chunk(_))), "{flag}: nothing left unparsed");
    }
}

#[test]
fn show_secrets_keeps_header_values() {
    if !require_root("show_secrets_keeps_header_values") {
        return;
    }
    let cert = Certificate::new();
    let nginx = Nginx::start(&cert, &[]);
    let mut args = vec!["--show-secrets".to_string(), "--".into()];
    args.extend(curl_args(&cert));
    args.extend(["-H".into(), "Authorization: Bearer sekret".into()]);
    args.push(format!("https://127.0.0.1:{}/echo?id=x", nginx.port));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let records = spy_command(&args);
    let request = exchanges(&records)[0].request.clone().expect("request");
    assert!(request.headers.iter().any(|h| h.value == "Bearer sekret" && !h.redacted));
}

#[test]
fn fifty_concurrent_http2_streams_on_one_connection_are_paired_correctly_on_the_server() {
    if !require_root("fifty_concurrent_http2_streams_on_one_connection_are_paired_correctly_on_the_server") {
        return;
    }
    let cert = Certificate::new();
    let nginx = Nginx::start(&cert, &[]);
    let workers = nginx.worker_pids();
    assert!(!workers.is_empty(), "nginx has workers");
    let mut cmd = plugin();
    cmd.args(["local", "-o", "json"]);
    for pid in &workers {
        cmd.args(["--pid", &pid.to_string()]);
    }
    let mut spy = BackgroundSpy::start(cmd);
    assert!(spy.wait_for("\"kind\":\"target\"", Duration::from_secs(20)));

    let ids: Vec<String> = (0..50).map(|i| marker(&format!("s{i}"))).collect();
    let mut curl = Command::new("curl");
    curl.args(["-s", "--http2", "--parallel", "--parallel-max", "50", "--cacert"]).arg(cert.cert());
    for id in &ids {
        curl.arg("-o").arg("/dev/null").arg(format!("https://127.0.0.1:{}/echo?id={id}", nginx.port));
    }
    assert!(curl.status().expect("curl").success());
    assert!(spy.wait_for(&ids[49], Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(300));
    let (_, lines) = spy.interrupt();
    let records = parse_records(&lines.join("\n"));
    let found = exchanges(&records);
    assert_eq!(found.len(), 50, "one exchange per stream");
    let conn = &found[0].conn.id;
    let mut streams = std::collections::HashSet::new();
    for x in &found {
        assert_eq!(&x.conn.id, conn, "all on one connection");
        assert_eq!(x.conn.role, Role::Server, "nginx is the server");
        assert_eq!(x.protocol, Protocol::Http2);
        assert!(streams.insert(x.stream_id.expect("stream id")), "distinct streams");
        let path = &x.request.as_ref().expect("request").path;
        let id = path.strip_prefix("/echo?id=").expect("echo path");
        assert_eq!(body_text(&x.response.as_ref().expect("response").body), format!("id={id}\n"), "paired");
    }
    for id in &ids {
        assert!(found.iter().any(|x| x.request.as_ref().is_some_and(|r| r.path.ends_with(id.as_str()))), "{id}");
    }
}

#[test]
fn a_python_client_post_is_one_exchange_with_its_body() {
    if !require_root("a_python_client_post_is_one_exchange_with_its_body") {
        return;
    }
    let cert = Certificate::new();
    let (_server, port) = python_https_server(&cert);
    let mark = marker("py");
    let client = format!(
        r#"
import http.client, ssl
ctx = ssl.create_default_context(cafile={cafile:?})
conn = http.client.HTTPSConnection("127.0.0.1", {port}, context=ctx)
for i in range(3):
    conn.request("POST", "/{mark}/" + str(i), body=b"payload-{mark}-" + str(i).encode(), headers={{"Cookie": "session=abc"}})
    conn.getresponse().read()
"#,
        cafile = cert.cert().display().to_string()
    );
    let records = spy_command(&["--", "python3", "-c", &client]);
    let found = exchanges(&records);
    assert_eq!(found.len(), 3, "keep-alive: three exchanges on one connection");
    for (i, x) in found.iter().enumerate() {
        let request = x.request.as_ref().expect("request");
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, format!("/{mark}/{i}"));
        assert_eq!(body_text(&request.body), format!("payload-{mark}-{i}"));
        assert!(request.headers.iter().any(|h| h.name.eq_ignore_ascii_case("cookie") && h.redacted));
        let response = x.response.as_ref().expect("response");
        let body = body_text(&response.body);
        assert!(body.starts_with(&format!("{} ", format!("payload-{mark}-{i}").len())), "{body}");
        assert_eq!(x.conn.id, found[0].conn.id);
    }
}

#[test]
fn grpc_calls_over_an_h2_client_show_method_messages_and_status() {
    if !require_root("grpc_calls_over_an_h2_client_show_method_messages_and_status") {
        return;
    }
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
    let mark = marker("grpc");
    let output = {
        let mut cmd = plugin();
        cmd.args(["local", "-o", "json", "--", "python3"])
            .arg(fixture("h2_grpc_client.py"))
            .arg(port.to_string())
            .arg(cert.cert())
            .arg(&mark);
        run(cmd)
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("echo:{mark}-s3")), "the client worked: {stderr}");
    let records = parse_records(&String::from_utf8_lossy(&output.stdout));
    let found = exchanges(&records);
    let by_method = |m: &str| {
        found
            .iter()
            .find(|x| x.grpc.as_ref().is_some_and(|g| g.method == m))
            .unwrap_or_else(|| panic!("no {m} call in {found:#?}"))
    };
    let say = by_method("Say");
    assert_eq!(say.protocol, Protocol::Grpc);
    let grpc = say.grpc.as_ref().expect("grpc");
    assert_eq!(
        (grpc.service.as_str(), grpc.request_messages, grpc.response_messages, grpc.status),
        ("tlsspy.Echo", 1, 1, Some(0))
    );
    let chat = by_method("Chat").grpc.as_ref().expect("grpc");
    assert_eq!((chat.request_messages, chat.response_messages, chat.status), (3, 3, Some(0)));
    let fail = by_method("Fail").grpc.as_ref().expect("grpc");
    assert_eq!(fail.status, Some(5));
    assert_eq!(fail.message.as_deref(), Some("no such thing"));
}

#[test]
fn the_live_view_shows_lines_and_a_summary_without_colors_when_piped() {
    if !require_root("the_live_view_shows_lines_and_a_summary_without_colors_when_piped") {
        return;
    }
    let cert = Certificate::new();
    let nginx = Nginx::start(&cert, &[]);
    let mut cmd = plugin();
    cmd.args(["local", "--"]).args(curl_args(&cert)).arg(format!("https://127.0.0.1:{}/echo?id=live", nginx.port));
    let output = run(cmd);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains('\x1b'), "no colors when piped:\n{stdout}");
    let line = stdout.lines().find(|l| l.contains("GET")).expect("an exchange line");
    assert!(line.starts_with("🔓 ") && line.contains("/echo?id=live") && line.contains(" 200 "), "{line}");
    assert!(stdout.contains("GET /echo"), "the summary table names the route:\n{stdout}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("0 events lost"));
}
