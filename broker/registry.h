/*
 * registry.h - published interfaces: the schema registry, payload validation, compatibility.
 *
 * Owns every registered .proto file (name, version, who pushed it and when, the descriptor set
 * it came in) and an index from every message, enum and service those files define to its
 * runtime descriptor (common/schema.h). Versions live in the store; at start the latest
 * version of each file is loaded and built, so a new interface needs no rebuild of the broker.
 *
 * It answers amtsbote.v1.Broker/SchemaPush, SchemaList and SchemaGet, and decides for every
 * CALL and reply whether its payload fits the interface its header claims (or its method
 * binds). Nothing here sends: the caller turns a verdict into an ERROR.
 */
#ifndef BRK_REGISTRY_H
#define BRK_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "store.h"

typedef struct brk_registry brk_registry_t;

/* Why something was refused: an AB_E* code, a text for a person, the field path if any. */
typedef struct brk_verdict {
    int code;
    char text[512];
    char field[256];
} brk_verdict_t;

typedef struct brk_registry_stats {
    uint64_t validated; /* payloads checked against a registered type */
    uint64_t invalid;   /* of those, refused */
    size_t files;       /* registered files */
    size_t types;       /* messages, enums and services in the index */
} brk_registry_stats_t;

/* Loads the latest version of every registered file from `store` (borrowed; must outlive the
 * registry). Returns NULL with the reason in err (a damaged record, a set that no longer
 * loads). */
brk_registry_t *brk_registry_new(const brk_config_t *cfg, brk_store_t *store, char *err,
                                 size_t errlen);

/* NULL-safe; nulls the pointer. */
void brk_registry_destroy(brk_registry_t **self_p);

/*
 * A CALL (reply == 0) to, or a reply (reply == 1) from, `method` ("pkg.Service/Method") with
 * header schema `schema` ("" or NULL when none) and payload `data`. Returns 0 when it may pass,
 * else the error code with *v filled: AB_ESCHEMA_INVALID (wrong type, bad payload: v->field
 * names the path) or AB_EUNKNOWN_SERVICE (a method the registered service does not have, or a
 * service that needs an interface and has none).
 */
int brk_registry_check_call(brk_registry_t *self, const char *method, const char *schema,
                            const uint8_t *data, size_t len, int reply, brk_verdict_t *v);

/* A payload that claims message type `schema` (SEND, PUBLISH): validated when the type is
 * registered. Returns 0 or AB_ESCHEMA_INVALID with *v. */
int brk_registry_check_message(brk_registry_t *self, const char *schema, const uint8_t *data,
                               size_t len, brk_verdict_t *v);

/* An OFFER of `service` ("pkg.Service" or "pkg.Service/Method"). Returns 0, or
 * AB_EUNKNOWN_SERVICE when the registered service has no such method or the service needs a
 * registered interface and has none (*v says which). */
int brk_registry_check_offer(brk_registry_t *self, const char *service, brk_verdict_t *v);

/* True when `method` ("amtsbote.v1.Broker/NAME") is one the registry answers. */
int brk_registry_answers(const char *method);

/*
 * Answers a call to one of the registry's broker methods from `participant`. Returns 0 with the
 * reply payload in *out (*out_len bytes, caller frees) and its message type in *schema, or an
 * AB_E* code with *v (a request that does not decode, a store error).
 */
int brk_registry_call(brk_registry_t *self, const char *participant, const char *method,
                      const uint8_t *data, size_t len, uint64_t now_ms, uint8_t **out,
                      size_t *out_len, const char **schema, brk_verdict_t *v);

void brk_registry_stats(const brk_registry_t *self, brk_registry_stats_t *out);

/* Asked for every file a push would change: may `participant` publish `package`? Returns 0, or
 * non-zero with the reason (naming the rule) in why. */
typedef int brk_registry_push_check_fn(void *ctx, const char *participant, const char *package,
                                       char *why, size_t cap);

/* Sets the check (NULL: only the first-publisher rule applies). `ctx` is borrowed. */
void brk_registry_set_push_check(brk_registry_t *self, brk_registry_push_check_fn *fn, void *ctx);

#endif
