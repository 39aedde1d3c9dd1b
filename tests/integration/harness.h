/*
 * harness.h - starts the real amtsbote-broker (and the CLI) for integration tests, on loopback
 * with ports chosen at run time, and stops them by PID. Every wait is bounded.
 */
#ifndef AB_HARNESS_H
#define AB_HARNESS_H

#include <stddef.h>
#include <sys/types.h>

#include "amtsbote.h"

typedef struct {
    pid_t pid;
    char dir[128];  /* temporary directory with data/ and broker.log */
    char tcp[128];  /* tcp://127.0.0.1:PORT the broker listens on */
    char ipc[256];  /* ipc://DIR/broker.sock */
    int out_fd;     /* the broker's stdout */
} h_broker_t;

/*
 * Starts the broker with a tcp and an ipc listener, --insecure-plain-identities unless `secure`,
 * plus the NULL-terminated `extra` flags; waits for "ready". Returns 0 or -1.
 */
int h_broker_start(h_broker_t *b, int secure, const char *const *extra);

/* Sends `sig`, waits up to `timeout_ms`; returns the exit status, or -1 (then it is killed). */
int h_broker_stop(h_broker_t *b, int sig, int timeout_ms);

/* Non-zero when the broker's log contains `needle`. */
int h_broker_log_has(const h_broker_t *b, const char *needle);

/* Spawns argv with stdout on a pipe (*out_fd) and stderr to `errfile` (may be NULL). */
pid_t h_spawn(const char *const *argv, int *out_fd, const char *errfile);

/* Reads lines from fd until one starts with `prefix`; returns 0 or -1 after `timeout_ms`. */
int h_wait_line(int fd, const char *prefix, int timeout_ms);

/* Waits for pid up to timeout_ms; returns its exit status, 128+signal, or -1 on time-out. */
int h_wait_pid(pid_t pid, int timeout_ms);

/* A client connected to `uri` as `participant`, or NULL (the test fails). */
ab_client_t *h_client(const char *uri, const char *participant);

/* Milliseconds, monotonic. */
long long h_now_ms(void);

#define H_CLI_BIN AB_CLI_BIN
#define H_BROKER_BIN AB_BROKER_BIN

#endif
