/*
 * zap.h - the ZAP handler (ZeroMQ RFC 27): who is on the other end of a connection.
 *
 * Owns the inproc://zeromq.zap.01 REP socket, bound before any listener so that no connection
 * is ever accepted unauthenticated. It answers each request with a User-Id, the participant's
 * address, or refuses it. Deny by default: on plain listeners a self-declared PLAIN user name is
 * believed only with --insecure-plain-identities. On the internal endpoint (NULL mechanism) a
 * connection is accepted only from a loopback address that the TLS gateway registered for a
 * verified session, and its User-Id is that session's participant. Everything else is refused.
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
 * Connections to the internal endpoint from `address` (127.x.y.z, a TLS session's relay) are
 * `participant`. Returns 0 or AB_ENOMEM.
 */
int brk_zap_map_address(brk_zap_t *self, const char *address, const char *participant);

/* The TLS session of `address` is gone: connections from it are refused again. */
void brk_zap_unmap_address(brk_zap_t *self, const char *address);

/*
 * From now on every new connection is refused (the broker is stopping). Connections made
 * before stay: unbinding the listener instead would drop them with their calls in flight.
 */
void brk_zap_refuse_all(brk_zap_t *self);

/* Counts of accepted and refused handshakes. */
void brk_zap_counts(const brk_zap_t *self, uint64_t *accepted, uint64_t *refused);

/* Calls fn for every accepted connection with its transport: "tls" (a TLS gateway session) or
 * "plain" (PLAIN on a tcp:// or ipc:// listener). */
void brk_zap_on_accept(brk_zap_t *self, void (*fn)(void *arg, const char *transport), void *arg);

/* Unbinds and frees; accepts NULL and nulls *self_p. */
void brk_zap_destroy(brk_zap_t **self_p);

#endif
