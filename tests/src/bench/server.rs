//! The servers under test: where the load goes, which process the spy
//! attaches to, and where the floor puts its no-op probes.
//!
//! - nginx: Debian's, one worker, OpenSSL from the system libssl;
//! - Go: `tests/fixtures/go/benchserver` (net/http, HTTP/1.1 keep-alive),
//!   built here at run time, so Go's crypto/tls is linked into the server.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};

use anyhow::Context as _;
use spy_image::targets::go::GoBinary;
use spy_image::targets::{process, tls_stack};

use super::floor::Floor;
use crate::go::Toolchain;
use crate::support::{Certificate, Guard, Nginx};

/// Which server a case runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Nginx,
    Go,
}

/// The Go server, built and analysed once per benchmark run.
pub struct GoProgram {
    pub executable: PathBuf,
    /// `go env GOVERSION` of the toolchain that built it.
    pub go_version: String,
    /// The spy's own analysis: the exact probe offsets it attaches at.
    pub binary: GoBinary,
}

impl GoProgram {
    /// Builds `benchserver` with the local Go toolchain; its build cache and
    /// the executable live under `work`.
    pub fn build(work: &Path) -> anyhow::Result<GoProgram> {
        let toolchain =
            Toolchain::find(work).context("no Go toolchain in /usr/lib/go-1.* (apt-get install golang-1.23-go)")?;
        let go_version = toolchain.version()?;
        let executable = work.join("bin").join("benchserver");
        toolchain.build("benchserver", &[], &executable)?;
        let binary = spy_image::targets::go::analyze(&executable)
            .with_context(|| format!("the spy's Go analysis of {}", executable.display()))?;
        Ok(GoProgram { executable, go_version, binary })
    }
}

/// A server started for one case.
pub enum Running<'a> {
    Nginx {
        nginx: Nginx,
        /// The worker: the process that does the TLS.
        worker: u32,
        library: PathBuf,
        probes: tls_stack::OpensslProbes,
    },
    Go {
        server: Guard,
        port: u16,
        program: &'a GoProgram,
        /// Held open: the server may still write to it.
        _stdout: BufReader<ChildStdout>,
    },
}

impl<'a> Running<'a> {
    pub fn start(
        server: Server,
        cert: &Certificate,
        body_bytes: usize,
        go: Option<&'a GoProgram>,
    ) -> anyhow::Result<Running<'a>> {
        match server {
            Server::Nginx => {
                let nginx = Nginx::start(cert, &[body_bytes]);
                let worker = *nginx.worker_pids().first().context("nginx has no worker")?;
                let (library, probes) = openssl_of(worker)?;
                Ok(Running::Nginx { nginx, worker, library, probes })
            }
            Server::Go => {
                let program = go.context("a Go case, but the Go server was not built")?;
                let mut child = Command::new(&program.executable)
                    .arg("-cert")
                    .arg(cert.cert())
                    .arg("-key")
                    .arg(cert.key())
                    .stdout(Stdio::piped())
                    .spawn()
                    .with_context(|| format!("start {}", program.executable.display()))?;
                let stdout = child.stdout.take().context("benchserver stdout")?;
                let server = Guard(child);
                let mut stdout = BufReader::new(stdout);
                let mut line = String::new();
                stdout.read_line(&mut line).context("read the Go server's port")?;
                // It prints the port once listening.
                let port = line
                    .strip_prefix("listening ")
                    .and_then(|p| p.trim().parse().ok())
                    .with_context(|| format!("unexpected first line from benchserver: {line:?}"))?;
                Ok(Running::Go { server, port, program, _stdout: stdout })
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        let port = match self {
            Running::Nginx { nginx, .. } => nginx.port,
            Running::Go { port, .. } => *port,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The process the spy is pointed at.
    pub fn tls_pid(&self) -> u32 {
        match self {
            Running::Nginx { worker, .. } => *worker,
            Running::Go { server, .. } => server.pid(),
        }
    }

    /// No-op probes on exactly the spy's probe points.
    pub fn floor(&self) -> anyhow::Result<Floor> {
        match self {
            Running::Nginx { library, probes, .. } => Floor::attach(library, probes),
            Running::Go { program, .. } => Floor::attach_go(&program.executable, &program.binary),
        }
    }

    /// What the report names beside the case.
    pub fn built_with(&self) -> Option<String> {
        match self {
            Running::Nginx { .. } => None,
            Running::Go { program, .. } => Some(program.go_version.clone()),
        }
    }
}

/// The libssl the process maps: its path through /proc/PID/root and probe points.
fn openssl_of(pid: u32) -> anyhow::Result<(PathBuf, tls_stack::OpensslProbes)> {
    for file in process::mapped_files(pid)? {
        if let Ok(Some(probes)) = tls_stack::detect_openssl(&file.host_path, false) {
            return Ok((file.host_path, probes));
        }
    }
    anyhow::bail!("process {pid} maps no OpenSSL")
}
