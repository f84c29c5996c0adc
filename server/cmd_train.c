/* cmd_train.c — `prefixd train`: learn a task's prefix offline and write
 * DIR/NAME.safetensors (atomically; DIR is created when missing).
 *
 * On a terminal, progress is one line on stderr, redrawn in place (step,
 * loss, validation loss, tokens/s, ETA); otherwise plain log lines. With
 * --checkpoint FILE, the state is saved every --checkpoint-every steps and
 * the same command resumes from it (bit for bit); FILE is removed once the
 * prefix is written. Ctrl-C stops at the next step boundary. Errors are one
 * line "prefixd: …" and exit status 1 (2 for usage).
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "prefixd/fsutil.h"
#include "prefixd/log.h"
#include "prefixd/trainer.h"

static const char usage[] =
    "usage: prefixd train --model M [--tokenizer T] --data FILE [--valid FILE] --task NAME\n"
    "                     --out DIR [--virtual-tokens P] [--epochs N] [--batch-size B]\n"
    "                     [--lr X] [--weight-decay X] [--warmup FRACTION]\n"
    "                     [--schedule linear|cosine|constant] [--max-grad-norm X]\n"
    "                     [--valid-fraction F] [--projection --hidden H] [--init-text TEXT]\n"
    "                     [--init-from PREFIX.safetensors] [--seed S] [--threads N]\n"
    "                     [--eval-every N] [--patience N] [--checkpoint FILE\n"
    "                     [--checkpoint-every N]] [--skip-bad-lines] [--f16]\n"
    "       prefixd train --model M --distill-prompt TEXT | --distill-prompt-file F\n"
    "                     --task NAME --out DIR [--data INPUTS] [--valid INPUTS]\n"
    "                     [--samples N] [--sample-length N] [--temperature T]\n"
    "                     [--ce-weight W] [--init-random] [other options as above]\n"
    "defaults: 20 virtual tokens, epochs auto (enough for 250 steps, at most 25),\n"
    "batch 4, lr 0.1 (1e-2 with --projection), warm-up 0.1, linear decay, no early\n"
    "stopping (--patience N: stop after N validations without a lower loss and\n"
    "keep the best)\n"
    "distillation (context distillation of a long prompt into P virtual tokens):\n"
    "64 samples of 32 tokens at temperature 1, ce-weight 0 (pure KL), the prefix\n"
    "starting from the prompt's BOS and last P-1 positions; --data INPUTS: user\n"
    "inputs (every line's text) the teacher continues, else unconditional\n";

static atomic_int cancel_flag;

static void on_sigint(int sig)
{
    (void)sig;
    atomic_store(&cancel_flag, 1);
}

/* What the progress display needs between calls. */
typedef struct display {
    int tty;          /* 1: stderr is a terminal, one line redrawn */
    int bar_shown;    /* 1: the bar is on screen and must be cleared first */
    double last_valid;
} display;

static display disp = {0, 0, NAN};

/* Log lines go above the bar: clear it, print, and let the next progress
 * call redraw it. */
static void log_line(pd_log_level level, const char *line, void *user_data)
{
    if (disp.bar_shown) {
        fputs("\r\033[K", stderr);
        disp.bar_shown = 0;
    }
    pd_log_stderr(level, line, user_data);
}

static void fmt_duration(char *buf, size_t cap, double s)
{
    if (!(s >= 0) || s > 359999) {
        snprintf(buf, cap, "--:--");
        return;
    }
    int t = (int)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, cap, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, cap, "%d:%02d", t / 60, t % 60);
}

static void on_progress(const pd_train_progress *p, void *user_data)
{
    (void)user_data;
    if (!isnan(p->valid_loss)) disp.last_valid = p->valid_loss;
    int done = p->step - (p->resumed_from > 0 ? p->resumed_from : 0);
    double eta = p->tokens_per_second > 0 && done > 0
                     ? (double)(p->total_steps - p->step) * ((double)p->trained_tokens /
                                                             p->step) / p->tokens_per_second
                     : NAN;
    char eta_s[16], val[32];
    fmt_duration(eta_s, sizeof eta_s, eta);
    if (isnan(disp.last_valid))
        snprintf(val, sizeof val, "-");
    else
        snprintf(val, sizeof val, "%.4f", disp.last_valid);
    if (disp.tty) {
        int width = 24, fill = (int)((double)width * p->step / p->total_steps);
        char bar[32];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = 0;
        fprintf(stderr, "\r\033[K[%s] step %d/%d  loss %.4f  val %s  %.0f tok/s  ETA %s", bar,
                p->step, p->total_steps, p->train_loss, val, p->tokens_per_second, eta_s);
        fflush(stderr);
        disp.bar_shown = 1;
        if (p->step == p->total_steps) {
            fputc('\n', stderr);
            disp.bar_shown = 0;
        }
    } else if (!isnan(p->valid_loss) || p->step % 10 == 0 || p->step == p->total_steps) {
        pd_log(PD_LOG_INFO,
               "step %d/%d epoch %d: loss %.4f, validation loss %s, lr %.3g, %.0f tokens/s, "
               "ETA %s", p->step, p->total_steps, p->epoch, p->train_loss, val,
               p->learning_rate, p->tokens_per_second, eta_s);
    }
}

int cmd_train(int argc, char **argv)
{
    const char *model = NULL, *tokenizer = NULL, *out = NULL, *v;
    pd_train_params tp = pd_train_default_params();
    const char *init_from = NULL;
    long P = tp.num_virtual_tokens, epochs = tp.n_epochs, batch = tp.batch_size,
         hidden = tp.encoder_hidden_size, threads = 0, eval_every = tp.eval_every,
         ckpt_every = tp.checkpoint_every, patience = 0;
    int f16 = 0;
    const char *prompt_file = NULL;
    char *prompt_buf = NULL;
    long samples = tp.distill.n_samples, sample_len = tp.distill.sample_length;
    for (int i = 1; i < argc; i++) {
        int r;
        if ((r = cli_opt(argc, argv, &i, "--model", &model))) {
        } else if ((r = cli_opt(argc, argv, &i, "--tokenizer", &tokenizer))) {
        } else if ((r = cli_opt(argc, argv, &i, "--data", &tp.train_path))) {
        } else if ((r = cli_opt(argc, argv, &i, "--valid", &tp.valid_path))) {
        } else if ((r = cli_opt(argc, argv, &i, "--task", &tp.task))) {
        } else if ((r = cli_opt(argc, argv, &i, "--out", &out))) {
        } else if ((r = cli_opt(argc, argv, &i, "--init-text", &tp.init_text))) {
        } else if ((r = cli_opt(argc, argv, &i, "--checkpoint", &tp.checkpoint_path))) {
        } else if ((r = cli_opt(argc, argv, &i, "--distill-prompt", &tp.distill.teacher_prompt))) {
        } else if ((r = cli_opt(argc, argv, &i, "--distill-prompt-file", &prompt_file))) {
        } else if ((r = cli_opt(argc, argv, &i, "--samples", &v))) {
            if (r > 0 && cli_int("--samples", v, 2, 1000000, &samples) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--sample-length", &v))) {
            if (r > 0 && cli_int("--sample-length", v, 2, 1 << 20, &sample_len) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--temperature", &v))) {
            if (r > 0 && cli_float("--temperature", v, 1e-3, 100, &tp.distill.temperature) < 0)
                return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--ce-weight", &v))) {
            if (r > 0 && cli_float("--ce-weight", v, 0, 1, &tp.distill.ce_weight) < 0) return 2;
        } else if (!strcmp(argv[i], "--init-random")) {
            tp.distill.init = PD_DISTILL_INIT_RANDOM;
        } else if ((r = cli_opt(argc, argv, &i, "--virtual-tokens", &v))) {
            if (r > 0 && cli_int("--virtual-tokens", v, 1, 1 << 20, &P) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--init-from", &init_from))) {
        } else if ((r = cli_opt(argc, argv, &i, "--epochs", &v))) {
            if (r > 0 && strcmp(v, "auto") == 0) epochs = 0;
            else if (r > 0 && cli_int("--epochs", v, 1, 100000, &epochs) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--patience", &v))) {
            if (r > 0 && cli_int("--patience", v, 0, 1 << 20, &patience) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--schedule", &v))) {
            if (r > 0 && (tp.schedule = pd_lr_kind_parse(v)) < 0) {
                cli_fail("--schedule: '%s' is not linear, cosine or constant", v);
                return 2;
            }
        } else if ((r = cli_opt(argc, argv, &i, "--batch-size", &v))) {
            if (r > 0 && cli_int("--batch-size", v, 1, 4096, &batch) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--hidden", &v))) {
            if (r > 0 && cli_int("--hidden", v, 1, 65536, &hidden) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--threads", &v))) {
            if (r > 0 && cli_int("--threads", v, 1, 256, &threads) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--eval-every", &v))) {
            if (r > 0 && cli_int("--eval-every", v, 0, 1 << 30, &eval_every) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--checkpoint-every", &v))) {
            if (r > 0 && cli_int("--checkpoint-every", v, 1, 1 << 30, &ckpt_every) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--lr", &v))) {
            if (r > 0 && cli_float("--lr", v, 1e-9, 10, &tp.learning_rate) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--weight-decay", &v))) {
            if (r > 0 && cli_float("--weight-decay", v, 0, 100, &tp.weight_decay) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--warmup", &v))) {
            if (r > 0 && cli_float("--warmup", v, 0, 0.99, &tp.warmup_fraction) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--max-grad-norm", &v))) {
            if (r > 0 && cli_float("--max-grad-norm", v, 0, 1e9, &tp.max_grad_norm) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--valid-fraction", &v))) {
            if (r > 0 && cli_float("--valid-fraction", v, 0, 0.9, &tp.valid_fraction) < 0)
                return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--seed", &v))) {
            if (r > 0 && cli_u64("--seed", v, &tp.seed) < 0) return 2;
        } else if (!strcmp(argv[i], "--projection")) {
            tp.prefix_projection = 1;
        } else if (!strcmp(argv[i], "--cosine")) {
            tp.schedule = PD_LR_COSINE; /* the older spelling of --schedule cosine */
        } else if (!strcmp(argv[i], "--skip-bad-lines")) {
            tp.skip_bad_lines = 1;
        } else if (!strcmp(argv[i], "--f16")) {
            f16 = 1;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage, stdout);
            return 0;
        } else {
            cli_fail("train: unknown option '%s'", argv[i]);
            fputs(usage, stderr);
            return 2;
        }
        if (r < 0) return 2;
    }
    if (prompt_file && tp.distill.teacher_prompt)
        return cli_fail("train: --distill-prompt and --distill-prompt-file exclude each other") +
               1;
    if (prompt_file) {
        pd_err ferr;
        size_t size;
        if (pd_read_file(prompt_file, 1u << 24, &prompt_buf, &size, &ferr) < 0)
            return cli_fail("--distill-prompt-file: %s", ferr.msg);
        if (strlen(prompt_buf) != size) {
            free(prompt_buf);
            return cli_fail("--distill-prompt-file: %s holds a NUL byte", prompt_file);
        }
        tp.distill.teacher_prompt = prompt_buf;
    }
    tp.distill.n_samples = (int)samples;
    tp.distill.sample_length = (int)sample_len;
    if (!tp.train_path && !tp.distill.teacher_prompt) {
        free(prompt_buf);
        return cli_fail("train: --data is required") + 1;
    }
    if (!tp.task) return cli_fail("train: --task is required") + 1;
    if (!pd_task_name_valid(tp.task))
        return cli_fail("--task: '%s' is not a valid task name ([A-Za-z0-9][A-Za-z0-9._-]{0,63})",
                        tp.task) + 1;
    if (!out) return cli_fail("train: --out is required") + 1;
    tp.num_virtual_tokens = (int)P;
    tp.n_epochs = (int)epochs;
    tp.batch_size = (int)batch;
    tp.encoder_hidden_size = (int)hidden;
    tp.n_threads = (int)threads;
    tp.eval_every = (int)eval_every;
    tp.checkpoint_every = (int)ckpt_every;
    tp.early_stopping_patience = (int)patience;
    if (mkdir(out, 0755) < 0 && errno != EEXIST)
        return cli_fail("%s: cannot create directory: %s", out, strerror(errno));
    size_t n = strlen(out) + strlen(tp.task) + 16;
    char *path = malloc(n);
    if (!path) return cli_fail("out of memory");
    snprintf(path, n, "%s/%s.safetensors", out, tp.task);

    cli_set_threads((int)threads);
    pd_model *m = cli_load_model(model, tokenizer);
    if (!m) {
        free(path);
        return 1;
    }
    disp.tty = isatty(2);
    pd_log_set_callback(log_line, NULL);
    struct sigaction sa = {0}, old;
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);

    pd_train_hooks hooks = {.on_progress = on_progress, .cancel = &cancel_flag};
    pd_prefix *pf = NULL, *init = NULL;
    pd_err err;
    int status = 1;
    int rc = init_from ? pd_prefix_load(init_from, m, &init, &err) : PD_OK;
    tp.init_prefix = init;
    if (rc == PD_OK) rc = pd_train_run(m, &tp, &hooks, &pf, &err);
    if (disp.bar_shown) {
        fputc('\n', stderr);
        disp.bar_shown = 0;
    }
    if (rc == PD_ECANCELLED && tp.checkpoint_path) {
        cli_fail("%s; run the same command again to resume from %s", err.msg,
                 tp.checkpoint_path);
    } else if (rc < 0) {
        cli_fail("%s", err.msg);
    } else if (pd_prefix_save(pf, m, path, f16, &err) < 0) {
        cli_fail("%s", err.msg);
    } else {
        const char *vl = pd_prefix_meta_get(pf, "valid_loss");
        const char *bl = pd_prefix_meta_get(pf, "base_valid_loss");
        printf("wrote %s: task %s, %d virtual tokens, %s steps, train loss %s", path, pf->task,
               pf->n_tokens, pd_prefix_meta_get(pf, "steps"), pd_prefix_meta_get(pf, "train_loss"));
        const char *kl = pd_prefix_meta_get(pf, "distill_valid_kl");
        if (kl)
            printf(", held-out KL %s nats/token (base model without the prompt %s), top-1 "
                   "agreement %s (base %s), %s prompt tokens", kl,
                   pd_prefix_meta_get(pf, "distill_base_kl"),
                   pd_prefix_meta_get(pf, "distill_top1_agreement"),
                   pd_prefix_meta_get(pf, "distill_base_top1_agreement"),
                   pd_prefix_meta_get(pf, "distill_prompt_tokens"));
        else if (vl && bl)
            printf(", validation loss %s (base model %s)", vl, bl);
        printf("\n");
        if (tp.checkpoint_path) unlink(tp.checkpoint_path); /* the job is done */
        status = 0;
    }
    sigaction(SIGINT, &old, NULL);
    pd_log_set_callback(pd_log_stderr, NULL);
    pd_prefix_release(pf);
    pd_prefix_release(init);
    pd_model_free(m);
    free(path);
    free(prompt_buf);
    return status;
}
