/* http.h — the HTTP side of `prefixd serve`: the server state shared by the
 * handlers, the libmicrohttpd daemon (routing, auth, body limits), response
 * helpers (JSON, OpenAI error shape) and the route handlers (routes_*.c).
 *
 * Hostile input (control bytes, sizes, stalled clients, too many connections
 * from one address) is refused in http.c before any handler runs.
 *
 * DESIGN. libmicrohttpd runs one thread per connection
 * (MHD_USE_THREAD_PER_CONNECTION): a handler may block on pd_request_wait()
 * while the engine thread generates, and a streamed response's content
 * reader (sse.c) blocks the same way. Handlers never run model math: they
 * encode, submit to the scheduler and wait — PUT /v1/prefixes/{task} with
 * {"from_prompt": …} too: its prompt is prefilled on the engine thread as a
 * prefix-build request.
 *
 * Threads: a srv is created by cmd_serve (serve.c) on the main thread; model,
 * registry, job store, worker and sched are set before `ready` becomes 1 and
 * are read-only afterwards, except sched, which shutdown takes away under sched_lock
 * (handlers hold the read side while they submit or read stats).
 */
#ifndef PREFIXD_SERVER_HTTP_H
#define PREFIXD_SERVER_HTTP_H

#include <microhttpd.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "config.h"
#include "hbuf.h"
#include "metrics.h"
#include "worker.h"
#include "prefixd/engine.h"
#include "prefixd/jobstore.h"
#include "prefixd/model.h"
#include "prefixd/registry.h"
#include "prefixd/scheduler.h"

/* ---- server state ------------------------------------------------------ */

typedef struct http_watch http_watch; /* connection deadlines (http.c) */

typedef struct srv {
    const srv_config *cfg;        /* borrowed from cmd_serve */
    atomic_int ready;             /* 1: model, registry and sched are up */
    atomic_int stopping;          /* 1: shutdown has begun */
    pd_model *model;              /* owned by serve.c; read-only once ready */
    pd_registry *reg;             /* owned by serve.c */
    int context;                  /* tokens per request at most (P + prompt + completion) */
    pthread_rwlock_t sched_lock;  /* guards the sched pointer, not the scheduler */
    pd_sched *sched;              /* NULL once shutdown has taken it */
    metrics *mx;                  /* owned by serve.c */
    pd_jobstore *js;              /* owned by serve.c; NULL: no data directory */
    worker *wk;                   /* owned by serve.c; NULL with js */
    atomic_uint_fast64_t counter; /* ids and default seeds */
    atomic_int active;            /* HTTP requests between arrival and completion */
    time_t started;               /* wall clock at start (model "created") */
    struct MHD_Daemon *daemon;
    http_watch *watch;            /* owned by http.c: request deadlines */
    uint16_t port;                /* the bound port */
} srv;

/* ---- daemon ------------------------------------------------------------ */

/* Starts the daemon on cfg->listen with the handlers below. Returns 0, or -1
 * with the reason logged. */
int http_start(srv *s);
/* Stops accepting connections (existing ones go on). */
void http_quiesce(srv *s);
/* Waits until no request is in progress (responses being written are
 * finished), for up to ms milliseconds. Returns the number still active. */
int http_drain(srv *s, int ms);
/* Closes every connection and joins the daemon's threads. */
void http_stop(srv *s);

/* ---- one request ------------------------------------------------------- */

/* Per-request state, created at the first call of the access handler and
 * freed when MHD reports the request completed. Owned by the connection's
 * thread. */
typedef struct http_conn http_conn; /* one TCP connection (http.c) */

typedef struct http_req {
    srv *s;
    struct MHD_Connection *conn;
    http_conn *hc;       /* the connection's state (borrowed; NULL if unknown) */
    const char *method;  /* "GET", "POST", … (MHD's string) */
    const char *url;     /* decoded path (MHD's string) */
    const char *version; /* "HTTP/1.1" (MHD's string, in its read buffer) */
    char param[PD_TASK_NAME_MAX + 80]; /* the {task}/{id} path segment, or "" */
    int route;           /* index in the routing table */
    int admin;           /* the caller presented an admin key */
    hbuf body;           /* the request body (all of it, limit checked) */
    size_t limit;        /* body bytes allowed */
    size_t discarded;    /* bytes past the limit thrown away */
    int too_large;
    int answered;        /* a response was queued */
    double t_start;      /* pd_now() at arrival */
} http_req;

/* 1 if the client has closed or reset the connection (POLLRDHUP, POLLHUP or
 * POLLERR on its socket), else 0. Never blocks. */
int http_peer_gone(struct MHD_Connection *conn);

/* Queues a response with body json (stolen: decref'd here) and status.
 * extra_name/extra_value add one header when not NULL. Returns MHD_YES or
 * MHD_NO. */
enum MHD_Result http_send_json(http_req *r, unsigned status, json_t *json);
enum MHD_Result http_send_json_hdr(http_req *r, unsigned status, json_t *json,
                                   const char *hname, const char *hvalue);
/* Queues a response whose body is text (copied). */
enum MHD_Result http_send_text(http_req *r, unsigned status, const char *content_type,
                               const char *text, size_t len);
/* Queues an OpenAI error {"error": {message, type, param, code}}; param and
 * code may be NULL (JSON null). type is chosen from status. */
enum MHD_Result http_send_error(http_req *r, unsigned status, const char *param,
                                const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
enum MHD_Result http_send_error_hdr(http_req *r, unsigned status, const char *hname,
                                    const char *hvalue, const char *param, const char *code,
                                    const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
/* Queues a response made elsewhere (sse.c); takes over resp. */
enum MHD_Result http_send_response(http_req *r, unsigned status, struct MHD_Response *resp);

/* The body parsed as a JSON object, or NULL after queuing a 400 that names
 * the line and column (or says the body is not an object). New reference. */
json_t *http_body_json(http_req *r, enum MHD_Result *ret);

/* A fresh random-looking id of hex digits: writes prefix + 24 hex into out. */
void http_new_id(srv *s, const char *prefix, char *out, size_t cap);

/* Wall-clock seconds for "created" fields. */
long long http_unix_now(void);

/* ---- routes (routes_*.c) ----------------------------------------------- */

enum MHD_Result route_completions(http_req *r);     /* POST /v1/completions */
enum MHD_Result route_chat_completions(http_req *r); /* POST /v1/chat/completions */
enum MHD_Result route_apply_template(http_req *r);  /* POST /apply-template */
enum MHD_Result route_models_list(http_req *r);     /* GET /v1/models */
enum MHD_Result route_models_get(http_req *r);      /* GET /v1/models/{id} */
enum MHD_Result route_prefixes_list(http_req *r);   /* GET /v1/prefixes */
enum MHD_Result route_prefixes_get(http_req *r);    /* GET /v1/prefixes/{task} */
enum MHD_Result route_prefixes_put(http_req *r);    /* PUT /v1/prefixes/{task} */
enum MHD_Result route_prefixes_delete(http_req *r); /* DELETE /v1/prefixes/{task} */
enum MHD_Result route_files_create(http_req *r);    /* POST /v1/files */
enum MHD_Result route_files_list(http_req *r);      /* GET /v1/files */
enum MHD_Result route_files_get(http_req *r);       /* GET /v1/files/{id} */
enum MHD_Result route_files_content(http_req *r);   /* GET /v1/files/{id}/content */
enum MHD_Result route_files_delete(http_req *r);    /* DELETE /v1/files/{id} */
enum MHD_Result route_jobs_create(http_req *r);     /* POST /v1/fine_tuning/jobs */
enum MHD_Result route_jobs_list(http_req *r);       /* GET /v1/fine_tuning/jobs */
enum MHD_Result route_jobs_get(http_req *r);        /* GET /v1/fine_tuning/jobs/{id} */
enum MHD_Result route_jobs_events(http_req *r);     /* GET /v1/fine_tuning/jobs/{id}/events */
enum MHD_Result route_jobs_checkpoints(http_req *r); /* GET .../jobs/{id}/checkpoints */
enum MHD_Result route_jobs_cancel(http_req *r);     /* POST /v1/fine_tuning/jobs/{id}/cancel */
enum MHD_Result route_health(http_req *r);          /* GET /health */
enum MHD_Result route_metrics(http_req *r);         /* GET /metrics */
enum MHD_Result route_tokenize(http_req *r);        /* POST /tokenize */
enum MHD_Result route_detokenize(http_req *r);      /* POST /detokenize */

/* The chat template source for a request (routes_template.c): override (a
 * built-in name or the template's source, from the request's
 * "chat_template"; NULL: none), else the configured chat_template (a
 * built-in name or a file), else the model's own, else the default
 * (ChatML). *src is new (free()). PD_OK, or PD_ENOTFOUND/PD_EIO/PD_ENOMEM. */
int srv_chat_template(const srv *s, const char *override, char **src, pd_err *err);

/* Renders body's "messages" (and "tools", "chat_template") with the
 * model's BOS/EOS text into *prompt (new, free()). On failure *param names
 * the request field at fault and err says what; PD_EINVAL for bad input or
 * a template error, PD_ENOMEM. */
int srv_chat_render(const srv *s, const json_t *body, int add_generation_prompt, char **prompt,
                    const char **param, pd_err *err);

/* Answers a job-store failure (routes_files.c): PD_EINVAL 400 (with the
 * parameter named at the start of the message as "param"), PD_ENOTFOUND
 * 404, PD_EBUSY 409, PD_ENOMEM 503, anything else 500. code may be NULL. */
enum MHD_Result http_send_store_error(http_req *r, int rc, const pd_err *err,
                                      const char *code);
/* The query argument name of the request (borrowed from MHD) or NULL. */
const char *http_query(http_req *r, const char *name);
/* Reads the "after" and "limit" query arguments of a list route: 0, or -1
 * after queuing a 400 into *ret. *limit is 0 when absent. */
int http_list_args(http_req *r, const char **after, int *limit, enum MHD_Result *ret);
/* 503 when the training API has no job store (no data directory). 0 when
 * it has one; -1 after queuing the answer into *ret. */
int http_need_jobstore(http_req *r, enum MHD_Result *ret);

/* The registry entry as the API shows it (new reference, or NULL on oom). */
json_t *prefix_entry_json(const pd_registry_entry *e);

/* ---- server-sent events (sse.c) ----------------------------------------- */

/* Produces the next events of a stream into out. May block (the connection
 * has its own thread). Returns 1 when it appended something (or wants to be
 * called again), 0 when the stream is over (out may hold the last bytes),
 * -1 to abort the connection (client gone). */
typedef int (*sse_fill_fn)(void *cls, hbuf *out);

/* A chunked text/event-stream response pulling from fill; free_cls(cls) is
 * called exactly once when libmicrohttpd is done with the response, whether
 * the stream ended, failed or the client went away. NULL on oom (then
 * free_cls has NOT been called). */
struct MHD_Response *sse_response(sse_fill_fn fill, void (*free_cls)(void *), void *cls);

/* Appends "data: <json>\n\n" (json borrowed); -1 on oom. */
int sse_event(hbuf *out, json_t *json);

#endif
