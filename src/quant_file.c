/* quant_file.c — a GGUF model rewritten in another weight type: the file
 * types, llama.cpp's per-tensor mixes and pd_quantize_gguf (quantize.h has
 * the rules in full). */
#include "prefixd/quantize.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "prefixd/gguf.h"
#include "prefixd/quant.h"
#include "prefixd/threadpool.h"

typedef struct ftype_info {
    int ftype;
    const char *name;
    int base; /* pd_qtype */
} ftype_info;

static const ftype_info ftypes[] = {
    {PD_FTYPE_F32, "F32", PD_Q_F32},         {PD_FTYPE_F16, "F16", PD_Q_F16},
    {PD_FTYPE_BF16, "BF16", PD_Q_BF16},      {PD_FTYPE_Q8_0, "Q8_0", PD_Q_Q8_0},
    {PD_FTYPE_Q4_0, "Q4_0", PD_Q_Q4_0},      {PD_FTYPE_Q4_1, "Q4_1", PD_Q_Q4_1},
    {PD_FTYPE_Q5_0, "Q5_0", PD_Q_Q5_0},      {PD_FTYPE_Q5_1, "Q5_1", PD_Q_Q5_1},
    {PD_FTYPE_Q2_K, "Q2_K", PD_Q_Q2_K},      {PD_FTYPE_Q3_K_S, "Q3_K_S", PD_Q_Q3_K},
    {PD_FTYPE_Q3_K_M, "Q3_K_M", PD_Q_Q3_K},  {PD_FTYPE_Q3_K_L, "Q3_K_L", PD_Q_Q3_K},
    {PD_FTYPE_Q4_K_S, "Q4_K_S", PD_Q_Q4_K},  {PD_FTYPE_Q4_K_M, "Q4_K_M", PD_Q_Q4_K},
    {PD_FTYPE_Q5_K_S, "Q5_K_S", PD_Q_Q5_K},  {PD_FTYPE_Q5_K_M, "Q5_K_M", PD_Q_Q5_K},
    {PD_FTYPE_Q6_K, "Q6_K", PD_Q_Q6_K},
};
#define N_FTYPES (int)(sizeof ftypes / sizeof ftypes[0])

static const ftype_info *ftype_find(int ftype)
{
    for (int i = 0; i < N_FTYPES; i++)
        if (ftypes[i].ftype == ftype) return &ftypes[i];
    return NULL;
}

int pd_ftype_from_name(const char *name)
{
    if (!name) return -1;
    for (int i = 0; i < N_FTYPES; i++)
        if (!strcasecmp(name, ftypes[i].name)) return ftypes[i].ftype;
    if (!strcasecmp(name, "Q3_K")) return PD_FTYPE_Q3_K_M;
    if (!strcasecmp(name, "Q4_K")) return PD_FTYPE_Q4_K_M;
    if (!strcasecmp(name, "Q5_K")) return PD_FTYPE_Q5_K_M;
    return -1;
}

const char *pd_ftype_name(int ftype)
{
    const ftype_info *f = ftype_find(ftype);
    return f ? f->name : NULL;
}

int pd_ftype_base_type(int ftype)
{
    const ftype_info *f = ftype_find(ftype);
    return f ? f->base : -1;
}

pd_quantize_params pd_quantize_default_params(void)
{
    pd_quantize_params p = {PD_FTYPE_F16, 0, NULL, 0};
    return p;
}

/* ---- the mix ---- */

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* The block index of "blk.N.…", or -1. */
static int layer_of(const char *name)
{
    int l = -1;
    if (sscanf(name, "blk.%d.", &l) != 1) return -1;
    return l;
}

static int more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

static int is_converted(const char *name, int n_dims)
{
    return ends_with(name, "weight") && n_dims >= 2 && !strstr(name, "_norm.weight") &&
           !strstr(name, "ffn_gate_inp.weight") && strcmp(name, "position_embd.weight") != 0 &&
           strcmp(name, "token_types.weight") != 0;
}

/* llama_tensor_get_type for the k-quant and legacy file types. */
static int mix_type(int ftype, int t, const pd_quantize_model_info *mi, const char *name,
                    int64_t ne0)
{
    int layer = layer_of(name), n = mi->n_layers;
    int gqa = mi->n_kv_heads > 0 ? mi->n_heads / mi->n_kv_heads : 1;
    if (!strcmp(name, "output.weight") || (!mi->has_output && !strcmp(name, "token_embd.weight"))) {
        if (ne0 % pd_qtype_block_size(t) != 0) return PD_Q_Q8_0;
        return t != PD_Q_Q8_0 ? PD_Q_Q6_K : t;
    }
    if (!strcmp(name, "token_embd.weight")) return t;
    if (strstr(name, "attn_v.weight")) {
        switch (ftype) {
        case PD_FTYPE_Q2_K: t = gqa >= 4 ? PD_Q_Q4_K : PD_Q_Q3_K; break;
        case PD_FTYPE_Q3_K_M: t = layer < 2 ? PD_Q_Q5_K : PD_Q_Q4_K; break;
        case PD_FTYPE_Q3_K_L: t = PD_Q_Q5_K; break;
        case PD_FTYPE_Q4_K_M:
        case PD_FTYPE_Q5_K_M:
            if (more_bits(layer, n)) t = PD_Q_Q6_K;
            break;
        case PD_FTYPE_Q4_K_S:
            if (layer < 4) t = PD_Q_Q5_K;
            break;
        }
        /* llama.cpp's "70B": 80 layers with grouped-query attention */
        if (n == 80 && gqa > 1 && (t == PD_Q_Q3_K || t == PD_Q_Q4_K)) t = PD_Q_Q5_K;
        return t;
    }
    if (strstr(name, "ffn_down")) {
        switch (ftype) {
        case PD_FTYPE_Q2_K: return PD_Q_Q3_K;
        case PD_FTYPE_Q3_K_M: return layer < n / 16 ? PD_Q_Q5_K : PD_Q_Q4_K;
        case PD_FTYPE_Q3_K_L: return PD_Q_Q5_K;
        case PD_FTYPE_Q4_K_M:
        case PD_FTYPE_Q5_K_M: return more_bits(layer, n) ? PD_Q_Q6_K : t;
        case PD_FTYPE_Q4_K_S: return layer < n / 8 ? PD_Q_Q5_K : t;
        }
        return t;
    }
    if (strstr(name, "attn_output.weight")) {
        switch (ftype) {
        case PD_FTYPE_Q2_K: return PD_Q_Q3_K;
        case PD_FTYPE_Q3_K_M: return PD_Q_Q4_K;
        case PD_FTYPE_Q3_K_L: return PD_Q_Q5_K;
        }
        return t;
    }
    if (strstr(name, "attn_qkv.weight")) {
        switch (ftype) {
        case PD_FTYPE_Q3_K_M:
        case PD_FTYPE_Q3_K_L: return PD_Q_Q4_K;
        case PD_FTYPE_Q4_K_M: return PD_Q_Q5_K;
        case PD_FTYPE_Q5_K_M: return PD_Q_Q6_K;
        }
    }
    return t;
}

/* The tensor's type; *fell_back set when its rows forced a fallback. */
static int pick_type(int ftype, int pure, const pd_quantize_model_info *mi, const char *name,
                     int64_t ne0, int n_dims, int in_type, int *fell_back)
{
    int t = pd_ftype_base_type(ftype);
    PD_ASSERT(t >= 0 && mi && name);
    *fell_back = 0;
    if (!is_converted(name, n_dims)) return in_type;
    if (!pure && pd_qtype_block_size(t) > 1) t = mix_type(ftype, t, mi, name, ne0);
    if (ne0 % pd_qtype_block_size(t) == 0) return t;
    *fell_back = 1;
    switch (t) {
    case PD_Q_Q2_K:
    case PD_Q_Q3_K: t = PD_Q_Q4_0; break; /* llama.cpp: IQ4_NL */
    case PD_Q_Q4_K: t = PD_Q_Q5_0; break;
    case PD_Q_Q5_K: t = PD_Q_Q5_1; break;
    case PD_Q_Q6_K: t = PD_Q_Q8_0; break;
    default: break;
    }
    return ne0 % pd_qtype_block_size(t) == 0 ? t : PD_Q_F16;
}

int pd_quantize_tensor_type(int ftype, int pure, const pd_quantize_model_info *mi,
                            const char *name, int64_t ne0, int n_dims, int in_type)
{
    int fell_back;
    return pick_type(ftype, pure, mi, name, ne0, n_dims, in_type, &fell_back);
}

/* ---- the file ---- */

/* llama.cpp's tensor order: non-block tensors first, then by block, by name
 * within each. */
static int tensor_order(const void *a, const void *b)
{
    const pd_gguf_tensor *x = *(const pd_gguf_tensor *const *)a;
    const pd_gguf_tensor *y = *(const pd_gguf_tensor *const *)b;
    char nx[PD_GGUF_MAX_NAME + 1], ny[PD_GGUF_MAX_NAME + 1];
    snprintf(nx, sizeof nx, "%.*s", (int)x->name.len, x->name.ptr);
    snprintf(ny, sizeof ny, "%.*s", (int)y->name.len, y->name.ptr);
    int lx = layer_of(nx), ly = layer_of(ny);
    if (lx != ly) return lx < ly ? -1 : 1;
    return strcmp(nx, ny);
}

static int get_count(const pd_gguf *g, const char *arch, const char *suffix, int def, int *out,
                     pd_err *err)
{
    char key[128];
    int64_t v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    *out = def;
    if (!pd_gguf_find_kv(g, key)) return PD_OK;
    int rc = pd_gguf_get_int(g, key, 0, 1 << 24, &v, err);
    if (rc == PD_OK) *out = (int)v;
    return rc;
}

static int model_info(const pd_gguf *g, pd_quantize_model_info *mi, pd_err *err)
{
    pd_gguf_str arch;
    char a[64] = "llama";
    int rc;
    memset(mi, 0, sizeof *mi);
    if (pd_gguf_find_kv(g, "general.architecture")) {
        if ((rc = pd_gguf_get_str(g, "general.architecture", &arch, err)) < 0) return rc;
        snprintf(a, sizeof a, "%.*s", (int)(arch.len < 60 ? arch.len : 60), arch.ptr);
    }
    if ((rc = get_count(g, a, "block_count", 0, &mi->n_layers, err)) < 0 ||
        (rc = get_count(g, a, "attention.head_count", 1, &mi->n_heads, err)) < 0 ||
        (rc = get_count(g, a, "attention.head_count_kv", mi->n_heads, &mi->n_kv_heads, err)) < 0)
        return rc;
    mi->has_output = pd_gguf_find_tensor(g, "output.weight") != NULL;
    return PD_OK;
}

static int copy_metadata(const pd_gguf *g, pd_gguf_writer *w, const pd_quantize_params *p,
                         pd_err *err)
{
    static const char *const dropped[] = {"split.no", "split.count", "split.tensors.count"};
    int rc, have_ftype = 0, have_qv = 0, have_name = 0;
    for (size_t i = 0; i < g->n_kv; i++) {
        const pd_gguf_kv *kv = &g->kv[i];
        int drop = 0;
        for (size_t k = 0; k < sizeof dropped / sizeof dropped[0]; k++)
            drop |= pd_gguf_str_eq(kv->key, dropped[k]);
        if (drop) continue;
        if (pd_gguf_str_eq(kv->key, "general.file_type")) {
            rc = pd_gguf_add_u32(w, "general.file_type", (uint32_t)p->ftype, err);
            have_ftype = 1;
        } else if (pd_gguf_str_eq(kv->key, "general.quantization_version")) {
            rc = pd_gguf_add_u32(w, "general.quantization_version", 2, err);
            have_qv = 1;
        } else if (p->name && pd_gguf_str_eq(kv->key, "general.name")) {
            rc = pd_gguf_add_str(w, "general.name", p->name, err);
            have_name = 1;
        } else {
            rc = pd_gguf_add_kv(w, kv, err);
        }
        if (rc < 0) return rc;
    }
    if (!have_qv && (rc = pd_gguf_add_u32(w, "general.quantization_version", 2, err)) < 0)
        return rc;
    if (!have_ftype && (rc = pd_gguf_add_u32(w, "general.file_type", (uint32_t)p->ftype, err)) < 0)
        return rc;
    if (p->name && !have_name && (rc = pd_gguf_add_str(w, "general.name", p->name, err)) < 0)
        return rc;
    return PD_OK;
}

/* One tensor's conversion, split over the pool in bands of rows. */
typedef struct convert_job {
    const pd_gguf_tensor *t;
    int to;
    uint8_t *dst;
    float *rows;     /* (n_threads, ne0) scratch */
    int64_t n_rows;
    int n_tasks;
} convert_job;

static void convert_band(void *ctx, int task, int thread)
{
    const convert_job *j = ctx;
    int64_t ne0 = j->t->ne[0];
    size_t in_rb = pd_qtype_row_bytes(j->t->type, ne0), out_rb = pd_qtype_row_bytes(j->to, ne0);
    int64_t r0 = j->n_rows * task / j->n_tasks, r1 = j->n_rows * (task + 1) / j->n_tasks;
    float *row = j->rows + (size_t)thread * (size_t)ne0;
    const uint8_t *src = j->t->data;
    for (int64_t r = r0; r < r1; r++) {
        pd_quant_dequantize_row(j->t->type, src + r * in_rb, row, ne0);
        pd_quant_quantize_row(j->to, row, j->dst + r * out_rb, ne0);
    }
}

/* Converts tensor t from its type to type `to` into dst (rows independent,
 * so the bytes do not depend on the threads). */
static void convert_tensor(pd_pool *pool, const pd_gguf_tensor *t, int to, uint8_t *dst,
                           float *rows)
{
    convert_job j = {t, to, dst, rows, (int64_t)(t->n_elems / (uint64_t)t->ne[0]), 0};
    j.n_tasks = j.n_rows < 256 ? (int)j.n_rows : 256;
    pd_pool_run(pool, convert_band, &j, j.n_tasks);
}

int pd_quantize_gguf(const char *in_path, const char *out_path, const pd_quantize_params *p,
                     pd_quantize_stats *stats, pd_err *err)
{
    pd_quantize_stats st = {0};
    if (!p || !ftype_find(p->ftype))
        return pd_err_set(err, PD_EINVAL, "%s: unknown file type %d", out_path, p ? p->ftype : -1);
    pd_gguf *g = NULL;
    pd_gguf_writer *w = NULL;
    const pd_gguf_tensor **order = NULL;
    int *types = NULL;
    uint8_t *buf = NULL;
    float *row = NULL;
    pd_pool *pool = NULL;
    pd_quantize_model_info mi;
    int rc;
    if ((rc = pd_gguf_open(in_path, &g, err)) < 0) return rc;
    if ((rc = pd_pool_create(p->n_threads, &pool, err)) < 0) goto done;
    if ((rc = model_info(g, &mi, err)) < 0) goto done;
    order = malloc((g->n_tensors + 1) * sizeof *order);
    types = malloc((g->n_tensors + 1) * sizeof *types);
    if (!order || !types) {
        rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory", in_path);
        goto done;
    }
    for (size_t i = 0; i < g->n_tensors; i++) order[i] = &g->tensors[i];
    qsort(order, g->n_tensors, sizeof *order, tensor_order);

    /* the plan: each tensor's output type, the converted bytes, the longest row */
    uint64_t total = 0;
    int64_t max_row = 1;
    for (size_t i = 0; i < g->n_tensors; i++) {
        const pd_gguf_tensor *t = order[i];
        char name[PD_GGUF_MAX_NAME + 1];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        int fell_back;
        int to = pick_type(p->ftype, p->pure, &mi, name, t->ne[0], t->n_dims, t->type,
                           &fell_back);
        types[i] = to;
        st.n_tensors++;
        st.in_bytes += t->nbytes;
        if (to == t->type) {
            st.out_bytes += t->nbytes;
            continue;
        }
        if (!pd_qtype_name(t->type)) {
            rc = pd_err_set(err, PD_EUNSUPPORTED,
                            "%s: tensor %s has type %s, which prefixd cannot convert (it reads "
                            "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K … Q6_K)",
                            in_path, name, pd_ggml_type_name(t->type));
            goto done;
        }
        st.n_fallback += fell_back;
        st.n_converted++;
        uint64_t rows = t->n_elems / (uint64_t)t->ne[0];
        total += rows * pd_qtype_row_bytes(to, t->ne[0]);
        st.out_bytes += rows * pd_qtype_row_bytes(to, t->ne[0]);
        if (t->ne[0] > max_row) max_row = t->ne[0];
    }
    if (total > SIZE_MAX / 2) {
        rc = pd_err_set(err, PD_ENOMEM, "%s: %llu bytes of converted tensors is too much", in_path,
                        (unsigned long long)total);
        goto done;
    }
    buf = malloc(total ? (size_t)total : 1);
    row = malloc((size_t)max_row * (size_t)pd_pool_threads(pool) * sizeof *row);
    if (!buf || !row) {
        rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory for %llu bytes of converted tensors",
                        in_path, (unsigned long long)total);
        goto done;
    }
    if ((rc = pd_gguf_writer_create(&w, err)) < 0 || (rc = copy_metadata(g, w, p, err)) < 0)
        goto done;
    uint8_t *next = buf;
    for (size_t i = 0; i < g->n_tensors; i++) {
        const pd_gguf_tensor *t = order[i];
        char name[PD_GGUF_MAX_NAME + 1];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        const void *data = t->data;
        if (types[i] != t->type) {
            convert_tensor(pool, t, types[i], next, row);
            data = next;
            next += t->n_elems / (uint64_t)t->ne[0] * pd_qtype_row_bytes(types[i], t->ne[0]);
        }
        if ((rc = pd_gguf_add_tensor(w, name, t->n_dims, t->ne, types[i], data, err)) < 0)
            goto done;
    }
    rc = pd_gguf_writer_write(w, out_path, err);
done:
    if (rc >= 0 && stats) *stats = st;
    pd_gguf_writer_free(w);
    pd_pool_free(pool);
    free(buf);
    free(row);
    free(order);
    free(types);
    pd_gguf_free(g);
    return rc;
}
