/*
 * faultfs.c - an LD_PRELOAD shim that makes fsync/fdatasync and write/pwrite/pwrite64/writev on
 * files under one directory fail, switched at run time: the store's fault test runs the real
 * broker with it and turns the fault on and off while the broker runs.
 *
 *   FAULTFS_DIR=/path/to/data FAULTFS_CONTROL=/path/to/control LD_PRELOAD=libfaultfs.so broker ...
 *
 * The control file is read again at each call on a file under FAULTFS_DIR (not at calls on other
 * descriptors: sockets, the log), so writing it switches the fault for a running process. A
 * missing or empty file: no fault. Otherwise one line of words:
 *
 *   fsync            fsync and fdatasync fail
 *   write            write, pwrite, pwrite64, writev and pwritev fail (nothing is written)
 *   all              both
 *   errno=ENOSPC     the error (EIO when not given; ENOSPC, EROFS, EDQUOT also known)
 *   after=N          the first N matching calls after the file changed still succeed
 *   delay=MS         the chosen calls do not fail: each waits MS milliseconds, then succeeds
 *                    (a slow disk)
 *
 * e.g. "fsync after=3" or "all errno=EIO". A failed fsync leaves what was written in the page
 * cache, as the kernel does after a real write-back error; a failed write writes nothing.
 *
 * FAULTFS_LOG (optional): a file that gets one line per injected failure ("fdatasync /path EIO").
 * Whether a descriptor is under FAULTFS_DIR is decided from /proc/self/fd once per open file
 * (cached by device and inode).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_FD 65536

enum { F_FSYNC = 1, F_WRITE = 2 };

typedef struct {
    dev_t dev;
    ino_t ino;
    signed char under; /* -1 unknown, 0 no, 1 yes */
} s_fdinfo_t;

static pthread_mutex_t s_mu = PTHREAD_MUTEX_INITIALIZER;
static s_fdinfo_t s_fds[MAX_FD];
static char s_dir[PATH_MAX];
static size_t s_dir_len;
static char s_last[256]; /* the control file's content at the last look */
static long s_seen;      /* matching calls since the content changed */

static ssize_t (*s_write)(int, const void *, size_t);
static ssize_t (*s_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*s_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*s_writev)(int, const struct iovec *, int);
static ssize_t (*s_pwritev)(int, const struct iovec *, int, off_t);
static int (*s_fsync)(int);
static int (*s_fdatasync)(int);

static void
s_init(void)
{
    if (s_write)
        return;
    s_pwrite = dlsym(RTLD_NEXT, "pwrite");
    s_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    s_writev = dlsym(RTLD_NEXT, "writev");
    s_pwritev = dlsym(RTLD_NEXT, "pwritev");
    s_fsync = dlsym(RTLD_NEXT, "fsync");
    s_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    s_write = dlsym(RTLD_NEXT, "write");
}

/* The directory, resolved once it exists (the broker may create it after the start). */
static int
s_dir_known(void)
{
    if (s_dir_len)
        return 1;
    const char *d = getenv("FAULTFS_DIR");
    if (!d || !*d)
        return 0;
    if (!realpath(d, s_dir))
        return 0;
    s_dir_len = strlen(s_dir);
    return 1;
}

/* Whether fd is a file under FAULTFS_DIR (the directory itself included). Called locked. */
static int
s_under(int fd)
{
    if (fd < 0 || fd >= MAX_FD || !s_dir_known())
        return 0;
    struct stat st;
    if (fstat(fd, &st) != 0 || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)))
        return 0;
    s_fdinfo_t *i = &s_fds[fd];
    if (i->under >= 0 && i->dev == st.st_dev && i->ino == st.st_ino && i->dev)
        return i->under;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0)
        return 0;
    path[n] = '\0';
    i->dev = st.st_dev;
    i->ino = st.st_ino;
    i->under = (size_t)n >= s_dir_len && strncmp(path, s_dir, s_dir_len) == 0 &&
               (path[s_dir_len] == '/' || path[s_dir_len] == '\0');
    return i->under;
}

/* Reads the control file: which calls fail (F_*), with which errno, after how many that still
 * succeed. Called locked. */
static int
s_control(int *err, long *after, long *delay_ms)
{
    const char *p = getenv("FAULTFS_CONTROL");
    char buf[256] = "";
    if (p) {
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, buf, sizeof buf - 1);
            buf[n > 0 ? n : 0] = '\0';
            close(fd);
        }
    }
    if (strcmp(buf, s_last) != 0) {
        snprintf(s_last, sizeof s_last, "%s", buf);
        s_seen = 0;
    }
    int what = 0;
    *after = 0;
    *delay_ms = 0;
    *err = EIO;
    char *save = NULL;
    for (char *w = strtok_r(buf, " \t\r\n", &save); w; w = strtok_r(NULL, " \t\r\n", &save)) {
        if (strcmp(w, "fsync") == 0)
            what |= F_FSYNC;
        else if (strcmp(w, "write") == 0)
            what |= F_WRITE;
        else if (strcmp(w, "all") == 0)
            what |= F_FSYNC | F_WRITE;
        else if (strncmp(w, "after=", 6) == 0)
            *after = strtol(w + 6, NULL, 10);
        else if (strncmp(w, "delay=", 6) == 0)
            *delay_ms = strtol(w + 6, NULL, 10);
        else if (strcmp(w, "errno=ENOSPC") == 0)
            *err = ENOSPC;
        else if (strcmp(w, "errno=EROFS") == 0)
            *err = EROFS;
        else if (strcmp(w, "errno=EDQUOT") == 0)
            *err = EDQUOT;
    }
    return what;
}

/* 0: let the call through; otherwise the errno it fails with. */
static int
s_fault(int fd, int kind, const char *call)
{
    int saved = errno;
    pthread_mutex_lock(&s_mu);
    int err = 0;
    long delay_ms = 0;
    if (s_under(fd)) {
        int e;
        long after;
        int what = s_control(&e, &after, &delay_ms);
        if (what & kind) {
            s_seen++;
            if (s_seen > after && delay_ms <= 0)
                err = e;
        } else {
            delay_ms = 0;
        }
        if (err) {
            const char *log = getenv("FAULTFS_LOG");
            if (log) {
                char link[64], path[PATH_MAX] = "?", line[PATH_MAX + 64];
                snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
                ssize_t n = readlink(link, path, sizeof path - 1);
                if (n >= 0)
                    path[n] = '\0';
                int lfd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
                if (lfd >= 0) {
                    int len = snprintf(line, sizeof line, "%s %s %s\n", call, path,
                                       err == EIO ? "EIO" : strerror(err));
                    if (s_write(lfd, line, (size_t)len) < 0)
                        (void)0;
                    close(lfd);
                }
            }
        }
    }
    pthread_mutex_unlock(&s_mu);
    if (delay_ms > 0) { /* outside the lock: other descriptors are not held up */
        struct timespec ts = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    errno = saved;
    return err;
}

#define S_FAIL(fd, kind, name)                                                                     \
    do {                                                                                           \
        s_init();                                                                                  \
        int e_ = s_fault(fd, kind, name);                                                          \
        if (e_) {                                                                                  \
            errno = e_;                                                                            \
            return -1;                                                                             \
        }                                                                                          \
    } while (0)

ssize_t
write(int fd, const void *buf, size_t n)
{
    S_FAIL(fd, F_WRITE, "write");
    return s_write(fd, buf, n);
}

ssize_t
pwrite(int fd, const void *buf, size_t n, off_t off)
{
    S_FAIL(fd, F_WRITE, "pwrite");
    return s_pwrite(fd, buf, n, off);
}

ssize_t
pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
    S_FAIL(fd, F_WRITE, "pwrite64");
    return s_pwrite64(fd, buf, n, off);
}

ssize_t
writev(int fd, const struct iovec *iov, int cnt)
{
    S_FAIL(fd, F_WRITE, "writev");
    return s_writev(fd, iov, cnt);
}

ssize_t
pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    S_FAIL(fd, F_WRITE, "pwritev");
    return s_pwritev(fd, iov, cnt, off);
}

int
fsync(int fd)
{
    S_FAIL(fd, F_FSYNC, "fsync");
    return s_fsync(fd);
}

int
fdatasync(int fd)
{
    S_FAIL(fd, F_FSYNC, "fdatasync");
    return s_fdatasync(fd);
}
