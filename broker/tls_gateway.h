/*
 * tls_gateway.h - mutual TLS in front of the ZeroMQ ROUTER.
 *
 * Owns the tls:// listeners and one session per client: it accepts the TCP connection,
 * completes the TLS handshake with a client certificate verified against the CA (and CRL),
 * takes the participant address from the certificate's SAN URI, and relays the decrypted ZMTP
 * stream to the broker's internal endpoint from a loopback source address of the session's
 * own (127.x.y.z, reused only after the session is gone), which the ZAP handler maps back to the
 * participant. libzmq never sees TLS; the core never learns how a peer was authenticated.
 */
#ifndef BRK_TLS_GATEWAY_H
#define BRK_TLS_GATEWAY_H

#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "zap.h"

typedef struct brk_tls_gateway brk_tls_gateway_t;

typedef struct brk_tls_stats {
    uint64_t accepted; /* handshakes completed with a valid identity */
    uint64_t refused;  /* handshakes refused (certificate, identity, timeout, protocol) */
    uint64_t sessions; /* open now */
} brk_tls_stats_t;

/*
 * Makes the TLS context from the config (certificate, key, CA, CRL) and relays to
 * `internal_port` on 127.0.0.1. Returns NULL with the reason (naming the file) in `err`.
 */
brk_tls_gateway_t *brk_tls_gateway_new(uv_loop_t *loop, const brk_config_t *cfg, brk_zap_t *zap,
                                       int internal_port, char *err, size_t errlen);

/*
 * Listens on `uri` (tls://HOST:PORT; PORT '*' or 0 picks one). Writes the bound URI to `bound`.
 * Returns 0 or a negative libuv error (the message in `err`).
 */
int brk_tls_gateway_listen(brk_tls_gateway_t *self, const char *uri, char *bound, size_t cap,
                           char *err, size_t errlen);

/*
 * Reads certificate, key, CA and CRL again (SIGHUP). On an error the old ones stay and the
 * reason, naming the file, is in `err` (returns -1). On success new handshakes use the new
 * files, and every open session whose certificate no longer verifies (e.g. now revoked) is
 * closed. Returns the number of sessions closed.
 */
int brk_tls_gateway_reload(brk_tls_gateway_t *self, char *err, size_t errlen);

/* Milliseconds since any session last moved bytes (to let answers drain before stopping). */
uint64_t brk_tls_gateway_quiet_ms(const brk_tls_gateway_t *self);

/* Stops accepting; sessions stay. */
void brk_tls_gateway_stop_listening(brk_tls_gateway_t *self);

void brk_tls_gateway_stats(const brk_tls_gateway_t *self, brk_tls_stats_t *out);

/* Calls fn for every refused handshake with its category: "handshake" (certificate or protocol),
 * "identity" (no valid participant address), "timeout", "capacity", "participant-capacity",
 * "client-left". */
/* Called when a session that completed its handshake ends, with the 127.x address its relay
 * connection to the internal listener came from (brk_proto_session_end). */
void brk_tls_gateway_on_session_end(brk_tls_gateway_t *self,
                                    void (*fn)(void *arg, const char *address), void *arg);

void brk_tls_gateway_on_refused(brk_tls_gateway_t *self,
                                void (*fn)(void *arg, const char *category), void *arg);

/* Sessions per participant are bounded by `limits` (borrowed; NULL: no bound per participant):
 * one over is refused after its handshake, category "participant-capacity". */
struct brk_quota;
void brk_tls_gateway_set_limits(brk_tls_gateway_t *self, struct brk_quota *limits);

/* Stops reading every session of `participant` for `ms` milliseconds (it is over its rate: its
 * further requests wait in TCP). A session already paused keeps its pause. Cannot fail. */
void brk_tls_gateway_pause(brk_tls_gateway_t *self, const char *participant, unsigned ms);

/* Closes every session and listener; the gateway is freed once libuv has closed them all. */
void brk_tls_gateway_destroy(brk_tls_gateway_t **self_p);

#endif
