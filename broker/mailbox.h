/*
 * mailbox.h - durable store-and-forward: mailboxes, receipts, events and durable subscriptions.
 *
 * Owns every participant's mailbox (messages waiting for it, receipts waiting for it as a
 * sender), every durable subscription (a mailbox of references to stored events), the
 * ephemeral subscriptions of connected clients, the subscription trie, and the connections that
 * take deliveries with credit. Everything it accepts is written to the store in the loop turn's
 * transaction; brk_mailbox_end_turn() commits it and only then sends the answers (ACCEPTED,
 * receipts) and the deliveries of that turn. A turn whose commit fails is undone in memory and
 * its senders get UNAVAILABLE: nothing is acknowledged that is not on disk.
 *
 * Like the services it does no I/O of its own: it sends through the functions it is given.
 * Times: `now` arguments are the loop's monotonic milliseconds (liveness); what is stored and
 * expires is wall-clock Unix time, read here.
 */
#ifndef BRK_MAILBOX_H
#define BRK_MAILBOX_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "registry.h"
#include "services.h"
#include "store.h"
#include "wire.h"

typedef struct brk_mailbox brk_mailbox_t;

typedef struct brk_mailbox_io {
    /* as brk_services_io_t.send */
    int (*send)(void *ctx, const brk_peer_t *to, const ab_header_t *hdr, void *payload);
    /* sends a header already encoded (`hdr_len` bytes, then `tail_len` more), and `payload` (a
     * zmq_msg_t * whose content is taken) when not NULL */
    int (*send_raw)(void *ctx, const brk_peer_t *to, const uint8_t *hdr, size_t hdr_len,
                    const uint8_t *tail, size_t tail_len, void *payload);
    void *ctx;
} brk_mailbox_io_t;

typedef struct brk_mailbox_stats {
    uint64_t accepted;     /* SENDs stored */
    uint64_t duplicates;   /* SENDs whose message id was known: accepted again, nothing stored */
    uint64_t delivered;    /* DELIVERs and RECEIPTs sent (redeliveries included) */
    uint64_t redelivered;  /* of those, not the first attempt */
    uint64_t acked;        /* messages acknowledged by their recipient */
    uint64_t expired;      /* messages whose time to live ended */
    uint64_t dead_letters; /* messages delivered max_deliveries times without an ACK */
    uint64_t damaged;      /* stored records whose checksum did not match: not delivered */
    uint64_t mailbox_full; /* SENDs refused with MAILBOX_FULL */
    uint64_t unavailable;  /* SENDs and PUBLISHes refused because the store could not write */
    uint64_t refused;      /* refused by policy, registry or for bad input */
    uint64_t published;
    uint64_t events_delivered;
    uint64_t events_dropped; /* to ephemeral subscribers whose queue was full */
    uint64_t acks_unknown;   /* ACKs of a sequence not (or no longer) delivered */
    size_t waiting;          /* messages waiting in all mailboxes (in flight included) */
    uint64_t waiting_bytes;
    size_t receipts_waiting;
    size_t in_flight;
    size_t mailboxes;
    size_t durable_subscriptions;
    size_t ephemeral_subscriptions;
    size_t events_kept;
    uint64_t cache_bytes;
    size_t store_failed; /* 1: the store cannot write; SEND and PUBLISH get UNAVAILABLE */
} brk_mailbox_stats_t;

/* Loads the mailboxes, subscriptions and events from `store` (borrowed, like `cfg` and `io`).
 * Returns NULL with the reason in err (a damaged store names the record). */
brk_mailbox_t *brk_mailbox_new(const brk_config_t *cfg, const brk_mailbox_io_t *io,
                               brk_store_t *store, char *err, size_t errlen);

/* Frees everything (the store's open turn is not committed: call brk_mailbox_end_turn() first).
 * NULL-safe; nulls the pointer. */
void brk_mailbox_destroy(brk_mailbox_t **self_p);

/* The governance (policy: send, receive, publish, subscribe; clearance; audit records) and the
 * registry (payloads that claim a registered type); both borrowed, NULL for none. */
void brk_mailbox_set_gate(brk_mailbox_t *self, const brk_services_gate_t *gate);
void brk_mailbox_set_registry(brk_mailbox_t *self, brk_registry_t *reg);

/* 1 when a message of this header belongs to the mailboxes (SEND, ACK, CREDIT, PUBLISH,
 * SUBSCRIBE, and WITHDRAW of a topic or subscription). */
int brk_mailbox_wants(const ab_header_t *hdr);

/* Handles one such message from connection `from`, authenticated as `participant`. `payload`
 * (a zmq_msg_t *, may be NULL) is only read or referenced; the caller still closes it. */
void brk_mailbox_handle(brk_mailbox_t *self, const brk_peer_t *from, const char *participant,
                        const ab_header_t *hdr, void *payload, uint64_t now);

/* Connection `peer` was heard from (any message). Returns 1 when it takes deliveries. */
int brk_mailbox_seen(brk_mailbox_t *self, const brk_peer_t *peer, uint64_t now);

/* Expiry, redelivery after ack_timeout_ms, silent connections, retention. Returns the ms until
 * it must run again. */
uint64_t brk_mailbox_tick(brk_mailbox_t *self, uint64_t now);

/* The end of a loop turn: commits the turn's writes; then sends its answers and deliveries (or,
 * when the commit failed, undoes the turn and answers its senders UNAVAILABLE). */
void brk_mailbox_end_turn(brk_mailbox_t *self);

/* Connection `peer` is gone: what was delivered to it and not acknowledged is delivered again. */
void brk_mailbox_peer_gone(brk_mailbox_t *self, const brk_peer_t *peer);

/* From now on SEND, PUBLISH and new subscriptions get UNAVAILABLE. */
void brk_mailbox_drain(brk_mailbox_t *self);

/* A brk_services_method_fn for amtsbote.v1.Broker/MessageStatus (ctx: the mailbox). */
int brk_mailbox_method(void *ctx, const char *participant, const char *method, const uint8_t *req,
                       size_t len, uint8_t **out, size_t *out_len, const char **schema, char *why,
                       size_t why_cap);

/* A brk_services_attached_fn (ctx: the mailbox). */
int brk_mailbox_attached(void *ctx, const brk_peer_t *peer, uint64_t now);

/* 0 when the mailboxes can accept; otherwise -1 with the reason (the store's error, or free
 * space below min_free_bytes) in why. */
int brk_mailbox_ready(brk_mailbox_t *self, char *why, size_t cap);

void brk_mailbox_stats(const brk_mailbox_t *self, brk_mailbox_stats_t *out);

/* Calls fn for every mailbox with messages waiting: its owner, how many, and the age of the
 * oldest in ms (for /metrics). */
typedef void brk_mailbox_each_fn(void *arg, const char *participant, size_t messages,
                                 uint64_t oldest_age_ms);
void brk_mailbox_each(const brk_mailbox_t *self, brk_mailbox_each_fn *fn, void *arg);

#endif
