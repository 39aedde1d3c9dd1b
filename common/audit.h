/*
 * audit.h - the tamper-evident audit log: one JSON line per decision of the broker, hash-chained,
 * written with group fsync, rotated by size with a signed seal, and read back offline.
 *
 * This module owns the files in one directory, `audit-000001.log`, `audit-000002.log`, ...
 * (numbered from 1, six digits, never reused) and a lock file `lock`. It never logs; every
 * failure comes back as a negative AB_E* code with a text that names the file (and line).
 *
 * Line format (UTF-8, one record per line, keys always in this order, no spaces):
 *
 *   {"v":1,"seq":S,"t":MS,"kind":K,"id":HEX32,"sender":..,"target":..,"purpose":..,
 *    "class":..,"payload_sha256":HEX64 or "","outcome":..,"prev":HEX64,"hash":HEX64}
 *
 * `seq` counts every line of the log from 1, across files. `hash` is the SHA-256 (lower-case hex)
 * of the line's bytes from the opening `{` up to, not including, `,"hash":"`; `prev` is the
 * `hash` of the line before it (in the previous file for a file's first line; 64 zeros for the
 * very first line). Two other kinds of line are chained the same way:
 *
 *   seal:      {"v":1,"seq":S,"t":MS,"kind":"seal","file":N,"alg":A,"prev":HEX64,"sig":B64,
 *               "hash":HEX64}
 *              the last line of every file but the newest. `sig` is the broker key's signature
 *              (EVP_DigestSign with SHA-256: ECDSA or RSA PKCS#1 v1.5, as the key is; `alg`
 *              says which, "none" with an empty `sig` when the log has no key) over the line's
 *              bytes from `{` up to, not including, `,"sig":"` - so it covers the file number,
 *              the position and the last record's hash.
 *   recovered: {"v":1,"seq":S,"t":MS,"kind":"recovered","torn_bytes":N,"prev":..,"hash":..}
 *              written when ab_audit_open() found an incomplete last line (a crash during a
 *              write that was never fsync'd, so never acknowledged): the torn bytes are cut
 *              off and this line records how many there were.
 *
 * Strings are JSON-escaped (quote, backslash, control characters); bytes that are not valid
 * UTF-8 are written as U+FFFD. Payloads are never written, only their SHA-256.
 */
#ifndef AB_AUDIT_H
#define AB_AUDIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct ab_audit ab_audit_t;

typedef enum {
    AB_AUDIT_ACCEPTED,
    AB_AUDIT_FORBIDDEN,
    AB_AUDIT_INVALID,
    AB_AUDIT_DELIVERED,
    AB_AUDIT_ACKED,
    AB_AUDIT_EXPIRED,
    AB_AUDIT_FAILED,
    AB_AUDIT_CALL,
    AB_AUDIT_REPLY,
    AB_AUDIT_ERROR,
    AB_AUDIT_KIND_COUNT
} ab_audit_kind_t;

/* The name written to the log ("accepted", ...); NULL for a kind out of range. */
const char *ab_audit_kind_name(ab_audit_kind_t kind);

typedef struct {
    size_t max_file_bytes;      /* seal and rotate at the first flush at or past this size; 0:
                                   64 MiB */
    const char *key_path;       /* PEM private key that signs the seals (EC or RSA); NULL: seals
                                   carry no signature ("alg":"none") */
    const char *key_passphrase; /* for an encrypted key, or NULL; borrowed during open only */
    const char *cert_path;      /* the key's certificate; when given, open checks they match */
} ab_audit_options_t;

/* One decision. Every pointer is borrowed for the call only; NULL strings are written as "". */
typedef struct {
    uint64_t time_ms; /* wall clock, ms since the epoch; 0: now */
    uint8_t id[16];   /* the message id */
    ab_audit_kind_t kind;
    const char *sender;
    const char *target; /* recipient, service/method or topic */
    const char *purpose;
    const char *classification;
    const uint8_t *payload_sha256; /* 32 bytes, or NULL: then payload is hashed */
    const uint8_t *payload;        /* hashed when payload_sha256 is NULL; both NULL: no payload
                                      ("payload_sha256":"") */
    size_t payload_len;
    const char *outcome; /* an error code name, or NULL for "ok" */
} ab_audit_record_t;

/*
 * Opens the log in `dir` (created 0700 if missing) for appending, takes an exclusive lock on it
 * and continues the chain: the newest file's lines are checked (hashes and links) first. An
 * incomplete last line is cut off and a "recovered" line is queued for the next flush; a newest
 * file that ends with a seal is followed by a new file. Returns NULL on failure with a text in
 * err (e.g. the file and line whose hash does not match: the log is not continued on top of a
 * damaged file; move the directory aside after saving it).
 */
ab_audit_t *ab_audit_open(const char *dir, const ab_audit_options_t *opts, char *err,
                          size_t errlen);

/*
 * Queues one record: formats it with its seq and copies the payload (one of up to 64 KiB; a
 * larger one is hashed here); the hashes - the payload's, prev and the line's own - are computed
 * by the flush (ab_audit_flush_run), so a record costs the calling thread only copies. Writes
 * nothing. Returns 0, AB_EINVAL for a kind out of range, AB_ENOMEM, or AB_EIO when an earlier
 * flush failed (the log stays failed: close it and open it again).
 */
int ab_audit_append(ab_audit_t *log, const ab_audit_record_t *rec);

/*
 * Writes everything queued with one write() (the files are opened O_DSYNC: it returns when the
 * bytes are on disk); when the file has reached max_file_bytes, the seal goes into the same write
 * and the next file is created (and the directory fsync'd). Returns 0 (also when nothing was
 * queued), or AB_EIO with ab_audit_error() saying what failed; from then on the log is failed and
 * every append/flush returns AB_EIO: the caller must stop acknowledging, since its decisions may
 * not be on disk.
 */
int ab_audit_flush(ab_audit_t *log);

/*
 * The same flush in three steps, so that hashing and the synchronous write can run on another
 * thread while the loop goes on appending: begin (loop) takes what is queued (and decides that
 * the file is sealed when it is due), run (any thread, nothing else of the log touched) computes
 * the hashes and the chain, adds the seal and writes (O_DSYNC), end (loop) takes the result and the
 * chain's new end. One job at a time: the next begin after the previous end. begin returns 1
 * with a job to run, 0 when nothing is queued, or AB_EIO; end returns 0 or AB_EIO (the log is
 * failed from then on, ab_audit_error() says why).
 */
typedef struct ab_audit_batch ab_audit_batch_t; /* the module's */
typedef struct {
    ab_audit_batch_t *batch; /* the lines, their payloads' copies, the chain's start */
    char err[512];           /* set by run on failure */
} ab_audit_job_t;
int ab_audit_flush_begin(ab_audit_t *log, ab_audit_job_t *job);
void ab_audit_flush_run(ab_audit_job_t *job);
int ab_audit_flush_end(ab_audit_t *log, ab_audit_job_t *job);

/* The text of the last error (borrowed; "" when none). */
const char *ab_audit_error(const ab_audit_t *log);

/* Lines queued and not yet flushed. */
size_t ab_audit_pending(const ab_audit_t *log);

/* Bytes those lines hold in memory (their text and the copies of their payloads). */
size_t ab_audit_pending_bytes(const ab_audit_t *log);

/* Flushes what is queued (its result is lost: flush first to see it), closes and frees the log,
 * and sets *log_p to NULL. Accepts NULL and a pointer to NULL. */
void ab_audit_close(ab_audit_t **log_p);

/* ---- reading, offline ------------------------------------------------------------------ */

typedef enum {
    AB_AUDIT_INTACT = 0,
    AB_AUDIT_CHANGED,      /* a line's bytes do not match its hash, or the next line's prev */
    AB_AUDIT_REMOVED,      /* lines missing (a gap in seq) */
    AB_AUDIT_REORDERED,    /* a line before one that should precede it */
    AB_AUDIT_TRUNCATED,    /* an incomplete line, or a file that ends without its seal */
    AB_AUDIT_FILE_MISSING, /* a gap in the file numbers, or the first file is not number 1 */
    AB_AUDIT_FORGED,       /* a seal whose signature does not verify against the certificate */
    AB_AUDIT_UNSIGNED,     /* a seal without a signature, while a certificate was given */
} ab_audit_problem_t;

/* "intact", "changed", ... */
const char *ab_audit_problem_name(ab_audit_problem_t p);

typedef struct {
    ab_audit_problem_t problem; /* the first one found, or AB_AUDIT_INTACT */
    uint64_t records;           /* decision records checked (without seals and recoveries) */
    uint64_t lines;             /* all lines checked */
    unsigned files;
    unsigned seals;
    int signatures_checked; /* a certificate was given and every seal was verified with it */
    char file[256];         /* where the problem is: the file name (no directory) */
    size_t line;            /* and the line in it, from 1 (0: the file as a whole) */
    char detail[512];       /* what is wrong, for a person */
} ab_audit_report_t;

/*
 * Checks the whole log in `dir`: every line's hash, the chain across files, seq without gaps,
 * a seal at the end of every file but the newest, and, with `cert_path`, every seal's signature
 * against that certificate's public key. Returns 0 with the report filled in (intact, or the
 * first problem), or a negative AB_E* when it cannot check (AB_EIO: the directory or a file
 * cannot be read, AB_EINVAL: the certificate cannot be loaded), with report->detail saying why.
 * Lines cut off cleanly at the end of the newest file cannot be told from lines never written
 * (keep the newest seq elsewhere, e.g. in the broker's metrics, to anchor it).
 */
int ab_audit_verify(const char *dir, const char *cert_path, ab_audit_report_t *report);

/* One line as read back; every pointer is borrowed for the callback only. */
typedef struct {
    const char *file;
    size_t line;
    uint64_t seq;
    uint64_t time_ms;
    const char *kind;
    const char *id;
    const char *sender;
    const char *target;
    const char *purpose;
    const char *classification;
    const char *payload_sha256;
    const char *outcome;
} ab_audit_entry_t;

/* Returns 0 to go on, anything else to stop (ab_audit_query then returns that value). */
typedef int (*ab_audit_query_cb)(const ab_audit_entry_t *entry, void *arg);

/*
 * Calls cb, in log order, for every decision record whose sender or target is `participant`
 * (exact match), at or after since_ms, and with purpose `purpose` (exact match; NULL: any).
 * Does not check the chain (ab_audit_verify does); lines that cannot be parsed are skipped.
 * Returns 0, the callback's non-zero value, or AB_EIO/AB_ENOMEM with err filled in.
 */
int ab_audit_query(const char *dir, const char *participant, uint64_t since_ms, const char *purpose,
                   ab_audit_query_cb cb, void *arg, char *err, size_t errlen);

#endif
