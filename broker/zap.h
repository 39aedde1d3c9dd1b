/*
 * zap.h - the ZAP handler (ZeroMQ RFC 27): who is on the other end of a connection.
 *
 * Owns the inproc://zeromq.zap.01 REP socket, bound before any listener so that no connection
 * is ever accepted unauthenticated. It answers each request with a User-Id, the participant's
 * address, or refuses it. Deny by default: on plain listeners a self-declared PLAIN user name is
 * believed only with --insecure-plain-identities, and every other mechanism is refused.
 */
#ifndef BRK_ZAP_H
#define BRK_ZAP_H

#include <stdint.h>
#include <uv.h>

#include "config.h"

/* The ZAP domain the broker's listeners use. */
#define BRK_ZAP_DOMAIN "amtsbote"

typedef struct brk_zap brk_zap_t;

/*
 * Binds the handler in `zctx` and watches it on `loop`. Returns NULL after logging why (e.g.
 * another ZAP handler is bound in that context).
 */
brk_zap_t *brk_zap_new(uv_loop_t *loop, void *zctx, const brk_config_t *cfg);

/*
 * From now on every new connection is refused (the broker is stopping). Connections made
 * before stay: unbinding the listener instead would drop them with their calls in flight.
 */
void brk_zap_refuse_all(brk_zap_t *self);

/* Counts of accepted and refused handshakes. */
void brk_zap_counts(const brk_zap_t *self, uint64_t *accepted, uint64_t *refused);

/* Unbinds and frees; accepts NULL and nulls *self_p. */
void brk_zap_destroy(brk_zap_t **self_p);

#endif
