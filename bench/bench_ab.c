/* bench_ab.c - see bench_ab.h. */
#include "bench_ab.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <unistd.h>

int
bench_ab_serve(ab_client_t *c, int rc, int ready_fd, int ctl, const char *prog)
{
    if (c == NULL || rc != 0) {
        fprintf(stderr, "%s: provider: %s: %s\n", prog, ab_err_name(c ? rc : AB_ENOMEM),
                c ? ab_client_last_error(c) : "out of memory");
        (void)!write(ready_fd, "F", 1);
        ab_client_destroy(&c);
        return 1;
    }
    (void)!write(ready_fd, "R", 1);
    close(ready_fd);
    for (;;) {
        rc = ab_client_process(c);
        if (rc > 0)
            continue;
        if (rc < 0) {
            fprintf(stderr, "%s: provider: %s: %s\n", prog, ab_err_name(rc),
                    ab_client_last_error(c));
            break;
        }
        int ms = ab_client_next_timeout(c);
        if (ms < 0 || ms > 1000)
            ms = 1000;
        struct pollfd p[2] = {{ab_client_fd(c), POLLIN, 0}, {ctl, POLLIN, 0}};
        if (poll(p, 2, ms) < 0 && errno != EINTR)
            break;
        if (p[1].revents)
            break;
    }
    ab_client_destroy(&c);
    return rc < 0 ? 1 : 0;
}

int
bench_ab_pki_identity(ab_client_t *c, const char *pki, const char *who)
{
    char cert[512], key[512], ca[512];
    snprintf(cert, sizeof cert, "%s/%s.crt", pki, who);
    snprintf(key, sizeof key, "%s/%s.key", pki, who);
    snprintf(ca, sizeof ca, "%s/ca/chain.pem", pki);
    ab_tls_options_t t = {.cert = cert, .key = key, .ca = ca};
    return ab_client_set_tls(c, &t);
}

void
bench_ab_echo(ab_client_t *client, ab_request_t *req, void *arg)
{
    (void)client, (void)arg;
    size_t len = 0;
    const void *data = ab_request_payload(req, &len);
    ab_reply(&req, data, len);
}
