/*
 * audit.c - the hash-chained audit log (see audit.h for the format).
 *
 * The writer keeps the lines of one loop turn in a buffer; the chain advances as they are
 * queued, so a flush is a single write() and a single fdatasync(). Once a write or sync has
 * failed, the log refuses everything: the caller must not acknowledge decisions that may be lost.
 */
#include "audit.h"
#include "amtsbote.h"

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MAX_FILE_BYTES (64u * 1024u * 1024u)
#define HASH_KEY ",\"hash\":\""
#define SIG_KEY ",\"sig\":\""
#define MAX_FILE_NO 999999u

static const char *const s_kind_names[AB_AUDIT_KIND_COUNT] = {
    "accepted", "forbidden", "invalid", "delivered", "acked",
    "expired",  "failed",    "call",    "reply",     "error"};

static const char s_zero_hash[65] =
    "0000000000000000000000000000000000000000000000000000000000000000";

struct ab_audit {
    char *dir;
    int fd;
    int lockfd;
    unsigned file_no;
    uint64_t file_bytes; /* on disk in the current file */
    uint64_t seq;        /* of the next line */
    char prev[65];       /* hash of the last line queued */
    size_t max_bytes;
    EVP_PKEY *key;
    char *buf;
    size_t len, cap, nlines;
    int failed;
    char err[512];
};

const char *
ab_audit_kind_name(ab_audit_kind_t kind)
{
    return (unsigned)kind < AB_AUDIT_KIND_COUNT ? s_kind_names[kind] : NULL;
}

const char *
ab_audit_problem_name(ab_audit_problem_t p)
{
    switch (p) {
    case AB_AUDIT_INTACT:
        return "intact";
    case AB_AUDIT_CHANGED:
        return "changed";
    case AB_AUDIT_REMOVED:
        return "removed";
    case AB_AUDIT_REORDERED:
        return "reordered";
    case AB_AUDIT_TRUNCATED:
        return "truncated";
    case AB_AUDIT_FILE_MISSING:
        return "file-missing";
    case AB_AUDIT_FORGED:
        return "forged";
    case AB_AUDIT_UNSIGNED:
        return "unsigned";
    }
    return "unknown";
}

/* ---- small helpers ------------------------------------------------------------------------ */

static void
s_hex(const uint8_t *in, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[in[i] >> 4];
        out[2 * i + 1] = d[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static void
s_sha256_hex(const void *data, size_t len, char out[65])
{
    uint8_t md[SHA256_DIGEST_LENGTH];
    SHA256(data, len, md);
    s_hex(md, sizeof md, out);
}

static int
s_is_hex64(const char *s, size_t n)
{
    if (n != 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static uint64_t
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void
s_path(char *out, size_t size, const char *dir, unsigned n)
{
    snprintf(out, size, "%s/audit-%06u.log", dir, n);
}

static void
s_ssl_err(char *out, size_t size)
{
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, out, size);
    else
        snprintf(out, size, "unknown OpenSSL error");
    ERR_clear_error();
}

/* File numbers of `audit-NNNNNN.log` in dir, sorted. 0 or -1 with errno. */
static int
s_cmp_uint(const void *a, const void *b)
{
    unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
    return x < y ? -1 : x > y;
}

static int
s_list(const char *dir, unsigned **nums_p, size_t *n_p)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    unsigned *nums = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *s = de->d_name;
        if (strlen(s) != 16 || strncmp(s, "audit-", 6) != 0 || strcmp(s + 12, ".log") != 0)
            continue;
        unsigned v = 0;
        int ok = 1;
        for (int i = 6; i < 12; i++) {
            if (s[i] < '0' || s[i] > '9')
                ok = 0;
            v = v * 10 + (unsigned)(s[i] - '0');
        }
        if (!ok || v == 0)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            unsigned *t = realloc(nums, cap * sizeof *nums);
            if (!t) {
                free(nums);
                closedir(d);
                errno = ENOMEM;
                return -1;
            }
            nums = t;
        }
        nums[n++] = v;
    }
    closedir(d);
    if (n > 1)
        qsort(nums, n, sizeof *nums, s_cmp_uint);
    *nums_p = nums;
    *n_p = n;
    return 0;
}

/* Reads a whole file into a new NUL-terminated buffer. 0 or -1 with errno. */
static int
s_read_file(const char *path, char **data_p, size_t *len_p)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return -1;
    }
    size_t cap = (size_t)st.st_size + 1, len = 0;
    char *data = malloc(cap);
    if (!data) {
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    for (;;) {
        if (len + 1 >= cap) {
            char *t = realloc(data, cap * 2);
            if (!t) {
                free(data);
                close(fd);
                errno = ENOMEM;
                return -1;
            }
            data = t;
            cap *= 2;
        }
        ssize_t r = read(fd, data + len, cap - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(data);
            close(fd);
            errno = e;
            return -1;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    data[len] = '\0';
    *data_p = data;
    *len_p = len;
    return 0;
}

/* ---- parsing one line ------------------------------------------------------------------- */

typedef struct {
    json_t *j;
    uint64_t seq;
    const char *kind;
    const char *prev;
    char hash[65];
    size_t prefix_len; /* bytes the hash covers */
} s_line_t;

/*
 * Checks one line (without its '\n'): the hash matches the bytes, it is JSON with v, seq, kind
 * and prev. 0 with *p filled (json_decref(p->j) after), or -1 with why.
 */
static int
s_parse_line(const char *line, size_t len, s_line_t *p, char *why, size_t whylen)
{
    memset(p, 0, sizeof *p);
    const size_t klen = sizeof HASH_KEY - 1;
    const char *pos = NULL;
    for (const char *s = line; (s = memmem(s, len - (size_t)(s - line), HASH_KEY, klen)) != NULL;
         s++)
        pos = s;
    if (!pos || (size_t)(pos - line) + klen + 64 + 2 != len || line[len - 2] != '"' ||
        line[len - 1] != '}' || !s_is_hex64(pos + klen, 64)) {
        snprintf(why, whylen, "not a record of this log (no hash at its end)");
        return -1;
    }
    p->prefix_len = (size_t)(pos - line);
    char h[65];
    s_sha256_hex(line, p->prefix_len, h);
    if (memcmp(h, pos + klen, 64) != 0) {
        snprintf(why, whylen, "its bytes do not match its hash (the record was changed)");
        return -1;
    }
    memcpy(p->hash, h, 65);
    json_error_t jerr;
    p->j = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!p->j || !json_is_object(p->j)) {
        snprintf(why, whylen, "not valid JSON at column %d", jerr.column);
        json_decref(p->j);
        p->j = NULL;
        return -1;
    }
    json_t *v = json_object_get(p->j, "v"), *seq = json_object_get(p->j, "seq");
    p->kind = json_string_value(json_object_get(p->j, "kind"));
    p->prev = json_string_value(json_object_get(p->j, "prev"));
    if (json_integer_value(v) != 1 || !json_is_integer(seq) || json_integer_value(seq) < 1 ||
        !p->kind || !p->prev || !s_is_hex64(p->prev, strlen(p->prev))) {
        snprintf(why, whylen, "lacks v:1, seq, kind or prev");
        json_decref(p->j);
        p->j = NULL;
        return -1;
    }
    p->seq = (uint64_t)json_integer_value(seq);
    return 0;
}

/* ---- writing lines ------------------------------------------------------------------------ */

static int
s_reserve(ab_audit_t *log, size_t more)
{
    if (log->len + more <= log->cap)
        return 0;
    size_t cap = log->cap ? log->cap : 4096;
    while (cap < log->len + more)
        cap *= 2;
    char *t = realloc(log->buf, cap);
    if (!t)
        return AB_ENOMEM;
    log->buf = t;
    log->cap = cap;
    return 0;
}

static int
s_put(ab_audit_t *log, const char *s, size_t n)
{
    if (s_reserve(log, n) != 0)
        return AB_ENOMEM;
    memcpy(log->buf + log->len, s, n);
    log->len += n;
    return 0;
}

static int s_putf(ab_audit_t *log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int
s_putf(ab_audit_t *log, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return AB_EINVAL;
    return s_put(log, tmp, (size_t)n);
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when it is not one. */
static size_t
s_utf8_len(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80)
        return 1;
    else if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (avail < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return n;
}

/* Appends "key":"escaped value" (with a leading comma). */
static int
s_put_str(ab_audit_t *log, const char *key, const char *val)
{
    if (!val)
        val = "";
    size_t n = strlen(val);
    /* worst case: every byte becomes \u00XX or U+FFFD */
    if (s_reserve(log, strlen(key) + 6 + 6 * n) != 0)
        return AB_ENOMEM;
    char *o = log->buf + log->len;
    o += sprintf(o, ",\"%s\":\"", key);
    const unsigned char *s = (const unsigned char *)val;
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
            i++;
        } else if (c < 0x20) {
            o += sprintf(o, "\\u%04x", c);
            i++;
        } else {
            size_t k = s_utf8_len(s + i, n - i);
            if (k == 0) {
                memcpy(o, "\xEF\xBF\xBD", 3);
                o += 3;
                i++;
            } else {
                memcpy(o, s + i, k);
                o += k;
                i += k;
            }
        }
    }
    *o++ = '"';
    log->len = (size_t)(o - log->buf);
    return 0;
}

/* Ends the line that started at `start`: hash, chain, newline. */
static int
s_end_line(ab_audit_t *log, size_t start)
{
    char h[65];
    s_sha256_hex(log->buf + start, log->len - start, h);
    if (s_reserve(log, sizeof HASH_KEY + 64 + 3) != 0)
        return AB_ENOMEM;
    log->len += (size_t)sprintf(log->buf + log->len, HASH_KEY "%s\"}\n", h);
    memcpy(log->prev, h, 65);
    log->seq++;
    log->nlines++;
    return 0;
}

int
ab_audit_append(ab_audit_t *log, const ab_audit_record_t *rec)
{
    if (!log || !rec || (unsigned)rec->kind >= AB_AUDIT_KIND_COUNT)
        return AB_EINVAL;
    if (log->failed)
        return AB_EIO;
    size_t start = log->len;
    char id[33], ph[65] = "";
    s_hex(rec->id, 16, id);
    if (rec->payload_sha256)
        s_hex(rec->payload_sha256, 32, ph);
    else if (rec->payload)
        s_sha256_hex(rec->payload, rec->payload_len, ph);
    int rc = s_putf(log, "{\"v\":1,\"seq\":%" PRIu64 ",\"t\":%" PRIu64 ",\"kind\":\"%s\"", log->seq,
                    rec->time_ms ? rec->time_ms : s_now_ms(), s_kind_names[rec->kind]);
    if (!rc)
        rc = s_putf(log, ",\"id\":\"%s\"", id);
    if (!rc)
        rc = s_put_str(log, "sender", rec->sender);
    if (!rc)
        rc = s_put_str(log, "target", rec->target);
    if (!rc)
        rc = s_put_str(log, "purpose", rec->purpose);
    if (!rc)
        rc = s_put_str(log, "class", rec->classification);
    if (!rc)
        rc = s_putf(log, ",\"payload_sha256\":\"%s\"", ph);
    if (!rc)
        rc = s_put_str(log, "outcome", rec->outcome ? rec->outcome : "ok");
    if (!rc)
        rc = s_putf(log, ",\"prev\":\"%s\"", log->prev);
    if (!rc)
        rc = s_end_line(log, start);
    if (rc)
        log->len = start; /* nothing half-queued */
    return rc;
}

static int
s_queue_recovered(ab_audit_t *log, size_t torn)
{
    size_t start = log->len;
    int rc = s_putf(log,
                    "{\"v\":1,\"seq\":%" PRIu64 ",\"t\":%" PRIu64
                    ",\"kind\":\"recovered\",\"torn_bytes\":%zu,\"prev\":\"%s\"",
                    log->seq, s_now_ms(), torn, log->prev);
    if (!rc)
        rc = s_end_line(log, start);
    if (rc)
        log->len = start;
    return rc;
}

static const char *
s_alg(EVP_PKEY *key)
{
    if (!key)
        return "none";
    return EVP_PKEY_get_base_id(key) == EVP_PKEY_EC ? "ecdsa-sha256" : "rsa-pkcs1-sha256";
}

/* Queues the seal of the current file. */
static int
s_queue_seal(ab_audit_t *log)
{
    size_t start = log->len;
    int rc = s_putf(log,
                    "{\"v\":1,\"seq\":%" PRIu64 ",\"t\":%" PRIu64
                    ",\"kind\":\"seal\",\"file\":%u,\"alg\":\"%s\",\"prev\":\"%s\"",
                    log->seq, s_now_ms(), log->file_no, s_alg(log->key), log->prev);
    char *b64 = NULL;
    if (!rc && log->key) {
        EVP_MD_CTX *mctx = EVP_MD_CTX_new();
        size_t siglen = 0;
        unsigned char *sig = NULL;
        const unsigned char *tbs = (const unsigned char *)log->buf + start;
        size_t tbslen = log->len - start;
        rc = AB_EIO;
        if (mctx && EVP_DigestSignInit(mctx, NULL, EVP_sha256(), NULL, log->key) == 1 &&
            EVP_DigestSign(mctx, NULL, &siglen, tbs, tbslen) == 1 &&
            (sig = malloc(siglen)) != NULL &&
            EVP_DigestSign(mctx, sig, &siglen, tbs, tbslen) == 1 &&
            (b64 = malloc(4 * ((siglen + 2) / 3) + 1)) != NULL) {
            EVP_EncodeBlock((unsigned char *)b64, sig, (int)siglen);
            rc = 0;
        } else {
            char e[256];
            s_ssl_err(e, sizeof e);
            snprintf(log->err, sizeof log->err, "cannot sign the seal of audit-%06u.log: %s",
                     log->file_no, e);
        }
        free(sig);
        EVP_MD_CTX_free(mctx);
    }
    if (!rc)
        rc = s_putf(log, SIG_KEY "%s\"", "") ? AB_ENOMEM : 0;
    if (!rc && b64) {
        log->len--; /* reopen the string for the signature */
        rc = s_put(log, b64, strlen(b64));
        if (!rc)
            rc = s_put(log, "\"", 1);
    }
    free(b64);
    if (!rc)
        rc = s_end_line(log, start);
    if (rc)
        log->len = start;
    return rc;
}

/* ---- files -------------------------------------------------------------------------------- */

static int
s_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* Creates file n (it must not exist) and makes it the current one. */
static int
s_create(ab_audit_t *log, unsigned n)
{
    char path[4096];
    if (n > MAX_FILE_NO) {
        snprintf(log->err, sizeof log->err, "%s: no file number left after %u", log->dir,
                 MAX_FILE_NO);
        return AB_EIO;
    }
    s_path(path, sizeof path, log->dir, n);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0 || s_fsync_dir(log->dir) != 0) {
        snprintf(log->err, sizeof log->err, "%.300s: cannot create: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return AB_EIO;
    }
    if (log->fd >= 0)
        close(log->fd);
    log->fd = fd;
    log->file_no = n;
    log->file_bytes = 0;
    return 0;
}

int
ab_audit_flush(ab_audit_t *log)
{
    ab_audit_job_t job;
    int rc = ab_audit_flush_begin(log, &job);
    if (rc <= 0)
        return rc;
    ab_audit_flush_run(&job);
    return ab_audit_flush_end(log, &job);
}

int
ab_audit_flush_begin(ab_audit_t *log, ab_audit_job_t *job)
{
    memset(job, 0, sizeof *job);
    job->fd = -1;
    if (!log)
        return AB_EINVAL;
    if (log->failed)
        return AB_EIO;
    if (log->len == 0)
        return 0;
    job->seal = log->file_bytes + log->len >= log->max_bytes;
    if (job->seal && s_queue_seal(log) != 0) {
        log->failed = 1;
        return AB_EIO;
    }
    /* the queued lines leave with the job; appends go on into a fresh buffer */
    job->fd = log->fd;
    job->buf = log->buf;
    job->len = log->len;
    s_path(job->path, sizeof job->path, log->dir, log->file_no);
    log->buf = NULL;
    log->len = log->cap = log->nlines = 0;
    return 1;
}

void
ab_audit_flush_run(ab_audit_job_t *job)
{
    size_t off = 0;
    while (off < job->len) {
        ssize_t w = write(job->fd, job->buf + off, job->len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            snprintf(job->err, sizeof job->err, "%.300s: write failed: %s", job->path,
                     strerror(errno));
            return;
        }
        off += (size_t)w;
    }
    if (fdatasync(job->fd) != 0)
        snprintf(job->err, sizeof job->err, "%.300s: fdatasync failed: %s", job->path,
                 strerror(errno));
}

int
ab_audit_flush_end(ab_audit_t *log, ab_audit_job_t *job)
{
    int rc = 0;
    if (job->err[0]) {
        snprintf(log->err, sizeof log->err, "%s", job->err);
        log->failed = 1;
        rc = AB_EIO;
    } else {
        log->file_bytes += job->len;
        if (job->seal && s_create(log, log->file_no + 1) != 0) {
            log->failed = 1;
            rc = AB_EIO;
        }
    }
    free(job->buf);
    job->buf = NULL;
    return rc;
}

const char *
ab_audit_error(const ab_audit_t *log)
{
    return log ? log->err : "";
}

size_t
ab_audit_pending(const ab_audit_t *log)
{
    return log ? log->nlines : 0;
}

void
ab_audit_close(ab_audit_t **log_p)
{
    if (!log_p || !*log_p)
        return;
    ab_audit_t *log = *log_p;
    (void)ab_audit_flush(log);
    if (log->fd >= 0)
        close(log->fd);
    if (log->lockfd >= 0)
        close(log->lockfd);
    EVP_PKEY_free(log->key);
    free(log->buf);
    free(log->dir);
    free(log);
    *log_p = NULL;
}

static int
s_passphrase(char *buf, int size, int rwflag, void *userdata)
{
    (void)rwflag;
    const char *pass = userdata;
    if (!pass || size <= 0)
        return 0;
    size_t n = strlen(pass);
    if (n > (size_t)size)
        return 0;
    memcpy(buf, pass, n);
    return (int)n;
}

static int
s_load_key(ab_audit_t *log, const ab_audit_options_t *o)
{
    char e[256];
    BIO *b = BIO_new_file(o->key_path, "r");
    log->key = b ? PEM_read_bio_PrivateKey(b, NULL, s_passphrase, (void *)o->key_passphrase) : NULL;
    BIO_free(b);
    if (!log->key) {
        s_ssl_err(e, sizeof e);
        snprintf(log->err, sizeof log->err, "%s: cannot load the private key%s: %s", o->key_path,
                 o->key_passphrase ? " with the passphrase given" : "", e);
        return -1;
    }
    int id = EVP_PKEY_get_base_id(log->key);
    if (id != EVP_PKEY_EC && id != EVP_PKEY_RSA) {
        snprintf(log->err, sizeof log->err, "%s: the key must be EC or RSA", o->key_path);
        return -1;
    }
    if (o->cert_path) {
        b = BIO_new_file(o->cert_path, "r");
        X509 *cert = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
        int ok = cert && X509_check_private_key(cert, log->key) == 1;
        X509_free(cert);
        if (!ok) {
            s_ssl_err(e, sizeof e);
            snprintf(log->err, sizeof log->err, "%s: not a certificate of the key %s: %s",
                     o->cert_path, o->key_path, e);
            return -1;
        }
    }
    return 0;
}

/*
 * Finds where the chain stands in file n: its lines are checked (hash, links within the file),
 * a torn last line is cut off (*torn = its length). *lines = 0 for a file without complete lines.
 */
static int
s_tail(ab_audit_t *log, unsigned n, size_t *lines, int *sealed, size_t *torn)
{
    char path[4096];
    s_path(path, sizeof path, log->dir, n);
    char *data;
    size_t len;
    *lines = 0;
    *sealed = 0;
    *torn = 0;
    if (s_read_file(path, &data, &len) != 0) {
        snprintf(log->err, sizeof log->err, "%.300s: cannot read: %s", path, strerror(errno));
        return -1;
    }
    size_t off = 0, ln = 0;
    char last[65] = "";
    uint64_t seq = 0;
    while (off < len) {
        char *nl = memchr(data + off, '\n', len - off);
        if (!nl) {
            *torn = len - off;
            break;
        }
        ln++;
        s_line_t p;
        char why[256];
        size_t ll = (size_t)(nl - (data + off));
        if (s_parse_line(data + off, ll, &p, why, sizeof why) != 0 ||
            (ln > 1 && (strcmp(p.prev, last) != 0 || p.seq != seq + 1))) {
            if (p.j) /* parsed, but not linked to the line before */
                snprintf(why, sizeof why, "does not continue the chain of line %zu", ln - 1);
            snprintf(log->err, sizeof log->err,
                     "%.200s:%zu: %.200s; not continuing this log (run 'amtsbote audit verify')",
                     path, ln, why);
            json_decref(p.j);
            free(data);
            return -1;
        }
        *sealed = strcmp(p.kind, "seal") == 0;
        memcpy(last, p.hash, 65);
        seq = p.seq;
        json_decref(p.j);
        off += ll + 1;
    }
    free(data);
    if (*torn) {
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || ftruncate(fd, (off_t)off) != 0 || fsync(fd) != 0) {
            snprintf(log->err, sizeof log->err, "%.300s: cannot cut off the torn last line: %s",
                     path, strerror(errno));
            if (fd >= 0)
                close(fd);
            return -1;
        }
        close(fd);
    }
    *lines = ln;
    if (ln) {
        memcpy(log->prev, last, 65);
        log->seq = seq + 1;
    }
    log->file_bytes = off;
    return 0;
}

ab_audit_t *
ab_audit_open(const char *dir, const ab_audit_options_t *opts, char *err, size_t errlen)
{
    ab_audit_options_t none = {0};
    if (!opts)
        opts = &none;
    if (!dir) {
        snprintf(err, errlen, "no audit directory given");
        return NULL;
    }
    ab_audit_t *log = calloc(1, sizeof *log);
    if (!log || !(log->dir = strdup(dir))) {
        free(log);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    log->fd = -1;
    log->lockfd = -1;
    log->seq = 1;
    memcpy(log->prev, s_zero_hash, 65);
    log->max_bytes = opts->max_file_bytes ? opts->max_file_bytes : DEFAULT_MAX_FILE_BYTES;
    unsigned *nums = NULL;
    size_t count = 0;
    char path[4096];

    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(log->err, sizeof log->err, "%.300s: cannot create: %s", dir, strerror(errno));
        goto fail;
    }
    snprintf(path, sizeof path, "%s/lock", dir);
    log->lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (log->lockfd < 0 || flock(log->lockfd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(log->err, sizeof log->err, "%.300s: %s", path,
                 errno == EWOULDBLOCK ? "the log is open in another process" : strerror(errno));
        goto fail;
    }
    if (opts->key_path && s_load_key(log, opts) != 0)
        goto fail;
    if (s_list(dir, &nums, &count) != 0) {
        snprintf(log->err, sizeof log->err, "%.300s: cannot list: %s", dir, strerror(errno));
        goto fail;
    }
    if (count == 0) {
        if (s_create(log, 1) != 0)
            goto fail;
    } else {
        unsigned n = nums[count - 1];
        size_t lines, torn;
        int sealed;
        if (s_tail(log, n, &lines, &sealed, &torn) != 0)
            goto fail;
        if (lines == 0 && n > 1) {
            /* a new file that got no line yet: the chain stands at the previous file's seal */
            size_t l2, t2;
            int s2;
            if (s_tail(log, n - 1, &l2, &s2, &t2) != 0)
                goto fail;
            if (!s2 || t2) {
                snprintf(log->err, sizeof log->err,
                         "%s/audit-%06u.log does not end with its seal; not continuing this log "
                         "(run 'amtsbote audit verify')",
                         dir, n - 1);
                goto fail;
            }
            log->file_bytes = 0;
        }
        if (sealed) {
            if (s_create(log, n + 1) != 0)
                goto fail;
        } else {
            s_path(path, sizeof path, dir, n);
            log->fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
            if (log->fd < 0) {
                snprintf(log->err, sizeof log->err, "%.300s: cannot open: %s", path,
                         strerror(errno));
                goto fail;
            }
            log->file_no = n;
        }
        if (torn && s_queue_recovered(log, torn) != 0) {
            snprintf(log->err, sizeof log->err, "out of memory");
            goto fail;
        }
    }
    free(nums);
    return log;
fail:
    snprintf(err, errlen, "%s", log->err);
    free(nums);
    log->len = 0;
    ab_audit_close(&log);
    return NULL;
}

/* ---- verification ------------------------------------------------------------------------- */

typedef struct {
    const char *dir;
    unsigned *nums;
    size_t count;
    EVP_PKEY *pub;
    ab_audit_report_t *r;
} s_verify_t;

static int s_problem(ab_audit_report_t *r, ab_audit_problem_t p, unsigned file_no, size_t line,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int
s_problem(ab_audit_report_t *r, ab_audit_problem_t p, unsigned file_no, size_t line,
          const char *fmt, ...)
{
    r->problem = p;
    snprintf(r->file, sizeof r->file, "audit-%06u.log", file_no);
    r->line = line;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->detail, sizeof r->detail, fmt, ap);
    va_end(ap);
    return 0;
}

/* Where the line with `seq` is, from file index fi on: 1 with *file_no and *line, else 0. */
static int
s_find_seq(const s_verify_t *v, size_t fi, uint64_t want, unsigned *file_no, size_t *line)
{
    char path[4096];
    for (size_t i = fi; i < v->count; i++) {
        char *data;
        size_t len;
        s_path(path, sizeof path, v->dir, v->nums[i]);
        if (s_read_file(path, &data, &len) != 0)
            continue;
        size_t off = 0, ln = 0;
        while (off < len) {
            char *nl = memchr(data + off, '\n', len - off);
            size_t ll = nl ? (size_t)(nl - (data + off)) : len - off;
            ln++;
            json_t *j = json_loadb(data + off, ll, 0, NULL);
            json_t *s = json_object_get(j, "seq");
            int hit = json_is_integer(s) && (uint64_t)json_integer_value(s) == want;
            json_decref(j);
            if (hit) {
                free(data);
                *file_no = v->nums[i];
                *line = ln;
                return 1;
            }
            off += ll + 1;
        }
        free(data);
    }
    return 0;
}

static int
s_b64_decode(const char *in, unsigned char **out_p, size_t *len_p)
{
    size_t n = strlen(in);
    if (n == 0 || n % 4 != 0)
        return -1;
    unsigned char *out = malloc(n / 4 * 3 + 1);
    if (!out)
        return -1;
    int len = EVP_DecodeBlock(out, (const unsigned char *)in, (int)n);
    if (len < 0) {
        free(out);
        return -1;
    }
    if (in[n - 1] == '=')
        len--;
    if (in[n - 2] == '=')
        len--;
    *out_p = out;
    *len_p = (size_t)len;
    return 0;
}

/* 1 when the seal line's signature verifies with pub. */
static int
s_seal_ok(EVP_PKEY *pub, const char *line, size_t len, const char *sig_b64)
{
    const char *pos = memmem(line, len, SIG_KEY, sizeof SIG_KEY - 1);
    unsigned char *sig = NULL;
    size_t siglen = 0;
    if (!pos || s_b64_decode(sig_b64, &sig, &siglen) != 0)
        return 0;
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    int ok =
        mctx && EVP_DigestVerifyInit(mctx, NULL, EVP_sha256(), NULL, pub) == 1 &&
        EVP_DigestVerify(mctx, sig, siglen, (const unsigned char *)line, (size_t)(pos - line)) == 1;
    EVP_MD_CTX_free(mctx);
    free(sig);
    ERR_clear_error();
    return ok;
}

int
ab_audit_verify(const char *dir, const char *cert_path, ab_audit_report_t *report)
{
    ab_audit_report_t *r = report;
    memset(r, 0, sizeof *r);
    s_verify_t v = {.dir = dir, .r = r};
    int rc = 0;
    char *data = NULL;
    if (cert_path) {
        BIO *b = BIO_new_file(cert_path, "r");
        X509 *cert = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
        v.pub = cert ? X509_get_pubkey(cert) : NULL;
        X509_free(cert);
        if (!v.pub) {
            char e[256];
            s_ssl_err(e, sizeof e);
            snprintf(r->detail, sizeof r->detail, "%s: cannot load a certificate: %s", cert_path,
                     e);
            return AB_EINVAL;
        }
    }
    if (s_list(dir, &v.nums, &v.count) != 0) {
        snprintf(r->detail, sizeof r->detail, "%.300s: cannot list: %s", dir, strerror(errno));
        EVP_PKEY_free(v.pub);
        return AB_EIO;
    }
    char last_hash[65];
    memcpy(last_hash, s_zero_hash, 65);
    uint64_t expect = 1;
    unsigned last_file = 0;
    size_t last_line = 0;
    for (size_t fi = 0; fi < v.count && r->problem == AB_AUDIT_INTACT; fi++) {
        unsigned n = v.nums[fi];
        if (fi == 0 && n != 1) {
            s_problem(r, AB_AUDIT_FILE_MISSING, 1, 0,
                      "the log starts with audit-%06u.log: the files before it are missing", n);
            break;
        }
        if (fi > 0 && n != v.nums[fi - 1] + 1) {
            s_problem(r, AB_AUDIT_FILE_MISSING, v.nums[fi - 1] + 1, 0,
                      "the file is missing between audit-%06u.log and audit-%06u.log",
                      v.nums[fi - 1], n);
            break;
        }
        char path[4096];
        size_t len;
        s_path(path, sizeof path, dir, n);
        if (s_read_file(path, &data, &len) != 0) {
            snprintf(r->detail, sizeof r->detail, "%.300s: cannot read: %s", path, strerror(errno));
            rc = AB_EIO;
            break;
        }
        r->files++;
        int is_last_file = fi + 1 == v.count, sealed = 0;
        size_t off = 0, ln = 0;
        while (off < len && r->problem == AB_AUDIT_INTACT) {
            char *nl = memchr(data + off, '\n', len - off);
            ln++;
            if (!nl) {
                s_problem(r, AB_AUDIT_TRUNCATED, n, ln,
                          "incomplete last line (%zu bytes without a newline): the file was cut "
                          "off",
                          len - off);
                break;
            }
            size_t ll = (size_t)(nl - (data + off));
            const char *line = data + off;
            off += ll + 1;
            s_line_t p;
            char why[256];
            if (s_parse_line(line, ll, &p, why, sizeof why) != 0) {
                s_problem(r, AB_AUDIT_CHANGED, n, ln, "%s", why);
                break;
            }
            if (p.seq != expect) {
                unsigned ff;
                size_t fl;
                if (p.seq > expect && s_find_seq(&v, fi, expect, &ff, &fl))
                    s_problem(r, AB_AUDIT_REORDERED, n, ln,
                              "record seq %" PRIu64 " is here, but seq %" PRIu64
                              " comes later (audit-%06u.log line %zu)",
                              p.seq, expect, ff, fl);
                else if (p.seq > expect)
                    s_problem(r, AB_AUDIT_REMOVED, n, ln,
                              "records seq %" PRIu64 "..%" PRIu64 " are missing before this line",
                              expect, p.seq - 1);
                else
                    s_problem(r, AB_AUDIT_REORDERED, n, ln,
                              "record seq %" PRIu64 " comes after seq %" PRIu64
                              " (moved or duplicated)",
                              p.seq, expect - 1);
            } else if (strcmp(p.prev, last_hash) != 0) {
                if (expect == 1)
                    s_problem(r, AB_AUDIT_CHANGED, n, ln,
                              "the first record's prev is not 64 zeros");
                else
                    s_problem(r, AB_AUDIT_CHANGED, last_file, last_line,
                              "record seq %" PRIu64 " was changed or replaced: its hash is not "
                              "the prev of the next record (audit-%06u.log line %zu)",
                              expect - 1, n, ln);
            } else if (strcmp(p.kind, "seal") == 0) {
                json_t *jf = json_object_get(p.j, "file");
                const char *sig = json_string_value(json_object_get(p.j, "sig"));
                const char *alg = json_string_value(json_object_get(p.j, "alg"));
                if (off != len)
                    s_problem(r, AB_AUDIT_CHANGED, n, ln, "a seal in the middle of a file");
                else if (!json_is_integer(jf) || json_integer_value(jf) != (json_int_t)n)
                    s_problem(r, AB_AUDIT_REORDERED, n, ln,
                              "the seal belongs to audit-%06u.log (file renamed)",
                              (unsigned)json_integer_value(jf));
                else if (v.pub && (!sig || !*sig || (alg && strcmp(alg, "none") == 0)))
                    s_problem(r, AB_AUDIT_UNSIGNED, n, ln, "the seal carries no signature");
                else if (v.pub && !s_seal_ok(v.pub, line, ll, sig))
                    s_problem(r, AB_AUDIT_FORGED, n, ln,
                              "the seal's signature does not verify with the certificate");
                sealed = 1;
                r->seals++;
            } else if (strcmp(p.kind, "recovered") != 0) {
                int known = 0;
                for (int k = 0; k < AB_AUDIT_KIND_COUNT; k++)
                    known |= strcmp(p.kind, s_kind_names[k]) == 0;
                if (!known)
                    s_problem(r, AB_AUDIT_CHANGED, n, ln, "unknown kind");
                else
                    r->records++;
            }
            if (r->problem == AB_AUDIT_INTACT) {
                r->lines++;
                memcpy(last_hash, p.hash, 65);
                last_file = n;
                last_line = ln;
                expect++;
            }
            json_decref(p.j);
        }
        free(data);
        data = NULL;
        if (r->problem == AB_AUDIT_INTACT && !is_last_file && !sealed)
            s_problem(r, AB_AUDIT_TRUNCATED, n, ln + 1,
                      "the file ends without its seal: records at its end were removed or the "
                      "file was cut off");
    }
    if (rc == 0 && r->problem == AB_AUDIT_INTACT) {
        r->signatures_checked = v.pub != NULL;
        snprintf(r->detail, sizeof r->detail, "%" PRIu64 " records in %u files, %u seals%s",
                 r->records, r->files, r->seals,
                 v.pub ? ", every seal's signature verified"
                       : " (signatures not checked: no certificate given)");
    }
    free(v.nums);
    EVP_PKEY_free(v.pub);
    return rc;
}

/* ---- query -------------------------------------------------------------------------------- */

static const char *
s_jstr(json_t *j, const char *key)
{
    const char *s = json_string_value(json_object_get(j, key));
    return s ? s : "";
}

int
ab_audit_query(const char *dir, const char *participant, uint64_t since_ms, const char *purpose,
               ab_audit_query_cb cb, void *arg, char *err, size_t errlen)
{
    unsigned *nums;
    size_t count;
    if (!participant || !cb)
        return AB_EINVAL;
    if (s_list(dir, &nums, &count) != 0) {
        snprintf(err, errlen, "%.300s: cannot list: %s", dir, strerror(errno));
        return AB_EIO;
    }
    int rc = 0;
    for (size_t i = 0; i < count && rc == 0; i++) {
        char path[4096], name[32];
        char *data;
        size_t len;
        s_path(path, sizeof path, dir, nums[i]);
        snprintf(name, sizeof name, "audit-%06u.log", nums[i]);
        if (s_read_file(path, &data, &len) != 0) {
            snprintf(err, errlen, "%.300s: cannot read: %s", path, strerror(errno));
            rc = AB_EIO;
            break;
        }
        size_t off = 0, ln = 0;
        while (off < len && rc == 0) {
            char *nl = memchr(data + off, '\n', len - off);
            size_t ll = nl ? (size_t)(nl - (data + off)) : len - off;
            ln++;
            json_t *j = json_loadb(data + off, ll, 0, NULL);
            off += ll + 1;
            if (!j)
                continue;
            ab_audit_entry_t e = {
                .file = name,
                .line = ln,
                .seq = (uint64_t)json_integer_value(json_object_get(j, "seq")),
                .time_ms = (uint64_t)json_integer_value(json_object_get(j, "t")),
                .kind = s_jstr(j, "kind"),
                .id = s_jstr(j, "id"),
                .sender = s_jstr(j, "sender"),
                .target = s_jstr(j, "target"),
                .purpose = s_jstr(j, "purpose"),
                .classification = s_jstr(j, "class"),
                .payload_sha256 = s_jstr(j, "payload_sha256"),
                .outcome = s_jstr(j, "outcome"),
            };
            int is_record = strcmp(e.kind, "seal") != 0 && strcmp(e.kind, "recovered") != 0;
            if (is_record &&
                (strcmp(e.sender, participant) == 0 || strcmp(e.target, participant) == 0) &&
                e.time_ms >= since_ms && (!purpose || strcmp(e.purpose, purpose) == 0))
                rc = cb(&e, arg);
            json_decref(j);
        }
        free(data);
    }
    free(nums);
    return rc;
}
