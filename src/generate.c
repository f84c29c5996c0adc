/* generate.c — prefill and sampling loop for one sequence. */
#include "prefixd/generate.h"

#include <string.h>

#define CHUNK_MAX 256

int pd_prefill(pd_engine *e, const pd_model *m, pd_seq *seq, const int32_t *tokens, int n,
               const float **last_logits, pd_err *err)
{
    (void)m;
    int chunk_max = pd_engine_max_tokens(e);
    if (chunk_max > CHUNK_MAX) chunk_max = CHUNK_MAX;
    if (n < 1) return pd_err_set(err, PD_EINVAL, "nothing to prefill");
    if (seq->len + n > seq->cap)
        return pd_err_set(err, PD_ERANGE, "%d tokens do not fit the sequence (%d of %d used)", n,
                          seq->len, seq->cap);
    int32_t pos[CHUNK_MAX];
    pd_seq *seqs[CHUNK_MAX];
    uint8_t want[CHUNK_MAX];
    for (int done = 0; done < n;) {
        int chunk = n - done < chunk_max ? n - done : chunk_max;
        for (int i = 0; i < chunk; i++) {
            pos[i] = seq->len + i;
            seqs[i] = seq;
            want[i] = (done + i == n - 1);
        }
        pd_batch b = {chunk, tokens + done, seqs, pos, want};
        const float *logits;
        int rc = pd_engine_step(e, &b, &logits, err);
        if (rc < 0) return rc;
        if (rc == 1 && last_logits) *last_logits = logits;
        done += chunk;
    }
    return PD_OK;
}

int pd_generate(pd_engine *e, const pd_model *m, pd_seq *seq, const int32_t *prompt,
                int n_prompt, const pd_gen_params *p, int32_t *out, int cap_out, int *n_out,
                pd_err *err)
{
    *n_out = 0;
    pd_seq_reset(seq);
    pd_sampler s;
    int rc = pd_sampler_init(&s, m->cfg.vocab_size, &p->sampling, err);
    if (rc < 0) return rc;
    const float *logits = NULL;
    rc = pd_prefill(e, m, seq, prompt, n_prompt, &logits, err);
    if (rc < 0) goto done;
    const int bos = pd_tokenizer_bos(m->tok);
    int prev = prompt[n_prompt - 1];
    rc = PD_FINISH_LENGTH;
    while (*n_out < p->max_tokens && *n_out < cap_out) {
        int tok = pd_sampler_sample(&s, logits, NULL);
        if (pd_tokenizer_is_eog(m->tok, tok) || tok == bos) {
            rc = PD_FINISH_STOP;
            break;
        }
        out[(*n_out)++] = tok;
        if (p->on_token) {
            size_t len;
            const char *bytes = pd_tokenizer_decode(m->tok, prev, tok, &len);
            if (p->on_token(tok, bytes ? bytes : "", bytes ? len : 0, p->user_data)) {
                rc = PD_FINISH_STOP;
                break;
            }
        }
        prev = tok;
        if (*n_out == p->max_tokens || *n_out == cap_out || seq->len == seq->cap) break;
        int32_t t = tok;
        int rc2 = pd_prefill(e, m, seq, &t, 1, &logits, err);
        if (rc2 < 0) {
            rc = rc2;
            break;
        }
    }
done:
    pd_sampler_release(&s);
    return rc;
}
