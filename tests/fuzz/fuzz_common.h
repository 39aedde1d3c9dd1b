/*
 * What the fuzz targets share: a check that survives NDEBUG, the embedded descriptor sets
 * (meldewesen example and the schematest protos), and the table of their message types that
 * the first input byte picks from.
 *
 * The table is in a fixed order (set, file, declaration order, nested types after their
 * parent), so a corpus file keeps meaning the same type. AB_FUZZ_LIST_TYPES=1 in the
 * environment prints it once at start-up.
 */
#ifndef AB_FUZZ_COMMON_H
#define AB_FUZZ_COMMON_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_check.h"
#include "google/protobuf/descriptor.pb-c.h"
#include "schema.h"

/* Loads the embedded sets and builds the type table once; aborts when they do not load. */
void ab_fuzz_init(void);

/* Number of message types in the table (> 0 after ab_fuzz_init()). */
size_t ab_fuzz_type_count(void);

/* The type that selector byte `b` picks (b modulo the count). */
const ProtobufCMessageDescriptor *ab_fuzz_type(uint8_t b);

/* The FileDescriptorProto of meldewesen/v1/meldewesen.proto, for compatibility checks. */
const Google__Protobuf__FileDescriptorProto *ab_fuzz_seed_file(void);

/* Calls fn for every message, enum and service that file `fp` declares, with its fully
 * qualified name (no leading dot) and its proto; nesting is bounded at 32 levels. */
typedef enum { AB_FUZZ_MSG, AB_FUZZ_ENUM, AB_FUZZ_SVC } ab_fuzz_kind_t;
void ab_fuzz_walk_file(const Google__Protobuf__FileDescriptorProto *fp,
                       void (*fn)(void *arg, ab_fuzz_kind_t kind, const char *name,
                                  const void *proto),
                       void *arg);

/* The promises around one payload of type d. Returns 0 when ab_schema_validate() refused it,
 * 1 when it accepted it and every check held; aborts when one did not:
 *  - a validated payload unpacks with protobuf-c, packs, and the packed bytes validate;
 *  - when ab_pb_to_json() prints it, ab_json_to_pb() reads the text back and printing the
 *    result gives the same text (compact and pretty agree on the bytes). */
int ab_fuzz_check_payload(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len);
#endif
