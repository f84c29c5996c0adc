/* utf8.h — the UTF-8 rules the completions API needs for text it hands to
 * JSON: cleaning arbitrary bytes into valid UTF-8 the way every client sees
 * it (streamed or not), and counting code points for text offsets. */
#ifndef PREFIXD_SERVER_UTF8_H
#define PREFIXD_SERVER_UTF8_H

#include <stddef.h>

#include "hbuf.h"

/* Appends src[0..n) to out (borrowed) as valid UTF-8: each maximal
 * ill-formed subpart becomes U+FFFD. With partial, an incomplete (but so far
 * valid) sequence at the very end is held back. Returns the bytes of src
 * consumed (n unless something was held back). Allocation failure shows as
 * out->oom. */
size_t utf8_clean(hbuf *out, const unsigned char *src, size_t n, int partial);

/* The code points in p[0..n): the bytes that are not continuation bytes. */
int utf8_chars(const char *p, size_t n);

#endif
