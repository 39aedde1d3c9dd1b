/*
 * relay.c - writes with a copy per write, and flow control between the two sides.
 */
#include "relay.h"

#include <stdlib.h>
#include <string.h>

static size_t
s_high(const ab_relay_t *r)
{
    return r->queue_high ? r->queue_high : AB_RELAY_QUEUE_HIGH;
}

/* After a write to `to`: stop reading the other side while `to` has too much queued. */
static void
s_throttle(ab_relay_t *r, uv_stream_t *to)
{
    if (uv_stream_get_write_queue_size(to) <= s_high(r))
        return;
    if (to == r->tls_side && r->plain_up && !r->plain_paused) {
        uv_read_stop(r->plain_side);
        r->plain_paused = 1;
    } else if (to == r->plain_side && r->tls_up && !r->tls_paused) {
        uv_read_stop(r->tls_side);
        r->tls_paused = 1;
    }
}

static void
s_on_written(uv_write_t *req, int status)
{
    (void)status; /* a failed write shows as a read error or EOF on the same stream */
    ab_relay_t *r = req->data;
    uv_stream_t *to = req->handle;
    free(req);
    /* cancelled writes of a closing relay come before its close callbacks: `r` is alive */
    if (r->closing || uv_stream_get_write_queue_size(to) > s_high(r) / 2)
        return;
    if (to == r->tls_side && r->plain_paused) {
        r->plain_paused = 0;
        uv_read_start(r->plain_side, r->alloc, r->plain_read);
    } else if (to == r->plain_side && r->tls_paused) {
        r->tls_paused = 0;
        uv_read_start(r->tls_side, r->alloc, r->tls_read);
    }
}

/* Writes the `len` bytes already placed after `req` to `to`. */
static int
s_write(ab_relay_t *r, uv_write_t *req, uv_stream_t *to, size_t len)
{
    req->data = r;
    uv_buf_t b = uv_buf_init((char *)(req + 1), (unsigned)len);
    int rc = uv_write(req, to, &b, 1, s_on_written);
    if (rc != 0) {
        free(req);
        return rc;
    }
    s_throttle(r, to);
    return 0;
}

int
ab_relay_to_plain(ab_relay_t *r, const void *data, size_t len)
{
    uv_write_t *req = malloc(sizeof *req + len);
    if (!req)
        return UV_ENOMEM;
    memcpy(req + 1, data, len);
    return s_write(r, req, r->plain_side, len);
}

int
ab_relay_flush_tls(ab_relay_t *r)
{
    size_t n = ab_tls_session_pending(r->tls);
    if (n == 0 || r->closing || !r->tls_up)
        return 0;
    uv_write_t *req = malloc(sizeof *req + n);
    if (!req)
        return UV_ENOMEM;
    size_t got = ab_tls_session_take(r->tls, req + 1, n);
    return s_write(r, req, r->tls_side, got);
}

int
ab_relay_hold(ab_relay_held_t *h, const void *data, size_t len)
{
    if (h->n + len > AB_RELAY_HOLD_MAX)
        return -1;
    if (h->n + len > h->cap) {
        size_t cap = (h->n + len) * 2;
        uint8_t *p = realloc(h->data, cap);
        if (!p)
            return -1;
        h->data = p;
        h->cap = cap;
    }
    memcpy(h->data + h->n, data, len);
    h->n += len;
    return 0;
}

void
ab_relay_held_free(ab_relay_held_t *h)
{
    free(h->data);
    h->data = NULL;
    h->n = h->cap = 0;
}
