/* main.c — the prefixd binary: dispatches to the subcommands. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "prefixd/log.h"

static const char usage[] =
    "usage: prefixd <command> [options]\n"
    "\n"
    "commands:\n"
    "  generate  --model PATH [--tokenizer PATH] (--prompt TEXT | --prompt-ids 1,2,3)\n"
    "            [--max-tokens N]\n"
    "            [--temperature T] [--top-k K] [--top-p P] [--seed S] [--threads N] [--ids]\n"
    "            [--prefix FILE | --registry DIR --task NAME] [--kv-f16]\n"
    "            write the generated text (not the prompt) to stdout (--kv-f16: the KV\n"
    "            cache and prefix as F16, as kv_dtype \"f16\" serves)\n"
    "  inspect   PATH [--tokenizer PATH]   hyper-parameters, tensors, fingerprint\n"
    "  convert   --model IN [--tokenizer TOK] --out OUT.gguf [--dtype TYPE]\n"
    "            write a model as GGUF v3 (TYPE: f32, f16, bf16 or a quantize type)\n"
    "  quantize  IN OUT.gguf --type TYPE [--pure] [--tokenizer TOK] [--name NAME] [--threads N]\n"
    "            rewrite a model in a weight type as llama-quantize does: F32 F16 BF16\n"
    "            Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_S/M/L Q4_K_S/M Q5_K_S/M Q6_K\n"
    "  prefix from-prompt --model M [--tokenizer T] --task NAME --text TEXT --out DIR [--f16]\n"
    "            build a task prefix from a prompt's own KV cache\n"
    "  prefix import-peft ADAPTER_DIR --model M [--tokenizer T] --task NAME --out DIR\n"
    "            import an HF PEFT prefix-tuning adapter\n"
    "  prefix inspect FILE [--model M [--tokenizer T]]\n"
    "            metadata, shapes and validation of a prefix file\n"
    "  train     --model M --data FILE [--valid FILE] --task NAME --out DIR [--virtual-tokens P]\n"
    "            [--epochs N] [--batch-size B] [--lr X] [--projection --hidden H]\n"
    "            [--init-text TEXT] [--seed S] [--threads N] [--checkpoint FILE]\n"
    "            learn a task prefix from JSONL data (base model frozen)\n"
    "  template  [--model M] --messages FILE.json [--template FILE|NAME] [--no-generation-prompt]\n"
    "            print the prompt a chat template makes of a conversation\n"
    "  tokenize  --model M [--tokenizer T] [--no-bos] [--special] [--pieces]\n"
    "            (--text TEXT | --file F)   the token ids as a JSON array\n"
    "  detokenize --model M [--tokenizer T] --ids 1,2,3   the text of token ids\n"
    "  serve     [--config FILE] [--listen HOST:PORT] [--model PATH] [--registry DIR] ...\n"
    "            the OpenAI-compatible HTTP server (prefixd serve --help: every flag)\n"
    "  jobstore  migrate --from DATA_DIR --to postgres://...\n"
    "            copy a single machine's SQLite job store into PostgreSQL (replicas)\n";

int main(int argc, char **argv)
{
    pd_log_set_callback(pd_log_stderr, NULL);
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "-h")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect")) return cmd_inspect(argc - 1, argv + 1);
    if (!strcmp(cmd, "convert")) return cmd_convert(argc - 1, argv + 1);
    if (!strcmp(cmd, "quantize")) return cmd_quantize(argc - 1, argv + 1);
    if (!strcmp(cmd, "prefix")) return cmd_prefix(argc - 1, argv + 1);
    if (!strcmp(cmd, "train")) return cmd_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "template")) return cmd_template(argc - 1, argv + 1);
    if (!strcmp(cmd, "serve")) return cmd_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "jobstore")) return cmd_jobstore(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenize")) return cmd_tokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "detokenize")) return cmd_detokenize(argc - 1, argv + 1);
    fprintf(stderr, "prefixd: unknown command '%s'\n%s", cmd, usage);
    return 2;
}
