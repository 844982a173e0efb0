//! The probes as target lifecycle uses them: trace a process, probe a
//! file, name the library a probe hit came from.

#![forbid(unsafe_code)]

use crate::probes::{ProbeError, Probes};
use crate::targets::go::GoBinary;
use crate::targets::lifecycle::{Attach, ProbedLibrary};
use crate::targets::process::MappedFile;
use crate::targets::tls_stack::OpensslProbes;

impl Attach for Probes {
    type Error = ProbeError;

    fn add_target(&mut self, pid: u32, follow_children: bool) -> Result<(), ProbeError> {
        Probes::add_target(self, pid, follow_children)
    }

    // The uprobes go on the open, checked file (/proc/self/fd/N), never
    // on a path the target could have re-pointed since the analysis;
    // records name the file by its host path.
    fn attach_openssl(&mut self, file: &MappedFile, library: &OpensslProbes) -> Result<(), ProbeError> {
        Probes::attach_openssl(self, file.file_id, &file.host_path, &file.probe_path(), library)
    }

    fn attach_go(&mut self, file: &MappedFile, bin: &GoBinary) -> Result<(), ProbeError> {
        Probes::attach_go(self, file.file_id, &file.host_path, &file.probe_path(), bin)
    }

    fn probed_library(&self, id: u16) -> Option<ProbedLibrary> {
        self.library(id).map(|l| ProbedLibrary {
            path: l.path.clone(),
            library: l.library,
            linkage: l.linkage,
            version: l.version.clone(),
        })
    }
}
