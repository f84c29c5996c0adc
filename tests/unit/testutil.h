/* testutil.h — helpers shared by the unit tests (header-only; each test is
 * its own program). Tests run from the repository root. */
#ifndef PREFIXD_TESTUTIL_H
#define PREFIXD_TESTUTIL_H

#include <stdio.h>

#include "prefixd/model.h"

#define TEST_MODEL "models/stories260K/stories260K.bin"
#define TEST_TOKENIZER "models/stories260K/tok512.bin"

/* The shipped model, or NULL after printing why (a test setup then fails). */
static inline pd_model *test_model_load(void)
{
    pd_model_params mp = pd_model_default_params();
    mp.path = TEST_MODEL;
    mp.tokenizer_path = TEST_TOKENIZER;
    pd_model *m;
    pd_err err;
    if (pd_model_load(&mp, &m, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return NULL;
    }
    return m;
}

#endif
