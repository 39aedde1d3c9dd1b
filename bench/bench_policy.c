/*
 * bench_policy.c - what one access-policy decision costs, with 10, 1,000 and 10,000 rules.
 *
 *   bench_policy [--iterations N] [--repeat R] [RULES]...
 *
 * For each rule count (default 10 1000 10000) builds a policy in memory with
 * ab_policy_load_buffer(): 100 groups (one per Land prefix of the municipality key), and rules
 * in four kinds, a quarter each: calls to a service by a group with a purpose (`fachK.v1.Dienst/
 * *`), calls to one method by one participant (exact resource), publishes to a topic pattern by a
 * group, sends from a participant pattern to a Land. Then it times ab_policy_decide() over a
 * fixed mix of 1,024 requests drawn from the rules (3/4 allowed, 1/4 denied: wrong purpose,
 * wrong participant, no rule) from 200 participants (cached after their first request, as in
 * the broker), in R rounds of N decisions, and prints one line per rule count:
 *   policy rules=N decisions=... ns_per_decision=MEDIAN min_ns=FASTEST load_ms=...
 * Diagnostics go to stderr; a policy that does not load is exit status 1.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "policy.h"

#define NREQ 1024

typedef struct {
    char who[48];
    ab_policy_action_t action;
    char resource[64];
    const char *purpose;
} req_t;

static uint64_t
s_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static void
s_cat(buf_t *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (b->len + (size_t)n + 1 > b->cap) {
        b->cap = (b->cap + (size_t)n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p) {
            perror("bench_policy");
            exit(1);
        }
    }
    memcpy(b->p + b->len, tmp, (size_t)n + 1);
    b->len += (size_t)n;
}

static int
s_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t s_rng = 88172645463325252ull;
static unsigned
s_rand(void)
{
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 7;
    s_rng ^= s_rng << 17;
    return (unsigned)(s_rng >> 11);
}

static int
s_run(long nrules, long iterations, long repeat)
{
    buf_t b = {0};
    s_cat(&b, "groups:\n");
    for (int g = 0; g < 100; g++)
        s_cat(&b, "  land%02d: [\"kommune.%02d*\", \"land.l%02d.*\"]\n", g, g, g);
    s_cat(&b, "clearances:\n  \"@land09\": VS-NUR-FUER-DEN-DIENSTGEBRAUCH\nrules:\n");
    for (long i = 0; i < nrules; i++) {
        switch (i % 4) {
        case 0:
            s_cat(&b,
                  "  - {name: c%ld, who: \"@land%02ld\", action: call, resource: "
                  "\"fach%ld.v1.Dienst/*\", purposes: [\"Zweck %ld\"]}\n",
                  i, i % 100, i, i % 7);
            break;
        case 1:
            s_cat(&b,
                  "  - {name: e%ld, who: kommune.%08ld.amt, action: call, resource: "
                  "fach%ld.v1.Dienst/Exakt}\n",
                  i, i % 200, i);
            break;
        case 2:
            s_cat(&b,
                  "  - {name: p%ld, who: \"@land%02ld\", action: publish, resource: "
                  "\"ereignis.%ld.*\"}\n",
                  i, i % 100, i);
            break;
        default:
            s_cat(&b,
                  "  - {name: s%ld, who: \"kommune.%02ld*\", action: send, resource: "
                  "\"land.l%02ld.x%ld.*\"}\n",
                  i, (i / 4) % 100, (i / 4 + 1) % 100, i / 400);
            break;
        }
    }
    ab_policy_t *pol = NULL;
    ab_policy_error_t err;
    uint64_t t0 = s_now_ns();
    if (ab_policy_load_buffer(b.p, b.len, "bench.yaml", &pol, &err) != 0) {
        fprintf(stderr, "bench_policy: %s\n", err.message);
        free(b.p);
        return 1;
    }
    double load_ms = (double)(s_now_ns() - t0) / 1e6;
    free(b.p);

    static req_t reqs[NREQ];
    static const char *purposes[7] = {"Zweck 0", "Zweck 1", "Zweck 2", "Zweck 3",
                                      "Zweck 4", "Zweck 5", "Zweck 6"};
    for (int k = 0; k < NREQ; k++) {
        req_t *q = &reqs[k];
        long i = (long)(s_rand() % (unsigned long)nrules);
        unsigned deny = s_rand() % 4 == 0;
        q->purpose = NULL;
        switch (i % 4) {
        case 0:
            q->action = AB_POLICY_CALL;
            snprintf(q->who, sizeof q->who, "kommune.%02ld%06u.amt", deny ? (i + 1) % 100 : i % 100,
                     s_rand() % 2);
            snprintf(q->resource, sizeof q->resource, "fach%ld.v1.Dienst/Abfrage", i);
            q->purpose = purposes[i % 7];
            break;
        case 1:
            q->action = AB_POLICY_CALL;
            snprintf(q->who, sizeof q->who, "kommune.%08ld.amt", i % 200);
            snprintf(q->resource, sizeof q->resource, "fach%ld.v1.Dienst/%s", i,
                     deny ? "Andere" : "Exakt");
            break;
        case 2:
            q->action = AB_POLICY_PUBLISH;
            snprintf(q->who, sizeof q->who, "land.l%02ld.im", i % 100);
            snprintf(q->resource, sizeof q->resource, "ereignis.%ld.%s", i, deny ? "a.b" : "neu");
            break;
        default:
            q->action = AB_POLICY_SEND;
            snprintf(q->who, sizeof q->who, "kommune.%02ld%06u.amt", (i / 4) % 100, s_rand() % 2);
            snprintf(q->resource, sizeof q->resource, "land.l%02ld.x%ld.stmi",
                     deny ? (i / 4 + 2) % 100 : (i / 4 + 1) % 100, i / 400);
            break;
        }
    }
    ab_policy_decision_t d;
    long allowed = 0;
    for (int k = 0; k < NREQ; k++) /* warm the participant cache */
        allowed += ab_policy_decide(pol, reqs[k].who, reqs[k].action, reqs[k].resource,
                                    reqs[k].purpose, 0, &d);
    uint64_t *rounds = calloc((size_t)repeat, sizeof *rounds);
    if (!rounds) {
        ab_policy_destroy(&pol);
        return 1;
    }
    volatile long sink = 0;
    for (long r = 0; r < repeat; r++) {
        uint64_t s = s_now_ns();
        long ok = 0;
        for (long n = 0; n < iterations; n++) {
            const req_t *q = &reqs[n & (NREQ - 1)];
            ok += ab_policy_decide(pol, q->who, q->action, q->resource, q->purpose, 0, &d);
        }
        rounds[r] = s_now_ns() - s;
        sink += ok;
    }
    qsort(rounds, (size_t)repeat, sizeof *rounds, s_cmp);
    printf("policy rules=%ld decisions=%ld allowed_share=%.2f ns_per_decision=%.1f min_ns=%.1f "
           "load_ms=%.1f\n",
           nrules, iterations * repeat, (double)allowed / NREQ,
           (double)rounds[repeat / 2] / (double)iterations, (double)rounds[0] / (double)iterations,
           load_ms);
    (void)sink;
    free(rounds);
    ab_policy_destroy(&pol);
    return 0;
}

int
main(int argc, char **argv)
{
    long iterations = 1000000, repeat = 7;
    long counts[16];
    int ncounts = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc)
            iterations = atol(argv[++i]);
        else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc)
            repeat = atol(argv[++i]);
        else if (argv[i][0] != '-' && ncounts < 16 && atol(argv[i]) > 0)
            counts[ncounts++] = atol(argv[i]);
        else {
            fprintf(stderr, "usage: bench_policy [--iterations N] [--repeat R] [RULES]...\n");
            return 2;
        }
    }
    if (iterations < 1 || iterations > 100000000L || repeat < 1 || repeat > 1000) {
        fprintf(stderr, "bench_policy: --iterations 1..1e8, --repeat 1..1000\n");
        return 2;
    }
    if (!ncounts) {
        counts[ncounts++] = 10;
        counts[ncounts++] = 1000;
        counts[ncounts++] = 10000;
    }
    for (int c = 0; c < ncounts; c++)
        if (s_run(counts[c], iterations, repeat) != 0)
            return 1;
    return 0;
}
