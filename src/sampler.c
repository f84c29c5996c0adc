/* sampler.c — greedy, temperature, top-k and top-p sampling with a seeded
 * xorshift64* stream (the generator llama2.c uses). */
#include "prefixd/sampler.h"

#include <math.h>
#include <stdlib.h>

pd_sampler_params pd_sampler_default_params(void)
{
    pd_sampler_params p = {0.0f, 1.0f, 0, 42};
    return p;
}

int pd_sampler_init(pd_sampler *s, int vocab_size, const pd_sampler_params *p, pd_err *err)
{
    s->probs = NULL;
    s->index = NULL;
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return pd_err_set(err, PD_EINVAL, "temperature %g must be a finite number >= 0",
                          (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return pd_err_set(err, PD_EINVAL, "top_p %g must be in (0, 1]", (double)p->top_p);
    if (p->top_k < 0) return pd_err_set(err, PD_EINVAL, "top_k %d must be >= 0", p->top_k);
    s->p = *p;
    s->rng = p->seed ? p->seed : 0x2545F4914F6CDD1DULL; /* xorshift needs a non-zero state */
    s->vocab_size = vocab_size;
    s->probs = malloc((size_t)vocab_size * sizeof *s->probs);
    s->index = malloc((size_t)vocab_size * sizeof *s->index);
    if (!s->probs || !s->index) {
        pd_sampler_release(s);
        return pd_err_set(err, PD_ENOMEM, "out of memory for the sampler");
    }
    return PD_OK;
}

void pd_sampler_release(pd_sampler *s)
{
    free(s->probs);
    free(s->index);
    s->probs = NULL;
    s->index = NULL;
}

static uint32_t random_u32(uint64_t *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1DULL) >> 32);
}

float pd_sampler_rand(pd_sampler *s) { return (float)(random_u32(&s->rng) >> 8) / 16777216.0f; }

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static float log_softmax_at(const float *logits, int n, int k)
{
    float max = logits[argmax(logits, n)];
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += exp((double)(logits[i] - max));
    return (float)((double)(logits[k] - max) - log(sum));
}

/* Orders candidate indices by descending probability (qsort_r: arg = probs). */
static int by_prob_desc(const void *a, const void *b, void *arg)
{
    const float *probs = arg;
    float pa = probs[*(const int32_t *)a], pb = probs[*(const int32_t *)b];
    if (pa > pb) return -1;
    if (pa < pb) return 1;
    return *(const int32_t *)a - *(const int32_t *)b;
}

/* Partial selection of the k largest into index[0..k) (sorted), O(V log k). */
static void heap_sift(int32_t *h, int n, int i, const float *p)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && p[h[l]] < p[h[m]]) m = l;
        if (r < n && p[h[r]] < p[h[m]]) m = r;
        if (m == i) return;
        int32_t t = h[i]; h[i] = h[m]; h[m] = t;
        i = m;
    }
}

int pd_sampler_sample(pd_sampler *s, const float *logits, float *logprob)
{
    const int V = s->vocab_size;
    int tok;
    if (s->p.temperature == 0.0f) {
        tok = argmax(logits, V);
    } else {
        float *p = s->probs;
        float max = logits[argmax(logits, V)];
        float sum = 0.0f;
        for (int i = 0; i < V; i++) {
            p[i] = expf((logits[i] - max) / s->p.temperature);
            sum += p[i];
        }
        for (int i = 0; i < V; i++) p[i] /= sum;
        /* candidates: all, the top k, then the top-p nucleus of those */
        int n = V;
        int32_t *idx = s->index;
        if (s->p.top_k > 0 && s->p.top_k < V) {
            int k = s->p.top_k;
            for (int i = 0; i < k; i++) idx[i] = i;
            for (int i = k / 2 - 1; i >= 0; i--) heap_sift(idx, k, i, p);
            for (int i = k; i < V; i++)
                if (p[i] > p[idx[0]]) {
                    idx[0] = i;
                    heap_sift(idx, k, 0, p);
                }
            n = k;
            qsort_r(idx, (size_t)n, sizeof *idx, by_prob_desc, p);
        } else if (s->p.top_p < 1.0f) {
            /* keep only tokens that can be in the nucleus, as llama2.c */
            const float cutoff = (1.0f - s->p.top_p) / (float)(V - 1 > 0 ? V - 1 : 1);
            n = 0;
            for (int i = 0; i < V; i++)
                if (p[i] >= cutoff) idx[n++] = i;
            qsort_r(idx, (size_t)n, sizeof *idx, by_prob_desc, p);
        } else {
            n = 0;
        }
        float coin = pd_sampler_rand(s);
        if (n == 0) { /* plain multinomial over the whole vocabulary */
            float cdf = 0.0f;
            tok = V - 1;
            for (int i = 0; i < V; i++) {
                cdf += p[i];
                if (coin < cdf) {
                    tok = i;
                    break;
                }
            }
        } else {
            float mass = 0.0f;
            int last = n - 1;
            for (int i = 0; i < n; i++) {
                mass += p[idx[i]];
                if (mass > s->p.top_p) {
                    last = i;
                    break;
                }
            }
            float total = 0.0f;
            for (int i = 0; i <= last; i++) total += p[idx[i]];
            float r = coin * total, cdf = 0.0f;
            tok = idx[last];
            for (int i = 0; i <= last; i++) {
                cdf += p[idx[i]];
                if (r < cdf) {
                    tok = idx[i];
                    break;
                }
            }
        }
    }
    if (logprob) *logprob = log_softmax_at(logits, V, tok);
    return tok;
}
