/*
 * metrics.c - metric families with bounded label sets, their Prometheus text, and the HTTP
 * server on the broker's loop (parsing by Debian's http-parser; see metrics.h).
 */
#include "metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <uthash.h>

#include "amtsbote.h"

#define MAX_LABEL 128   /* bytes of a label value kept */
#define FOLD_RESERVE 16 /* extra ("other", v2) sets a two-label family may hold */
#define MAX_SOURCES 8
#define MAX_CHECKS 16
#define MAX_PAGE_ROWS 500
#define LINGER_MS 1000 /* after the answer: wait this long for the client to close */
#define WRITE_MS 5000  /* an answer not taken by the client in this time is dropped */

typedef enum { K_COUNTER, K_GAUGE, K_HISTOGRAM } kind_t;

static const double s_latency_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                          0.25,  0.5,    1,     2.5,  5,     10,   30};
static const double s_commit_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                         0.05,   0.1,   0.25,   0.5,   1,    2.5};
#define NB(a) (sizeof(a) / sizeof((a)[0]))

typedef struct family_def {
    const char *name;
    const char *help;
    kind_t kind;
    int nlabels;
    const char *labels[2];
    const double *bounds;
    size_t nbounds;
} family_def_t;

/* Indexed by brk_metric_t. */
static const family_def_t s_defs[BRK_M__COUNT] = {
    [BRK_M_CALLS] = {"amtsbote_service_calls_total",
                     "Calls received, by service.",
                     K_COUNTER,
                     1,
                     {"service", NULL},
                     NULL,
                     0},
    [BRK_M_CALL_ERRORS] = {"amtsbote_service_errors_total",
                           "Calls answered with an error, by service and error code.",
                           K_COUNTER,
                           2,
                           {"service", "code"},
                           NULL,
                           0},
    [BRK_M_CALL_LATENCY] = {"amtsbote_service_call_duration_seconds",
                            "Time from a call's arrival to its answer, by service.",
                            K_HISTOGRAM,
                            1,
                            {"service", NULL},
                            s_latency_bounds,
                            NB(s_latency_bounds)},
    [BRK_M_CONNECTIONS] = {"amtsbote_connections_accepted_total",
                           "Client connections accepted, by transport.",
                           K_COUNTER,
                           1,
                           {"transport", NULL},
                           NULL,
                           0},
    [BRK_M_TLS_HANDSHAKE_FAIL] = {"amtsbote_tls_handshake_failures_total",
                                  "TLS handshakes refused, by reason.",
                                  K_COUNTER,
                                  1,
                                  {"reason", NULL},
                                  NULL,
                                  0},
    [BRK_M_POLICY_DENIALS] = {"amtsbote_policy_denials_total",
                              "Messages refused by the access policy, by deciding rule.",
                              K_COUNTER,
                              1,
                              {"rule", NULL},
                              NULL,
                              0},
    [BRK_M_STORE_COMMIT] = {"amtsbote_store_commit_duration_seconds",
                            "Duration of one store group commit.",
                            K_HISTOGRAM,
                            0,
                            {NULL, NULL},
                            s_commit_bounds,
                            NB(s_commit_bounds)},
    [BRK_M_MAILBOX_DEPTH] = {"amtsbote_mailbox_depth",
                             "Messages waiting, by mailbox.",
                             K_GAUGE,
                             1,
                             {"mailbox", NULL},
                             NULL,
                             0},
    [BRK_M_MAILBOX_OLDEST_AGE] = {"amtsbote_mailbox_oldest_age_seconds",
                                  "Age of the oldest waiting message, by mailbox.",
                                  K_GAUGE,
                                  1,
                                  {"mailbox", NULL},
                                  NULL,
                                  0},
    [BRK_M_PARTICIPANTS_ONLINE] = {"amtsbote_participants_online",
                                   "Participants with at least one open TLS session.",
                                   K_GAUGE,
                                   0,
                                   {NULL, NULL},
                                   NULL,
                                   0},
};

typedef struct series {
    UT_hash_handle hh;
    char *key; /* l1 '\0' l2 '\0' */
    size_t keylen;
    const char *l[2];
    uint64_t count;    /* counter value; histogram count */
    double value;      /* gauge value; histogram sum */
    uint64_t *buckets; /* histogram: per bound, not cumulative */
} series_t;

typedef struct family {
    series_t *map;
    size_t n;
} family_t;

typedef struct source {
    brk_metrics_source_fn fn;
    void *arg;
} source_t;

typedef struct check {
    char *name;
    brk_metrics_check_fn fn;
    void *arg;
} check_t;

/* A growing string; `oom` sticks once an allocation failed. */
typedef struct sb {
    char *p;
    size_t len, cap;
    int oom;
} sb_t;

typedef struct conn conn_t;

struct brk_metrics {
    family_t fam[BRK_M__COUNT];
    size_t max_series;
    source_t sources[MAX_SOURCES];
    size_t nsources;
    check_t checks[MAX_CHECKS];
    size_t nchecks;
    brk_metrics_page_fn page_fn;
    void *page_arg;
    uint64_t started_ns;
    /* server */
    uv_loop_t *loop;
    uv_tcp_t server;
    int listening;
    int port;
    size_t max_conns;
    uint64_t idle_ms;
    conn_t *conns; /* open connections, a doubly linked list */
    size_t nconns;
    size_t open_handles; /* handles whose close callback has not run */
    int destroying;
    uint64_t http_requests, http_refused;
    http_parser_settings settings;
};

/* ---------------------------------------------------------------- strings */

static void
s_sb_reserve(sb_t *b, size_t more)
{
    if (b->oom || b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return;
    }
    b->p = p;
    b->cap = cap;
}

static void
s_sb_add(sb_t *b, const char *s, size_t n)
{
    s_sb_reserve(b, n);
    if (b->oom)
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void
s_sb_str(sb_t *b, const char *s)
{
    s_sb_add(b, s, strlen(s));
}

static void s_sb_printf(sb_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
s_sb_printf(sb_t *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        s_sb_add(b, tmp, (size_t)n);
        return;
    }
    s_sb_reserve(b, (size_t)n);
    if (b->oom)
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/*
 * Copies at most `cap`-1 bytes of `in` to `out`, keeping whole UTF-8 sequences; a byte that does
 * not start a valid sequence becomes '?'. Returns the length written.
 */
static size_t
s_clean_utf8(const char *in, char *out, size_t cap)
{
    const unsigned char *s = (const unsigned char *)in;
    size_t o = 0;
    while (*s) {
        size_t n = 0;
        unsigned char c = s[0];
        if (c < 0x80)
            n = 1;
        else if (c >= 0xc2 && c <= 0xdf)
            n = 2;
        else if (c >= 0xe0 && c <= 0xef)
            n = 3;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 4;
        int ok = n > 0;
        for (size_t i = 1; ok && i < n; i++)
            ok = (s[i] & 0xc0) == 0x80;
        if (ok && n == 3 && ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0)))
            ok = 0; /* overlong, surrogate */
        if (ok && n == 4 && ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] >= 0x90)))
            ok = 0;
        if (!ok)
            n = 1;
        if (o + n >= cap)
            break;
        if (ok)
            memcpy(out + o, s, n);
        else
            out[o] = '?';
        o += n;
        s += n;
    }
    out[o] = '\0';
    return o;
}

/* A float as Prometheus reads it: shortest of %.15g / %.17g that reads back exactly. */
static void
s_fmt_double(char *buf, size_t cap, double v)
{
    if (isnan(v)) {
        snprintf(buf, cap, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, cap, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    snprintf(buf, cap, "%.15g", v);
    if (strtod(buf, NULL) != v)
        snprintf(buf, cap, "%.17g", v);
}

/* Label value escaping of the text format: backslash, double quote and line feed. */
static void
s_sb_label_value(sb_t *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            s_sb_add(b, "\\\\", 2);
        else if (*s == '"')
            s_sb_add(b, "\\\"", 2);
        else if (*s == '\n')
            s_sb_add(b, "\\n", 2);
        else
            s_sb_add(b, s, 1);
    }
}

static void
s_sb_html(sb_t *b, const char *raw)
{
    char clean[512];
    s_clean_utf8(raw ? raw : "", clean, sizeof clean);
    for (const char *s = clean; *s; s++) {
        switch (*s) {
        case '&':
            s_sb_str(b, "&amp;");
            break;
        case '<':
            s_sb_str(b, "&lt;");
            break;
        case '>':
            s_sb_str(b, "&gt;");
            break;
        case '"':
            s_sb_str(b, "&quot;");
            break;
        case '\'':
            s_sb_str(b, "&#39;");
            break;
        default:
            s_sb_add(b, s, 1);
        }
    }
}

/* ---------------------------------------------------------------- registry */

brk_metrics_t *
brk_metrics_new(size_t max_series)
{
    brk_metrics_t *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->max_series = max_series ? max_series : BRK_METRICS_MAX_SERIES;
    m->max_conns = BRK_METRICS_MAX_CONNS;
    m->idle_ms = BRK_METRICS_IDLE_MS;
    m->started_ns = uv_hrtime();
    return m;
}

static void
s_family_clear(family_t *f)
{
    series_t *s, *tmp;
    HASH_ITER(hh, f->map, s, tmp)
    {
        HASH_DEL(f->map, s);
        free(s->key);
        free(s->buckets);
        free(s);
    }
    f->n = 0;
}

static void
s_free(brk_metrics_t *m)
{
    for (int i = 0; i < BRK_M__COUNT; i++)
        s_family_clear(&m->fam[i]);
    for (size_t i = 0; i < m->nchecks; i++)
        free(m->checks[i].name);
    free(m);
}

void
brk_metrics_destroy(brk_metrics_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    brk_metrics_t *m = *self_p;
    *self_p = NULL;
    brk_metrics_close(m);
    if (m->open_handles > 0)
        m->destroying = 1; /* the last close callback frees */
    else
        s_free(m);
}

static series_t *
s_find(family_t *f, const char *key, size_t keylen)
{
    series_t *s = NULL;
    HASH_FIND(hh, f->map, key, keylen, s);
    return s;
}

static size_t
s_make_key(char *key, const char *l1, const char *l2)
{
    size_t n1 = strlen(l1), n2 = strlen(l2);
    memcpy(key, l1, n1 + 1);
    memcpy(key + n1 + 1, l2, n2 + 1);
    return n1 + n2 + 2;
}

/*
 * The series of family `id` for label values l1, l2 (cleaned and cut), created when new; beyond
 * the cap the first label becomes "other", and beyond cap + FOLD_RESERVE both do. Returns NULL
 * when out of memory or a needed label is missing.
 */
static series_t *
s_series(brk_metrics_t *m, brk_metric_t id, const char *l1, const char *l2)
{
    const family_def_t *d = &s_defs[id];
    family_t *f = &m->fam[id];
    char v1[MAX_LABEL + 1] = "", v2[MAX_LABEL + 1] = "";
    if (d->nlabels >= 1) {
        if (!l1)
            return NULL;
        s_clean_utf8(l1, v1, sizeof v1);
    }
    if (d->nlabels >= 2) {
        if (!l2)
            return NULL;
        s_clean_utf8(l2, v2, sizeof v2);
    }
    char key[2 * MAX_LABEL + 4];
    size_t keylen = s_make_key(key, v1, v2);
    series_t *s = s_find(f, key, keylen);
    if (s)
        return s;
    if (d->nlabels >= 1 && f->n >= m->max_series) {
        keylen = s_make_key(key, "other", v2);
        if ((s = s_find(f, key, keylen)) != NULL)
            return s;
        if (d->nlabels == 2 && f->n >= m->max_series + FOLD_RESERVE) {
            keylen = s_make_key(key, "other", "other");
            if ((s = s_find(f, key, keylen)) != NULL)
                return s;
        }
    }
    s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->key = malloc(keylen);
    if (s->key && d->kind == K_HISTOGRAM)
        s->buckets = calloc(d->nbounds, sizeof *s->buckets);
    if (!s->key || (d->kind == K_HISTOGRAM && !s->buckets)) {
        free(s->key);
        free(s);
        return NULL;
    }
    memcpy(s->key, key, keylen);
    s->keylen = keylen;
    s->l[0] = s->key;
    s->l[1] = s->key + strlen(s->key) + 1;
    HASH_ADD_KEYPTR(hh, f->map, s->key, s->keylen, s);
    f->n++;
    return s;
}

static int
s_check(const brk_metrics_t *m, brk_metric_t id, kind_t kind)
{
    return m && (int)id >= 0 && id < BRK_M__COUNT && s_defs[id].kind == kind;
}

int
brk_metrics_counter_add(brk_metrics_t *m, brk_metric_t id, const char *l1, const char *l2,
                        uint64_t n)
{
    if (!s_check(m, id, K_COUNTER))
        return AB_EINVAL;
    if ((s_defs[id].nlabels >= 1 && !l1) || (s_defs[id].nlabels >= 2 && !l2))
        return AB_EINVAL;
    series_t *s = s_series(m, id, l1, l2);
    if (!s)
        return AB_ENOMEM;
    s->count += n;
    return 0;
}

int
brk_metrics_observe(brk_metrics_t *m, brk_metric_t id, const char *l1, double value)
{
    if (!s_check(m, id, K_HISTOGRAM) || isnan(value) || (s_defs[id].nlabels >= 1 && !l1))
        return AB_EINVAL;
    series_t *s = s_series(m, id, l1, NULL);
    if (!s)
        return AB_ENOMEM;
    const family_def_t *d = &s_defs[id];
    size_t i = 0;
    while (i < d->nbounds && value > d->bounds[i])
        i++;
    if (i < d->nbounds)
        s->buckets[i]++;
    s->count++;
    s->value += value;
    return 0;
}

int
brk_metrics_gauge_set(brk_metrics_t *m, brk_metric_t id, const char *l1, double value)
{
    if (!s_check(m, id, K_GAUGE) || (s_defs[id].nlabels >= 1 && !l1))
        return AB_EINVAL;
    series_t *s = s_series(m, id, l1, NULL);
    if (!s)
        return AB_ENOMEM;
    /* a folded mailbox adds to "other" rather than overwriting another's value */
    if (s_defs[id].nlabels >= 1 && strcmp(s->l[0], "other") == 0 && strcmp(l1, "other") != 0)
        s->value += value;
    else
        s->value = value;
    return 0;
}

void
brk_metrics_gauge_clear(brk_metrics_t *m, brk_metric_t id)
{
    if (s_check(m, id, K_GAUGE))
        s_family_clear(&m->fam[id]);
}

double
brk_metrics_value(const brk_metrics_t *m, brk_metric_t id, const char *l1, const char *l2)
{
    if (!m || (int)id < 0 || id >= BRK_M__COUNT)
        return 0;
    char key[2 * MAX_LABEL + 4], v1[MAX_LABEL + 1] = "", v2[MAX_LABEL + 1] = "";
    if (s_defs[id].nlabels >= 1 && l1)
        s_clean_utf8(l1, v1, sizeof v1);
    if (s_defs[id].nlabels >= 2 && l2)
        s_clean_utf8(l2, v2, sizeof v2);
    size_t keylen = s_make_key(key, v1, v2);
    series_t *s = s_find((family_t *)&m->fam[id], key, keylen);
    if (!s)
        return 0;
    return s_defs[id].kind == K_GAUGE ? s->value : (double)s->count;
}

int
brk_metrics_add_source(brk_metrics_t *m, brk_metrics_source_fn fn, void *arg)
{
    if (!m || !fn || m->nsources >= MAX_SOURCES)
        return AB_EINVAL;
    m->sources[m->nsources++] = (source_t){fn, arg};
    return 0;
}

int
brk_metrics_add_check(brk_metrics_t *m, const char *name, brk_metrics_check_fn fn, void *arg)
{
    if (!m || !fn || !name || !*name || m->nchecks >= MAX_CHECKS)
        return AB_EINVAL;
    char *copy = strdup(name);
    if (!copy)
        return AB_ENOMEM;
    m->checks[m->nchecks++] = (check_t){copy, fn, arg};
    return 0;
}

void
brk_metrics_set_page(brk_metrics_t *m, brk_metrics_page_fn fn, void *arg)
{
    if (!m)
        return;
    m->page_fn = fn;
    m->page_arg = arg;
}

/* ---------------------------------------------------------------- exposition */

typedef struct stat_def {
    const char *name;
    const char *help;
    int gauge;
    size_t off;
    int is_size; /* size_t rather than uint64_t */
} stat_def_t;

#define U64(T, f, n, h)                                                                            \
    {                                                                                              \
        n, h, 0, offsetof(T, f), 0                                                                 \
    }
#define GSZ(T, f, n, h)                                                                            \
    {                                                                                              \
        n, h, 1, offsetof(T, f), 1                                                                 \
    }
#define G64(T, f, n, h)                                                                            \
    {                                                                                              \
        n, h, 1, offsetof(T, f), 0                                                                 \
    }

static const stat_def_t s_services_stats[] = {
    U64(brk_services_stats_t, calls, "amtsbote_calls_received_total", "CALLs received."),
    U64(brk_services_stats_t, replies, "amtsbote_replies_routed_total",
        "Answers routed back to callers."),
    U64(brk_services_stats_t, unknown_service, "amtsbote_calls_unknown_service_total",
        "Calls to a service nobody offers."),
    U64(brk_services_stats_t, deadline_exceeded, "amtsbote_calls_deadline_exceeded_total",
        "Calls whose deadline passed."),
    U64(brk_services_stats_t, provider_gone, "amtsbote_calls_provider_gone_total",
        "Calls whose provider went away."),
    U64(brk_services_stats_t, unavailable, "amtsbote_calls_unavailable_total",
        "Calls refused as unavailable."),
    U64(brk_services_stats_t, late_replies, "amtsbote_replies_late_total",
        "Answers for calls no longer pending, dropped."),
    U64(brk_services_stats_t, lost_replies, "amtsbote_replies_lost_total",
        "Answers whose caller had gone, dropped."),
    U64(brk_services_stats_t, schema_invalid, "amtsbote_schema_refused_total",
        "Calls and replies refused by the schema registry."),
    U64(brk_services_stats_t, forbidden, "amtsbote_calls_forbidden_total",
        "Calls, replies and offers refused by the access policy or a clearance."),
    U64(brk_services_stats_t, rate_limited, "amtsbote_calls_limited_total",
        "Calls refused RATE_LIMITED: the caller had its most calls in flight."),
    GSZ(brk_services_stats_t, in_flight, "amtsbote_calls_in_flight", "Calls pending now."),
    GSZ(brk_services_stats_t, connections, "amtsbote_connections", "Client connections open now."),
    GSZ(brk_services_stats_t, providers, "amtsbote_providers", "Provider offers registered now."),
};
static const stat_def_t s_proto_stats[] = {
    U64(brk_proto_stats_t, received, "amtsbote_messages_received_total", "Messages received."),
    U64(brk_proto_stats_t, sent, "amtsbote_messages_sent_total", "Messages sent."),
    U64(brk_proto_stats_t, malformed, "amtsbote_messages_malformed_total",
        "Messages refused as malformed."),
    U64(brk_proto_stats_t, too_large, "amtsbote_messages_too_large_total",
        "Messages refused as too large."),
    U64(brk_proto_stats_t, no_identity, "amtsbote_messages_no_identity_total",
        "Messages without an authenticated identity, dropped."),
    U64(brk_proto_stats_t, unroutable, "amtsbote_messages_unroutable_total",
        "Sends to a connection that is gone."),
    U64(brk_proto_stats_t, queue_full, "amtsbote_messages_queue_full_total",
        "Sends refused by the high-water mark."),
    U64(brk_proto_stats_t, rate_limited, "amtsbote_messages_rate_limited_total",
        "Requests refused RATE_LIMITED by their participant's rate."),
};
static const stat_def_t s_registry_stats[] = {
    U64(brk_registry_stats_t, validated, "amtsbote_payloads_validated_total",
        "Payloads checked against a registered schema."),
    U64(brk_registry_stats_t, invalid, "amtsbote_payloads_invalid_total",
        "Payloads refused by their schema."),
    GSZ(brk_registry_stats_t, files, "amtsbote_schema_files", "Registered schema files."),
    GSZ(brk_registry_stats_t, types, "amtsbote_schema_types",
        "Messages, enums and services in the schema index."),
};
static const stat_def_t s_mailbox_stats[] = {
    U64(brk_mailbox_stats_t, accepted, "amtsbote_messages_accepted_total",
        "SENDs stored and answered ACCEPTED (after their commit)."),
    U64(brk_mailbox_stats_t, duplicates, "amtsbote_messages_duplicate_total",
        "SENDs of a message id already accepted: accepted again, nothing stored."),
    U64(brk_mailbox_stats_t, delivered, "amtsbote_deliveries_total",
        "Messages and receipts delivered (redeliveries included)."),
    U64(brk_mailbox_stats_t, redelivered, "amtsbote_redeliveries_total",
        "Deliveries that were not the first attempt."),
    U64(brk_mailbox_stats_t, acked, "amtsbote_messages_acknowledged_total",
        "Messages acknowledged by their recipient."),
    U64(brk_mailbox_stats_t, expired, "amtsbote_messages_expired_total",
        "Messages whose time to live ended before an acknowledgement."),
    U64(brk_mailbox_stats_t, dead_letters, "amtsbote_dead_letters_total",
        "Messages delivered max_deliveries times without an acknowledgement."),
    U64(brk_mailbox_stats_t, damaged, "amtsbote_store_records_damaged_total",
        "Stored records whose checksum did not match: reported, not delivered."),
    U64(brk_mailbox_stats_t, mailbox_full, "amtsbote_mailbox_full_total",
        "SENDs refused because the recipient's mailbox was at its quota."),
    U64(brk_mailbox_stats_t, unavailable, "amtsbote_store_unavailable_total",
        "SENDs and PUBLISHes answered UNAVAILABLE because the store could not write."),
    U64(brk_mailbox_stats_t, published, "amtsbote_events_published_total", "PUBLISHes accepted."),
    U64(brk_mailbox_stats_t, events_delivered, "amtsbote_events_delivered_total",
        "EVENTs sent to subscribers."),
    U64(brk_mailbox_stats_t, events_dropped, "amtsbote_events_dropped_total",
        "EVENTs for ephemeral subscribers dropped because their queue was full."),
    GSZ(brk_mailbox_stats_t, waiting, "amtsbote_mailbox_messages",
        "Messages waiting in mailboxes (in flight included)."),
    G64(brk_mailbox_stats_t, waiting_bytes, "amtsbote_mailbox_bytes",
        "Payload bytes of the messages waiting in mailboxes."),
    GSZ(brk_mailbox_stats_t, receipts_waiting, "amtsbote_mailbox_receipts",
        "Receipts waiting for their senders."),
    GSZ(brk_mailbox_stats_t, in_flight, "amtsbote_deliveries_in_flight",
        "Deliveries sent and not yet acknowledged."),
    GSZ(brk_mailbox_stats_t, mailboxes, "amtsbote_mailboxes", "Mailboxes the broker knows."),
    GSZ(brk_mailbox_stats_t, durable_subscriptions, "amtsbote_subscriptions_durable",
        "Durable subscriptions."),
    GSZ(brk_mailbox_stats_t, ephemeral_subscriptions, "amtsbote_subscriptions_ephemeral",
        "Ephemeral subscriptions of connected clients."),
    GSZ(brk_mailbox_stats_t, events_kept, "amtsbote_events_kept",
        "Events kept for durable subscriptions."),
    G64(brk_mailbox_stats_t, cache_bytes, "amtsbote_payload_cache_bytes",
        "Bytes of waiting payloads also kept in memory."),
    GSZ(brk_mailbox_stats_t, store_failed, "amtsbote_store_failed",
        "1 while the store cannot write (SEND and PUBLISH get UNAVAILABLE)."),
};
static const stat_def_t s_store_stats[] = {
    U64(brk_store_stats_t, commits, "amtsbote_store_commits_total",
        "Group commits (one per loop turn with writes)."),
    U64(brk_store_stats_t, rollbacks, "amtsbote_store_rollbacks_total",
        "Turns rolled back because a write or the commit failed."),
    G64(brk_store_stats_t, commit_ms_max, "amtsbote_store_commit_milliseconds_max",
        "The longest commit so far."),
    U64(brk_store_stats_t, writes, "amtsbote_store_writes_total", "Rows written."),
    U64(brk_store_stats_t, reads, "amtsbote_store_reads_total",
        "Records read back for a delivery (not in the payload cache)."),
};
static const stat_def_t s_tls_stats[] = {
    U64(brk_tls_stats_t, accepted, "amtsbote_tls_handshakes_accepted_total",
        "TLS handshakes completed with a valid identity."),
    U64(brk_tls_stats_t, refused, "amtsbote_tls_handshakes_refused_total",
        "TLS handshakes refused."),
    G64(brk_tls_stats_t, sessions, "amtsbote_tls_sessions", "TLS sessions open now."),
};

static void
s_render_stats(sb_t *b, const stat_def_t *defs, size_t n, const void *base)
{
    for (size_t i = 0; i < n; i++) {
        const stat_def_t *d = &defs[i];
        const char *p = (const char *)base + d->off;
        uint64_t v;
        if (d->is_size) {
            size_t z;
            memcpy(&z, p, sizeof z);
            v = z;
        } else {
            memcpy(&v, p, sizeof v);
        }
        s_sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", d->name, d->help, d->name,
                    d->gauge ? "gauge" : "counter", d->name, (unsigned long long)v);
    }
}

static void
s_collect(brk_metrics_t *m, brk_metrics_stats_t *st)
{
    memset(st, 0, sizeof *st);
    for (size_t i = 0; i < m->nsources; i++)
        m->sources[i].fn(m->sources[i].arg, m, st);
}

/* name{labels[,le="x"]} */
static void
s_sb_series_name(sb_t *b, const char *name, const char *suffix, const family_def_t *d,
                 const series_t *s, const char *le)
{
    s_sb_str(b, name);
    s_sb_str(b, suffix);
    if (d->nlabels == 0 && !le)
        return;
    s_sb_add(b, "{", 1);
    for (int i = 0; i < d->nlabels; i++) {
        if (i)
            s_sb_add(b, ",", 1);
        s_sb_str(b, d->labels[i]);
        s_sb_add(b, "=\"", 2);
        s_sb_label_value(b, s->l[i]);
        s_sb_add(b, "\"", 1);
    }
    if (le)
        s_sb_printf(b, "%sle=\"%s\"", d->nlabels ? "," : "", le);
    s_sb_add(b, "}", 1);
}

static void
s_render_family(sb_t *b, const family_def_t *d, const family_t *f)
{
    static const char *types[] = {"counter", "gauge", "histogram"};
    s_sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", d->name, d->help, d->name, types[d->kind]);
    if (d->nlabels == 0 && f->n == 0) {
        /* an unlabelled family always has its one series, zero until fed */
        if (d->kind != K_HISTOGRAM) {
            s_sb_printf(b, "%s 0\n", d->name);
            return;
        }
        for (size_t i = 0; i < d->nbounds; i++) {
            char le[40];
            s_fmt_double(le, sizeof le, d->bounds[i]);
            s_sb_printf(b, "%s_bucket{le=\"%s\"} 0\n", d->name, le);
        }
        s_sb_printf(b, "%s_bucket{le=\"+Inf\"} 0\n%s_sum 0\n%s_count 0\n", d->name, d->name,
                    d->name);
        return;
    }
    for (const series_t *s = f->map; s; s = s->hh.next) {
        char num[40];
        if (d->kind == K_COUNTER) {
            s_sb_series_name(b, d->name, "", d, s, NULL);
            s_sb_printf(b, " %llu\n", (unsigned long long)s->count);
        } else if (d->kind == K_GAUGE) {
            s_sb_series_name(b, d->name, "", d, s, NULL);
            s_fmt_double(num, sizeof num, s->value);
            s_sb_printf(b, " %s\n", num);
        } else {
            uint64_t cum = 0;
            for (size_t i = 0; i < d->nbounds; i++) {
                char le[40];
                cum += s->buckets[i];
                s_fmt_double(le, sizeof le, d->bounds[i]);
                s_sb_series_name(b, d->name, "_bucket", d, s, le);
                s_sb_printf(b, " %llu\n", (unsigned long long)cum);
            }
            s_sb_series_name(b, d->name, "_bucket", d, s, "+Inf");
            s_sb_printf(b, " %llu\n", (unsigned long long)s->count);
            s_sb_series_name(b, d->name, "_sum", d, s, NULL);
            s_fmt_double(num, sizeof num, s->value);
            s_sb_printf(b, " %s\n", num);
            s_sb_series_name(b, d->name, "_count", d, s, NULL);
            s_sb_printf(b, " %llu\n", (unsigned long long)s->count);
        }
    }
}

char *
brk_metrics_render(brk_metrics_t *m, size_t *len)
{
    brk_metrics_stats_t st;
    s_collect(m, &st);
    sb_t b = {0};
    s_sb_reserve(&b, 16384);
    s_sb_printf(&b,
                "# HELP amtsbote_build_info The broker's version.\n"
                "# TYPE amtsbote_build_info gauge\n"
                "amtsbote_build_info{version=\"%s\"} 1\n",
                AMTSBOTE_VERSION);
    s_sb_printf(&b,
                "# HELP amtsbote_uptime_seconds Seconds since the broker started.\n"
                "# TYPE amtsbote_uptime_seconds gauge\namtsbote_uptime_seconds %.3f\n",
                (double)(uv_hrtime() - m->started_ns) / 1e9);
    for (int i = 0; i < BRK_M__COUNT; i++)
        s_render_family(&b, &s_defs[i], &m->fam[i]);
    if (st.have_services)
        s_render_stats(&b, s_services_stats, NB(s_services_stats), &st.services);
    if (st.have_proto)
        s_render_stats(&b, s_proto_stats, NB(s_proto_stats), &st.proto);
    if (st.have_registry)
        s_render_stats(&b, s_registry_stats, NB(s_registry_stats), &st.registry);
    if (st.have_tls)
        s_render_stats(&b, s_tls_stats, NB(s_tls_stats), &st.tls);
    if (st.have_mailbox)
        s_render_stats(&b, s_mailbox_stats, NB(s_mailbox_stats), &st.mailbox);
    if (st.have_store)
        s_render_stats(&b, s_store_stats, NB(s_store_stats), &st.store);
    s_sb_printf(&b,
                "# HELP amtsbote_metrics_http_requests_total Requests to the metrics server.\n"
                "# TYPE amtsbote_metrics_http_requests_total counter\n"
                "amtsbote_metrics_http_requests_total %llu\n"
                "# HELP amtsbote_metrics_http_refused_total Connections to the metrics server "
                "closed at once (too many open).\n"
                "# TYPE amtsbote_metrics_http_refused_total counter\n"
                "amtsbote_metrics_http_refused_total %llu\n",
                (unsigned long long)m->http_requests, (unsigned long long)m->http_refused);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

/* ---------------------------------------------------------------- readiness and page */

/* Runs every check; writes one line per check to `b`. Returns 1 when all hold. */
static int
s_ready(brk_metrics_t *m, sb_t *b, int html)
{
    int all = 1;
    for (size_t i = 0; i < m->nchecks; i++) {
        char why[256] = "";
        int bad = m->checks[i].fn(m->checks[i].arg, why, sizeof why) != 0;
        why[sizeof why - 1] = '\0';
        all &= !bad;
        if (html) {
            s_sb_str(b, bad ? "<li class=\"bad\">FAIL " : "<li>ok ");
            s_sb_html(b, m->checks[i].name);
            if (bad && why[0]) {
                s_sb_str(b, ": ");
                s_sb_html(b, why);
            }
            s_sb_str(b, "</li>\n");
        } else {
            char name[256], reason[256];
            s_clean_utf8(m->checks[i].name, name, sizeof name);
            s_clean_utf8(why, reason, sizeof reason);
            for (char *p = reason; *p; p++)
                if (*p == '\n' || *p == '\r')
                    *p = ' ';
            s_sb_printf(b, "%s: %s%s%s\n", bad ? "failed" : "ok", name, bad && *reason ? ": " : "",
                        bad ? reason : "");
        }
    }
    return all;
}

struct brk_metrics_page {
    sb_t rows[3];
    size_t n[3];
};

static int
s_page_row(brk_metrics_page_t *p, int t)
{
    if (!p)
        return 0;
    return ++p->n[t] <= MAX_PAGE_ROWS;
}

void
brk_metrics_page_service(brk_metrics_page_t *p, const char *service, size_t providers,
                         uint64_t calls)
{
    if (!s_page_row(p, 0))
        return;
    s_sb_str(&p->rows[0], "<tr><td>");
    s_sb_html(&p->rows[0], service);
    s_sb_printf(&p->rows[0], "</td><td>%zu</td><td>%llu</td></tr>\n", providers,
                (unsigned long long)calls);
}

void
brk_metrics_page_participant(brk_metrics_page_t *p, const char *participant)
{
    if (!s_page_row(p, 1))
        return;
    s_sb_str(&p->rows[1], "<li>");
    s_sb_html(&p->rows[1], participant);
    s_sb_str(&p->rows[1], "</li>\n");
}

void
brk_metrics_page_mailbox(brk_metrics_page_t *p, const char *participant, uint64_t depth,
                         double oldest_age_s)
{
    if (!s_page_row(p, 2))
        return;
    s_sb_str(&p->rows[2], "<tr><td>");
    s_sb_html(&p->rows[2], participant);
    s_sb_printf(&p->rows[2], "</td><td>%llu</td><td>%.0f s</td></tr>\n", (unsigned long long)depth,
                oldest_age_s);
}

static void
s_page_section(sb_t *b, const char *title, const char *head, const brk_metrics_page_t *p, int t)
{
    s_sb_printf(b, "<h2>%s (%zu)</h2>\n", title, p->n[t]);
    if (p->n[t] == 0) {
        s_sb_str(b, "<p>none</p>\n");
        return;
    }
    s_sb_str(b, head ? "<table>\n" : "<ul>\n");
    if (head)
        s_sb_str(b, head);
    if (p->rows[t].p)
        s_sb_add(b, p->rows[t].p, p->rows[t].len);
    s_sb_str(b, head ? "</table>\n" : "</ul>\n");
    if (p->n[t] > MAX_PAGE_ROWS)
        s_sb_printf(b, "<p>and %zu more</p>\n", p->n[t] - MAX_PAGE_ROWS);
}

static char *
s_render_page(brk_metrics_t *m, size_t *len)
{
    brk_metrics_stats_t st;
    s_collect(m, &st);
    brk_metrics_page_t page;
    memset(&page, 0, sizeof page);
    if (m->page_fn)
        m->page_fn(m->page_arg, &page);
    sb_t checks = {0};
    int ready = s_ready(m, &checks, 1);
    sb_t b = {0};
    s_sb_str(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                 "<title>Amtsbote broker</title>\n<style>body{font-family:sans-serif;margin:2em}"
                 "table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 8px;"
                 "text-align:left}.bad{color:#b00}</style></head><body>\n"
                 "<h1>Amtsbote broker</h1>\n");
    s_sb_printf(&b, "<p>version %s, up %llu s, <span%s>%s</span></p>\n", AMTSBOTE_VERSION,
                (unsigned long long)((uv_hrtime() - m->started_ns) / 1000000000ull),
                ready ? "" : " class=\"bad\"", ready ? "ready" : "NOT READY");
    if (m->nchecks) {
        s_sb_str(&b, "<ul>\n");
        if (checks.p)
            s_sb_add(&b, checks.p, checks.len);
        s_sb_str(&b, "</ul>\n");
    }
    if (st.have_services)
        s_sb_printf(&b, "<p>%zu connections, %zu calls in flight, %llu calls received</p>\n",
                    st.services.connections, st.services.in_flight,
                    (unsigned long long)st.services.calls);
    s_page_section(&b, "Services", "<tr><th>Service</th><th>Providers</th><th>Calls</th></tr>\n",
                   &page, 0);
    s_page_section(&b, "Participants online", NULL, &page, 1);
    s_page_section(&b, "Mailbox backlogs",
                   "<tr><th>Mailbox</th><th>Waiting</th><th>Oldest</th></tr>\n", &page, 2);
    s_sb_str(&b, "<p><a href=\"/metrics\">/metrics</a> <a href=\"/healthz\">/healthz</a> "
                 "<a href=\"/readyz\">/readyz</a></p>\n</body></html>\n");
    int oom = b.oom || checks.oom;
    for (int i = 0; i < 3; i++) {
        oom |= page.rows[i].oom;
        free(page.rows[i].p);
    }
    free(checks.p);
    if (oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

/* ---------------------------------------------------------------- HTTP server */

enum { C_READING, C_WRITING, C_DRAINING, C_CLOSING };

struct conn {
    brk_metrics_t *m;
    conn_t *prev, *next;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wr;
    uv_shutdown_t sd;
    http_parser parser;
    int state;
    int handles; /* open handles of this connection */
    int headers_done;
    int too_large;
    int eof;            /* the client has closed its side */
    size_t header_size; /* URL, names and values so far */
    size_t bytes_before_headers;
    size_t url_len;
    char *out;
    char url[BRK_METRICS_MAX_HEADER + 1];
    char rbuf[4096];
};

static void
s_handle_closed(brk_metrics_t *m)
{
    if (--m->open_handles == 0 && m->destroying)
        s_free(m);
}

static void
s_conn_on_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    if (--c->handles > 0)
        return;
    brk_metrics_t *m = c->m;
    free(c->out);
    free(c);
    s_handle_closed(m);
}

static void
s_conn_close(conn_t *c)
{
    if (c->state == C_CLOSING)
        return;
    c->state = C_CLOSING;
    brk_metrics_t *m = c->m;
    if (c->prev)
        c->prev->next = c->next;
    else
        m->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    m->nconns--;
    uv_close((uv_handle_t *)&c->tcp, s_conn_on_closed);
    uv_close((uv_handle_t *)&c->timer, s_conn_on_closed);
}

static void
s_conn_on_timer(uv_timer_t *t)
{
    s_conn_close(t->data);
}

static void
s_conn_on_shutdown(uv_shutdown_t *req, int status)
{
    conn_t *c = req->data;
    if (c->state == C_CLOSING)
        return;
    if (status < 0 || c->eof) {
        s_conn_close(c);
        return;
    }
    /* wait for the client to close (reading and discarding), at most LINGER_MS */
    c->state = C_DRAINING;
    uv_timer_start(&c->timer, s_conn_on_timer, LINGER_MS, 0);
}

static void
s_conn_on_write(uv_write_t *req, int status)
{
    conn_t *c = req->data;
    if (c->state == C_CLOSING)
        return;
    if (status < 0 || uv_shutdown(&c->sd, (uv_stream_t *)&c->tcp, s_conn_on_shutdown) != 0)
        s_conn_close(c);
}

/* Queues the answer and stops reading requests; the connection closes after it. */
static void
s_respond(conn_t *c, int status, const char *reason, const char *ctype, const char *extra,
          char *body, size_t body_len)
{
    int head_only = c->headers_done && c->parser.method == HTTP_HEAD;
    sb_t b = {0};
    s_sb_printf(&b,
                "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                "Connection: close\r\n%s\r\n",
                status, reason, ctype, body_len, extra ? extra : "");
    if (!head_only && body_len)
        s_sb_add(&b, body, body_len);
    free(body);
    if (HTTP_PARSER_ERRNO(&c->parser) == HPE_OK)
        http_parser_pause(&c->parser, 1); /* read nothing more of this request */
    if (b.oom) {
        free(b.p);
        s_conn_close(c);
        return;
    }
    c->out = b.p;
    c->state = C_WRITING;
    c->wr.data = c;
    c->sd.data = c;
    uv_timer_start(&c->timer, s_conn_on_timer, WRITE_MS, 0);
    uv_buf_t buf = uv_buf_init(c->out, (unsigned)b.len);
    if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, &buf, 1, s_conn_on_write) != 0)
        s_conn_close(c);
}

static void
s_respond_text(conn_t *c, int status, const char *reason, const char *extra, const char *text)
{
    char *body = strdup(text);
    if (!body) {
        s_conn_close(c);
        return;
    }
    s_respond(c, status, reason, "text/plain; charset=utf-8", extra, body, strlen(text));
}

static void
s_route(conn_t *c)
{
    brk_metrics_t *m = c->m;
    m->http_requests++;
    if (c->parser.method != HTTP_GET && c->parser.method != HTTP_HEAD) {
        s_respond_text(c, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n",
                       "method not allowed: use GET or HEAD\n");
        return;
    }
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(c->url, c->url_len, 0, &u) != 0) {
        s_respond_text(c, 400, "Bad Request", NULL, "bad request: malformed URL\n");
        return;
    }
    const char *path = "/";
    size_t plen = 1;
    if (u.field_set & (1 << UF_PATH)) {
        path = c->url + u.field_data[UF_PATH].off;
        plen = u.field_data[UF_PATH].len;
    }
#define IS(p) (plen == strlen(p) && memcmp(path, p, plen) == 0)
    size_t len = 0;
    char *body;
    if (IS("/metrics")) {
        if (!(body = brk_metrics_render(m, &len))) {
            s_respond_text(c, 500, "Internal Server Error", NULL, "out of memory\n");
            return;
        }
        s_respond(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", NULL, body, len);
    } else if (IS("/healthz")) {
        s_respond_text(c, 200, "OK", NULL, "ok\n");
    } else if (IS("/readyz")) {
        sb_t b = {0};
        sb_t lines = {0};
        int ready = s_ready(m, &lines, 0);
        s_sb_str(&b, ready ? "ready\n" : "not ready\n");
        if (lines.p)
            s_sb_add(&b, lines.p, lines.len);
        free(lines.p);
        if (b.oom || lines.oom) {
            free(b.p);
            s_respond_text(c, 500, "Internal Server Error", NULL, "out of memory\n");
            return;
        }
        s_respond(c, ready ? 200 : 503, ready ? "OK" : "Service Unavailable",
                  "text/plain; charset=utf-8", NULL, b.p, b.len);
    } else if (IS("/")) {
        if (!(body = s_render_page(m, &len))) {
            s_respond_text(c, 500, "Internal Server Error", NULL, "out of memory\n");
            return;
        }
        s_respond(c, 200, "OK", "text/html; charset=utf-8",
                  "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n",
                  body, len);
    } else {
        s_respond_text(c, 404, "Not Found", NULL, "not found\n");
    }
#undef IS
}

static int
s_grow_header(conn_t *c, size_t len)
{
    c->header_size += len;
    if (c->header_size > BRK_METRICS_MAX_HEADER) {
        c->too_large = 1;
        return -1;
    }
    return 0;
}

static int
s_on_url(http_parser *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (s_grow_header(c, len) != 0)
        return -1;
    memcpy(c->url + c->url_len, at, len); /* fits: url_len <= header_size <= the limit */
    c->url_len += len;
    c->url[c->url_len] = '\0';
    return 0;
}

static int
s_on_header_data(http_parser *p, const char *at, size_t len)
{
    (void)at;
    /* plus the ": " and CRLF that the parser does not pass on */
    return s_grow_header(p->data, len + 2);
}

static int
s_on_headers_complete(http_parser *p)
{
    conn_t *c = p->data;
    c->headers_done = 1;
    uv_timer_stop(&c->timer);
    s_route(c);
    return 0;
}

static void
s_conn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    conn_t *c = h->data;
    *buf = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

static void
s_conn_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = st->data;
    if (nread == 0 || c->state == C_CLOSING)
        return;
    if (nread < 0) {
        /* A client may close its sending side after the request: the answer still goes out. A
         * request cut short gets no answer. */
        c->eof = 1;
        if (nread != UV_EOF || c->state != C_WRITING)
            s_conn_close(c);
        return;
    }
    if (c->state != C_READING)
        return; /* after the answer: discard */
    uv_timer_start(&c->timer, s_conn_on_timer, c->m->idle_ms, 0);
    c->bytes_before_headers += (size_t)nread;
    size_t n = http_parser_execute(&c->parser, &c->m->settings, buf->base, (size_t)nread);
    if (c->state != C_READING)
        return; /* answered from a callback */
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (c->too_large || e == HPE_HEADER_OVERFLOW ||
        (e == HPE_OK && c->bytes_before_headers > 2 * BRK_METRICS_MAX_HEADER)) {
        s_respond_text(c, 431, "Request Header Fields Too Large", NULL,
                       "request header fields too large (limit 8 KiB)\n");
    } else if (e != HPE_OK || n != (size_t)nread) {
        char msg[128];
        snprintf(msg, sizeof msg, "bad request: %s\n", http_errno_name(e));
        s_respond_text(c, 400, "Bad Request", NULL, msg);
    }
}

static void
s_refused_on_closed(uv_handle_t *h)
{
    brk_metrics_t *m = h->data;
    free(h);
    s_handle_closed(m);
}

static void
s_on_connection(uv_stream_t *server, int status)
{
    brk_metrics_t *m = server->data;
    if (status < 0)
        return;
    if (m->nconns >= m->max_conns) {
        /* accept and close at once, so that the backlog does not hold it */
        uv_tcp_t *t = malloc(sizeof *t);
        if (!t)
            return;
        uv_tcp_init(m->loop, t);
        t->data = m;
        m->open_handles++;
        uv_accept(server, (uv_stream_t *)t);
        m->http_refused++;
        uv_close((uv_handle_t *)t, s_refused_on_closed);
        return;
    }
    conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->m = m;
    uv_tcp_init(m->loop, &c->tcp);
    uv_timer_init(m->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles = 2;
    m->open_handles++; /* one for the pair: counted down when both are closed */
    c->next = m->conns;
    if (m->conns)
        m->conns->prev = c;
    m->conns = c;
    m->nconns++;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, s_conn_alloc, s_conn_on_read) != 0) {
        s_conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, s_conn_on_timer, m->idle_ms, 0);
}

void
brk_metrics_set_limits(brk_metrics_t *m, size_t max_conns, uint64_t idle_ms)
{
    if (!m)
        return;
    if (max_conns)
        m->max_conns = max_conns;
    if (idle_ms)
        m->idle_ms = idle_ms;
}

static void
s_server_on_closed(uv_handle_t *h)
{
    s_handle_closed(h->data);
}

int
brk_metrics_listen(brk_metrics_t *m, uv_loop_t *loop, const char *addr, int flags, char *bound,
                   size_t cap, char *err, size_t errlen)
{
    if (!m || !loop || !addr) {
        snprintf(err, errlen, "metrics: no address");
        return AB_EINVAL;
    }
    if (m->loop || m->destroying) { /* one listen per metrics object */
        snprintf(err, errlen, "metrics: already listening");
        return AB_ESTATE;
    }
    const char *colon = strrchr(addr, ':');
    char host[64];
    if (!colon || colon == addr || (size_t)(colon - addr) >= sizeof host || !colon[1]) {
        snprintf(err, errlen, "metrics address '%s' is not HOST:PORT", addr);
        return AB_EINVAL;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535) {
        snprintf(err, errlen, "metrics address '%s': port '%s' is not 0-65535", addr, colon + 1);
        return AB_EINVAL;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    int loopback = 0, v6 = 0;
    size_t hl = strlen(host);
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        memmove(host, host + 1, hl - 1);
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
        if (uv_ip6_addr(host, (int)port, a6) != 0) {
            snprintf(err, errlen, "metrics address '%s': '%s' is not an IPv6 address", addr, host);
            return AB_EINVAL;
        }
        loopback = IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr);
        v6 = 1;
    } else {
        if (strcmp(host, "localhost") == 0)
            snprintf(host, sizeof host, "127.0.0.1");
        struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
        if (uv_ip4_addr(host, (int)port, a4) != 0) {
            snprintf(err, errlen, "metrics address '%s': '%s' is not an IPv4 address", addr, host);
            return AB_EINVAL;
        }
        loopback = (ntohl(a4->sin_addr.s_addr) >> 24) == 127;
    }
    if (!loopback && !(flags & BRK_METRICS_PUBLIC)) {
        snprintf(err, errlen,
                 "metrics address '%s' is not loopback; serving metrics beyond this machine "
                 "needs an explicit flag",
                 addr);
        return AB_EINVAL;
    }
    m->settings = (http_parser_settings){0};
    m->settings.on_url = s_on_url;
    m->settings.on_header_field = s_on_header_data;
    m->settings.on_header_value = s_on_header_data;
    m->settings.on_headers_complete = s_on_headers_complete;
    m->loop = loop;
    uv_tcp_init(loop, &m->server);
    m->server.data = m;
    m->listening = 1;
    m->open_handles++;
    int rc = uv_tcp_bind(&m->server, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&m->server, 128, s_on_connection);
    if (rc != 0) {
        snprintf(err, errlen, "cannot serve metrics on %s: %s", addr, uv_strerror(rc));
        brk_metrics_close(m);
        return AB_EIO;
    }
    struct sockaddr_storage got;
    int len = sizeof got;
    uv_tcp_getsockname(&m->server, (struct sockaddr *)&got, &len);
    m->port = v6 ? ntohs(((struct sockaddr_in6 *)&got)->sin6_port)
                 : ntohs(((struct sockaddr_in *)&got)->sin_port);
    if (bound && cap)
        snprintf(bound, cap, v6 ? "[%s]:%d" : "%s:%d", host, m->port);
    return 0;
}

int
brk_metrics_port(const brk_metrics_t *m)
{
    return m && m->listening ? m->port : 0;
}

void
brk_metrics_close(brk_metrics_t *m)
{
    if (!m || !m->listening)
        return;
    m->listening = 0;
    m->port = 0;
    uv_close((uv_handle_t *)&m->server, s_server_on_closed);
    while (m->conns)
        s_conn_close(m->conns);
}
