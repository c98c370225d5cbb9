// SPDX-License-Identifier: GPL-2.0
/* Special fields in inner map values, where BTF-typed C is the natural tool:
 * bpf_spin_lock (b7ff97925b), bpf_timer (40ec00abf1 with 68134668c1) and an
 * unreferenced kptr (61df10c779). Each test loads its one program and asserts the
 * behaviour its kernel should have: the old one before the commit, the new after. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "suite.h"
#include "map_in_map_shared.h"
#include "map_in_map.skel.h"

#define ENOTSUPP 524 /* kernel-internal errno, leaks to user space from map creation */
#define LOCK_RUNS 64

/* strerror() does not know the kernel-internal ENOTSUPP that map creation returns. */
static const char *errstr(int err)
{
	return err == -ENOTSUPP ? "ENOTSUPP" : strerror(-err);
}

static enum outcome open_failed(struct test_ctx *t)
{
	diag("cannot open the BPF skeleton: %s", strerror(errno));
	libbpf_log_dump(16);
	(void)t;
	return OUT_FAIL;
}

static enum outcome spin_lock_new(struct test_ctx *t, struct map_in_map *skel)
{
	struct { __u32 lock; __u32 counter; } val = { 0 };
	__u32 zero = 0, retval = 0;
	char seen[160];
	int err;

	err = prog_run_tc(bpf_program__fd(skel->progs.spin_lock_inner), LOCK_RUNS, &retval);
	if (!err)
		err = bpf_map_lookup_elem(bpf_map__fd(skel->maps.lock_inner), &zero, &val) ? -errno : 0;
	if (!err && retval == PROG_OK && val.counter == LOCK_RUNS)
		return OUT_PASS;
	snprintf(seen, sizeof(seen), "test_run %d, program returned %u, counter %u", err,
		 retval, val.counter);
	return expect_mismatch(t, "64 locked increments of the inner value (retval 0)", seen);
}

enum outcome test_spin_lock(struct test_ctx *t)
{
	static const char *const maps[] = { "lock_inner", "lock_outer", NULL };
	struct map_in_map *skel = skel_open_one("spin_lock_inner", maps);
	enum outcome out;
	char seen[160];
	int err;

	if (!skel)
		return open_failed(t);
	err = map_in_map__load(skel);
	if (!kernel_has(t->kernel, t->commit)) {
		/* Before b7ff97925b bpf_map_meta_alloc() refused a spin-locked inner template. */
		if (err)
			snprintf(seen, sizeof(seen), "load failed: %s (%d)", errstr(err), err);
		else
			snprintf(seen, sizeof(seen), "loaded");
		out = err == -ENOTSUPP ? OUT_PASS :
		      expect_mismatch(t, "the outer map refused with ENOTSUPP (524)", seen);
	} else if (err) {
		snprintf(seen, sizeof(seen), "load failed: %s (%d)", errstr(err), err);
		out = expect_mismatch(t, "the program locking an inner value loads", seen);
	} else {
		out = spin_lock_new(t, skel);
	}
	map_in_map__destroy(skel);
	return out;
}

/* The callback runs from a softirq some time after the program returns. */
static bool wait_fired(volatile __u64 *fired, int max_ms)
{
	struct timespec ms = { 0, 1000000 };

	for (int i = 0; i < max_ms && !*fired; i++)
		nanosleep(&ms, NULL);
	return *fired != 0;
}

static enum outcome timer_new(struct test_ctx *t, struct map_in_map *skel)
{
	__u32 retval = 0;
	char seen[160];
	int err;

	err = prog_run_tc(bpf_program__fd(skel->progs.timer_inner_prog), 1, &retval);
	if (!err && retval == PROG_OK && wait_fired(&skel->bss->timer_fired, 2000))
		return OUT_PASS;
	snprintf(seen, sizeof(seen), "test_run %d, program returned %u, callback ran %llu times",
		 err, retval, (unsigned long long)skel->bss->timer_fired);
	return expect_mismatch(t, "the timer in the inner value armed and fired within 2 s", seen);
}

enum outcome test_timer(struct test_ctx *t)
{
	static const char *const maps[] = { "timer_inner", "timer_outer", NULL };
	struct map_in_map *skel = skel_open_one("timer_inner_prog", maps);
	enum outcome out;
	char seen[160];
	int err;

	if (!skel)
		return open_failed(t);
	err = map_in_map__load(skel);
	snprintf(seen, sizeof(seen), "load failed: %s (%d)", errstr(err), err);
	if (!kernel_has(t->kernel, t->commit))
		/* Before v5.15 there is no bpf_timer at all, inner map or not. */
		out = err ? OUT_PASS : expect_mismatch(t, "the timer program refused", "loaded");
	else if (err)
		out = expect_mismatch(t, "bpf_timer_init on an inner map value verifies", seen);
	else
		out = timer_new(t, skel);
	map_in_map__destroy(skel);
	return out;
}

static enum outcome kptr_new(struct test_ctx *t, struct map_in_map *skel, bool new_tag)
{
	LIBBPF_OPTS(bpf_test_run_opts, opts);
	struct bpf_program *prog = new_tag ? skel->progs.kptr_inner_new_tag_prog :
					     skel->progs.kptr_inner_old_tag_prog;
	char seen[160];
	int err;

	err = bpf_prog_test_run_opts(bpf_program__fd(prog), &opts) ? -errno : 0;
	/* A syscall program runs in the caller's context: the stored task is us. */
	if (!err && opts.retval == PROG_OK && skel->bss->kptr_pid == getpid())
		return OUT_PASS;
	snprintf(seen, sizeof(seen), "test_run %d, program returned %u, pid via kptr %d (ours %d)",
		 err, opts.retval, skel->bss->kptr_pid, getpid());
	return expect_mismatch(t, "the stored kptr reads back as the current task", seen);
}

enum outcome test_kptr(struct test_ctx *t)
{
	/* The tag's spelling follows 03b77e17ae (tests.def: USES); it is not what is tested. */
	bool new_tag = kernel_has(t->kernel, "03b77e17ae");
	static const char *const old_maps[] = { "kptr_inner_old_tag", "kptr_outer_old_tag", NULL };
	static const char *const new_maps[] = { "kptr_inner_new_tag", "kptr_outer_new_tag", NULL };
	struct map_in_map *skel = skel_open_one(new_tag ? "kptr_inner_new_tag_prog" :
						"kptr_inner_old_tag_prog", new_tag ? new_maps : old_maps);
	enum outcome out;
	char seen[160];
	int err;

	if (!skel)
		return open_failed(t);
	diag("kptr tag \"%s\" (kernel %s 03b77e17ae)", new_tag ? "kptr_untrusted" : "kptr",
	     new_tag ? "has" : "lacks");
	err = map_in_map__load(skel);
	snprintf(seen, sizeof(seen), "load failed: %s (%d)", errstr(err), err);
	if (!kernel_has(t->kernel, t->commit))
		/* Before v5.19 a map value cannot hold a kptr: loading through it is refused. */
		out = err ? OUT_PASS : expect_mismatch(t, "the kptr program refused", "loaded");
	else if (err)
		out = expect_mismatch(t, "storing a kptr into an inner map value verifies", seen);
	else
		out = kptr_new(t, skel, new_tag);
	map_in_map__destroy(skel);
	return out;
}
