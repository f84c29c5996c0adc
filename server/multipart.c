/* multipart.c — multipart/form-data over a complete body (contract in
 * multipart.h).
 *
 * Every scan is bounded by the end of the buffer it scans: positions are
 * size_t offsets compared with the length before any byte is read, and no
 * length is computed by a subtraction that could wrap. Nothing is allocated:
 * strings are copied into the fixed fields of mp_part, data is a view. */
#include "multipart.h"

#include <string.h>
#include <strings.h>

/* ---- small helpers -------------------------------------------------------- */

static int is_ows(char c) { return c == ' ' || c == '\t'; }

/* RFC 7230 tchar: the characters of a token. */
static int is_tchar(char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* 1 if s[0..n) equals the NUL-terminated word, ignoring ASCII case. */
static int span_is(const char *s, size_t n, const char *word)
{
    return strlen(word) == n && strncasecmp(s, word, n) == 0;
}

/* A parameter "; name=value" of a header value, as spans of the value. */
typedef struct param {
    const char *name;
    size_t name_len;
    const char *value; /* the raw value: between the quotes when quoted */
    size_t value_len;
    int quoted;
} param;

/* Reads the next parameter of s[0..n) from *i (just after the media type
 * or the previous parameter). Returns 1 with *p filled, 0 at the end, or -1
 * when malformed (no '=', an empty name, an unterminated quoted-string,
 * garbage after a value). */
static int next_param(const char *s, size_t n, size_t *i, param *p)
{
    size_t k = *i;
    while (k < n && is_ows(s[k])) k++;
    if (k == n) return 0;
    if (s[k] != ';') return -1;
    k++;
    while (k < n && is_ows(s[k])) k++;
    if (k == n) return 0; /* a trailing ';' is tolerated */
    p->name = s + k;
    while (k < n && is_tchar(s[k]) && s[k] != '=') k++;
    p->name_len = (size_t)(s + k - p->name);
    while (k < n && is_ows(s[k])) k++;
    if (p->name_len == 0 || k == n || s[k] != '=') return -1;
    k++;
    while (k < n && is_ows(s[k])) k++;
    if (k < n && s[k] == '"') {
        k++;
        p->value = s + k;
        p->quoted = 1;
        while (k < n && s[k] != '"') {
            if (s[k] == '\\') k++; /* the escaped byte is skipped, whatever it is */
            if (k < n) k++;
        }
        if (k >= n) return -1;
        p->value_len = (size_t)(s + k - p->value);
        k++; /* the closing quote */
    } else {
        p->value = s + k;
        p->quoted = 0;
        while (k < n && s[k] != ';' && !is_ows(s[k])) k++;
        p->value_len = (size_t)(s + k - p->value);
    }
    while (k < n && is_ows(s[k])) k++;
    if (k < n && s[k] != ';') return -1;
    *i = k;
    return 1;
}

/* Copies a parameter's value into out (cap bytes, NUL-terminated), undoing
 * backslash escapes of a quoted-string. Returns its length, or -1 when it
 * does not fit or holds a NUL byte. */
static long param_copy(const param *p, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t k = 0; k < p->value_len; k++) {
        char c = p->value[k];
        if (p->quoted && c == '\\' && k + 1 < p->value_len) c = p->value[++k];
        if (c == 0 || o + 1 >= cap) return -1;
        out[o++] = c;
    }
    out[o] = 0;
    return (long)o;
}

/* ---- boundary ------------------------------------------------------------ */

int mp_boundary(const char *ct, char *out, pd_err *err)
{
    if (!ct)
        return pd_err_set(err, PD_EINVAL, "no Content-Type: send multipart/form-data with a "
                                          "boundary");
    size_t n = strlen(ct), i = 0;
    while (i < n && is_ows(ct[i])) i++;
    size_t t0 = i;
    while (i < n && ct[i] != ';' && !is_ows(ct[i])) i++;
    if (!span_is(ct + t0, i - t0, "multipart/form-data"))
        return pd_err_set(err, PD_EINVAL, "Content-Type is not multipart/form-data");
    param p;
    int r;
    long blen = -1;
    while ((r = next_param(ct, n, &i, &p)) == 1) {
        if (!span_is(p.name, p.name_len, "boundary")) continue;
        blen = param_copy(&p, out, MP_BOUNDARY_MAX + 1);
        if (blen < 1)
            return pd_err_set(err, PD_EINVAL, "the multipart boundary must be 1 to %d "
                                              "characters", MP_BOUNDARY_MAX);
        for (long k = 0; k < blen; k++)
            if (out[k] < 0x20 || out[k] > 0x7e)
                return pd_err_set(err, PD_EINVAL, "the multipart boundary holds a byte that is "
                                                  "not printable ASCII");
        if (out[blen - 1] == ' ')
            return pd_err_set(err, PD_EINVAL, "the multipart boundary ends with a space");
        break;
    }
    if (r < 0)
        return pd_err_set(err, PD_EINVAL, "the Content-Type parameters are malformed");
    if (blen < 0)
        return pd_err_set(err, PD_EINVAL, "the multipart/form-data Content-Type has no "
                                          "boundary parameter");
    return (int)blen;
}

/* ---- body ------------------------------------------------------------------ */

/* The parser's view of the body and its delimiter "--" BOUNDARY. */
typedef struct scan {
    const char *b;
    size_t len;
    char delim[MP_BOUNDARY_MAX + 3];
    size_t dlen;
} scan;

/* If a delimiter line starts at at (its "--"), returns 1 and sets *next to
 * the first byte after the line (after its CRLF, or after the closing "--")
 * and *close; 0 when the bytes there are not a complete delimiter line. */
static int delim_at(const scan *sc, size_t at, size_t *next, int *close)
{
    if (at > sc->len || sc->len - at < sc->dlen || memcmp(sc->b + at, sc->delim, sc->dlen) != 0)
        return 0;
    size_t k = at + sc->dlen;
    if (sc->len - k >= 2 && sc->b[k] == '-' && sc->b[k + 1] == '-') {
        *next = k + 2;
        *close = 1;
        return 1;
    }
    while (k < sc->len && is_ows(sc->b[k])) k++; /* transport padding */
    if (sc->len - k >= 2 && sc->b[k] == '\r' && sc->b[k + 1] == '\n') {
        *next = k + 2;
        *close = 0;
        return 1;
    }
    return 0;
}

/* Finds the first CRLF "--" BOUNDARY line at or after from. Returns 1 with
 * *data_end at its CR, or 0 when there is none. */
static int find_delim(const scan *sc, size_t from, size_t *data_end, size_t *next, int *close)
{
    while (from < sc->len) {
        const char *cr = memchr(sc->b + from, '\r', sc->len - from);
        if (!cr) return 0;
        size_t at = (size_t)(cr - sc->b);
        if (sc->len - at >= 2 && cr[1] == '\n' && delim_at(sc, at + 2, next, close)) {
            *data_end = at;
            return 1;
        }
        from = at + 1;
    }
    return 0;
}

/* Parses the Content-Disposition value v[0..n) into part. */
static int disposition(const char *v, size_t n, mp_part *part, size_t off, pd_err *err)
{
    size_t i = 0;
    while (i < n && is_tchar(v[i])) i++;
    if (!span_is(v, i, "form-data"))
        return pd_err_set(err, PD_EFORMAT, "byte %zu: the part's Content-Disposition is not "
                                           "form-data", off);
    param p;
    int r, have_name = 0;
    while ((r = next_param(v, n, &i, &p)) == 1) {
        if (span_is(p.name, p.name_len, "name")) {
            if (param_copy(&p, part->name, sizeof part->name) < 0)
                return pd_err_set(err, PD_ERANGE, "byte %zu: a part's name is longer than %d "
                                                  "bytes (or holds NUL)", off, MP_NAME_MAX);
            have_name = 1;
        } else if (span_is(p.name, p.name_len, "filename")) {
            if (param_copy(&p, part->filename, sizeof part->filename) < 0)
                return pd_err_set(err, PD_ERANGE, "byte %zu: a filename is longer than %d "
                                                  "bytes (or holds NUL)", off, MP_NAME_MAX);
            part->has_filename = 1;
        }
    }
    if (r < 0)
        return pd_err_set(err, PD_EFORMAT, "byte %zu: malformed Content-Disposition "
                                           "parameters", off);
    if (!have_name || !part->name[0])
        return pd_err_set(err, PD_EFORMAT, "byte %zu: a part's Content-Disposition has no "
                                           "name", off);
    return PD_OK;
}

/* Reads the header lines of a part starting at *pos up to and including the
 * empty line; *pos ends at the part's first data byte. */
static int part_headers(const scan *sc, size_t *pos, mp_part *part, pd_err *err)
{
    size_t k = *pos;
    int have_disp = 0;
    for (int lines = 0;; lines++) {
        size_t room = sc->len - k;
        size_t look = room < MP_HEADER_LINE_MAX + 2 ? room : MP_HEADER_LINE_MAX + 2;
        const char *line = sc->b + k, *end = NULL;
        for (size_t j = 0; j + 1 < look; j++)
            if (line[j] == '\r' && line[j + 1] == '\n') {
                end = line + j;
                break;
            }
        if (!end) {
            if (room >= MP_HEADER_LINE_MAX + 2)
                return pd_err_set(err, PD_ERANGE, "byte %zu: a part header line is longer "
                                                  "than %d bytes", k, MP_HEADER_LINE_MAX);
            return pd_err_set(err, PD_EFORMAT, "byte %zu: the body ends inside a part's "
                                               "headers", k);
        }
        size_t n = (size_t)(end - line);
        if (n == 0) { /* the empty line: data follows */
            *pos = k + 2;
            break;
        }
        if (lines == MP_HEADERS_MAX)
            return pd_err_set(err, PD_ERANGE, "byte %zu: a part has more than %d header lines",
                              k, MP_HEADERS_MAX);
        if (is_ows(line[0]))
            return pd_err_set(err, PD_EFORMAT, "byte %zu: folded header lines are not "
                                               "accepted", k);
        size_t c = 0;
        while (c < n && is_tchar(line[c])) c++;
        if (c == 0 || c == n || line[c] != ':')
            return pd_err_set(err, PD_EFORMAT, "byte %zu: a part header line is not "
                                               "'Name: value'", k);
        size_t v0 = c + 1, v1 = n;
        while (v0 < v1 && is_ows(line[v0])) v0++;
        while (v1 > v0 && is_ows(line[v1 - 1])) v1--;
        if (span_is(line, c, "Content-Disposition")) {
            if (have_disp)
                return pd_err_set(err, PD_EFORMAT, "byte %zu: a part has two "
                                                   "Content-Disposition headers", k);
            have_disp = 1;
            int rc = disposition(line + v0, v1 - v0, part, k, err);
            if (rc < 0) return rc;
        } else if (span_is(line, c, "Content-Type")) {
            if (v1 - v0 > MP_CTYPE_MAX || memchr(line + v0, 0, v1 - v0))
                return pd_err_set(err, PD_ERANGE, "byte %zu: a part's Content-Type is longer "
                                                  "than %d bytes (or holds NUL)", k,
                                  MP_CTYPE_MAX);
            memcpy(part->content_type, line + v0, v1 - v0);
            part->content_type[v1 - v0] = 0;
        }
        k += n + 2;
    }
    if (!have_disp)
        return pd_err_set(err, PD_EFORMAT, "byte %zu: a part has no Content-Disposition",
                          *pos);
    return PD_OK;
}

int mp_parse(const char *body, size_t len, const char *boundary, mp_part *parts, int cap,
             pd_err *err)
{
    scan sc = {.b = body, .len = body ? len : 0};
    size_t blen = boundary ? strlen(boundary) : 0;
    if (blen < 1 || blen > MP_BOUNDARY_MAX)
        return pd_err_set(err, PD_EFORMAT, "the multipart boundary must be 1 to %d characters",
                          MP_BOUNDARY_MAX);
    sc.delim[0] = sc.delim[1] = '-';
    memcpy(sc.delim + 2, boundary, blen);
    sc.dlen = blen + 2;

    /* the first delimiter: at the very start, or after a preamble */
    size_t pos, data_end;
    int close;
    if (!delim_at(&sc, 0, &pos, &close) && !find_delim(&sc, 0, &data_end, &pos, &close))
        return pd_err_set(err, PD_EFORMAT, "the body holds no multipart delimiter "
                                           "'--%s' line", boundary);
    int n = 0;
    while (!close) {
        if (n >= cap)
            return pd_err_set(err, PD_ERANGE, "byte %zu: more than %d parts", pos, cap);
        mp_part *part = &parts[n];
        memset(part, 0, sizeof *part);
        int rc = part_headers(&sc, &pos, part, err);
        if (rc < 0) return rc;
        size_t next;
        if (!find_delim(&sc, pos, &data_end, &next, &close))
            return pd_err_set(err, PD_EFORMAT, "byte %zu: the body ends inside part %d ('%s') "
                                               "without the closing '--%s--' line", pos, n + 1,
                              part->name, boundary);
        part->data = sc.b + pos;
        part->len = data_end - pos;
        pos = next;
        n++;
    }
    return n;
}

const mp_part *mp_find(const mp_part *parts, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(parts[i].name, name)) return &parts[i];
    return NULL;
}
