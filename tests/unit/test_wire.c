/*
 * Unit tests for common/wire.c: the header codec and its limits, names, message ids.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "wire.h"

static ab_wire_decoder_t *D;

static int
setup(void **state)
{
    (void)state;
    D = ab_wire_decoder_new();
    return D ? 0 : -1;
}

static int
teardown(void **state)
{
    (void)state;
    ab_wire_decoder_destroy(&D);
    assert_null(D);
    ab_wire_decoder_destroy(&D); /* safe twice */
    return 0;
}

static int
encode_call(uint8_t *buf, size_t cap, uint32_t version)
{
    uint8_t id[16];
    ab_uuid7(id);
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = version;
    h.kind = AMTSBOTE__V1__KIND__KIND_CALL;
    h.message_id.data = id;
    h.message_id.len = 16;
    h.service = "meldewesen.v1.Melderegister/Meldebescheinigung";
    h.purpose = "BMG §34";
    h.deadline_ms = 5000;
    return ab_wire_encode(&h, buf, cap);
}

static void
test_round_trip(void **state)
{
    (void)state;
    uint8_t buf[512];
    int n = encode_call(buf, sizeof buf, 1);
    assert_true(n > 0);
    ab_header_t *h = NULL;
    char why[AB_WHY_LEN];
    assert_int_equal(ab_wire_decode(D, buf, (size_t)n, &h, why), 0);
    assert_non_null(h);
    assert_int_equal(h->kind, AMTSBOTE__V1__KIND__KIND_CALL);
    assert_string_equal(h->service, "meldewesen.v1.Melderegister/Meldebescheinigung");
    assert_string_equal(h->purpose, "BMG §34");
    assert_int_equal(h->deadline_ms, 5000);
    assert_int_equal(h->message_id.len, 16);
}

static void
test_encode_too_small(void **state)
{
    (void)state;
    uint8_t buf[8];
    assert_int_equal(encode_call(buf, sizeof buf, 1), AB_ETOO_LARGE);
}

static void
test_empty_and_oversize(void **state)
{
    (void)state;
    ab_header_t *h = NULL;
    char why[AB_WHY_LEN];
    assert_int_equal(ab_wire_decode(D, "", 0, &h, why), AB_EMALFORMED);
    assert_non_null(strstr(why, "empty"));
    uint8_t *big = calloc(1, AB_MAX_HEADER_BYTES + 1);
    assert_int_equal(ab_wire_decode(D, big, AB_MAX_HEADER_BYTES + 1, &h, why), AB_ETOO_LARGE);
    assert_non_null(strstr(why, "exceeds"));
    free(big);
    assert_null(h);
}

static void
test_truncated(void **state)
{
    (void)state;
    uint8_t buf[512];
    int n = encode_call(buf, sizeof buf, 1);
    ab_header_t *h = NULL;
    char why[AB_WHY_LEN];
    /* every strict prefix that cuts a field in half must be refused, never crash */
    int refused = 0;
    for (int len = 1; len < n; len++)
        if (ab_wire_decode(D, buf, (size_t)len, &h, why) != 0)
            refused++;
    assert_true(refused > n / 2);
    assert_int_equal(ab_wire_decode(D, buf, (size_t)n - 5, &h, why), AB_EMALFORMED);
    assert_non_null(strstr(why, "not a valid amtsbote.v1.Header"));
}

static void
test_random_bytes(void **state)
{
    (void)state;
    srand(1234);
    uint8_t buf[256];
    ab_header_t *h = NULL;
    char why[AB_WHY_LEN];
    for (int i = 0; i < 20000; i++) {
        size_t len = 1 + (size_t)(rand() % (int)sizeof buf);
        for (size_t k = 0; k < len; k++)
            buf[k] = (uint8_t)rand();
        int rc = ab_wire_decode(D, buf, len, &h, why);
        assert_true(rc == 0 || rc == AB_EMALFORMED);
        if (rc != 0)
            assert_true(strlen(why) > 0);
    }
}

static void
test_wrong_version(void **state)
{
    (void)state;
    uint8_t buf[512];
    int n = encode_call(buf, sizeof buf, 7);
    ab_header_t *h = NULL;
    char why[AB_WHY_LEN];
    assert_int_equal(ab_wire_decode(D, buf, (size_t)n, &h, why), AB_EMALFORMED);
    assert_non_null(strstr(why, "version"));
    assert_non_null(strstr(why, "7"));
}

static void
test_bad_fields(void **state)
{
    (void)state;
    uint8_t buf[AB_MAX_HEADER_BYTES];
    ab_header_t *out = NULL;
    char why[AB_WHY_LEN];
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = 1;
    h.kind = 99;
    int n = ab_wire_encode(&h, buf, sizeof buf);
    assert_int_equal(ab_wire_decode(D, buf, (size_t)n, &out, why), AB_EMALFORMED);
    assert_non_null(strstr(why, "kind"));

    h.kind = AMTSBOTE__V1__KIND__KIND_CALL;
    uint8_t id[5] = {1, 2, 3, 4, 5};
    h.message_id.data = id;
    h.message_id.len = 5;
    n = ab_wire_encode(&h, buf, sizeof buf);
    assert_int_equal(ab_wire_decode(D, buf, (size_t)n, &out, why), AB_EMALFORMED);
    assert_non_null(strstr(why, "message_id"));

    h.message_id.len = 0;
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    h.service = longname;
    n = ab_wire_encode(&h, buf, sizeof buf);
    assert_int_equal(ab_wire_decode(D, buf, (size_t)n, &out, why), AB_EMALFORMED);
    assert_non_null(strstr(why, "'service'"));
}

static void
test_utf8(void **state)
{
    (void)state;
    assert_true(ab_utf8_valid("BMG §34 – Übermittlung", strlen("BMG §34 – Übermittlung")));
    const char *bad[] = {"\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf5\x80\x80\x80",
                         "a\xff"
                         "b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(ab_utf8_valid(bad[i], strlen(bad[i])));
    char out[16];
    ab_utf8_sanitize(out, sizeof out,
                     "a\xff"
                     "b\nc\xc3\xa4");
    assert_string_equal(out, "a?b c\xc3\xa4");
    ab_utf8_sanitize(out, 4, "ab\xc3\xa4"); /* never cuts a sequence in half */
    assert_string_equal(out, "ab");

    /* a header whose purpose is not UTF-8 is refused, naming the field */
    uint8_t buf[256];
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = 1;
    h.kind = AMTSBOTE__V1__KIND__KIND_CALL;
    h.purpose = "BMG \xa7"
                "34";
    int n = ab_wire_encode(&h, buf, sizeof buf);
    ab_header_t *out_h = NULL;
    char why[AB_WHY_LEN];
    assert_int_equal(ab_wire_decode(D, buf, (size_t)n, &out_h, why), AB_EMALFORMED);
    assert_non_null(strstr(why, "'purpose' is not valid UTF-8"));
}

static void
test_many_map_entries_fit_arena(void **state)
{
    (void)state;
    /* the worst case for the arena: a frame full of empty map entries (field 12, length 0) */
    uint8_t buf[AB_MAX_HEADER_BYTES];
    size_t n = 0;
    buf[n++] = 0x08; /* version = 1 */
    buf[n++] = 0x01;
    buf[n++] = 0x10; /* kind = CALL */
    buf[n++] = 0x02;
    while (n + 2 <= sizeof buf) {
        buf[n++] = 0x62;
        buf[n++] = 0x00;
    }
    ab_header_t *h = NULL;
    char why[AB_WHY_LEN];
    assert_int_equal(ab_wire_decode(D, buf, n, &h, why), 0);
    assert_true(h->n_headers > 4000);
}

static void
test_service_names(void **state)
{
    (void)state;
    char why[AB_WHY_LEN];
    assert_int_equal(
        ab_wire_check_service("meldewesen.v1.Melderegister/Meldebescheinigung", 0, why), 0);
    assert_int_equal(ab_wire_check_service("meldewesen.v1.Melderegister", 1, why), 0);
    assert_int_equal(ab_wire_check_service("meldewesen.v1.Melderegister", 0, why), AB_EINVAL);
    assert_non_null(strstr(why, "names no method"));
    const char *bad[] = {"",       "Svc/M",  "a..b/M",  "a.b/",   "a.b/M/N",
                         ".a.b/M", "a.b/1M", "a b.c/M", "a.b/M x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(ab_wire_check_service(bad[i], 1, why), AB_EINVAL);
}

static void
test_participants(void **state)
{
    (void)state;
    char why[AB_WHY_LEN];
    const char *good[] = {"bund.bmi", "land.by.stmi", "kommune.09162000.meldeamt", "a.b-c_d"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_int_equal(ab_wire_check_participant(good[i], why), 0);
    const char *bad[] = {"",         "bund",    "Bund.bmi", "bund..bmi",         ".bund.bmi",
                         "bund.",    "bund.-x", "bund.b*",  "a.b.c.d.e.f.g.h.i", "bund.ä",
                         "bund.b mi"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(ab_wire_check_participant(bad[i], why), AB_EINVAL);
        assert_non_null(strstr(why, "participant address"));
    }
}

/* Found by fuzz_wire and fuzz_cert: a refusal quoted the first 200 bytes of the name, which cut
 * a UTF-8 sequence in half (and passed on invalid bytes and newlines of a certificate's SAN), so
 * the error text a client got in error.text was not UTF-8 and its decoder refused the frame. */
static void
test_refusal_quotes_valid_utf8(void **state)
{
    (void)state;
    char name[AB_MAX_NAME + 1], why[AB_WHY_LEN];
    name[0] = 'a';
    for (size_t i = 1; i + 1 < AB_MAX_NAME; i += 2)
        memcpy(name + i, "\xc3\xa9", 2); /* é: byte 199 starts a sequence */
    name[AB_MAX_NAME] = '\0';
    assert_true(ab_utf8_valid(name, strlen(name)));
    assert_int_equal(ab_wire_check_service(name, 0, why), AB_EINVAL);
    assert_true(ab_utf8_valid(why, strlen(why)));
    assert_non_null(strstr(why, "service name 'a\xc3\xa9"));
    assert_int_equal(ab_wire_check_participant(name, why), AB_EINVAL);
    assert_true(ab_utf8_valid(why, strlen(why)));
    assert_non_null(strstr(why, "participant address 'a\xc3\xa9"));

    assert_int_equal(ab_wire_check_participant("bund.\xff\nbmi", why), AB_EINVAL);
    assert_string_equal(why, "participant address 'bund.? bmi' is not of the form level.org[.unit] "
                             "(lower-case letters, digits, '-', '_')");
    assert_int_equal(ab_wire_check_service("a.B\x01/\xc3", 1, why), AB_EINVAL);
    assert_string_equal(why, "service name 'a.B /?' is not of the form package.Service[/Method]");
}

static void
test_uuid7(void **state)
{
    (void)state;
    uint8_t a[16], b[16];
    ab_uuid7(a);
    ab_uuid7(b);
    assert_int_equal(a[6] >> 4, 7);
    assert_int_equal(a[8] >> 6, 2);
    assert_memory_not_equal(a, b, 16);
    assert_true(memcmp(a, b, 6) <= 0); /* time-ordered */
    char hex[33];
    ab_hex(a, 16, hex);
    assert_int_equal(strlen(hex), 32);
}

static void
test_uuid7_fork_does_not_repeat(void **state)
{
    (void)state;
    uint8_t first[16], parent[16], child[16];
    ab_uuid7(first); /* the parent now holds a block of random bits */
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    if (pid == 0) {
        ab_uuid7(child);
        ssize_t w = write(p[1], child, sizeof child);
        _exit(w == (ssize_t)sizeof child ? 0 : 1);
    }
    ab_uuid7(parent);
    assert_int_equal(read(p[0], child, sizeof child), (ssize_t)sizeof child);
    int st;
    waitpid(pid, &st, 0);
    close(p[0]);
    close(p[1]);
    assert_memory_not_equal(parent + 6, child + 6, 10);
}

static void
test_error_names(void **state)
{
    (void)state;
    assert_string_equal(ab_err_name(AB_EUNKNOWN_SERVICE), "UNKNOWN_SERVICE");
    assert_string_equal(ab_err_name(0), "OK");
    assert_string_equal(ab_err_name(-999), "UNKNOWN_ERROR");
    assert_string_equal(ab_strerror(-999), "unknown error");
    int codes[] = {AB_EUNKNOWN_SERVICE, AB_EDEADLINE,    AB_EPROVIDER_GONE, AB_EMALFORMED,
                   AB_ETOO_LARGE,       AB_EUNAVAILABLE, AB_EPROVIDER,      AB_EINVAL};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        assert_int_equal(ab_err_from_wire(ab_err_to_wire(codes[i])), codes[i]);
    assert_string_equal(ab_kind_name(AMTSBOTE__V1__KIND__KIND_CALL), "CALL");
    assert_string_equal(ab_kind_name(77), "UNKNOWN");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_encode_too_small),
        cmocka_unit_test(test_empty_and_oversize),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_random_bytes),
        cmocka_unit_test(test_wrong_version),
        cmocka_unit_test(test_bad_fields),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_many_map_entries_fit_arena),
        cmocka_unit_test(test_service_names),
        cmocka_unit_test(test_participants),
        cmocka_unit_test(test_refusal_quotes_valid_utf8),
        cmocka_unit_test(test_uuid7),
        cmocka_unit_test(test_uuid7_fork_does_not_repeat),
        cmocka_unit_test(test_error_names),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
