/*
 * wire.c - header frame codec with limits, names, message ids.
 */
#include "wire.h"

#include "codec.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/*
 * A decoded header's strings and sub-messages come from a fixed arena that is reset per frame:
 * no malloc per message on the hot path, and a hostile frame can never make us allocate more.
 * A header frame is at most AB_MAX_HEADER_BYTES; the worst case is a frame of empty map entries
 * (2 wire bytes -> one entry struct, one pointer and two empty strings), hence the factor.
 */
#define ARENA_BYTES (AB_MAX_HEADER_BYTES * 64)

struct ab_wire_decoder {
    ab_header_t *hdr;
    size_t used;
    _Alignas(16) uint8_t arena[ARENA_BYTES];
};

static void *
s_arena_alloc(void *data, size_t size)
{
    ab_wire_decoder_t *self = data;
    size_t aligned = (size + 15u) & ~(size_t)15u;
    if (aligned < size || aligned > ARENA_BYTES - self->used)
        return NULL;
    void *p = self->arena + self->used;
    self->used += aligned;
    return p;
}

ab_wire_decoder_t *
ab_wire_decoder_new(void)
{
    ab_wire_decoder_t *self = malloc(sizeof *self);
    if (!self)
        return NULL;
    self->hdr = NULL;
    self->used = 0;
    return self;
}

void
ab_wire_decoder_destroy(ab_wire_decoder_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free(*self_p);
    *self_p = NULL;
}

/* Length of the valid UTF-8 sequence at s (at most `avail` bytes), or 0 when it is not valid. */
static size_t
s_utf8_seq(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (avail < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return n;
}

int
ab_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        if (p[i] < 0x80) { /* the common case: ASCII */
            i++;
            continue;
        }
        size_t n = s_utf8_seq(p + i, len - i);
        if (n == 0)
            return 0;
        i += n;
    }
    return 1;
}

void
ab_utf8_sanitize(char *dst, size_t cap, const char *src)
{
    const unsigned char *p = (const unsigned char *)(src ? src : "");
    size_t len = strlen((const char *)p), o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = s_utf8_seq(p + i, len - i);
        if (n == 0) {
            if (o + 1 >= cap)
                break;
            dst[o++] = '?';
            i++;
            continue;
        }
        if (o + n >= cap)
            break;
        if (n == 1 && (p[i] < 0x20 || p[i] == 0x7f))
            dst[o++] = ' ';
        else
            memcpy(dst + o, p + i, n), o += n;
        i += n;
    }
    dst[o] = '\0';
}

static int
s_check_string(const char *s, const char *field, size_t max, char why[AB_WHY_LEN])
{
    if (!s)
        return 0;
    size_t n = strnlen(s, max + 1);
    if (n > max) {
        snprintf(why, AB_WHY_LEN, "header field '%s' is longer than %zu bytes", field, max);
        return AB_EMALFORMED;
    }
    /* proto3 strings are UTF-8; other clients would refuse what we forward otherwise */
    if (!ab_utf8_valid(s, n)) {
        snprintf(why, AB_WHY_LEN, "header field '%s' is not valid UTF-8", field);
        return AB_EMALFORMED;
    }
    return 0;
}

int
ab_wire_decode(ab_wire_decoder_t *self, const void *data, size_t len, ab_header_t **hdr,
               char why[AB_WHY_LEN])
{
    why[0] = '\0';
    *hdr = NULL;
    if (len == 0) {
        snprintf(why, AB_WHY_LEN, "header frame is empty");
        return AB_EMALFORMED;
    }
    if (len > AB_MAX_HEADER_BYTES) {
        snprintf(why, AB_WHY_LEN, "header frame of %zu bytes exceeds the limit of %d bytes", len,
                 AB_MAX_HEADER_BYTES);
        return AB_ETOO_LARGE;
    }
    self->used = 0;
    ab_header_t *h = NULL;
    if (ab_codec_unpack(data, len, s_arena_alloc, self, &h) != 0) {
        snprintf(why, AB_WHY_LEN,
                 "header frame of %zu bytes is not a valid amtsbote.v1.Header (truncated or not "
                 "protobuf)",
                 len);
        return AB_EMALFORMED;
    }
    if (h->version != AB_PROTOCOL_VERSION) {
        snprintf(why, AB_WHY_LEN,
                 "header field 'version' is %u; this broker speaks protocol version %d", h->version,
                 AB_PROTOCOL_VERSION);
        return AB_EMALFORMED;
    }
    if (h->kind <= AMTSBOTE__V1__KIND__KIND_UNSPECIFIED ||
        h->kind > AMTSBOTE__V1__KIND__KIND_HEARTBEAT) {
        snprintf(why, AB_WHY_LEN, "header field 'kind' has no valid value (%d)", (int)h->kind);
        return AB_EMALFORMED;
    }
    if (h->message_id.len != 0 && h->message_id.len != AB_MESSAGE_ID_LEN) {
        snprintf(why, AB_WHY_LEN, "header field 'message_id' must be %d bytes, not %zu",
                 AB_MESSAGE_ID_LEN, h->message_id.len);
        return AB_EMALFORMED;
    }
    if (h->correlation_id.len > 64) {
        snprintf(why, AB_WHY_LEN, "header field 'correlation_id' is longer than 64 bytes");
        return AB_EMALFORMED;
    }
    int rc = 0;
    if ((rc = s_check_string(h->service, "service", AB_MAX_NAME, why)) ||
        (rc = s_check_string(h->recipient, "recipient", AB_MAX_NAME, why)) ||
        (rc = s_check_string(h->topic, "topic", AB_MAX_NAME, why)) ||
        (rc = s_check_string(h->schema, "schema", AB_MAX_NAME, why)) ||
        (rc = s_check_string(h->purpose, "purpose", AB_MAX_NAME, why)) ||
        (rc = s_check_string(h->sender, "sender", AB_MAX_NAME, why)) ||
        (rc = s_check_string(h->subscription, "subscription", AB_MAX_NAME, why)))
        return rc;
    if (h->error && ((rc = s_check_string(h->error->text, "error.text", AB_MAX_ERROR_TEXT, why)) ||
                     (rc = s_check_string(h->error->field, "error.field", AB_MAX_NAME, why))))
        return rc;
    for (size_t i = 0; i < h->n_headers; i++)
        if ((rc = s_check_string(h->headers[i]->key, "headers (key)", AB_MAX_NAME, why)) ||
            (rc = s_check_string(h->headers[i]->value, "headers (value)", AB_MAX_ERROR_TEXT, why)))
            return rc;
    if (h->trace &&
        ((rc = s_check_string(h->trace->traceparent, "trace.traceparent", AB_MAX_NAME, why)) ||
         (rc = s_check_string(h->trace->tracestate, "trace.tracestate", AB_MAX_ERROR_TEXT, why))))
        return rc;
    *hdr = h;
    return 0;
}

int
ab_wire_encode(const ab_header_t *hdr, uint8_t *buf, size_t cap)
{
    int n = ab_codec_pack(hdr, buf, cap < AB_MAX_HEADER_BYTES ? cap : AB_MAX_HEADER_BYTES);
    return n < 0 ? AB_ETOO_LARGE : n;
}

/* An identifier segment: a letter, then letters, digits or '_'. */
static size_t
s_ident(const char *s)
{
    if (!isalpha((unsigned char)s[0]))
        return 0;
    size_t i = 1;
    while (isalnum((unsigned char)s[i]) || s[i] == '_')
        i++;
    return i;
}

/* What an error text quotes of a name: at most 200 bytes of it, cut between UTF-8 sequences,
 * invalid bytes as '?' and control characters as spaces, so that the text stays valid UTF-8
 * (it travels in a header's error.text) and one line (it is logged). */
#define S_QUOTE_LEN 201

static const char *
s_quote(char dst[S_QUOTE_LEN], const char *name)
{
    ab_utf8_sanitize(dst, S_QUOTE_LEN, name);
    return dst;
}

int
ab_wire_check_service(const char *name, int allow_whole, char why[AB_WHY_LEN])
{
    char q[S_QUOTE_LEN];
    if (!name || !*name) {
        snprintf(why, AB_WHY_LEN, "service name is empty");
        return AB_EINVAL;
    }
    if (strlen(name) > AB_MAX_NAME) {
        snprintf(why, AB_WHY_LEN, "service name is longer than %d bytes", AB_MAX_NAME);
        return AB_EINVAL;
    }
    /* package.Service: at least two dotted identifiers */
    const char *p = name;
    int segments = 0;
    for (;;) {
        size_t n = s_ident(p);
        if (n == 0)
            goto bad;
        p += n;
        segments++;
        if (*p != '.')
            break;
        p++;
    }
    if (segments < 2)
        goto bad;
    if (*p == '\0') {
        if (allow_whole)
            return 0;
        snprintf(why, AB_WHY_LEN, "service '%s' names no method (package.Service/Method)",
                 s_quote(q, name));
        return AB_EINVAL;
    }
    if (*p != '/')
        goto bad;
    p++;
    size_t n = s_ident(p);
    if (n == 0 || p[n] != '\0')
        goto bad;
    return 0;
bad:
    snprintf(why, AB_WHY_LEN, "service name '%s' is not of the form package.Service%s",
             s_quote(q, name), allow_whole ? "[/Method]" : "/Method");
    return AB_EINVAL;
}

int
ab_wire_check_participant(const char *addr, char why[AB_WHY_LEN])
{
    char q[S_QUOTE_LEN];
    if (!addr || !*addr) {
        snprintf(why, AB_WHY_LEN, "participant address is empty");
        return AB_EINVAL;
    }
    size_t len = strlen(addr);
    int segments = 0;
    size_t seglen = 0;
    if (len > AB_MAX_NAME)
        goto bad;
    for (size_t i = 0; i <= len; i++) {
        char c = addr[i];
        if (c == '.' || c == '\0') {
            if (seglen == 0)
                goto bad;
            segments++;
            seglen = 0;
            continue;
        }
        int ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 (seglen > 0 && (c == '-' || c == '_'));
        if (!ok)
            goto bad;
        seglen++;
    }
    if (segments < 2 || segments > 8)
        goto bad;
    return 0;
bad:
    snprintf(why, AB_WHY_LEN,
             "participant address '%s' is not of the form level.org[.unit] (lower-case "
             "letters, digits, '-', '_')",
             s_quote(q, addr));
    return AB_EINVAL;
}

/*
 * Random bits for message ids come from getrandom() in blocks, one system call per few hundred
 * ids instead of one per id. The block is per thread; a forked child throws its copy away so
 * that parent and child never hand out the same bits.
 */
#define RANDOM_BLOCK 4096
static _Thread_local uint8_t s_random[RANDOM_BLOCK];
static _Thread_local size_t s_random_left;
static pthread_once_t s_atfork_once = PTHREAD_ONCE_INIT;

static void
s_forget_random(void)
{
    s_random_left = 0;
}

static void
s_register_atfork(void)
{
    pthread_atfork(NULL, NULL, s_forget_random);
}

static void
s_random_bytes(uint8_t *out, size_t n)
{
    if (s_random_left < n) {
        pthread_once(&s_atfork_once, s_register_atfork);
        size_t got = 0;
        while (got < RANDOM_BLOCK) {
            ssize_t r = getrandom(s_random + got, RANDOM_BLOCK - got, 0);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                /* no entropy source: the clock and a counter, still unique per process */
                static _Thread_local uint64_t counter;
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ++counter;
                for (size_t i = got; i < RANDOM_BLOCK; i++, x = x * 6364136223846793005u + 1)
                    s_random[i] = (uint8_t)(x >> 56);
                break;
            }
            got += (size_t)r;
        }
        s_random_left = RANDOM_BLOCK;
    }
    memcpy(out, s_random + RANDOM_BLOCK - s_random_left, n);
    s_random_left -= n;
}

void
ab_uuid7(uint8_t out[AB_MESSAGE_ID_LEN])
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    s_random_bytes(out + 6, 10);
    for (int i = 0; i < 6; i++)
        out[i] = (uint8_t)(ms >> (40 - 8 * i));
    out[6] = (uint8_t)(0x70 | (out[6] & 0x0f)); /* version 7 */
    out[8] = (uint8_t)(0x80 | (out[8] & 0x3f)); /* variant 10 */
}

void
ab_hex(const uint8_t *data, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[data[i] >> 4];
        out[2 * i + 1] = digits[data[i] & 15];
    }
    out[2 * len] = '\0';
}

uint64_t
ab_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static const struct {
    int wire;
    int err;
} s_errmap[] = {
    {AMTSBOTE__V1__ERROR_CODE__UNKNOWN_SERVICE, AB_EUNKNOWN_SERVICE},
    {AMTSBOTE__V1__ERROR_CODE__FORBIDDEN, AB_EFORBIDDEN},
    {AMTSBOTE__V1__ERROR_CODE__SCHEMA_INVALID, AB_ESCHEMA_INVALID},
    {AMTSBOTE__V1__ERROR_CODE__DEADLINE_EXCEEDED, AB_EDEADLINE},
    {AMTSBOTE__V1__ERROR_CODE__PROVIDER_GONE, AB_EPROVIDER_GONE},
    {AMTSBOTE__V1__ERROR_CODE__TOO_LARGE, AB_ETOO_LARGE},
    {AMTSBOTE__V1__ERROR_CODE__MALFORMED, AB_EMALFORMED},
    {AMTSBOTE__V1__ERROR_CODE__MAILBOX_FULL, AB_EMAILBOX_FULL},
    {AMTSBOTE__V1__ERROR_CODE__UNAVAILABLE, AB_EUNAVAILABLE},
    {AMTSBOTE__V1__ERROR_CODE__INTERNAL, AB_EINTERNAL},
    {AMTSBOTE__V1__ERROR_CODE__PROVIDER_ERROR, AB_EPROVIDER},
    {AMTSBOTE__V1__ERROR_CODE__INVALID_ARGUMENT, AB_EINVAL},
    {AMTSBOTE__V1__ERROR_CODE__RATE_LIMITED, AB_ERATE_LIMITED},
};

int
ab_err_from_wire(int code)
{
    for (size_t i = 0; i < sizeof s_errmap / sizeof s_errmap[0]; i++)
        if (s_errmap[i].wire == code)
            return s_errmap[i].err;
    return AB_EINTERNAL;
}

int
ab_err_to_wire(int err)
{
    for (size_t i = 0; i < sizeof s_errmap / sizeof s_errmap[0]; i++)
        if (s_errmap[i].err == err)
            return s_errmap[i].wire;
    return AMTSBOTE__V1__ERROR_CODE__INTERNAL;
}

const char *
ab_kind_name(int kind)
{
    static const char *names[] = {"UNSPECIFIED", "HELLO", "CALL",     "REPLY",
                                  "ERROR",       "OFFER", "WITHDRAW", "SEND",
                                  "DELIVER",     "ACK",   "RECEIPT",  "PUBLISH",
                                  "SUBSCRIBE",   "EVENT", "CREDIT",   "HEARTBEAT"};
    if (kind < 0 || kind >= (int)(sizeof names / sizeof names[0]))
        return "UNKNOWN";
    return names[kind];
}
