//! Go binary analysis against real Go executables, built here with every Go
//! toolchain found (`tlsspy_tests::go::installed`: Debian's golang-1.NN-go,
//! the machine's /usr/local/go, Go 1.27.3 from the module proxy):
//! normal, stripped (`-s -w`), PIE, PIE stripped, cross-compiled arm64
//! (normal and stripped), and with the newest toolchain also externally
//! linked (gcc) exe, PIE and stripped PIE. The target is an HTTPS client and server in one
//! program (net/http + crypto/tls, stdlib only).
//!
//! Oracles, all independent of the code under test: the toolchain's own
//! `go version` and `go tool nm`; the instruction bytes at every reported
//! RET (0xC3 / 0xd65f03c0) and the stack-check prologue at every entry; the
//! unstripped build (symtab + DWARF) against the stripped one (pclntab +
//! table).
//!
//! Without any Go toolchain the tests skip with a message, except under
//! `CI=true`, where they fail: `.ci/install-deps` installs the toolchains.
//! Builds are cached in `$CARGO_TARGET_TMPDIR/go-analysis` (a GOCACHE
//! there too), so only the first run pays for compiling the standard
//! library per toolchain and architecture.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use object::{Object, ObjectSection};
use spy_image::targets::go::offsets_table;
use spy_image::targets::go::{
    analyze, analyze_bytes, AnalysisCache, GoAbi, GoAnalysisError, GoArch, GoBinary, OffsetsSource, SymbolSource,
    TLS_READ_SYMBOL, TLS_WRITE_SYMBOL,
};

const TARGET_MAIN: &str = r#"// An HTTPS server and client in one program: tlsspy's Go test target.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s\n", r.URL.Path)
	})}
	go srv.Serve(ln)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := client.Get("https://" + ln.Addr().String() + "/tlsspy")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Print(string(body))
}
"#;

/// A Go program that never touches crypto/tls.
const PLAIN_MAIN: &str = r#"package main

import "fmt"

func main() { fmt.Println("no tls here") }
"#;

const MODULE: &str = "example.com/tlsspy-target";

#[derive(Debug, Clone)]
struct Toolchain {
    go: PathBuf,
    /// `go1.23.5`, from `go env GOVERSION`.
    version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Normal,
    Stripped,
    Pie,
    PieStripped,
    Arm64,
    Arm64Stripped,
    ExternalLink,
    ExternalPie,
    ExternalPieStripped,
}

impl Variant {
    const PER_TOOLCHAIN: [Variant; 6] = [
        Variant::Normal,
        Variant::Stripped,
        Variant::Pie,
        Variant::PieStripped,
        Variant::Arm64,
        Variant::Arm64Stripped,
    ];

    fn stripped(self) -> bool {
        matches!(self, Variant::Stripped | Variant::PieStripped | Variant::Arm64Stripped | Variant::ExternalPieStripped)
    }

    fn pie(self) -> bool {
        matches!(self, Variant::Pie | Variant::PieStripped | Variant::ExternalPie | Variant::ExternalPieStripped)
    }

    fn arch(self) -> GoArch {
        match self {
            Variant::Arm64 | Variant::Arm64Stripped => GoArch::Arm64,
            _ => GoArch::Amd64,
        }
    }

    /// The same build without `-s -w`.
    fn unstripped(self) -> Variant {
        match self {
            Variant::Stripped => Variant::Normal,
            Variant::PieStripped => Variant::Pie,
            Variant::Arm64Stripped => Variant::Arm64,
            Variant::ExternalPieStripped => Variant::ExternalPie,
            other => other,
        }
    }

    fn args(self) -> (Vec<&'static str>, &'static str, &'static str) {
        // (go build flags, GOARCH, CGO_ENABLED)
        match self {
            Variant::Normal => (vec![], "amd64", "0"),
            Variant::Stripped => (vec!["-ldflags=-s -w"], "amd64", "0"),
            Variant::Pie => (vec!["-buildmode=pie"], "amd64", "0"),
            Variant::PieStripped => (vec!["-buildmode=pie", "-ldflags=-s -w"], "amd64", "0"),
            Variant::Arm64 => (vec![], "arm64", "0"),
            Variant::Arm64Stripped => (vec!["-ldflags=-s -w"], "arm64", "0"),
            Variant::ExternalLink => (vec!["-ldflags=-linkmode=external"], "amd64", "1"),
            Variant::ExternalPie => (vec!["-buildmode=pie", "-ldflags=-linkmode=external"], "amd64", "1"),
            Variant::ExternalPieStripped => (vec!["-buildmode=pie", "-ldflags=-linkmode=external -s -w"], "amd64", "1"),
        }
    }
}

#[derive(Debug, Clone)]
struct Built {
    toolchain: Toolchain,
    variant: Variant,
    path: PathBuf,
}

struct Fixtures {
    builds: Vec<Built>,
    /// The newest toolchain's build of a program without crypto/tls.
    plain: Option<PathBuf>,
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-analysis")
}

/// Every toolchain here (`tlsspy_tests::go::installed`): Debian's, the
/// machine's, the ones fetched from the Go module proxy.
fn toolchains() -> Vec<Toolchain> {
    if in_ci() {
        let missing = tlsspy_tests::go::missing_required();
        assert!(missing.is_empty(), "CI=true but Go {missing:?} not installed: run .ci/install-deps");
    }
    tlsspy_tests::go::installed()
        .into_iter()
        .map(|installed| {
            let out = go_command(&installed.go).args(["env", "GOVERSION"]).output();
            match out {
                Ok(out) if out.status.success() => {
                    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                    assert_eq!(version, installed.version, "{}: VERSION file and `go env`", installed.go.display());
                    Toolchain { go: installed.go, version }
                }
                _ => panic!("{} is installed but `go env GOVERSION` fails", installed.go.display()),
            }
        })
        .collect()
}

fn go_command(go: &Path) -> Command {
    let work = work_dir();
    let mut cmd = Command::new(go);
    cmd.env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOPATH", work.join("gopath"))
        .env("GOCACHE", work.join("gocache"))
        .env("GOPROXY", "off")
        .env("GO111MODULE", "on")
        .env("GOOS", "linux");
    cmd
}

fn write_module(dir: &Path, main: &str) {
    std::fs::create_dir_all(dir).expect("create module dir");
    std::fs::write(dir.join("go.mod"), format!("module {MODULE}\n\ngo 1.19\n")).expect("go.mod");
    std::fs::write(dir.join("main.go"), main).expect("main.go");
}

fn build(toolchain: &Toolchain, src: &Path, variant: Variant, out: &Path) -> Result<(), String> {
    let (flags, goarch, cgo) = variant.args();
    let output = go_command(&toolchain.go)
        .current_dir(src)
        .env("GOARCH", goarch)
        .env("CGO_ENABLED", cgo)
        .arg("build")
        .args(&flags)
        .arg("-o")
        .arg(out)
        .arg(".")
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn have_c_compiler() -> bool {
    Command::new("gcc").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Builds every variant once per test process (tests share it).
fn fixtures() -> Option<&'static Fixtures> {
    static FIXTURES: OnceLock<Option<Fixtures>> = OnceLock::new();
    FIXTURES
        .get_or_init(|| {
            let toolchains = toolchains();
            if toolchains.is_empty() {
                if in_ci() {
                    panic!("CI=true but no Go toolchain: run .ci/install-deps");
                }
                eprintln!("SKIP: no Go toolchain found (install golang-1.23-go); Go analysis tests not run");
                return None;
            }
            let work = work_dir();
            let src = work.join("src/target");
            let plain_src = work.join("src/plain");
            write_module(&src, TARGET_MAIN);
            write_module(&plain_src, PLAIN_MAIN);
            let mut builds = Vec::new();
            let newest = toolchains.last().cloned();
            for toolchain in &toolchains {
                let mut variants = Variant::PER_TOOLCHAIN.to_vec();
                if Some(&toolchain.go) == newest.as_ref().map(|t| &t.go) {
                    if have_c_compiler() {
                        variants.extend([Variant::ExternalLink, Variant::ExternalPie, Variant::ExternalPieStripped]);
                    } else if in_ci() {
                        panic!("CI=true but gcc is missing: external-linking variants cannot be built");
                    } else {
                        eprintln!("SKIP: no gcc, external-linking variants not built");
                    }
                }
                for variant in variants {
                    let path = work.join(format!("bin/{}-{variant:?}", toolchain.version));
                    if let Err(e) = build(toolchain, &src, variant, &path) {
                        panic!("{} build of {variant:?} failed:\n{e}", toolchain.version);
                    }
                    builds.push(Built { toolchain: toolchain.clone(), variant, path });
                }
            }
            let plain = newest.map(|t| {
                let path = work.join(format!("bin/{}-plain", t.version));
                build(&t, &plain_src, Variant::Stripped, &path).expect("build plain program");
                path
            });
            Some(Fixtures { builds, plain })
        })
        .as_ref()
}

fn find_build(f: &'static Fixtures, toolchain: &Toolchain, variant: Variant) -> &'static Built {
    f.builds.iter().find(|b| b.toolchain.go == toolchain.go && b.variant == variant).expect("variant built")
}

fn analyse(built: &Built) -> GoBinary {
    analyze(&built.path).unwrap_or_else(|e| panic!("{} {:?}: {e}", built.toolchain.version, built.variant))
}

/// `go tool nm` address of a symbol (the toolchain's own reading).
fn nm_address(built: &Built, symbol: &str) -> u64 {
    let out = go_command(&built.toolchain.go).args(["tool", "nm"]).arg(&built.path).output().expect("go tool nm");
    assert!(out.status.success(), "go tool nm failed");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 3 && fields[2..].join(" ") == symbol {
            return u64::from_str_radix(fields[0], 16).expect("nm address");
        }
    }
    panic!("{symbol} not in go tool nm output of {}", built.path.display());
}

fn u32_at(data: &[u8], offset: u64) -> u32 {
    let at = usize::try_from(offset).expect("offset");
    u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

/// Checks a probe against the file's bytes.
fn check_probe_bytes(built: &Built, data: &[u8], probe: &spy_image::targets::go::GoFunctionProbe, arch: GoArch) {
    let what = format!("{} {:?} {}", built.toolchain.version, built.variant, probe.symbol);
    assert!(!probe.ret_file_offsets.is_empty(), "{what}: no RET");
    let entry = usize::try_from(probe.entry_file_offset).expect("offset");
    match arch {
        GoArch::Amd64 => {
            // Go's stack-bound check against g.stackguard0 (g in R14):
            // `cmp rsp|r12, [r14+0x10]` within the first instructions.
            let head = &data[entry..entry + 16];
            assert!(
                head.windows(4).any(|w| w == [0x49, 0x3b, 0x66, 0x10] || w == [0x4d, 0x3b, 0x66, 0x10]),
                "{what}: entry {:#x} does not look like a Go prologue: {head:02x?}",
                probe.entry_file_offset
            );
            for &ret in &probe.ret_file_offsets {
                let at = usize::try_from(ret).expect("offset");
                assert_eq!(data[at], 0xc3, "{what}: byte at RET offset {ret:#x}");
            }
        }
        GoArch::Arm64 => {
            // `ldr x16, [x28, #16]`: g.stackguard0, g in R28.
            assert_eq!(u32_at(data, probe.entry_file_offset), 0xf940_0b90, "{what}: entry");
            for &ret in &probe.ret_file_offsets {
                assert_eq!(u32_at(data, ret), 0xd65f_03c0, "{what}: RET at {ret:#x}");
            }
        }
    }
    for &ret in &probe.ret_file_offsets {
        assert!(
            ret > probe.entry_file_offset && ret < probe.entry_file_offset + probe.size,
            "{what}: RET {ret:#x} outside the function"
        );
    }
}

#[test]
fn every_toolchain_and_variant_is_analysed_correctly() {
    let Some(f) = fixtures() else { return };
    for built in &f.builds {
        let bin = analyse(built);
        let what = format!("{} {:?}", built.toolchain.version, built.variant);
        assert_eq!(bin.go_version, built.toolchain.version, "{what}");
        assert_eq!(bin.module_path.as_deref(), Some(MODULE), "{what}");
        assert_eq!(bin.main_package.as_deref(), Some(MODULE), "{what}");
        let arch = built.variant.arch();
        assert_eq!(bin.arch, arch, "{what}");
        // Every toolchain here is ≥ 1.19: register ABI on both arches.
        assert_eq!(bin.abi, GoAbi::Register, "{what}");
        assert_eq!(bin.pie, built.variant.pie(), "{what}");
        assert_eq!(bin.stripped, built.variant.stripped(), "{what}");
        let expected_source = if built.variant.stripped() { SymbolSource::Pclntab } else { SymbolSource::Symtab };
        assert_eq!(bin.write.symbol, TLS_WRITE_SYMBOL);
        assert_eq!(bin.read.symbol, TLS_READ_SYMBOL);
        assert_eq!(bin.write.source, expected_source, "{what}");
        assert_eq!(bin.read.source, expected_source, "{what}");
        let data = std::fs::read(&built.path).expect("read binary");
        check_probe_bytes(built, &data, &bin.write, arch);
        check_probe_bytes(built, &data, &bin.read, arch);
        if built.variant.stripped() {
            assert!(matches!(bin.offsets_source, OffsetsSource::VersionTable(_)), "{what}: {:?}", bin.offsets_source);
        } else {
            assert_eq!(bin.offsets_source, OffsetsSource::Dwarf, "{what}: {:?}", bin.dwarf_problem);
            // The toolchain's own symbol reader agrees on the addresses.
            assert_eq!(bin.write.address, nm_address(built, TLS_WRITE_SYMBOL), "{what}");
            assert_eq!(bin.read.address, nm_address(built, TLS_READ_SYMBOL), "{what}");
        }
    }
}

#[test]
fn stripped_and_unstripped_builds_agree() {
    let Some(f) = fixtures() else { return };
    for built in f.builds.iter().filter(|b| b.variant.stripped()) {
        let full = find_build(f, &built.toolchain, built.variant.unstripped());
        let (s, u) = (analyse(built), analyse(full));
        let what = format!("{} {:?} vs {:?}", built.toolchain.version, built.variant, full.variant);
        assert_eq!((s.arch, s.abi, s.pie, &s.go_version), (u.arch, u.abi, u.pie, &u.go_version), "{what}");
        // Table offsets (stripped) equal DWARF offsets (unstripped).
        assert_eq!(s.offsets, u.offsets, "{what}");
        for (sp, up) in [(&s.write, &u.write), (&s.read, &u.read)] {
            // -s -w removes sections after the code; text is laid out the same.
            assert_eq!(sp.address, up.address, "{what} {}", sp.symbol);
            assert_eq!(sp.entry_file_offset, up.entry_file_offset, "{what} {}", sp.symbol);
            assert_eq!(sp.ret_file_offsets, up.ret_file_offsets, "{what} {}", sp.symbol);
        }
    }
}

#[test]
fn offsets_table_matches_dwarf_for_every_toolchain_here() {
    let Some(f) = fixtures() else { return };
    let mut checked = Vec::new();
    for built in f.builds.iter().filter(|b| matches!(b.variant, Variant::Normal | Variant::Arm64)) {
        let bin = analyse(built);
        assert_eq!(bin.offsets_source, OffsetsSource::Dwarf);
        let (table, label) = offsets_table::lookup(bin.arch, bin.version).expect("table row");
        assert_eq!(
            table, bin.offsets,
            "table row {label} differs from DWARF of {} {}",
            built.toolchain.version, bin.arch
        );
        checked.push(format!("{} {}", bin.go_version, bin.arch));
    }
    eprintln!("offsets table checked against DWARF for: {}", checked.join(", "));
}

/// Zeroes `e_shoff`, `e_shnum` and `e_shstrndx`: an image with no section
/// headers at all, as `sstrip` leaves it.
fn drop_section_headers(data: &mut [u8]) {
    data[0x28..0x30].fill(0); // e_shoff
    data[0x3c..0x40].fill(0); // e_shnum, e_shstrndx
}

#[test]
fn binaries_without_section_headers_are_analysed_from_segments() {
    let Some(f) = fixtures() else { return };
    for built in f.builds.iter().filter(|b| b.variant.stripped()) {
        let mut data = std::fs::read(&built.path).expect("read");
        let reference = analyze_bytes(&data).expect("analysis with sections");
        drop_section_headers(&mut data);
        let what = format!("{} {:?} without section headers", built.toolchain.version, built.variant);
        let bin = analyze_bytes(&data).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(bin.go_version, reference.go_version, "{what}");
        assert_eq!(bin.module_path, reference.module_path, "{what}");
        assert_eq!(bin.write, reference.write, "{what}");
        assert_eq!(bin.read, reference.read, "{what}");
        assert_eq!(bin.offsets, reference.offsets, "{what}");
    }
}

fn pclntab_range(data: &[u8]) -> (usize, usize) {
    let file = object::File::parse(data).expect("parse");
    let section = file
        .section_by_name(".gopclntab")
        .or_else(|| file.section_by_name(".data.rel.ro.gopclntab"))
        .expect("pclntab section");
    let (start, size) = section.file_range().expect("file range");
    (start as usize, size as usize)
}

#[test]
fn corrupted_pclntab_gives_typed_errors_never_panics() {
    let Some(f) = fixtures() else { return };
    let newest = &f.builds.last().expect("a build").toolchain;
    let built = find_build(f, newest, Variant::Stripped);
    let original = std::fs::read(&built.path).expect("read");
    let (start, size) = pclntab_range(&original);

    // Bad magic: the section is not a pclntab any more.
    let mut data = original.clone();
    data[start..start + 4].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    let err = analyze_bytes(&data).expect_err("bad magic");
    assert!(matches!(err, GoAnalysisError::BadPclntab(_)), "{err:?}");

    // nfunc far past the table: rejected by the size check.
    let mut data = original.clone();
    data[start + 8..start + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let err = analyze_bytes(&data).expect_err("huge nfunc");
    assert!(matches!(err, GoAnalysisError::BadPclntab(_)), "{err:?}");

    // The function's name altered in funcnametab: not found, by name.
    let mut data = original.clone();
    let needle = TLS_WRITE_SYMBOL.as_bytes();
    let table = &mut data[start..start + size];
    let mut hits = 0;
    let mut i = 0;
    while i + needle.len() < table.len() {
        if &table[i..i + needle.len()] == needle && table[i + needle.len()] == 0 {
            table[i + needle.len() - 1] = b'X';
            hits += 1;
        }
        i += 1;
    }
    assert!(hits > 0, "symbol name present in funcnametab");
    let err = analyze_bytes(&data).expect_err("renamed function");
    assert!(matches!(err, GoAnalysisError::FunctionNotFound { symbol } if symbol == TLS_WRITE_SYMBOL), "{err:?}");

    // Bytes flipped in the header and all over the function table (Go ≥
    // 1.20 layout: nfunc at +8, pclnOffset at +0x40, 4-byte fields): any
    // typed outcome, no panic, bounded time.
    let word = |at: usize| u64::from_le_bytes(original[at..at + 8].try_into().expect("8 bytes")) as usize;
    let nfunc = word(start + 8);
    let functab = start + word(start + 0x40);
    let functab_len = (2 * nfunc + 1) * 4;
    assert!(functab + functab_len <= start + size, "functab inside the section");
    let started = std::time::Instant::now();
    let mut outcomes = [0usize; 2];
    let targets = (0..0x48).map(|i| start + i).chain((0..600).map(|k| functab + (k * 7919) % functab_len));
    for (n, at) in targets.enumerate() {
        let mut data = original.clone();
        data[at] ^= if n % 2 == 0 { 0xff } else { 0x5a };
        outcomes[usize::from(analyze_bytes(&data).is_ok())] += 1;
    }
    eprintln!("flipped pclntab bytes: {} errors, {} still analysed", outcomes[0], outcomes[1]);
    assert!(outcomes[0] > 0, "some corruptions must be detected");
    assert!(started.elapsed().as_secs() < 120, "corrupt inputs took {:?}", started.elapsed());
}

#[test]
fn truncated_go_binary_gives_typed_errors() {
    let Some(f) = fixtures() else { return };
    let built = &f.builds[0];
    let data = std::fs::read(&built.path).expect("read");
    for len in [0, 1, 52, 64, 65, 4096, data.len() / 4, data.len() / 2, data.len() - 1] {
        let err = analyze_bytes(&data[..len]).expect_err("truncated");
        assert!(
            matches!(
                err,
                GoAnalysisError::Empty
                    | GoAnalysisError::NotElf { .. }
                    | GoAnalysisError::MalformedElf { .. }
                    | GoAnalysisError::NotGo
                    | GoAnalysisError::PclntabNotFound { .. }
                    | GoAnalysisError::BadPclntab(_)
                    | GoAnalysisError::BadBuildInfo { .. }
                    | GoAnalysisError::BadFunction { .. }
            ),
            "len {len}: {err:?}"
        );
    }
}

#[test]
fn a_go_program_without_tls_reports_the_missing_function() {
    let Some(f) = fixtures() else { return };
    let plain = f.plain.as_ref().expect("plain program built");
    let err = analyze(plain).expect_err("no crypto/tls");
    assert!(matches!(err, GoAnalysisError::FunctionNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("crypto/tls.(*Conn)."), "{err}");
}

#[test]
fn non_go_and_empty_files_are_rejected() {
    let ls = Path::new("/bin/ls");
    if ls.exists() {
        assert!(matches!(analyze(ls), Err(GoAnalysisError::NotGo)));
    } else {
        assert!(!in_ci(), "/bin/ls missing in CI");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").expect("write");
    assert!(matches!(analyze(&empty), Err(GoAnalysisError::Empty)));
}

#[test]
fn cache_serves_many_processes_of_one_binary_with_one_analysis() {
    let Some(f) = fixtures() else { return };
    let built = f.builds.last().expect("a build");
    let cache = AnalysisCache::new(16);
    let first = cache.analyze(&built.path).expect("analysis");
    let others: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8).map(|_| scope.spawn(|| cache.analyze(&built.path).expect("cached"))).collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    for other in others {
        assert!(std::sync::Arc::ptr_eq(&first, &other));
    }
    let stats = cache.stats();
    assert_eq!((stats.analyses, stats.hits, stats.entries), (1, 8, 1));
}
