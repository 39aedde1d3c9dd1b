/*
 * bench_calls.c - load generator for calls, against Amtsbote or against the raw-libzmq floor.
 *
 *   bench_calls --mode amtsbote --broker tcp://127.0.0.1:PORT [options]
 *   bench_calls --mode floor --endpoint tcp://127.0.0.1:PORT [options]
 *
 * In both modes a forked child process answers the calls (an Amtsbote provider offering
 * bench.v1.Echo/Echo, or a DEALER worker of floor_forwarder) and echoes every payload; the parent
 * keeps --inflight calls in flight from --clients callers in one poll() loop until --count calls
 * have completed or --seconds have passed, whichever comes first. Each call's latency goes into a
 * preallocated array, so nothing is allocated by the benchmark itself while it measures.
 *
 * The output is one line on stdout that bench/run.sh parses:
 *   result system=amtsbote scenario=throughput inflight=100 size=100 clients=1 calls=... ...
 * The cpu_*_us fields are CPU microseconds per call (all threads) of the caller process, the
 * echoing child and, with --hop-pid, the broker or forwarder: where a ratio below the goal goes.
 * Diagnostics go to stderr. Exit status 0 only when every call succeeded.
 *
 * Every request carries its slot index and a sequence number in its first 8 bytes; an echo that
 * does not carry what was sent, or has the wrong length, counts as an error.
 *
 * With --request FILE --reply FILE (Amtsbote mode only) the payloads are fixed, real messages
 * instead: every call sends the request file's bytes to --service, the provider answers every
 * call with the reply file's bytes, and a reply that differs from them counts as an error. Nothing
 * is stamped (a schema-validating broker must see the messages as they are); each call's latency
 * comes from its slot, which the completion callback gets as its argument. bench/run_schema.sh
 * uses this to measure what the broker's schema validation costs.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>
#include <zmq.h>

#include "amtsbote.h"
#include "bench_ab.h"
#include "bench_util.h"

#define PROG "bench_calls"
#define DEFAULT_SERVICE "bench.v1.Echo/Echo"
#define CALLER_ID "bund.bench"
#define PROVIDER_ID "kommune.bench.worker"
#define STAMP_LEN 8
#define PROBE_SLOT UINT32_MAX
#define MAX_INFLIGHT 100000
#define MAX_CLIENTS 64
#define MAX_SIZE (16u * 1024 * 1024)
#define MAX_COUNT 50000000L
/* Longest poll() wait; a wait this long with calls in flight is counted as a stall. */
#define POLL_CAP_MS 100
/* How long calls still in flight after the measured window may take to finish. */
#define DRAIN_MS 10000

typedef enum { MODE_NONE, MODE_AMTSBOTE, MODE_FLOOR } bench_mode_t;

typedef struct {
    bench_mode_t mode;
    const char *uri;
    int inflight;
    int clients;
    size_t size;
    long count;
    double seconds;
    long warmup;
    int latency;
    int timeout_ms;
    pid_t hop_pid;   /* the broker or forwarder, for its CPU time; 0: not measured */
    const char *pki; /* for tls:// brokers: a certs/pki.sh directory with both participants */
    const char *service;
    const char *request_file, *reply_file; /* fixed payloads; NULL: stamped echoes */
    /* the files' contents, read before the fork; NULL in echo mode */
    unsigned char *request, *reply;
    size_t request_len, reply_len;
} opts_t;

typedef struct bench bench_t;

typedef struct {
    bench_t *b;
    uint32_t idx;
    uint32_t seq;
    int client;
    int busy;
    uint64_t t0;
} slot_t;

struct bench {
    opts_t o;
    slot_t *slots;
    uint32_t *free_slots; /* stack of idle slot indices */
    int nfree;
    unsigned char *req; /* request buffer, stamped before each send (not with --request) */
    uint64_t *lat;      /* nanoseconds, one per measured call */
    long nlat;
    int record;
    long sent;      /* in this phase */
    long completed; /* in this phase */
    long errors;    /* in this phase */
    long stalls;
    uint64_t last_done_ns;
    char first_error[256];
    ab_client_t *ab[MAX_CLIENTS];
    void *zctx;
    void *zs[MAX_CLIENTS];
};

/* Counts an error and keeps the text of the first one for the report. */
static void
s_note_error(bench_t *b, const char *what, const char *detail)
{
    b->errors++;
    if (!b->first_error[0])
        snprintf(b->first_error, sizeof b->first_error, "%s%s%s", what, detail ? ": " : "",
                 detail ? detail : "");
}

/* Takes an idle slot, stamps the request buffer for it (unless fixed) and starts its clock. */
static slot_t *
s_slot_take(bench_t *b, int client)
{
    slot_t *s = &b->slots[b->free_slots[--b->nfree]];
    s->busy = 1;
    s->seq++;
    s->client = client;
    if (!b->o.request) {
        bu_put32(b->req, s->idx);
        bu_put32(b->req + 4, s->seq);
    }
    s->t0 = bu_now_ns();
    return s;
}

static void
s_slot_release(bench_t *b, slot_t *s)
{
    s->busy = 0;
    b->free_slots[b->nfree++] = s->idx;
}

/* Records the end of a call on slot `s`; `ok` says whether the transport reported success. */
static void
s_slot_done(bench_t *b, slot_t *s, int ok, const unsigned char *reply, size_t len)
{
    uint64_t now = bu_now_ns();
    if (ok) {
        if (b->o.reply) {
            if (len != b->o.reply_len || memcmp(reply, b->o.reply, len) != 0)
                s_note_error(b, "the reply is not the provider's fixed reply", NULL);
            else if (b->record && b->nlat < b->o.count)
                b->lat[b->nlat++] = now - s->t0;
        } else if (len != b->o.size)
            s_note_error(b, "echo has the wrong length", NULL);
        else if (bu_get32(reply) != s->idx || bu_get32(reply + 4) != s->seq)
            s_note_error(b, "echo does not carry the request's stamp", NULL);
        else if (b->record && b->nlat < b->o.count)
            b->lat[b->nlat++] = now - s->t0;
    }
    b->completed++;
    b->last_done_ns = now;
    s_slot_release(b, s);
}

static int
s_in_flight(const bench_t *b)
{
    return b->o.inflight - b->nfree;
}

/* ---- Amtsbote ----------------------------------------------------------------------------- */

/* Answers a call with its own payload, or with the fixed reply when `arg` (the options) has one. */
static void
s_echo(ab_client_t *client, ab_request_t *req, void *arg)
{
    const opts_t *o = arg;
    if (o->reply) {
        ab_reply(&req, o->reply, o->reply_len);
        return;
    }
    bench_ab_echo(client, req, NULL);
}

/*
 * Who the client is: on a tls:// broker its certificate from the --pki directory, on a plain
 * listener the name it gives. Returns 0 or an AB_E* code.
 */
static int
s_ab_identity(ab_client_t *c, const opts_t *o, const char *who)
{
    if (strncmp(o->uri, "tls://", 6) != 0)
        return ab_client_set_participant(c, who);
    if (!o->pki) {
        fprintf(stderr, "bench_calls: a tls:// broker needs --pki DIR\n");
        return AB_EINVAL;
    }
    return bench_ab_pki_identity(c, o->pki, who);
}

/* The provider child: offers the echo service and serves it until `ctl` closes. */
static int
s_ab_provider(const opts_t *o, int ready_fd, int ctl)
{
    ab_client_t *c = ab_client_new();
    int rc = c ? s_ab_identity(c, o, PROVIDER_ID) : AB_ENOMEM;
    if (rc == 0)
        rc = ab_client_connect(c, o->uri, 5000);
    if (rc == 0)
        rc = ab_offer(c, o->service, s_echo, (void *)o);
    return bench_ab_serve(c, rc, ready_fd, ctl, "bench_calls");
}

static void
s_ab_done(ab_client_t *client, int status, const void *reply, size_t reply_len, const char *errtext,
          void *arg)
{
    (void)client;
    slot_t *s = arg;
    bench_t *b = s->b;
    if (status != 0 && !b->first_error[0]) {
        char why[200];
        snprintf(why, sizeof why, "%s%s%s", ab_err_name(status), errtext && errtext[0] ? ": " : "",
                 errtext ? errtext : "");
        s_note_error(b, "call failed", why);
    } else if (status != 0) {
        b->errors++;
    }
    s_slot_done(b, s, status == 0, reply, reply_len);
}

static int
s_ab_connect(bench_t *b)
{
    for (int i = 0; i < b->o.clients; i++) {
        ab_client_t *c = ab_client_new();
        b->ab[i] = c;
        int rc = c ? s_ab_identity(c, &b->o, CALLER_ID) : AB_ENOMEM;
        if (rc == 0)
            rc = ab_client_connect(c, b->o.uri, 5000);
        if (rc != 0) {
            fprintf(stderr, "bench_calls: caller %d: connect %s: %s: %s\n", i, b->o.uri,
                    ab_err_name(rc), c ? ab_client_last_error(c) : "");
            return -1;
        }
    }
    return 0;
}

static void
s_ab_close(bench_t *b)
{
    for (int i = 0; i < b->o.clients; i++)
        ab_client_destroy(&b->ab[i]);
}

/*
 * One phase of calls: starts up to `limit` calls until `end_ns`, keeping o.inflight in flight,
 * then waits for those still in flight. Returns 0, or -1 when the client library failed.
 */
static int
s_ab_phase(bench_t *b, long limit, uint64_t end_ns)
{
    int next_client = 0;
    for (;;) {
        uint64_t now = bu_now_ns();
        int may_send = !bu_stopped() && now < end_ns && b->sent < limit;
        while (may_send && b->nfree > 0 && b->sent < limit) {
            slot_t *s = s_slot_take(b, next_client);
            next_client = (next_client + 1) % b->o.clients;
            int rc = ab_call_async(b->ab[s->client], b->o.service, b->req, b->o.size,
                                   b->o.timeout_ms, s_ab_done, s);
            if (rc != 0) {
                fprintf(stderr, "bench_calls: ab_call_async: %s: %s\n", ab_err_name(rc),
                        ab_client_last_error(b->ab[s->client]));
                s_slot_release(b, s);
                return -1;
            }
            b->sent++;
        }
        if (s_in_flight(b) == 0 && !may_send)
            return 0;
        if (!may_send && now > end_ns + (uint64_t)DRAIN_MS * 1000000u) {
            fprintf(stderr, "bench_calls: %d calls still in flight after the drain time\n",
                    s_in_flight(b));
            s_note_error(b, "no answer within the drain time", NULL);
            b->errors += s_in_flight(b) - 1;
            return -1;
        }
        long before = b->completed;
        int again = 0;
        for (int i = 0; i < b->o.clients; i++) {
            int rc = ab_client_process(b->ab[i]);
            if (rc < 0) {
                fprintf(stderr, "bench_calls: ab_client_process: %s: %s\n", ab_err_name(rc),
                        ab_client_last_error(b->ab[i]));
                return -1;
            }
            again |= rc > 0;
        }
        if (again || b->completed != before)
            continue;
        struct pollfd p[MAX_CLIENTS];
        int t = POLL_CAP_MS;
        for (int i = 0; i < b->o.clients; i++) {
            p[i] = (struct pollfd){ab_client_fd(b->ab[i]), POLLIN, 0};
            int ti = ab_client_next_timeout(b->ab[i]);
            if (ti >= 0 && ti < t)
                t = ti;
        }
        if (may_send) {
            uint64_t left_ms = (end_ns - now) / 1000000u + 1;
            if (left_ms < (uint64_t)t)
                t = (int)left_ms;
        }
        int rc = poll(p, (nfds_t)b->o.clients, t);
        if (rc < 0 && errno != EINTR) {
            perror("bench_calls: poll");
            return -1;
        }
        if (rc == 0 && t == POLL_CAP_MS && s_in_flight(b) > 0)
            b->stalls++;
    }
}

/* ---- Floor (raw libzmq) ------------------------------------------------------------------- */

/* The worker child: DEALER to floor_forwarder, echoes [client_id, payload] until `ctl` closes. */
static int
s_floor_worker(const opts_t *o, int ready_fd, int ctl)
{
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(s, o->uri) != 0 || zmq_send(s, "READY", 5, 0) != 5) {
        fprintf(stderr, "bench_calls: worker: %s: %s\n", o->uri, zmq_strerror(errno));
        (void)!write(ready_fd, "F", 1);
        zmq_close(s);
        zmq_ctx_term(ctx);
        return 1;
    }
    (void)!write(ready_fd, "R", 1);
    close(ready_fd);
    int status = 0;
    for (;;) {
        zmq_pollitem_t items[2] = {{s, 0, ZMQ_POLLIN, 0}, {NULL, ctl, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, 1000) < 0 && errno != EINTR) {
            status = 1;
            break;
        }
        if (items[1].revents)
            break;
        for (;;) {
            zmq_msg_t id, body;
            zmq_msg_init(&id);
            if (zmq_msg_recv(&id, s, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&id);
                break;
            }
            if (!zmq_msg_more(&id)) {
                zmq_msg_close(&id);
                continue;
            }
            zmq_msg_init(&body);
            zmq_msg_recv(&body, s, 0);
            while (zmq_msg_more(&body)) { /* drop extra frames; none are expected */
                zmq_msg_close(&body);
                zmq_msg_init(&body);
                zmq_msg_recv(&body, s, 0);
            }
            if (zmq_msg_send(&id, s, ZMQ_SNDMORE) < 0)
                zmq_msg_close(&id);
            if (zmq_msg_send(&body, s, 0) < 0)
                zmq_msg_close(&body);
        }
    }
    zmq_close(s);
    zmq_ctx_term(ctx);
    return status;
}

static int
s_floor_connect(bench_t *b)
{
    b->zctx = zmq_ctx_new();
    if (!b->zctx)
        return -1;
    for (int i = 0; i < b->o.clients; i++) {
        b->zs[i] = zmq_socket(b->zctx, ZMQ_DEALER);
        int linger = 0;
        zmq_setsockopt(b->zs[i], ZMQ_LINGER, &linger, sizeof linger);
        if (zmq_connect(b->zs[i], b->o.uri) != 0) {
            fprintf(stderr, "bench_calls: connect %s: %s\n", b->o.uri, zmq_strerror(errno));
            return -1;
        }
    }
    return 0;
}

static void
s_floor_close(bench_t *b)
{
    for (int i = 0; i < b->o.clients; i++)
        if (b->zs[i])
            zmq_close(b->zs[i]);
    if (b->zctx)
        zmq_ctx_term(b->zctx);
}

/* Receives everything waiting on caller socket `i`. Returns how many replies it handled. */
static int
s_floor_drain(bench_t *b, int i, int *probe_seen)
{
    int n = 0;
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, b->zs[i], ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return n;
        }
        size_t len = zmq_msg_size(&m);
        const unsigned char *data = zmq_msg_data(&m);
        uint32_t idx = len >= STAMP_LEN ? bu_get32(data) : PROBE_SLOT - 1;
        if (idx == PROBE_SLOT) {
            if (probe_seen)
                *probe_seen = 1;
        } else if (idx < (uint32_t)b->o.inflight && b->slots[idx].busy) {
            s_slot_done(b, &b->slots[idx], 1, data, len);
            n++;
        } else {
            s_note_error(b, "reply for no call in flight", NULL);
        }
        zmq_msg_close(&m);
    }
}

/*
 * The forwarder drops requests until the worker's READY has arrived, so the first call is a
 * probe, resent every 50 ms until one is answered. Stray probe answers are ignored later.
 */
static int
s_floor_probe(bench_t *b)
{
    int seen = 0;
    bu_put32(b->req, PROBE_SLOT);
    for (int tries = 0; tries < 100 && !seen && !bu_stopped(); tries++) {
        if (zmq_send(b->zs[0], b->req, b->o.size, 0) < 0)
            return -1;
        zmq_pollitem_t item = {b->zs[0], 0, ZMQ_POLLIN, 0};
        uint64_t until = bu_now_ns() + 50000000u;
        while (!seen && bu_now_ns() < until) {
            zmq_poll(&item, 1, 10);
            s_floor_drain(b, 0, &seen);
        }
    }
    if (!seen)
        fprintf(stderr, "bench_calls: the floor forwarder answered no probe in 5 s\n");
    return seen ? 0 : -1;
}

/* As s_ab_phase, over raw DEALER sockets. */
static int
s_floor_phase(bench_t *b, long limit, uint64_t end_ns)
{
    int next_client = 0;
    zmq_pollitem_t items[MAX_CLIENTS];
    for (int i = 0; i < b->o.clients; i++)
        items[i] = (zmq_pollitem_t){b->zs[i], 0, ZMQ_POLLIN, 0};
    for (;;) {
        uint64_t now = bu_now_ns();
        int may_send = !bu_stopped() && now < end_ns && b->sent < limit;
        while (may_send && b->nfree > 0 && b->sent < limit) {
            slot_t *s = s_slot_take(b, next_client);
            next_client = (next_client + 1) % b->o.clients;
            if (zmq_send(b->zs[s->client], b->req, b->o.size, 0) < 0) {
                fprintf(stderr, "bench_calls: zmq_send: %s\n", zmq_strerror(errno));
                s_slot_release(b, s);
                return -1;
            }
            b->sent++;
        }
        if (s_in_flight(b) == 0 && !may_send)
            return 0;
        if (!may_send && now > end_ns + (uint64_t)DRAIN_MS * 1000000u) {
            fprintf(stderr, "bench_calls: %d calls still in flight after the drain time\n",
                    s_in_flight(b));
            s_note_error(b, "no answer within the drain time", NULL);
            b->errors += s_in_flight(b) - 1;
            return -1;
        }
        int got = 0;
        for (int i = 0; i < b->o.clients; i++)
            got += s_floor_drain(b, i, NULL);
        if (got)
            continue;
        int t = POLL_CAP_MS;
        if (may_send) {
            uint64_t left_ms = (end_ns - now) / 1000000u + 1;
            if (left_ms < (uint64_t)t)
                t = (int)left_ms;
        }
        int rc = zmq_poll(items, b->o.clients, t);
        if (rc < 0 && errno != EINTR) {
            fprintf(stderr, "bench_calls: zmq_poll: %s\n", zmq_strerror(errno));
            return -1;
        }
        if (rc == 0 && t == POLL_CAP_MS && s_in_flight(b) > 0)
            b->stalls++;
    }
}

/* ---- CPU time ---------------------------------------------------------------------------- */

/* CPU microseconds (all threads) of the caller, the echoing child and the hop; -1: not read. */
typedef struct {
    double self, echo, hop;
} cpu_t;

static cpu_t
s_cpu_now(pid_t echo, pid_t hop)
{
    return (cpu_t){bu_cpu_self_us(), bu_cpu_pid_us(echo), hop > 0 ? bu_cpu_pid_us(hop) : -1};
}

/* ---- Driver ------------------------------------------------------------------------------- */

static void
s_usage(FILE *f)
{
    fprintf(
        f,
        "usage: bench_calls --mode amtsbote --broker URI | --mode floor --endpoint URI\n"
        "                   [--latency] [--inflight N] [--clients N] [--size BYTES]\n"
        "                   [--count N] [--seconds S] [--warmup N] [--timeout-ms MS]\n"
        "                   [--service NAME] [--request FILE --reply FILE]\n"
        "  --latency     1 call in flight; report p50/p99/p99.9 (default: throughput)\n"
        "  --inflight N  calls kept in flight (default 100; 1 with --latency)\n"
        "  --clients N   caller connections sharing the calls in flight (default 1)\n"
        "  --size BYTES  request and reply payload, >= %d (default 100)\n"
        "  --count N     stop after N measured calls (default 200000)\n"
        "  --seconds S   stop starting calls after S seconds (default 3)\n"
        "  --warmup N    unmeasured calls first (default 2000)\n"
        "  --timeout-ms  per-call deadline in Amtsbote mode (default 10000)\n"
        "  --hop-pid PID also report the CPU time per call of the broker or forwarder\n"
        "  --pki DIR     for a tls:// broker: certs/pki.sh directory with certificates for\n"
        "                " CALLER_ID " and " PROVIDER_ID "\n"
        "  --service S   service/method to offer and call (default " DEFAULT_SERVICE ")\n"
        "  --request F   Amtsbote mode: send F's bytes unchanged in every call (replaces --size)\n"
        "  --reply F     with --request: the provider answers every call with F's bytes\n",
        STAMP_LEN);
}

static int
s_parse(int argc, char **argv, opts_t *o)
{
    static const struct option longopts[] = {{"mode", required_argument, NULL, 'm'},
                                             {"broker", required_argument, NULL, 'b'},
                                             {"endpoint", required_argument, NULL, 'e'},
                                             {"inflight", required_argument, NULL, 'n'},
                                             {"clients", required_argument, NULL, 'c'},
                                             {"size", required_argument, NULL, 's'},
                                             {"count", required_argument, NULL, 'N'},
                                             {"seconds", required_argument, NULL, 'S'},
                                             {"warmup", required_argument, NULL, 'w'},
                                             {"latency", no_argument, NULL, 'l'},
                                             {"timeout-ms", required_argument, NULL, 't'},
                                             {"hop-pid", required_argument, NULL, 'p'},
                                             {"pki", required_argument, NULL, 'P'},
                                             {"service", required_argument, NULL, 'V'},
                                             {"request", required_argument, NULL, 'Q'},
                                             {"reply", required_argument, NULL, 'R'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    *o = (opts_t){.mode = MODE_NONE,
                  .inflight = -1,
                  .clients = 1,
                  .size = 100,
                  .count = 200000,
                  .seconds = 3,
                  .warmup = 2000,
                  .timeout_ms = 10000,
                  .service = DEFAULT_SERVICE};
    const char *broker = NULL, *endpoint = NULL;
    int ch;
    long v;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'm':
            if (strcmp(optarg, "amtsbote") == 0)
                o->mode = MODE_AMTSBOTE;
            else if (strcmp(optarg, "floor") == 0)
                o->mode = MODE_FLOOR;
            else {
                fprintf(stderr, "bench_calls: --mode is amtsbote or floor, not '%s'\n", optarg);
                return -1;
            }
            break;
        case 'b':
            broker = optarg;
            break;
        case 'e':
            endpoint = optarg;
            break;
        case 'n':
            if (bu_parse_long(PROG, optarg, "--inflight", 1, MAX_INFLIGHT, &v))
                return -1;
            o->inflight = (int)v;
            break;
        case 'c':
            if (bu_parse_long(PROG, optarg, "--clients", 1, MAX_CLIENTS, &v))
                return -1;
            o->clients = (int)v;
            break;
        case 's':
            if (bu_parse_long(PROG, optarg, "--size", STAMP_LEN, MAX_SIZE, &v))
                return -1;
            o->size = (size_t)v;
            break;
        case 'N':
            if (bu_parse_long(PROG, optarg, "--count", 1, MAX_COUNT, &o->count))
                return -1;
            break;
        case 'S':
            if (bu_parse_seconds(PROG, optarg, &o->seconds))
                return -1;
            break;
        case 'w':
            if (bu_parse_long(PROG, optarg, "--warmup", 0, MAX_COUNT, &o->warmup))
                return -1;
            break;
        case 'l':
            o->latency = 1;
            break;
        case 't':
            if (bu_parse_long(PROG, optarg, "--timeout-ms", 1, 600000, &v))
                return -1;
            o->timeout_ms = (int)v;
            break;
        case 'P':
            o->pki = optarg;
            break;
        case 'V':
            o->service = optarg;
            break;
        case 'Q':
            o->request_file = optarg;
            break;
        case 'R':
            o->reply_file = optarg;
            break;
        case 'p':
            if (bu_parse_long(PROG, optarg, "--hop-pid", 1, INT32_MAX, &v))
                return -1;
            o->hop_pid = (pid_t)v;
            break;
        case 'h':
            s_usage(stdout);
            exit(0);
        default:
            s_usage(stderr);
            return -1;
        }
    }
    if (optind != argc || o->mode == MODE_NONE) {
        s_usage(stderr);
        return -1;
    }
    o->uri = o->mode == MODE_AMTSBOTE ? broker : endpoint;
    if (!o->uri || (o->mode == MODE_AMTSBOTE ? endpoint != NULL : broker != NULL)) {
        fprintf(stderr, "bench_calls: --mode amtsbote takes --broker, --mode floor --endpoint\n");
        return -1;
    }
    if (o->latency) {
        if (o->inflight > 1 || o->clients > 1) {
            fprintf(stderr, "bench_calls: --latency means 1 call in flight from 1 client\n");
            return -1;
        }
        o->inflight = 1;
    } else if (o->inflight < 0) {
        o->inflight = 100;
    }
    if (o->clients > o->inflight) {
        fprintf(stderr, "bench_calls: --clients must not exceed --inflight\n");
        return -1;
    }
    if (!o->request_file != !o->reply_file) {
        fprintf(stderr, "bench_calls: --request and --reply go together\n");
        return -1;
    }
    if (o->request_file && o->mode != MODE_AMTSBOTE) {
        fprintf(stderr, "bench_calls: --request/--reply need --mode amtsbote (the floor echoes "
                        "and routes by the stamp)\n");
        return -1;
    }
    return 0;
}

/* Reads a whole payload file (at most MAX_SIZE bytes) into *out. Returns 0, or -1 after saying
 * why. */
static int
s_read_file(const char *path, unsigned char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "bench_calls: %s: %s\n", path, strerror(errno));
        return -1;
    }
    unsigned char *buf = malloc(MAX_SIZE + 1);
    size_t n = buf ? fread(buf, 1, MAX_SIZE + 1, f) : 0;
    int bad = !buf || ferror(f) || n > MAX_SIZE;
    fclose(f);
    if (bad) {
        fprintf(stderr, "bench_calls: %s: %s\n", path,
                !buf           ? "out of memory"
                : n > MAX_SIZE ? "larger than 16 MiB"
                               : "read error");
        free(buf);
        return -1;
    }
    *out = buf;
    *len = n;
    return 0;
}

/* The echoing child (bu_child_fn): the provider or the floor's worker, as the mode says. */
static int
s_echo_child(void *arg, int ready_fd, int ctl)
{
    const opts_t *o = arg;
    return o->mode == MODE_AMTSBOTE ? s_ab_provider(o, ready_fd, ctl)
                                    : s_floor_worker(o, ready_fd, ctl);
}

/* Forks the echoing child; returns its pid and the control pipe's write end in *ctl, or -1. */
static pid_t
s_spawn_echo(const opts_t *o, int *ctl)
{
    bu_child_t c = {.prog = PROG,
                    .what = o->mode == MODE_AMTSBOTE ? "provider" : "worker",
                    .run = s_echo_child,
                    .arg = (void *)o,
                    .alarm_s = (unsigned)o->seconds + 90,
                    .ready_ms = 10000};
    return bu_spawn(&c, ctl);
}

int
main(int argc, char **argv)
{
    static bench_t b; /* static: the client arrays are large and must start zeroed */
    if (s_parse(argc, argv, &b.o) != 0)
        return 2;
    if (b.o.request_file && (s_read_file(b.o.request_file, &b.o.request, &b.o.request_len) != 0 ||
                             s_read_file(b.o.reply_file, &b.o.reply, &b.o.reply_len) != 0))
        return 2;
    if (b.o.request)
        b.o.size = b.o.request_len;
    const opts_t *o = &b.o;

    bu_signals();
    /* Hard bound on the whole run, whatever hangs: connect, warmup, measure, drain, reap. */
    alarm((unsigned)o->seconds + 60);

    b.slots = calloc((size_t)o->inflight, sizeof *b.slots);
    b.free_slots = calloc((size_t)o->inflight, sizeof *b.free_slots);
    b.req = malloc(o->size ? o->size : 1);
    b.lat = malloc((size_t)o->count * sizeof *b.lat);
    if (!b.slots || !b.free_slots || !b.req || !b.lat) {
        fprintf(stderr, "bench_calls: out of memory\n");
        return 1;
    }
    memset(b.lat, 0, (size_t)o->count * sizeof *b.lat); /* fault the pages in before measuring */
    if (o->request)
        memcpy(b.req, o->request, o->size);
    else
        bu_fill_pattern(b.req, o->size);
    for (int i = 0; i < o->inflight; i++) {
        b.slots[i] = (slot_t){.b = &b, .idx = (uint32_t)i};
        b.free_slots[o->inflight - 1 - i] = (uint32_t)i;
    }
    b.nfree = o->inflight;

    /* Fork before any ZeroMQ context exists in this process. */
    int ctl = -1;
    pid_t child = s_spawn_echo(o, &ctl);
    if (child < 0)
        return 1;

    int rc;
    int (*phase)(bench_t *, long, uint64_t);
    if (o->mode == MODE_AMTSBOTE) {
        rc = s_ab_connect(&b);
        phase = s_ab_phase;
    } else {
        rc = s_floor_connect(&b);
        if (rc == 0)
            rc = s_floor_probe(&b);
        phase = s_floor_phase;
    }

    if (rc == 0 && o->warmup > 0)
        rc = phase(&b, o->warmup, bu_now_ns() + 5000000000u);
    if (rc == 0 && b.errors > 0) {
        fprintf(stderr, "bench_calls: %ld errors in the warmup: %s\n", b.errors, b.first_error);
        rc = -1;
    }
    uint64_t t0 = bu_now_ns(), t1 = t0;
    cpu_t c0 = {0}, c1 = {0};
    if (rc == 0) {
        b.sent = b.completed = b.errors = b.stalls = 0;
        b.record = 1;
        c0 = s_cpu_now(child, o->hop_pid);
        t0 = bu_now_ns();
        b.last_done_ns = t0;
        rc = phase(&b, o->count, t0 + (uint64_t)(o->seconds * 1e9));
        t1 = b.last_done_ns;
        c1 = s_cpu_now(child, o->hop_pid);
    }

    if (o->mode == MODE_AMTSBOTE)
        s_ab_close(&b);
    else
        s_floor_close(&b);
    bu_reap(PROG, &child, &ctl, 1);
    if (rc != 0 && b.completed == 0) {
        if (b.first_error[0])
            fprintf(stderr, "bench_calls: first error: %s\n", b.first_error);
        return 1;
    }

    bu_sort_u64(b.lat, b.nlat);
    double secs = (double)(t1 - t0) / 1e9;
    printf("result system=%s scenario=%s inflight=%d size=%zu clients=%d calls=%ld errors=%ld "
           "seconds=%.3f calls_per_s=%.0f p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f "
           "stalls=%ld cpu_caller_us=%.2f cpu_echo_us=%.2f cpu_hop_us=%.2f",
           o->mode == MODE_AMTSBOTE ? "amtsbote" : "floor", o->latency ? "latency" : "throughput",
           o->inflight, o->size, o->clients, b.completed, b.errors, secs,
           bu_rate((double)b.completed, secs), bu_pct_us(b.lat, b.nlat, 0.50),
           bu_pct_us(b.lat, b.nlat, 0.99), bu_pct_us(b.lat, b.nlat, 0.999),
           bu_pct_us(b.lat, b.nlat, 1), b.stalls, bu_cpu_per(c0.self, c1.self, b.completed),
           bu_cpu_per(c0.echo, c1.echo, b.completed), bu_cpu_per(c0.hop, c1.hop, b.completed));
    if (o->request) /* what the fixed payloads were; size= above is the request's */
        printf(" service=%s request_size=%zu reply_size=%zu", o->service, o->request_len,
               o->reply_len);
    printf("\n");
    if (b.errors > 0)
        fprintf(stderr, "bench_calls: %ld errors; first: %s\n", b.errors, b.first_error);
    return rc == 0 && b.errors == 0 ? 0 : 1;
}
