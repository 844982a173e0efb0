//! Why a process's TLS cannot be decrypted: names the TLS stacks tlsspy
//! recognises but does not probe, so a closed lock comes with a reason a
//! person can act on.

use std::fs::File;
use std::io;
use std::path::Path;

use super::process::MappedFile;

/// Bytes of an executable searched for a built-in TLS stack's traces.
const MAX_EXE_SCAN: usize = 64 * 1024 * 1024;
const SCAN_CHUNK: usize = 1024 * 1024;

/// Shared libraries of TLS stacks tlsspy does not probe.
const LIBRARIES: &[(&str, &str)] = &[
    ("libjvm.so", "Java: JSSE does TLS inside the JVM, which tlsspy does not probe"),
    ("libgnutls", "GnuTLS, which tlsspy does not probe"),
    ("libnss3.so", "NSS, which tlsspy does not probe"),
    ("libwolfssl", "wolfSSL, which tlsspy does not probe"),
    ("libmbedtls", "Mbed TLS, which tlsspy does not probe"),
];

/// Strings a statically linked TLS stack leaves in the executable (panic
/// locations name the crate's sources even in stripped release builds).
const BUILT_IN: &[(&[u8], &str)] =
    &[(b"rustls", "rustls, a Rust TLS stack built into the executable, which tlsspy does not probe")];

/// What the process uses for TLS that tlsspy cannot probe, when it can tell.
pub fn unprobed_tls(files: &[MappedFile], exe: Option<&Path>) -> Option<&'static str> {
    library_hint(files).or_else(|| exe.and_then(built_in_hint))
}

/// A mapped library of a TLS stack tlsspy does not probe.
pub fn library_hint(files: &[MappedFile]) -> Option<&'static str> {
    files.iter().find_map(|file| {
        let name = file.path.rsplit('/').next().unwrap_or(&file.path);
        LIBRARIES.iter().find(|(prefix, _)| name.starts_with(prefix)).map(|(_, what)| *what)
    })
}

/// A TLS stack built into the executable at `exe`.
pub fn built_in_hint(exe: &Path) -> Option<&'static str> {
    built_in_hint_of(&File::open(exe).ok()?)
}

/// The same, of an open executable (one whose process may be gone).
pub fn built_in_hint_of(exe: &File) -> Option<&'static str> {
    BUILT_IN.iter().find(|(needle, _)| file_contains(exe, needle).unwrap_or(false)).map(|(_, what)| *what)
}

/// Searches the first [`MAX_EXE_SCAN`] bytes of a file for `needle`.
fn file_contains(file: &File, needle: &[u8]) -> io::Result<bool> {
    use std::os::unix::fs::FileExt as _;
    let finder = memchr::memmem::Finder::new(needle);
    let mut buf = vec![0u8; SCAN_CHUNK + needle.len()];
    let mut carried = 0;
    let mut scanned = 0;
    while scanned < MAX_EXE_SCAN {
        let n = file.read_at(&mut buf[carried..], scanned as u64)?;
        if n == 0 {
            return Ok(false);
        }
        let filled = carried + n;
        if finder.find(&buf[..filled]).is_some() {
            return Ok(true);
        }
        // Keep the tail: the needle may straddle two reads.
        carried = needle.len().saturating_sub(1).min(filled);
        buf.copy_within(filled - carried..filled, 0);
        scanned += n;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::path::PathBuf;

    fn mapped(path: &str) -> MappedFile {
        MappedFile {
            path: path.into(),
            host_path: PathBuf::from(path),
            file_id: super::super::process::FileId::default(),
            open: None,
        }
    }

    #[test]
    fn libraries_and_built_in_stacks_are_named() {
        let java = [mapped("/usr/bin/java"), mapped("/usr/lib/jvm/java-17/lib/server/libjvm.so")];
        assert!(unprobed_tls(&java, None).is_some_and(|w| w.starts_with("Java")));
        assert_eq!(unprobed_tls(&[mapped("/usr/bin/sleep")], None), None);

        let mut exe = tempfile::NamedTempFile::new().expect("tempfile");
        let mut bytes = vec![0u8; SCAN_CHUNK - 3];
        bytes.extend(b"/root/.cargo/registry/src/rustls-0.23.1/src/conn.rs");
        exe.write_all(&bytes).expect("write");
        assert!(unprobed_tls(&[], Some(exe.path())).is_some_and(|w| w.starts_with("rustls")), "across reads");
        let plain = tempfile::NamedTempFile::new().expect("tempfile");
        assert_eq!(unprobed_tls(&[], Some(plain.path())), None);
    }
}
