/* model_check.h — what a fuzz target checks on a model that loaded: the
 * config is valid, every weight the config implies can be read (its first
 * and last element), the tokenizer encodes and decodes, and a small model
 * runs a forward step. */
#ifndef PREFIXD_TESTS_FUZZ_MODEL_CHECK_H
#define PREFIXD_TESTS_FUZZ_MODEL_CHECK_H

#include "prefixd/model.h"

/* Aborts (fuzz_fail) when m breaks its contract. */
void fuzz_check_model(const pd_model *m);

#endif
