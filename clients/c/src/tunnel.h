/*
 * tunnel.h - the client side of mutual TLS: a relay from plain loopback TCP to a broker's tls://
 * listener, on a libuv loop of its own.
 *
 * It owns a listening socket on a loopback address, one TLS session (common/tls.h, client side)
 * per accepted connection, and the TCP connection to the broker each session opens. Whatever
 * connects to the local port (libamtsbote's own DEALER, or any ZeroMQ binding when it runs as the
 * `amtsbote tunnel` sidecar) speaks ZMTP through it with the NULL mechanism: the broker takes the
 * participant from this tunnel's client certificate, so whoever can reach the local port acts as
 * that participant. Hence loopback only.
 *
 * The broker's certificate is verified against the CA file and the host named in the broker's
 * URI. A session whose TLS setup fails (the broker's certificate, or the broker refusing ours)
 * closes the local connection and leaves its reason for ab_tunnel_failure().
 *
 * Threads: new, start, run and destroy are called from one thread; ab_tunnel_local_uri() and
 * ab_tunnel_failure() from any. Internal to libamtsbote and the CLI, not part of the public API.
 */
#ifndef AB_TUNNEL_H
#define AB_TUNNEL_H

#include <stddef.h>
#include <stdint.h>

#include "tls.h"

typedef struct ab_tunnel ab_tunnel_t;

/* One line (no newline, never payload contents) about a session; called on the loop's thread. */
typedef void(ab_tunnel_log_fn)(void *arg, const char *line);

typedef struct ab_tunnel_config {
    ab_tls_config_t tls;   /* cert, key, key_passphrase, ca, crl (borrowed during new only) */
    const char *broker;    /* tls://HOST:PORT; HOST is checked against the broker's certificate */
    const char *listen;    /* tcp://ADDR:PORT on loopback; NULL or port 0 or '*': a free port */
    uint32_t timeout_ms;   /* TCP connect + TLS handshake to the broker (0: 10000) */
    ab_tunnel_log_fn *log; /* NULL: silent (the library never logs) */
    void *log_arg;
} ab_tunnel_config_t;

/* What the last failed session ran into. */
enum {
    AB_TUNNEL_OK = 0,
    AB_TUNNEL_UNREACHABLE = 1, /* no TCP connection to the broker, or none in time */
    AB_TUNNEL_TLS = 2,         /* the TLS setup failed: either side refused the other */
};

/*
 * Loads the TLS context, resolves the broker's host and listens on the local address. Returns
 * NULL with a sentence in `err` naming the file, option or address at fault, and in *rc
 * AB_EINVAL (an address), AB_ECONNECT (the broker's host cannot be resolved, or the local port
 * is taken), AB_EIO (a certificate, key, CA or CRL file) or AB_ENOMEM.
 */
ab_tunnel_t *ab_tunnel_new(const ab_tunnel_config_t *cfg, int *rc, char *err, size_t errlen);

/* The local endpoint as tcp://127.0.0.1:PORT, for zmq_connect(). Borrowed, valid until destroy. */
const char *ab_tunnel_local_uri(const ab_tunnel_t *self);

/* The participant address in this tunnel's own certificate, or "" when it names none. */
const char *ab_tunnel_participant(const ab_tunnel_t *self);

/*
 * Runs the loop on the calling thread until SIGINT or SIGTERM (for `amtsbote tunnel`). Returns 0,
 * or -1 when it was started already. Signal handlers are libuv's, only while it runs.
 */
int ab_tunnel_run(ab_tunnel_t *self);

/* Runs the loop on a thread of its own until ab_tunnel_destroy(). Returns 0 or -1 (no thread). */
int ab_tunnel_start(ab_tunnel_t *self);

/*
 * How many sessions failed so far, and the kind (AB_TUNNEL_*) and reason of the last one in
 * `why` (a sentence meant for the user, e.g. "the broker's certificate: hostname mismatch").
 * Thread-safe.
 */
uint64_t ab_tunnel_failure(ab_tunnel_t *self, int *kind, char *why, size_t len);

/* Sessions whose TLS setup succeeded so far (the broker sent data through them). Thread-safe. */
uint64_t ab_tunnel_established(ab_tunnel_t *self);

/* Stops the thread (if started), closes every session and frees. Accepts NULL; safe twice. */
void ab_tunnel_destroy(ab_tunnel_t **self_p);

#endif
