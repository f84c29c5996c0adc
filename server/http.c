/* http.c — the libmicrohttpd daemon of `prefixd serve`: routing (404 for
 * unknown paths, 405 with Allow for wrong methods), bearer-key auth (401 /
 * 403, constant-time compare, keys never logged), body collection under a
 * per-route byte limit (413), the OpenAI error shape, and small response
 * helpers shared by the routes.
 *
 * Hostile input is refused here, once for every route, before any handler
 * runs: a path, query or header holding a NUL or another control byte (400
 * invalid_characters: MHD hands out C strings, so a decoded %00 would
 * silently truncate an id; our own unescape callback sees every decoded byte
 * and flags the connection), a path and query over max_url_bytes (414) and
 * headers over max_header_bytes (431), both below libmicrohttpd's own
 * memory limit so that they get the JSON error shape.
 *
 * DESIGN (deadlines). libmicrohttpd only knows an idle timeout, which a
 * client sending a byte now and then never hits. A watchdog thread (struct
 * http_watch) keeps every connection (MHD's connection notifications) with
 * the start of its current deadline: the connection's accept, or the end of
 * its previous response. A connection whose request (line, headers and body)
 * is not complete request_timeout_s after that is answered 408 in the JSON
 * error shape, written by the watchdog itself, and shut down; a keep-alive
 * connection that never began another request is closed without a word (a
 * stray 408 would be read as the answer to the client's next request). While
 * a handler runs or a response is written the connection has no deadline.
 * Connection state is guarded by the watch mutex; the watchdog only touches
 * a socket between MHD's STARTED and CLOSED notifications, and MHD closes the
 * socket after CLOSED.
 *
 * Request life: MHD calls on_access() first with the headers only: the route
 * is resolved, auth checked and Content-Length compared with the limit, and
 * any of those failures is answered at once without reading the body. Then
 * the body arrives in pieces (appended to req->body), and the final call
 * (upload size 0) runs the route's handler, which queues exactly one
 * response. on_completed() frees the per-request state. */
#include "http.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "prefixd/log.h"

/* ---- connections and their deadlines -------------------------------------- */

struct http_conn {
    int fd;              /* the socket (MHD's) */
    double since;        /* start of the current deadline (pd_now) */
    int busy;            /* a handler runs or a response is written: no deadline */
    int served;          /* requests answered on this connection */
    int started;         /* the current request's line has arrived */
    int expired;         /* the watchdog answered 408 or closed it */
    int bad_bytes;       /* a control byte in the path or query (connection thread only) */
    const char *raw_uri; /* the current request's URI as MHD read it (connection thread) */
    size_t raw_uri_len;
    http_conn *prev, *next;
};

struct http_watch {
    pthread_mutex_t mu;  /* guards the list and every http_conn's deadline fields */
    pthread_cond_t cv;   /* stop */
    http_conn *head;
    int stop;
    double timeout_s;    /* request_timeout_s; 0: no watchdog thread */
    pthread_t thread;
    metrics *mx;
};

/* Writes a whole JSON error response straight to a socket and asks for the
 * connection to close: for answers MHD cannot queue (a request that did not
 * arrive in time, a chunk refused in the middle of an upload). Best effort:
 * the connection is closed right after either way. */
static void send_raw_error(int fd, unsigned status, const char *reason, const char *code,
                           const char *message)
{
    char body[512], msg[768];
    int nb = snprintf(body, sizeof body,
                      "{\"error\": {\"message\": \"%s\", \"type\": \"invalid_request_error\", "
                      "\"param\": null, \"code\": \"%s\"}}",
                      message, code);
    int n = snprintf(msg, sizeof msg,
                     "HTTP/1.1 %u %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                     status, reason, nb, body);
    if (nb > 0 && nb < (int)sizeof body && n > 0 && n < (int)sizeof msg) {
        ssize_t w = send(fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
}

static void send_timeout(int fd, double timeout_s)
{
    char m[160];
    snprintf(m, sizeof m,
             "The request (headers and body) was not received within %.0f s "
             "(request_timeout_s).",
             timeout_s);
    send_raw_error(fd, 408, "Request Timeout", "request_timeout", m);
}

static void *watch_main(void *arg)
{
    http_watch *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += 100 * 1000 * 1000;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&w->cv, &w->mu, &until);
        double now = pd_now();
        for (http_conn *c = w->head; c; c = c->next) {
            if (c->busy || c->expired || now - c->since < w->timeout_s) continue;
            c->expired = 1;
            if (c->started || c->served == 0) {
                send_timeout(c->fd, w->timeout_s);
                metrics_http(w->mx, "other", "other", 408);
            }
            shutdown(c->fd, SHUT_RDWR); /* MHD's thread sees the end and closes */
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    srv *s = cls;
    http_watch *w = s->watch;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        http_conn *c = calloc(1, sizeof *c);
        *socket_context = c;
        if (!c || !ci) return; /* no deadline for this one; MHD's idle timeout still holds */
        c->fd = ci->connect_fd;
        c->since = pd_now();
        pthread_mutex_lock(&w->mu);
        c->next = w->head;
        if (w->head) w->head->prev = c;
        w->head = c;
        pthread_mutex_unlock(&w->mu);
        return;
    }
    http_conn *c = *socket_context;
    if (!c) return;
    pthread_mutex_lock(&w->mu);
    if (c->prev) c->prev->next = c->next;
    else if (w->head == c) w->head = c->next;
    if (c->next) c->next->prev = c->prev;
    pthread_mutex_unlock(&w->mu);
    free(c);
    *socket_context = NULL;
}

/* Stops the watchdog thread and frees the watch (connections gone). */
static void watch_free(srv *s)
{
    http_watch *w = s->watch;
    if (!w) return;
    if (w->timeout_s > 0) {
        pthread_mutex_lock(&w->mu);
        w->stop = 1;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thread, NULL);
    }
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
    s->watch = NULL;
}

static http_conn *conn_state(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* Marks the connection busy (no deadline). Returns 0, or -1 when the watchdog
 * has already answered it. */
static int conn_busy(srv *s, http_conn *c)
{
    if (!c) return 0;
    pthread_mutex_lock(&s->watch->mu);
    int expired = c->expired;
    c->busy = 1;
    pthread_mutex_unlock(&s->watch->mu);
    return expired ? -1 : 0;
}

/* The request is over: the next one has request_timeout_s from now. */
static void conn_idle(srv *s, http_conn *c)
{
    if (!c) return;
    pthread_mutex_lock(&s->watch->mu);
    c->busy = 0;
    c->started = 0;
    c->served++;
    c->since = pd_now();
    pthread_mutex_unlock(&s->watch->mu);
    c->bad_bytes = 0;
    c->raw_uri = NULL;
}

/* MHD's URI log callback: called with the raw URI, before it is unescaped;
 * remembers where it starts and how long it is as a C string. Returns the
 * initial per-request pointer (none). */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    (void)cls;
    http_conn *c = conn_state(conn);
    if (c) {
        c->raw_uri = uri;
        c->raw_uri_len = strlen(uri);
    }
    return NULL;
}

static int hexval(int ch)
{
    return ch >= '0' && ch <= '9'   ? ch - '0'
           : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
           : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                    : -1;
}

static int is_ctl(unsigned char ch) { return ch < 0x20 || ch == 0x7f; }

/* MHD's unescape callback (the path and every query key and value): decodes
 * %HH in place like MHD's own, and flags the connection when a raw or
 * decoded byte is a control byte, so the router refuses the request instead
 * of seeing a truncated C string. Also marks the start of a request. */
static size_t unescape(void *cls, struct MHD_Connection *conn, char *str)
{
    srv *s = cls;
    int bad = 0;
    char *w = str;
    for (const char *p = str; *p;) {
        unsigned char ch = (unsigned char)*p;
        int hi, lo;
        if (ch == '%' && (hi = hexval(p[1])) >= 0 && (lo = hexval(p[2])) >= 0) {
            ch = (unsigned char)(hi << 4 | lo);
            p += 3;
        } else {
            p++;
        }
        bad |= is_ctl(ch);
        *w++ = (char)ch;
    }
    *w = 0;
    http_conn *c = conn_state(conn);
    if (c) {
        c->bad_bytes |= bad;
        pthread_mutex_lock(&s->watch->mu);
        if (!c->started && c->served > 0) c->since = pd_now(); /* idle until now */
        c->started = 1;
        pthread_mutex_unlock(&s->watch->mu);
    }
    return (size_t)(w - str);
}

/* ---- routing table ------------------------------------------------------ */

enum { AUTH_OPEN, AUTH_KEY, AUTH_ADMIN };
enum { BODY_NONE, BODY_JSON, BODY_PREFIX, BODY_UPLOAD };

typedef struct route_def {
    const char *method;
    const char *path;  /* exact, or with one "{}" standing for one path segment */
    const char *label; /* metrics label */
    enum MHD_Result (*fn)(http_req *r);
    int auth;
    int body;
    int needs_ready;   /* 503 while the model loads */
} route_def;

static const route_def routes[] = {
    {"POST", "/v1/completions", "/v1/completions", route_completions, AUTH_KEY, BODY_JSON, 1},
    {"POST", "/v1/chat/completions", "/v1/chat/completions", route_chat_completions, AUTH_KEY,
     BODY_JSON, 1},
    {"POST", "/apply-template", "/apply-template", route_apply_template, AUTH_KEY, BODY_JSON, 1},
    {"GET", "/v1/models", "/v1/models", route_models_list, AUTH_KEY, BODY_NONE, 1},
    {"GET", "/v1/models/{}", "/v1/models/{id}", route_models_get, AUTH_KEY, BODY_NONE, 1},
    {"GET", "/v1/prefixes", "/v1/prefixes", route_prefixes_list, AUTH_KEY, BODY_NONE, 1},
    {"GET", "/v1/prefixes/{}", "/v1/prefixes/{task}", route_prefixes_get, AUTH_KEY, BODY_NONE,
     1},
    {"PUT", "/v1/prefixes/{}", "/v1/prefixes/{task}", route_prefixes_put, AUTH_ADMIN,
     BODY_PREFIX, 1},
    {"DELETE", "/v1/prefixes/{}", "/v1/prefixes/{task}", route_prefixes_delete, AUTH_ADMIN,
     BODY_NONE, 1},
    {"POST", "/v1/files", "/v1/files", route_files_create, AUTH_ADMIN, BODY_UPLOAD, 1},
    {"GET", "/v1/files", "/v1/files", route_files_list, AUTH_ADMIN, BODY_NONE, 1},
    {"GET", "/v1/files/{}", "/v1/files/{id}", route_files_get, AUTH_ADMIN, BODY_NONE, 1},
    {"DELETE", "/v1/files/{}", "/v1/files/{id}", route_files_delete, AUTH_ADMIN, BODY_NONE, 1},
    {"GET", "/v1/files/{}/content", "/v1/files/{id}/content", route_files_content, AUTH_ADMIN,
     BODY_NONE, 1},
    {"POST", "/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs", route_jobs_create, AUTH_ADMIN,
     BODY_JSON, 1},
    {"GET", "/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs", route_jobs_list, AUTH_ADMIN,
     BODY_NONE, 1},
    {"GET", "/v1/fine_tuning/jobs/{}", "/v1/fine_tuning/jobs/{id}", route_jobs_get, AUTH_ADMIN,
     BODY_NONE, 1},
    {"GET", "/v1/fine_tuning/jobs/{}/events", "/v1/fine_tuning/jobs/{id}/events",
     route_jobs_events, AUTH_ADMIN, BODY_NONE, 1},
    {"GET", "/v1/fine_tuning/jobs/{}/checkpoints", "/v1/fine_tuning/jobs/{id}/checkpoints",
     route_jobs_checkpoints, AUTH_ADMIN, BODY_NONE, 1},
    {"POST", "/v1/fine_tuning/jobs/{}/cancel", "/v1/fine_tuning/jobs/{id}/cancel",
     route_jobs_cancel, AUTH_ADMIN, BODY_NONE, 1},
    {"GET", "/health", "/health", route_health, AUTH_OPEN, BODY_NONE, 0},
    {"GET", "/metrics", "/metrics", route_metrics, AUTH_OPEN, BODY_NONE, 0},
    {"POST", "/tokenize", "/tokenize", route_tokenize, AUTH_KEY, BODY_JSON, 1},
    {"POST", "/detokenize", "/detokenize", route_detokenize, AUTH_KEY, BODY_JSON, 1},
};
#define N_ROUTES ((int)(sizeof routes / sizeof routes[0]))
#define ROUTE_NONE (-1)

/* 1 if url matches path (copying the "{}" segment into param), else 0. */
static int path_match(const char *path, const char *url, char *param, size_t cap)
{
    const char *brace = strstr(path, "{}");
    if (!brace) return !strcmp(path, url);
    size_t n = (size_t)(brace - path);
    if (strncmp(path, url, n) != 0) return 0;
    const char *seg = url + n, *slash = strchr(seg, '/');
    size_t len = slash ? (size_t)(slash - seg) : strlen(seg);
    if (len == 0 || len >= cap || strcmp(slash ? slash : "", brace + 2) != 0) return 0;
    memcpy(param, seg, len);
    param[len] = 0;
    return 1;
}

/* ---- responses ------------------------------------------------------------ */

static const char other[] = "other";

enum MHD_Result http_send_response(http_req *r, unsigned status, struct MHD_Response *resp)
{
    if (!resp) return MHD_NO;
    enum MHD_Result ret = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    r->answered = 1;
    metrics_http(r->s->mx, r->route == ROUTE_NONE ? other : routes[r->route].method,
                 r->route == ROUTE_NONE ? other : routes[r->route].label, (int)status);
    PD_LOGD("%s %s -> %u (%.1f ms)", r->method, r->url, status, (pd_now() - r->t_start) * 1e3);
    return ret;
}

enum MHD_Result http_send_text(http_req *r, unsigned status, const char *content_type,
                               const char *text, size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) != MHD_YES) {
        MHD_destroy_response(resp);
        return MHD_NO;
    }
    return http_send_response(r, status, resp);
}

enum MHD_Result http_send_json_hdr(http_req *r, unsigned status, json_t *json,
                                   const char *hname, const char *hvalue)
{
    char *text = json ? json_dumps(json, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(json);
    if (!text) return MHD_NO;
    size_t len = strlen(text);
    char *nl = realloc(text, len + 2);
    if (!nl) {
        free(text);
        return MHD_NO;
    }
    nl[len++] = '\n';
    nl[len] = 0;
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, nl, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(nl);
        return MHD_NO;
    }
    if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json") !=
            MHD_YES ||
        (hname && MHD_add_response_header(resp, hname, hvalue) != MHD_YES)) {
        MHD_destroy_response(resp);
        return MHD_NO;
    }
    return http_send_response(r, status, resp);
}

enum MHD_Result http_send_json(http_req *r, unsigned status, json_t *json)
{
    return http_send_json_hdr(r, status, json, NULL, NULL);
}

static const char *error_type(unsigned status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 429: return "rate_limit_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

static enum MHD_Result send_error_v(http_req *r, unsigned status, const char *hname,
                                    const char *hvalue, const char *param, const char *code,
                                    const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    /* messages may quote client bytes: keep the JSON valid whatever they are */
    json_t *m = json_string(msg);
    if (!m) m = json_string("invalid request (the message contained invalid UTF-8)");
    json_t *e = json_pack("{s:{s:o,s:s,s:o,s:o}}", "error", "message", m, "type",
                          error_type(status), "param", param ? json_string(param) : json_null(),
                          "code", code ? json_string(code) : json_null());
    return http_send_json_hdr(r, status, e, hname, hvalue);
}

enum MHD_Result http_send_error(http_req *r, unsigned status, const char *param,
                                const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    enum MHD_Result ret = send_error_v(r, status, NULL, NULL, param, code, fmt, ap);
    va_end(ap);
    return ret;
}

enum MHD_Result http_send_error_hdr(http_req *r, unsigned status, const char *hname,
                                    const char *hvalue, const char *param, const char *code,
                                    const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    enum MHD_Result ret = send_error_v(r, status, hname, hvalue, param, code, fmt, ap);
    va_end(ap);
    return ret;
}

json_t *http_body_json(http_req *r, enum MHD_Result *ret)
{
    if (r->body.len == 0) {
        *ret = http_send_error(r, 400, NULL, "invalid_json",
                               "The request body is empty: send a JSON object "
                               "(Content-Type: application/json).");
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loadb(r->body.p, r->body.len, 0, &je);
    if (!j) {
        *ret = http_send_error(r, 400, NULL, "invalid_json",
                               "We could not parse the JSON body of your request: %s "
                               "(line %d, column %d).",
                               je.text, je.line, je.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        *ret = http_send_error(r, 400, NULL, "invalid_json",
                               "The JSON body of your request must be an object.");
        return NULL;
    }
    return j;
}

void http_new_id(srv *s, const char *prefix, char *out, size_t cap)
{
    unsigned char b[12];
    if (getrandom(b, sizeof b, GRND_NONBLOCK) != (ssize_t)sizeof b) {
        /* no entropy yet: unique is all an id needs */
        uint64_t x = atomic_fetch_add(&s->counter, 1) * 0x9E3779B97F4A7C15ull ^
                     (uint64_t)time(NULL) << 20;
        for (size_t i = 0; i < sizeof b; i++) b[i] = (unsigned char)(x >> (8 * (i % 8)) ^ i);
    }
    size_t n = (size_t)snprintf(out, cap, "%s", prefix);
    for (size_t i = 0; i < sizeof b && n + 2 < cap; i++, n += 2)
        snprintf(out + n, cap - n, "%02x", b[i]);
}

long long http_unix_now(void) { return (long long)time(NULL); }

int http_peer_gone(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 0;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLRDHUP};
    int n = poll(&p, 1, 0);
    return n > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

/* ---- auth ----------------------------------------------------------------- */

/* Compares a candidate with a key in time that depends only on the two
 * lengths, never on where they differ: every byte of both is visited. */
static int key_equal(const char *cand, size_t n_cand, const char *key)
{
    size_t n_key = strlen(key), n = n_cand > n_key ? n_cand : n_key;
    volatile unsigned char diff = (unsigned char)(n_cand != n_key);
    for (size_t i = 0; i < n; i++) {
        unsigned char a = i < n_cand ? (unsigned char)cand[i] : 0;
        unsigned char b = i < n_key ? (unsigned char)key[i] : 0;
        diff |= (unsigned char)(a ^ b);
    }
    return diff == 0;
}

/* 0: allowed (r->admin set); otherwise the response was queued into *ret. */
static int check_auth(http_req *r, int need, enum MHD_Result *ret)
{
    const srv_config *c = r->s->cfg;
    if (need == AUTH_OPEN || c->n_keys == 0) {
        r->admin = 1;
        return 0;
    }
    const char *h = NULL;
    size_t h_len = 0;
    if (MHD_lookup_connection_value_n(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION,
                                      strlen(MHD_HTTP_HEADER_AUTHORIZATION), &h,
                                      &h_len) != MHD_YES)
        h = NULL;
    if (!h) {
        *ret = http_send_error_hdr(r, 401, "WWW-Authenticate", "Bearer", NULL,
                                   "missing_api_key",
                                   "You didn't provide an API key. Send it in the Authorization "
                                   "header as 'Authorization: Bearer YOUR_KEY'.");
        return -1;
    }
    if (h_len < 7 || strncasecmp(h, "Bearer ", 7) != 0) {
        *ret = http_send_error_hdr(r, 401, "WWW-Authenticate", "Bearer", NULL, "invalid_api_key",
                                   "The Authorization header must be 'Bearer YOUR_KEY'.");
        return -1;
    }
    /* the whole value counts (the router has refused control bytes in it) */
    const char *cand = h + 7;
    size_t n = h_len - 7;
    while (n && *cand == ' ') cand++, n--;
    while (n && cand[n - 1] == ' ') n--;
    int found = 0, admin = 0;
    for (int i = 0; i < c->n_keys; i++) { /* no early exit: every key is compared */
        int eq = key_equal(cand, n, c->keys[i].key);
        found |= eq;
        admin |= eq & c->keys[i].admin;
    }
    if (!found) {
        *ret = http_send_error_hdr(r, 401, "WWW-Authenticate", "Bearer", NULL, "invalid_api_key",
                                   "Incorrect API key provided.");
        return -1;
    }
    r->admin = admin;
    if (need == AUTH_ADMIN && !admin) {
        *ret = http_send_error(r, 403, NULL, "insufficient_permissions",
                               "This API key lacks the admin scope that %s %s needs: use a key "
                               "configured with \"admin\": true (or --api-key admin:KEY).",
                               r->method, r->url);
        return -1;
    }
    return 0;
}

/* ---- access handler ------------------------------------------------------------ */

static size_t body_limit(const srv_config *c, int body)
{
    switch (body) {
    case BODY_JSON: return (size_t)c->max_body_bytes;
    case BODY_PREFIX: return (size_t)c->max_prefix_bytes;
    case BODY_UPLOAD: return (size_t)c->max_file_bytes;
    default: return (size_t)c->max_body_bytes;
    }
}

/* What a scan of the request's headers or query found. */
typedef struct scan {
    size_t bytes;       /* names and values, with separators */
    const char *bad;    /* the first entry holding a control byte, or NULL */
    char name[64];      /* its name, printable */
    const char *end;    /* headers: where the previous line's value ended */
    const char *prev;   /* headers: the previous line's name */
    size_t prev_size;
} scan;

/* Copies a header or query name into sc->name, printable, and marks it bad. */
static void scan_bad(scan *sc, const char *key, size_t key_size)
{
    size_t k = 0;
    for (size_t i = 0; i < key_size && k + 1 < sizeof sc->name; i++)
        sc->name[k++] = is_ctl((unsigned char)key[i]) ? '?' : key[i];
    sc->name[k] = 0;
    sc->bad = sc->name;
}

/* 1 if the bytes between two header lines are what MHD leaves of a line end
 * (CRLF or LF, each byte overwritten by NUL). MHD hands out header values as
 * C strings cut at the first NUL; the rest of such a line stays in its read
 * buffer between this value's end and the next line's name, so anything else
 * there is a smuggled NUL (or an obsolete folded line, refused as RFC 9112
 * allows). The distance is compared before any byte is read. */
static int line_gap_ok(const char *end, const char *next, size_t lo, size_t hi)
{
    uintptr_t a = (uintptr_t)end, b = (uintptr_t)next;
    if (b < a + lo || b > a + hi) return 0;
    for (const char *p = end; p < next; p++)
        if (*p) return 0;
    return 1;
}

/* 1 if p[0..n) holds a control byte (HTAB allowed when tab_ok). */
static int has_ctl(const char *p, size_t n, int tab_ok)
{
    for (size_t i = 0; i < n; i++)
        if (is_ctl((unsigned char)p[i]) && !(tab_ok && p[i] == '\t')) return 1;
    return 0;
}

static enum MHD_Result scan_value(void *cls, enum MHD_ValueKind kind, const char *key,
                                  size_t key_size, const char *value, size_t value_size)
{
    scan *sc = cls;
    sc->bytes += key_size + value_size + 4;
    int tab_ok = kind == MHD_HEADER_KIND;
    if (kind == MHD_HEADER_KIND && value) {
        if (sc->end && !line_gap_ok(sc->end, key, 1, 2)) { /* the previous line hid bytes */
            scan_bad(sc, sc->prev, sc->prev_size);
            return MHD_NO;
        }
        sc->end = value + value_size;
        sc->prev = key;
        sc->prev_size = key_size;
    }
    if (!has_ctl(key, key_size, 0) && !(value && has_ctl(value, value_size, tab_ok)))
        return MHD_YES;
    scan_bad(sc, key, key_size);
    return MHD_NO;
}

/* The checks every route shares, before routing: control bytes in the path,
 * query or headers (400), the URL's and the headers' size (414, 431). 0, or
 * -1 with the answer queued into *ret. */
static int check_request_bytes(http_req *r, enum MHD_Result *ret)
{
    const srv_config *c = r->s->cfg;
    if (!r->hc) { /* the connection's state could not be allocated: no checks, no service */
        *ret = http_send_error(r, 503, NULL, "out_of_memory",
                               "The server is out of memory; retry later.");
        return -1;
    }
    scan q = {0}, h = {0};
    MHD_get_connection_values_n(r->conn, MHD_GET_ARGUMENT_KIND, scan_value, &q);
    MHD_get_connection_values_n(r->conn, MHD_HEADER_KIND, scan_value, &h);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    size_t hdr_bytes = ci ? ci->header_size : h.bytes;
    /* the last line ends the header block: CRLF or LF, twice */
    if (!h.bad && h.end && ci && !line_gap_ok(h.end, r->method + hdr_bytes, 2, 4))
        scan_bad(&h, h.prev, h.prev_size);
    if (h.bad) {
        *ret = http_send_error(r, 400, h.name, "invalid_characters",
                               "The value of header '%s' holds a NUL or another control byte; "
                               "such headers are refused.",
                               h.name);
        return -1;
    }
    if (q.bad) {
        *ret = http_send_error(r, 400, q.name, "invalid_characters",
                               "The query parameter '%s' holds a NUL or another control byte "
                               "(raw or %%-encoded); such requests are refused.",
                               q.name);
        return -1;
    }
    /* a raw NUL in the request line cuts the URI MHD logged short of the
     * space before the version */
    int raw_nul = r->hc->raw_uri && r->version &&
                  (uintptr_t)r->hc->raw_uri + r->hc->raw_uri_len + 1 != (uintptr_t)r->version;
    if (r->hc->bad_bytes || raw_nul || has_ctl(r->url, strlen(r->url), 0)) {
        *ret = http_send_error(r, 400, "path", "invalid_characters",
                               "The request path or query holds a NUL or another control byte "
                               "(raw or %%-encoded); such requests are refused.");
        return -1;
    }
    size_t url_bytes = strlen(r->url) + q.bytes;
    if (url_bytes > (size_t)c->max_url_bytes) {
        *ret = http_send_error(r, 414, NULL, "uri_too_long",
                               "The request path and query are %zu bytes; at most %ld are "
                               "allowed (max_url_bytes).",
                               url_bytes, c->max_url_bytes);
        return -1;
    }
    if (hdr_bytes > (size_t)c->max_header_bytes) {
        *ret = http_send_error(r, 431, NULL, "headers_too_large",
                               "The request line and headers are %zu bytes; at most %ld are "
                               "allowed (max_header_bytes).",
                               hdr_bytes, c->max_header_bytes);
        return -1;
    }
    return 0;
}

/* First call: route, auth, declared length. 0 to go on reading the body;
 * otherwise a response was queued into *ret (or it failed). */
static int on_headers(http_req *r, enum MHD_Result *ret)
{
    if (check_request_bytes(r, ret) < 0) return -1;
    const char *method = !strcmp(r->method, "HEAD") ? "GET" : r->method;
    char allow[64] = "";
    int path_found = 0;
    for (int i = 0; i < N_ROUTES; i++) {
        if (!path_match(routes[i].path, r->url, r->param, sizeof r->param)) continue;
        path_found = 1;
        if (!strcmp(routes[i].method, method)) {
            r->route = i;
            break;
        }
        size_t n = strlen(allow);
        snprintf(allow + n, sizeof allow - n, "%s%s", n ? ", " : "", routes[i].method);
        if (!strcmp(routes[i].method, "GET")) {
            n = strlen(allow);
            snprintf(allow + n, sizeof allow - n, ", HEAD");
        }
    }
    if (r->route == ROUTE_NONE) {
        if (path_found)
            *ret = http_send_error_hdr(r, 405, MHD_HTTP_HEADER_ALLOW, allow, NULL,
                                       "method_not_allowed",
                                       "Method %s is not allowed on %s (allowed: %s).",
                                       r->method, r->url, allow);
        else
            *ret = http_send_error(r, 404, NULL, "unknown_url", "Unknown request URL: %s %s.",
                                   r->method, r->url);
        return -1;
    }
    const route_def *rt = &routes[r->route];
    if (check_auth(r, rt->auth, ret) < 0) return -1;
    r->limit = body_limit(r->s->cfg, rt->body);
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (!errno && end != cl && n > r->limit) {
            *ret = http_send_error(r, 413, NULL, "request_too_large",
                                   "The request body is %llu bytes; at most %zu are allowed on "
                                   "%s %s.",
                                   n, r->limit, r->method, rt->label);
            return -1;
        }
        if (!errno && end != cl && n > 0 && hbuf_reserve(&r->body, (size_t)n) < 0) {
            *ret = http_send_error(r, 503, NULL, "out_of_memory",
                                   "The server is out of memory; retry later.");
            return -1;
        }
    }
    return 0;
}

/* The size the first chunk of a chunked body declares, or 0 when it cannot
 * be seen. MHD hands out the chunk's data, not its size line; when the data
 * arrived with the headers, that line lies in MHD's read buffer between the
 * end of the header block and the data, and is read only when it is that
 * short. */
static unsigned long long first_chunk_size(http_req *r, const char *data)
{
    const char *te = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_TRANSFER_ENCODING);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (!te || !strstr(te, "chunked") || !ci) return 0;
    const char *line = r->method + ci->header_size;
    uintptr_t a = (uintptr_t)line, b = (uintptr_t)data;
    if (b <= a + 2 || b > a + 80) return 0;
    unsigned long long v = 0;
    for (const char *p = line; p < data && hexval(*p) >= 0; p++) {
        if (v >> 60) return ULLONG_MAX; /* more than 2^64 - 1 */
        v = v << 4 | (unsigned)hexval(*p);
    }
    return v;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_data_size,
                                 void **con_cls)
{
    srv *s = cls;
    http_req *r = *con_cls;
    if (!r) {
        if (!(r = calloc(1, sizeof *r))) return MHD_NO;
        *con_cls = r;
        r->s = s;
        r->conn = conn;
        r->method = method;
        r->url = url;
        r->version = version;
        r->route = ROUTE_NONE;
        r->t_start = pd_now();
        r->hc = conn_state(conn);
        atomic_fetch_add(&s->active, 1);
        enum MHD_Result ret = MHD_YES;
        if (on_headers(r, &ret) < 0) {
            /* answered without its body: it is written now, no deadline */
            return conn_busy(s, r->hc) < 0 ? MHD_NO : ret;
        }
        return MHD_YES;
    }
    if (r->answered) { /* answered early: drop whatever body still arrives */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (!r->body.len && !r->too_large && first_chunk_size(r, upload_data) > r->limit) {
            /* refused now rather than waited on for bytes that will never fit;
             * MHD takes no response in the middle of an upload, so it is
             * written here and the connection closed */
            if (conn_busy(s, r->hc) < 0 || !r->hc) return MHD_NO;
            char m[200];
            snprintf(m, sizeof m,
                     "The first chunk of the request body declares more than the %zu bytes "
                     "allowed on %s %s.",
                     r->limit, r->method, routes[r->route].label);
            send_raw_error(r->hc->fd, 413, "Content Too Large", "request_too_large", m);
            metrics_http(s->mx, r->method, routes[r->route].label, 413);
            r->answered = 1;
            return MHD_NO;
        }
        if (r->too_large || r->body.len + n > r->limit) {
            r->too_large = 1;
            r->discarded += n;
            /* a client that keeps sending far past the limit is cut off */
            return r->discarded > 4 * r->limit + (1u << 20) ? MHD_NO : MHD_YES;
        }
        if (hbuf_add(&r->body, upload_data, n) < 0) {
            r->too_large = 1;
            r->discarded += n;
        }
        return MHD_YES;
    }
    if (conn_busy(s, r->hc) < 0) return MHD_NO; /* the watchdog answered 408 */
    if (r->too_large) {
        if (r->body.oom)
            return http_send_error(r, 503, NULL, "out_of_memory",
                                   "The server is out of memory; retry later.");
        return http_send_error(r, 413, NULL, "request_too_large",
                               "The request body is larger than the %zu bytes allowed on %s %s.",
                               r->limit, r->method, routes[r->route].label);
    }
    const route_def *rt = &routes[r->route];
    if (rt->needs_ready && !atomic_load(&s->ready))
        return http_send_error_hdr(r, 503, MHD_HTTP_HEADER_RETRY_AFTER, "1", NULL,
                                   "model_loading",
                                   "The model is still loading; retry in a moment.");
    return rt->fn(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    srv *s = cls;
    (void)conn;
    http_req *r = *con_cls;
    if (!r) return;
    atomic_fetch_sub(&s->active, 1);
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        PD_LOGD("%s %s: connection ended early (code %d)", r->method, r->url, (int)toe);
    conn_idle(s, r->hc);
    hbuf_free(&r->body);
    free(r);
    *con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
    PD_LOGW("http: %s", line);
}

/* ---- daemon ------------------------------------------------------------------ */

int http_start(srv *s)
{
    const srv_config *c = s->cfg;
    char host[256], port_s[16];
    int port;
    if (config_split_listen(c->listen, host, sizeof host, &port) < 0) {
        PD_LOGE("listen: '%s' is not HOST:PORT", c->listen);
        return -1;
    }
    snprintf(port_s, sizeof port_s, "%d", port);
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int gai = getaddrinfo(*host ? host : NULL, port_s, &hints, &ai);
    if (gai != 0 || !ai) {
        PD_LOGE("listen: cannot resolve '%s': %s", host, gai_strerror(gai));
        return -1;
    }
    http_watch *w = calloc(1, sizeof *w);
    if (!w) {
        freeaddrinfo(ai);
        PD_LOGE("out of memory for the connection watchdog");
        return -1;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    w->timeout_s = (double)c->request_timeout_s;
    w->mx = s->mx;
    s->watch = w;
    if (w->timeout_s > 0 && pthread_create(&w->thread, NULL, watch_main, w) != 0) {
        freeaddrinfo(ai);
        PD_LOGE("cannot start the connection watchdog thread");
        w->timeout_s = 0; /* no thread to join */
        watch_free(s);
        return -1;
    }
    long per_ip = c->max_connections_per_client < c->max_connections
                      ? c->max_connections_per_client
                      : c->max_connections;
    /* MHD answers what does not fit its per-connection memory itself (in
     * HTML): keep that well above our own JSON-answered limits */
    size_t pool = (size_t)c->max_header_bytes * 2 + 32 * 1024;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_AUTO | MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->daemon = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_access, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log,
        s, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)c->connection_timeout_s,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)per_ip, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        pool, MHD_OPTION_NOTIFY_CONNECTION, on_connection, s, MHD_OPTION_UNESCAPE_CALLBACK,
        unescape, s, MHD_OPTION_URI_LOG_CALLBACK, on_uri, s, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->daemon) {
        watch_free(s);
        PD_LOGE("cannot listen on %s: %s (is the port in use?)", c->listen,
                errno ? strerror(errno) : "libmicrohttpd refused to start");
        return -1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : (uint16_t)port;
    return 0;
}

void http_quiesce(srv *s)
{
    if (!s->daemon) return;
    MHD_socket fd = MHD_quiesce_daemon(s->daemon);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

int http_drain(srv *s, int ms)
{
    struct timespec tick = {0, 10 * 1000 * 1000};
    for (int waited = 0; atomic_load(&s->active) > 0 && waited < ms; waited += 10)
        nanosleep(&tick, NULL);
    return atomic_load(&s->active);
}

void http_stop(srv *s)
{
    if (s->daemon) MHD_stop_daemon(s->daemon); /* every CLOSED notification has run */
    s->daemon = NULL;
    watch_free(s);
}
