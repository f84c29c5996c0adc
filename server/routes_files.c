/* routes_files.c — training files over HTTP, in OpenAI's shape: POST
 * /v1/files (multipart/form-data with `file` and `purpose=fine-tune`),
 * GET /v1/files, GET /v1/files/{id}, GET /v1/files/{id}/content and
 * DELETE /v1/files/{id}; plus the helpers the job-store routes share
 * (error mapping, list arguments).
 *
 * An upload is parsed in memory (multipart.c; the body limit is
 * max_file_bytes), written to an unlinked temp file in the data directory
 * and validated there by pd_train_validate_file — every line must be a
 * usable example, or the upload is refused with 400 and "line N: what" — and
 * only then stored by the job store (contents fsync'd before the row). A
 * file of purpose "prefix" is a prefix (safetensors) that a job may start
 * from (init_from); it must parse as a prefix of the served model. A
 * deleted file that a job still needs is refused with 409. Jobs store their
 * metrics CSV as files of purpose "fine-tune-results". */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http.h"
#include "multipart.h"
#include "prefixd/log.h"
#include "prefixd/trainer.h"

#define MAX_PARTS 16
#define DEFAULT_FILENAME "upload.jsonl"
#define PREFIX_PURPOSE "prefix" /* a prefix file to start a job from (init_from) */

/* ---- shared helpers ------------------------------------------------------------ */

int http_need_jobstore(http_req *r, enum MHD_Result *ret)
{
    if (r->s->js) return 0;
    *ret = http_send_error(r, 503, NULL, "training_disabled",
                           "The fine-tuning API is disabled: the server has no data directory "
                           "(set \"data\" in the configuration).");
    return -1;
}

const char *http_query(http_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

int http_list_args(http_req *r, const char **after, int *limit, enum MHD_Result *ret)
{
    *after = http_query(r, "after");
    if (*after && !**after) *after = NULL;
    *limit = 0;
    const char *l = http_query(r, "limit");
    if (!l) return 0;
    char *end;
    errno = 0;
    long v = strtol(l, &end, 10);
    if (errno || end == l || *end || v < 1 || v > PD_JOBSTORE_LIST_MAX) {
        *ret = http_send_error(r, 400, "limit", "invalid_value",
                               "limit must be a whole number from 1 to %d.",
                               PD_JOBSTORE_LIST_MAX);
        return -1;
    }
    *limit = (int)v;
    return 0;
}

enum MHD_Result http_send_store_error(http_req *r, int rc, const pd_err *err,
                                      const char *code)
{
    const char *msg = err && err->msg[0] ? err->msg : pd_strerror(rc);
    switch (rc) {
    case PD_EINVAL:
    case PD_ERANGE: {
        /* the store's messages start with the parameter's name and ": " */
        char param[64];
        size_t n = strspn(msg, "abcdefghijklmnopqrstuvwxyz_");
        int has = n > 0 && n < sizeof param && msg[n] == ':' && msg[n + 1] == ' ';
        if (has) {
            memcpy(param, msg, n);
            param[n] = 0;
        }
        return http_send_error(r, 400, has ? param : NULL, code ? code : "invalid_value", "%s",
                               msg);
    }
    case PD_ENOTFOUND: return http_send_error(r, 404, NULL, code ? code : "not_found", "%s", msg);
    case PD_EBUSY: return http_send_error(r, 409, NULL, code ? code : "conflict", "%s", msg);
    case PD_ENOMEM:
        return http_send_error(r, 503, NULL, "out_of_memory", "Out of memory; retry later.");
    case PD_EUNAVAIL: /* the job store's database is down: a retry may succeed */
        PD_LOGW("%s %s: job store: %s", r->method, r->url, msg);
        return http_send_error(r, 503, NULL, "job_store_unavailable",
                               "The job store is unavailable; retry later.");
    default:
        PD_LOGE("%s %s: job store: %s", r->method, r->url, msg);
        return http_send_error(r, 500, NULL, "internal_error", "The job store failed: %s", msg);
    }
}

/* ---- POST /v1/files -------------------------------------------------------------------- */

/* Writes all of data to fd. 0, or -1 with errno. */
static int write_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Validates data as a training file: written to a temp file in the data
 * directory (unlinked at once where /proc/self/fd can name it), checked by
 * pd_train_validate_file. PD_OK with *n_examples, PD_EFORMAT (or another
 * data error) with msg (cap bytes) saying "line N: what", PD_EIO / PD_ENOMEM
 * with msg. */
static int validate_upload(srv *s, const char *data, size_t len, int *n_examples, char *msg,
                           size_t cap)
{
    char tmpl[PATH_MAX], path[PATH_MAX];
    int n = snprintf(tmpl, sizeof tmpl, "%s/.upload-XXXXXX", pd_jobstore_data_dir(s->js));
    if (n < 0 || (size_t)n >= sizeof tmpl) {
        snprintf(msg, cap, "the data directory's path is too long");
        return PD_EIO;
    }
    int fd = mkostemp(tmpl, O_CLOEXEC);
    if (fd < 0) {
        snprintf(msg, cap, "cannot create a temp file in the data directory: %s",
                 strerror(errno));
        return PD_EIO;
    }
    /* no name, no orphan after a crash: read it back through /proc */
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    int named = access(path, R_OK) != 0;
    if (named) snprintf(path, sizeof path, "%s", tmpl);
    else unlink(tmpl);
    int rc = PD_OK;
    if (write_all(fd, data, len) < 0) {
        snprintf(msg, cap, "cannot write a temp file in the data directory: %s",
                 strerror(errno));
        rc = PD_EIO;
    }
    pd_err err;
    pd_err_clear(&err);
    if (rc == PD_OK) rc = pd_train_validate_file(s->model, path, 1, n_examples, &err);
    if (rc < 0 && err.msg[0]) worker_data_message(err.msg, path, "", msg, cap);
    if (close(fd) < 0 && rc == PD_OK) {
        snprintf(msg, cap, "closing a temp file: %s", strerror(errno));
        rc = PD_EIO;
    }
    if (named) unlink(tmpl);
    return rc;
}

/* The bytes of a text part as a string (trailing white space dropped) into
 * out (cap bytes); -1 when too long. */
static int part_text(const mp_part *p, char *out, size_t cap)
{
    size_t n = p->len;
    while (n && (p->data[n - 1] == '\r' || p->data[n - 1] == '\n' || p->data[n - 1] == ' '))
        n--;
    if (n >= cap || memchr(p->data, 0, n)) return -1;
    memcpy(out, p->data, n);
    out[n] = 0;
    return 0;
}

enum MHD_Result route_files_create(http_req *r)
{
    enum MHD_Result ret;
    if (http_need_jobstore(r, &ret) < 0) return ret;
    srv *s = r->s;
    char boundary[MP_BOUNDARY_MAX + 1];
    pd_err err;
    const char *ct = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_TYPE);
    if (mp_boundary(ct, boundary, &err) < 0)
        return http_send_error(r, 400, NULL, "invalid_request",
                               "POST /v1/files takes multipart/form-data with a 'file' and "
                               "'purpose' field: %s.", err.msg);
    mp_part *parts = malloc(MAX_PARTS * sizeof *parts);
    if (!parts) return http_send_error(r, 503, NULL, "out_of_memory", "Out of memory.");
    int n = mp_parse(r->body.p, r->body.len, boundary, parts, MAX_PARTS, &err);
    if (n < 0) {
        ret = http_send_error(r, 400, NULL, "invalid_multipart",
                              "The multipart/form-data body is malformed: %s.", err.msg);
        goto out;
    }
    const mp_part *file = mp_find(parts, n, "file"), *purpose = mp_find(parts, n, "purpose");
    char purpose_s[64];
    if (!purpose) {
        ret = http_send_error(r, 400, "purpose", "missing_required_parameter",
                              "Missing required parameter: 'purpose' (use \"fine-tune\").");
        goto out;
    }
    if (part_text(purpose, purpose_s, sizeof purpose_s) < 0 ||
        (strcmp(purpose_s, "fine-tune") && strcmp(purpose_s, PREFIX_PURPOSE))) {
        ret = http_send_error(r, 400, "purpose", "invalid_value",
                              "Invalid purpose: this server accepts \"fine-tune\" (training "
                              "data) and \"" PREFIX_PURPOSE "\" (a prefix file, for init_from) "
                              "files.");
        goto out;
    }
    const int is_prefix = !strcmp(purpose_s, PREFIX_PURPOSE);
    if (!file) {
        ret = http_send_error(r, 400, "file", "missing_required_parameter",
                              "Missing required parameter: 'file'.");
        goto out;
    }
    const char *filename = file->has_filename && file->filename[0] ? file->filename
                                                                    : DEFAULT_FILENAME;
    char msg[1024];
    int n_examples = 0, rc;
    if (is_prefix) { /* a prefix file for this model (safetensors) */
        pd_prefix *pf;
        rc = pd_prefix_parse(file->data, file->len, "upload", s->model, &pf, &err);
        if (rc < 0) {
            ret = http_send_error(r, rc == PD_ENOMEM ? 503 : 400, "file", "invalid_file",
                                  "Invalid prefix file '%s': %s", filename, err.msg);
            goto out;
        }
        pd_prefix_release(pf);
    } else {
        rc = validate_upload(s, file->data, file->len, &n_examples, msg, sizeof msg);
    }
    if (rc == PD_EIO || rc == PD_ENOMEM || rc == PD_ESYS) {
        PD_LOGE("POST /v1/files: %s", msg);
        ret = http_send_error(r, rc == PD_ENOMEM ? 503 : 500, NULL, "internal_error",
                              "The upload could not be validated: %s.", msg);
        goto out;
    }
    if (rc < 0) {
        ret = http_send_error(r, 400, "file", "invalid_file",
                              "Invalid file '%s' for fine-tuning: %s", filename, msg);
        goto out;
    }
    json_t *obj;
    rc = pd_jobstore_file_create(s->js, filename, purpose_s, file->data, file->len, NULL, &obj,
                                 &err);
    if (rc < 0) {
        ret = http_send_store_error(r, rc, &err, NULL);
        goto out;
    }
    PD_LOGI("file %s stored: '%s', %zu bytes, %d examples",
            json_string_value(json_object_get(obj, "id")), filename, file->len, n_examples);
    ret = http_send_json(r, 200, obj);
out:
    free(parts);
    return ret;
}

/* ---- the other file routes ------------------------------------------------------------ */

enum MHD_Result route_files_list(http_req *r)
{
    enum MHD_Result ret;
    const char *after;
    int limit;
    if (http_need_jobstore(r, &ret) < 0 || http_list_args(r, &after, &limit, &ret) < 0)
        return ret;
    const char *purpose = http_query(r, "purpose");
    json_t *out;
    pd_err err;
    int rc = pd_jobstore_file_list(r->s->js, purpose && *purpose ? purpose : NULL, after, limit,
                                   &out, &err);
    if (rc == PD_ENOTFOUND)
        return http_send_error(r, 400, "after", "invalid_value", "%s", err.msg);
    if (rc < 0) return http_send_store_error(r, rc, &err, NULL);
    return http_send_json(r, 200, out);
}

enum MHD_Result route_files_get(http_req *r)
{
    enum MHD_Result ret;
    if (http_need_jobstore(r, &ret) < 0) return ret;
    json_t *out;
    pd_err err;
    int rc = pd_jobstore_file_get(r->s->js, r->param, &out, &err);
    if (rc < 0) return http_send_store_error(r, rc, &err, "file_not_found");
    return http_send_json(r, 200, out);
}

enum MHD_Result route_files_content(http_req *r)
{
    enum MHD_Result ret;
    if (http_need_jobstore(r, &ret) < 0) return ret;
    char path[PATH_MAX];
    pd_err err;
    int rc = pd_jobstore_file_path(r->s->js, r->param, path, sizeof path, &err);
    if (rc < 0) return http_send_store_error(r, rc, &err, "file_not_found");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        PD_LOGE("GET %s: %s: %s", r->url, path, strerror(e));
        return http_send_error(r, e == ENOENT ? 404 : 500, NULL, "file_not_found",
                               "The contents of file %s cannot be read.", r->param);
    }
    struct MHD_Response *resp = MHD_create_response_from_fd((uint64_t)st.st_size, fd);
    if (!resp) {
        close(fd);
        return MHD_NO;
    }
    if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                "application/octet-stream") != MHD_YES) {
        MHD_destroy_response(resp);
        return MHD_NO;
    }
    return http_send_response(r, 200, resp);
}

enum MHD_Result route_files_delete(http_req *r)
{
    enum MHD_Result ret;
    if (http_need_jobstore(r, &ret) < 0) return ret;
    json_t *out;
    pd_err err;
    int rc = pd_jobstore_file_delete(r->s->js, r->param, &out, &err);
    if (rc == PD_EBUSY) return http_send_store_error(r, rc, &err, "file_in_use");
    if (rc < 0) return http_send_store_error(r, rc, &err, "file_not_found");
    PD_LOGI("file %s deleted", r->param);
    return http_send_json(r, 200, out);
}
