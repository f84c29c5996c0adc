/* fuzz_multipart.c — multipart/form-data parsing (server/multipart.c).
 *
 * Input: a Content-Type header value up to the first '\n', then the body.
 * mp_boundary reads the boundary from the header; when it finds none the
 * body is split at the fixed boundary "fuzz", so the body parser is fuzzed
 * either way. Every part must lie inside the body, with NUL-terminated
 * names within their limits, and mp_find must return the first part of a
 * name. */
#include <string.h>

#include "multipart.h"
#include "util.h"

#define CAP 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    const char *in = (const char *)data;
    const char *nl = memchr(in, '\n', size);
    size_t hlen = nl ? (size_t)(nl - in) : size;
    const char *body = nl ? nl + 1 : in + size;
    size_t blen = nl ? size - hlen - 1 : 0;
    char header[512];
    if (hlen >= sizeof header) hlen = sizeof header - 1;
    memcpy(header, in, hlen);
    header[hlen] = 0;

    char boundary[MP_BOUNDARY_MAX + 1];
    pd_err err;
    int bl = mp_boundary(header, boundary, &err);
    if (bl < 0) {
        FUZZ_CHECK(err.code < 0 && err.msg[0]);
        strcpy(boundary, "fuzz");
    } else {
        FUZZ_CHECK(bl >= 1 && bl <= MP_BOUNDARY_MAX && (size_t)bl == strlen(boundary));
    }
    mp_part parts[CAP];
    int n = mp_parse(body, blen, boundary, parts, CAP, &err);
    if (n < 0) {
        FUZZ_CHECK(err.code < 0 && err.msg[0]);
        return 0;
    }
    FUZZ_CHECK(n <= CAP);
    for (int i = 0; i < n; i++) {
        const mp_part *p = &parts[i];
        FUZZ_CHECK(p->data >= body && p->len <= blen && (size_t)(p->data - body) <= blen - p->len);
        FUZZ_CHECK(strlen(p->name) <= MP_NAME_MAX && strlen(p->filename) <= MP_NAME_MAX &&
                   strlen(p->content_type) <= MP_CTYPE_MAX);
        FUZZ_CHECK(p->has_filename || !p->filename[0]);
        const mp_part *f = mp_find(parts, n, p->name);
        FUZZ_CHECK(f && f <= p && !strcmp(f->name, p->name));
    }
    return 0;
}
