/*
 * audit_cli.c - `amtsbote audit verify|query`: reads an audit log directory offline (no broker).
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audit.h"
#include "cli.h"

#define EXIT_TAMPERED 9

static const char *s_audit_usage =
    "Usage: amtsbote audit COMMAND\n"
    "\n"
    "  audit verify DIR [--cert BROKER_CERT]\n"
    "      Checks the broker's audit log in DIR: every record's hash, the chain across\n"
    "      files, no gap in the sequence, and a seal at the end of every file but the newest;\n"
    "      with --cert, every seal's signature against the broker's certificate. Prints\n"
    "      'intact: N records ...' (exit 0), or the first problem with its file and line,\n"
    "      e.g. 'changed: audit-000002.log:3: ...' (exit 9).\n"
    "  audit query DIR --participant P [--since TIME] [--purpose TEXT]\n"
    "      Lists the records whose sender or target is P, one line each (for transparency\n"
    "      requests), optionally from TIME on (RFC 3339, e.g. 2025-01-31T00:00:00Z, or ms since\n"
    "      the epoch) and only with purpose TEXT. Payloads are never in the log.\n";

/* Milliseconds since the epoch from digits or RFC 3339. 0 or -1. */
static int
s_parse_time(const char *s, uint64_t *ms)
{
    char *end;
    if (isdigit((unsigned char)s[0])) {
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (*end == '\0' && errno == 0) {
            *ms = v;
            return 0;
        }
    }
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int consumed = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &consumed) != 6 ||
        consumed != 19)
        return -1;
    const char *p = s + consumed;
    unsigned frac_ms = 0;
    if (*p == '.') {
        unsigned scale = 100;
        for (p++; isdigit((unsigned char)*p); p++) {
            frac_ms += (unsigned)(*p - '0') * scale;
            scale /= 10;
        }
    }
    long offset = 0;
    if (*p == 'Z' || *p == 'z')
        p++;
    else if (*p == '+' || *p == '-') {
        int hh, mm, n = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &hh, &mm, &n) != 2 || n != 5)
            return -1;
        offset = (hh * 60L + mm) * 60L * (*p == '-' ? -1 : 1);
        p += 6;
    } else
        return -1;
    if (*p != '\0')
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    if (t == (time_t)-1 || t - offset < 0)
        return -1;
    *ms = (uint64_t)(t - offset) * 1000u + frac_ms;
    return 0;
}

/* Prints s with control characters replaced, so that a record cannot forge output lines. */
static void
s_put_safe(const char *s)
{
    for (; *s; s++)
        putchar((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s);
}

static int
s_print(const ab_audit_entry_t *e, void *arg)
{
    (void)arg;
    time_t t = (time_t)(e->time_ms / 1000u);
    struct tm tm;
    char when[32];
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    printf("%s.%03uZ %s ", when, (unsigned)(e->time_ms % 1000u), e->kind);
    s_put_safe(e->sender);
    fputs(" -> ", stdout);
    s_put_safe(e->target);
    fputs(" purpose=\"", stdout);
    s_put_safe(e->purpose);
    fputs("\" class=", stdout);
    s_put_safe(e->classification);
    fputs(" outcome=", stdout);
    s_put_safe(e->outcome);
    printf(" id=%s payload_sha256=%s seq=%" PRIu64 "\n", e->id,
           *e->payload_sha256 ? e->payload_sha256 : "-", e->seq);
    return 0;
}

static int
s_verify(int argc, char **argv)
{
    const char *dir = NULL, *cert = NULL, *val;
    for (int i = 0; i < argc; i++) {
        int m;
        if ((m = cli_opt(argc, argv, &i, "--cert", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("--cert needs the broker's certificate file");
            cert = val;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0')
            return cli_usage_error("audit verify: unknown option '%s'", argv[i]);
        else if (!dir)
            dir = argv[i];
        else
            return cli_usage_error("audit verify takes one directory");
    }
    if (!dir)
        return cli_usage_error("audit verify needs the log directory");
    ab_audit_report_t r;
    int rc = ab_audit_verify(dir, cert, &r);
    if (rc != 0) {
        fprintf(stderr, "amtsbote: %s: %s\n", ab_err_name(rc), r.detail);
        return EXIT_OTHER;
    }
    if (r.problem == AB_AUDIT_INTACT) {
        printf("intact: %s\n", r.detail);
        return EXIT_OK;
    }
    if (r.line)
        printf("%s: %s:%zu: %s\n", ab_audit_problem_name(r.problem), r.file, r.line, r.detail);
    else
        printf("%s: %s: %s\n", ab_audit_problem_name(r.problem), r.file, r.detail);
    printf("checked %" PRIu64 " lines before it\n", r.lines);
    return EXIT_TAMPERED;
}

static int
s_query(int argc, char **argv)
{
    const char *dir = NULL, *participant = NULL, *purpose = NULL, *val;
    uint64_t since = 0;
    for (int i = 0; i < argc; i++) {
        int m;
        if ((m = cli_opt(argc, argv, &i, "--participant", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("--participant needs a participant address");
            participant = val;
        } else if ((m = cli_opt(argc, argv, &i, "--purpose", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("--purpose needs a text");
            purpose = val;
        } else if ((m = cli_opt(argc, argv, &i, "--since", &val)) != 0) {
            if (m < 0 || s_parse_time(val, &since) != 0)
                return cli_usage_error("--since needs RFC 3339 (2025-01-31T00:00:00Z) or ms");
        } else if (argv[i][0] == '-' && argv[i][1] != '\0')
            return cli_usage_error("audit query: unknown option '%s'", argv[i]);
        else if (!dir)
            dir = argv[i];
        else
            return cli_usage_error("audit query takes one directory");
    }
    if (!dir || !participant)
        return cli_usage_error("audit query needs the log directory and --participant");
    char err[512] = "";
    int rc = ab_audit_query(dir, participant, since, purpose, s_print, NULL, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "amtsbote: %s: %s\n", ab_err_name(rc), err);
        return EXIT_OTHER;
    }
    return EXIT_OK;
}

int
cli_cmd_audit(const opts_t *opts, int argc, char **argv)
{
    (void)opts;
    if (argc < 1)
        return cli_usage_error("audit needs a command: verify or query");
    if (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "help") == 0) {
        fputs(s_audit_usage, stdout);
        return EXIT_OK;
    }
    if (strcmp(argv[0], "verify") == 0)
        return s_verify(argc - 1, argv + 1);
    if (strcmp(argv[0], "query") == 0)
        return s_query(argc - 1, argv + 1);
    return cli_usage_error("unknown audit command '%s'; commands are verify and query", argv[0]);
}
