/*
 * heap.h - a min-heap of deadlines, intrusive: the node lives inside the caller's struct.
 *
 * One structure for every timer of a kind (calls in the broker, pending answers in the client
 * library): adding and removing cost O(log n), the next deadline O(1), however many are armed.
 */
#ifndef AB_HEAP_H
#define AB_HEAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct ab_heap_node {
    uint64_t at; /* the deadline; set before ab_heap_push(), not changed while in the heap */
    size_t idx;  /* the heap's business */
} ab_heap_node_t;

typedef struct ab_heap {
    ab_heap_node_t **v;
    size_t n, cap;
} ab_heap_t;

/* The struct that holds node `ptr` as member `member`. */
#define AB_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* Adds `node`; returns 0, or AB_ENOMEM and leaves the heap as it was. */
int ab_heap_push(ab_heap_t *heap, ab_heap_node_t *node);

/* Removes `node`, which must be in the heap. */
void ab_heap_remove(ab_heap_t *heap, ab_heap_node_t *node);

/* The node with the earliest deadline, or NULL when the heap is empty. */
static inline ab_heap_node_t *
ab_heap_top(const ab_heap_t *heap)
{
    return heap->n ? heap->v[0] : NULL;
}

/* Frees the heap's array (not the nodes); the heap is empty and usable afterwards. */
void ab_heap_free(ab_heap_t *heap);

#endif
