/*
 * export.c - `--export`: the store's contents as JSON lines plus payload files (see export.h,
 * and the format in s_format below, which README.md carries verbatim).
 */
#include "export.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "amtsbote.h"
#include "amtsbote/v1/amtsbote.pb-c.h"
#include "store.h"
#include "wire.h"

#define S_PROGRESS_EVERY 10000

/* The body of FORMAT.md; README.md's section "Leaving with your data: --export" contains it
 * verbatim (test_export checks), so the two cannot drift apart. */
static const char s_format[] =
    "An export is a directory. Every `.jsonl` file is UTF-8 with one JSON object per line, each\n"
    "line ending in `\\n` (an empty file: no records). Integers are exact 64-bit values (read "
    "them\n"
    "as integers, not as doubles); times are Unix milliseconds (UTC); byte strings (message ids,\n"
    "correlation ids, hashes) are lower-case hex; `null` means \"none\" (never expires, not yet\n"
    "delivered). Enumerations are their names in `proto/amtsbote/v1/amtsbote.proto`, or the "
    "number\n"
    "for a value this version does not know. Readers ignore fields they do not know: version 1 "
    "may\n"
    "gain fields; a change that breaks readers gets a new `format_version`.\n"
    "\n"
    "| file | what |\n"
    "| --- | --- |\n"
    "| `FORMAT.md` | this description |\n"
    "| `manifest.json` | `format` (`\"amtsbote-export\"`), `format_version` (1), `broker_version`, "
    "`created_ms`, `created` (ISO 8601, UTC), `source` (the database file), `store_layout`, "
    "`files` (per `.jsonl` file its `records` and `sha256`), `payloads` (`count`, `bytes`), "
    "`damaged` (how many records were damaged) |\n"
    "| `mail.jsonl` | the mailboxes: messages waiting for their recipient, receipts waiting for "
    "their sender, dead letters |\n"
    "| `sent.jsonl` | what was sent: the timeline of each message that ended (acknowledged, "
    "expired, failed) within the dedup window; one still waiting is in `mail.jsonl` |\n"
    "| `subscriptions.jsonl` | durable subscriptions |\n"
    "| `events.jsonl` | events kept for durable subscriptions |\n"
    "| `damaged.jsonl` | records whose checksum did not match: not exported, listed here |\n"
    "| `payloads/mail-<seq>.bin`, `payloads/event-<seq>.bin` | the payload bytes exactly as sent "
    "(the application's protobuf message) |\n"
    "\n"
    "`mail.jsonl`, in sequence order: `seq` (the broker's number for the record), `kind`\n"
    "(`\"message\"` or `\"receipt\"`), `recipient`, `sender` (participant addresses), "
    "`message_id`,\n"
    "`accepted_ms`, `expires_ms` (`null`: never), `attempts` (deliveries so far), `dead` (`true`: "
    "a\n"
    "dead letter, delivered `max_deliveries` times without an acknowledgement), `header`,\n"
    "`payload_file` (relative to the export), `payload_size`, `payload_sha256`.\n"
    "\n"
    "`header` is the stored `amtsbote.v1.Header` the record is delivered with, every field "
    "present:\n"
    "`version`, `kind`, `message_id`, `correlation_id` (for a receipt: the message it is about),\n"
    "`service`, `recipient`, `topic`, `schema` (the payload's message type), `purpose`,\n"
    "`classification`, `deadline_ms`, `headers` (an object), `trace` (`traceparent`, "
    "`tracestate`;\n"
    "or `null`), `error` (`code`, `text`, `field`; or `null`; for a receipt: why), `sender`,\n"
    "`heartbeat_ms`, `max_payload`, `credit`, `subscription`, `receipt` (`DELIVERED`, `EXPIRED`,\n"
    "`FAILED`), `timestamp_ms`, `attempt`, `sequence`. A header that does not decode is `null`, "
    "and\n"
    "`header_hex` holds its bytes.\n"
    "\n"
    "`sent.jsonl`, in sequence order: `seq` (of the mail record), `sender`, `message_id`,\n"
    "`recipient`, `size` (payload bytes), `accepted_ms`, `delivered_ms` (first delivery; `null`: "
    "not\n"
    "yet), `ended_ms` (`null`: still waiting), `state` (`waiting`, `acknowledged`, `expired`,\n"
    "`failed`), `attempts`.\n"
    "\n"
    "`subscriptions.jsonl`, by participant and name: `participant`, `name`, `pattern` (the topic\n"
    "pattern), `acked_upto` (events up to this sequence number are acknowledged), `created_ms`.\n"
    "\n"
    "`events.jsonl`, in sequence order: `seq`, `topic`, `sender`, `message_id`, `published_ms`,\n"
    "`header` (as above), `payload_file`, `payload_size`, `payload_sha256`.\n"
    "\n"
    "`damaged.jsonl`: `table` (`mail`, `events`, `sent`, `subscriptions`), `seq` (`null` when the\n"
    "store could not tell), `error` (the store's reason). What a damaged record holds is not\n"
    "exported; the export then ends with an error (exit code 1) after writing everything else.\n"
    "\n"
    "To check an export: the SHA-256 of each `.jsonl` file (`sha256sum`) equals its entry in\n"
    "`manifest.json`, and each payload file's equals its record's `payload_sha256`. Files are\n"
    "readable by their owner only: payloads are personal data.\n";

const char *
brk_export_format_text(void)
{
    return s_format;
}

/* One .jsonl file being written, hashed as it goes. */
typedef struct s_out {
    const char *name;
    FILE *f;
    EVP_MD_CTX *md;
    uint64_t records;
    uint8_t sha256[32];
} s_out_t;

enum { O_MAIL, O_SENT, O_SUBS, O_EVENTS, O_DAMAGED, O_COUNT };
static const char *const s_out_names[O_COUNT] = {"mail.jsonl", "sent.jsonl", "subscriptions.jsonl",
                                                 "events.jsonl", "damaged.jsonl"};

typedef struct s_ctx {
    char tmp[PATH_MAX + 32]; /* the export while it is written: OUT.partial-XXXXXX */
    char *err;
    size_t errlen;
    FILE *progress;
    brk_store_t *store;
    s_out_t out[O_COUNT];
    uint64_t total;    /* records written, damaged ones included */
    uint64_t payloads; /* payload files */
    uint64_t payload_bytes;
    uint64_t dead, receipts; /* for the summary */
    char first_damaged[512];
    int cb_rc;      /* an error raised in a callback (not the store's) */
    uint64_t *seqs; /* the sequence numbers of one table, collected before reading */
    size_t nseqs, capseqs;
} s_ctx_t;

/* ---- small helpers ------------------------------------------------------------------------- */

static void
s_sha256_hex(const uint8_t sum[32], char out[65])
{
    ab_hex(sum, 32, out);
}

/* A JSON string; a string that is not valid UTF-8 (the broker does not store such) has its bad
 * bytes replaced by '?' rather than making the line unreadable. */
static json_t *
s_str(const char *s)
{
    if (s == NULL)
        return json_null();
    json_t *j = json_string(s);
    if (j)
        return j;
    size_t n = strlen(s) + 1;
    char *clean = malloc(n);
    if (clean == NULL)
        return NULL;
    ab_utf8_sanitize(clean, n, s);
    j = json_string(clean);
    free(clean);
    return j;
}

static json_t *
s_hex(const uint8_t *data, size_t len)
{
    char *buf = malloc(2 * len + 1);
    if (buf == NULL)
        return NULL;
    ab_hex(data ? data : (const uint8_t *)"", len, buf);
    json_t *j = json_string(buf);
    free(buf);
    return j;
}

static json_t *
s_u64(uint64_t v)
{
    return json_integer((json_int_t)v);
}

/* A time or count where 0 means "none". */
static json_t *
s_u64_or_null(uint64_t v)
{
    return v ? s_u64(v) : json_null();
}

static json_t *
s_enum(const ProtobufCEnumDescriptor *d, int v)
{
    const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(d, v);
    return ev ? json_string(ev->name) : json_integer(v);
}

/* Sets key to value, taking the reference; a NULL value (out of memory) fails the object. */
static int
s_set(json_t *obj, const char *key, json_t *value)
{
    return value ? json_object_set_new(obj, key, value) : -1;
}

static int
s_oom(s_ctx_t *c)
{
    snprintf(c->err, c->errlen, "out of memory");
    return AB_ENOMEM;
}

/* ---- the stored Header as JSON --------------------------------------------------------------- */

static json_t *
s_header_fields(const Amtsbote__V1__Header *h)
{
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    int bad = 0;
    bad |= s_set(o, "version", json_integer(h->version));
    bad |= s_set(o, "kind", s_enum(&amtsbote__v1__kind__descriptor, (int)h->kind));
    bad |= s_set(o, "message_id", s_hex(h->message_id.data, h->message_id.len));
    bad |= s_set(o, "correlation_id", s_hex(h->correlation_id.data, h->correlation_id.len));
    bad |= s_set(o, "service", s_str(h->service));
    bad |= s_set(o, "recipient", s_str(h->recipient));
    bad |= s_set(o, "topic", s_str(h->topic));
    bad |= s_set(o, "schema", s_str(h->schema));
    bad |= s_set(o, "purpose", s_str(h->purpose));
    bad |= s_set(o, "classification",
                 s_enum(&amtsbote__v1__classification__descriptor, (int)h->classification));
    bad |= s_set(o, "deadline_ms", json_integer(h->deadline_ms));
    json_t *headers = json_object();
    for (size_t i = 0; headers && i < h->n_headers; i++) {
        const Amtsbote__V1__Header__HeadersEntry *e = h->headers[i];
        /* the key goes through s_str too, so a key that is not UTF-8 is sanitized as well */
        json_t *k = s_str(e->key), *v = s_str(e->value);
        if (k == NULL || v == NULL) {
            json_decref(v);
            bad = -1;
        } else if (json_object_set_new(headers, json_string_value(k), v) != 0) {
            bad = -1; /* jansson has released v */
        }
        json_decref(k);
    }
    bad |= s_set(o, "headers", headers);
    if (h->trace) {
        json_t *t = json_object();
        if (t) {
            bad |= s_set(t, "traceparent", s_str(h->trace->traceparent));
            bad |= s_set(t, "tracestate", s_str(h->trace->tracestate));
        }
        bad |= s_set(o, "trace", t);
    } else {
        bad |= s_set(o, "trace", json_null());
    }
    if (h->error) {
        json_t *e = json_object();
        if (e) {
            bad |= s_set(e, "code",
                         s_enum(&amtsbote__v1__error_code__descriptor, (int)h->error->code));
            bad |= s_set(e, "text", s_str(h->error->text));
            bad |= s_set(e, "field", s_str(h->error->field));
        }
        bad |= s_set(o, "error", e);
    } else {
        bad |= s_set(o, "error", json_null());
    }
    bad |= s_set(o, "sender", s_str(h->sender));
    bad |= s_set(o, "heartbeat_ms", json_integer(h->heartbeat_ms));
    bad |= s_set(o, "max_payload", json_integer(h->max_payload));
    bad |= s_set(o, "credit", json_integer(h->credit));
    bad |= s_set(o, "subscription", s_str(h->subscription));
    bad |= s_set(o, "receipt", s_enum(&amtsbote__v1__receipt_status__descriptor, (int)h->receipt));
    bad |= s_set(o, "timestamp_ms", s_u64(h->timestamp_ms));
    bad |= s_set(o, "attempt", json_integer(h->attempt));
    bad |= s_set(o, "sequence", s_u64(h->sequence));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Adds "header" (and "header_hex" when it does not decode) to `rec`. */
static int
s_set_header(json_t *rec, const uint8_t *data, size_t len)
{
    Amtsbote__V1__Header *h = amtsbote__v1__header__unpack(NULL, len, data);
    if (h == NULL)
        return s_set(rec, "header", json_null()) | s_set(rec, "header_hex", s_hex(data, len));
    json_t *j = s_header_fields(h);
    amtsbote__v1__header__free_unpacked(h, NULL);
    return s_set(rec, "header", j);
}

/* ---- files ----------------------------------------------------------------------------------- */

/* Writes all of buf to a new file dir/rel (mode 0600). Returns 0 or AB_EIO naming the file. */
static int
s_write_new(s_ctx_t *c, const char *rel, const void *buf, size_t len)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", c->tmp, rel);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        goto fail;
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            errno = e;
            goto fail;
        }
        p += n;
        len -= (size_t)n;
    }
    if (close(fd) != 0)
        goto fail;
    return 0;
fail:
    snprintf(c->err, c->errlen, "%s: %s", path, strerror(errno));
    return AB_EIO;
}

/* fsync of a file or directory by path. */
static int
s_fsync_path(s_ctx_t *c, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        snprintf(c->err, c->errlen, "%s: cannot sync: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return AB_EIO;
    }
    close(fd);
    return 0;
}

static int
s_out_open(s_ctx_t *c, s_out_t *o, const char *name)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", c->tmp, name);
    o->name = name;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || (o->f = fdopen(fd, "w")) == NULL) {
        snprintf(c->err, c->errlen, "%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return AB_EIO;
    }
    o->md = EVP_MD_CTX_new();
    if (o->md == NULL || EVP_DigestInit_ex(o->md, EVP_sha256(), NULL) != 1)
        return s_oom(c);
    return 0;
}

/* Appends `rec` as one line (takes the reference). */
static int
s_out_line(s_ctx_t *c, s_out_t *o, json_t *rec)
{
    char *line = json_dumps(rec, JSON_COMPACT);
    json_decref(rec);
    if (line == NULL)
        return s_oom(c);
    size_t n = strlen(line);
    line[n] = '\n'; /* replaces the NUL: the line is written with its length */
    int ok = fwrite(line, 1, n + 1, o->f) == n + 1 && EVP_DigestUpdate(o->md, line, n + 1) == 1;
    free(line);
    if (!ok) {
        snprintf(c->err, c->errlen, "%s/%s: write failed at record %llu: %s", c->tmp, o->name,
                 (unsigned long long)o->records + 1, strerror(errno));
        return AB_EIO;
    }
    o->records++;
    if (++c->total % S_PROGRESS_EVERY == 0 && c->progress) {
        fprintf(c->progress,
                "export: %llu records (mail %llu, sent %llu, subscriptions %llu, events %llu, "
                "damaged %llu)\n",
                (unsigned long long)c->total, (unsigned long long)c->out[O_MAIL].records,
                (unsigned long long)c->out[O_SENT].records,
                (unsigned long long)c->out[O_SUBS].records,
                (unsigned long long)c->out[O_EVENTS].records,
                (unsigned long long)c->out[O_DAMAGED].records);
        fflush(c->progress);
    }
    return 0;
}

/* Flushes, syncs and closes; the hash is final after this. */
static int
s_out_close(s_ctx_t *c, s_out_t *o)
{
    if (o->f == NULL)
        return 0;
    int ok = fflush(o->f) == 0 && fsync(fileno(o->f)) == 0;
    int e = errno;
    ok &= fclose(o->f) == 0;
    o->f = NULL;
    unsigned int n = 32;
    ok &= o->md && EVP_DigestFinal_ex(o->md, o->sha256, &n) == 1;
    if (!ok) {
        snprintf(c->err, c->errlen, "%s/%s: cannot write: %s", c->tmp, o->name, strerror(e));
        return AB_EIO;
    }
    return 0;
}

/* Writes payloads/<prefix>-<seq>.bin and adds payload_file, payload_size, payload_sha256. */
static int
s_payload(s_ctx_t *c, json_t *rec, const char *prefix, uint64_t seq, const uint8_t *data,
          size_t len)
{
    char rel[64];
    snprintf(rel, sizeof rel, "payloads/%s-%llu.bin", prefix, (unsigned long long)seq);
    int rc = s_write_new(c, rel, data, len);
    if (rc)
        return rc;
    uint8_t sum[32];
    unsigned int n = 32;
    char hex[65];
    if (EVP_Digest(data ? data : (const uint8_t *)"", len, sum, &n, EVP_sha256(), NULL) != 1)
        return s_oom(c);
    s_sha256_hex(sum, hex);
    c->payloads++;
    c->payload_bytes += len;
    if (s_set(rec, "payload_file", json_string(rel)) | s_set(rec, "payload_size", s_u64(len)) |
        s_set(rec, "payload_sha256", json_string(hex)))
        return s_oom(c);
    return 0;
}

/* Lists a damaged record (seq 0: unknown) with the store's reason. */
static int
s_damaged(s_ctx_t *c, const char *table, uint64_t seq, const char *why)
{
    if (c->first_damaged[0] == '\0')
        snprintf(c->first_damaged, sizeof c->first_damaged, "%s", why);
    json_t *rec = json_object();
    if (rec == NULL || s_set(rec, "table", json_string(table)) |
                           s_set(rec, "seq", s_u64_or_null(seq)) |
                           s_set(rec, "error", s_str(why))) {
        json_decref(rec);
        return s_oom(c);
    }
    return s_out_line(c, &c->out[O_DAMAGED], rec);
}

/* ---- the tables ------------------------------------------------------------------------------ */

static int
s_collect_seq(s_ctx_t *c, uint64_t seq)
{
    if (c->nseqs == c->capseqs) {
        size_t cap = c->capseqs ? 2 * c->capseqs : 1024;
        uint64_t *p = realloc(c->seqs, cap * sizeof *p);
        if (p == NULL)
            return s_oom(c);
        c->seqs = p;
        c->capseqs = cap;
    }
    c->seqs[c->nseqs++] = seq;
    return 0;
}

static int
s_on_mail_seq(void *arg, const brk_store_mail_t *m)
{
    s_ctx_t *c = arg;
    return c->cb_rc = s_collect_seq(c, m->seq);
}

static int
s_on_event_seq(void *arg, const brk_store_event_t *e)
{
    s_ctx_t *c = arg;
    return c->cb_rc = s_collect_seq(c, e->seq);
}

static int
s_on_mail(void *arg, const brk_store_mail_t *m)
{
    s_ctx_t *c = arg;
    json_t *rec = json_object();
    if (rec == NULL)
        return c->cb_rc = s_oom(c);
    const char *kind = m->kind == BRK_MAIL_MESSAGE   ? "message"
                       : m->kind == BRK_MAIL_RECEIPT ? "receipt"
                                                     : NULL;
    int bad =
        s_set(rec, "seq", s_u64(m->seq)) |
        s_set(rec, "kind", kind ? json_string(kind) : json_integer(m->kind)) |
        s_set(rec, "recipient", s_str(m->recipient)) | s_set(rec, "sender", s_str(m->sender)) |
        s_set(rec, "message_id", s_hex(m->message_id, m->message_id_len)) |
        s_set(rec, "accepted_ms", s_u64(m->accepted_ms)) |
        s_set(rec, "expires_ms", s_u64_or_null(m->expires_ms)) |
        s_set(rec, "attempts", json_integer(m->attempts)) |
        s_set(rec, "dead", json_boolean(m->dead)) | s_set_header(rec, m->header, m->header_len);
    if (bad) {
        json_decref(rec);
        return c->cb_rc = s_oom(c);
    }
    int rc = s_payload(c, rec, "mail", m->seq, m->payload, m->payload_len);
    if (rc) {
        json_decref(rec);
        return c->cb_rc = rc;
    }
    c->dead += m->dead != 0;
    c->receipts += m->kind == BRK_MAIL_RECEIPT;
    return c->cb_rc = s_out_line(c, &c->out[O_MAIL], rec);
}

static int
s_on_event(void *arg, const brk_store_event_t *e)
{
    s_ctx_t *c = arg;
    json_t *rec = json_object();
    if (rec == NULL)
        return c->cb_rc = s_oom(c);
    int bad = s_set(rec, "seq", s_u64(e->seq)) | s_set(rec, "topic", s_str(e->topic)) |
              s_set(rec, "sender", s_str(e->sender)) |
              s_set(rec, "message_id", s_hex(e->message_id, e->message_id_len)) |
              s_set(rec, "published_ms", s_u64(e->published_ms)) |
              s_set_header(rec, e->header, e->header_len);
    if (bad) {
        json_decref(rec);
        return c->cb_rc = s_oom(c);
    }
    int rc = s_payload(c, rec, "event", e->seq, e->payload, e->payload_len);
    if (rc) {
        json_decref(rec);
        return c->cb_rc = rc;
    }
    return c->cb_rc = s_out_line(c, &c->out[O_EVENTS], rec);
}

static const char *
s_sent_state(int state)
{
    switch (state) {
    case BRK_SENT_WAITING:
        return "waiting";
    case BRK_SENT_ACKED:
        return "acknowledged";
    case BRK_SENT_EXPIRED:
        return "expired";
    case BRK_SENT_FAILED:
        return "failed";
    }
    return NULL;
}

static int
s_on_sent(void *arg, const brk_store_sent_t *s)
{
    s_ctx_t *c = arg;
    json_t *rec = json_object();
    if (rec == NULL)
        return c->cb_rc = s_oom(c);
    const char *state = s_sent_state(s->state);
    int bad = s_set(rec, "seq", s_u64(s->seq)) | s_set(rec, "sender", s_str(s->sender)) |
              s_set(rec, "message_id", s_hex(s->message_id, AB_MESSAGE_ID_LEN)) |
              s_set(rec, "recipient", s_str(s->recipient)) | s_set(rec, "size", s_u64(s->size)) |
              s_set(rec, "accepted_ms", s_u64(s->accepted_ms)) |
              s_set(rec, "delivered_ms", s_u64_or_null(s->delivered_ms)) |
              s_set(rec, "ended_ms", s_u64_or_null(s->ended_ms)) |
              s_set(rec, "state", state ? json_string(state) : json_integer(s->state)) |
              s_set(rec, "attempts", json_integer(s->attempts));
    if (bad) {
        json_decref(rec);
        return c->cb_rc = s_oom(c);
    }
    return c->cb_rc = s_out_line(c, &c->out[O_SENT], rec);
}

static int
s_on_sub(void *arg, const brk_store_sub_t *s)
{
    s_ctx_t *c = arg;
    json_t *rec = json_object();
    if (rec == NULL)
        return c->cb_rc = s_oom(c);
    int bad = s_set(rec, "participant", s_str(s->participant)) |
              s_set(rec, "name", s_str(s->name)) | s_set(rec, "pattern", s_str(s->pattern)) |
              s_set(rec, "acked_upto", s_u64(s->acked_upto)) |
              s_set(rec, "created_ms", s_u64(s->created_ms));
    if (bad) {
        json_decref(rec);
        return c->cb_rc = s_oom(c);
    }
    return c->cb_rc = s_out_line(c, &c->out[O_SUBS], rec);
}

/* A store result after a callback ran: the callback's own error ends the export; the store's
 * AB_EINTERNAL is a damaged record, listed and skipped; anything else ends it. */
static int
s_after_read(s_ctx_t *c, int rc, const char *table, uint64_t seq, const char *why)
{
    if (rc == 0)
        return 0;
    if (c->cb_rc)
        return c->cb_rc;
    if (rc == AB_EINTERNAL)
        return s_damaged(c, table, seq, why);
    if (why != c->err)
        snprintf(c->err, c->errlen, "%s", why);
    return rc;
}

static int
s_export_mail(s_ctx_t *c)
{
    char why[1024] = "";
    c->nseqs = 0;
    c->cb_rc = 0;
    int rc = brk_store_mail_each(c->store, 0, s_on_mail_seq, c, why, sizeof why);
    if (rc) {
        /* a record that cannot even be listed cannot be skipped: the store stops there */
        rc = s_after_read(c, rc, "mail", 0, why);
        if (rc)
            return rc;
    }
    for (size_t i = 0; i < c->nseqs; i++) {
        c->cb_rc = 0;
        why[0] = '\0';
        rc = brk_store_mail_get(c->store, c->seqs[i], s_on_mail, c, why, sizeof why);
        if ((rc = s_after_read(c, rc, "mail", c->seqs[i], why)) != 0)
            return rc;
    }
    return 0;
}

static int
s_export_events(s_ctx_t *c)
{
    char why[1024] = "";
    c->nseqs = 0;
    c->cb_rc = 0;
    int rc = brk_store_event_each(c->store, 0, 0, s_on_event_seq, c, why, sizeof why);
    if (rc && (rc = s_after_read(c, rc, "events", 0, why)) != 0)
        return rc;
    for (size_t i = 0; i < c->nseqs; i++) {
        c->cb_rc = 0;
        why[0] = '\0';
        rc = brk_store_event_get(c->store, c->seqs[i], s_on_event, c, why, sizeof why);
        if ((rc = s_after_read(c, rc, "events", c->seqs[i], why)) != 0)
            return rc;
    }
    return 0;
}

static int
s_export_sent_subs(s_ctx_t *c)
{
    char why[1024] = "";
    c->cb_rc = 0;
    int rc = brk_store_sent_each(c->store, s_on_sent, c, why, sizeof why);
    /* the store stops at a damaged 'sent' record; those after it cannot be reached */
    if ((rc = s_after_read(c, rc, "sent", 0, why)) != 0)
        return rc;
    c->cb_rc = 0;
    why[0] = '\0';
    rc = brk_store_sub_each(c->store, s_on_sub, c, why, sizeof why);
    return s_after_read(c, rc, "subscriptions", 0, why);
}

/* ---- the directory --------------------------------------------------------------------------- */

static int
s_rm_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    if (type == FTW_DP)
        return rmdir(path);
    return unlink(path);
}

/* Checks that out_dir is absent or an empty directory. */
static int
s_check_out(const char *out_dir, char *err, size_t errlen)
{
    struct stat sb;
    if (stat(out_dir, &sb) != 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, errlen, "%s: %s", out_dir, strerror(errno));
        return AB_EIO;
    }
    if (!S_ISDIR(sb.st_mode)) {
        snprintf(err, errlen,
                 "%s exists and is not a directory: --export needs a new or empty "
                 "directory",
                 out_dir);
        return AB_EINVAL;
    }
    DIR *d = opendir(out_dir);
    if (d == NULL) {
        snprintf(err, errlen, "%s: %s", out_dir, strerror(errno));
        return AB_EIO;
    }
    struct dirent *de;
    int empty = 1;
    while (empty && (de = readdir(d)) != NULL)
        empty = strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0;
    closedir(d);
    if (!empty) {
        snprintf(err, errlen,
                 "%s is not empty: --export writes into a new or empty directory and "
                 "never mixes an export with other files",
                 out_dir);
        return AB_EINVAL;
    }
    return 0;
}

/* Checks that data_dir holds a database (nothing is created there) and takes data_dir/broker.lock
 * into *lock_fd (-1: there is no lock file, so no broker ever ran there, or this process holds
 * the lock already). Returns 0 or AB_EINVAL with the reason in err. */
static int
s_check_data(const char *data_dir, int *lock_fd, char *err, size_t errlen)
{
    struct stat sb;
    char path[PATH_MAX + 32];
    *lock_fd = -1;
    if (stat(data_dir, &sb) != 0) {
        snprintf(err, errlen, "data directory %s: %s", data_dir, strerror(errno));
        return AB_EINVAL;
    }
    if (!S_ISDIR(sb.st_mode)) {
        snprintf(err, errlen, "data directory %s is not a directory", data_dir);
        return AB_EINVAL;
    }
    snprintf(path, sizeof path, "%s/amtsbote.db", data_dir);
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        snprintf(err, errlen,
                 "%s: no Amtsbote database in data directory %s: is --data the broker's data "
                 "directory?",
                 path, data_dir);
        return AB_EINVAL;
    }
    snprintf(path, sizeof path, "%s/broker.lock", data_dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0; /* no broker ever ran here; SQLite's exclusive lock still guards the file */
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
        *lock_fd = fd;
        return 0;
    }
    char pid[32] = "";
    ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
    close(fd);
    if (n > 0 && strtol(pid, NULL, 10) == (long)getpid())
        return 0; /* the caller took it, as the broker's start does */
    pid[n > 0 ? n : 0] = '\0';
    pid[strcspn(pid, "\n")] = '\0';
    snprintf(err, errlen,
             "data directory %s is in use by a running broker (pid %s, %s is "
             "locked): stop it first",
             data_dir, pid[0] ? pid : "unknown", path);
    return AB_EINVAL;
}

static int
s_manifest(s_ctx_t *c, const char *data_dir)
{
    json_t *m = json_object(), *files = json_object(), *payloads = json_object();
    if (!m || !files || !payloads) {
        json_decref(m);
        json_decref(files);
        json_decref(payloads);
        return s_oom(c);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t now_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    char iso[80];
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(iso, sizeof iso, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(ts.tv_nsec / 1000000));
    char source[PATH_MAX + 32];
    snprintf(source, sizeof source, "%s/amtsbote.db", data_dir);
    int bad = 0;
    for (int i = 0; i < O_COUNT; i++) {
        json_t *f = json_object();
        char hex[65];
        s_sha256_hex(c->out[i].sha256, hex);
        if (f) {
            bad |= s_set(f, "records", s_u64(c->out[i].records));
            bad |= s_set(f, "sha256", json_string(hex));
        }
        bad |= s_set(files, c->out[i].name, f);
    }
    bad |= s_set(payloads, "count", s_u64(c->payloads));
    bad |= s_set(payloads, "bytes", s_u64(c->payload_bytes));
    bad |= s_set(m, "format", json_string("amtsbote-export"));
    bad |= s_set(m, "format_version", json_integer(BRK_EXPORT_FORMAT_VERSION));
#ifdef AMTSBOTE_VERSION
    bad |= s_set(m, "broker_version", json_string(AMTSBOTE_VERSION));
#else
    bad |= s_set(m, "broker_version", json_null());
#endif
    bad |= s_set(m, "created_ms", s_u64(now_ms));
    bad |= s_set(m, "created", json_string(iso));
    bad |= s_set(m, "source", s_str(source));
    bad |= s_set(m, "store_layout", json_integer(brk_store_layout_version(c->store)));
    bad |= s_set(m, "files", files);
    bad |= s_set(m, "payloads", payloads);
    bad |= s_set(m, "damaged", s_u64(c->out[O_DAMAGED].records));
    char *text = bad ? NULL : json_dumps(m, JSON_INDENT(2));
    json_decref(m);
    if (text == NULL)
        return s_oom(c);
    size_t n = strlen(text);
    text[n] = '\n';
    int rc = s_write_new(c, "manifest.json", text, n + 1);
    free(text);
    return rc;
}

/* Makes everything under c->tmp durable: the .jsonl files were synced as they closed; the
 * payload files are synced all at once with the file system (one syncfs instead of one fsync
 * per file), then the directories. */
static int
s_sync_all(s_ctx_t *c)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/manifest.json", c->tmp);
    int rc = s_fsync_path(c, path);
    if (rc)
        return rc;
    snprintf(path, sizeof path, "%s/FORMAT.md", c->tmp);
    if ((rc = s_fsync_path(c, path)) != 0)
        return rc;
    snprintf(path, sizeof path, "%s/payloads", c->tmp);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || syncfs(fd) != 0) {
        snprintf(c->err, c->errlen, "%s: cannot sync: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return AB_EIO;
    }
    close(fd);
    if ((rc = s_fsync_path(c, path)) != 0)
        return rc;
    return s_fsync_path(c, c->tmp);
}

int
brk_export_run(const char *data_dir, const char *out_dir, FILE *progress, char *err, size_t errlen)
{
    if (data_dir == NULL || out_dir == NULL || *data_dir == '\0' || *out_dir == '\0') {
        snprintf(err, errlen, "--export needs --data DIR and an output directory");
        return AB_EINVAL;
    }
    /* OUT without trailing slashes, so OUT.partial-XXXXXX is its sibling */
    char out[PATH_MAX];
    if (snprintf(out, sizeof out, "%s", out_dir) >= (int)sizeof out - 16) {
        snprintf(err, errlen, "%.64s...: path too long", out_dir);
        return AB_EINVAL;
    }
    for (size_t n = strlen(out); n > 1 && out[n - 1] == '/'; n--)
        out[n - 1] = '\0';
    int rc = s_check_out(out, err, errlen);
    if (rc)
        return rc;
    int lock_fd = -1;
    if ((rc = s_check_data(data_dir, &lock_fd, err, errlen)) != 0)
        return rc;

    s_ctx_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        if (lock_fd >= 0)
            close(lock_fd);
        snprintf(err, errlen, "out of memory");
        return AB_ENOMEM;
    }
    c->err = err;
    c->errlen = errlen;
    c->progress = progress;
    int have_tmp = 0;
    c->store = brk_store_open(data_dir, err, errlen);
    if (c->store == NULL) {
        rc = AB_EIO;
        goto done;
    }
    snprintf(c->tmp, sizeof c->tmp, "%s.partial-XXXXXX", out);
    if (mkdtemp(c->tmp) == NULL) {
        snprintf(err, errlen, "cannot create %s: %s", c->tmp, strerror(errno));
        rc = AB_EIO;
        goto done;
    }
    have_tmp = 1;
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/payloads", c->tmp);
    if (mkdir(path, 0700) != 0) {
        snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
        rc = AB_EIO;
        goto done;
    }
    char title[64];
    int tlen = snprintf(title, sizeof title, "# Amtsbote export format, version %d\n\n",
                        BRK_EXPORT_FORMAT_VERSION);
    char *format = malloc((size_t)tlen + sizeof s_format);
    if (format == NULL) {
        rc = s_oom(c);
        goto done;
    }
    memcpy(format, title, (size_t)tlen);
    memcpy(format + tlen, s_format, sizeof s_format);
    rc = s_write_new(c, "FORMAT.md", format, (size_t)tlen + sizeof s_format - 1);
    free(format);
    for (int i = 0; rc == 0 && i < O_COUNT; i++)
        rc = s_out_open(c, &c->out[i], s_out_names[i]);
    if (rc == 0)
        rc = s_export_mail(c);
    if (rc == 0)
        rc = s_export_sent_subs(c);
    if (rc == 0)
        rc = s_export_events(c);
    for (int i = 0; i < O_COUNT; i++) {
        int crc = s_out_close(c, &c->out[i]);
        if (rc == 0)
            rc = crc;
    }
    if (rc == 0)
        rc = s_manifest(c, data_dir);
    if (rc == 0)
        rc = s_sync_all(c);
    if (rc == 0 && rename(c->tmp, out) != 0) {
        snprintf(err, errlen, "cannot rename %s to %s: %s", c->tmp, out, strerror(errno));
        rc = AB_EIO;
    }
    if (rc == 0) {
        have_tmp = 0;
        /* the rename is durable once the parent directory is synced */
        char parent[PATH_MAX];
        snprintf(parent, sizeof parent, "%s", out);
        char *slash = strrchr(parent, '/');
        if (slash == parent)
            slash[1] = '\0';
        else if (slash)
            *slash = '\0';
        else
            snprintf(parent, sizeof parent, ".");
        rc = s_fsync_path(c, parent);
    }
    if (rc == 0 && progress) {
        fprintf(progress,
                "export: %llu mail records (%llu dead letters, %llu receipts), %llu sent, "
                "%llu subscriptions, %llu events, %llu payload files (%llu bytes), %llu damaged "
                "-> %s\n",
                (unsigned long long)c->out[O_MAIL].records, (unsigned long long)c->dead,
                (unsigned long long)c->receipts, (unsigned long long)c->out[O_SENT].records,
                (unsigned long long)c->out[O_SUBS].records,
                (unsigned long long)c->out[O_EVENTS].records, (unsigned long long)c->payloads,
                (unsigned long long)c->payload_bytes, (unsigned long long)c->out[O_DAMAGED].records,
                out);
        fflush(progress);
    }
    if (rc == 0 && c->out[O_DAMAGED].records > 0) {
        snprintf(err, errlen,
                 "%llu damaged record(s) not exported, listed in %s/damaged.jsonl; the first: %s",
                 (unsigned long long)c->out[O_DAMAGED].records, out, c->first_damaged);
        rc = AB_EINTERNAL;
    }
done:
    for (int i = 0; i < O_COUNT; i++) {
        if (c->out[i].f)
            fclose(c->out[i].f);
        EVP_MD_CTX_free(c->out[i].md);
    }
    /* a failed export leaves nothing behind: it would hold personal data nobody looks after */
    if (have_tmp)
        nftw(c->tmp, s_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    brk_store_close(&c->store);
    if (lock_fd >= 0)
        close(lock_fd);
    free(c->seqs);
    free(c);
    return rc;
}
