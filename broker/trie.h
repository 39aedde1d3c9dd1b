/*
 * trie.h - the subscription trie for event topics.
 *
 * Owns a tree of dotted topic patterns ("meldewesen.umzug.*", "meldewesen.>") and, per
 * pattern, the values stored under it (the broker stores its subscriptions; the trie never
 * looks at them, frees them or deduplicates them). brk_trie_match() finds every stored
 * value whose pattern matches a topic without allocating: literal children sit in an open
 * hash table per node, so 11,000 municipalities under one node cost one probe, and `*` and
 * `>` children have a slot of their own. Recursion is bounded by the 16 segments a topic has
 * at most.
 *
 * Topics are 1..16 segments of 1..64 characters from [A-Za-z0-9_-], joined by dots, at most
 * BRK_TRIE_NAME_MAX bytes. In a pattern a segment may be `*` (exactly one segment), and the
 * last may be `>` (one or more segments: `a.>` matches `a.b` and `a.b.c`, not `a`).
 */
#ifndef BRK_TRIE_H
#define BRK_TRIE_H

#include <stddef.h>

#define BRK_TRIE_NAME_MAX 255
#define BRK_TRIE_SEGMENT_MAX 64
#define BRK_TRIE_SEGMENTS_MAX 16

typedef struct brk_trie brk_trie_t;

/* A new, empty trie; NULL when out of memory. */
brk_trie_t *brk_trie_new(void);

/* Frees the trie and nulls *self_p; the stored values are not freed. Accepts NULL and a
 * pointer to NULL. */
void brk_trie_destroy(brk_trie_t **self_p);

/*
 * Checks a topic (wild = 0) or a pattern (wild = 1). Returns 0, or AB_EINVAL with a sentence
 * in `why` (at most why_cap bytes with the terminating NUL; `why` may be NULL) that names
 * the segment at fault, e.g. "segment 2 is empty (two dots in a row)".
 */
int brk_trie_check(const char *name, int wild, char *why, size_t why_cap);

/*
 * Stores `value` under `pattern`; the same pair added twice is stored twice. Returns 0,
 * AB_EINVAL for a NULL trie or a pattern brk_trie_check() refuses, or AB_ENOMEM, in which
 * case the trie is as it was.
 */
int brk_trie_add(brk_trie_t *self, const char *pattern, void *value);

/*
 * Removes one stored (pattern, value) pair (compared by pattern text and pointer) and the
 * nodes nothing needs any more. Returns 0, or AB_EINVAL for a NULL trie, a bad pattern, or a
 * pair that is not stored.
 */
int brk_trie_remove(brk_trie_t *self, const char *pattern, void *value);

/* Called by brk_trie_match() for one stored value; must not change the trie. */
typedef void brk_trie_fn(void *arg, void *value);

/*
 * Calls fn(arg, value) once for every stored pair whose pattern matches `topic`: a value
 * stored under two matching patterns (or twice under one) is reported twice, callers
 * deduplicate. `fn` may be NULL to only count. Allocates nothing. Returns the number of
 * matching pairs; 0 for a NULL trie or a topic brk_trie_check() refuses.
 */
size_t brk_trie_match(const brk_trie_t *self, const char *topic, brk_trie_fn *fn, void *arg);

/* The number of stored pairs; 0 for NULL. */
size_t brk_trie_count(const brk_trie_t *self);

#endif
