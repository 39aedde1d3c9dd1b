/*
 * Unit tests for broker/trie.c: literal, `*` and `>` matching, counted pairs, removal and
 * pruning, every kind of bad topic and pattern with its reason, 20,000 literals under one
 * node, a randomized comparison with a naive matcher, and allocation failure in add().
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "amtsbote.h"
#include "trie.h"

/* ---- malloc, calloc, realloc and free wrapped (-Wl,--wrap): failure at the N-th call, and
 * a count of live blocks that shows pruning gives back every node ---- */

static long s_fail_at;     /* > 0: the allocation with this number fails */
static long s_alloc_calls; /* allocations since s_fail_at was set */
static long s_live;        /* blocks allocated and not yet freed */

void *__real_malloc(size_t n);
void *__real_calloc(size_t k, size_t n);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t k, size_t n);
void *__wrap_realloc(void *p, size_t n);
void __wrap_free(void *p);

static int
s_alloc_fails(void)
{
    return s_fail_at > 0 && ++s_alloc_calls == s_fail_at;
}

void *
__wrap_malloc(size_t n)
{
    void *p = s_alloc_fails() ? NULL : __real_malloc(n);
    s_live += p != NULL;
    return p;
}

void *
__wrap_calloc(size_t k, size_t n)
{
    void *p = s_alloc_fails() ? NULL : __real_calloc(k, n);
    s_live += p != NULL;
    return p;
}

void *
__wrap_realloc(void *p, size_t n)
{
    void *q = s_alloc_fails() ? NULL : __real_realloc(p, n);
    s_live += p == NULL && q != NULL;
    return q;
}

void
__wrap_free(void *p)
{
    s_live -= p != NULL;
    __real_free(p);
}

static void
s_fail_at_call(long n)
{
    s_fail_at = n;
    s_alloc_calls = 0;
}

/* ---- what a match reported ---- */

enum { VALUES = 16 };
static int s_values[VALUES]; /* the values stored in the tests are &s_values[i] */
#define V(i) ((void *)&s_values[i])

typedef struct {
    size_t calls;
    size_t per[VALUES];
} seen_t;

static void
s_collect(void *arg, void *value)
{
    seen_t *seen = arg;
    seen->calls++;
    ptrdiff_t i = (int *)value - s_values;
    assert_true(i >= 0 && i < VALUES);
    seen->per[i]++;
}

/* Matches `topic`; returns what was reported, after checking the count returned. */
static seen_t
s_match(const brk_trie_t *trie, const char *topic)
{
    seen_t seen = {0};
    size_t n = brk_trie_match(trie, topic, s_collect, &seen);
    assert_int_equal(n, seen.calls);
    assert_int_equal(brk_trie_match(trie, topic, NULL, NULL), n);
    return seen;
}

/* Asserts that `topic` reports exactly value `v` `times` times and nothing else. */
static void
s_expect_only(const brk_trie_t *trie, const char *topic, int v, size_t times)
{
    seen_t seen = s_match(trie, topic);
    if (seen.calls != times || (times > 0 && seen.per[v] != times)) {
        print_error("topic %s: %zu calls, %zu for value %d, expected %zu\n", topic, seen.calls,
                    seen.per[v], v, times);
        fail();
    }
}

/* ---- cases ---- */

static void
test_new_destroy(void **state)
{
    (void)state;
    brk_trie_destroy(NULL);
    brk_trie_t *trie = NULL;
    brk_trie_destroy(&trie);
    trie = brk_trie_new();
    assert_non_null(trie);
    assert_int_equal(brk_trie_count(trie), 0);
    assert_int_equal(brk_trie_match(trie, "a", s_collect, NULL), 0);
    brk_trie_destroy(&trie);
    assert_null(trie);
    brk_trie_destroy(&trie);
    /* NULL everywhere */
    assert_int_equal(brk_trie_count(NULL), 0);
    assert_int_equal(brk_trie_match(NULL, "a", NULL, NULL), 0);
    assert_int_equal(brk_trie_add(NULL, "a", V(0)), AB_EINVAL);
    assert_int_equal(brk_trie_remove(NULL, "a", V(0)), AB_EINVAL);
}

static void
test_literal(void **state)
{
    (void)state;
    brk_trie_t *trie = brk_trie_new();
    assert_int_equal(brk_trie_add(trie, "meldewesen.umzug.09162000", V(1)), 0);
    assert_int_equal(brk_trie_add(trie, "meldewesen.geburt.09162000", V(2)), 0);
    assert_int_equal(brk_trie_count(trie), 2);
    s_expect_only(trie, "meldewesen.umzug.09162000", 1, 1);
    s_expect_only(trie, "meldewesen.geburt.09162000", 2, 1);
    s_expect_only(trie, "meldewesen.umzug.09162001", 0, 0);
    s_expect_only(trie, "meldewesen.umzug", 0, 0);
    s_expect_only(trie, "meldewesen", 0, 0);
    s_expect_only(trie, "meldewesen.umzug.09162000.x", 0, 0);
    s_expect_only(trie, "Meldewesen.umzug.09162000", 0, 0); /* case matters */
    s_expect_only(trie, "umzug.09162000", 0, 0);
    brk_trie_destroy(&trie);
}

static void
test_star_any_position(void **state)
{
    (void)state;
    brk_trie_t *trie = brk_trie_new();
    assert_int_equal(brk_trie_add(trie, "*.umzug.x", V(1)), 0);
    assert_int_equal(brk_trie_add(trie, "a.*.x", V(2)), 0);
    assert_int_equal(brk_trie_add(trie, "a.umzug.*", V(3)), 0);
    assert_int_equal(brk_trie_add(trie, "*", V(4)), 0);
    assert_int_equal(brk_trie_add(trie, "*.*.*", V(5)), 0);

    seen_t s = s_match(trie, "a.umzug.x");
    assert_int_equal(s.calls, 4);
    assert_int_equal(s.per[1] + s.per[2] + s.per[3] + s.per[5], 4);

    s = s_match(trie, "b.umzug.x"); /* first position */
    assert_int_equal(s.calls, 2);
    assert_int_equal(s.per[1] + s.per[5], 2);
    s = s_match(trie, "a.geburt.x"); /* middle */
    assert_int_equal(s.calls, 2);
    assert_int_equal(s.per[2] + s.per[5], 2);
    s = s_match(trie, "a.umzug.y"); /* last */
    assert_int_equal(s.calls, 2);
    assert_int_equal(s.per[3] + s.per[5], 2);

    s_expect_only(trie, "zzz", 4, 1);         /* `*` is exactly one segment */
    s_expect_only(trie, "a.umzug", 0, 0);     /* not zero of them */
    s_expect_only(trie, "a.umzug.x.y", 0, 0); /* nor two */
    s_expect_only(trie, "q.r.s", 5, 1);
    brk_trie_destroy(&trie);
}

static void
test_gt_at_end(void **state)
{
    (void)state;
    brk_trie_t *trie = brk_trie_new();
    assert_int_equal(brk_trie_add(trie, "a.>", V(1)), 0);
    s_expect_only(trie, "a.b", 1, 1);
    s_expect_only(trie, "a.b.c", 1, 1);
    s_expect_only(trie, "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p", 1, 1);
    s_expect_only(trie, "a", 0, 0); /* `>` is one or more segments, never zero */
    s_expect_only(trie, "b.a", 0, 0);

    assert_int_equal(brk_trie_add(trie, ">", V(2)), 0);
    s_expect_only(trie, "x", 2, 1);
    s_expect_only(trie, "x.y.z", 2, 1);
    seen_t s = s_match(trie, "a");
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.per[2], 1);

    assert_int_equal(brk_trie_add(trie, "a.*.>", V(3)), 0);
    s = s_match(trie, "a.b");
    assert_int_equal(s.calls, 2); /* a.> and >, not a.*.> */
    assert_int_equal(s.per[3], 0);
    s = s_match(trie, "a.b.c");
    assert_int_equal(s.calls, 3);
    assert_int_equal(s.per[3], 1);
    brk_trie_destroy(&trie);
}

static void
test_overlap_reports_twice(void **state)
{
    (void)state;
    brk_trie_t *trie = brk_trie_new();
    assert_int_equal(brk_trie_add(trie, "a.b.c", V(1)), 0);
    assert_int_equal(brk_trie_add(trie, "a.*.c", V(1)), 0);
    assert_int_equal(brk_trie_add(trie, "a.>", V(1)), 0);
    assert_int_equal(brk_trie_add(trie, "a.b.c", V(2)), 0);
    seen_t s = s_match(trie, "a.b.c");
    assert_int_equal(s.calls, 4);
    assert_int_equal(s.per[1], 3);
    assert_int_equal(s.per[2], 1);

    /* the same pair twice is stored twice and removed once at a time */
    assert_int_equal(brk_trie_add(trie, "x.y", V(3)), 0);
    assert_int_equal(brk_trie_add(trie, "x.y", V(3)), 0);
    assert_int_equal(brk_trie_count(trie), 6);
    s_expect_only(trie, "x.y", 3, 2);
    assert_int_equal(brk_trie_remove(trie, "x.y", V(3)), 0);
    s_expect_only(trie, "x.y", 3, 1);
    assert_int_equal(brk_trie_remove(trie, "x.y", V(3)), 0);
    s_expect_only(trie, "x.y", 3, 0);
    assert_int_equal(brk_trie_remove(trie, "x.y", V(3)), AB_EINVAL);
    assert_int_equal(brk_trie_count(trie), 4);
    brk_trie_destroy(&trie);
}

static void
test_remove_and_prune(void **state)
{
    (void)state;
    static const char *const patterns[] = {"a",     "a.b",   "a.b.c", "a.*",   "a.*.c",
                                           "a.>",   ">",     "*",     "*.b.>", "x.y.z.w",
                                           "a.b.d", "a.b.e", "a.b.f", "a.b.g", "a.b.h"};
    enum { N = sizeof patterns / sizeof *patterns };
    long live0 = s_live;
    brk_trie_t *trie = brk_trie_new();
    long live_empty = s_live;
    for (int i = 0; i < N; i++)
        assert_int_equal(brk_trie_add(trie, patterns[i], V(i % VALUES)), 0);
    assert_int_equal(brk_trie_count(trie), N);
    assert_true(s_match(trie, "a.b.c").calls > 0);

    /* what is not stored: another value, a pattern that is only a prefix, an unknown one */
    assert_int_equal(brk_trie_remove(trie, "a.b.c", V(15)), AB_EINVAL);
    assert_int_equal(brk_trie_remove(trie, "x.y", V(9)), AB_EINVAL);
    assert_int_equal(brk_trie_remove(trie, "x.y.z.w.v", V(9)), AB_EINVAL);
    assert_int_equal(brk_trie_remove(trie, "q", V(0)), AB_EINVAL);
    assert_int_equal(brk_trie_remove(trie, "a..b", V(0)), AB_EINVAL);
    assert_int_equal(brk_trie_count(trie), N);

    /* taking away from the middle out leaves the others matching */
    for (int i = N - 1; i >= 0; i -= 2)
        assert_int_equal(brk_trie_remove(trie, patterns[i], V(i % VALUES)), 0);
    for (int i = N - 2; i >= 0; i -= 2)
        assert_int_equal(brk_trie_remove(trie, patterns[i], V(i % VALUES)), 0);
    assert_int_equal(brk_trie_count(trie), 0);
    const char *topics[] = {"a", "a.b", "a.b.c", "x.y.z.w", "q.b.r", "a.b.h"};
    for (size_t i = 0; i < sizeof topics / sizeof *topics; i++)
        assert_int_equal(brk_trie_match(trie, topics[i], s_collect, NULL), 0);
    /* every node was given back: the trie holds what a new one holds */
    assert_int_equal(s_live, live_empty);
    /* and it is still usable */
    assert_int_equal(brk_trie_add(trie, "a.b", V(1)), 0);
    s_expect_only(trie, "a.b", 1, 1);
    brk_trie_destroy(&trie);
    assert_int_equal(s_live, live0);
}

typedef struct {
    size_t n;
    void *v[4];
} ptrs_t;

/* Keeps the first values reported. */
static void
s_keep(void *arg, void *value)
{
    ptrs_t *got = arg;
    if (got->n < 4)
        got->v[got->n] = value;
    got->n++;
}

typedef struct {
    const char *name;
    int wild;
    const char *why; /* a part of the reason */
} bad_t;

static void
test_bad_names(void **state)
{
    (void)state;
    char too_long[300];
    memset(too_long, 'a', sizeof too_long);
    for (int i = 1; i < 256; i += 2)
        too_long[i] = '.';
    too_long[256] = '\0'; /* 256 bytes: 128 segments, but the length is what is wrong first */
    char long_seg[80];
    snprintf(long_seg, sizeof long_seg, "a.%065d.c", 0);
    const char *many = "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q";
    const bad_t bad[] = {
        {NULL, 1, "the pattern is missing"},
        {"", 0, "the topic is empty"},
        {"", 1, "the pattern is empty"},
        {"a..b", 0, "segment 2 is empty (two dots in a row)"},
        {"a..b", 1, "segment 2 is empty (two dots in a row)"},
        {".a", 0, "segment 1 is empty (the topic starts with a dot)"},
        {".", 1, "segment 1 is empty (the pattern starts with a dot)"},
        {"a.b.", 1, "segment 3 is empty (the pattern ends with a dot)"},
        {"a.>.b", 1, "segment 2 is the wildcard '>', which may only be the last segment"},
        {">.b", 1, "segment 1 is the wildcard '>', which may only be the last segment"},
        {"a.*", 0, "segment 2 is the wildcard '*', which a topic cannot have"},
        {"*", 0, "segment 1 is the wildcard '*', which a topic cannot have"},
        {"a.>", 0, "segment 2 is the wildcard '>', which a topic cannot have"},
        {"a.a*b", 1, "segment 2 (\"a*b\") mixes the wildcard '*' with other characters"},
        {"**", 1, "segment 1 (\"**\") mixes the wildcard '*'"},
        {"a.b>", 1, "segment 2 (\"b>\") mixes the wildcard '>'"},
        {"a.a*b", 0, "segment 2 (\"a*b\") has the character '*' at position 2"},
        {too_long, 0, "the topic is 256 bytes long, at most 255 are allowed"},
        {long_seg, 1,
         "segment 2 (\"000000000000000000000000...\") is 65 bytes long, at most 64 are allowed"},
        {many, 0, "segment 17 is one too many: a topic has at most 16 segments"},
        {"a.b$c", 0, "segment 2 (\"b$c\") has the character '$' at position 2"},
        {"a.b c", 1, "segment 2 (\"b c\") has the character ' ' at position 2"},
        {"amt.m\xc3\xbcnchen", 0,
         "segment 2 (\"m\\xc3\\xbcnchen\") has the byte 0xc3 at position 2"},
        {"a.b\n", 0, "segment 2 (\"b\\x0a\") has the byte 0x0a at position 2"},
        {"a/b", 1, "segment 1 (\"a/b\") has the character '/' at position 2"},
    };
    brk_trie_t *trie = brk_trie_new();
    assert_int_equal(brk_trie_add(trie, "a.b.c", V(1)), 0);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char why[256] = "untouched";
        int rc = brk_trie_check(bad[i].name, bad[i].wild, why, sizeof why);
        if (rc != AB_EINVAL || strstr(why, bad[i].why) == NULL) {
            print_error("case %zu: rc %d, why \"%s\", expected \"%s\"\n", i, rc, why, bad[i].why);
            fail();
        }
        if (bad[i].wild) {
            /* refused without a change: the stored pair is still there and alone */
            assert_int_equal(brk_trie_add(trie, bad[i].name, V(2)), AB_EINVAL);
            assert_int_equal(brk_trie_remove(trie, bad[i].name, V(1)), AB_EINVAL);
        } else {
            assert_int_equal(brk_trie_match(trie, bad[i].name, s_collect, NULL), 0);
        }
        assert_int_equal(brk_trie_count(trie), 1);
        s_expect_only(trie, "a.b.c", 1, 1);
    }
    /* the reason is cut to the space given, and `why` may be NULL */
    char small[8];
    assert_int_equal(brk_trie_check("a..b", 0, small, sizeof small), AB_EINVAL);
    assert_string_equal(small, "segment");
    assert_int_equal(brk_trie_check("a..b", 0, NULL, 0), AB_EINVAL);
    brk_trie_destroy(&trie);
}

static void
test_good_names(void **state)
{
    (void)state;
    char max_len[256];
    memset(max_len, 'z', 255);
    max_len[255] = '\0';
    for (int i = 60; i < 255; i += 61)
        max_len[i] = '.'; /* 255 bytes, segments of at most 60 */
    char max_seg[80];
    snprintf(max_seg, sizeof max_seg, "a.%064d", 0);
    const char *const topics[] = {"a",    "meldewesen.umzug.09162000",       "A-Z_a-z.0-9",
                                  "_.-",  "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p", max_len,
                                  max_seg};
    const char *const patterns[] = {"*",
                                    ">",
                                    "*.>",
                                    "a.*.c",
                                    "*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*",
                                    "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.>"};
    char why[256];
    brk_trie_t *trie = brk_trie_new();
    for (size_t i = 0; i < sizeof topics / sizeof *topics; i++) {
        snprintf(why, sizeof why, "untouched");
        assert_int_equal(brk_trie_check(topics[i], 0, why, sizeof why), 0);
        assert_string_equal(why, "");
        assert_int_equal(brk_trie_check(topics[i], 1, why, sizeof why), 0);
        assert_int_equal(brk_trie_add(trie, topics[i], V(i)), 0);
        s_expect_only(trie, topics[i], (int)i, 1);
        assert_int_equal(brk_trie_remove(trie, topics[i], V(i)), 0);
    }
    for (size_t i = 0; i < sizeof patterns / sizeof *patterns; i++) {
        assert_int_equal(brk_trie_check(patterns[i], 1, why, sizeof why), 0);
        assert_int_equal(brk_trie_check(patterns[i], 0, why, sizeof why), AB_EINVAL);
        assert_int_equal(brk_trie_add(trie, patterns[i], V(i)), 0);
    }
    /* a topic of 16 segments: >, *.>, sixteen `*` and a.b.c....o.> */
    assert_int_equal(s_match(trie, "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p").calls, 4);
    brk_trie_destroy(&trie);
}

static void
test_many_literals_under_one_node(void **state)
{
    (void)state;
    enum { N = 20000 };
    static int vals[N];
    char topic[64];
    brk_trie_t *trie = brk_trie_new();
    for (int i = 0; i < N; i++) {
        snprintf(topic, sizeof topic, "meldewesen.umzug.%08d", i * 7);
        assert_int_equal(brk_trie_add(trie, topic, &vals[i]), 0);
    }
    assert_int_equal(brk_trie_add(trie, "meldewesen.umzug.*", V(0)), 0);
    assert_int_equal(brk_trie_count(trie), N + 1);

    /* each literal reports its own value, and the wildcard's */
    clock_t t0 = clock();
    for (int i = 0; i < N * 7; i++) {
        ptrs_t got = {0};
        snprintf(topic, sizeof topic, "meldewesen.umzug.%08d", i);
        size_t n = brk_trie_match(trie, topic, s_keep, &got);
        assert_int_equal(n, got.n);
        if (i % 7 == 0) {
            assert_int_equal(n, 2);
            assert_true(got.v[0] == &vals[i / 7] || got.v[1] == &vals[i / 7]);
            assert_true(got.v[0] == V(0) || got.v[1] == V(0));
        } else {
            assert_int_equal(n, 1);
            assert_ptr_equal(got.v[0], V(0));
        }
    }
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    /* 140,000 lookups: a linear scan of the children would make that 1.4e9 comparisons */
    print_message("140000 matches against %d patterns under one node: %.3f s\n", N + 1, secs);
    assert_true(secs < 10.0); /* generous: also under valgrind and sanitizers */

    /* half removed, then the rest; the others still match */
    for (int i = 0; i < N; i += 2) {
        snprintf(topic, sizeof topic, "meldewesen.umzug.%08d", i * 7);
        assert_int_equal(brk_trie_remove(trie, topic, &vals[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        snprintf(topic, sizeof topic, "meldewesen.umzug.%08d", i * 7);
        assert_int_equal(brk_trie_match(trie, topic, NULL, NULL), i % 2 ? 2 : 1);
    }
    for (int i = 1; i < N; i += 2) {
        snprintf(topic, sizeof topic, "meldewesen.umzug.%08d", i * 7);
        assert_int_equal(brk_trie_remove(trie, topic, &vals[i]), 0);
    }
    assert_int_equal(brk_trie_count(trie), 1);
    assert_int_equal(brk_trie_remove(trie, "meldewesen.umzug.*", V(0)), 0);
    assert_int_equal(brk_trie_count(trie), 0);
    assert_int_equal(brk_trie_match(trie, "meldewesen.umzug.00000007", NULL, NULL), 0);
    brk_trie_destroy(&trie);
}

/* ---- a naive matcher to compare with ---- */

/* Splits a copy of `name` at the dots; returns the number of segments. */
static int
s_split(char *copy, char **segs, int max)
{
    int n = 0;
    for (char *p = copy; n < max;) {
        segs[n++] = p;
        char *dot = strchr(p, '.');
        if (dot == NULL)
            break;
        *dot = '\0';
        p = dot + 1;
    }
    return n;
}

/* Whether `pattern` matches `topic`, segment by segment, as NATS defines it. */
static int
s_naive_match(const char *pattern, const char *topic)
{
    char pc[256], tc[256];
    char *ps[16], *ts[16];
    size_t lp = strlen(pattern), lt = strlen(topic);
    assert_true(lp < sizeof pc && lt < sizeof tc);
    memcpy(pc, pattern, lp + 1);
    memcpy(tc, topic, lt + 1);
    int np = s_split(pc, ps, 16), nt = s_split(tc, ts, 16);
    for (int i = 0; i < np; i++) {
        if (strcmp(ps[i], ">") == 0)
            return nt > i;
        if (i >= nt || (strcmp(ps[i], "*") != 0 && strcmp(ps[i], ts[i]) != 0))
            return 0;
    }
    return np == nt;
}

static uint64_t s_rng = 0x9e3779b97f4a7c15u;

/* xorshift64*: the same sequence on every libc; returns a number below `n`. */
static unsigned
s_rand(unsigned n)
{
    s_rng ^= s_rng >> 12;
    s_rng ^= s_rng << 25;
    s_rng ^= s_rng >> 27;
    return (unsigned)((s_rng * 2685821657736338717u) >> 33) % n;
}

/* A random name of 1..5 segments from a small alphabet, so that many of them meet. */
static void
s_random_name(char *out, size_t cap, int wild)
{
    static const char *const lits[] = {"a", "b", "c", "umzug", "09162000"};
    int n = 1 + (int)s_rand(5);
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        const char *seg = lits[s_rand(5)];
        if (wild) {
            unsigned r = s_rand(10);
            if (r < 2)
                seg = "*";
            else if (r < 3 && i == n - 1)
                seg = ">";
        }
        o += (size_t)snprintf(out + o, cap - o, "%s%s", i ? "." : "", seg);
    }
}

typedef struct {
    char pattern[64];
    int value;
} pair_t;

static void
test_random_against_naive(void **state)
{
    (void)state;
    enum { MAX_PAIRS = 300, ROUNDS = 6000 };
    static pair_t pairs[MAX_PAIRS];
    size_t n_pairs = 0;
    long live0 = s_live;
    brk_trie_t *trie = brk_trie_new();
    for (int round = 0; round < ROUNDS; round++) {
        unsigned op = s_rand(10);
        if (op < 6 && n_pairs < MAX_PAIRS) {
            pair_t *p = &pairs[n_pairs++];
            s_random_name(p->pattern, sizeof p->pattern, 1);
            p->value = (int)s_rand(VALUES);
            assert_int_equal(brk_trie_add(trie, p->pattern, V(p->value)), 0);
        } else if (op < 9 && n_pairs > 0) {
            size_t k = s_rand((unsigned)n_pairs);
            assert_int_equal(brk_trie_remove(trie, pairs[k].pattern, V(pairs[k].value)), 0);
            pairs[k] = pairs[--n_pairs];
        } else {
            /* a pair that may or may not be stored: removed exactly when it is */
            pair_t p;
            s_random_name(p.pattern, sizeof p.pattern, 1);
            p.value = (int)s_rand(VALUES);
            size_t k = 0;
            while (k < n_pairs &&
                   (strcmp(pairs[k].pattern, p.pattern) != 0 || pairs[k].value != p.value))
                k++;
            int rc = brk_trie_remove(trie, p.pattern, V(p.value));
            if (k < n_pairs) {
                assert_int_equal(rc, 0);
                pairs[k] = pairs[--n_pairs];
            } else {
                assert_int_equal(rc, AB_EINVAL);
            }
        }
        assert_int_equal(brk_trie_count(trie), n_pairs);
        for (int t = 0; t < 4; t++) {
            char topic[64];
            s_random_name(topic, sizeof topic, 0);
            seen_t want = {0};
            for (size_t k = 0; k < n_pairs; k++)
                if (s_naive_match(pairs[k].pattern, topic)) {
                    want.calls++;
                    want.per[pairs[k].value]++;
                }
            seen_t got = s_match(trie, topic);
            if (memcmp(&want, &got, sizeof want) != 0) {
                print_error("round %d, topic %s: %zu calls, expected %zu\n", round, topic,
                            got.calls, want.calls);
                fail();
            }
        }
    }
    while (n_pairs > 0) {
        n_pairs--;
        assert_int_equal(brk_trie_remove(trie, pairs[n_pairs].pattern, V(pairs[n_pairs].value)), 0);
    }
    assert_int_equal(brk_trie_count(trie), 0);
    brk_trie_destroy(&trie);
    assert_int_equal(s_live, live0);
}

/* ---- out of memory ---- */

static void
test_out_of_memory(void **state)
{
    (void)state;
    long live0 = s_live;
    /* brk_trie_new: two allocations, each may fail, neither leaks */
    for (long n = 1; n <= 2; n++) {
        s_fail_at_call(n);
        assert_null(brk_trie_new());
        assert_int_equal(s_live, live0);
    }
    s_fail_at_call(0);

    brk_trie_t *trie = brk_trie_new();
    /* three children of the root: the fourth makes the table grow */
    assert_int_equal(brk_trie_add(trie, "a", V(1)), 0);
    assert_int_equal(brk_trie_add(trie, "b.c", V(2)), 0);
    assert_int_equal(brk_trie_add(trie, "c.>", V(3)), 0);
    long live = s_live;

    /* d, the root's table growing, e, d's table, *, >, the values: each allocation fails once
     * (the root's table, grown on the third try, stays grown, so the seventh try succeeds) */
    long n = 1;
    for (;; n++) {
        s_fail_at_call(n);
        int rc = brk_trie_add(trie, "d.e.*.>", V(4));
        s_fail_at_call(0);
        if (rc == 0)
            break;
        assert_int_equal(rc, AB_ENOMEM);
        assert_int_equal(s_live, live); /* what was made is gone again */
        assert_int_equal(brk_trie_count(trie), 3);
        s_expect_only(trie, "d.e.f.g", 0, 0);
        s_expect_only(trie, "a", 1, 1);
        s_expect_only(trie, "b.c", 2, 1);
        s_expect_only(trie, "c.x.y", 3, 1);
    }
    assert_int_equal(n, 7);
    s_expect_only(trie, "d.e.f.g", 4, 1);
    assert_int_equal(brk_trie_count(trie), 4);

    /* the values of an existing node growing */
    assert_int_equal(brk_trie_add(trie, "a", V(5)), 0); /* 2 of 2 */
    live = s_live;
    s_fail_at_call(1);
    assert_int_equal(brk_trie_add(trie, "a", V(6)), AB_ENOMEM);
    s_fail_at_call(0);
    assert_int_equal(s_live, live);
    seen_t s = s_match(trie, "a");
    assert_int_equal(s.calls, 2);
    assert_int_equal(s.per[1] + s.per[5], 2);
    assert_int_equal(brk_trie_count(trie), 5);

    /* a literal under an existing node with room: only the node and its values allocate */
    s_fail_at_call(1);
    assert_int_equal(brk_trie_add(trie, "b.d", V(7)), AB_ENOMEM);
    s_fail_at_call(2);
    assert_int_equal(brk_trie_add(trie, "b.d", V(7)), AB_ENOMEM);
    s_fail_at_call(0);
    assert_int_equal(s_live, live);
    s_expect_only(trie, "b.d", 0, 0);
    s_expect_only(trie, "b.c", 2, 1);

    brk_trie_destroy(&trie);
    assert_int_equal(s_live, live0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_destroy),
        cmocka_unit_test(test_literal),
        cmocka_unit_test(test_star_any_position),
        cmocka_unit_test(test_gt_at_end),
        cmocka_unit_test(test_overlap_reports_twice),
        cmocka_unit_test(test_remove_and_prune),
        cmocka_unit_test(test_bad_names),
        cmocka_unit_test(test_good_names),
        cmocka_unit_test(test_many_literals_under_one_node),
        cmocka_unit_test(test_random_against_naive),
        cmocka_unit_test(test_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
