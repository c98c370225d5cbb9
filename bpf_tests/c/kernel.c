// SPDX-License-Identifier: GPL-2.0
/* Which declared upstream commits the kernel under test carries: read from the file
 * BPFLAB_COMMITS names, never decided here. The lab decides on the host
 * (harness/commits.py: a variant's reverts and backports, git evidence such as an
 * ancestor or a stable backport, release numbers and the stable table of
 * bpf_tests/commits.yaml) and writes
 *
 *     # comment lines (release, variant, how it was decided)
 *     <id> present|absent <why>
 *
 * the same file the Python suite reads (bpf_tests/python/bpfkit/expect.py). */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

#include "suite.h"

#define HOW_TO_WRITE                                                                   \
	"the lab writes it for every kernel it boots (harness/commits.py). By hand, in "  \
	"the project on the host: .venv/bin/python -m harness.commits RELEASE > "         \
	"commits.txt with the guest's uname -r as RELEASE (--help: --variant, --reverts, " \
	"--backports, --git/--sha), then BPFLAB_COMMITS=/path/to/commits.txt in the "      \
	"guest; or write it yourself, one line '<id> present|absent <why>' per id in "    \
	"bpf_tests/commits.yaml"

/* The ids the file must list: every TEST and USES line of tests.def. */
static const struct {
	const char *test, *id;
} declared[] = {
#define TEST(name, id, fn) { #name, id },
#define USES(name, id) { #name, id },
#include "tests.def"
#undef TEST
#undef USES
};

static bool is_commit_id(const char *w)
{
	size_t len = strlen(w);

	if (len < 7 || len > 40)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!isxdigit((unsigned char)w[i]))
			return false;
	return true;
}

/* Short and full ids match by prefix, at least 7 hex digits. */
static bool same_commit(const char *a, const char *b)
{
	size_t n = strlen(a) < strlen(b) ? strlen(a) : strlen(b);

	return n >= 7 && strncasecmp(a, b, n) == 0;
}

static char *trim(char *s)
{
	char *end = s + strlen(s);

	while (isspace((unsigned char)*s))
		s++;
	while (end > s && isspace((unsigned char)end[-1]))
		*--end = '\0';
	return s;
}

/* One "<id> present|absent <why>" line into k; a malformed one is an error: a
 * mistyped file must not silently turn into "commit absent". */
static int parse_line(struct kernel *k, char *line, int number, char *err, size_t len)
{
	char id[64], state[16];
	struct presence *p;
	int n = 0;

	if (sscanf(line, "%63s %15s%n", id, state, &n) != 2 || !is_commit_id(id) ||
	    (strcmp(state, "present") && strcmp(state, "absent"))) {
		snprintf(err, len, "%s:%d: expected '<id> present|absent <why>' (id of 7-40 "
			 "hex digits), got '%.80s'", k->path, number, line);
		return -1;
	}
	if (kernel_find(k, id)) {
		snprintf(err, len, "%s:%d: %s is listed twice", k->path, number, id);
		return -1;
	}
	if (k->n_commits == MAX_COMMITS) {
		snprintf(err, len, "%s:%d: more than %d commits", k->path, number, MAX_COMMITS);
		return -1;
	}
	p = &k->commits[k->n_commits++];
	for (char *c = id; *c; c++)
		*c = (char)tolower((unsigned char)*c);
	snprintf(p->id, sizeof(p->id), "%s", id);
	p->present = strcmp(state, "present") == 0;
	snprintf(p->why, sizeof(p->why), "%s", *trim(line + n) ? trim(line + n) : "no reason given");
	return 0;
}

int kernel_read_commits(struct kernel *k, const char *path, char *err, size_t len)
{
	char buf[512];
	int number = 0, ret = 0;
	FILE *f = fopen(path, "r");

	if (!f) {
		snprintf(err, len, "%s: %s", path, strerror(errno));
		return -1;
	}
	snprintf(k->path, sizeof(k->path), "%s", path);
	while (!ret && fgets(buf, sizeof(buf), f)) {
		bool whole = strchr(buf, '\n') || feof(f);
		char *line = trim(buf);

		number++;
		if (!whole) {
			snprintf(err, len, "%s:%d: line longer than %zu characters", path, number,
				 sizeof(buf) - 2);
			ret = -1;
		} else if (*line == '#') {
			if (k->n_notes < MAX_NOTES)
				snprintf(k->notes[k->n_notes++], sizeof(k->notes[0]), "%s",
					 trim(line + 1));
		} else if (*line) {
			ret = parse_line(k, line, number, err, len);
		}
	}
	fclose(f);
	return ret;
}

static void bail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void bail(const char *fmt, ...)
{
	va_list ap;

	printf("Bail out! ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	exit(2);
}

/* uname, and the commits file; without them the suite cannot run (exit 2). */
void kernel_load_or_bail(struct kernel *k)
{
	const char *path = getenv(COMMITS_ENV);
	struct utsname u;
	char err[512];

	memset(k, 0, sizeof(*k));
	if (uname(&u) || sscanf(u.release, "%d.%d", &k->major, &k->minor) != 2)
		bail("cannot read the kernel release (uname)");
	snprintf(k->release, sizeof(k->release), "%s", u.release);
	snprintf(k->arch, sizeof(k->arch), "%s", u.machine);
	if (!path || !*path)
		bail("%s is not set: it names the file saying which declared upstream commits "
		     "the kernel under test carries; %s", COMMITS_ENV, HOW_TO_WRITE);
	if (kernel_read_commits(k, path, err, sizeof(err)))
		bail("%s: %s", COMMITS_ENV, err);
}

/* Every id tests.def names must be in the file, whichever tests run. */
void kernel_require_declared(const struct kernel *k)
{
	for (size_t i = 0; i < sizeof(declared) / sizeof(declared[0]); i++)
		if (!kernel_find(k, declared[i].id))
			bail("%s declares %s, which the commits file %s does not list: every id "
			     "in bpf_tests/commits.yaml needs a line there", declared[i].test,
			     declared[i].id, k->path);
}

const struct presence *kernel_find(const struct kernel *k, const char *id)
{
	for (int i = 0; i < k->n_commits; i++)
		if (same_commit(k->commits[i].id, id))
			return &k->commits[i];
	return NULL;
}

/* Only ids tests.def declares are asked about, and kernel_require_declared checked
 * them: a miss here is the suite's own bug. */
bool kernel_has(const struct kernel *k, const char *id)
{
	const struct presence *p = kernel_find(k, id);

	if (!p)
		bail("%s is not in the commits file %s: declare it in tests.def", id, k->path);
	return p->present;
}

/* The release numbers, for what a test can attach to on this kernel (arm64 fentry),
 * never for which commits it has. */
bool kernel_at_least(const struct kernel *k, int major, int minor)
{
	return k->major > major || (k->major == major && k->minor >= minor);
}
