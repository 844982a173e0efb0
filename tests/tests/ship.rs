//! Shipping: the krew manifest, the release script's archives, the spy
//! image's Dockerfile and the agent binary it carries, and the one version
//! they all share (Cargo.toml's `[workspace.package] version`).
//!
//! The static release agent is built once by scripts/test.sh (a slow step,
//! `scripts/build-agent.sh`) and handed over in TLSSPY_STATIC_AGENT; the
//! other agent checks reuse the debug build.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde::Deserialize;
use tlsspy_tests::support::{in_ci, wait_timeout, workspace_bin, Guard};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The spy image's repository; the plugin's default `--image` is this with
/// the tag `v<VERSION>`.
const IMAGE_REPOSITORY: &str = "ghcr.io/tlsspy/tlsspy-agent";
/// What the release script writes for a platform it did not build.
const UNBUILT: &str = "UNBUILT";

/// krew platform → Rust target, as in scripts/release.sh.
const PLATFORMS: [(&str, &str, &str); 6] = [
    ("linux", "amd64", "x86_64-unknown-linux-gnu"),
    ("linux", "arm64", "aarch64-unknown-linux-gnu"),
    ("darwin", "amd64", "x86_64-apple-darwin"),
    ("darwin", "arm64", "aarch64-apple-darwin"),
    ("windows", "amd64", "x86_64-pc-windows-msvc"),
    ("windows", "arm64", "aarch64-pc-windows-msvc"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Runs a command with a deadline; its output must fit in the pipes
/// (these commands print a few lines).
fn run_with_timeout(mut command: Command, timeout: Duration) -> Output {
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let mut guard = Guard(child);
    let status =
        wait_timeout(&mut guard.0, timeout).unwrap_or_else(|| panic!("{command:?} still runs after {timeout:?}"));
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    guard.0.stdout.take().expect("stdout").read_to_end(&mut stdout).expect("read stdout");
    guard.0.stderr.take().expect("stderr").read_to_end(&mut stderr).expect("read stderr");
    Output { status, stdout, stderr }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------- krew

/// The fields krew reads (krew's `index.Plugin`); unknown fields are
/// refused so a misspelt key fails here, not at `kubectl krew install`.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Manifest {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    version: String,
    homepage: String,
    short_description: String,
    description: String,
    caveats: String,
    platforms: Vec<Platform>,
}

#[derive(Debug, Deserialize, PartialEq, Clone)]
#[serde(deny_unknown_fields)]
struct Platform {
    selector: Selector,
    uri: String,
    sha256: String,
    bin: String,
    files: Vec<FileOperation>,
}

#[derive(Debug, Deserialize, PartialEq, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Selector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, PartialEq, Clone)]
#[serde(deny_unknown_fields)]
struct FileOperation {
    from: String,
    to: String,
}

impl Platform {
    fn os_arch(&self) -> (String, String) {
        let label = |key: &str| self.selector.match_labels.get(key).cloned().unwrap_or_default();
        (label("os"), label("arch"))
    }
}

fn parse_manifest(yaml: &str) -> Manifest {
    serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("krew manifest does not parse: {e}\n{yaml}"))
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// krew's own validation (sigs.k8s.io/krew internal/index/validation) plus
/// our conventions, except `sha256`, which the caller checks: the template
/// holds UNBUILT, a release output holds hashes.
fn check_manifest(m: &Manifest) {
    assert_eq!(m.api_version, "krew.googlecontainertools.github.com/v1alpha2");
    assert_eq!(m.kind, "Plugin");
    assert_eq!(m.metadata.name, "tlsspy");
    assert!(m.metadata.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));

    assert_eq!(m.spec.version, format!("v{VERSION}"), "spec.version must be v + Cargo.toml's version");
    let short = &m.spec.short_description;
    assert!(!short.is_empty() && !short.contains(['\r', '\n']), "shortDescription: one line");
    assert!(short.len() <= 60, "krew-index asks for a short shortDescription: {short:?}");
    assert!(!m.spec.description.trim().is_empty());
    let caveats = m.spec.caveats.to_lowercase();
    for needed in ["privileged", "hostpid", "ebpf", "rbac", "--spy-namespace", "--show-secrets"] {
        assert!(caveats.contains(needed), "caveats must tell about {needed}: {}", m.spec.caveats);
    }
    let repository = workspace_repository();
    assert_eq!(m.spec.homepage, repository);

    let seen: BTreeSet<(String, String)> = m.spec.platforms.iter().map(Platform::os_arch).collect();
    let wanted: BTreeSet<(String, String)> =
        PLATFORMS.iter().map(|(os, arch, _)| (os.to_string(), arch.to_string())).collect();
    assert_eq!(seen, wanted, "one platform per os/arch, linux, darwin and windows on amd64 and arm64");
    assert_eq!(m.spec.platforms.len(), PLATFORMS.len(), "no os/arch twice");

    for p in &m.spec.platforms {
        let keys: BTreeSet<&str> = p.selector.match_labels.keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["os", "arch"]), "krew selects on os and arch only");
        let (os, arch) = p.os_arch();
        let (exe, ext) = if os == "windows" { ("kubectl-tlsspy.exe", "zip") } else { ("kubectl-tlsspy", "tar.gz") };
        assert_eq!(p.bin, exe, "{os}/{arch}: bin");
        assert_eq!(
            p.uri,
            format!("{repository}/releases/download/v{VERSION}/{}", archive_name(&os, &arch)),
            "{os}/{arch}: uri names this version's archive ({ext})"
        );
        let from: BTreeSet<&str> = p.files.iter().map(|f| f.from.as_str()).collect();
        assert_eq!(from, BTreeSet::from([exe, "LICENSE"]), "{os}/{arch}: files");
        assert!(p.files.iter().all(|f| f.to == "."), "{os}/{arch}: files land at the plugin's root");
    }
}

fn archive_name(os: &str, arch: &str) -> String {
    let ext = if os == "windows" { "zip" } else { "tar.gz" };
    format!("kubectl-tlsspy_v{VERSION}_{os}_{arch}.{ext}")
}

/// `[workspace.package] repository` in Cargo.toml.
fn workspace_repository() -> String {
    let cargo = read("Cargo.toml");
    let line = cargo
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find(|l| l.trim_start().starts_with("repository"))
        .expect("Cargo.toml sets [workspace.package] repository");
    line.split('"').nth(1).expect("quoted repository").to_string()
}

#[test]
fn krew_manifest_template_is_valid_and_holds_no_hash() {
    let manifest = parse_manifest(&read("krew-manifest.yaml"));
    check_manifest(&manifest);
    for p in &manifest.spec.platforms {
        // A hash in the template would name an archive nobody can check;
        // only scripts/release.sh writes hashes, into its output.
        assert_eq!(p.sha256, UNBUILT, "{:?}: the template's sha256 stays {UNBUILT}", p.os_arch());
    }
}

fn host_triple() -> String {
    let out = Command::new("rustc").arg("-vV").output().expect("rustc -vV");
    text(&out.stdout).lines().find_map(|l| l.strip_prefix("host: ")).expect("host line").to_string()
}

fn installed_targets() -> BTreeSet<String> {
    let out = Command::new("rustup").args(["target", "list", "--installed"]).output();
    let mut targets: BTreeSet<String> = match out {
        Ok(out) if out.status.success() => text(&out.stdout).lines().map(str::to_string).collect(),
        _ => BTreeSet::new(),
    };
    targets.insert(host_triple());
    targets
}

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    assert!(out.status.success());
    text(&out.stdout).split_whitespace().next().expect("hash").to_string()
}

fn release(out: &Path, targets: &str) -> Output {
    let mut command = Command::new("bash");
    command
        .arg(root().join("scripts/release.sh"))
        .arg("--out")
        .arg(out)
        .args(["--targets", targets])
        // The dev profile reuses the debug build scripts/test.sh made.
        .env("TLSSPY_RELEASE_PROFILE", "dev");
    run_with_timeout(command, Duration::from_secs(600))
}

#[test]
fn release_script_archives_match_its_manifest() {
    let host = host_triple();
    let (os, arch, _) = *PLATFORMS.iter().find(|(_, _, t)| *t == host).expect("the host is a manifest platform");
    let dir = tempfile::tempdir().expect("tempdir");
    let output = release(dir.path(), "host");
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "release.sh --targets host failed:\n{stderr}");
    assert!(stderr.contains("PARTIAL"), "a host-only release says it is partial:\n{stderr}");

    let out = dir.path();
    let yaml = std::fs::read_to_string(out.join("krew-manifest.yaml")).expect("release.sh wrote krew-manifest.yaml");
    assert!(yaml.starts_with("# PARTIAL"), "the partial manifest is marked at its top:\n{yaml}");
    let written = parse_manifest(&yaml);
    check_manifest(&written);

    // Everything but the hashes is the template's.
    let template = parse_manifest(&read("krew-manifest.yaml"));
    let mut unhashed = written.spec.platforms.clone();
    for p in &mut unhashed {
        p.sha256 = UNBUILT.to_string();
    }
    assert_eq!(unhashed, template.spec.platforms);
    assert_eq!((&written.metadata, &written.spec.description), (&template.metadata, &template.spec.description));

    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).expect("SHA256SUMS");
    for p in &written.spec.platforms {
        let (p_os, p_arch) = p.os_arch();
        let archive = out.join(archive_name(&p_os, &p_arch));
        if (p_os.as_str(), p_arch.as_str()) == (os, arch) {
            assert!(is_sha256(&p.sha256), "{os}/{arch}: a sha256, not {:?}", p.sha256);
            assert_eq!(p.sha256, sha256_file(&archive), "manifest sha256 is the archive's");
            assert!(sums.contains(&format!("{}  {}", p.sha256, archive_name(os, arch))), "SHA256SUMS:\n{sums}");
        } else {
            assert_eq!(p.sha256, UNBUILT, "{p_os}/{p_arch} was not built: never a made-up hash");
            assert!(!archive.exists(), "{} exists but was not asked for", archive.display());
        }
    }

    // The archive holds what `files` names, and the plugin in it runs.
    let listing = Command::new("tar").arg("-tzf").arg(out.join(archive_name(os, arch))).output().expect("tar");
    assert!(listing.status.success());
    let names: BTreeSet<String> = text(&listing.stdout).lines().map(str::to_string).collect();
    assert_eq!(names, BTreeSet::from(["LICENSE".to_string(), "kubectl-tlsspy".to_string()]));
    // Reproducible: the same binary gives the same archive (no owner, time
    // or gzip timestamp of the machine that made it).
    let verbose = Command::new("tar")
        .args(["--numeric-owner", "--utc", "-tvzf"])
        .arg(out.join(archive_name(os, arch)))
        .output()
        .expect("tar -tv");
    for entry in text(&verbose.stdout).lines() {
        assert!(entry.contains(" 0/0 ") && entry.contains(" 1970-01-01 00:00 "), "owner 0/0, mtime 0: {entry}");
    }
    let gz = std::fs::read(out.join(archive_name(os, arch))).expect("read archive");
    assert_eq!(gz[4..8], [0, 0, 0, 0], "no timestamp in the gzip header");
    let unpacked = tempfile::tempdir().expect("tempdir");
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(out.join(archive_name(os, arch)))
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .expect("tar -x");
    assert!(status.success());
    let version = run_with_timeout(
        {
            let mut c = Command::new(unpacked.path().join("kubectl-tlsspy"));
            c.arg("--version");
            c
        },
        Duration::from_secs(30),
    );
    assert!(version.status.success());
    assert_eq!(text(&version.stdout).trim(), format!("kubectl-tlsspy {VERSION}"));
}

#[test]
fn release_script_refuses_what_it_cannot_build() {
    let out = tempfile::tempdir().expect("tempdir");
    // Not a manifest platform: refused before any build.
    let output = release(out.path(), "riscv64gc-unknown-linux-gnu");
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("not the target of any platform"), "{}", text(&output.stderr));

    // A manifest platform whose standard library is missing here: refused
    // by name, with no manifest written (and so no hash made up for it).
    let installed = installed_targets();
    let Some((_, _, missing)) = PLATFORMS.iter().find(|(_, _, t)| !installed.contains(*t)) else {
        eprintln!("every manifest target is installed here; the missing-target refusal cannot be shown");
        return;
    };
    for targets in [missing.to_string(), "all".to_string()] {
        let output = release(out.path(), &targets);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "release.sh --targets {targets} must fail here");
        assert!(stderr.contains("cannot build") && stderr.contains(missing), "{stderr}");
        assert!(stderr.contains("rustup target add"), "says how to get it: {stderr}");
    }
    assert!(!out.path().join("krew-manifest.yaml").exists(), "a refused release writes no manifest");
}

// ---------------------------------------------------------------- versions

#[test]
fn one_version_everywhere() {
    let script = Command::new("bash").arg(root().join("scripts/version.sh")).output().expect("version.sh");
    assert!(script.status.success());
    assert_eq!(text(&script.stdout).trim(), VERSION, "scripts/version.sh reads Cargo.toml");

    let dockerfile = Dockerfile::parse(&read("Dockerfile"));
    assert_eq!(dockerfile.global_arg("VERSION"), Some(VERSION), "Dockerfile's ARG VERSION default");

    let manifest = parse_manifest(&read("krew-manifest.yaml"));
    assert_eq!(manifest.spec.version, format!("v{VERSION}"));

    let image_script = read("scripts/build-image.sh");
    assert!(image_script.contains(&format!("TLSSPY_IMAGE:-{IMAGE_REPOSITORY}}}")), "build-image.sh's repository");
    assert!(image_script.contains(":v$version"), "build-image.sh tags v<Cargo.toml version>");

    for bin in ["tlsspy-agent", "kubectl-tlsspy"] {
        let mut command = Command::new(workspace_bin(bin));
        command.arg("--version");
        let output = run_with_timeout(command, Duration::from_secs(30));
        assert!(output.status.success(), "{bin} --version");
        assert_eq!(text(&output.stdout).trim(), format!("{bin} {VERSION}"));
    }

    // The plugin's default --image: the image repository, tagged with the
    // plugin's own version. Any image the plugin's source names must be
    // ours, and a literal tag must be this version.
    let mut named = 0;
    for file in rust_files(&root().join("kubectl-tlsspy/src")) {
        let source = std::fs::read_to_string(&file).expect("read");
        for (at, _) in source.match_indices("ghcr.io/") {
            named += 1;
            let rest = &source[at..];
            assert!(
                rest.starts_with(&format!("{IMAGE_REPOSITORY}:v")),
                "{}: the plugin's image must be {IMAGE_REPOSITORY}:v<version>, found {:?}",
                file.display(),
                rest.lines().next()
            );
            let tag = &rest[IMAGE_REPOSITORY.len() + 2..];
            if tag.starts_with(|c: char| c.is_ascii_digit()) {
                assert!(tag.starts_with(&format!("{VERSION}\"")), "{}: tag v{VERSION}", file.display());
            } else {
                assert!(
                    tag.starts_with("\", env!(\"CARGO_PKG_VERSION\")"),
                    "{}: tag from CARGO_PKG_VERSION",
                    file.display()
                );
            }
        }
    }
    if named == 0 {
        eprintln!("note: kubectl-tlsspy names no image yet (its cluster mode will: {IMAGE_REPOSITORY}:v{VERSION})");
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").map(|e| e.expect("entry").path()) {
        if entry.is_dir() {
            files.extend(rust_files(&entry));
        } else if entry.extension().is_some_and(|e| e == "rs") {
            files.push(entry);
        }
    }
    files
}

// ---------------------------------------------------------------- Dockerfile

/// A Dockerfile as instructions (continuation lines joined), split by stage.
struct Dockerfile {
    /// ARGs before the first FROM: name → default.
    global_args: Vec<(String, Option<String>)>,
    stages: Vec<Stage>,
}

struct Stage {
    from: String,
    name: Option<String>,
    /// (instruction keyword in capitals, the rest).
    instructions: Vec<(String, String)>,
}

impl Dockerfile {
    fn parse(text: &str) -> Dockerfile {
        let mut logical = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
                continue;
            }
            if trimmed.starts_with('#') {
                continue; // comments inside a continued instruction
            }
            match trimmed.strip_suffix('\\') {
                Some(head) => {
                    current.push_str(head);
                    current.push(' ');
                }
                None => {
                    current.push_str(trimmed);
                    logical.push(std::mem::take(&mut current));
                }
            }
        }
        let mut dockerfile = Dockerfile { global_args: Vec::new(), stages: Vec::new() };
        for instruction in logical {
            let (keyword, rest) = instruction.split_once(' ').unwrap_or((&instruction, ""));
            let (keyword, rest) = (keyword.to_ascii_uppercase(), rest.trim().to_string());
            if keyword == "FROM" {
                let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with("--")).collect();
                let name = (words.len() == 3 && words[1].eq_ignore_ascii_case("AS")).then(|| words[2].to_string());
                dockerfile.stages.push(Stage { from: words[0].to_string(), name, instructions: Vec::new() });
            } else if let Some(stage) = dockerfile.stages.last_mut() {
                stage.instructions.push((keyword, rest));
            } else if keyword == "ARG" {
                let (name, default) = match rest.split_once('=') {
                    Some((n, d)) => (n.to_string(), Some(d.to_string())),
                    None => (rest.clone(), None),
                };
                dockerfile.global_args.push((name, default));
            }
        }
        dockerfile
    }

    fn global_arg(&self, name: &str) -> Option<&str> {
        self.global_args.iter().find(|(n, _)| n == name).and_then(|(_, d)| d.as_deref())
    }
}

impl Stage {
    fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.instructions.iter().filter(move |(k, _)| k == keyword).map(|(_, rest)| rest.as_str())
    }
    fn position(&self, keyword: &str, rest_starts: &str) -> Option<usize> {
        self.instructions.iter().position(|(k, r)| k == keyword && r.starts_with(rest_starts))
    }
}

/// `KEY="value" KEY2=value2` → map (LABEL's syntax, values without spaces
/// or double-quoted).
fn label_pairs(text: &str) -> BTreeMap<String, String> {
    let mut pairs = BTreeMap::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, remainder) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"').expect("closing quote");
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(' ').unwrap_or((after, "")),
        };
        pairs.insert(key.trim().to_string(), value.to_string());
        rest = remainder.trim();
    }
    pairs
}

#[test]
fn dockerfile_builds_the_agent_like_ci_into_a_bare_labelled_image() {
    let dockerfile = Dockerfile::parse(&read("Dockerfile"));
    assert!(dockerfile.stages.len() >= 2, "multi-stage: a build stage and the image");
    let (build, image) = (&dockerfile.stages[0], dockerfile.stages.last().expect("stages"));

    // The build stage runs the script CI runs (same cargo command, same
    // static link), after checking its VERSION against Cargo.toml.
    let build_name = build.name.as_deref().expect("the build stage is named");
    let runs: Vec<&str> = build.all("RUN").collect();
    assert!(
        runs.iter().any(|r| r.contains("bash scripts/build-agent.sh --out /out")),
        "the build stage runs scripts/build-agent.sh: {runs:?}"
    );
    assert!(runs.iter().any(|r| r.contains("scripts/version.sh") && r.contains("$VERSION")), "VERSION is checked");
    assert!(build.position("ARG", "VERSION").is_some(), "the build stage takes the global VERSION");
    for package in ["clang-19", "libbpf-dev"] {
        assert!(runs.iter().any(|r| r.contains(package)), "the build stage installs {package}");
    }

    // The image: no shell, no package manager, nothing run inside it.
    assert!(
        image.from.starts_with("gcr.io/distroless/static") || image.from == "scratch",
        "the final stage is distroless/static or scratch, not {}",
        image.from
    );
    assert_eq!(image.all("RUN").count(), 0, "nothing runs in the final stage (it has no shell)");
    let copies: Vec<&str> = image.all("COPY").collect();
    assert_eq!(copies, [format!("--from={build_name} /out/tlsspy-agent /usr/local/bin/tlsspy-agent").as_str()]);
    assert_eq!(image.all("ENTRYPOINT").collect::<Vec<_>>(), ["[\"/usr/local/bin/tlsspy-agent\"]"]);
    assert_eq!(image.all("USER").collect::<Vec<_>>(), ["0:0"], "the spy needs root: said, not left implied");

    // OCI labels, with the version and revision the build was given: the
    // final stage must re-declare the ARGs before using them (or they are empty).
    let labels: BTreeMap<String, String> = image.all("LABEL").flat_map(label_pairs).collect();
    assert_eq!(labels.get("org.opencontainers.image.source"), Some(&workspace_repository()));
    assert_eq!(labels.get("org.opencontainers.image.version").map(String::as_str), Some("${VERSION}"));
    assert_eq!(labels.get("org.opencontainers.image.revision").map(String::as_str), Some("${REVISION}"));
    assert_eq!(labels.get("org.opencontainers.image.licenses").map(String::as_str), Some("Apache-2.0"));
    let label_at = image.position("LABEL", "").expect("LABEL");
    for arg in ["VERSION", "REVISION"] {
        let at = image.position("ARG", arg).unwrap_or_else(|| panic!("the final stage declares ARG {arg}"));
        assert!(at < label_at, "ARG {arg} comes before LABEL");
        assert!(dockerfile.global_args.iter().any(|(n, _)| n == arg), "ARG {arg} is global");
    }

    let ignore = read(".dockerignore");
    for excluded in ["target", ".git"] {
        assert!(ignore.lines().any(|l| l.trim() == excluded), ".dockerignore leaves out {excluded}");
    }
}

// ---------------------------------------------------------------- agent binary

/// `tlsspy-agent` run as nobody (uid and gid 65534, no groups): a clear
/// refusal, a non-zero exit, no panic. As root, setpriv drops to nobody; as
/// another user the test already is unprivileged.
fn check_refuses_without_privileges(agent: &Path) {
    // Copy to a directory nobody can enter: the build tree may sit under a
    // home directory that nobody cannot read.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let copy = dir.path().join("tlsspy-agent");
    std::fs::copy(agent, &copy).expect("copy agent");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut command = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&copy);
        c
    } else {
        Command::new(&copy)
    };
    command.args(["--pid", "1"]).stdin(Stdio::null());
    let output = run_with_timeout(command, Duration::from_secs(30));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "exit 1 (an error, not a panic's 101):\n{stderr}");
    assert!(stderr.contains("needs root"), "says it needs root:\n{stderr}");
    assert!(!stderr.contains("panicked"), "no panic:\n{stderr}");
    assert!(output.stdout.is_empty(), "no record on stdout: {}", text(&output.stdout));
}

#[test]
fn agent_starts_and_refuses_without_privileges() {
    check_refuses_without_privileges(&workspace_bin("tlsspy-agent"));
}

/// The release agent scripts/build-agent.sh made (scripts/test.sh builds it
/// and sets TLSSPY_STATIC_AGENT); CI must have it.
fn static_agent(test: &str) -> Option<PathBuf> {
    match std::env::var_os("TLSSPY_STATIC_AGENT") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            assert!(!in_ci(), "{test}: CI must build the static agent (scripts/test.sh sets TLSSPY_STATIC_AGENT)");
            eprintln!(
                "SKIP {test}: TLSSPY_STATIC_AGENT is not set (TLSSPY_STATIC_AGENT=$(bash scripts/build-agent.sh))"
            );
            None
        }
    }
}

#[test]
fn static_agent_runs_without_a_libc_and_carries_the_ebpf_object() {
    let Some(agent) = static_agent("static_agent_runs_without_a_libc_and_carries_the_ebpf_object") else {
        return;
    };
    let file = Command::new("file").arg("-b").arg(&agent).output().expect("file (apt-get install file)");
    let file = text(&file.stdout);
    assert!(file.contains("statically linked") || file.contains("static-pie linked"), "file: {file}");
    let ldd = Command::new("ldd").arg(&agent).output().expect("ldd");
    let ldd = format!("{}{}", text(&ldd.stdout), text(&ldd.stderr));
    assert!(ldd.contains("not a dynamic executable") || ldd.contains("statically linked"), "ldd: {ldd}");

    let mut command = Command::new(&agent);
    command.arg("--version");
    let output = run_with_timeout(command, Duration::from_secs(30));
    assert!(output.status.success());
    assert_eq!(text(&output.stdout).trim(), format!("tlsspy-agent {VERSION}"));
    check_refuses_without_privileges(&agent);

    // The eBPF object is compiled in (the image has nothing else): an ELF
    // for the BPF machine inside the agent, holding our programs and maps.
    let binary = std::fs::read(&agent).expect("read agent");
    let objects = embedded_bpf_objects(&binary);
    assert_eq!(objects.len(), 1, "one eBPF object inside the agent");
    let object = objects[0];
    for name in [spy_ebpf::programs::SSL_WRITE_ENTER, spy_ebpf::maps::EVENTS, spy_ebpf::maps::TARGET_TGIDS] {
        assert!(object.windows(name.len()).any(|w| w == name.as_bytes()), "the eBPF object has {name}");
    }
}

/// ELF objects for the BPF machine (EM_BPF, 64-bit little-endian) inside
/// `bytes`, each up to the end of its section header table.
fn embedded_bpf_objects(bytes: &[u8]) -> Vec<&[u8]> {
    const EM_BPF: u16 = 247;
    let u16_at = |b: &[u8], at: usize| b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u64_at = |b: &[u8], at: usize| b.get(at..at + 8).map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")));
    let mut found = Vec::new();
    for start in (0..bytes.len().saturating_sub(64)).filter(|&i| bytes[i..].starts_with(b"\x7fELF\x02\x01")) {
        let elf = &bytes[start..];
        if u16_at(elf, 18) != Some(EM_BPF) {
            continue;
        }
        let (Some(shoff), Some(shentsize), Some(shnum)) = (u64_at(elf, 0x28), u16_at(elf, 0x3a), u16_at(elf, 0x3c))
        else {
            continue;
        };
        let end = shoff as usize + usize::from(shentsize) * usize::from(shnum);
        if let Some(object) = elf.get(..end) {
            found.push(object);
        }
    }
    found
}

// ---------------------------------------------------------------- platforms

/// What the plugin pulls in on each manifest platform: outside Linux only
/// the records (spy-protocol), never the agent (spy-image) with its ELF,
/// DWARF, disassembler and eBPF machinery, nor a direct libc on Windows.
/// cargo resolves the graph for any target without its standard library,
/// so this holds for platforms that cannot be compiled here (see
/// scripts/check-platforms.sh).
#[test]
fn plugin_dependencies_stay_portable() {
    let linux_only =
        ["aya", "aya-obj", "spy-ebpf", "spy-image", "capstone", "capstone-sys", "gimli", "object", "tls-parser"];
    for (os, arch, triple) in PLATFORMS {
        let tree = |depth: Option<&str>| {
            let mut c = Command::new(env!("CARGO"));
            c.current_dir(root()).args(["tree", "--locked", "-p", "kubectl-tlsspy", "--target", triple]);
            c.args(["-e", "normal", "--prefix", "none", "--format", "{p}"]);
            if let Some(depth) = depth {
                c.args(["--depth", depth]);
            }
            let out = c.output().expect("cargo tree");
            assert!(out.status.success(), "cargo tree --target {triple}: {}", text(&out.stderr));
            text(&out.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect::<BTreeSet<String>>()
        };
        let all = tree(None);
        let direct = tree(Some("1"));
        for krate in linux_only {
            assert_eq!(all.contains(krate), os == "linux", "{os}/{arch}: {krate} in the plugin's graph");
        }
        assert!(all.contains("spy-protocol"), "{os}/{arch}: the plugin reads records with spy-protocol");
        // Linux: local mode; every Unix: the reaper's setsid. Never Windows.
        assert_eq!(direct.contains("libc"), os != "windows", "{os}/{arch}: the plugin uses libc directly on Unix only");
    }
}
