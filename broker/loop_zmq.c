/*
 * loop_zmq.c - uv_poll on ZMQ_FD, drained to EAGAIN with a budget and a uv_idle.
 */
#include "loop_zmq.h"

#include <stdlib.h>
#include <zmq.h>

#include "log.h"

struct brk_zsock {
    uv_poll_t poll;
    uv_idle_t idle;
    void *zsock;
    unsigned budget;
    brk_zsock_read_fn *read;
    brk_zsock_batch_fn *batch;
    void *arg;
    int idle_on;
    int kicked;  /* a send happened since the last drain */
    int closing; /* handles still open */
};

static void s_on_idle(uv_idle_t *h);

static void
s_set_idle(brk_zsock_t *self, int on)
{
    if (on && !self->idle_on)
        self->idle_on = uv_idle_start(&self->idle, s_on_idle) == 0;
    else if (!on && self->idle_on) {
        uv_idle_stop(&self->idle);
        self->idle_on = 0;
    }
}

/*
 * Reads until the socket says EAGAIN or the budget is spent. A receive that returns EAGAIN has
 * processed libzmq's pending commands exactly as a ZMQ_EVENTS query would, so it re-arms the
 * edge without a further query (each query costs a poll() system call). After a full budget
 * the idle handle looks again on the next loop turn.
 */
static void
s_drain(brk_zsock_t *self)
{
    unsigned n = 0;
    int again = 0;
    while (n < self->budget) {
        if (self->read(self->zsock, self->arg) < 0) {
            again = 1;
            break;
        }
        n++;
    }
    if (again)
        self->kicked = 0; /* the EAGAIN receive came after every send so far */
    if (n > 0 && self->batch)
        self->batch(self->arg);
    /* A send after that receive may have consumed the edge: look again on the next turn. */
    s_set_idle(self, !again || self->kicked);
}

static void
s_on_poll(uv_poll_t *h, int status, int events)
{
    (void)events;
    brk_zsock_t *self = h->data;
    if (status < 0)
        brk_log(BRK_LOG_WARN, "event=zmq_poll_error error=%s", uv_strerror(status));
    s_drain(self);
}

static void
s_on_idle(uv_idle_t *h)
{
    s_drain(h->data);
}

brk_zsock_t *
brk_zsock_new(uv_loop_t *loop, void *zsock, unsigned budget, brk_zsock_read_fn *read,
              brk_zsock_batch_fn *batch, void *arg)
{
    int fd;
    size_t len = sizeof fd;
    if (zmq_getsockopt(zsock, ZMQ_FD, &fd, &len) != 0) {
        brk_log(BRK_LOG_ERROR, "event=zmq_fd_failed error=\"%s\"", zmq_strerror(zmq_errno()));
        return NULL;
    }
    brk_zsock_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->zsock = zsock;
    self->budget = budget ? budget : 256;
    self->read = read;
    self->batch = batch;
    self->arg = arg;
    if (uv_poll_init(loop, &self->poll, fd) != 0) {
        free(self);
        return NULL;
    }
    uv_idle_init(loop, &self->idle);
    self->poll.data = self;
    self->idle.data = self;
    uv_poll_start(&self->poll, UV_READABLE, s_on_poll);
    s_set_idle(self, 1); /* one check on the first turn: messages may be queued already */
    return self;
}

void
brk_zsock_kick(brk_zsock_t *self)
{
    if (self && !self->closing) {
        self->kicked = 1;
        s_set_idle(self, 1);
    }
}

static void
s_on_close(uv_handle_t *h)
{
    brk_zsock_t *self = h->data;
    if (--self->closing == 0)
        free(self);
}

void
brk_zsock_destroy(brk_zsock_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    brk_zsock_t *self = *self_p;
    *self_p = NULL;
    self->closing = 2;
    uv_close((uv_handle_t *)&self->poll, s_on_close);
    uv_close((uv_handle_t *)&self->idle, s_on_close);
}
