/* Governance: see gate.h. */
#include "gate.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "amtsbote.h"
#include "audit.h"
#include "log.h"
#include "policy.h"

struct brk_gate {
    const brk_config_t *cfg;
    ab_policy_t *policy; /* NULL: no policy file, everything allowed */
    ab_audit_t *audit;   /* NULL: no audit log */
    int audit_failed;
    char audit_error[512];
    brk_metrics_t *metrics;
    brk_services_gate_t svc;
    /* the audit log's hashing, write and fsync run on the gate's own writer thread, one job at
     * a time, while the loop goes on deciding; the answers queued before a job began go out
     * when it ends. With audit_background the thread has SCHED_IDLE: it uses only CPU time
     * that nothing else wants, so that the records cost the calls as little as possible */
    uv_loop_t *loop;
    uv_async_t *done; /* the writer finished a job; freed in its close callback */
    pthread_t writer;
    int writer_started;
    ab_audit_job_t job;
    int job_running; /* loop side: a job was handed over and its end not yet taken */
    size_t mark;     /* answers queued when the running job began */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int job_queued; /* under mu: a job waits for the writer */
    int job_done;   /* under mu: the writer has finished the job */
    int quit;       /* under mu: the writer ends after the job in hand */
    brk_gate_release_fn *release;
    brk_gate_queued_fn *queued;
    void *hold_arg;
    uint64_t last_begin_ms; /* audit_background: when the last write began */
};

static int
s_action(const char *name, ab_policy_action_t *out)
{
    return ab_policy_action_parse(name, out);
}

static int
s_allow(void *ctx, const char *participant, const char *action, const char *resource,
        const char *purpose, int classification, char *why, size_t cap, const char **rule)
{
    brk_gate_t *g = ctx;
    if (g->audit_failed) {
        snprintf(why, cap,
                 "the broker cannot write its audit log and takes no decisions it cannot "
                 "record (%s)",
                 g->audit_error);
        *rule = "audit";
        return AB_EUNAVAILABLE;
    }
    if (g->policy == NULL)
        return 0;
    ab_policy_action_t a;
    if (s_action(action, &a) != 0) {
        snprintf(why, cap, "unknown action %s", action);
        return AB_EFORBIDDEN;
    }
    ab_policy_decision_t d;
    if (ab_policy_decide(g->policy, participant, a, resource, purpose, classification, &d))
        return 0;
    snprintf(why, cap, "%s", d.reason);
    *rule = d.rule ? d.rule : "default-deny";
    brk_metrics_counter_add(g->metrics, BRK_M_POLICY_DENIALS, *rule, NULL, 1);
    return AB_EFORBIDDEN;
}

static int
s_cleared(void *ctx, const char *participant, int classification)
{
    brk_gate_t *g = ctx;
    return g->policy == NULL || ab_policy_cleared(g->policy, participant, classification);
}

static void
s_record(void *ctx, const brk_event_t *ev)
{
    brk_gate_t *g = ctx;
    const char *code = ev->outcome ? ab_err_name(ev->outcome) : NULL;
    switch (ev->kind) {
    case BRK_EV_CALL:
        brk_metrics_counter_add(g->metrics, BRK_M_CALLS, ev->target, NULL, 1);
        break;
    case BRK_EV_REPLY:
        brk_metrics_observe(g->metrics, BRK_M_CALL_LATENCY, ev->target,
                            (double)ev->latency_ms / 1000.0);
        if (ev->outcome)
            brk_metrics_counter_add(g->metrics, BRK_M_CALL_ERRORS, ev->target, code, 1);
        break;
    case BRK_EV_REFUSED:
    case BRK_EV_FAILED:
        brk_metrics_counter_add(g->metrics, BRK_M_CALL_ERRORS, ev->target, code, 1);
        break;
    default: /* mailbox events: counted by the mailbox's own metrics */
        break;
    }
    if (g->audit == NULL || g->audit_failed)
        return;
    ab_audit_record_t r;
    memset(&r, 0, sizeof r);
    if (ev->message_id && ev->message_id_len == sizeof r.id)
        memcpy(r.id, ev->message_id, sizeof r.id);
    r.kind = ev->kind == BRK_EV_CALL             ? AB_AUDIT_CALL
             : ev->kind == BRK_EV_ACCEPTED       ? AB_AUDIT_ACCEPTED
             : ev->kind == BRK_EV_PUBLISHED      ? AB_AUDIT_ACCEPTED
             : ev->kind == BRK_EV_DELIVERED      ? AB_AUDIT_DELIVERED
             : ev->kind == BRK_EV_ACKED          ? AB_AUDIT_ACKED
             : ev->kind == BRK_EV_EXPIRED        ? AB_AUDIT_EXPIRED
             : ev->kind == BRK_EV_DEAD           ? AB_AUDIT_FAILED
             : ev->kind == BRK_EV_REPLY          ? AB_AUDIT_REPLY
             : ev->kind == BRK_EV_FAILED         ? AB_AUDIT_FAILED
             : ev->outcome == AB_EFORBIDDEN      ? AB_AUDIT_FORBIDDEN
             : ev->outcome == AB_ESCHEMA_INVALID ? AB_AUDIT_INVALID
                                                 : AB_AUDIT_ERROR;
    r.sender = ev->sender;
    r.target = ev->target;
    r.purpose = ev->purpose;
    r.classification = ev->classification ? ab_policy_level_name(ev->classification) : "";
    r.payload = ev->payload;
    r.payload_len = ev->payload_len;
    r.outcome = code;
    if (ab_audit_append(g->audit, &r) != 0 && !g->audit_failed) {
        g->audit_failed = 1;
        snprintf(g->audit_error, sizeof g->audit_error, "%s", ab_audit_error(g->audit));
        brk_log(BRK_LOG_ERROR, "event=audit_failed reason=\"%s\"", g->audit_error);
    }
}

int
brk_gate_push_check(void *ctx, const char *participant, const char *package, char *why, size_t cap)
{
    const char *rule = "";
    return s_allow(ctx, participant, "schema-push", package, "", 0, why, cap, &rule);
}

/* ---- readiness ---- */

static int
s_check_policy(void *arg, char *why, size_t cap)
{
    brk_gate_t *g = arg;
    if (g->cfg->policy && g->policy == NULL) {
        snprintf(why, cap, "no policy loaded from %s", g->cfg->policy);
        return 1;
    }
    return 0;
}

static int
s_check_audit(void *arg, char *why, size_t cap)
{
    brk_gate_t *g = arg;
    if (g->audit_failed) {
        snprintf(why, cap, "%s", g->audit_error);
        return 1;
    }
    return 0;
}

/* The broker's certificate must stay valid for more than 7 days. */
static int
s_check_cert(void *arg, char *why, size_t cap)
{
    brk_gate_t *g = arg;
    if (g->cfg->tls_cert == NULL)
        return 0;
    FILE *f = fopen(g->cfg->tls_cert, "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    if (x == NULL) {
        snprintf(why, cap, "cannot read %s", g->cfg->tls_cert);
        return 1;
    }
    time_t soon = time(NULL) + 7 * 24 * 3600;
    int bad = X509_cmp_time(X509_get0_notAfter(x), &soon) <= 0;
    X509_free(x);
    if (bad)
        snprintf(why, cap, "%s expires within 7 days", g->cfg->tls_cert);
    return bad;
}

brk_gate_t *
brk_gate_new(const brk_config_t *cfg, char *err, size_t errlen)
{
    brk_gate_t *g = calloc(1, sizeof *g);
    if (g == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    g->cfg = cfg;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->svc.allow = s_allow;
    g->svc.cleared = s_cleared;
    g->svc.record = s_record;
    g->svc.ctx = g;
    if ((g->metrics = brk_metrics_new(0)) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (cfg->policy) {
        ab_policy_error_t pe;
        if (ab_policy_load(cfg->policy, &g->policy, &pe) != 0) {
            snprintf(err, errlen, "policy: %s", pe.message);
            goto fail;
        }
        brk_log(BRK_LOG_INFO, "event=policy_loaded file=%s groups=%zu rules=%zu limits=%zu",
                cfg->policy, ab_policy_group_count(g->policy), ab_policy_rule_count(g->policy),
                ab_policy_limit_count(g->policy));
    } else {
        brk_log(BRK_LOG_WARN, "event=no_policy reason=\"without --policy every authenticated "
                              "participant may call, offer and push schemas (development)\"");
    }
    if (cfg->audit_dir) {
        ab_audit_options_t o = {.max_file_bytes = (size_t)cfg->audit_max_file_bytes,
                                .key_path = cfg->tls_key,
                                .key_passphrase = NULL,
                                .cert_path = cfg->tls_cert};
        char aerr[512];
        if ((g->audit = ab_audit_open(cfg->audit_dir, &o, aerr, sizeof aerr)) == NULL) {
            snprintf(err, errlen, "audit log: %s", aerr);
            goto fail;
        }
        brk_log(BRK_LOG_INFO, "event=audit_open dir=%s signed=%s", cfg->audit_dir,
                cfg->tls_key ? "yes" : "no");
    }
    brk_metrics_add_check(g->metrics, "policy loaded", s_check_policy, g);
    brk_metrics_add_check(g->metrics, "audit log writable", s_check_audit, g);
    brk_metrics_add_check(g->metrics, "certificate valid for more than 7 days", s_check_cert, g);
    return g;
fail:
    brk_gate_destroy(&g);
    return NULL;
}

int
brk_gate_listen(brk_gate_t *self, uv_loop_t *loop, char *err, size_t errlen)
{
    if (self->cfg->metrics == NULL)
        return 0;
    char bound[128];
    if (brk_metrics_listen(self->metrics, loop, self->cfg->metrics, 0, bound, sizeof bound, err,
                           errlen) != 0)
        return -1;
    brk_log(BRK_LOG_INFO, "event=metrics_listening address=%s", bound);
    printf("metrics on http://%s/metrics\n", bound);
    fflush(stdout);
    return 0;
}

const brk_services_gate_t *
brk_gate_services(brk_gate_t *self)
{
    return &self->svc;
}

ab_policy_t *
brk_gate_policy(brk_gate_t *self)
{
    return self->policy;
}

brk_metrics_t *
brk_gate_metrics(brk_gate_t *self)
{
    return self->metrics;
}

static void
s_audit_failed(brk_gate_t *self)
{
    if (self->audit_failed)
        return;
    self->audit_failed = 1;
    snprintf(self->audit_error, sizeof self->audit_error, "%s", ab_audit_error(self->audit));
    brk_log(BRK_LOG_ERROR, "event=audit_failed reason=\"%s\" effect=\"decisions refused\"",
            self->audit_error);
}

/* The writer thread: runs the jobs the loop hands over (s_begin), tells the loop when one is done.
 */
static void *
s_writer(void *arg)
{
    brk_gate_t *g = arg;
    if (g->cfg->audit_background) {
        /* its answers do not wait for it: it must not take the CPU from those who do. Allowed
         * without privileges; if refused, it runs at the normal priority */
        struct sched_param sp = {0};
        (void)pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
    }
    pthread_mutex_lock(&g->mu);
    for (;;) {
        while (!g->job_queued && !g->quit)
            pthread_cond_wait(&g->cv, &g->mu);
        if (!g->job_queued)
            break; /* quit, nothing in hand */
        g->job_queued = 0;
        pthread_mutex_unlock(&g->mu);
        ab_audit_flush_run(&g->job);
        pthread_mutex_lock(&g->mu);
        g->job_done = 1;
        pthread_cond_broadcast(&g->cv);
        uv_async_send(g->done);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

static int s_begin(brk_gate_t *self, size_t queued);

/* Waits for the writer to finish the running job and takes its result (loop thread). */
static void
s_end_job(brk_gate_t *g)
{
    pthread_mutex_lock(&g->mu);
    while (!g->job_done)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    g->job_running = 0;
    if (ab_audit_flush_end(g->audit, &g->job) != 0)
        s_audit_failed(g);
}

/* The writer lags in the background: too much waits, or its write has run too long (a slow
 * disk, or no idle CPU for it). Answers are held until it catches up. */
static int
s_backlog(const brk_gate_t *g)
{
    return ab_audit_pending_bytes(g->audit) >= BRK_AUDIT_BACKLOG_MAX ||
           (g->job_running && uv_now(g->loop) - g->last_begin_ms >= BRK_AUDIT_LAG_MAX_MS);
}

static void
s_on_done(uv_async_t *h)
{
    brk_gate_t *g = h->data;
    if (!g->job_running)
        return; /* brk_gate_drain() has taken the result already */
    pthread_mutex_lock(&g->mu);
    int done = g->job_done;
    pthread_mutex_unlock(&g->mu);
    if (!done)
        return;
    s_end_job(g);
    size_t mark = g->mark;
    /* the decisions made meanwhile go next; the answers up to the mark may leave now. In the
     * background the next write waits for its interval (brk_gate_wait_ms), unless too much
     * waits already: then it starts now, and the answers are held again while it runs */
    int next = 0;
    if (!g->cfg->audit_background)
        next = g->queued ? s_begin(g, g->queued(g->hold_arg)) : 0;
    else if (s_backlog(g))
        (void)s_begin(g, 0);
    if (g->release)
        g->release(g->hold_arg, next ? mark : SIZE_MAX);
}

/* Hands what is queued to the writer; 1 when a job runs now, 0 when there was nothing to
 * write (or no writer: then it was written here). */
static int
s_begin(brk_gate_t *self, size_t queued)
{
    if (self->audit_failed)
        return 0;
    int rc = ab_audit_flush_begin(self->audit, &self->job);
    if (rc <= 0) {
        if (rc < 0)
            s_audit_failed(self);
        return 0;
    }
    self->mark = queued;
    self->last_begin_ms = uv_now(self->loop);
    if (!self->writer_started) { /* no thread: write it here */
        ab_audit_flush_run(&self->job);
        if (ab_audit_flush_end(self->audit, &self->job) != 0)
            s_audit_failed(self);
        return 0;
    }
    pthread_mutex_lock(&self->mu);
    self->job_done = 0;
    self->job_queued = 1;
    pthread_cond_broadcast(&self->cv);
    pthread_mutex_unlock(&self->mu);
    self->job_running = 1;
    return 1;
}

void
brk_gate_set_hold(brk_gate_t *self, uv_loop_t *loop, brk_gate_queued_fn *queued,
                  brk_gate_release_fn *release, void *arg)
{
    self->loop = loop;
    self->queued = queued;
    self->release = release;
    self->hold_arg = arg;
    if (self->audit == NULL || self->writer_started)
        return;
    if ((self->done = calloc(1, sizeof *self->done)) == NULL ||
        uv_async_init(loop, self->done, s_on_done) != 0) {
        free(self->done);
        self->done = NULL;
    } else {
        self->done->data = self;
        self->writer_started = pthread_create(&self->writer, NULL, s_writer, self) == 0;
        if (!self->writer_started) {
            uv_close((uv_handle_t *)self->done, (uv_close_cb)free);
            self->done = NULL;
        }
    }
    if (!self->writer_started)
        brk_log(BRK_LOG_WARN, "event=audit_writer_missing effect=\"the audit log is written "
                              "on the loop: slower\"");
}

int
brk_gate_flush(brk_gate_t *self, size_t queued)
{
    if (self->audit == NULL)
        return 1;
    if (self->job_running) /* in the background the answers go unless too much waits */
        return self->cfg->audit_background && !s_backlog(self);
    if (self->loop == NULL || !self->writer_started) { /* not asynchronous: write here */
        if (ab_audit_pending(self->audit) > 0 && ab_audit_flush(self->audit) != 0)
            s_audit_failed(self);
        return 1;
    }
    if (self->cfg->audit_background) {
        if (brk_gate_wait_ms(self) == 0) /* the interval is over: the next write starts */
            (void)s_begin(self, queued);
        return 1; /* answers go now; their records with the next write */
    }
    return s_begin(self, queued) ? 0 : 1;
}

uint64_t
brk_gate_wait_ms(const brk_gate_t *self)
{
    if (self->audit == NULL || !self->cfg->audit_background || self->loop == NULL ||
        self->audit_failed || self->job_running || ab_audit_pending(self->audit) == 0)
        return UINT64_MAX;
    uint64_t since = uv_now(self->loop) - self->last_begin_ms;
    return since >= self->cfg->audit_background_ms ? 0 : self->cfg->audit_background_ms - since;
}

void
brk_gate_drain(brk_gate_t *self)
{
    if (self->audit == NULL)
        return;
    if (self->job_running)
        s_end_job(self); /* its completion callback still comes: it only returns */
    if (!self->audit_failed && ab_audit_pending(self->audit) > 0 &&
        ab_audit_flush(self->audit) != 0)
        s_audit_failed(self);
}

void
brk_gate_close(brk_gate_t *self)
{
    if (self == NULL)
        return;
    brk_gate_drain(self);
    if (self->writer_started) {
        pthread_mutex_lock(&self->mu);
        self->quit = 1;
        pthread_cond_broadcast(&self->cv);
        pthread_mutex_unlock(&self->mu);
        pthread_join(self->writer, NULL);
        self->writer_started = 0;
    }
    if (self->done) {
        uv_close((uv_handle_t *)self->done, (uv_close_cb)free);
        self->done = NULL;
    }
}

int
brk_gate_reload(brk_gate_t *self)
{
    if (self->cfg->policy == NULL)
        return 0;
    ab_policy_t *p = NULL;
    ab_policy_error_t pe;
    if (ab_policy_load(self->cfg->policy, &p, &pe) != 0) {
        brk_log(BRK_LOG_ERROR, "event=policy_reload result=failed reason=\"%s\" kept=old",
                pe.message);
        return -1;
    }
    ab_policy_destroy(&self->policy);
    self->policy = p;
    brk_log(BRK_LOG_INFO, "event=policy_reload result=ok groups=%zu rules=%zu limits=%zu",
            ab_policy_group_count(p), ab_policy_rule_count(p), ab_policy_limit_count(p));
    return 0;
}

void
brk_gate_destroy(brk_gate_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    brk_gate_t *g = *self_p;
    brk_gate_close(g);
    if (g->audit) {
        if (!g->audit_failed && ab_audit_flush(g->audit) != 0)
            brk_log(BRK_LOG_ERROR, "event=audit_failed reason=\"%s\"", ab_audit_error(g->audit));
        ab_audit_close(&g->audit);
    }
    ab_policy_destroy(&g->policy);
    brk_metrics_destroy(&g->metrics);
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
    free(g);
    *self_p = NULL;
}
