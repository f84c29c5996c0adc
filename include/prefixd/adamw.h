/* prefixd/adamw.h — the optimiser of the trainer: AdamW (Loshchilov &
 * Hutter) over one flat float parameter vector, a warm-up then a constant,
 * linear or cosine learning-rate schedule, and global gradient-norm clipping.
 *
 *     pd_adamw opt;
 *     pd_adamw_init(&opt, n, &(pd_adamw_params){0.9, 0.999, 1e-8, 0.0}, &err);
 *     for (int s = 0; s < total; s++) {
 *         ... grad = d(loss)/d(params) ...
 *         pd_grad_clip(grad, n, 1.0);
 *         pd_adamw_step(&opt, params, grad, pd_lr_at(&sched, s));
 *     }
 *     pd_adamw_free(&opt);
 *
 * The update is PyTorch's torch.optim.AdamW (decoupled weight decay, bias
 * correction): with t the step count after increment,
 *     p <- p * (1 - lr * wd)
 *     m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
 *     p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * computed per element in double, stored in float, in index order: the same
 * inputs give the same bits. The state (m, v, t) is plain data for
 * checkpoints. One thread at a time.
 */
#ifndef PREFIXD_ADAMW_H
#define PREFIXD_ADAMW_H

#include <stddef.h>
#include <stdint.h>

#include "prefixd/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pd_adamw_params {
    double beta1, beta2, eps;
    double weight_decay; /* decoupled: scaled by the step's learning rate */
} pd_adamw_params;

typedef struct pd_adamw {
    pd_adamw_params p;
    size_t n;     /* parameters */
    float *m;     /* (n) first moment (owned) */
    float *v;     /* (n) second moment (owned) */
    int64_t t;    /* steps taken */
} pd_adamw;

/* Allocates zeroed moments for n parameters. Returns PD_OK or PD_ENOMEM. */
int pd_adamw_init(pd_adamw *o, size_t n, const pd_adamw_params *p, pd_err *err);
void pd_adamw_free(pd_adamw *o); /* frees the moments; the struct is the caller's */

/* One update of params[0..n) with grad[0..n) at learning rate lr. */
void pd_adamw_step(pd_adamw *o, float *params, const float *grad, double lr);

/* Global L2 norm of g[0..n) (accumulated in double, in order). When
 * max_norm > 0 and the norm exceeds it, scales g by max_norm / norm. Returns
 * the norm before clipping. */
double pd_grad_clip(float *g, size_t n, double max_norm);

/* The shape of the schedule after warm-up. */
typedef enum pd_lr_kind {
    PD_LR_LINEAR = 0,   /* decays linearly to 0 */
    PD_LR_COSINE = 1,   /* half a cosine down to 0 */
    PD_LR_CONSTANT = 2, /* stays at the peak */
    PD_LR_KIND_COUNT
} pd_lr_kind;

/* "linear", "cosine", "constant" (static text). */
const char *pd_lr_kind_name(pd_lr_kind k);
/* The kind named name, or -1. */
int pd_lr_kind_parse(const char *name);

typedef struct pd_lr_schedule {
    double base;      /* peak learning rate */
    int total_steps;  /* T >= 1 */
    int warmup_steps; /* W in [0, T) */
    int kind;         /* pd_lr_kind */
} pd_lr_schedule;

/* Learning rate of step s in [0, T): base * (s + 1) / W during warm-up
 * (s < W), then with progress q = (s - W) / (T - W): base (constant),
 * base * (1 - q) (linear) or base * (1 + cos(pi q)) / 2 (cosine); the
 * decaying kinds reach 0 at s = T. 0 for s >= T. */
double pd_lr_at(const pd_lr_schedule *s, int step);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_ADAMW_H */
