//! `.go.buildinfo`: the Go version and module information a Go linker
//! writes into every executable since Go 1.13 (what `go version -m` prints).
//!
//! Layout (Go's `debug/buildinfo`): a 32-byte header
//! `"\xff Go buildinf:"`, pointer size (1 byte), flags (1 byte), then either
//! - Go ≥ 1.18 (flag bit 1 set): two varint-length-prefixed strings right
//!   after the header, version then module info; or
//! - Go 1.13–1.17: at offset 16, two pointers to Go string headers
//!   `(data pointer, length)` elsewhere in the image.

use super::elf::ElfImage;
use super::GoAnalysisError;

pub(crate) const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const HEADER_LEN: usize = 32;
const FLAG_BIG_ENDIAN: u8 = 0x1;
const FLAG_INLINE_STRINGS: u8 = 0x2;
/// Go aligns the buildinfo blob to 16 bytes; a search steps by this.
const ALIGN: usize = 16;
/// Longest version or module-info string we accept (module info of large
/// programs with hundreds of dependencies runs to tens of KiB).
const MAX_STRING: u64 = 1 << 20;

/// Module info is framed by these 16-byte sentinels (cmd/go `modload`).
const MODINFO_START_LEN: usize = 16;
const MODINFO_END_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BuildInfo {
    pub version: String,
    /// The `mod` line: the main module's path.
    pub module_path: Option<String>,
    /// The `path` line: the main package's import path.
    pub main_package: Option<String>,
}

/// Finds and parses the build info; `Ok(None)` when the file has none (not Go).
pub(crate) fn read(image: &ElfImage<'_>) -> Result<Option<BuildInfo>, GoAnalysisError> {
    if let Some(section) = image.section(&[".go.buildinfo"]) {
        if section.data.starts_with(MAGIC) {
            return parse(&|va, len| image.read(va, len), section.data).map(Some);
        }
        // Present but not at the start: fall through to a search.
    }
    // No section header (sstrip'd, or section headers removed). Go's own
    // reader looks only at the start of the first writable, non-executable
    // PT_LOAD; but in a PIE that is the relro segment, and after external
    // linking the blob sits behind `.data.rel.ro`. So search every such
    // segment, whole, on the blob's 16-byte alignment.
    let mut first_error = None;
    for seg in image.segments.iter().filter(|s| s.writable() && !s.executable()) {
        let Some(bytes) = image.segment_data(seg) else {
            continue;
        };
        let first = usize::try_from((ALIGN as u64 - seg.vaddr % ALIGN as u64) % ALIGN as u64).unwrap_or(0);
        let mut at = first;
        while let Some(rest) = bytes.get(at..) {
            if rest.len() < HEADER_LEN {
                break;
            }
            if rest.starts_with(MAGIC) {
                let end = rest.len().min(HEADER_LEN + 2 * (MAX_STRING as usize + 10));
                match parse(&|va, len| image.read(va, len), &rest[..end]) {
                    Ok(info) => return Ok(Some(info)),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            at += ALIGN;
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(None)
}

fn bad(reason: &'static str) -> GoAnalysisError {
    GoAnalysisError::BadBuildInfo { reason: reason.to_owned() }
}

/// Reads `len` bytes of the image at a virtual address.
pub(crate) type ReadVa<'r, 'a> = &'r dyn Fn(u64, u64) -> Option<&'a [u8]>;

/// Parses the blob; `data` starts at the magic; `read` resolves the
/// pointers of the pre-1.18 format.
pub(crate) fn parse<'a>(read: ReadVa<'_, 'a>, data: &'a [u8]) -> Result<BuildInfo, GoAnalysisError> {
    let header = data.get(..HEADER_LEN).ok_or(bad("shorter than its 32-byte header"))?;
    if !header.starts_with(MAGIC) {
        return Err(bad("bad magic"));
    }
    let ptr_size = header[14];
    let flags = header[15];
    let (version, modinfo) = if flags & FLAG_INLINE_STRINGS != 0 {
        let mut pos = HEADER_LEN;
        let version = varint_string(data, &mut pos)?;
        let modinfo = varint_string(data, &mut pos)?;
        (version, modinfo)
    } else {
        if ptr_size != 8 || flags & FLAG_BIG_ENDIAN != 0 {
            return Err(bad("pointer-format build info of a non-64-bit-LE image"));
        }
        let word = |at: usize| -> Option<u64> { Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?)) };
        let version_ptr = word(16).ok_or(bad("truncated header"))?;
        let modinfo_ptr = word(24).ok_or(bad("truncated header"))?;
        (pointer_string(read, version_ptr)?, pointer_string(read, modinfo_ptr)?)
    };
    let version = String::from_utf8(version.to_vec()).map_err(|_| bad("version is not UTF-8"))?;
    if version.is_empty() {
        return Err(bad("empty Go version"));
    }
    let (module_path, main_package) = parse_modinfo(modinfo);
    Ok(BuildInfo { version, module_path, main_package })
}

/// A Go `uvarint` (LEB128, at most 10 bytes).
fn uvarint(data: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let byte = *data.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f).checked_shl(7 * i)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn varint_string<'a>(data: &'a [u8], pos: &mut usize) -> Result<&'a [u8], GoAnalysisError> {
    let len = uvarint(data, pos).ok_or(bad("bad string length"))?;
    if len > MAX_STRING {
        return Err(bad("string longer than the limit"));
    }
    let len = usize::try_from(len).map_err(|_| bad("bad string length"))?;
    let end = pos.checked_add(len).ok_or(bad("bad string length"))?;
    let s = data.get(*pos..end).ok_or(bad("string runs past the data"))?;
    *pos = end;
    Ok(s)
}

/// A Go string header `(ptr, len)` at virtual address `at`.
fn pointer_string<'a>(read: ReadVa<'_, 'a>, at: u64) -> Result<&'a [u8], GoAnalysisError> {
    let header = read(at, 16).ok_or(bad("string header outside the file"))?;
    let (ptr, len) = header.split_at(8);
    let ptr = u64::from_le_bytes(ptr.try_into().map_err(|_| bad("string header"))?);
    let len = u64::from_le_bytes(len.try_into().map_err(|_| bad("string header"))?);
    if len > MAX_STRING {
        return Err(bad("string longer than the limit"));
    }
    if len == 0 {
        return Ok(&[]);
    }
    read(ptr, len).ok_or(bad("string data outside the file"))
}

/// Pulls the `path` and `mod` lines out of the module info text.
fn parse_modinfo(raw: &[u8]) -> (Option<String>, Option<String>) {
    // Strip the sentinels when they are there (as Go's reader does).
    let text = if raw.len() > MODINFO_START_LEN + MODINFO_END_LEN && raw[raw.len() - MODINFO_END_LEN - 1] == b'\n' {
        &raw[MODINFO_START_LEN..raw.len() - MODINFO_END_LEN]
    } else {
        raw
    };
    let text = String::from_utf8_lossy(text);
    let mut module = None;
    let mut package = None;
    for line in text.lines() {
        let mut fields = line.split('\t');
        match (fields.next(), fields.next()) {
            (Some("mod"), Some(path)) if module.is_none() && !path.is_empty() => {
                module = Some(path.to_owned());
            }
            (Some("path"), Some(path)) if package.is_none() && !path.is_empty() => {
                package = Some(path.to_owned());
            }
            _ => {}
        }
    }
    (module, package)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_varints() {
        let mut pos = 0;
        assert_eq!(uvarint(&[0x05], &mut pos), Some(5));
        let mut pos = 0;
        assert_eq!(uvarint(&[0xac, 0x02], &mut pos), Some(300));
        assert_eq!(pos, 2);
        let mut pos = 0;
        assert_eq!(uvarint(&[0x80, 0x80], &mut pos), None, "runs off the end");
        let mut pos = 0;
        assert_eq!(uvarint(&[0xff; 11], &mut pos), None, "too long");
    }

    #[test]
    fn parses_modinfo_with_and_without_sentinels() {
        let body = "path\texample.com/cmd/app\nmod\texample.com\t(devel)\t\ndep\tgolang.org/x/net\tv0.1.0\th1:x\n";
        let mut framed = vec![0x30u8; MODINFO_START_LEN];
        framed.extend_from_slice(body.as_bytes());
        framed.extend_from_slice(&[0xf9u8; MODINFO_END_LEN]);
        for raw in [body.as_bytes(), framed.as_slice()] {
            let (module, package) = parse_modinfo(raw);
            assert_eq!(module.as_deref(), Some("example.com"));
            assert_eq!(package.as_deref(), Some("example.com/cmd/app"));
        }
        assert_eq!(parse_modinfo(b""), (None, None));
    }

    fn header(flags: u8) -> Vec<u8> {
        let mut h = MAGIC.to_vec();
        h.push(8);
        h.push(flags);
        h.resize(HEADER_LEN, 0);
        h
    }

    #[test]
    fn parses_inline_format_of_go_1_18_and_later() {
        let mut blob = header(FLAG_INLINE_STRINGS);
        let version = b"go1.23.4";
        let modinfo = b"path\texample.com/app\nmod\texample.com/app\t(devel)\t\n";
        blob.push(version.len() as u8);
        blob.extend_from_slice(version);
        blob.push(modinfo.len() as u8);
        blob.extend_from_slice(modinfo);
        let info = parse(&|_, _| None, &blob).expect("valid blob");
        assert_eq!(info.version, "go1.23.4");
        assert_eq!(info.module_path.as_deref(), Some("example.com/app"));
        // Cut anywhere inside the strings: an error, never a panic.
        for cut in 0..blob.len() {
            let _ = parse(&|_, _| None, &blob[..cut]);
        }
        assert!(parse(&|_, _| None, &blob[..blob.len() - 1]).is_err());
    }

    #[test]
    fn parses_pointer_format_of_go_1_13_to_1_17() {
        // A fake address space: string headers at 0x1000/0x1010, bytes at 0x2000/0x3000.
        let version = b"go1.17.13".to_vec();
        let modinfo = b"path\tapp\nmod\tgithub.com/x/app\tv1.0.0\t\n".to_vec();
        let mut headers = Vec::new();
        for (ptr, len) in [(0x2000u64, version.len()), (0x3000u64, modinfo.len())] {
            headers.extend_from_slice(&ptr.to_le_bytes());
            headers.extend_from_slice(&(len as u64).to_le_bytes());
        }
        let read = |va: u64, len: u64| -> Option<&[u8]> {
            let (base, bytes): (u64, &[u8]) = match va {
                0x1000..=0x101f => (0x1000, &headers),
                0x2000..=0x2fff => (0x2000, &version),
                0x3000..=0x3fff => (0x3000, &modinfo),
                _ => return None,
            };
            let start = usize::try_from(va - base).ok()?;
            bytes.get(start..start + usize::try_from(len).ok()?)
        };
        let mut blob = header(0);
        blob[16..24].copy_from_slice(&0x1000u64.to_le_bytes());
        blob[24..32].copy_from_slice(&0x1010u64.to_le_bytes());
        let info = parse(&read, &blob).expect("valid blob");
        assert_eq!(info.version, "go1.17.13");
        assert_eq!(info.module_path.as_deref(), Some("github.com/x/app"));
        assert_eq!(info.main_package.as_deref(), Some("app"));
        // A dangling pointer is an error.
        let mut dangling = blob.clone();
        dangling[16..24].copy_from_slice(&0x9000u64.to_le_bytes());
        assert!(parse(&read, &dangling).is_err());
    }

    #[test]
    fn rejects_lengths_past_the_data() {
        let mut pos = 0;
        assert!(varint_string(&[0x05, b'g', b'o'], &mut pos).is_err());
        let mut pos = 0;
        assert_eq!(varint_string(&[0x02, b'g', b'o'], &mut pos).ok(), Some(&b"go"[..]));
    }
}
