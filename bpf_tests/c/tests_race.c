// SPDX-License-Identifier: GPL-2.0
/* The inner-map use-after-free (8766733641) as the upstream selftest provokes it: one
 * thread calls getpgid(), on which a BPF program (kprobe, or sleepable fentry) writes
 * 2048 times into the inner map it looked up, while another thread replaces that
 * inner map. Unlike the selftest, no barrier holds the threads in step: both loop
 * flat out, which under TCG wins the race far more often than rounds in lock step.
 * Racy by nature, so bounded by RACE_REPLACEMENTS and RACE_SECONDS, and stopped at
 * the first KASAN taint. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "suite.h"
#include "map_in_map.skel.h"

#define RACE_REPLACEMENTS 20000
#define RACE_SECONDS 8

struct race {
	int outer_fd;
	volatile int stop; /* set by the updater, read by the accessor */
	int rounds;        /* replacements done */
	int err;
	time_t deadline;
};

static void *updater(void *arg)
{
	struct race *r = arg;
	__u32 zero = 0;

	for (int i = 0; i < RACE_REPLACEMENTS && !r->stop; i++) {
		int fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "race_inner", 4, 4, 1, NULL);

		/* Replacing outer[0] drops the last reference to the old inner map. */
		if (fd < 0 || bpf_map_update_elem(r->outer_fd, &zero, &fd, BPF_ANY))
			r->err = errno;
		if (fd >= 0)
			close(fd);
		r->rounds = i + 1;
		if (r->err || (read_taint() & TAINT_BAD_PAGE) || time(NULL) > r->deadline)
			break;
	}
	r->stop = 1;
	return NULL;
}

static void *accessor(void *arg)
{
	struct race *r = arg;

	while (!r->stop)
		syscall(__NR_getpgid, 0);
	return NULL;
}

static int race(int outer_fd, struct race *r)
{
	pthread_t a, b;
	int err;

	r->outer_fd = outer_fd;
	r->deadline = time(NULL) + RACE_SECONDS;
	if ((err = pthread_create(&b, NULL, accessor, r)))
		return -err;
	if ((err = pthread_create(&a, NULL, updater, r))) {
		r->stop = 1;
		pthread_join(b, NULL);
		return -err;
	}
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	return r->err ? -r->err : 0;
}

static enum outcome race_test(struct test_ctx *t, const char *prog_name)
{
	static const char *const maps[] = { "race_inner", "race_outer", NULL };
	struct map_in_map *skel = skel_open_one(prog_name, maps);
	unsigned long before = read_taint();
	struct race r = { 0 };
	struct bpf_link *link = NULL;
	enum outcome out = OUT_FAIL;
	int err;

	if (!skel) {
		diag("cannot open the BPF skeleton: %s", strerror(errno));
		return OUT_FAIL;
	}
	if (before & TAINT_BAD_PAGE) {
		out = skip(t, "taint bit 5 was already set: a new KASAN report cannot be told apart");
		goto out;
	}
	if ((err = map_in_map__load(skel))) {
		diag("%s did not load: %s (%d)", prog_name, strerror(-err), err);
		libbpf_log_dump(16);
		goto out;
	}
	skel->bss->race_tgid = getpid();
	link = bpf_program__attach(bpf_object__find_program_by_name(skel->obj, prog_name));
	if (!link) {
		diag("%s did not attach: %s", prog_name, strerror(errno));
		libbpf_log_dump(16);
		goto out;
	}
	err = race(bpf_map__fd(skel->maps.race_outer), &r);
	bpf_link__destroy(link);
	diag("%d replacements, the program ran %llu times", r.rounds,
	     (unsigned long long)skel->bss->race_hits);
	if (err)
		diag("the race could not run: %s", strerror(-err));
	else if (!skel->bss->race_hits)
		diag("the program never ran on getpgid(): the race proved nothing");
	else
		out = judge_uaf(t, before, read_taint(), true);
out:
	map_in_map__destroy(skel);
	return out;
}

enum outcome test_race_kprobe(struct test_ctx *t)
{
	if (!kernel_config(KCONF_KPROBES))
		return skip(t, "kernel built without CONFIG_KPROBES");
	return race_test(t, "race_kprobe");
}

enum outcome test_race_fentry_sleepable(struct test_ctx *t)
{
	/* Kernel identity: arm64 got ftrace direct calls (hence fentry) in 6.4. */
	if (strcmp(t->kernel->arch, "aarch64") == 0 && !kernel_at_least(t->kernel, 6, 4))
		return skip(t, "arm64 before 6.4 has no ftrace direct calls, hence no fentry");
	if (!kernel_config(KCONF_DIRECT_CALLS))
		return skip(t, "kernel built without DYNAMIC_FTRACE_WITH_DIRECT_CALLS: no fentry");
	/* Sleepable fentry may only attach to functions open to error injection. */
	if (!kernel_config(KCONF_ERROR_INJECTION))
		return skip(t, "kernel built without CONFIG_FUNCTION_ERROR_INJECTION: no fentry.s");
	return race_test(t, "race_fentry_sleepable");
}
