/*
 * trie.c - topic patterns in a tree of segments; literal children in an open hash table per
 * node (linear probing, backward-shift deletion), `*` and `>` in slots of their own.
 *
 * Invariant: every node but the root has a value or a child. add() undoes what it created
 * when memory runs out and remove() prunes, both with s_prune(), which relies on it.
 */
#include "trie.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amtsbote.h"

enum { S_ROOT, S_LITERAL, S_STAR, S_GT };

typedef struct s_node s_node_t;
struct s_node {
    s_node_t *parent;
    s_node_t **kids; /* literal children: kids_cap slots (a power of two), or NULL */
    s_node_t *star;  /* the `*` child */
    s_node_t *gt;    /* the `>` child; it never has children */
    void **vals;
    uint32_t kids_n, kids_cap;
    uint32_t vals_n, vals_cap;
    uint32_t hash; /* of seg, for a literal */
    uint8_t kind;
    uint8_t len;
    char seg[]; /* the literal segment, not NUL-terminated */
};

struct brk_trie {
    s_node_t *root;
    size_t count;
};

/* One segment of a parsed name: where it is in the caller's string. */
typedef struct {
    const char *p;
    uint32_t hash;
    uint8_t len;
} s_seg_t;

/* FNV-1a; returns the hash (cannot fail). */
static uint32_t
s_hash(const char *p, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)p[i];
        h *= 16777619u;
    }
    return h;
}

/* Whether `c` may appear in a literal segment (cannot fail). */
static int
s_segment_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

/* Writes `len` bytes of `p` to `out` (cap bytes) in quotes, escaping what is not printable
 * ASCII and cutting after 24 bytes; returns `out` (truncated to cap, never fails). */
static const char *
s_quote(char *out, size_t cap, const char *p, size_t len)
{
    size_t o = 0;
    size_t shown = len > 24 ? 24 : len;
    o += (size_t)snprintf(out, cap, "\"");
    for (size_t i = 0; i < shown && o < cap; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            o += (size_t)snprintf(out + o, cap - o, "%c", c);
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
    }
    if (o < cap)
        snprintf(out + o, cap - o, "%s\"", shown < len ? "..." : "");
    return out;
}

/* snprintf into `why` when the caller wants a reason; returns AB_EINVAL. */
static int s_fail(char *why, size_t why_cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
s_fail(char *why, size_t why_cap, const char *fmt, ...)
{
    if (why != NULL && why_cap > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_cap, fmt, ap);
        va_end(ap);
    }
    return AB_EINVAL;
}

/*
 * Checks `name` as a topic or (wild) pattern and splits it into segs[BRK_TRIE_SEGMENTS_MAX],
 * *n_p of them. Returns 0, or AB_EINVAL with the reason in `why`.
 */
static int
s_parse(const char *name, int wild, s_seg_t *segs, size_t *n_p, char *why, size_t why_cap)
{
    const char *what = wild ? "pattern" : "topic";
    char q[128];
    *n_p = 0;
    if (name == NULL)
        return s_fail(why, why_cap, "the %s is missing", what);
    size_t len = strlen(name);
    if (len == 0)
        return s_fail(why, why_cap, "the %s is empty", what);
    if (len > BRK_TRIE_NAME_MAX)
        return s_fail(why, why_cap, "the %s is %zu bytes long, at most %d are allowed", what, len,
                      BRK_TRIE_NAME_MAX);
    size_t n = 0;
    for (size_t start = 0; start <= len;) {
        const char *dot = memchr(name + start, '.', len - start);
        size_t end = dot ? (size_t)(dot - name) : len;
        const char *p = name + start;
        size_t seg_len = end - start;
        size_t k = n + 1; /* the segment's number, as a person counts */
        if (n == BRK_TRIE_SEGMENTS_MAX)
            return s_fail(why, why_cap, "segment %zu is one too many: a %s has at most %d segments",
                          k, what, BRK_TRIE_SEGMENTS_MAX);
        if (seg_len == 0) {
            const char *where = start == 0   ? "starts with a dot"
                                : end == len ? "ends with a dot"
                                             : "two dots in a row";
            return s_fail(why, why_cap, "segment %zu is empty (%s%s)", k,
                          end == len || start == 0 ? (wild ? "the pattern " : "the topic ") : "",
                          where);
        }
        if (seg_len > BRK_TRIE_SEGMENT_MAX)
            return s_fail(why, why_cap,
                          "segment %zu (%s) is %zu bytes long, at most %d are allowed", k,
                          s_quote(q, sizeof q, p, seg_len), seg_len, BRK_TRIE_SEGMENT_MAX);
        if (seg_len == 1 && (p[0] == '*' || p[0] == '>')) {
            if (!wild)
                return s_fail(why, why_cap,
                              "segment %zu is the wildcard '%c', which a topic cannot have "
                              "(only a subscription pattern can)",
                              k, p[0]);
            if (p[0] == '>' && end != len)
                return s_fail(why, why_cap,
                              "segment %zu is the wildcard '>', which may only be the last "
                              "segment of a pattern",
                              k);
        } else {
            for (size_t i = 0; i < seg_len; i++) {
                unsigned char c = (unsigned char)p[i];
                if (s_segment_char(c))
                    continue;
                if (wild && (c == '*' || c == '>'))
                    return s_fail(why, why_cap,
                                  "segment %zu (%s) mixes the wildcard '%c' with other "
                                  "characters; a wildcard must be a whole segment",
                                  k, s_quote(q, sizeof q, p, seg_len), c);
                char shown[24];
                if (c >= 0x20 && c < 0x7f)
                    snprintf(shown, sizeof shown, "the character '%c'", c);
                else
                    snprintf(shown, sizeof shown, "the byte 0x%02x", c);
                return s_fail(why, why_cap,
                              "segment %zu (%s) has %s at position %zu; only "
                              "A-Z, a-z, 0-9, '_' and '-' are allowed",
                              k, s_quote(q, sizeof q, p, seg_len), shown, i + 1);
            }
        }
        segs[n].p = p;
        segs[n].len = (uint8_t)seg_len;
        segs[n].hash = s_hash(p, seg_len);
        n++;
        start = end + 1;
    }
    *n_p = n;
    return 0;
}

int
brk_trie_check(const char *name, int wild, char *why, size_t why_cap)
{
    s_seg_t segs[BRK_TRIE_SEGMENTS_MAX];
    size_t n;
    int rc = s_parse(name, wild, segs, &n, why, why_cap);
    if (rc == 0 && why != NULL && why_cap > 0)
        why[0] = '\0';
    return rc;
}

/* ---- literal children: open addressing ---- */

/* The literal child of `node` for `seg`; NULL when there is none. */
static s_node_t *
s_kid_find(const s_node_t *node, const s_seg_t *seg)
{
    if (node->kids_n == 0)
        return NULL;
    uint32_t mask = node->kids_cap - 1;
    for (uint32_t i = seg->hash & mask;; i = (i + 1) & mask) {
        s_node_t *kid = node->kids[i];
        if (kid == NULL)
            return NULL;
        if (kid->hash == seg->hash && kid->len == seg->len &&
            memcmp(kid->seg, seg->p, seg->len) == 0)
            return kid;
    }
}

/* Places `kid` in a table with a free slot (cannot fail). */
static void
s_kid_place(s_node_t **kids, uint32_t cap, s_node_t *kid)
{
    uint32_t mask = cap - 1;
    uint32_t i = kid->hash & mask;
    while (kids[i] != NULL)
        i = (i + 1) & mask;
    kids[i] = kid;
}

/* Moves the literal children to a table of `cap` slots; returns 0 or AB_ENOMEM (unchanged). */
static int
s_kids_resize(s_node_t *node, uint32_t cap)
{
    s_node_t **kids = calloc(cap, sizeof *kids);
    if (kids == NULL)
        return AB_ENOMEM;
    for (uint32_t i = 0; i < node->kids_cap; i++)
        if (node->kids[i] != NULL)
            s_kid_place(kids, cap, node->kids[i]);
    free(node->kids);
    node->kids = kids;
    node->kids_cap = cap;
    return 0;
}

/* Adds a literal child, growing the table past 3/4 full; returns 0 or AB_ENOMEM (unchanged). */
static int
s_kid_insert(s_node_t *node, s_node_t *kid)
{
    if ((uint64_t)(node->kids_n + 1) * 4 > (uint64_t)node->kids_cap * 3) {
        if (node->kids_cap > UINT32_MAX / 2)
            return AB_ENOMEM;
        int rc = s_kids_resize(node, node->kids_cap ? node->kids_cap * 2 : 4);
        if (rc != 0)
            return rc;
    }
    s_kid_place(node->kids, node->kids_cap, kid);
    node->kids_n++;
    return 0;
}

/* Takes a literal child out of the table (backward-shift deletion, so lookups need no
 * tombstones) and shrinks a mostly empty table; cannot fail (a failed shrink keeps it). */
static void
s_kid_delete(s_node_t *node, s_node_t *kid)
{
    uint32_t mask = node->kids_cap - 1;
    uint32_t i = kid->hash & mask;
    while (node->kids[i] != kid)
        i = (i + 1) & mask;
    node->kids[i] = NULL;
    for (uint32_t j = (i + 1) & mask; node->kids[j] != NULL; j = (j + 1) & mask) {
        uint32_t home = node->kids[j]->hash & mask;
        /* the entry at j may move to the hole at i unless its home lies in (i, j] */
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            node->kids[i] = node->kids[j];
            node->kids[j] = NULL;
            i = j;
        }
    }
    node->kids_n--;
    if (node->kids_n == 0) {
        free(node->kids);
        node->kids = NULL;
        node->kids_cap = 0;
    } else if (node->kids_cap > 16 && node->kids_n * 8 < node->kids_cap) {
        (void)s_kids_resize(node, node->kids_cap / 2);
    }
}

/* ---- nodes ---- */

/* A new node for `seg` (or a wildcard), not yet linked to `parent`; NULL when out of memory. */
static s_node_t *
s_node_new(s_node_t *parent, const s_seg_t *seg)
{
    s_node_t *node = calloc(1, sizeof *node + seg->len);
    if (node == NULL)
        return NULL;
    node->parent = parent;
    if (seg->len == 1 && seg->p[0] == '*') {
        node->kind = S_STAR;
    } else if (seg->len == 1 && seg->p[0] == '>') {
        node->kind = S_GT;
    } else {
        node->kind = S_LITERAL;
        node->hash = seg->hash;
        node->len = seg->len;
        memcpy(node->seg, seg->p, seg->len);
    }
    return node;
}

/* The child of `node` for the pattern segment `seg`; NULL when there is none. */
static s_node_t *
s_child(const s_node_t *node, const s_seg_t *seg)
{
    if (seg->len == 1 && seg->p[0] == '*')
        return node->star;
    if (seg->len == 1 && seg->p[0] == '>')
        return node->gt;
    return s_kid_find(node, seg);
}

/* Frees a node and everything below it, not the values (cannot fail; depth <= 17). */
static void
s_node_free(s_node_t *node)
{
    if (node == NULL)
        return;
    for (uint32_t i = 0; i < node->kids_cap; i++)
        s_node_free(node->kids[i]);
    s_node_free(node->star);
    s_node_free(node->gt);
    free(node->kids);
    free(node->vals);
    free(node);
}

/* Frees `node` and then its ancestors for as long as they hold nothing (cannot fail). */
static void
s_prune(brk_trie_t *self, s_node_t *node)
{
    while (node != self->root && node->vals_n == 0 && node->kids_n == 0 && node->star == NULL &&
           node->gt == NULL) {
        s_node_t *parent = node->parent;
        if (node->kind == S_STAR)
            parent->star = NULL;
        else if (node->kind == S_GT)
            parent->gt = NULL;
        else
            s_kid_delete(parent, node);
        s_node_free(node);
        node = parent;
    }
}

/* ---- the trie ---- */

brk_trie_t *
brk_trie_new(void)
{
    brk_trie_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->root = calloc(1, sizeof *self->root);
    if (self->root == NULL) {
        free(self);
        return NULL;
    }
    self->root->kind = S_ROOT;
    return self;
}

void
brk_trie_destroy(brk_trie_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    s_node_free((*self_p)->root);
    free(*self_p);
    *self_p = NULL;
}

int
brk_trie_add(brk_trie_t *self, const char *pattern, void *value)
{
    s_seg_t segs[BRK_TRIE_SEGMENTS_MAX];
    size_t n;
    if (self == NULL || s_parse(pattern, 1, segs, &n, NULL, 0) != 0)
        return AB_EINVAL;
    s_node_t *node = self->root;
    for (size_t i = 0; i < n; i++) {
        s_node_t *child = s_child(node, &segs[i]);
        if (child == NULL) {
            child = s_node_new(node, &segs[i]);
            if (child == NULL)
                goto nomem;
            if (child->kind == S_STAR) {
                node->star = child;
            } else if (child->kind == S_GT) {
                node->gt = child;
            } else if (s_kid_insert(node, child) != 0) {
                free(child);
                goto nomem;
            }
        }
        node = child;
    }
    if (node->vals_n == node->vals_cap) {
        if (node->vals_cap > UINT32_MAX / 2)
            goto nomem;
        uint32_t cap = node->vals_cap ? node->vals_cap * 2 : 2;
        void **vals = realloc(node->vals, cap * sizeof *vals);
        if (vals == NULL)
            goto nomem;
        node->vals = vals;
        node->vals_cap = cap;
    }
    node->vals[node->vals_n++] = value;
    self->count++;
    return 0;
nomem:
    /* the nodes made above hold nothing yet: pruning takes exactly them away again */
    s_prune(self, node);
    return AB_ENOMEM;
}

int
brk_trie_remove(brk_trie_t *self, const char *pattern, void *value)
{
    s_seg_t segs[BRK_TRIE_SEGMENTS_MAX];
    size_t n;
    if (self == NULL || s_parse(pattern, 1, segs, &n, NULL, 0) != 0)
        return AB_EINVAL;
    s_node_t *node = self->root;
    for (size_t i = 0; i < n && node != NULL; i++)
        node = s_child(node, &segs[i]);
    if (node == NULL)
        return AB_EINVAL;
    /* the latest of equal pairs goes; the others keep the order they were added in */
    uint32_t i = node->vals_n;
    while (i > 0 && node->vals[i - 1] != value)
        i--;
    if (i == 0)
        return AB_EINVAL;
    memmove(&node->vals[i - 1], &node->vals[i], (node->vals_n - i) * sizeof *node->vals);
    node->vals_n--;
    self->count--;
    if (node->vals_n == 0) {
        free(node->vals);
        node->vals = NULL;
        node->vals_cap = 0;
    }
    s_prune(self, node);
    return 0;
}

/* Reports the values of `node`; returns how many (cannot fail). */
static size_t
s_report(const s_node_t *node, brk_trie_fn *fn, void *arg)
{
    if (fn != NULL)
        for (uint32_t i = 0; i < node->vals_n; i++)
            fn(arg, node->vals[i]);
    return node->vals_n;
}

/* Reports what below `node` matches segs[i..n); returns how many (cannot fail; recursion
 * depth at most n + 1). */
static size_t
s_match(const s_node_t *node, const s_seg_t *segs, size_t i, size_t n, brk_trie_fn *fn, void *arg)
{
    if (i == n)
        return s_report(node, fn, arg);
    size_t hits = 0;
    if (node->gt != NULL) /* `>` takes the remaining segments, at least one */
        hits += s_report(node->gt, fn, arg);
    const s_node_t *lit = s_kid_find(node, &segs[i]);
    if (lit != NULL)
        hits += s_match(lit, segs, i + 1, n, fn, arg);
    if (node->star != NULL)
        hits += s_match(node->star, segs, i + 1, n, fn, arg);
    return hits;
}

size_t
brk_trie_match(const brk_trie_t *self, const char *topic, brk_trie_fn *fn, void *arg)
{
    s_seg_t segs[BRK_TRIE_SEGMENTS_MAX];
    size_t n;
    if (self == NULL || s_parse(topic, 0, segs, &n, NULL, 0) != 0)
        return 0;
    return s_match(self->root, segs, 0, n, fn, arg);
}

size_t
brk_trie_count(const brk_trie_t *self)
{
    return self ? self->count : 0;
}
