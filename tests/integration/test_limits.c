/*
 * Integration tests: what one participant may use of the broker, through the real
 * amtsbote-broker process over mutual TLS. Each test starts its own broker with the limit it
 * checks: requests per second (token bucket, RATE_LIMITED, and the participant not read for a
 * while after a refusal), the same set per group by the policy and changed by a reload, calls in
 * flight per participant, TLS sessions per participant, bytes delivered and not acknowledged per
 * connection (credit in bytes), and a payload far over max_payload cut off before the broker
 * allocates it. Each time the others keep working.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
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

static void
s_start(int secure, const char *const *extra)
{
    assert_int_equal(h_broker_start(&B, secure, extra), 0);
}

static void
s_stop(void)
{
    int st = h_broker_stop(&B, SIGTERM, 10000);
    if (st != 0)
        fprintf(stderr, "broker exited with %d (log in %s)\n", st, B.dir);
    assert_int_equal(st, 0);
}

/* `n` calls one after the other: counts answers, RATE_LIMITED and anything else; the text of the
 * last RATE_LIMITED goes to `text`. */
static void
s_calls(ab_client_t *c, int n, int *ok, int *limited, int *other, char *text, size_t cap)
{
    *ok = *limited = *other = 0;
    for (int i = 0; i < n; i++) {
        void *reply = NULL;
        size_t len = 0;
        int rc = ab_call(c, METHOD, "x", 1, 5000, &reply, &len);
        if (rc == 0)
            (*ok)++;
        else if (rc == AB_ERATE_LIMITED) {
            (*limited)++;
            if (text)
                snprintf(text, cap, "%s", ab_client_last_error(c));
        } else {
            (*other)++;
            fprintf(stderr, "call %d: %s: %s\n", i, ab_err_name(rc), ab_client_last_error(c));
        }
        ab_free(reply);
    }
}

/* ---- requests per second -------------------------------------------------------------------- */

static void
test_rate(void **state)
{
    (void)state;
    const char *extra[] = {"--rate-limit", "20", "--rate-burst", "5", NULL};
    s_start(1, extra);
    h_provider_t p;
    assert_int_equal(h_provider_start(&p, B.tls, "kommune.09162000.meldeamt", SERVICE, 0), 0);
    ab_client_t *flood = h_client(B.tls, "bund.flood");
    ab_client_t *calm = h_client(B.tls, "bund.calm");
    assert_non_null(flood);
    assert_non_null(calm);

    int ok, limited, other;
    char text[1024] = "";
    long long t0 = h_now_ms();
    s_calls(flood, 100, &ok, &limited, &other, text, sizeof text);
    long long ms = h_now_ms() - t0;
    printf("# 100 calls in %lld ms: %d answered, %d RATE_LIMITED\n", ms, ok, limited);
    assert_int_equal(other, 0);
    assert_true(limited > 0);
    /* the burst, then 20 per second: never more than that got through */
    assert_true(ok >= 5);
    assert_true(ok <= 5 + (int)(20 * ms / 1000) + 1);
    assert_non_null(strstr(text, "bund.flood"));
    assert_non_null(strstr(text, "20 requests per second"));
    /* after a refusal the broker does not read the participant for 100 ms (BRK_RATE_PAUSE_MS;
     * at least half of it passes whatever the machine does): its next request waits in TCP
     * instead of being refused at once, so each refusal but the last costs the sender time */
    assert_true(ms >= (long long)(limited - 1) * 50);

    /* another participant has a bucket of its own */
    s_calls(calm, 5, &ok, &limited, &other, NULL, 0);
    assert_int_equal(ok, 5);

    /* the bucket fills again */
    usleep(400 * 1000);
    s_calls(flood, 3, &ok, &limited, &other, NULL, 0);
    assert_int_equal(ok, 3);
    assert_true(h_broker_log_has(&B, "RATE_LIMITED"));

    ab_client_destroy(&flood);
    ab_client_destroy(&calm);
    h_provider_stop(&p);
    s_stop();
}

/* ---- the policy's limits, per group, and a reload ------------------------------------------ */

static void
s_write_policy(const char *path, int kommunen_rate)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "groups:\n"
            "  kommunen: [\"kommune.*\"]\n"
            "limits:\n"
            "  \"@kommunen\": {rate: %d, burst: %d}\n"
            "  bund.bmi: {calls_in_flight: 2}\n"
            "  kommune.cli: {rate: 1, burst: 1}\n"
            "rules:\n"
            "  - {who: \"*\", action: call, resource: \"meldewesen.v1.*\"}\n"
            "  - {who: \"*\", action: offer, resource: \"meldewesen.v1.*\"}\n",
            kommunen_rate, kommunen_rate);
    fclose(f);
}

typedef struct {
    int done;
    int status[8];
    char text[512]; /* of the first error */
} async_t;

static void
s_on_async(ab_client_t *c, int status, const void *reply, size_t len, const char *errtext,
           void *arg)
{
    (void)c, (void)reply, (void)len;
    async_t *a = arg;
    if (status != 0 && !a->text[0])
        snprintf(a->text, sizeof a->text, "%s", errtext ? errtext : "");
    a->status[a->done++] = status;
}

static void
test_policy_limits(void **state)
{
    (void)state;
    char policy[256];
    snprintf(policy, sizeof policy, "/tmp/amtsbote-limits-policy-%d.yaml", (int)getpid());
    s_write_policy(policy, 3);
    const char *extra[] = {"--policy", policy, NULL};
    s_start(1, extra);
    h_provider_t p, hold;
    assert_int_equal(h_provider_start(&p, B.tls, "land.by.register", SERVICE, 0), 0);
    ab_client_t *kommune = h_client(B.tls, "kommune.09162000.meldeamt");
    ab_client_t *other = h_client(B.tls, "bund.bva");
    assert_non_null(kommune);
    assert_non_null(other);

    /* the group's rate: 3 at once, then 3 per second */
    int ok, limited, errs;
    char text[1024] = "";
    s_calls(kommune, 10, &ok, &limited, &errs, text, sizeof text);
    assert_int_equal(errs, 0);
    assert_true(ok >= 3 && ok <= 5);
    assert_true(limited >= 5);
    assert_non_null(strstr(text, "3 requests per second"));
    /* nobody else is limited */
    s_calls(other, 10, &ok, &limited, &errs, NULL, 0);
    assert_int_equal(ok, 10);

    /* the CLI says RATE_LIMITED and exits 11: kommune.cli (1 per second) has just used its
     * token here */
    ab_client_t *cli_user = h_client(B.tls, "kommune.cli");
    assert_non_null(cli_user);
    s_calls(cli_user, 1, &ok, &limited, &errs, NULL, 0);
    assert_int_equal(ok, 1);
    const char *pki = h_pki_cert("kommune.cli");
    char cert[512], key[512], ca[512], errfile[256];
    snprintf(cert, sizeof cert, "%s/kommune.cli.crt", pki);
    snprintf(key, sizeof key, "%s/kommune.cli.key", pki);
    snprintf(ca, sizeof ca, "%s/ca/chain.pem", pki);
    snprintf(errfile, sizeof errfile, "%s/cli.err", B.dir);
    const char *argv[] = {H_CLI_BIN, "--broker", B.tls,  "--cert", cert,     "--key", key,
                          "--ca",    ca,         "call", METHOD,   "--data", "x",     NULL};
    int out = -1;
    pid_t pid = h_spawn(argv, &out, errfile);
    assert_true(pid > 0);
    assert_int_equal(h_wait_pid(pid, 10000), 11);
    close(out);
    char line[1024] = "";
    FILE *ef = fopen(errfile, "r");
    assert_non_null(ef);
    assert_non_null(fgets(line, sizeof line, ef));
    fclose(ef);
    assert_non_null(strstr(line, "amtsbote: RATE_LIMITED: kommune.cli sends more than its 1"));
    ab_client_destroy(&cli_user);

    /* bund.bmi: at most 2 calls in flight */
    assert_int_equal(h_provider_start(&hold, B.tls, "land.by.hold", "meldewesen.v1.Hold", 1), 0);
    ab_client_t *bmi = h_client(B.tls, "bund.bmi");
    assert_non_null(bmi);
    async_t a = {0};
    for (int i = 0; i < 3; i++)
        assert_int_equal(
            ab_call_async(bmi, "meldewesen.v1.Hold/Run", "x", 1, 10000, s_on_async, &a), 0);
    for (long long t0 = h_now_ms(); a.done < 1 && h_now_ms() - t0 < 5000;)
        ab_client_run(bmi, 50);
    assert_int_equal(a.done, 1);
    assert_int_equal(a.status[0], AB_ERATE_LIMITED);
    assert_non_null(strstr(a.text, "2 calls in flight"));
    h_provider_stop(&hold); /* answers the two it held */
    for (long long t0 = h_now_ms(); a.done < 3 && h_now_ms() - t0 < 5000;)
        ab_client_run(bmi, 50);
    assert_int_equal(a.done, 3);
    assert_int_equal(a.status[1], 0);
    assert_int_equal(a.status[2], 0);

    /* a reload with a higher rate applies to the participant at once */
    s_write_policy(policy, 1000);
    kill(B.pid, SIGHUP);
    for (long long t0 = h_now_ms(); h_now_ms() - t0 < 5000;) {
        if (h_broker_log_has(&B, "event=policy_reload result=ok"))
            break;
        usleep(50 * 1000);
    }
    usleep(100 * 1000);
    s_calls(kommune, 10, &ok, &limited, &errs, NULL, 0);
    assert_int_equal(ok, 10);

    ab_client_destroy(&bmi);
    ab_client_destroy(&kommune);
    ab_client_destroy(&other);
    h_provider_stop(&p);
    s_stop();
    unlink(policy);
}

/* ---- calls in flight, by flag ---------------------------------------------------------------- */

static void
test_calls_in_flight(void **state)
{
    (void)state;
    const char *extra[] = {"--max-calls-per-participant", "3", NULL};
    s_start(1, extra);
    h_provider_t hold, echo;
    assert_int_equal(h_provider_start(&hold, B.tls, "kommune.hold", "meldewesen.v1.Hold", 1), 0);
    assert_int_equal(h_provider_start(&echo, B.tls, "kommune.echo", SERVICE, 0), 0);
    ab_client_t *busy = h_client(B.tls, "bund.busy");
    ab_client_t *calm = h_client(B.tls, "bund.calm");
    async_t a = {0}, b = {0};
    for (int i = 0; i < 5; i++)
        assert_int_equal(
            ab_call_async(busy, "meldewesen.v1.Hold/Run", "x", 1, 10000, s_on_async, &a), 0);
    for (long long t0 = h_now_ms(); a.done < 2 && h_now_ms() - t0 < 5000;)
        ab_client_run(busy, 50);
    assert_int_equal(a.done, 2);
    assert_int_equal(a.status[0], AB_ERATE_LIMITED);
    assert_int_equal(a.status[1], AB_ERATE_LIMITED);
    assert_non_null(strstr(a.text, "bund.busy has 3 calls in flight"));
    /* the provider holds 3 of busy's; calm has a count of its own: 3 more are held, then calm
     * is at its limit too */
    for (int i = 0; i < 3; i++)
        assert_int_equal(
            ab_call_async(calm, "meldewesen.v1.Hold/Run", "x", 1, 10000, s_on_async, &b), 0);
    int ok, limited, errs;
    s_calls(calm, 2, &ok, &limited, &errs, NULL, 0);
    assert_int_equal(limited, 2);
    assert_int_equal(b.done, 0);
    h_provider_stop(&hold);
    for (long long t0 = h_now_ms(); (a.done < 5 || b.done < 3) && h_now_ms() - t0 < 5000;) {
        ab_client_run(busy, 20);
        ab_client_run(calm, 20);
    }
    assert_int_equal(a.done, 5);
    assert_int_equal(b.done, 3);
    for (int i = 2; i < 5; i++)
        assert_int_equal(a.status[i], 0);
    /* answered calls free the count */
    s_calls(busy, 4, &ok, &limited, &errs, NULL, 0);
    assert_int_equal(ok, 4);
    ab_client_destroy(&busy);
    ab_client_destroy(&calm);
    h_provider_stop(&echo);
    s_stop();
}

/* ---- TLS sessions per participant ------------------------------------------------------------ */

static void
test_connections_per_participant(void **state)
{
    (void)state;
    const char *extra[] = {"--max-connections-per-participant", "2", NULL};
    s_start(1, extra);
    h_provider_t p;
    assert_int_equal(h_provider_start(&p, B.tls, "kommune.09162000.meldeamt", SERVICE, 0), 0);
    ab_client_t *c1 = h_client(B.tls, "bund.multi");
    ab_client_t *c2 = h_client(B.tls, "bund.multi");
    assert_non_null(c1);
    assert_non_null(c2);
    ab_client_t *c3 = h_client(B.tls, "bund.multi");
    assert_null(c3);
    assert_true(h_broker_log_has(&B, "bund.multi already has 2 connections"));
    /* the two and everybody else keep working */
    int ok, limited, errs;
    s_calls(c1, 3, &ok, &limited, &errs, NULL, 0);
    assert_int_equal(ok, 3);
    s_calls(c2, 3, &ok, &limited, &errs, NULL, 0);
    assert_int_equal(ok, 3);
    ab_client_t *other = h_client(B.tls, "bund.other");
    assert_non_null(other);
    /* a session that ends frees its place */
    ab_client_destroy(&c1);
    ab_client_t *c4 = NULL;
    for (long long t0 = h_now_ms(); !c4 && h_now_ms() - t0 < 5000;)
        if (!(c4 = h_client(B.tls, "bund.multi")))
            usleep(100 * 1000);
    assert_non_null(c4);
    s_calls(c4, 3, &ok, &limited, &errs, NULL, 0);
    assert_int_equal(ok, 3);
    ab_client_destroy(&c2);
    ab_client_destroy(&c4);
    ab_client_destroy(&other);
    h_provider_stop(&p);
    s_stop();
}

/* ---- bytes delivered and not acknowledged ---------------------------------------------------- */

typedef struct {
    ab_message_t *held[64];
    int n;
} inbox_t;

static void
s_keep(ab_client_t *c, ab_message_t *msg, void *arg)
{
    (void)c;
    inbox_t *in = arg;
    if (in->n < 64)
        in->held[in->n++] = msg;
    else
        ab_message_free(&msg);
}

static void
test_pending_bytes(void **state)
{
    (void)state;
    char data[64];
    const char *extra[] = {"--max-pending-bytes", "65536", "--data", data, NULL};
    snprintf(data, sizeof data, "/tmp/amtsbote-limits-data-%d", (int)getpid());
    s_start(1, extra);
    ab_client_t *sender = h_client(B.tls, "bund.bmi");
    assert_non_null(sender);
    char *payload = malloc(10000);
    memset(payload, 'p', 10000);
    for (int i = 0; i < 20; i++)
        assert_int_equal(ab_send(sender, "kommune.slow", payload, 10000, NULL, NULL, 5000), 0);
    free(payload);
    ab_client_t *rcpt = h_client(B.tls, "kommune.slow");
    assert_non_null(rcpt);
    inbox_t in = {0};
    assert_int_equal(ab_inbox(rcpt, 1000, s_keep, &in), 0);
    ab_client_run(rcpt, 1000);
    /* credit 1000, but no more than 64 KiB unacknowledged: 7 of 10,000 bytes (the 7th starts
     * below the limit) */
    assert_int_equal(in.n, 7);
    assert_int_equal(ab_ack(&in.held[0]), 0);
    ab_client_run(rcpt, 500);
    assert_int_equal(in.n, 8);
    for (int i = 1; i < in.n; i++)
        ab_ack(&in.held[i]);
    for (long long t0 = h_now_ms(); in.n < 20 && h_now_ms() - t0 < 5000;) {
        int before = in.n;
        ab_client_run(rcpt, 100);
        for (int i = before; i < in.n; i++)
            ab_ack(&in.held[i]);
    }
    assert_int_equal(in.n, 20);
    ab_client_destroy(&rcpt);
    ab_client_destroy(&sender);
    s_stop();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", data);
    assert_int_equal(system(cmd), 0);
}

/* ---- a payload far over max_payload ---------------------------------------------------------- */

static long
s_rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib;
}

static void
test_oversize_cut_before_allocation(void **state)
{
    (void)state;
    const char *extra[] = {"--max-payload", "1048576", NULL};
    s_start(0, extra);
    h_provider_t p;
    assert_int_equal(h_provider_start(&p, B.tls, "kommune.09162000.meldeamt", SERVICE, 0), 0);
    ab_client_t *good = h_client(B.tls, "bund.good");
    assert_non_null(good);
    long before = s_rss_kib(B.pid);

    /* 3 x 48 MiB frames on a plain DEALER: the broker reads the size, drops the connection */
    void *ctx = zmq_ctx_new();
    size_t big = 48u << 20;
    char *payload = calloc(1, big);
    assert_non_null(payload);
    for (int i = 0; i < 3; i++) {
        void *s = zmq_socket(ctx, ZMQ_DEALER);
        int linger = 2000;
        zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
        zmq_setsockopt(s, ZMQ_PLAIN_USERNAME, "bund.mallory", 12);
        zmq_setsockopt(s, ZMQ_PLAIN_PASSWORD, "", 0);
        assert_int_equal(zmq_connect(s, B.tcp), 0);
        uint8_t hdr[256];
        uint8_t id[16];
        ab_uuid7(id);
        ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
        h.version = 1;
        h.kind = AMTSBOTE__V1__KIND__KIND_CALL;
        h.message_id.data = id;
        h.message_id.len = 16;
        h.service = METHOD;
        int n = ab_wire_encode(&h, hdr, sizeof hdr);
        zmq_send(s, hdr, (size_t)n, ZMQ_SNDMORE);
        zmq_send(s, payload, big, 0);
        usleep(300 * 1000);
        zmq_close(s);
    }
    free(payload);
    zmq_ctx_term(ctx);
    long after = s_rss_kib(B.pid);
    printf("# broker RSS %ld KiB before, %ld KiB after 3 x 48 MiB frames\n", before, after);
    assert_true(before > 0 && after > 0);
    assert_true(after - before < 16 * 1024);
    /* everybody else keeps working */
    int ok, limited, errs;
    s_calls(good, 3, &ok, &limited, &errs, NULL, 0);
    assert_int_equal(ok, 3);
    ab_client_destroy(&good);
    h_provider_stop(&p);
    s_stop();
}

int
main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate),
        cmocka_unit_test(test_policy_limits),
        cmocka_unit_test(test_calls_in_flight),
        cmocka_unit_test(test_connections_per_participant),
        cmocka_unit_test(test_pending_bytes),
        cmocka_unit_test(test_oversize_cut_before_allocation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
