/*
 * Unit tests for broker/metrics.c. The metrics server runs on a uv loop in a thread of its own
 * (fed before the loop starts, as the broker feeds it from its loop thread); the test thread is
 * the HTTP client, with plain blocking sockets, and parses what it gets: the Prometheus text
 * line by line, label values unescaped.
 */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "amtsbote.h"
#include "metrics.h"

typedef struct {
    uv_loop_t loop;
    uv_async_t stop;
    brk_metrics_t *m;
    pthread_t thread;
    int port;
    atomic_int store_ok;
} fixture_t;

static void
s_on_stop(uv_async_t *a)
{
    fixture_t *f = a->data;
    brk_metrics_close(f->m);
    uv_close((uv_handle_t *)a, NULL);
}

static void *
s_loop_thread(void *arg)
{
    fixture_t *f = arg;
    uv_run(&f->loop, UV_RUN_DEFAULT);
    return NULL;
}

static fixture_t *
s_setup(size_t max_series, size_t max_conns, uint64_t idle_ms)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->m = brk_metrics_new(max_series);
    assert_non_null(f->m);
    brk_metrics_set_limits(f->m, max_conns, idle_ms);
    char bound[64], err[256];
    int rc =
        brk_metrics_listen(f->m, &f->loop, "127.0.0.1:0", 0, bound, sizeof bound, err, sizeof err);
    assert_int_equal(rc, 0);
    f->port = brk_metrics_port(f->m);
    assert_true(f->port > 0);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%d", f->port);
    assert_string_equal(bound, want);
    uv_async_init(&f->loop, &f->stop, s_on_stop);
    f->stop.data = f;
    atomic_store(&f->store_ok, 1);
    return f;
}

static void
s_start(fixture_t *f)
{
    assert_int_equal(pthread_create(&f->thread, NULL, s_loop_thread, f), 0);
}

static void
s_teardown(fixture_t *f)
{
    uv_async_send(&f->stop);
    pthread_join(f->thread, NULL);
    brk_metrics_destroy(&f->m);
    assert_null(f->m);
    brk_metrics_destroy(&f->m); /* safe twice */
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
}

/* ---- the client ---- */

static int
s_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static void
s_send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return; /* the server may have answered and closed already */
        p += w;
        n -= (size_t)w;
    }
}

/* Reads until EOF; returns the bytes (NUL-terminated, caller frees), length in *len. */
static char *
s_read_all(int fd, size_t *len)
{
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        ssize_t r = recv(fd, buf + n, cap - n - 1, 0);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

typedef struct {
    int status;
    char *raw;
    const char *body;
    size_t body_len;
} resp_t;

static resp_t
s_request_raw(int port, const char *req, size_t reqlen)
{
    int fd = s_connect(port);
    s_send_all(fd, req, reqlen);
    resp_t r = {0};
    size_t n;
    r.raw = s_read_all(fd, &n);
    close(fd);
    if (sscanf(r.raw, "HTTP/1.1 %d", &r.status) != 1)
        r.status = -1;
    char *sep = strstr(r.raw, "\r\n\r\n");
    r.body = sep ? sep + 4 : "";
    r.body_len = sep ? n - (size_t)(sep + 4 - r.raw) : 0;
    return r;
}

static resp_t
s_get(int port, const char *method, const char *path)
{
    char req[512];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: localhost\r\n\r\n", method, path);
    return s_request_raw(port, req, (size_t)n);
}

/* ---- a parser of the text exposition format ---- */

typedef struct {
    char name[128];
    int nlabels;
    char lname[4][32];
    char lvalue[4][256];
    double value;
} sample_t;

typedef struct {
    sample_t *s;
    size_t n;
    char types[64][400]; /* "name type" of every TYPE line */
    size_t ntypes;
} expo_t;

/* Parses `text`; fails the test on a line that is not valid exposition format. */
static void
s_parse(const char *text, expo_t *e)
{
    memset(e, 0, sizeof *e);
    size_t cap = 256;
    e->s = calloc(cap, sizeof *e->s);
    const char *p = text;
    while (*p) {
        const char *eol = strchr(p, '\n');
        assert_non_null(eol); /* every line ends with \n */
        if (*p == '#') {
            char kw[8], name[128], rest[256];
            int k = sscanf(p, "# %7s %127s %255[^\n]", kw, name, rest);
            assert_true(k >= 2);
            if (strcmp(kw, "TYPE") == 0) {
                assert_true(e->ntypes < 64);
                snprintf(e->types[e->ntypes++], sizeof e->types[0], "%s %s", name, rest);
            } else {
                assert_string_equal(kw, "HELP");
            }
            p = eol + 1;
            continue;
        }
        if (e->n == cap) {
            cap *= 2;
            e->s = realloc(e->s, cap * sizeof *e->s);
        }
        sample_t *s = &e->s[e->n++];
        memset(s, 0, sizeof *s);
        size_t i = 0;
        while (*p != '{' && *p != ' ') {
            assert_true(i < sizeof s->name - 1);
            s->name[i++] = *p++;
        }
        if (*p == '{') {
            p++;
            while (*p != '}') {
                assert_true(s->nlabels < 4);
                i = 0;
                while (*p != '=')
                    s->lname[s->nlabels][i++] = *p++;
                p++;
                assert_int_equal(*p, '"');
                p++;
                i = 0;
                while (*p != '"') {
                    char ch = *p++;
                    assert_true(ch != '\n'); /* a raw newline would end the line */
                    if (ch == '\\') {
                        ch = *p++;
                        if (ch == 'n')
                            ch = '\n';
                        else
                            assert_true(ch == '\\' || ch == '"');
                    }
                    s->lvalue[s->nlabels][i++] = ch;
                }
                p++;
                s->nlabels++;
                if (*p == ',')
                    p++;
            }
            p++;
        }
        assert_int_equal(*p, ' ');
        p++;
        char *end;
        s->value = strtod(p, &end);
        assert_true(end == eol);
        p = eol + 1;
    }
}

static const char *
s_label(const sample_t *s, const char *name)
{
    for (int i = 0; i < s->nlabels; i++)
        if (strcmp(s->lname[i], name) == 0)
            return s->lvalue[i];
    return NULL;
}

/* The value of the sample `name` whose labels include l1=v1 (and l2=v2); NAN when absent. */
static double
s_value(const expo_t *e, const char *name, const char *l1, const char *v1, const char *l2,
        const char *v2)
{
    for (size_t i = 0; i < e->n; i++) {
        const sample_t *s = &e->s[i];
        if (strcmp(s->name, name) != 0)
            continue;
        if (l1 && (!s_label(s, l1) || strcmp(s_label(s, l1), v1) != 0))
            continue;
        if (l2 && (!s_label(s, l2) || strcmp(s_label(s, l2), v2) != 0))
            continue;
        return s->value;
    }
    return NAN;
}

static int
s_has_type(const expo_t *e, const char *name, const char *type)
{
    char want[160];
    snprintf(want, sizeof want, "%s %s", name, type);
    for (size_t i = 0; i < e->ntypes; i++)
        if (strcmp(e->types[i], want) == 0)
            return 1;
    return 0;
}

static void
s_source(void *arg, brk_metrics_t *m, brk_metrics_stats_t *out)
{
    (void)arg;
    out->have_services = 1;
    out->services.calls = 42;
    out->services.connections = 5;
    out->have_tls = 1;
    out->tls.sessions = 3;
    out->tls.refused = 7;
    brk_metrics_gauge_clear(m, BRK_M_MAILBOX_DEPTH);
    brk_metrics_gauge_set(m, BRK_M_MAILBOX_DEPTH, "kommune.09162000.meldeamt", 12);
    brk_metrics_gauge_set(m, BRK_M_MAILBOX_OLDEST_AGE, "kommune.09162000.meldeamt", 90.5);
    brk_metrics_gauge_set(m, BRK_M_PARTICIPANTS_ONLINE, NULL, 2);
}

#define SVC "meldewesen.v1.Melderegister/Meldebescheinigung"
#define HOSTILE "we\"ird\\svc\nx"

static void
test_scrape_values(void **state)
{
    (void)state;
    fixture_t *f = s_setup(0, 0, 0);
    brk_metrics_t *m = f->m;
    for (int i = 0; i < 3; i++)
        assert_int_equal(brk_metrics_counter_add(m, BRK_M_CALLS, SVC, NULL, 1), 0);
    assert_int_equal(brk_metrics_counter_add(m, BRK_M_CALL_ERRORS, SVC, "DEADLINE_EXCEEDED", 2), 0);
    assert_int_equal(brk_metrics_counter_add(m, BRK_M_CALLS, HOSTILE, NULL, 5), 0);
    assert_int_equal(brk_metrics_observe(m, BRK_M_CALL_LATENCY, SVC, 0.003), 0);
    assert_int_equal(brk_metrics_observe(m, BRK_M_CALL_LATENCY, SVC, 0.02), 0);
    assert_int_equal(brk_metrics_observe(m, BRK_M_CALL_LATENCY, SVC, 0.02), 0);
    assert_int_equal(brk_metrics_observe(m, BRK_M_CALL_LATENCY, SVC, 7), 0);
    assert_int_equal(brk_metrics_observe(m, BRK_M_CALL_LATENCY, SVC, 100), 0); /* over 30 s */
    assert_int_equal(brk_metrics_observe(m, BRK_M_STORE_COMMIT, NULL, 0.002), 0);
    assert_int_equal(
        brk_metrics_counter_add(m, BRK_M_TLS_HANDSHAKE_FAIL, "certificate revoked", NULL, 1), 0);
    assert_int_equal(brk_metrics_counter_add(m, BRK_M_POLICY_DENIALS, "rule 3 (line 12)", NULL, 4),
                     0);
    assert_int_equal(brk_metrics_counter_add(m, BRK_M_CONNECTIONS, "tls", NULL, 9), 0);
    assert_int_equal(brk_metrics_add_source(m, s_source, NULL), 0);
    s_start(f);

    resp_t r = s_get(f->port, "GET", "/metrics");
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.raw, "Content-Type: text/plain; version=0.0.4"));
    expo_t e;
    s_parse(r.body, &e);

    assert_true(s_has_type(&e, "amtsbote_service_calls_total", "counter"));
    assert_true(s_has_type(&e, "amtsbote_service_call_duration_seconds", "histogram"));
    assert_true(s_has_type(&e, "amtsbote_mailbox_depth", "gauge"));
    assert_true(s_has_type(&e, "amtsbote_store_commit_duration_seconds", "histogram"));
    /* every sample belongs to a family with a TYPE line */
    for (size_t i = 0; i < e.n; i++) {
        char base[128];
        snprintf(base, sizeof base, "%s", e.s[i].name);
        int found = s_has_type(&e, base, "counter") || s_has_type(&e, base, "gauge");
        for (const char *suf = "_bucket\0_sum\0_count\0"; !found && *suf; suf += strlen(suf) + 1) {
            size_t bl = strlen(base), sl = strlen(suf);
            if (bl > sl && strcmp(base + bl - sl, suf) == 0) {
                base[bl - sl] = '\0';
                found = s_has_type(&e, base, "histogram");
            }
        }
        if (!found)
            fail_msg("sample %s has no TYPE line", e.s[i].name);
    }

    assert_true(s_value(&e, "amtsbote_service_calls_total", "service", SVC, NULL, NULL) == 3);
    /* the hostile name came back unchanged after unescaping */
    assert_true(s_value(&e, "amtsbote_service_calls_total", "service", HOSTILE, NULL, NULL) == 5);
    assert_non_null(strstr(r.body, "service=\"we\\\"ird\\\\svc\\nx\""));
    assert_true(s_value(&e, "amtsbote_service_errors_total", "service", SVC, "code",
                        "DEADLINE_EXCEEDED") == 2);
    assert_true(s_value(&e, "amtsbote_tls_handshake_failures_total", "reason",
                        "certificate revoked", NULL, NULL) == 1);
    assert_true(
        s_value(&e, "amtsbote_policy_denials_total", "rule", "rule 3 (line 12)", NULL, NULL) == 4);
    assert_true(
        s_value(&e, "amtsbote_connections_accepted_total", "transport", "tls", NULL, NULL) == 9);

    /* histogram: cumulative buckets, +Inf == _count, _sum */
    const char *h = "amtsbote_service_call_duration_seconds";
    assert_true(s_value(&e, "amtsbote_service_call_duration_seconds_bucket", "service", SVC, "le",
                        "0.001") == 0);
    assert_true(s_value(&e, "amtsbote_service_call_duration_seconds_bucket", "service", SVC, "le",
                        "0.005") == 1);
    assert_true(s_value(&e, "amtsbote_service_call_duration_seconds_bucket", "service", SVC, "le",
                        "0.025") == 3);
    assert_true(s_value(&e, "amtsbote_service_call_duration_seconds_bucket", "service", SVC, "le",
                        "10") == 4);
    assert_true(s_value(&e, "amtsbote_service_call_duration_seconds_bucket", "service", SVC, "le",
                        "+Inf") == 5);
    assert_true(s_value(&e, "amtsbote_service_call_duration_seconds_count", "service", SVC, NULL,
                        NULL) == 5);
    assert_true(
        fabs(s_value(&e, "amtsbote_service_call_duration_seconds_sum", "service", SVC, NULL, NULL) -
             107.043) < 1e-9);
    double prev = -1, prev_le = -1;
    int buckets = 0;
    for (size_t i = 0; i < e.n; i++) {
        const sample_t *s = &e.s[i];
        if (strncmp(s->name, h, strlen(h)) != 0 || strcmp(s->name + strlen(h), "_bucket") != 0 ||
            strcmp(s_label(s, "service"), SVC) != 0)
            continue;
        double le = strtod(s_label(s, "le"), NULL); /* "+Inf" reads as infinity */
        assert_true(le > prev_le);
        assert_true(s->value >= prev);
        prev = s->value;
        prev_le = le;
        buckets++;
    }
    assert_int_equal(buckets, 15);
    assert_true(
        s_value(&e, "amtsbote_store_commit_duration_seconds_count", NULL, NULL, NULL, NULL) == 1);

    /* from the source */
    assert_true(s_value(&e, "amtsbote_calls_received_total", NULL, NULL, NULL, NULL) == 42);
    assert_true(s_value(&e, "amtsbote_connections", NULL, NULL, NULL, NULL) == 5);
    assert_true(s_has_type(&e, "amtsbote_tls_sessions", "gauge"));
    assert_true(s_value(&e, "amtsbote_tls_sessions", NULL, NULL, NULL, NULL) == 3);
    assert_true(s_value(&e, "amtsbote_tls_handshakes_refused_total", NULL, NULL, NULL, NULL) == 7);
    assert_true(s_value(&e, "amtsbote_mailbox_depth", "mailbox", "kommune.09162000.meldeamt", NULL,
                        NULL) == 12);
    assert_true(s_value(&e, "amtsbote_mailbox_oldest_age_seconds", "mailbox",
                        "kommune.09162000.meldeamt", NULL, NULL) == 90.5);
    assert_true(s_value(&e, "amtsbote_participants_online", NULL, NULL, NULL, NULL) == 2);
    assert_true(isnan(s_value(&e, "amtsbote_messages_received_total", NULL, NULL, NULL, NULL)));
    free(e.s);
    free(r.raw);

    /* HEAD: the headers of GET, no body */
    r = s_get(f->port, "HEAD", "/metrics");
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    assert_non_null(strstr(r.raw, "Content-Length: "));
    free(r.raw);
    s_teardown(f);
}

static int
s_store_check(void *arg, char *why, size_t cap)
{
    fixture_t *f = arg;
    if (atomic_load(&f->store_ok))
        return 0;
    snprintf(why, cap, "commit failed: disk I/O error");
    return 1;
}

static int
s_policy_check(void *arg, char *why, size_t cap)
{
    (void)arg;
    (void)why;
    (void)cap;
    return 0;
}

static void
test_health_ready(void **state)
{
    (void)state;
    fixture_t *f = s_setup(0, 0, 0);
    assert_int_equal(brk_metrics_add_check(f->m, "store writable", s_store_check, f), 0);
    assert_int_equal(brk_metrics_add_check(f->m, "policy loaded", s_policy_check, NULL), 0);
    assert_int_equal(brk_metrics_add_check(f->m, "", s_policy_check, NULL), AB_EINVAL);
    s_start(f);

    resp_t r = s_get(f->port, "GET", "/healthz");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok\n");
    free(r.raw);

    r = s_get(f->port, "GET", "/readyz");
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "ok: store writable"));
    free(r.raw);

    atomic_store(&f->store_ok, 0);
    r = s_get(f->port, "GET", "/readyz?verbose=1");
    assert_int_equal(r.status, 503);
    assert_non_null(strstr(r.body, "not ready"));
    assert_non_null(strstr(r.body, "failed: store writable: commit failed: disk I/O error\n"));
    assert_non_null(strstr(r.body, "ok: policy loaded"));
    assert_null(strstr(r.body, "failed: policy loaded"));
    free(r.raw);
    s_teardown(f);
}

static void
s_page(void *arg, brk_metrics_page_t *p)
{
    (void)arg;
    brk_metrics_page_service(p, "<script>alert(\"x\")</script>&'", 2, 17);
    brk_metrics_page_service(p, SVC, 1, 3);
    brk_metrics_page_participant(p, "bund.bmi<b>");
    brk_metrics_page_mailbox(p, "kommune.09162000.meldeamt", 12, 90);
}

static void
test_html_page(void **state)
{
    (void)state;
    fixture_t *f = s_setup(0, 0, 0);
    brk_metrics_set_page(f->m, s_page, NULL);
    s_start(f);
    resp_t r = s_get(f->port, "GET", "/");
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.raw, "Content-Type: text/html; charset=utf-8"));
    assert_non_null(strstr(r.raw, "Content-Security-Policy: default-src 'none'"));
    assert_non_null(strstr(r.body, "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"));
    assert_null(strstr(r.body, "<script"));
    assert_non_null(strstr(r.body, "bund.bmi&lt;b&gt;"));
    assert_non_null(strstr(r.body, SVC));
    assert_non_null(strstr(r.body, "kommune.09162000.meldeamt</td><td>12</td>"));
    assert_non_null(strstr(r.body, "Services (2)"));
    free(r.raw);
    s_teardown(f);
}

static void
test_bad_requests(void **state)
{
    (void)state;
    fixture_t *f = s_setup(0, 0, 0);
    s_start(f);

    resp_t r = s_get(f->port, "GET", "/nope");
    assert_int_equal(r.status, 404);
    free(r.raw);

    r = s_get(f->port, "POST", "/metrics");
    assert_int_equal(r.status, 405);
    assert_non_null(strstr(r.raw, "Allow: GET, HEAD\r\n"));
    free(r.raw);
    r = s_get(f->port, "DELETE", "/");
    assert_int_equal(r.status, 405);
    free(r.raw);

    const char *garbage[] = {
        "BLAH / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost localhost\r\n\r\n",
        "GET / HTTP/x.1\r\n\r\n",
        "GET / HTTP/1.1\r\n\x01"
        "bad: x\r\n\r\n",
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", /* a TLS ClientHello */
        "GET /metrics HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
        r = s_request_raw(f->port, garbage[i], strlen(garbage[i]));
        if (r.status != 400)
            fail_msg("request %zu: status %d, want 400", i, r.status);
        assert_non_null(strstr(r.raw, "Connection: close"));
        free(r.raw);
    }

    /* a header over 8 KiB, in one piece and as many small headers */
    size_t big = 9000;
    char *req = malloc(big + 128);
    int n = snprintf(req, big + 128, "GET /metrics HTTP/1.1\r\nX-Long: ");
    memset(req + n, 'a', big);
    n += (int)big;
    n += snprintf(req + n, 128, "\r\n\r\n");
    r = s_request_raw(f->port, req, (size_t)n);
    assert_int_equal(r.status, 431);
    free(r.raw);
    n = snprintf(req, big + 128, "GET /metrics HTTP/1.1\r\n");
    while ((size_t)n < big)
        n += snprintf(req + n, big + 128 - (size_t)n, "X-A: b\r\n");
    n += snprintf(req + n, big + 128 - (size_t)n, "\r\n");
    r = s_request_raw(f->port, req, (size_t)n);
    assert_int_equal(r.status, 431);
    free(r.raw);
    free(req);

    /* a request that fits still works after all that */
    r = s_get(f->port, "GET", "/healthz");
    assert_int_equal(r.status, 200);
    free(r.raw);
    s_teardown(f);
}

static double
s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
test_idle_timeout(void **state)
{
    (void)state;
    fixture_t *f = s_setup(0, 0, 300);
    s_start(f);
    /* nothing at all */
    int fd = s_connect(f->port);
    double t0 = s_now();
    char c;
    assert_int_equal(recv(fd, &c, 1, 0), 0);
    double dt = s_now() - t0;
    assert_true(dt >= 0.25 && dt < 3);
    close(fd);
    /* half a request, then silence */
    fd = s_connect(f->port);
    s_send_all(fd, "GET /metr", 9);
    t0 = s_now();
    assert_int_equal(recv(fd, &c, 1, 0), 0);
    dt = s_now() - t0;
    assert_true(dt >= 0.25 && dt < 3);
    close(fd);
    s_teardown(f);
}

static void
test_connection_cap(void **state)
{
    (void)state;
    enum { CAP = 4 };
    fixture_t *f = s_setup(0, CAP, 10000);
    s_start(f);
    int fds[CAP];
    for (int i = 0; i < CAP; i++)
        fds[i] = s_connect(f->port);
    usleep(200 * 1000); /* the loop accepts them */
    /* one more: closed at once */
    int extra = s_connect(f->port);
    double t0 = s_now();
    char c;
    assert_int_equal(recv(extra, &c, 1, 0), 0);
    assert_true(s_now() - t0 < 2);
    close(extra);
    /* the ones that were in still get answers */
    const char *req = "GET /healthz HTTP/1.1\r\n\r\n";
    s_send_all(fds[0], req, strlen(req));
    size_t n;
    char *raw = s_read_all(fds[0], &n);
    assert_true(strncmp(raw, "HTTP/1.1 200", 12) == 0);
    free(raw);
    for (int i = 0; i < CAP; i++)
        close(fds[i]);
    usleep(200 * 1000); /* the loop sees them go */
    resp_t r = s_get(f->port, "GET", "/metrics");
    assert_int_equal(r.status, 200);
    expo_t e;
    s_parse(r.body, &e);
    assert_true(s_value(&e, "amtsbote_metrics_http_refused_total", NULL, NULL, NULL, NULL) == 1);
    free(e.s);
    free(r.raw);
    s_teardown(f);
}

static void
test_many_services_bounded(void **state)
{
    (void)state;
    fixture_t *f = s_setup(0, 0, 0);
    char name[64];
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "pkg%d.v1.Service/Method", i);
        assert_int_equal(brk_metrics_counter_add(f->m, BRK_M_CALLS, name, NULL, 1), 0);
        assert_int_equal(brk_metrics_counter_add(f->m, BRK_M_CALL_ERRORS, name, "FORBIDDEN", 1), 0);
        assert_int_equal(brk_metrics_observe(f->m, BRK_M_CALL_LATENCY, name, 0.01), 0);
    }
    s_start(f);
    double t0 = s_now();
    resp_t r = s_get(f->port, "GET", "/metrics");
    double dt = s_now() - t0;
    assert_int_equal(r.status, 200);
    assert_true(r.body_len < 256 * 1024);
    assert_true(dt < 1.0);
    expo_t e;
    s_parse(r.body, &e);
    size_t calls_series = 0;
    double total = 0;
    for (size_t i = 0; i < e.n; i++)
        if (strcmp(e.s[i].name, "amtsbote_service_calls_total") == 0) {
            calls_series++;
            total += e.s[i].value;
        }
    assert_int_equal(calls_series, BRK_METRICS_MAX_SERIES + 1);
    assert_true(total == 1000);
    assert_true(s_value(&e, "amtsbote_service_calls_total", "service", "other", NULL, NULL) ==
                1000 - BRK_METRICS_MAX_SERIES);
    assert_true(s_value(&e, "amtsbote_service_errors_total", "service", "other", "code",
                        "FORBIDDEN") == 1000 - BRK_METRICS_MAX_SERIES);
    assert_true(s_value(&e, "amtsbote_service_call_duration_seconds_count", "service", "other",
                        NULL, NULL) == 1000 - BRK_METRICS_MAX_SERIES);
    free(e.s);
    free(r.raw);
    s_teardown(f);
}

static void
test_api(void **state)
{
    (void)state;
    brk_metrics_t *m = brk_metrics_new(2);
    assert_non_null(m);
    /* wrong kind, missing labels, NaN */
    assert_int_equal(brk_metrics_counter_add(m, BRK_M_CALL_LATENCY, "a", NULL, 1), AB_EINVAL);
    assert_int_equal(brk_metrics_counter_add(m, BRK_M_CALLS, NULL, NULL, 1), AB_EINVAL);
    assert_int_equal(brk_metrics_counter_add(m, BRK_M_CALL_ERRORS, "a", NULL, 1), AB_EINVAL);
    assert_int_equal(brk_metrics_counter_add(m, BRK_M__COUNT, "a", NULL, 1), AB_EINVAL);
    assert_int_equal(brk_metrics_observe(m, BRK_M_CALLS, "a", 1), AB_EINVAL);
    assert_int_equal(brk_metrics_observe(m, BRK_M_CALL_LATENCY, "a", NAN), AB_EINVAL);
    assert_int_equal(brk_metrics_gauge_set(m, BRK_M_CALLS, "a", 1), AB_EINVAL);
    assert_int_equal(brk_metrics_gauge_set(m, BRK_M_MAILBOX_DEPTH, NULL, 1), AB_EINVAL);

    /* folding: two label sets kept, the rest under "other"; the code label survives */
    brk_metrics_counter_add(m, BRK_M_CALL_ERRORS, "a", "FORBIDDEN", 1);
    brk_metrics_counter_add(m, BRK_M_CALL_ERRORS, "b", "FORBIDDEN", 1);
    brk_metrics_counter_add(m, BRK_M_CALL_ERRORS, "c", "FORBIDDEN", 1);
    brk_metrics_counter_add(m, BRK_M_CALL_ERRORS, "d", "UNAVAILABLE", 1);
    brk_metrics_counter_add(m, BRK_M_CALL_ERRORS, "a", "FORBIDDEN", 1);
    assert_true(brk_metrics_value(m, BRK_M_CALL_ERRORS, "a", "FORBIDDEN") == 2);
    assert_true(brk_metrics_value(m, BRK_M_CALL_ERRORS, "other", "FORBIDDEN") == 1);
    assert_true(brk_metrics_value(m, BRK_M_CALL_ERRORS, "other", "UNAVAILABLE") == 1);
    assert_true(brk_metrics_value(m, BRK_M_CALL_ERRORS, "c", "FORBIDDEN") == 0);
    /* an endless stream of codes still ends in one ("other", "other") */
    char code[32];
    for (int i = 0; i < 200; i++) {
        snprintf(code, sizeof code, "C%d", i);
        assert_int_equal(brk_metrics_counter_add(m, BRK_M_CALL_ERRORS, code, code, 1), 0);
    }
    assert_true(brk_metrics_value(m, BRK_M_CALL_ERRORS, "other", "other") > 150);
    size_t len;
    char *text = brk_metrics_render(m, &len);
    assert_non_null(text);
    size_t lines = 0;
    for (char *p = text; (p = strstr(p, "amtsbote_service_errors_total{")) != NULL; p++)
        lines++;
    assert_true(lines <= 2 + 16 + 1);
    free(text);

    /* folded gauges add up instead of overwriting each other */
    brk_metrics_gauge_set(m, BRK_M_MAILBOX_DEPTH, "m1", 1);
    brk_metrics_gauge_set(m, BRK_M_MAILBOX_DEPTH, "m2", 2);
    brk_metrics_gauge_set(m, BRK_M_MAILBOX_DEPTH, "m3", 3);
    brk_metrics_gauge_set(m, BRK_M_MAILBOX_DEPTH, "m4", 4);
    assert_true(brk_metrics_value(m, BRK_M_MAILBOX_DEPTH, "other", NULL) == 7);
    brk_metrics_gauge_clear(m, BRK_M_MAILBOX_DEPTH);
    assert_true(brk_metrics_value(m, BRK_M_MAILBOX_DEPTH, "m1", NULL) == 0);

    /* label values: cut to 128 bytes, bytes that are not UTF-8 become '?' */
    brk_metrics_t *m2 = brk_metrics_new(0);
    brk_metrics_counter_add(m2, BRK_M_CALLS, "bad\xff\xc3(utf8\xc3\xa4", NULL, 1);
    assert_true(brk_metrics_value(m2, BRK_M_CALLS,
                                  "bad?"
                                  "?(utf8\xc3\xa4",
                                  NULL) == 1);
    char longname[300];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    brk_metrics_counter_add(m2, BRK_M_CALLS, longname, NULL, 1);
    text = brk_metrics_render(m2, &len);
    assert_non_null(text);
    assert_non_null(strstr(text, "bad?"
                                 "?(utf8\xc3\xa4"));
    char cut[160];
    snprintf(cut, sizeof cut, "service=\"%.128s\"}", longname);
    assert_non_null(strstr(text, cut));
    free(text);
    brk_metrics_destroy(&m2);
    brk_metrics_destroy(&m);
    brk_metrics_destroy(NULL);
}

static void
test_listen_refuses(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    brk_metrics_t *m = brk_metrics_new(0);
    char err[256], bound[64];
    const char *bad[] = {"0.0.0.0:0",  "10.1.2.3:9100",   "[::]:0",         "nohost",
                         "127.0.0.1:", "127.0.0.1:99999", "example.org:80", ":9100"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(
            brk_metrics_listen(m, &loop, bad[i], 0, bound, sizeof bound, err, sizeof err),
            AB_EINVAL);
        assert_non_null(strstr(err, bad[i])); /* the message names the address */
    }
    assert_non_null(strstr(err, "HOST:PORT"));
    brk_metrics_listen(m, &loop, "0.0.0.0:0", 0, bound, sizeof bound, err, sizeof err);
    assert_non_null(strstr(err, "not loopback"));
    /* with the explicit flag it serves (on port 0: any free one) */
    assert_int_equal(brk_metrics_listen(m, &loop, "0.0.0.0:0", BRK_METRICS_PUBLIC, bound,
                                        sizeof bound, err, sizeof err),
                     0);
    assert_true(brk_metrics_port(m) > 0);
    assert_int_equal(
        brk_metrics_listen(m, &loop, "127.0.0.1:0", 0, bound, sizeof bound, err, sizeof err),
        AB_ESTATE);
    brk_metrics_destroy(&m); /* handles still closing: freed from their callbacks */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);

    /* IPv6 loopback */
    uv_loop_init(&loop);
    m = brk_metrics_new(0);
    int rc = brk_metrics_listen(m, &loop, "[::1]:0", 0, bound, sizeof bound, err, sizeof err);
    if (rc == 0)
        assert_true(strncmp(bound, "[::1]:", 6) == 0);
    else
        assert_int_equal(rc, AB_EIO); /* a host without IPv6 */
    brk_metrics_close(m);
    uv_run(&loop, UV_RUN_DEFAULT);
    brk_metrics_destroy(&m);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scrape_values),
        cmocka_unit_test(test_health_ready),
        cmocka_unit_test(test_html_page),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_connection_cap),
        cmocka_unit_test(test_many_services_bounded),
        cmocka_unit_test(test_api),
        cmocka_unit_test(test_listen_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
