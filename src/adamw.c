/* adamw.c — AdamW, the learning-rate schedule and gradient clipping
 * (contracts in prefixd/adamw.h). */
#include "prefixd/adamw.h"

#include <math.h>
#include <string.h>
#include <stdlib.h>

int pd_adamw_init(pd_adamw *o, size_t n, const pd_adamw_params *p, pd_err *err)
{
    PD_ASSERT(o && p && n >= 1);
    PD_ASSERT(p->beta1 >= 0.0 && p->beta1 < 1.0 && p->beta2 >= 0.0 && p->beta2 < 1.0);
    PD_ASSERT(p->eps > 0.0 && p->weight_decay >= 0.0);
    o->p = *p;
    o->n = n;
    o->t = 0;
    o->m = calloc(n, sizeof *o->m);
    o->v = calloc(n, sizeof *o->v);
    if (!o->m || !o->v) {
        pd_adamw_free(o);
        return pd_err_set(err, PD_ENOMEM, "optimiser state: out of memory (%zu parameters)", n);
    }
    return PD_OK;
}

void pd_adamw_free(pd_adamw *o)
{
    if (!o) return;
    free(o->m);
    free(o->v);
    o->m = o->v = NULL;
}

void pd_adamw_step(pd_adamw *o, float *params, const float *grad, double lr)
{
    PD_ASSERT(o && o->m && params && grad);
    o->t++;
    const double b1 = o->p.beta1, b2 = o->p.beta2, eps = o->p.eps;
    const double step = lr / (1.0 - pow(b1, (double)o->t));
    const double bc2_sqrt = sqrt(1.0 - pow(b2, (double)o->t));
    const double decay = 1.0 - lr * o->p.weight_decay;
    for (size_t i = 0; i < o->n; i++) {
        double g = grad[i];
        double m = b1 * o->m[i] + (1.0 - b1) * g;
        double v = b2 * o->v[i] + (1.0 - b2) * g * g;
        o->m[i] = (float)m;
        o->v[i] = (float)v;
        double p = params[i] * decay;
        params[i] = (float)(p - step * (double)o->m[i] /
                                    (sqrt((double)o->v[i]) / bc2_sqrt + eps));
    }
}

double pd_grad_clip(float *g, size_t n, double max_norm)
{
    PD_ASSERT(g || n == 0);
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) ss += (double)g[i] * g[i];
    double norm = sqrt(ss);
    if (max_norm > 0.0 && norm > max_norm) {
        double s = max_norm / norm;
        for (size_t i = 0; i < n; i++) g[i] = (float)(g[i] * s);
    }
    return norm;
}

double pd_lr_at(const pd_lr_schedule *s, int step)
{
    PD_ASSERT(s && s->total_steps >= 1 && s->warmup_steps >= 0 &&
              s->warmup_steps < s->total_steps);
    if (step < 0) step = 0;
    if (step >= s->total_steps) return 0.0;
    if (step < s->warmup_steps) return s->base * (step + 1) / s->warmup_steps;
    if (s->kind == PD_LR_CONSTANT) return s->base;
    double q = (double)(step - s->warmup_steps) / (s->total_steps - s->warmup_steps);
    if (s->kind == PD_LR_COSINE) return s->base * 0.5 * (1.0 + cos(M_PI * q));
    return s->base * (1.0 - q);
}

static const char *const lr_kind_names[PD_LR_KIND_COUNT] = {"linear", "cosine", "constant"};

const char *pd_lr_kind_name(pd_lr_kind k)
{
    return k >= 0 && k < PD_LR_KIND_COUNT ? lr_kind_names[k] : "?";
}

int pd_lr_kind_parse(const char *name)
{
    for (int k = 0; k < PD_LR_KIND_COUNT; k++)
        if (name && !strcmp(name, lr_kind_names[k])) return k;
    return -1;
}
