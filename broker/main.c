/*
 * main.c - amtsbote-broker: flags and config, start and stop order, signals.
 *
 * Start: config -> data directory lock -> store (SQLite) -> schema registry -> ZeroMQ context
 * -> ZAP handler (before any listener)
 * -> ROUTER with PLAIN + ZAP -> listeners -> "ready" on stdout. Stop (SIGINT/SIGTERM): refuse
 * new connections in the ZAP handler (zmq_unbind would drop the connected ones too), refuse
 * new calls, let calls in flight finish for shutdown_grace_ms, answer the rest UNAVAILABLE,
 * flush, exit 0. A second signal skips the grace period.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>
#include <zmq.h>

#include "config.h"
#include "export.h"
#include "gate.h"
#include "log.h"
#include "loop_zmq.h"
#include "mailbox.h"
#include "proto.h"
#include "quota.h"
#include "services.h"
#include "tls_gateway.h"
#include "zap.h"

#define ROUTER_BUDGET 512

typedef struct {
    brk_config_t cfg;
    uv_loop_t *loop;
    void *zctx;
    void *router;
    brk_zap_t *zap;
    brk_tls_gateway_t *tls;
    brk_zsock_t *zs;
    brk_proto_t *proto;
    brk_services_t *svc;
    brk_services_io_t io;
    brk_mailbox_io_t mio;
    brk_mailbox_t *mailbox;
    brk_store_t *store;
    brk_registry_t *registry;
    brk_gate_t *gate;
    brk_quota_t *limits;
    uv_timer_t tick;
    uv_timer_t grace;
    uv_timer_t linger; /* after the last answers: lets the TLS gateway relay them out */
    uint64_t linger_started;
    uv_signal_t sig[3];
    int lock_fd;
    int stopping;
    uint64_t stop_started;
} s_broker_t;

static void s_finish(s_broker_t *b);

#define LINGER_QUIET_MS 200
#define LINGER_MS 2000

static void
s_on_linger(uv_timer_t *t)
{
    s_broker_t *b = t->data;
    if (b->tls && brk_tls_gateway_quiet_ms(b->tls) < LINGER_QUIET_MS &&
        uv_now(b->loop) - b->linger_started < LINGER_MS)
        return;
    brk_tls_gateway_destroy(&b->tls); /* before the ZAP handler: sessions unmap their address */
    brk_zap_destroy(&b->zap);
    uv_close((uv_handle_t *)&b->linger, NULL);
}

/* Runs the services' timers and sleeps until the next one is due: one timer for all calls. */
static void
s_on_tick(uv_timer_t *t)
{
    s_broker_t *b = t->data;
    if (b->stopping > 1)
        return;
    uint64_t wait = brk_services_tick(b->svc, uv_now(b->loop));
    uint64_t mwait = brk_mailbox_tick(b->mailbox, uv_now(b->loop));
    if (mwait < wait)
        wait = mwait;
    uint64_t pwait = brk_proto_probe(b->proto, uv_now(b->loop)); /* flushed below */
    if (pwait < wait)
        wait = pwait;
    /* the turn's messages are on disk before their ACCEPTED and deliveries go out */
    brk_store_stats_t before, after;
    brk_store_stats(b->store, &before);
    brk_mailbox_end_turn(b->mailbox);
    brk_store_stats(b->store, &after);
    if (after.commits != before.commits)
        brk_metrics_observe(brk_gate_metrics(b->gate), BRK_M_STORE_COMMIT, NULL,
                            (double)after.last_commit_us / 1e6);
    /* this turn's decisions are on disk before its answers go out */
    if (brk_gate_flush(b->gate, brk_proto_queued(b->proto))) {
        brk_proto_hold(b->proto, 0);
        brk_proto_flush(b->proto);
    } else {
        brk_proto_hold(b->proto, 1);
    }
    uint64_t await = brk_gate_wait_ms(b->gate); /* audit_background: the next write is due */
    if (await < wait)
        wait = await;
    uv_timer_start(&b->tick, s_on_tick, wait, 0);
}

static void
s_on_peer_gone(void *arg, const brk_peer_t *peer)
{
    s_broker_t *b = arg;
    brk_services_peer_gone(b->svc, peer);
    brk_mailbox_peer_gone(b->mailbox, peer);
}

/* A TLS session ended: its connection is probed from the next tick on (brk_proto_probe). */
static void
s_on_session_end(void *arg, const char *address)
{
    s_broker_t *b = arg;
    if (!b->proto || b->stopping > 1)
        return;
    brk_proto_session_end(b->proto, address, uv_now(b->loop));
    if (!uv_is_active((uv_handle_t *)&b->tick) ||
        uv_timer_get_due_in(&b->tick) > BRK_PROBE_EVERY_MS)
        uv_timer_start(&b->tick, s_on_tick, BRK_PROBE_EVERY_MS, 0);
}

static const uint8_t *
s_payload_bytes(void *payload, size_t *len)
{
    *len = zmq_msg_size(payload);
    return zmq_msg_data(payload);
}

/* The audit log's write for some answers is done: they go out. */
static size_t
s_queued(void *arg)
{
    s_broker_t *b = arg;
    return brk_proto_queued(b->proto);
}

static void
s_release(void *arg, size_t upto)
{
    s_broker_t *b = arg;
    if (upto == SIZE_MAX) {
        brk_proto_hold(b->proto, 0);
        brk_proto_flush(b->proto);
        /* audit_background: records that came during the write are due at the next interval */
        uint64_t due = brk_gate_wait_ms(b->gate);
        if (due != UINT64_MAX && b->stopping < 2 &&
            (!uv_is_active((uv_handle_t *)&b->tick) || uv_timer_get_due_in(&b->tick) > due))
            uv_timer_start(&b->tick, s_on_tick, due, 0);
    } else {
        brk_proto_flush_upto(b->proto, upto);
    }
}

/* /readyz: the store must be able to write. */
static int
s_check_store(void *arg, char *why, size_t cap)
{
    s_broker_t *b = arg;
    return b->mailbox ? brk_mailbox_ready(b->mailbox, why, cap) : 0;
}

/* The status page at /: the offers and who is connected. */
static void
s_page_offer(void *arg, const char *service, size_t providers, uint32_t in_flight)
{
    brk_metrics_page_service(arg, service, providers, in_flight);
}

static void
s_page_conn(void *arg, const char *participant)
{
    brk_metrics_page_participant(arg, participant);
}

static void
s_page_box(void *arg, const char *participant, size_t messages, uint64_t oldest_age_ms)
{
    brk_metrics_page_mailbox(arg, participant, messages, (double)oldest_age_ms / 1000.0);
}

static void
s_page(void *arg, brk_metrics_page_t *p)
{
    s_broker_t *b = arg;
    if (b->svc)
        brk_services_each(b->svc, s_page_offer, s_page_conn, p);
    if (b->mailbox)
        brk_mailbox_each(b->mailbox, s_page_box, p);
}

/* An accepted connection, counted by transport for /metrics. */
static void
s_on_accept(void *arg, const char *transport)
{
    s_broker_t *b = arg;
    brk_metrics_counter_add(brk_gate_metrics(b->gate), BRK_M_CONNECTIONS, transport, NULL, 1);
}

/* A refused TLS handshake, counted by category for /metrics. */
static void
s_on_tls_refused(void *arg, const char *category)
{
    s_broker_t *b = arg;
    brk_metrics_counter_add(brk_gate_metrics(b->gate), BRK_M_TLS_HANDSHAKE_FAIL, category, NULL, 1);
}

/* One mailbox's depth and the age of its oldest message, for /metrics. */
static void
s_metrics_box(void *arg, const char *participant, size_t messages, uint64_t oldest_age_ms)
{
    brk_metrics_gauge_set(arg, BRK_M_MAILBOX_DEPTH, participant, (double)messages);
    brk_metrics_gauge_set(arg, BRK_M_MAILBOX_OLDEST_AGE, participant,
                          (double)oldest_age_ms / 1000.0);
}

/* What the modules count, for /metrics. */
static void
s_metrics_source(void *arg, brk_metrics_t *m, brk_metrics_stats_t *out)
{
    s_broker_t *b = arg;
    if (b->svc) {
        brk_services_stats(b->svc, &out->services);
        out->have_services = 1;
    }
    if (b->proto) {
        brk_proto_stats(b->proto, &out->proto);
        out->have_proto = 1;
    }
    if (b->registry) {
        brk_registry_stats(b->registry, &out->registry);
        out->have_registry = 1;
    }
    if (b->tls) {
        brk_tls_gateway_stats(b->tls, &out->tls);
        out->have_tls = 1;
    }
    if (b->limits) {
        brk_quota_stats_t q;
        brk_quota_stats(b->limits, &q);
        brk_metrics_gauge_set(m, BRK_M_PARTICIPANTS_ONLINE, NULL, (double)q.online);
    }
    if (b->mailbox) {
        brk_mailbox_stats(b->mailbox, &out->mailbox);
        out->have_mailbox = 1;
        brk_metrics_gauge_clear(m, BRK_M_MAILBOX_DEPTH);
        brk_metrics_gauge_clear(m, BRK_M_MAILBOX_OLDEST_AGE);
        brk_mailbox_each(b->mailbox, s_metrics_box, m);
    }
    if (b->store) {
        brk_store_stats(b->store, &out->store);
        out->have_store = 1;
    }
}

/* brk_proto_pause_fn: a participant over its rate is not read for a while. */
static void
s_pause_participant(void *arg, const char *participant, unsigned ms)
{
    brk_tls_gateway_pause(arg, participant, ms);
}

static int
s_read_router(void *sock, void *arg)
{
    (void)sock;
    s_broker_t *b = arg;
    brk_envelope_t env;
    int rc = brk_proto_recv(b->proto, &env);
    if (rc < 0)
        return -1;
    if (rc == 1) {
        if (brk_mailbox_wants(env.hdr)) {
            brk_mailbox_handle(b->mailbox, &env.from, env.participant, env.hdr,
                               env.has_payload ? &env.payload : NULL, uv_now(b->loop));
        } else {
            if (env.hdr->kind == AMTSBOTE__V1__KIND__KIND_HEARTBEAT)
                brk_mailbox_seen(b->mailbox, &env.from, uv_now(b->loop));
            brk_services_handle(b->svc, &env.from, env.participant, env.hdr,
                                env.has_payload ? &env.payload : NULL, uv_now(b->loop));
        }
        brk_envelope_close(&env);
    }
    return 0;
}

static void
s_after_batch(void *arg)
{
    s_broker_t *b = arg;
    if (b->stopping == 1 && brk_services_in_flight(b->svc) == 0)
        s_finish(b);
    else if (b->stopping <= 1)
        s_on_tick(&b->tick);
}

static void
s_log_stats(s_broker_t *b, const char *event)
{
    brk_services_stats_t s;
    brk_proto_stats_t p;
    uint64_t acc = 0, ref = 0;
    brk_services_stats(b->svc, &s);
    brk_proto_stats(b->proto, &p);
    brk_zap_counts(b->zap, &acc, &ref);
    brk_log(BRK_LOG_INFO,
            "event=%s calls=%llu replies=%llu unknown_service=%llu deadline_exceeded=%llu "
            "provider_gone=%llu unavailable=%llu late_replies=%llu lost_replies=%llu "
            "malformed=%llu too_large=%llu no_identity=%llu unroutable=%llu queue_full=%llu "
            "connections_accepted=%llu connections_refused=%llu in_flight=%zu providers=%zu",
            event, (unsigned long long)s.calls, (unsigned long long)s.replies,
            (unsigned long long)s.unknown_service, (unsigned long long)s.deadline_exceeded,
            (unsigned long long)s.provider_gone, (unsigned long long)s.unavailable,
            (unsigned long long)s.late_replies, (unsigned long long)s.lost_replies,
            (unsigned long long)p.malformed, (unsigned long long)p.too_large,
            (unsigned long long)p.no_identity, (unsigned long long)p.unroutable,
            (unsigned long long)p.queue_full, (unsigned long long)acc, (unsigned long long)ref,
            s.in_flight, s.providers);
    if (b->mailbox) {
        brk_mailbox_stats_t m;
        brk_store_stats_t st;
        brk_mailbox_stats(b->mailbox, &m);
        brk_store_stats(b->store, &st);
        brk_log(BRK_LOG_INFO,
                "event=%s_mailbox accepted=%llu duplicates=%llu delivered=%llu acked=%llu "
                "expired=%llu dead_letters=%llu damaged=%llu mailbox_full=%llu unavailable=%llu "
                "published=%llu waiting=%zu commits=%llu commit_ms_max=%llu",
                event, (unsigned long long)m.accepted, (unsigned long long)m.duplicates,
                (unsigned long long)m.delivered, (unsigned long long)m.acked,
                (unsigned long long)m.expired, (unsigned long long)m.dead_letters,
                (unsigned long long)m.damaged, (unsigned long long)m.mailbox_full,
                (unsigned long long)m.unavailable, (unsigned long long)m.published, m.waiting,
                (unsigned long long)st.commits, (unsigned long long)st.commit_ms_max);
    }
    if (b->tls) {
        brk_tls_stats_t t;
        brk_tls_gateway_stats(b->tls, &t);
        brk_log(BRK_LOG_INFO, "event=%s_tls sessions_accepted=%llu sessions_refused=%llu open=%llu",
                event, (unsigned long long)t.accepted, (unsigned long long)t.refused,
                (unsigned long long)t.sessions);
    }
}

/* Closes every handle; uv_run returns once they are closed. */
static void
s_finish(s_broker_t *b)
{
    if (b->stopping >= 2)
        return;
    b->stopping = 2;
    if (brk_services_in_flight(b->svc) > 0) {
        brk_log(BRK_LOG_WARN, "event=shutdown_unfinished calls=%zu",
                brk_services_in_flight(b->svc));
        brk_services_fail_all(b->svc, AB_EUNAVAILABLE,
                              "the broker stopped before the provider answered");
    }
    brk_mailbox_end_turn(b->mailbox); /* the last messages, before their answers */
    brk_gate_close(b->gate);          /* the last decisions, before their answers */
    brk_proto_hold(b->proto, 0);
    brk_proto_flush(b->proto);
    s_log_stats(b, "stopped");
    brk_metrics_close(brk_gate_metrics(b->gate)); /* its handles must not keep the loop alive */
    uv_timer_stop(&b->tick);
    uv_close((uv_handle_t *)&b->tick, NULL);
    uv_close((uv_handle_t *)&b->grace, NULL);
    for (int i = 0; i < 3; i++)
        uv_close((uv_handle_t *)&b->sig[i], NULL);
    brk_zsock_destroy(&b->zs);
    brk_proto_set_zsock(b->proto, NULL);
    /*
     * The last answers are on their way through libzmq to the relays: the gateway goes on
     * relaying until it has been quiet for a moment (at most LINGER_MS), then closes.
     */
    b->linger_started = uv_now(b->loop);
    uv_timer_start(&b->linger, s_on_linger, 20, 20);
}

static void
s_on_grace(uv_timer_t *t)
{
    s_broker_t *b = t->data;
    if (brk_services_in_flight(b->svc) == 0 ||
        ab_now_ms() - b->stop_started >= b->cfg.shutdown_grace_ms)
        s_finish(b);
}

static void
s_on_signal(uv_signal_t *h, int signum)
{
    s_broker_t *b = h->data;
    if (signum == SIGHUP) {
        brk_gate_reload(b->gate); /* the policy; an error keeps the old one */
        brk_quota_set_policy(b->limits, brk_gate_policy(b->gate));
        if (!b->tls) {
            brk_log(BRK_LOG_INFO, "event=reload result=\"no tls:// listener: no certificates to "
                                  "reload\"");
            return;
        }
        char err[512];
        int closed = brk_tls_gateway_reload(b->tls, err, sizeof err);
        if (closed < 0)
            brk_log(BRK_LOG_ERROR, "event=reload result=failed reason=\"%s\" kept=old", err);
        else
            brk_log(BRK_LOG_INFO, "event=reload result=ok sessions_closed=%d", closed);
        return;
    }
    if (b->stopping) {
        brk_log(BRK_LOG_WARN, "event=shutdown_now signal=%d", signum);
        s_finish(b);
        return;
    }
    b->stopping = 1;
    b->stop_started = ab_now_ms();
    brk_zap_refuse_all(b->zap);
    if (b->tls)
        brk_tls_gateway_stop_listening(b->tls);
    brk_services_drain(b->svc);
    brk_mailbox_drain(b->mailbox);
    brk_log(BRK_LOG_INFO, "event=shutdown signal=%d in_flight=%zu grace_ms=%llu", signum,
            brk_services_in_flight(b->svc), (unsigned long long)b->cfg.shutdown_grace_ms);
    if (brk_services_in_flight(b->svc) == 0)
        s_finish(b);
    else
        uv_timer_start(&b->grace, s_on_grace, 20, 20);
}

/* Creates and locks the data directory; returns the lock's fd or -1 after saying why. */
static int
s_lock_data(const char *dir)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "amtsbote-broker: cannot create data directory %s: %s\n", dir,
                strerror(errno));
        return -1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/broker.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "amtsbote-broker: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        fprintf(stderr,
                "amtsbote-broker: data directory %s is in use by another broker (%s is locked)\n",
                dir, path);
        close(fd);
        return -1;
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) == 0 && write(fd, pid, (size_t)n) < 0)
        brk_log(BRK_LOG_WARN, "event=lock_write_failed path=%s", path);
    return fd;
}

static int
s_setopt_int(void *sock, int opt, int v, const char *name)
{
    if (zmq_setsockopt(sock, opt, &v, sizeof v) != 0) {
        fprintf(stderr, "amtsbote-broker: cannot set %s: %s\n", name, zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

/*
 * The TLS gateway's relays connect to an internal endpoint on loopback with the NULL mechanism
 * (options apply per bind, so the plain listeners above keep PLAIN); the ZAP handler accepts a
 * relay only from an address the gateway registered for a verified session.
 */
static int
s_open_tls(s_broker_t *b)
{
    char err[512], internal[256];
    size_t len = sizeof internal;
    if (s_setopt_int(b->router, ZMQ_PLAIN_SERVER, 0, "ZMQ_PLAIN_SERVER") ||
        zmq_bind(b->router, "tcp://127.0.0.1:*") != 0 ||
        zmq_getsockopt(b->router, ZMQ_LAST_ENDPOINT, internal, &len) != 0) {
        fprintf(stderr, "amtsbote-broker: cannot bind the internal endpoint: %s\n",
                zmq_strerror(zmq_errno()));
        return -1;
    }
    int port = atoi(strrchr(internal, ':') + 1);
    brk_log(BRK_LOG_INFO, "event=internal_endpoint uri=%s", internal);
    b->tls = brk_tls_gateway_new(b->loop, &b->cfg, b->zap, port, err, sizeof err);
    if (!b->tls) {
        fprintf(stderr, "amtsbote-broker: TLS: %s\n", err);
        return -1;
    }
    brk_tls_gateway_on_refused(b->tls, s_on_tls_refused, b);
    brk_tls_gateway_on_session_end(b->tls, s_on_session_end, b);
    brk_tls_gateway_set_limits(b->tls, b->limits);
    for (size_t i = 0; i < b->cfg.nlisten; i++) {
        const char *uri = b->cfg.listen[i];
        char bound[256];
        if (strncmp(uri, "tls://", 6) != 0)
            continue;
        if (brk_tls_gateway_listen(b->tls, uri, bound, sizeof bound, err, sizeof err) != 0) {
            fprintf(stderr, "amtsbote-broker: %s\n", err);
            return -1;
        }
        printf("listening on %s\n", bound);
        brk_log(BRK_LOG_INFO, "event=listening uri=%s", bound);
    }
    return 0;
}

static int
s_open_router(s_broker_t *b)
{
    b->router = zmq_socket(b->zctx, ZMQ_ROUTER);
    if (!b->router)
        return -1;
    int64_t maxmsg = (int64_t)b->cfg.max_payload * 2;
    if (s_setopt_int(b->router, ZMQ_ROUTER_MANDATORY, 1, "ZMQ_ROUTER_MANDATORY") ||
        s_setopt_int(b->router, ZMQ_PLAIN_SERVER, 1, "ZMQ_PLAIN_SERVER") ||
        s_setopt_int(b->router, ZMQ_SNDHWM, 100000, "ZMQ_SNDHWM") ||
        s_setopt_int(b->router, ZMQ_RCVHWM, 100000, "ZMQ_RCVHWM") ||
        s_setopt_int(b->router, ZMQ_LINGER, 2000, "ZMQ_LINGER") ||
        s_setopt_int(b->router, ZMQ_HEARTBEAT_IVL, (int)b->cfg.heartbeat_ms, "ZMQ_HEARTBEAT_IVL") ||
        s_setopt_int(b->router, ZMQ_HEARTBEAT_TIMEOUT, (int)b->cfg.heartbeat_timeout_ms,
                     "ZMQ_HEARTBEAT_TIMEOUT") ||
        s_setopt_int(b->router, ZMQ_HEARTBEAT_TTL, (int)b->cfg.heartbeat_timeout_ms,
                     "ZMQ_HEARTBEAT_TTL"))
        return -1;
    if (zmq_setsockopt(b->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0 ||
        zmq_setsockopt(b->router, ZMQ_ZAP_DOMAIN, BRK_ZAP_DOMAIN, strlen(BRK_ZAP_DOMAIN)) != 0)
        return -1;
    int tls = 0;
    for (size_t i = 0; i < b->cfg.nlisten; i++) {
        const char *uri = b->cfg.listen[i];
        if (!strncmp(uri, "tls://", 6)) {
            tls = 1;
            continue;
        }
        if (zmq_bind(b->router, uri) != 0) {
            fprintf(stderr, "amtsbote-broker: cannot listen on %s: %s\n", uri,
                    zmq_strerror(zmq_errno()));
            return -1;
        }
        /* the endpoint as bound: a port of '*' is the one the system picked */
        char bound[256];
        size_t len = sizeof bound;
        if (zmq_getsockopt(b->router, ZMQ_LAST_ENDPOINT, bound, &len) != 0)
            snprintf(bound, sizeof bound, "%s", uri);
        printf("listening on %s\n", bound);
        brk_log(BRK_LOG_INFO, "event=listening uri=%s", bound);
    }
    return tls ? s_open_tls(b) : 0;
}

/*
 * Each TLS session takes three descriptors (the client's, the relay's, and libzmq's end of the
 * relay): raise the soft limit to the hard one, and say when max_connections cannot fit.
 */
static void
s_raise_fd_limit(const brk_config_t *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    int tls = 0;
    for (size_t i = 0; i < cfg->nlisten; i++)
        tls |= !strncmp(cfg->listen[i], "tls://", 6);
    if (tls && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 3 * cfg->max_connections + 64)
        brk_log(BRK_LOG_WARN,
                "event=fd_limit open_files=%llu max_connections=%llu reason=\"each TLS session "
                "needs 3 descriptors; raise the limit or lower max_connections\"",
                (unsigned long long)rl.rlim_cur, (unsigned long long)cfg->max_connections);
}

int
main(int argc, char **argv)
{
    s_broker_t b;
    memset(&b, 0, sizeof b);
    b.lock_fd = -1;
    int rc = brk_config_load(&b.cfg, argc, argv, stderr);
    if (rc != 0) {
        brk_config_free(&b.cfg);
        return rc > 0 ? 0 : 2;
    }
    brk_log_set_level(brk_log_level_parse(b.cfg.log_level));
    signal(SIGPIPE, SIG_IGN);
    if (b.cfg.export_dir) {
        /* the exit strategy: the store's contents in the open format, with the broker stopped */
        char xerr[4096];
        if (!b.cfg.data) {
            fprintf(stderr, "amtsbote-broker: --export needs --data DIR: the data directory to "
                            "export\n");
            brk_config_free(&b.cfg);
            return 2;
        }
        int xrc = brk_export_run(b.cfg.data, b.cfg.export_dir, stdout, xerr, sizeof xerr);
        if (xrc != 0)
            fprintf(stderr, "amtsbote-broker: --export: %s\n", xerr);
        brk_config_free(&b.cfg);
        return xrc == 0 ? 0 : xrc == AB_EINVAL ? 2 : 1;
    }
    s_raise_fd_limit(&b.cfg);
    int exit_code = 1;

    if (b.cfg.data && (b.lock_fd = s_lock_data(b.cfg.data)) < 0)
        goto out;
    if (b.cfg.insecure_plain_identities)
        brk_log(BRK_LOG_WARN, "event=insecure_mode reason=\"plain identities are believed "
                              "(--insecure-plain-identities); for development only\"");

    char err[1024];
    if (!b.cfg.data)
        brk_log(BRK_LOG_WARN, "event=no_data_dir reason=\"without --data the store is in memory: "
                              "registered schemas are lost at exit\"");
    if (!(b.store = brk_store_open(b.cfg.data, err, sizeof err))) {
        fprintf(stderr, "amtsbote-broker: store: %s\n", err);
        goto out;
    }
    brk_store_set_cache(b.store, b.cfg.store_cache_bytes);
    if (!(b.registry = brk_registry_new(&b.cfg, b.store, err, sizeof err))) {
        fprintf(stderr, "amtsbote-broker: schema registry: %s\n", err);
        goto out;
    }
    if (!(b.gate = brk_gate_new(&b.cfg, err, sizeof err))) {
        fprintf(stderr, "amtsbote-broker: %s\n", err);
        goto out;
    }
    brk_registry_set_push_check(b.registry, brk_gate_push_check, b.gate);
    if (!(b.limits = brk_quota_new(&b.cfg))) {
        fprintf(stderr, "amtsbote-broker: out of memory\n");
        goto out;
    }
    brk_quota_set_policy(b.limits, brk_gate_policy(b.gate));
    brk_registry_stats_t rs;
    brk_registry_stats(b.registry, &rs);
    brk_log(BRK_LOG_INFO, "event=registry_loaded files=%zu types=%zu", rs.files, rs.types);

    b.loop = uv_default_loop();
    b.zctx = zmq_ctx_new();
    if (!b.zctx || zmq_ctx_set(b.zctx, ZMQ_IO_THREADS, (int)b.cfg.io_threads) != 0) {
        fprintf(stderr, "amtsbote-broker: cannot create the ZeroMQ context\n");
        goto out;
    }
    /* The ZAP handler is bound before any listener: no connection is ever unauthenticated. */
    b.zap = brk_zap_new(b.loop, b.zctx, &b.cfg);
    if (!b.zap)
        goto out;
    brk_zap_on_accept(b.zap, s_on_accept, &b);
    if (s_open_router(&b) != 0)
        goto out;
    b.proto = brk_proto_new(b.router, &b.cfg);
    b.io.send = brk_proto_send;
    b.io.send_bytes = brk_proto_send_bytes;
    b.io.ctx = b.proto;
    b.io.payload_bytes = s_payload_bytes;
    b.svc = brk_services_new(&b.cfg, &b.io);
    if (b.proto)
        brk_proto_set_limits(b.proto, b.limits);
    if (b.proto && b.tls)
        brk_proto_on_rate_limited(b.proto, s_pause_participant, b.tls);
    b.mio.send = brk_proto_send;
    b.mio.send_raw = brk_proto_send_raw;
    b.mio.ctx = b.proto;
    if (!(b.mailbox = brk_mailbox_new(&b.cfg, &b.mio, b.store, err, sizeof err))) {
        fprintf(stderr, "amtsbote-broker: mailboxes: %s\n", err);
        goto out;
    }
    brk_mailbox_set_gate(b.mailbox, brk_gate_services(b.gate));
    brk_mailbox_set_registry(b.mailbox, b.registry);
    brk_metrics_add_check(brk_gate_metrics(b.gate), "store", s_check_store, &b);
    brk_gate_set_hold(b.gate, b.loop, s_queued, s_release, &b);
    if (b.svc) {
        brk_services_set_registry(b.svc, b.registry);
        brk_services_set_limits(b.svc, b.limits);
        brk_services_set_gate(b.svc, brk_gate_services(b.gate));
        brk_services_set_extension(b.svc, brk_mailbox_method, brk_mailbox_attached, b.mailbox);
    }
    brk_metrics_add_source(brk_gate_metrics(b.gate), s_metrics_source, &b);
    brk_metrics_set_page(brk_gate_metrics(b.gate), s_page, &b);
    b.zs = brk_zsock_new(b.loop, b.router, ROUTER_BUDGET, s_read_router, s_after_batch, &b);
    if (!b.proto || !b.svc || !b.zs)
        goto out;
    brk_proto_set_zsock(b.proto, b.zs);
    brk_proto_on_gone(b.proto, s_on_peer_gone, &b);
    brk_proto_track_sessions(b.proto, b.tls != NULL);

    uv_timer_init(b.loop, &b.tick);
    uv_timer_init(b.loop, &b.grace);
    uv_timer_init(b.loop, &b.linger);
    b.tick.data = b.grace.data = b.linger.data = &b;
    uv_timer_start(&b.tick, s_on_tick, 0, 0);
    int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(b.loop, &b.sig[i]);
        b.sig[i].data = &b;
        uv_signal_start(&b.sig[i], s_on_signal, sigs[i]);
    }
    if (brk_gate_listen(b.gate, b.loop, err, sizeof err) != 0) {
        fprintf(stderr, "amtsbote-broker: --metrics: %s\n", err);
        goto out;
    }
    brk_log(BRK_LOG_INFO, "event=ready version=%s heartbeat_ms=%llu default_deadline_ms=%llu",
            AMTSBOTE_VERSION, (unsigned long long)b.cfg.heartbeat_ms,
            (unsigned long long)b.cfg.default_deadline_ms);
    printf("ready\n");
    fflush(stdout);

    uv_run(b.loop, UV_RUN_DEFAULT);
    exit_code = 0;

out:
    brk_tls_gateway_destroy(&b.tls);
    brk_zsock_destroy(&b.zs);
    brk_zap_destroy(&b.zap);
    if (b.gate) {
        brk_metrics_close(brk_gate_metrics(b.gate));
        brk_gate_close(b.gate);
    }
    if (b.loop)
        uv_run(b.loop, UV_RUN_DEFAULT); /* let closed handles finish */
    brk_services_destroy(&b.svc);
    if (b.mailbox)
        brk_mailbox_end_turn(b.mailbox);
    brk_mailbox_destroy(&b.mailbox);
    brk_gate_destroy(&b.gate); /* flushes the audit log */
    brk_quota_destroy(&b.limits);
    if (b.loop)
        uv_run(b.loop, UV_RUN_DEFAULT); /* the metrics' memory is freed in close callbacks */
    brk_registry_destroy(&b.registry);
    brk_store_close(&b.store);
    brk_proto_destroy(&b.proto);
    if (b.router)
        zmq_close(b.router);
    if (b.zctx)
        zmq_ctx_term(b.zctx);
    if (b.loop)
        uv_loop_close(b.loop);
    if (b.lock_fd >= 0)
        close(b.lock_fd);
    brk_config_free(&b.cfg);
    return exit_code;
}
