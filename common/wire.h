/*
 * wire.h - the Amtsbote wire protocol as both broker and client library speak it.
 *
 * Owns: decoding a header frame within fixed limits (size before allocation, an arena instead of
 * per-field mallocs, field lengths and enum ranges after), encoding a header into a caller's
 * buffer, the syntax of service names and participant addresses, message ids (UUIDv7), and the
 * mapping between AB_E* codes and the wire's ErrorCode. No I/O and no logging here.
 */
#ifndef AB_WIRE_H
#define AB_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "amtsbote.h"
#include "amtsbote/v1/amtsbote.pb-c.h"

typedef Amtsbote__V1__Header ab_header_t;

/* Largest header frame accepted; checked before anything is allocated. */
#define AB_MAX_HEADER_BYTES 8192
/* Longest service name, participant address, topic, schema or purpose. */
#define AB_MAX_NAME 255
/* Longest error text carried in a header. */
#define AB_MAX_ERROR_TEXT 1024
#define AB_MESSAGE_ID_LEN 16
/* A reason why a frame was refused fits in this many bytes. */
#define AB_WHY_LEN 384

typedef struct ab_wire_decoder ab_wire_decoder_t;

/* Returns a decoder with its own arena, or NULL when out of memory. */
ab_wire_decoder_t *ab_wire_decoder_new(void);
/* Frees the decoder; accepts NULL and a pointer to NULL, and nulls *self_p. */
void ab_wire_decoder_destroy(ab_wire_decoder_t **self_p);

/*
 * Decodes and checks one header frame. On success returns 0 and sets *hdr to a header owned by
 * the decoder and valid until its next decode. On failure returns AB_EMALFORMED (or AB_ETOO_LARGE
 * for an oversize frame) and writes a sentence naming the field at fault to `why`.
 */
int ab_wire_decode(ab_wire_decoder_t *self, const void *data, size_t len, ab_header_t **hdr,
                   char why[AB_WHY_LEN]);

/*
 * Packs `hdr` into `buf` of `cap` bytes. Returns the length, or AB_ETOO_LARGE when it does not fit.
 */
int ab_wire_encode(const ab_header_t *hdr, uint8_t *buf, size_t cap);

/*
 * Checks a service name: "package.Service/Method", or "package.Service" when `allow_whole` is
 * set. Returns 0, or AB_EINVAL with a sentence in `why`.
 */
int ab_wire_check_service(const char *name, int allow_whole, char why[AB_WHY_LEN]);

/*
 * Checks a participant address `level.org[.unit]`: 2 to 8 dot-separated segments of lower-case
 * letters, digits, '-' and '_', each starting with a letter or digit. Returns 0 or AB_EINVAL.
 */
int ab_wire_check_participant(const char *addr, char why[AB_WHY_LEN]);

/* Non-zero when the `len` bytes at `s` are valid UTF-8 (no overlong forms, no surrogates). */
int ab_utf8_valid(const char *s, size_t len);

/*
 * Copies `src` into `dst` (cap > 0 bytes incl. NUL) as valid UTF-8 without control characters:
 * invalid bytes become '?', control characters a space, and a sequence is never cut in half.
 */
void ab_utf8_sanitize(char *dst, size_t cap, const char *src);

/* Fills `out` with a new UUIDv7 (milliseconds since the epoch, then random bits). */
void ab_uuid7(uint8_t out[AB_MESSAGE_ID_LEN]);

/* Writes `len` bytes as lower-case hex plus a NUL into `out` (2 * len + 1 bytes). */
void ab_hex(const uint8_t *data, size_t len, char *out);

/* Monotonic milliseconds, for deadlines and heartbeats. */
uint64_t ab_now_ms(void);

/* Maps the wire's ErrorCode to an AB_E* code (AB_EINTERNAL for codes it does not know). */
int ab_err_from_wire(int code);
/* Maps an AB_E* code to the wire's ErrorCode. */
int ab_err_to_wire(int err);

/* The wire's name for a Kind, e.g. "CALL"; "UNKNOWN" for values out of range. */
const char *ab_kind_name(int kind);

#endif
