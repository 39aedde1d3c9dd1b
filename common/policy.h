/*
 * The access policy: who may do what, for which purpose, at which classification.
 *
 * A policy file (YAML) names groups of participants by pattern, the clearance of participants
 * and groups, and rules `allow WHO ACTION RESOURCE [purposes]`. Everything not allowed by a rule
 * is denied. ab_policy_load() parses and checks the whole file and compiles it into look-ups:
 * rules are indexed by action, then by exact resource (hash) and by the literal prefix of a
 * resource pattern (a trie), so a decision looks only at the few rules whose resource can match,
 * however many rules there are. Group membership and clearance are computed once per
 * participant and cached in the policy.
 *
 * Loading is all-or-nothing: a file with any error gives no policy and an error naming
 * file:line:col; a caller that reloads keeps its old policy then and swaps only on success.
 *
 * A policy is used by one thread at a time (the broker's loop): ab_policy_decide() and
 * ab_policy_cleared() fill the participant cache, so they take a non-const policy. Nothing here
 * logs; the caller logs and audits the decision.
 */
#ifndef AB_POLICY_H
#define AB_POLICY_H

#include <stddef.h>

typedef struct ab_policy ab_policy_t;

/* What a participant wants to do. RESOURCE of each action:
 *   CALL        the method called, `pkg.Service/Method`
 *   OFFER       the service or method offered, `pkg.Service` or `pkg.Service/Method`
 *   SEND        the recipient participant
 *   RECEIVE     the sender of the message delivered to the participant
 *   PUBLISH     the topic published to
 *   SUBSCRIBE   the topic pattern subscribed to (a rule must cover every topic it matches)
 *   SCHEMA_PUSH the package pushed (`meldewesen.v1`)
 *   ADMIN       the administrative operation (`audit.query`, `policy.reload`, ...) */
typedef enum {
    AB_POLICY_CALL = 0,
    AB_POLICY_OFFER,
    AB_POLICY_SEND,
    AB_POLICY_RECEIVE,
    AB_POLICY_PUBLISH,
    AB_POLICY_SUBSCRIBE,
    AB_POLICY_SCHEMA_PUSH,
    AB_POLICY_ADMIN,
    AB_POLICY_ACTION_COUNT
} ab_policy_action_t;

/* Classification levels, as amtsbote.v1.Classification: 0 (unspecified) counts as OFFEN. */
enum {
    AB_POLICY_UNSPECIFIED = 0,
    AB_POLICY_OFFEN = 1,
    AB_POLICY_VS_NFD = 2, /* VS-NUR-FUER-DEN-DIENSTGEBRAUCH */
};

/* Why a decision came out as it did. */
typedef enum {
    AB_POLICY_ALLOWED = 0,
    AB_POLICY_NO_RULE,     /* no rule for this action covers the resource (default deny) */
    AB_POLICY_WRONG_WHO,   /* a rule covers action and resource, but not this participant */
    AB_POLICY_NO_PURPOSE,  /* a rule would allow it with one of its purposes */
    AB_POLICY_NOT_CLEARED, /* the participant is cleared below the message's level */
    AB_POLICY_RECIPIENT_NOT_CLEARED, /* SEND: the recipient is cleared below the level */
    AB_POLICY_BAD_REQUEST,           /* unknown action or classification, empty participant */
} ab_policy_why_t;

/* The outcome of ab_policy_decide(). `rule` and `rule_file` are borrowed from the policy and
 * valid while it lives. */
typedef struct {
    int allowed;         /* 1 allowed, 0 denied */
    ab_policy_why_t why; /* AB_POLICY_ALLOWED when allowed */
    const char *rule;    /* the rule that allowed it, or on deny the one closest to allowing
                            it; NULL when none (e.g. default deny with no candidate) */
    size_t rule_line;    /* the rule's line in the policy file, 0 when rule is NULL */
    char reason[512];    /* for a person (error replies, logs, `policy explain`); never
                            payload contents */
} ab_policy_decision_t;

/* A reason a file was refused. */
typedef struct {
    char file[256];
    size_t line, col;   /* 1-based; 0 when not about a place in the file (cannot open) */
    char text[512];     /* what is wrong */
    char message[1100]; /* `file:line:col: text`, ready to print */
} ab_policy_error_t;

/* Loads and compiles the policy in `path`. Returns 0 and a new policy in *out, or a negative
 * AB_E* (AB_EIO: cannot read; AB_EINVAL: not a valid policy; AB_ENOMEM) with the place and
 * reason in *err (may be NULL); *out is untouched on failure. */
int ab_policy_load(const char *path, ab_policy_t **out, ab_policy_error_t *err);

/* The same from a buffer; `name` stands for the file name in errors and rule places. */
int ab_policy_load_buffer(const char *data, size_t len, const char *name, ab_policy_t **out,
                          ab_policy_error_t *err);

/* Frees the policy; NULL-safe, safe twice, nulls the pointer. */
void ab_policy_destroy(ab_policy_t **self_p);

/* Decides whether `participant` may do `action` on `resource`. `purpose` is the message's
 * purpose (legal basis) or NULL/"" for none; `classification` its level (AB_POLICY_OFFEN ...,
 * 0 counts as OFFEN; for actions without a message pass 0). For SEND the recipient (the
 * resource) must be cleared for the level too; for every action the participant itself must.
 * Returns 1 allowed or 0 denied and fills *out (may be NULL). Does not allocate except to
 * cache a participant it has not seen (then on allocation failure it denies, BAD_REQUEST). */
int ab_policy_decide(ab_policy_t *policy, const char *participant, ab_policy_action_t action,
                     const char *resource, const char *purpose, int classification,
                     ab_policy_decision_t *out);

/* 1 when `participant` may receive a message of `level` (its clearance is at least the level;
 * participants not named in the policy are cleared for OFFEN), else 0. The broker asks this for
 * every recipient before routing (providers of a call, mailbox recipients, subscribers). */
int ab_policy_cleared(ab_policy_t *policy, const char *participant, int level);

/* The clearance of `participant` (AB_POLICY_OFFEN or AB_POLICY_VS_NFD). */
int ab_policy_clearance(ab_policy_t *policy, const char *participant);

/* What the policy's `limits:` section sets for a participant; 0 in a field: nothing set there,
 * the broker's default applies. For each field an entry naming the participant exactly wins,
 * otherwise the lowest value of all matching patterns and groups. */
typedef struct {
    unsigned long long rate;            /* requests per second (CALL, SEND, PUBLISH, ...) */
    unsigned long long burst;           /* requests allowed at once above the rate */
    unsigned long long calls_in_flight; /* calls made and not yet answered */
    unsigned long long connections;     /* TLS sessions at once */
} ab_policy_limits_t;

/* Fills *out for `participant` (all 0 without a policy, an entry or memory to cache it). */
void ab_policy_limits(ab_policy_t *policy, const char *participant, ab_policy_limits_t *out);

/* Entries in the `limits:` section. */
size_t ab_policy_limit_count(const ab_policy_t *policy);

/* Counts, for `policy check`, logs and metrics. */
size_t ab_policy_group_count(const ab_policy_t *policy);
size_t ab_policy_rule_count(const ab_policy_t *policy);

/* The action named `name` ("call", "schema-push", ...): 0 and *out, or AB_EINVAL. */
int ab_policy_action_parse(const char *name, ab_policy_action_t *out);
/* The name of an action ("call", ...); "?" for an unknown one. */
const char *ab_policy_action_name(ab_policy_action_t action);

/* The level named `name` (OFFEN, VS-NUR-FUER-DEN-DIENSTGEBRAUCH, also with '_' and as VS-NFD,
 * case-insensitive, or the numbers 1 and 2): the level, or AB_EINVAL. */
int ab_policy_level_parse(const char *name);
/* "OFFEN" or "VS-NUR-FUER-DEN-DIENSTGEBRAUCH"; "?" otherwise. */
const char *ab_policy_level_name(int level);

#endif
