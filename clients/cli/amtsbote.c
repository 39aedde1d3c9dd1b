/*
 * amtsbote.c - the `amtsbote` command: call a service from the shell, or serve one from a shell
 * command, through an Amtsbote broker.
 *
 * `serve --exec` runs one `/bin/sh -c CMD` per call. Children run asynchronously: their pipes are
 * non-blocking and driven from the same poll() loop as the client's fd, so heartbeats and other
 * calls continue while a command runs, and a command that outlives its call's deadline is killed
 * with its whole process group.
 */
#include "amtsbote.h"
#include "amtsbote/v1/amtsbote.pb-c.h"
#include "cli.h"
#include "pbjson.h"
#include "policy.h"
#include "tunnel.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define AB_CLI_MAX_OUTPUT (64u * 1024u * 1024u) /* a command's reply on stdout */
#define MAX_ERRLINE 500                         /* first line of a failed command's stderr */
#define MAX_QUEUE 10000                         /* calls waiting for a free --concurrency slot */
#define MAX_CONCURRENCY 1024
#define DEFAULT_CONCURRENCY 4
#define CONNECT_MS 5000
#define DRAIN_MS 5000     /* on SIGINT/SIGTERM, running commands get this long to finish */
#define KILL_WAIT_MS 1000 /* after SIGKILL, wait this long for the pipes to close */

static const char *s_usage =
    "Usage: amtsbote [GLOBAL OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Talks to an Amtsbote broker: calls services that other participants offer, or offers one\n"
    "of your own from a shell command.\n"
    "\n"
    "Global options (before the command):\n"
    "  --broker URI       broker address, tls://HOST:PORT (mutual TLS), or tcp://HOST:PORT\n"
    "                     or ipc://PATH (plain listeners) (default: $AMTSBOTE_BROKER)\n"
    "  --as PARTICIPANT   your participant address, level.org[.unit], e.g. bund.bmi or\n"
    "                     kommune.09162000.meldeamt (default: $AMTSBOTE_AS). Only for plain\n"
    "                     listeners of a broker run with --insecure-plain-identities\n"
    "                     (development and tests).\n"
    "  --timeout MS       call deadline in milliseconds (default 30000); also bounds the wait\n"
    "                     for the broker when connecting (at most 5000)\n"
    "  --verbose          serve: log one line per call to stderr (never payload contents)\n"
    "  --cert FILE        mutual TLS: your certificate (PEM); its SAN URI\n"
    "                     urn:amtsbote:participant:ADDRESS is your participant address\n"
    "                     (default: $AMTSBOTE_CERT)\n"
    "  --key FILE         its private key (PEM) (default: $AMTSBOTE_KEY)\n"
    "  --key-passphrase-file FILE  the key's passphrase, on the file's first line\n"
    "  --ca FILE          the CA certificates the broker's certificate must chain to; the\n"
    "                     broker's certificate must also name the HOST of tls://HOST:PORT\n"
    "                     (default: $AMTSBOTE_CA)\n"
    "  --crl FILE         CRLs for the broker's chain (optional) (default: $AMTSBOTE_CRL)\n"
    "                     --cert, --key and --ca are required with a tls:// broker.\n"
    "  --profile FILE     read defaults from FILE (default: $AMTSBOTE_PROFILE, else\n"
    "                     $XDG_CONFIG_HOME/amtsbote/profile or ~/.config/amtsbote/profile\n"
    "                     if it exists); see 'Profile' below\n"
    "  --help             this text\n"
    "  --version          print the version\n"
    "\n"
    "Commands:\n"
    "  call SERVICE/METHOD [--data STRING | --file FILE] [--purpose TEXT]\n"
    "       [--classification OFFEN|VS-NUR-FUER-DEN-DIENSTGEBRAUCH] [--raw]\n"
    "      Calls one method and prints the reply. The request is STRING, the contents of\n"
    "      FILE ('-' for stdin), or stdin when neither is given. When the service has a\n"
    "      registered interface (amtsbote schema push), the request is JSON (proto3 JSON\n"
    "      mapping; empty means {}) and the reply is printed as JSON; otherwise, or with\n"
    "      --raw, bytes are sent and printed as they are. --purpose names the legal basis\n"
    "      of the call, e.g. 'BMG §34'.\n"
    "      Example:\n"
    "        amtsbote --broker tcp://127.0.0.1:7450 --as bund.bmi \\\n"
    "          call meldewesen.v1.Melderegister/Meldebescheinigung \\\n"
    "          --purpose 'BMG §34' --data '{\"name\": {\"familienname\": \"Muster\"}}'\n"
    "\n"
    "  serve SERVICE (--exec CMD | --echo) [--raw] [--concurrency N] [--verbose]\n"
    "      Offers SERVICE (package.Service for every method, or package.Service/Method) until\n"
    "      SIGINT or SIGTERM, then withdraws it (without waiting when the broker cannot be\n"
    "      reached), lets running commands finish (up to 5 s) and exits 0. Prints\n"
    "      'ready: serving SERVICE as PARTICIPANT' once the broker accepted it.\n"
    "      --exec CMD  runs '/bin/sh -c CMD' per call: the request on its stdin, the reply from\n"
    "                  its stdout. Environment: AMTSBOTE_METHOD, AMTSBOTE_CALLER,\n"
    "                  AMTSBOTE_PURPOSE, AMTSBOTE_MESSAGE_ID, AMTSBOTE_REMAINING_MS,\n"
    "                  AMTSBOTE_FORMAT (json or raw). A non-zero\n"
    "                  exit answers PROVIDER_ERROR with the first line of its stderr (keep\n"
    "                  personal data out of it). A command still running at the call's deadline\n"
    "                  is killed a quarter second later (the caller has DEADLINE_EXCEEDED).\n"
    "                  When SERVICE has a registered interface, CMD reads the request as\n"
    "                  JSON and writes the reply as JSON (proto3 JSON mapping; --raw: bytes\n"
    "                  as they are); output that does not fit the interface is an error reply.\n"
    "      --echo      answers every call with its request (for tests).\n"
    "      --concurrency N  commands run at once (default 4); further calls wait their turn.\n"
    "      Example:\n"
    "        amtsbote --broker tcp://127.0.0.1:7450 --as kommune.09162000.meldeamt \\\n"
    "          serve meldewesen.v1.Melderegister --exec ./meldebescheinigung.sh\n"
    "\n"
    "  send RECIPIENT [PAYLOAD] [--schema TYPE] [--ttl DURATION] [--message-id HEX] [--raw]\n"
    "      Puts a message into RECIPIENT's mailbox (store-and-forward: the recipient need not\n"
    "      be connected) and prints 'accepted MESSAGE_ID' once the broker has it on disk.\n"
    "      PAYLOAD or stdin; JSON when TYPE is registered. 'amtsbote send --help' says more.\n"
    "\n"
    "  inbox [--ack] [--follow] [--count N] [--wait DURATION] [--credit N] [--json]\n"
    "        [--payload-dir DIR]\n"
    "      Prints the messages and receipts in your mailbox; --ack acknowledges each after\n"
    "      printing it. 'amtsbote inbox --help' says more.\n"
    "\n"
    "  status MESSAGE_ID [--sender ADDRESS] [--json]\n"
    "      What became of a message: state and timeline (accepted, delivered, acknowledged,\n"
    "      expired, failed) with times.\n"
    "\n"
    "  publish TOPIC [PAYLOAD] [--schema TYPE] [--raw]\n"
    "  subscribe PATTERN [--durable NAME] [--ack] [--follow] [--count N] [--wait D] [--json]\n"
    "  unsubscribe --durable NAME\n"
    "      Events: publish on a dotted topic; subscribe to a pattern ('*' one segment, a last\n"
    "      '>' the rest), ephemeral or durable (kept while you are away); delete a durable\n"
    "      subscription. 'amtsbote subscribe --help' says more.\n"
    "\n"
    "  services\n"
    "      Lists the services offered at the broker now: each offer, the participants\n"
    "      that provide it and the calls in flight to them.\n"
    "      Example:\n"
    "        amtsbote --broker tcp://127.0.0.1:7450 --as bund.bmi services\n"
    "\n"
    "  schema push|check FILE [--proto-path DIR]... | schema list | schema show NAME\n"
    "      Registers a published interface (a .proto file or a descriptor set) at the broker,\n"
    "      checks a new version for what it would break, lists what is registered, shows one\n"
    "      file. 'amtsbote schema --help' says more.\n"
    "\n"
    "  policy check FILE | policy explain FILE --as PARTICIPANT ACTION RESOURCE\n"
    "                 [--purpose X] [--classification LEVEL]\n"
    "      Offline, without a broker: validates an access policy file (exit 2 when bad), or\n"
    "      says which rule allows or denies a request and why (exit 0 allowed, 9 denied).\n"
    "      'amtsbote policy --help' says more.\n"
    "\n"
    "  audit verify DIR [--cert BROKER_CERT] | audit query DIR --participant P\n"
    "        [--since TIME] [--purpose TEXT]\n"
    "      Reads the broker's audit log offline (no broker needed): verify checks the hash\n"
    "      chain and the signed seals and names the first record changed, removed,\n"
    "      reordered or cut off (exit 9); query lists what happened to a participant's data.\n"
    "      'amtsbote audit --help' says more.\n"
    "\n"
    "  tunnel [--listen tcp://127.0.0.1:PORT]\n"
    "      A sidecar for any ZeroMQ binding (pyzmq, JeroMQ, NetMQ): listens on loopback\n"
    "      (default: a free port) and relays each connection to the tls:// --broker with\n"
    "      --cert/--key/--ca. Connect a DEALER to the local address without a security\n"
    "      mechanism; the broker knows it as the certificate's participant, so anyone who\n"
    "      can reach the port acts as that participant (loopback only). Prints\n"
    "      'ready: tunnel LOCAL -> BROKER as PARTICIPANT' once listening, logs one line per\n"
    "      session to stderr (connected, refused with the reason, closed; never payloads)\n"
    "      and runs until SIGINT or SIGTERM.\n"
    "\n"
    "Examples with mutual TLS:\n"
    "  amtsbote --broker tls://broker.example.org:7443 --cert bund.bmi.crt \\\n"
    "    --key bund.bmi.key --ca chain.pem \\\n"
    "    call meldewesen.v1.Melderegister/Meldebescheinigung --data '{}'\n"
    "  amtsbote --broker tls://broker.example.org:7443 --cert bund.bmi.crt \\\n"
    "    --key bund.bmi.key --ca chain.pem tunnel --listen tcp://127.0.0.1:7451\n"
    "    (then e.g. pyzmq: zmq.Context().socket(zmq.DEALER).connect('tcp://127.0.0.1:7451'))\n"
    "\n"
    "Profile:\n"
    "  Lines KEY=VALUE with the keys AMTSBOTE_BROKER, AMTSBOTE_AS, AMTSBOTE_CERT,\n"
    "  AMTSBOTE_KEY, AMTSBOTE_CA and AMTSBOTE_CRL; '#' starts a comment line, blank lines are\n"
    "  ignored. Relative file names are relative to the profile's directory. A command-line\n"
    "  option beats the environment variable (when not empty), which beats the profile.\n"
    "  An unknown key or a line without '=' is a usage error (exit 2) naming FILE:LINE, and\n"
    "  so is a profile named by --profile or $AMTSBOTE_PROFILE that cannot be read. A missing\n"
    "  default profile is no error.\n"
    "  Example (~/.config/amtsbote/profile):\n"
    "    AMTSBOTE_BROKER=tls://broker.example.org:7443\n"
    "    AMTSBOTE_CERT=bund.bmi.crt\n"
    "    AMTSBOTE_KEY=bund.bmi.key\n"
    "    AMTSBOTE_CA=chain.pem\n"
    "\n"
    "Errors are printed as 'amtsbote: ERROR_NAME: text'. Exit codes:\n"
    "  0 success\n"
    "  1 other error (e.g. a file that cannot be read)\n"
    "  2 usage error\n"
    "  3 broker unavailable, refused this identity, timed out, or cannot be connected to\n"
    "  4 UNKNOWN_SERVICE: nobody offers the service\n"
    "  5 DEADLINE_EXCEEDED\n"
    "  6 PROVIDER_GONE: the provider went away with the call in flight\n"
    "  7 PROVIDER_ERROR: the provider answered with an error\n"
    "  8 MALFORMED, TOO_LARGE or INVALID_ARGUMENT (e.g. a bad service name)\n"
    "  9 FORBIDDEN or SCHEMA_INVALID\n"
    "  10 MAILBOX_FULL: the recipient's mailbox is full (send: try again later)\n"
    "  11 RATE_LIMITED: this participant exceeds its message rate or calls in flight (slow down)\n";

/* ---- helpers ------------------------------------------------------------------------------ */

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
int
cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("amtsbote: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'amtsbote --help'.\n", stderr);
    return EXIT_USAGE;
}

int
cli_exit_code(int err)
{
    switch (err) {
    case AB_OK:
        return EXIT_OK;
    case AB_EUNAVAILABLE:
    case AB_EREFUSED:
    case AB_ETIMEDOUT:
    case AB_ECONNECT:
        return EXIT_UNAVAILABLE;
    case AB_EUNKNOWN_SERVICE:
        return EXIT_UNKNOWN_SERVICE;
    case AB_EDEADLINE:
        return EXIT_DEADLINE;
    case AB_EPROVIDER_GONE:
        return EXIT_PROVIDER_GONE;
    case AB_EPROVIDER:
        return EXIT_PROVIDER_ERROR;
    case AB_EMALFORMED:
    case AB_ETOO_LARGE:
    case AB_EINVAL:
        return EXIT_MALFORMED;
    case AB_EFORBIDDEN:
    case AB_ESCHEMA_INVALID:
        return EXIT_FORBIDDEN;
    case AB_EMAILBOX_FULL:
        return EXIT_MAILBOX_FULL;
    case AB_ERATE_LIMITED:
        return EXIT_RATE_LIMITED;
    default:
        return EXIT_OTHER;
    }
}

/* Prints `amtsbote: NAME: text` and returns the exit code for `err`. */
int
cli_report(const ab_client_t *client, int err)
{
    const char *text = client ? ab_client_last_error(client) : "";
    fprintf(stderr, "amtsbote: %s: %s\n", ab_err_name(err),
            text && *text ? text : ab_strerror(err));
    return cli_exit_code(err);
}

static uint64_t
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Parses a non-negative decimal int. Returns 0 or -1. */
static int
s_parse_int(const char *s, int *out)
{
    if (!s || !*s)
        return -1;
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < 0 || v > INT_MAX)
        return -1;
    *out = (int)v;
    return 0;
}

/*
 * Matches option `name` at argv[*i], as "--name VALUE" or "--name=VALUE". Returns 1 and sets
 * *val (advancing *i past a separate value), 0 when argv[*i] is another option, -1 when the value
 * is missing.
 */
int
cli_opt(int argc, char **argv, int *i, const char *name, const char **val)
{
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *val = a + n + 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return -1;
    *val = argv[++*i];
    return 1;
}

/* Reads all of `fd` (at most AB_CLI_MAX_INPUT bytes). Returns 0, or -1 with errno (EFBIG: too
 * large). */
int
cli_read_all(int fd, uint8_t **data, size_t *len)
{
    size_t cap = 65536, n = 0;
    uint8_t *buf = malloc(cap);
    if (!buf)
        return -1;
    for (;;) {
        if (n == cap) {
            if (cap >= AB_CLI_MAX_INPUT) {
                free(buf);
                errno = EFBIG;
                return -1;
            }
            cap *= 2;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                errno = ENOMEM;
                return -1;
            }
            buf = nb;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(buf);
            errno = e;
            return -1;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    *data = buf;
    *len = n;
    return 0;
}

static int
s_is_tls(const opts_t *opts)
{
    return opts->broker && strncmp(opts->broker, "tls://", 6) == 0;
}

/* With a tls:// broker: the TLS options are complete, and no --as. Returns 0 or an exit code. */
static int
s_check_tls(const opts_t *opts)
{
    if (!s_is_tls(opts)) {
        if (opts->tls_given)
            return cli_usage_error("--cert, --key, --key-passphrase-file, --ca and --crl are for a "
                                   "tls:// broker; '%s' is a plain listener (use --as there)",
                                   opts->broker ? opts->broker : "");
        return 0;
    }
    if (opts->as_given)
        return cli_usage_error("--as is for plain listeners: over tls:// your participant address "
                               "comes from your certificate (--cert)");
    const char *missing[3];
    int n = 0;
    if (!opts->cert || !*opts->cert)
        missing[n++] = "--cert FILE (or AMTSBOTE_CERT)";
    if (!opts->key || !*opts->key)
        missing[n++] = "--key FILE (or AMTSBOTE_KEY)";
    if (!opts->ca || !*opts->ca)
        missing[n++] = "--ca FILE (or AMTSBOTE_CA)";
    if (n)
        return cli_usage_error("a tls:// broker needs %s%s%s%s%s", missing[0], n > 1 ? ", " : "",
                               n > 1 ? missing[1] : "", n > 2 ? " and " : "",
                               n > 2 ? missing[2] : "");
    return 0;
}

/* Creates and connects a client as `opts` say. Returns 0 or an exit code (error printed). */
int
cli_connect(const opts_t *opts, ab_client_t **client_p)
{
    if (!opts->broker || !*opts->broker)
        return cli_usage_error(
            "no broker given: use --broker URI or set AMTSBOTE_BROKER (environment or profile)");
    int code = s_check_tls(opts);
    if (code != 0)
        return code;
    int tls = s_is_tls(opts);
    ab_client_t *client = ab_client_new();
    if (!client) {
        fprintf(stderr, "amtsbote: NO_MEMORY: cannot create a client\n");
        return EXIT_OTHER;
    }
    int rc = 0;
    if (tls) {
        ab_tls_options_t t = {.cert = opts->cert,
                              .key = opts->key,
                              .key_passphrase_file = opts->key_pass_file,
                              .ca = opts->ca,
                              .crl = opts->crl};
        if ((rc = ab_client_set_tls(client, &t)) != 0) {
            code = cli_report(client, rc);
            ab_client_destroy(&client);
            return code;
        }
    }
    if (!tls && opts->as && *opts->as && (rc = ab_client_set_participant(client, opts->as)) != 0) {
        fprintf(stderr, "amtsbote: %s: --as: %s\n", ab_err_name(rc), ab_client_last_error(client));
        ab_client_destroy(&client);
        return cli_exit_code(rc);
    }
    int connect_ms =
        opts->timeout_ms > 0 && opts->timeout_ms < CONNECT_MS ? opts->timeout_ms : CONNECT_MS;
    rc = ab_client_connect(client, opts->broker, connect_ms);
    if (rc != 0) {
        code = cli_report(client, rc);
        if (rc == AB_EREFUSED && !tls && !(opts->as && *opts->as))
            fprintf(stderr, "amtsbote: hint: name yourself with --as PARTICIPANT or "
                            "AMTSBOTE_AS\n");
        ab_client_destroy(&client);
        return code;
    }
    *client_p = client;
    return 0;
}

/* ---- call --------------------------------------------------------------------------------- */

static int
s_cmd_call(const opts_t *opts, int argc, char **argv)
{
    const char *service = NULL, *data = NULL, *file = NULL, *purpose = NULL, *val = NULL;
    int raw = 0, classification = 0;
    for (int i = 0; i < argc; i++) {
        int m;
        if (strcmp(argv[i], "--raw") == 0) {
            raw = 1;
            continue;
        }
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(s_usage, stdout);
            return EXIT_OK;
        }
        if ((m = cli_opt(argc, argv, &i, "--data", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("call: --data needs a value");
            data = val;
        } else if ((m = cli_opt(argc, argv, &i, "--file", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("call: --file needs a file name");
            file = val;
        } else if ((m = cli_opt(argc, argv, &i, "--purpose", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("call: --purpose needs a text");
            purpose = val;
        } else if ((m = cli_opt(argc, argv, &i, "--classification", &val)) != 0) {
            if (m < 0 || (classification = ab_policy_level_parse(val)) < 0)
                return cli_usage_error("call: --classification takes OFFEN or "
                                       "VS-NUR-FUER-DEN-DIENSTGEBRAUCH (VS-NFD)");
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            return cli_usage_error("call: unknown option '%s'", argv[i]);
        } else if (!service) {
            service = argv[i];
        } else {
            return cli_usage_error("call: unexpected argument '%s'", argv[i]);
        }
    }
    if (!service)
        return cli_usage_error("call: which SERVICE/METHOD? e.g. call "
                               "meldewesen.v1.Melderegister/Meldebescheinigung");
    if (data && file)
        return cli_usage_error("call: give either --data or --file, not both");

    uint8_t *owned = NULL;
    const void *req = data;
    size_t req_len = data ? strlen(data) : 0;
    if (!data) {
        int fd = 0;
        const char *name = "stdin";
        if (file && strcmp(file, "-") != 0) {
            name = file;
            fd = open(file, O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                fprintf(stderr, "amtsbote: IO_ERROR: cannot open '%s': %s\n", file,
                        strerror(errno));
                return EXIT_OTHER;
            }
        }
        int rc = cli_read_all(fd, &owned, &req_len);
        int e = errno;
        if (fd != 0)
            close(fd);
        if (rc != 0) {
            if (e == EFBIG) {
                fprintf(stderr, "amtsbote: TOO_LARGE: the request in %s is larger than %u MiB\n",
                        name, AB_CLI_MAX_INPUT >> 20);
                return EXIT_MALFORMED;
            }
            fprintf(stderr, "amtsbote: IO_ERROR: cannot read %s: %s\n", name, strerror(e));
            return EXIT_OTHER;
        }
        req = owned;
    }

    ab_client_t *client = NULL;
    int code = cli_connect(opts, &client);
    if (code != 0) {
        free(owned);
        return code;
    }
    int rc = ab_client_set_purpose(client, purpose);
    if (rc == 0)
        rc = ab_client_set_classification(client, classification);
    if (rc != 0) {
        code = cli_report(client, rc);
        goto done;
    }
    /* JSON through the registered interface, unless --raw or there is none */
    ab_schema_set_t *set = NULL;
    const ProtobufCMethodDescriptor *method = NULL;
    uint8_t *packed = NULL;
    if (!raw) {
        code = cli_fetch_method(opts, client, service, &set, &method);
        if (code == 1) {
            if (isatty(2)) /* for a person at a terminal; scripts see the bytes unchanged */
                fprintf(stderr,
                        "amtsbote: note: %.*s has no registered interface; the request is sent "
                        "as it is (--raw)\n",
                        (int)strcspn(service, "/"), service);
            code = 0;
        } else if (code != 0) {
            goto done;
        } else {
            char err[512];
            size_t plen = 0;
            int empty = req_len == 0;
            if (ab_json_to_pb(method->input, empty ? "{}" : req, empty ? 2 : req_len, &packed,
                              &plen, err, sizeof err) != 0) {
                fprintf(stderr, "amtsbote: INVALID_ARGUMENT: the request is not %s in JSON: %s\n",
                        method->input->name, err);
                code = EXIT_MALFORMED;
                goto done;
            }
            req = packed;
            req_len = plen;
        }
    }
    void *reply = NULL;
    size_t reply_len = 0;
    rc = ab_call(client, service, req, req_len, opts->timeout_ms, &reply, &reply_len);
    if (rc != 0) {
        code = cli_report(client, rc);
        goto done;
    }
    char *json = NULL;
    if (method) {
        char err[512];
        if (ab_pb_to_json(method->output, reply, reply_len, AB_JSON_PRETTY, &json, err,
                          sizeof err) != 0) {
            fprintf(stderr, "amtsbote: MALFORMED: the reply is not a valid %s: %s\n",
                    method->output->name, err);
            code = EXIT_OTHER;
            ab_free(reply);
            goto done;
        }
    }
    if ((json && (fputs(json, stdout) == EOF || putchar('\n') == EOF)) ||
        (!json && reply_len && fwrite(reply, 1, reply_len, stdout) != reply_len) ||
        fflush(stdout) != 0) {
        fprintf(stderr, "amtsbote: IO_ERROR: cannot write the reply to stdout: %s\n",
                strerror(errno));
        code = EXIT_OTHER;
    }
    free(json);
    ab_free(reply);
done:
    ab_schema_set_destroy(&set);
    free(packed);
    ab_client_destroy(&client);
    free(owned);
    return code;
}

/* ---- services ----------------------------------------------------------------------------- */

/* Asks the broker's own service for the offers and prints one line per offer. */
static int
s_cmd_services(const opts_t *opts, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(s_usage, stdout);
            return EXIT_OK;
        }
        return cli_usage_error("services: unexpected argument '%s'", argv[i]);
    }
    ab_client_t *client = NULL;
    int code = cli_connect(opts, &client);
    if (code != 0)
        return code;
    void *reply = NULL;
    size_t len = 0;
    int timeout = opts->timeout_ms > 0 ? opts->timeout_ms : 10000;
    int rc = ab_call(client, "amtsbote.v1.Broker/ListServices", "", 0, timeout, &reply, &len);
    if (rc != 0) {
        code = cli_report(client, rc);
        ab_client_destroy(&client);
        return code;
    }
    Amtsbote__V1__ServiceList *list = amtsbote__v1__service_list__unpack(NULL, len, reply);
    ab_free(reply);
    ab_client_destroy(&client);
    if (!list) {
        fprintf(stderr, "amtsbote: MALFORMED: the broker's service list could not be decoded\n");
        return EXIT_OTHER;
    }
    if (list->n_services == 0)
        printf("no service is offered at this broker\n");
    else
        printf("%-52s %9s %9s  %s\n", "SERVICE", "PROVIDERS", "IN FLIGHT", "PARTICIPANTS");
    for (size_t i = 0; i < list->n_services; i++) {
        const Amtsbote__V1__ServiceInfo *s = list->services[i];
        printf("%-52s %9zu %9u  ", s->name, s->n_providers, s->in_flight);
        for (size_t k = 0; k < s->n_providers; k++)
            printf("%s%s", k ? "," : "", s->providers[k]);
        putchar('\n');
    }
    amtsbote__v1__service_list__free_unpacked(list, NULL);
    return EXIT_OK;
}

/* ---- serve -------------------------------------------------------------------------------- */

typedef struct job {
    struct job *next;
    ab_request_t *req;
    pid_t pid;
    int in_fd, out_fd, err_fd; /* -1 once closed */
    const uint8_t *in;         /* the request payload, borrowed from req */
    size_t in_len, in_off;
    uint8_t *out;
    size_t out_len, out_cap;
    char *in_json; /* the request as JSON, when the interface is registered */
    char errline[MAX_ERRLINE + 1];
    size_t errline_len;
    int errline_done;
    int exited, wstatus;
    uint64_t exited_at;
    int killed;          /* 0, or why: KILL_* */
    uint64_t kill_at;    /* when SIGKILL was sent */
    uint64_t overdue_at; /* when the call's deadline was first seen passed; 0: not yet */
    uint64_t started;
} job_t;

enum { KILL_DEADLINE = 1, KILL_SHUTDOWN, KILL_TOO_LARGE, KILL_BAD_INPUT };

/* A command still running at its call's deadline is killed this long after it: the broker answers
 * the caller DEADLINE_EXCEEDED at the deadline, and this provider's error for the killed command
 * must not overtake that answer (it arrives late and is dropped). */
#define DEADLINE_GRACE_MS 250

typedef struct qnode {
    struct qnode *next;
    ab_request_t *req;
} qnode_t;

typedef struct {
    ab_client_t *client;
    const char *service;
    const char *exec;      /* NULL: --echo */
    ab_schema_set_t *set;  /* the registered interface: requests and replies are JSON for CMD */
    uint64_t refused_seen; /* replies the broker refused, already reported */
    int concurrency;
    int verbose;
    int stopping;
    uint64_t drain_until;
    job_t *jobs;
    int running;
    qnode_t *qhead, *qtail;
    size_t queued;
} serve_t;

/* The self-pipe that turns SIGINT, SIGTERM and SIGCHLD into poll() events. */
static int s_sigpipe[2] = {-1, -1};

static void
s_on_signal(int sig)
{
    int saved = errno;
    unsigned char c = (unsigned char)sig;
    if (write(s_sigpipe[1], &c, 1) < 0) {
        /* the pipe is full: a wake-up is pending anyway */
    }
    errno = saved;
}

static void
s_log_call(const serve_t *srv, ab_request_t *req, size_t in, size_t out, uint64_t started,
           const char *result)
{
    if (!srv->verbose)
        return;
    fprintf(stderr,
            "amtsbote: call method=%s caller=%s message_id=%s bytes_in=%zu bytes_out=%zu ms=%llu "
            "result=%s\n",
            ab_request_method(req), ab_request_caller(req), ab_request_message_id(req), in, out,
            (unsigned long long)(s_now_ms() - started), result);
}

static void
s_answer_error(serve_t *srv, ab_request_t **req_p, const char *text, uint64_t started,
               const char *result)
{
    size_t in = 0;
    ab_request_payload(*req_p, &in);
    s_log_call(srv, *req_p, in, 0, started, result);
    ab_reply_error(req_p, text);
}

/* Builds the child's environment: ours without stale AMTSBOTE_* call variables, plus the call's. */
static char **
s_child_env(ab_request_t *req, int json)
{
    static const char *names[] = {"AMTSBOTE_METHOD",       "AMTSBOTE_CALLER",
                                  "AMTSBOTE_PURPOSE",      "AMTSBOTE_MESSAGE_ID",
                                  "AMTSBOTE_REMAINING_MS", "AMTSBOTE_FORMAT"};
    enum { N = sizeof names / sizeof names[0] };
    char remaining[16];
    snprintf(remaining, sizeof remaining, "%d", ab_request_remaining_ms(req));
    const char *values[N] = {ab_request_method(req),
                             ab_request_caller(req),
                             ab_request_purpose(req),
                             ab_request_message_id(req),
                             remaining,
                             json ? "json" : "raw"};
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **env = calloc(n + N + 1, sizeof *env);
    if (!env)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int ours = 0;
        for (size_t k = 0; k < N && !ours; k++) {
            size_t l = strlen(names[k]);
            ours = strncmp(environ[i], names[k], l) == 0 && environ[i][l] == '=';
        }
        if (!ours)
            env[o++] = environ[i];
    }
    for (size_t k = 0; k < N; k++) {
        size_t l = strlen(names[k]) + strlen(values[k]) + 2;
        char *s = malloc(l);
        if (!s) {
            for (size_t j = 0; j < k; j++)
                free(env[o - 1 - j]);
            free(env);
            return NULL;
        }
        snprintf(s, l, "%s=%s", names[k], values[k]);
        env[o++] = s;
    }
    env[o] = NULL;
    return env;
}

static void
s_free_env(char **env)
{
    if (!env)
        return;
    size_t n = 0;
    while (env[n])
        n++;
    /* the call's variables are the last six, the rest are borrowed from environ */
    for (size_t i = n >= 6 ? n - 6 : 0; i < n; i++)
        free(env[i]);
    free(env);
}

static void
s_close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static void s_job_kill(job_t *job, int why);

/* Starts CMD for `req`; answers the request itself when that fails. */
static void
s_job_start(serve_t *srv, ab_request_t *req)
{
    uint64_t started = s_now_ms();
    if (ab_request_remaining_ms(req) == 0) {
        s_answer_error(srv, &req, "the call's deadline passed before the command could start",
                       started, "deadline");
        return;
    }
    job_t *job = calloc(1, sizeof *job);
    char **env = s_child_env(req, srv->set != NULL);
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
    if (!job || !env || pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 ||
        pipe2(err, O_CLOEXEC) != 0)
        goto fail;
    pid_t pid = fork();
    if (pid < 0)
        goto fail;
    if (pid == 0) {
        /* child: only async-signal-safe calls from here on (the parent has ZeroMQ's threads) */
        setpgid(0, 0);
#ifdef __linux__
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* should we be killed, the command dies too */
#endif
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        sigaction(SIGPIPE, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGCHLD, &sa, NULL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0)
            _exit(126);
        char *const args[] = {"sh", "-c", (char *)srv->exec, NULL};
        execve("/bin/sh", args, env);
        _exit(127);
    }
    setpgid(pid, pid); /* also here, so that a kill right away reaches the group */
    s_free_env(env);
    close(in[0]);
    close(out[1]);
    close(err[1]);
    job->req = req;
    job->pid = pid;
    job->in_fd = in[1];
    job->out_fd = out[0];
    job->err_fd = err[0];
    job->in = ab_request_payload(req, &job->in_len);
    job->started = started;
    if (srv->set) {
        const ProtobufCMethodDescriptor *m = cli_find_method(srv->set, ab_request_method(req));
        char e[512];
        if (m == NULL ||
            ab_pb_to_json(m->input, job->in, job->in_len, 0, &job->in_json, e, sizeof e) != 0) {
            /* the broker validated it: this is a method the interface we fetched lacks */
            s_job_kill(job, KILL_BAD_INPUT);
        } else {
            job->in = (const uint8_t *)job->in_json;
            job->in_len = strlen(job->in_json);
        }
    }
    fcntl(job->in_fd, F_SETFL, fcntl(job->in_fd, F_GETFL) | O_NONBLOCK);
    fcntl(job->out_fd, F_SETFL, fcntl(job->out_fd, F_GETFL) | O_NONBLOCK);
    fcntl(job->err_fd, F_SETFL, fcntl(job->err_fd, F_GETFL) | O_NONBLOCK);
    if (job->in_len == 0)
        s_close_fd(&job->in_fd);
    job->next = srv->jobs;
    srv->jobs = job;
    srv->running++;
    return;
fail:;
    char text[128];
    snprintf(text, sizeof text, "the provider cannot start its command: %s", strerror(errno));
    for (int i = 0; i < 2; i++) {
        s_close_fd(&in[i]);
        s_close_fd(&out[i]);
        s_close_fd(&err[i]);
    }
    s_free_env(env);
    free(job);
    s_answer_error(srv, &req, text, started, "error");
}

/* Answers the job's request from its exit status and output, and frees it. */
static void
s_job_finish(serve_t *srv, job_t *job)
{
    char text[MAX_ERRLINE + 128];
    const char *result = "error";
    text[0] = '\0';
    if (job->killed == KILL_DEADLINE) {
        snprintf(text, sizeof text, "the command was killed at the call's deadline");
        result = "deadline";
    } else if (job->killed == KILL_TOO_LARGE) {
        snprintf(text, sizeof text, "the command's output is larger than %u MiB",
                 AB_CLI_MAX_OUTPUT >> 20);
    } else if (job->killed == KILL_SHUTDOWN) {
        snprintf(text, sizeof text, "the provider shut down while the command was running");
    } else if (!job->exited) {
        snprintf(text, sizeof text, "the command's exit status is unknown");
    } else if (job->killed == KILL_BAD_INPUT) {
        snprintf(text, sizeof text,
                 "the provider's copy of the interface of %s is out of date; "
                 "restart it",
                 ab_request_method(job->req));
    } else if (WIFEXITED(job->wstatus) && WEXITSTATUS(job->wstatus) == 0 && srv->set) {
        const ProtobufCMethodDescriptor *m = cli_find_method(srv->set, ab_request_method(job->req));
        uint8_t *pb = NULL;
        size_t len = 0;
        char e[400];
        size_t n = job->out_len;
        while (n > 0 && (job->out[n - 1] == '\n' || job->out[n - 1] == ' ' ||
                         job->out[n - 1] == '\r' || job->out[n - 1] == '\t'))
            n--;
        if (ab_json_to_pb(m->output, n ? (const char *)job->out : "{}", n ? n : 2, &pb, &len, e,
                          sizeof e) == 0) {
            s_log_call(srv, job->req, job->in_len, len, job->started, "ok");
            ab_reply(&job->req, pb, len);
        } else {
            snprintf(text, sizeof text, "the command's output is not %s in JSON: %s",
                     m->output->name, e);
        }
        free(pb);
    } else if (WIFEXITED(job->wstatus) && WEXITSTATUS(job->wstatus) == 0) {
        s_log_call(srv, job->req, job->in_len, job->out_len, job->started, "ok");
        ab_reply(&job->req, job->out, job->out_len);
    } else if (job->errline_len > 0) {
        snprintf(text, sizeof text, "%s", job->errline);
    } else if (WIFEXITED(job->wstatus)) {
        snprintf(text, sizeof text, "the command exited with status %d", WEXITSTATUS(job->wstatus));
    } else {
        snprintf(text, sizeof text, "the command was killed by signal %d",
                 WIFSIGNALED(job->wstatus) ? WTERMSIG(job->wstatus) : 0);
    }
    if (job->req) {
        s_log_call(srv, job->req, job->in_len, 0, job->started, result);
        ab_reply_error(&job->req, text);
    }
    s_close_fd(&job->in_fd);
    s_close_fd(&job->out_fd);
    s_close_fd(&job->err_fd);
    free(job->out);
    free(job->in_json);
    free(job);
    srv->running--;
}

static void
s_job_kill(job_t *job, int why)
{
    if (job->killed)
        return;
    job->killed = why;
    job->kill_at = s_now_ms();
    kill(-job->pid, SIGKILL); /* the group: sh and whatever it started */
}

static void
s_job_write(job_t *job)
{
    /* bounded: each round writes something or stops */
    while (job->in_fd >= 0 && job->in_off < job->in_len) {
        size_t chunk = job->in_len - job->in_off;
        if (chunk > 65536)
            chunk = 65536;
        ssize_t w = write(job->in_fd, job->in + job->in_off, chunk);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                s_close_fd(&job->in_fd); /* EPIPE: the command does not read its stdin */
            return;
        }
        job->in_off += (size_t)w;
    }
    if (job->in_off >= job->in_len)
        s_close_fd(&job->in_fd);
}

static void
s_job_read_out(job_t *job)
{
    for (int round = 0; round < 64 && job->out_fd >= 0; round++) {
        if (job->out_cap - job->out_len < 4096) {
            size_t cap = job->out_cap ? job->out_cap * 2 : 65536;
            if (cap > AB_CLI_MAX_OUTPUT + 4096u) {
                s_close_fd(&job->out_fd);
                s_job_kill(job, KILL_TOO_LARGE);
                return;
            }
            uint8_t *nb = realloc(job->out, cap);
            if (!nb) {
                s_close_fd(&job->out_fd);
                s_job_kill(job, KILL_TOO_LARGE);
                return;
            }
            job->out = nb;
            job->out_cap = cap;
        }
        ssize_t r = read(job->out_fd, job->out + job->out_len, job->out_cap - job->out_len);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                s_close_fd(&job->out_fd);
            return;
        }
        if (r == 0) {
            s_close_fd(&job->out_fd);
            return;
        }
        job->out_len += (size_t)r;
        if (job->out_len > AB_CLI_MAX_OUTPUT) {
            s_close_fd(&job->out_fd);
            s_job_kill(job, KILL_TOO_LARGE);
            return;
        }
    }
}

static void
s_job_read_err(job_t *job)
{
    char buf[4096];
    for (int round = 0; round < 64 && job->err_fd >= 0; round++) {
        ssize_t r = read(job->err_fd, buf, sizeof buf);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                s_close_fd(&job->err_fd);
            return;
        }
        if (r == 0) {
            s_close_fd(&job->err_fd);
            return;
        }
        /* keep the first line only; the rest is read and dropped so the command never blocks */
        for (ssize_t i = 0; i < r && !job->errline_done; i++) {
            if (buf[i] == '\n' || buf[i] == '\r') {
                if (job->errline_len > 0)
                    job->errline_done = 1;
                continue;
            }
            if (job->errline_len < MAX_ERRLINE)
                job->errline[job->errline_len++] = buf[i];
            else
                job->errline_done = 1;
        }
        job->errline[job->errline_len] = '\0';
    }
}

static void
s_queue_push(serve_t *srv, ab_request_t *req)
{
    qnode_t *q = calloc(1, sizeof *q);
    if (!q) {
        s_answer_error(srv, &req, "the provider is out of memory", s_now_ms(), "error");
        return;
    }
    q->req = req;
    if (srv->qtail)
        srv->qtail->next = q;
    else
        srv->qhead = q;
    srv->qtail = q;
    srv->queued++;
}

static ab_request_t *
s_queue_pop(serve_t *srv)
{
    qnode_t *q = srv->qhead;
    if (!q)
        return NULL;
    srv->qhead = q->next;
    if (!srv->qhead)
        srv->qtail = NULL;
    srv->queued--;
    ab_request_t *req = q->req;
    free(q);
    return req;
}

static void
s_on_request(ab_client_t *client, ab_request_t *req, void *arg)
{
    (void)client;
    serve_t *srv = arg;
    uint64_t started = s_now_ms();
    if (srv->stopping) {
        s_answer_error(srv, &req, "the provider is shutting down", started, "shutdown");
        return;
    }
    if (!srv->exec) {
        size_t len = 0;
        const void *data = ab_request_payload(req, &len);
        s_log_call(srv, req, len, len, started, "ok");
        ab_reply(&req, data, len);
        return;
    }
    if (srv->running < srv->concurrency && !srv->qhead) {
        s_job_start(srv, req);
        return;
    }
    if (srv->queued >= MAX_QUEUE) {
        char text[128];
        snprintf(text, sizeof text, "the provider is busy: %zu calls are waiting", srv->queued);
        s_answer_error(srv, &req, text, started, "busy");
        return;
    }
    s_queue_push(srv, req);
}

static void
s_begin_shutdown(serve_t *srv)
{
    if (srv->stopping) {
        srv->drain_until = s_now_ms(); /* a second signal: stop waiting for commands */
        return;
    }
    srv->stopping = 1;
    srv->drain_until = s_now_ms() + DRAIN_MS;
    /* so that the broker sends new calls elsewhere; failures only mean it already forgot us */
    int rc = ab_withdraw(srv->client, srv->service);
    if (rc != 0 && srv->verbose)
        fprintf(stderr, "amtsbote: stopping: %s: %s\n", ab_err_name(rc),
                ab_client_last_error(srv->client));
    ab_request_t *req;
    while ((req = s_queue_pop(srv)) != NULL)
        s_answer_error(srv, &req, "the provider is shutting down", s_now_ms(), "shutdown");
}

static int
s_install_signals(void)
{
    if (pipe2(s_sigpipe, O_CLOEXEC | O_NONBLOCK) != 0)
        return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0 ||
        sigaction(SIGCHLD, &sa, NULL) != 0)
        return -1;
    return 0;
}

/* One pass over the jobs: reap, kill at deadlines, finish those that are done. */
static void
s_jobs_tick(serve_t *srv)
{
    int st;
    pid_t pid;
    /* bounded by the number of exited children */
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        for (job_t *j = srv->jobs; j; j = j->next) {
            if (j->pid == pid) {
                j->exited = 1;
                j->wstatus = st;
                j->exited_at = s_now_ms();
                break;
            }
        }
    }
    uint64_t now = s_now_ms();
    for (job_t **jp = &srv->jobs; *jp;) {
        job_t *j = *jp;
        if (!j->killed && ab_request_remaining_ms(j->req) == 0) {
            if (!j->overdue_at)
                j->overdue_at = now;
            if (now >= j->overdue_at + DEADLINE_GRACE_MS)
                s_job_kill(j, KILL_DEADLINE);
        } else if (!j->killed && srv->stopping && now >= srv->drain_until)
            s_job_kill(j, KILL_SHUTDOWN);
        int pipes_done = j->out_fd < 0 && j->err_fd < 0;
        /* a command's background children may hold the pipes: do not wait for them forever */
        if (j->killed && now >= j->kill_at + KILL_WAIT_MS)
            pipes_done = 1;
        if (!pipes_done && !j->killed && j->exited && now >= j->exited_at + KILL_WAIT_MS) {
            kill(-j->pid, SIGKILL);
            pipes_done = 1;
        }
        if ((j->exited || j->killed) && pipes_done &&
            (j->exited || now >= j->kill_at + KILL_WAIT_MS)) {
            *jp = j->next;
            s_job_finish(srv, j);
            continue;
        }
        jp = &j->next;
    }
    while (!srv->stopping && srv->running < srv->concurrency && srv->qhead)
        s_job_start(srv, s_queue_pop(srv));
}

static int
s_serve_loop(serve_t *srv)
{
    size_t cap = 0;
    struct pollfd *pfds = NULL;
    job_t **owners = NULL;
    int rc = 0;
    for (;;) {
        if (srv->stopping && !srv->jobs)
            break;
        size_t need = 2 + 3 * (size_t)srv->running;
        if (need > cap) {
            struct pollfd *np = realloc(pfds, need * sizeof *np);
            job_t **no = np ? realloc(owners, need * sizeof *no) : NULL;
            if (np)
                pfds = np;
            if (!np || !no) {
                rc = AB_ENOMEM;
                break;
            }
            owners = no;
            cap = need;
        }
        size_t n = 0;
        pfds[n++] = (struct pollfd){.fd = s_sigpipe[0], .events = POLLIN};
        pfds[n++] = (struct pollfd){.fd = ab_client_fd(srv->client), .events = POLLIN};
        int timeout = ab_client_next_timeout(srv->client);
        uint64_t now = s_now_ms();
        for (job_t *j = srv->jobs; j; j = j->next) {
            if (j->in_fd >= 0) {
                owners[n] = j;
                pfds[n++] = (struct pollfd){.fd = j->in_fd, .events = POLLOUT};
            }
            if (j->out_fd >= 0) {
                owners[n] = j;
                pfds[n++] = (struct pollfd){.fd = j->out_fd, .events = POLLIN};
            }
            if (j->err_fd >= 0) {
                owners[n] = j;
                pfds[n++] = (struct pollfd){.fd = j->err_fd, .events = POLLIN};
            }
            int t;
            if (j->killed)
                t = (int)(j->kill_at + KILL_WAIT_MS > now ? j->kill_at + KILL_WAIT_MS - now : 0);
            else if (j->exited)
                t = (int)(j->exited_at + KILL_WAIT_MS > now ? j->exited_at + KILL_WAIT_MS - now
                                                            : 0);
            else {
                t = ab_request_remaining_ms(j->req);
                if (t == 0 && j->overdue_at)
                    t = (int)(j->overdue_at + DEADLINE_GRACE_MS > now
                                  ? j->overdue_at + DEADLINE_GRACE_MS - now
                                  : 0);
            }
            if (!j->killed && srv->stopping) {
                int d = srv->drain_until > now ? (int)(srv->drain_until - now) : 0;
                if (d < t)
                    t = d;
            }
            if (timeout < 0 || t < timeout)
                timeout = t;
        }
        if (poll(pfds, n, timeout) < 0 && errno != EINTR) {
            fprintf(stderr, "amtsbote: IO_ERROR: poll: %s\n", strerror(errno));
            rc = AB_EIO;
            break;
        }
        if (pfds[0].revents & POLLIN) {
            unsigned char sigs[64];
            ssize_t r = read(s_sigpipe[0], sigs, sizeof sigs);
            for (ssize_t i = 0; i < r; i++)
                if (sigs[i] == SIGINT || sigs[i] == SIGTERM)
                    s_begin_shutdown(srv);
        }
        for (size_t i = 2; i < n; i++) {
            if (!pfds[i].revents)
                continue;
            job_t *j = owners[i];
            if (pfds[i].fd == j->in_fd)
                s_job_write(j);
            else if (pfds[i].fd == j->out_fd)
                s_job_read_out(j);
            else if (pfds[i].fd == j->err_fd)
                s_job_read_err(j);
        }
        s_jobs_tick(srv);
        /* bounded: the library stops after a budget, and we come back through poll() */
        for (int round = 0; round < 8; round++) {
            rc = ab_client_process(srv->client);
            if (rc != 1)
                break;
        }
        if (rc < 0)
            break;
        rc = 0;
        /* a reply the broker refused: its caller got an error; say why here, where the
         * provider's operator looks */
        const char *why = NULL;
        uint64_t refused = ab_client_refused_replies(srv->client, &why);
        if (refused > srv->refused_seen) {
            fprintf(stderr, "amtsbote: serve: the broker refused %llu reply(ies); the latest: %s\n",
                    (unsigned long long)(refused - srv->refused_seen), why);
            srv->refused_seen = refused;
        }
    }
    free(pfds);
    free(owners);
    return rc;
}

static int
s_cmd_serve(const opts_t *opts, int argc, char **argv)
{
    serve_t srv;
    memset(&srv, 0, sizeof srv);
    srv.concurrency = DEFAULT_CONCURRENCY;
    srv.verbose = opts->verbose;
    int echo = 0, raw = 0;
    const char *val = NULL;
    for (int i = 0; i < argc; i++) {
        int m;
        if (strcmp(argv[i], "--echo") == 0) {
            echo = 1;
        } else if (strcmp(argv[i], "--raw") == 0) {
            raw = 1;
        } else if (strcmp(argv[i], "--verbose") == 0 || strcmp(argv[i], "-v") == 0) {
            srv.verbose = 1;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(s_usage, stdout);
            return EXIT_OK;
        } else if ((m = cli_opt(argc, argv, &i, "--exec", &val)) != 0) {
            if (m < 0 || !*val)
                return cli_usage_error("serve: --exec needs a command");
            srv.exec = val;
        } else if ((m = cli_opt(argc, argv, &i, "--concurrency", &val)) != 0) {
            if (m < 0 || s_parse_int(val, &srv.concurrency) != 0 || srv.concurrency < 1 ||
                srv.concurrency > MAX_CONCURRENCY)
                return cli_usage_error("serve: --concurrency needs a number from 1 to %d",
                                       MAX_CONCURRENCY);
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            return cli_usage_error("serve: unknown option '%s'", argv[i]);
        } else if (!srv.service) {
            srv.service = argv[i];
        } else {
            return cli_usage_error("serve: unexpected argument '%s'", argv[i]);
        }
    }
    if (!srv.service)
        return cli_usage_error("serve: which SERVICE? e.g. serve meldewesen.v1.Melderegister");
    if (echo == !!srv.exec)
        return cli_usage_error("serve: give exactly one of --exec CMD and --echo");

    if (s_install_signals() != 0) {
        fprintf(stderr, "amtsbote: IO_ERROR: cannot install signal handlers: %s\n",
                strerror(errno));
        return EXIT_OTHER;
    }
    int code = cli_connect(opts, &srv.client);
    if (code != 0)
        return code;
    if (srv.exec && !raw) {
        code = cli_fetch_set(opts, srv.client, srv.service, &srv.set);
        if (code == 1) {
            code = 0; /* no registered interface: bytes as they are */
        } else if (code != 0) {
            ab_client_destroy(&srv.client);
            return code;
        }
    }
    int rc = ab_offer(srv.client, srv.service, s_on_request, &srv);
    if (rc != 0) {
        code = cli_report(srv.client, rc);
        ab_schema_set_destroy(&srv.set);
        ab_client_destroy(&srv.client);
        return code;
    }
    printf("ready: serving %s as %s%s\n", srv.service, ab_client_participant(srv.client),
           srv.set ? " (JSON)" : "");
    fflush(stdout);

    rc = s_serve_loop(&srv);
    if (rc != 0) {
        code = cli_report(srv.client, rc);
        /* answer what is left so nobody waits for a deadline */
        for (job_t *j = srv.jobs; j;) {
            job_t *next = j->next;
            s_job_kill(j, KILL_SHUTDOWN);
            s_job_finish(&srv, j);
            j = next;
        }
        srv.jobs = NULL;
        ab_request_t *req;
        while ((req = s_queue_pop(&srv)) != NULL)
            ab_reply_error(&req, "the provider is shutting down");
    }
    ab_client_destroy(&srv.client);
    ab_schema_set_destroy(&srv.set);
    return code;
}

/* ---- tunnel ------------------------------------------------------------------------------- */

static void
s_tunnel_log(void *arg, const char *line)
{
    (void)arg;
    fprintf(stderr, "amtsbote: tunnel: %s\n", line);
}

/* Reads the first line of `path` (a key's passphrase). Returns 0, or an exit code (printed). */
static int
s_read_passphrase(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        fprintf(stderr, "amtsbote: IO_ERROR: %s: cannot read the key passphrase file: %s\n", path,
                strerror(errno));
        return EXIT_OTHER;
    }
    out[0] = '\0';
    if (!fgets(out, (int)cap, f))
        out[0] = '\0';
    fclose(f);
    out[strcspn(out, "\r\n")] = '\0';
    if (!out[0]) {
        fprintf(stderr,
                "amtsbote: INVALID_ARGUMENT: %s: the key passphrase file's first line is "
                "empty\n",
                path);
        return EXIT_MALFORMED;
    }
    return 0;
}

static int
s_cmd_tunnel(const opts_t *opts, int argc, char **argv)
{
    const char *listen = "tcp://127.0.0.1:0", *val = NULL;
    for (int i = 0; i < argc; i++) {
        int m;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(s_usage, stdout);
            return EXIT_OK;
        }
        if ((m = cli_opt(argc, argv, &i, "--listen", &val)) != 0) {
            if (m < 0 || !*val)
                return cli_usage_error("tunnel: --listen needs an address, e.g. "
                                       "tcp://127.0.0.1:7451");
            listen = val;
        } else {
            return cli_usage_error("tunnel: unexpected argument '%s'", argv[i]);
        }
    }
    if (!opts->broker || !*opts->broker)
        return cli_usage_error("tunnel: no broker given: use --broker tls://HOST:PORT or set "
                               "AMTSBOTE_BROKER");
    if (!s_is_tls(opts))
        return cli_usage_error("tunnel: the broker must be a tls://HOST:PORT address, not '%s'",
                               opts->broker);
    int code = s_check_tls(opts);
    if (code != 0)
        return code;
    char pass[1024];
    if (opts->key_pass_file &&
        (code = s_read_passphrase(opts->key_pass_file, pass, sizeof pass)) != 0)
        return code;
    ab_tunnel_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.tls.cert = opts->cert;
    cfg.tls.key = opts->key;
    cfg.tls.key_passphrase = opts->key_pass_file ? pass : NULL;
    cfg.tls.ca = opts->ca;
    cfg.tls.crl = opts->crl;
    cfg.broker = opts->broker;
    cfg.listen = listen;
    cfg.log = s_tunnel_log;
    char err[1024];
    int rc = 0;
    ab_tunnel_t *t = ab_tunnel_new(&cfg, &rc, err, sizeof err);
    memset(pass, 0, sizeof pass);
    if (!t) {
        if (rc == AB_EINVAL)
            return cli_usage_error("tunnel: %s", err);
        fprintf(stderr, "amtsbote: %s: %s\n", ab_err_name(rc), err);
        return cli_exit_code(rc);
    }
    const char *who = ab_tunnel_participant(t);
    printf("ready: tunnel %s -> %s%s%s\n", ab_tunnel_local_uri(t), opts->broker, *who ? " as " : "",
           who);
    fflush(stdout);
    ab_tunnel_run(t);
    ab_tunnel_destroy(&t);
    return EXIT_OK;
}

/* ---- profile ------------------------------------------------------------------------------ */

/*
 * A profile holds defaults for the global options as KEY=VALUE lines, so that the certificate,
 * key, CA and broker need not be typed for every call. It is the weakest source: a command-line
 * flag beats the environment, which beats the profile.
 */
enum { P_BROKER, P_AS, P_CERT, P_KEY, P_CA, P_CRL, P_COUNT };

#define PROFILE_MAX_LINE 4096  /* bytes in one line, newline included */
#define PROFILE_MAX_LINES 1000 /* a profile is a handful of lines; this bounds a wrong file */

static const struct {
    const char *key;
    int is_path; /* relative values are resolved against the profile's directory */
} s_profile_keys[P_COUNT] = {
    [P_BROKER] = {"AMTSBOTE_BROKER", 0}, [P_AS] = {"AMTSBOTE_AS", 0},
    [P_CERT] = {"AMTSBOTE_CERT", 1},     [P_KEY] = {"AMTSBOTE_KEY", 1},
    [P_CA] = {"AMTSBOTE_CA", 1},         [P_CRL] = {"AMTSBOTE_CRL", 1},
};

typedef struct {
    char *val[P_COUNT]; /* owned; NULL when the profile does not set the key */
    int line[P_COUNT];  /* where it was set, for "set twice" */
} profile_t;

static void
s_profile_clear(profile_t *p)
{
    for (int k = 0; k < P_COUNT; k++) {
        free(p->val[k]);
        p->val[k] = NULL;
    }
}

/* Strips leading and trailing blanks in place. Returns the first non-blank character. */
static char *
s_trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

/* Returns `value` as a malloc'd string; a relative path is put in the directory of `path`.
 * Returns NULL when out of memory. */
static char *
s_profile_value(const char *path, const char *value, int is_path)
{
    const char *slash = strrchr(path, '/');
    size_t dir = is_path && value[0] != '/' && slash ? (size_t)(slash - path) + 1 : 0;
    size_t n = strlen(value);
    char *out = malloc(dir + n + 1);
    if (!out)
        return NULL;
    memcpy(out, path, dir);
    memcpy(out + dir, value, n + 1);
    return out;
}

/*
 * Reads the profile at `path` into `p`. A profile that does not exist is an error only when
 * `explicit` (--profile or $AMTSBOTE_PROFILE named it). Returns 0, or EXIT_USAGE with the error,
 * naming the file and line, printed.
 */
static int
s_profile_load(const char *path, int explicit, profile_t *p)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        if (!explicit && (errno == ENOENT || errno == ENOTDIR))
            return 0;
        return cli_usage_error("cannot read the profile '%s': %s", path, strerror(errno));
    }
    char buf[PROFILE_MAX_LINE];
    int lineno = 0, code = 0;
    while (fgets(buf, sizeof buf, f)) {
        if (++lineno > PROFILE_MAX_LINES) {
            code = cli_usage_error("%s: more than %d lines; is this a profile?", path,
                                   PROFILE_MAX_LINES);
            break;
        }
        if (!strchr(buf, '\n') && !feof(f)) {
            code = cli_usage_error("%s:%d: line longer than %d bytes", path, lineno,
                                   PROFILE_MAX_LINE - 2);
            break;
        }
        char *line = s_trim(buf);
        if (!*line || *line == '#')
            continue;
        char *eq = strchr(line, '=');
        if (!eq) {
            code = cli_usage_error("%s:%d: expected KEY=VALUE, e.g. AMTSBOTE_CA=chain.pem", path,
                                   lineno);
            break;
        }
        *eq = '\0';
        char *key = s_trim(line), *value = s_trim(eq + 1);
        size_t n = strlen(value);
        if (n >= 2 && (value[0] == '"' || value[0] == '\'') && value[n - 1] == value[0]) {
            value[n - 1] = '\0';
            value++;
        }
        int k = 0;
        while (k < P_COUNT && strcmp(key, s_profile_keys[k].key) != 0)
            k++;
        if (k == P_COUNT) {
            code = cli_usage_error("%s:%d: unknown key '%s'; a profile knows AMTSBOTE_BROKER, "
                                   "AMTSBOTE_AS, AMTSBOTE_CERT, AMTSBOTE_KEY, AMTSBOTE_CA and "
                                   "AMTSBOTE_CRL",
                                   path, lineno, key);
            break;
        }
        if (p->val[k]) {
            code = cli_usage_error("%s:%d: %s is set twice (first on line %d)", path, lineno, key,
                                   p->line[k]);
            break;
        }
        if (!*value)
            continue; /* KEY= leaves the key unset */
        if (!(p->val[k] = s_profile_value(path, value, s_profile_keys[k].is_path))) {
            fprintf(stderr, "amtsbote: NO_MEMORY: reading the profile '%s'\n", path);
            code = EXIT_OTHER;
            break;
        }
        p->line[k] = lineno;
    }
    if (code == 0 && ferror(f))
        code = cli_usage_error("cannot read the profile '%s': %s", path, strerror(errno));
    fclose(f);
    if (code != 0)
        s_profile_clear(p);
    return code;
}

/*
 * Fills in what the command line left open: from the environment, then from the profile
 * (`--profile`, else $AMTSBOTE_PROFILE, else $XDG_CONFIG_HOME/amtsbote/profile or
 * ~/.config/amtsbote/profile if it exists). An empty environment variable counts as unset.
 * `opts` borrows strings from `p`. Returns 0 or an exit code (printed).
 */
static int
s_apply_defaults(opts_t *opts, const char *profile, profile_t *p)
{
    const char **field[P_COUNT] = {
        [P_BROKER] = &opts->broker, [P_AS] = &opts->as, [P_CERT] = &opts->cert,
        [P_KEY] = &opts->key,       [P_CA] = &opts->ca, [P_CRL] = &opts->crl,
    };
    for (int k = 0; k < P_COUNT; k++) {
        const char *env = getenv(s_profile_keys[k].key);
        if (!*field[k] && env && *env)
            *field[k] = env;
    }
    int explicit = 1;
    char def[PATH_MAX];
    if (!profile || !*profile)
        profile = getenv("AMTSBOTE_PROFILE");
    if (!profile || !*profile) {
        explicit = 0;
        const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
        int n = -1;
        if (xdg && xdg[0] == '/') /* the XDG spec: a relative path is to be ignored */
            n = snprintf(def, sizeof def, "%s/amtsbote/profile", xdg);
        else if (home && *home)
            n = snprintf(def, sizeof def, "%s/.config/amtsbote/profile", home);
        if (n < 0 || (size_t)n >= sizeof def)
            return 0;
        profile = def;
    }
    int code = s_profile_load(profile, explicit, p);
    if (code != 0)
        return code;
    for (int k = 0; k < P_COUNT; k++)
        if (!*field[k])
            *field[k] = p->val[k];
    return 0;
}

/* ---- main --------------------------------------------------------------------------------- */

/* Makes sure fds 0-2 are open, so that pipes never take their numbers. */
static void
s_std_fds(void)
{
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) < 0) {
            int nfd = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
            if (nfd >= 0 && nfd != fd) {
                dup2(nfd, fd);
                close(nfd);
            }
        }
    }
}

int
main(int argc, char **argv)
{
    opts_t opts;
    memset(&opts, 0, sizeof opts);
    const char *val = NULL, *profile = NULL;
    int i = 1;
    s_std_fds();
    signal(SIGPIPE, SIG_IGN);
    for (; i < argc && argv[i][0] == '-'; i++) {
        int m;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(s_usage, stdout);
            return EXIT_OK;
        }
        if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-V") == 0) {
            printf("amtsbote %d.%d.%d (protocol %d)\n", AB_VERSION_MAJOR, AB_VERSION_MINOR,
                   AB_VERSION_PATCH, AB_PROTOCOL_VERSION);
            return EXIT_OK;
        }
        if (strcmp(argv[i], "--verbose") == 0 || strcmp(argv[i], "-v") == 0) {
            opts.verbose = 1;
        } else if ((m = cli_opt(argc, argv, &i, "--broker", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("--broker needs a URI, e.g. tcp://127.0.0.1:7450");
            opts.broker = val;
        } else if ((m = cli_opt(argc, argv, &i, "--profile", &val)) != 0) {
            if (m < 0 || !*val)
                return cli_usage_error("--profile needs a file name");
            profile = val;
        } else if ((m = cli_opt(argc, argv, &i, "--as", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("--as needs a participant address, e.g. bund.bmi");
            opts.as = val;
            opts.as_given = 1;
        } else if ((m = cli_opt(argc, argv, &i, "--timeout", &val)) != 0) {
            if (m < 0 || s_parse_int(val, &opts.timeout_ms) != 0)
                return cli_usage_error("--timeout needs milliseconds (0 or more)");
        } else if ((m = cli_opt(argc, argv, &i, "--cert", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("--cert needs a file name");
            opts.cert = val;
            opts.tls_given = 1;
        } else if ((m = cli_opt(argc, argv, &i, "--key", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("--key needs a file name");
            opts.key = val;
            opts.tls_given = 1;
        } else if ((m = cli_opt(argc, argv, &i, "--key-passphrase-file", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("--key-passphrase-file needs a file name");
            opts.key_pass_file = val;
            opts.tls_given = 1;
        } else if ((m = cli_opt(argc, argv, &i, "--ca", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("--ca needs a file name");
            opts.ca = val;
            opts.tls_given = 1;
        } else if ((m = cli_opt(argc, argv, &i, "--crl", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("--crl needs a file name");
            opts.crl = val;
            opts.tls_given = 1;
        } else {
            return cli_usage_error("unknown option '%s'", argv[i]);
        }
    }
    if (i >= argc)
        return cli_usage_error("which command? call, serve, send, inbox, status, publish, "
                               "subscribe, services, schema, policy, audit or tunnel");
    const char *cmd = argv[i++];
    int (*run)(const opts_t *, int, char **) = NULL;
    if (strcmp(cmd, "call") == 0)
        run = s_cmd_call;
    else if (strcmp(cmd, "serve") == 0)
        run = s_cmd_serve;
    else if (strcmp(cmd, "services") == 0)
        run = s_cmd_services;
    else if (strcmp(cmd, "send") == 0)
        run = cli_cmd_send;
    else if (strcmp(cmd, "inbox") == 0)
        run = cli_cmd_inbox;
    else if (strcmp(cmd, "status") == 0)
        run = cli_cmd_status;
    else if (strcmp(cmd, "publish") == 0)
        run = cli_cmd_publish;
    else if (strcmp(cmd, "subscribe") == 0)
        run = cli_cmd_subscribe;
    else if (strcmp(cmd, "unsubscribe") == 0)
        run = cli_cmd_unsubscribe;
    else if (strcmp(cmd, "tunnel") == 0)
        run = s_cmd_tunnel;
    else if (strcmp(cmd, "schema") == 0)
        run = cli_cmd_schema;
    else if (strcmp(cmd, "policy") == 0)
        run = cli_cmd_policy;
    else if (strcmp(cmd, "audit") == 0)
        run = cli_cmd_audit;
    else if (strcmp(cmd, "help") == 0) {
        fputs(s_usage, stdout);
        return EXIT_OK;
    } else
        return cli_usage_error("unknown command '%s'; commands are call, serve, send, inbox, "
                               "status, publish, subscribe, unsubscribe, services, schema, "
                               "policy, audit and tunnel",
                               cmd);
    profile_t prof;
    memset(&prof, 0, sizeof prof);
    int code = s_apply_defaults(&opts, profile, &prof);
    if (code == 0)
        code = run(&opts, argc - i, argv + i);
    s_profile_clear(&prof);
    return code;
}
