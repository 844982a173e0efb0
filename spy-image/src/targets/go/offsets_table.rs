//! Struct offsets per Go release, for binaries without DWARF (`-w`).
//!
//! Provenance, per field (all 64-bit; amd64 and arm64 lay these structs out
//! identically, as every field is pointer-sized or a fixed-width integer):
//!
//! - `runtime.g.goid`: `stack` (2 words), `stackguard0`, `stackguard1`,
//!   `_panic`, `_defer`, `m`, `sched gobuf` (7 words: sp pc g ctxt ret lr bp),
//!   `syscallsp`, `syscallpc`, `stktopsp`, `param`, `atomicstatus` (4 bytes),
//!   `stackLock` (4 bytes), then `goid`: 152. Go 1.23 added
//!   `syscallbp uintptr` after `syscallpc`: 160. Go 1.25 removed `ret` from
//!   `gobuf` (6 words): 152 again.
//!   Read from DWARF of binaries built here with Go 1.19, 1.21, 1.22, 1.23,
//!   1.26 and 1.27 for amd64 and arm64 (the integration test
//!   `tests/tests/go_analysis.rs` re-checks this table against DWARF for
//!   every toolchain it finds). Go 1.17, 1.18 and 1.20 were not available
//!   as packages here; their rows come from the `type g struct` field order
//!   in `src/runtime/runtime2.go` of those releases (go1.17.13, a go1.18
//!   tree, go1.20.6), which match 1.19 field for field up to `goid`. Go 1.24
//!   and 1.25 cannot be fetched here either: their rows follow public
//!   goroutine-id code that pins 160 for 1.23–1.24 and 152 from 1.25, which
//!   agrees with the 1.23 and 1.26 trees read here (`gobuf.ret` present in
//!   1.23, absent in 1.26).
//! - `crypto/tls.Conn.conn`: `conn net.Conn` has been the first field of
//!   `tls.Conn` since Go 1.0: 0.
//! - `net.TCPConn` embeds `conn`, whose only field is `fd *netFD`: 0.
//! - `net.netFD.pfd`: `pfd poll.FD` is its first field since Go 1.9: 0.
//! - `internal/poll.FD.Sysfd`: after `fdmu fdMutex` (`state uint64`,
//!   `rsema uint32`, `wsema uint32`: 16 bytes) since Go 1.9: 16.
//!
//! Newer releases than the last row use the last row, and say so
//! (`"assumed from 1.27"`).

use super::version::GoVersion;
use super::{GoArch, GoStructOffsets};

struct Row {
    minor: u32,
    label: &'static str,
    amd64: GoStructOffsets,
    arm64: GoStructOffsets,
}

const fn offsets(g_goid: u64) -> GoStructOffsets {
    GoStructOffsets { g_goid, tls_conn_conn: 0, tcp_conn_fd: 0, netfd_pfd: 0, pfd_sysfd: 16 }
}

const fn row(minor: u32, label: &'static str, g_goid: u64) -> Row {
    Row { minor, label, amd64: offsets(g_goid), arm64: offsets(g_goid) }
}

/// One row per Go 1 minor release, oldest first.
const TABLE: &[Row] = &[
    row(17, "1.17", 152), // from source (go1.17.13 runtime2.go)
    row(18, "1.18", 152), // from source (go1.18 runtime2.go)
    row(19, "1.19", 152), // DWARF-checked here
    row(20, "1.20", 152), // from source (go1.20.6 runtime2.go)
    row(21, "1.21", 152), // DWARF-checked here
    row(22, "1.22", 152), // DWARF-checked here
    row(23, "1.23", 160), // DWARF-checked here; g.syscallbp added
    row(24, "1.24", 160), // not built here: as 1.23
    row(25, "1.25", 152), // not built here: gobuf.ret removed
    row(26, "1.26", 152), // DWARF-checked here
    row(27, "1.27", 152), // DWARF-checked here
];

const NEWER_LABEL: &str = "assumed from 1.27";

/// The first Go release the table covers.
pub const OLDEST: (u32, u32) = (1, 17);

/// Offsets for `version` on `arch`, with a label naming the row used; `None`
/// for releases older than the table.
pub fn lookup(arch: GoArch, version: GoVersion) -> Option<(GoStructOffsets, &'static str)> {
    if version.major != 1 {
        // A Go 2 would break everything this table assumes.
        return None;
    }
    let pick = |row: &Row| match arch {
        GoArch::Amd64 => row.amd64,
        GoArch::Arm64 => row.arm64,
    };
    if let Some(row) = TABLE.iter().find(|r| r.minor == version.minor) {
        return Some((pick(row), row.label));
    }
    let last = TABLE.last()?;
    if version.minor > last.minor {
        return Some((pick(last), NEWER_LABEL));
    }
    None
}

/// Every release the table names (for tests and docs).
pub fn covered() -> impl Iterator<Item = (u32, u32)> {
    TABLE.iter().map(|r| (1, r.minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_1_17_through_1_27_and_assumes_newer() {
        let minors: Vec<u32> = covered().map(|(_, m)| m).collect();
        assert_eq!(minors, (17..=27).collect::<Vec<_>>());
        for arch in [GoArch::Amd64, GoArch::Arm64] {
            let (o, label) = lookup(arch, GoVersion::new(1, 20, 3)).expect("1.20 row");
            assert_eq!((o.g_goid, label), (152, "1.20"));
            let (o, label) = lookup(arch, GoVersion::new(1, 23, 0)).expect("1.23 row");
            assert_eq!((o.g_goid, label), (160, "1.23"));
            let (o, label) = lookup(arch, GoVersion::new(1, 24, 7)).expect("1.24 row");
            assert_eq!((o.g_goid, label), (160, "1.24"));
            let (o, label) = lookup(arch, GoVersion::new(1, 26, 8)).expect("1.26 row");
            assert_eq!((o.g_goid, label), (152, "1.26"));
            let (o, label) = lookup(arch, GoVersion::new(1, 28, 1)).expect("newer");
            assert_eq!((o.g_goid, label), (152, "assumed from 1.27"));
            assert!(lookup(arch, GoVersion::new(1, 16, 15)).is_none());
            assert!(lookup(arch, GoVersion::new(2, 0, 0)).is_none());
        }
    }
}
