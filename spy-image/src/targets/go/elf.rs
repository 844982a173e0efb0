//! A read-only view of a 64-bit little-endian ELF file: loadable segments,
//! named sections, and the translation from virtual addresses to file
//! offsets (a uprobe offset is a file offset, not an address).
//!
//! All parsing of the ELF structures is done by the `object` crate; this
//! module only answers the questions the Go analysis asks.

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSection, ObjectSymbol, ObjectSymbolTable};

use super::{GoAnalysisError, GoArch};

/// One `PT_LOAD` segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    pub vaddr: u64,
    pub file_offset: u64,
    /// Bytes backed by the file (`p_filesz`), never more than the file holds.
    pub file_size: u64,
    pub flags: u32,
}

impl Segment {
    pub fn executable(&self) -> bool {
        self.flags & elf::PF_X != 0
    }

    pub fn writable(&self) -> bool {
        self.flags & elf::PF_W != 0
    }

    /// Whether `[va, va + len)` lies in the file-backed part of the segment.
    fn contains(&self, va: u64, len: u64) -> bool {
        let Some(end) = va.checked_add(len) else {
            return false;
        };
        let Some(seg_end) = self.vaddr.checked_add(self.file_size) else {
            return false;
        };
        va >= self.vaddr && end <= seg_end
    }
}

/// A section's address and its bytes in the file (if it has any).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SectionData<'data> {
    pub address: u64,
    pub data: &'data [u8],
}

pub(crate) struct ElfImage<'data> {
    pub data: &'data [u8],
    pub file: ElfFile64<'data, Endianness>,
    pub arch: GoArch,
    pub pie: bool,
    pub segments: Vec<Segment>,
}

impl<'data> ElfImage<'data> {
    pub fn parse(data: &'data [u8]) -> Result<Self, GoAnalysisError> {
        if data.is_empty() {
            return Err(GoAnalysisError::Empty);
        }
        match object::FileKind::parse(data) {
            Ok(object::FileKind::Elf64) => {}
            Ok(object::FileKind::Elf32) => {
                return Err(GoAnalysisError::UnsupportedArch { arch: "32-bit ELF".to_owned() })
            }
            Ok(other) => return Err(GoAnalysisError::NotElf { reason: format!("{other:?} file") }),
            Err(e) => return Err(GoAnalysisError::NotElf { reason: e.to_string() }),
        }
        let file = ElfFile64::<Endianness>::parse(data)
            .map_err(|e| GoAnalysisError::MalformedElf { reason: e.to_string() })?;
        let endian = file.endian();
        let header = file.elf_header();
        if endian != Endianness::Little {
            return Err(GoAnalysisError::UnsupportedArch { arch: "big-endian ELF".to_owned() });
        }
        let arch = match header.e_machine(endian) {
            elf::EM_X86_64 => GoArch::Amd64,
            elf::EM_AARCH64 => GoArch::Arm64,
            other => return Err(GoAnalysisError::UnsupportedArch { arch: format!("ELF machine {other}") }),
        };
        let pie = header.e_type(endian) == elf::ET_DYN;
        let file_len = data.len() as u64;
        let mut segments = Vec::new();
        for ph in file.elf_program_headers() {
            if ph.p_type(endian) != elf::PT_LOAD {
                continue;
            }
            let file_offset = ph.p_offset(endian);
            let file_size = ph.p_filesz(endian);
            // A truncated file: the segment claims bytes the file lacks.
            match file_offset.checked_add(file_size) {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(GoAnalysisError::MalformedElf {
                        reason: format!(
                            "PT_LOAD at file offset {file_offset:#x} (+{file_size:#x}) \
                             runs past the end of the file ({file_len:#x} bytes): truncated?"
                        ),
                    })
                }
            }
            segments.push(Segment { vaddr: ph.p_vaddr(endian), file_offset, file_size, flags: ph.p_flags(endian) });
        }
        // A truncated file: a section claims bytes past the end. (object
        // reads section data lazily, so check them all once here.)
        for section in file.sections() {
            if let Some((offset, size)) = section.file_range() {
                if offset.checked_add(size).is_none_or(|end| end > file_len) {
                    return Err(GoAnalysisError::MalformedElf {
                        reason: format!(
                            "section {} at file offset {offset:#x} (+{size:#x}) runs past the end \
                             of the file ({file_len:#x} bytes): truncated?",
                            section.name().unwrap_or("?")
                        ),
                    });
                }
            }
        }
        Ok(ElfImage { data, file, arch, pie, segments })
    }

    /// Whether the file has a `.symtab` (not stripped with `-s`).
    pub fn has_symtab(&self) -> bool {
        self.file.symbol_table().is_some()
    }

    /// The first section with one of these names that has file data.
    pub fn section(&self, names: &[&str]) -> Option<SectionData<'data>> {
        for name in names {
            let Some(section) = self.file.section_by_name(name) else {
                continue;
            };
            let Some((offset, size)) = section.file_range() else {
                continue;
            };
            let start = usize::try_from(offset).ok()?;
            let len = usize::try_from(size).ok()?;
            let data = self.data.get(start..start.checked_add(len)?)?;
            return Some(SectionData { address: section.address(), data });
        }
        None
    }

    /// Address of the ELF section `name` (even one without file data).
    pub fn section_address(&self, name: &str) -> Option<u64> {
        self.file.section_by_name(name).map(|s| s.address())
    }

    /// A defined symbol of `.symtab` by exact name: (address, size).
    pub fn symbol(&self, name: &str) -> Option<(u64, u64)> {
        let table = self.file.symbol_table()?;
        table
            .symbols()
            .find(|s| s.is_definition() && s.name_bytes().ok() == Some(name.as_bytes()))
            .map(|s| (s.address(), s.size()))
    }

    /// Several `.symtab` look-ups in one pass over the table.
    pub fn symbols<const N: usize>(&self, names: [&str; N]) -> [Option<(u64, u64)>; N] {
        let mut found = [None; N];
        let Some(table) = self.file.symbol_table() else {
            return found;
        };
        for symbol in table.symbols() {
            if !symbol.is_definition() {
                continue;
            }
            let Ok(name) = symbol.name_bytes() else {
                continue;
            };
            for (slot, wanted) in found.iter_mut().zip(names.iter()) {
                if slot.is_none() && name == wanted.as_bytes() {
                    *slot = Some((symbol.address(), symbol.size()));
                }
            }
            if found.iter().all(Option::is_some) {
                break;
            }
        }
        found
    }

    fn segment_for(&self, va: u64, len: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.contains(va, len))
    }

    /// File offset of the virtual address range `[va, va + len)`, which must
    /// lie wholly in the file-backed part of one `PT_LOAD` segment.
    pub fn file_offset(&self, va: u64, len: u64) -> Option<u64> {
        let seg = self.segment_for(va, len)?;
        seg.file_offset.checked_add(va - seg.vaddr)
    }

    /// Whether `va` lies in an executable segment.
    pub fn is_executable(&self, va: u64, len: u64) -> bool {
        self.segment_for(va, len).is_some_and(Segment::executable)
    }

    /// The bytes at `[va, va + len)`.
    pub fn read(&self, va: u64, len: u64) -> Option<&'data [u8]> {
        let start = usize::try_from(self.file_offset(va, len)?).ok()?;
        let len = usize::try_from(len).ok()?;
        self.data.get(start..start.checked_add(len)?)
    }

    /// The bytes from `va` to the end of its segment's file data, at most `max`.
    pub fn read_upto(&self, va: u64, max: u64) -> Option<&'data [u8]> {
        let seg = self.segment_for(va, 1)?;
        let available = seg.vaddr.checked_add(seg.file_size)?.checked_sub(va)?;
        self.read(va, available.min(max))
    }

    /// The file bytes of a segment.
    pub fn segment_data(&self, seg: &Segment) -> Option<&'data [u8]> {
        let start = usize::try_from(seg.file_offset).ok()?;
        let len = usize::try_from(seg.file_size).ok()?;
        self.data.get(start..start.checked_add(len)?)
    }
}
