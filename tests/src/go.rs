//! Building the Go programs of `tests/fixtures/go/` with a local toolchain,
//! offline: standard library only, no module proxy, no cgo. Shared by the
//! Go capture and analysis tests and the benchmark.
//!
//! The one place that knows where Go toolchains live on a test machine:
//! Debian's `golang-1.NN-go` packages (`/usr/lib/go-1.NN`), the machine's own
//! Go (`/usr/local/go`), and the toolchains `.ci/install-deps` fetches from
//! the Go module proxy (`GOTOOLCHAIN=go1.27.3`) into [`FETCHED_GO_ROOT`].

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::fixture;

/// The toolchain we prefer (Debian's golang-1.23-go, bookworm-backports).
pub const PREFERRED_GO: &str = "/usr/lib/go-1.23/bin/go";

/// Where Debian installs its Go toolchains: `/usr/lib/go-1.NN/bin/go`.
const DEBIAN_GO_ROOTS: &str = "/usr/lib";

/// The machine's own Go (an upstream tarball unpacked in `/usr/local/go`).
const MACHINE_GO: &str = "/usr/local/go/bin/go";

/// The module cache `.ci/install-deps` fetches toolchains into; the go
/// command unpacks each as `golang.org/toolchain@v0.0.1-goX.Y.Z.linux-ARCH`.
pub const FETCHED_GO_ROOT: &str = "/var/cache/tlsspy/go-toolchains";

/// The releases the Go tests must cover in CI: Debian's (bookworm and
/// bookworm-backports), the machine's, and the newest one from the proxy.
/// `.ci/install-deps` provides each.
pub const REQUIRED_RELEASES: &[(u32, u32)] = &[(1, 19), (1, 21), (1, 22), (1, 23), (1, 26), (1, 27)];

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
    /// [`PREFERRED_GO`] if installed, else the newest toolchain here.
    pub fn find(work: &Path) -> Option<Toolchain> {
        let go = if Path::new(PREFERRED_GO).exists() { PathBuf::from(PREFERRED_GO) } else { installed().pop()?.go };
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

/// One Go toolchain found on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstalledGo {
    pub go: PathBuf,
    /// The first line of its `VERSION` file, e.g. `go1.26.8`.
    pub version: String,
    /// (major, minor, patch) parsed from `version`, for ordering.
    pub release: (u32, u32, u32),
}

/// Every Go toolchain on this machine, oldest release first, one per
/// release (the first found wins: Debian's, the machine's, the fetched).
pub fn installed() -> Vec<InstalledGo> {
    let mut candidates = Vec::new();
    if let Ok(entries) = std::fs::read_dir(DEBIAN_GO_ROOTS) {
        let mut debian: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("go-1."))
            .map(|e| e.path().join("bin/go"))
            .collect();
        debian.sort();
        candidates.extend(debian);
    }
    candidates.push(PathBuf::from(MACHINE_GO));
    let fetched = Path::new(FETCHED_GO_ROOT).join("golang.org");
    if let Ok(entries) = std::fs::read_dir(&fetched) {
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("toolchain@"))
            .map(|e| e.path().join("bin/go"))
            .collect();
        found.sort();
        candidates.extend(found);
    }
    let mut found: Vec<InstalledGo> = Vec::new();
    for go in candidates {
        let Some(installed) = describe(&go) else { continue };
        if !found.iter().any(|f| f.release == installed.release) {
            found.push(installed);
        }
    }
    // By release, not by name: go-1.9 is older than go-1.19.
    found.sort_by_key(|g| g.release);
    found
}

/// The toolchain at `go` (`ROOT/bin/go`), read from `ROOT/VERSION`.
fn describe(go: &Path) -> Option<InstalledGo> {
    if !go.exists() {
        return None;
    }
    let root = go.parent()?.parent()?;
    let text = std::fs::read_to_string(root.join("VERSION")).ok()?;
    let version = text.lines().next()?.trim().to_string();
    let release = parse_release(&version)?;
    Some(InstalledGo { go: go.to_path_buf(), version, release })
}

/// `go1.27.3` → (1, 27, 3); `go1.23` → (1, 23, 0); pre-releases count as
/// their release (`go1.24rc1` → (1, 24, 0)).
pub fn parse_release(version: &str) -> Option<(u32, u32, u32)> {
    let rest = version.strip_prefix("go")?;
    let mut parts = rest.splitn(3, '.');
    let number = |p: &str| p.chars().take_while(char::is_ascii_digit).collect::<String>().parse::<u32>().ok();
    let major = number(parts.next()?)?;
    let minor = number(parts.next()?)?;
    let patch = parts.next().and_then(number).unwrap_or(0);
    Some((major, minor, patch))
}

/// The releases of [`REQUIRED_RELEASES`] that are not installed here.
pub fn missing_required() -> Vec<String> {
    let here = installed();
    REQUIRED_RELEASES
        .iter()
        .filter(|(major, minor)| !here.iter().any(|g| (g.release.0, g.release.1) == (*major, *minor)))
        .map(|(major, minor)| format!("go{major}.{minor}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_release;

    #[test]
    fn releases_parse_from_version_files() {
        assert_eq!(parse_release("go1.27.3"), Some((1, 27, 3)));
        assert_eq!(parse_release("go1.23"), Some((1, 23, 0)));
        assert_eq!(parse_release("go1.24rc1"), Some((1, 24, 0)));
        assert_eq!(parse_release("devel +abc"), None);
        assert_eq!(parse_release(""), None);
    }
}
