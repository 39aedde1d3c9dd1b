/*
 * pbservice.c - protoc-c's own service stubs through the broker.
 *
 * protoc-c generates, for every method, `pkg__svc__method(ProtobufCService *service, input,
 * closure, closure_data)`, which calls service->invoke. ab_protobuf_service_new() makes a
 * ProtobufCService whose invoke packs the input, calls "package.Service/Method" with ab_call()
 * and hands the unpacked output to the closure; ab_protobuf_service_offer() is the other side,
 * offering a service implemented with protoc-c's PKG__SVC__INIT and dispatching each incoming call
 * to its invoke. Both work on messages through their descriptors only, so they serve every
 * protoc-c service without generated code of our own.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "amtsbote.h"

/* "package.Service/Method" fits in the broker's name limit; longer names fail there. */
#define S_NAME_MAX 512

typedef struct {
    ProtobufCService base; /* first: protoc-c's stubs see only this */
    ab_client_t *client;
    int timeout_ms;
} s_client_service_t;

/* Builds "package.Service/Method"; returns 0 or AB_EINVAL when it does not fit. */
static int
s_method_name(char out[S_NAME_MAX], const ProtobufCServiceDescriptor *desc,
              const ProtobufCMethodDescriptor *m)
{
    int n = snprintf(out, S_NAME_MAX, "%s/%s", desc->name, m->name);
    return n > 0 && n < S_NAME_MAX ? 0 : AB_EINVAL;
}

/*
 * invoke for a client: blocking, so the closure runs before invoke returns, with the output
 * (borrowed for the closure's duration) or NULL on any failure; ab_client_last_error() has the
 * text when the failure came from the call.
 */
static void
s_invoke(ProtobufCService *service, unsigned method_index, const ProtobufCMessage *input,
         ProtobufCClosure closure, void *closure_data)
{
    s_client_service_t *self = (s_client_service_t *)service;
    const ProtobufCServiceDescriptor *desc = service->descriptor;
    if (method_index >= desc->n_methods || !input) {
        if (closure)
            closure(NULL, closure_data);
        return;
    }
    const ProtobufCMethodDescriptor *m = &desc->methods[method_index];
    char name[S_NAME_MAX];
    ProtobufCMessage *output = NULL;
    uint8_t *buf = NULL;
    if (input->descriptor != m->input || s_method_name(name, desc, m) != 0)
        goto out;
    size_t len = protobuf_c_message_get_packed_size(input);
    buf = malloc(len ? len : 1);
    if (!buf)
        goto out;
    protobuf_c_message_pack(input, buf);
    void *reply = NULL;
    size_t reply_len = 0;
    if (ab_call(self->client, name, buf, len, self->timeout_ms, &reply, &reply_len) != 0)
        goto out;
    output = protobuf_c_message_unpack(m->output, NULL, reply_len, reply);
    ab_free(reply);
out:
    free(buf);
    if (closure)
        closure(output, closure_data);
    if (output)
        protobuf_c_message_free_unpacked(output, NULL);
}

static void
s_destroy(ProtobufCService *service)
{
    free(service);
}

ProtobufCService *
ab_protobuf_service_new(ab_client_t *client, const ProtobufCServiceDescriptor *desc, int timeout_ms)
{
    if (!client || !desc || desc->magic != PROTOBUF_C__SERVICE_DESCRIPTOR_MAGIC)
        return NULL;
    s_client_service_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->base.descriptor = desc;
    self->base.invoke = s_invoke;
    self->base.destroy = s_destroy;
    self->client = client;
    self->timeout_ms = timeout_ms;
    return &self->base;
}

void
ab_protobuf_service_destroy(ProtobufCService **service_p)
{
    if (!service_p || !*service_p)
        return;
    ProtobufCService *service = *service_p;
    *service_p = NULL;
    if (service->destroy)
        service->destroy(service);
}

/* ---- the provider side ---------------------------------------------------------------------- */

/* What a closure needs to answer one call; freed when the closure runs. */
typedef struct {
    ab_request_t *req;
    char name[S_NAME_MAX];
} s_answer_t;

/* The implementation's closure: packs its output into the reply, or answers with an error. */
static void
s_answer(const ProtobufCMessage *output, void *closure_data)
{
    s_answer_t *a = closure_data;
    if (!a || !a->req)
        return;
    if (!output) {
        char text[S_NAME_MAX + 64];
        snprintf(text, sizeof text, "the provider of %s gave no reply", a->name);
        ab_reply_error(&a->req, text);
    } else {
        size_t len = protobuf_c_message_get_packed_size(output);
        uint8_t *buf = malloc(len ? len : 1);
        if (buf) {
            protobuf_c_message_pack(output, buf);
            ab_reply(&a->req, buf, len);
            free(buf);
        } else {
            ab_reply_error(&a->req, "the provider ran out of memory");
        }
    }
    free(a);
}

static void
s_serve(ab_client_t *client, ab_request_t *req, void *arg)
{
    (void)client;
    ProtobufCService *impl = arg;
    const ProtobufCServiceDescriptor *desc = impl->descriptor;
    const char *method = ab_request_method(req);
    const char *slash = method ? strrchr(method, '/') : NULL;
    const ProtobufCMethodDescriptor *m =
        slash ? protobuf_c_service_descriptor_get_method_by_name(desc, slash + 1) : NULL;
    if (!m) {
        char text[S_NAME_MAX + 64];
        snprintf(text, sizeof text, "%s has no method '%.200s'", desc->name,
                 slash ? slash + 1 : "");
        ab_reply_error(&req, text);
        return;
    }
    size_t len = 0;
    const void *data = ab_request_payload(req, &len);
    ProtobufCMessage *input = protobuf_c_message_unpack(m->input, NULL, len, data);
    if (!input) {
        char text[S_NAME_MAX + 64];
        snprintf(text, sizeof text, "the request to %s/%s is not a valid %s", desc->name, m->name,
                 m->input->name);
        ab_reply_error(&req, text);
        return;
    }
    s_answer_t *a = calloc(1, sizeof *a);
    if (!a) {
        ab_reply_error(&req, "the provider ran out of memory");
        protobuf_c_message_free_unpacked(input, NULL);
        return;
    }
    a->req = req;
    s_method_name(a->name, desc, m);
    /* protobuf-c's closure may run later; the input is valid only during invoke */
    impl->invoke(impl, (unsigned)(m - desc->methods), input, s_answer, a);
    protobuf_c_message_free_unpacked(input, NULL);
}

int
ab_protobuf_service_offer(ab_client_t *client, ProtobufCService *impl)
{
    if (!client || !impl || !impl->descriptor || !impl->invoke ||
        impl->descriptor->magic != PROTOBUF_C__SERVICE_DESCRIPTOR_MAGIC)
        return AB_EINVAL;
    return ab_offer(client, impl->descriptor->name, s_serve, impl);
}
