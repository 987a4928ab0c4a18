/* TEMPORARY naive gemm / dense_forward / runtime, to be replaced by the
 * blocked SIMD implementation.  Correct, slow. */
#include <math.h>
#include <stddef.h>
#include "fastnn.h"

static int g_threads = 1;
void fastnn_set_num_threads(int n) { g_threads = n > 0 ? n : 1; }
int fastnn_get_num_threads(void) { return g_threads; }
int fastnn_simd_path(void) { return FASTNN_SIMD_GENERIC; }
int fastnn_simd_best(void) { return FASTNN_SIMD_GENERIC; }
int fastnn_set_simd_path(int path) { return path == FASTNN_SIMD_GENERIC ? FASTNN_OK : FASTNN_EINVAL; }

int fastnn_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                float alpha, const float *A, int64_t lda,
                const float *B, int64_t ldb,
                float beta, float *C, int64_t ldc)
{
    if (m < 1 || n < 1 || k < 1 || !A || !B || !C) return FASTNN_EINVAL;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            float s = 0.0f;
            for (int64_t p = 0; p < k; p++) {
                float a = trans_a ? A[p * lda + i] : A[i * lda + p];
                float b = trans_b ? B[j * ldb + p] : B[p * ldb + j];
                s += a * b;
            }
            C[i * ldc + j] = beta == 0.0f ? alpha * s : alpha * s + beta * C[i * ldc + j];
        }
    return FASTNN_OK;
}

int fastnn_dense_forward(float *Y, const float *X, const float *W,
                         const float *b, int64_t n, int64_t in, int64_t out,
                         int act, float slope)
{
    int rc = fastnn_gemm(0, 0, n, out, in, 1.0f, X, in, W, out, 0.0f, Y, out);
    if (rc) return rc;
    if (b)
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < out; j++) Y[i * out + j] += b[j];
    return fastnn_activation_forward(Y, Y, n * out, act, slope);
}
