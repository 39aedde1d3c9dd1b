/*
 * Unit tests for broker/loop_zmq.c. ZMQ_FD is edge-triggered; this test first shows, with a
 * naive uv_poll reader written here, the two ways that loses messages (a budget that stops
 * reading before the socket is drained, and a zmq_send from a timer that consumes the edge),
 * then shows that the adapter loses none in the same situations.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>
#include <zmq.h>

#include "loop_zmq.h"

#define BURST 20000
#define ECHOES 400
#define BUDGET 64

typedef struct {
    uv_loop_t loop;
    void *ctx;
    void *a, *b;
    size_t received, sent, target;
    brk_zsock_t *zs;
    uv_poll_t naive_poll;
    uv_timer_t guard, sender;
    int naive;
} fixture_t;

static int
s_read_one(void *sock, void *arg)
{
    fixture_t *f = arg;
    zmq_msg_t m;
    zmq_msg_init(&m);
    int rc = zmq_msg_recv(&m, sock, ZMQ_DONTWAIT);
    zmq_msg_close(&m);
    if (rc < 0)
        return -1;
    if (++f->received == f->target)
        uv_stop(&f->loop);
    return 0;
}

/* The naive reader: reads at most BUDGET on each wake-up, never looks again. */
static void
s_naive_on_poll(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    fixture_t *f = h->data;
    for (int i = 0; i < BUDGET; i++)
        if (s_read_one(f->a, f) < 0)
            break;
}

/* The naive reader of the second case: drains fully, but sends do not look again. */
static void
s_naive_drain_on_poll(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    fixture_t *f = h->data;
    for (;;) {
        int ev = 0;
        size_t len = sizeof ev;
        zmq_getsockopt(f->a, ZMQ_EVENTS, &ev, &len);
        if (!(ev & ZMQ_POLLIN) || s_read_one(f->a, f) < 0)
            break;
    }
}

static void
s_on_guard(uv_timer_t *t)
{
    uv_stop(t->loop); /* bounded: a stalled reader ends the run here */
}

static void
s_setup(fixture_t *f, int type_a, int type_b, const char *ep)
{
    memset(f, 0, sizeof *f);
    uv_loop_init(&f->loop);
    f->ctx = zmq_ctx_new();
    f->a = zmq_socket(f->ctx, type_a);
    f->b = zmq_socket(f->ctx, type_b);
    int zero = 0;
    zmq_setsockopt(f->a, ZMQ_RCVHWM, &zero, sizeof zero);
    zmq_setsockopt(f->b, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(f->a, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(f->b, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_bind(f->a, ep), 0);
    char bound[128];
    size_t len = sizeof bound;
    zmq_getsockopt(f->a, ZMQ_LAST_ENDPOINT, bound, &len);
    assert_int_equal(zmq_connect(f->b, bound), 0);
    uv_timer_init(&f->loop, &f->guard);
    uv_timer_init(&f->loop, &f->sender);
    f->sender.data = f;
}

static void
s_run(fixture_t *f, uint64_t guard_ms)
{
    uv_timer_start(&f->guard, s_on_guard, guard_ms, 0);
    uv_run(&f->loop, UV_RUN_DEFAULT);
}

static void
s_teardown(fixture_t *f)
{
    if (f->zs)
        brk_zsock_destroy(&f->zs);
    if (f->naive)
        uv_close((uv_handle_t *)&f->naive_poll, NULL);
    uv_close((uv_handle_t *)&f->guard, NULL);
    uv_close((uv_handle_t *)&f->sender, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    zmq_close(f->a);
    zmq_close(f->b);
    zmq_ctx_term(f->ctx);
}

static void
s_start_naive(fixture_t *f, uv_poll_cb cb)
{
    int fd;
    size_t len = sizeof fd;
    zmq_getsockopt(f->a, ZMQ_FD, &fd, &len);
    uv_poll_init(&f->loop, &f->naive_poll, fd);
    f->naive_poll.data = f;
    f->naive = 1;
    uv_poll_start(&f->naive_poll, UV_READABLE, cb);
}

static int
s_burst(void *b)
{
    for (int i = 0; i < BURST; i++)
        if (zmq_send(b, "x", 1, 0) != 1)
            return -1;
    return 0;
}

static void
test_burst_naive_budget_loses(void **state)
{
    (void)state;
    fixture_t f;
    s_setup(&f, ZMQ_PULL, ZMQ_PUSH, "inproc://burst-naive");
    f.target = BURST;
    assert_int_equal(s_burst(f.b), 0);
    s_start_naive(&f, s_naive_on_poll);
    s_run(&f, 1000);
    print_message("naive reader with a budget: %zu of %d messages, then no wake-up\n", f.received,
                  BURST);
    assert_true(f.received < BURST); /* the failure mode is real */
    s_teardown(&f);
}

static void
test_burst_adapter_loses_none(void **state)
{
    (void)state;
    fixture_t f;
    s_setup(&f, ZMQ_PULL, ZMQ_PUSH, "inproc://burst-adapter");
    f.target = BURST;
    assert_int_equal(s_burst(f.b), 0);
    f.zs = brk_zsock_new(&f.loop, f.a, BUDGET, s_read_one, NULL, &f);
    assert_non_null(f.zs);
    s_run(&f, 10000);
    assert_int_equal(f.received, BURST);
    s_teardown(&f);
}

static void *
s_burst_thread(void *b)
{
    if (s_burst(b) != 0)
        fprintf(stderr, "burst: zmq_send failed: %s\n", zmq_strerror(zmq_errno()));
    return NULL;
}

static void
test_concurrent_burst_over_tcp(void **state)
{
    (void)state;
    fixture_t f;
    s_setup(&f, ZMQ_PULL, ZMQ_PUSH, "tcp://127.0.0.1:*");
    f.target = BURST;
    f.zs = brk_zsock_new(&f.loop, f.a, BUDGET, s_read_one, NULL, &f);
    pthread_t t;
    pthread_create(&t, NULL, s_burst_thread, f.b);
    s_run(&f, 20000);
    pthread_join(t, NULL);
    assert_int_equal(f.received, BURST);
    s_teardown(&f);
}

/* The peer: echoes every message it gets, ECHOES times, then stops (bounded). */
static void *
s_echo_thread(void *b)
{
    int timeout = 5000;
    zmq_setsockopt(b, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    for (int i = 0; i < ECHOES; i++) {
        char buf[8];
        int n = zmq_recv(b, buf, sizeof buf, 0);
        if (n < 0)
            break;
        zmq_send(b, buf, (size_t)n, 0);
    }
    return NULL;
}

static void
s_on_send_timer(uv_timer_t *t)
{
    fixture_t *f = t->data;
    /*
     * Two sends per tick with a pause between: the echo of the first arrives during the pause,
     * and the second zmq_send processes that arrival's command, which consumes the edge.
     */
    zmq_send(f->a, "ping", 4, ZMQ_DONTWAIT);
    f->sent++;
    usleep(2000);
    zmq_send(f->a, "ping", 4, ZMQ_DONTWAIT);
    f->sent++;
    if (f->zs)
        brk_zsock_kick(f->zs);
    if (f->sent >= ECHOES)
        uv_timer_stop(t);
}

static size_t
s_timer_case(int naive)
{
    fixture_t f;
    s_setup(&f, ZMQ_PAIR, ZMQ_PAIR, naive ? "inproc://timer-naive" : "inproc://timer-adapter");
    f.target = ECHOES;
    if (naive)
        s_start_naive(&f, s_naive_drain_on_poll);
    else
        f.zs = brk_zsock_new(&f.loop, f.a, BUDGET, s_read_one, NULL, &f);
    pthread_t t;
    pthread_create(&t, NULL, s_echo_thread, f.b);
    uv_timer_start(&f.sender, s_on_send_timer, 1, 1);
    s_run(&f, naive ? 3000 : 20000);
    size_t got = f.received;
    uv_timer_stop(&f.sender);
    pthread_join(t, NULL);
    s_teardown(&f);
    return got;
}

static void
test_send_from_timer(void **state)
{
    (void)state;
    size_t naive = s_timer_case(1);
    print_message("naive reader, sends from a timer: %zu of %d echoes, then no wake-up\n", naive,
                  ECHOES);
    assert_true(naive < ECHOES); /* the failure mode is real */
    assert_int_equal(s_timer_case(0), ECHOES);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_naive_budget_loses),
        cmocka_unit_test(test_burst_adapter_loses_none),
        cmocka_unit_test(test_concurrent_burst_over_tcp),
        cmocka_unit_test(test_send_from_timer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
