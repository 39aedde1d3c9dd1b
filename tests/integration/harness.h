/*
 * harness.h - starts the real amtsbote-broker (and the CLI) for integration tests, on loopback
 * with ports chosen at run time, and stops them by PID. Every wait is bounded.
 */
#ifndef AB_HARNESS_H
#define AB_HARNESS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/types.h>

#include "amtsbote.h"

typedef struct {
    pid_t pid;
    char dir[128]; /* temporary directory with data/ and broker.log */
    char tcp[128]; /* tcp://127.0.0.1:PORT the broker listens on (plain, for bad-input tests) */
    char tls[128]; /* tls://127.0.0.1:PORT: mutual TLS, the way participants connect */
    char ipc[256]; /* ipc://DIR/broker.sock */
    int out_fd;    /* the broker's stdout */
} h_broker_t;

/*
 * Starts the broker with a tls, a tcp and an ipc listener (certificates from h_pki()),
 * --insecure-plain-identities unless `secure`, plus the NULL-terminated `extra` flags; waits for
 * "ready". Returns 0 or -1.
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

/*
 * The test process's development PKI (certs/pki.sh), made on first use and removed at exit;
 * h_pki_cert() issues a participant's certificate on first use (thread-safe). Both return the
 * directory, or NULL when pki.sh failed.
 */
const char *h_pki(void);
const char *h_pki_cert(const char *participant);

/*
 * A client connected to `uri` as `participant`: over tls:// with the participant's certificate,
 * on a plain listener by name. NULL when that fails (the reason is printed).
 */
ab_client_t *h_client(const char *uri, const char *participant);

/*
 * A provider on a thread of its own with its own client. Modes: 0 answers "PARTICIPANT:request",
 * 1 holds every request and answers "late" only when stopped, 2 answers after delay_ms.
 */
typedef struct {
    const char *uri;
    const char *participant;
    const char *service;
    int mode; /* 0 echo with a prefix, 1 never answer (hold), 2 answer after delay_ms */
    int delay_ms;
    atomic_int stop;
    atomic_int ready;
    atomic_int served;
    atomic_int received; /* mode 1: requests held so far */
    pthread_t thread;
    ab_request_t *held[64];
    int nheld;
    char last_caller[128];
    char last_purpose[128];
} h_provider_t;

/* Starts a provider offering `service`; returns 0 once the offer is accepted, or -1. */
int h_provider_start(h_provider_t *p, const char *uri, const char *participant, const char *service,
                     int mode);
/* Stops the provider's thread and destroys its client. */
void h_provider_stop(h_provider_t *p);

/* Milliseconds, monotonic. */
long long h_now_ms(void);

#define H_CLI_BIN AB_CLI_BIN
#define H_BROKER_BIN AB_BROKER_BIN

#endif
