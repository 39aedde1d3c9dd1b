/*
 * errors.c - the one table of AB_E* codes, as sentences and names.
 */
#include "amtsbote.h"

#include <stdlib.h>

const char *
ab_strerror(int err)
{
    switch (err) {
    case AB_OK:
        return "success";
#define AB_XX_STR(name, num, wire, msg)                                                            \
    case AB_##name:                                                                                \
        return msg;
        AB_ERRNO_MAP(AB_XX_STR)
#undef AB_XX_STR
    default:
        return "unknown error";
    }
}

const char *
ab_err_name(int err)
{
    switch (err) {
    case AB_OK:
        return "OK";
#define AB_XX_NAME(name, num, wire, msg)                                                           \
    case AB_##name:                                                                                \
        return wire;
        AB_ERRNO_MAP(AB_XX_NAME)
#undef AB_XX_NAME
    default:
        return "UNKNOWN_ERROR";
    }
}

void
ab_free(void *ptr)
{
    free(ptr);
}
