/* utf8.c — UTF-8 cleaning and counting (contract in utf8.h). */
#include "utf8.h"

size_t utf8_clean(hbuf *out, const unsigned char *src, size_t n, int partial)
{
    static const char fffd[] = "\xEF\xBF\xBD";
    size_t i = 0, run = 0; /* run: start of valid bytes not yet copied */
    while (i < n) {
        unsigned char b = src[i];
        int need;
        unsigned char lo = 0x80, hi = 0xBF;
        if (b < 0x80) {
            i++;
            continue;
        } else if (b >= 0xC2 && b <= 0xDF) {
            need = 1;
        } else if (b >= 0xE0 && b <= 0xEF) {
            need = 2;
            if (b == 0xE0) lo = 0xA0;
            if (b == 0xED) hi = 0x9F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            need = 3;
            if (b == 0xF0) lo = 0x90;
            if (b == 0xF4) hi = 0x8F;
        } else {
            need = -1;
        }
        size_t j = 1;
        int bad = need < 0;
        for (; !bad && j <= (size_t)need; j++) {
            if (i + j >= n) {
                if (partial) {
                    hbuf_add(out, src + run, i - run);
                    return i;
                }
                bad = 1;
                break;
            }
            unsigned char cb = src[i + j];
            if (cb < (j == 1 ? lo : 0x80) || cb > (j == 1 ? hi : 0xBF)) {
                bad = 1;
                break;
            }
        }
        if (!bad) {
            i += (size_t)need + 1;
            continue;
        }
        hbuf_add(out, src + run, i - run);
        hbuf_add(out, fffd, 3);
        i += j; /* the lead and the continuation bytes that fitted */
        run = i;
    }
    hbuf_add(out, src + run, n - run);
    return n;
}

int utf8_chars(const char *p, size_t n)
{
    int c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)p[i] & 0xC0) != 0x80;
    return c;
}
