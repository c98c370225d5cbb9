// SPDX-License-Identifier: GPL-2.0
/* Which commits the kernel under test carries, decided from its identity (uname
 * release, an optional list of commit ids), never from the behaviour being tested:
 * the same rules as bpf_tests/python/bpfkit/expect.py, so both suites agree. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

#include "suite.h"

/* "6.1.192", "6.18.44-fc-v669", "7.3.0-rc7+" -> numbers; an -rc of X.Y counts as
 * X.Y. Debian's own "6.1.0-28-amd64" names the real sublevel in uname -v
 * ("... Debian 6.1.192-1 ..."): that one wins when the series match. */
int kernel_parse_release(const char *release, const char *version, struct kernel *k)
{
	int maj = 0, min = 0, patch = 0, n = 0;
	const char *deb;

	if (sscanf(release, "%d.%d%n", &maj, &min, &n) != 2)
		return -1;
	if (release[n] == '.')
		sscanf(release + n + 1, "%d", &patch);
	deb = version ? strstr(version, "Debian ") : NULL;
	if (deb) {
		int dmaj, dmin, dpatch;

		if (sscanf(deb + 7, "%d.%d.%d", &dmaj, &dmin, &dpatch) == 3 &&
		    dmaj == maj && dmin == min)
			patch = dpatch;
	}
	k->major = maj;
	k->minor = min;
	k->patch = patch;
	snprintf(k->release, sizeof(k->release), "%s", release);
	return 0;
}

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

/* One id per line, '#' starts a comment. A malformed line is a setup error: a
 * mistyped list must not silently turn into "commit absent". */
static int read_ancestors(struct kernel *k, const char *path)
{
	char line[256], word[64];
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	k->ancestors = calloc(MAX_ANCESTORS, sizeof(*k->ancestors));
	if (!k->ancestors) {
		fclose(f);
		return -1;
	}
	while (fgets(line, sizeof(line), f) && k->n_ancestors < MAX_ANCESTORS) {
		char *hash = strchr(line, '#');

		if (hash)
			*hash = '\0';
		if (sscanf(line, "%63s", word) != 1)
			continue;
		if (!is_commit_id(word)) {
			fprintf(stderr, "%s: '%s' is not a commit id\n", path, word);
			fclose(f);
			return -1;
		}
		for (char *p = word; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		snprintf(k->ancestors[k->n_ancestors++], 41, "%.40s", word);
	}
	fclose(f);
	k->has_list = true;
	return 0;
}

int kernel_load(struct kernel *k, const char *has_commits_path)
{
	struct utsname u;

	memset(k, 0, sizeof(*k));
	if (uname(&u) || kernel_parse_release(u.release, u.version, k))
		return -1;
	snprintf(k->arch, sizeof(k->arch), "%s", u.machine);
	if (kernel_set_variant(k, getenv(REVERTED_ENV), getenv(BACKPORTED_ENV)))
		return -1;
	if (has_commits_path && *has_commits_path)
		return read_ancestors(k, has_commits_path);
	return 0;
}

/* Short and full ids match by prefix, at least 7 hex digits. */
static bool same_commit(const char *a, const char *b)
{
	size_t n = strlen(a) < strlen(b) ? strlen(a) : strlen(b);

	return n >= 7 && strncasecmp(a, b, n) == 0;
}

/* Space-separated commit ids; a malformed one is a setup error, as in the list. */
static int read_ids(const char *env, const char *ids, char (*out)[41], int *n_out)
{
	char word[64];
	int n = 0;

	*n_out = 0;
	while (ids && sscanf(ids, " %63s%n", word, &n) == 1) {
		if (!is_commit_id(word) || *n_out == MAX_VARIANT_IDS) {
			fprintf(stderr, "%s: '%s' is not a commit id (or too many)\n", env, word);
			return -1;
		}
		for (char *p = word; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		snprintf(out[(*n_out)++], 41, "%.40s", word);
		ids += n;
	}
	return 0;
}

/* The commits a variant's patches undo and bring (the lab's BPFLAB_REVERTED_COMMITS
 * and BPFLAB_BACKPORTED_COMMITS). */
int kernel_set_variant(struct kernel *k, const char *reverted, const char *backported)
{
	if (read_ids(REVERTED_ENV, reverted, k->reverted, &k->n_reverted) ||
	    read_ids(BACKPORTED_ENV, backported, k->backported, &k->n_backported))
		return -1;
	for (int i = 0; i < k->n_reverted; i++)
		for (int j = 0; j < k->n_backported; j++)
			if (same_commit(k->reverted[i], k->backported[j])) {
				fprintf(stderr, "%s and %s both name %s\n", REVERTED_ENV,
					BACKPORTED_ENV, k->reverted[i]);
				return -1;
			}
	return 0;
}

static void parse_series(const char *s, int *maj, int *min, int *patch)
{
	*maj = *min = *patch = 0;
	sscanf(s, "%d.%d.%d", maj, min, patch);
}

bool kernel_at_least(const struct kernel *k, int major, int minor)
{
	return k->major > major || (k->major == major && k->minor >= minor);
}

bool kernel_has(const struct kernel *k, const struct commit *c)
{
	int maj, min, patch;
	char series[16];

	for (int i = 0; i < k->n_reverted; i++)
		if (same_commit(k->reverted[i], c->id))
			return false;
	for (int i = 0; i < k->n_backported; i++)
		if (same_commit(k->backported[i], c->id))
			return true;
	if (k->has_list) {
		for (int i = 0; i < k->n_ancestors; i++)
			if (same_commit(k->ancestors[i], c->id))
				return true;
		return false;
	}
	parse_series(c->mainline, &maj, &min, &patch);
	if (kernel_at_least(k, maj, min))
		return true;
	snprintf(series, sizeof(series), "%d.%d", k->major, k->minor);
	if (!c->stable_series || strcmp(series, c->stable_series) != 0)
		return false;
	parse_series(c->stable_release, &maj, &min, &patch);
	return k->patch >= patch;
}

void commit_describe(const struct commit *c, char *buf, size_t len)
{
	if (c->stable_series)
		snprintf(buf, len, "%s \"%s\" (mainline v%s, %s.y from %s)", c->id, c->title,
			 c->mainline, c->stable_series, c->stable_release);
	else
		snprintf(buf, len, "%s \"%s\" (mainline v%s, not backported)", c->id, c->title,
			 c->mainline);
}
