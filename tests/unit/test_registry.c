/*
 * Unit tests for broker/store.c and broker/registry.c: the store's layout and checksums, and the
 * registry's decisions (push, refusals, checks of calls, replies, offers and messages, reload
 * from the store) without a running broker.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "amtsbote.h"
#include "amtsbote/v1/amtsbote.pb-c.h"
#include "config.h"
#include "registry.h"
#include "store.h"

#define METHOD "meldewesen.v1.Melderegister/Meldebescheinigung"

static char s_dir[64];

static uint8_t *
s_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static int
setup(void **state)
{
    (void)state;
    snprintf(s_dir, sizeof s_dir, "/tmp/amtsbote-registry-XXXXXX");
    return mkdtemp(s_dir) ? 0 : -1;
}

static int
teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Calls a registry method with a packed request; returns the rc and the reply bytes. */
static int
s_call(brk_registry_t *r, const char *who, const char *method, const ProtobufCMessage *req,
       uint8_t **out, size_t *out_len, brk_verdict_t *v)
{
    size_t len = req ? protobuf_c_message_get_packed_size(req) : 0;
    uint8_t *buf = malloc(len ? len : 1);
    if (req)
        protobuf_c_message_pack(req, buf);
    const char *schema = NULL;
    int rc =
        brk_registry_call(r, who, method, buf, len, 1700000000000ull, out, out_len, &schema, v);
    free(buf);
    return rc;
}

/* Pushes the descriptor set in file `set`; returns the decoded reply (caller frees). */
static Amtsbote__V1__SchemaPushReply *
s_push(brk_registry_t *r, const char *who, const char *set, int dry_run)
{
    size_t len;
    uint8_t *bytes = s_read(set, &len);
    Amtsbote__V1__SchemaPushRequest req = AMTSBOTE__V1__SCHEMA_PUSH_REQUEST__INIT;
    req.descriptor_set.data = bytes;
    req.descriptor_set.len = len;
    req.dry_run = dry_run;
    uint8_t *out = NULL;
    size_t out_len = 0;
    brk_verdict_t v;
    assert_int_equal(s_call(r, who, "amtsbote.v1.Broker/SchemaPush", &req.base, &out, &out_len, &v),
                     0);
    free(bytes);
    Amtsbote__V1__SchemaPushReply *reply =
        amtsbote__v1__schema_push_reply__unpack(NULL, out_len, out);
    free(out);
    assert_non_null(reply);
    return reply;
}

/* Counts the rows it is shown. */
static int
fn(void *arg, const brk_store_schema_t *row)
{
    (void)row;
    (*(int *)arg)++;
    return 0;
}

static void
test_store_layout_and_checksums(void **state)
{
    (void)state;
    char err[512];
    brk_store_t *st = brk_store_open(s_dir, err, sizeof err);
    assert_non_null(st);
    assert_int_equal(brk_store_layout_version(st), 2);
    brk_store_schema_t rows[2] = {
        {.name = "a/v1/a.proto",
         .version = 1,
         .set = (const uint8_t *)"eins",
         .set_len = 4,
         .pushed_by = "bund.bmi",
         .pushed_at_ms = 1},
        {.name = "a/v1/a.proto",
         .version = 2,
         .set = (const uint8_t *)"zwei",
         .set_len = 4,
         .pushed_by = "bund.bmi",
         .pushed_at_ms = 2},
    };
    assert_int_equal(brk_store_schema_put(st, rows, 2, err, sizeof err), 0);
    /* a version stored twice is refused as a whole, and nothing of it stays */
    brk_store_schema_t again[2] = {rows[1], rows[1]};
    again[0].name = "b/v1/b.proto";
    assert_int_equal(brk_store_schema_put(st, again, 2, err, sizeof err), AB_EIO);
    brk_store_close(&st);
    assert_null(st);

    /* reopened: the latest version of each file, its checksum verified */
    st = brk_store_open(s_dir, err, sizeof err);
    assert_non_null(st);
    int seen = 0;
    assert_int_equal(brk_store_schema_each(st, NULL, 0, fn, &seen, err, sizeof err), 0);
    assert_int_equal(seen, 1);
    brk_store_close(&st);

    /* a record changed behind the store's back is named, not served */
    char path[128];
    snprintf(path, sizeof path, "%s/amtsbote.db", s_dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "UPDATE schema_files SET descriptor_set = x'7a77656a'"
                                  " WHERE version = 2",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    st = brk_store_open(s_dir, err, sizeof err);
    assert_non_null(st);
    assert_int_equal(brk_store_schema_each(st, NULL, 0, fn, &seen, err, sizeof err), AB_EINTERNAL);
    assert_non_null(strstr(err, "schema file a/v1/a.proto version 2 is damaged"));
    brk_store_close(&st);

    /* a database from a newer broker is refused, not guessed at */
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_null(brk_store_open(s_dir, err, sizeof err));
    assert_non_null(strstr(err, "layout version 99"));
    /* neither is a file that is no database */
    FILE *f = fopen(path, "wb");
    fputs("kein SQLite", f);
    fclose(f);
    char side[160];
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
    assert_null(brk_store_open(s_dir, err, sizeof err));
    assert_non_null(strstr(err, "amtsbote.db"));
}

static void
test_registry_decisions(void **state)
{
    (void)state;
    char err[512];
    brk_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    brk_store_t *st = brk_store_open(NULL, err, sizeof err); /* in memory */
    assert_non_null(st);
    brk_registry_t *r = brk_registry_new(&cfg, st, err, sizeof err);
    assert_non_null(r);
    brk_verdict_t v;

    /* nothing registered: everything passes, nothing is validated */
    assert_int_equal(brk_registry_check_call(r, METHOD, "", (const uint8_t *)"\xff", 1, 0, &v), 0);
    assert_int_equal(brk_registry_check_offer(r, "meldewesen.v1.Melderegister", &v), 0);

    /* a dry run stores nothing */
    Amtsbote__V1__SchemaPushReply *p = s_push(r, "bund.bmi", AB_TEST_SETS "/meldewesen.pb", 1);
    assert_false(p->accepted);
    assert_int_equal(p->n_files, 1);
    assert_string_equal(p->files[0]->status, "new");
    amtsbote__v1__schema_push_reply__free_unpacked(p, NULL);
    assert_int_equal(brk_registry_check_offer(r, METHOD "x", &v), 0);

    p = s_push(r, "bund.bmi", AB_TEST_SETS "/meldewesen.pb", 0);
    assert_true(p->accepted);
    assert_int_equal(p->files[0]->version, 1);
    amtsbote__v1__schema_push_reply__free_unpacked(p, NULL);
    brk_registry_stats_t rs;
    brk_registry_stats(r, &rs);
    assert_int_equal(rs.files, 1);
    assert_true(rs.types >= 10);

    /* offers bind to the interface */
    assert_int_equal(brk_registry_check_offer(r, "meldewesen.v1.Melderegister", &v), 0);
    assert_int_equal(brk_registry_check_offer(r, METHOD, &v), 0);
    assert_int_equal(brk_registry_check_offer(r, "meldewesen.v1.Melderegister/Falsch", &v),
                     AB_EUNKNOWN_SERVICE);
    assert_non_null(strstr(v.text, "has no method Falsch"));

    /* calls and replies */
    assert_int_equal(brk_registry_check_call(r, METHOD, NULL, (const uint8_t *)"", 0, 0, &v), 0);
    assert_int_equal(brk_registry_check_call(r, METHOD, "meldewesen.v1.Meldebescheinigung",
                                             (const uint8_t *)"", 0, 0, &v),
                     AB_ESCHEMA_INVALID);
    assert_non_null(strstr(v.text, "takes meldewesen.v1.MeldebescheinigungAnfrage"));
    assert_int_equal(brk_registry_check_call(r, METHOD, "meldewesen.v1.Meldebescheinigung",
                                             (const uint8_t *)"", 0, 1, &v),
                     0);
    static const uint8_t bad[] = {0x0a, 0x05, 0x0a, 0x03, 'M', 0xff, 'r'};
    assert_int_equal(brk_registry_check_call(r, METHOD, NULL, bad, sizeof bad, 0, &v),
                     AB_ESCHEMA_INVALID);
    assert_string_equal(v.field, "name.familienname");
    static const uint8_t cut[] = {0x0a, 0x05, 0x0a};
    assert_int_equal(brk_registry_check_call(r, METHOD, NULL, cut, sizeof cut, 0, &v),
                     AB_ESCHEMA_INVALID);
    assert_string_equal(v.field, ""); /* the message as a whole */
    assert_null(strstr(v.text, ": :"));
    assert_int_equal(brk_registry_check_call(r, "meldewesen.v1.Melderegister/Nein", NULL,
                                             (const uint8_t *)"", 0, 0, &v),
                     AB_EUNKNOWN_SERVICE);
    /* messages that claim a registered type; an unknown type passes */
    static const uint8_t datum_bad[] = {0x0a, 0x01, 0x00};
    assert_int_equal(
        brk_registry_check_message(r, "meldewesen.v1.Datum", datum_bad, sizeof datum_bad, &v),
        AB_ESCHEMA_INVALID);
    assert_string_equal(v.field, "jahr");
    assert_int_equal(brk_registry_check_message(r, "x.v1.Frei", datum_bad, sizeof datum_bad, &v),
                     0);
    assert_int_equal(
        brk_registry_check_message(r, "meldewesen.v1.Wohnungsstatus", datum_bad, 3, &v), 0);
    brk_registry_stats(r, &rs);
    assert_true(rs.validated >= 5);
    assert_true(rs.invalid >= 3);

    /* the same set again: unchanged; from someone else, changed: refused */
    p = s_push(r, "land.by.stmi", AB_TEST_SETS "/meldewesen.pb", 0);
    assert_true(p->accepted);
    assert_string_equal(p->files[0]->status, "unchanged");
    amtsbote__v1__schema_push_reply__free_unpacked(p, NULL);
    p = s_push(r, "land.by.stmi", AB_TEST_SETS "/meldewesen-v2.pb", 0);
    assert_false(p->accepted);
    assert_string_equal(p->files[0]->status, "refused");
    assert_string_equal(p->files[0]->problems[0]->rule, "not-publisher");
    amtsbote__v1__schema_push_reply__free_unpacked(p, NULL);
    p = s_push(r, "bund.bmi", AB_TEST_SETS "/meldewesen-v2.pb", 0);
    assert_true(p->accepted);
    assert_string_equal(p->files[0]->status, "updated");
    assert_int_equal(p->files[0]->version, 2);
    amtsbote__v1__schema_push_reply__free_unpacked(p, NULL);

    /* get by type name, by method, by file; an older version from the store */
    Amtsbote__V1__SchemaGetRequest g = AMTSBOTE__V1__SCHEMA_GET_REQUEST__INIT;
    const char *names[] = {"meldewesen.v1.Anschrift", METHOD, "meldewesen/v1/meldewesen.proto"};
    for (size_t i = 0; i < 3; i++) {
        g.name = (char *)names[i];
        uint8_t *out = NULL;
        size_t out_len = 0;
        assert_int_equal(
            s_call(r, "kommune.x", "amtsbote.v1.Broker/SchemaGet", &g.base, &out, &out_len, &v), 0);
        Amtsbote__V1__SchemaGetReply *gr =
            amtsbote__v1__schema_get_reply__unpack(NULL, out_len, out);
        assert_non_null(gr);
        assert_int_equal(gr->file->version, 2);
        assert_string_equal(gr->file->pushed_by, "bund.bmi");
        amtsbote__v1__schema_get_reply__free_unpacked(gr, NULL);
        free(out);
    }
    g.version = 1;
    uint8_t *out = NULL;
    size_t out_len = 0;
    assert_int_equal(
        s_call(r, "kommune.x", "amtsbote.v1.Broker/SchemaGet", &g.base, &out, &out_len, &v), 0);
    Amtsbote__V1__SchemaGetReply *gr = amtsbote__v1__schema_get_reply__unpack(NULL, out_len, out);
    size_t v1_len;
    uint8_t *v1 = s_read(AB_TEST_SETS "/meldewesen.pb", &v1_len);
    assert_int_equal(gr->file->version, 1);
    assert_int_equal(gr->descriptor_set.len, v1_len);
    assert_memory_equal(gr->descriptor_set.data, v1, v1_len);
    free(v1);
    amtsbote__v1__schema_get_reply__free_unpacked(gr, NULL);
    free(out);
    g.version = 7;
    assert_int_equal(
        s_call(r, "kommune.x", "amtsbote.v1.Broker/SchemaGet", &g.base, &out, &out_len, &v),
        AB_EINVAL);
    assert_non_null(strstr(v.text, "has no version 7"));

    /* a new registry on the same store has the same files */
    brk_registry_destroy(&r);
    assert_null(r);
    r = brk_registry_new(&cfg, st, err, sizeof err);
    assert_non_null(r);
    brk_registry_stats(r, &rs);
    assert_int_equal(rs.files, 1);
    assert_int_equal(brk_registry_check_call(r, METHOD, NULL, bad, sizeof bad, 0, &v),
                     AB_ESCHEMA_INVALID);
    brk_registry_destroy(&r);
    brk_store_close(&st);
}

static void
test_require_schema(void **state)
{
    (void)state;
    char err[512];
    brk_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    char p1[] = "meldewesen.*", p2[] = "x.v1.Genau";
    cfg.require_schema[0] = p1;
    cfg.require_schema[1] = p2;
    cfg.nrequire_schema = 2;
    brk_store_t *st = brk_store_open(NULL, err, sizeof err);
    brk_registry_t *r = brk_registry_new(&cfg, st, err, sizeof err);
    assert_non_null(r);
    brk_verdict_t v;
    assert_int_equal(brk_registry_check_offer(r, "meldewesen.v1.Melderegister", &v),
                     AB_EUNKNOWN_SERVICE);
    assert_non_null(strstr(v.text, "needs a registered interface"));
    assert_int_equal(brk_registry_check_offer(r, "x.v1.Genau/M", &v), AB_EUNKNOWN_SERVICE);
    assert_int_equal(brk_registry_check_offer(r, "x.v1.Genauer", &v), 0);
    assert_int_equal(brk_registry_check_call(r, METHOD, NULL, (const uint8_t *)"", 0, 0, &v),
                     AB_EUNKNOWN_SERVICE);
    Amtsbote__V1__SchemaPushReply *p = s_push(r, "bund.bmi", AB_TEST_SETS "/meldewesen.pb", 0);
    assert_true(p->accepted);
    amtsbote__v1__schema_push_reply__free_unpacked(p, NULL);
    assert_int_equal(brk_registry_check_offer(r, "meldewesen.v1.Melderegister", &v), 0);
    assert_int_equal(brk_registry_check_call(r, METHOD, NULL, (const uint8_t *)"", 0, 0, &v), 0);
    brk_registry_destroy(&r);
    brk_store_close(&st);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_store_layout_and_checksums, setup, teardown),
        cmocka_unit_test(test_registry_decisions),
        cmocka_unit_test(test_require_schema),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
