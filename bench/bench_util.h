/*
 * bench_util.h - what the load generators in bench/ (bench_calls, bench_flood, bench_flow,
 * bench_idle, bench_nats, bench_mqtt, bench_amqp, bench_schema) share: the monotonic clock, CPU
 * time of this process and of others (from /proc), nearest-rank percentiles of a latency array,
 * the median of a few values, the payload pattern and the stamps in it, strict option parsing,
 * the signals every run reacts to, helper children that say when they are ready, and the fields
 * every peer-comparison result line starts with.
 *
 * This module allocates nothing. Its only state is what its signal handlers need, which can reach
 * nothing else: the flag SIGTERM and SIGINT set and the text SIGALRM prints. It needs only libc and
 * libm. Functions that can fail say so on stderr, prefixed with the `prog` they are given
 * ("bench_nats: ..."), so that each message reads as the load generator's own; the rest print
 * nothing.
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- time and CPU ---------------------------------------------------------------------------- */

/* CLOCK_MONOTONIC in nanoseconds. Cannot fail (the monotonic clock always exists on Linux). */
uint64_t bu_now_ns(void);

/* CPU time (user + system, all threads) of this process in microseconds; -1 when getrusage()
 * fails. */
double bu_cpu_self_us(void);

/* CPU time (user + system, all threads) of process `pid` from /proc/PID/stat in microseconds; -1
 * when the file cannot be read or parsed (the process is gone, or not ours to read). */
double bu_cpu_pid_us(pid_t pid);

/* The sum of bu_cpu_pid_us() over pids[0..n); 0 for none, -1 when any of them cannot be read. */
double bu_cpu_pids_us(const pid_t *pids, int n);

/* The resident memory (VmRSS in /proc/PID/status) of process `pid` in KiB; -1 when it cannot be
 * read (the process is gone, or is a kernel thread). */
long bu_rss_kib(pid_t pid);

/* CPU microseconds per message between the samples `before` and `after`; -1 when either sample is
 * missing (negative) or `count` is 0. */
double bu_cpu_per(double before, double after, long count);

/* ---- latencies ------------------------------------------------------------------------------- */

/* Sorts v[0..n) in ascending order, for bu_pct_us(). Cannot fail. */
void bu_sort_u64(uint64_t *v, long n);

/* The nearest-rank percentile `p` (0.5 for p50, 1 for the largest) of the sorted nanoseconds
 * v[0..n), in microseconds; 0 when n is 0. */
double bu_pct_us(const uint64_t *v, long n, double p);

/* The median of v[0..n) (sorts v in ascending order): the lower of the two middle values for an
 * even n; 0 for none. */
double bu_median(double *v, long n);

/* `count` per second of `seconds`; 0 when `seconds` is not positive. */
double bu_rate(double count, double seconds);

/* ---- payloads -------------------------------------------------------------------------------- */

/* Fills p[0..n) with the pattern every benchmark payload carries ("abc...zab..."). Cannot fail. */
void bu_fill_pattern(unsigned char *p, size_t n);

/* Store and load a stamp in host byte order at any alignment. Cannot fail. */
void bu_put32(void *p, uint32_t v);
uint32_t bu_get32(const void *p);
void bu_put64(void *p, uint64_t v);
uint64_t bu_get64(const void *p);

/* ---- the command line and signals ------------------------------------------------------------ */

/* Parses `arg`, the value of option `name`, as a decimal integer in [lo, hi] into *out. Returns 0,
 * or -1 (and *out unchanged) after saying on stderr which option is wrong and why. */
int bu_parse_long(const char *prog, const char *arg, const char *name, long lo, long hi, long *out);

/* Parses the value of --seconds (the measured window) as a number in (0, 600] into *out. Returns
 * 0, or -1 (and *out unchanged) after saying on stderr what is wrong. */
int bu_parse_seconds(const char *prog, const char *arg, double *out);

/* Makes SIGTERM and SIGINT ask for a stop (bu_stopped() tells) instead of ending the process (the
 * handler is installed without SA_RESTART, so a blocking call returns EINTR) and ignores SIGPIPE.
 * Cannot fail (the signals are valid and catchable). */
void bu_signals(void);

/* Whether SIGTERM or SIGINT has arrived since bu_signals(); 0 before it. Cannot fail. */
int bu_stopped(void);

/* Makes SIGALRM, a run's hard time limit, write `msg` to stderr and end the process with status 1
 * (instead of ending it silently). `msg` must stay valid: a string literal. Cannot fail. */
void bu_alarm_exit(const char *msg);

/* ---- helper children ------------------------------------------------------------------------- */

/*
 * The life of a helper child (an echoing provider, a responder, a subscriber): it writes one byte
 * to `ready_fd`, 'R' once it is ready or 'F' when it failed, and runs until `ctl` reaches
 * end-of-file (the parent closed the control pipe). Returns the child's exit status.
 */
typedef int (*bu_child_fn)(void *arg, int ready_fd, int ctl);

typedef struct {
    const char *prog;     /* this program, for messages */
    const char *what;     /* the child, for "the <what> did not get ready" */
    bu_child_fn run;      /* called in the child with `arg` */
    void *arg;            /* the child gets its own copy of whatever this points to */
    unsigned alarm_s;     /* the child's alarm(): it never outlives its purpose long */
    int ready_ms;         /* how long the parent waits for the child's 'R' */
    const int *close_fds; /* descriptors the child closes first (earlier children's control
                             pipes, so that each child sees only its own pipe close); may be NULL */
    int nclose;
} bu_child_t;

/*
 * Forks the child `c` describes and waits up to c->ready_ms for its 'R'. Returns its pid, with the
 * write end of its control pipe in *ctl (closing it ends the child; bu_reap() does), or -1 after
 * saying why on stderr; a child that did not get ready is killed and reaped first.
 */
pid_t bu_spawn(const bu_child_t *c, int *ctl);

/* Closes the control pipes ctls[0..n) and waits up to 3 s for the children pids[0..n) to exit,
 * then kills the rest with SIGKILL, saying so on stderr, and reaps them. Cannot fail. */
void bu_reap(const char *prog, const pid_t *pids, const int *ctls, int n);

/* ---- the result line ------------------------------------------------------------------------- */

/* The fields a result line of the peer comparison starts with (bench/run.sh reads them), in this
 * order; bench_calls' line (calls=, calls_per_s=) and bench_nats stream's (p50_us=0) differ. */
typedef struct {
    const char *system, *scenario;
    size_t size;          /* payload bytes */
    int inflight;         /* unanswered calls or messages per sender */
    long msgs;            /* received in the window; rate= is msgs per second of it */
    double seconds;       /* the window */
    const uint64_t *lat;  /* latencies in ns, sorted (bu_sort_u64), for p50/p99/p999_us */
    long nlat;            /* how many; 0: the percentiles are 0 */
    long errors, sent;    /* as each load generator defines them */
    double cpu_client_us; /* CPU µs per message, as each load generator measures it */
    double cpu_server_us;
} bu_result_t;

/* Prints "result system=... cpu_server_us=..." on stdout, without a newline: the load generator
 * appends its own fields and the newline. Cannot fail (as printf, whose result it ignores). */
void bu_print_result(const bu_result_t *r);

#endif
