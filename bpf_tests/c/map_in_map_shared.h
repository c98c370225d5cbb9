/* SPDX-License-Identifier: GPL-2.0 */
/* Shared between the BPF programs and user space: return codes and argument layouts.
 * User space includes <linux/types.h> first; the BPF side gets __u64 from vmlinux.h. */
#ifndef MAP_IN_MAP_SHARED_H
#define MAP_IN_MAP_SHARED_H

/* Distinct return values so that a test can tell which step of a program failed. */
enum prog_result {
	PROG_OK = 0,
	PROG_NO_INNER = 101,      /* outer map lookup returned NULL */
	PROG_NO_VALUE = 102,      /* inner map lookup returned NULL */
	PROG_HELPER_FAILED = 103, /* a helper (timer, copy_from_user, ...) failed */
};

/* Context of the sleepable syscall program: the user address it reads (the page
 * that userfaultfd holds back). */
struct uaf_args {
	__u64 uaddr;
};

#endif
