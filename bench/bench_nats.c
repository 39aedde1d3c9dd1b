/*
 * bench_nats.c - load generator for NATS (core nats-server, libnats), the peer that the
 * comparison in bench/run.sh measures Amtsbote against.
 *
 *   bench_nats call|stream|fanout --url tls://127.0.0.1:PORT --ca F --cert F --key F [options]
 *
 * call     Request/reply. A forked responder process with its own connection subscribes to
 *          bench.echo and publishes every request back to its reply subject. The caller keeps
 *          --inflight requests in flight from one thread (--latency: exactly one, and reports
 *          p50/p99/p99.9). Each call's latency goes into a preallocated array.
 * stream   One publisher connection (this process) to one subscriber connection (a forked
 *          process) on bench.stream, one way, the publisher as fast as it can for the window.
 * fanout   The same with --subscribers subscriber processes, each with its own connection; the
 *          rate is deliveries per second summed over the subscribers.
 *
 * Every connection uses mutual TLS (client certificate --cert/--key, server verified against
 * --ca with the expected name localhost) and sends each message as soon as it is published
 * (natsOptions_SetSendAsap), unless --buffered leaves publishers on the library's write buffer.
 *
 * Messages are counted where they arrive: rate = messages received in the window / window. Every
 * message carries a stamp in its first 8 bytes (call: slot and sequence; stream: sequence) and is
 * checked along with its length. Core NATS delivers at most once: a subscriber that falls behind
 * loses messages (the server cuts off a slow consumer, the library drops beyond its pending
 * limits, set generously here), so stream and fanout report lost= (published minus received after
 * a drain of at most 5 s) and count a lost connection as an error.
 *
 * The output is one line on stdout that bench/run.sh parses, `result system=nats ...`; the
 * cpu_*_us fields are CPU microseconds per message received, of this process with its children
 * and, with --server-pid, of nats-server (all threads), over the window only; -1 when not
 * measured. Diagnostics go to stderr. Exit status 0 only when every message checked out; 2 for a
 * bad command line.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <nats/nats.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

#include "bench_util.h"

#define PROG "bench_nats"
#define SUBJ_ECHO "bench.echo"
#define SUBJ_STREAM "bench.stream"
#define INBOX_PREFIX "_INBOX.bench."
#define EXPECTED_HOST "localhost"
#define STAMP_LEN 8
#define MAX_INFLIGHT 100000
#define MAX_SUBSCRIBERS 64
#define MAX_SIZE (1024 * 1024) /* nats-server's max_payload in bench/peers/nats.sh */
#define MAX_WARMUP 10000000L
/* Latency samples kept: enough for a million calls per second of window, at most 128 MB. */
#define LAT_PER_S 1000000.0
#define MAX_LAT 16000000L
#define CONNECT_MS 5000
/* Longest wait for one reply; a wait this long with calls in flight is counted as a stall. */
#define WAIT_CAP_MS 100
/* Upper bounds of the unmeasured phases, so that the whole run ends by itself. */
#define WARMUP_MS 5000
#define DRAIN_MS 5000
/* A stream subscriber stops waiting for the rest after this long without a new message. */
#define QUIET_MS 1000
/* What a subscription may hold before the library drops messages (its defaults: 65536, 64 MiB). */
#define PENDING_MSGS 4000000
#define PENDING_BYTES (512 * 1024 * 1024)

typedef enum { MODE_CALL, MODE_STREAM, MODE_FANOUT } bench_mode_t;

typedef struct {
    bench_mode_t mode;
    const char *url, *ca, *cert, *key;
    size_t size;
    double seconds;
    long warmup;
    int inflight;
    int latency;
    int subscribers;
    int buffered;     /* publishers use the library's write buffer instead of SendAsap */
    pid_t server_pid; /* nats-server, for its CPU time; 0: not measured */
} opts_t;

/*
 * What one child process (the responder, or a subscriber) shares with the parent: counters in a
 * MAP_SHARED page, written by the child's library threads, read by the parent while it runs.
 */
typedef struct {
    _Atomic uint64_t received; /* subscriber: messages that checked out */
    _Atomic uint64_t next_seq; /* subscriber: one past the highest sequence number seen */
    _Atomic uint64_t gaps;     /* subscriber: sequence numbers skipped (lost on the way) */
    _Atomic uint64_t errors;
    _Atomic uint64_t slow;   /* slow-consumer notices from the library */
    _Atomic int64_t dropped; /* subscriber: the library's drop count, set as it exits */
    _Atomic int lost_connection;
    _Atomic int closing;   /* set before this side closes its own connection */
    char first_error[200]; /* written once, by whoever counts the first error */
} peer_t;

typedef struct {
    peer_t *peer;
    size_t size;
    natsConnection *nc;
} child_ctx_t;

typedef struct {
    uint32_t seq;
    int busy;
    uint64_t t0;
    char reply[32]; /* INBOX_PREFIX + slot index */
} slot_t;

/* The caller of the call mode; used from one thread only. */
typedef struct {
    const opts_t *o;
    natsConnection *nc;
    natsSubscription *inbox;
    slot_t *slots;
    uint32_t *free_slots; /* stack of idle slot indices */
    int nfree;
    unsigned char *req;
    uint64_t *lat; /* nanoseconds, one per measured call */
    long nlat, maxlat;
    int record;
    long sent, completed, errors, stalls; /* in this phase */
    uint64_t last_done_ns;
    char first_error[200];
} caller_t;

typedef struct {
    double self, children, server;
} cpu_t;

/* The library's status text and, when it has one, its last error's detail. */
static void
s_say_nats(const char *who, const char *what, natsStatus s)
{
    const char *detail = nats_GetLastError(NULL);
    fprintf(stderr, "bench_nats: %s: nats: %s: %s%s%s\n", who, what, natsStatus_GetText(s),
            detail && detail[0] ? " - " : "", detail ? detail : "");
}

/* Counts an error in a child's shared counters and keeps the text of the first one. */
static void
s_peer_error(peer_t *p, const char *what)
{
    if (atomic_fetch_add(&p->errors, 1) == 0)
        snprintf(p->first_error, sizeof p->first_error, "%s", what);
}

/* ---- Connections ------------------------------------------------------------------------- */

/* Library threads report asynchronous errors here; slow-consumer drops are counted. */
static void
s_on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    (void)nc;
    (void)sub;
    peer_t *p = closure;
    if (!p)
        return;
    if (err == NATS_SLOW_CONSUMER)
        atomic_fetch_add(&p->slow, 1);
    else
        s_peer_error(p, natsStatus_GetText(err));
}

static void
s_on_disconnected(natsConnection *nc, void *closure)
{
    peer_t *p = closure;
    const char *why = NULL;
    natsConnection_GetLastError(nc, &why);
    if (p && !atomic_load(&p->closing) && atomic_exchange(&p->lost_connection, 1) == 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "connection lost: %s", why && why[0] ? why : "closed");
        s_peer_error(p, msg);
    }
}

/*
 * Connects to o->url over mutual TLS; `peer` (may be NULL) receives asynchronous errors and the
 * loss of the connection, which is never re-established (a lost connection ends the run visibly).
 * Returns the connection, or NULL after saying why on stderr.
 */
static natsConnection *
s_connect(const opts_t *o, const char *who, bool send_asap, peer_t *peer)
{
    natsOptions *no = NULL;
    natsConnection *nc = NULL;
    const char *what = "options";
    natsStatus s = natsOptions_Create(&no);
    if (s == NATS_OK)
        s = natsOptions_SetURL(no, o->url);
    if (s == NATS_OK)
        s = natsOptions_SetSecure(no, true);
    if (s == NATS_OK) {
        what = o->ca;
        s = natsOptions_LoadCATrustedCertificates(no, o->ca);
    }
    if (s == NATS_OK) {
        what = o->cert;
        s = natsOptions_LoadCertificatesChain(no, o->cert, o->key);
    }
    if (s == NATS_OK) {
        what = "options";
        s = natsOptions_SetExpectedHostname(no, EXPECTED_HOST);
    }
    if (s == NATS_OK)
        s = natsOptions_SetSendAsap(no, send_asap);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(no, CONNECT_MS);
    if (s == NATS_OK)
        s = natsOptions_SetAllowReconnect(no, false);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(no, s_on_async_error, peer);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(no, s_on_disconnected, peer);
    char where[300];
    if (s == NATS_OK) {
        snprintf(where, sizeof where, "connect to %s", o->url);
        what = where;
        s = natsConnection_Connect(&nc, no);
    }
    if (s != NATS_OK) {
        s_say_nats(who, what, s);
        nc = NULL;
    }
    natsOptions_Destroy(no);
    return nc;
}

/* Sets a subscription's pending limits high enough that the library does not drop early. */
static natsStatus
s_generous(natsSubscription *sub)
{
    return natsSubscription_SetPendingLimits(sub, PENDING_MSGS, PENDING_BYTES);
}

/* ---- Children ---------------------------------------------------------------------------- */

/* The responder: publishes every request back to its reply subject. */
static void
s_on_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    child_ctx_t *c = closure;
    const char *reply = natsMsg_GetReply(msg);
    if (!reply)
        s_peer_error(c->peer, "request without a reply subject");
    else if (natsConnection_Publish(nc, reply, natsMsg_GetData(msg), natsMsg_GetDataLength(msg)) !=
             NATS_OK)
        s_peer_error(c->peer, "publishing a reply failed");
    natsMsg_Destroy(msg);
}

/* A stream subscriber: checks length and sequence, counts what arrived and what was skipped. */
static void
s_on_stream(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    child_ctx_t *c = closure;
    peer_t *p = c->peer;
    if ((size_t)natsMsg_GetDataLength(msg) != c->size) {
        s_peer_error(p, "message has the wrong length");
    } else {
        uint64_t seq, next = atomic_load_explicit(&p->next_seq, memory_order_relaxed);
        memcpy(&seq, natsMsg_GetData(msg), sizeof seq);
        if (seq < next) {
            s_peer_error(p, "message repeated or out of order");
        } else {
            if (seq > next)
                atomic_fetch_add_explicit(&p->gaps, seq - next, memory_order_relaxed);
            atomic_store_explicit(&p->next_seq, seq + 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&p->received, 1, memory_order_relaxed);
        }
    }
    natsMsg_Destroy(msg);
}

/*
 * A child's life: connects, subscribes (the responder to bench.echo, a subscriber to
 * bench.stream), makes sure the server has the subscription, says 'R' on `ready_fd`, then lets the
 * library's threads work until `ctl` closes. Returns the exit status.
 */
static int
s_child(const opts_t *o, peer_t *peer, int ready_fd, int ctl)
{
    child_ctx_t c = {.peer = peer, .size = o->size};
    const char *who = o->mode == MODE_CALL ? "responder" : "subscriber";
    natsSubscription *sub = NULL;
    natsStatus s = NATS_ERR;
    c.nc = s_connect(o, who, true, peer);
    if (c.nc) {
        s = o->mode == MODE_CALL
                ? natsConnection_Subscribe(&sub, c.nc, SUBJ_ECHO, s_on_request, &c)
                : natsConnection_Subscribe(&sub, c.nc, SUBJ_STREAM, s_on_stream, &c);
        if (s == NATS_OK)
            s = s_generous(sub);
        if (s == NATS_OK)
            s = natsConnection_FlushTimeout(c.nc, CONNECT_MS);
        if (s != NATS_OK)
            s_say_nats(who, "subscribe", s);
    }
    (void)!write(ready_fd, s == NATS_OK ? "R" : "F", 1);
    close(ready_fd);
    if (s == NATS_OK) {
        char b;
        while (read(ctl, &b, 1) < 0 && errno == EINTR)
            ;
        int64_t dropped = 0;
        if (natsSubscription_GetDropped(sub, &dropped) == NATS_OK)
            atomic_store(&peer->dropped, dropped);
    }
    atomic_store(&peer->closing, 1);
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(c.nc);
    nats_Close();
    return s == NATS_OK ? 0 : 1;
}

typedef struct {
    const opts_t *o;
    peer_t *peer;
} child_arg_t;

static int
s_child_main(void *arg, int ready_fd, int ctl)
{
    const child_arg_t *a = arg;
    return s_child(a->o, a->peer, ready_fd, ctl);
}

/*
 * Forks a child (before this process has touched the library); returns its pid, or -1. The child
 * closes `inherited` (the control pipes of the children forked before it), so that each child
 * sees its own pipe close when the parent closes it.
 */
static pid_t
s_spawn(const opts_t *o, peer_t *peer, int *ctl, const int *inherited, int ninherited)
{
    child_arg_t a = {o, peer};
    bu_child_t c = {.prog = PROG,
                    .what = o->mode == MODE_CALL ? "responder" : "subscriber",
                    .run = s_child_main,
                    .arg = &a,
                    .alarm_s = (unsigned)o->seconds + 28, /* within the parent's own bound */
                    .ready_ms = CONNECT_MS + 2000,
                    .close_fds = inherited,
                    .nclose = ninherited};
    return bu_spawn(&c, ctl);
}

/* ---- Call mode --------------------------------------------------------------------------- */

/*
 * libnats 3.4 has no asynchronous request call: natsConnection_Request blocks its thread until
 * one reply, so N calls in flight would take N threads. The caller therefore does what
 * natsConnection_Request does inside, once for all calls: one wildcard subscription
 * _INBOX.bench.* read synchronously (natsSubscription_NextMsg) from this one thread, and requests
 * published with the reply subject _INBOX.bench.<slot>. The reply subject's slot and the stamp
 * in the echoed payload must agree.
 */

static void
s_caller_error(caller_t *c, const char *what)
{
    c->errors++;
    if (!c->first_error[0])
        snprintf(c->first_error, sizeof c->first_error, "%s", what);
}

/* Checks one reply against the call in flight on its slot and frees the slot. */
static void
s_caller_reply(caller_t *c, natsMsg *m)
{
    uint64_t now = bu_now_ns();
    const char *subj = natsMsg_GetSubject(m);
    const char *tail = strncmp(subj, INBOX_PREFIX, sizeof INBOX_PREFIX - 1) == 0
                           ? subj + sizeof INBOX_PREFIX - 1
                           : "";
    char *end;
    unsigned long idx = strtoul(tail, &end, 10);
    if (end == tail || *end || idx >= (unsigned long)c->o->inflight || !c->slots[idx].busy) {
        s_caller_error(c, "reply for no call in flight");
        return;
    }
    slot_t *s = &c->slots[idx];
    size_t len = (size_t)natsMsg_GetDataLength(m);
    const char *data = natsMsg_GetData(m);
    if (len != c->o->size)
        s_caller_error(c, "echo has the wrong length");
    else if (bu_get32(data) != idx || bu_get32(data + 4) != s->seq)
        s_caller_error(c, "echo does not carry the request's stamp");
    else if (c->record && c->nlat < c->maxlat)
        c->lat[c->nlat++] = now - s->t0;
    s->busy = 0;
    c->free_slots[c->nfree++] = (uint32_t)idx;
    c->completed++;
    c->last_done_ns = now;
}

/*
 * One phase of calls: starts up to `limit` calls until `end_ns`, keeping o->inflight in flight,
 * then waits for those still in flight (at most DRAIN_MS). Returns 0, or -1 on a library failure
 * or replies missing after the drain time.
 */
static int
s_caller_phase(caller_t *c, long limit, uint64_t end_ns)
{
    const opts_t *o = c->o;
    for (;;) {
        uint64_t now = bu_now_ns();
        int may_send = !bu_stopped() && now < end_ns && c->sent < limit;
        while (may_send && c->nfree > 0 && c->sent < limit) {
            uint32_t idx = c->free_slots[--c->nfree];
            slot_t *s = &c->slots[idx];
            s->busy = 1;
            s->seq++;
            bu_put32(c->req, idx);
            bu_put32(c->req + 4, s->seq);
            s->t0 = bu_now_ns();
            natsStatus st =
                natsConnection_PublishRequest(c->nc, SUBJ_ECHO, s->reply, c->req, (int)o->size);
            if (st != NATS_OK) {
                s_say_nats("caller", "publish", st);
                return -1;
            }
            c->sent++;
        }
        int in_flight = o->inflight - c->nfree;
        if (in_flight == 0 && !may_send)
            return 0;
        if (!may_send && now > end_ns + (uint64_t)DRAIN_MS * 1000000u) {
            fprintf(stderr, "bench_nats: %d calls still in flight after the drain time\n",
                    in_flight);
            s_caller_error(c, "no answer within the drain time");
            c->errors += in_flight - 1;
            return -1;
        }
        int64_t t = WAIT_CAP_MS;
        if (may_send) {
            uint64_t left_ms = (end_ns - now) / 1000000u + 1;
            if (left_ms < (uint64_t)t)
                t = (int64_t)left_ms;
        }
        natsMsg *m = NULL;
        natsStatus st = natsSubscription_NextMsg(&m, c->inbox, t);
        if (st == NATS_OK) {
            s_caller_reply(c, m);
            natsMsg_Destroy(m);
        } else if (st == NATS_TIMEOUT) {
            if (t == WAIT_CAP_MS && in_flight > 0)
                c->stalls++;
        } else {
            s_say_nats("caller", "next reply", st);
            return -1;
        }
    }
}

/* ---- Stream and fanout ------------------------------------------------------------------- */

static uint64_t
s_sum_received(peer_t *peers, int n)
{
    uint64_t r = 0;
    for (int i = 0; i < n; i++)
        r += atomic_load_explicit(&peers[i].received, memory_order_relaxed);
    return r;
}

/* Whether every subscriber has seen sequence number `seq - 1` (or later). */
static int
s_all_reached(peer_t *peers, int n, uint64_t seq)
{
    for (int i = 0; i < n; i++)
        if (atomic_load(&peers[i].next_seq) < seq && !atomic_load(&peers[i].lost_connection))
            return 0;
    return 1;
}

/* Publishes messages seq .. seq+n-1 (stamped). Returns 0, or -1 after saying why. */
static int
s_publish(natsConnection *nc, unsigned char *buf, size_t size, uint64_t *seq, int n)
{
    for (int i = 0; i < n; i++) {
        memcpy(buf, seq, sizeof *seq);
        natsStatus st = natsConnection_Publish(nc, SUBJ_STREAM, buf, (int)size);
        if (st != NATS_OK) {
            s_say_nats("publisher", "publish", st);
            return -1;
        }
        (*seq)++;
    }
    return 0;
}

/*
 * Waits until every subscriber has seen sequence number `seq - 1`, or `max_ms` have passed, or
 * (when `quiet` is set) none has received anything for QUIET_MS.
 */
static void
s_wait_reached(peer_t *peers, int n, uint64_t seq, int max_ms, int quiet)
{
    uint64_t until = bu_now_ns() + (uint64_t)max_ms * 1000000u;
    uint64_t last = s_sum_received(peers, n), last_change = bu_now_ns();
    while (!bu_stopped() && !s_all_reached(peers, n, seq) && bu_now_ns() < until) {
        usleep(1000);
        uint64_t r = s_sum_received(peers, n);
        if (r != last) {
            last = r;
            last_change = bu_now_ns();
        } else if (quiet && bu_now_ns() - last_change > (uint64_t)QUIET_MS * 1000000u) {
            return;
        }
    }
}

/* ---- CPU time ---------------------------------------------------------------------------- */

static cpu_t
s_cpu_now(const pid_t *children, int n, pid_t server)
{
    return (cpu_t){bu_cpu_self_us(), bu_cpu_pids_us(children, n),
                   server > 0 ? bu_cpu_pid_us(server) : -1};
}

/* ---- Driver ------------------------------------------------------------------------------ */

static void
s_usage(FILE *f)
{
    fprintf(
        f,
        "usage: bench_nats call|stream|fanout --url tls://127.0.0.1:PORT --ca F --cert F --key F\n"
        "                  [--size B] [--seconds S] [--warmup N] [--inflight N] [--latency]\n"
        "                  [--subscribers N] [--server-pid PID] [--buffered]\n"
        "  call            request/reply to a forked responder on " SUBJ_ECHO "\n"
        "  stream          one publisher to one subscriber process on " SUBJ_STREAM "\n"
        "  fanout          one publisher to --subscribers subscriber processes\n"
        "  --url URL       nats-server, tls://HOST:PORT (certificate name " EXPECTED_HOST ")\n"
        "  --ca F          CA bundle that issued the server's certificate\n"
        "  --cert F --key F  client certificate and key (every connection)\n"
        "  --size B        payload bytes, %d .. %d (default 100)\n"
        "  --seconds S     measured window (default 3)\n"
        "  --warmup N      messages or calls before the window (default 2000)\n"
        "  --inflight N    call: requests in flight (default 100)\n"
        "  --latency       call: exactly 1 in flight, scenario call-latency\n"
        "  --subscribers N fanout: subscriber connections (default 10)\n"
        "  --server-pid P  report nats-server's CPU time per message over the window\n"
        "  --buffered      stream, fanout: publish through the library's write buffer\n"
        "                  instead of sending each message at once (SendAsap)\n",
        STAMP_LEN, MAX_SIZE);
}

/* Parses the command line into *o. Returns 0, or -1 after naming the fault. */
static int
s_parse(int argc, char **argv, opts_t *o)
{
    static const struct option longopts[] = {{"url", required_argument, NULL, 'u'},
                                             {"ca", required_argument, NULL, 'A'},
                                             {"cert", required_argument, NULL, 'C'},
                                             {"key", required_argument, NULL, 'K'},
                                             {"size", required_argument, NULL, 's'},
                                             {"seconds", required_argument, NULL, 'S'},
                                             {"warmup", required_argument, NULL, 'w'},
                                             {"inflight", required_argument, NULL, 'n'},
                                             {"latency", no_argument, NULL, 'l'},
                                             {"subscribers", required_argument, NULL, 'N'},
                                             {"server-pid", required_argument, NULL, 'p'},
                                             {"buffered", no_argument, NULL, 'b'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    *o = (opts_t){.size = 100, .seconds = 3, .warmup = 2000, .inflight = -1, .subscribers = -1};
    int ch;
    long v;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'u':
            o->url = optarg;
            break;
        case 'A':
            o->ca = optarg;
            break;
        case 'C':
            o->cert = optarg;
            break;
        case 'K':
            o->key = optarg;
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
            if (bu_parse_long(PROG, optarg, "--warmup", 0, MAX_WARMUP, &o->warmup))
                return -1;
            break;
        case 'n':
            if (bu_parse_long(PROG, optarg, "--inflight", 1, MAX_INFLIGHT, &v))
                return -1;
            o->inflight = (int)v;
            break;
        case 'l':
            o->latency = 1;
            break;
        case 'N':
            if (bu_parse_long(PROG, optarg, "--subscribers", 1, MAX_SUBSCRIBERS, &v))
                return -1;
            o->subscribers = (int)v;
            break;
        case 'p':
            if (bu_parse_long(PROG, optarg, "--server-pid", 1, INT32_MAX, &v))
                return -1;
            o->server_pid = (pid_t)v;
            break;
        case 'b':
            o->buffered = 1;
            break;
        case 'h':
            s_usage(stdout);
            exit(0);
        default: /* getopt_long has named the option */
            s_usage(stderr);
            return -1;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "bench_nats: %s\n",
                optind == argc ? "the mode (call, stream or fanout) is missing"
                               : "exactly one mode argument expected");
        s_usage(stderr);
        return -1;
    }
    const char *mode = argv[optind];
    if (strcmp(mode, "call") == 0)
        o->mode = MODE_CALL;
    else if (strcmp(mode, "stream") == 0)
        o->mode = MODE_STREAM;
    else if (strcmp(mode, "fanout") == 0)
        o->mode = MODE_FANOUT;
    else {
        fprintf(stderr, "bench_nats: the mode is call, stream or fanout, not '%s'\n", mode);
        return -1;
    }
    const char *missing = !o->url    ? "--url"
                          : !o->ca   ? "--ca"
                          : !o->cert ? "--cert"
                          : !o->key  ? "--key"
                                     : NULL;
    if (missing) {
        fprintf(stderr, "bench_nats: %s is required\n", missing);
        return -1;
    }
    if (o->mode == MODE_CALL) {
        if (o->subscribers > 0 || o->buffered) {
            fprintf(stderr, "bench_nats: %s is for stream and fanout, not call\n",
                    o->buffered ? "--buffered" : "--subscribers");
            return -1;
        }
        if (o->latency && o->inflight > 1) {
            fprintf(stderr,
                    "bench_nats: --latency means exactly 1 call in flight, not --inflight "
                    "%d\n",
                    o->inflight);
            return -1;
        }
        o->inflight = o->latency ? 1 : o->inflight < 0 ? 100 : o->inflight;
    } else {
        if (o->latency || o->inflight > 0) {
            fprintf(stderr, "bench_nats: %s is for call, not %s\n",
                    o->latency ? "--latency" : "--inflight", mode);
            return -1;
        }
        if (o->mode == MODE_STREAM && o->subscribers > 1) {
            fprintf(stderr, "bench_nats: stream has one subscriber; --subscribers is for fanout\n");
            return -1;
        }
        o->subscribers = o->mode == MODE_STREAM ? 1 : o->subscribers < 0 ? 10 : o->subscribers;
        o->inflight = 0;
    }
    return 0;
}

/* The call scenarios. Returns the exit status; prints the result line when anything completed. */
static int
s_run_call(const opts_t *o, peer_t *peer)
{
    static caller_t c;
    c.o = o;
    c.maxlat = (long)fmin(o->seconds * LAT_PER_S, (double)MAX_LAT);
    c.slots = calloc((size_t)o->inflight, sizeof *c.slots);
    c.free_slots = calloc((size_t)o->inflight, sizeof *c.free_slots);
    c.req = malloc(o->size);
    c.lat = malloc((size_t)c.maxlat * sizeof *c.lat);
    if (!c.slots || !c.free_slots || !c.req || !c.lat) {
        fprintf(stderr, "bench_nats: out of memory\n");
        return 1;
    }
    memset(c.lat, 0, (size_t)c.maxlat * sizeof *c.lat); /* fault the pages in before measuring */
    bu_fill_pattern(c.req, o->size);
    for (int i = 0; i < o->inflight; i++) {
        snprintf(c.slots[i].reply, sizeof c.slots[i].reply, INBOX_PREFIX "%d", i);
        c.free_slots[o->inflight - 1 - i] = (uint32_t)i;
    }
    c.nfree = o->inflight;

    int ctl = -1;
    pid_t child = s_spawn(o, peer, &ctl, NULL, 0);
    if (child < 0)
        return 1;
    int rc = -1;
    c.nc = s_connect(o, "caller", true, NULL);
    if (c.nc) {
        natsStatus st = natsConnection_SubscribeSync(&c.inbox, c.nc, INBOX_PREFIX "*");
        if (st == NATS_OK)
            st = s_generous(c.inbox);
        if (st == NATS_OK)
            st = natsConnection_FlushTimeout(c.nc, CONNECT_MS);
        if (st == NATS_OK && (int64_t)o->size > natsConnection_GetMaxPayload(c.nc)) {
            fprintf(stderr, "bench_nats: --size %zu exceeds the server's max_payload %lld\n",
                    o->size, (long long)natsConnection_GetMaxPayload(c.nc));
            st = NATS_MAX_PAYLOAD;
        } else if (st != NATS_OK) {
            s_say_nats("caller", "subscribe " INBOX_PREFIX "*", st);
        }
        rc = st == NATS_OK ? 0 : -1;
    }

    if (rc == 0 && o->warmup > 0)
        rc = s_caller_phase(&c, o->warmup, bu_now_ns() + (uint64_t)WARMUP_MS * 1000000u);
    if (rc == 0 && c.errors > 0) {
        fprintf(stderr, "bench_nats: %ld errors in the warmup: %s\n", c.errors, c.first_error);
        rc = -1;
    }
    uint64_t t0 = bu_now_ns(), t1 = t0;
    cpu_t c0 = {0}, c1 = {0};
    if (rc == 0) {
        c.sent = c.completed = c.errors = c.stalls = 0;
        c.record = 1;
        c0 = s_cpu_now(&child, 1, o->server_pid);
        t0 = c.last_done_ns = bu_now_ns();
        rc = s_caller_phase(&c, LONG_MAX, t0 + (uint64_t)(o->seconds * 1e9));
        t1 = c.last_done_ns;
        c1 = s_cpu_now(&child, 1, o->server_pid);
    }
    natsSubscription_Destroy(c.inbox);
    natsConnection_Destroy(c.nc);
    bu_reap(PROG, &child, &ctl, 1);
    nats_Close();
    long child_errors = (long)atomic_load(&peer->errors);
    if (child_errors > 0)
        fprintf(stderr, "bench_nats: responder: %ld errors; first: %s\n", child_errors,
                peer->first_error);
    if (rc != 0 && c.completed == 0) {
        if (c.first_error[0])
            fprintf(stderr, "bench_nats: first error: %s\n", c.first_error);
        return 1;
    }

    bu_sort_u64(c.lat, c.nlat);
    long msgs = c.completed;
    bu_print_result(&(bu_result_t){
        .system = "nats",
        .scenario = o->latency ? "call-latency" : "call-throughput",
        .size = o->size,
        .inflight = o->inflight,
        .msgs = msgs,
        .seconds = (double)(t1 - t0) / 1e9,
        .lat = c.lat,
        .nlat = c.nlat,
        .errors = c.errors + child_errors,
        .sent = c.sent,
        .cpu_client_us = bu_cpu_per(c0.self + c0.children, c1.self + c1.children, msgs),
        .cpu_server_us = bu_cpu_per(c0.server, c1.server, msgs)});
    printf(" cpu_caller_us=%.2f cpu_responder_us=%.2f max_us=%.1f stalls=%ld lat_samples=%ld "
           "send_asap=1\n",
           bu_cpu_per(c0.self, c1.self, msgs), bu_cpu_per(c0.children, c1.children, msgs),
           bu_pct_us(c.lat, c.nlat, 1), c.stalls, c.nlat);
    if (c.errors > 0)
        fprintf(stderr, "bench_nats: %ld errors; first: %s\n", c.errors, c.first_error);
    return rc == 0 && c.errors == 0 && child_errors == 0 ? 0 : 1;
}

/* The stream and fanout scenarios. Returns the exit status. */
static int
s_run_stream(const opts_t *o, peer_t *peers)
{
    int n = o->subscribers;
    pid_t child[MAX_SUBSCRIBERS];
    int ctl[MAX_SUBSCRIBERS];
    int nchild = 0;
    unsigned char *buf = malloc(o->size);
    if (!buf) {
        fprintf(stderr, "bench_nats: out of memory\n");
        return 1;
    }
    bu_fill_pattern(buf, o->size);
    int rc = 0;
    for (; nchild < n; nchild++) {
        child[nchild] = s_spawn(o, &peers[nchild], &ctl[nchild], ctl, nchild);
        if (child[nchild] < 0) {
            rc = -1;
            break;
        }
    }
    peer_t pub = {0};
    natsConnection *nc = rc == 0 ? s_connect(o, "publisher", !o->buffered, &pub) : NULL;
    if (nc && (int64_t)o->size > natsConnection_GetMaxPayload(nc)) {
        fprintf(stderr, "bench_nats: --size %zu exceeds the server's max_payload %lld\n", o->size,
                (long long)natsConnection_GetMaxPayload(nc));
        rc = -1;
    }
    if (!nc)
        rc = -1;

    /* Warm-up: every subscriber must have seen the warm-up messages before the window opens. */
    uint64_t seq = 0;
    if (rc == 0 && o->warmup > 0) {
        rc = s_publish(nc, buf, o->size, &seq, (int)o->warmup);
        if (rc == 0 && natsConnection_FlushTimeout(nc, WARMUP_MS) != NATS_OK) {
            fprintf(stderr, "bench_nats: publisher: no flush of the warm-up in %d ms\n", WARMUP_MS);
            rc = -1;
        }
        if (rc == 0)
            s_wait_reached(peers, n, seq, WARMUP_MS, 0);
        for (int i = 0; rc == 0 && i < n; i++)
            if (atomic_load(&peers[i].received) != seq) {
                fprintf(
                    stderr, "bench_nats: subscriber %d received %llu of %llu warm-up messages\n", i,
                    (unsigned long long)atomic_load(&peers[i].received), (unsigned long long)seq);
                rc = -1;
            }
    }

    uint64_t t0 = bu_now_ns(), t1 = t0, r0 = 0, r1 = 0, first = seq;
    cpu_t c0 = {0}, c1 = {0};
    if (rc == 0) {
        c0 = s_cpu_now(child, nchild, o->server_pid);
        r0 = s_sum_received(peers, n);
        t0 = bu_now_ns();
        uint64_t end = t0 + (uint64_t)(o->seconds * 1e9);
        for (;;) {
            if (s_publish(nc, buf, o->size, &seq, 64) != 0) {
                rc = -1;
                break;
            }
            t1 = bu_now_ns();
            if (t1 >= end || bu_stopped())
                break;
        }
        r1 = s_sum_received(peers, n);
        c1 = s_cpu_now(child, nchild, o->server_pid);
    }
    /* Drain: what the subscribers still receive counts as not lost, but not in the rate. */
    if (nc && rc == 0) {
        uint64_t d0 = bu_now_ns();
        natsConnection_FlushTimeout(nc, DRAIN_MS);
        int left = DRAIN_MS - (int)((bu_now_ns() - d0) / 1000000u);
        s_wait_reached(peers, n, seq, left > 0 ? left : 0, 1);
    }
    atomic_store(&pub.closing, 1);
    natsConnection_Destroy(nc);
    bu_reap(PROG, child, ctl, nchild);
    nats_Close();
    free(buf);
    if (rc != 0 && r1 == r0)
        return 1;

    uint64_t sent = seq - first, msgs = r1 - r0, lost = 0, gaps = 0, errors = 0, slow = 0;
    int64_t dropped = 0;
    int lost_conn = 0;
    for (int i = 0; i < n; i++) {
        peer_t *p = &peers[i];
        lost += seq - atomic_load(&p->received);
        gaps += atomic_load(&p->gaps);
        dropped += atomic_load(&p->dropped);
        slow += atomic_load(&p->slow);
        lost_conn += atomic_load(&p->lost_connection);
        uint64_t e = atomic_load(&p->errors);
        if (e > 0)
            fprintf(stderr, "bench_nats: subscriber %d: %llu errors; first: %s\n", i,
                    (unsigned long long)e, p->first_error);
        errors += e;
    }
    if (atomic_load(&pub.errors) > 0) {
        fprintf(stderr, "bench_nats: publisher: %s\n", pub.first_error);
        errors += atomic_load(&pub.errors);
    }
    if (lost > 0)
        fprintf(stderr,
                "bench_nats: %llu of %llu messages lost over %d subscribers (%llu gaps in the "
                "sequence, %lld dropped by the library, %llu slow-consumer notices)\n",
                (unsigned long long)lost, (unsigned long long)(seq * (uint64_t)n), n,
                (unsigned long long)gaps, (long long)dropped, (unsigned long long)slow);
    double secs = (double)(t1 - t0) / 1e9;
    printf("result system=nats scenario=%s size=%zu inflight=0 msgs=%llu seconds=%.3f rate=%.0f "
           "p50_us=0 p99_us=0 p999_us=0 errors=%llu sent=%llu cpu_client_us=%.2f "
           "cpu_server_us=%.2f cpu_publisher_us=%.2f cpu_subscribers_us=%.2f lost=%llu gaps=%llu "
           "lib_dropped=%lld lost_connections=%d send_asap=%d",
           o->mode == MODE_STREAM ? "stream" : "fanout", o->size, (unsigned long long)msgs, secs,
           bu_rate((double)msgs, secs), (unsigned long long)errors, (unsigned long long)sent,
           bu_cpu_per(c0.self + c0.children, c1.self + c1.children, msgs),
           bu_cpu_per(c0.server, c1.server, msgs), bu_cpu_per(c0.self, c1.self, msgs),
           bu_cpu_per(c0.children, c1.children, msgs), (unsigned long long)lost,
           (unsigned long long)gaps, (long long)dropped, lost_conn, !o->buffered);
    if (o->mode == MODE_FANOUT)
        printf(" subscribers=%d deliveries=%llu published_per_s=%.0f", n, (unsigned long long)msgs,
               bu_rate((double)sent, secs));
    printf("\n");
    return rc == 0 && errors == 0 ? 0 : 1;
}

int
main(int argc, char **argv)
{
    opts_t o;
    if (s_parse(argc, argv, &o) != 0)
        return 2;

    bu_signals();
    /* Hard bound on the whole run: connect, warm-up, window, drain and reaping fit well inside. */
    alarm((unsigned)o.seconds + 25);

    /* One shared page of counters per child, mapped before the fork. */
    int npeers = o.mode == MODE_CALL ? 1 : o.subscribers;
    peer_t *peers = mmap(NULL, (size_t)npeers * sizeof *peers, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (peers == MAP_FAILED) {
        perror("bench_nats: mmap");
        return 1;
    }
    return o.mode == MODE_CALL ? s_run_call(&o, peers) : s_run_stream(&o, peers);
}
