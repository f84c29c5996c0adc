/* fuzz_dataset.c — JSONL training lines: pd_dataset_parse over the input
 * bytes with the shipped tokenizer and a 504-token budget (seq_len 512
 * minus an 8-token prefix), once skipping bad lines and once failing on the
 * first. Every example must start with BOS, stay within the budget, and
 * have a target; the two modes must agree on a file without bad lines. */
#include "prefixd/dataset.h"
#include "util.h"

static void check(const pd_dataset *d, const pd_dataset_params *dp, const pd_tokenizer *tok)
{
    FUZZ_CHECK(d->n >= 1 && d->n <= PD_DATASET_MAX_EXAMPLES);
    size_t tokens = 0, targets = 0;
    int max_len = 0;
    for (int i = 0; i < d->n; i++) {
        const pd_example *e = &d->ex[i];
        FUZZ_CHECK(e->n >= 2 && e->n <= dp->max_tokens);
        FUZZ_CHECK(e->tokens == d->tokens + tokens && e->loss_mask == d->mask + tokens);
        FUZZ_CHECK(e->tokens[0] == pd_tokenizer_bos(tok));
        FUZZ_CHECK(i == 0 || d->line[i] > d->line[i - 1]);
        int t = 0;
        for (int j = 0; j < e->n; j++) {
            FUZZ_CHECK(e->tokens[j] >= 0 && e->tokens[j] < pd_tokenizer_vocab_size(tok));
            FUZZ_CHECK(e->loss_mask[j] <= 1 && (j >= dp->first_target || !e->loss_mask[j]));
            t += e->loss_mask[j];
        }
        FUZZ_CHECK(t >= 1);
        tokens += (size_t)e->n;
        targets += (size_t)t;
        if (e->n > max_len) max_len = e->n;
    }
    FUZZ_CHECK(tokens == d->n_tokens && targets == d->n_targets && max_len == d->max_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const pd_tokenizer *tok = fuzz_tokenizer();
    pd_dataset_params dp = pd_dataset_default_params();
    dp.max_tokens = 512 - 8;
    pd_dataset *skip, *strict;
    pd_err err;
    dp.skip_bad_lines = 1;
    int rc_skip = pd_dataset_parse((const char *)data, size, "fuzz.jsonl", tok, &dp, &skip, &err);
    if (rc_skip < 0)
        FUZZ_CHECK(err.code < 0 && err.msg[0]);
    else
        check(skip, &dp, tok);
    dp.skip_bad_lines = 0;
    int rc_strict = pd_dataset_parse((const char *)data, size, "fuzz.jsonl", tok, &dp, &strict,
                                     &err);
    if (rc_strict < 0) {
        FUZZ_CHECK(err.code < 0 && err.msg[0]);
    } else {
        check(strict, &dp, tok);
        FUZZ_CHECK(rc_skip == PD_OK && skip->n == strict->n && skip->n_skipped == 0 &&
                   skip->n_tokens == strict->n_tokens);
    }
    pd_dataset_free(skip);
    pd_dataset_free(strict);
    return 0;
}
