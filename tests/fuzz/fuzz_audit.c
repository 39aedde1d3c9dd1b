/*
 * The audit log's readers on whatever a disk or an attacker leaves in the directory. The input
 * becomes audit-000001.log (and, split at the first "\n--next-file--\n", audit-000002.log) in a
 * scratch directory; then:
 *
 *   - ab_audit_verify() reports (intact, or the first problem with a file name), never crashes;
 *   - ab_audit_query() reads what it can parse;
 *   - when the log verifies intact and ab_audit_open() continues it, a record appended, flushed
 *     and closed verifies intact again with exactly one record more: the writer's idea of where
 *     the chain stands (zeros after the lines, seals, seq) agrees with the verifier's.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "audit.h"
#include "fuzz_check.h"

#define CHECK AB_FUZZ_CHECK

static char s_dir[64];

static void
s_clear(void)
{
    DIR *d = opendir(s_dir);
    if (!d)
        return;
    struct dirent *e;
    char path[512];
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", s_dir, e->d_name);
        unlink(path);
    }
    closedir(d);
}

static void
s_write(unsigned n, const uint8_t *data, size_t len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/audit-%06u.log", s_dir, n);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot write %s", path);
    if (len)
        CHECK(fwrite(data, 1, len, f) == len, "short write to %s", path);
    fclose(f);
}

static int
s_count(const ab_audit_entry_t *entry, void *arg)
{
    (void)entry;
    (*(size_t *)arg)++;
    return 0;
}

static void
s_remove(void)
{
    s_clear();
    rmdir(s_dir);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(s_dir, sizeof s_dir, "/tmp/amtsbote-fuzz-audit-XXXXXX");
    if (!mkdtemp(s_dir))
        abort();
    atexit(s_remove);
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char sep[] = "\n--next-file--\n";
    s_clear();
    const uint8_t *cut = NULL;
    for (size_t i = 0; size >= sizeof sep - 1 && i <= size - (sizeof sep - 1); i++) {
        if (!memcmp(data + i, sep, sizeof sep - 1)) {
            cut = data + i;
            break;
        }
    }
    if (cut) {
        s_write(1, data, (size_t)(cut - data) + 1); /* the first file keeps its '\n' */
        const uint8_t *rest = cut + sizeof sep - 1;
        s_write(2, rest, size - (size_t)(rest - data));
    } else {
        s_write(1, data, size);
    }

    ab_audit_report_t rep;
    int rc = ab_audit_verify(s_dir, NULL, &rep);
    CHECK(rc == 0, "verify could not read its own scratch directory: %s", rep.detail);
    CHECK(rep.problem == AB_AUDIT_INTACT || rep.file[0] != '\0',
          "a problem (%s) without the file it is in", ab_audit_problem_name(rep.problem));

    size_t seen = 0;
    char err[512];
    (void)ab_audit_query(s_dir, "kommune.09162000", 0, NULL, s_count, &seen, err, sizeof err);

    if (rep.problem != AB_AUDIT_INTACT)
        return 0;
    uint64_t records = rep.records;
    ab_audit_options_t o = {.max_file_bytes = 65536};
    ab_audit_t *log = ab_audit_open(s_dir, &o, err, sizeof err);
    if (!log)
        return 0; /* refused with a reason: a writer may be stricter than the verifier */
    ab_audit_record_t r;
    memset(&r, 0, sizeof r);
    r.kind = AB_AUDIT_CALL;
    r.sender = "bund.bmi";
    r.target = "meldewesen.v1.Melderegister/Meldebescheinigung";
    r.purpose = "BMG §34";
    r.payload = (const uint8_t *)"x";
    r.payload_len = 1;
    CHECK(ab_audit_append(log, &r) == 0, "append failed: %s", ab_audit_error(log));
    CHECK(ab_audit_flush(log) == 0, "flush failed: %s", ab_audit_error(log));
    ab_audit_close(&log);
    rc = ab_audit_verify(s_dir, NULL, &rep);
    CHECK(rc == 0 && rep.problem == AB_AUDIT_INTACT,
          "an intact log continued by the writer no longer verifies: %s %s:%zu: %s",
          ab_audit_problem_name(rep.problem), rep.file, rep.line, rep.detail);
    CHECK(rep.records == records + 1, "%llu records after one was added to %llu",
          (unsigned long long)rep.records, (unsigned long long)records);
    return 0;
}
