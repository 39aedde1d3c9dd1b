/*
 * Unit tests for common/codec.c: the hand-written Header codec must write the bytes protobuf-c
 * writes, read what protobuf-c writes, and never accept what protobuf-c refuses.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec.h"

static uint8_t arena[1 << 20];
static size_t used;

static void *
s_alloc(void *a, size_t size)
{
    (void)a;
    size = (size + 15) & ~(size_t)15;
    if (size > sizeof arena - used)
        return NULL;
    void *p = arena + used;
    used += size;
    return p;
}

static uint32_t rnd_state = 12345;
static uint32_t
rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 17;
    rnd_state ^= rnd_state << 5;
    return rnd_state;
}

/* Strings and bytes for the random headers live here. */
static char pool[64][48];
static int npool;

static char *
rnd_string(void)
{
    if (rnd() % 3 == 0)
        return rnd() % 2 ? NULL : "";
    char *s = pool[npool++ % 64];
    size_t n = 1 + rnd() % 40;
    for (size_t i = 0; i < n; i++)
        s[i] = (char)('a' + rnd() % 26);
    s[n] = '\0';
    if (rnd() % 4 == 0)
        memcpy(s, "\xc3\xa4", 2); /* some UTF-8 */
    return s;
}

static int
rnd_enum(void)
{
    uint32_t r = rnd() % 8;
    return r == 0 ? -1 - (int)(rnd() % 5) : r < 4 ? 0 : (int)(rnd() % 20);
}

static uint32_t
rnd_uint(void)
{
    uint32_t r = rnd() % 4;
    return r == 0 ? 0 : r == 1 ? rnd() % 128 : r == 2 ? rnd() : UINT32_MAX;
}

typedef struct {
    ab_header_t h;
    Amtsbote__V1__Header__HeadersEntry entries[3], *ep[3];
    Amtsbote__V1__TraceContext trace;
    Amtsbote__V1__Error error;
    uint8_t id[16], corr[16];
} sample_t;

static void
rnd_header(sample_t *s)
{
    static const ab_header_t init = AMTSBOTE__V1__HEADER__INIT;
    s->h = init;
    s->h.version = rnd_uint();
    s->h.kind = rnd_enum();
    for (int i = 0; i < 16; i++)
        s->id[i] = (uint8_t)rnd(), s->corr[i] = (uint8_t)rnd();
    s->h.message_id.len = rnd() % 2 ? 16 : 0;
    s->h.message_id.data = s->h.message_id.len ? s->id : NULL;
    s->h.correlation_id.len = rnd() % 17;
    s->h.correlation_id.data = s->h.correlation_id.len ? s->corr : NULL;
    s->h.service = rnd_string();
    s->h.recipient = rnd_string();
    s->h.topic = rnd_string();
    s->h.schema = rnd_string();
    s->h.purpose = rnd_string();
    s->h.classification = rnd_enum();
    s->h.deadline_ms = rnd_uint();
    s->h.n_headers = rnd() % 4;
    for (size_t i = 0; i < s->h.n_headers; i++) {
        amtsbote__v1__header__headers_entry__init(&s->entries[i]);
        s->entries[i].key = rnd_string();
        s->entries[i].value = rnd_string();
        if (!s->entries[i].key)
            s->entries[i].key = "";
        if (!s->entries[i].value)
            s->entries[i].value = "";
        s->ep[i] = &s->entries[i];
    }
    s->h.headers = s->h.n_headers ? s->ep : NULL;
    if (rnd() % 2) {
        amtsbote__v1__trace_context__init(&s->trace);
        s->trace.traceparent = rnd_string();
        s->trace.tracestate = rnd_string();
        s->h.trace = &s->trace;
    }
    if (rnd() % 2) {
        amtsbote__v1__error__init(&s->error);
        s->error.code = rnd_enum();
        s->error.text = rnd_string();
        s->error.field = rnd_string();
        s->h.error = &s->error;
    }
    s->h.sender = rnd_string();
    s->h.heartbeat_ms = rnd_uint();
    s->h.max_payload = rnd_uint();
    s->h.credit = rnd_uint();
    s->h.subscription = rnd_string();
    s->h.receipt = rnd_enum();
    s->h.timestamp_ms = (uint64_t)rnd_uint() << 32 | rnd_uint();
    s->h.attempt = rnd_uint();
    s->h.sequence = rnd() % 2 ? (uint64_t)rnd_uint() << 20 : rnd_uint();
}

static int
str_eq(const char *a, const char *b)
{
    return !strcmp(a ? a : "", b ? b : "");
}

static void
assert_same(const ab_header_t *a, const ab_header_t *b)
{
    assert_int_equal(a->version, b->version);
    assert_int_equal(a->kind, b->kind);
    assert_int_equal(a->message_id.len, b->message_id.len);
    if (a->message_id.len)
        assert_memory_equal(a->message_id.data, b->message_id.data, a->message_id.len);
    assert_int_equal(a->correlation_id.len, b->correlation_id.len);
    if (a->correlation_id.len)
        assert_memory_equal(a->correlation_id.data, b->correlation_id.data, a->correlation_id.len);
    assert_true(str_eq(a->service, b->service));
    assert_true(str_eq(a->recipient, b->recipient));
    assert_true(str_eq(a->topic, b->topic));
    assert_true(str_eq(a->schema, b->schema));
    assert_true(str_eq(a->purpose, b->purpose));
    assert_true(str_eq(a->sender, b->sender));
    assert_int_equal(a->classification, b->classification);
    assert_int_equal(a->deadline_ms, b->deadline_ms);
    assert_int_equal(a->heartbeat_ms, b->heartbeat_ms);
    assert_int_equal(a->max_payload, b->max_payload);
    assert_int_equal(a->credit, b->credit);
    assert_true(str_eq(a->subscription, b->subscription));
    assert_int_equal(a->receipt, b->receipt);
    assert_true(a->timestamp_ms == b->timestamp_ms);
    assert_int_equal(a->attempt, b->attempt);
    assert_true(a->sequence == b->sequence);
    assert_int_equal(a->n_headers, b->n_headers);
    for (size_t i = 0; i < a->n_headers; i++) {
        assert_true(str_eq(a->headers[i]->key, b->headers[i]->key));
        assert_true(str_eq(a->headers[i]->value, b->headers[i]->value));
    }
    assert_int_equal(a->trace != NULL, b->trace != NULL);
    if (a->trace) {
        assert_true(str_eq(a->trace->traceparent, b->trace->traceparent));
        assert_true(str_eq(a->trace->tracestate, b->trace->tracestate));
    }
    assert_int_equal(a->error != NULL, b->error != NULL);
    if (a->error) {
        assert_int_equal(a->error->code, b->error->code);
        assert_true(str_eq(a->error->text, b->error->text));
        assert_true(str_eq(a->error->field, b->error->field));
    }
}

static void
test_same_bytes_as_protobuf_c(void **state)
{
    (void)state;
    uint8_t mine[8192], theirs[8192];
    for (int i = 0; i < 20000; i++) {
        sample_t s;
        rnd_header(&s);
        size_t n = amtsbote__v1__header__get_packed_size(&s.h);
        assert_true(n <= sizeof theirs);
        amtsbote__v1__header__pack(&s.h, theirs);
        int m = ab_codec_pack(&s.h, mine, sizeof mine);
        assert_int_equal(m, (int)n);
        assert_memory_equal(mine, theirs, n);
        /* and it reads back what was written */
        used = 0;
        ab_header_t *back = NULL;
        assert_int_equal(ab_codec_unpack(mine, n, s_alloc, NULL, &back), 0);
        assert_same(&s.h, back);
        /* never past the buffer */
        if (n > 0)
            assert_int_equal(ab_codec_pack(&s.h, mine, n - 1), -1);
    }
}

static void
test_never_more_lenient(void **state)
{
    (void)state;
    uint8_t buf[8192];
    int accepted_both = 0, refused_mine = 0;
    for (int i = 0; i < 30000; i++) {
        sample_t s;
        rnd_header(&s);
        int n = ab_codec_pack(&s.h, buf, sizeof buf);
        /* mutate: flip bytes, cut, or append junk */
        int k = 1 + (int)(rnd() % 3);
        for (int j = 0; j < k && n > 0; j++) {
            switch (rnd() % 3) {
            case 0:
                buf[rnd() % (uint32_t)n] ^= (uint8_t)(1u << (rnd() % 8));
                break;
            case 1:
                n = (int)(rnd() % (uint32_t)n);
                break;
            default:
                if (n < (int)sizeof buf - 4)
                    for (int q = 0; q < 3; q++)
                        buf[n++] = (uint8_t)rnd();
            }
        }
        used = 0;
        ab_header_t *mine = NULL;
        int rc = ab_codec_unpack(buf, (size_t)n, s_alloc, NULL, &mine);
        ab_header_t *theirs = amtsbote__v1__header__unpack(NULL, (size_t)n, buf);
        if (rc == 0) {
            /* whatever this codec accepts, protobuf-c accepts, and reads the same */
            assert_non_null(theirs);
            assert_same(theirs, mine);
            accepted_both++;
        } else {
            refused_mine++;
        }
        if (theirs)
            amtsbote__v1__header__free_unpacked(theirs, NULL);
    }
    print_message("mutated headers: %d read the same by both, %d refused here\n", accepted_both,
                  refused_mine);
    assert_true(accepted_both > 1000 && refused_mine > 1000);
}

static void
test_unknown_fields_skipped_and_nul_refused(void **state)
{
    (void)state;
    /* version=1, an unknown varint field 40, an unknown fixed64 field 41, kind=2 */
    const uint8_t known[] = {0x08, 0x01, 0xc0, 0x02, 0x05, 0xc9, 0x02, 1,   2,
                             3,    4,    5,    6,    7,    8,    0x10, 0x02};
    used = 0;
    ab_header_t *h = NULL;
    assert_int_equal(ab_codec_unpack(known, sizeof known, s_alloc, NULL, &h), 0);
    assert_int_equal(h->version, 1);
    assert_int_equal(h->kind, 2);
    assert_string_equal(h->service, ""); /* absent strings read as "" */
    /* a NUL inside a string */
    const uint8_t nul[] = {0x2a, 0x03, 'a', 0x00, 'b'};
    assert_int_equal(ab_codec_unpack(nul, sizeof nul, s_alloc, NULL, &h), -1);
    /* a known field with the wrong wire type */
    const uint8_t wrong[] = {0x2d, 1, 2, 3, 4};
    assert_int_equal(ab_codec_unpack(wrong, sizeof wrong, s_alloc, NULL, &h), -1);
    /* field number 0 and an 11-byte varint */
    const uint8_t zero[] = {0x00, 0x01};
    assert_int_equal(ab_codec_unpack(zero, sizeof zero, s_alloc, NULL, &h), -1);
    const uint8_t longv[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff,
                             0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    assert_int_equal(ab_codec_unpack(longv, sizeof longv, s_alloc, NULL, &h), -1);
}

/* Found by fuzz_wire: a tag or a length prefix padded with 0x80 bytes to 6 bytes was read
 * here, but protobuf-c reads either in at most 5 bytes and refuses the frame. */
static void
test_padded_tag_and_length_refused(void **state)
{
    (void)state;
    /* version=1 as a 6-byte tag; an unknown field 99 as a 6-byte tag */
    const uint8_t tag[] = {0x88, 0x80, 0x80, 0x80, 0x80, 0x00, 0x01};
    const uint8_t unknown_tag[] = {0x08, 0x01, 0x98, 0x86, 0x80, 0x80, 0x80, 0x00, 0x05};
    /* service "a" with a 6-byte length */
    const uint8_t len[] = {0x2a, 0x81, 0x80, 0x80, 0x80, 0x80, 0x00, 'a'};
    /* the same padded to 5 bytes: both read them */
    const uint8_t tag5[] = {0x88, 0x80, 0x80, 0x80, 0x00, 0x01};
    const uint8_t len5[] = {0x2a, 0x81, 0x80, 0x80, 0x80, 0x00, 'a'};
    const struct {
        const uint8_t *b;
        size_t n;
        int ok;
    } cases[] = {{tag, sizeof tag, 0},
                 {unknown_tag, sizeof unknown_tag, 0},
                 {len, sizeof len, 0},
                 {tag5, sizeof tag5, 1},
                 {len5, sizeof len5, 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        used = 0;
        ab_header_t *mine = NULL;
        int rc = ab_codec_unpack(cases[i].b, cases[i].n, s_alloc, NULL, &mine);
        ab_header_t *theirs = amtsbote__v1__header__unpack(NULL, cases[i].n, cases[i].b);
        assert_int_equal(rc == 0, cases[i].ok);
        assert_int_equal(theirs != NULL, cases[i].ok);
        if (theirs) {
            assert_same(theirs, mine);
            amtsbote__v1__header__free_unpacked(theirs, NULL);
        }
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_bytes_as_protobuf_c),
        cmocka_unit_test(test_never_more_lenient),
        cmocka_unit_test(test_unknown_fields_skipped_and_nul_refused),
        cmocka_unit_test(test_padded_tag_and_length_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
