/*
 * Unit tests for common/heap.c: random pushes and removals keep the earliest deadline on top.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "heap.h"

typedef struct {
    int in;
    ab_heap_node_t node;
} item_t;

static void
test_random_order(void **state)
{
    (void)state;
    enum { N = 2000 };
    static item_t items[N];
    ab_heap_t h = {0};
    srand(7);
    for (int round = 0; round < 20000; round++) {
        item_t *it = &items[rand() % N];
        if (it->in) {
            ab_heap_remove(&h, &it->node);
            it->in = 0;
        } else {
            it->node.at = (uint64_t)(rand() % 100000);
            assert_int_equal(ab_heap_push(&h, &it->node), 0);
            it->in = 1;
        }
        /* the top is the minimum of what is in */
        ab_heap_node_t *top = ab_heap_top(&h);
        uint64_t min = UINT64_MAX;
        size_t count = 0;
        for (int i = 0; i < N; i++)
            if (items[i].in) {
                count++;
                if (items[i].node.at < min)
                    min = items[i].node.at;
            }
        assert_int_equal(h.n, count);
        if (count)
            assert_int_equal(top->at, min);
        else
            assert_null(top);
    }
    /* draining gives ascending deadlines */
    uint64_t last = 0;
    ab_heap_node_t *n;
    while ((n = ab_heap_top(&h)) != NULL) {
        assert_true(n->at >= last);
        last = n->at;
        ab_heap_remove(&h, n);
        AB_CONTAINER_OF(n, item_t, node)->in = 0;
    }
    ab_heap_free(&h);
    ab_heap_free(&h);
    assert_null(h.v);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_random_order)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
