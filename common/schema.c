/* Runtime descriptors and validation: see schema.h. */
#include "schema.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* uthash exits the process when it cannot allocate a table or bucket, unless told not to: then
 * the element is not added and its hh.tbl is NULL, which each HASH_ADD here checks. */
#define HASH_NONFATAL_OOM 1
#include <uthash.h>

#include "amtsbote.h"
#include "google/protobuf/descriptor.pb-c.h"
#include "wire.h"

#define S_MAX_SET_BYTES (16u << 20) /* a descriptor set larger than this is not an interface */
#define S_MAX_DEPTH 64              /* nesting of messages in a payload */
#define S_MAX_REQUIRED 64           /* proto2 required fields per message */
#define S_MAX_FIELD_NUMBER 536870911u

typedef Google__Protobuf__FileDescriptorProto file_proto_t;
typedef Google__Protobuf__DescriptorProto msg_proto_t;
typedef Google__Protobuf__EnumDescriptorProto enum_proto_t;
typedef Google__Protobuf__ServiceDescriptorProto svc_proto_t;
typedef Google__Protobuf__FieldDescriptorProto field_proto_t;

enum { S_MSG, S_ENUM, S_SVC };

/* What a runtime message descriptor carries beyond protobuf-c's (in reserved1). */
typedef struct {
    uint32_t magic;
    unsigned n_required;
    uint8_t *required_slot; /* per field: slot + 1 in the required bitmap, 0 when optional */
    int proto3;
    int map_entry;
    int merge_unsafe; /* see s_merge_unsafe() */
    /* for s_fast(): field index + 1 by number (numbers up to dense_max), a kind byte a field */
    uint16_t *dense;
    unsigned dense_max;
    uint8_t *kind;
} s_aux_t;

/* A field's kind byte (s_fast()): the wire type it wants and what to check. */
enum {
    K_WT = 0x07,       /* the wire type of one value */
    K_STRING = 0x08,   /* NUL-free, UTF-8 in proto3 */
    K_MSG = 0x10,      /* walk it */
    K_PACKABLE = 0x20, /* repeated scalar: wire type 2 is a packed run */
    K_REQUIRED = 0x40,
    K_MERGE = 0x80, /* a second occurrence cannot be merged by protobuf-c (s_merge_unsafe) */
};
#define S_DENSE_MAX 255
#define S_AUX_MAGIC 0x41427831u

/* One named type of the set. */
typedef struct {
    char *name; /* fully qualified, no leading dot */
    int kind;
    int proto3;
    const char *package;
    const void *proto; /* msg_proto_t / enum_proto_t / svc_proto_t */
    void *desc;        /* ProtobufC*Descriptor, arena memory */
    UT_hash_handle hh;
} s_type_t;

/* Arena chunks: every descriptor array, name and default value lives in one of them. */
typedef struct s_chunk {
    struct s_chunk *next;
    size_t used, cap;
    max_align_t data[];
} s_chunk_t;

struct ab_schema_set {
    Google__Protobuf__FileDescriptorSet *fds;
    s_type_t *types;
    s_chunk_t *chunks;
};

/* ---- small helpers ---- */

static void s_err(ab_schema_error_t *err, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
s_err(ab_schema_error_t *err, const char *path, const char *fmt, ...)
{
    if (err == NULL)
        return;
    snprintf(err->path, sizeof err->path, "%s", path ? path : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->text, sizeof err->text, fmt, ap);
    va_end(ap);
}

static void *
s_alloc(ab_schema_set_t *set, size_t size)
{
    size = (size + 15) & ~(size_t)15;
    s_chunk_t *c = set->chunks;
    if (c == NULL || c->cap - c->used < size) {
        size_t cap = size > 65536 ? size : 65536;
        c = malloc(sizeof *c + cap);
        if (c == NULL)
            return NULL;
        c->next = set->chunks;
        c->used = 0;
        c->cap = cap;
        set->chunks = c;
    }
    void *p = (char *)c->data + c->used;
    c->used += size;
    memset(p, 0, size);
    return p;
}

static char *
s_strdup(ab_schema_set_t *set, const char *a, const char *b)
{
    size_t la = strlen(a), lb = b ? strlen(b) : 0;
    char *s = s_alloc(set, la + lb + 2);
    if (s == NULL)
        return NULL;
    memcpy(s, a, la);
    if (b) {
        size_t at = la;
        if (la > 0)
            s[at++] = '.';
        memcpy(s + at, b, lb + 1);
    }
    return s;
}

static s_type_t *
s_find(const ab_schema_set_t *set, const char *name)
{
    s_type_t *t = NULL;
    HASH_FIND_STR(set->types, name, t);
    return t;
}

/* A protobuf identifier as protoc accepts it: a letter or '_', then letters, digits, '_'.
 * Names end up in JSON keys and values, error texts and logs, so nothing else gets through
 * (bytes that are not UTF-8 would make JSON that no parser reads). `dotted` allows a package:
 * identifiers joined by single dots. */
static int
s_ident(const char *s, int dotted)
{
    if (s == NULL || s[0] == '\0')
        return 0;
    int start = 1;
    for (; *s; s++) {
        char c = *s;
        int letter = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
        if (dotted && c == '.' && !start && s[1] != '\0') {
            start = 1;
            continue;
        }
        if (!letter && (start || c < '0' || c > '9'))
            return 0;
        start = 0;
    }
    return 1;
}

/* ---- pass 1: every named type, so that fields can refer to ones declared later ---- */

static int
s_add_type(ab_schema_set_t *set, const char *scope, const char *short_name, int kind,
           const file_proto_t *file, const void *proto, ab_schema_error_t *err)
{
    if (!s_ident(short_name, 0)) {
        s_err(err, file->name, "a type in file %s has no valid name", file->name);
        return AB_EINVAL;
    }
    char *name = s_strdup(set, scope, short_name);
    if (name == NULL)
        return AB_ENOMEM;
    if (s_find(set, name) != NULL) {
        s_err(err, name, "%s is defined twice (again in file %s)", name, file->name);
        return AB_EINVAL;
    }
    s_type_t *t = s_alloc(set, sizeof *t);
    if (t == NULL)
        return AB_ENOMEM;
    t->name = name;
    t->kind = kind;
    t->proto3 = file->syntax != NULL && strcmp(file->syntax, "proto3") == 0;
    t->package = file->package ? file->package : "";
    t->proto = proto;
    size_t sz = kind == S_MSG    ? sizeof(ProtobufCMessageDescriptor)
                : kind == S_ENUM ? sizeof(ProtobufCEnumDescriptor)
                                 : sizeof(ProtobufCServiceDescriptor);
    if ((t->desc = s_alloc(set, sz)) == NULL)
        return AB_ENOMEM;
    HASH_ADD_KEYPTR(hh, set->types, t->name, strlen(t->name), t);
    return t->hh.tbl ? 0 : AB_ENOMEM; /* t and its parts are the set's: freed with it */
}

static int
s_collect_message(ab_schema_set_t *set, const char *scope, const msg_proto_t *m,
                  const file_proto_t *file, ab_schema_error_t *err)
{
    int rc = s_add_type(set, scope, m->name, S_MSG, file, m, err);
    if (rc < 0)
        return rc;
    char *inner = s_strdup(set, scope, m->name);
    if (inner == NULL)
        return AB_ENOMEM;
    for (size_t i = 0; i < m->n_nested_type; i++)
        if ((rc = s_collect_message(set, inner, m->nested_type[i], file, err)) < 0)
            return rc;
    for (size_t i = 0; i < m->n_enum_type; i++)
        if ((rc = s_add_type(set, inner, m->enum_type[i]->name, S_ENUM, file, m->enum_type[i],
                             err)) < 0)
            return rc;
    return 0;
}

/* ---- pass 2: enums ---- */

static int
s_cmp_enum_value(const void *a, const void *b)
{
    const ProtobufCEnumValue *x = a, *y = b;
    return x->value < y->value ? -1 : x->value > y->value;
}

static int
s_cmp_enum_index(const void *a, const void *b)
{
    return strcmp(((const ProtobufCEnumValueIndex *)a)->name,
                  ((const ProtobufCEnumValueIndex *)b)->name);
}

/* Ranges of consecutive numbers over a sorted array, with protoc-c's closing sentinel. */
static ProtobufCIntRange *
s_ranges(ab_schema_set_t *set, const int *numbers, unsigned n, unsigned *n_ranges)
{
    unsigned count = 0;
    for (unsigned i = 0; i < n; i++)
        if (i == 0 || numbers[i] != numbers[i - 1] + 1)
            count++;
    ProtobufCIntRange *r = s_alloc(set, sizeof *r * (count + 1));
    if (r == NULL)
        return NULL;
    unsigned k = 0;
    for (unsigned i = 0; i < n; i++)
        if (i == 0 || numbers[i] != numbers[i - 1] + 1) {
            r[k].start_value = numbers[i];
            r[k].orig_index = i;
            k++;
        }
    r[k].start_value = 0;
    r[k].orig_index = n;
    *n_ranges = count;
    return r;
}

static int
s_build_enum(ab_schema_set_t *set, s_type_t *t, ab_schema_error_t *err)
{
    const enum_proto_t *e = t->proto;
    ProtobufCEnumDescriptor *d = t->desc;
    if (e->n_value == 0) {
        s_err(err, t->name, "enum %s has no values", t->name);
        return AB_EINVAL;
    }
    unsigned n = (unsigned)e->n_value;
    ProtobufCEnumValue *vals = s_alloc(set, sizeof *vals * n);
    ProtobufCEnumValueIndex *by_name = s_alloc(set, sizeof *by_name * n);
    int *numbers = s_alloc(set, sizeof *numbers * n);
    if (!vals || !by_name || !numbers)
        return AB_ENOMEM;
    for (unsigned i = 0; i < n; i++) {
        if (!s_ident(e->value[i]->name, 0)) {
            s_err(err, t->name, "enum %s has a value without a valid name", t->name);
            return AB_EINVAL;
        }
        vals[i].name = e->value[i]->name;
        vals[i].c_name = e->value[i]->name;
        vals[i].value = e->value[i]->number;
    }
    qsort(vals, n, sizeof *vals, s_cmp_enum_value);
    /* aliases share a number: keep one value per number, every name in the index */
    unsigned u = 0;
    for (unsigned i = 0; i < n; i++)
        if (u == 0 || vals[i].value != vals[u - 1].value)
            vals[u++] = vals[i];
    for (unsigned i = 0; i < n; i++) {
        by_name[i].name = e->value[i]->name;
        for (unsigned j = 0; j < u; j++)
            if (vals[j].value == e->value[i]->number)
                by_name[i].index = j;
    }
    qsort(by_name, n, sizeof *by_name, s_cmp_enum_index);
    for (unsigned i = 1; i < n; i++)
        if (strcmp(by_name[i].name, by_name[i - 1].name) == 0) {
            s_err(err, t->name, "enum %s has the value name %s twice", t->name, by_name[i].name);
            return AB_EINVAL;
        }
    for (unsigned i = 0; i < u; i++)
        numbers[i] = vals[i].value;
    d->magic = PROTOBUF_C__ENUM_DESCRIPTOR_MAGIC;
    d->name = t->name;
    d->short_name = e->name;
    d->c_name = t->name;
    d->package_name = t->package;
    d->n_values = u;
    d->values = vals;
    d->n_value_names = n;
    d->values_by_name = by_name;
    d->value_ranges = s_ranges(set, numbers, u, &d->n_value_ranges);
    return d->value_ranges ? 0 : AB_ENOMEM;
}

/* ---- pass 2: messages ---- */

typedef struct {
    const field_proto_t *proto;
    ProtobufCFieldDescriptor *desc;
} s_field_ref_t;

static int
s_cmp_field(const void *a, const void *b)
{
    const ProtobufCFieldDescriptor *x = a, *y = b;
    return x->id < y->id ? -1 : x->id > y->id;
}

static const ProtobufCFieldDescriptor *s_sort_fields; /* only during qsort below, one thread */

/* Size and alignment of a field's value in the message struct. */
static size_t
s_value_size(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    default:
        return 4; /* int32, uint32, sint32, fixed32, sfixed32, float, enum */
    }
}

static size_t
s_align(size_t off, size_t size)
{
    size_t a = size >= 8 ? 8 : size;
    return (off + a - 1) & ~(a - 1);
}

static int
s_map_type(int t, ProtobufCType *out)
{
    static const int map[19] = {
        -1,
        PROTOBUF_C_TYPE_DOUBLE,
        PROTOBUF_C_TYPE_FLOAT,
        PROTOBUF_C_TYPE_INT64,
        PROTOBUF_C_TYPE_UINT64,
        PROTOBUF_C_TYPE_INT32,
        PROTOBUF_C_TYPE_FIXED64,
        PROTOBUF_C_TYPE_FIXED32,
        PROTOBUF_C_TYPE_BOOL,
        PROTOBUF_C_TYPE_STRING,
        -1, /* group */
        PROTOBUF_C_TYPE_MESSAGE,
        PROTOBUF_C_TYPE_BYTES,
        PROTOBUF_C_TYPE_UINT32,
        PROTOBUF_C_TYPE_ENUM,
        PROTOBUF_C_TYPE_SFIXED32,
        PROTOBUF_C_TYPE_SFIXED64,
        PROTOBUF_C_TYPE_SINT32,
        PROTOBUF_C_TYPE_SINT64,
    };
    if (t < 1 || t > 18 || map[t] < 0)
        return -1;
    *out = (ProtobufCType)map[t];
    return 0;
}

static int
s_is_packable(ProtobufCType t)
{
    return t != PROTOBUF_C_TYPE_STRING && t != PROTOBUF_C_TYPE_BYTES &&
           t != PROTOBUF_C_TYPE_MESSAGE;
}

/* Parses a proto2 default (as protoc writes it into default_value) into arena memory. */
static int
s_default(ab_schema_set_t *set, const s_type_t *t, const field_proto_t *f,
          ProtobufCFieldDescriptor *fd, ab_schema_error_t *err)
{
    const char *s = f->default_value;
    char *end = NULL;
    void *v = NULL;
    errno = 0;
    switch (fd->type) {
    case PROTOBUF_C_TYPE_STRING: {
        char *c = s_strdup(set, s, NULL);
        fd->default_value = c;
        return c ? 0 : AB_ENOMEM;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        /* protoc writes C-escaped bytes; keep it simple and exact for the common escapes */
        size_t n = strlen(s);
        uint8_t *data = s_alloc(set, n + 1);
        ProtobufCBinaryData *bd = s_alloc(set, sizeof *bd);
        if (!data || !bd)
            return AB_ENOMEM;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            if (s[i] != '\\' || i + 1 >= n) {
                data[k++] = (uint8_t)s[i];
                continue;
            }
            char c = s[++i];
            if (c >= '0' && c <= '7') {
                unsigned val = 0;
                for (int j = 0; j < 3 && i < n && s[i] >= '0' && s[i] <= '7'; j++, i++)
                    val = val * 8 + (unsigned)(s[i] - '0');
                i--;
                data[k++] = (uint8_t)val;
            } else {
                data[k++] = (uint8_t)(c == 'n' ? '\n' : c == 'r' ? '\r' : c == 't' ? '\t' : c);
            }
        }
        bd->len = k;
        bd->data = data;
        fd->default_value = bd;
        return 0;
    }
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumValue *ev =
            protobuf_c_enum_descriptor_get_value_by_name(fd->descriptor, s);
        if (ev == NULL)
            goto bad;
        int *p = s_alloc(set, sizeof *p);
        if (p == NULL)
            return AB_ENOMEM;
        *p = ev->value;
        fd->default_value = p;
        return 0;
    }
    case PROTOBUF_C_TYPE_BOOL: {
        protobuf_c_boolean *p = s_alloc(set, sizeof *p);
        if (p == NULL)
            return AB_ENOMEM;
        if (strcmp(s, "true") == 0)
            *p = 1;
        else if (strcmp(s, "false") != 0)
            goto bad;
        fd->default_value = p;
        return 0;
    }
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE: {
        double d = strcmp(s, "inf") == 0    ? __builtin_inf()
                   : strcmp(s, "-inf") == 0 ? -__builtin_inf()
                   : strcmp(s, "nan") == 0  ? __builtin_nan("")
                                            : strtod(s, &end);
        if (end != NULL && (*end != '\0' || end == s))
            goto bad;
        if (fd->type == PROTOBUF_C_TYPE_FLOAT) {
            float *p = s_alloc(set, sizeof *p);
            if (p == NULL)
                return AB_ENOMEM;
            *p = (float)d;
            v = p;
        } else {
            double *p = s_alloc(set, sizeof *p);
            if (p == NULL)
                return AB_ENOMEM;
            *p = d;
            v = p;
        }
        fd->default_value = v;
        return 0;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        goto bad;
    default: {
        size_t size = s_value_size(fd->type);
        int is_unsigned =
            fd->type == PROTOBUF_C_TYPE_UINT32 || fd->type == PROTOBUF_C_TYPE_UINT64 ||
            fd->type == PROTOBUF_C_TYPE_FIXED32 || fd->type == PROTOBUF_C_TYPE_FIXED64;
        uint8_t *p = s_alloc(set, 8);
        if (p == NULL)
            return AB_ENOMEM;
        if (is_unsigned) {
            unsigned long long u = strtoull(s, &end, 0);
            if (*end != '\0' || end == s || errno || s[0] == '-' || (size == 4 && u > UINT32_MAX))
                goto bad;
            if (size == 4) {
                uint32_t x = (uint32_t)u;
                memcpy(p, &x, 4);
            } else {
                uint64_t x = u;
                memcpy(p, &x, 8);
            }
        } else {
            long long l = strtoll(s, &end, 0);
            if (*end != '\0' || end == s || errno ||
                (size == 4 && (l < INT32_MIN || l > INT32_MAX)))
                goto bad;
            if (size == 4) {
                int32_t x = (int32_t)l;
                memcpy(p, &x, 4);
            } else {
                int64_t x = l;
                memcpy(p, &x, 8);
            }
        }
        fd->default_value = p;
        return 0;
    }
    }
bad:
    s_err(err, t->name, "field %s.%s has a default value that does not fit its type", t->name,
          f->name);
    return AB_EINVAL;
}

static int
s_cmp_name_index(const void *a, const void *b)
{
    unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
    return strcmp(s_sort_fields[x].name, s_sort_fields[y].name);
}

static int
s_build_message(ab_schema_set_t *set, s_type_t *t, ab_schema_error_t *err)
{
    const msg_proto_t *m = t->proto;
    ProtobufCMessageDescriptor *d = t->desc;
    unsigned n = (unsigned)m->n_field;
    ProtobufCFieldDescriptor *fields = s_alloc(set, sizeof *fields * (n ? n : 1));
    s_aux_t *aux = s_alloc(set, sizeof *aux);
    /* oneof index -> offsets of its case and its union, assigned on first member */
    size_t n_oneof = m->n_oneof_decl;
    size_t *oneof_size = s_alloc(set, sizeof(size_t) * (n_oneof + 1));
    unsigned *oneof_case = s_alloc(set, sizeof(unsigned) * (n_oneof + 1));
    unsigned *oneof_union = s_alloc(set, sizeof(unsigned) * (n_oneof + 1));
    if (!fields || !aux || !oneof_size || !oneof_case || !oneof_union)
        return AB_ENOMEM;
    for (unsigned i = 0; i < n; i++) {
        const field_proto_t *f = m->field[i];
        ProtobufCFieldDescriptor *fd = &fields[i];
        if (!s_ident(f->name, 0)) {
            s_err(err, t->name, "message %s has a field without a valid name", t->name);
            return AB_EINVAL;
        }
        if (!f->has_number || f->number < 1 || (uint32_t)f->number > S_MAX_FIELD_NUMBER ||
            (f->number >= 19000 && f->number <= 19999)) {
            s_err(err, t->name, "field %s.%s has an invalid number", t->name, f->name);
            return AB_EINVAL;
        }
        if (!f->has_type || s_map_type(f->type, &fd->type) < 0) {
            s_err(err, t->name, "field %s.%s: %s", t->name, f->name,
                  f->has_type &&
                          f->type == GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_GROUP
                      ? "groups are not supported; use a nested message"
                      : "unknown field type");
            return AB_EINVAL;
        }
        fd->name = f->name;
        fd->id = (uint32_t)f->number;
        if (fd->type == PROTOBUF_C_TYPE_MESSAGE || fd->type == PROTOBUF_C_TYPE_ENUM) {
            const s_type_t *ref = NULL;
            if (f->type_name != NULL && f->type_name[0] == '.')
                ref = s_find(set, f->type_name + 1);
            if (ref == NULL ||
                ref->kind != (fd->type == PROTOBUF_C_TYPE_MESSAGE ? S_MSG : S_ENUM)) {
                s_err(err, t->name,
                      "field %s.%s: type %s is not defined in the set (was it "
                      "built with --include_imports?)",
                      t->name, f->name, f->type_name ? f->type_name : "(none)");
                return AB_EINVAL;
            }
            fd->descriptor = ref->desc;
        }
        int label = f->has_label ? f->label
                                 : GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__LABEL__LABEL_OPTIONAL;
        int in_oneof = f->has_oneof_index && !(f->has_proto3_optional && f->proto3_optional);
        if (in_oneof && (f->oneof_index < 0 || (size_t)f->oneof_index >= n_oneof)) {
            s_err(err, t->name, "field %s.%s names a oneof that does not exist", t->name, f->name);
            return AB_EINVAL;
        }
        if (label == GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__LABEL__LABEL_REPEATED) {
            fd->label = PROTOBUF_C_LABEL_REPEATED;
            int packed = t->proto3 ? !(f->options && f->options->has_packed && !f->options->packed)
                                   : (f->options && f->options->has_packed && f->options->packed);
            if (packed && s_is_packable(fd->type))
                fd->flags |= PROTOBUF_C_FIELD_FLAG_PACKED;
        } else if (label == GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__LABEL__LABEL_REQUIRED) {
            fd->label = PROTOBUF_C_LABEL_REQUIRED;
            if (aux->n_required >= S_MAX_REQUIRED) {
                s_err(err, t->name, "message %s has more than %d required fields", t->name,
                      S_MAX_REQUIRED);
                return AB_EINVAL;
            }
            aux->n_required++;
        } else if (t->proto3 && !(f->has_proto3_optional && f->proto3_optional)) {
            fd->label = PROTOBUF_C_LABEL_NONE;
        } else {
            fd->label = PROTOBUF_C_LABEL_OPTIONAL;
        }
        if (in_oneof) {
            fd->flags |= PROTOBUF_C_FIELD_FLAG_ONEOF;
            size_t sz = s_value_size(fd->type);
            if (sz > oneof_size[f->oneof_index])
                oneof_size[f->oneof_index] = sz;
        }
        if (f->options && f->options->has_deprecated && f->options->deprecated)
            fd->flags |= PROTOBUF_C_FIELD_FLAG_DEPRECATED;
        if (f->default_value != NULL && fd->label != PROTOBUF_C_LABEL_REPEATED) {
            int rc = s_default(set, t, f, fd, err);
            if (rc < 0)
                return rc;
        } else if (fd->type == PROTOBUF_C_TYPE_STRING && t->proto3 && !in_oneof &&
                   fd->label != PROTOBUF_C_LABEL_OPTIONAL) {
            /* as protoc-c: "" for proto3 strings (ignored for repeated ones). Not for oneof
             * members, unlike protoc-c: protobuf-c's generic init would write the pointer into
             * the union, and unpacking a message member over it would free it. */
            fd->default_value = protobuf_c_empty_string;
        }
    }
    /* the struct: base, then each field (oneof members share a case and a union) */
    size_t off = sizeof(ProtobufCMessage);
    for (size_t o = 0; o < n_oneof; o++)
        oneof_case[o] = 0;
    for (unsigned i = 0; i < n; i++) {
        const field_proto_t *f = m->field[i];
        ProtobufCFieldDescriptor *fd = &fields[i];
        size_t sz = s_value_size(fd->type);
        if (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            size_t o = (size_t)f->oneof_index;
            if (oneof_case[o] == 0) {
                off = s_align(off, 4);
                oneof_case[o] = (unsigned)off;
                off += 4;
                off = s_align(off, 8);
                oneof_union[o] = (unsigned)off;
                off += oneof_size[o];
            }
            fd->quantifier_offset = oneof_case[o];
            fd->offset = oneof_union[o];
            continue;
        }
        if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
            off = s_align(off, sizeof(size_t));
            fd->quantifier_offset = (unsigned)off;
            off += sizeof(size_t);
            off = s_align(off, sizeof(void *));
            fd->offset = (unsigned)off;
            off += sizeof(void *);
            continue;
        }
        if (fd->label == PROTOBUF_C_LABEL_OPTIONAL && fd->type != PROTOBUF_C_TYPE_STRING &&
            fd->type != PROTOBUF_C_TYPE_MESSAGE) {
            off = s_align(off, sizeof(protobuf_c_boolean));
            fd->quantifier_offset = (unsigned)off;
            off += sizeof(protobuf_c_boolean);
        }
        off = s_align(off, sz);
        fd->offset = (unsigned)off;
        off += sz;
    }
    off = s_align(off, 8);
    /* sorted by number, unique numbers and names */
    qsort(fields, n, sizeof *fields, s_cmp_field);
    int *numbers = s_alloc(set, sizeof *numbers * (n ? n : 1));
    unsigned *by_name = s_alloc(set, sizeof *by_name * (n ? n : 1));
    aux->required_slot = s_alloc(set, n ? n : 1);
    if (!numbers || !by_name || !aux->required_slot)
        return AB_ENOMEM;
    unsigned slot = 0;
    for (unsigned i = 0; i < n; i++) {
        if (i > 0 && fields[i].id == fields[i - 1].id) {
            s_err(err, t->name, "message %s uses field number %u twice", t->name, fields[i].id);
            return AB_EINVAL;
        }
        numbers[i] = (int)fields[i].id;
        by_name[i] = i;
        if (fields[i].label == PROTOBUF_C_LABEL_REQUIRED)
            aux->required_slot[i] = (uint8_t)++slot;
    }
    s_sort_fields = fields;
    qsort(by_name, n, sizeof *by_name, s_cmp_name_index);
    s_sort_fields = NULL;
    for (unsigned i = 1; i < n; i++)
        if (strcmp(fields[by_name[i]].name, fields[by_name[i - 1]].name) == 0) {
            s_err(err, t->name, "message %s has two fields named %s", t->name,
                  fields[by_name[i]].name);
            return AB_EINVAL;
        }
    aux->magic = S_AUX_MAGIC;
    aux->proto3 = t->proto3;
    aux->map_entry = m->options && m->options->has_map_entry && m->options->map_entry;
    d->magic = PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC;
    d->name = t->name;
    d->short_name = m->name;
    d->c_name = t->name;
    d->package_name = t->package;
    d->sizeof_message = off;
    d->n_fields = n;
    d->fields = fields;
    d->fields_sorted_by_name = by_name;
    d->field_ranges = s_ranges(set, numbers, n, &d->n_field_ranges);
    d->message_init = NULL;
    d->reserved1 = aux;
    return d->field_ranges ? 0 : AB_ENOMEM;
}

/* ---- after pass 2: which messages protobuf-c cannot merge ---- */

/* A singular message field that occurs twice in a payload is merged by protobuf-c's unpack;
 * protobuf-c 1.4 fails that merge whenever the message has a oneof (set in either occurrence
 * or in none), and merges nested singular messages the same way. Such types are marked here
 * so that ab_schema_validate() refuses the second occurrence instead of promising a payload
 * that does not unpack. */
static int
s_has_oneof(const ProtobufCMessageDescriptor *d)
{
    for (unsigned k = 0; k < d->n_fields; k++)
        if (d->fields[k].flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
            return 1;
    return 0;
}

static int
s_merges_nested(const ProtobufCFieldDescriptor *f)
{
    return f->type == PROTOBUF_C_TYPE_MESSAGE && f->label != PROTOBUF_C_LABEL_REPEATED &&
           !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF);
}

static void
s_mark_merge_unsafe(ab_schema_set_t *set)
{
    s_type_t *t, *tmp;
    HASH_ITER(hh, set->types, t, tmp)
    {
        if (t->kind == S_MSG) {
            const ProtobufCMessageDescriptor *d = t->desc;
            ((s_aux_t *)d->reserved1)->merge_unsafe = s_has_oneof(d);
        }
    }
    /* unsafe spreads to messages with a singular message field of an unsafe type; a chain
     * longer than the rounds allow is cut short by marking every such message unsafe */
    int changed = 1;
    for (int round = 0; changed; round++) {
        changed = 0;
        HASH_ITER(hh, set->types, t, tmp)
        {
            if (t->kind != S_MSG)
                continue;
            const ProtobufCMessageDescriptor *d = t->desc;
            s_aux_t *aux = (s_aux_t *)d->reserved1;
            for (unsigned k = 0; k < d->n_fields && !aux->merge_unsafe; k++) {
                const ProtobufCFieldDescriptor *f = &d->fields[k];
                if (!s_merges_nested(f))
                    continue;
                const s_aux_t *sub = ((const ProtobufCMessageDescriptor *)f->descriptor)->reserved1;
                if (sub->merge_unsafe || round >= 64) {
                    aux->merge_unsafe = 1;
                    changed = 1;
                }
            }
        }
    }
}

/* ---- pass 2: services ---- */

static const char *s_sort_methods_base; /* only during qsort, one thread */

static int
s_cmp_method_index(const void *a, const void *b)
{
    const ProtobufCMethodDescriptor *m = (const ProtobufCMethodDescriptor *)s_sort_methods_base;
    return strcmp(m[*(const unsigned *)a].name, m[*(const unsigned *)b].name);
}

static int
s_build_service(ab_schema_set_t *set, s_type_t *t, ab_schema_error_t *err)
{
    const svc_proto_t *s = t->proto;
    ProtobufCServiceDescriptor *d = t->desc;
    unsigned n = (unsigned)s->n_method;
    ProtobufCMethodDescriptor *methods = s_alloc(set, sizeof *methods * (n ? n : 1));
    unsigned *by_name = s_alloc(set, sizeof *by_name * (n ? n : 1));
    if (!methods || !by_name)
        return AB_ENOMEM;
    for (unsigned i = 0; i < n; i++) {
        const Google__Protobuf__MethodDescriptorProto *mp = s->method[i];
        if (!s_ident(mp->name, 0)) {
            s_err(err, t->name, "service %s has a method without a valid name", t->name);
            return AB_EINVAL;
        }
        const char *types[2] = {mp->input_type, mp->output_type};
        const s_type_t *ref[2];
        for (int k = 0; k < 2; k++) {
            ref[k] = types[k] && types[k][0] == '.' ? s_find(set, types[k] + 1) : NULL;
            if (ref[k] == NULL || ref[k]->kind != S_MSG) {
                s_err(err, t->name, "method %s/%s: %s type %s is not defined in the set", t->name,
                      mp->name, k ? "output" : "input", types[k] ? types[k] : "(none)");
                return AB_EINVAL;
            }
        }
        methods[i].name = mp->name;
        methods[i].input = ref[0]->desc;
        methods[i].output = ref[1]->desc;
        by_name[i] = i;
    }
    s_sort_methods_base = (const char *)methods;
    qsort(by_name, n, sizeof *by_name, s_cmp_method_index);
    s_sort_methods_base = NULL;
    for (unsigned i = 1; i < n; i++)
        if (strcmp(methods[by_name[i]].name, methods[by_name[i - 1]].name) == 0) {
            s_err(err, t->name, "service %s has two methods named %s", t->name,
                  methods[by_name[i]].name);
            return AB_EINVAL;
        }
    d->magic = PROTOBUF_C__SERVICE_DESCRIPTOR_MAGIC;
    d->name = t->name;
    d->short_name = s->name;
    d->c_name = t->name;
    d->package = t->package;
    d->n_methods = n;
    d->methods = methods;
    d->method_indices_by_name = by_name;
    return 0;
}

static unsigned s_wire_type(ProtobufCType t);
static int s_merge_unsafe(const ProtobufCMessageDescriptor *d);

/* The tables s_fast() walks with: one kind byte a field, indexes by field number. */
static int
s_build_fast(ab_schema_set_t *set, const ProtobufCMessageDescriptor *d)
{
    s_aux_t *aux = (s_aux_t *)d->reserved1;
    unsigned max = 0;
    for (unsigned k = 0; k < d->n_fields; k++)
        if (d->fields[k].id > max)
            max = d->fields[k].id;
    aux->dense_max = max < S_DENSE_MAX ? max : S_DENSE_MAX;
    aux->dense = s_alloc(set, sizeof *aux->dense * (aux->dense_max + 1));
    aux->kind = s_alloc(set, d->n_fields ? d->n_fields : 1);
    if (aux->dense == NULL || aux->kind == NULL)
        return AB_ENOMEM;
    for (unsigned k = 0; k < d->n_fields; k++) {
        const ProtobufCFieldDescriptor *f = &d->fields[k];
        uint8_t kind = (uint8_t)s_wire_type(f->type);
        if (f->type == PROTOBUF_C_TYPE_STRING)
            kind |= K_STRING;
        if (f->type == PROTOBUF_C_TYPE_MESSAGE)
            kind |= K_MSG;
        if (f->label == PROTOBUF_C_LABEL_REPEATED && s_is_packable(f->type))
            kind |= K_PACKABLE;
        if (f->label == PROTOBUF_C_LABEL_REQUIRED)
            kind |= K_REQUIRED;
        if (s_merges_nested(f) && s_merge_unsafe(f->descriptor))
            kind |= K_MERGE;
        aux->kind[k] = kind;
        if (f->id <= aux->dense_max)
            aux->dense[f->id] = (uint16_t)(k + 1);
    }
    return 0;
}

int
ab_schema_set_load(const uint8_t *data, size_t len, ab_schema_set_t **out, ab_schema_error_t *err)
{
    if (out == NULL || (data == NULL && len > 0))
        return AB_EINVAL;
    *out = NULL;
    if (len > S_MAX_SET_BYTES) {
        s_err(err, "", "descriptor set of %zu bytes is larger than %u MiB", len,
              S_MAX_SET_BYTES >> 20);
        return AB_EINVAL;
    }
    ab_schema_set_t *set = calloc(1, sizeof *set);
    if (set == NULL) {
        s_err(err, "", "out of memory while loading the descriptor set");
        return AB_ENOMEM;
    }
    int rc = 0;
    /* protobuf-c's unpack recurses once per nesting level without a bound: walk the bytes
     * first, which bounds the depth without recursing past it */
    ab_schema_error_t pre;
    if (ab_schema_validate(&google__protobuf__file_descriptor_set__descriptor, data, len, &pre) !=
        0) {
        s_err(err, "",
              "not a FileDescriptorSet (%s%s%s); make one with protoc "
              "--descriptor_set_out=FILE --include_imports",
              strcmp(pre.path, "google.protobuf.FileDescriptorSet") ? pre.path : "",
              strcmp(pre.path, "google.protobuf.FileDescriptorSet") ? ": " : "", pre.text);
        rc = AB_EINVAL;
        goto fail;
    }
    /* the bytes validated, so protobuf-c refuses them only when it cannot allocate */
    set->fds = google__protobuf__file_descriptor_set__unpack(NULL, len, data);
    if (set->fds == NULL) {
        rc = AB_ENOMEM;
        goto fail;
    }
    if (set->fds->n_file == 0) {
        s_err(err, "", "the descriptor set holds no file");
        rc = AB_EINVAL;
        goto fail;
    }
    for (size_t i = 0; i < set->fds->n_file && rc == 0; i++) {
        const file_proto_t *f = set->fds->file[i];
        if (f->name == NULL || f->name[0] == '\0') {
            s_err(err, "", "file %zu of the set has no name", i + 1);
            rc = AB_EINVAL;
            break;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(set->fds->file[j]->name, f->name) == 0) {
                s_err(err, f->name, "file %s is in the set twice", f->name);
                rc = AB_EINVAL;
            }
        if (f->syntax && strcmp(f->syntax, "proto2") != 0 && strcmp(f->syntax, "proto3") != 0) {
            s_err(err, f->name, "file %s: syntax \"%s\" is not supported", f->name, f->syntax);
            rc = AB_EINVAL;
        }
        const char *pkg = f->package ? f->package : "";
        if (pkg[0] != '\0' && !s_ident(pkg, 1)) {
            s_err(err, f->name, "file %s: the package is not a valid name", f->name);
            rc = AB_EINVAL;
        }
        for (size_t k = 0; k < f->n_message_type && rc == 0; k++)
            rc = s_collect_message(set, pkg, f->message_type[k], f, err);
        for (size_t k = 0; k < f->n_enum_type && rc == 0; k++)
            rc = s_add_type(set, pkg, f->enum_type[k]->name, S_ENUM, f, f->enum_type[k], err);
        for (size_t k = 0; k < f->n_service && rc == 0; k++)
            rc = s_add_type(set, pkg, f->service[k]->name, S_SVC, f, f->service[k], err);
    }
    /* enums first: message defaults name enum values */
    s_type_t *t, *tmp;
    HASH_ITER(hh, set->types, t, tmp)
    {
        if (rc == 0 && t->kind == S_ENUM)
            rc = s_build_enum(set, t, err);
    }
    HASH_ITER(hh, set->types, t, tmp)
    {
        if (rc == 0 && t->kind == S_MSG)
            rc = s_build_message(set, t, err);
    }
    if (rc == 0)
        s_mark_merge_unsafe(set);
    HASH_ITER(hh, set->types, t, tmp)
    {
        if (rc == 0 && t->kind == S_MSG)
            rc = s_build_fast(set, t->desc);
    }
    HASH_ITER(hh, set->types, t, tmp)
    {
        if (rc == 0 && t->kind == S_SVC)
            rc = s_build_service(set, t, err);
    }
    if (rc < 0)
        goto fail;
    *out = set;
    return 0;
fail:
    if (rc == AB_ENOMEM)
        s_err(err, "", "out of memory while loading the descriptor set");
    ab_schema_set_destroy(&set);
    return rc;
}

void
ab_schema_set_destroy(ab_schema_set_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    ab_schema_set_t *set = *self_p;
    HASH_CLEAR(hh, set->types);
    while (set->chunks) {
        s_chunk_t *next = set->chunks->next;
        free(set->chunks);
        set->chunks = next;
    }
    if (set->fds)
        google__protobuf__file_descriptor_set__free_unpacked(set->fds, NULL);
    free(set);
    *self_p = NULL;
}

static const void *
s_lookup(const ab_schema_set_t *set, const char *name, int kind)
{
    if (set == NULL || name == NULL)
        return NULL;
    if (name[0] == '.')
        name++;
    const s_type_t *t = s_find(set, name);
    return t && t->kind == kind ? t->desc : NULL;
}

const ProtobufCMessageDescriptor *
ab_schema_message(const ab_schema_set_t *set, const char *name)
{
    return s_lookup(set, name, S_MSG);
}

const ProtobufCEnumDescriptor *
ab_schema_enum(const ab_schema_set_t *set, const char *name)
{
    return s_lookup(set, name, S_ENUM);
}

const ProtobufCServiceDescriptor *
ab_schema_service(const ab_schema_set_t *set, const char *name)
{
    return s_lookup(set, name, S_SVC);
}

size_t
ab_schema_file_count(const ab_schema_set_t *set)
{
    return set ? set->fds->n_file : 0;
}

const char *
ab_schema_file_name(const ab_schema_set_t *set, size_t i)
{
    return set && i < set->fds->n_file ? set->fds->file[i]->name : NULL;
}

const void *
ab_schema_file_proto(const ab_schema_set_t *set, size_t i)
{
    return set && i < set->fds->n_file ? set->fds->file[i] : NULL;
}

int
ab_schema_is_map_entry(const ProtobufCMessageDescriptor *d)
{
    if (d == NULL)
        return 0;
    const s_aux_t *aux = d->reserved1;
    if (d->message_init == NULL && aux != NULL && aux->magic == S_AUX_MAGIC)
        return aux->map_entry;
    /* protoc names the entry of field `foo_bar` FooBarEntry, with key = 1 and value = 2, and
     * refuses a user message of that name beside it; protoc-c keeps no map_entry flag, so the
     * shape is the mark for generated descriptors. */
    if (d->n_fields != 2 || d->fields[0].id != 1 || d->fields[1].id != 2)
        return 0;
    if (strcmp(d->fields[0].name, "key") != 0 || strcmp(d->fields[1].name, "value") != 0)
        return 0;
    size_t n = strlen(d->short_name);
    return n > 5 && strcmp(d->short_name + n - 5, "Entry") == 0 &&
           d->fields[0].label != PROTOBUF_C_LABEL_REPEATED &&
           d->fields[1].label != PROTOBUF_C_LABEL_REPEATED;
}

/* ---- validation: a walk over the wire bytes, no allocation ---- */

/*
 * Where the walk is: one frame per field entered. Nothing is formatted on the way (that cost
 * more than the walk itself); the path text is made only when something is wrong.
 */
typedef struct {
    const ProtobufCFieldDescriptor *f;
    const uint8_t *msg; /* the enclosing message's bytes, to number a repeated element */
    size_t msg_len;
    size_t at; /* where the field's tag starts in msg */
} s_frame_t;

typedef struct {
    s_frame_t frames[S_MAX_DEPTH + 4];
    int n;
    ab_schema_error_t *err;
} s_path_t;

static size_t s_element_index(const uint8_t *b, size_t len, size_t at, uint32_t id);

static void
s_path_push(s_path_t *p, const ProtobufCFieldDescriptor *f, const uint8_t *msg, size_t msg_len,
            size_t at)
{
    if (p->n < (int)(sizeof p->frames / sizeof p->frames[0])) {
        s_frame_t *fr = &p->frames[p->n];
        fr->f = f;
        fr->msg = msg;
        fr->msg_len = msg_len;
        fr->at = at;
    }
    p->n++;
}

static void
s_path_pop(s_path_t *p)
{
    p->n--;
}

/* Writes the path of the frames, e.g. `antwort.adressen[2].plz`. */
static void
s_path_format(const s_path_t *p, char *out, size_t cap)
{
    size_t len = 0;
    out[0] = '\0';
    int n = p->n < (int)(sizeof p->frames / sizeof p->frames[0])
                ? p->n
                : (int)(sizeof p->frames / sizeof p->frames[0]);
    for (int i = 0; i < n && len < cap - 1; i++) {
        const s_frame_t *fr = &p->frames[i];
        const ProtobufCFieldDescriptor *f = fr->f;
        int w;
        if (f->label == PROTOBUF_C_LABEL_REPEATED && fr->msg != NULL &&
            (f->type == PROTOBUF_C_TYPE_MESSAGE || f->type == PROTOBUF_C_TYPE_STRING ||
             f->type == PROTOBUF_C_TYPE_BYTES))
            w = snprintf(out + len, cap - len, "%s%s[%zu]", i ? "." : "", f->name,
                         s_element_index(fr->msg, fr->msg_len, fr->at, f->id));
        else
            w = snprintf(out + len, cap - len, "%s%s", i ? "." : "", f->name);
        if (w < 0)
            break;
        len += (size_t)w < cap - len ? (size_t)w : cap - 1 - len;
    }
}

static int s_fail(s_path_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int
s_fail(s_path_t *p, const char *fmt, ...)
{
    if (p->err) {
        s_path_format(p, p->err->path, sizeof p->err->path);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err->text, sizeof p->err->text, fmt, ap);
        va_end(ap);
    }
    return AB_EINVAL;
}

/* Reads a varint; returns its length in bytes, 0 when truncated or longer than 10 bytes. */
static inline size_t
s_varint(const uint8_t *b, size_t len, uint64_t *v)
{
    if (len > 0 && b[0] < 0x80) { /* tags and short lengths: one byte */
        *v = b[0];
        return 1;
    }
    uint64_t r = 0;
    for (size_t i = 0; i < len && i < 10; i++) {
        r |= (uint64_t)(b[i] & 0x7f) << (7 * i);
        if ((b[i] & 0x80) == 0) {
            if (i == 9 && b[i] > 1)
                return 0;
            *v = r;
            return i + 1;
        }
    }
    return 0;
}

static const char *
s_type_name(ProtobufCType t)
{
    static const char *names[] = {"int32",  "sint32",  "sfixed32", "int64",   "sint64", "sfixed64",
                                  "uint32", "fixed32", "uint64",   "fixed64", "float",  "double",
                                  "bool",   "enum",    "string",   "bytes",   "message"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

/* The wire type a single value of this type is written with. */
static unsigned
s_wire_type(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
        return 5;
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 1;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES:
    case PROTOBUF_C_TYPE_MESSAGE:
        return 2;
    default:
        return 0;
    }
}

static int s_walk(const ProtobufCMessageDescriptor *d, const uint8_t *b, size_t len, int depth,
                  s_path_t *p);

/* Whether protobuf-c may fail to merge two occurrences of message d (s_mark_merge_unsafe());
 * for descriptors not built here, any oneof or singular message field counts. */
static int
s_merge_unsafe(const ProtobufCMessageDescriptor *d)
{
    const s_aux_t *aux = d->reserved1;
    if (d->message_init == NULL && aux != NULL && aux->magic == S_AUX_MAGIC)
        return aux->merge_unsafe;
    for (unsigned k = 0; k < d->n_fields; k++)
        if ((d->fields[k].flags & PROTOBUF_C_FIELD_FLAG_ONEOF) || s_merges_nested(&d->fields[k]))
            return 1;
    return 0;
}

/* Reads the tag at b[i]: its field number in *id (0 when it cannot be read) and the offset after
 * its value (len when the value runs past the end or the wire type is unknown). */
static size_t
s_next_field(const uint8_t *b, size_t len, size_t i, uint32_t *id)
{
    uint64_t tag, v;
    size_t n = s_varint(b + i, len - i, &tag);
    *id = n ? (uint32_t)(tag >> 3) : 0;
    if (n == 0)
        return len;
    i += n;
    switch (tag & 7) {
    case 0:
        n = s_varint(b + i, len - i, &v);
        return n ? i + n : len;
    case 1:
        return len - i >= 8 ? i + 8 : len;
    case 5:
        return len - i >= 4 ? i + 4 : len;
    case 2:
        n = s_varint(b + i, len - i, &v);
        return n && v <= len - i - n ? i + n + (size_t)v : len;
    default:
        return len;
    }
}

/* Index of the element of repeated field `id` whose tag starts at `at`, counted from `b`. */
static size_t
s_element_index(const uint8_t *b, size_t len, size_t at, uint32_t id)
{
    size_t i = 0, count = 0;
    while (i < at && i < len) {
        uint32_t fid;
        size_t next = s_next_field(b, len, i, &fid);
        if (fid == 0)
            break;
        if (fid == id)
            count++;
        i = next;
    }
    return count;
}

/* Whether field `id` occurs before byte `at`; stops at the first occurrence, so that a field
 * repeated many times costs one scan (the second occurrence is refused). */
static int
s_occurs_before(const uint8_t *b, size_t len, size_t at, uint32_t id)
{
    size_t i = 0;
    while (i < at && i < len) {
        uint32_t fid;
        size_t next = s_next_field(b, len, i, &fid);
        if (fid == 0)
            return 0;
        if (fid == id)
            return 1;
        i = next;
    }
    return 0;
}

static int
s_check_value(const ProtobufCFieldDescriptor *f, const uint8_t *b, size_t len, int depth,
              int proto3, s_path_t *p)
{
    if (f->type == PROTOBUF_C_TYPE_STRING) {
        /* ASCII eight bytes at a time, short tails byte by byte; from the first byte >= 0x80
         * on, the full check */
        size_t i = 0;
        for (; i + 8 <= len; i += 8) {
            uint64_t w;
            memcpy(&w, b + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            if ((w - 0x0101010101010101ull) & ~w & 0x8080808080808080ull)
                return s_fail(p, "string contains a NUL byte");
        }
        for (; i < len && b[i] < 0x80; i++)
            if (b[i] == 0)
                return s_fail(p, "string contains a NUL byte");
        if (i == len)
            return 0;
        if (memchr(b + i, 0, len - i) != NULL)
            return s_fail(p, "string contains a NUL byte");
        if (proto3 && !ab_utf8_valid((const char *)b + i, len - i))
            return s_fail(p, "string is not valid UTF-8");
        return 0;
    }
    if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
        if (depth + 1 > S_MAX_DEPTH)
            return s_fail(p, "messages nested deeper than %d", S_MAX_DEPTH);
        return s_walk(f->descriptor, b, len, depth + 1, p);
    }
    return 0;
}

/* Walks packed elements of a scalar type. */
static int
s_check_packed(const ProtobufCFieldDescriptor *f, const uint8_t *b, size_t len, s_path_t *p)
{
    unsigned wt = s_wire_type(f->type);
    if (wt == 5 || wt == 1) {
        size_t sz = wt == 5 ? 4 : 8;
        if (len % sz != 0)
            return s_fail(p, "packed %s field of %zu bytes is not a multiple of %zu",
                          s_type_name(f->type), len, sz);
        return 0;
    }
    size_t i = 0;
    while (i < len) {
        uint64_t v;
        size_t n = s_varint(b + i, len - i, &v);
        if (n == 0)
            return s_fail(p, "packed %s field has a truncated or overlong varint",
                          s_type_name(f->type));
        i += n;
    }
    return 0;
}

static int
s_walk(const ProtobufCMessageDescriptor *d, const uint8_t *b, size_t len, int depth, s_path_t *p)
{
    const s_aux_t *aux = d->reserved1;
    if (aux != NULL && (d->message_init != NULL || aux->magic != S_AUX_MAGIC))
        aux = NULL;
    int proto3 = aux ? aux->proto3 : 0;
    uint64_t seen = 0, seen_msg = 0;
    size_t i = 0, at = 0;
    unsigned hint = 0;
    while (i < len) {
        uint64_t tag, v;
        at = i;
        size_t n = s_varint(b + i, len - i, &tag);
        /* protobuf-c reads at most 5 bytes of a tag or a length: padded longer ones are
         * refused here too, or a validated payload would not unpack */
        if (n == 0 || n > 5 || tag > UINT32_MAX)
            return s_fail(p, "malformed field tag at byte %zu", at);
        i += n;
        uint32_t id = (uint32_t)(tag >> 3);
        unsigned wt = (unsigned)(tag & 7);
        if (id == 0)
            return s_fail(p, "field number 0 at byte %zu", at);
        const uint8_t *val = NULL;
        size_t vlen = 0;
        switch (wt) {
        case 0:
            if ((n = s_varint(b + i, len - i, &v)) == 0)
                goto truncated;
            i += n;
            break;
        case 1:
        case 5:
            vlen = wt == 1 ? 8 : 4;
            if (len - i < vlen)
                goto truncated;
            i += vlen;
            break;
        case 2:
            if ((n = s_varint(b + i, len - i, &v)) == 0 || v > len - i - n)
                goto truncated;
            if (n > 5)
                return s_fail(p, "length of field %u at byte %zu takes more than 5 bytes", id, at);
            val = b + i + n;
            vlen = (size_t)v;
            i += n + vlen;
            break;
        default:
            return s_fail(p, "field %u uses wire type %u (groups are not supported)", id, wt);
        }
        /* fields mostly come in number order, or repeat: try the next one and this one */
        const ProtobufCFieldDescriptor *f = NULL;
        if (hint < d->n_fields && d->fields[hint].id == id)
            f = &d->fields[hint];
        else if (hint > 0 && d->fields[hint - 1].id == id)
            f = &d->fields[hint - 1];
        else
            f = protobuf_c_message_descriptor_get_field(d, id);
        if (f == NULL)
            continue; /* unknown to this version: a newer sender may know more */
        hint = (unsigned)(f - d->fields) + 1;
        s_path_push(p, f, b, len, at);
        unsigned want = s_wire_type(f->type);
        int rc = 0;
        if (wt == want) {
            if (wt == 2)
                rc = s_check_value(f, val, vlen, depth, proto3, p);
        } else if (wt == 2 && f->label == PROTOBUF_C_LABEL_REPEATED) {
            rc = s_check_packed(f, val, vlen, p);
        } else {
            rc =
                s_fail(p, "wire type %u does not fit a field of type %s", wt, s_type_name(f->type));
        }
        if (rc == 0 && wt == 2 && s_merges_nested(f) && s_merge_unsafe(f->descriptor)) {
            unsigned k = (unsigned)(f - d->fields);
            int again = k < 64 ? (int)((seen_msg >> k) & 1) : s_occurs_before(b, len, at, id);
            if (k < 64)
                seen_msg |= 1ull << k;
            if (again)
                rc = s_fail(p, "message field occurs twice and its oneofs cannot be merged; "
                               "send it once");
        }
        if (rc < 0)
            return rc;
        s_path_pop(p);
        if (f->label == PROTOBUF_C_LABEL_REQUIRED && aux != NULL) {
            unsigned k = (unsigned)(f - d->fields);
            if (aux->required_slot[k])
                seen |= 1ull << (aux->required_slot[k] - 1);
        } else if (f->label == PROTOBUF_C_LABEL_REQUIRED && aux == NULL) {
            unsigned k = (unsigned)(f - d->fields);
            if (k < 64)
                seen |= 1ull << k;
        }
    }
    for (unsigned k = 0; (aux == NULL || aux->n_required > 0) && k < d->n_fields; k++) {
        const ProtobufCFieldDescriptor *f = &d->fields[k];
        if (f->label != PROTOBUF_C_LABEL_REQUIRED)
            continue;
        int present = aux      ? (seen >> (aux->required_slot[k] - 1)) & 1
                      : k < 64 ? (seen >> k) & 1
                               : 1;
        if (!present) {
            s_path_push(p, f, NULL, 0, 0);
            int rc = s_fail(p, "required field is missing");
            s_path_pop(p);
            return rc;
        }
    }
    return 0;
truncated:
    return s_fail(p, "field at byte %zu runs past the end of the message", at);
}

/* A string's bytes: no NUL, and UTF-8 when proto3. Returns 0 when they are fine. ASCII goes
 * eight bytes at a time, two-byte sequences (umlauts, ß) inline, longer ones through
 * ab_utf8_valid() one sequence at a time. */
static int
s_text_bad(const uint8_t *b, size_t len, int proto3)
{
    size_t i = 0;
    while (i < len) {
        if (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, b + i, 8);
            if ((w & 0x8080808080808080ull) == 0) {
                if ((w - 0x0101010101010101ull) & ~w & 0x8080808080808080ull)
                    return 1;
                i += 8;
                continue;
            }
        }
        uint8_t c = b[i];
        if (c < 0x80) {
            if (c == 0)
                return 1;
            i++;
        } else if (!proto3) {
            i++;
        } else if (c >= 0xc2 && c <= 0xdf) {
            if (i + 1 >= len || (b[i + 1] & 0xc0) != 0x80)
                return 1;
            i += 2;
        } else {
            size_t n = (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
            if (n == 0 || n > len - i || !ab_utf8_valid((const char *)b + i, n))
                return 1;
            i += n;
        }
    }
    return 0;
}

/*
 * The walk for descriptors built here, with their kind tables and nothing else: no path, no
 * reasons. Returns 0 when the payload is valid; 1 when it may not be, and then s_walk() decides
 * and says why (it is the reference: this one accepts only what s_walk() accepts).
 */
static int
s_fast(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t len, int depth)
{
    const s_aux_t *aux = d->reserved1;
    const uint8_t *end = p + len;
    uint64_t seen_req = 0, seen_msg = 0;
    while (p < end) {
        uint64_t v;
        size_t n;
        uint32_t tag;
        if (*p < 0x80) {
            tag = *p++;
        } else {
            /* protobuf-c reads at most 5 bytes of a tag or a length (see s_walk()) */
            if ((n = s_varint(p, (size_t)(end - p), &v)) == 0 || n > 5 || v > UINT32_MAX)
                return 1;
            tag = (uint32_t)v;
            p += n;
        }
        uint32_t id = tag >> 3;
        unsigned wt = tag & 7;
        const uint8_t *val = p;
        size_t vlen = 0;
        switch (wt) {
        case 0:
            if (p < end && *p < 0x80)
                p++;
            else if ((n = s_varint(p, (size_t)(end - p), &v)) == 0)
                return 1;
            else
                p += n;
            break;
        case 1:
        case 5:
            vlen = wt == 1 ? 8 : 4;
            if ((size_t)(end - p) < vlen)
                return 1;
            p += vlen;
            break;
        case 2:
            if (p < end && *p < 0x80) {
                v = *p;
                n = 1;
            } else if ((n = s_varint(p, (size_t)(end - p), &v)) == 0 || n > 5) {
                return 1;
            }
            if (v > (uint64_t)(end - p) - n)
                return 1;
            val = p + n;
            vlen = (size_t)v;
            p = val + vlen;
            break;
        default:
            return 1;
        }
        if (id == 0)
            return 1;
        unsigned idx;
        if (id <= aux->dense_max) {
            if ((idx = aux->dense[id]) == 0)
                continue; /* unknown to this version */
        } else {
            const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, id);
            if (f == NULL)
                continue;
            idx = (unsigned)(f - d->fields) + 1;
        }
        unsigned k = aux->kind[idx - 1];
        if (wt == (k & K_WT)) {
            if (k & K_STRING) {
                if (s_text_bad(val, vlen, aux->proto3))
                    return 1;
            } else if (k & K_MSG) {
                if (depth + 1 > S_MAX_DEPTH ||
                    s_fast(d->fields[idx - 1].descriptor, val, vlen, depth + 1) != 0)
                    return 1;
                if (k & K_MERGE) {
                    if (idx > 64 || (seen_msg >> (idx - 1)) & 1)
                        return 1;
                    seen_msg |= 1ull << (idx - 1);
                }
            }
        } else if (wt == 2 && (k & K_PACKABLE)) {
            unsigned want = k & K_WT;
            if (want == 5 || want == 1) {
                if (vlen % (want == 5 ? 4 : 8) != 0)
                    return 1;
            } else {
                for (const uint8_t *q = val, *qe = val + vlen; q < qe; q += n)
                    if ((n = s_varint(q, (size_t)(qe - q), &v)) == 0)
                        return 1;
            }
        } else {
            return 1;
        }
        if (k & K_REQUIRED)
            seen_req |= 1ull << (aux->required_slot[idx - 1] - 1);
    }
    if (aux->n_required > 0 &&
        seen_req != (aux->n_required >= 64 ? ~0ull : (1ull << aux->n_required) - 1))
        return 1;
    return 0;
}

int
ab_schema_validate(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len,
                   ab_schema_error_t *err)
{
    if (d == NULL || (data == NULL && len > 0))
        return AB_EINVAL;
    const s_aux_t *aux = d->reserved1;
    if (d->message_init == NULL && aux != NULL && aux->magic == S_AUX_MAGIC && aux->kind != NULL &&
        s_fast(d, data ? data : (const uint8_t *)"", len, 0) == 0)
        return 0;
    return ab_schema_validate_reference(d, data, len, err);
}

int
ab_schema_validate_reference(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len,
                             ab_schema_error_t *err)
{
    if (d == NULL || (data == NULL && len > 0))
        return AB_EINVAL;
    s_path_t p;
    p.n = 0;
    p.err = err;
    int rc = s_walk(d, data, len, 0, &p);
    if (rc < 0 && err != NULL && err->path[0] == '\0')
        snprintf(err->path, sizeof err->path, "%s", d->name);
    return rc;
}
