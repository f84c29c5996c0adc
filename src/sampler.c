/* sampler.c — greedy, temperature, top-k and top-p sampling with a seeded
 * xorshift64* stream (the generator llama2.c uses).
 *
 * Cost. One token is a few passes over the vocabulary, on the engine thread
 * between steps, so every pass is written for the vectoriser: the maximum
 * with eight lanes, e^x as a float polynomial (pd__sampler_exp, not libm's
 * double exp), sums in eight fixed lanes per block of 64 (the order is the
 * code's, not the compiler's, so a result never depends on how the loop was
 * vectorised). The probabilities are left unnormalised: the coin is scaled
 * by their sum instead of dividing every entry. A multinomial draw walks the
 * block sums first, then one block; the top-p nucleus pops a heap only as
 * far as the nucleus goes instead of sorting every candidate. The
 * log-probability at temperature 1 is one more pass (exp and a sum in
 * double), only when it is asked for.
 *
 * Determinism. Nothing depends on other sequences or on the batch: a seeded
 * request draws the same tokens alone and batched, through any route. */
#include "prefixd/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 64 /* entries per block sum */
#define LANES 8

pd_sampler_params pd_sampler_default_params(void)
{
    pd_sampler_params p = {0.0f, 1.0f, 0, 42};
    return p;
}

/* Checks p and sets everything but the scratch. */
static int init_params(pd_sampler *s, int vocab_size, const pd_sampler_params *p, pd_err *err)
{
    s->probs = NULL;
    s->index = NULL;
    s->block_sums = NULL;
    s->borrowed = 0;
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return pd_err_set(err, PD_EINVAL, "temperature %g must be a finite number >= 0",
                          (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return pd_err_set(err, PD_EINVAL, "top_p %g must be in (0, 1]", (double)p->top_p);
    if (p->top_k < 0) return pd_err_set(err, PD_EINVAL, "top_k %d must be >= 0", p->top_k);
    if (vocab_size < 1)
        return pd_err_set(err, PD_EINVAL, "vocab_size %d must be >= 1", vocab_size);
    s->p = *p;
    s->rng = p->seed ? p->seed : 0x2545F4914F6CDD1DULL; /* xorshift needs a non-zero state */
    s->vocab_size = vocab_size;
    return PD_OK;
}

int pd_sampler_init(pd_sampler *s, int vocab_size, const pd_sampler_params *p, pd_err *err)
{
    int rc = init_params(s, vocab_size, p, err);
    if (rc < 0) return rc;
    s->probs = malloc((size_t)vocab_size * sizeof *s->probs);
    s->index = malloc((size_t)vocab_size * sizeof *s->index);
    s->block_sums = malloc((size_t)((vocab_size + BLOCK - 1) / BLOCK) * sizeof *s->block_sums);
    if (!s->probs || !s->index || !s->block_sums) {
        pd_sampler_release(s);
        return pd_err_set(err, PD_ENOMEM, "out of memory for the sampler");
    }
    return PD_OK;
}

int pd_sampler_init_borrowing(pd_sampler *s, const pd_sampler *from,
                              const pd_sampler_params *p, pd_err *err)
{
    PD_ASSERT(from->probs && !from->borrowed);
    int rc = init_params(s, from->vocab_size, p, err);
    if (rc < 0) return rc;
    s->probs = from->probs;
    s->index = from->index;
    s->block_sums = from->block_sums;
    s->borrowed = 1;
    return PD_OK;
}

void pd_sampler_release(pd_sampler *s)
{
    if (!s->borrowed) {
        free(s->probs);
        free(s->index);
        free(s->block_sums);
    }
    s->probs = NULL;
    s->index = NULL;
    s->block_sums = NULL;
}

static uint32_t random_u32(uint64_t *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1DULL) >> 32);
}

float pd_sampler_rand(pd_sampler *s) { return (float)(random_u32(&s->rng) >> 8) / 16777216.0f; }

/* e^x for x <= 0 (Cody-Waite reduction to r in [-ln2/2, ln2/2], a degree-6
 * polynomial, the power of two put in the exponent bits); 0 below -87 and
 * for NaN. Within 2 ulp of e^x; branch-free, so loops over it vectorise. */
static inline float exp_neg(float x)
{
    const float lo = -87.0f;
    float xc = x > lo ? x : lo; /* NaN: lo */
    float k = (xc * 1.44269504f + 12582912.0f) - 12582912.0f; /* round(x / ln2) */
    float r = xc - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float q = 1.9875691500e-4f;
    q = q * r + 1.3981999507e-3f;
    q = q * r + 8.3334519073e-3f;
    q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f;
    q = q * r + 5.0000001201e-1f;
    float y = q * r * r + r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23; /* k in [-126, 0]: a normal 2^k */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    /* no branch around y (trapping math forbids if-converting one): a mask */
    return y * scale * (float)(x >= lo);
}

float pd__sampler_exp(float x) { return exp_neg(x); }

/* The largest entry (NaNs are skipped unless x[0] is NaN). */
static float max_of(const float *x, int n)
{
    float m[LANES];
    for (int j = 0; j < LANES; j++) m[j] = x[0];
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
    for (; i < n; i++) m[0] = x[i] > m[0] ? x[i] : m[0];
    float best = m[0];
    for (int j = 1; j < LANES; j++) best = m[j] > best ? m[j] : best;
    return best;
}

/* The first index of the maximum (0 if x[0] is NaN). */
static int argmax(const float *x, int n)
{
    const float m = max_of(x, n);
    for (int i = 0; i < n; i++)
        if (x[i] == m) return i;
    return 0;
}

/* Sets p[i] = e^((x[i] - max) * scale) for i in [b0, end), end - b0 <= 64,
 * and returns their sum, taken in eight lanes. p may be NULL (sum only). */
static float exp_block(const float *restrict x, int b0, int end, float max, float scale,
                       float *restrict p)
{
    float acc[LANES] = {0};
    int i = b0;
    if (p) {
        for (; i + LANES <= end; i += LANES)
            for (int j = 0; j < LANES; j++) {
                p[i + j] = exp_neg((x[i + j] - max) * scale);
                acc[j] += p[i + j];
            }
        for (; i < end; i++) {
            p[i] = exp_neg((x[i] - max) * scale);
            acc[0] += p[i];
        }
    } else {
        for (; i + LANES <= end; i += LANES)
            for (int j = 0; j < LANES; j++) acc[j] += exp_neg((x[i + j] - max) * scale);
        for (; i < end; i++) acc[0] += exp_neg((x[i] - max) * scale);
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* p[i] = e^((x[i] - max) * scale), block_sums[b] = the sum of block b of 64.
 * Returns the sum of the block sums, in block order. */
static float exp_blocks(const float *x, int n, float max, float scale, float *p,
                        float *block_sums)
{
    float total = 0.0f;
    for (int b0 = 0, b = 0; b0 < n; b0 += BLOCK, b++) {
        block_sums[b] = exp_block(x, b0, b0 + BLOCK < n ? b0 + BLOCK : n, max, scale, p);
        total += block_sums[b];
    }
    return total;
}

/* log sum_i e^(x[i] - max): float sums of blocks of 64, added in double. */
static double log_sum_exp_shifted(const float *x, int n, float max)
{
    double sum = 0.0;
    for (int b0 = 0; b0 < n; b0 += BLOCK)
        sum += (double)exp_block(x, b0, b0 + BLOCK < n ? b0 + BLOCK : n, max, 1.0f, NULL);
    return log(sum);
}

double pd_sampler_log_sum_exp(const float *logits, int n)
{
    const float max = max_of(logits, n);
    return (double)max + log_sum_exp_shifted(logits, n, max);
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

/* Max-heap order of candidates: more probable first, then the lower id
 * (the order by_prob_desc sorts in). */
static int before(int32_t a, int32_t b, const float *p)
{
    return p[a] > p[b] || (p[a] == p[b] && a < b);
}

static void max_heap_sift(int32_t *h, int n, int i, const float *p)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && before(h[l], h[m], p)) m = l;
        if (r < n && before(h[r], h[m], p)) m = r;
        if (m == i) return;
        int32_t t = h[i]; h[i] = h[m]; h[m] = t;
        i = m;
    }
}

/* Leaves in idx[0..k) the k most probable of the n candidates idx[0..n),
 * in by_prob_desc order, for the smallest k whose mass (summed in that
 * order) exceeds nucleus, or all n; returns k. A heap popped k times:
 * O(n + k log n), where a full sort was O(n log n) for a k that is
 * usually small. */
static int nucleus_head(int32_t *idx, int n, const float *p, float nucleus)
{
    for (int i = n / 2 - 1; i >= 0; i--) max_heap_sift(idx, n, i, p);
    float mass = 0.0f;
    int k = 0;
    while (k < n) { /* pop the root to idx[n - 1 - k] */
        const int last = n - 1 - k;
        int32_t top = idx[0];
        idx[0] = idx[last];
        idx[last] = top;
        max_heap_sift(idx, last, 0, p);
        k++;
        mass += p[top];
        if (mass > nucleus) break;
    }
    /* idx[n-k..n) holds them least probable first: reverse into the front */
    for (int a = n - k, b = n - 1; a < b; a++, b--) {
        int32_t t = idx[a]; idx[a] = idx[b]; idx[b] = t;
    }
    memmove(idx, idx + (n - k), (size_t)k * sizeof *idx);
    return k;
}

/* A draw from the unnormalised p[0..n) with block sums (total = their sum
 * in order) for r = coin * total: the block where the running block sum
 * passes r, then the entry in it; rounding that leaves r past a block's
 * own running sum picks its last entry with p > 0. */
static int draw_blocks(const float *p, const float *block_sums, int n, float r)
{
    const int nb = (n + BLOCK - 1) / BLOCK;
    float cum = 0.0f;
    int b = 0;
    for (; b < nb - 1; b++) {
        if (r < cum + block_sums[b]) break;
        cum += block_sums[b];
    }
    for (;;) { /* block b, or an earlier one if b holds no mass */
        const int b0 = b * BLOCK, end = b0 + BLOCK < n ? b0 + BLOCK : n;
        int last = -1;
        float cdf = cum;
        for (int i = b0; i < end; i++) {
            if (p[i] > 0.0f) last = i;
            cdf += p[i];
            if (r < cdf && p[i] > 0.0f) return i;
        }
        if (last >= 0 || b == 0) return last >= 0 ? last : 0;
        b--;
        cum -= block_sums[b];
    }
}

int pd_sampler_sample(pd_sampler *s, const float *logits, float *logprob)
{
    const int V = s->vocab_size;
    const float max = max_of(logits, V);
    const float inv_t = s->p.temperature > 0.0f ? 1.0f / s->p.temperature : INFINITY;
    int tok;
    if (!isfinite(inv_t)) { /* greedy, or a temperature too small to tell apart */
        tok = argmax(logits, V);
    } else {
        float *p = s->probs; /* unnormalised: e^((logit - max) / T) */
        const float total = exp_blocks(logits, V, max, inv_t, p, s->block_sums);
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
            const float cutoff =
                (1.0f - s->p.top_p) / (float)(V - 1 > 0 ? V - 1 : 1) * total;
            int m = 0;
            for (int i = 0; i < V; i++)
                if (p[i] >= cutoff) idx[m++] = i;
            n = nucleus_head(idx, m, p, s->p.top_p * total);
        } else {
            n = 0;
        }
        float coin = pd_sampler_rand(s);
        if (n == 0) { /* plain multinomial over the whole vocabulary */
            tok = draw_blocks(p, s->block_sums, V, coin * total);
        } else {
            const float nucleus = s->p.top_p * total;
            float mass = 0.0f;
            int last = n - 1;
            for (int i = 0; i < n; i++) {
                mass += p[idx[i]];
                if (mass > nucleus) {
                    last = i;
                    break;
                }
            }
            float kept = 0.0f;
            for (int i = 0; i <= last; i++) kept += p[idx[i]];
            float r = coin * kept, cdf = 0.0f;
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
    if (logprob)
        *logprob = (float)((double)(logits[tok] - max) - log_sum_exp_shifted(logits, V, max));
    return tok;
}
