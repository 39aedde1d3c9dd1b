/*
 * The access policy loader on arbitrary YAML: ab_policy_load_buffer(). Promises (abort on
 * violation):
 *
 *   - a refused file gives AB_EINVAL (AB_ENOMEM only when memory ran out) and an error whose
 *     message is "fuzz.yaml:LINE:COL: text" (or "fuzz.yaml: text" for what is about the whole
 *     file), valid UTF-8;
 *   - a loaded policy decides for a few participants, every action, a few resources, purposes
 *     and levels without crashing; the decision is the same when asked again (the participant
 *     is then cached) and the same in a second policy loaded from the same bytes; a denial has
 *     a reason, an allowing decision names its rule; reasons are valid UTF-8 (they reach the
 *     caller in an error header); ab_policy_cleared() agrees with ab_policy_clearance().
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amtsbote.h"
#include "fuzz_check.h"
#include "policy.h"
#include "wire.h"

#define CHECK AB_FUZZ_CHECK

/* Policies are files an administrator writes; 64 KiB covers every realistic one and keeps the
 * decisions per input cheap. */
#define S_MAX_INPUT 65536

static const char *const s_participants[] = {
    "bund.bmi", "bund.extern.dienstleister", "kommune.09162000.meldeamt", "land.by.stmi", "a.b",
    "x",        "kommune.05315000.meldeamt", "bund.itzbund.betrieb",
};
static const char *const s_resources[] = {
    "meldewesen.v1.Melderegister/Meldebescheinigung",
    "meldewesen.v1.Melderegister",
    "land.by.stmi",
    "kommune.09162000.meldeamt",
    "meldewesen.umzug.09162000",
    "meldewesen.>",
    "meldewesen.umzug.*",
    "meldewesen.v1",
    "audit.query",
    "",
};
static const char *const s_purposes[] = {NULL, "BMG §34", "AO §93"};

static void
s_check_decision(const ab_policy_decision_t *d, int allowed)
{
    size_t n = strnlen(d->reason, sizeof d->reason);
    CHECK(n < sizeof d->reason, "reason not terminated");
    CHECK(ab_utf8_valid(d->reason, n), "reason is not valid UTF-8: %s", d->reason);
    CHECK(allowed == d->allowed, "return value %d, decision says %d", allowed, d->allowed);
    if (allowed) {
        CHECK(d->why == AB_POLICY_ALLOWED && d->rule != NULL && d->rule_line > 0,
              "allowed without a rule");
    } else {
        CHECK(d->why != AB_POLICY_ALLOWED && n > 0, "denied without a reason");
        CHECK(d->rule == NULL || d->rule_line > 0, "rule '%s' without a line", d->rule);
    }
}

static void
s_same(const ab_policy_decision_t *a, const ab_policy_decision_t *b, const char *what)
{
    CHECK(a->allowed == b->allowed && a->why == b->why && a->rule_line == b->rule_line &&
              !strcmp(a->reason, b->reason) &&
              ((!a->rule && !b->rule) || (a->rule && b->rule && !strcmp(a->rule, b->rule))),
          "%s: '%s' then '%s'", what, a->reason, b->reason);
}

static void
s_check_error(int rc, const ab_policy_error_t *err)
{
    CHECK(rc == AB_EINVAL || rc == AB_ENOMEM, "load returned %d", rc);
    CHECK(err->text[0] != '\0', "a refusal without a text");
    CHECK(!strcmp(err->file, "fuzz.yaml"), "error names file '%s'", err->file);
    char place[64];
    if (err->line > 0)
        snprintf(place, sizeof place, "fuzz.yaml:%zu:%zu: ", err->line, err->col);
    else
        snprintf(place, sizeof place, "fuzz.yaml: ");
    CHECK(!strncmp(err->message, place, strlen(place)), "message '%s' does not start with '%s'",
          err->message, place);
    CHECK(err->line == 0 || err->col > 0, "a line without a column");
    CHECK(ab_utf8_valid(err->message, strlen(err->message)), "message is not valid UTF-8: %s",
          err->message);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > S_MAX_INPUT)
        return -1;
    ab_policy_t *p = NULL, *q = NULL;
    ab_policy_error_t err;
    int rc = ab_policy_load_buffer((const char *)data, size, "fuzz.yaml", &p, &err);
    if (rc != 0) {
        CHECK(p == NULL, "a refused policy was handed out");
        s_check_error(rc, &err);
        return 0;
    }
    CHECK(p != NULL, "loaded without a policy");
    rc = ab_policy_load_buffer((const char *)data, size, "fuzz.yaml", &q, &err);
    CHECK(rc == 0, "the same bytes loaded once and then not: %s", err.message);

    const size_t np = sizeof s_participants / sizeof s_participants[0];
    const size_t nr = sizeof s_resources / sizeof s_resources[0];
    for (size_t i = 0; i < np; i++) {
        const char *who = s_participants[i];
        int c = ab_policy_clearance(p, who);
        CHECK(c == AB_POLICY_OFFEN || c == AB_POLICY_VS_NFD, "clearance %d", c);
        CHECK(c == ab_policy_clearance(q, who), "clearance differs between two loads");
        for (int level = AB_POLICY_OFFEN; level <= AB_POLICY_VS_NFD; level++)
            CHECK(ab_policy_cleared(p, who, level) == (c >= level), "cleared disagrees");
        for (int a = 0; a < AB_POLICY_ACTION_COUNT; a++) {
            for (size_t r = 0; r < nr; r++) {
                /* not every combination: the participant and resource pick the purpose and level */
                const char *purpose = s_purposes[(i + r) % 3];
                int level = (int)((i + r + (size_t)a) % 3);
                ab_policy_decision_t d1, d2, d3;
                int allowed = ab_policy_decide(p, who, (ab_policy_action_t)a, s_resources[r],
                                               purpose, level, &d1);
                s_check_decision(&d1, allowed);
                s_check_decision(&d2, ab_policy_decide(p, who, (ab_policy_action_t)a,
                                                       s_resources[r], purpose, level, &d2));
                s_same(&d1, &d2, "asked twice");
                s_check_decision(&d3, ab_policy_decide(q, who, (ab_policy_action_t)a,
                                                       s_resources[r], purpose, level, &d3));
                s_same(&d1, &d3, "two loads");
            }
        }
    }
    /* requests the broker refuses before asking, asked anyway */
    ab_policy_decision_t d;
    CHECK(ab_policy_decide(p, "", AB_POLICY_CALL, "a.B/C", NULL, 0, &d) == 0, "empty participant");
    CHECK(ab_policy_decide(p, "a.b", AB_POLICY_ACTION_COUNT, "x", NULL, 0, &d) == 0, "action");
    CHECK(ab_policy_decide(p, "a.b", AB_POLICY_CALL, "x", NULL, 7, &d) == 0, "level 7");
    (void)ab_policy_group_count(p);
    (void)ab_policy_rule_count(p);
    ab_policy_destroy(&p);
    ab_policy_destroy(&q);
    CHECK(p == NULL && q == NULL, "destroy did not null the pointer");
    return 0;
}
