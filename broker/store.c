/* The durable store: see store.h. */
#include "store.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "amtsbote.h"
#include "log.h"
#include "wire.h"

#define AB_MESSAGE_ID_LEN_STORE AB_MESSAGE_ID_LEN

/* Prepared statements of the write path, made once. */
enum {
    Q_MAIL_PUT,
    Q_MAIL_DEL,
    Q_MAIL_UPD,
    Q_MAIL_GET,
    Q_SENT_PUT,
    Q_SENT_GET,
    Q_SENT_PURGE,
    Q_SUB_PUT,
    Q_SUB_DEL,
    Q_SUB_ACKED,
    Q_EVENT_PUT,
    Q_EVENT_GET,
    Q_EVENT_PURGE,
    Q_COUNT
};

struct brk_store {
    sqlite3 *db;
    char path[4096];
    int layout;
    sqlite3_stmt *q[Q_COUNT];
    int in_txn;  /* a turn's transaction is open */
    int turn_rc; /* the first write error of this turn (rolled back at commit) */
    char turn_err[4608];
    int failed; /* a write failed in a way that is not "disk full": no more writes */
    char failed_err[4608];
    uint64_t cache_kib; /* brk_store_set_cache(), again after a reopen */
    brk_store_stats_t st;
    EVP_MD *md;
    EVP_MD_CTX *mdctx;
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
    /* 2: mailboxes, what was sent (dedup and timelines), durable subscriptions and events */
    "CREATE TABLE mail ("
    "  seq INTEGER PRIMARY KEY,"
    "  recipient TEXT NOT NULL,"
    "  kind INTEGER NOT NULL,"
    "  sender TEXT NOT NULL,"
    "  message_id BLOB NOT NULL,"
    "  header BLOB NOT NULL,"
    "  payload BLOB NOT NULL,"
    "  accepted_ms INTEGER NOT NULL,"
    "  expires_ms INTEGER NOT NULL,"
    "  attempts INTEGER NOT NULL,"
    "  dead INTEGER NOT NULL,"
    "  sha256 BLOB NOT NULL"
    ");"
    "CREATE TABLE sent ("
    "  sender TEXT NOT NULL,"
    "  message_id BLOB NOT NULL,"
    "  recipient TEXT NOT NULL,"
    "  seq INTEGER NOT NULL,"
    "  size INTEGER NOT NULL,"
    "  accepted_ms INTEGER NOT NULL,"
    "  delivered_ms INTEGER NOT NULL,"
    "  ended_ms INTEGER NOT NULL,"
    "  state INTEGER NOT NULL,"
    "  attempts INTEGER NOT NULL,"
    "  PRIMARY KEY (sender, message_id)"
    ") WITHOUT ROWID;"
    "CREATE INDEX sent_by_end ON sent (ended_ms) WHERE ended_ms > 0;"
    "CREATE TABLE subscriptions ("
    "  participant TEXT NOT NULL,"
    "  name TEXT NOT NULL,"
    "  pattern TEXT NOT NULL,"
    "  acked_upto INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (participant, name)"
    ") WITHOUT ROWID;"
    "CREATE TABLE events ("
    "  seq INTEGER PRIMARY KEY,"
    "  topic TEXT NOT NULL,"
    "  sender TEXT NOT NULL,"
    "  message_id BLOB NOT NULL,"
    "  header BLOB NOT NULL,"
    "  payload BLOB NOT NULL,"
    "  published_ms INTEGER NOT NULL,"
    "  sha256 BLOB NOT NULL"
    ");",
};
#define S_LAYOUT ((int)(sizeof s_migrations / sizeof s_migrations[0]))

static void s_io_detail(brk_store_t *self, int sqlite_rc, char *out, size_t cap);

/* SQLite's own report of the latest failed system call ("full_fsync(/data/amtsbote.db-wal) -
 * Input/output error"): it names the file (the WAL or the database) and the system's error,
 * which the result code does not. Only the loop thread uses SQLite. */
static char s_oserr[400];

static void
s_sqlite_log(void *arg, int code, const char *msg)
{
    (void)arg;
    int primary = code & 0xff;
    if ((primary == SQLITE_IOERR || primary == SQLITE_FULL || primary == SQLITE_CANTOPEN) &&
        strncmp(msg, "os_unix.c:", 10) == 0) {
        /* "os_unix.c:LINE: (5) full_fsync(PATH) - Input/output error": "full_fsync(PATH):
         * Input/output error" (the text after " - " is empty on some builds: the number says it) */
        const char *p = strstr(msg, ": (");
        const char *call = p ? strchr(p + 3, ' ') : NULL;
        const char *end = call ? strstr(call, ") - ") : NULL;
        int en = p ? atoi(p + 3) : 0;
        if (call && end && en > 0)
            snprintf(s_oserr, sizeof s_oserr, "%.*s): %s", (int)(end - call - 1), call + 1,
                     strerror(en));
        else
            snprintf(s_oserr, sizeof s_oserr, "%s", msg);
    } else if (primary == SQLITE_NOTICE) {
        /* e.g. "recovered 12 frames from WAL file": what an open found after a failure */
        brk_log(BRK_LOG_INFO, "event=sqlite_notice code=%d message=\"%s\"", code, msg);
    }
}

static int
s_exec(brk_store_t *self, const char *sql, char *err, size_t errlen)
{
    char *msg = NULL;
    s_oserr[0] = '\0';
    int rc = sqlite3_exec(self->db, sql, NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        return 0;
    char detail[420];
    s_io_detail(self, sqlite3_extended_errcode(self->db), detail, sizeof detail);
    snprintf(err, errlen, "%s: %s%s", self->path, msg ? msg : sqlite3_errmsg(self->db), detail);
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

/* Opens the connection to self->path with the store's settings. On failure self->db may still be
 * set (closed by the caller). */
static int
s_connect(brk_store_t *self, char *err, size_t errlen)
{
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int orc = sqlite3_open_v2(self->path, &self->db, flags, NULL);
    if (orc != SQLITE_OK) {
        /* without a handle (out of memory) the code is all SQLite says */
        snprintf(err, errlen, "%s: %s", self->path,
                 self->db ? sqlite3_errmsg(self->db) : sqlite3_errstr(orc));
        return AB_EIO;
    }
    sqlite3_extended_result_codes(self->db, 1);
    /* the loop must never wait on a lock: the data directory's lock keeps others out */
    if (s_exec(self,
               /* a new database gets 16 KiB pages: a group commit of a few hundred kilobyte
                * messages is a quarter of the write calls (an existing one keeps its size) */
               "PRAGMA page_size=16384; PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL;"
               " PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;"
               /* the working set of a busy broker (mailbox tails, the dedup index) stays in
                * memory; the WAL is checkpointed at 256 pages (4 MiB with 16 KiB pages), which
                * keeps a nearly full disk usable */
               " PRAGMA cache_size=-65536; PRAGMA wal_autocheckpoint=256;"
               " PRAGMA journal_size_limit=16777216; PRAGMA temp_store=MEMORY;",
               err, errlen) < 0)
        return AB_EIO;
    if (self->cache_kib) {
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA cache_size=-%llu;", (unsigned long long)self->cache_kib);
        sqlite3_exec(self->db, sql, NULL, NULL, NULL);
    }
    return 0;
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
    /* before SQLite's first use in the process; refused (and harmless) after it */
    sqlite3_config(SQLITE_CONFIG_LOG, s_sqlite_log, NULL);
    if (s_connect(self, err, errlen) != 0)
        goto fail;
    int layout = 0;
    if (s_pragma_int(self, "PRAGMA user_version;", &layout) < 0) {
        if (sqlite3_errcode(self->db) == SQLITE_NOMEM) /* the file is not at fault */
            snprintf(err, errlen, "%s: cannot read its layout version: out of memory", self->path);
        else
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
    if (self->in_txn) {
        char err[256];
        brk_store_commit(self, err, sizeof err);
    }
    for (int i = 0; i < Q_COUNT; i++)
        sqlite3_finalize(self->q[i]);
    EVP_MD_CTX_free(self->mdctx);
    EVP_MD_free(self->md);
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

/* SHA-256 of a descriptor set; 0, or -1 when OpenSSL could not allocate. */
static int
s_sha256(const uint8_t *data, size_t len, uint8_t out[32])
{
    unsigned int n = 32;
    if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 && n == 32)
        return 0;
    ERR_clear_error(); /* out of memory is the one way it fails: nothing to log from OpenSSL */
    return -1;
}

int
brk_store_schema_put(brk_store_t *self, brk_store_schema_t *rows, size_t n, char *err,
                     size_t errlen)
{
    sqlite3_stmt *st = NULL;
    /* a push is its own transaction: the turn's writes so far are committed first */
    if (self->in_txn || self->turn_rc) {
        char terr[4608];
        int trc = brk_store_commit(self, terr, sizeof terr);
        if (trc) {
            self->turn_rc = trc; /* the turn's owner learns of it at its own commit */
            snprintf(self->turn_err, sizeof self->turn_err, "%s", terr);
            snprintf(err, errlen, "%s", terr);
            return AB_EIO;
        }
    }
    if (self->failed) {
        snprintf(err, errlen, "%s", self->failed_err);
        return AB_EIO;
    }
    if (s_exec(self, "BEGIN IMMEDIATE;", err, errlen) < 0)
        return AB_EIO;
    int rc = sqlite3_prepare_v2(self->db,
                                "INSERT INTO schema_files (name, version, descriptor_set, sha256,"
                                " pushed_by, pushed_at_ms) VALUES (?, ?, ?, ?, ?, ?);",
                                -1, &st, NULL);
    for (size_t i = 0; rc == SQLITE_OK && i < n; i++) {
        brk_store_schema_t *r = &rows[i];
        if (s_sha256(r->set, r->set_len, r->sha256) != 0) {
            rc = SQLITE_NOMEM; /* a wrong checksum stored would read as damage at the next start */
            break;
        }
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
        snprintf(err, errlen, "%s: %s", self->path,
                 rc == SQLITE_NOMEM ? "out of memory" : sqlite3_errmsg(self->db));
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
        /* SQLite gives NULL for a value it could not allocate: that is not damage */
        if ((row.name == NULL || row.pushed_by == NULL || (row.set == NULL && row.set_len > 0) ||
             (sum == NULL && sum_len > 0)) &&
            sqlite3_errcode(self->db) == SQLITE_NOMEM) {
            snprintf(err, errlen, "%s: out of memory reading the schema files", self->path);
            rc = AB_ENOMEM;
            break;
        }
        if (row.name == NULL || row.pushed_by == NULL) {
            snprintf(err, errlen, "%s: a schema_files record has no name or publisher", self->path);
            rc = AB_EINTERNAL;
            break;
        }
        if (s_sha256(row.set ? row.set : (const uint8_t *)"", row.set_len, row.sha256) != 0) {
            snprintf(err, errlen, "%s: out of memory checking schema file %s", self->path,
                     row.name);
            rc = AB_ENOMEM;
            break;
        }
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

/* ---- the write path: one transaction per loop turn ------------------------------------------ */

static const char *const s_sql[Q_COUNT] = {
    [Q_MAIL_PUT] = "INSERT INTO mail (seq, recipient, kind, sender, message_id, header, payload,"
                   " accepted_ms, expires_ms, attempts, dead, sha256)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);",
    [Q_MAIL_DEL] = "DELETE FROM mail WHERE seq = ?;",
    [Q_MAIL_UPD] = "UPDATE mail SET attempts = ?, dead = ? WHERE seq = ?;",
    [Q_MAIL_GET] = "SELECT seq, recipient, kind, sender, message_id, header, payload, accepted_ms,"
                   " expires_ms, attempts, dead, sha256 FROM mail WHERE seq = ?;",
    [Q_SENT_PUT] = "INSERT OR REPLACE INTO sent (sender, message_id, recipient, seq, size,"
                   " accepted_ms, delivered_ms, ended_ms, state, attempts)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?);",
    [Q_SENT_GET] = "SELECT sender, message_id, recipient, seq, size, accepted_ms, delivered_ms,"
                   " ended_ms, state, attempts FROM sent WHERE sender = ? AND message_id = ?;",
    /* in slices: a day of traffic must not block the loop in one statement */
    [Q_SENT_PURGE] = "DELETE FROM sent WHERE (sender, message_id) IN (SELECT sender, message_id"
                     " FROM sent WHERE ended_ms > 0 AND ended_ms < ? LIMIT 5000);",
    [Q_SUB_PUT] = "INSERT OR REPLACE INTO subscriptions (participant, name, pattern, acked_upto,"
                  " created_ms) VALUES (?, ?, ?, ?, ?);",
    [Q_SUB_DEL] = "DELETE FROM subscriptions WHERE participant = ? AND name = ?;",
    [Q_SUB_ACKED] = "UPDATE subscriptions SET acked_upto = ? WHERE participant = ? AND name = ?;",
    [Q_EVENT_PUT] = "INSERT INTO events (seq, topic, sender, message_id, header, payload,"
                    " published_ms, sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?);",
    [Q_EVENT_GET] = "SELECT seq, topic, sender, message_id, header, payload, published_ms, sha256"
                    " FROM events WHERE seq = ?;",
    [Q_EVENT_PURGE] = "DELETE FROM events WHERE seq <= ? OR published_ms < ?;",
};

static sqlite3_stmt *
s_q(brk_store_t *self, int q)
{
    if (!self->q[q] && sqlite3_prepare_v3(self->db, s_sql[q], -1, SQLITE_PREPARE_PERSISTENT,
                                          &self->q[q], NULL) != SQLITE_OK) {
        brk_log(BRK_LOG_ERROR, "event=store_error op=prepare reason=\"%s\"",
                sqlite3_errmsg(self->db));
        return NULL;
    }
    sqlite3_reset(self->q[q]);
    sqlite3_clear_bindings(self->q[q]);
    return self->q[q];
}

/* What an I/O error of SQLite came from: SQLite's report of the failed system call, naming the
 * file and the system's error (" (full_fsync(DATA/amtsbote.db-wal): Input/output error)"), else
 * the kind of call (" (write failed)"), else "". */
static void
s_io_detail(brk_store_t *self, int sqlite_rc, char *out, size_t cap)
{
    const char *call = NULL;
    switch (sqlite_rc) {
    case SQLITE_IOERR_WRITE:
        call = "write";
        break;
    case SQLITE_IOERR_FSYNC:
        call = "fsync";
        break;
    case SQLITE_IOERR_DIR_FSYNC:
        call = "fsync of the directory";
        break;
    case SQLITE_IOERR_TRUNCATE:
        call = "truncate";
        break;
    case SQLITE_IOERR_READ:
    case SQLITE_IOERR_SHORT_READ:
        call = "read";
        break;
    default:
        break;
    }
    (void)self;
    if (s_oserr[0])
        snprintf(out, cap, " (%s)", s_oserr);
    else if (call)
        snprintf(out, cap, " (%s failed)", call);
    else
        out[0] = '\0';
    s_oserr[0] = '\0';
}

/* Notes the first error of the turn; the commit rolls the turn back. */
static int
s_write_failed(brk_store_t *self, int sqlite_rc, const char *op)
{
    if (self->turn_rc == 0) {
        int full = (sqlite_rc & 0xff) == SQLITE_FULL;
        char detail[420];
        s_io_detail(self, sqlite_rc, detail, sizeof detail);
        self->turn_rc = full ? AB_EUNAVAILABLE : AB_EIO;
        snprintf(self->turn_err, sizeof self->turn_err, "%s: %s%s%s", self->path,
                 sqlite3_errstr(sqlite_rc), detail, full ? " (the disk is full)" : "");
        brk_log(BRK_LOG_ERROR, "event=store_error op=%s reason=\"%s\"", op, self->turn_err);
    }
    return self->turn_rc;
}

/* Opens the turn's transaction on the first write. */
static int
s_begin(brk_store_t *self)
{
    if (self->failed) {
        /* the turn's commit must fail too, so that its owner undoes it */
        if (self->turn_rc == 0) {
            self->turn_rc = AB_EIO;
            snprintf(self->turn_err, sizeof self->turn_err, "%s", self->failed_err);
        }
        return AB_EIO;
    }
    if (self->turn_rc)
        return self->turn_rc;
    if (self->in_txn)
        return 0;
    s_oserr[0] = '\0';
    int rc = sqlite3_exec(self->db, "BEGIN;", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return s_write_failed(self, rc, "begin");
    self->in_txn = 1;
    return 0;
}

/* Runs a write statement in the turn's transaction. */
static int
s_step_write(brk_store_t *self, sqlite3_stmt *st, const char *op)
{
    if (!st) { /* the statement's preparation failed: its reason, e.g. out of memory */
        int why = sqlite3_errcode(self->db);
        return s_write_failed(self, why != SQLITE_OK ? why : SQLITE_ERROR, op);
    }
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return s_write_failed(self, rc, op);
    self->st.writes++;
    return 0;
}

int
brk_store_writable(const brk_store_t *self, char *err, size_t errlen)
{
    if (self->failed) {
        snprintf(err, errlen, "%s", self->failed_err);
        return AB_EIO;
    }
    if (self->turn_rc) {
        snprintf(err, errlen, "%s", self->turn_err);
        return self->turn_rc;
    }
    return 0;
}

int
brk_store_commit(brk_store_t *self, char *err, size_t errlen)
{
    if (!self->in_txn) {
        int rc = self->turn_rc;
        if (rc)
            snprintf(err, errlen, "%s", self->turn_err);
        self->turn_rc = 0;
        return rc;
    }
    self->in_txn = 0;
    int rc = self->turn_rc;
    if (rc == 0) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int src = sqlite3_exec(self->db, "COMMIT;", NULL, NULL, NULL);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        int64_t ns = (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000 + (t1.tv_nsec - t0.tv_nsec);
        uint64_t us = ns > 0 ? (uint64_t)ns / 1000u : 0;
        self->st.commits++;
        self->st.last_commit_us = us;
        if (us / 1000 > self->st.commit_ms_max)
            self->st.commit_ms_max = us / 1000;
        if (src != SQLITE_OK)
            rc = s_write_failed(self, src, "commit");
    }
    if (rc != 0) {
        snprintf(err, errlen, "%s", self->turn_err);
        if (sqlite3_get_autocommit(self->db) == 0)
            sqlite3_exec(self->db, "ROLLBACK;", NULL, NULL, NULL);
        self->st.rollbacks++;
        if (rc == AB_EIO && !self->failed) {
            /* after a failed write or fsync nothing about the file can be trusted: stop */
            self->failed = 1;
            snprintf(self->failed_err, sizeof self->failed_err, "%s", self->turn_err);
        }
    }
    self->turn_rc = 0;
    return rc;
}

int
brk_store_recover(brk_store_t *self, char *err, size_t errlen)
{
    if (!self->failed)
        return 0;
    if (strcmp(self->path, ":memory:") == 0) {
        snprintf(err, errlen, "%s (an in-memory store is not opened again)", self->failed_err);
        return AB_EIO;
    }
    if (self->in_txn || self->turn_rc) {
        char terr[4608];
        brk_store_commit(self, terr, sizeof terr); /* rolled back: the store has failed */
    }
    /* the connection's page cache may hold what a failed write or fsync left behind: it goes,
     * and the new connection reads the file again (and runs the WAL's recovery) */
    for (int i = 0; i < Q_COUNT; i++) {
        sqlite3_finalize(self->q[i]);
        self->q[i] = NULL;
    }
    sqlite3_close_v2(self->db);
    self->db = NULL;
    if (s_connect(self, err, errlen) != 0)
        return AB_EIO;
    /* can it write again? a transaction that changes a page, committed with an fsync (first:
     * it is cheap, and the checks below read the whole file) */
    char sql[96];
    snprintf(sql, sizeof sql, "BEGIN IMMEDIATE; PRAGMA user_version = %d; COMMIT;", self->layout);
    if (s_exec(self, sql, err, errlen) != 0) {
        if (sqlite3_get_autocommit(self->db) == 0)
            sqlite3_exec(self->db, "ROLLBACK;", NULL, NULL, NULL);
        return AB_EIO;
    }
    /* is what the file holds sound? (reads every page once: on a large store the loop waits
     * for it, once per recovery) */
    sqlite3_stmt *st = NULL;
    int rc = AB_EIO;
    if (sqlite3_prepare_v2(self->db, "PRAGMA quick_check;", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        const char *r = (const char *)sqlite3_column_text(st, 0);
        if (r && strcmp(r, "ok") == 0) {
            rc = 0;
        } else {
            snprintf(err, errlen, "%s: quick_check: %s", self->path, r ? r : "no answer");
            rc = AB_EINTERNAL;
        }
    } else {
        snprintf(err, errlen, "%s: quick_check: %s", self->path, sqlite3_errmsg(self->db));
    }
    sqlite3_finalize(st);
    if (rc)
        return rc;
    /* what was read back from the WAL may have come from the kernel's cache of a file whose
     * fsync failed: every frame is copied into the database file under an fsync that succeeds
     * and the WAL emptied, so nothing the broker now trusts depends on such a page */
    int nlog = 0, nckpt = 0;
    int src = sqlite3_wal_checkpoint_v2(self->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &nlog, &nckpt);
    if (src != SQLITE_OK) {
        char detail[420];
        s_io_detail(self, sqlite3_extended_errcode(self->db), detail, sizeof detail);
        snprintf(err, errlen, "%s: checkpoint: %s%s", self->path, sqlite3_errmsg(self->db), detail);
        return AB_EIO;
    }
    self->failed = 0;
    self->failed_err[0] = '\0';
    return 0;
}

void
brk_store_stats(const brk_store_t *self, brk_store_stats_t *out)
{
    *out = self->st;
    out->failed = self->failed;
}

/* SHA-256 over a record's header then payload, with the store's digest context (made once:
 * creating one per record cost more than hashing a kilobyte). 0, or -1 when OpenSSL could not
 * allocate: never a made-up digest, which would store a record as damaged or call a sound one
 * damaged and dead-letter it. */
static int
s_sha256_2(brk_store_t *self, const uint8_t *a, size_t alen, const uint8_t *b, size_t blen,
           uint8_t out[32])
{
    unsigned int n = 32;
    if (!self->md)
        self->md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (!self->mdctx)
        self->mdctx = EVP_MD_CTX_new();
    if (!self->md || !self->mdctx || EVP_DigestInit_ex(self->mdctx, self->md, NULL) != 1 ||
        EVP_DigestUpdate(self->mdctx, a, alen) != 1 ||
        EVP_DigestUpdate(self->mdctx, b, blen) != 1 ||
        EVP_DigestFinal_ex(self->mdctx, out, &n) != 1 || n != 32) {
        ERR_clear_error(); /* out of memory is the one way it fails */
        return -1;
    }
    return 0;
}

/* A record's checksum could not be computed for a write: the turn fails (its owner undoes it and
 * answers UNAVAILABLE); the file is sound, so the store is not stopped. */
static int
s_digest_failed(brk_store_t *self, const char *op)
{
    if (self->turn_rc == 0) {
        self->turn_rc = AB_EUNAVAILABLE;
        snprintf(self->turn_err, sizeof self->turn_err,
                 "%s: out of memory computing a record's SHA-256", self->path);
        brk_log(BRK_LOG_ERROR, "event=store_error op=%s reason=\"%s\"", op, self->turn_err);
    }
    return self->turn_rc;
}

static const uint8_t s_nothing[1];

/* Reads the rows of `st` (prepared, bound) and hands each to `row` with `ctx` (an s_each_t);
 * stops at the first non-zero value. With `one`, exactly one row must exist: none is
 * AB_EINTERNAL with ctx's `missing` set. Returns 0, row's value, or AB_EIO. */
typedef int s_row_fn(brk_store_t *self, sqlite3_stmt *st, void *ctx, char *err, size_t errlen);

typedef struct s_each {
    int blobs;
    brk_store_mail_fn *fn;
    brk_store_event_fn *efn;
    void *arg;
    int missing; /* s_rows with `one`: there was no row */
} s_each_t;

static int
s_rows(brk_store_t *self, sqlite3_stmt *st, s_row_fn *row, s_each_t *ctx, int one, char *err,
       size_t errlen)
{
    int rc = 0, step, n = 0;
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        n++;
        rc = row(self, st, ctx, err, errlen);
    }
    if (rc == 0 && step != SQLITE_DONE) {
        snprintf(err, errlen, "%s: %s", self->path, sqlite3_errmsg(self->db));
        rc = AB_EIO;
    } else if (rc == 0 && one && n == 0) {
        ctx->missing = 1;
        rc = AB_EINTERNAL;
    }
    return rc;
}

static int s_mail_row(brk_store_t *self, sqlite3_stmt *st, int blobs, brk_store_mail_t *m,
                      char *err, size_t errlen);
static int s_event_row(brk_store_t *self, sqlite3_stmt *st, int blobs, brk_store_event_t *e,
                       char *err, size_t errlen);

static int
s_mail_each_row(brk_store_t *self, sqlite3_stmt *st, void *ctx, char *err, size_t errlen)
{
    s_each_t *x = ctx;
    brk_store_mail_t m;
    int rc = s_mail_row(self, st, x->blobs, &m, err, errlen);
    return rc ? rc : x->fn(x->arg, &m);
}

static int
s_event_each_row(brk_store_t *self, sqlite3_stmt *st, void *ctx, char *err, size_t errlen)
{
    s_each_t *x = ctx;
    brk_store_event_t e;
    int rc = s_event_row(self, st, x->blobs, &e, err, errlen);
    return rc ? rc : x->efn(x->arg, &e);
}

int
brk_store_mail_put(brk_store_t *self, const brk_store_mail_t *m)
{
    int rc = s_begin(self);
    if (rc)
        return rc;
    uint8_t sum[32];
    if (s_sha256_2(self, m->header, m->header_len, m->payload ? m->payload : s_nothing,
                   m->payload_len, sum) != 0)
        return s_digest_failed(self, "mail_put");
    sqlite3_stmt *st = s_q(self, Q_MAIL_PUT);
    if (st) {
        sqlite3_bind_int64(st, 1, (sqlite3_int64)m->seq);
        sqlite3_bind_text(st, 2, m->recipient, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 3, m->kind);
        sqlite3_bind_text(st, 4, m->sender, -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 5, m->message_id, (int)m->message_id_len, SQLITE_STATIC);
        sqlite3_bind_blob(st, 6, m->header, (int)m->header_len, SQLITE_STATIC);
        sqlite3_bind_blob64(st, 7, m->payload ? m->payload : s_nothing, m->payload_len,
                            SQLITE_STATIC);
        sqlite3_bind_int64(st, 8, (sqlite3_int64)m->accepted_ms);
        sqlite3_bind_int64(st, 9, (sqlite3_int64)m->expires_ms);
        sqlite3_bind_int64(st, 10, m->attempts);
        sqlite3_bind_int(st, 11, m->dead);
        sqlite3_bind_blob(st, 12, sum, 32, SQLITE_STATIC);
    }
    return s_step_write(self, st, "mail_put");
}

int
brk_store_mail_delete(brk_store_t *self, uint64_t seq)
{
    int rc = s_begin(self);
    if (rc)
        return rc;
    sqlite3_stmt *st = s_q(self, Q_MAIL_DEL);
    if (st)
        sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
    return s_step_write(self, st, "mail_delete");
}

int
brk_store_mail_update(brk_store_t *self, uint64_t seq, uint32_t attempts, int dead)
{
    int rc = s_begin(self);
    if (rc)
        return rc;
    sqlite3_stmt *st = s_q(self, Q_MAIL_UPD);
    if (st) {
        sqlite3_bind_int64(st, 1, attempts);
        sqlite3_bind_int(st, 2, dead);
        sqlite3_bind_int64(st, 3, (sqlite3_int64)seq);
    }
    return s_step_write(self, st, "mail_update");
}

/* Fills a mail row from the current row of `st` (the column order of Q_MAIL_GET) and verifies
 * its checksum when it has its blobs. */
static int
s_mail_row(brk_store_t *self, sqlite3_stmt *st, int blobs, brk_store_mail_t *m, char *err,
           size_t errlen)
{
    memset(m, 0, sizeof *m);
    m->seq = (uint64_t)sqlite3_column_int64(st, 0);
    m->recipient = (const char *)sqlite3_column_text(st, 1);
    m->kind = sqlite3_column_int(st, 2);
    m->sender = (const char *)sqlite3_column_text(st, 3);
    m->message_id = sqlite3_column_blob(st, 4);
    m->message_id_len = (size_t)sqlite3_column_bytes(st, 4);
    m->accepted_ms = (uint64_t)sqlite3_column_int64(st, 7);
    m->expires_ms = (uint64_t)sqlite3_column_int64(st, 8);
    m->attempts = (uint32_t)sqlite3_column_int64(st, 9);
    m->dead = sqlite3_column_int(st, 10);
    if (!m->recipient || !m->sender) {
        snprintf(err, errlen, "%s: mail record %llu has no recipient or sender", self->path,
                 (unsigned long long)m->seq);
        return AB_EINTERNAL;
    }
    if (!blobs) {
        m->payload_len = (size_t)sqlite3_column_bytes(st, 6);
        return 0;
    }
    m->header = sqlite3_column_blob(st, 5);
    m->header_len = (size_t)sqlite3_column_bytes(st, 5);
    m->payload = sqlite3_column_blob(st, 6);
    m->payload_len = (size_t)sqlite3_column_bytes(st, 6);
    const void *sum = sqlite3_column_blob(st, 11);
    uint8_t want[32];
    if (s_sha256_2(self, m->header ? m->header : s_nothing, m->header_len,
                   m->payload ? m->payload : s_nothing, m->payload_len, want) != 0) {
        snprintf(err, errlen, "%s: out of memory checking mail record %llu", self->path,
                 (unsigned long long)m->seq);
        return AB_EIO;
    }
    if (sqlite3_column_bytes(st, 11) != 32 || memcmp(sum, want, 32) != 0 ||
        m->message_id_len != 16) {
        snprintf(err, errlen,
                 "%s: mail record %llu (for %s) is damaged: its SHA-256 does not match", self->path,
                 (unsigned long long)m->seq, m->recipient);
        return AB_EINTERNAL;
    }
    return 0;
}

/* Reads the one record `seq` with statement `q` and hands it to `row`; a missing record is
 * AB_EINTERNAL naming it (`name`: "mail", "event"). */
static int
s_get_seq(brk_store_t *self, int q, const char *name, uint64_t seq, s_row_fn *row, s_each_t *x,
          char *err, size_t errlen)
{
    sqlite3_stmt *st = s_q(self, q);
    if (!st) {
        snprintf(err, errlen, "%s: %s", self->path, sqlite3_errmsg(self->db));
        return AB_EIO;
    }
    sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
    int rc = s_rows(self, st, row, x, 1, err, errlen);
    if (rc == AB_EINTERNAL && x->missing)
        snprintf(err, errlen, "%s: %s record %llu is missing", self->path, name,
                 (unsigned long long)seq);
    sqlite3_reset(st);
    self->st.reads++;
    return rc;
}

int
brk_store_mail_get(brk_store_t *self, uint64_t seq, brk_store_mail_fn *fn, void *arg, char *err,
                   size_t errlen)
{
    s_each_t x = {1, fn, NULL, arg, 0};
    return s_get_seq(self, Q_MAIL_GET, "mail", seq, s_mail_each_row, &x, err, errlen);
}

int
brk_store_mail_each(brk_store_t *self, int blobs, brk_store_mail_fn *fn, void *arg, char *err,
                    size_t errlen)
{
    sqlite3_stmt *st = NULL;
    const char *sql = blobs ? "SELECT seq, recipient, kind, sender, message_id, header, payload,"
                              " accepted_ms, expires_ms, attempts, dead, sha256 FROM mail"
                              " ORDER BY seq;"
                            : "SELECT seq, recipient, kind, sender, message_id, NULL, payload,"
                              " accepted_ms, expires_ms, attempts, dead, NULL FROM mail"
                              " ORDER BY seq;";
    if (sqlite3_prepare_v2(self->db, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", self->path, sqlite3_errmsg(self->db));
        return AB_EIO;
    }
    s_each_t x = {blobs, fn, NULL, arg, 0};
    int rc = s_rows(self, st, s_mail_each_row, &x, 0, err, errlen);
    sqlite3_finalize(st);
    return rc;
}

void
brk_store_set_cache(brk_store_t *self, uint64_t bytes)
{
    char sql[64];
    self->cache_kib = bytes / 1024;
    snprintf(sql, sizeof sql, "PRAGMA cache_size=-%llu;", (unsigned long long)(bytes / 1024));
    sqlite3_exec(self->db, sql, NULL, NULL, NULL);
}

uint64_t
brk_store_reusable_bytes(brk_store_t *self)
{
    int pages = 0, size = 0;
    if (s_pragma_int(self, "PRAGMA freelist_count;", &pages) != 0 ||
        s_pragma_int(self, "PRAGMA page_size;", &size) != 0 || pages < 0 || size < 0)
        return 0;
    return (uint64_t)pages * (uint64_t)size;
}

uint64_t
brk_store_max_seq(brk_store_t *self)
{
    sqlite3_stmt *st = NULL;
    uint64_t max = 0;
    if (sqlite3_prepare_v2(self->db,
                           "SELECT MAX(m), MAX(e), MAX(s), MAX(a) FROM"
                           " (SELECT MAX(seq) AS m FROM mail), (SELECT MAX(seq) AS e FROM events),"
                           " (SELECT MAX(seq) AS s FROM sent),"
                           " (SELECT MAX(acked_upto) AS a FROM subscriptions);",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        for (int i = 0; i < 4; i++) {
            uint64_t v = (uint64_t)sqlite3_column_int64(st, i);
            if (v > max)
                max = v;
        }
    }
    sqlite3_finalize(st);
    return max;
}

int
brk_store_sent_put(brk_store_t *self, const brk_store_sent_t *s)
{
    int rc = s_begin(self);
    if (rc)
        return rc;
    sqlite3_stmt *st = s_q(self, Q_SENT_PUT);
    if (st) {
        sqlite3_bind_text(st, 1, s->sender, -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 2, s->message_id, AB_MESSAGE_ID_LEN_STORE, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, s->recipient, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, (sqlite3_int64)s->seq);
        sqlite3_bind_int64(st, 5, (sqlite3_int64)s->size);
        sqlite3_bind_int64(st, 6, (sqlite3_int64)s->accepted_ms);
        sqlite3_bind_int64(st, 7, (sqlite3_int64)s->delivered_ms);
        sqlite3_bind_int64(st, 8, (sqlite3_int64)s->ended_ms);
        sqlite3_bind_int(st, 9, s->state);
        sqlite3_bind_int64(st, 10, s->attempts);
    }
    return s_step_write(self, st, "sent_put");
}

int
brk_store_sent_get(brk_store_t *self, const char *sender, const uint8_t *message_id,
                   brk_store_sent_t *out, char *err, size_t errlen)
{
    sqlite3_stmt *st = s_q(self, Q_SENT_GET);
    if (!st) {
        snprintf(err, errlen, "%s: %s", self->path, sqlite3_errmsg(self->db));
        return AB_EIO;
    }
    sqlite3_bind_text(st, 1, sender, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, message_id, AB_MESSAGE_ID_LEN_STORE, SQLITE_STATIC);
    int step = sqlite3_step(st), rc = 0;
    if (step == SQLITE_ROW) {
        memset(out, 0, sizeof *out);
        const char *r = (const char *)sqlite3_column_text(st, 2);
        snprintf(out->recipient_buf, sizeof out->recipient_buf, "%s", r ? r : "");
        out->recipient = out->recipient_buf;
        out->sender = sender;
        out->message_id = message_id;
        out->seq = (uint64_t)sqlite3_column_int64(st, 3);
        out->size = (uint64_t)sqlite3_column_int64(st, 4);
        out->accepted_ms = (uint64_t)sqlite3_column_int64(st, 5);
        out->delivered_ms = (uint64_t)sqlite3_column_int64(st, 6);
        out->ended_ms = (uint64_t)sqlite3_column_int64(st, 7);
        out->state = sqlite3_column_int(st, 8);
        out->attempts = (uint32_t)sqlite3_column_int64(st, 9);
    } else if (step == SQLITE_DONE) {
        rc = 1;
    } else {
        snprintf(err, errlen, "%s: %s", self->path, sqlite3_errmsg(self->db));
        rc = AB_EIO;
    }
    sqlite3_reset(st);
    return rc;
}

int
brk_store_sent_purge(brk_store_t *self, uint64_t ended_before_ms)
{
    int rc = s_begin(self);
    if (rc)
        return rc;
    sqlite3_stmt *st = s_q(self, Q_SENT_PURGE);
    if (st)
        sqlite3_bind_int64(st, 1, (sqlite3_int64)ended_before_ms);
    if ((rc = s_step_write(self, st, "sent_purge")) != 0)
        return rc;
    return sqlite3_changes(self->db);
}

int
brk_store_sent_each(brk_store_t *self, brk_store_sent_fn *fn, void *arg, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(self->db,
                           "SELECT sender, message_id, recipient, seq, size, accepted_ms,"
                           " delivered_ms, ended_ms, state, attempts FROM sent ORDER BY seq;",
                           -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", self->path, sqlite3_errmsg(self->db));
        return AB_EIO;
    }
    int rc = 0, step;
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        brk_store_sent_t s;
        memset(&s, 0, sizeof s);
        s.sender = (const char *)sqlite3_column_text(st, 0);
        s.message_id = sqlite3_column_blob(st, 1);
        s.recipient = (const char *)sqlite3_column_text(st, 2);
        s.seq = (uint64_t)sqlite3_column_int64(st, 3);
        s.size = (uint64_t)sqlite3_column_int64(st, 4);
        s.accepted_ms = (uint64_t)sqlite3_column_int64(st, 5);
        s.delivered_ms = (uint64_t)sqlite3_column_int64(st, 6);
        s.ended_ms = (uint64_t)sqlite3_column_int64(st, 7);
        s.state = sqlite3_column_int(st, 8);
        s.attempts = (uint32_t)sqlite3_column_int64(st, 9);
        if (!s.sender || !s.recipient || sqlite3_column_bytes(st, 1) != AB_MESSAGE_ID_LEN_STORE) {
            snprintf(err, errlen, "%s: a 'sent' record (seq %llu) is damaged", self->path,
                     (unsigned long long)s.seq);
            rc = AB_EINTERNAL;
            break;
        }
        rc = fn(arg, &s);
    }
    if (rc == 0 && step != SQLITE_DONE) {
        snprintf(err, errlen, "%s: %s", self->path, sqlite3_errmsg(self->db));
        rc = AB_EIO;
    }
    sqlite3_finalize(st);
    return rc;
}

int
brk_store_sub_put(brk_store_t *self, const brk_store_sub_t *s)
{
    int rc = s_begin(self);
    if (rc)
        return rc;
    sqlite3_stmt *st = s_q(self, Q_SUB_PUT);
    if (st) {
        sqlite3_bind_text(st, 1, s->participant, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, s->name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, s->pattern, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, (sqlite3_int64)s->acked_upto);
        sqlite3_bind_int64(st, 5, (sqlite3_int64)s->created_ms);
    }
    return s_step_write(self, st, "sub_put");
}

int
brk_store_sub_delete(brk_store_t *self, const char *participant, const char *name)
{
    int rc = s_begin(self);
    if (rc)
        return rc;
    sqlite3_stmt *st = s_q(self, Q_SUB_DEL);
    if (st) {
        sqlite3_bind_text(st, 1, participant, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    }
    return s_step_write(self, st, "sub_delete");
}

int
brk_store_sub_acked(brk_store_t *self, const char *participant, const char *name, uint64_t upto)
{
    int rc = s_begin(self);
    if (rc)
        return rc;
    sqlite3_stmt *st = s_q(self, Q_SUB_ACKED);
    if (st) {
        sqlite3_bind_int64(st, 1, (sqlite3_int64)upto);
        sqlite3_bind_text(st, 2, participant, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
    }
    return s_step_write(self, st, "sub_acked");
}

int
brk_store_sub_each(brk_store_t *self, brk_store_sub_fn *fn, void *arg, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(self->db,
                           "SELECT participant, name, pattern, acked_upto, created_ms"
                           " FROM subscriptions ORDER BY participant, name;",
                           -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", self->path, sqlite3_errmsg(self->db));
        return AB_EIO;
    }
    int rc = 0, step;
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        brk_store_sub_t s;
        s.participant = (const char *)sqlite3_column_text(st, 0);
        s.name = (const char *)sqlite3_column_text(st, 1);
        s.pattern = (const char *)sqlite3_column_text(st, 2);
        s.acked_upto = (uint64_t)sqlite3_column_int64(st, 3);
        s.created_ms = (uint64_t)sqlite3_column_int64(st, 4);
        if (!s.participant || !s.name || !s.pattern) {
            snprintf(err, errlen, "%s: a subscription record is damaged", self->path);
            rc = AB_EINTERNAL;
            break;
        }
        rc = fn(arg, &s);
    }
    if (rc == 0 && step != SQLITE_DONE) {
        snprintf(err, errlen, "%s: %s", self->path, sqlite3_errmsg(self->db));
        rc = AB_EIO;
    }
    sqlite3_finalize(st);
    return rc;
}

int
brk_store_event_put(brk_store_t *self, const brk_store_event_t *e)
{
    int rc = s_begin(self);
    if (rc)
        return rc;
    uint8_t sum[32];
    if (s_sha256_2(self, e->header, e->header_len, e->payload ? e->payload : s_nothing,
                   e->payload_len, sum) != 0)
        return s_digest_failed(self, "event_put");
    sqlite3_stmt *st = s_q(self, Q_EVENT_PUT);
    if (st) {
        sqlite3_bind_int64(st, 1, (sqlite3_int64)e->seq);
        sqlite3_bind_text(st, 2, e->topic, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, e->sender, -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 4, e->message_id, (int)e->message_id_len, SQLITE_STATIC);
        sqlite3_bind_blob(st, 5, e->header, (int)e->header_len, SQLITE_STATIC);
        sqlite3_bind_blob64(st, 6, e->payload ? e->payload : s_nothing, e->payload_len,
                            SQLITE_STATIC);
        sqlite3_bind_int64(st, 7, (sqlite3_int64)e->published_ms);
        sqlite3_bind_blob(st, 8, sum, 32, SQLITE_STATIC);
    }
    return s_step_write(self, st, "event_put");
}

static int
s_event_row(brk_store_t *self, sqlite3_stmt *st, int blobs, brk_store_event_t *e, char *err,
            size_t errlen)
{
    memset(e, 0, sizeof *e);
    e->seq = (uint64_t)sqlite3_column_int64(st, 0);
    e->topic = (const char *)sqlite3_column_text(st, 1);
    e->sender = (const char *)sqlite3_column_text(st, 2);
    e->message_id = sqlite3_column_blob(st, 3);
    e->message_id_len = (size_t)sqlite3_column_bytes(st, 3);
    e->published_ms = (uint64_t)sqlite3_column_int64(st, 6);
    e->payload_len = (size_t)sqlite3_column_bytes(st, 5);
    if (!e->topic || !e->sender) {
        snprintf(err, errlen, "%s: event record %llu has no topic or sender", self->path,
                 (unsigned long long)e->seq);
        return AB_EINTERNAL;
    }
    if (!blobs)
        return 0;
    e->header = sqlite3_column_blob(st, 4);
    e->header_len = (size_t)sqlite3_column_bytes(st, 4);
    e->payload = sqlite3_column_blob(st, 5);
    uint8_t want[32];
    if (s_sha256_2(self, e->header ? e->header : s_nothing, e->header_len,
                   e->payload ? e->payload : s_nothing, e->payload_len, want) != 0) {
        snprintf(err, errlen, "%s: out of memory checking event record %llu", self->path,
                 (unsigned long long)e->seq);
        return AB_EIO;
    }
    if (sqlite3_column_bytes(st, 7) != 32 || memcmp(sqlite3_column_blob(st, 7), want, 32) != 0) {
        snprintf(err, errlen,
                 "%s: event record %llu (topic %s) is damaged: its SHA-256 does not "
                 "match",
                 self->path, (unsigned long long)e->seq, e->topic);
        return AB_EINTERNAL;
    }
    return 0;
}

int
brk_store_event_get(brk_store_t *self, uint64_t seq, brk_store_event_fn *fn, void *arg, char *err,
                    size_t errlen)
{
    s_each_t x = {1, NULL, fn, arg, 0};
    return s_get_seq(self, Q_EVENT_GET, "event", seq, s_event_each_row, &x, err, errlen);
}

int
brk_store_event_each(brk_store_t *self, uint64_t after_seq, int blobs, brk_store_event_fn *fn,
                     void *arg, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(self->db,
                           "SELECT seq, topic, sender, message_id, header, payload, published_ms,"
                           " sha256 FROM events WHERE seq > ? ORDER BY seq;",
                           -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", self->path, sqlite3_errmsg(self->db));
        return AB_EIO;
    }
    sqlite3_bind_int64(st, 1, (sqlite3_int64)after_seq);
    s_each_t x = {blobs, NULL, fn, arg, 0};
    int rc = s_rows(self, st, s_event_each_row, &x, 0, err, errlen);
    sqlite3_finalize(st);
    return rc;
}

int
brk_store_event_purge(brk_store_t *self, uint64_t upto_seq, uint64_t published_before_ms)
{
    int rc = s_begin(self);
    if (rc)
        return rc;
    sqlite3_stmt *st = s_q(self, Q_EVENT_PURGE);
    if (st) {
        sqlite3_bind_int64(st, 1, (sqlite3_int64)upto_seq);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)published_before_ms);
    }
    if ((rc = s_step_write(self, st, "event_purge")) != 0)
        return rc;
    return sqlite3_changes(self->db);
}
