//! Which OpenSSL-compatible TLS stack an ELF file carries, and where its
//! probe points are.
//!
//! OpenSSL and BoringSSL export the same SSL_read/SSL_write entry points, as
//! a shared library (libssl.so.3) or linked into an executable (node, envoy)
//! when its symbols were kept.

use std::path::Path;
use std::sync::Arc;

use object::{Object, ObjectSegment, ObjectSymbol};

use crate::targets::go::{self, GoBinary};
use spy_protocol::record::{Linkage, TlsLibrary};

/// The functions we probe, in the order of [`OpensslProbes::offsets`].
pub const OPENSSL_FUNCTIONS: [OpensslFunction; 4] =
    [OpensslFunction::Write, OpensslFunction::Read, OpensslFunction::WriteEx, OpensslFunction::ReadEx];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpensslFunction {
    Write,
    Read,
    WriteEx,
    ReadEx,
    /// SSL_free: not a data call; probed so that a freed connection is
    /// forgotten at once.
    Free,
}

impl OpensslFunction {
    pub fn symbol(self) -> &'static str {
        match self {
            OpensslFunction::Write => "SSL_write",
            OpensslFunction::Read => "SSL_read",
            OpensslFunction::WriteEx => "SSL_write_ex",
            OpensslFunction::ReadEx => "SSL_read_ex",
            OpensslFunction::Free => "SSL_free",
        }
    }
}

/// An OpenSSL-compatible library found in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpensslProbes {
    pub library: TlsLibrary,
    pub linkage: Linkage,
    pub version: Option<String>,
    /// File offset of each function that exists (a uprobe offset is a file
    /// offset, not a virtual address).
    pub offsets: Vec<(OpensslFunction, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("cannot read {path}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not an ELF file we can parse")]
    Parse { path: String, source: object::Error },
}

/// A TLS stack found in a file, with what its probes need.
#[derive(Clone, Debug)]
pub enum DetectedStack {
    /// SSL_read/SSL_write(_ex), shared or linked into an executable.
    Openssl(OpensslProbes),
    /// A Go executable whose crypto/tls the analysis located.
    Go(Arc<GoBinary>),
    /// A Go executable we cannot probe, and the analysis' reason.
    GoUnsupported { version: Option<String>, reason: String },
}

/// What TLS stack `path` carries, reading the file once. Executables are
/// asked first whether they are Go programs (Go links crypto/tls in and
/// exports no SSL_* symbols), then, like libraries, for OpenSSL.
/// `Ok(None)`: no TLS stack.
pub fn detect(path: &Path, is_executable: bool) -> Result<Option<DetectedStack>, DetectError> {
    let data = std::fs::read(path).map_err(|source| DetectError::Read { path: path.display().to_string(), source })?;
    detect_in(&data, path, is_executable)
}

/// What TLS stack the bytes of a file (named `path`) carry.
pub fn detect_in(data: &[u8], path: &Path, is_executable: bool) -> Result<Option<DetectedStack>, DetectError> {
    if is_executable {
        match go::analyze_bytes(data) {
            Ok(bin) => return Ok(Some(DetectedStack::Go(Arc::new(bin)))),
            Err(err) if err.is_go_binary() => {
                // A Go program without usable crypto/tls may still link
                // OpenSSL through cgo: then that is its TLS stack.
                if let Some(openssl) = detect_openssl_in(data, path, is_executable)? {
                    return Ok(Some(DetectedStack::Openssl(openssl)));
                }
                return Ok(Some(DetectedStack::GoUnsupported {
                    version: go::go_version(data),
                    reason: crate::error::chain(&err),
                }));
            }
            Err(err) => log::debug!("{}: not a Go program we analyse: {}", path.display(), crate::error::chain(&err)),
        }
    }
    Ok(detect_openssl_in(data, path, is_executable)?.map(DetectedStack::Openssl))
}

/// What TLS stack an open file carries, read from offset 0 of that file
/// (not reopened by path); `shown` names it in errors and gives the
/// library's soname version.
pub fn detect_open(
    file: &std::fs::File,
    shown: &Path,
    is_executable: bool,
) -> Result<Option<DetectedStack>, DetectError> {
    let data = read_open(file).map_err(|source| DetectError::Read { path: shown.display().to_string(), source })?;
    detect_in(&data, shown, is_executable)
}

/// The whole file, by positioned reads (the descriptor's offset is left
/// alone, so another reader of the same open file is not disturbed),
/// bounded like the Go analysis' reads.
fn read_open(file: &std::fs::File) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt as _;
    let size = file.metadata()?.len();
    if size > go::MAX_BINARY_SIZE {
        return Err(std::io::Error::other(format!("{size} bytes is more than the {} analysed", go::MAX_BINARY_SIZE)));
    }
    let mut data = vec![0; usize::try_from(size).map_err(std::io::Error::other)?];
    file.read_exact_at(&mut data, 0)?;
    Ok(data)
}

/// Looks for SSL_read/SSL_write in `path`. `Ok(None)`: not a TLS library.
pub fn detect_openssl(path: &Path, is_executable: bool) -> Result<Option<OpensslProbes>, DetectError> {
    let data = std::fs::read(path).map_err(|source| DetectError::Read { path: path.display().to_string(), source })?;
    detect_openssl_in(&data, path, is_executable)
}

pub fn detect_openssl_in(data: &[u8], path: &Path, is_executable: bool) -> Result<Option<OpensslProbes>, DetectError> {
    if !data.starts_with(b"\x7fELF") {
        return Ok(None);
    }
    let file =
        object::File::parse(data).map_err(|source| DetectError::Parse { path: path.display().to_string(), source })?;

    let mut offsets = Vec::new();
    let mut boringssl = false;
    for function in OPENSSL_FUNCTIONS {
        if let Some(address) = defined_symbol(&file, function.symbol()) {
            if let Some(offset) = file_offset(&file, address) {
                offsets.push((function, offset));
            }
        }
    }
    if offsets.is_empty() {
        return Ok(None);
    }
    let free = OpensslFunction::Free;
    if let Some(offset) = defined_symbol(&file, free.symbol()).and_then(|address| file_offset(&file, address)) {
        offsets.push((free, offset));
    }
    // BoringSSL keeps OpenSSL's API but has symbols OpenSSL never had.
    for marker in ["SSL_set_strict_cipher_list", "BORINGSSL_self_test", "SSL_CTX_set_strict_cipher_list"] {
        if defined_symbol(&file, marker).is_some() {
            boringssl = true;
        }
    }
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Some(OpensslProbes {
        library: if boringssl { TlsLibrary::Boringssl } else { TlsLibrary::Openssl },
        linkage: if is_executable { Linkage::Static } else { Linkage::Shared },
        version: soname_version(&file_name),
        offsets,
    }))
}

fn defined_symbol(file: &object::File<'_>, name: &str) -> Option<u64> {
    // Versioned dynamic symbols (SSL_write@@OPENSSL_3.0.0) resolve by plain
    // name: object gives the name without the version.
    file.dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.is_definition() && s.name() == Ok(name) && s.address() != 0)
        .map(|s| s.address())
}

/// File offset of a virtual address, through the loadable segment holding it.
pub fn file_offset(file: &object::File<'_>, address: u64) -> Option<u64> {
    file.segments().find_map(|segment| {
        let start = segment.address();
        let (offset, size) = segment.file_range();
        (address >= start && address - start < size).then(|| offset + (address - start))
    })
}

/// "libssl.so.3" → "3", "libssl.so.1.1" → "1.1".
fn soname_version(file_name: &str) -> Option<String> {
    let version = file_name.split_once(".so.")?.1;
    (!version.is_empty()).then(|| version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soname_versions() {
        assert_eq!(soname_version("libssl.so.3").as_deref(), Some("3"));
        assert_eq!(soname_version("libssl.so.1.1").as_deref(), Some("1.1"));
        assert_eq!(soname_version("node"), None);
    }

    #[test]
    fn non_elf_is_not_a_tls_library() {
        let found = detect_openssl_in(b"#!/bin/sh\n", Path::new("/x"), true).expect("no error");
        assert!(found.is_none());
    }

    #[test]
    fn files_without_tls_are_no_stack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("script");
        std::fs::write(&script, b"#!/bin/sh\necho hi\n").expect("write");
        assert!(detect(&script, true).expect("readable").is_none());
        // An ELF executable that is neither Go nor OpenSSL.
        let ls = Path::new("/bin/ls");
        if ls.exists() {
            assert!(detect(ls, true).expect("readable").is_none());
        }
        assert!(matches!(detect(&dir.path().join("gone"), true), Err(DetectError::Read { .. })));
    }

    #[test]
    fn truncated_elf_is_a_clear_error() {
        let err = detect_openssl_in(b"\x7fELF\x02\x01", Path::new("/x"), false).expect_err("error");
        assert!(err.to_string().contains("/x is not an ELF file"), "{err}");
        // The parser's complaint is the source, shown once by the chain.
        let cause = std::error::Error::source(&err).expect("a source").to_string();
        assert!(!err.to_string().contains(&cause), "{err}");
        assert_eq!(crate::error::chain(&err), format!("/x is not an ELF file we can parse: {cause}"));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_system_libssl_is_found() {
        let path = ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/aarch64-linux-gnu/libssl.so.3"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("libssl3 is installed (apt-get install libssl3)");
        let probes = detect_openssl(path, false).expect("parse").expect("libssl has SSL_write");
        assert_eq!(probes.library, TlsLibrary::Openssl);
        assert_eq!(probes.offsets.len(), 5, "{probes:?}");
        assert!(probes.offsets.iter().any(|&(f, _)| f == OpensslFunction::Free), "{probes:?}");
    }
}
