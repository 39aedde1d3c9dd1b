/*
 * bench_flow.c - load generator for one-way flows: events and durable mailboxes through Amtsbote,
 * and the raw-libzmq floor of the event stream.
 *
 *   bench_flow stream       --broker URI [--pki DIR] [options]    1 subscriber
 *   bench_flow fanout       --broker URI [--pki DIR] [--subscribers N] [options]
 *   bench_flow durable      --broker URI [--pki DIR] [--publishers P] [--credit C] [options]
 *   bench_flow floor-stream --push URI --pull URI [options]
 *
 * stream, fanout: the publisher is bund.bench, every subscriber a connection of
 * kommune.bench.worker with an ephemeral subscription to this run's topic (bench.flow.pPID). An
 * event that no durable subscription matches is not stored: the broker queues it to the
 * subscribers at once and answers the PUBLISH at the end of its loop turn without writing to
 * disk. An ephemeral subscriber sees each event at most once; the broker drops an event for a
 * connection whose queue is full (lost=). --publishers connections (default 1) each keep
 * --inflight ab_publish_async() unanswered.
 *
 * durable: --publishers connections of bund.bench, each with --inflight ab_send_async() to the
 * mailbox of kommune.bench.worker unanswered (the broker answers ACCEPTED after the commit that
 * put the message on disk), and one connection of kommune.bench.worker that takes the mailbox
 * with credit --credit and acknowledges every message. The DELIVERED receipts wait in
 * bund.bench's mailbox, unread, as with bench/run_mailbox.sh.
 *
 * Publishers, senders and receivers of Amtsbote all run in one poll loop.
 *
 * floor-stream: a libzmq PUSH on a thread connected to --push and a PULL in the main loop
 * connected to --pull; between them floor_forwarder --stream behind stunnel
 * (bench/peers/floor.sh). Nothing is answered: the high-water marks are the only window.
 *
 * Everything is counted at the receivers: after --warmup messages have arrived the window of
 * --seconds starts, and rate = messages received in it / its length (fanout: deliveries summed
 * over the subscribers). Then the senders stop and what is still on its way is awaited (bounded),
 * so that lost= (sent, never received) is exact. Senders pause while --max-backlog messages are
 * sent but not yet received by the slowest receiver: a receiver that falls behind slows the
 * senders down instead of letting a queue grow without bound (the broker queues up to 100,000
 * messages per connection, 6 GiB of 64 KiB events, before it drops) and the latency with it.
 * The default, 4096 messages (at most 64 MiB of payload), keeps every receiver busy: it is far
 * more than a receiver takes in one round trip.
 *
 * Payloads (--size >= 24): bytes 0-7 the sequence stamp (sender index << 48 | its sequence from
 * 1), 8-15 this run's tag, 16-23 the send time (CLOCK_MONOTONIC ns; sender and receiver are this
 * process, so p50/p99/p999 are the one-way latency from the send call to the receiver's
 * handler), the rest a fixed pattern. Every byte of every message is checked, and the order per
 * sender. A message with another run's tag (left waiting in the mailbox or in a forwarder by an
 * earlier run) is acknowledged and counted as stale=, never measured.
 *
 * Output: one line on stdout, "result system=... scenario=... key=value ..."; diagnostics on
 * stderr. Exit status 0 only when nothing failed and every message was right (and, durable and
 * floor, every message sent arrived), 1 otherwise, 2 on a usage error. An alarm() ends the
 * process --seconds + 30 s after it started, whatever hangs.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "amtsbote.h"
#include "bench_util.h"

#define PROG "bench_flow"
#define SENDER_ID "bund.bench"
#define RECEIVER_ID "kommune.bench.worker"
#define HDR_LEN 24 /* stamp, run tag, send time */
#define SEQ_BITS 48
#define SEQ_MASK ((UINT64_C(1) << SEQ_BITS) - 1)
#define MAX_SIZE (16u * 1024 * 1024)
#define MAX_PUBLISHERS 64
#define MAX_SUBSCRIBERS 64
#define MAX_INFLIGHT 100000
#define MAX_PIDS 8
#define LAT_CAP 4000000L /* latency samples kept (32 MB); later ones are not sampled */
#define BACKLOG_BYTES (64u * 1024 * 1024)
#define BACKLOG_MAX 4096L
#define CONNECT_MS 5000
#define PUBLISH_TIMEOUT_MS 5000
#define WARMUP_MAX_MS 8000   /* the warm-up messages must have arrived by then */
#define STALL_MS 3000        /* nothing arrived for this long while sending: a fault */
#define DRAIN_MAX_MS 12000   /* after the window, waiting for what is on its way */
#define DRAIN_IDLE_MS 1000   /* stream and floor: nothing more arrived: the rest is lost */
#define PREDRAIN_MAX_MS 2000 /* durable: taking an earlier run's leftovers before the start */
#define PREDRAIN_IDLE_MS 300
#define POLL_MS 50
#define NAP_NS 50000 /* a sender held back by --max-backlog looks again after this */

typedef enum { M_NONE, M_STREAM, M_FANOUT, M_DURABLE, M_FLOOR } flow_mode_t;

typedef struct {
    flow_mode_t mode;
    const char *uri;         /* the broker (Amtsbote modes) */
    const char *push, *pull; /* the floor's endpoints */
    size_t size;
    double seconds;
    long warmup;
    int inflight;     /* PUBLISHes or SENDs unanswered per connection */
    int publishers;   /* publisher or sender connections */
    int subscribers;  /* fanout */
    uint32_t credit;  /* durable */
    long max_backlog; /* -1: the default for the size; 0: no bound */
    const char *pki;
    char ca[512], cert[512], key[512], rcert[512], rkey[512];
    pid_t server_pids[MAX_PIDS], client_pids[MAX_PIDS];
    int nserver_pids, nclient_pids;
} opts_t;

typedef struct bench bench_t;

/* A receiver: a subscriber connection, the mailbox consumer, or the floor's PULL. */
typedef struct {
    bench_t *b;
    int idx;
    ab_client_t *c;
    uint64_t last[MAX_PUBLISHERS]; /* the highest sequence seen from each sender */
    long got;                      /* this run's messages received */
    long gaps;                     /* sequences skipped: dropped on the way */
} rx_t;

typedef struct tx tx_t;

/* One PUBLISH or SEND in flight: its send time, for the latency of the answer. */
typedef struct {
    tx_t *t;
    int idx;
    uint64_t t0;
} slot_t;

/* A sender: a publisher or sender connection, or the floor's PUSH thread. */
struct tx {
    bench_t *b;
    int idx;
    pthread_t th;
    int started;
    ab_client_t *c; /* Amtsbote: driven by the main loop */
    unsigned char *buf;
    uint64_t seq; /* the last sequence stamped */
    slot_t *slots;
    int *free_slots;
    int nfree;
};

struct bench {
    opts_t o;
    uint64_t tag;
    char topic[64];
    unsigned char *tmpl; /* the pattern every payload carries after its first HDR_LEN bytes */
    rx_t rx[MAX_SUBSCRIBERS];
    int nrx;
    tx_t tx[MAX_PUBLISHERS];
    int ntx;
    long backlog; /* the bound in effect; 0: none */

    /* shared with the sender threads */
    atomic_int go, stop, ready, failed, running;
    atomic_long issued;  /* sends started */
    atomic_long done;    /* PUBLISHes answered, SENDs accepted, messages pushed */
    atomic_long allowed; /* senders start no send while issued >= allowed (the backlog bound) */
    atomic_long errors;
    pthread_mutex_t mu; /* first_error */
    char first_error[512];

    /* the main thread's */
    int record;
    long got_total; /* this run's messages over all receivers */
    long stale;
    uint64_t *lat; /* one-way latency, ns, of messages received in the window */
    long nlat;
    uint64_t *acc_lat; /* send -> the broker's answer, ns, in the window (Amtsbote) */
    long nacc;
    long in_flight; /* PUBLISHes and SENDs unanswered */
    void *zctx;     /* floor */
    void *pull;
};

static void
s_nap(long ns)
{
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
}

/* Counts an error (from any thread) and keeps the text of the first one for the report. */
static void s_note_error(bench_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
s_note_error(bench_t *b, const char *fmt, ...)
{
    if (atomic_fetch_add(&b->errors, 1) > 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&b->mu);
    vsnprintf(b->first_error, sizeof b->first_error, fmt, ap);
    pthread_mutex_unlock(&b->mu);
    va_end(ap);
}

static const char *
s_mode_name(flow_mode_t m)
{
    switch (m) {
    case M_STREAM:
        return "stream";
    case M_FANOUT:
        return "fanout";
    case M_DURABLE:
        return "durable";
    case M_FLOOR:
        return "floor-stream";
    default:
        return "?";
    }
}

/* Stamps the sender's buffer with its next sequence and the send time. */
static void
s_stamp(tx_t *t)
{
    t->seq++;
    bu_put64(t->buf, (uint64_t)t->idx << SEQ_BITS | t->seq);
    bu_put64(t->buf + 8, t->b->tag);
    bu_put64(t->buf + 16, bu_now_ns());
}

/*
 * Checks one message that receiver `r` got: `len` bytes at `p`, from `sender` (NULL: not known,
 * the floor). Counts it, or counts it as stale (another run's) or as an error.
 */
static void
s_receive(bench_t *b, rx_t *r, const unsigned char *p, size_t len, const char *sender)
{
    uint64_t now = bu_now_ns();
    if (len < HDR_LEN || bu_get64(p + 8) != b->tag) {
        b->stale++;
        return;
    }
    if (len != b->o.size) {
        s_note_error(b, "receiver %d: a message of %zu bytes, %zu were sent", r->idx, len,
                     b->o.size);
        return;
    }
    if (sender && strcmp(sender, SENDER_ID) != 0) {
        s_note_error(b, "receiver %d: a message of this run from %s, not " SENDER_ID, r->idx,
                     sender);
        return;
    }
    uint64_t stamp = bu_get64(p);
    uint64_t who = stamp >> SEQ_BITS, seq = stamp & SEQ_MASK;
    if (who >= (uint64_t)b->ntx || seq == 0) {
        s_note_error(b, "receiver %d: a message with a stamp no sender made (%#llx)", r->idx,
                     (unsigned long long)stamp);
        return;
    }
    if (seq <= r->last[who]) {
        s_note_error(b,
                     "receiver %d: sender %llu's message %llu after its %llu (a duplicate or "
                     "out of order)",
                     r->idx, (unsigned long long)who, (unsigned long long)seq,
                     (unsigned long long)r->last[who]);
        return;
    }
    if (memcmp(p + HDR_LEN, b->tmpl + HDR_LEN, len - HDR_LEN) != 0) {
        s_note_error(b, "receiver %d: sender %llu's message %llu is damaged", r->idx,
                     (unsigned long long)who, (unsigned long long)seq);
        return;
    }
    r->gaps += (long)(seq - r->last[who] - 1);
    r->last[who] = seq;
    r->got++;
    b->got_total++;
    if (b->record && b->nlat < LAT_CAP)
        b->lat[b->nlat++] = now - bu_get64(p + 16);
}

/* How far the slowest receiver has come: messages received or known to be lost. */
static long
s_slowest(const bench_t *b)
{
    long m = LONG_MAX;
    for (int i = 0; i < b->nrx; i++)
        if (b->rx[i].got + b->rx[i].gaps < m)
            m = b->rx[i].got + b->rx[i].gaps;
    return b->nrx ? m : 0;
}

static void
s_update_allowed(bench_t *b)
{
    atomic_store(&b->allowed, b->backlog ? s_slowest(b) + b->backlog : LONG_MAX);
}

/* ---- Amtsbote ------------------------------------------------------------------------------ */

/* The client's identity: certificates on a tls:// broker, the name it gives on a plain one. */
static int
s_identity(ab_client_t *c, const opts_t *o, int receiver)
{
    if (strncmp(o->uri, "tls://", 6) != 0)
        return ab_client_set_participant(c, receiver ? RECEIVER_ID : SENDER_ID);
    ab_tls_options_t t = {
        .cert = receiver ? o->rcert : o->cert, .key = receiver ? o->rkey : o->key, .ca = o->ca};
    return ab_client_set_tls(c, &t);
}

/* A connected client of the sender or the receiver, or NULL after saying why. */
static ab_client_t *
s_connect(bench_t *b, int receiver, const char *what, int idx)
{
    ab_client_t *c = ab_client_new();
    int rc = c ? s_identity(c, &b->o, receiver) : AB_ENOMEM;
    if (rc == 0)
        rc = ab_client_connect(c, b->o.uri, CONNECT_MS);
    if (rc != 0) {
        s_note_error(b, "%s %d: connect %s as %s: %s: %s", what, idx, b->o.uri,
                     receiver ? RECEIVER_ID : SENDER_ID, ab_err_name(rc),
                     c ? ab_client_last_error(c) : "out of memory");
        ab_client_destroy(&c);
    }
    return c;
}

/* An event of an ephemeral subscription, or a message of the mailbox. */
static void
s_on_message(ab_client_t *client, ab_message_t *msg, void *arg)
{
    (void)client;
    rx_t *r = arg;
    bench_t *b = r->b;
    int kind = ab_message_kind(msg);
    if (kind == (b->o.mode == M_DURABLE ? AB_MSG_MESSAGE : AB_MSG_EVENT)) {
        size_t len = 0;
        const void *p = ab_message_payload(msg, &len);
        s_receive(b, r, p, len, ab_message_sender(msg));
    } else {
        b->stale++; /* a receipt in kommune.bench.worker's mailbox: not this benchmark's */
    }
    int rc = ab_ack(&msg);
    if (rc != 0)
        s_note_error(b, "receiver %d: ab_ack: %s", r->idx, ab_err_name(rc));
}

/* The broker's answer to one PUBLISH or SEND. */
static void
s_on_accepted(ab_client_t *client, int status, const char *id_hex, const char *errtext, void *arg)
{
    (void)client;
    (void)id_hex;
    slot_t *s = arg;
    tx_t *t = s->t;
    bench_t *b = t->b;
    if (status == 0) {
        atomic_fetch_add(&b->done, 1);
        if (b->record && b->nacc < LAT_CAP)
            b->acc_lat[b->nacc++] = bu_now_ns() - s->t0;
    } else {
        s_note_error(b, "sender %d: %s: %s%s%s", t->idx,
                     b->o.mode == M_DURABLE ? "SEND" : "PUBLISH", ab_err_name(status),
                     errtext && errtext[0] ? ": " : "", errtext ? errtext : "");
    }
    t->free_slots[t->nfree++] = s->idx;
    b->in_flight--;
}

/* Fills every sender's window, unless held back by the backlog bound. */
static int
s_fill_windows(bench_t *b)
{
    if (atomic_load(&b->stop))
        return 0;
    for (int i = 0; i < b->ntx; i++) {
        tx_t *t = &b->tx[i];
        while (t->c && t->nfree > 0 && atomic_load(&b->issued) < atomic_load(&b->allowed)) {
            slot_t *s = &t->slots[t->free_slots[--t->nfree]];
            s_stamp(t);
            s->t0 = bu_now_ns();
            int rc =
                b->o.mode == M_DURABLE
                    ? ab_send_async(t->c, RECEIVER_ID, t->buf, b->o.size, NULL, s_on_accepted, s)
                    : ab_publish_async(t->c, b->topic, t->buf, b->o.size, NULL, s_on_accepted, s);
            if (rc != 0) {
                t->nfree++;
                s_note_error(b, "sender %d: %s: %s: %s", t->idx,
                             b->o.mode == M_DURABLE ? "ab_send_async" : "ab_publish_async",
                             ab_err_name(rc), ab_client_last_error(t->c));
                return -1;
            }
            atomic_fetch_add(&b->issued, 1);
            b->in_flight++;
        }
    }
    return 0;
}

/*
 * Processes every client of the main loop (receivers, and senders after filling their windows),
 * then waits up to `wait_ms` when nothing was left to do. Returns 0 or -1.
 */
static int
s_ab_pump(bench_t *b, int wait_ms)
{
    ab_client_t *cs[MAX_SUBSCRIBERS + MAX_PUBLISHERS];
    int n = 0;
    for (int i = 0; i < b->nrx; i++)
        cs[n++] = b->rx[i].c;
    if (s_fill_windows(b) != 0)
        return -1;
    for (int i = 0; i < b->ntx; i++)
        if (b->tx[i].c) /* not yet while the consumer takes an earlier run's leftovers */
            cs[n++] = b->tx[i].c;
    long before = b->got_total + atomic_load(&b->done);
    int again = 0;
    for (int i = 0; i < n; i++) {
        int rc = ab_client_process(cs[i]);
        if (rc < 0) {
            s_note_error(b, "ab_client_process: %s: %s", ab_err_name(rc),
                         ab_client_last_error(cs[i]));
            return -1;
        }
        again |= rc > 0;
    }
    if (again || b->got_total + atomic_load(&b->done) != before || wait_ms <= 0)
        return 0;
    struct pollfd p[MAX_SUBSCRIBERS + MAX_PUBLISHERS];
    for (int i = 0; i < n; i++) {
        p[i] = (struct pollfd){ab_client_fd(cs[i]), POLLIN, 0};
        int t = ab_client_next_timeout(cs[i]);
        if (t >= 0 && t < wait_ms)
            wait_ms = t;
    }
    if (poll(p, (nfds_t)n, wait_ms) < 0 && errno != EINTR) {
        s_note_error(b, "poll: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* Connects the receivers: subscribers (stream, fanout) or the mailbox's consumer (durable). */
static int
s_ab_receivers(bench_t *b)
{
    for (int i = 0; i < b->nrx; i++) {
        rx_t *r = &b->rx[i];
        r->c = s_connect(b, 1, b->o.mode == M_DURABLE ? "consumer" : "subscriber", i);
        if (!r->c)
            return -1;
        int rc = b->o.mode == M_DURABLE ? ab_inbox(r->c, b->o.credit, s_on_message, r)
                                        : ab_subscribe(r->c, b->topic, NULL, 0, s_on_message, r);
        if (rc != 0) {
            s_note_error(b, "%s %d: %s: %s: %s", b->o.mode == M_DURABLE ? "consumer" : "subscriber",
                         i, b->o.mode == M_DURABLE ? "CREDIT" : "SUBSCRIBE", ab_err_name(rc),
                         ab_client_last_error(r->c));
            return -1;
        }
    }
    if (b->o.mode != M_DURABLE)
        return 0;
    /* an earlier run's messages still waiting: taken and acknowledged before anything is sent */
    uint64_t start = bu_now_ns(), idle_since = start;
    long seen = b->stale;
    while (!bu_stopped()) {
        if (s_ab_pump(b, 20) != 0)
            return -1;
        uint64_t now = bu_now_ns();
        if (b->stale != seen) {
            seen = b->stale;
            idle_since = now;
        }
        if (now - idle_since > PREDRAIN_IDLE_MS * 1000000ull ||
            now - start > PREDRAIN_MAX_MS * 1000000ull)
            break;
    }
    if (b->stale)
        fprintf(stderr, "bench_flow: %ld messages of earlier runs taken from the mailbox first\n",
                b->stale);
    return 0;
}

/* Connects the publishers or senders, each with its window of slots. */
static int
s_ab_senders(bench_t *b)
{
    for (int i = 0; i < b->ntx; i++) {
        tx_t *t = &b->tx[i];
        t->slots = calloc((size_t)b->o.inflight, sizeof *t->slots);
        t->free_slots = calloc((size_t)b->o.inflight, sizeof *t->free_slots);
        if (!t->slots || !t->free_slots) {
            s_note_error(b, "out of memory");
            return -1;
        }
        for (int k = 0; k < b->o.inflight; k++) {
            t->slots[k] = (slot_t){t, k, 0};
            t->free_slots[b->o.inflight - 1 - k] = k;
        }
        t->nfree = b->o.inflight;
        t->c = s_connect(b, 0, "sender", i);
        if (!t->c)
            return -1;
    }
    return 0;
}

/* ---- Floor (raw libzmq) -------------------------------------------------------------------- */

/* The floor's sender thread: a PUSH that sends as fast as the high-water marks let it. */
static void *
s_pusher(void *arg)
{
    tx_t *t = arg;
    bench_t *b = t->b;
    void *s = zmq_socket(b->zctx, ZMQ_PUSH);
    int linger = 0, timeo = 100;
    if (s) {
        zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
        zmq_setsockopt(s, ZMQ_SNDTIMEO, &timeo, sizeof timeo);
    }
    if (!s || zmq_connect(s, b->o.push) != 0) {
        s_note_error(b, "floor: PUSH to %s: %s", b->o.push, zmq_strerror(errno));
        if (s)
            zmq_close(s);
        atomic_fetch_add(&b->failed, 1);
        atomic_fetch_sub(&b->running, 1);
        return NULL;
    }
    atomic_fetch_add(&b->ready, 1);
    while (!atomic_load(&b->go) && !atomic_load(&b->stop))
        s_nap(1000000);
    int pending = 0;
    while (!atomic_load(&b->stop)) {
        if (!pending) {
            if (atomic_load(&b->issued) >= atomic_load(&b->allowed)) {
                s_nap(NAP_NS);
                continue;
            }
            atomic_fetch_add(&b->issued, 1);
            s_stamp(t);
            pending = 1;
        }
        if (zmq_send(s, t->buf, b->o.size, 0) == (int)b->o.size) {
            pending = 0;
            atomic_fetch_add(&b->done, 1);
        } else if (errno != EAGAIN && errno != EINTR) {
            s_note_error(b, "floor: zmq_send: %s", zmq_strerror(errno));
            break;
        }
    }
    /* what zmq_send() took is counted as sent: it must still go out after the close */
    linger = 2000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(s);
    atomic_fetch_sub(&b->running, 1);
    return NULL;
}

static int
s_floor_receiver(bench_t *b)
{
    b->zctx = zmq_ctx_new();
    b->pull = b->zctx ? zmq_socket(b->zctx, ZMQ_PULL) : NULL;
    int linger = 0;
    if (b->pull)
        zmq_setsockopt(b->pull, ZMQ_LINGER, &linger, sizeof linger);
    if (!b->pull || zmq_connect(b->pull, b->o.pull) != 0) {
        s_note_error(b, "floor: PULL from %s: %s", b->o.pull, zmq_strerror(errno));
        return -1;
    }
    return 0;
}

/* Receives everything waiting on the PULL, then waits up to `wait_ms` if there was nothing. */
static int
s_floor_pump(bench_t *b, int wait_ms)
{
    int n = 0;
    for (; n < 4096; n++) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, b->pull, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            if (errno == EAGAIN || errno == EINTR)
                break;
            s_note_error(b, "floor: zmq_msg_recv: %s", zmq_strerror(errno));
            return -1;
        }
        s_receive(b, &b->rx[0], zmq_msg_data(&m), zmq_msg_size(&m), NULL);
        zmq_msg_close(&m);
    }
    if (n > 0 || wait_ms <= 0)
        return 0;
    zmq_pollitem_t item = {b->pull, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, wait_ms) < 0 && errno != EINTR) {
        s_note_error(b, "floor: zmq_poll: %s", zmq_strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- CPU time ------------------------------------------------------------------------------ */

typedef struct {
    double self, clients, servers;
} cpu_t;

static cpu_t
s_cpu_now(const opts_t *o)
{
    return (cpu_t){bu_cpu_self_us(), bu_cpu_pids_us(o->client_pids, o->nclient_pids),
                   bu_cpu_pids_us(o->server_pids, o->nserver_pids)};
}

/* µs per message between two samples; -1 when either is missing, 0 (not bu_cpu_per()'s -1) when
 * no message arrived. */
static double
s_per_msg(double a, double b, long msgs)
{
    return a < 0 || b < 0 ? -1 : msgs ? (b - a) / (double)msgs : 0;
}

/* ---- Driver -------------------------------------------------------------------------------- */

static void
s_usage(FILE *f)
{
    fprintf(
        f,
        "usage: bench_flow stream|fanout|durable --broker URI [--pki DIR] [options]\n"
        "       bench_flow floor-stream --push URI --pull URI [options]\n"
        "  stream        events: --publishers connections x --inflight ab_publish_async() -> 1\n"
        "                ephemeral subscriber\n"
        "  fanout        the same -> --subscribers ephemeral subscriber connections\n"
        "  durable       mailbox: --publishers connections x --inflight ab_send_async() -> 1\n"
        "                consumer (credit --credit, ACK each)\n"
        "  floor-stream  libzmq PUSH -> --push ... --pull -> PULL (floor_forwarder --stream)\n"
        "  --broker URI      tls://HOST:PORT (or tcp:// with --insecure-plain-identities)\n"
        "  --pki DIR         certs/pki.sh directory: ca/chain.pem, " SENDER_ID ".crt/.key\n"
        "                    (publishers, senders) and " RECEIVER_ID ".crt/.key (receivers)\n"
        "  --ca F --cert F --key F   instead of / over --pki: CA bundle, the sender's files\n"
        "  --recv-cert F --recv-key F  the receiver's files\n"
        "  --size B          payload bytes, >= %d (default 100)\n"
        "  --seconds S       measured window (default 3)\n"
        "  --warmup N        messages received before the window (default 1000)\n"
        "  --inflight N      unanswered PUBLISHes / SENDs per connection (default 256); floor:\n"
        "                    unused\n"
        "  --publishers P    publisher / sender connections, 1..%d (stream and fanout: default\n"
        "                    1; durable: 4)\n"
        "  --subscribers N   fanout: subscriber connections (default 10)\n"
        "  --credit C        durable: the consumer's credit (default 1024)\n"
        "  --max-backlog N   senders wait while N messages are unreceived (default: 64 MiB\n"
        "                    worth, at most %ld; 0: no bound)\n"
        "  --server-pid PID[,PID...]  report the CPU of these processes per message\n"
        "  --client-pid PID[,PID...]  count these processes' CPU as the client's (the floor's\n"
        "                    stunnel client)\n",
        HDR_LEN, MAX_PUBLISHERS, BACKLOG_MAX);
}

static int
s_parse_pids(const char *arg, const char *name, pid_t *pids, int *n)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", arg);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        long v;
        if (*n == MAX_PIDS) {
            fprintf(stderr, "bench_flow: %s takes at most %d processes\n", name, MAX_PIDS);
            return -1;
        }
        if (bu_parse_long(PROG, tok, name, 1, INT32_MAX, &v) != 0)
            return -1;
        pids[(*n)++] = (pid_t)v;
    }
    return 0;
}

static int
s_copy_path(char *dst, size_t cap, const char *src, const char *name)
{
    if (strlen(src) >= cap) {
        fprintf(stderr, "bench_flow: %s: the path is too long\n", name);
        return -1;
    }
    memcpy(dst, src, strlen(src) + 1);
    return 0;
}

static int
s_parse(int argc, char **argv, opts_t *o)
{
    enum {
        O_BROKER = 256,
        O_PUSH,
        O_PULL,
        O_SIZE,
        O_SECONDS,
        O_WARMUP,
        O_INFLIGHT,
        O_PUBLISHERS,
        O_SUBSCRIBERS,
        O_CREDIT,
        O_BACKLOG,
        O_PKI,
        O_CA,
        O_CERT,
        O_KEY,
        O_RCERT,
        O_RKEY,
        O_SERVER_PID,
        O_CLIENT_PID,
        O_HELP
    };
    static const struct option longopts[] = {
        {"broker", required_argument, NULL, O_BROKER},
        {"push", required_argument, NULL, O_PUSH},
        {"pull", required_argument, NULL, O_PULL},
        {"size", required_argument, NULL, O_SIZE},
        {"seconds", required_argument, NULL, O_SECONDS},
        {"warmup", required_argument, NULL, O_WARMUP},
        {"inflight", required_argument, NULL, O_INFLIGHT},
        {"publishers", required_argument, NULL, O_PUBLISHERS},
        {"subscribers", required_argument, NULL, O_SUBSCRIBERS},
        {"credit", required_argument, NULL, O_CREDIT},
        {"max-backlog", required_argument, NULL, O_BACKLOG},
        {"pki", required_argument, NULL, O_PKI},
        {"ca", required_argument, NULL, O_CA},
        {"cert", required_argument, NULL, O_CERT},
        {"key", required_argument, NULL, O_KEY},
        {"recv-cert", required_argument, NULL, O_RCERT},
        {"recv-key", required_argument, NULL, O_RKEY},
        {"server-pid", required_argument, NULL, O_SERVER_PID},
        {"client-pid", required_argument, NULL, O_CLIENT_PID},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0}};
    *o = (opts_t){.size = 100,
                  .seconds = 3,
                  .warmup = 1000,
                  .inflight = -1,
                  .publishers = -1,
                  .subscribers = -1,
                  .credit = 1024,
                  .max_backlog = -1};
    const char *ca = NULL, *cert = NULL, *key = NULL, *rcert = NULL, *rkey = NULL;
    long v;
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case O_BROKER:
            o->uri = optarg;
            break;
        case O_PUSH:
            o->push = optarg;
            break;
        case O_PULL:
            o->pull = optarg;
            break;
        case O_SIZE:
            if (bu_parse_long(PROG, optarg, "--size", HDR_LEN, MAX_SIZE, &v))
                return -1;
            o->size = (size_t)v;
            break;
        case O_SECONDS:
            if (bu_parse_seconds(PROG, optarg, &o->seconds))
                return -1;
            break;
        case O_WARMUP:
            if (bu_parse_long(PROG, optarg, "--warmup", 0, 100000000L, &o->warmup))
                return -1;
            break;
        case O_INFLIGHT:
            if (bu_parse_long(PROG, optarg, "--inflight", 1, MAX_INFLIGHT, &v))
                return -1;
            o->inflight = (int)v;
            break;
        case O_PUBLISHERS:
            if (bu_parse_long(PROG, optarg, "--publishers", 1, MAX_PUBLISHERS, &v))
                return -1;
            o->publishers = (int)v;
            break;
        case O_SUBSCRIBERS:
            if (bu_parse_long(PROG, optarg, "--subscribers", 1, MAX_SUBSCRIBERS, &v))
                return -1;
            o->subscribers = (int)v;
            break;
        case O_CREDIT:
            if (bu_parse_long(PROG, optarg, "--credit", 1, 1000000, &v))
                return -1;
            o->credit = (uint32_t)v;
            break;
        case O_BACKLOG:
            if (bu_parse_long(PROG, optarg, "--max-backlog", 0, 100000000L, &o->max_backlog))
                return -1;
            break;
        case O_PKI:
            o->pki = optarg;
            break;
        case O_CA:
            ca = optarg;
            break;
        case O_CERT:
            cert = optarg;
            break;
        case O_KEY:
            key = optarg;
            break;
        case O_RCERT:
            rcert = optarg;
            break;
        case O_RKEY:
            rkey = optarg;
            break;
        case O_SERVER_PID:
            if (s_parse_pids(optarg, "--server-pid", o->server_pids, &o->nserver_pids))
                return -1;
            break;
        case O_CLIENT_PID:
            if (s_parse_pids(optarg, "--client-pid", o->client_pids, &o->nclient_pids))
                return -1;
            break;
        case O_HELP:
            s_usage(stdout);
            exit(0);
        default: /* getopt_long has named the option */
            s_usage(stderr);
            return -1;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "bench_flow: %s\n",
                optind == argc ? "the mode is missing: stream, fanout, durable or floor-stream"
                               : "one mode only");
        s_usage(stderr);
        return -1;
    }
    const char *m = argv[optind];
    o->mode = strcmp(m, "stream") == 0         ? M_STREAM
              : strcmp(m, "fanout") == 0       ? M_FANOUT
              : strcmp(m, "durable") == 0      ? M_DURABLE
              : strcmp(m, "floor-stream") == 0 ? M_FLOOR
                                               : M_NONE;
    if (o->mode == M_NONE) {
        fprintf(stderr, "bench_flow: unknown mode '%s' (stream, fanout, durable, floor-stream)\n",
                m);
        return -1;
    }
    if (o->mode == M_FLOOR) {
        if (!o->push || !o->pull || o->uri) {
            fprintf(stderr, "bench_flow: floor-stream takes --push URI and --pull URI, no "
                            "--broker\n");
            return -1;
        }
    } else if (!o->uri || o->push || o->pull) {
        fprintf(stderr, "bench_flow: %s takes --broker URI, no --push/--pull\n", m);
        return -1;
    }
    if (o->subscribers > 0 && o->mode != M_FANOUT) {
        fprintf(stderr, "bench_flow: --subscribers is for fanout\n");
        return -1;
    }
    if (o->inflight < 0)
        o->inflight = 256;
    if (o->publishers < 0)
        o->publishers = o->mode == M_DURABLE ? 4 : 1;
    if (o->mode == M_FANOUT && o->subscribers < 0)
        o->subscribers = 10;
    if (o->mode == M_FLOOR)
        o->inflight = 0;
    if (o->max_backlog < 0) {
        long fit = (long)(BACKLOG_BYTES / o->size);
        o->max_backlog = fit < BACKLOG_MAX ? fit : BACKLOG_MAX;
        if (o->max_backlog < 64)
            o->max_backlog = 64;
    }
    if (o->mode != M_FLOOR && strncmp(o->uri, "tls://", 6) == 0) {
        char d[5][512] = {"", "", "", "", ""};
        if (o->pki) {
            snprintf(d[0], sizeof d[0], "%s/ca/chain.pem", o->pki);
            snprintf(d[1], sizeof d[1], "%s/%s.crt", o->pki, SENDER_ID);
            snprintf(d[2], sizeof d[2], "%s/%s.key", o->pki, SENDER_ID);
            snprintf(d[3], sizeof d[3], "%s/%s.crt", o->pki, RECEIVER_ID);
            snprintf(d[4], sizeof d[4], "%s/%s.key", o->pki, RECEIVER_ID);
        }
        const char *given[5] = {ca, cert, key, rcert, rkey};
        const char *names[5] = {"--ca", "--cert", "--key", "--recv-cert", "--recv-key"};
        char *dst[5] = {o->ca, o->cert, o->key, o->rcert, o->rkey};
        for (int i = 0; i < 5; i++) {
            const char *p = given[i] ? given[i] : d[i];
            if (!*p) {
                fprintf(stderr, "bench_flow: a tls:// broker needs %s (or --pki DIR)\n", names[i]);
                return -1;
            }
            if (s_copy_path(dst[i], sizeof o->ca, p, names[i]) != 0)
                return -1;
        }
    }
    return 0;
}

/* Starts the floor's sender thread and waits until it is connected. */
static int
s_start_threads(bench_t *b)
{
    for (int i = 0; i < b->ntx; i++) {
        atomic_fetch_add(&b->running, 1);
        if (pthread_create(&b->tx[i].th, NULL, s_pusher, &b->tx[i]) != 0) {
            atomic_fetch_sub(&b->running, 1);
            s_note_error(b, "pthread_create: %s", strerror(errno));
            return -1;
        }
        b->tx[i].started = 1;
    }
    uint64_t until = bu_now_ns() + (CONNECT_MS + 2000) * 1000000ull;
    while (atomic_load(&b->ready) + atomic_load(&b->failed) < b->ntx && bu_now_ns() < until &&
           !bu_stopped())
        s_nap(2000000);
    if (atomic_load(&b->ready) < b->ntx) {
        if (!atomic_load(&b->failed))
            s_note_error(b, "the senders did not connect within %d ms", CONNECT_MS + 2000);
        return -1;
    }
    return 0;
}

static void
s_join_threads(bench_t *b)
{
    atomic_store(&b->stop, 1);
    for (int i = 0; i < b->ntx; i++)
        if (b->tx[i].started) {
            pthread_join(b->tx[i].th, NULL);
            b->tx[i].started = 0;
        }
}

static void
s_teardown(bench_t *b)
{
    s_join_threads(b);
    for (int i = 0; i < b->nrx; i++)
        ab_client_destroy(&b->rx[i].c);
    for (int i = 0; i < b->ntx; i++)
        ab_client_destroy(&b->tx[i].c);
    if (b->pull)
        zmq_close(b->pull);
    if (b->zctx)
        zmq_ctx_term(b->zctx);
    b->pull = b->zctx = NULL;
}

/* Whether the drain is complete: everything sent has arrived (or, where loss is possible, nothing
 * more arrived for DRAIN_IDLE_MS). */
static int
s_drained(bench_t *b, uint64_t idle_ns)
{
    if (atomic_load(&b->running) > 0 || b->in_flight > 0)
        return 0;
    long done = atomic_load(&b->done);
    int all = 1;
    for (int i = 0; i < b->nrx; i++)
        all &= b->rx[i].got >= done;
    if (all)
        return 1;
    return b->o.mode != M_DURABLE && idle_ns > DRAIN_IDLE_MS * 1000000ull;
}

int
main(int argc, char **argv)
{
    static bench_t b; /* static: large arrays, zeroed */
    if (s_parse(argc, argv, &b.o) != 0)
        return 2;
    const opts_t *o = &b.o;

    bu_signals();
    bu_alarm_exit(PROG ": time limit reached (--seconds + 30 s); aborting\n");
    alarm((unsigned)ceil(o->seconds) + 30);

    pthread_mutex_init(&b.mu, NULL);
    b.tag = bu_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL) * 0x9e3779b97f4a7c15u;
    snprintf(b.topic, sizeof b.topic, "bench.flow.p%d", (int)getpid());
    b.nrx = o->mode == M_FANOUT ? o->subscribers : 1;
    b.ntx = o->mode == M_FLOOR ? 1 : o->publishers;
    b.backlog = o->max_backlog;
    atomic_store(&b.allowed, b.backlog ? b.backlog : LONG_MAX);
    b.tmpl = malloc(o->size);
    b.lat = malloc(LAT_CAP * sizeof *b.lat);
    b.acc_lat = o->mode != M_FLOOR ? malloc(LAT_CAP * sizeof *b.acc_lat) : NULL;
    if (!b.tmpl || !b.lat || (o->mode != M_FLOOR && !b.acc_lat)) {
        fprintf(stderr, "bench_flow: out of memory\n");
        return 1;
    }
    memset(b.lat, 0, LAT_CAP * sizeof *b.lat); /* fault the pages in before measuring */
    if (b.acc_lat)
        memset(b.acc_lat, 0, LAT_CAP * sizeof *b.acc_lat);
    bu_fill_pattern(b.tmpl, o->size);
    for (int i = 0; i < b.nrx; i++)
        b.rx[i] = (rx_t){.b = &b, .idx = i};
    for (int i = 0; i < b.ntx; i++) {
        b.tx[i] = (tx_t){.b = &b, .idx = i, .buf = malloc(o->size)};
        if (!b.tx[i].buf) {
            fprintf(stderr, "bench_flow: out of memory\n");
            return 1;
        }
        memcpy(b.tx[i].buf, b.tmpl, o->size);
    }

    /* receivers first: an ephemeral subscription sees only what is published after it */
    int (*pump)(bench_t *, int) = o->mode == M_FLOOR ? s_floor_pump : s_ab_pump;
    int rc = o->mode == M_FLOOR ? s_floor_receiver(&b) : s_ab_receivers(&b);
    if (rc == 0)
        rc = o->mode == M_FLOOR ? s_start_threads(&b) : s_ab_senders(&b);
    long stale_before = b.stale;

    /* warm-up, window, drain: all timed at the receivers */
    enum { P_WARMUP, P_WINDOW, P_DRAIN } phase = P_WARMUP;
    uint64_t start = bu_now_ns(), t0 = start, t1 = start, last_ns = start;
    long last_got = 0, got0 = 0, got1 = 0, done0 = 0, done1 = 0;
    cpu_t c0 = {0}, c1 = {0};
    const char *fault = NULL;
    atomic_store(&b.go, 1);
    while (rc == 0) {
        uint64_t now = bu_now_ns();
        if (b.got_total != last_got) {
            last_got = b.got_total;
            last_ns = now;
        }
        if (phase == P_WARMUP && b.got_total >= o->warmup) {
            phase = P_WINDOW;
            c0 = s_cpu_now(o);
            t0 = bu_now_ns();
            got0 = b.got_total;
            done0 = atomic_load(&b.done);
            b.record = 1;
        } else if (phase == P_WARMUP && now - start > WARMUP_MAX_MS * 1000000ull) {
            s_note_error(&b, "warm-up: %ld of %ld messages arrived in %d ms (%ld sent)",
                         b.got_total, o->warmup, WARMUP_MAX_MS, atomic_load(&b.done));
            break;
        }
        if (phase == P_WINDOW && now >= t0 + (uint64_t)(o->seconds * 1e9)) {
            t1 = now;
            got1 = b.got_total;
            done1 = atomic_load(&b.done);
            c1 = s_cpu_now(o);
            b.record = 0;
            phase = P_DRAIN;
            atomic_store(&b.stop, 1);
            last_ns = now;
        }
        if (phase == P_DRAIN) {
            if (s_drained(&b, now - last_ns))
                break;
            if (now - t1 > DRAIN_MAX_MS * 1000000ull) {
                fault = "the drain time ended before every message sent had arrived";
                break;
            }
        } else if (now - last_ns > STALL_MS * 1000000ull) {
            s_note_error(&b, "no message arrived for %d ms (%ld sent, %ld received)", STALL_MS,
                         atomic_load(&b.done), b.got_total);
            break;
        }
        if (bu_stopped()) {
            s_note_error(&b, "interrupted by a signal");
            break;
        }
        if (atomic_load(&b.errors) > 0 && phase != P_DRAIN)
            break; /* a failed sender or a bad message: stop now, report below */
        s_update_allowed(&b);
        int wait = POLL_MS;
        if (phase == P_WINDOW) {
            uint64_t end = t0 + (uint64_t)(o->seconds * 1e9);
            uint64_t left = end > now ? (end - now) / 1000000u + 1 : 0;
            if (left < (uint64_t)wait)
                wait = (int)left;
        }
        rc = pump(&b, wait);
    }
    s_teardown(&b);

    long errors = atomic_load(&b.errors);
    if (phase != P_DRAIN || rc != 0) {
        pthread_mutex_lock(&b.mu);
        fprintf(stderr, "bench_flow: %s: %s\n", s_mode_name(o->mode),
                b.first_error[0] ? b.first_error : "failed");
        pthread_mutex_unlock(&b.mu);
        return 1;
    }
    long msgs = got1 - got0, sent = done1 - done0;
    long done_all = atomic_load(&b.done);
    long lost = 0, gaps = 0;
    for (int i = 0; i < b.nrx; i++) {
        lost += done_all - b.rx[i].got;
        gaps += b.rx[i].gaps;
    }
    double secs = (double)(t1 - t0) / 1e9;
    bu_sort_u64(b.lat, b.nlat);
    if (b.acc_lat)
        bu_sort_u64(b.acc_lat, b.nacc);
    double cpu_client = c0.clients < 0 || c1.clients < 0
                            ? -1
                            : s_per_msg(c0.self + c0.clients, c1.self + c1.clients, msgs);
    double cpu_server = o->nserver_pids ? s_per_msg(c0.servers, c1.servers, msgs) : 0;
    if (cpu_client < 0 || cpu_server < 0)
        fprintf(stderr, "bench_flow: a --client-pid or --server-pid process could not be read\n");

    bu_print_result(&(bu_result_t){.system = o->mode == M_FLOOR ? "floor" : "amtsbote",
                                   .scenario = o->mode == M_FLOOR ? "stream" : s_mode_name(o->mode),
                                   .size = o->size,
                                   .inflight = o->inflight,
                                   .msgs = msgs,
                                   .seconds = secs,
                                   .lat = b.lat,
                                   .nlat = b.nlat,
                                   .errors = errors,
                                   .sent = sent,
                                   .cpu_client_us = cpu_client,
                                   .cpu_server_us = cpu_server});
    printf(" lost=%ld stale=%ld max_backlog=%ld", lost, b.stale, b.backlog);
    switch (o->mode) {
    case M_STREAM:
    case M_FANOUT:
        printf(" publishers=%d subscribers=%d stored=0 published_per_s=%.0f gaps=%ld "
               "publish_p50_us=%.1f publish_p99_us=%.1f",
               b.ntx, b.nrx, bu_rate((double)sent, secs), gaps, bu_pct_us(b.acc_lat, b.nacc, 0.50),
               bu_pct_us(b.acc_lat, b.nacc, 0.99));
        if (o->mode == M_FANOUT)
            printf(" deliveries=%ld", msgs);
        break;
    case M_DURABLE:
        printf(" publishers=%d subscribers=1 credit=%u in_flight_total=%d accepted_per_s=%.0f "
               "accept_p50_us=%.1f accept_p99_us=%.1f",
               b.ntx, o->credit, b.ntx * o->inflight, bu_rate((double)sent, secs),
               bu_pct_us(b.acc_lat, b.nacc, 0.50), bu_pct_us(b.acc_lat, b.nacc, 0.99));
        break;
    default:
        break;
    }
    printf("\n");
    fflush(stdout);
    if (b.stale > stale_before)
        fprintf(stderr, "bench_flow: %ld messages of earlier runs arrived during this one\n",
                b.stale - stale_before);
    if (lost > 0)
        fprintf(stderr, "bench_flow: %ld messages sent were never received%s\n", lost,
                o->mode == M_DURABLE || o->mode == M_FLOOR ? "" : " (ephemeral: at most once)");
    if (fault)
        fprintf(stderr, "bench_flow: %s\n", fault);
    if (errors > 0) {
        pthread_mutex_lock(&b.mu);
        fprintf(stderr, "bench_flow: %ld errors; first: %s\n", errors, b.first_error);
        pthread_mutex_unlock(&b.mu);
    }
    int bad_loss = lost > 0 && (o->mode == M_DURABLE || o->mode == M_FLOOR);
    return errors == 0 && !bad_loss && !fault && msgs > 0 ? 0 : 1;
}
