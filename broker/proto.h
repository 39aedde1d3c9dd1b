/*
 * proto.h - ROUTER frames to envelopes and back, with limits and error replies.
 *
 * Owns the broker's side of the wire: it reads one multipart message, checks the frame count,
 * the authenticated identity (ZAP's User-Id), the header and the payload size before anything
 * else sees them, and answers what it refuses with MALFORMED or TOO_LARGE naming the fault.
 * It also sends: a header it encodes and a payload it forwards by moving the received message,
 * queued during a loop turn and sent in one burst at its end.
 */
#ifndef BRK_PROTO_H
#define BRK_PROTO_H

#include <zmq.h>

#include "config.h"
#include "loop_zmq.h"
#include "quota.h"
#include "services.h"

typedef struct brk_envelope {
    brk_peer_t from;
    const char *participant; /* borrowed from the header frame's metadata */
    ab_header_t *hdr;        /* owned by the decoder; valid until the next receive */
    zmq_msg_t header_msg;
    zmq_msg_t payload;
    int has_payload;
} brk_envelope_t;

typedef struct brk_proto_stats {
    uint64_t received;
    uint64_t sent;
    uint64_t malformed;
    uint64_t too_large;
    uint64_t no_identity;  /* messages without a User-Id: dropped */
    uint64_t unroutable;   /* sends to a connection that is gone */
    uint64_t queue_full;   /* sends refused by the high-water mark */
    uint64_t rate_limited; /* requests refused by the sender's rate (RATE_LIMITED) */
} brk_proto_stats_t;

typedef struct brk_proto brk_proto_t;

/* `router` is borrowed. Returns NULL when out of memory. */
brk_proto_t *brk_proto_new(void *router, const brk_config_t *cfg);
void brk_proto_destroy(brk_proto_t **self_p);

/* The adapter to kick after every send (may be NULL while there is none). */
void brk_proto_set_zsock(brk_proto_t *self, brk_zsock_t *zs);

/*
 * Receives one message. Returns 1 with `env` filled (release it with brk_envelope_close()),
 * 0 when the message was consumed here (refused with an error reply, or dropped), and -1 when
 * there was nothing to read.
 */
int brk_proto_recv(brk_proto_t *self, brk_envelope_t *env);

void brk_envelope_close(brk_envelope_t *env);

/*
 * The services' sender: `ctx` is the brk_proto_t, `payload` a zmq_msg_t * whose content is
 * moved into the queue (it is left empty; nothing is copied). The message goes out with the
 * next brk_proto_flush(). Returns 0, or AB_EINTERNAL when the header cannot be encoded (and
 * then `payload` is untouched).
 */
int brk_proto_send(void *ctx, const brk_peer_t *to, const ab_header_t *hdr, void *payload);

/*
 * Sends everything queued, back to back. A message for a connection that is gone is dropped
 * and reported to the callback set with brk_proto_on_gone().
 */
void brk_proto_flush(brk_proto_t *self);

/* Sends only the first `upto` queued messages and keeps the rest queued, in order. */
void brk_proto_flush_upto(brk_proto_t *self, size_t upto);

/* How many messages are queued. */
size_t brk_proto_queued(const brk_proto_t *self);

/* While holding (the answers wait for their audit records to be on disk), a full outbox grows
 * instead of being flushed. */
void brk_proto_hold(brk_proto_t *self, int hold);

/* Called from brk_proto_flush() for each message whose connection `peer` is gone. */
typedef void(brk_proto_gone_fn)(void *arg, const brk_peer_t *peer);
void brk_proto_on_gone(brk_proto_t *self, brk_proto_gone_fn *fn, void *arg);

/* As brk_proto_send(), with a header already encoded: `hdr_len` bytes, then `tail_len` bytes
 * of further fields appended (a protobuf message may be extended by concatenation). */
int brk_proto_send_raw(void *ctx, const brk_peer_t *to, const uint8_t *hdr, size_t hdr_len,
                       const uint8_t *tail, size_t tail_len, void *payload);

/* As brk_proto_send(), with a payload of `len` bytes that the broker made itself. */
int brk_proto_send_bytes(void *ctx, const brk_peer_t *to, const ab_header_t *hdr, const void *data,
                         size_t len);

void brk_proto_stats(const brk_proto_t *self, brk_proto_stats_t *out);

/*
 * A TLS session's end, told at once instead of after the heartbeat timeout. With tracking on,
 * proto keeps for each HELLO the connection's address (the TLS gateway gives each session its
 * own 127.x address). brk_proto_session_end() (from the gateway, when a session closes) marks
 * that connection; brk_proto_probe() then queues a HEARTBEAT to it every 20 ms, for at most 5 s,
 * until a send fails, which reports it to the brk_proto_on_gone() callback like any connection
 * found gone. Not declared gone at once: what the connection carried before it closed (a
 * provider's last REPLY) may still be on its way through libzmq, and a failed send means it has
 * all been handed over. brk_proto_probe() returns the ms until it wants to run again
 * (UINT64_MAX: nothing to probe); the caller flushes after it.
 */
#define BRK_PROBE_EVERY_MS 20
void brk_proto_track_sessions(brk_proto_t *self, int on);
void brk_proto_session_end(brk_proto_t *self, const char *address, uint64_t now);
uint64_t brk_proto_probe(brk_proto_t *self, uint64_t now);

/* Requests (CALL, SEND, PUBLISH, SUBSCRIBE, OFFER, WITHDRAW) are counted against their
 * participant's rate in `limits` (borrowed; NULL: no rate) and refused with RATE_LIMITED. */
void brk_proto_set_limits(brk_proto_t *self, brk_quota_t *limits);

/*
 * A participant over its rate is not read for a while instead of having each further request
 * answered: after a request was refused for the rate, `fn` (the TLS gateway's
 * brk_tls_gateway_pause) is told to stop reading that participant's sessions for
 * BRK_RATE_PAUSE_MS, so that its requests wait in TCP (the sender's writes block) instead of
 * costing the broker a decryption, a decode and an answer each. At most once per half a pause
 * per participant. NULL: nothing is paused (plain listeners have nothing to pause).
 */
#define BRK_RATE_PAUSE_MS 100
typedef void brk_proto_pause_fn(void *arg, const char *participant, unsigned ms);
void brk_proto_on_rate_limited(brk_proto_t *self, brk_proto_pause_fn *fn, void *arg);

#endif
