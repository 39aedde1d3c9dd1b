/*
 * bench_ab.h - the Amtsbote client parts the load generators share (bench_calls, bench_idle,
 * bench_flood): a participant's certificate from a certs/pki.sh directory, the echo handler, and
 * the provider child's life: after the offer, say so on the ready pipe and serve until the
 * parent closes the control pipe. Needs libamtsbote (bench_util stays libc-only).
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

/* Makes `c` the participant `who` for a tls:// broker: `pki`/WHO.crt and .key, verified against
 * `pki`/ca/chain.pem (a certs/pki.sh directory). Returns 0 or the AB_E* code of
 * ab_client_set_tls(). */
int bench_ab_pki_identity(ab_client_t *c, const char *pki, const char *who);

/* An ab_handler_t that answers every call with its own payload; `arg` is unused. */
void bench_ab_echo(ab_client_t *client, ab_request_t *req, void *arg);

#endif
