/*
 * Integration tests of mailboxes and events through the real broker, on raw DEALERs (what the
 * client library hides is checked here: sequences, attempts, receipts, credit): delivery to an
 * offline recipient, receipts to an offline sender, dedup, FIFO, quotas, expiry, redelivery and
 * dead letters, credit with a recipient that never acknowledges, every bad input, ephemeral and
 * durable subscriptions (also across a broker restart), MessageStatus, and a damaged record.
 */
#include <setjmp.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include <cmocka.h>

#include "amtsbote/v1/amtsbote.pb-c.h"
#include "harness.h"
#include "wire.h"

#define K(x) AMTSBOTE__V1__KIND__KIND_##x

static h_broker_t B;
static void *CTX;
static char DATA[192]; /* the broker's data directory, kept across restarts */

static const char *const EXTRA[] = {"--data",
                                    DATA,
                                    "--heartbeat-timeout-ms",
                                    "30000",
                                    "--mailbox-max-messages",
                                    "50",
                                    "--ack-timeout-ms",
                                    "400",
                                    "--max-deliveries",
                                    "3",
                                    NULL};

static int
s_start(void)
{
    return h_broker_start(&B, 0, EXTRA);
}

static int
group_setup(void **state)
{
    (void)state;
    snprintf(DATA, sizeof DATA, "/tmp/amtsbote-mailbox-XXXXXX");
    if (!mkdtemp(DATA))
        return -1;
    if (s_start() != 0)
        return -1;
    CTX = zmq_ctx_new();
    return 0;
}

static int
group_teardown(void **state)
{
    (void)state;
    int st = h_broker_stop(&B, SIGTERM, 10000);
    if (st != 0)
        fprintf(stderr, "broker exited with %d (log in %s)\n", st, B.dir);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", DATA);
    if (st == 0 && system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", DATA);
    return st == 0 ? 0 : -1;
}

static void *
s_raw(const char *participant, int timeout_ms)
{
    void *s = zmq_socket(CTX, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(s, ZMQ_PLAIN_USERNAME, participant, strlen(participant));
    zmq_setsockopt(s, ZMQ_PLAIN_PASSWORD, "", 0);
    assert_int_equal(zmq_connect(s, B.tcp), 0);
    return s;
}

static void
s_put(void *s, const ab_header_t *h, const void *payload, size_t len)
{
    uint8_t buf[AB_MAX_HEADER_BYTES];
    int n = ab_wire_encode(h, buf, sizeof buf);
    assert_true(n > 0);
    assert_int_equal(zmq_send(s, buf, (size_t)n, payload ? ZMQ_SNDMORE : 0), n);
    if (payload)
        assert_int_equal(zmq_send(s, payload, len, 0), (int)len);
}

static ab_header_t
s_hdr(int kind)
{
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = 1;
    h.kind = kind;
    return h;
}

/* SEND of `text` to `to` with message id `id` (made when id[0..15] are zero). */
static void
s_send_msg(void *s, const char *to, const char *text, uint8_t id[16], uint32_t ttl_ms)
{
    static const uint8_t zero[16];
    if (!memcmp(id, zero, 16))
        ab_uuid7(id);
    ab_header_t h = s_hdr(K(SEND));
    h.message_id.data = id;
    h.message_id.len = 16;
    h.recipient = (char *)to;
    h.deadline_ms = ttl_ms;
    s_put(s, &h, text, strlen(text));
}

/* Receives one message: header (caller frees) and payload as a string; NULL on time-out. */
static ab_header_t *
s_get(void *s, char *payload, size_t cap)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    ab_header_t *h = NULL;
    if (payload)
        payload[0] = '\0';
    if (zmq_msg_recv(&m, s, 0) >= 0) {
        h = amtsbote__v1__header__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
        while (zmq_msg_more(&m) && zmq_msg_recv(&m, s, 0) >= 0)
            if (payload && zmq_msg_size(&m) < cap) {
                memcpy(payload, zmq_msg_data(&m), zmq_msg_size(&m));
                payload[zmq_msg_size(&m)] = '\0';
            }
    }
    zmq_msg_close(&m);
    return h;
}

/* The answer to a SEND: REPLY (accepted) or ERROR. Returns the header (caller frees). */
static ab_header_t *
s_answer(void *s)
{
    ab_header_t *h = s_get(s, NULL, 0);
    assert_non_null(h);
    assert_true(h->kind == K(REPLY) || h->kind == K(ERROR));
    return h;
}

static void
s_accepted(void *s, const uint8_t id[16])
{
    ab_header_t *h = s_answer(s);
    if (h->kind != K(REPLY))
        fail_msg("SEND refused: %s", h->error ? h->error->text : "?");
    assert_int_equal(h->message_id.len, 16);
    assert_memory_equal(h->message_id.data, id, 16);
    assert_true(h->timestamp_ms > 1700000000000ull);
    assert_true(h->sequence > 0);
    amtsbote__v1__header__free_unpacked(h, NULL);
}

static void
s_credit(void *s, uint32_t credit, const char *sub)
{
    ab_header_t h = s_hdr(K(CREDIT));
    uint8_t corr[4] = {1, 2, 3, 4};
    h.correlation_id.data = corr;
    h.correlation_id.len = 4;
    h.credit = credit;
    h.subscription = (char *)(sub ? sub : "");
    s_put(s, &h, NULL, 0);
    ab_header_t *a = s_get(s, NULL, 0);
    assert_non_null(a);
    if (a->kind != K(REPLY))
        fail_msg("CREDIT refused: %s", a->error ? a->error->text : "?");
    amtsbote__v1__header__free_unpacked(a, NULL);
}

static void
s_ack(void *s, uint64_t seq, const char *sub)
{
    ab_header_t h = s_hdr(K(ACK));
    h.sequence = seq;
    h.subscription = (char *)(sub ? sub : "");
    s_put(s, &h, NULL, 0);
}

/* Receives the next delivery; fails on a time-out. */
static ab_header_t *
s_delivery(void *s, char *payload, size_t cap)
{
    ab_header_t *h = s_get(s, payload, cap);
    if (!h)
        fail_msg("no delivery in time");
    return h;
}

static void
test_offline_recipient_and_offline_sender(void **state)
{
    (void)state;
    void *a = s_raw("bund.bmi", 5000);
    uint8_t id[16] = {0};
    s_send_msg(a, "kommune.09162000.meldeamt", "Bescheid 1", id, 0);
    s_accepted(a, id);
    zmq_close(a); /* the sender goes offline */

    /* the recipient connects later and takes it */
    void *r = s_raw("kommune.09162000.meldeamt", 5000);
    s_credit(r, 10, NULL);
    char text[256];
    ab_header_t *d = s_delivery(r, text, sizeof text);
    assert_int_equal(d->kind, K(DELIVER));
    assert_string_equal(text, "Bescheid 1");
    assert_string_equal(d->sender, "bund.bmi");
    assert_string_equal(d->recipient, "kommune.09162000.meldeamt");
    assert_memory_equal(d->message_id.data, id, 16);
    assert_int_equal(d->attempt, 1);
    assert_true(d->timestamp_ms > 0);
    s_ack(r, d->sequence, NULL);
    amtsbote__v1__header__free_unpacked(d, NULL);
    zmq_close(r);

    /* the sender comes back: the receipt waited in its mailbox */
    a = s_raw("bund.bmi", 5000);
    s_credit(a, 10, NULL);
    ab_header_t *rc = s_delivery(a, NULL, 0);
    assert_int_equal(rc->kind, K(RECEIPT));
    assert_int_equal(rc->receipt, AMTSBOTE__V1__RECEIPT_STATUS__DELIVERED);
    assert_memory_equal(rc->correlation_id.data, id, 16);
    assert_string_equal(rc->recipient, "kommune.09162000.meldeamt");
    s_ack(a, rc->sequence, NULL);
    amtsbote__v1__header__free_unpacked(rc, NULL);

    /* MessageStatus: accepted, delivered, acknowledged */
    zmq_close(a);
    ab_client_t *c = h_client(B.tcp, "bund.bmi");
    assert_non_null(c);
    Amtsbote__V1__MessageStatusRequest req = AMTSBOTE__V1__MESSAGE_STATUS_REQUEST__INIT;
    req.message_id.data = id;
    req.message_id.len = 16;
    uint8_t buf[256];
    size_t len = amtsbote__v1__message_status_request__pack(&req, buf);
    void *reply = NULL;
    size_t rlen = 0;
    assert_int_equal(ab_call(c, "amtsbote.v1.Broker/MessageStatus", buf, len, 5000, &reply, &rlen),
                     0);
    Amtsbote__V1__MessageStatus *st = amtsbote__v1__message_status__unpack(NULL, rlen, reply);
    assert_non_null(st);
    assert_string_equal(st->state, "acknowledged");
    assert_string_equal(st->recipient, "kommune.09162000.meldeamt");
    assert_int_equal(st->n_steps, 3);
    assert_string_equal(st->steps[0]->step, "accepted");
    assert_string_equal(st->steps[1]->step, "delivered");
    assert_string_equal(st->steps[2]->step, "acknowledged");
    assert_true(st->steps[2]->at_ms >= st->steps[0]->at_ms);
    amtsbote__v1__message_status__free_unpacked(st, NULL);
    ab_free(reply);
    /* somebody else may not see it */
    ab_client_t *o = h_client(B.tcp, "land.by.stmi");
    assert_non_null(o);
    req.sender = "bund.bmi";
    len = amtsbote__v1__message_status_request__pack(&req, buf);
    assert_int_equal(ab_call(o, "amtsbote.v1.Broker/MessageStatus", buf, len, 5000, &reply, &rlen),
                     AB_EINVAL);
    assert_non_null(strstr(ab_client_last_error(o), "no message"));
    ab_client_destroy(&o);
    ab_client_destroy(&c);
}

static void
test_dedup_and_fifo(void **state)
{
    (void)state;
    void *a = s_raw("land.by.stmi", 5000);
    uint8_t id[16] = {0};
    s_send_msg(a, "kommune.09184119.ordnungsamt", "einmal", id, 0);
    s_accepted(a, id);
    /* the same id again (a retry after a lost answer): accepted, nothing stored */
    s_send_msg(a, "kommune.09184119.ordnungsamt", "einmal", id, 0);
    s_accepted(a, id);
    /* then 40 in order */
    for (int i = 0; i < 40; i++) {
        uint8_t mid[16] = {0};
        char text[32];
        snprintf(text, sizeof text, "nr %d", i);
        s_send_msg(a, "kommune.09184119.ordnungsamt", text, mid, 0);
        s_accepted(a, mid);
    }
    void *r = s_raw("kommune.09184119.ordnungsamt", 5000);
    s_credit(r, 100, NULL);
    char text[256];
    ab_header_t *d = s_delivery(r, text, sizeof text);
    assert_string_equal(text, "einmal");
    s_ack(r, d->sequence, NULL);
    amtsbote__v1__header__free_unpacked(d, NULL);
    for (int i = 0; i < 40; i++) {
        char want[32];
        snprintf(want, sizeof want, "nr %d", i);
        d = s_delivery(r, text, sizeof text);
        assert_string_equal(text, want);
        s_ack(r, d->sequence, NULL);
        amtsbote__v1__header__free_unpacked(d, NULL);
    }
    /* and nothing else: the duplicate was not stored */
    int t = 500;
    zmq_setsockopt(r, ZMQ_RCVTIMEO, &t, sizeof t);
    assert_null(s_get(r, NULL, 0));
    zmq_close(r);
    zmq_close(a);
}

static void
test_quota(void **state)
{
    (void)state;
    void *a = s_raw("bund.bmf", 5000);
    uint8_t first[16] = {0};
    for (int i = 0; i < 50; i++) {
        uint8_t id[16] = {0};
        s_send_msg(a, "kommune.01001000.kasse", "x", id, 0);
        s_accepted(a, id);
        if (i == 0)
            memcpy(first, id, 16);
    }
    uint8_t id[16] = {0};
    s_send_msg(a, "kommune.01001000.kasse", "one too many", id, 0);
    ab_header_t *h = s_answer(a);
    assert_int_equal(h->kind, K(ERROR));
    assert_int_equal(h->error->code, AMTSBOTE__V1__ERROR_CODE__MAILBOX_FULL);
    assert_non_null(strstr(h->error->text, "kommune.01001000.kasse"));
    assert_non_null(strstr(h->error->text, "nothing was stored"));
    amtsbote__v1__header__free_unpacked(h, NULL);
    /* a retry of one already accepted is still accepted */
    s_send_msg(a, "kommune.01001000.kasse", "x", first, 0);
    s_accepted(a, first);
    /* another mailbox is not affected */
    uint8_t other[16] = {0};
    s_send_msg(a, "kommune.01001000.bauamt", "y", other, 0);
    s_accepted(a, other);
    zmq_close(a);
}

static void
test_expiry(void **state)
{
    (void)state;
    void *a = s_raw("bund.bmj", 5000);
    uint8_t id[16] = {0};
    s_send_msg(a, "kommune.05315000.standesamt", "short lived", id, 300);
    s_accepted(a, id);
    s_credit(a, 10, NULL);
    ab_header_t *rc = s_delivery(a, NULL, 0); /* within the tick after 300 ms */
    assert_int_equal(rc->kind, K(RECEIPT));
    assert_int_equal(rc->receipt, AMTSBOTE__V1__RECEIPT_STATUS__EXPIRED);
    assert_memory_equal(rc->correlation_id.data, id, 16);
    assert_non_null(rc->error);
    assert_non_null(strstr(rc->error->text, "time to live"));
    s_ack(a, rc->sequence, NULL);
    amtsbote__v1__header__free_unpacked(rc, NULL);
    /* the recipient finds nothing */
    void *r = s_raw("kommune.05315000.standesamt", 500);
    s_credit(r, 10, NULL);
    assert_null(s_get(r, NULL, 0));
    zmq_close(r);
    zmq_close(a);
}

static void
test_redelivery_and_dead_letter(void **state)
{
    (void)state;
    void *a = s_raw("bund.bmg", 5000);
    uint8_t id[16] = {0};
    s_send_msg(a, "kommune.03241001.gesundheitsamt", "nie bestaetigt", id, 0);
    s_accepted(a, id);
    void *r = s_raw("kommune.03241001.gesundheitsamt", 5000);
    s_credit(r, 10, NULL);
    /* ack_timeout 400 ms, max_deliveries 3: attempts 1, 2, 3, then a dead letter */
    for (uint32_t attempt = 1; attempt <= 3; attempt++) {
        char text[64];
        ab_header_t *d = s_delivery(r, text, sizeof text);
        assert_int_equal(d->kind, K(DELIVER));
        assert_int_equal(d->attempt, attempt);
        assert_string_equal(text, "nie bestaetigt");
        amtsbote__v1__header__free_unpacked(d, NULL);
    }
    s_credit(a, 10, NULL);
    ab_header_t *rc = s_delivery(a, NULL, 0);
    assert_int_equal(rc->kind, K(RECEIPT));
    assert_int_equal(rc->receipt, AMTSBOTE__V1__RECEIPT_STATUS__FAILED);
    assert_memory_equal(rc->correlation_id.data, id, 16);
    s_ack(a, rc->sequence, NULL);
    amtsbote__v1__header__free_unpacked(rc, NULL);
    int t = 800;
    zmq_setsockopt(r, ZMQ_RCVTIMEO, &t, sizeof t);
    assert_null(s_get(r, NULL, 0)); /* not a fourth time */
    zmq_close(r);
    zmq_close(a);
}

/* Receives for `ms` and adds every sequence not seen yet to seen[] (n so far); returns n. */
static size_t
s_distinct(void *r, uint64_t *seen, size_t n, int ms)
{
    uint64_t end = ab_now_ms() + (uint64_t)ms;
    while (ab_now_ms() < end) {
        ab_header_t *d = s_get(r, NULL, 0);
        if (!d)
            continue;
        int known = 0;
        for (size_t i = 0; i < n; i++)
            known |= seen[i] == d->sequence;
        if (!known && n < 8)
            seen[n++] = d->sequence;
        amtsbote__v1__header__free_unpacked(d, NULL);
    }
    return n;
}

static void
test_credit_bounds_deliveries(void **state)
{
    (void)state;
    void *a = s_raw("bund.bmas", 5000);
    for (int i = 0; i < 20; i++) {
        uint8_t id[16] = {0};
        s_send_msg(a, "kommune.08111000.sozialamt", "viel", id, 0);
        s_accepted(a, id);
    }
    /* redeliveries after ack_timeout_ms (400 ms) may come, and after max_deliveries (3) a dead
     * letter frees a slot: the windows below stay short of that */
    void *r = s_raw("kommune.08111000.sozialamt", 100);
    s_credit(r, 2, NULL);
    uint64_t seen[8];
    size_t nseen = s_distinct(r, seen, 0, 500);
    assert_int_equal(nseen, 2);
    s_ack(r, seen[0], NULL); /* one slot free: exactly one more */
    nseen = s_distinct(r, seen, nseen, 300);
    assert_int_equal(nseen, 3);
    assert_true(seen[2] > seen[1]);
    zmq_close(r);
    zmq_close(a);
}

/* Expects an ERROR with `code` whose text contains `needle`. */
static void
s_expect_error(void *s, int code, const char *needle)
{
    ab_header_t *h = s_get(s, NULL, 0);
    assert_non_null(h);
    assert_int_equal(h->kind, K(ERROR));
    assert_int_equal(h->error->code, code);
    if (!strstr(h->error->text, needle))
        fail_msg("error text '%s' does not contain '%s'", h->error->text, needle);
    amtsbote__v1__header__free_unpacked(h, NULL);
}

static void
test_bad_input(void **state)
{
    (void)state;
    void *a = s_raw("bund.bmi", 2000);
    int INV = AMTSBOTE__V1__ERROR_CODE__INVALID_ARGUMENT;
    /* SEND without a message id */
    ab_header_t h = s_hdr(K(SEND));
    uint8_t corr[2] = {9, 9};
    h.correlation_id.data = corr;
    h.correlation_id.len = 2;
    h.recipient = "kommune.09162000.meldeamt";
    s_put(a, &h, "x", 1);
    s_expect_error(a, INV, "message_id");
    /* a recipient that is not an address */
    uint8_t id[16] = {0};
    s_send_msg(a, "Kommune München", "x", id, 0);
    s_expect_error(a, INV, "recipient");
    memset(id, 0, 16);
    s_send_msg(a, "", "x", id, 0);
    s_expect_error(a, INV, "recipient");
    /* a time to live over the maximum */
    memset(id, 0, 16);
    s_send_msg(a, "kommune.09162000.meldeamt", "x", id, 4000000000u);
    s_expect_error(a, INV, "max_message_ttl_ms");
    /* CREDIT for a subscription that does not exist */
    h = s_hdr(K(CREDIT));
    h.credit = 5;
    h.subscription = "nope";
    s_put(a, &h, NULL, 0);
    s_expect_error(a, INV, "no durable subscription named nope");
    /* SUBSCRIBE with a bad pattern, a bad name; PUBLISH to a bad topic */
    h = s_hdr(K(SUBSCRIBE));
    h.topic = "a..b";
    s_put(a, &h, NULL, 0);
    s_expect_error(a, INV, "topic pattern");
    h.topic = "a.>.c";
    s_put(a, &h, NULL, 0);
    s_expect_error(a, INV, "topic pattern");
    h.topic = "a.b";
    h.subscription = "Gross Buchstaben";
    s_put(a, &h, NULL, 0);
    s_expect_error(a, INV, "subscription name");
    h = s_hdr(K(PUBLISH));
    ab_uuid7(id);
    h.message_id.data = id;
    h.message_id.len = 16;
    h.topic = "a.*";
    s_put(a, &h, "x", 1);
    s_expect_error(a, INV, "topic");
    /* WITHDRAW of something never subscribed */
    h = s_hdr(K(WITHDRAW));
    h.topic = "never.subscribed";
    s_put(a, &h, NULL, 0);
    s_expect_error(a, INV, "no subscription");
    /* an ACK of a sequence never delivered is ignored; the connection still works */
    s_ack(a, 987654321, NULL);
    memset(id, 0, 16);
    s_send_msg(a, "kommune.09162000.meldeamt", "after the bad ones", id, 0);
    s_accepted(a, id);
    zmq_close(a);
    /* clean up: take it */
    void *r = s_raw("kommune.09162000.meldeamt", 5000);
    s_credit(r, 10, NULL);
    ab_header_t *d = s_delivery(r, NULL, 0);
    s_ack(r, d->sequence, NULL);
    amtsbote__v1__header__free_unpacked(d, NULL);
    zmq_close(r);
}

static void
s_subscribe(void *s, const char *pattern, const char *durable, uint32_t credit)
{
    ab_header_t h = s_hdr(K(SUBSCRIBE));
    uint8_t corr[1] = {7};
    h.correlation_id.data = corr;
    h.correlation_id.len = 1;
    h.topic = (char *)pattern;
    h.subscription = (char *)(durable ? durable : "");
    h.credit = credit;
    s_put(s, &h, NULL, 0);
    ab_header_t *a = s_get(s, NULL, 0);
    assert_non_null(a);
    if (a->kind != K(REPLY))
        fail_msg("SUBSCRIBE refused: %s", a->error ? a->error->text : "?");
    amtsbote__v1__header__free_unpacked(a, NULL);
}

static void
s_publish(void *s, const char *topic, const char *text)
{
    uint8_t id[16];
    ab_uuid7(id);
    ab_header_t h = s_hdr(K(PUBLISH));
    h.message_id.data = id;
    h.message_id.len = 16;
    h.topic = (char *)topic;
    s_put(s, &h, text, strlen(text));
    ab_header_t *a = s_get(s, NULL, 0);
    assert_non_null(a);
    if (a->kind != K(REPLY))
        fail_msg("PUBLISH refused: %s", a->error ? a->error->text : "?");
    amtsbote__v1__header__free_unpacked(a, NULL);
}

static void
test_events_ephemeral_and_durable(void **state)
{
    (void)state;
    void *pub = s_raw("bund.bmi", 5000);
    void *eph = s_raw("land.by.stmi", 2000);
    s_subscribe(eph, "meldewesen.umzug.*", NULL, 0);
    void *dur = s_raw("kommune.09162000.meldeamt", 2000);
    s_subscribe(dur, "meldewesen.umzug.>", "umzuege", 10);

    s_publish(pub, "meldewesen.umzug.09162000", "e1");
    s_publish(pub, "meldewesen.geburt.09162000", "nobody");
    char text[64];
    ab_header_t *e = s_delivery(eph, text, sizeof text);
    assert_int_equal(e->kind, K(EVENT));
    assert_string_equal(e->topic, "meldewesen.umzug.09162000");
    assert_string_equal(text, "e1");
    assert_string_equal(e->sender, "bund.bmi");
    amtsbote__v1__header__free_unpacked(e, NULL);
    e = s_delivery(dur, text, sizeof text);
    assert_string_equal(text, "e1");
    assert_string_equal(e->subscription, "umzuege");
    assert_true(e->sequence > 0);
    s_ack(dur, e->sequence, "umzuege");
    amtsbote__v1__header__free_unpacked(e, NULL);
    zmq_close(dur); /* the durable subscriber goes away */

    s_publish(pub, "meldewesen.umzug.09162000.x", "e2"); /* > matches, * does not */
    s_publish(pub, "meldewesen.umzug.09184119", "e3");
    e = s_delivery(eph, text, sizeof text);
    assert_string_equal(text, "e3");
    amtsbote__v1__header__free_unpacked(e, NULL);

    /* after a restart of the broker it resumes after the last acknowledged event */
    zmq_close(eph);
    zmq_close(pub);
    assert_int_equal(h_broker_stop(&B, SIGTERM, 10000), 0);
    assert_int_equal(s_start(), 0);
    dur = s_raw("kommune.09162000.meldeamt", 5000);
    s_subscribe(dur, "meldewesen.umzug.>", "umzuege", 10);
    e = s_delivery(dur, text, sizeof text);
    assert_string_equal(text, "e2");
    assert_int_equal(e->attempt, 1);
    s_ack(dur, e->sequence, "umzuege");
    amtsbote__v1__header__free_unpacked(e, NULL);
    e = s_delivery(dur, text, sizeof text);
    assert_string_equal(text, "e3");
    s_ack(dur, e->sequence, "umzuege");
    amtsbote__v1__header__free_unpacked(e, NULL);
    int t = 500;
    zmq_setsockopt(dur, ZMQ_RCVTIMEO, &t, sizeof t);
    assert_null(s_get(dur, NULL, 0));
    /* the same name with another pattern is refused; WITHDRAW deletes it */
    ab_header_t h = s_hdr(K(SUBSCRIBE));
    h.topic = "meldewesen.>";
    h.subscription = "umzuege";
    s_put(dur, &h, NULL, 0);
    t = 5000;
    zmq_setsockopt(dur, ZMQ_RCVTIMEO, &t, sizeof t);
    s_expect_error(dur, AMTSBOTE__V1__ERROR_CODE__INVALID_ARGUMENT, "WITHDRAW it first");
    h = s_hdr(K(WITHDRAW));
    h.subscription = "umzuege";
    s_put(dur, &h, NULL, 0);
    ab_header_t *a = s_get(dur, NULL, 0);
    assert_non_null(a);
    assert_int_equal(a->kind, K(REPLY));
    amtsbote__v1__header__free_unpacked(a, NULL);
    zmq_close(dur);
}

/* A message waits across a restart; a record damaged on disk is reported, not delivered. */
static void
test_restart_and_damaged_record(void **state)
{
    (void)state;
    void *a = s_raw("bund.bmwk", 5000);
    uint8_t ok[16] = {0}, bad[16] = {0};
    s_send_msg(a, "kommune.14612000.wirtschaft", "bleibt heil", ok, 0);
    s_accepted(a, ok);
    s_send_msg(a, "kommune.14612000.wirtschaft", "wird beschaedigt", bad, 0);
    s_accepted(a, bad);
    zmq_close(a);
    assert_int_equal(h_broker_stop(&B, SIGTERM, 10000), 0);

    char db[256];
    snprintf(db, sizeof db, "%s/amtsbote.db", DATA);
    sqlite3 *s = NULL;
    assert_int_equal(sqlite3_open(db, &s), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(s,
                                        "UPDATE mail SET payload = CAST('wird beschaedigX' AS BLOB)"
                                        " WHERE message_id = ?",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_blob(st, 1, bad, 16, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    assert_int_equal(sqlite3_changes(s), 1);
    sqlite3_finalize(st);
    sqlite3_close(s);

    assert_int_equal(s_start(), 0);
    void *r = s_raw("kommune.14612000.wirtschaft", 1500);
    s_credit(r, 10, NULL);
    char text[64];
    ab_header_t *d = s_delivery(r, text, sizeof text);
    assert_string_equal(text, "bleibt heil");
    s_ack(r, d->sequence, NULL);
    amtsbote__v1__header__free_unpacked(d, NULL);
    assert_null(s_get(r, NULL, 0)); /* the damaged one is not delivered */
    zmq_close(r);
    assert_true(h_broker_log_has(&B, "event=store_record_damaged"));
    /* its sender learns that it failed */
    a = s_raw("bund.bmwk", 5000);
    s_credit(a, 10, NULL);
    int found = 0;
    for (int i = 0; i < 3 && !found; i++) {
        ab_header_t *rc = s_delivery(a, NULL, 0);
        assert_int_equal(rc->kind, K(RECEIPT));
        if (!memcmp(rc->correlation_id.data, bad, 16)) {
            assert_int_equal(rc->receipt, AMTSBOTE__V1__RECEIPT_STATUS__FAILED);
            assert_non_null(strstr(rc->error->text, "damaged"));
            found = 1;
        }
        s_ack(a, rc->sequence, NULL);
        amtsbote__v1__header__free_unpacked(rc, NULL);
    }
    assert_true(found);
    zmq_close(a);
}

/* --export with the broker stopped: everything in the open format; the damaged record of the
 * test before is listed in damaged.jsonl, not exported, and the exit code says so. */
static void
test_export_through_broker(void **state)
{
    (void)state;
    assert_int_equal(h_broker_stop(&B, SIGTERM, 10000), 0);
    char out[256], path[320];
    snprintf(out, sizeof out, "%s/export", B.dir);
    const char *argv[] = {H_BROKER_BIN, "--data", DATA, "--export", out, NULL};
    pid_t pid = h_spawn(argv, NULL, NULL);
    assert_true(pid > 0);
    assert_int_equal(h_wait_pid(pid, 30000), 1); /* exported, but a record was damaged */
    snprintf(path, sizeof path, "%s/damaged.jsonl", out);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[4096];
    int damaged = 0;
    while (fgets(line, sizeof line, f))
        damaged += strstr(line, "\"table\":\"mail\"") != NULL;
    fclose(f);
    assert_int_equal(damaged, 1);
    snprintf(path, sizeof path, "%s/mail.jsonl", out);
    f = fopen(path, "r");
    assert_non_null(f);
    int dead = 0, lines = 0;
    while (fgets(line, sizeof line, f)) {
        lines++;
        dead += strstr(line, "\"dead\":true") != NULL;
    }
    fclose(f);
    assert_true(lines > 0);
    assert_true(dead >= 1); /* the dead letter of the redelivery test */
    snprintf(path, sizeof path, "%s/manifest.json", out);
    assert_int_equal(access(path, R_OK), 0);
    /* a second export into the same directory is refused, naming it */
    pid = h_spawn(argv, NULL, NULL);
    assert_int_equal(h_wait_pid(pid, 30000), 2);
    assert_int_equal(s_start(), 0);
}

/* The broker's resident memory in KiB (VmRSS), or 0. */
static long
s_rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kib = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            kib = atol(line + 6);
    if (f)
        fclose(f);
    return kib;
}

/* A recipient that takes credit and never reads: the broker sends it no more than its credit,
 * and what waits for it is on disk, not in the broker's memory (the payload cache is bounded). */
static void
test_never_reading_recipient(void **state)
{
    (void)state;
    h_broker_t b3;
    const char *const extra[] = {
        "--cache-bytes", "1048576", "--store-cache-bytes", "2097152", "--heartbeat-timeout-ms",
        "60000",         NULL};
    assert_int_equal(h_broker_start(&b3, 0, extra), 0);
    h_broker_t saved = B;
    B = b3;
    void *r = s_raw("kommune.langsam", 3000);
    s_credit(r, 10, NULL); /* and never reads again */
    void *a = s_raw("bund.viel", 10000);
    static char payload[1024];
    memset(payload, 'x', sizeof payload - 1);
    long before = 0;
    enum { N = 30000, WINDOW = 200 };
    int sent = 0, answered = 0;
    while (answered < N) {
        while (sent < N && sent - answered < WINDOW) {
            uint8_t id[16];
            ab_uuid7(id);
            ab_header_t h = s_hdr(K(SEND));
            h.message_id.data = id;
            h.message_id.len = 16;
            h.recipient = "kommune.langsam";
            s_put(a, &h, payload, sizeof payload);
            sent++;
        }
        ab_header_t *ans = s_get(a, NULL, 0);
        assert_non_null(ans);
        assert_int_equal(ans->kind, K(REPLY));
        amtsbote__v1__header__free_unpacked(ans, NULL);
        if (++answered == 2000)
            before = s_rss_kib(b3.pid); /* warm: cache and store at their working size */
    }
    long after = s_rss_kib(b3.pid);
    long grew = after - before, volume = (long)(N - 2000) * (long)sizeof payload / 1024;
    print_message("broker RSS %ld -> %ld KiB (+%ld) for %ld KiB of payloads waiting\n", before,
                  after, grew, volume);
    /* the index of what waits (a few hundred bytes per message) grows; the payloads do not.
     * (Under AddressSanitizer freed memory stays in its quarantine: RSS says nothing there.) */
#if defined(__SANITIZE_ADDRESS__)
    print_message("AddressSanitizer build: the RSS bound is checked in the plain build only\n");
    (void)grew;
    (void)volume;
#else
    assert_true(grew < volume / 2);
#endif
    /* the recipient was sent its credit's worth, no more */
    uint64_t seen[16];
    int t = 300;
    zmq_setsockopt(r, ZMQ_RCVTIMEO, &t, sizeof t);
    size_t n = 0;
    ab_header_t *d;
    while ((d = s_get(r, NULL, 0)) != NULL) {
        if (n < 16)
            seen[n] = d->sequence;
        n++;
        amtsbote__v1__header__free_unpacked(d, NULL);
    }
    (void)seen;
    assert_int_equal(n, 10);
    zmq_close(r);
    zmq_close(a);
    B = saved;
    assert_int_equal(h_broker_stop(&b3, SIGTERM, 10000), 0);
}

/* Events a durable subscriber does not take within event_retention_ms are dropped for it. */
static void
test_event_retention(void **state)
{
    (void)state;
    h_broker_t b2;
    const char *const extra[] = {"--event-retention-ms",
                                 "1000",
                                 "--heartbeat-timeout-ms",
                                 "30000",
                                 "--dedup-window-ms",
                                 "1000",
                                 NULL};
    assert_int_equal(h_broker_start(&b2, 0, extra), 0);
    h_broker_t saved = B;
    B = b2; /* s_raw() connects to B */
    void *sub = s_raw("bund.destatis", 3000);
    s_subscribe(sub, "statistik.>", "kurz", 10);
    s_credit(sub, 0, "kurz"); /* away, with the subscription kept */
    void *pub = s_raw("kommune.09162000.meldeamt", 3000);
    s_publish(pub, "statistik.geburten", "alt");
    usleep(2600 * 1000); /* older than 1 s at the next retention run (every second) */
    s_publish(pub, "statistik.geburten", "neu");
    s_subscribe(sub, "statistik.>", "kurz", 10);
    char text[64];
    ab_header_t *e = s_delivery(sub, text, sizeof text);
    assert_string_equal(text, "neu");
    s_ack(sub, e->sequence, "kurz");
    amtsbote__v1__header__free_unpacked(e, NULL);
    int t = 300;
    zmq_setsockopt(sub, ZMQ_RCVTIMEO, &t, sizeof t);
    assert_null(s_get(sub, NULL, 0));
    assert_true(h_broker_log_has(&B, "event=events_dropped"));

    /* the dedup window (1 s here) ends: the same message id is a new message again */
    uint8_t id[16] = {0};
    s_send_msg(pub, "bund.destatis", "einmal", id, 0);
    s_accepted(pub, id);
    s_credit(sub, 10, NULL);
    ab_header_t *d = s_delivery(sub, text, sizeof text);
    uint64_t first = d->sequence;
    s_ack(sub, d->sequence, NULL);
    amtsbote__v1__header__free_unpacked(d, NULL);
    usleep(300 * 1000);
    s_send_msg(pub, "bund.destatis", "einmal", id, 0); /* within the window: the same */
    s_accepted(pub, id);
    assert_null(s_get(sub, NULL, 0));
    usleep(2000 * 1000);
    s_send_msg(pub, "bund.destatis", "einmal", id, 0); /* after it: stored again */
    s_accepted(pub, id);
    t = 3000;
    zmq_setsockopt(sub, ZMQ_RCVTIMEO, &t, sizeof t);
    d = s_delivery(sub, text, sizeof text);
    assert_true(d->sequence > first);
    assert_string_equal(text, "einmal");
    s_ack(sub, d->sequence, NULL);
    amtsbote__v1__header__free_unpacked(d, NULL);
    zmq_close(sub);
    zmq_close(pub);
    B = saved;
    assert_int_equal(h_broker_stop(&b2, SIGTERM, 10000), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_offline_recipient_and_offline_sender),
        cmocka_unit_test(test_dedup_and_fifo),
        cmocka_unit_test(test_quota),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_redelivery_and_dead_letter),
        cmocka_unit_test(test_credit_bounds_deliveries),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_events_ephemeral_and_durable),
        cmocka_unit_test(test_restart_and_damaged_record),
        cmocka_unit_test(test_export_through_broker),
        cmocka_unit_test(test_event_retention),
        cmocka_unit_test(test_never_reading_recipient),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
