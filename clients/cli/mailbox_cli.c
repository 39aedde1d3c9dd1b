/*
 * mailbox_cli.c - `amtsbote send|inbox|status|publish|subscribe|unsubscribe`: store-and-forward
 * messages and events from the shell.
 *
 * Receiving: the library's handler only queues what arrives; the command's own loop prints,
 * writes and acknowledges in order, outside the library's dispatch. So fetching a payload's
 * schema from the registry (a nested call, during which more may arrive) never reorders the
 * output, and a message is acknowledged only after its line is on stdout (and its payload in
 * --payload-dir).
 */
#include "amtsbote/v1/amtsbote.pb-c.h"
#include "cli.h"
#include "mailbox.h"
#include "pbjson.h"
#include "policy.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_CREDIT 10
#define MAX_CREDIT 10000
#define DEFAULT_WAIT_MS 1000
#define MAX_TTL_MS UINT32_MAX     /* the header's deadline_ms: about 49 days */
#define MAX_WAIT_MS (86400000ull) /* --wait: one day */
#define RUN_SLICE_MS 200          /* the receive loop looks at signals this often */
#define MAX_SCHEMAS 64            /* payload types whose interface is cached */
#define STATUS_TIMEOUT_MS 10000

static const char *s_send_usage =
    "Usage: amtsbote [GLOBAL OPTIONS] send RECIPIENT [PAYLOAD] [OPTIONS]\n"
    "\n"
    "Puts a message into RECIPIENT's mailbox at the broker (a participant address such as\n"
    "kommune.09162000.meldeamt) and prints 'accepted MESSAGE_ID' once the broker has it on\n"
    "disk. The recipient takes it with 'amtsbote inbox' whenever it is connected; you get a\n"
    "receipt in your own inbox when it was acknowledged (or expired, or failed).\n"
    "\n"
    "The payload is PAYLOAD, or stdin when it is not given.\n"
    "  --schema TYPE      the payload's message type, e.g. meldewesen.v1.Anmeldung. When TYPE\n"
    "                     is registered (amtsbote schema push), PAYLOAD is JSON (proto3 JSON\n"
    "                     mapping; empty means {}) and is sent as protobuf; the broker checks\n"
    "                     it against TYPE.\n"
    "  --raw              send the payload's bytes as they are, even with --schema\n"
    "  --ttl DURATION     how long the message may wait for the recipient: 90s, 10m, 12h, 7d\n"
    "                     (units ms, s, m, h, d; at most 49d; default: the broker's, 7 days).\n"
    "                     Then it is removed and you get an EXPIRED receipt.\n"
    "  --message-id HEX   32 hex digits: send again with the id of a message whose fate is not\n"
    "                     known (a time-out); the broker stores it at most once within 24 h\n"
    "  --purpose TEXT     the legal basis, e.g. 'BMG §34'\n"
    "  --classification OFFEN|VS-NUR-FUER-DEN-DIENSTGEBRAUCH\n"
    "\n"
    "Exit codes: 0 accepted; 10 MAILBOX_FULL (the recipient's quota: try again later);\n"
    "3 UNAVAILABLE (the broker cannot store it now: nothing was stored) or no answer in time\n"
    "(TIMED_OUT: it may or may not be stored; send again with --message-id); 8 a bad\n"
    "recipient, option or payload (INVALID_ARGUMENT, TOO_LARGE); 9 FORBIDDEN or\n"
    "SCHEMA_INVALID; 11 RATE_LIMITED (this participant sends too fast: slow down); 2 usage.\n"
    "The error is printed as 'amtsbote: NAME: text'.\n"
    "\n"
    "Example:\n"
    "  amtsbote --broker tcp://127.0.0.1:7450 --as bund.bmi send kommune.09162000.meldeamt \\\n"
    "    --schema meldewesen.v1.Anmeldung --ttl 7d '{\"name\": {\"familienname\": \"Muster\"}}'\n";

static const char *s_inbox_usage =
    "Usage: amtsbote [GLOBAL OPTIONS] inbox [OPTIONS]\n"
    "\n"
    "Takes messages and receipts from your mailbox at the broker and prints one entry each:\n"
    "  message SEQ from SENDER id MESSAGE_ID schema TYPE SIZE bytes\n"
    "  PAYLOAD (as JSON when TYPE is registered, else base64)\n"
    "  receipt SEQ MESSAGE_ID to RECIPIENT DELIVERED|EXPIRED|FAILED at TIME[: why]\n"
    "\n"
    "  --ack              acknowledge each message after it is printed (and written to\n"
    "                     --payload-dir): the broker then deletes it and tells the sender.\n"
    "                     Without --ack nothing is acknowledged and the broker delivers the\n"
    "                     messages again later; each delivery counts towards its limit (5),\n"
    "                     after which a message is dead-lettered and its sender gets FAILED.\n"
    "  --follow           keep waiting for new messages until SIGINT or SIGTERM\n"
    "  --wait DURATION    without --follow: stop when nothing arrived for this long\n"
    "                     (default 1s; units ms, s, m, h, d)\n"
    "  --count N          stop after N messages and receipts (the credit is at most N)\n"
    "  --credit N         how many the broker delivers before one is acknowledged (default\n"
    "                     10, at most 10000)\n"
    "  --json             one JSON object per line: kind, sequence, sender, recipient,\n"
    "                     message_id, schema, timestamp_ms, attempt, receipt, about, error,\n"
    "                     size, and payload (JSON) or payload_base64\n"
    "  --payload-dir DIR  also write each message's payload to DIR/MESSAGE_ID.bin\n"
    "\n"
    "Example:\n"
    "  amtsbote --broker tcp://127.0.0.1:7450 --as kommune.09162000.meldeamt inbox --ack\n";

static const char *s_status_usage =
    "Usage: amtsbote [GLOBAL OPTIONS] status MESSAGE_ID [--sender ADDRESS] [--json]\n"
    "\n"
    "Asks the broker what became of a message sent with 'amtsbote send' (you must be its\n"
    "sender or its recipient) and prints its state (waiting, delivered, acknowledged, expired,\n"
    "failed), sender, recipient, size, deliveries and the timeline: each step with its time.\n"
    "  --sender ADDRESS   the sender, when you are the recipient (default: you)\n"
    "  --json             one JSON object\n"
    "\n"
    "Example:\n"
    "  amtsbote --broker tcp://127.0.0.1:7450 --as bund.bmi status "
    "0192f1c8a3e07b4c9d2e5f6a7b8c9d0e\n";

static const char *s_publish_usage =
    "Usage: amtsbote [GLOBAL OPTIONS] publish TOPIC [PAYLOAD] [OPTIONS]\n"
    "\n"
    "Publishes an event on TOPIC (dotted segments of A-Z a-z 0-9 _ -, e.g.\n"
    "meldewesen.umzug.09162000) and prints 'published MESSAGE_ID' once the broker has stored\n"
    "it for every durable subscription it matches. The payload is PAYLOAD, or stdin.\n"
    "  --schema TYPE      the payload's message type; JSON is converted when TYPE is registered\n"
    "  --raw              send the payload's bytes as they are\n"
    "  --purpose TEXT, --classification LEVEL   as for send\n"
    "Exit codes as for send.\n"
    "\n"
    "Example:\n"
    "  amtsbote --as kommune.09162000.meldeamt publish meldewesen.umzug.09162000 \\\n"
    "    --schema meldewesen.v1.Umzug '{\"ags\": \"09162000\"}'\n";

static const char *s_subscribe_usage =
    "Usage: amtsbote [GLOBAL OPTIONS] subscribe PATTERN [OPTIONS]\n"
    "\n"
    "Subscribes to the topics matching PATTERN ('*' is one segment, a last '>' the rest:\n"
    "meldewesen.umzug.>) and prints one entry per event:\n"
    "  event SEQ TOPIC from SENDER id MESSAGE_ID schema TYPE SIZE bytes\n"
    "  PAYLOAD (as JSON when TYPE is registered, else base64)\n"
    "Prints 'ready: subscribed to PATTERN ...' on stderr once the broker confirmed.\n"
    "\n"
    "  --durable NAME     a durable subscription (NAME: 1-64 of a-z 0-9 _ - .): the broker\n"
    "                     keeps its events while you are away, and the next 'subscribe\n"
    "                     --durable NAME' resumes after the last one acknowledged. Without it\n"
    "                     you see only what is published while you are subscribed.\n"
    "  --ack              acknowledge each event of a durable subscription after printing it\n"
    "  --follow, --wait DURATION, --count N, --credit N, --json, --payload-dir DIR\n"
    "                     as for inbox (--json adds topic and subscription)\n"
    "\n"
    "Example:\n"
    "  amtsbote --as bund.destatis subscribe 'meldewesen.umzug.>' --durable statistik --ack\n";

static const char *s_unsubscribe_usage =
    "Usage: amtsbote [GLOBAL OPTIONS] unsubscribe --durable NAME\n"
    "\n"
    "Deletes your durable subscription NAME at the broker, with the events waiting for it.\n";

/* ---- a signal ends a receive loop ---------------------------------------------------------- */

static volatile sig_atomic_t s_interrupted;
static ab_client_t *volatile s_running; /* the client a signal stops */

static void
s_on_signal(int sig)
{
    (void)sig;
    s_interrupted = 1;
    if (s_running)
        ab_client_stop(s_running); /* async-signal-safe */
}

static int
s_help(int argc, char **argv, const char *usage)
{
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            return 1;
        }
    }
    return 0;
}

/* ---- payloads in: argument or stdin, JSON through the registry --------------------------- */

/* The payload: `arg`, or all of stdin. 0 with *data (owned: *owned) or an exit code. */
static int
s_read_payload(const char *arg, const uint8_t **data, size_t *len, uint8_t **owned)
{
    *owned = NULL;
    if (arg) {
        *data = (const uint8_t *)arg;
        *len = strlen(arg);
        return 0;
    }
    if (cli_read_all(0, owned, len) != 0) {
        if (errno == EFBIG) {
            fprintf(stderr, "amtsbote: TOO_LARGE: the payload on stdin is larger than %u MiB\n",
                    AB_CLI_MAX_INPUT >> 20);
            return EXIT_MALFORMED;
        }
        fprintf(stderr, "amtsbote: IO_ERROR: cannot read stdin: %s\n", strerror(errno));
        return EXIT_OTHER;
    }
    *data = *owned;
    return 0;
}

/*
 * Converts a JSON payload to protobuf when `schema` is a registered message type. 0 with
 * the payload replaced by the packed one (owned by *packed) or left as they are (not registered),
 * or an exit code.
 */
static int
s_json_payload(const opts_t *opts, ab_client_t *client, const char *schema, const uint8_t **data,
               size_t *len, uint8_t **packed)
{
    ab_schema_set_t *set = NULL;
    int code = cli_fetch_set(opts, client, schema, &set);
    if (code == 1) {
        if (isatty(2))
            fprintf(stderr,
                    "amtsbote: note: %s is not a registered message type; the payload is sent "
                    "as it is (--raw)\n",
                    schema);
        return 0;
    }
    if (code != 0)
        return code;
    const ProtobufCMessageDescriptor *d = ab_schema_message(set, schema);
    if (!d) {
        fprintf(stderr,
                "amtsbote: INVALID_ARGUMENT: --schema %s names no message type (a service or "
                "an enum?); give the fully-qualified message type of the payload\n",
                schema);
        ab_schema_set_destroy(&set);
        return EXIT_MALFORMED;
    }
    char err[512];
    size_t plen = 0;
    int empty = *len == 0;
    if (ab_json_to_pb(d, empty ? "{}" : (const char *)*data, empty ? 2 : *len, packed, &plen, err,
                      sizeof err) != 0) {
        fprintf(stderr, "amtsbote: INVALID_ARGUMENT: the payload is not %s in JSON: %s\n", d->name,
                err);
        ab_schema_set_destroy(&set);
        return EXIT_MALFORMED;
    }
    ab_schema_set_destroy(&set);
    *data = *packed;
    *len = plen;
    return 0;
}

/* The exit code for a failed send or publish; prints the error and, where it helps, what to do. */
static int
s_store_failed(const ab_client_t *client, int rc, const char *id_hex)
{
    int code = cli_report(client, rc);
    if (rc == AB_EMAILBOX_FULL)
        code = EXIT_MAILBOX_FULL;
    if ((rc == AB_ETIMEDOUT || rc == AB_EUNAVAILABLE) && id_hex && id_hex[0])
        fprintf(stderr,
                "amtsbote: hint: the message id was %s; send again with --message-id %s and it "
                "is stored at most once\n",
                id_hex, id_hex);
    return code;
}

/* What send and publish share: TARGET [PAYLOAD] and the options. */
typedef struct {
    const char *target, *payload, *schema, *purpose;
    int raw, classification, has_id;
    uint64_t ttl_ms;
    uint8_t id[16];
} store_args_t;

static int
s_store_args(const char *cmd, int is_send, int argc, char **argv, store_args_t *a)
{
    const char *val = NULL;
    int only_args = 0;
    for (int i = 0; i < argc; i++) {
        int m;
        if (!only_args && strcmp(argv[i], "--") == 0) {
            only_args = 1;
        } else if (!only_args && strcmp(argv[i], "--raw") == 0) {
            a->raw = 1;
        } else if (!only_args && (m = cli_opt(argc, argv, &i, "--schema", &val)) != 0) {
            if (m < 0 || !*val)
                return cli_usage_error("%s: --schema needs a message type, e.g. "
                                       "meldewesen.v1.Anmeldung",
                                       cmd);
            a->schema = val;
        } else if (!only_args && (m = cli_opt(argc, argv, &i, "--purpose", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("%s: --purpose needs a text", cmd);
            a->purpose = val;
        } else if (!only_args && (m = cli_opt(argc, argv, &i, "--classification", &val)) != 0) {
            if (m < 0 || (a->classification = ab_policy_level_parse(val)) < 0)
                return cli_usage_error("%s: --classification takes OFFEN or "
                                       "VS-NUR-FUER-DEN-DIENSTGEBRAUCH (VS-NFD)",
                                       cmd);
        } else if (!only_args && is_send && (m = cli_opt(argc, argv, &i, "--ttl", &val)) != 0) {
            if (m < 0 || cli_parse_duration(val, MAX_TTL_MS, &a->ttl_ms) != 0 || a->ttl_ms == 0)
                return cli_usage_error("send: --ttl needs a duration such as 90s, 10m, 12h or 7d "
                                       "(units ms, s, m, h, d; more than 0, at most 49d), not "
                                       "'%s'",
                                       m < 0 ? "" : val);
        } else if (!only_args && is_send &&
                   (m = cli_opt(argc, argv, &i, "--message-id", &val)) != 0) {
            if (m < 0 || cli_parse_message_id(val, a->id) != 0)
                return cli_usage_error("send: --message-id needs 32 hex digits, the id that "
                                       "'accepted' printed, not '%s'",
                                       m < 0 ? "" : val);
            a->has_id = 1;
        } else if (!only_args && argv[i][0] == '-' && argv[i][1] != '\0') {
            return cli_usage_error("%s: unknown option '%s'; see 'amtsbote %s --help'", cmd,
                                   argv[i], cmd);
        } else if (!a->target) {
            a->target = argv[i];
        } else if (!a->payload) {
            a->payload = argv[i];
        } else {
            return cli_usage_error("%s: unexpected argument '%s' (quote the payload)", cmd,
                                   argv[i]);
        }
    }
    if (!a->target)
        return cli_usage_error(is_send ? "send: to whom? e.g. send kommune.09162000.meldeamt "
                                         "'{...}'"
                                       : "publish: on which TOPIC? e.g. publish "
                                         "meldewesen.umzug.09162000 '{...}'");
    return 0;
}

/* send and publish. */
static int
s_store(const opts_t *opts, int argc, char **argv, int is_send)
{
    const char *cmd = is_send ? "send" : "publish";
    if (s_help(argc, argv, is_send ? s_send_usage : s_publish_usage))
        return EXIT_OK;
    store_args_t a;
    memset(&a, 0, sizeof a);
    int code = s_store_args(cmd, is_send, argc, argv, &a);
    if (code != 0)
        return code;
    /* named before connecting, so that a typo is not taken for a broker problem */
    char why[AB_WHY_LEN];
    if (is_send ? ab_wire_check_participant(a.target, why) != 0
                : ab_topic_check(a.target, 0, why) != 0) {
        fprintf(stderr, "amtsbote: INVALID_ARGUMENT: %s%s\n", is_send ? "recipient: " : "", why);
        return EXIT_MALFORMED;
    }
    const uint8_t *data = NULL;
    size_t len = 0;
    uint8_t *owned = NULL, *packed = NULL;
    if ((code = s_read_payload(a.payload, &data, &len, &owned)) != 0)
        return code;
    ab_client_t *client = NULL;
    if ((code = cli_connect(opts, &client)) != 0) {
        free(owned);
        return code;
    }
    int rc = ab_client_set_purpose(client, a.purpose);
    if (rc == 0)
        rc = ab_client_set_classification(client, a.classification);
    if (rc != 0) {
        code = cli_report(client, rc);
        goto done;
    }
    if (a.schema && !a.raw &&
        (code = s_json_payload(opts, client, a.schema, &data, &len, &packed)) != 0)
        goto done;
    char id[33];
    if (is_send) {
        ab_send_options_t so = {
            .schema = a.schema, .ttl_ms = (uint32_t)a.ttl_ms, .message_id = a.has_id ? a.id : NULL};
        rc = ab_send(client, a.target, data, len, &so, id, opts->timeout_ms);
    } else {
        rc = ab_publish(client, a.target, data, len, a.schema, id, opts->timeout_ms);
    }
    if (rc != 0) {
        code = s_store_failed(client, rc, id);
        goto done;
    }
    printf("%s %s\n", is_send ? "accepted" : "published", id);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "amtsbote: IO_ERROR: cannot write to stdout: %s\n", strerror(errno));
        code = EXIT_OTHER;
    }
done:
    ab_client_destroy(&client);
    free(packed);
    free(owned);
    return code;
}

int
cli_cmd_send(const opts_t *opts, int argc, char **argv)
{
    return s_store(opts, argc, argv, 1);
}

int
cli_cmd_publish(const opts_t *opts, int argc, char **argv)
{
    return s_store(opts, argc, argv, 0);
}

/* ---- receiving: inbox and subscribe ------------------------------------------------------- */

typedef struct qmsg {
    struct qmsg *next;
    ab_message_t *msg;
} qmsg_t;

typedef struct {
    char name[256];
    ab_schema_set_t *set; /* NULL: not registered (or not loadable): base64 */
    const ProtobufCMessageDescriptor *d;
} schema_entry_t;

typedef struct {
    const opts_t *opts;
    ab_client_t *client;
    int events; /* subscribe rather than inbox */
    int ack, follow, json;
    uint32_t credit, count;
    uint64_t wait_ms;
    const char *payload_dir;
    const char *pattern, *durable;
    qmsg_t *head, *tail;
    uint32_t done;
    schema_entry_t schemas[MAX_SCHEMAS];
    size_t nschemas;
} recv_t;

/* The handler: queues, the loop prints. The library gives us ownership of `msg`. */
static void
s_on_message(ab_client_t *client, ab_message_t *msg, void *arg)
{
    recv_t *r = arg;
    qmsg_t *q = malloc(sizeof *q);
    if (!q) {
        ab_message_free(&msg); /* delivered again later */
        return;
    }
    q->msg = msg;
    q->next = NULL;
    if (r->tail)
        r->tail->next = q;
    else
        r->head = q;
    r->tail = q;
    ab_client_stop(client); /* back to the loop, which prints it */
}

/* The registered descriptor of `name`, or NULL (not registered: printed as base64). */
static const ProtobufCMessageDescriptor *
s_schema(recv_t *r, const char *name)
{
    if (!name[0])
        return NULL;
    for (size_t i = 0; i < r->nschemas; i++)
        if (strcmp(r->schemas[i].name, name) == 0)
            return r->schemas[i].d;
    if (r->nschemas == MAX_SCHEMAS)
        return NULL;
    schema_entry_t *e = &r->schemas[r->nschemas++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->set = NULL;
    e->d = NULL;
    /* a failure other than "not registered" is printed once; the payloads then go as base64 */
    if (cli_fetch_set(r->opts, r->client, name, &e->set) == 0)
        e->d = ab_schema_message(e->set, name);
    return e->d;
}

static const char *
s_receipt_name(int receipt)
{
    switch (receipt) {
    case AB_RECEIPT_DELIVERED:
        return "DELIVERED";
    case AB_RECEIPT_EXPIRED:
        return "EXPIRED";
    case AB_RECEIPT_FAILED:
        return "FAILED";
    default:
        return "UNKNOWN";
    }
}

/* Writes the payload to DIR/ID.bin through a temporary file. 0 or an exit code (printed). */
static int
s_write_payload(const char *dir, const ab_message_t *m, const void *data, size_t len)
{
    char path[PATH_MAX], tmp[PATH_MAX];
    const char *id = ab_message_id(m);
    if (strlen(id) != 32) {
        fprintf(stderr, "amtsbote: MALFORMED: message %llu has no message id to name its file\n",
                (unsigned long long)ab_message_sequence(m));
        return EXIT_OTHER;
    }
    snprintf(path, sizeof path, "%s/%s.bin", dir, id);
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, id);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int ok = fd >= 0;
    const uint8_t *p = data;
    size_t left = len;
    while (ok && left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        ok = w > 0;
        if (ok) {
            p += w;
            left -= (size_t)w;
        }
    }
    ok = ok && fsync(fd) == 0;
    int e = errno;
    if (fd >= 0 && close(fd) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = 0;
        e = errno;
    }
    if (!ok) {
        unlink(tmp);
        fprintf(stderr, "amtsbote: IO_ERROR: cannot write '%s': %s\n", path, strerror(e));
        return EXIT_OTHER;
    }
    return 0;
}

/* The payload as pretty or compact JSON (a new string) when its schema is registered, else
 * NULL. */
static char *
s_payload_json(recv_t *r, const ab_message_t *m, const void *data, size_t len, int flags)
{
    const ProtobufCMessageDescriptor *d = s_schema(r, ab_message_schema(m));
    char *json = NULL, err[256];
    if (!d || ab_pb_to_json(d, data, len, flags, &json, err, sizeof err) != 0)
        return NULL;
    return json;
}

static void
s_json_str(json_t *o, const char *key, const char *v)
{
    json_object_set_new(o, key, json_string(v ? v : ""));
}

/* Prints one message, receipt or event. 0, or an exit code when it could not be written. */
static int
s_print(recv_t *r, const ab_message_t *m)
{
    size_t len = 0;
    const void *data = ab_message_payload(m, &len);
    int kind = ab_message_kind(m);
    char when[48];
    cli_iso_time(ab_message_timestamp_ms(m), when, sizeof when);
    if (r->payload_dir && kind != AB_MSG_RECEIPT) {
        int code = s_write_payload(r->payload_dir, m, data, len);
        if (code != 0)
            return code;
    }
    if (r->json) {
        json_t *o = json_object();
        if (!o)
            return EXIT_OTHER;
        s_json_str(o, "kind",
                   kind == AB_MSG_MESSAGE   ? "message"
                   : kind == AB_MSG_RECEIPT ? "receipt"
                                            : "event");
        json_object_set_new(o, "sequence", json_integer((json_int_t)ab_message_sequence(m)));
        s_json_str(o, "sender", ab_message_sender(m));
        s_json_str(o, "recipient", ab_message_recipient(m));
        s_json_str(o, "message_id", ab_message_id(m));
        s_json_str(o, "schema", ab_message_schema(m));
        json_object_set_new(o, "timestamp_ms",
                            json_integer((json_int_t)ab_message_timestamp_ms(m)));
        json_object_set_new(o, "attempt", json_integer(ab_message_attempt(m)));
        if (kind == AB_MSG_RECEIPT)
            s_json_str(o, "receipt", s_receipt_name(ab_message_receipt(m)));
        else
            json_object_set_new(o, "receipt", json_null());
        s_json_str(o, "about", ab_message_about(m));
        s_json_str(o, "error", ab_message_error(m));
        if (kind == AB_MSG_EVENT) {
            s_json_str(o, "topic", ab_message_topic(m));
            s_json_str(o, "subscription", ab_message_subscription(m));
        }
        json_object_set_new(o, "size", json_integer((json_int_t)len));
        if (kind != AB_MSG_RECEIPT) {
            char *pj = s_payload_json(r, m, data, len, 0);
            json_t *parsed = pj ? json_loads(pj, JSON_DECODE_ANY, NULL) : NULL;
            free(pj);
            if (parsed) {
                json_object_set_new(o, "payload", parsed);
            } else {
                char *b64 = cli_base64(data, len);
                s_json_str(o, "payload_base64", b64 ? b64 : "");
                free(b64);
            }
        }
        char *line = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!line)
            return EXIT_OTHER;
        printf("%s\n", line);
        free(line);
    } else if (kind == AB_MSG_RECEIPT) {
        const char *err = ab_message_error(m);
        printf("receipt %llu %s to %s %s at %s%s%s\n", (unsigned long long)ab_message_sequence(m),
               ab_message_about(m), ab_message_recipient(m), s_receipt_name(ab_message_receipt(m)),
               when, err[0] ? ": " : "", err);
    } else {
        const char *schema = ab_message_schema(m);
        char seq[24];
        if (ab_message_sequence(m))
            snprintf(seq, sizeof seq, "%llu", (unsigned long long)ab_message_sequence(m));
        else
            snprintf(seq, sizeof seq, "-");
        if (kind == AB_MSG_MESSAGE)
            printf("message %s from %s id %s schema %s %zu bytes", seq, ab_message_sender(m),
                   ab_message_id(m), schema[0] ? schema : "-", len);
        else
            printf("event %s %s from %s id %s schema %s %zu bytes", seq, ab_message_topic(m),
                   ab_message_sender(m), ab_message_id(m), schema[0] ? schema : "-", len);
        if (ab_message_attempt(m) > 1)
            printf(" (attempt %u)", ab_message_attempt(m));
        putchar('\n');
        char *pj = s_payload_json(r, m, data, len, AB_JSON_PRETTY);
        if (pj) {
            printf("%s\n", pj);
            free(pj);
        } else if (len) {
            char *b64 = cli_base64(data, len);
            printf("%s\n", b64 ? b64 : "(no memory for the payload's base64)");
            free(b64);
        }
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "amtsbote: IO_ERROR: cannot write to stdout: %s\n", strerror(errno));
        return EXIT_OTHER;
    }
    return 0;
}

static void
s_queue_free(recv_t *r)
{
    while (r->head) {
        qmsg_t *q = r->head;
        r->head = q->next;
        ab_message_free(&q->msg); /* not acknowledged: delivered again later */
        free(q);
    }
    r->tail = NULL;
}

static uint64_t
s_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Prints, writes and acknowledges what arrives until --count, idleness or a signal. */
static int
s_recv_loop(recv_t *r)
{
    int code = 0;
    uint64_t last = s_mono_ms();
    while (!s_interrupted) {
        while (r->head && (!r->count || r->done < r->count)) {
            qmsg_t *q = r->head;
            r->head = q->next;
            if (!r->head)
                r->tail = NULL;
            ab_message_t *m = q->msg;
            free(q);
            code = s_print(r, m);
            if (code != 0) {
                ab_message_free(&m);
                return code;
            }
            r->done++;
            last = s_mono_ms();
            int rc = r->ack ? ab_ack(&m) : 0;
            ab_message_free(&m); /* without --ack: delivered again later */
            if (rc != 0)
                return cli_report(r->client, rc);
        }
        if (r->count && r->done >= r->count)
            break;
        uint64_t now = s_mono_ms();
        if (!r->follow && now - last >= r->wait_ms)
            break;
        uint64_t t = r->follow ? RUN_SLICE_MS : r->wait_ms - (now - last);
        if (t > RUN_SLICE_MS)
            t = RUN_SLICE_MS;
        int rc = ab_client_run(r->client, (int)t);
        if (rc != 0)
            return cli_report(r->client, rc);
    }
    return code;
}

/* Options shared by inbox and subscribe. 1: consumed argv[*i]; 0: not one of them; or -exit. */
static int
s_recv_opt(recv_t *r, const char *cmd, int argc, char **argv, int *i)
{
    const char *val = NULL;
    int m;
    if (strcmp(argv[*i], "--ack") == 0) {
        r->ack = 1;
    } else if (strcmp(argv[*i], "--follow") == 0 || strcmp(argv[*i], "-f") == 0) {
        r->follow = 1;
    } else if (strcmp(argv[*i], "--json") == 0) {
        r->json = 1;
    } else if ((m = cli_opt(argc, argv, i, "--count", &val)) != 0) {
        if (m < 0 || cli_parse_count(val, 1, UINT32_MAX, &r->count) != 0)
            return -cli_usage_error("%s: --count needs a number of 1 or more, not '%s'", cmd,
                                    m < 0 ? "" : val);
    } else if ((m = cli_opt(argc, argv, i, "--credit", &val)) != 0) {
        if (m < 0 || cli_parse_count(val, 1, MAX_CREDIT, &r->credit) != 0)
            return -cli_usage_error("%s: --credit needs a number from 1 to %d, not '%s'", cmd,
                                    MAX_CREDIT, m < 0 ? "" : val);
    } else if ((m = cli_opt(argc, argv, i, "--wait", &val)) != 0) {
        if (m < 0 || cli_parse_duration(val, MAX_WAIT_MS, &r->wait_ms) != 0)
            return -cli_usage_error("%s: --wait needs a duration such as 500ms, 2s or 1m (units "
                                    "ms, s, m, h, d), not '%s'",
                                    cmd, m < 0 ? "" : val);
    } else if ((m = cli_opt(argc, argv, i, "--payload-dir", &val)) != 0) {
        if (m < 0 || !*val)
            return -cli_usage_error("%s: --payload-dir needs a directory", cmd);
        r->payload_dir = val;
    } else {
        return 0;
    }
    return 1;
}

/* Checks the options, connects, attaches, runs the loop, cleans up. */
static int
s_receive(recv_t *r)
{
    if (r->payload_dir) {
        struct stat st;
        if (stat(r->payload_dir, &st) != 0 || !S_ISDIR(st.st_mode) ||
            access(r->payload_dir, W_OK) != 0) {
            fprintf(stderr, "amtsbote: IO_ERROR: --payload-dir '%s' is not a writable directory\n",
                    r->payload_dir);
            return EXIT_OTHER;
        }
    }
    if (!r->credit)
        r->credit = DEFAULT_CREDIT;
    /* never more than asked for: what is delivered and not printed counts as a delivery */
    if (r->count && r->credit > r->count)
        r->credit = r->count;
    int code = cli_connect(r->opts, &r->client);
    if (code != 0)
        return code;
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    s_running = r->client;
    int rc = r->events ? ab_subscribe(r->client, r->pattern, r->durable, r->credit, s_on_message, r)
                       : ab_inbox(r->client, r->credit, s_on_message, r);
    if (rc != 0) {
        code = cli_report(r->client, rc);
    } else {
        if (r->events)
            fprintf(stderr, "ready: subscribed to %s%s%s as %s\n", r->pattern,
                    r->durable ? " as durable " : "", r->durable ? r->durable : "",
                    ab_client_participant(r->client));
        if (!r->ack && isatty(2) && (!r->events || r->durable))
            fprintf(stderr, "amtsbote: note: without --ack nothing is acknowledged; the broker "
                            "delivers it all again later\n");
        code = s_recv_loop(r);
    }
    s_running = NULL;
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    s_queue_free(r);
    uint64_t dups = ab_client_duplicates_dropped(r->client);
    if (dups && isatty(2))
        fprintf(stderr, "amtsbote: note: %llu redelivered duplicate(s) acknowledged and skipped\n",
                (unsigned long long)dups);
    ab_client_destroy(&r->client); /* sends the ACKs still queued */
    for (size_t i = 0; i < r->nschemas; i++)
        ab_schema_set_destroy(&r->schemas[i].set);
    return code;
}

int
cli_cmd_inbox(const opts_t *opts, int argc, char **argv)
{
    if (s_help(argc, argv, s_inbox_usage))
        return EXIT_OK;
    recv_t *r = calloc(1, sizeof *r);
    if (!r) {
        fprintf(stderr, "amtsbote: NO_MEMORY\n");
        return EXIT_OTHER;
    }
    r->opts = opts;
    r->wait_ms = DEFAULT_WAIT_MS;
    int code = 0;
    for (int i = 0; i < argc && code == 0; i++) {
        int m = s_recv_opt(r, "inbox", argc, argv, &i);
        if (m < 0)
            code = -m;
        else if (m == 0 && argv[i][0] == '-')
            code =
                cli_usage_error("inbox: unknown option '%s'; see 'amtsbote inbox --help'", argv[i]);
        else if (m == 0)
            code = cli_usage_error("inbox: unexpected argument '%s' (inbox takes only options)",
                                   argv[i]);
    }
    if (code == 0)
        code = s_receive(r);
    free(r);
    return code;
}

int
cli_cmd_subscribe(const opts_t *opts, int argc, char **argv)
{
    if (s_help(argc, argv, s_subscribe_usage))
        return EXIT_OK;
    recv_t *r = calloc(1, sizeof *r);
    if (!r) {
        fprintf(stderr, "amtsbote: NO_MEMORY\n");
        return EXIT_OTHER;
    }
    r->opts = opts;
    r->events = 1;
    r->wait_ms = DEFAULT_WAIT_MS;
    int code = 0;
    const char *val = NULL;
    for (int i = 0; i < argc && code == 0; i++) {
        int m = s_recv_opt(r, "subscribe", argc, argv, &i);
        if (m < 0) {
            code = -m;
        } else if (m > 0) {
            continue;
        } else if ((m = cli_opt(argc, argv, &i, "--durable", &val)) != 0) {
            if (m < 0 || !*val)
                code = cli_usage_error("subscribe: --durable needs a name");
            r->durable = val;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            code = cli_usage_error(
                "subscribe: unknown option '%s'; see 'amtsbote subscribe --help'", argv[i]);
        } else if (!r->pattern) {
            r->pattern = argv[i];
        } else {
            code = cli_usage_error("subscribe: unexpected argument '%s'", argv[i]);
        }
    }
    if (code == 0 && !r->pattern)
        code = cli_usage_error("subscribe: to which PATTERN? e.g. subscribe 'meldewesen.umzug.>'");
    char why[AB_WHY_LEN];
    if (code == 0 && (ab_topic_check(r->pattern, 1, why) != 0 ||
                      (r->durable && ab_subscription_check(r->durable, why) != 0))) {
        fprintf(stderr, "amtsbote: INVALID_ARGUMENT: %s\n", why);
        code = EXIT_MALFORMED;
    }
    if (code == 0)
        code = s_receive(r);
    free(r);
    return code;
}

int
cli_cmd_unsubscribe(const opts_t *opts, int argc, char **argv)
{
    if (s_help(argc, argv, s_unsubscribe_usage))
        return EXIT_OK;
    const char *durable = NULL, *val = NULL;
    for (int i = 0; i < argc; i++) {
        int m;
        if ((m = cli_opt(argc, argv, &i, "--durable", &val)) != 0) {
            if (m < 0 || !*val)
                return cli_usage_error("unsubscribe: --durable needs a name");
            durable = val;
        } else {
            return cli_usage_error("unsubscribe: unexpected argument '%s'; an ephemeral "
                                   "subscription ends with its 'subscribe' command",
                                   argv[i]);
        }
    }
    if (!durable)
        return cli_usage_error("unsubscribe: which subscription? --durable NAME");
    char why[AB_WHY_LEN];
    if (ab_subscription_check(durable, why) != 0) {
        fprintf(stderr, "amtsbote: INVALID_ARGUMENT: %s\n", why);
        return EXIT_MALFORMED;
    }
    ab_client_t *client = NULL;
    int code = cli_connect(opts, &client);
    if (code != 0)
        return code;
    int rc = ab_unsubscribe(client, NULL, durable);
    if (rc != 0)
        code = cli_report(client, rc);
    else
        printf("deleted durable subscription %s of %s\n", durable, ab_client_participant(client));
    ab_client_destroy(&client);
    return code;
}

/* ---- status ------------------------------------------------------------------------------- */

int
cli_cmd_status(const opts_t *opts, int argc, char **argv)
{
    if (s_help(argc, argv, s_status_usage))
        return EXIT_OK;
    const char *idarg = NULL, *sender = NULL, *val = NULL;
    int json = 0;
    uint8_t id[16];
    for (int i = 0; i < argc; i++) {
        int m;
        if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if ((m = cli_opt(argc, argv, &i, "--sender", &val)) != 0) {
            if (m < 0 || !*val)
                return cli_usage_error("status: --sender needs a participant address");
            sender = val;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            return cli_usage_error("status: unknown option '%s'; see 'amtsbote status --help'",
                                   argv[i]);
        } else if (!idarg) {
            idarg = argv[i];
        } else {
            return cli_usage_error("status: unexpected argument '%s'", argv[i]);
        }
    }
    if (!idarg)
        return cli_usage_error("status: which MESSAGE_ID? the 32 hex digits 'send' printed");
    if (cli_parse_message_id(idarg, id) != 0)
        return cli_usage_error("status: MESSAGE_ID needs 32 hex digits, the id that 'accepted' "
                               "printed, not '%s'",
                               idarg);
    ab_client_t *client = NULL;
    int code = cli_connect(opts, &client);
    if (code != 0)
        return code;
    Amtsbote__V1__MessageStatusRequest req = AMTSBOTE__V1__MESSAGE_STATUS_REQUEST__INIT;
    req.message_id.data = id;
    req.message_id.len = sizeof id;
    req.sender = (char *)(sender ? sender : "");
    uint8_t buf[512];
    size_t blen = amtsbote__v1__message_status_request__get_packed_size(&req);
    if (blen > sizeof buf) {
        ab_client_destroy(&client);
        return cli_usage_error("status: --sender is too long");
    }
    amtsbote__v1__message_status_request__pack(&req, buf);
    void *reply = NULL;
    size_t rlen = 0;
    int timeout = opts->timeout_ms > 0 ? opts->timeout_ms : STATUS_TIMEOUT_MS;
    int rc = ab_call(client, "amtsbote.v1.Broker/MessageStatus", buf, blen, timeout, &reply, &rlen);
    if (rc != 0) {
        code = cli_report(client, rc);
        ab_client_destroy(&client);
        return code;
    }
    ab_client_destroy(&client);
    Amtsbote__V1__MessageStatus *st = amtsbote__v1__message_status__unpack(NULL, rlen, reply);
    ab_free(reply);
    if (!st) {
        fprintf(stderr, "amtsbote: MALFORMED: the broker's message status could not be decoded\n");
        return EXIT_OTHER;
    }
    char hex[33];
    if (st->message_id.len == 16) {
        for (int i = 0; i < 16; i++)
            snprintf(hex + 2 * i, 3, "%02x", st->message_id.data[i]);
    } else {
        snprintf(hex, sizeof hex, "%s", idarg);
    }
    if (json) {
        json_t *o = json_object(), *steps = json_array();
        s_json_str(o, "message_id", hex);
        s_json_str(o, "state", st->state);
        s_json_str(o, "sender", st->sender);
        s_json_str(o, "recipient", st->recipient);
        json_object_set_new(o, "size", json_integer((json_int_t)st->size));
        json_object_set_new(o, "attempts", json_integer(st->attempts));
        for (size_t i = 0; i < st->n_steps; i++) {
            const Amtsbote__V1__MessageStatusStep *s = st->steps[i];
            char when[48];
            cli_iso_time(s->at_ms, when, sizeof when);
            json_t *j = json_object();
            s_json_str(j, "step", s->step);
            json_object_set_new(j, "at_ms", json_integer((json_int_t)s->at_ms));
            s_json_str(j, "at", when);
            s_json_str(j, "detail", s->detail);
            json_array_append_new(steps, j);
        }
        json_object_set_new(o, "steps", steps);
        char *line = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        printf("%s\n", line ? line : "{}");
        free(line);
    } else {
        printf("message   %s\nstate     %s\nsender    %s\nrecipient %s\nsize      %llu bytes\n"
               "attempts  %u\n",
               hex, st->state, st->sender, st->recipient, (unsigned long long)st->size,
               st->attempts);
        for (size_t i = 0; i < st->n_steps; i++) {
            const Amtsbote__V1__MessageStatusStep *s = st->steps[i];
            char when[48];
            cli_iso_time(s->at_ms, when, sizeof when);
            if (s->detail[0])
                printf("  %s  %-12s %s\n", when, s->step, s->detail);
            else
                printf("  %s  %s\n", when, s->step);
        }
    }
    amtsbote__v1__message_status__free_unpacked(st, NULL);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "amtsbote: IO_ERROR: cannot write to stdout: %s\n", strerror(errno));
        return EXIT_OTHER;
    }
    return EXIT_OK;
}
