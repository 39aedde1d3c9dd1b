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

/* ---- the write path of mailboxes and events ----------------------------------------------------
 * Writes go into one transaction per loop turn, opened by the first write; brk_store_commit()
 * at the end of the turn commits it (one fsync for everything that arrived in the turn). A
 * write error is remembered and the commit rolls the whole turn back: the caller then answers
 * the turn's senders UNAVAILABLE instead of accepting. A full disk (SQLITE_FULL) fails only that
 * turn; any other write or commit error fails the store (nothing is written, every turn's commit
 * fails) until brk_store_recover() succeeds, because after a failed fsync the file's state is
 * unknown. */

typedef struct brk_store_stats {
    uint64_t commits;
    uint64_t rollbacks;
    uint64_t last_commit_us; /* the latest commit's duration, fsync included */
    uint64_t commit_ms_max;
    uint64_t writes;
    uint64_t reads;
    int failed;
} brk_store_stats_t;

/* 0 when writes may be tried; AB_EIO (failed for good) or AB_EUNAVAILABLE (this turn failed,
 * e.g. disk full) with the reason in err. */
int brk_store_writable(const brk_store_t *self, char *err, size_t errlen);

/* Commits the turn's writes. Returns 0 (also when there was nothing to commit), or the turn's
 * error (AB_EUNAVAILABLE: disk full; AB_EIO: the store failed for good) with the reason in err,
 * after rolling the turn back. */
int brk_store_commit(brk_store_t *self, char *err, size_t errlen);

/* After the store failed: drops the connection (and its page cache), opens the file again (the
 * WAL's recovery runs), commits a probe write, checks the file (PRAGMA quick_check) and
 * checkpoints the WAL into the database file with TRUNCATE, so that what is read from now on has
 * passed an fsync that succeeded. Returns 0 when the store writes again (also when it had not
 * failed): what is on disk may then differ from what the caller believed (a commit that reported
 * failure may have reached the file), so the caller reads its state again. AB_EIO: still failing;
 * AB_EINTERNAL: quick_check found damage; the reason in err either way. */
int brk_store_recover(brk_store_t *self, char *err, size_t errlen);

void brk_store_stats(const brk_store_t *self, brk_store_stats_t *out);

/* Kinds of mail records: the header kind they are delivered with. */
#define BRK_MAIL_MESSAGE 8  /* KIND_DELIVER */
#define BRK_MAIL_RECEIPT 10 /* KIND_RECEIPT */

/* One record of a mailbox: a message waiting for its recipient, or a receipt waiting for the
 * sender of a message. `header` is the Header it is delivered with (kind, ids, sender, schema,
 * headers, sequence), without `attempt`. */
typedef struct brk_store_mail {
    uint64_t seq;
    const char *recipient;
    int kind;
    const char *sender;
    const uint8_t *message_id;
    size_t message_id_len;
    const uint8_t *header;
    size_t header_len;
    const uint8_t *payload;
    size_t payload_len;
    uint64_t accepted_ms; /* Unix ms */
    uint64_t expires_ms;  /* Unix ms; 0: never */
    uint32_t attempts;
    int dead; /* 1: dead letter, kept for the operator and --export */
} brk_store_mail_t;

/* The writes below return 0 or the turn's error (see above); nothing is on disk before
 * brk_store_commit() returned 0. */
int brk_store_mail_put(brk_store_t *self, const brk_store_mail_t *m);
int brk_store_mail_delete(brk_store_t *self, uint64_t seq);
int brk_store_mail_update(brk_store_t *self, uint64_t seq, uint32_t attempts, int dead);

/* Reads record `seq` with its header and payload, verifies its checksum and calls fn with it
 * (pointers valid during the call). Returns fn's value, AB_EINTERNAL for a damaged or missing
 * record (named in err), AB_EIO for a database error. */
typedef int brk_store_mail_fn(void *arg, const brk_store_mail_t *m);
int brk_store_mail_get(brk_store_t *self, uint64_t seq, brk_store_mail_fn *fn, void *arg, char *err,
                       size_t errlen);

/* Calls fn for every mail record in sequence order; with `blobs` also header and payload, each
 * verified. Returns as brk_store_mail_get(). */
int brk_store_mail_each(brk_store_t *self, int blobs, brk_store_mail_fn *fn, void *arg, char *err,
                        size_t errlen);

/* Sets SQLite's page cache to `bytes` (the default at open is 64 MiB). */
void brk_store_set_cache(brk_store_t *self, uint64_t bytes);

/* Bytes of free pages inside the database file: space that new records take before the file
 * grows (a drained mailbox leaves its pages there). */
uint64_t brk_store_reusable_bytes(brk_store_t *self);

/* The highest sequence number used by any record. */
uint64_t brk_store_max_seq(brk_store_t *self);

/* What was sent: one record per message that ended (acknowledged, expired, failed), written
 * in the same transaction that ends it and kept until the dedup window after its end has passed;
 * the key is (sender, message_id). A message still waiting is known by its mail record. */
enum { BRK_SENT_WAITING = 0, BRK_SENT_ACKED = 1, BRK_SENT_EXPIRED = 2, BRK_SENT_FAILED = 3 };
typedef struct brk_store_sent {
    const char *sender;
    const uint8_t *message_id; /* 16 bytes */
    const char *recipient;
    uint64_t seq;
    uint64_t size;
    uint64_t accepted_ms;
    uint64_t delivered_ms; /* first delivery; 0: never delivered */
    uint64_t ended_ms;
    int state; /* BRK_SENT_* */
    uint32_t attempts;
    char recipient_buf[256];
} brk_store_sent_t;

/* Records how a message ended. Returns 0 or the turn's error. */
int brk_store_sent_put(brk_store_t *self, const brk_store_sent_t *s);
/* Returns 0 with *out filled, 1 when unknown, AB_EIO. */
int brk_store_sent_get(brk_store_t *self, const char *sender, const uint8_t *message_id,
                       brk_store_sent_t *out, char *err, size_t errlen);
/* Forgets up to 5,000 records that ended before `ended_before_ms` (call again while it returns
 * 5,000). Returns how many, or the turn's error. */
int brk_store_sent_purge(brk_store_t *self, uint64_t ended_before_ms);
typedef int brk_store_sent_fn(void *arg, const brk_store_sent_t *s);
int brk_store_sent_each(brk_store_t *self, brk_store_sent_fn *fn, void *arg, char *err,
                        size_t errlen);

/* A durable subscription: events up to `acked_upto` are acknowledged. */
typedef struct brk_store_sub {
    const char *participant;
    const char *name;
    const char *pattern;
    uint64_t acked_upto;
    uint64_t created_ms;
} brk_store_sub_t;
int brk_store_sub_put(brk_store_t *self, const brk_store_sub_t *s);
int brk_store_sub_delete(brk_store_t *self, const char *participant, const char *name);
int brk_store_sub_acked(brk_store_t *self, const char *participant, const char *name,
                        uint64_t upto);
typedef int brk_store_sub_fn(void *arg, const brk_store_sub_t *s);
int brk_store_sub_each(brk_store_t *self, brk_store_sub_fn *fn, void *arg, char *err,
                       size_t errlen);

/* A published event kept for durable subscriptions. */
typedef struct brk_store_event {
    uint64_t seq;
    const char *topic;
    const char *sender;
    const uint8_t *message_id;
    size_t message_id_len;
    const uint8_t *header; /* the EVENT header, without subscription and attempt */
    size_t header_len;
    const uint8_t *payload;
    size_t payload_len;
    uint64_t published_ms;
} brk_store_event_t;
int brk_store_event_put(brk_store_t *self, const brk_store_event_t *e);
typedef int brk_store_event_fn(void *arg, const brk_store_event_t *e);
int brk_store_event_get(brk_store_t *self, uint64_t seq, brk_store_event_fn *fn, void *arg,
                        char *err, size_t errlen);
/* Events after `after_seq` in order; with `blobs` verified as brk_store_mail_each(). */
int brk_store_event_each(brk_store_t *self, uint64_t after_seq, int blobs, brk_store_event_fn *fn,
                         void *arg, char *err, size_t errlen);
/* Removes events up to `upto_seq` and those published before `published_before_ms`. Returns how
 * many, or the turn's error. */
int brk_store_event_purge(brk_store_t *self, uint64_t upto_seq, uint64_t published_before_ms);

#endif
