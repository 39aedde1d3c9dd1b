/*
 * JSON <-> protobuf through a message descriptor (the proto3 JSON mapping).
 *
 * Parsing goes through jansson into a message built here field by field, then
 * protobuf_c_message_pack(); printing unpacks with protobuf-c and writes the JSON text itself
 * (jansson prints every double with 17 digits, the mapping wants the shortest form that reads
 * back to the same value). Messages are initialised generically, never through message_init,
 * because descriptors built at run time have none; everything stored in them is malloc'd so
 * that protobuf_c_message_free_unpacked() with the default allocator frees it.
 *
 * Error messages name the field path (`antwort.adressen[2].plz`, map entries by position as
 * `orte{#3}`) and the types involved, never the values: payloads are personal data.
 */
#include "pbjson.h"

#include <float.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amtsbote.h"
#include "schema.h"

#define S_MAX_DEPTH 64
#define S_PATH_MAX 512
#define S_KEY_SHOWN_MAX 64

/* Timestamp range 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z, Duration +-10000
 * years, as the mapping fixes them. */
#define S_TS_MIN (-62135596800LL)
#define S_TS_MAX 253402300799LL
#define S_DUR_MAX 315576000000LL
#define S_DAYS_0001_TO_1970 719162

typedef enum {
    S_WKT_NONE,
    S_WKT_ANY,
    S_WKT_TIMESTAMP,
    S_WKT_DURATION,
    S_WKT_WRAPPER,
    S_WKT_STRUCT,
    S_WKT_VALUE,
    S_WKT_LIST,
    S_WKT_FIELDMASK,
} s_wkt_t;

/* Kind-of-value ids of google.protobuf.Value. */
enum {
    S_VALUE_NULL = 1,
    S_VALUE_NUMBER = 2,
    S_VALUE_STRING = 3,
    S_VALUE_BOOL = 4,
    S_VALUE_STRUCT = 5,
    S_VALUE_LIST = 6,
};

typedef struct {
    const char *root; /* full name of the top-level message, for errors at the top */
    char path[S_PATH_MAX];
    size_t plen;
    char *err;
    size_t errlen;
    int rc; /* the first failure; later ones are not reported */
    /* output (printing only) */
    char *buf;
    size_t len;
    size_t cap;
    int pretty;
    int indent;
} s_ctx_t;

/* ------------------------------------------------------------------------------------------ */
/* errors and field paths */

static int s_fail(s_ctx_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Records "field `path`: <reason>" (or "<root message>: <reason>" at the top); returns
 * AB_EINVAL. Only the first failure is kept. */
static int
s_fail(s_ctx_t *c, const char *fmt, ...)
{
    if (c->rc != 0)
        return c->rc;
    c->rc = AB_EINVAL;
    if (c->err == NULL || c->errlen == 0)
        return c->rc;
    int n = c->plen > 0 ? snprintf(c->err, c->errlen, "field `%s`: ", c->path)
                        : snprintf(c->err, c->errlen, "%s: ", c->root);
    if (n >= 0 && (size_t)n < c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return c->rc;
}

static int s_fail_plain(s_ctx_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Like s_fail() without the prefix, for messages that place the path themselves. */
static int
s_fail_plain(s_ctx_t *c, const char *fmt, ...)
{
    if (c->rc != 0)
        return c->rc;
    c->rc = AB_EINVAL;
    if (c->err != NULL && c->errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
    }
    return c->rc;
}

static int
s_oom(s_ctx_t *c)
{
    if (c->rc == 0) {
        c->rc = AB_ENOMEM;
        if (c->err != NULL && c->errlen > 0)
            snprintf(c->err, c->errlen, "out of memory");
    }
    return c->rc;
}

static void
s_path_putc(s_ctx_t *c, char ch)
{
    if (c->plen + 1 < sizeof c->path) {
        c->path[c->plen++] = ch;
        c->path[c->plen] = '\0';
    }
}

/* The JSON name protoc derives from a field name: underscores dropped, the letter after one
 * upper-cased, everything else kept. */
static void
s_path_push_json_name(s_ctx_t *c, const char *name)
{
    bool up = false;
    for (const char *p = name; *p; p++) {
        if (*p == '_') {
            up = true;
        } else {
            s_path_putc(c, up && *p >= 'a' && *p <= 'z' ? (char)(*p - 'a' + 'A') : *p);
            up = false;
        }
    }
}

/* Appends `.name` (the field's JSON name); returns the length to restore with s_path_pop(). */
static size_t
s_path_push_field(s_ctx_t *c, const ProtobufCFieldDescriptor *f)
{
    size_t old = c->plen;
    if (c->plen > 0)
        s_path_putc(c, '.');
    s_path_push_json_name(c, f->name);
    return old;
}

/* Appends a key as the sender wrote it, shortened and with anything unprintable replaced. */
static size_t
s_path_push_key(s_ctx_t *c, const char *key, size_t len)
{
    size_t old = c->plen;
    if (c->plen > 0)
        s_path_putc(c, '.');
    for (size_t i = 0; i < len && i < S_KEY_SHOWN_MAX; i++) {
        unsigned char ch = (unsigned char)key[i];
        s_path_putc(c, ch >= 0x20 && ch < 0x7f && ch != '`' ? (char)ch : '?');
    }
    if (len > S_KEY_SHOWN_MAX) {
        s_path_putc(c, '.');
        s_path_putc(c, '.');
        s_path_putc(c, '.');
    }
    return old;
}

/* Appends `[i]` (array element) or `{#i}` (i-th map entry: map keys can be personal data). */
static size_t
s_path_push_index(s_ctx_t *c, size_t i, bool map)
{
    size_t old = c->plen;
    char tmp[32];
    snprintf(tmp, sizeof tmp, map ? "{#%zu}" : "[%zu]", i);
    for (const char *p = tmp; *p; p++)
        s_path_putc(c, *p);
    return old;
}

static void
s_path_pop(s_ctx_t *c, size_t old)
{
    c->plen = old;
    c->path[old] = '\0';
}

/* ------------------------------------------------------------------------------------------ */
/* descriptors and messages */

static s_wkt_t
s_wkt(const ProtobufCMessageDescriptor *d)
{
    static const char prefix[] = "google.protobuf.";
    if (d->name == NULL || strncmp(d->name, prefix, sizeof prefix - 1) != 0)
        return S_WKT_NONE;
    const char *n = d->name + sizeof prefix - 1;
    static const char *const wrappers[] = {"DoubleValue", "FloatValue",  "Int64Value",
                                           "UInt64Value", "Int32Value",  "UInt32Value",
                                           "BoolValue",   "StringValue", "BytesValue"};
    if (strcmp(n, "Any") == 0)
        return S_WKT_ANY;
    if (strcmp(n, "Timestamp") == 0)
        return S_WKT_TIMESTAMP;
    if (strcmp(n, "Duration") == 0)
        return S_WKT_DURATION;
    if (strcmp(n, "Struct") == 0)
        return S_WKT_STRUCT;
    if (strcmp(n, "Value") == 0)
        return S_WKT_VALUE;
    if (strcmp(n, "ListValue") == 0)
        return S_WKT_LIST;
    if (strcmp(n, "FieldMask") == 0)
        return S_WKT_FIELDMASK;
    for (size_t i = 0; i < sizeof wrappers / sizeof wrappers[0]; i++)
        if (strcmp(n, wrappers[i]) == 0)
            return S_WKT_WRAPPER;
    return S_WKT_NONE;
}

static bool
s_is_value_msg(const ProtobufCFieldDescriptor *f)
{
    return f->type == PROTOBUF_C_TYPE_MESSAGE && f->descriptor != NULL &&
           s_wkt(f->descriptor) == S_WKT_VALUE;
}

static bool
s_is_null_enum(const ProtobufCFieldDescriptor *f)
{
    const ProtobufCEnumDescriptor *ed = f->descriptor;
    return f->type == PROTOBUF_C_TYPE_ENUM && ed != NULL && ed->name != NULL &&
           strcmp(ed->name, "google.protobuf.NullValue") == 0;
}

/* True when JSON null is a value of this field rather than "absent". */
static bool
s_null_is_value(const ProtobufCFieldDescriptor *f)
{
    return s_is_value_msg(f) || s_is_null_enum(f);
}

static const ProtobufCFieldDescriptor *
s_field_by_id(const ProtobufCMessageDescriptor *d, uint32_t id)
{
    for (unsigned i = 0; i < d->n_fields; i++)
        if (d->fields[i].id == id)
            return &d->fields[i];
    return NULL;
}

static bool
s_is_map(const ProtobufCFieldDescriptor *f)
{
    return f->label == PROTOBUF_C_LABEL_REPEATED && f->type == PROTOBUF_C_TYPE_MESSAGE &&
           ab_schema_is_map_entry(f->descriptor);
}

static void *
s_member(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    return (char *)m + f->offset;
}

static void *
s_quantifier(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    return (char *)m + f->quantifier_offset;
}

static size_t
s_elem_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    default:
        return 4; /* 32-bit integers, float, enum */
    }
}

static const char *
s_type_name(ProtobufCType t)
{
    static const char *const names[] = {
        [PROTOBUF_C_TYPE_INT32] = "int32",       [PROTOBUF_C_TYPE_SINT32] = "sint32",
        [PROTOBUF_C_TYPE_SFIXED32] = "sfixed32", [PROTOBUF_C_TYPE_INT64] = "int64",
        [PROTOBUF_C_TYPE_SINT64] = "sint64",     [PROTOBUF_C_TYPE_SFIXED64] = "sfixed64",
        [PROTOBUF_C_TYPE_UINT32] = "uint32",     [PROTOBUF_C_TYPE_FIXED32] = "fixed32",
        [PROTOBUF_C_TYPE_UINT64] = "uint64",     [PROTOBUF_C_TYPE_FIXED64] = "fixed64",
        [PROTOBUF_C_TYPE_FLOAT] = "float",       [PROTOBUF_C_TYPE_DOUBLE] = "double",
        [PROTOBUF_C_TYPE_BOOL] = "bool",         [PROTOBUF_C_TYPE_ENUM] = "enum",
        [PROTOBUF_C_TYPE_STRING] = "string",     [PROTOBUF_C_TYPE_BYTES] = "bytes",
        [PROTOBUF_C_TYPE_MESSAGE] = "message",
    };
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

/* A new message of type d, initialised as protobuf-c's generic initialiser does (zeroed,
 * proto2 defaults copied in); message_init is not used, runtime descriptors have none.
 * NULL when out of memory. */
static ProtobufCMessage *
s_msg_new(const ProtobufCMessageDescriptor *d)
{
    ProtobufCMessage *m = calloc(1, d->sizeof_message);
    if (m == NULL)
        return NULL;
    m->descriptor = d;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        /* oneof members share their storage; none is set yet */
        if (f->default_value == NULL || f->label == PROTOBUF_C_LABEL_REPEATED ||
            (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
            continue;
        void *p = s_member(m, f);
        switch (f->type) {
        case PROTOBUF_C_TYPE_STRING:
        case PROTOBUF_C_TYPE_MESSAGE:
            /* borrowed: free_unpacked() leaves a pointer equal to default_value alone */
            *(const void **)p = f->default_value;
            break;
        default:
            memcpy(p, f->default_value, s_elem_size(f->type));
            break;
        }
    }
    return m;
}

/* Whether a singular field is present, as protobuf-c's packer decides it. */
static bool
s_present(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    const void *p = s_member(m, f);
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        return *(const uint32_t *)s_quantifier(m, f) == f->id;
    if (f->label == PROTOBUF_C_LABEL_REQUIRED)
        return true;
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL) {
        if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE) {
            const void *ptr = *(const void *const *)p;
            return ptr != NULL && ptr != f->default_value;
        }
        return *(const protobuf_c_boolean *)s_quantifier(m, f) != 0;
    }
    /* proto3 without presence: printed unless it holds the default */
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(const char *const *)p;
        return s != NULL && s[0] != '\0';
    }
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)p)->len > 0;
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(const void *const *)p != NULL;
    case PROTOBUF_C_TYPE_BOOL:
        return *(const protobuf_c_boolean *)p != 0;
    case PROTOBUF_C_TYPE_FLOAT:
        /* by value, as the packer: -0.0 is the default too (and is not packed), NaN is not */
        return *(const float *)p != 0;
    case PROTOBUF_C_TYPE_DOUBLE:
        return *(const double *)p != 0;
    default: {
        uint64_t bits = 0;
        memcpy(&bits, p, s_elem_size(f->type));
        return bits != 0;
    }
    }
}

static void
s_mark_present(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        *(uint32_t *)s_quantifier(m, f) = f->id;
    else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING &&
             f->type != PROTOBUF_C_TYPE_MESSAGE)
        *(protobuf_c_boolean *)s_quantifier(m, f) = 1;
}

/* ------------------------------------------------------------------------------------------ */
/* text helpers: UTF-8, base64, numbers, dates */

static bool
s_utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char b = s[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t k;
        uint32_t cp;
        if (b >= 0xc2 && b <= 0xdf) {
            k = 1;
            cp = b & 0x1f;
        } else if (b >= 0xe0 && b <= 0xef) {
            k = 2;
            cp = b & 0x0f;
        } else if (b >= 0xf0 && b <= 0xf4) {
            k = 3;
            cp = b & 0x07;
        } else {
            return false;
        }
        if (n - i <= k)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k + 1;
    }
    return true;
}

static const char s_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int
s_b64_value(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+' || ch == '-')
        return 62;
    if (ch == '/' || ch == '_')
        return 63;
    return -1;
}

/* Decodes standard or URL-safe base64, padded or not, into a new buffer (NULL for empty).
 * Returns 0, AB_EINVAL for text that is not base64, AB_ENOMEM. */
static int
s_b64_decode(const char *s, size_t n, uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    size_t pad = 0;
    while (pad < 2 && n > pad && s[n - 1 - pad] == '=')
        pad++;
    if (pad > 0 && n % 4 != 0)
        return AB_EINVAL;
    size_t m = n - pad; /* significant characters */
    if (m % 4 == 1)
        return AB_EINVAL;
    if (m == 0)
        return 0;
    uint8_t *buf = malloc(m / 4 * 3 + 3);
    if (buf == NULL)
        return AB_ENOMEM;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < m; i++) {
        int v = s_b64_value((unsigned char)s[i]);
        if (v < 0) {
            free(buf);
            return AB_EINVAL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[o++] = (uint8_t)(acc >> bits);
        }
    }
    *out = buf;
    *out_len = o;
    return 0;
}

static bool
s_is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int
s_month_days(int64_t y, int m)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return days[m - 1] + (m == 2 && s_is_leap(y));
}

static int64_t
s_floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* Days from 0001-01-01 to the first of January of year y (proleptic Gregorian). */
static int64_t
s_days_before_year(int64_t y)
{
    int64_t p = y - 1;
    return 365 * p + s_floor_div(p, 4) - s_floor_div(p, 100) + s_floor_div(p, 400);
}

static int64_t
s_days_from_civil(int64_t y, int m, int d)
{
    int64_t days = s_days_before_year(y);
    for (int i = 1; i < m; i++)
        days += s_month_days(y, i);
    return days + d - 1 - S_DAYS_0001_TO_1970;
}

static void
s_civil_from_days(int64_t days, int64_t *y, int *m, int *d)
{
    int64_t n = days + S_DAYS_0001_TO_1970; /* days since 0001-01-01 */
    int64_t year = n * 400 / 146097 + 1;
    while (s_days_before_year(year) > n)
        year--;
    while (s_days_before_year(year + 1) <= n)
        year++;
    n -= s_days_before_year(year);
    int month = 1;
    while (n >= s_month_days(year, month))
        n -= s_month_days(year, month++);
    *y = year;
    *m = month;
    *d = (int)n + 1;
}

/* Reads exactly `count` decimal digits. */
static bool
s_digits(const char *s, int count, int *out)
{
    int v = 0;
    for (int i = 0; i < count; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

/* Reads `.d{1,9}` at *p if there is one, as nanoseconds. False for a dot without digits or
 * more than nine digits. */
static bool
s_fraction(const char **p, const char *end, int32_t *nanos)
{
    *nanos = 0;
    if (*p >= end || **p != '.')
        return true;
    (*p)++;
    int n = 0;
    int32_t v = 0;
    while (*p < end && **p >= '0' && **p <= '9') {
        if (++n > 9)
            return false;
        v = v * 10 + (**p - '0');
        (*p)++;
    }
    if (n == 0)
        return false;
    for (; n < 9; n++)
        v *= 10;
    *nanos = v;
    return true;
}

/* RFC 3339 `YYYY-MM-DDTHH:MM:SS[.f]Z` or with `+HH:MM`/`-HH:MM`. Returns 0, -1 for text that is
 * not one, -2 for a time outside the Timestamp range. */
static int
s_parse_timestamp(const char *s, size_t n, int64_t *sec, int32_t *nanos)
{
    const char *end = s + n;
    int y, mo, d, h, mi, se;
    if (n < 20 || !s_digits(s, 4, &y) || s[4] != '-' || !s_digits(s + 5, 2, &mo) || s[7] != '-' ||
        !s_digits(s + 8, 2, &d) || s[10] != 'T' || !s_digits(s + 11, 2, &h) || s[13] != ':' ||
        !s_digits(s + 14, 2, &mi) || s[16] != ':' || !s_digits(s + 17, 2, &se))
        return -1;
    if (mo < 1 || mo > 12 || d < 1 || d > s_month_days(y, mo) || h > 23 || mi > 59 || se > 59)
        return -1;
    const char *p = s + 19;
    if (!s_fraction(&p, end, nanos) || p >= end)
        return -1;
    int64_t offset = 0;
    if (*p == 'Z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (end - p < 6 || !s_digits(p + 1, 2, &oh) || p[3] != ':' || !s_digits(p + 4, 2, &om) ||
            oh > 23 || om > 59)
            return -1;
        offset = (oh * 3600 + om * 60) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return -1;
    }
    if (p != end)
        return -1;
    int64_t t = s_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - offset;
    if (t < S_TS_MIN || t > S_TS_MAX)
        return -2;
    *sec = t;
    return 0;
}

/* `-?S[.f]s`. Returns 0, -1 for text that is not one, -2 outside the Duration range. */
static int
s_parse_duration(const char *s, size_t n, int64_t *sec, int32_t *nanos)
{
    const char *p = s, *end = s + n;
    bool neg = p < end && *p == '-';
    if (neg)
        p++;
    int64_t v = 0;
    int digits = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        if (++digits > 12)
            return -2;
        v = v * 10 + (*p - '0');
        p++;
    }
    if (digits == 0 || !s_fraction(&p, end, nanos) || p + 1 != end || *p != 's')
        return -1;
    if (v > S_DUR_MAX)
        return -2;
    *sec = neg ? -v : v;
    if (neg)
        *nanos = -*nanos;
    return 0;
}

/* Decimal integer text `-?[0-9]+`. Returns 0, -1 for other text, -2 beyond int64/uint64. */
static int
s_parse_dec(const char *s, size_t n, bool *neg, uint64_t *mag)
{
    size_t i = 0;
    *neg = n > 0 && s[0] == '-';
    if (*neg)
        i++;
    if (i == n)
        return -1;
    uint64_t v = 0;
    bool over = false;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        unsigned dgt = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - dgt) / 10)
            over = true;
        else
            v = v * 10 + dgt;
    }
    *mag = v;
    return over ? -2 : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* JSON in: values */

/* An integer literal too long for jansson's long long is handed to it as the string
 * "\0<digits>" (see s_quote_big_ints()); such a string stands for a number. */
static bool
s_is_big_number(const json_t *j)
{
    return json_is_string(j) && json_string_length(j) >= 2 && json_string_value(j)[0] == '\0';
}

static const char *
s_json_type(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return s_is_big_number(j) ? "number" : "string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    default:
        return "null";
    }
}

/* Reads an integer of field type t from a JSON number or a numeric string into a signed
 * (min/max) or, with is_unsigned, an unsigned (0..umax) range. */
static int
s_json_integer(s_ctx_t *c, const json_t *j, ProtobufCType t, bool is_unsigned, int64_t min,
               int64_t max, uint64_t umax, int64_t *out_s, uint64_t *out_u)
{
    bool neg;
    uint64_t mag;
    if (json_is_integer(j)) {
        json_int_t v = json_integer_value(j);
        neg = v < 0;
        mag = neg ? (uint64_t)(-(v + 1)) + 1 : (uint64_t)v;
    } else if (json_is_real(j)) {
        double v = json_real_value(j);
        if (!isfinite(v) || v != trunc(v))
            return s_fail(c, "number is not an integer (%s)", s_type_name(t));
        if (v <= -18446744073709551616.0 || v >= 18446744073709551616.0)
            return s_fail(c, "value out of range for %s", s_type_name(t));
        neg = v < 0;
        mag = (uint64_t)(neg ? -v : v);
    } else if (json_is_string(j)) {
        const char *s = json_string_value(j);
        size_t n = json_string_length(j);
        if (s_is_big_number(j)) {
            s++;
            n--;
        }
        int rc = s_parse_dec(s, n, &neg, &mag);
        if (rc == -1)
            return s_fail(c, "string is not an integer (%s)", s_type_name(t));
        if (rc == -2)
            return s_fail(c, "value out of range for %s", s_type_name(t));
    } else {
        return s_fail(c, "expected number, got %s", s_json_type(j));
    }
    if (is_unsigned) {
        if ((neg && mag != 0) || mag > umax)
            return s_fail(c, "value out of range for %s", s_type_name(t));
        *out_u = mag;
        return 0;
    }
    if (neg ? mag > (uint64_t)INT64_MAX + 1 : mag > (uint64_t)INT64_MAX)
        return s_fail(c, "value out of range for %s", s_type_name(t));
    int64_t v = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    if (v < min || v > max)
        return s_fail(c, "value out of range for %s", s_type_name(t));
    *out_s = v;
    return 0;
}

/* A double from a JSON number, "NaN"/"Infinity"/"-Infinity" or a numeric string. */
static int
s_json_double(s_ctx_t *c, const json_t *j, ProtobufCType t, double *out)
{
    if (json_is_integer(j)) {
        *out = (double)json_integer_value(j);
        return 0;
    }
    if (json_is_real(j)) {
        *out = json_real_value(j);
        return 0;
    }
    if (!json_is_string(j))
        return s_fail(c, "expected number, got %s", s_json_type(j));
    const char *s = json_string_value(j);
    size_t n = json_string_length(j);
    if (s_is_big_number(j)) {
        s++;
        n--;
    }
    if (strcmp(s, "NaN") == 0) {
        *out = NAN;
        return 0;
    }
    if (strcmp(s, "Infinity") == 0) {
        *out = INFINITY;
        return 0;
    }
    if (strcmp(s, "-Infinity") == 0) {
        *out = -INFINITY;
        return 0;
    }
    /* strtod also reads hex, "inf" and leading blanks; JSON number characters only */
    bool ok = n > 0 && n < 512 && strlen(s) == n;
    for (size_t i = 0; ok && i < n; i++)
        ok = strchr("0123456789+-.eE", s[i]) != NULL;
    char *end = NULL;
    double v = ok ? strtod(s, &end) : 0;
    if (!ok || end != s + n)
        return s_fail(c, "string is not a number (%s)", s_type_name(t));
    if (isinf(v))
        return s_fail(c, "value out of range for %s", s_type_name(t));
    *out = v;
    return 0;
}

static int
s_json_enum(s_ctx_t *c, const ProtobufCEnumDescriptor *ed, const json_t *j, int32_t *out)
{
    if (json_is_string(j) && !s_is_big_number(j)) {
        const char *s = json_string_value(j);
        for (unsigned i = 0; i < ed->n_values; i++)
            if (strcmp(ed->values[i].name, s) == 0) {
                *out = ed->values[i].value;
                return 0;
            }
        return s_fail(c, "unknown name for enum %s", ed->name);
    }
    if (json_is_number(j) || s_is_big_number(j)) {
        int64_t v;
        /* any int32: proto3 enums are open, a newer sender may know more values */
        int rc =
            s_json_integer(c, j, PROTOBUF_C_TYPE_ENUM, false, INT32_MIN, INT32_MAX, 0, &v, NULL);
        if (rc == 0)
            *out = (int32_t)v;
        return rc;
    }
    return s_fail(c, "expected string or number (enum %s), got %s", ed->name, s_json_type(j));
}

/* A JSON string for a string field: no number stand-in, no NUL (C strings). */
static int
s_json_string(s_ctx_t *c, const json_t *j, const char **s, size_t *n)
{
    if (!json_is_string(j) || s_is_big_number(j))
        return s_fail(c, "expected string, got %s", s_json_type(j));
    *s = json_string_value(j);
    *n = json_string_length(j);
    if (memchr(*s, '\0', *n) != NULL)
        return s_fail(c, "string contains a NUL character");
    return 0;
}

static char *
s_strndup(const char *s, size_t n)
{
    char *r = malloc(n + 1);
    if (r != NULL) {
        memcpy(r, s, n);
        r[n] = '\0';
    }
    return r;
}

static int s_parse_message(s_ctx_t *c, const ProtobufCMessageDescriptor *d, const json_t *j,
                           int depth, ProtobufCMessage **out);

/* Parses j as a value of field f into dst (the field's storage, or an array element); nothing
 * is written on failure. Strings, bytes and messages are malloc'd. `depth` is the nesting of
 * the message that holds the field. */
static int
s_parse_value(s_ctx_t *c, const ProtobufCFieldDescriptor *f, const json_t *j, int depth, void *dst)
{
    int64_t sv = 0;
    uint64_t uv = 0;
    double dv = 0;
    int rc = 0;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        rc = s_json_integer(c, j, f->type, false, INT32_MIN, INT32_MAX, 0, &sv, NULL);
        if (rc == 0)
            *(int32_t *)dst = (int32_t)sv;
        return rc;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        rc = s_json_integer(c, j, f->type, false, INT64_MIN, INT64_MAX, 0, &sv, NULL);
        if (rc == 0)
            *(int64_t *)dst = sv;
        return rc;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        rc = s_json_integer(c, j, f->type, true, 0, 0, UINT32_MAX, NULL, &uv);
        if (rc == 0)
            *(uint32_t *)dst = (uint32_t)uv;
        return rc;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        rc = s_json_integer(c, j, f->type, true, 0, 0, UINT64_MAX, NULL, &uv);
        if (rc == 0)
            *(uint64_t *)dst = uv;
        return rc;
    case PROTOBUF_C_TYPE_FLOAT: {
        rc = s_json_double(c, j, f->type, &dv);
        if (rc != 0)
            return rc;
        float fv = (float)dv;
        if (isinf(fv) && isfinite(dv))
            return s_fail(c, "value out of range for float");
        *(float *)dst = fv;
        return 0;
    }
    case PROTOBUF_C_TYPE_DOUBLE:
        rc = s_json_double(c, j, f->type, &dv);
        if (rc == 0)
            *(double *)dst = dv;
        return rc;
    case PROTOBUF_C_TYPE_BOOL:
        if (!json_is_boolean(j))
            return s_fail(c, "expected boolean, got %s", s_json_type(j));
        *(protobuf_c_boolean *)dst = json_is_true(j);
        return 0;
    case PROTOBUF_C_TYPE_ENUM: {
        int32_t ev = 0;
        if (json_is_null(j) && s_is_null_enum(f)) {
            *(int32_t *)dst = 0;
            return 0;
        }
        rc = s_json_enum(c, f->descriptor, j, &ev);
        if (rc == 0)
            *(int32_t *)dst = ev;
        return rc;
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s;
        size_t n;
        rc = s_json_string(c, j, &s, &n);
        if (rc != 0)
            return rc;
        char *copy = s_strndup(s, n);
        if (copy == NULL)
            return s_oom(c);
        *(char **)dst = copy;
        return 0;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        if (!json_is_string(j) || s_is_big_number(j))
            return s_fail(c, "expected string (base64), got %s", s_json_type(j));
        uint8_t *data;
        size_t n;
        rc = s_b64_decode(json_string_value(j), json_string_length(j), &data, &n);
        if (rc == AB_ENOMEM)
            return s_oom(c);
        if (rc != 0)
            return s_fail(c, "string is not base64");
        ProtobufCBinaryData *bd = dst;
        bd->data = data;
        bd->len = n;
        return 0;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        ProtobufCMessage *sub = NULL;
        rc = s_parse_message(c, f->descriptor, j, depth + 1, &sub);
        if (rc == 0)
            *(ProtobufCMessage **)dst = sub;
        return rc;
    }
    }
    return s_fail(c, "unsupported field type");
}

static int
s_parse_repeated(s_ctx_t *c, ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                 const json_t *arr, int depth)
{
    if (!json_is_array(arr))
        return s_fail(c, "expected array, got %s", s_json_type(arr));
    size_t n = json_array_size(arr);
    if (n == 0)
        return 0;
    size_t el = s_elem_size(f->type);
    char *items = calloc(n, el);
    if (items == NULL)
        return s_oom(c);
    /* the count only ever covers finished elements, so free_unpacked() can run at any time */
    size_t *count = s_quantifier(m, f);
    *(void **)s_member(m, f) = items;
    *count = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(arr, i);
        size_t old = s_path_push_index(c, i, false);
        int rc = json_is_null(v) && !s_null_is_value(f)
                     ? s_fail(c, "null is not allowed in a repeated field")
                     : s_parse_value(c, f, v, depth, items + i * el);
        if (rc != 0)
            return rc;
        s_path_pop(c, old);
        (*count)++;
    }
    return 0;
}

/* A map key from its JSON object key: strings as they are, integers in canonical decimal
 * (so that two keys never name one entry), bools as "true"/"false". */
static int
s_parse_map_key(s_ctx_t *c, const ProtobufCFieldDescriptor *kf, const char *key, size_t n,
                void *dst)
{
    bool neg;
    uint64_t mag;
    int64_t sv;
    switch (kf->type) {
    case PROTOBUF_C_TYPE_STRING: {
        if (memchr(key, '\0', n) != NULL)
            return s_fail(c, "map key contains a NUL character");
        char *copy = s_strndup(key, n);
        if (copy == NULL)
            return s_oom(c);
        *(char **)dst = copy;
        return 0;
    }
    case PROTOBUF_C_TYPE_BOOL:
        if (n == 4 && memcmp(key, "true", 4) == 0)
            *(protobuf_c_boolean *)dst = 1;
        else if (n == 5 && memcmp(key, "false", 5) == 0)
            *(protobuf_c_boolean *)dst = 0;
        else
            return s_fail(c, "map key is not `true` or `false`");
        return 0;
    default:
        break;
    }
    int rc = s_parse_dec(key, n, &neg, &mag);
    /* canonical: no leading zeros, no "-0" */
    if (rc == -1 || (key[neg] == '0' && (n > (size_t)neg + 1 || neg)))
        return s_fail(c, "map key is not a decimal integer (%s)", s_type_name(kf->type));
    bool is_unsigned = kf->type == PROTOBUF_C_TYPE_UINT32 || kf->type == PROTOBUF_C_TYPE_FIXED32 ||
                       kf->type == PROTOBUF_C_TYPE_UINT64 || kf->type == PROTOBUF_C_TYPE_FIXED64;
    bool wide = s_elem_size(kf->type) == 8;
    if (rc == -2 || (is_unsigned && neg) || (neg && mag > (uint64_t)INT64_MAX + 1) ||
        (!neg && !is_unsigned && mag > (uint64_t)INT64_MAX))
        return s_fail(c, "map key out of range for %s", s_type_name(kf->type));
    if (is_unsigned) {
        if (!wide && mag > UINT32_MAX)
            return s_fail(c, "map key out of range for %s", s_type_name(kf->type));
        if (wide)
            *(uint64_t *)dst = mag;
        else
            *(uint32_t *)dst = (uint32_t)mag;
        return 0;
    }
    sv = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    if (!wide && (sv < INT32_MIN || sv > INT32_MAX))
        return s_fail(c, "map key out of range for %s", s_type_name(kf->type));
    if (wide)
        *(int64_t *)dst = sv;
    else
        *(int32_t *)dst = (int32_t)sv;
    return 0;
}

static int
s_parse_map(s_ctx_t *c, ProtobufCMessage *m, const ProtobufCFieldDescriptor *f, json_t *obj,
            int depth)
{
    if (!json_is_object(obj))
        return s_fail(c, "expected object, got %s", s_json_type(obj));
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    const ProtobufCFieldDescriptor *kf = &ed->fields[0], *vf = &ed->fields[1];
    size_t n = json_object_size(obj);
    if (n == 0)
        return 0;
    ProtobufCMessage **items = calloc(n, sizeof *items);
    if (items == NULL)
        return s_oom(c);
    size_t *count = s_quantifier(m, f);
    *(void **)s_member(m, f) = items;
    *count = 0;
    const char *key;
    size_t klen;
    json_t *v;
    json_object_keylen_foreach(obj, key, klen, v)
    {
        size_t old = s_path_push_index(c, *count, true);
        ProtobufCMessage *e = s_msg_new(ed);
        if (e == NULL)
            return s_oom(c);
        int rc = s_parse_map_key(c, kf, key, klen, s_member(e, kf));
        if (rc == 0) {
            s_mark_present(e, kf);
            rc = json_is_null(v) && !s_null_is_value(vf)
                     ? s_fail(c, "null is not allowed as a map value")
                     : s_parse_value(c, vf, v, depth, s_member(e, vf));
        }
        if (rc != 0) {
            protobuf_c_message_free_unpacked(e, NULL);
            return rc;
        }
        s_mark_present(e, vf);
        items[(*count)++] = e;
        s_path_pop(c, old);
    }
    return 0;
}

/* Index of the field that JSON key `key` names (its JSON name or its proto name), or -1. */
static int
s_find_field(const ProtobufCMessageDescriptor *d, const char *key, size_t n)
{
    for (unsigned i = 0; i < d->n_fields; i++) {
        const char *name = d->fields[i].name;
        if (strlen(name) == n && memcmp(name, key, n) == 0)
            return (int)i;
        /* compare with the JSON name without building it */
        size_t k = 0;
        bool up = false, same = true;
        for (const char *p = name; *p && same; p++) {
            if (*p == '_') {
                up = true;
                continue;
            }
            char ch = up && *p >= 'a' && *p <= 'z' ? (char)(*p - 'a' + 'A') : *p;
            up = false;
            same = k < n && key[k++] == ch;
        }
        if (same && k == n)
            return (int)i;
    }
    return -1;
}

static int
s_parse_fields(s_ctx_t *c, ProtobufCMessage *m, json_t *obj, int depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    /* 1: the key was seen, 2: the field was set (not null) */
    unsigned char *seen = calloc(d->n_fields + 1, 1);
    if (seen == NULL)
        return s_oom(c);
    int rc = 0;
    const char *key;
    size_t klen;
    json_t *v;
    json_object_keylen_foreach(obj, key, klen, v)
    {
        int idx = s_find_field(d, key, klen);
        if (idx < 0) {
            size_t old = s_path_push_key(c, key, klen);
            rc = s_fail_plain(c, "unknown field `%s` in message %s", c->path, d->name);
            s_path_pop(c, old);
            break;
        }
        const ProtobufCFieldDescriptor *f = &d->fields[idx];
        size_t old = s_path_push_field(c, f);
        if (seen[idx]) {
            rc = s_fail(c, "given twice (by its JSON name and by its proto name)");
            break;
        }
        seen[idx] = 1;
        if (json_is_null(v) && !s_null_is_value(f)) {
            s_path_pop(c, old); /* null: the field keeps its default */
            continue;
        }
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            for (unsigned i = 0; i < d->n_fields; i++) {
                const ProtobufCFieldDescriptor *o = &d->fields[i];
                if (seen[i] == 2 && (o->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
                    o->quantifier_offset == f->quantifier_offset) {
                    char mine[S_PATH_MAX];
                    snprintf(mine, sizeof mine, "%s", c->path);
                    s_path_pop(c, old);
                    s_path_push_field(c, o);
                    rc = s_fail_plain(c,
                                      "fields `%s` and `%s` are members of one oneof; at most "
                                      "one may be set",
                                      c->path, mine);
                    break;
                }
            }
            if (rc != 0)
                break;
        }
        if (s_is_map(f))
            rc = s_parse_map(c, m, f, v, depth);
        else if (f->label == PROTOBUF_C_LABEL_REPEATED)
            rc = s_parse_repeated(c, m, f, v, depth);
        else if ((rc = s_parse_value(c, f, v, depth, s_member(m, f))) == 0)
            s_mark_present(m, f);
        if (rc != 0)
            break;
        seen[idx] = 2;
        s_path_pop(c, old);
    }
    for (unsigned i = 0; rc == 0 && i < d->n_fields; i++) {
        if (d->fields[i].label == PROTOBUF_C_LABEL_REQUIRED && seen[i] != 2) {
            size_t old = s_path_push_field(c, &d->fields[i]);
            rc = s_fail_plain(c, "missing required field `%s` in message %s", c->path, d->name);
            s_path_pop(c, old);
        }
    }
    free(seen);
    return rc;
}

/* google.protobuf.Value from any JSON value. */
static int
s_parse_wkt_value(s_ctx_t *c, ProtobufCMessage *m, const json_t *j, int depth)
{
    uint32_t id;
    switch (json_typeof(j)) {
    case JSON_NULL:
        id = S_VALUE_NULL;
        break;
    case JSON_INTEGER:
    case JSON_REAL:
        id = S_VALUE_NUMBER;
        break;
    case JSON_STRING:
        id = s_is_big_number(j) ? S_VALUE_NUMBER : S_VALUE_STRING;
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        id = S_VALUE_BOOL;
        break;
    case JSON_OBJECT:
        id = S_VALUE_STRUCT;
        break;
    default:
        id = S_VALUE_LIST;
        break;
    }
    const ProtobufCFieldDescriptor *f = s_field_by_id(m->descriptor, id);
    if (f == NULL)
        return s_fail(c, "google.protobuf.Value without field %u", id);
    int rc = s_parse_value(c, f, j, depth, s_member(m, f));
    if (rc == 0)
        s_mark_present(m, f);
    return rc;
}

/* Fills a Timestamp or Duration (seconds = 1, nanos = 2). */
static int
s_set_seconds_nanos(s_ctx_t *c, ProtobufCMessage *m, int64_t sec, int32_t nanos)
{
    const ProtobufCFieldDescriptor *fs = s_field_by_id(m->descriptor, 1);
    const ProtobufCFieldDescriptor *fn = s_field_by_id(m->descriptor, 2);
    if (fs == NULL || fn == NULL || s_elem_size(fs->type) != 8 || s_elem_size(fn->type) != 4)
        return s_fail(c, "%s without seconds and nanos", m->descriptor->name);
    *(int64_t *)s_member(m, fs) = sec;
    *(int32_t *)s_member(m, fn) = nanos;
    s_mark_present(m, fs);
    s_mark_present(m, fn);
    return 0;
}

static int
s_parse_wkt(s_ctx_t *c, s_wkt_t wkt, ProtobufCMessage *m, json_t *j, int depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const ProtobufCFieldDescriptor *f1 = s_field_by_id(d, 1);
    switch (wkt) {
    case S_WKT_TIMESTAMP:
    case S_WKT_DURATION: {
        bool ts = wkt == S_WKT_TIMESTAMP;
        if (!json_is_string(j) || s_is_big_number(j))
            return s_fail(c, "expected string (%s), got %s", ts ? "RFC 3339 time" : "duration",
                          s_json_type(j));
        int64_t sec = 0;
        int32_t nanos = 0;
        const char *s = json_string_value(j);
        size_t n = json_string_length(j);
        int rc = ts ? s_parse_timestamp(s, n, &sec, &nanos) : s_parse_duration(s, n, &sec, &nanos);
        if (rc == -1)
            return s_fail(c, ts ? "not an RFC 3339 time (like 1972-01-01T10:00:20.021Z)"
                                : "not a duration (like 1.5s)");
        if (rc == -2)
            return s_fail(c, ts ? "time outside 0001-01-01 to 9999-12-31"
                                : "duration outside +-315576000000s");
        return s_set_seconds_nanos(c, m, sec, nanos);
    }
    case S_WKT_WRAPPER: {
        if (f1 == NULL)
            return s_fail(c, "%s without field `value`", d->name);
        if (json_is_null(j))
            return 0;
        int rc = s_parse_value(c, f1, j, depth, s_member(m, f1));
        if (rc == 0)
            s_mark_present(m, f1);
        return rc;
    }
    case S_WKT_STRUCT:
        if (f1 == NULL || !s_is_map(f1))
            return s_fail(c, "%s without field `fields`", d->name);
        return s_parse_map(c, m, f1, j, depth);
    case S_WKT_LIST:
        if (f1 == NULL || f1->label != PROTOBUF_C_LABEL_REPEATED)
            return s_fail(c, "%s without field `values`", d->name);
        return s_parse_repeated(c, m, f1, j, depth);
    case S_WKT_VALUE:
        return s_parse_wkt_value(c, m, j, depth);
    case S_WKT_FIELDMASK: {
        if (f1 == NULL || f1->label != PROTOBUF_C_LABEL_REPEATED ||
            f1->type != PROTOBUF_C_TYPE_STRING)
            return s_fail(c, "%s without field `paths`", d->name);
        const char *s;
        size_t n;
        int rc = s_json_string(c, j, &s, &n);
        if (rc != 0)
            return rc;
        /* "a.fooBar,b" -> paths "a.foo_bar", "b" */
        size_t parts = n == 0 ? 0 : 1;
        for (size_t i = 0; i < n; i++)
            parts += s[i] == ',';
        if (parts == 0)
            return 0;
        char **items = calloc(parts, sizeof *items);
        if (items == NULL)
            return s_oom(c);
        size_t *count = s_quantifier(m, f1);
        *(void **)s_member(m, f1) = items;
        *count = 0;
        for (size_t i = 0, start = 0; i <= n; i++) {
            if (i < n && s[i] != ',')
                continue;
            size_t upper = 0;
            for (size_t k = start; k < i; k++)
                upper += s[k] >= 'A' && s[k] <= 'Z';
            char *p = malloc(i - start + upper + 1), *o = p;
            if (p == NULL)
                return s_oom(c);
            for (size_t k = start; k < i; k++) {
                if (s[k] >= 'A' && s[k] <= 'Z') {
                    *o++ = '_';
                    *o++ = (char)(s[k] - 'A' + 'a');
                } else {
                    *o++ = s[k];
                }
            }
            *o = '\0';
            items[(*count)++] = p;
            start = i + 1;
        }
        return 0;
    }
    default:
        break;
    }
    return s_fail(c, "%s is not supported", d->name);
}

/* Parses j as message d into a new *out (free with protobuf_c_message_free_unpacked()). */
static int
s_parse_message(s_ctx_t *c, const ProtobufCMessageDescriptor *d, const json_t *j, int depth,
                ProtobufCMessage **out)
{
    if (d == NULL || d->magic != PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC)
        return s_fail(c, "no message descriptor");
    if (depth > S_MAX_DEPTH)
        return s_fail(c, "messages nested deeper than %d levels", S_MAX_DEPTH);
    s_wkt_t wkt = s_wkt(d);
    if (wkt == S_WKT_ANY)
        return s_fail(c, "google.protobuf.Any is not supported");
    if (wkt == S_WKT_NONE && !json_is_object(j))
        return s_fail(c, "expected object (message %s), got %s", d->name, s_json_type(j));
    ProtobufCMessage *m = s_msg_new(d);
    if (m == NULL)
        return s_oom(c);
    /* jansson's accessors take non-const values though they do not change them */
    json_t *mj = (json_t *)j;
    int rc =
        wkt == S_WKT_NONE ? s_parse_fields(c, m, mj, depth) : s_parse_wkt(c, wkt, m, mj, depth);
    if (rc != 0) {
        protobuf_c_message_free_unpacked(m, NULL);
        return rc;
    }
    *out = m;
    return 0;
}

/* Integer literals beyond what jansson reads (long long) are rewritten as "\u0000<digits>"
 * so that uint64 values above INT64_MAX can be sent as numbers. Returns a new buffer, or NULL
 * when nothing needed rewriting (or out of memory: then jansson's own error stands). */
static char *
s_quote_big_ints(const char *s, size_t n, size_t *out_len)
{
    char *o = NULL;
    size_t olen = 0, copied = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] == '"') {
            for (i++; i < n && s[i] != '"'; i++)
                if (s[i] == '\\')
                    i++;
            i++;
            continue;
        }
        if (s[i] != '-' && (s[i] < '0' || s[i] > '9')) {
            i++;
            continue;
        }
        size_t start = i;
        if (s[i] == '-')
            i++;
        size_t dstart = i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        size_t digits = i - dstart;
        bool integer = i >= n || (s[i] != '.' && s[i] != 'e' && s[i] != 'E');
        while (i < n && strchr("0123456789.eE+-", s[i]) != NULL)
            i++;
        if (!integer || digits < 19 || s[dstart] == '0')
            continue;
        if (o == NULL) {
            o = malloc(n + 8 * (n / 19 + 1));
            if (o == NULL)
                return NULL;
        }
        memcpy(o + olen, s + copied, start - copied);
        olen += start - copied;
        memcpy(o + olen, "\"\\u0000", 7);
        olen += 7;
        memcpy(o + olen, s + start, i - start);
        olen += i - start;
        o[olen++] = '"';
        copied = i;
    }
    if (o == NULL)
        return NULL;
    memcpy(o + olen, s + copied, n - copied);
    *out_len = olen + n - copied;
    return o;
}

int
ab_json_to_pb(const ProtobufCMessageDescriptor *d, const char *json, size_t len, uint8_t **out,
              size_t *out_len, char *err, size_t errlen)
{
    s_ctx_t c = {
        .root = d != NULL && d->name != NULL ? d->name : "?", .err = err, .errlen = errlen};
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    *out = NULL;
    *out_len = 0;
    if (d == NULL || (json == NULL && len > 0))
        return s_fail(&c, "no message descriptor or no input");
    size_t qlen = 0;
    char *quoted = s_quote_big_ints(json == NULL ? "" : json, len, &qlen);
    json_error_t jerr;
    json_t *root = json_loadb(quoted != NULL ? quoted : (json == NULL ? "" : json),
                              quoted != NULL ? qlen : len,
                              JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    free(quoted);
    if (root == NULL && json_error_code(&jerr) == json_error_out_of_memory)
        return s_oom(&c);
    if (root == NULL) {
        /* jansson quotes the text near the fault; that could be payload, so it is cut off */
        char *near = strstr(jerr.text, " near");
        if (near != NULL)
            *near = '\0';
        return s_fail(&c, "invalid JSON at line %d, column %d: %s", jerr.line, jerr.column,
                      jerr.text);
    }
    ProtobufCMessage *m = NULL;
    int rc = s_parse_message(&c, d, root, 1, &m);
    json_decref(root);
    if (rc != 0)
        return rc;
    size_t size = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(size > 0 ? size : 1);
    if (buf == NULL) {
        protobuf_c_message_free_unpacked(m, NULL);
        return s_oom(&c);
    }
    size_t packed = protobuf_c_message_pack(m, buf);
    protobuf_c_message_free_unpacked(m, NULL);
    if (packed != size) {
        free(buf);
        return s_fail(&c, "packed size changed while packing");
    }
    *out = buf;
    *out_len = size;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* JSON out */

static void
s_put(s_ctx_t *c, const char *s, size_t n)
{
    if (c->rc != 0)
        return;
    if (c->cap - c->len < n + 1) {
        size_t cap = c->cap > 0 ? c->cap : 256;
        while (cap - c->len < n + 1)
            cap *= 2;
        char *b = realloc(c->buf, cap);
        if (b == NULL) {
            s_oom(c);
            return;
        }
        c->buf = b;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, s, n);
    c->len += n;
    c->buf[c->len] = '\0';
}

static void
s_puts(s_ctx_t *c, const char *s)
{
    s_put(c, s, strlen(s));
}

static void s_putf(s_ctx_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
s_putf(s_ctx_t *c, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        s_put(c, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void
s_newline(s_ctx_t *c)
{
    if (!c->pretty)
        return;
    s_put(c, "\n", 1);
    for (int i = 0; i < c->indent; i++)
        s_put(c, "  ", 2);
}

/* Before each member of an object or array: the comma and, pretty, the line break. */
static void
s_item(s_ctx_t *c, bool *first)
{
    if (!*first)
        s_put(c, ",", 1);
    *first = false;
    s_newline(c);
}

static void
s_open(s_ctx_t *c, char ch)
{
    s_put(c, &ch, 1);
    c->indent++;
}

static void
s_close(s_ctx_t *c, char ch, bool first)
{
    c->indent--;
    if (!first)
        s_newline(c);
    s_put(c, &ch, 1);
}

/* A JSON string of n bytes, already known to be UTF-8. */
static void
s_put_jstr(s_ctx_t *c, const char *s, size_t n)
{
    s_put(c, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\')
            continue;
        s_put(c, s + run, i - run);
        run = i + 1;
        switch (ch) {
        case '"':
            s_puts(c, "\\\"");
            break;
        case '\\':
            s_puts(c, "\\\\");
            break;
        case '\n':
            s_puts(c, "\\n");
            break;
        case '\r':
            s_puts(c, "\\r");
            break;
        case '\t':
            s_puts(c, "\\t");
            break;
        case '\b':
            s_puts(c, "\\b");
            break;
        case '\f':
            s_puts(c, "\\f");
            break;
        default:
            s_putf(c, "\\u%04x", ch);
            break;
        }
    }
    s_put(c, s + run, n - run);
    s_put(c, "\"", 1);
}

/* An object key: the JSON name of a field. */
static void
s_put_field_key(s_ctx_t *c, const ProtobufCFieldDescriptor *f, bool *first)
{
    s_item(c, first);
    s_put(c, "\"", 1);
    bool up = false;
    for (const char *p = f->name; *p; p++) {
        if (*p == '_') {
            up = true;
            continue;
        }
        char ch = up && *p >= 'a' && *p <= 'z' ? (char)(*p - 'a' + 'A') : *p;
        up = false;
        s_put(c, &ch, 1);
    }
    s_puts(c, c->pretty ? "\": " : "\":");
}

/* The shortest decimal that reads back as the same double (or float), written as JavaScript
 * writes numbers: plain digits from 1e-7 up to 1e21, an exponent outside. */
static void
s_put_number(s_ctx_t *c, double v, bool is_float)
{
    if (isnan(v)) {
        s_puts(c, "\"NaN\"");
        return;
    }
    if (isinf(v)) {
        s_puts(c, v > 0 ? "\"Infinity\"" : "\"-Infinity\"");
        return;
    }
    if (v == 0) {
        /* "-0" would come back as the integer 0 */
        s_puts(c, signbit(v) ? "-0.0" : "0");
        return;
    }
    char tmp[48];
    int prec;
    for (prec = 1; prec < 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, v);
        if (is_float ? strtof(tmp, NULL) == (float)v : strtod(tmp, NULL) == v)
            break;
    }
    snprintf(tmp, sizeof tmp, "%.*e", prec - 1, v);
    /* tmp is "-d.ddde+XX": collect the digits and the exponent */
    char digits[24];
    int nd = 0;
    const char *p = tmp;
    if (*p == '-') {
        s_put(c, "-", 1);
        p++;
    }
    for (; *p && *p != 'e'; p++)
        if (*p != '.')
            digits[nd++] = *p;
    int e = *p == 'e' ? atoi(p + 1) : 0;
    if (e >= 0 && e < 21) {
        if (nd <= e + 1) {
            s_put(c, digits, (size_t)nd);
            for (int i = nd; i <= e; i++)
                s_put(c, "0", 1);
        } else {
            s_put(c, digits, (size_t)e + 1);
            s_put(c, ".", 1);
            s_put(c, digits + e + 1, (size_t)(nd - e - 1));
        }
    } else if (e < 0 && e >= -7) {
        s_put(c, "0.", 2);
        for (int i = -1; i > e; i--)
            s_put(c, "0", 1);
        s_put(c, digits, (size_t)nd);
    } else {
        s_put(c, digits, 1);
        if (nd > 1) {
            s_put(c, ".", 1);
            s_put(c, digits + 1, (size_t)nd - 1);
        }
        s_putf(c, "e%+d", e);
    }
}

static void
s_put_b64(s_ctx_t *c, const uint8_t *p, size_t n)
{
    s_put(c, "\"", 1);
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        char q[4] = {s_b64[v >> 18], s_b64[(v >> 12) & 63], i + 1 < n ? s_b64[(v >> 6) & 63] : '=',
                     i + 2 < n ? s_b64[v & 63] : '='};
        s_put(c, q, 4);
    }
    s_put(c, "\"", 1);
}

static void
s_put_fraction(s_ctx_t *c, int32_t nanos)
{
    if (nanos == 0)
        return;
    if (nanos % 1000000 == 0)
        s_putf(c, ".%03" PRId32, nanos / 1000000);
    else if (nanos % 1000 == 0)
        s_putf(c, ".%06" PRId32, nanos / 1000);
    else
        s_putf(c, ".%09" PRId32, nanos);
}

static int s_print_message(s_ctx_t *c, const ProtobufCMessage *m, int depth);

static int
s_print_value(s_ctx_t *c, const ProtobufCFieldDescriptor *f, const void *p, int depth)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        s_putf(c, "%" PRId32, *(const int32_t *)p);
        return 0;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        s_putf(c, "%" PRIu32, *(const uint32_t *)p);
        return 0;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        s_putf(c, "\"%" PRId64 "\"", *(const int64_t *)p);
        return 0;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        s_putf(c, "\"%" PRIu64 "\"", *(const uint64_t *)p);
        return 0;
    case PROTOBUF_C_TYPE_FLOAT:
        s_put_number(c, *(const float *)p, true);
        return 0;
    case PROTOBUF_C_TYPE_DOUBLE:
        s_put_number(c, *(const double *)p, false);
        return 0;
    case PROTOBUF_C_TYPE_BOOL:
        s_puts(c, *(const protobuf_c_boolean *)p ? "true" : "false");
        return 0;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *ed = f->descriptor;
        int32_t v = *(const int32_t *)p;
        if (s_is_null_enum(f)) {
            s_puts(c, "null");
            return 0;
        }
        for (unsigned i = 0; i < ed->n_values; i++)
            if (ed->values[i].value == v) {
                s_put_jstr(c, ed->values[i].name, strlen(ed->values[i].name));
                return 0;
            }
        s_putf(c, "%" PRId32, v); /* a value this side does not know */
        return 0;
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(const char *const *)p;
        size_t n = s != NULL ? strlen(s) : 0;
        if (!s_utf8_valid((const unsigned char *)s, n))
            return s_fail(c, "string is not valid UTF-8");
        s_put_jstr(c, s != NULL ? s : "", n);
        return 0;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *bd = p;
        s_put_b64(c, bd->data, bd->len);
        return 0;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)p;
        if (sub != NULL)
            return s_print_message(c, sub, depth + 1);
        /* a map value or oneof member without its message: print the default one */
        ProtobufCMessage *tmp = s_msg_new(f->descriptor);
        if (tmp == NULL)
            return s_oom(c);
        int rc = s_print_message(c, tmp, depth + 1);
        protobuf_c_message_free_unpacked(tmp, NULL);
        return rc;
    }
    }
    return s_fail(c, "unsupported field type");
}

static int
s_print_repeated(s_ctx_t *c, const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                 int depth)
{
    size_t n = *(const size_t *)s_quantifier(m, f);
    const char *items = *(const char *const *)s_member(m, f);
    size_t el = s_elem_size(f->type);
    bool first = true;
    s_open(c, '[');
    for (size_t i = 0; i < n && c->rc == 0; i++) {
        size_t old = s_path_push_index(c, i, false);
        s_item(c, &first);
        if (s_print_value(c, f, items + i * el, depth) != 0)
            return c->rc;
        s_path_pop(c, old);
    }
    s_close(c, ']', first);
    return c->rc;
}

typedef struct {
    char *key;
    size_t i;
} s_map_key_t;

static int
s_cmp_map_key(const void *a, const void *b)
{
    const s_map_key_t *x = a, *y = b;
    int r = strcmp(x->key, y->key);
    return r != 0 ? r : (x->i > y->i) - (x->i < y->i);
}

/* The text of a map key as it goes into the JSON object (malloc'd), or NULL. */
static char *
s_map_key_text(s_ctx_t *c, const ProtobufCFieldDescriptor *kf, const void *p)
{
    char tmp[32];
    switch (kf->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(const char *const *)p;
        if (s == NULL)
            s = "";
        if (!s_utf8_valid((const unsigned char *)s, strlen(s))) {
            s_fail(c, "map key is not valid UTF-8");
            return NULL;
        }
        char *r = strdup(s);
        if (r == NULL)
            s_oom(c);
        return r;
    }
    case PROTOBUF_C_TYPE_BOOL:
        snprintf(tmp, sizeof tmp, "%s", *(const protobuf_c_boolean *)p ? "true" : "false");
        break;
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        snprintf(tmp, sizeof tmp, "%" PRId32, *(const int32_t *)p);
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        snprintf(tmp, sizeof tmp, "%" PRIu32, *(const uint32_t *)p);
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        snprintf(tmp, sizeof tmp, "%" PRId64, *(const int64_t *)p);
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        snprintf(tmp, sizeof tmp, "%" PRIu64, *(const uint64_t *)p);
        break;
    default:
        s_fail(c, "map key of type %s", s_type_name(kf->type));
        return NULL;
    }
    char *r = strdup(tmp);
    if (r == NULL)
        s_oom(c);
    return r;
}

/* A map as a JSON object, in wire order; of entries with equal keys the last one counts, as
 * when the bytes are parsed. */
static int
s_print_map(s_ctx_t *c, const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f, int depth)
{
    size_t n = *(const size_t *)s_quantifier(m, f);
    ProtobufCMessage *const *items = *(ProtobufCMessage *const *const *)s_member(m, f);
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    const ProtobufCFieldDescriptor *kf = &ed->fields[0], *vf = &ed->fields[1];
    s_map_key_t *keys = calloc(n + 1, sizeof *keys);
    char *keep = calloc(n + 1, 1);
    if (keys == NULL || keep == NULL) {
        free(keys);
        free(keep);
        return s_oom(c);
    }
    for (size_t i = 0; i < n && c->rc == 0; i++) {
        size_t old = s_path_push_index(c, i, true);
        keys[i].i = i;
        keys[i].key = items[i] != NULL ? s_map_key_text(c, kf, s_member(items[i], kf)) : NULL;
        if (keys[i].key == NULL && c->rc == 0)
            s_fail(c, "map entry missing");
        s_path_pop(c, old);
    }
    if (c->rc == 0) {
        s_map_key_t *sorted = malloc((n + 1) * sizeof *sorted);
        if (sorted == NULL) {
            s_oom(c);
        } else {
            memcpy(sorted, keys, n * sizeof *sorted);
            qsort(sorted, n, sizeof *sorted, s_cmp_map_key);
            for (size_t i = 0; i < n; i++)
                keep[sorted[i].i] = i + 1 == n || strcmp(sorted[i].key, sorted[i + 1].key) != 0;
            free(sorted);
        }
    }
    bool first = true;
    if (c->rc == 0)
        s_open(c, '{');
    for (size_t i = 0; i < n && c->rc == 0; i++) {
        if (!keep[i])
            continue;
        size_t old = s_path_push_index(c, i, true);
        s_item(c, &first);
        s_put_jstr(c, keys[i].key, strlen(keys[i].key));
        s_puts(c, c->pretty ? ": " : ":");
        s_print_value(c, vf, s_member(items[i], vf), depth);
        s_path_pop(c, old);
    }
    if (c->rc == 0)
        s_close(c, '}', first);
    for (size_t i = 0; i < n; i++)
        free(keys[i].key);
    free(keys);
    free(keep);
    return c->rc;
}

static int
s_get_seconds_nanos(s_ctx_t *c, const ProtobufCMessage *m, int64_t *sec, int32_t *nanos)
{
    const ProtobufCFieldDescriptor *fs = s_field_by_id(m->descriptor, 1);
    const ProtobufCFieldDescriptor *fn = s_field_by_id(m->descriptor, 2);
    if (fs == NULL || fn == NULL || s_elem_size(fs->type) != 8 || s_elem_size(fn->type) != 4)
        return s_fail(c, "%s without seconds and nanos", m->descriptor->name);
    *sec = *(const int64_t *)s_member(m, fs);
    *nanos = *(const int32_t *)s_member(m, fn);
    return 0;
}

static int
s_print_wkt(s_ctx_t *c, s_wkt_t wkt, const ProtobufCMessage *m, int depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const ProtobufCFieldDescriptor *f1 = s_field_by_id(d, 1);
    int64_t sec;
    int32_t nanos;
    switch (wkt) {
    case S_WKT_TIMESTAMP: {
        if (s_get_seconds_nanos(c, m, &sec, &nanos) != 0)
            return c->rc;
        if (sec < S_TS_MIN || sec > S_TS_MAX || nanos < 0 || nanos > 999999999)
            return s_fail(c, "time outside 0001-01-01 to 9999-12-31");
        int64_t days = s_floor_div(sec, 86400), rest = sec - days * 86400, y;
        int mo, d_;
        s_civil_from_days(days, &y, &mo, &d_);
        s_putf(c, "\"%04" PRId64 "-%02d-%02dT%02d:%02d:%02d", y, mo, d_, (int)(rest / 3600),
               (int)(rest / 60 % 60), (int)(rest % 60));
        s_put_fraction(c, nanos);
        s_puts(c, "Z\"");
        return c->rc;
    }
    case S_WKT_DURATION: {
        if (s_get_seconds_nanos(c, m, &sec, &nanos) != 0)
            return c->rc;
        if (sec < -S_DUR_MAX || sec > S_DUR_MAX || nanos < -999999999 || nanos > 999999999 ||
            (sec > 0 && nanos < 0) || (sec < 0 && nanos > 0))
            return s_fail(c, "duration outside +-315576000000s or with mixed signs");
        s_putf(c, "\"%s%" PRId64, sec < 0 || nanos < 0 ? "-" : "", sec < 0 ? -sec : sec);
        s_put_fraction(c, nanos < 0 ? -nanos : nanos);
        s_puts(c, "s\"");
        return c->rc;
    }
    case S_WKT_WRAPPER:
        if (f1 == NULL)
            return s_fail(c, "%s without field `value`", d->name);
        return s_print_value(c, f1, s_member(m, f1), depth);
    case S_WKT_STRUCT:
        if (f1 == NULL || !s_is_map(f1))
            return s_fail(c, "%s without field `fields`", d->name);
        return s_print_map(c, m, f1, depth);
    case S_WKT_LIST:
        if (f1 == NULL || f1->label != PROTOBUF_C_LABEL_REPEATED)
            return s_fail(c, "%s without field `values`", d->name);
        return s_print_repeated(c, m, f1, depth);
    case S_WKT_VALUE: {
        for (unsigned i = 0; i < d->n_fields; i++) {
            const ProtobufCFieldDescriptor *f = &d->fields[i];
            if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) || !s_present(m, f))
                continue;
            if (f->type == PROTOBUF_C_TYPE_DOUBLE && !isfinite(*(const double *)s_member(m, f)))
                return s_fail(c, "NaN and Infinity cannot be a google.protobuf.Value");
            return s_print_value(c, f, s_member(m, f), depth);
        }
        s_puts(c, "null"); /* no kind set */
        return c->rc;
    }
    case S_WKT_FIELDMASK: {
        if (f1 == NULL || f1->label != PROTOBUF_C_LABEL_REPEATED ||
            f1->type != PROTOBUF_C_TYPE_STRING)
            return s_fail(c, "%s without field `paths`", d->name);
        size_t n = *(const size_t *)s_quantifier(m, f1);
        char *const *paths = *(char *const *const *)s_member(m, f1);
        s_put(c, "\"", 1);
        for (size_t i = 0; i < n; i++) {
            const char *p = paths[i] != NULL ? paths[i] : "";
            for (const char *q = p; *q; q++)
                if ((*q >= 'A' && *q <= 'Z') || (*q == '_' && !(q[1] >= 'a' && q[1] <= 'z')) ||
                    *q == ',' || *q == '"' || *q == '\\' || (unsigned char)*q < 0x20 ||
                    (unsigned char)*q >= 0x80)
                    return s_fail(c, "field mask path cannot be written in lowerCamelCase");
            if (i > 0)
                s_put(c, ",", 1);
            bool up = false;
            for (const char *q = p; *q; q++) {
                if (*q == '_') {
                    up = true;
                    continue;
                }
                char ch = up ? (char)(*q - 'a' + 'A') : *q;
                up = false;
                s_put(c, &ch, 1);
            }
        }
        s_put(c, "\"", 1);
        return c->rc;
    }
    default:
        break;
    }
    return s_fail(c, "%s is not supported", d->name);
}

static int
s_print_message(s_ctx_t *c, const ProtobufCMessage *m, int depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (depth > S_MAX_DEPTH)
        return s_fail(c, "messages nested deeper than %d levels", S_MAX_DEPTH);
    s_wkt_t wkt = s_wkt(d);
    if (wkt == S_WKT_ANY)
        return s_fail(c, "google.protobuf.Any is not supported");
    if (wkt != S_WKT_NONE)
        return s_print_wkt(c, wkt, m, depth);
    bool first = true;
    s_open(c, '{');
    for (unsigned i = 0; i < d->n_fields && c->rc == 0; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->label == PROTOBUF_C_LABEL_REPEATED ? *(const size_t *)s_quantifier(m, f) == 0
                                                  : !s_present(m, f))
            continue;
        size_t old = s_path_push_field(c, f);
        s_put_field_key(c, f, &first);
        if (s_is_map(f))
            s_print_map(c, m, f, depth);
        else if (f->label == PROTOBUF_C_LABEL_REPEATED)
            s_print_repeated(c, m, f, depth);
        else
            s_print_value(c, f, s_member(m, f), depth);
        if (c->rc != 0)
            return c->rc;
        s_path_pop(c, old);
    }
    s_close(c, '}', first);
    return c->rc;
}

int
ab_pb_to_json(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len, int flags,
              char **out, char *err, size_t errlen)
{
    s_ctx_t c = {.root = d != NULL && d->name != NULL ? d->name : "?",
                 .err = err,
                 .errlen = errlen,
                 .pretty = (flags & AB_JSON_PRETTY) != 0};
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    *out = NULL;
    if (d == NULL || d->magic != PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC)
        return s_fail(&c, "no message descriptor");
    if (s_wkt(d) == S_WKT_ANY)
        return s_fail(&c, "google.protobuf.Any is not supported");
    static const uint8_t empty[1];
    if (data == NULL)
        data = empty;
    /* first the walk that says where bytes are wrong and bounds the nesting, which
     * protobuf_c_message_unpack() follows without limit */
    ab_schema_error_t serr;
    if (ab_schema_validate(d, data, len, &serr) != 0) {
        if (strcmp(serr.path, d->name) == 0)
            return s_fail(&c, "%s", serr.text);
        return s_fail_plain(&c, "field `%s`: %s", serr.path, serr.text);
    }
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, data);
    if (m == NULL)
        return s_fail(&c, "the bytes do not decode as %s", d->name);
    s_print_message(&c, m, 1);
    protobuf_c_message_free_unpacked(m, NULL);
    if (c.rc == 0 && c.buf == NULL)
        s_oom(&c);
    if (c.rc != 0) {
        free(c.buf);
        return c.rc;
    }
    *out = c.buf;
    return 0;
}
