/*
 * relay.h - the byte pump between a TLS stream and a plain stream on one libuv loop.
 *
 * The same code on both ends of a mutual-TLS connection: the broker's gateway (TLS from a
 * participant, plain to the ROUTER) and the client's relay (plain from the DEALER, TLS to the
 * broker). Owns the writes and the flow control between the two streams; the owner keeps the
 * streams, reads them, and closes everything.
 */
#ifndef AB_RELAY_H
#define AB_RELAY_H

#include <stdint.h>
#include <uv.h>

#include "tls.h"

/* With this much waiting to be written to one side, the other side is not read (until half);
 * the default of ab_relay_t's queue_high. */
#define AB_RELAY_QUEUE_HIGH (4u * 1024 * 1024)

typedef struct ab_relay {
    uv_stream_t *tls_side;   /* carries TLS records */
    uv_stream_t *plain_side; /* carries the ZMTP bytes */
    ab_tls_session_t *tls;
    uv_alloc_cb alloc;
    uv_read_cb tls_read, plain_read; /* restarted by flow control */
    int tls_up, plain_up;            /* connected: may be written to and read from */
    int tls_paused, plain_paused;    /* reading stopped by flow control */
    int closing;                     /* set by the owner when it closes the streams */
    size_t queue_high;               /* 0: AB_RELAY_QUEUE_HIGH */
} ab_relay_t;

/* Plaintext that arrives before the other side is ready: kept, up to AB_RELAY_HOLD_MAX. */
#define AB_RELAY_HOLD_MAX (1024 * 1024)

typedef struct ab_relay_held {
    uint8_t *data;
    size_t n, cap;
} ab_relay_held_t;

/* Keeps `len` more bytes. Returns 0, or -1 when that would pass the limit or memory is short. */
int ab_relay_hold(ab_relay_held_t *h, const void *data, size_t len);

/* Frees what is kept; the holder is empty and usable afterwards. */
void ab_relay_held_free(ab_relay_held_t *h);

/* Queues `len` plaintext bytes on the plain side (copied). Returns 0 or a libuv error. */
int ab_relay_to_plain(ab_relay_t *r, const void *data, size_t len);

/* Sends what TLS has ready to the TLS side, as one write. Returns 0 or a libuv error. */
int ab_relay_flush_tls(ab_relay_t *r);

#endif
