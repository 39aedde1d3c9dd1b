/*
 * log.c - timestamped key=value lines on stderr, one write per line.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* The only mutable state outside main: the level, written once at start before the loop runs. */
static int s_level = BRK_LOG_INFO;

static const char *s_names[] = {"error", "warn", "info", "debug"};

void
brk_log_set_level(int level)
{
    s_level = level;
}

int
brk_log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcasecmp(name, s_names[i]) == 0)
            return i;
    if (strcasecmp(name, "warning") == 0)
        return BRK_LOG_WARN;
    return -1;
}

int
brk_log_enabled(int level)
{
    return level <= s_level;
}

void
brk_log(int level, const char *fmt, ...)
{
    if (level > s_level)
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = (int)strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    n += snprintf(line + n, sizeof line - (size_t)n, ".%03ldZ level=%s ", ts.tv_nsec / 1000000L,
                  s_names[level < 0   ? 0
                          : level > 3 ? 3
                                      : level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    n += m;
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}

int
brk_log_allow(brk_ratelimit_t *rl, uint64_t *suppressed)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t second = (uint64_t)ts.tv_sec;
    if (second != rl->window) {
        rl->window = second;
        rl->count = 0;
    }
    if (rl->count >= BRK_LOG_BURST) {
        rl->suppressed++;
        return 0;
    }
    rl->count++;
    *suppressed = rl->suppressed;
    rl->suppressed = 0;
    return 1;
}
