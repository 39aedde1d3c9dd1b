/*
 * callload.c - load for the crash loops of calls, durable subscriptions and mailboxes, through
 * the client library (libamtsbote) and the real broker, so that the loops check the promises an
 * application sees: every call ends exactly once, in time, with its own reply or an error that
 * says why; every accepted event and message arrives intact, in order per publisher.
 *
 * mbload (tests/tools/mbload.c) is the raw-DEALER sibling that checks the broker's store
 * underneath; this tool is the application's view. Every loop is bounded by --seconds.
 *
 *   callload serve  --broker URI --as ADDR --service S [--hold-ms H] [--seconds MAX]
 *       an echo provider: answers each call with its request followed by "|ADDR", after a
 *       random 0..H ms (so that calls are in flight on it when it is killed). Prints "ready".
 *   callload call   --broker URI --as ADDR --service S [--window W] [--deadline-ms D]
 *                   [--margin-ms M] [--size B] [--seconds MAX]
 *       keeps W calls in flight (ab_call_async with deadline D). Each outcome is checked: it
 *       comes once, within D + M ms of the call, and a reply is the request followed by
 *       "|PROVIDER". Prints "ready" once connected; SIGUSR1 prints a "mark" line with the counts so
 * far; SIGTERM stops new calls and waits for the outcome of those in flight. callload source
 * --broker URI --as ADDR [--topic T] [--to RCPT] [--streams N] [--size B]
 *                   [--accepted-log F] [--attempted-log F] [--timeout-ms T] [--seconds MAX]
 *       N threads per kind (PUBLISH on T, SEND to RCPT), each with its own client and one
 *       numbered stream, one message in flight; an answer other than accepted sends the same
 *       number again (a SEND with the same message id). Logs "KIND ADDR STREAM SEQ" per line:
 *       attempted before the first try, accepted after the REPLY. SIGTERM stops after the
 *       message in flight.
 *   callload sink   --broker URI --as ADDR [--inbox] [--subscribe PATTERN --durable NAME]
 *                   [--credit C] [--received-log F] [--hold-ms H] [--idle-ms I] [--seconds MAX]
 *       takes mailbox messages and/or the events of a durable subscription, checks each payload,
 *       appends "KIND SENDER STREAM SEQ SEQUENCE ATTEMPT ok|corrupt" to the log (written before
 *       the ACK: processing, then acknowledging) and acknowledges, at once or after a random
 *       0..H ms (so that a kill finds deliveries processed but not acknowledged). Ends after MAX
 * seconds, or I ms without anything new (0: never), or at SIGTERM.
 *
 * Payloads: a text stamp "cl1 WHO STREAM SEQ\n" and bytes generated from it, B bytes in all.
 * Output: one "result mode=... key=value ..." line on stdout; exit 0 when every promise held,
 * 1 when one was broken (the line and stderr say which), 2 on a usage or connection error.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "amtsbote.h"
#include "loadgen.h"
#include "wire.h"

#define MAX_WINDOW 256
#define MAX_STREAMS 32
#define MAX_SIZE 16384
#define STAMP_MAX 200
#define NCODES 20
#define MAX_PROVIDERS 8
/* pause after an error before a slot or stream tries again: no hot loop while nobody serves */
#define RETRY_MS 20
#define CONNECT_MS 10000

typedef struct {
    const char *mode;
    const char *uri;
    const char *as;
    const char *service;
    const char *topic;
    const char *to;
    const char *pattern;
    const char *durable;
    const char *accepted_log, *attempted_log, *received_log;
    int window;
    int deadline_ms;
    int margin_ms;
    int hold_ms;
    int streams;
    int timeout_ms;
    int credit;
    int inbox;
    long idle_ms;
    size_t size;
    double seconds;
} opts_t;

static volatile sig_atomic_t s_stop;
static volatile sig_atomic_t s_mark;

static void
s_on_term(int sig)
{
    (void)sig;
    s_stop = 1;
}

static void
s_on_usr1(int sig)
{
    (void)sig;
    s_mark = 1;
}

static uint64_t
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void __attribute__((format(printf, 1, 2))) s_note(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "callload: %s\n", line); /* one call per line: threads do not interleave */
}

/* Appends `len` bytes to `fd` (O_APPEND); exits on failure: a log that lies is worse. */
static void
s_append(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            s_note("writing a log failed: %s", strerror(errno));
            exit(1);
        }
        buf += n;
        len -= (size_t)n;
    }
}

static int
s_open_log(const char *path)
{
    if (!path)
        return -1;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        s_note("cannot open %s: %s", path, strerror(errno));
        exit(2);
    }
    return fd;
}

/* ---- payloads: a stamp, then bytes generated from it -------------------------------------- */

/* Writes the payload of (who, stream, seq) into buf (cap >= size); returns its length. */
static size_t
s_payload(uint8_t *buf, size_t size, const char *who, long stream, long seq)
{
    int n = snprintf((char *)buf, STAMP_MAX, "cl1 %s %ld %ld\n", who, stream, seq);
    size_t head = (size_t)n;
    if (size < head)
        size = head;
    uint64_t x = s_fnv(buf, head);
    for (size_t i = head; i < size; i++)
        buf[i] = (uint8_t)(s_splitmix(&x) >> 56);
    return size;
}

/*
 * Parses and checks a payload: its stamp into who/stream/seq, the rest against the bytes the
 * stamp generates. Returns NULL when it is intact, or what is wrong.
 */
static const char *
s_check(const uint8_t *p, size_t len, char *who, size_t who_cap, long *stream, long *seq)
{
    const uint8_t *nl = memchr(p, '\n', len < STAMP_MAX ? len : STAMP_MAX);
    if (len < 4 || memcmp(p, "cl1 ", 4) != 0 || !nl)
        return "no stamp";
    char stamp[STAMP_MAX + 1], name[STAMP_MAX + 1];
    size_t head = (size_t)(nl - p) + 1;
    memcpy(stamp, p, head - 1);
    stamp[head - 1] = '\0';
    if (sscanf(stamp, "cl1 %200s %ld %ld", name, stream, seq) != 3)
        return "a stamp that does not parse";
    snprintf(who, who_cap, "%s", name);
    uint64_t x = s_fnv(p, head);
    for (size_t i = head; i < len; i++)
        if (p[i] != (uint8_t)(s_splitmix(&x) >> 56))
            return "the bytes after the stamp are not the ones generated from it";
    return NULL;
}

/* Connects a client named `as`; exits 2 when it cannot. */
static ab_client_t *
s_connect(const opts_t *o, const char *as)
{
    ab_client_t *c = ab_client_new();
    if (!c || ab_client_set_participant(c, as) != 0) {
        s_note("cannot make a client for %s", as);
        exit(2);
    }
    uint64_t end = s_now_ms() + CONNECT_MS;
    int rc;
    while ((rc = ab_client_connect(c, o->uri, 2000)) != 0) {
        if (s_now_ms() >= end || s_stop) {
            s_note("%s: cannot connect to %s: %s (%s)", as, o->uri, ab_err_name(rc),
                   ab_client_last_error(c));
            exit(2);
        }
        ab_client_destroy(&c); /* a new client: the broker may be restarting */
        c = ab_client_new();
        if (!c || ab_client_set_participant(c, as) != 0)
            exit(2);
        usleep(100000);
    }
    return c;
}

/* Drives `c` for up to `ms` milliseconds (less when it has work). */
static void
s_drive(ab_client_t *c, int ms)
{
    while (ab_client_process(c) == 1) {
    }
    int t = ab_client_next_timeout(c);
    if (t < 0 || t > ms)
        t = ms;
    struct pollfd pfd = {.fd = ab_client_fd(c), .events = POLLIN, .revents = 0};
    if (pfd.fd >= 0 && t > 0)
        poll(&pfd, 1, t);
    while (ab_client_process(c) == 1) {
    }
}

static int
s_code_idx(int status)
{
    int i = -status;
    return i >= 0 && i < NCODES ? i : NCODES - 1;
}

/* " err_NAME=N" for each code counted; returns buf. */
static const char *
s_codes(const long *n, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 1; i < NCODES && len < cap; i++)
        if (n[i])
            len += (size_t)snprintf(buf + len, cap - len, " err_%s=%ld", ab_err_name(-i), n[i]);
    return buf;
}

/* ---- serve: an echo provider -------------------------------------------------------------- */

typedef struct held {
    ab_request_t *req;
    uint64_t due;
    struct held *next;
} held_t;

typedef struct {
    const opts_t *o;
    held_t *held;
    long calls;
    uint64_t rnd;
} server_t;

static void
s_answer(server_t *s, ab_request_t *req)
{
    size_t len;
    const uint8_t *p = ab_request_payload(req, &len);
    size_t tag = strlen(s->o->as) + 1;
    uint8_t *out = malloc(len + tag + 1);
    if (!out) {
        ab_reply_error(&req, "out of memory");
        return;
    }
    memcpy(out, p, len);
    out[len] = '|';
    memcpy(out + len + 1, s->o->as, tag - 1);
    ab_reply(&req, out, len + tag);
    free(out);
    s->calls++;
}

static void
s_on_request(ab_client_t *client, ab_request_t *req, void *arg)
{
    (void)client;
    server_t *s = arg;
    if (s->o->hold_ms <= 0) {
        s_answer(s, req);
        return;
    }
    held_t *h = malloc(sizeof *h);
    if (!h) {
        ab_reply_error(&req, "out of memory");
        return;
    }
    h->req = req;
    h->due = s_now_ms() + s_splitmix(&s->rnd) % (uint64_t)(s->o->hold_ms + 1);
    h->next = s->held;
    s->held = h;
}

static int
s_serve(const opts_t *o)
{
    server_t s = {.o = o, .rnd = (uint64_t)getpid() * 7919u + s_now_ms()};
    ab_client_t *c = s_connect(o, o->as);
    int rc = ab_offer(c, o->service, s_on_request, &s);
    if (rc != 0) {
        s_note("%s: OFFER of %s refused: %s (%s)", o->as, o->service, ab_err_name(rc),
               ab_client_last_error(c));
        return 2;
    }
    printf("ready\n");
    fflush(stdout);
    uint64_t end = s_now_ms() + (uint64_t)(o->seconds * 1000);
    while (!s_stop && s_now_ms() < end) {
        s_drive(c, 5);
        uint64_t now = s_now_ms();
        for (held_t **pp = &s.held; *pp;) {
            held_t *h = *pp;
            if (h->due > now) {
                pp = &h->next;
                continue;
            }
            *pp = h->next;
            s_answer(&s, h->req);
            free(h);
        }
    }
    while (s.held) {
        held_t *h = s.held;
        s.held = h->next;
        s_answer(&s, h->req);
        free(h);
    }
    s_drive(c, 50);
    ab_client_destroy(&c);
    printf("result mode=serve as=%s calls=%ld\n", o->as, s.calls);
    return 0;
}

/* ---- call: a window of calls, each outcome checked ---------------------------------------- */

typedef struct caller caller_t;

typedef struct {
    caller_t *cl;
    long k; /* the call's number; -1 when the slot is free */
    uint64_t t0;
    uint64_t next_ms; /* a free slot starts its next call then */
    size_t len;
    uint8_t req[MAX_SIZE + STAMP_MAX];
} slot_t;

struct caller {
    const opts_t *o;
    slot_t *slots;
    long issued, ok, wrong, late, twice, hung, refused;
    long codes[NCODES];
    char prov[MAX_PROVIDERS][64];
    long prov_ok[MAX_PROVIDERS];
    int nprov;
    uint64_t max_ms;
};

static void
s_count_provider(caller_t *cl, const char *name, size_t len)
{
    int i;
    for (i = 0; i < cl->nprov; i++)
        if (strlen(cl->prov[i]) == len && memcmp(cl->prov[i], name, len) == 0)
            break;
    if (i == cl->nprov) {
        if (cl->nprov == MAX_PROVIDERS || len >= sizeof cl->prov[0])
            return;
        memcpy(cl->prov[i], name, len);
        cl->prov[i][len] = '\0';
        cl->nprov++;
    }
    cl->prov_ok[i]++;
}

static void
s_on_outcome(ab_client_t *client, int status, const void *reply, size_t reply_len,
             const char *errtext, void *arg)
{
    (void)client;
    slot_t *s = arg;
    caller_t *cl = s->cl;
    uint64_t now = s_now_ms();
    if (s->k < 0) {
        cl->twice++;
        s_note("an outcome (%s) for a call that had one already", ab_err_name(status));
        return;
    }
    uint64_t took = now - s->t0;
    if (took > cl->max_ms)
        cl->max_ms = took;
    if (took > (uint64_t)(cl->o->deadline_ms + cl->o->margin_ms)) {
        if (cl->late++ < 3)
            s_note("call %ld ended after %" PRIu64 " ms (%s), beyond its deadline %d + %d ms", s->k,
                   took, ab_err_name(status), cl->o->deadline_ms, cl->o->margin_ms);
    }
    if (status == 0) {
        const uint8_t *r = reply;
        if (reply_len > s->len + 1 && memcmp(r, s->req, s->len) == 0 && r[s->len] == '|') {
            cl->ok++;
            s_count_provider(cl, (const char *)r + s->len + 1, reply_len - s->len - 1);
        } else if (cl->wrong++ < 3) {
            s_note("call %ld: the reply (%zu bytes) is not its request (%zu bytes) + |PROVIDER",
                   s->k, reply_len, s->len);
        }
    } else {
        cl->codes[s_code_idx(status)]++;
        if (cl->codes[s_code_idx(status)] == 1)
            s_note("first %s after %" PRIu64 " ms: %s", ab_err_name(status), took,
                   errtext ? errtext : "");
        if (!errtext || !errtext[0])
            s_note("call %ld: %s without a text saying why", s->k, ab_err_name(status));
    }
    s->k = -1;
    s->next_ms = status == 0 ? 0 : now + RETRY_MS;
}

static void
s_print_calls(const char *what, caller_t *cl, int busy)
{
    char codes[512], prov[512];
    size_t len = 0;
    prov[0] = '\0';
    for (int i = 0; i < cl->nprov; i++)
        len += (size_t)snprintf(prov + len, sizeof prov - len, " ok_by_%s=%ld", cl->prov[i],
                                cl->prov_ok[i]);
    printf("%s mode=call calls=%ld ok=%ld%s%s in_flight=%d wrong=%ld late=%ld twice=%ld hung=%ld "
           "refused=%ld max_ms=%" PRIu64 "\n",
           what, cl->issued, cl->ok, s_codes(cl->codes, codes, sizeof codes), prov, busy, cl->wrong,
           cl->late, cl->twice, cl->hung, cl->refused, cl->max_ms);
    fflush(stdout);
}

static int
s_call(const opts_t *o)
{
    caller_t cl = {.o = o};
    cl.slots = calloc((size_t)o->window, sizeof *cl.slots);
    if (!cl.slots)
        return 2;
    ab_client_t *c = s_connect(o, o->as);
    printf("ready\n");
    fflush(stdout);
    uint64_t start = s_now_ms(), end = start + (uint64_t)(o->seconds * 1000);
    /* after the last call: its deadline, the library's grace, the margin */
    uint64_t patience = (uint64_t)(o->deadline_ms + o->margin_ms) + 1000;
    uint64_t stop_at = 0;
    for (int i = 0; i < o->window; i++) {
        cl.slots[i].cl = &cl;
        cl.slots[i].k = -1;
    }
    for (;;) {
        uint64_t now = s_now_ms();
        if (!stop_at && (s_stop || now >= end))
            stop_at = now;
        int busy = 0;
        for (int i = 0; i < o->window; i++) {
            slot_t *s = &cl.slots[i];
            if (s->k >= 0) {
                busy++;
                continue;
            }
            if (stop_at || s->next_ms > now)
                continue;
            s->len = s_payload(s->req, o->size, o->as, 0, cl.issued);
            s->k = cl.issued;
            s->t0 = now;
            int rc = ab_call_async(c, o->service, s->req, s->len, o->deadline_ms, s_on_outcome, s);
            if (rc != 0) {
                /* not sent, and no callback will come: an outcome at once, counted as such */
                s->k = -1;
                s->next_ms = now + RETRY_MS;
                cl.refused++;
                cl.codes[s_code_idx(rc)]++;
                continue;
            }
            cl.issued++;
            busy++;
        }
        if (s_mark) {
            s_mark = 0;
            s_print_calls("mark", &cl, busy);
        }
        if (stop_at && busy == 0)
            break;
        if (stop_at && now - stop_at > patience) {
            for (int i = 0; i < o->window; i++)
                if (cl.slots[i].k >= 0) {
                    cl.hung++;
                    s_note("call %ld has no outcome %" PRIu64 " ms after it was made",
                           cl.slots[i].k, now - cl.slots[i].t0);
                }
            break;
        }
        s_drive(c, 5);
    }
    int busy = 0;
    for (int i = 0; i < o->window; i++)
        busy += cl.slots[i].k >= 0;
    s_print_calls("result", &cl, busy);
    /* the calls that hung still hold their slots as callback arguments: destroy first */
    ab_client_destroy(&c);
    free(cl.slots);
    return cl.wrong || cl.late || cl.twice || cl.hung ? 1 : 0;
}

/* ---- source: numbered streams of PUBLISH and SEND ----------------------------------------- */

typedef struct {
    const opts_t *o;
    int is_pub;
    long stream;
    int acc_fd, att_fd;
    long accepted, attempts, next_seq;
    long codes[NCODES];
} stream_t;

static void *
s_stream_run(void *arg)
{
    stream_t *st = arg;
    const opts_t *o = st->o;
    ab_client_t *c = s_connect(o, o->as);
    uint8_t *buf = malloc(o->size + STAMP_MAX);
    uint64_t end = s_now_ms() + (uint64_t)(o->seconds * 1000);
    const char *kind = st->is_pub ? "event" : "mail";
    uint8_t id[AB_MESSAGE_ID_LEN];
    long seq = 0;
    int fresh = 1;
    char line[STAMP_MAX + 64];
    while (buf && !s_stop && s_now_ms() < end) {
        if (fresh) {
            int n = snprintf(line, sizeof line, "%s %s %ld %ld\n", kind, o->as, st->stream, seq);
            if (st->att_fd >= 0)
                s_append(st->att_fd, line, (size_t)n);
            /* the same id for every try of this number: the broker stores a SEND once */
            ab_uuid7(id);
            fresh = 0;
        }
        size_t len = s_payload(buf, o->size, o->as, st->stream, seq);
        st->attempts++;
        int rc;
        if (st->is_pub) {
            rc = ab_publish(c, o->topic, buf, len, NULL, NULL, o->timeout_ms);
        } else {
            ab_send_options_t so = {.message_id = id};
            rc = ab_send(c, o->to, buf, len, &so, NULL, o->timeout_ms);
        }
        if (rc == 0) {
            int n = snprintf(line, sizeof line, "%s %s %ld %ld\n", kind, o->as, st->stream, seq);
            if (st->acc_fd >= 0)
                s_append(st->acc_fd, line, (size_t)n);
            st->accepted++;
            seq++;
            fresh = 1;
        } else {
            if (st->codes[s_code_idx(rc)]++ == 0)
                s_note("%s stream %ld: first %s: %s", kind, st->stream, ab_err_name(rc),
                       ab_client_last_error(c));
            s_drive(c, RETRY_MS);
        }
    }
    st->next_seq = seq;
    free(buf);
    ab_client_destroy(&c);
    return NULL;
}

static int
s_source(const opts_t *o)
{
    int kinds = (o->topic != NULL) + (o->to != NULL);
    int n = kinds * o->streams;
    stream_t *sts = calloc((size_t)n, sizeof *sts);
    pthread_t th[2 * MAX_STREAMS];
    int acc_fd = s_open_log(o->accepted_log), att_fd = s_open_log(o->attempted_log);
    for (int i = 0; i < n; i++) {
        sts[i].o = o;
        sts[i].is_pub = o->topic && i < o->streams;
        sts[i].stream = i;
        sts[i].acc_fd = acc_fd;
        sts[i].att_fd = att_fd;
        pthread_create(&th[i], NULL, s_stream_run, &sts[i]);
    }
    long codes[NCODES] = {0}, acc[2] = {0}, att[2] = {0};
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        acc[sts[i].is_pub] += sts[i].accepted;
        att[sts[i].is_pub] += sts[i].attempts;
        for (int k = 0; k < NCODES; k++)
            codes[k] += sts[i].codes[k];
    }
    char buf[512];
    printf("result mode=source streams=%d events_accepted=%ld event_tries=%ld mails_accepted=%ld "
           "mail_tries=%ld%s\n",
           n, acc[1], att[1], acc[0], att[0], s_codes(codes, buf, sizeof buf));
    free(sts);
    return 0;
}

/* ---- sink: the recipient and the durable subscriber --------------------------------------- */

typedef struct kept {
    ab_message_t *m;
    uint64_t due;
    struct kept *next;
} kept_t;

typedef struct {
    const opts_t *o;
    int log_fd;
    long messages, events, corrupt, other;
    uint64_t last_ms, rnd;
    kept_t *kept; /* processed, acknowledged when due */
} sink_t;

/* Acknowledges what is due (all with `all`). */
static void
s_ack_due(sink_t *k, int all)
{
    uint64_t now = s_now_ms();
    for (kept_t **pp = &k->kept; *pp;) {
        kept_t *e = *pp;
        if (!all && e->due > now) {
            pp = &e->next;
            continue;
        }
        *pp = e->next;
        ab_ack(&e->m);
        free(e);
    }
}

static void
s_on_message(ab_client_t *client, ab_message_t *m, void *arg)
{
    (void)client;
    sink_t *k = arg;
    int kind = ab_message_kind(m);
    if (kind != AB_MSG_MESSAGE && kind != AB_MSG_EVENT) {
        k->other++;
        ab_ack(&m);
        return;
    }
    size_t len;
    const uint8_t *p = ab_message_payload(m, &len);
    char who[STAMP_MAX + 1] = "-";
    long stream = -1, seq = -1;
    const char *why = s_check(p, len, who, sizeof who, &stream, &seq);
    if (why) {
        k->corrupt++;
        s_note("CORRUPT %s %s from %s (sequence %" PRIu64 ", attempt %u): %s",
               kind == AB_MSG_EVENT ? "event" : "message", ab_message_id(m), ab_message_sender(m),
               ab_message_sequence(m), ab_message_attempt(m), why);
    } else if (strcmp(who, ab_message_sender(m)) != 0) {
        why = "stamped by another participant than its sender";
        k->corrupt++;
        s_note("CORRUPT %s: stamped by %s, sender %s", ab_message_id(m), who, ab_message_sender(m));
    }
    char line[2 * STAMP_MAX + 128];
    int n = snprintf(line, sizeof line, "%s %s %ld %ld %" PRIu64 " %u %s\n",
                     kind == AB_MSG_EVENT ? "event" : "mail", who, stream, seq,
                     ab_message_sequence(m), ab_message_attempt(m), why ? "corrupt" : "ok");
    if (k->log_fd >= 0)
        s_append(k->log_fd, line, (size_t)n);
    if (kind == AB_MSG_EVENT)
        k->events++;
    else
        k->messages++;
    k->last_ms = s_now_ms();
    /* acknowledged after it was processed (logged), at once or after a random 0..H ms */
    kept_t *e = k->o->hold_ms > 0 ? malloc(sizeof *e) : NULL;
    if (!e) {
        ab_ack(&m);
        return;
    }
    e->m = m;
    e->due = k->last_ms + s_splitmix(&k->rnd) % (uint64_t)(k->o->hold_ms + 1);
    e->next = k->kept;
    k->kept = e;
}

static int
s_sink(const opts_t *o)
{
    sink_t k = {.o = o,
                .log_fd = s_open_log(o->received_log),
                .last_ms = s_now_ms(),
                .rnd = (uint64_t)getpid() * 7919u + s_now_ms()};
    ab_client_t *c = s_connect(o, o->as);
    int rc;
    if (o->inbox && (rc = ab_inbox(c, (uint32_t)o->credit, s_on_message, &k)) != 0) {
        s_note("%s: CREDIT refused: %s (%s)", o->as, ab_err_name(rc), ab_client_last_error(c));
        return 2;
    }
    if (o->pattern && (rc = ab_subscribe(c, o->pattern, o->durable, (uint32_t)o->credit,
                                         s_on_message, &k)) != 0) {
        s_note("%s: SUBSCRIBE refused: %s (%s)", o->as, ab_err_name(rc), ab_client_last_error(c));
        return 2;
    }
    s_note("%s: ready", o->as);
    uint64_t end = s_now_ms() + (uint64_t)(o->seconds * 1000);
    k.last_ms = s_now_ms();
    while (!s_stop && s_now_ms() < end) {
        if (o->idle_ms > 0 && s_now_ms() - k.last_ms >= (uint64_t)o->idle_ms)
            break;
        s_drive(c, 5);
        s_ack_due(&k, 0);
    }
    s_ack_due(&k, 1);
    s_drive(c, 50); /* the last ACKs */
    long dropped = (long)ab_client_duplicates_dropped(c);
    ab_client_destroy(&c);
    printf("result mode=sink messages=%ld events=%ld corrupt=%ld other=%ld "
           "library_dropped_duplicates=%ld\n",
           k.messages, k.events, k.corrupt, k.other, dropped);
    return k.corrupt ? 1 : 0;
}

/* ---- main --------------------------------------------------------------------------------- */

static void
s_usage(void)
{
    fprintf(stderr, "usage: callload serve|call|source|sink --broker URI --as ADDR [options]\n"
                    "  (see the comment at the top of tests/tools/callload.c)\n");
}

static long
s_num(const char *name, const char *v, long lo, long hi)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || n < lo || n > hi) {
        fprintf(stderr, "callload: %s must be a number from %ld to %ld, not '%s'\n", name, lo, hi,
                v);
        exit(2);
    }
    return n;
}

int
main(int argc, char **argv)
{
    if (argc < 2) {
        s_usage();
        return 2;
    }
    opts_t o = {.mode = argv[1],
                .window = 32,
                .deadline_ms = 2000,
                .margin_ms = 3000,
                .streams = 4,
                .timeout_ms = 2000,
                .credit = 64,
                .size = 256,
                .seconds = 60};
    enum {
        O_BROKER = 1,
        O_AS,
        O_SERVICE,
        O_TOPIC,
        O_TO,
        O_SUBSCRIBE,
        O_DURABLE,
        O_ACC,
        O_ATT,
        O_RCV,
        O_WINDOW,
        O_DEADLINE,
        O_MARGIN,
        O_HOLD,
        O_STREAMS,
        O_TIMEOUT,
        O_CREDIT,
        O_INBOX,
        O_IDLE,
        O_SIZE,
        O_SECONDS
    };
    static const struct option longopts[] = {{"broker", 1, 0, O_BROKER},
                                             {"as", 1, 0, O_AS},
                                             {"service", 1, 0, O_SERVICE},
                                             {"topic", 1, 0, O_TOPIC},
                                             {"to", 1, 0, O_TO},
                                             {"subscribe", 1, 0, O_SUBSCRIBE},
                                             {"durable", 1, 0, O_DURABLE},
                                             {"accepted-log", 1, 0, O_ACC},
                                             {"attempted-log", 1, 0, O_ATT},
                                             {"received-log", 1, 0, O_RCV},
                                             {"window", 1, 0, O_WINDOW},
                                             {"deadline-ms", 1, 0, O_DEADLINE},
                                             {"margin-ms", 1, 0, O_MARGIN},
                                             {"hold-ms", 1, 0, O_HOLD},
                                             {"streams", 1, 0, O_STREAMS},
                                             {"timeout-ms", 1, 0, O_TIMEOUT},
                                             {"credit", 1, 0, O_CREDIT},
                                             {"inbox", 0, 0, O_INBOX},
                                             {"idle-ms", 1, 0, O_IDLE},
                                             {"size", 1, 0, O_SIZE},
                                             {"seconds", 1, 0, O_SECONDS},
                                             {0, 0, 0, 0}};
    optind = 2;
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case O_BROKER:
            o.uri = optarg;
            break;
        case O_AS:
            o.as = optarg;
            break;
        case O_SERVICE:
            o.service = optarg;
            break;
        case O_TOPIC:
            o.topic = optarg;
            break;
        case O_TO:
            o.to = optarg;
            break;
        case O_SUBSCRIBE:
            o.pattern = optarg;
            break;
        case O_DURABLE:
            o.durable = optarg;
            break;
        case O_ACC:
            o.accepted_log = optarg;
            break;
        case O_ATT:
            o.attempted_log = optarg;
            break;
        case O_RCV:
            o.received_log = optarg;
            break;
        case O_WINDOW:
            o.window = (int)s_num("--window", optarg, 1, MAX_WINDOW);
            break;
        case O_DEADLINE:
            o.deadline_ms = (int)s_num("--deadline-ms", optarg, 1, 600000);
            break;
        case O_MARGIN:
            o.margin_ms = (int)s_num("--margin-ms", optarg, 0, 600000);
            break;
        case O_HOLD:
            o.hold_ms = (int)s_num("--hold-ms", optarg, 0, 600000);
            break;
        case O_STREAMS:
            o.streams = (int)s_num("--streams", optarg, 1, MAX_STREAMS);
            break;
        case O_TIMEOUT:
            o.timeout_ms = (int)s_num("--timeout-ms", optarg, 1, 600000);
            break;
        case O_CREDIT:
            o.credit = (int)s_num("--credit", optarg, 1, 100000);
            break;
        case O_INBOX:
            o.inbox = 1;
            break;
        case O_IDLE:
            o.idle_ms = s_num("--idle-ms", optarg, 0, 3600000);
            break;
        case O_SIZE:
            o.size = (size_t)s_num("--size", optarg, 0, MAX_SIZE);
            break;
        case O_SECONDS:
            o.seconds = (double)s_num("--seconds", optarg, 1, 86400);
            break;
        default:
            s_usage();
            return 2;
        }
    }
    if (optind != argc || !o.uri || !o.as) {
        fprintf(stderr, "callload: --broker and --as are required; no other arguments\n");
        return 2;
    }
    struct sigaction sa = {0};
    sa.sa_handler = s_on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = s_on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(o.mode, "serve") == 0 || strcmp(o.mode, "call") == 0) {
        if (!o.service) {
            fprintf(stderr, "callload %s: --service is required\n", o.mode);
            return 2;
        }
        return o.mode[0] == 's' ? s_serve(&o) : s_call(&o);
    }
    if (strcmp(o.mode, "source") == 0) {
        if (!o.topic && !o.to) {
            fprintf(stderr, "callload source: --topic or --to (or both) is required\n");
            return 2;
        }
        return s_source(&o);
    }
    if (strcmp(o.mode, "sink") == 0) {
        if (!o.inbox && !o.pattern) {
            fprintf(stderr, "callload sink: --inbox or --subscribe (or both) is required\n");
            return 2;
        }
        if (o.pattern && !o.durable) {
            fprintf(stderr, "callload sink: --subscribe needs --durable NAME\n");
            return 2;
        }
        return s_sink(&o);
    }
    fprintf(stderr, "callload: unknown mode '%s'\n", o.mode);
    s_usage();
    return 2;
}
