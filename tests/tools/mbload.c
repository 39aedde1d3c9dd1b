/*
 * mbload.c - load and fault generator for the broker's mailboxes, events and calls, on raw
 * ZeroMQ DEALERs with PLAIN identities (the broker runs with --insecure-plain-identities).
 *
 * Independent of the client library on purpose: it keeps windows of SENDs in flight, resends the
 * same message id after ERROR UNAVAILABLE, after a reconnect and after a time-out (the broker
 * dedups), and checks what arrives for loss, invention, duplication and corruption. Every loop is
 * bounded by a count and a time limit.
 *
 *   mbload send  --broker URI --as ADDR --to RCPT --count N --size B --window W [--senders S]
 *                [--accepted-log F] [--attempted-log F] [--id-prefix HEX] [--ttl-ms T]
 *                [--seconds MAX] [--timeout-ms T] [--drain-seconds D] [--dup-every K]
 *   mbload recv  --broker URI --as ADDR --credit C [--count N] [--seconds MAX] [--idle-ms I]
 *                [--received-log F] [--ack] [--size B]
 *   mbload pub   --broker URI --as ADDR --topic T --count N --size B --window W [...as send]
 *   mbload sub   --broker URI --as ADDR --topic PATTERN [--durable NAME] [--credit C]
 *                [--subscribers K] [--count N] [--seconds MAX] [--idle-ms I] [--ack] [...]
 *   mbload serve --broker URI --as ADDR --service S [--senders T] [--seconds MAX]
 *   mbload call  --broker URI --as ADDR --service S --count N --size B --window W [--senders S]
 *   mbload selftest   (send, recv, pub, sub, serve and call against a fake broker in-process)
 *
 * With --senders S > 1 (or --subscribers K > 1) each thread has its own DEALER and identity
 * ADDR.sI (ADDR.s0, ADDR.s1, ...): participant addresses are lower-case dotted segments.
 *
 * --dup-every K sends every Kth new message twice back to back (same id): the broker must store
 * it once and answer both. --replay FILE sends the ids of FILE (an accepted or attempted log)
 * again, with the same payloads (--count is their number): within the dedup window a SEND
 * stores nothing.
 *
 * Payloads: B bytes (B >= 16); the first 16 are the message id, the rest a stream generated from
 * the id, so a receiver checks every payload without knowing what was sent.
 *
 * Logs (one line each, appended): --attempted-log gets every id before it is first sent;
 * --accepted-log gets every id the broker accepted (REPLY), written and fdatasync'd in batches
 * BEFORE the id is counted; --received-log gets "RECEIVER SENDER ID ATTEMPT SEQUENCE new|dup" per
 * DELIVER or EVENT. Ids are lower-case hex.
 *
 * Output: one line on stdout, "result mode=... key=value ...". Progress and notable events
 * ("first UNAVAILABLE", reconnects, "ready") go to stderr. Exit status: 0 when everything that
 * was sent was answered (send/pub/call) or nothing was corrupt (recv/sub), 1 otherwise, 2 on a
 * usage error or a refused CREDIT/SUBSCRIBE/OFFER.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "loadgen.h"
#include "wire.h"

#define ID_LEN AB_MESSAGE_ID_LEN
#define HEX_LEN (2 * ID_LEN)
#define MAX_THREADS 64
#define MAX_WINDOW 100000
#define MAX_COUNT 100000000L
#define MAX_SIZE (16u * 1024 * 1024)
#define ERR_CODES 16
/* Pause before a message refused with UNAVAILABLE or MAILBOX_FULL goes out again. */
#define RETRY_PAUSE_MS 200
/* Accepted ids are written, synced and counted at this many, or this old. */
#define ACC_BATCH 256
#define ACC_BATCH_MS 20
#define LOG_BATCH 256
#define ACK_BATCH 4096
#define POLL_MS 20
/* How often the window is scanned for retries that are due and for time-outs. */
#define SCAN_MS 5
/* How long HELLO, CREDIT, SUBSCRIBE or OFFER may take to be answered at the start. */
#define START_TIMEOUT_MS 20000

typedef enum {
    M_NONE,
    M_SEND,
    M_RECV,
    M_PUB,
    M_SUB,
    M_SERVE,
    M_CALL,
    M_SELFTEST,
} mode_t_;

typedef struct {
    mode_t_ mode;
    const char *uri;
    const char *as;
    const char *to;
    const char *topic;
    const char *service;
    const char *durable;
    const char *accepted_log, *attempted_log, *received_log;
    uint8_t prefix[4];
    size_t prefix_len;
    long count;
    size_t size;
    int window;
    int threads;
    double seconds;
    double drain_seconds;
    uint32_t ttl_ms;
    int credit;
    int ack;
    long idle_ms;
    int timeout_ms;
    int quiet;
    long dup_every;      /* send: every Nth new message goes out twice at once (0: never) */
    const char *replay;  /* send/pub: the ids to send (again), one hex id a line */
    uint8_t *replay_ids; /* loaded from `replay`; count = their number */
} opts_t;

/* ---- small helpers ---------------------------------------------------------------------- */

static volatile sig_atomic_t s_signalled;

static void
s_on_signal(int sig)
{
    (void)sig;
    s_signalled++;
}

static uint64_t
s_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t
s_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static pthread_mutex_t s_err_lock = PTHREAD_MUTEX_INITIALIZER;

static void __attribute__((format(printf, 1, 2))) s_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&s_err_lock);
    fputs("mbload: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    fflush(stderr);
    pthread_mutex_unlock(&s_err_lock);
    va_end(ap);
}

/* Writes all of buf to fd; returns 0 or -1 (errno set). */
static int
s_write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The payload of message `id`: the id, then a stream seeded from it. */
static void
s_fill_payload(uint8_t *buf, size_t size, const uint8_t id[ID_LEN])
{
    size_t head = size < ID_LEN ? size : ID_LEN;
    memcpy(buf, id, head);
    uint64_t x = s_fnv(id, ID_LEN);
    for (size_t i = head; i < size; i += 8) {
        uint64_t v = s_splitmix(&x);
        size_t n = size - i < 8 ? size - i : 8;
        memcpy(buf + i, &v, n);
    }
}

/*
 * Checks a payload against message id `id` (and its length against `want_size` unless 0).
 * Returns NULL when it is intact, or why not.
 */
static const char *
s_check_payload(const uint8_t *p, size_t len, const uint8_t id[ID_LEN], size_t want_size)
{
    if (want_size && len != want_size)
        return "wrong length";
    if (len < ID_LEN)
        return "shorter than a message id";
    if (memcmp(p, id, ID_LEN) != 0)
        return "the first 16 bytes are not the message id";
    uint64_t x = s_fnv(id, ID_LEN);
    for (size_t i = ID_LEN; i < len; i += 8) {
        uint64_t v = s_splitmix(&x);
        size_t n = len - i < 8 ? len - i : 8;
        if (memcmp(p + i, &v, n) != 0)
            return "the bytes after the id are not the ones generated from it";
    }
    return NULL;
}

/* A new message id: UUIDv7 with the run's prefix in its random bits (bytes 9..12). */
static void
s_new_id(const opts_t *o, uint8_t id[ID_LEN])
{
    ab_uuid7(id);
    if (o && o->prefix_len)
        memcpy(id + 9, o->prefix, o->prefix_len);
}

static int
s_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Percentile `p` (0..100) of sorted `v` in milliseconds from microseconds; 0 when empty. */
static double
s_pct_ms(const uint32_t *v, long n, double p)
{
    if (n <= 0)
        return 0;
    long i = (long)((p / 100.0) * (double)(n - 1) + 0.5);
    return v[i] / 1000.0;
}

/* A thread's identity: ADDR itself for one thread, ADDR.sI for several. */
static void
s_identity(const opts_t *o, int i, int n, char *out, size_t cap)
{
    if (n <= 1)
        snprintf(out, cap, "%s", o->as);
    else
        snprintf(out, cap, "%s.s%d", o->as, i);
}

/* ---- sockets ---------------------------------------------------------------------------- */

typedef struct {
    void *ctx;
    void *sock;
    void *mon;
    int gen;
    int linger;
    char ident[AB_MAX_NAME + 1];
    const char *uri;
    int handshakes; /* successful handshakes seen by the monitor */
} conn_t;

/* Opens conn's DEALER (and its monitor); returns 0 or -1. */
static int
s_conn_open(conn_t *c)
{
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    if (!c->sock)
        return -1;
    int hwm = 200000, ivl = 50, ivl_max = 500, hb = 1000, hbt = 3000;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &c->linger, sizeof c->linger);
    zmq_setsockopt(c->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(c->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(c->sock, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(c->sock, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max);
    zmq_setsockopt(c->sock, ZMQ_HEARTBEAT_IVL, &hb, sizeof hb);
    zmq_setsockopt(c->sock, ZMQ_HEARTBEAT_TIMEOUT, &hbt, sizeof hbt);
    zmq_setsockopt(c->sock, ZMQ_PLAIN_USERNAME, c->ident, strlen(c->ident));
    zmq_setsockopt(c->sock, ZMQ_PLAIN_PASSWORD, "", 0);
    char ep[96];
    snprintf(ep, sizeof ep, "inproc://mbload-mon-%p-%d", (void *)c, ++c->gen);
    if (zmq_socket_monitor(c->sock, ep, ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED) !=
        0)
        return -1;
    c->mon = zmq_socket(c->ctx, ZMQ_PAIR);
    if (!c->mon || zmq_connect(c->mon, ep) != 0)
        return -1;
    if (zmq_connect(c->sock, c->uri) != 0) {
        s_note("%s: cannot connect to %s: %s", c->ident, c->uri, zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

static void
s_conn_close(conn_t *c)
{
    if (c->sock) {
        zmq_socket_monitor(c->sock, NULL, 0);
        zmq_close(c->sock);
        c->sock = NULL;
    }
    if (c->mon) {
        zmq_close(c->mon);
        c->mon = NULL;
    }
}

/*
 * Reads the monitor's events. Returns 1 when a handshake succeeded after an earlier one (the
 * broker came back: what was in flight may be lost), else 0.
 */
static int
s_conn_events(conn_t *c)
{
    int again = 0;
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, c->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            break;
        }
        uint16_t ev = 0;
        if (zmq_msg_size(&m) >= 2)
            memcpy(&ev, zmq_msg_data(&m), 2);
        while (zmq_msg_more(&m) && zmq_msg_recv(&m, c->mon, 0) >= 0) {
        }
        zmq_msg_close(&m);
        if (getenv("MBLOAD_DEBUG"))
            s_note("%s: monitor event %u", c->ident, ev);
        if (ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            if (c->handshakes++ > 0)
                again = 1;
        }
    }
    return again;
}

/* Sends a header and, when `payload` is not NULL, one payload frame. Returns 0 or -1 (errno). */
static int
s_send_hdr(void *sock, const ab_header_t *h, const void *payload, size_t len, int flags)
{
    uint8_t buf[AB_MAX_HEADER_BYTES];
    int n = ab_wire_encode(h, buf, sizeof buf);
    if (n < 0) {
        errno = EMSGSIZE;
        return -1;
    }
    if (zmq_send(sock, buf, (size_t)n, flags | (payload ? ZMQ_SNDMORE : 0)) != n)
        return -1;
    if (payload && zmq_send(sock, payload, len, flags) != (int)len)
        return -1; /* cannot happen once the first frame of a message went out */
    return 0;
}

/* A header with version 1, `kind` and a fresh message id in `id`. */
static void
s_hdr_init(ab_header_t *h, int kind, uint8_t id[ID_LEN])
{
    ab_header_t init = AMTSBOTE__V1__HEADER__INIT;
    *h = init;
    h->version = 1;
    h->kind = kind;
    ab_uuid7(id);
    h->message_id.data = id;
    h->message_id.len = ID_LEN;
}

/*
 * Receives one message without waiting: the header frame into `hdr`, a payload frame (if any)
 * into `body`. Returns 1 for a message, 0 for none, -1 on an error.
 */
static int
s_recv_msg(void *sock, zmq_msg_t *hdr, zmq_msg_t *body, int *has_body)
{
    *has_body = 0;
    if (zmq_msg_recv(hdr, sock, ZMQ_DONTWAIT) < 0)
        return errno == EAGAIN ? 0 : -1;
    int frames = 1;
    while (zmq_msg_more(frames == 1 ? hdr : body)) {
        if (zmq_msg_recv(body, sock, 0) < 0)
            return -1;
        frames++;
        *has_body = 1;
    }
    return 1;
}

/* ---- the sending engine: SEND, PUBLISH and CALL with a window of messages in flight -------- */

typedef struct {
    uint8_t id[ID_LEN];
    uint64_t t0_ns;    /* first sent */
    uint64_t sent_ns;  /* last sent */
    uint64_t retry_ns; /* 0, or when to send again (after UNAVAILABLE) */
    int busy;
    int attempts;
    int next; /* hash chain */
} slot_t;

typedef struct shared shared_t;

typedef struct {
    shared_t *sh;
    int idx;
    conn_t c;
    ab_wire_decoder_t *dec;
    slot_t *slots;
    int *free_slots;
    int nfree;
    int *buckets;
    int nbuckets;
    int busy;
    uint8_t *payload;
    /* accepted but not yet synced to the accepted log and counted */
    char *accbuf;
    size_t acclen;
    uint32_t *acclat;
    int accn;
    uint64_t acc_first_ns;
    char *attbuf;
    size_t attlen;
    /* counters */
    long issued, sends, resends, accepted, dup_replies, unexpected, corrupt, unanswered;
    long errors[ERR_CODES];
    long reconnects, timeouts;
    uint32_t *lat;
    long nlat, caplat;
    uint64_t last_accept_ns;
    int hb_ms;
    int failed; /* could not open its socket */
} sender_t;

struct shared {
    const opts_t *o;
    int kind;         /* KIND_SEND, KIND_PUBLISH or KIND_CALL */
    atomic_long next; /* ids handed out so far, over all threads */
    atomic_int first_unavailable;
    int acc_fd, att_fd;
    uint64_t start_ns, stop_ns;
    void *ctx;
};

static unsigned
s_bucket(const sender_t *w, const uint8_t id[ID_LEN])
{
    uint64_t k;
    memcpy(&k, id + 8, 8); /* random bits */
    return (unsigned)(k * 0x9e3779b97f4a7c15u >> 32) & (unsigned)(w->nbuckets - 1);
}

static int
s_slot_find(sender_t *w, const uint8_t *id, size_t len)
{
    if (len != ID_LEN)
        return -1;
    for (int i = w->buckets[s_bucket(w, id)]; i >= 0; i = w->slots[i].next)
        if (memcmp(w->slots[i].id, id, ID_LEN) == 0)
            return i;
    return -1;
}

static void
s_slot_unlink(sender_t *w, int i)
{
    int *pp = &w->buckets[s_bucket(w, w->slots[i].id)];
    while (*pp != i)
        pp = &w->slots[*pp].next;
    *pp = w->slots[i].next;
    w->slots[i].busy = 0;
    w->free_slots[w->nfree++] = i;
    w->busy--;
}

/* Sends slot i's message (again); a full queue leaves it for a retry soon. */
static void
s_slot_send(sender_t *w, int i, uint64_t now)
{
    const opts_t *o = w->sh->o;
    slot_t *s = &w->slots[i];
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = 1;
    h.kind = w->sh->kind;
    h.message_id.data = s->id;
    h.message_id.len = ID_LEN;
    h.correlation_id.data = s->id;
    h.correlation_id.len = ID_LEN;
    if (w->sh->kind == AMTSBOTE__V1__KIND__KIND_SEND) {
        h.recipient = (char *)o->to;
        h.deadline_ms = o->ttl_ms;
    } else if (w->sh->kind == AMTSBOTE__V1__KIND__KIND_PUBLISH) {
        h.topic = (char *)o->topic;
    } else {
        h.service = (char *)o->service;
        h.deadline_ms = o->ttl_ms;
    }
    s_fill_payload(w->payload, o->size, s->id);
    s->sent_ns = now;
    s->retry_ns = 0;
    if (s_send_hdr(w->c.sock, &h, w->payload, o->size, ZMQ_DONTWAIT) != 0) {
        s->retry_ns = now + 10 * 1000000u; /* queue full: try again in 10 ms */
        return;
    }
    s->attempts++;
    if (s->attempts == 1)
        w->sends++;
    else
        w->resends++;
    /* the same message again at once: both copies likely reach the broker in one turn */
    if (s->attempts == 1 && o->dup_every && w->sends % o->dup_every == 0 &&
        s_send_hdr(w->c.sock, &h, w->payload, o->size, ZMQ_DONTWAIT) == 0)
        w->resends++;
}

/* Writes and syncs the batch of accepted ids, then counts them (the crash test relies on it). */
static void
s_acc_flush(sender_t *w)
{
    if (w->accn == 0)
        return;
    if (w->sh->acc_fd >= 0) {
        if (s_write_all(w->sh->acc_fd, w->accbuf, w->acclen) != 0 ||
            fdatasync(w->sh->acc_fd) != 0) {
            s_note("%s: writing the accepted log failed: %s", w->c.ident, strerror(errno));
            exit(1); /* counting what is not on disk would make the log lie */
        }
    }
    for (int i = 0; i < w->accn; i++)
        if (w->nlat < w->caplat)
            w->lat[w->nlat++] = w->acclat[i];
    w->accepted += w->accn;
    w->accn = 0;
    w->acclen = 0;
}

static void
s_att_flush(sender_t *w)
{
    if (w->attlen == 0 || w->sh->att_fd < 0)
        return;
    if (s_write_all(w->sh->att_fd, w->attbuf, w->attlen) != 0) {
        s_note("%s: writing the attempted log failed: %s", w->c.ident, strerror(errno));
        exit(1);
    }
    w->attlen = 0;
}

static void
s_sender_answer(sender_t *w, const ab_header_t *h, const zmq_msg_t *body, int has_body,
                uint64_t now)
{
    const opts_t *o = w->sh->o;
    if (h->kind == AMTSBOTE__V1__KIND__KIND_HELLO) {
        if (h->heartbeat_ms)
            w->hb_ms = (int)h->heartbeat_ms;
        return;
    }
    if (h->kind != AMTSBOTE__V1__KIND__KIND_REPLY && h->kind != AMTSBOTE__V1__KIND__KIND_ERROR) {
        w->unexpected++;
        return;
    }
    int i = s_slot_find(w, h->correlation_id.data, h->correlation_id.len);
    if (i < 0) {
        w->dup_replies++; /* an answer to a resend of something answered already */
        return;
    }
    slot_t *s = &w->slots[i];
    if (h->kind == AMTSBOTE__V1__KIND__KIND_ERROR) {
        int code = h->error ? (int)h->error->code : 0;
        w->errors[code >= 0 && code < ERR_CODES ? code : 0]++;
        if (code == AMTSBOTE__V1__ERROR_CODE__UNAVAILABLE ||
            code == AMTSBOTE__V1__ERROR_CODE__MAILBOX_FULL) {
            if (code == AMTSBOTE__V1__ERROR_CODE__UNAVAILABLE &&
                atomic_exchange(&w->sh->first_unavailable, 1) == 0)
                s_note("first UNAVAILABLE (%s) after %.3f s", h->error ? h->error->text : "",
                       (double)(now - w->sh->start_ns) / 1e9);
            s->retry_ns = now + RETRY_PAUSE_MS * 1000000u;
            return;
        }
        if (w->errors[code >= 0 && code < ERR_CODES ? code : 0] == 1)
            s_note("%s: ERROR %d: %s", w->c.ident, code, h->error ? h->error->text : "");
        s_slot_unlink(w, i); /* final */
        return;
    }
    if (w->sh->kind == AMTSBOTE__V1__KIND__KIND_CALL) {
        const char *why = has_body
                              ? s_check_payload(zmq_msg_data((zmq_msg_t *)body),
                                                zmq_msg_size((zmq_msg_t *)body), s->id, o->size)
                              : "no payload frame";
        if (why) {
            w->corrupt++;
            if (w->corrupt == 1)
                s_note("%s: a reply is corrupt: %s", w->c.ident, why);
        }
    }
    uint64_t lat_us = (now - s->t0_ns) / 1000u;
    if (w->accn == 0)
        w->acc_first_ns = now;
    if (w->sh->acc_fd >= 0) {
        ab_hex(s->id, ID_LEN, w->accbuf + w->acclen);
        w->acclen += HEX_LEN;
        w->accbuf[w->acclen++] = '\n';
    }
    w->acclat[w->accn++] = lat_us > UINT32_MAX ? UINT32_MAX : (uint32_t)lat_us;
    w->last_accept_ns = now;
    s_slot_unlink(w, i);
    if (w->accn >= ACC_BATCH)
        s_acc_flush(w);
}

/* Reopens the connection and sends everything in flight again, with the same ids. */
static void
s_sender_reconnect(sender_t *w, uint64_t now)
{
    s_conn_close(&w->c);
    w->c.handshakes = 0;
    if (s_conn_open(&w->c) != 0) {
        s_note("%s: cannot reopen the socket", w->c.ident);
        return;
    }
    w->reconnects++;
    for (int i = 0; i < w->sh->o->window; i++)
        if (w->slots[i].busy)
            s_slot_send(w, i, now);
}

static void *
s_sender_run(void *arg)
{
    sender_t *w = arg;
    const opts_t *o = w->sh->o;
    uint64_t timeout_ns = (uint64_t)o->timeout_ms * 1000000u;
    uint64_t drain_end = 0;
    uint64_t last_hb = s_now_ns(), next_scan = 0;
    if (s_conn_open(&w->c) != 0) {
        w->failed = 1;
        return NULL;
    }
    {
        uint8_t hid[ID_LEN];
        ab_header_t h;
        s_hdr_init(&h, AMTSBOTE__V1__KIND__KIND_HELLO, hid);
        s_send_hdr(w->c.sock, &h, NULL, 0, ZMQ_DONTWAIT);
    }
    for (;;) {
        uint64_t now = s_now_ns();
        int stopping = s_signalled || now >= w->sh->stop_ns;
        /* new messages */
        if (!stopping && w->nfree > 0) {
            int n0 = 0;
            int fresh[1024];
            while (w->nfree > 0 && n0 < (int)(sizeof fresh / sizeof fresh[0])) {
                long k = atomic_fetch_add(&w->sh->next, 1);
                if (k >= o->count) {
                    atomic_fetch_sub(&w->sh->next, 1);
                    break;
                }
                int i = w->free_slots[--w->nfree];
                slot_t *s = &w->slots[i];
                if (o->replay_ids)
                    memcpy(s->id, o->replay_ids + (size_t)k * ID_LEN, ID_LEN);
                else
                    s_new_id(o, s->id);
                s->busy = 1;
                s->attempts = 0;
                s->t0_ns = now;
                unsigned b = s_bucket(w, s->id);
                s->next = w->buckets[b];
                w->buckets[b] = i;
                w->busy++;
                w->issued++;
                if (w->sh->att_fd >= 0) {
                    ab_hex(s->id, ID_LEN, w->attbuf + w->attlen);
                    w->attlen += HEX_LEN;
                    w->attbuf[w->attlen++] = '\n';
                }
                fresh[n0++] = i;
            }
            s_att_flush(w); /* on file before the first send */
            for (int j = 0; j < n0; j++)
                s_slot_send(w, fresh[j], now);
        }
        /* retries and time-outs: the window is scanned every few milliseconds, not per turn */
        uint64_t next_wake = now + POLL_MS * 1000000u;
        int timed_out = 0, scan = now >= next_scan;
        if (scan)
            next_scan = now + SCAN_MS * 1000000u;
        if (next_scan < next_wake)
            next_wake = next_scan;
        for (int i = 0; scan && i < o->window && w->busy > 0; i++) {
            slot_t *s = &w->slots[i];
            if (!s->busy)
                continue;
            if (s->retry_ns) {
                if (s->retry_ns <= now)
                    s_slot_send(w, i, now);
                else if (s->retry_ns < next_wake)
                    next_wake = s->retry_ns;
            } else if (now - s->sent_ns > timeout_ns) {
                timed_out = 1;
            }
        }
        if (timed_out) {
            if (++w->timeouts <= 3)
                s_note("%s: no answer within %d ms for %d message(s) in flight; reconnecting and "
                       "sending them again",
                       w->c.ident, o->timeout_ms, w->busy);
            s_sender_reconnect(w, now);
        }
        if (w->accn > 0 && now - w->acc_first_ns >= ACC_BATCH_MS * 1000000u)
            s_acc_flush(w);
        if (w->busy == 0 && (stopping || atomic_load(&w->sh->next) >= o->count))
            break;
        if (stopping) {
            if (!drain_end)
                drain_end = now + (uint64_t)(o->drain_seconds * 1e9);
            else if (now >= drain_end)
                break;
        }
        if (w->hb_ms > 0 && now - last_hb >= (uint64_t)w->hb_ms * 1000000u) {
            uint8_t hid[ID_LEN];
            ab_header_t h;
            s_hdr_init(&h, AMTSBOTE__V1__KIND__KIND_HEARTBEAT, hid);
            s_send_hdr(w->c.sock, &h, NULL, 0, ZMQ_DONTWAIT);
            last_hb = now;
        }
        zmq_pollitem_t items[2] = {{w->c.sock, 0, ZMQ_POLLIN, 0}, {w->c.mon, 0, ZMQ_POLLIN, 0}};
        long wait_ms = (long)((next_wake > now ? next_wake - now : 0) / 1000000u);
        if (w->accn > 0 && wait_ms > ACC_BATCH_MS)
            wait_ms = ACC_BATCH_MS;
        if (w->nfree > 0 && !stopping && atomic_load(&w->sh->next) < o->count)
            wait_ms = 0;
        if (zmq_poll(items, 2, wait_ms) < 0 && zmq_errno() != EINTR)
            break;
        if (items[1].revents & ZMQ_POLLIN) {
            if (s_conn_events(&w->c)) {
                /* the broker came back: what was in flight may be lost with the old connection */
                now = s_now_ns();
                w->reconnects++;
                for (int i = 0; i < o->window; i++)
                    if (w->slots[i].busy && !w->slots[i].retry_ns)
                        s_slot_send(w, i, now);
            }
        }
        if (items[0].revents & ZMQ_POLLIN) {
            zmq_msg_t hm, bm;
            zmq_msg_init(&hm);
            zmq_msg_init(&bm);
            for (int n = 0; n < 4096; n++) {
                int has_body;
                int r = s_recv_msg(w->c.sock, &hm, &bm, &has_body);
                if (r <= 0)
                    break;
                ab_header_t *h;
                char why[AB_WHY_LEN];
                if (ab_wire_decode(w->dec, zmq_msg_data(&hm), zmq_msg_size(&hm), &h, why) != 0) {
                    w->unexpected++;
                    s_note("%s: a frame from the broker does not decode: %s", w->c.ident, why);
                    continue;
                }
                s_sender_answer(w, h, &bm, has_body, s_now_ns());
            }
            zmq_msg_close(&hm);
            zmq_msg_close(&bm);
        }
    }
    s_acc_flush(w);
    w->unanswered = w->busy;
    s_conn_close(&w->c);
    return NULL;
}

static const char *
s_kind_mode(int kind)
{
    return kind == AMTSBOTE__V1__KIND__KIND_SEND      ? "send"
           : kind == AMTSBOTE__V1__KIND__KIND_PUBLISH ? "pub"
                                                      : "call";
}

static int
s_err_name_idx(int code, char *out, size_t cap)
{
    static const char *names[] = {"NONE",
                                  "UNKNOWN_SERVICE",
                                  "FORBIDDEN",
                                  "SCHEMA_INVALID",
                                  "DEADLINE_EXCEEDED",
                                  "PROVIDER_GONE",
                                  "TOO_LARGE",
                                  "MALFORMED",
                                  "MAILBOX_FULL",
                                  "UNAVAILABLE",
                                  "INTERNAL",
                                  "PROVIDER_ERROR",
                                  "INVALID_ARGUMENT"};
    if (code >= 0 && code < (int)(sizeof names / sizeof names[0]))
        return snprintf(out, cap, "%s", names[code]);
    return snprintf(out, cap, "CODE%d", code);
}

/*
 * Runs the sending engine with o->threads threads of kind `kind`. Fills *result (counts) and
 * prints the result line unless `quiet`. Returns 0 when everything issued was answered with a
 * REPLY and nothing was corrupt, 1 otherwise.
 */
typedef struct {
    long issued, accepted, errors, unanswered, corrupt, dup_replies, resends;
    double msgs_per_s;
} send_result_t;

static int
s_run_senders(void *ctx, const opts_t *o, int kind, send_result_t *res)
{
    shared_t sh = {.o = o, .kind = kind, .acc_fd = -1, .att_fd = -1, .ctx = ctx};
    atomic_init(&sh.next, 0);
    atomic_init(&sh.first_unavailable, 0);
    if (o->accepted_log &&
        (sh.acc_fd = open(o->accepted_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) < 0) {
        s_note("cannot open %s: %s", o->accepted_log, strerror(errno));
        return 2;
    }
    if (o->attempted_log &&
        (sh.att_fd = open(o->attempted_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) < 0) {
        s_note("cannot open %s: %s", o->attempted_log, strerror(errno));
        return 2;
    }
    int n = o->threads;
    sender_t *ws = calloc((size_t)n, sizeof *ws);
    pthread_t th[MAX_THREADS];
    long per_thread_lat = o->count / n + o->window + 16;
    sh.start_ns = s_now_ns();
    sh.stop_ns = sh.start_ns + (uint64_t)(o->seconds * 1e9);
    for (int t = 0; t < n; t++) {
        sender_t *w = &ws[t];
        w->sh = &sh;
        w->idx = t;
        w->c.ctx = ctx;
        w->c.uri = o->uri;
        w->c.linger = 0;
        s_identity(o, t, n, w->c.ident, sizeof w->c.ident);
        w->dec = ab_wire_decoder_new();
        w->slots = calloc((size_t)o->window, sizeof *w->slots);
        w->free_slots = calloc((size_t)o->window, sizeof *w->free_slots);
        for (w->nbuckets = 16; w->nbuckets < 2 * o->window; w->nbuckets *= 2) {
        }
        w->buckets = malloc((size_t)w->nbuckets * sizeof *w->buckets);
        for (int b = 0; b < w->nbuckets; b++)
            w->buckets[b] = -1;
        for (int i = 0; i < o->window; i++)
            w->free_slots[w->nfree++] = o->window - 1 - i;
        w->payload = malloc(o->size ? o->size : 1);
        w->accbuf = malloc((size_t)ACC_BATCH * (HEX_LEN + 1));
        w->acclat = malloc((size_t)ACC_BATCH * sizeof *w->acclat);
        w->attbuf = malloc(1024 * (HEX_LEN + 1));
        w->caplat = per_thread_lat;
        w->lat = malloc((size_t)per_thread_lat * sizeof *w->lat);
        if (!w->dec || !w->slots || !w->free_slots || !w->buckets || !w->payload || !w->accbuf ||
            !w->acclat || !w->attbuf || !w->lat) {
            s_note("out of memory");
            return 2;
        }
    }
    for (int t = 0; t < n; t++)
        pthread_create(&th[t], NULL, s_sender_run, &ws[t]);
    for (int t = 0; t < n; t++)
        pthread_join(th[t], NULL);
    uint64_t end = s_now_ns();
    send_result_t r = {0};
    long errs[ERR_CODES] = {0};
    long nlat = 0, unexpected = 0, reconnects = 0, timeouts = 0, failed = 0;
    uint64_t last_accept = sh.start_ns;
    for (int t = 0; t < n; t++) {
        sender_t *w = &ws[t];
        r.issued += w->issued;
        r.accepted += w->accepted;
        r.unanswered += w->unanswered;
        r.corrupt += w->corrupt;
        r.dup_replies += w->dup_replies;
        r.resends += w->resends;
        unexpected += w->unexpected;
        reconnects += w->reconnects;
        timeouts += w->timeouts;
        failed += w->failed;
        for (int c = 0; c < ERR_CODES; c++) {
            errs[c] += w->errors[c];
            r.errors += w->errors[c];
        }
        nlat += w->nlat;
        if (w->last_accept_ns > last_accept)
            last_accept = w->last_accept_ns;
    }
    uint32_t *lat = malloc((size_t)(nlat ? nlat : 1) * sizeof *lat);
    long k = 0;
    for (int t = 0; t < n; t++) {
        memcpy(lat + k, ws[t].lat, (size_t)ws[t].nlat * sizeof *lat);
        k += ws[t].nlat;
    }
    qsort(lat, (size_t)nlat, sizeof *lat, s_cmp_u32);
    double secs = (double)(last_accept - sh.start_ns) / 1e9;
    r.msgs_per_s = secs > 0 ? (double)r.accepted / secs : 0;
    char errtxt[512] = "";
    size_t el = 0;
    for (int c = 0; c < ERR_CODES; c++)
        if (errs[c]) {
            char nm[32];
            s_err_name_idx(c, nm, sizeof nm);
            el += (size_t)snprintf(errtxt + el, sizeof errtxt - el, " err_%s=%ld", nm, errs[c]);
            if (el >= sizeof errtxt)
                break;
        }
    if (!o->quiet)
        printf("result mode=%s threads=%d window=%d size=%zu sent=%ld resends=%ld accepted=%ld "
               "errors=%ld%s unanswered=%ld dup_replies=%ld corrupt=%ld unexpected=%ld "
               "reconnects=%ld timeouts=%ld seconds=%.3f total_seconds=%.3f msgs_per_s=%.0f "
               "p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
               s_kind_mode(kind), n, o->window, o->size, r.issued, r.resends, r.accepted, r.errors,
               errtxt, r.unanswered, r.dup_replies, r.corrupt, unexpected, reconnects, timeouts,
               secs, (double)(end - sh.start_ns) / 1e9, r.msgs_per_s, s_pct_ms(lat, nlat, 50),
               s_pct_ms(lat, nlat, 99), s_pct_ms(lat, nlat, 100));
    fflush(stdout);
    for (int t = 0; t < n; t++) {
        sender_t *w = &ws[t];
        ab_wire_decoder_destroy(&w->dec);
        free(w->slots);
        free(w->free_slots);
        free(w->buckets);
        free(w->payload);
        free(w->accbuf);
        free(w->acclat);
        free(w->attbuf);
        free(w->lat);
    }
    free(ws);
    free(lat);
    if (sh.acc_fd >= 0)
        close(sh.acc_fd);
    if (sh.att_fd >= 0)
        close(sh.att_fd);
    if (res)
        *res = r;
    return (failed == 0 && r.unanswered == 0 && r.corrupt == 0 && r.accepted == r.issued) ? 0 : 1;
}

/* ---- the receiving engine: CREDIT + DELIVER/RECEIPT, or SUBSCRIBE + EVENT ------------------- */

/* A set of 16-byte ids (open addressing; an all-zero key is empty, and no UUIDv7 is zero). */
typedef struct {
    uint8_t *keys;
    size_t cap, n;
} idset_t;

static int
s_idset_grow(idset_t *s)
{
    size_t ncap = s->cap ? s->cap * 2 : 4096;
    uint8_t *nk = calloc(ncap, ID_LEN);
    if (!nk)
        return -1;
    static const uint8_t zero[ID_LEN];
    for (size_t i = 0; i < s->cap; i++) {
        const uint8_t *k = s->keys + i * ID_LEN;
        if (memcmp(k, zero, ID_LEN) == 0)
            continue;
        size_t j = s_fnv(k, ID_LEN) & (ncap - 1);
        while (memcmp(nk + j * ID_LEN, zero, ID_LEN) != 0)
            j = (j + 1) & (ncap - 1);
        memcpy(nk + j * ID_LEN, k, ID_LEN);
    }
    free(s->keys);
    s->keys = nk;
    s->cap = ncap;
    return 0;
}

/* Adds `id`; returns 1 when it is new, 0 when it was there, -1 when out of memory. */
static int
s_idset_add(idset_t *s, const uint8_t id[ID_LEN])
{
    static const uint8_t zero[ID_LEN];
    if ((s->n + 1) * 2 > s->cap && s_idset_grow(s) != 0)
        return -1;
    size_t j = s_fnv(id, ID_LEN) & (s->cap - 1);
    while (memcmp(s->keys + j * ID_LEN, zero, ID_LEN) != 0) {
        if (memcmp(s->keys + j * ID_LEN, id, ID_LEN) == 0)
            return 0;
        j = (j + 1) & (s->cap - 1);
    }
    memcpy(s->keys + j * ID_LEN, id, ID_LEN);
    s->n++;
    return 1;
}

#define MAX_SENDERS_TRACKED 256

typedef struct {
    const opts_t *o;
    int is_sub;
    int idx;
    void *ctx;
    int log_fd;
    uint64_t start_ns, stop_ns;
    conn_t c;
    ab_wire_decoder_t *dec;
    idset_t seen;
    char *logbuf;
    size_t loglen;
    uint64_t log_first_ns;
    /* per sender: the latest accept/publish time seen, for the order check */
    char *snames[MAX_SENDERS_TRACKED];
    uint64_t slast[MAX_SENDERS_TRACKED];
    int nsenders;
    /* counters */
    long delivered, distinct, dups, corrupt, acks, out_of_order, unexpected, errors, reconnects;
    long resubscribes;
    long receipts[4];
    uint64_t acks_seq[ACK_BATCH];
    uint8_t acks_event[ACK_BATCH];
    int nacks;
    idset_t receipt_ids; /* the message ids the receipts are about */
    long receipts_distinct;
    uint32_t *lat;
    long nlat, caplat;
    uint64_t first_rx_ns, last_new_ns;
    int refused; /* CREDIT/SUBSCRIBE refused */
    int ready;   /* CREDIT/SUBSCRIBE acknowledged at least once */
    int hb_ms;
    int started_fd; /* write "ready\n" here once (sub threads: counted by the caller) */
} recv_t;

static void
s_log_flush(recv_t *r)
{
    if (r->loglen == 0 || r->log_fd < 0)
        return;
    if (s_write_all(r->log_fd, r->logbuf, r->loglen) != 0) {
        s_note("%s: writing the received log failed: %s", r->c.ident, strerror(errno));
        exit(1);
    }
    r->loglen = 0;
}

/* Sends CREDIT (recv) or SUBSCRIBE (sub); the answer comes with correlation id `corr`. */
static void
s_recv_ask(recv_t *r, uint8_t corr[ID_LEN])
{
    const opts_t *o = r->o;
    uint8_t id[ID_LEN];
    ab_header_t h;
    s_hdr_init(&h, r->is_sub ? AMTSBOTE__V1__KIND__KIND_SUBSCRIBE : AMTSBOTE__V1__KIND__KIND_CREDIT,
               id);
    ab_uuid7(corr);
    h.correlation_id.data = corr;
    h.correlation_id.len = ID_LEN;
    h.credit = (uint32_t)o->credit;
    if (r->is_sub) {
        h.topic = (char *)o->topic;
        h.subscription = (char *)(o->durable ? o->durable : "");
        if (!o->durable)
            h.credit = 0;
    }
    s_send_hdr(r->c.sock, &h, NULL, 0, 0);
}

static void
s_recv_hello(recv_t *r, uint8_t hello_id[ID_LEN])
{
    ab_header_t h;
    s_hdr_init(&h, AMTSBOTE__V1__KIND__KIND_HELLO, hello_id);
    s_send_hdr(r->c.sock, &h, NULL, 0, 0);
}

static void
s_recv_ack(recv_t *r, uint64_t sequence, const char *subscription)
{
    uint8_t id[ID_LEN];
    ab_header_t h;
    s_hdr_init(&h, AMTSBOTE__V1__KIND__KIND_ACK, id);
    h.sequence = sequence;
    if (subscription && subscription[0])
        h.subscription = (char *)subscription;
    if (s_send_hdr(r->c.sock, &h, NULL, 0, 0) == 0)
        r->acks++;
}

/*
 * ACKs wait until the batch of messages read from the socket is logged: a receiver killed with
 * SIGKILL must not have acknowledged anything its log does not show.
 */
static void s_acks_flush(recv_t *r);

static void
s_ack_later(recv_t *r, uint64_t sequence, int is_event)
{
    if (r->nacks == ACK_BATCH)
        s_acks_flush(r);
    r->acks_seq[r->nacks] = sequence;
    r->acks_event[r->nacks++] = (uint8_t)is_event;
}

/* Writes the received log, then sends the ACKs it covers. */
static void
s_acks_flush(recv_t *r)
{
    s_log_flush(r);
    for (int i = 0; i < r->nacks; i++)
        s_recv_ack(r, r->acks_seq[i], r->acks_event[i] ? r->o->durable : NULL);
    r->nacks = 0;
}

/* Returns 1 when this DELIVER/EVENT of `sender` at `ts` came before one seen earlier. */
static int
s_order_check(recv_t *r, const char *sender, uint64_t ts)
{
    int i;
    for (i = 0; i < r->nsenders; i++)
        if (strcmp(r->snames[i], sender) == 0)
            break;
    if (i == r->nsenders) {
        if (r->nsenders == MAX_SENDERS_TRACKED)
            return 0;
        r->snames[r->nsenders] = strdup(sender);
        r->slast[r->nsenders++] = ts;
        return 0;
    }
    if (ts < r->slast[i])
        return 1;
    r->slast[i] = ts;
    return 0;
}

static void
s_recv_message(recv_t *r, const ab_header_t *h, zmq_msg_t *body, int has_body, uint64_t now)
{
    const opts_t *o = r->o;
    r->delivered++;
    if (!r->first_rx_ns)
        r->first_rx_ns = now;
    const char *why = NULL;
    if (h->message_id.len != ID_LEN)
        why = "no 16-byte message id";
    else if (!has_body)
        why = "no payload frame";
    else
        why = s_check_payload(zmq_msg_data(body), zmq_msg_size(body), h->message_id.data, o->size);
    char hex[HEX_LEN + 1] = "-";
    if (h->message_id.len == ID_LEN)
        ab_hex(h->message_id.data, ID_LEN, hex);
    if (why) {
        r->corrupt++;
        s_note("%s: CORRUPT %s %s from %s (sequence %" PRIu64 ", attempt %u): %s", r->c.ident,
               ab_kind_name(h->kind), hex, h->sender, h->sequence, h->attempt, why);
    }
    int fresh = 0;
    if (!why) {
        fresh = s_idset_add(&r->seen, h->message_id.data);
        if (fresh < 0) {
            s_note("out of memory");
            exit(1);
        }
        if (fresh) {
            r->distinct++;
            r->last_new_ns = now;
            if (s_order_check(r, h->sender, h->timestamp_ms))
                r->out_of_order++;
            /* from the id's creation (UUIDv7 milliseconds) to now */
            uint64_t created = 0;
            for (int i = 0; i < 6; i++)
                created = created << 8 | h->message_id.data[i];
            uint64_t wall = s_wall_ms();
            if (r->nlat < r->caplat)
                r->lat[r->nlat++] = (uint32_t)(wall > created ? (wall - created) * 1000u : 0);
        } else {
            r->dups++;
        }
    }
    if (r->log_fd >= 0) {
        if (r->loglen == 0)
            r->log_first_ns = now;
        r->loglen += (size_t)snprintf(r->logbuf + r->loglen, 1024, "%s %s %s %u %" PRIu64 " %s\n",
                                      r->c.ident, h->sender[0] ? h->sender : "-", hex, h->attempt,
                                      h->sequence,
                                      why     ? "corrupt"
                                      : fresh ? "new"
                                              : "dup");
        if (r->loglen > (size_t)LOG_BATCH * 128)
            s_log_flush(r);
    }
    /* an ephemeral subscription's events are not acknowledged (they are not stored) */
    if (o->ack && !why && (!r->is_sub || o->durable))
        s_ack_later(r, h->sequence, h->subscription[0] != '\0');
}

static void *
s_recv_run(void *arg)
{
    recv_t *r = arg;
    const opts_t *o = r->o;
    uint8_t hello_id[ID_LEN], ask_id[ID_LEN];
    memset(ask_id, 0, sizeof ask_id);
    if (s_conn_open(&r->c) != 0) {
        r->refused = 1;
        return NULL;
    }
    s_recv_hello(r, hello_id);
    uint64_t start = s_now_ns(), last_hb = start, ready_ns = 0;
    uint64_t idle_ns = (uint64_t)o->idle_ms * 1000000u;
    while (!s_signalled) {
        uint64_t now = s_now_ns();
        if (now >= r->stop_ns)
            break;
        if (o->count > 0 && r->distinct >= o->count)
            break;
        if (!r->ready && now - start > (uint64_t)START_TIMEOUT_MS * 1000000u) {
            s_note("%s: the broker did not acknowledge %s within %d ms", r->c.ident,
                   r->is_sub ? "SUBSCRIBE" : "CREDIT", START_TIMEOUT_MS);
            r->refused = 1;
            break;
        }
        if (r->ready && idle_ns) {
            uint64_t since = r->last_new_ns > ready_ns ? r->last_new_ns : ready_ns;
            if (now - since >= idle_ns)
                break;
        }
        if (r->hb_ms > 0 && now - last_hb >= (uint64_t)r->hb_ms * 1000000u) {
            uint8_t id[ID_LEN];
            ab_header_t h;
            s_hdr_init(&h, AMTSBOTE__V1__KIND__KIND_HEARTBEAT, id);
            s_send_hdr(r->c.sock, &h, NULL, 0, ZMQ_DONTWAIT);
            last_hb = now;
        }
        if (r->loglen && now - r->log_first_ns > 100 * 1000000u)
            s_log_flush(r);
        zmq_pollitem_t items[2] = {{r->c.sock, 0, ZMQ_POLLIN, 0}, {r->c.mon, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, POLL_MS) < 0 && zmq_errno() != EINTR)
            break;
        if (items[1].revents & ZMQ_POLLIN) {
            if (s_conn_events(&r->c)) {
                r->reconnects++;
                s_note("%s: reconnected; HELLO again", r->c.ident);
                s_recv_hello(r, hello_id);
            }
        }
        if (!(items[0].revents & ZMQ_POLLIN))
            continue;
        zmq_msg_t hm, bm;
        zmq_msg_init(&hm);
        zmq_msg_init(&bm);
        for (int n = 0; n < 4096; n++) {
            int has_body;
            if (s_recv_msg(r->c.sock, &hm, &bm, &has_body) <= 0)
                break;
            ab_header_t *h;
            char why[AB_WHY_LEN];
            if (ab_wire_decode(r->dec, zmq_msg_data(&hm), zmq_msg_size(&hm), &h, why) != 0) {
                r->unexpected++;
                s_note("%s: a frame from the broker does not decode: %s", r->c.ident, why);
                continue;
            }
            now = s_now_ns();
            switch (h->kind) {
            case AMTSBOTE__V1__KIND__KIND_HELLO:
                if (h->heartbeat_ms)
                    r->hb_ms = (int)h->heartbeat_ms;
                if (h->correlation_id.len == 0 ||
                    (h->correlation_id.len == ID_LEN &&
                     memcmp(h->correlation_id.data, hello_id, ID_LEN) == 0)) {
                    if (r->ready || h->correlation_id.len == 0)
                        r->resubscribes++;
                    s_recv_ask(r, ask_id);
                }
                break;
            case AMTSBOTE__V1__KIND__KIND_REPLY:
                if (h->correlation_id.len == ID_LEN &&
                    memcmp(h->correlation_id.data, ask_id, ID_LEN) == 0 && !r->ready) {
                    r->ready = 1;
                    ready_ns = now;
                    if (r->started_fd >= 0) {
                        if (write(r->started_fd, "", 0) < 0) {
                        }
                    }
                    s_note("%s: ready (%s)", r->c.ident, r->is_sub ? "subscribed" : "credit");
                }
                break;
            case AMTSBOTE__V1__KIND__KIND_ERROR:
                r->errors++;
                s_note("%s: ERROR %d: %s", r->c.ident, h->error ? (int)h->error->code : 0,
                       h->error ? h->error->text : "");
                if (h->correlation_id.len == ID_LEN &&
                    memcmp(h->correlation_id.data, ask_id, ID_LEN) == 0 && !r->ready) {
                    r->refused = 1;
                    goto out;
                }
                break;
            case AMTSBOTE__V1__KIND__KIND_DELIVER:
            case AMTSBOTE__V1__KIND__KIND_EVENT:
                s_recv_message(r, h, &bm, has_body, now);
                break;
            case AMTSBOTE__V1__KIND__KIND_RECEIPT:
                r->receipts[h->receipt >= 0 && h->receipt < 4 ? h->receipt : 0]++;
                if (h->correlation_id.len == ID_LEN &&
                    s_idset_add(&r->receipt_ids, h->correlation_id.data) > 0)
                    r->receipts_distinct++;
                if (r->log_fd >= 0) {
                    char hex[HEX_LEN + 1] = "-";
                    if (h->correlation_id.len == ID_LEN)
                        ab_hex(h->correlation_id.data, ID_LEN, hex);
                    if (r->loglen == 0)
                        r->log_first_ns = now;
                    r->loglen += (size_t)snprintf(r->logbuf + r->loglen, 1024,
                                                  "%s %s %s %u %" PRIu64 " receipt-%d\n",
                                                  r->c.ident, h->recipient[0] ? h->recipient : "-",
                                                  hex, h->attempt, h->sequence, (int)h->receipt);
                    if (r->loglen > (size_t)LOG_BATCH * 128)
                        s_log_flush(r);
                }
                r->last_new_ns = now; /* a receipt is progress for the idle time-out */
                if (o->ack)
                    s_ack_later(r, h->sequence, 0);
                break;
            default:
                r->unexpected++;
                break;
            }
        }
    out:
        zmq_msg_close(&hm);
        zmq_msg_close(&bm);
        s_acks_flush(r);
        if (r->refused)
            break;
    }
    s_acks_flush(r);
    if (!r->ready && !r->refused) { /* --seconds ended before the broker answered */
        s_note("%s: the broker never acknowledged %s", r->c.ident,
               r->is_sub ? "SUBSCRIBE" : "CREDIT");
        r->refused = 1;
    }
    s_conn_close(&r->c); /* lingers, so that the last ACKs reach the broker */
    return NULL;
}

typedef struct {
    long delivered, distinct, dups, corrupt, refused;
    double msgs_per_s;
} recv_result_t;

static int
s_run_receivers(void *ctx, const opts_t *o, int is_sub, recv_result_t *res)
{
    int n = o->threads;
    int log_fd = -1;
    if (o->received_log &&
        (log_fd = open(o->received_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) < 0) {
        s_note("cannot open %s: %s", o->received_log, strerror(errno));
        return 2;
    }
    recv_t *rs = calloc((size_t)n, sizeof *rs);
    pthread_t th[MAX_THREADS];
    uint64_t start = s_now_ns();
    long caplat = o->count > 0 ? o->count + 16 : 1000000;
    for (int t = 0; t < n; t++) {
        recv_t *r = &rs[t];
        r->o = o;
        r->is_sub = is_sub;
        r->idx = t;
        r->ctx = ctx;
        r->log_fd = log_fd;
        r->started_fd = -1;
        r->start_ns = start;
        r->stop_ns = start + (uint64_t)(o->seconds * 1e9);
        r->c.ctx = ctx;
        r->c.uri = o->uri;
        r->c.linger = 2000;
        s_identity(o, t, n, r->c.ident, sizeof r->c.ident);
        r->dec = ab_wire_decoder_new();
        r->logbuf = malloc((size_t)LOG_BATCH * 128 + 1024);
        r->caplat = caplat;
        r->lat = malloc((size_t)caplat * sizeof *r->lat);
        if (!r->dec || !r->logbuf || !r->lat) {
            s_note("out of memory");
            return 2;
        }
    }
    for (int t = 0; t < n; t++)
        pthread_create(&th[t], NULL, s_recv_run, &rs[t]);
    for (int t = 0; t < n; t++)
        pthread_join(th[t], NULL);
    recv_result_t tot = {0};
    long receipts[4] = {0}, receipts_distinct = 0, acks = 0, ooo = 0, unexpected = 0, errors = 0,
         reconnects = 0, resub = 0, nlat = 0;
    uint64_t first = 0, last = 0;
    for (int t = 0; t < n; t++) {
        recv_t *r = &rs[t];
        tot.delivered += r->delivered;
        tot.distinct += r->distinct;
        tot.dups += r->dups;
        tot.corrupt += r->corrupt;
        tot.refused += r->refused;
        acks += r->acks;
        ooo += r->out_of_order;
        unexpected += r->unexpected;
        errors += r->errors;
        reconnects += r->reconnects;
        resub += r->resubscribes;
        nlat += r->nlat;
        for (int k = 0; k < 4; k++)
            receipts[k] += r->receipts[k];
        receipts_distinct += r->receipts_distinct;
        if (r->first_rx_ns && (!first || r->first_rx_ns < first))
            first = r->first_rx_ns;
        if (r->last_new_ns > last)
            last = r->last_new_ns;
    }
    uint32_t *lat = malloc((size_t)(nlat ? nlat : 1) * sizeof *lat);
    long k = 0;
    for (int t = 0; t < n; t++) {
        memcpy(lat + k, rs[t].lat, (size_t)rs[t].nlat * sizeof *lat);
        k += rs[t].nlat;
    }
    qsort(lat, (size_t)nlat, sizeof *lat, s_cmp_u32);
    double secs = first && last > first ? (double)(last - first) / 1e9 : 0;
    tot.msgs_per_s = secs > 0 ? (double)tot.distinct / secs : 0;
    if (!o->quiet)
        printf("result mode=%s threads=%d delivered=%ld distinct=%ld dups=%ld corrupt=%ld "
               "acks=%ld out_of_order=%ld receipts_delivered=%ld receipts_expired=%ld "
               "receipts_failed=%ld receipts_distinct=%ld errors=%ld unexpected=%ld reconnects=%ld "
               "resubscribes=%ld "
               "refused=%ld seconds=%.3f msgs_per_s=%.0f e2e_p50_ms=%.3f e2e_p99_ms=%.3f\n",
               is_sub ? "sub" : "recv", n, tot.delivered, tot.distinct, tot.dups, tot.corrupt, acks,
               ooo, receipts[1], receipts[2], receipts[3], receipts_distinct, errors, unexpected,
               reconnects, resub, tot.refused, secs, tot.msgs_per_s, s_pct_ms(lat, nlat, 50),
               s_pct_ms(lat, nlat, 99));
    fflush(stdout);
    for (int t = 0; t < n; t++) {
        recv_t *r = &rs[t];
        ab_wire_decoder_destroy(&r->dec);
        free(r->seen.keys);
        free(r->receipt_ids.keys);
        free(r->logbuf);
        free(r->lat);
        for (int i = 0; i < r->nsenders; i++)
            free(r->snames[i]);
    }
    free(rs);
    free(lat);
    if (log_fd >= 0)
        close(log_fd);
    if (res)
        *res = tot;
    if (tot.refused)
        return 2;
    return tot.corrupt == 0 ? 0 : 1;
}

/* ---- serve: an echo provider for the CALL baseline ------------------------------------------ */

typedef struct {
    const opts_t *o;
    conn_t c;
    ab_wire_decoder_t *dec;
    long calls, refused, offers;
    atomic_int *ready;
} server_t;

static void
s_serve_offer(server_t *s, uint8_t corr[ID_LEN])
{
    uint8_t id[ID_LEN];
    ab_header_t h;
    s_hdr_init(&h, AMTSBOTE__V1__KIND__KIND_OFFER, id);
    ab_uuid7(corr);
    h.correlation_id.data = corr;
    h.correlation_id.len = ID_LEN;
    h.service = (char *)s->o->service;
    s_send_hdr(s->c.sock, &h, NULL, 0, 0);
    s->offers++;
}

static void *
s_serve_run(void *arg)
{
    server_t *s = arg;
    const opts_t *o = s->o;
    uint8_t corr[ID_LEN], hello_id[ID_LEN];
    if (s_conn_open(&s->c) != 0) {
        s->refused = 1;
        return NULL;
    }
    ab_header_t hh;
    s_hdr_init(&hh, AMTSBOTE__V1__KIND__KIND_HELLO, hello_id);
    s_send_hdr(s->c.sock, &hh, NULL, 0, 0);
    s_serve_offer(s, corr);
    int hb_ms = 1000, offered = 0;
    uint64_t start = s_now_ns(), last_hb = start;
    uint64_t stop = start + (uint64_t)(o->seconds * 1e9);
    while (!s_signalled) {
        uint64_t now = s_now_ns();
        if (now >= stop)
            break;
        if (!offered && now - start > (uint64_t)START_TIMEOUT_MS * 1000000u) {
            s_note("%s: OFFER not acknowledged within %d ms", s->c.ident, START_TIMEOUT_MS);
            s->refused = 1;
            break;
        }
        if (now - last_hb >= (uint64_t)hb_ms * 1000000u) {
            uint8_t id[ID_LEN];
            ab_header_t h;
            s_hdr_init(&h, AMTSBOTE__V1__KIND__KIND_HEARTBEAT, id);
            s_send_hdr(s->c.sock, &h, NULL, 0, ZMQ_DONTWAIT);
            last_hb = now;
        }
        zmq_pollitem_t items[2] = {{s->c.sock, 0, ZMQ_POLLIN, 0}, {s->c.mon, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, 100) < 0 && zmq_errno() != EINTR)
            break;
        if ((items[1].revents & ZMQ_POLLIN) && s_conn_events(&s->c))
            s_serve_offer(s, corr); /* the broker came back and knows no offer of ours */
        if (!(items[0].revents & ZMQ_POLLIN))
            continue;
        zmq_msg_t hm, bm;
        zmq_msg_init(&hm);
        zmq_msg_init(&bm);
        for (int n = 0; n < 4096; n++) {
            int has_body;
            if (s_recv_msg(s->c.sock, &hm, &bm, &has_body) <= 0)
                break;
            ab_header_t *h;
            char why[AB_WHY_LEN];
            if (ab_wire_decode(s->dec, zmq_msg_data(&hm), zmq_msg_size(&hm), &h, why) != 0)
                continue;
            if (h->kind == AMTSBOTE__V1__KIND__KIND_CALL) {
                uint8_t id[ID_LEN];
                ab_header_t r;
                s_hdr_init(&r, AMTSBOTE__V1__KIND__KIND_REPLY, id);
                r.correlation_id = h->correlation_id;
                uint8_t buf[AB_MAX_HEADER_BYTES];
                int len = ab_wire_encode(&r, buf, sizeof buf);
                if (len > 0 && zmq_send(s->c.sock, buf, (size_t)len, ZMQ_SNDMORE) == len) {
                    zmq_msg_send(&bm, s->c.sock, 0); /* the payload, as it came */
                    s->calls++;
                }
            } else if (h->kind == AMTSBOTE__V1__KIND__KIND_HELLO && h->correlation_id.len == 0) {
                s_serve_offer(s, corr);
            } else if (h->kind == AMTSBOTE__V1__KIND__KIND_HELLO && h->heartbeat_ms) {
                hb_ms = (int)h->heartbeat_ms;
            } else if (h->kind == AMTSBOTE__V1__KIND__KIND_REPLY &&
                       h->correlation_id.len == ID_LEN &&
                       memcmp(h->correlation_id.data, corr, ID_LEN) == 0) {
                if (!offered++)
                    atomic_fetch_add(s->ready, 1);
            } else if (h->kind == AMTSBOTE__V1__KIND__KIND_ERROR) {
                s_note("%s: ERROR %d: %s", s->c.ident, h->error ? (int)h->error->code : 0,
                       h->error ? h->error->text : "");
                if (!offered) {
                    s->refused = 1;
                    goto out;
                }
            }
        }
    out:
        zmq_msg_close(&hm);
        zmq_msg_close(&bm);
        if (s->refused)
            break;
    }
    s_conn_close(&s->c);
    return NULL;
}

/* Runs o->threads providers; prints "ready" on stdout once all offered. */
static int
s_run_servers(void *ctx, const opts_t *o)
{
    int n = o->threads;
    server_t *ss = calloc((size_t)n, sizeof *ss);
    pthread_t th[MAX_THREADS];
    atomic_int ready;
    atomic_init(&ready, 0);
    for (int t = 0; t < n; t++) {
        ss[t].o = o;
        ss[t].c.ctx = ctx;
        ss[t].c.uri = o->uri;
        ss[t].c.linger = 0;
        ss[t].ready = &ready;
        s_identity(o, t, n, ss[t].c.ident, sizeof ss[t].c.ident);
        ss[t].dec = ab_wire_decoder_new();
        pthread_create(&th[t], NULL, s_serve_run, &ss[t]);
    }
    int said = 0;
    int joined[MAX_THREADS] = {0};
    for (;;) {
        int done = 1;
        for (int t = 0; t < n; t++) {
            if (joined[t])
                continue;
            if (pthread_tryjoin_np(th[t], NULL) == 0)
                joined[t] = 1;
            else
                done = 0;
        }
        if (!said && atomic_load(&ready) == n) {
            printf("ready\n");
            fflush(stdout);
            said = 1;
        }
        if (done)
            break;
        usleep(20000);
    }
    long calls = 0, refused = 0;
    for (int t = 0; t < n; t++) {
        calls += ss[t].calls;
        refused += ss[t].refused;
        ab_wire_decoder_destroy(&ss[t].dec);
    }
    printf("result mode=serve threads=%d calls=%ld refused=%ld\n", n, calls, refused);
    fflush(stdout);
    free(ss);
    return refused ? 2 : 0;
}

/* ---- selftest: a fake broker in-process, with faults ----------------------------------------- */
/*
 * Just enough of the broker for the engines above: HELLO, SEND/CREDIT/DELIVER/ACK, durable
 * SUBSCRIBE/PUBLISH/EVENT, OFFER/CALL/REPLY, dedup by message id, in memory. It injects faults
 * the real broker may show: every 13th new message is refused with UNAVAILABLE, the REPLY of
 * every 17th stored one is lost, every 11th delivery comes twice, and on request it "restarts"
 * (closes its socket, forgets connections and credit, binds again), keeping what it stored.
 */
typedef struct {
    uint8_t id[ID_LEN];
    char sender[AB_MAX_NAME + 1];
    uint8_t *payload;
    size_t len;
    uint64_t seq, ts;
    int state; /* 0 waiting, 1 delivered, 2 acknowledged */
    unsigned attempt;
} fmsg_t;

typedef struct {
    char key[2 * AB_MAX_NAME + 8];
    char pattern[AB_MAX_NAME + 1];
    char subname[AB_MAX_NAME + 1];
    int is_event;
    fmsg_t *m;
    size_t n, cap, head, cursor;
    uint8_t rid[256];
    size_t rid_len;
    int credit, unacked, bound;
} fqueue_t;

#define FAKE_QUEUES 64
#define FAKE_PENDING 4096

typedef struct {
    void *ctx, *router, *zap;
    char endpoint[128];
    fqueue_t q[FAKE_QUEUES];
    int nq;
    idset_t dedup;
    uint64_t next_seq, next_call;
    long n_new, n_stored, n_deliveries, n_dups_sent, n_unavailable, n_lost_replies, n_calls;
    uint8_t prov_rid[256];
    size_t prov_len;
    char prov_service[AB_MAX_NAME + 1];
    struct {
        uint8_t rid[256];
        size_t rid_len;
        uint8_t corr[64];
        size_t corr_len;
        int used;
    } pend[FAKE_PENDING];
    atomic_int stop, restart, restarts;
    ab_wire_decoder_t *dec;
} fake_t;

static void
s_fake_bind(fake_t *f)
{
    f->router = zmq_socket(f->ctx, ZMQ_ROUTER);
    int one = 1, linger = 0, hwm = 200000;
    zmq_setsockopt(f->router, ZMQ_PLAIN_SERVER, &one, sizeof one);
    zmq_setsockopt(f->router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(f->router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(f->router, ZMQ_RCVHWM, &hwm, sizeof hwm);
    const char *ep = f->endpoint[0] ? f->endpoint : "tcp://127.0.0.1:*";
    for (int i = 0; i < 100 && zmq_bind(f->router, ep) != 0; i++)
        usleep(20000); /* the old listener may linger a moment */
    size_t len = sizeof f->endpoint;
    zmq_getsockopt(f->router, ZMQ_LAST_ENDPOINT, f->endpoint, &len);
}

static void
s_fake_send(fake_t *f, const uint8_t *rid, size_t rid_len, const ab_header_t *h,
            const void *payload, size_t len, int has_payload)
{
    uint8_t buf[AB_MAX_HEADER_BYTES];
    int n = ab_wire_encode(h, buf, sizeof buf);
    if (n < 0)
        return;
    zmq_send(f->router, rid, rid_len, ZMQ_SNDMORE);
    zmq_send(f->router, buf, (size_t)n, has_payload ? ZMQ_SNDMORE : 0);
    if (has_payload)
        zmq_send(f->router, payload, len, 0);
}

static void
s_fake_answer(fake_t *f, const uint8_t *rid, size_t rid_len, const ab_header_t *in, int kind,
              int code, const char *text)
{
    uint8_t id[ID_LEN];
    ab_header_t h;
    s_hdr_init(&h, kind, id);
    h.correlation_id = in->correlation_id;
    Amtsbote__V1__Error e = AMTSBOTE__V1__ERROR__INIT;
    if (kind == AMTSBOTE__V1__KIND__KIND_ERROR) {
        e.code = code;
        e.text = (char *)text;
        h.error = &e;
    }
    h.timestamp_ms = s_wall_ms();
    s_fake_send(f, rid, rid_len, &h, NULL, 0, 0);
}

static fqueue_t *
s_fake_queue(fake_t *f, const char *key)
{
    for (int i = 0; i < f->nq; i++)
        if (strcmp(f->q[i].key, key) == 0)
            return &f->q[i];
    if (f->nq == FAKE_QUEUES)
        return NULL;
    fqueue_t *q = &f->q[f->nq++];
    memset(q, 0, sizeof *q);
    snprintf(q->key, sizeof q->key, "%s", key);
    return q;
}

static void
s_fake_store(fake_t *f, fqueue_t *q, const ab_header_t *h, const char *sender, const void *p,
             size_t len)
{
    if (q->n == q->cap) {
        q->cap = q->cap ? q->cap * 2 : 1024;
        q->m = realloc(q->m, q->cap * sizeof *q->m);
    }
    fmsg_t *m = &q->m[q->n++];
    memset(m, 0, sizeof *m);
    memcpy(m->id, h->message_id.data, ID_LEN);
    snprintf(m->sender, sizeof m->sender, "%s", sender);
    m->payload = malloc(len ? len : 1);
    memcpy(m->payload, p, len);
    m->len = len;
    m->seq = ++f->next_seq;
    m->ts = s_wall_ms();
}

/* "a.b.c" against "a.*.c" / "a.>" */
static int
s_topic_match(const char *pat, const char *topic)
{
    while (*pat && *topic) {
        if (pat[0] == '>' && pat[1] == '\0')
            return 1;
        const char *pe = strchr(pat, '.'), *te = strchr(topic, '.');
        size_t pl = pe ? (size_t)(pe - pat) : strlen(pat);
        size_t tl = te ? (size_t)(te - topic) : strlen(topic);
        if (!(pl == 1 && pat[0] == '*') && (pl != tl || memcmp(pat, topic, pl) != 0))
            return 0;
        pat += pl + (pe ? 1 : 0);
        topic += tl + (te ? 1 : 0);
        if (!pe || !te)
            return !pe && !te;
    }
    return 0;
}

static void
s_fake_deliver(fake_t *f)
{
    for (int i = 0; i < f->nq; i++) {
        fqueue_t *q = &f->q[i];
        while (q->bound && q->unacked < q->credit) {
            while (q->cursor < q->n && q->m[q->cursor].state != 0)
                q->cursor++;
            if (q->cursor >= q->n)
                break;
            fmsg_t *m = &q->m[q->cursor];
            m->state = 1;
            m->attempt++;
            q->unacked++;
            uint8_t id[ID_LEN];
            ab_header_t h;
            s_hdr_init(
                &h, q->is_event ? AMTSBOTE__V1__KIND__KIND_EVENT : AMTSBOTE__V1__KIND__KIND_DELIVER,
                id);
            h.message_id.data = m->id;
            h.sender = m->sender;
            h.timestamp_ms = m->ts;
            h.sequence = m->seq;
            h.attempt = m->attempt;
            if (q->is_event)
                h.subscription = q->subname;
            s_fake_send(f, q->rid, q->rid_len, &h, m->payload, m->len, 1);
            if (++f->n_deliveries % 11 == 0) { /* a redelivery of something delivered */
                h.attempt = ++m->attempt;
                s_fake_send(f, q->rid, q->rid_len, &h, m->payload, m->len, 1);
                f->n_dups_sent++;
            }
        }
    }
}

static void
s_fake_ack(fake_t *f, const uint8_t *rid, size_t rid_len, uint64_t seq)
{
    for (int i = 0; i < f->nq; i++) {
        fqueue_t *q = &f->q[i];
        if (!q->bound || q->rid_len != rid_len || memcmp(q->rid, rid, rid_len) != 0)
            continue;
        for (size_t k = q->head; k < q->n; k++)
            if (q->m[k].seq == seq && q->m[k].state == 1) {
                q->m[k].state = 2;
                q->unacked--;
                while (q->head < q->n && q->m[q->head].state == 2)
                    q->head++;
                return;
            }
    }
}

static void
s_fake_handle(fake_t *f, const uint8_t *rid, size_t rid_len, const char *user, ab_header_t *h,
              zmq_msg_t *body, int has_body)
{
    char key[2 * AB_MAX_NAME + 8];
    switch (h->kind) {
    case AMTSBOTE__V1__KIND__KIND_HELLO: {
        uint8_t id[ID_LEN];
        ab_header_t r;
        s_hdr_init(&r, AMTSBOTE__V1__KIND__KIND_HELLO, id);
        r.correlation_id = h->message_id;
        r.sender = (char *)user;
        r.heartbeat_ms = 1000;
        r.max_payload = MAX_SIZE;
        s_fake_send(f, rid, rid_len, &r, NULL, 0, 0);
        break;
    }
    case AMTSBOTE__V1__KIND__KIND_SEND:
    case AMTSBOTE__V1__KIND__KIND_PUBLISH: {
        int is_pub = h->kind == AMTSBOTE__V1__KIND__KIND_PUBLISH;
        if (!has_body || h->message_id.len != ID_LEN) {
            s_fake_answer(f, rid, rid_len, h, AMTSBOTE__V1__KIND__KIND_ERROR,
                          AMTSBOTE__V1__ERROR_CODE__MALFORMED, "no payload or id");
            break;
        }
        int fresh = s_idset_add(&f->dedup, h->message_id.data);
        if (!fresh) { /* dedup: the same answer again */
            s_fake_answer(f, rid, rid_len, h, AMTSBOTE__V1__KIND__KIND_REPLY, 0, NULL);
            break;
        }
        if (++f->n_new % 13 == 0) { /* refused; forget it was seen */
            idset_t *d = &f->dedup;
            size_t j = s_fnv(h->message_id.data, ID_LEN) & (d->cap - 1);
            while (memcmp(d->keys + j * ID_LEN, h->message_id.data, ID_LEN) != 0)
                j = (j + 1) & (d->cap - 1);
            /* a tombstone would be right; rebuilding is simpler for a test */
            memset(d->keys + j * ID_LEN, 0, ID_LEN);
            d->n--;
            idset_t nd = {0};
            for (size_t k = 0; k < d->cap; k++) {
                static const uint8_t zero[ID_LEN];
                if (memcmp(d->keys + k * ID_LEN, zero, ID_LEN) != 0)
                    s_idset_add(&nd, d->keys + k * ID_LEN);
            }
            free(d->keys);
            *d = nd;
            f->n_unavailable++;
            s_fake_answer(f, rid, rid_len, h, AMTSBOTE__V1__KIND__KIND_ERROR,
                          AMTSBOTE__V1__ERROR_CODE__UNAVAILABLE, "fake: the store cannot write");
            break;
        }
        if (is_pub) {
            for (int i = 0; i < f->nq; i++)
                if (f->q[i].is_event && s_topic_match(f->q[i].pattern, h->topic))
                    s_fake_store(f, &f->q[i], h, user, zmq_msg_data(body), zmq_msg_size(body));
        } else {
            snprintf(key, sizeof key, "mbox:%s", h->recipient);
            fqueue_t *q = s_fake_queue(f, key);
            if (q)
                s_fake_store(f, q, h, user, zmq_msg_data(body), zmq_msg_size(body));
        }
        f->n_stored++;
        if (f->n_stored % 17 == 0) {
            f->n_lost_replies++; /* stored, but the answer is lost */
            break;
        }
        s_fake_answer(f, rid, rid_len, h, AMTSBOTE__V1__KIND__KIND_REPLY, 0, NULL);
        break;
    }
    case AMTSBOTE__V1__KIND__KIND_CREDIT:
    case AMTSBOTE__V1__KIND__KIND_SUBSCRIBE: {
        int is_sub = h->kind == AMTSBOTE__V1__KIND__KIND_SUBSCRIBE;
        if (is_sub && !h->subscription[0]) {
            s_fake_answer(f, rid, rid_len, h, AMTSBOTE__V1__KIND__KIND_ERROR,
                          AMTSBOTE__V1__ERROR_CODE__INVALID_ARGUMENT, "fake: durable only");
            break;
        }
        if (is_sub)
            snprintf(key, sizeof key, "sub:%s:%s", user, h->subscription);
        else
            snprintf(key, sizeof key, "mbox:%s", user);
        fqueue_t *q = s_fake_queue(f, key);
        if (!q)
            break;
        if (is_sub) {
            q->is_event = 1;
            snprintf(q->pattern, sizeof q->pattern, "%s", h->topic);
            snprintf(q->subname, sizeof q->subname, "%s", h->subscription);
        }
        memcpy(q->rid, rid, rid_len);
        q->rid_len = rid_len;
        q->credit = h->credit ? (int)h->credit : 100;
        if (!q->bound) {
            q->bound = 1;
            q->unacked = 0;
        }
        s_fake_answer(f, rid, rid_len, h, AMTSBOTE__V1__KIND__KIND_REPLY, 0, NULL);
        break;
    }
    case AMTSBOTE__V1__KIND__KIND_ACK:
        s_fake_ack(f, rid, rid_len, h->sequence);
        break;
    case AMTSBOTE__V1__KIND__KIND_OFFER:
        memcpy(f->prov_rid, rid, rid_len);
        f->prov_len = rid_len;
        snprintf(f->prov_service, sizeof f->prov_service, "%s", h->service);
        s_fake_answer(f, rid, rid_len, h, AMTSBOTE__V1__KIND__KIND_REPLY, 0, NULL);
        break;
    case AMTSBOTE__V1__KIND__KIND_CALL: {
        if (!f->prov_len || strcmp(f->prov_service, h->service) != 0 || !has_body) {
            s_fake_answer(f, rid, rid_len, h, AMTSBOTE__V1__KIND__KIND_ERROR,
                          AMTSBOTE__V1__ERROR_CODE__UNKNOWN_SERVICE, "fake: nobody offers it");
            break;
        }
        uint64_t k = f->next_call++;
        unsigned slot = (unsigned)(k % FAKE_PENDING);
        memcpy(f->pend[slot].rid, rid, rid_len);
        f->pend[slot].rid_len = rid_len;
        memcpy(f->pend[slot].corr, h->correlation_id.data, h->correlation_id.len);
        f->pend[slot].corr_len = h->correlation_id.len;
        f->pend[slot].used = 1;
        h->correlation_id.data = (uint8_t *)&k;
        h->correlation_id.len = sizeof k;
        h->sender = (char *)user;
        s_fake_send(f, f->prov_rid, f->prov_len, h, zmq_msg_data(body), zmq_msg_size(body), 1);
        break;
    }
    case AMTSBOTE__V1__KIND__KIND_REPLY: {
        uint64_t k;
        if (h->correlation_id.len != sizeof k || !has_body)
            break;
        memcpy(&k, h->correlation_id.data, sizeof k);
        unsigned slot = (unsigned)(k % FAKE_PENDING);
        if (!f->pend[slot].used)
            break;
        f->pend[slot].used = 0;
        h->correlation_id.data = f->pend[slot].corr;
        h->correlation_id.len = f->pend[slot].corr_len;
        s_fake_send(f, f->pend[slot].rid, f->pend[slot].rid_len, h, zmq_msg_data(body),
                    zmq_msg_size(body), 1);
        f->n_calls++;
        break;
    }
    default:
        break;
    }
}

/* The ZAP handler: every PLAIN user name is accepted as the participant's address. */
static void
s_fake_zap(fake_t *f)
{
    zmq_msg_t fr[8];
    int n = 0;
    for (;;) {
        zmq_msg_init(&fr[n]);
        if (zmq_msg_recv(&fr[n], f->zap, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&fr[n]);
            return;
        }
        int more = zmq_msg_more(&fr[n]);
        n++;
        if (!more || n == 8)
            break;
    }
    if (n >= 7) {
        zmq_send(f->zap, "1.0", 3, ZMQ_SNDMORE);
        zmq_send(f->zap, zmq_msg_data(&fr[1]), zmq_msg_size(&fr[1]), ZMQ_SNDMORE);
        zmq_send(f->zap, "200", 3, ZMQ_SNDMORE);
        zmq_send(f->zap, "OK", 2, ZMQ_SNDMORE);
        zmq_send(f->zap, zmq_msg_data(&fr[6]), zmq_msg_size(&fr[6]), ZMQ_SNDMORE);
        zmq_send(f->zap, "", 0, 0);
    }
    for (int i = 0; i < n; i++)
        zmq_msg_close(&fr[i]);
}

static void *
s_fake_run(void *arg)
{
    fake_t *f = arg;
    while (!atomic_load(&f->stop)) {
        if (atomic_exchange(&f->restart, 0)) {
            zmq_close(f->router);
            for (int i = 0; i < f->nq; i++) { /* what was in flight waits again */
                fqueue_t *q = &f->q[i];
                q->bound = 0;
                q->unacked = 0;
                for (size_t k = q->head; k < q->n; k++)
                    if (q->m[k].state == 1)
                        q->m[k].state = 0;
                q->cursor = q->head;
            }
            f->prov_len = 0;
            usleep(200000);
            s_fake_bind(f);
            atomic_fetch_add(&f->restarts, 1);
            if (getenv("MBLOAD_DEBUG"))
                s_note("fake broker: restarted on %s", f->endpoint);
        }
        zmq_pollitem_t items[2] = {{f->router, 0, ZMQ_POLLIN, 0}, {f->zap, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, 20) < 0)
            continue;
        if (items[1].revents & ZMQ_POLLIN)
            s_fake_zap(f);
        for (int n = 0; n < 1024 && (items[0].revents & ZMQ_POLLIN); n++) {
            zmq_msg_t rid, hm, bm;
            zmq_msg_init(&rid);
            if (zmq_msg_recv(&rid, f->router, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&rid);
                break;
            }
            zmq_msg_init(&hm);
            zmq_msg_init(&bm);
            int has_body = 0;
            zmq_msg_recv(&hm, f->router, 0);
            if (zmq_msg_more(&hm)) {
                zmq_msg_recv(&bm, f->router, 0);
                has_body = 1;
                while (zmq_msg_more(&bm))
                    zmq_msg_recv(&bm, f->router, 0);
            }
            const char *user = zmq_msg_gets(&hm, "User-Id");
            ab_header_t *h;
            char why[AB_WHY_LEN];
            if (ab_wire_decode(f->dec, zmq_msg_data(&hm), zmq_msg_size(&hm), &h, why) == 0)
                s_fake_handle(f, zmq_msg_data(&rid), zmq_msg_size(&rid), user ? user : "", h, &bm,
                              has_body);
            zmq_msg_close(&rid);
            zmq_msg_close(&hm);
            zmq_msg_close(&bm);
        }
        s_fake_deliver(f);
    }
    zmq_close(f->router);
    return NULL;
}

/* Reads a log's ids (hex in column `col`, 1-based, rows with `need` in the last column). */
static long
s_read_ids(const char *path, int col, const char *need, idset_t *set, long *lines)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        return -1;
    char line[1024];
    long n = 0;
    *lines = 0;
    while (fgets(line, sizeof line, fp)) {
        char *tok[8] = {0};
        int nt = 0;
        for (char *p = strtok(line, " \n"); p && nt < 8; p = strtok(NULL, " \n"))
            tok[nt++] = p;
        if (nt < col || (need && strcmp(tok[nt - 1], need) != 0))
            continue;
        (*lines)++;
        const char *hex = tok[col - 1];
        uint8_t id[ID_LEN];
        if (strlen(hex) != HEX_LEN)
            continue;
        for (int i = 0; i < ID_LEN; i++)
            sscanf(hex + 2 * i, "%2hhx", &id[i]);
        if (s_idset_add(set, id) > 0)
            n++;
    }
    fclose(fp);
    return n;
}

static int
s_idset_has(const idset_t *s, const uint8_t id[ID_LEN])
{
    static const uint8_t zero[ID_LEN];
    if (!s->cap)
        return 0;
    size_t j = s_fnv(id, ID_LEN) & (s->cap - 1);
    while (memcmp(s->keys + j * ID_LEN, zero, ID_LEN) != 0) {
        if (memcmp(s->keys + j * ID_LEN, id, ID_LEN) == 0)
            return 1;
        j = (j + 1) & (s->cap - 1);
    }
    return 0;
}

/* Number of ids of `a` missing from `b`. */
static long
s_missing(const idset_t *a, const idset_t *b)
{
    static const uint8_t zero[ID_LEN];
    long miss = 0;
    for (size_t i = 0; i < a->cap; i++)
        if (memcmp(a->keys + i * ID_LEN, zero, ID_LEN) != 0 &&
            !s_idset_has(b, a->keys + i * ID_LEN))
            miss++;
    return miss;
}

typedef struct {
    void *ctx;
    opts_t o;
    int is_sub;
    recv_result_t res;
    int rc;
} recv_job_t;

static void *
s_recv_job(void *arg)
{
    recv_job_t *j = arg;
    j->rc = s_run_receivers(j->ctx, &j->o, j->is_sub, &j->res);
    return NULL;
}

static void *
s_restart_later(void *arg)
{
    fake_t *f = arg;
    usleep(150000);
    atomic_store(&f->restart, 1);
    return NULL;
}

typedef struct {
    void *ctx;
    opts_t o;
    int rc;
} serve_job_t;

static void *
s_serve_job(void *arg)
{
    serve_job_t *j = arg;
    j->rc = s_run_servers(j->ctx, &j->o);
    return NULL;
}

static int s_st_failed;

static void
s_st_expect(int cond, const char *what)
{
    printf("%s - %s\n", cond ? "ok" : "not ok", what);
    if (!cond)
        s_st_failed++;
}

static int
s_selftest(void *ctx)
{
    char dir[] = "/tmp/mbload-selftest-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    char acc[128], att[128], rcv[128], srcv[128];
    snprintf(acc, sizeof acc, "%s/accepted", dir);
    snprintf(att, sizeof att, "%s/attempted", dir);
    snprintf(rcv, sizeof rcv, "%s/received", dir);
    snprintf(srcv, sizeof srcv, "%s/sub-received", dir);

    fake_t *f = calloc(1, sizeof *f);
    f->ctx = ctx;
    f->dec = ab_wire_decoder_new();
    f->zap = zmq_socket(ctx, ZMQ_REP);
    if (zmq_bind(f->zap, "inproc://zeromq.zap.01") != 0)
        return 1;
    s_fake_bind(f);
    pthread_t fth;
    pthread_create(&fth, NULL, s_fake_run, f);
    printf("fake broker on %s\n", f->endpoint);

    /* 1. send through UNAVAILABLE, lost replies (time-outs) and a restart */
    opts_t o = {.mode = M_SEND,
                .uri = f->endpoint,
                .as = "bund.selftest",
                .to = "land.be.empfang",
                .count = 6000,
                .size = 200,
                .window = 16,
                .threads = 3,
                .seconds = 30,
                .drain_seconds = 20,
                .timeout_ms = 300,
                .accepted_log = acc,
                .attempted_log = att,
                .credit = 50,
                .ack = 1,
                /* the receivers stop at their count; the idle time only bounds a failure, and is
                 * long so that a loaded machine (CI, sanitizers) does not end them early */
                .idle_ms = 10000};
    memcpy(o.prefix, "\xab\xcd", 2);
    o.prefix_len = 2;
    pthread_t rth;
    pthread_create(&rth, NULL, s_restart_later, f);
    send_result_t sr;
    int rc = s_run_senders(ctx, &o, AMTSBOTE__V1__KIND__KIND_SEND, &sr);
    pthread_join(rth, NULL);
    s_st_expect(rc == 0 && sr.accepted == o.count, "send: every message accepted");
    /* the fake loses some of its answers on purpose (and at its restart), UNAVAILABLE ones too:
     * the sender must have seen some, not all that were sent */
    s_st_expect(sr.errors > 0 && f->n_unavailable > 0,
                "send: UNAVAILABLE answers seen and retried");
    s_st_expect(atomic_load(&f->restarts) == 1, "send: the fake broker restarted once");

    /* 2. recv drains the mailbox: duplicates counted, nothing corrupt */
    opts_t ro = o;
    ro.mode = M_RECV;
    ro.as = "land.be.empfang";
    ro.threads = 1;
    ro.count = o.count;
    ro.received_log = rcv;
    ro.size = 200;
    recv_result_t rr;
    rc = s_run_receivers(ctx, &ro, 0, &rr);
    s_st_expect(rc == 0 && rr.corrupt == 0, "recv: nothing corrupt");
    s_st_expect(rr.distinct == o.count, "recv: every stored message received once after dedup");
    s_st_expect(rr.dups > 0, "recv: duplicate deliveries counted as such");

    idset_t sa = {0}, st = {0}, sv = {0};
    long la, lt, lv;
    long na = s_read_ids(acc, 1, NULL, &sa, &la);
    long nt = s_read_ids(att, 1, NULL, &st, &lt);
    long nv = s_read_ids(rcv, 3, NULL, &sv, &lv);
    s_st_expect(na == o.count && la == o.count, "accepted log: one line per accepted id");
    s_st_expect(nt == o.count, "attempted log: every id");
    s_st_expect(nv == o.count && lv == rr.delivered, "received log: every delivery");
    s_st_expect(s_missing(&sa, &sv) == 0, "every accepted id was received");
    s_st_expect(s_missing(&sv, &st) == 0, "every received id was attempted");
    {
        FILE *fp = fopen(acc, "r");
        char line[64] = "";
        if (fp) {
            if (!fgets(line, sizeof line, fp))
                line[0] = '\0';
            fclose(fp);
        }
        s_st_expect(strlen(line) > 22 && memcmp(line + 18, "abcd", 4) == 0,
                    "ids carry the --id-prefix in bytes 9 and 10");
    }
    free(sa.keys);
    free(st.keys);
    free(sv.keys);

    /* 3. events: 2 durable subscribers, then a publisher */
    recv_job_t sj = {.ctx = ctx, .o = o, .is_sub = 1};
    sj.o.mode = M_SUB;
    sj.o.as = "land.sub";
    sj.o.topic = "meldewesen.umzug.>";
    sj.o.durable = "mbload";
    sj.o.threads = 2;
    sj.o.count = 1000;
    sj.o.received_log = srcv;
    sj.o.accepted_log = sj.o.attempted_log = NULL;
    pthread_t sth;
    pthread_create(&sth, NULL, s_recv_job, &sj);
    for (int i = 0; i < 200; i++) { /* until both subscriptions exist */
        int subs = 0;
        for (int k = 0; k < f->nq; k++)
            subs += f->q[k].is_event && f->q[k].bound;
        if (subs == 2)
            break;
        usleep(10000);
    }
    opts_t po = o;
    po.mode = M_PUB;
    po.as = "bund.pub";
    po.topic = "meldewesen.umzug.09162000";
    po.threads = 1;
    po.count = 1000;
    po.accepted_log = po.attempted_log = NULL;
    rc = s_run_senders(ctx, &po, AMTSBOTE__V1__KIND__KIND_PUBLISH, &sr);
    s_st_expect(rc == 0 && sr.accepted == po.count, "pub: every event accepted");
    pthread_join(sth, NULL);
    s_st_expect(sj.rc == 0 && sj.res.distinct == 2 * po.count,
                "sub: each durable subscriber got every event");

    /* 4. calls through the fake broker to an echo provider */
    serve_job_t vj = {.ctx = ctx, .o = o};
    vj.o.mode = M_SERVE;
    vj.o.as = "kommune.echo";
    vj.o.service = "bench.v1.Echo/Echo";
    vj.o.threads = 1;
    vj.o.seconds = 30;
    pthread_t vth;
    pthread_create(&vth, NULL, s_serve_job, &vj);
    for (int i = 0; i < 1000 && !f->prov_len; i++)
        usleep(10000);
    opts_t co = o;
    co.mode = M_CALL;
    co.as = "bund.caller";
    co.service = "bench.v1.Echo/Echo";
    co.count = 2000;
    co.threads = 2;
    co.timeout_ms = 5000;
    co.accepted_log = co.attempted_log = NULL;
    rc = s_run_senders(ctx, &co, AMTSBOTE__V1__KIND__KIND_CALL, &sr);
    s_st_expect(rc == 0 && sr.accepted == co.count && sr.corrupt == 0,
                "call: every call answered with its payload");
    s_signalled = 1; /* ends the provider */
    pthread_join(vth, NULL);
    s_signalled = 0;

    atomic_store(&f->stop, 1);
    pthread_join(fth, NULL);
    zmq_close(f->zap);
    for (int i = 0; i < f->nq; i++) {
        for (size_t k = 0; k < f->q[i].n; k++)
            free(f->q[i].m[k].payload);
        free(f->q[i].m);
    }
    free(f->dedup.keys);
    ab_wire_decoder_destroy(&f->dec);
    free(f);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) {
    }
    printf("selftest: %s\n", s_st_failed ? "FAILED" : "passed");
    return s_st_failed ? 1 : 0;
}

/* ---- main ----------------------------------------------------------------------------------- */

static void
s_usage(FILE *out)
{
    fputs(
        "usage: mbload send|pub|call --broker URI --as ADDR (--to RCPT | --topic T | --service S)\n"
        "                 --count N --size B --window W [--senders S] [--accepted-log F]\n"
        "                 [--attempted-log F] [--id-prefix HEX] [--ttl-ms T] [--seconds MAX]\n"
        "                 [--timeout-ms T] [--drain-seconds D] [--dup-every K] [--replay F]\n"
        "       mbload recv --broker URI --as ADDR [--credit C] [--count N] [--seconds MAX]\n"
        "                 [--idle-ms I] [--received-log F] [--ack] [--size B]\n"
        "       mbload sub  --broker URI --as ADDR --topic PATTERN [--durable NAME] [--credit C]\n"
        "                 [--subscribers K] [--count N] [--seconds MAX] [--idle-ms I] [--ack] ...\n"
        "       mbload serve --broker URI --as ADDR --service S [--senders T] [--seconds MAX]\n"
        "       mbload selftest\n",
        out);
}

static int
s_parse_num(const char *name, const char *v, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || d < lo || d > hi) {
        fprintf(stderr, "mbload: --%s takes a number from %g to %g, not '%s'\n", name, lo, hi, v);
        return -1;
    }
    *out = d;
    return 0;
}

int
main(int argc, char **argv)
{
    if (argc < 2) {
        s_usage(stderr);
        return 2;
    }
    opts_t o = {.count = -1,
                .size = 100,
                .window = 100,
                .threads = 1,
                .seconds = 60,
                .drain_seconds = 30,
                .credit = 100,
                .idle_ms = 5000,
                .timeout_ms = 5000};
    const char *m = argv[1];
    if (!strcmp(m, "send"))
        o.mode = M_SEND;
    else if (!strcmp(m, "recv"))
        o.mode = M_RECV;
    else if (!strcmp(m, "pub"))
        o.mode = M_PUB;
    else if (!strcmp(m, "sub"))
        o.mode = M_SUB;
    else if (!strcmp(m, "serve"))
        o.mode = M_SERVE;
    else if (!strcmp(m, "call"))
        o.mode = M_CALL;
    else if (!strcmp(m, "selftest"))
        o.mode = M_SELFTEST;
    else if (!strcmp(m, "-h") || !strcmp(m, "--help")) {
        s_usage(stdout);
        return 0;
    } else {
        fprintf(stderr, "mbload: unknown mode '%s'\n", m);
        s_usage(stderr);
        return 2;
    }
    enum {
        O_BROKER = 256,
        O_AS,
        O_TO,
        O_TOPIC,
        O_SERVICE,
        O_DURABLE,
        O_COUNT,
        O_SIZE,
        O_WINDOW,
        O_SENDERS,
        O_SUBSCRIBERS,
        O_ACCLOG,
        O_ATTLOG,
        O_RCVLOG,
        O_PREFIX,
        O_TTL,
        O_SECONDS,
        O_DRAIN,
        O_CREDIT,
        O_ACK,
        O_IDLE,
        O_TIMEOUT,
        O_DUP_EVERY,
        O_REPLAY,
    };
    static const struct option longopts[] = {
        {"broker", required_argument, NULL, O_BROKER},
        {"as", required_argument, NULL, O_AS},
        {"to", required_argument, NULL, O_TO},
        {"topic", required_argument, NULL, O_TOPIC},
        {"service", required_argument, NULL, O_SERVICE},
        {"durable", required_argument, NULL, O_DURABLE},
        {"count", required_argument, NULL, O_COUNT},
        {"size", required_argument, NULL, O_SIZE},
        {"window", required_argument, NULL, O_WINDOW},
        {"senders", required_argument, NULL, O_SENDERS},
        {"subscribers", required_argument, NULL, O_SUBSCRIBERS},
        {"accepted-log", required_argument, NULL, O_ACCLOG},
        {"attempted-log", required_argument, NULL, O_ATTLOG},
        {"received-log", required_argument, NULL, O_RCVLOG},
        {"id-prefix", required_argument, NULL, O_PREFIX},
        {"ttl-ms", required_argument, NULL, O_TTL},
        {"seconds", required_argument, NULL, O_SECONDS},
        {"drain-seconds", required_argument, NULL, O_DRAIN},
        {"credit", required_argument, NULL, O_CREDIT},
        {"ack", no_argument, NULL, O_ACK},
        {"idle-ms", required_argument, NULL, O_IDLE},
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"dup-every", required_argument, NULL, O_DUP_EVERY},
        {"replay", required_argument, NULL, O_REPLAY},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    double d;
    int size_given = 0;
    optind = 2;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case O_BROKER:
            o.uri = optarg;
            break;
        case O_AS:
            o.as = optarg;
            break;
        case O_TO:
            o.to = optarg;
            break;
        case O_TOPIC:
            o.topic = optarg;
            break;
        case O_SERVICE:
            o.service = optarg;
            break;
        case O_DURABLE:
            o.durable = optarg;
            break;
        case O_COUNT:
            if (s_parse_num("count", optarg, 0, MAX_COUNT, &d))
                return 2;
            o.count = (long)d;
            break;
        case O_SIZE:
            if (s_parse_num("size", optarg, ID_LEN, MAX_SIZE, &d))
                return 2;
            o.size = (size_t)d;
            size_given = 1;
            break;
        case O_WINDOW:
            if (s_parse_num("window", optarg, 1, MAX_WINDOW, &d))
                return 2;
            o.window = (int)d;
            break;
        case O_SENDERS:
        case O_SUBSCRIBERS:
            if (s_parse_num(c == O_SENDERS ? "senders" : "subscribers", optarg, 1, MAX_THREADS, &d))
                return 2;
            o.threads = (int)d;
            break;
        case O_ACCLOG:
            o.accepted_log = optarg;
            break;
        case O_ATTLOG:
            o.attempted_log = optarg;
            break;
        case O_RCVLOG:
            o.received_log = optarg;
            break;
        case O_PREFIX: {
            size_t l = strlen(optarg);
            if (l == 0 || l > 8 || l % 2) {
                fprintf(stderr, "mbload: --id-prefix takes 2 to 8 hex digits (1 to 4 bytes)\n");
                return 2;
            }
            for (size_t i = 0; i < l / 2; i++)
                if (sscanf(optarg + 2 * i, "%2hhx", &o.prefix[i]) != 1) {
                    fprintf(stderr, "mbload: --id-prefix: '%s' is not hex\n", optarg);
                    return 2;
                }
            o.prefix_len = l / 2;
            break;
        }
        case O_TTL:
            if (s_parse_num("ttl-ms", optarg, 0, UINT32_MAX, &d))
                return 2;
            o.ttl_ms = (uint32_t)d;
            break;
        case O_SECONDS:
            if (s_parse_num("seconds", optarg, 0.01, 86400, &d))
                return 2;
            o.seconds = d;
            break;
        case O_DRAIN:
            if (s_parse_num("drain-seconds", optarg, 0, 3600, &d))
                return 2;
            o.drain_seconds = d;
            break;
        case O_CREDIT:
            if (s_parse_num("credit", optarg, 0, 1000000, &d))
                return 2;
            o.credit = (int)d;
            break;
        case O_ACK:
            o.ack = 1;
            break;
        case O_IDLE:
            if (s_parse_num("idle-ms", optarg, 0, 86400000, &d))
                return 2;
            o.idle_ms = (long)d;
            break;
        case O_TIMEOUT:
            if (s_parse_num("timeout-ms", optarg, 50, 600000, &d))
                return 2;
            o.timeout_ms = (int)d;
            break;
        case O_REPLAY:
            o.replay = optarg;
            break;
        case O_DUP_EVERY:
            if (s_parse_num("dup-every", optarg, 0, MAX_COUNT, &d))
                return 2;
            o.dup_every = (long)d;
            break;
        case 'h':
            s_usage(stdout);
            return 0;
        default:
            s_usage(stderr);
            return 2;
        }
    }
    if (o.replay) { /* the ids of an accepted or attempted log, sent again: --count is theirs */
        FILE *fp = fopen(o.replay, "r");
        if (!fp) {
            fprintf(stderr, "mbload: --replay: cannot open %s: %s\n", o.replay, strerror(errno));
            return 2;
        }
        size_t cap = 1024, n = 0;
        o.replay_ids = malloc(cap * ID_LEN);
        char line[128];
        while (o.replay_ids && fgets(line, sizeof line, fp) && (long)n < MAX_COUNT) {
            if (strlen(line) < HEX_LEN)
                continue;
            if (n == cap) {
                uint8_t *g = realloc(o.replay_ids, 2 * cap * ID_LEN);
                if (!g)
                    break;
                o.replay_ids = g;
                cap *= 2;
            }
            int okhex = 1;
            for (int i = 0; i < ID_LEN; i++)
                okhex &= sscanf(line + 2 * i, "%2hhx", &o.replay_ids[n * ID_LEN + i]) == 1;
            n += (size_t)okhex;
        }
        fclose(fp);
        if (!o.replay_ids || n == 0) {
            fprintf(stderr, "mbload: --replay: no ids in %s\n", o.replay);
            free(o.replay_ids);
            return 2;
        }
        o.count = (long)n;
    }
    if (optind < argc) {
        fprintf(stderr, "mbload: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    void *ctx = zmq_ctx_new();
    if (!ctx)
        return 1;
    zmq_ctx_set(ctx, ZMQ_IO_THREADS, 2);
    if (o.mode == M_SELFTEST) {
        int rc = s_selftest(ctx);
        zmq_ctx_term(ctx);
        return rc;
    }
    const char *need = NULL;
    if (!o.uri)
        need = "--broker";
    else if (!o.as)
        need = "--as";
    else if (o.mode == M_SEND && !o.to)
        need = "--to";
    else if ((o.mode == M_PUB || o.mode == M_SUB) && !o.topic)
        need = "--topic";
    else if ((o.mode == M_CALL || o.mode == M_SERVE) && !o.service)
        need = "--service";
    else if ((o.mode == M_SEND || o.mode == M_PUB || o.mode == M_CALL) && o.count < 1)
        need = "--count (at least 1)";
    if (need) {
        fprintf(stderr, "mbload %s: %s is required\n", m, need);
        return 2;
    }
    if (o.count < 0)
        o.count = 0;
    if ((o.mode == M_RECV || o.mode == M_SUB) && !size_given)
        o.size = 0; /* any length */
    for (int t = 0; t < o.threads; t++) {
        char ident[AB_MAX_NAME + 1], why[AB_WHY_LEN];
        s_identity(&o, t, o.threads, ident, sizeof ident);
        if (ab_wire_check_participant(ident, why) != 0) {
            fprintf(stderr, "mbload: --as: '%s' is not a participant address: %s\n", ident, why);
            return 2;
        }
    }
    int rc;
    switch (o.mode) {
    case M_SEND:
        rc = s_run_senders(ctx, &o, AMTSBOTE__V1__KIND__KIND_SEND, NULL);
        break;
    case M_PUB:
        rc = s_run_senders(ctx, &o, AMTSBOTE__V1__KIND__KIND_PUBLISH, NULL);
        break;
    case M_CALL:
        rc = s_run_senders(ctx, &o, AMTSBOTE__V1__KIND__KIND_CALL, NULL);
        break;
    case M_RECV:
        rc = s_run_receivers(ctx, &o, 0, NULL);
        break;
    case M_SUB:
        rc = s_run_receivers(ctx, &o, 1, NULL);
        break;
    case M_SERVE:
        rc = s_run_servers(ctx, &o);
        break;
    default:
        rc = 2;
    }
    zmq_ctx_term(ctx);
    free(o.replay_ids);
    return rc;
}
