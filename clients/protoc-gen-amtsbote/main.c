/*
 * protoc-gen-amtsbote - a protoc plugin that writes typed Amtsbote stubs next to protoc-c's code.
 *
 * protoc runs it with a CodeGeneratorRequest on stdin and reads a CodeGeneratorResponse from
 * stdout. For every file to generate that declares services it writes NAME.ab.h and NAME.ab.c
 * (NAME: the file's name without .proto, in the same directory layout as protoc-c's
 * NAME.pb-c.h, which they include): per method a blocking call with a deadline, an asynchronous
 * call with a typed callback, and a typed provider; the API is described at the top of every
 * generated header. Names follow protoc-c's rules (package parts and nested names joined by
 * "__"; CamelCase for types, lower-case snake for functions) so that the stubs sit next to
 * protoc-c's code. protoc-c already uses `pkg__svc__method` for its own ProtobufCService stub, so
 * ours carry a suffix: `pkg__svc__method__call`, `__call_async`, `__offer`.
 *
 * Files without services produce nothing, unless the parameter `always` is given
 * (--amtsbote_opt=always): then they get a header that only includes NAME.pb-c.h and a source
 * file without functions, so that a build system can name every output in advance.
 *
 * What Amtsbote cannot carry is refused through the response's error field, which protoc prints:
 * streaming methods, and services in a file without a package (Amtsbote names a method
 * package.Service/Method). Errors name the file and the method.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/compiler/plugin.pb-c.h"

typedef Google__Protobuf__FileDescriptorProto file_t;
typedef Google__Protobuf__ServiceDescriptorProto service_t;
typedef Google__Protobuf__MethodDescriptorProto method_t;

/* The generator's state for one run: the parameter and the first error (NULL when none). */
typedef struct {
    int always;
    char *error;
    const Google__Protobuf__Compiler__CodeGeneratorRequest *req;
} gen_t;

/* Records the first error; later ones are dropped (protoc shows one message). */
static void s_fail(gen_t *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
s_fail(gen_t *g, const char *fmt, ...)
{
    if (g->error)
        return;
    va_list ap;
    va_start(ap, fmt);
    char *text = NULL;
    if (vasprintf(&text, fmt, ap) >= 0)
        g->error = text;
    va_end(ap);
    if (!g->error)
        g->error = strdup("protoc-gen-amtsbote: out of memory");
}

/* A formatted string the caller frees, or NULL when out of memory. */
static char *s_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *
s_fmt(const char *fmt, ...)
{
    char *out = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&out, fmt, ap);
    va_end(ap);
    return n < 0 ? NULL : out;
}

/* ---- names, as protoc-c makes them ---------------------------------------------------------- */

/* protoc-c's CamelToLower: "GetHTTPStuff" -> "get_httpstuff", "Akte_Kopf" -> "akte__kopf". */
static void
s_camel_to_lower(FILE *out, const char *name)
{
    int was_upper = 1; /* no leading '_' */
    for (const char *p = name; *p; p++) {
        int is_upper = isupper((unsigned char)*p) != 0;
        if (is_upper && !was_upper)
            fputc('_', out);
        fputc(tolower((unsigned char)*p), out);
        was_upper = is_upper;
    }
}

/* protoc-c's ToCamel: "land_x" -> "LandX", "v1" -> "V1". */
static void
s_to_camel(FILE *out, const char *name)
{
    int next_upper = 1;
    for (const char *p = name; *p; p++) {
        if (*p == '_') {
            next_upper = 1;
        } else if (next_upper) {
            fputc(toupper((unsigned char)*p), out);
            next_upper = 0;
        } else {
            fputc(*p, out);
        }
    }
}

/*
 * A dotted full name (".pkg.Outer.Inner" or "pkg.Svc") in protoc-c's C form: `style` 'c' for the
 * type name (Pkg__Outer__Inner), 'l' for functions (pkg__outer__inner), 'u' for macros. Returns
 * a string the caller frees, or NULL when out of memory.
 */
static char *
s_cname(const char *full, char style)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    if (!out)
        return NULL;
    int first = 1;
    char piece[512];
    for (const char *p = full; *p;) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (n > 0 && n < sizeof piece) {
            memcpy(piece, p, n);
            piece[n] = '\0';
            if (!first)
                fputs("__", out);
            first = 0;
            if (style == 'c')
                s_to_camel(out, piece);
            else
                s_camel_to_lower(out, piece);
        }
        p += n;
        if (*p == '.')
            p++;
    }
    if (fclose(out) != 0) {
        free(buf);
        return NULL;
    }
    if (style == 'u')
        for (char *q = buf; *q; q++)
            *q = (char)toupper((unsigned char)*q);
    return buf;
}

/* "a/b/c.proto" -> "a/b/c" (as protoc-c strips it). The caller frees. */
static char *
s_strip_proto(const char *name)
{
    size_t n = strlen(name);
    if (n > 11 && strcmp(name + n - 11, ".protodevel") == 0)
        n -= 11;
    else if (n > 6 && strcmp(name + n - 6, ".proto") == 0)
        n -= 6;
    return strndup(name, n);
}

/* ---- what one method needs ------------------------------------------------------------------ */

typedef struct {
    const char *name;  /* "Meldebescheinigung" */
    char *wire;        /* "meldewesen.v1.Melderegister/Meldebescheinigung" */
    char *lc;          /* "meldewesen__v1__melderegister__meldebescheinigung" */
    char *uc;          /* "MELDEWESEN__V1__MELDEREGISTER__MELDEBESCHEINIGUNG" */
    char *tc;          /* "Meldewesen__V1__Melderegister__Meldebescheinigung" */
    char *member;      /* "meldebescheinigung", the handler's member in the provider struct */
    const char *in;    /* ".meldewesen.v1.MeldebescheinigungAnfrage" */
    const char *out;   /* ".meldewesen.v1.Meldebescheinigung" */
    char *in_c, *in_l; /* Meldewesen__V1__MeldebescheinigungAnfrage, meldewesen__v1__... */
    char *out_c, *out_l;
    /*
     * C expressions on the generated code's variables: protoc-c's typed functions for top-level
     * messages; a nested message has only __init and its descriptor, so the generic ones.
     */
    char *in_size, *in_pack, *in_unpack, *in_free;
    char *out_size, *out_pack, *out_unpack, *out_free, *out_free_doc;
} method_names_t;

typedef struct {
    char *full; /* "meldewesen.v1.Melderegister" */
    char *lc, *uc, *tc;
    size_t n;
    method_names_t *m;
} service_names_t;

static void
s_service_names_free(service_names_t *s)
{
    for (size_t i = 0; i < s->n; i++) {
        method_names_t *m = &s->m[i];
        free(m->wire);
        free(m->lc);
        free(m->uc);
        free(m->tc);
        free(m->member);
        free(m->in_c);
        free(m->in_l);
        free(m->out_c);
        free(m->out_l);
        char **exprs[] = {&m->in_size,    &m->in_pack,  &m->in_unpack,
                          &m->in_free,    &m->out_size, &m->out_pack,
                          &m->out_unpack, &m->out_free, &m->out_free_doc};
        for (size_t j = 0; j < sizeof exprs / sizeof exprs[0]; j++)
            free(*exprs[j]);
    }
    free(s->m);
    free(s->full);
    free(s->lc);
    free(s->uc);
    free(s->tc);
}

/* Non-zero when ".pkg.Name" is a top-level message of one of the request's files. */
static int
s_top_level(const gen_t *g, const char *full)
{
    for (size_t i = 0; i < g->req->n_proto_file; i++) {
        const file_t *f = g->req->proto_file[i];
        const char *pkg = f->package ? f->package : "";
        size_t n = strlen(pkg);
        const char *rest = full + (full[0] == '.');
        if (n > 0) {
            if (strncmp(rest, pkg, n) != 0 || rest[n] != '.')
                continue;
            rest += n + 1;
        }
        for (size_t j = 0; j < f->n_message_type; j++)
            if (f->message_type[j]->name && strcmp(f->message_type[j]->name, rest) == 0)
                return 1;
    }
    return 0;
}

/*
 * Sets the four expressions for a message type (C type `c`, function prefix `l`) on variable
 * `var`; returns 0 or -1 when out of memory.
 */
static int
s_exprs(int top, const char *c, const char *l, const char *var, const char *len, char **size,
        char **pack, char **unpack, char **freeit)
{
    if (top) {
        *size = s_fmt("%s__get_packed_size(%s)", l, var);
        *pack = s_fmt("%s__pack(%s, buf)", l, var);
        *unpack = s_fmt("%s__unpack(NULL, %s, data)", l, len);
        *freeit = s_fmt("%s__free_unpacked(%s, NULL)", l, var);
    } else {
        *size = s_fmt("protobuf_c_message_get_packed_size(&%s->base)", var);
        *pack = s_fmt("protobuf_c_message_pack(&%s->base, buf)", var);
        *unpack =
            s_fmt("(%s *)protobuf_c_message_unpack(&%s__descriptor, NULL, %s, data)", c, l, len);
        *freeit = s_fmt("protobuf_c_message_free_unpacked(&%s->base, NULL)", var);
    }
    return *size && *pack && *unpack && *freeit ? 0 : -1;
}

/* Fills `s` for service `sd` of `file`; returns 0, or -1 with the error recorded. */
static int
s_service_names(gen_t *g, const file_t *file, const service_t *sd, service_names_t *s)
{
    memset(s, 0, sizeof *s);
    const char *pkg = file->package ? file->package : "";
    s->full = s_fmt("%s%s%s", pkg, *pkg ? "." : "", sd->name);
    if (!s->full) {
        s_fail(g, "protoc-gen-amtsbote: out of memory");
        return -1;
    }
    s->lc = s_cname(s->full, 'l');
    s->uc = s_cname(s->full, 'u');
    s->tc = s_cname(s->full, 'c');
    s->n = sd->n_method;
    s->m = calloc(s->n ? s->n : 1, sizeof *s->m);
    if (!s->lc || !s->uc || !s->tc || !s->m) {
        s_fail(g, "protoc-gen-amtsbote: out of memory");
        return -1;
    }
    for (size_t i = 0; i < sd->n_method; i++) {
        const method_t *md = sd->method[i];
        method_names_t *m = &s->m[i];
        m->name = md->name;
        m->in = md->input_type;
        m->out = md->output_type;
        if ((md->has_client_streaming && md->client_streaming) ||
            (md->has_server_streaming && md->server_streaming)) {
            s_fail(g, "%s: streaming methods are not supported by Amtsbote: %s/%s", file->name,
                   s->full, md->name);
            return -1;
        }
        char *mlc = s_cname(md->name, 'l');
        m->wire = s_fmt("%s/%s", s->full, md->name);
        m->member = mlc;
        m->lc = mlc ? s_fmt("%s__%s", s->lc, mlc) : NULL;
        m->uc = m->lc ? strdup(m->lc) : NULL;
        m->in_c = s_cname(m->in, 'c');
        m->in_l = s_cname(m->in, 'l');
        m->out_c = s_cname(m->out, 'c');
        m->out_l = s_cname(m->out, 'l');
        char *tmc = s_fmt("%s.%s", s->full, md->name);
        m->tc = tmc ? s_cname(tmc, 'c') : NULL;
        free(tmc);
        if (!mlc || !m->wire || !m->lc || !m->uc || !m->tc || !m->in_c || !m->in_l || !m->out_c ||
            !m->out_l) {
            s_fail(g, "protoc-gen-amtsbote: out of memory");
            return -1;
        }
        for (char *p = m->uc; *p; p++)
            *p = (char)toupper((unsigned char)*p);
        int in_top = s_top_level(g, m->in), out_top = s_top_level(g, m->out);
        if (s_exprs(in_top, m->in_c, m->in_l, "req", "len", &m->in_size, &m->in_pack, &m->in_unpack,
                    &m->in_free) != 0 ||
            s_exprs(out_top, m->out_c, m->out_l, "resp", "len", &m->out_size, &m->out_pack,
                    &m->out_unpack, &m->out_free) != 0 ||
            !(m->out_free_doc =
                  out_top ? s_fmt("%s__free_unpacked(resp, NULL)", m->out_l)
                          : s_fmt("protobuf_c_message_free_unpacked(&resp->base, NULL)"))) {
            s_fail(g, "protoc-gen-amtsbote: out of memory");
            return -1;
        }
        /* names the generated code would declare twice */
        if (strcmp(mlc, "offer") == 0 || strcmp(mlc, "release") == 0 || strcmp(mlc, "arg") == 0) {
            s_fail(g,
                   "%s: method %s/%s: its C name '%s' is taken by the generated %s; rename the "
                   "method",
                   file->name, s->full, md->name, mlc,
                   strcmp(mlc, "offer") == 0 ? "service-level offer function"
                                             : "member of the provider struct");
            return -1;
        }
    }
    return 0;
}

/* ---- the generated header ------------------------------------------------------------------- */

static void
s_guard(FILE *out, const char *base)
{
    fputs("AMTSBOTE_AB_", out);
    for (const char *p = base; *p; p++)
        fputc(isalnum((unsigned char)*p) ? toupper((unsigned char)*p) : '_', out);
    fputs("_INCLUDED", out);
}

static void
s_header_intro(FILE *out, const file_t *file, const char *base)
{
    fprintf(out,
            "/*\n"
            " * %s.ab.h - Amtsbote stubs for %s.\n"
            " * Generated by protoc-gen-amtsbote; do not edit.\n"
            " *\n",
            base, file->name);
    if (file->n_service == 0) {
        fputs(" * This file declares no services: there is nothing to call or offer here. The\n"
              " * header only includes protoc-c's code so that build systems can rely on it.\n"
              " */\n",
              out);
        return;
    }
    fputs(
        " * For every method `Pkg.Svc/Method` (functions pkg__svc__method__*, types\n"
        " * Pkg__Svc__Method_*, in protoc-c's naming, next to protoc-c's own stubs):\n"
        " *\n"
        " *   int pkg__svc__method__call(ab_client_t *client, const Req *req, Resp **resp,\n"
        " *                              int timeout_ms);\n"
        " *     Packs `req`, calls the method through the broker and waits up to `timeout_ms`\n"
        " *     (0: 30000; also the deadline the broker enforces). On success *resp is the\n"
        " *     caller's: free it with protoc-c's ..._free_unpacked(*resp, NULL). On failure\n"
        " *     *resp is NULL and the AB_E* code says why: AB_EPROVIDER when the provider\n"
        " *     answered with an error (its text in ab_client_last_error()), AB_EMALFORMED when\n"
        " *     the reply does not unpack as Resp.\n"
        " *\n"
        " *   int pkg__svc__method__call_async(ab_client_t *client, const Req *req, int "
        "timeout_ms,\n"
        " *                                    Pkg__Svc__Method_Callback *cb, void *arg);\n"
        " *     Starts the call and returns at once; `cb(client, status, resp, errtext, arg)` "
        "runs\n"
        " *     exactly once from the client's loop (ab_client_run/process/ab_call), unless this\n"
        " *     returns an error. `resp` (NULL unless status is 0) and `errtext` are borrowed for\n"
        " *     the duration of the callback.\n"
        " *\n"
        " *   Resp *handler(ab_client_t *client, const ab_request_t *call, const Req *req,\n"
        " *                 const char **errtext, void *arg);      (Pkg__Svc__Method_Handler)\n"
        " *     A provider's typed handler. `req` is the unpacked request and `call` gives the\n"
        " *     caller and purpose (ab_request_caller() ...); both are borrowed until it returns.\n"
        " *     It returns the reply, or NULL and sets *errtext to what went wrong (the caller\n"
        " *     sees AB_EPROVIDER with that text; no personal data in it). The stub packs the\n"
        " *     reply as soon as the handler returns, so the reply, what it points at and the\n"
        " *     error text must outlive the handler: static storage or memory in `arg` will do\n"
        " *     (a client is single-threaded), or allocate the reply and let the provider's\n"
        " *     `release` free it (e.g. with protobuf_c_message_free_unpacked(reply, NULL)),\n"
        " *     which the stub calls after packing. A request that does not unpack as Req is\n"
        " *     answered with an error without calling the handler.\n"
        " *\n"
        " *   int pkg__svc__method__offer(ab_client_t *client, const Pkg__Svc_Provider *p);\n"
        " *   int pkg__svc__offer(ab_client_t *client, const Pkg__Svc_Provider *p);\n"
        " *     Offer one method, or every method whose handler in `p` is set (each as\n"
        " *     \"pkg.Svc/Method\"; if one fails, those offered by this call are withdrawn).\n"
        " *     `p` is borrowed and must outlive the offers: the stubs keep the pointer.\n"
        " *     ab_withdraw(client, PKG__SVC__METHOD__AB_METHOD) withdraws one.\n"
        " *\n"
        " * Every function returns 0 or a negative AB_E* code (AB_EINVAL for a NULL argument),\n"
        " * like the rest of amtsbote.h.\n"
        " */\n",
        out);
}

static void
s_header_service(FILE *out, const service_names_t *s)
{
    fprintf(out, "/* ---- service %s ---- */\n\n", s->full);
    fprintf(out, "#define %s__AB_SERVICE \"%s\"\n", s->uc, s->full);
    fprintf(out, "typedef struct %s_Provider %s_Provider;\n\n", s->tc, s->tc);
    for (size_t i = 0; i < s->n; i++) {
        const method_names_t *m = &s->m[i];
        fprintf(out, "/* %s: %s -> %s */\n", m->wire, m->in + (m->in[0] == '.'),
                m->out + (m->out[0] == '.'));
        fprintf(out, "#define %s__AB_METHOD \"%s\"\n\n", m->uc, m->wire);
        fprintf(out,
                "/* Blocking call; on success *resp is the caller's: %s. */\n"
                "int %s__call(ab_client_t *client, const %s *req, %s **resp, int timeout_ms);\n\n",
                m->out_free_doc, m->lc, m->in_c, m->out_c);
        fprintf(out,
                "/* Result of %s__call_async(); resp and errtext are borrowed. */\n"
                "typedef void %s_Callback(ab_client_t *client, int status, const %s *resp,\n"
                "    const char *errtext, void *arg);\n"
                "/* Asynchronous call; `cb` runs exactly once unless this returns an error. */\n"
                "int %s__call_async(ab_client_t *client, const %s *req, int timeout_ms,\n"
                "    %s_Callback *cb, void *arg);\n\n",
                m->lc, m->tc, m->out_c, m->lc, m->in_c, m->tc);
        fprintf(out,
                "/* Provider's handler: the reply, or NULL with *errtext set (see the top). */\n"
                "typedef %s *%s_Handler(ab_client_t *client, const ab_request_t *call,\n"
                "    const %s *req, const char **errtext, void *arg);\n"
                "/* Offers %s with provider->%s; `provider` must outlive the offer. */\n"
                "int %s__offer(ab_client_t *client, const %s_Provider *provider);\n\n",
                m->out_c, m->tc, m->in_c, m->wire, m->member, m->lc, s->tc);
    }
    fprintf(out,
            "/*\n"
            " * A provider of %s: one handler per method (NULL: not offered by\n"
            " * %s__offer()), `release` (may be NULL) to free a reply after it was packed, and\n"
            " * `arg` for all of them.\n"
            " */\n"
            "struct %s_Provider {\n",
            s->full, s->lc, s->tc);
    for (size_t i = 0; i < s->n; i++)
        fprintf(out, "    %s_Handler *%s;\n", s->m[i].tc, s->m[i].member);
    fprintf(out, "    void (*release)(ProtobufCMessage *reply, void *arg);\n"
                 "    void *arg;\n"
                 "};\n\n");
    fprintf(out,
            "/* Offers every method of %s that has a handler in `provider`. */\n"
            "int %s__offer(ab_client_t *client, const %s_Provider *provider);\n\n",
            s->full, s->lc, s->tc);
}

/* ---- the generated source ------------------------------------------------------------------- */

static void
s_source_service(FILE *out, const service_names_t *s)
{
    fprintf(out, "/* ---- service %s ---- */\n\n", s->full);
    for (size_t i = 0; i < s->n; i++) {
        const method_names_t *m = &s->m[i];
        const char *in_full = m->in + (m->in[0] == '.');
        const char *out_full = m->out + (m->out[0] == '.');
        /* blocking call */
        fprintf(out,
                "int\n"
                "%s__call(ab_client_t *client, const %s *req, %s **resp_p, int timeout_ms)\n"
                "{\n"
                "    if (!resp_p)\n"
                "        return AB_EINVAL;\n"
                "    *resp_p = NULL;\n"
                "    if (!client || !req)\n"
                "        return AB_EINVAL;\n"
                "    size_t len = %s;\n"
                "    uint8_t *buf = malloc(len ? len : 1);\n"
                "    if (!buf)\n"
                "        return AB_ENOMEM;\n"
                "    %s;\n"
                "    void *data = NULL;\n"
                "    int rc = ab_call(client, %s__AB_METHOD, buf, len, timeout_ms, &data, &len);\n"
                "    free(buf);\n"
                "    if (rc != 0)\n"
                "        return rc;\n"
                "    *resp_p = %s;\n"
                "    ab_free(data);\n"
                "    return *resp_p ? 0 : AB_EMALFORMED;\n"
                "}\n\n",
                m->lc, m->in_c, m->out_c, m->in_size, m->in_pack, m->uc, m->out_unpack);
        /* asynchronous call */
        fprintf(out,
                "typedef struct {\n"
                "    %s_Callback *cb;\n"
                "    void *arg;\n"
                "} s_%s__async_t;\n\n"
                "static void\n"
                "s_%s__done(ab_client_t *client, int status, const void *data, size_t len,\n"
                "    const char *errtext, void *arg)\n"
                "{\n"
                "    s_%s__async_t ctx = *(s_%s__async_t *)arg;\n"
                "    free(arg);\n"
                "    %s *resp = NULL;\n"
                "    if (status == 0) {\n"
                "        resp = %s;\n"
                "        if (!resp) {\n"
                "            status = AB_EMALFORMED;\n"
                "            errtext = \"the reply to %s is not a valid %s\";\n"
                "        }\n"
                "    }\n"
                "    ctx.cb(client, status, resp, errtext, ctx.arg);\n"
                "    if (resp)\n"
                "        %s;\n"
                "}\n\n",
                m->tc, m->lc, m->lc, m->lc, m->lc, m->out_c, m->out_unpack, m->wire, out_full,
                m->out_free);
        fprintf(out,
                "int\n"
                "%s__call_async(ab_client_t *client, const %s *req, int timeout_ms,\n"
                "    %s_Callback *cb, void *arg)\n"
                "{\n"
                "    if (!client || !req || !cb)\n"
                "        return AB_EINVAL;\n"
                "    s_%s__async_t *ctx = malloc(sizeof *ctx);\n"
                "    size_t len = %s;\n"
                "    uint8_t *buf = malloc(len ? len : 1);\n"
                "    if (!ctx || !buf) {\n"
                "        free(ctx);\n"
                "        free(buf);\n"
                "        return AB_ENOMEM;\n"
                "    }\n"
                "    %s;\n"
                "    ctx->cb = cb;\n"
                "    ctx->arg = arg;\n"
                "    int rc = ab_call_async(client, %s__AB_METHOD, buf, len, timeout_ms,\n"
                "        s_%s__done, ctx);\n"
                "    free(buf);\n"
                "    if (rc != 0)\n"
                "        free(ctx); /* the callback never runs then */\n"
                "    return rc;\n"
                "}\n\n",
                m->lc, m->in_c, m->tc, m->lc, m->in_size, m->in_pack, m->uc, m->lc);
        /* provider */
        fprintf(out,
                "static void\n"
                "s_%s__serve(ab_client_t *client, ab_request_t *call, void *arg)\n"
                "{\n"
                "    const %s_Provider *provider = arg;\n"
                "    size_t len = 0;\n"
                "    const void *data = ab_request_payload(call, &len);\n"
                "    %s *req = %s;\n"
                "    if (!req) {\n"
                "        ab_reply_error(&call, \"the request to %s is not a valid %s\");\n"
                "        return;\n"
                "    }\n"
                "    const char *errtext = NULL;\n"
                "    %s *resp = provider->%s(client, call, req, &errtext, provider->arg);\n"
                "    if (!resp) {\n"
                "        ab_reply_error(&call, errtext && *errtext ? errtext\n"
                "            : \"the provider of %s gave no reply\");\n"
                "    } else {\n"
                "        len = %s;\n"
                "        uint8_t *buf = malloc(len ? len : 1);\n"
                "        if (buf) {\n"
                "            %s;\n"
                "            ab_reply(&call, buf, len);\n"
                "            free(buf);\n"
                "        } else {\n"
                "            ab_reply_error(&call, \"the provider of %s ran out of memory\");\n"
                "        }\n"
                "        if (provider->release)\n"
                "            provider->release(&resp->base, provider->arg);\n"
                "    }\n"
                "    %s;\n"
                "}\n\n",
                m->lc, s->tc, m->in_c, m->in_unpack, m->wire, in_full, m->out_c, m->member, m->wire,
                m->out_size, m->out_pack, m->wire, m->in_free);
        fprintf(out,
                "int\n"
                "%s__offer(ab_client_t *client, const %s_Provider *provider)\n"
                "{\n"
                "    if (!client || !provider || !provider->%s)\n"
                "        return AB_EINVAL;\n"
                "    return ab_offer(client, %s__AB_METHOD, s_%s__serve, (void *)provider);\n"
                "}\n\n",
                m->lc, s->tc, m->member, m->uc, m->lc);
    }
    /* every method that has a handler */
    fprintf(out,
            "int\n"
            "%s__offer(ab_client_t *client, const %s_Provider *provider)\n"
            "{\n"
            "    if (!client || !provider)\n"
            "        return AB_EINVAL;\n"
            "    struct {\n"
            "        const char *method;\n"
            "        int set;\n"
            "        int (*offer)(ab_client_t *, const %s_Provider *);\n"
            "    } const all[] = {\n",
            s->lc, s->tc, s->tc);
    for (size_t i = 0; i < s->n; i++)
        fprintf(out, "        {%s__AB_METHOD, provider->%s != NULL, %s__offer},\n", s->m[i].uc,
                s->m[i].member, s->m[i].lc);
    fprintf(out, "    };\n"
                 "    int offered = 0;\n"
                 "    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {\n"
                 "        if (!all[i].set)\n"
                 "            continue;\n"
                 "        int rc = all[i].offer(client, provider);\n"
                 "        if (rc != 0) {\n"
                 "            for (size_t j = 0; j < i; j++)\n"
                 "                if (all[j].set)\n"
                 "                    ab_withdraw(client, all[j].method);\n"
                 "            return rc;\n"
                 "        }\n"
                 "        offered++;\n"
                 "    }\n"
                 "    return offered ? 0 : AB_EINVAL;\n"
                 "}\n\n");
}

/* ---- one file ------------------------------------------------------------------------------- */

static Google__Protobuf__Compiler__CodeGeneratorResponse__File *
s_out_file(const char *name, char *content)
{
    Google__Protobuf__Compiler__CodeGeneratorResponse__File *f = malloc(sizeof *f);
    if (!f) {
        free(content);
        return NULL;
    }
    google__protobuf__compiler__code_generator_response__file__init(f);
    f->name = strdup(name);
    f->content = content;
    if (!f->name) {
        free(content);
        free(f);
        return NULL;
    }
    return f;
}

/*
 * Generates the two files for `file` into `resp` (nothing when it has no services and `always`
 * is off). Returns 0, or -1 with the error recorded.
 */
static int
s_generate_file(gen_t *g, const file_t *file,
                Google__Protobuf__Compiler__CodeGeneratorResponse *resp)
{
    if (file->n_service == 0 && !g->always)
        return 0;
    if (file->n_service > 0 && (!file->package || !*file->package)) {
        s_fail(g,
               "%s: service %s is in a file without a package; Amtsbote names methods "
               "package.Service/Method, so add a package statement",
               file->name, file->service[0]->name);
        return -1;
    }
    service_names_t *svc = calloc(file->n_service ? file->n_service : 1, sizeof *svc);
    char *base = s_strip_proto(file->name);
    char *hbuf = NULL, *cbuf = NULL;
    size_t hlen = 0, clen = 0;
    FILE *h = NULL, *c = NULL;
    int rc = -1;
    size_t nsvc = 0;
    if (!svc || !base) {
        s_fail(g, "protoc-gen-amtsbote: out of memory");
        goto done;
    }
    for (; nsvc < file->n_service; nsvc++)
        if (s_service_names(g, file, file->service[nsvc], &svc[nsvc]) != 0) {
            nsvc++;
            goto done;
        }
    h = open_memstream(&hbuf, &hlen);
    c = open_memstream(&cbuf, &clen);
    if (!h || !c) {
        s_fail(g, "protoc-gen-amtsbote: out of memory");
        goto done;
    }
    s_header_intro(h, file, base);
    fputs("#ifndef ", h);
    s_guard(h, base);
    fputs("\n#define ", h);
    s_guard(h, base);
    fprintf(h,
            "\n\n#include <amtsbote.h>\n"
            "#include <protobuf-c/protobuf-c.h>\n\n"
            "#include \"%s.pb-c.h\"\n\n"
            "#ifdef __cplusplus\n"
            "extern \"C\" {\n"
            "#endif\n\n",
            base);
    for (size_t i = 0; i < nsvc; i++)
        s_header_service(h, &svc[i]);
    fputs("#ifdef __cplusplus\n}\n#endif\n#endif\n", h);

    fprintf(
        c,
        "/* %s.ab.c - Amtsbote stubs for %s, generated by protoc-gen-amtsbote. Do not edit. */\n"
        "#include <stdint.h>\n"
        "#include <stdlib.h>\n\n"
        "#include \"%s.ab.h\"\n\n",
        base, file->name, base);
    for (size_t i = 0; i < nsvc; i++)
        s_source_service(c, &svc[i]);
    int herr = fclose(h), cerr = fclose(c);
    h = c = NULL;
    if (herr != 0 || cerr != 0) {
        s_fail(g, "protoc-gen-amtsbote: out of memory");
        goto done;
    }
    char name[4096];
    snprintf(name, sizeof name, "%s.ab.h", base);
    resp->file[resp->n_file] = s_out_file(name, hbuf);
    hbuf = NULL;
    if (resp->file[resp->n_file])
        resp->n_file++;
    snprintf(name, sizeof name, "%s.ab.c", base);
    resp->file[resp->n_file] = s_out_file(name, cbuf);
    cbuf = NULL;
    if (resp->file[resp->n_file])
        resp->n_file++;
    rc = 0;
done:
    if (h)
        fclose(h);
    if (c)
        fclose(c);
    free(hbuf);
    free(cbuf);
    for (size_t i = 0; svc && i < nsvc; i++)
        s_service_names_free(&svc[i]);
    free(svc);
    free(base);
    return rc;
}

/* ---- main ----------------------------------------------------------------------------------- */

/* Reads all of stdin; returns the buffer (the caller frees) or NULL. */
static uint8_t *
s_read_all(FILE *in, size_t *len)
{
    size_t cap = 65536, n = 0;
    uint8_t *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, in);
        if (n < cap)
            break;
        uint8_t *bigger = realloc(buf, cap * 2);
        if (!bigger) {
            free(buf);
            return NULL;
        }
        buf = bigger;
        cap *= 2;
    }
    if (buf && ferror(in)) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static void
s_parse_parameter(gen_t *g, const char *param)
{
    if (!param)
        return;
    char *copy = strdup(param);
    if (!copy) {
        s_fail(g, "protoc-gen-amtsbote: out of memory");
        return;
    }
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (strcmp(tok, "always") == 0)
            g->always = 1;
        else
            s_fail(g, "protoc-gen-amtsbote: unknown parameter '%s' (known: always)", tok);
    }
    free(copy);
}

int
main(int argc, char **argv)
{
    if (argc > 1) {
        fprintf(
            stderr,
            "%s: a protoc plugin; run it through protoc:\n"
            "  protoc --plugin=protoc-gen-amtsbote=%s --amtsbote_out=DIR [--amtsbote_opt=always]"
            " FILE.proto\n",
            argv[0], argv[0]);
        return strcmp(argv[1], "--help") == 0 ? 0 : 2;
    }
    size_t len = 0;
    uint8_t *in = s_read_all(stdin, &len);
    if (!in) {
        fprintf(stderr, "protoc-gen-amtsbote: cannot read the request from stdin\n");
        return 1;
    }
    Google__Protobuf__Compiler__CodeGeneratorRequest *req =
        google__protobuf__compiler__code_generator_request__unpack(NULL, len, in);
    free(in);
    if (!req) {
        fprintf(stderr, "protoc-gen-amtsbote: stdin is not a CodeGeneratorRequest (run it "
                        "through protoc)\n");
        return 1;
    }
    gen_t g = {.req = req};
    Google__Protobuf__Compiler__CodeGeneratorResponse resp =
        GOOGLE__PROTOBUF__COMPILER__CODE_GENERATOR_RESPONSE__INIT;
    resp.has_supported_features = 1;
    resp.supported_features =
        GOOGLE__PROTOBUF__COMPILER__CODE_GENERATOR_RESPONSE__FEATURE__FEATURE_PROTO3_OPTIONAL;
    resp.file = calloc(2 * req->n_file_to_generate + 1, sizeof *resp.file);
    if (!resp.file)
        s_fail(&g, "protoc-gen-amtsbote: out of memory");
    s_parse_parameter(&g, req->parameter);
    for (size_t i = 0; !g.error && i < req->n_file_to_generate; i++) {
        const file_t *file = NULL;
        for (size_t j = 0; j < req->n_proto_file; j++)
            if (req->proto_file[j]->name &&
                strcmp(req->proto_file[j]->name, req->file_to_generate[i]) == 0)
                file = req->proto_file[j];
        if (!file) {
            s_fail(&g, "protoc-gen-amtsbote: %s is not among the request's files",
                   req->file_to_generate[i]);
            break;
        }
        s_generate_file(&g, file, &resp);
    }
    if (g.error) {
        /* protoc shows the error; the files are dropped */
        for (size_t i = 0; i < resp.n_file; i++)
            protobuf_c_message_free_unpacked(&resp.file[i]->base, NULL);
        resp.n_file = 0;
        resp.error = g.error;
    }
    size_t out_len = google__protobuf__compiler__code_generator_response__get_packed_size(&resp);
    uint8_t *out = malloc(out_len ? out_len : 1);
    int rc = 0;
    if (!out) {
        fprintf(stderr, "protoc-gen-amtsbote: out of memory\n");
        rc = 1;
    } else {
        google__protobuf__compiler__code_generator_response__pack(&resp, out);
        if (fwrite(out, 1, out_len, stdout) != out_len || fflush(stdout) != 0) {
            fprintf(stderr, "protoc-gen-amtsbote: cannot write the response to stdout\n");
            rc = 1;
        }
    }
    free(out);
    for (size_t i = 0; i < resp.n_file; i++)
        protobuf_c_message_free_unpacked(&resp.file[i]->base, NULL);
    free(resp.file);
    free(g.error);
    google__protobuf__compiler__code_generator_request__free_unpacked(req, NULL);
    return rc;
}
