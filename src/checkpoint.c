/* checkpoint.c — training checkpoints as safetensors files (format in
 * prefixd/checkpoint.h). */
#include "prefixd/checkpoint.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prefixd/safetensors.h"

int pd_train_ckpt_save(const char *path, const pd_train_ckpt *c, pd_err *err)
{
    PD_ASSERT(path && c && c->params && c->m && c->v && (c->order || c->n_order == 0));
    pd_st_writer *w = pd_st_writer_new();
    if (!w) return pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);
    char buf[80];
    int rc = pd_st_writer_set_meta(w, "format", PD_TRAIN_CKPT_FORMAT, err);
#define META(key, ...)                                                                \
    do {                                                                              \
        if (rc == PD_OK) {                                                            \
            snprintf(buf, sizeof buf, __VA_ARGS__);                                   \
            rc = pd_st_writer_set_meta(w, key, buf, err);                             \
        }                                                                             \
    } while (0)
    META("config_hash", "%016" PRIx64, c->config_hash);
    META("step", "%d", c->step);
    META("epoch", "%d", c->epoch);
    META("pos", "%d", c->pos);
    META("adam_t", "%" PRId64, c->adam_t);
    META("rng", "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 "%016" PRIx64, c->rng.s[0],
         c->rng.s[1], c->rng.s[2], c->rng.s[3]);
    META("trained_tokens", "%" PRIu64, c->trained_tokens);
    META("epoch_loss_sum", "%.17g", c->epoch_loss_sum);
    META("epoch_targets", "%.17g", c->epoch_targets);
    META("train_loss", "%.17g", c->train_loss);
    META("valid_loss", "%.17g", c->valid_loss);
    if (c->best) {
        META("best_valid_loss", "%.17g", c->best_valid_loss);
        META("best_step", "%d", c->best_step);
        META("bad_evals", "%d", c->bad_evals);
    }
#undef META
    int64_t np = (int64_t)c->n_params, no = c->n_order;
    if (rc == PD_OK) rc = pd_st_writer_add(w, "params", PD_ST_F32, 1, &np, c->params, err);
    if (rc == PD_OK) rc = pd_st_writer_add(w, "m", PD_ST_F32, 1, &np, c->m, err);
    if (rc == PD_OK) rc = pd_st_writer_add(w, "v", PD_ST_F32, 1, &np, c->v, err);
    if (rc == PD_OK) rc = pd_st_writer_add(w, "order", PD_ST_I32, 1, &no, c->order, err);
    if (rc == PD_OK && c->best)
        rc = pd_st_writer_add(w, "best", PD_ST_F32, 1, &np, c->best, err);
    if (rc == PD_OK) rc = pd_st_writer_write(w, path, err);
    pd_st_writer_free(w);
    return rc;
}

/* ---- reading ---- */

static const char *meta(const pd_st *st, const char *key, const char *path, int *rc,
                        pd_err *err)
{
    const char *v = pd_st_meta_get(st, key);
    if (!v && *rc == PD_OK)
        *rc = pd_err_set(err, PD_EFORMAT, "%s: checkpoint metadata \"%s\" is missing", path,
                         key);
    return v;
}

static void bad(const char *key, const char *path, int *rc, pd_err *err)
{
    if (*rc == PD_OK)
        *rc = pd_err_set(err, PD_EFORMAT, "%s: checkpoint metadata \"%s\" is not valid", path,
                         key);
}

static int64_t get_int(const pd_st *st, const char *key, int64_t lo, int64_t hi,
                       const char *path, int *rc, pd_err *err)
{
    const char *s = meta(st, key, path, rc, err);
    if (!s) return 0;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        bad(key, path, rc, err);
        return 0;
    }
    return v;
}

static double get_double(const pd_st *st, const char *key, const char *path, int *rc,
                         pd_err *err)
{
    const char *s = meta(st, key, path, rc, err);
    if (!s) return 0.0;
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end) bad(key, path, rc, err);
    return v;
}

static uint64_t hex64(const char *s, int *ok)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char ch = s[i];
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (d < 0) *ok = 0;
        v = v << 4 | (uint64_t)(d < 0 ? 0 : d);
    }
    return v;
}

/* Copies tensor name (dtype, 1-D) into a new buffer of its element count. */
static void *get_tensor(const pd_st *st, const char *name, int dtype, size_t *n,
                        const char *path, int *rc, pd_err *err)
{
    if (*rc != PD_OK) return NULL;
    const pd_st_tensor *t = pd_st_find(st, name);
    if (!t || t->dtype != dtype || t->n_dims != 1) {
        *rc = pd_err_set(err, PD_EFORMAT, "%s: checkpoint tensor \"%s\" is missing or not %s[n]",
                         path, name, pd_st_dtype_name(dtype));
        return NULL;
    }
    void *buf = malloc(t->nbytes ? t->nbytes : 1);
    if (!buf) {
        *rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    memcpy(buf, t->data, t->nbytes);
    *n = (size_t)t->numel;
    return buf;
}

int pd_train_ckpt_load(const char *path, pd_train_ckpt *c, pd_err *err)
{
    PD_ASSERT(path && c);
    memset(c, 0, sizeof *c);
    if (access(path, F_OK) != 0)
        return pd_err_set(err, PD_ENOTFOUND, "%s: no checkpoint", path);
    pd_st *st;
    int rc = pd_st_open(path, &st, err);
    if (rc < 0) return rc;
    const char *fmt = pd_st_meta_get(st, "format");
    if (!fmt || strcmp(fmt, PD_TRAIN_CKPT_FORMAT) != 0) {
        int other_version = fmt && !strncmp(fmt, "prefixd.train-checkpoint/", 25);
        rc = pd_err_set(err, other_version ? PD_EVERSION : PD_EFORMAT,
                        "%s: not a training checkpoint (format \"%s\", want \"%s\")", path,
                        fmt ? fmt : "", PD_TRAIN_CKPT_FORMAT);
        pd_st_free(st);
        return rc;
    }
    const char *h = meta(st, "config_hash", path, &rc, err);
    int ok = h && strlen(h) == 16;
    if (ok) c->config_hash = hex64(h, &ok);
    if (!ok) bad("config_hash", path, &rc, err);
    const char *r = meta(st, "rng", path, &rc, err);
    ok = r && strlen(r) == 64;
    for (int i = 0; ok && i < 4; i++) c->rng.s[i] = hex64(r + 16 * i, &ok);
    if (!ok) bad("rng", path, &rc, err);
    c->step = (int)get_int(st, "step", 0, INT32_MAX, path, &rc, err);
    c->epoch = (int)get_int(st, "epoch", 0, INT32_MAX, path, &rc, err);
    c->pos = (int)get_int(st, "pos", 0, INT32_MAX, path, &rc, err);
    c->adam_t = get_int(st, "adam_t", 0, INT64_MAX, path, &rc, err);
    c->trained_tokens = (uint64_t)get_int(st, "trained_tokens", 0, INT64_MAX, path, &rc, err);
    c->epoch_loss_sum = get_double(st, "epoch_loss_sum", path, &rc, err);
    c->epoch_targets = get_double(st, "epoch_targets", path, &rc, err);
    c->train_loss = get_double(st, "train_loss", path, &rc, err);
    c->valid_loss = get_double(st, "valid_loss", path, &rc, err);
    size_t np = 0, nm = 0, nv = 0, no = 0;
    c->params = get_tensor(st, "params", PD_ST_F32, &np, path, &rc, err);
    c->m = get_tensor(st, "m", PD_ST_F32, &nm, path, &rc, err);
    c->v = get_tensor(st, "v", PD_ST_F32, &nv, path, &rc, err);
    c->order = get_tensor(st, "order", PD_ST_I32, &no, path, &rc, err);
    size_t nb = np;
    c->best_valid_loss = NAN;
    c->best_step = -1;
    if (rc == PD_OK && pd_st_find(st, "best")) {
        c->best = get_tensor(st, "best", PD_ST_F32, &nb, path, &rc, err);
        c->best_valid_loss = get_double(st, "best_valid_loss", path, &rc, err);
        c->best_step = (int)get_int(st, "best_step", 0, INT32_MAX, path, &rc, err);
        c->bad_evals = (int)get_int(st, "bad_evals", 0, INT32_MAX, path, &rc, err);
    }
    if (rc == PD_OK && (nm != np || nv != np || nb != np || no > INT32_MAX))
        rc = pd_err_set(err, PD_EFORMAT, "%s: checkpoint tensors disagree in size", path);
    if (rc == PD_OK && c->pos > (int)no)
        rc = pd_err_set(err, PD_EFORMAT, "%s: checkpoint position %d is past its order of %zu",
                        path, c->pos, no);
    c->n_params = np;
    c->n_order = (int)no;
    pd_st_free(st);
    if (rc < 0) pd_train_ckpt_free(c);
    return rc;
}

void pd_train_ckpt_free(pd_train_ckpt *c)
{
    if (!c) return;
    free(c->order);
    free(c->params);
    free(c->m);
    free(c->v);
    free(c->best);
    c->order = NULL;
    c->params = c->m = c->v = c->best = NULL;
}
