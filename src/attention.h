/* attention.h — softmax attention of a block of query rows over one kv
 * group's keys, shared by the engine (engine.c) and training (backprop.c).
 * Internal to libprefixd.
 *
 * The keys form one logical sequence: j < P are the prefix slots
 * (pk, pv: P rows of hd floats, contiguous), j >= P the cache entries
 * e = j - P: contiguous (blk NULL) at k + e * kv_stride, or paged (a
 * sequence's block table, kvpool.h) at
 * k + blk[e / PD_KV_BLOCK] * blk_stride + (e % PD_KV_BLOCK) * kv_stride.
 * The boundaries are only addresses: a prefix built from a prompt's own
 * cache gives the same bits as the prompt, a paged cache the same bits as a
 * contiguous one.
 *
 * Storage: f16 = 0, every prefix and cache row is floats; f16 = 1, every
 * one is IEEE halves (uint16_t, the F16 KV cache: config kv_dtype), each
 * widened exactly to a float as it is loaded (vcvtph2ps in the vector
 * kernels, pd_f16_to_f32 in the portable one), so the float operations
 * below run on the widened values and every kernel still gives the same
 * bits. Strides and offsets count elements (floats or halves). Training
 * (backprop.c) always attends over floats.
 *
 * Rows: n_tok tokens x n_heads query heads that share these keys (the heads
 * of one kv group, or some of them). Row r = i * n_heads + h reads its query
 * at q + i * q_stride + h * hd, writes its output at o + i * o_stride + h * hd
 * and its probabilities at probs + r * p_stride, and sees the first
 * n_keys0 + i keys (causal within the block: token i sits one position after
 * token i - 1).
 *
 * One fixed sequence of float operations per row, whatever the other rows,
 * the blocking, the thread or the instruction set (so a token's output is
 * the same bits alone or in any batch, and every kernel computes the same
 * bits as the portable one):
 *   s_j = dot8(q, key_j) * (1 / sqrtf(hd)), dot8 the 8-lane order of
 *         matmul.h (lane sums over i ≡ l (mod 8) with fused multiply-adds in
 *         increasing i, the tail's missing lanes adding fma(0, 0, ·), then
 *         (l0+l4, l1+l5, l2+l6, l3+l7) -> (s0+s2, s1+s3) -> sum);
 *   m   = max_j s_j;  e_j = pd__attn_exp(s_j - m) (attention.c);
 *   sum = the same 8-lane order over j (lane j mod 8, in increasing j);
 *   p_j = e_j / sum;
 *   o_i = fma(p_j, v_j[i], o_i) over j in increasing order from o_i = 0. */
#ifndef PREFIXD_ATTENTION_H
#define PREFIXD_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "prefixd/kvpool.h"

typedef struct pd_attn {
    int hd;                 /* head dimension */
    int P;                  /* prefix slots */
    int f16;                /* 1: pk, pv, k, v point at halves; 0: at floats */
    const void *pk, *pv;    /* (P, hd) the group's prefix keys and values; NULL when P == 0 */
    const void *k, *v;      /* the group's first cache entry; entry e at k + e * kv_stride */
    size_t kv_stride;       /* elements */
    const int32_t *blk;     /* paged: block of entry e is blk[e / PD_KV_BLOCK]; NULL: contiguous */
    size_t blk_stride;      /* paged: elements between consecutive blocks of the pool */
    const float *q;         /* row (i, h) at q + i * q_stride + h * hd */
    size_t q_stride;
    float *o;               /* row (i, h) at o + i * o_stride + h * hd */
    size_t o_stride;
    float *probs;           /* row r at probs + r * p_stride, p_stride >= its key count */
    size_t p_stride;
    int n_tok, n_heads;     /* rows: n_tok * n_heads */
    int n_keys0;            /* keys seen by token 0 (>= 1); token i sees n_keys0 + i */
} pd_attn;

/* The kernels, fastest first; pd__attn_best() is the one pd__attend uses. */
typedef enum pd_attn_isa {
    PD_ATTN_PORTABLE = 0,
    PD_ATTN_AVX2 = 1,   /* AVX2 + FMA */
    PD_ATTN_AVX512 = 2, /* AVX-512 F/VL: 32 vector registers, larger tiles */
} pd_attn_isa;

/* Computes every row of a (contract above). Borrows every pointer; writes
 * only o's rows and the first key-count floats of each probs row. */
void pd__attend(const pd_attn *a);

/* The same with a chosen kernel (tests, benchmarks); isa must be available. */
void pd__attend_isa(const pd_attn *a, pd_attn_isa isa);

/* The best kernel this CPU runs; 1 when isa runs here. */
pd_attn_isa pd__attn_best(void);
int pd__attn_isa_available(pd_attn_isa isa);

/* The exponential every kernel uses (for x <= 0; tests check it against
 * exp()): x clamped below at -87, n = round(x·log2 e), r = x − n·ln2 in two
 * fused steps, a degree-5 polynomial in r, times 2^n. */
float pd__attn_exp(float x);

/* pd__attn_exp's constants, shared by every kernel. */
#define PD__ATTN_EXP_MIN (-87.0f)          /* 2^n stays a normal number */
#define PD__ATTN_LOG2E 1.44269504088896341f
#define PD__ATTN_SHIFT 12582912.0f         /* 1.5 * 2^23: adding it rounds to an integer */
#define PD__ATTN_LN2_HI 0.693359375f       /* ln 2 = HI + LO, HI with few mantissa bits */
#define PD__ATTN_LN2_LO (-2.12194440e-4f)
#define PD__ATTN_C5 1.9875691500e-4f       /* exp(r) ~ 1 + r + r^2 (C0 + C1 r + ... + C5 r^5) */
#define PD__ATTN_C4 1.3981999507e-3f
#define PD__ATTN_C3 8.3334519073e-3f
#define PD__ATTN_C2 4.1665795894e-2f
#define PD__ATTN_C1 1.6666665459e-1f
#define PD__ATTN_C0 5.0000001201e-1f

/* The kernels (attention.c; attention_avx2.c, attention_avx512.c over
 * floats; attention_avx2_f16.c, attention_avx512_f16.c over halves). */
void pd__attend_portable(const pd_attn *a);
void pd__attend_avx2(const pd_attn *a);
void pd__attend_avx512(const pd_attn *a);
void pd__attend_avx2_f16(const pd_attn *a);
void pd__attend_avx512_f16(const pd_attn *a);

/* Elements from a cache base (a->k or a->v) to cache entry e's row. */
static inline size_t pd__attn_entry_at(const pd_attn *a, int e)
{
    if (!a->blk) return (size_t)e * a->kv_stride;
    return (size_t)a->blk[e >> PD_KV_BLOCK_SHIFT] * a->blk_stride +
           (size_t)(e & (PD_KV_BLOCK - 1)) * a->kv_stride;
}

#endif
