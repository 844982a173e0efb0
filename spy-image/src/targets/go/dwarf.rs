//! Struct field offsets from the binary's own DWARF (gimli).
//!
//! Go writes one `DW_TAG_structure_type` per Go struct, named by its full
//! path (`runtime.g`, `crypto/tls.Conn`), with `DW_TAG_member` children that
//! carry `DW_AT_data_member_location` as a constant. The linker compresses
//! the debug sections (zlib, `SHF_COMPRESSED` or `.zdebug_*` in older
//! toolchains); `object` undoes either.

use std::borrow::Cow;

use gimli::{AttributeValue, EndianSlice, LittleEndian, SectionId};
use object::{Object, ObjectSection};

use super::elf::ElfImage;
use super::GoStructOffsets;

/// Largest decompressed debug section we accept: a compressed section
/// states its own size, and a corrupt one must not make us allocate
/// gigabytes. Big Go programs have `.debug_info` of tens of MiB.
pub const MAX_DEBUG_SECTION: u64 = 512 << 20;

/// Why DWARF could not give the offsets (the analysis then uses the table).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DwarfError {
    #[error("no .debug_info")]
    Absent,
    #[error("{section}: {reason}")]
    Section { section: &'static str, reason: String },
    #[error("DWARF parse error: {0}")]
    Parse(String),
    #[error("DWARF lacks {type_name}.{field}")]
    Missing { type_name: &'static str, field: &'static str },
}

/// The structs and fields we need: (struct, field).
const WANTED: [(&str, &str); 6] = [
    ("runtime.g", "goid"),
    ("crypto/tls.Conn", "conn"),
    ("net.TCPConn", "conn"),
    ("net.conn", "fd"),
    ("net.netFD", "pfd"),
    ("internal/poll.FD", "Sysfd"),
];

/// Whether the file has DWARF type information at all.
pub(crate) fn present(image: &ElfImage<'_>) -> bool {
    image.file.section_by_name(".debug_info").is_some()
}

fn load_section<'data>(image: &ElfImage<'data>, id: SectionId) -> Result<Cow<'data, [u8]>, DwarfError> {
    let name = id.name();
    let Some(section) = image.file.section_by_name(name) else {
        return Ok(Cow::Borrowed(&[]));
    };
    let err = |reason: String| DwarfError::Section { section: name, reason };
    let compressed = section.compressed_data().map_err(|e| err(e.to_string()))?;
    if compressed.uncompressed_size > MAX_DEBUG_SECTION {
        return Err(err(format!(
            "claims {} bytes uncompressed, over the {MAX_DEBUG_SECTION}-byte limit",
            compressed.uncompressed_size
        )));
    }
    compressed.decompress().map_err(|e| err(e.to_string()))
}

/// Reads the offsets of every field in [`WANTED`].
pub(crate) fn struct_offsets(image: &ElfImage<'_>) -> Result<GoStructOffsets, DwarfError> {
    if !present(image) {
        return Err(DwarfError::Absent);
    }
    offsets_in(|id| load_section(image, id))
}

/// The offsets of [`WANTED`] in DWARF sections however they were loaded
/// (from an ELF file, or straight from a fuzz input).
pub(crate) fn offsets_in<'data>(
    load: impl FnMut(SectionId) -> Result<Cow<'data, [u8]>, DwarfError>,
) -> Result<GoStructOffsets, DwarfError> {
    let sections = gimli::DwarfSections::load(load)?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, LittleEndian));
    let mut found: [Option<u64>; WANTED.len()] = [None; WANTED.len()];
    let parse = |e: gimli::Error| DwarfError::Parse(e.to_string());

    let mut units = dwarf.units();
    'units: while let Some(header) = units.next().map_err(parse)? {
        let unit = dwarf.unit(header).map_err(parse)?;
        let mut cursor = unit.entries();
        // The unit's root, then its children: types live at depth 1.
        if cursor.next_dfs().map_err(parse)?.is_none() {
            continue;
        }
        let mut positioned = cursor.next_dfs().map_err(parse)?.is_some();
        while positioned {
            let Some(die) = cursor.current() else {
                break;
            };
            let mut wanted_struct: Option<&[u8]> = None;
            if die.tag() == gimli::DW_TAG_structure_type && die.has_children() {
                if let Some(value) = die.attr_value(gimli::DW_AT_name) {
                    let name = dwarf.attr_string(&unit, value).map_err(parse)?.slice();
                    if WANTED.iter().zip(found.iter()).any(|((s, _), slot)| slot.is_none() && s.as_bytes() == name) {
                        wanted_struct = Some(name);
                    }
                }
            }
            let struct_depth = die.depth();
            let Some(struct_name) = wanted_struct else {
                positioned = cursor.next_sibling().map_err(parse)?.is_some();
                continue;
            };
            // Walk the members: the entries deeper than the struct.
            loop {
                let Some(member) = cursor.next_dfs().map_err(parse)? else {
                    continue 'units;
                };
                if member.depth() <= struct_depth {
                    break;
                }
                if member.depth() != struct_depth + 1 || member.tag() != gimli::DW_TAG_member {
                    continue;
                }
                let Some(name) = member.attr_value(gimli::DW_AT_name) else {
                    continue;
                };
                let name = dwarf.attr_string(&unit, name).map_err(parse)?.slice();
                let offset = member_offset(member.attr_value(gimli::DW_AT_data_member_location));
                for (slot, (s, f)) in found.iter_mut().zip(WANTED.iter()) {
                    if slot.is_none() && s.as_bytes() == struct_name && f.as_bytes() == name {
                        *slot = offset;
                    }
                }
            }
            if found.iter().all(Option::is_some) {
                break 'units;
            }
            // The cursor sits on the entry after the struct.
            positioned = cursor.current().is_some();
        }
    }

    let get = |i: usize| found[i].ok_or(DwarfError::Missing { type_name: WANTED[i].0, field: WANTED[i].1 });
    let tcp_conn_conn = get(2)?;
    let conn_fd = get(3)?;
    Ok(GoStructOffsets {
        g_goid: get(0)?,
        tls_conn_conn: get(1)?,
        tcp_conn_fd: tcp_conn_conn
            .checked_add(conn_fd)
            .ok_or(DwarfError::Missing { type_name: "net.TCPConn", field: "conn.fd" })?,
        netfd_pfd: get(4)?,
        pfd_sysfd: get(5)?,
    })
}

fn member_offset<R: gimli::Reader>(value: Option<AttributeValue<R>>) -> Option<u64> {
    match value? {
        AttributeValue::Sdata(v) => u64::try_from(v).ok(),
        other => other.udata_value(),
    }
}
