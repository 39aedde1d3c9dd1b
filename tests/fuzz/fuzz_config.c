/*
 * The broker's config file: the input is written to a scratch file and read with
 * brk_config_load(cfg, {"amtsbote-broker", "--config", FILE}), exactly as the broker starts
 * (the broker's code is unchanged: it reads only files). Promises (abort on violation):
 *
 *   - a refused file gives -1 and a message that names FILE:LINE:COL, or (when the settings
 *     read fine but do not fit together) "amtsbote-broker: " and the setting or listener;
 *   - an accepted file gives a configuration that holds what validation promises (a listener
 *     of a served scheme unless exporting, a known log level, heartbeat timeout at least twice
 *     the interval, default deadline not above the maximum);
 *   - brk_config_free() frees everything either way (LeakSanitizer checks each input) and is
 *     safe twice.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "fuzz_check.h"
#include "log.h"

#define CHECK AB_FUZZ_CHECK

/* A config file is a few dozen lines; 64 KiB is far beyond any real one. */
#define S_MAX_INPUT 65536

static char s_dir[64], s_path[96];

static void
s_remove(void)
{
    unlink(s_path);
    rmdir(s_dir);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(s_dir, sizeof s_dir, "/tmp/amtsbote-fuzz-config-XXXXXX");
    if (!mkdtemp(s_dir))
        abort();
    snprintf(s_path, sizeof s_path, "%s/broker.yaml", s_dir);
    atexit(s_remove);
    return 0;
}

/* The message names FILE:LINE:COL (both numbers at least 1). */
static int
s_names_place(const char *msg)
{
    size_t pl = strlen(s_path);
    if (strncmp(msg, s_path, pl) != 0 || msg[pl] != ':')
        return 0;
    char *end;
    unsigned long line = strtoul(msg + pl + 1, &end, 10);
    if (line == 0 || *end != ':')
        return 0;
    unsigned long col = strtoul(end + 1, &end, 10);
    return col > 0 && *end == ':';
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > S_MAX_INPUT)
        return -1;
    FILE *f = fopen(s_path, "wb");
    CHECK(f != NULL, "cannot write %s", s_path);
    if (size)
        CHECK(fwrite(data, 1, size, f) == size, "short write");
    fclose(f);

    char *msg = NULL;
    size_t msglen = 0;
    FILE *err = open_memstream(&msg, &msglen);
    CHECK(err != NULL, "open_memstream");
    char *argv[] = {"amtsbote-broker", "--config", s_path, NULL};
    brk_config_t cfg;
    int rc = brk_config_load(&cfg, 3, argv, err);
    fclose(err);

    if (rc != 0) {
        CHECK(rc == -1, "brk_config_load returned %d", rc);
        CHECK(msglen > 0, "refused without a message");
        CHECK(s_names_place(msg) || !strncmp(msg, "amtsbote-broker: ", 17),
              "the message names neither FILE:LINE:COL nor the setting: %s", msg);
    } else {
        CHECK(msglen == 0, "accepted with a message: %s", msg);
        if (!cfg.export_dir) {
            CHECK(cfg.nlisten > 0 && cfg.nlisten <= BRK_MAX_LISTEN, "%zu listeners", cfg.nlisten);
            for (size_t i = 0; i < cfg.nlisten; i++)
                CHECK(!strncmp(cfg.listen[i], "tcp://", 6) ||
                          !strncmp(cfg.listen[i], "ipc://", 6) ||
                          !strncmp(cfg.listen[i], "tls://", 6),
                      "listener '%s' accepted", cfg.listen[i]);
            CHECK(brk_log_level_parse(cfg.log_level) >= 0, "log level '%s'", cfg.log_level);
            CHECK(cfg.heartbeat_timeout_ms >= 2 * cfg.heartbeat_ms, "heartbeat timeout too short");
            CHECK(cfg.default_deadline_ms <= cfg.max_deadline_ms, "default deadline above max");
        }
        CHECK(cfg.nrequire_schema <= BRK_MAX_LISTEN, "%zu require_schema", cfg.nrequire_schema);
    }
    free(msg);
    brk_config_free(&cfg);
    brk_config_free(&cfg);
    return 0;
}
