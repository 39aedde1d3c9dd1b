/*
 * Unit tests for common/policy.c: a rule matrix over every action with allow and deny,
 * wildcards in WHO and RESOURCE, groups, purpose refusals that name the rule, classification
 * and clearance, every kind of bad file with its line:col, and 2,000 rules.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "amtsbote.h"
#include "policy.h"

static const char *s_policy =
    "groups:\n"                                                     /* 1 */
    "  kommunen: [\"kommune.*\"]\n"                                 /* 2 */
    "  bayern: [\"kommune.09*\", \"land.by.*\"]\n"                  /* 3 */
    "  bund: [bund.*]\n"                                            /* 4 */
    "clearances:\n"                                                 /* 5 */
    "  \"@bund\": VS-NUR-FUER-DEN-DIENSTGEBRAUCH\n"                 /* 6 */
    "  land.by.stmi: VS-NUR-FUER-DEN-DIENSTGEBRAUCH\n"              /* 7 */
    "  kommune.09162000.meldeamt: VS-NUR-FUER-DEN-DIENSTGEBRAUCH\n" /* 8 */
    "  \"@kommunen\": OFFEN\n"                                      /* 9 */
    "  bund.extern.*: OFFEN\n"                                      /* 10 */
    "rules:\n"                                                      /* 11 */
    "  - name: melde-auskunft\n"                                    /* 12 */
    "    who: \"@bund\"\n"                                          /* 13 */
    "    action: call\n"                                            /* 14 */
    "    resource: meldewesen.v1.Melderegister/*\n"                 /* 15 */
    "    purposes: [\"BMG §34\", \"BMG §45\"]\n"                    /* 16 */
    "  - name: kommunen-anbieten\n"                                 /* 17 */
    "    who: \"@kommunen\"\n"                                      /* 18 */
    "    action: offer\n"                                           /* 19 */
    "    resource: meldewesen.v1.Melderegister/*\n"                 /* 20 */
    "  - {name: bayern-senden, who: \"@bayern\", action: send, resource: land.by.*}\n"
    "  - {id: stmi-empfangen, who: land.by.stmi, action: receive, resource: kommune.09*}\n"
    "  - name: umzug-melden\n"             /* 23 */
    "    who: kommune.????????.meldeamt\n" /* 24 */
    "    action: publish\n"                /* 25 */
    "    resource: meldewesen.umzug.*\n"   /* 26 */
    "  - {name: umzug-lesen, who: \"@bund\", action: subscribe, resource: meldewesen.>}\n"
    "  - {name: schema-bmi, who: bund.bmi, action: schema-push, resource: meldewesen.*}\n"
    "  - {name: admin, who: bund.itzbund.betrieb, action: admin, resource: \"*\"}\n"
    "  - who: bund.bmi\n" /* 30: rule-9 */
    "    action: call\n"
    "    resource: statistik.v1.Statistik/Abfrage\n"
    "  - {name: alle-lesen, who: \"*\", action: subscribe, resource: wetter.*.warnung}\n";

static ab_policy_t *
load(const char *text)
{
    ab_policy_t *p = NULL;
    ab_policy_error_t err;
    int rc = ab_policy_load_buffer(text, strlen(text), "test.yaml", &p, &err);
    if (rc != 0)
        fail_msg("load failed: %s", err.message);
    return p;
}

static int
setup(void **state)
{
    *state = load(s_policy);
    return *state ? 0 : -1;
}

static int
teardown(void **state)
{
    ab_policy_t *p = *state;
    ab_policy_destroy(&p);
    assert_null(p);
    ab_policy_destroy(&p); /* safe twice */
    return 0;
}

typedef struct {
    const char *who, *action, *resource, *purpose;
    int level;
    int allowed;
    ab_policy_why_t why;
    const char *rule;   /* NULL: none */
    const char *reason; /* a part of the reason, or NULL */
} case_t;

static const case_t s_matrix[] = {
    /* call: group WHO, glob method, purposes */
    {"bund.bmi", "call", "meldewesen.v1.Melderegister/Meldebescheinigung", "BMG §34", 0, 1,
     AB_POLICY_ALLOWED, "melde-auskunft", "allowed by rule 'melde-auskunft'"},
    {"bund.bva", "call", "meldewesen.v1.Melderegister/Auskunft", "BMG §45", 1, 1, AB_POLICY_ALLOWED,
     "melde-auskunft", NULL},
    {"bund.bmi", "call", "meldewesen.v1.Melderegister/Meldebescheinigung", NULL, 0, 0,
     AB_POLICY_NO_PURPOSE, "melde-auskunft",
     "rule 'melde-auskunft' (test.yaml:12) requires one of the purposes 'BMG §34', 'BMG §45'; "
     "the message gives none"},
    {"bund.bmi", "call", "meldewesen.v1.Melderegister/Meldebescheinigung", "AO §93", 0, 0,
     AB_POLICY_NO_PURPOSE, "melde-auskunft", "the message gives 'AO §93'"},
    {"kommune.09162000.meldeamt", "call", "meldewesen.v1.Melderegister/Meldebescheinigung",
     "BMG §34", 0, 0, AB_POLICY_WRONG_WHO, "melde-auskunft", "only for @bund"},
    {"bund.bmi", "call", "meldewesen.v2.Melderegister/Meldebescheinigung", "BMG §34", 0, 0,
     AB_POLICY_NO_RULE, NULL, "no rule allows bund.bmi to call"},
    {"bund.bmi", "call", "statistik.v1.Statistik/Abfrage", NULL, 0, 1, AB_POLICY_ALLOWED, "rule-9",
     NULL},
    {"bund.bmi", "call", "statistik.v1.Statistik/Abfrage2", NULL, 0, 0, AB_POLICY_NO_RULE, NULL,
     NULL},
    {"bund.bva", "call", "statistik.v1.Statistik/Abfrage", NULL, 0, 0, AB_POLICY_WRONG_WHO,
     "rule-9", NULL},
    /* offer: `Service/ *` covers the bare service and each method */
    {"kommune.09162000.meldeamt", "offer", "meldewesen.v1.Melderegister", NULL, 0, 1,
     AB_POLICY_ALLOWED, "kommunen-anbieten", NULL},
    {"kommune.05315000.meldeamt", "offer", "meldewesen.v1.Melderegister/Meldebescheinigung", NULL,
     0, 1, AB_POLICY_ALLOWED, "kommunen-anbieten", NULL},
    {"land.by.stmi", "offer", "meldewesen.v1.Melderegister", NULL, 0, 0, AB_POLICY_WRONG_WHO,
     "kommunen-anbieten", NULL},
    {"kommune.09162000.meldeamt", "offer", "meldewesen.v1.Melderegisterx", NULL, 0, 0,
     AB_POLICY_NO_RULE, NULL, NULL},
    /* send: WHO by a group with a prefix glob, RESOURCE a participant glob */
    {"kommune.09162000.meldeamt", "send", "land.by.stmi", NULL, 0, 1, AB_POLICY_ALLOWED,
     "bayern-senden", NULL},
    {"kommune.05315000.meldeamt", "send", "land.by.stmi", NULL, 0, 0, AB_POLICY_WRONG_WHO,
     "bayern-senden", NULL},
    {"kommune.09162000.meldeamt", "send", "land.nw.im", NULL, 0, 0, AB_POLICY_NO_RULE, NULL, NULL},
    /* receive */
    {"land.by.stmi", "receive", "kommune.09162000.meldeamt", NULL, 0, 1, AB_POLICY_ALLOWED,
     "stmi-empfangen", NULL},
    {"land.by.stmi", "receive", "kommune.05315000.meldeamt", NULL, 0, 0, AB_POLICY_NO_RULE, NULL,
     NULL},
    {"land.by.lfst", "receive", "kommune.09162000.meldeamt", NULL, 0, 0, AB_POLICY_WRONG_WHO,
     "stmi-empfangen", NULL},
    /* publish: `?` in WHO counts characters, `*` in a topic is one segment */
    {"kommune.05315000.meldeamt", "publish", "meldewesen.umzug.05315000", NULL, 0, 1,
     AB_POLICY_ALLOWED, "umzug-melden", NULL},
    {"kommune.053150001.meldeamt", "publish", "meldewesen.umzug.05315000", NULL, 0, 0,
     AB_POLICY_WRONG_WHO, "umzug-melden", NULL},
    {"kommune.05315000.meldeamt", "publish", "meldewesen.umzug.05315000.x", NULL, 0, 0,
     AB_POLICY_NO_RULE, NULL, NULL},
    {"kommune.05315000.meldeamt", "publish", "meldewesen.umzug", NULL, 0, 0, AB_POLICY_NO_RULE,
     NULL, NULL},
    /* subscribe: the rule must cover the whole subscription */
    {"bund.bmi", "subscribe", "meldewesen.umzug.09162000", NULL, 0, 1, AB_POLICY_ALLOWED,
     "umzug-lesen", NULL},
    {"bund.bmi", "subscribe", "meldewesen.umzug.*", NULL, 0, 1, AB_POLICY_ALLOWED, "umzug-lesen",
     NULL},
    {"bund.bmi", "subscribe", "meldewesen.>", NULL, 0, 1, AB_POLICY_ALLOWED, "umzug-lesen", NULL},
    {"bund.bmi", "subscribe", "meldewesen", NULL, 0, 0, AB_POLICY_NO_RULE, NULL, NULL},
    {"bund.bmi", "subscribe", ">", NULL, 0, 0, AB_POLICY_NO_RULE, NULL, NULL},
    {"kommune.09162000.meldeamt", "subscribe", "meldewesen.umzug.*", NULL, 0, 0,
     AB_POLICY_WRONG_WHO, "umzug-lesen", NULL},
    {"kommune.09162000.meldeamt", "subscribe", "wetter.09.warnung", NULL, 0, 1, AB_POLICY_ALLOWED,
     "alle-lesen", NULL},
    {"kommune.09162000.meldeamt", "subscribe", "wetter.*.warnung", NULL, 0, 1, AB_POLICY_ALLOWED,
     "alle-lesen", NULL},
    {"kommune.09162000.meldeamt", "subscribe", "wetter.>", NULL, 0, 0, AB_POLICY_NO_RULE, NULL,
     NULL},
    /* schema-push and admin */
    {"bund.bmi", "schema-push", "meldewesen.v1", NULL, 0, 1, AB_POLICY_ALLOWED, "schema-bmi", NULL},
    {"bund.bva", "schema-push", "meldewesen.v1", NULL, 0, 0, AB_POLICY_WRONG_WHO, "schema-bmi",
     NULL},
    {"bund.bmi", "schema-push", "steuer.v1", NULL, 0, 0, AB_POLICY_NO_RULE, NULL, NULL},
    {"bund.itzbund.betrieb", "admin", "policy.reload", NULL, 0, 1, AB_POLICY_ALLOWED, "admin",
     NULL},
    {"bund.bmi", "admin", "audit.query", NULL, 0, 0, AB_POLICY_WRONG_WHO, "admin", NULL},
    /* an action without any rule */
    {"bund.bmi", "receive", "bund.bva", NULL, 0, 0, AB_POLICY_NO_RULE, NULL, "(default deny)"},
    /* classification: the acting participant, and for send the recipient */
    {"kommune.05315000.meldeamt", "publish", "meldewesen.umzug.05315000", NULL, 2, 0,
     AB_POLICY_NOT_CLEARED, "umzug-melden",
     "kommune.05315000.meldeamt is cleared for OFFEN, the message is "
     "VS-NUR-FUER-DEN-DIENSTGEBRAUCH"},
    {"kommune.09162000.meldeamt", "publish", "meldewesen.umzug.09162000", NULL, 2, 1,
     AB_POLICY_ALLOWED, "umzug-melden", NULL},
    {"kommune.09162000.meldeamt", "send", "land.by.stmi", NULL, 2, 1, AB_POLICY_ALLOWED,
     "bayern-senden", NULL},
    {"kommune.09162000.meldeamt", "send", "land.by.lfst", NULL, 2, 0,
     AB_POLICY_RECIPIENT_NOT_CLEARED, "bayern-senden", "the recipient land.by.lfst"},
    {"kommune.09162000.meldeamt", "send", "land.by.lfst", NULL, 1, 1, AB_POLICY_ALLOWED,
     "bayern-senden", NULL},
    {"bund.extern.dienstleister", "call", "meldewesen.v1.Melderegister/Auskunft", "BMG §34", 2, 0,
     AB_POLICY_NOT_CLEARED, "melde-auskunft", NULL},
    {"bund.bmi", "call", "meldewesen.v1.Melderegister/Auskunft", "BMG §34", 3, 0,
     AB_POLICY_BAD_REQUEST, NULL, "unknown classification 3"},
    {"", "call", "meldewesen.v1.Melderegister/Auskunft", "BMG §34", 0, 0, AB_POLICY_BAD_REQUEST,
     NULL, NULL},
};

static void
test_matrix(void **state)
{
    ab_policy_t *p = *state;
    int seen[AB_POLICY_ACTION_COUNT][2] = {{0}};
    for (size_t i = 0; i < sizeof s_matrix / sizeof s_matrix[0]; i++) {
        const case_t *c = &s_matrix[i];
        ab_policy_action_t a;
        assert_int_equal(ab_policy_action_parse(c->action, &a), 0);
        ab_policy_decision_t d;
        int r = ab_policy_decide(p, c->who, a, c->resource, c->purpose, c->level, &d);
        if (r != c->allowed || d.allowed != c->allowed || d.why != c->why ||
            (c->rule ? !d.rule || strcmp(c->rule, d.rule) != 0 : d.rule != NULL) ||
            (c->reason && !strstr(d.reason, c->reason)))
            fail_msg("case %zu (%s %s %s): allowed %d why %d rule %s: %s", i, c->who, c->action,
                     c->resource, d.allowed, d.why, d.rule ? d.rule : "-", d.reason);
        seen[a][c->allowed]++;
        /* the same question twice gives the same answer (the participant is cached now) */
        ab_policy_decision_t d2;
        assert_int_equal(ab_policy_decide(p, c->who, a, c->resource, c->purpose, c->level, &d2), r);
        assert_string_equal(d.reason, d2.reason);
    }
    for (int a = 0; a < AB_POLICY_ACTION_COUNT; a++) {
        if (!seen[a][0] || !seen[a][1])
            fail_msg("action %s lacks an allow or a deny case", ab_policy_action_name(a));
    }
    /* NULL out is allowed */
    assert_int_equal(ab_policy_decide(p, "bund.bmi", AB_POLICY_ADMIN, "x", NULL, 0, NULL), 0);
    assert_int_equal(ab_policy_decide(p, "bund.bmi", AB_POLICY_ACTION_COUNT, "x", NULL, 0, NULL),
                     0);
    assert_int_equal(ab_policy_decide(NULL, "bund.bmi", AB_POLICY_ADMIN, "x", NULL, 0, NULL), 0);
    assert_int_equal(ab_policy_group_count(p), 3);
    assert_int_equal(ab_policy_rule_count(p), 10);
}

static void
test_clearance(void **state)
{
    ab_policy_t *p = *state;
    assert_int_equal(ab_policy_clearance(p, "bund.bmi"), AB_POLICY_VS_NFD);
    assert_true(ab_policy_cleared(p, "bund.bmi", AB_POLICY_VS_NFD));
    assert_true(ab_policy_cleared(p, "bund.bmi", AB_POLICY_UNSPECIFIED));
    /* @bund says VS-NfD, bund.extern.* says OFFEN: the lower wins */
    assert_int_equal(ab_policy_clearance(p, "bund.extern.dienstleister"), AB_POLICY_OFFEN);
    assert_false(ab_policy_cleared(p, "bund.extern.dienstleister", AB_POLICY_VS_NFD));
    /* @kommunen says OFFEN, the exact entry says VS-NfD: the exact entry wins */
    assert_true(ab_policy_cleared(p, "kommune.09162000.meldeamt", AB_POLICY_VS_NFD));
    assert_false(ab_policy_cleared(p, "kommune.09162000.standesamt", AB_POLICY_VS_NFD));
    /* not named anywhere: OFFEN */
    assert_true(ab_policy_cleared(p, "land.nw.im", AB_POLICY_OFFEN));
    assert_false(ab_policy_cleared(p, "land.nw.im", AB_POLICY_VS_NFD));
    assert_false(ab_policy_cleared(p, "land.nw.im", 3));
    assert_false(ab_policy_cleared(p, "land.nw.im", -1));
    assert_false(ab_policy_cleared(NULL, "land.nw.im", 1));
}

static void
test_names(void **state)
{
    (void)state;
    for (int a = 0; a < AB_POLICY_ACTION_COUNT; a++) {
        ab_policy_action_t b;
        assert_int_equal(ab_policy_action_parse(ab_policy_action_name(a), &b), 0);
        assert_int_equal((int)b, a);
    }
    ab_policy_action_t b;
    assert_int_equal(ab_policy_action_parse("read", &b), AB_EINVAL);
    assert_string_equal(ab_policy_action_name(AB_POLICY_ACTION_COUNT), "?");
    assert_int_equal(ab_policy_level_parse("OFFEN"), 1);
    assert_int_equal(ab_policy_level_parse("vs-nur-fuer-den-dienstgebrauch"), 2);
    assert_int_equal(ab_policy_level_parse("VS_NUR_FUER_DEN_DIENSTGEBRAUCH"), 2);
    assert_int_equal(ab_policy_level_parse("VS-NfD"), 2);
    assert_int_equal(ab_policy_level_parse("2"), 2);
    assert_int_equal(ab_policy_level_parse("GEHEIM"), AB_EINVAL);
    assert_string_equal(ab_policy_level_name(2), "VS-NUR-FUER-DEN-DIENSTGEBRAUCH");
}

typedef struct {
    const char *text;
    size_t line, col;
    const char *what;
} bad_t;

#define RULE(who, action, res)                                                                     \
    "rules:\n  - who: " who "\n    action: " action "\n    resource: " res "\n"

static const bad_t s_bad[] = {
    {RULE("bund.bmi", "read", "x"), 3, 13, "unknown action 'read'"},
    {RULE("bund.bmi", "call", "a.B/c/d"), 4, 15, "more than one '/'"},
    {RULE("bund.bmi", "call", "a..B/c"), 4, 15, "empty segment"},
    {RULE("bund.bmi", "publish", "meldewesen.um*zug"), 4, 15, "a wildcard must be a whole segment"},
    {RULE("bund.bmi", "subscribe", "meldewesen.>.x"), 4, 15, "'>' must be the last segment"},
    {RULE("bund.bmi", "send", "land.by.>"), 4, 15, "'>' belongs in topic patterns only"},
    {RULE("bund..bmi", "call", "a.B/c"), 2, 10, "bad participant pattern 'bund..bmi'"},
    {RULE("bund.bmi$", "call", "a.B/c"), 2, 10, "bad participant pattern"},
    {RULE("\"@gibtsnicht\"", "call", "a.B/c"), 2, 10, "unknown group 'gibtsnicht'"},
    {"groups:\n  a: [x.*]\n  b: [y.*]\n  a: [z.*]\n", 4, 3, "duplicate group 'a'"},
    {"groups:\n  a: []\n", 2, 6, "group 'a' has no members"},
    {"groups:\n  a: [\"@b\"]\n", 2, 7, "groups cannot contain groups"},
    {"groups:\n  a: [x.*]\nclearances:\n  \"@a\": GEHEIM\n", 4, 9, "bad clearance level 'GEHEIM'"},
    {"clearances:\n  \"@nix\": OFFEN\n", 2, 3, "unknown group 'nix' in clearances"},
    {"clearances:\n  bund.bmi: OFFEN\n  bund.bmi: OFFEN\n", 3, 3, "duplicate clearance"},
    {"group:\n  a: [x]\n", 1, 1, "unknown key 'group'"},
    {"rules:\n  - who: bund.bmi\n    action: call\n    resource: a.B/c\n    purpose: [x]\n", 5, 5,
     "unknown key 'purpose' in a rule"},
    {"rules:\n  - who: bund.bmi\n    action: call\n", 2, 5, "the rule has no 'resource'"},
    {"rules:\n  - who: bund.bmi\n    action: call\n    resource: a.B/c\n    purposes: []\n", 5, 15,
     "empty purposes list"},
    {"rules:\n  - {name: x, who: a, action: call, resource: a.B/c}\n"
     "  - {name: x, who: b, action: call, resource: a.B/c}\n",
     3, 12, "duplicate rule name 'x' (first on line 2)"},
    {"rules:\n  - who: a\n    who: b\n", 3, 5, "'who' given twice"},
    {"rules: {a: b}\n", 1, 8, "'rules' must be a list"},
    {"rules:\n  - [a, b]\n", 2, 5, "a rule must be a mapping"},
    {"- a\n- b\n", 1, 1, "a policy must be a mapping"},
    {"rules:\n  - who: [a\n", 3, 1, "bad YAML"},
    {"", 0, 0, "the policy file is empty"},
    {"rules: []\n---\nrules: []\n", 0, 0, "more than one YAML document"},
    {"limits:\n  bund.bmi: {rate: 10, speed: 3}\n", 2, 24, "unknown limit 'speed'"},
    {"limits:\n  bund.bmi: {rate: 0}\n", 2, 20, "rate for 'bund.bmi' must be a whole number"},
    {"limits:\n  bund.bmi: {burst: -1}\n", 2, 21, "must be a whole number from 1 to 1000000"},
    {"limits:\n  bund.bmi: {connections: 1000001}\n", 2, 27, "from 1 to 1000000"},
    {"limits:\n  bund.bmi: {calls_in_flight: 2x}\n", 2, 31, "calls_in_flight for 'bund.bmi'"},
    {"limits:\n  bund.bmi: {rate: 1, rate: 2}\n", 2, 23, "'rate' given twice for 'bund.bmi'"},
    {"limits:\n  bund.bmi: 10\n", 2, 13, "the limits of 'bund.bmi' must be a mapping"},
    {"limits:\n  bund.bmi: {}\n", 2, 13, "the limits of 'bund.bmi' must be a mapping"},
    {"limits:\n  \"@nix\": {rate: 1}\n", 2, 3, "unknown group 'nix' in limits"},
    {"limits:\n  bund.bmi: {rate: 1}\n  bund.bmi: {burst: 1}\n", 3, 3, "duplicate limits"},
    {"limits: [a]\n", 1, 9, "'limits' must be a mapping"},
    /* what follows the first document was not read when it was not YAML (nor when the second
     * read ran out of memory): the file loaded as if it ended there */
    {"rules: []\n---\nrules: [\n", 4, 1, "bad YAML"},
    {"rules: []\n...\n]\n", 3, 1, "bad YAML"},
};

static void
test_bad_files(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof s_bad / sizeof s_bad[0]; i++) {
        const bad_t *b = &s_bad[i];
        ab_policy_t *sentinel = (ab_policy_t *)(uintptr_t)0x1, *p = sentinel;
        ab_policy_error_t err;
        int rc = ab_policy_load_buffer(b->text, strlen(b->text), "bad.yaml", &p, &err);
        if (rc != AB_EINVAL || p != sentinel || err.line != b->line || err.col != b->col ||
            !strstr(err.text, b->what))
            fail_msg("bad file %zu: rc %d, want %zu:%zu '%s', got %s", i, rc, b->line, b->col,
                     b->what, err.message);
        char want[64];
        if (b->line) {
            snprintf(want, sizeof want, "bad.yaml:%zu:%zu: ", b->line, b->col);
            assert_true(strncmp(err.message, want, strlen(want)) == 0);
        }
    }
}

/* limits: per field the entry naming the participant wins, else the lowest matching value */
static void
test_limits(void **state)
{
    (void)state;
    const char *text = "groups:\n"
                       "  kommunen: [\"kommune.*\"]\n"
                       "  bayern: [\"kommune.09*\"]\n"
                       "limits:\n"
                       "  \"@kommunen\": {rate: 100, burst: 200, connections: 10}\n"
                       "  \"@bayern\": {rate: 50, calls_in_flight: 30}\n"
                       "  kommune.09162000.meldeamt: {rate: 1000}\n"
                       "  \"bund.*\": {calls_in_flight: 5}\n";
    ab_policy_t *p = NULL;
    ab_policy_error_t err;
    assert_int_equal(ab_policy_load_buffer(text, strlen(text), "l.yaml", &p, &err), 0);
    assert_int_equal(ab_policy_limit_count(p), 4);
    ab_policy_limits_t l;
    ab_policy_limits(p, "kommune.05315000.meldeamt", &l); /* kommunen only */
    assert_int_equal(l.rate, 100);
    assert_int_equal(l.burst, 200);
    assert_int_equal(l.connections, 10);
    assert_int_equal(l.calls_in_flight, 0);
    ab_policy_limits(p, "kommune.09184000.meldeamt", &l); /* kommunen and bayern: the lower */
    assert_int_equal(l.rate, 50);
    assert_int_equal(l.burst, 200);
    assert_int_equal(l.calls_in_flight, 30);
    ab_policy_limits(p, "kommune.09162000.meldeamt", &l); /* named: its own rate wins */
    assert_int_equal(l.rate, 1000);
    assert_int_equal(l.calls_in_flight, 30);
    ab_policy_limits(p, "bund.bmi", &l);
    assert_int_equal(l.rate, 0);
    assert_int_equal(l.calls_in_flight, 5);
    ab_policy_limits(p, "land.by.stmi", &l); /* nothing set */
    assert_int_equal(l.rate + l.burst + l.calls_in_flight + l.connections, 0);
    ab_policy_destroy(&p);
    ab_policy_limits(NULL, "bund.bmi", &l);
    assert_int_equal(l.rate + l.burst + l.calls_in_flight + l.connections, 0);
    assert_int_equal(ab_policy_limit_count(NULL), 0);
}

static void
test_files(void **state)
{
    (void)state;
    ab_policy_t *p = NULL;
    ab_policy_error_t err;
    assert_int_equal(ab_policy_load("/nonexistent/policy.yaml", &p, &err), AB_EIO);
    assert_null(p);
    assert_non_null(strstr(err.message, "/nonexistent/policy.yaml: cannot open"));
    char path[] = "/tmp/test_policy_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, s_policy, strlen(s_policy)), (ssize_t)strlen(s_policy));
    close(fd);
    assert_int_equal(ab_policy_load(path, &p, &err), 0);
    ab_policy_decision_t d;
    assert_int_equal(ab_policy_decide(p, "bund.bmi", AB_POLICY_CALL,
                                      "meldewesen.v1.Melderegister/X", NULL, 0, &d),
                     0);
    /* the file name in reasons is the path it was loaded from */
    char want[128];
    snprintf(want, sizeof want, "(%s:12)", path);
    assert_non_null(strstr(d.reason, want));
    assert_int_equal(d.rule_line, 12);
    ab_policy_destroy(&p);
    unlink(path);
    /* an empty rule list is a valid policy that denies everything */
    const char *none = "rules: []\n";
    assert_int_equal(ab_policy_load_buffer(none, strlen(none), "x", &p, &err), 0);
    assert_int_equal(ab_policy_decide(p, "bund.bmi", AB_POLICY_ADMIN, "x", NULL, 0, &d), 0);
    assert_int_equal(d.why, AB_POLICY_NO_RULE);
    ab_policy_destroy(&p);
}

/* Appends to a growing buffer. */
static void
cat(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[512];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (*len + (size_t)n + 1 > *cap) {
        *cap = (*cap + (size_t)n + 1) * 2;
        *buf = realloc(*buf, *cap);
        assert_non_null(*buf);
    }
    memcpy(*buf + *len, tmp, (size_t)n + 1);
    *len += (size_t)n;
}

/* 2,000 rules over 100 groups: exact, glob and topic resources, per-participant and group WHO. */
static void
test_many_rules(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    cat(&buf, &len, &cap, "groups:\n");
    for (int g = 0; g < 100; g++)
        cat(&buf, &len, &cap, "  land%02d: [\"kommune.%02d*\", \"land.l%02d.*\"]\n", g, g, g);
    cat(&buf, &len, &cap, "rules:\n");
    for (int i = 0; i < 500; i++) {
        cat(&buf, &len, &cap,
            "  - {name: c%d, who: \"@land%02d\", action: call, resource: fach%d.v1.Dienst/*, "
            "purposes: [\"Zweck %d\"]}\n",
            i, i % 100, i, i);
        cat(&buf, &len, &cap,
            "  - {name: e%d, who: kommune.%08d.amt, action: call, resource: "
            "fach%d.v1.Dienst/Exakt}\n",
            i, i, i);
        cat(&buf, &len, &cap,
            "  - {name: p%d, who: \"@land%02d\", action: publish, resource: ereignis.%d.*}\n", i,
            i % 100, i);
        cat(&buf, &len, &cap,
            "  - {name: s%d, who: kommune.%08d.*, action: send, resource: land.l%02d.*}\n", i, i,
            i % 100);
    }
    ab_policy_t *p = load(buf);
    free(buf);
    assert_int_equal(ab_policy_rule_count(p), 2000);
    assert_int_equal(ab_policy_group_count(p), 100);
    ab_policy_decision_t d;
    char who[64], res[128], purpose[32], want[32];
    for (int i = 0; i < 500; i += 7) {
        snprintf(who, sizeof who, "kommune.%02d123456.amt", i % 100);
        snprintf(res, sizeof res, "fach%d.v1.Dienst/Abfrage", i);
        snprintf(purpose, sizeof purpose, "Zweck %d", i);
        snprintf(want, sizeof want, "c%d", i);
        assert_int_equal(ab_policy_decide(p, who, AB_POLICY_CALL, res, purpose, 0, &d), 1);
        assert_string_equal(d.rule, want);
        assert_int_equal(ab_policy_decide(p, who, AB_POLICY_CALL, res, NULL, 0, &d), 0);
        assert_int_equal(d.why, AB_POLICY_NO_PURPOSE);
        assert_string_equal(d.rule, want);
        /* another Land's municipality */
        snprintf(who, sizeof who, "kommune.%02d123456.amt", (i + 1) % 100);
        assert_int_equal(ab_policy_decide(p, who, AB_POLICY_CALL, res, purpose, 0, &d), 0);
        assert_int_equal(d.why, AB_POLICY_WRONG_WHO);
        assert_string_equal(d.rule, want);
        /* exact resource, exact participant (also in its Land group: purpose-free rule wins) */
        snprintf(who, sizeof who, "kommune.%08d.amt", i);
        snprintf(res, sizeof res, "fach%d.v1.Dienst/Exakt", i);
        snprintf(want, sizeof want, "e%d", i);
        assert_int_equal(ab_policy_decide(p, who, AB_POLICY_CALL, res, NULL, 0, &d), 1);
        assert_string_equal(d.rule, want);
        /* topics */
        snprintf(who, sizeof who, "land.l%02d.im", i % 100);
        snprintf(res, sizeof res, "ereignis.%d.neu", i);
        snprintf(want, sizeof want, "p%d", i);
        assert_int_equal(ab_policy_decide(p, who, AB_POLICY_PUBLISH, res, NULL, 0, &d), 1);
        assert_string_equal(d.rule, want);
        snprintf(res, sizeof res, "ereignis.%d.neu.x", i);
        assert_int_equal(ab_policy_decide(p, who, AB_POLICY_PUBLISH, res, NULL, 0, &d), 0);
        /* send */
        snprintf(who, sizeof who, "kommune.%08d.meldeamt", i);
        snprintf(res, sizeof res, "land.l%02d.stmi", i % 100);
        snprintf(want, sizeof want, "s%d", i);
        assert_int_equal(ab_policy_decide(p, who, AB_POLICY_SEND, res, NULL, 0, &d), 1);
        assert_string_equal(d.rule, want);
    }
    assert_int_equal(ab_policy_decide(p, "kommune.00000001.amt", AB_POLICY_CALL,
                                      "fach9999.v1.Dienst/Abfrage", NULL, 0, &d),
                     0);
    assert_int_equal(d.why, AB_POLICY_NO_RULE);
    ab_policy_destroy(&p);
}

/* More participants than the cache holds: it starts over and answers stay right. */
static void
test_cache_overflow(void **state)
{
    ab_policy_t *p = *state;
    char who[64];
    for (int i = 0; i < 20000; i++) {
        snprintf(who, sizeof who, "kommune.%08d.meldeamt", i);
        assert_int_equal(
            ab_policy_decide(p, who, AB_POLICY_OFFER, "meldewesen.v1.Melderegister", NULL, 0, NULL),
            1);
        assert_false(ab_policy_cleared(p, who, AB_POLICY_VS_NFD));
    }
    assert_true(ab_policy_cleared(p, "kommune.09162000.meldeamt", AB_POLICY_VS_NFD));
}

static int
s_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 1 : (*p & 0xe0) == 0xc0 ? 2 : (*p & 0xf0) == 0xe0 ? 3 : 4;
        for (int i = 1; i < n; i++)
            if ((p[i] & 0xc0) != 0x80)
                return 0;
        p += n;
    }
    return 1;
}

/* A denial that lists long purposes, or an error quoting the first 100 bytes of a name, was
 * cut in the middle of a UTF-8 sequence; the reason reaches the caller in error.text, which
 * a client refuses when it is not UTF-8 (found with fuzz_policy's promise). */
static void
test_texts_stay_utf8(void **state)
{
    (void)state;
    char text[2048], p30[64] = "";
    for (int i = 0; i < 30; i++)
        strcat(p30, "\xc2\xa7"); /* § */
    int at = snprintf(text, sizeof text,
                      "rules:\n  - {name: r, who: \"bund.*\", action: call, "
                      "resource: \"a.B/*\", purposes: [");
    for (int i = 0; i < 12; i++)
        at += snprintf(text + at, sizeof text - (size_t)at, "%s\"%s%d\"", i ? ", " : "", p30, i);
    snprintf(text + at, sizeof text - (size_t)at, "]}\n");
    ab_policy_t *p = load(text);
    ab_policy_decision_t d;
    assert_int_equal(ab_policy_decide(p, "bund.bmi", AB_POLICY_CALL, "a.B/c", NULL, 0, &d), 0);
    assert_int_equal(d.why, AB_POLICY_NO_PURPOSE);
    assert_true(strlen(d.reason) > 400);
    assert_true(s_utf8(d.reason));
    ab_policy_destroy(&p);

    at = snprintf(text, sizeof text, "rules:\n  - {who: a.b, action: a");
    for (int i = 0; i < 80; i++)
        at += snprintf(text + at, sizeof text - (size_t)at, "\xc3\xa9");
    snprintf(text + at, sizeof text - (size_t)at, ", resource: x.Y/z}\n");
    ab_policy_error_t err;
    assert_int_equal(ab_policy_load_buffer(text, strlen(text), "bad.yaml", &p, &err), AB_EINVAL);
    assert_non_null(strstr(err.text, "unknown action 'a\xc3\xa9"));
    assert_true(s_utf8(err.text));
    assert_true(s_utf8(err.message));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_matrix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clearance, setup, teardown),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_texts_stay_utf8),
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_many_rules),
        cmocka_unit_test_setup_teardown(test_cache_overflow, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
