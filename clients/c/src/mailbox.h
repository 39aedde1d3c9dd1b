/*
 * mailbox.h - what the client library's mailboxes and events need that does not touch the
 * connection: the ring of acknowledged deliveries that drops redeliveries, and the syntax and
 * matching of topics, topic patterns and durable subscription names.
 *
 * Owns: the ring's memory (allocated at the first acknowledgement, not per client). No I/O.
 */
#ifndef AB_MAILBOX_H
#define AB_MAILBOX_H

#include <stddef.h>
#include <stdint.h>

#include "wire.h"

/* How many acknowledged deliveries a client remembers. */
#define AB_DEDUP_CAPACITY 65536u
/* Topics: at most this many segments of 1-64 characters of A-Z a-z 0-9 _ - */
#define AB_TOPIC_MAX_SEGMENTS 16
#define AB_TOPIC_MAX_SEGMENT 64

typedef struct ab_dedup ab_dedup_t;

/*
 * A ring of the last `capacity` (> 0) keys added, each a (name, 16-byte id) pair: the name is
 * a sender's address (mailbox messages and receipts) or a durable subscription's name (events,
 * whose id is then the sequence). Names are kept as a keyed 64-bit hash with a key drawn at
 * random per ring, so nobody can make two names collide on purpose; ids are kept exactly.
 * Returns NULL when out of memory.
 */
ab_dedup_t *ab_dedup_new(size_t capacity);
/* Frees the ring; accepts NULL and a pointer to NULL, and nulls *self_p. */
void ab_dedup_destroy(ab_dedup_t **self_p);
/* Non-zero when (name, id) is in the ring. */
int ab_dedup_seen(const ab_dedup_t *self, const char *name, const uint8_t id[AB_MESSAGE_ID_LEN]);
/* Adds (name, id), dropping the oldest key when full; a key already there stays where it is. */
void ab_dedup_add(ab_dedup_t *self, const char *name, const uint8_t id[AB_MESSAGE_ID_LEN]);
/* Keys in the ring. */
size_t ab_dedup_count(const ab_dedup_t *self);
/* The 16-byte id of an event: its sequence, big-endian, in the last 8 bytes. */
void ab_dedup_seq_id(uint64_t sequence, uint8_t id[AB_MESSAGE_ID_LEN]);

/*
 * Checks a topic (`pattern` 0) or a subscription pattern (`pattern` 1, where a segment may be
 * `*`, one segment, and the last may be `>`, one or more segments). Returns 0, or AB_EINVAL with
 * a sentence naming the segment at fault in `why`.
 */
int ab_topic_check(const char *topic, int pattern, char why[AB_WHY_LEN]);

/* Non-zero when `topic` matches `pattern` (both checked already). */
int ab_topic_match(const char *pattern, const char *topic);

/*
 * Checks a durable subscription's name: 1-64 characters of a-z 0-9 _ - . (as the broker).
 * Returns 0, or AB_EINVAL with a sentence in `why`.
 */
int ab_subscription_check(const char *name, char why[AB_WHY_LEN]);

#endif
