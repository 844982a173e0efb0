//! The redaction matrix: each kind of secret, sent by real TLS programs,
//! through each output path of `kubectl tlsspy local`. By default no
//! secret value appears anywhere in the output; with `--show-secrets`
//! every one does. And captured escape sequences reach the live view
//! escaped.
//!
//! Run with `--nocapture` to see the matrix:
//! `cargo test -p tlsspy-tests --test redaction -- --nocapture`

use std::fmt::Write as _;
use std::process::{Command, Output};
use std::time::Duration;

use spy_protocol::record::Record;
use tlsspy_tests::support::*;

/// Secret kinds: a row name and the prefix of its value (the value is the
/// prefix and the run's marker, so no other text can contain it).
const KINDS: &[(&str, &str)] = &[
    ("Authorization", "AUTHZ"),
    ("Cookie", "COOKIE"),
    ("Set-Cookie", "SETCOOKIE"),
    ("query access_token", "QUERY"),
    ("Location code=", "LOCATION"),
    ("JSON body password", "JSONPW"),
    ("form body client_secret", "FORM"),
    ("HPACK never-indexed", "NEVERIDX"),
    ("gRPC metadata", "GRPCMETA"),
];

/// HTTP/1 scenarios send these (curl to fixtures/secrets_server.py).
const HTTP1_KINDS: &[&str] = &["AUTHZ", "COOKIE", "SETCOOKIE", "QUERY", "LOCATION", "JSONPW", "FORM"];
/// The HTTP/2 client to nginx.
const H2_KINDS: &[&str] = &["AUTHZ", "COOKIE", "QUERY", "JSONPW", "FORM", "NEVERIDX"];
/// The HTTP/2 client's gRPC call.
const GRPC_KINDS: &[&str] = &["AUTHZ", "COOKIE", "NEVERIDX", "GRPCMETA"];

/// Output paths: a column name, and which kinds its scenario sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// HTTP/1 parsed, the live view with --full (headers and bodies).
    Live,
    /// HTTP/1 parsed, JSON lines.
    Json,
    /// HTTP/1 unparsed: --raw chunks as JSON lines.
    Raw,
    /// HTTP/1 with 130 headers per request: the parser gives up and the
    /// connection falls back to chunks.
    Fallback,
    /// HTTP/2 to nginx, JSON lines.
    Http2,
    /// gRPC over HTTP/2, JSON lines.
    Grpc,
}

const FORMATS: &[(Format, &str)] = &[
    (Format::Live, "live"),
    (Format::Json, "JSON"),
    (Format::Raw, "--raw"),
    (Format::Fallback, "parser fallback"),
    (Format::Http2, "HTTP/2"),
    (Format::Grpc, "gRPC"),
];

impl Format {
    fn kinds(self) -> &'static [&'static str] {
        match self {
            Format::Live | Format::Json | Format::Raw | Format::Fallback => HTTP1_KINDS,
            Format::Http2 => H2_KINDS,
            Format::Grpc => GRPC_KINDS,
        }
    }
}

/// Servers shared by every cell.
struct Servers {
    cert: Certificate,
    mark: String,
    http1_port: u16,
    nginx: Nginx,
    grpc_port: u16,
    _guards: Vec<Guard>,
}

impl Servers {
    fn start() -> Servers {
        let cert = Certificate::new();
        // Digits and dashes only: nothing in it is a separator a masker
        // could stop at.
        let mark = marker("m");
        let http1_port = free_port();
        let http1 = Guard(
            Command::new("python3")
                .arg(fixture("secrets_server.py"))
                .arg(http1_port.to_string())
                .arg(cert.cert())
                .arg(cert.key())
                .arg(&mark)
                .spawn()
                .expect("run python3"),
        );
        let grpc_port = free_port();
        let grpc = Guard(
            Command::new("python3")
                .arg(fixture("grpc_server.py"))
                .arg(grpc_port.to_string())
                .arg(cert.cert())
                .arg(cert.key())
                .spawn()
                .expect("python3 grpc server (pip install grpcio)"),
        );
        wait_for_port(http1_port, Duration::from_secs(10));
        wait_for_port(grpc_port, Duration::from_secs(20));
        let nginx = Nginx::start(&cert, &[]);
        Servers { cert, mark, http1_port, nginx, grpc_port, _guards: vec![http1, grpc] }
    }

    fn secret(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.mark)
    }

    /// curl: a GET with the header secrets and a query token, a JSON POST
    /// and a form POST, on one connection (`--next`). `pad` adds 130
    /// headers to each request, past what the HTTP/1 parser takes.
    fn curl(&self, pad: bool) -> Vec<String> {
        let url = |path: &str| format!("https://127.0.0.1:{}{path}", self.http1_port);
        let mut args = vec!["curl".to_string()];
        let common = |args: &mut Vec<String>| {
            args.extend(["-s", "-o", "/dev/null", "--http1.1", "--cacert"].map(String::from));
            args.push(self.cert.cert().display().to_string());
            if pad {
                for i in 0..130 {
                    args.extend(["-H".to_string(), format!("X-Pad-{i}: v")]);
                }
            }
        };
        common(&mut args);
        args.extend(["-H".into(), format!("Authorization: Bearer {}", self.secret("AUTHZ"))]);
        args.extend(["-H".into(), format!("Cookie: sid={}", self.secret("COOKIE"))]);
        args.push(url(&format!("/cb?access_token={}&id={}", self.secret("QUERY"), self.mark)));
        args.push("--next".into());
        common(&mut args);
        args.extend(["-H".into(), "Content-Type: application/json".into(), "--data-binary".into()]);
        args.push(format!(r#"{{"user":"u","password":"{}"}}"#, self.secret("JSONPW")));
        args.push(url(&format!("/login?id={}", self.mark)));
        args.push("--next".into());
        common(&mut args);
        args.push("--data-binary".into());
        args.push(format!("grant_type=client_credentials&client_secret={}", self.secret("FORM")));
        args.push(url(&format!("/token?id={}", self.mark)));
        args
    }

    fn h2_client(&self, mode: &str, port: u16) -> Vec<String> {
        vec![
            "python3".into(),
            fixture("h2_secrets_client.py").display().to_string(),
            mode.into(),
            port.to_string(),
            self.cert.cert().display().to_string(),
            self.mark.clone(),
        ]
    }

    /// Runs one cell's scenario: the plugin's output, and all the text a
    /// reader could get from it (stdout, plus chunk and body bytes decoded
    /// from base64 in JSON).
    fn run(&self, format: Format, show_secrets: bool) -> (Output, String) {
        let mut cmd = plugin();
        cmd.arg("local");
        let (flags, program): (&[&str], Vec<String>) = match format {
            Format::Live => (&["--full"], self.curl(false)),
            Format::Json => (&["-o", "json"], self.curl(false)),
            Format::Raw => (&["-o", "json", "--raw"], self.curl(false)),
            Format::Fallback => (&["-o", "json"], self.curl(true)),
            Format::Http2 => (&["-o", "json"], self.h2_client("http", self.nginx.port)),
            Format::Grpc => (&["-o", "json"], self.h2_client("grpc", self.grpc_port)),
        };
        cmd.args(flags);
        if show_secrets {
            cmd.arg("--show-secrets");
        }
        cmd.arg("--").args(&program);
        let output = run_plugin(cmd);
        assert!(
            output.status.success(),
            "{format:?} show_secrets={show_secrets}: exit {:?}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut text = stdout.clone();
        if format != Format::Live {
            for record in parse_records(&stdout) {
                match record {
                    Record::Chunk(c) => text.push_str(&String::from_utf8_lossy(&c.data.to_bytes())),
                    Record::Exchange(x) => {
                        for body in [x.request.as_ref().map(|r| &r.body), x.response.as_ref().map(|r| &r.body)]
                            .into_iter()
                            .flatten()
                        {
                            text.push_str(&body_text(body));
                        }
                    }
                    _ => {}
                }
            }
        }
        (output, text)
    }
}

#[test]
fn every_secret_is_redacted_on_every_output_path_unless_show_secrets() {
    if !require_root("every_secret_is_redacted_on_every_output_path_unless_show_secrets") {
        return;
    }
    let servers = Servers::start();
    let mut failures = Vec::new();
    // cells[kind][format]: what was seen.
    let mut cells = vec![vec!["—".to_string(); FORMATS.len()]; KINDS.len()];
    for (col, &(format, name)) in FORMATS.iter().enumerate() {
        let (default_out, default_text) = servers.run(format, false);
        let (_, shown_text) = servers.run(format, true);
        // The scenario was captured at all: its non-secret marker shows.
        let captured = match format {
            Format::Grpc => default_text.contains("tlsspy.Echo"),
            _ => default_text.contains(&servers.mark),
        };
        if !captured {
            failures.push(format!("{name}: nothing captured:\n{default_text}"));
        }
        if format == Format::Fallback {
            let records = parse_records(&String::from_utf8_lossy(&default_out.stdout));
            if !records.iter().any(|r| matches!(r, Record::Chunk(_))) {
                failures.push(format!("{name}: the parser did not give up (no chunks)"));
            }
        }
        for (row, &(kind, prefix)) in KINDS.iter().enumerate() {
            if !format.kinds().contains(&prefix) {
                continue;
            }
            let secret = servers.secret(prefix);
            let leaked = default_text.contains(&secret);
            let shown = shown_text.contains(&secret);
            cells[row][col] = match (leaked, shown) {
                (false, true) => "redacted / shown".into(),
                (true, _) => "LEAKED".into(),
                (false, false) => "NOT SHOWN".into(),
            };
            if leaked {
                failures.push(format!("{kind} × {name}: {secret} in the default output:\n{default_text}"));
            }
            if !shown {
                failures.push(format!("{kind} × {name}: {secret} missing with --show-secrets:\n{shown_text}"));
            }
        }
    }
    println!("{}", matrix(&cells));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The matrix as a Markdown table: rows are kinds, columns formats; each
/// cell says "default / --show-secrets", "—" where the scenario does not
/// carry that kind (no Set-Cookie from nginx, no never-indexed field in
/// HTTP/1, gRPC metadata only in gRPC).
fn matrix(cells: &[Vec<String>]) -> String {
    let mut out = String::from("| secret kind |");
    for (_, name) in FORMATS {
        let _ = write!(out, " {name} |");
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(FORMATS.len()));
    for ((kind, _), row) in KINDS.iter().zip(cells) {
        let _ = write!(out, "\n| {kind} |");
        for cell in row {
            let _ = write!(out, " {cell} |");
        }
    }
    out
}

/// An HTTP/2 :path and a header value holding ESC[2J (clear the screen)
/// and an OSC 0 title sequence reach the live view escaped, the summary
/// table too.
#[test]
fn escape_sequences_from_the_wire_reach_the_live_view_escaped() {
    if !require_root("escape_sequences_from_the_wire_reach_the_live_view_escaped") {
        return;
    }
    let cert = Certificate::new();
    let nginx = Nginx::start(&cert, &[]);
    let mark = marker("inject");
    let mut cmd = plugin();
    cmd.args(["local", "--full", "--", "python3"])
        .arg(fixture("h2_secrets_client.py"))
        .arg("inject")
        .arg(nginx.port.to_string())
        .arg(cert.cert())
        .arg(&mark);
    let output = run_plugin(cmd);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find(|l| l.contains(&mark)).unwrap_or_else(|| panic!("no exchange line:\n{stdout}"));
    assert!(line.contains("\\x1b[2J\\x1b]0;pwned\\x07"), "the :path shown escaped: {line}");
    assert!(stdout.contains("x-evil: v\\x1b[2J\\x1b]0;pwned\\x07"), "the header shown escaped:\n{stdout}");
    let raw: Vec<char> = stdout.chars().filter(|&c| c.is_control() && c != '\n').collect();
    assert!(raw.is_empty(), "control characters reached the terminal: {raw:?}\n{stdout}");
}

/// HTTP/2 under --raw is binary (HPACK's Huffman coding hides header text
/// from any scan): its chunks go out empty and marked redacted, with their
/// length; --show-secrets shows them, JSON body and all.
#[test]
fn http2_under_raw_is_withheld_unless_show_secrets() {
    if !require_root("http2_under_raw_is_withheld_unless_show_secrets") {
        return;
    }
    let cert = Certificate::new();
    let nginx = Nginx::start(&cert, &[]);
    let mark = marker("h2raw");
    for show_secrets in [false, true] {
        let mut cmd = plugin();
        cmd.args(["local", "-o", "json", "--raw"]);
        if show_secrets {
            cmd.arg("--show-secrets");
        }
        cmd.args(["--", "python3"])
            .arg(fixture("h2_secrets_client.py"))
            .arg("http")
            .arg(nginx.port.to_string())
            .arg(cert.cert())
            .arg(&mark);
        let output = run_plugin(cmd);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let records = parse_records(&String::from_utf8_lossy(&output.stdout));
        let chunks: Vec<_> =
            records.iter().filter_map(|r| if let Record::Chunk(c) = r { Some(c) } else { None }).collect();
        assert!(!chunks.is_empty(), "{records:?}");
        let text: String = chunks.iter().map(|c| String::from_utf8_lossy(&c.data.to_bytes()).into_owned()).collect();
        assert_eq!(text.contains(&format!("JSONPW{mark}")), show_secrets, "show_secrets={show_secrets}: {text:?}");
        // The client preface is text; every frame after it is withheld.
        let withheld = chunks.iter().filter(|c| c.redacted && c.data.to_bytes().is_empty() && c.len > 0).count();
        if show_secrets {
            assert_eq!(withheld, 0);
        } else {
            assert!(withheld + 1 >= chunks.len(), "{chunks:?}");
        }
    }
}
