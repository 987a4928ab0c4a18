/* AddressSanitizer/UBSan harness for the C kernels (run by
 * tests/test_sanitizer.py): every function of csrc/fastnn.h on exact-size
 * heap buffers with odd sizes, in-place and NULL-optional variants, every
 * SIMD path the CPU has, 1 and 2 threads, and the invalid-argument cases. */
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include "fastnn.h"

static float *rnd(int64_t n) {
    float *p = malloc((size_t)n * sizeof *p);
    for (int64_t i = 0; i < n; i++) p[i] = (float)rand() / RAND_MAX * 6.0f - 3.0f;
    return p;
}
static int fails = 0;
#define OK(call) do { int rc_ = (call); if (rc_ != FASTNN_OK) { fails++; printf("rc %d: %s\n", rc_, #call); } } while (0)
#define BAD(call) do { int rc_ = (call); if (rc_ != FASTNN_EINVAL) { fails++; printf("expected EINVAL: %s\n", #call); } } while (0)

static int elementwise_and_dense(void) {
    const int64_t sizes[] = {1, 3, 4095, 4097, 33331, 70001};
    for (int th = 1; th <= 2; th++) {
        fastnn_set_num_threads(th);
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
            int64_t s = sizes[si];
            float *x = rnd(s), *y = rnd(s), *dy = rnd(s), *dx = rnd(s), *t = rnd(s);
            for (int a = 0; a < 8; a++) {
                OK(fastnn_activation_forward(y, x, s, a, 0.1f));
                OK(fastnn_activation_backward(dx, dy, y, s, a, 0.1f));
                OK(fastnn_activation_backward(dy, dy, y, s, a, 0.1f));
            }
            OK(fastnn_activation_forward(x, x, s, 3, 0.1f));
            float loss; double ss;
            OK(fastnn_bce_forward(&loss, x, t, s)); OK(fastnn_bce_backward(dx, x, t, s)); OK(fastnn_bce_backward(x, x, t, s));
            OK(fastnn_mse_forward(&loss, x, t, s)); OK(fastnn_mse_backward(dx, x, t, s));
            OK(fastnn_mae_forward(&loss, x, t, s)); OK(fastnn_mae_backward(dx, x, t, s));
            float *m = calloc(s, 4), *v = calloc(s, 4), *b = calloc(s, 4);
            for (int64_t st = 1; st <= 2; st++) {
                OK(fastnn_sgd(x, t, NULL, s, st, 0.1, 0.0, 0.0, 0, 0.0));
                OK(fastnn_sgd(x, t, b, s, st, 0.1, 0.9, 0.1, 1, 0.01));
                OK(fastnn_adam(x, t, m, v, s, st, 1e-3, 0.9, 0.999, 1e-8, 0.01));
                OK(fastnn_adamw(x, t, m, v, s, st, 1e-3, 0.9, 0.999, 1e-8, 0.01));
                OK(fastnn_rmsprop(x, t, v, NULL, NULL, s, 1e-3, 0.99, 1e-8, 0.0, 0.0, 0));
                OK(fastnn_rmsprop(x, t, v, b, m, s, 1e-3, 0.99, 1e-8, 0.01, 0.9, 1));
                OK(fastnn_adagrad(x, t, v, s, st, 0.1, 0.01, 0.0, 1e-10));
                OK(fastnn_nadam(x, t, m, v, s, st, 2e-3, 0.9, 0.999, 1e-8, 0.0, 4e-3, 0.5));
                OK(fastnn_adamax(x, t, m, v, s, st, 2e-3, 0.9, 0.999, 1e-8, 0.0));
            }
            OK(fastnn_sum_squares(&ss, x, s)); OK(fastnn_scale(x, s, 0.5f)); OK(fastnn_clip(x, s, -1.0f, 1.0f));
            free(m); free(v); free(b); free(x); free(y); free(dy); free(dx); free(t);
        }
        const int64_t dims[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 33, 257}, {257, 3, 300}, {65, 129, 513}};
        for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
            int64_t n = dims[di][0], in = dims[di][1], out = dims[di][2];
            float *X = rnd(n * in), *W = rnd(in * out), *bias = rnd(out), *Y = rnd(n * out), *dY = rnd(n * out);
            float *dX = rnd(n * in), *dW = rnd(in * out), *db = rnd(out), *dZ = rnd(n * out);
            for (int a = 0; a < 8; a++) {
                OK(fastnn_dense_forward(Y, X, W, bias, n, in, out, a, 0.1f));
                OK(fastnn_dense_backward(dX, dW, db, dZ, dY, X, W, Y, n, in, out, a, 0.1f));
                OK(fastnn_dense_backward(NULL, dW, NULL, dY, dY, X, W, Y, n, in, out, a, 0.1f));
            }
            /* softmax family on (n, out) */
            int32_t *lab = malloc((size_t)n * sizeof *lab);
            for (int64_t i = 0; i < n; i++) lab[i] = (int32_t)(rand() % out);
            float loss;
            OK(fastnn_softmax_forward(Y, dY, n, out)); OK(fastnn_softmax_forward(dZ, dZ, n, out));
            OK(fastnn_softmax_backward(dZ, dY, Y, n, out)); OK(fastnn_softmax_backward(dY, dY, Y, n, out));
            OK(fastnn_softmax_xent_forward(&loss, Y, dZ, lab, n, out));
            OK(fastnn_softmax_xent_backward(dZ, Y, lab, n, out)); OK(fastnn_softmax_xent_backward(Y, Y, lab, n, out));
            lab[n - 1] = (int32_t)out; BAD(fastnn_softmax_xent_forward(&loss, Y, dZ, lab, n, out));
            lab[n - 1] = -1; BAD(fastnn_softmax_xent_backward(dZ, Y, lab, n, out));
            free(lab); free(X); free(W); free(bias); free(Y); free(dY); free(dX); free(dW); free(db); free(dZ);
        }
    }
    float f = 1.0f; double d;
    BAD(fastnn_activation_forward(&f, &f, 1, 8, 0.0f)); BAD(fastnn_activation_forward(NULL, &f, 1, 0, 0.0f));
    BAD(fastnn_activation_backward(&f, &f, &f, -1, 0, 0.0f)); BAD(fastnn_mse_forward(&f, &f, &f, 0));
    BAD(fastnn_sgd(&f, &f, NULL, 1, 1, 0.1, 0.9, 0.0, 0, 0.0)); BAD(fastnn_adam(&f, &f, &f, &f, 1, 0, 1, .9, .9, 1e-8, 0));
    BAD(fastnn_rmsprop(&f, &f, &f, NULL, NULL, 1, 1, .9, 1e-8, 0, 0, 1)); BAD(fastnn_clip(&f, 1, 1.0f, 0.0f));
    BAD(fastnn_sum_squares(NULL, &f, 1)); BAD(fastnn_softmax_forward(&f, &f, 0, 1));
    BAD(fastnn_dense_backward(NULL, &f, NULL, NULL, &f, &f, &f, &f, 1, 1, 1, 0, 0.0f));
    (void)d;
    printf("asan harness done, failures: %d\n", fails);
    return fails != 0;
}

/* gemm with leading dimensions larger than the rows, so a read past a row
   lands in guarded padding only if the kernel is wrong about ld. */
static void gemm_cases(void) {
    const int64_t dims[][3] = {{1, 1, 1}, {1, 17, 3}, {7, 1, 5}, {13, 31, 2}, {8, 32, 16},
                               {15, 33, 17}, {14, 32, 1}, {29, 47, 300}, {97, 65, 513},
                               {130, 260, 70}, {33, 1025, 9}};
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
        int64_t m = dims[di][0], n = dims[di][1], k = dims[di][2];
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
                float *A = rnd((ta ? k : m) * lda), *B = rnd((tb ? n : k) * ldb);
                float *C = rnd(m * ldc);
                for (int64_t i = 0; i < m * ldc; i++) C[i] = NAN;
                OK(fastnn_gemm(ta, tb, m, n, k, 1.0f, A, lda, B, ldb, 0.0f, C, ldc));
                for (int64_t i = 0; i < m; i++)
                    for (int64_t j = 0; j < n; j++)
                        if (isnan(C[i * ldc + j])) { fails++; printf("NaN read with beta=0 at %lld %lld\n", (long long)i, (long long)j); i = m; break; }
                OK(fastnn_gemm(ta, tb, m, n, k, 0.5f, A, lda, B, ldb, -1.0f, C, ldc));
                /* the tightest legal leading dimensions */
                OK(fastnn_gemm(ta, tb, m, n, k, 1.0f, A, ta ? m : k, B, tb ? k : n, 1.0f, C, n));
                free(A); free(B); free(C);
            }
    }
    float f = 1.0f;
    BAD(fastnn_gemm(0, 0, 0, 1, 1, 1.0f, &f, 1, &f, 1, 0.0f, &f, 1));
    BAD(fastnn_gemm(0, 0, 1, 1, -1, 1.0f, &f, 1, &f, 1, 0.0f, &f, 1));
    BAD(fastnn_gemm(0, 0, 2, 2, 2, 1.0f, &f, 1, &f, 2, 0.0f, &f, 2));   /* lda < k */
    BAD(fastnn_gemm(0, 0, 1, 1, 1, 1.0f, NULL, 1, &f, 1, 0.0f, &f, 1));
}

int main(void) {
    int best = fastnn_simd_best();
    for (int path = 0; path <= best; path++) {
        if (fastnn_set_simd_path(path) != FASTNN_OK) continue;  /* e.g. AVX2 on a CPU without it */
        for (int th = 1; th <= 2; th++) {
            fastnn_set_num_threads(th);
            gemm_cases();
        }
    }
    fastnn_set_simd_path(best);
    return elementwise_and_dense();
}
