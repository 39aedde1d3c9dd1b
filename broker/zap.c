/*
 * zap.c - ZAP requests answered on the loop.
 */
#include "zap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>
#include <zmq.h>

#include "log.h"
#include "loop_zmq.h"
#include "wire.h"

#define ZAP_MAX_FRAMES 8

/* A loopback address of a TLS session's relay, and whose session it is. */
typedef struct s_addr {
    char address[16]; /* 127.x.y.z */
    char participant[AB_MAX_NAME + 1];
    UT_hash_handle hh;
} s_addr_t;

struct brk_zap {
    s_addr_t *addrs;
    void *sock;
    brk_zsock_t *zs;
    const brk_config_t *cfg;
    uint64_t accepted, refused;
    int refuse_all;
    brk_ratelimit_t refused_log;
    void (*on_accept)(void *arg, const char *transport);
    void *on_accept_arg;
};

static void
s_reply(brk_zap_t *self, zmq_msg_t *reqid, const char *status, const char *text, const char *user)
{
    zmq_send(self->sock, "1.0", 3, ZMQ_SNDMORE);
    zmq_msg_send(reqid, self->sock, ZMQ_SNDMORE);
    zmq_send(self->sock, status, strlen(status), ZMQ_SNDMORE);
    zmq_send(self->sock, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(self->sock, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(self->sock, "", 0, 0);
    brk_zsock_kick(self->zs);
}

/* Copies frame `m` into `out` as a string (cut at `cap`). */
static void
s_str(zmq_msg_t *m, char *out, size_t cap)
{
    size_t n = zmq_msg_size(m);
    if (n >= cap)
        n = cap - 1;
    memcpy(out, zmq_msg_data(m), n);
    out[n] = '\0';
}

static int
s_read(void *sock, void *arg)
{
    brk_zap_t *self = arg;
    zmq_msg_t f[ZAP_MAX_FRAMES];
    int n = 0;
    for (;;) {
        zmq_msg_init(&f[n]);
        if (zmq_msg_recv(&f[n], sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&f[n]);
            if (n == 0)
                return -1;
            break;
        }
        int more = zmq_msg_more(&f[n]);
        n++;
        if (!more)
            break;
        if (n == ZAP_MAX_FRAMES) { /* more than we need: drain the rest */
            zmq_msg_t x;
            zmq_msg_init(&x);
            while (zmq_msg_recv(&x, sock, ZMQ_DONTWAIT) >= 0 && zmq_msg_more(&x))
                ;
            zmq_msg_close(&x);
            break;
        }
    }
    /* version, request id, domain, address, identity, mechanism, credentials... */
    char domain[64] = "", address[64] = "", mech[16] = "", user[AB_MAX_NAME + 2] = "";
    char mechname[16] = "PLAIN";
    if (n >= 6) {
        s_str(&f[2], domain, sizeof domain);
        s_str(&f[3], address, sizeof address);
        s_str(&f[5], mech, sizeof mech);
    }
    if (n >= 7)
        s_str(&f[6], user, sizeof user);
    const char *status = "400", *text = "refused";
    char reason[AB_WHY_LEN + 64] = "";
    if (n < 6) {
        snprintf(reason, sizeof reason, "malformed ZAP request");
    } else if (self->refuse_all) {
        snprintf(reason, sizeof reason, "the broker is shutting down");
        text = "the broker is shutting down";
    } else if (strcmp(domain, BRK_ZAP_DOMAIN) != 0) {
        snprintf(reason, sizeof reason, "unknown ZAP domain");
    } else if (strcmp(mech, "NULL") == 0) {
        /* the internal endpoint: only the TLS gateway's relays, each from its own address */
        s_addr_t *a = NULL;
        HASH_FIND_STR(self->addrs, address, a);
        if (!a) {
            snprintf(reason, sizeof reason,
                     "connection to the internal endpoint from %s, which carries no TLS session",
                     address);
            text = "no TLS session for this address";
        } else {
            snprintf(user, sizeof user, "%s", a->participant);
            snprintf(mechname, sizeof mechname, "TLS");
            status = "200";
            text = "OK";
        }
    } else if (strcmp(mech, "PLAIN") != 0) {
        snprintf(reason, sizeof reason, "mechanism %s is not accepted", mech);
    } else if (!self->cfg->insecure_plain_identities) {
        snprintf(reason, sizeof reason,
                 "plain identities are not accepted (the broker runs without "
                 "--insecure-plain-identities)");
        text = "plain identities are not accepted by this broker";
    } else {
        char why[AB_WHY_LEN];
        if (ab_wire_check_participant(user, why) != 0) {
            snprintf(reason, sizeof reason, "%s", why);
            text = "not a valid participant address";
        } else {
            status = "200";
            text = "OK";
        }
    }
    if (n >= 2) {
        if (status[0] == '2') {
            self->accepted++;
            brk_log(BRK_LOG_INFO, "event=connect participant=%s peer=%s mechanism=%s", user,
                    address, mechname);
            if (self->on_accept) /* NULL mechanism: a session of the TLS gateway */
                self->on_accept(self->on_accept_arg,
                                strcmp(mechname, "PLAIN") == 0 ? "plain" : "tls");
            s_reply(self, &f[1], status, text, user);
        } else {
            self->refused++;
            uint64_t held = 0;
            if (brk_log_allow(&self->refused_log, &held))
                brk_log(BRK_LOG_WARN, "event=connect_refused peer=%s reason=\"%s\" suppressed=%llu",
                        address, reason, (unsigned long long)held);
            s_reply(self, &f[1], status, text, "");
        }
    }
    for (int i = 0; i < n; i++)
        zmq_msg_close(&f[i]);
    return 0;
}

brk_zap_t *
brk_zap_new(uv_loop_t *loop, void *zctx, const brk_config_t *cfg)
{
    brk_zap_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->cfg = cfg;
    self->sock = zmq_socket(zctx, ZMQ_REP);
    int linger = 0;
    if (!self->sock || zmq_setsockopt(self->sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_bind(self->sock, "inproc://zeromq.zap.01") != 0) {
        brk_log(BRK_LOG_ERROR, "event=zap_bind_failed error=\"%s\"", zmq_strerror(zmq_errno()));
        if (self->sock)
            zmq_close(self->sock);
        free(self);
        return NULL;
    }
    self->zs = brk_zsock_new(loop, self->sock, 64, s_read, NULL, self);
    if (!self->zs) {
        zmq_close(self->sock);
        free(self);
        return NULL;
    }
    return self;
}

int
brk_zap_map_address(brk_zap_t *self, const char *address, const char *participant)
{
    s_addr_t *a = NULL;
    HASH_FIND_STR(self->addrs, address, a);
    if (!a) {
        a = calloc(1, sizeof *a);
        if (!a)
            return AB_ENOMEM;
        snprintf(a->address, sizeof a->address, "%s", address);
        HASH_ADD_STR(self->addrs, address, a);
    }
    snprintf(a->participant, sizeof a->participant, "%s", participant);
    return 0;
}

void
brk_zap_unmap_address(brk_zap_t *self, const char *address)
{
    s_addr_t *a = NULL;
    HASH_FIND_STR(self->addrs, address, a);
    if (a) {
        HASH_DEL(self->addrs, a);
        free(a);
    }
}

void
brk_zap_refuse_all(brk_zap_t *self)
{
    self->refuse_all = 1;
}

void
brk_zap_on_accept(brk_zap_t *self, void (*fn)(void *arg, const char *transport), void *arg)
{
    self->on_accept = fn;
    self->on_accept_arg = arg;
}

void
brk_zap_counts(const brk_zap_t *self, uint64_t *accepted, uint64_t *refused)
{
    *accepted = self->accepted;
    *refused = self->refused;
}

void
brk_zap_destroy(brk_zap_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    brk_zap_t *self = *self_p;
    *self_p = NULL;
    brk_zsock_destroy(&self->zs);
    zmq_close(self->sock);
    s_addr_t *a, *tmp;
    HASH_ITER(hh, self->addrs, a, tmp)
    {
        HASH_DEL(self->addrs, a);
        free(a);
    }
    free(self);
}
