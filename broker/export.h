/*
 * export.h - the exit strategy: `amtsbote-broker --data DIR --export OUT` writes everything the
 * durable store holds into OUT in an open, documented format, so that an agency can leave with
 * its data and read it without Amtsbote.
 *
 * Owns: reading the store through store.h (never SQL of its own), the export format (version 1,
 * described in README.md under "Leaving with your data: --export" and written into every export
 * as FORMAT.md), and writing it. In short, OUT holds:
 *
 *   FORMAT.md            the format description
 *   manifest.json        format_version 1, broker_version, created_ms, per file its record count
 *                        and SHA-256, payload count and bytes, how many records were damaged
 *   mail.jsonl           messages, receipts and dead letters: seq, kind, recipient, sender,
 *                        message_id, accepted_ms, expires_ms, attempts, dead, header (the stored
 *                        amtsbote.v1.Header as JSON), payload_file, payload_size, payload_sha256
 *   sent.jsonl           what was sent (timelines): state waiting|acknowledged|expired|failed
 *   subscriptions.jsonl  durable subscriptions
 *   events.jsonl         events kept for durable subscriptions, with payload files as mail
 *   damaged.jsonl        records whose checksum did not match: listed (table, seq, error), never
 *                        exported as if they were fine
 *   payloads/mail-<seq>.bin, payloads/event-<seq>.bin   the payload bytes exactly as sent
 *
 * Byte strings are lower-case hex, times Unix milliseconds, "none" is null. The export is
 * written into OUT.partial-XXXXXX next to OUT, synced, and renamed to OUT at the end, so OUT
 * either holds a whole export or does not exist; files are readable by their owner only
 * (payloads are personal data).
 */
#ifndef BRK_EXPORT_H
#define BRK_EXPORT_H

#include <stddef.h>
#include <stdio.h>

/* The export format's version, in manifest.json and FORMAT.md. */
#define BRK_EXPORT_FORMAT_VERSION 1

/* Writes everything in the store at data_dir (DIR/amtsbote.db, which must exist: nothing is
 * created in data_dir) into out_dir (created; it must be absent or an empty directory). Takes
 * data_dir/broker.lock as the broker does (or finds it held by this process), so it refuses to
 * run next to a running broker. Prints a progress line every 10,000 records and a summary to
 * `progress` (may be NULL).
 *
 * Returns 0; AB_EINVAL (a bad out_dir, no database in data_dir, data_dir in use), AB_EIO (a
 * database, read or write error), AB_ENOMEM, with the reason naming the file or record in err;
 * nothing is left in out_dir then. Damaged records (checksum mismatch) are listed in
 * out_dir/damaged.jsonl instead of being exported, everything else is exported, and then it
 * returns AB_EINTERNAL naming the first damaged record and damaged.jsonl. */
int brk_export_run(const char *data_dir, const char *out_dir, FILE *progress, char *err,
                   size_t errlen);

/* The format description written as FORMAT.md (also in README.md). Borrowed, static. */
const char *brk_export_format_text(void);

#endif
