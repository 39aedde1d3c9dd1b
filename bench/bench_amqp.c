/*
 * bench_amqp.c - load generator for RabbitMQ (AMQP 0-9-1 over mutual TLS), the peer of
 * Amtsbote's durable mailbox scenario.
 *
 *   bench_amqp durable --port PORT --ca F --cert F --key F [options]
 *
 * durable: a durable classic queue "bench.durable" (declared, then purged), --publishers
 * connections that each keep --inflight persistent messages (delivery_mode 2) unconfirmed in
 * confirm mode (confirm.select; the window is released by the broker's basic.ack, single or
 * multiple; a basic.nack is an error), and one consumer connection with basic.qos prefetch
 * --prefetch and manual acks. By default the consumer acks every message on its own
 * (multiple=false), as Amtsbote's consumer does; --ack-every K acks with multiple=true once every
 * K messages instead. Every connection is TLS with a client certificate, the server's certificate
 * verified against --ca and its IP address (127.0.0.1) against the certificate's SAN.
 *
 * What a confirm means on RabbitMQ 3.10 (bench/peers/rabbitmq.sh says more): a persistent
 * message in a durable classic queue is confirmed once the queue has fsync()ed it (or, at a
 * journal flush, once it was consumed and acked, when nothing of it needs to be kept); the queue
 * fsyncs when its mailbox runs empty or at the latest 200 ms after an unconfirmed message
 * arrived, and confirms everything the fsync covered at once.
 *
 * Messages are counted at the consumer: msgs= is what it received in the measured window (after
 * --warmup messages), sent= what the broker confirmed to the publishers in the same window. Each
 * payload carries its publisher's index and a per-publisher sequence number in its first 8 bytes
 * and, from 16 bytes on, the publish time (CLOCK_MONOTONIC ns) in the next 8; the rest is a fixed
 * pattern. The consumer checks the length, the pattern and that every publisher's sequence
 * arrives complete and in order. p50/p99/p999_us are publish-to-delivery latencies of the
 * messages received in the window (0 below 16 bytes); confirm_p50/p99/p999_us are
 * publish-to-confirm latencies of the messages confirmed in the window (lat_samples= and
 * confirm_samples= say how many were kept). After the window the publishers stop, wait
 * for their outstanding confirms, and the consumer drains the queue: a confirmed message that is
 * never delivered counts as lost. backlog= is how many confirmed messages were still undelivered
 * when the window closed (negative: the consumer had received that many more than were
 * confirmed; a delivery need not wait for the fsync, the confirm does).
 *
 * Threads: one per publisher connection; the consumer runs in the main thread. Every connection
 * is set up by the main thread before the publisher threads start, and torn down after they end.
 * Output: one result line on stdout; diagnostics on stderr. Exit 0 only for a valid run, 1 when
 * the run failed or a message was wrong or lost, 2 for bad options.
 */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "bench_util.h"

#define PROG "bench_amqp"
#define QUEUE "bench.durable"
#define CHANNEL 1
#define STAMP_LEN 8
#define TIME_LEN 8
#define MAX_SIZE (1024 * 1024)
#define MAX_PUBLISHERS 64
#define MAX_INFLIGHT 65536
#define CONNECT_TIMEOUT_S 5
/* The warm-up ends after --warmup messages or fails after this long. */
#define WARMUP_MAX_S 10
/* How long publishers wait for outstanding confirms, and the consumer for the rest. */
#define DRAIN_S 8
/* Longest single wait for a frame, so that stop flags are seen promptly. */
#define WAIT_CAP_US 100000
/* Latency samples kept per second of window (more are not recorded; lat_samples= says). */
#define LAT_PER_S 250000L
#define LAT_MAX 8000000L

typedef struct {
    const char *host;
    int port;
    const char *ca, *cert, *key;
    const char *user, *password;
    size_t size;
    double seconds;
    long warmup;
    int inflight;
    int publishers;
    int prefetch;
    int ack_every;
    pid_t server_pid;
} opts_t;

typedef struct bench bench_t;

/* One publisher connection; only its thread touches it between start and join. */
typedef struct {
    bench_t *b;
    uint32_t idx;
    amqp_connection_state_t conn;
    unsigned char *body;
    uint8_t *pending;  /* by delivery tag % inflight: 1 while unconfirmed */
    uint64_t *sent_at; /* by delivery tag % inflight: publish time, ns */
    uint64_t *clat;    /* confirm latencies (ns) of messages confirmed in the window */
    long nclat, clat_cap, clat_dropped;
    uint64_t next_tag;      /* the delivery tag of the next publish (confirm mode counts from 1) */
    uint64_t oldest;        /* no tag below this is unconfirmed */
    int outstanding;        /* unconfirmed messages */
    uint32_t seq;           /* last sequence number published */
    atomic_ulong confirmed; /* read by the consumer thread */
    long nacks;
    int failed;
    atomic_int finished; /* set when the thread ends; seq and failed are final then */
} pub_t;

struct bench {
    opts_t o;
    pub_t pubs[MAX_PUBLISHERS];
    pthread_t threads[MAX_PUBLISHERS];
    amqp_connection_state_t cons;
    unsigned char *tmpl;               /* the fixed part of every payload */
    uint32_t next_seq[MAX_PUBLISHERS]; /* the sequence number each publisher is due to deliver */
    uint64_t *lat;
    long nlat, lat_cap, lat_dropped;
    atomic_int stop;
    atomic_int record; /* the window is open: publishers keep confirm latencies */
    atomic_long errors;
    pthread_mutex_t err_lock;
    char first_error[256];
};

/* Counts an error (from any thread) and keeps the text of the first one for the report. */
static void
s_error(bench_t *b, const char *fmt, ...)
{
    atomic_fetch_add(&b->errors, 1);
    pthread_mutex_lock(&b->err_lock);
    if (!b->first_error[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(b->first_error, sizeof b->first_error, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&b->err_lock);
}

/* Text for a failed RPC reply; points into a static buffer or into the reply. */
static const char *
s_reply_text(amqp_rpc_reply_t r)
{
    static _Thread_local char buf[300];
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return "ok";
    case AMQP_RESPONSE_NONE:
        return "no reply";
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        return amqp_error_string2(r.library_error);
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD || r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            const amqp_bytes_t *t = r.reply.id == AMQP_CONNECTION_CLOSE_METHOD
                                        ? &((amqp_connection_close_t *)r.reply.decoded)->reply_text
                                        : &((amqp_channel_close_t *)r.reply.decoded)->reply_text;
            snprintf(buf, sizeof buf, "closed by the server: %.*s", (int)t->len,
                     (const char *)t->bytes);
            return buf;
        }
        snprintf(buf, sizeof buf, "server exception, method 0x%08x", (unsigned)r.reply.id);
        return buf;
    }
    return "unknown reply";
}

/* ---- Connections -------------------------------------------------------------------------- */

/*
 * Opens a TLS connection with the client certificate, logs in as --user and opens CHANNEL.
 * Returns the connection, or NULL after saying on stderr what failed (`who` names it).
 */
static amqp_connection_state_t
s_connect(const opts_t *o, const char *who)
{
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = c ? amqp_ssl_socket_new(c) : NULL;
    if (!s) {
        fprintf(stderr, "bench_amqp: %s: cannot create a TLS socket\n", who);
        if (c)
            amqp_destroy_connection(c);
        return NULL;
    }
    amqp_ssl_socket_set_verify_peer(s, 1);
    /*
     * librabbitmq 0.11 checks the host name only against DNS names in the certificate, and we
     * connect to an IP address (loopback only, never "localhost", which may resolve to ::1).
     * So OpenSSL checks the address against the certificate's IP SAN instead, within the chain
     * verification whose result librabbitmq checks (verify_peer).
     */
    amqp_ssl_socket_set_verify_hostname(s, 0);
    SSL_CTX *ctx = amqp_ssl_socket_get_context(s);
    if (!ctx || X509_VERIFY_PARAM_set1_ip_asc(SSL_CTX_get0_param(ctx), o->host) != 1) {
        fprintf(stderr, "bench_amqp: %s: --host must be an IP address, not '%s'\n", who, o->host);
        amqp_destroy_connection(c);
        return NULL;
    }
    int rc = amqp_ssl_socket_set_cacert(s, o->ca);
    if (rc != AMQP_STATUS_OK) {
        fprintf(stderr, "bench_amqp: %s: CA bundle %s: %s\n", who, o->ca, amqp_error_string2(rc));
        amqp_destroy_connection(c);
        return NULL;
    }
    rc = amqp_ssl_socket_set_key(s, o->cert, o->key);
    if (rc != AMQP_STATUS_OK) {
        fprintf(stderr, "bench_amqp: %s: client certificate %s / key %s: %s\n", who, o->cert,
                o->key, amqp_error_string2(rc));
        amqp_destroy_connection(c);
        return NULL;
    }
    struct timeval tv = {CONNECT_TIMEOUT_S, 0};
    rc = amqp_socket_open_noblock(s, o->host, o->port, &tv);
    if (rc != AMQP_STATUS_OK) {
        fprintf(stderr, "bench_amqp: %s: rabbitmq: %s at %s:%d\n", who, amqp_error_string2(rc),
                o->host, o->port);
        amqp_destroy_connection(c);
        return NULL;
    }
    /* heartbeat 0: no heartbeats, so a thread busy elsewhere never misses one */
    amqp_rpc_reply_t r =
        amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, o->user, o->password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        /* With TLS 1.3 a rejected client certificate surfaces here, after the handshake. */
        int tls = r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                  r.library_error == AMQP_STATUS_SSL_ERROR;
        fprintf(stderr, "bench_amqp: %s: login as %s at %s:%d: %s%s\n", who, o->user, o->host,
                o->port, s_reply_text(r),
                tls ? " (did the server reject the client certificate?)" : "");
        amqp_destroy_connection(c);
        return NULL;
    }
    amqp_channel_open(c, CHANNEL);
    r = amqp_get_rpc_reply(c);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        fprintf(stderr, "bench_amqp: %s: channel.open: %s\n", who, s_reply_text(r));
        amqp_connection_close(c, AMQP_REPLY_SUCCESS);
        amqp_destroy_connection(c);
        return NULL;
    }
    return c;
}

/* Closes the channel and the connection politely, then frees it; accepts NULL. */
static void
s_close(amqp_connection_state_t *c)
{
    if (!*c)
        return;
    amqp_channel_close(*c, CHANNEL, AMQP_REPLY_SUCCESS);
    amqp_connection_close(*c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(*c);
    *c = NULL;
}

/* Reports a failed RPC on `c` as `what`; returns 0 when it succeeded, -1 otherwise. */
static int
s_rpc_ok(amqp_connection_state_t c, const char *what)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 0;
    fprintf(stderr, "bench_amqp: %s: %s\n", what, s_reply_text(r));
    return -1;
}

/* ---- Publishers --------------------------------------------------------------------------- */

/*
 * Releases the window slots of delivery tag `tag`, or with `multiple` of every outstanding tag up
 * to it. Returns how many were released.
 */
static unsigned long
s_pub_release(pub_t *p, uint64_t tag, int multiple)
{
    int n = p->b->o.inflight;
    unsigned long done = 0;
    if (tag < p->oldest || tag >= p->next_tag) {
        if (!multiple)
            s_error(p->b, "publisher %u: confirm for delivery tag %llu, none such outstanding",
                    p->idx, (unsigned long long)tag);
        return 0;
    }
    uint64_t from = multiple ? p->oldest : tag;
    int record = atomic_load_explicit(&p->b->record, memory_order_relaxed);
    uint64_t now = record ? bu_now_ns() : 0;
    for (uint64_t t = from; t <= tag; t++) {
        if (p->pending[t % (uint64_t)n]) {
            p->pending[t % (uint64_t)n] = 0;
            done++;
            if (!record)
                continue;
            if (p->nclat < p->clat_cap)
                p->clat[p->nclat++] = now - p->sent_at[t % (uint64_t)n];
            else
                p->clat_dropped++;
        }
    }
    while (p->oldest < p->next_tag && !p->pending[p->oldest % (uint64_t)n])
        p->oldest++;
    p->outstanding -= (int)done;
    return done;
}

/* Handles one frame on a publisher connection. Returns 0, or -1 when the connection is lost. */
static int
s_pub_frame(pub_t *p, const amqp_frame_t *f)
{
    if (f->frame_type != AMQP_FRAME_METHOD)
        return 0;
    switch (f->payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
        const amqp_basic_ack_t *a = f->payload.method.decoded;
        atomic_fetch_add_explicit(&p->confirmed, s_pub_release(p, a->delivery_tag, a->multiple),
                                  memory_order_relaxed);
        return 0;
    }
    case AMQP_BASIC_NACK_METHOD: {
        /* The broker could not take the message(s); they count as errors, not as confirmed. */
        const amqp_basic_nack_t *a = f->payload.method.decoded;
        unsigned long n = s_pub_release(p, a->delivery_tag, a->multiple);
        p->nacks += (long)n;
        s_error(p->b, "publisher %u: the broker nacked %lu message(s) up to delivery tag %llu",
                p->idx, n, (unsigned long long)a->delivery_tag);
        return 0;
    }
    case AMQP_CHANNEL_CLOSE_METHOD:
    case AMQP_CONNECTION_CLOSE_METHOD: {
        amqp_rpc_reply_t r = {.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION,
                              .reply = f->payload.method};
        s_error(p->b, "publisher %u: %s", p->idx, s_reply_text(r));
        return -1;
    }
    default:
        return 0;
    }
}

/*
 * Waits up to `timeout_us` for a frame, then handles it and every frame already received.
 * Returns 0, or -1 when the connection failed.
 */
static int
s_pub_read(pub_t *p, long timeout_us)
{
    struct timeval tv = {0, timeout_us};
    for (;;) {
        amqp_frame_t f;
        int rc = amqp_simple_wait_frame_noblock(p->conn, &f, &tv);
        if (rc == AMQP_STATUS_TIMEOUT)
            break;
        if (rc != AMQP_STATUS_OK) {
            s_error(p->b, "publisher %u: %s", p->idx, amqp_error_string2(rc));
            return -1;
        }
        if (s_pub_frame(p, &f) != 0)
            return -1;
        tv = (struct timeval){0, 0}; /* the rest only if it is already here */
    }
    amqp_maybe_release_buffers(p->conn);
    return 0;
}

static void
s_publish_loop(pub_t *p)
{
    bench_t *b = p->b;
    const opts_t *o = &b->o;
    amqp_basic_properties_t props = {._flags = AMQP_BASIC_DELIVERY_MODE_FLAG,
                                     .delivery_mode = AMQP_DELIVERY_PERSISTENT};
    amqp_bytes_t body = {o->size, p->body};
    while (!atomic_load_explicit(&b->stop, memory_order_relaxed)) {
        while (p->outstanding < o->inflight &&
               !atomic_load_explicit(&b->stop, memory_order_relaxed)) {
            uint32_t seq = ++p->seq;
            uint64_t t = bu_now_ns();
            memcpy(p->body + 4, &seq, 4);
            if (o->size >= STAMP_LEN + TIME_LEN)
                memcpy(p->body + STAMP_LEN, &t, TIME_LEN);
            int rc = amqp_basic_publish(p->conn, CHANNEL, amqp_empty_bytes,
                                        amqp_cstring_bytes(QUEUE), 0, 0, &props, body);
            if (rc != AMQP_STATUS_OK) {
                s_error(b, "publisher %u: basic.publish: %s", p->idx, amqp_error_string2(rc));
                p->failed = 1;
                return;
            }
            p->pending[p->next_tag % (uint64_t)o->inflight] = 1;
            p->sent_at[p->next_tag % (uint64_t)o->inflight] = t;
            p->next_tag++;
            p->outstanding++;
        }
        if (s_pub_read(p, WAIT_CAP_US) != 0) {
            p->failed = 1;
            return;
        }
    }
    uint64_t until = bu_now_ns() + (uint64_t)DRAIN_S * 1000000000u;
    while (p->outstanding > 0 && bu_now_ns() < until)
        if (s_pub_read(p, WAIT_CAP_US) != 0) {
            p->failed = 1;
            return;
        }
    if (p->outstanding > 0)
        s_error(b, "publisher %u: %d messages not confirmed within %d s", p->idx, p->outstanding,
                DRAIN_S);
}

static void *
s_publisher(void *arg)
{
    pub_t *p = arg;
    s_publish_loop(p);
    atomic_store_explicit(&p->finished, 1, memory_order_release);
    return NULL;
}

/* Connects publisher `i` and puts its channel in confirm mode. Returns 0 or -1. */
static int
s_pub_setup(bench_t *b, uint32_t i)
{
    pub_t *p = &b->pubs[i];
    char who[32];
    snprintf(who, sizeof who, "publisher %u", i);
    p->b = b;
    p->idx = i;
    p->next_tag = 1;
    p->oldest = 1;
    p->body = malloc(b->o.size);
    p->pending = calloc((size_t)b->o.inflight, 1);
    p->sent_at = calloc((size_t)b->o.inflight, sizeof *p->sent_at);
    /* twice a fair share of the window's samples; calloc faults the pages in before the window */
    p->clat_cap = 2 * b->lat_cap / b->o.publishers + 1;
    p->clat = calloc((size_t)p->clat_cap, sizeof *p->clat);
    if (!p->body || !p->pending || !p->sent_at || !p->clat) {
        fprintf(stderr, "bench_amqp: out of memory\n");
        return -1;
    }
    memset(p->clat, 0, (size_t)p->clat_cap * sizeof *p->clat);
    memcpy(p->body, b->tmpl, b->o.size);
    memcpy(p->body, &i, 4);
    p->conn = s_connect(&b->o, who);
    if (!p->conn)
        return -1;
    amqp_confirm_select(p->conn, CHANNEL);
    return s_rpc_ok(p->conn, "confirm.select");
}

static unsigned long
s_confirmed_total(bench_t *b)
{
    unsigned long n = 0;
    for (int i = 0; i < b->o.publishers; i++)
        n += atomic_load_explicit(&b->pubs[i].confirmed, memory_order_relaxed);
    return n;
}

/* ---- Consumer ----------------------------------------------------------------------------- */

/* Declares and purges the queue, sets the prefetch and starts consuming. Returns 0 or -1. */
static int
s_cons_setup(bench_t *b)
{
    b->cons = s_connect(&b->o, "consumer");
    if (!b->cons)
        return -1;
    amqp_queue_declare(b->cons, CHANNEL, amqp_cstring_bytes(QUEUE), 0, 1, 0, 0, amqp_empty_table);
    if (s_rpc_ok(b->cons, "queue.declare " QUEUE) != 0)
        return -1;
    amqp_queue_purge(b->cons, CHANNEL, amqp_cstring_bytes(QUEUE));
    if (s_rpc_ok(b->cons, "queue.purge " QUEUE) != 0)
        return -1;
    amqp_basic_qos(b->cons, CHANNEL, 0, (uint16_t)b->o.prefetch, 0);
    if (s_rpc_ok(b->cons, "basic.qos") != 0)
        return -1;
    amqp_basic_consume(b->cons, CHANNEL, amqp_cstring_bytes(QUEUE), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    return s_rpc_ok(b->cons, "basic.consume " QUEUE);
}

typedef struct {
    long received; /* in the current phase */
    long total;    /* since the start */
    long unacked;  /* received but not yet acked (with --ack-every) */
    uint64_t last_tag;
    int record; /* keep latencies */
} cons_state_t;

/* Checks one delivered payload and records its latency. */
static void
s_cons_check(bench_t *b, cons_state_t *cs, const amqp_bytes_t *m, uint64_t now)
{
    const opts_t *o = &b->o;
    const unsigned char *d = m->bytes;
    if (m->len != o->size) {
        s_error(b, "message of %zu bytes, expected %zu", m->len, o->size);
        return;
    }
    uint32_t pi, seq;
    memcpy(&pi, d, 4);
    memcpy(&seq, d + 4, 4);
    if (pi >= (uint32_t)o->publishers) {
        s_error(b, "message stamped with publisher %u of %d", pi, o->publishers);
        return;
    }
    if (seq != b->next_seq[pi]) {
        s_error(b,
                "publisher %u: message %u arrived where %u was due (lost, duplicated or "
                "reordered)",
                pi, seq, b->next_seq[pi]);
        if (seq > b->next_seq[pi])
            b->next_seq[pi] = seq + 1;
        return;
    }
    b->next_seq[pi]++;
    size_t fixed = o->size >= STAMP_LEN + TIME_LEN ? STAMP_LEN + TIME_LEN : STAMP_LEN;
    if (memcmp(d + fixed, b->tmpl + fixed, o->size - fixed) != 0) {
        s_error(b, "publisher %u: message %u has a corrupted payload", pi, seq);
        return;
    }
    if (cs->record && fixed > STAMP_LEN) {
        uint64_t t;
        memcpy(&t, d + STAMP_LEN, TIME_LEN);
        if (b->nlat < b->lat_cap)
            b->lat[b->nlat++] = now - t;
        else
            b->lat_dropped++;
    }
}

/*
 * Receives and acks messages until `end_ns`, or until `until_count` messages arrived in this
 * phase (when >= 0), or until `done()` says so. Returns 0, or -1 when the connection failed.
 */
static int
s_cons_phase(bench_t *b, cons_state_t *cs, uint64_t end_ns, long until_count,
             int (*done)(bench_t *, cons_state_t *))
{
    const opts_t *o = &b->o;
    for (;;) {
        uint64_t now = bu_now_ns();
        if (now >= end_ns || (until_count >= 0 && cs->received >= until_count) ||
            (done && done(b, cs)))
            return 0;
        uint64_t left_us = (end_ns - now) / 1000u + 1;
        struct timeval tv = {0, left_us < WAIT_CAP_US ? (long)left_us : WAIT_CAP_US};
        amqp_envelope_t env;
        amqp_maybe_release_buffers(b->cons);
        amqp_rpc_reply_t r = amqp_consume_message(b->cons, &env, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT)
            continue;
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            amqp_frame_t f;
            if (amqp_simple_wait_frame(b->cons, &f) != AMQP_STATUS_OK) {
                s_error(b, "consumer: connection lost");
                return -1;
            }
            if (f.frame_type == AMQP_FRAME_METHOD &&
                (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                 f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD ||
                 f.payload.method.id == AMQP_BASIC_CANCEL_METHOD)) {
                amqp_rpc_reply_t x = {.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION,
                                      .reply = f.payload.method};
                s_error(b, "consumer: %s",
                        f.payload.method.id == AMQP_BASIC_CANCEL_METHOD
                            ? "the server cancelled the consumer"
                            : s_reply_text(x));
                return -1;
            }
            continue;
        }
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            s_error(b, "consumer: %s", s_reply_text(r));
            return -1;
        }
        now = bu_now_ns();
        s_cons_check(b, cs, &env.message.body, now);
        cs->received++;
        cs->total++;
        cs->unacked++;
        cs->last_tag = env.delivery_tag;
        amqp_destroy_envelope(&env);
        if (cs->unacked >= o->ack_every) {
            int rc = amqp_basic_ack(b->cons, CHANNEL, cs->last_tag, o->ack_every > 1);
            if (rc != AMQP_STATUS_OK) {
                s_error(b, "consumer: basic.ack: %s", amqp_error_string2(rc));
                return -1;
            }
            cs->unacked = 0;
        }
    }
}

/*
 * The drain is over when every publisher has finished and everything it published has arrived
 * (a publisher whose connection failed has reported that already; what it sent is not awaited).
 */
static int
s_drained(bench_t *b, cons_state_t *cs)
{
    (void)cs;
    for (int i = 0; i < b->o.publishers; i++) {
        pub_t *p = &b->pubs[i];
        if (!atomic_load_explicit(&p->finished, memory_order_acquire))
            return 0;
        if (!p->failed && b->next_seq[i] <= p->seq)
            return 0;
    }
    return 1;
}

/* ---- Driver ------------------------------------------------------------------------------- */

static void
s_usage(FILE *f)
{
    fprintf(f,
            "usage: bench_amqp durable --port PORT --ca FILE --cert FILE --key FILE [options]\n"
            "  --host IP         broker address (default 127.0.0.1)\n"
            "  --port PORT       broker AMQPS port\n"
            "  --ca F --cert F --key F   CA bundle, client certificate and its key\n"
            "  --user U --password P     login, PLAIN inside TLS (default guest/guest)\n"
            "  --size B          payload bytes, >= %d (default 100)\n"
            "  --seconds S       measured window (default 3)\n"
            "  --warmup N        messages received before the window (default 2000)\n"
            "  --inflight N      unconfirmed messages per publisher (default 256)\n"
            "  --publishers P    publisher connections (default 4)\n"
            "  --prefetch N      consumer basic.qos prefetch (default 1024)\n"
            "  --ack-every K     consumer acks every K-th message with multiple=true\n"
            "                    (default 1: every message on its own)\n"
            "  --server-pid PID  report the broker's CPU time per message\n",
            STAMP_LEN);
}

static int
s_parse(int argc, char **argv, opts_t *o)
{
    static const struct option longopts[] = {{"host", required_argument, NULL, 'H'},
                                             {"port", required_argument, NULL, 'p'},
                                             {"ca", required_argument, NULL, 'C'},
                                             {"cert", required_argument, NULL, 'c'},
                                             {"key", required_argument, NULL, 'k'},
                                             {"user", required_argument, NULL, 'u'},
                                             {"password", required_argument, NULL, 'P'},
                                             {"size", required_argument, NULL, 's'},
                                             {"seconds", required_argument, NULL, 'S'},
                                             {"warmup", required_argument, NULL, 'w'},
                                             {"inflight", required_argument, NULL, 'n'},
                                             {"publishers", required_argument, NULL, 'N'},
                                             {"prefetch", required_argument, NULL, 'q'},
                                             {"ack-every", required_argument, NULL, 'a'},
                                             {"server-pid", required_argument, NULL, 'x'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    *o = (opts_t){.host = "127.0.0.1",
                  .user = "guest",
                  .password = "guest",
                  .size = 100,
                  .seconds = 3,
                  .warmup = 2000,
                  .inflight = 256,
                  .publishers = 4,
                  .prefetch = 1024,
                  .ack_every = 1};
    int ch;
    long v;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'H':
            o->host = optarg;
            break;
        case 'p':
            if (bu_parse_long(PROG, optarg, "--port", 1, 65535, &v))
                return -1;
            o->port = (int)v;
            break;
        case 'C':
            o->ca = optarg;
            break;
        case 'c':
            o->cert = optarg;
            break;
        case 'k':
            o->key = optarg;
            break;
        case 'u':
            o->user = optarg;
            break;
        case 'P':
            o->password = optarg;
            break;
        case 's':
            if (bu_parse_long(PROG, optarg, "--size", STAMP_LEN, MAX_SIZE, &v))
                return -1;
            o->size = (size_t)v;
            break;
        case 'S':
            if (bu_parse_seconds(PROG, optarg, &o->seconds))
                return -1;
            break;
        case 'w':
            if (bu_parse_long(PROG, optarg, "--warmup", 0, 10000000, &o->warmup))
                return -1;
            break;
        case 'n':
            if (bu_parse_long(PROG, optarg, "--inflight", 1, MAX_INFLIGHT, &v))
                return -1;
            o->inflight = (int)v;
            break;
        case 'N':
            if (bu_parse_long(PROG, optarg, "--publishers", 1, MAX_PUBLISHERS, &v))
                return -1;
            o->publishers = (int)v;
            break;
        case 'q':
            if (bu_parse_long(PROG, optarg, "--prefetch", 1, 65535, &v))
                return -1;
            o->prefetch = (int)v;
            break;
        case 'a':
            if (bu_parse_long(PROG, optarg, "--ack-every", 1, 65535, &v))
                return -1;
            o->ack_every = (int)v;
            break;
        case 'x':
            if (bu_parse_long(PROG, optarg, "--server-pid", 1, INT32_MAX, &v))
                return -1;
            o->server_pid = (pid_t)v;
            break;
        case 'h':
            s_usage(stdout);
            exit(0);
        default: /* getopt_long has named the option */
            s_usage(stderr);
            return -1;
        }
    }
    if (optind != argc - 1 || strcmp(argv[optind], "durable") != 0) {
        fprintf(stderr, "bench_amqp: the one scenario is 'durable'%s%s\n",
                optind < argc ? ", not " : "", optind < argc ? argv[optind] : "");
        s_usage(stderr);
        return -1;
    }
    if (!o->port || !o->ca || !o->cert || !o->key) {
        fprintf(stderr, "bench_amqp: --port, --ca, --cert and --key are required\n");
        return -1;
    }
    if (o->ack_every > o->prefetch) {
        fprintf(stderr, "bench_amqp: --ack-every must not exceed --prefetch (the broker would "
                        "stop delivering)\n");
        return -1;
    }
    return 0;
}

int
main(int argc, char **argv)
{
    static bench_t b; /* static: the publisher array is large and must start zeroed */
    if (s_parse(argc, argv, &b.o) != 0)
        return 2;
    const opts_t *o = &b.o;
    pthread_mutex_init(&b.err_lock, NULL);

    signal(SIGPIPE, SIG_IGN);
    bu_alarm_exit(PROG ": hard time limit reached; giving up\n");
    /* Hard bound on the whole run, whatever hangs: connect, warm-up, window, drain, close. */
    alarm((unsigned)o->seconds + 30);

    b.tmpl = malloc(o->size);
    b.lat_cap = (long)(o->seconds * LAT_PER_S) + 1;
    if (b.lat_cap > LAT_MAX)
        b.lat_cap = LAT_MAX;
    b.lat = malloc((size_t)b.lat_cap * sizeof *b.lat);
    if (!b.tmpl || !b.lat) {
        fprintf(stderr, "bench_amqp: out of memory\n");
        return 1;
    }
    memset(b.lat, 0, (size_t)b.lat_cap * sizeof *b.lat); /* fault the pages in before measuring */
    bu_fill_pattern(b.tmpl, o->size);
    for (int i = 0; i < o->publishers; i++)
        b.next_seq[i] = 1;

    int rc = s_cons_setup(&b);
    int started = 0;
    for (int i = 0; rc == 0 && i < o->publishers; i++)
        rc = s_pub_setup(&b, (uint32_t)i);
    for (int i = 0; rc == 0 && i < o->publishers; i++) {
        if (pthread_create(&b.threads[i], NULL, s_publisher, &b.pubs[i]) != 0) {
            fprintf(stderr, "bench_amqp: cannot start publisher thread %d\n", i);
            rc = -1;
            break;
        }
        started++;
    }

    cons_state_t cs = {0};
    if (rc == 0 && o->warmup > 0) {
        rc = s_cons_phase(&b, &cs, bu_now_ns() + (uint64_t)WARMUP_MAX_S * 1000000000u, o->warmup,
                          NULL);
        if (rc == 0 && cs.received < o->warmup) {
            fprintf(stderr, "bench_amqp: only %ld of %ld warm-up messages in %d s\n", cs.received,
                    o->warmup, WARMUP_MAX_S);
            rc = -1;
        }
    }
    if (rc == 0 && atomic_load(&b.errors) > 0) {
        fprintf(stderr, "bench_amqp: %ld errors in the warm-up: %s\n", atomic_load(&b.errors),
                b.first_error);
        rc = -1;
    }

    uint64_t t0 = 0, t1 = 0;
    double cpu0 = 0, cpu1 = 0, srv0 = -1, srv1 = -1;
    unsigned long conf0 = 0, conf1 = 0;
    long backlog = 0, msgs = 0;
    if (rc == 0) {
        cs.received = 0;
        cs.record = 1;
        srv0 = o->server_pid ? bu_cpu_pid_us(o->server_pid) : -1;
        cpu0 = bu_cpu_self_us();
        conf0 = s_confirmed_total(&b);
        t0 = bu_now_ns();
        atomic_store(&b.record, 1);
        rc = s_cons_phase(&b, &cs, t0 + (uint64_t)(o->seconds * 1e9), -1, NULL);
        atomic_store(&b.record, 0);
        t1 = bu_now_ns();
        conf1 = s_confirmed_total(&b);
        cpu1 = bu_cpu_self_us();
        srv1 = o->server_pid ? bu_cpu_pid_us(o->server_pid) : -1;
        msgs = cs.received;
        backlog = (long)conf1 - cs.total;
        cs.record = 0;
    }

    /* Stop publishing; drain what was sent, so that every confirmed message is accounted for. */
    atomic_store(&b.stop, 1);
    if (rc == 0) {
        cs.received = 0;
        rc = s_cons_phase(&b, &cs, bu_now_ns() + (uint64_t)(DRAIN_S + 2) * 1000000000u, -1,
                          s_drained);
    }
    if (cs.unacked > 0 && b.cons)
        amqp_basic_ack(b.cons, CHANNEL, cs.last_tag, 1);
    for (int i = 0; i < started; i++)
        pthread_join(b.threads[i], NULL);

    long lost = 0, nacks = 0, sent_total = 0, confirmed_total = 0, nclat = 0;
    for (int i = 0; i < o->publishers; i++)
        nclat += b.pubs[i].nclat;
    uint64_t *clat = malloc((size_t)(nclat ? nclat : 1) * sizeof *clat);
    nclat = 0;
    for (int i = 0; i < o->publishers; i++) {
        pub_t *p = &b.pubs[i];
        long confirmed = (long)atomic_load(&p->confirmed);
        nacks += p->nacks;
        sent_total += p->seq;
        confirmed_total += confirmed;
        /* Confirms may not arrive in publish order, but deliveries do: everything up to the
         * highest sequence number published must have arrived. */
        if (rc == 0 && !p->failed && b.next_seq[i] <= p->seq)
            lost += (long)(p->seq - b.next_seq[i] + 1);
        if (clat) {
            memcpy(clat + nclat, p->clat, (size_t)p->nclat * sizeof *clat);
            nclat += p->nclat;
        }
        s_close(&p->conn);
        free(p->body);
        free(p->pending);
        free(p->sent_at);
        free(p->clat);
    }
    s_close(&b.cons);
    if (lost > 0)
        s_error(&b, "%ld published messages were never delivered within %d s", lost, DRAIN_S + 2);

    long errors = atomic_load(&b.errors);
    if (t1 == 0) {
        fprintf(stderr, "bench_amqp: no measurement%s%s\n",
                b.first_error[0] ? "; first error: " : "", b.first_error);
        return 1;
    }
    bu_sort_u64(b.lat, b.nlat);
    if (clat)
        bu_sort_u64(clat, nclat);
    /* unlike the other load generators: 0, not -1, when a CPU sample is missing */
    double srv = srv0 >= 0 && srv1 >= 0 && msgs > 0 ? (srv1 - srv0) / (double)msgs : 0;
    bu_print_result(&(bu_result_t){.system = "rabbitmq",
                                   .scenario = "durable",
                                   .size = o->size,
                                   .inflight = o->inflight,
                                   .msgs = msgs,
                                   .seconds = (double)(t1 - t0) / 1e9,
                                   .lat = b.lat,
                                   .nlat = b.nlat,
                                   .errors = errors,
                                   .sent = (long)(conf1 - conf0),
                                   .cpu_client_us = msgs > 0 ? (cpu1 - cpu0) / (double)msgs : 0.0,
                                   .cpu_server_us = srv});
    printf(" publishers=%d prefetch=%d ack_every=%d backlog=%ld lost=%ld nacks=%ld "
           "published_total=%ld confirmed_total=%ld lat_samples=%ld confirm_p50_us=%.1f "
           "confirm_p99_us=%.1f confirm_p999_us=%.1f confirm_samples=%ld\n",
           o->publishers, o->prefetch, o->ack_every, backlog, lost, nacks, sent_total,
           confirmed_total, b.nlat, bu_pct_us(clat, nclat, 0.50), bu_pct_us(clat, nclat, 0.99),
           bu_pct_us(clat, nclat, 0.999), nclat);
    free(clat);
    if (errors > 0)
        fprintf(stderr, "bench_amqp: %ld errors; first: %s\n", errors, b.first_error);
    return rc == 0 && errors == 0 ? 0 : 1;
}
