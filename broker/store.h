/*
 * store.h - the broker's durable store: one SQLite database, one writer connection, owned by
 * the loop.
 *
 * DIR/amtsbote.db in WAL mode with synchronous=FULL: a write that returned 0 is on disk. The
 * database's layout is versioned (PRAGMA user_version) and migrated forward at open; a database
 * written by a newer broker is refused rather than guessed at. Every stored record carries a
 * SHA-256 of its content that is checked when it is read back, so a damaged record is reported
 * by name instead of being served.
 *
 * Without a data directory the store lives in memory (tests, a first look): the broker says so
 * at start, and nothing survives a restart.
 */
#ifndef BRK_STORE_H
#define BRK_STORE_H

#include <stddef.h>
#include <stdint.h>

typedef struct brk_store brk_store_t;

/* One version of one registered .proto file. */
typedef struct brk_store_schema {
    const char *name;   /* file name, e.g. "meldewesen/v1/meldewesen.proto" */
    uint32_t version;   /* 1, 2, ... per name */
    const uint8_t *set; /* the serialized FileDescriptorSet it was pushed in */
    size_t set_len;
    const char *pushed_by; /* participant address */
    uint64_t pushed_at_ms;
    uint8_t sha256[32]; /* of `set`; filled by brk_store_schema_put() */
} brk_store_schema_t;

/* Opens or creates DIR/amtsbote.db (dir NULL: in memory) and migrates it. Returns NULL with the
 * reason, naming the file, in err. */
brk_store_t *brk_store_open(const char *dir, char *err, size_t errlen);

/* Closes the database. NULL-safe; nulls the pointer. */
void brk_store_close(brk_store_t **self_p);

/* The layout version the database has after open. */
int brk_store_layout_version(const brk_store_t *self);

/* Stores `n` schema file versions in one transaction, computing each one's sha256. Returns 0,
 * or AB_EIO with the reason in err (nothing stored). */
int brk_store_schema_put(brk_store_t *self, brk_store_schema_t *rows, size_t n, char *err,
                         size_t errlen);

/* Calls fn for the latest version of every file (version == 0) or for one version of the file
 * `name` (name and version given), oldest name first. Each row's checksum is verified first.
 * The row's pointers are valid during the call only. Returns 0, the first non-zero value fn
 * returned, AB_EIO on a database error, or AB_EINTERNAL for a record whose checksum does not
 * match (named in err). */
typedef int brk_store_schema_fn(void *arg, const brk_store_schema_t *row);
int brk_store_schema_each(brk_store_t *self, const char *name, uint32_t version,
                          brk_store_schema_fn *fn, void *arg, char *err, size_t errlen);

#endif
