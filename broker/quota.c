/*
 * quota.c - per-participant token buckets, calls in flight and TLS sessions.
 */
#include "quota.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amtsbote.h"
#include "uthash.h"
#include "wire.h"

/* Tokens are counted in thousandths of a request: a rate of R requests per second adds R of
 * them per millisecond, so the bucket needs no fractions. */
#define MILLI 1000u
/* Idle participants are dropped at most this often, once there are this many (below it the
 * table is small enough to keep). */
#define SWEEP_MS 10000u
#define SWEEP_MIN 1024u

typedef struct {
    char *key;
    uint64_t generation; /* of the policy its limits were looked up in */
    uint64_t rate, burst, calls_max, conns_max;
    uint64_t tokens; /* thousandths */
    uint64_t refilled_ms;
    uint64_t calls, conns;
    uint64_t paused_ms; /* the last pause of its sessions for the rate; 0: none */
    UT_hash_handle hh;
} s_part_t;

struct brk_quota {
    const brk_config_t *cfg;
    ab_policy_t *policy;
    uint64_t generation;
    uint64_t last_sweep;
    s_part_t *parts;
    brk_quota_stats_t st;
};

brk_quota_t *
brk_quota_new(const brk_config_t *cfg)
{
    brk_quota_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->cfg = cfg;
    self->generation = 1;
    return self;
}

static void
s_part_free(brk_quota_t *self, s_part_t *p)
{
    HASH_DEL(self->parts, p);
    free(p->key);
    free(p);
}

void
brk_quota_destroy(brk_quota_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    brk_quota_t *self = *self_p;
    s_part_t *p, *tmp;
    HASH_ITER(hh, self->parts, p, tmp)
    s_part_free(self, p);
    free(self);
    *self_p = NULL;
}

void
brk_quota_set_policy(brk_quota_t *self, ab_policy_t *policy)
{
    self->policy = policy;
    self->generation++;
}

/* The participant's limits: the policy's where it sets them, the broker's defaults elsewhere. */
static void
s_resolve(brk_quota_t *self, s_part_t *p)
{
    ab_policy_limits_t pl;
    ab_policy_limits(self->policy, p->key, &pl);
    const brk_config_t *cfg = self->cfg;
    p->rate = pl.rate ? pl.rate : cfg->rate_limit;
    p->burst = pl.burst ? pl.burst : (pl.rate || !cfg->rate_burst) ? p->rate : cfg->rate_burst;
    if (p->burst == 0)
        p->burst = 1;
    p->calls_max = pl.calls_in_flight ? pl.calls_in_flight : cfg->max_calls_per_participant;
    p->conns_max = pl.connections ? pl.connections : cfg->max_connections_per_participant;
    if (p->tokens > p->burst * MILLI)
        p->tokens = p->burst * MILLI;
    p->generation = self->generation;
}

/* The state of `participant`, created with a full bucket; NULL when out of memory. */
static s_part_t *
s_part(brk_quota_t *self, const char *participant, uint64_t now_ms)
{
    s_part_t *p = NULL;
    HASH_FIND_STR(self->parts, participant, p);
    if (!p) {
        p = calloc(1, sizeof *p);
        if (!p || !(p->key = strdup(participant))) {
            free(p);
            return NULL;
        }
        HASH_ADD_KEYPTR(hh, self->parts, p->key, strlen(p->key), p);
        p->refilled_ms = now_ms;
        p->tokens = UINT64_MAX; /* cut to the burst by s_resolve */
        p->generation = 0;
    }
    if (p->generation != self->generation)
        s_resolve(self, p);
    return p;
}

static int
s_idle(const s_part_t *p, uint64_t now_ms)
{
    if (p->calls || p->conns)
        return 0;
    if (!p->rate)
        return 1;
    uint64_t full = p->burst * MILLI;
    return p->tokens >= full || (now_ms - p->refilled_ms) * p->rate >= full - p->tokens;
}

/* Drops the state of participants that use nothing and whose bucket has filled up again. */
static void
s_sweep(brk_quota_t *self, uint64_t now_ms)
{
    if (HASH_COUNT(self->parts) < SWEEP_MIN || now_ms - self->last_sweep < SWEEP_MS)
        return;
    self->last_sweep = now_ms;
    s_part_t *p, *tmp;
    HASH_ITER(hh, self->parts, p, tmp)
    {
        if (s_idle(p, now_ms))
            s_part_free(self, p);
    }
}

/* A participant that holds nothing now keeps its state (its next call finds it without an
 * allocation) until the table is large and a sweep drops what is idle. */
static void
s_maybe_drop(brk_quota_t *self, s_part_t *p)
{
    (void)p;
    if (HASH_COUNT(self->parts) >= SWEEP_MIN)
        s_sweep(self, ab_now_ms());
}

int
brk_quota_request(brk_quota_t *self, const char *participant, uint64_t now_ms, char *why,
                  size_t cap)
{
    if (!self->cfg->rate_limit && !ab_policy_limit_count(self->policy))
        return 0; /* no bucket anywhere: nothing to count */
    s_part_t *p = s_part(self, participant, now_ms);
    if (!p)
        return AB_ENOMEM;
    if (!p->rate) {
        s_maybe_drop(self, p);
        return 0;
    }
    uint64_t full = p->burst * MILLI;
    if (now_ms > p->refilled_ms) {
        uint64_t add = (now_ms - p->refilled_ms) * p->rate;
        p->tokens = add >= full - (p->tokens < full ? p->tokens : full) ? full : p->tokens + add;
        p->refilled_ms = now_ms;
    }
    if (p->tokens >= MILLI) {
        p->tokens -= MILLI;
        s_sweep(self, now_ms);
        return 0;
    }
    self->st.rate_limited++;
    snprintf(why, cap,
             "%s sends more than its %llu requests per second (burst %llu); slow down and "
             "send again",
             participant, (unsigned long long)p->rate, (unsigned long long)p->burst);
    return AB_ERATE_LIMITED;
}

int
brk_quota_pause_due(brk_quota_t *self, const char *participant, uint64_t now_ms, uint64_t every_ms)
{
    s_part_t *p = NULL;
    HASH_FIND_STR(self->parts, participant, p);
    if (!p || (p->paused_ms && now_ms - p->paused_ms < every_ms))
        return 0;
    p->paused_ms = now_ms;
    return 1;
}

int
brk_quota_call_begin(brk_quota_t *self, const char *participant, char *why, size_t cap)
{
    s_part_t *p = s_part(self, participant, ab_now_ms());
    if (!p)
        return AB_ENOMEM;
    if (p->calls >= p->calls_max) {
        self->st.calls_limited++;
        snprintf(why, cap,
                 "%s has %llu calls in flight, its limit (max_calls_per_participant or the "
                 "policy's calls_in_flight); wait for answers and call again",
                 participant, (unsigned long long)p->calls);
        return AB_ERATE_LIMITED;
    }
    p->calls++;
    return 0;
}

void
brk_quota_call_end(brk_quota_t *self, const char *participant)
{
    s_part_t *p = NULL;
    HASH_FIND_STR(self->parts, participant, p);
    if (!p || !p->calls)
        return;
    p->calls--;
    s_maybe_drop(self, p);
}

int
brk_quota_conn_open(brk_quota_t *self, const char *participant, char *why, size_t cap)
{
    s_part_t *p = s_part(self, participant, ab_now_ms());
    if (!p)
        return AB_ENOMEM;
    if (p->conns >= p->conns_max) {
        self->st.conns_limited++;
        snprintf(why, cap,
                 "%s already has %llu connections, its limit (max_connections_per_participant "
                 "or the policy's connections)",
                 participant, (unsigned long long)p->conns);
        return AB_ERATE_LIMITED;
    }
    if (p->conns++ == 0)
        self->st.online++;
    return 0;
}

void
brk_quota_conn_close(brk_quota_t *self, const char *participant)
{
    s_part_t *p = NULL;
    HASH_FIND_STR(self->parts, participant, p);
    if (!p || !p->conns)
        return;
    if (--p->conns == 0)
        self->st.online--;
    s_maybe_drop(self, p);
}

void
brk_quota_stats(const brk_quota_t *self, brk_quota_stats_t *out)
{
    *out = self->st;
    out->participants = HASH_COUNT(self->parts);
}
