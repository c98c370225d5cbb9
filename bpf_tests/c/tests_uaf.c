// SPDX-License-Identifier: GPL-2.0
/* Use-after-free of an inner map freed while a sleepable program still uses it
 * (fixed by 8766733641, with 20c20bd11a). Deterministic, and the same on x86_64 and
 * arm64 (no fentry needed): a sleepable syscall program looks up outer[0], then
 * blocks in bpf_copy_from_user on a page held back by userfaultfd; meanwhile outer[0]
 * is replaced, dropping the last reference to the old inner map; one second later the
 * page is supplied and the program writes into the old inner map. Without the fix
 * that map is already freed: on a KASAN kernel this prints a KASAN report and sets
 * taint bit 5. Bounded: UAF_ROUNDS rounds, every wait has a timeout. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "suite.h"
#include "map_in_map_shared.h"
#include "map_in_map.skel.h"

#define UAF_ROUNDS 2
#define FAULT_WAIT_MS 5000
#define JOIN_WAIT_S 10

struct runner {
	int prog_fd;
	struct uaf_args args;
	int err;
	__u32 retval;
};

static void *run_prog(void *arg)
{
	struct runner *r = arg;
	LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = &r->args, .ctx_size_in = sizeof(r->args));

	r->err = bpf_prog_test_run_opts(r->prog_fd, &opts) ? -errno : 0;
	r->retval = opts.retval;
	return NULL;
}

/* A fresh inner ARRAY(4, 4, 1) into outer[0]; our fd is closed so that the outer
 * map holds the only reference. */
static int put_inner(int outer_fd)
{
	__u32 zero = 0;
	int inner = bpf_map_create(BPF_MAP_TYPE_ARRAY, "uaf_inner", 4, 4, 1, NULL);
	int err;

	if (inner < 0)
		return -errno;
	err = bpf_map_update_elem(outer_fd, &zero, &inner, BPF_ANY) ? -errno : 0;
	close(inner);
	return err;
}

static int uffd_page(void **page, long size)
{
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = { .mode = UFFDIO_REGISTER_MODE_MISSING };
	int uffd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	int err;

	*page = NULL;
	if (uffd < 0)
		return -errno;
	*page = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (*page == MAP_FAILED) {
		err = -errno;
		*page = NULL;
		close(uffd);
		return err;
	}
	reg.range.start = (unsigned long)*page;
	reg.range.len = (unsigned long)size;
	if (ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg)) {
		err = -errno;
		munmap(*page, (size_t)size);
		*page = NULL;
		close(uffd);
		return err;
	}
	return uffd;
}

/* Wait (bounded) until the program faults on the page: it is then asleep holding
 * the inner map it looked up. */
static bool wait_fault(int uffd)
{
	struct pollfd pfd = { .fd = uffd, .events = POLLIN };
	struct uffd_msg msg;

	if (poll(&pfd, 1, FAULT_WAIT_MS) != 1)
		return false;
	return read(uffd, &msg, sizeof(msg)) == sizeof(msg) && msg.event == UFFD_EVENT_PAGEFAULT;
}

static int resolve(int uffd, void *page, long size)
{
	static char src[65536] __attribute__((aligned(4096)));
	struct uffdio_copy copy = { .dst = (unsigned long)page, .src = (unsigned long)src,
				    .len = (unsigned long)size };

	return ioctl(uffd, UFFDIO_COPY, &copy) ? -errno : 0;
}

/* One round; returns 0 or a negative errno, describing what went wrong in why. */
static int one_round(int prog_fd, int outer_fd, char *why, size_t len)
{
	long size = sysconf(_SC_PAGESIZE);
	/* Static: a thread that outlives its join timeout must not write into a dead
	 * stack frame (the suite stops after such a round, so it is never reused). */
	static struct runner r;
	struct timespec deadline;
	struct timespec one_s = { 1, 0 };
	pthread_t thread;
	void *page = NULL;
	int uffd, err, rerr;

	if ((err = put_inner(outer_fd)) || (uffd = uffd_page(&page, size)) < 0) {
		snprintf(why, len, "setup: inner map or userfaultfd: %s", strerror(err ? -err : -uffd));
		return err ? err : uffd;
	}
	r = (struct runner){ .prog_fd = prog_fd, .args.uaddr = (unsigned long)page };
	if ((err = -pthread_create(&thread, NULL, run_prog, &r)))
		goto out;
	if (!wait_fault(uffd)) {
		/* Without the block the round proves nothing: count it as a failure. */
		snprintf(why, len, "the program never blocked on the userfaultfd page");
		err = -ETIME;
	} else if ((err = put_inner(outer_fd)))
		snprintf(why, len, "replacing outer[0]: %s", strerror(-err));
	nanosleep(&one_s, NULL); /* a buggy kernel frees the old inner map meanwhile */
	rerr = resolve(uffd, page, size);
	if (rerr && !err) {
		snprintf(why, len, "UFFDIO_COPY: %s", strerror(-rerr));
		err = rerr;
	}
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += JOIN_WAIT_S;
	if (pthread_timedjoin_np(thread, NULL, &deadline)) {
		/* Closing the uffd below makes the fault fail, so the thread ends. */
		snprintf(why, len, "the program did not return within %d s", JOIN_WAIT_S);
		err = -ETIMEDOUT;
	} else if (!err && (r.err || r.retval != PROG_OK)) {
		snprintf(why, len, "test_run %d, program returned %u", r.err, r.retval);
		err = -EINVAL;
	}
out:
	close(uffd);
	munmap(page, (size_t)size);
	return err;
}

/* racy: the reproducer may lose its race, so a missing report on a kernel without
 * the fix is a skip, not a failure; a report on a kernel with it always fails. */
enum outcome judge_uaf(struct test_ctx *t, unsigned long before, unsigned long after, bool racy)
{
	bool fixed = kernel_has(t->kernel, t->commit);
	bool new_taint = (after & TAINT_BAD_PAGE) && !(before & TAINT_BAD_PAGE);

	if (before & TAINT_BAD_PAGE)
		return skip(t, "taint bit 5 was already set: a new KASAN report cannot be told apart");
	if (fixed)
		return new_taint ? expect_mismatch(t, "no KASAN report (taint bit 5 stays clear)",
						   "taint bit 5 set: see the console between the markers")
				 : OUT_PASS;
	if (!kernel_config(KCONF_KASAN))
		return skip(t, "kernel lacks 8766733641 but has no KASAN to see the use-after-free");
	if (new_taint)
		return OUT_PASS;
	if (racy)
		return skip(t, "kernel lacks 8766733641 but the race was not won within the bounds");
	return expect_mismatch(t, "a KASAN use-after-free report (taint bit 5)",
			       "no new taint: the freed inner map went unnoticed");
}

enum outcome test_uaf_sleepable(struct test_ctx *t)
{
	static const char *const maps[] = { "uaf_outer", NULL };
	struct map_in_map *skel = skel_open_one("uaf_sleepable", maps);
	unsigned long before = read_taint();
	enum outcome out = OUT_FAIL;
	char why[160] = "";
	int err = 0;

	if (!skel) {
		diag("cannot open the BPF skeleton: %s", strerror(errno));
		return OUT_FAIL;
	}
	if (before & TAINT_BAD_PAGE) { /* blind: no use writing into freed memory */
		out = judge_uaf(t, before, before, false);
		goto out;
	}
	if ((err = map_in_map__load(skel))) {
		diag("the sleepable program did not load: %s (%d)", strerror(-err), err);
		libbpf_log_dump(16);
		goto out;
	}
	for (int i = 0; i < UAF_ROUNDS && !err; i++)
		err = one_round(bpf_program__fd(skel->progs.uaf_sleepable),
				bpf_map__fd(skel->maps.uaf_outer), why, sizeof(why));
	if (err) {
		diag("round failed: %s", why);
		goto out;
	}
	out = judge_uaf(t, before, read_taint(), false);
out:
	map_in_map__destroy(skel);
	return out;
}
