//! Unit tests on inputs that need no Go toolchain. Real Go binaries, built
//! with every toolchain found, are tested in `tests/go_analysis.rs`.

use super::*;

/// Any ELF executable that is not Go: the test binary itself is Rust.
fn non_go_elf() -> Vec<u8> {
    let exe = std::env::current_exe().expect("test binary path");
    std::fs::read(exe).expect("read test binary")
}

#[test]
fn empty_input_is_its_own_error() {
    assert!(matches!(analyze_bytes(&[]), Err(GoAnalysisError::Empty)));
}

#[test]
fn non_elf_input_is_not_elf() {
    for data in [&b"#!/bin/sh\necho hi\n"[..], &[0u8; 4096][..], b"\x7fELF"] {
        let err = analyze_bytes(data).expect_err("not an ELF");
        assert!(matches!(err, GoAnalysisError::NotElf { .. } | GoAnalysisError::MalformedElf { .. }), "{err:?}");
    }
}

#[test]
fn a_rust_executable_is_not_go() {
    let err = analyze_bytes(&non_go_elf()).expect_err("not Go");
    assert!(matches!(err, GoAnalysisError::NotGo), "{err:?}");
    assert_eq!(err.to_string(), "not a Go binary: no Go build info (.go.buildinfo)");
}

#[test]
fn truncated_elf_never_panics_and_fails_typed() {
    let data = non_go_elf();
    for len in [1, 16, 63, 64, 65, 200, 4096, data.len() / 3, data.len() / 2, data.len() - 1] {
        let err = analyze_bytes(&data[..len]).expect_err("truncated");
        assert!(
            matches!(
                err,
                GoAnalysisError::NotElf { .. } | GoAnalysisError::MalformedElf { .. } | GoAnalysisError::NotGo
            ),
            "len {len}: {err:?}"
        );
    }
}

#[test]
fn abi_follows_release_and_arch() {
    let v = |minor| GoVersion::new(1, minor, 0);
    assert_eq!(GoAbi::for_version(GoArch::Amd64, v(16)), GoAbi::Stack);
    assert_eq!(GoAbi::for_version(GoArch::Amd64, v(17)), GoAbi::Register);
    assert_eq!(GoAbi::for_version(GoArch::Arm64, v(17)), GoAbi::Stack);
    assert_eq!(GoAbi::for_version(GoArch::Arm64, v(18)), GoAbi::Register);
    assert_eq!(GoAbi::for_version(GoArch::Arm64, v(23)), GoAbi::Register);
}

#[test]
fn io_errors_name_the_path() {
    let err = analyze(Path::new("/nonexistent/tlsspy/binary")).expect_err("missing");
    assert!(matches!(err, GoAnalysisError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/tlsspy/binary"), "{err}");
    // The cause is the source, not part of the message; the chain has it once.
    let cause = std::error::Error::source(&err).expect("the I/O error").to_string();
    assert!(!err.to_string().contains(&cause), "{err}");
    let text = crate::error::chain(&err);
    assert_eq!(text, format!("cannot read /nonexistent/tlsspy/binary: {cause}"));
}

#[cfg(unix)]
#[test]
fn cache_analyses_each_file_once_and_notices_replacement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let data = non_go_elf();
    std::fs::write(&a, &data).expect("write");
    std::fs::write(&b, &data).expect("write");
    // Made first: linking changes the inode's ctime, i.e. its content identity.
    let link = dir.path().join("link");
    std::fs::hard_link(&a, &link).expect("hard link");
    let cache = AnalysisCache::new(8);
    // Many processes of one file: one analysis.
    for _ in 0..5 {
        assert!(matches!(cache.analyze(&a), Err(GoAnalysisError::NotGo)));
    }
    assert_eq!(cache.stats(), CacheStats { hits: 4, analyses: 1, entries: 1 });
    // A hard link is the same inode: still cached.
    assert!(cache.analyze(&link).is_err());
    assert_eq!(cache.stats().analyses, 1);
    // Another inode with the same bytes is another entry.
    assert!(cache.analyze(&b).is_err());
    assert_eq!(cache.stats().analyses, 2);
    // Rewritten in place (same inode, new size): analysed again.
    std::fs::write(&a, b"not an elf at all").expect("rewrite");
    assert!(matches!(cache.analyze(&a), Err(GoAnalysisError::NotElf { .. })));
    assert_eq!(cache.stats().analyses, 3);
    assert_eq!(cache.stats().entries, 2);
}

#[cfg(unix)]
#[test]
fn a_rewrite_that_keeps_size_and_mtime_is_still_new_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app");
    std::fs::write(&path, b"0123456789").expect("write");
    let cache = AnalysisCache::new(8);
    assert!(matches!(cache.analyze(&path), Err(GoAnalysisError::NotElf { .. })));
    let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).expect("mtime");
    // Past the coarse timestamp tick, so the ctime moves.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let data = non_go_elf();
    std::fs::write(&path, &data[..10]).expect("rewrite, same size");
    let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
    file.set_modified(mtime).expect("mtime set back");
    drop(file);
    assert_eq!(std::fs::metadata(&path).and_then(|m| m.modified()).expect("mtime"), mtime);
    let _ = cache.analyze(&path);
    assert_eq!(cache.stats().analyses, 2, "same inode, size and mtime, but a new ctime: analysed again");
}

#[cfg(unix)]
#[test]
fn cache_is_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = AnalysisCache::new(3);
    for i in 0..10 {
        let p = dir.path().join(format!("f{i}"));
        std::fs::write(&p, b"").expect("write");
        assert!(matches!(cache.analyze(&p), Err(GoAnalysisError::Empty)));
    }
    assert_eq!(cache.stats().entries, 3);
}
