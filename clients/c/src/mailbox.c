/*
 * mailbox.c - the ring of acknowledged deliveries, and topic syntax and matching (mailbox.h).
 *
 * The ring is an array written round-robin plus a chained hash over it: each entry links to the
 * next entry of its bucket, so a look-up walks one short chain, and overwriting the oldest entry
 * unlinks it from its chain first. 65,536 entries cost about 2 MiB, allocated once.
 */
#include "mailbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/types.h>

#define S_NONE UINT32_MAX

typedef struct {
    uint64_t tag; /* keyed hash of the name */
    uint8_t id[AB_MESSAGE_ID_LEN];
    uint32_t next; /* next entry in the same bucket, or S_NONE */
} s_entry_t;

struct ab_dedup {
    uint64_t k0, k1; /* SipHash key */
    s_entry_t *entries;
    uint32_t *buckets;
    size_t cap, nbuckets, head, count;
};

/* ---- SipHash-2-4 (Aumasson, Bernstein), for names chosen by other participants ----------- */

#define S_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define S_SIPROUND                                                                                 \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = S_ROTL(v1, 13);                                                                       \
        v1 ^= v0;                                                                                  \
        v0 = S_ROTL(v0, 32);                                                                       \
        v2 += v3;                                                                                  \
        v3 = S_ROTL(v3, 16);                                                                       \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = S_ROTL(v3, 21);                                                                       \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = S_ROTL(v1, 17);                                                                       \
        v1 ^= v2;                                                                                  \
        v2 = S_ROTL(v2, 32);                                                                       \
    } while (0)

static uint64_t
s_load64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t
s_siphash(uint64_t k0, uint64_t k1, const uint8_t *in, size_t len)
{
    uint64_t v0 = k0 ^ UINT64_C(0x736f6d6570736575), v1 = k1 ^ UINT64_C(0x646f72616e646f6d);
    uint64_t v2 = k0 ^ UINT64_C(0x6c7967656e657261), v3 = k1 ^ UINT64_C(0x7465646279746573);
    const uint8_t *end = in + (len - len % 8);
    for (; in != end; in += 8) {
        uint64_t m = s_load64(in);
        v3 ^= m;
        S_SIPROUND;
        S_SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t i = 0; i < len % 8; i++)
        b |= (uint64_t)in[i] << (8 * i);
    v3 ^= b;
    S_SIPROUND;
    S_SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    S_SIPROUND;
    S_SIPROUND;
    S_SIPROUND;
    S_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- the ring ----------------------------------------------------------------------------- */

ab_dedup_t *
ab_dedup_new(size_t capacity)
{
    if (capacity == 0 || capacity >= S_NONE)
        return NULL;
    ab_dedup_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    size_t nb = 1;
    while (nb < capacity)
        nb <<= 1;
    self->cap = capacity;
    self->nbuckets = nb;
    self->entries = malloc(capacity * sizeof *self->entries);
    self->buckets = malloc(nb * sizeof *self->buckets);
    uint8_t key[16];
    size_t got = 0;
    while (got < sizeof key) {
        ssize_t r = getrandom(key + got, sizeof key - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    if (!self->entries || !self->buckets || got < sizeof key) {
        ab_dedup_destroy(&self);
        return NULL;
    }
    self->k0 = s_load64(key);
    self->k1 = s_load64(key + 8);
    memset(self->buckets, 0xff, nb * sizeof *self->buckets);
    return self;
}

void
ab_dedup_destroy(ab_dedup_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ab_dedup_t *self = *self_p;
    *self_p = NULL;
    free(self->entries);
    free(self->buckets);
    free(self);
}

static uint64_t
s_tag(const ab_dedup_t *self, const char *name)
{
    return s_siphash(self->k0, self->k1, (const uint8_t *)(name ? name : ""),
                     name ? strlen(name) : 0);
}

static size_t
s_bucket(const ab_dedup_t *self, uint64_t tag, const uint8_t id[AB_MESSAGE_ID_LEN])
{
    uint64_t h = tag ^ s_load64(id) ^ (s_load64(id + 8) * UINT64_C(0x9E3779B97F4A7C15));
    h *= UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(h >> 32) & (self->nbuckets - 1);
}

static int
s_find(const ab_dedup_t *self, uint64_t tag, const uint8_t id[AB_MESSAGE_ID_LEN], size_t b)
{
    for (uint32_t i = self->buckets[b]; i != S_NONE; i = self->entries[i].next)
        if (self->entries[i].tag == tag && memcmp(self->entries[i].id, id, AB_MESSAGE_ID_LEN) == 0)
            return 1;
    return 0;
}

int
ab_dedup_seen(const ab_dedup_t *self, const char *name, const uint8_t id[AB_MESSAGE_ID_LEN])
{
    if (!self || !id)
        return 0;
    uint64_t tag = s_tag(self, name);
    return s_find(self, tag, id, s_bucket(self, tag, id));
}

void
ab_dedup_add(ab_dedup_t *self, const char *name, const uint8_t id[AB_MESSAGE_ID_LEN])
{
    if (!self || !id)
        return;
    uint64_t tag = s_tag(self, name);
    size_t b = s_bucket(self, tag, id);
    if (s_find(self, tag, id, b))
        return;
    size_t slot = self->head;
    if (self->count == self->cap) {
        /* the oldest entry leaves its chain first */
        s_entry_t *old = &self->entries[slot];
        uint32_t *link = &self->buckets[s_bucket(self, old->tag, old->id)];
        while (*link != S_NONE && *link != (uint32_t)slot)
            link = &self->entries[*link].next;
        if (*link == (uint32_t)slot)
            *link = old->next;
    } else {
        self->count++;
    }
    s_entry_t *e = &self->entries[slot];
    e->tag = tag;
    memcpy(e->id, id, AB_MESSAGE_ID_LEN);
    e->next = self->buckets[b];
    self->buckets[b] = (uint32_t)slot;
    self->head = (slot + 1) % self->cap;
}

size_t
ab_dedup_count(const ab_dedup_t *self)
{
    return self ? self->count : 0;
}

void
ab_dedup_seq_id(uint64_t sequence, uint8_t id[AB_MESSAGE_ID_LEN])
{
    memset(id, 0, 8);
    for (int i = 0; i < 8; i++)
        id[8 + i] = (uint8_t)(sequence >> (56 - 8 * i));
}

/* ---- topics ------------------------------------------------------------------------------- */

static int
s_segment_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

int
ab_topic_check(const char *topic, int pattern, char why[AB_WHY_LEN])
{
    const char *what = pattern ? "topic pattern" : "topic";
    if (!topic || !*topic) {
        snprintf(why, AB_WHY_LEN, "the %s is empty", what);
        return AB_EINVAL;
    }
    if (strlen(topic) > AB_MAX_NAME) {
        snprintf(why, AB_WHY_LEN, "the %s is longer than %d bytes", what, AB_MAX_NAME);
        return AB_EINVAL;
    }
    int n = 0;
    for (const char *s = topic;; n++) {
        const char *dot = strchr(s, '.');
        size_t len = dot ? (size_t)(dot - s) : strlen(s);
        if (n == AB_TOPIC_MAX_SEGMENTS) {
            snprintf(why, AB_WHY_LEN, "%s '%.255s' has more than %d segments", what, topic,
                     AB_TOPIC_MAX_SEGMENTS);
            return AB_EINVAL;
        }
        if (len == 0) {
            snprintf(why, AB_WHY_LEN, "%s '%.255s' has an empty segment (segment %d)", what, topic,
                     n + 1);
            return AB_EINVAL;
        }
        if (pattern && len == 1 && (*s == '*' || *s == '>')) {
            if (*s == '>' && dot) {
                snprintf(why, AB_WHY_LEN,
                         "%s '%.255s': '>' (the rest of the topic) must be the last segment", what,
                         topic);
                return AB_EINVAL;
            }
        } else {
            if (len > AB_TOPIC_MAX_SEGMENT) {
                snprintf(why, AB_WHY_LEN, "%s '%.255s': segment %d is longer than %d characters",
                         what, topic, n + 1, AB_TOPIC_MAX_SEGMENT);
                return AB_EINVAL;
            }
            for (size_t i = 0; i < len; i++) {
                if (!s_segment_char(s[i])) {
                    snprintf(why, AB_WHY_LEN,
                             "%s '%.255s': segment %d has '%c'; segments are A-Z a-z 0-9 _ -%s",
                             what, topic, n + 1, (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?',
                             pattern ? ", or a whole segment '*' (one) or a last '>' (the rest)"
                                     : " (wildcards are for patterns)");
                    return AB_EINVAL;
                }
            }
        }
        if (!dot)
            break;
        s = dot + 1;
    }
    return 0;
}

int
ab_topic_match(const char *pattern, const char *topic)
{
    const char *p = pattern, *t = topic;
    for (;;) {
        size_t pl = strcspn(p, "."), tl = strcspn(t, ".");
        if (pl == 1 && *p == '>')
            return tl > 0;
        if (!(pl == 1 && *p == '*') && (pl != tl || memcmp(p, t, pl) != 0))
            return 0;
        p += pl;
        t += tl;
        if (!*p || !*t)
            return !*p && !*t;
        p++;
        t++;
    }
}

int
ab_subscription_check(const char *name, char why[AB_WHY_LEN])
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len > AB_TOPIC_MAX_SEGMENT) {
        snprintf(why, AB_WHY_LEN, "a durable subscription's name has 1 to %d characters, not %zu",
                 AB_TOPIC_MAX_SEGMENT, len);
        return AB_EINVAL;
    }
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
              c == '.')) {
            snprintf(why, AB_WHY_LEN,
                     "durable subscription '%.64s' has '%c' at position %zu; names are a-z 0-9 "
                     "_ - .",
                     name, (c >= 0x20 && c < 0x7f) ? c : '?', i + 1);
            return AB_EINVAL;
        }
    }
    return 0;
}
