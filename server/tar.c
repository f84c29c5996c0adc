/* tar.c — the ustar writer (contract in tar.h). Header layout (POSIX
 * pax/ustar): name 0..99, mode 100, uid 108, gid 116, size 124 (11 octal
 * digits), mtime 136, chksum 148 (8 bytes: the unsigned byte sum of the
 * header with this field as spaces, 6 octal digits, NUL, space), typeflag
 * 156 ('0'), magic 257 "ustar\0", version 263 "00". */
#include "tar.h"

#include <string.h>

#define BLOCK 512

/* v as width - 1 zero-padded octal digits and a NUL (v must fit). */
static void octal(unsigned char *dst, int width, unsigned long long v)
{
    dst[width - 1] = 0;
    for (int i = width - 2; i >= 0; i--, v >>= 3) dst[i] = (unsigned char)('0' + (v & 7));
}

int tar_add(hbuf *out, const char *name, const void *data, size_t size, time_t mtime)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 99 || strstr(name, "..") || size > 077777777777ull) return -1;
    unsigned char h[BLOCK];
    memset(h, 0, sizeof h);
    memcpy(h, name, n);
    const unsigned long long max = 077777777777ull;
    octal(h + 100, 8, 0644);
    octal(h + 108, 8, 0);
    octal(h + 116, 8, 0);
    octal(h + 124, 12, size);
    octal(h + 136, 12, mtime <= 0 ? 0 : (unsigned long long)mtime > max ? max
                                                                         : (unsigned long long)mtime);
    h[156] = '0';
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    memcpy(h + 265, "root", 4);
    memcpy(h + 297, "root", 4);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < BLOCK; i++) sum += h[i];
    octal(h + 148, 7, sum); /* 6 digits and a NUL; byte 155 stays ' ' */
    static const unsigned char zeros[BLOCK];
    size_t pad = (BLOCK - size % BLOCK) % BLOCK;
    if (hbuf_add(out, h, sizeof h) < 0 || (size && hbuf_add(out, data, size) < 0) ||
        (pad && hbuf_add(out, zeros, pad) < 0))
        return -1;
    return 0;
}

int tar_end(hbuf *out)
{
    static const unsigned char zeros[2 * BLOCK];
    return hbuf_add(out, zeros, sizeof zeros);
}
