/*
 * bench_flood.c - how much one flooding participant slows another participant's calls, through
 * the real broker over mutual TLS.
 *
 *   bench_flood --broker tls://127.0.0.1:PORT --pki DIR [options]
 *
 * Forked children, each its own client process with its own certificate from the --pki
 * directory (certs/pki.sh):
 *   - provider (kommune.bench.worker): offers bench.v1.Echo/Echo and echoes every payload, for
 *     the whole run;
 *   - victim (bund.victim): a modest steady load, by default a closed loop of --victim-inflight
 *     (4) calls in flight, or with --victim-rate R calls started on a fixed schedule, R per
 *     second (latency then counts from the scheduled time, so a stall is not hidden by the
 *     victim waiting for it); every latency goes into a preallocated array shared with the
 *     parent;
 *   - flooder (bund.flood, phase B only): --flood-inflight calls in flight, each re-issued from
 *     its completion callback as soon as it ends, whether answered or refused with RATE_LIMITED;
 *     it counts answered, RATE_LIMITED and other outcomes.
 *
 * Each repetition runs phase A (victim alone) and phase B (victim while the flooder floods), in
 * alternating order, each for --seconds. In phase B the flooder starts first and floods for
 * --ramp-ms before the victim connects. One `result` line per phase, then a `summary` line:
 *   result phase=A rep=1 calls=... errors=0 p50_us=... p99_us=... ...
 *   summary reps=3 p50_a_us=... p99_a_us=... p50_b_us=... p99_b_us=... p99_ratio=... ...
 * p99_ratio is the median over the repetitions of (p99 in B / p99 in A) of the same repetition,
 * whose two phases ran next to each other; p50_ratio the same for the median. The flooder's rates
 * are per second of the victim's measured window. Diagnostics go to stderr. Exit status 0 only when
 * the victim saw no error at all (a RATE_LIMITED for the victim is an error too) and every phase
 * ran.
 *
 * Every payload carries who sent it (4 bytes), its slot and a sequence number in its first
 * STAMP_LEN bytes; an echo with the wrong length or stamp counts as an error (victim) or as
 * `other` (flooder).
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "amtsbote.h"
#include "bench_ab.h"
#include "bench_util.h"

#define PROG "bench_flood"
#define SERVICE "bench.v1.Echo/Echo"
#define PROVIDER_ID "kommune.bench.worker"
#define VICTIM_ID "bund.victim"
#define FLOOD_ID "bund.flood"
#define MAGIC_VICTIM 0x56494354u /* "VICT" */
#define MAGIC_FLOOD 0x464c4f44u  /* "FLOD" */
/* magic, slot, sequence */
#define STAMP_LEN 12
#define MAX_SLOTS 100000
#define MAX_REPS 100
/* Longest poll() wait; a wait this long with calls in flight is counted as a stall. */
#define POLL_CAP_MS 100
/* How long the victim's calls still in flight after its window may take to finish. */
#define DRAIN_MS 10000
/* How long the flooder's calls still in flight after it was told to stop may take. */
#define FLOOD_DRAIN_MS 2000

typedef struct {
    const char *uri;
    const char *pki;
    double seconds;
    int reps;
    size_t size;
    int victim_inflight;
    long victim_rate; /* calls per second; 0: closed loop */
    long warmup;
    int flood_inflight;
    int ramp_ms;
    int timeout_ms;
    long max_samples;
    pid_t broker_pid; /* for its CPU time per phase; 0: not measured */
    int b_first;      /* phase B first in odd repetitions */
} opts_t;

/* What the children tell the parent, in memory shared across fork(). The flooder's counters are
 * read by the parent while it runs (relaxed atomics: each is a count on its own). */
typedef struct {
    long v_calls, v_errors, v_stalls, v_nlat, v_late;
    uint64_t v_t0, v_t1;
    char v_first_error[256];
    long f_sent, f_ok, f_limited, f_other;
    char f_first_other[256];
    uint64_t lat[]; /* the victim's latencies in ns, o.max_samples of them */
} shared_t;

/* One client's calls: the victim's or the flooder's. */
typedef struct caller caller_t;

typedef struct {
    caller_t *k;
    uint32_t idx, seq;
    uint64_t t0;
} slot_t;

struct caller {
    const opts_t *o;
    shared_t *sh;
    ab_client_t *c;
    uint32_t magic;
    int nslots;
    slot_t *slots;
    uint32_t *free_slots;
    int nfree;
    unsigned char *req;
    int record;     /* victim: latencies go into sh->lat */
    int stopping;   /* flooder: no more re-issues */
    long completed; /* victim: in this stage */
};

/* ---- the callers' common part ------------------------------------------------------------ */

/* A connected client for `who`, or NULL after saying why on stderr. */
static ab_client_t *
s_connect(const opts_t *o, const char *who)
{
    ab_client_t *c = ab_client_new();
    int rc = c ? bench_ab_pki_identity(c, o->pki, who) : AB_ENOMEM;
    if (rc == 0)
        rc = ab_client_connect(c, o->uri, 10000);
    if (rc != 0) {
        fprintf(stderr, PROG ": %s: connect %s: %s: %s\n", who, o->uri, ab_err_name(rc),
                c ? ab_client_last_error(c) : "out of memory");
        ab_client_destroy(&c);
    }
    return c;
}

/* Disconnects `k` and frees what s_caller_init() allocated. */
static void
s_caller_free(caller_t *k)
{
    ab_client_destroy(&k->c);
    free(k->slots);
    free(k->free_slots);
    free(k->req);
}

/* Sets up `k` with `n` slots; returns 0, or -1 when out of memory. */
static int
s_caller_init(caller_t *k, const opts_t *o, shared_t *sh, uint32_t magic, int n)
{
    *k = (caller_t){.o = o, .sh = sh, .magic = magic, .nslots = n};
    k->slots = calloc((size_t)n, sizeof *k->slots);
    k->free_slots = calloc((size_t)n, sizeof *k->free_slots);
    k->req = malloc(o->size);
    if (!k->slots || !k->free_slots || !k->req) {
        fprintf(stderr, PROG ": out of memory\n");
        s_caller_free(k);
        return -1;
    }
    bu_fill_pattern(k->req, o->size);
    bu_put32(k->req, magic);
    for (int i = 0; i < n; i++) {
        k->slots[i] = (slot_t){.k = k, .idx = (uint32_t)i};
        k->free_slots[n - 1 - i] = (uint32_t)i;
    }
    k->nfree = n;
    return 0;
}

/* Takes an idle slot and stamps the request buffer for it; its clock starts at `t0`. */
static slot_t *
s_slot_take(caller_t *k, uint64_t t0)
{
    slot_t *s = &k->slots[k->free_slots[--k->nfree]];
    s->seq++;
    s->t0 = t0;
    bu_put32(k->req + 4, s->idx);
    bu_put32(k->req + 8, s->seq);
    return s;
}

static void
s_slot_release(caller_t *k, slot_t *s)
{
    k->free_slots[k->nfree++] = s->idx;
}

/* Whether `reply` is the echo of what slot `s` sent; NULL when it is, else what is wrong. */
static const char *
s_check_echo(const caller_t *k, const slot_t *s, const unsigned char *reply, size_t len)
{
    if (len != k->o->size)
        return "echo has the wrong length";
    if (bu_get32(reply) != k->magic)
        return "echo carries another participant's stamp";
    if (bu_get32(reply + 4) != s->idx || bu_get32(reply + 8) != s->seq)
        return "echo does not carry the request's stamp";
    return NULL;
}

/* ---- the provider ------------------------------------------------------------------------ */

/* bu_child_fn: offers the echo service and serves it until `ctl` closes. */
static int
s_provider_child(void *arg, int ready_fd, int ctl)
{
    const opts_t *o = arg;
    ab_client_t *c = ab_client_new();
    int rc = c ? bench_ab_pki_identity(c, o->pki, PROVIDER_ID) : AB_ENOMEM;
    if (rc == 0)
        rc = ab_client_connect(c, o->uri, 10000);
    if (rc == 0)
        rc = ab_offer(c, SERVICE, bench_ab_echo, NULL);
    return bench_ab_serve(c, rc, ready_fd, ctl, PROG);
}

/* ---- the victim -------------------------------------------------------------------------- */

static void
s_victim_error(shared_t *sh, const char *what, const char *detail)
{
    sh->v_errors++;
    if (!sh->v_first_error[0])
        snprintf(sh->v_first_error, sizeof sh->v_first_error, "%s%s%s", what, detail ? ": " : "",
                 detail ? detail : "");
}

static void
s_victim_done(ab_client_t *client, int status, const void *reply, size_t len, const char *errtext,
              void *arg)
{
    (void)client;
    slot_t *s = arg;
    caller_t *k = s->k;
    uint64_t now = bu_now_ns();
    if (status != 0) {
        char why[200];
        snprintf(why, sizeof why, "%s%s%s", ab_err_name(status), errtext && errtext[0] ? ": " : "",
                 errtext ? errtext : "");
        s_victim_error(k->sh, "call failed", why);
    } else {
        const char *bad = s_check_echo(k, s, reply, len);
        if (bad)
            s_victim_error(k->sh, bad, NULL);
        else if (k->record && k->sh->v_nlat < k->o->max_samples)
            k->sh->lat[k->sh->v_nlat++] = now - s->t0;
    }
    k->completed++;
    s_slot_release(k, s);
}

/*
 * Calls until `end_ns` (or `limit` calls when it is positive), closed loop or paced, then waits
 * for the calls still in flight. Returns 0, or -1 when the client library failed or calls did not
 * end within DRAIN_MS.
 */
static int
s_victim_stage(caller_t *k, uint64_t end_ns, long limit)
{
    const opts_t *o = k->o;
    uint64_t period = o->victim_rate ? 1000000000u / (uint64_t)o->victim_rate : 0;
    uint64_t due = bu_now_ns();
    long sent = 0;
    for (;;) {
        uint64_t now = bu_now_ns();
        int may_send = !bu_stopped() && now < end_ns && (limit <= 0 || sent < limit);
        while (may_send && k->nfree > 0 && (!period || due <= now) &&
               (limit <= 0 || sent < limit)) {
            slot_t *s = s_slot_take(k, period ? due : now);
            int rc = ab_call_async(k->c, SERVICE, k->req, o->size, o->timeout_ms, s_victim_done, s);
            if (rc != 0) {
                fprintf(stderr, PROG ": victim: ab_call_async: %s: %s\n", ab_err_name(rc),
                        ab_client_last_error(k->c));
                s_slot_release(k, s);
                return -1;
            }
            sent++;
            if (period) {
                due += period;
                if (k->record && due + period <= now)
                    k->sh->v_late++; /* every slot busy when this call was due */
            }
        }
        int in_flight = k->nslots - k->nfree;
        if (!may_send && in_flight == 0)
            return 0;
        if (!may_send && now > end_ns + (uint64_t)DRAIN_MS * 1000000u) {
            s_victim_error(k->sh, "no answer within the drain time", NULL);
            k->sh->v_errors += in_flight - 1;
            return -1;
        }
        long before = k->completed;
        int rc = ab_client_process(k->c);
        if (rc < 0) {
            fprintf(stderr, PROG ": victim: ab_client_process: %s: %s\n", ab_err_name(rc),
                    ab_client_last_error(k->c));
            return -1;
        }
        if (rc > 0 || k->completed != before)
            continue; /* more to read, or slots to fill before waiting */
        /* wait in nanoseconds: a paced call's latency counts from its due time, so waking up
         * to a millisecond late would be counted against the broker */
        uint64_t wait = (uint64_t)POLL_CAP_MS * 1000000u;
        int ti = ab_client_next_timeout(k->c);
        if (ti >= 0 && (uint64_t)ti * 1000000u < wait)
            wait = (uint64_t)ti * 1000000u;
        if (may_send) {
            uint64_t until = period && k->nfree > 0 && due < end_ns ? due : end_ns;
            uint64_t left = until > now ? until - now : 0;
            if (left < wait)
                wait = left;
        }
        struct pollfd p = {ab_client_fd(k->c), POLLIN, 0};
        struct timespec ts = {(time_t)(wait / 1000000000u), (long)(wait % 1000000000u)};
        rc = ppoll(&p, 1, &ts, NULL);
        if (rc < 0 && errno != EINTR) {
            perror(PROG ": victim: poll");
            return -1;
        }
        if (rc == 0 && wait == (uint64_t)POLL_CAP_MS * 1000000u && in_flight > 0 && k->record)
            k->sh->v_stalls++;
    }
}

typedef struct {
    const opts_t *o;
    shared_t *sh;
} child_arg_t;

/* bu_child_fn: connects, warms up, says ready, measures for --seconds, leaves its results in the
 * shared memory and exits. */
static int
s_victim_child(void *arg, int ready_fd, int ctl)
{
    (void)ctl;
    const child_arg_t *a = arg;
    const opts_t *o = a->o;
    caller_t k;
    if (s_caller_init(&k, o, a->sh, MAGIC_VICTIM, o->victim_inflight) != 0) {
        (void)!write(ready_fd, "F", 1);
        return 1;
    }
    k.c = s_connect(o, VICTIM_ID);
    int rc = k.c ? 0 : -1;
    if (rc == 0 && o->warmup > 0)
        rc = s_victim_stage(&k, bu_now_ns() + 10000000000u, o->warmup);
    if (rc == 0 && a->sh->v_errors > 0) {
        fprintf(stderr, PROG ": victim: %ld errors in the warm-up: %s\n", a->sh->v_errors,
                a->sh->v_first_error);
        rc = -1;
    }
    if (rc != 0) {
        (void)!write(ready_fd, "F", 1);
        s_caller_free(&k);
        return 1;
    }
    a->sh->v_errors = 0;
    a->sh->v_first_error[0] = 0;
    k.completed = 0;
    k.record = 1;
    (void)!write(ready_fd, "R", 1);
    close(ready_fd);
    uint64_t t0 = bu_now_ns();
    rc = s_victim_stage(&k, t0 + (uint64_t)(o->seconds * 1e9), 0);
    a->sh->v_t0 = t0;
    a->sh->v_t1 = bu_now_ns();
    a->sh->v_calls = k.completed;
    s_caller_free(&k);
    return rc == 0 ? 0 : 1;
}

/* ---- the flooder ------------------------------------------------------------------------- */

static long
s_load(long *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void s_flood_done(ab_client_t *client, int status, const void *reply, size_t len,
                         const char *errtext, void *arg);

/* Starts a call on slot `s`; returns 0 or the AB_E* code of ab_call_async(). */
static int
s_flood_issue(caller_t *k, slot_t *s)
{
    s->seq++;
    bu_put32(k->req + 4, s->idx);
    bu_put32(k->req + 8, s->seq);
    __atomic_add_fetch(&k->sh->f_sent, 1, __ATOMIC_RELAXED);
    return ab_call_async(k->c, SERVICE, k->req, k->o->size, k->o->timeout_ms, s_flood_done, s);
}

static void
s_flood_done(ab_client_t *client, int status, const void *reply, size_t len, const char *errtext,
             void *arg)
{
    (void)client;
    slot_t *s = arg;
    caller_t *k = s->k;
    shared_t *sh = k->sh;
    const char *bad = status == 0 ? s_check_echo(k, s, reply, len) : NULL;
    if (status == 0 && !bad) {
        __atomic_add_fetch(&sh->f_ok, 1, __ATOMIC_RELAXED);
    } else if (status == AB_ERATE_LIMITED) {
        __atomic_add_fetch(&sh->f_limited, 1, __ATOMIC_RELAXED);
    } else {
        if (__atomic_add_fetch(&sh->f_other, 1, __ATOMIC_RELAXED) == 1)
            snprintf(sh->f_first_other, sizeof sh->f_first_other, "%s%s%s",
                     bad ? bad : ab_err_name(status), !bad && errtext && errtext[0] ? ": " : "",
                     !bad && errtext ? errtext : "");
    }
    if (k->stopping || s_flood_issue(k, s) != 0)
        s_slot_release(k, s);
}

/* How many of the flooder's calls have ended, whichever way. */
static long
s_flood_ended(shared_t *sh)
{
    return s_load(&sh->f_ok) + s_load(&sh->f_limited) + s_load(&sh->f_other);
}

/* bu_child_fn: connects, says ready, floods until `ctl` closes, waits briefly for its calls still
 * in flight and exits. */
static int
s_flood_child(void *arg, int ready_fd, int ctl)
{
    const child_arg_t *a = arg;
    const opts_t *o = a->o;
    caller_t k;
    if (s_caller_init(&k, o, a->sh, MAGIC_FLOOD, o->flood_inflight) != 0) {
        (void)!write(ready_fd, "F", 1);
        return 1;
    }
    k.c = s_connect(o, FLOOD_ID);
    if (!k.c) {
        (void)!write(ready_fd, "F", 1);
        s_caller_free(&k);
        return 1;
    }
    (void)!write(ready_fd, "R", 1);
    close(ready_fd);
    while (k.nfree > 0) {
        slot_t *s = &k.slots[k.free_slots[--k.nfree]];
        int rc = s_flood_issue(&k, s);
        if (rc != 0) {
            fprintf(stderr, PROG ": flooder: ab_call_async: %s: %s\n", ab_err_name(rc),
                    ab_client_last_error(k.c));
            s_slot_release(&k, s);
            break;
        }
    }
    uint64_t stop_by = 0;
    int status = 0;
    for (;;) {
        long before = s_flood_ended(a->sh);
        int rc = ab_client_process(k.c);
        if (rc < 0) {
            fprintf(stderr, PROG ": flooder: ab_client_process: %s: %s\n", ab_err_name(rc),
                    ab_client_last_error(k.c));
            status = 1;
            break;
        }
        if (k.stopping && k.nfree == k.nslots)
            break;
        if (stop_by && bu_now_ns() > stop_by)
            break; /* what is still in flight no longer matters: the victim has its numbers */
        int busy = rc > 0 || s_flood_ended(a->sh) != before;
        if (busy && k.stopping)
            continue;
        /* Busy, only a look at the control pipe (a flood may never leave the client idle);
         * idle, a wait for the client or the pipe; stopping, for the client alone. */
        struct pollfd p[2] = {{ctl, POLLIN, 0}, {ab_client_fd(k.c), POLLIN, 0}};
        int t = busy ? 0 : ab_client_next_timeout(k.c);
        if (t < 0 || t > POLL_CAP_MS)
            t = POLL_CAP_MS;
        if (poll(k.stopping ? p + 1 : p, busy || k.stopping ? 1 : 2, t) < 0 && errno != EINTR)
            break;
        if (!k.stopping && (p[0].revents || bu_stopped())) {
            k.stopping = 1;
            stop_by = bu_now_ns() + (uint64_t)FLOOD_DRAIN_MS * 1000000u;
        }
    }
    s_caller_free(&k);
    return status;
}

/* ---- the driver -------------------------------------------------------------------------- */

typedef struct {
    double p50, p99, p999, max;
    long calls, errors;
    double flood_ok_s, flood_limited_s, flood_other_s;
    int ok;
} phase_t;

static void
s_usage(FILE *f)
{
    fprintf(f,
            "usage: bench_flood --broker tls://HOST:PORT --pki DIR [options]\n"
            "  --seconds S          each phase's measured window (default 3)\n"
            "  --reps N             repetitions of phase A (victim alone) and B (with the\n"
            "                       flooder), alternating their order (default 3)\n"
            "  --size BYTES         payload of every call, >= %d (default 100)\n"
            "  --victim-inflight N  the victim's calls in flight (default 4)\n"
            "  --victim-rate R      instead: start the victim's calls at R per second (at most\n"
            "                       --victim-inflight at once), latency counted from the\n"
            "                       scheduled time; 0: closed loop (default)\n"
            "  --warmup N           the victim's unmeasured calls first (default 200)\n"
            "  --flood-inflight N   the flooder's calls in flight (default 500)\n"
            "  --ramp-ms MS         the flooder floods this long before the victim starts\n"
            "                       (default 500)\n"
            "  --timeout-ms MS      every call's deadline (default 10000)\n"
            "  --broker-pid PID     also report the broker's CPU use in each phase\n"
            "  --b-first            phase B first in odd repetitions (default: A first)\n"
            "  --pki DIR            certs/pki.sh directory with " PROVIDER_ID ", " VICTIM_ID
            " and " FLOOD_ID "\n",
            STAMP_LEN);
}

static int
s_parse(int argc, char **argv, opts_t *o)
{
    static const struct option longopts[] = {{"broker", required_argument, NULL, 'b'},
                                             {"pki", required_argument, NULL, 'P'},
                                             {"seconds", required_argument, NULL, 'S'},
                                             {"reps", required_argument, NULL, 'r'},
                                             {"size", required_argument, NULL, 's'},
                                             {"victim-inflight", required_argument, NULL, 'v'},
                                             {"victim-rate", required_argument, NULL, 'V'},
                                             {"warmup", required_argument, NULL, 'w'},
                                             {"flood-inflight", required_argument, NULL, 'f'},
                                             {"ramp-ms", required_argument, NULL, 'R'},
                                             {"timeout-ms", required_argument, NULL, 't'},
                                             {"broker-pid", required_argument, NULL, 'p'},
                                             {"b-first", no_argument, NULL, 'B'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    *o = (opts_t){.seconds = 3,
                  .reps = 3,
                  .size = 100,
                  .victim_inflight = 4,
                  .warmup = 200,
                  .flood_inflight = 500,
                  .ramp_ms = 500,
                  .timeout_ms = 10000};
    int ch;
    long v;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'b':
            o->uri = optarg;
            break;
        case 'P':
            o->pki = optarg;
            break;
        case 'S':
            if (bu_parse_seconds(PROG, optarg, &o->seconds))
                return -1;
            break;
        case 'r':
            if (bu_parse_long(PROG, optarg, "--reps", 1, MAX_REPS, &v))
                return -1;
            o->reps = (int)v;
            break;
        case 's':
            if (bu_parse_long(PROG, optarg, "--size", STAMP_LEN, 1024 * 1024, &v))
                return -1;
            o->size = (size_t)v;
            break;
        case 'v':
            if (bu_parse_long(PROG, optarg, "--victim-inflight", 1, MAX_SLOTS, &v))
                return -1;
            o->victim_inflight = (int)v;
            break;
        case 'V':
            if (bu_parse_long(PROG, optarg, "--victim-rate", 0, 1000000, &o->victim_rate))
                return -1;
            break;
        case 'w':
            if (bu_parse_long(PROG, optarg, "--warmup", 0, 1000000, &o->warmup))
                return -1;
            break;
        case 'f':
            if (bu_parse_long(PROG, optarg, "--flood-inflight", 1, MAX_SLOTS, &v))
                return -1;
            o->flood_inflight = (int)v;
            break;
        case 'R':
            if (bu_parse_long(PROG, optarg, "--ramp-ms", 0, 60000, &v))
                return -1;
            o->ramp_ms = (int)v;
            break;
        case 't':
            if (bu_parse_long(PROG, optarg, "--timeout-ms", 1, 600000, &v))
                return -1;
            o->timeout_ms = (int)v;
            break;
        case 'p':
            if (bu_parse_long(PROG, optarg, "--broker-pid", 1, INT32_MAX, &v))
                return -1;
            o->broker_pid = (pid_t)v;
            break;
        case 'B':
            o->b_first = 1;
            break;
        case 'h':
            s_usage(stdout);
            exit(0);
        default:
            s_usage(stderr);
            return -1;
        }
    }
    if (optind != argc || !o->uri || !o->pki) {
        s_usage(stderr);
        return -1;
    }
    if (strncmp(o->uri, "tls://", 6) != 0) {
        fprintf(stderr,
                PROG ": --broker must be a tls:// listener (every participant shows its "
                     "own certificate), not '%s'\n",
                o->uri);
        return -1;
    }
    /* room for every answered call the victim can make in a window, generously */
    o->max_samples = (long)(o->seconds * 200000) + 1;
    return 0;
}

/* Waits for `pid` to exit; returns its exit status, or -1 when it did not exit normally. */
static int
s_wait(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Runs one phase (flood: B) of repetition `rep` and prints its result line. */
static phase_t
s_phase(const opts_t *o, shared_t *sh, int rep, int flood, const int *keep_fds, int nkeep)
{
    phase_t r = {0};
    memset(sh, 0, sizeof *sh);
    child_arg_t arg = {o, sh};
    pid_t fpid = -1;
    int fctl = -1;
    if (flood) {
        bu_child_t c = {.prog = PROG,
                        .what = "flooder",
                        .run = s_flood_child,
                        .arg = &arg,
                        .alarm_s = (unsigned)(o->seconds + o->ramp_ms / 1000.0) + 90,
                        .ready_ms = 20000,
                        .close_fds = keep_fds,
                        .nclose = nkeep};
        fpid = bu_spawn(&c, &fctl);
        if (fpid < 0)
            return r;
        usleep((useconds_t)o->ramp_ms * 1000);
    }
    int closes[2] = {keep_fds[0], fctl};
    bu_child_t v = {.prog = PROG,
                    .what = "victim",
                    .run = s_victim_child,
                    .arg = &arg,
                    .alarm_s = (unsigned)o->seconds + 60,
                    .ready_ms = 30000,
                    .close_fds = closes,
                    .nclose = flood ? 2 : 1};
    int vctl = -1;
    pid_t vpid = bu_spawn(&v, &vctl);
    double fcpu0 = flood ? bu_cpu_pid_us(fpid) : 0;
    long f_ok0 = s_load(&sh->f_ok), f_lim0 = s_load(&sh->f_limited);
    long f_oth0 = s_load(&sh->f_other);
    double bcpu0 = o->broker_pid ? bu_cpu_pid_us(o->broker_pid) : -1;
    double fcpu1 = 0, bcpu1 = -1;
    int vst = -1;
    if (vpid > 0) {
        vst = s_wait(vpid);
        close(vctl);
        bcpu1 = o->broker_pid ? bu_cpu_pid_us(o->broker_pid) : -1;
        fcpu1 = flood ? bu_cpu_pid_us(fpid) : 0;
    }
    long f_ok = s_load(&sh->f_ok) - f_ok0, f_lim = s_load(&sh->f_limited) - f_lim0;
    long f_oth = s_load(&sh->f_other) - f_oth0;
    if (flood)
        bu_reap(PROG, &fpid, &fctl, 1);
    if (vpid < 0)
        return r;
    double secs = sh->v_t1 > sh->v_t0 ? (double)(sh->v_t1 - sh->v_t0) / 1e9 : 0;
    bu_sort_u64(sh->lat, sh->v_nlat);
    r.p50 = bu_pct_us(sh->lat, sh->v_nlat, 0.50);
    r.p99 = bu_pct_us(sh->lat, sh->v_nlat, 0.99);
    r.p999 = bu_pct_us(sh->lat, sh->v_nlat, 0.999);
    r.max = bu_pct_us(sh->lat, sh->v_nlat, 1);
    r.calls = sh->v_calls;
    r.errors = sh->v_errors;
    r.flood_ok_s = bu_rate((double)f_ok, secs);
    r.flood_limited_s = bu_rate((double)f_lim, secs);
    r.flood_other_s = bu_rate((double)f_oth, secs);
    r.ok = vst == 0 && sh->v_nlat > 0;
    printf("result phase=%s rep=%d victim_inflight=%d victim_rate=%ld size=%zu calls=%ld "
           "errors=%ld seconds=%.3f calls_per_s=%.0f p50_us=%.1f p99_us=%.1f p999_us=%.1f "
           "max_us=%.1f stalls=%ld late=%ld flood_inflight=%d flood_ok_per_s=%.0f "
           "flood_limited_per_s=%.0f flood_other_per_s=%.0f cpu_broker_pct=%.0f "
           "cpu_flooder_pct=%.0f\n",
           flood ? "B" : "A", rep, o->victim_inflight, o->victim_rate, o->size, r.calls, r.errors,
           secs, bu_rate((double)r.calls, secs), r.p50, r.p99, r.p999, r.max, sh->v_stalls,
           sh->v_late, flood ? o->flood_inflight : 0, r.flood_ok_s, r.flood_limited_s,
           r.flood_other_s,
           bcpu0 >= 0 && bcpu1 >= 0 && secs > 0 ? (bcpu1 - bcpu0) / (secs * 1e4) : -1,
           flood && secs > 0 ? (fcpu1 - fcpu0) / (secs * 1e4) : 0);
    fflush(stdout);
    if (r.errors)
        fprintf(stderr, PROG ": phase %s rep %d: the victim saw %ld errors; first: %s\n",
                flood ? "B" : "A", rep, r.errors, sh->v_first_error);
    if (flood && f_oth)
        fprintf(stderr, PROG ": phase B rep %d: the flooder saw %ld other outcomes; first: %s\n",
                rep, f_oth, sh->f_first_other);
    return r;
}

int
main(int argc, char **argv)
{
    opts_t o;
    if (s_parse(argc, argv, &o) != 0)
        return 2;
    bu_signals();
    bu_alarm_exit(PROG ": the run took too long; stopped by its alarm\n");
    /* Hard bound on the whole run: each phase is its window plus connect, warm-up and drain. */
    alarm((unsigned)(o.reps * 2 * (o.seconds + o.ramp_ms / 1000.0 + 30) + 60));

    size_t shsize = sizeof(shared_t) + (size_t)o.max_samples * sizeof(uint64_t);
    shared_t *sh = mmap(NULL, shsize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        perror(PROG ": mmap");
        return 1;
    }
    memset(sh, 0, shsize); /* fault the pages in before anything is measured */

    /* This process never makes a ZeroMQ context: it only forks and counts. */
    int pctl = -1;
    bu_child_t pc = {.prog = PROG,
                     .what = "provider",
                     .run = s_provider_child,
                     .arg = &o,
                     .alarm_s = (unsigned)(o.reps * 2 * (o.seconds + o.ramp_ms / 1000.0 + 30) + 90),
                     .ready_ms = 20000};
    pid_t ppid = bu_spawn(&pc, &pctl);
    if (ppid < 0)
        return 1;

    double p50a[MAX_REPS], p99a[MAX_REPS], p50b[MAX_REPS], p99b[MAX_REPS];
    double ratio[MAX_REPS], ratio50[MAX_REPS];
    double fok[MAX_REPS], flim[MAX_REPS];
    long verrors = 0;
    int failed = 0, n = 0;
    for (int rep = 1; rep <= o.reps && !bu_stopped(); rep++) {
        phase_t ph[2];
        for (int i = 0; i < 2; i++) {
            /* A first in odd repetitions and B in even ones, or the other way round */
            int flood = (rep % 2 == 1) != o.b_first ? i : !i;
            ph[flood] = s_phase(&o, sh, rep, flood, &pctl, 1);
            verrors += ph[flood].errors;
            usleep(300000); /* the broker settles: the flooder's last calls end */
        }
        if (!ph[0].ok || !ph[1].ok) {
            failed++;
            continue;
        }
        p50a[n] = ph[0].p50;
        p99a[n] = ph[0].p99;
        p50b[n] = ph[1].p50;
        p99b[n] = ph[1].p99;
        ratio[n] = ph[0].p99 > 0 ? ph[1].p99 / ph[0].p99 : 0;
        ratio50[n] = ph[0].p50 > 0 ? ph[1].p50 / ph[0].p50 : 0;
        fok[n] = ph[1].flood_ok_s;
        flim[n] = ph[1].flood_limited_s;
        n++;
    }
    bu_reap(PROG, &ppid, &pctl, 1);
    printf("summary reps=%d measured=%d failed=%d seconds=%.1f victim_errors=%ld p50_a_us=%.1f "
           "p99_a_us=%.1f p50_b_us=%.1f p99_b_us=%.1f p99_ratio=%.2f p50_ratio=%.2f "
           "flood_ok_per_s=%.0f flood_limited_per_s=%.0f\n",
           o.reps, n, failed, o.seconds, verrors, bu_median(p50a, n), bu_median(p99a, n),
           bu_median(p50b, n), bu_median(p99b, n), bu_median(ratio, n), bu_median(ratio50, n),
           bu_median(fok, n), bu_median(flim, n));
    if (failed)
        fprintf(stderr, PROG ": %d repetition(s) failed (see above)\n", failed);
    return failed == 0 && verrors == 0 && n > 0 ? 0 : 1;
}
