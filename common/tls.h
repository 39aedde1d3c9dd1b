/*
 * tls.h - OpenSSL for Amtsbote: contexts with the administration's rules, the participant
 * identity carried in a certificate, and a TLS session on memory BIOs that any event loop drives.
 *
 * Shared by the broker's TLS gateway (server side) and the client-side relay (client side), so
 * that both ends verify the same way. No I/O and no logging here: the caller moves the bytes.
 */
#ifndef AB_TLS_H
#define AB_TLS_H

#include <openssl/ssl.h>
#include <stddef.h>

#include "wire.h"

/* The SAN URI that carries a participant address: urn:amtsbote:participant:<address>. */
#define AB_TLS_URI_PREFIX "urn:amtsbote:participant:"

typedef struct ab_tls_config {
    const char *cert; /* PEM: own certificate (chain may follow) */
    const char *key;  /* PEM: own private key */
    const char *ca;   /* PEM: the CA certificates that issue the peers' certificates */
    const char *crl;  /* PEM: CRLs for the chain (optional) */
    int allow_tls12;  /* also TLS 1.2, with the BSI TR-02102-2 ECDHE + AES-GCM suites only */
    /* the passphrase of an encrypted `key` (borrowed, used only inside ab_tls_ctx_new); NULL:
     * the key must be unencrypted (OpenSSL never prompts on a terminal) */
    const char *key_passphrase;
} ab_tls_config_t;

/*
 * Makes a context: `server` verifies client certificates (required, clientAuth), otherwise
 * the peer must be a server (serverAuth). TLS 1.3 only unless allow_tls12; no renegotiation,
 * no compression. Returns NULL and a sentence naming the file at fault in `err`.
 */
SSL_CTX *ab_tls_ctx_new(int server, const ab_tls_config_t *cfg, char *err, size_t errlen);

/*
 * The participant address in `cert`: exactly one SAN URI of the agreed form, with a valid
 * address; the subject's CN is never used. Returns 0, or AB_EINVAL with the reason in `why`.
 */
int ab_tls_participant(X509 *cert, char out[AB_MAX_NAME + 1], char why[AB_WHY_LEN]);

/* Drains OpenSSL's error queue into one line (for the log); returns `buf`. */
const char *ab_tls_errors(char *buf, size_t len);

typedef struct ab_tls_session ab_tls_session_t;

/* A session on `ctx` (borrowed). `hostname` (client side) is checked against the server's
 * certificate when not NULL: a DNS name against its DNS SANs (and sent as SNI), an IP address
 * literal against its IP SANs. Returns NULL when out of memory. */
ab_tls_session_t *ab_tls_session_new(SSL_CTX *ctx, int server, const char *hostname);
void ab_tls_session_destroy(ab_tls_session_t **self_p);

/* Hands ciphertext that arrived from the network to the session. Returns 0 or AB_ENOMEM. */
int ab_tls_session_feed(ab_tls_session_t *self, const void *data, size_t len);

/*
 * Advances the handshake. Returns 1 when it is complete, 0 when it needs more input, or
 * AB_EREFUSED with the reason in `why` (e.g. "certificate has expired", "unknown CA").
 */
int ab_tls_session_handshake(ab_tls_session_t *self, char why[AB_WHY_LEN]);

/*
 * Reads decrypted bytes. Returns the count, 0 when none are ready, or AB_EIO when the session
 * failed or the peer closed it (then `why` says which).
 */
int ab_tls_session_read(ab_tls_session_t *self, void *buf, size_t cap, char why[AB_WHY_LEN]);

/* Encrypts `len` bytes for sending. Returns 0 or AB_EIO. */
int ab_tls_session_write(ab_tls_session_t *self, const void *data, size_t len);

/* Ciphertext waiting to go to the network: bytes available, and taking up to `cap` of them. */
size_t ab_tls_session_pending(ab_tls_session_t *self);
size_t ab_tls_session_take(ab_tls_session_t *self, void *buf, size_t cap);

/* The peer's certificate after the handshake (borrowed), or NULL. */
X509 *ab_tls_session_peer(ab_tls_session_t *self);

/*
 * Verifies the peer's certificate of an established session again, against the CA and CRLs of
 * `ctx` (e.g. after a reload). Returns 0, or AB_EREFUSED with the reason in `why`.
 */
int ab_tls_session_verify_again(ab_tls_session_t *self, SSL_CTX *ctx, int peer_is_client,
                                char why[AB_WHY_LEN]);

#endif
