/* http.c — the libmicrohttpd daemon of `prefixd serve`: routing (404 for
 * unknown paths, 405 with Allow for wrong methods), bearer-key auth (401 /
 * 403, constant-time compare, keys never logged), body collection under a
 * per-route byte limit (413), the OpenAI error shape, and small response
 * helpers shared by the routes.
 *
 * Request life: MHD calls on_access() first with the headers only: the route
 * is resolved, auth checked and Content-Length compared with the limit, and
 * any of those failures is answered at once without reading the body. Then
 * the body arrives in pieces (appended to req->body), and the final call
 * (upload size 0) runs the route's handler, which queues exactly one
 * response. on_completed() frees the per-request state. */
#include "http.h"

#include <errno.h>
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

/* Compares a candidate with a key in time that depends only on the key's
 * length, never on where they differ. */
static int key_equal(const char *cand, size_t n_cand, const char *key)
{
    size_t n_key = strlen(key);
    volatile unsigned char diff = (unsigned char)(n_cand != n_key);
    for (size_t i = 0; i < n_key; i++) {
        unsigned char c = i < n_cand ? (unsigned char)cand[i] : 0;
        diff |= (unsigned char)(c ^ (unsigned char)key[i]);
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
    const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h) {
        *ret = http_send_error_hdr(r, 401, "WWW-Authenticate", "Bearer", NULL,
                                   "missing_api_key",
                                   "You didn't provide an API key. Send it in the Authorization "
                                   "header as 'Authorization: Bearer YOUR_KEY'.");
        return -1;
    }
    if (strncasecmp(h, "Bearer ", 7) != 0) {
        *ret = http_send_error_hdr(r, 401, "WWW-Authenticate", "Bearer", NULL, "invalid_api_key",
                                   "The Authorization header must be 'Bearer YOUR_KEY'.");
        return -1;
    }
    const char *cand = h + 7;
    while (*cand == ' ') cand++;
    size_t n = strlen(cand);
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

/* First call: route, auth, declared length. 0 to go on reading the body;
 * otherwise a response was queued into *ret (or it failed). */
static int on_headers(http_req *r, enum MHD_Result *ret)
{
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

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_data_size,
                                 void **con_cls)
{
    (void)version;
    srv *s = cls;
    http_req *r = *con_cls;
    if (!r) {
        if (!(r = calloc(1, sizeof *r))) return MHD_NO;
        *con_cls = r;
        r->s = s;
        r->conn = conn;
        r->method = method;
        r->url = url;
        r->route = ROUTE_NONE;
        r->t_start = pd_now();
        atomic_fetch_add(&s->active, 1);
        enum MHD_Result ret = MHD_YES;
        if (on_headers(r, &ret) < 0) return ret;
        return MHD_YES;
    }
    if (r->answered) { /* answered early: drop whatever body still arrives */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
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
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_AUTO | MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->daemon = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_access, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log,
        s, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)c->connection_timeout_s, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->daemon) {
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
    if (!s->daemon) return;
    MHD_stop_daemon(s->daemon);
    s->daemon = NULL;
}
