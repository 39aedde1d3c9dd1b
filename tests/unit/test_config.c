/*
 * Unit tests for broker/config.c: defaults, flags over file, and an error that names the flag,
 * file, line and column for every bad input.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

static char errbuf[4096];

/* Loads with argv (NULL-terminated) and keeps what was written to the error stream. */
static int
load(brk_config_t *cfg, const char **args)
{
    char *argv[32];
    int argc = 0;
    argv[argc++] = "amtsbote-broker";
    for (; *args; args++)
        argv[argc++] = (char *)*args;
    char *buf = NULL;
    size_t len = 0;
    FILE *err = open_memstream(&buf, &len);
    int rc = brk_config_load(cfg, argc, argv, err);
    fclose(err);
    snprintf(errbuf, sizeof errbuf, "%s", buf ? buf : "");
    free(buf);
    return rc;
}

static const char *
write_file(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/amtsbote-config-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void
test_defaults_and_flags(void **state)
{
    (void)state;
    brk_config_t c;
    const char *a[] = {"--listen",
                       "tcp://127.0.0.1:7450",
                       "--insecure-plain-identities",
                       "--heartbeat-ms=500",
                       "--listen",
                       "ipc:///tmp/x.sock",
                       NULL};
    assert_int_equal(load(&c, a), 0);
    assert_int_equal(c.nlisten, 2);
    assert_string_equal(c.listen[1], "ipc:///tmp/x.sock");
    assert_int_equal(c.insecure_plain_identities, 1);
    assert_int_equal(c.heartbeat_ms, 500);
    assert_int_equal(c.default_deadline_ms, 30000);
    assert_string_equal(c.log_level, "info");
    brk_config_free(&c);
    brk_config_free(&c); /* safe twice */
}

static void
test_file_then_flags(void **state)
{
    (void)state;
    const char *path = write_file("# broker of the Land\n"
                                  "listen:\n  - tcp://127.0.0.1:7450\n  - ipc:///tmp/b.sock\n"
                                  "heartbeat_ms: 2000\nheartbeat_timeout_ms: 9000\n"
                                  "log_level: debug\n"
                                  "require_schema:\n  - meldewesen.*\n");
    brk_config_t c;
    const char *a[] = {
        "--config", path, "--heartbeat-ms", "1500", "--require-schema", "land.by.v1.Grundbuch",
        NULL};
    assert_int_equal(load(&c, a), 0);
    assert_int_equal(c.nlisten, 2);
    /* list settings add up: the file's pattern and the flag's */
    assert_int_equal(c.nrequire_schema, 2);
    assert_string_equal(c.require_schema[0], "meldewesen.*");
    assert_string_equal(c.require_schema[1], "land.by.v1.Grundbuch");
    assert_int_equal(c.heartbeat_ms, 1500); /* the flag wins */
    assert_int_equal(c.heartbeat_timeout_ms, 9000);
    assert_string_equal(c.log_level, "debug");
    brk_config_free(&c);
    /* --listen on the command line replaces the file's listeners */
    const char *b[] = {"--config", path, "--listen", "tcp://127.0.0.1:9", NULL};
    assert_int_equal(load(&c, b), 0);
    assert_int_equal(c.nlisten, 1);
    brk_config_free(&c);
    unlink(path);
}

static void
expect_error(const char **args, const char *needle)
{
    brk_config_t c;
    assert_int_equal(load(&c, args), -1);
    if (!strstr(errbuf, needle))
        fail_msg("error '%s' does not contain '%s'", errbuf, needle);
    brk_config_free(&c);
}

static void
test_bad_flags(void **state)
{
    (void)state;
    const char *a1[] = {NULL};
    expect_error(a1, "no listener");
    const char *a2[] = {"--listen", "tcp://127.0.0.1:1", "--frobnicate", NULL};
    expect_error(a2, "unknown option '--frobnicate'");
    const char *a3[] = {"--listen", "tcp://127.0.0.1:1", "--heartbeat-ms", "5", NULL};
    expect_error(a3, "between 50 and");
    const char *a4[] = {"--listen", "tcp://127.0.0.1:1", "--heartbeat-ms", "x1", NULL};
    expect_error(a4, "whole number");
    const char *a5[] = {"--listen", "tcp://192.0.2.1:7450", NULL};
    expect_error(a5, "--insecure-remote-plain");
    const char *a6[] = {"--listen", "http://127.0.0.1:1", NULL};
    expect_error(a6, "not a URI");
    const char *a7[] = {"--listen", "tcp://127.0.0.1", NULL};
    expect_error(a7, "no port");
    const char *a8[] = {"--listen", "tcp://127.0.0.1:1", "--log-level", "loud", NULL};
    expect_error(a8, "log level 'loud'");
    const char *a9[] = {"--listen", NULL};
    expect_error(a9, "needs a value");
    const char *a10[] = {"--listen", "tcp://127.0.0.1:1", "--heartbeat-ms", "2000", NULL};
    expect_error(a10, "at least twice");
    const char *a11[] = {"--config", "/nonexistent/amtsbote.yaml", NULL};
    expect_error(a11, "/nonexistent/amtsbote.yaml: cannot open");
    const char *a12[] = {"--listen", "tcp://127.0.0.1:1", "stray", NULL};
    expect_error(a12, "unexpected argument 'stray'");
}

static void
test_bad_files(void **state)
{
    (void)state;
    struct {
        const char *text, *needle;
    } cases[] = {
        {"listen: tcp://127.0.0.1:1\nheartbeat_ms: \"abc\n", ":3:1: found unexpected end"},
        {"listen: tcp://127.0.0.1:1\nnosuch: 1\n", ":2:1: unknown setting 'nosuch'"},
        {"listen: tcp://127.0.0.1:1\nheartbeat_ms: fast\n", ":2:15: setting 'heartbeat_ms'"},
        {"listen: tcp://127.0.0.1:1\nlog: {a: 1}\n", "unknown setting 'log'"},
        {"- a\n- b\n", "mapping of setting"},
        {"listen: tcp://127.0.0.1:1\nheartbeat_ms: [1, 2]\n",
         "only 'listen' and 'require_schema' take a list"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = write_file(cases[i].text);
        const char *a[] = {"--config", path, NULL};
        expect_error(a, cases[i].needle);
        assert_non_null(strstr(errbuf, path));
        unlink(path);
    }
}

static void
test_help(void **state)
{
    (void)state;
    brk_config_t c;
    fflush(stdout);
    FILE *saved = stdout;
    char *buf = NULL;
    size_t len = 0;
    stdout = open_memstream(&buf, &len);
    const char *a[] = {"--help", NULL};
    int rc = load(&c, a);
    fclose(stdout);
    stdout = saved;
    assert_int_equal(rc, 1);
    assert_non_null(strstr(buf, "--insecure-plain-identities"));
    assert_non_null(strstr(buf, "--heartbeat-timeout-ms"));
    free(buf);
    brk_config_free(&c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_flags),
        cmocka_unit_test(test_file_then_flags),
        cmocka_unit_test(test_bad_flags),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_help),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
