// SPDX-License-Identifier: GPL-2.0
/* BPF side of the C map-in-map suite: one program per test, each using only its own
 * outer/inner maps, so that user space can load exactly one of them per test (the
 * others are switched off with autoload/autocreate). Built with CO-RE against the
 * vmlinux.h of the kernel under test; no arch-specific registers are used. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "map_in_map_shared.h"

char LICENSE[] SEC("license") = "GPL"; /* timers, kptrs, copy_from_user are GPL-only */

#define CLOCK_MONOTONIC 1 /* uapi value: vmlinux.h carries no #defines */

/* ---- b7ff97925b: bpf_spin_lock inside an inner map's value --------------------- */
struct lock_val {
	struct bpf_spin_lock lock;
	__u32 counter;
};

struct lock_inner_def {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lock_val);
} lock_inner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct lock_inner_def);
} lock_outer SEC(".maps") = {
	.values = { &lock_inner },
};

/* tc, not socket filter or kprobe: those program types may not take spin locks. */
SEC("tc")
int spin_lock_inner(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct lock_val *v;
	void *inner;

	inner = bpf_map_lookup_elem(&lock_outer, &zero);
	if (!inner)
		return PROG_NO_INNER;
	v = bpf_map_lookup_elem(inner, &zero);
	if (!v)
		return PROG_NO_VALUE;
	bpf_spin_lock(&v->lock);
	v->counter++;
	bpf_spin_unlock(&v->lock);
	return PROG_OK;
}

/* ---- 40ec00abf1 / 68134668c1: bpf_timer inside an inner map's value ------------ */
struct timer_val {
	struct bpf_timer timer;
	__u64 started;
};

struct timer_inner_def {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct timer_val);
} timer_inner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct timer_inner_def);
} timer_outer SEC(".maps") = {
	.values = { &timer_inner },
};

__u64 timer_fired = 0;

static int timer_cb(void *map, __u32 *key, struct timer_val *val)
{
	__sync_fetch_and_add(&timer_fired, 1);
	return 0;
}

SEC("tc")
int timer_inner_prog(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct timer_val *v;
	void *inner;

	inner = bpf_map_lookup_elem(&timer_outer, &zero);
	if (!inner)
		return PROG_NO_INNER;
	v = bpf_map_lookup_elem(inner, &zero);
	if (!v)
		return PROG_NO_VALUE;
	/* The verifier needs the inner map's BTF here (40ec00abf1) to see the timer. */
	if (bpf_timer_init(&v->timer, inner, CLOCK_MONOTONIC))
		return PROG_HELPER_FAILED;
	if (bpf_timer_set_callback(&v->timer, timer_cb))
		return PROG_HELPER_FAILED;
	if (bpf_timer_start(&v->timer, 1000 /* ns */, 0))
		return PROG_HELPER_FAILED;
	v->started = 1;
	return PROG_OK;
}

/* ---- 61df10c779: an unreferenced kptr stored into an inner map's value ---------
 * The tag that marks an unreferenced kptr is "kptr" up to 6.2 and "kptr_untrusted"
 * from 6.3 (where "kptr" came to mean a referenced one, which a plain store may not
 * fill). Both spellings are built; user space loads the one the release calls for. */
#define KPTR_VARIANT(tag, sfx)                                                       \
	struct kptr_val_##sfx {                                                          \
		struct task_struct __attribute__((btf_type_tag(tag))) *task;               \
	};                                                                               \
	struct kptr_inner_def_##sfx {                                                    \
		__uint(type, BPF_MAP_TYPE_ARRAY);                                        \
		__uint(max_entries, 1);                                                  \
		__type(key, __u32);                                                      \
		__type(value, struct kptr_val_##sfx);                                    \
	} kptr_inner_##sfx SEC(".maps");                                                 \
	struct {                                                                         \
		__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);                                \
		__uint(max_entries, 1);                                                  \
		__type(key, __u32);                                                      \
		__array(values, struct kptr_inner_def_##sfx);                            \
	} kptr_outer_##sfx SEC(".maps") = { .values = { &kptr_inner_##sfx } };           \
	SEC("syscall")                                                                   \
	int kptr_inner_##sfx##_prog(void *ctx)                                          \
	{                                                                                \
		__u32 zero = 0;                                                          \
		struct kptr_val_##sfx *v;                                                \
		struct task_struct *t;                                                   \
		void *inner;                                                             \
		inner = bpf_map_lookup_elem(&kptr_outer_##sfx, &zero);                   \
		if (!inner)                                                              \
			return PROG_NO_INNER;                                            \
		v = bpf_map_lookup_elem(inner, &zero);                                   \
		if (!v)                                                                  \
			return PROG_NO_VALUE;                                            \
		v->task = bpf_get_current_task_btf();                                    \
		t = v->task; /* read back through the kptr the verifier now knows */    \
		if (!t)                                                                  \
			return PROG_HELPER_FAILED;                                       \
		kptr_pid = t->pid;                                                       \
		return PROG_OK;                                                          \
	}

__s32 kptr_pid = 0;
KPTR_VARIANT("kptr", old_tag)
KPTR_VARIANT("kptr_untrusted", new_tag)

/* ---- 8766733641: a sleepable program still using an inner map being freed -------
 * The program looks up outer[0], then sleeps in bpf_copy_from_user on a page that
 * user space holds back with userfaultfd, then writes into the inner map. Meanwhile
 * user space replaces outer[0]: without the deferred free the inner map is gone by
 * the time the write happens (KASAN: use-after-free in array_map_update_elem). */
struct uaf_inner_def {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct uaf_inner_def);
} uaf_outer SEC(".maps");

SEC("syscall")
int uaf_sleepable(struct uaf_args *args)
{
	__u32 zero = 0, val = 0;
	void *inner;

	inner = bpf_map_lookup_elem(&uaf_outer, &zero);
	if (!inner)
		return PROG_NO_INNER;
	if (bpf_copy_from_user(&val, sizeof(val), (void *)args->uaddr))
		return PROG_HELPER_FAILED;
	/* Only this write touches the inner map after the sleep: it is the access that
	 * KASAN catches when the map was freed under us. */
	bpf_map_update_elem(inner, &zero, &val, 0);
	return PROG_OK;
}

/* ---- 8766733641 again, the upstream selftest's way: a race ----------------------
 * A thread calls getpgid() while another replaces outer[0], barrier-synchronised; the
 * program on getpgid looks up the old inner map and writes into it 2048 times. The
 * kprobe runs under RCU (the grace period the fix waits for); the sleepable fentry
 * under RCU tasks trace (the second one). fentry needs ftrace direct calls, which
 * arm64 gained only in 6.4: user space skips the fentry test on older arm64. */
struct race_inner_def {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} race_inner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct race_inner_def);
} race_outer SEC(".maps") = {
	.values = { &race_inner },
};

int race_tgid = 0;
__u64 race_hits = 0;

static __always_inline int race_access(void)
{
	__u32 key = 0, value = 0xdeadbeef;
	void *inner;

	/* Only our own getpgid() calls: the probe is system-wide. */
	if ((bpf_get_current_pid_tgid() >> 32) != race_tgid)
		return 0;
	inner = bpf_map_lookup_elem(&race_outer, &key);
	if (!inner)
		return 0;
	__sync_fetch_and_add(&race_hits, 1);
	/* Keep using the inner map long enough for the replacement to land. */
	for (int i = 0; i < 2048; i++)
		bpf_map_update_elem(inner, &key, &value, 0);
	return 0;
}

SEC("?ksyscall/getpgid")
int race_kprobe(void *ctx)
{
	return race_access();
}

#if defined(__TARGET_ARCH_x86)
#define SYS_PREFIX "__x64_"
#elif defined(__TARGET_ARCH_arm64)
#define SYS_PREFIX "__arm64_"
#endif

#ifdef SYS_PREFIX
SEC("?fentry.s/" SYS_PREFIX "sys_getpgid")
int race_fentry_sleepable(void *ctx)
{
	return race_access();
}
#endif
