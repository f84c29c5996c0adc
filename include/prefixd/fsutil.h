/* prefixd/fsutil.h — file helpers: whole-file reads, read-only mappings and
 * atomic writes (temp file in the same directory, fsync, rename, fsync of
 * the directory), so a reader never sees half a file. */
#ifndef PREFIXD_FSUTIL_H
#define PREFIXD_FSUTIL_H

#include <stddef.h>

#include "prefixd/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Writes the n_parts buffers, in order, to path atomically. Returns PD_OK or
 * PD_EIO with err naming the path and the failing call. */
int pd_write_file_atomic_parts(const char *path, const void *const *parts,
                               const size_t *lens, int n_parts, pd_err *err);
int pd_write_file_atomic(const char *path, const void *data, size_t len,
                         pd_err *err);

/* Maps path read-only. Returns PD_OK with *addr (NULL for an empty file) and
 * *size, or PD_EIO. Release with pd_unmap. */
int pd_map_file(const char *path, void **addr, size_t *size, pd_err *err);
void pd_unmap(void *addr, size_t size);

/* Reads the whole file into a new NUL-terminated buffer (*size excludes the
 * NUL; free() it). Refuses files larger than max_size with PD_ERANGE. */
int pd_read_file(const char *path, size_t max_size, char **data, size_t *size,
                 pd_err *err);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_FSUTIL_H */
