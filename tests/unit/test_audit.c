/*
 * Unit tests for common/audit.c: the chain across rotations with signed seals, every kind of
 * tampering named at its file and line, restart (also after a torn line), write failures, and
 * the query filters.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "amtsbote.h"
#include "audit.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    char root[64];
    char dir[128];
    char key[128], cert[128];
    char other_key[128], other_cert[128];
} fx_t;

/* ---- a throwaway EC P-256 key and self-signed certificate ---- */

static void
s_make_pki(const char *key_path, const char *cert_path)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    assert_non_null(k);
    X509 *x = X509_new();
    assert_non_null(x);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, k);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"test broker", -1,
                               -1, 0);
    X509_set_issuer_name(x, name);
    assert_true(X509_sign(x, k, EVP_sha256()) > 0);
    FILE *f = fopen(key_path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
    f = fopen(cert_path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509(f, x), 1);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(k);
}

static int
s_setup(void **state)
{
    fx_t *fx = calloc(1, sizeof *fx);
    snprintf(fx->root, sizeof fx->root, "/tmp/amtsbote-audit-XXXXXX");
    if (!mkdtemp(fx->root))
        return -1;
    snprintf(fx->dir, sizeof fx->dir, "%s/log", fx->root);
    snprintf(fx->key, sizeof fx->key, "%s/broker.key", fx->root);
    snprintf(fx->cert, sizeof fx->cert, "%s/broker.crt", fx->root);
    snprintf(fx->other_key, sizeof fx->other_key, "%s/other.key", fx->root);
    snprintf(fx->other_cert, sizeof fx->other_cert, "%s/other.crt", fx->root);
    s_make_pki(fx->key, fx->cert);
    s_make_pki(fx->other_key, fx->other_cert);
    *state = fx;
    return 0;
}

static int
s_teardown(void **state)
{
    fx_t *fx = *state;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->root);
    if (system(cmd) != 0)
        return -1;
    free(fx);
    return 0;
}

static ab_audit_t *
s_open(const fx_t *fx, size_t max_bytes)
{
    ab_audit_options_t o = {
        .max_file_bytes = max_bytes, .key_path = fx->key, .cert_path = fx->cert};
    char err[512] = "";
    ab_audit_t *log = ab_audit_open(fx->dir, &o, err, sizeof err);
    if (!log)
        fprintf(stderr, "open: %s\n", err);
    return log;
}

static void
s_record(ab_audit_record_t *r, int i)
{
    static char sender[64], target[64];
    static const uint8_t payload[] = "not written";
    memset(r, 0, sizeof *r);
    r->time_ms = 1700000000000ull + (uint64_t)i * 1000u;
    memset(r->id, i & 0xff, sizeof r->id);
    r->kind = (ab_audit_kind_t)(i % AB_AUDIT_KIND_COUNT);
    snprintf(sender, sizeof sender, "kommune.0916%04d", i % 3);
    snprintf(target, sizeof target, "bund.bmi");
    r->sender = sender;
    r->target = target;
    r->purpose = i % 2 ? "BMG §34" : "AO §93";
    r->classification = "OFFEN";
    r->payload = payload;
    r->payload_len = sizeof payload - 1;
    r->outcome = i % 5 == 0 ? "FORBIDDEN" : NULL;
}

/* Writes n records, flushing every 7, into a fresh log that rotates every ~2 KB. */
static void
s_fill(const fx_t *fx, int n)
{
    ab_audit_t *log = s_open(fx, 2000);
    assert_non_null(log);
    for (int i = 0; i < n; i++) {
        ab_audit_record_t r;
        s_record(&r, i);
        assert_int_equal(ab_audit_append(log, &r), 0);
        if (i % 7 == 6)
            assert_int_equal(ab_audit_flush(log), 0);
    }
    assert_int_equal(ab_audit_flush(log), 0);
    assert_int_equal(ab_audit_pending(log), 0);
    ab_audit_close(&log);
    assert_null(log);
    ab_audit_close(&log);
}

static void
s_verify(const fx_t *fx, const char *cert, ab_audit_report_t *r)
{
    assert_int_equal(ab_audit_verify(fx->dir, cert, r), 0);
}

static void
s_expect(const fx_t *fx, ab_audit_problem_t p, const char *file, size_t line)
{
    ab_audit_report_t r;
    s_verify(fx, fx->cert, &r);
    if (r.problem != p || strcmp(r.file, file) != 0 || r.line != line)
        fprintf(stderr, "got %s %s:%zu (%s), want %s %s:%zu\n", ab_audit_problem_name(r.problem),
                r.file, r.line, r.detail, ab_audit_problem_name(p), file, line);
    assert_int_equal(r.problem, p);
    assert_string_equal(r.file, file);
    assert_int_equal(r.line, line);
}

/* ---- editing a file line by line ---- */

typedef struct {
    char *data;
    char *line[4096];
    size_t n;
} lines_t;

static void
s_load(const fx_t *fx, unsigned file_no, lines_t *l)
{
    char path[256];
    snprintf(path, sizeof path, "%s/audit-%06u.log", fx->dir, file_no);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    l->data = malloc((size_t)size + 1);
    assert_int_equal(fread(l->data, 1, (size_t)size, f), (size_t)size);
    l->data[size] = '\0';
    fclose(f);
    l->n = 0;
    for (char *s = l->data; *s;) {
        char *nl = strchr(s, '\n');
        assert_non_null(nl);
        *nl = '\0';
        l->line[l->n++] = s;
        s = nl + 1;
    }
}

static void
s_store(const fx_t *fx, unsigned file_no, lines_t *l)
{
    char path[256];
    snprintf(path, sizeof path, "%s/audit-%06u.log", fx->dir, file_no);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (size_t i = 0; i < l->n; i++)
        fprintf(f, "%s\n", l->line[i]);
    fclose(f);
    free(l->data);
}

/* ---- tests ---- */

static void
test_rotation_intact(void **state)
{
    fx_t *fx = *state;
    s_fill(fx, 200);
    ab_audit_report_t r;
    s_verify(fx, fx->cert, &r);
    assert_int_equal(r.problem, AB_AUDIT_INTACT);
    assert_int_equal(r.records, 200);
    assert_true(r.files >= 4);
    assert_int_equal(r.seals, r.files - 1);
    assert_int_equal(r.lines, 200 + r.seals);
    assert_true(r.signatures_checked);
    /* without a certificate the chain is still checked */
    s_verify(fx, NULL, &r);
    assert_int_equal(r.problem, AB_AUDIT_INTACT);
    assert_false(r.signatures_checked);
    /* the payload is never written, only its hash */
    lines_t l;
    s_load(fx, 1, &l);
    for (size_t i = 0; i < l.n; i++)
        assert_null(strstr(l.line[i], "not written"));
    assert_non_null(strstr(l.line[0], "\"prev\":\"0000000000"));
    assert_non_null(strstr(l.line[l.n - 1], "\"kind\":\"seal\""));
    assert_non_null(strstr(l.line[l.n - 1], "\"alg\":\"ecdsa-sha256\""));
    free(l.data);
    /* the other broker's certificate does not verify the seals */
    s_verify(fx, fx->other_cert, &r);
    assert_int_equal(r.problem, AB_AUDIT_FORGED);
}

static void
test_flipped_byte(void **state)
{
    fx_t *fx = *state;
    s_fill(fx, 100);
    lines_t l;
    s_load(fx, 2, &l);
    char *p = strstr(l.line[2], "kommune.0916");
    assert_non_null(p);
    p[0] = 'K';
    s_store(fx, 2, &l);
    s_expect(fx, AB_AUDIT_CHANGED, "audit-000002.log", 3);
}

static void
test_changed_with_rehash(void **state)
{
    /* a record changed and its own hash recomputed: the next record's prev names it */
    fx_t *fx = *state;
    s_fill(fx, 100);
    lines_t l;
    s_load(fx, 2, &l);
    char *line = l.line[2];
    char *p = strstr(line, "kommune.0916");
    p[0] = 'K';
    char *h = strstr(line, ",\"hash\":\"");
    uint8_t md[32];
    EVP_Digest(line, (size_t)(h - line), md, NULL, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++) {
        char two[3];
        snprintf(two, sizeof two, "%02x", md[i]);
        memcpy(h + 9 + 2 * i, two, 2);
    }
    s_store(fx, 2, &l);
    s_expect(fx, AB_AUDIT_CHANGED, "audit-000002.log", 3);
}

static void
test_deleted_record(void **state)
{
    fx_t *fx = *state;
    s_fill(fx, 100);
    lines_t l;
    s_load(fx, 2, &l);
    memmove(&l.line[2], &l.line[3], (l.n - 3) * sizeof l.line[0]);
    l.n--;
    s_store(fx, 2, &l);
    s_expect(fx, AB_AUDIT_REMOVED, "audit-000002.log", 3);
}

static void
test_swapped_records(void **state)
{
    fx_t *fx = *state;
    s_fill(fx, 100);
    lines_t l;
    s_load(fx, 2, &l);
    char *t = l.line[3];
    l.line[3] = l.line[4];
    l.line[4] = t;
    s_store(fx, 2, &l);
    s_expect(fx, AB_AUDIT_REORDERED, "audit-000002.log", 4);
}

static void
test_truncated_file(void **state)
{
    fx_t *fx = *state;
    s_fill(fx, 100);
    char path[256];
    lines_t l;
    s_load(fx, 2, &l);
    size_t cut = strlen(l.line[0]) + 1 + strlen(l.line[1]) + 1 + 40;
    free(l.data);
    snprintf(path, sizeof path, "%s/audit-000002.log", fx->dir);
    assert_int_equal(truncate(path, (off_t)cut), 0);
    s_expect(fx, AB_AUDIT_TRUNCATED, "audit-000002.log", 3);
    /* cut at a line end: the missing seal says so */
    assert_int_equal(truncate(path, (off_t)(cut - 40)), 0);
    s_expect(fx, AB_AUDIT_TRUNCATED, "audit-000002.log", 3);
}

static void
test_deleted_file(void **state)
{
    fx_t *fx = *state;
    s_fill(fx, 100);
    char path[256];
    snprintf(path, sizeof path, "%s/audit-000002.log", fx->dir);
    assert_int_equal(unlink(path), 0);
    s_expect(fx, AB_AUDIT_FILE_MISSING, "audit-000002.log", 0);
    snprintf(path, sizeof path, "%s/audit-000001.log", fx->dir);
    assert_int_equal(unlink(path), 0);
    s_expect(fx, AB_AUDIT_FILE_MISSING, "audit-000001.log", 0);
}

static void
test_forged_seal(void **state)
{
    /* the seal of file 1 re-signed with another key (and its hash made to fit) */
    fx_t *fx = *state;
    s_fill(fx, 100);
    lines_t l;
    s_load(fx, 1, &l);
    char *seal = l.line[l.n - 1];
    char *sig = strstr(seal, ",\"sig\":\"");
    assert_non_null(sig);
    size_t tbs = (size_t)(sig - seal);
    FILE *f = fopen(fx->other_key, "r");
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    unsigned char s[256];
    size_t slen = sizeof s;
    assert_int_equal(EVP_DigestSignInit(m, NULL, EVP_sha256(), NULL, k), 1);
    assert_int_equal(EVP_DigestSign(m, s, &slen, (unsigned char *)seal, tbs), 1);
    EVP_MD_CTX_free(m);
    EVP_PKEY_free(k);
    char b64[512];
    EVP_EncodeBlock((unsigned char *)b64, s, (int)slen);
    static char forged[2048];
    int n = snprintf(forged, sizeof forged, "%.*s,\"sig\":\"%s\"", (int)tbs, seal, b64);
    uint8_t md[32];
    EVP_Digest(forged, (size_t)n, md, NULL, EVP_sha256(), NULL);
    n += snprintf(forged + n, sizeof forged - (size_t)n, ",\"hash\":\"");
    for (int i = 0; i < 32; i++)
        n += snprintf(forged + n, sizeof forged - (size_t)n, "%02x", md[i]);
    snprintf(forged + n, sizeof forged - (size_t)n, "\"}");
    size_t seal_line = l.n;
    l.line[l.n - 1] = forged;
    s_store(fx, 1, &l);
    s_expect(fx, AB_AUDIT_FORGED, "audit-000001.log", seal_line);
}

static void
test_restart_continues(void **state)
{
    fx_t *fx = *state;
    s_fill(fx, 30);
    ab_audit_t *log = s_open(fx, 2000);
    assert_non_null(log);
    /* a second writer on the same directory is refused */
    char err[512];
    ab_audit_options_t o = {0};
    assert_null(ab_audit_open(fx->dir, &o, err, sizeof err));
    assert_non_null(strstr(err, "another process"));
    for (int i = 30; i < 60; i++) {
        ab_audit_record_t r;
        s_record(&r, i);
        assert_int_equal(ab_audit_append(log, &r), 0);
    }
    assert_int_equal(ab_audit_flush(log), 0);
    ab_audit_close(&log);
    ab_audit_report_t rep;
    s_verify(fx, fx->cert, &rep);
    assert_int_equal(rep.problem, AB_AUDIT_INTACT);
    assert_int_equal(rep.records, 60);

    /* a crash in the middle of a write: the torn line is reported, then cut off at reopen */
    char path[256];
    snprintf(path, sizeof path, "%s/audit-%06u.log", fx->dir, rep.files);
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "{\"v\":1,\"seq\":", 13), 13);
    close(fd);
    s_verify(fx, fx->cert, &rep);
    assert_int_equal(rep.problem, AB_AUDIT_TRUNCATED);
    log = s_open(fx, 2000);
    assert_non_null(log);
    assert_int_equal(ab_audit_pending(log), 1); /* the "recovered" line */
    ab_audit_record_t r;
    s_record(&r, 60);
    assert_int_equal(ab_audit_append(log, &r), 0);
    assert_int_equal(ab_audit_flush(log), 0);
    ab_audit_close(&log);
    s_verify(fx, fx->cert, &rep);
    assert_int_equal(rep.problem, AB_AUDIT_INTACT);
    assert_int_equal(rep.records, 61);

    /* a damaged newest file is not continued */
    lines_t l;
    s_load(fx, rep.files, &l);
    l.line[0][20] ^= 1;
    s_store(fx, rep.files, &l);
    assert_null(ab_audit_open(fx->dir, &o, err, sizeof err));
    assert_non_null(strstr(err, ":1: "));
}

/* The current file is kept ahead of its lines with zeros (a synchronous write into blocks the
 * file owns changes no metadata); readers stop at the zeros, reopen writes over them, a sealed
 * file is cut to its seal, and a write that a crash cut short inside the zeros is recovered. */
static void
test_preallocated(void **state)
{
    fx_t *fx = *state;
    ab_audit_t *log = s_open(fx, 0);
    assert_non_null(log);
    ab_audit_record_t r;
    for (int i = 0; i < 10; i++) {
        s_record(&r, i);
        assert_int_equal(ab_audit_append(log, &r), 0);
    }
    assert_int_equal(ab_audit_flush(log), 0);
    char path[256];
    snprintf(path, sizeof path, "%s/audit-000001.log", fx->dir);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 1024 * 1024); /* the lines and zeros after them */
    ab_audit_close(&log);
    ab_audit_report_t rep;
    s_verify(fx, fx->cert, &rep);
    assert_int_equal(rep.problem, AB_AUDIT_INTACT);
    assert_int_equal(rep.records, 10);

    /* reopen: the next lines go where the zeros begin, the chain goes on */
    log = s_open(fx, 0);
    assert_non_null(log);
    assert_int_equal(ab_audit_pending(log), 0);
    for (int i = 10; i < 15; i++) {
        s_record(&r, i);
        assert_int_equal(ab_audit_append(log, &r), 0);
    }
    assert_int_equal(ab_audit_flush(log), 0);
    ab_audit_close(&log);
    s_verify(fx, fx->cert, &rep);
    assert_int_equal(rep.problem, AB_AUDIT_INTACT);
    assert_int_equal(rep.records, 15);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 1024 * 1024);

    /* a crash during a write: a later block of it reached the disk, the first did not */
    char *data = NULL;
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    data = calloc(1, 1024 * 1024);
    size_t n = fread(data, 1, 1024 * 1024, f);
    fclose(f);
    assert_int_equal(n, 1024 * 1024);
    size_t end = strlen(data); /* the lines end where the zeros begin */
    assert_true(end > 0 && data[end - 1] == '\n');
    free(data);
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "\"outcome\":\"ok\"}\n", 16, (off_t)end + 4096), 16);
    close(fd);
    log = s_open(fx, 0);
    assert_non_null(log);
    assert_int_equal(ab_audit_pending(log), 1); /* the "recovered" line */
    s_record(&r, 15);
    assert_int_equal(ab_audit_append(log, &r), 0);
    assert_int_equal(ab_audit_flush(log), 0);
    ab_audit_close(&log);
    s_verify(fx, fx->cert, &rep);
    assert_int_equal(rep.problem, AB_AUDIT_INTACT);
    assert_int_equal(rep.records, 16);

    /* rotation: the sealed file ends with its seal, no zeros after it */
    log = s_open(fx, 2000);
    assert_non_null(log);
    s_record(&r, 16);
    assert_int_equal(ab_audit_append(log, &r), 0);
    assert_int_equal(ab_audit_flush(log), 0); /* past 2,000 bytes: sealed, file 2 begun */
    ab_audit_close(&log);
    assert_int_equal(stat(path, &st), 0);
    assert_true(st.st_size > 2000 && st.st_size < 1024 * 1024);
    f = fopen(path, "r");
    assert_non_null(f);
    assert_int_equal(fseek(f, -1, SEEK_END), 0);
    assert_int_equal(fgetc(f), '\n');
    fclose(f);
    s_verify(fx, fx->cert, &rep);
    assert_int_equal(rep.problem, AB_AUDIT_INTACT);
    assert_int_equal(rep.records, 17);
    assert_int_equal(rep.seals, 1);
}

static void
test_reopen_after_seal(void **state)
{
    /* rotation made the next file but nothing went into it: reopen continues from the seal */
    fx_t *fx = *state;
    ab_audit_t *log = s_open(fx, 300);
    ab_audit_record_t r;
    s_record(&r, 1);
    assert_int_equal(ab_audit_append(log, &r), 0);
    assert_int_equal(ab_audit_flush(log), 0); /* > 300 bytes: sealed, file 2 created */
    ab_audit_close(&log);
    log = s_open(fx, 300);
    assert_non_null(log);
    s_record(&r, 2);
    assert_int_equal(ab_audit_append(log, &r), 0);
    ab_audit_close(&log); /* close flushes */
    ab_audit_report_t rep;
    s_verify(fx, fx->cert, &rep);
    assert_int_equal(rep.problem, AB_AUDIT_INTACT);
    assert_int_equal(rep.records, 2);
    assert_int_equal(rep.seals, 2);
}

static void
test_write_failure(void **state)
{
    fx_t *fx = *state;
    s_fill(fx, 3);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* the file may not grow past its size + 100 bytes: write() fails with EFBIG */
        signal(SIGXFSZ, SIG_IGN);
        ab_audit_t *log = s_open(fx, 1 << 20);
        if (!log)
            _exit(10);
        struct rlimit rl = {.rlim_cur = 2000, .rlim_max = RLIM_INFINITY};
        setrlimit(RLIMIT_FSIZE, &rl);
        ab_audit_record_t r;
        for (int i = 0; i < 20; i++) {
            s_record(&r, i);
            if (ab_audit_append(log, &r) != 0)
                _exit(11);
        }
        if (ab_audit_flush(log) != AB_EIO)
            _exit(12);
        if (!strstr(ab_audit_error(log), "write failed"))
            _exit(13);
        if (ab_audit_append(log, &r) != AB_EIO || ab_audit_flush(log) != AB_EIO)
            _exit(14);
        ab_audit_close(&log);
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);

    /* rotation cannot create the next file */
    char path[256];
    snprintf(fx->dir, sizeof fx->dir, "%s/log2", fx->root);
    ab_audit_t *log = s_open(fx, 300);
    assert_non_null(log);
    snprintf(path, sizeof path, "%s/audit-000002.log", fx->dir);
    assert_int_equal(mkdir(path, 0700), 0);
    ab_audit_record_t r;
    s_record(&r, 1);
    assert_int_equal(ab_audit_append(log, &r), 0);
    assert_int_equal(ab_audit_flush(log), AB_EIO);
    assert_non_null(strstr(ab_audit_error(log), "audit-000002.log: cannot create"));
    assert_int_equal(ab_audit_append(log, &r), AB_EIO);
    ab_audit_close(&log);
    snprintf(fx->dir, sizeof fx->dir, "%s/log", fx->root);
}

typedef struct {
    int n;
    char last_purpose[64];
    char last_sender[64];
} qres_t;

static int
s_collect(const ab_audit_entry_t *e, void *arg)
{
    qres_t *q = arg;
    q->n++;
    snprintf(q->last_purpose, sizeof q->last_purpose, "%s", e->purpose);
    snprintf(q->last_sender, sizeof q->last_sender, "%s", e->sender);
    return 0;
}

static void
test_query(void **state)
{
    fx_t *fx = *state;
    s_fill(fx, 60); /* senders kommune.09160000..2, target bund.bmi, purposes alternate */
    char err[256];
    qres_t q = {0};
    assert_int_equal(ab_audit_query(fx->dir, "bund.bmi", 0, NULL, s_collect, &q, err, sizeof err),
                     0);
    assert_int_equal(q.n, 60);
    q = (qres_t){0};
    assert_int_equal(
        ab_audit_query(fx->dir, "kommune.09160001", 0, NULL, s_collect, &q, err, sizeof err), 0);
    assert_int_equal(q.n, 20);
    q = (qres_t){0};
    assert_int_equal(
        ab_audit_query(fx->dir, "kommune.09160001", 0, "BMG §34", s_collect, &q, err, sizeof err),
        0);
    assert_int_equal(q.n, 10); /* i = 1 mod 3 and odd */
    assert_string_equal(q.last_purpose, "BMG §34");
    q = (qres_t){0};
    assert_int_equal(ab_audit_query(fx->dir, "bund.bmi", 1700000000000ull + 50000u, NULL, s_collect,
                                    &q, err, sizeof err),
                     0);
    assert_int_equal(q.n, 10);
    q = (qres_t){0};
    assert_int_equal(ab_audit_query(fx->dir, "nobody", 0, NULL, s_collect, &q, err, sizeof err), 0);
    assert_int_equal(q.n, 0);
}

static void
test_escaping(void **state)
{
    /* hostile strings stay inside one line and one field */
    fx_t *fx = *state;
    ab_audit_t *log = s_open(fx, 0);
    ab_audit_record_t r = {.kind = AB_AUDIT_FORBIDDEN,
                           .sender = "evil\",\"target\":\"x\n{\"v\":1}\\",
                           .target = "bund.bmi",
                           .purpose = "bad \xff\xfe utf8 \x01",
                           .outcome = "FORBIDDEN"};
    assert_int_equal(ab_audit_append(log, &r), 0);
    r.kind = AB_AUDIT_KIND_COUNT;
    assert_int_equal(ab_audit_append(log, &r), AB_EINVAL);
    assert_int_equal(ab_audit_flush(log), 0);
    ab_audit_close(&log);
    ab_audit_report_t rep;
    s_verify(fx, fx->cert, &rep);
    assert_int_equal(rep.problem, AB_AUDIT_INTACT);
    assert_int_equal(rep.records, 1);
    assert_int_equal(rep.lines, 1);
    char err[256];
    qres_t q = {0};
    assert_int_equal(ab_audit_query(fx->dir, "bund.bmi", 0, NULL, s_collect, &q, err, sizeof err),
                     0);
    assert_int_equal(q.n, 1);
    assert_string_equal(q.last_sender, "evil\",\"target\":\"x\n{\"v\":1}\\");
    assert_string_equal(q.last_purpose, "bad \xef\xbf\xbd\xef\xbf\xbd utf8 \x01");
}

/* the payload hashes, in the order the records were appended */
typedef struct {
    int n;
    char hash[8][65];
} hres_t;

static int
s_collect_hash(const ab_audit_entry_t *e, void *arg)
{
    hres_t *h = arg;
    if (h->n < 8)
        snprintf(h->hash[h->n++], sizeof h->hash[0], "%s", e->payload_sha256);
    return 0;
}

static void
s_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int n = 0;
    assert_int_equal(EVP_Digest(data, len, md, &n, EVP_sha256(), NULL), 1);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void
test_payload_hashes(void **state)
{
    /* a small payload is copied and hashed by the flush, a large one hashed at once, a given
     * hash taken as it is, no payload written as "" */
    fx_t *fx = *state;
    ab_audit_t *log = s_open(fx, 0);
    assert_non_null(log);
    size_t big_len = 200 * 1024;
    uint8_t *big = malloc(big_len), small[1024], given[32];
    assert_non_null(big);
    for (size_t i = 0; i < big_len; i++)
        big[i] = (uint8_t)(i * 7);
    for (size_t i = 0; i < sizeof small; i++)
        small[i] = (uint8_t)(i * 13);
    memset(given, 0xab, sizeof given);
    char want[4][65];
    s_sha256_hex(small, sizeof small, want[0]);
    s_sha256_hex(big, big_len, want[1]);
    for (int i = 0; i < 32; i++)
        memcpy(want[2] + 2 * i, "ab", 2);
    want[2][64] = '\0';
    want[3][0] = '\0';
    ab_audit_record_t r = {.kind = AB_AUDIT_CALL, .sender = "a", .target = "b"};
    r.payload = small;
    r.payload_len = sizeof small;
    assert_int_equal(ab_audit_append(log, &r), 0);
    memset(small, 0, sizeof small); /* the caller's buffer is free again after append */
    r.payload = big;
    r.payload_len = big_len;
    assert_int_equal(ab_audit_append(log, &r), 0);
    memset(big, 0, big_len);
    r.payload = small; /* ignored: the hash is given */
    r.payload_sha256 = given;
    assert_int_equal(ab_audit_append(log, &r), 0);
    r.payload = NULL;
    r.payload_sha256 = NULL;
    r.payload_len = 0;
    assert_int_equal(ab_audit_append(log, &r), 0);
    assert_int_equal(ab_audit_flush(log), 0);
    ab_audit_close(&log);
    free(big);
    hres_t h = {0};
    char err[256];
    assert_int_equal(ab_audit_query(fx->dir, "a", 0, NULL, s_collect_hash, &h, err, sizeof err), 0);
    assert_int_equal(h.n, 4);
    for (int i = 0; i < 4; i++)
        assert_string_equal(h.hash[i], want[i]);
    ab_audit_report_t rep;
    s_verify(fx, fx->cert, &rep);
    assert_int_equal(rep.problem, AB_AUDIT_INTACT);
    assert_int_equal(rep.records, 4);
}

static void
test_split_flush(void **state)
{
    /* the broker's way: records appended while a job is out go into the next job, the chain
     * runs on across jobs and rotations */
    fx_t *fx = *state;
    ab_audit_t *log = s_open(fx, 2000);
    assert_non_null(log);
    ab_audit_job_t job;
    int i = 0, jobs = 0;
    for (int round = 0; round < 20; round++) {
        for (int k = 0; k < 3; k++, i++) {
            ab_audit_record_t r;
            s_record(&r, i);
            assert_int_equal(ab_audit_append(log, &r), 0);
        }
        assert_int_equal(ab_audit_flush_begin(log, &job), 1);
        assert_int_equal(ab_audit_pending(log), 0);
        for (int k = 0; k < 2; k++, i++) { /* while the job is out */
            ab_audit_record_t r;
            s_record(&r, i);
            assert_int_equal(ab_audit_append(log, &r), 0);
        }
        assert_int_equal(ab_audit_pending(log), 2);
        ab_audit_flush_run(&job);
        assert_int_equal(ab_audit_flush_end(log, &job), 0);
        jobs++;
    }
    assert_int_equal(ab_audit_flush_begin(log, &job), 1);
    ab_audit_flush_run(&job);
    assert_int_equal(ab_audit_flush_end(log, &job), 0);
    assert_int_equal(ab_audit_flush_begin(log, &job), 0); /* nothing queued */
    ab_audit_close(&log);
    ab_audit_report_t rep;
    s_verify(fx, fx->cert, &rep);
    assert_int_equal(rep.problem, AB_AUDIT_INTACT);
    assert_int_equal(rep.records, (uint64_t)i);
    assert_true(rep.seals >= 2);
    assert_int_equal(rep.signatures_checked, 1);
    /* and the log continues after a restart */
    log = s_open(fx, 2000);
    assert_non_null(log);
    ab_audit_record_t r;
    s_record(&r, i);
    assert_int_equal(ab_audit_append(log, &r), 0);
    ab_audit_close(&log);
    s_verify(fx, fx->cert, &rep);
    assert_int_equal(rep.problem, AB_AUDIT_INTACT);
    assert_int_equal(rep.records, (uint64_t)i + 1);
}

static int
s_fresh(void **state)
{
    fx_t *fx = *state;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/log' '%s/log2'", fx->root, fx->root);
    return system(cmd);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_rotation_intact, s_fresh),
        cmocka_unit_test_setup(test_flipped_byte, s_fresh),
        cmocka_unit_test_setup(test_changed_with_rehash, s_fresh),
        cmocka_unit_test_setup(test_deleted_record, s_fresh),
        cmocka_unit_test_setup(test_swapped_records, s_fresh),
        cmocka_unit_test_setup(test_truncated_file, s_fresh),
        cmocka_unit_test_setup(test_deleted_file, s_fresh),
        cmocka_unit_test_setup(test_forged_seal, s_fresh),
        cmocka_unit_test_setup(test_restart_continues, s_fresh),
        cmocka_unit_test_setup(test_reopen_after_seal, s_fresh),
        cmocka_unit_test_setup(test_preallocated, s_fresh),
        cmocka_unit_test_setup(test_write_failure, s_fresh),
        cmocka_unit_test_setup(test_query, s_fresh),
        cmocka_unit_test_setup(test_escaping, s_fresh),
        cmocka_unit_test_setup(test_payload_hashes, s_fresh),
        cmocka_unit_test_setup(test_split_flush, s_fresh),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
