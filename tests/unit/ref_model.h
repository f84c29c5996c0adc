/* ref_model.h — an independent double-precision forward pass of every
 * architecture prefixd runs, for the unit tests (header-only; plain loops,
 * written from the model descriptions, sharing nothing with src/):
 *
 *   x = embedding; per layer:
 *     xn = rmsnorm(x) · rms_att
 *     q = Wq xn + bq, k = Wk xn + bk, v = Wv xn + bv      (biases if present)
 *     q, k per head: rmsnorm(head) · q_norm / k_norm       (qwen3)
 *     rotary at position P + t: angle_j = pos · freq_scale · base^(-2j/hd) / f_j
 *       (f_j = rope_freqs or 1), pairs (2j, 2j+1) (norm) or (j, j+hd/2) (neox)
 *     attention per head over the P prefix slots (keys used as given) and
 *       the tokens 0..t, scale 1/sqrt(hd), grouped kv heads
 *     x += Wo · att;  x += W2 (silu(W1 xn2) ⊙ W3 xn2), xn2 = rmsnorm(x) · rms_ffn
 *   logits = Wcls · rmsnorm(x) · rms_final
 *
 * Prefix layout: keys/values (n_layers, n_kv_heads, P, head_dim). */
#ifndef PREFIXD_REF_MODEL_H
#define PREFIXD_REF_MODEL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "prefixd/model.h"
#include "prefixd/quant.h"

static void ref_rmsnorm(double *o, const double *x, const float *w, int C, double eps)
{
    double ss = 0;
    for (int j = 0; j < C; j++) ss += x[j] * x[j];
    double r = 1.0 / sqrt(ss / C + eps);
    for (int j = 0; j < C; j++) o[j] = w[j] * x[j] * r;
}

/* o = W·x in double over W's values as stored (rows dequantised); n_in
 * floats of scratch in row. Returns 0, or -1 when W is not (n_out, n_in). */
static int ref_matvec(double *o, const pd_wmat *W, const double *x, int n_out, int n_in,
                      float *row)
{
    if (W->rows != n_out || W->cols != n_in) return -1;
    for (int i = 0; i < n_out; i++) {
        pd_wmat_row_f32(W, i, row);
        double s = 0;
        for (int j = 0; j < n_in; j++) s += (double)row[j] * x[j];
        o[i] = s;
    }
    return 0;
}
/* Rotary of every head of v (n floats) at position pos, as the config says. */
static void ref_rope_cfg(const pd_model *m, double *v, int n, int pos)
{
    const pd_config *c = &m->cfg;
    const int hd = c->head_dim;
    for (int h = 0; h < n; h += hd)
        for (int j = 0; j < hd / 2; j++) {
            double ang = pos * (double)c->rope_freq_scale * pow((double)c->rope_base, -2.0 * j / hd);
            if (m->w.rope_freqs) ang /= m->w.rope_freqs[j];
            int i0 = c->rope_type == PD_ROPE_NEOX ? h + j : h + 2 * j;
            int i1 = c->rope_type == PD_ROPE_NEOX ? h + j + hd / 2 : h + 2 * j + 1;
            double cs = cos(ang), sn = sin(ang), a = v[i0], b = v[i1];
            v[i0] = a * cs - b * sn;
            v[i1] = a * sn + b * cs;
        }
}

/* One example through the model after prefix (keys, values) of P slots.
 * logits (n, V) of every position when not NULL; returns the sum of the
 * target cross-entropies (mask[t]: token t is a target of row t-1; mask
 * NULL: none). Matrices are read as stored (quantised rows dequantised).
 * Returns NAN when out of memory or a matrix has the wrong shape. */
static double ref_forward(const pd_model *m, const double *keys, const double *values, int P,
                          const int32_t *tok, const uint8_t *mask, int n, double *logits)
{
    const pd_config *c = &m->cfg;
    const int C = c->dim, KV = c->kv_dim, H = c->hidden_dim, hd = c->head_dim;
    const int V = c->vocab_size, QD = c->q_dim, L = c->n_layers, NH = c->n_heads;
    const int G = c->n_kv_heads, rep = NH / G;
    double *x = calloc((size_t)n * C, 8), *xn = malloc((size_t)C * 8);
    double *q = malloc((size_t)n * QD * 8), *k = malloc((size_t)n * KV * 8);
    double *v = malloc((size_t)n * KV * 8), *ao = malloc((size_t)QD * 8);
    double *tmp = malloc((size_t)C * 8), *h1 = malloc((size_t)H * 8), *h3 = malloc((size_t)H * 8);
    double *att = malloc((size_t)(P + n) * 8), *lg = malloc((size_t)V * 8);
    int row_n = C > H ? C : H;
    if (QD > row_n) row_n = QD;
    float *row = malloc((size_t)row_n * sizeof *row);
    double loss = NAN;
    int bad = 0;
    if (!x || !xn || !q || !k || !v || !ao || !tmp || !h1 || !h3 || !att || !lg || !row) goto done;
    for (int t = 0; t < n; t++) {
        pd_wmat_row_f32(&m->w.token_embedding, tok[t], row);
        for (int j = 0; j < C; j++) x[(size_t)t * C + j] = row[j];
    }
    for (int l = 0; l < L; l++) {
        const pd_layer_weights *w = &m->w.layers[l];
        for (int t = 0; t < n; t++) {
            double *qt = q + (size_t)t * QD, *kt = k + (size_t)t * KV, *vt = v + (size_t)t * KV;
            ref_rmsnorm(xn, x + (size_t)t * C, w->rms_att, C, c->norm_eps);
            bad |= ref_matvec(qt, &w->wq, xn, QD, C, row);
            bad |= ref_matvec(kt, &w->wk, xn, KV, C, row);
            bad |= ref_matvec(vt, &w->wv, xn, KV, C, row);
            for (int i = 0; w->bq && i < QD; i++) qt[i] += w->bq[i];
            for (int i = 0; w->bk && i < KV; i++) kt[i] += w->bk[i];
            for (int i = 0; w->bv && i < KV; i++) vt[i] += w->bv[i];
            for (int h = 0; w->q_norm && h < NH; h++)
                ref_rmsnorm(qt + h * hd, qt + h * hd, w->q_norm, hd, c->norm_eps);
            for (int h = 0; w->k_norm && h < G; h++)
                ref_rmsnorm(kt + h * hd, kt + h * hd, w->k_norm, hd, c->norm_eps);
            ref_rope_cfg(m, qt, QD, P + t);
            ref_rope_cfg(m, kt, KV, P + t);
        }
        for (int t = 0; t < n; t++) {
            for (int h = 0; h < NH; h++) {
                int g = h / rep;
                const double *qh = q + (size_t)t * QD + (size_t)h * hd;
                double mx = -1e300;
                for (int j = 0; j < P + t + 1; j++) {
                    const double *kk = j < P ? keys + (((size_t)l * G + g) * P + j) * hd
                                             : k + (size_t)(j - P) * KV + (size_t)g * hd;
                    double s = 0;
                    for (int i = 0; i < hd; i++) s += qh[i] * kk[i];
                    att[j] = s / sqrt((double)hd);
                    if (att[j] > mx) mx = att[j];
                }
                double sum = 0;
                for (int j = 0; j < P + t + 1; j++) sum += (att[j] = exp(att[j] - mx));
                for (int i = 0; i < hd; i++) {
                    double o = 0;
                    for (int j = 0; j < P + t + 1; j++) {
                        const double *vv = j < P ? values + (((size_t)l * G + g) * P + j) * hd
                                                 : v + (size_t)(j - P) * KV + (size_t)g * hd;
                        o += att[j] / sum * vv[i];
                    }
                    ao[h * hd + i] = o;
                }
            }
            /* residual updates of row t only read rows <= t: safe in place */
            bad |= ref_matvec(tmp, &w->wo, ao, C, QD, row);
            double *xr = x + (size_t)t * C;
            for (int j = 0; j < C; j++) xr[j] += tmp[j];
            ref_rmsnorm(xn, xr, w->rms_ffn, C, c->norm_eps);
            bad |= ref_matvec(h1, &w->w1, xn, H, C, row);
            bad |= ref_matvec(h3, &w->w3, xn, H, C, row);
            for (int j = 0; j < H; j++) h1[j] = h1[j] / (1 + exp(-h1[j])) * h3[j];
            bad |= ref_matvec(tmp, &w->w2, h1, C, H, row);
            for (int j = 0; j < C; j++) xr[j] += tmp[j];
        }
    }
    loss = 0;
    for (int t = 0; t < n; t++) {
        int target = t + 1 < n && mask && mask[t + 1];
        if (!target && !logits) continue;
        ref_rmsnorm(xn, x + (size_t)t * C, m->w.rms_final, C, c->norm_eps);
        bad |= ref_matvec(lg, &m->w.wcls, xn, V, C, row);
        if (logits)
            for (int u = 0; u < V; u++) logits[(size_t)t * V + u] = lg[u];
        if (!target) continue;
        double mx = lg[0], sum = 0;
        for (int u = 1; u < V; u++)
            if (lg[u] > mx) mx = lg[u];
        for (int u = 0; u < V; u++) sum += exp(lg[u] - mx);
        loss += log(sum) + mx - lg[tok[t + 1]];
    }
    if (bad) loss = NAN; /* a matrix of the wrong shape */
done:
    free(row);
    free(x); free(xn); free(q); free(k); free(v); free(ao); free(tmp); free(h1); free(h3);
    free(att); free(lg);
    return loss;
}

#endif
