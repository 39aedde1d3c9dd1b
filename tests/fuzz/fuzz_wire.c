/*
 * The header frame as the broker reads it from any connection: ab_wire_decode() on arbitrary
 * bytes, then the checks the broker applies to a decoded header (service names, participant
 * addresses, UTF-8). Promises (abort on violation):
 *
 *   - a refused frame gets AB_EMALFORMED or AB_ETOO_LARGE and a reason that is valid UTF-8 and
 *     names the header frame or the field at fault;
 *   - the hand-written codec agrees with protobuf-c: what it reads protobuf-c reads too, and
 *     both pack the header they read to the same bytes (unknown fields dropped); what
 *     protobuf-c reads and packs, the codec reads and packs to the same bytes (the input
 *     itself the codec may refuse for a NUL in a string, a tag over 32 bits or a varint over
 *     64, all of which protobuf-c cuts short; where `error` occurs twice protobuf-c resets its
 *     code, the codec keeps it as protobuf specifies);
 *   - a decoded header re-encodes with ab_wire_encode() (unless its canonical encoding is over
 *     the limit), decodes again, and encodes to the same bytes (round trip);
 *   - ab_wire_check_service() and ab_wire_check_participant() accept only names of their
 *     syntax and otherwise give a valid UTF-8 reason naming the service or participant;
 *   - ab_utf8_sanitize() always gives valid UTF-8 without control characters.
 */
#include <protobuf-c/protobuf-c.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amtsbote.h"
#include "codec.h"
#include "fuzz_check.h"
#include "wire.h"

#define CHECK AB_FUZZ_CHECK

/* A frame this much larger than the limit is refused by its size alone. */
#define S_MAX_INPUT (AB_MAX_HEADER_BYTES + 64)
/* Re-encoding can grow a frame (e.g. a 5-byte negative enum is written in 10 bytes). */
#define S_OUT_BYTES (4 * AB_MAX_HEADER_BYTES)

static ab_wire_decoder_t *s_dec, *s_dec2;

/* The codec's own arena for the differential check; as large as the decoder's. */
static struct {
    size_t used;
    _Alignas(16) uint8_t bytes[AB_MAX_HEADER_BYTES * 64];
} s_arena;

static void *
s_alloc(void *arena, size_t size)
{
    (void)arena;
    size_t aligned = (size + 15u) & ~(size_t)15u;
    if (aligned > sizeof s_arena.bytes - s_arena.used)
        return NULL;
    void *p = s_arena.bytes + s_arena.used;
    s_arena.used += aligned;
    return p;
}

static void
s_check_why(const char *why, const char *names)
{
    size_t n = strlen(why);
    CHECK(n > 0 && n < AB_WHY_LEN, "a refusal without a reason");
    CHECK(ab_utf8_valid(why, n), "reason is not valid UTF-8: %s", why);
    CHECK(strstr(why, names) != NULL, "reason does not name the %s: %s", names, why);
}

/* Drops what protobuf-c kept of unknown fields, so that it packs what the codec read. */
static void
s_forget_unknown(ProtobufCMessage *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_unknown_fields; i++)
        free(m->unknown_fields[i].data);
    free(m->unknown_fields);
    m->unknown_fields = NULL;
    m->n_unknown_fields = 0;
}

/* How often top-level field `field` occurs in bytes the codec read (so well-formed). */
static int
s_occurrences(const uint8_t *d, size_t n, unsigned field)
{
    int count = 0;
    for (size_t i = 0; i < n;) {
        uint64_t key = 0, v = 0;
        for (int shift = 0; i < n; shift += 7) {
            key |= (uint64_t)(d[i] & 0x7f) << shift;
            if (!(d[i++] & 0x80))
                break;
        }
        if ((key >> 3) == field)
            count++;
        switch (key & 7) {
        case 0:
            while (i < n && (d[i++] & 0x80))
                ;
            break;
        case 1:
            i += 8;
            break;
        case 5:
            i += 4;
            break;
        default:
            for (int shift = 0; i < n; shift += 7) {
                v |= (uint64_t)(d[i] & 0x7f) << shift;
                if (!(d[i++] & 0x80))
                    break;
            }
            i += (size_t)v;
        }
    }
    return count;
}

static int
s_participant_syntax(const char *a)
{
    size_t len = strlen(a), seg = 0, segments = 0;
    if (len == 0 || len > AB_MAX_NAME)
        return 0;
    for (size_t i = 0; i <= len; i++) {
        char c = a[i];
        if (c == '.' || c == '\0') {
            if (seg == 0)
                return 0;
            segments++;
            seg = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   (seg > 0 && (c == '-' || c == '_'))) {
            seg++;
        } else {
            return 0;
        }
    }
    return segments >= 2 && segments <= 8;
}

static void
s_check_names(const char *s)
{
    char why[AB_WHY_LEN];
    for (int whole = 0; whole <= 1; whole++) {
        why[0] = '\0';
        if (ab_wire_check_service(s, whole, why) == 0) {
            CHECK(strlen(s) <= AB_MAX_NAME, "a service name of %zu bytes accepted", strlen(s));
            const char *slash = strchr(s, '/');
            CHECK(whole || slash, "service '%s' without a method accepted", s);
            for (const char *p = s; *p; p++)
                CHECK((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                          (*p >= '0' && *p <= '9') || *p == '_' || *p == '.' || *p == '/',
                      "service '%s' accepted with byte 0x%02x", s, (unsigned char)*p);
        } else {
            s_check_why(why, "service");
        }
    }
    why[0] = '\0';
    int ok = ab_wire_check_participant(s, why) == 0;
    CHECK(ok == s_participant_syntax(s), "participant '%s' %s", s,
          ok ? "accepted against the syntax" : "refused though of the syntax");
    if (!ok)
        s_check_why(why, "participant");
    char clean[AB_MAX_NAME + 1];
    ab_utf8_sanitize(clean, sizeof clean, s);
    CHECK(ab_utf8_valid(clean, strlen(clean)), "sanitized text is not valid UTF-8");
    for (const char *p = clean; *p; p++)
        CHECK((unsigned char)*p >= 0x20 && *p != 0x7f, "sanitized text has control characters");
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    s_dec = ab_wire_decoder_new();
    s_dec2 = ab_wire_decoder_new();
    if (!s_dec || !s_dec2)
        abort();
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > S_MAX_INPUT)
        return -1; /* not added to the corpus: refused by its size like any larger one */
    ab_header_t *h = NULL;
    char why[AB_WHY_LEN];
    int rc = ab_wire_decode(s_dec, data, size, &h, why);
    if (rc != 0) {
        CHECK(rc == AB_EMALFORMED || rc == AB_ETOO_LARGE, "decode returned %d", rc);
        CHECK(h == NULL, "a refused frame gave a header");
        s_check_why(why, "header");
    } else {
        CHECK(h != NULL, "an accepted frame gave no header");
    }

    /* the codec against protobuf-c on the same bytes */
    s_arena.used = 0;
    ab_header_t *c = NULL;
    int crc = size > 0 && size <= AB_MAX_HEADER_BYTES
                  ? ab_codec_unpack(data, size, s_alloc, NULL, &c)
                  : -1;
    Amtsbote__V1__Header *p = size > 0 && size <= AB_MAX_HEADER_BYTES
                                  ? amtsbote__v1__header__unpack(NULL, size, data)
                                  : NULL;
    if (crc == 0)
        CHECK(p != NULL, "the codec read a header that protobuf-c refuses");
    if (p) {
        s_forget_unknown(&p->base);
        s_forget_unknown((ProtobufCMessage *)p->trace);
        s_forget_unknown((ProtobufCMessage *)p->error);
        for (size_t i = 0; i < p->n_headers; i++)
            s_forget_unknown((ProtobufCMessage *)p->headers[i]);
        /* protobuf-c 1.4 merges a second occurrence of `error` by taking its code even when
         * that is absent (0); the codec keeps the earlier code, as protobuf specifies */
        if (crc == 0 && p->error && c->error && s_occurrences(data, size, 14) > 1)
            p->error->code = c->error->code;
        static uint8_t a[S_OUT_BYTES], b[S_OUT_BYTES];
        size_t na = amtsbote__v1__header__get_packed_size(p);
        CHECK(na <= sizeof a, "protobuf-c packs %zu bytes", na);
        amtsbote__v1__header__pack(p, a);
        if (crc == 0) {
            int nb = ab_codec_pack(c, b, sizeof b);
            CHECK(nb >= 0 && (size_t)nb == na && memcmp(a, b, na) == 0,
                  "codec packs %d bytes, protobuf-c %zu bytes, or different ones", nb, na);
        }
        /* What protobuf-c read, as it writes it (strings end at a NUL then; tags and varints
         * have their canonical length): the codec reads that and writes the same bytes. The
         * codec may refuse the input itself for a NUL in a string, a tag over 32 bits or a
         * varint over 64, which protobuf-c cuts. */
        if (na > 0 && na <= AB_MAX_HEADER_BYTES) {
            s_arena.used = 0;
            ab_header_t *c2 = NULL;
            CHECK(ab_codec_unpack(a, na, s_alloc, NULL, &c2) == 0,
                  "the codec refuses %zu bytes that protobuf-c wrote", na);
            int nb = ab_codec_pack(c2, b, sizeof b);
            CHECK(nb >= 0 && (size_t)nb == na && memcmp(a, b, na) == 0,
                  "protobuf-c's %zu bytes read and written by the codec give %d others", na, nb);
        }
    }
    amtsbote__v1__header__free_unpacked(p, NULL);
    if (rc == 0)
        CHECK(crc == 0, "ab_wire_decode accepted what the codec refuses");

    if (rc != 0) {
        /* the name checks on the frame's bytes as a string */
        char s[AB_MAX_NAME + 40];
        size_t n = size < sizeof s - 1 ? size : sizeof s - 1;
        memcpy(s, data, n);
        s[n] = '\0';
        s_check_names(s);
        return 0;
    }

    /* round trip */
    static uint8_t out[S_OUT_BYTES], out2[S_OUT_BYTES];
    int n = ab_wire_encode(h, out, sizeof out);
    if (n == AB_ETOO_LARGE) {
        /* a frame near the limit can grow: a negative enum sent in 5 bytes is written in 10 */
        size_t canonical = amtsbote__v1__header__get_packed_size(h);
        CHECK(canonical > AB_MAX_HEADER_BYTES,
              "a decoded header of %zu bytes (%zu canonical) does not encode", size, canonical);
        return 0;
    }
    CHECK(n > 0, "a decoded header of %zu bytes does not encode (%d)", size, n);
    ab_header_t *h2 = NULL;
    rc = ab_wire_decode(s_dec2, out, (size_t)n, &h2, why);
    CHECK(rc == 0, "a re-encoded header of %d bytes does not decode: %s", n, why);
    int n2 = ab_wire_encode(h2, out2, sizeof out2);
    CHECK(n2 == n && memcmp(out, out2, (size_t)n) == 0, "encode(decode(encode(h))) differs");
    CHECK(h2->kind == h->kind && h2->version == h->version && h2->n_headers == h->n_headers &&
              !strcmp(h2->service, h->service) && !strcmp(h2->recipient, h->recipient) &&
              !strcmp(h2->sender, h->sender) && h2->sequence == h->sequence &&
              h2->message_id.len == h->message_id.len && !h2->error == !h->error,
          "the header decoded again differs");

    /* what the broker checks of a decoded header */
    const char *strings[] = {h->service, h->recipient, h->topic,       h->schema,
                             h->purpose, h->sender,    h->subscription};
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) {
        CHECK(ab_utf8_valid(strings[i], strlen(strings[i])), "field %zu not UTF-8", i);
        s_check_names(strings[i]);
    }
    if (h->error)
        CHECK(ab_utf8_valid(h->error->text, strlen(h->error->text)), "error.text not UTF-8");
    (void)ab_kind_name(h->kind);
    (void)ab_err_from_wire(h->error ? (int)h->error->code : 0);
    return 0;
}
