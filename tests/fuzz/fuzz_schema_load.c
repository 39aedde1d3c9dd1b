/*
 * Arbitrary bytes as a FileDescriptorSet: what a ministry pushes to the schema registry.
 *
 * When ab_schema_set_load() accepts the bytes, every message, enum and service the files
 * declare must be found by name, every method must name runtime message descriptors, a few
 * payloads (empty, the input itself, its halves) must keep the payload promises of
 * ab_fuzz_check_payload(), and ab_compat_check() must find no problem between a file and
 * itself. Each file is also checked against meldewesen.proto both ways (no property there
 * beyond not crashing). Bytes that decode as a FileDescriptorSet but do not load still go
 * through ab_compat_check(), which must not trust them either.
 */
#include <string.h>

#include "fuzz_common.h"
#include "schema_compat.h"

#define S_MAX_MESSAGES 24 /* per input: payload checks on more add little and cost much */

typedef struct {
    const ab_schema_set_t *set;
    const uint8_t *data;
    size_t len;
    int messages;
} s_walk_t;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    ab_fuzz_init();
    return 0;
}

static void
s_payloads(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len)
{
    static const uint8_t empty[1];
    ab_fuzz_check_payload(d, empty, 0);
    ab_fuzz_check_payload(d, data, len);
    ab_fuzz_check_payload(d, data, len / 2);
    ab_fuzz_check_payload(d, data + len / 2, len - len / 2);
}

static void
s_visit(void *arg, ab_fuzz_kind_t kind, const char *name, const void *proto)
{
    s_walk_t *w = arg;
    if (kind == AB_FUZZ_MSG) {
        const ProtobufCMessageDescriptor *d = ab_schema_message(w->set, name);
        AB_FUZZ_CHECK(d != NULL, "message %s of a loaded set not found", name);
        AB_FUZZ_CHECK(d->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC, "bad magic");
        AB_FUZZ_CHECK(d->n_fields == ((const Google__Protobuf__DescriptorProto *)proto)->n_field,
                      "message %s: %u fields", name, d->n_fields);
        for (unsigned i = 0; i < d->n_fields; i++)
            AB_FUZZ_CHECK(protobuf_c_message_descriptor_get_field(d, d->fields[i].id) ==
                              &d->fields[i],
                          "message %s: field #%u not found by number", name, d->fields[i].id);
        if (w->messages++ < S_MAX_MESSAGES)
            s_payloads(d, w->data, w->len);
    } else if (kind == AB_FUZZ_ENUM) {
        const ProtobufCEnumDescriptor *e = ab_schema_enum(w->set, name);
        AB_FUZZ_CHECK(e != NULL, "enum %s of a loaded set not found", name);
        for (unsigned i = 0; i < e->n_values; i++)
            AB_FUZZ_CHECK(protobuf_c_enum_descriptor_get_value(e, e->values[i].value) ==
                              &e->values[i],
                          "enum %s: value %d not found by number", name, e->values[i].value);
    } else {
        const ProtobufCServiceDescriptor *s = ab_schema_service(w->set, name);
        AB_FUZZ_CHECK(s != NULL, "service %s of a loaded set not found", name);
        for (unsigned i = 0; i < s->n_methods; i++) {
            const ProtobufCMethodDescriptor *m = &s->methods[i];
            AB_FUZZ_CHECK(m->input != NULL && m->output != NULL, "method %s/%s", name, m->name);
            AB_FUZZ_CHECK(protobuf_c_service_descriptor_get_method_by_name(s, m->name) == m,
                          "method %s/%s not found by name", name, m->name);
        }
    }
    (void)proto;
}

/* Both directions against the seed file; any number of problems is fine. */
static void
s_compat_with_seed(const Google__Protobuf__FileDescriptorProto *fp)
{
    ab_compat_report_t r = {0};
    int rc = ab_compat_check(ab_fuzz_seed_file(), fp, &r);
    AB_FUZZ_CHECK(rc >= 0 && (size_t)rc == r.count, "compat seed->file: rc %d, %zu problems", rc,
                  r.count);
    ab_compat_report_clear(&r);
    rc = ab_compat_check(fp, ab_fuzz_seed_file(), &r);
    AB_FUZZ_CHECK(rc >= 0 && (size_t)rc == r.count, "compat file->seed: rc %d, %zu problems", rc,
                  r.count);
    ab_compat_report_clear(&r);
}

/* Bytes that decode but do not load: the compatibility check reads them all the same. */
static void
s_unloaded(const uint8_t *data, size_t size)
{
    if (ab_schema_validate(&google__protobuf__file_descriptor_set__descriptor, data, size, NULL) !=
        0)
        return; /* unbounded nesting would overflow protobuf-c's unpack */
    Google__Protobuf__FileDescriptorSet *fds =
        google__protobuf__file_descriptor_set__unpack(NULL, size, data);
    if (fds == NULL)
        return;
    for (size_t i = 0; i < fds->n_file && i < 4; i++) {
        ab_compat_report_t r = {0};
        int rc = ab_compat_check(fds->file[i], fds->file[i], &r);
        AB_FUZZ_CHECK(rc >= 0, "compat of an unloadable file with itself: rc %d", rc);
        ab_compat_report_clear(&r);
        if (i + 1 < fds->n_file) {
            rc = ab_compat_check(fds->file[i], fds->file[i + 1], &r);
            AB_FUZZ_CHECK(rc >= 0, "compat of two unloadable files: rc %d", rc);
            ab_compat_report_clear(&r);
        }
        s_compat_with_seed(fds->file[i]);
    }
    google__protobuf__file_descriptor_set__free_unpacked(fds, NULL);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ab_schema_set_t *set = NULL;
    ab_schema_error_t err;
    if (ab_schema_set_load(data, size, &set, &err) != 0) {
        AB_FUZZ_CHECK(set == NULL, "failed load left a set");
        AB_FUZZ_CHECK(memchr(err.text, '\0', sizeof err.text) != NULL, "error text unterminated");
        s_unloaded(data, size);
        return 0;
    }
    s_walk_t w = {.set = set, .data = data, .len = size};
    for (size_t i = 0; i < ab_schema_file_count(set); i++) {
        const Google__Protobuf__FileDescriptorProto *fp = ab_schema_file_proto(set, i);
        AB_FUZZ_CHECK(fp != NULL && ab_schema_file_name(set, i) != NULL, "file %zu missing", i);
        ab_fuzz_walk_file(fp, s_visit, &w);
        ab_compat_report_t r = {0};
        int rc = ab_compat_check(fp, fp, &r);
        AB_FUZZ_CHECK(rc == 0, "file %s compared with itself: %d problems, first %s at %s: %s",
                      fp->name, rc, r.count ? r.problems[0].rule : "-",
                      r.count ? r.problems[0].element : "-", r.count ? r.problems[0].text : "-");
        ab_compat_report_clear(&r);
        s_compat_with_seed(fp);
    }
    AB_FUZZ_CHECK(ab_schema_file_name(set, ab_schema_file_count(set)) == NULL, "past the end");
    ab_schema_set_destroy(&set);
    AB_FUZZ_CHECK(set == NULL, "destroy did not null the pointer");
    ab_schema_set_destroy(&set);
    return 0;
}
