/*
 * schema_cli.c - `amtsbote schema push|check|list|show`, and fetching a registered interface
 * for the JSON conversion of `call` and `serve`.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "amtsbote/v1/amtsbote.pb-c.h"
#include "cli.h"
#include "schema.h"

#define SCHEMA_TIMEOUT_MS 30000
#define MAX_PROTO_PATHS 16

static const char *s_schema_usage =
    "Usage: amtsbote [GLOBAL OPTIONS] schema COMMAND\n"
    "\n"
    "  schema push FILE [--proto-path DIR]...\n"
    "      Registers the interface in FILE at the broker: a descriptor set made with\n"
    "        protoc --include_imports --descriptor_set_out=FILE x.proto\n"
    "      or a .proto file, which is compiled with protoc first (imports are looked up in\n"
    "      each --proto-path DIR, default '.', and in protoc's own include directory).\n"
    "      Each .proto file in the set gets a new version when it changed. A change that\n"
    "      breaks the registered version is refused with the rule and the field at fault\n"
    "      (README: Schema compatibility); then nothing is stored and the exit code is 9.\n"
    "  schema check FILE [--proto-path DIR]...\n"
    "      The same as push without storing anything: prints what would break.\n"
    "  schema list\n"
    "      Every registered file with its version, package, services and publisher.\n"
    "  schema show NAME [--version N] [--descriptor-set OUT]\n"
    "      One registered file (NAME is the file name, or a message, enum or service it\n"
    "      defines, or SERVICE/METHOD): its services with their methods' types, messages and\n"
    "      enums. --descriptor-set writes the set it was pushed in to OUT.\n"
    "  Examples:\n"
    "    amtsbote --broker tcp://127.0.0.1:7450 --as bund.bmi \\\n"
    "      schema push proto/examples/meldewesen/v1/meldewesen.proto --proto-path proto/examples\n"
    "    amtsbote schema show meldewesen.v1.Melderegister\n";

/* Reads a whole file. 0 or an exit code (error printed). */
static int
s_read_file(const char *path, uint8_t **data, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "amtsbote: IO_ERROR: cannot open '%s': %s\n", path, strerror(errno));
        return EXIT_OTHER;
    }
    int rc = cli_read_all(fd, data, len);
    int e = errno;
    close(fd);
    if (rc != 0) {
        fprintf(stderr, "amtsbote: %s: cannot read '%s': %s\n",
                e == EFBIG ? "TOO_LARGE" : "IO_ERROR", path,
                e == EFBIG ? "larger than 64 MiB" : strerror(e));
        return e == EFBIG ? EXIT_MALFORMED : EXIT_OTHER;
    }
    return 0;
}

static int
s_ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Runs protoc on a .proto file into a temporary descriptor set. 0 or an exit code. */
static int
s_compile(const char *file, const char **paths, int npaths, uint8_t **data, size_t *len)
{
    char out[] = "/tmp/amtsbote-schema-XXXXXX";
    int fd = mkstemp(out);
    if (fd < 0) {
        fprintf(stderr, "amtsbote: IO_ERROR: cannot create a temporary file: %s\n",
                strerror(errno));
        return EXIT_OTHER;
    }
    close(fd);
    char *argv[MAX_PROTO_PATHS + 8];
    char setarg[64], incs[MAX_PROTO_PATHS][4200];
    int n = 0;
    argv[n++] = "protoc";
    argv[n++] = "--include_imports";
    snprintf(setarg, sizeof setarg, "--descriptor_set_out=%s", out);
    argv[n++] = setarg;
    if (npaths == 0)
        paths[npaths++] = ".";
    for (int i = 0; i < npaths; i++) {
        snprintf(incs[i], sizeof incs[i], "--proto_path=%s", paths[i]);
        argv[n++] = incs[i];
    }
    argv[n++] = "--proto_path=/usr/include";
    argv[n++] = (char *)file;
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        execvp("protoc", argv);
        fprintf(stderr,
                "amtsbote: IO_ERROR: cannot run protoc (%s); install the Debian "
                "package protobuf-compiler, or push a descriptor set\n",
                strerror(errno));
        _exit(127);
    }
    int status = 0;
    while (pid > 0 && waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    int code = 0;
    if (pid < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        if (pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) != 127)
            fprintf(stderr, "amtsbote: MALFORMED: protoc could not compile '%s' (see above)\n",
                    file);
        code = pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 127 ? EXIT_OTHER
                                                                          : EXIT_MALFORMED;
    } else {
        code = s_read_file(out, data, len);
    }
    unlink(out);
    return code;
}

/* Calls a broker method; 0 with the reply, or an exit code (error printed). */
static int
s_broker_call(const opts_t *opts, ab_client_t *client, const char *method,
              const ProtobufCMessage *req, void **reply, size_t *reply_len)
{
    size_t len = protobuf_c_message_get_packed_size(req);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf == NULL) {
        fprintf(stderr, "amtsbote: NO_MEMORY: the request does not fit in memory\n");
        return EXIT_OTHER;
    }
    protobuf_c_message_pack(req, buf);
    int timeout = opts->timeout_ms > 0 ? opts->timeout_ms : SCHEMA_TIMEOUT_MS;
    int rc = ab_call(client, method, buf, len, timeout, reply, reply_len);
    free(buf);
    return rc == 0 ? 0 : cli_report(client, rc);
}

static void
s_print_problems(const Amtsbote__V1__SchemaFileResult *f)
{
    for (size_t k = 0; k < f->n_problems; k++) {
        const Amtsbote__V1__SchemaProblem *p = f->problems[k];
        printf("  %s: %s\n    %s\n", p->rule, p->element, p->text);
    }
}

static int
s_push(const opts_t *opts, int argc, char **argv, int dry_run)
{
    const char *file = NULL, *val = NULL;
    const char *paths[MAX_PROTO_PATHS + 1];
    int npaths = 0;
    const char *cmd = dry_run ? "check" : "push";
    for (int i = 0; i < argc; i++) {
        int m;
        if ((m = cli_opt(argc, argv, &i, "--proto-path", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("schema %s: --proto-path needs a directory", cmd);
            if (npaths == MAX_PROTO_PATHS)
                return cli_usage_error("schema %s: at most %d --proto-path", cmd, MAX_PROTO_PATHS);
            paths[npaths++] = val;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            return cli_usage_error("schema %s: unknown option '%s'", cmd, argv[i]);
        } else if (!file) {
            file = argv[i];
        } else {
            return cli_usage_error("schema %s: unexpected argument '%s'", cmd, argv[i]);
        }
    }
    if (!file)
        return cli_usage_error("schema %s: which FILE? a .proto file or a descriptor set", cmd);
    uint8_t *set = NULL;
    size_t set_len = 0;
    int code = s_ends_with(file, ".proto") ? s_compile(file, paths, npaths, &set, &set_len)
                                           : s_read_file(file, &set, &set_len);
    if (code != 0)
        return code;
    ab_client_t *client = NULL;
    if ((code = cli_connect(opts, &client)) != 0) {
        free(set);
        return code;
    }
    Amtsbote__V1__SchemaPushRequest req = AMTSBOTE__V1__SCHEMA_PUSH_REQUEST__INIT;
    req.descriptor_set.data = set;
    req.descriptor_set.len = set_len;
    req.dry_run = dry_run;
    void *reply = NULL;
    size_t reply_len = 0;
    code =
        s_broker_call(opts, client, "amtsbote.v1.Broker/SchemaPush", &req.base, &reply, &reply_len);
    char who[300];
    snprintf(who, sizeof who, "%s", ab_client_participant(client));
    ab_client_destroy(&client);
    free(set);
    if (code != 0)
        return code;
    Amtsbote__V1__SchemaPushReply *r =
        amtsbote__v1__schema_push_reply__unpack(NULL, reply_len, reply);
    ab_free(reply);
    if (r == NULL) {
        fprintf(stderr, "amtsbote: MALFORMED: the broker's answer could not be decoded\n");
        return EXIT_OTHER;
    }
    size_t changed = 0, refused = 0;
    for (size_t i = 0; i < r->n_files; i++) {
        const Amtsbote__V1__SchemaFileResult *f = r->files[i];
        int is_refused = strcmp(f->status, "refused") == 0;
        if (is_refused) {
            refused++;
            printf("%s: %s (%zu problem%s)\n", f->name, dry_run ? "would be refused" : "refused",
                   f->n_problems, f->n_problems == 1 ? "" : "s");
            s_print_problems(f);
        } else {
            if (strcmp(f->status, "unchanged") != 0)
                changed++;
            printf("%s: %s, version %u%s\n", f->name, f->status, f->version,
                   dry_run && strcmp(f->status, "unchanged") != 0 ? " (not stored: check)" : "");
        }
    }
    if (r->error && r->error[0]) {
        fprintf(stderr, "amtsbote: SCHEMA_INVALID: %s\n", r->error);
        code = EXIT_FORBIDDEN;
    } else if (refused > 0) {
        fprintf(stderr,
                "amtsbote: SCHEMA_INVALID: %zu file%s would break the registered version%s; %s\n",
                refused, refused == 1 ? "" : "s", refused == 1 ? "" : "s",
                dry_run ? "see above" : "nothing was stored");
        code = EXIT_FORBIDDEN;
    } else if (dry_run) {
        printf("compatible: %zu file%s would change\n", changed, changed == 1 ? "" : "s");
    } else if (changed == 0) {
        printf("unchanged: the broker has these versions already\n");
    } else {
        printf("accepted: %zu file%s registered as %s\n", changed, changed == 1 ? "" : "s", who);
    }
    amtsbote__v1__schema_push_reply__free_unpacked(r, NULL);
    return code;
}

static void
s_time(uint64_t ms, char *buf, size_t cap)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int
s_list(const opts_t *opts, int argc, char **argv)
{
    if (argc > 0)
        return cli_usage_error("schema list: unexpected argument '%s'", argv[0]);
    ab_client_t *client = NULL;
    int code = cli_connect(opts, &client);
    if (code != 0)
        return code;
    void *reply = NULL;
    size_t len = 0;
    Amtsbote__V1__SchemaList empty = AMTSBOTE__V1__SCHEMA_LIST__INIT;
    code = s_broker_call(opts, client, "amtsbote.v1.Broker/SchemaList", &empty.base, &reply, &len);
    ab_client_destroy(&client);
    if (code != 0)
        return code;
    Amtsbote__V1__SchemaList *list = amtsbote__v1__schema_list__unpack(NULL, len, reply);
    ab_free(reply);
    if (list == NULL) {
        fprintf(stderr, "amtsbote: MALFORMED: the broker's answer could not be decoded\n");
        return EXIT_OTHER;
    }
    if (list->n_files == 0)
        printf("no interface is registered at this broker (amtsbote schema push FILE)\n");
    else
        printf("%-40s %7s  %-24s %-24s %s\n", "FILE", "VERSION", "PUSHED BY", "PUSHED AT",
               "SERVICES");
    for (size_t i = 0; i < list->n_files; i++) {
        const Amtsbote__V1__SchemaFileInfo *f = list->files[i];
        char when[32];
        s_time(f->pushed_at_ms, when, sizeof when);
        printf("%-40s %7u  %-24s %-24s ", f->name, f->version, f->pushed_by, when);
        for (size_t k = 0; k < f->n_services; k++)
            printf("%s%s", k ? "," : "", f->services[k]);
        printf("%s\n", f->n_services ? "" : "-");
    }
    amtsbote__v1__schema_list__free_unpacked(list, NULL);
    return EXIT_OK;
}

/* Asks the broker for the registered file that defines `name`. 0 with the reply, 1 when
 * nothing registered defines it, or an exit code (error printed). */
static int
s_get(const opts_t *opts, ab_client_t *client, const char *name, unsigned version,
      Amtsbote__V1__SchemaGetReply **out, int quiet_unknown)
{
    Amtsbote__V1__SchemaGetRequest req = AMTSBOTE__V1__SCHEMA_GET_REQUEST__INIT;
    req.name = (char *)name;
    req.version = version;
    size_t len = protobuf_c_message_get_packed_size(&req.base);
    uint8_t buf[1024];
    if (len > sizeof buf)
        return cli_usage_error("the name '%.40s...' is too long", name);
    protobuf_c_message_pack(&req.base, buf);
    void *reply = NULL;
    size_t reply_len = 0;
    int timeout = opts->timeout_ms > 0 ? opts->timeout_ms : SCHEMA_TIMEOUT_MS;
    int rc = ab_call(client, "amtsbote.v1.Broker/SchemaGet", buf, len, timeout, &reply, &reply_len);
    if (rc == AB_EINVAL && quiet_unknown && strstr(ab_client_last_error(client), "no registered"))
        return 1;
    if (rc != 0)
        return cli_report(client, rc);
    *out = amtsbote__v1__schema_get_reply__unpack(NULL, reply_len, reply);
    ab_free(reply);
    if (*out != NULL && (*out)->file == NULL) {
        amtsbote__v1__schema_get_reply__free_unpacked(*out, NULL);
        *out = NULL;
    }
    if (*out == NULL) {
        fprintf(stderr, "amtsbote: MALFORMED: the broker's answer could not be decoded\n");
        return EXIT_OTHER;
    }
    return 0;
}

static int
s_show(const opts_t *opts, int argc, char **argv)
{
    const char *name = NULL, *out = NULL, *val = NULL;
    int version = 0;
    for (int i = 0; i < argc; i++) {
        int m;
        if ((m = cli_opt(argc, argv, &i, "--descriptor-set", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("schema show: --descriptor-set needs a file name");
            out = val;
        } else if ((m = cli_opt(argc, argv, &i, "--version", &val)) != 0) {
            char *end = NULL;
            long v = m > 0 ? strtol(val, &end, 10) : -1;
            if (m < 0 || !end || *end || v < 1 || v > 1000000)
                return cli_usage_error("schema show: --version needs a version number (1, 2, ...)");
            version = (int)v;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            return cli_usage_error("schema show: unknown option '%s'", argv[i]);
        } else if (!name) {
            name = argv[i];
        } else {
            return cli_usage_error("schema show: unexpected argument '%s'", argv[i]);
        }
    }
    if (!name)
        return cli_usage_error("schema show: which NAME? a file, message, enum or service");
    ab_client_t *client = NULL;
    int code = cli_connect(opts, &client);
    if (code != 0)
        return code;
    Amtsbote__V1__SchemaGetReply *r = NULL;
    code = s_get(opts, client, name, (unsigned)version, &r, 0);
    ab_client_destroy(&client);
    if (code != 0)
        return code;
    const Amtsbote__V1__SchemaFileInfo *f = r->file;
    char when[32];
    s_time(f->pushed_at_ms, when, sizeof when);
    char sha[65];
    for (size_t i = 0; i < f->sha256.len && i < 32; i++)
        snprintf(sha + 2 * i, 3, "%02x", f->sha256.data[i]);
    sha[f->sha256.len >= 32 ? 64 : 2 * f->sha256.len] = '\0';
    printf("file:      %s\nversion:   %u\npackage:   %s\npushed by: %s\npushed at: %s\n"
           "sha256:    %s\n",
           f->name, f->version, f->package, f->pushed_by, when, sha);
    ab_schema_set_t *set = NULL;
    ab_schema_error_t err;
    if (ab_schema_set_load(r->descriptor_set.data, r->descriptor_set.len, &set, &err) == 0) {
        for (size_t i = 0; i < f->n_services; i++) {
            const ProtobufCServiceDescriptor *s = ab_schema_service(set, f->services[i]);
            printf("service %s\n", f->services[i]);
            for (unsigned k = 0; s && k < s->n_methods; k++)
                printf("  %s/%s(%s) returns (%s)\n", f->services[i], s->methods[k].name,
                       s->methods[k].input->name, s->methods[k].output->name);
        }
        ab_schema_set_destroy(&set);
    }
    for (size_t i = 0; i < f->n_messages; i++)
        printf("message %s\n", f->messages[i]);
    for (size_t i = 0; i < f->n_enums; i++)
        printf("enum %s\n", f->enums[i]);
    if (out) {
        FILE *o = fopen(out, "wb");
        if (!o ||
            fwrite(r->descriptor_set.data, 1, r->descriptor_set.len, o) != r->descriptor_set.len ||
            fclose(o) != 0) {
            fprintf(stderr, "amtsbote: IO_ERROR: cannot write '%s': %s\n", out, strerror(errno));
            code = EXIT_OTHER;
        }
    }
    amtsbote__v1__schema_get_reply__free_unpacked(r, NULL);
    return code;
}

int
cli_cmd_schema(const opts_t *opts, int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(s_schema_usage, stdout);
            return EXIT_OK;
        }
    if (argc < 1)
        return cli_usage_error("schema: which command? push, check, list or show");
    const char *cmd = argv[0];
    if (strcmp(cmd, "push") == 0)
        return s_push(opts, argc - 1, argv + 1, 0);
    if (strcmp(cmd, "check") == 0)
        return s_push(opts, argc - 1, argv + 1, 1);
    if (strcmp(cmd, "list") == 0)
        return s_list(opts, argc - 1, argv + 1);
    if (strcmp(cmd, "show") == 0)
        return s_show(opts, argc - 1, argv + 1);
    return cli_usage_error("schema: unknown command '%s'; use push, check, list or show", cmd);
}

int
cli_fetch_set(const opts_t *opts, ab_client_t *client, const char *name, ab_schema_set_t **set)
{
    *set = NULL;
    Amtsbote__V1__SchemaGetReply *r = NULL;
    int code = s_get(opts, client, name, 0, &r, 1);
    if (code != 0)
        return code;
    ab_schema_error_t err;
    if (ab_schema_set_load(r->descriptor_set.data, r->descriptor_set.len, set, &err) != 0) {
        fprintf(stderr,
                "amtsbote: SCHEMA_INVALID: the registered interface of %s does not load: %s %s\n",
                name, err.path, err.text);
        code = EXIT_OTHER;
    }
    amtsbote__v1__schema_get_reply__free_unpacked(r, NULL);
    return code;
}

const ProtobufCMethodDescriptor *
cli_find_method(const ab_schema_set_t *set, const char *method)
{
    const char *slash = strchr(method, '/');
    char svc[512];
    if (slash == NULL || (size_t)(slash - method) >= sizeof svc)
        return NULL;
    snprintf(svc, sizeof svc, "%.*s", (int)(slash - method), method);
    const ProtobufCServiceDescriptor *s = ab_schema_service(set, svc);
    return s ? protobuf_c_service_descriptor_get_method_by_name(s, slash + 1) : NULL;
}

int
cli_fetch_method(const opts_t *opts, ab_client_t *client, const char *method, ab_schema_set_t **set,
                 const ProtobufCMethodDescriptor **m)
{
    *m = NULL;
    int code = cli_fetch_set(opts, client, method, set);
    if (code != 0)
        return code;
    *m = cli_find_method(*set, method);
    if (*m == NULL) {
        const char *slash = strchr(method, '/');
        fprintf(stderr,
                "amtsbote: UNKNOWN_SERVICE: the registered interface of %.*s has no method %s\n",
                (int)strcspn(method, "/"), method, slash ? slash + 1 : "(none given)");
        ab_schema_set_destroy(set);
        return EXIT_UNKNOWN_SERVICE;
    }
    return 0;
}
