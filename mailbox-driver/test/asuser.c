// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * asuser.c - run a command as another uid/gid (the test VM's busybox has no
 * setuidgid): asuser UID CMD [ARG...]. Drops the supplementary groups, sets the gid
 * and uid to UID, execs CMD (by its path).
 */
#define _GNU_SOURCE
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	uid_t uid;

	if (argc < 3) {
		fprintf(stderr, "usage: asuser UID CMD [ARG...]\n");
		return 2;
	}
	uid = (uid_t)strtoul(argv[1], NULL, 10);
	if (setgroups(0, NULL) || setgid(uid) || setuid(uid)) {
		perror("asuser");
		return 2;
	}
	execv(argv[2], argv + 2);
	perror("asuser: exec");
	return 127;
}
