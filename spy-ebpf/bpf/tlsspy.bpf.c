// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tlsspy's eBPF programs: plaintext at the TLS library boundary.
 *
 *   uprobe    SSL_write/SSL_read/SSL_write_ex/SSL_read_ex  remember (ssl, buf) per thread
 *   tracepoint syscalls/sys_enter_{read,write,...}          the socket fd of the call in flight
 *   uretprobe SSL_*                                         copy the bytes actually moved
 *   uprobe    Go crypto/tls.(*Conn).Write entry             copy the bytes to write
 *   uprobe    Go crypto/tls.(*Conn).Read entry              remember (conn, buf, fd) per goroutine frame
 *   uprobe    every RET of those two Go functions           copy the bytes read; end the call
 *   uprobe    SSL_free                                      the connection ended: close event
 *   tracepoint syscalls/sys_enter_close                     a TLS socket closed: close event
 *   tracepoint sched/sched_process_{fork,exec,exit}         follow targets' children
 *
 * Only processes in target_tgids are traced; everything else returns after one
 * hash lookup. No kprobes and no fentry: neither works on every node.
 */
#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "tlsspy.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The spy's own tgid: never traced, even if a target list names it. */
const volatile __u32 self_tgid = 0;

/* A TLS call in flight on one thread, from its entry to its return. */
struct tls_call {
	__u64 conn_ptr; /* SSL* */
	__u64 buf;      /* user buffer the plaintext is in (write) or goes to (read) */
	__u64 moved_ptr; /* size_t* of the _ex variants, 0 for SSL_read/SSL_write */
	__s32 fd;       /* first socket fd the call touched, -1 until seen */
	__u8 direction;
	__u8 _pad;
	__u16 library_id; /* attach cookie: which probed file this call is in */
};

struct conn_fd_key {
	__u64 conn_ptr;
	__u32 tgid;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TLSSPY_MAX_TARGETS);
	__type(key, __u32);   /* tgid */
	__type(value, __u32); /* TLSSPY_TARGET_* flags */
} target_tgids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TLSSPY_MAX_ACTIVE_CALLS);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct tls_call);
} active_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TLSSPY_MAX_CONN_FDS);
	__type(key, struct conn_fd_key);
	__type(value, __s32);
} conn_fds SEC(".maps");

struct fd_key {
	__u32 tgid;
	__s32 fd;
};

/* The socket behind a target's fd: walking task->files->...->sock costs a
 * dozen kernel reads, a lookup here one. Entries go when the target closes
 * the fd (sys_enter_close), so a reused fd number never shows a stale socket. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TLSSPY_MAX_FD_TUPLES);
	__type(key, struct fd_key);
	__type(value, struct tlsspy_conn_tuple);
} fd_tuples SEC(".maps");

/* Size is set by user space at load time (--ring-buffer-size). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} events SEC(".maps");

/* One event under construction per CPU: too large for the 512-byte stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tlsspy_data_event);
} scratch SEC(".maps");

/* Per connection and direction: where its next call goes. */
struct call_seq_key {
	__u64 conn_ptr;
	__u32 tgid;
	__u8 direction;
	__u8 _pad[3];
};

struct call_seq {
	__u64 next;  /* the next call's sequence number */
	__u64 bytes; /* bytes moved by the calls before it */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TLSSPY_MAX_CALL_SEQS);
	__type(key, struct call_seq_key);
	__type(value, struct call_seq);
} call_seqs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TLSSPY_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void stat_add(__u32 which, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &which);
	if (v)
		*v += n;
}

static __always_inline bool is_target(__u32 tgid)
{
	if (tgid == self_tgid)
		return false;
	return bpf_map_lookup_elem(&target_tgids, &tgid) != NULL;
}

/* ---- socket 4-tuple from an fd: task->files->fdt->fd[fd]->private_data ---- */

static __always_inline void fill_tuple(struct tlsspy_conn_tuple *t, __s32 fd)
{
	t->family = 0;
	if (fd < 0)
		return;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt)
		return;
	if ((__u32)fd >= BPF_CORE_READ(fdt, max_fds))
		return;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return;
	/* private_data is a struct socket only for socket files; a socket
	 * points back at its file, nothing else does. */
	if (BPF_CORE_READ(sock, file) != file)
		return;
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family == AF_INET) {
		__be32 local = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__be32 remote = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(t->local_addr, &local, 4);
		__builtin_memcpy(t->remote_addr, &remote, 4);
	} else if (family == AF_INET6) {
		/* Explicit sizes: BPF_CORE_READ_INTO copies sizeof(*dst), which
		 * for these arrays is one byte (every IPv6 and v4-mapped address
		 * came out as its first byte and fifteen zeros). */
		bpf_core_read(t->local_addr, sizeof(t->local_addr), &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(t->remote_addr, sizeof(t->remote_addr), &sk->__sk_common.skc_v6_daddr);
	} else {
		return;
	}
	t->family = family;
	t->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	t->remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

static __always_inline void tuple_of(struct tlsspy_conn_tuple *t, __u32 tgid, __s32 fd)
{
	t->family = 0;
	if (fd < 0)
		return;
	struct fd_key key = { .tgid = tgid, .fd = fd };
	struct tlsspy_conn_tuple *known = bpf_map_lookup_elem(&fd_tuples, &key);
	if (known) {
		*t = *known;
		return;
	}
	fill_tuple(t, fd);
	if (t->family)
		bpf_map_update_elem(&fd_tuples, &key, t, BPF_ANY);
}

/* Wake the reader only once a batch is waiting (see TLSSPY_WAKEUP_BYTES). */
static __always_inline __u64 wakeup_flags(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= TLSSPY_WAKEUP_BYTES ? BPF_RB_FORCE_WAKEUP
										      : BPF_RB_NO_WAKEUP;
}

/* ---- copying the plaintext out, split into events ---- */

struct emit_ctx {
	struct tlsspy_data_event *ev;
	__u64 buf;
	__u64 total;
};

static long emit_one_chunk(__u32 index, void *data)
{
	struct emit_ctx *ctx = data;
	__u64 offset = (__u64)index * TLSSPY_MAX_DATA;
	if (offset >= ctx->total)
		return 1; /* done */
	__u64 remaining = ctx->total - offset;
	__u32 len = remaining > TLSSPY_MAX_DATA ? TLSSPY_MAX_DATA : (__u32)remaining;
	/* The verifier must see the bound on the register the helper gets. */
	barrier_var(len);
	if (len > TLSSPY_MAX_DATA)
		return 1;
	struct tlsspy_data_event *ev = ctx->ev;
	ev->hdr.call_offset = offset;
	ev->hdr.data_len = len;
	if (len == TLSSPY_MAX_DATA) {
		/* A full chunk fills a whole event: reserve it in the ring and read
		 * the user memory straight into it, one copy instead of two. */
		struct tlsspy_data_event *slot = bpf_ringbuf_reserve(&events, sizeof(*slot), 0);
		if (!slot) {
			stat_add(TLSSPY_STAT_LOST_EVENTS, 1);
			stat_add(TLSSPY_STAT_LOST_BYTES, len);
			return 0;
		}
		slot->hdr = ev->hdr;
		if (bpf_probe_read_user(slot->data, TLSSPY_MAX_DATA, (void *)(ctx->buf + offset))) {
			bpf_ringbuf_discard(slot, BPF_RB_NO_WAKEUP);
			stat_add(TLSSPY_STAT_LOST_BYTES, len);
			return 0;
		}
		bpf_ringbuf_submit(slot, wakeup_flags());
		stat_add(TLSSPY_STAT_EVENTS, 1);
		return 0;
	}
	if (bpf_probe_read_user(ev->data, len, (void *)(ctx->buf + offset))) {
		/* Unreadable user memory (paged out): report the hole, go on. */
		stat_add(TLSSPY_STAT_LOST_BYTES, len);
		return 0;
	}
	if (bpf_ringbuf_output(&events, ev, sizeof(ev->hdr) + len, wakeup_flags())) {
		stat_add(TLSSPY_STAT_LOST_EVENTS, 1);
		stat_add(TLSSPY_STAT_LOST_BYTES, len);
	} else {
		stat_add(TLSSPY_STAT_EVENTS, 1);
	}
	return 0;
}

/* Numbers the call in its connection and direction, before any of its
 * events is reserved: a call whose events all find the ring buffer full
 * still takes its number and its bytes, so user space sees the jump where
 * it happened. Not atomic: one connection's calls in one direction do not
 * run at once (an SSL* is not shared between threads mid-call, and Go's
 * tls.Conn serialises writes and reads per direction). */
static __always_inline void number_call(struct tlsspy_data_header *hdr, __u32 tgid, __u64 conn_ptr,
					__u8 direction, __u64 moved)
{
	struct call_seq_key key;
	__builtin_memset(&key, 0, sizeof(key));
	key.conn_ptr = conn_ptr;
	key.tgid = tgid;
	key.direction = direction;
	struct call_seq *seq = bpf_map_lookup_elem(&call_seqs, &key);
	if (seq) {
		hdr->call_seq = seq->next;
		hdr->call_start = seq->bytes;
		seq->next += 1;
		seq->bytes += moved;
		return;
	}
	/* The connection's first call since the spy started (or since its
	 * entry aged out): numbering starts here. */
	hdr->call_seq = 0;
	hdr->call_start = 0;
	struct call_seq first = { .next = 1, .bytes = moved };
	bpf_map_update_elem(&call_seqs, &key, &first, BPF_ANY);
}

/* Forgets a connection's numbering; true when it had any (it moved data). */
static __always_inline bool forget_call_seqs(__u32 tgid, __u64 conn_ptr)
{
	struct call_seq_key key;
	__builtin_memset(&key, 0, sizeof(key));
	key.conn_ptr = conn_ptr;
	key.tgid = tgid;
	key.direction = TLSSPY_DIR_SEND;
	bool known = bpf_map_delete_elem(&call_seqs, &key) == 0;
	key.direction = TLSSPY_DIR_RECV;
	known = (bpf_map_delete_elem(&call_seqs, &key) == 0) || known;
	return known;
}

/* The socket fd of an OpenSSL call: the one its syscalls touched, else the
 * one this SSL* used before (a read served from OpenSSL's buffer makes no
 * syscall). */
static __always_inline __s32 openssl_call_fd(__u32 tgid, const struct tls_call *call)
{
	struct conn_fd_key key = { .conn_ptr = call->conn_ptr, .tgid = tgid };
	/* A lookup is much cheaper than an update: write only what changed. */
	__s32 *known = bpf_map_lookup_elem(&conn_fds, &key);
	if (call->fd >= 0) {
		if (!known || *known != call->fd)
			bpf_map_update_elem(&conn_fds, &key, &call->fd, BPF_ANY);
		return call->fd;
	}
	return known ? *known : -1;
}

/* Sends the `moved` bytes at call->buf as data events; fd is the call's
 * socket (-1: unknown). */
static __always_inline void emit_call(__u64 pid_tgid, const struct tls_call *call, __s32 fd,
				      __u64 moved, __u8 source)
{
	__u32 zero = 0;
	struct tlsspy_data_event *ev = bpf_map_lookup_elem(&scratch, &zero);
	if (!ev)
		return;
	__u32 tgid = pid_tgid >> 32;
	if (fd < 0)
		stat_add(TLSSPY_STAT_NO_FD, 1);

	ev->hdr.kind = TLSSPY_EVENT_DATA;
	ev->hdr.tgid = tgid;
	ev->hdr.tid = (__u32)pid_tgid;
	ev->hdr.fd = fd;
	ev->hdr.ts_ns = bpf_ktime_get_ns();
	ev->hdr.conn_ptr = call->conn_ptr;
	ev->hdr.call_len = moved;
	ev->hdr.direction = call->direction;
	ev->hdr.source = source;
	ev->hdr.library_id = call->library_id;
	tuple_of(&ev->hdr.tuple, tgid, fd);
	bpf_get_current_comm(ev->hdr.comm, sizeof(ev->hdr.comm));
	number_call(&ev->hdr, tgid, call->conn_ptr, call->direction, moved);
	stat_add(TLSSPY_STAT_CALLS, 1);

	struct emit_ctx ctx = { .ev = ev, .buf = call->buf, .total = moved };
	bpf_loop(TLSSPY_MAX_CHUNKS_PER_CALL, emit_one_chunk, &ctx, 0);
	__u64 cap = (__u64)TLSSPY_MAX_CHUNKS_PER_CALL * TLSSPY_MAX_DATA;
	if (moved > cap)
		stat_add(TLSSPY_STAT_LOST_BYTES, moved - cap);
}

/* ---- OpenSSL / BoringSSL ---- */

static __always_inline int tls_call_enter(void *ctx, __u64 conn_ptr, __u64 buf, __u64 moved_ptr,
					  __u8 direction)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid >> 32))
		return 0;
	stat_add(TLSSPY_STAT_ENTRY_HITS, 1);
	struct tls_call call = {
		.conn_ptr = conn_ptr,
		.buf = buf,
		.moved_ptr = moved_ptr,
		.fd = -1,
		.direction = direction,
		.library_id = (__u16)bpf_get_attach_cookie(ctx),
	};
	/* BPF_NOEXIST keeps the outermost call if a library ever nests them. */
	bpf_map_update_elem(&active_calls, &pid_tgid, &call, BPF_NOEXIST);
	return 0;
}

/* ret is SSL_read/SSL_write's int result, or 1/0 from the _ex variants,
 * whose byte count is in *moved_ptr. It must be read as a 32-bit int: the
 * upper half of the return register is undefined for an int return, and a
 * -1 read as long looks like 4 GiB moved. */
static __always_inline int tls_call_return(int ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct tls_call *call = bpf_map_lookup_elem(&active_calls, &pid_tgid);
	if (!call)
		return 0;
	stat_add(TLSSPY_STAT_RETURN_HITS, 1);
	__u64 moved = 0;
	if (call->moved_ptr) {
		if (ret == 1)
			bpf_probe_read_user(&moved, sizeof(moved), (void *)call->moved_ptr);
	} else if (ret > 0) {
		moved = (__u64)ret;
	}
	if (moved > 0)
		emit_call(pid_tgid, call, openssl_call_fd(pid_tgid >> 32, call), moved,
			  TLSSPY_SOURCE_OPENSSL);
	else if (call->fd >= 0) {
		/* A call that moved nothing (WANT_READ) still names the fd. */
		struct conn_fd_key key = { .conn_ptr = call->conn_ptr, .tgid = pid_tgid >> 32 };
		bpf_map_update_elem(&conn_fds, &key, &call->fd, BPF_ANY);
	}
	bpf_map_delete_elem(&active_calls, &pid_tgid);
	return 0;
}

SEC("uprobe/SSL_write")
int BPF_KPROBE(ssl_write_enter, void *ssl, const void *buf, int num)
{
	return tls_call_enter(ctx, (__u64)ssl, (__u64)buf, 0, TLSSPY_DIR_SEND);
}

SEC("uprobe/SSL_read")
int BPF_KPROBE(ssl_read_enter, void *ssl, void *buf, int num)
{
	return tls_call_enter(ctx, (__u64)ssl, (__u64)buf, 0, TLSSPY_DIR_RECV);
}

SEC("uprobe/SSL_write_ex")
int BPF_KPROBE(ssl_write_ex_enter, void *ssl, const void *buf, __u64 num, __u64 *written)
{
	return tls_call_enter(ctx, (__u64)ssl, (__u64)buf, (__u64)written, TLSSPY_DIR_SEND);
}

SEC("uprobe/SSL_read_ex")
int BPF_KPROBE(ssl_read_ex_enter, void *ssl, void *buf, __u64 num, __u64 *readbytes)
{
	return tls_call_enter(ctx, (__u64)ssl, (__u64)buf, (__u64)readbytes, TLSSPY_DIR_RECV);
}

/* One return program serves all four functions: the call record already says
 * which variant and direction it was. */
SEC("uretprobe/SSL_return")
int BPF_KRETPROBE(ssl_return, int ret)
{
	return tls_call_return(ret);
}

/* ---- Go crypto/tls ----
 *
 * Probes sit on the entry of crypto/tls.(*Conn).Read and Write and on every
 * RET instruction in them, never a uretprobe: the Go runtime copies
 * goroutine stacks to grow or shrink them, and a return address rewritten
 * by a uretprobe would then point nowhere.
 *
 * Register ABI (ABIInternal: amd64 from Go 1.17, arm64 from 1.18), for
 * (c *Conn) Write/Read(b []byte) (n int, err error):
 *   entry: c in RAX/R0, b.ptr in RBX/R1, b.len in RCX/R2
 *   RET:   n in RAX/R0
 *   always: the current g in R14/R28
 * Older binaries (ABI0) are refused in user space, never guessed at.
 *
 * An entry is matched to its return by goroutine frame: (tgid, g,
 * g.stack.hi - SP). SP at a RET equals SP at the entry (the frame is gone
 * again), and when the runtime copies the stack both SP and stack.hi move by
 * the same amount, so the distance stays. It also tells apart nested calls
 * on one goroutine (TLS inside TLS: a tls.Conn whose conn is a tls.Conn).
 * The stack-bound check at the function's own prologue re-runs the entry
 * after growing the stack or after a preemption request: same key, so the
 * second entry replaces the first, or, for a Write, is known as a re-run.
 *
 * A Write's bytes are sent at its entry, a Read's at its RET. Go's HTTP/1
 * client writes a request on one goroutine and reads the answer on another,
 * so a Write's RET can come after the Read that returns the response; sent
 * at the entry, what the target writes always comes before anything the
 * peer says in reply, and parsers see each connection in causal order.
 * The price: a Write that fails part-way (n < len: the connection broke) is
 * reported whole. The RET probes of Write only end the call record.
 */

#if defined(__TARGET_ARCH_x86)
#define GO_ARG_CONN(r) ((r)->ax)
#define GO_ARG_BUF(r) ((r)->bx)
#define GO_ARG_LEN(r) ((r)->cx)
#define GO_RESULT_N(r) ((r)->ax)
#define GO_G(r) ((r)->r14)
#define GO_SP(r) ((r)->sp)
#elif defined(__TARGET_ARCH_arm64)
#define GO_ARG_CONN(r) ((r)->regs[0])
#define GO_ARG_BUF(r) ((r)->regs[1])
#define GO_ARG_LEN(r) ((r)->regs[2])
#define GO_RESULT_N(r) ((r)->regs[0])
#define GO_G(r) ((r)->regs[28])
#define GO_SP(r) ((r)->sp)
#endif

/* runtime.g starts with `stack stack` ({lo, hi uintptr}) in every Go
 * release: the stack-bound check every function begins with reads
 * g.stackguard0 right after it, at g+16. */
struct go_stack {
	__u64 lo;
	__u64 hi;
};

struct go_call_key {
	__u64 g;     /* the goroutine's runtime.g */
	__u64 depth; /* g.stack.hi - SP at entry and at RET */
	__u32 tgid;
	__u32 _pad;
};

struct go_call {
	__u64 conn_ptr; /* *tls.Conn */
	__u64 buf;      /* b.ptr, or stack.hi - b.ptr when buf_on_stack */
	__u64 len;      /* b.len: n is never more */
	__s32 fd;       /* from conn at entry, -1 if the walk failed */
	__u8 direction;
	__u8 buf_on_stack; /* b lives on the goroutine stack, which may move */
	__u16 library_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TLSSPY_MAX_GO_BINARIES);
	__type(key, __u32); /* library id: the entry probes' attach cookie */
	__type(value, struct tlsspy_go_config);
} go_configs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TLSSPY_MAX_GO_CALLS);
	__type(key, struct go_call_key);
	__type(value, struct go_call);
} go_calls SEC(".maps");

/* The goroutine frame's key, or false when g or SP make no sense (not a
 * goroutine stack: then this is no Go call we understand). */
static __always_inline bool go_frame(struct pt_regs *ctx, __u32 tgid, struct go_call_key *key,
				     struct go_stack *stack)
{
	__u64 g = GO_G(ctx);
	__u64 sp = GO_SP(ctx);
	if (!g || bpf_probe_read_user(stack, sizeof(*stack), (void *)g))
		return false;
	if (sp < stack->lo || sp >= stack->hi)
		return false;
	key->g = g;
	key->depth = stack->hi - sp;
	key->tgid = tgid;
	key->_pad = 0;
	return true;
}

/* tls.Conn.conn (interface: the data word is the *net.TCPConn) -> .fd
 * (*netFD) -> .pfd.Sysfd. A conn that is no net.TCPConn/UnixConn may yield
 * a number that is no socket of this process; fill_tuple then finds none. */
static __always_inline __s32 go_conn_fd(const struct tlsspy_go_config *cfg, __u64 conn)
{
	__u64 tcp_conn = 0, netfd = 0;
	__s64 sysfd = -1;
	if (bpf_probe_read_user(&tcp_conn, sizeof(tcp_conn), (void *)(conn + cfg->conn_iface + 8)) ||
	    !tcp_conn)
		return -1;
	if (bpf_probe_read_user(&netfd, sizeof(netfd), (void *)(tcp_conn + cfg->tcpconn_fd)) || !netfd)
		return -1;
	if (bpf_probe_read_user(&sysfd, sizeof(sysfd), (void *)(netfd + cfg->netfd_sysfd)))
		return -1;
	if (sysfd < 0 || sysfd > 0x7fffffff)
		return -1;
	return (__s32)sysfd;
}

static __always_inline int go_call_enter(struct pt_regs *ctx, __u8 direction)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	if (!is_target(tgid))
		return 0;
	stat_add(TLSSPY_STAT_ENTRY_HITS, 1);
	__u32 id = (__u32)bpf_get_attach_cookie(ctx);
	const struct tlsspy_go_config *cfg = bpf_map_lookup_elem(&go_configs, &id);
	if (!cfg)
		return 0;
	struct go_call_key key;
	struct go_stack stack;
	if (!go_frame(ctx, tgid, &key, &stack))
		return 0;
	__u64 conn = GO_ARG_CONN(ctx);
	__u64 buf = GO_ARG_BUF(ctx);
	struct go_call call = {
		.conn_ptr = conn,
		.buf = buf,
		.len = GO_ARG_LEN(ctx),
		.fd = go_conn_fd(cfg, conn),
		.direction = direction,
		.library_id = (__u16)id,
	};
	/* A buffer on the goroutine stack moves with it: keep its distance
	 * from stack.hi, as for the key. */
	if (buf >= stack.lo && buf < stack.hi) {
		call.buf = stack.hi - buf;
		call.buf_on_stack = 1;
	}
	if (direction == TLSSPY_DIR_SEND) {
		/* The same call again: its prologue re-ran the entry. Sent already. */
		struct go_call *known = bpf_map_lookup_elem(&go_calls, &key);
		if (known && known->direction == TLSSPY_DIR_SEND && known->conn_ptr == conn &&
		    known->buf == call.buf && known->len == call.len)
			return 0;
	}
	bpf_map_update_elem(&go_calls, &key, &call, BPF_ANY);
	if (direction == TLSSPY_DIR_SEND && call.len > 0) {
		struct tls_call out = {
			.conn_ptr = conn,
			.buf = buf,
			.fd = call.fd,
			.direction = direction,
			.library_id = call.library_id,
		};
		emit_call(pid_tgid, &out, call.fd, call.len, TLSSPY_SOURCE_GO);
	}
	return 0;
}

SEC("uprobe/go_tls_conn_write")
int go_write_enter(struct pt_regs *ctx)
{
	return go_call_enter(ctx, TLSSPY_DIR_SEND);
}

SEC("uprobe/go_tls_conn_read")
int go_read_enter(struct pt_regs *ctx)
{
	return go_call_enter(ctx, TLSSPY_DIR_RECV);
}

/* On every RET of both functions: the call record says which it was. */
SEC("uprobe/go_tls_conn_ret")
int go_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct go_call_key key;
	struct go_stack stack;
	if (!go_frame(ctx, pid_tgid >> 32, &key, &stack))
		return 0;
	struct go_call *found = bpf_map_lookup_elem(&go_calls, &key);
	if (!found)
		return 0;
	struct go_call call = *found;
	bpf_map_delete_elem(&go_calls, &key);
	stat_add(TLSSPY_STAT_RETURN_HITS, 1);
	__s64 n = (__s64)GO_RESULT_N(ctx);
	if (call.direction == TLSSPY_DIR_SEND || n <= 0)
		return 0; /* a Write was sent at its entry */
	__u64 moved = (__u64)n > call.len ? call.len : (__u64)n;
	struct tls_call out = {
		.conn_ptr = call.conn_ptr,
		.buf = call.buf_on_stack ? stack.hi - call.buf : call.buf,
		.fd = call.fd,
		.direction = call.direction,
		.library_id = call.library_id,
	};
	emit_call(pid_tgid, &out, call.fd, moved, TLSSPY_SOURCE_GO);
	return 0;
}

/* ---- connections that end ---- */

static __always_inline void emit_close(__u32 tgid, __u64 conn_ptr, __s32 fd, __u8 why)
{
	struct tlsspy_close_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		stat_add(TLSSPY_STAT_CLOSE_LOST, 1);
		return;
	}
	ev->kind = TLSSPY_EVENT_CLOSE;
	ev->tgid = tgid;
	ev->conn_ptr = conn_ptr;
	ev->fd = fd;
	ev->why = why;
	__builtin_memset(ev->_pad, 0, sizeof(ev->_pad));
	ev->ts_ns = bpf_ktime_get_ns();
	bpf_ringbuf_submit(ev, wakeup_flags());
}

/* SSL_free(ssl): the connection object goes, and with it what user space
 * holds for it. Only an SSL* that moved data is reported (a handshake
 * that failed, a probe connection: nothing to forget). */
SEC("uprobe/SSL_free")
int BPF_KPROBE(ssl_free_enter, void *ssl)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!is_target(tgid))
		return 0;
	struct conn_fd_key key = { .conn_ptr = (__u64)ssl, .tgid = tgid };
	bpf_map_delete_elem(&conn_fds, &key);
	if (forget_call_seqs(tgid, (__u64)ssl))
		emit_close(tgid, (__u64)ssl, -1, TLSSPY_CLOSE_SSL_FREE);
	return 0;
}

/* ---- the socket fd of the call in flight ---- */

/* Attached to sys_enter_{read,write,readv,writev,recvfrom,sendto,recvmsg,sendmsg}:
 * the first argument of each is the fd. */
SEC("tracepoint/syscalls/sys_enter_fd_io")
int sys_enter_fd_io(struct trace_event_raw_sys_enter *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct tls_call *call = bpf_map_lookup_elem(&active_calls, &pid_tgid);
	if (call && call->fd < 0)
		call->fd = (__s32)ctx->args[0];
	return 0;
}

/* A target closing an fd: forget the socket it named. Only a socket that
 * TLS calls used has an fd_tuples entry, so only those closes are reported
 * (Go's crypto/tls has no SSL_free: its connections end here). */
SEC("tracepoint/syscalls/sys_enter_close")
int sys_enter_close(struct trace_event_raw_sys_enter *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!is_target(tgid))
		return 0;
	struct fd_key key = { .tgid = tgid, .fd = (__s32)ctx->args[0] };
	if (bpf_map_delete_elem(&fd_tuples, &key) == 0)
		emit_close(tgid, 0, key.fd, TLSSPY_CLOSE_FD);
	return 0;
}

/* ---- who owns a connection: remembered at connect() and accept() ---- */

/* The fd of a target's connect() in flight, by thread. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TLSSPY_MAX_ACTIVE_CALLS);
	__type(key, __u64); /* pid_tgid */
	__type(value, __s32);
} connecting SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TLSSPY_MAX_SOCKET_OWNERS);
	__type(key, struct tlsspy_socket_key);
	__type(value, struct tlsspy_socket_owner);
} socket_owners SEC(".maps");

static __always_inline __u32 netns_of_fd(__s32 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd < 0 || (__u32)fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return 0;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return 0;
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 0;
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline void remember_owner(__u32 tgid, __s32 fd)
{
	struct tlsspy_socket_key key;
	__builtin_memset(&key, 0, sizeof(key));
	fill_tuple(&key.tuple, fd);
	/* Not a socket, not connected yet (no ports), or not IP: nothing to name. */
	if (!key.tuple.family || !key.tuple.local_port || !key.tuple.remote_port)
		return;
	key.netns = netns_of_fd(fd);
	struct tlsspy_socket_owner owner;
	__builtin_memset(&owner, 0, sizeof(owner));
	owner.tgid = tgid;
	owner.ts_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(owner.comm, sizeof(owner.comm));
	bpf_map_update_elem(&socket_owners, &key, &owner, BPF_ANY);
}

SEC("tracepoint/syscalls/sys_enter_connect")
int sys_enter_connect(struct trace_event_raw_sys_enter *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid >> 32))
		return 0;
	__s32 fd = (__s32)ctx->args[0];
	bpf_map_update_elem(&connecting, &pid_tgid, &fd, BPF_ANY);
	return 0;
}

#define TLSSPY_EINPROGRESS 115

SEC("tracepoint/syscalls/sys_exit_connect")
int sys_exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__s32 *fd = bpf_map_lookup_elem(&connecting, &pid_tgid);
	if (!fd)
		return 0;
	__s32 connected = *fd;
	bpf_map_delete_elem(&connecting, &pid_tgid);
	/* A non-blocking connect has its ports once it returns EINPROGRESS. */
	if (ctx->ret == 0 || ctx->ret == -TLSSPY_EINPROGRESS)
		remember_owner(pid_tgid >> 32, connected);
	return 0;
}

/* Attached to sys_exit_accept and sys_exit_accept4: the result is the new fd. */
SEC("tracepoint/syscalls/sys_exit_accept")
int sys_exit_accept(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (ctx->ret < 0 || !is_target(tgid))
		return 0;
	remember_owner(tgid, (__s32)ctx->ret);
	return 0;
}

/* ---- following targets' processes ---- */

static __always_inline void emit_proc(__u32 kind, __u32 tgid, __u32 parent)
{
	struct tlsspy_proc_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		stat_add(TLSSPY_STAT_PROC_LOST, 1);
		return;
	}
	ev->kind = kind;
	ev->tgid = tgid;
	ev->parent_tgid = parent;
	ev->_pad = 0;
	ev->ts_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	bpf_ringbuf_submit(ev, 0);
}

SEC("tracepoint/sched/sched_process_fork")
int sched_process_fork(struct trace_event_raw_sched_process_fork *ctx)
{
	__u32 parent = bpf_get_current_pid_tgid() >> 32;
	__u32 *flags = bpf_map_lookup_elem(&target_tgids, &parent);
	if (!flags || !(*flags & TLSSPY_TARGET_FOLLOW_CHILDREN))
		return 0;
	__u32 child = BPF_CORE_READ(ctx, child_pid);
	if (child == parent)
		return 0;
	/* A new thread also lands here with its thread id; it is removed again
	 * when that thread exits (sched_process_exit deletes by thread id). */
	__u32 child_flags = *flags;
	bpf_map_update_elem(&target_tgids, &child, &child_flags, BPF_NOEXIST);
	emit_proc(TLSSPY_EVENT_FORK, child, parent);
	return 0;
}

SEC("tracepoint/sched/sched_process_exec")
int sched_process_exec(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (is_target(tgid))
		emit_proc(TLSSPY_EVENT_EXEC, tgid, 0);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int sched_process_exit(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	__u32 tgid = pid_tgid >> 32;
	bpf_map_delete_elem(&active_calls, &pid_tgid);
	bpf_map_delete_elem(&connecting, &pid_tgid);
	if (tid == tgid && bpf_map_delete_elem(&target_tgids, &tgid) == 0)
		emit_proc(TLSSPY_EVENT_EXIT, tgid, 0);
	else if (tid != tgid)
		bpf_map_delete_elem(&target_tgids, &tid);
	return 0;
}
