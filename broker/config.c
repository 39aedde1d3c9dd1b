/*
 * config.c - the settings table, the YAML config file, the flags.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "log.h"

typedef enum { T_BOOL, T_UINT, T_STRING, T_LIST } s_type_t;

typedef struct {
    const char *name;
    s_type_t type;
    size_t offset;
    const char *def; /* default as text; NULL for none */
    uint64_t min, max;
    const char *arg; /* metavariable in --help */
    const char *help;
} s_setting_t;

#define OFF(f) offsetof(brk_config_t, f)

static const s_setting_t s_settings[] = {
    /* a T_LIST's `max` is the offset of its count */
    {"listen", T_LIST, OFF(listen), NULL, 0, OFF(nlisten), "URI",
     "listen on tcp://HOST:PORT or ipc://PATH (repeatable; PORT '*' picks a free one)"},
    {"data", T_STRING, OFF(data), NULL, 0, 0, "DIR", "data directory (created if missing, locked)"},
    {"export", T_STRING, OFF(export_dir), NULL, 0, 0, "DIR",
     "with the broker stopped: write every stored message, receipt, subscription and event of "
     "--data to DIR as JSON lines plus payload files (see README, --export), then exit"},
    {"log_level", T_STRING, OFF(log_level), "info", 0, 0, "LEVEL", "error, warn, info or debug"},
    {"insecure_plain_identities", T_BOOL, OFF(insecure_plain_identities), "false", 0, 1, NULL,
     "believe the participant name a client gives on a plain listener (development only)"},
    {"insecure_remote_plain", T_BOOL, OFF(insecure_remote_plain), "false", 0, 1, NULL,
     "allow a plain tcp:// listener on a non-loopback address"},
    {"default_deadline_ms", T_UINT, OFF(default_deadline_ms), "30000", 1, 3600000, "MS",
     "deadline of a call that names none"},
    {"max_deadline_ms", T_UINT, OFF(max_deadline_ms), "300000", 1, 86400000, "MS",
     "longest deadline a call may ask for (longer ones are cut to this)"},
    {"heartbeat_ms", T_UINT, OFF(heartbeat_ms), "1000", 50, 600000, "MS",
     "interval at which providers send heartbeats"},
    {"heartbeat_timeout_ms", T_UINT, OFF(heartbeat_timeout_ms), "3000", 100, 3600000, "MS",
     "a provider silent this long is removed and its calls fail PROVIDER_GONE"},
    {"max_payload", T_UINT, OFF(max_payload), "4194304", 1024, 1073741824, "BYTES",
     "largest payload frame; larger ones get TOO_LARGE, twice as large ones close the "
     "connection before they are read"},
    {"shutdown_grace_ms", T_UINT, OFF(shutdown_grace_ms), "5000", 0, 600000, "MS",
     "on SIGINT/SIGTERM, how long calls in flight may still finish"},
    {"max_calls_in_flight", T_UINT, OFF(max_calls_in_flight), "1000000", 1, 100000000, "N",
     "calls in flight in the whole broker; more get UNAVAILABLE"},
    {"io_threads", T_UINT, OFF(io_threads), "1", 1, 16, "N", "ZeroMQ I/O threads"},
    {"tls_cert", T_STRING, OFF(tls_cert), NULL, 0, 0, "FILE",
     "the broker's certificate (PEM; for tls:// listeners)"},
    {"tls_key", T_STRING, OFF(tls_key), NULL, 0, 0, "FILE", "the broker's private key (PEM)"},
    {"tls_ca", T_STRING, OFF(tls_ca), NULL, 0, 0, "FILE",
     "CA certificates that issue participant certificates (PEM)"},
    {"tls_crl", T_STRING, OFF(tls_crl), NULL, 0, 0, "FILE",
     "certificate revocation lists, checked for the whole chain (PEM)"},
    {"tls12", T_BOOL, OFF(tls12), "false", 0, 1, NULL,
     "also accept TLS 1.2 (ECDHE + AES-GCM suites only); TLS 1.3 only otherwise"},
    {"tls_handshake_timeout_ms", T_UINT, OFF(tls_handshake_timeout_ms), "10000", 100, 600000, "MS",
     "a TLS client that has not completed its handshake by then is cut off"},
    {"tls_idle_timeout_ms", T_UINT, OFF(tls_idle_timeout_ms), "300000", 1000, 86400000, "MS",
     "a TLS session with no traffic either way for this long is closed"},
    {"max_connections", T_UINT, OFF(max_connections), "5000", 1, 1000000, "N",
     "TLS sessions at once; more are refused"},
    {"max_connections_per_participant", T_UINT, OFF(max_connections_per_participant), "1000", 1,
     1000000, "N",
     "TLS sessions of one participant at once; more are refused after the handshake (the "
     "policy's limits: can set it per participant or group)"},
    {"max_calls_per_participant", T_UINT, OFF(max_calls_per_participant), "10000", 1, 100000000,
     "N",
     "calls in flight of one participant; more get RATE_LIMITED (the policy's limits: can set "
     "it per participant or group)"},
    {"rate_limit", T_UINT, OFF(rate_limit), "0", 0, 1000000, "N",
     "requests (CALL, SEND, PUBLISH, SUBSCRIBE, OFFER, WITHDRAW) per second of one participant; "
     "more get RATE_LIMITED. 0: no limit unless the policy's limits: sets one"},
    {"rate_burst", T_UINT, OFF(rate_burst), "0", 0, 1000000, "N",
     "requests one participant may send at once above rate_limit (0: one second's worth)"},
    {"max_pending_bytes", T_UINT, OFF(max_pending_bytes), "4194304", 65536, 1073741824, "BYTES",
     "bytes waiting to be written to one connection: a TLS session is not read further while "
     "this much waits for it or for the broker, and mailbox deliveries to a connection pause "
     "while this much is delivered to it and not acknowledged (credit in bytes)"},
    {"policy", T_STRING, OFF(policy), NULL, 0, 0, "FILE",
     "access policy (YAML): who may call, offer, push schemas; default deny. Without it every "
     "authenticated participant may do everything (development)"},
    {"audit_dir", T_STRING, OFF(audit_dir), NULL, 0, 0, "DIR",
     "write the hash-chained audit log of every decision here (created if missing)"},
    {"audit_max_file_bytes", T_UINT, OFF(audit_max_file_bytes), "67108864", 65536, 17179869184ull,
     "BYTES", "rotate the audit log at this size (the last hash is signed with --tls-key)"},
    {"audit_background", T_BOOL, OFF(audit_background), "false", 0, 1, NULL,
     "answer without waiting for the audit log's fsync (faster; a crash can lose the last "
     "records: answers wait once a write runs 100 ms or 32 MiB wait); by default every answer "
     "waits until its decision is on disk"},
    {"audit_background_ms", T_UINT, OFF(audit_background_ms), "10", 1, 1000, "MS",
     "with audit_background: write and fsync the audit log at most once per MS milliseconds "
     "(each fsync costs the kernel CPU; a crash loses at most the records of the last MS ms and "
     "of a write in progress, which answers wait for once it runs 100 ms)"},
    {"metrics", T_STRING, OFF(metrics), NULL, 0, 0, "HOST:PORT",
     "serve /metrics, /healthz, /readyz and a status page on HOST:PORT (loopback)"},
    {"message_ttl_ms", T_UINT, OFF(message_ttl_ms), "604800000", 1000, 4294967295ull, "MS",
     "how long a message waits in a mailbox when its sender gives no time to live (7 days); "
     "then it expires and its sender gets an EXPIRED receipt"},
    {"max_message_ttl_ms", T_UINT, OFF(max_message_ttl_ms), "2592000000", 1000, 4294967295ull, "MS",
     "the longest time to live a sender may ask for (30 days); more is refused"},
    {"max_deliveries", T_UINT, OFF(max_deliveries), "5", 1, 1000, "N",
     "a message delivered this often without an acknowledgement becomes a dead letter and its "
     "sender gets a FAILED receipt"},
    {"ack_timeout_ms", T_UINT, OFF(ack_timeout_ms), "30000", 100, 86400000, "MS",
     "a delivery not acknowledged within this time is delivered again"},
    {"dedup_window_ms", T_UINT, OFF(dedup_window_ms), "86400000", 0, 31536000000ull, "MS",
     "a SEND that repeats a message id within this time after the first one ended is "
     "accepted again without storing anything (24 h)"},
    {"mailbox_max_messages", T_UINT, OFF(mailbox_max_messages), "100000", 1, 1000000000, "N",
     "messages waiting in one mailbox; more get MAILBOX_FULL"},
    {"mailbox_max_bytes", T_UINT, OFF(mailbox_max_bytes), "1073741824", 1024, 1099511627776ull,
     "BYTES", "payload bytes waiting in one mailbox; more get MAILBOX_FULL"},
    {"max_credit", T_UINT, OFF(max_credit), "10000", 1, 1000000, "N",
     "the most deliveries one connection may hold unacknowledged (CREDIT is capped to it)"},
    {"event_retention_ms", T_UINT, OFF(event_retention_ms), "604800000", 1000, 31536000000ull, "MS",
     "events kept for durable subscriptions are removed after this time even if not "
     "acknowledged (7 days)"},
    {"event_retention_bytes", T_UINT, OFF(event_retention_bytes), "1073741824", 1024,
     1099511627776ull, "BYTES",
     "payload bytes of events kept for durable subscriptions; the oldest go first beyond it"},
    {"store_cache_bytes", T_UINT, OFF(store_cache_bytes), "67108864", 1048576, 17179869184ull,
     "BYTES", "SQLite's page cache for the store (the working set: mailbox tails and indexes)"},
    {"min_free_bytes", T_UINT, OFF(min_free_bytes), "67108864", 0, 1099511627776ull, "BYTES",
     "SEND and PUBLISH get UNAVAILABLE (and /readyz fails) while the data directory's file "
     "system has less free space than this, so that acknowledgements, which also write, can "
     "still drain the mailboxes; 0: only a write that fails stops them"},
    {"cache_bytes", T_UINT, OFF(cache_bytes), "67108864", 0, 17179869184ull, "BYTES",
     "payloads of waiting messages and events kept in memory as well, so that delivering them "
     "does not read the store"},
    {"require_schema", T_LIST, OFF(require_schema), NULL, 0, OFF(nrequire_schema), "PATTERN",
     "services matching PATTERN (pkg.Service, or a prefix ending in '*') need a registered "
     "interface: OFFER and CALL are refused until one is pushed (repeatable)"},
};
#define NSETTINGS (sizeof s_settings / sizeof s_settings[0])

static const s_setting_t *
s_find(const char *name, size_t len)
{
    for (size_t i = 0; i < NSETTINGS; i++)
        if (strlen(s_settings[i].name) == len && strncmp(s_settings[i].name, name, len) == 0)
            return &s_settings[i];
    return NULL;
}

/* Sets one setting from text; `where` names the flag or file:line:col for the message. */
static int
s_set(brk_config_t *cfg, const s_setting_t *s, const char *value, const char *where, FILE *err)
{
    char *base = (char *)cfg + s->offset;
    switch (s->type) {
    case T_BOOL: {
        int v;
        if (!strcmp(value, "true") || !strcmp(value, "yes") || !strcmp(value, "1") ||
            !strcmp(value, "on"))
            v = 1;
        else if (!strcmp(value, "false") || !strcmp(value, "no") || !strcmp(value, "0") ||
                 !strcmp(value, "off"))
            v = 0;
        else {
            fprintf(err, "%s: setting '%s' must be true or false, not '%s'\n", where, s->name,
                    value);
            return -1;
        }
        *(int *)base = v;
        return 0;
    }
    case T_UINT: {
        char *end = NULL;
        errno = 0;
        if (!isdigit((unsigned char)value[0])) {
            fprintf(err, "%s: setting '%s' must be a whole number, not '%s'\n", where, s->name,
                    value);
            return -1;
        }
        unsigned long long v = strtoull(value, &end, 10);
        if (errno || *end) {
            fprintf(err, "%s: setting '%s' must be a whole number, not '%s'\n", where, s->name,
                    value);
            return -1;
        }
        if (v < s->min || v > s->max) {
            fprintf(err, "%s: setting '%s' is %llu; it must lie between %llu and %llu\n", where,
                    s->name, v, (unsigned long long)s->min, (unsigned long long)s->max);
            return -1;
        }
        *(uint64_t *)base = v;
        return 0;
    }
    case T_STRING: {
        char **p = (char **)base;
        free(*p);
        *p = strdup(value);
        return *p ? 0 : -1;
    }
    case T_LIST: {
        size_t *count = (size_t *)((char *)cfg + s->max);
        if (*count >= BRK_MAX_LISTEN) {
            fprintf(err, "%s: at most %d values for %s\n", where, BRK_MAX_LISTEN, s->name);
            return -1;
        }
        char **p = (char **)base;
        p[*count] = strdup(value);
        if (!p[*count])
            return -1;
        (*count)++;
        return 0;
    }
    }
    return -1;
}

/* Reads a flat YAML mapping; `listen` may be a scalar or a sequence of scalars. */
static int
s_load_file(brk_config_t *cfg, const char *path, FILE *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(err, "%s: cannot open config file: %s\n", path, strerror(errno));
        return -1;
    }
    yaml_parser_t parser;
    yaml_event_t ev;
    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        fprintf(err, "%s: out of memory\n", path);
        return -1;
    }
    yaml_parser_set_input_file(&parser, f);
    int rc = -1, depth = 0, in_seq = 0;
    const s_setting_t *key = NULL;
    char where[600];
    for (;;) {
        if (!yaml_parser_parse(&parser, &ev)) {
            fprintf(err, "%s:%zu:%zu: %s\n", path, parser.problem_mark.line + 1,
                    parser.problem_mark.column + 1, parser.problem ? parser.problem : "bad YAML");
            goto out;
        }
        snprintf(where, sizeof where, "%s:%zu:%zu", path, ev.start_mark.line + 1,
                 ev.start_mark.column + 1);
        yaml_event_type_t t = ev.type;
        if (t == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (t == YAML_MAPPING_START_EVENT) {
            if (depth != 0 || key) {
                fprintf(err, "%s: nested mappings are not settings\n", where);
                goto bad;
            }
            depth++;
        } else if (t == YAML_MAPPING_END_EVENT) {
            depth--;
        } else if (t == YAML_SEQUENCE_START_EVENT) {
            if (depth != 1) {
                fprintf(err, "%s: the config file must be a mapping of setting: value\n", where);
                goto bad;
            }
            if (!key || key->type != T_LIST || in_seq) {
                fprintf(err, "%s: only 'listen' and 'require_schema' take a list\n", where);
                goto bad;
            }
            in_seq = 1;
        } else if (t == YAML_SEQUENCE_END_EVENT) {
            in_seq = 0;
            key = NULL;
        } else if (t == YAML_SCALAR_EVENT) {
            const char *v = (const char *)ev.data.scalar.value;
            if (depth != 1) {
                fprintf(err, "%s: the config file must be a mapping of setting: value\n", where);
                goto bad;
            }
            if (!key) {
                key = s_find(v, strlen(v));
                if (!key) {
                    fprintf(err, "%s: unknown setting '%.100s'\n", where, v);
                    goto bad;
                }
            } else {
                if (s_set(cfg, key, v, where, err) < 0)
                    goto bad;
                if (!in_seq)
                    key = NULL;
            }
        } else if (t == YAML_ALIAS_EVENT) {
            fprintf(err, "%s: aliases are not supported\n", where);
            goto bad;
        }
        yaml_event_delete(&ev);
        continue;
    bad:
        yaml_event_delete(&ev);
        goto out;
    }
    rc = 0;
out:
    yaml_parser_delete(&parser);
    fclose(f);
    return rc;
}

void
brk_config_usage(FILE *out)
{
    fprintf(out, "Usage: amtsbote-broker [--config FILE] [OPTIONS]\n\n"
                 "Amtsbote broker: routes schema-checked protobuf calls between participants.\n\n"
                 "Options (each also a key in the YAML config file, with '_' for '-'):\n");
    fprintf(out, "  --config FILE                       read settings from a YAML file first\n");
    for (size_t i = 0; i < NSETTINGS; i++) {
        const s_setting_t *s = &s_settings[i];
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", s->name);
        for (char *p = flag; *p; p++)
            if (*p == '_')
                *p = '-';
        char left[96];
        snprintf(left, sizeof left, "%s%s%s", flag, s->arg ? " " : "", s->arg ? s->arg : "");
        fprintf(out, "  %-35s %s", left, s->help);
        if (s->def && s->type != T_BOOL)
            fprintf(out, " [%s]", s->def);
        fputc('\n', out);
    }
    fprintf(out, "  --help                              this text\n"
                 "  --version                           the broker's version\n\n"
                 "Examples:\n"
                 "  amtsbote-broker --listen tls://0.0.0.0:7443 --tls-cert broker.crt \\\n"
                 "      --tls-key broker.key --tls-ca ca/chain.pem --tls-crl ca/crl.pem\n"
                 "  amtsbote-broker --listen tcp://127.0.0.1:7450 --insecure-plain-identities\n"
                 "      (development: participants name themselves)\n\n"
                 "SIGINT/SIGTERM stop accepting, let calls in flight finish for "
                 "shutdown_grace_ms, answer the rest UNAVAILABLE and exit 0.\n");
}

static int
s_is_loopback_host(const char *uri)
{
    const char *h = uri + 6; /* after tcp:// */
    return !strncmp(h, "127.", 4) || !strncmp(h, "localhost:", 10) || !strncmp(h, "[::1]:", 6);
}

static int
s_validate(brk_config_t *cfg, FILE *err)
{
    if (cfg->export_dir)
        return 0; /* an export needs only --data; a config file's listeners are not opened */
    if (cfg->nlisten == 0) {
        fprintf(err, "amtsbote-broker: no listener: give --listen URI (e.g. "
                     "--listen tcp://127.0.0.1:7450)\n");
        return -1;
    }
    for (size_t i = 0; i < cfg->nlisten; i++) {
        const char *u = cfg->listen[i];
        if (!strncmp(u, "tcp://", 6)) {
            if (!strchr(u + 6, ':')) {
                fprintf(err, "amtsbote-broker: listener '%s' has no port (tcp://HOST:PORT)\n", u);
                return -1;
            }
            if (!s_is_loopback_host(u) && !cfg->insecure_remote_plain) {
                fprintf(err,
                        "amtsbote-broker: listener '%s' is plain tcp on a non-loopback address; "
                        "that needs --insecure-remote-plain\n",
                        u);
                return -1;
            }
        } else if (!strncmp(u, "ipc://", 6)) {
            if (!u[6]) {
                fprintf(err, "amtsbote-broker: listener '%s' has no path (ipc://PATH)\n", u);
                return -1;
            }
        } else if (!strncmp(u, "tls://", 6)) {
            if (!strchr(u + 6, ':')) {
                fprintf(err, "amtsbote-broker: listener '%s' has no port (tls://HOST:PORT)\n", u);
                return -1;
            }
            if (!cfg->tls_cert || !cfg->tls_key || !cfg->tls_ca) {
                fprintf(err,
                        "amtsbote-broker: listener '%s' needs --tls-cert, --tls-key and "
                        "--tls-ca\n",
                        u);
                return -1;
            }
        } else {
            fprintf(
                err,
                "amtsbote-broker: listener '%s' is not a URI this broker serves (tcp://HOST:PORT "
                "or ipc://PATH)\n",
                u);
            return -1;
        }
    }
    if (brk_log_level_parse(cfg->log_level) < 0) {
        fprintf(err, "amtsbote-broker: log level '%s' is not one of error, warn, info, debug\n",
                cfg->log_level);
        return -1;
    }
    if (cfg->heartbeat_timeout_ms < 2 * cfg->heartbeat_ms) {
        fprintf(err,
                "amtsbote-broker: heartbeat_timeout_ms (%llu) must be at least twice "
                "heartbeat_ms (%llu)\n",
                (unsigned long long)cfg->heartbeat_timeout_ms,
                (unsigned long long)cfg->heartbeat_ms);
        return -1;
    }
    if (cfg->default_deadline_ms > cfg->max_deadline_ms) {
        fprintf(err, "amtsbote-broker: default_deadline_ms exceeds max_deadline_ms\n");
        return -1;
    }
    return 0;
}

int
brk_config_load(brk_config_t *cfg, int argc, char **argv, FILE *err)
{
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < NSETTINGS; i++)
        if (s_settings[i].def && s_set(cfg, &s_settings[i], s_settings[i].def, "default", err))
            return -1;

    /* --help, --version and --config first, so that flags override the file */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            brk_config_usage(stdout);
            return 1;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("amtsbote-broker %s\n", AMTSBOTE_VERSION);
            return 1;
        }
    }
    int listen_flags = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strncmp(a, "--config", 8) && (a[8] == '\0' || a[8] == '=')) {
            const char *path = a[8] == '=' ? a + 9 : (i + 1 < argc ? argv[++i] : NULL);
            if (!path) {
                fprintf(err, "amtsbote-broker: --config needs a FILE\n");
                return -1;
            }
            if (s_load_file(cfg, path, err) < 0)
                return -1;
        } else if (!strncmp(a, "--listen", 8) && (a[8] == '\0' || a[8] == '=')) {
            listen_flags = 1;
        }
    }
    /* listeners on the command line replace those from the file */
    if (listen_flags) {
        for (size_t k = 0; k < cfg->nlisten; k++) {
            free(cfg->listen[k]);
            cfg->listen[k] = NULL;
        }
        cfg->nlisten = 0;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            fprintf(err, "amtsbote-broker: unexpected argument '%s' (see --help)\n", a);
            return -1;
        }
        char name[64];
        const char *eq = strchr(a + 2, '=');
        size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        if (len >= sizeof name) {
            fprintf(err, "amtsbote-broker: unknown option '%s' (see --help)\n", a);
            return -1;
        }
        memcpy(name, a + 2, len);
        name[len] = '\0';
        for (char *p = name; *p; p++)
            if (*p == '-')
                *p = '_';
        if (!strcmp(name, "config")) {
            if (!eq)
                i++;
            continue;
        }
        const s_setting_t *s = s_find(name, len);
        if (!s) {
            fprintf(err, "amtsbote-broker: unknown option '%s' (see --help)\n", a);
            return -1;
        }
        const char *value;
        if (eq)
            value = eq + 1;
        else if (s->type == T_BOOL)
            value = "true";
        else if (i + 1 < argc)
            value = argv[++i];
        else {
            fprintf(err, "amtsbote-broker: option '%s' needs a value (%s)\n", a, s->arg);
            return -1;
        }
        char where[96];
        snprintf(where, sizeof where, "amtsbote-broker: option --%s", a + 2);
        if (eq)
            where[strlen("amtsbote-broker: option --") + len] = '\0';
        if (s_set(cfg, s, value, where, err) < 0)
            return -1;
    }
    return s_validate(cfg, err);
}

void
brk_config_free(brk_config_t *cfg)
{
    for (size_t i = 0; i < cfg->nrequire_schema; i++) {
        free(cfg->require_schema[i]);
        cfg->require_schema[i] = NULL;
    }
    cfg->nrequire_schema = 0;
    for (size_t i = 0; i < cfg->nlisten; i++) {
        free(cfg->listen[i]);
        cfg->listen[i] = NULL;
    }
    cfg->nlisten = 0;
    free(cfg->data);
    cfg->data = NULL;
    free(cfg->log_level);
    cfg->log_level = NULL;
    char **strings[] = {&cfg->tls_cert, &cfg->tls_key,   &cfg->tls_ca,  &cfg->tls_crl,
                        &cfg->policy,   &cfg->audit_dir, &cfg->metrics, &cfg->export_dir};
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) {
        free(*strings[i]);
        *strings[i] = NULL;
    }
}
