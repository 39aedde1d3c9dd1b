/*
 * services.h - providers, load balancing, calls in flight, deadlines, heartbeats.
 *
 * Owns every connection the broker has heard from (by ZeroMQ routing id), the offers they
 * made, and every call in flight. It also answers the broker's own service,
 * amtsbote.v1.Broker (ListServices). It does no I/O itself: it decides, and sends through the
 * `brk_services_io_t` it is given, so that tests can drive it with a fake clock and a fake
 * sender. Deadlines live in one min-heap; the caller runs brk_services_tick() when the time it
 * returns has come.
 */
#ifndef BRK_SERVICES_H
#define BRK_SERVICES_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "registry.h"
#include "wire.h"

/* The broker's own service; nobody else may offer it. */
#define BRK_SERVICE_BROKER "amtsbote.v1.Broker"

/* A connection's ZeroMQ routing id. */
typedef struct brk_peer {
    uint8_t len;
    uint8_t id[255];
} brk_peer_t;

typedef struct brk_services_io {
    /*
     * Sends `hdr`, and `payload` when not NULL (its content is taken: the services forward a
     * payload at most once), to `to`. Returns 0, AB_EPROVIDER_GONE when that connection no
     * longer exists, or AB_EUNAVAILABLE when its queue is full; on an error `payload` is kept.
     */
    int (*send)(void *ctx, const brk_peer_t *to, const ab_header_t *hdr, void *payload);
    /* Sends `hdr` and a payload of `len` bytes made by the broker itself; returns as send. */
    int (*send_bytes)(void *ctx, const brk_peer_t *to, const ab_header_t *hdr, const void *data,
                      size_t len);
    void *ctx;
    /* The bytes of a payload handed to brk_services_handle(); NULL when payloads are opaque
     * (then nothing is validated). */
    const uint8_t *(*payload_bytes)(void *payload, size_t *len);
} brk_services_io_t;

typedef struct brk_services_stats {
    uint64_t calls;   /* CALLs received */
    uint64_t replies; /* answers routed back to callers */
    uint64_t unknown_service;
    uint64_t deadline_exceeded;
    uint64_t provider_gone;
    uint64_t unavailable;
    uint64_t late_replies;   /* answers for calls no longer pending, dropped */
    uint64_t lost_replies;   /* answers whose caller had gone, dropped */
    uint64_t schema_invalid; /* calls and replies refused by the registry */
    uint64_t forbidden;      /* calls, replies and offers refused by the policy */
    uint64_t rate_limited;   /* calls refused at the caller's calls in flight */
    size_t in_flight;
    size_t connections;
    size_t providers;
} brk_services_stats_t;

typedef struct brk_services brk_services_t;

/* Returns NULL when out of memory. `cfg` and `io` are borrowed and must outlive the result. */
brk_services_t *brk_services_new(const brk_config_t *cfg, const brk_services_io_t *io);

/* Frees everything without sending anything. Accepts NULL; nulls *self_p. */
void brk_services_destroy(brk_services_t **self_p);

/*
 * Handles one decoded message from connection `from`, authenticated as `participant`.
 * `payload` (may be NULL) is handed to io->send when forwarded, which may take its content;
 * the caller still closes it. `now` is in ms.
 */
void brk_services_handle(brk_services_t *self, const brk_peer_t *from, const char *participant,
                         const ab_header_t *hdr, void *payload, uint64_t now);

/*
 * Expires deadlines and removes silent providers. Returns the milliseconds until it must run
 * again.
 */
uint64_t brk_services_tick(brk_services_t *self, uint64_t now);

/*
 * Connection `peer` turned out to be gone (a send to it failed): its offers are removed and its
 * calls in flight fail with PROVIDER_GONE.
 */
void brk_services_peer_gone(brk_services_t *self, const brk_peer_t *peer);

/* What happened to a call, for the audit log and the metrics (brk_services_gate_t.record). */
typedef enum {
    BRK_EV_CALL = 1,  /* routed to a provider */
    BRK_EV_REPLY,     /* its answer (a reply, or the provider's own error) went to the caller */
    BRK_EV_REFUSED,   /* a call, reply or offer refused by the policy or the registry */
    BRK_EV_FAILED,    /* a routed call ended without an answer: deadline, provider gone, shutdown */
    BRK_EV_ACCEPTED,  /* a SEND stored (sender, target = recipient) */
    BRK_EV_ACKED,     /* a message acknowledged by its recipient */
    BRK_EV_EXPIRED,   /* a message whose time to live ended */
    BRK_EV_DEAD,      /* a message delivered too often without an acknowledgement */
    BRK_EV_DELIVERED, /* a message delivered to its recipient (each attempt) */
    BRK_EV_PUBLISHED, /* an event accepted (target = topic) */
} brk_event_kind_t;

typedef struct brk_event {
    brk_event_kind_t kind;
    const uint8_t *message_id; /* of the call (16 bytes), or of the reply */
    size_t message_id_len;
    const char *sender;     /* the participant that sent the message */
    const char *target;     /* package.Service/Method (or the offered service) */
    const char *provider;   /* the answering participant, when known; else "" */
    const char *purpose;    /* "" when none */
    int classification;     /* amtsbote.v1.Classification; 0 unspecified */
    const uint8_t *payload; /* for its SHA-256 only: never stored, never logged */
    size_t payload_len;
    int outcome;         /* 0, or the AB_E* the message was answered with */
    const char *rule;    /* the policy rule that decided a refusal, or "" */
    uint64_t latency_ms; /* BRK_EV_REPLY, BRK_EV_FAILED: from the call to its end */
} brk_event_t;

/*
 * The governance the services consult (all optional; NULL members are skipped): `allow` decides
 * whether `participant` may do `action` ("call", "offer", "schema-push", "admin") on `resource`
 * with `purpose` at `classification`: 0, or AB_EFORBIDDEN with the reason in why (naming the
 * rule) and the rule's name in *rule. `cleared` says whether a participant may receive a message
 * of that classification. `record` is told about every call's events.
 */
typedef struct brk_services_gate {
    int (*allow)(void *ctx, const char *participant, const char *action, const char *resource,
                 const char *purpose, int classification, char *why, size_t why_cap,
                 const char **rule);
    int (*cleared)(void *ctx, const char *participant, int classification);
    void (*record)(void *ctx, const brk_event_t *ev);
    void *ctx;
} brk_services_gate_t;

/* Sets the gate (borrowed; must outlive the services; NULL: everything allowed, nothing
 * recorded). */
void brk_services_set_gate(brk_services_t *self, const brk_services_gate_t *gate);

/* Checks every CALL, reply and OFFER against `reg` (borrowed; NULL: no checks) and lets it
 * answer its own broker methods (amtsbote.v1.Broker/Schema*). */
void brk_services_set_registry(brk_services_t *self, brk_registry_t *reg);

/* Calls in flight per participant are bounded by `limits` (borrowed; NULL: only the broker's
 * max_calls_in_flight); one over gets RATE_LIMITED. */
struct brk_quota;
void brk_services_set_limits(brk_services_t *self, struct brk_quota *limits);

/*
 * What the mailboxes add to the services: `method` answers further amtsbote.v1.Broker methods
 * (returns 0 with a reply of *out_len bytes in *out, freed by the caller, and its type in
 * *schema; an AB_E* with the reason in why; or 1 when `method` is not one of its own);
 * `attached` says whether connection `peer` takes deliveries (then its HEARTBEATs are expected
 * and do not mean that the broker forgot its offers). Either may be NULL.
 */
typedef int brk_services_method_fn(void *ctx, const char *participant, const char *method,
                                   const uint8_t *req, size_t len, uint8_t **out, size_t *out_len,
                                   const char **schema, char *why, size_t why_cap);
typedef int brk_services_attached_fn(void *ctx, const brk_peer_t *peer, uint64_t now);
void brk_services_set_extension(brk_services_t *self, brk_services_method_fn *method,
                                brk_services_attached_fn *attached, void *ctx);

/* From now on new calls and offers get UNAVAILABLE; calls in flight may still finish. */
void brk_services_drain(brk_services_t *self);

/* Answers every call in flight with `err` and `text`, and forgets them. */
void brk_services_fail_all(brk_services_t *self, int err, const char *text);

size_t brk_services_in_flight(const brk_services_t *self);

/* Calls fn for every offered service (its providers and the calls in flight to them), and for
 * every connection the broker has heard from (its participant), for status pages. */
typedef void brk_services_offer_fn(void *arg, const char *service, size_t providers,
                                   uint32_t in_flight);
typedef void brk_services_conn_fn(void *arg, const char *participant);
void brk_services_each(const brk_services_t *self, brk_services_offer_fn *offer,
                       brk_services_conn_fn *conn, void *arg);

void brk_services_stats(const brk_services_t *self, brk_services_stats_t *out);

#endif
