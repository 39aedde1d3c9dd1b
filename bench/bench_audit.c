/*
 * bench_audit.c - records per second into the audit log with group fsync (one flush per
 * --batch records) against one flush per record; also writes logs for tests.
 *
 *   bench_audit DIR [--records N] [--batch B] [--key KEY --cert CERT] [--max-file-bytes N]
 *       Writes N records (default 20000) into the log in DIR, flushing every B (default: runs
 *       B=100 and B=1 into DIR/b100 and DIR/b1 and prints both rates). With --batch, writes
 *       into DIR itself and prints one rate.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "audit.h"

static double
s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
s_run(const char *dir, long n, long batch, const ab_audit_options_t *o)
{
    char err[512];
    ab_audit_t *log = ab_audit_open(dir, o, err, sizeof err);
    if (!log) {
        fprintf(stderr, "bench_audit: %s\n", err);
        return 1;
    }
    static const uint8_t payload[1024];
    char sender[64];
    double t0 = s_now();
    for (long i = 0; i < n; i++) {
        snprintf(sender, sizeof sender, "kommune.0916%04ld", i % 10);
        ab_audit_record_t r = {
            .kind = (ab_audit_kind_t)(i % AB_AUDIT_KIND_COUNT),
            .sender = sender,
            .target = "bund.bmi",
            .purpose = i % 2 ? "BMG §34" : "AO §93",
            .classification = "OFFEN",
            .payload = payload,
            .payload_len = sizeof payload,
            .outcome = i % 5 == 0 ? "FORBIDDEN" : NULL,
        };
        memcpy(r.id, &i, sizeof i);
        if (ab_audit_append(log, &r) != 0 || ((i + 1) % batch == 0 && ab_audit_flush(log) != 0)) {
            fprintf(stderr, "bench_audit: %s\n", ab_audit_error(log));
            ab_audit_close(&log);
            return 1;
        }
    }
    if (ab_audit_flush(log) != 0) {
        fprintf(stderr, "bench_audit: %s\n", ab_audit_error(log));
        ab_audit_close(&log);
        return 1;
    }
    double dt = s_now() - t0;
    ab_audit_close(&log);
    printf("flush every %ld: %ld records in %.3f s = %.0f records/s\n", batch, n, dt,
           (double)n / dt);
    return 0;
}

int
main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_audit DIR [--records N] [--batch B] [--key KEY --cert "
                        "CERT] [--max-file-bytes N]\n");
        return 2;
    }
    const char *dir = argv[1];
    long n = 20000, batch = 0;
    ab_audit_options_t o = {0};
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--records") == 0)
            n = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--batch") == 0)
            batch = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--key") == 0)
            o.key_path = argv[i + 1];
        else if (strcmp(argv[i], "--cert") == 0)
            o.cert_path = argv[i + 1];
        else if (strcmp(argv[i], "--max-file-bytes") == 0)
            o.max_file_bytes = (size_t)atol(argv[i + 1]);
        else {
            fprintf(stderr, "bench_audit: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (n <= 0)
        return 2;
    if (batch > 0)
        return s_run(dir, n, batch, &o);
    /* group fsync (the broker's case: one flush per loop turn) against one fsync per record */
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "bench_audit: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/b100", dir);
    if (s_run(sub, n, 100, &o) != 0)
        return 1;
    snprintf(sub, sizeof sub, "%s/b1", dir);
    return s_run(sub, n / 10 > 0 ? n / 10 : 1, 1, &o);
}
