/*
 * loop_zmq.h - a ZeroMQ socket on the libuv loop.
 *
 * Owns one uv_poll on the socket's ZMQ_FD and one uv_idle. ZMQ_FD is edge-triggered and only
 * says "look at ZMQ_EVENTS": a wake-up that is not drained, or a zmq_send that consumes the
 * edge, would leave messages waiting with no further wake-up. So after every wake-up the
 * adapter reads until the socket says EAGAIN (which re-arms the edge as a ZMQ_EVENTS query
 * does), up to a budget per loop turn, and keeps a uv_idle running while there may be more;
 * brk_zsock_kick() after each send makes it look again on the next turn.
 */
#ifndef BRK_LOOP_ZMQ_H
#define BRK_LOOP_ZMQ_H

#include <uv.h>

typedef struct brk_zsock brk_zsock_t;

/*
 * Reads and handles one message from `zsock` (with ZMQ_DONTWAIT). Returns 0 when it handled
 * one, or -1 when there was nothing to read after all.
 */
typedef int(brk_zsock_read_fn)(void *zsock, void *arg);

/* Runs once after each batch of reads, e.g. to flush or re-arm timers; may be NULL. */
typedef void(brk_zsock_batch_fn)(void *arg);

/*
 * Watches `zsock` (borrowed; it must outlive the adapter) on `loop`. `budget` is the most
 * messages read per loop turn. Returns NULL on failure (ZMQ_FD or uv_poll_init failed).
 */
brk_zsock_t *brk_zsock_new(uv_loop_t *loop, void *zsock, unsigned budget, brk_zsock_read_fn *read,
                           brk_zsock_batch_fn *batch, void *arg);

/* Call after every zmq_send on the socket: the send may have consumed the readable edge. */
void brk_zsock_kick(brk_zsock_t *self);

/* Stops watching and frees the adapter once libuv has closed its handles. Accepts NULL. */
void brk_zsock_destroy(brk_zsock_t **self_p);

#endif
