//! tlsspy's eBPF object and the Rust twins of the events it sends.
//!
//! `bpf/tlsspy.h` is the source of truth for the layout. Every struct here
//! mirrors one there, and the `const` assertions below fail the build if a
//! size or a field offset drifts.
#![no_std]

/// The compiled eBPF object (empty on architectures we do not probe).
pub static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tlsspy.bpf.o"));

/// The benchmark's floor: no-op probes that count their hits
/// (`floor_enter`, `floor_return`, map `floor_hits`).
pub static FLOOR_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/floor.bpf.o"));

/// Plaintext bytes in one data event (`TLSSPY_MAX_DATA`).
pub const MAX_DATA: usize = 16384;
/// Events one TLS call may produce (`TLSSPY_MAX_CHUNKS_PER_CALL`).
pub const MAX_CHUNKS_PER_CALL: usize = 256;
pub const COMM_LEN: usize = 16;

/// `enum tlsspy_event_kind`: the first `u32` of every ring buffer record.
pub mod event_kind {
    pub const DATA: u32 = 1;
    pub const FORK: u32 = 2;
    pub const EXEC: u32 = 3;
    pub const EXIT: u32 = 4;
    pub const CLOSE: u32 = 5;
}

/// `enum tlsspy_close_why`.
pub mod close_why {
    pub const SSL_FREE: u8 = 1;
    pub const FD: u8 = 2;
}

/// `enum tlsspy_direction`.
pub mod direction {
    pub const SEND: u8 = 0;
    pub const RECV: u8 = 1;
}

/// `enum tlsspy_source`.
pub mod source {
    pub const OPENSSL: u8 = 1;
    pub const GO: u8 = 2;
}

/// `enum tlsspy_stat`: indexes of the per-CPU `stats` map.
pub mod stat {
    pub const CALLS: u32 = 0;
    pub const EVENTS: u32 = 1;
    pub const LOST_EVENTS: u32 = 2;
    pub const LOST_BYTES: u32 = 3;
    pub const NO_FD: u32 = 4;
    pub const PROC_LOST: u32 = 5;
    pub const ENTRY_HITS: u32 = 6;
    pub const RETURN_HITS: u32 = 7;
    pub const CLOSE_LOST: u32 = 8;
    pub const MAX: u32 = 9;
}

/// Values of the `target_tgids` map.
pub const TARGET_FOLLOW_CHILDREN: u32 = 1;

/// Map names, as in the C source.
pub mod maps {
    pub const TARGET_TGIDS: &str = "target_tgids";
    pub const EVENTS: &str = "events";
    pub const STATS: &str = "stats";
    pub const GO_CONFIGS: &str = "go_configs";
    pub const SOCKET_OWNERS: &str = "socket_owners";
}

/// Go executables probed at once (`TLSSPY_MAX_GO_BINARIES`).
pub const MAX_GO_BINARIES: u32 = 4096;

/// Program names (the C function names).
pub mod programs {
    pub const SSL_WRITE_ENTER: &str = "ssl_write_enter";
    pub const SSL_READ_ENTER: &str = "ssl_read_enter";
    pub const SSL_WRITE_EX_ENTER: &str = "ssl_write_ex_enter";
    pub const SSL_READ_EX_ENTER: &str = "ssl_read_ex_enter";
    pub const SSL_RETURN: &str = "ssl_return";
    pub const SSL_FREE_ENTER: &str = "ssl_free_enter";
    pub const GO_WRITE_ENTER: &str = "go_write_enter";
    pub const GO_READ_ENTER: &str = "go_read_enter";
    pub const GO_RETURN: &str = "go_return";
    pub const SYS_ENTER_FD_IO: &str = "sys_enter_fd_io";
    pub const SYS_ENTER_CLOSE: &str = "sys_enter_close";
    pub const SYS_ENTER_CONNECT: &str = "sys_enter_connect";
    pub const SYS_EXIT_CONNECT: &str = "sys_exit_connect";
    pub const SYS_EXIT_ACCEPT: &str = "sys_exit_accept";
    pub const SCHED_PROCESS_FORK: &str = "sched_process_fork";
    pub const SCHED_PROCESS_EXEC: &str = "sched_process_exec";
    pub const SCHED_PROCESS_EXIT: &str = "sched_process_exit";
}

/// Global `const volatile` settings, set before load.
pub mod globals {
    pub const SELF_TGID: &str = "self_tgid";
}

/// `struct tlsspy_conn_tuple`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnTuple {
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// `struct tlsspy_data_header`: precedes `data_len` bytes of plaintext.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataHeader {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub ts_ns: u64,
    pub conn_ptr: u64,
    pub call_len: u64,
    pub call_offset: u64,
    pub data_len: u32,
    pub direction: u8,
    pub source: u8,
    /// Which probed file the call was in (the uprobe's attach cookie; 0: unknown).
    pub library_id: u16,
    pub tuple: ConnTuple,
    pub comm: [u8; COMM_LEN],
    /// The call's number in its connection and direction: a jump means
    /// whole calls were lost.
    pub call_seq: u64,
    /// Bytes the connection moved in this direction before this call.
    pub call_start: u64,
}

/// `struct tlsspy_close_event`: a connection ended.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseEvent {
    pub kind: u32,
    pub tgid: u32,
    /// The SSL* freed (0 for a close of an fd).
    pub conn_ptr: u64,
    /// The fd closed (-1 for SSL_free).
    pub fd: i32,
    /// `close_why::*`.
    pub why: u8,
    pub _pad: [u8; 3],
    pub ts_ns: u64,
}

/// `struct tlsspy_go_config`: how to get from a Go `*tls.Conn` to its
/// socket fd in one executable.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoConfig {
    /// `crypto/tls.Conn.conn` (a `net.Conn` interface: itab, then data).
    pub conn_iface: u32,
    /// `net.TCPConn` → `net.conn.fd` (`*net.netFD`).
    pub tcpconn_fd: u32,
    /// `net.netFD.pfd` + `internal/poll.FD.Sysfd`.
    pub netfd_sysfd: u32,
    pub _pad: u32,
}

/// `struct tlsspy_socket_key`: a connection from its owner's side, in the
/// owner's network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SocketKey {
    pub tuple: ConnTuple,
    /// The network namespace's inode number (as `/proc/PID/ns/net` shows it).
    pub netns: u32,
    pub _pad: u32,
}

/// `struct tlsspy_socket_owner`: who connected or accepted it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketOwner {
    pub tgid: u32,
    pub _pad: u32,
    pub ts_ns: u64,
    pub comm: [u8; COMM_LEN],
}

/// `struct tlsspy_proc_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEvent {
    pub kind: u32,
    pub tgid: u32,
    pub parent_tgid: u32,
    pub _pad: u32,
    pub ts_ns: u64,
    pub comm: [u8; COMM_LEN],
}

macro_rules! assert_layout {
    ($ty:ty, size = $size:expr, $($field:ident = $off:expr),* $(,)?) => {
        const _: () = assert!(core::mem::size_of::<$ty>() == $size);
        $(const _: () = assert!(core::mem::offset_of!($ty, $field) == $off);)*
    };
}

// Offsets as clang lays out tlsspy.h for bpf (and every 64-bit target).
assert_layout!(
    ConnTuple,
    size = 40,
    family = 0,
    local_port = 2,
    remote_port = 4,
    _pad = 6,
    local_addr = 8,
    remote_addr = 24
);
assert_layout!(
    DataHeader,
    size = 128,
    kind = 0,
    tgid = 4,
    tid = 8,
    fd = 12,
    ts_ns = 16,
    conn_ptr = 24,
    call_len = 32,
    call_offset = 40,
    data_len = 48,
    direction = 52,
    source = 53,
    library_id = 54,
    tuple = 56,
    comm = 96,
    call_seq = 112,
    call_start = 120
);
assert_layout!(CloseEvent, size = 32, kind = 0, tgid = 4, conn_ptr = 8, fd = 16, why = 20, _pad = 21, ts_ns = 24);
assert_layout!(GoConfig, size = 16, conn_iface = 0, tcpconn_fd = 4, netfd_sysfd = 8, _pad = 12);
assert_layout!(SocketKey, size = 48, tuple = 0, netns = 40, _pad = 44);
assert_layout!(SocketOwner, size = 32, tgid = 0, _pad = 4, ts_ns = 8, comm = 16);
assert_layout!(ProcEvent, size = 40, kind = 0, tgid = 4, parent_tgid = 8, _pad = 12, ts_ns = 16, comm = 24);

#[cfg(test)]
mod tests {
    use super::*;

    /// The objects do not depend on where they were built (the build
    /// directory is mapped away in their debug and BTF line info).
    #[test]
    fn objects_do_not_name_the_build_directory() {
        let dir = env!("CARGO_MANIFEST_DIR").as_bytes();
        for object in [OBJECT, FLOOR_OBJECT] {
            assert!(!object.windows(dir.len()).any(|w| w == dir));
        }
    }
}
