/* synth_model.c — random-weight GGUF models (contract in synth_model.h). */
#include "synth_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/model.h"

/* xorshift64* (a fixed, portable stream; state never 0) */
uint64_t synth_rand(uint64_t *state)
{
    uint64_t x = *state ? *state : 0x2545F4914F6CDD1DULL;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

float synth_randf(uint64_t *state)
{
    return (float)(synth_rand(state) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

static int head_dim(const synth_spec *s) { return s->head_dim ? s->head_dim : s->dim / s->n_heads; }

int synth_list_tensors(const synth_spec *s, synth_tensor *t)
{
    const int64_t D = s->dim, hd = head_dim(s), QD = (int64_t)s->n_heads * hd;
    const int64_t KV = (int64_t)s->n_kv_heads * hd, H = s->hidden_dim, V = s->vocab_size;
    int n = 0;
#define ADD(kind_, ne0_, ne1_, ...)                                              \
    do {                                                                         \
        if (t) {                                                                 \
            snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__);                  \
            t[n].ne0 = (ne0_);                                                   \
            t[n].ne1 = (ne1_);                                                   \
            t[n].kind = (kind_);                                                 \
        }                                                                        \
        n++;                                                                     \
    } while (0)
    ADD(SYNTH_MATRIX, D, V, "token_embd.weight");
    if (s->rope_scaling == PD_ROPE_SCALING_LLAMA3) ADD(SYNTH_ROPE_FREQS, hd / 2, 0, "rope_freqs.weight");
    const int biases = s->arch == PD_ARCH_QWEN2 || (s->arch == PD_ARCH_LLAMA && s->biases);
    for (int l = 0; l < s->n_layers; l++) {
        ADD(SYNTH_NORM, D, 0, "blk.%d.attn_norm.weight", l);
        if (s->arch == PD_ARCH_PHI3) {
            /* q, k, v in one matrix; gate then up in one (llama.cpp's phi3) */
            ADD(SYNTH_MATRIX, D, QD + 2 * KV, "blk.%d.attn_qkv.weight", l);
            ADD(SYNTH_MATRIX, QD, D, "blk.%d.attn_output.weight", l);
            ADD(SYNTH_NORM, D, 0, "blk.%d.ffn_norm.weight", l);
            ADD(SYNTH_MATRIX, H, D, "blk.%d.ffn_down.weight", l);
            ADD(SYNTH_MATRIX, D, 2 * H, "blk.%d.ffn_up.weight", l);
            continue;
        }
        ADD(SYNTH_MATRIX, D, QD, "blk.%d.attn_q.weight", l);
        ADD(SYNTH_MATRIX, D, KV, "blk.%d.attn_k.weight", l);
        ADD(SYNTH_MATRIX, D, KV, "blk.%d.attn_v.weight", l);
        if (biases) {
            ADD(SYNTH_BIAS, QD, 0, "blk.%d.attn_q.bias", l);
            ADD(SYNTH_BIAS, KV, 0, "blk.%d.attn_k.bias", l);
            ADD(SYNTH_BIAS, KV, 0, "blk.%d.attn_v.bias", l);
        }
        if (s->arch == PD_ARCH_QWEN3) {
            ADD(SYNTH_NORM, hd, 0, "blk.%d.attn_q_norm.weight", l);
            ADD(SYNTH_NORM, hd, 0, "blk.%d.attn_k_norm.weight", l);
        }
        ADD(SYNTH_MATRIX, QD, D, "blk.%d.attn_output.weight", l);
        ADD(SYNTH_NORM, D, 0, "blk.%d.ffn_norm.weight", l);
        ADD(SYNTH_MATRIX, D, H, "blk.%d.ffn_gate.weight", l);
        ADD(SYNTH_MATRIX, H, D, "blk.%d.ffn_down.weight", l);
        ADD(SYNTH_MATRIX, D, H, "blk.%d.ffn_up.weight", l);
    }
    ADD(SYNTH_NORM, D, 0, "output_norm.weight");
    if (!s->tied) ADD(SYNTH_MATRIX, D, V, "output.weight");
    if (s->extra_tensor) ADD(SYNTH_BIAS, D, 0, "%s", s->extra_tensor);
#undef ADD
    if (s->skip_tensor && t)
        for (int i = 0; i < n; i++)
            if (strcmp(t[i].name, s->skip_tensor) == 0) {
                memmove(&t[i], &t[i + 1], (size_t)(n - i - 1) * sizeof *t);
                return n - 1;
            }
    return n;
}

/* Llama 3.1's rope factors, as llama.cpp's converter computes them. */
static void llama3_factors(const synth_spec *s, float *out)
{
    const int hd = head_dim(s);
    const double base = s->rope_base > 0 ? s->rope_base : 10000.0;
    const double factor = s->rope_factor > 0 ? s->rope_factor : 8.0, low = 1.0, high = 4.0;
    const double old_ctx = s->rope_orig_ctx > 0 ? s->rope_orig_ctx : 8192;
    const double low_wl = old_ctx / low, high_wl = old_ctx / high;
    for (int j = 0; j < hd / 2; j++) {
        double freq = 1.0 / pow(base, (double)(2 * j) / hd);
        double wl = 2 * M_PI / freq;
        if (wl < high_wl) out[j] = 1.0f;
        else if (wl > low_wl) out[j] = (float)factor;
        else {
            double smooth = (old_ctx / wl - low) / (high - low);
            out[j] = (float)(1.0 / ((1 - smooth) / factor + smooth));
        }
    }
}

void synth_fill(const synth_spec *s, const synth_tensor *t, int i, float *out)
{
    const size_t n = (size_t)t->ne0 * (size_t)(t->ne1 ? t->ne1 : 1);
    const float scale = s->scale > 0 ? s->scale : 1.0f / sqrtf((float)s->dim);
    uint64_t rng = (s->seed + 1) * 0x9E3779B97F4A7C15ULL + (uint64_t)i * 0xD1B54A32D192ED03ULL;
    switch (t->kind) {
    case SYNTH_ROPE_FREQS: llama3_factors(s, out); break;
    case SYNTH_NORM:
        for (size_t j = 0; j < n; j++) out[j] = 1.0f + 0.2f * synth_randf(&rng);
        break;
    case SYNTH_BIAS:
        for (size_t j = 0; j < n; j++) out[j] = 0.5f * scale * synth_randf(&rng);
        break;
    default:
        for (size_t j = 0; j < n; j++) out[j] = scale * synth_randf(&rng);
    }
}

int synth_add_hparams(pd_gguf_writer *w, const synth_spec *s, uint32_t file_type, pd_err *err)
{
    const char *a = pd_arch_name(s->arch);
    char k[96];
    int rc;
#define KEY(suffix) (snprintf(k, sizeof k, "%s.%s", a, suffix), k)
    if ((rc = pd_gguf_add_str(w, "general.architecture", a, err)) < 0 ||
        (rc = pd_gguf_add_str(w, "general.name", s->name ? s->name : "prefixd synthetic",
                              err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "general.file_type", file_type, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, KEY("context_length"), (uint32_t)s->seq_len, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, KEY("embedding_length"), (uint32_t)s->dim, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, KEY("block_count"), (uint32_t)s->n_layers, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, KEY("feed_forward_length"), (uint32_t)s->hidden_dim, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, KEY("attention.head_count"), (uint32_t)s->n_heads, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, KEY("attention.head_count_kv"), (uint32_t)s->n_kv_heads,
                              err)) < 0 ||
        (rc = pd_gguf_add_f32(w, KEY("rope.freq_base"), s->rope_base > 0 ? s->rope_base : 1e4f,
                              err)) < 0 ||
        (rc = pd_gguf_add_u32(w, KEY("rope.dimension_count"),
                              (uint32_t)(s->rope_dims ? s->rope_dims : head_dim(s)), err)) < 0 ||
        (rc = pd_gguf_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, KEY("vocab_size"), (uint32_t)s->vocab_size, err)) < 0)
        return rc;
    if ((s->head_dim || s->value_length) &&
        ((rc = pd_gguf_add_u32(w, KEY("attention.key_length"), (uint32_t)head_dim(s), err)) < 0 ||
         (rc = pd_gguf_add_u32(w, KEY("attention.value_length"),
                               (uint32_t)(s->value_length ? s->value_length : head_dim(s)),
                               err)) < 0))
        return rc;
    const char *type = s->rope_type_str ? s->rope_type_str
                       : s->rope_scaling == PD_ROPE_SCALING_LINEAR ? "linear"
                                                                   : NULL;
    if (type && (rc = pd_gguf_add_str(w, KEY("rope.scaling.type"), type, err)) < 0) return rc;
    if (s->rope_scaling == PD_ROPE_SCALING_LINEAR &&
        (rc = pd_gguf_add_f32(w, KEY("rope.scaling.factor"), s->rope_factor, err)) < 0)
        return rc;
    if (s->extra_key && (rc = pd_gguf_add_f32(w, s->extra_key, s->extra_value, err)) < 0)
        return rc;
    if ((s->sliding_window > 0 || s->arch == PD_ARCH_PHI3) &&
        (rc = pd_gguf_add_u32(w, KEY("attention.sliding_window"), (uint32_t)s->sliding_window,
                              err)) < 0)
        return rc;
#undef KEY
    return PD_OK;
}

int synth_add_vocab_synthetic(pd_gguf_writer *w, int V, pd_err *err)
{
    char **pieces = malloc((size_t)V * sizeof *pieces);
    char *buf = malloc((size_t)V * 16);
    float *scores = malloc((size_t)V * sizeof *scores);
    int32_t *types = malloc((size_t)V * sizeof *types);
    int rc;
    if (!pieces || !buf || !scores || !types) {
        rc = pd_err_set(err, PD_ENOMEM, "out of memory for the synthetic vocabulary");
        goto done;
    }
    for (int i = 0; i < V; i++) {
        char *p = buf + (size_t)i * 16;
        if (i == 0) strcpy(p, "<unk>");
        else if (i == 1) strcpy(p, "<s>");
        else if (i == 2) strcpy(p, "</s>");
        else if (i < 3 + 256) snprintf(p, 16, "<0x%02X>", i - 3);
        else snprintf(p, 16, "tok%d", i);
        pieces[i] = p;
        scores[i] = i < 3 + 256 ? 0.0f : -(float)i;
        types[i] = i == 0 ? 2 : i < 3 ? 3 : i < 3 + 256 ? 6 : 1;
    }
    const uint64_t n = (uint64_t)V;
    if ((rc = pd_gguf_add_str(w, "tokenizer.ggml.model", "llama", err)) >= 0 &&
        (rc = pd_gguf_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)pieces, NULL,
                                  n, err)) >= 0 &&
        (rc = pd_gguf_add_arr_f32(w, "tokenizer.ggml.scores", scores, n, err)) >= 0 &&
        (rc = pd_gguf_add_arr_i32(w, "tokenizer.ggml.token_type", types, n, err)) >= 0 &&
        (rc = pd_gguf_add_u32(w, "tokenizer.ggml.bos_token_id", 1, err)) >= 0)
        rc = pd_gguf_add_u32(w, "tokenizer.ggml.eos_token_id", 2, err);
done:
    free(pieces);
    free(buf);
    free(scores);
    free(types);
    return rc;
}

/* One scalar pair of src re-encoded as its own C type. */
static int copy_scalar(pd_gguf_writer *w, const char *key, const pd_gguf_kv *kv, pd_err *err)
{
    union {
        uint8_t u8;
        int8_t i8;
        uint16_t u16;
        int16_t i16;
        uint32_t u32;
        int32_t i32;
        uint64_t u64;
        int64_t i64;
        float f32;
        double f64;
    } v;
    switch (kv->type) {
    case PD_GGUF_UINT8: case PD_GGUF_BOOL: v.u8 = (uint8_t)kv->v.u; break;
    case PD_GGUF_INT8: v.i8 = (int8_t)kv->v.i; break;
    case PD_GGUF_UINT16: v.u16 = (uint16_t)kv->v.u; break;
    case PD_GGUF_INT16: v.i16 = (int16_t)kv->v.i; break;
    case PD_GGUF_UINT32: v.u32 = (uint32_t)kv->v.u; break;
    case PD_GGUF_INT32: v.i32 = (int32_t)kv->v.i; break;
    case PD_GGUF_UINT64: v.u64 = kv->v.u; break;
    case PD_GGUF_INT64: v.i64 = kv->v.i; break;
    case PD_GGUF_FLOAT32: v.f32 = (float)kv->v.f; break;
    case PD_GGUF_FLOAT64: v.f64 = kv->v.f; break;
    default: return pd_err_set(err, PD_EUNSUPPORTED, "%s: cannot copy type %d", key, kv->type);
    }
    return pd_gguf_add_scalar(w, key, kv->type, &v, err);
}

int synth_copy_vocab(pd_gguf_writer *w, const pd_gguf *src, int *n_tokens, pd_err *err)
{
    *n_tokens = 0;
    for (size_t i = 0; i < src->n_kv; i++) {
        const pd_gguf_kv *kv = &src->kv[i];
        if (kv->key.len < 10 || memcmp(kv->key.ptr, "tokenizer.", 10) != 0) continue;
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)(kv->key.len < 255 ? kv->key.len : 255),
                 kv->key.ptr);
        int rc;
        if (kv->type == PD_GGUF_STRING) {
            char *z = malloc(kv->v.s.len + 1);
            if (!z) return pd_err_set(err, PD_ENOMEM, "out of memory copying %s", key);
            memcpy(z, kv->v.s.ptr, kv->v.s.len);
            z[kv->v.s.len] = 0;
            rc = pd_gguf_add_str(w, key, z, err);
            free(z);
        } else if (kv->type == PD_GGUF_ARRAY && kv->arr_type == PD_GGUF_STRING) {
            const char **p = malloc((kv->arr_n ? kv->arr_n : 1) * sizeof *p);
            uint64_t *len = malloc((kv->arr_n ? kv->arr_n : 1) * sizeof *len);
            if (!p || !len) {
                free(p);
                free(len);
                return pd_err_set(err, PD_ENOMEM, "out of memory copying %s", key);
            }
            for (uint64_t j = 0; j < kv->arr_n; j++) {
                p[j] = kv->arr_strs[j].ptr;
                len[j] = kv->arr_strs[j].len;
            }
            rc = pd_gguf_add_arr_str(w, key, p, len, kv->arr_n, err);
            free(p);
            free(len);
            if (rc >= 0 && strcmp(key, "tokenizer.ggml.tokens") == 0) *n_tokens = (int)kv->arr_n;
        } else if (kv->type == PD_GGUF_ARRAY) {
            if (kv->arr_type == PD_GGUF_ARRAY)
                return pd_err_set(err, PD_EUNSUPPORTED, "%s: nested arrays are not copied", key);
            rc = pd_gguf_add_arr(w, key, kv->arr_type, kv->arr_data, kv->arr_n, err);
        } else {
            rc = copy_scalar(w, key, kv, err);
        }
        if (rc < 0) return rc;
    }
    if (*n_tokens == 0)
        return pd_err_set(err, PD_EFORMAT, "%s: no tokenizer.ggml.tokens to copy", src->path);
    return PD_OK;
}

int synth_write(const synth_spec *spec, const char *vocab_path, const char *out, pd_err *err)
{
    synth_spec s = *spec;
    pd_gguf *voc = NULL;
    pd_gguf_writer *w = NULL;
    synth_tensor *t = NULL;
    float *data = NULL;
    int rc, n_tok = 0;
    if ((rc = pd_gguf_writer_create(&w, err)) < 0) return rc;
    if (vocab_path) {
        /* the vocabulary's size decides the embedding's */
        if ((rc = pd_gguf_open(vocab_path, &voc, err)) < 0) goto done;
        const pd_gguf_kv *kv = pd_gguf_find_kv(voc, "tokenizer.ggml.tokens");
        if (!kv || kv->type != PD_GGUF_ARRAY || kv->arr_n < 1 || kv->arr_n > (1u << 22)) {
            rc = pd_err_set(err, PD_EFORMAT, "%s: no usable tokenizer.ggml.tokens", vocab_path);
            goto done;
        }
        s.vocab_size = (int)kv->arr_n;
    }
    if ((rc = synth_add_hparams(w, &s, 0, err)) < 0) goto done;
    if (vocab_path) rc = synth_copy_vocab(w, voc, &n_tok, err);
    else rc = synth_add_vocab_synthetic(w, s.vocab_size, err);
    if (rc < 0) goto done;
    t = malloc((size_t)synth_list_tensors(&s, NULL) * sizeof *t);
    if (!t) {
        rc = pd_err_set(err, PD_ENOMEM, "out of memory");
        goto done;
    }
    const int nt = synth_list_tensors(&s, t); /* one fewer with skip_tensor */
    size_t total = 0;
    for (int i = 0; i < nt; i++) total += (size_t)t[i].ne0 * (size_t)(t[i].ne1 ? t[i].ne1 : 1);
    data = malloc(total * sizeof *data);
    if (!data) {
        rc = pd_err_set(err, PD_ENOMEM, "out of memory for %zu weights", total);
        goto done;
    }
    float *p = data;
    for (int i = 0; i < nt; i++) {
        int64_t ne[2] = {t[i].ne0, t[i].ne1};
        synth_fill(&s, &t[i], i, p);
        if ((rc = pd_gguf_add_tensor(w, t[i].name, t[i].ne1 ? 2 : 1, ne, PD_GGML_F32, p, err)) <
            0)
            goto done;
        p += (size_t)t[i].ne0 * (size_t)(t[i].ne1 ? t[i].ne1 : 1);
    }
    rc = pd_gguf_writer_write(w, out, err);
done:
    free(data);
    free(t);
    pd_gguf_writer_free(w);
    pd_gguf_free(voc);
    return rc;
}
