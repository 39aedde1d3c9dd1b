/*
 * bench_util.c - the helpers the load generators in bench/ share; see bench_util.h.
 */
#include "bench_util.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- time and CPU ---------------------------------------------------------------------------- */

uint64_t
bu_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double
bu_cpu_self_us(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -1;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* Reads up to cap - 1 bytes of /proc/PID/<file> into buf, NUL-terminated. Returns 0, or -1 when
 * the file cannot be opened. */
static int
s_proc_read(pid_t pid, const char *file, char *buf, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, file);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = 0;
    return 0;
}

double
bu_cpu_pid_us(pid_t pid)
{
    char buf[1024];
    if (s_proc_read(pid, "stat", buf, sizeof buf) != 0)
        return -1;
    const char *p = strrchr(buf, ')'); /* the command name may contain spaces */
    unsigned long long ut, st;
    if (!p ||
        sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) * 1e6 / (double)sysconf(_SC_CLK_TCK);
}

double
bu_cpu_pids_us(const pid_t *pids, int n)
{
    double sum = 0;
    for (int i = 0; i < n; i++) {
        double v = bu_cpu_pid_us(pids[i]);
        if (v < 0)
            return -1;
        sum += v;
    }
    return sum;
}

long
bu_rss_kib(pid_t pid)
{
    char buf[8192]; /* VmRSS comes about 1 KiB into the file, never first */
    if (s_proc_read(pid, "status", buf, sizeof buf) != 0)
        return -1;
    const char *line = strstr(buf, "\nVmRSS:");
    long v;
    if (!line || sscanf(line + 1, "VmRSS: %ld kB", &v) != 1)
        return -1;
    return v;
}

double
bu_cpu_per(double before, double after, long count)
{
    return before < 0 || after < 0 || count == 0 ? -1 : (after - before) / (double)count;
}

/* ---- latencies ------------------------------------------------------------------------------- */

static int
s_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

void
bu_sort_u64(uint64_t *v, long n)
{
    if (n > 0)
        qsort(v, (size_t)n, sizeof *v, s_cmp_u64);
}

double
bu_pct_us(const uint64_t *v, long n, double p)
{
    if (n == 0)
        return 0;
    long k = (long)ceil(p * (double)n) - 1;
    if (k < 0)
        k = 0;
    if (k >= n)
        k = n - 1;
    return (double)v[k] / 1000.0;
}

static int
s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double
bu_median(double *v, long n)
{
    if (n <= 0)
        return 0;
    qsort(v, (size_t)n, sizeof *v, s_cmp_double);
    return v[(n - 1) / 2];
}

double
bu_rate(double count, double seconds)
{
    return seconds > 0 ? count / seconds : 0.0;
}

/* ---- payloads -------------------------------------------------------------------------------- */

void
bu_fill_pattern(unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)('a' + i % 26);
}

void
bu_put32(void *p, uint32_t v)
{
    memcpy(p, &v, sizeof v);
}

uint32_t
bu_get32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

void
bu_put64(void *p, uint64_t v)
{
    memcpy(p, &v, sizeof v);
}

uint64_t
bu_get64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* ---- the command line and signals ------------------------------------------------------------ */

int
bu_parse_long(const char *prog, const char *arg, const char *name, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (errno || *end || end == arg || v < lo || v > hi) {
        fprintf(stderr, "%s: %s must be an integer in [%ld, %ld], not '%s'\n", prog, name, lo, hi,
                arg);
        return -1;
    }
    *out = v;
    return 0;
}

int
bu_parse_seconds(const char *prog, const char *arg, double *out)
{
    char *end;
    double v = strtod(arg, &end);
    if (*end || end == arg || !(v > 0 && v <= 600)) {
        fprintf(stderr, "%s: --seconds must be in (0, 600], not '%s'\n", prog, arg);
        return -1;
    }
    *out = v;
    return 0;
}

static volatile sig_atomic_t s_stop;
static const char *s_alarm_msg;
static size_t s_alarm_len;

static void
s_on_stop(int sig)
{
    (void)sig;
    s_stop = 1;
}

static void
s_on_alarm(int sig)
{
    (void)sig;
    (void)!write(2, s_alarm_msg, s_alarm_len);
    _exit(1);
}

/* Installs `handler` for `sig` with no flags (no SA_RESTART) and an empty mask. */
static void
s_catch(int sig, void (*handler)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

void
bu_signals(void)
{
    s_catch(SIGTERM, s_on_stop);
    s_catch(SIGINT, s_on_stop);
    signal(SIGPIPE, SIG_IGN);
}

int
bu_stopped(void)
{
    return s_stop;
}

void
bu_alarm_exit(const char *msg)
{
    s_alarm_msg = msg;
    s_alarm_len = strlen(msg);
    s_catch(SIGALRM, s_on_alarm);
}

/* ---- helper children ------------------------------------------------------------------------- */

pid_t
bu_spawn(const bu_child_t *c, int *ctl)
{
    int ready[2], ctlp[2];
    if (pipe(ready) != 0 || pipe(ctlp) != 0) {
        fprintf(stderr, "%s: pipe: %s\n", c->prog, strerror(errno));
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "%s: fork: %s\n", c->prog, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        close(ready[0]);
        close(ctlp[1]);
        for (int i = 0; i < c->nclose; i++)
            close(c->close_fds[i]);
        alarm(c->alarm_s);
        _exit(c->run(c->arg, ready[1], ctlp[0]));
    }
    close(ready[1]);
    close(ctlp[0]);
    *ctl = ctlp[1];
    struct pollfd p = {ready[0], POLLIN, 0};
    char ch = 0;
    int ok = poll(&p, 1, c->ready_ms) == 1 && read(ready[0], &ch, 1) == 1 && ch == 'R';
    close(ready[0]);
    if (!ok) {
        fprintf(stderr, "%s: the %s did not get ready\n", c->prog, c->what);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(*ctl);
        return -1;
    }
    return pid;
}

void
bu_reap(const char *prog, const pid_t *pids, const int *ctls, int n)
{
    for (int i = 0; i < n; i++)
        close(ctls[i]);
    /* 300 naps of 10 ms shared by all: the children exit together, so waiting for them one after
     * the other takes no longer than looking at all of them in turn */
    int naps = 0;
    for (int i = 0; i < n; i++) {
        while (waitpid(pids[i], NULL, WNOHANG) != pids[i]) {
            if (naps >= 300) {
                fprintf(stderr, "%s: child %d did not exit; killing it\n", prog, (int)pids[i]);
                kill(pids[i], SIGKILL);
                waitpid(pids[i], NULL, 0);
                break;
            }
            naps++;
            usleep(10000);
        }
    }
}

/* ---- the result line ------------------------------------------------------------------------- */

void
bu_print_result(const bu_result_t *r)
{
    printf("result system=%s scenario=%s size=%zu inflight=%d msgs=%ld seconds=%.3f rate=%.0f "
           "p50_us=%.1f p99_us=%.1f p999_us=%.1f errors=%ld sent=%ld cpu_client_us=%.2f "
           "cpu_server_us=%.2f",
           r->system, r->scenario, r->size, r->inflight, r->msgs, r->seconds,
           bu_rate((double)r->msgs, r->seconds), bu_pct_us(r->lat, r->nlat, 0.50),
           bu_pct_us(r->lat, r->nlat, 0.99), bu_pct_us(r->lat, r->nlat, 0.999), r->errors, r->sent,
           r->cpu_client_us, r->cpu_server_us);
}
