/*
 * Runtime protobuf-c descriptors built from a FileDescriptorSet, and payload validation.
 *
 * A ministry publishes its interface as .proto files; `protoc --descriptor_set_out
 * --include_imports` turns them into a FileDescriptorSet. ab_schema_set_load() builds from it
 * the same ProtobufCMessageDescriptor / ProtobufCEnumDescriptor / ProtobufCServiceDescriptor
 * tables that protoc-c would have generated, with struct layouts computed here, so that
 * protobuf_c_message_unpack()/pack() work on types the broker was never compiled with.
 * message_init is left NULL: protobuf-c then initialises messages generically.
 *
 * ab_schema_validate() walks the wire bytes of a payload against a message descriptor without
 * allocating, and says where the payload is wrong as a field path (`adresse.plz`) and a reason.
 *
 * One set owns all its descriptors; they live until ab_schema_set_destroy().
 */
#ifndef AB_SCHEMA_H
#define AB_SCHEMA_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ab_schema_set ab_schema_set_t;

/* A reason a set or a payload was refused: the element at fault and why. */
typedef struct {
    char path[256]; /* field path (`antwort.adressen[2].plz`) or element (`pkg.Msg.field`) */
    char text[256]; /* why, for a person; never payload contents */
} ab_schema_error_t;

/* Builds descriptors for every file in the serialized FileDescriptorSet `data`. Returns 0 and
 * a new set in *out, or a negative AB_E* (AB_EINVAL for a set that does not decode or does not
 * hang together: an unresolved type, a duplicate name, an unsupported construct) with the
 * reason in *err (may be NULL). */
int ab_schema_set_load(const uint8_t *data, size_t len, ab_schema_set_t **out,
                       ab_schema_error_t *err);

/* Frees the set and every descriptor in it; NULL-safe, nulls the pointer. */
void ab_schema_set_destroy(ab_schema_set_t **self_p);

/* Look-ups by fully-qualified name without a leading dot (`meldewesen.v1.Anfrage`);
 * NULL when the set does not define it. Borrowed; valid while the set lives. */
const ProtobufCMessageDescriptor *ab_schema_message(const ab_schema_set_t *set, const char *name);
const ProtobufCEnumDescriptor *ab_schema_enum(const ab_schema_set_t *set, const char *name);
const ProtobufCServiceDescriptor *ab_schema_service(const ab_schema_set_t *set, const char *name);

/* The files of the set, in the order of the set (imports first, as protoc writes them).
 * ab_schema_file_name(set, i) is NULL past the end. The decoded FileDescriptorProto is
 * borrowed from the set (a Google__Protobuf__FileDescriptorProto *, see descriptor.pb-c.h). */
size_t ab_schema_file_count(const ab_schema_set_t *set);
const char *ab_schema_file_name(const ab_schema_set_t *set, size_t i);
const void *ab_schema_file_proto(const ab_schema_set_t *set, size_t i);

/* True when the message descriptor is a map entry (`map<K, V>` field's synthetic message). */
int ab_schema_is_map_entry(const ProtobufCMessageDescriptor *d);

/* Checks that `data` is a well-formed encoding of message `d`: every field's wire type fits
 * its declared type, lengths stay inside the buffer, nested messages are valid in turn, proto3
 * strings are UTF-8, proto2 required fields are present, nesting is at most 64 deep. Unknown
 * field numbers are allowed (a newer sender may know more). Returns 0, or AB_EINVAL with the
 * field path and reason in *err (may be NULL). Does not allocate. */
int ab_schema_validate(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len,
                       ab_schema_error_t *err);

/* The same check by the slower walk that keeps the path as it goes: ab_schema_validate() runs
 * a table-driven walk first and this one only to say where a payload is wrong. Both must
 * always agree; tests and fuzz targets call this to compare them. */
int ab_schema_validate_reference(const ProtobufCMessageDescriptor *d, const uint8_t *data,
                                 size_t len, ab_schema_error_t *err);

#endif
