/*
 * Unit tests for broker/quota.c: the token bucket with a clock the test sets (burst, refill,
 * never over the burst after a pause), calls in flight and sessions per participant, the
 * policy's limits over the broker's defaults and a policy swapped while counts are held.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "amtsbote.h"
#include "quota.h"

static brk_config_t C;

static void
s_defaults(void)
{
    memset(&C, 0, sizeof C);
    C.rate_limit = 10;
    C.rate_burst = 4;
    C.max_calls_per_participant = 3;
    C.max_connections_per_participant = 2;
}

static int
s_take(brk_quota_t *q, const char *who, uint64_t now)
{
    char why[256];
    return brk_quota_request(q, who, now, why, sizeof why);
}

static void
test_bucket(void **state)
{
    (void)state;
    s_defaults();
    brk_quota_t *q = brk_quota_new(&C);
    assert_non_null(q);
    uint64_t t = 1000000;
    /* the burst at once, then one every 100 ms */
    for (int i = 0; i < 4; i++)
        assert_int_equal(s_take(q, "bund.bmi", t), 0);
    char why[256];
    assert_int_equal(brk_quota_request(q, "bund.bmi", t, why, sizeof why), AB_ERATE_LIMITED);
    assert_non_null(strstr(why, "bund.bmi sends more than its 10 requests per second (burst 4)"));
    assert_int_equal(s_take(q, "bund.bmi", t + 99), AB_ERATE_LIMITED);
    assert_int_equal(s_take(q, "bund.bmi", t + 100), 0);
    assert_int_equal(s_take(q, "bund.bmi", t + 100), AB_ERATE_LIMITED);
    /* others have their own bucket */
    assert_int_equal(s_take(q, "bund.bva", t + 100), 0);
    /* a long pause fills the bucket to the burst, not beyond */
    t += 3600 * 1000;
    for (int i = 0; i < 4; i++)
        assert_int_equal(s_take(q, "bund.bmi", t), 0);
    assert_int_equal(s_take(q, "bund.bmi", t), AB_ERATE_LIMITED);
    /* 10 per second over 10 s: 100 in all, give or take the burst */
    int ok = 0;
    for (uint64_t ms = 1; ms <= 10000; ms++)
        for (int k = 0; k < 3; k++)
            ok += s_take(q, "bund.bmi", t + ms) == 0;
    assert_int_equal(ok, 100);
    brk_quota_stats_t st;
    brk_quota_stats(q, &st);
    assert_true(st.rate_limited > 0);
    /* a pause of its sessions at most once per 50 ms, per participant */
    assert_int_equal(brk_quota_pause_due(q, "bund.bmi", t, 50), 1);
    assert_int_equal(brk_quota_pause_due(q, "bund.bmi", t + 49, 50), 0);
    assert_int_equal(brk_quota_pause_due(q, "bund.bva", t + 49, 50), 1);
    assert_int_equal(brk_quota_pause_due(q, "bund.bmi", t + 50, 50), 1);
    assert_int_equal(brk_quota_pause_due(q, "nobody", t, 50), 0);
    brk_quota_destroy(&q);
    assert_null(q);
    brk_quota_destroy(&q); /* safe twice */
}

static void
test_no_rate(void **state)
{
    (void)state;
    s_defaults();
    C.rate_limit = 0;
    brk_quota_t *q = brk_quota_new(&C);
    for (int i = 0; i < 100000; i++)
        assert_int_equal(s_take(q, "bund.bmi", 5), 0);
    brk_quota_stats_t st;
    brk_quota_stats(q, &st);
    assert_int_equal(st.participants, 0); /* nothing is kept for nobody's bucket */
    brk_quota_destroy(&q);
}

static void
test_calls_and_sessions(void **state)
{
    (void)state;
    s_defaults();
    brk_quota_t *q = brk_quota_new(&C);
    char why[256];
    for (int i = 0; i < 3; i++)
        assert_int_equal(brk_quota_call_begin(q, "bund.bmi", why, sizeof why), 0);
    assert_int_equal(brk_quota_call_begin(q, "bund.bmi", why, sizeof why), AB_ERATE_LIMITED);
    assert_non_null(strstr(why, "bund.bmi has 3 calls in flight"));
    assert_int_equal(brk_quota_call_begin(q, "bund.bva", why, sizeof why), 0);
    brk_quota_call_end(q, "bund.bmi");
    assert_int_equal(brk_quota_call_begin(q, "bund.bmi", why, sizeof why), 0);
    /* an end without a begin changes nothing */
    brk_quota_call_end(q, "nobody");
    /* calls one after the other keep the participant's state: no allocation per call */
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(brk_quota_call_begin(q, "kommune.eins", why, sizeof why), 0);
        brk_quota_call_end(q, "kommune.eins");
    }
    brk_quota_stats_t before;
    brk_quota_stats(q, &before);
    assert_int_equal(before.participants, 3); /* bund.bmi, bund.bva, kommune.eins */
    for (int i = 0; i < 2; i++)
        assert_int_equal(brk_quota_conn_open(q, "bund.bmi", why, sizeof why), 0);
    assert_int_equal(brk_quota_conn_open(q, "bund.bmi", why, sizeof why), AB_ERATE_LIMITED);
    assert_non_null(strstr(why, "bund.bmi already has 2 connections"));
    brk_quota_conn_close(q, "bund.bmi");
    assert_int_equal(brk_quota_conn_open(q, "bund.bmi", why, sizeof why), 0);
    brk_quota_stats_t st;
    brk_quota_stats(q, &st);
    assert_int_equal(st.calls_limited, 1);
    assert_int_equal(st.conns_limited, 1);
    assert_int_equal(st.online, 1);
    assert_int_equal(brk_quota_conn_open(q, "bund.bva", why, sizeof why), 0);
    brk_quota_stats(q, &st);
    assert_int_equal(st.online, 2);
    brk_quota_conn_close(q, "bund.bva");
    brk_quota_conn_close(q, "bund.bmi");
    brk_quota_conn_close(q, "bund.bmi");
    brk_quota_stats(q, &st);
    assert_int_equal(st.online, 0);
    brk_quota_destroy(&q);
}

static void
test_policy(void **state)
{
    (void)state;
    s_defaults();
    C.rate_limit = 0;
    const char *text = "groups:\n"
                       "  kommunen: [\"kommune.*\"]\n"
                       "limits:\n"
                       "  \"@kommunen\": {rate: 2, calls_in_flight: 1}\n";
    ab_policy_t *p = NULL;
    assert_int_equal(ab_policy_load_buffer(text, strlen(text), "q.yaml", &p, NULL), 0);
    brk_quota_t *q = brk_quota_new(&C);
    brk_quota_set_policy(q, p);
    char why[256];
    /* the group's rate (burst: one second's worth) and calls; others keep the defaults */
    assert_int_equal(s_take(q, "kommune.a", 100), 0);
    assert_int_equal(s_take(q, "kommune.a", 100), 0);
    assert_int_equal(s_take(q, "kommune.a", 100), AB_ERATE_LIMITED);
    for (int i = 0; i < 50; i++)
        assert_int_equal(s_take(q, "bund.bmi", 100), 0);
    assert_int_equal(brk_quota_call_begin(q, "kommune.a", why, sizeof why), 0);
    assert_int_equal(brk_quota_call_begin(q, "kommune.a", why, sizeof why), AB_ERATE_LIMITED);
    for (int i = 0; i < 3; i++)
        assert_int_equal(brk_quota_call_begin(q, "bund.bmi", why, sizeof why), 0);
    /* a new policy: limits looked up again, the counts held stay */
    const char *text2 = "limits:\n  \"kommune.*\": {calls_in_flight: 5}\n";
    ab_policy_t *p2 = NULL;
    assert_int_equal(ab_policy_load_buffer(text2, strlen(text2), "q2.yaml", &p2, NULL), 0);
    brk_quota_set_policy(q, p2);
    ab_policy_destroy(&p);
    for (int i = 0; i < 4; i++)
        assert_int_equal(brk_quota_call_begin(q, "kommune.a", why, sizeof why), 0);
    assert_int_equal(brk_quota_call_begin(q, "kommune.a", why, sizeof why), AB_ERATE_LIMITED);
    for (int i = 0; i < 100; i++)
        assert_int_equal(s_take(q, "kommune.a", 100), 0); /* no rate any more */
    brk_quota_destroy(&q);
    ab_policy_destroy(&p2);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket),
        cmocka_unit_test(test_no_rate),
        cmocka_unit_test(test_calls_and_sessions),
        cmocka_unit_test(test_policy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
