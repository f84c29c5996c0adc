/* sse.c — server-sent events over libmicrohttpd: a chunked
 * text/event-stream response whose content reader pulls events from a
 * producer (fill) and hands them to MHD in whatever pieces MHD asks for.
 *
 * The reader runs on the connection's own thread (thread-per-connection
 * mode), so fill may block until the engine has produced something. When the
 * client is gone, fill returns -1 and the reader ends the response with an
 * error, which makes MHD close the connection; MHD then destroys the
 * response and free_cls runs (exactly once, in every case). */
#include <stdlib.h>
#include <string.h>

#include "http.h"

typedef struct sse {
    sse_fill_fn fill;
    void (*free_cls)(void *);
    void *cls;
    hbuf pending; /* bytes produced but not yet handed to MHD */
    size_t off;   /* of pending, already handed */
    int ended;    /* fill said the stream is over */
} sse;

static ssize_t reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    sse *e = cls;
    while (e->off == e->pending.len) {
        if (e->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        e->pending.len = 0;
        e->off = 0;
        int r = e->fill(e->cls, &e->pending);
        if (r < 0 || e->pending.oom) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (r == 0) e->ended = 1;
    }
    size_t n = e->pending.len - e->off;
    if (n > max) n = max;
    memcpy(buf, e->pending.p + e->off, n);
    e->off += n;
    return (ssize_t)n;
}

static void reader_free(void *cls)
{
    sse *e = cls;
    e->free_cls(e->cls);
    hbuf_free(&e->pending);
    free(e);
}

static void keep_cls(void *cls) { (void)cls; }

struct MHD_Response *sse_response(sse_fill_fn fill, void (*free_cls)(void *), void *cls)
{
    sse *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->fill = fill;
    e->free_cls = free_cls;
    e->cls = cls;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, reader, e, reader_free);
    if (!resp) {
        free(e);
        return NULL;
    }
    /* from here on reader_free owns e (and calls free_cls) */
    if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream") !=
            MHD_YES ||
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache") != MHD_YES ||
        MHD_add_response_header(resp, "X-Accel-Buffering", "no") != MHD_YES) {
        e->free_cls = keep_cls; /* the caller still owns cls */
        MHD_destroy_response(resp);
        return NULL;
    }
    return resp;
}

int sse_event(hbuf *out, json_t *json)
{
    char *text = json_dumps(json, JSON_COMPACT | JSON_REAL_PRECISION(9));
    if (!text) {
        out->oom = 1;
        return -1;
    }
    hbuf_str(out, "data: ");
    hbuf_str(out, text);
    hbuf_str(out, "\n\n");
    free(text);
    return out->oom ? -1 : 0;
}
