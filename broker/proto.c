/*
 * proto.c - frame checks before decoding, header decode, error replies, sending.
 */
#include "proto.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* uthash exits the process when it cannot allocate, unless told not to: then the element is
 * not added and its hh.tbl is NULL, which the one HASH_ADD here checks. */
#define HASH_NONFATAL_OOM 1
#include <uthash.h>

#include "log.h"

/*
 * Messages handled in one loop turn are answered in one burst at its end (brk_proto_flush):
 * zmq_send calls back to back let libzmq's I/O thread write them with few system calls, where
 * sends spread between the handling of each message would wake it once per message.
 */
#define OUTBOX_MAX 1024
#define OUTBOX_BYTES (1024 * 1024)

typedef struct {
    brk_peer_t to;
    uint32_t off, len; /* the encoded header in the outbox buffer */
    int has_payload;
    zmq_msg_t payload; /* moved from the received message: no bytes copied */
} s_out_t;

/* A TLS gateway session's address and the routing id its connection had (from its HELLO). */
typedef struct {
    char addr[48];
    brk_peer_t peer;
    UT_hash_handle hh;
} s_session_t;

/* A connection whose TLS session ended: probed until a send to it fails (then it is gone). */
typedef struct {
    brk_peer_t peer;
    uint64_t until, next;
} s_probe_t;

#define PROBE_FOR_MS 5000
#define PROBES_MAX 1024

struct brk_proto {
    void *router;
    const brk_config_t *cfg;
    brk_zsock_t *zs;
    ab_wire_decoder_t *dec;
    brk_proto_gone_fn *gone;
    void *gone_arg;
    s_out_t *out;
    size_t nout, out_cap;
    uint8_t *buf;
    size_t used, buf_cap;
    int holding; /* answers wait for the audit log: the outbox grows instead of flushing */
    brk_ratelimit_t refused_log;
    brk_proto_stats_t st;
    brk_quota_t *limits; /* borrowed; NULL: no rate */
    brk_proto_pause_fn *pause;
    void *pause_arg;
    int track_sessions;
    s_session_t *sessions; /* by address */
    s_probe_t probes[PROBES_MAX];
    size_t nprobes;
};

void
brk_proto_set_limits(brk_proto_t *self, brk_quota_t *limits)
{
    self->limits = limits;
}

void
brk_proto_on_rate_limited(brk_proto_t *self, brk_proto_pause_fn *fn, void *arg)
{
    self->pause = fn;
    self->pause_arg = arg;
}

/* `participant` was refused for its rate: pause its sessions, unless they were paused just now
 * (the requests already read and relayed before the pause are refused one after the other). */
static void
s_pause(brk_proto_t *self, const char *participant, uint64_t now_ms)
{
    if (self->pause &&
        brk_quota_pause_due(self->limits, participant, now_ms, BRK_RATE_PAUSE_MS / 2))
        self->pause(self->pause_arg, participant, BRK_RATE_PAUSE_MS);
}

brk_proto_t *
brk_proto_new(void *router, const brk_config_t *cfg)
{
    brk_proto_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->router = router;
    self->cfg = cfg;
    self->dec = ab_wire_decoder_new();
    self->out = malloc(OUTBOX_MAX * sizeof *self->out);
    self->buf = malloc(OUTBOX_BYTES);
    self->out_cap = OUTBOX_MAX;
    self->buf_cap = OUTBOX_BYTES;
    if (!self->dec || !self->out || !self->buf) {
        brk_proto_destroy(&self);
        return NULL;
    }
    return self;
}

void
brk_proto_destroy(brk_proto_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    brk_proto_t *self = *self_p;
    *self_p = NULL;
    for (size_t i = 0; i < self->nout; i++)
        if (self->out[i].has_payload)
            zmq_msg_close(&self->out[i].payload);
    ab_wire_decoder_destroy(&self->dec);
    s_session_t *x, *tmp;
    HASH_ITER(hh, self->sessions, x, tmp)
    {
        HASH_DEL(self->sessions, x);
        free(x);
    }
    free(self->out);
    free(self->buf);
    free(self);
}

void
brk_proto_set_zsock(brk_proto_t *self, brk_zsock_t *zs)
{
    self->zs = zs;
}

void
brk_proto_on_gone(brk_proto_t *self, brk_proto_gone_fn *fn, void *arg)
{
    self->gone = fn;
    self->gone_arg = arg;
}

/* Sends one queued message; returns 0, AB_EPROVIDER_GONE or AB_EUNAVAILABLE. */
static int
s_send_now(brk_proto_t *self, s_out_t *o)
{
    if (zmq_send(self->router, o->to.id, o->to.len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        if (zmq_errno() == EHOSTUNREACH) {
            self->st.unroutable++;
            return AB_EPROVIDER_GONE;
        }
        self->st.queue_full++;
        return AB_EUNAVAILABLE;
    }
    /* After the routing id is accepted the rest of the message goes out as one. */
    if (zmq_send(self->router, self->buf + o->off, o->len, o->has_payload ? ZMQ_SNDMORE : 0) < 0)
        return AB_EUNAVAILABLE;
    if (o->has_payload) {
        if (zmq_msg_send(&o->payload, self->router, 0) < 0)
            return AB_EUNAVAILABLE;
        o->has_payload = 0; /* sent: zmq owns it now */
    }
    self->st.sent++;
    return 0;
}

void
brk_proto_flush(brk_proto_t *self)
{
    brk_proto_flush_upto(self, self->nout);
}

size_t
brk_proto_queued(const brk_proto_t *self)
{
    return self->nout;
}

void
brk_proto_hold(brk_proto_t *self, int hold)
{
    self->holding = hold;
}

static int
s_same_peer(const brk_peer_t *a, const brk_peer_t *b)
{
    return a->len == b->len && memcmp(a->id, b->id, a->len) == 0;
}

static void
s_probe_forget(brk_proto_t *self, const brk_peer_t *peer)
{
    for (size_t i = 0; i < self->nprobes;)
        if (s_same_peer(&self->probes[i].peer, peer))
            self->probes[i] = self->probes[--self->nprobes];
        else
            i++;
}

void
brk_proto_track_sessions(brk_proto_t *self, int on)
{
    self->track_sessions = on;
}

/* A HELLO on a tracked listener: its connection's address names its TLS session. */
static void
s_session_seen(brk_proto_t *self, brk_envelope_t *env)
{
    const char *addr = zmq_msg_gets(&env->header_msg, "Peer-Address");
    /* the gateway's relays come from 127.1.0.1 and up; plain clients are not tracked */
    if (!addr || strncmp(addr, "127.", 4) != 0 || strncmp(addr, "127.0.", 6) == 0 ||
        strlen(addr) >= sizeof((s_session_t *)0)->addr)
        return;
    s_session_t *x = NULL;
    HASH_FIND_STR(self->sessions, addr, x);
    if (!x) {
        if ((x = calloc(1, sizeof *x)) == NULL)
            return; /* the session is then noticed gone by heartbeats only */
        snprintf(x->addr, sizeof x->addr, "%s", addr);
        HASH_ADD_STR(self->sessions, addr, x);
        if (x->hh.tbl == NULL) {
            free(x);
            return;
        }
    }
    x->peer = env->from;
}

void
brk_proto_session_end(brk_proto_t *self, const char *address, uint64_t now)
{
    s_session_t *x = NULL;
    HASH_FIND_STR(self->sessions, address, x);
    if (!x)
        return;
    HASH_DEL(self->sessions, x);
    if (self->nprobes < PROBES_MAX) {
        s_probe_forget(self, &x->peer);
        self->probes[self->nprobes++] =
            (s_probe_t){.peer = x->peer, .until = now + PROBE_FOR_MS, .next = now};
    }
    free(x);
}

uint64_t
brk_proto_probe(brk_proto_t *self, uint64_t now)
{
    uint64_t wait = UINT64_MAX;
    for (size_t i = 0; i < self->nprobes;) {
        s_probe_t *p = &self->probes[i];
        if (now >= p->until) { /* still reachable: a connection libzmq keeps, or a new one */
            self->probes[i] = self->probes[--self->nprobes];
            continue;
        }
        if (now >= p->next) {
            /* a HEARTBEAT (clients ignore it): with ROUTER_MANDATORY the send fails once
             * libzmq has handed over everything the connection carried, and the flush then
             * reports the peer gone */
            ab_header_t hdr = AMTSBOTE__V1__HEADER__INIT;
            hdr.version = AB_PROTOCOL_VERSION;
            hdr.kind = AMTSBOTE__V1__KIND__KIND_HEARTBEAT;
            brk_proto_send(self, &p->peer, &hdr, NULL);
            p->next = now + BRK_PROBE_EVERY_MS;
        }
        if (p->next - now < wait)
            wait = p->next - now;
        i++;
    }
    return wait;
}

void
brk_proto_flush_upto(brk_proto_t *self, size_t upto)
{
    if (upto > self->nout)
        upto = self->nout;
    if (upto < self->nout) {
        /* send the first `upto`, keep the rest (their headers stay where they are) */
        size_t ngone = 0;
        for (size_t i = 0; i < upto; i++) {
            s_out_t *o = &self->out[i];
            int rc = s_send_now(self, o);
            if (o->has_payload)
                zmq_msg_close(&o->payload);
            if (rc == AB_EPROVIDER_GONE)
                self->out[ngone++].to = o->to;
        }
        brk_peer_t *gone = NULL;
        if (ngone > 0 && (gone = malloc(ngone * sizeof *gone)) != NULL)
            for (size_t i = 0; i < ngone; i++)
                gone[i] = self->out[i].to;
        memmove(self->out, self->out + upto, (self->nout - upto) * sizeof *self->out);
        self->nout -= upto;
        /* headers are appended in order: the kept ones move to the front of the buffer */
        uint32_t first = self->out[0].off;
        memmove(self->buf, self->buf + first, self->used - first);
        self->used -= first;
        for (size_t i = 0; i < self->nout; i++)
            self->out[i].off -= first;
        brk_zsock_kick(self->zs);
        for (size_t i = 0; gone && i < ngone; i++)
            s_probe_forget(self, &gone[i]);
        for (size_t i = 0; gone && self->gone && i < ngone; i++)
            self->gone(self->gone_arg, &gone[i]);
        free(gone);
        return;
    }
    while (self->nout > 0) {
        size_t ngone = 0;
        for (size_t i = 0; i < self->nout; i++) {
            s_out_t *o = &self->out[i];
            int rc = s_send_now(self, o);
            if (o->has_payload)
                zmq_msg_close(&o->payload);
            if (rc == AB_EPROVIDER_GONE)
                self->out[ngone++].to = o->to; /* ngone <= i: that entry is done with */
        }
        brk_peer_t *gone = NULL;
        if (ngone > 0 && (gone = malloc(ngone * sizeof *gone)) != NULL)
            for (size_t i = 0; i < ngone; i++)
                gone[i] = self->out[i].to;
        self->nout = 0;
        self->used = 0;
        brk_zsock_kick(self->zs);
        /* the callback may queue error replies: the loop sends them too */
        for (size_t i = 0; gone && i < ngone; i++)
            s_probe_forget(self, &gone[i]);
        for (size_t i = 0; gone && self->gone && i < ngone; i++)
            self->gone(self->gone_arg, &gone[i]);
        free(gone);
    }
}

/* Makes room for one more message with a header of up to AB_MAX_HEADER_BYTES. */
static int
s_reserve(brk_proto_t *self)
{
    if (self->nout == self->out_cap || self->buf_cap - self->used < AB_MAX_HEADER_BYTES) {
        if (self->holding || self->nout > 0) {
            /* while answers are held the outbox grows (bounded by how long an fsync takes) */
            if (self->holding) {
                size_t oc = self->nout == self->out_cap ? 2 * self->out_cap : self->out_cap;
                size_t bc = self->buf_cap - self->used < AB_MAX_HEADER_BYTES ? 2 * self->buf_cap
                                                                             : self->buf_cap;
                s_out_t *no = realloc(self->out, oc * sizeof *no);
                if (no)
                    self->out = no;
                uint8_t *nb = no ? realloc(self->buf, bc) : NULL;
                if (nb)
                    self->buf = nb;
                if (!no || !nb)
                    return AB_EUNAVAILABLE;
                self->out_cap = oc;
                self->buf_cap = bc;
            } else {
                brk_proto_flush(self);
            }
        }
    }
    return 0;
}

/* Queues the header of `n` bytes now at buf + used. */
static void
s_queue(brk_proto_t *self, const brk_peer_t *to, size_t n, void *payload)
{
    s_out_t *o = &self->out[self->nout];
    o->to.len = to->len;
    memcpy(o->to.id, to->id, to->len);
    o->off = (uint32_t)self->used;
    o->len = (uint32_t)n;
    o->has_payload = payload != NULL;
    if (payload) {
        zmq_msg_init(&o->payload);
        zmq_msg_move(&o->payload, payload); /* forwarded once: move, not even a refcount */
    }
    self->used += n;
    self->nout++;
}

int
brk_proto_send(void *ctx, const brk_peer_t *to, const ab_header_t *hdr, void *payload)
{
    brk_proto_t *self = ctx;
    if (s_reserve(self) != 0)
        return AB_EUNAVAILABLE;
    int n = ab_wire_encode(hdr, self->buf + self->used, AB_MAX_HEADER_BYTES);
    if (n < 0) {
        brk_log(BRK_LOG_ERROR, "event=encode_failed kind=%s", ab_kind_name(hdr->kind));
        return AB_EINTERNAL;
    }
    s_queue(self, to, (size_t)n, payload);
    return 0;
}

int
brk_proto_send_raw(void *ctx, const brk_peer_t *to, const uint8_t *hdr, size_t hdr_len,
                   const uint8_t *tail, size_t tail_len, void *payload)
{
    brk_proto_t *self = ctx;
    if (hdr_len + tail_len > AB_MAX_HEADER_BYTES)
        return AB_EINTERNAL;
    if (s_reserve(self) != 0)
        return AB_EUNAVAILABLE;
    memcpy(self->buf + self->used, hdr, hdr_len);
    if (tail_len)
        memcpy(self->buf + self->used + hdr_len, tail, tail_len);
    s_queue(self, to, hdr_len + tail_len, payload);
    return 0;
}

int
brk_proto_send_bytes(void *ctx, const brk_peer_t *to, const ab_header_t *hdr, const void *data,
                     size_t len)
{
    zmq_msg_t m;
    if (zmq_msg_init_size(&m, len) != 0)
        return AB_EUNAVAILABLE;
    memcpy(zmq_msg_data(&m), data, len);
    int rc = brk_proto_send(ctx, to, hdr, &m);
    zmq_msg_close(&m);
    return rc;
}

static void
s_refuse(brk_proto_t *self, const brk_peer_t *to, const char *participant, const ab_header_t *hdr,
         int err, const char *fmt, ...)
{
    char text[AB_MAX_ERROR_TEXT];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (err == AB_ETOO_LARGE)
        self->st.too_large++;
    else if (err == AB_ERATE_LIMITED)
        self->st.rate_limited++;
    else
        self->st.malformed++;
    Amtsbote__V1__Error e = AMTSBOTE__V1__ERROR__INIT;
    e.code = ab_err_to_wire(err);
    e.text = text;
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = AB_PROTOCOL_VERSION;
    h.kind = AMTSBOTE__V1__KIND__KIND_ERROR;
    if (hdr) {
        h.correlation_id = hdr->correlation_id.len ? hdr->correlation_id : hdr->message_id;
        h.service = hdr->service;
    }
    h.error = &e;
    uint64_t held = 0;
    if (brk_log_allow(&self->refused_log, &held))
        brk_log(BRK_LOG_INFO, "event=refused participant=%s error=%s reason=\"%s\" suppressed=%llu",
                participant, ab_err_name(err), text, (unsigned long long)held);
    brk_proto_send(self, to, &h, NULL);
}

/* What a participant asks the broker to do, counted against its rate (answers, ACK, CREDIT and
 * HEARTBEAT are not: limiting them would hold up others' calls and deliveries). */
static int
s_is_request(int kind)
{
    return kind == AMTSBOTE__V1__KIND__KIND_CALL || kind == AMTSBOTE__V1__KIND__KIND_SEND ||
           kind == AMTSBOTE__V1__KIND__KIND_PUBLISH || kind == AMTSBOTE__V1__KIND__KIND_SUBSCRIBE ||
           kind == AMTSBOTE__V1__KIND__KIND_OFFER || kind == AMTSBOTE__V1__KIND__KIND_WITHDRAW;
}

static int
s_needs_payload(int kind)
{
    return kind == AMTSBOTE__V1__KIND__KIND_CALL || kind == AMTSBOTE__V1__KIND__KIND_REPLY ||
           kind == AMTSBOTE__V1__KIND__KIND_SEND || kind == AMTSBOTE__V1__KIND__KIND_DELIVER ||
           kind == AMTSBOTE__V1__KIND__KIND_PUBLISH || kind == AMTSBOTE__V1__KIND__KIND_EVENT;
}

int
brk_proto_recv(brk_proto_t *self, brk_envelope_t *env)
{
    zmq_msg_t rid;
    zmq_msg_init(&rid);
    if (zmq_msg_recv(&rid, self->router, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&rid);
        return -1;
    }
    self->st.received++;
    env->from.len = (uint8_t)(zmq_msg_size(&rid) > 255 ? 255 : zmq_msg_size(&rid));
    memcpy(env->from.id, zmq_msg_data(&rid), env->from.len);
    zmq_msg_close(&rid);
    env->has_payload = 0;
    env->hdr = NULL;
    env->participant = NULL;
    zmq_msg_init(&env->header_msg);
    zmq_msg_init(&env->payload);

    /* A ROUTER always delivers the routing id with at least one more frame. */
    int frames = 0;
    if (zmq_msg_recv(&env->header_msg, self->router, ZMQ_DONTWAIT) >= 0)
        frames = 1;
    if (frames && zmq_msg_more(&env->header_msg)) {
        if (zmq_msg_recv(&env->payload, self->router, ZMQ_DONTWAIT) >= 0) {
            frames = 2;
            env->has_payload = 1;
        }
        if (zmq_msg_more(&env->payload)) {
            zmq_msg_t extra;
            zmq_msg_init(&extra);
            do {
                if (zmq_msg_recv(&extra, self->router, ZMQ_DONTWAIT) < 0)
                    break;
                frames++;
            } while (zmq_msg_more(&extra));
            zmq_msg_close(&extra);
        }
    }
    if (frames == 0)
        goto consumed;

    env->participant = zmq_msg_gets(&env->header_msg, "User-Id");
    if (!env->participant || !*env->participant) {
        /* The ZAP handler authenticates every connection; anything else is not ours to serve. */
        self->st.no_identity++;
        uint64_t held = 0;
        if (brk_log_allow(&self->refused_log, &held))
            brk_log(BRK_LOG_WARN,
                    "event=dropped reason=\"message without User-Id\" suppressed=%llu",
                    (unsigned long long)held);
        goto consumed;
    }
    char why[AB_WHY_LEN];
    int rc = ab_wire_decode(self->dec, zmq_msg_data(&env->header_msg),
                            zmq_msg_size(&env->header_msg), &env->hdr, why);
    if (rc != 0) {
        s_refuse(self, &env->from, env->participant, NULL, rc, "%s", why);
        goto consumed;
    }
    if (self->track_sessions && env->hdr->kind == AMTSBOTE__V1__KIND__KIND_HELLO)
        s_session_seen(self, env);
    if (frames > 2) {
        s_refuse(self, &env->from, env->participant, env->hdr, AB_EMALFORMED,
                 "expected a header frame and at most one payload frame, got %d frames", frames);
        goto consumed;
    }
    int needs = s_needs_payload(env->hdr->kind);
    if (needs && !env->has_payload) {
        s_refuse(self, &env->from, env->participant, env->hdr, AB_EMALFORMED,
                 "%s needs a payload frame after the header (it may be empty)",
                 ab_kind_name(env->hdr->kind));
        goto consumed;
    }
    if (!needs && env->has_payload) {
        s_refuse(self, &env->from, env->participant, env->hdr, AB_EMALFORMED,
                 "%s takes no payload frame", ab_kind_name(env->hdr->kind));
        goto consumed;
    }
    if (env->has_payload && zmq_msg_size(&env->payload) > self->cfg->max_payload) {
        s_refuse(self, &env->from, env->participant, env->hdr, AB_ETOO_LARGE,
                 "payload of %zu bytes exceeds the broker's max_payload of %llu bytes",
                 zmq_msg_size(&env->payload), (unsigned long long)self->cfg->max_payload);
        goto consumed;
    }
    if (self->limits && s_is_request(env->hdr->kind)) {
        uint64_t now_ms = ab_now_ms();
        rc = brk_quota_request(self->limits, env->participant, now_ms, why, sizeof why);
        if (rc != 0) {
            s_refuse(self, &env->from, env->participant, env->hdr,
                     rc == AB_ERATE_LIMITED ? rc : AB_EUNAVAILABLE, "%s",
                     rc == AB_ERATE_LIMITED ? why : "the broker is out of memory");
            if (rc == AB_ERATE_LIMITED)
                s_pause(self, env->participant, now_ms);
            goto consumed;
        }
    }
    return 1;
consumed:
    brk_envelope_close(env);
    return 0;
}

void
brk_envelope_close(brk_envelope_t *env)
{
    zmq_msg_close(&env->header_msg);
    zmq_msg_close(&env->payload);
    env->hdr = NULL;
    env->participant = NULL;
}

void
brk_proto_stats(const brk_proto_t *self, brk_proto_stats_t *out)
{
    *out = self->st;
}
