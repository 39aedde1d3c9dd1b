/*
 * policy_cli.c - `amtsbote policy check|explain`: the access policy, offline (no broker).
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "policy.h"

static const char *s_policy_usage =
    "Usage: amtsbote policy COMMAND\n"
    "\n"
    "  policy check FILE\n"
    "      Validates a policy file as the broker would load it: prints\n"
    "      'ok: N groups, M rules', or FILE:LINE:COL and what is wrong (exit 2).\n"
    "  policy explain FILE --as PARTICIPANT ACTION RESOURCE [--purpose X]\n"
    "                 [--classification LEVEL]\n"
    "      Says whether the policy in FILE allows PARTICIPANT to do ACTION on RESOURCE,\n"
    "      which rule decides and why; for a denial the rule that came closest. Exit 0\n"
    "      allowed, 9 denied. ACTION: call, offer, send, receive, publish, subscribe,\n"
    "      schema-push, admin. LEVEL: OFFEN (default) or VS-NUR-FUER-DEN-DIENSTGEBRAUCH.\n"
    "  Neither needs a broker. The file format is in README.md (Access policy) and\n"
    "  examples/policy.yaml.\n"
    "  Example:\n"
    "    amtsbote policy explain examples/policy.yaml --as bund.bmi \\\n"
    "      call meldewesen.v1.Melderegister/Meldebescheinigung --purpose 'BMG §34'\n";

static const char *
s_why_name(ab_policy_why_t why)
{
    switch (why) {
    case AB_POLICY_ALLOWED:
        return "allowed";
    case AB_POLICY_NO_RULE:
        return "no rule";
    case AB_POLICY_WRONG_WHO:
        return "not for this participant";
    case AB_POLICY_NO_PURPOSE:
        return "purpose missing";
    case AB_POLICY_NOT_CLEARED:
        return "not cleared";
    case AB_POLICY_RECIPIENT_NOT_CLEARED:
        return "recipient not cleared";
    default:
        return "bad request";
    }
}

/* Loads FILE; 0 or an exit code (error printed). */
static int
s_load(const char *file, ab_policy_t **pol)
{
    ab_policy_error_t err;
    int rc = ab_policy_load(file, pol, &err);
    if (rc == 0)
        return 0;
    fprintf(stderr, "amtsbote: %s: %s\n", ab_err_name(rc), err.message[0] ? err.message : file);
    return EXIT_USAGE;
}

static int
s_check(int argc, char **argv)
{
    if (argc != 1)
        return cli_usage_error("policy check: give one FILE");
    ab_policy_t *pol = NULL;
    int code = s_load(argv[0], &pol);
    if (code)
        return code;
    printf("ok: %zu groups, %zu rules\n", ab_policy_group_count(pol), ab_policy_rule_count(pol));
    ab_policy_destroy(&pol);
    return EXIT_OK;
}

static int
s_explain(const opts_t *opts, int argc, char **argv)
{
    const char *file = NULL, *as = opts->as_given ? opts->as : NULL, *purpose = NULL;
    const char *action = NULL, *resource = NULL, *val = NULL;
    int level = AB_POLICY_OFFEN, m;
    for (int i = 0; i < argc; i++) {
        if ((m = cli_opt(argc, argv, &i, "--as", &val)) != 0) {
            if (m < 0 || !*val)
                return cli_usage_error("policy explain: --as needs a participant address");
            as = val;
        } else if ((m = cli_opt(argc, argv, &i, "--purpose", &val)) != 0) {
            if (m < 0)
                return cli_usage_error("policy explain: --purpose needs a text");
            purpose = val;
        } else if ((m = cli_opt(argc, argv, &i, "--classification", &val)) != 0) {
            if (m < 0 || (level = ab_policy_level_parse(val)) < 0)
                return cli_usage_error("policy explain: --classification is OFFEN or "
                                       "VS-NUR-FUER-DEN-DIENSTGEBRAUCH");
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return cli_usage_error("policy explain: unknown option '%s'", argv[i]);
        } else if (!file) {
            file = argv[i];
        } else if (!action) {
            action = argv[i];
        } else if (!resource) {
            resource = argv[i];
        } else {
            return cli_usage_error("policy explain: unexpected argument '%s'", argv[i]);
        }
    }
    if (!file || !action || !resource)
        return cli_usage_error("policy explain: give FILE --as PARTICIPANT ACTION RESOURCE");
    if (!as)
        return cli_usage_error("policy explain: whose request? give --as PARTICIPANT");
    ab_policy_action_t a;
    if (ab_policy_action_parse(action, &a) != 0)
        return cli_usage_error("policy explain: unknown action '%s'; actions are call, offer, "
                               "send, receive, publish, subscribe, schema-push, admin",
                               action);
    ab_policy_t *pol = NULL;
    int code = s_load(file, &pol);
    if (code)
        return code;
    ab_policy_decision_t d;
    int allowed = ab_policy_decide(pol, as, a, resource, purpose, level, &d);
    printf("%s: %s %s %s%s%s%s (%s)\n", allowed ? "allowed" : "denied", as, action, resource,
           purpose ? " for '" : "", purpose ? purpose : "", purpose ? "'" : "",
           ab_policy_level_name(level));
    if (d.rule)
        printf("rule: %s (%s:%zu)\n", d.rule, file, d.rule_line);
    else
        printf("rule: none\n");
    if (allowed)
        printf("why: %s\n", d.reason);
    else
        printf("why: %s: %s\n", s_why_name(d.why), d.reason);
    ab_policy_destroy(&pol);
    return allowed ? EXIT_OK : EXIT_FORBIDDEN;
}

int
cli_cmd_policy(const opts_t *opts, int argc, char **argv)
{
    if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0 ||
        strcmp(argv[0], "help") == 0) {
        fputs(s_policy_usage, argc < 1 ? stderr : stdout);
        return argc < 1 ? EXIT_USAGE : EXIT_OK;
    }
    if (strcmp(argv[0], "check") == 0)
        return s_check(argc - 1, argv + 1);
    if (strcmp(argv[0], "explain") == 0)
        return s_explain(opts, argc - 1, argv + 1);
    return cli_usage_error("policy: unknown command '%s'; use check or explain", argv[0]);
}
