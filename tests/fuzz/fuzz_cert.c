/*
 * Certificate identity extraction: ab_tls_participant() on whatever certificate OpenSSL parses
 * from the input (PEM when it starts with "-----BEGIN", DER otherwise). The broker calls it on
 * every client certificate after the chain verified, the tunnel on its own. Promises (abort on
 * violation):
 *
 *   - it returns 0 with a participant address that ab_wire_check_participant() accepts and
 *     that is exactly what follows the prefix in the certificate's one SAN URI; or AB_EINVAL
 *     with an empty address and a reason in valid UTF-8 without control characters (it goes
 *     into the log line and the refusal) that names the certificate or the participant address.
 *
 * Nothing else is promised of a certificate (chain, validity, key usage are OpenSSL's).
 */
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amtsbote.h"
#include "fuzz_check.h"
#include "tls.h"
#include "wire.h"

#define CHECK AB_FUZZ_CHECK

/* A client certificate with a chain is a few KiB; TLS itself caps a certificate message. */
#define S_MAX_INPUT 16384

/* The one SAN URI with our prefix, independently of tls.c, or NULL. */
static int
s_expected(X509 *cert, char *out, size_t cap)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    int found = 0;
    const size_t plen = strlen(AB_TLS_URI_PREFIX);
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type != GEN_URI)
            continue;
        const ASN1_STRING *s = gn->d.uniformResourceIdentifier;
        size_t len = (size_t)ASN1_STRING_length(s);
        const unsigned char *d = ASN1_STRING_get0_data(s);
        if (len > plen && !memcmp(d, AB_TLS_URI_PREFIX, plen) && len - plen < cap) {
            memcpy(out, d + plen, len - plen);
            out[len - plen] = '\0';
            found++;
        }
    }
    GENERAL_NAMES_free(names);
    return found;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > S_MAX_INPUT)
        return -1;
    X509 *cert = NULL;
    static const char pem[] = "-----BEGIN";
    if (size >= sizeof pem - 1 && !memcmp(data, pem, sizeof pem - 1)) {
        BIO *b = BIO_new_mem_buf(data, (int)size);
        CHECK(b != NULL, "BIO_new_mem_buf");
        cert = PEM_read_bio_X509(b, NULL, NULL, NULL);
        BIO_free(b);
    } else {
        const unsigned char *p = data;
        cert = d2i_X509(NULL, &p, (long)size);
    }
    ERR_clear_error();
    if (!cert)
        return 0;

    char out[AB_MAX_NAME + 1], why[AB_WHY_LEN];
    memset(out, 'x', sizeof out);
    why[0] = '\0';
    int rc = ab_tls_participant(cert, out, why);
    if (rc == 0) {
        char bad[AB_WHY_LEN], want[AB_MAX_NAME + 1];
        CHECK(ab_wire_check_participant(out, bad) == 0, "'%s' returned: %s", out, bad);
        CHECK(s_expected(cert, want, sizeof want) == 1 && !strcmp(want, out),
              "'%s' is not the certificate's one participant URI", out);
    } else {
        size_t n = strnlen(why, sizeof why);
        CHECK(rc == AB_EINVAL, "returned %d", rc);
        CHECK(out[0] == '\0', "a refused certificate left an address");
        CHECK(n > 0 && n < sizeof why, "refused without a reason");
        CHECK(ab_utf8_valid(why, n), "reason is not valid UTF-8: %s", why);
        for (size_t i = 0; i < n; i++)
            CHECK((unsigned char)why[i] >= 0x20 && why[i] != 0x7f,
                  "reason has control character 0x%02x", (unsigned char)why[i]);
        CHECK(strstr(why, "certificate") || strstr(why, "participant"),
              "reason names neither the certificate nor the participant: %s", why);
    }
    X509_free(cert);
    ERR_clear_error();
    return 0;
}
