/* standalone.c — runs a fuzz target without libFuzzer, so `make
 * fuzz-regress` needs nothing but a C compiler: every file named on the
 * command line, and every file inside a directory named there (in name
 * order), is read and fed once to LLVMFuzzerTestOneInput.
 *
 *     build/fuzz-regress/gguf tests/fuzz/corpus/gguf tests/fuzz/regress/gguf
 *
 * The empty input runs first in this process (which also loads whatever
 * the target loads once); then each file runs in a forked child, so a
 * crash, an abort or a sanitizer report is pinned on the file that caused
 * it, and the remaining files still run. A missing path is skipped (a
 * target may have no regression inputs yet). Prints one line per failing
 * input and a summary; exits 0 when every input passed, 1 otherwise. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util.h"

/* Reads path into a new malloc'd buffer of exactly its size (1 byte for an
 * empty file). Returns NULL with a message on failure. */
static uint8_t *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "FAILED: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    uint8_t *buf = malloc(cap);
    for (;;) {
        if (!buf) break;
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        uint8_t *bigger = realloc(buf, cap * 2);
        if (!bigger) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    /* Exactly the file's size, so a sanitizer sees a read past its end. */
    uint8_t *exact = buf && !bad ? realloc(buf, n ? n : 1) : NULL;
    if (!exact) {
        fprintf(stderr, "FAILED: %s: cannot read\n", path);
        free(buf);
        return NULL;
    }
    *size = n;
    return exact;
}

static int n_ran, n_failed;

/* Runs one file in a child process; counts it as ran or failed. */
static void run_file(const char *path)
{
    size_t size;
    uint8_t *data = slurp(path, &size);
    if (!data) {
        n_failed++;
        return;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        LLVMFuzzerTestOneInput(data, size);
        free(data);
        exit(0);
    }
    free(data);
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) {
        fprintf(stderr, "FAILED: %s: cannot run it: %s\n", path, strerror(errno));
        n_failed++;
    } else if (WIFSIGNALED(status)) {
        fprintf(stderr, "FAILED: %s: signal %d\n", path, WTERMSIG(status));
        n_failed++;
    } else if (WEXITSTATUS(status) != 0) {
        fprintf(stderr, "FAILED: %s: exit status %d\n", path, WEXITSTATUS(status));
        n_failed++;
    } else {
        n_ran++;
    }
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs every regular file in dir, in name order. */
static void run_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "FAILED: %s: %s\n", dir, strerror(errno));
        n_failed++;
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue; /* ., .., .gitkeep */
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **more = realloc(names, cap * sizeof *names);
            if (!more) break;
            names = more;
        }
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        if (!(names[n] = malloc(len))) break;
        snprintf(names[n++], len, "%s/%s", dir, e->d_name);
    }
    if (e) {
        fprintf(stderr, "FAILED: %s: out of memory\n", dir);
        n_failed++;
    }
    closedir(d);
    if (names) qsort(names, n, sizeof *names, by_name);
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) run_file(names[i]);
        free(names[i]);
    }
    free(names);
}

int main(int argc, char **argv)
{
    static const uint8_t empty[1];
    LLVMFuzzerTestOneInput(empty, 0);
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            if (errno == ENOENT) continue;
            fprintf(stderr, "FAILED: %s: %s\n", argv[i], strerror(errno));
            n_failed++;
        } else if (S_ISDIR(st.st_mode)) {
            run_dir(argv[i]);
        } else {
            run_file(argv[i]);
        }
    }
    printf("%s: %d inputs passed, %d failed\n", argv[0], n_ran, n_failed);
    return n_failed ? 1 : 0;
}
