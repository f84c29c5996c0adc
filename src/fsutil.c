/* fsutil.c — whole-file reads, read-only mappings and atomic writes. */
#include "prefixd/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static int fsync_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy) return -1;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int pd_write_file_atomic_parts(const char *path, const void *const *parts,
                               const size_t *lens, int n_parts, pd_err *err)
{
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    if (!tmp) return pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);
    /* dot-prefixed temp name in the same directory: watchers skip it */
    const char *slash = strrchr(path, '/');
    size_t dirlen = slash ? (size_t)(slash - path) + 1 : 0;
    snprintf(tmp, plen + 32, "%.*s.%s.tmp.XXXXXX", (int)dirlen, path, path + dirlen);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        return pd_err_set(err, PD_EIO, "%s: cannot create temp file: %s", path, strerror(e));
    }
    for (int i = 0; i < n_parts; i++) {
        if (lens[i] && write_all(fd, parts[i], lens[i]) < 0) goto fail;
    }
    if (fchmod(fd, 0644) < 0 || fsync(fd) < 0) goto fail;
    if (close(fd) < 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) < 0) goto fail;
    free(tmp);
    if (fsync_dir_of(path) < 0)
        return pd_err_set(err, PD_EIO, "%s: fsync of directory failed: %s", path, strerror(errno));
    return PD_OK;
fail: {
        int e = errno;
        if (fd >= 0) close(fd);
        unlink(tmp);
        free(tmp);
        return pd_err_set(err, PD_EIO, "%s: write failed: %s", path, strerror(e));
    }
}

int pd_write_file_atomic(const char *path, const void *data, size_t len, pd_err *err)
{
    const void *parts[1] = {data};
    size_t lens[1] = {len};
    return pd_write_file_atomic_parts(path, parts, lens, 1, err);
}

int pd_map_file(const char *path, void **addr, size_t *size, pd_err *err)
{
    *addr = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return pd_err_set(err, PD_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return pd_err_set(err, PD_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return pd_err_set(err, PD_EIO, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return PD_OK;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) return pd_err_set(err, PD_EIO, "%s: cannot mmap: %s", path, strerror(e));
    *addr = p;
    *size = (size_t)st.st_size;
    return PD_OK;
}

void pd_unmap(void *addr, size_t size)
{
    if (addr && size) munmap(addr, size);
}

int pd_read_file(const char *path, size_t max_size, char **data, size_t *size, pd_err *err)
{
    *data = NULL;
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return pd_err_set(err, PD_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return pd_err_set(err, PD_EIO, "%s: not a readable regular file", path);
    }
    if ((uint64_t)st.st_size > max_size) {
        fclose(f);
        return pd_err_set(err, PD_ERANGE, "%s: %lld bytes, over the limit of %zu", path,
                          (long long)st.st_size, max_size);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        return pd_err_set(err, PD_ENOMEM, "%s: out of memory for %zu bytes", path, n);
    }
    size_t got = n ? fread(buf, 1, n, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (bad || got != n) {
        free(buf);
        return pd_err_set(err, PD_EIO, "%s: read failed", path);
    }
    buf[n] = 0;
    *data = buf;
    *size = n;
    return PD_OK;
}
