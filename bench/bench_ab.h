/*
 * bench_ab.h - the part of an Amtsbote provider child that bench_calls and bench_idle share:
 * after the offer, say so on the ready pipe and serve until the parent closes the control pipe.
 * Needs libamtsbote (bench_util stays libc-only).
 */
#ifndef BENCH_AB_H
#define BENCH_AB_H

#include "amtsbote.h"

/*
 * `rc` is the result of connecting and offering with `c` (NULL when the client could not be
 * made). On failure writes 'F' to ready_fd, says why on stderr as `prog`, destroys the client and
 * returns 1. Otherwise writes 'R', closes ready_fd, processes the client until `ctl` becomes
 * readable (the parent closed it) or the client fails, destroys it and returns 0, or 1 after a
 * failure (said on stderr).
 */
int bench_ab_serve(ab_client_t *c, int rc, int ready_fd, int ctl, const char *prog);

#endif
