/* The durable store: see store.h. */
#include "store.h"

#include <openssl/evp.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amtsbote.h"
#include "log.h"

struct brk_store {
    sqlite3 *db;
    char path[4096];
    int layout;
};

/* Each entry moves the layout from version i to i + 1. Append only; never edit a shipped one. */
static const char *const s_migrations[] = {
    /* 1: the schema registry */
    "CREATE TABLE schema_files ("
    "  name TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  descriptor_set BLOB NOT NULL,"
    "  sha256 BLOB NOT NULL,"
    "  pushed_by TEXT NOT NULL,"
    "  pushed_at_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (name, version)"
    ") WITHOUT ROWID;",
};
#define S_LAYOUT ((int)(sizeof s_migrations / sizeof s_migrations[0]))

static int
s_exec(brk_store_t *self, const char *sql, char *err, size_t errlen)
{
    char *msg = NULL;
    if (sqlite3_exec(self->db, sql, NULL, NULL, &msg) == SQLITE_OK)
        return 0;
    snprintf(err, errlen, "%s: %s", self->path, msg ? msg : sqlite3_errmsg(self->db));
    sqlite3_free(msg);
    return AB_EIO;
}

static int
s_pragma_int(brk_store_t *self, const char *sql, int *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(self->db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
        *out = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
        return 0;
    }
    sqlite3_finalize(st);
    return AB_EIO;
}

brk_store_t *
brk_store_open(const char *dir, char *err, size_t errlen)
{
    brk_store_t *self = calloc(1, sizeof *self);
    if (self == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (dir)
        snprintf(self->path, sizeof self->path, "%s/amtsbote.db", dir);
    else
        snprintf(self->path, sizeof self->path, ":memory:");
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(self->path, &self->db, flags, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", self->path,
                 self->db ? sqlite3_errmsg(self->db) : "cannot open");
        goto fail;
    }
    sqlite3_extended_result_codes(self->db, 1);
    /* the loop must never wait on a lock: the data directory's lock keeps others out */
    if (s_exec(self,
               "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL;"
               " PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
               err, errlen) < 0)
        goto fail;
    int layout = 0;
    if (s_pragma_int(self, "PRAGMA user_version;", &layout) < 0) {
        snprintf(err, errlen, "%s: not a database Amtsbote can read: %s", self->path,
                 sqlite3_errmsg(self->db));
        goto fail;
    }
    if (layout > S_LAYOUT) {
        snprintf(err, errlen,
                 "%s has layout version %d, this broker knows up to %d: it was written by a "
                 "newer Amtsbote",
                 self->path, layout, S_LAYOUT);
        goto fail;
    }
    for (int v = layout; v < S_LAYOUT; v++) {
        char sql[64];
        if (s_exec(self, "BEGIN IMMEDIATE;", err, errlen) < 0)
            goto fail;
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d;", v + 1);
        if (s_exec(self, s_migrations[v], err, errlen) < 0 || s_exec(self, sql, err, errlen) < 0 ||
            s_exec(self, "COMMIT;", err, errlen) < 0) {
            sqlite3_exec(self->db, "ROLLBACK;", NULL, NULL, NULL);
            goto fail;
        }
        brk_log(BRK_LOG_INFO, "event=store_migrated file=%s layout=%d", self->path, v + 1);
    }
    self->layout = S_LAYOUT;
    return self;
fail:
    brk_store_close(&self);
    return NULL;
}

void
brk_store_close(brk_store_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    brk_store_t *self = *self_p;
    if (self->db)
        sqlite3_close_v2(self->db);
    free(self);
    *self_p = NULL;
}

int
brk_store_layout_version(const brk_store_t *self)
{
    return self->layout;
}

static void
s_sha256(const uint8_t *data, size_t len, uint8_t out[32])
{
    unsigned int n = 32;
    EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}

int
brk_store_schema_put(brk_store_t *self, brk_store_schema_t *rows, size_t n, char *err,
                     size_t errlen)
{
    sqlite3_stmt *st = NULL;
    if (s_exec(self, "BEGIN IMMEDIATE;", err, errlen) < 0)
        return AB_EIO;
    int rc = sqlite3_prepare_v2(self->db,
                                "INSERT INTO schema_files (name, version, descriptor_set, sha256,"
                                " pushed_by, pushed_at_ms) VALUES (?, ?, ?, ?, ?, ?);",
                                -1, &st, NULL);
    for (size_t i = 0; rc == SQLITE_OK && i < n; i++) {
        brk_store_schema_t *r = &rows[i];
        s_sha256(r->set, r->set_len, r->sha256);
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, r->name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, r->version);
        sqlite3_bind_blob64(st, 3, r->set, r->set_len, SQLITE_STATIC);
        sqlite3_bind_blob(st, 4, r->sha256, 32, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, r->pushed_by, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 6, (sqlite3_int64)r->pushed_at_ms);
        rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
    }
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", self->path, sqlite3_errmsg(self->db));
        sqlite3_finalize(st);
        sqlite3_exec(self->db, "ROLLBACK;", NULL, NULL, NULL);
        brk_log(BRK_LOG_ERROR, "event=store_error op=schema_put reason=\"%s\"", err);
        return AB_EIO;
    }
    sqlite3_finalize(st);
    if (s_exec(self, "COMMIT;", err, errlen) < 0) {
        sqlite3_exec(self->db, "ROLLBACK;", NULL, NULL, NULL);
        brk_log(BRK_LOG_ERROR, "event=store_error op=commit reason=\"%s\"", err);
        return AB_EIO;
    }
    return 0;
}

int
brk_store_schema_each(brk_store_t *self, const char *name, uint32_t version,
                      brk_store_schema_fn *fn, void *arg, char *err, size_t errlen)
{
    const char *sql =
        name ? "SELECT name, version, descriptor_set, sha256, pushed_by, pushed_at_ms"
               " FROM schema_files WHERE name = ?1 AND (version = ?2 OR (?2 = 0 AND version ="
               " (SELECT MAX(version) FROM schema_files WHERE name = ?1)));"
             : "SELECT f.name, f.version, f.descriptor_set, f.sha256, f.pushed_by, f.pushed_at_ms"
               " FROM schema_files f JOIN (SELECT name, MAX(version) AS v FROM schema_files"
               " GROUP BY name) l ON f.name = l.name AND f.version = l.v ORDER BY f.name;";
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(self->db, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", self->path, sqlite3_errmsg(self->db));
        return AB_EIO;
    }
    if (name) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, version);
    }
    int rc = 0, step;
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        brk_store_schema_t row = {0};
        row.name = (const char *)sqlite3_column_text(st, 0);
        row.version = (uint32_t)sqlite3_column_int64(st, 1);
        row.set = sqlite3_column_blob(st, 2);
        row.set_len = (size_t)sqlite3_column_bytes(st, 2);
        const void *sum = sqlite3_column_blob(st, 3);
        int sum_len = sqlite3_column_bytes(st, 3);
        row.pushed_by = (const char *)sqlite3_column_text(st, 4);
        row.pushed_at_ms = (uint64_t)sqlite3_column_int64(st, 5);
        if (row.name == NULL || row.pushed_by == NULL) {
            snprintf(err, errlen, "%s: a schema_files record has no name or publisher", self->path);
            rc = AB_EINTERNAL;
            break;
        }
        s_sha256(row.set ? row.set : (const uint8_t *)"", row.set_len, row.sha256);
        if (sum_len != 32 || memcmp(sum, row.sha256, 32) != 0) {
            snprintf(err, errlen,
                     "%s: schema file %s version %u is damaged (its SHA-256 does not match); "
                     "restore the database from a backup",
                     self->path, row.name, row.version);
            rc = AB_EINTERNAL;
            break;
        }
        rc = fn(arg, &row);
    }
    if (rc == 0 && step != SQLITE_DONE) {
        snprintf(err, errlen, "%s: %s", self->path, sqlite3_errmsg(self->db));
        rc = AB_EIO;
    }
    sqlite3_finalize(st);
    return rc;
}
