/*
 * policy.c - the access policy: YAML file -> checked, compiled look-ups -> decisions.
 */
#include "policy.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "amtsbote.h"
#include "wire.h"
/* uthash exits the process when it cannot allocate a table or bucket, unless told not to: then
 * the element is not added and its hh.tbl is NULL, which each HASH_ADD here checks. */
#define HASH_NONFATAL_OOM 1
#include "uthash.h"

#define MAX_FILE_SIZE (16u * 1024u * 1024u)
#define MAX_NAME 256    /* longest pattern, group, rule name or purpose */
#define MAX_CACHED 8192 /* participants in the cache before it starts over */

enum { RES_EXACT, RES_GLOB, RES_TOPIC };

typedef struct {
    char *name;
    size_t line;
    ab_policy_action_t action;
    char *who;     /* as written: a pattern or `@group` */
    int who_group; /* group index, or -1 for a pattern */
    int who_glob;  /* the pattern has a wildcard */
    char *resource;
    int res_kind;
    char **purposes;
    size_t npurposes;
} rule_t;

typedef struct {
    char *name;
    char **patterns;
    size_t npatterns;
} group_t;

typedef struct {
    char *who;
    int group; /* group index, or -1 for a pattern */
    int glob;
    int level;
} clearance_t;

/* One entry of `limits:`: WHO and the values it sets (0: not set). */
typedef struct {
    char *who;
    int group; /* group index, or -1 for a pattern */
    int glob;
    ab_policy_limits_t set;
} limit_t;

typedef struct {
    uint32_t *v;
    size_t n, cap;
} idxvec_t;

typedef struct {
    char *key;
    idxvec_t rules;
    UT_hash_handle hh;
} exact_t;

/* Per action: rules with a literal resource by that resource, and rules with a pattern by the
 * pattern's literal prefix cut back to a separator ('.' or '/'): `kommune.09*` under
 * `kommune.`, `meldewesen.>` under `meldewesen.`, `*` under "". Every shorter prefix of an
 * indexed one (at a separator) has an entry too, possibly without rules, so that a look-up
 * walks the resource's prefixes and stops at the first one that is not there. */
typedef struct {
    exact_t *exact;
    exact_t *prefix;
} action_index_t;

typedef struct {
    char *key;
    int clearance;
    ab_policy_limits_t limits;
    UT_hash_handle hh;
    uint64_t groups[]; /* bit per group */
} member_t;

struct ab_policy {
    char *file;
    group_t *groups;
    size_t ngroups;
    clearance_t *clearances;
    size_t nclearances;
    limit_t *limits;
    size_t nlimits;
    rule_t *rules;
    size_t nrules;
    action_index_t index[AB_POLICY_ACTION_COUNT];
    member_t *cache;
    size_t ncached;
    size_t group_words;
};

static const char *s_action_names[AB_POLICY_ACTION_COUNT] = {
    "call", "offer", "send", "receive", "publish", "subscribe", "schema-push", "admin"};

/* ---- names -------------------------------------------------------------------------------- */

int
ab_policy_action_parse(const char *name, ab_policy_action_t *out)
{
    for (int a = 0; a < AB_POLICY_ACTION_COUNT; a++) {
        if (name && strcmp(name, s_action_names[a]) == 0) {
            *out = (ab_policy_action_t)a;
            return 0;
        }
    }
    return AB_EINVAL;
}

const char *
ab_policy_action_name(ab_policy_action_t action)
{
    if ((int)action < 0 || action >= AB_POLICY_ACTION_COUNT)
        return "?";
    return s_action_names[action];
}

int
ab_policy_level_parse(const char *name)
{
    if (!name)
        return AB_EINVAL;
    if (strcasecmp(name, "OFFEN") == 0 || strcmp(name, "1") == 0)
        return AB_POLICY_OFFEN;
    if (strcasecmp(name, "VS-NUR-FUER-DEN-DIENSTGEBRAUCH") == 0 ||
        strcasecmp(name, "VS_NUR_FUER_DEN_DIENSTGEBRAUCH") == 0 ||
        strcasecmp(name, "VS-NFD") == 0 || strcmp(name, "2") == 0)
        return AB_POLICY_VS_NFD;
    return AB_EINVAL;
}

const char *
ab_policy_level_name(int level)
{
    switch (level) {
    case AB_POLICY_OFFEN:
        return "OFFEN";
    case AB_POLICY_VS_NFD:
        return "VS-NUR-FUER-DEN-DIENSTGEBRAUCH";
    default:
        return "?";
    }
}

/* ---- patterns ----------------------------------------------------------------------------- */

/* Matches `s` against the first `pl` characters of glob `p`: `*` any run of characters (dots
 * included), `?` one character. */
static int
s_glob_n(const char *p, size_t pl, const char *s)
{
    size_t i = 0, star = SIZE_MAX;
    const char *ss = NULL;
    while (*s) {
        if (i < pl && p[i] == '*') {
            star = i++;
            ss = s;
        } else if (i < pl && (p[i] == '?' || p[i] == *s)) {
            i++;
            s++;
        } else if (star != SIZE_MAX) {
            i = star + 1;
            s = ++ss;
        } else {
            return 0;
        }
    }
    while (i < pl && p[i] == '*')
        i++;
    return i == pl;
}

/* A glob match; a pattern ending in "/" "*" also matches the bare service, so that
 * `pkg.Service/` `*` covers offering the whole service as well as each method. */
static int
s_glob(const char *p, const char *s)
{
    size_t pl = strlen(p);
    if (s_glob_n(p, pl, s))
        return 1;
    return pl >= 2 && p[pl - 1] == '*' && p[pl - 2] == '/' && !strchr(s, '/') &&
           s_glob_n(p, pl - 2, s);
}

/* Does topic pattern `p` cover `s` (a topic, or for SUBSCRIBE a pattern itself): every topic
 * that `s` matches is matched by `p`. Segments split at '.', `*` one segment, `>` the rest. */
static int
s_topic_covers(const char *p, const char *s)
{
    for (;;) {
        const char *pe = strchr(p, '.'), *se = strchr(s, '.');
        size_t pl = pe ? (size_t)(pe - p) : strlen(p), sl = se ? (size_t)(se - s) : strlen(s);
        if (pl == 1 && p[0] == '>')
            return sl > 0; /* `>` needs at least one segment */
        if (sl == 1 && s[0] == '>')
            return 0; /* only `>` covers `>` */
        if (pl == 1 && p[0] == '*') {
            if (sl == 0)
                return 0;
        } else if (pl != sl || memcmp(p, s, pl) != 0) {
            return 0;
        }
        if (!pe || !se)
            return !pe && !se;
        p = pe + 1;
        s = se + 1;
    }
}

static int
s_word_char(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

/* Checks a dotted glob (participant, package, admin operation, service with `/`): segments of
 * word characters, `*` and `?`, no empty segment. NULL when good, else what is wrong. */
static const char *
s_check_glob(const char *p, int allow_slash)
{
    if (!*p)
        return "empty pattern";
    if (strlen(p) > MAX_NAME)
        return "pattern longer than 256 characters";
    int slashes = 0;
    char prev = '.';
    for (const char *c = p; *c; c++) {
        if (*c == '/') {
            if (!allow_slash)
                return "'/' belongs in service patterns only";
            if (++slashes > 1)
                return "more than one '/'; a method is written pkg.Service/Method";
            if (prev == '.' || prev == '/')
                return "empty name before '/'";
        } else if (*c == '.') {
            if (prev == '.' || prev == '/')
                return "empty segment ('..' or a leading '.')";
        } else if (!s_word_char((unsigned char)*c) && *c != '*' && *c != '?') {
            return *c == '>' ? "'>' belongs in topic patterns only"
                             : "characters other than letters, digits, '_', '-', '.', '*', '?'";
        }
        prev = *c;
    }
    if (prev == '.' || prev == '/')
        return "ends with '.' or '/'";
    return NULL;
}

static const char *
s_check_topic(const char *p)
{
    if (!*p)
        return "empty topic pattern";
    if (strlen(p) > MAX_NAME)
        return "pattern longer than 256 characters";
    const char *s = p;
    for (;;) {
        const char *e = strchr(s, '.');
        size_t l = e ? (size_t)(e - s) : strlen(s);
        if (l == 0)
            return "empty topic segment ('..' or a '.' at either end)";
        if (l == 1 && *s == '>') {
            if (e)
                return "'>' must be the last segment";
        } else if (!(l == 1 && *s == '*')) {
            for (size_t i = 0; i < l; i++) {
                if (s[i] == '*' || s[i] == '>' || s[i] == '?')
                    return "a wildcard must be a whole segment ('*' one, '>' the rest)";
                if (!s_word_char((unsigned char)s[i]))
                    return "characters other than letters, digits, '_', '-' in a segment";
            }
        }
        if (!e)
            return NULL;
        s = e + 1;
    }
}

static int
s_has_wild(const char *p)
{
    return strpbrk(p, "*?>") != NULL;
}

/* ---- index -------------------------------------------------------------------------------- */

static int
s_vec_push(idxvec_t *v, uint32_t x)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 2;
        uint32_t *nv = realloc(v->v, cap * sizeof *nv);
        if (!nv)
            return AB_ENOMEM;
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = x;
    return 0;
}

/* The entry for key[0..len) in *head, made (without rules) when missing; NULL on allocation
 * failure. The key is borrowed from a rule. */
static exact_t *
s_entry(exact_t **head, const char *key, size_t len)
{
    exact_t *e = NULL;
    HASH_FIND(hh, *head, key, len, e);
    if (e)
        return e;
    e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->key = (char *)key;
    HASH_ADD_KEYPTR(hh, *head, e->key, len, e);
    if (e->hh.tbl == NULL) {
        free(e);
        return NULL;
    }
    return e;
}

static int
s_index_rule(ab_policy_t *pol, uint32_t ri)
{
    rule_t *r = &pol->rules[ri];
    action_index_t *ix = &pol->index[r->action];
    if (r->res_kind == RES_EXACT) {
        exact_t *e = s_entry(&ix->exact, r->resource, strlen(r->resource));
        return e ? s_vec_push(&e->rules, ri) : AB_ENOMEM;
    }
    size_t lit = strcspn(r->resource, r->res_kind == RES_TOPIC ? "*>" : "*?");
    size_t rl = strlen(r->resource);
    /* `pkg.Service/` `*` matches `pkg.Service` too: index it where that one is found */
    if (r->res_kind == RES_GLOB && rl >= 2 && r->resource[rl - 1] == '*' &&
        r->resource[rl - 2] == '/' && lit > rl - 2)
        lit = rl - 2;
    while (lit > 0 && r->resource[lit - 1] != '.' && r->resource[lit - 1] != '/')
        lit--;
    exact_t *e = s_entry(&ix->prefix, r->resource, lit);
    if (!e || s_vec_push(&e->rules, ri) != 0)
        return AB_ENOMEM;
    for (size_t k = 0; k < lit; k++) /* the shorter prefixes, for the walk */
        if ((r->resource[k] == '.' || r->resource[k] == '/') &&
            !s_entry(&ix->prefix, r->resource, k + 1))
            return AB_ENOMEM;
    return s_entry(&ix->prefix, r->resource, 0) ? 0 : AB_ENOMEM;
}

/* ---- participants ------------------------------------------------------------------------- */

/* 1 when WHO (a group index, or a pattern) names `participant` with the groups of `m`. */
static int
s_names(const member_t *m, int group, int glob, const char *who, const char *participant)
{
    if (group >= 0)
        return (m->groups[group / 64] >> (group % 64)) & 1;
    return glob ? s_glob(who, participant) : strcmp(who, participant) == 0;
}

/* The limits of `participant`: per field the exact entry, else the lowest matching value. */
static void
s_member_limits(const ab_policy_t *pol, member_t *m, const char *participant)
{
    ab_policy_limits_t exact = {0}, low = {0};
    for (size_t i = 0; i < pol->nlimits; i++) {
        const limit_t *l = &pol->limits[i];
        if (!s_names(m, l->group, l->glob, l->who, participant))
            continue;
        int is_exact = l->group < 0 && !l->glob;
        unsigned long long *dst = is_exact ? &exact.rate : &low.rate;
        const unsigned long long *src = &l->set.rate;
        for (size_t f = 0; f < sizeof l->set / sizeof l->set.rate; f++)
            if (src[f] && (is_exact || !dst[f] || src[f] < dst[f]))
                dst[f] = src[f];
    }
    unsigned long long *out = &m->limits.rate;
    const unsigned long long *e = &exact.rate, *lo = &low.rate;
    for (size_t f = 0; f < sizeof m->limits / sizeof m->limits.rate; f++)
        out[f] = e[f] ? e[f] : lo[f];
}

/* The cached membership and clearance of a participant, computed on first sight. */
static member_t *
s_member(ab_policy_t *pol, const char *participant)
{
    member_t *m = NULL;
    HASH_FIND_STR(pol->cache, participant, m);
    if (m)
        return m;
    if (pol->ncached >= MAX_CACHED) {
        member_t *x, *tmp;
        HASH_ITER(hh, pol->cache, x, tmp)
        {
            HASH_DEL(pol->cache, x);
            free(x->key);
            free(x);
        }
        pol->ncached = 0;
    }
    m = calloc(1, sizeof *m + pol->group_words * sizeof(uint64_t));
    if (!m || !(m->key = strdup(participant))) {
        free(m);
        return NULL;
    }
    for (size_t g = 0; g < pol->ngroups; g++) {
        for (size_t k = 0; k < pol->groups[g].npatterns; k++) {
            if (s_glob(pol->groups[g].patterns[k], participant)) {
                m->groups[g / 64] |= (uint64_t)1 << (g % 64);
                break;
            }
        }
    }
    /* an entry naming the participant exactly wins; otherwise the lowest of the matching
     * patterns and groups (a narrower grant never widens a broader restriction); else OFFEN */
    int exact = 0, low = 0;
    for (size_t i = 0; i < pol->nclearances; i++) {
        const clearance_t *c = &pol->clearances[i];
        if (!s_names(m, c->group, c->glob, c->who, participant))
            continue;
        if (c->group < 0 && !c->glob)
            exact = c->level;
        else if (!low || c->level < low)
            low = c->level;
    }
    m->clearance = exact ? exact : low ? low : AB_POLICY_OFFEN;
    s_member_limits(pol, m, participant);
    HASH_ADD_KEYPTR(hh, pol->cache, m->key, strlen(m->key), m);
    if (m->hh.tbl == NULL) {
        free(m->key);
        free(m);
        return NULL;
    }
    pol->ncached++;
    return m;
}

int
ab_policy_clearance(ab_policy_t *pol, const char *participant)
{
    if (!pol || !participant)
        return AB_POLICY_OFFEN;
    member_t *m = s_member(pol, participant);
    return m ? m->clearance : AB_POLICY_OFFEN;
}

void
ab_policy_limits(ab_policy_t *pol, const char *participant, ab_policy_limits_t *out)
{
    memset(out, 0, sizeof *out);
    if (!pol || !participant || pol->nlimits == 0)
        return;
    member_t *m = s_member(pol, participant);
    if (m)
        *out = m->limits;
}

size_t
ab_policy_limit_count(const ab_policy_t *pol)
{
    return pol ? pol->nlimits : 0;
}

int
ab_policy_cleared(ab_policy_t *pol, const char *participant, int level)
{
    if (level == AB_POLICY_UNSPECIFIED)
        level = AB_POLICY_OFFEN;
    if (!pol || !participant || level < 0 || level > AB_POLICY_VS_NFD)
        return 0;
    return ab_policy_clearance(pol, participant) >= level;
}

/* ---- decisions ---------------------------------------------------------------------------- */

enum { SCORE_NONE = 0, SCORE_WHO = 1, SCORE_PURPOSE = 2, SCORE_ALLOW = 3 };

typedef struct {
    const ab_policy_t *pol;
    const char *participant, *resource, *purpose;
    const member_t *m;
    int score;
    uint32_t best;
} search_t;

static void
s_consider(search_t *s, const idxvec_t *v, int match)
{
    for (size_t i = 0; i < v->n; i++) {
        uint32_t ri = v->v[i];
        const rule_t *r = &s->pol->rules[ri];
        if (match == RES_GLOB && !s_glob(r->resource, s->resource))
            continue;
        if (match == RES_TOPIC && !s_topic_covers(r->resource, s->resource))
            continue;
        int who;
        if (r->who_group >= 0)
            who = (s->m->groups[r->who_group / 64] >> (r->who_group % 64)) & 1;
        else if (!r->who_glob)
            who = strcmp(r->who, s->participant) == 0;
        else
            who = s_glob(r->who, s->participant);
        int score = SCORE_WHO;
        if (who) {
            score = SCORE_ALLOW;
            if (r->npurposes) {
                score = SCORE_PURPOSE;
                for (size_t k = 0; s->purpose && k < r->npurposes; k++) {
                    if (strcmp(r->purposes[k], s->purpose) == 0) {
                        score = SCORE_ALLOW;
                        break;
                    }
                }
            }
        }
        if (score > s->score || (score == s->score && ri < s->best)) {
            s->score = score;
            s->best = ri;
        }
    }
}

/* Appends to a fixed buffer, cutting off what does not fit. */
static void
s_cat(char *buf, size_t size, size_t *at, const char *fmt, ...)
{
    if (*at >= size - 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *at, size - *at, fmt, ap);
    va_end(ap);
    if (n > 0)
        *at = *at + (size_t)n < size ? *at + (size_t)n : size - 1;
}

/* Makes a text that was cut to fit (in the middle of a UTF-8 sequence, perhaps) valid UTF-8
 * on one line: it reaches callers in an error header, whose text must be UTF-8. */
static void
s_clean(char *text, size_t size)
{
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s", text);
    ab_utf8_sanitize(text, size, tmp);
}

static int
s_deny(ab_policy_decision_t *out, ab_policy_why_t why, const rule_t *r)
{
    if (out) {
        s_clean(out->reason, sizeof out->reason);
        out->allowed = 0;
        out->why = why;
        out->rule = r ? r->name : NULL;
        out->rule_line = r ? r->line : 0;
    }
    return 0;
}

int
ab_policy_decide(ab_policy_t *pol, const char *participant, ab_policy_action_t action,
                 const char *resource, const char *purpose, int classification,
                 ab_policy_decision_t *out)
{
    ab_policy_decision_t scratch;
    if (!out)
        out = &scratch;
    out->reason[0] = '\0';
    size_t at = 0;
    const size_t rs = sizeof out->reason;
    if (!pol || !participant || !*participant || !resource || (int)action < 0 ||
        action >= AB_POLICY_ACTION_COUNT) {
        s_cat(out->reason, rs, &at, "%s",
              !pol                                                  ? "no policy loaded"
              : (int)action < 0 || action >= AB_POLICY_ACTION_COUNT ? "unknown action"
              : !resource                                           ? "no resource"
                                                                    : "no participant");
        return s_deny(out, AB_POLICY_BAD_REQUEST, NULL);
    }
    int level = classification == AB_POLICY_UNSPECIFIED ? AB_POLICY_OFFEN : classification;
    if (level < AB_POLICY_OFFEN || level > AB_POLICY_VS_NFD) {
        s_cat(out->reason, rs, &at, "unknown classification %d", classification);
        return s_deny(out, AB_POLICY_BAD_REQUEST, NULL);
    }
    if (purpose && !*purpose)
        purpose = NULL;
    member_t *m = s_member(pol, participant);
    if (!m) {
        s_cat(out->reason, rs, &at, "out of memory");
        return s_deny(out, AB_POLICY_BAD_REQUEST, NULL);
    }

    search_t s = {pol, participant, resource, purpose, m, SCORE_NONE, UINT32_MAX};
    const action_index_t *ix = &pol->index[action];
    exact_t *e = NULL;
    HASH_FIND_STR(ix->exact, resource, e);
    if (e)
        s_consider(&s, &e->rules, RES_EXACT);
    if (ix->prefix) {
        int kind =
            action == AB_POLICY_PUBLISH || action == AB_POLICY_SUBSCRIBE ? RES_TOPIC : RES_GLOB;
        for (size_t len = 0;;) {
            HASH_FIND(hh, ix->prefix, resource, len, e);
            if (!e)
                break;
            s_consider(&s, &e->rules, kind);
            const char *c = resource + len;
            while (*c && *c != '.' && *c != '/')
                c++;
            if (!*c)
                break;
            len = (size_t)(c - resource) + 1;
        }
    }

    const char *an = s_action_names[action];
    const rule_t *r = s.score ? &pol->rules[s.best] : NULL;
    if (s.score == SCORE_NONE) {
        s_cat(out->reason, rs, &at, "no rule allows %s to %s %s (default deny)", participant, an,
              resource);
        return s_deny(out, AB_POLICY_NO_RULE, NULL);
    }
    if (s.score == SCORE_WHO) {
        s_cat(out->reason, rs, &at, "rule '%s' (%s:%zu) allows %s %s only for %s, not for %s",
              r->name, pol->file, r->line, an, r->resource, r->who, participant);
        return s_deny(out, AB_POLICY_WRONG_WHO, r);
    }
    if (s.score == SCORE_PURPOSE) {
        s_cat(out->reason, rs, &at, "rule '%s' (%s:%zu) requires one of the purposes ", r->name,
              pol->file, r->line);
        for (size_t k = 0; k < r->npurposes; k++)
            s_cat(out->reason, rs, &at, "%s'%s'", k ? ", " : "", r->purposes[k]);
        if (purpose)
            s_cat(out->reason, rs, &at, "; the message gives '%s'", purpose);
        else
            s_cat(out->reason, rs, &at, "; the message gives none");
        return s_deny(out, AB_POLICY_NO_PURPOSE, r);
    }
    if (m->clearance < level) {
        s_cat(out->reason, rs, &at, "%s is cleared for %s, the message is %s", participant,
              ab_policy_level_name(m->clearance), ab_policy_level_name(level));
        return s_deny(out, AB_POLICY_NOT_CLEARED, r);
    }
    if (action == AB_POLICY_SEND) {
        member_t *rm = s_member(pol, resource);
        if (!rm || rm->clearance < level) {
            s_cat(out->reason, rs, &at, "the recipient %s is cleared for %s, the message is %s",
                  resource, ab_policy_level_name(rm ? rm->clearance : AB_POLICY_OFFEN),
                  ab_policy_level_name(level));
            return s_deny(out, AB_POLICY_RECIPIENT_NOT_CLEARED, r);
        }
    }
    out->allowed = 1;
    out->why = AB_POLICY_ALLOWED;
    out->rule = r->name;
    out->rule_line = r->line;
    /* the allow path is the hot one: no printf */
    static const char pre[] = "allowed by rule '";
    size_t nl = strlen(r->name);
    if (sizeof pre - 1 + nl + 2 <= rs) {
        memcpy(out->reason, pre, sizeof pre - 1);
        memcpy(out->reason + sizeof pre - 1, r->name, nl);
        memcpy(out->reason + sizeof pre - 1 + nl, "'", 2);
    }
    return 1;
}

/* ---- loading ------------------------------------------------------------------------------ */

typedef struct {
    yaml_document_t *doc;
    ab_policy_t *pol;
    ab_policy_error_t *err;
    const char *name;
    exact_t *names; /* rule names while loading, for duplicates */
} loader_t;

__attribute__((format(printf, 3, 4))) static int
s_fail(loader_t *ld, const yaml_node_t *at, const char *fmt, ...)
{
    ab_policy_error_t *e = ld->err;
    if (!e)
        return AB_EINVAL;
    snprintf(e->file, sizeof e->file, "%s", ld->name);
    e->line = at ? at->start_mark.line + 1 : 0;
    e->col = at ? at->start_mark.column + 1 : 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->text, sizeof e->text, fmt, ap);
    va_end(ap);
    s_clean(e->text, sizeof e->text); /* '%.100s' of a name may cut a sequence */
    if (at)
        snprintf(e->message, sizeof e->message, "%s:%zu:%zu: %s", e->file, e->line, e->col,
                 e->text);
    else
        snprintf(e->message, sizeof e->message, "%s: %s", e->file, e->text);
    return AB_EINVAL;
}

static const char *
s_scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static yaml_node_t *
s_node(loader_t *ld, int id)
{
    return yaml_document_get_node(ld->doc, id);
}

static int
s_find_group(const ab_policy_t *pol, const char *name)
{
    for (size_t g = 0; g < pol->ngroups; g++)
        if (strcmp(pol->groups[g].name, name) == 0)
            return (int)g;
    return -1;
}

/* A WHO: `@group` (an index into groups, which must exist) or a participant pattern. */
static int
s_who(loader_t *ld, const yaml_node_t *n, const char *what, char **who, int *group, int *glob)
{
    const char *v = s_scalar(n);
    if (!v || !*v)
        return s_fail(ld, n, "%s must be a participant pattern or @group", what);
    if (v[0] == '@') {
        *group = s_find_group(ld->pol, v + 1);
        if (*group < 0)
            return s_fail(ld, n,
                          "unknown group '%.100s' in %s (groups are defined under "
                          "'groups:')",
                          v + 1, what);
        *glob = 0;
    } else {
        const char *bad = s_check_glob(v, 0);
        if (bad)
            return s_fail(ld, n, "bad participant pattern '%.100s' in %s: %s", v, what, bad);
        *group = -1;
        *glob = s_has_wild(v);
    }
    *who = strdup(v);
    return *who ? 0 : AB_ENOMEM;
}

static int
s_load_groups(loader_t *ld, const yaml_node_t *n)
{
    ab_policy_t *pol = ld->pol;
    if (n->type != YAML_MAPPING_NODE)
        return s_fail(ld, n,
                      "'groups' must be a mapping of group name to a list of "
                      "participant patterns");
    size_t count = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    pol->groups = calloc(count ? count : 1, sizeof *pol->groups);
    if (!pol->groups)
        return AB_ENOMEM;
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = s_node(ld, p->key), *v = s_node(ld, p->value);
        const char *name = s_scalar(k);
        if (!name || !*name)
            return s_fail(ld, k, "a group name must be a non-empty text");
        for (const char *c = name; *c; c++)
            if (!s_word_char((unsigned char)*c) && *c != '.')
                return s_fail(ld, k, "bad group name '%.100s': letters, digits, '_', '-', '.' only",
                              name);
        if (strlen(name) > MAX_NAME)
            return s_fail(ld, k, "group name longer than 256 characters");
        if (s_find_group(pol, name) >= 0)
            return s_fail(ld, k, "duplicate group '%.100s'", name);
        group_t *g = &pol->groups[pol->ngroups];
        if (!(g->name = strdup(name)))
            return AB_ENOMEM;
        pol->ngroups++;
        yaml_node_item_t *items = NULL;
        size_t ni = 1;
        if (v->type == YAML_SEQUENCE_NODE) {
            items = v->data.sequence.items.start;
            ni = (size_t)(v->data.sequence.items.top - items);
        } else if (v->type != YAML_SCALAR_NODE) {
            return s_fail(ld, v, "group '%.100s' must be a list of participant patterns", name);
        }
        if (ni == 0)
            return s_fail(ld, v, "group '%.100s' has no members", name);
        g->patterns = calloc(ni, sizeof *g->patterns);
        if (!g->patterns)
            return AB_ENOMEM;
        for (size_t i = 0; i < ni; i++) {
            yaml_node_t *it = items ? s_node(ld, items[i]) : v;
            const char *pat = s_scalar(it);
            if (!pat)
                return s_fail(ld, it, "a member of group '%.100s' must be a participant pattern",
                              name);
            const char *bad = pat[0] == '@' ? "groups cannot contain groups" : s_check_glob(pat, 0);
            if (bad)
                return s_fail(ld, it, "bad participant pattern '%.100s' in group '%.100s': %s", pat,
                              name, bad);
            if (!(g->patterns[i] = strdup(pat)))
                return AB_ENOMEM;
            g->npatterns++;
        }
    }
    pol->group_words = (pol->ngroups + 63) / 64;
    if (pol->group_words == 0)
        pol->group_words = 1;
    return 0;
}

static int
s_load_clearances(loader_t *ld, const yaml_node_t *n)
{
    ab_policy_t *pol = ld->pol;
    if (n->type != YAML_MAPPING_NODE)
        return s_fail(ld, n,
                      "'clearances' must be a mapping of participant pattern or @group "
                      "to OFFEN or VS-NUR-FUER-DEN-DIENSTGEBRAUCH");
    size_t count = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    pol->clearances = calloc(count ? count : 1, sizeof *pol->clearances);
    if (!pol->clearances)
        return AB_ENOMEM;
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = s_node(ld, p->key), *v = s_node(ld, p->value);
        clearance_t *c = &pol->clearances[pol->nclearances];
        int rc = s_who(ld, k, "clearances", &c->who, &c->group, &c->glob);
        if (rc)
            return rc;
        pol->nclearances++;
        for (size_t i = 0; i + 1 < pol->nclearances; i++)
            if (strcmp(pol->clearances[i].who, c->who) == 0)
                return s_fail(ld, k, "duplicate clearance for '%.100s'", c->who);
        const char *lv = s_scalar(v);
        c->level = ab_policy_level_parse(lv);
        if (c->level < 0)
            return s_fail(ld, v,
                          "bad clearance level '%.100s' for '%.100s': OFFEN or "
                          "VS-NUR-FUER-DEN-DIENSTGEBRAUCH",
                          lv ? lv : "(not a text)", c->who);
    }
    return 0;
}

/* The largest value a limit may have: a million requests per second, calls or connections. */
#define MAX_LIMIT 1000000ull

static int
s_load_limits(loader_t *ld, const yaml_node_t *n)
{
    static const char *keys[] = {"rate", "burst", "calls_in_flight", "connections"};
    ab_policy_t *pol = ld->pol;
    if (n->type != YAML_MAPPING_NODE)
        return s_fail(ld, n,
                      "'limits' must be a mapping of participant pattern or @group to "
                      "{rate, burst, calls_in_flight, connections}");
    size_t count = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    pol->limits = calloc(count ? count : 1, sizeof *pol->limits);
    if (!pol->limits)
        return AB_ENOMEM;
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = s_node(ld, p->key), *v = s_node(ld, p->value);
        limit_t *l = &pol->limits[pol->nlimits];
        int rc = s_who(ld, k, "limits", &l->who, &l->group, &l->glob);
        if (rc)
            return rc;
        pol->nlimits++;
        for (size_t i = 0; i + 1 < pol->nlimits; i++)
            if (strcmp(pol->limits[i].who, l->who) == 0)
                return s_fail(ld, k, "duplicate limits for '%.100s'", l->who);
        if (!v || v->type != YAML_MAPPING_NODE ||
            v->data.mapping.pairs.top == v->data.mapping.pairs.start)
            return s_fail(ld, v ? v : k,
                          "the limits of '%.100s' must be a mapping with rate, burst, "
                          "calls_in_flight and/or connections",
                          l->who);
        for (yaml_node_pair_t *q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top;
             q++) {
            yaml_node_t *lk = s_node(ld, q->key), *lv = s_node(ld, q->value);
            const char *key = s_scalar(lk), *val = s_scalar(lv);
            size_t f = 0;
            while (f < sizeof keys / sizeof keys[0] && !(key && strcmp(key, keys[f]) == 0))
                f++;
            if (f == sizeof keys / sizeof keys[0])
                return s_fail(ld, lk,
                              "unknown limit '%.100s' for '%.100s'; limits are rate, burst, "
                              "calls_in_flight, connections",
                              key ? key : "(not a text)", l->who);
            unsigned long long *slot = &l->set.rate + f;
            if (*slot)
                return s_fail(ld, lk, "'%s' given twice for '%.100s'", keys[f], l->who);
            char *end = NULL;
            errno = 0;
            unsigned long long x = val && *val >= '0' && *val <= '9' ? strtoull(val, &end, 10) : 0;
            if (!val || !end || *end || errno || x == 0 || x > MAX_LIMIT)
                return s_fail(ld, lv, "%s for '%.100s' must be a whole number from 1 to %llu",
                              keys[f], l->who, MAX_LIMIT);
            *slot = x;
        }
    }
    return 0;
}

static int
s_load_rule(loader_t *ld, const yaml_node_t *n, size_t idx)
{
    ab_policy_t *pol = ld->pol;
    rule_t *r = &pol->rules[idx];
    r->line = n->start_mark.line + 1;
    if (n->type != YAML_MAPPING_NODE)
        return s_fail(ld, n,
                      "a rule must be a mapping with the keys who, action, resource "
                      "(and optionally name, purposes)");
    const yaml_node_t *kwho = NULL, *kaction = NULL, *kres = NULL, *kname = NULL, *kpurp = NULL;
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = s_node(ld, p->key), *v = s_node(ld, p->value);
        const char *key = s_scalar(k);
        const yaml_node_t **slot = NULL;
        if (!key)
            return s_fail(ld, k, "a rule's keys must be texts");
        if (strcmp(key, "who") == 0)
            slot = &kwho;
        else if (strcmp(key, "action") == 0)
            slot = &kaction;
        else if (strcmp(key, "resource") == 0)
            slot = &kres;
        else if (strcmp(key, "name") == 0 || strcmp(key, "id") == 0)
            slot = &kname;
        else if (strcmp(key, "purposes") == 0)
            slot = &kpurp;
        else
            return s_fail(ld, k,
                          "unknown key '%.100s' in a rule; a rule has who, action, resource, "
                          "and optionally name (or id) and purposes",
                          key);
        if (*slot)
            return s_fail(ld, k, "'%s' given twice in one rule", key);
        *slot = v;
    }
    if (!kwho || !kaction || !kres)
        return s_fail(ld, n, "the rule has no '%s'",
                      !kwho      ? "who"
                      : !kaction ? "action"
                                 : "resource");
    if (kname) {
        const char *nm = s_scalar(kname);
        if (!nm || !*nm || strlen(nm) > MAX_NAME)
            return s_fail(ld, kname, "a rule name must be a text of 1 to 256 characters");
        exact_t *dup = NULL;
        HASH_FIND_STR(ld->names, nm, dup);
        if (dup)
            return s_fail(ld, kname, "duplicate rule name '%.100s' (first on line %zu)", nm,
                          pol->rules[dup->rules.cap].line);
        r->name = strdup(nm);
    } else {
        char buf[32];
        snprintf(buf, sizeof buf, "rule-%zu", idx + 1);
        r->name = strdup(buf);
    }
    if (!r->name)
        return AB_ENOMEM;
    exact_t *ne = calloc(1, sizeof *ne); /* rules.cap holds the rule's index */
    if (!ne)
        return AB_ENOMEM;
    ne->key = r->name;
    ne->rules.cap = idx;
    HASH_ADD_KEYPTR(hh, ld->names, ne->key, strlen(ne->key), ne);
    if (ne->hh.tbl == NULL) {
        free(ne);
        return AB_ENOMEM;
    }
    const char *act = s_scalar(kaction);
    if (!act || ab_policy_action_parse(act, &r->action) != 0)
        return s_fail(ld, kaction,
                      "unknown action '%.100s'; actions are call, offer, send, receive, publish, "
                      "subscribe, schema-push, admin",
                      act ? act : "(not a text)");
    int rc = s_who(ld, kwho, "who", &r->who, &r->who_group, &r->who_glob);
    if (rc)
        return rc;
    const char *res = s_scalar(kres);
    if (!res)
        return s_fail(ld, kres, "resource must be a text (a pattern)");
    const char *bad;
    const char *kind;
    switch (r->action) {
    case AB_POLICY_CALL:
    case AB_POLICY_OFFER:
        kind = "service pattern";
        bad = s_check_glob(res, 1);
        break;
    case AB_POLICY_SEND:
    case AB_POLICY_RECEIVE:
        kind = "participant pattern";
        bad = res[0] == '@' ? "a resource is a pattern, not a group" : s_check_glob(res, 0);
        break;
    case AB_POLICY_PUBLISH:
    case AB_POLICY_SUBSCRIBE:
        kind = "topic pattern";
        bad = s_check_topic(res);
        break;
    default:
        kind = r->action == AB_POLICY_ADMIN ? "operation pattern" : "package pattern";
        bad = s_check_glob(res, 0);
        break;
    }
    if (bad)
        return s_fail(ld, kres, "bad %s '%.100s' for %s: %s", kind, res, act, bad);
    if (!(r->resource = strdup(res)))
        return AB_ENOMEM;
    r->res_kind = !s_has_wild(res)                                                       ? RES_EXACT
                  : (r->action == AB_POLICY_PUBLISH || r->action == AB_POLICY_SUBSCRIBE) ? RES_TOPIC
                                                                                         : RES_GLOB;
    if (kpurp) {
        yaml_node_item_t *items = NULL;
        size_t ni = 1;
        if (kpurp->type == YAML_SEQUENCE_NODE) {
            items = kpurp->data.sequence.items.start;
            ni = (size_t)(kpurp->data.sequence.items.top - items);
        } else if (kpurp->type != YAML_SCALAR_NODE) {
            return s_fail(ld, kpurp, "purposes must be a list of texts, e.g. ['BMG §34']");
        }
        if (ni == 0)
            return s_fail(ld, kpurp,
                          "an empty purposes list would allow nothing; leave it out "
                          "to require no purpose");
        r->purposes = calloc(ni, sizeof *r->purposes);
        if (!r->purposes)
            return AB_ENOMEM;
        for (size_t i = 0; i < ni; i++) {
            const yaml_node_t *it = items ? s_node(ld, items[i]) : kpurp;
            const char *pv = s_scalar(it);
            if (!pv || !*pv || strlen(pv) > MAX_NAME)
                return s_fail(ld, it, "a purpose must be a text of 1 to 256 characters");
            if (!(r->purposes[i] = strdup(pv)))
                return AB_ENOMEM;
            r->npurposes++;
        }
    }
    return 0;
}

static int
s_load_doc(loader_t *ld)
{
    ab_policy_t *pol = ld->pol;
    yaml_node_t *root = yaml_document_get_root_node(ld->doc);
    if (!root)
        return s_fail(ld, NULL,
                      "the policy file is empty; a policy has 'groups', 'clearances' "
                      "and 'rules'");
    if (root->type != YAML_MAPPING_NODE)
        return s_fail(ld, root, "a policy must be a mapping with 'groups', 'clearances', 'rules'");
    yaml_node_t *groups = NULL, *clear = NULL, *rules = NULL, *limits = NULL;
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = s_node(ld, p->key), *v = s_node(ld, p->value);
        const char *key = s_scalar(k);
        yaml_node_t **slot;
        if (key && strcmp(key, "groups") == 0)
            slot = &groups;
        else if (key && strcmp(key, "clearances") == 0)
            slot = &clear;
        else if (key && strcmp(key, "rules") == 0)
            slot = &rules;
        else if (key && strcmp(key, "limits") == 0)
            slot = &limits;
        else
            return s_fail(ld, k,
                          "unknown key '%.100s'; a policy has groups, clearances, limits and "
                          "rules",
                          key ? key : "(not a text)");
        if (*slot)
            return s_fail(ld, k, "'%s' given twice", key);
        *slot = v;
    }
    int rc;
    /* groups first: clearances and rules refer to them wherever they stand in the file */
    if (groups && (rc = s_load_groups(ld, groups)) != 0)
        return rc;
    pol->group_words = pol->ngroups ? (pol->ngroups + 63) / 64 : 1;
    if (clear && (rc = s_load_clearances(ld, clear)) != 0)
        return rc;
    if (limits && (rc = s_load_limits(ld, limits)) != 0)
        return rc;
    if (rules) {
        if (rules->type != YAML_SEQUENCE_NODE)
            return s_fail(ld, rules, "'rules' must be a list of rules");
        size_t count = (size_t)(rules->data.sequence.items.top - rules->data.sequence.items.start);
        if (count > UINT32_MAX - 1)
            return s_fail(ld, rules, "too many rules");
        pol->rules = calloc(count ? count : 1, sizeof *pol->rules);
        if (!pol->rules)
            return AB_ENOMEM;
        for (size_t i = 0; i < count; i++) {
            pol->nrules = i + 1;
            rc = s_load_rule(ld, s_node(ld, rules->data.sequence.items.start[i]), i);
            if (rc)
                return rc;
        }
    }
    for (size_t i = 0; i < pol->nrules; i++)
        if ((rc = s_index_rule(pol, (uint32_t)i)) != 0)
            return rc;
    return 0;
}

/* Fills *err (may be NULL) for a parser that failed (NULL: it could not be made): the place
 * and libyaml's reason, or "out of memory". Returns AB_ENOMEM or AB_EINVAL. */
static int
s_yaml_fail(ab_policy_error_t *err, const char *name, const yaml_parser_t *parser)
{
    /* libyaml's loader fails without setting an error when it cannot copy a tag */
    int oom =
        parser == NULL || parser->error == YAML_MEMORY_ERROR || parser->error == YAML_NO_ERROR;
    if (err) {
        snprintf(err->file, sizeof err->file, "%s", name);
        if (oom) {
            err->line = err->col = 0;
            snprintf(err->text, sizeof err->text, "out of memory");
            snprintf(err->message, sizeof err->message, "%s: out of memory", name);
        } else {
            err->line = parser->problem_mark.line + 1;
            err->col = parser->problem_mark.column + 1;
            snprintf(err->text, sizeof err->text, "bad YAML: %s%s%s",
                     parser->problem ? parser->problem : "syntax error", parser->context ? " " : "",
                     parser->context ? parser->context : "");
            snprintf(err->message, sizeof err->message, "%s:%zu:%zu: %s", err->file, err->line,
                     err->col, err->text);
        }
    }
    return oom ? AB_ENOMEM : AB_EINVAL;
}

int
ab_policy_load_buffer(const char *data, size_t len, const char *name, ab_policy_t **out,
                      ab_policy_error_t *err)
{
    if (err)
        memset(err, 0, sizeof *err);
    if (!name)
        name = "policy";
    loader_t ld = {NULL, NULL, err, name, NULL};
    if (!data || !out)
        return s_fail(&ld, NULL, "no policy given");
    if (len > MAX_FILE_SIZE)
        return s_fail(&ld, NULL, "larger than 16 MiB");
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) {
        s_yaml_fail(err, name, NULL);
        return AB_ENOMEM;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    if (!yaml_parser_load(&parser, &doc)) {
        int rc = s_yaml_fail(err, name, &parser);
        yaml_parser_delete(&parser);
        return rc;
    }
    /* a second document in one file is a mistake, not something to ignore; so is anything
     * after the first that is not YAML (or that could not be read for want of memory) */
    yaml_document_t extra;
    int more = 0;
    if (!yaml_parser_load(&parser, &extra)) {
        int rc = s_yaml_fail(err, name, &parser);
        yaml_parser_delete(&parser);
        yaml_document_delete(&doc);
        return rc;
    }
    more = yaml_document_get_root_node(&extra) != NULL;
    yaml_document_delete(&extra);
    yaml_parser_delete(&parser);
    ab_policy_t *pol = calloc(1, sizeof *pol);
    int rc = AB_ENOMEM;
    if (pol && (pol->file = strdup(name)) != NULL) {
        ld.doc = &doc;
        ld.pol = pol;
        pol->group_words = 1;
        rc = more ? s_fail(&ld, NULL, "more than one YAML document ('---') in the policy file")
                  : s_load_doc(&ld);
    }
    yaml_document_delete(&doc);
    exact_t *ne, *tmp;
    HASH_ITER(hh, ld.names, ne, tmp)
    {
        HASH_DEL(ld.names, ne);
        free(ne);
    }
    if (rc == AB_ENOMEM && err && !err->text[0]) {
        snprintf(err->file, sizeof err->file, "%s", name);
        snprintf(err->text, sizeof err->text, "out of memory");
        snprintf(err->message, sizeof err->message, "%s: out of memory", name);
    }
    if (rc != 0) {
        ab_policy_destroy(&pol);
        return rc;
    }
    *out = pol;
    return 0;
}

int
ab_policy_load(const char *path, ab_policy_t **out, ab_policy_error_t *err)
{
    if (err)
        memset(err, 0, sizeof *err);
    loader_t ld = {NULL, NULL, err, path ? path : "(null)", NULL};
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) {
        s_fail(&ld, NULL, "cannot open the policy file: %s", strerror(path ? errno : EINVAL));
        return AB_EIO;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (len == cap) {
            if (cap >= MAX_FILE_SIZE + 1) {
                rc = s_fail(&ld, NULL, "larger than 16 MiB");
                break;
            }
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap);
            if (!nb) {
                rc = AB_ENOMEM;
                break;
            }
            buf = nb;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                s_fail(&ld, NULL, "cannot read the policy file: %s", strerror(errno));
                rc = AB_EIO;
            }
            break;
        }
    }
    fclose(f);
    if (rc == 0)
        rc = ab_policy_load_buffer(buf ? buf : "", len, path, out, err);
    free(buf);
    return rc;
}

void
ab_policy_destroy(ab_policy_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ab_policy_t *pol = *self_p;
    for (size_t g = 0; g < pol->ngroups; g++) {
        for (size_t k = 0; k < pol->groups[g].npatterns; k++)
            free(pol->groups[g].patterns[k]);
        free(pol->groups[g].patterns);
        free(pol->groups[g].name);
    }
    free(pol->groups);
    for (size_t i = 0; i < pol->nclearances; i++)
        free(pol->clearances[i].who);
    free(pol->clearances);
    for (size_t i = 0; i < pol->nlimits; i++)
        free(pol->limits[i].who);
    free(pol->limits);
    for (size_t i = 0; i < pol->nrules; i++) {
        rule_t *r = &pol->rules[i];
        free(r->name);
        free(r->who);
        free(r->resource);
        for (size_t k = 0; k < r->npurposes; k++)
            free(r->purposes[k]);
        free(r->purposes);
    }
    free(pol->rules);
    for (int a = 0; a < AB_POLICY_ACTION_COUNT; a++) {
        action_index_t *ix = &pol->index[a];
        exact_t *e, *tmp;
        HASH_ITER(hh, ix->exact, e, tmp)
        {
            HASH_DEL(ix->exact, e);
            free(e->rules.v);
            free(e);
        }
        HASH_ITER(hh, ix->prefix, e, tmp)
        {
            HASH_DEL(ix->prefix, e);
            free(e->rules.v);
            free(e);
        }
    }
    member_t *m, *tmp;
    HASH_ITER(hh, pol->cache, m, tmp)
    {
        HASH_DEL(pol->cache, m);
        free(m->key);
        free(m);
    }
    free(pol->file);
    free(pol);
    *self_p = NULL;
}

size_t
ab_policy_group_count(const ab_policy_t *pol)
{
    return pol ? pol->ngroups : 0;
}

size_t
ab_policy_rule_count(const ab_policy_t *pol)
{
    return pol ? pol->nrules : 0;
}
