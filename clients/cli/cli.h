/*
 * cli.h - what the `amtsbote` command's source files share: options, exit codes, helpers.
 */
#ifndef AB_CLI_H
#define AB_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "amtsbote.h"
#include "schema.h"

enum {
    EXIT_OK = 0,
    EXIT_OTHER = 1,
    EXIT_USAGE = 2,
    EXIT_UNAVAILABLE = 3,
    EXIT_UNKNOWN_SERVICE = 4,
    EXIT_DEADLINE = 5,
    EXIT_PROVIDER_GONE = 6,
    EXIT_PROVIDER_ERROR = 7,
    EXIT_MALFORMED = 8,
    EXIT_FORBIDDEN = 9,
    EXIT_MAILBOX_FULL = 10,
    EXIT_RATE_LIMITED = 11,
};

#define AB_CLI_MAX_INPUT (64u * 1024u * 1024u) /* request read from --file or stdin */

typedef struct {
    const char *broker;
    const char *as;
    int as_given; /* --as on the command line, not only $AMTSBOTE_AS */
    int timeout_ms;
    int verbose;
    /* mutual TLS, for a tls:// broker */
    const char *cert, *key, *key_pass_file, *ca, *crl;
    int tls_given; /* one of them on the command line */
} opts_t;

/* Prints `amtsbote: MESSAGE` and a hint to stderr; returns EXIT_USAGE. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The exit code for an AB_E* error. */
int cli_exit_code(int err);

/* Prints `amtsbote: NAME: text` (the client's last error) and returns the exit code for err. */
int cli_report(const ab_client_t *client, int err);

/* Matches option `name` at argv[*i] ("--name VALUE" or "--name=VALUE"): 1 and *val set, 0 for
 * another option, -1 when the value is missing. */
int cli_opt(int argc, char **argv, int *i, const char *name, const char **val);

/* Reads all of fd (at most AB_CLI_MAX_INPUT bytes) into a new buffer. 0, or -1 with errno
 * (EFBIG: too large). */
int cli_read_all(int fd, uint8_t **data, size_t *len);

/* Creates and connects a client as opts say. Returns 0 or an exit code (error printed). */
int cli_connect(const opts_t *opts, ab_client_t **client_p);

/* `amtsbote schema ...` (schema_cli.c). */
int cli_cmd_schema(const opts_t *opts, int argc, char **argv);

/* `amtsbote policy check|explain` (policy_cli.c): offline, no broker. */
int cli_cmd_policy(const opts_t *opts, int argc, char **argv);

/* `amtsbote audit verify|query` (audit_cli.c): reads a log directory offline. */
int cli_cmd_audit(const opts_t *opts, int argc, char **argv);

/* `amtsbote send|inbox|status|publish|subscribe|unsubscribe` (mailbox_cli.c). */
int cli_cmd_send(const opts_t *opts, int argc, char **argv);
int cli_cmd_inbox(const opts_t *opts, int argc, char **argv);
int cli_cmd_status(const opts_t *opts, int argc, char **argv);
int cli_cmd_publish(const opts_t *opts, int argc, char **argv);
int cli_cmd_subscribe(const opts_t *opts, int argc, char **argv);
int cli_cmd_unsubscribe(const opts_t *opts, int argc, char **argv);

/* ---- mailbox_args.c: parsing and formatting without a broker ---- */

/* Parses a duration "<digits><unit>", unit ms, s, m, h or d (90s, 10m, 7d), of at most max_ms.
 * Returns 0 with *ms set, or -1. */
int cli_parse_duration(const char *s, uint64_t max_ms, uint64_t *ms);

/* Parses a message id: exactly 32 hex digits. Returns 0 or -1. */
int cli_parse_message_id(const char *s, uint8_t out[16]);

/* Parses a decimal number from min to max. Returns 0 or -1. */
int cli_parse_count(const char *s, uint32_t min, uint32_t max, uint32_t *out);

/* Unix milliseconds as ISO 8601 UTC with milliseconds: 2026-11-27T17:54:20.123Z. */
void cli_iso_time(uint64_t ms, char *buf, size_t cap);

/* `len` bytes as standard base64 in a new string (free()), or NULL when out of memory. */
char *cli_base64(const void *data, size_t len);

/* Fetches the registered descriptor set that defines `name` (a service, SERVICE/METHOD, a
 * message or a file): 0 with the set (caller destroys it), 1 when nothing registered defines
 * it, or an exit code (error printed). */
int cli_fetch_set(const opts_t *opts, ab_client_t *client, const char *name, ab_schema_set_t **set);

/* The method `pkg.Service/Method` in `set`, or NULL. */
const ProtobufCMethodDescriptor *cli_find_method(const ab_schema_set_t *set, const char *method);

/* Fetches the registered interface of `method` (pkg.Service/Method) from the broker: 0 with the
 * loaded set (caller destroys it) and the method, 1 when no registered file defines the
 * service, or an exit code (error printed). */
int cli_fetch_method(const opts_t *opts, ab_client_t *client, const char *method,
                     ab_schema_set_t **set, const ProtobufCMethodDescriptor **m);

#endif
