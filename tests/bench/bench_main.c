/* bench_main.c — prefixd-bench: the engine's speed next to this machine's
 * own references, measured in the same run (`make bench`; run from the
 * repository root).
 *
 *     build/bench/prefixd-bench            everything (a few minutes at most)
 *     build/bench/prefixd-bench --small    the machine and stories260K only
 *
 * The run: the machine references (bench_machine.c); the synthetic 134M
 * Llama written as F32 and F16 GGUF beside the binary unless already there
 * (bench_synth.c); then per model prefill, decode batch 1 and decode batch
 * 32 (bench_engine.c), each followed by where the time goes: the weight
 * products alone at the same shapes (pd_matmul and, for scale,
 * cblas_sgemm) against the engine's step. It ends with a summary table and
 * one line per target. Figures, not assertions: the exit status is 0
 * unless something could not run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bench.h"
#include "prefixd/matmul.h"
#include "prefixd/model.h"
#include "prefixd/quantize.h"

#define PREFILL_TOKENS 512
#define BATCH 32
#define TARGET_PREFILL 0.70 /* prefill GFLOP/s over the sgemm peak */
#define TARGET_DECODE 0.80  /* decode-1 weight bytes/s over the read bandwidth */
#define CACHE_RESIDENT ((uint64_t)32 << 20) /* weights this small never leave the caches */

typedef struct model_run {
    const char *label;
    const char *path;
    const char *tokenizer;
    const bench_plan *plan;
    pd_model *m;          /* while it runs (owned) */
    uint64_t weight_bytes; /* kept for the summary */
    double load_s;
    double others;         /* CPUs other processes used during the runs */
    bench_result r;
    int ok;
} model_run;

/* stories260K is tiny: many more steps for a stable figure. The 134M
 * plan keeps the whole bench within a few minutes on two cores. */
static const bench_plan plan_small = {
    .prefill_tokens = PREFILL_TOKENS, .prefill_reps = 20,
    .prompt = 16, .warm_steps = 8,
    .decode1_steps = 150, .decode1_reps = 3,
    .batch = BATCH, .decodeb_steps = 150, .decodeb_reps = 3,
    .budget_s = 5,
};
static const bench_plan plan_134m = {
    .prefill_tokens = PREFILL_TOKENS, .prefill_reps = 4,
    .prompt = 16, .warm_steps = 4,
    .decode1_steps = 32, .decode1_reps = 5,
    .batch = BATCH, .decodeb_steps = 12, .decodeb_reps = 4,
    .batch_mid = 8, .decodem_steps = 16, .decodem_reps = 3,
    .budget_s = 12,
};
/* TinyLlama-1.1B shape: one timed prefill, short decode runs */
static const bench_plan plan_1b = {
    .prefill_tokens = PREFILL_TOKENS, .prefill_reps = 1,
    .prompt = 8, .warm_steps = 2,
    .decode1_steps = 8, .decode1_reps = 3,
    .batch = BATCH, .decodeb_steps = 3, .decodeb_reps = 2,
    .batch_mid = 8, .decodem_steps = 4, .decodem_reps = 2,
    .budget_s = 20,
};

static double gb(double bytes) { return bytes * 1e-9; }

static uint64_t param_count(const pd_model *m)
{
    const pd_config *c = &m->cfg;
    uint64_t D = (uint64_t)c->dim, KV = (uint64_t)c->kv_dim, H = (uint64_t)c->hidden_dim;
    uint64_t V = (uint64_t)c->vocab_size;
    uint64_t per_layer = 2 * D + 2 * D * D + 2 * KV * D + 3 * H * D;
    return V * D + per_layer * (uint64_t)c->n_layers + D + (m->tied_classifier ? 0 : V * D);
}

static void cpu_name(char *buf, size_t cap)
{
    snprintf(buf, cap, "?");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        const char *p = strchr(line, ':');
        if (!p) break;
        p++;
        while (*p == ' ') p++;
        snprintf(buf, cap, "%.*s", (int)strcspn(p, "\n"), p);
        break;
    }
    fclose(f);
}

/* One line on how busy other processes kept the machine (bench_meter). */
static void print_others(const char *indent, double others, int n_cpus)
{
    if (others < 0) return;
    printf("%sother processes kept %.2f of %d CPUs busy meanwhile%s\n", indent, others, n_cpus,
           others > 0.2 ? ": these figures are understated" : "");
}

static void print_machine(const bench_machine *mc)
{
    char cpu[128];
    cpu_name(cpu, sizeof cpu);
    printf("machine: %s, %d online CPUs, L3 %zu MiB (getconf), OpenBLAS core %s, "
           "pd_matmul kernel %s\n\n",
           cpu, mc->n_cpus, mc->l3_bytes >> 20, mc->blas_core,
           pd_wmatmul_isa() == PD_ISA_AVX512 ? "AVX-512"
           : pd_wmatmul_isa() == PD_ISA_AVX2 ? "AVX2+FMA"
                                             : "portable");
    printf("== machine references (best of a few after a warm-up; the per-model ratios use "
           "these, the summary the higher of these and the end-of-run ones) ==\n");
    printf("  sgemm peak      cblas_sgemm %d^3, %d threads      %8.1f GFLOP/s\n", mc->sgemm_n,
           mc->n_cpus, mc->sgemm_gflops);
    printf("  pd_matmul       the same product, %d threads       %8.1f GFLOP/s  = %.2f of sgemm\n",
           mc->n_cpus, mc->matmul_gflops, mc->matmul_gflops / mc->sgemm_gflops);
    printf("  read bandwidth  %d threads summing %4zu MiB       %8.1f GB/s\n", mc->n_cpus,
           mc->read_bytes >> 20, mc->read_gbs);
    bench_peaks pk;
    bench_peaks_measure(&pk, mc->n_cpus);
    printf("  F32 FMA peak    AVX2 256-bit chains, %d threads   %8.1f GFLOP/s\n", mc->n_cpus,
           pk.f32_avx2);
    printf("  F32 FMA peak    AVX-512 512-bit chains            %8.1f GFLOP/s%s\n", pk.f32_avx512,
           pk.f32_avx512 > 0 ? "" : " (no AVX-512)");
    printf("  int8 peak       AVX-512 VNNI vpdpbusd             %8.1f GOP/s%s\n", pk.int8_vnni,
           pk.int8_vnni > 0 ? "" : " (no VNNI)");
    static const char *const isa[3] = {"portable", "AVX2+FMA+F16C", "AVX-512"};
    printf("  pd_wmatmul      kernels in use: %s\n", isa[pd_wmatmul_isa()]);
    printf("  memcpy          1 thread, %4zu MiB copied          %8.1f GB/s (bytes copied)\n",
           mc->memcpy_bytes >> 20, mc->memcpy_gbs);
    print_others("  ", mc->others, mc->n_cpus);
    printf("\n");
}

/* One synthetic file: written from a spec (ftype F32/F16) or quantised from
 * an earlier one (src >= 0). */
typedef struct synth_file {
    const char *label;
    int big;       /* 0: the 134M spec, 1: the 1.1B spec */
    const char *ftype; /* "F32", "F16", "Q8_0", "Q4_K_M" */
    int src;       /* index of the file to quantise, or -1 to write */
    char path[4200];
    int ok;
} synth_file;

static int file_size_ok(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && st.st_size > 0;
}

/* Writes (or finds) the synthetic GGUFs of files[0..n) in dir. */
static void prepare_synth(const char *dir, synth_file *files, int n)
{
    bench_synth specs[2] = {bench_synth_110m(), bench_synth_1b()};
    for (int b = 0; b < 2; b++)
        printf("== synthetic model %d: dim %d, hidden %d, %d layers, %d heads (%d kv), vocab %d, "
               "context %d, weights ±%.2f ==\n",
               b, specs[b].dim, specs[b].hidden_dim, specs[b].n_layers, specs[b].n_heads,
               specs[b].n_kv_heads, specs[b].vocab_size, specs[b].seq_len,
               (double)specs[b].scale);
    for (int i = 0; i < n; i++) {
        synth_file *f = &files[i];
        snprintf(f->path, sizeof f->path, "%s/synth-%s-%s.gguf", dir, f->big ? "1b" : "134m",
                 f->ftype);
        for (char *p = f->path + strlen(dir); *p; p++)
            if (*p >= 'A' && *p <= 'Z') *p = (char)(*p - 'A' + 'a');
        pd_err err;
        double t0 = bench_now();
        int written = 0, rc;
        if (f->src < 0) {
            uint64_t bytes;
            rc = bench_synth_write(&specs[f->big], f->path,
                                   strcmp(f->ftype, "F16") == 0 ? PD_DTYPE_F16 : PD_DTYPE_F32,
                                   &written, &bytes, &err);
        } else if (!files[f->src].ok) {
            rc = pd_err_set(&err, PD_EINVAL, "no source file");
        } else if (file_size_ok(f->path)) {
            rc = PD_OK;
        } else {
            pd_quantize_params qp = pd_quantize_default_params();
            qp.ftype = pd_ftype_from_name(f->ftype);
            rc = pd_quantize_gguf(files[f->src].path, f->path, &qp, NULL, &err);
            written = rc == PD_OK;
        }
        if (rc < 0) {
            printf("  %s: %s\n", f->path, err.msg);
            continue;
        }
        f->ok = 1;
        struct stat st;
        long long mb = stat(f->path, &st) == 0 ? (long long)(st.st_size >> 20) : -1;
        printf("  %-44s %5lld MB  %s", f->path, mb, written ? "written" : "already there");
        if (written) printf(" in %.1f s", bench_now() - t0);
        printf("\n");
        /* the 1.1B weights are 4.4 GB of floats: drop them once written */
        if (f->src < 0) bench_synth_release(&specs[f->big]);
    }
    for (int b = 0; b < 2; b++) bench_synth_release(&specs[b]);
    printf("\n");
}

static int load_model(model_run *mr)
{
    pd_model_params mp = pd_model_default_params();
    mp.path = mr->path;
    mp.tokenizer_path = mr->tokenizer;
    pd_err err;
    double t0 = bench_now();
    if (pd_model_load(&mp, &mr->m, &err) < 0) {
        printf("%s: cannot load: %s\n\n", mr->label, err.msg);
        return -1;
    }
    mr->load_s = bench_now() - t0;
    return 0;
}

/* The breakdown of one model's prefill and decode figures. */
static void print_where(const model_run *mr, bench_shape *shapes, int n_shapes,
                        const bench_machine *mc)
{
    const pd_model *m = mr->m;
    const bench_result *r = &mr->r;
    const bench_plan *p = mr->plan;
    double mm = 0, mm_blas = 0;
    printf("  where prefill goes (weight products alone, same shapes, %d threads):\n",
           mc->n_cpus);
    printf("    %-12s %5s %5s %6s  %6s  %9s %9s  %8s %8s\n", "weights", "T", "K", "N", "calls",
           "pd ms", "sgemm ms", "pd GF/s", "sgemm");
    for (int i = 0; i < n_shapes; i++) {
        const bench_shape *s = &shapes[i];
        int calls = s->per_layer ? s->per_layer * m->cfg.n_layers : 1;
        double fl = 2.0 * s->T * s->K * s->N;
        mm += calls * s->pd_s;
        mm_blas += calls * s->blas_s;
        printf("    %-12s %5d %5d %6d  %6d  %9.2f %9.2f  %8.1f %8.1f\n", s->what, s->T, s->K,
               s->N, calls, 1e3 * calls * s->pd_s, 1e3 * calls * s->blas_s, fl / s->pd_s * 1e-9,
               fl / s->blas_s * 1e-9);
    }
    printf("    prefill step %.2f ms = weight products %.2f ms (%.0f%%) + the rest %.2f ms "
           "(attention %.2f GFLOP, norms, rotary, SwiGLU, KV writes, logits)\n",
           1e3 * r->prefill_s, 1e3 * mm, 100 * mm / r->prefill_s, 1e3 * (r->prefill_s - mm),
           gb(r->prefill_at_flops));
    printf("    with sgemm for the products the step would take about %.2f ms\n",
           1e3 * (r->prefill_s - mm + mm_blas));

    pd_err err;
    double w1, wb;
    if (bench_weights_pass(m, 1, 5, 2.0, &w1, &err) < 0 ||
        bench_weights_pass(m, p->batch, 3, 3.0, &wb, &err) < 0) {
        printf("  weights pass: %s\n", err.msg);
        return;
    }
    double step1 = 1.0 / r->decode1_tps, stepb = p->batch / r->decodeb_tps;
    printf("  where decode goes (pd_matmul alone over all the weights, T rows):\n");
    printf("    T=1   %.3f ms vs the engine's step %.3f ms (%.0f%% products); products alone "
           "stream %.1f GB/s = %.2f of read bandwidth\n",
           1e3 * w1, 1e3 * step1, 100 * w1 / step1, gb((double)m->weight_bytes / w1),
           gb((double)m->weight_bytes / w1) / mc->read_gbs);
    printf("    T=%-3d %.3f ms vs the engine's step %.3f ms (%.0f%% products)\n", p->batch,
           1e3 * wb, 1e3 * stepb, 100 * wb / stepb);
}

static void run_model(model_run *mr, const bench_machine *mc, bench_shape *shapes,
                      int *n_shapes)
{
    if (load_model(mr) < 0) return;
    const pd_model *m = mr->m;
    const pd_config *c = &m->cfg;
    const bench_plan *p = mr->plan;
    printf("== %s: %s %s, %.2fM params, dim %d, hidden %d, %d layers, %d/%d heads, vocab %d; "
           "weights/token %.1f MB; loaded in %.2f s ==\n",
           mr->label, m->format == PD_FORMAT_GGUF ? "GGUF" : "llama2.c", pd_dtype_name(m->dtype),
           (double)param_count(m) * 1e-6, c->dim, c->hidden_dim, c->n_layers, c->n_heads,
           c->n_kv_heads, c->vocab_size, (double)m->weight_bytes * 1e-6, mr->load_s);
    fflush(stdout);
    pd_err err;
    bench_meter meter;
    bench_meter_start(&meter);
    int rc = bench_engine_run(m, p, &mr->r, &err);
    mr->others = bench_meter_others(&meter);
    if (rc < 0) {
        printf("  engine: %s\n\n", err.msg);
        return;
    }
    mr->ok = 1;
    const bench_result *r = &mr->r;
    double mm_gf = r->prefill_mm_flops / r->prefill_s * 1e-9;
    double all_gf = (r->prefill_mm_flops + r->prefill_at_flops) / r->prefill_s * 1e-9;
    double d1_gbs = gb((double)m->weight_bytes * r->decode1_tps);
    printf("  prefill %d tokens   %9.1f tok/s  %7.2f ms/step  matmul %6.1f GFLOP/s = %.2f of "
           "sgemm  (with attention %.1f GFLOP/s)\n",
           p->prefill_tokens, p->prefill_tokens / r->prefill_s, 1e3 * r->prefill_s, mm_gf,
           mm_gf / mc->sgemm_gflops, all_gf);
    printf("  decode batch 1      %9.1f tok/s  %7.3f ms/step  weights %6.1f GB/s = %.2f of read "
           "bandwidth%s\n",
           r->decode1_tps, 1e3 / r->decode1_tps, d1_gbs, d1_gbs / mc->read_gbs,
           m->weight_bytes < CACHE_RESIDENT ? " (weights fit in cache)" : "");
    if (p->batch_mid > 0)
        printf("  decode batch %-2d     %9.1f tok/s  %7.3f ms/step  = %.2f x batch 1\n",
               p->batch_mid, r->decodem_tps, 1e3 * p->batch_mid / r->decodem_tps,
               r->decodem_tps / r->decode1_tps);
    printf("  decode batch %-2d     %9.1f tok/s  %7.3f ms/step  = %.2f x batch 1\n", p->batch,
           r->decodeb_tps, 1e3 * p->batch / r->decodeb_tps, r->decodeb_tps / r->decode1_tps);
    print_others("  ", mr->others, mc->n_cpus);
    if (*n_shapes == 0) {
        *n_shapes = bench_prefill_shapes(c, p->prefill_tokens, shapes);
        if (bench_shapes_measure(shapes, *n_shapes, &err) < 0) {
            printf("  shapes: %s\n\n", err.msg);
            *n_shapes = 0;
            return;
        }
    }
    print_where(mr, shapes, *n_shapes, mc);
    printf("\n");
    fflush(stdout);
}

static void print_summary(const model_run *runs, int n, const bench_machine *mc)
{
    printf("== summary (references: sgemm %.1f GFLOP/s, read %.1f GB/s) ==\n", mc->sgemm_gflops,
           mc->read_gbs);
    printf("  %-16s | %9s %8s %7s | %9s %7s %7s | %9s | %9s %7s | %6s\n", "model", "prefill",
           "GFLOP/s", "/sgemm", "dec-1", "GB/s", "/read", "dec-8", "dec-32", "/dec-1", "others");
    printf("  %-16s | %9s %8s %7s | %9s %7s %7s | %9s | %9s %7s | %6s\n", "", "tok/s", "(matmul)",
           "", "tok/s", "", "", "tok/s", "tok/s", "", "CPUs");
    for (int i = 0; i < n; i++) {
        const model_run *mr = &runs[i];
        if (!mr->ok) {
            printf("  %-16s | (not run)\n", mr->label);
            continue;
        }
        const bench_result *r = &mr->r;
        double gf = r->prefill_mm_flops / r->prefill_s * 1e-9;
        double bw = gb((double)mr->weight_bytes * r->decode1_tps);
        printf("  %-16s | %9.1f %8.1f %7.2f | %9.1f %7.1f %7.2f | %9.1f | %9.1f %7.2f | %6.2f\n",
               mr->label, mr->plan->prefill_tokens / r->prefill_s, gf, gf / mc->sgemm_gflops,
               r->decode1_tps, bw, bw / mc->read_gbs, r->decodem_tps, r->decodeb_tps,
               r->decodeb_tps / r->decode1_tps, mr->others);
    }
    printf("\n== targets ==\n");
    printf("  %-16s pd_matmul/sgemm = %.2f (%d^3 product)\n", "machine",
           mc->matmul_gflops / mc->sgemm_gflops, mc->sgemm_n);
    for (int i = 0; i < n; i++) {
        const model_run *mr = &runs[i];
        if (!mr->ok) continue;
        const bench_result *r = &mr->r;
        double pf = r->prefill_mm_flops / r->prefill_s * 1e-9 / mc->sgemm_gflops;
        double dc = gb((double)mr->weight_bytes * r->decode1_tps) / mc->read_gbs;
        int tiny = mr->weight_bytes < CACHE_RESIDENT;
        printf("  %-16s prefill/sgemm = %.2f (target >= %.2f)%s%s\n", mr->label, pf,
               TARGET_PREFILL, pf >= TARGET_PREFILL ? "" : "  BELOW",
               tiny ? "  [tiny matrices: informational]" : "");
        printf("  %-16s decode/bandwidth = %.2f (target >= %.2f)%s%s\n", mr->label, dc,
               TARGET_DECODE, dc >= TARGET_DECODE ? "" : "  BELOW",
               tiny ? "  [weights fit in cache: informational]" : "");
        printf("  %-16s decode-%d/decode-1 = %.2f\n", mr->label, mr->plan->batch,
               r->decodeb_tps / r->decode1_tps);
    }
}

int main(int argc, char **argv)
{
    int small = 0, no_1b = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--small") == 0) small = 1;
        else if (strcmp(argv[i], "--no-1b") == 0) no_1b = 1;
        else {
            fprintf(stderr, "usage: %s [--small] [--no-1b]\n", argv[0]);
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    double t_start = bench_now();
    printf("prefixd-bench: speed figures next to this machine's own references, measured in "
           "the same run (figures, not assertions)\n");

    bench_machine mc;
    pd_err err;
    if (bench_machine_measure(&mc, &err) < 0) {
        fprintf(stderr, "prefixd-bench: %s\n", err.msg);
        return 1;
    }
    print_machine(&mc);

    /* the synthetic models live beside the binary (build/bench/) */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", argv[0]);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    synth_file files[] = {
        {.label = "134M F32", .big = 0, .ftype = "F32", .src = -1},
        {.label = "134M F16", .big = 0, .ftype = "F16", .src = -1},
        {.label = "134M Q8_0", .big = 0, .ftype = "Q8_0", .src = 0},
        {.label = "134M Q4_K_M", .big = 0, .ftype = "Q4_K_M", .src = 0},
        {.label = "1.1B F16", .big = 1, .ftype = "F16", .src = -1},
        {.label = "1.1B Q8_0", .big = 1, .ftype = "Q8_0", .src = 4},
        {.label = "1.1B Q4_K_M", .big = 1, .ftype = "Q4_K_M", .src = 4},
    };
    int n_files = small ? 0 : no_1b ? 4 : 7;
    prepare_synth(dir, files, n_files);

    model_run runs[8] = {
        {.label = "stories260K", .path = "models/stories260K/stories260K.bin",
         .tokenizer = "models/stories260K/tok512.bin", .plan = &plan_small},
    };
    int n_runs = 1;
    for (int i = 0; i < n_files; i++)
        if (files[i].ok)
            runs[n_runs++] = (model_run){.label = files[i].label, .path = files[i].path,
                                         .plan = files[i].big ? &plan_1b : &plan_134m};
    bench_shape shapes[3][5];
    int n_shapes[3] = {0, 0, 0};
    for (int i = 0; i < n_runs; i++) {
        int k = i == 0 ? 0 : runs[i].plan == &plan_1b ? 2 : 1;
        run_model(&runs[i], &mc, shapes[k], &n_shapes[k]);
        if (runs[i].m) runs[i].weight_bytes = runs[i].m->weight_bytes;
        pd_model_free(runs[i].m);
        runs[i].m = NULL;
    }
    /* the references again: on a shared machine either end may have been
     * the busy one; the summary takes the higher of each */
    bench_machine end;
    if (bench_machine_measure(&end, &err) == PD_OK) {
        printf("== machine references again at the end ==\n");
        printf("  sgemm peak %.1f GFLOP/s (start %.1f), pd_matmul %.1f GFLOP/s (start %.1f), "
               "read bandwidth %.1f GB/s (start %.1f)\n",
               end.sgemm_gflops, mc.sgemm_gflops, end.matmul_gflops, mc.matmul_gflops,
               end.read_gbs, mc.read_gbs);
        print_others("  ", end.others, end.n_cpus);
        printf("  the summary uses the higher of each\n\n");
        if (end.sgemm_gflops > mc.sgemm_gflops) mc.sgemm_gflops = end.sgemm_gflops;
        if (end.matmul_gflops > mc.matmul_gflops) mc.matmul_gflops = end.matmul_gflops;
        if (end.read_gbs > mc.read_gbs) mc.read_gbs = end.read_gbs;
    }
    print_summary(runs, n_runs, &mc);
    printf("\nbench took %.0f s\n", bench_now() - t_start);
    return 0;
}
