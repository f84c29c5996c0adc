/* tokenizer_gguf.c — the tokenizer in GGUF metadata (tokenizer.ggml.*), in
 * and out: pd_tokenizer_load_gguf and pd_tokenizer_write_gguf.
 *
 * Keys read (llama.cpp's): model ("llama" = SentencePiece, "gpt2" =
 * byte-level BPE), tokens, scores, token_type, merges, pre, bos/eos/eot/eom
 * and fim_pad/fim_rep/fim_sep _token_id, add_bos_token, add_eos_token,
 * add_space_prefix, and tokenizer.chat_template. Defaults follow llama.cpp:
 * SentencePiece adds BOS and a space prefix; BPE adds BOS only for the
 * llama3 and tekken pre-tokenizers; neither adds EOS.
 *
 * End of generation, found as llama.cpp finds it: eos, eot and eom (from
 * their keys, else eot/eom by text), the FIM pad/repo/file-separator tokens,
 * and every token whose text is one of <|eot_id|>, <|im_end|>, <|end|>,
 * <end_of_turn>, <|endoftext|>, <|eom_id|>, <EOT>. Such tokens are made
 * control tokens when the file types them otherwise (a converter bug that
 * llama.cpp also corrects). */
#include <stdlib.h>
#include <string.h>

#include "prefixd/gguf.h"
#include "tokenizer_internal.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tokenizer_gguf.c copies little-endian file values as host values"
#endif

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_SCORES "tokenizer.ggml.scores"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_MERGES "tokenizer.ggml.merges"
#define KEY_PRE "tokenizer.ggml.pre"
#define KEY_TEMPLATE "tokenizer.chat_template"

/* ---- loading ------------------------------------------------------------ */

/* Copies an optional array of n fixed-size elements into a new buffer
 * (*out, NULL when the key is absent). */
static int copy_array(const pd_gguf *g, const char *key, int elem_type, uint64_t n, void **out,
                      pd_err *err)
{
    const void *data;
    uint64_t count;
    *out = NULL;
    if (!pd_gguf_find_kv(g, key)) return PD_OK;
    int rc = pd_gguf_get_arr(g, key, elem_type, &data, &count, err);
    if (rc < 0) return rc;
    if (count != n)
        return pd_err_set(err, PD_EFORMAT, "%s: %s has %llu entries but there are %llu tokens",
                          g->path, key, (unsigned long long)count, (unsigned long long)n);
    size_t bytes = (size_t)n * pd_gguf_type_size(elem_type);
    *out = malloc(bytes ? bytes : 1);
    if (!*out) return pd_err_set(err, PD_ENOMEM, "%s: out of memory", g->path);
    if (bytes) memcpy(*out, data, bytes);
    return PD_OK;
}

/* An optional token id key: *id keeps its value when the key is absent. */
static int get_id(const pd_gguf *g, const char *key, uint64_t n, int *id, pd_err *err)
{
    int64_t v;
    if (!pd_gguf_find_kv(g, key)) return PD_OK;
    int rc = pd_gguf_get_int(g, key, 0, (int64_t)n - 1, &v, err);
    if (rc < 0) return rc;
    *id = (int)v;
    return PD_OK;
}

static int get_flag(const pd_gguf *g, const char *key, int *flag, pd_err *err)
{
    if (!pd_gguf_find_kv(g, key)) return PD_OK;
    return pd_gguf_get_bool(g, key, flag, err);
}

/* The lowest id whose piece is text (as stored: BPE raw, SentencePiece with
 * ' '), or -1. */
static int find_text(const pd_tokenizer *tok, const char *text)
{
    uint32_t len = (uint32_t)strlen(text);
    for (int i = 0; i < tok->n; i++)
        if (tok->len[i] == len && memcmp(tok->piece[i], text, len) == 0) return i;
    return -1;
}

/* The first of names that is a token, made a control token; -1 if none. */
static int find_control(pd_tokenizer *tok, const char *const *names)
{
    for (; *names; names++) {
        int id = find_text(tok, *names);
        if (id >= 0) {
            tok->type[id] = PD_TOKEN_CONTROL;
            return id;
        }
    }
    return -1;
}

static void eog_add(pd_tokenizer *tok, int id)
{
    if (id < 0 || tok->n_eog == PD__TOK_MAX_EOG) return;
    int i = tok->n_eog;
    for (int k = 0; k < tok->n_eog; k++)
        if (tok->eog[k] == id) return;
    while (i > 0 && tok->eog[i - 1] > id) { /* keep ascending */
        tok->eog[i] = tok->eog[i - 1];
        i--;
    }
    tok->eog[i] = id;
    tok->n_eog++;
}

static int find_eog(pd_tokenizer *tok, const pd_gguf *g, pd_err *err)
{
    static const char *const eot_names[] = {"<|eot_id|>",    "<|im_end|>", "<|end|>",
                                            "<end_of_turn>", "<|endoftext|>", "<EOT>",
                                            "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
                                            NULL};
    static const char *const eom_names[] = {"<|eom_id|>", NULL};
    static const char *const fim_pad[] = {"<|fim_pad|>", "<fim-pad>", "<PAD>", NULL};
    static const char *const fim_rep[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>",
                                          NULL};
    static const char *const fim_sep[] = {"<|file_sep|>", NULL};
    static const char *const eog_names[] = {"<|eot_id|>",    "<|im_end|>", "<|end|>",
                                            "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
                                            "<EOT>",         NULL};
    uint64_t n = (uint64_t)tok->n;
    int pad = -1, rep = -1, sep = -1, rc;
    if ((rc = get_id(g, "tokenizer.ggml.eot_token_id", n, &tok->eot, err)) < 0 ||
        (rc = get_id(g, "tokenizer.ggml.eom_token_id", n, &tok->eom, err)) < 0 ||
        (rc = get_id(g, "tokenizer.ggml.fim_pad_token_id", n, &pad, err)) < 0 ||
        (rc = get_id(g, "tokenizer.ggml.fim_rep_token_id", n, &rep, err)) < 0 ||
        (rc = get_id(g, "tokenizer.ggml.fim_sep_token_id", n, &sep, err)) < 0)
        return rc;
    if (tok->eot < 0) tok->eot = find_control(tok, eot_names);
    if (tok->eom < 0) tok->eom = find_control(tok, eom_names);
    if (pad < 0) pad = find_control(tok, fim_pad);
    if (rep < 0) rep = find_control(tok, fim_rep);
    if (sep < 0) sep = find_control(tok, fim_sep);
    tok->n_eog = 0;
    eog_add(tok, pad);
    eog_add(tok, rep);
    eog_add(tok, sep);
    for (const char *const *name = eog_names; *name; name++) {
        int id = find_text(tok, *name);
        if (id >= 0) {
            tok->type[id] = PD_TOKEN_CONTROL;
            eog_add(tok, id);
        }
    }
    eog_add(tok, tok->eos);
    eog_add(tok, tok->eot);
    eog_add(tok, tok->eom);
    return PD_OK;
}

/* The byte-level BPE tokenizer of g from its n tokens. */
static int load_bpe(const pd_gguf *g, const pd_gguf_str *tokens, uint64_t n, const float *scores,
                    const int32_t *types, int bos, int eos, pd_tokenizer **out, pd_err *err)
{
    const char *path = g->path;
    const pd_gguf_str *merges;
    uint64_t n_merges;
    pd_gguf_str pre = {NULL, 0};
    int rc;
    if (!pd_gguf_find_kv(g, KEY_MERGES))
        return pd_err_set(err, PD_ENOTFOUND,
                          "%s: tokenizer.ggml.model is 'gpt2' but " KEY_MERGES " is missing",
                          path);
    if ((rc = pd_gguf_get_str_arr(g, KEY_MERGES, &merges, &n_merges, err)) < 0) return rc;
    if (pd_gguf_find_kv(g, KEY_PRE) && (rc = pd_gguf_get_str(g, KEY_PRE, &pre, err)) < 0)
        return rc;
    size_t blob = 0;
    for (uint64_t i = 0; i < n; i++) blob += tokens[i].len + 1;
    pd_tokenizer *tok = pd__tokenizer_alloc((int)n, blob);
    const char **mp = malloc((n_merges ? n_merges : 1) * sizeof *mp);
    uint64_t *ml = malloc((n_merges ? n_merges : 1) * sizeof *ml);
    if (!tok || !mp || !ml) {
        pd_tokenizer_free(tok);
        free(mp);
        free(ml);
        return pd_err_set(err, PD_ENOMEM, "%s: out of memory for %llu tokens", path,
                          (unsigned long long)n);
    }
    tok->kind = PD_TOKENIZER_BPE;
    tok->bos = bos;
    tok->eos = eos;
    tok->add_space_prefix = 0;
    char *dst = tok->blob;
    for (uint64_t i = 0; i < n; i++) {
        memcpy(dst, tokens[i].ptr, tokens[i].len);
        dst[tokens[i].len] = 0;
        tok->piece[i] = dst;
        tok->len[i] = (uint32_t)tokens[i].len;
        tok->score[i] = scores ? scores[i] : 0.0f;
        tok->type[i] = types ? types[i]
                             : ((int)i == bos || (int)i == eos) ? PD_TOKEN_CONTROL : PD_TOKEN_NORMAL;
        dst += tokens[i].len + 1;
    }
    pd__tokenizer_finish(tok, 1);
    for (uint64_t i = 0; i < n_merges; i++) {
        mp[i] = merges[i].ptr;
        ml[i] = merges[i].len;
    }
    rc = pd__tokenizer_bpe_init(tok, pre.ptr, pre.len, mp, ml, n_merges, path, err);
    free(mp);
    free(ml);
    if (rc < 0) {
        pd_tokenizer_free(tok);
        return rc;
    }
    /* llama.cpp's defaults: llama3 and tekken add BOS */
    tok->add_bos = tok->ignore_merges;
    tok->add_eos = 0;
    *out = tok;
    return PD_OK;
}

int pd_tokenizer_load_gguf(const pd_gguf *g, pd_tokenizer **out, pd_err *err)
{
    PD_ASSERT(g && out);
    const char *path = g->path;
    pd_gguf_str model;
    const pd_gguf_str *tokens;
    uint64_t n;
    void *scores = NULL, *types = NULL;
    pd_tokenizer *tok = NULL;
    int rc;
    *out = NULL;
    if (!pd_gguf_find_kv(g, KEY_MODEL))
        return pd_err_set(err, PD_ENOTFOUND,
                          "%s: no tokenizer in the file (" KEY_MODEL " is missing)", path);
    if ((rc = pd_gguf_get_str(g, KEY_MODEL, &model, err)) < 0) return rc;
    int bpe = pd_gguf_str_eq(model, "gpt2");
    if (!bpe && !pd_gguf_str_eq(model, "llama"))
        return pd_err_set(err, PD_EUNSUPPORTED,
                          "%s: " KEY_MODEL " is '%.*s'; prefixd supports 'llama' (SentencePiece) "
                          "and 'gpt2' (byte-level BPE)",
                          path, (int)(model.len < 32 ? model.len : 32), model.ptr);
    if (!pd_gguf_find_kv(g, KEY_TOKENS))
        return pd_err_set(err, PD_ENOTFOUND,
                          "%s: no tokenizer in the file (" KEY_TOKENS " is missing)", path);
    if ((rc = pd_gguf_get_str_arr(g, KEY_TOKENS, &tokens, &n, err)) < 0) return rc;
    if (n == 0 || n > (uint64_t)INT32_MAX / 4)
        return pd_err_set(err, PD_EFORMAT, "%s: " KEY_TOKENS " has %llu tokens", path,
                          (unsigned long long)n);
    for (uint64_t i = 0; i < n; i++)
        if (tokens[i].len > 65536)
            return pd_err_set(err, PD_EFORMAT, "%s: token %llu is %llu bytes long", path,
                              (unsigned long long)i, (unsigned long long)tokens[i].len);

    int bos = bpe ? 11 : 1, eos = bpe ? 11 : 2; /* llama.cpp's defaults */
    if (bos >= (int)n) bos = eos = 0;
    if (!bpe && eos >= (int)n) eos = bos;
    int add_bos = -1, add_eos = -1, add_space_prefix = -1;
    if ((rc = copy_array(g, KEY_SCORES, PD_GGUF_FLOAT32, n, &scores, err)) < 0 ||
        (rc = copy_array(g, KEY_TYPES, PD_GGUF_INT32, n, &types, err)) < 0 ||
        (rc = get_id(g, "tokenizer.ggml.bos_token_id", n, &bos, err)) < 0 ||
        (rc = get_id(g, "tokenizer.ggml.eos_token_id", n, &eos, err)) < 0 ||
        (rc = get_flag(g, "tokenizer.ggml.add_bos_token", &add_bos, err)) < 0 ||
        (rc = get_flag(g, "tokenizer.ggml.add_eos_token", &add_eos, err)) < 0 ||
        (rc = get_flag(g, "tokenizer.ggml.add_space_prefix", &add_space_prefix, err)) < 0)
        goto done;

    if (bpe) {
        rc = load_bpe(g, tokens, n, scores, types, bos, eos, &tok, err);
        if (rc < 0) goto done;
    } else {
        const char **pieces = malloc((size_t)n * sizeof *pieces);
        uint32_t *lens = malloc((size_t)n * sizeof *lens);
        if (!pieces || !lens) {
            free(pieces);
            free(lens);
            rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);
            goto done;
        }
        for (uint64_t i = 0; i < n; i++) {
            pieces[i] = tokens[i].ptr;
            lens[i] = (uint32_t)tokens[i].len;
        }
        pd_err terr;
        pd_err_clear(&terr);
        rc = pd_tokenizer_create((int)n, pieces, lens, scores, types, bos, eos, &tok, &terr);
        free(pieces);
        free(lens);
        if (rc < 0) {
            pd_err_set(err, rc, "%s: %s", path, terr.msg);
            goto done;
        }
        tok->escape_input = 1;
    }
    if (add_bos >= 0) tok->add_bos = add_bos;
    if (add_eos >= 0) tok->add_eos = add_eos;
    if (add_space_prefix >= 0 && !bpe) tok->add_space_prefix = add_space_prefix;

    if ((rc = find_eog(tok, g, err)) < 0) goto done;
    if (pd__tokenizer_build_special(tok) < 0) {
        rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    if (pd_gguf_find_kv(g, KEY_TEMPLATE)) {
        pd_gguf_str t;
        if ((rc = pd_gguf_get_str(g, KEY_TEMPLATE, &t, err)) < 0) goto done;
        tok->chat_template = malloc(t.len + 1);
        if (!tok->chat_template) {
            rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);
            goto done;
        }
        memcpy(tok->chat_template, t.ptr, t.len);
        tok->chat_template[t.len] = 0;
    }
    *out = tok;
    tok = NULL;
    rc = PD_OK;
done:
    pd_tokenizer_free(tok);
    free(scores);
    free(types);
    return rc;
}

/* ---- writing ------------------------------------------------------------ */

/* The pieces as GGUF stores them (SentencePiece: ' ' as U+2581), in one
 * buffer. */
typedef struct out_pieces {
    char *blob;        /* (owned) */
    const char **ptr;  /* (n) into blob (owned) */
    uint64_t *len;     /* (n) (owned) */
} out_pieces;

static int encode_pieces(const pd_tokenizer *tok, out_pieces *op)
{
    int spm = tok->kind == PD_TOKENIZER_SPM, n = tok->n;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        total += tok->len[i];
        if (spm)
            for (uint32_t k = 0; k < tok->len[i]; k++) total += tok->piece[i][k] == ' ' ? 2 : 0;
    }
    op->blob = malloc(total ? total : 1);
    op->ptr = malloc((size_t)n * sizeof *op->ptr);
    op->len = malloc((size_t)n * sizeof *op->len);
    if (!op->blob || !op->ptr || !op->len) return PD_ENOMEM;
    char *dst = op->blob;
    for (int i = 0; i < n; i++) {
        op->ptr[i] = dst;
        for (uint32_t k = 0; k < tok->len[i]; k++) {
            char c = tok->piece[i][k];
            if (spm && c == ' ') {
                memcpy(dst, "\xe2\x96\x81", 3);
                dst += 3;
            } else {
                *dst++ = c;
            }
        }
        op->len[i] = (uint64_t)(dst - op->ptr[i]);
    }
    return PD_OK;
}

int pd_tokenizer_write_gguf(const pd_tokenizer *tok, pd_gguf_writer *w, pd_err *err)
{
    PD_ASSERT(tok && w);
    int n = tok->n, spm = tok->kind == PD_TOKENIZER_SPM;
    out_pieces op = {0};
    int rc;
    if (encode_pieces(tok, &op) < 0) {
        rc = pd_err_set(err, PD_ENOMEM, "out of memory for the tokenizer");
        goto done;
    }
    if ((rc = pd_gguf_add_str(w, KEY_MODEL, spm ? "llama" : "gpt2", err)) < 0 ||
        (rc = pd_gguf_add_arr_str(w, KEY_TOKENS, op.ptr, op.len, (uint64_t)n, err)) < 0)
        goto done;
    if (spm && (rc = pd_gguf_add_arr_f32(w, KEY_SCORES, tok->score, (uint64_t)n, err)) < 0)
        goto done;
    if ((rc = pd_gguf_add_arr_i32(w, KEY_TYPES, tok->type, (uint64_t)n, err)) < 0) goto done;
    if (!spm) {
        uint64_t *ml = malloc((tok->n_merges ? (size_t)tok->n_merges : 1) * sizeof *ml);
        if (!ml) {
            rc = pd_err_set(err, PD_ENOMEM, "out of memory for the merges");
            goto done;
        }
        for (int i = 0; i < tok->n_merges; i++) ml[i] = tok->merge_len[i];
        rc = pd_gguf_add_arr_str(w, KEY_MERGES, tok->merge, ml, (uint64_t)tok->n_merges, err);
        free(ml);
        if (rc < 0 || (rc = pd_gguf_add_str(w, KEY_PRE, tok->pre, err)) < 0) goto done;
    }
    if ((rc = pd_gguf_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)tok->bos, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)tok->eos, err)) < 0 ||
        (tok->eot >= 0 &&
         (rc = pd_gguf_add_u32(w, "tokenizer.ggml.eot_token_id", (uint32_t)tok->eot, err)) < 0) ||
        (tok->eom >= 0 &&
         (rc = pd_gguf_add_u32(w, "tokenizer.ggml.eom_token_id", (uint32_t)tok->eom, err)) < 0) ||
        (rc = pd_gguf_add_bool(w, "tokenizer.ggml.add_bos_token", tok->add_bos, err)) < 0 ||
        (rc = pd_gguf_add_bool(w, "tokenizer.ggml.add_eos_token", tok->add_eos, err)) < 0)
        goto done;
    if (spm && !tok->add_space_prefix &&
        (rc = pd_gguf_add_bool(w, "tokenizer.ggml.add_space_prefix", 0, err)) < 0)
        goto done;
    if (tok->chat_template && (rc = pd_gguf_add_str(w, KEY_TEMPLATE, tok->chat_template, err)) < 0)
        goto done;
    rc = PD_OK;
done:
    free(op.blob);
    free(op.ptr);
    free(op.len);
    return rc;
}
