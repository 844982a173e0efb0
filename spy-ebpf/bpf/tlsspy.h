/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The one header shared by the eBPF programs and user space.
 *
 * It is the source of truth for the event layout: fixed-width fields,
 * explicit padding, no bool. The Rust twins in spy-ebpf/src/lib.rs check
 * their size and every field offset at compile time; change both together.
 */
#ifndef TLSSPY_H
#define TLSSPY_H

/* Plaintext bytes carried by one data event. A TLS call that moved more is
 * split over several events (call_offset tells where each one starts). */
#define TLSSPY_MAX_DATA 16384
/* Events one TLS call may produce: 256 x 16 KiB = 4 MiB per call. Past that
 * the rest of the call is counted in STAT_LOST_BYTES, never silently cut. */
#define TLSSPY_MAX_CHUNKS_PER_CALL 256
#define TLSSPY_COMM_LEN 16
/* Processes the spy may follow at once (targets and their children). */
#define TLSSPY_MAX_TARGETS 65536
/* TLS calls in flight at once (one per thread inside SSL_read/SSL_write). */
#define TLSSPY_MAX_ACTIVE_CALLS 65536
/* Unread ring buffer bytes that wake the reader. Below it, events are
 * written without a wakeup and the reader drains on a short timer: one
 * wakeup per batch instead of one per TLS call. */
#define TLSSPY_WAKEUP_BYTES (128 * 1024)
/* Remembered (tgid, fd) -> socket 4-tuple pairs, dropped on close(). */
#define TLSSPY_MAX_FD_TUPLES 65536
/* Remembered SSL* -> socket fd pairs (reads served from OpenSSL's buffer
 * make no syscall, so the fd must be remembered from an earlier call). */
#define TLSSPY_MAX_CONN_FDS 65536
/* Sockets whose owner is remembered (connects and accepts of targets);
 * least recently used go first. */
#define TLSSPY_MAX_SOCKET_OWNERS 65536
/* Go executables probed at once: one tlsspy_go_config each, keyed by the
 * library id the Go entry probes carry as attach cookie. */
#define TLSSPY_MAX_GO_BINARIES 4096
/* Go crypto/tls calls in flight at once (one per goroutine frame inside
 * (*Conn).Read/Write); LRU, so entries whose return was never seen age out. */
#define TLSSPY_MAX_GO_CALLS 65536
/* Per connection and direction: the next call's sequence number and the
 * bytes moved before it (two entries per live connection); LRU, so a
 * connection whose SSL_free or close was never seen ages out. */
#define TLSSPY_MAX_CALL_SEQS (2 * 65536)

/* Every ring buffer record starts with a __u32 kind. */
enum tlsspy_event_kind {
	TLSSPY_EVENT_DATA = 1, /* struct tlsspy_data_event */
	TLSSPY_EVENT_FORK = 2, /* struct tlsspy_proc_event: a target forked */
	TLSSPY_EVENT_EXEC = 3, /* struct tlsspy_proc_event: a target exec'd */
	TLSSPY_EVENT_EXIT = 4, /* struct tlsspy_proc_event: a target exited */
	TLSSPY_EVENT_CLOSE = 5, /* struct tlsspy_close_event: a connection ended */
};

/* What ended a connection (tlsspy_close_event.why). */
enum tlsspy_close_why {
	TLSSPY_CLOSE_SSL_FREE = 1, /* SSL_free(conn_ptr) */
	TLSSPY_CLOSE_FD = 2,       /* close(fd) of a socket TLS calls used */
};

enum tlsspy_direction {
	TLSSPY_DIR_SEND = 0, /* the target wrote this plaintext */
	TLSSPY_DIR_RECV = 1, /* the target read this plaintext */
};

enum tlsspy_source {
	TLSSPY_SOURCE_OPENSSL = 1, /* SSL_read/SSL_write(_ex): OpenSSL, BoringSSL */
	TLSSPY_SOURCE_GO = 2,      /* crypto/tls.(*Conn).Read/Write */
};

/* Per-CPU counters, index into the `stats` map. */
enum tlsspy_stat {
	TLSSPY_STAT_CALLS = 0,       /* TLS calls that returned data */
	TLSSPY_STAT_EVENTS = 1,      /* data events submitted */
	TLSSPY_STAT_LOST_EVENTS = 2, /* data events the ring buffer had no room for */
	TLSSPY_STAT_LOST_BYTES = 3,  /* plaintext bytes not delivered (lost or over the per-call cap) */
	TLSSPY_STAT_NO_FD = 4,       /* calls whose socket fd could not be found */
	TLSSPY_STAT_PROC_LOST = 5,   /* fork/exec/exit events lost */
	TLSSPY_STAT_ENTRY_HITS = 6,  /* TLS call entries of targets (one breakpoint each) */
	TLSSPY_STAT_RETURN_HITS = 7, /* TLS call returns of targets */
	TLSSPY_STAT_CLOSE_LOST = 8,  /* close events lost (the connection then ages out) */
	TLSSPY_STAT_MAX = 9,
};

/* Values of the target_tgids map. */
#define TLSSPY_TARGET_FOLLOW_CHILDREN 1

struct tlsspy_conn_tuple {
	__u16 family;      /* AF_INET, AF_INET6, or 0 when unknown */
	__u16 local_port;  /* host byte order */
	__u16 remote_port; /* host byte order */
	__u16 _pad;
	__u8 local_addr[16];  /* IPv4 in the first 4 bytes */
	__u8 remote_addr[16];
};

/* Who opened a TCP connection: written when a target's connect() or
 * accept() returns, read by the handshake capture, which sees the packets
 * later and may find the process gone by then. Key: the connection from the
 * owner's side, in its network namespace. */
struct tlsspy_socket_key {
	struct tlsspy_conn_tuple tuple;
	__u32 netns; /* the network namespace's inode number */
	__u32 _pad;
};

struct tlsspy_socket_owner {
	__u32 tgid;
	__u32 _pad;
	__u64 ts_ns;
	char comm[TLSSPY_COMM_LEN];
};

struct tlsspy_data_header {
	__u32 kind; /* TLSSPY_EVENT_DATA */
	__u32 tgid; /* host pid */
	__u32 tid;
	__s32 fd; /* socket fd, -1 when unknown */
	__u64 ts_ns; /* CLOCK_MONOTONIC at the call's return */
	__u64 conn_ptr; /* SSL* or Go *tls.Conn: the connection within tgid */
	__u64 call_len; /* bytes the TLS call moved, in all */
	__u64 call_offset; /* where this event's bytes start within the call */
	__u32 data_len; /* bytes of data[] that are filled */
	__u8 direction; /* enum tlsspy_direction */
	__u8 source; /* enum tlsspy_source */
	__u16 library_id; /* the probed file, from the uprobe's attach cookie (0: unknown) */
	struct tlsspy_conn_tuple tuple;
	char comm[TLSSPY_COMM_LEN];
	/* The call's number in its connection and direction (0, 1, 2, ...):
	 * every call takes one, whether its events fit in the ring buffer or
	 * not, so a jump tells user space that whole calls were lost. */
	__u64 call_seq;
	/* Bytes the connection moved in this direction before this call, lost
	 * ones included: how many bytes a jump lost. */
	__u64 call_start;
};

/* A connection ended: SSL_free of its SSL*, or close() of its socket. */
struct tlsspy_close_event {
	__u32 kind; /* TLSSPY_EVENT_CLOSE */
	__u32 tgid;
	__u64 conn_ptr; /* the SSL* freed, 0 for a close(fd) */
	__s32 fd;       /* the fd closed, -1 for SSL_free */
	__u8 why;       /* enum tlsspy_close_why */
	__u8 _pad[3];
	__u64 ts_ns;
};

/* Per Go executable: byte offsets from a *tls.Conn to its socket fd, from
 * the binary's DWARF or the per-release table (spy-image targets/go). Set
 * by user space before the binary's probes are attached. */
struct tlsspy_go_config {
	__u32 conn_iface;  /* crypto/tls.Conn.conn: a net.Conn interface (itab, data) */
	__u32 tcpconn_fd;  /* net.TCPConn (embedded net.conn).fd: the *net.netFD */
	__u32 netfd_sysfd; /* net.netFD.pfd + internal/poll.FD.Sysfd: the fd, an int */
	__u32 _pad;
};

struct tlsspy_data_event {
	struct tlsspy_data_header hdr;
	__u8 data[TLSSPY_MAX_DATA];
};

struct tlsspy_proc_event {
	__u32 kind; /* TLSSPY_EVENT_FORK, _EXEC or _EXIT */
	__u32 tgid; /* the process the event is about (the child for FORK) */
	__u32 parent_tgid; /* for FORK: the target that forked */
	__u32 _pad;
	__u64 ts_ns;
	char comm[TLSSPY_COMM_LEN];
};

/* The Rust twins (spy-ebpf/src/lib.rs) assert the same sizes and offsets. */
#define TLSSPY_ASSERT_OFFSET(type, field, off) \
	_Static_assert(__builtin_offsetof(struct type, field) == (off), #type "." #field)
_Static_assert(sizeof(struct tlsspy_conn_tuple) == 40, "tlsspy_conn_tuple size");
TLSSPY_ASSERT_OFFSET(tlsspy_conn_tuple, local_addr, 8);
TLSSPY_ASSERT_OFFSET(tlsspy_conn_tuple, remote_addr, 24);
_Static_assert(sizeof(struct tlsspy_socket_key) == 48, "tlsspy_socket_key size");
TLSSPY_ASSERT_OFFSET(tlsspy_socket_key, netns, 40);
_Static_assert(sizeof(struct tlsspy_socket_owner) == 32, "tlsspy_socket_owner size");
TLSSPY_ASSERT_OFFSET(tlsspy_socket_owner, comm, 16);
_Static_assert(sizeof(struct tlsspy_data_header) == 128, "tlsspy_data_header size");
TLSSPY_ASSERT_OFFSET(tlsspy_data_header, ts_ns, 16);
TLSSPY_ASSERT_OFFSET(tlsspy_data_header, conn_ptr, 24);
TLSSPY_ASSERT_OFFSET(tlsspy_data_header, call_len, 32);
TLSSPY_ASSERT_OFFSET(tlsspy_data_header, call_offset, 40);
TLSSPY_ASSERT_OFFSET(tlsspy_data_header, data_len, 48);
TLSSPY_ASSERT_OFFSET(tlsspy_data_header, direction, 52);
TLSSPY_ASSERT_OFFSET(tlsspy_data_header, source, 53);
TLSSPY_ASSERT_OFFSET(tlsspy_data_header, library_id, 54);
TLSSPY_ASSERT_OFFSET(tlsspy_data_header, tuple, 56);
TLSSPY_ASSERT_OFFSET(tlsspy_data_header, comm, 96);
TLSSPY_ASSERT_OFFSET(tlsspy_data_header, call_seq, 112);
TLSSPY_ASSERT_OFFSET(tlsspy_data_header, call_start, 120);
TLSSPY_ASSERT_OFFSET(tlsspy_data_event, data, 128);
_Static_assert(sizeof(struct tlsspy_close_event) == 32, "tlsspy_close_event size");
TLSSPY_ASSERT_OFFSET(tlsspy_close_event, conn_ptr, 8);
TLSSPY_ASSERT_OFFSET(tlsspy_close_event, fd, 16);
TLSSPY_ASSERT_OFFSET(tlsspy_close_event, why, 20);
TLSSPY_ASSERT_OFFSET(tlsspy_close_event, ts_ns, 24);
_Static_assert(sizeof(struct tlsspy_go_config) == 16, "tlsspy_go_config size");
TLSSPY_ASSERT_OFFSET(tlsspy_go_config, tcpconn_fd, 4);
TLSSPY_ASSERT_OFFSET(tlsspy_go_config, netfd_sysfd, 8);
_Static_assert(sizeof(struct tlsspy_proc_event) == 40, "tlsspy_proc_event size");
TLSSPY_ASSERT_OFFSET(tlsspy_proc_event, ts_ns, 16);
TLSSPY_ASSERT_OFFSET(tlsspy_proc_event, comm, 24);

#endif /* TLSSPY_H */
