/*
 * heap.c - binary min-heap of deadline nodes.
 */
#include "heap.h"

#include <stdlib.h>

#include "amtsbote.h"

static void
s_swap(ab_heap_t *h, size_t a, size_t b)
{
    ab_heap_node_t *t = h->v[a];
    h->v[a] = h->v[b];
    h->v[b] = t;
    h->v[a]->idx = a;
    h->v[b]->idx = b;
}

static void
s_up(ab_heap_t *h, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h->v[p]->at <= h->v[i]->at)
            break;
        s_swap(h, i, p);
        i = p;
    }
}

static void
s_down(ab_heap_t *h, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && h->v[l]->at < h->v[m]->at)
            m = l;
        if (r < h->n && h->v[r]->at < h->v[m]->at)
            m = r;
        if (m == i)
            return;
        s_swap(h, i, m);
        i = m;
    }
}

int
ab_heap_push(ab_heap_t *h, ab_heap_node_t *node)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        ab_heap_node_t **v = realloc(h->v, cap * sizeof *v);
        if (!v)
            return AB_ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    node->idx = h->n;
    h->v[h->n++] = node;
    s_up(h, node->idx);
    return 0;
}

void
ab_heap_remove(ab_heap_t *h, ab_heap_node_t *node)
{
    size_t i = node->idx;
    h->n--;
    if (i != h->n) {
        h->v[i] = h->v[h->n];
        h->v[i]->idx = i;
        s_down(h, i);
        s_up(h, i);
    }
}

void
ab_heap_free(ab_heap_t *h)
{
    free(h->v);
    h->v = NULL;
    h->n = h->cap = 0;
}
