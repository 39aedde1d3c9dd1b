/*
 * Compatibility of two versions of a .proto file: see schema_compat.h and README.md ("Schema
 * compatibility").
 *
 * Messages, enums and services are matched by name within their scope, fields by number, enum
 * values by name, methods by name. Both versions come from the network (a ministry's push), so
 * nothing here trusts them: absent strings read as "", absent numbers as 0, nesting is bounded.
 * The only allocation is the report's array; its failure ends the walk with AB_ENOMEM.
 */
#include "schema_compat.h"

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amtsbote.h"

typedef Google__Protobuf__FileDescriptorProto file_t;
typedef Google__Protobuf__DescriptorProto msg_t;
typedef Google__Protobuf__FieldDescriptorProto field_t;
typedef Google__Protobuf__EnumDescriptorProto enum_t;
typedef Google__Protobuf__EnumValueDescriptorProto value_t;
typedef Google__Protobuf__ServiceDescriptorProto service_t;
typedef Google__Protobuf__MethodDescriptorProto method_t;

#define TYPE_GROUP GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_GROUP
#define TYPE_MESSAGE GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_MESSAGE
#define TYPE_ENUM GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_ENUM
#define LABEL_OPTIONAL GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__LABEL__LABEL_OPTIONAL
#define LABEL_REQUIRED GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__LABEL__LABEL_REQUIRED
#define LABEL_REPEATED GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__LABEL__LABEL_REPEATED

/* protoc nests far less; a deeper set is refused rather than walked on the stack. */
#define MAX_DEPTH 32

/* Names and texts longer than the report's buffers are cut, never overflowed. */
#define NAME_LEN 256

typedef struct {
    const file_t *prev;
    const file_t *next;
    const char *prev_pkg;
    const char *next_pkg;
    ab_compat_report_t *report;
    int added;
    int err; /* first allocation failure; stops the walk */
} compat_t;

static const char *
S(const char *s)
{
    return s ? s : "";
}

__attribute__((format(printf, 3, 4))) static void
s_fmt(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

/* Appends one problem; on allocation failure records AB_ENOMEM in c->err and appends nothing
 * (the report keeps what it had). */
__attribute__((format(printf, 4, 5))) static void
s_problem(compat_t *c, const char *rule, const char *element, const char *fmt, ...)
{
    ab_compat_report_t *r = c->report;
    if (c->err || c->added == INT_MAX)
        return;
    if (r->count == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 8;
        if (cap > SIZE_MAX / sizeof *r->problems) {
            c->err = AB_ENOMEM;
            return;
        }
        ab_compat_problem_t *grown = realloc(r->problems, cap * sizeof *grown);
        if (grown == NULL) {
            c->err = AB_ENOMEM;
            return;
        }
        r->problems = grown;
        r->cap = cap;
    }
    ab_compat_problem_t *p = &r->problems[r->count];
    p->rule = rule;
    s_fmt(p->element, sizeof p->element, "%s", element);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->text, sizeof p->text, fmt, ap);
    va_end(ap);
    r->count++;
    c->added++;
}

/* "scope.name", or "name" at the top of a file without a package. */
static void
s_join(char *buf, size_t len, const char *scope, const char *name)
{
    if (*scope)
        s_fmt(buf, len, "%s.%s", scope, S(name));
    else
        s_fmt(buf, len, "%s", S(name));
}

/* ---- look-ups (linear: a message has tens of fields, not thousands) ---- */

static int
s_type(const field_t *f)
{
    return f->has_type ? (int)f->type : 0;
}

static int
s_label(const field_t *f)
{
    return f->has_label ? (int)f->label : LABEL_OPTIONAL;
}

static int32_t
s_number(const field_t *f)
{
    return f->has_number ? f->number : 0;
}

static const field_t *
s_field_by_number(const msg_t *m, int32_t number)
{
    for (size_t i = 0; i < m->n_field; i++)
        if (m->field[i] && s_number(m->field[i]) == number)
            return m->field[i];
    return NULL;
}

static const field_t *
s_field_by_name(const msg_t *m, const char *name)
{
    for (size_t i = 0; i < m->n_field; i++)
        if (m->field[i] && strcmp(S(m->field[i]->name), name) == 0)
            return m->field[i];
    return NULL;
}

static const msg_t *
s_msg_by_name(msg_t *const *list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (list[i] && strcmp(S(list[i]->name), name) == 0)
            return list[i];
    return NULL;
}

static const enum_t *
s_enum_by_name(enum_t *const *list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (list[i] && strcmp(S(list[i]->name), name) == 0)
            return list[i];
    return NULL;
}

static const value_t *
s_value_by_name(const enum_t *e, const char *name)
{
    for (size_t i = 0; i < e->n_value; i++)
        if (e->value[i] && strcmp(S(e->value[i]->name), name) == 0)
            return e->value[i];
    return NULL;
}

static const value_t *
s_value_by_number(const enum_t *e, int32_t number)
{
    for (size_t i = 0; i < e->n_value; i++)
        if (e->value[i] && e->value[i]->has_number && e->value[i]->number == number)
            return e->value[i];
    return NULL;
}

static int
s_has_string(char *const *list, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (list[i] && strcmp(list[i], s) == 0)
            return 1;
    return 0;
}

/* Message reserved ranges end exclusively: `reserved 2 to 4;` is stored as [2, 5). */
static int
s_msg_reserves_number(const msg_t *m, int32_t number)
{
    for (size_t i = 0; i < m->n_reserved_range; i++) {
        const Google__Protobuf__DescriptorProto__ReservedRange *r = m->reserved_range[i];
        if (r && r->has_start && r->has_end && number >= r->start && number < r->end)
            return 1;
    }
    return 0;
}

/* Enum reserved ranges end inclusively: `reserved 2 to 4;` is stored as [2, 4]. */
static int
s_enum_reserves_number(const enum_t *e, int32_t number)
{
    for (size_t i = 0; i < e->n_reserved_range; i++) {
        const Google__Protobuf__EnumDescriptorProto__EnumReservedRange *r = e->reserved_range[i];
        if (r && r->has_start && r->has_end && number >= r->start && number <= r->end)
            return 1;
    }
    return 0;
}

static int
s_is_map_entry(const msg_t *m)
{
    return m->options && m->options->has_map_entry && m->options->map_entry;
}

/* The synthetic entry message of map field `f` of `m` (nested in `m`, key 1 and value 2), or
 * NULL when `f` is not a map. */
static const msg_t *
s_map_entry(const msg_t *m, const field_t *f)
{
    if (m == NULL || s_type(f) != TYPE_MESSAGE || s_label(f) != LABEL_REPEATED)
        return NULL;
    const char *tn = S(f->type_name);
    size_t tl = strlen(tn);
    for (size_t i = 0; i < m->n_nested_type; i++) {
        const msg_t *e = m->nested_type[i];
        if (e == NULL || !s_is_map_entry(e))
            continue;
        size_t nl = strlen(S(e->name));
        if (nl == 0 || nl >= tl || tn[tl - nl - 1] != '.' || strcmp(tn + tl - nl, e->name) != 0)
            continue;
        if (s_field_by_number(e, 1) && s_field_by_number(e, 2))
            return e;
    }
    return NULL;
}

/* The name of the real oneof `f` belongs to, or NULL. A proto3 `optional` field sits in a
 * synthetic oneof of its own, which is presence, not a oneof, and is not counted. */
static const char *
s_oneof_name(const msg_t *m, const field_t *f)
{
    if (!f->has_oneof_index || (f->has_proto3_optional && f->proto3_optional))
        return NULL;
    if (f->oneof_index < 0 || (size_t)f->oneof_index >= m->n_oneof_decl ||
        m->oneof_decl[f->oneof_index] == NULL)
        return NULL;
    return S(m->oneof_decl[f->oneof_index]->name);
}

/* ---- types ---- */

/* `name` without the leading dot and `pkg.`, or NULL when it is not in package `pkg`. */
static const char *
s_strip_package(const char *name, const char *pkg)
{
    size_t n = strlen(pkg);
    if (name[0] != '.')
        return NULL;
    if (n == 0)
        return name + 1;
    if (strncmp(name + 1, pkg, n) == 0 && name[n + 1] == '.')
        return name + n + 2;
    return NULL;
}

/* Same type name in both versions. When the package changed (refused once, as
 * package-changed), the file's own types are compared without it, so that the one change is
 * not reported again at every field that uses them. */
static int
s_same_type_name(const compat_t *c, const char *a, const char *b)
{
    a = S(a);
    b = S(b);
    if (strcmp(a, b) == 0)
        return 1;
    if (strcmp(c->prev_pkg, c->next_pkg) == 0)
        return 0;
    const char *ra = s_strip_package(a, c->prev_pkg);
    const char *rb = s_strip_package(b, c->next_pkg);
    return ra && rb && strcmp(ra, rb) == 0;
}

static const char *
s_scalar_name(int type)
{
    static const char *const names[] = {
        "?",       "double",   "float",    "int64",  "uint64",  "int32", "fixed64",
        "fixed32", "bool",     "string",   "group",  "message", "bytes", "uint32",
        "enum",    "sfixed32", "sfixed64", "sint32", "sint64",
    };
    if (type < 0 || (size_t)type >= sizeof names / sizeof names[0])
        return "?";
    return names[type];
}

/* The field's type as a person writes it: `repeated string`, `meldewesen.v1.Datum`,
 * `map<string, int32>`. */
static void
s_type_text(const msg_t *m, const field_t *f, char *buf, size_t len)
{
    const msg_t *entry = s_map_entry(m, f);
    if (entry) {
        char k[NAME_LEN], v[NAME_LEN];
        s_type_text(NULL, s_field_by_number(entry, 1), k, sizeof k);
        s_type_text(NULL, s_field_by_number(entry, 2), v, sizeof v);
        s_fmt(buf, len, "map<%s, %s>", k, v);
        return;
    }
    const char *label = "";
    if (s_label(f) == LABEL_REPEATED)
        label = "repeated ";
    else if (s_label(f) == LABEL_REQUIRED)
        label = "required ";
    else if (f->has_proto3_optional && f->proto3_optional)
        label = "optional ";
    int type = s_type(f);
    if (type == TYPE_MESSAGE || type == TYPE_ENUM || type == TYPE_GROUP) {
        const char *tn = S(f->type_name);
        s_fmt(buf, len, "%s%s", label, tn[0] == '.' ? tn + 1 : tn);
    } else {
        s_fmt(buf, len, "%s%s", label, s_scalar_name(type));
    }
}

/* Same type, label and type name; for maps, the same key and value types. */
static int
s_same_type(const compat_t *c, const msg_t *pm, const field_t *pf, const msg_t *nm,
            const field_t *nf)
{
    if (s_type(pf) != s_type(nf) || s_label(pf) != s_label(nf) ||
        !s_same_type_name(c, pf->type_name, nf->type_name))
        return 0;
    const msg_t *pe = s_map_entry(pm, pf);
    const msg_t *ne = s_map_entry(nm, nf);
    if (pe == NULL || ne == NULL)
        return (pe == NULL) == (ne == NULL);
    for (int32_t n = 1; n <= 2; n++)
        if (!s_same_type(c, NULL, s_field_by_number(pe, n), NULL, s_field_by_number(ne, n)))
            return 0;
    return 1;
}

/* ---- renamed messages ---- */

/* `cand` has the field numbers, types and labels of `old`. */
static int
s_same_shape(const msg_t *old, const msg_t *cand)
{
    if (old->n_field == 0 || old->n_field != cand->n_field)
        return 0;
    for (size_t i = 0; i < old->n_field; i++) {
        const field_t *of = old->field[i];
        if (of == NULL)
            return 0;
        const field_t *cf = s_field_by_number(cand, s_number(of));
        if (cf == NULL || s_type(cf) != s_type(of) || s_label(cf) != s_label(of))
            return 0;
    }
    return 1;
}

/* The message at relative path `path` ("Outer.Inner") in `f`, or NULL. */
static const msg_t *
s_msg_at(const file_t *f, const char *path)
{
    msg_t *const *list = f->message_type;
    size_t n = f->n_message_type;
    const msg_t *m = NULL;
    char seg[NAME_LEN];
    while (*path) {
        size_t l = strcspn(path, ".");
        if (l >= sizeof seg)
            return NULL;
        memcpy(seg, path, l);
        seg[l] = '\0';
        m = s_msg_by_name(list, n, seg);
        if (m == NULL)
            return NULL;
        list = m->nested_type;
        n = m->n_nested_type;
        path += l + (path[l] == '.');
    }
    return m;
}

/* Looks in `next` for a message that `prev` does not have under its name and that has the
 * shape of `old`; writes its relative path to `out`. */
static int
s_find_renamed(const compat_t *c, const msg_t *old, msg_t *const *list, size_t n, const char *scope,
               char *out, size_t len, int depth)
{
    if (depth > MAX_DEPTH)
        return 0;
    for (size_t i = 0; i < n; i++) {
        const msg_t *m = list[i];
        if (m == NULL || s_is_map_entry(m))
            continue;
        char path[NAME_LEN];
        s_join(path, sizeof path, scope, m->name);
        if (s_msg_at(c->prev, path) == NULL && s_same_shape(old, m)) {
            s_fmt(out, len, "%s", path);
            return 1;
        }
        if (s_find_renamed(c, old, m->nested_type, m->n_nested_type, path, out, len, depth + 1))
            return 1;
    }
    return 0;
}

/* The problem for a removed field or enum value that is not fully reserved: names what is
 * missing and the exact `reserved` lines to add (only those: protoc refuses a number or name
 * reserved twice). */
static void
s_removed_not_reserved(compat_t *c, const char *rule, const char *el, const char *what,
                       const char *name, int32_t number, int num_ok, int name_ok,
                       const char *container)
{
    char fix[NAME_LEN];
    if (!num_ok && !name_ok)
        s_fmt(fix, sizeof fix, "reserved %d; reserved \"%s\";", number, name);
    else if (!num_ok)
        s_fmt(fix, sizeof fix, "reserved %d;", number);
    else
        s_fmt(fix, sizeof fix, "reserved \"%s\";", name);
    s_problem(c, rule, el,
              "%s (%d) was removed without reserving its %s: a later %s could take it and old "
              "clients would misread it. Add `%s` to %s.",
              name, number, !num_ok && !name_ok ? "number and name" : (!num_ok ? "number" : "name"),
              what, fix, container);
}

/* ---- enums ---- */

static void
s_enum(compat_t *c, const enum_t *pe, const enum_t *ne, const char *scope)
{
    char el[NAME_LEN], ename[NAME_LEN];
    s_join(ename, sizeof ename, scope, pe->name);
    char container[NAME_LEN];
    s_fmt(container, sizeof container, "enum %s", S(ne->name));

    for (size_t i = 0; i < pe->n_value; i++) {
        const value_t *pv = pe->value[i];
        if (pv == NULL)
            continue;
        const char *name = S(pv->name);
        int32_t number = pv->has_number ? pv->number : 0;
        s_fmt(el, sizeof el, "%s.%s (value %d)", ename, name, number);
        const value_t *nv = s_value_by_name(ne, name);
        if (nv) {
            int32_t now = nv->has_number ? nv->number : 0;
            if (now != number)
                s_problem(c, "enum-value-number-changed", el,
                          "%s was %d, now %d: clients compiled against the old version send and "
                          "read %d for it. Keep %d; a new value needs a new name.",
                          name, number, now, number, number);
            continue;
        }
        const value_t *same = s_value_by_number(ne, number);
        if (same) {
            s_problem(c, "enum-value-renamed", el,
                      "value %d was named %s, now %s: JSON clients send and expect the name %s. "
                      "Keep %s; add %s beside it with `option allow_alias = true;`.",
                      number, name, S(same->name), name, name, S(same->name));
            continue;
        }
        int num_ok = s_enum_reserves_number(ne, number);
        int name_ok = s_has_string(ne->reserved_name, ne->n_reserved_name, name);
        if (!num_ok || !name_ok)
            s_removed_not_reserved(c, "enum-value-removed-not-reserved", el, "value", name, number,
                                   num_ok, name_ok, container);
    }

    for (size_t i = 0; i < ne->n_value; i++) {
        const value_t *nv = ne->value[i];
        if (nv == NULL)
            continue;
        const char *name = S(nv->name);
        int32_t number = nv->has_number ? nv->number : 0;
        int num_hit = s_enum_reserves_number(pe, number);
        int name_hit = s_has_string(pe->reserved_name, pe->n_reserved_name, name);
        if (!num_hit && !name_hit)
            continue;
        s_fmt(el, sizeof el, "%s.%s (value %d)", ename, name, number);
        s_problem(c, "enum-value-reserved-reused", el,
                  "%s (%d) uses the %s that the previous version reserved: old data and old "
                  "clients may still carry the removed value under it. Take a new number and "
                  "name.",
                  name, number,
                  num_hit && name_hit ? "number and name" : (num_hit ? "number" : "name"));
    }
}

static void
s_enum_removed(compat_t *c, const enum_t *pe, const char *scope)
{
    char el[NAME_LEN];
    s_join(el, sizeof el, scope, pe->name);
    s_problem(c, "enum-removed", el,
              "enum %s was removed: clients compiled against the old version still use it. Keep "
              "it (mark it deprecated if it is no longer used).",
              S(pe->name));
}

static void
s_enums(compat_t *c, enum_t *const *plist, size_t pn, enum_t *const *nlist, size_t nn,
        const char *pscope, const char *nscope)
{
    for (size_t i = 0; i < pn; i++) {
        if (plist[i] == NULL)
            continue;
        const enum_t *ne = s_enum_by_name(nlist, nn, S(plist[i]->name));
        if (ne)
            s_enum(c, plist[i], ne, nscope);
        else
            s_enum_removed(c, plist[i], pscope);
    }
}

/* ---- messages ---- */

static void s_messages(compat_t *c, msg_t *const *plist, size_t pn, msg_t *const *nlist, size_t nn,
                       const char *pscope, const char *nscope, int depth);

/* A field of `pm` whose number `nm` still has. */
static void
s_field_kept(compat_t *c, const msg_t *pm, const field_t *pf, const msg_t *nm, const field_t *nf,
             const char *el)
{
    const char *name = S(pf->name);
    const char *now = S(nf->name);
    int32_t number = s_number(pf);
    char was_t[NAME_LEN], now_t[NAME_LEN];

    if (!s_same_type(c, pm, pf, nm, nf)) {
        s_type_text(pm, pf, was_t, sizeof was_t);
        s_type_text(nm, nf, now_t, sizeof now_t);
        if (strcmp(name, now) != 0)
            s_problem(c, "field-number-reused", el,
                      "number %d was `%s %s`, now `%s %s`: old clients read the new field as "
                      "the old one. Give %s a new number, and write `reserved %d; reserved "
                      "\"%s\";`.",
                      number, was_t, name, now_t, now, now, number, name);
        else
            s_problem(c, "field-type-changed", el,
                      "%s was `%s`, now `%s`: clients compiled against the old version read "
                      "and write it as `%s`. Keep the type; add a field with a new number for "
                      "the new type.",
                      name, was_t, now_t, was_t);
        return; /* what else differs follows from this */
    }
    if (strcmp(name, now) != 0) {
        s_problem(c, "field-renamed", el,
                  "field %d was named %s, now %s: JSON clients send and expect the name %s. "
                  "Keep the old name (mark it deprecated and add a new field with a new number "
                  "if the meaning changed).",
                  number, name, now, name);
        return;
    }
    if (pf->json_name && nf->json_name && strcmp(pf->json_name, nf->json_name) != 0)
        s_problem(c, "field-renamed", el,
                  "the JSON name of %s was %s, now %s: JSON clients send and expect %s. Keep "
                  "json_name as it was.",
                  name, pf->json_name, nf->json_name, pf->json_name);

    const char *po = s_oneof_name(pm, pf);
    const char *no = s_oneof_name(nm, nf);
    if ((po == NULL) != (no == NULL) || (po && strcmp(po, no) != 0)) {
        char was_o[NAME_LEN], now_o[NAME_LEN];
        s_fmt(was_o, sizeof was_o, "%s%s", po ? "oneof " : "no oneof", S(po));
        s_fmt(now_o, sizeof now_o, "%s%s", no ? "oneof " : "no oneof", S(no));
        s_problem(c, "oneof-changed", el,
                  "%s moved from %s to %s: clients compiled against the old version clear, "
                  "keep and check the wrong fields together with it. Keep it in %s; add a new "
                  "field for the new place.",
                  name, was_o, now_o, was_o);
        return;
    }
    if (pf->has_proto3_optional && pf->proto3_optional &&
        !(nf->has_proto3_optional && nf->proto3_optional))
        s_problem(c, "field-presence-changed", el,
                  "%s lost `optional`: a sender of the new version leaves out zero values, and "
                  "old clients that ask whether it was set read \"not set\". Keep `optional`.",
                  name);
    if (strcmp(S(pf->default_value), S(nf->default_value)) != 0)
        s_problem(c, "field-default-changed", el,
                  "the default of %s was \"%s\", now \"%s\": old and new clients read a message "
                  "without it differently. Keep the default.",
                  name, S(pf->default_value), S(nf->default_value));
}

static void
s_message(compat_t *c, const msg_t *pm, const msg_t *nm, const char *pscope, const char *nscope,
          int depth)
{
    char pname[NAME_LEN], nname[NAME_LEN], el[NAME_LEN], container[NAME_LEN];
    s_join(pname, sizeof pname, pscope, pm->name);
    s_fmt(container, sizeof container, "message %s", S(nm->name));
    s_join(nname, sizeof nname, nscope, nm->name);
    if (depth > MAX_DEPTH) {
        s_problem(c, "nesting-too-deep", nname,
                  "messages are nested more than %d deep here; the registry does not compare "
                  "deeper. Flatten the nesting.",
                  MAX_DEPTH);
        return;
    }

    for (size_t i = 0; i < pm->n_field; i++) {
        const field_t *pf = pm->field[i];
        if (pf == NULL)
            continue;
        int32_t number = s_number(pf);
        const char *name = S(pf->name);
        s_fmt(el, sizeof el, "%s.%s (field %d)", nname, name, number);
        const field_t *nf = s_field_by_number(nm, number);
        if (nf) {
            s_field_kept(c, pm, pf, nm, nf, el);
            continue;
        }
        const field_t *moved = s_field_by_name(nm, name);
        if (moved) {
            s_problem(c, "field-number-changed", el,
                      "%s moved from number %d to %d: clients compiled against the old version "
                      "still read and write %d. Keep number %d.",
                      name, number, s_number(moved), number, number);
            continue;
        }
        int num_ok = s_msg_reserves_number(nm, number);
        int name_ok = s_has_string(nm->reserved_name, nm->n_reserved_name, name);
        if (!num_ok || !name_ok)
            s_removed_not_reserved(c, "field-removed-not-reserved", el, "field", name, number,
                                   num_ok, name_ok, container);
    }

    for (size_t i = 0; i < nm->n_field; i++) {
        const field_t *nf = nm->field[i];
        if (nf == NULL || s_field_by_number(pm, s_number(nf)))
            continue;
        const char *name = S(nf->name);
        int num_hit = s_msg_reserves_number(pm, s_number(nf));
        int name_hit = s_has_string(pm->reserved_name, pm->n_reserved_name, name);
        if (!num_hit && !name_hit)
            continue;
        s_fmt(el, sizeof el, "%s.%s (field %d)", nname, name, s_number(nf));
        s_problem(c, "field-number-reserved-reused", el,
                  "%s (%d) uses the %s that the previous version reserved: old data and old "
                  "clients may still carry the removed field under it. Take a new number and "
                  "name.",
                  name, s_number(nf),
                  num_hit && name_hit ? "number and name" : (num_hit ? "number" : "name"));
    }

    s_messages(c, pm->nested_type, pm->n_nested_type, nm->nested_type, nm->n_nested_type, pname,
               nname, depth + 1);
    s_enums(c, pm->enum_type, pm->n_enum_type, nm->enum_type, nm->n_enum_type, pname, nname);
}

static void
s_message_removed(compat_t *c, const msg_t *pm, const char *pscope)
{
    char el[NAME_LEN], path[NAME_LEN], renamed[NAME_LEN];
    s_join(el, sizeof el, pscope, pm->name);
    if (!s_find_renamed(c, pm, c->next->message_type, c->next->n_message_type, "", path,
                        sizeof path, 0)) {
        s_problem(c, "message-removed", el,
                  "message %s was removed: clients compiled against the old version still use "
                  "it. Keep it (mark it deprecated if it is no longer used).",
                  S(pm->name));
        return;
    }
    s_join(renamed, sizeof renamed, c->next_pkg, path);
    s_problem(c, "message-removed", el,
              "message %s was removed and looks renamed to %s (same field numbers and types): "
              "clients compiled against the old version still use the old name. Keep the old "
              "name %s, or add %s beside it.",
              S(pm->name), renamed, S(pm->name), path);
}

static void
s_messages(compat_t *c, msg_t *const *plist, size_t pn, msg_t *const *nlist, size_t nn,
           const char *pscope, const char *nscope, int depth)
{
    for (size_t i = 0; i < pn; i++) {
        const msg_t *pm = plist[i];
        if (pm == NULL)
            continue;
        const msg_t *nm = s_msg_by_name(nlist, nn, S(pm->name));
        if (nm == NULL) {
            /* a map's entry goes with its field, which is reported */
            if (!s_is_map_entry(pm))
                s_message_removed(c, pm, pscope);
        } else if (!(s_is_map_entry(pm) && s_is_map_entry(nm))) {
            /* two entries are compared at their map field, as map<K, V> */
            s_message(c, pm, nm, pscope, nscope, depth);
        }
    }
}

/* ---- services ---- */

static int
s_flag(protobuf_c_boolean has, protobuf_c_boolean v)
{
    return has && v;
}

static void
s_signature(const method_t *m, char *buf, size_t len)
{
    const char *in = S(m->input_type);
    const char *out = S(m->output_type);
    s_fmt(buf, len, "(%s%s) returns (%s%s)",
          s_flag(m->has_client_streaming, m->client_streaming) ? "stream " : "",
          in[0] == '.' ? in + 1 : in,
          s_flag(m->has_server_streaming, m->server_streaming) ? "stream " : "",
          out[0] == '.' ? out + 1 : out);
}

static void
s_service(compat_t *c, const service_t *ps, const service_t *ns, const char *scope)
{
    char sname[NAME_LEN], el[NAME_LEN];
    s_join(sname, sizeof sname, scope, ns->name);
    for (size_t i = 0; i < ps->n_method; i++) {
        const method_t *pm = ps->method[i];
        if (pm == NULL)
            continue;
        const char *name = S(pm->name);
        s_fmt(el, sizeof el, "%s.%s", sname, name);
        const method_t *nm = NULL;
        for (size_t j = 0; j < ns->n_method && nm == NULL; j++)
            if (ns->method[j] && strcmp(S(ns->method[j]->name), name) == 0)
                nm = ns->method[j];
        if (nm == NULL) {
            s_problem(c, "method-removed", el,
                      "method %s was removed: clients compiled against the old version still "
                      "call it. Keep it (mark it deprecated if it is no longer offered).",
                      name);
            continue;
        }
        if (!s_same_type_name(c, pm->input_type, nm->input_type) ||
            !s_same_type_name(c, pm->output_type, nm->output_type) ||
            s_flag(pm->has_client_streaming, pm->client_streaming) !=
                s_flag(nm->has_client_streaming, nm->client_streaming) ||
            s_flag(pm->has_server_streaming, pm->server_streaming) !=
                s_flag(nm->has_server_streaming, nm->server_streaming)) {
            char was[NAME_LEN], now[NAME_LEN];
            s_signature(pm, was, sizeof was);
            s_signature(nm, now, sizeof now);
            s_problem(c, "method-signature-changed", el,
                      "%s was %s, now %s: clients compiled against the old version send and "
                      "expect the old messages. Keep it; add a method with a new name for the "
                      "new signature.",
                      name, was, now);
        }
    }
}

static void
s_services(compat_t *c)
{
    const file_t *p = c->prev, *n = c->next;
    char el[NAME_LEN];
    for (size_t i = 0; i < p->n_service; i++) {
        const service_t *ps = p->service[i];
        if (ps == NULL)
            continue;
        const service_t *ns = NULL;
        for (size_t j = 0; j < n->n_service && ns == NULL; j++)
            if (n->service[j] && strcmp(S(n->service[j]->name), S(ps->name)) == 0)
                ns = n->service[j];
        if (ns) {
            s_service(c, ps, ns, c->next_pkg);
            continue;
        }
        s_join(el, sizeof el, c->prev_pkg, ps->name);
        s_problem(c, "service-removed", el,
                  "service %s was removed: clients compiled against the old version still call "
                  "it. Keep it (mark it deprecated if it is no longer offered).",
                  S(ps->name));
    }
}

/* ---- the file ---- */

static const char *
s_syntax(const file_t *f)
{
    /* protoc leaves syntax out for proto2 */
    return f->syntax && *f->syntax ? f->syntax : "proto2";
}

int
ab_compat_check(const Google__Protobuf__FileDescriptorProto *prev,
                const Google__Protobuf__FileDescriptorProto *next, ab_compat_report_t *report)
{
    if (prev == NULL || next == NULL || report == NULL)
        return AB_EINVAL;
    compat_t c = {
        .prev = prev,
        .next = next,
        .prev_pkg = S(prev->package),
        .next_pkg = S(next->package),
        .report = report,
    };
    const char *file = S(next->name);

    if (strcmp(s_syntax(prev), s_syntax(next)) != 0)
        s_problem(&c, "syntax-changed", file,
                  "syntax was %s, now %s: field presence, defaults and unknown enum values "
                  "behave differently for clients compiled against the old version. Keep "
                  "syntax = \"%s\".",
                  s_syntax(prev), s_syntax(next), s_syntax(prev));
    if (strcmp(c.prev_pkg, c.next_pkg) != 0)
        s_problem(&c, "package-changed", file,
                  "package was \"%s\", now \"%s\": every message, enum and service gets a new "
                  "full name, and old clients' calls and types no longer match. Keep package "
                  "%s; publish a new package as a new file.",
                  c.prev_pkg, c.next_pkg, c.prev_pkg);

    s_messages(&c, prev->message_type, prev->n_message_type, next->message_type,
               next->n_message_type, c.prev_pkg, c.next_pkg, 0);
    s_enums(&c, prev->enum_type, prev->n_enum_type, next->enum_type, next->n_enum_type, c.prev_pkg,
            c.next_pkg);
    s_services(&c);

    return c.err ? c.err : c.added;
}

void
ab_compat_report_clear(ab_compat_report_t *report)
{
    if (report == NULL)
        return;
    free(report->problems);
    report->problems = NULL;
    report->count = 0;
    report->cap = 0;
}
