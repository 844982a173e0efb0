//! Go binary analysis: where to put the uprobes for `crypto/tls` in a Go
//! executable, and the struct offsets the probes need.
//!
//! Pure analysis of ELF bytes: no eBPF, no attaching. The probe code takes a
//! [`GoBinary`] and attaches entry uprobes at [`GoFunctionProbe::entry_file_offset`]
//! and at every [`GoFunctionProbe::ret_file_offsets`] (never a uretprobe: the
//! Go runtime moves stacks and a rewritten return address crashes it).
//!
//! What is read, and from where:
//! - Go version and module: `.go.buildinfo` (section, or found in the first
//!   writable segment when section headers are gone) — [`buildinfo`].
//! - `crypto/tls.(*Conn).Read` / `Write`: `.symtab` when present, else the
//!   pclntab (`.gopclntab`, or found by its header and `runtime.firstmoduledata`
//!   when section headers are gone) — [`pclntab`].
//! - Return instructions: capstone over the function's bytes — [`disasm`].
//! - Struct offsets: DWARF when present ([`dwarf`]), else a per-release table
//!   ([`offsets_table`]).
//!
//! Each file is read once into memory (bounded by [`MAX_BINARY_SIZE`]);
//! [`AnalysisCache`] makes many processes of one executable cost one analysis.

#![forbid(unsafe_code)]

mod buildinfo;
#[cfg(unix)]
mod cache;
mod disasm;
mod dwarf;
mod elf;
pub mod offsets_table;
pub mod pclntab;
pub mod version;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

#[cfg(unix)]
pub use cache::{AnalysisCache, CacheStats};
pub use dwarf::DwarfError;
pub use pclntab::PclntabError;
pub use version::GoVersion;

use elf::ElfImage;
use pclntab::{FuncRange, Pclntab};

/// `crypto/tls.(*Conn).Write(b []byte) (int, error)`.
pub const TLS_WRITE_SYMBOL: &str = "crypto/tls.(*Conn).Write";
/// `crypto/tls.(*Conn).Read(b []byte) (int, error)`.
pub const TLS_READ_SYMBOL: &str = "crypto/tls.(*Conn).Read";

/// Largest file analysed. Go binaries of a few hundred MiB exist (k8s
/// components with everything linked in); past this we refuse rather than
/// hold the bytes in memory.
pub const MAX_BINARY_SIZE: u64 = 1 << 30;

/// The oldest Go release we analyse: the first with the register ABI on
/// amd64 (and the oldest release the offsets table covers).
pub const MIN_GO_VERSION: GoVersion = GoVersion::new(1, offsets_table::OLDEST.1, 0);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GoArch {
    Amd64,
    Arm64,
}

impl fmt::Display for GoArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GoArch::Amd64 => "amd64",
            GoArch::Arm64 => "arm64",
        })
    }
}

/// How arguments and results are passed to and from Go functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GoAbi {
    /// ABIInternal (amd64 from Go 1.17, arm64 from 1.18). amd64: integer
    /// args in RAX RBX RCX RDI RSI R8 R9 R10 R11, current g in R14; arm64:
    /// R0–R15, g in R28. `(*Conn).Write`: receiver RAX/R0, `b.ptr`
    /// RBX/R1, `b.len` RCX/R2; at RET `n` is in RAX/R0.
    Register,
    /// ABI0: arguments and results on the stack from SP+8 (amd64) / SP+8
    /// (arm64, above the saved LR), g in thread-local storage (amd64) or R28.
    Stack,
}

impl GoAbi {
    /// The ABI Go functions use in this release on this architecture.
    pub fn for_version(arch: GoArch, version: GoVersion) -> GoAbi {
        let register = match arch {
            GoArch::Amd64 => version.at_least(1, 17),
            GoArch::Arm64 => version.at_least(1, 18),
        };
        if register {
            GoAbi::Register
        } else {
            GoAbi::Stack
        }
    }
}

/// Where a function's address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolSource {
    Symtab,
    Pclntab,
}

/// Probe points of one Go function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoFunctionProbe {
    pub symbol: &'static str,
    /// Virtual address of the entry (as linked; PIE load bias not applied).
    pub address: u64,
    /// Bytes from the entry to the next function (includes padding).
    pub size: u64,
    /// The entry's file offset: the uprobe offset.
    pub entry_file_offset: u64,
    /// File offset of every RET, ascending; never empty.
    pub ret_file_offsets: Vec<u64>,
    pub source: SymbolSource,
}

/// Byte offsets the probes need to go from a `*tls.Conn` to its socket
/// fd, and to tell goroutines apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GoStructOffsets {
    /// `runtime.g.goid`.
    pub g_goid: u64,
    /// `crypto/tls.Conn.conn`: a `net.Conn` interface, two words (itab,
    /// data); the data word (at `+ 8`) is the `*net.TCPConn` for TCP.
    pub tls_conn_conn: u64,
    /// `net.TCPConn` → embedded `net.conn` → `fd` (`*net.netFD`).
    pub tcp_conn_fd: u64,
    /// `net.netFD.pfd` (`internal/poll.FD`, embedded by value).
    pub netfd_pfd: u64,
    /// `internal/poll.FD.Sysfd` (an `int`).
    pub pfd_sysfd: u64,
}

/// Where [`GoStructOffsets`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsSource {
    /// The binary's own DWARF.
    Dwarf,
    /// The per-release table; names the row (`"1.21"`, or
    /// `"assumed from 1.27"` for newer releases).
    VersionTable(&'static str),
}

/// Everything the probe code needs to know about one Go executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoBinary {
    /// As the toolchain wrote it, e.g. `go1.23.4`.
    pub go_version: String,
    pub version: GoVersion,
    /// The main module's path (`mod` line of the build info).
    pub module_path: Option<String>,
    /// The main package's import path (`path` line).
    pub main_package: Option<String>,
    pub arch: GoArch,
    pub abi: GoAbi,
    /// `ET_DYN` (`-buildmode=pie`).
    pub pie: bool,
    /// No `.symtab` (`-ldflags=-s`).
    pub stripped: bool,
    pub write: GoFunctionProbe,
    pub read: GoFunctionProbe,
    pub offsets: GoStructOffsets,
    pub offsets_source: OffsetsSource,
    /// Why DWARF was not used, when the binary had some (else `None`).
    pub dwarf_problem: Option<DwarfError>,
}

#[derive(Debug, Clone, Error)]
pub enum GoAnalysisError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{size} bytes is over the {limit}-byte limit for Go binary analysis")]
    TooLarge { size: u64, limit: u64 },
    #[error("empty file")]
    Empty,
    #[error("not an ELF file: {reason}")]
    NotElf { reason: String },
    #[error("malformed or truncated ELF: {reason}")]
    MalformedElf { reason: String },
    #[error("unsupported architecture ({arch}): only amd64 and arm64 Go binaries are analysed")]
    UnsupportedArch { arch: String },
    #[error("not a Go binary: no Go build info (.go.buildinfo)")]
    NotGo,
    #[error("Go build info is malformed: {reason}")]
    BadBuildInfo { reason: String },
    #[error("Go version {version} is not supported: {reason}")]
    UnsupportedGoVersion { version: String, reason: String },
    #[error("no Go pclntab found{}", if *.stripped { " (binary is stripped)" } else { "" })]
    PclntabNotFound { stripped: bool },
    #[error("Go pclntab is corrupt")]
    BadPclntab(#[from] PclntabError),
    #[error("cannot find where Go text starts (runtime.text) to resolve pclntab entries")]
    TextStartUnknown,
    #[error("{symbol} is not in this binary (not linked in, inlined away, or the program does not use crypto/tls)")]
    FunctionNotFound { symbol: &'static str },
    #[error("{symbol} at {address:#x}: {reason}")]
    BadFunction { symbol: &'static str, address: u64, reason: String },
    #[error("{symbol} at {address:#x} has no RET instruction: cannot probe its returns")]
    NoReturns { symbol: &'static str, address: u64 },
    #[error("disassembler: {0}")]
    Disassembler(String),
    #[error("no struct offsets for Go {version} on {arch}: {reason}")]
    NoOffsets { version: String, arch: GoArch, reason: String },
}

/// Reads the file at `path` (once, at most [`MAX_BINARY_SIZE`] bytes) and analyses it.
pub fn analyze(path: &Path) -> Result<GoBinary, GoAnalysisError> {
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let data = read_bounded(file, path)?;
    analyze_bytes(&data)
}

pub(crate) fn io_error(path: &Path, source: std::io::Error) -> GoAnalysisError {
    GoAnalysisError::Io { path: path.to_owned(), source: Arc::new(source) }
}

/// Reads a whole file, refusing files over [`MAX_BINARY_SIZE`].
pub(crate) fn read_bounded(file: std::fs::File, path: &Path) -> Result<Vec<u8>, GoAnalysisError> {
    let size = file.metadata().map_err(|e| io_error(path, e))?.len();
    if size > MAX_BINARY_SIZE {
        return Err(GoAnalysisError::TooLarge { size, limit: MAX_BINARY_SIZE });
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // `take` guards against a file that grows while we read it.
    file.take(MAX_BINARY_SIZE + 1).read_to_end(&mut data).map_err(|e| io_error(path, e))?;
    if data.len() as u64 > MAX_BINARY_SIZE {
        return Err(GoAnalysisError::TooLarge { size: data.len() as u64, limit: MAX_BINARY_SIZE });
    }
    Ok(data)
}

/// The Go version an executable was built with (`go1.23.4`), when it is a
/// Go executable with readable build info. Cheap next to [`analyze_bytes`]:
/// for naming a binary whose analysis failed.
pub fn go_version(data: &[u8]) -> Option<String> {
    let image = ElfImage::parse(data).ok()?;
    buildinfo::read(&image).ok().flatten().map(|info| info.version)
}

impl GoAnalysisError {
    /// Whether the file is a Go executable (that could not be analysed)
    /// rather than something else entirely.
    pub fn is_go_binary(&self) -> bool {
        !matches!(
            self,
            GoAnalysisError::Io { .. }
                | GoAnalysisError::TooLarge { .. }
                | GoAnalysisError::Empty
                | GoAnalysisError::NotElf { .. }
                | GoAnalysisError::MalformedElf { .. }
                | GoAnalysisError::UnsupportedArch { .. }
                | GoAnalysisError::NotGo
        )
    }
}

/// Analyses an executable held in memory.
pub fn analyze_bytes(data: &[u8]) -> Result<GoBinary, GoAnalysisError> {
    let image = ElfImage::parse(data)?;
    let info = buildinfo::read(&image)?.ok_or(GoAnalysisError::NotGo)?;
    let version = GoVersion::parse(&info.version).ok_or_else(|| GoAnalysisError::UnsupportedGoVersion {
        version: info.version.clone(),
        reason: "cannot parse the version string".to_owned(),
    })?;
    if version < MIN_GO_VERSION {
        return Err(GoAnalysisError::UnsupportedGoVersion {
            version: info.version.clone(),
            reason: format!(
                "releases before go{}.{} pass arguments on the stack on amd64, keep a \
                 different pclntab layout, and have no struct-offset table here; \
                 go1.17 or newer is needed",
                MIN_GO_VERSION.major, MIN_GO_VERSION.minor
            ),
        });
    }
    let stripped = !image.has_symtab();
    let [write, read] = find_functions(&image, [TLS_WRITE_SYMBOL, TLS_READ_SYMBOL])?;
    let scanner = disasm::RetScanner::new(image.arch).map_err(|e| GoAnalysisError::Disassembler(e.to_string()))?;
    let write = probe(&image, &scanner, TLS_WRITE_SYMBOL, write)?;
    let read = probe(&image, &scanner, TLS_READ_SYMBOL, read)?;

    let (offsets, offsets_source, dwarf_problem) = match dwarf::struct_offsets(&image) {
        Ok(offsets) => (offsets, OffsetsSource::Dwarf, None),
        Err(problem) => {
            let (offsets, label) =
                offsets_table::lookup(image.arch, version).ok_or_else(|| GoAnalysisError::NoOffsets {
                    version: info.version.clone(),
                    arch: image.arch,
                    reason: format!("no DWARF ({problem}) and no table row for this release"),
                })?;
            let problem = (problem != DwarfError::Absent).then_some(problem);
            if let Some(problem) = &problem {
                log::warn!("Go DWARF unusable ({problem}); using the go{label} offsets table");
            }
            (offsets, OffsetsSource::VersionTable(label), problem)
        }
    };

    Ok(GoBinary {
        go_version: info.version,
        version,
        module_path: info.module_path,
        main_package: info.main_package,
        arch: image.arch,
        abi: GoAbi::for_version(image.arch, version),
        pie: image.pie,
        stripped,
        write,
        read,
        offsets,
        offsets_source,
        dwarf_problem,
    })
}

/// A function located in the image, before disassembly.
#[derive(Debug, Clone, Copy)]
struct Located {
    range: FuncRange,
    source: SymbolSource,
}

/// Finds the functions in `.symtab`, falling back to the pclntab for any
/// the symbol table lacks (stripped binaries have no `.symtab` at all).
fn find_functions<const N: usize>(
    image: &ElfImage<'_>,
    names: [&'static str; N],
) -> Result<[Located; N], GoAnalysisError> {
    let from_symtab = image.symbols(names);
    let mut located: [Option<Located>; N] = [None; N];
    for (slot, symbol) in located.iter_mut().zip(from_symtab) {
        // A zero size (some external linkers) is resolved from the pclntab.
        if let Some((address, size)) = symbol.filter(|&(_, size)| size > 0) {
            if let Some(end) = address.checked_add(size) {
                *slot = Some(Located { range: FuncRange { entry: address, end }, source: SymbolSource::Symtab });
            }
        }
    }
    if located.iter().any(Option::is_none) {
        let table = find_pclntab(image)?;
        let text_start = text_start(image, &table)?;
        let found = table.find(names, text_start)?;
        for (slot, range) in located.iter_mut().zip(found) {
            if slot.is_none() {
                *slot = range.map(|range| Located { range, source: SymbolSource::Pclntab });
            }
        }
    }
    let mut out = [Located { range: FuncRange { entry: 0, end: 0 }, source: SymbolSource::Symtab }; N];
    for ((out, slot), symbol) in out.iter_mut().zip(located).zip(names) {
        *out = slot.ok_or(GoAnalysisError::FunctionNotFound { symbol })?;
    }
    Ok(out)
}

/// Section names the Go linker gives the pclntab (PIE puts it in relro).
const PCLNTAB_SECTIONS: [&str; 2] = [".gopclntab", ".data.rel.ro.gopclntab"];

/// Finds the pclntab: by section name, by the `runtime.pclntab` symbol
/// (external linking merges the section into `.data.rel.ro`), or, with no
/// section headers, by searching the data segments for a valid header that
/// `runtime.firstmoduledata` points at.
fn find_pclntab<'data>(image: &ElfImage<'data>) -> Result<Pclntab<'data>, GoAnalysisError> {
    if let Some(section) = image.section(&PCLNTAB_SECTIONS) {
        return Ok(Pclntab::parse(section.data, section.address)?);
    }
    if let Some((address, _)) = image.symbol("runtime.pclntab") {
        if let Some(data) = image.read_upto(address, u64::MAX) {
            return Ok(Pclntab::parse(data, address)?);
        }
    }
    let mut fallback: Option<Pclntab<'data>> = None;
    for seg in image.segments.iter().filter(|s| !s.executable()) {
        let Some(bytes) = image.segment_data(seg) else {
            continue;
        };
        // pcHeader holds pointer-sized fields: it is 8-byte aligned in memory.
        let first = usize::try_from((8 - seg.vaddr % 8) % 8).unwrap_or(0);
        let mut at = first;
        while let Some(rest) = bytes.get(at..) {
            if rest.len() < 8 {
                break;
            }
            if pclntab::looks_like_header(rest) {
                let address = seg.vaddr.saturating_add(at as u64);
                if let Ok(table) = Pclntab::parse(rest, address) {
                    if moduledata_points_at(image, &table) {
                        return Ok(table);
                    }
                    fallback.get_or_insert(table);
                }
            }
            at += 8;
        }
    }
    // A header that validated (sorted function table and all) but that no
    // moduledata names: the relocated pointers may not be in the file.
    fallback.ok_or(GoAnalysisError::PclntabNotFound { stripped: !image.has_symtab() })
}

/// Word indexes in `runtime.moduledata` (unchanged from Go 1.18 through
/// 1.27: `pcHeader`, six slices of three words, `findfunctab`, `minpc`,
/// `maxpc`, then `text`).
const MODULEDATA_MINPC: usize = 20;
const MODULEDATA_TEXT: usize = 22;

/// `runtime.firstmoduledata` as the file holds it: found in a writable
/// segment by its first words, `pcHeader *pcHeader` and the `funcnametab`
/// slice's data pointer (pcHeader + funcnameOffset).
fn find_moduledata<'data>(image: &ElfImage<'data>, table: &Pclntab<'_>) -> Option<&'data [u8]> {
    let funcnametab = table.address.checked_add(table.funcname_offset)?;
    let mut pattern = [0u8; 16];
    pattern[..8].copy_from_slice(&table.address.to_le_bytes());
    pattern[8..].copy_from_slice(&funcnametab.to_le_bytes());
    image.segments.iter().filter(|s| s.writable()).filter_map(|s| image.segment_data(s)).find_map(|bytes| {
        // Pointer-sized fields: 8-byte aligned within the segment's bytes,
        // as the Go linker aligns segments to pages.
        (0..bytes.len().saturating_sub(15))
            .step_by(8)
            .find(|&at| bytes[at..at + 16] == pattern)
            .and_then(|at| bytes.get(at..))
    })
}

fn moduledata_points_at(image: &ElfImage<'_>, table: &Pclntab<'_>) -> bool {
    find_moduledata(image, table).is_some()
}

/// `moduledata.text`: where Go text starts, as the runtime itself reads it.
/// Checked against `minpc` (the first function's entry, never below text)
/// and an executable segment, so a stray match is not believed.
fn moduledata_text(image: &ElfImage<'_>, table: &Pclntab<'_>) -> Option<u64> {
    let words = find_moduledata(image, table)?;
    let word = |index: usize| {
        let bytes = words.get(index * 8..index * 8 + 8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    };
    let text = word(MODULEDATA_TEXT)?;
    let minpc = word(MODULEDATA_MINPC)?;
    let in_text = image.segments.iter().any(|s| s.executable() && s.vaddr <= text && text - s.vaddr < s.file_size);
    (text != 0 && text <= minpc && in_text).then_some(text)
}

/// Where Go text starts (`runtime.text`), the base of Go ≥ 1.18 entry offsets.
/// The symbol wins when there is one; then `moduledata.text`, which is what
/// the runtime uses (Go ≥ 1.26 no longer stores `pcHeader.textStart`, and
/// `debug/gosym` warns that it may be unrelocated in the file before that);
/// then the header's field; then `.text`, where internal linking puts
/// `runtime.text` first (external linking puts C start-up code there first).
fn text_start(image: &ElfImage<'_>, table: &Pclntab<'_>) -> Result<u64, GoAnalysisError> {
    if table.version == pclntab::PclntabVersion::Go116 {
        return Ok(0); // absolute entries
    }
    if let Some((address, _)) = image.symbol("runtime.text") {
        return Ok(address);
    }
    if let Some(text) = moduledata_text(image, table) {
        return Ok(text);
    }
    if table.header_text_start != 0 {
        return Ok(table.header_text_start);
    }
    image.section_address(".text").ok_or(GoAnalysisError::TextStartUnknown)
}

fn probe(
    image: &ElfImage<'_>,
    scanner: &disasm::RetScanner,
    symbol: &'static str,
    located: Located,
) -> Result<GoFunctionProbe, GoAnalysisError> {
    let Located { range, source } = located;
    let address = range.entry;
    let bad = |reason: String| GoAnalysisError::BadFunction { symbol, address, reason };
    let size = range.size();
    if size > pclntab::MAX_FUNCTION_SIZE {
        return Err(bad(format!("{size} bytes, over the {}-byte limit", pclntab::MAX_FUNCTION_SIZE)));
    }
    if !image.is_executable(address, size) {
        return Err(bad("not inside an executable segment of the file".to_owned()));
    }
    let code = image.read(address, size).ok_or_else(|| bad("bytes outside the file".to_owned()))?;
    let entry_file_offset = image.file_offset(address, 1).ok_or_else(|| bad("no file offset".to_owned()))?;
    let rets = scanner.returns(code, address).map_err(|e| GoAnalysisError::Disassembler(e.to_string()))?;
    if rets.is_empty() {
        return Err(GoAnalysisError::NoReturns { symbol, address });
    }
    let ret_file_offsets = rets
        .iter()
        .map(|&va| image.file_offset(va, 1).ok_or_else(|| bad(format!("RET at {va:#x} has no file offset"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(GoFunctionProbe { symbol, address, size, entry_file_offset, ret_file_offsets, source })
}

/// Entry points for the fuzz targets (fuzz/fuzz_targets/go_*.rs): each
/// runs one stage of the analysis over arbitrary bytes, where any answer
/// is fine and a panic is the bug. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    use std::borrow::Cow;

    use super::{analyze_bytes, buildinfo, dwarf, go_version, ElfImage, Pclntab, TLS_READ_SYMBOL, TLS_WRITE_SYMBOL};

    /// Most names walked in one pclntab: the table bounds `nfunc` by its
    /// size, this bounds the time one input takes.
    const MAX_NAMES: usize = 1 << 16;

    /// The whole analysis of a would-be executable, and its cheap parts.
    pub fn elf(data: &[u8]) {
        let _ = analyze_bytes(data);
        let _ = go_version(data);
        if let Ok(image) = ElfImage::parse(data) {
            let _ = image.symbols([TLS_WRITE_SYMBOL, TLS_READ_SYMBOL]);
            let _ = dwarf::struct_offsets(&image);
        }
    }

    /// `.go.buildinfo` blobs, as they are and behind the magic (so that
    /// the fuzzer spends its time past the first check); pointers (pre-1.18
    /// layout) resolve as offsets into the input.
    pub fn buildinfo(data: &[u8]) {
        let read = |va: u64, len: u64| -> Option<&[u8]> {
            let start = usize::try_from(va).ok()?;
            let len = usize::try_from(len).ok()?;
            data.get(start..)?.get(..len)
        };
        let _ = buildinfo::parse(&read, data);
        let mut framed = buildinfo::MAGIC.to_vec();
        framed.extend_from_slice(data);
        let _ = buildinfo::parse(&read, &framed);
    }

    /// A pcHeader and what follows it: parse, walk names, find functions.
    pub fn pclntab(data: &[u8]) {
        let address = 0x4a_0000;
        if let Ok(table) = Pclntab::parse(data, address) {
            for name in table.names().take(MAX_NAMES) {
                if name.is_err() {
                    break;
                }
            }
            let _ = table.find([TLS_WRITE_SYMBOL, TLS_READ_SYMBOL], 0x40_1000);
        }
    }

    /// DWARF sections cut from the input: each is `[len_hi][len_lo][bytes]`,
    /// in the order .debug_info, .debug_abbrev, .debug_str, .debug_line_str,
    /// .debug_str_offsets; missing ones are empty.
    pub fn dwarf(data: &[u8]) {
        use gimli::SectionId;
        let order = [
            SectionId::DebugInfo,
            SectionId::DebugAbbrev,
            SectionId::DebugStr,
            SectionId::DebugLineStr,
            SectionId::DebugStrOffsets,
        ];
        let mut pieces: [&[u8]; 5] = [&[]; 5];
        let mut rest = data;
        for piece in &mut pieces {
            let Some((len, tail)) = rest.split_first_chunk::<2>() else { break };
            let n = usize::from(u16::from_be_bytes(*len)).min(tail.len());
            *piece = &tail[..n];
            rest = &tail[n..];
        }
        let _ = dwarf::offsets_in(|id| {
            let found = order.iter().position(|&wanted| wanted == id).map_or(&[][..], |i| pieces[i]);
            Ok(Cow::Borrowed(found))
        });
    }

    #[cfg(test)]
    mod tests {
        /// The entry points take anything: a few shapes that reach past
        /// the first checks, none may panic.
        #[test]
        fn entry_points_take_any_bytes() {
            let elf_header = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0";
            let pclntab_header = [0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
            for input in [&b""[..], b"\xff Go buildinf:\x08\x02", elf_header, &pclntab_header, &[0xff; 300]] {
                super::elf(input);
                super::buildinfo(input);
                super::pclntab(input);
                super::dwarf(input);
            }
        }
    }
}

#[cfg(test)]
mod tests;
