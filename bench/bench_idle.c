/*
 * bench_idle.c - many idle mutual-TLS connections: the server's memory per connection, then one
 * call from each.
 *
 *   bench_idle --system amtsbote|nats --connections N --url tls://127.0.0.1:PORT
 *              --ca F --cert F --key F --server-pid PID [options]
 *
 * One process, one epoll loop, non-blocking OpenSSL. It opens N TLS connections with the client
 * certificate, at most --batch of them still connecting at a time, and speaks each server's
 * protocol until the server holds a registered, idle client:
 *   amtsbote  ZMTP 3.1 over TLS (greeting, NULL mechanism, READY as a DEALER), then the Amtsbote
 *             HELLO, answered by the broker's HELLO. The broker's ZMTP PINGs are answered with
 *             PONGs, and each connection sends a PING of its own every --heartbeat-ms (1000), as
 *             libamtsbote's DEALER does (ZMQ_HEARTBEAT_IVL): an idle client is not silent.
 *   nats      the plaintext INFO, the TLS upgrade, CONNECT, SUB to the connection's own reply
 *             subject, PING, answered by PONG; the server's PINGs are answered.
 * The server's VmRSS (/proc/PID/status) is read before the first connection and after all are up
 * and a settle time (default 2 s): mem_per_conn_bytes = (after - before) / connections. Then
 * every connection makes one call at once (inflight = N) to an echo service that a forked child
 * answers (amtsbote: a libamtsbote provider of bench.v1.Echo/Echo with the certificate of
 * kommune.bench.worker from --pki; nats: a raw connection subscribed to bench.echo), and waits
 * for its reply: msgs, rate, p50/p99/p99.9 of those calls.
 *
 * Output: one result line on stdout (scenario=idle); diagnostics and a progress line per second
 * on stderr. Besides the common fields: connections (registered), conn_failed, connect_seconds,
 * cpu_client_connect_us and cpu_server_connect_us (CPU per connection while connecting),
 * rss_before_kib, rss_after_kib, mem_per_conn_bytes, rss_after_calls_kib, idle_cpu_server_pct
 * and idle_cpu_client_pct (CPU over the settle time, in % of one core: what idleness costs),
 * heartbeats_per_s (server PINGs answered) and pings_per_s (client PINGs sent) over the settle
 * time, dropped_idle (registered connections the server closed), tls (the version). The window
 * (seconds, rate) runs from the first call sent to the last answer; cpu_*_us are per call in it,
 * cpu_client_us including the echo child. Every reply is checked: length and the connection's index
 * and sequence in its first 8 bytes. Exit 0 only when all N connections were registered and every
 * call was answered correctly. The whole run is bounded by alarm(): --connect-seconds + --settle +
 * --seconds + 30.
 *
 * --until tls|ready (amtsbote only) stops each connection after its TLS handshake, or after the
 * ZMTP handshake without the HELLO, and skips the calls: what each layer of a session costs the
 * broker. The broker's libzmq closes a connection without a ZMTP greeting after 30 s
 * (ZMQ_HANDSHAKE_IVL), so --until tls must finish within that.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "amtsbote.h"
#include "bench_ab.h"
#include "bench_util.h"
#include "wire.h"

#define PROG "bench_idle"
#define SERVICE "bench.v1.Echo/Echo"
#define NATS_SUBJECT "bench.echo"
#define PROVIDER_ID "kommune.bench.worker"
#define STAMP_LEN 8
#define MAX_CONNECTIONS 60000
#define MAX_SIZE (1024 * 1024)
/* A message bigger than this from a server is a protocol fault, not something to buffer. */
#define MAX_INBUF (4u * 1024 * 1024)
#define ZMTP_GREETING 64
#define CTL_KEY UINT32_MAX
#define EVENTS_MAX 512

typedef enum { SYS_AMTSBOTE, SYS_NATS } sys_t;

/* How far --until takes each connection (amtsbote). */
typedef enum { UNTIL_TLS, UNTIL_READY, UNTIL_HELLO } until_t;

typedef enum {
    ST_NEW = 0,  /* not started */
    ST_TCP,      /* connect() in progress */
    ST_INFO,     /* nats: waiting for the plaintext INFO line */
    ST_TLS,      /* TLS handshake */
    ST_GREETING, /* amtsbote: waiting for the broker's ZMTP greeting */
    ST_READY,    /* amtsbote: waiting for the ZMTP READY (or ERROR) */
    ST_HELLO,    /* amtsbote: waiting for the HELLO; nats: for the PONG */
    ST_IDLE,     /* registered: only heartbeats move */
    ST_CALL,     /* the call is out, waiting for its reply */
    ST_DONE,     /* the call was answered */
    ST_FAILED,   /* closed after an error */
} state_t;

static const char *const s_state_name[] = {
    "new",   "tcp connect", "nats INFO", "tls handshake", "zmtp greeting", "zmtp ready",
    "hello", "idle",        "call",      "done",          "failed"};

typedef enum { ROLE_CALLER, ROLE_RESPONDER } role_t;

typedef struct {
    int fd;
    SSL *ssl;
    uint8_t state;
    uint8_t role;
    uint8_t out_armed; /* EPOLLOUT is in the interest set */
    uint32_t idx;
    uint8_t *in; /* received plaintext not parsed yet */
    uint32_t in_len, in_cap;
    uint8_t *out; /* plaintext not yet taken by SSL_write */
    uint32_t out_len, out_cap;
    uint8_t *part; /* amtsbote: the first frame of a two-frame message */
    uint32_t part_len;
    uint64_t t0;        /* when the call was sent */
    uint64_t next_ping; /* amtsbote: when this client sends its next ZMTP PING (ms) */
} conn_t;

typedef struct {
    sys_t system;
    int connections;
    const char *url;
    char host[64];
    int port;
    const char *ca, *cert, *key, *pki;
    pid_t server_pid;
    double seconds;         /* the call phase may take this long */
    double connect_seconds; /* connecting all may take this long */
    double settle;
    size_t size;
    int batch;
    until_t until;
    int heartbeat_ms; /* amtsbote: the client's own ZMTP PING interval; 0: none */
} opts_t;

typedef struct {
    opts_t o;
    SSL_CTX *ctx;
    int epfd;
    conn_t *conns;
    int nconns;
    ab_wire_decoder_t *dec;
    struct sockaddr_in addr;
    unsigned char *req; /* the request payload, stamped per connection */
    uint64_t *lat;      /* nanoseconds, one per answered call */
    long nlat;
    /* counts */
    int started, registered, failed, tls_done;
    long heartbeats; /* ZMTP PINGs or NATS PINGs answered */
    long pings;      /* ZMTP PINGs sent */
    /* the connections that send PINGs, in the order of their next PING (the interval is fixed,
     * so appending keeps the order) */
    uint32_t *hb_ring;
    uint32_t hb_head, hb_count;
    long sent, answered, errors; /* errors: calls sent that failed */
    long dropped_idle;           /* registered connections the server closed before their call */
    uint64_t first_send, last_answer;
    int ctl_closed; /* the responder's control pipe closed */
    char first_error[320];
    char tls_version[16];
    char sender[AB_MAX_NAME + 1];
    uint8_t rbuf[65536];
} bench_t;

/* Keeps the text of the first error for the report. */
static void s_note(bench_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
s_note(bench_t *b, const char *fmt, ...)
{
    if (b->first_error[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->first_error, sizeof b->first_error, fmt, ap);
    va_end(ap);
}

/* OpenSSL's error queue as one line (the queue is emptied). */
static const char *
s_ssl_errors(char *buf, size_t cap)
{
    size_t n = 0;
    unsigned long e;
    buf[0] = '\0';
    while ((e = ERR_get_error()) != 0 && n + 2 < cap) {
        char one[256];
        ERR_error_string_n(e, one, sizeof one);
        int w = snprintf(buf + n, cap - n, "%s%s", n ? "; " : "", one);
        if (w < 0)
            break;
        n += (size_t)w;
    }
    if (!buf[0])
        snprintf(buf, cap, "no detail from OpenSSL");
    return buf;
}

/* ---- connections --------------------------------------------------------------------------- */

static void
s_conn_close(conn_t *c)
{
    if (c->ssl)
        SSL_free(c->ssl);
    c->ssl = NULL;
    if (c->fd >= 0)
        close(c->fd); /* leaves the epoll set with it */
    c->fd = -1;
    free(c->in);
    free(c->out);
    free(c->part);
    c->in = c->out = c->part = NULL;
    c->in_len = c->in_cap = c->out_len = c->out_cap = c->part_len = 0;
}

/* Closes a connection after an error; counts it where it was and keeps the first reason. */
static void s_fail(bench_t *b, conn_t *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
s_fail(bench_t *b, conn_t *c, const char *fmt, ...)
{
    if (c->state == ST_FAILED)
        return;
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    s_note(b, "connection %u (%s): %s", c->idx, s_state_name[c->state], why);
    if (c->state == ST_IDLE)
        b->dropped_idle++;
    if (c->state == ST_CALL)
        b->errors++;
    if (c->state >= ST_IDLE) /* was registered */
        b->registered--;
    b->failed++;
    c->state = ST_FAILED;
    s_conn_close(c);
}

static int
s_arm(bench_t *b, conn_t *c, int out)
{
    if (c->fd < 0 || (out != 0) == (c->out_armed != 0))
        return 0;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u32 = c->idx};
    if (epoll_ctl(b->epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0)
        return -1;
    c->out_armed = (uint8_t)(out != 0);
    return 0;
}

static int
s_grow(uint8_t **buf, uint32_t *cap, uint32_t need)
{
    if (need <= *cap)
        return 0;
    if (need > MAX_INBUF)
        return -1;
    uint32_t n = *cap ? *cap : 256;
    while (n < need)
        n *= 2;
    uint8_t *p = realloc(*buf, n);
    if (!p)
        return -1;
    *buf = p;
    *cap = n;
    return 0;
}

static int
s_out(conn_t *c, const void *data, size_t len)
{
    if (s_grow(&c->out, &c->out_cap, c->out_len + (uint32_t)len) != 0)
        return -1;
    memcpy(c->out + c->out_len, data, len);
    c->out_len += (uint32_t)len;
    return 0;
}

/* Hands queued plaintext to TLS. Returns 0 (done, or waiting for the socket) or -1 (failed). */
static int
s_flush(bench_t *b, conn_t *c)
{
    uint32_t done = 0;
    while (done < c->out_len) {
        ERR_clear_error();
        int n = SSL_write(c->ssl, c->out + done, (int)(c->out_len - done));
        if (n > 0) {
            done += (uint32_t)n;
            continue;
        }
        int err = SSL_get_error(c->ssl, n);
        if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
            memmove(c->out, c->out + done, c->out_len - done);
            c->out_len -= done;
            return s_arm(b, c, err == SSL_ERROR_WANT_WRITE);
        }
        char e[256];
        s_fail(b, c, "TLS write failed: %s", s_ssl_errors(e, sizeof e));
        return -1;
    }
    c->out_len = 0;
    if (c->out_cap > 4096) { /* the call's buffer; an idle connection keeps none */
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
    return s_arm(b, c, 0);
}

/* Starts the TCP connection of `c`. Returns 0 or -1 (counted as failed). */
static int
s_start(bench_t *b, conn_t *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        s_fail(b, c, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = ST_TCP;
    if (connect(c->fd, (const struct sockaddr *)&b->addr, sizeof b->addr) != 0 &&
        errno != EINPROGRESS) {
        s_fail(b, c, "connect to %s:%d: %s", b->o.host, b->o.port, strerror(errno));
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = c->idx};
    if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        s_fail(b, c, "epoll_ctl: %s", strerror(errno));
        return -1;
    }
    c->out_armed = 1;
    return 0;
}

/* ---- Amtsbote: ZMTP 3.1 and the Amtsbote header ------------------------------------------ */

/* Queues one ZMTP frame; `flags` 1 = more frames follow, 4 = command. */
static int
s_zmtp_frame(conn_t *c, unsigned flags, const void *data, size_t len)
{
    uint8_t h[9];
    size_t hl;
    if (len > 255) {
        h[0] = (uint8_t)(flags | 2);
        for (int i = 0; i < 8; i++)
            h[1 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
        hl = 9;
    } else {
        h[0] = (uint8_t)flags;
        h[1] = (uint8_t)len;
        hl = 2;
    }
    return s_out(c, h, hl) == 0 && s_out(c, data, len) == 0 ? 0 : -1;
}

/* Greeting (ZMTP 3.1, NULL, client) and READY as a DEALER with an empty identity. */
static int
s_zmtp_open(conn_t *c)
{
    uint8_t g[ZMTP_GREETING] = {0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 1, 'N', 'U', 'L', 'L'};
    uint8_t r[64];
    size_t n = 0;
    r[n++] = 5;
    memcpy(r + n, "READY", 5);
    n += 5;
    r[n++] = 11;
    memcpy(r + n, "Socket-Type", 11);
    n += 11;
    memcpy(r + n, "\0\0\0\6DEALER", 10);
    n += 10;
    r[n++] = 8;
    memcpy(r + n, "Identity", 8);
    n += 8;
    memcpy(r + n, "\0\0\0\0", 4);
    n += 4;
    return s_out(c, g, sizeof g) == 0 && s_zmtp_frame(c, 4, r, n) == 0 ? 0 : -1;
}

/* A message id (UUIDv7) whose last 4 bytes are the connection's index, to match the answer. */
static void
s_ab_id(uint8_t id[AB_MESSAGE_ID_LEN], uint32_t idx)
{
    ab_uuid7(id);
    bu_put32(id + AB_MESSAGE_ID_LEN - 4, idx);
}

static int
s_ab_send(conn_t *c, const ab_header_t *hdr, const void *payload, size_t len)
{
    uint8_t buf[AB_MAX_HEADER_BYTES];
    int n = ab_wire_encode(hdr, buf, sizeof buf);
    if (n < 0)
        return -1;
    if (s_zmtp_frame(c, payload ? 1 : 0, buf, (size_t)n) != 0)
        return -1;
    return payload ? s_zmtp_frame(c, 0, payload, len) : 0;
}

static int
s_ab_hello(conn_t *c)
{
    uint8_t id[AB_MESSAGE_ID_LEN];
    s_ab_id(id, c->idx);
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = AB_PROTOCOL_VERSION;
    h.kind = AMTSBOTE__V1__KIND__KIND_HELLO;
    h.message_id.data = id;
    h.message_id.len = sizeof id;
    return s_ab_send(c, &h, NULL, 0);
}

static void
s_registered(bench_t *b, conn_t *c)
{
    c->state = ST_IDLE;
    b->registered++;
}

/* The end of c's call at `now`, answered or failed (counted already). */
static void
s_call_done(bench_t *b, conn_t *c, uint64_t now)
{
    b->last_answer = now;
    c->state = ST_DONE;
}

/* The reply to c's call, either system's: checks its length and stamp, counts it, ends the call. */
static void
s_reply(bench_t *b, conn_t *c, const uint8_t *payload, size_t len, uint64_t now)
{
    if (len != b->o.size) {
        b->errors++;
        s_note(b, "connection %u: the reply has %zu bytes, not %zu", c->idx, len, b->o.size);
    } else if (bu_get32(payload) != c->idx || bu_get32(payload + 4) != 1) {
        b->errors++;
        s_note(b, "connection %u: the reply does not carry the request's stamp", c->idx);
    } else {
        b->answered++;
        b->lat[b->nlat++] = now - c->t0;
    }
    s_call_done(b, c, now);
}

/* A complete Amtsbote message: the header frame and, for REPLY/ERROR to a CALL, the payload. */
static void
s_ab_message(bench_t *b, conn_t *c, const uint8_t *head, size_t hlen, const uint8_t *payload,
             size_t plen, int has_payload)
{
    ab_header_t *h = NULL;
    char why[AB_WHY_LEN];
    if (ab_wire_decode(b->dec, head, hlen, &h, why) != 0) {
        s_fail(b, c, "undecodable header from the broker: %s", why);
        return;
    }
    const char *errtext = h->kind == AMTSBOTE__V1__KIND__KIND_ERROR && h->error && h->error->text
                              ? h->error->text
                              : "";
    if (c->state == ST_HELLO) {
        if (h->kind == AMTSBOTE__V1__KIND__KIND_ERROR) {
            s_fail(b, c, "the broker answered HELLO with ERROR: %s", errtext);
            return;
        }
        if (h->kind != AMTSBOTE__V1__KIND__KIND_HELLO ||
            h->correlation_id.len != AB_MESSAGE_ID_LEN ||
            bu_get32(h->correlation_id.data + AB_MESSAGE_ID_LEN - 4) != c->idx) {
            s_fail(b, c, "expected the broker's HELLO, got %s", ab_kind_name((int)h->kind));
            return;
        }
        if (!b->sender[0] && h->sender)
            snprintf(b->sender, sizeof b->sender, "%s", h->sender);
        s_registered(b, c);
        return;
    }
    if (c->state == ST_CALL) {
        uint64_t now = bu_now_ns();
        if (h->correlation_id.len != STAMP_LEN || bu_get32(h->correlation_id.data) != c->idx) {
            s_fail(b, c, "an answer for another call (%s)", ab_kind_name((int)h->kind));
            return;
        }
        if (h->kind == AMTSBOTE__V1__KIND__KIND_ERROR) {
            b->errors++;
            s_note(b, "connection %u: the call failed: %s", c->idx, errtext);
            s_call_done(b, c, now);
        } else if (h->kind != AMTSBOTE__V1__KIND__KIND_REPLY || !has_payload) {
            b->errors++;
            s_note(b, "connection %u: expected REPLY with a payload, got %s", c->idx,
                   ab_kind_name((int)h->kind));
            s_call_done(b, c, now);
        } else {
            s_reply(b, c, payload, plen, now);
        }
        return;
    }
    /* an unasked HELLO (the broker forgot this connection) is harmless; anything else is not */
    if (h->kind != AMTSBOTE__V1__KIND__KIND_HELLO)
        s_fail(b, c, "unexpected %s from the broker%s%s", ab_kind_name((int)h->kind),
               errtext[0] ? ": " : "", errtext);
}

static uint64_t
s_now_ms(void)
{
    return bu_now_ns() / 1000000u;
}

/* Schedules the next ZMTP PING of `c`. */
static void
s_hb_push(bench_t *b, conn_t *c)
{
    if (!b->o.heartbeat_ms || !b->hb_ring || b->hb_count >= (uint32_t)b->nconns)
        return;
    c->next_ping = s_now_ms() + (uint64_t)b->o.heartbeat_ms;
    b->hb_ring[(b->hb_head + b->hb_count++) % (uint32_t)b->nconns] = c->idx;
}

/*
 * Sends the PINGs that are due, as libamtsbote's DEALER does (ZMQ_HEARTBEAT_IVL 1000): a ZMTP
 * PING with TTL 0 and no context, which the broker's libzmq answers with a PONG.
 */
static void
s_heartbeats(bench_t *b)
{
    static const uint8_t ping[] = {4, 'P', 'I', 'N', 'G', 0, 0};
    uint64_t now = s_now_ms();
    while (b->hb_count) {
        conn_t *c = &b->conns[b->hb_ring[b->hb_head]];
        if (c->state != ST_FAILED && c->next_ping > now)
            break;
        b->hb_head = (b->hb_head + 1) % (uint32_t)b->nconns;
        b->hb_count--;
        if (c->state == ST_FAILED)
            continue;
        if (s_zmtp_frame(c, 4, ping, sizeof ping) != 0) {
            s_fail(b, c, "out of memory");
            continue;
        }
        b->pings++;
        if (s_flush(b, c) == 0 && c->state != ST_FAILED)
            s_hb_push(b, c);
    }
}

/* A ZMTP command: READY, ERROR, PING; the rest is ignored. */
static void
s_zmtp_command(bench_t *b, conn_t *c, const uint8_t *body, size_t len)
{
    if (len < 1 || (size_t)body[0] + 1 > len) {
        s_fail(b, c, "malformed ZMTP command");
        return;
    }
    size_t nl = body[0];
    const uint8_t *name = body + 1, *rest = body + 1 + nl;
    size_t rlen = len - 1 - nl;
    if (nl == 4 && memcmp(name, "PING", 4) == 0) {
        uint8_t pong[1 + 4 + 16];
        size_t ctxlen = rlen > 2 ? rlen - 2 : 0; /* after the 2-byte TTL */
        if (ctxlen > 16)
            ctxlen = 16;
        pong[0] = 4;
        memcpy(pong + 1, "PONG", 4);
        memcpy(pong + 5, rest + 2, ctxlen);
        if (s_zmtp_frame(c, 4, pong, 5 + ctxlen) != 0)
            s_fail(b, c, "out of memory");
        b->heartbeats++;
    } else if (nl == 5 && memcmp(name, "READY", 5) == 0) {
        if (c->state != ST_READY) {
            s_fail(b, c, "a second ZMTP READY");
            return;
        }
        s_hb_push(b, c);
        if (b->o.until == UNTIL_READY) {
            s_registered(b, c);
            return;
        }
        if (s_ab_hello(c) != 0) {
            s_fail(b, c, "cannot encode HELLO");
            return;
        }
        c->state = ST_HELLO;
    } else if (nl == 5 && memcmp(name, "ERROR", 5) == 0) {
        size_t rl = rlen >= 1 && rest[0] < rlen ? rest[0] : 0;
        s_fail(b, c, "the broker refused the ZMTP handshake: %.*s", (int)rl, rest + 1);
    }
}

/* Parses what `c` has received: the greeting, then frames. */
static void
s_ab_parse(bench_t *b, conn_t *c)
{
    uint32_t pos = 0;
    if (c->state == ST_GREETING) {
        if (c->in_len < ZMTP_GREETING)
            return;
        if (c->in[0] != 0xff || c->in[9] != 0x7f || c->in[10] < 3 ||
            memcmp(c->in + 12, "NULL", 5) != 0) {
            s_fail(b, c, "not a ZMTP 3 NULL greeting");
            return;
        }
        pos = ZMTP_GREETING;
        c->state = ST_READY;
    }
    while (c->state != ST_FAILED && c->in_len - pos >= 2) {
        const uint8_t *f = c->in + pos;
        uint32_t avail = c->in_len - pos;
        uint64_t size;
        uint32_t hl;
        if (f[0] & 2) {
            if (avail < 9)
                break;
            size = 0;
            for (int i = 0; i < 8; i++)
                size = size << 8 | f[1 + i];
            hl = 9;
        } else {
            size = f[1];
            hl = 2;
        }
        if (size > MAX_INBUF) {
            s_fail(b, c, "a ZMTP frame of %llu bytes", (unsigned long long)size);
            return;
        }
        if (avail < hl + size)
            break;
        const uint8_t *body = f + hl;
        if (f[0] & 4) {
            s_zmtp_command(b, c, body, (size_t)size);
        } else if (c->state < ST_HELLO) {
            s_fail(b, c, "a message before the ZMTP handshake ended");
        } else if (f[0] & 1) {
            if (c->part) {
                s_fail(b, c, "a message of more than two frames");
                return;
            }
            c->part = malloc(size ? size : 1);
            if (!c->part) {
                s_fail(b, c, "out of memory");
                return;
            }
            memcpy(c->part, body, size);
            c->part_len = (uint32_t)size;
        } else if (c->part) {
            s_ab_message(b, c, c->part, c->part_len, body, (size_t)size, 1);
            free(c->part);
            c->part = NULL;
            c->part_len = 0;
        } else {
            s_ab_message(b, c, body, (size_t)size, NULL, 0, 0);
        }
        pos += hl + (uint32_t)size;
    }
    if (c->state == ST_FAILED)
        return;
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
}

/* Queues the call of a registered connection (not sent yet). */
static int
s_ab_call(bench_t *b, conn_t *c)
{
    uint8_t id[AB_MESSAGE_ID_LEN], corr[STAMP_LEN];
    s_ab_id(id, c->idx);
    bu_put32(corr, c->idx);
    bu_put32(corr + 4, 1);
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = AB_PROTOCOL_VERSION;
    h.kind = AMTSBOTE__V1__KIND__KIND_CALL;
    h.message_id.data = id;
    h.message_id.len = sizeof id;
    h.correlation_id.data = corr;
    h.correlation_id.len = sizeof corr;
    h.service = (char *)SERVICE;
    h.deadline_ms = (uint32_t)(b->o.seconds * 1000);
    return s_ab_send(c, &h, b->req, b->o.size);
}

/* ---- NATS ------------------------------------------------------------------------------------ */

static int
s_nats_open(conn_t *c)
{
    char buf[512];
    int n = snprintf(buf, sizeof buf,
                     "CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":true,"
                     "\"name\":\"bench_idle\",\"lang\":\"c\",\"version\":\"1.0\",\"protocol\":1,"
                     "\"echo\":false,\"headers\":false}\r\n");
    if (c->role == ROLE_RESPONDER)
        n += snprintf(buf + n, sizeof buf - (size_t)n, "SUB " NATS_SUBJECT " 1\r\nPING\r\n");
    else
        n += snprintf(buf + n, sizeof buf - (size_t)n, "SUB _INBOX.idle.%u 1\r\nPING\r\n", c->idx);
    return s_out(c, buf, (size_t)n);
}

static int
s_nats_pub(conn_t *c, const char *subject, const void *payload, size_t len)
{
    char line[320];
    int n = snprintf(line, sizeof line, "PUB %s %zu\r\n", subject, len);
    if (n < 0 || (size_t)n >= sizeof line)
        return -1;
    return s_out(c, line, (size_t)n) == 0 && s_out(c, payload, len) == 0 && s_out(c, "\r\n", 2) == 0
               ? 0
               : -1;
}

static int
s_nats_call(bench_t *b, conn_t *c)
{
    char inbox[64];
    snprintf(inbox, sizeof inbox, NATS_SUBJECT " _INBOX.idle.%u", c->idx);
    return s_nats_pub(c, inbox, b->req, b->o.size);
}

/* SUBJECT SID [REPLY] SIZE, what follows "MSG ": the fields (NUL-terminated in place). */
static int
s_nats_msg_line(char *line, char **reply, size_t *size)
{
    char *tok[5];
    int n = 0;
    for (char *save = NULL, *t = strtok_r(line, " \t", &save); t && n < 5;
         t = strtok_r(NULL, " \t", &save))
        tok[n++] = t;
    if (n != 3 && n != 4)
        return -1;
    char *end;
    unsigned long long v = strtoull(tok[n - 1], &end, 10);
    if (*end || v > MAX_INBUF)
        return -1;
    *size = (size_t)v;
    *reply = n == 4 ? tok[2] : NULL;
    return 0;
}

static void
s_nats_msg(bench_t *b, conn_t *c, const char *reply, const uint8_t *payload, size_t len)
{
    if (c->role == ROLE_RESPONDER) {
        if (!reply)
            s_note(b, "a request without a reply subject");
        else if (s_nats_pub(c, reply, payload, len) != 0)
            s_fail(b, c, "cannot queue the reply");
        else
            b->answered++;
        return;
    }
    if (c->state != ST_CALL) {
        s_fail(b, c, "a message without a call");
        return;
    }
    s_reply(b, c, payload, len, bu_now_ns());
}

static void
s_nats_parse(bench_t *b, conn_t *c)
{
    uint32_t pos = 0;
    while (c->state != ST_FAILED && pos < c->in_len) {
        uint8_t *line = c->in + pos;
        uint32_t avail = c->in_len - pos;
        uint8_t *eol = memmem(line, avail, "\r\n", 2);
        if (!eol)
            break;
        size_t ll = (size_t)(eol - line);
        if (ll >= 4 && memcmp(line, "MSG ", 4) == 0) {
            char tmp[512];
            char *reply;
            size_t size;
            if (ll >= sizeof tmp) {
                s_fail(b, c, "a MSG line of %zu bytes", ll);
                return;
            }
            memcpy(tmp, line + 4, ll - 4);
            tmp[ll - 4] = '\0';
            if (s_nats_msg_line(tmp, &reply, &size) != 0) {
                s_fail(b, c, "malformed MSG line");
                return;
            }
            if (avail < ll + 2 + size + 2)
                break;
            s_nats_msg(b, c, reply, eol + 2, size);
            pos += (uint32_t)(ll + 2 + size + 2);
            continue;
        }
        if (ll == 4 && memcmp(line, "PING", 4) == 0) {
            if (s_out(c, "PONG\r\n", 6) != 0)
                s_fail(b, c, "out of memory");
            b->heartbeats++;
        } else if (ll == 4 && memcmp(line, "PONG", 4) == 0) {
            if (c->state == ST_HELLO)
                s_registered(b, c);
        } else if (ll >= 4 && memcmp(line, "-ERR", 4) == 0) {
            s_fail(b, c, "the server says %.*s", (int)(ll > 200 ? 200 : ll), line);
            return;
        } else if (!(ll >= 3 && memcmp(line, "+OK", 3) == 0) &&
                   !(ll >= 4 && memcmp(line, "INFO", 4) == 0)) {
            s_fail(b, c, "unexpected line from the server: %.*s", (int)(ll > 60 ? 60 : ll), line);
            return;
        }
        pos += (uint32_t)(ll + 2);
    }
    if (c->state == ST_FAILED)
        return;
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
}

/* ---- the event loop ------------------------------------------------------------------------ */

/* Reads and parses everything TLS has for `c`, then sends what that produced. */
static void
s_read(bench_t *b, conn_t *c)
{
    for (;;) {
        ERR_clear_error();
        int n = SSL_read(c->ssl, b->rbuf, sizeof b->rbuf);
        if (n <= 0) {
            int err = SSL_get_error(c->ssl, n);
            if (err == SSL_ERROR_WANT_READ)
                break;
            if (err == SSL_ERROR_WANT_WRITE) {
                s_arm(b, c, 1);
                break;
            }
            char e[256];
            if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0))
                s_fail(b, c, "the server closed the connection");
            else
                s_fail(b, c, "TLS read failed: %s", s_ssl_errors(e, sizeof e));
            return;
        }
        if (s_grow(&c->in, &c->in_cap, c->in_len + (uint32_t)n) != 0) {
            s_fail(b, c, "more than %u bytes unparsed", MAX_INBUF);
            return;
        }
        memcpy(c->in + c->in_len, b->rbuf, (size_t)n);
        c->in_len += (uint32_t)n;
        if (b->o.system == SYS_AMTSBOTE && b->o.until == UNTIL_TLS)
            c->in_len = 0; /* held before ZMTP: libzmq's greeting is left unanswered */
        else if (b->o.system == SYS_AMTSBOTE)
            s_ab_parse(b, c);
        else
            s_nats_parse(b, c);
        if (c->state == ST_FAILED)
            return;
    }
    if (c->in_len == 0 && c->in) { /* an idle connection keeps no buffer */
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
    if (c->out_len)
        s_flush(b, c);
}

static void
s_handshake(bench_t *b, conn_t *c)
{
    ERR_clear_error();
    int rc = SSL_do_handshake(c->ssl);
    if (rc != 1) {
        int err = SSL_get_error(c->ssl, rc);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            s_arm(b, c, err == SSL_ERROR_WANT_WRITE);
            return;
        }
        long v = SSL_get_verify_result(c->ssl);
        char e[256];
        if (v != X509_V_OK)
            s_fail(b, c, "the server's certificate: %s", X509_verify_cert_error_string(v));
        else
            s_fail(b, c, "TLS handshake failed: %s", s_ssl_errors(e, sizeof e));
        return;
    }
    b->tls_done++;
    if (!b->tls_version[0])
        snprintf(b->tls_version, sizeof b->tls_version, "%s", SSL_get_version(c->ssl));
    if (b->o.system == SYS_AMTSBOTE) {
        if (b->o.until == UNTIL_TLS) {
            s_registered(b, c);
            s_arm(b, c, 0);
            return;
        }
        c->state = ST_GREETING;
        if (s_zmtp_open(c) != 0) {
            s_fail(b, c, "out of memory");
            return;
        }
    } else {
        c->state = ST_HELLO;
        if (s_nats_open(c) != 0) {
            s_fail(b, c, "out of memory");
            return;
        }
    }
    s_flush(b, c);
    if (c->state != ST_FAILED)
        s_read(b, c); /* the server may have spoken already */
}

static void
s_tls_begin(bench_t *b, conn_t *c)
{
    c->ssl = SSL_new(b->ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
        s_fail(b, c, "SSL_new: out of memory");
        return;
    }
    SSL_set_connect_state(c->ssl);
    c->state = ST_TLS;
    s_handshake(b, c);
}

/* The plaintext INFO line that nats-server sends before the TLS upgrade. */
static void
s_nats_info(bench_t *b, conn_t *c)
{
    uint8_t buf[4096];
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        s_fail(b, c, "%s before INFO",
               n == 0 ? "the server closed the connection" : strerror(errno));
        return;
    }
    if (s_grow(&c->in, &c->in_cap, c->in_len + (uint32_t)n) != 0) {
        s_fail(b, c, "no end of the INFO line");
        return;
    }
    memcpy(c->in + c->in_len, buf, (size_t)n);
    c->in_len += (uint32_t)n;
    uint8_t *eol = memmem(c->in, c->in_len, "\r\n", 2);
    if (!eol)
        return;
    if (c->in_len < 5 || memcmp(c->in, "INFO ", 5) != 0) {
        s_fail(b, c, "the server did not begin with INFO");
        return;
    }
    if (!memmem(c->in, (size_t)(eol - c->in), "\"tls_required\":true", 19)) {
        s_fail(b, c, "the server does not require TLS (no tls block in its configuration?)");
        return;
    }
    if ((size_t)(eol + 2 - c->in) != c->in_len) {
        s_fail(b, c, "plaintext after INFO");
        return;
    }
    c->in_len = 0;
    s_tls_begin(b, c);
}

static void
s_event(bench_t *b, conn_t *c, uint32_t events)
{
    switch (c->state) {
    case ST_TCP: {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err) {
            s_fail(b, c, "connect to %s:%d: %s", b->o.host, b->o.port, strerror(err));
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLIN)))
            return;
        if (b->o.system == SYS_NATS) {
            c->state = ST_INFO;
            s_arm(b, c, 0);
            if (events & EPOLLIN)
                s_nats_info(b, c);
        } else {
            s_tls_begin(b, c);
        }
        return;
    }
    case ST_INFO:
        s_nats_info(b, c);
        return;
    case ST_TLS:
        s_handshake(b, c);
        return;
    case ST_NEW:
    case ST_FAILED:
        return;
    default:
        if (events & EPOLLOUT)
            s_flush(b, c);
        if (c->state != ST_FAILED && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
            s_read(b, c);
    }
}

/* Waits up to `ms` for events and handles them. Returns the number handled, or -1. */
static int
s_poll(bench_t *b, int ms)
{
    struct epoll_event ev[EVENTS_MAX];
    int n = epoll_wait(b->epfd, ev, EVENTS_MAX, ms);
    if (n < 0)
        return errno == EINTR ? 0 : -1;
    for (int i = 0; i < n; i++) {
        if (ev[i].data.u32 == CTL_KEY) {
            b->ctl_closed = 1;
            continue;
        }
        conn_t *c = &b->conns[ev[i].data.u32];
        if (c->fd >= 0)
            s_event(b, c, ev[i].events);
    }
    s_heartbeats(b);
    return n;
}

/* ---- measurements ---------------------------------------------------------------------------- */

typedef struct {
    double client, server; /* client: this process and its child */
} cpu_t;

/* An unreadable child counts as 0 here (the server: -1), unlike in bu_cpu_pids_us(). */
static cpu_t
s_cpu_now(pid_t child, pid_t server)
{
    double ch = child > 0 ? bu_cpu_pid_us(child) : 0;
    double sv = server > 0 ? bu_cpu_pid_us(server) : -1;
    return (cpu_t){bu_cpu_self_us() + (ch > 0 ? ch : 0), sv};
}

/* ---- the echo child ---------------------------------------------------------------------- */

/* The Amtsbote provider: offers the echo service until `ctl` closes. */
static int
s_ab_provider(const opts_t *o, int ready_fd, int ctl)
{
    char cert[600], key[600];
    snprintf(cert, sizeof cert, "%s/%s.crt", o->pki, PROVIDER_ID);
    snprintf(key, sizeof key, "%s/%s.key", o->pki, PROVIDER_ID);
    ab_tls_options_t t = {.cert = cert, .key = key, .ca = o->ca};
    ab_client_t *c = ab_client_new();
    int rc = c ? ab_client_set_tls(c, &t) : AB_ENOMEM;
    if (rc == 0)
        rc = ab_client_connect(c, o->url, 5000);
    if (rc == 0)
        rc = ab_offer(c, SERVICE, bench_ab_echo, NULL);
    if (rc != 0)
        fprintf(stderr, "bench_idle: provider certificate %s\n", cert);
    return bench_ab_serve(c, rc, ready_fd, ctl, "bench_idle");
}

/* The NATS responder: one raw connection subscribed to bench.echo, until `ctl` closes. */
static int
s_nats_responder(bench_t *b, int ready_fd, int ctl)
{
    conn_t *c = &b->conns[0];
    c->role = ROLE_RESPONDER;
    close(b->epfd); /* the parent's: this process watches its own descriptors */
    b->epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = CTL_KEY};
    epoll_ctl(b->epfd, EPOLL_CTL_ADD, ctl, &ev);
    uint64_t until = bu_now_ns() + 5000000000u;
    if (s_start(b, c) == 0)
        while (c->state != ST_IDLE && c->state != ST_FAILED && bu_now_ns() < until && !bu_stopped())
            s_poll(b, 100);
    if (c->state != ST_IDLE) {
        if (b->first_error[0])
            fprintf(stderr, "bench_idle: responder: %s\n", b->first_error);
        else
            fprintf(stderr, "bench_idle: responder: not subscribed within 5 s (stuck in %s)\n",
                    s_state_name[c->state]);
        (void)!write(ready_fd, "F", 1);
        return 1;
    }
    (void)!write(ready_fd, "R", 1);
    close(ready_fd);
    while (!b->ctl_closed && !bu_stopped() && c->state != ST_FAILED)
        if (s_poll(b, 1000) < 0)
            break;
    if (c->state == ST_FAILED) {
        fprintf(stderr, "bench_idle: responder: %s\n", b->first_error);
        return 1;
    }
    return 0;
}

/* The echo child (bu_child_fn): the provider or the responder, as the system says. */
static int
s_echo_child(void *arg, int ready_fd, int ctl)
{
    bench_t *b = arg;
    return b->o.system == SYS_AMTSBOTE ? s_ab_provider(&b->o, ready_fd, ctl)
                                       : s_nats_responder(b, ready_fd, ctl);
}

/* Forks the echo child; returns its pid and the control pipe's write end in *ctl, or -1. */
static pid_t
s_spawn_echo(bench_t *b, int *ctl)
{
    bu_child_t c = {.prog = PROG,
                    .what = b->o.system == SYS_AMTSBOTE ? "echo provider" : "echo responder",
                    .run = s_echo_child,
                    .arg = b,
                    .alarm_s = (unsigned)(b->o.connect_seconds + b->o.settle + b->o.seconds) + 40,
                    .ready_ms = 10000};
    return bu_spawn(&c, ctl);
}

/* ---- options --------------------------------------------------------------------------------- */

static void
s_usage(FILE *f)
{
    fprintf(f,
            "usage: bench_idle --system amtsbote|nats --connections N --url tls://HOST:PORT\n"
            "                  --ca F --cert F --key F --server-pid PID [options]\n"
            "  --connections N      TLS connections to hold (1..%d)\n"
            "  --url tls://IP:PORT  the server (an IPv4 address, checked against its certificate)\n"
            "  --ca F --cert F --key F  CA bundle, client certificate and key (all connections)\n"
            "  --pki DIR            amtsbote: certs/pki.sh directory with %s.crt/.key for the\n"
            "                       echo provider (default: the directory of --cert)\n"
            "  --server-pid PID     the server: its VmRSS and CPU time are read from /proc\n"
            "  --seconds S          the calls must be answered within S seconds (default 10)\n"
            "  --size B             call payload bytes, >= %d (default 100)\n"
            "  --batch N            connections still connecting at a time (default 200)\n"
            "  --connect-seconds S  all connections must be up within S seconds (default 120)\n"
            "  --settle S           wait S seconds before reading the memory (default 2)\n"
            "  --until tls|ready|hello  amtsbote: stop each connection after the TLS handshake,\n"
            "                       the ZMTP handshake, or the HELLO (default); no calls unless\n"
            "                       hello\n"
            "  --heartbeat-ms MS    amtsbote: each connection sends a ZMTP PING every MS, as\n"
            "                       libamtsbote does (default 1000; 0: none)\n"
            "Prints one result line (scenario=idle) on stdout. Exit 0 only when every connection\n"
            "was registered and every call answered correctly.\n",
            MAX_CONNECTIONS, PROVIDER_ID, STAMP_LEN);
}

static int
s_parse_double(const char *arg, const char *name, double lo, double hi, double *out)
{
    char *end;
    double v = strtod(arg, &end);
    if (*end || end == arg || !(v >= lo && v <= hi)) {
        fprintf(stderr, "bench_idle: %s must be a number in [%g, %g], not '%s'\n", name, lo, hi,
                arg);
        return -1;
    }
    *out = v;
    return 0;
}

static int
s_parse(int argc, char **argv, opts_t *o)
{
    static const struct option longopts[] = {{"system", required_argument, NULL, 'y'},
                                             {"connections", required_argument, NULL, 'n'},
                                             {"url", required_argument, NULL, 'u'},
                                             {"ca", required_argument, NULL, 'a'},
                                             {"cert", required_argument, NULL, 'c'},
                                             {"key", required_argument, NULL, 'k'},
                                             {"pki", required_argument, NULL, 'P'},
                                             {"server-pid", required_argument, NULL, 'p'},
                                             {"seconds", required_argument, NULL, 'S'},
                                             {"size", required_argument, NULL, 's'},
                                             {"batch", required_argument, NULL, 'b'},
                                             {"connect-seconds", required_argument, NULL, 'C'},
                                             {"settle", required_argument, NULL, 'w'},
                                             {"until", required_argument, NULL, 'U'},
                                             {"heartbeat-ms", required_argument, NULL, 'H'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    *o = (opts_t){.system = (sys_t)-1,
                  .seconds = 10,
                  .connect_seconds = 120,
                  .settle = 2,
                  .size = 100,
                  .batch = 200,
                  .until = UNTIL_HELLO,
                  .heartbeat_ms = 1000};
    int ch;
    long v;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'y':
            if (strcmp(optarg, "amtsbote") == 0)
                o->system = SYS_AMTSBOTE;
            else if (strcmp(optarg, "nats") == 0)
                o->system = SYS_NATS;
            else {
                fprintf(stderr, "bench_idle: --system is amtsbote or nats, not '%s'\n", optarg);
                return -1;
            }
            break;
        case 'n':
            if (bu_parse_long(PROG, optarg, "--connections", 1, MAX_CONNECTIONS, &v))
                return -1;
            o->connections = (int)v;
            break;
        case 'u':
            o->url = optarg;
            break;
        case 'a':
            o->ca = optarg;
            break;
        case 'c':
            o->cert = optarg;
            break;
        case 'k':
            o->key = optarg;
            break;
        case 'P':
            o->pki = optarg;
            break;
        case 'p':
            if (bu_parse_long(PROG, optarg, "--server-pid", 1, INT32_MAX, &v))
                return -1;
            o->server_pid = (pid_t)v;
            break;
        case 'S':
            if (s_parse_double(optarg, "--seconds", 0.1, 600, &o->seconds))
                return -1;
            break;
        case 's':
            if (bu_parse_long(PROG, optarg, "--size", STAMP_LEN, MAX_SIZE, &v))
                return -1;
            o->size = (size_t)v;
            break;
        case 'b':
            if (bu_parse_long(PROG, optarg, "--batch", 1, 10000, &v))
                return -1;
            o->batch = (int)v;
            break;
        case 'C':
            if (s_parse_double(optarg, "--connect-seconds", 1, 3600, &o->connect_seconds))
                return -1;
            break;
        case 'w':
            if (s_parse_double(optarg, "--settle", 0, 600, &o->settle))
                return -1;
            break;
        case 'U':
            if (strcmp(optarg, "tls") == 0)
                o->until = UNTIL_TLS;
            else if (strcmp(optarg, "ready") == 0)
                o->until = UNTIL_READY;
            else if (strcmp(optarg, "hello") == 0)
                o->until = UNTIL_HELLO;
            else {
                fprintf(stderr, "bench_idle: --until is tls, ready or hello, not '%s'\n", optarg);
                return -1;
            }
            break;
        case 'H':
            if (bu_parse_long(PROG, optarg, "--heartbeat-ms", 0, 600000, &v))
                return -1;
            o->heartbeat_ms = (int)v;
            break;
        case 'h':
            s_usage(stdout);
            exit(0);
        default:
            s_usage(stderr);
            return -1;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "bench_idle: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    const char *missing = o->system == (sys_t)-1 ? "--system"
                          : !o->connections      ? "--connections"
                          : !o->url              ? "--url"
                          : !o->ca               ? "--ca"
                          : !o->cert             ? "--cert"
                          : !o->key              ? "--key"
                          : !o->server_pid       ? "--server-pid"
                                                 : NULL;
    if (missing) {
        fprintf(stderr, "bench_idle: %s is required\n", missing);
        s_usage(stderr);
        return -1;
    }
    const char *hp = strncmp(o->url, "tls://", 6) == 0 ? o->url + 6 : NULL;
    const char *colon = hp ? strrchr(hp, ':') : NULL;
    if (!colon || (size_t)(colon - hp) >= sizeof o->host) {
        fprintf(stderr, "bench_idle: --url must be tls://IPV4:PORT, not '%s'\n", o->url);
        return -1;
    }
    memcpy(o->host, hp, (size_t)(colon - hp));
    o->host[colon - hp] = '\0';
    if (bu_parse_long(PROG, colon + 1, "the port of --url", 1, 65535, &v))
        return -1;
    o->port = (int)v;
    if (o->system != SYS_AMTSBOTE)
        o->heartbeat_ms = 0; /* NATS clients ping every 2 minutes: never within a run */
    if (o->until != UNTIL_HELLO && o->system != SYS_AMTSBOTE) {
        fprintf(stderr, "bench_idle: --until applies to --system amtsbote only\n");
        return -1;
    }
    return 0;
}

/* A client context: TLS 1.2 or later, the server verified against --ca and the URL's address. */
static SSL_CTX *
s_ctx_new(const opts_t *o)
{
    char e[512];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        fprintf(stderr, "bench_idle: SSL_CTX_new: %s\n", s_ssl_errors(e, sizeof e));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* idle sessions keep no read/write buffers here: the client's memory is not measured, but
     * 10,000 sessions should not need gigabytes */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    const char *bad = NULL;
    if (SSL_CTX_use_certificate_chain_file(ctx, o->cert) != 1)
        bad = o->cert;
    else if (SSL_CTX_use_PrivateKey_file(ctx, o->key, SSL_FILETYPE_PEM) != 1 ||
             SSL_CTX_check_private_key(ctx) != 1)
        bad = o->key;
    else if (SSL_CTX_load_verify_locations(ctx, o->ca, NULL) != 1)
        bad = o->ca;
    else if (X509_VERIFY_PARAM_set1_ip_asc(SSL_CTX_get0_param(ctx), o->host) != 1)
        bad = o->url;
    if (bad) {
        fprintf(stderr, "bench_idle: %s: %s\n", bad, s_ssl_errors(e, sizeof e));
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* Raises the soft descriptor limit to the hard one; -1 when N connections cannot fit. */
static int
s_fd_limit(int n)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 0;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)n + 64) {
        fprintf(stderr,
                "bench_idle: %d connections need %d descriptors; the limit is %llu (ulimit -n)\n",
                n, n + 64, (unsigned long long)rl.rlim_cur);
        return -1;
    }
    return 0;
}

/* ---- the phases ---------------------------------------------------------------------------- */

/* Opens every connection, --batch at a time, until all are registered or time is up. */
static void
s_connect_all(bench_t *b)
{
    uint64_t t0 = bu_now_ns();
    uint64_t end = t0 + (uint64_t)(b->o.connect_seconds * 1e9), next_report = t0 + 1000000000u;
    while (!bu_stopped() && b->registered + b->failed < b->nconns) {
        while (b->started < b->nconns && b->started - b->registered - b->failed < b->o.batch) {
            conn_t *c = &b->conns[b->started++];
            s_start(b, c);
        }
        uint64_t now = bu_now_ns();
        if (now >= end)
            break;
        if (now >= next_report) {
            fprintf(stderr, "bench_idle: %d/%d registered, %d connecting, %d failed, %.1f s\n",
                    b->registered, b->nconns, b->started - b->registered - b->failed, b->failed,
                    (double)(now - t0) / 1e9);
            next_report += 1000000000u;
        }
        if (s_poll(b, 100) < 0) {
            perror("bench_idle: epoll_wait");
            break;
        }
    }
    int left = b->nconns - b->registered - b->failed;
    if (left > 0) {
        s_note(b, "%d connections not registered within %.0f s", left, b->o.connect_seconds);
        for (int i = 0; i < b->nconns; i++) {
            conn_t *c = &b->conns[i];
            if (c->state != ST_IDLE && c->state != ST_FAILED) {
                c->state = ST_FAILED;
                b->failed++;
                s_conn_close(c);
            }
        }
    }
}

/* Keeps the connections alive (heartbeats) for `secs`. */
static void
s_hold(bench_t *b, double secs)
{
    uint64_t end = bu_now_ns() + (uint64_t)(secs * 1e9);
    for (uint64_t now = bu_now_ns(); now < end && !bu_stopped(); now = bu_now_ns()) {
        int ms = (int)((end - now) / 1000000u) + 1;
        if (s_poll(b, ms > 100 ? 100 : ms) < 0)
            break;
    }
}

/* One call from every registered connection, all at once; waits for the answers. */
static void
s_call_all(bench_t *b)
{
    for (int i = 0; i < b->nconns && !bu_stopped(); i++) {
        conn_t *c = &b->conns[i];
        if (c->state != ST_IDLE)
            continue;
        bu_put32(b->req, c->idx);
        bu_put32(b->req + 4, 1);
        int rc = b->o.system == SYS_AMTSBOTE ? s_ab_call(b, c) : s_nats_call(b, c);
        if (rc != 0) {
            s_fail(b, c, "cannot encode the call");
            continue;
        }
        c->state = ST_CALL;
        c->t0 = bu_now_ns();
        if (!b->sent)
            b->first_send = c->t0;
        b->sent++;
        s_flush(b, c);
    }
    uint64_t end = bu_now_ns() + (uint64_t)(b->o.seconds * 1e9);
    while (!bu_stopped() && b->answered + b->errors < b->sent && bu_now_ns() < end)
        if (s_poll(b, 100) < 0)
            break;
}

int
main(int argc, char **argv)
{
    static bench_t b; /* static: large, and must start zeroed */
    if (s_parse(argc, argv, &b.o) != 0)
        return 2;
    opts_t *o = &b.o;
    char pki_buf[600];
    if (!o->pki) {
        snprintf(pki_buf, sizeof pki_buf, "%s", o->cert);
        o->pki = dirname(pki_buf);
    }

    bu_signals();
    /* Hard bound on the whole run, whatever hangs. */
    alarm((unsigned)(o->connect_seconds + o->settle + o->seconds) + 30);

    if (s_fd_limit(o->connections) != 0)
        return 1;
    if (bu_rss_kib(o->server_pid) < 0) {
        fprintf(stderr, "bench_idle: cannot read /proc/%d/status (--server-pid)\n",
                (int)o->server_pid);
        return 1;
    }
    b.addr.sin_family = AF_INET;
    b.addr.sin_port = htons((uint16_t)o->port);
    if (inet_pton(AF_INET, o->host, &b.addr.sin_addr) != 1) {
        fprintf(stderr, "bench_idle: --url: '%s' is not an IPv4 address\n", o->host);
        return 2;
    }
    b.req = malloc(o->size);
    b.lat = calloc((size_t)o->connections, sizeof *b.lat);
    b.conns = calloc((size_t)o->connections, sizeof *b.conns);
    b.hb_ring = calloc((size_t)o->connections, sizeof *b.hb_ring);
    b.dec = ab_wire_decoder_new();
    b.ctx = s_ctx_new(o);
    b.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!b.req || !b.lat || !b.conns || !b.hb_ring || !b.dec || !b.ctx || b.epfd < 0) {
        fprintf(stderr, "bench_idle: cannot set up (out of memory or a TLS file above)\n");
        return 1;
    }
    bu_fill_pattern(b.req, o->size);
    for (int i = 0; i < o->connections; i++)
        b.conns[i] = (conn_t){.fd = -1, .idx = (uint32_t)i};

    /* The echo child first, so that its own connection is in the "before" sample. */
    int ctl = -1;
    pid_t child = 0;
    if (o->until == UNTIL_HELLO) {
        b.nconns = 1;
        child = s_spawn_echo(&b, &ctl);
        if (child < 0)
            return 1;
        b.conns[0] = (conn_t){.fd = -1, .idx = 0};
    }
    b.nconns = o->connections;

    usleep(200000); /* the server settles after the child's connection */
    long rss0 = bu_rss_kib(o->server_pid);
    cpu_t k0 = s_cpu_now(child, o->server_pid);
    uint64_t t0 = bu_now_ns();
    s_connect_all(&b);
    double connect_secs = (double)(bu_now_ns() - t0) / 1e9;
    cpu_t k1 = s_cpu_now(child, o->server_pid);
    int up = b.registered;
    double per_conn = up ? 1.0 / up : 0;
    fprintf(stderr, "bench_idle: %d/%d registered in %.1f s (%d failed)%s%s\n", up, b.nconns,
            connect_secs, b.failed, b.sender[0] ? "; the broker sees " : "", b.sender);

    /* Idle: only heartbeats move. The server's CPU over this window is what idleness costs. */
    cpu_t i0 = s_cpu_now(child, o->server_pid);
    uint64_t h0 = bu_now_ns();
    long hb0 = b.heartbeats, p0 = b.pings;
    s_hold(&b, o->settle);
    double idle_secs = (double)(bu_now_ns() - h0) / 1e9;
    cpu_t i1 = s_cpu_now(child, o->server_pid);
    long rss1 = bu_rss_kib(o->server_pid);
    long hb = b.heartbeats - hb0, pings = b.pings - p0;

    /* The calls. */
    cpu_t c0 = s_cpu_now(child, o->server_pid);
    if (o->until == UNTIL_HELLO)
        s_call_all(&b);
    cpu_t c1 = s_cpu_now(child, o->server_pid);
    long rss2 = bu_rss_kib(o->server_pid);
    if (b.answered + b.errors < b.sent) {
        long missing = b.sent - b.answered - b.errors;
        s_note(&b, "%ld calls unanswered after %.1f s", missing, o->seconds);
        b.errors += missing;
    }

    for (int i = 0; i < b.nconns; i++)
        s_conn_close(&b.conns[i]);
    if (child > 0)
        bu_reap(PROG, &child, &ctl, 1);

    bu_sort_u64(b.lat, b.nlat);
    /* the window: from the first call sent to the last answer */
    double secs = b.last_answer > b.first_send ? (double)(b.last_answer - b.first_send) / 1e9 : 0;
    double per = b.answered ? 1.0 / (double)b.answered : 0;
    long conn_failed = b.nconns - up;
    bu_print_result(&(bu_result_t){
        .system = o->system == SYS_AMTSBOTE ? "amtsbote" : "nats",
        .scenario = "idle",
        .size = o->size,
        .inflight = (int)b.sent,
        .msgs = b.answered,
        .seconds = secs,
        .lat = b.lat,
        .nlat = b.nlat,
        .errors = b.errors + conn_failed + b.dropped_idle,
        .sent = b.sent,
        .cpu_client_us = (c1.client - c0.client) * per,
        .cpu_server_us = c0.server >= 0 && c1.server >= 0 ? (c1.server - c0.server) * per : -1.0});
    printf(
        " connections=%d conn_failed=%ld connect_seconds=%.2f cpu_client_connect_us=%.0f "
        "cpu_server_connect_us=%.0f rss_before_kib=%ld rss_after_kib=%ld mem_per_conn_bytes=%.0f "
        "rss_after_calls_kib=%ld idle_seconds=%.2f idle_cpu_server_pct=%.1f "
        "idle_cpu_client_pct=%.1f heartbeats_per_s=%.0f pings_per_s=%.0f dropped_idle=%ld tls=%s "
        "until=%s\n",
        up, conn_failed, connect_secs, (k1.client - k0.client) * per_conn,
        k0.server >= 0 && k1.server >= 0 ? (k1.server - k0.server) * per_conn : -1.0, rss0, rss1,
        up ? (double)(rss1 - rss0) * 1024.0 / up : 0.0, rss2, idle_secs,
        i0.server >= 0 && i1.server >= 0 ? (i1.server - i0.server) / idle_secs / 1e4 : -1.0,
        (i1.client - i0.client) / idle_secs / 1e4, idle_secs > 0 ? (double)hb / idle_secs : 0,
        idle_secs > 0 ? (double)pings / idle_secs : 0, b.dropped_idle,
        b.tls_version[0] ? b.tls_version : "none",
        o->until == UNTIL_TLS     ? "tls"
        : o->until == UNTIL_READY ? "ready"
                                  : "hello");
    if (b.first_error[0])
        fprintf(stderr, "bench_idle: first error: %s\n", b.first_error);
    int ok = conn_failed == 0 && b.errors == 0 && b.dropped_idle == 0 && b.answered == b.sent &&
             (o->until != UNTIL_HELLO || b.sent == b.nconns);
    SSL_CTX_free(b.ctx);
    ab_wire_decoder_destroy(&b.dec);
    return ok ? 0 : 1;
}
