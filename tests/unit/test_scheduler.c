/* test_scheduler.c — continuous batching: many concurrent greedy requests
 * give exactly what each gives alone; cancel frees the sequence; a full
 * queue refuses; context overflow is refused with the numbers; shutdown
 * finishes or cancels everything; prompt scoring equals the engine stepped
 * one token at a time with a log-softmax in double. */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/generate.h"
#include "prefixd/scheduler.h"

#include "testutil.h"

TEST_GROUP_MODEL()

static const char *const prompts[] = {"Once upon a time", "The little dog", "Tom and Sue went",
                                      "One day", "A big red ball", "She was happy because",
                                      "The sun", "Lily saw a bird"};
#define NP (int)(sizeof prompts / sizeof *prompts)

static int encode(const char *text, int32_t *toks, int cap)
{
    int n = pd_tokenizer_encode(model->tok, text, strlen(text), 1, 0, toks, cap);
    assert_true(n > 0 && n <= cap);
    return n;
}

static void test_concurrent_equals_alone(void **state)
{
    (void)state;
    enum { NR = 24 };
    pd_sched_params sp = pd_sched_default_params();
    sp.max_seqs = 9; /* fewer slots than requests: some wait in the queue */
    sp.max_step_tokens = 16; /* prompts arrive in several prefill chunks */
    pd_sched *s;
    assert_int_equal(pd_sched_create(model, &sp, &s, NULL), PD_OK);
    pd_request *rq[NR];
    int32_t toks[64];
    for (int i = 0; i < NR; i++) {
        int n = encode(prompts[i % NP], toks, 64);
        assert_int_equal(pd_request_create(toks, n, 20 + 7 * i, &rq[i], NULL), PD_OK);
        if (i % 3 == 2) { /* some sampled with a seed: reproducible too */
            rq[i]->sampling.temperature = 0.8f;
            rq[i]->sampling.seed = (uint64_t)i;
        }
        assert_int_equal(pd_sched_submit(s, rq[i], NULL), PD_OK);
    }
    pd_engine *e;
    assert_int_equal(pd_engine_create(model, NULL, &e, NULL), PD_OK);
    for (int i = 0; i < NR; i++) {
        while (pd_request_wait(rq[i], 1 << 30, 1000) >= 0 && rq[i]->state != PD_REQ_DONE) {
        }
        int n = encode(prompts[i % NP], toks, 64);
        pd_seq *seq;
        assert_int_equal(pd_seq_create(model, n + rq[i]->max_tokens, &seq, NULL), PD_OK);
        pd_gen_params gp = {0};
        gp.max_tokens = rq[i]->max_tokens;
        gp.sampling = rq[i]->sampling;
        int32_t out[256];
        int n_out;
        int fin = pd_generate(e, model, seq, toks, n, &gp, out, 256, &n_out, NULL);
        assert_int_equal(rq[i]->n_out, n_out);
        for (int k = 0; k < n_out; k++) assert_int_equal(rq[i]->out[k].id, out[k]);
        assert_int_equal(rq[i]->finish,
                         fin == PD_FINISH_STOP ? PD_FINISH_REASON_STOP : PD_FINISH_REASON_LENGTH);
        assert_true(rq[i]->t_first >= rq[i]->t_submit);
        pd_seq_free(seq);
        pd_request_release(rq[i]);
    }
    pd_sched_stats st;
    pd_sched_stats_get(s, &st);
    assert_int_equal(st.seqs_freed, NR);
    assert_int_equal(st.running, 0);
    uint64_t multi = 0;
    for (int b = 1; b < 8; b++) multi += st.batch_hist[b];
    assert_true(multi > 0); /* some steps really batched several tokens */
    pd_engine_free(e);
    pd_sched_free(s, 1000);
}

static void test_cancel_frees_sequence(void **state)
{
    (void)state;
    pd_sched *s;
    assert_int_equal(pd_sched_create(model, NULL, &s, NULL), PD_OK);
    int32_t toks[64];
    int n = encode("Once upon a time", toks, 64);
    pd_request *rq;
    assert_int_equal(pd_request_create(toks, n, 400, &rq, NULL), PD_OK);
    rq->sampling.temperature = 1.0f; /* keep going past story ends less often */
    rq->top_logprobs = 3;
    pd_request *quiet; /* no logprobs asked: none computed */
    assert_int_equal(pd_request_create(toks, n, 1, &quiet, NULL), PD_OK);
    assert_int_equal(pd_sched_submit(s, quiet, NULL), PD_OK);
    assert_int_equal(pd_sched_submit(s, rq, NULL), PD_OK);
    assert_true(pd_request_wait(rq, 0, 5000) >= 1);
    /* top logprobs are sorted and the sampled token's logprob is finite, and
     * the same number as its entry in the top list when it is there */
    assert_int_equal(rq->out[0].n_top, 3);
    assert_true(rq->out[0].top_logprobs[0] >= rq->out[0].top_logprobs[1]);
    assert_true(rq->out[0].top_logprobs[0] <= 0.0f);
    assert_true(isfinite(rq->out[0].logprob) && rq->out[0].logprob <= 0.0f);
    for (int k = 0; k < 3; k++)
        if (rq->out[0].top_ids[k] == rq->out[0].id)
            assert_true(fabsf(rq->out[0].top_logprobs[k] - rq->out[0].logprob) < 1e-6f);
    while (quiet->state != PD_REQ_DONE) pd_request_wait(quiet, 1 << 30, 100);
    assert_true(quiet->n_out == 0 || isnan(quiet->out[0].logprob));
    pd_request_release(quiet);
    pd_request_cancel(rq);
    while (rq->state != PD_REQ_DONE) pd_request_wait(rq, 1 << 30, 100);
    assert_true(rq->finish == PD_FINISH_REASON_CANCELLED || rq->finish == PD_FINISH_REASON_STOP);
    pd_sched_stats st;
    pd_sched_stats_get(s, &st);
    assert_int_equal(st.seqs_freed, 2);
    assert_int_equal(st.running, 0);
    pd_request_release(rq);
    pd_sched_free(s, 0);
}

static void test_queue_full_and_context(void **state)
{
    (void)state;
    pd_sched_params sp = pd_sched_default_params();
    sp.max_seqs = 1;
    sp.queue_limit = 2;
    pd_sched *s;
    assert_int_equal(pd_sched_create(model, &sp, &s, NULL), PD_OK);
    int32_t toks[64];
    int n = encode("Once upon a time", toks, 64);
    pd_request *rq[4];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pd_request_create(toks, n, 500, &rq[i], NULL), PD_OK);
        rq[i]->sampling.temperature = 1.0f;
    }
    assert_int_equal(pd_sched_submit(s, rq[0], NULL), PD_OK);
    while (rq[0]->state == PD_REQ_QUEUED) pd_request_wait(rq[0], 0, 10);
    assert_int_equal(pd_sched_submit(s, rq[1], NULL), PD_OK);
    assert_int_equal(pd_sched_submit(s, rq[2], NULL), PD_OK);
    pd_err err;
    assert_int_equal(pd_sched_submit(s, rq[3], &err), PD_EBUSY);
    assert_non_null(strstr(err.msg, "queue is full"));
    for (int i = 0; i < 3; i++) pd_request_cancel(rq[i]);
    pd_request *big;
    assert_int_equal(pd_request_create(toks, n, 510, &big, NULL), PD_OK);
    assert_int_equal(pd_sched_submit(s, big, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "context is 512"));
    pd_request_release(big);
    pd_sched_free(s, 2000);
    for (int i = 0; i < 4; i++) {
        if (i < 3) assert_int_equal(rq[i]->state, PD_REQ_DONE);
        pd_request_release(rq[i]);
    }
}

static void test_shutdown_cancels_leftovers(void **state)
{
    (void)state;
    pd_sched_params sp = pd_sched_default_params();
    sp.max_seqs = 2;
    pd_sched *s;
    assert_int_equal(pd_sched_create(model, &sp, &s, NULL), PD_OK);
    int32_t toks[64];
    int n = encode("One day", toks, 64);
    pd_request *rq[6];
    for (int i = 0; i < 6; i++) {
        assert_int_equal(pd_request_create(toks, n, 500, &rq[i], NULL), PD_OK);
        rq[i]->sampling.temperature = 1.0f;
        rq[i]->sampling.seed = (uint64_t)i + 1;
        assert_int_equal(pd_sched_submit(s, rq[i], NULL), PD_OK);
    }
    pd_sched_free(s, 0); /* no grace: everything ends now */
    for (int i = 0; i < 6; i++) {
        assert_int_equal(rq[i]->state, PD_REQ_DONE);
        pd_request_release(rq[i]);
    }
}

/* A prefix-build request, run in the engine thread next to a completion,
 * gives the same prefix bits as building it alone. */
static void test_build_prefix_on_engine_thread(void **state)
{
    (void)state;
    pd_sched *s;
    assert_int_equal(pd_sched_create(model, NULL, &s, NULL), PD_OK);
    int32_t toks[64];
    int n = encode("Lily and Ben were friends.", toks, 64);
    pd_request *other, *build;
    assert_int_equal(pd_request_create(toks, n, 30, &other, NULL), PD_OK);
    assert_int_equal(pd_request_create(toks, n, 1, &build, NULL), PD_OK);
    build->build_prefix = 1;
    strcpy(build->build_task, "lily");
    assert_int_equal(pd_sched_submit(s, other, NULL), PD_OK);
    assert_int_equal(pd_sched_submit(s, build, NULL), PD_OK);
    while (build->state != PD_REQ_DONE) pd_request_wait(build, 1 << 30, 100);
    assert_non_null(build->built);
    assert_int_equal(build->n_out, 0);
    pd_engine *e;
    pd_prefix *ref;
    assert_int_equal(pd_engine_create(model, NULL, &e, NULL), PD_OK);
    assert_int_equal(pd_prefix_from_tokens(e, model, "lily", toks, n, &ref, NULL), PD_OK);
    assert_int_equal(build->built->n_tokens, n);
    assert_int_equal(build->built->has_bos, 1);
    size_t bytes = (size_t)model->cfg.n_layers * model->cfg.kv_dim * (size_t)n * sizeof(float);
    assert_memory_equal(build->built->keys, ref->keys, bytes);
    assert_memory_equal(build->built->values, ref->values, bytes);
    /* a build needs a valid name and no prefix */
    pd_request *bad;
    pd_err err;
    assert_int_equal(pd_request_create(toks, n, 1, &bad, NULL), PD_OK);
    bad->build_prefix = 1;
    strcpy(bad->build_task, "../x");
    assert_int_equal(pd_sched_submit(s, bad, &err), PD_EINVAL);
    pd_request_release(bad);
    pd_prefix_release(ref);
    pd_engine_free(e);
    pd_request_release(build);
    pd_sched_free(s, 5000);
    pd_request_release(other);
}

/* log p(next | prompt[0..i]) for every prompt token, from the engine fed
 * one token per step, log-softmax in double: into lp[i + 1]. */
static void reference_scores(const int32_t *toks, int n, double *lp)
{
    const int V = model->cfg.vocab_size;
    pd_engine *e;
    pd_seq *seq;
    assert_int_equal(pd_engine_create(model, NULL, &e, NULL), PD_OK);
    assert_int_equal(pd_seq_create(model, n, &seq, NULL), PD_OK);
    for (int i = 0; i + 1 < n; i++) {
        int32_t pos = i;
        uint8_t want = 1;
        pd_batch b = {1, &toks[i], &seq, &pos, &want};
        const float *lg;
        assert_int_equal(pd_engine_step(e, &b, &lg, NULL), 1);
        double max = lg[0], sum = 0;
        for (int v = 1; v < V; v++) max = lg[v] > max ? lg[v] : max;
        for (int v = 0; v < V; v++) sum += exp((double)lg[v] - max);
        lp[i + 1] = (double)lg[toks[i + 1]] - max - log(sum);
    }
    pd_seq_free(seq);
    pd_engine_free(e);
}

static void test_prompt_scoring(void **state)
{
    (void)state;
    pd_sched_params sp = pd_sched_default_params();
    sp.max_step_tokens = 7; /* the prompt is scored across several prefill chunks */
    pd_sched *s;
    assert_int_equal(pd_sched_create(model, &sp, &s, NULL), PD_OK);
    int32_t toks[64];
    int n = encode("Once upon a time, there was a little girl named Lily.", toks, 64);
    double ref[64];
    reference_scores(toks, n, ref);
    pd_request *score, *gen, *plain;
    assert_int_equal(pd_request_create(toks, n, 0, &score, NULL), PD_OK);
    assert_int_equal(pd_request_create(toks, n, 4, &gen, NULL), PD_OK);
    assert_int_equal(pd_request_create(toks, n, 0, &plain, NULL), PD_OK);
    score->prompt_logprobs = gen->prompt_logprobs = 1;
    score->top_logprobs = 3;
    gen->sampling.temperature = 0;
    pd_err err;
    assert_int_equal(pd_sched_submit(s, plain, &err), PD_EINVAL); /* 0 tokens, no scoring */
    assert_int_equal(pd_sched_submit(s, score, NULL), PD_OK);
    assert_int_equal(pd_sched_submit(s, gen, NULL), PD_OK);
    while (score->state != PD_REQ_DONE) pd_request_wait(score, 1 << 30, 100);
    while (gen->state != PD_REQ_DONE) pd_request_wait(gen, 1 << 30, 100);
    assert_int_equal(score->finish, PD_FINISH_REASON_LENGTH);
    assert_int_equal(score->n_out, 0);
    assert_int_equal(gen->n_out, 4);
    for (int i = 1; i < n; i++) {
        const pd_token_out *o = &score->prompt_out[i];
        assert_int_equal(o->id, toks[i]);
        assert_true(fabs(o->logprob - ref[i]) < 1e-5);
        assert_true(fabs(gen->prompt_out[i].logprob - ref[i]) < 1e-5);
        assert_int_equal(o->n_top, 3);
        /* the top alternatives are sorted and the scored token is among them
         * exactly when its logprob reaches the third */
        assert_true(o->top_logprobs[0] >= o->top_logprobs[1] &&
                    o->top_logprobs[1] >= o->top_logprobs[2]);
        int in_top = 0;
        for (int k = 0; k < 3; k++) in_top |= o->top_ids[k] == toks[i];
        assert_int_equal(in_top, o->logprob >= o->top_logprobs[2]);
    }
    pd_request_release(plain);
    pd_request_release(score);
    pd_request_release(gen);
    pd_sched_free(s, 5000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_equals_alone),
        cmocka_unit_test(test_cancel_frees_sequence),
        cmocka_unit_test(test_queue_full_and_context),
        cmocka_unit_test(test_shutdown_cancels_leftovers),
        cmocka_unit_test(test_build_prefix_on_engine_thread),
        cmocka_unit_test(test_prompt_scoring),
    };
    return cmocka_run_group_tests_name("scheduler", tests, setup, teardown);
}
