/*
 * config.h - every broker setting in one table: name, type, bounds, default, help.
 *
 * Settings come from the defaults, then a YAML config file (--config FILE, a flat mapping whose
 * keys are the setting names), then command-line flags (--NAME with '_' written '-'). They are
 * validated once; the rest of the broker sees only a `const brk_config_t *`.
 */
#ifndef BRK_CONFIG_H
#define BRK_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define BRK_MAX_LISTEN 16

typedef struct brk_config {
    char *listen[BRK_MAX_LISTEN]; /* URIs: tcp://HOST:PORT, ipc://PATH */
    size_t nlisten;
    char *data;      /* data directory, created if missing */
    char *log_level; /* error, warn, info, debug */
    int insecure_plain_identities;
    int insecure_remote_plain; /* allow a plain listener on a non-loopback address */
    uint64_t default_deadline_ms;
    uint64_t max_deadline_ms;
    uint64_t heartbeat_ms;
    uint64_t heartbeat_timeout_ms;
    uint64_t max_payload;
    uint64_t shutdown_grace_ms;
    uint64_t max_calls_in_flight;
    uint64_t io_threads;
    char *tls_cert; /* PEM: the broker's certificate (chain may follow) */
    char *tls_key;
    char *tls_ca;  /* PEM: the CA certificates that issue participant certificates */
    char *tls_crl; /* PEM: CRLs, checked for the leaf and every intermediate */
    int tls12;     /* also TLS 1.2 (BSI TR-02102-2 ECDHE + AES-GCM suites only) */
    uint64_t tls_handshake_timeout_ms;
    uint64_t tls_idle_timeout_ms;
    uint64_t max_connections;
    uint64_t max_connections_per_participant;
    uint64_t max_calls_per_participant;
    uint64_t rate_limit; /* requests per second per participant; 0: none */
    uint64_t rate_burst;
    uint64_t max_pending_bytes;
    char *policy;    /* access policy file (YAML); NULL: everything allowed */
    char *audit_dir; /* audit log directory; NULL: no audit log */
    uint64_t audit_max_file_bytes;
    int audit_background;         /* answers do not wait for the audit fsync */
    uint64_t audit_background_ms; /* then: at most one write + fsync per this many ms */
    char *metrics;                /* HOST:PORT of the metrics and health endpoint; NULL: none */
    uint64_t message_ttl_ms;
    uint64_t max_message_ttl_ms;
    uint64_t max_deliveries;
    uint64_t ack_timeout_ms;
    uint64_t dedup_window_ms;
    uint64_t mailbox_max_messages;
    uint64_t mailbox_max_bytes;
    uint64_t max_credit;
    uint64_t event_retention_ms;
    uint64_t event_retention_bytes;
    uint64_t cache_bytes;
    uint64_t min_free_bytes;
    uint64_t store_cache_bytes;
    char *export_dir;                     /* --export DIR: write the store's contents and exit */
    char *require_schema[BRK_MAX_LISTEN]; /* service patterns that need a registered interface */
    size_t nrequire_schema;
} brk_config_t;

/*
 * Fills `cfg` from defaults, the config file named by --config (if any) and the flags.
 * Returns 0, 1 when --help or --version was handled (exit 0), or -1 after writing a message that
 * names the flag, file, line and column at fault to `err` (exit 2).
 */
int brk_config_load(brk_config_t *cfg, int argc, char **argv, FILE *err);

/* Frees what brk_config_load() allocated; safe on a zeroed or freed config. */
void brk_config_free(brk_config_t *cfg);

/* Writes the usage text, generated from the settings table, to `out`. */
void brk_config_usage(FILE *out);

#endif
