/*
 * soak_client.c - the load of tests/soak/run.sh: calls, mailboxes and events over mutual TLS
 * through one broker for a fixed time, by clients that come and go, with every message accounted
 * for and the broker's memory and descriptors sampled.
 *
 *   soak_client --broker tls://127.0.0.1:PORT --pki DIR --broker-pid PID --seconds N
 *               [--csv FILE] [--sample-ms MS] [--seed N] [rates]
 *
 * Participants (certificates in the certs/pki.sh directory --pki):
 *   bund.soak              callers of soak.v1.Echo/Echo, senders to the mailbox of
 *                          kommune.soak.inbox (which also take their DELIVERED receipts), and
 *                          publishers on soak.ev.a and soak.ev.b
 *   kommune.soak.provider  providers of soak.v1.Echo
 *   kommune.soak.inbox     takes its mailbox and acknowledges every message
 *   land.soak.stats        the durable subscription "soak" to soak.ev.>
 *   land.soak.watch        ephemeral subscriptions to soak.ev.*
 *
 * Every role has slots in a pool; a slot's client lives a random short time, leaves and is
 * replaced by a new connection (callers, senders and publishers stop and wait for what they have
 * in flight first; one provider in three leaves with calls unanswered, the others withdraw and
 * answer first; mailbox takers and the durable subscriber just close, so that what they held is
 * delivered again). Calls, SENDs and PUBLISHes are paced by a token bucket each.
 *
 * Calls carry an intent: most are echoed; some go to a service nobody offers (UNKNOWN_SERVICE),
 * some ask the provider for an error (PROVIDER_ERROR), some for a reply later than their deadline
 * (DEADLINE_EXCEEDED). Besides its intended code, a call may end with PROVIDER_ERROR (its
 * provider closed before answering), PROVIDER_GONE, UNKNOWN_SERVICE (no provider at that moment)
 * or DEADLINE_EXCEEDED: the churn's codes, counted. Any other outcome is a failure.
 *
 * Payloads (24 bytes to 64 KiB): bytes 0-7 this run's tag, 8-15 kind << 56 | sequence, 16-19 the
 * length, 20 the call's intent, the rest the pattern of bench_util. Each one received is checked
 * byte for byte; a mailbox message and a durable event also by the message id the broker gave
 * when it accepted it.
 *
 * At the end (after --seconds): no new work; what is in flight is awaited; every accepted
 * mailbox message must reach kommune.soak.inbox, its receipt bund.soak, and every accepted event
 * the durable subscription (bounded waits). Then every client closes and the broker, idle again,
 * is sampled once more.
 *
 * Every --sample-ms (default: 5 s, or 1/30 of the run, at least 1 s) a CSV row: seconds, phase,
 * the broker's VmRSS (KiB), open descriptors and threads, and this side's counters. Growth: the
 * median of the samples in the window after the warm-up (the larger of 2 minutes and 20 % of
 * the run) against the median of the last window (10 % of the run, at least 5 samples) must be
 * below 5 % for RSS and for descriptors. A run no longer than the warm-up reports the growth of
 * its first against its last window as informative only, and says so.
 *
 * Output: one summary line per figure on stdout, "soak: FAILED: ..." naming each failed check.
 * Exit status 0 when every check passed, 1 when one failed, 2 on a usage error. An alarm ends
 * the process --seconds + 180 s after it started, whatever hangs.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include <uthash.h>

#include "amtsbote.h"
#include "bench_util.h"

#define PROG "soak_client"
#define ID_CALLER "bund.soak"
#define ID_PROVIDER "kommune.soak.provider"
#define ID_RECIPIENT "kommune.soak.inbox"
#define ID_DURABLE "land.soak.stats"
#define ID_WATCH "land.soak.watch"
#define SERVICE "soak.v1.Echo"
#define METHOD "soak.v1.Echo/Echo"
#define UNKNOWN_METHOD "soak.v1.Nobody/Echo"
#define DURABLE_NAME "soak"
#define DURABLE_PATTERN "soak.ev.>"
#define EPHEMERAL_PATTERN "soak.ev.*"

#define HDR_LEN 24
#define MAX_LEN 65536
#define CONNECT_MS 10000
#define CALL_MS 5000      /* deadline of a call meant to succeed */
#define SLOW_CALL_MS 200  /* deadline of a call whose provider answers after SLOW_REPLY_MS */
#define SLOW_REPLY_MS 600 /* (the late reply exercises the broker's late-reply path) */
#define MAX_DEFER 256
#define WINDOW 4             /* calls, SENDs or PUBLISHes in flight per client */
#define LEAVE_MAX_MS 40000   /* a client that stops waits this long for its answers */
#define PROVIDER_TAIL_MS 300 /* a withdrawn provider stays this long for calls on their way */
#define EPH_TAIL_MS 1000     /* an ephemeral subscriber stops counting, then takes this long */
#define FINAL_MAX_MS 60000   /* the end: waiting for deliveries, receipts and durable events */
#define IDLE_SETTLE_MS 4000  /* after the last client closed (> the heartbeat timeout, 3 s) */
#define WARMUP_MIN_S 120
#define LIMIT_PCT 5.0

enum { K_CALL = 1, K_MAIL = 2, K_EVENT = 3 };
enum { I_ECHO = 0, I_ERROR = 1, I_SLOW = 2, I_UNKNOWN = 3, N_INTENTS };
static const char *const s_intent_name[N_INTENTS] = {"echo", "error", "slow", "unknown-service"};
static const int s_intent_code[N_INTENTS] = {0, AB_EPROVIDER, AB_EDEADLINE, AB_EUNKNOWN_SERVICE};

typedef enum {
    R_CALLER,
    R_PROVIDER,
    R_SENDER,
    R_RECIPIENT,
    R_PUBLISHER,
    R_DURABLE,
    R_EPHEMERAL,
    N_ROLES
} role_t;

static const char *const s_role_name[N_ROLES] = {"caller",    "provider", "sender",   "recipient",
                                                 "publisher", "durable",  "ephemeral"};
static const char *const s_role_id[N_ROLES] = {ID_CALLER, ID_PROVIDER, ID_CALLER, ID_RECIPIENT,
                                               ID_CALLER, ID_DURABLE,  ID_WATCH};
/* slots per role, and each client's life and the gap before its successor, in ms */
static const int s_role_slots[N_ROLES] = {3, 2, 2, 2, 2, 1, 2};
static const int s_life_ms[N_ROLES][2] = {{2000, 8000},  {8000, 20000}, {3000, 10000}, {2000, 8000},
                                          {3000, 10000}, {2000, 8000},  {2000, 8000}};
static const int s_gap_ms[N_ROLES][2] = {{0, 500}, {0, 1000}, {0, 500}, {0, 2000},
                                         {0, 500}, {0, 3000}, {0, 1000}};
#define MAX_WORKERS 32

#define N_CODES 20 /* index: -AB_E*; 0 is success */

typedef enum { W_IDLE, W_ACTIVE, W_LEAVING } wstate_t;

typedef struct soak soak_t;

typedef struct {
    ab_request_t *req;
    uint64_t at;
} deferred_t;

/* An ephemeral subscription's session: which events it must have seen. */
typedef struct {
    uint64_t start_seq; /* events from this one on were published after it was subscribed */
    uint64_t stop_ns;   /* events accepted before this must arrive; 0: still counting */
    uint8_t *got;       /* by seq - start_seq */
    size_t cap;
} esess_t;

typedef struct {
    soak_t *s;
    role_t role;
    int slot;
    wstate_t state;
    ab_client_t *c;
    uint64_t until; /* IDLE: connect then; ACTIVE: leave then; LEAVING: give up then */
    uint64_t left_at;
    int inflight;
    int abrupt;
    deferred_t defer[MAX_DEFER];
    int ndefer;
    esess_t es;
} worker_t;

/* One call, SEND or PUBLISH in flight. */
typedef struct {
    worker_t *w;
    uint64_t seq;
    uint32_t len;
    int intent;
} op_t;

/* A mailbox message or an event: what its sender was told and what its receiver saw. */
typedef struct {
    uint8_t acc;  /* 0 in flight, 1 accepted, 2 refused, 3 fate unknown (timed out) */
    uint8_t bad;  /* delivered with another length or message id */
    uint16_t got; /* deliveries (an event's: to the durable subscription) */
    uint32_t len;
    uint64_t acc_ns; /* when the broker's answer arrived */
    char id[33], rid[33];
} rec_t;

/* Every SEND or every PUBLISH of the run, by sequence (from 1; 0 is no sequence). */
typedef struct {
    rec_t *v;
    size_t n, cap;
    long codes[N_CODES]; /* the broker's answers */
    long stray;          /* deliveries that are none of this run's */
    long refusals_told;  /* on stderr */
} ledger_t;

/* What a ledger adds up to. */
typedef struct {
    long sent, acc, refused, unknown, got, redelivered, missing, wrong;
} tally_t;

/* A receipt's message id -> how many DELIVERED receipts for it. */
typedef struct {
    char id[33];
    uint32_t n;
    uint8_t other; /* EXPIRED or FAILED */
    UT_hash_handle hh;
} receipt_t;

typedef struct {
    double t;
    int phase; /* 0 idle, 1 load, 2 end */
    long rss, fds, threads, anon, file;
} sample_t;

struct soak {
    /* options */
    const char *uri, *pki, *csv_path;
    pid_t broker_pid;
    double seconds;
    long sample_ms;
    double rate[3]; /* calls, SENDs, PUBLISHes per second */
    uint64_t rng;
    char ca[512], cert[N_ROLES][512], key[N_ROLES][512];

    uint64_t tag;
    unsigned char *tmpl, *buf;
    worker_t w[MAX_WORKERS];
    int nw;
    int phase; /* 1 load, 2 stopping, 3 final */
    double tokens[3];
    uint64_t last_fill;

    /* calls */
    uint64_t call_seq;
    long calls_sent[N_INTENTS];
    long call_codes[N_INTENTS][N_CODES];
    long call_bad; /* a reply that is not the echo, or an outcome that does not fit */
    char call_bad_first[256];
    long requests, bad_requests;
    /* mailboxes and events */
    ledger_t mail, ev;
    receipt_t *receipts;
    long receipts_got, receipts_dup;
    long eph_sessions, eph_expected, eph_got, eph_lost, eph_extra, eph_dup, eph_bad;
    /* clients */
    long connects, connect_failed, client_failed, acks_failed, abandoned;
    char fail_first[256];
    /* samples */
    FILE *csv;
    sample_t *samples;
    size_t nsamples, capsamples;
    uint64_t t0;
};

/* ---- small helpers ---------------------------------------------------------------------- */

static uint64_t
s_rand(soak_t *s)
{
    /* xorshift64*: reproducible with --seed */
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return s->rng * 0x2545F4914F6CDD1Dull;
}

static int
s_between(soak_t *s, int lo, int hi)
{
    return hi <= lo ? lo : lo + (int)(s_rand(s) % (uint64_t)(hi - lo + 1));
}

static void s_note(soak_t *s, long *counter, char *first, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Counts a problem and keeps the text of the first one of its kind for the summary. */
static void
s_note(soak_t *s, long *counter, char *first, size_t cap, const char *fmt, ...)
{
    (void)s;
    if ((*counter)++ > 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(first, cap, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: %s\n", PROG, first);
}

static int
s_code_idx(int rc)
{
    return rc <= 0 && -rc < N_CODES ? -rc : N_CODES - 1;
}

static double
s_elapsed(const soak_t *s)
{
    return (double)(bu_now_ns() - s->t0) / 1e9;
}

/* Grows an array of `size`-byte elements to hold index `i`. Returns 0, or -1 out of memory. */
static int
s_grow(void **v, size_t *cap, size_t i, size_t size)
{
    if (i < *cap)
        return 0;
    size_t n = *cap ? *cap : 1024;
    while (n <= i)
        n *= 2;
    void *p = realloc(*v, n * size);
    if (!p)
        return -1;
    memset((char *)p + *cap * size, 0, (n - *cap) * size);
    *v = p;
    *cap = n;
    return 0;
}

/* ---- payloads --------------------------------------------------------------------------- */

/* A random length: mostly up to 2 KiB, one in 50 up to 64 KiB. */
static uint32_t
s_len(soak_t *s)
{
    return (uint32_t)(s_rand(s) % 50 == 0 ? s_between(s, 2048, MAX_LEN)
                                          : s_between(s, HDR_LEN, 2048));
}

static const unsigned char *
s_payload(soak_t *s, int kind, uint64_t seq, uint32_t len, int intent)
{
    memcpy(s->buf, s->tmpl, len);
    bu_put64(s->buf, s->tag);
    bu_put64(s->buf + 8, (uint64_t)kind << 56 | seq);
    bu_put32(s->buf + 16, len);
    s->buf[20] = (unsigned char)intent;
    return s->buf;
}

/* Checks a payload of this run: returns its sequence, or 0 when it is not one of `kind`'s
 * sequences with the right length and pattern. */
static uint64_t
s_check(const soak_t *s, int kind, const unsigned char *p, size_t len)
{
    if (len < HDR_LEN || len > MAX_LEN || bu_get64(p) != s->tag || bu_get32(p + 16) != len)
        return 0;
    uint64_t stamp = bu_get64(p + 8);
    if ((int)(stamp >> 56) != kind)
        return 0;
    if (memcmp(p + 21, s->tmpl + 21, len - 21) != 0)
        return 0;
    return stamp & ((UINT64_C(1) << 56) - 1);
}

/* ---- the broker's process --------------------------------------------------------------- */

static long
s_fd_count(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* The number in line `name` ("Threads", "RssAnon") of /proc/PID/status; -1 when not there. */
static long
s_status(pid_t pid, const char *name)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long n = -1;
    if (!f)
        return -1;
    size_t len = strlen(name);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, name, len) == 0 && line[len] == ':') {
            n = strtol(line + len + 1, NULL, 10);
            break;
        }
    fclose(f);
    return n;
}

static long s_connected(const soak_t *s);

/* Takes one sample of the broker (phase 0 idle, 1 load, 2 the end) into memory and the CSV.
 * Returns 0, or -1 when the broker's process cannot be read (it is gone). */
static int
s_sample(soak_t *s, int phase)
{
    sample_t x = {.t = s_elapsed(s),
                  .phase = phase,
                  .rss = bu_rss_kib(s->broker_pid),
                  .fds = s_fd_count(s->broker_pid),
                  .threads = s_status(s->broker_pid, "Threads"),
                  .anon = s_status(s->broker_pid, "RssAnon"),
                  .file = s_status(s->broker_pid, "RssFile")};
    if (x.rss < 0 || x.fds < 0)
        return -1;
    if (s_grow((void **)&s->samples, &s->capsamples, s->nsamples, sizeof x) == 0)
        s->samples[s->nsamples++] = x;
    if (s->csv) {
        long calls = 0;
        for (int i = 0; i < N_INTENTS; i++)
            calls += s->calls_sent[i];
        fprintf(s->csv, "%.1f,%s,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%zu,%zu\n", x.t,
                phase == 0   ? "idle"
                : phase == 1 ? "load"
                             : "end",
                x.rss, x.anon, x.file, x.fds, x.threads, s_connected(s), s->connects, calls,
                s->mail.n - 1, s->ev.n - 1);
        fflush(s->csv);
    }
    return 0;
}

/* ---- callbacks -------------------------------------------------------------------------- */

static void
s_on_call(ab_client_t *c, int status, const void *reply, size_t len, const char *errtext, void *arg)
{
    (void)c;
    op_t *op = arg;
    worker_t *w = op->w;
    soak_t *s = w->s;
    w->inflight--;
    s->call_codes[op->intent][s_code_idx(status)]++;
    int fits;
    if (status == 0)
        fits = op->intent == I_ECHO && s_check(s, K_CALL, reply, len) == op->seq && len == op->len;
    else
        fits = status == s_intent_code[op->intent] || status == AB_EPROVIDER ||
               status == AB_EPROVIDER_GONE || status == AB_EUNKNOWN_SERVICE ||
               status == AB_EDEADLINE;
    if (!fits)
        s_note(s, &s->call_bad, s->call_bad_first, sizeof s->call_bad_first,
               "call %llu (%s): %s%s%s", (unsigned long long)op->seq, s_intent_name[op->intent],
               status ? ab_err_name(status) : "a reply that is not the echo of the request",
               errtext && *errtext ? ": " : "", errtext ? errtext : "");
    free(op);
}

static void
s_on_request(ab_client_t *c, ab_request_t *req, void *arg)
{
    (void)c;
    worker_t *w = arg;
    soak_t *s = w->s;
    size_t len = 0;
    const unsigned char *p = ab_request_payload(req, &len);
    s->requests++;
    if (s_check(s, K_CALL, p, len) == 0) {
        s_note(s, &s->bad_requests, s->fail_first, sizeof s->fail_first,
               "provider: a request of %zu bytes that is not one this run sent", len);
        ab_reply_error(&req, "soak: the request is not one this run sent");
        return;
    }
    if (p[20] == I_ERROR) {
        ab_reply_error(&req, "soak: an error, as asked");
    } else if (p[20] == I_SLOW && w->ndefer < MAX_DEFER) {
        w->defer[w->ndefer++] = (deferred_t){req, bu_now_ns() + SLOW_REPLY_MS * 1000000ull};
    } else {
        ab_reply(&req, p, len);
    }
}

/* The broker's answer to a SEND or a PUBLISH. */
static void
s_on_accepted(ab_client_t *c, int status, const char *id_hex, const char *errtext, void *arg)
{
    (void)c;
    op_t *op = arg;
    worker_t *w = op->w;
    soak_t *s = w->s;
    ledger_t *l = w->role == R_SENDER ? &s->mail : &s->ev;
    w->inflight--;
    rec_t *r = &l->v[op->seq];
    snprintf(r->id, sizeof r->id, "%s", id_hex ? id_hex : "");
    r->acc = status == 0 ? 1 : status == AB_ETIMEDOUT ? 3 : 2;
    r->acc_ns = bu_now_ns();
    l->codes[s_code_idx(status)]++;
    if (status != 0 && ++l->refusals_told <= 10) /* the summary counts them all */
        fprintf(stderr, "%s: %s %llu: %s: %s\n", PROG, w->role == R_SENDER ? "SEND" : "PUBLISH",
                (unsigned long long)op->seq, ab_err_name(status), errtext ? errtext : "");
    free(op);
}

/* Counts a delivery of sequence `seq` (0: not a payload of this run) in ledger `l`; `bad`: it
 * arrived in a way it should not have. */
static void
s_delivered(ledger_t *l, uint64_t seq, const ab_message_t *msg, size_t len, int bad)
{
    if (seq == 0 || seq >= l->n || strcmp(ab_message_sender(msg), ID_CALLER) != 0) {
        l->stray++;
        return;
    }
    rec_t *r = &l->v[seq];
    r->bad |= bad || len != r->len;
    if (r->got++ == 0)
        snprintf(r->rid, sizeof r->rid, "%s", ab_message_id(msg));
    else
        r->bad |= strcmp(r->rid, ab_message_id(msg)) != 0;
}

static void
s_ack(soak_t *s, ab_message_t **m)
{
    int rc = ab_ack(m);
    if (rc != 0)
        s_note(s, &s->acks_failed, s->fail_first, sizeof s->fail_first, "ab_ack: %s",
               ab_err_name(rc));
}

/* Messages and receipts of mailboxes, durable and ephemeral events. */
static void
s_on_message(ab_client_t *c, ab_message_t *msg, void *arg)
{
    (void)c;
    worker_t *w = arg;
    soak_t *s = w->s;
    int kind = ab_message_kind(msg);
    size_t len = 0;
    const unsigned char *p = ab_message_payload(msg, &len);
    if (w->role == R_SENDER && kind == AB_MSG_RECEIPT) {
        receipt_t *r;
        const char *about = ab_message_about(msg);
        HASH_FIND_STR(s->receipts, about, r);
        if (!r && (r = calloc(1, sizeof *r)) != NULL) {
            snprintf(r->id, sizeof r->id, "%s", about);
            HASH_ADD_STR(s->receipts, id, r);
        }
        if (r) {
            r->n += ab_message_receipt(msg) == AB_RECEIPT_DELIVERED;
            r->other |= ab_message_receipt(msg) != AB_RECEIPT_DELIVERED;
            s->receipts_got += r->n == 1 && !r->other;
            s->receipts_dup += r->n > 1;
        }
    } else if (w->role == R_RECIPIENT && kind == AB_MSG_MESSAGE) {
        s_delivered(&s->mail, s_check(s, K_MAIL, p, len), msg, len, 0);
    } else if (w->role == R_DURABLE && kind == AB_MSG_EVENT) {
        s_delivered(&s->ev, s_check(s, K_EVENT, p, len), msg, len,
                    strcmp(ab_message_subscription(msg), DURABLE_NAME) != 0);
    } else if (w->role == R_EPHEMERAL && kind == AB_MSG_EVENT) {
        uint64_t seq = s_check(s, K_EVENT, p, len);
        if (seq == 0 || seq >= s->ev.n || strcmp(ab_message_sender(msg), ID_CALLER) != 0) {
            s->ev.stray++;
        } else if (!w->es.stop_ns || bu_now_ns() < w->es.stop_ns + EPH_TAIL_MS * 1000000ull) {
            esess_t *es = &w->es;
            s->eph_bad += len != s->ev.v[seq].len;
            if (seq >= es->start_seq &&
                s_grow((void **)&es->got, &es->cap, seq - es->start_seq, 1) == 0) {
                if (es->got[seq - es->start_seq]++)
                    s->eph_dup++;
            } else if (seq < es->start_seq) {
                s->eph_extra++;
            }
        }
    } else {
        s->mail.stray++; /* nothing else is sent to these participants */
    }
    s_ack(s, &msg);
}

/* ---- workers ---------------------------------------------------------------------------- */

static long
s_connected(const soak_t *s)
{
    long n = 0;
    for (int i = 0; i < s->nw; i++)
        n += s->w[i].c != NULL;
    return n;
}

/* Connects worker `w` and sets it up for its role. Returns 0, or -1 after counting why. */
static int
s_connect(worker_t *w)
{
    soak_t *s = w->s;
    ab_tls_options_t t = {.cert = s->cert[w->role], .key = s->key[w->role], .ca = s->ca};
    ab_client_t *c = ab_client_new();
    int rc = c ? ab_client_set_tls(c, &t) : AB_ENOMEM;
    const char *what = "connect";
    if (rc == 0)
        rc = ab_client_connect(c, s->uri, CONNECT_MS);
    s->connects++;
    if (rc == 0) {
        switch (w->role) {
        case R_PROVIDER:
            what = "offer";
            rc = ab_offer(c, SERVICE, s_on_request, w);
            break;
        case R_SENDER:
        case R_RECIPIENT:
            what = "inbox";
            rc = ab_inbox(c, 20, s_on_message, w);
            break;
        case R_DURABLE:
            what = "subscribe (durable)";
            rc = ab_subscribe(c, DURABLE_PATTERN, DURABLE_NAME, 20, s_on_message, w);
            break;
        case R_EPHEMERAL:
            what = "subscribe";
            free(w->es.got);
            w->es = (esess_t){.start_seq = s->ev.n};
            rc = ab_subscribe(c, EPHEMERAL_PATTERN, NULL, 0, s_on_message, w);
            break;
        default:
            break;
        }
    }
    if (rc != 0) {
        s_note(s, &s->connect_failed, s->fail_first, sizeof s->fail_first,
               "%s %d: %s %s as %s: %s: %s", s_role_name[w->role], w->slot, what, s->uri,
               s_role_id[w->role], ab_err_name(rc), c ? ab_client_last_error(c) : "");
        ab_client_destroy(&c);
        return -1;
    }
    w->c = c;
    w->inflight = 0;
    w->abrupt = w->role == R_PROVIDER && s_rand(s) % 3 == 0;
    return 0;
}

/* Ends an ephemeral session: what it should have seen against what it saw. */
static void
s_ephemeral_tally(worker_t *w)
{
    soak_t *s = w->s;
    esess_t *es = &w->es;
    if (es->stop_ns)
        s->eph_sessions++;
    for (uint64_t q = es->start_seq; q < s->ev.n; q++) {
        const rec_t *e = &s->ev.v[q];
        int seen = q - es->start_seq < es->cap && es->got[q - es->start_seq];
        if (!es->stop_ns)
            break; /* a session that failed before it started counting */
        if (e->acc == 1 && e->acc_ns <= es->stop_ns) {
            s->eph_expected++;
            s->eph_got += seen;
            s->eph_lost += !seen;
        } else {
            s->eph_extra += seen;
        }
    }
    free(es->got);
    *es = (esess_t){0};
}

static void
s_close(worker_t *w, uint64_t now)
{
    soak_t *s = w->s;
    if (w->role == R_EPHEMERAL)
        s_ephemeral_tally(w);
    long before = w->inflight;
    /* calls still in flight complete now, with AB_EUNAVAILABLE; requests not yet answered get
     * PROVIDER_ERROR from the library */
    ab_client_destroy(&w->c);
    for (int i = 0; i < w->ndefer; i++)
        ab_reply(&w->defer[i].req, NULL, 0); /* the client is gone: only frees the request */
    w->ndefer = 0;
    if (before > 0 && w->role != R_PROVIDER)
        s_note(s, &s->abandoned, s->fail_first, sizeof s->fail_first,
               "%s %d: %ld answers still missing %d ms after it stopped", s_role_name[w->role],
               w->slot, before, LEAVE_MAX_MS);
    w->state = W_IDLE;
    w->until = now + (uint64_t)s_between(s, s_gap_ms[w->role][0], s_gap_ms[w->role][1]) * 1000000u;
}

/* Starts the leaving of an active worker. */
static void
s_leave(worker_t *w, uint64_t now)
{
    w->state = W_LEAVING;
    w->left_at = now;
    w->until = now + LEAVE_MAX_MS * 1000000ull;
    if (w->role == R_PROVIDER && !w->abrupt) {
        int rc = ab_withdraw(w->c, SERVICE);
        if (rc != 0)
            fprintf(stderr, "%s: provider %d: withdraw: %s: %s\n", PROG, w->slot, ab_err_name(rc),
                    ab_client_last_error(w->c));
    } else if (w->role == R_EPHEMERAL) {
        w->es.stop_ns = now;
    }
}

/* Whether a leaving worker is done. */
static int
s_left(const worker_t *w, uint64_t now)
{
    uint64_t since = now - w->left_at;
    switch (w->role) {
    case R_PROVIDER:
        return w->abrupt || (w->ndefer == 0 && since > PROVIDER_TAIL_MS * 1000000ull);
    case R_EPHEMERAL:
        return since > EPH_TAIL_MS * 1000000ull;
    case R_RECIPIENT:
    case R_DURABLE:
        return 1;
    default:
        return w->inflight == 0;
    }
}

/* Starts calls, SENDs or PUBLISHes while the worker's window and its kind's tokens allow. */
static void
s_issue(worker_t *w)
{
    soak_t *s = w->s;
    int k = w->role == R_CALLER ? 0 : w->role == R_SENDER ? 1 : 2;
    while (w->inflight < WINDOW && s->tokens[k] >= 1) {
        op_t *op = malloc(sizeof *op);
        if (!op)
            return;
        s->tokens[k] -= 1;
        *op = (op_t){.w = w, .len = s_len(s)};
        int rc;
        if (k == 0) {
            uint64_t r = s_rand(s) % 100;
            op->intent = r < 2 ? I_UNKNOWN : r < 4 ? I_ERROR : r < 5 ? I_SLOW : I_ECHO;
            op->seq = ++s->call_seq;
            const unsigned char *p = s_payload(s, K_CALL, op->seq, op->len, op->intent);
            rc = ab_call_async(w->c, op->intent == I_UNKNOWN ? UNKNOWN_METHOD : METHOD, p, op->len,
                               op->intent == I_SLOW ? SLOW_CALL_MS : CALL_MS, s_on_call, op);
            if (rc == 0)
                s->calls_sent[op->intent]++;
        } else {
            ledger_t *l = k == 1 ? &s->mail : &s->ev;
            if (s_grow((void **)&l->v, &l->cap, l->n, sizeof *l->v) != 0) {
                free(op);
                return;
            }
            op->seq = l->n;
            l->v[op->seq].len = op->len;
            const unsigned char *p = s_payload(s, k == 1 ? K_MAIL : K_EVENT, op->seq, op->len, 0);
            rc = k == 1 ? ab_send_async(w->c, ID_RECIPIENT, p, op->len, NULL, s_on_accepted, op)
                        : ab_publish_async(w->c, op->seq % 2 ? "soak.ev.a" : "soak.ev.b", p,
                                           op->len, NULL, s_on_accepted, op);
            if (rc == 0)
                l->n++;
        }
        if (rc != 0) {
            s_note(s, &s->client_failed, s->fail_first, sizeof s->fail_first,
                   "%s %d: could not start a request: %s: %s", s_role_name[w->role], w->slot,
                   ab_err_name(rc), ab_client_last_error(w->c));
            free(op);
            return;
        }
        w->inflight++;
    }
}

/* One step of worker `w`'s life. */
static void
s_step(worker_t *w, uint64_t now)
{
    soak_t *s = w->s;
    int issuer = w->role == R_CALLER || w->role == R_SENDER || w->role == R_PUBLISHER;
    /* at the end a sender comes back to take the receipts still on their way: the recipient may
     * acknowledge its last messages after every sender has left */
    int collect = w->role == R_SENDER && s->phase >= 3;
    switch (w->state) {
    case W_IDLE:
        if (!collect && (now < w->until || (issuer && s->phase >= 2)))
            return;
        if (s_connect(w) != 0) {
            w->until = now + 1000000000ull;
            return;
        }
        w->state = W_ACTIVE;
        w->until =
            now + (uint64_t)s_between(s, s_life_ms[w->role][0], s_life_ms[w->role][1]) * 1000000u;
        return;
    case W_ACTIVE:
        if (collect)
            return;
        if ((s->phase == 1 && now >= w->until) || (issuer && s->phase >= 2)) {
            s_leave(w, now);
            return;
        }
        if (issuer)
            s_issue(w);
        return;
    case W_LEAVING:
        if (s_left(w, now) || now >= w->until)
            s_close(w, now);
        return;
    }
}

/* Answers the slow calls whose time has come. */
static void
s_deferred(worker_t *w, uint64_t now)
{
    for (int i = 0; i < w->ndefer;) {
        if (w->defer[i].at <= now) {
            size_t len = 0;
            const void *p = ab_request_payload(w->defer[i].req, &len);
            ab_reply(&w->defer[i].req, p, len); /* late: the broker says replies_late */
            w->defer[i] = w->defer[--w->ndefer];
        } else {
            i++;
        }
    }
}

/* Drives every connected client once: their I/O, callbacks and timers; waits up to `ms`. */
static void
s_pump(soak_t *s, int ms)
{
    struct pollfd p[MAX_WORKERS];
    int n = 0;
    uint64_t now = bu_now_ns();
    for (int i = 0; i < s->nw; i++) {
        worker_t *w = &s->w[i];
        if (!w->c)
            continue;
        int rc;
        while ((rc = ab_client_process(w->c)) > 0)
            ;
        if (rc < 0) {
            s_note(s, &s->client_failed, s->fail_first, sizeof s->fail_first, "%s %d: %s: %s",
                   s_role_name[w->role], w->slot, ab_err_name(rc), ab_client_last_error(w->c));
            s_close(w, now);
            continue;
        }
        int t = ab_client_next_timeout(w->c);
        if (t >= 0 && t < ms)
            ms = t;
        if (w->ndefer && ms > 10)
            ms = 10;
        p[n++] = (struct pollfd){ab_client_fd(w->c), POLLIN, 0};
    }
    if (poll(p, (nfds_t)n, ms) < 0 && errno != EINTR)
        fprintf(stderr, "%s: poll: %s\n", PROG, strerror(errno));
}

static void
s_fill_tokens(soak_t *s, uint64_t now)
{
    double dt = (double)(now - s->last_fill) / 1e9;
    s->last_fill = now;
    for (int k = 0; k < 3; k++) {
        s->tokens[k] += s->rate[k] * dt;
        if (s->tokens[k] > s->rate[k] / 2 + 1) /* no burst after a stall */
            s->tokens[k] = s->rate[k] / 2 + 1;
    }
}

/* Runs the pool for `ns` or until `done(s)` says so. Returns 1 when done() ended it. */
static int
s_run(soak_t *s, uint64_t ns, int (*done)(soak_t *), uint64_t *next_sample, int sample_phase)
{
    uint64_t end = bu_now_ns() + ns;
    for (;;) {
        uint64_t now = bu_now_ns();
        if (done && done(s))
            return 1;
        if (now >= end || bu_stopped())
            return 0;
        if (now >= *next_sample) {
            if (s_sample(s, sample_phase) != 0) {
                fprintf(stderr, "%s: the broker's process %d is gone\n", PROG, (int)s->broker_pid);
                return -1;
            }
            *next_sample += (uint64_t)s->sample_ms * 1000000u;
        }
        s_fill_tokens(s, now);
        for (int i = 0; i < s->nw; i++) {
            s_step(&s->w[i], now);
            if (s->w[i].c)
                s_deferred(&s->w[i], now);
        }
        s_pump(s, 20);
    }
}

static int
s_issuers_done(soak_t *s)
{
    for (int i = 0; i < s->nw; i++) {
        role_t r = s->w[i].role;
        if ((r == R_CALLER || r == R_SENDER || r == R_PUBLISHER) && s->w[i].c)
            return 0;
    }
    return 1;
}

static int
s_all_delivered(soak_t *s)
{
    for (size_t i = 1; i < s->mail.n; i++) {
        const rec_t *m = &s->mail.v[i];
        receipt_t *r;
        if (m->acc != 1)
            continue;
        if (!m->got)
            return 0;
        HASH_FIND_STR(s->receipts, m->id, r);
        if (!r)
            return 0;
    }
    for (size_t i = 1; i < s->ev.n; i++)
        if (s->ev.v[i].acc == 1 && !s->ev.v[i].got)
            return 0;
    return 1;
}

/* ---- the summary ------------------------------------------------------------------------ */

static int
s_cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* The median of field `f` (0 rss, 1 fds) over the load samples with from <= t < to; -1: none. */
static double
s_median(const soak_t *s, int f, double from, double to, int *count)
{
    long *v = malloc((s->nsamples + 1) * sizeof *v);
    int n = 0;
    for (size_t i = 0; v && i < s->nsamples; i++)
        if (s->samples[i].phase == 1 && s->samples[i].t >= from && s->samples[i].t < to)
            v[n++] = f == 0 ? s->samples[i].rss : s->samples[i].fds;
    *count = n;
    double m = -1;
    if (n > 0) {
        qsort(v, (size_t)n, sizeof *v, s_cmp_long);
        m = n % 2 ? (double)v[n / 2] : (double)(v[n / 2 - 1] + v[n / 2]) / 2;
    }
    free(v);
    return m;
}

static char s_failed[2048];

static void s_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
s_fail(const char *fmt, ...)
{
    size_t n = strlen(s_failed);
    if (n)
        n += (size_t)snprintf(s_failed + n, sizeof s_failed - n, "; ");
    va_list ap;
    va_start(ap, fmt);
    if (n < sizeof s_failed)
        vsnprintf(s_failed + n, sizeof s_failed - n, fmt, ap);
    va_end(ap);
}

/* Prints " NAME=N" for each nonzero code in codes[]. */
static void
s_print_codes(const long *codes)
{
    int any = 0;
    for (int i = 1; i < N_CODES; i++)
        if (codes[i]) {
            printf("%s%s=%ld", any++ ? " " : " (", ab_err_name(-i), codes[i]);
        }
    printf("%s", any ? ")" : "");
}

static void
s_growth(const soak_t *s, double load_s, double t_start, double t_end)
{
    double warm = load_s * 0.2 > WARMUP_MIN_S ? load_s * 0.2 : WARMUP_MIN_S;
    double win = load_s * 0.1;
    if (win < 5.0 * (double)s->sample_ms / 1000)
        win = 5.0 * (double)s->sample_ms / 1000;
    int informative = load_s <= warm + win;
    double b0 = informative ? t_start + load_s * 0.2 : t_start + warm;
    const char *what[2] = {"rss_kib", "fds"};
    for (int f = 0; f < 2; f++) {
        int nb, ne;
        double base = s_median(s, f, b0, b0 + win, &nb);
        double end = s_median(s, f, t_end - win, t_end + 1, &ne);
        double pct = base > 0 ? (end - base) / base * 100 : 0;
        int ok = base > 0 && end > 0 && pct < LIMIT_PCT;
        printf("soak: broker %s after warm-up (median of %d samples from %.0f s) %.0f, at the end "
               "(median of last %d) %.0f, growth %+.2f %% (limit %.0f %%): %s\n",
               what[f], nb, b0 - t_start, base, ne, end, pct, LIMIT_PCT,
               informative ? "informative only"
               : ok        ? "ok"
                           : "FAILED");
        if (!informative && !ok)
            s_fail("broker %s grew %+.2f %% after warm-up (%.0f -> %.0f)", what[f], pct, base, end);
    }
    if (informative)
        printf("soak: growth is informative only: the run (%.0f s of load) is not longer than "
               "the warm-up (%.0f s) plus a window (%.0f s)\n",
               load_s, warm, win);
}

static tally_t
s_tally(const ledger_t *l)
{
    tally_t t = {.sent = (long)l->n - 1};
    for (size_t i = 1; i < l->n; i++) {
        const rec_t *r = &l->v[i];
        t.acc += r->acc == 1;
        t.refused += r->acc == 2;
        t.unknown += r->acc == 3;
        t.got += r->got > 0;
        t.redelivered += r->got > 1 ? r->got - 1 : 0;
        t.missing += r->acc == 1 && !r->got;
        /* (a SEND or PUBLISH whose fate is unknown may or may not arrive) */
        t.wrong += r->bad || (r->got && r->acc == 1 && strcmp(r->id, r->rid) != 0) ||
                   (r->got && r->acc == 2);
    }
    return t;
}

/* Prints the line of ledger `l` (`what`: "mailbox", "events") and notes what failed. */
static void
s_report(const char *what, const char *verbs, const char *receiver, const ledger_t *l,
         const tally_t *t)
{
    int bad = t->missing || t->wrong || t->refused || l->stray || t->acc == 0;
    printf("soak: %s sent %ld, accepted %ld, refused %ld, fate unknown %ld", what, t->sent, t->acc,
           t->refused, t->unknown);
    s_print_codes(l->codes);
    printf("; %s %ld (by id, payload checked; %ld redelivered), missing %ld, wrong %ld, stray "
           "%ld: %s\n",
           receiver, t->got, t->redelivered, t->missing, t->wrong, l->stray, bad ? "FAILED" : "ok");
    if (t->missing || t->wrong || l->stray)
        s_fail("%s: %ld accepted never received, %ld wrong, %ld stray", what, t->missing, t->wrong,
               l->stray);
    if (t->refused)
        s_fail("%s: the broker refused %ld %s", what, t->refused, verbs);
    if (t->acc == 0)
        s_fail("%s: nothing was accepted", what);
}

static int
s_summary(soak_t *s, double load_s, double t_start, double t_end, long idle_fds0, long idle_fds1,
          long idle_rss0, long idle_rss1)
{
    printf("soak: %.0f s of load, seed %llu, %ld connections (%ld failed), %ld client failures\n",
           load_s, (unsigned long long)s->rng, s->connects, s->connect_failed, s->client_failed);
    if (s->connect_failed)
        s_fail("%ld connections or subscriptions failed (first: %s)", s->connect_failed,
               s->fail_first);
    if (s->client_failed || s->acks_failed || s->abandoned || s->bad_requests)
        s_fail("client failures %ld, failed ACKs %ld, clients left with answers missing %ld, "
               "bad requests %ld (first: %s)",
               s->client_failed, s->acks_failed, s->abandoned, s->bad_requests, s->fail_first);
    s_growth(s, load_s, t_start, t_end);
    printf("soak: broker idle before the load: fds %ld rss_kib %ld; idle after: fds %ld rss_kib "
           "%ld: %s\n",
           idle_fds0, idle_rss0, idle_fds1, idle_rss1, idle_fds1 <= idle_fds0 ? "ok" : "FAILED");
    if (idle_fds1 > idle_fds0)
        s_fail("the idle broker holds %ld descriptors more than before the load",
               idle_fds1 - idle_fds0);

    /* calls */
    long sent = 0, replies = 0, errors = 0, codes[N_CODES] = {0}, answered = 0;
    for (int i = 0; i < N_INTENTS; i++) {
        sent += s->calls_sent[i];
        replies += s->call_codes[i][0];
        for (int c = 1; c < N_CODES; c++) {
            errors += s->call_codes[i][c];
            codes[c] += s->call_codes[i][c];
        }
        long intended =
            s_intent_code[i] ? s->call_codes[i][s_code_idx(s_intent_code[i])] : s->call_codes[i][0];
        answered += intended;
        printf("soak: calls %-15s sent %ld, ended as meant %ld\n", s_intent_name[i],
               s->calls_sent[i], intended);
    }
    printf("soak: calls sent %ld = replies %ld + errors %ld", sent, replies, errors);
    s_print_codes(codes);
    printf(", %ld did not fit: %s\n", s->call_bad,
           sent == replies + errors && !s->call_bad ? "ok" : "FAILED");
    if (sent != replies + errors)
        s_fail("calls: %ld sent but %ld answered", sent, replies + errors);
    if (s->call_bad)
        s_fail("calls: %ld outcomes that do not fit (first: %s)", s->call_bad, s->call_bad_first);
    if (sent == 0 || s->call_codes[I_ECHO][0] == 0)
        s_fail("calls: none was answered");
    printf("soak: provider requests %ld\n", s->requests);

    /* mailboxes and durable events */
    tally_t m = s_tally(&s->mail), e = s_tally(&s->ev);
    s_report("mailbox", "SENDs", "received", &s->mail, &m);
    long r_missing = 0;
    for (size_t i = 1; i < s->mail.n; i++) {
        receipt_t *r = NULL;
        if (s->mail.v[i].acc == 1)
            HASH_FIND_STR(s->receipts, s->mail.v[i].id, r);
        r_missing += s->mail.v[i].acc == 1 && (!r || r->n == 0);
    }
    printf("soak: receipts DELIVERED %ld for %ld accepted messages (%ld repeated), missing %ld: "
           "%s\n",
           s->receipts_got, m.acc, s->receipts_dup, r_missing, r_missing ? "FAILED" : "ok");
    if (r_missing)
        s_fail("receipts: %ld accepted messages without a DELIVERED receipt", r_missing);
    s_report("events", "PUBLISHes", "durable subscription received", &s->ev, &e);
    printf("soak: events ephemeral: %ld sessions expected %ld, received %ld, lost %ld (at most "
           "once: reported, not a failure), outside their window %ld, duplicated %ld, wrong "
           "%ld: %s\n",
           s->eph_sessions, s->eph_expected, s->eph_got, s->eph_lost, s->eph_extra, s->eph_dup,
           s->eph_bad, s->eph_dup || s->eph_bad ? "FAILED" : "ok");
    if (s->eph_dup || s->eph_bad)
        s_fail("ephemeral events: %ld duplicated, %ld wrong", s->eph_dup, s->eph_bad);

    if (s_failed[0]) {
        printf("soak: FAILED: %s\n", s_failed);
        return 1;
    }
    printf("soak: ok\n");
    return 0;
}

/* ---- options ---------------------------------------------------------------------------- */

static void
s_usage(FILE *f)
{
    fprintf(f,
            "usage: soak_client --broker tls://HOST:PORT --pki DIR --broker-pid PID --seconds N\n"
            "                   [--csv FILE] [--sample-ms MS] [--seed N]\n"
            "                   [--calls-per-s N] [--sends-per-s N] [--publishes-per-s N]\n"
            "See tests/soak/README.md.\n");
}

static int
s_parse(int argc, char **argv, soak_t *s)
{
    static const struct option opts[] = {{"broker", required_argument, NULL, 'b'},
                                         {"pki", required_argument, NULL, 'p'},
                                         {"broker-pid", required_argument, NULL, 'P'},
                                         {"seconds", required_argument, NULL, 's'},
                                         {"csv", required_argument, NULL, 'c'},
                                         {"sample-ms", required_argument, NULL, 'm'},
                                         {"seed", required_argument, NULL, 'S'},
                                         {"calls-per-s", required_argument, NULL, '1'},
                                         {"sends-per-s", required_argument, NULL, '2'},
                                         {"publishes-per-s", required_argument, NULL, '3'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    long v, seconds = 0;
    s->rate[0] = 100;
    s->rate[1] = 20;
    s->rate[2] = 20;
    s->rng = (uint64_t)time(NULL) ^ (uint64_t)getpid() << 20;
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'b':
            s->uri = optarg;
            break;
        case 'p':
            s->pki = optarg;
            break;
        case 'P':
            if (bu_parse_long(PROG, optarg, "--broker-pid", 1, INT32_MAX, &v) != 0)
                return -1;
            s->broker_pid = (pid_t)v;
            break;
        case 's':
            if (bu_parse_long(PROG, optarg, "--seconds", 1, 86400, &seconds) != 0)
                return -1;
            break;
        case 'c':
            s->csv_path = optarg;
            break;
        case 'm':
            if (bu_parse_long(PROG, optarg, "--sample-ms", 100, 600000, &s->sample_ms) != 0)
                return -1;
            break;
        case 'S':
            if (bu_parse_long(PROG, optarg, "--seed", 1, INT64_MAX, &v) != 0)
                return -1;
            s->rng = (uint64_t)v;
            break;
        case '1':
        case '2':
        case '3':
            if (bu_parse_long(PROG, optarg, opts[ch - '1' + 7].name, 1, 100000, &v) != 0)
                return -1;
            s->rate[ch - '1'] = (double)v;
            break;
        case 'h':
            s_usage(stdout);
            exit(0);
        default:
            s_usage(stderr);
            return -1;
        }
    }
    if (optind != argc || !s->uri || !s->pki || !s->broker_pid || !seconds) {
        fprintf(stderr, "%s: %s\n", PROG,
                optind != argc ? "unexpected arguments"
                               : "--broker, --pki, --broker-pid and --seconds are required");
        s_usage(stderr);
        return -1;
    }
    if (strncmp(s->uri, "tls://", 6) != 0) {
        fprintf(stderr, "%s: --broker must be a tls:// address, not '%s'\n", PROG, s->uri);
        return -1;
    }
    s->seconds = (double)seconds;
    if (!s->sample_ms) {
        s->sample_ms = seconds * 1000 / 30;
        s->sample_ms = s->sample_ms < 1000 ? 1000 : s->sample_ms > 5000 ? 5000 : s->sample_ms;
    }
    snprintf(s->ca, sizeof s->ca, "%s/ca/chain.pem", s->pki);
    for (int r = 0; r < N_ROLES; r++) {
        snprintf(s->cert[r], sizeof s->cert[r], "%s/%s.crt", s->pki, s_role_id[r]);
        snprintf(s->key[r], sizeof s->key[r], "%s/%s.key", s->pki, s_role_id[r]);
        if (access(s->cert[r], R_OK) != 0 || access(s->key[r], R_OK) != 0) {
            fprintf(stderr, "%s: %s: cannot read the certificate or key of %s in --pki\n", PROG,
                    s->cert[r], s_role_id[r]);
            return -1;
        }
    }
    return 0;
}

/* Frees what the run kept (nothing of it is needed after the summary). */
static void
s_free(soak_t *s)
{
    receipt_t *r, *tmp;
    HASH_ITER(hh, s->receipts, r, tmp)
    {
        HASH_DEL(s->receipts, r);
        free(r);
    }
    for (int i = 0; i < s->nw; i++)
        free(s->w[i].es.got);
    free(s->mail.v);
    free(s->ev.v);
    free(s->samples);
    free(s->tmpl);
    free(s->buf);
}

int
main(int argc, char **argv)
{
    static soak_t s;
    if (s_parse(argc, argv, &s) != 0)
        return 2;
    bu_signals();
    bu_alarm_exit(PROG ": time limit reached (--seconds + 180 s); aborting\n");
    alarm((unsigned)s.seconds + 180);
    uint64_t seed = s.rng;

    s.tag = bu_now_ns() ^ (uint64_t)getpid() << 32;
    s.tmpl = malloc(MAX_LEN);
    s.buf = malloc(MAX_LEN);
    if (!s.tmpl || !s.buf) {
        fprintf(stderr, "%s: out of memory\n", PROG);
        return 1;
    }
    bu_fill_pattern(s.tmpl, MAX_LEN);
    if (s.csv_path) {
        s.csv = fopen(s.csv_path, "w");
        if (!s.csv) {
            fprintf(stderr, "%s: %s: %s\n", PROG, s.csv_path, strerror(errno));
            return 1;
        }
        fprintf(
            s.csv,
            "t_s,phase,rss_kib,rss_anon_kib,rss_file_kib,fds,threads,clients,connects,calls,mail,"
            "events\n");
    }
    s.mail.n = s.ev.n = 1; /* sequences start at 1: 0 is no sequence */
    for (int r = 0; r < N_ROLES; r++)
        for (int i = 0; i < s_role_slots[r]; i++)
            s.w[s.nw++] = (worker_t){.s = &s, .role = r, .slot = i};

    s.t0 = bu_now_ns();
    /* the idle broker, before any client; then the durable subscription, before any PUBLISH */
    if (s_sample(&s, 0) != 0) {
        fprintf(stderr, "%s: cannot read /proc/%d of the broker\n", PROG, (int)s.broker_pid);
        return 1;
    }
    long idle_fds0 = s.samples[0].fds, idle_rss0 = s.samples[0].rss;
    for (int i = 0; i < s.nw; i++)
        if (s.w[i].role == R_DURABLE) {
            if (s_connect(&s.w[i]) != 0)
                return 1;
            s.w[i].state = W_ACTIVE;
            s.w[i].until = bu_now_ns() + 3000000000ull;
        }

    s.phase = 1;
    s.last_fill = bu_now_ns();
    uint64_t next_sample = bu_now_ns();
    double t_start = s_elapsed(&s);
    int rc = s_run(&s, (uint64_t)(s.seconds * 1e9), NULL, &next_sample, 1);
    double t_end = s_elapsed(&s);
    double load_s = t_end - t_start;
    if (rc >= 0 && !bu_stopped()) {
        /* the end: no new work; what is in flight is answered; everything is delivered */
        s.phase = 2;
        if (s_run(&s, LEAVE_MAX_MS * 1000000ull + 5000000000ull, s_issuers_done, &next_sample, 2) ==
            0)
            fprintf(stderr, "%s: the callers, senders and publishers did not finish\n", PROG);
        s.phase = 3;
        if (s_run(&s, FINAL_MAX_MS * 1000000ull, s_all_delivered, &next_sample, 2) == 0)
            fprintf(stderr, "%s: not everything was delivered within %d s after the load\n", PROG,
                    FINAL_MAX_MS / 1000);
    }
    uint64_t now = bu_now_ns();
    for (int i = 0; i < s.nw; i++) {
        worker_t *w = &s.w[i];
        if (w->c) {
            if (w->role == R_EPHEMERAL && !w->es.stop_ns)
                w->es.stop_ns = now - EPH_TAIL_MS * 1000000ull; /* the tail has passed */
            w->inflight = w->role == R_PROVIDER ? 0 : w->inflight;
            s_close(w, now);
        }
    }
    usleep(IDLE_SETTLE_MS * 1000);
    if (s_sample(&s, 0) != 0) {
        fprintf(stderr, "%s: the broker's process %d is gone\n", PROG, (int)s.broker_pid);
        return 1;
    }
    long idle_fds1 = s.samples[s.nsamples - 1].fds, idle_rss1 = s.samples[s.nsamples - 1].rss;
    if (s.csv)
        fclose(s.csv);
    if (bu_stopped()) {
        fprintf(stderr, "%s: interrupted by a signal\n", PROG);
        return 1;
    }
    s.rng = seed;
    rc = s_summary(&s, load_s, t_start, t_end, idle_fds0, idle_fds1, idle_rss0, idle_rss1);
    s_free(&s);
    return rc;
}
