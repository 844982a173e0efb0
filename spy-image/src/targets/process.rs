//! What /proc says about a process: its name, pid namespace, mapped files.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file a process has mapped executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile {
    /// The path as the process sees it (inside its mount namespace).
    pub path: String,
    /// The same file named from the host, through /proc/PID/root: what
    /// records and messages show. Never opened to probe a running
    /// process: the target controls what that path resolves to.
    pub host_path: PathBuf,
    /// The file's identity: uprobes live on inodes, so (device, inode)
    /// attaches a library once for every process that maps it; size and
    /// times tell a file rewritten in place from the one analysed before.
    pub file_id: FileId,
    /// The mapped file itself, opened once through /proc/PID/map_files and
    /// checked against the mapping's (device, inode): analysis and probes
    /// both go through it ([`MappedFile::probe_path`]). None for a program
    /// file named before any process maps it.
    pub open: Option<OpenFile>,
}

impl MappedFile {
    /// The path the analysis reads and the uprobes attach to: the open
    /// file as `/proc/self/fd/N` (the kernel resolves it to that file's
    /// inode, whatever the target did to its own paths since), or the
    /// host path when there is no open file.
    pub fn probe_path(&self) -> PathBuf {
        match &self.open {
            Some(open) => open.fd_path(),
            None => self.host_path.clone(),
        }
    }
}

/// A file kept open while it is analysed and probed. Equal only to itself
/// (the same open file), whatever its path.
#[derive(Clone, Debug)]
pub struct OpenFile(Arc<File>);

impl OpenFile {
    pub fn file(&self) -> &File {
        &self.0
    }

    /// `/proc/self/fd/N`: this process's name for the open file.
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.0.as_raw_fd()))
    }
}

impl PartialEq for OpenFile {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for OpenFile {}

/// What identifies a file's content: (device, inode) names the file,
/// size, mtime and ctime change when it is rewritten in place (ctime also
/// when someone resets mtime by hand).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileId {
    pub fn of(path: &Path) -> io::Result<FileId> {
        Ok(FileId::from_metadata(&fs::metadata(path)?))
    }

    pub fn from_metadata(meta: &fs::Metadata) -> FileId {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
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

/// Executable file mappings of the process, one per file, each opened
/// through /proc/PID/map_files and checked (see [`open_mapping`]). A
/// mapping whose file cannot be opened, or turns out to be another file
/// than the one mapped, is left out (logged): it cannot be probed safely.
pub fn mapped_files(pid: u32) -> io::Result<Vec<MappedFile>> {
    let maps = fs::read_to_string(proc_dir(pid).join("maps"))?;
    let root = proc_dir(pid).join("root");
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    for mapping in executable_mappings(&maps) {
        if !seen.insert(mapping.path) {
            continue;
        }
        match open_mapping(pid, &mapping) {
            Ok(file) => {
                let file_id = FileId::from_metadata(&file.metadata()?);
                let host_path = root.join(mapping.path.trim_start_matches('/'));
                let open = Some(OpenFile(Arc::new(file)));
                files.push(MappedFile { path: mapping.path.to_string(), host_path, file_id, open });
            }
            // Gone since maps was read (an unmap, an exit): nothing to probe.
            Err(MapError::Open(err)) if err.kind() == io::ErrorKind::NotFound => {
                log::debug!("pid {pid}: {} is no longer mapped", mapping.path);
            }
            Err(err) => log::warn!("pid {pid}: not probing {}: {err}", mapping.path),
        }
    }
    Ok(files)
}

/// One line of /proc/PID/maps that maps a file executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping<'a> {
    /// Start and end address: `{start:x}-{end:x}` names the mapping in
    /// map_files (maps pads low addresses with zeros, map_files does not).
    pub start: u64,
    pub end: u64,
    pub major: u32,
    pub minor: u32,
    pub ino: u64,
    pub path: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("cannot open the mapped file")]
    Open(#[source] io::Error),
    #[error(
        "the open file is {found_major}:{found_minor} inode {found_ino}, the mapping {major}:{minor} inode {ino} \
         (replaced while we looked)"
    )]
    Mismatch { major: u32, minor: u32, ino: u64, found_major: u32, found_minor: u32, found_ino: u64 },
}

// --- Kernel-facing: the one place that opens a target's mapped file. ---
//
// /proc/PID/map_files/<start>-<end> is a link to the very file the kernel
// mapped there, not a path resolved again in the target's mount namespace:
// a file swapped or a symlink planted under the same name since is not what
// it opens. (It needs CAP_SYS_ADMIN, which the spy has.) The open file's
// (device, inode) must still be the mapping's, as /proc/PID/maps printed
// it: otherwise the range was unmapped and reused in between. std opens
// with O_CLOEXEC; read-only is all analysis and uprobes need.

/// Opens the file a mapping maps, and checks it is that file.
pub fn open_mapping(pid: u32, mapping: &Mapping<'_>) -> Result<File, MapError> {
    let link = proc_dir(pid).join("map_files").join(format!("{:x}-{:x}", mapping.start, mapping.end));
    let file = File::open(&link).map_err(MapError::Open)?;
    let meta = file.metadata().map_err(MapError::Open)?;
    let (found_major, found_minor) = split_dev(meta.dev());
    if (found_major, found_minor, meta.ino()) != (mapping.major, mapping.minor, mapping.ino) {
        return Err(MapError::Mismatch {
            major: mapping.major,
            minor: mapping.minor,
            ino: mapping.ino,
            found_major,
            found_minor,
            found_ino: meta.ino(),
        });
    }
    Ok(file)
}

/// st_dev → (major, minor), as glibc's gnu_dev_major/minor decode it (the
/// kernel's huge encoding: 12+20 bits of major, 20+12 of minor).
pub fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    (u32::try_from(major).unwrap_or(u32::MAX), u32::try_from(minor).unwrap_or(u32::MAX))
}

// --- End of the kernel-facing part. ---

/// Executable file mappings in a /proc/PID/maps text.
fn executable_mappings(maps: &str) -> impl Iterator<Item = Mapping<'_>> {
    maps.lines().filter_map(|line| {
        // address perms offset dev inode path
        let mut fields = line.splitn(6, ' ');
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?;
        let _offset = fields.next()?;
        let dev = fields.next()?;
        let inode = fields.next()?;
        let path = fields.next()?.trim_start();
        if !perms.contains('x') || inode == "0" || !path.starts_with('/') {
            return None;
        }
        if path.ends_with(" (deleted)") {
            return None;
        }
        let (major, minor) = dev.split_once(':')?;
        Some(Mapping {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            major: u32::from_str_radix(major, 16).ok()?,
            minor: u32::from_str_radix(minor, 16).ok()?,
            ino: inode.parse().ok()?,
            path,
        })
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
        let mappings: Vec<Mapping<'_>> = executable_mappings(maps).collect();
        let paths: Vec<&str> = mappings.iter().map(|m| m.path).collect();
        assert_eq!(paths, ["/usr/bin/curl", "/usr/lib/x86_64-linux-gnu/libssl.so.3"]);
        assert_eq!(
            mappings[0],
            Mapping {
                start: 0x55d0c0a2a000,
                end: 0x55d0c0a8a000,
                major: 0xfd,
                minor: 1,
                ino: 1234,
                path: "/usr/bin/curl"
            }
        );
        // A non-PIE executable sits low: maps pads its addresses, map_files does not.
        let low = executable_mappings("00400000-00491000 r-xp 00000000 fe:00 10051697 /app\n").next().expect("one");
        assert_eq!((low.start, low.end), (0x400000, 0x491000));
        // A line that does not parse is skipped, not a panic.
        assert_eq!(executable_mappings("zz r-xp 0 fd 12 /x\nzz r-xp 0 fd:zz 12 /x\nzz r-xp 0 1:2 x /x\n").count(), 0);
    }

    #[test]
    fn devices_split_like_glibc() {
        assert_eq!(split_dev(0xfd01), (0xfd, 0x01));
        assert_eq!(split_dev(40), (0, 40));
        // glibc's makedev, the inverse; large majors and minors use the high bits.
        let makedev = |major: u64, minor: u64| {
            ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
        };
        for (major, minor) in [(0xfd, 1), (0, 40), (0x9ab123, 0x67845), (0xfff_ffff, 0xfff_ffff)] {
            assert_eq!(split_dev(makedev(major, minor)), (major as u32, minor as u32));
        }
    }

    /// Opening map_files needs CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE).
    fn is_root() -> bool {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1)) == Some("0")
    }

    #[test]
    fn own_mappings_open_and_match() {
        if !is_root() {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "own_mappings_open_and_match needs root; CI runs as root");
            eprintln!("SKIP own_mappings_open_and_match: /proc/PID/map_files needs root");
            return;
        }
        let maps = fs::read_to_string("/proc/self/maps").expect("maps");
        let mut checked = 0;
        for mapping in executable_mappings(&maps) {
            let file = open_mapping(std::process::id(), &mapping).expect("own mapping opens");
            let meta = file.metadata().expect("fstat");
            assert_eq!(meta.ino(), mapping.ino);
            checked += 1;
            // The same range claimed for another inode is refused.
            let wrong = Mapping { ino: mapping.ino + 1, ..mapping };
            assert!(matches!(open_mapping(std::process::id(), &wrong), Err(MapError::Mismatch { .. })));
        }
        assert!(checked > 0, "this test maps its own executable");
    }

    #[test]
    fn ns_pid_is_the_innermost() {
        assert_eq!(parse_ns_pid("Name:\tx\nNSpid:\t4242\t1\n"), Some(1));
        assert_eq!(parse_ns_pid("Name:\tx\n"), None);
    }
}
