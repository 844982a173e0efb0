//! Probes go on the file a target mapped, not on whatever its path names
//! when the spy looks (root, eBPF). The target maps its own copy of
//! libssl; then the path is covered by a bind mount of the host's libssl,
//! so `/proc/PID/root/<path>` now resolves to a host file while the
//! mapping is still the copy. Probing by path would analyse and probe the
//! host's file and see nothing of the target; probing through
//! /proc/PID/map_files sees its plaintext.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tlsspy_tests::support::*;

const WAIT: Duration = Duration::from_secs(20);

fn system_libssl() -> PathBuf {
    ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/aarch64-linux-gnu/libssl.so.3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("libssl3 is installed (apt-get install libssl3)")
}

/// A bind mount, undone when dropped (also when the test fails).
struct BindMount(PathBuf);

impl BindMount {
    fn over(source: &Path, target: &Path) -> BindMount {
        let status = Command::new("mount").arg("--bind").arg(source).arg(target).status().expect("mount runs");
        assert!(status.success(), "mount --bind {} {}", source.display(), target.display());
        BindMount(target.to_path_buf())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The (device, inode) of the first mapping of `path` in /proc/PID/maps.
fn mapped_inode(pid: u32, path: &Path) -> Option<(String, u64)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || Path::new(fields[5]) != path {
            return None;
        }
        Some((fields[3].to_string(), fields[4].parse().ok()?))
    })
}

#[test]
fn a_library_path_covered_by_a_host_file_after_mapping_is_still_probed_on_the_mapped_file() {
    if !require_root("a_library_path_covered_by_a_host_file_after_mapping_is_still_probed_on_the_mapped_file") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("libssl.so.3");
    std::fs::copy(system_libssl(), &copy).expect("copy libssl");
    let cert = Certificate::new();
    let port = free_port();
    // Python's _ssl loads libssl.so.3 by soname: LD_LIBRARY_PATH makes it our copy.
    let server = Guard(
        Command::new("python3")
            .arg(fixture("https_server.py"))
            .arg(port.to_string())
            .arg(cert.cert())
            .arg(cert.key())
            .env("LD_LIBRARY_PATH", dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("run python3"),
    );
    wait_for_port(port, WAIT);
    wait_for_mapping(server.pid(), &copy.to_string_lossy(), WAIT);
    let (dev, ino) = mapped_inode(server.pid(), &copy).expect("the copy is mapped");

    // The swap: the path now names the host's libssl, the mapping does not move.
    let _mount = BindMount::over(&system_libssl(), &copy);
    let host_ino = std::fs::metadata(&copy).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).expect("stat");
    assert_ne!(host_ino, ino, "the path resolves to another file now");
    assert_eq!(mapped_inode(server.pid(), &copy), Some((dev, ino)), "the mapping is still the copy");

    let mut spy = BackgroundSpy::start({
        let mut cmd = plugin();
        cmd.args(["local", "-o", "json", "--raw", "--pid", &server.pid().to_string()]);
        cmd
    });
    assert!(spy.wait_for("\"target\"", WAIT), "no target record: {:?}", spy.seen);
    let mark = marker("mapped");
    let out = Command::new("curl")
        .args(["-s", "--http1.1", "-o", "/dev/null", "--cacert"])
        .arg(cert.cert())
        .arg(format!("https://127.0.0.1:{port}/{mark}"))
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let seen = spy.wait_for(&mark, WAIT);
    let (_, lines) = spy.interrupt();
    assert!(seen, "the target's plaintext was not captured: the probes are not on its mapped libssl\n{lines:?}");

    // The target record names the library by the path the target sees,
    // never by the spy's /proc/self/fd name for it.
    let target = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["kind"] == "target")
        .expect("a target record");
    let text = target.to_string();
    assert!(text.contains(&*copy.to_string_lossy()), "{text}");
    assert!(!text.contains("/proc/self/fd"), "{text}");
}
