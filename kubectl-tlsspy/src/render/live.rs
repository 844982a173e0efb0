//! Live lines: one line per exchange or chunk, the payload below it.
//! Everything that came from a target or the wire is shown through
//! [`escape`], never as raw terminal input.

#![forbid(unsafe_code)]

use std::io::{self, Write};

use spy_protocol::record::{Chunk, Connection, Direction, Exchange, Handshake, Header, Record, Target};

use super::escape::{self, field};

/// Folded payloads show at most this many lines...
const FOLD_LINES: usize = 24;
/// ...and at most this many bytes.
const FOLD_BYTES: usize = 2048;
const HEX_WIDTH: usize = 16;

#[derive(Clone, Copy, Debug, Default)]
pub struct LiveOptions {
    pub color: bool,
    pub full: bool,
}

struct Style(bool);

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn dim(&self, t: &str) -> String {
        self.paint("2", t)
    }
    fn bold(&self, t: &str) -> String {
        self.paint("1", t)
    }
    fn green(&self, t: &str) -> String {
        self.paint("32", t)
    }
    fn yellow(&self, t: &str) -> String {
        self.paint("33", t)
    }
    fn red(&self, t: &str) -> String {
        self.paint("31", t)
    }
    fn cyan(&self, t: &str) -> String {
        self.paint("36", t)
    }
}

pub fn write_record(out: &mut impl Write, record: &Record, options: &LiveOptions) -> io::Result<()> {
    let style = Style(options.color);
    match record {
        Record::Chunk(chunk) => write_chunk(out, chunk, options, &style),
        Record::Exchange(exchange) => write_exchange(out, exchange, options, &style),
        Record::Target(target) => write_target(out, target, &style),
        Record::Handshake(handshake) => write_handshake(out, handshake, &style),
        Record::Warning(warning) => {
            writeln!(out, "{} {}", style.yellow("warning:"), field(&warning.message))
        }
        Record::Hello(_) | Record::Stats(_) | Record::Bye(_) => Ok(()),
    }
}

/// "HH:MM:SS.mmm" in UTC.
pub fn clock(ts_ns: u64) -> String {
    let secs = ts_ns / 1_000_000_000;
    let millis = (ts_ns / 1_000_000) % 1000;
    format!("{:02}:{:02}:{:02}.{:03}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60, millis)
}

fn who(conn: &Connection) -> String {
    match &conn.pod {
        Some(pod) => format!("{}/{}", field(&pod.namespace), field(&pod.name)),
        None => format!("{}[{}]", field(&conn.process), conn.pid),
    }
}

fn peer(conn: &Connection) -> String {
    match (&conn.remote_name, &conn.remote) {
        (Some(name), Some(addr)) => format!("{} ({addr})", field(name)),
        (Some(name), None) => field(name).into_owned(),
        (None, Some(addr)) => addr.to_string(),
        (None, None) => "?".to_string(),
    }
}

fn write_target(out: &mut impl Write, target: &Target, style: &Style) -> io::Result<()> {
    let what = if target.tls.is_empty() {
        "no TLS library".to_string()
    } else {
        target
            .tls
            .iter()
            .map(|s| {
                let version = s.version.as_deref().map(|v| format!(" {}", field(v))).unwrap_or_default();
                let state = if s.probed { "probed" } else { "not probed" };
                format!("{:?}{version} ({}, {state})", s.library, field(&s.path))
            })
            .collect::<Vec<_>>()
            .join(", ")
            .to_lowercase()
    };
    let line = format!("target {}[{}]: {what}", field(&target.process), target.pid);
    if target.probed {
        writeln!(out, "{}", style.dim(&line))
    } else {
        let reason = field(target.reason.as_deref().unwrap_or("not probed"));
        writeln!(out, "{} {}", style.yellow(&line), style.yellow(&format!("— {reason}")))
    }
}

fn write_handshake(out: &mut impl Write, h: &Handshake, style: &Style) -> io::Result<()> {
    let lock = if h.decrypted { "🔓" } else { "🔒" };
    // TLS 1.3 sends the chosen ALPN encrypted: then the offer is all we know.
    let alpn = match (&h.alpn, h.alpn_offered.is_empty()) {
        (Some(chosen), _) => field(chosen).into_owned(),
        (None, false) => format!("{} (offered)", field(&h.alpn_offered.join(","))),
        (None, true) => "-".to_string(),
    };
    let version = match (&h.version, h.versions_offered.first()) {
        (Some(version), _) => field(version).into_owned(),
        (None, Some(offered)) => format!("{} (offered)", field(offered)),
        (None, None) => "-".to_string(),
    };
    let line = format!(
        "{lock} {} {} {} TLS sni={} alpn={alpn} version={version} cipher={} {}",
        style.dim(&clock(h.ts_ns)),
        style.bold(&who(&h.conn)),
        peer(&h.conn),
        field(h.sni.as_deref().unwrap_or("-")),
        field(h.cipher.as_deref().unwrap_or("-")),
        style.dim(&h.conn.id),
    );
    match (&h.reason, h.decrypted) {
        (Some(reason), false) => {
            writeln!(out, "{line}\n    {}", style.yellow(&format!("not decrypted: {}", field(reason))))
        }
        _ => writeln!(out, "{line}"),
    }
}

fn write_chunk(out: &mut impl Write, chunk: &Chunk, options: &LiveOptions, style: &Style) -> io::Result<()> {
    let conn = &chunk.conn;
    let (arrow, from, to) = match chunk.direction {
        Direction::Send => ("→", conn.local, conn.remote),
        Direction::Recv => ("←", conn.local, conn.remote),
    };
    let addr = |a: Option<std::net::SocketAddr>| a.map_or("?".to_string(), |a| a.to_string());
    writeln!(
        out,
        "🔓 {} {} {} {arrow} {} {} {}",
        style.dim(&clock(chunk.ts_ns)),
        style.bold(&who(conn)),
        addr(from),
        addr(to),
        style.cyan(&format!(
            "{} {} B",
            if chunk.direction == Direction::Send { "sent" } else { "received" },
            chunk.len
        )),
        style.dim(&conn.id),
    )?;
    let data = chunk.data.to_bytes();
    if chunk.redacted && data.is_empty() && chunk.len > 0 {
        return writeln!(out, "    {}", style.dim(WITHHELD));
    }
    write_payload(out, &data, options, style)
}

/// What a withheld binary chunk shows (see the agent's raw masker).
const WITHHELD: &str = "(binary data withheld: no scan can find secrets in it; --show-secrets shows it)";

fn write_exchange(out: &mut impl Write, x: &Exchange, options: &LiveOptions, style: &Style) -> io::Result<()> {
    let request = x.request.as_ref();
    let method = field(request.map_or("?", |r| r.method.as_str()));
    let target =
        request.map_or(String::new(), |r| format!("{}{}", field(r.authority.as_deref().unwrap_or("")), field(&r.path)));
    let status = match &x.response {
        Some(response) => {
            let code = response.status.to_string();
            match response.status {
                200..=399 => style.green(&code),
                400..=499 => style.yellow(&code),
                _ => style.red(&code),
            }
        }
        None => style.red(&field(x.incomplete.as_deref().unwrap_or("no response"))),
    };
    let grpc = x
        .grpc
        .as_ref()
        .map_or(String::new(), |g| format!(" grpc-status={}", g.status.map_or("?".to_string(), |s| s.to_string())));
    let latency = x.latency_us.map_or(String::new(), |us| format!(" {}", human_latency(us)));
    let sizes = format!(
        " ↑{} ↓{}",
        human_bytes(request.map_or(0, |r| r.body.size)),
        human_bytes(x.response.as_ref().map_or(0, |r| r.body.size))
    );
    let ts = request.map(|r| r.ts_ns).or(x.response.as_ref().map(|r| r.ts_ns)).unwrap_or(0);
    writeln!(
        out,
        "🔓 {} {} → {} {:?} {} {} {status}{grpc}{}{} {}",
        style.dim(&clock(ts)),
        style.bold(&who(&x.conn)),
        peer(&x.conn),
        x.protocol,
        style.bold(&method),
        target,
        latency,
        style.dim(&sizes),
        style.dim(&x.conn.id),
    )?;
    if options.full {
        if let Some(request) = request {
            write_headers(out, ">", &request.headers, style)?;
            if let Some(data) = &request.body.data {
                write_payload(out, &data.to_bytes(), options, style)?;
            }
        }
        if let Some(response) = &x.response {
            write_headers(out, "<", &response.headers, style)?;
            if let Some(data) = &response.body.data {
                write_payload(out, &data.to_bytes(), options, style)?;
            }
            write_headers(out, "<", &response.trailers, style)?;
        }
    }
    Ok(())
}

/// Headers as `> name: value` (sent) or `< name: value` (received); names
/// and values escaped, redacted ones as the agent sent them.
fn write_headers(out: &mut impl Write, arrow: &str, headers: &[Header], style: &Style) -> io::Result<()> {
    for h in headers {
        let name = if h.unknown { "(unknown name)".into() } else { field(&h.name) };
        writeln!(out, "    {} {name}: {}", style.dim(arrow), field(&h.value))?;
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    match n {
        0..=1023 => format!("{n}B"),
        1024..=1_048_575 => format!("{:.1}KiB", n as f64 / 1024.0),
        _ => format!("{:.1}MiB", n as f64 / 1_048_576.0),
    }
}

fn human_latency(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1000..=999_999 => format!("{:.1}ms", us as f64 / 1000.0),
        _ => format!("{:.2}s", us as f64 / 1_000_000.0),
    }
}

/// Text as text (indented), anything else as a hex dump; folded unless full.
fn write_payload(out: &mut impl Write, bytes: &[u8], options: &LiveOptions, style: &Style) -> io::Result<()> {
    let shown = if options.full { bytes } else { &bytes[..bytes.len().min(FOLD_BYTES)] };
    let mut lines = if looks_like_text(shown) { text_lines(shown) } else { hex_lines(shown) };
    let mut folded = shown.len() < bytes.len();
    if !options.full && lines.len() > FOLD_LINES {
        lines.truncate(FOLD_LINES);
        folded = true;
    }
    for line in lines {
        writeln!(out, "    {line}")?;
    }
    if folded {
        writeln!(out, "    {}", style.dim(&format!("… {} bytes in all (--full shows everything)", bytes.len())))?;
    }
    Ok(())
}

fn looks_like_text(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.chars().all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t')),
        // A multi-byte character cut at the fold is still text.
        Err(e) => e.error_len().is_none() && looks_like_text(&bytes[..e.valid_up_to()]),
    }
}

fn text_lines(bytes: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| escape::body_line(l.trim_end_matches('\r')).into_owned())
        .collect();
    // The blank line that ends an HTTP header block says nothing on screen.
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

fn hex_lines(bytes: &[u8]) -> Vec<String> {
    bytes
        .chunks(HEX_WIDTH)
        .enumerate()
        .map(|(i, row)| {
            let hex: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
            let ascii: String =
                row.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect();
            format!("{:08x}  {:<47}  {ascii}", i * HEX_WIDTH, hex.join(" "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_binary_payloads() {
        let mut out = Vec::new();
        let options = LiveOptions::default();
        write_payload(&mut out, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &options, &Style(false)).expect("write");
        assert_eq!(String::from_utf8_lossy(&out), "    GET / HTTP/1.1\n    Host: x\n");
        out.clear();
        write_payload(&mut out, &[0, 1, 2, 0x41], &options, &Style(false)).expect("write");
        assert_eq!(String::from_utf8_lossy(&out), format!("    00000000  {:<47}  ...A\n", "00 01 02 41"));
    }

    #[test]
    fn withheld_chunks_say_why() {
        use spy_protocol::record::Payload;
        let chunk = Chunk {
            conn: Connection::default(),
            direction: Direction::Send,
            ts_ns: 0,
            offset: 0,
            len: 9,
            data: Payload::default(),
            truncated: false,
            redacted: true,
        };
        let mut out = Vec::new();
        write_chunk(&mut out, &chunk, &LiveOptions::default(), &Style(false)).expect("write");
        let shown = String::from_utf8_lossy(&out);
        assert!(shown.contains("sent 9 B") && shown.ends_with(&format!("    {WITHHELD}\n")), "{shown}");
    }

    #[test]
    fn long_payloads_fold_unless_full() {
        let text = "line\n".repeat(100);
        let mut out = Vec::new();
        write_payload(&mut out, text.as_bytes(), &LiveOptions::default(), &Style(false)).expect("write");
        let shown = String::from_utf8_lossy(&out);
        assert_eq!(shown.lines().count(), FOLD_LINES + 1);
        assert!(shown.contains("500 bytes in all"));
        out.clear();
        write_payload(&mut out, text.as_bytes(), &LiveOptions { full: true, color: false }, &Style(false))
            .expect("write");
        assert_eq!(String::from_utf8_lossy(&out).lines().count(), 100);
    }

    /// Whatever a target or its peer put in a field, the live view writes
    /// no control character but its own line ends.
    #[test]
    fn hostile_fields_reach_the_terminal_escaped() {
        use spy_protocol::record::{Body, Payload, PodRef, Request, Response, TlsStack, Warning};
        const EVIL: &str = "x\x1b[2J\x1b]0;owned\x07\r\u{9b}1m\u{202e}y";
        let mut conn = Connection { process: EVIL.into(), remote_name: Some(EVIL.into()), ..Default::default() };
        conn.id = "c1".into();
        let body = Body { size: 4, data: Some(Payload::Text(format!("line\t{EVIL}\nnext"))), ..Default::default() };
        let exchange = Exchange {
            conn: conn.clone(),
            protocol: spy_protocol::record::Protocol::Http2,
            stream_id: Some(1),
            request: Some(Request {
                method: EVIL.into(),
                authority: Some(EVIL.into()),
                path: format!("/{EVIL}"),
                headers: vec![spy_protocol::record::Header {
                    name: EVIL.into(),
                    value: EVIL.into(),
                    redacted: false,
                    unknown: false,
                }],
                body: body.clone(),
                ..Default::default()
            }),
            response: None,
            grpc: None,
            latency_us: None,
            incomplete: Some(EVIL.into()),
        };
        let handshake = Handshake {
            conn: conn.clone(),
            sni: Some(EVIL.into()),
            alpn_offered: vec![EVIL.into()],
            versions_offered: vec![EVIL.into()],
            cipher: Some(EVIL.into()),
            reason: Some(EVIL.into()),
            ..Default::default()
        };
        let target = Target {
            process: EVIL.into(),
            tls: vec![TlsStack {
                library: spy_protocol::record::TlsLibrary::Openssl,
                linkage: spy_protocol::record::Linkage::Shared,
                path: EVIL.into(),
                version: Some(EVIL.into()),
                probed: false,
                reason: None,
            }],
            reason: Some(EVIL.into()),
            ..Default::default()
        };
        let mut podded = conn.clone();
        podded.pod = Some(PodRef { namespace: EVIL.into(), name: EVIL.into(), container: None });
        let mut with_response = exchange.clone();
        with_response.conn = podded;
        with_response.response = Some(Response { status: 200, body, ..Default::default() });
        let records = [
            Record::Exchange(Box::new(exchange)),
            Record::Exchange(Box::new(with_response)),
            Record::Handshake(handshake),
            Record::Target(target),
            Record::Warning(Warning { message: EVIL.into(), pid: None }),
        ];
        for record in records {
            let mut out = Vec::new();
            write_record(&mut out, &record, &LiveOptions { color: false, full: true }).expect("write");
            let text = String::from_utf8(out).expect("utf-8");
            let bad: Vec<char> =
                text.chars().filter(|&c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{202e}').collect();
            assert!(bad.is_empty(), "{bad:?} in {text}");
            assert!(text.contains("\\x1b[2J"), "shown escaped: {text}");
        }
    }

    #[test]
    fn handshakes_show_their_lock_and_reason() {
        let mut h = Handshake {
            sni: Some("api.test".into()),
            alpn_offered: vec!["h2".into(), "http/1.1".into()],
            version: Some("TLSv1.3".into()),
            reason: Some("no TLS library tlsspy can probe in this process: it uses rustls".into()),
            ..Default::default()
        };
        h.conn.id = "c3".into();
        let mut out = Vec::new();
        write_handshake(&mut out, &h, &Style(false)).expect("write");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("🔒 "), "{text}");
        assert!(text.contains("sni=api.test alpn=h2,http/1.1 (offered) version=TLSv1.3"), "{text}");
        assert!(text.contains("not decrypted: no TLS library tlsspy can probe"), "{text}");
        h.decrypted = true;
        h.alpn = Some("h2".into());
        out.clear();
        write_handshake(&mut out, &h, &Style(false)).expect("write");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("🔓 ") && text.contains("alpn=h2 ") && !text.contains("not decrypted"), "{text}");
    }

    #[test]
    fn clock_formats_utc() {
        assert_eq!(clock(3_723_004_000_000), "01:02:03.004");
    }
}
