/*
 * services.c - offers, balancing, calls in flight, one deadline heap, heartbeats.
 */
#include "services.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uthash.h>

#include "heap.h"
#include "log.h"
#include "quota.h"

#define MAX_OFFERS_PER_CONN 256
/* A connection that offers nothing and waits for nothing is forgotten after this many timeouts. */
#define IDLE_CONN_FACTOR 10

typedef struct s_service s_service_t;
typedef struct s_call s_call_t;

typedef struct s_conn {
    brk_peer_t peer;
    char participant[AB_MAX_NAME + 1];
    uint64_t last_seen;
    uint32_t inflight;  /* calls dispatched to it, not yet answered */
    uint32_t calls_out; /* calls it made, not yet answered */
    s_service_t **offers;
    size_t noffers;
    s_call_t *calls_in; /* doubly linked list of calls dispatched to it */
    UT_hash_handle hh;
} s_conn_t;

struct s_service {
    char name[AB_MAX_NAME + 1];
    s_conn_t **providers;
    size_t n, cap;
    size_t rr;
    UT_hash_handle hh;
};

struct s_call {
    uint64_t token;
    ab_heap_node_t deadline; /* .at: when the call fails DEADLINE_EXCEEDED */
    uint64_t started;
    s_conn_t *provider;
    s_call_t *prev, *next; /* in provider->calls_in */
    s_conn_t *caller_conn; /* never freed while it has calls out */
    brk_peer_t caller;
    uint8_t corr[64];
    uint8_t corr_len;
    char service[AB_MAX_NAME + 1];
    uint8_t msg_id[AB_MESSAGE_ID_LEN]; /* the caller's, for the audit trail */
    uint8_t msg_id_len;
    uint8_t classification;
    UT_hash_handle hh;
};

/* Finished calls are kept for reuse: no malloc per call once the broker is warm. */
#define CALL_FREELIST_MAX 4096

struct brk_services {
    const brk_config_t *cfg;
    const brk_services_io_t *io;
    s_conn_t *conns;
    s_service_t *services;
    s_call_t *calls;
    ab_heap_t heap;
    uint64_t next_token;
    uint64_t next_sweep;
    int draining;
    s_call_t *freelist;
    size_t nfree;
    brk_registry_t *registry;        /* borrowed; NULL: nothing is validated */
    brk_quota_t *limits;             /* borrowed; NULL: no limit per participant */
    const brk_services_gate_t *gate; /* borrowed; NULL: everything allowed, nothing recorded */
    uint64_t now;                    /* of the message or tick being handled, ms */
    brk_services_method_fn *method;  /* further broker methods (MessageStatus), or NULL */
    brk_services_attached_fn *attached;
    void *ext_ctx;
    brk_ratelimit_t log_refused;
    brk_services_stats_t st;
};

static s_call_t *
s_call_alloc(brk_services_t *self)
{
    s_call_t *c = self->freelist;
    if (c) {
        self->freelist = c->next;
        self->nfree--;
    } else {
        c = malloc(sizeof *c);
        if (!c)
            return NULL;
    }
    c->provider = NULL;
    c->caller_conn = NULL;
    c->prev = c->next = NULL;
    return c;
}

static void
s_call_release(brk_services_t *self, s_call_t *c)
{
    if (self->nfree >= CALL_FREELIST_MAX) {
        free(c);
        return;
    }
    c->next = self->freelist;
    self->freelist = c;
    self->nfree++;
}

/* The call with the earliest deadline, or NULL. */
static s_call_t *
s_first_call(const brk_services_t *self)
{
    ab_heap_node_t *n = ab_heap_top(&self->heap);
    return n ? AB_CONTAINER_OF(n, s_call_t, deadline) : NULL;
}

/* ---- sending ------------------------------------------------------------------------------ */

static void s_send_error(brk_services_t *self, const brk_peer_t *to, const uint8_t *corr,
                         size_t corr_len, const char *service, int err, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

/* An ERROR with `code`, `text` and, where one is at fault, the field path. */
static void
s_send_err(brk_services_t *self, const brk_peer_t *to, const uint8_t *corr, size_t corr_len,
           const char *service, int code, const char *text, const char *field)
{
    Amtsbote__V1__Error e = AMTSBOTE__V1__ERROR__INIT;
    e.code = ab_err_to_wire(code);
    e.text = (char *)text;
    e.field = (char *)(field ? field : "");
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = AB_PROTOCOL_VERSION;
    h.kind = AMTSBOTE__V1__KIND__KIND_ERROR;
    h.correlation_id.data = (uint8_t *)corr;
    h.correlation_id.len = corr_len;
    h.service = (char *)(service ? service : "");
    h.error = &e;
    self->io->send(self->io->ctx, to, &h, NULL);
}

static void
s_send_error(brk_services_t *self, const brk_peer_t *to, const uint8_t *corr, size_t corr_len,
             const char *service, int err, const char *fmt, ...)
{
    char text[AB_MAX_ERROR_TEXT];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    s_send_err(self, to, corr, corr_len, service, err, text, NULL);
}

/* A verdict of the registry: an error that may name a field path (SCHEMA_INVALID). */
static void
s_send_verdict(brk_services_t *self, const brk_peer_t *to, const uint8_t *corr, size_t corr_len,
               const char *service, const brk_verdict_t *v)
{
    s_send_err(self, to, corr, corr_len, service, v->code, v->text, v->field);
}

static const uint8_t *
s_payload(brk_services_t *self, void *payload, size_t *len)
{
    *len = 0;
    if (payload == NULL || self->io->payload_bytes == NULL)
        return (const uint8_t *)"";
    return self->io->payload_bytes(payload, len);
}

/* ---- governance: policy, clearance, audit and metrics through the gate ------------------- */

static int
s_allowed(brk_services_t *self, const char *participant, const char *action, const char *resource,
          const char *purpose, int classification, char *why, size_t cap, const char **rule)
{
    *rule = "";
    if (!self->gate || !self->gate->allow)
        return 0;
    return self->gate->allow(self->gate->ctx, participant, action, resource, purpose ? purpose : "",
                             classification, why, cap, rule);
}

static int
s_cleared(brk_services_t *self, const char *participant, int classification)
{
    if (!self->gate || !self->gate->cleared || classification <= 1)
        return 1; /* unspecified and OFFEN: everyone */
    return self->gate->cleared(self->gate->ctx, participant, classification);
}

static void
s_record(brk_services_t *self, brk_event_kind_t kind, const ab_header_t *hdr, const char *sender,
         const char *target, const char *provider, void *payload, int outcome, const char *rule,
         uint64_t latency_ms)
{
    if (!self->gate || !self->gate->record)
        return;
    size_t len = 0;
    const uint8_t *data = payload ? s_payload(self, payload, &len) : NULL;
    brk_event_t ev = {.kind = kind,
                      .message_id = hdr ? hdr->message_id.data : NULL,
                      .message_id_len = hdr ? hdr->message_id.len : 0,
                      .sender = sender,
                      .target = target ? target : "",
                      .provider = provider ? provider : "",
                      .purpose = hdr && hdr->purpose ? hdr->purpose : "",
                      .classification = hdr ? (int)hdr->classification : 0,
                      .payload = data,
                      .payload_len = len,
                      .outcome = outcome,
                      .rule = rule ? rule : "",
                      .latency_ms = latency_ms};
    self->gate->record(self->gate->ctx, &ev);
}

/* A refusal by the gate: FORBIDDEN (or UNAVAILABLE when the gate cannot record decisions) to
 * the sender, counted, recorded. */
static void
s_forbid(brk_services_t *self, const brk_peer_t *to, const uint8_t *corr, size_t corr_len,
         const ab_header_t *hdr, const char *participant, const char *resource, const char *why,
         const char *rule, int code)
{
    if (code != AB_EUNAVAILABLE)
        code = AB_EFORBIDDEN;
    self->st.forbidden++;
    s_record(self, BRK_EV_REFUSED, hdr, participant, resource, NULL, NULL, code, rule, 0);
    s_send_err(self, to, corr, corr_len, resource, code, why, NULL);
}

static void
s_send_ack(brk_services_t *self, const brk_peer_t *to, const ab_header_t *req)
{
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = AB_PROTOCOL_VERSION;
    h.kind = AMTSBOTE__V1__KIND__KIND_REPLY;
    h.correlation_id = req->correlation_id.len ? req->correlation_id : req->message_id;
    h.service = req->service;
    self->io->send(self->io->ctx, to, &h, NULL);
}

/* ---- calls ------------------------------------------------------------------------------- */

/* Unlinks a finished call from everything and frees it. */
static void
s_call_free(brk_services_t *self, s_call_t *c)
{
    ab_heap_remove(&self->heap, &c->deadline);
    HASH_DEL(self->calls, c);
    if (c->provider) {
        s_conn_t *p = c->provider;
        p->inflight--;
        if (c->prev)
            c->prev->next = c->next;
        else
            p->calls_in = c->next;
        if (c->next)
            c->next->prev = c->prev;
    }
    if (c->caller_conn) {
        c->caller_conn->calls_out--;
        if (self->limits)
            brk_quota_call_end(self->limits, c->caller_conn->participant);
    }
    s_call_release(self, c);
}

/* Answers a call with an error and frees it. */
static void s_call_fail(brk_services_t *self, s_call_t *c, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
s_call_fail(brk_services_t *self, s_call_t *c, int err, const char *fmt, ...)
{
    char text[AB_MAX_ERROR_TEXT];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (self->gate && self->gate->record) {
        ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
        h.message_id.data = c->msg_id;
        h.message_id.len = c->msg_id_len;
        h.classification = c->classification;
        s_record(self, BRK_EV_FAILED, &h, c->caller_conn ? c->caller_conn->participant : "",
                 c->service, c->provider ? c->provider->participant : "", NULL, err, NULL,
                 self->now > c->started ? self->now - c->started : 0);
    }
    s_send_error(self, &c->caller, c->corr, c->corr_len, c->service, err, "%s", text);
    s_call_free(self, c);
}

/* ---- connections and offers --------------------------------------------------------------- */

static void s_provider_gone(brk_services_t *self, s_conn_t *conn, const char *why);
static void s_call_free(brk_services_t *self, s_call_t *c);

/*
 * Forgets `conn` entirely: its offers, the calls in flight to it (PROVIDER_GONE) and the calls
 * it made (their answers would otherwise go to whoever has its routing id now).
 */
static void
s_conn_forget(brk_services_t *self, s_conn_t *conn, const char *why)
{
    s_provider_gone(self, conn, why);
    if (conn->calls_out > 0) {
        s_call_t *c, *tmp;
        HASH_ITER(hh, self->calls, c, tmp)
        {
            if (c->caller_conn == conn)
                s_call_free(self, c); /* the provider's answer will be dropped as late */
        }
    }
    HASH_DEL(self->conns, conn);
    free(conn->offers);
    free(conn);
}

static s_conn_t *
s_conn_get(brk_services_t *self, const brk_peer_t *peer, const char *participant, uint64_t now)
{
    s_conn_t *c = NULL;
    HASH_FIND(hh, self->conns, peer->id, peer->len, c);
    if (c && strcmp(c->participant, participant) != 0) {
        /*
         * A client may choose its routing id; after a connection closes, another participant
         * can connect with the same one. It must not inherit anything of the first.
         */
        brk_log(BRK_LOG_WARN, "event=routing_id_reused old=%s new=%s", c->participant, participant);
        s_conn_forget(self, c, "was replaced by another participant's connection");
        c = NULL;
    }
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c)
            return NULL;
        c->peer.len = peer->len;
        memcpy(c->peer.id, peer->id, peer->len);
        snprintf(c->participant, sizeof c->participant, "%s", participant);
        HASH_ADD(hh, self->conns, peer.id, c->peer.len, c);
    }
    c->last_seen = now;
    return c;
}

static s_service_t *
s_service_find(brk_services_t *self, const char *name, size_t len)
{
    s_service_t *s = NULL;
    HASH_FIND(hh, self->services, name, len, s);
    return s;
}

static void
s_service_drop_provider(brk_services_t *self, s_service_t *s, s_conn_t *p)
{
    for (size_t i = 0; i < s->n; i++) {
        if (s->providers[i] == p) {
            s->providers[i] = s->providers[--s->n];
            break;
        }
    }
    if (s->n == 0) {
        HASH_DEL(self->services, s);
        free(s->providers);
        free(s);
    }
}

static int
s_offer(brk_services_t *self, s_conn_t *conn, const char *name)
{
    for (size_t i = 0; i < conn->noffers; i++)
        if (!strcmp(conn->offers[i]->name, name))
            return 0; /* offered already: idempotent */
    if (conn->noffers >= MAX_OFFERS_PER_CONN)
        return AB_EINVAL;
    size_t len = strlen(name);
    s_service_t *s = s_service_find(self, name, len);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s)
            return AB_ENOMEM;
        memcpy(s->name, name, len + 1);
        HASH_ADD_KEYPTR(hh, self->services, s->name, len, s);
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4;
        s_conn_t **p = realloc(s->providers, cap * sizeof *p);
        if (!p)
            return AB_ENOMEM;
        s->providers = p;
        s->cap = cap;
    }
    s_service_t **o = realloc(conn->offers, (conn->noffers + 1) * sizeof *o);
    if (!o)
        return AB_ENOMEM;
    conn->offers = o;
    conn->offers[conn->noffers++] = s;
    s->providers[s->n++] = conn;
    return 0;
}

static int
s_withdraw(brk_services_t *self, s_conn_t *conn, const char *name)
{
    for (size_t i = 0; i < conn->noffers; i++) {
        if (!strcmp(conn->offers[i]->name, name)) {
            s_service_drop_provider(self, conn->offers[i], conn);
            conn->offers[i] = conn->offers[--conn->noffers];
            return 0;
        }
    }
    return AB_EINVAL;
}

/*
 * Removes every offer of `conn` and fails every call in flight to it with PROVIDER_GONE.
 * `why` completes "provider P ..." in the error text and the log.
 */
static void
s_provider_gone(brk_services_t *self, s_conn_t *conn, const char *why)
{
    if (conn->noffers || conn->calls_in)
        brk_log(BRK_LOG_WARN, "event=provider_gone participant=%s reason=\"%s\" calls_failed=%u",
                conn->participant, why, conn->inflight);
    while (conn->noffers > 0)
        s_service_drop_provider(self, conn->offers[--conn->noffers], conn);
    while (conn->calls_in) {
        s_call_t *c = conn->calls_in;
        self->st.provider_gone++;
        s_call_fail(self, c, AB_EPROVIDER_GONE, "provider %s of %s %s with the call in flight",
                    conn->participant, c->service, why);
    }
}

/*
 * The offers that can take a call to `method`: the method's own, and its service's as a whole.
 * Returns how many of the two exist (with providers).
 */
static int
s_lookup_for_call(brk_services_t *self, const char *method, s_service_t *out[2])
{
    int n = 0;
    size_t len = strlen(method);
    s_service_t *s = s_service_find(self, method, len);
    if (s && s->n)
        out[n++] = s;
    const char *slash = strchr(method, '/');
    if (slash) {
        s = s_service_find(self, method, (size_t)(slash - method));
        if (s && s->n)
            out[n++] = s;
    }
    return n;
}

/* Picks the provider with the fewest calls in flight among both offers, rotating among equals. */
static s_conn_t *
s_pick(brk_services_t *self, s_service_t *const svc[2], int nsvc, s_conn_t *skip,
       int classification)
{
    s_conn_t *best = NULL;
    for (int i = 0; i < nsvc; i++) {
        s_service_t *s = svc[i];
        for (size_t k = 0; k < s->n; k++) {
            s_conn_t *p = s->providers[(s->rr + k) % s->n];
            if (p == skip || !s_cleared(self, p->participant, classification))
                continue;
            if (!best || p->inflight < best->inflight)
                best = p;
        }
        s->rr++;
    }
    return best;
}

/* amtsbote.v1.Broker/ListServices: every offer with its providers and calls in flight. */
static void
s_list_services(brk_services_t *self, s_conn_t *caller, const ab_header_t *hdr, const uint8_t *corr,
                size_t corr_len)
{
    size_t n = HASH_COUNT(self->services), np = 0;
    for (s_service_t *s = self->services; s; s = s->hh.next)
        np += s->n;
    Amtsbote__V1__ServiceInfo *infos = calloc(n ? n : 1, sizeof *infos);
    Amtsbote__V1__ServiceInfo **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    char **names = calloc(np ? np : 1, sizeof *names);
    uint8_t *buf = NULL;
    if (!infos || !ptrs || !names)
        goto oom;
    size_t i = 0, k = 0;
    for (s_service_t *s = self->services; s; s = s->hh.next, i++) {
        amtsbote__v1__service_info__init(&infos[i]);
        infos[i].name = s->name;
        infos[i].providers = names + k;
        infos[i].n_providers = s->n;
        for (size_t j = 0; j < s->n; j++) {
            names[k++] = s->providers[j]->participant;
            infos[i].in_flight += s->providers[j]->inflight;
        }
        ptrs[i] = &infos[i];
    }
    Amtsbote__V1__ServiceList list = AMTSBOTE__V1__SERVICE_LIST__INIT;
    list.services = ptrs;
    list.n_services = n;
    size_t len = amtsbote__v1__service_list__get_packed_size(&list);
    buf = malloc(len ? len : 1);
    if (!buf)
        goto oom;
    amtsbote__v1__service_list__pack(&list, buf);
    ab_header_t out = AMTSBOTE__V1__HEADER__INIT;
    out.version = AB_PROTOCOL_VERSION;
    out.kind = AMTSBOTE__V1__KIND__KIND_REPLY;
    out.correlation_id.data = (uint8_t *)corr;
    out.correlation_id.len = corr_len;
    out.service = hdr->service;
    out.schema = "amtsbote.v1.ServiceList";
    self->io->send_bytes(self->io->ctx, &caller->peer, &out, buf, len);
    self->st.replies++;
    goto done;
oom:
    s_send_error(self, &caller->peer, corr, corr_len, hdr->service, AB_EUNAVAILABLE,
                 "the broker is out of memory");
done:
    free(buf);
    free(names);
    free(ptrs);
    free(infos);
}

/* amtsbote.v1.Broker/Schema*: answered by the registry. */
static void
s_registry_call(brk_services_t *self, s_conn_t *caller, const ab_header_t *hdr, void *payload,
                uint64_t now, const uint8_t *corr, size_t corr_len)
{
    size_t len;
    const uint8_t *data = s_payload(self, payload, &len);
    uint8_t *out = NULL;
    size_t out_len = 0;
    const char *schema = "";
    brk_verdict_t v;
    (void)now; /* the loop's clock is monotonic; the registry records wall-clock time */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t wall = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    if (brk_registry_call(self->registry, caller->participant, hdr->service, data, len, wall, &out,
                          &out_len, &schema, &v) != 0) {
        s_send_verdict(self, &caller->peer, corr, corr_len, hdr->service, &v);
        return;
    }
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = AB_PROTOCOL_VERSION;
    h.kind = AMTSBOTE__V1__KIND__KIND_REPLY;
    h.correlation_id.data = (uint8_t *)corr;
    h.correlation_id.len = corr_len;
    h.service = hdr->service;
    h.schema = (char *)schema;
    self->io->send_bytes(self->io->ctx, &caller->peer, &h, out, out_len);
    self->st.replies++;
    free(out);
}

/* A broker method answered outside the services (brk_services_set_extension()). Returns 0
 * when it was answered, 1 when it is not one of them. */
static int
s_ext_call(brk_services_t *self, s_conn_t *caller, const ab_header_t *hdr, void *payload,
           const uint8_t *corr, size_t corr_len)
{
    size_t len;
    const uint8_t *data = s_payload(self, payload, &len);
    uint8_t *out = NULL;
    size_t out_len = 0;
    const char *schema = "";
    char why[AB_MAX_ERROR_TEXT] = "";
    int rc = self->method(self->ext_ctx, caller->participant, hdr->service, data, len, &out,
                          &out_len, &schema, why, sizeof why);
    if (rc == 1)
        return 1;
    if (rc != 0) {
        s_send_error(self, &caller->peer, corr, corr_len, hdr->service, rc, "%s", why);
        return 0;
    }
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = AB_PROTOCOL_VERSION;
    h.kind = AMTSBOTE__V1__KIND__KIND_REPLY;
    h.correlation_id.data = (uint8_t *)corr;
    h.correlation_id.len = corr_len;
    h.service = hdr->service;
    h.schema = (char *)schema;
    self->io->send_bytes(self->io->ctx, &caller->peer, &h, out, out_len);
    self->st.replies++;
    free(out);
    return 0;
}

static void
s_handle_call(brk_services_t *self, s_conn_t *caller, const ab_header_t *hdr, void *payload,
              uint64_t now)
{
    self->st.calls++;
    const uint8_t *corr = hdr->correlation_id.len ? hdr->correlation_id.data : hdr->message_id.data;
    size_t corr_len = hdr->correlation_id.len ? hdr->correlation_id.len : hdr->message_id.len;
    char why[AB_WHY_LEN];
    if (ab_wire_check_service(hdr->service, 0, why) != 0) {
        s_send_error(self, &caller->peer, corr, corr_len, hdr->service, AB_EINVAL, "%s", why);
        return;
    }
    const char *rule = "";
    if (!strncmp(hdr->service, BRK_SERVICE_BROKER "/", sizeof BRK_SERVICE_BROKER)) {
        /* published interfaces are for every participant to read, pushing is checked per
         * package by the registry; the list of offers is an administrative view */
        int admin = !strcmp(hdr->service, BRK_SERVICE_BROKER "/ListServices");
        char reason[AB_MAX_ERROR_TEXT];
        int grc = 0;
        if (admin &&
            (grc = s_allowed(self, caller->participant, "admin", "services.list", hdr->purpose,
                             (int)hdr->classification, reason, sizeof reason, &rule)) != 0) {
            s_forbid(self, &caller->peer, corr, corr_len, hdr, caller->participant, hdr->service,
                     reason, rule, grc);
            return;
        }
        if (!strcmp(hdr->service, BRK_SERVICE_BROKER "/ListServices")) {
            s_list_services(self, caller, hdr, corr, corr_len);
        } else if (self->registry && brk_registry_answers(hdr->service)) {
            s_registry_call(self, caller, hdr, payload, now, corr, corr_len);
        } else if (self->method && s_ext_call(self, caller, hdr, payload, corr, corr_len) == 0) {
            return;
        } else {
            self->st.unknown_service++;
            s_send_error(self, &caller->peer, corr, corr_len, hdr->service, AB_EUNKNOWN_SERVICE,
                         "the broker offers %s/ListServices, SchemaPush, SchemaList, "
                         "SchemaGet and MessageStatus, not %s",
                         BRK_SERVICE_BROKER, hdr->service);
        }
        return;
    }
    if (self->draining) {
        self->st.unavailable++;
        s_send_error(self, &caller->peer, corr, corr_len, hdr->service, AB_EUNAVAILABLE,
                     "the broker is shutting down; call to %s not accepted", hdr->service);
        return;
    }
    if (HASH_COUNT(self->calls) >= self->cfg->max_calls_in_flight) {
        self->st.unavailable++;
        s_send_error(self, &caller->peer, corr, corr_len, hdr->service, AB_EUNAVAILABLE,
                     "the broker has %llu calls in flight (max_calls_in_flight); try again",
                     (unsigned long long)self->cfg->max_calls_in_flight);
        return;
    }
    char reason[AB_MAX_ERROR_TEXT];
    int grc = 0;
    if ((grc = s_allowed(self, caller->participant, "call", hdr->service, hdr->purpose,
                         (int)hdr->classification, reason, sizeof reason, &rule)) != 0) {
        s_forbid(self, &caller->peer, corr, corr_len, hdr, caller->participant, hdr->service,
                 reason, rule, grc);
        return;
    }
    if (self->registry) {
        brk_verdict_t v;
        size_t len;
        const uint8_t *data = s_payload(self, payload, &len);
        if (brk_registry_check_call(self->registry, hdr->service, hdr->schema, data, len, 0, &v) !=
            0) {
            s_record(self, BRK_EV_REFUSED, hdr, caller->participant, hdr->service, NULL, NULL,
                     v.code, NULL, 0);
            if (v.code == AB_ESCHEMA_INVALID)
                self->st.schema_invalid++;
            else
                self->st.unknown_service++;
            uint64_t held;
            if (brk_log_allow(&self->log_refused, &held))
                brk_log(BRK_LOG_INFO,
                        "event=call_refused participant=%s service=%s code=%s field=%s "
                        "suppressed=%llu",
                        caller->participant, hdr->service, ab_err_name(v.code), v.field,
                        (unsigned long long)held);
            s_send_verdict(self, &caller->peer, corr, corr_len, hdr->service, &v);
            return;
        }
    }
    uint64_t budget = hdr->deadline_ms ? hdr->deadline_ms : self->cfg->default_deadline_ms;
    if (budget > self->cfg->max_deadline_ms)
        budget = self->cfg->max_deadline_ms;

    if (self->limits) {
        int lrc = brk_quota_call_begin(self->limits, caller->participant, why, sizeof why);
        if (lrc != 0) {
            if (lrc == AB_ERATE_LIMITED)
                self->st.rate_limited++;
            s_send_error(self, &caller->peer, corr, corr_len, hdr->service,
                         lrc == AB_ERATE_LIMITED ? lrc : AB_EUNAVAILABLE, "%s",
                         lrc == AB_ERATE_LIMITED ? why : "the broker is out of memory");
            return;
        }
    }
    s_call_t *c = s_call_alloc(self);
    if (!c) {
        if (self->limits)
            brk_quota_call_end(self->limits, caller->participant);
        s_send_error(self, &caller->peer, corr, corr_len, hdr->service, AB_EUNAVAILABLE,
                     "the broker is out of memory");
        return;
    }
    c->token = ++self->next_token;
    c->started = now;
    c->deadline.at = now + budget;
    c->caller.len = caller->peer.len;
    memcpy(c->caller.id, caller->peer.id, caller->peer.len);
    c->corr_len = (uint8_t)corr_len;
    if (corr_len > 0)
        memcpy(c->corr, corr, corr_len);
    size_t slen = strlen(hdr->service); /* checked above: at most AB_MAX_NAME */
    memcpy(c->service, hdr->service, slen + 1);
    c->msg_id_len = (uint8_t)(hdr->message_id.len <= sizeof c->msg_id ? hdr->message_id.len : 0);
    if (c->msg_id_len > 0) /* a message without an id has NULL data */
        memcpy(c->msg_id, hdr->message_id.data, c->msg_id_len);
    c->classification = (uint8_t)hdr->classification;

    uint8_t token[8];
    for (int i = 0; i < 8; i++)
        token[i] = (uint8_t)(c->token >> (8 * i));
    ab_header_t fwd = *hdr;
    fwd.correlation_id.data = token;
    fwd.correlation_id.len = sizeof token;
    fwd.sender = caller->participant;
    fwd.deadline_ms = (uint32_t)budget;
    fwd.error = NULL;
    fwd.heartbeat_ms = 0;

    s_conn_t *skip = NULL;
    for (int attempt = 0;; attempt++) {
        s_service_t *svc[2];
        int nsvc = s_lookup_for_call(self, hdr->service, svc);
        s_conn_t *p = attempt < 4 ? s_pick(self, svc, nsvc, skip, (int)hdr->classification) : NULL;
        if (!p) {
            if (!skip && nsvc > 0) {
                /* there are providers, but none may receive a message of this level */
                snprintf(reason, sizeof reason,
                         "no provider of %s is cleared for classification %s", hdr->service,
                         hdr->classification ==
                                 AMTSBOTE__V1__CLASSIFICATION__VS_NUR_FUER_DEN_DIENSTGEBRAUCH
                             ? "VS-NUR-FUER-DEN-DIENSTGEBRAUCH"
                             : "of this call");
                s_forbid(self, &caller->peer, corr, corr_len, hdr, caller->participant,
                         hdr->service, reason, "clearance", AB_EFORBIDDEN);
            } else if (skip) {
                self->st.unavailable++;
                s_send_error(self, &caller->peer, corr, corr_len, hdr->service, AB_EUNAVAILABLE,
                             "no provider of %s is keeping up (send queue full)", hdr->service);
            } else {
                self->st.unknown_service++;
                s_send_error(self, &caller->peer, corr, corr_len, hdr->service, AB_EUNKNOWN_SERVICE,
                             "no provider offers %s", hdr->service);
            }
            if (self->limits)
                brk_quota_call_end(self->limits, caller->participant);
            s_call_release(self, c);
            return;
        }
        if (attempt == 0) /* before the send: it takes the payload, whose digest is recorded */
            s_record(self, BRK_EV_CALL, hdr, caller->participant, hdr->service, p->participant,
                     payload, 0, NULL, 0);
        int rc = self->io->send(self->io->ctx, &p->peer, &fwd, payload);
        if (rc == 0) {
            c->provider = p;
            break;
        }
        if (rc == AB_EPROVIDER_GONE)
            s_provider_gone(self, p, "disconnected"); /* forget its offers, try another */
        else
            skip = p; /* queue full: try another */
    }
    if (ab_heap_push(&self->heap, &c->deadline) != 0) {
        /* the provider has the call; without a deadline entry we cannot track it */
        s_send_error(self, &caller->peer, corr, corr_len, hdr->service, AB_EUNAVAILABLE,
                     "the broker is out of memory");
        if (self->limits)
            brk_quota_call_end(self->limits, caller->participant);
        s_call_release(self, c);
        return;
    }
    c->caller_conn = caller;
    HASH_ADD(hh, self->calls, token, sizeof c->token, c);
    c->provider->inflight++;
    c->next = c->provider->calls_in;
    if (c->next)
        c->next->prev = c;
    c->provider->calls_in = c;
    caller->calls_out++;
}

static void
s_handle_answer(brk_services_t *self, s_conn_t *provider, const ab_header_t *hdr, void *payload)
{
    s_call_t *c = NULL;
    if (hdr->correlation_id.len == 8) {
        uint64_t token = 0;
        for (int i = 0; i < 8; i++)
            token |= (uint64_t)hdr->correlation_id.data[i] << (8 * i);
        HASH_FIND(hh, self->calls, &token, sizeof token, c);
    }
    if (!c || c->provider != provider) {
        self->st.late_replies++;
        if (brk_log_enabled(BRK_LOG_DEBUG))
            brk_log(BRK_LOG_DEBUG, "event=late_reply participant=%s", provider->participant);
        return;
    }
    if (self->registry && hdr->kind == AMTSBOTE__V1__KIND__KIND_REPLY) {
        brk_verdict_t v;
        size_t len;
        const uint8_t *data = s_payload(self, payload, &len);
        if (brk_registry_check_call(self->registry, c->service, hdr->schema, data, len, 1, &v) !=
            0) {
            /* the provider learns where; the caller that its provider answered wrongly */
            self->st.schema_invalid++;
            uint64_t held;
            if (brk_log_allow(&self->log_refused, &held))
                brk_log(BRK_LOG_WARN,
                        "event=reply_refused participant=%s service=%s code=%s field=%s "
                        "suppressed=%llu",
                        provider->participant, c->service, ab_err_name(v.code), v.field,
                        (unsigned long long)held);
            s_record(self, BRK_EV_REFUSED, hdr, provider->participant, c->service,
                     provider->participant, NULL, v.code, NULL, 0);
            s_send_verdict(self, &provider->peer, hdr->message_id.data, hdr->message_id.len,
                           c->service, &v);
            s_send_error(self, &c->caller, c->corr, c->corr_len, c->service, AB_EPROVIDER,
                         "the reply of %s does not match the interface of %s (the provider was "
                         "told why)",
                         provider->participant, c->service);
            s_call_free(self, c);
            return;
        }
    }
    const char *caller_name = c->caller_conn ? c->caller_conn->participant : "";
    if (hdr->kind == AMTSBOTE__V1__KIND__KIND_REPLY &&
        !s_cleared(self, caller_name, (int)hdr->classification)) {
        /* never to a participant cleared below the message's level */
        char reason[AB_MAX_ERROR_TEXT];
        snprintf(reason, sizeof reason,
                 "the reply of %s is classified above the clearance of %s; it was not delivered",
                 c->service, caller_name);
        s_forbid(self, &provider->peer, hdr->message_id.data, hdr->message_id.len, hdr,
                 provider->participant, c->service, reason, "clearance", AB_EFORBIDDEN);
        s_send_error(self, &c->caller, c->corr, c->corr_len, c->service, AB_EFORBIDDEN,
                     "the reply to your call of %s is classified above your clearance", c->service);
        s_call_free(self, c);
        return;
    }
    ab_header_t out = AMTSBOTE__V1__HEADER__INIT;
    Amtsbote__V1__Error e = AMTSBOTE__V1__ERROR__INIT;
    out.version = AB_PROTOCOL_VERSION;
    out.kind = hdr->kind;
    out.message_id = hdr->message_id;
    out.correlation_id.data = c->corr;
    out.correlation_id.len = c->corr_len;
    out.service = c->service;
    out.sender = provider->participant;
    out.schema = hdr->schema;
    out.headers = hdr->headers;
    out.n_headers = hdr->n_headers;
    out.trace = hdr->trace;
    if (hdr->kind == AMTSBOTE__V1__KIND__KIND_ERROR) {
        /* a provider may say INVALID_ARGUMENT; anything else it says is its own error */
        e.code = hdr->error && hdr->error->code == AMTSBOTE__V1__ERROR_CODE__INVALID_ARGUMENT
                     ? AMTSBOTE__V1__ERROR_CODE__INVALID_ARGUMENT
                     : AMTSBOTE__V1__ERROR_CODE__PROVIDER_ERROR;
        e.text = hdr->error && hdr->error->text ? hdr->error->text : "";
        e.field = hdr->error ? hdr->error->field : NULL;
        out.error = &e;
        payload = NULL;
    }
    if (self->gate && self->gate->record) /* before the send: it takes the payload */
        s_record(self, BRK_EV_REPLY, hdr, provider->participant, c->service, provider->participant,
                 payload, hdr->kind == AMTSBOTE__V1__KIND__KIND_ERROR ? AB_EPROVIDER : 0, NULL,
                 self->now > c->started ? self->now - c->started : 0);
    int rc = self->io->send(self->io->ctx, &c->caller, &out, payload);
    if (rc == 0)
        self->st.replies++;
    else
        self->st.lost_replies++;
    s_call_free(self, c);
}

void
brk_services_handle(brk_services_t *self, const brk_peer_t *from, const char *participant,
                    const ab_header_t *hdr, void *payload, uint64_t now)
{
    self->now = now;
    s_conn_t *conn = s_conn_get(self, from, participant, now);
    if (!conn)
        return; /* out of memory: the sender will time out */
    char why[AB_WHY_LEN];
    const uint8_t *corr = hdr->correlation_id.len ? hdr->correlation_id.data : hdr->message_id.data;
    size_t corr_len = hdr->correlation_id.len ? hdr->correlation_id.len : hdr->message_id.len;

    switch (hdr->kind) {
    case AMTSBOTE__V1__KIND__KIND_CALL:
        s_handle_call(self, conn, hdr, payload, now);
        return;
    case AMTSBOTE__V1__KIND__KIND_REPLY:
    case AMTSBOTE__V1__KIND__KIND_ERROR:
        s_handle_answer(self, conn, hdr, payload);
        return;
    case AMTSBOTE__V1__KIND__KIND_HEARTBEAT:
        /*
         * Only providers send heartbeats. One from a connection without offers means the
         * broker removed them (the provider stalled past the timeout): an unasked HELLO tells
         * it to offer again.
         */
        if (conn->noffers > 0 || self->draining ||
            (self->attached && self->attached(self->ext_ctx, from, now)))
            return;
        corr = NULL;
        corr_len = 0;
        /* fall through */
    case AMTSBOTE__V1__KIND__KIND_HELLO: {
        ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
        h.version = AB_PROTOCOL_VERSION;
        h.kind = AMTSBOTE__V1__KIND__KIND_HELLO;
        h.correlation_id.data = (uint8_t *)corr;
        h.correlation_id.len = corr_len;
        h.sender = conn->participant;
        h.heartbeat_ms = (uint32_t)self->cfg->heartbeat_ms;
        h.max_payload = (uint32_t)self->cfg->max_payload;
        self->io->send(self->io->ctx, from, &h, NULL);
        return;
    }
    case AMTSBOTE__V1__KIND__KIND_OFFER: {
        if (ab_wire_check_service(hdr->service, 1, why) != 0) {
            s_send_error(self, from, corr, corr_len, hdr->service, AB_EINVAL, "%s", why);
            return;
        }
        if (self->draining) {
            s_send_error(self, from, corr, corr_len, hdr->service, AB_EUNAVAILABLE,
                         "the broker is shutting down; offer of %s not accepted", hdr->service);
            return;
        }
        size_t blen = sizeof BRK_SERVICE_BROKER - 1;
        if (!strncmp(hdr->service, BRK_SERVICE_BROKER, blen) &&
            (hdr->service[blen] == '\0' || hdr->service[blen] == '/')) {
            s_send_error(self, from, corr, corr_len, hdr->service, AB_EINVAL,
                         "%s is the broker's own service; nobody else may offer it",
                         BRK_SERVICE_BROKER);
            return;
        }
        char reason[AB_MAX_ERROR_TEXT];
        const char *rule = "";
        int grc = 0;
        if ((grc = s_allowed(self, conn->participant, "offer", hdr->service, hdr->purpose,
                             (int)hdr->classification, reason, sizeof reason, &rule)) != 0) {
            s_forbid(self, from, corr, corr_len, hdr, conn->participant, hdr->service, reason, rule,
                     grc);
            return;
        }
        brk_verdict_t v;
        if (self->registry && brk_registry_check_offer(self->registry, hdr->service, &v) != 0) {
            s_send_verdict(self, from, corr, corr_len, hdr->service, &v);
            return;
        }
        int rc = s_offer(self, conn, hdr->service);
        if (rc != 0) {
            s_send_error(self, from, corr, corr_len, hdr->service, rc,
                         rc == AB_EINVAL ? "a connection may make at most %d offers"
                                         : "out of memory (%d)",
                         MAX_OFFERS_PER_CONN);
            return;
        }
        brk_log(BRK_LOG_INFO, "event=offer participant=%s service=%s providers=%zu",
                conn->participant, hdr->service,
                s_service_find(self, hdr->service, strlen(hdr->service))->n);
        s_send_ack(self, from, hdr);
        return;
    }
    case AMTSBOTE__V1__KIND__KIND_WITHDRAW:
        if (s_withdraw(self, conn, hdr->service) != 0) {
            s_send_error(self, from, corr, corr_len, hdr->service, AB_EINVAL,
                         "%s is not offered on this connection", hdr->service);
            return;
        }
        brk_log(BRK_LOG_INFO, "event=withdraw participant=%s service=%s", conn->participant,
                hdr->service);
        s_send_ack(self, from, hdr);
        return;
    default:
        s_send_error(self, from, corr, corr_len, hdr->service, AB_EUNAVAILABLE,
                     "message kind %s is not served by this broker version",
                     ab_kind_name(hdr->kind));
        return;
    }
}

uint64_t
brk_services_tick(brk_services_t *self, uint64_t now)
{
    self->now = now;
    s_call_t *c;
    while ((c = s_first_call(self)) != NULL && c->deadline.at <= now) {
        self->st.deadline_exceeded++;
        s_call_fail(self, c, AB_EDEADLINE,
                    "call to %s exceeded its deadline of %llu ms (provider %s did not answer)",
                    c->service, (unsigned long long)(c->deadline.at - c->started),
                    c->provider ? c->provider->participant : "-");
    }
    if (now >= self->next_sweep) {
        self->next_sweep = now + self->cfg->heartbeat_ms / 2;
        s_conn_t *conn, *tmp;
        HASH_ITER(hh, self->conns, conn, tmp)
        {
            uint64_t silent = now - conn->last_seen;
            if ((conn->noffers || conn->calls_in) && silent > self->cfg->heartbeat_timeout_ms) {
                char why[96];
                snprintf(why, sizeof why, "missed heartbeats (silent for %llu ms)",
                         (unsigned long long)silent);
                s_provider_gone(self, conn, why);
            }
            if (!conn->noffers && !conn->calls_in && !conn->calls_out &&
                silent > IDLE_CONN_FACTOR * self->cfg->heartbeat_timeout_ms) {
                HASH_DEL(self->conns, conn);
                free(conn->offers);
                free(conn);
            }
        }
    }
    uint64_t next = self->next_sweep;
    if ((c = s_first_call(self)) != NULL && c->deadline.at < next)
        next = c->deadline.at;
    return next > now ? next - now : 0;
}

brk_services_t *
brk_services_new(const brk_config_t *cfg, const brk_services_io_t *io)
{
    brk_services_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->cfg = cfg;
    self->io = io;
    return self;
}

void
brk_services_set_extension(brk_services_t *self, brk_services_method_fn *method,
                           brk_services_attached_fn *attached, void *ctx)
{
    self->method = method;
    self->attached = attached;
    self->ext_ctx = ctx;
}

void
brk_services_peer_gone(brk_services_t *self, const brk_peer_t *peer)
{
    s_conn_t *conn = NULL;
    HASH_FIND(hh, self->conns, peer->id, peer->len, conn);
    if (conn)
        s_provider_gone(self, conn, "disconnected");
}

void
brk_services_set_limits(brk_services_t *self, brk_quota_t *limits)
{
    self->limits = limits;
}

void
brk_services_set_registry(brk_services_t *self, brk_registry_t *reg)
{
    self->registry = reg;
}

void
brk_services_each(const brk_services_t *self, brk_services_offer_fn *offer,
                  brk_services_conn_fn *conn, void *arg)
{
    for (s_service_t *s = self->services; offer && s; s = s->hh.next) {
        uint32_t in_flight = 0;
        for (size_t i = 0; i < s->n; i++)
            in_flight += s->providers[i]->inflight;
        offer(arg, s->name, s->n, in_flight);
    }
    for (s_conn_t *c = self->conns; conn && c; c = c->hh.next)
        conn(arg, c->participant);
}

void
brk_services_set_gate(brk_services_t *self, const brk_services_gate_t *gate)
{
    self->gate = gate;
}

void
brk_services_drain(brk_services_t *self)
{
    self->draining = 1;
}

void
brk_services_fail_all(brk_services_t *self, int err, const char *text)
{
    s_call_t *c;
    while ((c = s_first_call(self)) != NULL) {
        if (err == AB_EUNAVAILABLE)
            self->st.unavailable++;
        s_call_fail(self, c, err, "%s (call to %s)", text, c->service);
    }
}

size_t
brk_services_in_flight(const brk_services_t *self)
{
    return self->heap.n;
}

void
brk_services_stats(const brk_services_t *self, brk_services_stats_t *out)
{
    *out = self->st;
    out->in_flight = self->heap.n;
    out->connections = HASH_COUNT(self->conns);
    size_t providers = 0;
    for (s_conn_t *c = self->conns; c; c = c->hh.next)
        providers += c->noffers > 0;
    out->providers = providers;
}

void
brk_services_destroy(brk_services_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    brk_services_t *self = *self_p;
    *self_p = NULL;
    s_call_t *c, *ct;
    HASH_ITER(hh, self->calls, c, ct)
    {
        HASH_DEL(self->calls, c);
        free(c);
    }
    s_service_t *s, *st;
    HASH_ITER(hh, self->services, s, st)
    {
        HASH_DEL(self->services, s);
        free(s->providers);
        free(s);
    }
    s_conn_t *k, *kt;
    HASH_ITER(hh, self->conns, k, kt)
    {
        HASH_DEL(self->conns, k);
        free(k->offers);
        free(k);
    }
    while (self->freelist) {
        c = self->freelist;
        self->freelist = c->next;
        free(c);
    }
    ab_heap_free(&self->heap);
    free(self);
}
