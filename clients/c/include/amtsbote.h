/*
 * amtsbote.h - the whole public API of libamtsbote, the Amtsbote client library.
 *
 * A client connects to an Amtsbote broker, calls services that other participants offer, offers
 * services of its own, sends store-and-forward messages to other participants' mailboxes and
 * takes those in its own, and publishes and subscribes to events. One ab_client_t is one
 * connection (one ZeroMQ DEALER socket).
 *
 * Threads: an ab_client_t is not thread-safe. Use each client from one thread at a time; use one
 * client per thread when you need several. Different clients are independent.
 *
 * Ownership: a returned `char *` or buffer is the caller's and is freed with ab_free(); a returned
 * `const char *` is borrowed and valid as the comment says. A `**` parameter means the callee takes
 * ownership and sets the caller's pointer to NULL.
 *
 * Errors: functions that can fail return 0 on success and a negative AB_E* code on failure.
 * ab_strerror() gives a sentence, ab_err_name() the name (e.g. "UNKNOWN_SERVICE"), and
 * ab_client_last_error() the broker's or library's text for the last failure on that client,
 * which names the field, service or rule at fault.
 */
#ifndef AMTSBOTE_H
#define AMTSBOTE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with hidden symbols; everything declared here is its exported API. */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

#define AB_VERSION_MAJOR 0
#define AB_VERSION_MINOR 1
#define AB_VERSION_PATCH 0

/* The wire protocol version this library speaks. */
#define AB_PROTOCOL_VERSION 1

/*
 * One table of error codes: XX(NAME, wire name, message). The wire name is the broker's
 * ErrorCode where one exists. Values are negative and stable within a major version.
 */
#define AB_ERRNO_MAP(XX)                                                                           \
    XX(EINVAL, 1, "INVALID_ARGUMENT", "invalid argument")                                          \
    XX(ENOMEM, 2, "NO_MEMORY", "out of memory")                                                    \
    XX(EUNKNOWN_SERVICE, 3, "UNKNOWN_SERVICE", "no provider offers this service")                  \
    XX(EFORBIDDEN, 4, "FORBIDDEN", "not allowed by the broker's policy")                           \
    XX(ESCHEMA_INVALID, 5, "SCHEMA_INVALID", "payload does not match the published schema")        \
    XX(EDEADLINE, 6, "DEADLINE_EXCEEDED", "deadline exceeded")                                     \
    XX(EPROVIDER_GONE, 7, "PROVIDER_GONE", "the provider went away with the call in flight")       \
    XX(ETOO_LARGE, 8, "TOO_LARGE", "message too large")                                            \
    XX(EMALFORMED, 9, "MALFORMED", "malformed message")                                            \
    XX(EMAILBOX_FULL, 10, "MAILBOX_FULL", "the recipient's mailbox is full")                       \
    XX(EUNAVAILABLE, 11, "UNAVAILABLE", "the broker is unavailable or shutting down")              \
    XX(EINTERNAL, 12, "INTERNAL", "internal error in the broker")                                  \
    XX(EPROVIDER, 13, "PROVIDER_ERROR", "the provider answered with an error")                     \
    XX(ETIMEDOUT, 14, "TIMED_OUT", "no answer from the broker in time")                            \
    XX(EREFUSED, 15, "REFUSED", "the broker refused this client's identity")                       \
    XX(ECONNECT, 16, "CONNECT_FAILED", "cannot connect to the broker")                             \
    XX(ESTATE, 17, "BAD_STATE", "operation not possible in this state")                            \
    XX(EIO, 18, "IO_ERROR", "input/output error")                                                  \
    XX(ERATE_LIMITED, 19, "RATE_LIMITED", "the broker's limit for this participant: slow down")

typedef enum {
    AB_OK = 0,
#define AB_XX_ENUM(name, num, wire, msg) AB_##name = -(num),
    AB_ERRNO_MAP(AB_XX_ENUM)
#undef AB_XX_ENUM
} ab_errno_t;

/* A sentence for an AB_E* code; never NULL (unknown codes give "unknown error"). */
const char *ab_strerror(int err);
/* The name of an AB_E* code, e.g. "UNKNOWN_SERVICE"; never NULL ("OK" for 0). */
const char *ab_err_name(int err);

/* Frees memory that the library handed to the caller. Accepts NULL. */
void ab_free(void *ptr);

typedef struct ab_client ab_client_t;

/*
 * Creates a client that is not yet connected. Returns NULL when out of memory.
 */
ab_client_t *ab_client_new(void);

/*
 * Closes the connection (withdrawing every offer, detaching from the mailbox and the durable
 * subscriptions, which stay stored, and ending the ephemeral ones), fails calls and sends still
 * in flight with AB_EUNAVAILABLE through their callbacks, and frees the client. Messages the
 * application still holds stay readable and must still be freed; ab_ack() on them returns
 * AB_ESTATE (the broker delivers them again). Accepts NULL and a pointer to NULL; sets *self_p
 * to NULL.
 */
void ab_client_destroy(ab_client_t **self_p);

/*
 * On a plain tcp:// or ipc:// listener the client names itself: `participant` is its address,
 * `level.org[.unit]`, e.g. "kommune.09162000.meldeamt". The broker believes it only when run with
 * --insecure-plain-identities. Call before ab_client_connect(). Returns AB_EINVAL for an address
 * that is not of that form. Over tls:// the address comes from the client certificate, and
 * connecting there with a participant set fails with AB_EINVAL.
 */
int ab_client_set_participant(ab_client_t *self, const char *participant);

/*
 * Mutual TLS for a tls://HOST:PORT broker address: PEM files, read when ab_client_connect() runs.
 * `cert` (the client certificate; its SAN URI urn:amtsbote:participant:<address> is this
 * client's participant address), `key` (its private key), `ca` (the CA certificates the
 * broker's certificate must chain to) are required; `key_passphrase_file` (first line: the
 * key's passphrase) and `crl` (CRLs for the broker's chain) are optional (NULL).
 */
typedef struct ab_tls_options {
    const char *cert;
    const char *key;
    const char *key_passphrase_file;
    const char *ca;
    const char *crl;
} ab_tls_options_t;

/*
 * Sets the TLS files for a later ab_client_connect() to tls://HOST:PORT; the strings are copied.
 * Call before connecting. Returns AB_EINVAL when cert, key or ca is missing (naming which),
 * AB_ESTATE when already connected.
 *
 * A tls:// connection runs a relay on a thread of its own (with its own event loop): the client's
 * DEALER socket connects to it over loopback, and it speaks TLS to the broker, verifying the
 * broker's certificate against `ca` and the host in the URI. ab_client_destroy() stops that
 * thread. The client itself stays single-threaded as above.
 */
int ab_client_set_tls(ab_client_t *self, const ab_tls_options_t *opts);

/*
 * Sets the purpose (the legal basis, e.g. "BMG §34") sent with every later call; NULL or "" sends
 * none. Returns AB_EINVAL for text longer than 255 bytes or not valid UTF-8.
 */
int ab_client_set_purpose(ab_client_t *self, const char *purpose);

/* Classification levels of a call (amtsbote.v1.Classification). */
enum { AB_CLASS_NONE = 0, AB_CLASS_OFFEN = 1, AB_CLASS_VS_NFD = 2 };

/*
 * Sets the classification of every later call: AB_CLASS_OFFEN or AB_CLASS_VS_NFD
 * (VS-NUR-FUER-DEN-DIENSTGEBRAUCH); AB_CLASS_NONE sends none. The broker routes a classified
 * call only to a provider cleared for its level, and only a participant cleared for it may send
 * it. Returns AB_EINVAL for another value.
 */
int ab_client_set_classification(ab_client_t *self, int level);

/*
 * Connects to the broker at `uri` (tcp://HOST:PORT, ipc://PATH, or tls://HOST:PORT after
 * ab_client_set_tls()) and waits up to `timeout_ms` (0: 5000) for the broker's HELLO. Returns
 * AB_EREFUSED when the broker refused the identity or either side refused the other's
 * certificate (last_error says which and why, e.g. "the broker's certificate: hostname
 * mismatch ..."), AB_ETIMEDOUT when it did not answer, AB_EINVAL for a URI it cannot use, AB_EIO
 * for a TLS file it cannot use (last_error names it).
 */
int ab_client_connect(ab_client_t *self, const char *uri, int timeout_ms);

/*
 * The text of the last failure on this client: the broker's error text (naming the field,
 * service or rule at fault) or the library's. Borrowed; valid until the next call on `self`.
 * Empty string when there was none.
 */
const char *ab_client_last_error(const ab_client_t *self);

/*
 * How many replies this provider sent that the broker refused (a reply that does not fit the
 * registered interface: SCHEMA_INVALID with the field); the caller got an error instead. With
 * `last_reason` (may be NULL) the text of the latest refusal: method, error name, reason and
 * field, never payload contents. Borrowed; valid until the next call on `self`.
 */
uint64_t ab_client_refused_replies(const ab_client_t *self, const char **last_reason);

/* The participant address the broker saw for this client (from its HELLO). Borrowed. */
const char *ab_client_participant(const ab_client_t *self);

/*
 * Calls `service` ("package.Service/Method") with the request `req` of `req_len` bytes and waits
 * for the reply up to `timeout_ms` (0: 30000), which is also the deadline the broker enforces.
 * On success *reply (the caller's, free with ab_free()) and *reply_len are set; an empty reply
 * gives a non-NULL pointer and length 0. On failure *reply is NULL and the return value says why.
 * While it waits the client also serves calls to its own offers.
 */
int ab_call(ab_client_t *self, const char *service, const void *req, size_t req_len, int timeout_ms,
            void **reply, size_t *reply_len);

/*
 * Called once for every asynchronous call: `status` is 0 or an AB_E* code; `reply` and
 * `errtext` are borrowed for the duration of the callback only.
 */
typedef void(ab_call_cb)(ab_client_t *client, int status, const void *reply, size_t reply_len,
                         const char *errtext, void *arg);

/*
 * Starts a call and returns at once. `cb` runs later from ab_client_process() (or from within
 * ab_call()/ab_client_run()) exactly once. Called from your own code, it returns an error (and
 * never runs `cb`) when the call could not be sent. Called from a callback or handler, the call
 * is sent with the rest of that batch, and a failure to send reaches `cb` as AB_EUNAVAILABLE.
 */
int ab_call_async(ab_client_t *self, const char *service, const void *req, size_t req_len,
                  int timeout_ms, ab_call_cb *cb, void *arg);

/* Calls started with ab_call_async() that have not completed yet. */
size_t ab_client_in_flight(const ab_client_t *self);

/* ---- Providers ---------------------------------------------------------------------------- */

typedef struct ab_request ab_request_t;

/*
 * Runs for each incoming call to an offer. The handler answers with ab_reply() or
 * ab_reply_error(), now or later (keeping `req`); every request must be answered exactly once.
 */
typedef void(ab_handler_fn)(ab_client_t *client, ab_request_t *req, void *arg);

/*
 * Offers `service`: "package.Service" (every method) or "package.Service/Method" (one). Waits up
 * to 5 s for the broker to accept the offer; returns its error otherwise (e.g. AB_EINVAL for a
 * malformed name). From then on the client sends heartbeats whenever it is driven.
 */
int ab_offer(ab_client_t *self, const char *service, ab_handler_fn *handler, void *arg);

/*
 * Withdraws an offer made with ab_offer() and waits up to 5 s for the broker to confirm; calls
 * already delivered still need an answer. When the connection to the broker is down at that
 * moment (ZeroMQ is reconnecting), it does not wait: the offer ends here at once and it returns
 * AB_ECONNECT (the broker drops the offer when it notices the connection's end).
 */
int ab_withdraw(ab_client_t *self, const char *service);

/* Accessors for a request; everything returned is borrowed until the request is answered. */
const void *ab_request_payload(const ab_request_t *req, size_t *len);
const char *ab_request_method(const ab_request_t *req);     /* "package.Service/Method" */
const char *ab_request_caller(const ab_request_t *req);     /* authenticated participant */
const char *ab_request_purpose(const ab_request_t *req);    /* "" when none was given */
const char *ab_request_message_id(const ab_request_t *req); /* 32 hex digits */
/* Milliseconds left before the caller's deadline (0 when it has passed). */
int ab_request_remaining_ms(const ab_request_t *req);

/*
 * Answers a request with `len` bytes and frees it; *req_p is set to NULL. Called from your own
 * code, it returns an error when the answer could not be sent (the request is freed all the
 * same). Called from a handler, the answer goes out with the rest of that batch; if that fails
 * the caller's deadline ends the call.
 */
int ab_reply(ab_request_t **req_p, const void *data, size_t len);

/*
 * Answers a request with an error of the provider's own (the caller sees AB_EPROVIDER and
 * `text`) and frees it. `text` should say what went wrong without personal data.
 */
int ab_reply_error(ab_request_t **req_p, const char *text);

/* ---- Mailboxes: store-and-forward messages -------------------------------------------------
 *
 * Every participant has a durable mailbox at the broker. ab_send() puts a message into the
 * recipient's mailbox and returns once the broker has it on disk; the recipient takes it with
 * ab_inbox(), whenever it is connected, and acknowledges it with ab_ack(); the sender then finds
 * a RECEIPT (DELIVERED, or EXPIRED / FAILED) in its own mailbox.
 *
 * Delivery is at least once. A message not acknowledged is delivered again (attempt 2, 3, ...),
 * and a broker crash between an ACK and its commit may bring an acknowledged one back; the
 * library remembers the last 65,536 acknowledged (sender, message id) pairs and (subscription,
 * sequence) pairs, acknowledges such a redelivery again itself and never hands it to the
 * application (ab_client_duplicates_dropped() counts them).
 */

/* Options of ab_send(); a NULL pointer means all defaults. */
typedef struct ab_send_options {
    const char *schema; /* fully-qualified message type of the payload, or NULL / "" for none;
                           the broker checks the payload against it when it is registered */
    uint32_t ttl_ms;    /* time to live from acceptance; 0: the broker's default (7 days) */
    const uint8_t *message_id; /* 16 bytes: send again with the same id (a retry after a time-out
                                  or a crash: the broker stores it at most once within its dedup
                                  window, 24 h), or NULL for a new UUIDv7 */
} ab_send_options_t;

/*
 * Sends `len` bytes of `data` to the mailbox of `recipient` (a participant address) and waits up
 * to `timeout_ms` (0: 30000) for the broker to accept it, which it does once the message is on
 * disk. The purpose and classification set on the client go with it. `id_out` (33 bytes, may be
 * NULL) gets the message id as 32 lower-case hex digits, also on failure, so that a message
 * whose fate is unknown (AB_ETIMEDOUT) can be sent again with the same id.
 *
 * Returns 0 (accepted), or AB_EMAILBOX_FULL (the recipient's quota; try again later),
 * AB_EUNAVAILABLE (the broker cannot store it now; nothing was stored), AB_EFORBIDDEN,
 * AB_ESCHEMA_INVALID (the payload does not fit `schema`), AB_ETOO_LARGE, AB_EINVAL (a bad
 * recipient, schema, option; last_error names it), AB_ETIMEDOUT (no answer: it may or may not
 * be stored), AB_ESTATE (not connected). While it waits the client serves its offers, inbox and
 * subscriptions as ab_call() does.
 */
int ab_send(ab_client_t *self, const char *recipient, const void *data, size_t len,
            const ab_send_options_t *opts, char id_out[33], int timeout_ms);

/*
 * Called once for every ab_send_async(): `status` as ab_send() returns it; `message_id_hex` (32
 * hex digits) and `errtext` are borrowed for the duration of the callback only.
 */
typedef void(ab_send_cb)(ab_client_t *client, int status, const char *message_id_hex,
                         const char *errtext, void *arg);

/*
 * Starts a send and returns at once; `cb` runs later exactly once, from ab_client_process() (or
 * within a blocking call), with the broker's answer or AB_ETIMEDOUT after 30 s. Errors and the
 * sends of callbacks and handlers behave as with ab_call_async(). `data` is copied.
 */
int ab_send_async(ab_client_t *self, const char *recipient, const void *data, size_t len,
                  const ab_send_options_t *opts, ab_send_cb *cb, void *arg);

/* A delivered mailbox message, a receipt, or an event; see ab_message_kind(). */
typedef struct ab_message ab_message_t;

enum { AB_MSG_MESSAGE = 1, AB_MSG_RECEIPT = 2, AB_MSG_EVENT = 3 };
/* What became of a message sent with ab_send(), told in a receipt (amtsbote.v1.ReceiptStatus). */
enum { AB_RECEIPT_DELIVERED = 1, AB_RECEIPT_EXPIRED = 2, AB_RECEIPT_FAILED = 3 };

/*
 * Runs for each message, receipt or event. The handler owns `msg`: it must pass it to ab_ack()
 * or ab_message_free(), now or later (a message kept counts against the credit until then).
 */
typedef void(ab_message_fn)(ab_client_t *client, ab_message_t *msg, void *arg);

/*
 * Attaches to this participant's mailbox: sends CREDIT `credit` (how many messages and receipts
 * the broker delivers before this client acknowledges any) and waits up to 5 s for the broker's
 * answer; from then on `fn` runs for each message and receipt. Called again, it changes the
 * credit and the handler. `credit` 0 detaches (what is delivered meanwhile is freed without an
 * ACK, so the broker delivers it again later). The client sends heartbeats while attached, and
 * attaches again by itself after a reconnect. Returns 0 or the broker's error.
 */
int ab_inbox(ab_client_t *self, uint32_t credit, ab_message_fn *fn, void *arg);

/* ---- Events: publish and subscribe ------------------------------------------------------ */

/*
 * Publishes `len` bytes of `data` on `topic` (dotted segments of A-Z a-z 0-9 _ -, e.g.
 * "meldewesen.umzug.09162000"), with the message type `schema` (NULL or "" for none), and waits
 * up to `timeout_ms` (0: 30000) until the broker has stored it for every durable subscription it
 * matches. `id_out` (33 bytes, may be NULL) gets its message id in hex. Returns 0 or an AB_E*
 * code as ab_send().
 */
int ab_publish(ab_client_t *self, const char *topic, const void *data, size_t len,
               const char *schema, char id_out[33], int timeout_ms);

/*
 * Starts a PUBLISH and returns at once; `cb` runs later exactly once with the broker's answer
 * (as ab_publish() returns it) or AB_ETIMEDOUT after 30 s, as with ab_send_async().
 */
int ab_publish_async(ab_client_t *self, const char *topic, const void *data, size_t len,
                     const char *schema, ab_send_cb *cb, void *arg);

/*
 * Subscribes to the topics matching `pattern` (a segment `*` matches one segment, a last `>` the
 * rest: "meldewesen.umzug.>") and waits up to 5 s for the broker's answer; `fn` runs for each
 * event. With `durable` NULL the subscription is ephemeral: it sees what is published while
 * connected, at most once, and ab_ack() only frees the event; an event that matches several
 * ephemeral patterns of this client goes once, to the handler subscribed first.
 * With `durable` a name (1-64 of
 * a-z 0-9 _ - .), the broker keeps the events for this participant's subscription of that
 * name until they are acknowledged, and resumes after the last acknowledged one when a client of
 * the participant subscribes again; `credit` (0: 100) bounds the events delivered before any is
 * acknowledged. The client subscribes again by itself after a reconnect, and sends heartbeats
 * while it has subscriptions. Closing the client ends its ephemeral subscriptions and leaves the
 * durable ones stored. Returns 0, AB_EINVAL (a bad pattern or name), AB_ESTATE (already
 * subscribed with this pattern and name) or the broker's error.
 */
int ab_subscribe(ab_client_t *self, const char *pattern, const char *durable, uint32_t credit,
                 ab_message_fn *fn, void *arg);

/*
 * Ends a subscription made with ab_subscribe() (same `pattern` and `durable`) and waits for the
 * broker. With `durable` set this deletes the durable subscription at the broker together with
 * the events that wait for it; to stop receiving and keep it, close the client instead. A
 * durable subscription this client has not subscribed to may be deleted too (`pattern` is then
 * ignored). Returns 0, AB_EINVAL (not subscribed) or the broker's error.
 */
int ab_unsubscribe(ab_client_t *self, const char *pattern, const char *durable);

/* ---- Delivered messages, receipts and events --------------------------------------------- */

/*
 * Acknowledges `*msg_p` (ACK with its sequence, and its subscription for an event of a durable
 * subscription), remembers it as acknowledged, frees it and sets *msg_p to NULL. Called from a
 * handler the ACK goes out with the rest of the batch. An event of an ephemeral subscription is
 * only freed. Returns 0, AB_ESTATE when the client is gone (the message is freed all the same;
 * the broker delivers it again), or an error when the ACK could not be sent.
 */
int ab_ack(ab_message_t **msg_p);

/* Frees a message without acknowledging it: the broker delivers it again later. Accepts NULL. */
void ab_message_free(ab_message_t **msg_p);

/* Accessors; strings are borrowed until the message is freed, "" when not set. */
int ab_message_kind(const ab_message_t *m); /* AB_MSG_* */
/* The payload (a receipt has none: length 0); never NULL for a message. */
const void *ab_message_payload(const ab_message_t *m, size_t *len);
const char *ab_message_id(const ab_message_t *m);        /* 32 hex digits; a receipt's own id */
const char *ab_message_sender(const ab_message_t *m);    /* authenticated by the broker */
const char *ab_message_recipient(const ab_message_t *m); /* receipt: the message's recipient */
const char *ab_message_topic(const ab_message_t *m);     /* event */
const char *ab_message_schema(const ab_message_t *m);
const char *ab_message_purpose(const ab_message_t *m);
const char *ab_message_subscription(const ab_message_t *m); /* event of a durable subscription */
const char *ab_message_about(const ab_message_t *m); /* receipt: id (32 hex) of the message */
int ab_message_receipt(const ab_message_t *m);       /* receipt: AB_RECEIPT_*; otherwise 0 */
const char *ab_message_error(const ab_message_t *m); /* receipt EXPIRED / FAILED: why */
/* Unix ms: accepted (message), happened (receipt), published (event). */
uint64_t ab_message_timestamp_ms(const ab_message_t *m);
uint32_t ab_message_attempt(const ab_message_t *m);  /* 1 on the first delivery */
uint64_t ab_message_sequence(const ab_message_t *m); /* the broker's number; 0 ephemeral */

/* Redeliveries of acknowledged messages and events that the library acknowledged and dropped. */
uint64_t ab_client_duplicates_dropped(const ab_client_t *self);

/* ---- Driving the client from your own loop ---------------------------------------------- */

/*
 * A file descriptor that becomes readable when the client may have work. It is edge-triggered:
 * after it polls readable, call ab_client_process() until it returns 0 (nothing left).
 */
int ab_client_fd(const ab_client_t *self);

/*
 * Processes everything that has arrived, runs callbacks and handlers, expires deadlines and
 * sends heartbeats. Returns 0 when nothing is left to do right now, 1 when it stopped after a
 * budget and should be called again, or a negative AB_E* code.
 */
int ab_client_process(ab_client_t *self);

/*
 * Milliseconds until ab_client_process() must run again for timers (-1: no timer pending). While
 * answers are awaited it is at most 100 ms: a broken connection to the broker ends them at once
 * (AB_EUNAVAILABLE: no answer can come over the next connection) instead of at their deadlines.
 */
int ab_client_next_timeout(const ab_client_t *self);

/*
 * Drives the client until ab_client_stop() is called (from a handler, a callback or a signal
 * handler) or, when `timeout_ms` >= 0, until that much time has passed. Returns 0 or an AB_E*.
 */
int ab_client_run(ab_client_t *self, int timeout_ms);

/* Makes ab_client_run() return. Async-signal-safe. */
void ab_client_stop(ab_client_t *self);

/* ---- protoc-c's own service stubs through the broker ------------------------------------ */

/*
 * protoc-c generates for every method `pkg__svc__method(ProtobufCService *service, input,
 * closure, closure_data)`. These make its stubs work through the broker; include
 * <protobuf-c/protobuf-c.h> to use them (the types are only declared here). For typed stubs
 * with deadlines and typed providers, see protoc-gen-amtsbote and amtsbote_generate().
 */
struct ProtobufCService;
struct ProtobufCServiceDescriptor;

/*
 * A ProtobufCService whose invoke packs the input, calls "package.Service/Method" (the name in
 * `desc`) with ab_call() on `client` with `timeout_ms` (0: 30000), and runs the closure before it
 * returns: with the unpacked output (borrowed for the closure's duration), or with NULL on any
 * failure (ab_client_last_error() says why when the call failed; an output that does not unpack
 * leaves it unchanged). `client` is borrowed and must outlive the service. Returns NULL for a
 * NULL argument or when out of memory. Free with ab_protobuf_service_destroy() (or
 * protobuf_c_service_destroy()).
 */
struct ProtobufCService *ab_protobuf_service_new(ab_client_t *client,
                                                 const struct ProtobufCServiceDescriptor *desc,
                                                 int timeout_ms);

/* Frees a service made by ab_protobuf_service_new(). Accepts NULL; sets *service_p to NULL. */
void ab_protobuf_service_destroy(struct ProtobufCService **service_p);

/*
 * Offers every method of `impl` (a service implemented with protoc-c's PKG__SVC__INIT) as
 * "package.Service" and dispatches each call to impl->invoke with the unpacked input. The
 * closure answers: with its output, or with NULL for an error reply (the caller sees
 * AB_EPROVIDER); it must run exactly once and may run later, but the input is valid only during
 * invoke. A request that does not unpack is answered with an error. `impl` is borrowed and must
 * outlive the offer; ab_withdraw(client, desc->name) withdraws it. Returns as ab_offer().
 */
int ab_protobuf_service_offer(ab_client_t *client, struct ProtobufCService *impl);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif
#endif /* AMTSBOTE_H */
