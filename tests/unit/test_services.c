/*
 * Unit tests for broker/services.c: balancing, deadlines, heartbeats and errors, driven with a
 * fake clock and a fake sender that records what the broker would send.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "services.h"

#define MAX_SENT 4096

typedef struct {
    brk_peer_t to;
    int kind;
    uint8_t corr[64];
    size_t corr_len;
    char sender[64];
    char service[256];
    int err_code;
    char err_text[1024];
    uint32_t deadline_ms;
    int has_payload;
} sent_t;

typedef struct {
    sent_t sent[MAX_SENT];
    size_t n;
    brk_peer_t gone; /* sends to this peer fail with AB_EPROVIDER_GONE */
    int fail_gone;
} fake_t;

static fake_t F;

static int
fake_send(void *ctx, const brk_peer_t *to, const ab_header_t *hdr, void *payload)
{
    fake_t *f = ctx;
    if (f->fail_gone && to->len == f->gone.len && !memcmp(to->id, f->gone.id, to->len))
        return AB_EPROVIDER_GONE;
    assert_true(f->n < MAX_SENT);
    sent_t *s = &f->sent[f->n++];
    memset(s, 0, sizeof *s);
    s->to = *to;
    s->kind = hdr->kind;
    s->corr_len = hdr->correlation_id.len;
    if (hdr->correlation_id.len)
        memcpy(s->corr, hdr->correlation_id.data, hdr->correlation_id.len);
    snprintf(s->sender, sizeof s->sender, "%s", hdr->sender ? hdr->sender : "");
    snprintf(s->service, sizeof s->service, "%s", hdr->service ? hdr->service : "");
    if (hdr->error) {
        s->err_code = hdr->error->code;
        snprintf(s->err_text, sizeof s->err_text, "%s", hdr->error->text);
    }
    s->deadline_ms = hdr->deadline_ms;
    s->has_payload = payload != NULL;
    return 0;
}

static uint8_t last_bytes[65536];
static size_t last_bytes_len;

static int
fake_send_bytes(void *ctx, const brk_peer_t *to, const ab_header_t *hdr, const void *data,
                size_t len)
{
    assert_true(len <= sizeof last_bytes);
    memcpy(last_bytes, data, len);
    last_bytes_len = len;
    int marker = 1;
    return fake_send(ctx, to, hdr, &marker);
}

static brk_config_t C;
static brk_services_io_t IO = {fake_send, fake_send_bytes, &F, NULL};

static brk_peer_t
peer(const char *name)
{
    brk_peer_t p;
    p.len = (uint8_t)strlen(name);
    memcpy(p.id, name, p.len);
    return p;
}

static ab_header_t
hdr(int kind, const char *service, const char *corr)
{
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = 1;
    h.kind = kind;
    h.service = (char *)service;
    h.correlation_id.data = (uint8_t *)corr;
    h.correlation_id.len = corr ? strlen(corr) : 0;
    return h;
}

static int
setup(void **state)
{
    memset(&F, 0, sizeof F);
    memset(&C, 0, sizeof C);
    C.default_deadline_ms = 30000;
    C.max_deadline_ms = 300000;
    C.heartbeat_ms = 1000;
    C.heartbeat_timeout_ms = 3000;
    C.max_payload = 1 << 20;
    C.max_calls_in_flight = 1000;
    *state = brk_services_new(&C, &IO);
    return *state ? 0 : -1;
}

static int
teardown(void **state)
{
    brk_services_t *s = *state;
    brk_services_destroy(&s);
    assert_null(s);
    return 0;
}

static const sent_t *
last(void)
{
    assert_true(F.n > 0);
    return &F.sent[F.n - 1];
}

static void
offer(brk_services_t *s, const char *who, const char *service, uint64_t now)
{
    brk_peer_t p = peer(who);
    ab_header_t h = hdr(AMTSBOTE__V1__KIND__KIND_OFFER, service, "offer");
    brk_services_handle(s, &p, who, &h, NULL, now);
    assert_int_equal(last()->kind, AMTSBOTE__V1__KIND__KIND_REPLY);
}

static void
call(brk_services_t *s, const char *who, const char *service, const char *corr, uint32_t dl,
     uint64_t now)
{
    brk_peer_t p = peer(who);
    ab_header_t h = hdr(AMTSBOTE__V1__KIND__KIND_CALL, service, corr);
    h.deadline_ms = dl;
    int payload = 42;
    brk_services_handle(s, &p, who, &h, &payload, now);
}

/* The broker's token for the call forwarded last. */
static void
answer(brk_services_t *s, const char *who, const sent_t *fwd, int kind, uint64_t now)
{
    brk_peer_t p = peer(who);
    ab_header_t h = hdr(kind, NULL, NULL);
    h.correlation_id.data = (uint8_t *)fwd->corr;
    h.correlation_id.len = fwd->corr_len;
    Amtsbote__V1__Error e = AMTSBOTE__V1__ERROR__INIT;
    if (kind == AMTSBOTE__V1__KIND__KIND_ERROR) {
        e.code = AMTSBOTE__V1__ERROR_CODE__DEADLINE_EXCEEDED; /* a provider may not claim this */
        e.text = "Aktenzeichen unbekannt";
        h.error = &e;
    }
    int payload = 7;
    brk_services_handle(s, &p, who, &h, kind == AMTSBOTE__V1__KIND__KIND_REPLY ? &payload : NULL,
                        now);
}

static void
test_round_trip(void **state)
{
    brk_services_t *s = *state;
    offer(s, "kommune.09162000.meldeamt", "meldewesen.v1.Melderegister", 0);
    call(s, "bund.bmi", "meldewesen.v1.Melderegister/Meldebescheinigung", "c1", 0, 10);
    const sent_t fwd = *last();
    assert_int_equal(fwd.kind, AMTSBOTE__V1__KIND__KIND_CALL);
    assert_memory_equal(fwd.to.id, "kommune.09162000.meldeamt", fwd.to.len);
    assert_string_equal(fwd.sender, "bund.bmi"); /* the broker stamps the caller */
    assert_int_equal(fwd.corr_len, 8);           /* the broker's own token, not "c1" */
    assert_int_equal(fwd.deadline_ms, 30000);
    assert_true(fwd.has_payload);
    assert_int_equal(brk_services_in_flight(s), 1);

    answer(s, "kommune.09162000.meldeamt", &fwd, AMTSBOTE__V1__KIND__KIND_REPLY, 20);
    const sent_t *r = last();
    assert_int_equal(r->kind, AMTSBOTE__V1__KIND__KIND_REPLY);
    assert_memory_equal(r->to.id, "bund.bmi", 8);
    assert_int_equal(r->corr_len, 2);
    assert_memory_equal(r->corr, "c1", 2);
    assert_string_equal(r->sender, "kommune.09162000.meldeamt");
    assert_true(r->has_payload);
    assert_int_equal(brk_services_in_flight(s), 0);
}

static void
test_provider_error_is_provider_error(void **state)
{
    brk_services_t *s = *state;
    offer(s, "kommune.a", "x.v1.S/M", 0);
    call(s, "bund.bmi", "x.v1.S/M", "c1", 0, 0);
    const sent_t fwd = *last();
    answer(s, "kommune.a", &fwd, AMTSBOTE__V1__KIND__KIND_ERROR, 1);
    assert_int_equal(last()->kind, AMTSBOTE__V1__KIND__KIND_ERROR);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__PROVIDER_ERROR);
    assert_string_equal(last()->err_text, "Aktenzeichen unbekannt");
    assert_false(last()->has_payload);
}

static void
test_balances_fewest_in_flight(void **state)
{
    brk_services_t *s = *state;
    offer(s, "kommune.p1", "x.v1.S", 0);
    offer(s, "kommune.p2", "x.v1.S", 0);
    offer(s, "kommune.p3", "x.v1.S", 0);
    int count[3] = {0, 0, 0};
    for (int i = 0; i < 9; i++) {
        char corr[8];
        snprintf(corr, sizeof corr, "c%d", i);
        call(s, "bund.bmi", "x.v1.S/M", corr, 0, 0);
        count[last()->to.id[last()->to.len - 1] - '1']++;
    }
    assert_int_equal(count[0], 3);
    assert_int_equal(count[1], 3);
    assert_int_equal(count[2], 3);
}

static void
test_whole_service_and_method_offers_share(void **state)
{
    brk_services_t *s = *state;
    offer(s, "kommune.whole", "x.v1.S", 0);
    offer(s, "kommune.method", "x.v1.S/M", 0);
    int whole = 0, method = 0;
    for (int i = 0; i < 6; i++) {
        call(s, "bund.bmi", "x.v1.S/M", "c", 0, 0);
        if (last()->to.len == strlen("kommune.whole"))
            whole++;
        else
            method++;
    }
    assert_int_equal(whole, 3);
    assert_int_equal(method, 3);
    /* another method of the service goes to the whole-service provider only */
    call(s, "bund.bmi", "x.v1.S/Other", "c", 0, 0);
    assert_memory_equal(last()->to.id, "kommune.whole", 13);
}

static void
test_prefers_idle_provider(void **state)
{
    brk_services_t *s = *state;
    offer(s, "kommune.p1", "x.v1.S", 0);
    offer(s, "kommune.p2", "x.v1.S", 0);
    call(s, "bund.bmi", "x.v1.S/M", "a", 0, 0);
    sent_t first = *last();
    call(s, "bund.bmi", "x.v1.S/M", "b", 0, 0);
    sent_t second = *last();
    assert_false(first.to.id[first.to.len - 1] == second.to.id[second.to.len - 1]);
    /* p(first) answers: it has 0 in flight, the other 1 -> the next call goes to first */
    char who[32];
    snprintf(who, sizeof who, "%.*s", first.to.len, (const char *)first.to.id);
    answer(s, who, &first, AMTSBOTE__V1__KIND__KIND_REPLY, 1);
    call(s, "bund.bmi", "x.v1.S/M", "c", 0, 2);
    assert_memory_equal(last()->to.id, first.to.id, first.to.len);
}

static void
test_unknown_service(void **state)
{
    brk_services_t *s = *state;
    call(s, "bund.bmi", "x.v1.Nobody/M", "c1", 0, 0);
    assert_int_equal(last()->kind, AMTSBOTE__V1__KIND__KIND_ERROR);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__UNKNOWN_SERVICE);
    assert_non_null(strstr(last()->err_text, "x.v1.Nobody/M"));
    assert_memory_equal(last()->corr, "c1", 2);
    assert_int_equal(brk_services_in_flight(s), 0);
}

static void
test_bad_service_name(void **state)
{
    brk_services_t *s = *state;
    call(s, "bund.bmi", "no-dots/M", "c1", 0, 0);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__INVALID_ARGUMENT);
    assert_non_null(strstr(last()->err_text, "no-dots/M"));
    brk_peer_t p = peer("kommune.a");
    ab_header_t h = hdr(AMTSBOTE__V1__KIND__KIND_OFFER, "x.v1.S/", "o");
    brk_services_handle(s, &p, "kommune.a", &h, NULL, 0);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__INVALID_ARGUMENT);
}

static void
test_deadline(void **state)
{
    brk_services_t *s = *state;
    offer(s, "kommune.a", "x.v1.S/M", 1000);
    call(s, "bund.bmi", "x.v1.S/M", "c1", 250, 1000);
    sent_t fwd = *last();
    assert_int_equal(fwd.deadline_ms, 250);
    size_t before = F.n;
    uint64_t wait = brk_services_tick(s, 1249);
    assert_int_equal(F.n, before); /* not yet */
    assert_true(wait <= 1);
    brk_services_tick(s, 1250);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__DEADLINE_EXCEEDED);
    assert_memory_equal(last()->to.id, "bund.bmi", 8);
    assert_non_null(strstr(last()->err_text, "250 ms"));
    assert_int_equal(brk_services_in_flight(s), 0);

    /* the provider answers too late: dropped and counted, nothing sent */
    before = F.n;
    answer(s, "kommune.a", &fwd, AMTSBOTE__V1__KIND__KIND_REPLY, 1300);
    assert_int_equal(F.n, before);
    brk_services_stats_t st;
    brk_services_stats(s, &st);
    assert_int_equal(st.late_replies, 1);
    assert_int_equal(st.deadline_exceeded, 1);
}

static void
test_deadline_order_many(void **state)
{
    brk_services_t *s = *state;
    offer(s, "kommune.a", "x.v1.S/M", 0);
    /* deadlines in a scrambled order; they must expire in deadline order */
    uint32_t dl[] = {500, 100, 900, 300, 700, 200, 800, 400, 600};
    for (size_t i = 0; i < 9; i++) {
        char corr[8];
        snprintf(corr, sizeof corr, "%u", dl[i]);
        call(s, "bund.bmi", "x.v1.S/M", corr, dl[i], 0);
    }
    size_t before = F.n;
    for (uint64_t t = 0; t <= 1000; t += 50)
        brk_services_tick(s, t);
    assert_int_equal(F.n - before, 9);
    for (size_t i = 0; i < 9; i++) {
        char want[8];
        snprintf(want, sizeof want, "%zu", (i + 1) * 100);
        assert_int_equal(F.sent[before + i].corr_len, strlen(want));
        assert_memory_equal(F.sent[before + i].corr, want, strlen(want));
    }
}

static void
test_deadline_capped(void **state)
{
    brk_services_t *s = *state;
    offer(s, "kommune.a", "x.v1.S/M", 0);
    call(s, "bund.bmi", "x.v1.S/M", "c1", 4000000, 0);
    assert_int_equal(last()->deadline_ms, 300000);
}

static void
test_provider_missed_heartbeats(void **state)
{
    brk_services_t *s = *state;
    offer(s, "kommune.a", "x.v1.S/M", 0);
    offer(s, "kommune.b", "x.v1.S/M", 0);
    call(s, "bund.bmi", "x.v1.S/M", "c1", 60000, 0);
    call(s, "bund.bmi", "x.v1.S/M", "c2", 60000, 0);
    /* b keeps sending heartbeats, a falls silent */
    for (uint64_t t = 500; t <= 3500; t += 500) {
        brk_peer_t p = peer("kommune.b");
        ab_header_t h = hdr(AMTSBOTE__V1__KIND__KIND_HEARTBEAT, NULL, NULL);
        brk_services_handle(s, &p, "kommune.b", &h, NULL, t);
        brk_services_tick(s, t);
    }
    /* a's call got PROVIDER_GONE within the heartbeat timeout (+ one sweep) */
    int gone = 0;
    for (size_t i = 0; i < F.n; i++)
        if (F.sent[i].err_code == AMTSBOTE__V1__ERROR_CODE__PROVIDER_GONE) {
            gone++;
            assert_non_null(strstr(F.sent[i].err_text, "kommune.a"));
        }
    assert_int_equal(gone, 1);
    assert_int_equal(brk_services_in_flight(s), 1);
    /* new calls go to b only */
    for (int i = 0; i < 4; i++) {
        call(s, "bund.bmi", "x.v1.S/M", "n", 60000, 3600);
        assert_memory_equal(last()->to.id, "kommune.b", 9);
    }
    /* a wakes up and sends a heartbeat: an unasked HELLO tells it to offer again */
    brk_peer_t a = peer("kommune.a");
    ab_header_t hb = hdr(AMTSBOTE__V1__KIND__KIND_HEARTBEAT, NULL, NULL);
    brk_services_handle(s, &a, "kommune.a", &hb, NULL, 3700);
    assert_int_equal(last()->kind, AMTSBOTE__V1__KIND__KIND_HELLO);
    assert_memory_equal(last()->to.id, "kommune.a", 9);
    assert_int_equal(last()->corr_len, 0);
    offer(s, "kommune.a", "x.v1.S/M", 3700);
    size_t before = F.n;
    brk_services_handle(s, &a, "kommune.a", &hb, NULL, 3800);
    assert_int_equal(F.n, before); /* with offers again, heartbeats get no answer */
}

static void
test_provider_gone_on_send(void **state)
{
    brk_services_t *s = *state;
    offer(s, "kommune.a", "x.v1.S/M", 0);
    offer(s, "kommune.b", "x.v1.S/M", 0);
    F.gone = peer("kommune.a");
    F.fail_gone = 1;
    for (int i = 0; i < 3; i++) {
        call(s, "bund.bmi", "x.v1.S/M", "c", 0, 0);
        assert_int_equal(last()->kind, AMTSBOTE__V1__KIND__KIND_CALL);
        assert_memory_equal(last()->to.id, "kommune.b", 9);
    }
    F.gone = peer("kommune.b");
    size_t before = F.n;
    call(s, "bund.bmi", "x.v1.S/M", "d", 0, 0);
    /* b's 3 calls in flight fail PROVIDER_GONE; then nobody offers the service any more */
    assert_int_equal(F.n - before, 4);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(F.sent[before + i].err_code, AMTSBOTE__V1__ERROR_CODE__PROVIDER_GONE);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__UNKNOWN_SERVICE);
    assert_memory_equal(last()->corr, "d", 1);
    assert_int_equal(brk_services_in_flight(s), 0);
}

static void
test_reply_from_wrong_provider_dropped(void **state)
{
    brk_services_t *s = *state;
    offer(s, "kommune.a", "x.v1.S/M", 0);
    call(s, "bund.bmi", "x.v1.S/M", "c1", 0, 0);
    sent_t fwd = *last();
    size_t before = F.n;
    answer(s, "kommune.mallory", &fwd, AMTSBOTE__V1__KIND__KIND_REPLY, 1);
    assert_int_equal(F.n, before);
    assert_int_equal(brk_services_in_flight(s), 1);
    answer(s, "kommune.a", &fwd, AMTSBOTE__V1__KIND__KIND_REPLY, 2);
    assert_int_equal(last()->kind, AMTSBOTE__V1__KIND__KIND_REPLY);
}

static void
test_withdraw(void **state)
{
    brk_services_t *s = *state;
    offer(s, "kommune.a", "x.v1.S/M", 0);
    brk_peer_t p = peer("kommune.a");
    ab_header_t h = hdr(AMTSBOTE__V1__KIND__KIND_WITHDRAW, "x.v1.S/M", "w");
    brk_services_handle(s, &p, "kommune.a", &h, NULL, 0);
    assert_int_equal(last()->kind, AMTSBOTE__V1__KIND__KIND_REPLY);
    call(s, "bund.bmi", "x.v1.S/M", "c", 0, 0);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__UNKNOWN_SERVICE);
    brk_services_handle(s, &p, "kommune.a", &h, NULL, 0);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__INVALID_ARGUMENT);
}

static void
test_hello(void **state)
{
    brk_services_t *s = *state;
    brk_peer_t p = peer("x");
    ab_header_t h = hdr(AMTSBOTE__V1__KIND__KIND_HELLO, NULL, "hi");
    brk_services_handle(s, &p, "land.by.stmi", &h, NULL, 0);
    assert_int_equal(last()->kind, AMTSBOTE__V1__KIND__KIND_HELLO);
    assert_string_equal(last()->sender, "land.by.stmi");
}

static void
test_drain_and_fail_all(void **state)
{
    brk_services_t *s = *state;
    offer(s, "kommune.a", "x.v1.S/M", 0);
    call(s, "bund.bmi", "x.v1.S/M", "c1", 0, 0);
    brk_services_drain(s);
    call(s, "bund.bmi", "x.v1.S/M", "c2", 0, 0);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__UNAVAILABLE);
    assert_int_equal(brk_services_in_flight(s), 1);
    brk_services_fail_all(s, AB_EUNAVAILABLE, "stopping");
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__UNAVAILABLE);
    assert_memory_equal(last()->corr, "c1", 2);
    assert_int_equal(brk_services_in_flight(s), 0);
}

static void
test_max_in_flight(void **state)
{
    brk_services_t *s = *state;
    C.max_calls_in_flight = 2;
    offer(s, "kommune.a", "x.v1.S/M", 0);
    call(s, "bund.bmi", "x.v1.S/M", "1", 0, 0);
    call(s, "bund.bmi", "x.v1.S/M", "2", 0, 0);
    call(s, "bund.bmi", "x.v1.S/M", "3", 0, 0);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__UNAVAILABLE);
    assert_non_null(strstr(last()->err_text, "max_calls_in_flight"));
}

static void
test_unsupported_kind(void **state)
{
    brk_services_t *s = *state;
    brk_peer_t p = peer("x");
    ab_header_t h = hdr(AMTSBOTE__V1__KIND__KIND_SEND, NULL, "s");
    brk_services_handle(s, &p, "bund.bmi", &h, NULL, 0);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__UNAVAILABLE);
    assert_non_null(strstr(last()->err_text, "SEND"));
}

static void
test_list_services(void **state)
{
    brk_services_t *s = *state;
    offer(s, "kommune.a", "x.v1.S", 0);
    offer(s, "kommune.b", "x.v1.S", 0);
    offer(s, "kommune.b", "y.v1.T/M", 0);
    call(s, "bund.bmi", "x.v1.S/M", "c1", 0, 0);
    call(s, "bund.bmi", "amtsbote.v1.Broker/ListServices", "ls", 0, 0);
    assert_int_equal(last()->kind, AMTSBOTE__V1__KIND__KIND_REPLY);
    assert_memory_equal(last()->corr, "ls", 2);
    Amtsbote__V1__ServiceList *l =
        amtsbote__v1__service_list__unpack(NULL, last_bytes_len, last_bytes);
    assert_non_null(l);
    assert_int_equal(l->n_services, 2);
    int seen = 0;
    for (size_t i = 0; i < l->n_services; i++) {
        if (!strcmp(l->services[i]->name, "x.v1.S")) {
            assert_int_equal(l->services[i]->n_providers, 2);
            assert_int_equal(l->services[i]->in_flight, 1);
            seen++;
        } else {
            assert_string_equal(l->services[i]->name, "y.v1.T/M");
            assert_string_equal(l->services[i]->providers[0], "kommune.b");
            seen++;
        }
    }
    assert_int_equal(seen, 2);
    amtsbote__v1__service_list__free_unpacked(l, NULL);

    call(s, "bund.bmi", "amtsbote.v1.Broker/Shutdown", "x", 0, 0);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__UNKNOWN_SERVICE);
    brk_peer_t p = peer("kommune.evil");
    ab_header_t h = hdr(AMTSBOTE__V1__KIND__KIND_OFFER, "amtsbote.v1.Broker", "o");
    brk_services_handle(s, &p, "kommune.evil", &h, NULL, 0);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__INVALID_ARGUMENT);
    assert_non_null(strstr(last()->err_text, "broker's own service"));
}

static void
test_reused_routing_id_inherits_nothing(void **state)
{
    brk_services_t *s = *state;
    offer(s, "kommune.prov", "x.v1.S/M", 0);
    /* connection "conn1" is kommune.a: it offers y.v1.T and calls x.v1.S/M */
    brk_peer_t p = peer("conn1");
    ab_header_t o = hdr(AMTSBOTE__V1__KIND__KIND_OFFER, "y.v1.T", "o");
    brk_services_handle(s, &p, "kommune.a", &o, NULL, 0);
    ab_header_t c = hdr(AMTSBOTE__V1__KIND__KIND_CALL, "x.v1.S/M", "c1");
    int payload = 1;
    brk_services_handle(s, &p, "kommune.a", &c, &payload, 0);
    sent_t fwd = *last();
    assert_string_equal(fwd.sender, "kommune.a");
    /* the same routing id now belongs to another participant's connection */
    ab_header_t hb = hdr(AMTSBOTE__V1__KIND__KIND_CALL, "x.v1.S/M", "c2");
    brk_services_handle(s, &p, "kommune.evil", &hb, &payload, 1);
    assert_string_equal(last()->sender, "kommune.evil"); /* stamped with who it is now */
    /* the answer to kommune.a's call does not reach the new connection */
    size_t before = F.n;
    answer(s, "kommune.prov", &fwd, AMTSBOTE__V1__KIND__KIND_REPLY, 2);
    assert_int_equal(F.n, before);
    /* and kommune.a's offer is gone */
    call(s, "bund.bmi", "y.v1.T/M", "c3", 0, 3);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__UNKNOWN_SERVICE);
}

/* ---- the gate: policy, clearance and events ---- */

typedef struct {
    int events[8]; /* count by brk_event_kind_t */
    int last_outcome;
    char last_rule[64];
    char last_provider[64];
    uint64_t last_latency;
} gate_log_t;

static gate_log_t G;

/* Allows bund.* to call, kommune.* to offer; nobody may push schemas; kommune.vs is cleared for
 * VS-NfD. */
static int
gate_allow(void *ctx, const char *participant, const char *action, const char *resource,
           const char *purpose, int classification, char *why, size_t cap, const char **rule)
{
    (void)ctx;
    (void)resource;
    (void)classification;
    if (!strcmp(action, "call") && !strncmp(participant, "bund.", 5)) {
        if (strstr(resource, "Melderegister") && strcmp(purpose, "BMG §34") != 0) {
            *rule = "melde-zweck";
            snprintf(why, cap, "rule melde-zweck requires the purpose BMG §34");
            return AB_EFORBIDDEN;
        }
        *rule = "bund-calls";
        return 0;
    }
    if (!strcmp(action, "offer") && !strncmp(participant, "kommune.", 8))
        return 0;
    *rule = "default";
    snprintf(why, cap, "no rule allows %s to %s %s", participant, action, resource);
    return AB_EFORBIDDEN;
}

static int
gate_cleared(void *ctx, const char *participant, int classification)
{
    (void)ctx;
    return classification <= 1 || !strcmp(participant, "kommune.vs");
}

static void
gate_record(void *ctx, const brk_event_t *ev)
{
    gate_log_t *g = ctx;
    g->events[ev->kind]++;
    g->last_outcome = ev->outcome;
    snprintf(g->last_rule, sizeof g->last_rule, "%s", ev->rule);
    snprintf(g->last_provider, sizeof g->last_provider, "%s", ev->provider);
    g->last_latency = ev->latency_ms;
}

static const brk_services_gate_t GATE = {gate_allow, gate_cleared, gate_record, &G};

static void
test_gate_policy_clearance_events(void **state)
{
    brk_services_t *s = *state;
    memset(&G, 0, sizeof G);
    brk_services_set_gate(s, &GATE);
    /* an offer needs a rule */
    brk_peer_t p = peer("land.by.x");
    ab_header_t h = hdr(AMTSBOTE__V1__KIND__KIND_OFFER, "x.v1.S", "o1");
    brk_services_handle(s, &p, "land.by.x", &h, NULL, 0);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__FORBIDDEN);
    assert_non_null(strstr(last()->err_text, "no rule allows land.by.x to offer x.v1.S"));
    assert_int_equal(G.events[BRK_EV_REFUSED], 1);
    offer(s, "kommune.offen", "x.v1.S", 0);
    offer(s, "kommune.vs", "x.v1.S", 0);

    /* a call without the purpose a rule requires: FORBIDDEN naming the rule */
    call(s, "bund.bmi", "x.v1.S/Melderegister", "c1", 0, 1);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__FORBIDDEN);
    assert_non_null(strstr(last()->err_text, "rule melde-zweck"));
    assert_string_equal(G.last_rule, "melde-zweck");
    /* a municipality may not call at all */
    call(s, "kommune.x", "x.v1.S/M", "c2", 0, 1);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__FORBIDDEN);

    /* classified: only the cleared provider gets it, every time */
    for (int i = 0; i < 4; i++) {
        brk_peer_t b = peer("bund.bmi");
        ab_header_t c = hdr(AMTSBOTE__V1__KIND__KIND_CALL, "x.v1.S/M", "c3");
        c.classification = AMTSBOTE__V1__CLASSIFICATION__VS_NUR_FUER_DEN_DIENSTGEBRAUCH;
        int payload = 1;
        brk_services_handle(s, &b, "bund.bmi", &c, &payload, 10);
        const sent_t fwd = *last();
        assert_int_equal(fwd.kind, AMTSBOTE__V1__KIND__KIND_CALL);
        assert_memory_equal(fwd.to.id, "kommune.vs", fwd.to.len);
        assert_string_equal(G.last_provider, "kommune.vs");
        answer(s, "kommune.vs", &fwd, AMTSBOTE__V1__KIND__KIND_REPLY, 25);
        assert_int_equal(G.last_latency, 15);
    }
    assert_int_equal(G.events[BRK_EV_CALL], 4);
    assert_int_equal(G.events[BRK_EV_REPLY], 4);

    /* without the cleared provider: FORBIDDEN, not UNKNOWN_SERVICE */
    brk_peer_t vs = peer("kommune.vs");
    ab_header_t w = hdr(AMTSBOTE__V1__KIND__KIND_WITHDRAW, "x.v1.S", "w");
    brk_services_handle(s, &vs, "kommune.vs", &w, NULL, 30);
    brk_peer_t b = peer("bund.bmi");
    ab_header_t c = hdr(AMTSBOTE__V1__KIND__KIND_CALL, "x.v1.S/M", "c4");
    c.classification = AMTSBOTE__V1__CLASSIFICATION__VS_NUR_FUER_DEN_DIENSTGEBRAUCH;
    int payload = 1;
    brk_services_handle(s, &b, "bund.bmi", &c, &payload, 31);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__FORBIDDEN);
    assert_non_null(strstr(last()->err_text, "cleared"));

    /* a classified reply to a caller cleared below it is not delivered */
    call(s, "bund.bmi", "x.v1.S/M", "c5", 0, 40);
    const sent_t fwd = *last();
    assert_memory_equal(fwd.to.id, "kommune.offen", fwd.to.len);
    brk_peer_t o = peer("kommune.offen");
    ab_header_t r = hdr(AMTSBOTE__V1__KIND__KIND_REPLY, NULL, NULL);
    r.correlation_id.data = (uint8_t *)fwd.corr;
    r.correlation_id.len = fwd.corr_len;
    r.classification = AMTSBOTE__V1__CLASSIFICATION__VS_NUR_FUER_DEN_DIENSTGEBRAUCH;
    int rp = 7;
    brk_services_handle(s, &o, "kommune.offen", &r, &rp, 41);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__FORBIDDEN);
    assert_memory_equal(last()->to.id, "bund.bmi", 8);
    assert_false(last()->has_payload);

    /* a call that ends at its deadline is recorded as failed */
    int before = G.events[BRK_EV_FAILED];
    call(s, "bund.bmi", "x.v1.S/M", "c6", 100, 50);
    brk_services_tick(s, 151);
    assert_int_equal(G.events[BRK_EV_FAILED], before + 1);
    assert_int_equal(G.last_outcome, AB_EDEADLINE);
    assert_int_equal(G.last_latency, 101);

    /* the list of offers is an administrative view */
    ab_header_t list = hdr(AMTSBOTE__V1__KIND__KIND_CALL, "amtsbote.v1.Broker/ListServices", "l1");
    brk_services_handle(s, &b, "bund.bmi", &list, &payload, 60);
    assert_int_equal(last()->err_code, AMTSBOTE__V1__ERROR_CODE__FORBIDDEN);
    assert_non_null(strstr(last()->err_text, "admin services.list"));
    brk_services_stats_t st;
    brk_services_stats(s, &st);
    assert_true(st.forbidden >= 6);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gate_policy_clearance_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_provider_error_is_provider_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_balances_fewest_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefers_idle_provider, setup, teardown),
        cmocka_unit_test_setup_teardown(test_whole_service_and_method_offers_share, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_unknown_service, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_service_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline_order_many, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline_capped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_provider_missed_heartbeats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_provider_gone_on_send, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_from_wrong_provider_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_withdraw, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hello, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_and_fail_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unsupported_kind, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_services, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reused_routing_id_inherits_nothing, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
