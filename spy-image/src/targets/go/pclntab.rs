//! `.gopclntab`: Go's own table of every function (entry PC, name, line
//! tables). It survives `-ldflags='-s -w'`, so it names functions in
//! stripped binaries.
//!
//! Layout (runtime/symtab.go `pcHeader`, debug/gosym):
//! ```text
//! magic u32 | pad u8 pad u8 | minLC u8 | ptrSize u8 | nfunc uintptr | nfiles uintptr
//! [textStart uintptr]            (Go ≥ 1.18 only)
//! funcnameOffset cuOffset filetabOffset pctabOffset pclnOffset   (uintptr each)
//! ```
//! The function table sits at `pclnOffset`: `nfunc` pairs `(entry, funcoff)`
//! plus one final entry (the end PC of the last function). Go 1.16/1.17 use
//! pointer-sized absolute entry PCs; Go ≥ 1.18 uses `u32` offsets from
//! `textStart`. `funcoff` points (from `pclnOffset`) at a `_func` whose
//! second field `nameOff` indexes the NUL-terminated names in `funcnametab`.
//!
//! Every offset and count is checked against the table's bytes before use;
//! loops are bounded by `nfunc`, itself bounded by the table size.

use thiserror::Error;

/// Which pcHeader layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PclntabVersion {
    /// Go 1.16 and 1.17 (magic `0xfffffffa`).
    Go116,
    /// Go 1.18 and 1.19 (magic `0xfffffff0`).
    Go118,
    /// Go 1.20 and later (magic `0xfffffff1`).
    Go120,
}

const MAGIC_116: u32 = 0xffff_fffa;
const MAGIC_118: u32 = 0xffff_fff0;
const MAGIC_120: u32 = 0xffff_fff1;
/// Go 1.2–1.15 (`0xfffffffb`): recognised only to say so.
const MAGIC_12: u32 = 0xffff_fffb;

/// The largest function we will disassemble; `(*Conn).Write` is about 1 KiB.
pub const MAX_FUNCTION_SIZE: u64 = 1 << 20;
/// Longest function name compared (Go's generic instantiations run long).
const MAX_NAME: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PclntabError {
    #[error("pclntab too short for its header")]
    TooShort,
    #[error("unknown pclntab magic {0:#x}")]
    BadMagic(u32),
    #[error("pclntab of Go 1.2–1.15 (magic 0xfffffffb): unsupported")]
    TooOld,
    #[error("pclntab header field {field} is invalid ({value:#x})")]
    BadHeader { field: &'static str, value: u64 },
    #[error("pclntab function table entry {index} is invalid: {reason}")]
    BadEntry { index: usize, reason: &'static str },
}

/// A function's extent, from the pclntab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuncRange {
    pub entry: u64,
    /// Up to the next function's entry (includes alignment padding).
    pub end: u64,
}

impl FuncRange {
    pub fn size(&self) -> u64 {
        self.end - self.entry
    }
}

/// A parsed, validated pclntab.
#[derive(Debug, Clone)]
pub struct Pclntab<'data> {
    pub version: PclntabVersion,
    /// Virtual address of the pcHeader.
    pub address: u64,
    pub nfunc: usize,
    /// `pcHeader.textStart` as stored in the file (Go ≥ 1.18; 0 for 1.16).
    pub header_text_start: u64,
    pub funcname_offset: u64,
    funcnametab: &'data [u8],
    functab: &'data [u8],
    /// The bytes from `pclnOffset` on: base of every `funcoff`.
    pcln: &'data [u8],
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    let bytes = data.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Whether `data` starts like a 64-bit little-endian pcHeader (cheap test
/// for the search in images without section headers).
pub fn looks_like_header(data: &[u8]) -> bool {
    matches!(u32_at(data, 0), Some(MAGIC_116 | MAGIC_118 | MAGIC_120))
        && data.get(4..8).is_some_and(|b| b[0] == 0 && b[1] == 0 && matches!(b[2], 1 | 2 | 4) && b[3] == 8)
}

impl<'data> Pclntab<'data> {
    /// Parses the table; `data` runs from the pcHeader to (at most) the end
    /// of the section or segment that holds it; `address` is its address.
    pub fn parse(data: &'data [u8], address: u64) -> Result<Self, PclntabError> {
        let magic = u32_at(data, 0).ok_or(PclntabError::TooShort)?;
        let version = match magic {
            MAGIC_116 => PclntabVersion::Go116,
            MAGIC_118 => PclntabVersion::Go118,
            MAGIC_120 => PclntabVersion::Go120,
            MAGIC_12 => return Err(PclntabError::TooOld),
            other => return Err(PclntabError::BadMagic(other)),
        };
        let pad = data.get(4..8).ok_or(PclntabError::TooShort)?;
        let header_field = |field, value: u8| PclntabError::BadHeader { field, value: u64::from(value) };
        if pad[0] != 0 || pad[1] != 0 {
            return Err(header_field("pad", pad[0] | pad[1]));
        }
        if !matches!(pad[2], 1 | 2 | 4) {
            return Err(header_field("minLC", pad[2]));
        }
        // amd64 and arm64 only: 8-byte pointers.
        if pad[3] != 8 {
            return Err(header_field("ptrSize", pad[3]));
        }
        let word = |index: usize| u64_at(data, 8 + index * 8).ok_or(PclntabError::TooShort);
        let len = data.len() as u64;
        let nfunc = word(0)?;
        let (text_start, first_offset_word) = match version {
            PclntabVersion::Go116 => (0, 2),
            PclntabVersion::Go118 | PclntabVersion::Go120 => (word(2)?, 3),
        };
        let funcname_offset = word(first_offset_word)?;
        let pcln_offset = word(first_offset_word + 4)?;
        for (field, value) in [("funcnameOffset", funcname_offset), ("pclnOffset", pcln_offset)] {
            if value >= len {
                return Err(PclntabError::BadHeader { field, value });
            }
        }
        let field_size: u64 = match version {
            PclntabVersion::Go116 => 8,
            PclntabVersion::Go118 | PclntabVersion::Go120 => 4,
        };
        // The function table, 2·nfunc + 1 fields, must fit after pclnOffset.
        let functab_len = nfunc
            .checked_mul(2)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(field_size))
            .filter(|&n| nfunc > 0 && pcln_offset.checked_add(n).is_some_and(|end| end <= len))
            .ok_or(PclntabError::BadHeader { field: "nfunc", value: nfunc })?;
        let to_usize = |v: u64| usize::try_from(v).map_err(|_| PclntabError::TooShort);
        let pcln = data.get(to_usize(pcln_offset)?..).ok_or(PclntabError::TooShort)?;
        let functab = pcln.get(..to_usize(functab_len)?).ok_or(PclntabError::TooShort)?;
        let funcnametab = data.get(to_usize(funcname_offset)?..).ok_or(PclntabError::TooShort)?;
        let table = Pclntab {
            version,
            address,
            nfunc: to_usize(nfunc)?,
            header_text_start: text_start,
            funcname_offset,
            funcnametab,
            functab,
            pcln,
        };
        table.check_sorted()?;
        Ok(table)
    }

    fn field_size(&self) -> usize {
        match self.version {
            PclntabVersion::Go116 => 8,
            PclntabVersion::Go118 | PclntabVersion::Go120 => 4,
        }
    }

    fn field(&self, index: usize) -> Option<u64> {
        let at = index.checked_mul(self.field_size())?;
        match self.version {
            PclntabVersion::Go116 => u64_at(self.functab, at),
            PclntabVersion::Go118 | PclntabVersion::Go120 => u32_at(self.functab, at).map(u64::from),
        }
    }

    /// Entry of function `i` (`i == nfunc` gives the end of the last one), as
    /// stored: an absolute PC (1.16) or an offset from textStart (≥ 1.18).
    fn raw_entry(&self, i: usize) -> Option<u64> {
        self.field(i.checked_mul(2)?)
    }

    /// The function table must be sorted by entry (the runtime binary-searches it).
    fn check_sorted(&self) -> Result<(), PclntabError> {
        let mut previous = 0u64;
        for i in 0..=self.nfunc {
            let entry = self.raw_entry(i).ok_or(PclntabError::BadEntry { index: i, reason: "outside the table" })?;
            if entry < previous {
                return Err(PclntabError::BadEntry { index: i, reason: "entries not sorted" });
            }
            previous = entry;
        }
        Ok(())
    }

    /// The name of function `i`, without its NUL.
    fn name(&self, i: usize) -> Result<&'data [u8], PclntabError> {
        let bad = |reason| PclntabError::BadEntry { index: i, reason };
        let funcoff = self
            .field(i.checked_mul(2).and_then(|n| n.checked_add(1)).ok_or(bad("index"))?)
            .ok_or(bad("outside the table"))?;
        let funcoff = usize::try_from(funcoff).map_err(|_| bad("funcoff"))?;
        // _func: entry (uintptr in 1.16, u32 from 1.18), then nameOff int32.
        let name_field = match self.version {
            PclntabVersion::Go116 => 8,
            PclntabVersion::Go118 | PclntabVersion::Go120 => 4,
        };
        let name_off = u32_at(self.pcln, funcoff.checked_add(name_field).ok_or(bad("funcoff"))?)
            .ok_or(bad("_func outside the table"))?;
        let name_off = usize::try_from(name_off).map_err(|_| bad("nameOff"))?;
        let rest = self.funcnametab.get(name_off..).ok_or(bad("nameOff outside funcnametab"))?;
        let window = &rest[..rest.len().min(MAX_NAME)];
        let nul = window.iter().position(|&b| b == 0).ok_or(bad("name not terminated"))?;
        Ok(&window[..nul])
    }

    /// The extent of function `i`, given the resolved text start (Go ≥ 1.18).
    fn range(&self, i: usize, text_start: u64) -> Result<FuncRange, PclntabError> {
        let bad = |reason| PclntabError::BadEntry { index: i, reason };
        let start = self.raw_entry(i).ok_or(bad("outside the table"))?;
        let end = self.raw_entry(i + 1).ok_or(bad("outside the table"))?;
        let base = match self.version {
            PclntabVersion::Go116 => 0,
            PclntabVersion::Go118 | PclntabVersion::Go120 => text_start,
        };
        let entry = base.checked_add(start).ok_or(bad("entry overflows"))?;
        let end = base.checked_add(end).ok_or(bad("end overflows"))?;
        if end <= entry {
            return Err(bad("empty function"));
        }
        Ok(FuncRange { entry, end })
    }

    /// Finds the named functions in one pass over the table. A name found
    /// twice keeps its first entry (Go names are unique within a binary).
    pub fn find<const N: usize>(
        &self,
        names: [&str; N],
        text_start: u64,
    ) -> Result<[Option<FuncRange>; N], PclntabError> {
        let mut found = [None; N];
        let mut missing = N;
        for i in 0..self.nfunc {
            let name = self.name(i)?;
            for (slot, wanted) in found.iter_mut().zip(names.iter()) {
                if slot.is_none() && name == wanted.as_bytes() {
                    *slot = Some(self.range(i, text_start)?);
                    missing -= 1;
                }
            }
            if missing == 0 {
                break;
            }
        }
        Ok(found)
    }

    /// Every function name, in table order (for tools and tests).
    pub fn names(&self) -> impl Iterator<Item = Result<&'data [u8], PclntabError>> + '_ {
        (0..self.nfunc).map(|i| self.name(i))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a pclntab in the given layout for functions `(name, entry offset)`,
    /// followed by `end` as the final entry; entries are absolute for 1.16.
    pub(crate) fn build(version: PclntabVersion, text_start: u64, funcs: &[(&str, u64)], end: u64) -> Vec<u8> {
        let (magic, words) = match version {
            PclntabVersion::Go116 => (MAGIC_116, 7usize),
            PclntabVersion::Go118 => (MAGIC_118, 8),
            PclntabVersion::Go120 => (MAGIC_120, 8),
        };
        let field = if version == PclntabVersion::Go116 { 8 } else { 4 };
        let header_len = 8 + words * 8;
        // funcnametab right after the header.
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (name, _) in funcs {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        let funcname_offset = header_len as u64;
        let pcln_offset = (header_len + names.len()) as u64;
        let functab_len = (2 * funcs.len() + 1) * field;
        // _func records after the function table.
        let mut functab = Vec::new();
        let mut records = Vec::new();
        let push = |buf: &mut Vec<u8>, v: u64| {
            if field == 8 {
                buf.extend_from_slice(&v.to_le_bytes());
            } else {
                buf.extend_from_slice(&(v as u32).to_le_bytes());
            }
        };
        for ((_, entry), name_off) in funcs.iter().zip(&name_offs) {
            let funcoff = (functab_len + records.len()) as u64;
            push(&mut functab, *entry);
            push(&mut functab, funcoff);
            push(&mut records, *entry);
            records.extend_from_slice(&name_off.to_le_bytes());
            records.extend_from_slice(&[0u8; 4]);
        }
        push(&mut functab, end);
        let mut out = Vec::new();
        out.extend_from_slice(&magic.to_le_bytes());
        out.extend_from_slice(&[0, 0, 1, 8]);
        let mut header_words = vec![funcs.len() as u64, 0];
        if version != PclntabVersion::Go116 {
            header_words.push(text_start);
        }
        header_words.extend_from_slice(&[funcname_offset, 0, 0, 0, pcln_offset]);
        for w in header_words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&names);
        out.extend_from_slice(&functab);
        out.extend_from_slice(&records);
        out
    }

    #[test]
    fn finds_functions_in_every_layout() {
        let text = 0x401000;
        for version in [PclntabVersion::Go116, PclntabVersion::Go118, PclntabVersion::Go120] {
            let base = if version == PclntabVersion::Go116 { text } else { 0 };
            let funcs = [
                ("runtime.main", base),
                ("crypto/tls.(*Conn).Read", base + 0x100),
                ("crypto/tls.(*Conn).Write", base + 0x300),
                ("main.main", base + 0x700),
            ];
            let bytes = build(version, text, &funcs, base + 0x800);
            let table = Pclntab::parse(&bytes, 0x700000).expect("valid table");
            assert_eq!(table.version, version);
            assert_eq!(table.nfunc, 4);
            let [write, read, missing] = table
                .find(["crypto/tls.(*Conn).Write", "crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Writ"], text)
                .expect("well-formed");
            assert_eq!(write, Some(FuncRange { entry: text + 0x300, end: text + 0x700 }));
            assert_eq!(read, Some(FuncRange { entry: text + 0x100, end: text + 0x300 }));
            assert_eq!(missing, None, "a prefix is not a match");
            let names: Vec<_> = table.names().map(|n| n.expect("name")).collect();
            assert_eq!(names[3], b"main.main");
        }
    }

    #[test]
    fn rejects_bad_headers_and_never_panics_on_garbage() {
        let good = build(PclntabVersion::Go120, 0x1000, &[("a", 0), ("b", 0x10)], 0x20);
        assert!(Pclntab::parse(&good, 0).is_ok());
        assert_eq!(Pclntab::parse(&good[..10], 0).unwrap_err(), PclntabError::TooShort);
        let mut old = good.clone();
        old[..4].copy_from_slice(&MAGIC_12.to_le_bytes());
        assert_eq!(Pclntab::parse(&old, 0).unwrap_err(), PclntabError::TooOld);
        let mut huge = good.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(Pclntab::parse(&huge, 0), Err(PclntabError::BadHeader { field: "nfunc", .. })));
        let mut unsorted = build(PclntabVersion::Go120, 0x1000, &[("a", 0x10), ("b", 0)], 0x20);
        assert!(matches!(Pclntab::parse(&unsorted, 0), Err(PclntabError::BadEntry { .. })));
        // Every truncation and every single-byte corruption: no panic.
        for cut in 0..good.len() {
            let _ = Pclntab::parse(&good[..cut], 0).map(|t| t.find(["a"], 0x1000));
        }
        for i in 0..good.len() {
            for value in [0x00, 0x7f, 0xff] {
                unsorted.clone_from(&good);
                unsorted[i] = value;
                if let Ok(t) = Pclntab::parse(&unsorted, 0) {
                    let _ = t.find(["a", "b"], 0x1000);
                    let _ = t.names().count();
                }
            }
        }
    }
}
