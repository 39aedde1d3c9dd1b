/*
 * test_client_mailbox.c - the parts of mailboxes and events that need no broker: the client
 * library's ring of acknowledged deliveries, topic syntax and matching, the checks of ab_send,
 * ab_publish, ab_subscribe and ab_inbox before anything is sent, and the CLI's parsing of
 * durations, message ids and counts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "amtsbote.h"
#include "cli.h"
#include "mailbox.h"

static void
s_noop_sent(ab_client_t *client, int status, const char *id, const char *errtext, void *arg)
{
    (void)client;
    (void)status;
    (void)id;
    (void)errtext;
    (void)arg;
}

static void
s_id(uint32_t n, uint8_t id[16])
{
    memset(id, 0xab, 16);
    id[0] = (uint8_t)(n >> 24);
    id[1] = (uint8_t)(n >> 16);
    id[2] = (uint8_t)(n >> 8);
    id[3] = (uint8_t)n;
}

/* ---- the ring ----------------------------------------------------------------------------- */

static void
test_dedup_remembers_and_forgets_the_oldest(void **state)
{
    (void)state;
    ab_dedup_t *d = ab_dedup_new(AB_DEDUP_CAPACITY);
    assert_non_null(d);
    uint8_t id[16];
    for (uint32_t n = 0; n < AB_DEDUP_CAPACITY; n++) {
        s_id(n, id);
        ab_dedup_add(d, "m:bund.bmi", id);
    }
    assert_int_equal(ab_dedup_count(d), AB_DEDUP_CAPACITY);
    s_id(0, id);
    assert_true(ab_dedup_seen(d, "m:bund.bmi", id));
    s_id(AB_DEDUP_CAPACITY - 1, id);
    assert_true(ab_dedup_seen(d, "m:bund.bmi", id));
    /* 65,537th: the first one leaves, the second stays */
    s_id(AB_DEDUP_CAPACITY, id);
    ab_dedup_add(d, "m:bund.bmi", id);
    assert_int_equal(ab_dedup_count(d), AB_DEDUP_CAPACITY);
    assert_true(ab_dedup_seen(d, "m:bund.bmi", id));
    s_id(0, id);
    assert_false(ab_dedup_seen(d, "m:bund.bmi", id));
    s_id(1, id);
    assert_true(ab_dedup_seen(d, "m:bund.bmi", id));
    /* every key of the last full window is still found after many more rounds */
    for (uint32_t n = AB_DEDUP_CAPACITY + 1; n < 3 * AB_DEDUP_CAPACITY + 17; n++) {
        s_id(n, id);
        ab_dedup_add(d, "m:bund.bmi", id);
    }
    uint32_t found = 0;
    for (uint32_t n = 2 * AB_DEDUP_CAPACITY + 17; n < 3 * AB_DEDUP_CAPACITY + 17; n++) {
        s_id(n, id);
        found += (uint32_t)ab_dedup_seen(d, "m:bund.bmi", id);
    }
    assert_int_equal(found, AB_DEDUP_CAPACITY);
    s_id(2 * AB_DEDUP_CAPACITY + 16, id);
    assert_false(ab_dedup_seen(d, "m:bund.bmi", id));
    ab_dedup_destroy(&d);
    assert_null(d);
    ab_dedup_destroy(&d); /* safe twice */
}

static void
test_dedup_keys_are_name_and_id(void **state)
{
    (void)state;
    ab_dedup_t *d = ab_dedup_new(8);
    uint8_t id[16];
    s_id(7, id);
    ab_dedup_add(d, "m:bund.bmi", id);
    assert_true(ab_dedup_seen(d, "m:bund.bmi", id));
    /* the same id from another sender is another message */
    assert_false(ab_dedup_seen(d, "m:bund.bmf", id));
    assert_false(ab_dedup_seen(d, "e:bund.bmi", id));
    assert_false(ab_dedup_seen(d, "", id));
    /* adding a key twice keeps one entry */
    ab_dedup_add(d, "m:bund.bmi", id);
    assert_int_equal(ab_dedup_count(d), 1);
    /* events: the sequence is the id */
    uint8_t a[16], b[16];
    ab_dedup_seq_id(41, a);
    ab_dedup_seq_id(42, b);
    ab_dedup_add(d, "e:statistik", a);
    assert_true(ab_dedup_seen(d, "e:statistik", a));
    assert_false(ab_dedup_seen(d, "e:statistik", b));
    assert_false(ab_dedup_seen(NULL, "e:statistik", a));
    ab_dedup_destroy(&d);
    assert_null(ab_dedup_new(0));
}

/* A small ring where every key lands in few buckets: eviction must unlink from the middle of
 * a chain. */
static void
test_dedup_small_ring_wraps(void **state)
{
    (void)state;
    ab_dedup_t *d = ab_dedup_new(3);
    uint8_t id[16];
    for (uint32_t n = 0; n < 100; n++) {
        s_id(n, id);
        ab_dedup_add(d, "m:x.y", id);
        assert_int_equal(ab_dedup_count(d), n < 3 ? n + 1 : 3);
        for (uint32_t k = 0; k <= n; k++) {
            s_id(k, id);
            assert_int_equal(ab_dedup_seen(d, "m:x.y", id), k + 3 > n);
        }
    }
    ab_dedup_destroy(&d);
}

/* ---- topics ------------------------------------------------------------------------------- */

static void
test_topic_syntax(void **state)
{
    (void)state;
    char why[AB_WHY_LEN];
    assert_int_equal(ab_topic_check("meldewesen.umzug.09162000", 0, why), 0);
    assert_int_equal(ab_topic_check("a", 0, why), 0);
    assert_int_equal(ab_topic_check("A-b_c.D9", 0, why), 0);
    assert_int_equal(ab_topic_check("meldewesen.umzug.>", 1, why), 0);
    assert_int_equal(ab_topic_check("*.umzug.*", 1, why), 0);
    assert_int_equal(ab_topic_check(">", 1, why), 0);

    assert_int_equal(ab_topic_check("", 0, why), AB_EINVAL);
    assert_non_null(strstr(why, "empty"));
    assert_int_equal(ab_topic_check("a..b", 0, why), AB_EINVAL);
    assert_non_null(strstr(why, "segment 2"));
    assert_int_equal(ab_topic_check("a.b.", 0, why), AB_EINVAL);
    assert_int_equal(ab_topic_check(".a", 0, why), AB_EINVAL);
    assert_int_equal(ab_topic_check("a.b c", 0, why), AB_EINVAL);
    assert_non_null(strstr(why, "' '"));
    assert_int_equal(ab_topic_check("a.*", 0, why), AB_EINVAL);
    assert_non_null(strstr(why, "wildcards are for patterns"));
    assert_int_equal(ab_topic_check("a.>.b", 1, why), AB_EINVAL);
    assert_non_null(strstr(why, "last segment"));
    assert_int_equal(ab_topic_check("a.b*", 1, why), AB_EINVAL);
    assert_int_equal(ab_topic_check("umzug.ä", 0, why), AB_EINVAL);
    assert_int_equal(ab_topic_check(NULL, 0, why), AB_EINVAL);

    char seg[70];
    memset(seg, 'x', 65);
    seg[65] = '\0';
    assert_int_equal(ab_topic_check(seg, 0, why), AB_EINVAL);
    assert_non_null(strstr(why, "longer than 64"));
    seg[64] = '\0';
    assert_int_equal(ab_topic_check(seg, 0, why), 0);

    char many[64] = "";
    for (int i = 0; i < 17; i++)
        strcat(many, i ? ".a" : "a");
    assert_int_equal(ab_topic_check(many, 0, why), AB_EINVAL);
    assert_non_null(strstr(why, "more than 16 segments"));
    many[strlen(many) - 2] = '\0';
    assert_int_equal(ab_topic_check(many, 0, why), 0);
}

static void
test_topic_match(void **state)
{
    (void)state;
    assert_true(ab_topic_match("a.b.c", "a.b.c"));
    assert_false(ab_topic_match("a.b.c", "a.b"));
    assert_false(ab_topic_match("a.b", "a.b.c"));
    assert_false(ab_topic_match("a.b.c", "a.b.cd"));
    assert_true(ab_topic_match("a.*.c", "a.b.c"));
    assert_false(ab_topic_match("a.*.c", "a.b.x.c"));
    assert_false(ab_topic_match("a.*", "a"));
    assert_true(ab_topic_match("a.>", "a.b"));
    assert_true(ab_topic_match("a.>", "a.b.c.d"));
    assert_false(ab_topic_match("a.>", "a"));
    assert_true(ab_topic_match(">", "x"));
    assert_true(ab_topic_match("*.*.>", "meldewesen.umzug.09162000"));
    assert_false(ab_topic_match("*.*.>", "meldewesen.umzug"));
}

static void
test_subscription_names(void **state)
{
    (void)state;
    char why[AB_WHY_LEN];
    assert_int_equal(ab_subscription_check("statistik", why), 0);
    assert_int_equal(ab_subscription_check("bund.destatis-v2_x", why), 0);
    assert_int_equal(ab_subscription_check("", why), AB_EINVAL);
    assert_int_equal(ab_subscription_check("mit leerzeichen", why), AB_EINVAL);
    assert_non_null(strstr(why, "' '"));
    assert_int_equal(ab_subscription_check("a/b", why), AB_EINVAL);
    assert_int_equal(ab_subscription_check("Statistik", why), AB_EINVAL); /* as the broker */
    assert_non_null(strstr(why, "position 1"));
}

/* ---- the library's checks before anything is sent ----------------------------------------- */

static void
test_send_checks_arguments_first(void **state)
{
    (void)state;
    ab_client_t *c = ab_client_new();
    assert_non_null(c);
    char id[33] = "x";
    assert_int_equal(ab_send(c, "Bund BMI", "x", 1, NULL, id, 0), AB_EINVAL);
    assert_non_null(strstr(ab_client_last_error(c), "recipient"));
    assert_int_equal(strlen(id), 32); /* the id is there for a retry, even on failure */
    assert_int_equal(ab_send(c, "bund.bmi", NULL, 3, NULL, id, 0), AB_EINVAL);
    assert_non_null(strstr(ab_client_last_error(c), "NULL"));
    ab_send_options_t o = {.schema = "kein typ"};
    assert_int_equal(ab_send(c, "bund.bmi", "x", 1, &o, id, 0), AB_EINVAL);
    assert_non_null(strstr(ab_client_last_error(c), "kein typ"));
    o.schema = "a..b";
    assert_int_equal(ab_send(c, "bund.bmi", "x", 1, &o, id, 0), AB_EINVAL);
    assert_int_equal(ab_send(c, "bund.bmi", "x", 1, NULL, id, -1), AB_EINVAL);
    /* good arguments, no connection */
    o.schema = "meldewesen.v1.Anmeldung";
    uint8_t given[16];
    memset(given, 0x5a, sizeof given);
    o.message_id = given;
    assert_int_equal(ab_send(c, "bund.bmi", "x", 1, &o, id, 0), AB_ESTATE);
    assert_string_equal(id, "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a");
    assert_int_equal(ab_send(NULL, "bund.bmi", "x", 1, NULL, id, 0), AB_EINVAL);
    assert_int_equal(ab_send_async(c, "bund.bmi", "x", 1, NULL, NULL, NULL), AB_EINVAL);

    assert_int_equal(ab_publish(c, "a.*", "x", 1, NULL, id, 0), AB_EINVAL);
    assert_non_null(strstr(ab_client_last_error(c), "wildcards"));
    assert_int_equal(ab_publish_async(c, "a.*", "x", 1, NULL, s_noop_sent, NULL), AB_EINVAL);
    assert_non_null(strstr(ab_client_last_error(c), "wildcards"));
    assert_int_equal(ab_publish_async(c, "meldewesen.umzug", "x", 1, NULL, NULL, NULL), AB_EINVAL);
    assert_non_null(strstr(ab_client_last_error(c), "callback"));
    assert_int_equal(ab_publish(c, "meldewesen.umzug", "x", 1, NULL, id, 0), AB_ESTATE);
    ab_client_destroy(&c);
}

static void
s_fn(ab_client_t *client, ab_message_t *msg, void *arg)
{
    (void)client;
    (void)arg;
    ab_message_free(&msg);
}

static void
test_subscribe_and_inbox_check_arguments(void **state)
{
    (void)state;
    ab_client_t *c = ab_client_new();
    assert_int_equal(ab_subscribe(c, "a..b", NULL, 0, s_fn, NULL), AB_EINVAL);
    assert_non_null(strstr(ab_client_last_error(c), "segment 2"));
    assert_int_equal(ab_subscribe(c, "a.>", "kein name", 0, s_fn, NULL), AB_EINVAL);
    assert_int_equal(ab_subscribe(c, "a.>", NULL, 0, NULL, NULL), AB_EINVAL);
    assert_int_equal(ab_subscribe(c, "a.>", "statistik", 0, s_fn, NULL), AB_ESTATE);
    assert_int_equal(ab_unsubscribe(c, "a.>", "kein name"), AB_EINVAL);
    assert_int_equal(ab_inbox(c, 5, NULL, NULL), AB_EINVAL);
    assert_non_null(strstr(ab_client_last_error(c), "handler"));
    assert_int_equal(ab_inbox(c, 5, s_fn, NULL), AB_ESTATE);
    assert_int_equal(ab_client_duplicates_dropped(c), 0);
    ab_client_destroy(&c);
}

static void
test_message_functions_take_null(void **state)
{
    (void)state;
    ab_message_t *m = NULL;
    assert_int_equal(ab_ack(NULL), AB_EINVAL);
    assert_int_equal(ab_ack(&m), AB_EINVAL);
    ab_message_free(NULL);
    ab_message_free(&m);
    size_t len = 7;
    assert_null(ab_message_payload(NULL, &len));
    assert_int_equal(len, 0);
    assert_int_equal(ab_message_kind(NULL), 0);
    assert_string_equal(ab_message_id(NULL), "");
    assert_string_equal(ab_message_error(NULL), "");
    assert_int_equal(ab_message_sequence(NULL), 0);
}

/* ---- the CLI's arguments ------------------------------------------------------------------ */

static void
test_cli_durations(void **state)
{
    (void)state;
    uint64_t ms = 0;
    assert_int_equal(cli_parse_duration("90s", UINT32_MAX, &ms), 0);
    assert_int_equal(ms, 90000);
    assert_int_equal(cli_parse_duration("10m", UINT32_MAX, &ms), 0);
    assert_int_equal(ms, 600000);
    assert_int_equal(cli_parse_duration("7d", UINT32_MAX, &ms), 0);
    assert_int_equal(ms, 604800000);
    assert_int_equal(cli_parse_duration("12h", UINT32_MAX, &ms), 0);
    assert_int_equal(ms, 43200000);
    assert_int_equal(cli_parse_duration("250ms", UINT32_MAX, &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(cli_parse_duration("49d", UINT32_MAX, &ms), 0);
    assert_int_equal(cli_parse_duration("50d", UINT32_MAX, &ms), -1); /* over 2^32 ms */
    assert_int_equal(cli_parse_duration("90", UINT32_MAX, &ms), -1);  /* a unit is needed */
    assert_int_equal(cli_parse_duration("s", UINT32_MAX, &ms), -1);
    assert_int_equal(cli_parse_duration("-5s", UINT32_MAX, &ms), -1);
    assert_int_equal(cli_parse_duration(" 5s", UINT32_MAX, &ms), -1);
    assert_int_equal(cli_parse_duration("5 s", UINT32_MAX, &ms), -1);
    assert_int_equal(cli_parse_duration("5sec", UINT32_MAX, &ms), -1);
    assert_int_equal(cli_parse_duration("1.5s", UINT32_MAX, &ms), -1);
    assert_int_equal(cli_parse_duration("99999999999999999999999d", UINT32_MAX, &ms), -1);
    assert_int_equal(cli_parse_duration("", UINT32_MAX, &ms), -1);
    assert_int_equal(cli_parse_duration(NULL, UINT32_MAX, &ms), -1);
}

static void
test_cli_message_ids(void **state)
{
    (void)state;
    uint8_t id[16];
    assert_int_equal(cli_parse_message_id("0192F1C8a3e07b4c9d2e5f6a7b8c9d0e", id), 0);
    assert_int_equal(id[0], 0x01);
    assert_int_equal(id[2], 0xf1);
    assert_int_equal(id[15], 0x0e);
    assert_int_equal(cli_parse_message_id("0192f1c8a3e07b4c9d2e5f6a7b8c9d0", id), -1);
    assert_int_equal(cli_parse_message_id("0192f1c8a3e07b4c9d2e5f6a7b8c9d0e0", id), -1);
    assert_int_equal(cli_parse_message_id("0192f1c8a3e07b4c9d2e5f6a7b8c9d0g", id), -1);
    assert_int_equal(cli_parse_message_id("0192f1c8-a3e0-7b4c-9d2e-5f6a7b8c", id), -1);
    assert_int_equal(cli_parse_message_id("", id), -1);
    assert_int_equal(cli_parse_message_id(NULL, id), -1);
}

static void
test_cli_counts_times_base64(void **state)
{
    (void)state;
    uint32_t n = 0;
    assert_int_equal(cli_parse_count("10", 1, 100, &n), 0);
    assert_int_equal(n, 10);
    assert_int_equal(cli_parse_count("0", 1, 100, &n), -1);
    assert_int_equal(cli_parse_count("101", 1, 100, &n), -1);
    assert_int_equal(cli_parse_count("5x", 1, 100, &n), -1);
    assert_int_equal(cli_parse_count("-1", 0, 100, &n), -1);
    assert_int_equal(cli_parse_count("99999999999", 0, UINT32_MAX, &n), -1);

    char buf[48];
    cli_iso_time(UINT64_C(1700000000123), buf, sizeof buf);
    assert_string_equal(buf, "2023-11-14T22:13:20.123Z");

    char *b = cli_base64("", 0);
    assert_string_equal(b, "");
    free(b);
    b = cli_base64("f", 1);
    assert_string_equal(b, "Zg==");
    free(b);
    b = cli_base64("fo", 2);
    assert_string_equal(b, "Zm8=");
    free(b);
    b = cli_base64("foobar", 6);
    assert_string_equal(b, "Zm9vYmFy");
    free(b);
    b = cli_base64("\xff\x00\xfe", 3);
    assert_string_equal(b, "/wD+");
    free(b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dedup_remembers_and_forgets_the_oldest),
        cmocka_unit_test(test_dedup_keys_are_name_and_id),
        cmocka_unit_test(test_dedup_small_ring_wraps),
        cmocka_unit_test(test_topic_syntax),
        cmocka_unit_test(test_topic_match),
        cmocka_unit_test(test_subscription_names),
        cmocka_unit_test(test_send_checks_arguments_first),
        cmocka_unit_test(test_subscribe_and_inbox_check_arguments),
        cmocka_unit_test(test_message_functions_take_null),
        cmocka_unit_test(test_cli_durations),
        cmocka_unit_test(test_cli_message_ids),
        cmocka_unit_test(test_cli_counts_times_base64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
