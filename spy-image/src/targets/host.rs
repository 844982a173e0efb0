//! The node as target lifecycle sees it: /proc, the container's cgroups,
//! and the files processes map. The one [`Host`] that is not a test's.

#![forbid(unsafe_code)]

use std::fs::File;
use std::path::Path;

use crate::targets::lifecycle::Host;
use crate::targets::process::{self, FileId, MappedFile};
use crate::targets::tls_stack::{self, DetectedStack};
use crate::targets::{container, unprobed};

/// This machine's /proc and files.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcHost;

impl Host for ProcHost {
    fn exists(&self, pid: u32) -> bool {
        process::exists(pid)
    }

    fn is_process(&self, pid: u32) -> bool {
        // Threads fork too; only a process has a /proc entry whose Tgid is
        // its own pid.
        std::fs::read_to_string(process::proc_dir(pid).join("status"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Tgid:")).map(|t| t.trim() == pid.to_string()))
            .unwrap_or(false)
    }

    fn name(&self, pid: u32) -> Option<String> {
        process::name(pid).ok()
    }

    fn exe(&self, pid: u32) -> Option<String> {
        process::exe(pid)
    }

    fn ns_pid(&self, pid: u32) -> Option<u32> {
        process::ns_pid(pid)
    }

    fn mapped_files(&self, pid: u32) -> Vec<MappedFile> {
        process::mapped_files(pid).unwrap_or_default()
    }

    fn container_pids(&self, id: &str, pod_uid: &str) -> Result<Vec<u32>, String> {
        container::pids_of(id, pod_uid).map_err(|err| err.to_string())
    }

    fn file_id(&self, path: &Path) -> Option<FileId> {
        FileId::of(path).ok()
    }

    fn open_file_id(&self, file: &File) -> Option<FileId> {
        file.metadata().ok().map(|m| FileId::from_metadata(&m))
    }

    fn detect(&self, file: &MappedFile, is_exe: bool) -> Option<DetectedStack> {
        let found = match &file.open {
            // The bytes of the very file that is mapped (and will be probed).
            Some(open) => tls_stack::detect_open(open.file(), &file.host_path, is_exe),
            None => tls_stack::detect(&file.host_path, is_exe),
        };
        found.unwrap_or_else(|err| {
            log::debug!("{}", crate::error::chain(&err));
            None
        })
    }

    fn library_hint(&self, files: &[MappedFile]) -> Option<&'static str> {
        unprobed::library_hint(files)
    }

    fn built_in_hint(&self, exe: &Path) -> Option<&'static str> {
        unprobed::built_in_hint(exe)
    }

    fn open_built_in_hint(&self, exe: &File) -> Option<&'static str> {
        unprobed::built_in_hint_of(exe)
    }
}
