/*
 * Integration tests of the schema registry at the wire: what a header claims about its payload
 * (the `schema` field) is checked against the registered method, the error carries the field
 * path in Error.field, a provider's reply is checked too, and nothing refused is forwarded.
 * Raw DEALERs send what the client library never would.
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

#include "amtsbote/v1/amtsbote.pb-c.h"
#include "harness.h"
#include "wire.h"

#define SERVICE "meldewesen.v1.Melderegister"
#define METHOD SERVICE "/Meldebescheinigung"

static h_broker_t B;
static void *CTX;

static void
s_push(void)
{
    FILE *f = fopen(AB_MELDEWESEN_SET, "rb");
    assert_non_null(f);
    static uint8_t set[65536];
    size_t n = fread(set, 1, sizeof set, f);
    fclose(f);
    assert_true(n > 0 && n < sizeof set);
    Amtsbote__V1__SchemaPushRequest req = AMTSBOTE__V1__SCHEMA_PUSH_REQUEST__INIT;
    req.descriptor_set.data = set;
    req.descriptor_set.len = n;
    static uint8_t buf[70000];
    size_t len = amtsbote__v1__schema_push_request__pack(&req, buf);
    ab_client_t *c = h_client(B.tcp, "bund.bmi");
    assert_non_null(c);
    void *reply = NULL;
    size_t rlen = 0;
    assert_int_equal(ab_call(c, "amtsbote.v1.Broker/SchemaPush", buf, len, 5000, &reply, &rlen), 0);
    Amtsbote__V1__SchemaPushReply *r = amtsbote__v1__schema_push_reply__unpack(NULL, rlen, reply);
    assert_non_null(r);
    assert_true(r->accepted);
    assert_int_equal(r->n_files, 1);
    assert_string_equal(r->files[0]->status, "new");
    amtsbote__v1__schema_push_reply__free_unpacked(r, NULL);
    ab_free(reply);
    ab_client_destroy(&c);
}

static int
group_setup(void **state)
{
    (void)state;
    if (h_broker_start(&B, 0, NULL) != 0)
        return -1;
    CTX = zmq_ctx_new();
    s_push();
    return 0;
}

static int
group_teardown(void **state)
{
    (void)state;
    /* no zmq_ctx_term: after a failed assertion a socket may still be open, and it would wait
     * for it forever; the process ends here anyway */
    int st = h_broker_stop(&B, SIGTERM, 10000);
    if (st != 0)
        fprintf(stderr, "broker exited with %d (log in %s)\n", st, B.dir);
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

/* Sends a header (and a payload frame when payload != NULL). */
static void
s_send(void *s, int kind, const char *service, const char *schema, const uint8_t *corr,
       size_t corr_len, const void *payload, size_t len, uint8_t id[16])
{
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    uint8_t own[16];
    ab_uuid7(id ? id : own);
    h.version = 1;
    h.kind = kind;
    h.message_id.data = id ? id : own;
    h.message_id.len = 16;
    h.correlation_id.data = (uint8_t *)corr;
    h.correlation_id.len = corr_len;
    h.service = (char *)service;
    h.schema = (char *)schema;
    uint8_t buf[1024];
    int n = ab_wire_encode(&h, buf, sizeof buf);
    assert_true(n > 0);
    assert_int_equal(zmq_send(s, buf, (size_t)n, payload ? ZMQ_SNDMORE : 0), n);
    if (payload)
        assert_int_equal(zmq_send(s, payload, len, 0), (int)len);
}

/* Receives one message: its header (caller frees) and payload into buf; NULL on time-out. */
static ab_header_t *
s_recv(void *s, uint8_t *payload, size_t *len)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    ab_header_t *h = NULL;
    if (zmq_msg_recv(&m, s, 0) >= 0) {
        h = amtsbote__v1__header__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
        if (len)
            *len = 0;
        while (zmq_msg_more(&m) && zmq_msg_recv(&m, s, 0) >= 0)
            if (payload && len && zmq_msg_size(&m) <= 4096) {
                memcpy(payload, zmq_msg_data(&m), zmq_msg_size(&m));
                *len = zmq_msg_size(&m);
            }
    }
    zmq_msg_close(&m);
    return h;
}

/* A raw provider of SERVICE: OFFER and its acknowledgement. */
static void *
s_provider(const char *participant)
{
    void *p = s_raw(participant, 5000);
    s_send(p, AMTSBOTE__V1__KIND__KIND_HELLO, NULL, NULL, NULL, 0, NULL, 0, NULL);
    ab_header_t *h = s_recv(p, NULL, NULL);
    assert_non_null(h);
    assert_int_equal(h->kind, AMTSBOTE__V1__KIND__KIND_HELLO);
    amtsbote__v1__header__free_unpacked(h, NULL);
    s_send(p, AMTSBOTE__V1__KIND__KIND_OFFER, SERVICE, NULL, NULL, 0, NULL, 0, NULL);
    h = s_recv(p, NULL, NULL);
    assert_non_null(h);
    assert_int_equal(h->kind, AMTSBOTE__V1__KIND__KIND_REPLY);
    amtsbote__v1__header__free_unpacked(h, NULL);
    return p;
}

/* Withdraws the raw provider's offer before closing it, so that the next test's provider is
 * the only one (a closed DEALER is noticed by the broker only at its heartbeat timeout). */
static void
s_provider_close(void *p)
{
    s_send(p, AMTSBOTE__V1__KIND__KIND_WITHDRAW, SERVICE, NULL, NULL, 0, NULL, 0, NULL);
    ab_header_t *h = s_recv(p, NULL, NULL);
    assert_non_null(h);
    assert_int_equal(h->kind, AMTSBOTE__V1__KIND__KIND_REPLY);
    amtsbote__v1__header__free_unpacked(h, NULL);
    zmq_close(p);
}

/* name.familienname (1.1) with an invalid UTF-8 byte */
static const uint8_t BAD_NAME[] = {0x0a, 0x05, 0x0a, 0x03, 'M', 0xff, 'r'};
/* Meldebescheinigung with aktenzeichen "A1" */
static const uint8_t GOOD_REPLY[] = {0x0a, 0x02, 'A', '1'};

static void
test_header_claims_checked(void **state)
{
    (void)state;
    void *prov = s_provider("kommune.09162000.meldeamt");
    void *c = s_raw("bund.bmi", 5000);
    uint8_t id[16];

    /* the header claims a type the method does not take */
    s_send(c, AMTSBOTE__V1__KIND__KIND_CALL, METHOD, "meldewesen.v1.Name", NULL, 0, "", 0, id);
    ab_header_t *h = s_recv(c, NULL, NULL);
    assert_non_null(h);
    assert_int_equal(h->kind, AMTSBOTE__V1__KIND__KIND_ERROR);
    assert_int_equal(h->error->code, AMTSBOTE__V1__ERROR_CODE__SCHEMA_INVALID);
    assert_memory_equal(h->correlation_id.data, id, 16);
    assert_non_null(strstr(h->error->text, "claims type meldewesen.v1.Name"));
    assert_non_null(strstr(h->error->text, "takes meldewesen.v1.MeldebescheinigungAnfrage"));
    amtsbote__v1__header__free_unpacked(h, NULL);

    /* the right claim and a payload that does not fit: the field path is in Error.field */
    s_send(c, AMTSBOTE__V1__KIND__KIND_CALL, METHOD, "meldewesen.v1.MeldebescheinigungAnfrage",
           NULL, 0, BAD_NAME, sizeof BAD_NAME, id);
    h = s_recv(c, NULL, NULL);
    assert_non_null(h);
    assert_int_equal(h->error->code, AMTSBOTE__V1__ERROR_CODE__SCHEMA_INVALID);
    assert_string_equal(h->error->field, "name.familienname");
    assert_non_null(strstr(h->error->text, "UTF-8"));
    amtsbote__v1__header__free_unpacked(h, NULL);

    /* nothing of that reached the provider */
    int quick = 300;
    zmq_setsockopt(prov, ZMQ_RCVTIMEO, &quick, sizeof quick);
    h = s_recv(prov, NULL, NULL);
    assert_null(h);

    /* a service without an interface: the claimed type alone is checked */
    static const uint8_t bad_datum[] = {0x0a, 0x01, 0x00}; /* jahr (varint) as bytes */
    s_send(c, AMTSBOTE__V1__KIND__KIND_CALL, "x.v1.Frei/Tu", "meldewesen.v1.Datum", NULL, 0,
           bad_datum, sizeof bad_datum, id);
    h = s_recv(c, NULL, NULL);
    assert_non_null(h);
    assert_int_equal(h->error->code, AMTSBOTE__V1__ERROR_CODE__SCHEMA_INVALID);
    assert_string_equal(h->error->field, "jahr");
    amtsbote__v1__header__free_unpacked(h, NULL);
    static const uint8_t good_datum[] = {0x08, 0xb0, 0x0f}; /* jahr = 1968 */
    s_send(c, AMTSBOTE__V1__KIND__KIND_CALL, "x.v1.Frei/Tu", "meldewesen.v1.Datum", NULL, 0,
           good_datum, sizeof good_datum, id);
    h = s_recv(c, NULL, NULL);
    assert_non_null(h);
    assert_int_equal(h->error->code, AMTSBOTE__V1__ERROR_CODE__UNKNOWN_SERVICE); /* it passed */
    amtsbote__v1__header__free_unpacked(h, NULL);

    /* a claim of a type nobody registered is not checked */
    s_send(c, AMTSBOTE__V1__KIND__KIND_CALL, "x.v1.Frei/Tu", "x.v1.Unbekannt", NULL, 0, bad_datum,
           sizeof bad_datum, id);
    h = s_recv(c, NULL, NULL);
    assert_non_null(h);
    assert_int_equal(h->error->code, AMTSBOTE__V1__ERROR_CODE__UNKNOWN_SERVICE);
    amtsbote__v1__header__free_unpacked(h, NULL);

    /* and a good call still goes through to the provider */
    s_send(c, AMTSBOTE__V1__KIND__KIND_CALL, METHOD, "meldewesen.v1.MeldebescheinigungAnfrage",
           NULL, 0, "", 0, id);
    int slow = 5000;
    zmq_setsockopt(prov, ZMQ_RCVTIMEO, &slow, sizeof slow);
    h = s_recv(prov, NULL, NULL);
    assert_non_null(h);
    assert_int_equal(h->kind, AMTSBOTE__V1__KIND__KIND_CALL);
    assert_string_equal(h->sender, "bund.bmi");
    uint8_t token[8];
    memcpy(token, h->correlation_id.data, 8);
    amtsbote__v1__header__free_unpacked(h, NULL);
    s_send(prov, AMTSBOTE__V1__KIND__KIND_REPLY, METHOD, "meldewesen.v1.Meldebescheinigung", token,
           8, GOOD_REPLY, sizeof GOOD_REPLY, NULL);
    uint8_t payload[4096];
    size_t plen = 0;
    h = s_recv(c, payload, &plen);
    assert_non_null(h);
    assert_int_equal(h->kind, AMTSBOTE__V1__KIND__KIND_REPLY);
    assert_int_equal(plen, sizeof GOOD_REPLY);
    assert_memory_equal(payload, GOOD_REPLY, plen);
    amtsbote__v1__header__free_unpacked(h, NULL);
    zmq_close(c);
    s_provider_close(prov);
}

static void
test_reply_checked(void **state)
{
    (void)state;
    void *prov = s_provider("kommune.05315000.meldeamt");
    void *c = s_raw("bund.bmi", 5000);
    struct {
        const char *claim;
        const uint8_t *payload;
        size_t len;
        const char *field;
    } cases[] = {
        {"meldewesen.v1.Name", GOOD_REPLY, sizeof GOOD_REPLY, ""}, /* wrong type */
        {"", (const uint8_t *)"\x0a\x01\xff", 3, "aktenzeichen"},  /* bad UTF-8 */
        {"", (const uint8_t *)"\x12\x05\x0a\x03\x41\x00\x42", 7, "name.familienname"}, /* NUL */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t id[16];
        s_send(c, AMTSBOTE__V1__KIND__KIND_CALL, METHOD, NULL, NULL, 0, "", 0, id);
        ab_header_t *h = s_recv(prov, NULL, NULL);
        assert_non_null(h);
        uint8_t token[8];
        memcpy(token, h->correlation_id.data, 8);
        amtsbote__v1__header__free_unpacked(h, NULL);
        uint8_t reply_id[16];
        s_send(prov, AMTSBOTE__V1__KIND__KIND_REPLY, METHOD, cases[i].claim, token, 8,
               cases[i].payload, cases[i].len, reply_id);
        /* the provider is told where, correlated to its reply */
        h = s_recv(prov, NULL, NULL);
        assert_non_null(h);
        assert_int_equal(h->kind, AMTSBOTE__V1__KIND__KIND_ERROR);
        assert_int_equal(h->error->code, AMTSBOTE__V1__ERROR_CODE__SCHEMA_INVALID);
        assert_memory_equal(h->correlation_id.data, reply_id, 16);
        assert_string_equal(h->error->field, cases[i].field);
        amtsbote__v1__header__free_unpacked(h, NULL);
        /* the caller gets an error at once, not the payload and not a deadline */
        uint8_t payload[64];
        size_t plen = 0;
        h = s_recv(c, payload, &plen);
        assert_non_null(h);
        assert_int_equal(h->kind, AMTSBOTE__V1__KIND__KIND_ERROR);
        assert_int_equal(h->error->code, AMTSBOTE__V1__ERROR_CODE__PROVIDER_ERROR);
        assert_memory_equal(h->correlation_id.data, id, 16);
        assert_int_equal(plen, 0);
        assert_non_null(strstr(h->error->text, "does not match the interface"));
        amtsbote__v1__header__free_unpacked(h, NULL);
    }
    assert_true(h_broker_log_has(&B, "event=reply_refused participant=kommune.05315000.meldeamt"));
    zmq_close(c);
    s_provider_close(prov);
}

static void
test_registry_methods_refuse_bad_requests(void **state)
{
    (void)state;
    ab_client_t *c = h_client(B.tcp, "bund.bmi");
    assert_non_null(c);
    void *reply = NULL;
    size_t len = 0;
    static const uint8_t junk[] = {0xff, 0xff, 0xff};
    assert_int_equal(
        ab_call(c, "amtsbote.v1.Broker/SchemaPush", junk, sizeof junk, 3000, &reply, &len),
        AB_EINVAL);
    assert_non_null(strstr(ab_client_last_error(c), "takes a SchemaPushRequest"));
    /* a request that decodes but holds no set is refused in the answer, not as an error */
    assert_int_equal(ab_call(c, "amtsbote.v1.Broker/SchemaPush", "", 0, 3000, &reply, &len), 0);
    Amtsbote__V1__SchemaPushReply *r = amtsbote__v1__schema_push_reply__unpack(NULL, len, reply);
    assert_non_null(r);
    assert_false(r->accepted);
    assert_non_null(strstr(r->error, "does not load"));
    amtsbote__v1__schema_push_reply__free_unpacked(r, NULL);
    ab_free(reply);
    Amtsbote__V1__SchemaGetRequest g = AMTSBOTE__V1__SCHEMA_GET_REQUEST__INIT;
    g.name = "x.v1.Nichts";
    uint8_t buf[128];
    size_t n = amtsbote__v1__schema_get_request__pack(&g, buf);
    assert_int_equal(ab_call(c, "amtsbote.v1.Broker/SchemaGet", buf, n, 3000, &reply, &len),
                     AB_EINVAL);
    assert_non_null(strstr(ab_client_last_error(c), "no registered file defines x.v1.Nichts"));
    assert_int_equal(ab_call(c, "amtsbote.v1.Broker/SchemaDelete", "", 0, 3000, &reply, &len),
                     AB_EUNKNOWN_SERVICE);
    /* the list is a SchemaList with the pushed file */
    assert_int_equal(ab_call(c, "amtsbote.v1.Broker/SchemaList", "", 0, 3000, &reply, &len), 0);
    Amtsbote__V1__SchemaList *l = amtsbote__v1__schema_list__unpack(NULL, len, reply);
    assert_non_null(l);
    assert_int_equal(l->n_files, 1);
    assert_string_equal(l->files[0]->name, "meldewesen/v1/meldewesen.proto");
    assert_string_equal(l->files[0]->pushed_by, "bund.bmi");
    assert_int_equal(l->files[0]->n_services, 1);
    amtsbote__v1__schema_list__free_unpacked(l, NULL);
    ab_free(reply);
    ab_client_destroy(&c);
}

int
main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_claims_checked),
        cmocka_unit_test(test_reply_checked),
        cmocka_unit_test(test_registry_methods_refuse_bad_requests),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
