/* tar.h — a minimal POSIX ustar writer for small archives built in memory
 * (the PEFT export of GET /v1/prefixes/{task}?format=peft).
 *
 *     hbuf b = {0};
 *     tar_add(&b, "adapter_config.json", text, n, time(NULL));
 *     tar_end(&b);
 *     if (b.oom) ... ; use b.p, b.len; hbuf_free(&b);
 *
 * Regular files only, mode 0644, owner 0:0; names of 1..99 bytes without
 * "..". Pure memory, one thread at a time. */
#ifndef PREFIXD_SERVER_TAR_H
#define PREFIXD_SERVER_TAR_H

#include <stddef.h>
#include <time.h>

#include "hbuf.h"

/* Appends one file (header, data, padding to 512 bytes). 0, or -1 for a
 * bad name or size, or when out ran out of memory (out->oom). */
int tar_add(hbuf *out, const char *name, const void *data, size_t size, time_t mtime);

/* Appends the end-of-archive marker (two zero blocks). 0, or -1 (oom). */
int tar_end(hbuf *out);

#endif
