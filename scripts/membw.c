/* How fast this machine's cores can stream weights from RAM: the floor of a Mimi or LM step
 * that reads every weight once per frame (Mimi: 351 MB in f32, 185 MB in f16). Reads a buffer
 * of the size given in MB (default 351) with 1 thread and with every core, best of 5 passes, on
 * 4 KiB pages and on transparent huge pages (madvise; the CPU Mimi engine's weights are on huge
 * pages: in a VM every TLB miss is a two-level page walk).
 *   cc -O3 -march=native -ffast-math -fopenmp scripts/membw.c -o membw && ./membw [MB]
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Best of 5 reads of a[0..n) with th threads, in seconds. */
static double read_best(const float *a, size_t n, int th, double *sum) {
    double best = 1e9;
    for (int pass = 0; pass < 5; pass++) {
        double t = now();
        float s = 0;
        /* 32 independent sums (4 AVX registers): the adds' latency must not limit it. */
#pragma omp parallel num_threads(th) reduction(+ : s)
        {
            float acc[32] = {0};
#pragma omp for schedule(static)
            for (size_t i = 0; i < n / 32; i++)
                for (int j = 0; j < 32; j++) acc[j] += a[i * 32 + j];
            for (int j = 0; j < 32; j++) s += acc[j];
        }
        double d = now() - t;
        *sum += s;
        if (d < best) best = d;
    }
    return best;
}

int main(int argc, char **argv) {
    size_t mb = argc > 1 ? strtoul(argv[1], NULL, 10) : 351;
    size_t n = mb * 1000 * 1000 / sizeof(float);
    size_t huge = 2u << 20, bytes = (n * sizeof(float) + huge - 1) / huge * huge;
    int cores = omp_get_num_procs();
    for (int thp = 0; thp <= 1; thp++) {
        /* A fresh mapping per run: advice only applies to pages not yet touched. */
        float *a = aligned_alloc(huge, bytes);
        if (!a) return 1;
        if (thp) madvise(a, bytes, MADV_HUGEPAGE);
        else madvise(a, bytes, MADV_NOHUGEPAGE);
        memset(a, 0, bytes); /* touch every page before timing */
        for (int th = 1; th <= cores; th = th == cores ? cores + 1 : cores) {
            double sum = 0, best = read_best(a, n, th, &sum);
            printf("membw: %s pages, %d thread(s): %.1f GB/s, %.1f ms to read %zu MB (%g)\n",
                   thp ? "huge" : "4 KiB", th, n * sizeof(float) / best / 1e9, best * 1e3, mb,
                   sum);
        }
        free(a);
    }
    return 0;
}
