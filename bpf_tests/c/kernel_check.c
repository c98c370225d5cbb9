// SPDX-License-Identifier: GPL-2.0
/* A command-line window on kernel.c for the host's unit tests (tests/test_csuite.py):
 *   BPFLAB_COMMITS=FILE kernel_check [ID...]
 * reads the commits file as the runner does ("Bail out! ..." and exit 2 when it
 * cannot, or when it lacks an id tests.def declares), then prints "<id> has|lacks
 * <why>" for each ID given, or "<test> <id> has|lacks" for each TEST line of
 * tests.def when none is. Not part of the guest binary. */
#include <stdio.h>

#include "suite.h"

static const struct {
	const char *name, *id;
} tests[] = {
#define TEST(name, id, fn) { #name, id },
#define USES(name, id)
#include "tests.def"
#undef TEST
#undef USES
};

int main(int argc, char **argv)
{
	static struct kernel k;

	kernel_load_or_bail(&k);
	kernel_require_declared(&k);
	for (int i = 1; i < argc; i++) {
		bool has = kernel_has(&k, argv[i]);

		printf("%s %s %s\n", argv[i], has ? "has" : "lacks", kernel_find(&k, argv[i])->why);
	}
	if (argc == 1)
		for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
			printf("%s %s %s\n", tests[i].name, tests[i].id,
			       kernel_has(&k, tests[i].id) ? "has" : "lacks");
	return 0;
}
