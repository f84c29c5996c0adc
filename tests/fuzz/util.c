/* util.c — shared helpers of the fuzz targets (contract in util.h). */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "prefixd/log.h"

void fuzz_quiet(void) { pd_log_set_level(PD_LOG_OFF); }

_Noreturn void fuzz_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

const char *fuzz_file(const void *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("prefixd-fuzz", MFD_CLOEXEC);
        if (fd < 0) fuzz_fail("memfd_create: %s", strerror(errno));
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) < 0) fuzz_fail("ftruncate: %s", strerror(errno));
    const char *p = data;
    size_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(fd, p + done, size - done, (off_t)done);
        if (n <= 0) fuzz_fail("pwrite: %s", strerror(errno));
        done += (size_t)n;
    }
    return path;
}

static char tmpdir[64];
static pid_t tmpdir_owner; /* forked children share the directory, only its creator removes it */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void rm_tmpdir(void)
{
    if (getpid() == tmpdir_owner) nftw(tmpdir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

const char *fuzz_tmpdir(void)
{
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/prefixd-fuzz-XXXXXX");
        if (!mkdtemp(tmpdir)) fuzz_fail("mkdtemp: %s", strerror(errno));
        tmpdir_owner = getpid();
        atexit(rm_tmpdir);
    }
    return tmpdir;
}

void fuzz_write(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f) fuzz_fail("%s: %s", path, strerror(errno));
    if (size && fwrite(data, 1, size, f) != size) fuzz_fail("%s: short write", path);
    if (fclose(f) != 0) fuzz_fail("%s: %s", path, strerror(errno));
}

const pd_model *fuzz_model(void)
{
    static pd_model *m;
    if (!m) {
        fuzz_quiet();
        pd_model_params mp = pd_model_default_params();
        mp.path = FUZZ_MODEL;
        mp.tokenizer_path = FUZZ_TOKENIZER;
        pd_err err;
        if (pd_model_load(&mp, &m, &err) < 0) fuzz_fail("%s (run from the repository root)", err.msg);
    }
    return m;
}

const pd_tokenizer *fuzz_tokenizer(void) { return fuzz_model()->tok; }
