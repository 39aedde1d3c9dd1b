/*
 * log.h - the broker's one-line-per-event log on stderr.
 *
 * Lines are `TIME level=L event=E key=value ...`; callers pass the event and fields in the
 * format. Payload contents never go into a log line: they are personal data.
 */
#ifndef BRK_LOG_H
#define BRK_LOG_H

#include <stdint.h>

enum { BRK_LOG_ERROR = 0, BRK_LOG_WARN = 1, BRK_LOG_INFO = 2, BRK_LOG_DEBUG = 3 };

/* Sets the most verbose level that is written; set once at start. */
void brk_log_set_level(int level);

/* Parses "error", "warn", "info" or "debug"; returns the level or -1. */
int brk_log_level_parse(const char *name);

/* Returns non-zero when `level` would be written (to skip building expensive fields). */
int brk_log_enabled(int level);

void brk_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * A limit for lines that a peer can cause at will (refused messages and connections), so that
 * a flood cannot fill the disk: at most BRK_LOG_BURST such lines per second per limiter.
 */
#define BRK_LOG_BURST 20

typedef struct brk_ratelimit {
    uint64_t window; /* the second being counted */
    unsigned count;
    uint64_t suppressed;
} brk_ratelimit_t;

/*
 * Returns non-zero when a line may be written now. Then *suppressed is the number of lines held
 * back since the last one written (to be logged with it), and the count restarts.
 */
int brk_log_allow(brk_ratelimit_t *rl, uint64_t *suppressed);

#endif
