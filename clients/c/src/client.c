/*
 * client.c - libamtsbote: one DEALER connection to a broker, the calls it has in flight, the
 * services it offers and the requests it still has to answer.
 *
 * Everything runs on the caller's thread. Blocking functions (ab_client_connect, ab_call, ab_offer,
 * ab_withdraw) are built on the same machinery as the asynchronous ones: they drive
 * ab_client_process() until their own answer has arrived, so while they wait the client still
 * serves calls to its own offers, runs callbacks and sends heartbeats. Handlers and callbacks may
 * therefore run nested inside a blocking call; they may call the API themselves, but not
 * ab_client_destroy().
 *
 * Requests, calls and control messages (OFFER, WITHDRAW) are matched by an 8-byte correlation id
 * that counts up per client. Pending answers live in a hash table keyed by that counter and in a
 * min-heap ordered by their expiry, so timeouts cost O(log n) however many calls are in flight.
 * Timers (expiry, heartbeats) read the kernel's coarse monotonic clock, a few ms behind the precise
 * one and a fraction of its cost per call; the grace and intervals they serve are far longer.
 *
 * Sends made while ab_client_process() dispatches received messages (replies from handlers, calls
 * from callbacks, heartbeats) are queued and sent back to back when the batch of received messages
 * is done: zmq_send calls spread between the handling of each message would wake libzmq's I/O
 * thread once per message, where a burst lets it write many with one system call. Sends from the
 * application's own code, outside of dispatch, go out at once.
 *
 * The library never logs; every failure leaves a sentence in last_error.
 */
#include "amtsbote.h"
#include "heap.h"
#include "mailbox.h"
#include "tunnel.h"
#include "wire.h"

#include <errno.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define S_CONNECT_MS 5000    /* ab_client_connect() default */
#define S_CALL_MS 30000      /* ab_call() default, the broker's default deadline too */
#define S_CONTROL_MS 5000    /* OFFER and WITHDRAW wait this long for the broker */
#define S_GRACE_MS 2000      /* the broker answers DEADLINE_EXCEEDED; we wait a little longer */
#define S_HEARTBEAT_MS 1000  /* when the broker's HELLO names none */
#define S_BUDGET 512         /* messages per ab_client_process() */
#define S_LINGER_MS 1000     /* how long close waits for unsent messages */
#define S_HWM 100000         /* queued messages per direction */
#define S_RUN_SLICE_MS 500   /* ab_client_run() re-checks the stop flag at least this often */
#define S_WAIT_SLICE_MS 1000 /* blocking calls wake at least this often */
#define S_MONITOR_MS 100     /* how often the connection monitor is looked at */
#define S_HOLD_MS 1          /* longest a queued send waits for the rest of its batch */
#define S_CORR_LEN 8         /* our correlation ids: a big-endian counter */
#define S_MAX_CORR 64        /* the protocol's limit for a correlation id */
#define S_ERRLEN (AB_MAX_ERROR_TEXT + 256)
#define S_OUT_MAX 512           /* messages queued during dispatch before a burst is sent */
#define S_OUT_BYTES (64 * 1024) /* bytes of encoded headers queued, likewise */
#define S_FREE_PENDING_MAX 256  /* spare pending entries kept for reuse */
#define S_FREE_REQUESTS_MAX 64  /* spare requests kept for reuse */
#define S_MONITOR_EP "inproc://amtsbote-client-monitor"
#define S_TUNNEL_SLICE_MS 50 /* connect looks this often for the tunnel's TLS failures */
#define S_PASSPHRASE_MAX 1024
#define S_RECENT_EVENTS 1024 /* ephemeral events remembered to drop the copies of one */

/* Where a blocking caller waits for its answer; lives on that caller's stack. */
typedef struct {
    int done;
    int status;
    void *reply; /* malloc'd copy of the payload, only for ab_call() */
    size_t reply_len;
    int want_reply;
    char errtext[S_ERRLEN];
} s_sync_t;

/*
 * An answer we are waiting for: an async call (cb), an async send (send_cb), or a blocking call,
 * send or control message (sync).
 */
typedef struct s_pending {
    uint64_t seq;
    ab_heap_node_t expires; /* .at: when the library gives up waiting */
    ab_call_cb *cb;
    ab_send_cb *send_cb;
    uint8_t msg_id[AB_MESSAGE_ID_LEN]; /* SEND, PUBLISH: the message's id, for send_cb */
    void *arg;
    s_sync_t *sync;
    uint32_t wait_ms; /* for the timeout's text */
    int kind;         /* the Kind we sent */
    struct s_pending *next_free;
    char service[AB_MAX_NAME + 1]; /* for error texts */
} s_pending_t;

typedef struct s_offer {
    struct s_offer *next;
    ab_handler_fn *handler;
    void *arg;
    size_t len;
    char service[AB_MAX_NAME + 1];
} s_offer_t;

/* A subscription made with ab_subscribe(), repeated after a reconnect. */
typedef struct s_sub {
    struct s_sub *next;
    ab_message_fn *fn;
    void *arg;
    uint32_t credit;
    char pattern[AB_MAX_NAME + 1];
    char durable[AB_MAX_NAME + 1]; /* "" for an ephemeral subscription */
} s_sub_t;

/* A delivered message, receipt or event, owned by the application until ab_ack/_free. */
struct ab_message {
    ab_client_t *client;       /* NULL once the client is gone */
    ab_message_t *prev, *next; /* in the client's list */
    int kind;                  /* AB_MSG_* */
    int receipt;               /* AB_RECEIPT_* or 0 */
    uint64_t sequence, timestamp_ms;
    uint32_t attempt;
    zmq_msg_t payload;
    char *error;                            /* malloc'd, or NULL */
    char id_hex[2 * AB_MESSAGE_ID_LEN + 1]; /* its message id */
    char about_hex[2 * 64 + 1];             /* receipt: the correlation id */
    char sender[AB_MAX_NAME + 1];
    char recipient[AB_MAX_NAME + 1];
    char topic[AB_MAX_NAME + 1];
    char schema[AB_MAX_NAME + 1];
    char purpose[AB_MAX_NAME + 1];
    char subscription[AB_MAX_NAME + 1];
    int has_key;                       /* remembered when acknowledged: */
    char key_name[AB_MAX_NAME + 3];    /* ... s_dedup_key()'s name */
    uint8_t key_id[AB_MESSAGE_ID_LEN]; /* ... and id */
};

struct ab_request {
    ab_client_t *client;       /* NULL once the client is gone */
    ab_request_t *prev, *next; /* in the client's list, or its free list (next only) */
    uint64_t deadline_at;
    zmq_msg_t payload;
    size_t corr_len;
    uint8_t corr[S_MAX_CORR];
    int has_id;                                 /* the CALL carried a message id */
    uint8_t id[AB_MESSAGE_ID_LEN];              /* ... which is this */
    char message_id[2 * AB_MESSAGE_ID_LEN + 1]; /* its hex, written when first asked for */
    char caller[AB_MAX_NAME + 1];
    char purpose[AB_MAX_NAME + 1];
    char method[AB_MAX_NAME + 1];
};

/* A slot of the pending entries' table. */
typedef struct {
    uint64_t seq;
    s_pending_t *p; /* NULL: free */
} s_slot_t;

/* A message queued during dispatch: its encoded header in out_buf and its payload frame. */
typedef struct {
    uint32_t off, len;
    int has_payload;
    uint64_t seq; /* the pending entry of a queued CALL, 0 for anything else */
    zmq_msg_t payload;
} s_out_t;

/* A queued CALL that could not be sent, and the zmq errno of the failure. */
typedef struct {
    uint64_t seq;
    int err;
} s_failed_t;

struct ab_client {
    void *ctx;
    void *sock;
    ab_tunnel_t *tunnel; /* the TLS relay of a tls:// connection, on its own thread */
    char *tls_cert, *tls_key, *tls_pass_file, *tls_ca, *tls_crl; /* ab_client_set_tls() */
    void *mon; /* PAIR receiving the DEALER's monitor events, to notice reconnects */
    int fd;
    int connected; /* the broker's HELLO has arrived */
    int closing;   /* inside ab_client_destroy() */
    ab_wire_decoder_t *dec;
    char participant[AB_MAX_NAME + 1];
    char purpose[AB_MAX_NAME + 1];
    int classification; /* amtsbote.v1.Classification of later calls; 0 none */
    uint32_t heartbeat_ms;
    uint64_t last_send_ms;
    uint64_t next_monitor_ms; /* the monitor is looked at every S_MONITOR_MS, not per process */
    int link_down;            /* the monitor said DISCONNECTED and no handshake since */
    int unsettled;            /* a send since the last receive that said EAGAIN */
    uint64_t next_seq;
    /* the HELLO exchange during ab_client_connect() */
    uint8_t hello_id[AB_MESSAGE_ID_LEN];
    int hello_waiting;
    int hello_status; /* 1: HELLO arrived, < 0: the broker answered with an error */
    s_slot_t *table;  /* the pending entries by seq: open addressing, at most half full */
    size_t table_cap, table_len;
    ab_heap_t heap;
    size_t n_async;
    s_offer_t *offers;
    ab_request_t *requests;
    /* the mailbox (ab_inbox) and the subscriptions (ab_subscribe) */
    int inbox_on;
    uint32_t inbox_credit;
    ab_message_fn *inbox_fn;
    void *inbox_arg;
    s_sub_t *subs;
    ab_message_t *messages;    /* delivered and not yet acknowledged or freed */
    ab_dedup_t *dedup;         /* acknowledged deliveries, made at the first ACK */
    ab_dedup_t *recent_events; /* ids of ephemeral events just handled (s_ephemeral_repeat) */
    uint64_t duplicates;       /* redeliveries of those, acknowledged again and dropped */
    volatile sig_atomic_t stop;
    char last_error[S_ERRLEN];
    uint64_t refused_replies; /* replies of ours the broker refused (SCHEMA_INVALID, ...) */
    char last_refusal[S_ERRLEN];
    /* sends queued during dispatch (see the top of this file) */
    int dispatching;      /* depth of ab_client_process() calls running */
    uint64_t out_since;   /* when the oldest queued send was queued */
    uint32_t max_payload; /* the broker's limit from its HELLO; 0 when unknown */
    int no_queue;         /* callbacks of failed queued calls run: their sends go out at once */
    s_out_t *out;         /* S_OUT_MAX entries, allocated at the first queued send */
    uint8_t *out_buf;     /* S_OUT_BYTES of encoded headers */
    size_t nout, out_used;
    s_failed_t *failed; /* queued calls whose send failed, completed at the end of the batch */
    size_t nfailed, failed_cap;
    s_pending_t *free_pending;
    size_t nfree_pending;
    ab_request_t *free_requests;
    size_t nfree_requests;
    uint8_t buf[AB_MAX_HEADER_BYTES];
};

/* ---- small helpers ------------------------------------------------------------------------ */

static void s_tls_free(ab_client_t *self);
static int s_link_down(ab_client_t *self);

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
s_seterr(ab_client_t *self, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(self->last_error, sizeof self->last_error, fmt, ap);
    va_end(ap);
}

/* Sets last_error and returns `rc`, so that failures read `return s_fail(...)`. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int
s_fail(ab_client_t *self, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(self->last_error, sizeof self->last_error, fmt, ap);
    va_end(ap);
    return rc;
}

static void
s_put_be64(uint8_t out[8], uint64_t v)
{
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint64_t
s_get_be64(const uint8_t in[8])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | in[i];
    return v;
}

/*
 * Monotonic milliseconds for the client's timers: the coarse clock, at most a tick (a few ms)
 * behind ab_now_ms() on the same time base. Not for a request's deadline: a handler that saw it
 * pass before the broker's own deadline fired would turn the caller's DEADLINE_EXCEEDED into a
 * PROVIDER_ERROR.
 */
static uint64_t
s_now(void)
{
#ifdef CLOCK_MONOTONIC_COARSE
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0)
        return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
#endif
    return ab_now_ms();
}

/* Copies at most cap - 1 bytes of `src` (NULL: "") and a NUL; like snprintf "%s", at a copy's cost.
 */
static void
s_copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = src ? strnlen(src, cap - 1) : 0;
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

/* ---- the pending answers: a hash by seq and a min-heap by expiry -------------------------- */

/* Fibonacci hashing: the counter's consecutive values land far apart, whatever the table size. */
static size_t
s_slot_home(const ab_client_t *self, uint64_t seq)
{
    return (size_t)((seq * UINT64_C(0x9E3779B97F4A7C15)) >> 32) & (self->table_cap - 1);
}

/* The slot holding `seq`, or SIZE_MAX. Bounded: the table always has free slots. */
static size_t
s_slot_find(const ab_client_t *self, uint64_t seq)
{
    if (self->table_len == 0)
        return SIZE_MAX;
    size_t mask = self->table_cap - 1;
    for (size_t i = s_slot_home(self, seq);; i = (i + 1) & mask) {
        if (!self->table[i].p)
            return SIZE_MAX;
        if (self->table[i].seq == seq)
            return i;
    }
}

static s_pending_t *
s_pending_find(const ab_client_t *self, uint64_t seq)
{
    size_t i = s_slot_find(self, seq);
    return i == SIZE_MAX ? NULL : self->table[i].p;
}

static void
s_slot_put(ab_client_t *self, s_pending_t *p)
{
    size_t mask = self->table_cap - 1;
    size_t i = s_slot_home(self, p->seq);
    while (self->table[i].p)
        i = (i + 1) & mask;
    self->table[i].seq = p->seq;
    self->table[i].p = p;
    self->table_len++;
}

/* Makes room for one more entry, keeping the table at most half full. Returns 0 or AB_ENOMEM. */
static int
s_table_reserve(ab_client_t *self)
{
    if (2 * (self->table_len + 1) <= self->table_cap)
        return 0;
    size_t old_cap = self->table_cap;
    s_slot_t *old = self->table;
    size_t cap = old_cap ? old_cap * 2 : 64;
    s_slot_t *table = calloc(cap, sizeof *table);
    if (!table)
        return AB_ENOMEM;
    self->table = table;
    self->table_cap = cap;
    self->table_len = 0;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].p)
            s_slot_put(self, old[i].p);
    free(old);
    return 0;
}

/* Empties slot `i`, moving later entries of its probe run back so that every find still works. */
static void
s_slot_delete(ab_client_t *self, size_t i)
{
    size_t mask = self->table_cap - 1;
    self->table_len--;
    for (;;) {
        self->table[i].p = NULL;
        size_t j = i;
        for (;;) {
            j = (j + 1) & mask;
            if (!self->table[j].p)
                return;
            /* the entry at j stays when its home lies cyclically in (i, j] */
            size_t home = s_slot_home(self, self->table[j].seq);
            if (i <= j ? (i < home && home <= j) : (i < home || home <= j))
                continue;
            break;
        }
        self->table[i] = self->table[j];
        i = j;
    }
}

/* A pending entry from the free list or malloc; fields are set by the caller. NULL: no memory. */
static s_pending_t *
s_pending_new(ab_client_t *self)
{
    s_pending_t *p = self->free_pending;
    if (p) {
        self->free_pending = p->next_free;
        self->nfree_pending--;
        return p;
    }
    return malloc(sizeof *p);
}

/* Frees `p` (out of hash and heap), keeping a few for the next calls. */
static void
s_pending_release(ab_client_t *self, s_pending_t *p)
{
    if (self->nfree_pending >= S_FREE_PENDING_MAX) {
        free(p);
        return;
    }
    p->next_free = self->free_pending;
    self->free_pending = p;
    self->nfree_pending++;
}

/* The pending answer that expires first, or NULL. */
static s_pending_t *
s_first_pending(const ab_client_t *self)
{
    ab_heap_node_t *n = ab_heap_top(&self->heap);
    return n ? AB_CONTAINER_OF(n, s_pending_t, expires) : NULL;
}

/* Adds `p` to hash and heap. Returns 0 or AB_ENOMEM (and then `p` is in neither). */
static int
s_pending_add(ab_client_t *self, s_pending_t *p)
{
    if (s_table_reserve(self) != 0 || ab_heap_push(&self->heap, &p->expires) != 0)
        return AB_ENOMEM;
    s_slot_put(self, p);
    if (p->cb || p->send_cb)
        self->n_async++;
    return 0;
}

/* Takes `p` out of hash and heap; the caller then owns it. */
static void
s_pending_remove(ab_client_t *self, s_pending_t *p)
{
    size_t slot = s_slot_find(self, p->seq);
    if (slot != SIZE_MAX)
        s_slot_delete(self, slot);
    ab_heap_remove(&self->heap, &p->expires);
    if (p->cb || p->send_cb)
        self->n_async--;
}

/*
 * Completes a pending answer that is already out of hash and heap, and frees it. `data` is the
 * reply payload (status 0) or ignored; `text` the error text (status < 0).
 */
static void
s_complete(ab_client_t *self, s_pending_t *p, int status, const void *data, size_t len,
           const char *text)
{
    if (p->sync) {
        s_sync_t *sync = p->sync;
        sync->status = status;
        if (status == 0 && sync->want_reply) {
            sync->reply = malloc(len ? len : 1);
            if (sync->reply) {
                if (len)
                    memcpy(sync->reply, data, len);
                sync->reply_len = len;
            } else {
                sync->status = AB_ENOMEM;
                snprintf(sync->errtext, sizeof sync->errtext,
                         "no memory for a reply of %zu bytes from '%s'", len, p->service);
            }
        } else if (status != 0) {
            snprintf(sync->errtext, sizeof sync->errtext, "%s", text ? text : "");
        }
        sync->done = 1;
        s_pending_release(self, p);
        return;
    }
    if (p->send_cb) {
        ab_send_cb *send_cb = p->send_cb;
        void *send_arg = p->arg;
        char hex[2 * AB_MESSAGE_ID_LEN + 1];
        ab_hex(p->msg_id, AB_MESSAGE_ID_LEN, hex);
        s_pending_release(self, p);
        send_cb(self, status, hex, status == 0 ? "" : text ? text : "", send_arg);
        return;
    }
    ab_call_cb *cb = p->cb;
    void *arg = p->arg;
    s_pending_release(self, p);
    if (status == 0)
        cb(self, 0, len ? data : "", len, "", arg);
    else
        cb(self, status, NULL, 0, text ? text : "", arg);
}

/* ---- sending ------------------------------------------------------------------------------ */

static int
s_zmq_fail(ab_client_t *self, const char *what)
{
    int e = errno;
    if (e == EAGAIN)
        return s_fail(self, AB_EUNAVAILABLE,
                      "cannot %s: the connection to the broker is down, or %d messages are "
                      "already queued for it",
                      what, S_HWM);
    if (e == ETERM || e == ENOTSOCK)
        return s_fail(self, AB_ESTATE, "cannot %s: the client is closed", what);
    return s_fail(self, AB_EIO, "cannot %s: %s", what, zmq_strerror(e));
}

/* Sets the version and, when unset, a new message id kept in `msgid` until the encode. */
static void
s_prepare(ab_header_t *hdr, uint8_t msgid[AB_MESSAGE_ID_LEN])
{
    hdr->version = AB_PROTOCOL_VERSION;
    if (hdr->message_id.len == 0) {
        ab_uuid7(msgid);
        hdr->message_id.data = msgid;
        hdr->message_id.len = AB_MESSAGE_ID_LEN;
    }
}

/*
 * Non-zero while the broker holds state for this connection that ends when it misses its
 * heartbeats: offers, credit on the mailbox, subscriptions. Such a client sends heartbeats and,
 * when the broker forgot it (a reconnect, an unasked HELLO), repeats what makes that state.
 */
static int
s_live(const ab_client_t *self)
{
    return self->offers || self->inbox_on || self->subs;
}

/* Notes a send for the heartbeat timer, which only a live client has. */
static void
s_sent(ab_client_t *self)
{
    if (s_live(self))
        self->last_send_ms = s_now();
}

/*
 * Remembers a queued CALL whose send failed. Without memory for that, its pending entry is left
 * to expire: the callback still runs exactly once, with AB_ETIMEDOUT.
 */
static void
s_note_failed(ab_client_t *self, uint64_t seq, int err)
{
    if (self->nfailed == self->failed_cap) {
        size_t cap = self->failed_cap ? self->failed_cap * 2 : 16;
        s_failed_t *failed = realloc(self->failed, cap * sizeof *failed);
        if (!failed)
            return;
        self->failed = failed;
        self->failed_cap = cap;
    }
    self->failed[self->nfailed].seq = seq;
    self->failed[self->nfailed].err = err;
    self->nfailed++;
}

/*
 * Sends the queued messages back to back. A CALL that cannot be sent is noted for
 * s_complete_failed(), which runs its callback at the end of the batch (not here: this may run
 * inside a handler's ab_reply()); anything else that fails is dropped with nobody left to tell (a
 * reply's caller gets the broker's DEADLINE_EXCEEDED). Runs no callbacks.
 */
static void
s_drain(ab_client_t *self)
{
    size_t n = self->nout;
    if (n == 0)
        return;
    self->nout = 0;
    self->out_used = 0;
    for (size_t i = 0; i < n; i++) {
        s_out_t *o = &self->out[i];
        int rc = zmq_send(self->sock, self->out_buf + o->off, o->len,
                          ZMQ_DONTWAIT | (o->has_payload ? ZMQ_SNDMORE : 0));
        /* the first frame was accepted, so ZeroMQ accepts the rest of the message */
        if (rc >= 0 && o->has_payload)
            rc = zmq_msg_send(&o->payload, self->sock, ZMQ_DONTWAIT);
        int e = errno;
        if (o->has_payload)
            zmq_msg_close(&o->payload); /* empty after a successful send */
        if (rc < 0 && o->seq)
            s_note_failed(self, o->seq, e);
    }
    self->unsettled = 1;
    s_sent(self);
}

/*
 * Completes the queued calls that s_drain() could not send, with AB_EUNAVAILABLE through their
 * callbacks. Sends from those callbacks go out at once (and fail at once while the connection is
 * down), so a callback that calls again on failure cannot keep a batch going.
 */
static void
s_complete_failed(ab_client_t *self)
{
    if (self->nfailed == 0)
        return;
    /* a callback may drive the client (ab_call) and so come back here: it gets its own list */
    s_failed_t *list = self->failed;
    size_t n = self->nfailed, cap = self->failed_cap;
    self->failed = NULL;
    self->nfailed = self->failed_cap = 0;
    self->no_queue++;
    for (size_t i = 0; i < n; i++) {
        s_pending_t *p = s_pending_find(self, list[i].seq);
        if (!p)
            continue; /* completed meanwhile, e.g. expired inside a nested ab_call() */
        s_pending_remove(self, p);
        char what[AB_MAX_NAME + 32];
        char text[S_ERRLEN];
        if (p->kind == AMTSBOTE__V1__KIND__KIND_CALL)
            snprintf(what, sizeof what, "send the call to '%s'", p->service);
        else
            snprintf(what, sizeof what, "send %s to '%s'", ab_kind_name(p->kind), p->service);
        errno = list[i].err;
        s_zmq_fail(self, what);
        memcpy(text, self->last_error, sizeof text); /* the callback may change last_error */
        s_complete(self, p, AB_EUNAVAILABLE, NULL, 0, text);
    }
    self->no_queue--;
    if (!self->failed) {
        self->failed = list;
        self->failed_cap = cap;
    } else {
        free(list);
    }
}

/* Ends a batch: sends what it queued, then fails the calls that could not be sent. */
static void
s_flush(ab_client_t *self)
{
    s_drain(self);
    s_complete_failed(self);
}

/* Drops whatever is still queued (the client is going away). */
static void
s_outbox_discard(ab_client_t *self)
{
    for (size_t i = 0; i < self->nout; i++)
        if (self->out[i].has_payload)
            zmq_msg_close(&self->out[i].payload);
    self->nout = 0;
    self->out_used = 0;
    free(self->out);
    free(self->out_buf);
    free(self->failed);
    self->out = NULL;
    self->out_buf = NULL;
    self->failed = NULL;
    self->nfailed = self->failed_cap = 0;
}

/*
 * Sends `hdr` (version and, when unset, message_id filled in) and, when `payload` or `data` is
 * given, one payload frame: `payload` is sent without copying (and emptied), else `len` bytes
 * of `data`. Messages still queued go first, so the broker sees them in order. Returns 0 or an
 * AB_E* code with last_error set.
 */
static int
s_send(ab_client_t *self, ab_header_t *hdr, int with_payload, const void *data, size_t len,
       zmq_msg_t *payload)
{
    uint8_t msgid[AB_MESSAGE_ID_LEN];
    char what[64];
    if (!self->sock)
        return s_fail(self, AB_ESTATE, "not connected to a broker");
    s_drain(self);
    s_prepare(hdr, msgid);
    int n = ab_wire_encode(hdr, self->buf, sizeof self->buf);
    if (n < 0)
        return s_fail(self, AB_ETOO_LARGE, "send %s: the header does not fit in %d bytes",
                      ab_kind_name((int)hdr->kind), AB_MAX_HEADER_BYTES);
    self->unsettled = 1;
    if (zmq_send(self->sock, self->buf, (size_t)n,
                 ZMQ_DONTWAIT | (with_payload ? ZMQ_SNDMORE : 0)) < 0)
        goto fail;
    if (with_payload) {
        /* the first frame was accepted, so ZeroMQ accepts the rest of the message */
        int rc = payload ? zmq_msg_send(payload, self->sock, ZMQ_DONTWAIT)
                         : zmq_send(self->sock, data, len, ZMQ_DONTWAIT);
        if (rc < 0)
            goto fail;
    }
    s_sent(self);
    return 0;
fail:
    snprintf(what, sizeof what, "send %s", ab_kind_name((int)hdr->kind));
    return s_zmq_fail(self, what);
}

/*
 * Like s_send(), but while ab_client_process() dispatches, the message is queued for the burst at
 * the end of the batch (`payload` is taken over, `data` copied). `seq` names the pending entry of
 * a CALL: when its queued send fails, the entry completes with AB_EUNAVAILABLE. Returns 0 or an
 * AB_E* code with last_error set (and then nothing was queued).
 */
static int
s_post(ab_client_t *self, ab_header_t *hdr, int with_payload, const void *data, size_t len,
       zmq_msg_t *payload, uint64_t seq)
{
    if (!self->dispatching || self->no_queue || !self->sock)
        return s_send(self, hdr, with_payload, data, len, payload);
    if (!self->out) {
        self->out = malloc(S_OUT_MAX * sizeof *self->out);
        self->out_buf = malloc(S_OUT_BYTES);
        if (!self->out || !self->out_buf) {
            free(self->out);
            free(self->out_buf);
            self->out = NULL;
            self->out_buf = NULL;
            return s_send(self, hdr, with_payload, data, len, payload);
        }
    }
    if (self->nout == S_OUT_MAX || S_OUT_BYTES - self->out_used < AB_MAX_HEADER_BYTES)
        s_drain(self);
    if (self->nout == 0)
        self->out_since = ab_now_ms();
    uint8_t msgid[AB_MESSAGE_ID_LEN];
    s_prepare(hdr, msgid);
    int n = ab_wire_encode(hdr, self->out_buf + self->out_used, AB_MAX_HEADER_BYTES);
    if (n < 0)
        return s_fail(self, AB_ETOO_LARGE, "send %s: the header does not fit in %d bytes",
                      ab_kind_name((int)hdr->kind), AB_MAX_HEADER_BYTES);
    s_out_t *o = &self->out[self->nout];
    if (with_payload && payload) {
        zmq_msg_init(&o->payload);
        zmq_msg_move(&o->payload, payload);
    } else if (with_payload) {
        if (zmq_msg_init_size(&o->payload, len) != 0)
            return s_fail(self, AB_ENOMEM, "send %s: no memory for a payload of %zu bytes",
                          ab_kind_name((int)hdr->kind), len);
        if (len)
            memcpy(zmq_msg_data(&o->payload), data, len);
    }
    o->off = (uint32_t)self->out_used;
    o->len = (uint32_t)n;
    o->has_payload = with_payload;
    o->seq = seq;
    self->out_used += (size_t)n;
    self->nout++;
    self->unsettled = 1;
    return 0;
}

/* Answers a broker's CALL (correlation `corr`) with ERROR `code` and `text`. */
static int
s_send_error(ab_client_t *self, const uint8_t *corr, size_t corr_len, int code, const char *text)
{
    ab_header_t hdr = AMTSBOTE__V1__HEADER__INIT;
    Amtsbote__V1__Error err = AMTSBOTE__V1__ERROR__INIT;
    char clean[AB_MAX_ERROR_TEXT + 1];
    ab_utf8_sanitize(clean, sizeof clean, text);
    err.code = (Amtsbote__V1__ErrorCode)code;
    err.text = clean;
    hdr.kind = AMTSBOTE__V1__KIND__KIND_ERROR;
    hdr.correlation_id.data = (uint8_t *)corr;
    hdr.correlation_id.len = corr_len;
    hdr.error = &err;
    return s_post(self, &hdr, 0, NULL, 0, NULL, 0);
}

/*
 * Registers an answer to wait for and sends `kind` for `service` (with the payload for CALL).
 * Exactly one of `cb` and `sync` is set. An asynchronous call started during dispatch is queued;
 * a blocking one goes out at once, since its caller waits for the answer anyway. Returns 0, or an
 * error with nothing registered.
 */
/*
 * Registers an answer to wait for `wait_ms`: exactly one of `cb`, `send_cb` and `sync` is set;
 * `name` (a service, recipient, topic or subscription) is for error texts. Returns the entry, in
 * hash and heap, or NULL with last_error set.
 */
static s_pending_t *
s_pending_begin(ab_client_t *self, int kind, const char *name, uint32_t wait_ms, ab_call_cb *cb,
                ab_send_cb *send_cb, void *arg, s_sync_t *sync)
{
    s_pending_t *p = s_pending_new(self);
    if (!p) {
        s_seterr(self, "no memory for a %s to '%s'", ab_kind_name(kind), name);
        return NULL;
    }
    s_copy_str(p->service, sizeof p->service, name);
    p->seq = self->next_seq++;
    p->cb = cb;
    p->send_cb = send_cb;
    p->arg = arg;
    p->sync = sync;
    p->kind = kind;
    p->wait_ms = wait_ms;
    p->expires.at = s_now() + wait_ms;
    p->next_free = NULL;
    if (s_pending_add(self, p) != 0) {
        s_pending_release(self, p);
        s_seterr(self, "no memory for a %s to '%s'", ab_kind_name(kind), name);
        return NULL;
    }
    return p;
}

/* Takes back an entry of s_pending_begin() whose message could not be sent. */
static void
s_pending_abort(ab_client_t *self, s_pending_t *p)
{
    s_pending_remove(self, p);
    s_pending_release(self, p);
}

static int
s_start(ab_client_t *self, int kind, const char *service, const void *req, size_t req_len,
        uint32_t deadline_ms, uint32_t wait_ms, ab_call_cb *cb, void *arg, s_sync_t *sync,
        uint64_t *seq_out)
{
    s_pending_t *p = s_pending_begin(self, kind, service, wait_ms, cb, NULL, arg, sync);
    if (!p)
        return AB_ENOMEM;
    uint8_t corr[S_CORR_LEN];
    s_put_be64(corr, p->seq);
    ab_header_t hdr = AMTSBOTE__V1__HEADER__INIT;
    hdr.kind = (Amtsbote__V1__Kind)kind;
    hdr.correlation_id.data = corr;
    hdr.correlation_id.len = sizeof corr;
    hdr.service = (char *)service;
    int is_call = kind == AMTSBOTE__V1__KIND__KIND_CALL;
    if (is_call) {
        hdr.deadline_ms = deadline_ms;
        if (self->purpose[0])
            hdr.purpose = self->purpose;
        hdr.classification = (Amtsbote__V1__Classification)self->classification;
    }
    int rc = cb && is_call ? s_post(self, &hdr, 1, req, req_len, NULL, p->seq)
                           : s_send(self, &hdr, is_call, req, req_len, NULL);
    if (rc != 0) {
        s_pending_remove(self, p);
        s_pending_release(self, p);
        return rc;
    }
    if (seq_out)
        *seq_out = p->seq;
    return 0;
}

/* ---- receiving ---------------------------------------------------------------------------- */

static s_offer_t *
s_offer_match(ab_client_t *self, const char *method)
{
    s_offer_t *whole = NULL;
    for (s_offer_t *o = self->offers; o; o = o->next) {
        if (strcmp(o->service, method) == 0)
            return o;
        if (!whole && strncmp(o->service, method, o->len) == 0 && method[o->len] == '/' &&
            !strchr(o->service, '/'))
            whole = o;
    }
    return whole;
}

static void
s_request_unlink(ab_request_t *req)
{
    ab_client_t *self = req->client;
    if (!self)
        return;
    if (req->prev)
        req->prev->next = req->next;
    else
        self->requests = req->next;
    if (req->next)
        req->next->prev = req->prev;
    req->prev = req->next = NULL;
}

/* Frees an answered request; its client, when there still is one, keeps a few for reuse. */
static void
s_request_free(ab_request_t *req)
{
    ab_client_t *self = req->client;
    s_request_unlink(req);
    zmq_msg_close(&req->payload);
    if (!self || self->nfree_requests >= S_FREE_REQUESTS_MAX) {
        free(req);
        return;
    }
    req->next = self->free_requests;
    self->free_requests = req;
    self->nfree_requests++;
}

/* A CALL from the broker for one of our offers. */
static void
s_on_call(ab_client_t *self, const ab_header_t *hdr, zmq_msg_t *body)
{
    const char *method = hdr->service ? hdr->service : "";
    if (hdr->correlation_id.len == 0)
        return; /* cannot be answered; the broker never sends this */
    s_offer_t *o = s_offer_match(self, method);
    if (!o) {
        char text[AB_MAX_ERROR_TEXT];
        snprintf(text, sizeof text, "participant '%s' does not offer '%.255s' (any more)",
                 self->participant, method);
        s_send_error(self, hdr->correlation_id.data, hdr->correlation_id.len,
                     AMTSBOTE__V1__ERROR_CODE__UNKNOWN_SERVICE, text);
        return;
    }
    /* a request is about 1 KiB: reused, not calloc'd, and every field set below */
    ab_request_t *req = self->free_requests;
    if (req) {
        self->free_requests = req->next;
        self->nfree_requests--;
    } else if (!(req = malloc(sizeof *req))) {
        s_send_error(self, hdr->correlation_id.data, hdr->correlation_id.len,
                     AMTSBOTE__V1__ERROR_CODE__INTERNAL, "provider is out of memory");
        return;
    }
    req->client = self;
    req->prev = NULL;
    req->corr_len = hdr->correlation_id.len; /* at most 64 bytes, checked by the decoder */
    memcpy(req->corr, hdr->correlation_id.data, req->corr_len);
    req->has_id = hdr->message_id.len == AB_MESSAGE_ID_LEN;
    if (req->has_id)
        memcpy(req->id, hdr->message_id.data, AB_MESSAGE_ID_LEN);
    req->message_id[0] = '\0';
    s_copy_str(req->caller, sizeof req->caller, hdr->sender);
    s_copy_str(req->purpose, sizeof req->purpose, hdr->purpose);
    s_copy_str(req->method, sizeof req->method, method);
    /* 0 would mean no time left; the broker then does not forward, so read it as its default */
    req->deadline_at = ab_now_ms() + (hdr->deadline_ms ? hdr->deadline_ms : S_CALL_MS);
    zmq_msg_init(&req->payload);
    if (body)
        zmq_msg_move(&req->payload, body);
    req->next = self->requests;
    if (req->next)
        req->next->prev = req;
    self->requests = req;
    /* the header is not touched after this: the handler may decode other frames */
    o->handler(self, req, o->arg);
}

/* A REPLY or ERROR: the answer to a CALL, OFFER or WITHDRAW of ours. */
static void
s_on_answer(ab_client_t *self, const ab_header_t *hdr, zmq_msg_t *body)
{
    int is_error = hdr->kind == AMTSBOTE__V1__KIND__KIND_ERROR;
    if (self->hello_waiting && is_error && hdr->correlation_id.len == AB_MESSAGE_ID_LEN &&
        memcmp(hdr->correlation_id.data, self->hello_id, AB_MESSAGE_ID_LEN) == 0) {
        int code = hdr->error ? ab_err_from_wire(hdr->error->code) : AB_EINTERNAL;
        s_seterr(self, "the broker answered HELLO with %s: %s", ab_err_name(code),
                 hdr->error && hdr->error->text ? hdr->error->text : "");
        self->hello_status = code;
        self->hello_waiting = 0;
        return;
    }
    if (is_error && hdr->correlation_id.len == AB_MESSAGE_ID_LEN) {
        /* the broker refused a reply we sent (its correlation is that reply's message id):
         * nobody waits for this, so keep it where the provider's application can look */
        int code = hdr->error ? ab_err_from_wire(hdr->error->code) : AB_EINTERNAL;
        const char *field = hdr->error && hdr->error->field ? hdr->error->field : "";
        self->refused_replies++;
        snprintf(self->last_refusal, sizeof self->last_refusal, "%s: %s: %s%s%s",
                 hdr->service ? hdr->service : "", ab_err_name(code),
                 hdr->error && hdr->error->text ? hdr->error->text : "", field[0] ? " (field " : "",
                 field[0] ? field : "");
        if (field[0])
            strncat(self->last_refusal, ")",
                    sizeof self->last_refusal - strlen(self->last_refusal) - 1);
        return;
    }
    if (hdr->correlation_id.len != S_CORR_LEN)
        return; /* not an answer to anything of ours */
    uint64_t seq = s_get_be64(hdr->correlation_id.data);
    s_pending_t *p = s_pending_find(self, seq);
    if (!p)
        return; /* late, after our own timeout */
    s_pending_remove(self, p);
    if (is_error) {
        char text[S_ERRLEN];
        int status = hdr->error ? ab_err_from_wire(hdr->error->code) : AB_EINTERNAL;
        if (status == 0)
            status = AB_EINTERNAL;
        if (hdr->error && hdr->error->text && hdr->error->text[0])
            snprintf(text, sizeof text, "%s", hdr->error->text);
        else
            snprintf(text, sizeof text, "%s for '%s' without an error text", ab_err_name(status),
                     p->service);
        s_complete(self, p, status, NULL, 0, text);
        return;
    }
    const void *data = body ? zmq_msg_data(body) : "";
    size_t len = body ? zmq_msg_size(body) : 0;
    s_complete(self, p, 0, data, len, NULL);
}

/*
 * Tells the broker again who we are (with `hello`) and what we offer, after it forgot: a new
 * connection after a reconnect, or a stall past the heartbeat timeout. The answers are matched
 * to nothing and dropped; a refused offer shows as UNKNOWN_SERVICE at the callers.
 */
static void
s_reoffer(ab_client_t *self, int hello)
{
    char saved[S_ERRLEN];
    memcpy(saved, self->last_error, sizeof saved);
    if (hello) {
        ab_uuid7(self->hello_id);
        ab_header_t hdr = AMTSBOTE__V1__HEADER__INIT;
        hdr.kind = AMTSBOTE__V1__KIND__KIND_HELLO;
        hdr.message_id.data = self->hello_id;
        hdr.message_id.len = AB_MESSAGE_ID_LEN;
        if (s_send(self, &hdr, 0, NULL, 0, NULL) == 0)
            self->hello_waiting = 1;
    }
    for (s_offer_t *o = self->offers; o; o = o->next) {
        uint8_t corr[S_CORR_LEN];
        s_put_be64(corr, self->next_seq++);
        ab_header_t offer = AMTSBOTE__V1__HEADER__INIT;
        offer.kind = AMTSBOTE__V1__KIND__KIND_OFFER;
        offer.correlation_id.data = corr;
        offer.correlation_id.len = sizeof corr;
        offer.service = o->service;
        s_send(self, &offer, 0, NULL, 0, NULL);
    }
    if (self->inbox_on) {
        uint8_t corr[S_CORR_LEN];
        s_put_be64(corr, self->next_seq++);
        ab_header_t credit = AMTSBOTE__V1__HEADER__INIT;
        credit.kind = AMTSBOTE__V1__KIND__KIND_CREDIT;
        credit.correlation_id.data = corr;
        credit.correlation_id.len = sizeof corr;
        credit.credit = self->inbox_credit;
        s_send(self, &credit, 0, NULL, 0, NULL);
    }
    for (s_sub_t *sub = self->subs; sub; sub = sub->next) {
        uint8_t corr[S_CORR_LEN];
        s_put_be64(corr, self->next_seq++);
        ab_header_t hdr = AMTSBOTE__V1__HEADER__INIT;
        hdr.kind = AMTSBOTE__V1__KIND__KIND_SUBSCRIBE;
        hdr.correlation_id.data = corr;
        hdr.correlation_id.len = sizeof corr;
        hdr.topic = sub->pattern;
        hdr.subscription = sub->durable;
        hdr.credit = sub->credit;
        s_send(self, &hdr, 0, NULL, 0, NULL);
    }
    memcpy(self->last_error, saved, sizeof saved);
}

/* The broker's HELLO during ab_client_connect(). */
static void
s_on_hello(ab_client_t *self, const ab_header_t *hdr)
{
    if (hdr->correlation_id.len == 0) {
        /* unasked: the broker answers a heartbeat so when it knows nothing of this connection */
        if (s_live(self))
            s_reoffer(self, 0);
        return;
    }
    if (!self->hello_waiting || hdr->correlation_id.len != AB_MESSAGE_ID_LEN ||
        memcmp(hdr->correlation_id.data, self->hello_id, AB_MESSAGE_ID_LEN) != 0)
        return;
    if (hdr->sender && hdr->sender[0])
        s_copy_str(self->participant, sizeof self->participant, hdr->sender);
    self->heartbeat_ms = hdr->heartbeat_ms ? hdr->heartbeat_ms : S_HEARTBEAT_MS;
    self->max_payload = hdr->max_payload; /* 0: the broker did not say */
    self->hello_status = 1;
    self->hello_waiting = 0;
}

/* ---- deliveries: mailbox messages, receipts, events --------------------------------------- */

/* The ring's key of a delivery: "m:" + sender for mailbox messages and receipts (with the
 * message id), "e:" + subscription for events of a durable subscription (with the sequence).
 * Returns 0, or -1 for a delivery that has no key (an ephemeral event, a missing id). */
static int
s_dedup_key(const ab_header_t *hdr, char name[AB_MAX_NAME + 3], uint8_t id[AB_MESSAGE_ID_LEN])
{
    if (hdr->kind == AMTSBOTE__V1__KIND__KIND_EVENT) {
        if (!hdr->subscription[0] || hdr->sequence == 0)
            return -1;
        snprintf(name, AB_MAX_NAME + 3, "e:%s", hdr->subscription);
        ab_dedup_seq_id(hdr->sequence, id);
        return 0;
    }
    if (hdr->message_id.len != AB_MESSAGE_ID_LEN)
        return -1;
    snprintf(name, AB_MAX_NAME + 3, "m:%s", hdr->sender);
    memcpy(id, hdr->message_id.data, AB_MESSAGE_ID_LEN);
    return 0;
}

/* Sends ACK for `sequence` (of `subscription`, "" for the mailbox). Returns 0 or an AB_E* code. */
static int
s_send_ack(ab_client_t *self, uint64_t sequence, const char *subscription)
{
    ab_header_t hdr = AMTSBOTE__V1__HEADER__INIT;
    hdr.kind = AMTSBOTE__V1__KIND__KIND_ACK;
    hdr.sequence = sequence;
    hdr.subscription = (char *)subscription;
    return s_post(self, &hdr, 0, NULL, 0, NULL, 0);
}

static void
s_message_unlink(ab_message_t *m)
{
    ab_client_t *self = m->client;
    if (!self)
        return;
    if (m->prev)
        m->prev->next = m->next;
    else
        self->messages = m->next;
    if (m->next)
        m->next->prev = m->prev;
    m->prev = m->next = NULL;
}

static void
s_message_release(ab_message_t *m)
{
    s_message_unlink(m);
    zmq_msg_close(&m->payload);
    free(m->error);
    free(m);
}

/* The subscription an EVENT belongs to: by its name when durable, else the ephemeral one
 * subscribed first (the list is newest first) whose pattern its topic matches. */
static s_sub_t *
s_sub_for(ab_client_t *self, const ab_header_t *hdr)
{
    s_sub_t *found = NULL;
    for (s_sub_t *sub = self->subs; sub; sub = sub->next) {
        if (hdr->subscription[0]) {
            if (strcmp(sub->durable, hdr->subscription) == 0)
                return sub;
        } else if (!sub->durable[0] && ab_topic_match(sub->pattern, hdr->topic)) {
            found = sub;
        }
    }
    return found;
}

/*
 * Non-zero for an ephemeral EVENT seen just now: the broker sends one per matching pattern of
 * the connection, and the header does not say which, so the copies after the first are dropped.
 */
static int
s_ephemeral_repeat(ab_client_t *self, const ab_header_t *hdr)
{
    if (hdr->subscription[0] || hdr->message_id.len != AB_MESSAGE_ID_LEN || !self->subs ||
        !self->subs->next)
        return 0; /* one subscription: every copy is its own */
    if (!self->recent_events && !(self->recent_events = ab_dedup_new(S_RECENT_EVENTS)))
        return 0;
    char name[AB_MAX_NAME + 3];
    snprintf(name, sizeof name, "x:%s", hdr->sender);
    if (ab_dedup_seen(self->recent_events, name, hdr->message_id.data))
        return 1;
    ab_dedup_add(self->recent_events, name, hdr->message_id.data);
    return 0;
}

/*
 * A DELIVER, RECEIPT or EVENT. One nobody here wants (after a detach, for a subscription ended
 * meanwhile) is dropped without an ACK, so the broker delivers it again later; one acknowledged
 * already is acknowledged again and dropped.
 */
static void
s_on_delivery(ab_client_t *self, const ab_header_t *hdr, zmq_msg_t *body)
{
    ab_message_fn *fn = NULL;
    void *arg = NULL;
    int kind;
    if (hdr->kind == AMTSBOTE__V1__KIND__KIND_EVENT) {
        kind = AB_MSG_EVENT;
        if (s_ephemeral_repeat(self, hdr))
            return;
        s_sub_t *sub = s_sub_for(self, hdr);
        if (sub) {
            fn = sub->fn;
            arg = sub->arg;
        }
    } else {
        kind = hdr->kind == AMTSBOTE__V1__KIND__KIND_DELIVER ? AB_MSG_MESSAGE : AB_MSG_RECEIPT;
        if (self->inbox_on) {
            fn = self->inbox_fn;
            arg = self->inbox_arg;
        }
    }
    if (!fn)
        return;
    char name[AB_MAX_NAME + 3];
    uint8_t id[AB_MESSAGE_ID_LEN];
    int has_key = s_dedup_key(hdr, name, id) == 0;
    if (has_key && self->dedup && ab_dedup_seen(self->dedup, name, id)) {
        char saved[S_ERRLEN];
        memcpy(saved, self->last_error, sizeof saved);
        s_send_ack(self, hdr->sequence, hdr->subscription);
        memcpy(self->last_error, saved, sizeof saved);
        self->duplicates++;
        return;
    }
    ab_message_t *m = malloc(sizeof *m);
    if (!m)
        return; /* the broker delivers it again after its ack timeout */
    m->client = self;
    m->prev = NULL;
    m->kind = kind;
    m->has_key = has_key;
    if (has_key) {
        memcpy(m->key_name, name, sizeof m->key_name);
        memcpy(m->key_id, id, sizeof m->key_id);
    }
    m->receipt = kind == AB_MSG_RECEIPT ? (int)hdr->receipt : 0;
    m->sequence = hdr->sequence;
    m->timestamp_ms = hdr->timestamp_ms;
    m->attempt = hdr->attempt;
    m->error = NULL;
    if (hdr->error && hdr->error->text && hdr->error->text[0])
        m->error = strdup(hdr->error->text);
    m->id_hex[0] = '\0';
    if (hdr->message_id.len == AB_MESSAGE_ID_LEN)
        ab_hex(hdr->message_id.data, AB_MESSAGE_ID_LEN, m->id_hex);
    m->about_hex[0] = '\0';
    if (kind == AB_MSG_RECEIPT && hdr->correlation_id.len)
        ab_hex(hdr->correlation_id.data, hdr->correlation_id.len, m->about_hex);
    s_copy_str(m->sender, sizeof m->sender, hdr->sender);
    s_copy_str(m->recipient, sizeof m->recipient, hdr->recipient);
    s_copy_str(m->topic, sizeof m->topic, hdr->topic);
    s_copy_str(m->schema, sizeof m->schema, hdr->schema);
    s_copy_str(m->purpose, sizeof m->purpose, hdr->purpose);
    s_copy_str(m->subscription, sizeof m->subscription, hdr->subscription);
    zmq_msg_init(&m->payload);
    if (body)
        zmq_msg_move(&m->payload, body);
    m->next = self->messages;
    if (m->next)
        m->next->prev = m;
    self->messages = m;
    fn(self, m, arg);
}

/*
 * Receives and handles one message. Returns 1 when one was handled (or dropped), 0 when none was
 * waiting, or an AB_E* code when the socket failed.
 */
static int
s_recv_one(ab_client_t *self)
{
    zmq_msg_t head, body;
    zmq_msg_init(&head);
    if (zmq_msg_recv(&head, self->sock, ZMQ_DONTWAIT) < 0) {
        int e = errno;
        zmq_msg_close(&head);
        if (e == EAGAIN)
            self->unsettled = 0; /* this receive re-armed the fd after every earlier send */
        if (e == EAGAIN || e == EINTR)
            return 0;
        errno = e;
        return s_zmq_fail(self, "receive");
    }
    int have_body = 0, frames = 1;
    zmq_msg_init(&body);
    if (zmq_msg_more(&head)) {
        /* the rest of a multipart message is there once its first frame is */
        if (zmq_msg_recv(&body, self->sock, ZMQ_DONTWAIT) >= 0) {
            have_body = 1;
            frames++;
        }
        while (have_body && zmq_msg_more(&body) && frames < 64) {
            zmq_msg_t extra;
            zmq_msg_init(&extra);
            int rc = zmq_msg_recv(&extra, self->sock, ZMQ_DONTWAIT);
            int more = rc >= 0 && zmq_msg_more(&extra);
            zmq_msg_close(&extra);
            frames++;
            if (!more)
                break;
        }
    }
    ab_header_t *hdr = NULL;
    char why[AB_WHY_LEN];
    if (frames <= 2 &&
        ab_wire_decode(self->dec, zmq_msg_data(&head), zmq_msg_size(&head), &hdr, why) == 0) {
        switch (hdr->kind) {
        case AMTSBOTE__V1__KIND__KIND_HELLO:
            s_on_hello(self, hdr);
            break;
        case AMTSBOTE__V1__KIND__KIND_REPLY:
        case AMTSBOTE__V1__KIND__KIND_ERROR:
            s_on_answer(self, hdr, have_body ? &body : NULL);
            break;
        case AMTSBOTE__V1__KIND__KIND_CALL:
            s_on_call(self, hdr, have_body ? &body : NULL);
            break;
        case AMTSBOTE__V1__KIND__KIND_DELIVER:
        case AMTSBOTE__V1__KIND__KIND_RECEIPT:
        case AMTSBOTE__V1__KIND__KIND_EVENT:
            s_on_delivery(self, hdr, have_body ? &body : NULL);
            break;
        default:
            break; /* HEARTBEAT and kinds this version does not use */
        }
    }
    /* a frame the broker should never send is dropped: the library does not log */
    zmq_msg_close(&body);
    zmq_msg_close(&head);
    return 1;
}

/* ---- timers ------------------------------------------------------------------------------- */

static void
s_expire(ab_client_t *self, uint64_t now)
{
    /* bounded: every round removes one entry, and entries added meanwhile expire later */
    size_t rounds = self->heap.n;
    s_pending_t *p;
    while (rounds-- > 0 && (p = s_first_pending(self)) != NULL && p->expires.at <= now) {
        s_pending_remove(self, p);
        char text[S_ERRLEN];
        if (p->kind == AMTSBOTE__V1__KIND__KIND_CALL)
            snprintf(text, sizeof text,
                     "no answer from the broker for the call to '%s' within %u ms (its deadline "
                     "and %d ms grace)",
                     p->service, p->wait_ms, S_GRACE_MS);
        else if (p->kind == AMTSBOTE__V1__KIND__KIND_SEND ||
                 p->kind == AMTSBOTE__V1__KIND__KIND_PUBLISH)
            snprintf(text, sizeof text,
                     "no answer from the broker to %s '%s' within %u ms: it may or may not have "
                     "been stored; send it again with the same message id to be sure",
                     ab_kind_name(p->kind), p->service, p->wait_ms);
        else
            snprintf(text, sizeof text, "no answer from the broker to %s '%s' within %u ms",
                     ab_kind_name(p->kind), p->service, p->wait_ms);
        s_complete(self, p, AB_ETIMEDOUT, NULL, 0, text);
    }
}

static void
s_heartbeat(ab_client_t *self, uint64_t now)
{
    if (!s_live(self) || !self->connected)
        return;
    if (now - self->last_send_ms < self->heartbeat_ms)
        return;
    ab_header_t hdr = AMTSBOTE__V1__HEADER__INIT;
    hdr.kind = AMTSBOTE__V1__KIND__KIND_HEARTBEAT;
    /*
     * When the connection is down the send fails; try again one interval later rather than at
     * once (which would spin), and keep last_error for the application's own failures.
     */
    char saved[S_ERRLEN];
    memcpy(saved, self->last_error, sizeof saved);
    if (s_post(self, &hdr, 0, NULL, 0, NULL, 0) != 0)
        memcpy(self->last_error, saved, sizeof saved);
    /* queued, sent or failed: the next one is due an interval from now */
    self->last_send_ms = now;
}

/* Waits until `sync` is done: drives the client and polls its fd. Bounded by the entry's expiry. */
static int
s_wait(ab_client_t *self, uint64_t seq, s_sync_t *sync)
{
    while (!sync->done) {
        int rc = ab_client_process(self);
        if (rc < 0 || self->closing) {
            s_pending_t *p = s_pending_find(self, seq);
            if (p) {
                s_pending_remove(self, p);
                s_pending_release(self, p);
            }
            return rc < 0 ? rc : s_fail(self, AB_EUNAVAILABLE, "the client is closing");
        }
        if (sync->done || rc == 1)
            continue;
        int t = ab_client_next_timeout(self);
        if (t < 0 || t > S_WAIT_SLICE_MS)
            t = S_WAIT_SLICE_MS;
        if (self->mon && t > S_MONITOR_MS) /* a broken connection ends the wait (monitor) */
            t = S_MONITOR_MS;
        struct pollfd pfd = {.fd = self->fd, .events = POLLIN, .revents = 0};
        if (poll(&pfd, 1, t) < 0 && errno != EINTR)
            return s_fail(self, AB_EIO, "poll: %s", strerror(errno));
    }
    return 0;
}

/* ---- life cycle --------------------------------------------------------------------------- */

ab_client_t *
ab_client_new(void)
{
    ab_client_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->dec = ab_wire_decoder_new();
    if (!self->dec) {
        free(self);
        return NULL;
    }
    self->fd = -1;
    self->next_seq = 1;
    self->heartbeat_ms = S_HEARTBEAT_MS;
    return self;
}

static void
s_close_sockets(ab_client_t *self, void *mon, int linger)
{
    if (mon) {
        zmq_socket_monitor(self->sock, NULL, 0);
        zmq_close(mon);
    }
    if (self->sock) {
        zmq_setsockopt(self->sock, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(self->sock);
        self->sock = NULL;
    }
    if (self->ctx) {
        while (zmq_ctx_term(self->ctx) != 0 && errno == EINTR)
            ;
        self->ctx = NULL;
    }
    self->fd = -1;
    self->connected = 0;
}

void
ab_client_destroy(ab_client_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ab_client_t *self = *self_p;
    *self_p = NULL;
    self->closing = 1;
    if (self->connected) {
        /* best effort: the broker learns at once instead of after the heartbeat timeout */
        for (s_offer_t *o = self->offers; o; o = o->next) {
            uint8_t corr[S_CORR_LEN];
            s_put_be64(corr, self->next_seq++);
            ab_header_t hdr = AMTSBOTE__V1__HEADER__INIT;
            hdr.kind = AMTSBOTE__V1__KIND__KIND_WITHDRAW;
            hdr.correlation_id.data = corr;
            hdr.correlation_id.len = sizeof corr;
            hdr.service = o->service;
            s_send(self, &hdr, 0, NULL, 0, NULL);
        }
        /* likewise the mailbox and the subscriptions: what was delivered and not acknowledged
         * goes to another connection now, not after the heartbeat timeout; durable
         * subscriptions stay stored */
        if (self->inbox_on) {
            ab_header_t hdr = AMTSBOTE__V1__HEADER__INIT;
            hdr.kind = AMTSBOTE__V1__KIND__KIND_CREDIT;
            s_send(self, &hdr, 0, NULL, 0, NULL);
        }
        for (s_sub_t *sub = self->subs; sub; sub = sub->next) {
            ab_header_t hdr = AMTSBOTE__V1__HEADER__INIT;
            hdr.kind = sub->durable[0] ? AMTSBOTE__V1__KIND__KIND_CREDIT
                                       : AMTSBOTE__V1__KIND__KIND_WITHDRAW;
            hdr.topic = sub->durable[0] ? (char *)"" : sub->pattern;
            hdr.subscription = sub->durable;
            s_send(self, &hdr, 0, NULL, 0, NULL);
        }
        /* requests nobody can answer any more: tell their callers now, not at the deadline */
        for (ab_request_t *req = self->requests; req; req = req->next)
            s_send_error(self, req->corr, req->corr_len, AMTSBOTE__V1__ERROR_CODE__PROVIDER_ERROR,
                         "the provider closed its connection before answering");
    }
    while (self->requests) {
        ab_request_t *req = self->requests;
        self->requests = req->next;
        req->client = NULL;
        req->prev = req->next = NULL;
    }
    /* messages the application still holds stay valid; ab_ack() on them says AB_ESTATE */
    while (self->messages) {
        ab_message_t *m = self->messages;
        self->messages = m->next;
        m->client = NULL;
        m->prev = m->next = NULL;
    }
    while (self->subs) {
        s_sub_t *sub = self->subs;
        self->subs = sub->next;
        free(sub);
    }
    self->inbox_on = 0;
    ab_dedup_destroy(&self->dedup);
    ab_dedup_destroy(&self->recent_events);
    /* bounded: nothing new can be added while closing */
    while (self->heap.n > 0) {
        s_pending_t *p = AB_CONTAINER_OF(self->heap.v[self->heap.n - 1], s_pending_t, expires);
        s_pending_remove(self, p);
        char text[S_ERRLEN];
        snprintf(text, sizeof text, "the client was closed with the call to '%s' in flight",
                 p->service);
        s_complete(self, p, AB_EUNAVAILABLE, NULL, 0, text);
    }
    while (self->offers) {
        s_offer_t *o = self->offers;
        self->offers = o->next;
        free(o);
    }
    s_outbox_discard(self); /* empty: only a batch queues, and it sends before it returns */
    while (self->free_pending) {
        s_pending_t *p = self->free_pending;
        self->free_pending = p->next_free;
        free(p);
    }
    while (self->free_requests) {
        ab_request_t *req = self->free_requests;
        self->free_requests = req->next;
        free(req);
    }
    /* with the broker out of reach, what waits to be sent would only hold the close up */
    s_close_sockets(self, self->mon, self->connected && s_link_down(self) ? 0 : S_LINGER_MS);
    self->mon = NULL;
    ab_tunnel_destroy(&self->tunnel); /* after the close: what lingered went through it */
    s_tls_free(self);
    ab_wire_decoder_destroy(&self->dec);
    free(self->table);
    ab_heap_free(&self->heap);
    free(self);
}

static void
s_tls_free(ab_client_t *self)
{
    free(self->tls_cert);
    free(self->tls_key);
    free(self->tls_pass_file);
    free(self->tls_ca);
    free(self->tls_crl);
    self->tls_cert = self->tls_key = self->tls_pass_file = self->tls_ca = self->tls_crl = NULL;
}

/* A copy of `s`, or NULL for NULL and "". Sets *oom when out of memory. */
static char *
s_dup(const char *s, int *oom)
{
    if (!s || !*s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *oom = 1;
    return d;
}

int
ab_client_set_tls(ab_client_t *self, const ab_tls_options_t *opts)
{
    if (!self)
        return AB_EINVAL;
    if (self->sock)
        return s_fail(self, AB_ESTATE, "TLS options must be set before connecting");
    if (!opts)
        return s_fail(self, AB_EINVAL, "TLS options are NULL");
    const char *missing = !opts->cert || !*opts->cert ? "cert (the client certificate)"
                          : !opts->key || !*opts->key ? "key (the client's private key)"
                          : !opts->ca || !*opts->ca   ? "ca (the CA certificates for the broker's)"
                                                      : NULL;
    if (missing)
        return s_fail(self, AB_EINVAL, "TLS options: %s is missing", missing);
    s_tls_free(self);
    int oom = 0;
    self->tls_cert = s_dup(opts->cert, &oom);
    self->tls_key = s_dup(opts->key, &oom);
    self->tls_pass_file = s_dup(opts->key_passphrase_file, &oom);
    self->tls_ca = s_dup(opts->ca, &oom);
    self->tls_crl = s_dup(opts->crl, &oom);
    if (oom) {
        s_tls_free(self);
        return s_fail(self, AB_ENOMEM, "no memory for the TLS options");
    }
    return 0;
}

/* Reads the first line of `path` into `out`. Returns 0 or an AB_E* code with last_error set. */
static int
s_read_passphrase(ab_client_t *self, const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return s_fail(self, AB_EIO, "%.200s: cannot read the key passphrase file: %s", path,
                      strerror(errno));
    out[0] = '\0';
    int ok = fgets(out, (int)cap, f) != NULL;
    int e = errno;
    fclose(f);
    if (!ok && e && out[0] == '\0')
        return s_fail(self, AB_EIO, "%.200s: cannot read the key passphrase file: %s", path,
                      strerror(e));
    out[strcspn(out, "\r\n")] = '\0';
    if (!out[0])
        return s_fail(self, AB_EINVAL, "%.200s: the key passphrase file's first line is empty",
                      path);
    return 0;
}

/* Starts the TLS relay for `uri` on its own thread. Returns 0 or an AB_E* code. */
static int
s_tunnel_start(ab_client_t *self, const char *uri, int timeout_ms)
{
    if (self->participant[0])
        return s_fail(self, AB_EINVAL,
                      "over tls:// the participant address comes from the client certificate; "
                      "do not set one (ab_client_set_participant is for plain listeners)");
    if (!self->tls_cert)
        return s_fail(self, AB_EINVAL,
                      "%.200s needs a client certificate, key and CA file: call "
                      "ab_client_set_tls() before connecting",
                      uri);
    char pass[S_PASSPHRASE_MAX];
    pass[0] = '\0';
    if (self->tls_pass_file) {
        int rc = s_read_passphrase(self, self->tls_pass_file, pass, sizeof pass);
        if (rc != 0)
            return rc;
    }
    ab_tunnel_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.tls.cert = self->tls_cert;
    cfg.tls.key = self->tls_key;
    cfg.tls.ca = self->tls_ca;
    cfg.tls.crl = self->tls_crl;
    cfg.tls.key_passphrase = self->tls_pass_file ? pass : NULL;
    cfg.broker = uri;
    cfg.timeout_ms = (uint32_t)timeout_ms;
    char err[S_ERRLEN];
    int code = 0;
    self->tunnel = ab_tunnel_new(&cfg, &code, err, sizeof err);
    OPENSSL_cleanse(pass, sizeof pass);
    if (!self->tunnel)
        return s_fail(self, code, "%s", err);
    if (ab_tunnel_start(self->tunnel) != 0) {
        ab_tunnel_destroy(&self->tunnel);
        return s_fail(self, AB_ENOMEM, "cannot start the TLS relay's thread");
    }
    return 0;
}

int
ab_client_set_participant(ab_client_t *self, const char *participant)
{
    char why[AB_WHY_LEN];
    if (!self)
        return AB_EINVAL;
    if (self->sock)
        return s_fail(self, AB_ESTATE, "the participant must be set before connecting");
    if (ab_wire_check_participant(participant, why) != 0)
        return s_fail(self, AB_EINVAL, "%s", why);
    s_copy_str(self->participant, sizeof self->participant, participant);
    return 0;
}

int
ab_client_set_classification(ab_client_t *self, int level)
{
    if (!self)
        return AB_EINVAL;
    if (level < AB_CLASS_NONE || level > AB_CLASS_VS_NFD)
        return s_fail(self, AB_EINVAL,
                      "classification %d is not one of 0 (none), 1 (OFFEN) and "
                      "2 (VS-NUR-FUER-DEN-DIENSTGEBRAUCH)",
                      level);
    self->classification = level;
    return 0;
}

int
ab_client_set_purpose(ab_client_t *self, const char *purpose)
{
    if (!self)
        return AB_EINVAL;
    if (!purpose)
        purpose = "";
    if (strlen(purpose) > AB_MAX_NAME)
        return s_fail(self, AB_EINVAL, "purpose is longer than %d bytes", AB_MAX_NAME);
    if (!ab_utf8_valid(purpose, strlen(purpose)))
        return s_fail(self, AB_EINVAL, "purpose is not valid UTF-8");
    s_copy_str(self->purpose, sizeof self->purpose, purpose);
    return 0;
}

static int
s_setopt_int(void *sock, int opt, int value)
{
    return zmq_setsockopt(sock, opt, &value, sizeof value);
}

/*
 * Reads one event from the monitor socket. Returns 1 and sets *event and *value, or 0 when none
 * was waiting.
 */
static int
s_monitor_event(void *mon, uint16_t *event, uint32_t *value)
{
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, mon, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&msg);
        return 0;
    }
    int ok = zmq_msg_size(&msg) >= 6;
    if (ok) {
        const uint8_t *d = zmq_msg_data(&msg);
        memcpy(event, d, sizeof *event);
        memcpy(value, d + 2, sizeof *value);
    }
    int more = zmq_msg_more(&msg);
    zmq_msg_close(&msg);
    for (int i = 0; more && i < 4; i++) { /* the endpoint frame */
        zmq_msg_init(&msg);
        more = zmq_msg_recv(&msg, mon, ZMQ_DONTWAIT) >= 0 && zmq_msg_more(&msg);
        zmq_msg_close(&msg);
    }
    return ok;
}

static const char *
s_protocol_error(uint32_t value, int has_participant)
{
    if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
        return has_participant
                   ? "the security mechanisms do not match: this listener does not take plain "
                     "identities (use a plain listener of a broker run with "
                     "--insecure-plain-identities, or mutual TLS)"
                   : "the security mechanisms do not match: this client named no participant, "
                     "and the listener wants an identity";
    if (value >= ZMQ_PROTOCOL_ERROR_ZAP_UNSPECIFIED && value <= 0x2fffffff)
        return "the broker's authentication handler failed";
    return "the security handshake failed";
}

int
ab_client_connect(ab_client_t *self, const char *uri, int timeout_ms)
{
    if (!self)
        return AB_EINVAL;
    if (self->sock)
        return s_fail(self, AB_ESTATE, "already connected");
    int tls = uri && strncmp(uri, "tls://", 6) == 0;
    if (!uri || (strncmp(uri, "tcp://", 6) != 0 && strncmp(uri, "ipc://", 6) != 0 && !tls) ||
        !uri[6])
        return s_fail(self, AB_EINVAL,
                      "broker address '%.200s' is not tcp://HOST:PORT, ipc://PATH or "
                      "tls://HOST:PORT",
                      uri ? uri : "");
    if (timeout_ms < 0)
        return s_fail(self, AB_EINVAL, "connect timeout %d ms is negative", timeout_ms);
    if (timeout_ms == 0)
        timeout_ms = S_CONNECT_MS;
    /* over tls:// the DEALER talks to the relay on loopback, with the NULL mechanism */
    const char *zuri = uri;
    if (tls) {
        int rc = s_tunnel_start(self, uri, timeout_ms);
        if (rc != 0)
            return rc;
        zuri = ab_tunnel_local_uri(self->tunnel);
    }

    self->ctx = zmq_ctx_new();
    if (!self->ctx) {
        ab_tunnel_destroy(&self->tunnel);
        return s_fail(self, AB_ENOMEM, "cannot create a ZeroMQ context: %s", zmq_strerror(errno));
    }
    self->sock = zmq_socket(self->ctx, ZMQ_DEALER);
    if (!self->sock) {
        int e = errno;
        s_close_sockets(self, NULL, 0);
        ab_tunnel_destroy(&self->tunnel);
        return s_fail(self, AB_ENOMEM, "cannot create a ZeroMQ socket: %s", zmq_strerror(e));
    }
    void *mon = NULL;
    int rc = 0;
    if (s_setopt_int(self->sock, ZMQ_LINGER, S_LINGER_MS) != 0 ||
        s_setopt_int(self->sock, ZMQ_RCVHWM, S_HWM) != 0 ||
        s_setopt_int(self->sock, ZMQ_SNDHWM, S_HWM) != 0 ||
        s_setopt_int(self->sock, ZMQ_HEARTBEAT_IVL, 1000) != 0 ||
        s_setopt_int(self->sock, ZMQ_HEARTBEAT_TIMEOUT, 3000) != 0) {
        rc = s_fail(self, AB_EIO, "cannot set socket options: %s", zmq_strerror(errno));
        goto fail;
    }
    /*
     * PLAIN with an empty password. The username alone selects PLAIN and leaves the password
     * empty; libzmq refuses a zero-length ZMQ_PLAIN_PASSWORD (and NULL would reset to NULL).
     */
    if (self->participant[0] && zmq_setsockopt(self->sock, ZMQ_PLAIN_USERNAME, self->participant,
                                               strlen(self->participant)) != 0) {
        rc = s_fail(self, AB_EIO, "cannot set the participant: %s", zmq_strerror(errno));
        goto fail;
    }
    /* the only way ZeroMQ tells a client that the broker refused its identity */
    if (zmq_socket_monitor(self->sock, S_MONITOR_EP,
                           ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                               ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_CONNECTED |
                               ZMQ_EVENT_CONNECT_RETRIED | ZMQ_EVENT_DISCONNECTED) == 0) {
        mon = zmq_socket(self->ctx, ZMQ_PAIR);
        if (mon && zmq_connect(mon, S_MONITOR_EP) != 0) {
            zmq_close(mon);
            mon = NULL;
        }
        if (!mon)
            zmq_socket_monitor(self->sock, NULL, 0);
    }
    if (zmq_connect(self->sock, zuri) != 0) {
        int e = errno;
        if (e == EINVAL || e == EPROTONOSUPPORT || e == ENOCOMPATPROTO)
            rc = s_fail(self, AB_EINVAL, "cannot use broker address '%.200s': %s", uri,
                        zmq_strerror(e));
        else
            rc = s_fail(self, AB_ECONNECT, "cannot connect to '%.200s': %s", uri, zmq_strerror(e));
        goto fail;
    }

    ab_uuid7(self->hello_id);
    ab_header_t hdr = AMTSBOTE__V1__HEADER__INIT;
    hdr.kind = AMTSBOTE__V1__KIND__KIND_HELLO;
    hdr.message_id.data = self->hello_id;
    hdr.message_id.len = AB_MESSAGE_ID_LEN;
    if ((rc = s_send(self, &hdr, 0, NULL, 0, NULL)) != 0)
        goto fail;

    self->hello_waiting = 1;
    self->hello_status = 0;
    uint64_t deadline = ab_now_ms() + (uint64_t)timeout_ms;
    int tcp_connected = 0, retried = 0, handshake_ok = 0;
    while (self->hello_status == 0) {
        uint64_t now = ab_now_ms();
        if (now >= deadline)
            break;
        zmq_pollitem_t items[2] = {{self->sock, 0, ZMQ_POLLIN, 0}, {mon, 0, ZMQ_POLLIN, 0}};
        long wait = (long)(deadline - now);
        if (self->tunnel && wait > S_TUNNEL_SLICE_MS)
            wait = S_TUNNEL_SLICE_MS;
        int n = zmq_poll(items, mon ? 2 : 1, wait);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = s_fail(self, AB_EIO, "zmq_poll: %s", zmq_strerror(errno));
            goto fail;
        }
        if (mon && (items[1].revents & ZMQ_POLLIN)) {
            uint16_t ev = 0;
            uint32_t value = 0;
            for (int i = 0; i < 16 && s_monitor_event(mon, &ev, &value); i++) {
                if (ev == ZMQ_EVENT_CONNECTED)
                    tcp_connected = 1;
                else if (ev == ZMQ_EVENT_CONNECT_RETRIED)
                    retried = 1;
                else if (ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED)
                    handshake_ok = 1;
                else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
                    rc = s_fail(self, AB_EREFUSED,
                                "the broker at %.200s refused the identity '%s' (ZAP status "
                                "%u); it takes plain identities only when run with "
                                "--insecure-plain-identities",
                                uri, self->participant[0] ? self->participant : "(none)", value);
                    goto fail;
                } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
                    rc = s_fail(self, AB_EREFUSED,
                                "the broker at %.200s refused the connection: %s (ZMTP error "
                                "0x%08x)",
                                uri, s_protocol_error(value, self->participant[0] != 0), value);
                    goto fail;
                }
            }
        }
        if (items[0].revents & ZMQ_POLLIN) {
            for (int i = 0; i < S_BUDGET && self->hello_status == 0; i++) {
                int got = s_recv_one(self);
                if (got < 0) {
                    rc = got;
                    goto fail;
                }
                if (got == 0)
                    break;
            }
        }
        /* a refused TLS session only closes the relay's loopback connection: ask the relay */
        int kind = 0;
        char why[S_ERRLEN];
        if (self->hello_status == 0 && self->tunnel &&
            ab_tunnel_failure(self->tunnel, &kind, why, sizeof why) > 0 && kind == AB_TUNNEL_TLS) {
            rc = s_fail(self, AB_EREFUSED, "%s", why);
            goto fail;
        }
    }
    self->hello_waiting = 0;
    if (self->hello_status < 0) {
        rc = self->hello_status; /* last_error set from the broker's ERROR */
        goto fail;
    }
    int tkind = 0;
    char twhy[S_ERRLEN];
    if (self->hello_status == 0 && self->tunnel &&
        ab_tunnel_failure(self->tunnel, &tkind, twhy, sizeof twhy) > 0) {
        rc = s_fail(self, AB_ETIMEDOUT, "no connection to the broker at %.200s within %d ms: %s",
                    uri, timeout_ms, twhy);
        goto fail;
    }
    if (self->hello_status == 0) {
        if (!tcp_connected)
            rc = s_fail(self, AB_ETIMEDOUT, "no connection to the broker at %.200s within %d ms%s",
                        uri, timeout_ms,
                        retried ? " (connection refused; is the broker running there?)" : "");
        else if (!handshake_ok && mon)
            rc = s_fail(self, AB_ETIMEDOUT,
                        "connected to %.200s, but the security handshake did not complete within "
                        "%d ms (is this a broker listener, and does it use the same mechanism?)",
                        uri, timeout_ms);
        else
            rc = s_fail(self, AB_ETIMEDOUT,
                        "the broker at %.200s did not answer HELLO within %d ms", uri, timeout_ms);
        goto fail;
    }
    /* the first handshake is not a reconnect: consume its event (later ones are benign) */
    uint16_t ev = 0;
    uint32_t value = 0;
    for (int i = 0; mon && !handshake_ok && i < 64 && s_monitor_event(mon, &ev, &value); i++)
        handshake_ok = ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED;
    self->mon = mon;
    size_t fdlen = sizeof self->fd;
    if (zmq_getsockopt(self->sock, ZMQ_FD, &self->fd, &fdlen) != 0) {
        rc = s_fail(self, AB_EIO, "cannot get the socket's file descriptor: %s",
                    zmq_strerror(errno));
        s_close_sockets(self, self->mon, 0);
        self->mon = NULL;
        ab_tunnel_destroy(&self->tunnel);
        return rc;
    }
    self->connected = 1;
    self->last_send_ms = s_now();
    return 0;

fail:
    self->hello_waiting = 0;
    s_close_sockets(self, mon, 0);
    ab_tunnel_destroy(&self->tunnel);
    return rc;
}

uint64_t
ab_client_refused_replies(const ab_client_t *self, const char **last_reason)
{
    if (last_reason)
        *last_reason = self ? self->last_refusal : "";
    return self ? self->refused_replies : 0;
}

const char *
ab_client_last_error(const ab_client_t *self)
{
    return self ? self->last_error : "";
}

const char *
ab_client_participant(const ab_client_t *self)
{
    return self ? self->participant : "";
}

/* ---- calls -------------------------------------------------------------------------------- */

static int
s_check_call(ab_client_t *self, const char *service, const void *req, size_t req_len,
             int timeout_ms)
{
    char why[AB_WHY_LEN];
    if (self->closing)
        return s_fail(self, AB_ESTATE, "the client is closing");
    if (!self->connected)
        return s_fail(self, AB_ESTATE, "not connected to a broker (call ab_client_connect first)");
    if (ab_wire_check_service(service, 0, why) != 0)
        return s_fail(self, AB_EINVAL, "%s", why);
    if (!req && req_len)
        return s_fail(self, AB_EINVAL, "request is NULL but its length is %zu", req_len);
    if (timeout_ms < 0)
        return s_fail(self, AB_EINVAL, "timeout %d ms is negative", timeout_ms);
    /* refused here: a frame far over the limit would make the broker drop the connection */
    if (self->max_payload && req_len > self->max_payload)
        return s_fail(self, AB_ETOO_LARGE,
                      "request of %zu bytes exceeds the broker's max_payload of %u bytes", req_len,
                      self->max_payload);
    return 0;
}

int
ab_call(ab_client_t *self, const char *service, const void *req, size_t req_len, int timeout_ms,
        void **reply, size_t *reply_len)
{
    if (reply)
        *reply = NULL;
    if (reply_len)
        *reply_len = 0;
    if (!self)
        return AB_EINVAL;
    if (!reply || !reply_len)
        return s_fail(self, AB_EINVAL, "reply and reply_len must not be NULL");
    int rc = s_check_call(self, service, req, req_len, timeout_ms);
    if (rc != 0)
        return rc;
    uint32_t deadline = timeout_ms ? (uint32_t)timeout_ms : S_CALL_MS;
    s_sync_t sync;
    memset(&sync, 0, sizeof sync);
    sync.want_reply = 1;
    uint64_t seq = 0;
    rc = s_start(self, AMTSBOTE__V1__KIND__KIND_CALL, service, req, req_len, deadline,
                 deadline + S_GRACE_MS, NULL, NULL, &sync, &seq);
    if (rc != 0)
        return rc;
    rc = s_wait(self, seq, &sync);
    if (rc != 0)
        return rc;
    if (sync.status != 0)
        return s_fail(self, sync.status, "%s", sync.errtext);
    *reply = sync.reply;
    *reply_len = sync.reply_len;
    return 0;
}

int
ab_call_async(ab_client_t *self, const char *service, const void *req, size_t req_len,
              int timeout_ms, ab_call_cb *cb, void *arg)
{
    if (!self)
        return AB_EINVAL;
    if (!cb)
        return s_fail(self, AB_EINVAL, "callback must not be NULL");
    int rc = s_check_call(self, service, req, req_len, timeout_ms);
    if (rc != 0)
        return rc;
    uint32_t deadline = timeout_ms ? (uint32_t)timeout_ms : S_CALL_MS;
    return s_start(self, AMTSBOTE__V1__KIND__KIND_CALL, service, req, req_len, deadline,
                   deadline + S_GRACE_MS, cb, arg, NULL, NULL);
}

size_t
ab_client_in_flight(const ab_client_t *self)
{
    return self ? self->n_async : 0;
}

/* ---- offers ------------------------------------------------------------------------------- */

/* Sends OFFER or WITHDRAW for `service` and waits for the broker's answer. */
static int
s_control(ab_client_t *self, int kind, const char *service, int *sent)
{
    s_sync_t sync;
    memset(&sync, 0, sizeof sync);
    uint64_t seq = 0;
    *sent = 0;
    int rc = s_start(self, kind, service, NULL, 0, 0, S_CONTROL_MS, NULL, NULL, &sync, &seq);
    if (rc != 0)
        return rc;
    *sent = 1;
    rc = s_wait(self, seq, &sync);
    if (rc != 0)
        return rc;
    if (sync.status != 0)
        return s_fail(self, sync.status, "%s", sync.errtext);
    return 0;
}

/* Takes offer `o` out of the client's list and frees it (nothing when it is not there). */
static void
s_offer_drop(ab_client_t *self, s_offer_t *o)
{
    for (s_offer_t **pp = &self->offers; *pp; pp = &(*pp)->next) {
        if (*pp == o) {
            *pp = o->next;
            free(o);
            return;
        }
    }
}

int
ab_offer(ab_client_t *self, const char *service, ab_handler_fn *handler, void *arg)
{
    char why[AB_WHY_LEN];
    if (!self)
        return AB_EINVAL;
    if (self->closing)
        return s_fail(self, AB_ESTATE, "the client is closing");
    if (!self->connected)
        return s_fail(self, AB_ESTATE, "not connected to a broker (call ab_client_connect first)");
    if (!handler)
        return s_fail(self, AB_EINVAL, "handler must not be NULL");
    if (ab_wire_check_service(service, 1, why) != 0)
        return s_fail(self, AB_EINVAL, "%s", why);
    for (s_offer_t *o = self->offers; o; o = o->next)
        if (strcmp(o->service, service) == 0)
            return s_fail(self, AB_ESTATE, "this client already offers '%s'", service);
    s_offer_t *o = calloc(1, sizeof *o);
    if (!o)
        return s_fail(self, AB_ENOMEM, "no memory to offer '%s'", service);
    s_copy_str(o->service, sizeof o->service, service);
    o->len = strlen(o->service);
    o->handler = handler;
    o->arg = arg;
    /* registered before the broker confirms: a CALL may overtake the REPLY */
    o->next = self->offers;
    self->offers = o;
    int sent;
    int rc = s_control(self, AMTSBOTE__V1__KIND__KIND_OFFER, service, &sent);
    if (rc != 0) {
        s_offer_drop(self, o);
    }
    return rc;
}

int
ab_withdraw(ab_client_t *self, const char *service)
{
    if (!self)
        return AB_EINVAL;
    if (!self->connected || self->closing)
        return s_fail(self, AB_ESTATE, "not connected to a broker");
    s_offer_t *o = NULL;
    for (o = self->offers; o; o = o->next)
        if (service && strcmp(o->service, service) == 0)
            break;
    if (!o)
        return s_fail(self, AB_EINVAL, "this client does not offer '%.255s'",
                      service ? service : "");
    if (s_link_down(self)) {
        /* nobody to tell, and waiting for an answer would only wait out S_CONTROL_MS; a broker
         * that comes back does not know the offer, and it is not repeated to it */
        s_offer_drop(self, o);
        return s_fail(self, AB_ECONNECT,
                      "the connection to the broker is down: '%.255s' is withdrawn here, and "
                      "the broker drops the offer when it notices",
                      service);
    }
    /* kept until the broker confirms, so calls that overtake the WITHDRAW are still served */
    int sent;
    int rc = s_control(self, AMTSBOTE__V1__KIND__KIND_WITHDRAW, o->service, &sent);
    if (!sent)
        return rc; /* the offer stands */
    for (s_offer_t **pp = &self->offers; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->service, service) == 0) {
            s_offer_t *dead = *pp;
            *pp = dead->next;
            free(dead);
            break;
        }
    }
    return rc;
}

/* ---- requests ----------------------------------------------------------------------------- */

/* A received payload: its bytes and length ("" for an empty one), NULL for no message. */
static const void *
s_payload_of(const zmq_msg_t *payload, size_t *len)
{
    if (!payload) {
        if (len)
            *len = 0;
        return NULL;
    }
    /* zmq_msg_data/size take a non-const message but do not change it */
    zmq_msg_t *msg = (zmq_msg_t *)payload;
    if (len)
        *len = zmq_msg_size(msg);
    return zmq_msg_size(msg) ? zmq_msg_data(msg) : "";
}

const void *
ab_request_payload(const ab_request_t *req, size_t *len)
{
    return s_payload_of(req ? &req->payload : NULL, len);
}

const char *
ab_request_method(const ab_request_t *req)
{
    return req ? req->method : "";
}

const char *
ab_request_caller(const ab_request_t *req)
{
    return req ? req->caller : "";
}

const char *
ab_request_purpose(const ab_request_t *req)
{
    return req ? req->purpose : "";
}

const char *
ab_request_message_id(const ab_request_t *req)
{
    if (!req)
        return "";
    if (req->has_id && !req->message_id[0]) {
        /* few handlers ask; the request is the library's own malloc'd, never const, object */
        ab_request_t *mut = (ab_request_t *)req;
        ab_hex(req->id, AB_MESSAGE_ID_LEN, mut->message_id);
    }
    return req->message_id;
}

int
ab_request_remaining_ms(const ab_request_t *req)
{
    if (!req)
        return 0;
    uint64_t now = ab_now_ms();
    if (now >= req->deadline_at)
        return 0;
    uint64_t left = req->deadline_at - now;
    return left > INT_MAX ? INT_MAX : (int)left;
}

int
ab_reply(ab_request_t **req_p, const void *data, size_t len)
{
    if (!req_p || !*req_p)
        return AB_EINVAL;
    ab_request_t *req = *req_p;
    *req_p = NULL;
    ab_client_t *self = req->client;
    if (!self) {
        s_request_free(req);
        return AB_ESTATE;
    }
    if (!data && len) {
        s_request_free(req);
        return s_fail(self, AB_EINVAL, "reply data is NULL but its length is %zu", len);
    }
    if (self->max_payload && len > self->max_payload) {
        /* the caller learns why at once instead of waiting for its deadline */
        char text[AB_MAX_ERROR_TEXT];
        snprintf(text, sizeof text,
                 "the provider's reply of %zu bytes exceeds the broker's max_payload of %u bytes",
                 len, self->max_payload);
        s_send_error(self, req->corr, req->corr_len, AMTSBOTE__V1__ERROR_CODE__PROVIDER_ERROR,
                     text);
        s_request_free(req);
        return s_fail(self, AB_ETOO_LARGE, "%s", text);
    }
    ab_header_t hdr = AMTSBOTE__V1__HEADER__INIT;
    hdr.kind = AMTSBOTE__V1__KIND__KIND_REPLY;
    hdr.correlation_id.data = req->corr;
    hdr.correlation_id.len = req->corr_len;
    int rc;
    if (len && data == zmq_msg_data(&req->payload) && len == zmq_msg_size(&req->payload))
        rc = s_post(self, &hdr, 1, NULL, 0, &req->payload, 0); /* an echo: no copy */
    else
        rc = s_post(self, &hdr, 1, data, len, NULL, 0);
    s_request_free(req);
    return rc;
}

int
ab_reply_error(ab_request_t **req_p, const char *text)
{
    if (!req_p || !*req_p)
        return AB_EINVAL;
    ab_request_t *req = *req_p;
    *req_p = NULL;
    ab_client_t *self = req->client;
    if (!self) {
        s_request_free(req);
        return AB_ESTATE;
    }
    int rc = s_send_error(self, req->corr, req->corr_len, AMTSBOTE__V1__ERROR_CODE__PROVIDER_ERROR,
                          text && *text ? text : "the provider failed without saying why");
    s_request_free(req);
    return rc;
}

/* ---- driving ------------------------------------------------------------------------------ */

int
ab_client_fd(const ab_client_t *self)
{
    return self && self->connected ? self->fd : -1;
}

/*
 * The connection to the broker broke: the broker answers on the connection a request came in
 * on, and a new one (ZeroMQ reconnects) is another peer to it, so nothing sent before can be
 * answered any more. Ends every request waiting for an answer now, instead of at its deadline.
 * Requests that callbacks make meanwhile go out on the next connection and are not touched.
 */
static void
s_fail_in_flight(ab_client_t *self)
{
    size_t n = self->heap.n;
    uint64_t *seqs = n ? malloc(n * sizeof *seqs) : NULL;
    if (!seqs)
        return; /* none, or no memory: they end at their deadlines */
    for (size_t i = 0; i < n; i++)
        seqs[i] = AB_CONTAINER_OF(self->heap.v[i], s_pending_t, expires)->seq;
    for (size_t i = 0; i < n; i++) {
        s_pending_t *p = s_pending_find(self, seqs[i]);
        if (!p)
            continue; /* a callback completed it meanwhile */
        s_pending_remove(self, p);
        char text[S_ERRLEN];
        if (p->kind == AMTSBOTE__V1__KIND__KIND_CALL)
            snprintf(text, sizeof text,
                     "the connection to the broker broke with the call to '%s' in flight: its "
                     "answer cannot come back; whether the provider ran it is unknown",
                     p->service);
        else if (p->kind == AMTSBOTE__V1__KIND__KIND_SEND ||
                 p->kind == AMTSBOTE__V1__KIND__KIND_PUBLISH)
            snprintf(text, sizeof text,
                     "the connection to the broker broke before it answered %s '%s': it may or "
                     "may not have been stored; send it again with the same message id to be sure",
                     ab_kind_name(p->kind), p->service);
        else
            snprintf(text, sizeof text,
                     "the connection to the broker broke before it answered %s '%s'",
                     ab_kind_name(p->kind), p->service);
        s_complete(self, p, AB_EUNAVAILABLE, NULL, 0, text);
    }
    free(seqs);
}

/*
 * After ZeroMQ reconnected (a broker restart, a network failure) the broker knows neither this
 * connection nor its offers; the protocol has no message that would tell us. So on every new
 * handshake after the first: HELLO again and repeat every OFFER. Their answers are matched to
 * nothing and dropped; a refused offer shows as UNKNOWN_SERVICE at the callers.
 */
static void
s_check_reconnect(ab_client_t *self, uint64_t now, int force)
{
    uint16_t ev = 0;
    uint32_t value = 0;
    int reconnected = 0;
    /* each look costs system calls; a reconnect noticed within S_MONITOR_MS is soon enough */
    if (now < self->next_monitor_ms && !force)
        return;
    self->next_monitor_ms = now + S_MONITOR_MS;
    for (int i = 0; self->mon && i < 256 && s_monitor_event(self->mon, &ev, &value); i++) {
        if (ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            reconnected = 1;
            self->link_down = 0;
        } else if (ev == ZMQ_EVENT_DISCONNECTED) {
            /* over tls:// the relay closes the loopback connection when the broker's ends.
             * Only the end of a connection that was up strands requests: while the broker is
             * away, attempts end without a handshake, and what was sent meanwhile waits in
             * ZeroMQ's queue for the next connection. Down before the callbacks run: one that
             * drives the client must not end its own new requests here again */
            int was_up = !self->link_down;
            self->link_down = 1;
            if (was_up && !self->closing)
                s_fail_in_flight(self);
        }
    }
    if (!reconnected || self->closing)
        return;
    s_reoffer(self, 1);
}

/* The broker cannot be reached now: the connection broke and no handshake has completed since
 * (ZeroMQ keeps trying). Looks at the monitor first. Without a monitor: never. */
static int
s_link_down(ab_client_t *self)
{
    s_check_reconnect(self, s_now(), 1);
    return self->link_down;
}

int
ab_client_process(ab_client_t *self)
{
    if (!self)
        return AB_EINVAL;
    if (!self->connected)
        return s_fail(self, AB_ESTATE, "not connected to a broker");
    uint64_t now = s_now();
    int rc = 1;
    self->dispatching++;
    s_expire(self, now);
    s_check_reconnect(self, now, 0);
    s_heartbeat(self, now);
    /*
     * ZMQ_FD is edge-triggered: stop only when a receive says nothing is left, which also
     * re-arms the fd after the sends done by handlers and heartbeats. So when the batch is over,
     * its queued sends go out and one more receive follows them; a message that came in
     * meanwhile starts the next batch.
     */
    for (int i = 0; i < S_BUDGET; i++) {
        uint64_t t0 = ab_now_ms();
        int got = s_recv_one(self);
        if (got < 0) {
            rc = got;
            break;
        }
        if (!self->connected) {
            rc = 0;
            break;
        }
        /*
         * A handler that took its time (a provider that works synchronously) must not hold its
         * answer back until the next one is done: after a slow message, or once anything has
         * waited S_HOLD_MS, the queue goes out now.
         */
        if (got > 0 && self->nout > 0) {
            uint64_t now_ms = ab_now_ms();
            if (now_ms - t0 >= S_HOLD_MS || now_ms - self->out_since >= S_HOLD_MS)
                s_flush(self);
        }
        if (got == 0) {
            if (self->nout == 0 && self->nfailed == 0) {
                rc = 0;
                break;
            }
            s_flush(self);
        }
    }
    self->dispatching--;
    s_flush(self); /* after the budget or an error: sent now, and `unsettled` stays set */
    return rc;
}

int
ab_client_next_timeout(const ab_client_t *self)
{
    if (!self || !self->connected)
        return -1;
    /*
     * A send since the last receive that said EAGAIN may have swallowed the fd's edge: then
     * ab_client_process() must run before anyone waits on the fd.
     */
    if (self->unsettled)
        return 0;
    uint64_t now = s_now();
    int64_t best = -1;
    const s_pending_t *first = s_first_pending(self);
    if (first) {
        uint64_t at = first->expires.at;
        best = at > now ? (int64_t)(at - now) : 0;
    }
    if (first && self->mon) { /* answers awaited: look for a broken connection in time */
        uint64_t at = self->next_monitor_ms;
        int64_t t = at > now ? (int64_t)(at - now) : 0;
        if (t < best)
            best = t;
    }
    if (s_live(self)) {
        uint64_t at = self->last_send_ms + self->heartbeat_ms;
        int64_t t = at > now ? (int64_t)(at - now) : 0;
        if (best < 0 || t < best)
            best = t;
    }
    return best > INT_MAX ? INT_MAX : (int)best;
}

int
ab_client_run(ab_client_t *self, int timeout_ms)
{
    if (!self)
        return AB_EINVAL;
    if (!self->connected)
        return s_fail(self, AB_ESTATE, "not connected to a broker");
    uint64_t end = timeout_ms >= 0 ? ab_now_ms() + (uint64_t)timeout_ms : 0;
    int rc = 0;
    while (!self->stop) {
        rc = ab_client_process(self);
        if (rc < 0)
            break;
        rc = 0;
        uint64_t now = ab_now_ms();
        if (timeout_ms >= 0 && now >= end)
            break;
        if (self->stop)
            break;
        int t = ab_client_next_timeout(self);
        /* a stop from a signal handler may land just before poll(): never sleep long */
        if (t < 0 || t > S_RUN_SLICE_MS)
            t = S_RUN_SLICE_MS;
        if (timeout_ms >= 0 && (uint64_t)t > end - now)
            t = (int)(end - now);
        struct pollfd pfd = {.fd = self->fd, .events = POLLIN, .revents = 0};
        if (poll(&pfd, 1, t) < 0 && errno != EINTR) {
            rc = s_fail(self, AB_EIO, "poll: %s", strerror(errno));
            break;
        }
    }
    self->stop = 0;
    return rc;
}

void
ab_client_stop(ab_client_t *self)
{
    if (self)
        self->stop = 1;
}

/* ---- mailboxes and events ----------------------------------------------------------------- */

/* Checks a message type name: dotted identifiers (A-Z a-z 0-9 _), at most 255 bytes. */
static int
s_check_schema(ab_client_t *self, const char *schema)
{
    size_t len = schema ? strlen(schema) : 0;
    if (len == 0)
        return 0;
    if (len > AB_MAX_NAME)
        return s_fail(self, AB_EINVAL, "schema: the message type name is longer than %d bytes",
                      AB_MAX_NAME);
    for (size_t i = 0; i < len; i++) {
        char c = schema[i];
        int ident =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
        if (!ident && !(c == '.' && i > 0 && i + 1 < len && schema[i - 1] != '.'))
            return s_fail(self, AB_EINVAL,
                          "schema '%.255s' is not a fully-qualified message type such as "
                          "meldewesen.v1.Anmeldung",
                          schema);
    }
    return 0;
}

/* What every sending function checks before it sends. */
static int
s_check_ready(ab_client_t *self)
{
    if (self->closing)
        return s_fail(self, AB_ESTATE, "the client is closing");
    if (!self->connected)
        return s_fail(self, AB_ESTATE, "not connected to a broker (call ab_client_connect first)");
    return 0;
}

/*
 * Checks a SEND to `to` (a participant) or a PUBLISH on `to` (a topic) before anything is
 * registered: arguments first, so that a bad one is named even without a connection.
 */
static int
s_check_store(ab_client_t *self, int kind, const char *to, const void *data, size_t len,
              const char *schema, int timeout_ms)
{
    char why[AB_WHY_LEN];
    if (kind == AMTSBOTE__V1__KIND__KIND_SEND) {
        if (ab_wire_check_participant(to, why) != 0)
            return s_fail(self, AB_EINVAL, "recipient: %s", why);
    } else if (ab_topic_check(to, 0, why) != 0) {
        return s_fail(self, AB_EINVAL, "%s", why);
    }
    if (!data && len)
        return s_fail(self, AB_EINVAL, "payload is NULL but its length is %zu", len);
    if (timeout_ms < 0)
        return s_fail(self, AB_EINVAL, "timeout %d ms is negative", timeout_ms);
    int rc = s_check_schema(self, schema);
    if (rc != 0)
        return rc;
    if ((rc = s_check_ready(self)) != 0)
        return rc;
    if (self->max_payload && len > self->max_payload)
        return s_fail(self, AB_ETOO_LARGE,
                      "payload of %zu bytes exceeds the broker's max_payload of %u bytes", len,
                      self->max_payload);
    return 0;
}

/*
 * Sends SEND (to `to`, with `ttl_ms`) or PUBLISH (on `to`) with message id `id` and the payload,
 * registered as an answer to wait for. Asynchronous ones (send_cb) started during dispatch are
 * queued. Returns 0, or an error with nothing registered.
 */
static int
s_start_store(ab_client_t *self, int kind, const char *to, const void *data, size_t len,
              const char *schema, uint32_t ttl_ms, const uint8_t id[AB_MESSAGE_ID_LEN],
              uint32_t wait_ms, ab_send_cb *send_cb, void *arg, s_sync_t *sync, uint64_t *seq_out)
{
    s_pending_t *p = s_pending_begin(self, kind, to, wait_ms, NULL, send_cb, arg, sync);
    if (!p)
        return AB_ENOMEM;
    memcpy(p->msg_id, id, AB_MESSAGE_ID_LEN);
    uint8_t corr[S_CORR_LEN];
    s_put_be64(corr, p->seq);
    ab_header_t hdr = AMTSBOTE__V1__HEADER__INIT;
    hdr.kind = (Amtsbote__V1__Kind)kind;
    hdr.message_id.data = p->msg_id;
    hdr.message_id.len = AB_MESSAGE_ID_LEN;
    hdr.correlation_id.data = corr;
    hdr.correlation_id.len = sizeof corr;
    if (kind == AMTSBOTE__V1__KIND__KIND_SEND) {
        hdr.recipient = (char *)to;
        hdr.deadline_ms = ttl_ms;
    } else {
        hdr.topic = (char *)to;
    }
    hdr.schema = (char *)(schema ? schema : "");
    if (self->purpose[0])
        hdr.purpose = self->purpose;
    hdr.classification = (Amtsbote__V1__Classification)self->classification;
    uint64_t seq = p->seq;
    int rc = send_cb ? s_post(self, &hdr, 1, data, len, NULL, seq)
                     : s_send(self, &hdr, 1, data, len, NULL);
    if (rc != 0) {
        s_pending_abort(self, p);
        return rc;
    }
    if (seq_out)
        *seq_out = seq;
    return 0;
}

/* Runs a blocking SEND or PUBLISH: checks, sends, waits. */
static int
s_store_sync(ab_client_t *self, int kind, const char *to, const void *data, size_t len,
             const char *schema, uint32_t ttl_ms, const uint8_t *given_id, char id_out[33],
             int timeout_ms)
{
    uint8_t id[AB_MESSAGE_ID_LEN];
    if (given_id)
        memcpy(id, given_id, AB_MESSAGE_ID_LEN);
    else
        ab_uuid7(id);
    if (id_out)
        ab_hex(id, AB_MESSAGE_ID_LEN, id_out);
    int rc = s_check_store(self, kind, to, data, len, schema, timeout_ms);
    if (rc != 0)
        return rc;
    s_sync_t sync;
    memset(&sync, 0, sizeof sync);
    uint64_t seq = 0;
    uint32_t wait = timeout_ms ? (uint32_t)timeout_ms : S_CALL_MS;
    rc =
        s_start_store(self, kind, to, data, len, schema, ttl_ms, id, wait, NULL, NULL, &sync, &seq);
    if (rc != 0)
        return rc;
    rc = s_wait(self, seq, &sync);
    if (rc != 0)
        return rc;
    if (sync.status != 0)
        return s_fail(self, sync.status, "%s", sync.errtext);
    return 0;
}

int
ab_send(ab_client_t *self, const char *recipient, const void *data, size_t len,
        const ab_send_options_t *opts, char id_out[33], int timeout_ms)
{
    if (id_out)
        id_out[0] = '\0';
    if (!self)
        return AB_EINVAL;
    return s_store_sync(self, AMTSBOTE__V1__KIND__KIND_SEND, recipient, data, len,
                        opts ? opts->schema : NULL, opts ? opts->ttl_ms : 0,
                        opts ? opts->message_id : NULL, id_out, timeout_ms);
}

int
ab_send_async(ab_client_t *self, const char *recipient, const void *data, size_t len,
              const ab_send_options_t *opts, ab_send_cb *cb, void *arg)
{
    if (!self)
        return AB_EINVAL;
    if (!cb)
        return s_fail(self, AB_EINVAL, "callback must not be NULL");
    const char *schema = opts ? opts->schema : NULL;
    int rc = s_check_store(self, AMTSBOTE__V1__KIND__KIND_SEND, recipient, data, len, schema, 0);
    if (rc != 0)
        return rc;
    uint8_t id[AB_MESSAGE_ID_LEN];
    if (opts && opts->message_id)
        memcpy(id, opts->message_id, AB_MESSAGE_ID_LEN);
    else
        ab_uuid7(id);
    return s_start_store(self, AMTSBOTE__V1__KIND__KIND_SEND, recipient, data, len, schema,
                         opts ? opts->ttl_ms : 0, id, S_CALL_MS, cb, arg, NULL, NULL);
}

int
ab_publish_async(ab_client_t *self, const char *topic, const void *data, size_t len,
                 const char *schema, ab_send_cb *cb, void *arg)
{
    if (!self)
        return AB_EINVAL;
    if (!cb)
        return s_fail(self, AB_EINVAL, "callback must not be NULL");
    int rc = s_check_store(self, AMTSBOTE__V1__KIND__KIND_PUBLISH, topic, data, len, schema, 0);
    if (rc != 0)
        return rc;
    uint8_t id[AB_MESSAGE_ID_LEN];
    ab_uuid7(id);
    return s_start_store(self, AMTSBOTE__V1__KIND__KIND_PUBLISH, topic, data, len, schema, 0, id,
                         S_CALL_MS, cb, arg, NULL, NULL);
}

int
ab_publish(ab_client_t *self, const char *topic, const void *data, size_t len, const char *schema,
           char id_out[33], int timeout_ms)
{
    if (id_out)
        id_out[0] = '\0';
    if (!self)
        return AB_EINVAL;
    return s_store_sync(self, AMTSBOTE__V1__KIND__KIND_PUBLISH, topic, data, len, schema, 0, NULL,
                        id_out, timeout_ms);
}

/*
 * Sends a control message (CREDIT, SUBSCRIBE, WITHDRAW of a subscription) and waits for the
 * broker's answer; `name` is for error texts. *sent says whether it went out.
 */
static int
s_control_hdr(ab_client_t *self, ab_header_t *hdr, const char *name, int *sent)
{
    s_sync_t sync;
    memset(&sync, 0, sizeof sync);
    *sent = 0;
    s_pending_t *p =
        s_pending_begin(self, (int)hdr->kind, name, S_CONTROL_MS, NULL, NULL, NULL, &sync);
    if (!p)
        return AB_ENOMEM;
    uint64_t seq = p->seq;
    uint8_t corr[S_CORR_LEN];
    s_put_be64(corr, seq);
    hdr->correlation_id.data = corr;
    hdr->correlation_id.len = sizeof corr;
    int rc = s_send(self, hdr, 0, NULL, 0, NULL);
    if (rc != 0) {
        s_pending_abort(self, p);
        return rc;
    }
    *sent = 1;
    rc = s_wait(self, seq, &sync);
    if (rc != 0)
        return rc;
    if (sync.status != 0)
        return s_fail(self, sync.status, "%s", sync.errtext);
    return 0;
}

int
ab_inbox(ab_client_t *self, uint32_t credit, ab_message_fn *fn, void *arg)
{
    if (!self)
        return AB_EINVAL;
    if (credit && !fn)
        return s_fail(self, AB_EINVAL, "a handler is needed to take the mailbox's messages");
    int rc = s_check_ready(self);
    if (rc != 0)
        return rc;
    int was_on = self->inbox_on;
    uint32_t was_credit = self->inbox_credit;
    ab_message_fn *was_fn = self->inbox_fn;
    void *was_arg = self->inbox_arg;
    /* before the broker confirms: a DELIVER may overtake the REPLY */
    self->inbox_on = credit > 0;
    self->inbox_credit = credit;
    self->inbox_fn = credit ? fn : NULL;
    self->inbox_arg = credit ? arg : NULL;
    ab_header_t hdr = AMTSBOTE__V1__HEADER__INIT;
    hdr.kind = AMTSBOTE__V1__KIND__KIND_CREDIT;
    hdr.credit = credit;
    int sent = 0;
    rc = s_control_hdr(self, &hdr, "the mailbox", &sent);
    if (rc != 0 && !(sent && credit == 0)) {
        /* a refused or unsent CREDIT leaves the broker's state as it was */
        self->inbox_on = was_on;
        self->inbox_credit = was_credit;
        self->inbox_fn = was_fn;
        self->inbox_arg = was_arg;
    }
    if (self->inbox_on && !was_on)
        self->last_send_ms = s_now(); /* the heartbeat timer starts now */
    return rc;
}

static s_sub_t *
s_sub_find(ab_client_t *self, const char *pattern, const char *durable)
{
    for (s_sub_t *sub = self->subs; sub; sub = sub->next) {
        if (durable[0] ? strcmp(sub->durable, durable) == 0
                       : !sub->durable[0] && strcmp(sub->pattern, pattern) == 0)
            return sub;
    }
    return NULL;
}

static void
s_sub_remove(ab_client_t *self, s_sub_t *dead)
{
    for (s_sub_t **pp = &self->subs; *pp; pp = &(*pp)->next) {
        if (*pp == dead) {
            *pp = dead->next;
            free(dead);
            return;
        }
    }
}

int
ab_subscribe(ab_client_t *self, const char *pattern, const char *durable, uint32_t credit,
             ab_message_fn *fn, void *arg)
{
    char why[AB_WHY_LEN];
    if (!self)
        return AB_EINVAL;
    if (!durable)
        durable = "";
    if (ab_topic_check(pattern, 1, why) != 0)
        return s_fail(self, AB_EINVAL, "%s", why);
    if (durable[0] && ab_subscription_check(durable, why) != 0)
        return s_fail(self, AB_EINVAL, "%s", why);
    if (!fn)
        return s_fail(self, AB_EINVAL, "a handler is needed to take the events");
    int rc = s_check_ready(self);
    if (rc != 0)
        return rc;
    s_sub_t *old = s_sub_find(self, pattern, durable);
    if (old && durable[0])
        return s_fail(self, AB_ESTATE,
                      "this client already has the durable subscription '%s' (to '%s')", durable,
                      old->pattern);
    if (old)
        return s_fail(self, AB_ESTATE, "this client already subscribes to '%s'", pattern);
    s_sub_t *sub = calloc(1, sizeof *sub);
    if (!sub)
        return s_fail(self, AB_ENOMEM, "no memory to subscribe to '%s'", pattern);
    s_copy_str(sub->pattern, sizeof sub->pattern, pattern);
    s_copy_str(sub->durable, sizeof sub->durable, durable);
    sub->credit = durable[0] ? credit : 0;
    sub->fn = fn;
    sub->arg = arg;
    int was_live = s_live(self);
    /* registered before the broker confirms: an EVENT may overtake the REPLY */
    sub->next = self->subs;
    self->subs = sub;
    ab_header_t hdr = AMTSBOTE__V1__HEADER__INIT;
    hdr.kind = AMTSBOTE__V1__KIND__KIND_SUBSCRIBE;
    hdr.topic = sub->pattern;
    hdr.subscription = sub->durable;
    hdr.credit = sub->credit;
    int sent = 0;
    rc = s_control_hdr(self, &hdr, pattern, &sent);
    if (rc != 0)
        s_sub_remove(self, sub);
    else if (!was_live)
        self->last_send_ms = s_now();
    return rc;
}

int
ab_unsubscribe(ab_client_t *self, const char *pattern, const char *durable)
{
    char why[AB_WHY_LEN];
    if (!self)
        return AB_EINVAL;
    if (!durable)
        durable = "";
    if (durable[0] && ab_subscription_check(durable, why) != 0)
        return s_fail(self, AB_EINVAL, "%s", why);
    if (!durable[0] && ab_topic_check(pattern, 1, why) != 0)
        return s_fail(self, AB_EINVAL, "%s", why);
    int rc = s_check_ready(self);
    if (rc != 0)
        return rc;
    s_sub_t *sub = s_sub_find(self, pattern ? pattern : "", durable);
    if (!sub && !durable[0])
        return s_fail(self, AB_EINVAL, "this client does not subscribe to '%s'", pattern);
    ab_header_t hdr = AMTSBOTE__V1__HEADER__INIT;
    hdr.kind = AMTSBOTE__V1__KIND__KIND_WITHDRAW;
    if (durable[0])
        hdr.subscription = (char *)durable;
    else
        hdr.topic = (char *)pattern;
    int sent = 0;
    rc = s_control_hdr(self, &hdr, durable[0] ? durable : pattern, &sent);
    /* looked up again: a handler may have unsubscribed meanwhile */
    if (sent && (sub = s_sub_find(self, pattern ? pattern : "", durable)) != NULL)
        s_sub_remove(self, sub);
    return rc;
}

int
ab_ack(ab_message_t **msg_p)
{
    if (!msg_p || !*msg_p)
        return AB_EINVAL;
    ab_message_t *m = *msg_p;
    *msg_p = NULL;
    ab_client_t *self = m->client;
    if (!self) {
        s_message_release(m);
        return AB_ESTATE;
    }
    int rc = 0;
    if (m->kind != AB_MSG_EVENT || m->subscription[0]) {
        rc = s_send_ack(self, m->sequence, m->subscription);
        /* remembered even when the ACK did not go out: the application has handled it, and
         * the redelivery that follows is acknowledged then */
        if (m->has_key && !self->dedup)
            self->dedup = ab_dedup_new(AB_DEDUP_CAPACITY); /* NULL: no memory, no dedup */
        if (m->has_key)
            ab_dedup_add(self->dedup, m->key_name, m->key_id);
    }
    s_message_release(m);
    return rc;
}

void
ab_message_free(ab_message_t **msg_p)
{
    if (!msg_p || !*msg_p)
        return;
    ab_message_t *m = *msg_p;
    *msg_p = NULL;
    s_message_release(m);
}

int
ab_message_kind(const ab_message_t *m)
{
    return m ? m->kind : 0;
}

const void *
ab_message_payload(const ab_message_t *m, size_t *len)
{
    return s_payload_of(m ? &m->payload : NULL, len);
}

const char *
ab_message_id(const ab_message_t *m)
{
    return m ? m->id_hex : "";
}

const char *
ab_message_sender(const ab_message_t *m)
{
    return m ? m->sender : "";
}

const char *
ab_message_recipient(const ab_message_t *m)
{
    return m ? m->recipient : "";
}

const char *
ab_message_topic(const ab_message_t *m)
{
    return m ? m->topic : "";
}

const char *
ab_message_schema(const ab_message_t *m)
{
    return m ? m->schema : "";
}

const char *
ab_message_purpose(const ab_message_t *m)
{
    return m ? m->purpose : "";
}

const char *
ab_message_subscription(const ab_message_t *m)
{
    return m ? m->subscription : "";
}

const char *
ab_message_about(const ab_message_t *m)
{
    return m ? m->about_hex : "";
}

int
ab_message_receipt(const ab_message_t *m)
{
    return m ? m->receipt : 0;
}

const char *
ab_message_error(const ab_message_t *m)
{
    return m && m->error ? m->error : "";
}

uint64_t
ab_message_timestamp_ms(const ab_message_t *m)
{
    return m ? m->timestamp_ms : 0;
}

uint32_t
ab_message_attempt(const ab_message_t *m)
{
    return m ? m->attempt : 0;
}

uint64_t
ab_message_sequence(const ab_message_t *m)
{
    return m ? m->sequence : 0;
}

uint64_t
ab_client_duplicates_dropped(const ab_client_t *self)
{
    return self ? self->duplicates : 0;
}
