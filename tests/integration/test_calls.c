/*
 * Integration tests: service calls through the real amtsbote-broker process, with the real
 * client library, on loopback. Each group starts its own broker.
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include <cmocka.h>

#include "harness.h"
#include "wire.h"

#define SERVICE "meldewesen.v1.Melderegister"
#define METHOD SERVICE "/Meldebescheinigung"

static h_broker_t B;

/* ---- fixtures ------------------------------------------------------------------------------- */

static int
group_setup(void **state)
{
    (void)state;
    const char *extra[] = {
        "--heartbeat-ms", "200", "--heartbeat-timeout-ms", "600", "--max-payload", "65536", NULL};
    return h_broker_start(&B, 0, extra);
}

static int
group_teardown(void **state)
{
    (void)state;
    int st = h_broker_stop(&B, SIGTERM, 10000);
    if (st != 0)
        fprintf(stderr, "broker exited with %d (log in %s)\n", st, B.dir);
    return st == 0 ? 0 : -1;
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void
test_round_trip(void **state)
{
    (void)state;
    h_provider_t p;
    assert_int_equal(h_provider_start(&p, B.tls, "kommune.09162000.meldeamt", SERVICE, 0), 0);
    ab_client_t *c = h_client(B.tls, "bund.bmi");
    assert_non_null(c);
    assert_string_equal(ab_client_participant(c), "bund.bmi");
    void *reply = NULL;
    size_t len = 0;
    const char req[] = "Antrag 4711";
    assert_int_equal(ab_call(c, METHOD, req, sizeof req - 1, 5000, &reply, &len), 0);
    const char want[] = "kommune.09162000.meldeamt:Antrag 4711";
    assert_int_equal(len, sizeof want - 1);
    assert_memory_equal(reply, want, len);
    ab_free(reply);
    assert_string_equal(p.last_caller, "bund.bmi"); /* the broker stamped the caller */

    /* an empty payload is a payload too */
    assert_int_equal(ab_call(c, METHOD, "", 0, 5000, &reply, &len), 0);
    assert_int_equal(len, strlen("kommune.09162000.meldeamt:"));
    ab_free(reply);

    /* the same through the ipc listener */
    ab_client_t *c2 = h_client(B.ipc, "land.by.stmi");
    assert_non_null(c2);
    assert_int_equal(ab_call(c2, METHOD, "x", 1, 5000, &reply, &len), 0);
    ab_free(reply);
    ab_client_destroy(&c2);
    ab_client_destroy(&c);
    h_provider_stop(&p);
}

/* 10 callers on threads, each with 100 calls in flight at once, over 3 providers. */
#define CALLERS 10
#define PER_CALLER 100

typedef struct {
    int index;
    int answered[PER_CALLER];
    int status[PER_CALLER];
    int wrong;
    int errors;
    int done;
} caller_t;

typedef struct {
    caller_t *caller;
    int call;
} call_ctx_t;

static void
s_on_reply(ab_client_t *c, int status, const void *reply, size_t len, const char *errtext,
           void *arg)
{
    (void)c;
    (void)errtext;
    call_ctx_t *ctx = arg;
    caller_t *k = ctx->caller;
    k->answered[ctx->call]++;
    k->status[ctx->call] = status;
    k->done++;
    if (status != 0) {
        k->errors++;
        return;
    }
    char want[64];
    int n = snprintf(want, sizeof want, "caller-%d-call-%d", k->index, ctx->call);
    /* reply = "PROVIDER:request" */
    const char *colon = memchr(reply, ':', len);
    if (!colon || (size_t)(len - (size_t)(colon + 1 - (const char *)reply)) != (size_t)n ||
        memcmp(colon + 1, want, (size_t)n) != 0)
        k->wrong++;
}

static void *
s_caller_main(void *arg)
{
    caller_t *k = arg;
    char name[32];
    snprintf(name, sizeof name, "kommune.caller%d", k->index);
    ab_client_t *c = h_client(B.tls, name);
    if (!c)
        return NULL;
    call_ctx_t ctx[PER_CALLER];
    char req[64];
    for (int i = 0; i < PER_CALLER; i++) {
        ctx[i].caller = k;
        ctx[i].call = i;
        int n = snprintf(req, sizeof req, "caller-%d-call-%d", k->index, i);
        if (ab_call_async(c, METHOD, req, (size_t)n, 20000, s_on_reply, &ctx[i]) != 0)
            k->errors++;
    }
    long long deadline = h_now_ms() + 30000;
    while (k->done + k->errors < PER_CALLER && h_now_ms() < deadline)
        ab_client_run(c, 20);
    ab_client_destroy(&c);
    return NULL;
}

static void
test_thousand_in_flight(void **state)
{
    (void)state;
    h_provider_t p[3];
    assert_int_equal(h_provider_start(&p[0], B.tls, "kommune.p1", SERVICE, 0), 0);
    assert_int_equal(h_provider_start(&p[1], B.tls, "kommune.p2", SERVICE, 0), 0);
    assert_int_equal(h_provider_start(&p[2], B.ipc, "kommune.p3", METHOD, 0), 0);
    caller_t k[CALLERS];
    pthread_t t[CALLERS];
    memset(k, 0, sizeof k);
    for (int i = 0; i < CALLERS; i++) {
        k[i].index = i;
        pthread_create(&t[i], NULL, s_caller_main, &k[i]);
    }
    for (int i = 0; i < CALLERS; i++)
        pthread_join(t[i], NULL);
    int total = 0;
    for (int i = 0; i < CALLERS; i++) {
        assert_int_equal(k[i].errors, 0);
        assert_int_equal(k[i].wrong, 0);
        for (int j = 0; j < PER_CALLER; j++)
            assert_int_equal(k[i].answered[j], 1); /* each answered exactly once */
        total += k[i].done;
    }
    assert_int_equal(total, CALLERS * PER_CALLER);
    int served = 0;
    for (int i = 0; i < 3; i++) {
        h_provider_stop(&p[i]);
        assert_true(atomic_load(&p[i].served) > 0); /* every provider took a share */
        served += atomic_load(&p[i].served);
    }
    assert_int_equal(served, CALLERS * PER_CALLER);
}

static long long s_reply_at[3];
static int s_replies;

static void
s_on_timed_reply(ab_client_t *c, int status, const void *reply, size_t len, const char *errtext,
                 void *arg)
{
    (void)c;
    (void)reply;
    (void)len;
    (void)errtext;
    (void)arg;
    if (status == 0 && s_replies < 3)
        s_reply_at[s_replies++] = h_now_ms();
}

/* A provider whose handler works synchronously (500 ms per call) answers each call as it is
 * done, not all of them after the last. */
static void
test_slow_handler_answers_are_not_held_back(void **state)
{
    (void)state;
    h_provider_t p;
    assert_int_equal(h_provider_start(&p, B.tls, "kommune.langsam", "x.v1.Langsam", 2), 0);
    ab_client_t *c = h_client(B.tls, "bund.bmi");
    s_replies = 0;
    for (int i = 0; i < 3; i++)
        assert_int_equal(ab_call_async(c, "x.v1.Langsam/M", "a", 1, 10000, s_on_timed_reply, NULL),
                         0);
    long long deadline = h_now_ms() + 8000;
    while (s_replies < 3 && h_now_ms() < deadline)
        ab_client_run(c, 20);
    assert_int_equal(s_replies, 3);
    /* held back, all three would arrive together; answered as done, ~500 ms apart */
    assert_true(s_reply_at[2] - s_reply_at[0] >= 700);
    ab_client_destroy(&c);
    h_provider_stop(&p);
}

static void
test_unknown_service(void **state)
{
    (void)state;
    ab_client_t *c = h_client(B.tls, "bund.bmi");
    void *reply = (void *)1;
    size_t len = 0;
    assert_int_equal(ab_call(c, "x.v1.Nobody/Home", "a", 1, 5000, &reply, &len),
                     AB_EUNKNOWN_SERVICE);
    assert_null(reply);
    assert_non_null(strstr(ab_client_last_error(c), "x.v1.Nobody/Home"));
    assert_int_equal(ab_call(c, "not a service", "a", 1, 5000, &reply, &len), AB_EINVAL);
    ab_client_destroy(&c);
}

static void
test_deadline(void **state)
{
    (void)state;
    h_provider_t p;
    assert_int_equal(h_provider_start(&p, B.tls, "kommune.slow", "x.v1.Slow", 1), 0);
    ab_client_t *c = h_client(B.tls, "bund.bmi");
    void *reply = NULL;
    size_t len = 0;
    long long t0 = h_now_ms();
    assert_int_equal(ab_call(c, "x.v1.Slow/Wait", "a", 1, 300, &reply, &len), AB_EDEADLINE);
    long long took = h_now_ms() - t0;
    assert_non_null(strstr(ab_client_last_error(c), "deadline"));
    assert_true(took >= 290); /* not before the deadline */
    h_provider_stop(&p);      /* it now answers late: dropped by the broker */
    ab_client_destroy(&c);
    usleep(100000);
    assert_true(h_broker_log_has(&B, "event=late_reply"));
}

/* The provider is the CLI in its own process over mutual TLS, running a command that never
 * finishes; returns its pid once it is ready (its stdout in *out). */
static pid_t
s_doomed_provider(const char *uri, int *out)
{
    const char *pki = h_pki_cert("kommune.doomed");
    assert_non_null(pki);
    char cert[512], key[512], ca[512];
    snprintf(cert, sizeof cert, "%s/kommune.doomed.crt", pki);
    snprintf(key, sizeof key, "%s/kommune.doomed.key", pki);
    snprintf(ca, sizeof ca, "%s/ca/chain.pem", pki);
    const char *argv[] = {H_CLI_BIN,     "--broker", uri,        "--cert", cert,
                          "--key",       key,        "--ca",     ca,       "serve",
                          "x.v1.Doomed", "--exec",   "sleep 60", NULL};
    pid_t pid = h_spawn(argv, out, NULL);
    assert_true(pid > 0);
    assert_int_equal(h_wait_line(*out, "ready", 10000), 0);
    return pid;
}

/* Makes `n` calls (deadline `deadline_ms`) that reach the doomed provider, kills it without a
 * word, and runs the client until all are answered or `wait_ms` passed; each must have ended
 * PROVIDER_GONE, and the service must be gone. Returns the ms from the kill to the last answer. */
static long long
s_calls_to_killed_provider(ab_client_t *c, pid_t pid, int out, int n, int deadline_ms, int wait_ms)
{
    caller_t k;
    memset(&k, 0, sizeof k);
    call_ctx_t ctx[8];
    assert_true(n <= 8);
    for (int i = 0; i < n; i++) {
        ctx[i].caller = &k;
        ctx[i].call = i;
        assert_int_equal(
            ab_call_async(c, "x.v1.Doomed/Run", "a", 1, deadline_ms, s_on_reply, &ctx[i]), 0);
    }
    /* let the calls reach the provider, then kill it */
    long long until = h_now_ms() + 300;
    while (h_now_ms() < until)
        ab_client_run(c, 20);
    kill(pid, SIGKILL);
    h_wait_pid(pid, 5000);
    close(out);
    long long killed = h_now_ms();
    while (k.done < n && h_now_ms() < killed + wait_ms)
        ab_client_run(c, 20);
    long long took = h_now_ms() - killed;
    /* all answered, with errors; the deadline was not what ended them */
    assert_int_equal(k.done, n);
    for (int i = 0; i < n; i++)
        assert_int_equal(k.status[i], AB_EPROVIDER_GONE);
    void *reply = NULL;
    size_t len = 0;
    assert_int_equal(ab_call(c, "x.v1.Doomed/Run", "a", 1, 2000, &reply, &len),
                     AB_EUNKNOWN_SERVICE);
    return took;
}

static void
test_provider_killed(void **state)
{
    (void)state;
    int out = -1;
    pid_t pid = s_doomed_provider(B.tls, &out);
    ab_client_t *c = h_client(B.tls, "bund.bmi");
    s_calls_to_killed_provider(c, pid, out, 5, 20000, 15000);
    ab_client_destroy(&c);
    assert_true(h_broker_log_has(&B, "event=provider_gone participant=kommune.doomed"));
}

/* Over mutual TLS the broker learns at once that a provider's session ended (the TLS gateway
 * tells it), not after the heartbeat timeout: a broker with a 20 s heartbeat timeout fails the
 * calls a killed provider held with PROVIDER_GONE long before that (and before their 30 s
 * deadline), and sends later calls nowhere. */
static void
test_provider_killed_tls_session_end(void **state)
{
    (void)state;
    h_broker_t b2;
    const char *extra[] = {"--heartbeat-ms", "5000", "--heartbeat-timeout-ms", "20000", NULL};
    assert_int_equal(h_broker_start(&b2, 0, extra), 0);
    int out = -1;
    pid_t pid = s_doomed_provider(b2.tls, &out);
    ab_client_t *c = h_client(b2.tls, "bund.bmi");
    assert_non_null(c);
    /* the heartbeat timeout would take 20 s: waiting 10 s can only be answered by the notice */
    long long took = s_calls_to_killed_provider(c, pid, out, 3, 30000, 10000);
    print_message("calls answered %lld ms after the provider was killed\n", took);
    ab_client_destroy(&c);
    assert_true(h_broker_log_has(&b2, "event=provider_gone participant=kommune.doomed"));
    assert_int_equal(h_broker_stop(&b2, SIGTERM, 10000), 0);
}

/* The other side of noticing a session's end at once: a provider that answers and closes its
 * connection right away must not lose its answer to it (the REPLY may still be inside libzmq when
 * the gateway sees the close). Ten providers in turn, each answering one call and closing. */
static void
s_answer_once(ab_client_t *client, ab_request_t *req, void *arg)
{
    (void)client;
    *(int *)arg = ab_reply(&req, "erledigt", 8) == 0 ? 1 : 2;
}

static void
test_provider_answers_and_closes_tls(void **state)
{
    (void)state;
    assert_non_null(h_pki_cert("kommune.kurz"));
    ab_client_t *c = h_client(B.tls, "bund.bmi");
    assert_non_null(c);
    for (int round = 0; round < 10; round++) {
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            ab_client_t *p = h_client(B.tls, "kommune.kurz");
            int answered = 0;
            if (!p || ab_offer(p, "x.v1.Kurz", s_answer_once, &answered) != 0)
                _exit(2);
            ssize_t w = write(fds[1], "r", 1);
            (void)w;
            for (int i = 0; i < 500 && !answered; i++)
                ab_client_run(p, 20);
            ab_client_destroy(&p); /* at once after the answer: the answer goes first */
            _exit(answered == 1 ? 0 : 3);
        }
        close(fds[1]);
        char ch = 0;
        assert_int_equal(read(fds[0], &ch, 1), 1);
        close(fds[0]);
        void *reply = NULL;
        size_t len = 0;
        int rc = ab_call(c, "x.v1.Kurz/Tun", "a", 1, 5000, &reply, &len);
        if (rc != 0)
            fail_msg("round %d: %s (%s)", round, ab_err_name(rc), ab_client_last_error(c));
        assert_int_equal(len, 8);
        assert_memory_equal(reply, "erledigt", 8);
        ab_free(reply);
        assert_int_equal(h_wait_pid(pid, 5000), 0);
    }
    ab_client_destroy(&c);
}

/* The same for a recipient: a message delivered over mutual TLS to a recipient that is killed
 * before it acknowledges goes to the recipient's next connection at once, not after the
 * heartbeat timeout (20 s) or the acknowledgement timeout (30 s). */
typedef struct {
    int fd;
    int got;
    uint32_t attempt;
} s_sink_t;

static void
s_sink_msg(ab_client_t *client, ab_message_t *m, void *arg)
{
    (void)client;
    s_sink_t *k = arg;
    k->got++;
    k->attempt = ab_message_attempt(m);
    if (k->fd >= 0) { /* the doomed one: holds it unacknowledged and says so */
        ssize_t w = write(k->fd, "x", 1);
        (void)w;
        ab_message_free(&m);
        return;
    }
    ab_ack(&m);
}

static void
test_recipient_killed_tls_session_end(void **state)
{
    (void)state;
    h_broker_t b2;
    const char *extra[] = {
        "--heartbeat-ms", "5000", "--heartbeat-timeout-ms", "20000", "--ack-timeout-ms",
        "30000",          NULL};
    assert_int_equal(h_broker_start(&b2, 0, extra), 0);
    assert_non_null(h_pki_cert("kommune.09162000.empfang"));
    assert_non_null(h_pki_cert("bund.quelle"));
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) { /* the recipient that will be killed: takes the message, never acks */
        close(fds[0]);
        ab_client_t *c = h_client(b2.tls, "kommune.09162000.empfang");
        s_sink_t k = {.fd = fds[1]};
        if (!c || ab_inbox(c, 10, s_sink_msg, &k) != 0)
            _exit(2);
        ssize_t w = write(fds[1], "r", 1);
        (void)w;
        for (int i = 0; i < 3000; i++)
            ab_client_run(c, 20);
        _exit(0);
    }
    close(fds[1]);
    char ch = 0;
    assert_int_equal(read(fds[0], &ch, 1), 1); /* attached */
    assert_int_equal(ch, 'r');
    ab_client_t *a = h_client(b2.tls, "bund.quelle");
    assert_non_null(a);
    char id[33];
    assert_int_equal(ab_send(a, "kommune.09162000.empfang", "Antrag", 6, NULL, id, 5000), 0);
    assert_int_equal(read(fds[0], &ch, 1), 1); /* delivered, not acknowledged */
    assert_int_equal(ch, 'x');
    kill(pid, SIGKILL);
    h_wait_pid(pid, 5000);
    close(fds[0]);
    long long killed = h_now_ms();
    ab_client_t *r = h_client(b2.tls, "kommune.09162000.empfang");
    assert_non_null(r);
    s_sink_t k = {.fd = -1};
    assert_int_equal(ab_inbox(r, 10, s_sink_msg, &k), 0);
    while (k.got == 0 && h_now_ms() < killed + 10000)
        ab_client_run(r, 20);
    print_message("delivered again %lld ms after the recipient was killed\n", h_now_ms() - killed);
    assert_int_equal(k.got, 1);
    assert_int_equal(k.attempt, 2);
    ab_client_destroy(&r);
    ab_client_destroy(&a);
    assert_int_equal(h_broker_stop(&b2, SIGTERM, 10000), 0);
}

/* A broker killed with calls in flight: their answers cannot come any more (the broker answers on
 * the connection a call came in on, and the next connection is another peer to it), so the library
 * ends them at once with UNAVAILABLE, over tls:// and tcp:// alike, not at their deadline of 30 s
 * + 2 s. */
typedef struct {
    int done, status;
    char text[256];
} s_outcome_t;

static void
s_on_outcome(ab_client_t *c, int status, const void *reply, size_t len, const char *errtext,
             void *arg)
{
    (void)c;
    (void)reply;
    (void)len;
    s_outcome_t *o = arg;
    o->done++;
    o->status = status;
    snprintf(o->text, sizeof o->text, "%s", errtext ? errtext : "");
}

static void
test_broker_killed_calls_end(void **state)
{
    (void)state;
    h_broker_t b2;
    assert_int_equal(h_broker_start(&b2, 0, NULL), 0);
    h_provider_t p;
    assert_int_equal(h_provider_start(&p, b2.tls, "kommune.halter", SERVICE, 1), 0);
    ab_client_t *c[2] = {h_client(b2.tls, "bund.bmi"), h_client(b2.tcp, "bund.bmf")};
    assert_non_null(c[0]);
    assert_non_null(c[1]);
    s_outcome_t o[2][3];
    memset(o, 0, sizeof o);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            assert_int_equal(ab_call_async(c[i], METHOD, "x", 1, 30000, s_on_outcome, &o[i][j]), 0);
    long long until = h_now_ms() + 10000;
    while (atomic_load(&p.received) < 6 && h_now_ms() < until) {
        ab_client_run(c[0], 10);
        ab_client_run(c[1], 10);
    }
    assert_int_equal(atomic_load(&p.received), 6); /* all six with the provider, unanswered */
    assert_int_equal(h_broker_stop(&b2, SIGKILL, 5000), 128 + SIGKILL);
    long long killed = h_now_ms();
    int done = 0;
    while (done < 6 && h_now_ms() < killed + 10000) {
        ab_client_run(c[0], 10);
        ab_client_run(c[1], 10);
        done = 0;
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 3; j++)
                done += o[i][j].done;
    }
    print_message("calls ended %lld ms after the broker was killed\n", h_now_ms() - killed);
    for (int i = 0; i < 2; i++) {
        for (int j = 0; j < 3; j++) {
            assert_int_equal(o[i][j].done, 1);
            assert_int_equal(o[i][j].status, AB_EUNAVAILABLE);
            assert_non_null(strstr(o[i][j].text, "connection to the broker broke"));
        }
    }
    /* and a provider without its broker closes without waiting for it */
    long long t0 = h_now_ms();
    h_provider_stop(&p);
    ab_client_destroy(&c[0]);
    ab_client_destroy(&c[1]);
    print_message("provider and callers closed in %lld ms\n", h_now_ms() - t0);
}

/* One raw DEALER speaking PLAIN, to send what the client library never would. */
static void *
s_raw(void *ctx, const char *participant)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, timeout = 5000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_setsockopt(s, ZMQ_PLAIN_USERNAME, participant, strlen(participant));
    zmq_setsockopt(s, ZMQ_PLAIN_PASSWORD, "", 0);
    assert_int_equal(zmq_connect(s, B.tcp), 0);
    return s;
}

/* Receives one answer and returns its error code (0 for non-errors); the text goes to `text`. */
static int
s_raw_answer(void *s, char *text, size_t cap)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    int code = -1;
    if (zmq_msg_recv(&m, s, 0) >= 0) {
        ab_header_t *h = amtsbote__v1__header__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
        if (h) {
            code = h->error ? (int)h->error->code : 0;
            snprintf(text, cap, "%s", h->error ? h->error->text : "");
            amtsbote__v1__header__free_unpacked(h, NULL);
        }
        while (zmq_msg_more(&m) && zmq_msg_recv(&m, s, 0) >= 0)
            ;
    }
    zmq_msg_close(&m);
    return code;
}

static int
s_encode(uint8_t *buf, size_t cap, uint32_t version, int kind, const char *service)
{
    uint8_t id[16];
    ab_uuid7(id);
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = version;
    h.kind = kind;
    h.message_id.data = id;
    h.message_id.len = 16;
    h.service = (char *)service;
    return ab_wire_encode(&h, buf, cap);
}

static void
test_bad_input(void **state)
{
    (void)state;
    h_provider_t p;
    assert_int_equal(h_provider_start(&p, B.tls, "kommune.good", SERVICE, 0), 0);
    ab_client_t *good = h_client(B.tls, "bund.good");
    void *ctx = zmq_ctx_new();
    void *s = s_raw(ctx, "bund.mallory");
    char text[1024];
    uint8_t hdr[512];
    void *reply;
    size_t len;

    /* random bytes */
    uint8_t junk[64];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 37 + 11);
    zmq_send(s, junk, sizeof junk, 0);
    assert_int_equal(s_raw_answer(s, text, sizeof text), AMTSBOTE__V1__ERROR_CODE__MALFORMED);
    assert_non_null(strstr(text, "not a valid amtsbote.v1.Header"));
    assert_int_equal(ab_call(good, METHOD, "a", 1, 5000, &reply, &len), 0);
    ab_free(reply);

    /* wrong frame count: header, payload, and one more */
    int n = s_encode(hdr, sizeof hdr, 1, AMTSBOTE__V1__KIND__KIND_CALL, METHOD);
    zmq_send(s, hdr, (size_t)n, ZMQ_SNDMORE);
    zmq_send(s, "a", 1, ZMQ_SNDMORE);
    zmq_send(s, "b", 1, 0);
    assert_int_equal(s_raw_answer(s, text, sizeof text), AMTSBOTE__V1__ERROR_CODE__MALFORMED);
    assert_non_null(strstr(text, "got 3 frames"));

    /* a CALL without its payload frame */
    zmq_send(s, hdr, (size_t)n, 0);
    assert_int_equal(s_raw_answer(s, text, sizeof text), AMTSBOTE__V1__ERROR_CODE__MALFORMED);
    assert_non_null(strstr(text, "CALL needs a payload frame"));

    /* a truncated header */
    zmq_send(s, hdr, (size_t)n - 5, ZMQ_SNDMORE);
    zmq_send(s, "a", 1, 0);
    assert_int_equal(s_raw_answer(s, text, sizeof text), AMTSBOTE__V1__ERROR_CODE__MALFORMED);

    /* an empty header frame */
    zmq_send(s, "", 0, 0);
    assert_int_equal(s_raw_answer(s, text, sizeof text), AMTSBOTE__V1__ERROR_CODE__MALFORMED);
    assert_non_null(strstr(text, "empty"));

    /* an unknown protocol version */
    n = s_encode(hdr, sizeof hdr, 9, AMTSBOTE__V1__KIND__KIND_CALL, METHOD);
    zmq_send(s, hdr, (size_t)n, ZMQ_SNDMORE);
    zmq_send(s, "a", 1, 0);
    assert_int_equal(s_raw_answer(s, text, sizeof text), AMTSBOTE__V1__ERROR_CODE__MALFORMED);
    assert_non_null(strstr(text, "version"));

    /* an oversize payload: the broker runs with --max-payload 65536 */
    n = s_encode(hdr, sizeof hdr, 1, AMTSBOTE__V1__KIND__KIND_CALL, METHOD);
    size_t big = 100000;
    char *payload = calloc(1, big);
    zmq_send(s, hdr, (size_t)n, ZMQ_SNDMORE);
    zmq_send(s, payload, big, 0);
    free(payload);
    assert_int_equal(s_raw_answer(s, text, sizeof text), AMTSBOTE__V1__ERROR_CODE__TOO_LARGE);
    assert_non_null(strstr(text, "65536"));
    /* the client library knows the limit from the broker's HELLO and refuses before sending */
    payload = calloc(1, big);
    int rc = ab_call(good, METHOD, payload, big, 5000, &reply, &len);
    free(payload);
    assert_int_equal(rc, AB_ETOO_LARGE);
    assert_non_null(strstr(ab_client_last_error(good), "max_payload of 65536"));

    /* a sender field is never believed */
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    uint8_t id[16];
    ab_uuid7(id);
    h.version = 1;
    h.kind = AMTSBOTE__V1__KIND__KIND_CALL;
    h.message_id.data = id;
    h.message_id.len = 16;
    h.service = METHOD;
    h.sender = "bund.bmi";
    n = ab_wire_encode(&h, hdr, sizeof hdr);
    zmq_send(s, hdr, (size_t)n, ZMQ_SNDMORE);
    zmq_send(s, "x", 1, 0);
    assert_int_equal(s_raw_answer(s, text, sizeof text), 0);
    assert_string_equal(p.last_caller, "bund.mallory");

    /* and through all of it the good client was served */
    assert_int_equal(ab_call(good, METHOD, "b", 1, 5000, &reply, &len), 0);
    ab_free(reply);
    zmq_close(s);
    zmq_ctx_term(ctx);
    ab_client_destroy(&good);
    h_provider_stop(&p);
}

/* Counts the lines of the broker's log that contain `needle`. */
static int
s_log_count(const char *needle, long long *max_suppressed)
{
    char path[192];
    snprintf(path, sizeof path, "%s/broker.log", B.dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[4096];
    int n = 0;
    *max_suppressed = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strstr(line, needle))
            continue;
        n++;
        const char *sup = strstr(line, "suppressed=");
        if (sup && atoll(sup + 11) > *max_suppressed)
            *max_suppressed = atoll(sup + 11);
    }
    fclose(f);
    return n;
}

static void
test_flood_of_bad_input_is_answered_but_not_all_logged(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    void *s = s_raw(ctx, "bund.flood");
    char text[256];
    long long sup = 0;
    int before = s_log_count("participant=bund.flood", &sup);
    for (int i = 0; i < 300; i++)
        zmq_send(s, "junk", 4, 0);
    for (int i = 0; i < 300; i++) /* every one gets its answer */
        assert_int_equal(s_raw_answer(s, text, sizeof text), AMTSBOTE__V1__ERROR_CODE__MALFORMED);
    usleep(1100 * 1000);
    zmq_send(s, "junk", 4, 0);
    assert_int_equal(s_raw_answer(s, text, sizeof text), AMTSBOTE__V1__ERROR_CODE__MALFORMED);
    zmq_close(s);
    zmq_ctx_term(ctx);
    usleep(100 * 1000);
    int logged = s_log_count("participant=bund.flood", &sup) - before;
    /* at most a burst per second is logged, and the line after it says how many were held */
    assert_true(logged >= 2);
    assert_true(logged <= 3 * 20 + 1);
    assert_true(sup >= 300 - 3 * 20);
}

static void
test_identity_checked(void **state)
{
    (void)state;
    /* not a participant address: refused at the handshake by the ZAP handler */
    ab_client_t *c = ab_client_new();
    assert_int_equal(ab_client_set_participant(c, "Not An Address"), AB_EINVAL);
    ab_client_destroy(&c);
    void *ctx = zmq_ctx_new();
    void *s = s_raw(ctx, "Not An Address");
    int timeout = 500;
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    uint8_t hdr[256];
    int n = s_encode(hdr, sizeof hdr, 1, AMTSBOTE__V1__KIND__KIND_HELLO, NULL);
    zmq_send(s, hdr, (size_t)n, ZMQ_DONTWAIT);
    char text[256];
    assert_int_equal(s_raw_answer(s, text, sizeof text), -1); /* nothing comes back */
    zmq_close(s);
    zmq_ctx_term(ctx);
    assert_true(h_broker_log_has(&B, "event=connect_refused"));
}

int
main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_thousand_in_flight),
        cmocka_unit_test(test_unknown_service),
        cmocka_unit_test(test_slow_handler_answers_are_not_held_back),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_provider_killed),
        cmocka_unit_test(test_provider_killed_tls_session_end),
        cmocka_unit_test(test_recipient_killed_tls_session_end),
        cmocka_unit_test(test_provider_answers_and_closes_tls),
        cmocka_unit_test(test_broker_killed_calls_end),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_identity_checked),
        cmocka_unit_test(test_flood_of_bad_input_is_answered_but_not_all_logged),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
