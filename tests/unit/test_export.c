/*
 * Unit tests for broker/export.c: a store written with store.h, exported, and read back with
 * jansson field by field; payload files byte for byte and by hash; a damaged record listed and
 * not exported; refusals for an output directory that is not empty, a data directory without a
 * database and a data directory in use.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "amtsbote.h"
#include "amtsbote/v1/amtsbote.pb-c.h"
#include "export.h"
#include "store.h"
#include "wire.h"

/* ---- helpers --------------------------------------------------------------------------------- */

static int
rm_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    return type == FTW_DP ? rmdir(path) : unlink(path);
}

static void
rm_rf(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh directory; `base` receives its path. */
static void
make_tmp(char base[256])
{
    snprintf(base, 256, "/tmp/amtsbote-export-XXXXXX");
    assert_non_null(mkdtemp(base));
}

static char *
read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 8192;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        size_t r = fread(buf + n, 1, 4096, f);
        n += r;
        if (r == 0)
            break;
    }
    fclose(f);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

static void
sha256_hex(const void *data, size_t len, char out[65])
{
    uint8_t sum[32];
    unsigned int n = 32;
    assert_int_equal(EVP_Digest(data, len, sum, &n, EVP_sha256(), NULL), 1);
    ab_hex(sum, 32, out);
}

static void
hex(const uint8_t *data, size_t len, char *out)
{
    ab_hex(data, len, out);
}

/* Reads dir/name as JSON lines into an array (every line must parse and end in '\n'). */
static json_t *
read_lines(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    size_t len;
    char *text = read_all(path, &len);
    assert_non_null(text);
    json_t *arr = json_array();
    char *p = text;
    while (*p) {
        char *nl = strchr(p, '\n');
        assert_non_null(nl);
        json_error_t jerr;
        json_t *o = json_loadb(p, (size_t)(nl - p), JSON_REJECT_DUPLICATES, &jerr);
        if (o == NULL)
            fail_msg("%s: %s", path, jerr.text);
        assert_true(json_is_object(o));
        json_array_append_new(arr, o);
        p = nl + 1;
    }
    free(text);
    return arr;
}

static const char *
jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v))
        fail_msg("field %s is not a string", key);
    return json_string_value(v);
}

static long long
jint(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        fail_msg("field %s is not an integer", key);
    return json_integer_value(v);
}

static void
assert_null_field(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_null(v))
        fail_msg("field %s is not null", key);
}

/* ---- a store with one of everything ---------------------------------------------------------- */

static const uint8_t MID1[16] = {0x01, 0x8f, 0x00, 0x11, 0x22, 0x33, 0x74, 0x44,
                                 0x85, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb};
static const uint8_t MID2[16] = {0x01, 0x8f, 0x00, 0x11, 0x22, 0x33, 0x74, 0x44,
                                 0x85, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xcc};
static const uint8_t MID3[16] = {0x01, 0x8f, 0x00, 0x11, 0x22, 0x33, 0x74, 0x44,
                                 0x85, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xdd};
static const uint8_t MID4[16] = {0x01, 0x8f, 0x00, 0x11, 0x22, 0x33, 0x74, 0x44,
                                 0x85, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xee};
static const uint8_t CORR[16] = {0xc0, 0x77, 0xe1, 0xa7, 0x10, 0x00, 0x70, 0x00,
                                 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x42};
/* binary, with a NUL and a 0xff: payloads are bytes, not text */
static const uint8_t PAYLOAD1[] = {0x0a, 0x05, 'M', 0xc3, 0xbc, 'l', 'l', 0x00, 0xff, 0x10, 0x01};
static const uint8_t PAYLOAD3[] = {0xde, 0xad, 0xbe, 0xef};
static const uint8_t PAYLOAD4[] = {0x08, 0x96, 0x01};

/* Packs a header into a new buffer. */
static uint8_t *
pack(const Amtsbote__V1__Header *h, size_t *len)
{
    *len = amtsbote__v1__header__get_packed_size(h);
    uint8_t *buf = malloc(*len ? *len : 1);
    assert_non_null(buf);
    amtsbote__v1__header__pack(h, buf);
    return buf;
}

static uint8_t *
message_header(const uint8_t *mid, size_t *len)
{
    Amtsbote__V1__Header h = AMTSBOTE__V1__HEADER__INIT;
    Amtsbote__V1__Header__HeadersEntry e1 = AMTSBOTE__V1__HEADER__HEADERS_ENTRY__INIT;
    Amtsbote__V1__Header__HeadersEntry e2 = AMTSBOTE__V1__HEADER__HEADERS_ENTRY__INIT;
    Amtsbote__V1__Header__HeadersEntry *entries[] = {&e1, &e2};
    Amtsbote__V1__TraceContext tc = AMTSBOTE__V1__TRACE_CONTEXT__INIT;
    e1.key = "aktenzeichen";
    e1.value = "AZ 4711/24";
    e2.key = "bearbeiter";
    e2.value = "Frau M\xc3\xbcller \"Leitung\"";
    tc.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    h.version = 1;
    h.kind = AMTSBOTE__V1__KIND__KIND_DELIVER;
    h.message_id.data = (uint8_t *)mid;
    h.message_id.len = 16;
    h.correlation_id.data = (uint8_t *)CORR;
    h.correlation_id.len = 16;
    h.recipient = "kommune.09162000.meldeamt";
    h.sender = "bund.bmi";
    h.schema = "meldewesen.v1.UmzugGemeldet";
    h.purpose = "BMG \xc2\xa7"
                "34";
    h.classification = AMTSBOTE__V1__CLASSIFICATION__VS_NUR_FUER_DEN_DIENSTGEBRAUCH;
    h.n_headers = 2;
    h.headers = entries;
    h.trace = &tc;
    h.timestamp_ms = 1717000000123ULL;
    h.sequence = 1;
    return pack(&h, len);
}

static uint8_t *
receipt_header(size_t *len)
{
    Amtsbote__V1__Header h = AMTSBOTE__V1__HEADER__INIT;
    Amtsbote__V1__Error er = AMTSBOTE__V1__ERROR__INIT;
    er.code = AMTSBOTE__V1__ERROR_CODE__DEADLINE_EXCEEDED;
    er.text = "delivered 5 times without an acknowledgement";
    h.version = 1;
    h.kind = AMTSBOTE__V1__KIND__KIND_RECEIPT;
    h.message_id.data = (uint8_t *)MID2;
    h.message_id.len = 16;
    h.correlation_id.data = (uint8_t *)MID1;
    h.correlation_id.len = 16;
    h.recipient = "kommune.09162000.meldeamt";
    h.receipt = AMTSBOTE__V1__RECEIPT_STATUS__FAILED;
    h.error = &er;
    h.timestamp_ms = 1717000009999ULL;
    h.sequence = 2;
    return pack(&h, len);
}

static uint8_t *
event_header(size_t *len)
{
    Amtsbote__V1__Header h = AMTSBOTE__V1__HEADER__INIT;
    h.version = 1;
    h.kind = AMTSBOTE__V1__KIND__KIND_EVENT;
    h.message_id.data = (uint8_t *)MID4;
    h.message_id.len = 16;
    h.topic = "meldewesen.umzug.09162000";
    h.sender = "kommune.09162000.meldeamt";
    h.schema = "meldewesen.v1.UmzugGemeldet";
    h.classification = AMTSBOTE__V1__CLASSIFICATION__OFFEN;
    h.timestamp_ms = 1717000020000ULL;
    h.sequence = 4;
    return pack(&h, len);
}

/* Writes the store: mail 1 (a message), 2 (a receipt, no payload), 3 (a dead letter), sent
 * records for 1 (acknowledged) and 3 (failed) and 5 (waiting, its mail record gone), one
 * subscription, event 4. */
static void
fill_store(const char *dir)
{
    char err[512] = "";
    brk_store_t *st = brk_store_open(dir, err, sizeof err);
    if (st == NULL)
        fail_msg("open: %s", err);
    size_t h1len, h2len, h3len, h4len;
    uint8_t *h1 = message_header(MID1, &h1len), *h2 = receipt_header(&h2len);
    uint8_t *h3 = message_header(MID3, &h3len), *h4 = event_header(&h4len);

    brk_store_mail_t m = {0};
    m.seq = 1;
    m.recipient = "kommune.09162000.meldeamt";
    m.kind = BRK_MAIL_MESSAGE;
    m.sender = "bund.bmi";
    m.message_id = MID1;
    m.message_id_len = 16;
    m.header = h1;
    m.header_len = h1len;
    m.payload = PAYLOAD1;
    m.payload_len = sizeof PAYLOAD1;
    m.accepted_ms = 1717000000123ULL;
    m.expires_ms = 1717604800123ULL;
    m.attempts = 2;
    assert_int_equal(brk_store_mail_put(st, &m), 0);

    m.seq = 2;
    m.recipient = "bund.bmi";
    m.kind = BRK_MAIL_RECEIPT;
    m.sender = "kommune.09162000.meldeamt";
    m.message_id = MID2;
    m.header = h2;
    m.header_len = h2len;
    m.payload = NULL;
    m.payload_len = 0;
    m.accepted_ms = 1717000009999ULL;
    m.expires_ms = 0;
    m.attempts = 0;
    assert_int_equal(brk_store_mail_put(st, &m), 0);

    m.seq = 3;
    m.recipient = "kommune.09162000.meldeamt";
    m.kind = BRK_MAIL_MESSAGE;
    m.sender = "bund.bmi";
    m.message_id = MID3;
    m.header = h3;
    m.header_len = h3len;
    m.payload = PAYLOAD3;
    m.payload_len = sizeof PAYLOAD3;
    m.accepted_ms = 1717000000500ULL;
    m.expires_ms = 1717604800500ULL;
    m.attempts = 5;
    m.dead = 1;
    assert_int_equal(brk_store_mail_put(st, &m), 0);

    brk_store_sent_t s = {0};
    s.sender = "bund.bmi";
    s.message_id = MID1;
    s.recipient = "kommune.09162000.meldeamt";
    s.seq = 1;
    s.size = sizeof PAYLOAD1;
    s.accepted_ms = 1717000000123ULL;
    s.state = BRK_SENT_ACKED;
    s.delivered_ms = 1717000001000ULL;
    s.ended_ms = 1717000002000ULL;
    s.attempts = 2;
    assert_int_equal(brk_store_sent_put(st, &s), 0);
    s.message_id = MID3;
    s.seq = 3;
    s.size = sizeof PAYLOAD3;
    s.accepted_ms = 1717000000500ULL;
    s.state = BRK_SENT_FAILED;
    s.delivered_ms = 1717000000600ULL;
    s.ended_ms = 1717000009999ULL;
    s.attempts = 5;
    assert_int_equal(brk_store_sent_put(st, &s), 0);
    s.message_id = MID2;
    s.seq = 5;
    s.size = 0;
    s.accepted_ms = 1717000030000ULL;
    s.state = BRK_SENT_WAITING;
    s.delivered_ms = s.ended_ms = 0;
    s.attempts = 0;
    assert_int_equal(brk_store_sent_put(st, &s), 0);

    brk_store_sub_t sub = {"land.by.statistik", "umzuege", "meldewesen.umzug.>", 3,
                           1716000000000ULL};
    assert_int_equal(brk_store_sub_put(st, &sub), 0);

    brk_store_event_t e = {0};
    e.seq = 4;
    e.topic = "meldewesen.umzug.09162000";
    e.sender = "kommune.09162000.meldeamt";
    e.message_id = MID4;
    e.message_id_len = 16;
    e.header = h4;
    e.header_len = h4len;
    e.payload = PAYLOAD4;
    e.payload_len = sizeof PAYLOAD4;
    e.published_ms = 1717000020000ULL;
    assert_int_equal(brk_store_event_put(st, &e), 0);

    if (brk_store_commit(st, err, sizeof err) != 0)
        fail_msg("commit: %s", err);
    brk_store_close(&st);
    free(h1);
    free(h2);
    free(h3);
    free(h4);
}

/* The payload file of `rec` holds exactly `want` and its hash is the record's. */
static void
check_payload(const char *out, json_t *rec, const char *file, const uint8_t *want, size_t len)
{
    assert_string_equal(jstr(rec, "payload_file"), file);
    assert_int_equal(jint(rec, "payload_size"), (long long)len);
    char path[512], hx[65];
    snprintf(path, sizeof path, "%s/%s", out, file);
    size_t n;
    char *got = read_all(path, &n);
    assert_non_null(got);
    assert_int_equal(n, len);
    assert_memory_equal(got, want, len);
    sha256_hex(want, len, hx);
    assert_string_equal(jstr(rec, "payload_sha256"), hx);
    free(got);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600); /* personal data: the owner's only */
}

/* Nothing named OUT.partial-* is left next to OUT. */
static void
assert_no_partial(const char *parent)
{
    DIR *d = opendir(parent);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strstr(de->d_name, ".partial-"))
            fail_msg("left behind: %s/%s", parent, de->d_name);
    closedir(d);
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void
test_everything_exported(void **state)
{
    (void)state;
    char base[256], data[300], out[300], err[1024] = "";
    make_tmp(base);
    snprintf(data, sizeof data, "%s/data", base);
    snprintf(out, sizeof out, "%s/export", base);
    assert_int_equal(mkdir(data, 0700), 0);
    fill_store(data);

    char *prog = NULL;
    size_t proglen = 0;
    FILE *pf = open_memstream(&prog, &proglen);
    int rc = brk_export_run(data, out, pf, err, sizeof err);
    fclose(pf);
    if (rc != 0)
        fail_msg("export: %s (%s)", err, ab_err_name(rc));
    assert_non_null(strstr(prog,
                           "3 mail records (1 dead letters, 1 receipts), 3 sent, "
                           "1 subscriptions, 1 events, 4 payload files (18 bytes), 0 damaged"));
    free(prog);
    assert_no_partial(base);

    /* mail.jsonl */
    json_t *mail = read_lines(out, "mail.jsonl");
    assert_int_equal(json_array_size(mail), 3);
    char hx[65];
    json_t *r = json_array_get(mail, 0);
    assert_int_equal(jint(r, "seq"), 1);
    assert_string_equal(jstr(r, "kind"), "message");
    assert_string_equal(jstr(r, "recipient"), "kommune.09162000.meldeamt");
    assert_string_equal(jstr(r, "sender"), "bund.bmi");
    hex(MID1, 16, hx);
    assert_string_equal(jstr(r, "message_id"), hx);
    assert_int_equal(jint(r, "accepted_ms"), 1717000000123LL);
    assert_int_equal(jint(r, "expires_ms"), 1717604800123LL);
    assert_int_equal(jint(r, "attempts"), 2);
    assert_true(json_is_false(json_object_get(r, "dead")));
    check_payload(out, r, "payloads/mail-1.bin", PAYLOAD1, sizeof PAYLOAD1);
    json_t *h = json_object_get(r, "header");
    assert_true(json_is_object(h));
    assert_int_equal(jint(h, "version"), 1);
    assert_string_equal(jstr(h, "kind"), "KIND_DELIVER");
    assert_string_equal(jstr(h, "message_id"), hx);
    hex(CORR, 16, hx);
    assert_string_equal(jstr(h, "correlation_id"), hx);
    assert_string_equal(jstr(h, "recipient"), "kommune.09162000.meldeamt");
    assert_string_equal(jstr(h, "sender"), "bund.bmi");
    assert_string_equal(jstr(h, "schema"), "meldewesen.v1.UmzugGemeldet");
    assert_string_equal(jstr(h, "purpose"), "BMG \xc2\xa7"
                                            "34");
    assert_string_equal(jstr(h, "classification"), "VS_NUR_FUER_DEN_DIENSTGEBRAUCH");
    assert_string_equal(jstr(h, "service"), "");
    assert_string_equal(jstr(h, "topic"), "");
    assert_int_equal(jint(h, "deadline_ms"), 0);
    json_t *hm = json_object_get(h, "headers");
    assert_int_equal(json_object_size(hm), 2);
    assert_string_equal(jstr(hm, "aktenzeichen"), "AZ 4711/24");
    assert_string_equal(jstr(hm, "bearbeiter"), "Frau M\xc3\xbcller \"Leitung\"");
    assert_string_equal(jstr(json_object_get(h, "trace"), "traceparent"),
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    assert_null_field(h, "error");
    assert_string_equal(jstr(h, "receipt"), "RECEIPT_UNSPECIFIED");
    assert_int_equal(jint(h, "timestamp_ms"), 1717000000123LL);
    assert_int_equal(jint(h, "sequence"), 1);
    assert_int_equal(jint(h, "attempt"), 0);

    r = json_array_get(mail, 1);
    assert_int_equal(jint(r, "seq"), 2);
    assert_string_equal(jstr(r, "kind"), "receipt");
    assert_string_equal(jstr(r, "recipient"), "bund.bmi");
    assert_null_field(r, "expires_ms");
    assert_int_equal(jint(r, "attempts"), 0);
    check_payload(out, r, "payloads/mail-2.bin", (const uint8_t *)"", 0);
    h = json_object_get(r, "header");
    assert_string_equal(jstr(h, "kind"), "KIND_RECEIPT");
    assert_string_equal(jstr(h, "receipt"), "FAILED");
    hex(MID1, 16, hx);
    assert_string_equal(jstr(h, "correlation_id"), hx);
    json_t *er = json_object_get(h, "error");
    assert_string_equal(jstr(er, "code"), "DEADLINE_EXCEEDED");
    assert_string_equal(jstr(er, "text"), "delivered 5 times without an acknowledgement");
    assert_null_field(h, "trace");

    r = json_array_get(mail, 2);
    assert_int_equal(jint(r, "seq"), 3);
    assert_true(json_is_true(json_object_get(r, "dead")));
    assert_int_equal(jint(r, "attempts"), 5);
    check_payload(out, r, "payloads/mail-3.bin", PAYLOAD3, sizeof PAYLOAD3);

    /* sent.jsonl */
    json_t *sent = read_lines(out, "sent.jsonl");
    assert_int_equal(json_array_size(sent), 3);
    r = json_array_get(sent, 0);
    assert_int_equal(jint(r, "seq"), 1);
    assert_string_equal(jstr(r, "sender"), "bund.bmi");
    hex(MID1, 16, hx);
    assert_string_equal(jstr(r, "message_id"), hx);
    assert_string_equal(jstr(r, "recipient"), "kommune.09162000.meldeamt");
    assert_int_equal(jint(r, "size"), sizeof PAYLOAD1);
    assert_int_equal(jint(r, "accepted_ms"), 1717000000123LL);
    assert_int_equal(jint(r, "delivered_ms"), 1717000001000LL);
    assert_int_equal(jint(r, "ended_ms"), 1717000002000LL);
    assert_string_equal(jstr(r, "state"), "acknowledged");
    assert_int_equal(jint(r, "attempts"), 2);
    r = json_array_get(sent, 1);
    assert_int_equal(jint(r, "seq"), 3);
    assert_string_equal(jstr(r, "state"), "failed");
    assert_int_equal(jint(r, "attempts"), 5);
    r = json_array_get(sent, 2);
    assert_int_equal(jint(r, "seq"), 5);
    assert_string_equal(jstr(r, "state"), "waiting");
    assert_null_field(r, "delivered_ms");
    assert_null_field(r, "ended_ms");

    /* subscriptions.jsonl */
    json_t *subs = read_lines(out, "subscriptions.jsonl");
    assert_int_equal(json_array_size(subs), 1);
    r = json_array_get(subs, 0);
    assert_string_equal(jstr(r, "participant"), "land.by.statistik");
    assert_string_equal(jstr(r, "name"), "umzuege");
    assert_string_equal(jstr(r, "pattern"), "meldewesen.umzug.>");
    assert_int_equal(jint(r, "acked_upto"), 3);
    assert_int_equal(jint(r, "created_ms"), 1716000000000LL);

    /* events.jsonl */
    json_t *events = read_lines(out, "events.jsonl");
    assert_int_equal(json_array_size(events), 1);
    r = json_array_get(events, 0);
    assert_int_equal(jint(r, "seq"), 4);
    assert_string_equal(jstr(r, "topic"), "meldewesen.umzug.09162000");
    assert_string_equal(jstr(r, "sender"), "kommune.09162000.meldeamt");
    hex(MID4, 16, hx);
    assert_string_equal(jstr(r, "message_id"), hx);
    assert_int_equal(jint(r, "published_ms"), 1717000020000LL);
    h = json_object_get(r, "header");
    assert_string_equal(jstr(h, "kind"), "KIND_EVENT");
    assert_string_equal(jstr(h, "topic"), "meldewesen.umzug.09162000");
    assert_string_equal(jstr(h, "classification"), "OFFEN");
    check_payload(out, r, "payloads/event-4.bin", PAYLOAD4, sizeof PAYLOAD4);

    json_t *damaged = read_lines(out, "damaged.jsonl");
    assert_int_equal(json_array_size(damaged), 0);

    /* manifest.json: version, counts and the hash of every .jsonl file */
    char path[512];
    snprintf(path, sizeof path, "%s/manifest.json", out);
    json_error_t jerr;
    json_t *man = json_load_file(path, 0, &jerr);
    if (man == NULL)
        fail_msg("manifest: %s", jerr.text);
    assert_string_equal(jstr(man, "format"), "amtsbote-export");
    assert_int_equal(jint(man, "format_version"), 1);
    assert_string_equal(jstr(man, "broker_version"), AMTSBOTE_VERSION);
    assert_true(jint(man, "created_ms") > 1700000000000LL);
    assert_true(jint(man, "store_layout") >= 2);
    assert_int_equal(jint(man, "damaged"), 0);
    json_t *pl = json_object_get(man, "payloads");
    assert_int_equal(jint(pl, "count"), 4);
    assert_int_equal(jint(pl, "bytes"), sizeof PAYLOAD1 + sizeof PAYLOAD3 + sizeof PAYLOAD4);
    const char *names[] = {"mail.jsonl", "sent.jsonl", "subscriptions.jsonl", "events.jsonl",
                           "damaged.jsonl"};
    const long long counts[] = {3, 3, 1, 1, 0};
    json_t *files = json_object_get(man, "files");
    for (int i = 0; i < 5; i++) {
        json_t *f = json_object_get(files, names[i]);
        assert_non_null(f);
        assert_int_equal(jint(f, "records"), counts[i]);
        snprintf(path, sizeof path, "%s/%s", out, names[i]);
        size_t n;
        char *text = read_all(path, &n);
        sha256_hex(text, n, hx);
        assert_string_equal(jstr(f, "sha256"), hx);
        free(text);
    }

    /* FORMAT.md is the format text, which README.md carries verbatim */
    snprintf(path, sizeof path, "%s/FORMAT.md", out);
    char *fmt = read_all(path, NULL);
    assert_non_null(fmt);
    assert_non_null(strstr(fmt, "version 1"));
    assert_non_null(strstr(fmt, brk_export_format_text()));
    free(fmt);
    char *readme = read_all(AB_SOURCE_DIR "/README.md", NULL);
    assert_non_null(readme);
    assert_non_null(strstr(readme, "## Leaving with your data: --export"));
    if (strstr(readme, brk_export_format_text()) == NULL)
        fail_msg("README.md's section 'Leaving with your data: --export' differs from the format "
                 "text in broker/export.c");
    free(readme);

    json_decref(mail);
    json_decref(sent);
    json_decref(subs);
    json_decref(events);
    json_decref(damaged);
    json_decref(man);
    rm_rf(base);
}

/* Flips one byte of a blob column of record `seq` in table `table`, behind the store's back. */
static void
damage(const char *data, const char *table, const char *column, long long seq)
{
    char path[512], sql[256];
    snprintf(path, sizeof path, "%s/amtsbote.db", data);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    snprintf(sql, sizeof sql, "SELECT %s FROM %s WHERE seq = ?;", column, table);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, seq);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int n = sqlite3_column_bytes(st, 0);
    assert_true(n > 0);
    uint8_t *blob = malloc((size_t)n);
    memcpy(blob, sqlite3_column_blob(st, 0), (size_t)n);
    sqlite3_finalize(st);
    blob[n / 2] ^= 0x01;
    snprintf(sql, sizeof sql, "UPDATE %s SET %s = ? WHERE seq = ?;", table, column);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_blob(st, 1, blob, n, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, seq);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    assert_int_equal(sqlite3_changes(db), 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(blob);
}

static void
test_damaged_record_listed_not_exported(void **state)
{
    (void)state;
    char base[256], data[300], out[300], err[1024] = "";
    make_tmp(base);
    snprintf(data, sizeof data, "%s/data", base);
    snprintf(out, sizeof out, "%s/export", base);
    assert_int_equal(mkdir(data, 0700), 0);
    fill_store(data);
    damage(data, "mail", "payload", 1);
    damage(data, "events", "header", 4);

    int rc = brk_export_run(data, out, NULL, err, sizeof err);
    assert_int_equal(rc, AB_EINTERNAL);
    assert_non_null(strstr(err, "2 damaged record(s)"));
    assert_non_null(strstr(err, "damaged.jsonl"));
    assert_non_null(strstr(err, "mail record 1")); /* the first, named */

    json_t *dmg = read_lines(out, "damaged.jsonl");
    assert_int_equal(json_array_size(dmg), 2);
    json_t *r = json_array_get(dmg, 0);
    assert_string_equal(jstr(r, "table"), "mail");
    assert_int_equal(jint(r, "seq"), 1);
    assert_non_null(strstr(jstr(r, "error"), "SHA-256"));
    r = json_array_get(dmg, 1);
    assert_string_equal(jstr(r, "table"), "events");
    assert_int_equal(jint(r, "seq"), 4);

    /* everything else is there; the damaged ones are not, not even their payload files */
    json_t *mail = read_lines(out, "mail.jsonl");
    assert_int_equal(json_array_size(mail), 2);
    assert_int_equal(jint(json_array_get(mail, 0), "seq"), 2);
    assert_int_equal(jint(json_array_get(mail, 1), "seq"), 3);
    check_payload(out, json_array_get(mail, 1), "payloads/mail-3.bin", PAYLOAD3, sizeof PAYLOAD3);
    json_t *events = read_lines(out, "events.jsonl");
    assert_int_equal(json_array_size(events), 0);
    json_t *sent = read_lines(out, "sent.jsonl");
    assert_int_equal(json_array_size(sent), 3);
    char path[512];
    struct stat sb;
    snprintf(path, sizeof path, "%s/payloads/mail-1.bin", out);
    assert_int_not_equal(stat(path, &sb), 0);
    snprintf(path, sizeof path, "%s/payloads/event-4.bin", out);
    assert_int_not_equal(stat(path, &sb), 0);
    snprintf(path, sizeof path, "%s/manifest.json", out);
    json_t *man = json_load_file(path, 0, NULL);
    assert_non_null(man);
    assert_int_equal(jint(man, "damaged"), 2);
    assert_int_equal(jint(json_object_get(json_object_get(man, "files"), "mail.jsonl"), "records"),
                     2);

    json_decref(dmg);
    json_decref(mail);
    json_decref(events);
    json_decref(sent);
    json_decref(man);
    rm_rf(base);
}

static void
test_out_dir_not_empty(void **state)
{
    (void)state;
    char base[256], data[300], out[300], path[400], err[1024] = "";
    make_tmp(base);
    snprintf(data, sizeof data, "%s/data", base);
    snprintf(out, sizeof out, "%s/export", base);
    assert_int_equal(mkdir(data, 0700), 0);
    fill_store(data);
    assert_int_equal(mkdir(out, 0700), 0);
    snprintf(path, sizeof path, "%s/notes.txt", out);
    FILE *f = fopen(path, "w");
    fputs("keep me\n", f);
    fclose(f);

    assert_int_equal(brk_export_run(data, out, NULL, err, sizeof err), AB_EINVAL);
    assert_non_null(strstr(err, out));
    assert_non_null(strstr(err, "is not empty"));
    char *kept = read_all(path, NULL);
    assert_string_equal(kept, "keep me\n");
    free(kept);
    snprintf(path, sizeof path, "%s/manifest.json", out);
    struct stat sb;
    assert_int_not_equal(stat(path, &sb), 0);
    assert_no_partial(base);

    /* a file where the directory should be */
    snprintf(path, sizeof path, "%s/notes.txt", out);
    assert_int_equal(brk_export_run(data, path, NULL, err, sizeof err), AB_EINVAL);
    assert_non_null(strstr(err, "not a directory"));

    /* an empty directory is fine (with a trailing slash, too) */
    snprintf(path, sizeof path, "%s/empty/", base);
    assert_int_equal(mkdir(path, 0700), 0);
    int rc = brk_export_run(data, path, NULL, err, sizeof err);
    if (rc)
        fail_msg("%s", err);
    snprintf(path, sizeof path, "%s/empty/mail.jsonl", base);
    assert_int_equal(stat(path, &sb), 0);
    assert_no_partial(base);
    rm_rf(base);
}

static void
test_data_dir_without_database(void **state)
{
    (void)state;
    char base[256], data[300], out[300], path[400], err[1024] = "";
    make_tmp(base);
    snprintf(data, sizeof data, "%s/data", base);
    snprintf(out, sizeof out, "%s/export", base);
    assert_int_equal(mkdir(data, 0700), 0);

    assert_int_equal(brk_export_run(data, out, NULL, err, sizeof err), AB_EINVAL);
    assert_non_null(strstr(err, "amtsbote.db"));
    assert_non_null(strstr(err, "no Amtsbote database"));
    /* nothing was created: not a database in data, not an export */
    struct stat sb;
    snprintf(path, sizeof path, "%s/amtsbote.db", data);
    assert_int_not_equal(stat(path, &sb), 0);
    assert_int_not_equal(stat(out, &sb), 0);
    assert_no_partial(base);

    /* a data directory that does not exist */
    snprintf(path, sizeof path, "%s/nowhere", base);
    assert_int_equal(brk_export_run(path, out, NULL, err, sizeof err), AB_EINVAL);
    assert_non_null(strstr(err, path));
    assert_int_not_equal(stat(path, &sb), 0);

    /* a file that is not a database */
    snprintf(path, sizeof path, "%s/amtsbote.db", data);
    FILE *f = fopen(path, "w");
    fputs("this is not SQLite, it is a note about SQLite that is long enough to be read\n", f);
    fclose(f);
    assert_int_equal(brk_export_run(data, out, NULL, err, sizeof err), AB_EIO);
    assert_non_null(strstr(err, path));
    assert_int_not_equal(stat(out, &sb), 0);
    assert_no_partial(base);

    assert_int_equal(brk_export_run(NULL, out, NULL, err, sizeof err), AB_EINVAL);
    rm_rf(base);
}

static void
test_data_dir_in_use(void **state)
{
    (void)state;
    char base[256], data[300], out[300], path[400], err[1024] = "";
    make_tmp(base);
    snprintf(data, sizeof data, "%s/data", base);
    snprintf(out, sizeof out, "%s/export", base);
    assert_int_equal(mkdir(data, 0700), 0);
    fill_store(data);

    /* a broker (another pid) holds the lock */
    snprintf(path, sizeof path, "%s/broker.lock", data);
    int fd = open(path, O_RDWR | O_CREAT, 0600);
    assert_true(fd >= 0);
    assert_int_equal(flock(fd, LOCK_EX | LOCK_NB), 0);
    assert_int_equal(write(fd, "999999\n", 7), 7);
    assert_int_equal(brk_export_run(data, out, NULL, err, sizeof err), AB_EINVAL);
    assert_non_null(strstr(err, "in use by a running broker (pid 999999"));
    struct stat sb;
    assert_int_not_equal(stat(out, &sb), 0);

    /* this process holds it (as the broker's start does before --export): allowed */
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(pwrite(fd, pid, (size_t)n, 0), n);
    int rc = brk_export_run(data, out, NULL, err, sizeof err);
    if (rc)
        fail_msg("%s", err);
    close(fd);

    /* released: allowed */
    rm_rf(out);
    rc = brk_export_run(data, out, NULL, err, sizeof err);
    if (rc)
        fail_msg("%s", err);
    rm_rf(base);
}

/* More than 10,000 records: a progress line. Subscriptions make up the bulk (a payload file per
 * record costs half a millisecond on some file systems); the events after them still land. */
static void
test_progress(void **state)
{
    (void)state;
    char base[256], data[300], out[300], err[1024] = "";
    make_tmp(base);
    snprintf(data, sizeof data, "%s/data", base);
    snprintf(out, sizeof out, "%s/export", base);
    assert_int_equal(mkdir(data, 0700), 0);
    brk_store_t *st = brk_store_open(data, err, sizeof err);
    assert_non_null(st);
    for (int i = 0; i < 10000; i++) {
        char name[32];
        snprintf(name, sizeof name, "s%05d", i);
        brk_store_sub_t sub = {"land.by.statistik", name, "a.>", 0, 1716000000000ULL};
        assert_int_equal(brk_store_sub_put(st, &sub), 0);
    }
    size_t hlen;
    uint8_t *h = event_header(&hlen);
    for (uint64_t i = 1; i <= 3; i++) {
        uint8_t mid[16] = {0};
        memcpy(mid, &i, sizeof i);
        brk_store_event_t e = {
            i, "a.b", "x.y", mid, 16, h, hlen, (const uint8_t *)&i, sizeof i, 1717000000000ULL + i};
        assert_int_equal(brk_store_event_put(st, &e), 0);
    }
    assert_int_equal(brk_store_commit(st, err, sizeof err), 0);
    brk_store_close(&st);
    free(h);

    char *prog = NULL;
    size_t proglen = 0;
    FILE *pf = open_memstream(&prog, &proglen);
    int rc = brk_export_run(data, out, pf, err, sizeof err);
    fclose(pf);
    if (rc)
        fail_msg("%s", err);
    assert_non_null(strstr(prog, "export: 10000 records (mail 0, sent 0, subscriptions 10000, "
                                 "events 0, damaged 0)\n"));
    assert_non_null(strstr(prog, "10000 subscriptions, 3 events, 3 payload files (24 bytes)"));
    free(prog);
    json_t *subs = read_lines(out, "subscriptions.jsonl");
    assert_int_equal(json_array_size(subs), 10000);
    assert_string_equal(jstr(json_array_get(subs, 9999), "name"), "s09999");
    json_t *ev = read_lines(out, "events.jsonl");
    assert_int_equal(json_array_size(ev), 3);
    uint64_t i = 3;
    check_payload(out, json_array_get(ev, 2), "payloads/event-3.bin", (const uint8_t *)&i,
                  sizeof i);
    json_decref(subs);
    json_decref(ev);
    rm_rf(base);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_everything_exported),
        cmocka_unit_test(test_damaged_record_listed_not_exported),
        cmocka_unit_test(test_out_dir_not_empty),
        cmocka_unit_test(test_data_dir_without_database),
        cmocka_unit_test(test_data_dir_in_use),
        cmocka_unit_test(test_progress),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
