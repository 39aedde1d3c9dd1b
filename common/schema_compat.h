/*
 * Compatibility of a new version of a published .proto file with the registered one.
 *
 * A municipality compiled its case system against the old version; the new version must still
 * read what the old one wrote and answer what the old one asks. Additions are allowed; each
 * rule below names what it refuses. The rules are documented in README.md ("Schema
 * compatibility").
 */
#ifndef AB_SCHEMA_COMPAT_H
#define AB_SCHEMA_COMPAT_H

#include <stddef.h>

#include "google/protobuf/descriptor.pb-c.h"

/* One broken rule. */
typedef struct {
    const char *rule;  /* stable rule id, e.g. "field-type-changed" (static string) */
    char element[256]; /* fully-qualified element at fault, e.g. "pkg.Msg.field" (#3) */
    char text[384];    /* what changed and what to do instead, for a person */
} ab_compat_problem_t;

typedef struct {
    ab_compat_problem_t *problems; /* owned by the report */
    size_t count;
    size_t cap;
} ab_compat_report_t;

/* Compares `next` with `prev`, two versions of the same file, and appends every broken rule
 * to `report` (zero-initialise it first). Returns the number of problems appended, or a
 * negative AB_E*: AB_EINVAL when an argument is NULL, AB_ENOMEM on allocation failure (the
 * report then holds the problems appended before it; clear it as usual). */
int ab_compat_check(const Google__Protobuf__FileDescriptorProto *prev,
                    const Google__Protobuf__FileDescriptorProto *next, ab_compat_report_t *report);

/* Frees the problems; the report may be reused. NULL-safe. */
void ab_compat_report_clear(ab_compat_report_t *report);

#endif
