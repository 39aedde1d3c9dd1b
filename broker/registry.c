/* The schema registry: see registry.h. */
#include "registry.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* uthash exits the process when it cannot allocate a table or bucket, unless told not to: then
 * the element is not added and its hh.tbl is NULL, which each HASH_ADD here checks. */
#define HASH_NONFATAL_OOM 1
#include <uthash.h>

#include "amtsbote.h"
#include "amtsbote/v1/amtsbote.pb-c.h"
#include "google/protobuf/descriptor.pb-c.h"
#include "log.h"
#include "schema.h"
#include "schema_compat.h"
#include "wire.h"

#define S_METHOD_PUSH BRK_REGISTRY_BROKER "/SchemaPush"
#define S_METHOD_LIST BRK_REGISTRY_BROKER "/SchemaList"
#define S_METHOD_GET BRK_REGISTRY_BROKER "/SchemaGet"
#define BRK_REGISTRY_BROKER "amtsbote.v1.Broker"
#define S_MAX_FILE_NAME 200

typedef Google__Protobuf__FileDescriptorProto file_proto_t;
typedef Google__Protobuf__DescriptorProto msg_proto_t;

enum { K_MSG, K_ENUM, K_SVC };

/* A loaded descriptor set, shared by the files pushed in it. */
typedef struct {
    ab_schema_set_t *set;
    uint8_t *bytes; /* as pushed, for SchemaGet */
    size_t len;
    int refs;
} s_set_t;

typedef struct {
    char *name;
    uint32_t version;
    char *pushed_by;
    uint64_t pushed_at_ms;
    uint8_t sha256[32];
    s_set_t *set;
    const file_proto_t *proto; /* borrowed from set */
    UT_hash_handle hh;
} s_file_t;

typedef struct {
    const char *name; /* the descriptor's own name */
    int kind;
    s_file_t *file;
    const void *desc;
    UT_hash_handle hh;
} s_name_t;

struct brk_registry {
    const brk_config_t *cfg;
    brk_store_t *store;
    brk_registry_push_check_fn *push_check;
    void *push_ctx;
    s_file_t *files;
    s_name_t *names;
    brk_registry_stats_t st;
};

static void s_verdict(brk_verdict_t *v, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
s_verdict(brk_verdict_t *v, int code, const char *field, const char *fmt, ...)
{
    v->code = code;
    snprintf(v->field, sizeof v->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->text, sizeof v->text, fmt, ap);
    va_end(ap);
}

static void
s_set_unref(s_set_t *s)
{
    if (s && --s->refs == 0) {
        ab_schema_set_destroy(&s->set);
        free(s->bytes);
        free(s);
    }
}

/* Loads a set; the bytes are copied. NULL with the reason in err. */
static s_set_t *
s_set_new(const uint8_t *data, size_t len, ab_schema_error_t *err)
{
    s_set_t *s = calloc(1, sizeof *s);
    if (s == NULL || (s->bytes = malloc(len ? len : 1)) == NULL) {
        free(s);
        snprintf(err->text, sizeof err->text, "out of memory");
        return NULL;
    }
    if (len > 0) /* an empty set may come as NULL */
        memcpy(s->bytes, data, len);
    s->len = len;
    s->refs = 1;
    if (ab_schema_set_load(s->bytes, len, &s->set, err) != 0) {
        free(s->bytes);
        free(s);
        return NULL;
    }
    return s;
}

static void
s_file_free(s_file_t *f)
{
    if (f == NULL)
        return;
    s_set_unref(f->set);
    free(f->name);
    free(f->pushed_by);
    free(f);
}

/* Files of google/protobuf/ ride along with a set; they are nobody's interface. */
static int
s_is_wellknown(const char *name)
{
    return strncmp(name, "google/protobuf/", 16) == 0;
}

static const file_proto_t *
s_find_file_proto(const ab_schema_set_t *set, const char *name)
{
    for (size_t i = 0; i < ab_schema_file_count(set); i++)
        if (strcmp(ab_schema_file_name(set, i), name) == 0)
            return ab_schema_file_proto(set, i);
    return NULL;
}

/* ---- the index: every name a registered file defines ---- */

typedef void s_name_fn(void *arg, const char *full, int kind);

static void
s_walk_message(const msg_proto_t *m, const char *scope, s_name_fn *fn, void *arg)
{
    /* a map field's entry message is protoc's, not the interface's: not listed, not claimable */
    if (m->options && m->options->has_map_entry && m->options->map_entry)
        return;
    char full[512];
    snprintf(full, sizeof full, "%s%s%s", scope, scope[0] ? "." : "", m->name);
    fn(arg, full, K_MSG);
    for (size_t i = 0; i < m->n_nested_type; i++)
        s_walk_message(m->nested_type[i], full, fn, arg);
    for (size_t i = 0; i < m->n_enum_type; i++) {
        char e[768];
        snprintf(e, sizeof e, "%s.%s", full, m->enum_type[i]->name);
        fn(arg, e, K_ENUM);
    }
}

static void
s_walk_file(const file_proto_t *f, s_name_fn *fn, void *arg)
{
    const char *pkg = f->package ? f->package : "";
    for (size_t i = 0; i < f->n_message_type; i++)
        s_walk_message(f->message_type[i], pkg, fn, arg);
    for (size_t i = 0; i < f->n_enum_type; i++) {
        char e[512];
        snprintf(e, sizeof e, "%s%s%s", pkg, pkg[0] ? "." : "", f->enum_type[i]->name);
        fn(arg, e, K_ENUM);
    }
    for (size_t i = 0; i < f->n_service; i++) {
        char e[512];
        snprintf(e, sizeof e, "%s%s%s", pkg, pkg[0] ? "." : "", f->service[i]->name);
        fn(arg, e, K_SVC);
    }
}

typedef struct {
    brk_registry_t *self;
    s_file_t *file;
    int rc;
} s_index_ctx_t;

static void
s_index_one(void *arg, const char *full, int kind)
{
    s_index_ctx_t *x = arg;
    const ab_schema_set_t *set = x->file->set->set;
    const void *desc = kind == K_MSG    ? (const void *)ab_schema_message(set, full)
                       : kind == K_ENUM ? (const void *)ab_schema_enum(set, full)
                                        : (const void *)ab_schema_service(set, full);
    if (desc == NULL)
        return; /* cannot happen for a set that loaded */
    s_name_t *n = calloc(1, sizeof *n);
    if (n == NULL) {
        x->rc = AB_ENOMEM;
        return;
    }
    /* the descriptor's name lives as long as the set: a stable key */
    n->name = kind == K_MSG    ? ((const ProtobufCMessageDescriptor *)desc)->name
              : kind == K_ENUM ? ((const ProtobufCEnumDescriptor *)desc)->name
                               : ((const ProtobufCServiceDescriptor *)desc)->name;
    n->kind = kind;
    n->file = x->file;
    n->desc = desc;
    s_name_t *old = NULL;
    HASH_FIND_STR(x->self->names, n->name, old);
    if (old) {
        HASH_DEL(x->self->names, old);
        free(old);
    }
    HASH_ADD_KEYPTR(hh, x->self->names, n->name, strlen(n->name), n);
    if (n->hh.tbl == NULL) {
        free(n);
        x->rc = AB_ENOMEM;
    }
}

static int
s_reindex(brk_registry_t *self)
{
    s_name_t *n, *tmp;
    HASH_ITER(hh, self->names, n, tmp)
    {
        HASH_DEL(self->names, n);
        free(n);
    }
    s_index_ctx_t x = {self, NULL, 0};
    for (s_file_t *f = self->files; f; f = f->hh.next) {
        x.file = f;
        s_walk_file(f->proto, s_index_one, &x);
    }
    self->st.files = HASH_COUNT(self->files);
    self->st.types = HASH_COUNT(self->names);
    return x.rc;
}

static const s_name_t *
s_lookup(const brk_registry_t *self, const char *name, size_t len)
{
    if (len >= 512)
        return NULL;
    char key[512];
    memcpy(key, name, len);
    key[len] = '\0';
    s_name_t *n = NULL;
    HASH_FIND_STR(self->names, key, n);
    return n;
}

/* ---- start: the latest version of each file from the store ---- */

typedef struct {
    brk_registry_t *self;
    char *err;
    size_t errlen;
} s_load_ctx_t;

static int
s_load_row(void *arg, const brk_store_schema_t *row)
{
    s_load_ctx_t *x = arg;
    ab_schema_error_t e = {{0}, {0}};
    s_set_t *set = s_set_new(row->set, row->set_len, &e);
    if (set == NULL) {
        snprintf(x->err, x->errlen, "stored schema file %s version %u does not load: %s %s",
                 row->name, row->version, e.path, e.text);
        return AB_EINTERNAL;
    }
    const file_proto_t *proto = s_find_file_proto(set->set, row->name);
    s_file_t *f = calloc(1, sizeof *f);
    if (proto == NULL || f == NULL || (f->name = strdup(row->name)) == NULL ||
        (f->pushed_by = strdup(row->pushed_by)) == NULL) {
        snprintf(x->err, x->errlen, "stored schema file %s version %u: %s", row->name, row->version,
                 proto ? "out of memory" : "its set does not hold it");
        s_file_free(f);
        s_set_unref(set);
        return AB_EINTERNAL;
    }
    f->version = row->version;
    f->pushed_at_ms = row->pushed_at_ms;
    memcpy(f->sha256, row->sha256, 32);
    f->set = set;
    f->proto = proto;
    HASH_ADD_KEYPTR(hh, x->self->files, f->name, strlen(f->name), f);
    if (f->hh.tbl == NULL) {
        snprintf(x->err, x->errlen, "stored schema file %s version %u: out of memory", row->name,
                 row->version);
        s_file_free(f);
        return AB_ENOMEM;
    }
    return 0;
}

brk_registry_t *
brk_registry_new(const brk_config_t *cfg, brk_store_t *store, char *err, size_t errlen)
{
    brk_registry_t *self = calloc(1, sizeof *self);
    if (self == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    self->cfg = cfg;
    self->store = store;
    s_load_ctx_t x = {self, err, errlen};
    if (brk_store_schema_each(store, NULL, 0, s_load_row, &x, err, errlen) != 0) {
        brk_registry_destroy(&self);
        return NULL;
    }
    if (s_reindex(self) != 0) {
        snprintf(err, errlen, "out of memory indexing the registered types");
        brk_registry_destroy(&self);
        return NULL;
    }
    return self;
}

void
brk_registry_destroy(brk_registry_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    brk_registry_t *self = *self_p;
    s_name_t *n, *ntmp;
    HASH_ITER(hh, self->names, n, ntmp)
    {
        HASH_DEL(self->names, n);
        free(n);
    }
    s_file_t *f, *ftmp;
    HASH_ITER(hh, self->files, f, ftmp)
    {
        HASH_DEL(self->files, f);
        s_file_free(f);
    }
    free(self);
    *self_p = NULL;
}

/* ---- checks on the hot path ---- */

static int
s_required(const brk_registry_t *self, const char *service, size_t len)
{
    for (size_t i = 0; i < self->cfg->nrequire_schema; i++) {
        const char *p = self->cfg->require_schema[i];
        size_t pl = strlen(p);
        if (pl > 0 && p[pl - 1] == '*') {
            if (len >= pl - 1 && strncmp(service, p, pl - 1) == 0)
                return 1;
        } else if (pl == len && strncmp(service, p, len) == 0) {
            return 1;
        }
    }
    return 0;
}

static int
s_validate(brk_registry_t *self, const ProtobufCMessageDescriptor *d, const uint8_t *data,
           size_t len, const char *what, brk_verdict_t *v)
{
    self->st.validated++;
    ab_schema_error_t e;
    if (ab_schema_validate(d, data, len, &e) == 0)
        return 0;
    self->st.invalid++;
    /* an error about the message as a whole has no field path */
    int whole = e.path[0] == '\0' || strcmp(e.path, d->name) == 0;
    s_verdict(v, AB_ESCHEMA_INVALID, whole ? "" : e.path, "%s is not a valid %s: %s%s%s%s", what,
              d->name, whole ? "" : "field ", whole ? "" : e.path, whole ? "" : ": ", e.text);
    return AB_ESCHEMA_INVALID;
}

int
brk_registry_check_call(brk_registry_t *self, const char *method, const char *schema,
                        const uint8_t *data, size_t len, int reply, brk_verdict_t *v)
{
    const char *slash = strchr(method, '/');
    size_t svc_len = slash ? (size_t)(slash - method) : strlen(method);
    const s_name_t *svc = self->names ? s_lookup(self, method, svc_len) : NULL;
    const char *what = reply ? "the reply" : "the request";
    if (svc != NULL && svc->kind == K_SVC && slash) {
        const ProtobufCMethodDescriptor *m =
            protobuf_c_service_descriptor_get_method_by_name(svc->desc, slash + 1);
        if (m == NULL) {
            s_verdict(v, AB_EUNKNOWN_SERVICE, "",
                      "%.*s has no method %s in its registered interface (%s version %u)",
                      (int)svc_len, method, slash + 1, svc->file->name, svc->file->version);
            return v->code;
        }
        const ProtobufCMessageDescriptor *want = reply ? m->output : m->input;
        if (schema && schema[0] && strcmp(schema, want->name) != 0) {
            self->st.invalid++;
            s_verdict(v, AB_ESCHEMA_INVALID, "", "%s claims type %s, but %s %s %s", what, schema,
                      method, reply ? "returns" : "takes", want->name);
            return v->code;
        }
        return s_validate(self, want, data, len, what, v);
    }
    if (!reply && s_required(self, method, svc_len)) {
        s_verdict(v, AB_EUNKNOWN_SERVICE, "",
                  "%.*s needs a registered interface (require_schema) and none is pushed",
                  (int)svc_len, method);
        return v->code;
    }
    if (schema && schema[0])
        return brk_registry_check_message(self, schema, data, len, v);
    return 0;
}

int
brk_registry_check_message(brk_registry_t *self, const char *schema, const uint8_t *data,
                           size_t len, brk_verdict_t *v)
{
    if (self->names == NULL || schema == NULL || schema[0] == '\0')
        return 0;
    const s_name_t *n = s_lookup(self, schema, strlen(schema));
    if (n == NULL || n->kind != K_MSG)
        return 0;
    return s_validate(self, n->desc, data, len, "the payload", v);
}

int
brk_registry_check_offer(brk_registry_t *self, const char *service, brk_verdict_t *v)
{
    const char *slash = strchr(service, '/');
    size_t svc_len = slash ? (size_t)(slash - service) : strlen(service);
    const s_name_t *svc = self->names ? s_lookup(self, service, svc_len) : NULL;
    if (svc != NULL && svc->kind == K_SVC) {
        if (slash &&
            protobuf_c_service_descriptor_get_method_by_name(svc->desc, slash + 1) == NULL) {
            s_verdict(v, AB_EUNKNOWN_SERVICE, "",
                      "%.*s has no method %s in its registered interface (%s version %u)",
                      (int)svc_len, service, slash + 1, svc->file->name, svc->file->version);
            return v->code;
        }
        return 0;
    }
    if (s_required(self, service, svc_len)) {
        s_verdict(v, AB_EUNKNOWN_SERVICE, "",
                  "%.*s needs a registered interface (require_schema): push it with `amtsbote "
                  "schema push` before offering it",
                  (int)svc_len, service);
        return v->code;
    }
    return 0;
}

/* ---- the broker methods ---- */

int
brk_registry_answers(const char *method)
{
    return strcmp(method, S_METHOD_PUSH) == 0 || strcmp(method, S_METHOD_LIST) == 0 ||
           strcmp(method, S_METHOD_GET) == 0;
}

/* A list of strings that grows; freed with s_strs_free. */
typedef struct {
    char **v;
    size_t n, cap;
    int oom;
} s_strs_t;

static void
s_strs_add(void *arg, const char *full, int kind)
{
    s_strs_t *s = (s_strs_t *)arg + kind;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 8;
        char **v = realloc(s->v, cap * sizeof *v);
        if (v == NULL) {
            s->oom = 1;
            return;
        }
        s->v = v;
        s->cap = cap;
    }
    if ((s->v[s->n] = strdup(full)) == NULL) {
        s->oom = 1;
        return;
    }
    s->n++;
}

static void
s_strs_free(s_strs_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof *s);
}

/* Fills `info` for file f; `names` (3 lists: messages, enums, services) own the strings. */
static void
s_file_info(const s_file_t *f, Amtsbote__V1__SchemaFileInfo *info, s_strs_t names[3])
{
    amtsbote__v1__schema_file_info__init(info);
    memset(names, 0, 3 * sizeof *names);
    s_walk_file(f->proto, s_strs_add, names);
    info->name = f->name;
    info->version = f->version;
    info->package = f->proto->package ? f->proto->package : "";
    info->messages = names[K_MSG].v;
    info->n_messages = names[K_MSG].n;
    info->enums = names[K_ENUM].v;
    info->n_enums = names[K_ENUM].n;
    info->services = names[K_SVC].v;
    info->n_services = names[K_SVC].n;
    info->pushed_by = f->pushed_by;
    info->pushed_at_ms = f->pushed_at_ms;
    info->sha256.data = (uint8_t *)f->sha256;
    info->sha256.len = 32;
}

static int
s_pack(const ProtobufCMessage *m, uint8_t **out, size_t *out_len)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    if ((*out = malloc(len ? len : 1)) == NULL)
        return AB_ENOMEM;
    *out_len = protobuf_c_message_pack(m, *out);
    return 0;
}

static int
s_list(brk_registry_t *self, uint8_t **out, size_t *out_len)
{
    size_t n = HASH_COUNT(self->files);
    Amtsbote__V1__SchemaFileInfo *infos = calloc(n ? n : 1, sizeof *infos);
    Amtsbote__V1__SchemaFileInfo **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    s_strs_t *names = calloc(3 * (n ? n : 1), sizeof *names);
    int rc = AB_ENOMEM;
    if (infos && ptrs && names) {
        size_t i = 0;
        for (s_file_t *f = self->files; f; f = f->hh.next, i++) {
            s_file_info(f, &infos[i], &names[3 * i]);
            ptrs[i] = &infos[i];
        }
        Amtsbote__V1__SchemaList list = AMTSBOTE__V1__SCHEMA_LIST__INIT;
        list.files = ptrs;
        list.n_files = n;
        rc = s_pack(&list.base, out, out_len);
    }
    for (size_t i = 0; names && i < 3 * n; i++)
        s_strs_free(&names[i]);
    free(names);
    free(ptrs);
    free(infos);
    return rc;
}

typedef struct {
    uint8_t *bytes;
    size_t len;
    s_file_t file;
    int found;
} s_get_ctx_t;

static int
s_get_row(void *arg, const brk_store_schema_t *row)
{
    s_get_ctx_t *x = arg;
    if ((x->bytes = malloc(row->set_len ? row->set_len : 1)) == NULL)
        return AB_ENOMEM;
    if (row->set_len > 0)
        memcpy(x->bytes, row->set, row->set_len);
    x->len = row->set_len;
    x->file.version = row->version;
    x->file.pushed_at_ms = row->pushed_at_ms;
    x->file.pushed_by = strdup(row->pushed_by);
    memcpy(x->file.sha256, row->sha256, 32);
    x->found = 1;
    return x->file.pushed_by ? 0 : AB_ENOMEM;
}

static int
s_get(brk_registry_t *self, const uint8_t *data, size_t len, uint8_t **out, size_t *out_len,
      brk_verdict_t *v)
{
    Amtsbote__V1__SchemaGetRequest *req = amtsbote__v1__schema_get_request__unpack(NULL, len, data);
    if (req == NULL) {
        s_verdict(v, AB_EINVAL, "", "%s takes a SchemaGetRequest", S_METHOD_GET);
        return v->code;
    }
    int rc = 0;
    const char *name = req->name ? req->name : "";
    s_file_t *f = NULL;
    HASH_FIND_STR(self->files, name, f);
    if (f == NULL) {
        const char *slash = strchr(name, '/');
        const s_name_t *n = s_lookup(self, name, slash ? (size_t)(slash - name) : strlen(name));
        f = n ? n->file : NULL;
    }
    if (f == NULL) {
        s_verdict(v, AB_EINVAL, "name",
                  "no registered file defines %s (see `amtsbote schema list`)", name);
        amtsbote__v1__schema_get_request__free_unpacked(req, NULL);
        return v->code;
    }
    Amtsbote__V1__SchemaGetReply reply = AMTSBOTE__V1__SCHEMA_GET_REPLY__INIT;
    Amtsbote__V1__SchemaFileInfo info;
    s_strs_t names[3];
    s_get_ctx_t x = {0};
    s_file_t older = {0};
    const s_file_t *shown = f;
    if (req->version == 0 || req->version == f->version) {
        reply.descriptor_set.data = f->set->bytes;
        reply.descriptor_set.len = f->set->len;
    } else {
        char err[512];
        rc = brk_store_schema_each(self->store, f->name, req->version, s_get_row, &x, err,
                                   sizeof err);
        if (rc != 0 || !x.found) {
            s_verdict(v, rc ? rc : AB_EINVAL, "version", "%s has no version %u%s%s", f->name,
                      req->version, rc ? ": " : "", rc ? err : "");
            rc = v->code;
            goto done;
        }
        older = *f;
        older.version = x.file.version;
        older.pushed_by = x.file.pushed_by;
        older.pushed_at_ms = x.file.pushed_at_ms;
        memcpy(older.sha256, x.file.sha256, 32);
        shown = &older;
        reply.descriptor_set.data = x.bytes;
        reply.descriptor_set.len = x.len;
    }
    s_file_info(shown, &info, names);
    reply.file = &info;
    rc = s_pack(&reply.base, out, out_len);
    for (int i = 0; i < 3; i++)
        s_strs_free(&names[i]);
done:
    free(x.bytes);
    free(x.file.pushed_by);
    amtsbote__v1__schema_get_request__free_unpacked(req, NULL);
    return rc;
}

/* ---- push ---- */

typedef struct {
    Amtsbote__V1__SchemaFileResult res;
    Amtsbote__V1__SchemaProblem **problems;
    size_t nproblems;
    const file_proto_t *proto;
    s_file_t *prev;
    int changed;
} s_result_t;

static int s_problem(s_result_t *r, const char *rule, const char *element, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int
s_problem(s_result_t *r, const char *rule, const char *element, const char *fmt, ...)
{
    Amtsbote__V1__SchemaProblem **v =
        realloc(r->problems, (r->nproblems + 1) * sizeof *r->problems);
    if (v == NULL)
        return AB_ENOMEM;
    r->problems = v;
    Amtsbote__V1__SchemaProblem *p = calloc(1, sizeof *p);
    char *text = malloc(512);
    if (p == NULL || text == NULL) {
        free(p);
        free(text);
        return AB_ENOMEM;
    }
    amtsbote__v1__schema_problem__init(p);
    p->rule = strdup(rule);
    p->element = strdup(element);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, 512, fmt, ap);
    va_end(ap);
    p->text = text;
    r->problems[r->nproblems++] = p;
    return p->rule && p->element ? 0 : AB_ENOMEM;
}

typedef struct {
    brk_registry_t *self;
    s_result_t *r;
    const char *file;
} s_conflict_ctx_t;

static void
s_conflict(void *arg, const char *full, int kind)
{
    (void)kind;
    s_conflict_ctx_t *x = arg;
    const s_name_t *n = s_lookup(x->self, full, strlen(full));
    if (n && strcmp(n->file->name, x->file) != 0)
        s_problem(x->r, "name-taken", full,
                  "%s is already defined by the registered file %s (version %u); a name belongs "
                  "to one file",
                  full, n->file->name, n->file->version);
}

static int
s_check_file_name(const char *name, char *why, size_t cap)
{
    size_t n = strlen(name);
    if (n == 0 || n > S_MAX_FILE_NAME) {
        snprintf(why, cap, "a file name has 1 to %d characters", S_MAX_FILE_NAME);
        return -1;
    }
    if (name[0] == '/' || strstr(name, "..") || !ab_utf8_valid(name, n)) {
        snprintf(why, cap, "a file name is relative, without '..', and UTF-8");
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] < 0x20) {
            snprintf(why, cap, "a file name has no control characters");
            return -1;
        }
    return 0;
}

static int
s_push(brk_registry_t *self, const char *participant, const uint8_t *data, size_t len,
       uint64_t now_ms, uint8_t **out, size_t *out_len, brk_verdict_t *v)
{
    /* validated first: protobuf-c then refuses the bytes only when it cannot allocate */
    ab_schema_error_t ve;
    if (ab_schema_validate(&amtsbote__v1__schema_push_request__descriptor, data, len, &ve) != 0) {
        s_verdict(v, AB_EINVAL, "", "%s takes a SchemaPushRequest", S_METHOD_PUSH);
        return v->code;
    }
    Amtsbote__V1__SchemaPushRequest *req =
        amtsbote__v1__schema_push_request__unpack(NULL, len, data);
    if (req == NULL)
        return AB_ENOMEM; /* brk_registry_call() says "out of memory" */
    Amtsbote__V1__SchemaPushReply reply = AMTSBOTE__V1__SCHEMA_PUSH_REPLY__INIT;
    char error[640] = "";
    s_result_t *results = NULL;
    Amtsbote__V1__SchemaFileResult **rptrs = NULL;
    brk_store_schema_t *rows = NULL;
    size_t nres = 0, nrows = 0;
    int rc = 0, refused = 0;
    ab_schema_error_t e = {{0}, {0}};
    s_set_t *set = s_set_new(req->descriptor_set.data, req->descriptor_set.len, &e);
    if (set == NULL) {
        snprintf(error, sizeof error, "the descriptor set does not load: %s%s%s", e.path,
                 e.path[0] ? ": " : "", e.text);
        refused = 1;
        goto reply;
    }
    size_t nfiles = ab_schema_file_count(set->set);
    results = calloc(nfiles, sizeof *results);
    rptrs = calloc(nfiles, sizeof *rptrs);
    rows = calloc(nfiles, sizeof *rows);
    if (!results || !rptrs || !rows) {
        rc = AB_ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < nfiles; i++) {
        const char *name = ab_schema_file_name(set->set, i);
        if (s_is_wellknown(name))
            continue;
        s_result_t *r = &results[nres];
        amtsbote__v1__schema_file_result__init(&r->res);
        r->res.name = (char *)name;
        r->proto = ab_schema_file_proto(set->set, i);
        rptrs[nres++] = &r->res;
        char why[256];
        if (s_check_file_name(name, why, sizeof why) != 0) {
            s_problem(r, "file-name", name, "%s", why);
            continue;
        }
        HASH_FIND_STR(self->files, name, r->prev);
        if (r->prev == NULL) {
            r->changed = 1;
            r->res.version = 1;
            r->res.status = "new";
        } else {
            /* the same bytes: nothing to do, whoever pushes them */
            size_t a = google__protobuf__file_descriptor_proto__get_packed_size(r->proto);
            size_t b = google__protobuf__file_descriptor_proto__get_packed_size(r->prev->proto);
            uint8_t *pa = malloc(a ? a : 1), *pb = malloc(b ? b : 1);
            if (!pa || !pb) {
                free(pa);
                free(pb);
                rc = AB_ENOMEM;
                goto done;
            }
            google__protobuf__file_descriptor_proto__pack(r->proto, pa);
            google__protobuf__file_descriptor_proto__pack(r->prev->proto, pb);
            r->changed = a != b || memcmp(pa, pb, a) != 0;
            free(pa);
            free(pb);
            r->res.version = r->prev->version + (r->changed ? 1 : 0);
            r->res.status = r->changed ? "updated" : "unchanged";
            if (r->changed && strcmp(r->prev->pushed_by, participant) != 0)
                s_problem(r, "not-publisher", name,
                          "%s was published by %s; only %s may publish new versions of it", name,
                          r->prev->pushed_by, r->prev->pushed_by);
            if (r->changed) {
                ab_compat_report_t report = {0};
                int n = ab_compat_check(r->prev->proto, r->proto, &report);
                for (size_t k = 0; n > 0 && k < report.count; k++)
                    s_problem(r, report.problems[k].rule, report.problems[k].element, "%s",
                              report.problems[k].text);
                ab_compat_report_clear(&report);
                if (n < 0) {
                    rc = n;
                    goto done;
                }
            }
        }
        if (r->changed && self->push_check) {
            char denied[512];
            const char *pkg = r->proto->package ? r->proto->package : "";
            if (self->push_check(self->push_ctx, participant, pkg, denied, sizeof denied) != 0)
                s_problem(r, "policy", name, "%s may not publish package %s: %s", participant, pkg,
                          denied);
        }
        if (r->changed) {
            s_conflict_ctx_t cx = {self, r, name};
            s_walk_file(r->proto, s_conflict, &cx);
        }
    }
    if (nres == 0) {
        snprintf(error, sizeof error,
                 "the set holds only google/protobuf files: nothing to register");
        refused = 1;
    }
    for (size_t i = 0; i < nres; i++) {
        s_result_t *r = &results[i];
        r->res.problems = r->problems;
        r->res.n_problems = r->nproblems;
        if (r->nproblems > 0) {
            r->res.status = "refused";
            refused = 1;
        }
    }
    if (refused || req->dry_run)
        goto reply;
    for (size_t i = 0; i < nres; i++) {
        s_result_t *r = &results[i];
        if (!r->changed)
            continue;
        brk_store_schema_t *row = &rows[nrows++];
        row->name = r->res.name;
        row->version = r->res.version;
        row->set = set->bytes;
        row->set_len = set->len;
        row->pushed_by = participant;
        row->pushed_at_ms = now_ms;
    }
    if (nrows > 0) {
        char err[512];
        if (brk_store_schema_put(self->store, rows, nrows, err, sizeof err) != 0) {
            s_verdict(v, AB_EUNAVAILABLE, "", "the broker could not store the schema: %s", err);
            rc = v->code;
            goto done;
        }
        for (size_t i = 0, k = 0; i < nres; i++) {
            s_result_t *r = &results[i];
            if (!r->changed)
                continue;
            s_file_t *f = calloc(1, sizeof *f);
            if (f == NULL || !(f->name = strdup(r->res.name)) ||
                !(f->pushed_by = strdup(participant))) {
                s_file_free(f);
                rc = AB_ENOMEM; /* stored; the next start loads it */
                goto done;
            }
            f->version = r->res.version;
            f->pushed_at_ms = now_ms;
            memcpy(f->sha256, rows[k++].sha256, 32);
            f->set = set;
            set->refs++;
            f->proto = r->proto;
            if (r->prev) {
                HASH_DEL(self->files, r->prev);
                s_file_free(r->prev);
                r->prev = NULL;
            }
            HASH_ADD_KEYPTR(hh, self->files, f->name, strlen(f->name), f);
            if (f->hh.tbl == NULL) {
                s_file_free(f);
                rc = AB_ENOMEM; /* stored; the next start loads it */
                goto done;
            }
            brk_log(BRK_LOG_INFO, "event=schema_pushed file=%s version=%u participant=%s", f->name,
                    f->version, participant);
        }
        if ((rc = s_reindex(self)) != 0)
            goto done;
    }
    reply.accepted = 1;
reply:
    reply.files = rptrs;
    reply.n_files = nres;
    reply.error = error;
    rc = s_pack(&reply.base, out, out_len);
done:
    for (size_t i = 0; results && i < nres; i++) {
        for (size_t k = 0; k < results[i].nproblems; k++) {
            Amtsbote__V1__SchemaProblem *p = results[i].problems[k];
            free(p->rule);
            free(p->element);
            free(p->text);
            free(p);
        }
        free(results[i].problems);
    }
    free(results);
    free(rptrs);
    free(rows);
    s_set_unref(set);
    amtsbote__v1__schema_push_request__free_unpacked(req, NULL);
    if (rc == AB_ENOMEM)
        s_verdict(v, AB_EUNAVAILABLE, "", "the broker is out of memory");
    return rc == AB_ENOMEM ? AB_EUNAVAILABLE : rc;
}

int
brk_registry_call(brk_registry_t *self, const char *participant, const char *method,
                  const uint8_t *data, size_t len, uint64_t now_ms, uint8_t **out, size_t *out_len,
                  const char **schema, brk_verdict_t *v)
{
    *out = NULL;
    *out_len = 0;
    int rc;
    if (strcmp(method, S_METHOD_PUSH) == 0) {
        *schema = "amtsbote.v1.SchemaPushReply";
        rc = s_push(self, participant, data, len, now_ms, out, out_len, v);
    } else if (strcmp(method, S_METHOD_LIST) == 0) {
        *schema = "amtsbote.v1.SchemaList";
        rc = s_list(self, out, out_len);
    } else if (strcmp(method, S_METHOD_GET) == 0) {
        *schema = "amtsbote.v1.SchemaGetReply";
        rc = s_get(self, data, len, out, out_len, v);
    } else {
        s_verdict(v, AB_EUNKNOWN_SERVICE, "", "the registry does not answer %s", method);
        return v->code;
    }
    if (rc == AB_ENOMEM) {
        s_verdict(v, AB_EUNAVAILABLE, "", "the broker is out of memory");
        rc = AB_EUNAVAILABLE;
    }
    return rc;
}

void
brk_registry_stats(const brk_registry_t *self, brk_registry_stats_t *out)
{
    *out = self->st;
}

void
brk_registry_set_push_check(brk_registry_t *self, brk_registry_push_check_fn *fn, void *ctx)
{
    self->push_check = fn;
    self->push_ctx = ctx;
}
