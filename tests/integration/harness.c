/*
 * harness.c - real broker processes for the integration tests.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

long long
h_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

pid_t
h_spawn(const char *const *argv, int *out_fd, const char *errfile)
{
    int p[2] = {-1, -1};
    if (out_fd && pipe(p) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (out_fd) {
            dup2(p[1], 1);
            close(p[0]);
            close(p[1]);
        }
        if (errfile) {
            int fd = open(errfile, O_WRONLY | O_CREAT | O_APPEND, 0600);
            if (fd >= 0) {
                dup2(fd, 2);
                close(fd);
            }
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    if (out_fd) {
        close(p[1]);
        *out_fd = p[0];
    }
    return pid;
}

/* Reads one line (without the newline) byte by byte so nothing past it is consumed. */
static int
s_read_line(int fd, char *line, size_t cap, long long deadline)
{
    size_t n = 0;
    for (;;) {
        long long left = deadline - h_now_ms();
        if (left <= 0)
            return -1;
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, (int)left) <= 0)
            continue;
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r <= 0)
            return -1;
        if (c == '\n') {
            line[n] = '\0';
            return 0;
        }
        if (n + 1 < cap)
            line[n++] = c;
    }
}

int
h_wait_line(int fd, const char *prefix, int timeout_ms)
{
    long long deadline = h_now_ms() + timeout_ms;
    char line[512];
    while (s_read_line(fd, line, sizeof line, deadline) == 0)
        if (!strncmp(line, prefix, strlen(prefix)))
            return 0;
    return -1;
}

int
h_wait_pid(pid_t pid, int timeout_ms)
{
    long long deadline = h_now_ms() + timeout_ms;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (r < 0 || h_now_ms() >= deadline)
            return -1;
        usleep(5000);
    }
}

int
h_broker_start(h_broker_t *b, int secure, const char *const *extra)
{
    memset(b, 0, sizeof *b);
    snprintf(b->dir, sizeof b->dir, "/tmp/amtsbote-test-XXXXXX");
    if (!mkdtemp(b->dir))
        return -1;
    char data[192], log[192];
    snprintf(data, sizeof data, "%s/data", b->dir);
    snprintf(log, sizeof log, "%s/broker.log", b->dir);
    snprintf(b->ipc, sizeof b->ipc, "ipc://%s/broker.sock", b->dir);
    const char *pki = h_pki();
    if (!pki)
        return -1;
    char cert[256], key[256], ca[256], crl[256];
    snprintf(cert, sizeof cert, "%s/broker.crt", pki);
    snprintf(key, sizeof key, "%s/broker.key", pki);
    snprintf(ca, sizeof ca, "%s/ca/chain.pem", pki);
    snprintf(crl, sizeof crl, "%s/ca/crl.pem", pki);
    const char *argv[64];
    int n = 0;
    argv[n++] = H_BROKER_BIN;
    argv[n++] = "--listen";
    argv[n++] = "tls://127.0.0.1:*";
    argv[n++] = "--tls-cert";
    argv[n++] = cert;
    argv[n++] = "--tls-key";
    argv[n++] = key;
    argv[n++] = "--tls-ca";
    argv[n++] = ca;
    argv[n++] = "--tls-crl";
    argv[n++] = crl;
    argv[n++] = "--listen";
    argv[n++] = "tcp://127.0.0.1:*";
    argv[n++] = "--listen";
    argv[n++] = b->ipc;
    argv[n++] = "--data";
    argv[n++] = data;
    argv[n++] = "--log-level";
    argv[n++] = "debug";
    if (!secure)
        argv[n++] = "--insecure-plain-identities";
    for (; extra && *extra && n < 62; extra++)
        argv[n++] = *extra;
    argv[n] = NULL;
    b->pid = h_spawn(argv, &b->out_fd, log);
    if (b->pid < 0)
        return -1;
    long long deadline = h_now_ms() + 10000;
    char line[512];
    while (s_read_line(b->out_fd, line, sizeof line, deadline) == 0) {
        if (!strncmp(line, "listening on tcp://", 19))
            snprintf(b->tcp, sizeof b->tcp, "%.120s", line + 13);
        if (!strncmp(line, "listening on tls://", 19))
            snprintf(b->tls, sizeof b->tls, "%.120s", line + 13);
        if (!strcmp(line, "ready"))
            return b->tcp[0] && b->tls[0] ? 0 : -1;
    }
    kill(b->pid, SIGKILL);
    h_wait_pid(b->pid, 2000);
    return -1;
}

int
h_broker_stop(h_broker_t *b, int sig, int timeout_ms)
{
    if (b->pid <= 0)
        return -1;
    kill(b->pid, sig);
    int st = h_wait_pid(b->pid, timeout_ms);
    if (st < 0) {
        kill(b->pid, SIGKILL);
        h_wait_pid(b->pid, 2000);
    }
    b->pid = 0;
    if (b->out_fd > 0)
        close(b->out_fd);
    return st;
}

int
h_broker_log_has(const h_broker_t *b, const char *needle)
{
    char path[192];
    snprintf(path, sizeof path, "%s/broker.log", b->dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

static pthread_mutex_t s_pki_lock = PTHREAD_MUTEX_INITIALIZER;
static char s_pki_dir[192];

static void
s_pki_remove(void)
{
    char cmd[256];
    if (s_pki_dir[0] && getenv("AMTSBOTE_KEEP_PKI") == NULL) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_pki_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "harness: could not remove %s\n", s_pki_dir);
    }
}

static const char *
s_pki_locked(void)
{
    if (s_pki_dir[0])
        return s_pki_dir;
    char dir[128];
    snprintf(dir, sizeof dir, "/tmp/amtsbote-pki-XXXXXX");
    if (!mkdtemp(dir))
        return NULL;
    char cmd[512];
    snprintf(
        cmd, sizeof cmd,
        "bash '%s' init '%s/p' --force >/dev/null && bash '%s' broker '%s/p' broker >/dev/null",
        AB_PKI_SH, dir, AB_PKI_SH, dir);
    if (system(cmd) != 0)
        return NULL;
    snprintf(s_pki_dir, sizeof s_pki_dir, "%s/p", dir);
    atexit(s_pki_remove);
    return s_pki_dir;
}

const char *
h_pki(void)
{
    pthread_mutex_lock(&s_pki_lock);
    const char *d = s_pki_locked();
    pthread_mutex_unlock(&s_pki_lock);
    return d;
}

const char *
h_pki_cert(const char *participant)
{
    pthread_mutex_lock(&s_pki_lock);
    const char *d = s_pki_locked();
    char path[512], cmd[768];
    if (d) {
        snprintf(path, sizeof path, "%s/%s.crt", d, participant);
        snprintf(cmd, sizeof cmd, "bash '%s' issue '%s' '%s' >/dev/null", AB_PKI_SH, d,
                 participant);
        if (access(path, R_OK) != 0 && system(cmd) != 0)
            d = NULL;
    }
    pthread_mutex_unlock(&s_pki_lock);
    return d;
}

ab_client_t *
h_client(const char *uri, const char *participant)
{
    ab_client_t *c = ab_client_new();
    if (!c)
        return NULL;
    int rc;
    if (!strncmp(uri, "tls://", 6)) {
        const char *d = h_pki_cert(participant);
        char cert[512], key[512], ca[512];
        snprintf(cert, sizeof cert, "%s/%s.crt", d ? d : "", participant);
        snprintf(key, sizeof key, "%s/%s.key", d ? d : "", participant);
        snprintf(ca, sizeof ca, "%s/ca/chain.pem", d ? d : "");
        ab_tls_options_t t = {.cert = cert, .key = key, .ca = ca};
        rc = d ? ab_client_set_tls(c, &t) : AB_EIO;
    } else {
        rc = ab_client_set_participant(c, participant);
    }
    if (rc != 0 || ab_client_connect(c, uri, 5000) != 0) {
        fprintf(stderr, "h_client %s as %s: %s\n", uri, participant, ab_client_last_error(c));
        ab_client_destroy(&c);
    }
    return c;
}

static void
s_handler(ab_client_t *c, ab_request_t *req, void *arg)
{
    (void)c;
    h_provider_t *p = arg;
    snprintf(p->last_caller, sizeof p->last_caller, "%s", ab_request_caller(req));
    snprintf(p->last_purpose, sizeof p->last_purpose, "%s", ab_request_purpose(req));
    if (p->mode == 1 && p->nheld < 64) {
        p->held[p->nheld++] = req; /* answered later (or never) */
        atomic_fetch_add(&p->received, 1);
        return;
    }
    if (p->mode == 2)
        usleep((useconds_t)(p->delay_ms ? p->delay_ms : 500) * 1000);
    size_t len = 0;
    const char *data = ab_request_payload(req, &len);
    char out[4096];
    int n = snprintf(out, sizeof out, "%s:", p->participant);
    if (len > sizeof out - (size_t)n)
        len = sizeof out - (size_t)n;
    memcpy(out + n, data, len);
    atomic_fetch_add(&p->served, 1);
    ab_reply(&req, out, (size_t)n + len);
}

static void *
s_provider_main(void *arg)
{
    h_provider_t *p = arg;
    ab_client_t *c = h_client(p->uri, p->participant);
    if (!c)
        return NULL;
    if (ab_offer(c, p->service, s_handler, p) != 0) {
        fprintf(stderr, "offer failed: %s\n", ab_client_last_error(c));
        ab_client_destroy(&c);
        return NULL;
    }
    atomic_store(&p->ready, 1);
    while (!atomic_load(&p->stop))
        ab_client_run(c, 20);
    for (int i = 0; i < p->nheld; i++)
        ab_reply(&p->held[i], "late", 4);
    ab_client_destroy(&c);
    return NULL;
}

int
h_provider_start(h_provider_t *p, const char *uri, const char *participant, const char *service,
                 int mode)
{
    memset(p, 0, sizeof *p);
    p->uri = uri;
    p->participant = participant;
    p->service = service;
    p->mode = mode;
    pthread_create(&p->thread, NULL, s_provider_main, p);
    long long deadline = h_now_ms() + 10000;
    while (!atomic_load(&p->ready) && h_now_ms() < deadline)
        usleep(2000);
    return atomic_load(&p->ready) ? 0 : -1;
}

void
h_provider_stop(h_provider_t *p)
{
    atomic_store(&p->stop, 1);
    pthread_join(p->thread, NULL);
}
