/*
 * floor_forwarder.c - the floor for bench_calls: a raw libzmq ROUTER forwarder with no logic (and,
 * with --stream, the floor for bench_flow's one-way stream).
 *
 * One ROUTER socket is bound on the endpoint given on the command line. Workers (DEALER) announce
 * themselves with one "READY" frame; clients (DEALER) send [payload]. A client's message goes to
 * the next worker in round-robin order as [client_id, payload]; a worker answers
 * [client_id, payload] and the forwarder sends [payload] back to that client. That is the least
 * any broker has to do to carry a call, so Amtsbote's numbers are read as ratios against it.
 *
 * Frames are moved with zmq_msg_send, never copied. A message from an unknown peer with a body
 * of exactly "READY" registers a worker, so a client must not send that 5-byte payload
 * (bench_calls never sends fewer than 8 bytes). Workers that have disconnected are forgotten the
 * next time one is picked. With no worker registered, requests are dropped: bench_calls retries
 * its first probe until one is answered.
 *
 * Usage: floor_forwarder tcp://127.0.0.1:PORT. Prints "listening on ..." and "ready" on stdout,
 * then runs until SIGTERM or SIGINT. Loopback only; this is a benchmark tool, not a service.
 *
 * Stream mode, the floor for bench_flow's one-way stream: floor_forwarder --stream
 * tcp://127.0.0.1:IN tcp://127.0.0.1:OUT binds a PULL on IN and a PUSH on OUT and moves every
 * message from the one to the other, frame by frame, untouched. When OUT cannot take a message
 * (no receiver connected, or its high-water mark reached) the forwarder holds it and stops
 * reading IN until it can, so the senders are slowed down and nothing is dropped: the least a
 * broker does to carry an event from a publisher to a subscriber.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define MAX_WORKERS 64
#define MAX_ID 255
/* Messages handled per poll wakeup before polling again, so a busy peer cannot starve signals. */
#define BATCH 1024
/* Stream mode: the most frames of one message. */
#define HELD 8

typedef struct {
    unsigned char id[MAX_ID];
    size_t len;
} worker_t;

typedef struct {
    void *router;
    worker_t workers[MAX_WORKERS];
    int nworkers;
    int next; /* round-robin cursor */
    unsigned long long dropped;
} fwd_t;

static volatile sig_atomic_t s_stop;

static void
s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

/* Closes every message in msgs[0..n). */
static void
s_close_all(zmq_msg_t *msgs, int n)
{
    for (int i = 0; i < n; i++)
        zmq_msg_close(&msgs[i]);
}

static int
s_is_worker(const fwd_t *self, const zmq_msg_t *id)
{
    size_t len = zmq_msg_size((zmq_msg_t *)id);
    const void *data = zmq_msg_data((zmq_msg_t *)id);
    for (int i = 0; i < self->nworkers; i++)
        if (self->workers[i].len == len && memcmp(self->workers[i].id, data, len) == 0)
            return 1;
    return 0;
}

/*
 * Receives one whole message (up to 3 frames; more are drained and the message dropped) and
 * forwards it. Returns 1 when a message was handled, 0 when none was waiting, -1 on a socket
 * error other than EAGAIN/EINTR.
 */
static int
s_handle_one(fwd_t *self)
{
    zmq_msg_t m[3];
    int n = 0;
    int more = 1;
    int toolong = 0;
    while (more) {
        zmq_msg_t tmp;
        zmq_msg_init(&tmp);
        int rc = zmq_msg_recv(&tmp, self->router, n == 0 ? ZMQ_DONTWAIT : 0);
        if (rc < 0) {
            zmq_msg_close(&tmp);
            s_close_all(m, n);
            if (errno == EAGAIN || errno == EINTR)
                return 0;
            return -1;
        }
        more = zmq_msg_more(&tmp);
        if (n < 3)
            m[n++] = tmp;
        else {
            zmq_msg_close(&tmp);
            toolong = 1;
        }
    }
    if (toolong || n < 2) {
        self->dropped++;
        s_close_all(m, n);
        return 1;
    }
    if (n == 3) {
        /* [worker_id, client_id, payload] -> [client_id, payload] */
        zmq_msg_close(&m[0]);
        if (zmq_msg_send(&m[1], self->router, ZMQ_SNDMORE) < 0 ||
            zmq_msg_send(&m[2], self->router, 0) < 0) {
            self->dropped++;
            s_close_all(&m[1], 2);
        }
        return 1;
    }
    /* n == 2: a worker's READY, or a client's request */
    if (zmq_msg_size(&m[1]) == 5 && memcmp(zmq_msg_data(&m[1]), "READY", 5) == 0 &&
        !s_is_worker(self, &m[0])) {
        size_t len = zmq_msg_size(&m[0]);
        if (self->nworkers < MAX_WORKERS && len <= MAX_ID) {
            worker_t *w = &self->workers[self->nworkers++];
            memcpy(w->id, zmq_msg_data(&m[0]), len);
            w->len = len;
        }
        s_close_all(m, 2);
        return 1;
    }
    /*
     * [client_id, payload] -> [worker_id, client_id, payload]. ZMQ_ROUTER_MANDATORY makes the
     * first frame fail with EHOSTUNREACH for a worker that has gone (bench_calls forks a new one
     * per run); that worker is forgotten and the next one tried.
     */
    while (self->nworkers > 0) {
        if (self->next >= self->nworkers)
            self->next = 0;
        const worker_t *w = &self->workers[self->next];
        if (zmq_send(self->router, w->id, w->len, ZMQ_SNDMORE) < 0) {
            if (errno != EHOSTUNREACH)
                break;
            self->workers[self->next] = self->workers[--self->nworkers];
            continue;
        }
        self->next = (self->next + 1) % self->nworkers;
        if (zmq_msg_send(&m[0], self->router, ZMQ_SNDMORE) < 0 ||
            zmq_msg_send(&m[1], self->router, 0) < 0)
            break;
        return 1;
    }
    self->dropped++;
    s_close_all(m, 2);
    return 1;
}

/* ---- stream mode ---------------------------------------------------------------------------- */

/*
 * Receives the next whole message from `in` into held[0..HELD). Returns its number of frames, 0
 * when none was waiting, -1 on a socket error; a message of more than HELD frames is dropped
 * and counted (the benchmark sends one frame), and -2 returned.
 */
static int
s_recv_whole(void *in, zmq_msg_t *held, unsigned long long *dropped)
{
    int n = 0, more = 1, toolong = 0;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        /* only the first frame can be missing: the rest of a message arrives with it */
        if (zmq_msg_recv(&m, in, n == 0 && !toolong ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(&m);
            s_close_all(held, n);
            return n == 0 && !toolong && (errno == EAGAIN || errno == EINTR) ? 0 : -1;
        }
        more = zmq_msg_more(&m);
        if (n < HELD)
            held[n++] = m;
        else {
            zmq_msg_close(&m);
            toolong = 1;
        }
    }
    if (toolong) {
        s_close_all(held, n);
        (*dropped)++;
        return -2;
    }
    return n;
}

/*
 * Moves messages from `in` to `out` until a signal. A message that `out` cannot take now is
 * held, and `in` is not read until `out` is writable again. Returns 0, or 1 after a socket error.
 */
static int
s_stream_loop(void *in, void *out)
{
    zmq_msg_t held[HELD];
    int nheld = 0, sent = 0; /* frames of the held message, and how many of them went out */
    unsigned long long moved = 0, dropped = 0;
    int status = 0;
    while (!s_stop && status == 0) {
        zmq_pollitem_t item = nheld ? (zmq_pollitem_t){out, 0, ZMQ_POLLOUT, 0}
                                    : (zmq_pollitem_t){in, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 200) < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "floor_forwarder: zmq_poll: %s\n", zmq_strerror(errno));
            status = 1;
            break;
        }
        for (int i = 0; i < BATCH && !s_stop; i++) {
            if (!nheld) {
                nheld = s_recv_whole(in, held, &dropped);
                if (nheld == -2) {
                    nheld = 0;
                    continue;
                }
                if (nheld < 0) {
                    fprintf(stderr, "floor_forwarder: recv: %s\n", zmq_strerror(errno));
                    nheld = 0;
                    status = 1;
                }
                if (nheld == 0)
                    break;
                sent = 0;
            }
            while (sent < nheld &&
                   zmq_msg_send(&held[sent], out,
                                ZMQ_DONTWAIT | (sent + 1 < nheld ? ZMQ_SNDMORE : 0)) >= 0)
                sent++;
            if (sent < nheld) {
                if (errno == EAGAIN || errno == EINTR)
                    break; /* held until OUT is writable */
                fprintf(stderr, "floor_forwarder: send: %s\n", zmq_strerror(errno));
                status = 1;
                break;
            }
            nheld = 0;
            moved++;
        }
    }
    s_close_all(&held[sent], nheld - sent);
    fprintf(stderr, "floor_forwarder: stopping moved=%llu dropped=%llu\n", moved, dropped);
    return status;
}

static int
s_stream_main(const char *in_uri, const char *out_uri)
{
    void *ctx = zmq_ctx_new();
    if (!ctx) {
        fprintf(stderr, "floor_forwarder: zmq_ctx_new: %s\n", zmq_strerror(errno));
        return 1;
    }
    void *in = zmq_socket(ctx, ZMQ_PULL);
    void *out = zmq_socket(ctx, ZMQ_PUSH);
    int linger = 0, status = 1;
    zmq_setsockopt(in, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(out, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(in, in_uri) != 0)
        fprintf(stderr, "floor_forwarder: bind %s: %s\n", in_uri, zmq_strerror(errno));
    else if (zmq_bind(out, out_uri) != 0)
        fprintf(stderr, "floor_forwarder: bind %s: %s\n", out_uri, zmq_strerror(errno));
    else {
        printf("listening on %s\nlistening on %s\nready\n", in_uri, out_uri);
        fflush(stdout);
        status = s_stream_loop(in, out);
    }
    zmq_close(in);
    zmq_close(out);
    zmq_ctx_term(ctx);
    return status;
}

int
main(int argc, char **argv)
{
    int stream = argc == 4 && strcmp(argv[1], "--stream") == 0;
    if (!(argc == 2 || stream) || strncmp(argv[argc - 1], "tcp://", 6) != 0 ||
        (stream && strncmp(argv[2], "tcp://", 6) != 0)) {
        fprintf(stderr,
                "usage: %s tcp://127.0.0.1:PORT\n"
                "       %s --stream tcp://127.0.0.1:IN tcp://127.0.0.1:OUT\n",
                argv[0], argv[0]);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (stream)
        return s_stream_main(argv[2], argv[3]);

    static fwd_t fwd; /* static: the worker table is 16 KiB */
    void *ctx = zmq_ctx_new();
    if (!ctx) {
        fprintf(stderr, "floor_forwarder: zmq_ctx_new: %s\n", zmq_strerror(errno));
        return 1;
    }
    fwd.router = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 0, mandatory = 1;
    zmq_setsockopt(fwd.router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(fwd.router, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof mandatory);
    if (zmq_bind(fwd.router, argv[1]) != 0) {
        fprintf(stderr, "floor_forwarder: bind %s: %s\n", argv[1], zmq_strerror(errno));
        zmq_close(fwd.router);
        zmq_ctx_term(ctx);
        return 1;
    }
    printf("listening on %s\nready\n", argv[1]);
    fflush(stdout);

    int status = 0;
    while (!s_stop) {
        zmq_pollitem_t item = {fwd.router, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&item, 1, 200);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "floor_forwarder: zmq_poll: %s\n", zmq_strerror(errno));
            status = 1;
            break;
        }
        for (int i = 0; i < BATCH && !s_stop; i++) {
            rc = s_handle_one(&fwd);
            if (rc == 0)
                break;
            if (rc < 0) {
                fprintf(stderr, "floor_forwarder: recv: %s\n", zmq_strerror(errno));
                s_stop = 1;
                status = 1;
            }
        }
    }
    fprintf(stderr, "floor_forwarder: stopping workers=%d dropped=%llu\n", fwd.nworkers,
            fwd.dropped);
    zmq_close(fwd.router);
    zmq_ctx_term(ctx);
    return status;
}
