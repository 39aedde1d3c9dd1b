/*
 * bench_mqtt.c - load generator for Mosquitto (MQTT 3.1.1 over mutual TLS, libmosquitto), the
 * MQTT peer that the comparison in bench/run.sh measures Amtsbote against.
 *
 *   bench_mqtt stream|durable|fanout --host H --port P --ca F --cert F --key F [options]
 *
 * stream   QoS 0, one publisher connection to one subscriber connection on one topic, one way,
 *          the publisher as fast as the broker takes it for the window.
 * durable  QoS 1. The subscriber connects first with clean session off and a fixed client id
 *          (after one clean-session connect that discards what an earlier run left in that
 *          session) and subscribes with QoS 1; --publishers connections each keep --inflight
 *          PUBLISHes unacknowledged: a window that each PUBACK releases one slot of. The
 *          library's own limit (MOSQ_OPT_SEND_MAXIMUM, 20 by default) is set to --inflight, so
 *          that the window really is on the wire and not queued inside libmosquitto. Mosquitto
 *          acknowledges a PUBLISH once it holds it in memory, whatever the subscriber's backlog:
 *          the windows bound what the publishers have unacknowledged, not that backlog, which
 *          backlog= reports (published minus received when the window closed).
 * fanout   QoS 0, one publisher, --subscribers connections on the same topic; the rate is
 *          deliveries per second summed over the subscribers (published_per_s= says how many
 *          messages the publisher got out).
 *
 * All connections live in this one process and are driven by one poll() loop
 * (mosquitto_loop_read/_write per socket), not by libmosquitto's thread per connection: the
 * machine has two cores and Mosquitto's broker is single-threaded, so one core for the broker
 * and one for the load generator is the fastest arrangement, and a threaded client would pay a
 * wake-up through its internal socket pair for every PUBLISH. A PUBLISH made outside a callback
 * goes to the socket at once, as its own TLS record. The loop reads a subscriber until it has
 * nothing more before it publishes again, so this process takes messages out of the broker
 * before it puts more in.
 *
 * Bounding the QoS 0 publisher: it publishes only while mosquitto_want_write() is false, i.e.
 * while the kernel's socket buffer took everything libmosquitto had; once a write would block it
 * waits for POLLOUT. libmosquitto's outgoing queue therefore never holds more than the one
 * message the socket did not take; the kernel's socket buffer is the only queue, and beyond it
 * the broker's per-subscriber limit (max_queued_messages), which drops QoS 0 messages.
 *
 * Messages are counted where they arrive: msgs= and rate= are the messages received in the window
 * (fanout: deliveries over all subscribers). Every message carries the publisher's index and a
 * sequence number in its first 8 bytes and, from 16 bytes on, its send time (CLOCK_MONOTONIC)
 * in the next 8, which gives the one-way latency (p50/p99/p99.9 over a uniformly thinned sample
 * of the window's messages; with publishers running flat out it is mostly time spent waiting in
 * socket buffers and the broker's queues). Length and stamp are checked on every message: a
 * repeated or reordered sequence number is an error. After the window the publishers stop and
 * the subscribers drain (up to DRAIN_MS); lost= is what was published in the window and did not
 * arrive (summed over subscribers), dropped= the part of it that a later message overtook, i.e.
 * that the broker discarded. QoS 0 may lose messages (reported, not an error); in durable any
 * loss is an error.
 *
 * The output is one line on stdout, `result system=mosquitto scenario=...` (bench/README.md);
 * the cpu_*_us fields are CPU microseconds per message received, of this process (all threads)
 * and, with --server-pid, of the broker, over the window only; -1 when not measured. tls= is
 * the protocol version the connections negotiated. Diagnostics go to stderr. Exit status 0 only
 * when every message checked out; 2 for a bad command line.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <mosquitto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "bench_util.h"

#define PROG "bench_mqtt"
#define STAMP_LEN 8
#define TIME_STAMP_END 16 /* payloads this long also carry their send time */
#define MAX_SIZE (16 * 1024 * 1024)
#define MAX_CONNS 64
#define MAX_INFLIGHT 65535 /* MQTT's packet identifiers */
#define DURABLE_CLIENT_ID "amtsbote-bench-durable-sub"
#define KEEPALIVE_S 30
/* QoS 0: messages published before the loop looks at the subscribers again. */
#define PUB_BURST 64
/* mosquitto_loop_read() calls per readable socket and poll() while they keep delivering
 * packets: a subscriber is read until it has nothing more, so that this process takes messages
 * out of the broker before it puts more in; a publisher (PUBACKs) a little at a time. */
#define READ_BATCH_SUB 4096
#define READ_BATCH_PUB 64
/* Latency samples kept; beyond this the sample is thinned to every 2nd, 4th, ... message. */
#define LAT_CAP (4L * 1024 * 1024)
#define CONNECT_MS 5000
#define WARMUP_MS 10000
#define DRAIN_MS 10000
/* A QoS 0 drain ends early once nothing has arrived for this long. */
#define DRAIN_QUIET_MS 500
#define CLOSE_MS 2000

typedef enum { SCEN_STREAM, SCEN_DURABLE, SCEN_FANOUT } scen_t;

static const char *const s_scen_names[] = {"stream", "durable", "fanout"};

typedef struct {
    scen_t scen;
    const char *host;
    int port;
    size_t size;
    double seconds;
    long warmup;
    int inflight; /* durable: unacknowledged PUBLISHes per publisher */
    int publishers;
    int subscribers;
    pid_t server_pid; /* 0: not measured */
    const char *ca, *cert, *key;
} opts_t;

typedef struct bench bench_t;

typedef struct {
    bench_t *b;
    struct mosquitto *m;
    char name[32];   /* for messages: "publisher 2", "subscriber 0" */
    bool connected;  /* CONNACK accepted */
    bool subscribed; /* SUBACK granted */
    bool closing;    /* this side asked to disconnect */
    bool down;       /* the connection is gone */
    /* publisher */
    uint32_t next_seq;
    int unacked; /* QoS 1 PUBLISHes without PUBACK */
    /* subscriber */
    uint32_t *expect; /* next sequence number expected from each publisher */
    long received;    /* since connecting */
    long in_range;    /* with a sequence number published in the window */
    long dropped;     /* of those, skipped: a later sequence number arrived first */
    long events;      /* callbacks so far; tells whether a read made progress */
} conn_t;

struct bench {
    opts_t o;
    int qos;
    char topic[64];
    const char *tls_version; /* asked for */
    conn_t pubs[MAX_CONNS], subs[MAX_CONNS];
    int npubs, nsubs;
    unsigned char *payload;
    bool publishing;
    bool measuring;
    uint32_t first_seq[MAX_CONNS]; /* per publisher: first sequence number of the window */
    long sent;                     /* published in the window */
    long received;                 /* received in the window, all subscribers */
    uint64_t last_rx_ns;
    long errors;
    char first_error[256];
    uint64_t *lat; /* nanoseconds */
    long nlat;
    long lat_stride, lat_tick;
    uint64_t next_misc_ns;
};

/* Counts an error and keeps the text of the first one ("what: detail") for the report. */
static void
s_note_error(bench_t *b, const char *what, const char *detail)
{
    b->errors++;
    if (!b->first_error[0])
        snprintf(b->first_error, sizeof b->first_error, "%s%s%s", what, detail ? ": " : "",
                 detail ? detail : "");
}

/* The text for a libmosquitto error code; MOSQ_ERR_ERRNO means errno says more, and after
 * MOSQ_ERR_TLS OpenSSL's error queue (drained onto stderr here). */
static const char *
s_mosq_err(int rc)
{
    if (rc == MOSQ_ERR_TLS) {
        unsigned long e;
        char buf[256];
        while ((e = ERR_get_error()) != 0) {
            ERR_error_string_n(e, buf, sizeof buf);
            fprintf(stderr, "bench_mqtt: TLS: %s\n", buf);
        }
    }
    return rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc);
}

/* Keeps one latency sample per lat_stride messages; when the array is full, drops every other
 * sample and doubles the stride, so the samples stay spread evenly over the window. */
static void
s_lat_add(bench_t *b, uint64_t ns)
{
    if (++b->lat_tick < b->lat_stride)
        return;
    b->lat_tick = 0;
    if (b->nlat == LAT_CAP) {
        for (long i = 0; i < LAT_CAP / 2; i++)
            b->lat[i] = b->lat[2 * i + 1];
        b->nlat = LAT_CAP / 2;
        b->lat_stride *= 2;
    }
    b->lat[b->nlat++] = ns;
}

/* ---- callbacks (libmosquitto calls them from mosquitto_loop_read/_write) ------------------- */

static void
s_on_connect(struct mosquitto *m, void *arg, int rc)
{
    (void)m;
    conn_t *c = arg;
    if (rc != 0) {
        fprintf(stderr, "bench_mqtt: mosquitto refused %s: %s\n", c->name,
                mosquitto_connack_string(rc));
        s_note_error(c->b, "mosquitto refused the connection", mosquitto_connack_string(rc));
        c->down = true;
        return;
    }
    c->connected = true;
}

static void
s_on_disconnect(struct mosquitto *m, void *arg, int rc)
{
    (void)m;
    conn_t *c = arg;
    if (!c->closing && !c->down && !c->connected) {
        fprintf(stderr,
                "bench_mqtt: mosquitto closed the connection of %s before accepting it "
                "(%s): does it trust the client certificate?\n",
                c->name, s_mosq_err(rc));
        s_note_error(c->b, "connection closed before CONNACK", c->name);
    } else if (!c->closing && !c->down) {
        fprintf(stderr, "bench_mqtt: %s lost its connection: %s\n", c->name, s_mosq_err(rc));
        s_note_error(c->b, "connection lost", c->name);
    }
    c->down = true;
}

/* libmosquitto's own diagnostics (OpenSSL's reasons for a failed handshake among them). */
static void
s_on_log(struct mosquitto *m, void *arg, int level, const char *text)
{
    (void)m;
    const conn_t *c = arg;
    if (level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING))
        fprintf(stderr, "bench_mqtt: %s: libmosquitto: %s\n", c->name, text);
}

static void
s_on_subscribe(struct mosquitto *m, void *arg, int mid, int count, const int *granted)
{
    (void)m;
    (void)mid;
    conn_t *c = arg;
    if (count < 1 || granted[0] != c->b->qos) {
        fprintf(stderr, "bench_mqtt: %s: mosquitto granted QoS %d, not %d\n", c->name,
                count < 1 ? -1 : granted[0], c->b->qos);
        s_note_error(c->b, "subscription not granted with the QoS asked for", c->name);
        return;
    }
    c->subscribed = true;
}

/* QoS 1: the PUBACK came, one slot of the window is free. QoS 0: the message was written. */
static void
s_on_publish(struct mosquitto *m, void *arg, int mid)
{
    (void)m;
    (void)mid;
    conn_t *c = arg;
    c->events++;
    if (c->b->qos == 1 && c->unacked > 0)
        c->unacked--;
}

static void
s_on_message(struct mosquitto *m, void *arg, const struct mosquitto_message *msg)
{
    (void)m;
    conn_t *c = arg;
    bench_t *b = c->b;
    uint64_t now = bu_now_ns();
    b->last_rx_ns = now;
    c->events++;
    if (msg->payloadlen < 0 || (size_t)msg->payloadlen != b->o.size) {
        s_note_error(b, "a message has the wrong length", c->name);
        return;
    }
    const unsigned char *p = msg->payload;
    uint32_t pub = bu_get32(p), seq = bu_get32(p + 4);
    if (pub >= (uint32_t)b->npubs) {
        s_note_error(b, "a message names no publisher of this run", c->name);
        return;
    }
    if (seq < c->expect[pub]) {
        s_note_error(b, "a message arrived twice or out of order", c->name);
        return;
    }
    uint32_t from = c->expect[pub] > b->first_seq[pub] ? c->expect[pub] : b->first_seq[pub];
    if (seq > from)
        c->dropped += seq - from;
    c->expect[pub] = seq + 1;
    c->received++;
    if (seq >= b->first_seq[pub])
        c->in_range++;
    if (b->measuring) {
        b->received++;
        if (b->o.size >= TIME_STAMP_END) {
            uint64_t t;
            memcpy(&t, p + STAMP_LEN, sizeof t);
            s_lat_add(b, now - t);
        }
    }
}

/* ---- connections ----------------------------------------------------------------------------- */

/*
 * Makes c's client (MQTT 3.1.1, TCP_NODELAY, mutual TLS) and starts connecting; the CONNACK comes
 * later, through the poll loop. Returns 0, or -1 after saying why.
 */
static int
s_conn_open(bench_t *b, conn_t *c, const char *id, bool clean)
{
    const opts_t *o = &b->o;
    c->b = b;
    c->connected = c->subscribed = c->closing = c->down = false;
    c->m = mosquitto_new(id, clean, c);
    if (!c->m) {
        fprintf(stderr, "bench_mqtt: %s: mosquitto_new: %s\n", c->name, strerror(errno));
        return -1;
    }
    mosquitto_int_option(c->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    mosquitto_int_option(c->m, MOSQ_OPT_TCP_NODELAY, 1);
    if (b->qos == 1)
        mosquitto_int_option(c->m, MOSQ_OPT_SEND_MAXIMUM, o->inflight);
    int rc = mosquitto_tls_set(c->m, o->ca, NULL, o->cert, o->key, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "bench_mqtt: TLS files --ca %s --cert %s --key %s: %s\n", o->ca, o->cert,
                o->key, s_mosq_err(rc));
        return -1;
    }
    /* 1 = SSL_VERIFY_PEER: the broker's certificate must chain to --ca and name --host */
    rc = mosquitto_tls_opts_set(c->m, 1, b->tls_version, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "bench_mqtt: tls_version %s: %s\n", b->tls_version, s_mosq_err(rc));
        return -1;
    }
    mosquitto_connect_callback_set(c->m, s_on_connect);
    mosquitto_disconnect_callback_set(c->m, s_on_disconnect);
    mosquitto_subscribe_callback_set(c->m, s_on_subscribe);
    mosquitto_publish_callback_set(c->m, s_on_publish);
    mosquitto_message_callback_set(c->m, s_on_message);
    mosquitto_log_callback_set(c->m, s_on_log);
    rc = mosquitto_connect(c->m, o->host, o->port, KEEPALIVE_S);
    if (rc != MOSQ_ERR_SUCCESS) {
        bool tls = rc == MOSQ_ERR_TLS || rc == MOSQ_ERR_PROTOCOL || rc == MOSQ_ERR_CONN_LOST;
        fprintf(stderr, "bench_mqtt: mosquitto: %s cannot connect to %s:%d: %s%s\n", c->name,
                o->host, o->port, s_mosq_err(rc),
                tls ? " (TLS handshake failed: broker certificate not trusted by --ca or not for "
                      "--host, or client certificate rejected by the broker)"
                    : "");
        return -1;
    }
    return 0;
}

static void
s_conn_destroy(conn_t *c)
{
    if (c->m)
        mosquitto_destroy(c->m);
    c->m = NULL;
}

/* ---- the loop ------------------------------------------------------------------------------- */

/* Publishes what the flow control allows now. Returns the number published, or -1 on failure. */
static int
s_publish_some(bench_t *b)
{
    int total = 0;
    for (int i = 0; i < b->npubs; i++) {
        conn_t *c = &b->pubs[i];
        if (c->down || !c->connected)
            continue;
        for (int n = 0; n < PUB_BURST || b->qos == 1; n++) {
            if (b->qos == 0 ? mosquitto_want_write(c->m) : c->unacked >= b->o.inflight)
                break;
            bu_put32(b->payload, (uint32_t)i);
            bu_put32(b->payload + 4, c->next_seq);
            if (b->o.size >= TIME_STAMP_END) {
                uint64_t t = bu_now_ns();
                memcpy(b->payload + STAMP_LEN, &t, sizeof t);
            }
            int rc =
                mosquitto_publish(c->m, NULL, b->topic, (int)b->o.size, b->payload, b->qos, false);
            if (rc != MOSQ_ERR_SUCCESS) {
                fprintf(stderr, "bench_mqtt: %s: mosquitto_publish: %s\n", c->name, s_mosq_err(rc));
                s_note_error(b, "publish failed", c->name);
                return -1;
            }
            c->next_seq++;
            if (b->qos == 1)
                c->unacked++;
            if (b->measuring)
                b->sent++;
            total++;
        }
    }
    return total;
}

/*
 * Waits up to timeout_ms for any connection and lets libmosquitto read and write what is ready
 * (callbacks run in here). Returns 0, or -1 when a connection failed in a way it did not ask for.
 */
static int
s_poll_once(bench_t *b, int timeout_ms)
{
    struct pollfd p[2 * MAX_CONNS];
    conn_t *who[2 * MAX_CONNS];
    bool pending[2 * MAX_CONNS];
    int n = 0;
    for (int k = 0; k < b->npubs + b->nsubs; k++) {
        conn_t *c = k < b->npubs ? &b->pubs[k] : &b->subs[k - b->npubs];
        if (!c->m || c->down)
            continue;
        int fd = mosquitto_socket(c->m);
        if (fd < 0) {
            c->down = true;
            continue;
        }
        p[n] = (struct pollfd){fd, (short)(POLLIN | (mosquitto_want_write(c->m) ? POLLOUT : 0)), 0};
        /* Decrypted bytes OpenSSL holds are invisible to poll(): libmosquitto can leave some
         * behind when it stops after one packet, so such a connection is read without waiting. */
        SSL *ssl = mosquitto_ssl_get(c->m);
        pending[n] = ssl && SSL_pending(ssl) > 0;
        if (pending[n])
            timeout_ms = 0;
        who[n++] = c;
    }
    if (n == 0)
        return 0;
    int rc = poll(p, (nfds_t)n, timeout_ms);
    if (rc < 0 && errno != EINTR) {
        perror("bench_mqtt: poll");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (pending[i]) {
            p[i].revents |= POLLIN;
            rc = rc > 0 ? rc : 1;
        }
    }
    uint64_t now = bu_now_ns();
    bool misc = now >= b->next_misc_ns;
    if (misc)
        b->next_misc_ns = now + 100000000u;
    int failed = 0;
    for (int i = 0; i < n && rc > 0; i++) {
        conn_t *c = who[i];
        int r = MOSQ_ERR_SUCCESS;
        /* libmosquitto reads one packet per call (more only while the TLS record it is in
         * has bytes left); Mosquitto sends every packet as its own record, so read on while
         * packets keep coming rather than going back to poll() for each. */
        int batch = c->expect ? READ_BATCH_SUB : READ_BATCH_PUB;
        for (int k = 0; k < batch && (p[i].revents & (POLLIN | POLLERR | POLLHUP)); k++) {
            long before = c->events;
            r = mosquitto_loop_read(c->m, 1);
            if (r != MOSQ_ERR_SUCCESS || c->down || c->events == before)
                break;
        }
        if (r == MOSQ_ERR_SUCCESS && !c->down && (p[i].revents & POLLOUT))
            r = mosquitto_loop_write(c->m, 1);
        if (r != MOSQ_ERR_SUCCESS && !c->closing) {
            fprintf(stderr, "bench_mqtt: %s: %s\n", c->name, s_mosq_err(r));
            s_note_error(b, "connection failed", c->name);
            c->down = true;
            failed = 1;
        }
    }
    for (int i = 0; misc && i < n; i++)
        if (!who[i]->down)
            mosquitto_loop_misc(who[i]->m); /* keepalive PINGREQs */
    return failed ? -1 : 0;
}

typedef bool (*until_fn)(const bench_t *b);

/*
 * Runs the loop (publishing when b->publishing) until done(b) holds or deadline_ns passes.
 * Returns 0 when done(b) held, 1 at the deadline, -1 on failure or a signal.
 */
static int
s_run_until(bench_t *b, until_fn done, uint64_t deadline_ns)
{
    for (;;) {
        if (done && done(b))
            return 0;
        uint64_t now = bu_now_ns();
        if (now >= deadline_ns)
            return 1;
        if (bu_stopped()) {
            s_note_error(b, "interrupted by a signal", NULL);
            return -1;
        }
        int published = 0;
        if (b->publishing && (published = s_publish_some(b)) < 0)
            return -1;
        uint64_t left_ms = (deadline_ns - now) / 1000000u + 1;
        int t = published > 0 ? 0 : (left_ms < 100 ? (int)left_ms : 100);
        if (s_poll_once(b, t) != 0)
            return -1;
    }
}

/* (The conditions for connecting also end the wait when something failed.) */
static bool
s_all_connected(const bench_t *b)
{
    if (b->errors > 0)
        return true;
    for (int i = 0; i < b->npubs; i++)
        if (!b->pubs[i].connected)
            return false;
    for (int i = 0; i < b->nsubs; i++)
        if (!b->subs[i].m || !b->subs[i].connected || !b->subs[i].subscribed)
            return false;
    return true;
}

static bool
s_subs_ready(const bench_t *b)
{
    if (b->errors > 0)
        return true;
    for (int i = 0; i < b->nsubs; i++)
        if (!b->subs[i].connected || !b->subs[i].subscribed)
            return false;
    return true;
}

static bool
s_warm(const bench_t *b)
{
    for (int i = 0; i < b->nsubs; i++)
        if (b->subs[i].received < b->o.warmup)
            return false;
    return true;
}

/* Everything published in the window has arrived at every subscriber (and, QoS 1, is
 * acknowledged); for QoS 0 also when nothing has arrived for DRAIN_QUIET_MS (it was lost). */
static bool
s_drained(const bench_t *b)
{
    for (int i = 0; i < b->npubs; i++)
        if (b->pubs[i].unacked > 0)
            return false;
    bool all = true;
    for (int i = 0; i < b->nsubs; i++)
        all = all && b->subs[i].in_range >= b->sent;
    if (all)
        return true;
    return b->qos == 0 && bu_now_ns() - b->last_rx_ns > (uint64_t)DRAIN_QUIET_MS * 1000000u;
}

static bool
s_all_down(const bench_t *b)
{
    for (int i = 0; i < b->npubs; i++)
        if (b->pubs[i].m && !b->pubs[i].down)
            return false;
    for (int i = 0; i < b->nsubs; i++)
        if (b->subs[i].m && !b->subs[i].down)
            return false;
    return true;
}

static uint64_t
s_deadline(int ms)
{
    return bu_now_ns() + (uint64_t)ms * 1000000u;
}

/* Disconnects every connection and frees the clients. */
static void
s_close_all(bench_t *b)
{
    b->publishing = false;
    for (int k = 0; k < b->npubs + b->nsubs; k++) {
        conn_t *c = k < b->npubs ? &b->pubs[k] : &b->subs[k - b->npubs];
        if (c->m && !c->down) {
            c->closing = true;
            if (mosquitto_disconnect(c->m) != MOSQ_ERR_SUCCESS)
                c->down = true;
        }
    }
    s_run_until(b, s_all_down, s_deadline(CLOSE_MS));
    for (int i = 0; i < b->npubs; i++)
        s_conn_destroy(&b->pubs[i]);
    for (int i = 0; i < b->nsubs; i++)
        s_conn_destroy(&b->subs[i]);
}

/*
 * durable: a clean-session connect with the subscriber's fixed client id discards whatever an
 * earlier run left in that session (queued messages would fail the sequence check); done before
 * the subscriber connects for real with clean session off, and again at the end. Gives up at
 * deadline_ns. Returns 0 or -1.
 */
static int
s_reset_durable_session(bench_t *b, uint64_t deadline_ns)
{
    conn_t *c = &b->subs[0];
    int saved = b->nsubs;
    if (s_conn_open(b, c, DURABLE_CLIENT_ID, true) != 0)
        return -1;
    c->subscribed = true; /* nothing to subscribe on this connection */
    b->nsubs = 1;
    int rc = s_run_until(b, s_subs_ready, deadline_ns);
    if (rc == 0 && b->errors == 0) {
        c->closing = true;
        if (mosquitto_disconnect(c->m) != MOSQ_ERR_SUCCESS)
            c->down = true;
        s_run_until(b, s_all_down, deadline_ns);
    }
    s_conn_destroy(c);
    b->nsubs = saved;
    if (rc != 0 || b->errors > 0) {
        fprintf(stderr, "bench_mqtt: the clean-session connect of %s did not complete\n",
                DURABLE_CLIENT_ID);
        return -1;
    }
    return 0;
}

/* Connects the subscribers, subscribes them, then connects the publishers, all within
 * CONNECT_MS. Returns 0 or -1. */
static int
s_connect_all(bench_t *b)
{
    uint64_t deadline = s_deadline(CONNECT_MS);
    if (b->o.scen == SCEN_DURABLE && s_reset_durable_session(b, deadline) != 0)
        return -1;
    char id[64];
    for (int i = 0; i < b->nsubs; i++) {
        conn_t *c = &b->subs[i];
        if (b->o.scen == SCEN_DURABLE)
            snprintf(id, sizeof id, "%s", DURABLE_CLIENT_ID);
        else
            snprintf(id, sizeof id, "amtsbote-bench-sub-%d-%d", (int)getpid(), i);
        if (s_conn_open(b, c, id, b->o.scen != SCEN_DURABLE) != 0)
            return -1;
    }
    bool asked = false;
    while (!s_subs_ready(b)) {
        if (!asked && b->errors == 0) {
            bool all = true;
            for (int i = 0; i < b->nsubs; i++)
                all = all && b->subs[i].connected;
            if (all) {
                for (int i = 0; i < b->nsubs; i++) {
                    int rc = mosquitto_subscribe(b->subs[i].m, NULL, b->topic, b->qos);
                    if (rc != MOSQ_ERR_SUCCESS) {
                        fprintf(stderr, "bench_mqtt: %s: subscribe: %s\n", b->subs[i].name,
                                s_mosq_err(rc));
                        return -1;
                    }
                }
                asked = true;
            }
        }
        if (b->errors > 0 || s_run_until(b, NULL, bu_now_ns() + 20000000u) < 0)
            return -1;
        if (bu_now_ns() > deadline) {
            fprintf(stderr,
                    "bench_mqtt: the subscribers were not connected and subscribed "
                    "within %d ms\n",
                    CONNECT_MS);
            return -1;
        }
    }
    if (b->errors > 0)
        return -1;
    for (int i = 0; i < b->npubs; i++) {
        snprintf(id, sizeof id, "amtsbote-bench-pub-%d-%d", (int)getpid(), i);
        if (s_conn_open(b, &b->pubs[i], id, true) != 0)
            return -1;
    }
    int rc = s_run_until(b, s_all_connected, deadline);
    if (rc != 0 || b->errors > 0) {
        if (rc == 1)
            fprintf(stderr, "bench_mqtt: the publishers were not connected within %d ms\n",
                    CONNECT_MS);
        return -1;
    }
    return 0;
}

/* The TLS version the first connection negotiated: 13 for TLS 1.3, 12 for 1.2, 0 unknown. */
static int
s_tls_negotiated(const bench_t *b)
{
    SSL *ssl = b->nsubs > 0 && b->subs[0].m ? mosquitto_ssl_get(b->subs[0].m) : NULL;
    if (!ssl)
        return 0;
    switch (SSL_version(ssl)) {
    case TLS1_3_VERSION:
        return 13;
    case TLS1_2_VERSION:
        return 12;
    default:
        return 0;
    }
}

/* ---- command line ------------------------------------------------------------------------- */

static void
s_usage(FILE *f)
{
    fprintf(f,
            "usage: bench_mqtt stream|durable|fanout --port P --ca F --cert F --key F [options]\n"
            "  --host H         broker address (default 127.0.0.1); must match its certificate\n"
            "  --port P         broker's TLS listener\n"
            "  --ca F           CA bundle the broker's certificate must chain to\n"
            "  --cert F --key F client certificate and its key\n"
            "  --size B         payload bytes, >= %d (default 100)\n"
            "  --seconds S      measured window (default 3)\n"
            "  --warmup N       messages every subscriber receives before the window (default "
            "2000)\n"
            "  --inflight N     durable: unacknowledged PUBLISHes per publisher (default 256)\n"
            "  --publishers P   durable: publisher connections (default 4)\n"
            "  --subscribers N  fanout: subscriber connections (default 10)\n"
            "  --server-pid PID also report the broker's CPU time per message\n",
            STAMP_LEN);
}

static int
s_parse(int argc, char **argv, opts_t *o)
{
    static const struct option longopts[] = {{"host", required_argument, NULL, 'H'},
                                             {"port", required_argument, NULL, 'P'},
                                             {"size", required_argument, NULL, 's'},
                                             {"seconds", required_argument, NULL, 'S'},
                                             {"warmup", required_argument, NULL, 'w'},
                                             {"inflight", required_argument, NULL, 'n'},
                                             {"publishers", required_argument, NULL, 'p'},
                                             {"subscribers", required_argument, NULL, 'u'},
                                             {"server-pid", required_argument, NULL, 'D'},
                                             {"ca", required_argument, NULL, 'a'},
                                             {"cert", required_argument, NULL, 'c'},
                                             {"key", required_argument, NULL, 'k'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    *o = (opts_t){.host = "127.0.0.1",
                  .size = 100,
                  .seconds = 3,
                  .warmup = 2000,
                  .inflight = -1,
                  .publishers = -1,
                  .subscribers = -1};
    int ch;
    long v;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (ch) {
        case 'H':
            o->host = optarg;
            break;
        case 'P':
            if (bu_parse_long(PROG, optarg, "--port", 1, 65535, &v))
                return -1;
            o->port = (int)v;
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
            if (bu_parse_long(PROG, optarg, "--warmup", 0, 100000000, &o->warmup))
                return -1;
            break;
        case 'n':
            if (bu_parse_long(PROG, optarg, "--inflight", 1, MAX_INFLIGHT, &v))
                return -1;
            o->inflight = (int)v;
            break;
        case 'p':
            if (bu_parse_long(PROG, optarg, "--publishers", 1, MAX_CONNS, &v))
                return -1;
            o->publishers = (int)v;
            break;
        case 'u':
            if (bu_parse_long(PROG, optarg, "--subscribers", 1, MAX_CONNS, &v))
                return -1;
            o->subscribers = (int)v;
            break;
        case 'D':
            if (bu_parse_long(PROG, optarg, "--server-pid", 1, INT32_MAX, &v))
                return -1;
            o->server_pid = (pid_t)v;
            break;
        case 'a':
            o->ca = optarg;
            break;
        case 'c':
            o->cert = optarg;
            break;
        case 'k':
            o->key = optarg;
            break;
        case 'h':
            s_usage(stdout);
            exit(0);
        case ':':
            fprintf(stderr, "bench_mqtt: option '%s' needs a value\n", argv[optind - 1]);
            s_usage(stderr);
            return -1;
        default:
            fprintf(stderr, "bench_mqtt: unknown option '%s'\n", argv[optind - 1]);
            s_usage(stderr);
            return -1;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "bench_mqtt: name exactly one scenario: stream, durable or fanout\n");
        s_usage(stderr);
        return -1;
    }
    const char *scen = argv[optind];
    if (strcmp(scen, "stream") == 0)
        o->scen = SCEN_STREAM;
    else if (strcmp(scen, "durable") == 0)
        o->scen = SCEN_DURABLE;
    else if (strcmp(scen, "fanout") == 0)
        o->scen = SCEN_FANOUT;
    else {
        fprintf(stderr, "bench_mqtt: unknown scenario '%s' (stream, durable or fanout)\n", scen);
        return -1;
    }
    if (!o->port || !o->ca || !o->cert || !o->key) {
        fprintf(stderr, "bench_mqtt: --port, --ca, --cert and --key are required\n");
        return -1;
    }
    if (o->scen != SCEN_DURABLE && (o->inflight > 0 || o->publishers > 0)) {
        fprintf(stderr, "bench_mqtt: --inflight and --publishers apply to durable only\n");
        return -1;
    }
    if (o->scen != SCEN_FANOUT && o->subscribers > 0) {
        fprintf(stderr, "bench_mqtt: --subscribers applies to fanout only\n");
        return -1;
    }
    if (o->inflight < 0)
        o->inflight = o->scen == SCEN_DURABLE ? 256 : 0;
    if (o->publishers < 0)
        o->publishers = o->scen == SCEN_DURABLE ? 4 : 1;
    if (o->subscribers < 0)
        o->subscribers = o->scen == SCEN_FANOUT ? 10 : 1;
    return 0;
}

/* ---- driver ------------------------------------------------------------------------------- */

int
main(int argc, char **argv)
{
    static bench_t b; /* static: the connection arrays are large and must start zeroed */
    if (s_parse(argc, argv, &b.o) != 0)
        return 2;
    const opts_t *o = &b.o;

    bu_signals();
    bu_alarm_exit(PROG ": hard time limit reached; giving up\n");
    /* Hard bound on the whole run: connect, warm-up, window, drain and close are each bounded
     * (CONNECT_MS + WARMUP_MS + DRAIN_MS + 2 * CLOSE_MS = 29 s), so this only fires on a hang. */
    alarm((unsigned)ceil(o->seconds) + 30);

    b.qos = o->scen == SCEN_DURABLE ? 1 : 0;
    b.npubs = o->publishers;
    b.nsubs = o->subscribers;
    snprintf(b.topic, sizeof b.topic, "amtsbote/bench/%s", s_scen_names[o->scen]);
    b.payload = malloc(o->size);
    b.lat = malloc((size_t)LAT_CAP * sizeof *b.lat);
    if (!b.payload || !b.lat) {
        fprintf(stderr, "bench_mqtt: out of memory\n");
        return 1;
    }
    memset(b.lat, 0, (size_t)LAT_CAP * sizeof *b.lat); /* fault the pages in before measuring */
    b.lat_stride = 1;
    bu_fill_pattern(b.payload, o->size);
    for (int i = 0; i < MAX_CONNS; i++)
        b.first_seq[i] = UINT32_MAX;
    for (int i = 0; i < b.npubs; i++) {
        snprintf(b.pubs[i].name, sizeof b.pubs[i].name, "publisher %d", i);
    }
    for (int i = 0; i < b.nsubs; i++) {
        snprintf(b.subs[i].name, sizeof b.subs[i].name, "subscriber %d", i);
        b.subs[i].expect = calloc((size_t)b.npubs, sizeof *b.subs[i].expect);
        if (!b.subs[i].expect) {
            fprintf(stderr, "bench_mqtt: out of memory\n");
            return 1;
        }
    }

    mosquitto_lib_init();
    /* TLS 1.3 where this libmosquitto offers it; it rejects versions it does not know. */
    b.tls_version = "tlsv1.3";
    {
        struct mosquitto *probe = mosquitto_new(NULL, true, NULL);
        if (probe && mosquitto_tls_set(probe, o->ca, NULL, o->cert, o->key, NULL) == 0 &&
            mosquitto_tls_opts_set(probe, 1, "tlsv1.3", NULL) != MOSQ_ERR_SUCCESS) {
            fprintf(stderr, "bench_mqtt: this libmosquitto has no TLS 1.3; using TLS 1.2\n");
            b.tls_version = "tlsv1.2";
        }
        if (probe)
            mosquitto_destroy(probe);
    }

    int rc = s_connect_all(&b);
    int tls = s_tls_negotiated(&b);

    /* Warm-up: the publishers run until every subscriber has received --warmup messages. */
    b.publishing = true;
    if (rc == 0 && o->warmup > 0) {
        int w = s_run_until(&b, s_warm, s_deadline(WARMUP_MS));
        if (w == 1)
            fprintf(stderr,
                    "bench_mqtt: warm-up: the subscribers did not receive %ld messages "
                    "within %d ms\n",
                    o->warmup, WARMUP_MS);
        rc = w == 0 ? 0 : -1;
    }
    if (rc == 0 && b.errors > 0) {
        fprintf(stderr, "bench_mqtt: %ld errors in the warm-up: %s\n", b.errors, b.first_error);
        rc = -1;
    }

    /* The window: publishing continues without a pause; what arrives from now on is counted. */
    uint64_t t0 = bu_now_ns(), t1 = t0;
    double self0 = 0, self1 = 0, srv0 = -1, srv1 = -1;
    long lost = 0, dropped = 0, backlog = 0;
    if (rc == 0) {
        for (int i = 0; i < b.npubs; i++)
            b.first_seq[i] = b.pubs[i].next_seq;
        for (int i = 0; i < b.nsubs; i++)
            b.subs[i].in_range = b.subs[i].dropped = 0;
        self0 = bu_cpu_self_us();
        srv0 = o->server_pid ? bu_cpu_pid_us(o->server_pid) : -1;
        t0 = bu_now_ns();
        b.measuring = true;
        rc = s_run_until(&b, NULL, t0 + (uint64_t)(o->seconds * 1e9)) < 0 ? -1 : 0;
        b.measuring = false;
        t1 = bu_now_ns();
        self1 = bu_cpu_self_us();
        srv1 = o->server_pid ? bu_cpu_pid_us(o->server_pid) : -1;
        /* published but not (yet) received when the window closed, over all subscribers */
        for (int i = 0; i < b.npubs; i++)
            backlog += (long)b.pubs[i].next_seq * b.nsubs;
        for (int i = 0; i < b.nsubs; i++)
            backlog -= b.subs[i].received;

        /* Drain: no more publishing; wait for what the window published. */
        b.publishing = false;
        b.last_rx_ns = bu_now_ns();
        if (rc == 0 && s_run_until(&b, s_drained, s_deadline(DRAIN_MS)) < 0)
            rc = -1;
        for (int i = 0; i < b.nsubs; i++) {
            if (b.subs[i].in_range < b.sent)
                lost += b.sent - b.subs[i].in_range;
            dropped += b.subs[i].dropped;
        }
    }
    long unacked = 0;
    for (int i = 0; i < b.npubs; i++)
        unacked += b.pubs[i].unacked;
    s_close_all(&b);
    /* durable: leave no session (nor messages queued in it) behind for the next run */
    if (o->scen == SCEN_DURABLE && s_reset_durable_session(&b, s_deadline(CLOSE_MS)) != 0)
        fprintf(stderr, "bench_mqtt: could not discard the session of %s\n", DURABLE_CLIENT_ID);
    mosquitto_lib_cleanup();

    if (rc != 0 && b.received == 0) {
        if (b.first_error[0])
            fprintf(stderr, "bench_mqtt: first error: %s\n", b.first_error);
        fprintf(stderr, "bench_mqtt: no valid run against mosquitto at %s:%d\n", o->host, o->port);
        return 1;
    }
    if (b.qos == 1 && lost > 0) {
        /* dropped: a later message arrived instead (the broker discarded it, although it had
         * acknowledged it); the rest had not arrived when the drain time was up */
        fprintf(stderr,
                "bench_mqtt: %ld QoS 1 messages published in the window did not arrive: "
                "%ld dropped by the broker, %ld not delivered within %d ms after the "
                "window (%ld PUBLISHes unacknowledged)\n",
                lost, dropped, lost - dropped, DRAIN_MS, unacked);
        s_note_error(&b, "QoS 1 messages lost", NULL);
    }
    if (b.received == 0)
        s_note_error(&b, "no message arrived in the window", NULL);

    bu_sort_u64(b.lat, b.nlat);
    double secs = (double)(t1 - t0) / 1e9;
    bu_print_result(&(bu_result_t){.system = "mosquitto",
                                   .scenario = s_scen_names[o->scen],
                                   .size = o->size,
                                   .inflight = o->inflight,
                                   .msgs = b.received,
                                   .seconds = secs,
                                   .lat = b.lat,
                                   .nlat = b.nlat,
                                   .errors = b.errors,
                                   .sent = b.sent,
                                   .cpu_client_us = bu_cpu_per(self0, self1, b.received),
                                   .cpu_server_us = bu_cpu_per(srv0, srv1, b.received)});
    printf(" lost=%ld dropped=%ld backlog=%ld published_per_s=%.0f publishers=%d subscribers=%d "
           "qos=%d max_us=%.1f lat_samples=%ld tls=%s\n",
           lost, dropped, backlog, bu_rate((double)b.sent, secs), b.npubs, b.nsubs, b.qos,
           bu_pct_us(b.lat, b.nlat, 1), b.nlat,
           tls == 13   ? "1.3"
           : tls == 12 ? "1.2"
                       : "0");
    if (b.errors > 0)
        fprintf(stderr, "bench_mqtt: %ld errors; first: %s\n", b.errors, b.first_error);
    return rc == 0 && b.errors == 0 ? 0 : 1;
}
