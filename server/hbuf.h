/* hbuf.h — a growable byte buffer for building response bodies and text.
 * Pure memory: no I/O, no server state, so code outside the HTTP daemon (the
 * request parsers and their fuzz targets) can use it too. */
#ifndef PREFIXD_SERVER_HBUF_H
#define PREFIXD_SERVER_HBUF_H

#include <stddef.h>

/* A malloc'd byte buffer, always NUL-terminated when p != NULL. A failed
 * allocation sets oom and makes every later append a no-op, so a caller may
 * append freely and check oom once. A zeroed hbuf is empty and valid; the
 * bytes are owned by the hbuf until hbuf_free (or a caller that takes p
 * over). One thread at a time. */
typedef struct hbuf {
    char *p;
    size_t len, cap;
    int oom;
} hbuf;

/* Makes room for extra more bytes (and the NUL) without changing the
 * contents. 0, or -1 (oom set). */
int hbuf_reserve(hbuf *b, size_t extra);
int hbuf_add(hbuf *b, const void *data, size_t n); /* 0, or -1 (oom set) */
int hbuf_str(hbuf *b, const char *s);
int hbuf_printf(hbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Frees the bytes and zeroes b (an empty buffer again). */
void hbuf_free(hbuf *b);

#endif
