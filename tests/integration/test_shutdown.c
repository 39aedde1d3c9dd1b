/*
 * Integration tests of the broker's life cycle: a clean shutdown with calls in flight, a grace
 * period that runs out, and a broker that refuses self-declared identities unless told not to.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

#define METHOD "x.v1.Akte/Lesen"

typedef struct {
    int done;
    int status[8];
    char text[8][256];
} results_t;

static results_t *R;

static void
s_on_reply(ab_client_t *c, int status, const void *reply, size_t len, const char *errtext,
           void *arg)
{
    (void)c;
    (void)reply;
    (void)len;
    int i = (int)(intptr_t)arg;
    R->status[i] = status;
    snprintf(R->text[i], sizeof R->text[i], "%s", errtext ? errtext : "");
    R->done++;
}

/* Starts `n` calls and drives the client until they have reached the broker. */
static void
s_start_calls(ab_client_t *c, int n)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(ab_call_async(c, METHOD, "a", 1, 20000, s_on_reply, (void *)(intptr_t)i),
                         0);
    ab_client_run(c, 100);
}

static void
test_shutdown_lets_calls_finish(void **state)
{
    (void)state;
    h_broker_t b;
    assert_int_equal(h_broker_start(&b, 0, NULL), 0);
    h_provider_t p;
    assert_int_equal(h_provider_start(&p, b.tls, "kommune.akten", "x.v1.Akte", 2), 0);
    ab_client_t *c = h_client(b.tls, "bund.bmi");
    results_t r;
    memset(&r, 0, sizeof r);
    R = &r;
    s_start_calls(c, 3); /* the provider takes 500 ms for each, one after another */
    kill(b.pid, SIGTERM);
    usleep(100000);
    /* during the drain a new call is refused, the ones in flight go on */
    void *reply = NULL;
    size_t len = 0;
    assert_int_equal(ab_call(c, METHOD, "b", 1, 5000, &reply, &len), AB_EUNAVAILABLE);
    assert_non_null(strstr(ab_client_last_error(c), "shutting down"));
    long long deadline = h_now_ms() + 10000;
    while (r.done < 3 && h_now_ms() < deadline)
        ab_client_run(c, 20);
    if (r.done != 3)
        fprintf(stderr, "done=%d in_flight=%zu last_error=%s\n", r.done, ab_client_in_flight(c),
                ab_client_last_error(c));
    assert_int_equal(r.done, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(r.status[i], 0);
    assert_int_equal(h_wait_pid(b.pid, 10000), 0); /* exit 0 */
    b.pid = 0;
    ab_client_destroy(&c);
    h_provider_stop(&p);
    assert_true(h_broker_log_has(&b, "event=shutdown signal=15 in_flight=3"));
    assert_true(h_broker_log_has(&b, "event=stopped calls=4 replies=3"));
}

static void
test_shutdown_grace_runs_out(void **state)
{
    (void)state;
    h_broker_t b;
    const char *extra[] = {"--shutdown-grace-ms", "300", NULL};
    assert_int_equal(h_broker_start(&b, 0, extra), 0);
    h_provider_t p;
    assert_int_equal(h_provider_start(&p, b.tls, "kommune.akten", "x.v1.Akte", 1), 0);
    ab_client_t *c = h_client(b.tls, "bund.bmi");
    results_t r;
    memset(&r, 0, sizeof r);
    R = &r;
    s_start_calls(c, 4);
    /* the calls must be in flight at the provider before the signal: one still on its way
     * through the TLS relay when the broker stops is never read */
    long long until = h_now_ms() + 10000;
    while (atomic_load(&p.received) < 4 && h_now_ms() < until)
        ab_client_run(c, 20);
    assert_int_equal(atomic_load(&p.received), 4);
    kill(b.pid, SIGTERM);
    long long deadline = h_now_ms() + 10000;
    while (r.done < 4 && h_now_ms() < deadline)
        ab_client_run(c, 20);
    assert_int_equal(r.done, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(r.status[i], AB_EUNAVAILABLE);
        assert_non_null(strstr(r.text[i], "stopped"));
    }
    assert_int_equal(h_wait_pid(b.pid, 10000), 0);
    b.pid = 0;
    ab_client_destroy(&c);
    h_provider_stop(&p);
}

static void
test_plain_identity_refused_by_default(void **state)
{
    (void)state;
    h_broker_t b;
    assert_int_equal(h_broker_start(&b, 1, NULL), 0);
    ab_client_t *c = ab_client_new();
    assert_int_equal(ab_client_set_participant(c, "bund.bmi"), 0);
    int rc = ab_client_connect(c, b.tcp, 3000);
    assert_int_equal(rc, AB_EREFUSED);
    assert_true(strlen(ab_client_last_error(c)) > 0);
    ab_client_destroy(&c);
    assert_int_equal(h_broker_stop(&b, SIGTERM, 10000), 0);
    assert_true(h_broker_log_has(&b, "--insecure-plain-identities"));
}

static void
test_second_broker_same_data_dir(void **state)
{
    (void)state;
    h_broker_t b;
    assert_int_equal(h_broker_start(&b, 0, NULL), 0);
    char data[256];
    snprintf(data, sizeof data, "%s/data", b.dir);
    const char *argv[] = {H_BROKER_BIN, "--listen", "tcp://127.0.0.1:*", "--data", data, NULL};
    char errfile[256];
    snprintf(errfile, sizeof errfile, "%s/second.log", b.dir);
    pid_t pid = h_spawn(argv, NULL, errfile);
    assert_int_equal(h_wait_pid(pid, 5000), 1);
    FILE *f = fopen(errfile, "r");
    assert_non_null(f);
    char line[512] = "";
    int found = 0;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, "in use by another broker") != NULL;
    fclose(f);
    assert_true(found);
    assert_int_equal(h_broker_stop(&b, SIGTERM, 10000), 0);
}

int
main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shutdown_lets_calls_finish),
        cmocka_unit_test(test_shutdown_grace_runs_out),
        cmocka_unit_test(test_plain_identity_refused_by_default),
        cmocka_unit_test(test_second_broker_same_data_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
