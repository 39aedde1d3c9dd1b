/* Runtime descriptors and validation: see schema.h. */
#include "schema.h"

#include <string.h>

#include "amtsbote.h"

int
ab_schema_is_map_entry(const ProtobufCMessageDescriptor *d)
{
    /* protoc names the entry of field `foo_bar` FooBarEntry, with key = 1 and value = 2, and
     * refuses a user message of that name beside it; protoc-c keeps no map_entry flag, so the
     * shape is the mark, for generated and runtime descriptors alike. */
    if (d == NULL || d->n_fields != 2 || d->fields[0].id != 1 || d->fields[1].id != 2)
        return 0;
    if (strcmp(d->fields[0].name, "key") != 0 || strcmp(d->fields[1].name, "value") != 0)
        return 0;
    size_t n = strlen(d->short_name);
    return n > 5 && strcmp(d->short_name + n - 5, "Entry") == 0 &&
           d->fields[0].label != PROTOBUF_C_LABEL_REPEATED &&
           d->fields[1].label != PROTOBUF_C_LABEL_REPEATED;
}
