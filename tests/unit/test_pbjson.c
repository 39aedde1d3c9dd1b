/*
 * Unit tests for common/pbjson.c: the proto3 JSON mapping on protoc-c generated messages
 * (tests/unit/proto/jsontest3.proto and jsontest2.proto) and on copies of their descriptors
 * made to look like runtime ones (no message_init, no default for proto3 strings).
 *
 * Round trips go both ways: JSON -> bytes -> JSON gives the same text, and bytes -> JSON ->
 * bytes the same bytes. Every refusal is checked for its exact text, which names the field path
 * and never the value.
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
#include "google/protobuf/timestamp.pb-c.h"
#include "jsontest2.pb-c.h"
#include "jsontest3.pb-c.h"
#include "pbjson.h"

/* Allocation failure at the N-th malloc/calloc/realloc of this program (linked with --wrap;
 * jansson and protobuf-c are shared libraries and keep the real ones). 0: never. */
static long s_fail_at;
static long s_alloc_calls;

void *__real_malloc(size_t n);
void *__real_calloc(size_t k, size_t n);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t k, size_t n);
void *__wrap_realloc(void *p, size_t n);

static int
s_alloc_fails(void)
{
    return s_fail_at > 0 && ++s_alloc_calls == s_fail_at;
}

void *
__wrap_malloc(size_t n)
{
    return s_alloc_fails() ? NULL : __real_malloc(n);
}

void *
__wrap_calloc(size_t k, size_t n)
{
    return s_alloc_fails() ? NULL : __real_calloc(k, n);
}

void *
__wrap_realloc(void *p, size_t n)
{
    return s_alloc_fails() ? NULL : __real_realloc(p, n);
}

static const ProtobufCMessageDescriptor *const ALLES = &jsontest__v3__alles__descriptor;
static const ProtobufCMessageDescriptor *const SKALARE = &jsontest__v3__skalare__descriptor;
static const ProtobufCMessageDescriptor *const PFLICHT = &jsontest__v2__pflicht__descriptor;
static const ProtobufCMessageDescriptor *const KNOTEN = &jsontest__v3__knoten__descriptor;

/* JSON -> bytes, which must succeed. */
static uint8_t *
s_pb(const ProtobufCMessageDescriptor *d, const char *json, size_t *n)
{
    char err[1024];
    uint8_t *out = NULL;
    int rc = ab_json_to_pb(d, json, strlen(json), &out, n, err, sizeof err);
    if (rc != 0)
        print_error("ab_json_to_pb: %s\n  for %s\n", err, json);
    assert_int_equal(rc, 0);
    assert_non_null(out);
    return out;
}

/* bytes -> JSON, which must succeed. */
static char *
s_json(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t n, int flags)
{
    char err[1024];
    char *out = NULL;
    int rc = ab_pb_to_json(d, data, n, flags, &out, err, sizeof err);
    if (rc != 0)
        print_error("ab_pb_to_json: %s\n", err);
    assert_int_equal(rc, 0);
    assert_non_null(out);
    return out;
}

/* JSON -> bytes -> JSON gives `want` (the input when NULL), and that JSON -> bytes gives the
 * same bytes again. */
static void
s_round(const ProtobufCMessageDescriptor *d, const char *json, const char *want)
{
    size_t n1, n2;
    uint8_t *b1 = s_pb(d, json, &n1);
    char *j1 = s_json(d, b1, n1, 0);
    assert_string_equal(j1, want != NULL ? want : json);
    uint8_t *b2 = s_pb(d, j1, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(b1, b2, n1);
    /* the pretty form reads back to the same bytes too */
    char *p = s_json(d, b1, n1, AB_JSON_PRETTY);
    free(b2);
    b2 = s_pb(d, p, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(b1, b2, n1);
    free(p);
    free(b1);
    free(b2);
    free(j1);
}

/* JSON that is refused with exactly `want`. */
static void
s_refused(const ProtobufCMessageDescriptor *d, const char *json, const char *want)
{
    char err[1024] = "untouched";
    uint8_t *out = (uint8_t *)"x";
    size_t n = 99;
    int rc = ab_json_to_pb(d, json, strlen(json), &out, &n, err, sizeof err);
    if (rc == 0)
        print_error("accepted: %s\n", json);
    assert_int_equal(rc, AB_EINVAL);
    assert_null(out);
    assert_int_equal(n, 0);
    assert_string_equal(err, want);
}

/* ---- every field kind ---- */

static const char ALLES_JSON[] =
    "{\"skalare\":{\"fInt32\":-5,\"fInt64\":\"-9223372036854775808\",\"fUint32\":4294967295,"
    "\"fUint64\":\"18446744073709551615\",\"fSint32\":-2147483648,"
    "\"fSint64\":\"9223372036854775807\",\"fFixed32\":7,\"fFixed64\":\"18446744073709551615\","
    "\"fSfixed32\":-7,\"fSfixed64\":\"-9223372036854775808\",\"fFloat\":0.1,"
    "\"fDouble\":-2.5e-300,\"fBool\":true,\"fString\":\"Grüße \\\"zitiert\\\"\\n\\t\\\\\\u0001\","
    "\"fBytes\":\"AAH/\",\"fEnum\":\"FARBE_GRUEN\"},"
    "\"rInt32\":[1,-1,2147483647],\"rInt64\":[\"1\",\"-2\"],"
    "\"rUint64\":[\"0\",\"18446744073709551615\"],\"rSint32\":[-3,3],\"rFixed64\":[\"5\"],"
    "\"rFloat\":[1.5,-0.25,\"NaN\",\"Infinity\",\"-Infinity\",3.4028235e+38],"
    "\"rDouble\":[1e+300,0.0000001,123456.789,1e+21,100,-0.0,5e-324],"
    "\"rBool\":[true,false],\"rString\":[\"a\",\"\"],\"rBytes\":[\"\",\"AQID\"],"
    "\"rEnum\":[\"FARBE_ROT\",\"FARBE_NEGATIV\",7],\"rStufe\":[\"STUFE_ZWEI\"],"
    "\"rAdresse\":[{\"strasse\":\"Hauptstr. 1\",\"plz\":\"80331\",\"zeilen\":[\"a\",\"b\"]},{}],"
    "\"rUnpacked\":[1,2],"
    "\"stufe\":\"STUFE_EINS\","
    "\"antwort\":{\"adressen\":[{\"plz\":\"1\"}],\"hauptAdresse\":{}},"
    "\"oZahl\":\"0\","
    "\"mAdressen\":{\"zuhause\":{\"plz\":\"1\"},\"\":{}},"
    "\"mInt32\":{\"-1\":\"minus\",\"0\":\"\",\"2147483647\":\"max\"},"
    "\"mBool\":{\"true\":0,\"false\":1},"
    "\"mUint64\":{\"18446744073709551615\":\"FARBE_ROT\",\"0\":\"FARBE_UNSPECIFIED\"},"
    "\"mSint64\":{\"-9223372036854775808\":\"AQ==\"},"
    "\"mValue\":{\"n\":null,\"z\":1.5,\"s\":\"x\",\"b\":false,\"o\":{\"k\":[1,\"2\",null]},"
    "\"l\":[]},"
    "\"zeit\":\"1972-01-01T10:00:20.021Z\",\"dauer\":\"-1.500s\","
    "\"zeiten\":[\"0001-01-01T00:00:00Z\",\"9999-12-31T23:59:59.999999999Z\","
    "\"1970-01-01T00:00:00.000001Z\"],"
    "\"wInt32\":0,\"wInt64\":\"-1\",\"wUint32\":4294967295,\"wUint64\":\"0\","
    "\"wFloat\":\"NaN\",\"wDouble\":0.5,\"wBool\":false,\"wString\":\"\",\"wBytes\":\"AA==\","
    "\"wStrings\":[\"x\",\"\"],"
    "\"leer\":{},\"struktur\":{\"a\":{\"b\":[true,null]}},\"wert\":[1,{\"x\":\"y\"}],"
    "\"liste\":[\"q\",2],"
    "\"zweiUnterstriche9x\":9}";

static void
test_every_field_kind_round_trip(void **state)
{
    (void)state;
    s_round(ALLES, ALLES_JSON, NULL);
    s_round(ALLES, "{}", NULL);

    /* the bytes carry what the JSON said */
    size_t n;
    uint8_t *b = s_pb(ALLES, ALLES_JSON, &n);
    Jsontest__V3__Alles *a = jsontest__v3__alles__unpack(NULL, n, b);
    assert_non_null(a);
    assert_int_equal(a->skalare->f_int64, INT64_MIN);
    assert_true(a->skalare->f_uint64 == UINT64_MAX);
    assert_int_equal(a->skalare->f_enum, JSONTEST__V3__FARBE__FARBE_GRUEN);
    assert_int_equal(a->skalare->f_bytes.len, 3);
    assert_memory_equal(a->skalare->f_bytes.data, "\x00\x01\xff", 3);
    assert_string_equal(a->skalare->f_string, "Grüße \"zitiert\"\n\t\\\x01");
    assert_int_equal(a->n_r_enum, 3);
    assert_int_equal(a->r_enum[1], -3);
    assert_int_equal(a->r_enum[2], 7);
    assert_int_equal(a->auswahl_case, JSONTEST__V3__ALLES__AUSWAHL_O_ZAHL);
    assert_int_equal(a->zeit->seconds, 63108020);
    assert_int_equal(a->zeit->nanos, 21000000);
    assert_int_equal(a->dauer->seconds, -1);
    assert_int_equal(a->dauer->nanos, -500000000);
    assert_non_null(a->w_int32);
    assert_int_equal(a->w_int32->value, 0);
    assert_int_equal(a->zwei__unterstriche_9x, 9);
    assert_int_equal(a->n_m_int32, 3);
    assert_int_equal(a->m_int32[0]->key, -1);
    assert_string_equal(a->m_int32[0]->value, "minus");
    jsontest__v3__alles__free_unpacked(a, NULL);
    free(b);
}

static void
test_generated_struct_to_json(void **state)
{
    (void)state;
    Jsontest__V3__Skalare s = JSONTEST__V3__SKALARE__INIT;
    s.f_int32 = 42;
    s.f_uint64 = UINT64_MAX;
    s.f_double = 0.1;
    s.f_float = 0.1f;
    s.f_string = "x";
    size_t n = jsontest__v3__skalare__get_packed_size(&s);
    uint8_t *b = malloc(n);
    jsontest__v3__skalare__pack(&s, b);
    char *j = s_json(SKALARE, b, n, 0);
    assert_string_equal(j, "{\"fInt32\":42,\"fUint64\":\"18446744073709551615\",\"fFloat\":0.1,"
                           "\"fDouble\":0.1,\"fString\":\"x\"}");
    size_t n2;
    uint8_t *b2 = s_pb(SKALARE, j, &n2);
    assert_int_equal(n, n2);
    assert_memory_equal(b, b2, n);
    free(j);
    free(b);
    free(b2);

    /* pretty */
    b = s_pb(ALLES, "{\"rInt32\":[1,2],\"antwort\":{\"hauptAdresse\":{}},\"mInt32\":{\"1\":\"a\"}}",
             &n);
    j = s_json(ALLES, b, n, AB_JSON_PRETTY);
    assert_string_equal(j, "{\n"
                           "  \"rInt32\": [\n"
                           "    1,\n"
                           "    2\n"
                           "  ],\n"
                           "  \"antwort\": {\n"
                           "    \"hauptAdresse\": {}\n"
                           "  },\n"
                           "  \"mInt32\": {\n"
                           "    \"1\": \"a\"\n"
                           "  }\n"
                           "}");
    free(j);
    free(b);
}

/* ---- names, null, defaults ---- */

static void
test_proto_names_and_null(void **state)
{
    (void)state;
    /* the proto name is accepted as well as the JSON name; output uses the JSON name */
    s_round(SKALARE, "{\"f_int32\":1,\"f_string\":\"a\"}", "{\"fInt32\":1,\"fString\":\"a\"}");
    s_round(ALLES, "{\"zwei__unterstriche_9x\":1}", "{\"zweiUnterstriche9x\":1}");
    s_refused(SKALARE, "{\"fInt32\":1,\"f_int32\":2}",
              "field `fInt32`: given twice (by its JSON name and by its proto name)");

    /* null is the default: nothing set, nothing printed */
    s_round(ALLES,
            "{\"skalare\":null,\"rInt32\":null,\"mInt32\":null,\"stufe\":null,\"zeit\":null,"
            "\"wInt32\":null,\"oText\":null,\"oZahl\":\"3\",\"leer\":null}",
            "{\"oZahl\":\"3\"}");
    s_round(SKALARE,
            "{\"fInt32\":null,\"fString\":null,\"fBytes\":null,\"fEnum\":null,\"fBool\":null,"
            "\"fDouble\":null}",
            "{}");
    /* proto3 defaults are not printed */
    s_round(SKALARE,
            "{\"fInt32\":0,\"fInt64\":\"0\",\"fString\":\"\",\"fBytes\":\"\",\"fEnum\":"
            "\"FARBE_UNSPECIFIED\",\"fBool\":false,\"fDouble\":0,\"fFloat\":0}",
            "{}");
    /* ... but a message field, a oneof member and a wrapper are, even when empty or zero */
    s_round(ALLES, "{\"antwort\":{},\"oText\":\"\",\"wBool\":false,\"wString\":\"\"}", NULL);
    /* null is a value where the type says so */
    s_round(ALLES, "{\"wert\":null}", NULL);
    s_round(ALLES, "{\"nichts\":null}", "{}");
    s_refused(ALLES, "{\"rInt32\":[1,null]}",
              "field `rInt32[1]`: null is not allowed in a repeated field");
    s_refused(ALLES, "{\"mInt32\":{\"1\":null}}",
              "field `mInt32{#0}`: null is not allowed as a map value");
}

static void
test_unknown_fields_and_type_mismatch(void **state)
{
    (void)state;
    s_refused(ALLES, "{\"antwort\":{\"adressen\":[{},{},{\"plzz\":\"1\"}]}}",
              "unknown field `antwort.adressen[2].plzz` in message jsontest.v3.Adresse");
    s_refused(ALLES, "{\"bogus\":1}", "unknown field `bogus` in message jsontest.v3.Alles");
    s_refused(ALLES, "{\"FInt32\":1}", "unknown field `FInt32` in message jsontest.v3.Alles");
    /* an unprintable or long key is shown shortened, not verbatim */
    s_refused(ALLES, "{\"a\\u0001b`c\":1}", "unknown field `a?b?c` in message jsontest.v3.Alles");
    s_refused(ALLES, "{\"mAdressen\":{\"k\":{\"x\":1}}}",
              "unknown field `mAdressen{#0}.x` in message jsontest.v3.Adresse");

    s_refused(ALLES, "{\"antwort\":{\"adressen\":[{},{},{\"plz\":80331}]}}",
              "field `antwort.adressen[2].plz`: expected string, got number");
    s_refused(ALLES, "{\"antwort\":{\"adressen\":{}}}",
              "field `antwort.adressen`: expected array, got object");
    s_refused(ALLES, "{\"antwort\":[]}",
              "field `antwort`: expected object (message jsontest.v3.Antwort), got array");
    s_refused(ALLES, "[]",
              "jsontest.v3.Alles: expected object (message jsontest.v3.Alles), "
              "got array");
    s_refused(SKALARE, "{\"fBool\":\"true\"}", "field `fBool`: expected boolean, got string");
    s_refused(SKALARE, "{\"fBool\":1}", "field `fBool`: expected boolean, got number");
    s_refused(SKALARE, "{\"fInt32\":true}", "field `fInt32`: expected number, got boolean");
    s_refused(SKALARE, "{\"fDouble\":{}}", "field `fDouble`: expected number, got object");
    s_refused(SKALARE, "{\"fString\":[]}", "field `fString`: expected string, got array");
    s_refused(SKALARE, "{\"fString\":\"a\\u0000b\"}",
              "field `fString`: string contains a NUL character");
    s_refused(SKALARE, "{\"fBytes\":5}", "field `fBytes`: expected string (base64), got number");
    s_refused(ALLES, "{\"mInt32\":[]}", "field `mInt32`: expected object, got array");
    s_refused(ALLES, "{\"rAdresse\":[{},5]}",
              "field `rAdresse[1]`: expected object (message jsontest.v3.Adresse), got number");
}

/* ---- numbers ---- */

static void
test_integers(void **state)
{
    (void)state;
    s_round(SKALARE,
            "{\"fInt32\":-2147483648,\"fInt64\":\"9223372036854775807\",\"fUint32\":4294967295,"
            "\"fUint64\":\"18446744073709551615\",\"fSint32\":2147483647,"
            "\"fSint64\":\"-9223372036854775808\",\"fFixed32\":4294967295,"
            "\"fFixed64\":\"18446744073709551615\",\"fSfixed32\":-2147483648,"
            "\"fSfixed64\":\"9223372036854775807\"}",
            NULL);
    /* 64-bit from numbers, 32-bit from strings, integral reals */
    s_round(SKALARE,
            "{\"fInt32\":\"-12\",\"fInt64\":-9223372036854775808,\"fUint32\":\"7\","
            "\"fUint64\":18446744073709551615,\"fFixed64\":12345678901234567890,"
            "\"fSfixed64\":-9223372036854775807,\"fSint32\":1.0,\"fFixed32\":1e3}",
            "{\"fInt32\":-12,\"fInt64\":\"-9223372036854775808\",\"fUint32\":7,"
            "\"fUint64\":\"18446744073709551615\",\"fSint32\":1,\"fFixed32\":1000,"
            "\"fFixed64\":\"12345678901234567890\",\"fSfixed64\":\"-9223372036854775807\"}");
    /* a 33-bit value into int32 */
    s_refused(SKALARE, "{\"fInt32\":4294967296}", "field `fInt32`: value out of range for int32");
    s_refused(SKALARE, "{\"fInt32\":2147483648}", "field `fInt32`: value out of range for int32");
    s_refused(SKALARE, "{\"fSint32\":\"-2147483649\"}",
              "field `fSint32`: value out of range for sint32");
    s_refused(SKALARE, "{\"fUint32\":-1}", "field `fUint32`: value out of range for uint32");
    s_refused(SKALARE, "{\"fFixed32\":4294967296}",
              "field `fFixed32`: value out of range for fixed32");
    s_refused(SKALARE, "{\"fInt64\":\"9223372036854775808\"}",
              "field `fInt64`: value out of range for int64");
    s_refused(SKALARE, "{\"fInt64\":-9223372036854775809}",
              "field `fInt64`: value out of range for int64");
    s_refused(SKALARE, "{\"fUint64\":\"18446744073709551616\"}",
              "field `fUint64`: value out of range for uint64");
    s_refused(SKALARE, "{\"fUint64\":18446744073709551616}",
              "field `fUint64`: value out of range for uint64");
    s_refused(SKALARE, "{\"fUint64\":\"-1\"}", "field `fUint64`: value out of range for uint64");
    s_refused(SKALARE, "{\"fInt32\":1.5}", "field `fInt32`: number is not an integer (int32)");
    s_refused(SKALARE, "{\"fInt64\":\"1.5\"}", "field `fInt64`: string is not an integer (int64)");
    s_refused(SKALARE, "{\"fInt64\":\" 1\"}", "field `fInt64`: string is not an integer (int64)");
    s_refused(SKALARE, "{\"fInt64\":\"\"}", "field `fInt64`: string is not an integer (int64)");
    s_refused(SKALARE, "{\"fInt64\":1e30}", "field `fInt64`: value out of range for int64");
    s_refused(ALLES, "{\"rInt32\":[1,2,3000000000]}",
              "field `rInt32[2]`: value out of range for int32");
}

static void
test_floats(void **state)
{
    (void)state;
    s_round(SKALARE, "{\"fFloat\":\"NaN\",\"fDouble\":\"-Infinity\"}", NULL);
    s_round(SKALARE, "{\"fFloat\":\"Infinity\",\"fDouble\":\"NaN\"}", NULL);
    s_round(SKALARE, "{\"fFloat\":\"-Infinity\",\"fDouble\":\"Infinity\"}", NULL);
    /* protobuf-c's packer takes -0.0 for the proto3 default (repeated keeps it: ALLES_JSON) */
    s_round(SKALARE, "{\"fFloat\":-0.0,\"fDouble\":-0.0}", "{}");
    /* -0.0 on the wire (another encoder wrote it) prints as the default too, as protobuf-c
     * would not pack it again: printing, reading back and printing gives the same text
     * (found by tests/fuzz/fuzz_schema_payload) */
    {
        static const uint8_t neg_zero[] = {0x5d, 0, 0, 0, 0x80,                 /* fFloat */
                                           0x61, 0, 0, 0, 0,    0, 0, 0, 0x80}; /* fDouble */
        char *j = s_json(SKALARE, neg_zero, sizeof neg_zero, 0);
        assert_string_equal(j, "{}");
        free(j);
    }
    s_round(SKALARE, "{\"fFloat\":1.1754944e-38,\"fDouble\":1.7976931348623157e+308}", NULL);
    s_round(SKALARE, "{\"fFloat\":16777216,\"fDouble\":9007199254740993}",
            "{\"fFloat\":16777216,\"fDouble\":9007199254740992}");
    /* numeric strings */
    s_round(SKALARE, "{\"fFloat\":\"2.5\",\"fDouble\":\"-1e-5\"}",
            "{\"fFloat\":2.5,\"fDouble\":-0.00001}");
    s_refused(SKALARE, "{\"fFloat\":1e39}", "field `fFloat`: value out of range for float");
    s_refused(SKALARE, "{\"fDouble\":\"1e999\"}", "field `fDouble`: value out of range for double");
    s_refused(SKALARE, "{\"fDouble\":\"nan\"}", "field `fDouble`: string is not a number (double)");
    s_refused(SKALARE, "{\"fDouble\":\"0x10\"}",
              "field `fDouble`: string is not a number (double)");
    s_refused(SKALARE, "{\"fFloat\":\"inf\"}", "field `fFloat`: string is not a number (float)");
}

/* ---- enums, bytes ---- */

static void
test_enums(void **state)
{
    (void)state;
    s_round(SKALARE, "{\"fEnum\":2}", "{\"fEnum\":\"FARBE_GRUEN\"}");
    s_round(SKALARE, "{\"fEnum\":-3}", "{\"fEnum\":\"FARBE_NEGATIV\"}");
    /* an unknown number in an open enum is kept and printed as a number */
    s_round(SKALARE, "{\"fEnum\":99}", NULL);
    s_round(ALLES, "{\"rStufe\":[1,\"STUFE_ZWEI\",0]}",
            "{\"rStufe\":[\"STUFE_EINS\",\"STUFE_ZWEI\",\"STUFE_UNSPECIFIED\"]}");
    s_refused(SKALARE, "{\"fEnum\":\"FARBE_LILA\"}",
              "field `fEnum`: unknown name for enum jsontest.v3.Farbe");
    s_refused(SKALARE, "{\"fEnum\":\"2\"}",
              "field `fEnum`: unknown name for enum jsontest.v3.Farbe");
    s_refused(SKALARE, "{\"fEnum\":\"farbe_rot\"}",
              "field `fEnum`: unknown name for enum jsontest.v3.Farbe");
    s_refused(SKALARE, "{\"fEnum\":2147483648}", "field `fEnum`: value out of range for enum");
    s_refused(SKALARE, "{\"fEnum\":true}",
              "field `fEnum`: expected string or number (enum jsontest.v3.Farbe), got boolean");
    s_refused(ALLES, "{\"stufe\":\"FARBE_ROT\"}",
              "field `stufe`: unknown name for enum jsontest.v3.Alles.Stufe");
}

static void
test_bytes_base64(void **state)
{
    (void)state;
    /* standard, URL-safe, with and without padding all read; standard padded is written */
    s_round(SKALARE, "{\"fBytes\":\"+/+/\"}", NULL);
    s_round(SKALARE, "{\"fBytes\":\"-_-_\"}", "{\"fBytes\":\"+/+/\"}");
    s_round(SKALARE, "{\"fBytes\":\"YQ==\"}", NULL);
    s_round(SKALARE, "{\"fBytes\":\"YQ\"}", "{\"fBytes\":\"YQ==\"}");
    s_round(SKALARE, "{\"fBytes\":\"YWI=\"}", NULL);
    s_round(SKALARE, "{\"fBytes\":\"YWI\"}", "{\"fBytes\":\"YWI=\"}");
    s_round(SKALARE, "{\"fBytes\":\"YWJj\"}", NULL);
    s_round(SKALARE, "{\"fBytes\":\"_-8\"}", "{\"fBytes\":\"/+8=\"}");
    size_t n;
    uint8_t *b = s_pb(SKALARE, "{\"fBytes\":\"AP8A_w\"}", &n);
    Jsontest__V3__Skalare *s = jsontest__v3__skalare__unpack(NULL, n, b);
    assert_int_equal(s->f_bytes.len, 4);
    assert_memory_equal(s->f_bytes.data, "\x00\xff\x00\xff", 4);
    jsontest__v3__skalare__free_unpacked(s, NULL);
    free(b);
    s_refused(SKALARE, "{\"fBytes\":\"YQ=\"}", "field `fBytes`: string is not base64");
    s_refused(SKALARE, "{\"fBytes\":\"Y\"}", "field `fBytes`: string is not base64");
    s_refused(SKALARE, "{\"fBytes\":\"YW J\"}", "field `fBytes`: string is not base64");
    s_refused(SKALARE, "{\"fBytes\":\"Y=Q=\"}", "field `fBytes`: string is not base64");
    s_refused(SKALARE, "{\"fBytes\":\"YQ===\"}", "field `fBytes`: string is not base64");
    s_refused(ALLES, "{\"rBytes\":[\"\",\"*\"]}", "field `rBytes[1]`: string is not base64");
}

/* ---- maps ---- */

static void
test_maps(void **state)
{
    (void)state;
    s_round(ALLES, "{\"mBool\":{\"false\":0}}", NULL);
    s_round(ALLES, "{\"mSint64\":{\"9223372036854775807\":\"\",\"-1\":\"AA==\"}}", NULL);
    s_refused(ALLES, "{\"mInt32\":{\"1\":\"a\",\"01\":\"b\"}}",
              "field `mInt32{#1}`: map key is not a decimal integer (int32)");
    s_refused(ALLES, "{\"mInt32\":{\"-0\":\"b\"}}",
              "field `mInt32{#0}`: map key is not a decimal integer (int32)");
    s_refused(ALLES, "{\"mInt32\":{\"x\":\"b\"}}",
              "field `mInt32{#0}`: map key is not a decimal integer (int32)");
    s_refused(ALLES, "{\"mInt32\":{\"2147483648\":\"b\"}}",
              "field `mInt32{#0}`: map key out of range for int32");
    s_refused(ALLES, "{\"mUint64\":{\"-1\":0}}",
              "field `mUint64{#0}`: map key out of range for uint64");
    s_refused(ALLES, "{\"mBool\":{\"TRUE\":0}}",
              "field `mBool{#0}`: map key is not `true` or `false`");
    s_refused(ALLES, "{\"mInt32\":{\"1\":5}}", "field `mInt32{#0}`: expected string, got number");
    s_refused(ALLES, "{\"mAdressen\":{\"a\":{},\"b\":{\"plz\":[]}}}",
              "field `mAdressen{#1}.plz`: expected string, got array");

    /* on the wire a key may come twice; the last one counts, as in the binary parser */
    Jsontest__V3__Alles a = JSONTEST__V3__ALLES__INIT;
    Jsontest__V3__Alles__MInt32Entry e[3] = {JSONTEST__V3__ALLES__MINT32_ENTRY__INIT,
                                             JSONTEST__V3__ALLES__MINT32_ENTRY__INIT,
                                             JSONTEST__V3__ALLES__MINT32_ENTRY__INIT};
    Jsontest__V3__Alles__MInt32Entry *ep[3] = {&e[0], &e[1], &e[2]};
    e[0].key = 5;
    e[0].value = "alt";
    e[1].key = 6;
    e[1].value = "sechs";
    e[2].key = 5;
    e[2].value = "neu";
    a.n_m_int32 = 3;
    a.m_int32 = ep;
    size_t n = jsontest__v3__alles__get_packed_size(&a);
    uint8_t *b = malloc(n);
    jsontest__v3__alles__pack(&a, b);
    char *j = s_json(ALLES, b, n, 0);
    assert_string_equal(j, "{\"mInt32\":{\"6\":\"sechs\",\"5\":\"neu\"}}");
    free(j);
    free(b);
}

/* ---- oneof ---- */

static void
test_oneof(void **state)
{
    (void)state;
    s_round(ALLES, "{\"oText\":\"a\"}", NULL);
    s_round(ALLES, "{\"oAdresse\":{}}", NULL);
    s_round(ALLES, "{\"oFarbe\":\"FARBE_UNSPECIFIED\"}", NULL);
    s_round(ALLES, "{\"oText\":null,\"oAdresse\":{\"plz\":\"1\"}}",
            "{\"oAdresse\":{\"plz\":\"1\"}}");
    s_refused(ALLES, "{\"oText\":\"a\",\"oZahl\":\"1\"}",
              "fields `oText` and `oZahl` are members of one oneof; at most one may be set");
    s_refused(ALLES, "{\"oAdresse\":{},\"stufe\":1,\"o_text\":\"\"}",
              "fields `oAdresse` and `oText` are members of one oneof; at most one may be set");
    s_round(ALLES, "{\"rAdresse\":[]}", "{}");
}

/* ---- proto2: required, defaults, presence ---- */

static void
test_proto2(void **state)
{
    (void)state;
    const ProtobufCMessageDescriptor *d = PFLICHT;
    /* defaults are not printed; set fields are, even with the default's value */
    s_round(d, "{\"id\":0,\"name\":\"\"}", NULL);
    s_round(d,
            "{\"id\":1,\"name\":\"n\",\"zahl\":42,\"text\":\"voreinstellung\",\"daten\":\"YWJj\","
            "\"art\":\"ART_B\",\"kommazahl\":1.5,\"schalter\":true,\"teil\":{\"name\":\"t\"},"
            "\"teile\":[{\"name\":\"a\",\"menge\":0}],\"gross\":\"-5\",\"klein\":0.25,"
            "\"wZahl\":0,\"m\":{\"k\":0}}",
            NULL);
    s_round(d, "{\"id\":1,\"name\":\"n\",\"zahl\":null,\"text\":null,\"daten\":\"\"}",
            "{\"id\":1,\"name\":\"n\",\"daten\":\"\"}");

    /* defaults reach the decoded message when the JSON leaves a field out */
    size_t n;
    uint8_t *b = s_pb(d, "{\"id\":1,\"name\":\"n\"}", &n);
    Jsontest__V2__Pflicht *p = jsontest__v2__pflicht__unpack(NULL, n, b);
    assert_int_equal(p->has_zahl, 0);
    assert_int_equal(p->zahl, 42);
    assert_string_equal(p->text, "voreinstellung");
    jsontest__v2__pflicht__free_unpacked(p, NULL);
    free(b);
    b = s_pb(d, "{\"id\":1,\"name\":\"n\",\"zahl\":42,\"text\":\"voreinstellung\"}", &n);
    p = jsontest__v2__pflicht__unpack(NULL, n, b);
    assert_int_equal(p->has_zahl, 1);
    assert_int_equal(p->zahl, 42);
    jsontest__v2__pflicht__free_unpacked(p, NULL);
    free(b);

    s_refused(d, "{\"id\":1}", "missing required field `name` in message jsontest.v2.Pflicht");
    s_refused(d, "{\"name\":\"x\"}", "missing required field `id` in message jsontest.v2.Pflicht");
    s_refused(d, "{\"id\":1,\"name\":null}",
              "missing required field `name` in message jsontest.v2.Pflicht");
    s_refused(d, "{\"id\":1,\"name\":\"x\",\"teile\":[{\"name\":\"a\"},{\"menge\":1}]}",
              "missing required field `teile[1].name` in message jsontest.v2.Teil");
    s_refused(d, "{\"id\":1,\"name\":\"x\",\"teil\":{}}",
              "missing required field `teil.name` in message jsontest.v2.Teil");
    s_refused(d, "{\"id\":1,\"name\":\"x\",\"wText\":\"\",\"wZahl\":1}",
              "fields `wText` and `wZahl` are members of one oneof; at most one may be set");
    s_refused(d, "{\"id\":1,\"name\":\"x\",\"art\":\"ART_C\"}",
              "field `art`: unknown name for enum jsontest.v2.Art");
}

/* ---- well-known types ---- */

static void
test_timestamps(void **state)
{
    (void)state;
    s_round(ALLES, "{\"zeit\":\"1972-01-01T10:00:20.021Z\"}", NULL);
    s_round(ALLES, "{\"zeit\":\"1970-01-01T00:00:00Z\"}", NULL);
    s_round(ALLES, "{\"zeit\":\"1969-12-31T23:59:59.999999999Z\"}", NULL);
    s_round(ALLES, "{\"zeit\":\"2000-02-29T12:00:00.100Z\"}", NULL);
    s_round(ALLES, "{\"zeit\":\"2024-12-31T23:59:59.000100Z\"}", NULL);
    /* 0, 3, 6 or 9 digits out, whatever came in */
    s_round(ALLES, "{\"zeit\":\"2001-02-03T04:05:06.5Z\"}",
            "{\"zeit\":\"2001-02-03T04:05:06.500Z\"}");
    s_round(ALLES, "{\"zeit\":\"2001-02-03T04:05:06.1234Z\"}",
            "{\"zeit\":\"2001-02-03T04:05:06.123400Z\"}");
    s_round(ALLES, "{\"zeit\":\"2001-02-03T04:05:06.000000000Z\"}",
            "{\"zeit\":\"2001-02-03T04:05:06Z\"}");
    s_round(ALLES, "{\"zeit\":\"2001-02-03T04:05:06.12345678Z\"}",
            "{\"zeit\":\"2001-02-03T04:05:06.123456780Z\"}");
    /* offsets are turned into UTC */
    s_round(ALLES, "{\"zeit\":\"1972-01-01T11:00:20.021+01:00\"}",
            "{\"zeit\":\"1972-01-01T10:00:20.021Z\"}");
    s_round(ALLES, "{\"zeit\":\"1971-12-31T23:30:00-10:30\"}",
            "{\"zeit\":\"1972-01-01T10:00:00Z\"}");
    s_round(ALLES, "{\"zeit\":\"0001-01-01T01:00:00+01:00\"}",
            "{\"zeit\":\"0001-01-01T00:00:00Z\"}");
    s_round(ALLES, "{\"zeit\":\"9999-12-31T22:59:59-01:00\"}",
            "{\"zeit\":\"9999-12-31T23:59:59Z\"}");

    const char *bad[] = {"1972-01-01T10:00:20.021",
                         "1972-01-01 10:00:20Z",
                         "1972-1-01T10:00:20Z",
                         "1972-13-01T10:00:20Z",
                         "1971-02-29T10:00:20Z",
                         "1972-01-01T24:00:00Z",
                         "1972-01-01T10:00:60Z",
                         "1972-01-01T10:00:20.Z",
                         "1972-01-01T10:00:20.1234567891Z",
                         "1972-01-01T10:00:20+0100",
                         "1972-01-01T10:00:20Zx",
                         "1972-01-01T10:00:20z",
                         ""};
    char json[128];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(json, sizeof json, "{\"zeit\":\"%s\"}", bad[i]);
        s_refused(ALLES, json,
                  "field `zeit`: not an RFC 3339 time (like 1972-01-01T10:00:20.021Z)");
    }
    s_refused(ALLES, "{\"zeit\":\"0000-12-31T23:59:59Z\"}",
              "field `zeit`: time outside 0001-01-01 to 9999-12-31");
    s_refused(ALLES, "{\"zeit\":\"0001-01-01T00:00:00+00:01\"}",
              "field `zeit`: time outside 0001-01-01 to 9999-12-31");
    s_refused(ALLES, "{\"zeiten\":[\"2000-01-01T00:00:00Z\",\"9999-12-31T23:59:59-00:01\"]}",
              "field `zeiten[1]`: time outside 0001-01-01 to 9999-12-31");
    s_refused(ALLES, "{\"zeit\":1}", "field `zeit`: expected string (RFC 3339 time), got number");
    s_refused(ALLES, "{\"zeit\":{\"seconds\":1}}",
              "field `zeit`: expected string (RFC 3339 time), got object");

    /* out of range on the wire: refused on the way out, too */
    Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    Jsontest__V3__Alles a = JSONTEST__V3__ALLES__INIT;
    a.zeit = &ts;
    ts.seconds = 253402300800LL;
    uint8_t buf[64];
    size_t n = jsontest__v3__alles__pack(&a, buf);
    char err[256], *out = NULL;
    assert_int_equal(ab_pb_to_json(ALLES, buf, n, 0, &out, err, sizeof err), AB_EINVAL);
    assert_null(out);
    assert_string_equal(err, "field `zeit`: time outside 0001-01-01 to 9999-12-31");
    ts.seconds = 0;
    ts.nanos = -1;
    n = jsontest__v3__alles__pack(&a, buf);
    assert_int_equal(ab_pb_to_json(ALLES, buf, n, 0, &out, err, sizeof err), AB_EINVAL);

    /* a Timestamp on its own is a JSON string */
    s_round(&google__protobuf__timestamp__descriptor, "\"2020-06-01T00:00:00.123456789Z\"", NULL);
    s_refused(&google__protobuf__timestamp__descriptor, "{}",
              "google.protobuf.Timestamp: expected string (RFC 3339 time), got object");
}

static void
test_durations(void **state)
{
    (void)state;
    s_round(ALLES, "{\"dauer\":\"1.500s\"}", NULL);
    s_round(ALLES, "{\"dauer\":\"1.5s\"}", "{\"dauer\":\"1.500s\"}");
    s_round(ALLES, "{\"dauer\":\"-0.000000001s\"}", NULL);
    s_round(ALLES, "{\"dauer\":\"0s\"}", NULL);
    s_round(ALLES, "{\"dauer\":\"-315576000000.999999999s\"}", NULL);
    s_round(ALLES, "{\"dauer\":\"315576000000s\"}", NULL);
    s_round(ALLES, "{\"dauer\":\"3s\"}", NULL);
    s_refused(ALLES, "{\"dauer\":\"315576000001s\"}",
              "field `dauer`: duration outside +-315576000000s");
    s_refused(ALLES, "{\"dauer\":\"1.5\"}", "field `dauer`: not a duration (like 1.5s)");
    s_refused(ALLES, "{\"dauer\":\"s\"}", "field `dauer`: not a duration (like 1.5s)");
    s_refused(ALLES, "{\"dauer\":\"+1s\"}", "field `dauer`: not a duration (like 1.5s)");
    s_refused(ALLES, "{\"dauer\":\"1.s\"}", "field `dauer`: not a duration (like 1.5s)");
    s_refused(ALLES, "{\"dauer\":1.5}", "field `dauer`: expected string (duration), got number");
}

static void
test_wrappers_struct_value(void **state)
{
    (void)state;
    s_round(ALLES,
            "{\"wInt32\":-1,\"wInt64\":\"9223372036854775807\",\"wUint32\":0,"
            "\"wUint64\":\"18446744073709551615\",\"wFloat\":1.5,\"wDouble\":\"-Infinity\","
            "\"wBool\":true,\"wString\":\"s\",\"wBytes\":\"\"}",
            NULL);
    s_round(ALLES, "{\"wInt32\":\"5\",\"wBytes\":\"_w\"}", "{\"wInt32\":5,\"wBytes\":\"/w==\"}");
    s_refused(ALLES, "{\"wInt32\":{\"value\":1}}", "field `wInt32`: expected number, got object");
    s_refused(ALLES, "{\"wStrings\":[\"a\",1]}",
              "field `wStrings[1]`: expected string, got number");
    s_refused(ALLES, "{\"wUint32\":-1}", "field `wUint32`: value out of range for uint32");

    s_round(ALLES, "{\"leer\":{}}", NULL);
    s_refused(ALLES, "{\"leer\":{\"a\":1}}",
              "unknown field `leer.a` in message google.protobuf.Empty");
    s_refused(ALLES, "{\"leer\":[]}",
              "field `leer`: expected object (message google.protobuf.Empty), got array");

    s_round(ALLES, "{\"struktur\":{}}", NULL);
    s_round(ALLES,
            "{\"struktur\":{\"z\":-1.25,\"s\":\"\",\"t\":true,\"n\":null,\"l\":[[],{},[null]],"
            "\"o\":{\"p\":{}}}}",
            NULL);
    s_round(ALLES, "{\"wert\":\"text\"}", NULL);
    s_round(ALLES, "{\"wert\":{}}", NULL);
    s_round(ALLES, "{\"wert\":[]}", NULL);
    s_round(ALLES, "{\"wert\":0}", NULL);
    s_round(ALLES, "{\"wert\":18446744073709551615}", "{\"wert\":18446744073709552000}");
    s_round(ALLES, "{\"liste\":[]}", NULL);
    s_round(ALLES, "{\"liste\":[1,\"a\",null,false,{\"k\":[]}]}", NULL);
    s_refused(ALLES, "{\"struktur\":[]}", "field `struktur`: expected object, got array");
    s_refused(ALLES, "{\"liste\":{}}", "field `liste`: expected array, got object");
    s_round(ALLES, "{\"nichts\":0}", "{}");
    s_round(ALLES, "{\"nichts\":\"NULL_VALUE\"}", "{}");
}

static void
test_field_mask(void **state)
{
    (void)state;
    s_round(ALLES, "{\"maske\":\"\"}", NULL);
    s_round(ALLES, "{\"maske\":\"a.fooBar,b,haupt.adresseZwei\"}", NULL);
    size_t n;
    uint8_t *b = s_pb(ALLES, "{\"maske\":\"a.fooBar,b\"}", &n);
    Jsontest__V3__Alles *a = jsontest__v3__alles__unpack(NULL, n, b);
    assert_int_equal(a->maske->n_paths, 2);
    assert_string_equal(a->maske->paths[0], "a.foo_bar");
    assert_string_equal(a->maske->paths[1], "b");
    jsontest__v3__alles__free_unpacked(a, NULL);
    free(b);
    s_refused(ALLES, "{\"maske\":[\"a\"]}", "field `maske`: expected string, got array");

    /* a path that has no lowerCamelCase form cannot be written */
    Google__Protobuf__FieldMask fm = GOOGLE__PROTOBUF__FIELD_MASK__INIT;
    char *paths[] = {"foo__bar"};
    fm.n_paths = 1;
    fm.paths = paths;
    Jsontest__V3__Alles msg = JSONTEST__V3__ALLES__INIT;
    msg.maske = &fm;
    uint8_t buf[32];
    n = jsontest__v3__alles__pack(&msg, buf);
    char err[256], *out = NULL;
    assert_int_equal(ab_pb_to_json(ALLES, buf, n, 0, &out, err, sizeof err), AB_EINVAL);
    assert_string_equal(err, "field `maske`: field mask path cannot be written in lowerCamelCase");
}

static void
test_any_refused(void **state)
{
    (void)state;
    s_refused(ALLES, "{\"irgendwas\":{\"@type\":\"x\"}}",
              "field `irgendwas`: google.protobuf.Any is not supported");
    Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
    Jsontest__V3__Alles a = JSONTEST__V3__ALLES__INIT;
    a.irgendwas = &any;
    uint8_t buf[16];
    size_t n = jsontest__v3__alles__pack(&a, buf);
    char err[256], *out = NULL;
    assert_int_equal(ab_pb_to_json(ALLES, buf, n, 0, &out, err, sizeof err), AB_EINVAL);
    assert_string_equal(err, "field `irgendwas`: google.protobuf.Any is not supported");
}

/* ---- limits and bad input ---- */

static char *
s_nested(int levels)
{
    char *j = malloc((size_t)levels * 10 + 16);
    size_t o = 0;
    for (int i = 1; i < levels; i++)
        o += (size_t)sprintf(j + o, "{\"kind\":");
    o += (size_t)sprintf(j + o, "{\"wert\":1}");
    for (int i = 1; i < levels; i++)
        j[o++] = '}';
    j[o] = '\0';
    return j;
}

static void
test_depth_limit(void **state)
{
    (void)state;
    char *j = s_nested(64);
    size_t n;
    uint8_t *b = s_pb(KNOTEN, j, &n);
    char *back = s_json(KNOTEN, b, n, 0);
    assert_string_equal(back, j);
    free(back);
    free(b);
    free(j);

    j = s_nested(65);
    char want[1024];
    size_t o = (size_t)sprintf(want, "field `");
    for (int i = 0; i < 64; i++)
        o += (size_t)sprintf(want + o, i ? ".kind" : "kind");
    sprintf(want + o, "`: messages nested deeper than 64 levels");
    s_refused(KNOTEN, j, want);
    free(j);

    /* the same depth in bytes is refused on the way out */
    Jsontest__V3__Knoten k[65];
    for (int i = 0; i < 65; i++) {
        jsontest__v3__knoten__init(&k[i]);
        k[i].kind = i < 64 ? &k[i + 1] : NULL;
    }
    n = jsontest__v3__knoten__get_packed_size(&k[0]);
    b = malloc(n);
    jsontest__v3__knoten__pack(&k[0], b);
    char err[1024], *out = NULL;
    assert_int_equal(ab_pb_to_json(KNOTEN, b, n, 0, &out, err, sizeof err), AB_EINVAL);
    assert_string_equal(err, want);
    free(b);

    /* Value inside Value counts too */
    j = malloc(200);
    o = (size_t)sprintf(j, "{\"liste\":");
    for (int i = 0; i < 40; i++)
        j[o++] = '[';
    for (int i = 0; i < 40; i++)
        j[o++] = ']';
    sprintf(j + o, "}");
    char err2[1024];
    uint8_t *out2 = NULL;
    assert_int_equal(ab_json_to_pb(ALLES, j, strlen(j), &out2, &n, err2, sizeof err2), AB_EINVAL);
    assert_non_null(strstr(err2, "messages nested deeper than 64 levels"));
    free(j);
}

static void
test_bad_json_and_no_values_in_errors(void **state)
{
    (void)state;
    s_refused(ALLES, "{\"oText\": \"geheim",
              "jsontest.v3.Alles: invalid JSON at line 1, column 17: premature end of input");
    s_refused(ALLES, "{\"oText\":\"a\",\"oText\":\"b\"}",
              "jsontest.v3.Alles: invalid JSON at line 1, column 20: duplicate object key");
    s_refused(ALLES, "", "jsontest.v3.Alles: invalid JSON at line 1, column 0: unexpected token");
    s_refused(ALLES, "{} geheim",
              "jsontest.v3.Alles: invalid JSON at line 1, column 9: end of file expected");

    /* the value never shows in an error */
    const char *cases[] = {
        "{\"skalare\":{\"fInt32\":\"Geheimnis\"}}",
        "{\"skalare\":{\"fEnum\":\"Geheimnis\"}}",
        "{\"skalare\":{\"fBytes\":\"Geheimnis!\"}}",
        "{\"zeit\":\"Geheimnis\"}",
        "{\"dauer\":\"Geheimnis\"}",
        "{\"mInt32\":{\"Geheimnis\":\"a\"}}",
        "{\"skalare\":{\"fString\":Geheimnis}}",
        "{\"wInt64\":\"Geheimnis\"}",
        "{\"skalare\":{\"fDouble\":\"Geheimnis\"}}",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[512];
        uint8_t *out = NULL;
        size_t n;
        assert_int_equal(
            ab_json_to_pb(ALLES, cases[i], strlen(cases[i]), &out, &n, err, sizeof err), AB_EINVAL);
        assert_null(strstr(err, "Geheimnis"));
        assert_true(strlen(err) > 10);
    }

    /* bytes that do not decode */
    char err[256], *out = NULL;
    const uint8_t junk[] = {0x0a, 0x05, 0x01};
    assert_int_equal(ab_pb_to_json(ALLES, junk, sizeof junk, 0, &out, err, sizeof err), AB_EINVAL);
    assert_string_equal(err, "jsontest.v3.Alles: field at byte 0 runs past the end of the message");
    assert_null(out);
    /* ab_schema_validate() says where (its paths use proto names) */
    const uint8_t deep_junk[] = {0xaa, 0x01, 0x02, 0x0a, 0x05};
    assert_int_equal(ab_pb_to_json(ALLES, deep_junk, sizeof deep_junk, 0, &out, err, sizeof err),
                     AB_EINVAL);
    assert_true(strncmp(err, "field `antwort", 14) == 0);
    assert_null(out);

    /* a string that is not UTF-8 cannot be JSON */
    Jsontest__V3__Skalare s = JSONTEST__V3__SKALARE__INIT;
    s.f_string = "a\xff";
    uint8_t buf[16];
    size_t n = jsontest__v3__skalare__pack(&s, buf);
    assert_int_equal(ab_pb_to_json(SKALARE, buf, n, 0, &out, err, sizeof err), AB_EINVAL);
    assert_string_equal(err, "field `fString`: string is not valid UTF-8");

    /* an empty message gives a non-NULL buffer of 0 bytes; no err buffer is fine */
    uint8_t *pb = NULL;
    assert_int_equal(ab_json_to_pb(ALLES, "{}", 2, &pb, &n, NULL, 0), 0);
    assert_non_null(pb);
    assert_int_equal(n, 0);
    char *js = NULL;
    assert_int_equal(ab_pb_to_json(ALLES, pb, 0, 0, &js, NULL, 0), 0);
    assert_string_equal(js, "{}");
    free(js);
    free(pb);
    assert_int_equal(ab_json_to_pb(ALLES, "[", 1, &pb, &n, NULL, 0), AB_EINVAL);
    /* a short error buffer is cut, not overrun */
    char tiny[8];
    assert_int_equal(ab_json_to_pb(ALLES, "{\"x\":1}", 7, &pb, &n, tiny, sizeof tiny), AB_EINVAL);
    assert_string_equal(tiny, "unknown");
    /* input need not be NUL-terminated */
    assert_int_equal(ab_json_to_pb(SKALARE, "{\"fInt32\":12}XYZ", 13, &pb, &n, NULL, 0), 0);
    free(pb);
}

/* ---- allocation failure and damaged input ---- */

static void
test_out_of_memory(void **state)
{
    (void)state;
    size_t n;
    uint8_t *good = s_pb(ALLES, ALLES_JSON, &n);
    int done_in = 0, done_out = 0;
    for (long k = 1; k < 100000 && !(done_in && done_out); k++) {
        char err[256];
        uint8_t *pb = NULL;
        size_t pn = 0;
        char *js = NULL;
        if (!done_in) {
            s_alloc_calls = 0;
            s_fail_at = k;
            int rc =
                ab_json_to_pb(ALLES, ALLES_JSON, strlen(ALLES_JSON), &pb, &pn, err, sizeof err);
            s_fail_at = 0;
            if (rc == 0) {
                assert_int_equal(pn, n);
                assert_memory_equal(pb, good, n);
                free(pb);
                done_in = 1;
            } else {
                assert_int_equal(rc, AB_ENOMEM);
                assert_string_equal(err, "out of memory");
                assert_null(pb);
            }
        }
        if (!done_out) {
            s_alloc_calls = 0;
            s_fail_at = k;
            int rc = ab_pb_to_json(ALLES, good, n, AB_JSON_PRETTY, &js, err, sizeof err);
            s_fail_at = 0;
            if (rc == 0) {
                free(js);
                done_out = 1;
            } else {
                assert_int_equal(rc, AB_ENOMEM);
                assert_null(js);
            }
        }
    }
    assert_true(done_in && done_out);
    free(good);
}

static void
test_damaged_input(void **state)
{
    (void)state;
    /* JSON cut short or with one character changed: refused cleanly, or accepted and then
     * printable */
    size_t len = strlen(ALLES_JSON);
    char *j = malloc(len + 1);
    static const char repl[] = "0\"{}[],:x-9n";
    for (size_t i = 0; i < len; i++) {
        for (size_t r = 0; r <= sizeof repl - 1; r++) {
            memcpy(j, ALLES_JSON, len + 1);
            size_t jl = len;
            if (r == sizeof repl - 1)
                jl = i; /* truncated */
            else
                j[i] = repl[r];
            char err[512];
            uint8_t *pb = NULL;
            size_t pn;
            int rc = ab_json_to_pb(ALLES, j, jl, &pb, &pn, err, sizeof err);
            if (rc != 0) {
                assert_int_equal(rc, AB_EINVAL);
                assert_null(pb);
                continue;
            }
            char *back = NULL;
            rc = ab_pb_to_json(ALLES, pb, pn, 0, &back, err, sizeof err);
            if (rc != 0)
                print_error("%s\n", err);
            assert_int_equal(rc, 0);
            free(back);
            free(pb);
        }
    }
    free(j);

    /* bytes cut short or with one byte changed: refused, or printed as JSON that reads back */
    size_t n;
    uint8_t *good = s_pb(ALLES, ALLES_JSON, &n);
    uint8_t *b = malloc(n);
    static const uint8_t flips[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0x0a, 0x12};
    for (size_t i = 0; i < n; i++) {
        for (size_t r = 0; r <= sizeof flips; r++) {
            memcpy(b, good, n);
            size_t bl = n;
            if (r == sizeof flips)
                bl = i;
            else
                b[i] = flips[r];
            char err[512], *js = NULL;
            int rc = ab_pb_to_json(ALLES, b, bl, 0, &js, err, sizeof err);
            if (rc != 0) {
                assert_int_equal(rc, AB_EINVAL);
                assert_null(js);
                continue;
            }
            uint8_t *pb = NULL;
            size_t pn;
            rc = ab_json_to_pb(ALLES, js, strlen(js), &pb, &pn, err, sizeof err);
            if (rc != 0)
                print_error("%s\n  for %s\n", err, js);
            assert_int_equal(rc, 0);
            free(pb);
            free(js);
        }
    }
    free(b);
    free(good);
}

/* ---- descriptors as ab_schema_set_load() builds them ---- */

enum { MAX_CLONES = 64 };

typedef struct {
    const ProtobufCMessageDescriptor *orig[MAX_CLONES];
    ProtobufCMessageDescriptor *copy[MAX_CLONES];
    ProtobufCFieldDescriptor *fields[MAX_CLONES];
    size_t n;
} clones_t;

/* A deep copy without message_init and with proto3 strings defaulting to NULL, as runtime
 * descriptors come. */
static const ProtobufCMessageDescriptor *
s_clone(clones_t *c, const ProtobufCMessageDescriptor *d)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->orig[i] == d)
            return c->copy[i];
    assert_true(c->n < MAX_CLONES);
    size_t me = c->n++;
    ProtobufCMessageDescriptor *copy = malloc(sizeof *copy);
    ProtobufCFieldDescriptor *fields = malloc(sizeof *fields * (d->n_fields + 1));
    *copy = *d;
    copy->message_init = NULL;
    copy->fields = fields;
    c->orig[me] = d;
    c->copy[me] = copy;
    c->fields[me] = fields;
    for (unsigned i = 0; i < d->n_fields; i++) {
        fields[i] = d->fields[i];
        if (fields[i].type == PROTOBUF_C_TYPE_STRING && fields[i].label == PROTOBUF_C_LABEL_NONE)
            fields[i].default_value = NULL;
        if (fields[i].type == PROTOBUF_C_TYPE_MESSAGE)
            fields[i].descriptor = s_clone(c, fields[i].descriptor);
    }
    return copy;
}

static void
test_runtime_like_descriptors(void **state)
{
    (void)state;
    clones_t c = {0};
    const ProtobufCMessageDescriptor *alles = s_clone(&c, ALLES);
    const ProtobufCMessageDescriptor *pflicht = s_clone(&c, PFLICHT);
    s_round(alles, ALLES_JSON, NULL);
    s_round(pflicht, "{\"id\":1,\"name\":\"n\",\"teile\":[{\"name\":\"a\"}],\"m\":{\"k\":0}}",
            NULL);
    /* same bytes as with the generated descriptors */
    size_t n1, n2;
    uint8_t *b1 = s_pb(ALLES, ALLES_JSON, &n1);
    uint8_t *b2 = s_pb(alles, ALLES_JSON, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(b1, b2, n1);
    char *j1 = s_json(ALLES, b1, n1, AB_JSON_PRETTY);
    char *j2 = s_json(alles, b1, n1, AB_JSON_PRETTY);
    assert_string_equal(j1, j2);
    free(j1);
    free(j2);
    free(b1);
    free(b2);
    s_refused(alles, "{\"antwort\":{\"adressen\":[{},{},{\"plz\":80331}]}}",
              "field `antwort.adressen[2].plz`: expected string, got number");
    s_refused(pflicht, "{\"id\":1}",
              "missing required field `name` in message jsontest.v2.Pflicht");
    for (size_t i = 0; i < c.n; i++) {
        free(c.fields[i]);
        free(c.copy[i]);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_field_kind_round_trip),
        cmocka_unit_test(test_generated_struct_to_json),
        cmocka_unit_test(test_proto_names_and_null),
        cmocka_unit_test(test_unknown_fields_and_type_mismatch),
        cmocka_unit_test(test_integers),
        cmocka_unit_test(test_floats),
        cmocka_unit_test(test_enums),
        cmocka_unit_test(test_bytes_base64),
        cmocka_unit_test(test_maps),
        cmocka_unit_test(test_oneof),
        cmocka_unit_test(test_proto2),
        cmocka_unit_test(test_timestamps),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_wrappers_struct_value),
        cmocka_unit_test(test_field_mask),
        cmocka_unit_test(test_any_refused),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_bad_json_and_no_values_in_errors),
        cmocka_unit_test(test_runtime_like_descriptors),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_damaged_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
