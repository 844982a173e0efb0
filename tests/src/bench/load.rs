//! A keep-alive HTTPS load generator over rustls.
//!
//! Why not wrk: wrk uses the system's libssl, the very file the spy and the
//! floor put uprobes on, and a uprobe on a file traps in every process that
//! maps it. The load generator would pay the probe cost too and the
//! comparison would measure the client. rustls is Rust code: never probed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What one load run did.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Per-request latency, microseconds (unsorted).
    pub latencies_us: Vec<u32>,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A client config that trusts exactly `cert_der`.
pub fn client_config(cert_der: Vec<u8>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(cert_der))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `connections` keep-alive connections send `GET path` back to back for
/// `duration`.
pub async fn run(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
    tls: Arc<rustls::ClientConfig>,
) -> LoadResult {
    let start = Instant::now();
    let deadline = start + duration;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: tlsspy-bench\r\n\r\n").into_bytes();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let tls = tls.clone();
        let request = request.clone();
        tasks.push(tokio::spawn(async move { one_connection(addr, &request, deadline, tls).await }));
    }
    let mut total = LoadResult::default();
    for task in tasks {
        if let Ok(result) = task.await {
            total.requests += result.requests;
            total.errors += result.errors;
            total.latencies_us.extend(result.latencies_us);
        } else {
            total.errors += 1;
        }
    }
    total.elapsed = start.elapsed();
    total
}

async fn one_connection(
    addr: SocketAddr,
    request: &[u8],
    deadline: Instant,
    tls: Arc<rustls::ClientConfig>,
) -> LoadResult {
    let mut result = LoadResult::default();
    let connected = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
        TlsConnector::from(tls).connect(name, tcp).await
    };
    let mut stream = match connected.await {
        Ok(stream) => stream,
        Err(err) => {
            log::warn!("cannot connect to {addr}: {err}");
            result.errors += 1;
            return result;
        }
    };
    let mut buf = Vec::with_capacity(128 * 1024);
    while Instant::now() < deadline {
        let sent = Instant::now();
        if stream.write_all(request).await.is_err() {
            result.errors += 1;
            break;
        }
        match read_response(&mut stream, &mut buf).await {
            Ok(()) => {
                result.requests += 1;
                result.latencies_us.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            Err(err) => {
                log::warn!("request failed: {err}");
                result.errors += 1;
                break;
            }
        }
    }
    result
}

/// Reads one response with a Content-Length body; `buf` keeps any surplus.
async fn read_response<S: AsyncReadExt + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = response.parse(buf) {
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                .ok_or_else(|| std::io::Error::other("response without Content-Length"))?;
            if response.code != Some(200) {
                return Err(std::io::Error::other(format!("status {:?}", response.code)));
            }
            while buf.len() < head + length {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..head + length);
            return Ok(());
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Nearest-rank percentile of unsorted microseconds.
pub fn percentile(latencies_us: &[u32], p: f64) -> f64 {
    if latencies_us.is_empty() {
        return 0.0;
    }
    let mut sorted = latencies_us.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    f64::from(sorted[rank.min(sorted.len()) - 1])
}
