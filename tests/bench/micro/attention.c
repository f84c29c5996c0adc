/* attention.c — micro_attention: the attention kernels alone, one thread
 * (make bench).
 *
 *     build/bench/micro_attention
 *
 * For each kernel this CPU runs: a causal prefill of 512 tokens (tasks of
 * 16 tokens x 1 head, as the engine hands them out for a 12-head model,
 * hd 64) and a decode row over 512 cached keys, in GFLOP/s counting the
 * scores and the weighted sum (2 x 2 x hd per query and key). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../../../src/attention.h"

#define HD 64
#define HEADS 12
#define CTX 512
#define BLOCK 16

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static float *rand_floats(size_t n)
{
    float *x = malloc(n * sizeof *x);
    if (!x) return NULL;
    for (size_t i = 0; i < n; i++) x[i] = (float)rand() / RAND_MAX - 0.5f;
    return x;
}

/* One causal prefill of CTX tokens, every head, in BLOCK-token tasks. */
static void prefill(pd_attn_isa isa, const float *q, const float *k, const float *v, float *o,
                    float *probs)
{
    for (int h = 0; h < HEADS; h++)
        for (int t0 = 0; t0 < CTX; t0 += BLOCK) {
            const pd_attn a = {
                .hd = HD, .P = 0, .k = k + h * HD, .v = v + h * HD,
                .kv_stride = HEADS * HD, .q = q + (size_t)t0 * HEADS * HD + h * HD,
                .q_stride = HEADS * HD, .o = o + (size_t)t0 * HEADS * HD + h * HD,
                .o_stride = HEADS * HD, .probs = probs, .p_stride = CTX,
                .n_tok = BLOCK, .n_heads = 1, .n_keys0 = t0 + 1,
            };
            pd__attend_isa(&a, isa);
        }
}

/* The last token's row, every head (decode at CTX keys). */
static void decode(pd_attn_isa isa, const float *q, const float *k, const float *v, float *o,
                   float *probs)
{
    for (int h = 0; h < HEADS; h++) {
        const pd_attn a = {
            .hd = HD, .P = 0, .k = k + h * HD, .v = v + h * HD, .kv_stride = HEADS * HD,
            .q = q + h * HD, .q_stride = HEADS * HD, .o = o + h * HD, .o_stride = HEADS * HD,
            .probs = probs, .p_stride = CTX, .n_tok = 1, .n_heads = 1, .n_keys0 = CTX,
        };
        pd__attend_isa(&a, isa);
    }
}

int main(void)
{
    const size_t n = (size_t)CTX * HEADS * HD;
    float *q = rand_floats(n), *k = rand_floats(n), *v = rand_floats(n), *o = rand_floats(n);
    float *probs = rand_floats((size_t)BLOCK * CTX);
    if (!q || !k || !v || !o || !probs) {
        fprintf(stderr, "micro_attention: out of memory\n");
        return 1;
    }
    const char *names[] = {"portable", "AVX2", "AVX-512"};
    const double pf_flops = 4.0 * HD * HEADS * (double)CTX * (CTX + 1) / 2;
    const double dc_flops = 4.0 * HD * HEADS * (double)CTX;
    printf("micro_attention: hd %d, %d heads, one thread; best of 5 (portable: 1)\n", HD, HEADS);
    for (int isa = PD_ATTN_PORTABLE; isa <= PD_ATTN_AVX512; isa++) {
        if (!pd__attn_isa_available((pd_attn_isa)isa)) continue;
        double best_p = 1e9, best_d = 1e9;
        const int reps = isa == PD_ATTN_PORTABLE ? 1 : 5; /* the slow reference: once */
        for (int rep = 0; rep < reps; rep++) {
            double t0 = now();
            prefill((pd_attn_isa)isa, q, k, v, o, probs);
            double t1 = now();
            for (int i = 0; i < 20; i++) decode((pd_attn_isa)isa, q, k, v, o, probs);
            double t2 = now();
            if (t1 - t0 < best_p) best_p = t1 - t0;
            if ((t2 - t1) / 20 < best_d) best_d = (t2 - t1) / 20;
        }
        printf("  %-9s prefill %d tokens %7.2f ms %6.1f GFLOP/s | decode at %d keys %7.1f us "
               "%6.1f GFLOP/s\n",
               names[isa], CTX, best_p * 1e3, pf_flops / best_p * 1e-9, CTX, best_d * 1e6,
               dc_flops / best_d * 1e-9);
    }
    free(q);
    free(k);
    free(v);
    free(o);
    free(probs);
    return 0;
}
