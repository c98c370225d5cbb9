// SPDX-License-Identifier: GPL-2.0
/* A command-line window on kernel.c for the host's unit tests (tests/test_csuite.py):
 *   kernel_check RELEASE UNAME_V MAINLINE [SERIES STABLE] [ANCESTORS_FILE]
 * prints "has" or "lacks" for a commit with that mainline/stable release, or exits 2
 * when the identity cannot be read. BPFLAB_REVERTED_COMMITS and
 * BPFLAB_BACKPORTED_COMMITS are honoured. Not part of
 * the guest binary. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suite.h"

int main(int argc, char **argv)
{
	struct commit c = { "8766733641", "test commit", NULL, NULL, NULL };
	struct kernel k;

	if (argc < 4)
		return 2;
	memset(&k, 0, sizeof(k));
	if (kernel_parse_release(argv[1], argv[2], &k) ||
	    kernel_set_variant(&k, getenv(REVERTED_ENV), getenv(BACKPORTED_ENV)))
		return 2;
	c.mainline = argv[3];
	if (argc >= 6 && *argv[4]) {
		c.stable_series = argv[4];
		c.stable_release = argv[5];
	}
	if (argc >= 7) {
		struct kernel listed;

		if (kernel_load(&listed, argv[6]))
			return 2;
		k.has_list = listed.has_list;
		k.n_ancestors = listed.n_ancestors;
		k.ancestors = listed.ancestors;
	}
	printf("%d.%d.%d %s\n", k.major, k.minor, k.patch, kernel_has(&k, &c) ? "has" : "lacks");
	return 0;
}
