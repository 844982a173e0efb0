//! Building the Go programs of `tests/fixtures/go/` with a local toolchain
//! (Debian's golang-1.xx-go), offline: standard library only, no module
//! proxy, no cgo. Shared by the Go capture tests and the benchmark.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::fixture;

/// The toolchain we prefer (Debian's golang-1.23-go, bookworm-backports).
pub const PREFERRED_GO: &str = "/usr/lib/go-1.23/bin/go";

/// Where Debian installs its Go toolchains: `/usr/lib/go-1.NN/bin/go`.
const DEBIAN_GO_ROOTS: &str = "/usr/lib";

#[derive(Debug, thiserror::Error)]
pub enum GoBuildError {
    #[error("running {go}")]
    Run {
        go: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("go build {source_dir} {flags:?} failed:\n{stderr}")]
    Build { source_dir: String, flags: Vec<String>, stderr: String },
    #[error("creating {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One Go toolchain and the directory that holds its build cache and
/// GOPATH (kept between runs, so a second build only links).
#[derive(Clone, Debug)]
pub struct Toolchain {
    pub go: PathBuf,
    pub work: PathBuf,
}

impl Toolchain {
    /// [`PREFERRED_GO`] if installed, else the newest Debian toolchain.
    pub fn find(work: &Path) -> Option<Toolchain> {
        let go = if Path::new(PREFERRED_GO).exists() { PathBuf::from(PREFERRED_GO) } else { installed().pop()? };
        Some(Toolchain { go, work: work.to_path_buf() })
    }

    /// `go` with an offline, cgo-free, self-contained environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.go);
        cmd.env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("GOPATH", self.work.join("gopath"))
            .env("GOCACHE", self.work.join("gocache"))
            .env("CGO_ENABLED", "0")
            .env("GOOS", "linux");
        cmd
    }

    /// `go env GOVERSION`, e.g. `go1.23.5`.
    pub fn version(&self) -> Result<String, GoBuildError> {
        let output = self
            .command()
            .args(["env", "GOVERSION"])
            .output()
            .map_err(|source| GoBuildError::Run { go: self.go.clone(), source })?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Builds `tests/fixtures/go/<source>` into `out`.
    pub fn build(&self, source: &str, flags: &[&str], out: &Path) -> Result<(), GoBuildError> {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).map_err(|source| GoBuildError::Dir { path: dir.to_path_buf(), source })?;
        }
        let output = self
            .command()
            .current_dir(fixture(&format!("go/{source}")))
            .arg("build")
            .args(flags)
            .arg("-o")
            .arg(out)
            .arg(".")
            .output()
            .map_err(|source| GoBuildError::Run { go: self.go.clone(), source })?;
        if !output.status.success() {
            return Err(GoBuildError::Build {
                source_dir: source.to_string(),
                flags: flags.iter().map(|f| f.to_string()).collect(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(())
    }
}

/// Every Debian Go toolchain installed here, oldest first.
pub fn installed() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(DEBIAN_GO_ROOTS) else { return Vec::new() };
    let mut found: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let minor = e.file_name().to_string_lossy().strip_prefix("go-1.")?.parse().ok()?;
            Some((minor, e.path().join("bin/go")))
        })
        .filter(|(_, go)| go.exists())
        .collect();
    // By release, not by name: go-1.9 is older than go-1.19.
    found.sort();
    found.into_iter().map(|(_, go)| go).collect()
}
