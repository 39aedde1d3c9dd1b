/*
 * mailbox.c - mailboxes, receipts, durable subscriptions, events: see mailbox.h.
 *
 * Memory holds an index of everything waiting (sequence, size, times, attempts) and, within
 * cache_bytes, the delivery header and payload of recent records; the store holds the rest.
 * A mailbox and a durable subscription are the same structure, a "box": a queue of entries in
 * sequence order, waiting or in flight to one of the connections attached with credit.
 *
 * A turn's changes are made in memory at once but stay invisible to deliveries until the
 * commit: new entries are marked S_NEW (the pump stops at them), removed ones are kept as
 * S_GONE. The turn's list of operations says how to finish (commit) or undo (rollback) each.
 */
#include "mailbox.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <uthash.h>
#include <zmq.h>

#include "heap.h"
#include "log.h"
#include "trie.h"

#define S_EVENT 13 /* entry kind of an event reference (KIND_EVENT) */
#define DEFAULT_SUB_CREDIT 100
#define PUMP_BUDGET 4096 /* deliveries per box per turn: one busy box does not starve others */
#define MAX_ATTACH_PER_CONN 64
#define MAX_ESUBS_PER_CONN 256
#define RETENTION_EVERY_MS 1000
#define PURGE_EVERY_MS 60000
#define PROBE_EVERY_MS 1000 /* a failed store is tried again this often */

enum { S_LIVE = 0, S_NEW, S_GONE };

/* Why a receipt says EXPIRED or FAILED; its header is made again from this at each delivery. */
enum { S_WHY_NONE = 0, S_WHY_MAX_DELIVERIES, S_WHY_DAMAGED, S_WHY_TTL_UNACKED, S_WHY_TTL_UNTAKEN };
static const char *const s_why_text[] = {
    [S_WHY_NONE] = NULL,
    [S_WHY_MAX_DELIVERIES] = "delivered the maximum number of times without an acknowledgement",
    [S_WHY_DAMAGED] = "the broker's stored copy is damaged (checksum mismatch)",
    [S_WHY_TTL_UNACKED] = "its time to live ended before the recipient acknowledged it",
    [S_WHY_TTL_UNTAKEN] = "its time to live ended before the recipient took it",
};
enum { WHY_ACKED = 1, WHY_EXPIRED, WHY_DEAD, WHY_DROPPED };

typedef struct s_box s_box_t;
typedef struct s_conn s_conn_t;
typedef struct s_attach s_attach_t;
typedef struct s_entry s_entry_t;
typedef struct s_event s_event_t;

/* A delivery header and payload kept in memory (shared by the entries of one event). */
typedef struct s_blob {
    uint32_t refs;
    uint32_t hdr_len;
    size_t cost;
    zmq_msg_t payload;
    uint8_t hdr[];
} s_blob_t;

struct s_entry {
    uint64_t seq;
    s_box_t *box;
    s_entry_t *prev, *next; /* in box's waiting queue, or in holder's in-flight list */
    s_attach_t *holder;     /* NULL: waiting */
    ab_heap_node_t exp;     /* .at: Unix ms when it expires */
    ab_heap_node_t ack;     /* .at: monotonic ms (ab_now_ms) when it is delivered again */
    uint8_t kind;           /* BRK_MAIL_MESSAGE, BRK_MAIL_RECEIPT, S_EVENT */
    uint8_t state;          /* S_LIVE, S_NEW, S_GONE */
    uint8_t in_exp, in_ack;
    uint8_t why; /* S_GONE: WHY_* */
    uint32_t attempts;
    uint32_t size;
    uint64_t accepted_ms;
    uint64_t delivered_ms; /* first delivery, Unix ms; 0: not yet */
    s_box_t *from;         /* BRK_MAIL_MESSAGE: the sender's mailbox, where its receipt goes */
    s_box_t *about_box;    /* BRK_MAIL_RECEIPT made in this run: the message's recipient */
    uint8_t about[AB_MESSAGE_ID_LEN]; /* and the message's id */
    uint8_t rstatus, rwhy;            /* ReceiptStatus and S_WHY_* (0: read the store) */
    uint8_t msg_id[AB_MESSAGE_ID_LEN];
    s_blob_t *blob; /* NULL: read the store */
    s_event_t *ev;  /* S_EVENT */
    UT_hash_handle hh;
    UT_hash_handle hd; /* BRK_MAIL_MESSAGE: in the mailboxes' dedup index, by s_dkey_t */
    struct s_dkey {
        s_box_t *from;
        uint8_t id[AB_MESSAGE_ID_LEN];
    } dkey;
};
typedef struct s_dkey s_dkey_t;

/* An event kept for durable subscriptions. */
struct s_event {
    uint64_t seq;
    uint64_t published_ms;
    uint32_t size;
    uint32_t refs; /* entries referring to it */
    s_blob_t *blob;
    s_event_t *prev, *next; /* in sequence order */
};

struct s_attach {
    s_conn_t *conn;
    s_box_t *box;
    uint32_t credit;
    uint32_t inflight;
    s_entry_t *head, *tail; /* in flight to it */
    s_attach_t *next_in_box, *next_in_conn;
};

/* What the trie holds: durable subscriptions (boxes) and ephemeral ones, told apart by a tag
 * that both begin with. */
enum { TAG_BOX = 1, TAG_ESUB = 2 };

/* An ephemeral subscription: a value in the trie. */
typedef struct s_esub {
    uint8_t tag; /* TAG_ESUB */
    s_conn_t *conn;
    char pattern[AB_MAX_NAME + 1];
    struct s_esub *next;
} s_esub_t;

struct s_conn {
    brk_peer_t peer;
    uint64_t published_mark; /* the last PUBLISH sent to it: once per connection */
    char participant[AB_MAX_NAME + 1];
    uint64_t last_seen;
    uint64_t pending; /* payload bytes delivered to it and not acknowledged */
    s_attach_t *attach;
    s_esub_t *esubs;
    size_t nattach, nesubs;
    UT_hash_handle hh;
};

#define BOX_KEY_MAX (2 * AB_MAX_NAME + 2)

struct s_box {
    uint8_t tag;           /* TAG_BOX */
    char key[BOX_KEY_MAX]; /* participant, or participant '/' subscription name */
    char participant[AB_MAX_NAME + 1];
    char *sub;     /* a durable subscription's name, or NULL for a mailbox */
    char *pattern; /* its pattern */
    int is_sub;
    s_entry_t *head, *tail; /* waiting, in sequence order */
    s_entry_t *byseq;       /* every entry, waiting or in flight, by sequence */
    size_t messages;        /* BRK_MAIL_MESSAGE entries (the quota's count) */
    uint64_t bytes;         /* and their payload bytes */
    size_t receipts;
    s_attach_t *attached;
    s_attach_t *rr;                /* next attachment to get a delivery */
    uint64_t acked_upto, last_seq; /* durable subscription */
    int acked_dirty;               /* in the mailboxes' `acked` list */
    s_box_t *next_acked;
    int dirty;
    s_box_t *next_dirty;
    int reloaded; /* s_reload(): found in the store */
    UT_hash_handle hh;
};

enum { OP_REPLY = 1, OP_NEW, OP_GONE, OP_SUB_NEW };

typedef struct s_op {
    uint8_t type;
    uint8_t corr_len;
    uint8_t is_send;
    uint8_t published;
    s_entry_t *e;
    s_box_t *box;
    brk_peer_t peer;
    uint8_t corr[64];
    uint8_t msg_id[AB_MESSAGE_ID_LEN];
    uint64_t ts, seq;
    char participant[AB_MAX_NAME + 1];
    char target[AB_MAX_NAME + 1];
} s_op_t;

struct brk_mailbox {
    const brk_config_t *cfg;
    const brk_mailbox_io_t *io;
    brk_store_t *store;
    brk_registry_t *registry;
    const brk_services_gate_t *gate;
    s_box_t *boxes;
    s_entry_t *waiting; /* every message waiting, by (sender, message id): the dedup index */
    s_conn_t *conns;
    brk_trie_t *trie;
    ab_heap_t exp, ack;
    uint64_t next_seq;
    s_op_t *ops;
    size_t nops, cap_ops;
    s_box_t *dirty;
    s_event_t *ev_head, *ev_tail;
    size_t nevents;
    uint64_t event_bytes;
    uint64_t cache_used;
    uint64_t next_retention, next_purge, next_sweep;
    int draining;
    s_box_t *acked; /* durable subscriptions whose position moved in this turn */
    int store_full; /* the last commit failed for want of space: not ready until one succeeds */
    uint64_t pump_after; /* after a failed commit, deliveries wait (no redelivery storm) */
    uint64_t publish_count;
    uint64_t disk_checked; /* when the free space was last looked at (monotonic ms) */
    uint64_t disk_free;
    int disk_low;
    int store_failed;
    char store_err[512];
    uint64_t next_probe; /* store_failed: when brk_store_recover() is tried next (monotonic) */
    uint32_t probes;
    brk_ratelimit_t log_refused;
    brk_mailbox_stats_t st;
};

static uint64_t
s_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- blobs (the cache) ---------------------------------------------------------------------- */

/* Keeps a delivery header and (a reference to) the payload in memory, within cache_bytes.
 * Returns NULL when over budget or out of memory: the store is read instead. */
static s_blob_t *
s_blob_new(brk_mailbox_t *self, const uint8_t *hdr, size_t hdr_len, zmq_msg_t *payload)
{
    size_t plen = payload ? zmq_msg_size(payload) : 0;
    size_t cost = sizeof(s_blob_t) + hdr_len + plen;
    if (self->cache_used + cost > self->cfg->cache_bytes)
        return NULL;
    s_blob_t *b = malloc(sizeof *b + hdr_len);
    if (!b)
        return NULL;
    b->refs = 1;
    b->hdr_len = (uint32_t)hdr_len;
    b->cost = cost;
    memcpy(b->hdr, hdr, hdr_len);
    zmq_msg_init(&b->payload);
    if (payload && zmq_msg_copy(&b->payload, payload) != 0) {
        zmq_msg_close(&b->payload);
        free(b);
        return NULL;
    }
    self->cache_used += cost;
    return b;
}

static void
s_blob_unref(brk_mailbox_t *self, s_blob_t **b_p)
{
    s_blob_t *b = *b_p;
    *b_p = NULL;
    if (!b || --b->refs > 0)
        return;
    self->cache_used -= b->cost;
    zmq_msg_close(&b->payload);
    free(b);
}

/* ---- boxes and entries ---------------------------------------------------------------------- */

/* Copies src into dst of cap bytes, cut if need be; returns the length copied. (The hot
 * paths copied names with snprintf, which showed in the profile.) */
static size_t
s_copy(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
    return n;
}

/* A box's key: participant, or participant '/' subscription name. */
static size_t
s_box_key(char key[BOX_KEY_MAX], const char *participant, const char *sub)
{
    size_t n = s_copy(key, AB_MAX_NAME + 1, participant);
    if (sub) {
        key[n++] = '/';
        n += s_copy(key + n, BOX_KEY_MAX - n, sub);
    }
    return n;
}

static s_box_t *
s_box_find(brk_mailbox_t *self, const char *participant, const char *sub)
{
    char key[BOX_KEY_MAX];
    size_t n = s_box_key(key, participant, sub);
    s_box_t *b = NULL;
    HASH_FIND(hh, self->boxes, key, n, b);
    return b;
}

static s_box_t *
s_box_get(brk_mailbox_t *self, const char *participant, const char *sub, const char *pattern)
{
    s_box_t *b = s_box_find(self, participant, sub);
    if (b)
        return b;
    b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->tag = TAG_BOX;
    s_box_key(b->key, participant, sub);
    s_copy(b->participant, sizeof b->participant, participant);
    if (sub) {
        b->is_sub = 1;
        b->sub = strdup(sub);
        b->pattern = strdup(pattern ? pattern : "");
        if (!b->sub || !b->pattern) {
            free(b->sub);
            free(b->pattern);
            free(b);
            return NULL;
        }
        self->st.durable_subscriptions++;
    } else {
        self->st.mailboxes++;
    }
    HASH_ADD(hh, self->boxes, key, strlen(b->key), b);
    return b;
}

static void
s_dirty(brk_mailbox_t *self, s_box_t *b)
{
    if (b->dirty)
        return;
    b->dirty = 1;
    b->next_dirty = self->dirty;
    self->dirty = b;
}

/* A durable subscription's position moved: written at the end of the turn. */
static void
s_acked(brk_mailbox_t *self, s_box_t *b)
{
    if (b->acked_dirty)
        return;
    b->acked_dirty = 1;
    b->next_acked = self->acked;
    self->acked = b;
}

/* Inserts `e` into the waiting queue in sequence order (usually at one of the ends). */
static void
s_queue_insert(s_box_t *b, s_entry_t *e)
{
    e->holder = NULL;
    s_entry_t *after = b->tail;
    while (after && after->seq > e->seq)
        after = after->prev;
    e->prev = after;
    e->next = after ? after->next : b->head;
    if (e->next)
        e->next->prev = e;
    else
        b->tail = e;
    if (after)
        after->next = e;
    else
        b->head = e;
}

/* Takes `e` out of a doubly linked list of entries (a box's waiting queue, or what one
 * attachment holds in flight). */
static void
s_list_unlink(s_entry_t **head, s_entry_t **tail, s_entry_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        *head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        *tail = e->prev;
    e->prev = e->next = NULL;
}

static void
s_queue_unlink(s_box_t *b, s_entry_t *e)
{
    s_list_unlink(&b->head, &b->tail, e);
}

static void
s_flight_unlink(brk_mailbox_t *self, s_entry_t *e)
{
    s_attach_t *a = e->holder;
    s_list_unlink(&a->head, &a->tail, e);
    e->holder = NULL;
    a->inflight--;
    if (a->conn) {
        int was_full = a->conn->pending >= self->cfg->max_pending_bytes;
        a->conn->pending = a->conn->pending >= e->size ? a->conn->pending - e->size : 0;
        if (was_full && a->conn->pending < self->cfg->max_pending_bytes)
            for (s_attach_t *o = a->conn->attach; o; o = o->next_in_conn)
                s_dirty(self, o->box); /* its byte credit is free again */
    }
    self->st.in_flight--;
    if (e->in_ack) {
        ab_heap_remove(&self->ack, &e->ack);
        e->in_ack = 0;
    }
    s_dirty(self, a->box); /* its credit is free again */
}

/* Takes `e` out of wherever it is (queue or in flight) and out of the heaps and counts. */
static void
s_entry_detach(brk_mailbox_t *self, s_entry_t *e)
{
    if (e->holder)
        s_flight_unlink(self, e);
    else
        s_queue_unlink(e->box, e);
    HASH_DELETE(hh, e->box->byseq, e);
    if (e->in_exp) {
        ab_heap_remove(&self->exp, &e->exp);
        e->in_exp = 0;
    }
    if (e->kind == BRK_MAIL_MESSAGE) {
        HASH_DELETE(hd, self->waiting, e);
        e->box->messages--;
        e->box->bytes -= e->size;
        self->st.waiting--;
        self->st.waiting_bytes -= e->size;
    } else if (e->kind == BRK_MAIL_RECEIPT) {
        e->box->receipts--;
        self->st.receipts_waiting--;
    }
}

/* Puts `e` (detached) back: waiting in its box, in the heaps and counts. */
static void
s_entry_attach(brk_mailbox_t *self, s_entry_t *e)
{
    s_queue_insert(e->box, e);
    HASH_ADD(hh, e->box->byseq, seq, sizeof e->seq, e);
    if (e->exp.at && ab_heap_push(&self->exp, &e->exp) == 0)
        e->in_exp = 1;
    if (e->kind == BRK_MAIL_MESSAGE) {
        memset(&e->dkey, 0, sizeof e->dkey);
        e->dkey.from = e->from;
        memcpy(e->dkey.id, e->msg_id, AB_MESSAGE_ID_LEN);
        HASH_ADD(hd, self->waiting, dkey, sizeof e->dkey, e);
        e->box->messages++;
        e->box->bytes += e->size;
        self->st.waiting++;
        self->st.waiting_bytes += e->size;
    } else if (e->kind == BRK_MAIL_RECEIPT) {
        e->box->receipts++;
        self->st.receipts_waiting++;
    }
    s_dirty(self, e->box);
}

static void
s_event_unref(s_event_t *ev)
{
    if (ev && ev->refs > 0)
        ev->refs--;
}

static void
s_entry_free(brk_mailbox_t *self, s_entry_t *e)
{
    s_blob_unref(self, &e->blob);
    if (e->ev)
        s_event_unref(e->ev);
    free(e);
}

static s_entry_t *
s_entry_new(s_box_t *b, uint64_t seq, int kind, uint32_t size)
{
    s_entry_t *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->seq = seq;
    e->box = b;
    e->kind = (uint8_t)kind;
    e->size = size;
    return e;
}

/* ---- the turn's operations ------------------------------------------------------------------ */

static s_op_t *
s_op(brk_mailbox_t *self, int type)
{
    if (self->nops == self->cap_ops) {
        size_t cap = self->cap_ops ? 2 * self->cap_ops : 256;
        s_op_t *o = realloc(self->ops, cap * sizeof *o);
        if (!o)
            return NULL;
        self->ops = o;
        self->cap_ops = cap;
    }
    s_op_t *o = &self->ops[self->nops++];
    o->type = (uint8_t)type;
    o->e = NULL;
    o->box = NULL;
    o->is_send = 0;
    o->published = 0;
    return o;
}

static void
s_record(brk_mailbox_t *self, brk_event_kind_t kind, const uint8_t *id, const char *sender,
         const char *target, const char *provider, int outcome, const char *rule)
{
    if (!self->gate || !self->gate->record)
        return;
    brk_event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.kind = kind;
    ev.message_id = id;
    ev.message_id_len = id ? AB_MESSAGE_ID_LEN : 0;
    ev.sender = sender;
    ev.target = target;
    ev.provider = provider ? provider : "";
    ev.purpose = "";
    ev.outcome = outcome;
    ev.rule = rule ? rule : "";
    self->gate->record(self->gate->ctx, &ev);
}

/* ---- answers -------------------------------------------------------------------------------- */

static void s_send_error(brk_mailbox_t *self, const brk_peer_t *to, const uint8_t *corr,
                         size_t corr_len, const char *what, int err, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static void
s_send_error(brk_mailbox_t *self, const brk_peer_t *to, const uint8_t *corr, size_t corr_len,
             const char *what, int err, const char *fmt, ...)
{
    char text[AB_MAX_ERROR_TEXT];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    Amtsbote__V1__Error e = AMTSBOTE__V1__ERROR__INIT;
    e.code = (Amtsbote__V1__ErrorCode)ab_err_to_wire(err);
    e.text = text;
    h.version = AB_PROTOCOL_VERSION;
    h.kind = AMTSBOTE__V1__KIND__KIND_ERROR;
    h.correlation_id.data = (uint8_t *)corr;
    h.correlation_id.len = corr_len;
    h.error = &e;
    self->io->send(self->io->ctx, to, &h, NULL);
    uint64_t suppressed = 0;
    if (err != AB_EMAILBOX_FULL && brk_log_allow(&self->log_refused, &suppressed))
        brk_log(BRK_LOG_INFO, "event=mailbox_refused what=%s error=%s suppressed=%llu", what,
                ab_err_name(err), (unsigned long long)suppressed);
}

static void
s_send_reply(brk_mailbox_t *self, const brk_peer_t *to, const uint8_t *corr, size_t corr_len,
             const uint8_t *msg_id, uint64_t ts, uint64_t seq)
{
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    h.version = AB_PROTOCOL_VERSION;
    h.kind = AMTSBOTE__V1__KIND__KIND_REPLY;
    h.correlation_id.data = (uint8_t *)corr;
    h.correlation_id.len = corr_len;
    if (msg_id) {
        h.message_id.data = (uint8_t *)msg_id;
        h.message_id.len = AB_MESSAGE_ID_LEN;
    }
    h.timestamp_ms = ts;
    h.sequence = seq;
    self->io->send(self->io->ctx, to, &h, NULL);
}

/* An answer that waits for the commit. */
static void
s_reply_after_commit(brk_mailbox_t *self, const brk_peer_t *to, const uint8_t *corr,
                     size_t corr_len, const uint8_t *msg_id, uint64_t ts, uint64_t seq, int is_send,
                     const char *participant, const char *target)
{
    s_op_t *o = s_op(self, OP_REPLY);
    if (!o)
        return; /* out of memory: the sender times out and sends again (deduplicated) */
    o->peer = *to;
    o->corr_len = (uint8_t)(corr_len > sizeof o->corr ? sizeof o->corr : corr_len);
    if (o->corr_len)
        memcpy(o->corr, corr, o->corr_len);
    if (msg_id)
        memcpy(o->msg_id, msg_id, AB_MESSAGE_ID_LEN);
    else
        memset(o->msg_id, 0, AB_MESSAGE_ID_LEN);
    o->ts = ts;
    o->seq = seq;
    o->is_send = (uint8_t)is_send;
    s_copy(o->participant, sizeof o->participant, participant);
    s_copy(o->target, sizeof o->target, target);
}

/* ---- connections and credit ----------------------------------------------------------------- */

static s_conn_t *
s_conn_find(brk_mailbox_t *self, const brk_peer_t *peer)
{
    s_conn_t *c = NULL;
    HASH_FIND(hh, self->conns, peer->id, peer->len, c);
    return c;
}

static void s_conn_drop(brk_mailbox_t *self, s_conn_t *c, const char *why);

static s_conn_t *
s_conn_get(brk_mailbox_t *self, const brk_peer_t *peer, const char *participant, uint64_t now)
{
    s_conn_t *c = s_conn_find(self, peer);
    if (c && strcmp(c->participant, participant) != 0) {
        s_conn_drop(self, c, "its routing id was taken by another participant");
        c = NULL;
    }
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c)
            return NULL;
        c->peer = *peer;
        snprintf(c->participant, sizeof c->participant, "%s", participant);
        HASH_ADD(hh, self->conns, peer.id, c->peer.len, c);
    }
    c->last_seen = now;
    return c;
}

static void s_dead_letter(brk_mailbox_t *self, s_entry_t *e, int why);
static void s_sent(brk_mailbox_t *self, const s_entry_t *e, int state, uint64_t now);

/* An entry delivered and not acknowledged comes back: waiting again, or a dead letter. */
static void
s_return(brk_mailbox_t *self, s_entry_t *e)
{
    s_flight_unlink(self, e);
    if (e->kind == BRK_MAIL_MESSAGE && e->attempts >= self->cfg->max_deliveries) {
        /* s_dead_letter detaches from the queue: put it there first */
        s_queue_insert(e->box, e);
        s_dead_letter(self, e, S_WHY_MAX_DELIVERIES);
        return;
    }
    s_queue_insert(e->box, e);
    if (e->kind != S_EVENT)
        brk_store_mail_update(self->store, e->seq, e->attempts, 0);
}

static void
s_detach(brk_mailbox_t *self, s_attach_t *a)
{
    while (a->head)
        s_return(self, a->head);
    s_box_t *b = a->box;
    s_attach_t **pp = &b->attached;
    while (*pp && *pp != a)
        pp = &(*pp)->next_in_box;
    if (*pp)
        *pp = a->next_in_box;
    if (b->rr == a)
        b->rr = NULL;
    s_conn_t *c = a->conn;
    pp = &c->attach;
    while (*pp && *pp != a)
        pp = &(*pp)->next_in_conn;
    if (*pp)
        *pp = a->next_in_conn;
    c->nattach--;
    free(a);
}

static void
s_conn_drop(brk_mailbox_t *self, s_conn_t *c, const char *why)
{
    if (c->attach || c->esubs)
        brk_log(BRK_LOG_INFO,
                "event=consumer_gone participant=%s attachments=%zu subscriptions=%zu "
                "reason=\"%s\"",
                c->participant, c->nattach, c->nesubs, why);
    while (c->attach)
        s_detach(self, c->attach);
    while (c->esubs) {
        s_esub_t *s = c->esubs;
        c->esubs = s->next;
        brk_trie_remove(self->trie, s->pattern, s);
        self->st.ephemeral_subscriptions--;
        free(s);
    }
    HASH_DEL(self->conns, c);
    free(c);
}

static s_attach_t *
s_attach(brk_mailbox_t *self, s_conn_t *c, s_box_t *b, uint32_t credit)
{
    for (s_attach_t *a = c->attach; a; a = a->next_in_conn)
        if (a->box == b) {
            a->credit = credit;
            s_dirty(self, b);
            return a;
        }
    if (c->nattach >= MAX_ATTACH_PER_CONN)
        return NULL;
    s_attach_t *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->conn = c;
    a->box = b;
    a->credit = credit;
    a->next_in_box = b->attached;
    b->attached = a;
    a->next_in_conn = c->attach;
    c->attach = a;
    c->nattach++;
    s_dirty(self, b);
    return a;
}

/* ---- storing -------------------------------------------------------------------------------- */

/* Encodes a receipt's header into buf (AB_MAX_HEADER_BYTES); returns its length or -1. */
static int
s_receipt_header(uint8_t *buf, const uint8_t rid[AB_MESSAGE_ID_LEN],
                 const uint8_t about[AB_MESSAGE_ID_LEN], const char *recipient, int status, int why,
                 uint64_t now, uint64_t seq)
{
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    Amtsbote__V1__Error err = AMTSBOTE__V1__ERROR__INIT;
    h.version = AB_PROTOCOL_VERSION;
    h.kind = AMTSBOTE__V1__KIND__KIND_RECEIPT;
    h.message_id.data = (uint8_t *)rid;
    h.message_id.len = AB_MESSAGE_ID_LEN;
    h.correlation_id.data = (uint8_t *)about;
    h.correlation_id.len = AB_MESSAGE_ID_LEN;
    h.recipient = (char *)recipient;
    h.sender = (char *)recipient;
    h.receipt = (Amtsbote__V1__ReceiptStatus)status;
    h.timestamp_ms = now;
    h.sequence = seq;
    if (why > S_WHY_NONE && why <= S_WHY_TTL_UNTAKEN) {
        err.text = (char *)s_why_text[why];
        h.error = &err;
    }
    return ab_wire_encode(&h, buf, AB_MAX_HEADER_BYTES);
}

/* A receipt for the sender of `e` (a message), in the sender's mailbox. Its header is not
 * cached: it is made again from the entry at each delivery (receipts nobody reads would
 * otherwise fill the cache that the messages' payloads need). */
static void
s_receipt(brk_mailbox_t *self, const s_entry_t *e, int status, int why, uint64_t now)
{
    s_box_t *to = e->from;
    if (!to)
        return;
    uint64_t seq = ++self->next_seq;
    uint8_t rid[AB_MESSAGE_ID_LEN];
    ab_uuid7(rid);
    uint8_t buf[AB_MAX_HEADER_BYTES];
    int n = s_receipt_header(buf, rid, e->msg_id, e->box->participant, status, why, now, seq);
    if (n < 0)
        return;
    brk_store_mail_t m = {0};
    m.seq = seq;
    m.recipient = to->participant;
    m.kind = BRK_MAIL_RECEIPT;
    m.sender = e->box->participant;
    m.message_id = rid;
    m.message_id_len = sizeof rid;
    m.header = buf;
    m.header_len = (size_t)n;
    m.accepted_ms = now;
    if (brk_store_mail_put(self->store, &m) != 0)
        return;
    s_entry_t *r = s_entry_new(to, seq, BRK_MAIL_RECEIPT, 0);
    if (!r)
        return;
    r->accepted_ms = now;
    memcpy(r->msg_id, rid, sizeof rid);
    memcpy(r->about, e->msg_id, AB_MESSAGE_ID_LEN);
    r->about_box = e->box;
    r->rstatus = (uint8_t)status;
    r->rwhy = (uint8_t)why;
    r->state = S_NEW;
    s_entry_attach(self, r);
    s_op_t *o = s_op(self, OP_NEW);
    if (o)
        o->e = r;
}

/* Removes `e` for good in this turn (undone if the commit fails). */
static void
s_gone(brk_mailbox_t *self, s_entry_t *e, int why)
{
    s_entry_detach(self, e);
    e->state = S_GONE;
    e->why = (uint8_t)why;
    s_op_t *o = s_op(self, OP_GONE);
    if (o) {
        o->e = e;
    } else {
        s_entry_free(self, e); /* out of memory: the store still has it; back after a restart */
    }
}

static void
s_dead_letter(brk_mailbox_t *self, s_entry_t *e, int why)
{
    uint64_t now = s_wall_ms();
    brk_log(BRK_LOG_WARN, "event=dead_letter seq=%llu recipient=%s attempts=%u reason=\"%s\"",
            (unsigned long long)e->seq, e->box->participant, e->attempts, s_why_text[why]);
    brk_store_mail_update(self->store, e->seq, e->attempts, 1);
    s_sent(self, e, BRK_SENT_FAILED, now);
    s_receipt(self, e, AMTSBOTE__V1__RECEIPT_STATUS__FAILED, why, now);
    s_gone(self, e, WHY_DEAD);
}

static void
s_expire(brk_mailbox_t *self, s_entry_t *e, uint64_t now)
{
    brk_store_mail_delete(self->store, e->seq);
    s_sent(self, e, BRK_SENT_EXPIRED, now);
    s_receipt(self, e, AMTSBOTE__V1__RECEIPT_STATUS__EXPIRED,
              e->attempts ? S_WHY_TTL_UNACKED : S_WHY_TTL_UNTAKEN, now);
    s_gone(self, e, WHY_EXPIRED);
}

/* ---- handling ------------------------------------------------------------------------------- */

static int
s_allowed(brk_mailbox_t *self, const char *participant, const char *action, const char *resource,
          const ab_header_t *hdr, char *why, size_t cap, const char **rule)
{
    *rule = "";
    if (!self->gate || !self->gate->allow)
        return 0;
    return self->gate->allow(self->gate->ctx, participant, action, resource,
                             hdr && hdr->purpose ? hdr->purpose : "",
                             hdr ? (int)hdr->classification : 0, why, cap, rule);
}

static int
s_cleared(brk_mailbox_t *self, const char *participant, int classification)
{
    if (!classification || !self->gate || !self->gate->cleared)
        return 1;
    return self->gate->cleared(self->gate->ctx, participant, classification);
}

/* Whether the data directory's file system is below min_free_bytes (looked at every 100 ms). */
static int
s_disk_low(brk_mailbox_t *self)
{
    if (!self->cfg->data || !self->cfg->min_free_bytes)
        return 0;
    uint64_t now = ab_now_ms();
    if (now - self->disk_checked < 100 && self->disk_checked)
        return self->disk_low;
    self->disk_checked = now;
    struct statvfs sv;
    if (statvfs(self->cfg->data, &sv) != 0)
        return self->disk_low;
    /* free pages inside the database count too: after a full mailbox was drained its pages
     * stay in the file for new records, and the file system alone would stay "full" */
    self->disk_free =
        (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize + brk_store_reusable_bytes(self->store);
    int low = self->disk_free < self->cfg->min_free_bytes;
    if (low != self->disk_low)
        brk_log(low ? BRK_LOG_ERROR : BRK_LOG_INFO,
                "event=%s path=%s free_bytes=%llu min_free_bytes=%llu",
                low ? "disk_low" : "disk_ok", self->cfg->data, (unsigned long long)self->disk_free,
                (unsigned long long)self->cfg->min_free_bytes);
    self->disk_low = low;
    return low;
}

static int
s_store_unavailable(brk_mailbox_t *self, char *why, size_t cap)
{
    if (s_disk_low(self)) {
        snprintf(why, cap,
                 "the broker's data directory has %llu bytes free, less than its min_free_bytes "
                 "%llu; nothing was stored (acknowledgements still drain the mailboxes)",
                 (unsigned long long)self->disk_free,
                 (unsigned long long)self->cfg->min_free_bytes);
        return 1;
    }
    if (self->store_failed) {
        snprintf(why, cap, "the broker's store cannot write (%s); nothing was stored",
                 self->store_err);
        return 1;
    }
    char err[512];
    if (brk_store_writable(self->store, err, sizeof err) != 0) {
        snprintf(why, cap, "the broker's store cannot write (%s); nothing was stored", err);
        return 1;
    }
    return 0;
}

static const uint8_t *
s_bytes(void *payload, size_t *len)
{
    if (!payload) {
        *len = 0;
        return (const uint8_t *)"";
    }
    *len = zmq_msg_size(payload);
    return zmq_msg_data(payload);
}

/* The header a recipient or subscriber gets: what the sender said about its message, with the
 * sender stamped from its identity. */
static ab_header_t
s_forward_header(int kind, const ab_header_t *hdr, const char *sender, uint64_t now)
{
    ab_header_t d = AMTSBOTE__V1__HEADER__INIT;
    d.version = AB_PROTOCOL_VERSION;
    d.kind = (Amtsbote__V1__Kind)kind;
    d.message_id = hdr->message_id;
    d.sender = (char *)sender;
    d.schema = hdr->schema;
    d.purpose = hdr->purpose;
    d.classification = hdr->classification;
    d.n_headers = hdr->n_headers;
    d.headers = hdr->headers;
    d.trace = hdr->trace;
    d.timestamp_ms = now;
    return d;
}

/* A payload the registry refused: SCHEMA_INVALID with the reason and the field path. */
static void
s_send_verdict(brk_mailbox_t *self, const brk_peer_t *to, const uint8_t *corr, size_t corr_len,
               const brk_verdict_t *v)
{
    ab_header_t h = AMTSBOTE__V1__HEADER__INIT;
    Amtsbote__V1__Error e = AMTSBOTE__V1__ERROR__INIT;
    e.code = (Amtsbote__V1__ErrorCode)ab_err_to_wire(v->code);
    e.text = (char *)v->text;
    e.field = (char *)v->field;
    h.version = AB_PROTOCOL_VERSION;
    h.kind = AMTSBOTE__V1__KIND__KIND_ERROR;
    h.correlation_id.data = (uint8_t *)corr;
    h.correlation_id.len = corr_len;
    h.error = &e;
    self->io->send(self->io->ctx, to, &h, NULL);
}

/* Whether `from` sent message `id` before: waiting (in memory) or ended within the dedup window
 * (the sent table). Returns 1 with when it was accepted and its sequence, 0, or -1 when the store
 * cannot be read. */
static int
s_seen(brk_mailbox_t *self, s_box_t *from, const uint8_t *id, uint64_t *at, uint64_t *seq)
{
    s_dkey_t k;
    memset(&k, 0, sizeof k);
    k.from = from;
    memcpy(k.id, id, AB_MESSAGE_ID_LEN);
    s_entry_t *e = NULL;
    HASH_FIND(hd, self->waiting, &k, sizeof k, e);
    if (e) {
        *at = e->accepted_ms;
        *seq = e->seq;
        return 1;
    }
    brk_store_sent_t row;
    char err[512];
    int rc = brk_store_sent_get(self->store, from->participant, id, &row, err, sizeof err);
    if (rc < 0) {
        brk_log(BRK_LOG_ERROR, "event=store_read_failed op=dedup reason=\"%s\"", err);
        return -1;
    }
    if (rc == 1)
        return 0;
    *at = row.accepted_ms;
    *seq = row.seq;
    return 1;
}

/* How message `e` ended, in the sent table (dedup and MessageStatus after it left the mailbox). */
static void
s_sent(brk_mailbox_t *self, const s_entry_t *e, int state, uint64_t now)
{
    if (!e->from)
        return;
    brk_store_sent_t s;
    memset(&s, 0, sizeof s);
    s.sender = e->from->participant;
    s.message_id = e->msg_id;
    s.recipient = e->box->participant;
    s.seq = e->seq;
    s.size = e->size;
    s.accepted_ms = e->accepted_ms;
    s.delivered_ms = e->delivered_ms;
    s.ended_ms = now;
    s.state = state;
    s.attempts = e->attempts;
    brk_store_sent_put(self->store, &s);
}

static void
s_handle_send(brk_mailbox_t *self, s_conn_t *c, const ab_header_t *hdr, void *payload,
              const uint8_t *corr, size_t corr_len)
{
    char why[AB_MAX_ERROR_TEXT];
    const brk_peer_t *from = &c->peer;
    const char *rule = "";
    int rc;
    if (hdr->message_id.len != AB_MESSAGE_ID_LEN) {
        self->st.refused++;
        s_send_error(self, from, corr, corr_len, "send", AB_EINVAL,
                     "SEND needs a message_id of %d bytes (a UUIDv7): it is the key that makes a "
                     "repeated SEND safe",
                     AB_MESSAGE_ID_LEN);
        return;
    }
    char pwhy[AB_WHY_LEN];
    if (ab_wire_check_participant(hdr->recipient, pwhy) != 0) {
        self->st.refused++;
        s_send_error(self, from, corr, corr_len, "send", AB_EINVAL, "recipient: %s", pwhy);
        return;
    }
    uint64_t ttl = hdr->deadline_ms ? hdr->deadline_ms : self->cfg->message_ttl_ms;
    if (ttl > self->cfg->max_message_ttl_ms) {
        self->st.refused++;
        s_send_error(self, from, corr, corr_len, "send", AB_EINVAL,
                     "deadline_ms (time to live) %llu exceeds this broker's max_message_ttl_ms "
                     "%llu",
                     (unsigned long long)ttl, (unsigned long long)self->cfg->max_message_ttl_ms);
        return;
    }
    if (self->draining) {
        s_send_error(self, from, corr, corr_len, "send", AB_EUNAVAILABLE,
                     "the broker is shutting down; nothing was stored, send again later");
        return;
    }
    if (s_store_unavailable(self, why, sizeof why)) {
        self->st.unavailable++;
        s_send_error(self, from, corr, corr_len, "send", AB_EUNAVAILABLE, "%s", why);
        return;
    }
    if ((rc = s_allowed(self, c->participant, "send", hdr->recipient, hdr, why, sizeof why,
                        &rule)) != 0 ||
        (rc = s_allowed(self, hdr->recipient, "receive", c->participant, hdr, why, sizeof why,
                        &rule)) != 0) {
        self->st.refused++;
        s_record(self, BRK_EV_REFUSED, hdr->message_id.data, c->participant, hdr->recipient, "", rc,
                 rule);
        s_send_error(self, from, corr, corr_len, "send", rc, "%s", why);
        return;
    }
    if (!s_cleared(self, hdr->recipient, (int)hdr->classification)) {
        self->st.refused++;
        s_record(self, BRK_EV_REFUSED, hdr->message_id.data, c->participant, hdr->recipient, "",
                 AB_EFORBIDDEN, "clearance");
        s_send_error(self, from, corr, corr_len, "send", AB_EFORBIDDEN,
                     "the recipient %s is not cleared for the message's classification",
                     hdr->recipient);
        return;
    }
    size_t len;
    const uint8_t *data = s_bytes(payload, &len);
    if (self->registry && hdr->schema && *hdr->schema) {
        brk_verdict_t v;
        if (brk_registry_check_message(self->registry, hdr->schema, data, len, &v) != 0) {
            self->st.refused++;
            s_record(self, BRK_EV_REFUSED, hdr->message_id.data, c->participant, hdr->recipient, "",
                     v.code, "");
            s_send_verdict(self, from, corr, corr_len, &v);
            return;
        }
    }
    s_box_t *to = s_box_get(self, hdr->recipient, NULL, NULL);
    s_box_t *me = s_box_get(self, c->participant, NULL, NULL);
    if (!to || !me) {
        s_send_error(self, from, corr, corr_len, "send", AB_EUNAVAILABLE, "out of memory");
        return;
    }
    uint64_t now = s_wall_ms();
    /* a message id this sender used before: accepted again, nothing stored (dedup) */
    uint64_t seen_at = 0, seen_seq = 0;
    int known = s_seen(self, me, hdr->message_id.data, &seen_at, &seen_seq);
    if (known < 0) {
        self->st.unavailable++;
        s_send_error(self, from, corr, corr_len, "send", AB_EUNAVAILABLE,
                     "the broker's store cannot be read; nothing was stored, send again later");
        return;
    }
    if (known) {
        self->st.duplicates++;
        s_reply_after_commit(self, from, corr, corr_len, hdr->message_id.data, seen_at, seen_seq, 1,
                             c->participant, hdr->recipient);
        return;
    }
    if (to->messages + 1 > self->cfg->mailbox_max_messages ||
        to->bytes + len > self->cfg->mailbox_max_bytes) {
        self->st.mailbox_full++;
        s_record(self, BRK_EV_REFUSED, hdr->message_id.data, c->participant, hdr->recipient, "",
                 AB_EMAILBOX_FULL, "");
        s_send_error(self, from, corr, corr_len, "send", AB_EMAILBOX_FULL,
                     "the mailbox of %s is full (%zu messages, %llu bytes waiting; its quota is "
                     "%llu messages, %llu bytes): nothing was stored, send again later",
                     hdr->recipient, to->messages, (unsigned long long)to->bytes,
                     (unsigned long long)self->cfg->mailbox_max_messages,
                     (unsigned long long)self->cfg->mailbox_max_bytes);
        return;
    }
    uint64_t seq = self->next_seq + 1;
    self->next_seq = seq;
    /* the header the recipient gets, stored as it will be sent */
    ab_header_t d = s_forward_header(AMTSBOTE__V1__KIND__KIND_DELIVER, hdr, c->participant, now);
    d.recipient = hdr->recipient;
    d.sequence = seq;
    uint8_t buf[AB_MAX_HEADER_BYTES];
    int n = ab_wire_encode(&d, buf, sizeof buf);
    if (n < 0) {
        s_send_error(self, from, corr, corr_len, "send", AB_ETOO_LARGE,
                     "the header with its application headers is larger than %d bytes",
                     AB_MAX_HEADER_BYTES);
        return;
    }
    brk_store_mail_t m = {0};
    m.seq = seq;
    m.recipient = hdr->recipient;
    m.kind = BRK_MAIL_MESSAGE;
    m.sender = c->participant;
    m.message_id = hdr->message_id.data;
    m.message_id_len = AB_MESSAGE_ID_LEN;
    m.header = buf;
    m.header_len = (size_t)n;
    m.payload = data;
    m.payload_len = len;
    m.accepted_ms = now;
    m.expires_ms = now + ttl;
    brk_store_mail_put(self->store, &m);
    s_entry_t *e = s_entry_new(to, seq, BRK_MAIL_MESSAGE, (uint32_t)len);
    s_op_t *o = e ? s_op(self, OP_NEW) : NULL;
    if (!o) {
        free(e);
        s_send_error(self, from, corr, corr_len, "send", AB_EUNAVAILABLE, "out of memory");
        return;
    }
    e->accepted_ms = now;
    e->exp.at = now + ttl;
    e->from = me;
    memcpy(e->msg_id, hdr->message_id.data, AB_MESSAGE_ID_LEN);
    e->blob = s_blob_new(self, buf, (size_t)n, payload);
    e->state = S_NEW;
    s_entry_attach(self, e);
    o->e = e;
    s_reply_after_commit(self, from, corr, corr_len, hdr->message_id.data, now, seq, 1,
                         c->participant, hdr->recipient);
}

static void
s_handle_ack(brk_mailbox_t *self, s_conn_t *c, const ab_header_t *hdr)
{
    const char *sub = hdr->subscription && *hdr->subscription ? hdr->subscription : NULL;
    s_box_t *b = s_box_find(self, c->participant, sub);
    s_entry_t *e = NULL;
    uint64_t seq = hdr->sequence;
    if (b)
        HASH_FIND(hh, b->byseq, &seq, sizeof seq, e);
    if (!e || e->state != S_LIVE) {
        self->st.acks_unknown++;
        return;
    }
    uint64_t now = s_wall_ms();
    if (e->kind == S_EVENT) {
        s_entry_detach(self, e);
        s_acked(self, b);
        s_entry_free(self, e);
        return;
    }
    brk_store_mail_delete(self->store, e->seq);
    if (e->kind == BRK_MAIL_MESSAGE) {
        if (!e->delivered_ms)
            e->delivered_ms = now;
        s_sent(self, e, BRK_SENT_ACKED, now);
        s_receipt(self, e, AMTSBOTE__V1__RECEIPT_STATUS__DELIVERED, S_WHY_NONE, now);
    }
    s_gone(self, e, WHY_ACKED);
}

/* A durable subscription's name: 1-64 of [a-z0-9._-]. */
static int
s_check_sub_name(const char *name, char *why, size_t cap)
{
    size_t n = strlen(name);
    if (n == 0 || n > 64) {
        snprintf(why, cap, "subscription name must be 1 to 64 characters, not %zu", n);
        return AB_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' ||
              ch == '.')) {
            snprintf(why, cap,
                     "subscription name has a character other than a-z, 0-9, '.', '-', '_' at "
                     "position %zu",
                     i + 1);
            return AB_EINVAL;
        }
    }
    return 0;
}

static void
s_handle_credit(brk_mailbox_t *self, s_conn_t *c, const ab_header_t *hdr, const uint8_t *corr,
                size_t corr_len)
{
    const char *sub = hdr->subscription && *hdr->subscription ? hdr->subscription : NULL;
    s_box_t *b = sub ? s_box_find(self, c->participant, sub) : NULL;
    if (sub && !b) {
        s_send_error(self, &c->peer, corr, corr_len, "credit", AB_EINVAL,
                     "%s has no durable subscription named %s: SUBSCRIBE with it first",
                     c->participant, sub);
        return;
    }
    if (!sub) /* who may send to a mailbox is decided per SEND; it is always its owner's */
        b = s_box_get(self, c->participant, NULL, NULL);
    if (!b) {
        s_send_error(self, &c->peer, corr, corr_len, "credit", AB_EUNAVAILABLE, "out of memory");
        return;
    }
    uint32_t credit = hdr->credit;
    if (credit > self->cfg->max_credit)
        credit = (uint32_t)self->cfg->max_credit;
    if (credit == 0) {
        for (s_attach_t *a = c->attach; a; a = a->next_in_conn)
            if (a->box == b) {
                s_detach(self, a);
                break;
            }
    } else if (!s_attach(self, c, b, credit)) {
        s_send_error(self, &c->peer, corr, corr_len, "credit", AB_EINVAL,
                     "a connection may take deliveries from at most %d mailboxes and "
                     "subscriptions",
                     MAX_ATTACH_PER_CONN);
        return;
    }
    s_send_reply(self, &c->peer, corr, corr_len, NULL, 0, 0);
}

static void
s_handle_subscribe(brk_mailbox_t *self, s_conn_t *c, const ab_header_t *hdr, const uint8_t *corr,
                   size_t corr_len)
{
    char why[AB_MAX_ERROR_TEXT];
    const char *rule = "";
    int rc;
    if ((rc = brk_trie_check(hdr->topic, 1, why, sizeof why)) != 0) {
        self->st.refused++;
        s_send_error(self, &c->peer, corr, corr_len, "subscribe", AB_EINVAL, "topic pattern: %s",
                     why);
        return;
    }
    if ((rc = s_allowed(self, c->participant, "subscribe", hdr->topic, hdr, why, sizeof why,
                        &rule)) != 0) {
        self->st.refused++;
        s_record(self, BRK_EV_REFUSED, NULL, c->participant, hdr->topic, "", rc, rule);
        s_send_error(self, &c->peer, corr, corr_len, "subscribe", rc, "%s", why);
        return;
    }
    if (self->draining) {
        s_send_error(self, &c->peer, corr, corr_len, "subscribe", AB_EUNAVAILABLE,
                     "the broker is shutting down");
        return;
    }
    const char *sub = hdr->subscription && *hdr->subscription ? hdr->subscription : NULL;
    if (!sub) {
        for (s_esub_t *s = c->esubs; s; s = s->next)
            if (!strcmp(s->pattern, hdr->topic)) {
                s_send_reply(self, &c->peer, corr, corr_len, NULL, 0, 0);
                return;
            }
        if (c->nesubs >= MAX_ESUBS_PER_CONN) {
            s_send_error(self, &c->peer, corr, corr_len, "subscribe", AB_EINVAL,
                         "a connection may have at most %d subscriptions", MAX_ESUBS_PER_CONN);
            return;
        }
        s_esub_t *s = calloc(1, sizeof *s);
        if (s)
            s->tag = TAG_ESUB;
        if (!s || brk_trie_add(self->trie, hdr->topic, s) != 0) {
            free(s);
            s_send_error(self, &c->peer, corr, corr_len, "subscribe", AB_EUNAVAILABLE,
                         "out of memory");
            return;
        }
        s->tag = TAG_ESUB;
        s->conn = c;
        snprintf(s->pattern, sizeof s->pattern, "%s", hdr->topic);
        s->next = c->esubs;
        c->esubs = s;
        c->nesubs++;
        self->st.ephemeral_subscriptions++;
        s_send_reply(self, &c->peer, corr, corr_len, NULL, 0, 0);
        return;
    }
    if ((rc = s_check_sub_name(sub, why, sizeof why)) != 0) {
        self->st.refused++;
        s_send_error(self, &c->peer, corr, corr_len, "subscribe", rc, "%s", why);
        return;
    }
    uint32_t credit = hdr->credit ? hdr->credit : DEFAULT_SUB_CREDIT;
    if (credit > self->cfg->max_credit)
        credit = (uint32_t)self->cfg->max_credit;
    s_box_t *b = s_box_find(self, c->participant, sub);
    if (b) {
        if (strcmp(b->pattern, hdr->topic) != 0) {
            s_send_error(self, &c->peer, corr, corr_len, "subscribe", AB_EINVAL,
                         "the durable subscription %s has the pattern %s, not %s: WITHDRAW it "
                         "first to change it",
                         sub, b->pattern, hdr->topic);
            return;
        }
        if (!s_attach(self, c, b, credit)) {
            s_send_error(self, &c->peer, corr, corr_len, "subscribe", AB_EINVAL,
                         "a connection may take deliveries from at most %d mailboxes and "
                         "subscriptions",
                         MAX_ATTACH_PER_CONN);
            return;
        }
        s_send_reply(self, &c->peer, corr, corr_len, NULL, 0, b->acked_upto);
        return;
    }
    if (s_store_unavailable(self, why, sizeof why)) {
        s_send_error(self, &c->peer, corr, corr_len, "subscribe", AB_EUNAVAILABLE, "%s", why);
        return;
    }
    /* a new durable subscription starts with what is published from now on */
    brk_store_sub_t row = {c->participant, sub, hdr->topic, self->next_seq, s_wall_ms()};
    brk_store_sub_put(self->store, &row);
    b = s_box_get(self, c->participant, sub, hdr->topic);
    s_op_t *o = b ? s_op(self, OP_SUB_NEW) : NULL;
    if (!o || brk_trie_add(self->trie, hdr->topic, b) != 0) {
        if (o)
            self->nops--;
        s_send_error(self, &c->peer, corr, corr_len, "subscribe", AB_EUNAVAILABLE, "out of memory");
        return;
    }
    o->box = b;
    b->acked_upto = b->last_seq = self->next_seq;
    s_attach(self, c, b, credit);
    brk_log(BRK_LOG_INFO, "event=subscription_created participant=%s name=%s pattern=%s",
            c->participant, sub, hdr->topic);
    s_reply_after_commit(self, &c->peer, corr, corr_len, NULL, 0, b->acked_upto, 0, c->participant,
                         hdr->topic);
}

static void
s_box_remove(brk_mailbox_t *self, s_box_t *b)
{
    while (b->attached)
        s_detach(self, b->attached);
    s_entry_t *e, *tmp;
    HASH_ITER(hh, b->byseq, e, tmp)
    {
        s_entry_detach(self, e);
        s_entry_free(self, e);
    }
    if (b->is_sub) {
        brk_trie_remove(self->trie, b->pattern, b);
        self->st.durable_subscriptions--;
    } else {
        self->st.mailboxes--;
    }
    /* not in the dirty list any more */
    s_box_t **pp = &self->dirty;
    while (*pp && *pp != b)
        pp = &(*pp)->next_dirty;
    if (*pp)
        *pp = b->next_dirty;
    for (pp = &self->acked; *pp && *pp != b; pp = &(*pp)->next_acked)
        ;
    if (*pp)
        *pp = b->next_acked;
    HASH_DEL(self->boxes, b);
    free(b->sub);
    free(b->pattern);
    free(b);
}

static void
s_handle_withdraw(brk_mailbox_t *self, s_conn_t *c, const ab_header_t *hdr, const uint8_t *corr,
                  size_t corr_len)
{
    const char *sub = hdr->subscription && *hdr->subscription ? hdr->subscription : NULL;
    if (!sub) {
        for (s_esub_t **pp = &c->esubs; *pp; pp = &(*pp)->next) {
            s_esub_t *s = *pp;
            if (strcmp(s->pattern, hdr->topic) != 0)
                continue;
            *pp = s->next;
            brk_trie_remove(self->trie, s->pattern, s);
            c->nesubs--;
            self->st.ephemeral_subscriptions--;
            free(s);
            s_send_reply(self, &c->peer, corr, corr_len, NULL, 0, 0);
            return;
        }
        s_send_error(self, &c->peer, corr, corr_len, "withdraw", AB_EINVAL,
                     "this connection has no subscription to %s", hdr->topic);
        return;
    }
    s_box_t *b = s_box_find(self, c->participant, sub);
    if (!b) {
        s_send_error(self, &c->peer, corr, corr_len, "withdraw", AB_EINVAL,
                     "%s has no durable subscription named %s", c->participant, sub);
        return;
    }
    /* deleting frees space: only a store that cannot write at all refuses it */
    if (self->store_failed) {
        s_send_error(self, &c->peer, corr, corr_len, "withdraw", AB_EUNAVAILABLE,
                     "the broker's store cannot write (%s)", self->store_err);
        return;
    }
    brk_store_sub_delete(self->store, c->participant, sub);
    brk_log(BRK_LOG_INFO, "event=subscription_deleted participant=%s name=%s", c->participant, sub);
    s_box_remove(self, b);
    s_reply_after_commit(self, &c->peer, corr, corr_len, NULL, 0, 0, 0, c->participant, sub);
}

/* Fan-out of one PUBLISH: what the trie matched. */
typedef struct {
    brk_mailbox_t *self;
    const ab_header_t *hdr;
    s_box_t **durable;
    size_t ndurable, cap;
    s_esub_t **eph;
    size_t neph, ecap;
} s_fanout_t;

static void s_handle_publish(brk_mailbox_t *self, s_conn_t *c, const ab_header_t *hdr,
                             void *payload, const uint8_t *corr, size_t corr_len);

/* ---- delivery ------------------------------------------------------------------------------- */

typedef struct {
    brk_mailbox_t *self;
    s_entry_t *e;
    uint8_t *hdr;
    size_t hdr_len;
    zmq_msg_t payload;
} s_load_t;

/* Copies a stored record's header and payload out of the store's row. */
static int
s_load_blobs(s_load_t *l, const uint8_t *hdr, size_t hdr_len, const uint8_t *payload, size_t len)
{
    if (hdr_len > AB_MAX_HEADER_BYTES)
        return AB_EINTERNAL;
    memcpy(l->hdr, hdr, hdr_len);
    l->hdr_len = hdr_len;
    if (zmq_msg_init_size(&l->payload, len) != 0)
        return AB_ENOMEM;
    if (len)
        memcpy(zmq_msg_data(&l->payload), payload, len);
    return 0;
}

static int
s_load_mail(void *arg, const brk_store_mail_t *m)
{
    return s_load_blobs(arg, m->header, m->header_len, m->payload, m->payload_len);
}

static int
s_load_event(void *arg, const brk_store_event_t *ev)
{
    return s_load_blobs(arg, ev->header, ev->header_len, ev->payload, ev->payload_len);
}

static size_t
s_put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

/* Appends a varint field to a header tail. */
static size_t
s_put_varint_field(uint8_t *p, unsigned field, uint64_t v)
{
    size_t n = s_put_varint(p, (uint64_t)field << 3);
    return n + s_put_varint(p + n, v);
}

/* Appends a string field to a header tail. */
static size_t
s_put_string_field(uint8_t *p, unsigned field, const char *s)
{
    size_t len = strlen(s);
    size_t n = s_put_varint(p, (uint64_t)field << 3 | 2);
    n += s_put_varint(p + n, len);
    memcpy(p + n, s, len);
    return n + len;
}

/* Sends entry `e` to attachment `a`. Returns 0, or -1 when it could not be sent (the entry
 * stays waiting) or was damaged (it was removed). */
static int
s_deliver(brk_mailbox_t *self, s_attach_t *a, s_entry_t *e)
{
    uint8_t tail[96];
    size_t tlen = 0;
    tlen += s_put_varint_field(tail + tlen, 22, (uint64_t)e->attempts + 1);
    if (e->kind == S_EVENT)
        tlen += s_put_string_field(tail + tlen, 19, a->box->sub);
    s_blob_t *blob = e->kind == S_EVENT ? (e->ev ? e->ev->blob : NULL) : e->blob;
    zmq_msg_t m;
    int rc;
    if (e->kind == BRK_MAIL_RECEIPT && e->rstatus && e->about_box) {
        uint8_t hdr[AB_MAX_HEADER_BYTES];
        int n = s_receipt_header(hdr, e->msg_id, e->about, e->about_box->participant, e->rstatus,
                                 e->rwhy, e->accepted_ms, e->seq);
        if (n < 0)
            return -1;
        rc = self->io->send_raw(self->io->ctx, &a->conn->peer, hdr, (size_t)n, tail, tlen, NULL);
    } else if (blob) {
        zmq_msg_init(&m);
        zmq_msg_copy(&m, &blob->payload);
        rc = self->io->send_raw(self->io->ctx, &a->conn->peer, blob->hdr, blob->hdr_len, tail, tlen,
                                &m);
        zmq_msg_close(&m);
    } else {
        uint8_t hdr[AB_MAX_HEADER_BYTES];
        s_load_t l = {self, e, hdr, 0, {{0}}};
        char err[512];
        zmq_msg_init(&l.payload);
        rc = e->kind == S_EVENT
                 ? brk_store_event_get(self->store, e->seq, s_load_event, &l, err, sizeof err)
                 : brk_store_mail_get(self->store, e->seq, s_load_mail, &l, err, sizeof err);
        if (rc == AB_EINTERNAL) {
            /* a damaged record is reported and never delivered */
            zmq_msg_close(&l.payload);
            self->st.damaged++;
            brk_log(BRK_LOG_ERROR, "event=store_record_damaged seq=%llu box=%s reason=\"%s\"",
                    (unsigned long long)e->seq, e->box->key, err);
            if (e->kind == BRK_MAIL_MESSAGE) {
                s_dead_letter(self, e, S_WHY_DAMAGED);
            } else if (e->kind == BRK_MAIL_RECEIPT) {
                brk_store_mail_update(self->store, e->seq, e->attempts, 1);
                s_gone(self, e, WHY_DEAD);
            } else {
                s_entry_detach(self, e);
                s_acked(self, e->box);
                s_entry_free(self, e);
            }
            return -1;
        }
        if (rc != 0) {
            zmq_msg_close(&l.payload);
            brk_log(BRK_LOG_ERROR, "event=store_read_failed seq=%llu reason=\"%s\"",
                    (unsigned long long)e->seq, err);
            return -1;
        }
        rc = self->io->send_raw(self->io->ctx, &a->conn->peer, hdr, l.hdr_len, tail, tlen,
                                &l.payload);
        zmq_msg_close(&l.payload);
    }
    if (rc != 0)
        return -1;
    s_queue_unlink(e->box, e);
    e->holder = a;
    e->prev = a->tail;
    e->next = NULL;
    if (a->tail)
        a->tail->next = e;
    else
        a->head = e;
    a->tail = e;
    a->inflight++;
    a->conn->pending += e->size;
    self->st.in_flight++;
    e->attempts++;
    uint64_t now = s_wall_ms();
    if (!e->delivered_ms)
        e->delivered_ms = now;
    /* the monotonic clock: a step of the wall clock neither delays nor hastens a redelivery */
    e->ack.at = ab_now_ms() + self->cfg->ack_timeout_ms;
    if (ab_heap_push(&self->ack, &e->ack) == 0)
        e->in_ack = 1;
    if (e->kind == S_EVENT) {
        self->st.events_delivered++;
    } else {
        self->st.delivered++;
        if (e->kind == BRK_MAIL_MESSAGE)
            s_record(self, BRK_EV_DELIVERED, e->msg_id, e->from ? e->from->participant : "",
                     e->box->participant, a->conn->participant, 0, "");
    }
    if (e->attempts > 1)
        self->st.redelivered++;
    return 0;
}

/* Delivers what waits in `b` to its attachments with free credit, round robin. */
static void
s_pump(brk_mailbox_t *self, s_box_t *b)
{
    int budget = PUMP_BUDGET;
    while (b->head && b->head->state == S_LIVE && b->attached && budget-- > 0) {
        s_attach_t *start = b->rr ? b->rr : b->attached, *a = start, *pick = NULL;
        do {
            /* credit in messages and in bytes: one delivery always fits */
            if (a->inflight < a->credit &&
                (a->conn->pending == 0 || a->conn->pending < self->cfg->max_pending_bytes)) {
                pick = a;
                break;
            }
            a = a->next_in_box ? a->next_in_box : b->attached;
        } while (a != start);
        if (!pick)
            return;
        b->rr = pick->next_in_box ? pick->next_in_box : b->attached;
        if (s_deliver(self, pick, b->head) != 0 && b->head && b->head->state == S_LIVE &&
            b->head->holder == NULL) {
            /* could not send (queue full): try again at the next turn */
            s_dirty(self, b);
            return;
        }
    }
    if (b->head && b->head->state == S_LIVE && b->attached && budget <= 0)
        s_dirty(self, b);
}

/* ---- events --------------------------------------------------------------------------------- */

static void
s_collect_value(void *arg, void *value)
{
    s_fanout_t *f = arg;
    if (*(const uint8_t *)value == TAG_BOX) {
        s_box_t *b = value;
        if (f->ndurable == f->cap) {
            size_t cap = f->cap ? 2 * f->cap : 16;
            s_box_t **d = realloc(f->durable, cap * sizeof *d);
            if (!d)
                return;
            f->durable = d;
            f->cap = cap;
        }
        f->durable[f->ndurable++] = b;
    } else {
        if (f->neph == f->ecap) {
            size_t cap = f->ecap ? 2 * f->ecap : 16;
            s_esub_t **d = realloc(f->eph, cap * sizeof *d);
            if (!d)
                return;
            f->eph = d;
            f->ecap = cap;
        }
        f->eph[f->neph++] = value;
    }
}

static void
s_handle_publish(brk_mailbox_t *self, s_conn_t *c, const ab_header_t *hdr, void *payload,
                 const uint8_t *corr, size_t corr_len)
{
    char why[AB_MAX_ERROR_TEXT];
    const char *rule = "";
    int rc;
    if (hdr->message_id.len != AB_MESSAGE_ID_LEN) {
        self->st.refused++;
        s_send_error(self, &c->peer, corr, corr_len, "publish", AB_EINVAL,
                     "PUBLISH needs a message_id of %d bytes (a UUIDv7)", AB_MESSAGE_ID_LEN);
        return;
    }
    if ((rc = brk_trie_check(hdr->topic, 0, why, sizeof why)) != 0) {
        self->st.refused++;
        s_send_error(self, &c->peer, corr, corr_len, "publish", AB_EINVAL, "topic: %s", why);
        return;
    }
    if (self->draining) {
        s_send_error(self, &c->peer, corr, corr_len, "publish", AB_EUNAVAILABLE,
                     "the broker is shutting down; nothing was published");
        return;
    }
    if ((rc = s_allowed(self, c->participant, "publish", hdr->topic, hdr, why, sizeof why,
                        &rule)) != 0) {
        self->st.refused++;
        s_record(self, BRK_EV_REFUSED, hdr->message_id.data, c->participant, hdr->topic, "", rc,
                 rule);
        s_send_error(self, &c->peer, corr, corr_len, "publish", rc, "%s", why);
        return;
    }
    size_t len;
    const uint8_t *data = s_bytes(payload, &len);
    if (self->registry && hdr->schema && *hdr->schema) {
        brk_verdict_t v;
        if (brk_registry_check_message(self->registry, hdr->schema, data, len, &v) != 0) {
            self->st.refused++;
            s_send_verdict(self, &c->peer, corr, corr_len, &v);
            return;
        }
    }
    s_fanout_t f = {self, hdr, NULL, 0, 0, NULL, 0, 0};
    brk_trie_match(self->trie, hdr->topic, s_collect_value, &f);
    uint64_t now = s_wall_ms();
    self->st.published++;
    ab_header_t d = s_forward_header(AMTSBOTE__V1__KIND__KIND_EVENT, hdr, c->participant, now);
    d.topic = hdr->topic;
    /* ephemeral subscribers: at most once, now, once per connection however many of its
     * patterns match */
    self->publish_count++;
    for (size_t i = 0; i < f.neph; i++) {
        s_esub_t *s = f.eph[i];
        if (s->conn->published_mark == self->publish_count ||
            !s_cleared(self, s->conn->participant, (int)hdr->classification))
            continue;
        s->conn->published_mark = self->publish_count;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (payload)
            zmq_msg_copy(&m, payload);
        if (self->io->send(self->io->ctx, &s->conn->peer, &d, &m) == 0)
            self->st.events_delivered++;
        else
            self->st.events_dropped++;
        zmq_msg_close(&m);
    }
    uint64_t seq = 0;
    size_t kept = 0;
    for (size_t i = 0; i < f.ndurable; i++)
        kept += s_cleared(self, f.durable[i]->participant, (int)hdr->classification);
    if (kept) {
        char swhy[512];
        if (s_store_unavailable(self, swhy, sizeof swhy)) {
            self->st.unavailable++;
            free(f.durable);
            free(f.eph);
            s_send_error(self, &c->peer, corr, corr_len, "publish", AB_EUNAVAILABLE, "%s", swhy);
            return;
        }
        seq = ++self->next_seq;
        d.sequence = seq;
        uint8_t buf[AB_MAX_HEADER_BYTES];
        int n = ab_wire_encode(&d, buf, sizeof buf);
        s_event_t *ev = n > 0 ? calloc(1, sizeof *ev) : NULL;
        if (!ev) {
            free(f.durable);
            free(f.eph);
            s_send_error(self, &c->peer, corr, corr_len, "publish", AB_EUNAVAILABLE,
                         "out of memory");
            return;
        }
        brk_store_event_t row = {0};
        row.seq = seq;
        row.topic = hdr->topic;
        row.sender = c->participant;
        row.message_id = hdr->message_id.data;
        row.message_id_len = AB_MESSAGE_ID_LEN;
        row.header = buf;
        row.header_len = (size_t)n;
        row.payload = data;
        row.payload_len = len;
        row.published_ms = now;
        brk_store_event_put(self->store, &row);
        ev->seq = seq;
        ev->published_ms = now;
        ev->size = (uint32_t)len;
        ev->blob = s_blob_new(self, buf, (size_t)n, payload);
        ev->prev = self->ev_tail;
        if (self->ev_tail)
            self->ev_tail->next = ev;
        else
            self->ev_head = ev;
        self->ev_tail = ev;
        self->nevents++;
        self->event_bytes += len;
        for (size_t i = 0; i < f.ndurable; i++) {
            s_box_t *b = f.durable[i];
            if (!s_cleared(self, b->participant, (int)hdr->classification))
                continue;
            s_entry_t *e = s_entry_new(b, seq, S_EVENT, (uint32_t)len);
            s_op_t *o = e ? s_op(self, OP_NEW) : NULL;
            if (!o) {
                free(e);
                continue;
            }
            e->ev = ev;
            ev->refs++;
            e->accepted_ms = now;
            e->state = S_NEW;
            s_entry_attach(self, e);
            b->last_seq = seq;
            o->e = e;
        }
    }
    free(f.durable);
    free(f.eph);
    s_reply_after_commit(self, &c->peer, corr, corr_len, hdr->message_id.data, now, seq, 0,
                         c->participant, hdr->topic);
    if (self->nops && self->ops[self->nops - 1].type == OP_REPLY)
        self->ops[self->nops - 1].published = 1;
}

/* ---- the turn ------------------------------------------------------------------------------- */

int
brk_mailbox_wants(const ab_header_t *hdr)
{
    switch (hdr->kind) {
    case AMTSBOTE__V1__KIND__KIND_SEND:
    case AMTSBOTE__V1__KIND__KIND_ACK:
    case AMTSBOTE__V1__KIND__KIND_CREDIT:
    case AMTSBOTE__V1__KIND__KIND_PUBLISH:
    case AMTSBOTE__V1__KIND__KIND_SUBSCRIBE:
        return 1;
    case AMTSBOTE__V1__KIND__KIND_WITHDRAW:
        return (hdr->topic && *hdr->topic) || (hdr->subscription && *hdr->subscription);
    default:
        return 0;
    }
}

void
brk_mailbox_handle(brk_mailbox_t *self, const brk_peer_t *from, const char *participant,
                   const ab_header_t *hdr, void *payload, uint64_t now)
{
    s_conn_t *c = s_conn_get(self, from, participant, now);
    if (!c)
        return;
    const uint8_t *corr = hdr->correlation_id.len ? hdr->correlation_id.data : hdr->message_id.data;
    size_t corr_len = hdr->correlation_id.len ? hdr->correlation_id.len : hdr->message_id.len;
    switch (hdr->kind) {
    case AMTSBOTE__V1__KIND__KIND_SEND:
        s_handle_send(self, c, hdr, payload, corr, corr_len);
        break;
    case AMTSBOTE__V1__KIND__KIND_ACK:
        s_handle_ack(self, c, hdr);
        break;
    case AMTSBOTE__V1__KIND__KIND_CREDIT:
        s_handle_credit(self, c, hdr, corr, corr_len);
        break;
    case AMTSBOTE__V1__KIND__KIND_PUBLISH:
        s_handle_publish(self, c, hdr, payload, corr, corr_len);
        break;
    case AMTSBOTE__V1__KIND__KIND_SUBSCRIBE:
        s_handle_subscribe(self, c, hdr, corr, corr_len);
        break;
    case AMTSBOTE__V1__KIND__KIND_WITHDRAW:
        s_handle_withdraw(self, c, hdr, corr, corr_len);
        break;
    default:
        break;
    }
}

int
brk_mailbox_seen(brk_mailbox_t *self, const brk_peer_t *peer, uint64_t now)
{
    s_conn_t *c = s_conn_find(self, peer);
    if (!c)
        return 0;
    c->last_seen = now;
    return c->attach != NULL || c->esubs != NULL;
}

int
brk_mailbox_attached(void *ctx, const brk_peer_t *peer, uint64_t now)
{
    return brk_mailbox_seen(ctx, peer, now);
}

/* Writes the position of every durable subscription acknowledged in this turn. */
static void
s_write_positions(brk_mailbox_t *self)
{
    while (self->acked) {
        s_box_t *b = self->acked;
        self->acked = b->next_acked;
        b->acked_dirty = 0;
        uint64_t upto = b->last_seq;
        if (b->head && b->head->seq - 1 < upto)
            upto = b->head->seq - 1;
        for (s_attach_t *a = b->attached; a; a = a->next_in_box)
            if (a->head && a->head->seq - 1 < upto)
                upto = a->head->seq - 1;
        /* the S_NEW and S_GONE entries are not in these lists; a smaller position is safe */
        if (upto != b->acked_upto) {
            b->acked_upto = upto;
            brk_store_sub_acked(self->store, b->participant, b->sub, upto);
        }
    }
}

static void
s_finish_ops(brk_mailbox_t *self, int rc, const char *err)
{
    for (size_t i = 0; i < self->nops; i++) {
        s_op_t *o = &self->ops[i];
        switch (o->type) {
        case OP_REPLY:
            if (rc == 0) {
                s_send_reply(self, &o->peer, o->corr, o->corr_len, o->msg_id, o->ts, o->seq);
                if (o->is_send) {
                    self->st.accepted++;
                    s_record(self, BRK_EV_ACCEPTED, o->msg_id, o->participant, o->target, "", 0,
                             "");
                } else if (o->published) {
                    s_record(self, BRK_EV_PUBLISHED, o->msg_id, o->participant, o->target, "", 0,
                             "");
                }
            } else {
                self->st.unavailable++;
                s_send_error(self, &o->peer, o->corr, o->corr_len, o->is_send ? "send" : "store",
                             AB_EUNAVAILABLE,
                             "the broker's store could not write (%s); nothing was stored, "
                             "send again later",
                             err);
            }
            break;
        case OP_NEW:
            if (rc == 0) {
                o->e->state = S_LIVE;
                s_dirty(self, o->e->box);
            } else {
                s_entry_detach(self, o->e);
                s_entry_free(self, o->e);
            }
            break;
        case OP_GONE: {
            s_entry_t *e = o->e;
            if (rc == 0) {
                if (e->why == WHY_ACKED && e->kind == BRK_MAIL_MESSAGE) {
                    self->st.acked++;
                    s_record(self, BRK_EV_ACKED, e->msg_id, e->from ? e->from->participant : "",
                             e->box->participant, e->box->participant, 0, "");
                } else if (e->why == WHY_EXPIRED) {
                    self->st.expired++;
                    s_record(self, BRK_EV_EXPIRED, e->msg_id, e->from ? e->from->participant : "",
                             e->box->participant, "", AB_EDEADLINE, "");
                } else if (e->why == WHY_DEAD && e->kind == BRK_MAIL_MESSAGE) {
                    self->st.dead_letters++;
                    s_record(self, BRK_EV_DEAD, e->msg_id, e->from ? e->from->participant : "",
                             e->box->participant, "", AB_EUNAVAILABLE, "");
                }
                s_entry_free(self, e);
            } else {
                e->state = S_LIVE;
                s_entry_attach(self, e);
            }
            break;
        }
        case OP_SUB_NEW:
            if (rc != 0)
                s_box_remove(self, o->box);
            break;
        }
    }
    self->nops = 0;
}

static int s_load_sub_row(void *arg, const brk_store_sub_t *s);
static int s_load_mail_row(void *arg, const brk_store_mail_t *m);
static int s_load_event_row(void *arg, const brk_store_event_t *row);

/* A durable subscription found in the store again: its box (and its place in the trie) stays. */
static int
s_reload_sub_row(void *arg, const brk_store_sub_t *s)
{
    brk_mailbox_t *self = arg;
    s_box_t *b = s_box_find(self, s->participant, s->name);
    if (!b) {
        int rc = s_load_sub_row(self, s);
        if (rc)
            return rc;
        b = s_box_find(self, s->participant, s->name);
    }
    b->acked_upto = b->last_seq = s->acked_upto;
    b->reloaded = 1;
    return 0;
}

/* After the store was opened again: memory is made what is on disk. A turn whose commit reported
 * failure may have reached the file (its WAL frames written, the fsync failed): its messages are
 * then waiting after all and a retry of one gets ACCEPTED through the dedup index; acknowledged
 * ones may be gone. Connections, their credit and ephemeral subscriptions stay; what was in
 * flight is delivered again (the client library drops what it has acknowledged already). */
static int
s_reload(brk_mailbox_t *self, char *err, size_t errlen)
{
    HASH_CLEAR(hd,
               self->waiting); /* the index's own tables (it lives in the entries freed below) */
    s_box_t *b, *btmp;
    HASH_ITER(hh, self->boxes, b, btmp)
    {
        for (s_attach_t *a = b->attached; a; a = a->next_in_box) {
            a->head = a->tail = NULL;
            a->inflight = 0;
        }
        s_entry_t *e, *etmp;
        HASH_ITER(hh, b->byseq, e, etmp)
        {
            HASH_DELETE(hh, b->byseq, e);
            s_blob_unref(self, &e->blob);
            free(e);
        }
        b->head = b->tail = NULL;
        b->messages = b->receipts = 0;
        b->bytes = 0;
        b->dirty = b->acked_dirty = 0;
        b->reloaded = 0;
    }
    for (s_conn_t *c = self->conns; c; c = c->hh.next)
        c->pending = 0; /* nothing is in flight to it any more */
    self->dirty = self->acked = NULL;
    ab_heap_free(&self->exp);
    ab_heap_free(&self->ack);
    while (self->ev_head) {
        s_event_t *ev = self->ev_head;
        self->ev_head = ev->next;
        s_blob_unref(self, &ev->blob);
        free(ev);
    }
    self->ev_tail = NULL;
    self->nevents = 0;
    self->event_bytes = 0;
    self->st.waiting = self->st.receipts_waiting = self->st.in_flight = 0;
    self->st.waiting_bytes = 0;
    /* sequence numbers of undone turns are not used again */
    uint64_t max = brk_store_max_seq(self->store);
    if (max > self->next_seq)
        self->next_seq = max;
    int rc = brk_store_sub_each(self->store, s_reload_sub_row, self, err, errlen);
    if (rc)
        return rc;
    HASH_ITER(hh, self->boxes, b, btmp)
    {
        if (b->is_sub && !b->reloaded)
            s_box_remove(self, b); /* its WITHDRAW reached the disk */
    }
    if ((rc = brk_store_mail_each(self->store, 0, s_load_mail_row, self, err, errlen)) != 0)
        return rc;
    uint64_t from = UINT64_MAX;
    for (b = self->boxes; b; b = b->hh.next)
        if (b->is_sub && b->acked_upto < from)
            from = b->acked_upto;
    if (from != UINT64_MAX &&
        (rc = brk_store_event_each(self->store, from, 0, s_load_event_row, self, err, errlen)) != 0)
        return rc;
    return 0;
}

/* store_failed: tries to open the store again and, when it writes, reloads memory from it.
 * Returns 0 when the store works again. */
static int
s_recover(brk_mailbox_t *self)
{
    self->next_probe = ab_now_ms() + PROBE_EVERY_MS;
    self->probes++;
    char err[512] = "";
    int rc = brk_store_recover(self->store, err, sizeof err);
    if (rc == 0 && (rc = s_reload(self, err, sizeof err)) != 0) {
        /* memory could not be made what is on disk: the store is not used until a restart */
        brk_log(BRK_LOG_ERROR, "event=store_reload_failed reason=\"%s\"", err);
        snprintf(self->store_err, sizeof self->store_err,
                 "the store was opened again but could not be read (%s): restart the broker", err);
        self->next_probe = UINT64_MAX;
        return rc;
    }
    if (rc == AB_EINTERNAL) {
        /* quick_check found damage: trying again would not mend it (and reads the whole file) */
        brk_log(BRK_LOG_ERROR, "event=store_damaged reason=\"%s\"", err);
        snprintf(self->store_err, sizeof self->store_err,
                 "the store is damaged (%s): restore it from a backup and restart the broker", err);
        self->next_probe = UINT64_MAX;
        return rc;
    }
    if (rc != 0) {
        /* the first failures, then one in 60 */
        if (self->probes <= 3 || self->probes % 60 == 0)
            brk_log(BRK_LOG_WARN, "event=store_probe_failed attempt=%u error=%s reason=\"%s\"",
                    self->probes, ab_err_name(rc), err);
        return rc;
    }
    brk_log(BRK_LOG_INFO,
            "event=store_recovered attempts=%u messages=%zu receipts=%zu events=%zu "
            "reason=\"opened again, quick_check ok, probe write and WAL checkpoint succeeded\"",
            self->probes, self->st.waiting, self->st.receipts_waiting, self->nevents);
    self->store_failed = 0;
    self->store_err[0] = '\0';
    self->pump_after = 0;
    return 0;
}

void
brk_mailbox_end_turn(brk_mailbox_t *self)
{
    for (int round = 0; round < 3; round++) {
        s_write_positions(self);
        char err[512] = "";
        int rc = brk_store_commit(self->store, err, sizeof err);
        if (rc == 0 && self->store_full && self->nops) {
            self->store_full = 0;
            brk_log(BRK_LOG_INFO, "event=store_writable_again");
        }
        if (rc != 0) {
            if (!self->store_failed)
                brk_log(BRK_LOG_ERROR, "event=store_commit_failed error=%s reason=\"%s\"",
                        ab_err_name(rc), err);
            /* what the failed turn undid (acknowledgements) would go straight out again and
             * come back acknowledged into the same full disk: deliveries pause a moment */
            self->pump_after = ab_now_ms() + 250;
            if (rc == AB_EUNAVAILABLE) {
                self->store_full = 1;
                snprintf(self->store_err, sizeof self->store_err, "%s", err);
            }
            if (rc == AB_EIO && !self->store_failed) {
                self->store_failed = 1;
                self->next_probe = ab_now_ms() + PROBE_EVERY_MS;
                self->probes = 0;
                snprintf(self->store_err, sizeof self->store_err, "%s", err);
            }
        }
        s_finish_ops(self, rc, err);
        /* nothing is delivered while the store cannot write: no acknowledgement could be
         * recorded; brk_mailbox_tick() has the probe run */
        if (self->store_failed && (ab_now_ms() < self->next_probe || s_recover(self) != 0))
            return;
        if (ab_now_ms() < self->pump_after)
            return; /* the boxes stay dirty; brk_mailbox_tick() asks to be run again */
        /* deliveries of what is now on disk */
        while (self->dirty) {
            s_box_t *list = self->dirty;
            self->dirty = NULL;
            while (list) {
                s_box_t *b = list;
                list = b->next_dirty;
                b->dirty = 0;
                s_pump(self, b);
            }
            if (self->dirty && round == 2)
                break;
            if (self->nops)
                break; /* a delivery wrote something (a damaged record): commit that first */
        }
        if (self->nops == 0 && !self->dirty)
            return;
        if (self->nops == 0)
            return; /* boxes whose connections' queues are full: the next turn tries again */
    }
}

/* ---- timers --------------------------------------------------------------------------------- */

/* Drops the oldest events beyond the retention limits from every durable subscription. */
static void
s_retention(brk_mailbox_t *self, uint64_t now)
{
    uint64_t cutoff = 0;
    uint64_t bytes = self->event_bytes;
    for (s_event_t *ev = self->ev_head; ev; ev = ev->next) {
        int old = ev->published_ms + self->cfg->event_retention_ms < now;
        int over = bytes > self->cfg->event_retention_bytes;
        if (!old && !over && ev->refs > 0)
            break;
        cutoff = ev->seq;
        bytes -= ev->size;
    }
    if (cutoff) {
        for (s_box_t *b = self->boxes; b; b = b->hh.next) {
            if (!b->is_sub)
                continue;
            size_t dropped = 0;
            s_entry_t *e, *tmp;
            HASH_ITER(hh, b->byseq, e, tmp)
            {
                if (e->seq > cutoff || e->state != S_LIVE)
                    continue;
                s_entry_detach(self, e);
                s_entry_free(self, e);
                dropped++;
            }
            if (dropped) {
                brk_log(BRK_LOG_WARN,
                        "event=events_dropped participant=%s subscription=%s events=%zu "
                        "reason=\"retention limit (age or bytes) reached before acknowledged\"",
                        b->participant, b->sub, dropped);
                s_acked(self, b);
                if (b->acked_upto < cutoff)
                    b->last_seq = b->last_seq < cutoff ? cutoff : b->last_seq;
            }
        }
    }
    /* events nobody refers to any more leave memory and the store */
    uint64_t upto = 0;
    while (self->ev_head && (self->ev_head->refs == 0 || self->ev_head->seq <= cutoff)) {
        s_event_t *ev = self->ev_head;
        if (ev->refs > 0)
            break;
        self->ev_head = ev->next;
        if (self->ev_head)
            self->ev_head->prev = NULL;
        else
            self->ev_tail = NULL;
        self->nevents--;
        self->event_bytes -= ev->size;
        upto = ev->seq;
        s_blob_unref(self, &ev->blob);
        free(ev);
    }
    if (upto && !self->store_failed)
        brk_store_event_purge(self->store, upto, 0);
}

uint64_t
brk_mailbox_tick(brk_mailbox_t *self, uint64_t now)
{
    uint64_t wall = s_wall_ms();
    uint64_t mono = ab_now_ms();
    /* silent connections: what they hold goes to others (a walk over all connections, so at
     * most every half heartbeat, not at every loop turn) */
    if (now >= self->next_sweep) {
        self->next_sweep = now + self->cfg->heartbeat_ms / 2;
        s_conn_t *c, *tmp;
        HASH_ITER(hh, self->conns, c, tmp)
        {
            uint64_t silent = now - c->last_seen;
            if ((c->attach || c->esubs) && silent > self->cfg->heartbeat_timeout_ms) {
                char why[96];
                snprintf(why, sizeof why, "missed heartbeats (silent for %llu ms)",
                         (unsigned long long)silent);
                s_conn_drop(self, c, why);
            } else if (!c->attach && !c->esubs && silent > 10 * self->cfg->heartbeat_timeout_ms) {
                s_conn_drop(self, c, "idle");
            }
        }
    }
    ab_heap_node_t *n;
    int budget = self->store_failed ? 0 : 10000; /* redelivery and expiry wait for the store */
    while ((n = ab_heap_top(&self->ack)) != NULL && n->at <= mono && budget-- > 0) {
        s_entry_t *e = AB_CONTAINER_OF(n, s_entry_t, ack);
        s_return(self, e);
    }
    while ((n = ab_heap_top(&self->exp)) != NULL && n->at <= wall && budget-- > 0) {
        s_entry_t *e = AB_CONTAINER_OF(n, s_entry_t, exp);
        if (e->state != S_LIVE) {
            ab_heap_remove(&self->exp, n);
            e->in_exp = 0;
            continue;
        }
        s_expire(self, e, wall);
    }
    if (now >= self->next_retention && !self->store_failed) {
        self->next_retention = now + RETENTION_EVERY_MS;
        s_retention(self, wall);
    }
    if (now >= self->next_purge && !self->store_failed) {
        uint64_t every = self->cfg->dedup_window_ms / 2;
        self->next_purge = now + (every < 100              ? 100
                                  : every > PURGE_EVERY_MS ? PURGE_EVERY_MS
                                                           : every);
        /* a full slice: more are due, soon, one slice per turn */
        if (wall > self->cfg->dedup_window_ms &&
            brk_store_sent_purge(self->store, wall - self->cfg->dedup_window_ms) >= 5000)
            self->next_purge = now + 50;
    }
    uint64_t next = RETENTION_EVERY_MS;
    if (self->dirty && self->pump_after > mono && self->pump_after - mono < next)
        next = self->pump_after - mono;
    if (self->store_failed)
        return self->next_probe > mono ? self->next_probe - mono : 0;
    if ((n = ab_heap_top(&self->ack)) != NULL)
        next = n->at <= mono ? 0 : (n->at - mono < next ? n->at - mono : next);
    if ((n = ab_heap_top(&self->exp)) != NULL)
        next = n->at <= wall ? 0 : (n->at - wall < next ? n->at - wall : next);
    return next;
}

void
brk_mailbox_peer_gone(brk_mailbox_t *self, const brk_peer_t *peer)
{
    s_conn_t *c = s_conn_find(self, peer);
    if (c)
        s_conn_drop(self, c, "its connection is gone");
}

void
brk_mailbox_drain(brk_mailbox_t *self)
{
    self->draining = 1;
}

int
brk_mailbox_ready(brk_mailbox_t *self, char *why, size_t cap)
{
    if (self->store_failed) {
        snprintf(why, cap, "the store cannot write: %s", self->store_err);
        return -1;
    }
    if (self->store_full) {
        snprintf(why, cap, "the store could not write at its last commit: %s", self->store_err);
        return -1;
    }
    if (s_disk_low(self)) {
        snprintf(why, cap, "the data directory has %llu bytes free, less than min_free_bytes %llu",
                 (unsigned long long)self->disk_free,
                 (unsigned long long)self->cfg->min_free_bytes);
        return -1;
    }
    return 0;
}

void
brk_mailbox_stats(const brk_mailbox_t *self, brk_mailbox_stats_t *out)
{
    *out = self->st;
    out->events_kept = self->nevents;
    out->cache_bytes = self->cache_used;
    out->store_failed = (size_t)(self->store_failed || self->store_full);
}

void
brk_mailbox_each(const brk_mailbox_t *self, brk_mailbox_each_fn *fn, void *arg)
{
    uint64_t now = s_wall_ms();
    for (const s_box_t *b = self->boxes; b; b = b->hh.next) {
        if (b->is_sub || b->messages == 0)
            continue;
        /* the oldest: the lowest sequence, waiting or in flight */
        uint64_t oldest = UINT64_MAX;
        if (b->head && b->head->accepted_ms < oldest)
            oldest = b->head->accepted_ms;
        for (const s_attach_t *a = b->attached; a; a = a->next_in_box)
            if (a->head && a->head->accepted_ms < oldest)
                oldest = a->head->accepted_ms;
        fn(arg, b->participant, b->messages,
           oldest != UINT64_MAX && now > oldest ? now - oldest : 0);
    }
}

/* ---- MessageStatus -------------------------------------------------------------------------- */

static const char *const s_state_names[] = {"waiting", "acknowledged", "expired", "failed"};

int
brk_mailbox_method(void *ctx, const char *participant, const char *method, const uint8_t *req,
                   size_t len, uint8_t **out, size_t *out_len, const char **schema, char *why,
                   size_t why_cap)
{
    brk_mailbox_t *self = ctx;
    if (strcmp(method, BRK_SERVICE_BROKER "/MessageStatus") != 0)
        return 1;
    Amtsbote__V1__MessageStatusRequest *r =
        amtsbote__v1__message_status_request__unpack(NULL, len, req);
    if (!r) {
        snprintf(why, why_cap,
                 "MessageStatus: the request is not an "
                 "amtsbote.v1.MessageStatusRequest");
        return AB_EINVAL;
    }
    int rc = 0;
    const char *sender = r->sender && *r->sender ? r->sender : participant;
    brk_store_sent_t s;
    char err[512];
    if (r->message_id.len != AB_MESSAGE_ID_LEN) {
        snprintf(why, why_cap, "MessageStatus: message_id must be %d bytes, not %zu",
                 AB_MESSAGE_ID_LEN, r->message_id.len);
        rc = AB_EINVAL;
        goto done;
    }
    /* a message still waiting is in memory; one that ended, in the sent table */
    s_entry_t *live = NULL;
    s_box_t *sbox = s_box_find(self, sender, NULL);
    if (sbox) {
        s_dkey_t k;
        memset(&k, 0, sizeof k);
        k.from = sbox;
        memcpy(k.id, r->message_id.data, AB_MESSAGE_ID_LEN);
        HASH_FIND(hd, self->waiting, &k, sizeof k, live);
    }
    int found = 0;
    if (live) {
        memset(&s, 0, sizeof s);
        snprintf(s.recipient_buf, sizeof s.recipient_buf, "%s", live->box->participant);
        s.recipient = s.recipient_buf;
        s.seq = live->seq;
        s.size = live->size;
        s.accepted_ms = live->accepted_ms;
        s.state = BRK_SENT_WAITING;
    } else {
        found = brk_store_sent_get(self->store, sender, r->message_id.data, &s, err, sizeof err);
    }
    if (found < 0) {
        snprintf(why, why_cap, "MessageStatus: %s", err);
        rc = AB_EUNAVAILABLE;
        goto done;
    }
    /* only the sender and the recipient may see a message's timeline */
    if (found == 1 || (strcmp(participant, sender) != 0 && strcmp(participant, s.recipient) != 0)) {
        char hex[2 * AB_MESSAGE_ID_LEN + 1];
        ab_hex(r->message_id.data, AB_MESSAGE_ID_LEN, hex);
        snprintf(why, why_cap,
                 "MessageStatus: no message %s from %s that %s may see (the broker forgets a "
                 "message dedup_window_ms after it ended)",
                 hex, sender, participant);
        rc = AB_EINVAL;
        goto done;
    }
    Amtsbote__V1__MessageStatus st = AMTSBOTE__V1__MESSAGE_STATUS__INIT;
    Amtsbote__V1__MessageStatusStep steps[4], *sp[4];
    size_t nsteps = 0;
    st.message_id = r->message_id;
    st.sender = (char *)sender;
    st.recipient = (char *)s.recipient;
    st.size = s.size;
    st.attempts = s.attempts;
    uint64_t delivered = s.delivered_ms;
    st.state = (char *)s_state_names[s.state >= 0 && s.state <= 3 ? s.state : 0];
    if (live) {
        st.attempts = live->attempts;
        delivered = live->delivered_ms;
        if (live->holder)
            st.state = (char *)"delivered";
    }
    amtsbote__v1__message_status_step__init(&steps[nsteps]);
    steps[nsteps].step = "accepted";
    steps[nsteps].at_ms = s.accepted_ms;
    nsteps++;
    if (delivered) {
        amtsbote__v1__message_status_step__init(&steps[nsteps]);
        steps[nsteps].step = "delivered";
        steps[nsteps].at_ms = delivered;
        nsteps++;
    }
    if (s.state != BRK_SENT_WAITING) {
        amtsbote__v1__message_status_step__init(&steps[nsteps]);
        steps[nsteps].step = (char *)s_state_names[s.state <= 3 ? s.state : 0];
        steps[nsteps].at_ms = s.ended_ms;
        nsteps++;
    }
    for (size_t i = 0; i < nsteps; i++)
        sp[i] = &steps[i];
    st.n_steps = nsteps;
    st.steps = sp;
    *out_len = amtsbote__v1__message_status__get_packed_size(&st);
    *out = malloc(*out_len ? *out_len : 1);
    if (!*out) {
        snprintf(why, why_cap, "out of memory");
        rc = AB_ENOMEM;
        goto done;
    }
    amtsbote__v1__message_status__pack(&st, *out);
    *schema = "amtsbote.v1.MessageStatus";
done:
    amtsbote__v1__message_status_request__free_unpacked(r, NULL);
    return rc;
}

/* ---- loading -------------------------------------------------------------------------------- */

static int
s_load_mail_row(void *arg, const brk_store_mail_t *m)
{
    brk_mailbox_t *self = arg;
    if (m->dead)
        return 0;
    s_box_t *b = s_box_get(self, m->recipient, NULL, NULL);
    if (!b)
        return AB_ENOMEM;
    s_entry_t *e = s_entry_new(b, m->seq, m->kind, (uint32_t)m->payload_len);
    if (!e)
        return AB_ENOMEM;
    e->accepted_ms = m->accepted_ms;
    e->attempts = m->attempts;
    e->exp.at = m->expires_ms;
    if (m->message_id_len == AB_MESSAGE_ID_LEN)
        memcpy(e->msg_id, m->message_id, AB_MESSAGE_ID_LEN);
    if (m->kind == BRK_MAIL_MESSAGE) {
        e->from = s_box_get(self, m->sender, NULL, NULL);
        if (!e->from) {
            free(e);
            return AB_ENOMEM;
        }
    }
    s_entry_attach(self, e);
    return 0;
}

static int
s_load_sub_row(void *arg, const brk_store_sub_t *s)
{
    brk_mailbox_t *self = arg;
    s_box_t *b = s_box_get(self, s->participant, s->name, s->pattern);
    if (!b || brk_trie_add(self->trie, s->pattern, b) != 0)
        return AB_ENOMEM;
    b->acked_upto = b->last_seq = s->acked_upto;
    return 0;
}

static int
s_load_event_row(void *arg, const brk_store_event_t *row)
{
    brk_mailbox_t *self = arg;
    s_fanout_t f = {self, NULL, NULL, 0, 0, NULL, 0, 0};
    brk_trie_match(self->trie, row->topic, s_collect_value, &f);
    s_event_t *ev = calloc(1, sizeof *ev);
    if (!ev) {
        free(f.durable);
        free(f.eph);
        return AB_ENOMEM;
    }
    ev->seq = row->seq;
    ev->published_ms = row->published_ms;
    ev->size = (uint32_t)row->payload_len;
    ev->prev = self->ev_tail;
    if (self->ev_tail)
        self->ev_tail->next = ev;
    else
        self->ev_head = ev;
    self->ev_tail = ev;
    self->nevents++;
    self->event_bytes += ev->size;
    for (size_t i = 0; i < f.ndurable; i++) {
        s_box_t *b = f.durable[i];
        if (b->acked_upto >= row->seq)
            continue;
        s_entry_t *e = s_entry_new(b, row->seq, S_EVENT, ev->size);
        if (!e)
            break;
        e->ev = ev;
        ev->refs++;
        e->accepted_ms = row->published_ms;
        s_entry_attach(self, e);
        if (b->last_seq < row->seq)
            b->last_seq = row->seq;
    }
    free(f.durable);
    free(f.eph);
    return 0;
}

brk_mailbox_t *
brk_mailbox_new(const brk_config_t *cfg, const brk_mailbox_io_t *io, brk_store_t *store, char *err,
                size_t errlen)
{
    brk_mailbox_t *self = calloc(1, sizeof *self);
    if (!self || !(self->trie = brk_trie_new())) {
        snprintf(err, errlen, "out of memory");
        free(self);
        return NULL;
    }
    self->cfg = cfg;
    self->io = io;
    self->store = store;
    self->next_seq = brk_store_max_seq(store);
    int rc;
    if ((rc = brk_store_sub_each(store, s_load_sub_row, self, err, errlen)) != 0 ||
        (rc = brk_store_mail_each(store, 0, s_load_mail_row, self, err, errlen)) != 0) {
        brk_mailbox_destroy(&self);
        return NULL;
    }
    uint64_t from = UINT64_MAX;
    for (s_box_t *b = self->boxes; b; b = b->hh.next)
        if (b->is_sub && b->acked_upto < from)
            from = b->acked_upto;
    if (from != UINT64_MAX &&
        (rc = brk_store_event_each(store, from, 0, s_load_event_row, self, err, errlen)) != 0) {
        brk_mailbox_destroy(&self);
        return NULL;
    }
    /* events every durable subscription had acknowledged before the stop (or all of them, when
     * there is no durable subscription any more) are not needed: not loaded, and removed */
    if (brk_store_event_purge(store, from == UINT64_MAX ? self->next_seq : from, 0) < 0 ||
        brk_store_commit(store, err, errlen) != 0) {
        brk_mailbox_destroy(&self);
        return NULL;
    }
    /* everything loaded is on disk already: deliverable */
    self->dirty = NULL;
    for (s_box_t *b = self->boxes; b; b = b->hh.next)
        b->dirty = 0;
    brk_log(BRK_LOG_INFO,
            "event=mailboxes_loaded mailboxes=%zu messages=%zu bytes=%llu receipts=%zu "
            "subscriptions=%zu events=%zu next_seq=%llu",
            self->st.mailboxes, self->st.waiting, (unsigned long long)self->st.waiting_bytes,
            self->st.receipts_waiting, self->st.durable_subscriptions, self->nevents,
            (unsigned long long)self->next_seq);
    return self;
}

void
brk_mailbox_destroy(brk_mailbox_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    brk_mailbox_t *self = *self_p;
    s_conn_t *c, *ctmp;
    HASH_ITER(hh, self->conns, c, ctmp)
    {
        while (c->attach) {
            s_attach_t *a = c->attach;
            c->attach = a->next_in_conn;
            free(a);
        }
        while (c->esubs) {
            s_esub_t *s = c->esubs;
            c->esubs = s->next;
            free(s);
        }
        HASH_DEL(self->conns, c);
        free(c);
    }
    HASH_CLEAR(hd, self->waiting); /* the index's own tables; its entries are freed below */
    s_box_t *b, *btmp;
    HASH_ITER(hh, self->boxes, b, btmp)
    {
        s_entry_t *e, *etmp;
        HASH_ITER(hh, b->byseq, e, etmp)
        {
            HASH_DELETE(hh, b->byseq, e);
            s_blob_unref(self, &e->blob);
            free(e);
        }
        HASH_DEL(self->boxes, b);
        free(b->sub);
        free(b->pattern);
        free(b);
    }
    for (size_t i = 0; i < self->nops; i++)
        if (self->ops[i].type == OP_GONE || self->ops[i].type == OP_NEW) {
            /* entries of an unfinished turn that are in no box any more */
            s_entry_t *e = self->ops[i].e;
            if (e && e->state == S_GONE) {
                s_blob_unref(self, &e->blob);
                free(e);
            }
        }
    while (self->ev_head) {
        s_event_t *ev = self->ev_head;
        self->ev_head = ev->next;
        s_blob_unref(self, &ev->blob);
        free(ev);
    }
    free(self->ops);
    ab_heap_free(&self->exp);
    ab_heap_free(&self->ack);
    brk_trie_destroy(&self->trie);
    free(self);
    *self_p = NULL;
}

void
brk_mailbox_set_gate(brk_mailbox_t *self, const brk_services_gate_t *gate)
{
    self->gate = gate;
}

void
brk_mailbox_set_registry(brk_mailbox_t *self, brk_registry_t *reg)
{
    self->registry = reg;
}
