/*
 * codec.c - amtsbote.v1.Header on the wire, written out by hand.
 *
 * Every message through the broker has its header decoded and encoded twice per hop, and
 * protobuf-c's table-driven code was the largest single cost of the broker's own work. The
 * Header is small and fixed, so it is read and written here directly, to the same bytes that
 * protobuf-c produces (tests/unit/test_codec.c checks that against protobuf-c itself). Unknown
 * fields are skipped, as proto3 allows; everything else that protobuf-c refuses is refused.
 * protobuf-c stays for every other message.
 */
#include "codec.h"

#include <string.h>

/* ---- reading -------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p, *end;
} s_in_t;

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

/* A varint of at most `max` bytes: 10 for a value; protobuf-c reads a tag or a length prefix
 * in at most 5 and refuses a longer one, however it is padded. */
static int
s_varint_max(s_in_t *in, uint64_t *out, int max)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 7 * max; shift += 7) {
        if (in->p >= in->end)
            return -1;
        uint8_t b = *in->p++;
        if (shift == 63 && b > 1)
            return -1; /* more than 64 bits */
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

static int
s_varint(s_in_t *in, uint64_t *out)
{
    return s_varint_max(in, out, 10);
}

/* A field's key (number and wire type). */
static int
s_key(s_in_t *in, uint64_t *key)
{
    return s_varint_max(in, key, 5) != 0 || *key > UINT32_MAX ? -1 : 0;
}

/* Reads a length-delimited field's bounds. */
static int
s_len(s_in_t *in, s_in_t *sub)
{
    uint64_t n;
    if (s_varint_max(in, &n, 5) != 0 || n > (uint64_t)(in->end - in->p))
        return -1;
    sub->p = in->p;
    sub->end = in->p + n;
    in->p += n;
    return 0;
}

/* Skips a field of wire type `wt` (unknown fields). */
static int
s_skip(s_in_t *in, int wt)
{
    uint64_t v;
    s_in_t sub;
    switch (wt) {
    case WT_VARINT:
        return s_varint(in, &v);
    case WT_I64:
        if (in->end - in->p < 8)
            return -1;
        in->p += 8;
        return 0;
    case WT_LEN:
        return s_len(in, &sub);
    case WT_I32:
        if (in->end - in->p < 4)
            return -1;
        in->p += 4;
        return 0;
    default:
        return -1; /* groups and reserved types: not in proto3 */
    }
}

/* A string field: copied into the arena with a NUL; a NUL inside it is refused. */
static int
s_string(s_in_t *in, ab_codec_alloc_fn *alloc, void *arena, char **out)
{
    s_in_t sub;
    if (s_len(in, &sub) != 0)
        return -1;
    size_t n = (size_t)(sub.end - sub.p);
    if (memchr(sub.p, 0, n))
        return -1;
    char *s = alloc(arena, n + 1);
    if (!s)
        return -1;
    memcpy(s, sub.p, n);
    s[n] = '\0';
    *out = s;
    return 0;
}

static char s_empty[] = "";

/* Parses (merging into) an Error sub-message. */
static int
s_error(s_in_t *in, ab_codec_alloc_fn *alloc, void *arena, Amtsbote__V1__Error *e)
{
    while (in->p < in->end) {
        uint64_t key, v;
        if (s_key(in, &key) != 0)
            return -1;
        int wt = (int)(key & 7);
        uint64_t field = key >> 3;
        if (field == 1 && wt == WT_VARINT) {
            if (s_varint(in, &v) != 0)
                return -1;
            e->code = (Amtsbote__V1__ErrorCode)(int32_t)v;
        } else if (field == 2 && wt == WT_LEN) {
            if (s_string(in, alloc, arena, &e->text) != 0)
                return -1;
        } else if (field == 3 && wt == WT_LEN) {
            if (s_string(in, alloc, arena, &e->field) != 0)
                return -1;
        } else if (field == 0 || (field <= 3) || s_skip(in, wt) != 0) {
            return -1; /* a known field with the wrong wire type, or field 0 */
        }
    }
    return 0;
}

/* Parses (merging into) a TraceContext, or a map entry: two string fields. */
static int
s_two_strings(s_in_t *in, ab_codec_alloc_fn *alloc, void *arena, char **a, char **b)
{
    while (in->p < in->end) {
        uint64_t key;
        if (s_key(in, &key) != 0)
            return -1;
        int wt = (int)(key & 7);
        uint64_t field = key >> 3;
        if (field == 1 && wt == WT_LEN) {
            if (s_string(in, alloc, arena, a) != 0)
                return -1;
        } else if (field == 2 && wt == WT_LEN) {
            if (s_string(in, alloc, arena, b) != 0)
                return -1;
        } else if (field == 0 || field <= 2 || s_skip(in, wt) != 0) {
            return -1;
        }
    }
    return 0;
}

int
ab_codec_unpack(const uint8_t *data, size_t len, ab_codec_alloc_fn *alloc, void *arena,
                ab_header_t **out)
{
    ab_header_t *h = alloc(arena, sizeof *h);
    if (!h)
        return -1;
    static const ab_header_t init = AMTSBOTE__V1__HEADER__INIT;
    *h = init;
    h->service = h->recipient = h->topic = h->schema = h->purpose = h->sender = s_empty;
    h->subscription = s_empty;
    /* map entries: at most one per two bytes of input; the array is made on the first one */
    size_t max_entries = len / 2 + 1;
    s_in_t in = {data, data + len};
    while (in.p < in.end) {
        uint64_t key, v;
        if (s_key(&in, &key) != 0)
            return -1;
        int wt = (int)(key & 7);
        uint64_t field = key >> 3;
        char **str = NULL;
        switch (field) {
        case 1:
        case 2:
        case 10:
        case 11:
        case 16:
        case 17:
        case 18:
        case 20:
        case 21:
        case 22:
        case 23:
            if (wt != WT_VARINT || s_varint(&in, &v) != 0)
                return -1;
            if (field == 1)
                h->version = (uint32_t)v;
            else if (field == 2)
                h->kind = (Amtsbote__V1__Kind)(int32_t)v;
            else if (field == 10)
                h->classification = (Amtsbote__V1__Classification)(int32_t)v;
            else if (field == 11)
                h->deadline_ms = (uint32_t)v;
            else if (field == 16)
                h->heartbeat_ms = (uint32_t)v;
            else if (field == 17)
                h->max_payload = (uint32_t)v;
            else if (field == 18)
                h->credit = (uint32_t)v;
            else if (field == 20)
                h->receipt = (Amtsbote__V1__ReceiptStatus)(int32_t)v;
            else if (field == 21)
                h->timestamp_ms = v;
            else if (field == 22)
                h->attempt = (uint32_t)v;
            else
                h->sequence = v;
            continue;
        case 3:
        case 4: {
            s_in_t sub;
            if (wt != WT_LEN || s_len(&in, &sub) != 0)
                return -1;
            ProtobufCBinaryData *b = field == 3 ? &h->message_id : &h->correlation_id;
            b->len = (size_t)(sub.end - sub.p);
            b->data = b->len ? (uint8_t *)sub.p : NULL; /* points into the frame: no copy */
            continue;
        }
        case 5:
            str = &h->service;
            break;
        case 6:
            str = &h->recipient;
            break;
        case 7:
            str = &h->topic;
            break;
        case 8:
            str = &h->schema;
            break;
        case 9:
            str = &h->purpose;
            break;
        case 15:
            str = &h->sender;
            break;
        case 19:
            str = &h->subscription;
            break;
        case 12: {
            s_in_t sub;
            if (wt != WT_LEN || s_len(&in, &sub) != 0)
                return -1;
            if (!h->headers) {
                h->headers = alloc(arena, max_entries * sizeof *h->headers);
                if (!h->headers)
                    return -1;
            }
            Amtsbote__V1__Header__HeadersEntry *e = alloc(arena, sizeof *e);
            if (!e)
                return -1;
            amtsbote__v1__header__headers_entry__init(e);
            e->key = e->value = s_empty;
            if (s_two_strings(&sub, alloc, arena, &e->key, &e->value) != 0)
                return -1;
            h->headers[h->n_headers++] = e;
            continue;
        }
        case 13: {
            s_in_t sub;
            if (wt != WT_LEN || s_len(&in, &sub) != 0)
                return -1;
            if (!h->trace) {
                h->trace = alloc(arena, sizeof *h->trace);
                if (!h->trace)
                    return -1;
                amtsbote__v1__trace_context__init(h->trace);
                h->trace->traceparent = h->trace->tracestate = s_empty;
            }
            if (s_two_strings(&sub, alloc, arena, &h->trace->traceparent, &h->trace->tracestate) !=
                0)
                return -1;
            continue;
        }
        case 14: {
            s_in_t sub;
            if (wt != WT_LEN || s_len(&in, &sub) != 0)
                return -1;
            if (!h->error) {
                h->error = alloc(arena, sizeof *h->error);
                if (!h->error)
                    return -1;
                amtsbote__v1__error__init(h->error);
                h->error->text = h->error->field = s_empty;
            }
            if (s_error(&sub, alloc, arena, h->error) != 0)
                return -1;
            continue;
        }
        case 0:
            return -1;
        default:
            if (s_skip(&in, wt) != 0)
                return -1;
            continue;
        }
        if (wt != WT_LEN || s_string(&in, alloc, arena, str) != 0)
            return -1;
    }
    *out = h;
    return 0;
}

/* ---- writing -------------------------------------------------------------------------------- */

typedef struct {
    uint8_t *p, *end;
    int overflow;
} s_out_t;

static size_t
s_varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static void
s_put_varint(s_out_t *o, uint64_t v)
{
    if ((size_t)(o->end - o->p) < s_varint_size(v)) {
        o->overflow = 1;
        return;
    }
    while (v >= 0x80) {
        *o->p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *o->p++ = (uint8_t)v;
}

static void
s_put_bytes(s_out_t *o, unsigned field, const void *data, size_t len)
{
    s_put_varint(o, (uint64_t)field << 3 | WT_LEN);
    s_put_varint(o, len);
    if ((size_t)(o->end - o->p) < len) {
        o->overflow = 1;
        return;
    }
    if (len)
        memcpy(o->p, data, len);
    o->p += len;
}

/* proto3: a scalar at its default value is not written. */
static void
s_put_uint(s_out_t *o, unsigned field, uint64_t v)
{
    if (v == 0)
        return;
    s_put_varint(o, (uint64_t)field << 3 | WT_VARINT);
    s_put_varint(o, v);
}

/* Enums are int32: negative values take ten bytes, as protobuf-c writes them. */
static void
s_put_enum(s_out_t *o, unsigned field, int v)
{
    s_put_uint(o, field, (uint64_t)(int64_t)v);
}

static void
s_put_string(s_out_t *o, unsigned field, const char *s)
{
    if (s && *s)
        s_put_bytes(o, field, s, strlen(s));
}

static size_t
s_string_size(unsigned field, const char *s)
{
    if (!s || !*s)
        return 0;
    size_t n = strlen(s);
    return s_varint_size((uint64_t)field << 3) + s_varint_size(n) + n;
}

/* A sub-message: its length first, so its size is worked out before it is written. */
static void
s_put_sub_header(s_out_t *o, unsigned field, size_t size)
{
    s_put_varint(o, (uint64_t)field << 3 | WT_LEN);
    s_put_varint(o, size);
}

static size_t
s_enum_size(unsigned field, int v)
{
    if (v == 0)
        return 0;
    return s_varint_size((uint64_t)field << 3) + s_varint_size((uint64_t)(int64_t)v);
}

int
ab_codec_pack(const ab_header_t *h, uint8_t *buf, size_t cap)
{
    s_out_t o = {buf, buf + cap, 0};
    s_put_uint(&o, 1, h->version);
    s_put_enum(&o, 2, (int)h->kind);
    if (h->message_id.len)
        s_put_bytes(&o, 3, h->message_id.data, h->message_id.len);
    if (h->correlation_id.len)
        s_put_bytes(&o, 4, h->correlation_id.data, h->correlation_id.len);
    s_put_string(&o, 5, h->service);
    s_put_string(&o, 6, h->recipient);
    s_put_string(&o, 7, h->topic);
    s_put_string(&o, 8, h->schema);
    s_put_string(&o, 9, h->purpose);
    s_put_enum(&o, 10, (int)h->classification);
    s_put_uint(&o, 11, h->deadline_ms);
    for (size_t i = 0; i < h->n_headers; i++) {
        const Amtsbote__V1__Header__HeadersEntry *e = h->headers[i];
        s_put_sub_header(&o, 12, s_string_size(1, e->key) + s_string_size(2, e->value));
        s_put_string(&o, 1, e->key);
        s_put_string(&o, 2, e->value);
    }
    if (h->trace) {
        s_put_sub_header(&o, 13,
                         s_string_size(1, h->trace->traceparent) +
                             s_string_size(2, h->trace->tracestate));
        s_put_string(&o, 1, h->trace->traceparent);
        s_put_string(&o, 2, h->trace->tracestate);
    }
    if (h->error) {
        s_put_sub_header(&o, 14,
                         s_enum_size(1, (int)h->error->code) + s_string_size(2, h->error->text) +
                             s_string_size(3, h->error->field));
        s_put_enum(&o, 1, (int)h->error->code);
        s_put_string(&o, 2, h->error->text);
        s_put_string(&o, 3, h->error->field);
    }
    s_put_string(&o, 15, h->sender);
    s_put_uint(&o, 16, h->heartbeat_ms);
    s_put_uint(&o, 17, h->max_payload);
    s_put_uint(&o, 18, h->credit);
    s_put_string(&o, 19, h->subscription);
    s_put_enum(&o, 20, (int)h->receipt);
    s_put_uint(&o, 21, h->timestamp_ms);
    s_put_uint(&o, 22, h->attempt);
    s_put_uint(&o, 23, h->sequence);
    if (o.overflow)
        return -1;
    return (int)(o.p - buf);
}
