/*
 * proto.c - frame checks before decoding, header decode, error replies, sending.
 */
#include "proto.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

struct brk_proto {
    void *router;
    const brk_config_t *cfg;
    brk_zsock_t *zs;
    ab_wire_decoder_t *dec;
    brk_proto_stats_t st;
};

brk_proto_t *
brk_proto_new(void *router, const brk_config_t *cfg)
{
    brk_proto_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->router = router;
    self->cfg = cfg;
    self->dec = ab_wire_decoder_new();
    if (!self->dec) {
        free(self);
        return NULL;
    }
    return self;
}

void
brk_proto_destroy(brk_proto_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ab_wire_decoder_destroy(&(*self_p)->dec);
    free(*self_p);
    *self_p = NULL;
}

void
brk_proto_set_zsock(brk_proto_t *self, brk_zsock_t *zs)
{
    self->zs = zs;
}

int
brk_proto_send(void *ctx, const brk_peer_t *to, const ab_header_t *hdr, void *payload)
{
    brk_proto_t *self = ctx;
    uint8_t buf[AB_MAX_HEADER_BYTES];
    int n = ab_wire_encode(hdr, buf, sizeof buf);
    if (n < 0) {
        brk_log(BRK_LOG_ERROR, "event=encode_failed kind=%s", ab_kind_name(hdr->kind));
        return AB_EINTERNAL;
    }
    int rc = 0;
    if (zmq_send(self->router, to->id, to->len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        if (zmq_errno() == EHOSTUNREACH) {
            self->st.unroutable++;
            rc = AB_EPROVIDER_GONE;
        } else {
            self->st.queue_full++;
            rc = AB_EUNAVAILABLE;
        }
        goto out;
    }
    /* After the routing id is accepted the rest of the message goes out as one. */
    if (zmq_send(self->router, buf, (size_t)n, payload ? ZMQ_SNDMORE : 0) < 0) {
        rc = AB_EUNAVAILABLE;
        goto out;
    }
    if (payload) {
        zmq_msg_t copy;
        zmq_msg_init(&copy);
        zmq_msg_copy(&copy, payload);
        if (zmq_msg_send(&copy, self->router, 0) < 0) {
            zmq_msg_close(&copy);
            rc = AB_EUNAVAILABLE;
            goto out;
        }
    }
    self->st.sent++;
out:
    brk_zsock_kick(self->zs);
    return rc;
}

static void s_refuse(brk_proto_t *self, const brk_peer_t *to, const ab_header_t *hdr, int err,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Answers a refused message with `err`, carrying its correlation id when it had one. */
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
s_refuse(brk_proto_t *self, const brk_peer_t *to, const ab_header_t *hdr, int err, const char *fmt,
         ...)
{
    char text[AB_MAX_ERROR_TEXT];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (err == AB_ETOO_LARGE)
        self->st.too_large++;
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
    brk_log(BRK_LOG_INFO, "event=refused error=%s reason=\"%s\"", ab_err_name(err), text);
    brk_proto_send(self, to, &h, NULL);
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
        brk_log(BRK_LOG_WARN, "event=dropped reason=\"message without User-Id\"");
        goto consumed;
    }
    char why[AB_WHY_LEN];
    int rc = ab_wire_decode(self->dec, zmq_msg_data(&env->header_msg),
                            zmq_msg_size(&env->header_msg), &env->hdr, why);
    if (rc != 0) {
        s_refuse(self, &env->from, NULL, rc, "%s", why);
        goto consumed;
    }
    if (frames > 2) {
        s_refuse(self, &env->from, env->hdr, AB_EMALFORMED,
                 "expected a header frame and at most one payload frame, got %d frames", frames);
        goto consumed;
    }
    int needs = s_needs_payload(env->hdr->kind);
    if (needs && !env->has_payload) {
        s_refuse(self, &env->from, env->hdr, AB_EMALFORMED,
                 "%s needs a payload frame after the header (it may be empty)",
                 ab_kind_name(env->hdr->kind));
        goto consumed;
    }
    if (!needs && env->has_payload) {
        s_refuse(self, &env->from, env->hdr, AB_EMALFORMED, "%s takes no payload frame",
                 ab_kind_name(env->hdr->kind));
        goto consumed;
    }
    if (env->has_payload && zmq_msg_size(&env->payload) > self->cfg->max_payload) {
        s_refuse(self, &env->from, env->hdr, AB_ETOO_LARGE,
                 "payload of %zu bytes exceeds the broker's max_payload of %llu bytes",
                 zmq_msg_size(&env->payload), (unsigned long long)self->cfg->max_payload);
        goto consumed;
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
