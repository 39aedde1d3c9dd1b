/*
 * Allocation failure at the N-th call (N = 1, 2, ... until the operation succeeds) for the
 * header decoder, the schema loader, the schema registry, the policy loader and a mailbox
 * record through the store (written, committed, read back): each failure
 * gives an error with a reason (or, where the code has a way around it, the operation succeeds
 * and its result is checked), never a crash, and after the objects are destroyed the number of
 * live allocations is back where it was.
 *
 * This binary replaces malloc, calloc, realloc, free and the aligned allocators (glibc supports
 * that: its own functions, libyaml, protobuf-c, SQLite and OpenSSL then allocate here too, so
 * strdup, fopen and the libraries' allocations are covered) and forwards to glibc's
 * __libc_malloc & co. with a countdown that makes the N-th call return NULL with errno ENOMEM
 * (one failure; later calls succeed, as after a transient shortage). Such a replacement does
 * not mix with AddressSanitizer's, so the test is built only when AMTSBOTE_SANITIZE is OFF (the
 * normal CI build runs it).
 *
 * Each operation runs once unarmed first, so that one-time initialisation (SQLite's, OpenSSL's,
 * libc's) is done before the baseline is taken.
 *
 * A few failures are worked around inside the libraries and the operation succeeds (its result
 * is checked all the same): SQLite opens a connection without an extension function (FTS5,
 * JSON) it could not register, OpenSSL's EVP_MD_fetch() does without a cache entry. What was
 * unrecoverable by design: uthash calls exit(-1) when it cannot grow a table; schema.c,
 * policy.c and registry.c now use its non-fatal mode (HASH_NONFATAL_OOM) and check each add.
 * broker/mailbox.c, services.c, zap.c and metrics.c still use the fatal default (they are not
 * covered here).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "amtsbote.h"
#include "amtsbote/v1/amtsbote.pb-c.h"
#include "config.h"
#include "policy.h"
#include "registry.h"
#include "schema.h"
#include "store.h"
#include "wire.h"

/* ---- the allocator ---------------------------------------------------------------------- */

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);

/* Plain counters: nothing here runs threads while a countdown is armed. */
static long s_fail_at; /* 0: never fail; N: the N-th call (counted from arming) fails */
static long s_calls;   /* allocation calls since arming */
static int s_failed;   /* the armed failure happened */
static long s_live;    /* blocks handed out and not yet freed */

/* Blocks handed out while armed, with the number of the call that made them: a leak names
 * the calls (break on s_track with that s_calls in a debugger to see where they come from). */
#define S_TRACK_MAX 65536
static struct {
    void *p;
    long call;
} s_track_v[S_TRACK_MAX];
static size_t s_track_n;

static void
s_track(void *p)
{
    if (s_fail_at != 0 && p != NULL && s_track_n < S_TRACK_MAX) {
        s_track_v[s_track_n].p = p;
        s_track_v[s_track_n++].call = s_calls;
    }
}

static void
s_untrack(void *p)
{
    for (size_t i = s_track_n; i-- > 0;) {
        if (s_track_v[i].p == p) {
            s_track_v[i] = s_track_v[--s_track_n];
            return;
        }
    }
}

static int
s_fail_now(void)
{
    if (s_fail_at == 0)
        return 0;
    if (++s_calls != s_fail_at)
        return 0;
    s_failed = 1;
    errno = ENOMEM;
    return 1;
}

void *
malloc(size_t n)
{
    if (s_fail_now())
        return NULL;
    void *p = __libc_malloc(n);
    if (p)
        s_live++;
    s_track(p);
    return p;
}

void *
calloc(size_t n, size_t size)
{
    if (s_fail_now())
        return NULL;
    void *p = __libc_calloc(n, size);
    if (p)
        s_live++;
    s_track(p);
    return p;
}

void *
realloc(void *old, size_t n)
{
    if (old == NULL)
        return malloc(n);
    if (n == 0) {
        free(old);
        return NULL;
    }
    if (s_fail_now())
        return NULL; /* `old` stays valid and live */
    void *p = __libc_realloc(old, n);
    if (p) {
        s_untrack(old);
        s_track(p);
    }
    return p;
}

void
free(void *p)
{
    if (p == NULL)
        return;
    s_live--;
    s_untrack(p);
    __libc_free(p);
}

void *
memalign(size_t align, size_t n)
{
    if (s_fail_now())
        return NULL;
    void *p = __libc_memalign(align, n);
    if (p)
        s_live++;
    s_track(p);
    return p;
}

void *
aligned_alloc(size_t align, size_t n)
{
    return memalign(align, n);
}

int
posix_memalign(void **out, size_t align, size_t n)
{
    void *p = memalign(align, n);
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}

void *
valloc(size_t n)
{
    return memalign(4096, n);
}

void *
pvalloc(size_t n)
{
    return memalign(4096, (n + 4095) & ~(size_t)4095);
}

static void
s_arm(long n)
{
    s_track_n = 0;
    s_calls = 0;
    s_failed = 0;
    s_fail_at = n;
}

static void
s_disarm(void)
{
    s_fail_at = 0;
}

/* The error an operation got (set by s_has_text()), for the texts a test prints. */
static char s_error[1200];

/*
 * Runs `op` with the N-th allocation failing for N = 1, 2, ... until it runs through without
 * reaching N; `op` returns 0 on success (its result checked) or -1 after checking the error it
 * got, and must destroy what it made. Fails the test when the live count moved. Returns how
 * many N failed an allocation.
 */
typedef int (*s_op_t)(void *arg);

static long
s_every_n(const char *what, s_op_t op, void *arg, long *recovered)
{
    *recovered = 0;
    char texts[8][160];
    size_t ntexts = 0;
    assert_int_equal(op(arg), 0); /* warm-up, unarmed: one-time initialisation */
    long base = s_live;
    /* AB_ALLOC_FAIL_AT="WHAT:N" (e.g. "registry push:85") runs only that N of that operation,
     * for a debugger: break where s_fail_now() sets s_failed */
    const char *only = getenv("AB_ALLOC_FAIL_AT");
    size_t wl = strlen(what);
    if (only && (strncmp(only, what, wl) != 0 || only[wl] != ':'))
        return 0;
    for (long n = only ? atol(only + wl + 1) : 1;; n++) {
        s_arm(n);
        int rc = op(arg);
        s_disarm();
        int failed = s_failed;
        if (s_live != base) {
            for (size_t i = 0; i < s_track_n; i++)
                print_message("%s: allocation %ld failed: the block of call %ld is still live\n",
                              what, n, s_track_v[i].call);
            fail_msg("%s: allocation %ld failed: %ld blocks leaked", what, n, s_live - base);
        }
        if (!failed) {
            if (rc != 0)
                fail_msg("%s: failed with no allocation failing (%ld allocations)", what, n - 1);
            for (size_t i = 0; i < ntexts; i++)
                print_message("%s: error text: %s\n", what, texts[i]);
            return n - 1;
        }
        if (rc == -2)
            fail_msg("%s: allocation %ld failed: wrong result or unclear error '%s'", what, n,
                     s_error);
        if (rc != 0) {
            size_t i = 0;
            while (i < ntexts && strncmp(texts[i], s_error, sizeof texts[i] - 1) != 0)
                i++;
            if (i == ntexts && ntexts < 8)
                snprintf(texts[ntexts++], sizeof texts[0], "%.159s", s_error);
        }
        if (rc == 0) {
            (*recovered)++;
            print_message("%s: allocation %ld failed, and it worked all the same\n", what, n);
        }
        if (only)
            return n;
        if (n > 1000000)
            fail_msg("%s: more than a million allocations", what);
    }
}

/* ---- the operations --------------------------------------------------------------------- */

/* Keeps the error text; true when there is one. */
static int
s_has_text(const char *s)
{
    snprintf(s_error, sizeof s_error, "%s", s ? s : "");
    return s && s[0] != '\0';
}

/* The decoder, then a CALL header decoded and re-encoded. */
static int
op_wire(void *arg)
{
    (void)arg;
    ab_wire_decoder_t *dec = ab_wire_decoder_new();
    if (!dec)
        return s_has_text("NULL") ? -1 : -2; /* its one way to say "out of memory" */
    Amtsbote__V1__Header__HeadersEntry e = AMTSBOTE__V1__HEADER__HEADERS_ENTRY__INIT;
    e.key = "vorgang";
    e.value = "A-17";
    Amtsbote__V1__Header__HeadersEntry *ep = &e;
    Amtsbote__V1__Error er = AMTSBOTE__V1__ERROR__INIT;
    er.text = "a text";
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = AB_PROTOCOL_VERSION;
    h.kind = AMTSBOTE__V1__KIND__KIND_CALL;
    h.service = "meldewesen.v1.Melderegister/Meldebescheinigung";
    h.purpose = "BMG §34";
    h.n_headers = 1;
    h.headers = &ep;
    h.error = &er;
    uint8_t buf[512], again[512];
    int n = ab_wire_encode(&h, buf, sizeof buf);
    ab_header_t *out = NULL;
    char why[AB_WHY_LEN];
    int rc = n > 0 ? ab_wire_decode(dec, buf, (size_t)n, &out, why) : -1;
    int ok = rc == 0 && out && !strcmp(out->service, h.service) && out->n_headers == 1 &&
             ab_wire_encode(out, again, sizeof again) == n && !memcmp(buf, again, (size_t)n);
    ab_wire_decoder_destroy(&dec);
    return ok ? 0 : -2;
}

typedef struct {
    uint8_t *set;
    size_t len;
} s_set_arg_t;

static int
op_schema(void *arg)
{
    s_set_arg_t *a = arg;
    ab_schema_set_t *set = NULL;
    ab_schema_error_t err;
    memset(&err, 0, sizeof err);
    int rc = ab_schema_set_load(a->set, a->len, &set, &err);
    if (rc != 0) {
        /* AB_ENOMEM and a text: never a set "that does not hang together" */
        return s_has_text(err.text) && set == NULL && rc == AB_ENOMEM ? -1 : -2;
    }
    int ok = ab_schema_message(set, "meldewesen.v1.Meldebescheinigung") != NULL &&
             ab_schema_service(set, "meldewesen.v1.Melderegister") != NULL;
    ab_schema_set_destroy(&set);
    return ok ? 0 : -2;
}

/* Push the set into a new registry over an in-memory store, check an offer against it. */
static int
op_registry_push(void *arg)
{
    s_set_arg_t *a = arg;
    char err[512] = "";
    brk_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    brk_store_t *st = brk_store_open(NULL, err, sizeof err);
    if (!st)
        return s_has_text(err) ? -1 : -2;
    brk_registry_t *r = brk_registry_new(&cfg, st, err, sizeof err);
    if (!r) {
        brk_store_close(&st);
        return s_has_text(err) ? -1 : -2;
    }
    Amtsbote__V1__SchemaPushRequest req = AMTSBOTE__V1__SCHEMA_PUSH_REQUEST__INIT;
    req.descriptor_set.data = a->set;
    req.descriptor_set.len = a->len;
    uint8_t packed[65536];
    size_t plen = amtsbote__v1__schema_push_request__pack(&req, packed);
    uint8_t *out = NULL;
    size_t out_len = 0;
    const char *schema = NULL;
    brk_verdict_t v;
    memset(&v, 0, sizeof v);
    int rc = brk_registry_call(r, "bund.bmi", "amtsbote.v1.Broker/SchemaPush", packed, plen,
                               1700000000000ull, &out, &out_len, &schema, &v);
    int result;
    if (rc != 0) {
        result = out == NULL && s_has_text(v.text) ? -1 : -2;
    } else {
        Amtsbote__V1__SchemaPushReply *reply =
            amtsbote__v1__schema_push_reply__unpack(NULL, out_len, out);
        if (!reply) {
            result = -1; /* the reply itself did not unpack for want of memory: the test's */
        } else if (!reply->accepted) {
            /* refused as a whole: only for want of memory, and then it says so */
            result = s_has_text(reply->error) ? -1 : -2;
        } else {
            brk_verdict_t v2;
            result = brk_registry_check_offer(r, "meldewesen.v1.Melderegister", &v2) == 0 &&
                             brk_registry_check_offer(r, "meldewesen.v1.Melderegister/Nichts",
                                                      &v2) == AB_EUNKNOWN_SERVICE
                         ? 0
                         : -2;
            /* what was stored loads again (a checksum computed without memory read as damage) */
            brk_registry_t *again = brk_registry_new(&cfg, st, err, sizeof err);
            if (!again && result == 0)
                result = s_has_text(err) && !strstr(err, "damaged") ? -1 : -2;
            brk_registry_destroy(&again);
        }
        amtsbote__v1__schema_push_reply__free_unpacked(reply, NULL);
    }
    free(out);
    brk_registry_destroy(&r);
    brk_store_close(&st);
    return result;
}

/* A broker's start with a registered interface: the store (a file that holds the set) opened
 * and the registry made from it, both armed. SQLite keeps its last error on the connection, so
 * the store is closed inside the operation. */
static int
op_registry_load(void *arg)
{
    const char *dir = arg;
    char err[512] = "";
    brk_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    brk_store_t *st = brk_store_open(dir, err, sizeof err);
    if (!st)
        return s_has_text(err) ? -1 : -2;
    brk_registry_t *r = brk_registry_new(&cfg, st, err, sizeof err);
    if (!r) {
        brk_store_close(&st);
        /* never "damaged": the store is whole, only memory ran out */
        return s_has_text(err) && !strstr(err, "damaged") ? -1 : -2;
    }
    brk_verdict_t v;
    brk_registry_stats_t rs;
    brk_registry_stats(r, &rs);
    int ok = rs.files == 1 && brk_registry_check_offer(r, "meldewesen.v1.Melderegister/Nichts",
                                                       &v) == AB_EUNKNOWN_SERVICE;
    brk_registry_destroy(&r);
    brk_store_close(&st);
    return ok ? 0 : -2;
}

typedef struct {
    char *text;
    size_t len;
} s_policy_arg_t;

static int
op_policy(void *arg)
{
    s_policy_arg_t *a = arg;
    ab_policy_t *p = NULL;
    ab_policy_error_t err;
    int rc = ab_policy_load_buffer(a->text, a->len, "policy.yaml", &p, &err);
    if (rc != 0) {
        /* AB_ENOMEM, "policy.yaml: out of memory": never a mistake in the file */
        return s_has_text(err.message) && p == NULL && rc == AB_ENOMEM &&
                       !strcmp(err.message, "policy.yaml: out of memory")
                   ? -1
                   : -2;
    }
    /* the first decision for a participant caches it: on allocation failure it denies */
    ab_policy_decision_t d;
    int allowed =
        ab_policy_decide(p, "bund.bmi", AB_POLICY_CALL,
                         "meldewesen.v1.Melderegister/Meldebescheinigung", "BMG §34", 0, &d);
    int ok = ab_policy_rule_count(p) > 0 && allowed == 1;
    if (!allowed && d.why == AB_POLICY_BAD_REQUEST && s_has_text(d.reason) &&
        !strcmp(d.reason, "out of memory"))
        ok = -1;
    ab_policy_destroy(&p);
    return ok == 1 ? 0 : ok == -1 ? -1 : -2;
}

/* A mailbox record through the store: opened, written, committed, read back, closed. A failure
 * is an error with a reason; a record written is never stored with a wrong checksum, and a sound
 * record is never called damaged (either would dead-letter a message for want of memory). */
typedef struct {
    const char *dir;
    uint64_t seq;
} s_store_arg_t;

static int
s_mail_seen(void *arg, const brk_store_mail_t *m)
{
    return m->payload_len == 1024 && m->payload[1023] == (uint8_t) * (uint64_t *)arg ? 0 : -2;
}

/* An error that puts a shortage of memory on the file or on a statement. */
static int
s_blames_file(const char *err)
{
    return strstr(err, "damaged") || strstr(err, "not a database") || strstr(err, "logic error");
}

static int
op_store_mail(void *arg)
{
    s_store_arg_t *a = arg;
    char err[512] = "";
    brk_store_t *st = brk_store_open(a->dir, err, sizeof err);
    if (!st)
        return s_has_text(err) && !s_blames_file(err) ? -1 : -2;
    uint64_t seq = ++a->seq;
    uint8_t payload[1024], id[16] = {0}, hdr[8] = {8, 7, 0, 0, 0, 0, 0, 0};
    memset(payload, 'p', sizeof payload);
    payload[1023] = (uint8_t)seq;
    memcpy(id, &seq, sizeof seq);
    brk_store_mail_t m = {.seq = seq,
                          .recipient = "kommune.09162000",
                          .kind = BRK_MAIL_MESSAGE,
                          .sender = "bund.bmi",
                          .message_id = id,
                          .message_id_len = sizeof id,
                          .header = hdr,
                          .header_len = sizeof hdr,
                          .payload = payload,
                          .payload_len = sizeof payload,
                          .accepted_ms = 1};
    brk_store_mail_put(st, &m);
    if (brk_store_commit(st, err, sizeof err) != 0) {
        brk_store_close(&st);
        return s_has_text(err) && !s_blames_file(err) ? -1 : -2;
    }
    int rc = brk_store_mail_get(st, seq, s_mail_seen, &seq, err, sizeof err);
    brk_store_close(&st);
    if (rc == AB_EINTERNAL || rc == -2) {
        snprintf(s_error, sizeof s_error, "record %llu read back wrong: %s",
                 (unsigned long long)seq, err);
        return -2;
    }
    return rc == 0 ? 0 : s_has_text(err) ? -1 : -2;
}

static int
s_mail_count(void *arg, const brk_store_mail_t *m)
{
    (void)m;
    ++*(long *)arg;
    return 0;
}

/* ---- tests ------------------------------------------------------------------------------ */

static uint8_t *
s_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

static void
s_report(const char *what, long allocations, long recovered)
{
    print_message("%s: %ld allocations, each failed once: %ld errors, %ld worked around\n", what,
                  allocations, allocations - recovered, recovered);
}

static void
test_wire_decoder(void **state)
{
    (void)state;
    long rec, n = s_every_n("wire decoder", op_wire, NULL, &rec);
    s_report("wire decoder", n, rec);
    assert_int_equal(n, 1); /* the decoder's arena; decoding itself never allocates */
    assert_int_equal(rec, 0);
}

static void
test_schema_set_load(void **state)
{
    (void)state;
    s_set_arg_t a;
    a.set = s_read(AB_TEST_SETS "/meldewesen.pb", &a.len);
    long rec, n = s_every_n("ab_schema_set_load", op_schema, &a, &rec);
    s_report("ab_schema_set_load", n, rec);
    assert_true(n > 10);
    assert_int_equal(rec, 0);
    free(a.set);
}

static void
test_registry_push(void **state)
{
    (void)state;
    s_set_arg_t a;
    a.set = s_read(AB_TEST_SETS "/meldewesen.pb", &a.len);
    long rec, n = s_every_n("registry push", op_registry_push, &a, &rec);
    s_report("registry push", n, rec);
    assert_true(n > 10);
    free(a.set);
}

static void
test_registry_load(void **state)
{
    (void)state;
    s_set_arg_t a;
    a.set = s_read(AB_TEST_SETS "/meldewesen.pb", &a.len);
    char dir[64], err[512];
    snprintf(dir, sizeof dir, "/tmp/amtsbote-alloc-fail-XXXXXX");
    assert_non_null(mkdtemp(dir));
    brk_store_t *st = brk_store_open(dir, err, sizeof err);
    assert_non_null(st);
    brk_store_schema_t row = {.name = "meldewesen/v1/meldewesen.proto",
                              .version = 1,
                              .set = a.set,
                              .set_len = a.len,
                              .pushed_by = "bund.bmi",
                              .pushed_at_ms = 1};
    assert_int_equal(brk_store_schema_put(st, &row, 1, err, sizeof err), 0);
    brk_store_close(&st);
    long rec, n = s_every_n("registry load", op_registry_load, dir, &rec);
    s_report("registry load", n, rec);
    assert_true(n > 10);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    free(a.set);
}

static void
test_policy_load(void **state)
{
    (void)state;
    s_policy_arg_t a;
    a.text = (char *)s_read(AB_POLICY_EXAMPLE, &a.len);
    long rec, n = s_every_n("policy load", op_policy, &a, &rec);
    s_report("policy load", n, rec);
    assert_true(n > 10);
    assert_int_equal(rec, 0);
    free(a.text);
}

static void
test_store_mail(void **state)
{
    (void)state;
    char dir[64], err[512];
    snprintf(dir, sizeof dir, "/tmp/amtsbote-alloc-fail-XXXXXX");
    assert_non_null(mkdtemp(dir));
    s_store_arg_t a = {.dir = dir};
    long rec, n = s_every_n("store mail", op_store_mail, &a, &rec);
    s_report("store mail", n, rec);
    assert_true(n > 10);
    /* unarmed: every record that was committed reads back whole, none damaged */
    brk_store_t *st = brk_store_open(dir, err, sizeof err);
    assert_non_null(st);
    long count = 0;
    int rc = brk_store_mail_each(st, 1, s_mail_count, &count, err, sizeof err);
    if (rc != 0)
        fail_msg("reading the records back: %s", err);
    print_message("store mail: %ld of %llu records committed, all intact\n", count,
                  (unsigned long long)a.seq);
    assert_true(count > 0);
    brk_store_close(&st);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wire_decoder),  cmocka_unit_test(test_schema_set_load),
        cmocka_unit_test(test_registry_push), cmocka_unit_test(test_registry_load),
        cmocka_unit_test(test_policy_load),   cmocka_unit_test(test_store_mail),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
