/*
 * gate.h - governance: binds the access policy (common/policy), the audit log (common/audit)
 * and the metrics (metrics) to the services' gate and to the broker's loop.
 *
 * Owns the loaded policy (swapped whole on SIGHUP, kept when the new file has an error), the
 * open audit log (one record per decision, flushed with one fsync per loop turn before the
 * turn's answers go out) and the metrics registry with its HTTP endpoint. The audit log is hashed
 * and written by the gate's writer thread. When the audit log cannot be written, the gate refuses
 * every further decision with UNAVAILABLE and /readyz says why: nothing is decided that is not
 * recorded.
 */
#ifndef BRK_GATE_H
#define BRK_GATE_H

#include <stddef.h>
#include <uv.h>

#include "config.h"
#include "metrics.h"
#include "services.h"

typedef struct brk_gate brk_gate_t;

/* Loads the policy (cfg->policy), opens the audit log (cfg->audit_dir, seals signed with
 * cfg->tls_key) and creates the metrics. Returns NULL with the reason (file:line:col for a
 * policy) in err. */
brk_gate_t *brk_gate_new(const brk_config_t *cfg, char *err, size_t errlen);

/* Serves the metrics on cfg->metrics, if set. Returns 0 or -1 with the reason in err. */
int brk_gate_listen(brk_gate_t *self, uv_loop_t *loop, char *err, size_t errlen);

/* The callbacks for brk_services_set_gate(); valid while the gate lives. */
const brk_services_gate_t *brk_gate_services(brk_gate_t *self);

/* A brk_registry_push_check_fn: the policy's `schema-push` of `package` (ctx: the gate). */
int brk_gate_push_check(void *ctx, const char *participant, const char *package, char *why,
                        size_t cap);

/* The policy in force (NULL without one); valid until the next brk_gate_reload(). */
struct ab_policy;
struct ab_policy *brk_gate_policy(brk_gate_t *self);

/* The metrics, for sources and checks the broker registers. */
brk_metrics_t *brk_gate_metrics(brk_gate_t *self);

/* How the broker holds its answers while their audit records are being written: `queued`
 * says how many answers are queued now, `release(arg, n)` sends the first n of them (SIZE_MAX:
 * all). Without this the log is written and synced on the loop. */
typedef size_t brk_gate_queued_fn(void *arg);
typedef void brk_gate_release_fn(void *arg, size_t upto);
void brk_gate_set_hold(brk_gate_t *self, uv_loop_t *loop, brk_gate_queued_fn *queued,
                       brk_gate_release_fn *release, void *arg);

/* At the end of a loop turn, with `queued` answers queued: returns 1 when they may go out now
 * (no audit log, or nothing to record), 0 when they must wait: a write and fsync of this turn's
 * records has started on the thread pool (or one is running), and `release` will be called
 * when they are on disk. A failed log is logged once; from then on decisions are refused. */
int brk_gate_flush(brk_gate_t *self, size_t queued);

/* With audit_background, answers are held while a write runs and this much waits for the next
 * one, or while a write has run this long: what a crash can lose stays bounded in bytes and
 * time when the disk is slow or the writer finds no idle CPU. */
#define BRK_AUDIT_BACKLOG_MAX (32u * 1024u * 1024u)
#define BRK_AUDIT_LAG_MAX_MS 100u

/* With audit_background: milliseconds until the queued records are due to be written (0: now),
 * UINT64_MAX when nothing waits; the loop's timer must fire by then and call brk_gate_flush(). */
uint64_t brk_gate_wait_ms(const brk_gate_t *self);

/* Shutdown: waits for a running write, then writes and syncs what is left, on this thread. */
void brk_gate_drain(brk_gate_t *self);

/* Shutdown: drains, stops the writer thread and closes its loop handle (the loop must run once
 * more for it to close); from then on every flush writes on the calling thread. Idempotent. */
void brk_gate_close(brk_gate_t *self);

/* SIGHUP: loads the policy file again; on an error keeps the old one and logs file:line:col.
 * Returns 0 when the new policy is in force, -1 otherwise. */
int brk_gate_reload(brk_gate_t *self);

/* Stops the HTTP endpoint, flushes and closes the audit log, frees the rest. NULL-safe. Run
 * the loop once more afterwards for the HTTP handles to close. */
void brk_gate_destroy(brk_gate_t **self_p);

#endif
