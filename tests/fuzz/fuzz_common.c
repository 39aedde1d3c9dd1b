/* Shared set-up of the fuzz targets: see fuzz_common.h. */
#include "fuzz_common.h"

#include <string.h>

#include "pbjson.h"

extern const unsigned char ab_fuzz_meldewesen_set[];
extern const size_t ab_fuzz_meldewesen_set_len;
extern const unsigned char ab_fuzz_schematest_set[];
extern const size_t ab_fuzz_schematest_set_len;

#define S_MAX_TYPES 256
#define S_MAX_NESTING 32

/* Set up once per process and never freed: the fuzzer's process ends with them. */
static ab_schema_set_t *s_sets[2];
static const ProtobufCMessageDescriptor *s_types[S_MAX_TYPES];
static size_t s_n_types;

static void
s_walk_msg(const Google__Protobuf__DescriptorProto *m, const char *scope, int depth,
           void (*fn)(void *, ab_fuzz_kind_t, const char *, const void *), void *arg)
{
    char name[1024];
    if (m == NULL || depth > S_MAX_NESTING)
        return;
    snprintf(name, sizeof name, "%s%s%s", scope, scope[0] ? "." : "", m->name ? m->name : "");
    fn(arg, AB_FUZZ_MSG, name, m);
    for (size_t i = 0; i < m->n_nested_type; i++)
        s_walk_msg(m->nested_type[i], name, depth + 1, fn, arg);
    for (size_t i = 0; i < m->n_enum_type; i++) {
        char en[1200];
        const char *e = m->enum_type[i] && m->enum_type[i]->name ? m->enum_type[i]->name : "";
        snprintf(en, sizeof en, "%s.%s", name, e);
        fn(arg, AB_FUZZ_ENUM, en, m->enum_type[i]);
    }
}

void
ab_fuzz_walk_file(const Google__Protobuf__FileDescriptorProto *fp,
                  void (*fn)(void *, ab_fuzz_kind_t, const char *, const void *), void *arg)
{
    const char *pkg = fp->package ? fp->package : "";
    for (size_t i = 0; i < fp->n_message_type; i++)
        s_walk_msg(fp->message_type[i], pkg, 0, fn, arg);
    char name[1200];
    for (size_t i = 0; i < fp->n_enum_type; i++) {
        const char *e = fp->enum_type[i] && fp->enum_type[i]->name ? fp->enum_type[i]->name : "";
        snprintf(name, sizeof name, "%s%s%s", pkg, pkg[0] ? "." : "", e);
        fn(arg, AB_FUZZ_ENUM, name, fp->enum_type[i]);
    }
    for (size_t i = 0; i < fp->n_service; i++) {
        const char *s = fp->service[i] && fp->service[i]->name ? fp->service[i]->name : "";
        snprintf(name, sizeof name, "%s%s%s", pkg, pkg[0] ? "." : "", s);
        fn(arg, AB_FUZZ_SVC, name, fp->service[i]);
    }
}

static void
s_add_type(void *arg, ab_fuzz_kind_t kind, const char *name, const void *proto)
{
    (void)proto;
    if (kind != AB_FUZZ_MSG)
        return;
    const ProtobufCMessageDescriptor *d = ab_schema_message(arg, name);
    AB_FUZZ_CHECK(d != NULL, "type %s of an embedded set not found", name);
    AB_FUZZ_CHECK(s_n_types < S_MAX_TYPES, "too many types");
    s_types[s_n_types++] = d;
}

void
ab_fuzz_init(void)
{
    if (s_n_types > 0)
        return;
    const unsigned char *data[2] = {ab_fuzz_meldewesen_set, ab_fuzz_schematest_set};
    size_t len[2] = {ab_fuzz_meldewesen_set_len, ab_fuzz_schematest_set_len};
    for (int k = 0; k < 2; k++) {
        ab_schema_error_t err;
        int rc = ab_schema_set_load(data[k], len[k], &s_sets[k], &err);
        AB_FUZZ_CHECK(rc == 0, "embedded set %d does not load: %s: %s", k, err.path, err.text);
        for (size_t i = 0; i < ab_schema_file_count(s_sets[k]); i++)
            ab_fuzz_walk_file(ab_schema_file_proto(s_sets[k], i), s_add_type, s_sets[k]);
    }
    const char *list = getenv("AB_FUZZ_LIST_TYPES");
    if (list != NULL && list[0] == '1')
        for (size_t i = 0; i < s_n_types; i++)
            fprintf(stderr, "type %zu: %s\n", i, s_types[i]->name);
}

size_t
ab_fuzz_type_count(void)
{
    return s_n_types;
}

const ProtobufCMessageDescriptor *
ab_fuzz_type(uint8_t b)
{
    return s_types[b % s_n_types];
}

const Google__Protobuf__FileDescriptorProto *
ab_fuzz_seed_file(void)
{
    for (size_t i = 0; i < ab_schema_file_count(s_sets[0]); i++)
        if (strcmp(ab_schema_file_name(s_sets[0], i), "meldewesen/v1/meldewesen.proto") == 0)
            return ab_schema_file_proto(s_sets[0], i);
    AB_FUZZ_CHECK(0, "meldewesen/v1/meldewesen.proto not in the embedded set");
    return NULL;
}

static void
s_check_json(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len)
{
    char err[512];
    char *json = NULL;
    if (ab_pb_to_json(d, data, len, 0, &json, err, sizeof err) != 0)
        return; /* a value the mapping cannot express (a timestamp out of range, ...) */
    uint8_t *pb = NULL;
    size_t pb_len = 0;
    int rc = ab_json_to_pb(d, json, strlen(json), &pb, &pb_len, err, sizeof err);
    AB_FUZZ_CHECK(rc == 0, "%s: printed JSON does not read back: %s", d->name, err);
    char *again = NULL;
    rc = ab_pb_to_json(d, pb, pb_len, 0, &again, err, sizeof err);
    AB_FUZZ_CHECK(rc == 0, "%s: bytes made from JSON do not print: %s", d->name, err);
    AB_FUZZ_CHECK(strcmp(json, again) == 0, "%s: JSON changed on the way through protobuf:\n%s\n%s",
                  d->name, json, again);
    char *pretty = NULL;
    rc = ab_pb_to_json(d, data, len, AB_JSON_PRETTY, &pretty, err, sizeof err);
    AB_FUZZ_CHECK(rc == 0, "%s: prints compact but not pretty: %s", d->name, err);
    uint8_t *pb2 = NULL;
    size_t pb2_len = 0;
    rc = ab_json_to_pb(d, pretty, strlen(pretty), &pb2, &pb2_len, err, sizeof err);
    AB_FUZZ_CHECK(rc == 0, "%s: pretty JSON does not read back: %s", d->name, err);
    AB_FUZZ_CHECK(pb2_len == pb_len && memcmp(pb, pb2, pb_len) == 0,
                  "%s: pretty and compact JSON give different bytes", d->name);
    free(json);
    free(pb);
    free(again);
    free(pretty);
    free(pb2);
}

int
ab_fuzz_check_payload(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len)
{
    ab_schema_error_t err;
    int verdict = ab_schema_validate(d, data, len, &err);
    /* the table-driven walk may accept only what the reference walk accepts */
    int reference = ab_schema_validate_reference(d, data, len, NULL);
    AB_FUZZ_CHECK(verdict == reference, "%s: table walk says %d, reference walk %d", d->name,
                  verdict, reference);
    if (verdict != 0)
        return 0;
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, data);
    AB_FUZZ_CHECK(m != NULL, "%s: validated payload of %zu bytes does not unpack", d->name, len);
    size_t size = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(size > 0 ? size : 1);
    AB_FUZZ_CHECK(buf != NULL, "out of memory");
    size_t packed = protobuf_c_message_pack(m, buf);
    AB_FUZZ_CHECK(packed == size, "%s: packed %zu bytes, announced %zu", d->name, packed, size);
    protobuf_c_message_free_unpacked(m, NULL);
    int rc = ab_schema_validate(d, buf, size, &err);
    AB_FUZZ_CHECK(rc == 0, "%s: repacked payload does not validate: %s: %s", d->name, err.path,
                  err.text);
    m = protobuf_c_message_unpack(d, NULL, size, buf);
    AB_FUZZ_CHECK(m != NULL, "%s: repacked payload does not unpack", d->name);
    protobuf_c_message_free_unpacked(m, NULL);
    free(buf);
    s_check_json(d, data, len);
    return 1;
}
