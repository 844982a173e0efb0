// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The benchmark's floor: probes that do nothing but count their hits.
 *
 * Attached to exactly the functions and return sites the spy probes, they
 * cost the target the unavoidable part (the trap into the kernel and back)
 * and nothing else, so the spy can be measured against them.
 */
#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} floor_hits SEC(".maps");

/* floor_hits[0]: entry hits, [1]: return hits (a uretprobe's, or a RET
 * instruction's for Go, where the spy never uses uretprobes). */
static __always_inline int count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&floor_hits, &which);
	if (v)
		*v += 1;
	return 0;
}

SEC("uprobe/floor_enter")
int floor_enter(struct pt_regs *ctx)
{
	return count(0);
}

SEC("uretprobe/floor_return")
int floor_return(struct pt_regs *ctx)
{
	return count(1);
}

/* Go: a plain uprobe on a RET instruction of the probed function, as the
 * spy places its own (a uretprobe would crash a Go program that moves its
 * stack). Counted as a return. */
SEC("uprobe/floor_ret_site")
int floor_ret_site(struct pt_regs *ctx)
{
	return count(1);
}
