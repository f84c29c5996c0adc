/* util.h — what every fuzz target shares: the libFuzzer entry point, input
 * handed to code that only reads files, the shipped model and tokenizer,
 * and a loud failure for a broken invariant.
 *
 * Each fuzz_<name>.c defines LLVMFuzzerTestOneInput and nothing else
 * global. It is linked either with libFuzzer (clang -fsanitize=fuzzer:
 * `make fuzz`) or with standalone.c, a main() that feeds it every file of
 * the seed corpus and the regression inputs (`make fuzz-regress`, any C11
 * compiler). Targets run from the repository root (paths below are
 * relative to it). A target must not leak, print, or keep state between
 * inputs other than what it loads once (the model, the tokenizer). */
#ifndef PREFIXD_TESTS_FUZZ_UTIL_H
#define PREFIXD_TESTS_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "prefixd/model.h"
#include "prefixd/tokenizer.h"

#define FUZZ_MODEL "models/stories260K/stories260K.bin"
#define FUZZ_TOKENIZER "models/stories260K/tok512.bin"

/* The entry point every target defines. Returns 0. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Puts data into this process's scratch file (a memfd, rewritten on every
 * call) and returns a path that opens it ("/proc/self/fd/N", static
 * storage). Whatever mapped the previous contents must be unmapped first. */
const char *fuzz_file(const void *data, size_t size);

/* A private temporary directory, created on first use and removed at exit
 * (static storage). */
const char *fuzz_tmpdir(void);

/* Writes data to path (created or truncated); aborts on failure. */
void fuzz_write(const char *path, const void *data, size_t size);

/* The shipped model and its tokenizer, loaded on first use, never freed
 * (borrowed by the caller). Abort when they cannot be loaded. */
const pd_model *fuzz_model(void);
const pd_tokenizer *fuzz_tokenizer(void);

/* Silences the library's logging (done by every accessor above; call it
 * first in targets that use none). */
void fuzz_quiet(void);

/* A broken invariant: prints the message and aborts, which both libFuzzer
 * and the standalone driver report as a crash with this input. */
_Noreturn void fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define FUZZ_CHECK(expr)                                                             \
    do {                                                                             \
        if (!(expr)) fuzz_fail("%s:%d: check failed: %s", __FILE__, __LINE__, #expr); \
    } while (0)

#endif
