/*
 * bench_schema.c - what schema validation costs per payload, without the network.
 *
 *   bench_schema --set SET.pb [--iterations N] [--repeat R] [--only validate|unpack]
 *                TYPE=FILE [TYPE=FILE]...
 *
 * Loads the FileDescriptorSet SET.pb with ab_schema_set_load() (as the broker's registry does),
 * then for each message type TYPE (fully qualified, `meldewesen.v1.Meldebescheinigung`) and
 * payload FILE times, in R rounds of N iterations each:
 *   - ab_schema_validate(): the broker's check of every call and reply, a wire walk without
 *     allocation;
 *   - protobuf_c_message_unpack() + protobuf_c_message_free_unpacked() of the same bytes with the
 *     same runtime descriptor: what decoding the message would cost instead, for comparison.
 * and prints one line per payload on stdout that bench/run_schema.sh parses:
 *   micro type=... size=1024 iterations=... repeat=... validate_ns=... validate_min_ns=...
 *         unpack_free_ns=... unpack_free_min_ns=...
 * The *_ns fields are nanoseconds per payload: the median and the fastest of the R rounds.
 * A payload that does not validate or decode is an error (exit status 1), so a run measures only
 * the success path. Every loop is bounded by N * R; --only limits the run to one of the two (for
 * a profiler). Diagnostics go to stderr.
 */
#include <errno.h>
#include <getopt.h>
#include <protobuf-c/protobuf-c.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "schema.h"

#define MAX_PAYLOADS 16
#define MAX_FILE (16u * 1024 * 1024)
#define MAX_ITERATIONS 100000000L
#define MAX_REPEAT 1000L

typedef struct {
    char type[256];
    const char *path;
    uint8_t *data;
    size_t len;
} payload_t;

static uint64_t
s_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Reads a whole file into *out (the caller frees it). Returns 0, or -1 after saying why. */
static int
s_read_file(const char *path, uint8_t **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "bench_schema: %s: %s\n", path, strerror(errno));
        return -1;
    }
    uint8_t *buf = malloc(MAX_FILE + 1);
    size_t n = buf ? fread(buf, 1, MAX_FILE + 1, f) : 0;
    int bad = !buf || ferror(f) || n > MAX_FILE;
    fclose(f);
    if (bad) {
        fprintf(stderr, "bench_schema: %s: %s\n", path,
                !buf           ? "out of memory"
                : n > MAX_FILE ? "larger than 16 MiB"
                               : "read error");
        free(buf);
        return -1;
    }
    *out = buf;
    *len = n;
    return 0;
}

/* Nanoseconds per ab_schema_validate() of `p`, one value per round into `ns`. */
static int
s_time_validate(const ProtobufCMessageDescriptor *d, const payload_t *p, long iterations,
                long repeat, double *ns)
{
    for (long r = 0; r < repeat; r++) {
        int bad = 0;
        uint64_t t0 = s_now_ns();
        for (long i = 0; i < iterations; i++)
            bad |= ab_schema_validate(d, p->data, p->len, NULL);
        ns[r] = (double)(s_now_ns() - t0) / (double)iterations;
        if (bad)
            return -1;
    }
    return 0;
}

/* Nanoseconds per protobuf_c_message_unpack() + free_unpacked() of `p`, one value per round. */
static int
s_time_unpack(const ProtobufCMessageDescriptor *d, const payload_t *p, long iterations, long repeat,
              double *ns)
{
    for (long r = 0; r < repeat; r++) {
        int bad = 0;
        uint64_t t0 = s_now_ns();
        for (long i = 0; i < iterations; i++) {
            ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, p->len, p->data);
            bad |= m == NULL;
            protobuf_c_message_free_unpacked(m, NULL);
        }
        ns[r] = (double)(s_now_ns() - t0) / (double)iterations;
        if (bad)
            return -1;
    }
    return 0;
}

static void
s_usage(FILE *f)
{
    fprintf(f, "usage: bench_schema --set SET.pb [--iterations N] [--repeat R]\n"
               "                    [--only validate|unpack] TYPE=FILE [TYPE=FILE]...\n"
               "  --set SET.pb    FileDescriptorSet (protoc --include_imports "
               "--descriptor_set_out)\n"
               "  --iterations N  calls per round (default 200000)\n"
               "  --repeat R      rounds; the median and the fastest are reported (default 7)\n"
               "  --only WHAT     time only ab_schema_validate (validate) or unpack+free (unpack)\n"
               "  TYPE=FILE       fully-qualified message type and a payload file of that type\n");
}

static int
s_parse_long(const char *arg, const char *name, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (errno || *end || end == arg || v < lo || v > hi) {
        fprintf(stderr, "bench_schema: %s must be an integer in [%ld, %ld], not '%s'\n", name, lo,
                hi, arg);
        return -1;
    }
    *out = v;
    return 0;
}

int
main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"set", required_argument, NULL, 's'},    {"iterations", required_argument, NULL, 'n'},
        {"repeat", required_argument, NULL, 'r'}, {"only", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    const char *set_path = NULL;
    long iterations = 200000, repeat = 7;
    int do_validate = 1, do_unpack = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 's':
            set_path = optarg;
            break;
        case 'n':
            if (s_parse_long(optarg, "--iterations", 1, MAX_ITERATIONS, &iterations))
                return 2;
            break;
        case 'r':
            if (s_parse_long(optarg, "--repeat", 1, MAX_REPEAT, &repeat))
                return 2;
            break;
        case 'o':
            do_validate = strcmp(optarg, "validate") == 0;
            do_unpack = strcmp(optarg, "unpack") == 0;
            if (!do_validate && !do_unpack) {
                fprintf(stderr, "bench_schema: --only is validate or unpack, not '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h':
            s_usage(stdout);
            return 0;
        default:
            s_usage(stderr);
            return 2;
        }
    }
    int npayloads = argc - optind;
    if (!set_path || npayloads < 1 || npayloads > MAX_PAYLOADS) {
        s_usage(stderr);
        return 2;
    }

    static payload_t payloads[MAX_PAYLOADS];
    for (int k = 0; k < npayloads; k++) {
        const char *arg = argv[optind + k];
        const char *eq = strchr(arg, '=');
        if (!eq || eq == arg || (size_t)(eq - arg) >= sizeof payloads[k].type || !eq[1]) {
            fprintf(stderr, "bench_schema: '%s' is not TYPE=FILE\n", arg);
            return 2;
        }
        memcpy(payloads[k].type, arg, (size_t)(eq - arg));
        payloads[k].path = eq + 1;
        if (s_read_file(payloads[k].path, &payloads[k].data, &payloads[k].len) != 0)
            return 1;
    }

    uint8_t *set_bytes;
    size_t set_len;
    if (s_read_file(set_path, &set_bytes, &set_len) != 0)
        return 1;
    ab_schema_set_t *set = NULL;
    ab_schema_error_t err;
    if (ab_schema_set_load(set_bytes, set_len, &set, &err) != 0) {
        fprintf(stderr, "bench_schema: %s does not load: %s: %s\n", set_path, err.path, err.text);
        return 1;
    }

    double *ns = malloc((size_t)repeat * sizeof *ns);
    int status = ns ? 0 : 1;
    for (int k = 0; k < npayloads && status == 0; k++) {
        payload_t *p = &payloads[k];
        const ProtobufCMessageDescriptor *d = ab_schema_message(set, p->type);
        if (!d) {
            fprintf(stderr, "bench_schema: %s defines no message %s\n", set_path, p->type);
            status = 1;
            break;
        }
        /* Once with the reason, so a payload that does not fit is named before anything is
         * timed. */
        if (ab_schema_validate(d, p->data, p->len, &err) != 0) {
            fprintf(stderr, "bench_schema: %s is not a valid %s: %s: %s\n", p->path, p->type,
                    err.path, err.text);
            status = 1;
            break;
        }
        double v_med = -1, v_min = -1, u_med = -1, u_min = -1;
        if (do_validate) {
            if (s_time_validate(d, p, iterations, repeat, ns) != 0) {
                fprintf(stderr, "bench_schema: %s stopped validating\n", p->path);
                status = 1;
                break;
            }
            v_med = bu_median(ns, repeat);
            v_min = ns[0];
        }
        if (do_unpack) {
            if (s_time_unpack(d, p, iterations, repeat, ns) != 0) {
                fprintf(stderr, "bench_schema: %s does not decode as %s\n", p->path, p->type);
                status = 1;
                break;
            }
            u_med = bu_median(ns, repeat);
            u_min = ns[0];
        }
        printf("micro type=%s size=%zu iterations=%ld repeat=%ld validate_ns=%.1f "
               "validate_min_ns=%.1f unpack_free_ns=%.1f unpack_free_min_ns=%.1f\n",
               p->type, p->len, iterations, repeat, v_med, v_min, u_med, u_min);
    }
    free(ns);
    ab_schema_set_destroy(&set);
    free(set_bytes);
    for (int k = 0; k < npayloads; k++)
        free(payloads[k].data);
    return status;
}
