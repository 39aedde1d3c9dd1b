/*
 * tls_gateway.c - TLS sessions on libuv TCP with OpenSSL memory BIOs, relayed to the ROUTER.
 */
#include "tls_gateway.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "quota.h"
#include "relay.h"
#include "tls.h"

#define MAX_LISTENERS 16
/* Source addresses 127.1.0.1 .. 127.255.255.254: one per session. */
#define ADDR_FIRST 0x010001u
#define ADDR_LAST 0xfffffeu

typedef struct s_sess s_sess_t;

struct brk_tls_gateway {
    uv_loop_t *loop;
    const brk_config_t *cfg;
    brk_zap_t *zap;
    SSL_CTX *ctx;
    int internal_port;
    uv_tcp_t listeners[MAX_LISTENERS];
    int nlisteners;
    int listening;
    uint8_t *addr_used; /* one bit per address below 127.0.0.0/8 */
    uint32_t next_addr;
    s_sess_t *sessions;
    int destroying;
    void (*on_refused)(void *arg, const char *category);
    void *on_refused_arg;
    void (*on_end)(void *arg, const char *address);
    void *on_end_arg;
    int open_handles;
    brk_ratelimit_t refused_log;
    brk_quota_t *limits;    /* borrowed; NULL: no bound per participant */
    uint64_t last_activity; /* uv_now of the last bytes moved by any session */
    brk_tls_stats_t st;
    char rbuf[65536]; /* one read buffer: the loop runs one callback at a time */
};

struct s_sess {
    s_sess_t *prev, *next;
    brk_tls_gateway_t *gw;
    uv_tcp_t client;
    uv_tcp_t relay;
    uv_timer_t timer;
    uv_timer_t pause_timer; /* ends a pause for the participant's rate */
    uv_connect_t connect_req;
    ab_tls_session_t *tls;
    ab_relay_t pipe; /* writes and flow control between client and relay */
    int relay_init, relay_up, handshake_done, closing, open;
    int counted;     /* in the participant's sessions (limits) */
    int rate_paused; /* not read until pause_timer fires (brk_tls_gateway_pause) */
    uint32_t addr;
    char addr_str[16];
    char peer[64];
    char participant[AB_MAX_NAME + 1];
    ab_relay_held_t held; /* plaintext that arrived before the relay was connected */
};

/* ---- loopback source addresses ------------------------------------------------------------- */

static uint32_t
s_addr_take(brk_tls_gateway_t *gw)
{
    for (uint32_t tries = 0; tries <= ADDR_LAST - ADDR_FIRST; tries++) {
        uint32_t a = gw->next_addr++;
        if (gw->next_addr > ADDR_LAST)
            gw->next_addr = ADDR_FIRST;
        if (!(gw->addr_used[a >> 3] & (1u << (a & 7)))) {
            gw->addr_used[a >> 3] |= (uint8_t)(1u << (a & 7));
            return a;
        }
    }
    return 0;
}

static void
s_addr_release(brk_tls_gateway_t *gw, uint32_t a)
{
    gw->addr_used[a >> 3] &= (uint8_t) ~(1u << (a & 7));
}

/* ---- sessions -------------------------------------------------------------------------------- */

static void
s_on_handle_closed(uv_handle_t *h)
{
    s_sess_t *s = h->data;
    if (--s->open > 0)
        return;
    brk_tls_gateway_t *gw = s->gw;
    if (s->prev)
        s->prev->next = s->next;
    else
        gw->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    ab_tls_session_destroy(&s->tls);
    ab_relay_held_free(&s->held);
    free(s);
    gw->st.sessions--;
    if (gw->destroying && !gw->sessions && gw->open_handles == 0) {
        SSL_CTX_free(gw->ctx);
        free(gw->addr_used);
        free(gw);
    }
}

/* Ends a session: both connections close, its address and identity are forgotten. */
static void
s_close(s_sess_t *s, const char *why)
{
    if (s->closing)
        return;
    s->closing = 1;
    s->pipe.closing = 1;
    if (s->counted) {
        brk_quota_conn_close(s->gw->limits, s->participant);
        s->counted = 0;
    }
    if (s->addr) {
        if (s->handshake_done && s->gw->on_end)
            s->gw->on_end(s->gw->on_end_arg, s->addr_str);
        brk_zap_unmap_address(s->gw->zap, s->addr_str);
        s_addr_release(s->gw, s->addr);
        s->addr = 0;
    }
    if (s->handshake_done)
        brk_log(BRK_LOG_INFO, "event=tls_session_end participant=%s peer=%s reason=\"%s\"",
                s->participant, s->peer, why);
    uv_close((uv_handle_t *)&s->client, s_on_handle_closed);
    uv_close((uv_handle_t *)&s->timer, s_on_handle_closed);
    uv_close((uv_handle_t *)&s->pause_timer, s_on_handle_closed);
    if (s->relay_init)
        uv_close((uv_handle_t *)&s->relay, s_on_handle_closed);
}

static void
s_refuse(s_sess_t *s, const char *category, const char *why)
{
    s->gw->st.refused++;
    if (s->gw->on_refused)
        s->gw->on_refused(s->gw->on_refused_arg, category);
    uint64_t held = 0;
    if (brk_log_allow(&s->gw->refused_log, &held))
        brk_log(BRK_LOG_WARN, "event=tls_refused peer=%s reason=\"%s\" suppressed=%llu", s->peer,
                why, (unsigned long long)held);
    s_close(s, why);
}

static void s_on_client_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void s_on_relay_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void s_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

/* Sends what TLS has ready for the client, as one write. */
static void
s_flush_tls(s_sess_t *s)
{
    if (ab_relay_flush_tls(&s->pipe) != 0)
        s_close(s, "write to the client failed");
}

static void
s_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    s_sess_t *s = h->data;
    *buf = uv_buf_init(s->gw->rbuf, sizeof s->gw->rbuf);
}

static void
s_on_relay_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    s_sess_t *s = stream->data;
    uv_timer_again(&s->timer); /* traffic: the idle timeout starts over */
    s->gw->last_activity = uv_now(s->gw->loop);
    if (nread < 0) {
        s_close(s, nread == UV_EOF ? "the broker closed the relay" : uv_strerror((int)nread));
        return;
    }
    if (nread == 0)
        return;
    if (ab_tls_session_write(s->tls, buf->base, (size_t)nread) != 0) {
        s_close(s, "TLS write failed");
        return;
    }
    /* everything the broker sent in this read goes out in one TLS write to the client */
    s_flush_tls(s);
}

static void
s_on_relay_connected(uv_connect_t *req, int status)
{
    s_sess_t *s = req->data;
    if (s->closing)
        return;
    if (status < 0) {
        s_close(s, "cannot reach the broker's internal endpoint");
        return;
    }
    s->relay_up = 1;
    s->pipe.plain_up = 1;
    if (s->held.n && ab_relay_to_plain(&s->pipe, s->held.data, s->held.n) != 0) {
        s_close(s, "relay write failed");
        return;
    }
    ab_relay_held_free(&s->held);
    uv_read_start((uv_stream_t *)&s->relay, s_alloc, s_on_relay_read);
}

static void s_on_idle(uv_timer_t *t);

/* The handshake is complete: check the identity, take an address, connect the relay. */
static void
s_on_handshake(s_sess_t *s)
{
    char why[AB_WHY_LEN];
    if (ab_tls_participant(ab_tls_session_peer(s->tls), s->participant, why) != 0) {
        char line[AB_WHY_LEN + 32];
        snprintf(line, sizeof line, "bad identity: %s", why);
        s_refuse(s, "identity", line);
        return;
    }
    if (s->gw->limits) {
        int rc = brk_quota_conn_open(s->gw->limits, s->participant, why, sizeof why);
        if (rc != 0) {
            s_refuse(s, rc == AB_ERATE_LIMITED ? "participant-capacity" : "capacity",
                     rc == AB_ERATE_LIMITED ? why : "out of memory");
            return;
        }
        s->counted = 1;
    }
    s->handshake_done = 1;
    /* from now on the timer measures idleness: restarted by traffic either way */
    uv_timer_stop(&s->timer);
    uv_timer_start(&s->timer, s_on_idle, s->gw->cfg->tls_idle_timeout_ms,
                   s->gw->cfg->tls_idle_timeout_ms);
    s->addr = s_addr_take(s->gw);
    if (!s->addr) {
        s_refuse(s, "capacity", "no loopback source address left");
        return;
    }
    struct in_addr ia = {htonl(0x7f000000u | s->addr)};
    inet_ntop(AF_INET, &ia, s->addr_str, sizeof s->addr_str);
    if (brk_zap_map_address(s->gw->zap, s->addr_str, s->participant) != 0) {
        s_close(s, "out of memory");
        return;
    }
    struct sockaddr_in src, dst;
    uv_ip4_addr(s->addr_str, 0, &src);
    uv_ip4_addr("127.0.0.1", s->gw->internal_port, &dst);
    uv_tcp_init(s->gw->loop, &s->relay);
    s->relay.data = s;
    s->relay_init = 1;
    s->open++;
    s->connect_req.data = s;
    int rc = uv_tcp_bind(&s->relay, (const struct sockaddr *)&src, 0);
    if (rc == 0)
        rc = uv_tcp_connect(&s->connect_req, &s->relay, (const struct sockaddr *)&dst,
                            s_on_relay_connected);
    if (rc != 0) {
        s_close(s, uv_strerror(rc));
        return;
    }
    uv_tcp_nodelay(&s->relay, 1);
    s->gw->st.accepted++;
    brk_log(BRK_LOG_INFO, "event=tls_session participant=%s peer=%s relay=%s", s->participant,
            s->peer, s->addr_str);
}

static void
s_on_idle(uv_timer_t *t)
{
    s_sess_t *s = t->data;
    char why[96];
    snprintf(why, sizeof why, "no traffic for %llu ms (tls_idle_timeout_ms)",
             (unsigned long long)s->gw->cfg->tls_idle_timeout_ms);
    s_close(s, why);
}

static void
s_on_client_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    s_sess_t *s = stream->data;
    if (nread < 0) {
        if (!s->handshake_done)
            s_refuse(s, "client-left", "the client left during the handshake");
        else
            s_close(s,
                    nread == UV_EOF ? "the client closed the connection" : uv_strerror((int)nread));
        return;
    }
    if (nread == 0)
        return;
    if (s->handshake_done)
        uv_timer_again(&s->timer);
    s->gw->last_activity = uv_now(s->gw->loop);
    if (ab_tls_session_feed(s->tls, buf->base, (size_t)nread) != 0) {
        s_close(s, "out of memory");
        return;
    }
    char why[AB_WHY_LEN];
    if (!s->handshake_done) {
        int rc = ab_tls_session_handshake(s->tls, why);
        s_flush_tls(s); /* handshake messages, or the alert that refuses it */
        if (rc < 0) {
            s_refuse(s, "handshake", why);
            return;
        }
        if (rc == 0)
            return;
        s_on_handshake(s);
        if (s->closing)
            return;
    }
    for (;;) {
        int n = ab_tls_session_read(s->tls, s->gw->rbuf, sizeof s->gw->rbuf, why);
        if (n == 0)
            break;
        if (n < 0) {
            s_flush_tls(s);
            s_close(s, why);
            return;
        }
        int rc = s->relay_up ? ab_relay_to_plain(&s->pipe, s->gw->rbuf, (size_t)n)
                             : ab_relay_hold(&s->held, s->gw->rbuf, (size_t)n);
        if (rc != 0) {
            s_close(s, "relay write failed");
            return;
        }
    }
    s_flush_tls(s); /* TLS 1.3 may answer post-handshake messages */
    /* the relay's flow control may have started reading again during a pause */
    if (s->rate_paused && !s->pipe.tls_paused)
        uv_read_stop((uv_stream_t *)&s->client);
}

static void
s_on_timeout(uv_timer_t *t)
{
    s_sess_t *s = t->data;
    char why[96];
    snprintf(why, sizeof why, "no handshake within %llu ms",
             (unsigned long long)s->gw->cfg->tls_handshake_timeout_ms);
    s_refuse(s, "timeout", why);
}

static void
s_on_connection(uv_stream_t *server, int status)
{
    brk_tls_gateway_t *gw = server->data;
    if (status < 0)
        return;
    s_sess_t *s = calloc(1, sizeof *s);
    if (!s)
        return;
    s->gw = gw;
    uv_tcp_init(gw->loop, &s->client);
    uv_timer_init(gw->loop, &s->timer);
    uv_timer_init(gw->loop, &s->pause_timer);
    s->client.data = s->timer.data = s->pause_timer.data = s;
    s->open = 3;
    s->next = gw->sessions;
    if (s->next)
        s->next->prev = s;
    gw->sessions = s;
    gw->st.sessions++;
    snprintf(s->peer, sizeof s->peer, "?");
    if (uv_accept(server, (uv_stream_t *)&s->client) != 0) {
        s_close(s, "accept failed");
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&s->client, (struct sockaddr *)&ss, &len) == 0 &&
        ss.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
        snprintf(s->peer, sizeof s->peer, "%s:%u", ip, ntohs(in->sin_port));
    }
    if (gw->st.sessions > gw->cfg->max_connections) {
        s_refuse(s, "capacity", "too many connections (max_connections)");
        return;
    }
    s->tls = ab_tls_session_new(gw->ctx, 1, NULL);
    if (!s->tls) {
        s_close(s, "out of memory");
        return;
    }
    s->pipe = (ab_relay_t){.tls_side = (uv_stream_t *)&s->client,
                           .plain_side = (uv_stream_t *)&s->relay,
                           .tls = s->tls,
                           .alloc = s_alloc,
                           .tls_read = s_on_client_read,
                           .plain_read = s_on_relay_read,
                           .tls_up = 1,
                           .queue_high = gw->cfg->max_pending_bytes};
    uv_tcp_nodelay(&s->client, 1);
    uv_timer_start(&s->timer, s_on_timeout, gw->cfg->tls_handshake_timeout_ms, 0);
    uv_read_start((uv_stream_t *)&s->client, s_alloc, s_on_client_read);
}

/* ---- the gateway ----------------------------------------------------------------------------- */

/* A server context from the broker's settings; NULL with the file at fault named in `err`. */
static SSL_CTX *
s_ctx_new(const brk_config_t *cfg, char *err, size_t errlen)
{
    ab_tls_config_t tc = {.cert = cfg->tls_cert,
                          .key = cfg->tls_key,
                          .ca = cfg->tls_ca,
                          .crl = cfg->tls_crl,
                          .allow_tls12 = cfg->tls12};
    return ab_tls_ctx_new(1, &tc, err, errlen);
}

brk_tls_gateway_t *
brk_tls_gateway_new(uv_loop_t *loop, const brk_config_t *cfg, brk_zap_t *zap, int internal_port,
                    char *err, size_t errlen)
{
    SSL_CTX *ctx = s_ctx_new(cfg, err, errlen);
    if (!ctx)
        return NULL;
    brk_tls_gateway_t *gw = calloc(1, sizeof *gw);
    uint8_t *used = calloc(1, (ADDR_LAST >> 3) + 1);
    if (!gw || !used) {
        snprintf(err, errlen, "out of memory");
        SSL_CTX_free(ctx);
        free(gw);
        free(used);
        return NULL;
    }
    gw->loop = loop;
    gw->cfg = cfg;
    gw->zap = zap;
    gw->ctx = ctx;
    gw->internal_port = internal_port;
    gw->addr_used = used;
    gw->next_addr = ADDR_FIRST;
    gw->listening = 1;
    return gw;
}

int
brk_tls_gateway_listen(brk_tls_gateway_t *gw, const char *uri, char *bound, size_t cap, char *err,
                       size_t errlen)
{
    if (gw->nlisteners >= MAX_LISTENERS) {
        snprintf(err, errlen, "%s: at most %d tls listeners", uri, MAX_LISTENERS);
        return UV_EINVAL;
    }
    char host[64];
    const char *hp = uri + strlen("tls://");
    const char *colon = strrchr(hp, ':');
    if (!colon || (size_t)(colon - hp) >= sizeof host) {
        snprintf(err, errlen, "listener '%s' is not tls://HOST:PORT", uri);
        return UV_EINVAL;
    }
    memcpy(host, hp, (size_t)(colon - hp));
    host[colon - hp] = '\0';
    int port = strcmp(colon + 1, "*") == 0 ? 0 : atoi(colon + 1);
    struct sockaddr_in addr;
    int rc = uv_ip4_addr(host, port, &addr);
    if (rc != 0) {
        snprintf(err, errlen, "listener '%s': '%s' is not an IPv4 address", uri, host);
        return rc;
    }
    uv_tcp_t *l = &gw->listeners[gw->nlisteners];
    uv_tcp_init(gw->loop, l);
    l->data = gw;
    gw->nlisteners++;
    gw->open_handles++;
    if ((rc = uv_tcp_bind(l, (const struct sockaddr *)&addr, 0)) != 0 ||
        (rc = uv_listen((uv_stream_t *)l, 511, s_on_connection)) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", uri, uv_strerror(rc));
        return rc;
    }
    struct sockaddr_in got;
    int len = sizeof got;
    uv_tcp_getsockname(l, (struct sockaddr *)&got, &len);
    snprintf(bound, cap, "tls://%s:%u", host, ntohs(got.sin_port));
    return 0;
}

int
brk_tls_gateway_reload(brk_tls_gateway_t *gw, char *err, size_t errlen)
{
    SSL_CTX *ctx = s_ctx_new(gw->cfg, err, errlen);
    if (!ctx)
        return -1;
    SSL_CTX_free(gw->ctx); /* sessions hold their own references */
    gw->ctx = ctx;
    int closed = 0;
    for (s_sess_t *s = gw->sessions; s; s = s->next) {
        char why[AB_WHY_LEN];
        if (!s->handshake_done || s->closing)
            continue;
        if (ab_tls_session_verify_again(s->tls, ctx, 1, why) != 0) {
            char line[AB_WHY_LEN + 32];
            snprintf(line, sizeof line, "after reload: %s", why);
            brk_log(BRK_LOG_WARN, "event=tls_disconnected participant=%s peer=%s reason=\"%s\"",
                    s->participant, s->peer, line);
            s_close(s, line);
            closed++;
        }
    }
    return closed;
}

static void
s_on_listener_closed(uv_handle_t *h)
{
    brk_tls_gateway_t *gw = h->data;
    gw->open_handles--;
    if (gw->destroying && !gw->sessions && gw->open_handles == 0) {
        SSL_CTX_free(gw->ctx);
        free(gw->addr_used);
        free(gw);
    }
}

void
brk_tls_gateway_stop_listening(brk_tls_gateway_t *gw)
{
    if (!gw->listening)
        return;
    gw->listening = 0;
    for (int i = 0; i < gw->nlisteners; i++)
        uv_close((uv_handle_t *)&gw->listeners[i], s_on_listener_closed);
}

uint64_t
brk_tls_gateway_quiet_ms(const brk_tls_gateway_t *gw)
{
    for (const s_sess_t *s = gw->sessions; s; s = s->next)
        if (!s->closing && uv_stream_get_write_queue_size((const uv_stream_t *)&s->client) > 0)
            return 0; /* still writing to a client */
    uint64_t now = uv_now(gw->loop);
    return now > gw->last_activity ? now - gw->last_activity : 0;
}

void
brk_tls_gateway_on_refused(brk_tls_gateway_t *self, void (*fn)(void *arg, const char *category),
                           void *arg)
{
    self->on_refused = fn;
    self->on_refused_arg = arg;
}

void
brk_tls_gateway_on_session_end(brk_tls_gateway_t *self, void (*fn)(void *arg, const char *address),
                               void *arg)
{
    self->on_end = fn;
    self->on_end_arg = arg;
}

void
brk_tls_gateway_set_limits(brk_tls_gateway_t *self, brk_quota_t *limits)
{
    self->limits = limits;
}

static void
s_on_pause_end(uv_timer_t *t)
{
    s_sess_t *s = t->data;
    s->rate_paused = 0;
    if (!s->closing && !s->pipe.tls_paused)
        uv_read_start((uv_stream_t *)&s->client, s_alloc, s_on_client_read);
}

void
brk_tls_gateway_pause(brk_tls_gateway_t *self, const char *participant, unsigned ms)
{
    for (s_sess_t *s = self->sessions; s; s = s->next) {
        if (!s->handshake_done || s->closing || s->rate_paused ||
            strcmp(s->participant, participant) != 0)
            continue;
        s->rate_paused = 1;
        if (!s->pipe.tls_paused)
            uv_read_stop((uv_stream_t *)&s->client);
        uv_timer_start(&s->pause_timer, s_on_pause_end, ms, 0);
    }
}

void
brk_tls_gateway_stats(const brk_tls_gateway_t *gw, brk_tls_stats_t *out)
{
    *out = gw->st;
}

void
brk_tls_gateway_destroy(brk_tls_gateway_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    brk_tls_gateway_t *gw = *self_p;
    *self_p = NULL;
    gw->destroying = 1;
    brk_tls_gateway_stop_listening(gw);
    for (s_sess_t *s = gw->sessions; s; s = s->next)
        s_close(s, "the broker is stopping");
    if (!gw->sessions && gw->open_handles == 0) {
        SSL_CTX_free(gw->ctx);
        free(gw->addr_used);
        free(gw);
    }
}
