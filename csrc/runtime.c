/*
 * runtime.c -- thread count and SIMD path of the C kernels.
 *
 * Both are process-wide settings read at the start of every kernel call.
 * Set them between calls, not while kernels run on other threads.
 */
#include <omp.h>
#include "fastnn.h"
#include "internal.h"

static int g_threads = 0;       /* 0: not yet set -> omp_get_max_threads() */
static _Thread_local int tl_serial = 0;  /* see fastnn_run_serial (internal.h) */
static int g_simd = -1;         /* -1: not yet chosen -> fastnn_simd_best() */

void fastnn_set_num_threads(int n)
{
    /* n < 1 restores the default (OMP_NUM_THREADS or the core count). */
    g_threads = n > 0 ? n : 0;
}

int fastnn_get_num_threads(void)
{
    /* A kernel called by one thread of a team (the threaded training epoch
       splits a batch over threads) runs serially on that thread. */
    if (tl_serial || omp_in_parallel())
        return 1;
    if (g_threads > 0)
        return g_threads;
    int n = omp_get_max_threads();
    return n > 0 ? n : 1;
}

int fastnn_flush_denormals(int on)
{
    /* MXCSR FTZ + DAZ (0x8040) on the calling thread and, when the kernels
       run threaded, on every thread of their OpenMP team, which keeps it
       for later parallel regions (threads created later inherit the
       creator's).  Single-threaded, no team is woken (on a busy machine
       that waits for a core). */
#if defined(__x86_64__) || defined(__i386__)
    const unsigned bits = 0x8040u;
    const int before = (_mm_getcsr() & bits) == bits;
    const int team = fastnn_get_num_threads();
    if (team > 1) {
#pragma omp parallel num_threads(team)
        {
            const unsigned csr = _mm_getcsr();
            _mm_setcsr(on ? (csr | bits) : (csr & ~bits));
        }
    }
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(on ? (csr | bits) : (csr & ~bits));
    return before;
#else
    (void)on;
    return 0;
#endif
}

int fastnn_run_serial(int on)
{
    const int before = tl_serial;
    tl_serial = on;
    return before;
}

static int simd_supported(int path)
{
    if (path == FASTNN_SIMD_GENERIC)
        return 1;
#if defined(__x86_64__) && defined(__GNUC__)
    /* libgcc also checks that the OS saves the wider registers (XGETBV). */
    __builtin_cpu_init();
    if (path == FASTNN_SIMD_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (path == FASTNN_SIMD_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
#endif
    return 0;
}

int fastnn_simd_best(void)
{
    for (int path = FASTNN_SIMD_AVX512; path > FASTNN_SIMD_GENERIC; path--)
        if (simd_supported(path))
            return path;
    return FASTNN_SIMD_GENERIC;
}

int fastnn_simd_path(void)
{
    if (g_simd < 0)
        g_simd = fastnn_simd_best();
    return g_simd;
}

int fastnn_set_simd_path(int path)
{
    if (path < FASTNN_SIMD_GENERIC || path > FASTNN_SIMD_AVX512 || !simd_supported(path))
        return FASTNN_EINVAL;
    g_simd = path;
    return FASTNN_OK;
}
