/*
 * JSON text into protobuf through the runtime descriptors of the meldewesen example and the
 * schematest protos. The first byte picks the message type (see fuzz_common.h), the rest is
 * JSON.
 *
 * What ab_json_to_pb() accepts it packs into bytes that ab_schema_validate() accepts (the
 * broker validates what the CLI sends), and that ab_pb_to_json() prints; then the payload
 * promises of ab_fuzz_check_payload() hold for those bytes too.
 */
#include <string.h>

#include "fuzz_common.h"
#include "pbjson.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    ab_fuzz_init();
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const ProtobufCMessageDescriptor *d = ab_fuzz_type(data[0]);
    char err[512];
    uint8_t *pb = NULL;
    size_t pb_len = 0;
    if (ab_json_to_pb(d, (const char *)data + 1, size - 1, &pb, &pb_len, err, sizeof err) != 0)
        return 0;
    ab_schema_error_t serr;
    int rc = ab_schema_validate(d, pb, pb_len, &serr);
    AB_FUZZ_CHECK(rc == 0, "%s: bytes made from JSON do not validate: %s: %s", d->name, serr.path,
                  serr.text);
    char *json = NULL;
    rc = ab_pb_to_json(d, pb, pb_len, 0, &json, err, sizeof err);
    AB_FUZZ_CHECK(rc == 0, "%s: bytes made from JSON do not print: %s", d->name, err);
    free(json);
    ab_fuzz_check_payload(d, pb, pb_len);
    free(pb);
    return 0;
}
