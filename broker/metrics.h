/*
 * metrics.h - the broker's counters, gauges and histograms, and the small HTTP server on the
 * broker's loop that shows them: /metrics (Prometheus text format 0.0.4), /healthz, /readyz and
 * an HTML status page at /.
 *
 * It owns a fixed registry of metric families (brk_metric_t), each with fixed label names; the
 * broker feeds them from the loop thread (no locks: everything runs on one libuv loop), and
 * registers callbacks that are asked at request time: sources (stats structs the modules already
 * keep, and gauges such as mailbox depth), readiness checks, and rows for the HTML page.
 *
 * Label values come from the network (service names, rule names, participant addresses), so
 * every family holds at most `max_series` label sets; a new value beyond that is counted under
 * "other" so that memory and scrape size stay bounded whatever peers send. Label values are cut
 * to 128 bytes and bytes that are not UTF-8 become '?'.
 *
 * The HTTP server reads one request per connection and closes it after the answer (Connection:
 * close). It never blocks the loop: answers are built in memory and written with uv_write.
 */
#ifndef BRK_METRICS_H
#define BRK_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "mailbox.h"
#include "proto.h"
#include "registry.h"
#include "services.h"
#include "store.h"
#include "tls_gateway.h"

/*
 * The families the broker feeds. Label names are fixed per family (see metrics.c's table and
 * README.md "Metrics and health"); pass label values in this order, NULL for none.
 */
typedef enum brk_metric {
    BRK_M_CALLS,               /* counter   amtsbote_service_calls_total{service} */
    BRK_M_CALL_ERRORS,         /* counter   amtsbote_service_errors_total{service,code} */
    BRK_M_CALL_LATENCY,        /* histogram amtsbote_service_call_duration_seconds{service} */
    BRK_M_CONNECTIONS,         /* counter   amtsbote_connections_accepted_total{transport} */
    BRK_M_TLS_HANDSHAKE_FAIL,  /* counter   amtsbote_tls_handshake_failures_total{reason} */
    BRK_M_POLICY_DENIALS,      /* counter   amtsbote_policy_denials_total{rule} */
    BRK_M_STORE_COMMIT,        /* histogram amtsbote_store_commit_duration_seconds */
    BRK_M_MAILBOX_DEPTH,       /* gauge     amtsbote_mailbox_depth{mailbox} */
    BRK_M_MAILBOX_OLDEST_AGE,  /* gauge     amtsbote_mailbox_oldest_age_seconds{mailbox} */
    BRK_M_PARTICIPANTS_ONLINE, /* gauge     amtsbote_participants_online */
    BRK_M__COUNT
} brk_metric_t;

typedef struct brk_metrics brk_metrics_t;

/* Default cap on label sets per family (services, mailboxes, rules, reasons tracked). */
#define BRK_METRICS_MAX_SERIES 64
/* The most HTTP connections open at once; more are accepted and closed at once. */
#define BRK_METRICS_MAX_CONNS 64
/* A connection that sends nothing for this long is closed. */
#define BRK_METRICS_IDLE_MS 5000
/* A request line plus headers longer than this gets 431. */
#define BRK_METRICS_MAX_HEADER 8192

/*
 * `max_series` caps the label sets of each family (0 = BRK_METRICS_MAX_SERIES). Returns NULL
 * when out of memory.
 */
brk_metrics_t *brk_metrics_new(size_t max_series);

/*
 * Stops the server (see brk_metrics_close) and frees everything. When HTTP handles are still
 * closing, the memory is freed from their close callbacks: run the loop once more afterwards
 * (as the broker's shutdown does anyway). Accepts NULL; nulls *self_p.
 */
void brk_metrics_destroy(brk_metrics_t **self_p);

/* ---- feeding (loop thread only) ---- */

/*
 * Adds `n` to counter `id` with label values `l1`, `l2` (NULL when the family has fewer
 * labels; e.g. BRK_M_CALL_ERRORS takes the service and ab_err_name(code)). Returns 0, AB_EINVAL
 * when `id` is not a counter or a needed label is missing, AB_ENOMEM.
 */
int brk_metrics_counter_add(brk_metrics_t *self, brk_metric_t id, const char *l1, const char *l2,
                            uint64_t n);

/*
 * Records `value` (seconds) in histogram `id` with label value `l1` (NULL when it has none).
 * Returns 0, AB_EINVAL (not a histogram, label missing, value NaN) or AB_ENOMEM.
 */
int brk_metrics_observe(brk_metrics_t *self, brk_metric_t id, const char *l1, double value);

/*
 * Sets gauge `id` for label value `l1` (NULL when it has none). A value folded into "other" (the
 * family is full) is added to it, so set such gauges after brk_metrics_gauge_clear(), once per
 * scrape. Returns as counter_add.
 */
int brk_metrics_gauge_set(brk_metrics_t *self, brk_metric_t id, const char *l1, double value);

/* Forgets every label set of gauge `id` (a source calls it before setting current values, so
 * that a mailbox that went away disappears). */
void brk_metrics_gauge_clear(brk_metrics_t *self, brk_metric_t id);

/* Current value of one series (for tests and the HTML page): counters and gauges their value,
 * histograms their count. 0 when there is no such series. */
double brk_metrics_value(const brk_metrics_t *self, brk_metric_t id, const char *l1,
                         const char *l2);

/* ---- callbacks asked at request time (loop thread) ---- */

/*
 * The stats structs the modules already keep. A source sets the `have_*` flag of each struct it
 * fills; the rest is not shown.
 */
typedef struct brk_metrics_stats {
    int have_services, have_proto, have_registry, have_tls, have_mailbox, have_store;
    brk_services_stats_t services;
    brk_proto_stats_t proto;
    brk_registry_stats_t registry;
    brk_tls_stats_t tls;
    brk_mailbox_stats_t mailbox;
    brk_store_stats_t store;
} brk_metrics_stats_t;

/*
 * Called at every scrape of /metrics and before the HTML page, before anything is written: fill
 * in `out` and/or call brk_metrics_gauge_clear()/brk_metrics_gauge_set() (mailbox depths,
 * participants online). Must not block.
 */
typedef void (*brk_metrics_source_fn)(void *arg, brk_metrics_t *m, brk_metrics_stats_t *out);

/*
 * Registers a source (at most 8). `arg` is borrowed. Returns 0, AB_EINVAL when full.
 */
int brk_metrics_add_source(brk_metrics_t *self, brk_metrics_source_fn fn, void *arg);

/*
 * A readiness check: returns 0 when the condition holds, else non-zero with a short reason in
 * `why` (may be left empty), e.g. "store writable" -> "commit failed: disk I/O error".
 */
typedef int (*brk_metrics_check_fn)(void *arg, char *why, size_t cap);

/*
 * Registers readiness check `name` (copied; at most 16 checks). /readyz answers 200 when all
 * hold, else 503 naming each that fails. Returns 0, AB_EINVAL (full, or no name) or AB_ENOMEM.
 */
int brk_metrics_add_check(brk_metrics_t *self, const char *name, brk_metrics_check_fn fn,
                          void *arg);

/* Rows of the HTML page, added by the page callback; everything is copied and HTML-escaped.
 * At most 500 rows per table are shown (the count of the rest is). */
typedef struct brk_metrics_page brk_metrics_page_t;
void brk_metrics_page_service(brk_metrics_page_t *p, const char *service, size_t providers,
                              uint64_t calls);
void brk_metrics_page_participant(brk_metrics_page_t *p, const char *participant);
void brk_metrics_page_mailbox(brk_metrics_page_t *p, const char *participant, uint64_t depth,
                              double oldest_age_s);

/* Called for every request of "/": add the rows that describe the broker now. */
typedef void (*brk_metrics_page_fn)(void *arg, brk_metrics_page_t *p);

/* Sets the page callback (one; NULL removes it). `arg` is borrowed. */
void brk_metrics_set_page(brk_metrics_t *self, brk_metrics_page_fn fn, void *arg);

/* ---- the HTTP server ---- */

/* brk_metrics_listen flag: allow an address other than loopback (an explicit operator choice). */
#define BRK_METRICS_PUBLIC 1

/*
 * Overrides the connection limits (before listen; 0 keeps the default): `max_conns` open at
 * once, `idle_ms` of silence before a connection is closed.
 */
void brk_metrics_set_limits(brk_metrics_t *self, size_t max_conns, uint64_t idle_ms);

/*
 * Serves HTTP on `addr` ("HOST:PORT", HOST an IPv4 address, "localhost" or "[IPv6]"; PORT 0
 * picks a free one) on `loop` (borrowed; must outlive the server). An address that is not
 * loopback is refused unless `flags` has BRK_METRICS_PUBLIC. Writes the bound "HOST:PORT" to
 * `bound` (may be NULL). Returns 0, or AB_EINVAL / AB_ESTATE (already listening) / AB_EIO
 * with the reason, naming the address, in `err`.
 */
int brk_metrics_listen(brk_metrics_t *self, uv_loop_t *loop, const char *addr, int flags,
                       char *bound, size_t cap, char *err, size_t errlen);

/* The port being served, 0 when not listening. */
int brk_metrics_port(const brk_metrics_t *self);

/*
 * Stops listening and closes every HTTP connection (their handles close asynchronously; the
 * loop must run for them to finish). Safe to call twice, or without listen.
 */
void brk_metrics_close(brk_metrics_t *self);

/*
 * Writes the Prometheus text exposition of everything (sources asked first) into a new buffer
 * (the caller's: free()), its length in *len. Returns NULL when out of memory. The server uses
 * it for /metrics; tests and `--export` style tools may call it directly.
 */
char *brk_metrics_render(brk_metrics_t *self, size_t *len);

#endif
