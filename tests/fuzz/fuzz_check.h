/*
 * The one check every fuzz target uses: a property the code promises; a violation is a
 * finding, so abort (assert() is compiled out in RelWithDebInfo).
 */
#ifndef AB_FUZZ_CHECK_H
#define AB_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define AB_FUZZ_CHECK(cond, ...)                                                                   \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property violated: %s: ", __FILE__, __LINE__, #cond);          \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
