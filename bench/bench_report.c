/*
 * bench_report.c - turns a results file of bench/run.sh into a Markdown report and PNG charts.
 *
 *   bench_report RESULTS.json [--md FILE] [--charts DIR] [--no-charts] [--gnuplot PATH]
 *
 * RESULTS.json (written by bench/run.sh, format 1):
 *   {"format":1, "date":"...", "commit":"...", "quick":false, "repetitions":3,
 *    "machine":{"cores":2, "cpu":"...", "kernel":"...", "memory_gib":24},
 *    "versions":{"amtsbote":"...", "nats-server":"...", ...}, "load":{"before":"..","after":".."},
 *    "notes":["...", ...],
 *    "runs":[{"rep":1, "system":"nats", "scenario":"call-throughput", "size":100, "inflight":100,
 *             "ok":true, "error":"", "metrics":{"rate":123.0, "p50_us":..., ...}}, ...]}
 *
 * For every scenario, case (payload size, messages in flight) and system it takes the median,
 * min and max of each metric over the runs that succeeded (failed runs are listed, never
 * counted), writes one table per scenario with Amtsbote's ratio to each other system, checks the
 * goals of the peer comparison (each a ratio, or a bound for memory per connection) and says by
 * how much a missed one is short. With gnuplot it draws one bar chart per scenario (median with
 * min-max whiskers, one bar per system) and one chart of every goal's attainment; without it, or
 * with --no-charts, the report says that there are no charts.
 *
 * Default outputs: the results file's name with .md, and charts as NAME-SCENARIO.png next to it.
 * Exit status: 0 report written, 1 the results file cannot be read or is not format 1 (the
 * message names the file, and the line and column for JSON errors), 2 usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_CASES 64
#define MAX_RUNS 64

static const char *const SYSTEMS[] = {"amtsbote", "floor", "nats", "mosquitto", "rabbitmq"};
static const char *const SYSTEM_LABELS[] = {"Amtsbote", "raw zmq + stunnel", "NATS", "Mosquitto",
                                            "RabbitMQ"};
#define NSYS (sizeof SYSTEMS / sizeof SYSTEMS[0])

typedef enum { HIGHER, LOWER } better_t;

typedef struct {
    const char *key; /* in a run's "metrics" */
    const char *label;
    better_t better;
} metric_t;

typedef struct {
    const char *name;
    const char *title;
    const char *what; /* which feature of each system runs it */
    metric_t metrics[6];
    int log_scale; /* chart the first metric on a log scale */
} scenario_t;

static const scenario_t SCENARIOS[] = {
    {"call-latency",
     "Calls, 1 in flight: latency",
     "Amtsbote services; NATS request/reply (SendAsap); raw zmq ROUTER forwarder through stunnel",
     {{"p50_us", "p50 µs", LOWER},
      {"p99_us", "p99 µs", LOWER},
      {"p999_us", "p99.9 µs", LOWER},
      {"cpu_server_us", "server CPU µs/call", LOWER}},
     0},
    {"call-throughput",
     "Calls in flight: throughput",
     "Amtsbote services; NATS request/reply; raw zmq ROUTER forwarder through stunnel",
     {{"rate", "calls/s", HIGHER},
      {"p50_us", "p50 µs", LOWER},
      {"cpu_server_us", "server CPU µs/call", LOWER}},
     1},
    {"stream",
     "One-way stream",
     "Amtsbote events; NATS pub/sub; Mosquitto QoS 0; raw zmq PUSH/PULL through stunnel",
     {{"rate", "received/s", HIGHER},
      {"lost", "lost", LOWER},
      {"cpu_server_us", "server CPU µs/msg", LOWER}},
     1},
    {"durable",
     "Durable, acknowledged after the server's write",
     "Amtsbote mailboxes; RabbitMQ durable queue with publisher confirms; Mosquitto QoS 1",
     {{"rate", "received/s", HIGHER}, {"cpu_server_us", "server CPU µs/msg", LOWER}},
     1},
    {"fanout",
     "Fan-out 1 -> 10 subscribers",
     "Amtsbote events; NATS; Mosquitto QoS 0",
     {{"rate", "deliveries/s", HIGHER},
      {"published_per_s", "published/s", HIGHER},
      {"cpu_server_us", "server CPU µs/delivery", LOWER}},
     1},
    {"idle",
     "Idle mTLS connections, then a call from each",
     "Amtsbote broker; nats-server",
     {{"mem_per_conn_bytes", "server memory per connection, bytes", LOWER},
      {"connections", "connections", HIGHER},
      {"rate", "calls/s", HIGHER},
      {"p99_us", "p99 µs", LOWER}},
     0},
};
#define NSCEN (sizeof SCENARIOS / sizeof SCENARIOS[0])

/* A goal: Amtsbote's median `metric` against the peer's (ratio), or against `bound` (peer
 * NULL). For HIGHER the ratio must be >= target, for LOWER <= target. size/inflight 0: any. */
typedef struct {
    const char *scenario;
    int size, inflight;
    const char *metric;
    const char *peer;
    better_t better;
    double target;
    const char *text;
} goal_t;

static const goal_t GOALS[] = {
    {"call-throughput", 100, 100, "rate", "nats", HIGHER, 2.0,
     "calls/s >= 2 x NATS, 100 in flight"},
    {"call-throughput", 1024, 100, "rate", "nats", HIGHER, 2.0,
     "calls/s >= 2 x NATS, 100 in flight"},
    {"call-throughput", 100, 100, "rate", "floor", HIGHER, 0.8,
     "calls/s >= 0.8 x the raw-zmq floor, 100 in flight"},
    {"call-throughput", 1024, 100, "rate", "floor", HIGHER, 0.8,
     "calls/s >= 0.8 x the raw-zmq floor, 100 in flight"},
    {"call-latency", 100, 0, "p50_us", "nats", LOWER, 1.0, "p50 latency <= NATS's, 1 in flight"},
    {"stream", 100, 0, "rate", "nats", HIGHER, 1.0, "events >= 1.0 x NATS pub/sub"},
    {"stream", 1024, 0, "rate", "nats", HIGHER, 1.0, "events >= 1.0 x NATS pub/sub"},
    {"durable", 100, 32, "rate", "rabbitmq", HIGHER, 2.0,
     "durable >= 2 x RabbitMQ with publisher confirms"},
    {"durable", 100, 256, "rate", "rabbitmq", HIGHER, 2.0,
     "durable >= 2 x RabbitMQ with publisher confirms"},
    {"durable", 1024, 32, "rate", "rabbitmq", HIGHER, 2.0,
     "durable >= 2 x RabbitMQ with publisher confirms"},
    {"durable", 1024, 256, "rate", "rabbitmq", HIGHER, 2.0,
     "durable >= 2 x RabbitMQ with publisher confirms"},
    {"idle", 0, 0, "mem_per_conn_bytes", NULL, LOWER, 30720.0,
     "<= 30 KiB broker memory per idle mTLS connection"},
};
#define NGOALS (sizeof GOALS / sizeof GOALS[0])

typedef struct {
    int size, inflight;
} case_t;

typedef struct {
    const char *path;
    json_t *root;
    json_t *runs;
    FILE *md;
    const char *chart_base; /* charts are chart_base-SCENARIO.png */
    const char *gnuplot;    /* NULL: no charts */
    int charts_made;
} report_t;

static void
s_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("bench_report: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static const char *
s_str(json_t *obj, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : dflt;
}

static int
s_int(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_number(v) ? (int)json_number_value(v) : 0;
}

static int
s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    int n;
    double median, min, max;
} stat_t;

/* The median (mean of the two middle values for an even count), min and max of `metric` over
 * the successful runs of one system and case; n = 0 when there is none. */
static stat_t
s_stat(const report_t *r, const char *scen, const char *sys, case_t c, const char *metric)
{
    double v[MAX_RUNS];
    stat_t st = {0, NAN, NAN, NAN};
    size_t i;
    json_t *run;
    json_array_foreach(r->runs, i, run)
    {
        if (!json_is_true(json_object_get(run, "ok")) || strcmp(s_str(run, "scenario", ""), scen) ||
            strcmp(s_str(run, "system", ""), sys) || s_int(run, "size") != c.size ||
            s_int(run, "inflight") != c.inflight)
            continue;
        json_t *m = json_object_get(json_object_get(run, "metrics"), metric);
        if (json_is_number(m) && st.n < MAX_RUNS)
            v[st.n++] = json_number_value(m);
    }
    if (st.n == 0)
        return st;
    qsort(v, (size_t)st.n, sizeof v[0], s_cmp_double);
    st.min = v[0];
    st.max = v[st.n - 1];
    st.median = st.n % 2 ? v[st.n / 2] : (v[st.n / 2 - 1] + v[st.n / 2]) / 2.0;
    return st;
}

static int
s_case_cmp(const void *a, const void *b)
{
    const case_t *x = a, *y = b;
    if (x->size != y->size)
        return (x->size > y->size) - (x->size < y->size);
    return (x->inflight > y->inflight) - (x->inflight < y->inflight);
}

/* The distinct cases of a scenario, sorted by size then messages in flight. */
static size_t
s_cases(const report_t *r, const char *scen, case_t *out)
{
    size_t n = 0, i, k;
    json_t *run;
    json_array_foreach(r->runs, i, run)
    {
        if (strcmp(s_str(run, "scenario", ""), scen))
            continue;
        case_t c = {s_int(run, "size"), s_int(run, "inflight")};
        for (k = 0; k < n; k++)
            if (out[k].size == c.size && out[k].inflight == c.inflight)
                break;
        if (k == n && n < MAX_CASES)
            out[n++] = c;
    }
    qsort(out, n, sizeof out[0], s_case_cmp);
    return n;
}

/* Numbers for people: 12,345 for large ones, two decimals below 10, one below 1,000. */
static const char *
s_num(double v, char *buf, size_t cap)
{
    if (isnan(v)) {
        snprintf(buf, cap, "-");
        return buf;
    }
    double a = fabs(v);
    if (a >= 1000.0) {
        char digits[32];
        snprintf(digits, sizeof digits, "%.0f", a);
        size_t len = strlen(digits), o = 0;
        if (v < 0 && o + 1 < cap)
            buf[o++] = '-';
        for (size_t i = 0; i < len && o + 2 < cap; i++) {
            if (i > 0 && (len - i) % 3 == 0)
                buf[o++] = ',';
            buf[o++] = digits[i];
        }
        buf[o] = '\0';
    } else if (a >= 10.0 || v == 0.0) {
        snprintf(buf, cap, "%.1f", v);
        if (strlen(buf) > 2 && !strcmp(buf + strlen(buf) - 2, ".0"))
            buf[strlen(buf) - 2] = '\0';
    } else {
        snprintf(buf, cap, "%.2f", v);
    }
    return buf;
}

static const char *
s_size(int bytes, char *buf, size_t cap)
{
    if (bytes >= 1024 && bytes % 1024 == 0)
        snprintf(buf, cap, "%d KiB", bytes / 1024);
    else
        snprintf(buf, cap, "%d B", bytes);
    return buf;
}

static int
s_has_system(const report_t *r, const char *scen, const char *sys)
{
    size_t i;
    json_t *run;
    json_array_foreach(r->runs, i, run)
    {
        if (!strcmp(s_str(run, "scenario", ""), scen) && !strcmp(s_str(run, "system", ""), sys))
            return 1;
    }
    return 0;
}

static const char *
s_label(const char *sys)
{
    for (size_t i = 0; i < NSYS; i++)
        if (!strcmp(SYSTEMS[i], sys))
            return SYSTEM_LABELS[i];
    return sys;
}

/* ---- tables ------------------------------------------------------------------------------- */

static void
s_table(report_t *r, const scenario_t *sc)
{
    case_t cases[MAX_CASES];
    size_t ncases = s_cases(r, sc->name, cases);
    if (ncases == 0)
        return;
    const char *present[NSYS];
    size_t np = 0;
    for (size_t i = 0; i < NSYS; i++)
        if (s_has_system(r, sc->name, SYSTEMS[i]))
            present[np++] = SYSTEMS[i];
    int amts = np > 0 && !strcmp(present[0], "amtsbote");

    fprintf(r->md, "\n## %s\n\n%s. Median of the runs [min - max]", sc->title, sc->what);
    if (amts && np > 1)
        fprintf(r->md, "; the last columns are Amtsbote's median divided by each other system's "
                       "(for rates above 1 favours Amtsbote; for latency, memory, CPU and losses "
                       "below 1 does)");
    fprintf(r->md, ".\n\n| payload | in flight | metric |");
    for (size_t s = 0; s < np; s++)
        fprintf(r->md, " %s |", s_label(present[s]));
    for (size_t s = 1; amts && s < np; s++)
        fprintf(r->md, " Amtsbote / %s |", s_label(present[s]));
    fprintf(r->md, "\n| ---: | ---: | --- |");
    for (size_t s = 0; s < np; s++)
        fprintf(r->md, " ---: |");
    for (size_t s = 1; amts && s < np; s++)
        fprintf(r->md, " ---: |");
    fputc('\n', r->md);

    for (size_t c = 0; c < ncases; c++) {
        for (const metric_t *m = sc->metrics; m->key; m++) {
            stat_t st[NSYS];
            int any = 0;
            for (size_t s = 0; s < np; s++) {
                st[s] = s_stat(r, sc->name, present[s], cases[c], m->key);
                any |= st[s].n > 0;
            }
            if (!any)
                continue;
            char a[32], b[32], d[32], sz[32];
            fprintf(r->md, "| %s | %d | %s |", s_size(cases[c].size, sz, sizeof sz),
                    cases[c].inflight, m->label);
            for (size_t s = 0; s < np; s++) {
                if (st[s].n == 0)
                    fprintf(r->md, " - |");
                else if (st[s].n == 1)
                    fprintf(r->md, " %s |", s_num(st[s].median, a, sizeof a));
                else
                    fprintf(r->md, " %s [%s - %s] |", s_num(st[s].median, a, sizeof a),
                            s_num(st[s].min, b, sizeof b), s_num(st[s].max, d, sizeof d));
            }
            for (size_t s = 1; amts && s < np; s++) {
                if (st[0].n == 0 || st[s].n == 0 || st[s].median == 0.0)
                    fprintf(r->md, " - |");
                else
                    fprintf(r->md, " %.2f |", st[0].median / st[s].median);
            }
            fputc('\n', r->md);
        }
    }
}

/* ---- goals -------------------------------------------------------------------------------- */

typedef struct {
    int known;
    double value;    /* the ratio, or Amtsbote's value for a bound */
    double attained; /* value/target (HIGHER) or target/value (LOWER): >= 1 is met */
    char measured[96];
} outcome_t;

static outcome_t
s_goal(const report_t *r, const goal_t *g)
{
    outcome_t o = {0};
    case_t cases[MAX_CASES];
    size_t n = s_cases(r, g->scenario, cases);
    for (size_t c = 0; c < n; c++) {
        if ((g->size && cases[c].size != g->size) ||
            (g->inflight && cases[c].inflight != g->inflight))
            continue;
        stat_t a = s_stat(r, g->scenario, "amtsbote", cases[c], g->metric);
        if (a.n == 0)
            continue;
        char x[32], y[32];
        if (g->peer == NULL) {
            o.value = a.median;
            snprintf(o.measured, sizeof o.measured, "%s", s_num(a.median, x, sizeof x));
        } else {
            stat_t p = s_stat(r, g->scenario, g->peer, cases[c], g->metric);
            if (p.n == 0 || p.median == 0.0)
                continue;
            o.value = a.median / p.median;
            snprintf(o.measured, sizeof o.measured, "%.2f (%s / %s)", o.value,
                     s_num(a.median, x, sizeof x), s_num(p.median, y, sizeof y));
        }
        if (o.value <= 0.0)
            continue;
        o.attained = g->better == HIGHER ? o.value / g->target : g->target / o.value;
        o.known = 1;
        return o;
    }
    return o;
}

static void
s_goals(report_t *r, outcome_t *out)
{
    fprintf(r->md, "\n## Goals\n\n| goal | case | measured | verdict |\n| --- | --- | ---: | --- "
                   "|\n");
    for (size_t i = 0; i < NGOALS; i++) {
        const goal_t *g = &GOALS[i];
        out[i] = s_goal(r, g);
        char sz[32], cs[64];
        if (g->size)
            snprintf(cs, sizeof cs, "%s %s", g->scenario, s_size(g->size, sz, sizeof sz));
        else
            snprintf(cs, sizeof cs, "%s", g->scenario);
        if (g->inflight) {
            size_t l = strlen(cs);
            snprintf(cs + l, sizeof cs - l, ", %d in flight", g->inflight);
        }
        fprintf(r->md, "| %s | %s | ", g->text, cs);
        if (!out[i].known) {
            fprintf(r->md, "- | no data (a run failed or was not part of this run) |\n");
            continue;
        }
        fprintf(r->md, "%s | ", out[i].measured);
        if (out[i].attained >= 1.0)
            fprintf(r->md, "met |\n");
        else if (g->better == HIGHER)
            fprintf(r->md, "NOT met: %.0f %% short of %.2g |\n", (1.0 - out[i].attained) * 100.0,
                    g->target);
        else if (g->peer)
            fprintf(r->md, "NOT met: %.0f %% above %.2g x %s |\n",
                    (out[i].value / g->target - 1.0) * 100.0, g->target, s_label(g->peer));
        else
            fprintf(r->md, "NOT met: %.0f %% above the bound |\n",
                    (out[i].value / g->target - 1.0) * 100.0);
    }
}

/* ---- charts ------------------------------------------------------------------------------- */

/* Runs gnuplot on `script`; 0 when it made the chart. */
static int
s_gnuplot(const report_t *r, const char *script)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, STDOUT_FILENO);
        execlp(r->gnuplot, r->gnuplot, script, (char *)NULL);
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static void
s_chart_scenario(report_t *r, const scenario_t *sc)
{
    case_t cases[MAX_CASES];
    size_t ncases = s_cases(r, sc->name, cases);
    if (ncases == 0 || r->gnuplot == NULL)
        return;
    const char *present[NSYS];
    size_t np = 0;
    for (size_t i = 0; i < NSYS; i++)
        if (s_has_system(r, sc->name, SYSTEMS[i]))
            present[np++] = SYSTEMS[i];
    const metric_t *m = &sc->metrics[0];

    char dat[4096], gp[4096], png[4096];
    snprintf(dat, sizeof dat, "%s-%s.dat", r->chart_base, sc->name);
    snprintf(gp, sizeof gp, "%s-%s.gp", r->chart_base, sc->name);
    snprintf(png, sizeof png, "%s-%s.png", r->chart_base, sc->name);
    FILE *f = fopen(dat, "w");
    if (f == NULL)
        s_die("cannot write %s: %s", dat, strerror(errno));
    for (size_t c = 0; c < ncases; c++) {
        char sz[32];
        fprintf(f, "\"%s", s_size(cases[c].size, sz, sizeof sz));
        if (!strcmp(sc->name, "call-throughput"))
            fprintf(f, ", %d in flight", cases[c].inflight);
        fputc('"', f);
        for (size_t s = 0; s < np; s++) {
            stat_t st = s_stat(r, sc->name, present[s], cases[c], m->key);
            if (st.n == 0 || (sc->log_scale && st.median <= 0.0))
                fprintf(f, " ? ? ?");
            else
                fprintf(f, " %g %g %g", st.median, st.min, st.max);
        }
        fputc('\n', f);
    }
    fclose(f);

    if ((f = fopen(gp, "w")) == NULL)
        s_die("cannot write %s: %s", gp, strerror(errno));
    fprintf(f, "set terminal pngcairo size 960,540 font 'sans,10'\nset output '%s'\n", png);
    fprintf(f, "set title \"%s: %s (median, whiskers min - max)\"\n", sc->title, m->label);
    fprintf(f,
            "set datafile missing '?'\nset style data histogram\n"
            "set style histogram errorbars gap 2 lw 1\nset style fill solid 0.8 border -1\n"
            "set boxwidth 0.9\nset key top right\nset grid ytics\nset yrange [0:*]\n"
            "set ylabel \"%s%s\"\n",
            m->label, m->better == LOWER ? " (lower is better)" : " (higher is better)");
    if (sc->log_scale)
        fprintf(f, "set logscale y\nset yrange [*:*]\n");
    fprintf(f, "plot ");
    for (size_t s = 0; s < np; s++)
        fprintf(f, "%s'%s' using %zu:%zu:%zu%s title '%s'", s ? ", " : "", dat, 2 + 3 * s,
                3 + 3 * s, 4 + 3 * s, s == 0 ? ":xtic(1)" : "", s_label(present[s]));
    fputc('\n', f);
    fclose(f);
    if (s_gnuplot(r, gp) == 0) {
        const char *base = strrchr(png, '/');
        fprintf(r->md, "\n![%s](%s)\n", sc->title, base ? base + 1 : png);
        r->charts_made++;
        unlink(dat); /* the chart is made: its inputs are in the results file */
        unlink(gp);
    } else {
        fprintf(r->md, "\n(gnuplot could not draw %s; its script is %s)\n", png, gp);
    }
}

static void
s_chart_goals(report_t *r, const outcome_t *out)
{
    if (r->gnuplot == NULL)
        return;
    char dat[4096], gp[4096], png[4096];
    snprintf(dat, sizeof dat, "%s-goals.dat", r->chart_base);
    snprintf(gp, sizeof gp, "%s-goals.gp", r->chart_base);
    snprintf(png, sizeof png, "%s-goals.png", r->chart_base);
    FILE *f = fopen(dat, "w");
    if (f == NULL)
        s_die("cannot write %s: %s", dat, strerror(errno));
    size_t n = 0;
    for (size_t i = 0; i < NGOALS; i++) {
        if (!out[i].known)
            continue;
        char sz[32];
        char fl[32] = "";
        if (GOALS[i].inflight > 1)
            snprintf(fl, sizeof fl, " x%d", GOALS[i].inflight);
        fprintf(f, "%zu \"%s%s%s%s%s%s\" %g\n", n++, GOALS[i].scenario, GOALS[i].size ? " " : "",
                GOALS[i].size ? s_size(GOALS[i].size, sz, sizeof sz) : "", fl,
                GOALS[i].peer ? " vs " : " memory/conn",
                GOALS[i].peer
                    ? (strcmp(GOALS[i].peer, "floor") ? s_label(GOALS[i].peer) : "zmq floor")
                    : "",
                out[i].attained);
    }
    fclose(f);
    if (n == 0)
        return;
    if ((f = fopen(gp, "w")) == NULL)
        s_die("cannot write %s: %s", gp, strerror(errno));
    fprintf(f,
            "set terminal pngcairo size 1200,700 font 'sans,10'\nset output '%s'\n"
            "set title 'Goals: measured / goal (1 = goal just met; above is better; x N: in "
            "flight)'\n"
            "set style fill solid 0.8 border -1\nset boxwidth 0.7\nset grid ytics\n"
            "set yrange [0:*]\nset xtics rotate by -40\nset key off\nset bmargin 14\n"
            "set rmargin 12\nset lmargin 18\n"
            "plot '%s' using 1:3:($3 >= 1 ? 0x2ca02c : 0xd62728):xtic(2) with boxes lc rgb "
            "variable, 1 with lines lw 2 dt 2 lc rgb 'black'\n",
            png, dat);
    fclose(f);
    if (s_gnuplot(r, gp) == 0) {
        const char *base = strrchr(png, '/');
        fprintf(r->md, "\n![goals](%s)\n", base ? base + 1 : png);
        r->charts_made++;
        unlink(dat); /* the chart is made: its inputs are in the results file */
        unlink(gp);
    }
}

/* ---- the report --------------------------------------------------------------------------- */

static void
s_header(report_t *r)
{
    json_t *root = r->root, *mach = json_object_get(root, "machine");
    fprintf(r->md, "# Amtsbote and its peers, %s\n\n", s_str(root, "date", "(no date)"));
    fprintf(r->md,
            "Machine: %d cores (%s), %s, %d GiB; commit %s; %d repetition(s)%s; load "
            "average %s before, %s after.\n\n",
            s_int(mach, "cores"), s_str(mach, "cpu", "?"), s_str(mach, "kernel", "?"),
            s_int(mach, "memory_gib"), s_str(root, "commit", "?"), s_int(root, "repetitions"),
            json_is_true(json_object_get(root, "quick")) ? " (--quick: a smoke run, not for "
                                                           "conclusions)"
                                                         : "",
            s_str(json_object_get(root, "load"), "before", "?"),
            s_str(json_object_get(root, "load"), "after", "?"));
    json_t *ver = json_object_get(root, "versions");
    const char *k;
    json_t *v;
    int first = 1;
    fprintf(r->md, "Versions:");
    json_object_foreach(ver, k, v)
    {
        fprintf(r->md, "%s %s %s", first ? "" : ",", k,
                json_string_value(v) ? json_string_value(v) : "?");
        first = 0;
    }
    fprintf(r->md, ".\n\nEvery system runs on 127.0.0.1 with mutual TLS (client certificates "
                   "required and verified), messages are counted at the receiver, and CPU per "
                   "message is the server process's over the measured window.\n");
    json_t *notes = json_object_get(root, "notes");
    size_t i;
    if (json_array_size(notes)) {
        fprintf(r->md, "\n");
        json_array_foreach(notes, i, v)
        {
            if (json_is_string(v))
                fprintf(r->md, "- %s\n", json_string_value(v));
        }
    }
}

static void
s_failures(report_t *r)
{
    size_t i, n = 0;
    json_t *run;
    json_array_foreach(r->runs, i, run)
    {
        if (json_is_true(json_object_get(run, "ok")))
            continue;
        if (n++ == 0)
            fprintf(r->md, "\n## Runs that failed (not counted)\n\n");
        fprintf(r->md, "- %s %s, %d B, %d in flight, repetition %d: %s\n",
                s_str(run, "system", "?"), s_str(run, "scenario", "?"), s_int(run, "size"),
                s_int(run, "inflight"), s_int(run, "rep"), s_str(run, "error", "failed"));
    }
}

static void
s_usage(FILE *out)
{
    fprintf(out, "usage: bench_report RESULTS.json [--md FILE] [--charts DIR] [--no-charts] "
                 "[--gnuplot PATH]\n"
                 "Writes the Markdown report (default: RESULTS.md) and, with gnuplot, one PNG "
                 "chart per scenario and one of the goals (default: next to RESULTS).\n");
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"md", required_argument, NULL, 'm'},  {"charts", required_argument, NULL, 'c'},
        {"no-charts", no_argument, NULL, 'n'}, {"gnuplot", required_argument, NULL, 'g'},
        {"help", no_argument, NULL, 'h'},      {NULL, 0, NULL, 0}};
    const char *md_path = NULL, *charts = NULL, *gnuplot = "gnuplot";
    int no_charts = 0, c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            md_path = optarg;
            break;
        case 'c':
            charts = optarg;
            break;
        case 'n':
            no_charts = 1;
            break;
        case 'g':
            gnuplot = optarg;
            break;
        case 'h':
            s_usage(stdout);
            return 0;
        default:
            s_usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        s_usage(stderr);
        return 2;
    }
    report_t r = {.path = argv[optind]};
    json_error_t je;
    if ((r.root = json_load_file(r.path, 0, &je)) == NULL)
        s_die("%s: line %d, column %d: %s", r.path, je.line, je.column, je.text);
    if (!json_is_object(r.root) || s_int(r.root, "format") != 1)
        s_die("%s: not a results file of format 1 (no \"format\":1 at the top)", r.path);
    r.runs = json_object_get(r.root, "runs");
    if (!json_is_array(r.runs))
        s_die("%s: \"runs\" is missing or not a list", r.path);
    size_t i;
    json_t *run;
    json_array_foreach(r.runs, i, run)
    {
        if (!json_is_object(run) || !json_is_string(json_object_get(run, "system")) ||
            !json_is_string(json_object_get(run, "scenario")) ||
            !json_is_number(json_object_get(run, "size")))
            s_die("%s: run %zu needs \"system\", \"scenario\" and \"size\"", r.path, i + 1);
    }

    /* outputs: RESULTS.md, and charts RESULTS-SCENARIO.png (or DIR/peers-SCENARIO.png) */
    char base[2048], mdbuf[4096];
    if (strlen(r.path) >= sizeof base - 8)
        s_die("%s: the path is too long", r.path);
    snprintf(base, sizeof base, "%s", r.path);
    size_t bl = strlen(base);
    if (bl > 5 && !strcmp(base + bl - 5, ".json"))
        base[bl - 5] = '\0';
    if (md_path == NULL) {
        snprintf(mdbuf, sizeof mdbuf, "%s.md", base);
        md_path = mdbuf;
    }
    char chart_base[3072];
    if (charts) {
        if (mkdir(charts, 0755) != 0 && errno != EEXIST)
            s_die("cannot create %s: %s", charts, strerror(errno));
        const char *name = strrchr(base, '/');
        snprintf(chart_base, sizeof chart_base, "%.1000s/%.2000s", charts, name ? name + 1 : base);
    } else {
        snprintf(chart_base, sizeof chart_base, "%s", base);
    }
    r.chart_base = chart_base;
    if (!no_charts) {
        /* gnuplot on PATH (or the path given) */
        if (strchr(gnuplot, '/') ? access(gnuplot, X_OK) == 0
                                 : system("command -v gnuplot >/dev/null 2>&1") == 0)
            r.gnuplot = gnuplot;
    }
    if ((r.md = fopen(md_path, "w")) == NULL)
        s_die("cannot write %s: %s", md_path, strerror(errno));

    s_header(&r);
    outcome_t out[NGOALS];
    s_goals(&r, out);
    s_chart_goals(&r, out);
    for (size_t s = 0; s < NSCEN; s++) {
        s_table(&r, &SCENARIOS[s]);
        s_chart_scenario(&r, &SCENARIOS[s]);
    }
    s_failures(&r);
    if (r.gnuplot == NULL)
        fprintf(r.md, "\n(No charts: %s.)\n",
                no_charts ? "--no-charts" : "gnuplot was not found (Debian: gnuplot-nox)");
    if (fclose(r.md) != 0)
        s_die("cannot write %s: %s", md_path, strerror(errno));
    fprintf(stderr, "bench_report: wrote %s (%d chart(s))\n", md_path, r.charts_made);
    json_decref(r.root);
    return 0;
}
