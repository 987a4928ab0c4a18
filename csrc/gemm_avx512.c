/*
 * gemm_avx512.c -- AVX-512F micro-kernel: an 8 x 32 tile of C in 16 zmm
 * accumulators (two vectors of B per row, one broadcast of A per row).
 * Compiled for the avx512f target by attribute only; gemm.c calls it only
 * when the CPU reports AVX-512F (runtime.c).
 */
#include "gemm_kernels.h"

#ifdef FASTNN_HAVE_X86_KERNELS
#include <immintrin.h>
#include "fastnn.h"

#define MR FASTNN_AVX512_MR
#define NR FASTNN_AVX512_NR

__attribute__((target("avx512f,avx512vl,fma")))
void fastnn_ukernel_avx512(int64_t kc, const float *a, const float *b,
                           int64_t ldb, float *c, int64_t ldc, float alpha, float beta,
                           const fastnn_epilogue *ep)
{
    __m512 acc[MR][2];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        acc[i][0] = _mm512_setzero_ps();
        acc[i][1] = _mm512_setzero_ps();
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + 16), _MM_HINT_T0);
    }
#pragma GCC unroll 4
    for (int64_t p = 0; p < kc; p++) {
        __m512 b0 = _mm512_loadu_ps(b);
        __m512 b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            __m512 ai = _mm512_set1_ps(a[i]);
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
        }
        a += MR;
        b += ldb;
    }

    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    const __m512 zero = _mm512_setzero_ps();
    __m512 bias0 = zero, bias1 = zero;
    int act = ep ? ep->act : FASTNN_ACT_IDENTITY;
    __m512 slope = _mm512_set1_ps(ep ? ep->slope : 0.0f);
    if (ep && ep->bias) {
        bias0 = _mm512_loadu_ps(ep->bias);
        bias1 = _mm512_loadu_ps(ep->bias + 16);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        float *ci = c + i * ldc;
        __m512 v0 = _mm512_mul_ps(va, acc[i][0]);
        __m512 v1 = _mm512_mul_ps(va, acc[i][1]);
        if (beta != 0.0f) {   /* beta == 0: C is never read */
            v0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(ci), v0);
            v1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(ci + 16), v1);
        }
        v0 = _mm512_add_ps(v0, bias0);
        v1 = _mm512_add_ps(v1, bias1);
        if (act == FASTNN_ACT_RELU) {            /* x < 0 ? 0 : x, keeps NaN */
            v0 = _mm512_max_ps(zero, v0);
            v1 = _mm512_max_ps(zero, v1);
        } else if (act == FASTNN_ACT_LEAKY_RELU) {
            v0 = _mm512_mask_mul_ps(v0, _mm512_cmp_ps_mask(v0, zero, _CMP_LE_OQ), v0, slope);
            v1 = _mm512_mask_mul_ps(v1, _mm512_cmp_ps_mask(v1, zero, _CMP_LE_OQ), v1, slope);
        }
        _mm512_storeu_ps(ci, v0);
        _mm512_storeu_ps(ci + 16, v1);
    }
    if (act != FASTNN_ACT_IDENTITY && act != FASTNN_ACT_RELU && act != FASTNN_ACT_LEAKY_RELU)
        fastnn_tile_act(c, ldc, MR, NR, act, ep->slope);
}
#endif
