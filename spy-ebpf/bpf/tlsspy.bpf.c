// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tlsspy's eBPF programs: plaintext at the TLS library boundary.
 *
 *   uprobe    SSL_write/SSL_read/SSL_write_ex/SSL_read_ex  remember (ssl, buf) per thread
 *   tracepoint syscalls/sys_enter_{read,write,...}          the socket fd of the call in flight
 *   uretprobe SSL_*                                         copy the bytes actually moved
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
		BPF_CORE_READ_INTO(t->local_addr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(t->remote_addr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
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

static __always_inline void emit_call(__u64 pid_tgid, const struct tls_call *call, __u64 moved,
				      __u8 source)
{
	__u32 zero = 0;
	struct tlsspy_data_event *ev = bpf_map_lookup_elem(&scratch, &zero);
	if (!ev)
		return;
	__u32 tgid = pid_tgid >> 32;
	__s32 fd = call->fd;
	struct conn_fd_key key = { .conn_ptr = call->conn_ptr, .tgid = tgid };
	/* A lookup is much cheaper than an update: write only what changed. */
	__s32 *known = bpf_map_lookup_elem(&conn_fds, &key);
	if (fd >= 0) {
		if (!known || *known != fd)
			bpf_map_update_elem(&conn_fds, &key, &fd, BPF_ANY);
	} else if (known) {
		fd = *known;
	} else {
		stat_add(TLSSPY_STAT_NO_FD, 1);
	}

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
		emit_call(pid_tgid, call, moved, TLSSPY_SOURCE_OPENSSL);
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

/* A target closing an fd: forget the socket it named. */
SEC("tracepoint/syscalls/sys_enter_close")
int sys_enter_close(struct trace_event_raw_sys_enter *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!is_target(tgid))
		return 0;
	struct fd_key key = { .tgid = tgid, .fd = (__s32)ctx->args[0] };
	bpf_map_delete_elem(&fd_tuples, &key);
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
	if (tid == tgid && bpf_map_delete_elem(&target_tgids, &tgid) == 0)
		emit_proc(TLSSPY_EVENT_EXIT, tgid, 0);
	else if (tid != tgid)
		bpf_map_delete_elem(&target_tgids, &tid);
	return 0;
}
