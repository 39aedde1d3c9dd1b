/*
 * quota.h - what one participant may use of the broker: requests per second (a token bucket),
 * calls in flight and TLS sessions at once.
 *
 * Each participant has the broker's defaults (rate_limit, rate_burst,
 * max_calls_per_participant, max_connections_per_participant) unless the policy's `limits:`
 * section sets its own (per participant or group). State is kept per participant, created on
 * first use and kept while it is used; once the table holds over a thousand participants, those
 * idle (nothing in flight, no session, bucket full) are dropped every 10 s, so that a call does
 * not allocate while the table stays bounded. Used on the loop thread only; does no I/O and
 * never logs: the caller answers, counts and logs with the reason it gets.
 */
#ifndef BRK_QUOTA_H
#define BRK_QUOTA_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "policy.h"

typedef struct brk_quota brk_quota_t;

/* Returns NULL when out of memory. `cfg` is borrowed. */
brk_quota_t *brk_quota_new(const brk_config_t *cfg);

/* NULL-safe, safe twice, nulls the pointer. */
void brk_quota_destroy(brk_quota_t **self_p);

/* The policy in force (borrowed; NULL: the defaults for everybody). Call again after a reload:
 * every participant's limits are looked up anew, its counts stay. */
void brk_quota_set_policy(brk_quota_t *self, ab_policy_t *policy);

/* A request of `participant` at `now_ms`: 0 when its bucket has a token (taken), or
 * AB_ERATE_LIMITED with the reason in `why` (names the participant and its rate), or AB_ENOMEM. */
int brk_quota_request(brk_quota_t *self, const char *participant, uint64_t now_ms, char *why,
                      size_t cap);

/* After a refusal for the rate: 1 when `participant`'s sessions were not paused within the last
 * `every_ms` (and notes `now_ms` as its pause), else 0. */
int brk_quota_pause_due(brk_quota_t *self, const char *participant, uint64_t now_ms,
                        uint64_t every_ms);

/* A call of `participant` starts: 0, or AB_ERATE_LIMITED (its calls in flight are at the
 * limit) with the reason in `why`, or AB_ENOMEM. Each 0 needs one brk_quota_call_end(). */
int brk_quota_call_begin(brk_quota_t *self, const char *participant, char *why, size_t cap);
void brk_quota_call_end(brk_quota_t *self, const char *participant);

/* A TLS session of `participant` is up: 0, or AB_ERATE_LIMITED (its sessions are at the limit)
 * with the reason, or AB_ENOMEM. Each 0 needs one brk_quota_conn_close(). */
int brk_quota_conn_open(brk_quota_t *self, const char *participant, char *why, size_t cap);
void brk_quota_conn_close(brk_quota_t *self, const char *participant);

typedef struct brk_quota_stats {
    uint64_t rate_limited;  /* requests refused by a bucket */
    uint64_t calls_limited; /* calls refused at the participant's calls in flight */
    uint64_t conns_limited; /* sessions refused at the participant's connections */
    size_t participants;    /* with state now */
    size_t online;          /* participants with at least one TLS session */
} brk_quota_stats_t;

void brk_quota_stats(const brk_quota_t *self, brk_quota_stats_t *out);

#endif
