// SPDX-License-Identifier: GPL-2.0
/* The TAP runner: the test table (tests.def), kmsg markers around each test, libbpf's log kept
 * for diagnostics, and the helpers the tests share. Exit 0 when all passed, 1 when
 * a test failed, 2 when the suite could not run at all. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "suite.h"
#include "map_in_map.skel.h"

static const struct test tests[] = {
#define TEST(name, id, fn) { #name, id, fn },
#define USES(name, id)
#include "tests.def"
#undef TEST
#undef USES
};
#define N_TESTS (int)(sizeof(tests) / sizeof(tests[0]))

void diag(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	/* One TAP diagnostic per line, whatever the message holds. */
	for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save))
		printf("# %s\n", line);
}

/* libbpf's warnings (verifier log included) are kept, not printed: only a test that
 * fails shows them, as diagnostics before its result. */
#define LOG_LINES 48
static char log_ring[LOG_LINES][320];
static int log_next, log_count;

static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	char buf[4096];

	if (level == LIBBPF_DEBUG)
		return 0;
	vsnprintf(buf, sizeof(buf), fmt, ap);
	for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		snprintf(log_ring[log_next], sizeof(log_ring[0]), "%s", line);
		log_next = (log_next + 1) % LOG_LINES;
		if (log_count < LOG_LINES)
			log_count++;
	}
	return 0;
}

void libbpf_log_reset(void)
{
	log_next = log_count = 0;
}

void libbpf_log_dump(int max_lines)
{
	int n = log_count < max_lines ? log_count : max_lines;

	for (int i = n; i > 0; i--)
		printf("# %s\n", log_ring[(log_next - i + LOG_LINES) % LOG_LINES]);
}

enum outcome expect_mismatch(struct test_ctx *t, const char *expected, const char *observed)
{
	const struct presence *p = kernel_find(t->kernel, t->commit);

	libbpf_log_dump(16);
	/* Last, because the harness takes the last diagnostic as the failure message. */
	diag("expected %s, observed %s: kernel %s %s %s (%s)", expected, observed,
	     t->kernel->release, kernel_has(t->kernel, t->commit) ? "has" : "lacks", t->commit,
	     p ? p->why : "");
	return OUT_FAIL;
}

enum outcome skip(struct test_ctx *t, const char *reason)
{
	snprintf(t->skip_reason, sizeof(t->skip_reason), "%s", reason);
	return OUT_SKIP;
}

unsigned long read_taint(void)
{
	unsigned long taint = 0;
	FILE *f = fopen("/proc/sys/kernel/tainted", "r");

	if (f) {
		if (fscanf(f, "%lu", &taint) != 1)
			taint = 0;
		fclose(f);
	}
	return taint;
}

/* How the kernel was built (KASAN, kprobes, ...) is part of its identity, read from
 * its symbol table once; it is never the behaviour a test checks, only what the test
 * needs in order to see it. */
static const char *const config_symbols[KCONF_COUNT][3] = {
	[KCONF_KASAN] = { "kasan_report", "__kasan_report", NULL },
	[KCONF_KPROBES] = { "register_kprobe", NULL, NULL },
	[KCONF_ERROR_INJECTION] = { "within_error_injection_list", NULL, NULL },
	[KCONF_DIRECT_CALLS] = { "register_ftrace_direct", "register_ftrace_direct_multi", NULL },
};

bool kernel_config(enum kconf which)
{
	static bool scanned, found[KCONF_COUNT];
	char line[512], name[256];
	FILE *f;

	if (scanned)
		return found[which];
	scanned = true;
	f = fopen("/proc/kallsyms", "r");
	if (!f)
		return false;
	/* Bounded: a kernel has some 10^5..10^6 symbols. */
	for (long i = 0; i < 5000000 && fgets(line, sizeof(line), f); i++) {
		if (sscanf(line, "%*s %*s %255s", name) != 1)
			continue;
		for (int c = 0; c < KCONF_COUNT; c++)
			for (int a = 0; a < 3 && config_symbols[c][a]; a++)
				found[c] |= strcmp(name, config_symbols[c][a]) == 0;
	}
	fclose(f);
	return found[which];
}

static bool in_list(const char *name, const char *const *names)
{
	for (int i = 0; names && names[i]; i++)
		if (strcmp(name, names[i]) == 0)
			return true;
	return false;
}

/* The whole object holds every test's programs and maps; one test loads only its
 * own program and maps, so a map one kernel refuses cannot break another test. */
struct map_in_map *skel_open_one(const char *prog, const char *const *maps)
{
	struct map_in_map *skel = map_in_map__open();
	struct bpf_program *p;
	struct bpf_map *m;

	if (!skel)
		return NULL;
	bpf_object__for_each_program(p, skel->obj)
		bpf_program__set_autoload(p, strcmp(bpf_program__name(p), prog) == 0);
	bpf_object__for_each_map(m, skel->obj)
		if (!bpf_map__is_internal(m))
			bpf_map__set_autocreate(m, in_list(bpf_map__name(m), maps));
	return skel;
}

/* A tc program run on a minimal Ethernet frame: test_run wants at least ETH_HLEN. */
int prog_run_tc(int prog_fd, int repeat, __u32 *retval)
{
	unsigned char pkt[64] = { 0 };
	LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = pkt, .data_size_in = sizeof(pkt),
		    .repeat = repeat);
	int err;

	pkt[12] = 0x08; /* ethertype IPv4 */
	err = bpf_prog_test_run_opts(prog_fd, &opts);
	*retval = opts.retval;
	return err ? -errno : 0;
}

static void kmsg(const char *event, const char *name, const char *result)
{
	char line[256];
	int fd, len;

	len = snprintf(line, sizeof(line), "<5>bpflab: %s map_in_map::%s%s%s\n", event, name,
		       result ? " " : "", result ? result : "");
	/* A fresh open per line: /dev/kmsg rate-limits writes per open file. */
	fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, line, (size_t)len) != len)
		diag("cannot write kernel marker to /dev/kmsg: %s", strerror(errno));
	if (fd >= 0)
		close(fd);
}

static const char *const outcome_word[] = { "pass", "fail", "skip" };

static enum outcome run_one(const struct kernel *k, const struct test *test, int number)
{
	struct test_ctx t = { .kernel = k, .commit = test->commit };
	enum outcome out;

	libbpf_log_reset();
	kmsg("begin", test->name, NULL);
	out = test->run(&t);
	kmsg("end", test->name, outcome_word[out]);
	if (out == OUT_SKIP)
		printf("ok %d - %s # SKIP %s\n", number, test->name, t.skip_reason);
	else
		printf("%s %d - %s\n", out == OUT_PASS ? "ok" : "not ok", number, test->name);
	return out;
}

static bool selected(const char *name, int argc, char **argv)
{
	if (argc < 2)
		return true;
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], name) == 0)
			return true;
	return false;
}

int main(int argc, char **argv)
{
	static struct kernel k;
	int planned = 0, number = 0, failed = 0;

	setvbuf(stdout, NULL, _IOLBF, 0); /* keep TAP and kmsg markers in step */
	printf("TAP version 13\n");
	kernel_load_or_bail(&k);
	kernel_require_declared(&k);
	if (geteuid() != 0) {
		printf("Bail out! the suite needs root (bpf(), /dev/kmsg, userfaultfd)\n");
		return 2;
	}
	libbpf_set_print(libbpf_print);
	for (int i = 0; i < N_TESTS; i++)
		planned += selected(tests[i].name, argc, argv);
	printf("1..%d\n", planned);
	diag("kernel %s on %s, commits from %s=%s", k.release, k.arch, COMMITS_ENV, k.path);
	for (int i = 0; i < k.n_notes; i++)
		if (strchr(k.notes[i], ':'))
			diag("%s", k.notes[i]);
	for (int i = 0; i < N_TESTS; i++)
		if (selected(tests[i].name, argc, argv))
			failed += run_one(&k, &tests[i], ++number) == OUT_FAIL;
	return failed ? 1 : 0;
}
