/*
 * Unit tests for common/schema.c: descriptors built at run time from descriptor sets that protoc
 * made must equal the ones protoc-c generates for the same files, encode and decode the same
 * bytes, and payload validation must name the field at fault for every kind of damage.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "amtsbote.h"
#include "google/protobuf/descriptor.pb-c.h"
#include "schema.h"
#include "schematest/v1/allkinds.pb-c.h"
#include "schematest/v1/required.pb-c.h"

static uint8_t *
s_read(const char *name, size_t *len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", AB_SCHEMATEST_SETS, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static ab_schema_set_t *
s_load(const char *name)
{
    size_t len;
    uint8_t *buf = s_read(name, &len);
    ab_schema_set_t *set = NULL;
    ab_schema_error_t err = {{0}, {0}};
    int rc = ab_schema_set_load(buf, len, &set, &err);
    if (rc != 0)
        fail_msg("%s: %s: %s", name, err.path, err.text);
    free(buf);
    return set;
}

/* ---- the runtime descriptors equal protoc-c's ---- */

static void s_same_message(const ProtobufCMessageDescriptor *gen,
                           const ProtobufCMessageDescriptor *rt);

static void
s_same_enum(const ProtobufCEnumDescriptor *gen, const ProtobufCEnumDescriptor *rt)
{
    assert_string_equal(gen->name, rt->name);
    assert_int_equal(gen->n_values, rt->n_values);
    assert_int_equal(gen->n_value_names, rt->n_value_names);
    assert_int_equal(gen->n_value_ranges, rt->n_value_ranges);
    for (unsigned i = 0; i < gen->n_values; i++) {
        assert_string_equal(gen->values[i].name, rt->values[i].name);
        assert_int_equal(gen->values[i].value, rt->values[i].value);
    }
    for (unsigned i = 0; i < gen->n_value_names; i++) {
        assert_string_equal(gen->values_by_name[i].name, rt->values_by_name[i].name);
        assert_int_equal(gen->values_by_name[i].index, rt->values_by_name[i].index);
    }
    for (unsigned i = 0; i <= gen->n_value_ranges; i++) {
        assert_int_equal(gen->value_ranges[i].start_value, rt->value_ranges[i].start_value);
        assert_int_equal(gen->value_ranges[i].orig_index, rt->value_ranges[i].orig_index);
    }
}

static void
s_same_default(const ProtobufCFieldDescriptor *g, const ProtobufCFieldDescriptor *r)
{
    if (g->default_value == NULL) {
        assert_null(r->default_value);
        return;
    }
    if ((g->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && g->type == PROTOBUF_C_TYPE_STRING) {
        /* protoc-c gives proto3 oneof strings "", harmless with its INIT macro; at run time
         * protobuf-c's generic init would write it into the union (see schema.c) */
        assert_null(r->default_value);
        return;
    }
    if (r->default_value == NULL)
        fail_msg("field %s: no default", g->name);
    switch (g->type) {
    case PROTOBUF_C_TYPE_STRING:
        assert_string_equal((const char *)g->default_value, (const char *)r->default_value);
        break;
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *a = g->default_value, *b = r->default_value;
        assert_int_equal(a->len, b->len);
        assert_memory_equal(a->data, b->data, a->len);
        break;
    }
    case PROTOBUF_C_TYPE_FLOAT:
        if (*(const float *)g->default_value != *(const float *)r->default_value)
            fail_msg("%s: %g != %g", g->name, (double)*(const float *)g->default_value,
                     (double)*(const float *)r->default_value);
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        assert_true(*(const double *)g->default_value == *(const double *)r->default_value);
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_SFIXED64:
        assert_memory_equal(g->default_value, r->default_value, 8);
        break;
    default:
        assert_memory_equal(g->default_value, r->default_value, 4);
    }
}

static void
s_same_message(const ProtobufCMessageDescriptor *gen, const ProtobufCMessageDescriptor *rt)
{
    assert_non_null(rt);
    assert_string_equal(gen->name, rt->name);
    assert_string_equal(gen->short_name, rt->short_name);
    assert_string_equal(gen->package_name, rt->package_name);
    assert_null(rt->message_init);
    assert_int_equal(gen->n_fields, rt->n_fields);
    assert_int_equal(gen->n_field_ranges, rt->n_field_ranges);
    for (unsigned i = 0; i < gen->n_fields; i++) {
        const ProtobufCFieldDescriptor *g = &gen->fields[i], *r = &rt->fields[i];
        assert_string_equal(g->name, r->name);
        assert_int_equal(g->id, r->id);
        assert_int_equal(g->label, r->label);
        assert_int_equal(g->type, r->type);
        assert_int_equal(g->flags, r->flags);
        assert_int_equal(g->quantifier_offset != 0, r->quantifier_offset != 0);
        assert_int_equal(gen->fields_sorted_by_name[i], rt->fields_sorted_by_name[i]);
        s_same_default(g, r);
        if (g->type == PROTOBUF_C_TYPE_MESSAGE) {
            const ProtobufCMessageDescriptor *gm = g->descriptor, *rm = r->descriptor;
            assert_string_equal(gm->name, rm->name);
            if (strcmp(gm->name, gen->name) != 0 && strncmp(gm->name, "google.", 7) != 0)
                s_same_message(gm, rm);
        } else if (g->type == PROTOBUF_C_TYPE_ENUM) {
            s_same_enum(g->descriptor, r->descriptor);
        }
    }
    for (unsigned i = 0; i <= gen->n_field_ranges; i++) {
        assert_int_equal(gen->field_ranges[i].start_value, rt->field_ranges[i].start_value);
        assert_int_equal(gen->field_ranges[i].orig_index, rt->field_ranges[i].orig_index);
    }
    assert_true(rt->sizeof_message >= sizeof(ProtobufCMessage));
}

static void
test_descriptors_equal_protoc_c(void **state)
{
    (void)state;
    ab_schema_set_t *set = s_load("service.pb");
    s_same_message(&schematest__v1__all_kinds__descriptor,
                   ab_schema_message(set, "schematest.v1.AllKinds"));
    s_same_message(&schematest__v1__pflicht__descriptor,
                   ab_schema_message(set, ".schematest.v1.Pflicht"));
    s_same_enum(&schematest__v1__stufe__descriptor, ab_schema_enum(set, "schematest.v1.Stufe"));
    s_same_enum(&schematest__v1__all_kinds__nested__art__descriptor,
                ab_schema_enum(set, "schematest.v1.AllKinds.Nested.Art"));
    assert_true(
        ab_schema_is_map_entry(ab_schema_message(set, "schematest.v1.AllKinds.MInnerEntry")));
    assert_true(ab_schema_is_map_entry(&schematest__v1__all_kinds__minner_entry__descriptor));
    assert_false(ab_schema_is_map_entry(ab_schema_message(set, "schematest.v1.Inner")));
    assert_null(ab_schema_message(set, "schematest.v1.Farbe")); /* an enum, not a message */
    assert_null(ab_schema_message(set, "schematest.v1.Nichts"));

    const ProtobufCServiceDescriptor *svc = ab_schema_service(set, "schematest.v1.Pruefung");
    assert_non_null(svc);
    assert_int_equal(svc->n_methods, 2);
    const ProtobufCMethodDescriptor *m =
        protobuf_c_service_descriptor_get_method_by_name(svc, "Pflichten");
    assert_non_null(m);
    assert_string_equal(m->input->name, "schematest.v1.Pflicht");
    assert_string_equal(m->output->name, "schematest.v1.AllKinds");
    assert_non_null(ab_schema_service(set, "schematest.v1.Zweiter"));
    /* imports first, the file itself last, as protoc writes them */
    size_t n = ab_schema_file_count(set);
    assert_int_equal(n, 4);
    assert_string_equal(ab_schema_file_name(set, n - 1), "schematest/v1/service.proto");
    assert_null(ab_schema_file_name(set, n));
    ab_schema_set_destroy(&set);
    assert_null(set);
    ab_schema_set_destroy(&set);
}

/* A message with every kind filled in, by protoc-c's generated code. */
static size_t
s_pack_allkinds(uint8_t **out)
{
    Schematest__V1__AllKinds m = SCHEMATEST__V1__ALL_KINDS__INIT;
    Schematest__V1__Inner in1 = SCHEMATEST__V1__INNER__INIT, in2 = SCHEMATEST__V1__INNER__INIT;
    Schematest__V1__Inner deep = SCHEMATEST__V1__INNER__INIT;
    int32_t werte[] = {1, -2, 300000};
    in1.name = "Müller";
    in1.n_werte = 3;
    in1.werte = werte;
    in1.tiefer = &deep;
    deep.name = "tief";
    in2.name = "zwei";
    m.f_double = -1.5;
    m.f_float = 3.25f;
    m.f_int64 = INT64_MIN;
    m.f_uint64 = UINT64_MAX;
    m.f_int32 = -7;
    m.f_fixed64 = 1ull << 60;
    m.f_fixed32 = 0xdeadbeef;
    m.f_bool = 1;
    m.f_string = "Straße 1";
    m.f_inner = &in1;
    uint8_t bytes[] = {0, 1, 2, 255};
    m.f_bytes.len = sizeof bytes;
    m.f_bytes.data = bytes;
    m.f_uint32 = 4000000000u;
    m.f_farbe = SCHEMATEST__V1__FARBE__BLAU;
    m.f_sfixed32 = -5;
    m.f_sfixed64 = -6;
    m.f_sint32 = -100;
    m.f_sint64 = INT64_MIN;
    m.n_r_int32 = 3;
    m.r_int32 = werte;
    m.n_r_int32_unpacked = 3;
    m.r_int32_unpacked = werte;
    double ds[] = {0.5, NAN, INFINITY};
    m.n_r_double = 3;
    m.r_double = ds;
    char *strs[] = {"a", "", "ü"};
    m.n_r_string = 3;
    m.r_string = strs;
    Schematest__V1__Inner *inners[] = {&in1, &in2};
    m.n_r_inner = 2;
    m.r_inner = inners;
    ProtobufCBinaryData bl[] = {{2, bytes}, {0, NULL}};
    m.n_r_bytes = 2;
    m.r_bytes = bl;
    Schematest__V1__Farbe farben[] = {SCHEMATEST__V1__FARBE__ROT, 99};
    m.n_r_farbe = 2;
    m.r_farbe = farben;
    int64_t s64[] = {-1, 1, INT64_MAX};
    m.n_r_sint64 = 3;
    m.r_sint64 = s64;
    uint32_t f32[] = {7};
    m.n_r_fixed32 = 1;
    m.r_fixed32 = f32;
    m.wahl_case = SCHEMATEST__V1__ALL_KINDS__WAHL_W_INNER;
    m.w_inner = &in2;
    m.zweite_case = SCHEMATEST__V1__ALL_KINDS__ZWEITE_Z_DOUBLE;
    m.z_double = 2.0;
    Schematest__V1__AllKinds__MInnerEntry e1 = SCHEMATEST__V1__ALL_KINDS__MINNER_ENTRY__INIT;
    e1.key = "k";
    e1.value = &in2;
    Schematest__V1__AllKinds__MInnerEntry *es[] = {&e1};
    m.n_m_inner = 1;
    m.m_inner = es;
    Schematest__V1__AllKinds__MTextEntry t1 = SCHEMATEST__V1__ALL_KINDS__MTEXT_ENTRY__INIT;
    t1.key = -3;
    t1.value = "drei";
    Schematest__V1__AllKinds__MTextEntry *ts[] = {&t1};
    m.n_m_text = 1;
    m.m_text = ts;
    Google__Protobuf__Timestamp zeit = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    zeit.seconds = 1700000000;
    zeit.nanos = 5;
    m.zeit = &zeit;
    Schematest__V1__AllKinds__Nested n1 = SCHEMATEST__V1__ALL_KINDS__NESTED__INIT;
    Schematest__V1__AllKinds__Nested n2 = SCHEMATEST__V1__ALL_KINDS__NESTED__INIT;
    n2.art = SCHEMATEST__V1__ALL_KINDS__NESTED__ART__EINS;
    Schematest__V1__AllKinds__Nested *kinder[] = {&n2, &n2};
    n1.n_kinder = 2;
    n1.kinder = kinder;
    m.nested = &n1;
    m.hoch = 1;
    size_t len = schematest__v1__all_kinds__get_packed_size(&m);
    *out = malloc(len ? len : 1);
    assert_non_null(*out);
    assert_int_equal(schematest__v1__all_kinds__pack(&m, *out), len);
    return len;
}

static void
test_round_trip_through_runtime_descriptor(void **state)
{
    (void)state;
    ab_schema_set_t *set = s_load("allkinds.pb");
    const ProtobufCMessageDescriptor *d = ab_schema_message(set, "schematest.v1.AllKinds");
    uint8_t *bytes;
    size_t len = s_pack_allkinds(&bytes);
    ab_schema_error_t err = {{0}, {0}};
    int rc = ab_schema_validate(d, bytes, len, &err);
    if (rc != 0)
        fail_msg("%s: %s", err.path, err.text);
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, bytes);
    assert_non_null(m);
    assert_true(protobuf_c_message_check(m));
    size_t len2 = protobuf_c_message_get_packed_size(m);
    assert_int_equal(len2, len);
    uint8_t *again = malloc(len2);
    assert_int_equal(protobuf_c_message_pack(m, again), len2);
    assert_memory_equal(again, bytes, len);
    /* read a value through the runtime layout: f_string */
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(d, "f_string");
    assert_string_equal(*(char **)((char *)m + f->offset), "Straße 1");
    protobuf_c_message_free_unpacked(m, NULL);
    free(again);
    free(bytes);

    /* an empty message unpacks with proto3 defaults: "" strings, not NULL */
    m = protobuf_c_message_unpack(d, NULL, 0, (const uint8_t *)"");
    assert_non_null(m);
    assert_string_equal(*(char **)((char *)m + f->offset), "");
    assert_int_equal(protobuf_c_message_get_packed_size(m), 0);
    protobuf_c_message_free_unpacked(m, NULL);
    ab_schema_set_destroy(&set);
}

static void
test_proto2_required_and_defaults(void **state)
{
    (void)state;
    ab_schema_set_t *set = s_load("required.pb");
    const ProtobufCMessageDescriptor *d = ab_schema_message(set, "schematest.v1.Pflicht");
    Schematest__V1__Pflicht p = SCHEMATEST__V1__PFLICHT__INIT;
    p.kennung = "A-1";
    p.nummer = 7;
    Schematest__V1__Pflicht__Teil t0 = SCHEMATEST__V1__PFLICHT__TEIL__INIT;
    Schematest__V1__Pflicht__Teil t1 = SCHEMATEST__V1__PFLICHT__TEIL__INIT;
    Schematest__V1__Pflicht__Teil *teile[] = {&t0, &t1};
    p.n_teile = 2;
    p.teile = teile;
    uint8_t buf[256];
    size_t len = schematest__v1__pflicht__pack(&p, buf);
    ab_schema_error_t err = {{0}, {0}};
    assert_int_equal(ab_schema_validate(d, buf, len, &err), 0);
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, buf);
    assert_non_null(m);
    /* defaults come from the descriptor set */
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(d, "text");
    assert_string_equal(*(char **)((char *)m + f->offset), "ohne Angabe");
    f = protobuf_c_message_descriptor_get_field_by_name(d, "stufe");
    assert_int_equal(*(int *)((char *)m + f->offset), 9);
    f = protobuf_c_message_descriptor_get_field_by_name(d, "u64");
    assert_true(*(uint64_t *)((char *)m + f->offset) == UINT64_MAX);
    protobuf_c_message_free_unpacked(m, NULL);

    /* without `nummer` the payload is refused, named */
    Schematest__V1__Pflicht q = SCHEMATEST__V1__PFLICHT__INIT;
    q.kennung = "B";
    uint8_t buf2[64];
    /* pack refuses nothing: write kennung only, by hand */
    size_t n = 0;
    buf2[n++] = 0x0a;
    buf2[n++] = 1;
    buf2[n++] = 'B';
    assert_int_equal(ab_schema_validate(d, buf2, n, &err), AB_EINVAL);
    assert_string_equal(err.path, "nummer");
    assert_non_null(strstr(err.text, "required"));
    (void)q;

    /* a required field missing in the second element of a repeated nested message */
    n = 0;
    buf2[n++] = 0x0a; /* kennung */
    buf2[n++] = 1;
    buf2[n++] = 'C';
    buf2[n++] = 0x10; /* nummer = 1 */
    buf2[n++] = 1;
    buf2[n++] = 0x82; /* teile (16), length 2: nr = 1 */
    buf2[n++] = 0x01;
    buf2[n++] = 2;
    buf2[n++] = 0x08;
    buf2[n++] = 1;
    buf2[n++] = 0x82; /* teile, length 0: nr missing */
    buf2[n++] = 0x01;
    buf2[n++] = 0;
    assert_int_equal(ab_schema_validate(d, buf2, n, &err), AB_EINVAL);
    assert_string_equal(err.path, "teile[1].nr");
    ab_schema_set_destroy(&set);
}

typedef struct {
    const char *what;
    const uint8_t *bytes;
    size_t len;
    const char *path;
    const char *reason;
} s_bad_t;

static void
test_invalid_payloads_named(void **state)
{
    (void)state;
    ab_schema_set_t *set = s_load("allkinds.pb");
    const ProtobufCMessageDescriptor *d = ab_schema_message(set, "schematest.v1.AllKinds");
    static const uint8_t trunc_varint[] = {0x28, 0x80};            /* f_int32: no end */
    static const uint8_t trunc_len[] = {0x4a, 5, 'a', 'b'};        /* f_string: 5 of 2 */
    static const uint8_t string_as_varint[] = {0x48, 1};           /* f_string, wire 0 */
    static const uint8_t int_as_len[] = {0x28 | 2, 1, 0};          /* f_int32, wire 2 */
    static const uint8_t double_as_fixed32[] = {0x0d, 0, 0, 0, 0}; /* f_double, wire 5 */
    static const uint8_t bad_utf8[] = {0x4a, 2, 0xc3, 0x28};
    static const uint8_t nul_string[] = {0x4a, 3, 'a', 0, 'b'};
    static const uint8_t inner_bad_utf8[] = {0x52, 4, 0x0a, 2, 0xff, 0xfe}; /* f_inner.name */
    static const uint8_t rinner_bad[] = {0xc2, 0x01, 0, 0xc2, 0x01, 2, 0x0a, 0x05}; /* [1].name */
    static const uint8_t group[] = {0x0b, 0x0c}; /* field 1, wire 3 */
    static const uint8_t field0[] = {0x00, 0x01};
    static const uint8_t overlong[] = {0x28, 0xff, 0xff, 0xff, 0xff, 0xff,
                                       0xff, 0xff, 0xff, 0xff, 0x7f};
    static const uint8_t packed_fixed_bad[] = {0xe2, 0x01, 3, 1, 2, 3};     /* r_fixed32 (28) */
    static const uint8_t packed_varint_bad[] = {0xa2, 0x01, 2, 0x80, 0x80}; /* r_int32 (20) */
    static const uint8_t map_value_bad[] = {0xc2, 0x02, 4, 0x12, 2, 0x0a, 0x80}; /* m_inner */
    static const uint8_t oneof_bad[] = {0x82, 0x02, 3, 0x0a, 1, 0xc0}; /* w_inner.name utf8 */
    const s_bad_t cases[] = {
        {"truncated varint", trunc_varint, sizeof trunc_varint, "", "runs past"},
        {"length past end", trunc_len, sizeof trunc_len, "", "runs past"},
        {"string as varint", string_as_varint, sizeof string_as_varint, "f_string", "wire type 0"},
        {"int32 as bytes", int_as_len, sizeof int_as_len, "f_int32", "wire type 2"},
        {"double as fixed32", double_as_fixed32, sizeof double_as_fixed32, "f_double",
         "type double"},
        {"bad UTF-8", bad_utf8, sizeof bad_utf8, "f_string", "UTF-8"},
        {"NUL in string", nul_string, sizeof nul_string, "f_string", "NUL"},
        {"nested bad UTF-8", inner_bad_utf8, sizeof inner_bad_utf8, "f_inner.name", "UTF-8"},
        {"repeated element", rinner_bad, sizeof rinner_bad, "r_inner[1]", "runs past"},
        {"group", group, sizeof group, "", "groups"},
        {"field number 0", field0, sizeof field0, "", "field number 0"},
        {"overlong varint", overlong, sizeof overlong, "", "runs past"},
        {"packed fixed32 length", packed_fixed_bad, sizeof packed_fixed_bad, "r_fixed32",
         "multiple of 4"},
        {"packed varint truncated", packed_varint_bad, sizeof packed_varint_bad, "r_int32",
         "truncated"},
        {"map value", map_value_bad, sizeof map_value_bad, "m_inner[0].value", "runs past"},
        {"oneof member", oneof_bad, sizeof oneof_bad, "w_inner.name", "UTF-8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ab_schema_error_t err = {{0}, {0}};
        int rc = ab_schema_validate(d, cases[i].bytes, cases[i].len, &err);
        if (rc != AB_EINVAL)
            fail_msg("%s: accepted", cases[i].what);
        const char *want = cases[i].path[0] ? cases[i].path : "schematest.v1.AllKinds";
        if (strcmp(err.path, want) != 0 || strstr(err.text, cases[i].reason) == NULL)
            fail_msg("%s: got `%s`: %s", cases[i].what, err.path, err.text);
    }
    /* unknown field numbers pass: a newer sender may know more */
    static const uint8_t unknown[] = {0xf8, 0x07, 1, 0xfa, 0x07, 1, 'x'};
    assert_int_equal(ab_schema_validate(d, unknown, sizeof unknown, NULL), 0);
    /* unpacked encoding of a packed field and packed of an unpacked one are both valid */
    static const uint8_t mixed[] = {0xa0, 0x01, 5, 0xaa, 0x01, 2, 1, 2};
    assert_int_equal(ab_schema_validate(d, mixed, sizeof mixed, NULL), 0);
    assert_int_equal(ab_schema_validate(d, NULL, 0, NULL), 0);
    ab_schema_set_destroy(&set);
}

/* protobuf-c 1.4 merges a singular message field that occurs twice, and fails when the
 * message has a oneof (set or not): such a payload is refused, naming the field, and the same
 * field sent once or a type without oneofs twice is fine (found by
 * tests/fuzz/fuzz_schema_payload). */
static void
test_repeated_singular_message_merge(void **state)
{
    (void)state;
    ab_schema_set_t *set = s_load("required.pb");
    const ProtobufCMessageDescriptor *d = ab_schema_message(set, "schematest.v1.Pflicht");
    assert_non_null(d);
    /* kennung "", nummer 15, kind { kennung "", nummer 1 } twice; Pflicht has oneof auswahl */
    static const uint8_t twice[] = {0x0a, 0x00, 0x10, 0x0f, 0x7a, 0x04, 0x0a, 0x00,
                                    0x10, 0x01, 0x7a, 0x04, 0x0a, 0x00, 0x10, 0x01};
    /* protobuf-c itself cannot unpack it, with the generated descriptor too */
    assert_null(schematest__v1__pflicht__unpack(NULL, sizeof twice, twice));
    assert_null(protobuf_c_message_unpack(d, NULL, sizeof twice, twice));
    ab_schema_error_t err = {{0}, {0}};
    assert_int_equal(ab_schema_validate(d, twice, sizeof twice, &err), AB_EINVAL);
    assert_string_equal(err.path, "kind");
    assert_non_null(strstr(err.text, "occurs twice"));
    assert_int_equal(
        ab_schema_validate(&schematest__v1__pflicht__descriptor, twice, sizeof twice, NULL),
        AB_EINVAL);
    /* once is fine */
    assert_int_equal(ab_schema_validate(d, twice, 10, NULL), 0);
    /* the oneof set in either occurrence or both makes no difference to protobuf-c */
    static const uint8_t oneof_set[] = {0x0a, 0x00, 0x10, 0x0f, 0x7a, 0x06, 0x0a, 0x00,
                                        0x10, 0x01, 0xa8, 0x01, 0x05, 0x7a, 0x06, 0x0a,
                                        0x00, 0x10, 0x01, 0xa8, 0x01, 0x05};
    assert_null(protobuf_c_message_unpack(d, NULL, sizeof oneof_set, oneof_set));
    assert_int_equal(ab_schema_validate(d, oneof_set, sizeof oneof_set, NULL), AB_EINVAL);
    ab_schema_set_destroy(&set);

    /* Inner has no oneof: two occurrences of f_inner merge, validate and unpack */
    set = s_load("allkinds.pb");
    d = ab_schema_message(set, "schematest.v1.AllKinds");
    static const uint8_t inner_twice[] = {0x52, 0x03, 0x0a, 0x01, 'x', 0x52, 0x02, 0x10, 0x07};
    assert_int_equal(ab_schema_validate(d, inner_twice, sizeof inner_twice, NULL), 0);
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, sizeof inner_twice, inner_twice);
    assert_non_null(m);
    protobuf_c_message_free_unpacked(m, NULL);
    ab_schema_set_destroy(&set);
}

/* protobuf-c reads at most 5 bytes of a tag or a length prefix; a varint padded with 0x80
 * bytes beyond that is refused, 5 bytes are fine (found by tests/fuzz/fuzz_schema_payload). */
static void
test_padded_varints(void **state)
{
    (void)state;
    ab_schema_set_t *set = s_load("allkinds.pb");
    const ProtobufCMessageDescriptor *d = ab_schema_message(set, "schematest.v1.AllKinds");
    static const struct {
        uint8_t bytes[8];
        size_t len;
        const char *text; /* NULL: valid */
    } cases[] = {
        /* f_string = "a", the tag (0x4a) padded to 6 and to 5 bytes */
        {{0xca, 0x80, 0x80, 0x80, 0x80, 0x00, 0x01, 'a'}, 8, "malformed field tag at byte 0"},
        {{0xca, 0x80, 0x80, 0x80, 0x00, 0x01, 'a'}, 7, NULL},
        /* the same with the length (1) padded */
        {{0x4a, 0x81, 0x80, 0x80, 0x80, 0x80, 0x00, 'a'},
         8,
         "length of field 9 at byte 0 takes more than 5 bytes"},
        {{0x4a, 0x81, 0x80, 0x80, 0x80, 0x00, 'a'}, 7, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ab_schema_error_t err = {{0}, {0}};
        int rc = ab_schema_validate(d, cases[i].bytes, cases[i].len, &err);
        ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, cases[i].len, cases[i].bytes);
        if (cases[i].text == NULL) {
            assert_int_equal(rc, 0);
            assert_non_null(m);
            assert_string_equal(((Schematest__V1__AllKinds *)m)->f_string, "a");
        } else {
            assert_int_equal(rc, AB_EINVAL);
            assert_string_equal(err.text, cases[i].text);
            assert_null(m);
        }
        protobuf_c_message_free_unpacked(m, NULL);
    }
    ab_schema_set_destroy(&set);
}

/* Names become JSON keys and values: a name that is not an identifier (here bytes that are
 * not UTF-8, which made JSON no parser reads back) refuses the set; found by
 * tests/fuzz/fuzz_schema_load. */
static void
test_names_are_identifiers(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = s_read("required.pb", &len);
    static const struct {
        int what; /* 0 field, 1 message, 2 enum value, 3 package */
        const char *name;
        const char *text; /* NULL: loads */
    } cases[] = {
        {0, "\xff\xff\xff\x7f", "message schematest.v1.Pflicht has a field without a valid name"},
        {0, "1st", "message schematest.v1.Pflicht has a field without a valid name"},
        {0, "a b", "message schematest.v1.Pflicht has a field without a valid name"},
        {0, "_ok_2", NULL},
        {1,
         "Pfl\xc3\xbc"
         "cht",
         "a type in file schematest/v1/required.proto has no valid name"},
        {1, "a.b", "a type in file schematest/v1/required.proto has no valid name"},
        {2, "NIEDRIG-1", "enum schematest.v1.Stufe has a value without a valid name"},
        {3, "schematest..v1", "file schematest/v1/required.proto: the package is not a valid name"},
        {3, "schematest.v1.", "file schematest/v1/required.proto: the package is not a valid name"},
        {3, ".schematest", "file schematest/v1/required.proto: the package is not a valid name"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Google__Protobuf__FileDescriptorSet *fds =
            google__protobuf__file_descriptor_set__unpack(NULL, len, buf);
        assert_non_null(fds);
        Google__Protobuf__FileDescriptorProto *f = fds->file[fds->n_file - 1];
        char **slot = cases[i].what == 0   ? &f->message_type[0]->field[0]->name
                      : cases[i].what == 1 ? &f->message_type[0]->name
                      : cases[i].what == 2 ? &f->enum_type[0]->value[0]->name
                                           : &f->package;
        char *was = *slot;
        *slot = (char *)cases[i].name;
        uint8_t *out = malloc(google__protobuf__file_descriptor_set__get_packed_size(fds));
        size_t n = google__protobuf__file_descriptor_set__pack(fds, out);
        *slot = was;
        google__protobuf__file_descriptor_set__free_unpacked(fds, NULL);
        ab_schema_set_t *set = NULL;
        ab_schema_error_t err = {{0}, {0}};
        int rc = ab_schema_set_load(out, n, &set, &err);
        if (cases[i].text == NULL) {
            if (rc != 0)
                fail_msg("%s: %s: %s", cases[i].name, err.path, err.text);
            ab_schema_set_destroy(&set);
        } else {
            assert_int_equal(rc, AB_EINVAL);
            assert_null(set);
            assert_string_equal(err.text, cases[i].text);
        }
        free(out);
    }
    free(buf);
}

/* Strings through the fast walk and the reference walk: the same verdicts, with the reason. */
static void
test_text_checks(void **state)
{
    (void)state;
    ab_schema_set_t *set = s_load("service.pb");
    const ProtobufCMessageDescriptor *p3 = ab_schema_message(set, "schematest.v1.AllKinds");
    const ProtobufCMessageDescriptor *p2 = ab_schema_message(set, "schematest.v1.Pflicht");
    static const struct {
        const char *s;
        size_t len;
        const char *p3; /* proto3 verdict: NULL valid, else a piece of the reason */
        const char *p2; /* proto2 (no UTF-8 check) */
    } cases[] = {
        {"Stra\xc3\x9f"
         "e",
         7, NULL, NULL},
        {"sechzehn Zeichen", 16, NULL, NULL},
        {"abcdefg\0hij", 11, "NUL", "NUL"},
        {"\xc3\xbc\0", 3, "NUL", "NUL"},
        {"\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\0x", 10, "NUL", "NUL"},
        {"abc\xc3", 4, "UTF-8", NULL},
        {"\xc0\x80", 2, "UTF-8", NULL},
        {"\xe2\x82\xac", 3, NULL, NULL},
        {"\xed\xa0\x80", 3, "UTF-8", NULL},
        {"\xf0\x9f\x98\x80 ok", 7, NULL, NULL},
        {"\xf4\x90\x80\x80", 4, "UTF-8", NULL},
        {"\xe2\x82", 2, "UTF-8", NULL},
        {"\xff\xfe", 2, "UTF-8", NULL},
        {"12345678\xc3\xa4"
         "12345678\xc3",
         19, "UTF-8", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t buf[64];
        /* AllKinds.f_string (9) */
        size_t n = 0;
        buf[n++] = 0x4a;
        buf[n++] = (uint8_t)cases[i].len;
        memcpy(buf + n, cases[i].s, cases[i].len);
        n += cases[i].len;
        ab_schema_error_t err = {{0}, {0}};
        int rc = ab_schema_validate(p3, buf, n, &err);
        if (cases[i].p3 == NULL ? rc != 0
                                : rc != AB_EINVAL || strstr(err.text, cases[i].p3) == NULL ||
                                      strcmp(err.path, "f_string") != 0)
            fail_msg("proto3 case %zu: rc %d, `%s`: %s", i, rc, err.path, err.text);
        /* Pflicht: kennung (1) and nummer (2) */
        n = 0;
        buf[n++] = 0x0a;
        buf[n++] = (uint8_t)cases[i].len;
        memcpy(buf + n, cases[i].s, cases[i].len);
        n += cases[i].len;
        buf[n++] = 0x10;
        buf[n++] = 0x01;
        rc = ab_schema_validate(p2, buf, n, &err);
        if (cases[i].p2 == NULL ? rc != 0
                                : rc != AB_EINVAL || strstr(err.text, cases[i].p2) == NULL)
            fail_msg("proto2 case %zu: rc %d: %s", i, rc, err.text);
    }
    ab_schema_set_destroy(&set);
}

/* The table-driven walk and the reference walk agree on every damaged copy of real messages. */
static void
test_fast_and_reference_agree(void **state)
{
    (void)state;
    ab_schema_set_t *set = s_load("service.pb");
    const ProtobufCMessageDescriptor *d = ab_schema_message(set, "schematest.v1.AllKinds");
    uint8_t *orig;
    size_t len = s_pack_allkinds(&orig);
    uint8_t *buf = malloc(len);
    srand(4711);
    size_t accepted = 0;
    for (int round = 0; round < 20000; round++) {
        memcpy(buf, orig, len);
        int flips = 1 + rand() % 3;
        for (int k = 0; k < flips; k++)
            buf[rand() % len] = (uint8_t)rand();
        size_t cut = round % 5 == 0 ? (size_t)rand() % len : len;
        int fast = ab_schema_validate(d, buf, cut, NULL);
        int ref = ab_schema_validate_reference(d, buf, cut, NULL);
        if (fast != ref)
            fail_msg("round %d: fast %d, reference %d", round, fast, ref);
        accepted += fast == 0;
    }
    assert_true(accepted > 100); /* both kinds of verdict were exercised */
    free(buf);
    free(orig);
    ab_schema_set_destroy(&set);
}

static void
test_nesting_bounded(void **state)
{
    (void)state;
    ab_schema_set_t *set = s_load("allkinds.pb");
    const ProtobufCMessageDescriptor *d = ab_schema_message(set, "schematest.v1.Inner");
    /* Inner.tiefer (3) nested 100 deep, built from the inside out */
    enum { DEPTH = 100 };
    uint8_t *buf = malloc(DEPTH * 4), *tmp = malloc(DEPTH * 4);
    size_t len = 0;
    for (int i = 0; i < DEPTH; i++) {
        size_t n = 0;
        tmp[n++] = 0x1a;
        if (len < 128) {
            tmp[n++] = (uint8_t)len;
        } else {
            tmp[n++] = (uint8_t)(0x80 | (len & 0x7f));
            tmp[n++] = (uint8_t)(len >> 7);
        }
        memcpy(tmp + n, buf, len);
        len += n;
        memcpy(buf, tmp, len);
    }
    ab_schema_error_t err = {{0}, {0}};
    assert_int_equal(ab_schema_validate(d, buf, len, &err), AB_EINVAL);
    assert_non_null(strstr(err.text, "deeper than 64"));
    assert_non_null(strstr(err.path, "tiefer.tiefer.tiefer"));
    free(buf);
    free(tmp);
    ab_schema_set_destroy(&set);
}

static void
test_bad_sets_refused(void **state)
{
    (void)state;
    ab_schema_set_t *set = NULL;
    ab_schema_error_t err = {{0}, {0}};
    static const uint8_t garbage[] = {0xff, 0xff, 0xff};
    assert_int_equal(ab_schema_set_load(garbage, sizeof garbage, &set, &err), AB_EINVAL);
    assert_null(set);
    assert_non_null(strstr(err.text, "FileDescriptorSet"));
    assert_int_equal(ab_schema_set_load((const uint8_t *)"", 0, &set, &err), AB_EINVAL);
    assert_non_null(strstr(err.text, "no file"));

    /* groups */
    size_t len;
    uint8_t *buf = s_read("group.pb", &len);
    assert_int_equal(ab_schema_set_load(buf, len, &set, &err), AB_EINVAL);
    assert_non_null(strstr(err.text, "groups are not supported"));
    assert_non_null(strstr(err.text, "schematest.v1.MitGruppe"));
    free(buf);

    /* the last file alone, without its imports: the types it uses are missing */
    buf = s_read("service.pb", &len);
    ab_schema_set_t *full = NULL;
    assert_int_equal(ab_schema_set_load(buf, len, &full, &err), 0);
    const ProtobufCMessage *last = ab_schema_file_proto(full, ab_schema_file_count(full) - 1);
    Google__Protobuf__FileDescriptorSet one = GOOGLE__PROTOBUF__FILE_DESCRIPTOR_SET__INIT;
    Google__Protobuf__FileDescriptorProto *files[] = {
        (Google__Protobuf__FileDescriptorProto *)last};
    one.n_file = 1;
    one.file = files;
    uint8_t *obuf = malloc(google__protobuf__file_descriptor_set__get_packed_size(&one));
    size_t olen = google__protobuf__file_descriptor_set__pack(&one, obuf);
    assert_int_equal(ab_schema_set_load(obuf, olen, &set, &err), AB_EINVAL);
    assert_non_null(strstr(err.text, "not defined in the set"));
    assert_non_null(strstr(err.text, "--include_imports") != NULL ? err.text
                                                                  : strstr(err.text, "method"));
    free(obuf);
    ab_schema_set_destroy(&full);

    /* the same set twice (protobuf concatenation merges repeated fields): files twice */
    uint8_t *twice = malloc(2 * len);
    memcpy(twice, buf, len);
    memcpy(twice + len, buf, len);
    assert_int_equal(ab_schema_set_load(twice, 2 * len, &set, &err), AB_EINVAL);
    assert_non_null(strstr(err.text, "twice"));
    free(twice);
    free(buf);

    /* every truncation of a valid set is refused or loads: never crashes, never leaks */
    buf = s_read("service.pb", &len);
    for (size_t cut = 0; cut < len; cut += 7) {
        if (ab_schema_set_load(buf, cut, &set, &err) == 0)
            ab_schema_set_destroy(&set);
    }
    free(buf);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_descriptors_equal_protoc_c),
        cmocka_unit_test(test_round_trip_through_runtime_descriptor),
        cmocka_unit_test(test_proto2_required_and_defaults),
        cmocka_unit_test(test_invalid_payloads_named),
        cmocka_unit_test(test_repeated_singular_message_merge),
        cmocka_unit_test(test_padded_varints),
        cmocka_unit_test(test_names_are_identifiers),
        cmocka_unit_test(test_text_checks),
        cmocka_unit_test(test_fast_and_reference_agree),
        cmocka_unit_test(test_nesting_bounded),
        cmocka_unit_test(test_bad_sets_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
