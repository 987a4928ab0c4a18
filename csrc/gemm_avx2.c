/*
 * gemm_avx2.c -- AVX2 + FMA micro-kernel: a 6 x 16 tile of C in 12 ymm
 * accumulators (two vectors of B per row, one broadcast of A per row; 15 of
 * the 16 ymm registers).  Compiled for the avx2,fma target by attribute
 * only; gemm.c calls it only when the CPU reports both (runtime.c).
 */
#include "gemm_kernels.h"

#ifdef FASTNN_HAVE_X86_KERNELS
#include <immintrin.h>
#include "fastnn.h"

#define MR FASTNN_AVX2_MR
#define NR FASTNN_AVX2_NR

__attribute__((target("avx2,fma")))
void fastnn_ukernel_avx2(int64_t kc, const float *a, const float *b,
                         int64_t ldb, float *c, int64_t ldc, float alpha, float beta,
                         const fastnn_epilogue *ep)
{
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        acc[i][0] = _mm256_setzero_ps();
        acc[i][1] = _mm256_setzero_ps();
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + 15), _MM_HINT_T0);
    }
#pragma GCC unroll 4
    for (int64_t p = 0; p < kc; p++) {
        __m256 b0 = _mm256_loadu_ps(b);
        __m256 b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            __m256 ai = _mm256_broadcast_ss(a + i);
            acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
        }
        a += MR;
        b += ldb;
    }

    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    const __m256 zero = _mm256_setzero_ps();
    __m256 bias0 = zero, bias1 = zero;
    int act = ep ? ep->act : FASTNN_ACT_IDENTITY;
    __m256 slope = _mm256_set1_ps(ep ? ep->slope : 0.0f);
    if (ep && ep->bias) {
        bias0 = _mm256_loadu_ps(ep->bias);
        bias1 = _mm256_loadu_ps(ep->bias + 8);
    }
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        float *ci = c + i * ldc;
        __m256 v0 = _mm256_mul_ps(va, acc[i][0]);
        __m256 v1 = _mm256_mul_ps(va, acc[i][1]);
        if (beta != 0.0f) {   /* beta == 0: C is never read */
            v0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci), v0);
            v1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci + 8), v1);
        }
        v0 = _mm256_add_ps(v0, bias0);
        v1 = _mm256_add_ps(v1, bias1);
        if (act == FASTNN_ACT_RELU) {            /* x < 0 ? 0 : x, keeps NaN */
            v0 = _mm256_max_ps(zero, v0);
            v1 = _mm256_max_ps(zero, v1);
        } else if (act == FASTNN_ACT_LEAKY_RELU) {
            v0 = _mm256_blendv_ps(v0, _mm256_mul_ps(v0, slope), _mm256_cmp_ps(v0, zero, _CMP_LE_OQ));
            v1 = _mm256_blendv_ps(v1, _mm256_mul_ps(v1, slope), _mm256_cmp_ps(v1, zero, _CMP_LE_OQ));
        }
        _mm256_storeu_ps(ci, v0);
        _mm256_storeu_ps(ci + 8, v1);
    }
    if (act != FASTNN_ACT_IDENTITY && act != FASTNN_ACT_RELU && act != FASTNN_ACT_LEAKY_RELU)
        fastnn_tile_act(c, ldc, MR, NR, act, ep->slope);
}
#endif
