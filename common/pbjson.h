/*
 * JSON <-> protobuf through a message descriptor, following the proto3 JSON mapping.
 *
 * Works on any ProtobufCMessageDescriptor: the ones protoc-c generates and the ones
 * ab_schema_set_load() builds at run time from a registered descriptor set. JSON parsing and
 * printing is jansson's.
 */
#ifndef AB_PBJSON_H
#define AB_PBJSON_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

/* Flags for ab_pb_to_json(). */
enum {
    AB_JSON_PRETTY = 1 << 0, /* indented, one field per line */
};

/* Parses `json` (len bytes, need not be NUL-terminated) as message `d` and packs it into a new
 * buffer *out of *out_len bytes (caller frees with free(); an empty message gives a non-NULL
 * buffer of 0 bytes). Returns 0, or AB_EINVAL with a message that names the field path at fault
 * in err (errlen bytes, may be NULL/0), or AB_ENOMEM. */
int ab_json_to_pb(const ProtobufCMessageDescriptor *d, const char *json, size_t len, uint8_t **out,
                  size_t *out_len, char *err, size_t errlen);

/* Unpacks `data` as message `d` and prints it as JSON into a new NUL-terminated string *out
 * (caller frees with free()). Returns 0, or AB_EINVAL when the bytes do not decode as `d`
 * (reason in err), or AB_ENOMEM. */
int ab_pb_to_json(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len, int flags,
                  char **out, char *err, size_t errlen);

#endif
