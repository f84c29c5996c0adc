/* multipart.h — a small multipart/form-data parser (RFC 7578 over RFC 2046)
 * for POST /v1/files, working on a complete request body held in memory.
 *
 *     char boundary[MP_BOUNDARY_MAX + 1];
 *     pd_err err;
 *     if (mp_boundary(content_type_header, boundary, &err) < 0) -> 400 err.msg
 *     mp_part parts[8];
 *     int n = mp_parse(body, body_len, boundary, parts, 8, &err);
 *     if (n < 0) -> 400 err.msg
 *     const mp_part *f = mp_find(parts, n, "file");
 *     ... f->data[0 .. f->len) are the file's bytes (borrowed from body) ...
 *
 * The parser is pure (no allocation, no I/O, no global state) and checks
 * every length against the bytes it has: any input gives either parts or a
 * status with a message, never a read outside the body. It is what OpenAI's
 * clients, curl -F and browsers send: CRLF line ends, a delimiter line
 * "--BOUNDARY" (optionally followed by spaces or tabs) before each part, the
 * close delimiter "--BOUNDARY--" after the last; a preamble before the first
 * delimiter and an epilogue after the close one are ignored. Each part has
 * header lines ("Name: value", names case-insensitive) ended by an empty
 * line; Content-Disposition must be form-data with a name, and may carry a
 * filename (token or quoted-string; backslash escapes are undone, %XX is left
 * as is; filename* is ignored). Content-Type is kept as given; other headers
 * are skipped. Bare-LF line ends are refused (the delimiter is CRLF "--"
 * BOUNDARY, as RFC 2046 defines it). */
#ifndef PREFIXD_SERVER_MULTIPART_H
#define PREFIXD_SERVER_MULTIPART_H

#include <stddef.h>

#include "prefixd/common.h"

#define MP_BOUNDARY_MAX 70   /* RFC 2046: 1 to 70 characters */
#define MP_NAME_MAX 255      /* bytes of a field name or filename */
#define MP_CTYPE_MAX 127     /* bytes of a part's Content-Type */
#define MP_HEADER_LINE_MAX 1024 /* bytes of one part header line */
#define MP_HEADERS_MAX 16    /* header lines per part */

/* One part. The strings are NUL-terminated copies; data points into the
 * body given to mp_parse (borrowed: valid as long as the body is). */
typedef struct mp_part {
    char name[MP_NAME_MAX + 1];
    char filename[MP_NAME_MAX + 1];     /* "" when has_filename is 0 */
    int has_filename;
    char content_type[MP_CTYPE_MAX + 1]; /* "" when the part has none */
    const char *data;
    size_t len;
} mp_part;

/* Reads the boundary parameter of a Content-Type header value (token or
 * quoted-string; the media type must be multipart/form-data) into out
 * (MP_BOUNDARY_MAX + 1 bytes). Returns its length, or PD_EINVAL with err
 * saying what is wrong (not multipart/form-data, no boundary, bad
 * boundary). content_type may be NULL (then PD_EINVAL). */
int mp_boundary(const char *content_type, char *out, pd_err *err);

/* Splits body (len bytes; may be NULL when len is 0) at boundary (as
 * mp_boundary returns it) into at most cap parts. Returns the number of
 * parts (>= 0), or PD_EFORMAT (malformed or truncated body, with the byte
 * offset in err) or PD_ERANGE (more than cap parts, a header line longer
 * than MP_HEADER_LINE_MAX, too many header lines, a name or content type
 * too long). parts[0 .. returned) are filled; on failure their contents are
 * unspecified. */
int mp_parse(const char *body, size_t len, const char *boundary, mp_part *parts, int cap,
             pd_err *err);

/* The first part named name among parts[0 .. n), or NULL (borrowed). */
const mp_part *mp_find(const mp_part *parts, int n, const char *name);

#endif
