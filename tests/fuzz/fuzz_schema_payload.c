/*
 * Payload bytes against the runtime descriptors of the meldewesen example and the schematest
 * protos. The first byte picks the message type (see fuzz_common.h), the rest is the payload.
 *
 * The broker promises providers that a payload it validated unpacks: whenever
 * ab_schema_validate() accepts, protobuf_c_message_unpack() must succeed with the same
 * descriptor, and the repacked message must validate again. JSON printed from an accepted
 * payload must read back to the same JSON.
 */
#include "fuzz_common.h"

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
    ab_fuzz_check_payload(ab_fuzz_type(data[0]), data + 1, size - 1);
    return 0;
}
