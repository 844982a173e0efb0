//! What /proc says about a process: its name, pid namespace, mapped files.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A file a process has mapped executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile {
    /// The path as the process sees it (inside its mount namespace).
    pub path: String,
    /// The same file reached from the host, through /proc/PID/root: the one
    /// to open and to attach uprobes to.
    pub host_path: PathBuf,
    /// (device, inode) of the file: uprobes live on inodes, so this is the
    /// key that attaches a library once for every process that maps it.
    pub file_id: FileId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(path: &Path) -> io::Result<FileId> {
        let meta = fs::metadata(path)?;
        Ok(FileId { dev: meta.dev(), ino: meta.ino() })
    }
}

pub fn proc_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

pub fn exists(pid: u32) -> bool {
    proc_dir(pid).exists()
}

/// The process name (`comm`).
pub fn name(pid: u32) -> io::Result<String> {
    Ok(fs::read_to_string(proc_dir(pid).join("comm"))?.trim_end().to_string())
}

/// The executable's path as the process sees it.
pub fn exe(pid: u32) -> Option<String> {
    fs::read_link(proc_dir(pid).join("exe")).ok().map(|p| p.to_string_lossy().into_owned())
}

/// The pid inside the process's own pid namespace, when it differs.
pub fn ns_pid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(proc_dir(pid).join("status")).ok()?;
    parse_ns_pid(&status).filter(|&inner| inner != pid)
}

fn parse_ns_pid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// Executable file mappings of the process, one per file.
pub fn mapped_files(pid: u32) -> io::Result<Vec<MappedFile>> {
    let maps = fs::read_to_string(proc_dir(pid).join("maps"))?;
    let root = proc_dir(pid).join("root");
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    for path in executable_paths(&maps) {
        if !seen.insert(path.to_string()) {
            continue;
        }
        let host_path = root.join(path.trim_start_matches('/'));
        // A file that vanished or cannot be reached is skipped: it cannot
        // be probed anyway.
        if let Ok(file_id) = FileId::of(&host_path) {
            files.push(MappedFile { path: path.to_string(), host_path, file_id });
        }
    }
    Ok(files)
}

/// Paths of executable file mappings in a /proc/PID/maps text.
fn executable_paths(maps: &str) -> impl Iterator<Item = &str> {
    maps.lines().filter_map(|line| {
        // address perms offset dev inode path
        let mut fields = line.splitn(6, ' ');
        let _address = fields.next()?;
        let perms = fields.next()?;
        let _offset = fields.next()?;
        let _dev = fields.next()?;
        let inode = fields.next()?;
        let path = fields.next()?.trim_start();
        if !perms.contains('x') || inode == "0" || !path.starts_with('/') {
            return None;
        }
        if path.ends_with(" (deleted)") {
            return None;
        }
        Some(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_paths_keeps_only_executable_files() {
        let maps = "\
55d0c0a00000-55d0c0a2a000 r--p 00000000 fd:01 1234 /usr/bin/curl
55d0c0a2a000-55d0c0a8a000 r-xp 0002a000 fd:01 1234 /usr/bin/curl
7f0000000000-7f0000100000 r-xp 00000000 fd:01 99 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000200000-7f0000300000 rw-p 00000000 00:00 0 
7f0000300000-7f0000400000 r-xp 00000000 fd:01 77 /tmp/old.so (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
7ffd00100000-7ffd00102000 r-xp 00000000 00:00 0                          [vdso]
";
        let paths: Vec<&str> = executable_paths(maps).collect();
        assert_eq!(paths, ["/usr/bin/curl", "/usr/lib/x86_64-linux-gnu/libssl.so.3"]);
    }

    #[test]
    fn ns_pid_is_the_innermost() {
        assert_eq!(parse_ns_pid("Name:\tx\nNSpid:\t4242\t1\n"), Some(1));
        assert_eq!(parse_ns_pid("Name:\tx\n"), None);
    }
}
