/* SPDX-License-Identifier: GPL-2.0 */
/* The C map-in-map suite: kernel identity, declared commits, the test table and the
 * helpers every test shares (TAP diagnostics, one-program skeleton loading). */
#ifndef SUITE_H
#define SUITE_H

#include <stdbool.h>
#include <linux/types.h>

#define HAS_COMMITS_ENV "BPFLAB_HAS_COMMITS"
#define REVERTED_ENV "BPFLAB_REVERTED_COMMITS" /* ids a fault-injection variant undoes */
#define BACKPORTED_ENV "BPFLAB_BACKPORTED_COMMITS" /* ids a variant's patches bring */
#define MAX_ANCESTORS 4096
#define MAX_VARIANT_IDS 16
#define TAINT_BAD_PAGE (1UL << 5) /* taint bit 5: set by KASAN reports */

/* An upstream commit: the first mainline release with it and, where it was
 * backported, the 6.1.y (or other series) release that has it. */
struct commit {
	const char *id;
	const char *title;
	const char *mainline;        /* "6.2" */
	const char *stable_series;   /* "6.1", or NULL when not backported */
	const char *stable_release;  /* "6.1.75" */
};

/* The kernel under test, by identity only: its release and, when the harness knows
 * them, the commits it carries (a file named by BPFLAB_HAS_COMMITS). */
struct kernel {
	int major, minor, patch;
	char release[65];
	char arch[65];
	bool has_list;
	int n_ancestors;
	char (*ancestors)[41];
	int n_reverted;   /* absent whatever the release or the list says */
	char reverted[MAX_VARIANT_IDS][41];
	int n_backported; /* present whatever the release or the list says */
	char backported[MAX_VARIANT_IDS][41];
};

enum outcome { OUT_PASS, OUT_FAIL, OUT_SKIP };

struct test_ctx {
	const struct kernel *kernel;
	const struct commit *commit;
	char skip_reason[160];
};

struct test {
	const char *name;
	const struct commit *commit;
	enum outcome (*run)(struct test_ctx *t);
};

/* kernel.c */
int kernel_parse_release(const char *release, const char *version, struct kernel *k);
int kernel_load(struct kernel *k, const char *has_commits_path);
int kernel_set_variant(struct kernel *k, const char *reverted, const char *backported);
bool kernel_has(const struct kernel *k, const struct commit *c);
bool kernel_at_least(const struct kernel *k, int major, int minor);
void commit_describe(const struct commit *c, char *buf, size_t len);

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
