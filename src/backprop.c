/* backprop.c — forward with saved activations and backward into the prefix
 * (contract in prefixd/backprop.h).
 *
 * Letters: R rows of the packed batch, C = dim, KV = kv_dim, H = hidden_dim,
 * V = vocab, hd = head_dim, P prefix slots, L layers. The forward pass repeats
 * the engine's float operations (the same RMSNorm, rotary and attention
 * loops; the products by pd_wmatmul_float: the engine's pd_wmatmul for
 * F32/F16/BF16 and the float-path types, so its logits are the engine's;
 * without the engine's 8-bit rounding of the input for the integer-path
 * types, so that the forward is the smooth function whose gradient the
 * backward pass computes). The backward pass keeps
 * the weights frozen: only activation gradients flow, through
 *   loss -> final RMSNorm -> for each layer, last first:
 *     FFN:  dx += RMSNormᵀ(W1ᵀ·(dg ⊙ h3 ⊙ silu'(h1)) + W3ᵀ·(dg ⊙ silu(h1))), dg = W2ᵀ·dx
 *     attn: dao = Woᵀ·dx; softmax backward per head into dq, dk, dv of the
 *           real rows and into d(prefix keys), d(prefix values); rotary
 *           (adjacent or NeoX, scaled) transposed on dq, dk; the per-head
 *           q/k RMSNorms transposed (qwen3); biases are constants;
 *           dx += RMSNormᵀ(Wqᵀdq + Wkᵀdk + Wvᵀdv).
 * Backward products use cblas_sgemm (dY·W, no batch-invariance needed),
 * through pd_wmatmul_t: quantised weights stay quantised, dequantised a band
 * of rows at a time into b->wdeq. */
#include "prefixd/backprop.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/matmul.h"
#include "prefixd/threadpool.h"
#include "attention.h"
#include "ops.h"

#define LOGIT_CHUNK 64

struct pd_backprop {
    const pd_model *m;
    int max_rows, max_prefix, max_ctx; /* max_ctx: real tokens one row may see */
    pd_pool *pool;
    /* per-row layout of the current batch */
    int *row_start;   /* (R) first row of the row's example */
    int *row_pos;     /* (R) position of the row within its example */
    size_t *att_off;  /* (R) offset of the row's probabilities in one layer */
    size_t att_layer; /* floats of probabilities per layer (capacity) */
    /* saved activations */
    float *x_in;      /* (L, R, C) residual entering each layer */
    float *rs1;       /* (L, R) 1/rms of x_in */
    float *xn1;       /* (L, R, C) attention RMSNorm output */
    float *q;         /* (L, R, QD) rotated queries (QD = q_dim) */
    float *k, *v;     /* (L, R, KV) rotated keys, values */
    float *att;       /* (L, att_layer) softmax probabilities, per row: heads x (P + pos + 1) */
    float *ao;        /* (L, R, QD) attention output before wo */
    float *x_mid;     /* (L, R, C) residual after attention */
    float *rs2;       /* (L, R) */
    float *xn2;       /* (L, R, C) */
    float *h1, *h3;   /* (L, R, H) gate and up projections */
    float *x_fin;     /* (R, C) */
    float *rsf;       /* (R) */
    float *xnf;       /* (R, C) */
    /* scratch */
    float *rope;      /* (R, hd) cos, sin pairs */
    float *g;         /* (R, H) silu(h1) * h3, then dg */
    float *dh1;       /* (R, H) */
    float *x;         /* (R, C) running residual / gradient */
    float *dn;        /* (R, max(C, QD)) gradient at a norm output */
    float *tmp;       /* (R, max(C, QD)) */
    float *dq;        /* (R, QD) */
    /* q/k head norms (qwen3; empty otherwise): pre-norm rows and 1/rms */
    float *q_pre;     /* (L, R, QD) */
    float *k_pre;     /* (L, R, KV) */
    float *q_rs;      /* (L, R, n_heads) */
    float *k_rs;      /* (L, R, n_kv_heads) */
    float *dk, *dv;   /* (R, KV) */
    float *lg;        /* (LOGIT_CHUNK, V) logits, then their gradient */
    float *lx;        /* (LOGIT_CHUNK, C) */
    float *wdeq;      /* dequantised rows of a weight for pd_wmatmul_t (0 for F32) */
    int *tgt_row;     /* (R) row predicting each target */
    int *tgt_tok;     /* (R) the target token */
    const float **tgt_soft; /* (R) the target's teacher distribution (V), or NULL */
    float *tgt_w;     /* (R) the target's cross-entropy weight with soft targets */
    void *block;
};

int pd_backprop_create(const pd_model *m, int max_rows, int max_prefix, int n_threads,
                       pd_backprop **out, pd_err *err)
{
    *out = NULL;
    const pd_config *c = &m->cfg;
    if (max_rows < 2 || max_rows > (1 << 16) || max_prefix < 0 || max_prefix >= c->seq_len)
        return pd_err_set(err, PD_EINVAL, "backprop limits out of range: rows %d, prefix %d",
                          max_rows, max_prefix);
    int vrc = pd_config_validate(c, "backprop", err);
    if (vrc < 0) return vrc;
    pd_backprop *b = calloc(1, sizeof *b);
    if (!b) return pd_err_set(err, PD_ENOMEM, "out of memory for backprop");
    b->m = m;
    b->max_rows = max_rows;
    b->max_prefix = max_prefix;
    b->max_ctx = max_rows < c->seq_len ? max_rows : c->seq_len;
    int rc = pd_pool_create(n_threads, &b->pool, err);
    if (rc < 0) {
        free(b);
        return rc;
    }
    size_t R = (size_t)max_rows, L = (size_t)c->n_layers, C = (size_t)c->dim;
    size_t KV = (size_t)c->kv_dim, H = (size_t)c->hidden_dim, V = (size_t)c->vocab_size;
    const size_t QD = (size_t)c->q_dim, CQ = QD > C ? QD : C;
    const size_t QN = m->w.layers[0].q_norm ? 1 : 0; /* q/k norms: all layers or none */
    b->att_layer = R * (size_t)c->n_heads * ((size_t)max_prefix + (size_t)b->max_ctx);
    size_t wdeq = pd_wmatmul_t_scratch(&m->w.wcls);
    for (int l = 0; l < c->n_layers; l++) {
        const pd_layer_weights *lw = &m->w.layers[l];
        const pd_wmat *ws[7] = {&lw->wq, &lw->wk, &lw->wv, &lw->wo, &lw->w1, &lw->w2, &lw->w3};
        for (int i = 0; i < 7; i++)
            if (pd_wmatmul_t_scratch(ws[i]) > wdeq) wdeq = pd_wmatmul_t_scratch(ws[i]);
    }
    size_t sizes[] = {L * R * C, L * R,  L * R * C,    L * R * QD,    L * R * KV,
                      L * R * KV, L * b->att_layer, L * R * QD, L * R * C, L * R,
                      L * R * C, L * R * H, L * R * H, R * C, R,
                      R * C,     R * (size_t)c->head_dim, R * H, R * H, R * C,
                      R * CQ,    R * CQ,    R * QD,     R * KV, R * KV,
                      LOGIT_CHUNK * V, LOGIT_CHUNK * C, wdeq,
                      QN * L * R * QD, QN * L * R * KV, QN * L * R * (size_t)c->n_heads,
                      QN * L * R * (size_t)c->n_kv_heads};
    float **slots[] = {&b->x_in, &b->rs1, &b->xn1, &b->q,   &b->k,  &b->v,  &b->att,
                       &b->ao,   &b->x_mid, &b->rs2, &b->xn2, &b->h1, &b->h3, &b->x_fin,
                       &b->rsf,  &b->xnf, &b->rope, &b->g,   &b->dh1, &b->x, &b->dn,
                       &b->tmp,  &b->dq,  &b->dk,  &b->dv,  &b->lg,  &b->lx, &b->wdeq,
                       &b->q_pre, &b->k_pre, &b->q_rs, &b->k_rs};
    const size_t n_slots = sizeof sizes / sizeof *sizes;
    size_t total = 0;
    for (size_t i = 0; i < n_slots; i++) total += (sizes[i] + 15) & ~(size_t)15;
    b->block = aligned_alloc(64, total * sizeof(float));
    b->row_start = malloc(R * sizeof(int));
    b->row_pos = malloc(R * sizeof(int));
    b->att_off = malloc(R * sizeof(size_t));
    b->tgt_row = malloc(R * sizeof(int));
    b->tgt_tok = malloc(R * sizeof(int));
    b->tgt_soft = malloc(R * sizeof *b->tgt_soft);
    b->tgt_w = malloc(R * sizeof(float));
    if (!b->block || !b->row_start || !b->row_pos || !b->att_off || !b->tgt_row || !b->tgt_tok ||
        !b->tgt_soft || !b->tgt_w) {
        pd_backprop_free(b);
        return pd_err_set(err, PD_ENOMEM, "out of memory for training activations (%zu MB)",
                          total * 4 >> 20);
    }
    float *p = b->block;
    for (size_t i = 0; i < n_slots; i++) {
        *slots[i] = p;
        p += (sizes[i] + 15) & ~(size_t)15;
    }
    *out = b;
    return PD_OK;
}

void pd_backprop_free(pd_backprop *b)
{
    if (!b) return;
    pd_pool_free(b->pool);
    free(b->block);
    free(b->row_start);
    free(b->row_pos);
    free(b->att_off);
    free(b->tgt_row);
    free(b->tgt_tok);
    free(b->tgt_soft);
    free(b->tgt_w);
    free(b);
}

/* ---- pieces shared by forward and backward ------------------------------ */

/* dx += RMSNormᵀ(dy): dx_c += r w_c dy_c − (r³/C) x_c Σ_j w_j dy_j x_j. */
static void rmsnorm_bwd(float *dx, const float *dy, const float *x, const float *rs,
                        const float *w, int R, int C)
{
    for (int t = 0; t < R; t++) {
        const float *xr = x + (size_t)t * C, *dyr = dy + (size_t)t * C;
        float *dxr = dx + (size_t)t * C;
        double dot = 0.0;
        for (int j = 0; j < C; j++) dot += (double)w[j] * dyr[j] * xr[j];
        float r = rs[t];
        float coef = (float)(dot * (double)r * r * r / C);
        for (int j = 0; j < C; j++) dxr[j] += r * w[j] * dyr[j] - coef * xr[j];
    }
}

/* The q/k head norms transposed (qwen3): dq <- RMSNormᵀ(dq) per head of
 * hd floats, the same for dk, from the pre-norm rows saved by the forward
 * pass; dn is the scratch. */
static void head_norm_bwd(pd_backprop *b, int l, int R)
{
    const pd_config *c = &b->m->cfg;
    const pd_layer_weights *w = &b->m->w.layers[l];
    const int QD = c->q_dim, KV = c->kv_dim, hd = c->head_dim;
    const size_t RM = (size_t)b->max_rows;
    memset(b->dn, 0, (size_t)R * QD * sizeof(float));
    rmsnorm_bwd(b->dn, b->dq, b->q_pre + (size_t)l * RM * QD,
                b->q_rs + (size_t)l * RM * c->n_heads, w->q_norm, R * c->n_heads, hd);
    memcpy(b->dq, b->dn, (size_t)R * QD * sizeof(float));
    memset(b->dn, 0, (size_t)R * KV * sizeof(float));
    rmsnorm_bwd(b->dn, b->dk, b->k_pre + (size_t)l * RM * KV,
                b->k_rs + (size_t)l * RM * c->n_kv_heads, w->k_norm, R * c->n_kv_heads, hd);
    memcpy(b->dk, b->dn, (size_t)R * KV * sizeof(float));
}

/* dX (R, K) (+)= dY (R, N) · W (N, K). */
/* dX (R, W->cols) = dY (R, W->rows) · W + beta · dX */
static void mm_back(pd_backprop *b, float *dX, const float *dY, const pd_wmat *W, int R,
                    float beta)
{
    pd_wmatmul_t(dX, dY, W, R, beta, b->wdeq);
}

typedef struct attn_ctx {
    pd_backprop *b;
    int l, P;
    const float *pk, *pv; /* prefix keys/values of this layer: (n_kv_heads, P, hd) */
    float *dpk, *dpv;     /* their gradients, or NULL */
} attn_ctx;

/* Forward attention of row t, every head (the engine's attention over the
 * packed rows of the row's own example, attention.h), one call per kv
 * group; the probabilities stay for the backward pass. */
static void attn_fwd_row(void *vctx, int t, int thread)
{
    (void)thread;
    const attn_ctx *a = vctx;
    pd_backprop *b = a->b;
    const pd_config *c = &b->m->cfg;
    const int QD = c->q_dim, KV = c->kv_dim, hd = c->head_dim, P = a->P, l = a->l;
    const int n_rep = c->n_heads / c->n_kv_heads, n_ctx = b->row_pos[t] + 1;
    const size_t R = (size_t)b->max_rows;
    const size_t kv = (size_t)l * R * KV + (size_t)b->row_start[t] * KV;
    const size_t row = (size_t)l * R * QD + (size_t)t * QD;
    float *probs = b->att + (size_t)l * b->att_layer + b->att_off[t];
    for (int g = 0; g < c->n_kv_heads; g++) {
        const size_t h0 = (size_t)g * n_rep;
        const pd_attn at = {
            .hd = hd,
            .P = P,
            .pk = P ? a->pk + (size_t)g * P * hd : NULL,
            .pv = P ? a->pv + (size_t)g * P * hd : NULL,
            .k = b->k + kv + (size_t)g * hd,
            .v = b->v + kv + (size_t)g * hd,
            .kv_stride = (size_t)KV,
            .q = b->q + row + h0 * hd,
            .q_stride = (size_t)QD,
            .o = b->ao + row + h0 * hd,
            .o_stride = (size_t)QD,
            .probs = probs + h0 * (size_t)(P + n_ctx),
            .p_stride = (size_t)(P + n_ctx),
            .n_tok = 1,
            .n_heads = n_rep,
            .n_keys0 = P + n_ctx,
        };
        pd__attend(&at);
    }
}

/* Backward attention for kv group g (task): every row, every query head of
 * the group. Writes dq of those heads, dk/dv of the group's slice, and the
 * group's prefix gradients, so groups never race. b->tmp holds dao. */
static void attn_bwd_group(void *vctx, int g, int thread)
{
    (void)thread;
    const attn_ctx *a = vctx;
    pd_backprop *b = a->b;
    const pd_config *c = &b->m->cfg;
    const int QD = c->q_dim, KV = c->kv_dim, hd = c->head_dim, P = a->P, l = a->l;
    const int n_rep = c->n_heads / c->n_kv_heads;
    const size_t R = (size_t)b->max_rows;
    const float scale = 1.0f / sqrtf((float)hd);
    const float *Q = b->q + (size_t)l * R * QD, *K = b->k + (size_t)l * R * KV;
    const float *Vv = b->v + (size_t)l * R * KV;
    for (int t = 0; t < b->max_rows; t++) {
        if (b->row_pos[t] < 0) break; /* past the batch */
        const int n_ctx = b->row_pos[t] + 1, s0 = b->row_start[t];
        const float *probs = b->att + (size_t)l * b->att_layer + b->att_off[t];
        for (int h = g * n_rep; h < (g + 1) * n_rep; h++) {
            const float *att = probs + (size_t)h * (P + n_ctx);
            const float *dao = b->tmp + (size_t)t * QD + (size_t)h * hd;
            const float *q = Q + (size_t)t * QD + (size_t)h * hd;
            float *dq = b->dq + (size_t)t * QD + (size_t)h * hd;
            /* dp_j = dao · V_j ; s = Σ p_j dp_j (dp recomputed below, no scratch) */
            double s = 0.0;
            for (int j = 0; j < P + n_ctx; j++) {
                const float *vv = j < P ? a->pv + ((size_t)g * P + j) * hd
                                        : Vv + (size_t)(s0 + j - P) * KV + (size_t)g * hd;
                float d = 0.0f;
                for (int i = 0; i < hd; i++) d += dao[i] * vv[i];
                s += (double)att[j] * d;
            }
            for (int j = 0; j < P + n_ctx; j++) {
                const int real = j >= P;
                const float *vv = !real ? a->pv + ((size_t)g * P + j) * hd
                                        : Vv + (size_t)(s0 + j - P) * KV + (size_t)g * hd;
                const float *kk = !real ? a->pk + ((size_t)g * P + j) * hd
                                        : K + (size_t)(s0 + j - P) * KV + (size_t)g * hd;
                float d = 0.0f;
                for (int i = 0; i < hd; i++) d += dao[i] * vv[i];
                const float p = att[j];
                const float ds = p * (d - (float)s) * scale;
                float *dvv = !real ? (a->dpv ? a->dpv + ((size_t)g * P + j) * hd : NULL)
                                   : b->dv + (size_t)(s0 + j - P) * KV + (size_t)g * hd;
                float *dkk = !real ? (a->dpk ? a->dpk + ((size_t)g * P + j) * hd : NULL)
                                   : b->dk + (size_t)(s0 + j - P) * KV + (size_t)g * hd;
                for (int i = 0; i < hd; i++) {
                    dq[i] += ds * kk[i];
                    if (dvv) dvv[i] += p * dao[i];
                    if (dkk) dkk[i] += ds * q[i];
                }
            }
        }
    }
}

/* ---- the run -------------------------------------------------------------- */

int pd_backprop_run(pd_backprop *b, const float *keys, const float *values, int P,
                    const pd_example *ex, int n_ex, float *dkeys, float *dvalues,
                    double *loss_sum, int *n_targets, pd_err *err)
{
    const pd_model *m = b->m;
    const pd_config *c = &m->cfg;
    const int C = c->dim, KV = c->kv_dim, H = c->hidden_dim, V = c->vocab_size;
    const int hd = c->head_dim, L = c->n_layers, QD = c->q_dim;
    const size_t RM = (size_t)b->max_rows;
    *loss_sum = 0.0;
    *n_targets = 0;
    if (P < 0 || P > b->max_prefix || (P > 0 && (!keys || !values)))
        return pd_err_set(err, PD_EINVAL, "prefix of %d slots outside [0, %d]", P, b->max_prefix);
    if ((dkeys == NULL) != (dvalues == NULL))
        return pd_err_set(err, PD_EINVAL, "dkeys and dvalues go together");
    /* layout */
    int R = 0;
    size_t off = 0;
    for (int e = 0; e < n_ex; e++) {
        if (ex[e].n < 2) return pd_err_set(err, PD_EINVAL, "example %d has fewer than 2 tokens", e);
        if (ex[e].soft && !(ex[e].ce_weight >= 0.0f && ex[e].ce_weight <= 1.0f))
            return pd_err_set(err, PD_EINVAL, "example %d: ce_weight %g outside [0, 1]", e,
                              (double)ex[e].ce_weight);
        if (ex[e].n > b->max_ctx || P + ex[e].n > c->seq_len)
            return pd_err_set(err, PD_EINVAL,
                              "example %d: %d tokens after a prefix of %d exceed the context %d", e,
                              ex[e].n, P, c->seq_len);
        if (R + ex[e].n > b->max_rows)
            return pd_err_set(err, PD_EINVAL, "batch of more than %d tokens (example %d)",
                              b->max_rows, e);
        for (int j = 0; j < ex[e].n; j++) {
            if (ex[e].tokens[j] < 0 || ex[e].tokens[j] >= V)
                return pd_err_set(err, PD_EINVAL, "example %d token %d: id %d outside [0, %d)", e,
                                  j, ex[e].tokens[j], V);
            b->row_start[R + j] = R;
            b->row_pos[R + j] = j;
            b->att_off[R + j] = off;
            off += (size_t)c->n_heads * (size_t)(P + j + 1);
        }
        R += ex[e].n;
    }
    if (R == 0) return PD_OK;
    PD_ASSERT(off <= b->att_layer);
    for (int t = R; t < b->max_rows; t++) b->row_pos[t] = -1;

    /* ---- forward ---- */
    float *x = b->x;
    {
        int r = 0;
        for (int e = 0; e < n_ex; e++)
            for (int j = 0; j < ex[e].n; j++, r++)
                pd_wmat_row_f32(&m->w.token_embedding, ex[e].tokens[j], x + (size_t)r * C);
    }
    for (int t = 0; t < R; t++)
        pd__rope_table_ext(b->rope + (size_t)t * hd, P + b->row_pos[t], hd, c->rope_base,
                           c->rope_freq_scale, m->w.rope_freqs);
    const size_t pstride = (size_t)c->n_kv_heads * P * hd; /* one layer of the prefix */
    for (int l = 0; l < L; l++) {
        const pd_layer_weights *w = &m->w.layers[l];
        float *x_in = b->x_in + (size_t)l * RM * C, *xn1 = b->xn1 + (size_t)l * RM * C;
        float *q = b->q + (size_t)l * RM * QD, *k = b->k + (size_t)l * RM * KV;
        float *v = b->v + (size_t)l * RM * KV, *ao = b->ao + (size_t)l * RM * QD;
        float *x_mid = b->x_mid + (size_t)l * RM * C, *xn2 = b->xn2 + (size_t)l * RM * C;
        float *h1 = b->h1 + (size_t)l * RM * H, *h3 = b->h3 + (size_t)l * RM * H;
        memcpy(x_in, x, (size_t)R * C * sizeof(float));
        pd__rmsnorm_rows(xn1, b->rs1 + (size_t)l * RM, x, w->rms_att, R, C, c->norm_eps);
        pd_wmatmul_float(b->pool, q, xn1, &w->wq, R);
        pd_wmatmul_float(b->pool, k, xn1, &w->wk, R);
        pd_wmatmul_float(b->pool, v, xn1, &w->wv, R);
        pd__qk_saved save = {NULL, NULL, NULL, NULL};
        if (w->q_norm)
            save = (pd__qk_saved){b->q_pre + (size_t)l * RM * QD, b->k_pre + (size_t)l * RM * KV,
                                  b->q_rs + (size_t)l * RM * c->n_heads,
                                  b->k_rs + (size_t)l * RM * c->n_kv_heads};
        pd__qkv_finish(m, l, q, k, v, R, b->rope, w->q_norm ? &save : NULL);
        attn_ctx a = {b, l, P, P ? keys + l * pstride : NULL, P ? values + l * pstride : NULL,
                      NULL, NULL};
        pd_pool_run(b->pool, attn_fwd_row, &a, R);
        pd_wmatmul_float(b->pool, b->tmp, ao, &w->wo, R);
        for (size_t i = 0; i < (size_t)R * C; i++) x[i] += b->tmp[i];
        memcpy(x_mid, x, (size_t)R * C * sizeof(float));
        pd__rmsnorm_rows(xn2, b->rs2 + (size_t)l * RM, x, w->rms_ffn, R, C, c->norm_eps);
        pd_wmatmul_float(b->pool, h1, xn2, &w->w1, R);
        pd_wmatmul_float(b->pool, h3, xn2, &w->w3, R);
        for (size_t i = 0; i < (size_t)R * H; i++) {
            float val = h1[i];
            val *= (1.0f / (1.0f + expf(-val)));
            b->g[i] = val * h3[i];
        }
        pd_wmatmul_float(b->pool, b->tmp, b->g, &w->w2, R);
        for (size_t i = 0; i < (size_t)R * C; i++) x[i] += b->tmp[i];
    }
    memcpy(b->x_fin, x, (size_t)R * C * sizeof(float));
    pd__rmsnorm_rows(b->xnf, b->rsf, x, m->w.rms_final, R, C, c->norm_eps);

    /* ---- loss, and its gradient at the final norm's output (into dn) ---- */
    const int want_grad = dkeys != NULL;
    float *dn = b->dn;
    int n_t = 0;
    {
        int r = 0;
        for (int e = 0; e < n_ex; e++) {
            for (int j = 1; j < ex[e].n; j++)
                if (ex[e].loss_mask[j]) {
                    b->tgt_row[n_t] = r + j - 1; /* the row that predicts token j */
                    b->tgt_tok[n_t] = ex[e].tokens[j];
                    b->tgt_soft[n_t] = ex[e].soft ? ex[e].soft + (size_t)j * V : NULL;
                    b->tgt_w[n_t] = ex[e].ce_weight;
                    n_t++;
                }
            r += ex[e].n;
        }
    }
    if (want_grad) memset(dn, 0, (size_t)R * C * sizeof(float));
    double loss = 0.0;
    for (int c0 = 0; c0 < n_t; c0 += LOGIT_CHUNK) {
        const int n = n_t - c0 < LOGIT_CHUNK ? n_t - c0 : LOGIT_CHUNK;
        for (int i = 0; i < n; i++)
            memcpy(b->lx + (size_t)i * C, b->xnf + (size_t)b->tgt_row[c0 + i] * C,
                   (size_t)C * sizeof(float));
        pd_wmatmul_float(b->pool, b->lg, b->lx, &m->w.wcls, n);
        for (int i = 0; i < n; i++) {
            float *lg = b->lg + (size_t)i * V;
            const int target = b->tgt_tok[c0 + i];
            float max = lg[0];
            for (int u = 1; u < V; u++)
                if (lg[u] > max) max = lg[u];
            double sum = 0.0;
            for (int u = 0; u < V; u++) sum += exp((double)(lg[u] - max));
            const double lse = log(sum) + (double)max; /* −log q[u] = lse − lg[u] */
            const float *soft = b->tgt_soft[c0 + i];
            if (!soft) {
                loss += lse - (double)lg[target];
            } else { /* (1 − w)·KL(p ‖ q) + w·CE */
                const double w = b->tgt_w[c0 + i];
                double kl = 0.0;
                for (int u = 0; u < V; u++)
                    if (soft[u] > 0.0f)
                        kl += (double)soft[u] * (log((double)soft[u]) - ((double)lg[u] - lse));
                loss += (1.0 - w) * kl + w * (lse - (double)lg[target]);
            }
            if (want_grad) {
                for (int u = 0; u < V; u++) lg[u] = (float)(exp((double)(lg[u] - max)) / sum);
                if (!soft) {
                    lg[target] -= 1.0f; /* d(cross-entropy)/d(logits) = softmax - onehot */
                } else { /* softmax − (1 − w)·p − w·onehot */
                    const float w = b->tgt_w[c0 + i];
                    for (int u = 0; u < V; u++) lg[u] -= (1.0f - w) * soft[u];
                    lg[target] -= w;
                }
            }
        }
        if (want_grad) {
            mm_back(b, b->lx, b->lg, &m->w.wcls, n, 0.0f);
            for (int i = 0; i < n; i++) {
                float *d = dn + (size_t)b->tgt_row[c0 + i] * C;
                for (int u = 0; u < C; u++) d[u] += b->lx[(size_t)i * C + u];
            }
        }
    }
    *loss_sum = loss;
    *n_targets = n_t;
    if (!want_grad || n_t == 0) return PD_OK;

    /* ---- backward: x holds d(loss)/d(residual) from here on ---- */
    memset(x, 0, (size_t)R * C * sizeof(float));
    rmsnorm_bwd(x, dn, b->x_fin, b->rsf, m->w.rms_final, R, C);
    for (int l = L - 1; l >= 0; l--) {
        const pd_layer_weights *w = &m->w.layers[l];
        const float *h1 = b->h1 + (size_t)l * RM * H, *h3 = b->h3 + (size_t)l * RM * H;
        /* FFN: dg = dx·W2; dh1 = dg ⊙ h3 ⊙ silu'(h1); dh3 = dg ⊙ silu(h1) */
        mm_back(b, b->g, x, &w->w2, R, 0.0f);
        for (size_t i = 0; i < (size_t)R * H; i++) {
            float a1 = h1[i], sg = 1.0f / (1.0f + expf(-a1));
            float dg = b->g[i];
            b->dh1[i] = dg * h3[i] * (sg * (1.0f + a1 * (1.0f - sg)));
            b->g[i] = dg * (a1 * sg); /* dh3 */
        }
        mm_back(b, dn, b->dh1, &w->w1, R, 0.0f);
        mm_back(b, dn, b->g, &w->w3, R, 1.0f);
        rmsnorm_bwd(x, dn, b->x_mid + (size_t)l * RM * C, b->rs2 + (size_t)l * RM, w->rms_ffn, R,
                    C);
        /* attention: dao = dx·Wo (kept in tmp), then softmax backward per group */
        mm_back(b, b->tmp, x, &w->wo, R, 0.0f);
        memset(b->dq, 0, (size_t)R * QD * sizeof(float));
        memset(b->dk, 0, (size_t)R * KV * sizeof(float));
        memset(b->dv, 0, (size_t)R * KV * sizeof(float));
        attn_ctx a = {b,
                      l,
                      P,
                      P ? keys + l * pstride : NULL,
                      P ? values + l * pstride : NULL,
                      P ? dkeys + l * pstride : NULL,
                      P ? dvalues + l * pstride : NULL};
        pd_pool_run(b->pool, attn_bwd_group, &a, c->n_kv_heads);
        pd__rope_rows(b->dq, R, QD, hd, b->rope, c->rope_type, -1.0f);
        pd__rope_rows(b->dk, R, KV, hd, b->rope, c->rope_type, -1.0f);
        if (w->q_norm) head_norm_bwd(b, l, R);
        /* biases are constants: nothing to propagate */
        mm_back(b, dn, b->dq, &w->wq, R, 0.0f);
        mm_back(b, dn, b->dk, &w->wk, R, 1.0f);
        mm_back(b, dn, b->dv, &w->wv, R, 1.0f);
        rmsnorm_bwd(x, dn, b->x_in + (size_t)l * RM * C, b->rs1 + (size_t)l * RM, w->rms_att, R,
                    C);
    }
    return PD_OK;
}
