/*
 * tunnel.c - plain loopback TCP in, mutual TLS to the broker out, on a libuv loop of its own.
 *
 * The mirror of the broker's TLS gateway (broker/tls_gateway.c): the same memory-BIO session from
 * common/tls.c, pumped the same way, as the initiator. One session per accepted connection:
 *
 *   accept -> TCP connect to the broker -> TLS handshake -> the broker's first bytes -> relay
 *
 * Plaintext that arrives from the local side before the handshake is done is kept (bounded) and
 * sent after it. With TLS 1.3 the client's handshake completes before the broker has looked at
 * the client's certificate, so a refusal arrives only afterwards, as an alert or a closed
 * connection: a session counts as established, and its failures as the broker's refusal, only
 * once the broker has sent data through it (its ZMTP greeting comes at once).
 */
#include "tunnel.h"

#include "amtsbote.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "relay.h"

#define S_TIMEOUT_MS 10000           /* TCP connect + handshake + the broker's first bytes */
#define S_LOG_BURST 5                /* failure lines per second, the rest counted */
#define S_WHY_LEN (AB_WHY_LEN + 256) /* a failure's sentence */

typedef struct s_sess s_sess_t;

struct ab_tunnel {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t wakeup; /* stops a tunnel that runs on its own thread */
    uv_signal_t sigint, sigterm;
    int signals; /* the signal handles are initialised */
    SSL_CTX *ctx;
    struct sockaddr_storage broker_addr;
    char host[256];
    char broker[300];
    char local[64];
    char participant[AB_MAX_NAME + 1];
    uint32_t timeout_ms;
    ab_tunnel_log_fn *log;
    void *log_arg;
    s_sess_t *sessions;
    uint64_t next_id;
    int running;  /* run or start was called */
    int threaded; /* start was called */
    int stopping; /* the handles are closing */
    uv_thread_t thread;
    uint64_t log_sec, suppressed;
    unsigned log_n;
    /* what ab_tunnel_failure() reports; written on the loop's thread, read on any */
    uv_mutex_t mu;
    uint64_t failures, established;
    int fail_kind;
    char fail_why[S_WHY_LEN];
    char rbuf[65536]; /* one read buffer: the loop runs one callback at a time */
};

struct s_sess {
    s_sess_t *prev, *next;
    ab_tunnel_t *t;
    uint64_t id;
    uv_tcp_t local;  /* the plain connection accepted on loopback */
    uv_tcp_t remote; /* the TLS connection to the broker */
    uv_timer_t timer;
    uv_connect_t connect_req;
    ab_tls_session_t *tls;
    ab_relay_t pipe; /* writes and flow control between local and remote (common/relay.c) */
    int open, closing, remote_up, handshake_done, established;
    ab_relay_held_t held; /* plaintext that arrived before the handshake was done */
};

/* ---- logging and failures ------------------------------------------------------------------ */

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
s_log(ab_tunnel_t *t, const char *fmt, ...)
{
    if (!t->log)
        return;
    char line[S_WHY_LEN + 256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    t->log(t->log_arg, line);
}

/* A failure line is allowed S_LOG_BURST times a second: a refused client reconnects at once. */
static int
s_log_allow(ab_tunnel_t *t, uint64_t *held)
{
    uint64_t sec = uv_now(&t->loop) / 1000;
    if (sec != t->log_sec) {
        t->log_sec = sec;
        t->log_n = 0;
    }
    if (t->log_n >= S_LOG_BURST) {
        t->suppressed++;
        return 0;
    }
    t->log_n++;
    *held = t->suppressed;
    t->suppressed = 0;
    return 1;
}

static void
s_record(ab_tunnel_t *t, int kind, const char *why)
{
    uv_mutex_lock(&t->mu);
    t->failures++;
    t->fail_kind = kind;
    snprintf(t->fail_why, sizeof t->fail_why, "%s", why);
    uv_mutex_unlock(&t->mu);
}

/* ---- sessions -------------------------------------------------------------------------------- */

static void
s_on_handle_closed(uv_handle_t *h)
{
    s_sess_t *s = h->data;
    if (--s->open > 0)
        return;
    ab_tunnel_t *t = s->t;
    if (s->prev)
        s->prev->next = s->next;
    else
        t->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    ab_tls_session_destroy(&s->tls);
    ab_relay_held_free(&s->held);
    free(s);
}

/* Ends a session: both connections close. Before the session was established, `kind` says
 * whether this was a failure to report (AB_TUNNEL_*) or the local client leaving (OK). */
static void
s_close(s_sess_t *s, int kind, const char *why)
{
    if (s->closing)
        return;
    s->closing = 1;
    s->pipe.closing = 1;
    ab_tunnel_t *t = s->t;
    uint64_t held = 0;
    if (!s->established && kind != AB_TUNNEL_OK) {
        s_record(t, kind, why);
        if (s_log_allow(t, &held))
            s_log(t, "session=%llu event=%s reason=\"%s\" suppressed=%llu",
                  (unsigned long long)s->id, kind == AB_TUNNEL_TLS ? "refused" : "unreachable", why,
                  (unsigned long long)held);
    } else {
        s_log(t, "session=%llu event=closed reason=\"%s\"", (unsigned long long)s->id, why);
    }
    uv_close((uv_handle_t *)&s->local, s_on_handle_closed);
    uv_close((uv_handle_t *)&s->remote, s_on_handle_closed);
    uv_close((uv_handle_t *)&s->timer, s_on_handle_closed);
}

static void s_on_local_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void s_on_remote_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void s_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

/* Sends what TLS has ready for the broker, as one write. */
static void
s_flush_tls(s_sess_t *s)
{
    if (ab_relay_flush_tls(&s->pipe) != 0)
        s_close(s, AB_TUNNEL_UNREACHABLE, "the write to the broker failed");
}

static void
s_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    s_sess_t *s = h->data;
    *buf = uv_buf_init(s->t->rbuf, sizeof s->t->rbuf);
}

/* The TLS alert in OpenSSL's text ("...:sslv3 alert certificate expired"), or NULL. */
static const char *
s_alert(const char *why, char *out, size_t cap)
{
    const char *a = strstr(why, " alert ");
    if (!a)
        return NULL;
    a += strlen(" alert ");
    size_t n = strcspn(a, ";");
    snprintf(out, cap, "%.*s", (int)n, a);
    return out;
}

/* The session failed before the broker sent anything: say which side refused which. */
static void
s_fail_tls(s_sess_t *s, const char *why)
{
    char line[S_WHY_LEN], alert[128];
    const char *cert = "certificate refused: ";
    if (!s->handshake_done && strncmp(why, cert, strlen(cert)) == 0)
        snprintf(line, sizeof line,
                 "the broker's certificate: %s (checked against the CA file "
                 "and the host '%s')",
                 why + strlen(cert), s->t->host);
    else if (s->handshake_done && s_alert(why, alert, sizeof alert))
        snprintf(line, sizeof line, "the broker refused this client's certificate: %s", alert);
    else if (s_alert(why, alert, sizeof alert))
        snprintf(line, sizeof line, "the broker refused the TLS handshake: %s", alert);
    else if (s->handshake_done)
        snprintf(line, sizeof line, "the broker refused this client's certificate: %s", why);
    else
        snprintf(line, sizeof line, "the TLS handshake with the broker failed: %s", why);
    s_close(s, AB_TUNNEL_TLS, line);
}

/* Decrypts what the broker sent and hands it to the local client. */
static void
s_pump_in(s_sess_t *s)
{
    ab_tunnel_t *t = s->t;
    char why[AB_WHY_LEN];
    for (;;) {
        int n = ab_tls_session_read(s->tls, t->rbuf, sizeof t->rbuf, why);
        if (n == 0)
            break;
        if (n < 0) {
            s_flush_tls(s);
            if (!s->established)
                s_fail_tls(s, why);
            else
                s_close(s, AB_TUNNEL_OK, why);
            return;
        }
        if (!s->established) {
            s->established = 1;
            uv_timer_stop(&s->timer);
            uv_mutex_lock(&t->mu);
            t->established++;
            uv_mutex_unlock(&t->mu);
            s_log(t, "session=%llu event=connected broker=%s", (unsigned long long)s->id,
                  t->broker);
        }
        if (ab_relay_to_plain(&s->pipe, t->rbuf, (size_t)n) != 0) {
            s_close(s, AB_TUNNEL_OK, "the write to the local client failed");
            return;
        }
    }
    s_flush_tls(s); /* TLS 1.3 may answer post-handshake messages */
}

static void
s_on_remote_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    s_sess_t *s = stream->data;
    if (nread < 0) {
        if (s->established)
            s_close(s, AB_TUNNEL_OK,
                    nread == UV_EOF ? "the broker closed the connection" : uv_strerror((int)nread));
        else if (s->handshake_done)
            s_fail_tls(s, "it closed the connection after the TLS handshake (its log says why)");
        else
            s_close(s, AB_TUNNEL_TLS, "the broker closed the connection during the TLS handshake");
        return;
    }
    if (nread == 0)
        return;
    if (ab_tls_session_feed(s->tls, buf->base, (size_t)nread) != 0) {
        s_close(s, AB_TUNNEL_OK, "out of memory");
        return;
    }
    if (!s->handshake_done) {
        char why[AB_WHY_LEN];
        int rc = ab_tls_session_handshake(s->tls, why);
        s_flush_tls(s); /* handshake messages, or the alert that refuses the broker */
        if (rc < 0) {
            s_fail_tls(s, why);
            return;
        }
        if (rc == 0 || s->closing)
            return;
        s->handshake_done = 1;
        /* what the local client sent meanwhile goes out in one TLS write */
        if (s->held.n && ab_tls_session_write(s->tls, s->held.data, s->held.n) != 0) {
            s_close(s, AB_TUNNEL_OK, "TLS write failed");
            return;
        }
        ab_relay_held_free(&s->held);
        s_flush_tls(s);
        if (s->closing)
            return;
    }
    s_pump_in(s);
}

static void
s_on_local_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    s_sess_t *s = stream->data;
    if (nread < 0) {
        s_close(s, AB_TUNNEL_OK,
                nread == UV_EOF ? "the local client closed the connection"
                                : uv_strerror((int)nread));
        return;
    }
    if (nread == 0)
        return;
    if (!s->handshake_done) {
        if (ab_relay_hold(&s->held, buf->base, (size_t)nread) != 0)
            s_close(s, AB_TUNNEL_OK, "too much data from the local client before the handshake");
        return;
    }
    /* everything the local client sent in this read goes out in one TLS write */
    if (ab_tls_session_write(s->tls, buf->base, (size_t)nread) != 0) {
        s_close(s, AB_TUNNEL_OK, "TLS write failed");
        return;
    }
    s_flush_tls(s);
}

static void
s_on_remote_connected(uv_connect_t *req, int status)
{
    s_sess_t *s = req->data;
    if (s->closing)
        return;
    if (status < 0) {
        char why[S_WHY_LEN];
        snprintf(why, sizeof why, "cannot connect to the broker at %s: %s", s->t->broker,
                 uv_strerror(status));
        s_close(s, AB_TUNNEL_UNREACHABLE, why);
        return;
    }
    s->remote_up = 1;
    s->pipe.tls_up = 1;
    uv_tcp_nodelay(&s->remote, 1);
    char why[AB_WHY_LEN];
    if (ab_tls_session_handshake(s->tls, why) < 0) { /* writes the ClientHello */
        s_fail_tls(s, why);
        return;
    }
    s_flush_tls(s);
    if (!s->closing)
        uv_read_start((uv_stream_t *)&s->remote, s_alloc, s_on_remote_read);
}

static void
s_on_timeout(uv_timer_t *timer)
{
    s_sess_t *s = timer->data;
    ab_tunnel_t *t = s->t;
    char why[S_WHY_LEN];
    if (!s->remote_up) {
        snprintf(why, sizeof why, "no TCP connection to the broker at %s within %u ms", t->broker,
                 t->timeout_ms);
        s_close(s, AB_TUNNEL_UNREACHABLE, why);
    } else if (!s->handshake_done) {
        snprintf(why, sizeof why,
                 "no TLS handshake with the broker at %s within %u ms (is it a "
                 "tls:// listener?)",
                 t->broker, t->timeout_ms);
        s_close(s, AB_TUNNEL_TLS, why);
    } else {
        snprintf(why, sizeof why, "the broker at %s sent nothing within %u ms of the handshake",
                 t->broker, t->timeout_ms);
        s_close(s, AB_TUNNEL_TLS, why);
    }
}

static void
s_on_connection(uv_stream_t *server, int status)
{
    ab_tunnel_t *t = server->data;
    if (status < 0 || t->stopping)
        return;
    s_sess_t *s = calloc(1, sizeof *s);
    if (!s)
        return;
    s->t = t;
    s->id = ++t->next_id;
    uv_tcp_init(&t->loop, &s->local);
    uv_tcp_init(&t->loop, &s->remote);
    uv_timer_init(&t->loop, &s->timer);
    s->local.data = s->remote.data = s->timer.data = s;
    s->connect_req.data = s;
    s->open = 3;
    s->next = t->sessions;
    if (s->next)
        s->next->prev = s;
    t->sessions = s;
    if (uv_accept(server, (uv_stream_t *)&s->local) != 0) {
        s_close(s, AB_TUNNEL_OK, "accept failed");
        return;
    }
    s->tls = ab_tls_session_new(t->ctx, 0, t->host);
    if (!s->tls) {
        s_close(s, AB_TUNNEL_OK, "out of memory");
        return;
    }
    s->pipe = (ab_relay_t){.tls_side = (uv_stream_t *)&s->remote,
                           .plain_side = (uv_stream_t *)&s->local,
                           .tls = s->tls,
                           .alloc = s_alloc,
                           .tls_read = s_on_remote_read,
                           .plain_read = s_on_local_read,
                           .plain_up = 1};
    uv_tcp_nodelay(&s->local, 1);
    int rc = uv_tcp_connect(&s->connect_req, &s->remote, (const struct sockaddr *)&t->broker_addr,
                            s_on_remote_connected);
    if (rc != 0) {
        char why[S_WHY_LEN];
        snprintf(why, sizeof why, "cannot connect to the broker at %s: %s", t->broker,
                 uv_strerror(rc));
        s_close(s, AB_TUNNEL_UNREACHABLE, why);
        return;
    }
    uv_timer_start(&s->timer, s_on_timeout, t->timeout_ms, 0);
    uv_read_start((uv_stream_t *)&s->local, s_alloc, s_on_local_read);
}

/* ---- the tunnel ------------------------------------------------------------------------------ */

/* Closes every handle, so that uv_run() returns. On the loop's thread. */
static void
s_shutdown(ab_tunnel_t *t)
{
    if (t->stopping)
        return;
    t->stopping = 1;
    uv_close((uv_handle_t *)&t->listener, NULL);
    uv_close((uv_handle_t *)&t->wakeup, NULL);
    if (t->signals) {
        uv_close((uv_handle_t *)&t->sigint, NULL);
        uv_close((uv_handle_t *)&t->sigterm, NULL);
    }
    for (s_sess_t *s = t->sessions; s; s = s->next)
        s_close(s, AB_TUNNEL_OK, "the tunnel is stopping");
}

static void
s_on_wakeup(uv_async_t *a)
{
    s_shutdown(a->data);
}

static void
s_on_signal(uv_signal_t *sig, int signum)
{
    (void)signum;
    s_shutdown(sig->data);
}

/* Splits "SCHEME://HOST:PORT" ([v6] allowed) into host and port. Returns 0 or -1. */
static int
s_split(const char *uri, const char *scheme, char *host, size_t cap, int *port)
{
    size_t sl = strlen(scheme);
    if (!uri || strncmp(uri, scheme, sl) != 0)
        return -1;
    const char *hp = uri + sl;
    const char *colon = strrchr(hp, ':');
    if (!colon || colon == hp)
        return -1;
    const char *h = hp, *he = colon;
    if (*h == '[') {
        if (he[-1] != ']')
            return -1;
        h++;
        he--;
    }
    if (he <= h || (size_t)(he - h) >= cap)
        return -1;
    memcpy(host, h, (size_t)(he - h));
    host[he - h] = '\0';
    const char *p = colon + 1;
    if (strcmp(p, "*") == 0) {
        *port = 0;
        return 0;
    }
    char *end = NULL;
    long v = strtol(p, &end, 10);
    if (!*p || *end || v < 0 || v > 65535)
        return -1;
    *port = (int)v;
    return 0;
}

ab_tunnel_t *
ab_tunnel_new(const ab_tunnel_config_t *cfg, int *code, char *err, size_t errlen)
{
    *code = AB_EINVAL;
    char host[256], lhost[64];
    int port = 0, lport = 0;
    if (s_split(cfg->broker, "tls://", host, sizeof host, &port) != 0 || port == 0) {
        snprintf(err, errlen, "broker address '%.200s' is not tls://HOST:PORT",
                 cfg->broker ? cfg->broker : "");
        return NULL;
    }
    const char *listen = cfg->listen ? cfg->listen : "tcp://127.0.0.1:0";
    struct sockaddr_in laddr;
    if (s_split(listen, "tcp://", lhost, sizeof lhost, &lport) != 0) {
        snprintf(err, errlen, "listen address '%.200s' is not tcp://127.0.0.1:PORT", listen);
        return NULL;
    }
    /* whoever reaches the local port acts as this certificate's participant */
    if (uv_ip4_addr(lhost, lport, &laddr) != 0 || (ntohl(laddr.sin_addr.s_addr) >> 24) != 127) {
        snprintf(err, errlen,
                 "listen address '%.200s': the tunnel listens on a loopback address only "
                 "(127.0.0.0/8), since whoever connects to it acts as this certificate's "
                 "participant",
                 listen);
        return NULL;
    }
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char pstr[8];
    snprintf(pstr, sizeof pstr, "%d", port);
    int gai = getaddrinfo(host, pstr, &hints, &res);
    *code = AB_ECONNECT;
    if (gai != 0 || !res) {
        snprintf(err, errlen, "broker address '%.200s': cannot resolve '%s': %s", cfg->broker, host,
                 gai ? gai_strerror(gai) : "no address");
        return NULL;
    }
    *code = AB_EIO;
    SSL_CTX *ctx = ab_tls_ctx_new(0, &cfg->tls, err, errlen);
    if (!ctx) {
        freeaddrinfo(res);
        return NULL;
    }
    ab_tunnel_t *t = calloc(1, sizeof *t);
    if (!t) {
        *code = AB_ENOMEM;
        snprintf(err, errlen, "out of memory");
        freeaddrinfo(res);
        SSL_CTX_free(ctx);
        return NULL;
    }
    memcpy(&t->broker_addr, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    t->ctx = ctx;
    snprintf(t->host, sizeof t->host, "%s", host);
    snprintf(t->broker, sizeof t->broker, "%s", cfg->broker);
    t->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : S_TIMEOUT_MS;
    t->log = cfg->log;
    t->log_arg = cfg->log_arg;
    char why[AB_WHY_LEN];
    if (ab_tls_participant(SSL_CTX_get0_certificate(ctx), t->participant, why) != 0)
        t->participant[0] = '\0';
    int rc = uv_loop_init(&t->loop);
    if (rc != 0) {
        *code = AB_ENOMEM;
        snprintf(err, errlen, "cannot create an event loop: %s", uv_strerror(rc));
        SSL_CTX_free(ctx);
        free(t);
        return NULL;
    }
    uv_mutex_init(&t->mu);
    uv_tcp_init(&t->loop, &t->listener);
    uv_async_init(&t->loop, &t->wakeup, s_on_wakeup);
    t->listener.data = t->wakeup.data = t;
    if ((rc = uv_tcp_bind(&t->listener, (const struct sockaddr *)&laddr, 0)) != 0 ||
        (rc = uv_listen((uv_stream_t *)&t->listener, 128, s_on_connection)) != 0) {
        *code = AB_ECONNECT;
        snprintf(err, errlen, "cannot listen on %s: %s", listen, uv_strerror(rc));
        ab_tunnel_destroy(&t);
        return NULL;
    }
    struct sockaddr_in got;
    int len = sizeof got;
    uv_tcp_getsockname(&t->listener, (struct sockaddr *)&got, &len);
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &got.sin_addr, ip, sizeof ip);
    snprintf(t->local, sizeof t->local, "tcp://%s:%u", ip, ntohs(got.sin_port));
    *code = 0;
    return t;
}

const char *
ab_tunnel_local_uri(const ab_tunnel_t *self)
{
    return self->local;
}

const char *
ab_tunnel_participant(const ab_tunnel_t *self)
{
    return self->participant;
}

int
ab_tunnel_run(ab_tunnel_t *self)
{
    if (self->running || self->stopping)
        return -1;
    self->running = 1;
    uv_signal_init(&self->loop, &self->sigint);
    uv_signal_init(&self->loop, &self->sigterm);
    self->sigint.data = self->sigterm.data = self;
    self->signals = 1;
    uv_signal_start(&self->sigint, s_on_signal, SIGINT);
    uv_signal_start(&self->sigterm, s_on_signal, SIGTERM);
    uv_run(&self->loop, UV_RUN_DEFAULT); /* until s_shutdown() closed every handle */
    return 0;
}

static void
s_thread_main(void *arg)
{
    ab_tunnel_t *t = arg;
    uv_run(&t->loop, UV_RUN_DEFAULT);
}

int
ab_tunnel_start(ab_tunnel_t *self)
{
    if (self->running || self->stopping)
        return -1;
    /* the application's signals are for its own threads: the new thread blocks them all (a
     * SIGPIPE from a write to a closed socket stays pending there, harmless) */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = uv_thread_create(&self->thread, s_thread_main, self);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return -1;
    self->running = self->threaded = 1;
    return 0;
}

uint64_t
ab_tunnel_failure(ab_tunnel_t *self, int *kind, char *why, size_t len)
{
    uv_mutex_lock(&self->mu);
    uint64_t n = self->failures;
    if (kind)
        *kind = self->fail_kind;
    if (why && len)
        snprintf(why, len, "%s", self->fail_why);
    uv_mutex_unlock(&self->mu);
    return n;
}

uint64_t
ab_tunnel_established(ab_tunnel_t *self)
{
    uv_mutex_lock(&self->mu);
    uint64_t n = self->established;
    uv_mutex_unlock(&self->mu);
    return n;
}

void
ab_tunnel_destroy(ab_tunnel_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ab_tunnel_t *t = *self_p;
    *self_p = NULL;
    if (t->threaded) {
        uv_async_send(&t->wakeup);
        uv_thread_join(&t->thread);
    } else {
        /* never ran, or run returned: close what is left here; bounded, every handle closes */
        s_shutdown(t);
        uv_run(&t->loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(&t->loop);
    uv_mutex_destroy(&t->mu);
    SSL_CTX_free(t->ctx);
    free(t);
}
