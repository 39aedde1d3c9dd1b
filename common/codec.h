/*
 * codec.h - amtsbote.v1.Header read and written directly, byte for byte as protobuf-c does.
 *
 * Owns only the Header's wire format; limits and meaning are checked by wire.c above it.
 */
#ifndef AB_CODEC_H
#define AB_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "amtsbote/v1/amtsbote.pb-c.h"

typedef Amtsbote__V1__Header ab_header_t;

/* Hands out `size` bytes, suitably aligned, or NULL. Nothing is freed one by one. */
typedef void *(ab_codec_alloc_fn)(void *arena, size_t size);

/*
 * Decodes `len` bytes into a header made with `alloc`. Strings are copied (NUL-terminated;
 * absent ones are ""), bytes fields point into `data`, which must outlive the header. Returns 0,
 * or -1 for anything protobuf-c would refuse, a NUL inside a string, or an exhausted arena.
 */
int ab_codec_unpack(const uint8_t *data, size_t len, ab_codec_alloc_fn *alloc, void *arena,
                    ab_header_t **out);

/* Encodes `hdr` into `buf`; returns the length, or -1 when `cap` bytes are not enough. */
int ab_codec_pack(const ab_header_t *hdr, uint8_t *buf, size_t cap);

#endif
