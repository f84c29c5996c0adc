/* fuzz_jinja.c — the Jinja interpreter (src/jinja*.c): pd_jinja_parse, then
 * pd_jinja_render with small limits.
 *
 * Input: a template's source, optionally followed by "\n--context--\n" and a
 * JSON object of variables (else a small conversation with tools is used).
 * Parsing and rendering either succeed or fail with a PD_E… status and a
 * "line L, column C: …" message; a rendering stays within the output limit,
 * is NUL-terminated, and is the same when done twice. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/jinja.h"
#include "util.h"

static const char SEP[] = "\n--context--\n";
static const char DEFAULT_CTX[] =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
    " {\"role\": \"user\", \"content\": \"Hi\"},"
    " {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"id\": \"abc123XYZ\","
    " \"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": {\"x\": 1.5}}}]},"
    " {\"role\": \"tool\", \"content\": \"2\"}],"
    " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {}}}],"
    " \"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    const char *in = (const char *)data;
    size_t tlen = size;
    const char *ctx_text = DEFAULT_CTX;
    size_t ctx_len = sizeof DEFAULT_CTX - 1;
    const char *sep = memmem(in, size, SEP, sizeof SEP - 1);
    if (sep) {
        tlen = (size_t)(sep - in);
        ctx_text = sep + sizeof SEP - 1;
        ctx_len = size - tlen - (sizeof SEP - 1);
    }
    pd_jinja_template *t;
    pd_err err;
    int rc = pd_jinja_parse(in, tlen, &t, &err);
    if (rc < 0) {
        FUZZ_CHECK(err.code == rc && !strncmp(err.msg, "line ", 5));
        return 0;
    }
    json_t *ctx = json_loadb(ctx_text, ctx_len, 0, NULL);
    if (ctx && !json_is_object(ctx)) {
        json_decref(ctx);
        ctx = NULL;
    }
    pd_jinja_params p = pd_jinja_default_params();
    p.max_output = 1u << 16;
    p.max_memory = 32u << 20;
    p.max_iterations = 20000;
    p.max_depth = 32;
    p.now = 1722000000;
    char *out = NULL, *again = NULL;
    size_t n = 0, n2 = 0;
    rc = pd_jinja_render(t, ctx, &p, &out, &n, &err);
    if (rc < 0) {
        FUZZ_CHECK(!out && err.code == rc && err.msg[0]);
        FUZZ_CHECK(rc == PD_EINVAL || rc == PD_ERANGE || rc == PD_ENOMEM);
    } else {
        FUZZ_CHECK(out && n <= p.max_output && out[n] == 0);
        FUZZ_CHECK(pd_jinja_render(t, ctx, &p, &again, &n2, &err) == PD_OK);
        FUZZ_CHECK(n2 == n && !memcmp(out, again, n));
    }
    free(out);
    free(again);
    json_decref(ctx);
    pd_jinja_free(t);
    return 0;
}
