/*
 * tls.c - contexts, identity from certificates, memory-BIO sessions.
 */
#include "tls.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* BSI TR-02102-2: ECDHE with AES-GCM for TLS 1.2; TLS 1.3's own suites are all AEAD. */
#define TLS12_SUITES                                                                               \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"                                 \
    "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"

const char *
ab_tls_errors(char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = '\0';
    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
        char one[256];
        ERR_error_string_n(e, one, sizeof one);
        int w = snprintf(buf + n, len - n, "%s%s", n ? "; " : "", one);
        if (w < 0 || (size_t)w >= len - n)
            break;
        n += (size_t)w;
    }
    if (!buf[0])
        snprintf(buf, len, "no detail from OpenSSL");
    return buf;
}

static int
s_load_crls(SSL_CTX *ctx, const char *path, char *err, size_t errlen)
{
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    X509_LOOKUP *lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
    if (!lookup || X509_load_crl_file(lookup, path, X509_FILETYPE_PEM) <= 0) {
        char e[512];
        snprintf(err, errlen, "%s: cannot load a CRL from this file: %s", path,
                 ab_tls_errors(e, sizeof e));
        return -1;
    }
    /* the leaf and every intermediate are checked */
    X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
    return 0;
}

/*
 * OpenSSL's own default asks on the terminal for the passphrase of an encrypted key; a daemon or
 * library must not. Gives the configured passphrase, or none (and the key fails to load).
 */
static int
s_passphrase(char *buf, int size, int rwflag, void *userdata)
{
    (void)rwflag;
    const char *pass = userdata;
    if (!pass || size <= 0)
        return 0;
    size_t n = strlen(pass);
    if (n > (size_t)size)
        return 0;
    memcpy(buf, pass, n);
    return (int)n;
}

/* Which certificate the verification of the peer's chain failed at, for s_reason(): written by
 * s_verify_cb() inside SSL_do_handshake() on this thread and read right after it, so that the
 * log names the certificate (its CN and validity), not only the error. */
static __thread char s_bad_cert[200];

static void
s_asn1_time(const ASN1_TIME *t, char *out, size_t cap)
{
    struct tm tm;
    if (t && ASN1_TIME_to_tm(t, &tm) == 1)
        strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
    else
        snprintf(out, cap, "?");
}

static int
s_verify_cb(int ok, X509_STORE_CTX *x)
{
    X509 *c = X509_STORE_CTX_get_current_cert(x);
    if (ok || s_bad_cert[0] || !c)
        return ok;
    char cn[80] = "", from[32], to[32];
    X509_NAME_get_text_by_NID(X509_get_subject_name(c), NID_commonName, cn, sizeof cn);
    for (char *p = cn; *p; p++) /* the peer wrote it: printable ASCII only, no quotes */
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e || *p == '"' || *p == '\\')
            *p = '?';
    s_asn1_time(X509_get0_notBefore(c), from, sizeof from);
    s_asn1_time(X509_get0_notAfter(c), to, sizeof to);
    int depth = X509_STORE_CTX_get_error_depth(x);
    if (depth == 0)
        snprintf(s_bad_cert, sizeof s_bad_cert, "the peer's certificate CN=%s, valid %s to %s", cn,
                 from, to);
    else
        snprintf(s_bad_cert, sizeof s_bad_cert, "CA certificate CN=%s at depth %d, valid %s to %s",
                 cn, depth, from, to);
    return ok;
}

SSL_CTX *
ab_tls_ctx_new(int server, const ab_tls_config_t *cfg, char *err, size_t errlen)
{
    char e[512];
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "cannot create a TLS context: %s", ab_tls_errors(e, sizeof e));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, cfg->allow_tls12 ? TLS1_2_VERSION : TLS1_3_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (cfg->allow_tls12 && SSL_CTX_set_cipher_list(ctx, TLS12_SUITES) != 1) {
        snprintf(err, errlen, "cannot set the TLS 1.2 suites: %s", ab_tls_errors(e, sizeof e));
        goto fail;
    }
    if (cfg->cert && SSL_CTX_use_certificate_chain_file(ctx, cfg->cert) != 1) {
        snprintf(err, errlen, "%s: cannot use this certificate file: %s", cfg->cert,
                 ab_tls_errors(e, sizeof e));
        goto fail;
    }
    /* the passphrase is borrowed: it is set for the key's loading only */
    SSL_CTX_set_default_passwd_cb(ctx, s_passphrase);
    SSL_CTX_set_default_passwd_cb_userdata(ctx, (void *)cfg->key_passphrase);
    int key_ok = !cfg->key || SSL_CTX_use_PrivateKey_file(ctx, cfg->key, SSL_FILETYPE_PEM) == 1;
    SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
    if (!key_ok) {
        snprintf(err, errlen, "%s: cannot use this private key%s: %s", cfg->key,
                 cfg->key_passphrase ? " with the passphrase given" : "",
                 ab_tls_errors(e, sizeof e));
        goto fail;
    }
    if (cfg->cert && cfg->key && SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "%s does not belong to the certificate in %s", cfg->key, cfg->cert);
        goto fail;
    }
    if (!cfg->ca || SSL_CTX_load_verify_locations(ctx, cfg->ca, NULL) != 1) {
        snprintf(err, errlen, "%s: cannot load CA certificates from this file: %s",
                 cfg->ca ? cfg->ca : "(no CA file given)", ab_tls_errors(e, sizeof e));
        goto fail;
    }
    if (cfg->crl && s_load_crls(ctx, cfg->crl, err, errlen) != 0)
        goto fail;
    /* the peer must present a certificate for its role: clientAuth or serverAuth */
    SSL_CTX_set_purpose(ctx, server ? X509_PURPOSE_SSL_CLIENT : X509_PURPOSE_SSL_SERVER);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                       s_verify_cb);
    if (server) {
        /* an idle session gives its record buffers (~2 x 17 KiB) back until bytes move again:
         * the broker holds thousands of sessions that are mostly quiet */
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
        /* the client's certificate is all that identifies it: ask for no session resumption */
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_num_tickets(ctx, 0);
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

int
ab_tls_participant(X509 *cert, char out[AB_MAX_NAME + 1], char why[AB_WHY_LEN])
{
    out[0] = '\0';
    if (!cert) {
        snprintf(why, AB_WHY_LEN, "no client certificate");
        return AB_EINVAL;
    }
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    int uris = 0, ours = 0, rc = AB_EINVAL;
    char addr[AB_MAX_NAME + 1] = "";
    const size_t plen = strlen(AB_TLS_URI_PREFIX);
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type != GEN_URI)
            continue;
        uris++;
        const unsigned char *data = ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
        int len = ASN1_STRING_length(gn->d.uniformResourceIdentifier);
        if (len < 0 || (size_t)len <= plen || memcmp(data, AB_TLS_URI_PREFIX, plen) != 0)
            continue;
        ours++;
        size_t alen = (size_t)len - plen;
        if (alen > AB_MAX_NAME) {
            snprintf(why, AB_WHY_LEN, "the participant address in the certificate is too long");
            goto out;
        }
        if (memchr(data + plen, 0, alen)) {
            snprintf(why, AB_WHY_LEN, "the participant address in the certificate holds a NUL");
            goto out;
        }
        memcpy(addr, data + plen, alen);
        addr[alen] = '\0';
    }
    if (ours == 0) {
        snprintf(why, AB_WHY_LEN, "the certificate has no SAN URI %s<address>", AB_TLS_URI_PREFIX);
        goto out;
    }
    if (uris > 1) {
        snprintf(why, AB_WHY_LEN, "the certificate has %d SAN URIs; exactly one is allowed", uris);
        goto out;
    }
    char bad[AB_WHY_LEN];
    if (ab_wire_check_participant(addr, bad) != 0) {
        snprintf(why, AB_WHY_LEN, "%s", bad);
        goto out;
    }
    memcpy(out, addr, strlen(addr) + 1);
    rc = 0;
out:
    GENERAL_NAMES_free(names);
    return rc;
}

struct ab_tls_session {
    SSL *ssl;
    BIO *in;  /* ciphertext from the network */
    BIO *out; /* ciphertext for the network */
    int done;
};

ab_tls_session_t *
ab_tls_session_new(SSL_CTX *ctx, int server, const char *hostname)
{
    ab_tls_session_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->ssl = SSL_new(ctx);
    self->in = BIO_new(BIO_s_mem());
    self->out = BIO_new(BIO_s_mem());
    if (!self->ssl || !self->in || !self->out) {
        SSL_free(self->ssl);
        BIO_free(self->in);
        BIO_free(self->out);
        free(self);
        return NULL;
    }
    BIO_set_mem_eof_return(self->in, -1); /* empty means "more to come", not EOF */
    SSL_set_bio(self->ssl, self->in, self->out);
    if (server) {
        SSL_set_accept_state(self->ssl);
    } else {
        SSL_set_connect_state(self->ssl);
        int ok = 1;
        ASN1_OCTET_STRING *ip = hostname ? a2i_IPADDRESS(hostname) : NULL;
        if (ip) {
            /* an address: no SNI (RFC 6066 allows names only), checked against the IP SANs */
            ASN1_OCTET_STRING_free(ip);
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(self->ssl), hostname) == 1;
        } else if (hostname) {
            ok = SSL_set_tlsext_host_name(self->ssl, hostname) == 1 &&
                 SSL_set1_host(self->ssl, hostname) == 1;
        }
        if (!ok) {
            /* without the check any certificate of the CA would do: no session at all */
            SSL_free(self->ssl);
            free(self);
            return NULL;
        }
    }
    return self;
}

void
ab_tls_session_destroy(ab_tls_session_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    SSL_free((*self_p)->ssl); /* frees both BIOs */
    free(*self_p);
    *self_p = NULL;
}

int
ab_tls_session_feed(ab_tls_session_t *self, const void *data, size_t len)
{
    if (len && BIO_write(self->in, data, (int)len) != (int)len)
        return AB_ENOMEM;
    return 0;
}

/* Says why the handshake failed, in the words an operator looks for. */
static void
s_reason(ab_tls_session_t *self, char why[AB_WHY_LEN])
{
    long v = SSL_get_verify_result(self->ssl);
    char e[512];
    if (v != X509_V_OK) {
        if (s_bad_cert[0])
            snprintf(why, AB_WHY_LEN, "certificate refused: %s (%s)",
                     X509_verify_cert_error_string(v), s_bad_cert);
        else
            snprintf(why, AB_WHY_LEN, "certificate refused: %s", X509_verify_cert_error_string(v));
        s_bad_cert[0] = '\0';
        ERR_clear_error(); /* see ab_tls_session_handshake() */
    } else
        snprintf(why, AB_WHY_LEN, "handshake failed: %s", ab_tls_errors(e, sizeof e));
}

int
ab_tls_session_handshake(ab_tls_session_t *self, char why[AB_WHY_LEN])
{
    if (self->done)
        return 1;
    /*
     * OpenSSL's error queue is per thread, shared by every session on it, and SSL_get_error()
     * reports SSL_ERROR_SSL whenever the queue is not empty: an error another session left
     * there would end this one. So each call starts with an empty queue.
     */
    ERR_clear_error();
    s_bad_cert[0] = '\0';
    int rc = SSL_do_handshake(self->ssl);
    if (rc == 1) {
        self->done = 1;
        return 1;
    }
    int err = SSL_get_error(self->ssl, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
        return 0;
    s_reason(self, why);
    return AB_EREFUSED;
}

int
ab_tls_session_read(ab_tls_session_t *self, void *buf, size_t cap, char why[AB_WHY_LEN])
{
    ERR_clear_error(); /* see ab_tls_session_handshake() */
    int n = SSL_read(self->ssl, buf, (int)cap);
    if (n > 0)
        return n;
    int err = SSL_get_error(self->ssl, n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
        return 0;
    if (err == SSL_ERROR_ZERO_RETURN)
        snprintf(why, AB_WHY_LEN, "closed by the peer");
    else
        s_reason(self, why);
    return AB_EIO;
}

int
ab_tls_session_write(ab_tls_session_t *self, const void *data, size_t len)
{
    /* with memory BIOs a write never blocks: it all goes into the out BIO */
    ERR_clear_error();
    return len == 0 || SSL_write(self->ssl, data, (int)len) == (int)len ? 0 : AB_EIO;
}

size_t
ab_tls_session_pending(ab_tls_session_t *self)
{
    return BIO_ctrl_pending(self->out);
}

size_t
ab_tls_session_take(ab_tls_session_t *self, void *buf, size_t cap)
{
    int n = BIO_read(self->out, buf, (int)cap);
    return n > 0 ? (size_t)n : 0;
}

X509 *
ab_tls_session_peer(ab_tls_session_t *self)
{
    return SSL_get0_peer_certificate(self->ssl);
}

int
ab_tls_session_verify_again(ab_tls_session_t *self, SSL_CTX *ctx, int peer_is_client,
                            char why[AB_WHY_LEN])
{
    X509 *leaf = SSL_get0_peer_certificate(self->ssl);
    if (!leaf) {
        snprintf(why, AB_WHY_LEN, "no peer certificate");
        return AB_EREFUSED;
    }
    X509_STORE_CTX *v = X509_STORE_CTX_new();
    if (!v) {
        snprintf(why, AB_WHY_LEN, "out of memory");
        return AB_EREFUSED;
    }
    /* on the server side the peer's chain does not include its leaf */
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(self->ssl);
    int rc = AB_EREFUSED;
    if (X509_STORE_CTX_init(v, SSL_CTX_get_cert_store(ctx), leaf, chain) == 1) {
        X509_STORE_CTX_set_purpose(v, peer_is_client ? X509_PURPOSE_SSL_CLIENT
                                                     : X509_PURPOSE_SSL_SERVER);
        if (X509_verify_cert(v) == 1)
            rc = 0;
        else
            snprintf(why, AB_WHY_LEN, "certificate refused: %s",
                     X509_verify_cert_error_string(X509_STORE_CTX_get_error(v)));
    } else {
        snprintf(why, AB_WHY_LEN, "cannot set up the verification");
    }
    X509_STORE_CTX_free(v);
    return rc;
}
