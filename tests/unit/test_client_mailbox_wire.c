/*
 * test_client_mailbox_wire.c - libamtsbote's mailbox and event behaviour at the wire, against a
 * fake broker (a ROUTER on a thread of this process) that sends what a real broker only sends
 * after a crash or a stall: a redelivery of an acknowledged message or event, an unasked HELLO,
 * the same ephemeral event once per matching pattern; and answers SEND with REPLY,
 * MAILBOX_FULL or nothing.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include <cmocka.h>

#include "amtsbote.h"
#include "wire.h"

/* ---- the fake broker ---------------------------------------------------------------------- */

enum { SEND_REPLY = 0, SEND_FULL = 1, SEND_SILENT = 2 };

typedef struct {
    int kind;
    uint64_t sequence;
    uint32_t credit;
    char subscription[70];
    char topic[70];
} seen_t;

typedef struct {
    void *ctx;
    pthread_t thread;
    pthread_mutex_t mu;
    char endpoint[128];
    volatile int stop;
    volatile int send_mode;
    seen_t seen[4096];
    size_t nseen;
    uint8_t peer[256];
    size_t peer_len;
} fake_t;

static fake_t s_fake;

/* Sends `hdr` (and `payload` when not NULL) from the fake to the client. */
static void
s_to_client(void *router, const fake_t *f, ab_header_t *hdr, const char *payload)
{
    uint8_t buf[AB_MAX_HEADER_BYTES];
    hdr->version = AB_PROTOCOL_VERSION;
    int n = ab_wire_encode(hdr, buf, sizeof buf);
    assert_true(n > 0);
    zmq_send(router, f->peer, f->peer_len, ZMQ_SNDMORE);
    zmq_send(router, buf, (size_t)n, payload ? ZMQ_SNDMORE : 0);
    if (payload)
        zmq_send(router, payload, strlen(payload), 0);
}

static void
s_answer(void *router, const fake_t *f, const ab_header_t *in, int kind, int code)
{
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    Amtsbote__V1__Error e = AMTSBOTE__V1__ERROR__INIT;
    h.kind = (Amtsbote__V1__Kind)kind;
    h.correlation_id = in->correlation_id;
    if (kind == AMTSBOTE__V1__KIND__KIND_ERROR) {
        e.code = (Amtsbote__V1__ErrorCode)code;
        e.text = "the mailbox of kommune.x.y holds 100000 messages (its quota)";
        h.error = &e;
    }
    s_to_client(router, f, &h, NULL);
}

static void *
s_fake_run(void *arg)
{
    fake_t *f = arg;
    void *router = zmq_socket(f->ctx, ZMQ_ROUTER);
    void *ctl = zmq_socket(f->ctx, ZMQ_PULL);
    int linger = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_bind(ctl, "inproc://fake-ctl");
    zmq_bind(router, "tcp://127.0.0.1:*");
    size_t len = sizeof f->endpoint;
    pthread_mutex_lock(&f->mu);
    zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, f->endpoint, &len);
    pthread_mutex_unlock(&f->mu);
    ab_wire_decoder_t *dec = ab_wire_decoder_new();
    while (!f->stop) {
        zmq_pollitem_t items[2] = {{router, 0, ZMQ_POLLIN, 0}, {ctl, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, 20) <= 0)
            continue;
        if (items[1].revents & ZMQ_POLLIN) {
            /* from the test: an encoded header and maybe a payload, for the client */
            zmq_msg_t m;
            zmq_msg_init(&m);
            zmq_msg_recv(&m, ctl, 0);
            int more = zmq_msg_more(&m);
            zmq_send(router, f->peer, f->peer_len, ZMQ_SNDMORE);
            zmq_msg_send(&m, router, more ? ZMQ_SNDMORE : 0);
            if (more) {
                zmq_msg_init(&m);
                zmq_msg_recv(&m, ctl, 0);
                zmq_msg_send(&m, router, 0);
            }
        }
        if (!(items[0].revents & ZMQ_POLLIN))
            continue;
        zmq_msg_t id, head, body;
        zmq_msg_init(&id);
        zmq_msg_init(&head);
        zmq_msg_init(&body);
        zmq_msg_recv(&id, router, 0);
        zmq_msg_recv(&head, router, 0);
        if (zmq_msg_more(&head))
            zmq_msg_recv(&body, router, 0);
        f->peer_len = zmq_msg_size(&id);
        memcpy(f->peer, zmq_msg_data(&id), f->peer_len);
        ab_header_t *h = NULL;
        char why[AB_WHY_LEN];
        if (ab_wire_decode(dec, zmq_msg_data(&head), zmq_msg_size(&head), &h, why) == 0) {
            pthread_mutex_lock(&f->mu);
            if (f->nseen < sizeof f->seen / sizeof f->seen[0]) {
                seen_t *s = &f->seen[f->nseen++];
                s->kind = (int)h->kind;
                s->sequence = h->sequence;
                s->credit = h->credit;
                snprintf(s->subscription, sizeof s->subscription, "%s", h->subscription);
                snprintf(s->topic, sizeof s->topic, "%s", h->topic);
            }
            pthread_mutex_unlock(&f->mu);
            switch (h->kind) {
            case AMTSBOTE__V1__KIND__KIND_HELLO: {
                ab_header_t r = AMTSBOTE__V1__HEADER__INIT;
                r.kind = AMTSBOTE__V1__KIND__KIND_HELLO;
                r.correlation_id = h->message_id;
                r.sender = "bund.bmi";
                r.heartbeat_ms = 100;
                r.max_payload = 1 << 20;
                s_to_client(router, f, &r, NULL);
                break;
            }
            case AMTSBOTE__V1__KIND__KIND_CREDIT:
            case AMTSBOTE__V1__KIND__KIND_SUBSCRIBE:
            case AMTSBOTE__V1__KIND__KIND_WITHDRAW:
            case AMTSBOTE__V1__KIND__KIND_PUBLISH:
                s_answer(router, f, h, AMTSBOTE__V1__KIND__KIND_REPLY, 0);
                break;
            case AMTSBOTE__V1__KIND__KIND_SEND:
                if (f->send_mode == SEND_REPLY)
                    s_answer(router, f, h, AMTSBOTE__V1__KIND__KIND_REPLY, 0);
                else if (f->send_mode == SEND_FULL)
                    s_answer(router, f, h, AMTSBOTE__V1__KIND__KIND_ERROR,
                             AMTSBOTE__V1__ERROR_CODE__MAILBOX_FULL);
                break;
            default:
                break;
            }
        }
        zmq_msg_close(&id);
        zmq_msg_close(&head);
        zmq_msg_close(&body);
    }
    ab_wire_decoder_destroy(&dec);
    zmq_close(router);
    zmq_close(ctl);
    return NULL;
}

static void *s_push; /* the test's end of inproc://fake-ctl */

/* Has the fake send this to the client. */
static void
s_deliver(int kind, uint64_t seq, const char *sender, const uint8_t id[16], const char *sub,
          const char *topic, const char *payload)
{
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = AB_PROTOCOL_VERSION;
    h.kind = (Amtsbote__V1__Kind)kind;
    h.sequence = seq;
    h.attempt = 1;
    h.timestamp_ms = 1700000000123;
    h.sender = (char *)sender;
    h.recipient = "bund.bmi";
    h.subscription = (char *)(sub ? sub : "");
    h.topic = (char *)(topic ? topic : "");
    if (id) {
        h.message_id.data = (uint8_t *)id;
        h.message_id.len = 16;
    }
    uint8_t buf[AB_MAX_HEADER_BYTES];
    int n = ab_wire_encode(&h, buf, sizeof buf);
    zmq_send(s_push, buf, (size_t)n, payload ? ZMQ_SNDMORE : 0);
    if (payload)
        zmq_send(s_push, payload, strlen(payload), 0);
}

static void
s_send_raw(ab_header_t *h)
{
    uint8_t buf[AB_MAX_HEADER_BYTES];
    h->version = AB_PROTOCOL_VERSION;
    int n = ab_wire_encode(h, buf, sizeof buf);
    zmq_send(s_push, buf, (size_t)n, 0);
}

/* How many messages of `kind` the fake has seen (with `sequence` and `sub` when given). */
static size_t
s_seen(int kind, uint64_t sequence, const char *sub, uint32_t *credit)
{
    size_t n = 0;
    pthread_mutex_lock(&s_fake.mu);
    for (size_t i = 0; i < s_fake.nseen; i++) {
        const seen_t *s = &s_fake.seen[i];
        if (s->kind != kind || (sequence && s->sequence != sequence) ||
            (sub && strcmp(s->subscription, sub) != 0))
            continue;
        n++;
        if (credit)
            *credit = s->credit;
    }
    pthread_mutex_unlock(&s_fake.mu);
    return n;
}

/* Drives the client until `kind` was seen `want` times (or 3 s). */
static size_t
s_run_until(ab_client_t *c, int kind, uint64_t seq, const char *sub, size_t want)
{
    for (int i = 0; i < 150; i++) {
        if (s_seen(kind, seq, sub, NULL) >= want)
            break;
        ab_client_run(c, 20);
    }
    return s_seen(kind, seq, sub, NULL);
}

/* ---- the client's handler ------------------------------------------------------------------ */

typedef struct {
    int calls;
    int kind, receipt;
    char id[33], about[130], sender[64], sub[64], topic[64], error[128];
    char payload[64];
    uint64_t seq, ts;
    int keep;           /* 1: free without acknowledging; 2: keep in `held` */
    ab_message_t *held; /* owned by the test */
} got_t;

static void
s_on_msg(ab_client_t *client, ab_message_t *m, void *arg)
{
    (void)client;
    got_t *g = arg;
    g->calls++;
    g->kind = ab_message_kind(m);
    g->receipt = ab_message_receipt(m);
    g->seq = ab_message_sequence(m);
    g->ts = ab_message_timestamp_ms(m);
    snprintf(g->id, sizeof g->id, "%s", ab_message_id(m));
    snprintf(g->about, sizeof g->about, "%s", ab_message_about(m));
    snprintf(g->sender, sizeof g->sender, "%s", ab_message_sender(m));
    snprintf(g->sub, sizeof g->sub, "%s", ab_message_subscription(m));
    snprintf(g->topic, sizeof g->topic, "%s", ab_message_topic(m));
    snprintf(g->error, sizeof g->error, "%s", ab_message_error(m));
    size_t len = 0;
    const char *p = ab_message_payload(m, &len);
    snprintf(g->payload, sizeof g->payload, "%.*s", (int)len, p);
    if (g->keep == 2 && !g->held)
        g->held = m;
    else if (g->keep)
        ab_message_free(&m);
    else
        assert_int_equal(ab_ack(&m), 0);
    if (g->keep != 2)
        assert_null(m);
}

static void
s_wait_calls(ab_client_t *c, const got_t *g, int want)
{
    for (int i = 0; i < 150 && g->calls < want; i++)
        ab_client_run(c, 20);
}

/* ---- set-up ------------------------------------------------------------------------------- */

static int
s_setup(void **state)
{
    memset(&s_fake, 0, sizeof s_fake);
    pthread_mutex_init(&s_fake.mu, NULL);
    s_fake.ctx = zmq_ctx_new();
    pthread_create(&s_fake.thread, NULL, s_fake_run, &s_fake);
    for (int i = 0; i < 200; i++) {
        pthread_mutex_lock(&s_fake.mu);
        int ready = s_fake.endpoint[0] != '\0';
        pthread_mutex_unlock(&s_fake.mu);
        if (ready)
            break;
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    s_push = zmq_socket(s_fake.ctx, ZMQ_PUSH);
    assert_int_equal(zmq_connect(s_push, "inproc://fake-ctl"), 0);
    ab_client_t *c = ab_client_new();
    assert_int_equal(ab_client_connect(c, s_fake.endpoint, 2000), 0);
    *state = c;
    return 0;
}

static int
s_teardown(void **state)
{
    ab_client_t *c = *state;
    ab_client_destroy(&c);
    s_fake.stop = 1;
    pthread_join(s_fake.thread, NULL);
    zmq_close(s_push);
    zmq_ctx_term(s_fake.ctx);
    pthread_mutex_destroy(&s_fake.mu);
    return 0;
}

/* ---- the cases ---------------------------------------------------------------------------- */

static void
test_inbox_drops_a_redelivery_of_an_acknowledged_message(void **state)
{
    ab_client_t *c = *state;
    got_t g;
    memset(&g, 0, sizeof g);
    assert_int_equal(ab_inbox(c, 5, s_on_msg, &g), 0);
    uint32_t credit = 0;
    assert_int_equal(s_seen(AMTSBOTE__V1__KIND__KIND_CREDIT, 0, "", &credit), 1);
    assert_int_equal(credit, 5);
    uint8_t a[16];
    memset(a, 0xa1, sizeof a);

    s_deliver(AMTSBOTE__V1__KIND__KIND_DELIVER, 1, "bund.bmf", a, NULL, NULL, "eins");
    s_wait_calls(c, &g, 1);
    assert_int_equal(g.calls, 1);
    assert_int_equal(g.kind, AB_MSG_MESSAGE);
    assert_string_equal(g.payload, "eins");
    assert_string_equal(g.sender, "bund.bmf");
    assert_string_equal(g.id, "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1");
    assert_int_equal(g.ts, 1700000000123);
    assert_int_equal(s_run_until(c, AMTSBOTE__V1__KIND__KIND_ACK, 1, NULL, 1), 1);

    /* the same (sender, id) again, e.g. after a broker crash between ACK and commit */
    s_deliver(AMTSBOTE__V1__KIND__KIND_DELIVER, 2, "bund.bmf", a, NULL, NULL, "eins");
    assert_int_equal(s_run_until(c, AMTSBOTE__V1__KIND__KIND_ACK, 2, NULL, 1), 1);
    assert_int_equal(g.calls, 1);
    assert_int_equal(ab_client_duplicates_dropped(c), 1);

    /* the same id from another sender is another message */
    s_deliver(AMTSBOTE__V1__KIND__KIND_DELIVER, 3, "kommune.x.y", a, NULL, NULL, "drei");
    s_wait_calls(c, &g, 2);
    assert_int_equal(g.calls, 2);
    assert_string_equal(g.payload, "drei");

    /* a message freed without an ACK is handed over again when it comes again */
    uint8_t b[16];
    memset(b, 0xb2, sizeof b);
    g.keep = 1;
    s_deliver(AMTSBOTE__V1__KIND__KIND_DELIVER, 4, "bund.bmf", b, NULL, NULL, "vier");
    s_wait_calls(c, &g, 3);
    s_deliver(AMTSBOTE__V1__KIND__KIND_DELIVER, 5, "bund.bmf", b, NULL, NULL, "vier");
    s_wait_calls(c, &g, 4);
    assert_int_equal(g.calls, 4);
    assert_int_equal(s_seen(AMTSBOTE__V1__KIND__KIND_ACK, 4, NULL, NULL), 0);
    g.keep = 0;

    /* a receipt */
    ab_header_t r = AMTSBOTE__V1__HEADER__INIT;
    Amtsbote__V1__Error e = AMTSBOTE__V1__ERROR__INIT;
    uint8_t rid[16];
    memset(rid, 0xc3, sizeof rid);
    e.text = "delivered the maximum number of times without an acknowledgement";
    r.kind = AMTSBOTE__V1__KIND__KIND_RECEIPT;
    r.message_id.data = rid;
    r.message_id.len = 16;
    r.correlation_id.data = a;
    r.correlation_id.len = 16;
    r.recipient = "kommune.x.y";
    r.receipt = AMTSBOTE__V1__RECEIPT_STATUS__FAILED;
    r.sequence = 6;
    r.error = &e;
    s_send_raw(&r);
    s_wait_calls(c, &g, 5);
    assert_int_equal(g.kind, AB_MSG_RECEIPT);
    assert_int_equal(g.receipt, AB_RECEIPT_FAILED);
    assert_string_equal(g.about, "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1");
    assert_string_equal(g.id, "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3");
    assert_non_null(strstr(g.error, "maximum number"));
    assert_int_equal(s_run_until(c, AMTSBOTE__V1__KIND__KIND_ACK, 6, NULL, 1), 1);
}

static void
test_attached_client_heartbeats_and_attaches_again(void **state)
{
    ab_client_t *c = *state;
    got_t g;
    memset(&g, 0, sizeof g);
    /* no offers, no inbox: no heartbeats */
    ab_client_run(c, 350);
    assert_int_equal(s_seen(AMTSBOTE__V1__KIND__KIND_HEARTBEAT, 0, NULL, NULL), 0);
    assert_int_equal(ab_inbox(c, 7, s_on_msg, &g), 0);
    assert_int_equal(ab_subscribe(c, "meldewesen.umzug.>", "statistik", 3, s_on_msg, &g), 0);
    uint32_t credit = 0;
    assert_int_equal(s_seen(AMTSBOTE__V1__KIND__KIND_SUBSCRIBE, 0, "statistik", &credit), 1);
    assert_int_equal(credit, 3);
    ab_client_run(c, 450);
    assert_true(s_seen(AMTSBOTE__V1__KIND__KIND_HEARTBEAT, 0, NULL, NULL) >= 3);
    /* the broker forgot this connection: an unasked HELLO */
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.kind = AMTSBOTE__V1__KIND__KIND_HELLO;
    s_send_raw(&h);
    assert_int_equal(s_run_until(c, AMTSBOTE__V1__KIND__KIND_CREDIT, 0, "", 2), 2);
    assert_int_equal(s_seen(AMTSBOTE__V1__KIND__KIND_CREDIT, 0, "", &credit), 2);
    assert_int_equal(credit, 7);
    assert_int_equal(s_run_until(c, AMTSBOTE__V1__KIND__KIND_SUBSCRIBE, 0, "statistik", 2), 2);
    /* detached: heartbeats stop once nothing is left */
    assert_int_equal(ab_inbox(c, 0, NULL, NULL), 0);
    assert_int_equal(ab_unsubscribe(c, "meldewesen.umzug.>", "statistik"), 0);
    assert_int_equal(s_seen(AMTSBOTE__V1__KIND__KIND_WITHDRAW, 0, "statistik", NULL), 1);
    size_t beats = s_seen(AMTSBOTE__V1__KIND__KIND_HEARTBEAT, 0, NULL, NULL);
    ab_client_run(c, 350);
    assert_int_equal(s_seen(AMTSBOTE__V1__KIND__KIND_HEARTBEAT, 0, NULL, NULL), beats);
}

static void
test_events_durable_and_ephemeral(void **state)
{
    ab_client_t *c = *state;
    got_t g, e1, e2;
    memset(&g, 0, sizeof g);
    memset(&e1, 0, sizeof e1);
    memset(&e2, 0, sizeof e2);
    assert_int_equal(ab_subscribe(c, "a.>", "statistik", 0, s_on_msg, &g), 0);
    uint8_t id[16];
    memset(id, 0xe1, sizeof id);
    s_deliver(AMTSBOTE__V1__KIND__KIND_EVENT, 10, "kommune.x.y", id, "statistik", "a.b", "ev");
    s_wait_calls(c, &g, 1);
    assert_int_equal(g.kind, AB_MSG_EVENT);
    assert_string_equal(g.sub, "statistik");
    assert_string_equal(g.topic, "a.b");
    assert_int_equal(s_run_until(c, AMTSBOTE__V1__KIND__KIND_ACK, 10, "statistik", 1), 1);
    /* the same sequence of the subscription again: acknowledged again, not handed over */
    s_deliver(AMTSBOTE__V1__KIND__KIND_EVENT, 10, "kommune.x.y", id, "statistik", "a.b", "ev");
    assert_int_equal(s_run_until(c, AMTSBOTE__V1__KIND__KIND_ACK, 10, "statistik", 2), 2);
    assert_int_equal(g.calls, 1);
    assert_int_equal(ab_client_duplicates_dropped(c), 1);

    /* two ephemeral patterns that both match: the broker sends the event twice */
    assert_int_equal(ab_subscribe(c, "x.*", NULL, 0, s_on_msg, &e1), 0);
    assert_int_equal(ab_subscribe(c, "*.y", NULL, 0, s_on_msg, &e2), 0);
    assert_int_equal(ab_subscribe(c, "x.*", NULL, 0, s_on_msg, &e1), AB_ESTATE);
    memset(id, 0xe2, sizeof id);
    s_deliver(AMTSBOTE__V1__KIND__KIND_EVENT, 0, "kommune.x.y", id, NULL, "x.y", "eph");
    s_deliver(AMTSBOTE__V1__KIND__KIND_EVENT, 0, "kommune.x.y", id, NULL, "x.y", "eph");
    memset(id, 0xe3, sizeof id);
    s_deliver(AMTSBOTE__V1__KIND__KIND_EVENT, 0, "kommune.x.y", id, NULL, "z.y", "nur zwei");
    s_wait_calls(c, &e2, 1);
    ab_client_run(c, 100);
    assert_int_equal(e1.calls, 1); /* subscribed first */
    assert_string_equal(e1.payload, "eph");
    assert_int_equal(e2.calls, 1);
    assert_string_equal(e2.payload, "nur zwei");
    assert_int_equal(s_seen(AMTSBOTE__V1__KIND__KIND_ACK, 0, "", NULL), 0); /* none for those */
    /* a topic nobody here subscribed to is dropped */
    s_deliver(AMTSBOTE__V1__KIND__KIND_EVENT, 0, "kommune.x.y", id, NULL, "q.r", "fremd");
    ab_client_run(c, 100);
    assert_int_equal(e1.calls + e2.calls + g.calls, 3);
    assert_int_equal(ab_unsubscribe(c, "x.*", NULL), 0);
    assert_int_equal(ab_unsubscribe(c, "x.*", NULL), AB_EINVAL);
    assert_int_equal(s_seen(AMTSBOTE__V1__KIND__KIND_WITHDRAW, 0, "", NULL), 1);
}

static int s_cb_status = 1;
static char s_cb_id[33];

static void
s_on_sent(ab_client_t *client, int status, const char *id, const char *errtext, void *arg)
{
    (void)client;
    (void)errtext;
    (void)arg;
    s_cb_status = status;
    snprintf(s_cb_id, sizeof s_cb_id, "%s", id);
}

static void
test_send_answers(void **state)
{
    ab_client_t *c = *state;
    char id[33];
    s_fake.send_mode = SEND_REPLY;
    assert_int_equal(ab_send(c, "kommune.x.y", "hallo", 5, NULL, id, 2000), 0);
    assert_int_equal(strlen(id), 32);
    assert_int_equal(s_seen(AMTSBOTE__V1__KIND__KIND_SEND, 0, NULL, NULL), 1);

    s_fake.send_mode = SEND_FULL;
    assert_int_equal(ab_send(c, "kommune.x.y", "hallo", 5, NULL, id, 2000), AB_EMAILBOX_FULL);
    assert_non_null(strstr(ab_client_last_error(c), "quota"));

    s_fake.send_mode = SEND_SILENT;
    uint8_t again[16];
    memset(again, 0x42, sizeof again);
    ab_send_options_t o = {.message_id = again, .ttl_ms = 60000};
    assert_int_equal(ab_send(c, "kommune.x.y", "hallo", 5, &o, id, 300), AB_ETIMEDOUT);
    assert_string_equal(id, "42424242424242424242424242424242");
    assert_non_null(strstr(ab_client_last_error(c), "same message id"));

    s_fake.send_mode = SEND_REPLY;
    assert_int_equal(ab_send_async(c, "kommune.x.y", "x", 1, &o, s_on_sent, NULL), 0);
    assert_int_equal(ab_client_in_flight(c), 1);
    for (int i = 0; i < 100 && s_cb_status == 1; i++)
        ab_client_run(c, 20);
    assert_int_equal(s_cb_status, 0);
    assert_string_equal(s_cb_id, "42424242424242424242424242424242");
    assert_int_equal(ab_client_in_flight(c), 0);

    assert_int_equal(ab_publish(c, "meldewesen.umzug.09162000", "e", 1, NULL, id, 2000), 0);
    assert_int_equal(strlen(id), 32);

    /* a PUBLISH that does not wait: the callback gets the broker's answer */
    int before = s_seen(AMTSBOTE__V1__KIND__KIND_PUBLISH, 0, NULL, NULL);
    s_cb_status = 1;
    s_cb_id[0] = '\0';
    assert_int_equal(
        ab_publish_async(c, "meldewesen.umzug.09162000", "ev", 2, NULL, s_on_sent, NULL), 0);
    assert_int_equal(ab_client_in_flight(c), 1);
    for (int i = 0; i < 100 && s_cb_status == 1; i++)
        ab_client_run(c, 20);
    assert_int_equal(s_cb_status, 0);
    assert_int_equal(strlen(s_cb_id), 32);
    assert_int_equal(ab_client_in_flight(c), 0);
    assert_int_equal(s_seen(AMTSBOTE__V1__KIND__KIND_PUBLISH, 0, NULL, NULL), before + 1);
}

static void
test_close_gives_back(void **state)
{
    ab_client_t *c = *state;
    got_t g;
    memset(&g, 0, sizeof g);
    g.keep = 1;
    assert_int_equal(ab_inbox(c, 2, s_on_msg, &g), 0);
    assert_int_equal(ab_subscribe(c, "a.>", "statistik", 0, s_on_msg, &g), 0);
    assert_int_equal(ab_subscribe(c, "b.*", NULL, 0, s_on_msg, &g), 0);
    /* a message the application still holds when the client goes */
    uint8_t id[16];
    memset(id, 0x77, sizeof id);
    g.keep = 2;
    s_deliver(AMTSBOTE__V1__KIND__KIND_DELIVER, 20, "bund.bmf", id, NULL, NULL, "gehalten");
    s_wait_calls(c, &g, 1);
    assert_non_null(g.held);
    ab_client_destroy(&c);
    *state = NULL;
    /* still readable; its ACK cannot go anywhere */
    size_t len = 0;
    assert_memory_equal(ab_message_payload(g.held, &len), "gehalten", 8);
    assert_string_equal(ab_message_sender(g.held), "bund.bmf");
    assert_int_equal(ab_ack(&g.held), AB_ESTATE);
    assert_null(g.held);
    for (int i = 0; i < 100; i++) {
        if (s_seen(AMTSBOTE__V1__KIND__KIND_WITHDRAW, 0, "", NULL) >= 1)
            break;
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    uint32_t credit = 99;
    assert_int_equal(s_seen(AMTSBOTE__V1__KIND__KIND_CREDIT, 0, "", &credit), 2);
    assert_int_equal(credit, 0);
    credit = 99;
    assert_int_equal(s_seen(AMTSBOTE__V1__KIND__KIND_CREDIT, 0, "statistik", &credit), 1);
    assert_int_equal(credit, 0);
    assert_int_equal(s_seen(AMTSBOTE__V1__KIND__KIND_WITHDRAW, 0, "", NULL), 1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_inbox_drops_a_redelivery_of_an_acknowledged_message,
                                        s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_attached_client_heartbeats_and_attaches_again, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_events_durable_and_ephemeral, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_send_answers, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_close_gives_back, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
