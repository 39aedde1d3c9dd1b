/*
 * Unit tests for common/schema_compat.c: pairs of real .proto files (tests/unit/compat/<case>/v1
 * and v2, turned into descriptor sets by protoc at build time) compared as the broker compares
 * a push. Every rule has a case that is refused and an allowed variant beside it (<rule>-ok).
 *
 * Allocation failure is injected into the report's growth: the test is linked with
 * -Wl,--wrap=realloc, and __wrap_realloc fails the N-th call when asked to.
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
#include "schema_compat.h"

/* ---- allocation failure at the N-th realloc (0: never) ---- */

void *__real_realloc(void *ptr, size_t size);
void *__wrap_realloc(void *ptr, size_t size);

static int fail_at;
static int realloc_calls;

void *
__wrap_realloc(void *ptr, size_t size)
{
    if (fail_at && ++realloc_calls == fail_at)
        return NULL;
    return __real_realloc(ptr, size);
}

/* ---- descriptor sets ---- */

typedef struct {
    Google__Protobuf__FileDescriptorSet *prev;
    Google__Protobuf__FileDescriptorSet *next;
} pair_t;

static Google__Protobuf__FileDescriptorSet *
s_load(const char *case_name, const char *version)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s-%s.pb", AB_COMPAT_SETS, case_name, version);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("cannot open %s", path);
    uint8_t *data = malloc(1 << 20);
    assert_non_null(data);
    size_t len = fread(data, 1, 1 << 20, f);
    fclose(f);
    Google__Protobuf__FileDescriptorSet *set =
        google__protobuf__file_descriptor_set__unpack(NULL, len, data);
    free(data);
    if (set == NULL)
        fail_msg("%s does not decode", path);
    return set;
}

static const Google__Protobuf__FileDescriptorProto *
s_file(const Google__Protobuf__FileDescriptorSet *set, const char *name)
{
    for (size_t i = 0; i < set->n_file; i++)
        if (set->file[i]->name && strcmp(set->file[i]->name, name) == 0)
            return set->file[i];
    fail_msg("no file %s in the set", name);
    return NULL;
}

static void
s_pair_load(pair_t *p, const char *case_name)
{
    p->prev = s_load(case_name, "v1");
    p->next = s_load(case_name, "v2");
}

static void
s_pair_free(pair_t *p)
{
    google__protobuf__file_descriptor_set__free_unpacked(p->prev, NULL);
    google__protobuf__file_descriptor_set__free_unpacked(p->next, NULL);
}

/* Compares the two versions of `file` (x.proto unless named) of a case into `report`. */
static int
s_check(const char *case_name, const char *file, ab_compat_report_t *report)
{
    pair_t p;
    s_pair_load(&p, case_name);
    if (file == NULL)
        file = "x.proto";
    int rc = ab_compat_check(s_file(p.prev, file), s_file(p.next, file), report);
    s_pair_free(&p);
    return rc;
}

/* ---- one test per case ---- */

typedef struct {
    const char *rule;
    const char *element;
    const char *text_has; /* a part of the text that must be there, or NULL */
} expect_t;

typedef struct {
    const char *name;
    const char *file;
    size_t n;
    expect_t e[10];
} case_t;

#define P "compat.v1."

static const case_t cases[] = {
    {"identical", "meldewesen.proto", 0, {{0}}},
    {"additions", NULL, 0, {{0}}},

    {"field-type-changed",
     NULL,
     6,
     {{"field-type-changed", P "Anschrift.postleitzahl (field 3)", "was `string`, now `int32`"},
      {"field-type-changed", P "Anschrift.zusatz (field 4)", "was `repeated string`, now `string`"},
      {"field-type-changed", P "Anschrift.status (field 5)",
       "was `compat.v1.Status`, now `compat.v1.Status2`"},
      {"field-type-changed", P "Anschrift.vermerke (field 6)",
       "was `map<string, string>`, now `map<string, int32>`"},
      {"field-type-changed", P "Anschrift.hausnummer (field 7)", "was `int32`, now `int64`"},
      {"field-type-changed", P "Anschrift.einzug (field 8)", "compat.v1.Datum2"}}},
    {"field-type-changed-ok", NULL, 0, {{0}}},
    {"field-label-changed",
     NULL,
     2,
     {{"field-type-changed", P "Antrag.aktenzeichen (field 1)", "was `required string`"},
      {"field-type-changed", P "Antrag.seiten (field 2)", "now `repeated int32`"}}},
    {"field-label-changed-ok", NULL, 0, {{0}}},

    {"field-number-reused",
     NULL,
     1,
     {{"field-number-reused", P "Anschrift.plz (field 3)", "reserved 3; reserved \"plz\";"}}},
    {"field-number-reused-ok", NULL, 0, {{0}}},

    {"field-renamed",
     NULL,
     2,
     {{"field-renamed", P "Anschrift.plz (field 3)", "now postleitzahl"},
      {"field-renamed", P "Anschrift.ort (field 4)", "was ort, now wohnort"}}},
    {"field-renamed-ok", NULL, 0, {{0}}},

    {"field-removed-not-reserved",
     NULL,
     5,
     {{"field-removed-not-reserved", P "Vorgang.a (field 1)",
       "Add `reserved 1; reserved \"a\";` to message Vorgang"},
      {"field-removed-not-reserved", P "Vorgang.b (field 2)",
       "its name: a later field could take it and old clients would misread it. Add `reserved "
       "\"b\";`"},
      {"field-removed-not-reserved", P "Vorgang.c (field 3)",
       "its number: a later field could take it and old clients would misread it. Add `reserved "
       "3;`"},
      {"field-removed-not-reserved", P "Vorgang.e (field 7)",
       "Add `reserved 7;` to message Vorgang"},
      {"field-removed-not-reserved", P "Vorgang.vermerke (field 8)", NULL}}},
    {"field-removed-not-reserved-ok", NULL, 0, {{0}}},

    {"field-number-changed",
     NULL,
     1,
     {{"field-number-changed", P "Anschrift.plz (field 3)", "from number 3 to 7"}}},
    {"field-number-changed-ok", NULL, 0, {{0}}},

    {"field-number-reserved-reused",
     NULL,
     3,
     {{"field-number-reserved-reused", P "Vorgang.neu (field 4)", "uses the number "},
      {"field-number-reserved-reused", P "Vorgang.alt (field 9)", "uses the name "},
      {"field-number-reserved-reused", P "Vorgang.x (field 12)", "uses the number "}}},
    {"field-number-reserved-reused-ok", NULL, 0, {{0}}},

    {"oneof-changed",
     NULL,
     3,
     {{"oneof-changed", P "Antwort.a (field 1)", "from no oneof to oneof wahl"},
      {"oneof-changed", P "Antwort.b (field 2)", "from oneof wahl to no oneof"},
      {"oneof-changed", P "Antwort.d (field 4)", "from oneof andere to oneof wahl"}}},
    {"oneof-changed-ok", NULL, 0, {{0}}},

    {"field-presence-changed",
     NULL,
     1,
     {{"field-presence-changed", P "Zaehlung.anzahl (field 1)", "Keep `optional`"}}},
    {"field-presence-changed-ok", NULL, 0, {{0}}},

    {"field-default-changed",
     NULL,
     1,
     {{"field-default-changed", P "Frist.tage (field 1)", "was \"14\", now \"30\""}}},
    {"field-default-changed-ok", NULL, 0, {{0}}},

    {"enum-value-number-changed",
     NULL,
     1,
     {{"enum-value-number-changed", P "Wohnungsstatus.HAUPTWOHNUNG (value 1)", "was 1, now 3"}}},
    {"enum-value-number-changed-ok", NULL, 0, {{0}}},
    {"enum-value-renamed",
     NULL,
     1,
     {{"enum-value-renamed", P "Wohnungsstatus.HAUPTWOHNUNG (value 1)", "allow_alias"}}},
    {"enum-value-renamed-ok", NULL, 0, {{0}}},
    {"enum-value-removed-not-reserved",
     NULL,
     3,
     {{"enum-value-removed-not-reserved", P "Art.B (value 1)",
       "Add `reserved 1; reserved \"B\";` to enum Art"},
      {"enum-value-removed-not-reserved", P "Art.D (value 3)",
       "its name: a later value could take it and old clients would misread it. Add `reserved "
       "\"D\";`"},
      {"enum-value-removed-not-reserved", P "Art.E (value 5)", "Add `reserved 5;` to enum Art"}}},
    {"enum-value-removed-not-reserved-ok", NULL, 0, {{0}}},
    {"enum-value-reserved-reused",
     NULL,
     3,
     {{"enum-value-reserved-reused", P "Art.NEU (value 2)", "uses the number "},
      {"enum-value-reserved-reused", P "Art.ALT (value 3)", "uses the name "},
      {"enum-value-reserved-reused", P "Art.X (value 5)", "uses the number "}}},
    {"enum-value-reserved-reused-ok", NULL, 0, {{0}}},

    {"method-removed", NULL, 1, {{"method-removed", P "Register.Weg", NULL}}},
    {"method-removed-ok", NULL, 0, {{0}}},
    {"method-signature-changed",
     NULL,
     4,
     {{"method-signature-changed", P "Register.Ein", "now (compat.v1.Anfrage2) returns"},
      {"method-signature-changed", P "Register.Aus", "returns (compat.v1.Anfrage2)"},
      {"method-signature-changed", P "Register.Strom", "returns (stream compat.v1.Antwort)"},
      {"method-signature-changed", P "Register.Zustrom", "now (stream compat.v1.Anfrage)"}}},
    {"method-signature-changed-ok", NULL, 0, {{0}}},

    {"message-removed",
     NULL,
     3,
     {{"message-removed", P "Alt", "Keep it"},
      {"message-removed", P "Anschrift", "looks renamed to compat.v1.Adresse"},
      {"message-removed", P "Aussen.Innen", NULL}}},
    {"message-removed-ok", NULL, 0, {{0}}},
    {"enum-removed",
     NULL,
     2,
     {{"enum-removed", P "Art", NULL}, {"enum-removed", P "Akte.Stufe", NULL}}},
    {"enum-removed-ok", NULL, 0, {{0}}},
    {"service-removed", NULL, 1, {{"service-removed", P "Register", NULL}}},
    {"service-removed-ok", NULL, 0, {{0}}},

    /* one problem, not one per name that changed with the package */
    {"package-changed",
     NULL,
     1,
     {{"package-changed", "x.proto", "was \"compat.v1\", now \"compat.v2\""}}},
    {"package-changed-ok", NULL, 0, {{0}}},
    {"syntax-changed", NULL, 1, {{"syntax-changed", "x.proto", "was proto2, now proto3"}}},
    {"syntax-changed-ok", NULL, 0, {{0}}},

    {"nested",
     NULL,
     2,
     {{"field-type-changed", P "Akte.Teil.Blatt.seite (field 2)", NULL},
      {"enum-value-number-changed", P "Akte.Teil.Art.ORIGINAL (value 1)", NULL}}},

    {"several",
     NULL,
     8,
     {{"field-type-changed", P "Anschrift.strasse (field 1)", NULL},
      {"field-renamed", P "Anschrift.plz (field 2)", NULL},
      {"field-removed-not-reserved", P "Anschrift.ort (field 3)", NULL},
      {"oneof-changed", P "Anschrift.telefon (field 4)", NULL},
      {"enum-value-number-changed", P "Art.B (value 1)", NULL},
      {"message-removed", P "Alt", NULL},
      {"method-signature-changed", P "Register.Suche", NULL},
      {"method-removed", P "Register.Weg", NULL}}},
};

static void
s_print(const ab_compat_report_t *r)
{
    for (size_t i = 0; i < r->count; i++)
        print_message("  %s %s: %s\n", r->problems[i].rule, r->problems[i].element,
                      r->problems[i].text);
}

static void
test_case(void **state)
{
    const case_t *c = *state;
    ab_compat_report_t r = {0};
    int rc = s_check(c->name, c->file, &r);
    if (rc != (int)c->n || r.count != c->n)
        s_print(&r);
    assert_int_equal(rc, (int)c->n);
    assert_int_equal(r.count, c->n);
    for (size_t i = 0; i < c->n; i++) {
        const expect_t *e = &c->e[i];
        const ab_compat_problem_t *hit = NULL;
        for (size_t j = 0; j < r.count && hit == NULL; j++)
            if (strcmp(r.problems[j].rule, e->rule) == 0 &&
                strcmp(r.problems[j].element, e->element) == 0)
                hit = &r.problems[j];
        if (hit == NULL) {
            s_print(&r);
            fail_msg("%s: no %s at %s", c->name, e->rule, e->element);
        }
        if (e->text_has && strstr(hit->text, e->text_has) == NULL)
            fail_msg("%s: text of %s lacks \"%s\": %s", c->name, e->rule, e->text_has, hit->text);
    }
    for (size_t j = 0; j < r.count; j++)
        assert_true(strlen(r.problems[j].text) > 20);
    ab_compat_report_clear(&r);
    assert_null(r.problems);
    assert_int_equal(r.count, 0);
}

/* Every case's v1 against itself: nothing to report. */
static void
test_same_version(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Google__Protobuf__FileDescriptorSet *set = s_load(cases[i].name, "v2");
        const char *name = cases[i].file ? cases[i].file : "x.proto";
        const Google__Protobuf__FileDescriptorProto *f = s_file(set, name);
        ab_compat_report_t r = {0};
        assert_int_equal(ab_compat_check(f, f, &r), 0);
        assert_int_equal(r.count, 0);
        ab_compat_report_clear(&r);
        google__protobuf__file_descriptor_set__free_unpacked(set, NULL);
    }
}

static void
test_bad_arguments(void **state)
{
    (void)state;
    pair_t p;
    s_pair_load(&p, "identical");
    const Google__Protobuf__FileDescriptorProto *f = s_file(p.prev, "meldewesen.proto");
    ab_compat_report_t r = {0};
    assert_int_equal(ab_compat_check(NULL, f, &r), AB_EINVAL);
    assert_int_equal(ab_compat_check(f, NULL, &r), AB_EINVAL);
    assert_int_equal(ab_compat_check(f, f, NULL), AB_EINVAL);
    assert_int_equal(r.count, 0);
    ab_compat_report_clear(NULL);
    ab_compat_report_clear(&r);
    ab_compat_report_clear(&r);
    s_pair_free(&p);
}

/* A report collects across files; each call returns what it added. */
static void
test_report_accumulates(void **state)
{
    (void)state;
    ab_compat_report_t r = {0};
    assert_int_equal(s_check("several", NULL, &r), 8);
    assert_int_equal(s_check("field-type-changed", NULL, &r), 6);
    assert_int_equal(s_check("identical", "meldewesen.proto", &r), 0);
    assert_int_equal(s_check("several", NULL, &r), 8);
    assert_int_equal(r.count, 22);
    assert_true(r.cap >= r.count);
    assert_string_equal(r.problems[8].rule, "field-type-changed");
    ab_compat_report_clear(&r);
    assert_int_equal(s_check("method-removed", NULL, &r), 1);
    ab_compat_report_clear(&r);
}

/* Descriptors come from the network: absent names and numbers, NULL entries and a oneof index
 * out of range are read as empty, not followed. */
static void
test_sparse_descriptors(void **state)
{
    (void)state;
    Google__Protobuf__FieldDescriptorProto f = GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__INIT;
    f.has_oneof_index = 1;
    f.oneof_index = 5;
    Google__Protobuf__FieldDescriptorProto *fields[] = {&f, NULL};
    Google__Protobuf__DescriptorProto m = GOOGLE__PROTOBUF__DESCRIPTOR_PROTO__INIT;
    m.n_field = 2;
    m.field = fields;
    Google__Protobuf__DescriptorProto *msgs[] = {&m, NULL};
    Google__Protobuf__EnumValueDescriptorProto v =
        GOOGLE__PROTOBUF__ENUM_VALUE_DESCRIPTOR_PROTO__INIT;
    Google__Protobuf__EnumValueDescriptorProto *values[] = {&v, NULL};
    Google__Protobuf__EnumDescriptorProto e = GOOGLE__PROTOBUF__ENUM_DESCRIPTOR_PROTO__INIT;
    e.n_value = 2;
    e.value = values;
    Google__Protobuf__EnumDescriptorProto *enums[] = {&e, NULL};
    Google__Protobuf__MethodDescriptorProto meth = GOOGLE__PROTOBUF__METHOD_DESCRIPTOR_PROTO__INIT;
    Google__Protobuf__MethodDescriptorProto *methods[] = {&meth, NULL};
    Google__Protobuf__ServiceDescriptorProto s = GOOGLE__PROTOBUF__SERVICE_DESCRIPTOR_PROTO__INIT;
    s.n_method = 2;
    s.method = methods;
    Google__Protobuf__ServiceDescriptorProto *services[] = {&s, NULL};
    Google__Protobuf__FileDescriptorProto full = GOOGLE__PROTOBUF__FILE_DESCRIPTOR_PROTO__INIT;
    full.n_message_type = 2;
    full.message_type = msgs;
    full.n_enum_type = 2;
    full.enum_type = enums;
    full.n_service = 2;
    full.service = services;
    Google__Protobuf__FileDescriptorProto empty = GOOGLE__PROTOBUF__FILE_DESCRIPTOR_PROTO__INIT;

    ab_compat_report_t r = {0};
    assert_int_equal(ab_compat_check(&full, &full, &r), 0);
    /* everything removed: the unnamed message, enum and service are each reported */
    assert_int_equal(ab_compat_check(&full, &empty, &r), 3);
    assert_string_equal(r.problems[0].rule, "message-removed");
    assert_string_equal(r.problems[1].rule, "enum-removed");
    assert_string_equal(r.problems[2].rule, "service-removed");
    ab_compat_report_clear(&r);
    assert_int_equal(ab_compat_check(&empty, &full, &r), 0);
    ab_compat_report_clear(&r);
}

/* Nesting deeper than the walk goes is refused by name, not followed down the stack. */
static void
test_deep_nesting(void **state)
{
    (void)state;
    enum { DEPTH = 200 };
    static Google__Protobuf__DescriptorProto chain[2][DEPTH];
    static Google__Protobuf__DescriptorProto *links[2][DEPTH];
    Google__Protobuf__FileDescriptorProto files[2];
    for (int k = 0; k < 2; k++) {
        for (int i = DEPTH - 1; i >= 0; i--) {
            chain[k][i] =
                (Google__Protobuf__DescriptorProto)GOOGLE__PROTOBUF__DESCRIPTOR_PROTO__INIT;
            chain[k][i].name = "Ebene";
            links[k][i] = &chain[k][i];
            if (i + 1 < DEPTH) {
                chain[k][i].n_nested_type = 1;
                chain[k][i].nested_type = &links[k][i + 1];
            }
        }
        files[k] =
            (Google__Protobuf__FileDescriptorProto)GOOGLE__PROTOBUF__FILE_DESCRIPTOR_PROTO__INIT;
        files[k].name = "x.proto";
        files[k].package = "tief";
        files[k].n_message_type = 1;
        files[k].message_type = &links[k][0];
    }
    ab_compat_report_t r = {0};
    assert_int_equal(ab_compat_check(&files[0], &files[1], &r), 1);
    assert_string_equal(r.problems[0].rule, "nesting-too-deep");
    assert_memory_equal(r.problems[0].element, "tief.Ebene.Ebene.", 17);
    ab_compat_report_clear(&r);
}

/* A failed allocation at any point gives AB_ENOMEM and a report that is whole up to there:
 * nothing half-written, nothing leaked (the sanitizer build checks the leaks). */
static void
test_allocation_failure(void **state)
{
    (void)state;
    for (int n = 1; n <= 3; n++) {
        ab_compat_report_t r = {0};
        realloc_calls = 0;
        fail_at = n;
        int rc = 0;
        size_t before = 0;
        for (int round = 0; round < 4 && rc >= 0; round++) {
            before = r.count;
            rc = s_check("several", NULL, &r);
        }
        fail_at = 0;
        assert_int_equal(rc, AB_ENOMEM);
        /* the cap doubles from 8: the n-th growth fails when the report is that full */
        assert_int_equal(r.count, (size_t)(n == 1 ? 0 : 8 << (n - 2)));
        assert_true(r.count >= before);
        assert_true(r.count <= r.cap);
        for (size_t i = 0; i < r.count; i++) {
            assert_non_null(r.problems[i].rule);
            assert_true(strlen(r.problems[i].element) > 0);
        }
        ab_compat_report_clear(&r);
        /* the report is reusable after a failure */
        assert_int_equal(s_check("several", NULL, &r), 8);
        ab_compat_report_clear(&r);
    }
}

int
main(void)
{
    enum { N_CASES = sizeof cases / sizeof cases[0] };
    struct CMUnitTest tests[N_CASES + 6];
    for (size_t i = 0; i < N_CASES; i++)
        tests[i] = (struct CMUnitTest){
            .name = cases[i].name, .test_func = test_case, .initial_state = (void *)&cases[i]};
    tests[N_CASES] = (struct CMUnitTest)cmocka_unit_test(test_same_version);
    tests[N_CASES + 1] = (struct CMUnitTest)cmocka_unit_test(test_bad_arguments);
    tests[N_CASES + 2] = (struct CMUnitTest)cmocka_unit_test(test_report_accumulates);
    tests[N_CASES + 3] = (struct CMUnitTest)cmocka_unit_test(test_allocation_failure);
    tests[N_CASES + 4] = (struct CMUnitTest)cmocka_unit_test(test_sparse_descriptors);
    tests[N_CASES + 5] = (struct CMUnitTest)cmocka_unit_test(test_deep_nesting);
    return _cmocka_run_group_tests("schema_compat", tests, N_CASES + 6, NULL, NULL);
}
