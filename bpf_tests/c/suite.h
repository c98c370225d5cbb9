/* SPDX-License-Identifier: GPL-2.0 */
/* The C map-in-map suite: the kernel under test and its commits file, the test table
 * (tests.def) and the helpers every test shares (TAP diagnostics, one-program
 * skeleton loading). */
#ifndef SUITE_H
#define SUITE_H

#include <stdbool.h>
#include <stddef.h>
#include <linux/types.h>

#define COMMITS_ENV "BPFLAB_COMMITS" /* the lab's commits file (harness/commits.py) */
#define MAX_COMMITS 256
#define MAX_NOTES 8
#define TAINT_BAD_PAGE (1UL << 5) /* taint bit 5: set by KASAN reports */

/* One line of the commits file: "<id> present|absent <why>". The lab decided it on
 * the host; the suite only reads it. */
struct presence {
	char id[41];
	bool present;
	char why[200];
};

/* The kernel under test: what uname says (named in messages; the arch and release
 * numbers only decide what a test can attach to, never which commits it has) and
 * the commits file. */
struct kernel {
	int major, minor;
	char release[65];
	char arch[65];
	char path[256];
	int n_commits;
	struct presence commits[MAX_COMMITS];
	int n_notes; /* the file's comment lines: release, variant, how it was decided */
	char notes[MAX_NOTES][200];
};

enum outcome { OUT_PASS, OUT_FAIL, OUT_SKIP };

struct test_ctx {
	const struct kernel *kernel;
	const char *commit; /* the id the test's TEST line names */
	char skip_reason[160];
};

struct test {
	const char *name;
	const char *commit;
	enum outcome (*run)(struct test_ctx *t);
};

/* kernel.c */
int kernel_read_commits(struct kernel *k, const char *path, char *err, size_t len);
void kernel_load_or_bail(struct kernel *k);
void kernel_require_declared(const struct kernel *k);
const struct presence *kernel_find(const struct kernel *k, const char *id);
bool kernel_has(const struct kernel *k, const char *id);
bool kernel_at_least(const struct kernel *k, int major, int minor);

/* runner.c */
void diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void libbpf_log_reset(void);
void libbpf_log_dump(int max_lines);
enum outcome expect_mismatch(struct test_ctx *t, const char *expected, const char *observed);
enum outcome skip(struct test_ctx *t, const char *reason);
unsigned long read_taint(void);
enum kconf { KCONF_KASAN, KCONF_KPROBES, KCONF_ERROR_INJECTION, KCONF_DIRECT_CALLS, KCONF_COUNT };
bool kernel_config(enum kconf which);

struct map_in_map;
struct map_in_map *skel_open_one(const char *prog, const char *const *maps);
int prog_run_tc(int prog_fd, int repeat, __u32 *retval);

/* tests_fields.c, tests_uaf.c */
enum outcome test_spin_lock(struct test_ctx *t);
enum outcome test_timer(struct test_ctx *t);
enum outcome test_kptr(struct test_ctx *t);
enum outcome test_uaf_sleepable(struct test_ctx *t);
enum outcome test_race_kprobe(struct test_ctx *t);
enum outcome test_race_fentry_sleepable(struct test_ctx *t);
enum outcome judge_uaf(struct test_ctx *t, unsigned long before, unsigned long after, bool racy);

#endif
