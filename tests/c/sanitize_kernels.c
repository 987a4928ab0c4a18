/* AddressSanitizer/UBSan harness for the C kernels (run by
 * tests/test_sanitizer.py): every function of csrc/fastnn.h on exact-size
 * heap buffers with odd sizes, in-place and NULL-optional variants, every
 * SIMD path the CPU has, 1 and 2 threads, and the invalid-argument cases. */
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include "fastnn.h"
#include "internal.h"  /* the dense stack with post ops (train.c) */

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
                /* RAdam's first steps are momentum SGD, step 10 and on adaptive */
                OK(fastnn_radam(x, t, m, v, s, st * 5, 1e-3, 0.9, 0.999, 1e-8, 0.01));
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

/* Convolution, pooling and batch norm on odd shapes: 1x1, stride > 1,
   padding, kernel larger than the stride, batch 1, channels past the
   kernels' 128-channel blocks; optional outputs NULL, dZ == dY. */
static void cnn_cases(void) {
    /* n, h, w, c, oc, kh, kw, sh, sw, ph, pw */
    const int64_t conv[][11] = {{1, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0}, {2, 5, 4, 3, 2, 3, 3, 1, 1, 1, 1},
                                {1, 6, 7, 2, 3, 3, 2, 2, 1, 1, 0}, {3, 9, 11, 5, 7, 3, 3, 2, 2, 1, 1},
                                {2, 8, 8, 3, 4, 5, 5, 3, 3, 2, 2}, {2, 7, 7, 17, 33, 1, 1, 2, 2, 0, 0},
                                {1, 5, 6, 4, 3, 1, 1, 1, 1, 0, 0}, {4, 28, 28, 3, 16, 3, 3, 1, 1, 1, 1},
                                {1, 2, 9, 2, 2, 2, 4, 1, 3, 1, 3},
                                /* stride 1, 16+ channels: the direct path with dX as a
                                   convolution of the padded dZ, ragged 32/64-wide tiles */
                                {2, 6, 9, 20, 37, 3, 3, 1, 1, 1, 1}, {3, 5, 7, 16, 70, 3, 3, 1, 1, 1, 1},
                                {2, 8, 7, 33, 16, 5, 4, 1, 1, 2, 1}, {1, 3, 3, 16, 64, 3, 3, 1, 1, 0, 0},
                                /* 3x3 stride 1, 16+ channels, even outputs: Winograd
                                   (C and AVX-512 transforms, small blocks, pad 0) */
                                {8, 6, 8, 16, 37, 3, 3, 1, 1, 1, 1}, {4, 10, 10, 20, 48, 3, 3, 1, 1, 1, 1},
                                {8, 8, 6, 16, 16, 3, 3, 1, 1, 0, 0}, {2, 14, 14, 32, 64, 3, 3, 1, 1, 1, 1},
                                /* pad 2: dX's Winograd reads dZ with no border */
                                {4, 6, 6, 16, 32, 3, 3, 1, 1, 2, 2}};
    for (size_t ci = 0; ci < sizeof conv / sizeof *conv; ci++) {
        const int64_t *d = conv[ci];
        int64_t n = d[0], h = d[1], w = d[2], c = d[3], oc = d[4], kh = d[5], kw = d[6];
        int64_t sh = d[7], sw = d[8], ph = d[9], pw = d[10];
        int64_t oh = (h + 2 * ph - kh) / sh + 1, ow = (w + 2 * pw - kw) / sw + 1;
        int64_t M = n * oh * ow, K = kh * kw * c;
        float *X = rnd(n * h * w * c), *W = rnd(K * oc), *b = rnd(oc), *Y = rnd(M * oc), *cols = rnd(M * K);
        float *dY = rnd(M * oc), *dZ = rnd(M * oc), *dW = rnd(K * oc), *db = rnd(oc), *dX = rnd(n * h * w * c);
        const int acts[] = {0, 5, 4};
        for (int a = 0; a < 3; a++) {
            OK(fastnn_conv2d_forward(Y, cols, X, W, b, n, h, w, c, oc, kh, kw, sh, sw, ph, pw, acts[a], 0.1f));
            OK(fastnn_conv2d_backward(dX, dW, db, dZ, cols, dY, W, Y, n, h, w, c, oc, kh, kw, sh, sw, ph, pw, acts[a], 0.1f));
        }
        /* an inf in X and in dY: Winograd's tiles holding it take the direct sum */
        X[n * h * w * c / 2] = INFINITY;
        dY[M * oc / 3] = INFINITY;
        OK(fastnn_conv2d_forward(Y, cols, X, W, b, n, h, w, c, oc, kh, kw, sh, sw, ph, pw, 5, 0.1f));
        OK(fastnn_conv2d_backward(dX, dW, db, dZ, cols, dY, W, Y, n, h, w, c, oc, kh, kw, sh, sw, ph, pw, 5, 0.1f));
        OK(fastnn_conv2d_forward(Y, cols, X, W, NULL, n, h, w, c, oc, kh, kw, sh, sw, ph, pw, 6, 0.1f));
        OK(fastnn_conv2d_backward(NULL, dW, NULL, dY, cols, dY, W, Y, n, h, w, c, oc, kh, kw, sh, sw, ph, pw, 6, 0.1f));
        BAD(fastnn_conv2d_forward(Y, cols, X, W, b, n, h, w, c, oc, kh, kw, sh, sw, kh, pw, 0, 0.1f));
        BAD(fastnn_conv2d_backward(dX, dW, db, dZ, NULL, dY, W, Y, n, h, w, c, oc, kh, kw, sh, sw, ph, pw, 0, 0.1f));
        free(X); free(W); free(b); free(Y); free(cols); free(dY); free(dZ); free(dW); free(db); free(dX);
    }
    /* n, h, w, c, kh, kw, sh, sw */
    const int64_t pool[][8] = {{1, 4, 4, 1, 2, 2, 2, 2}, {2, 7, 6, 3, 3, 3, 2, 2}, {3, 9, 13, 5, 2, 3, 1, 2},
                               {8, 28, 28, 16, 2, 2, 2, 2}, {1, 5, 5, 300, 1, 1, 1, 1}, {2, 9, 9, 130, 3, 3, 2, 2},
                               {1, 3, 8, 2, 3, 2, 5, 3}};
    for (size_t pi = 0; pi < sizeof pool / sizeof *pool; pi++) {
        const int64_t *d = pool[pi];
        int64_t n = d[0], h = d[1], w = d[2], c = d[3], kh = d[4], kw = d[5], sh = d[6], sw = d[7];
        int64_t oh = (h - kh) / sh + 1, ow = (w - kw) / sw + 1, out = n * oh * ow * c;
        float *X = rnd(n * h * w * c), *Y = rnd(out), *dY = rnd(out), *dX = rnd(n * h * w * c);
        int32_t *am = malloc((size_t)out * sizeof *am);
        OK(fastnn_maxpool2d_forward(Y, am, X, n, h, w, c, kh, kw, sh, sw));
        OK(fastnn_maxpool2d_backward(dX, dY, am, n, h, w, c, kh, kw, sh, sw));
        OK(fastnn_avgpool2d_forward(Y, X, n, h, w, c, kh, kw, sh, sw));
        OK(fastnn_avgpool2d_backward(dX, dY, n, h, w, c, kh, kw, sh, sw));
        am[out - 1] = (int32_t)(h * w); BAD(fastnn_maxpool2d_backward(dX, dY, am, n, h, w, c, kh, kw, sh, sw));
        am[out - 1] = -1; BAD(fastnn_maxpool2d_backward(dX, dY, am, n, h, w, c, kh, kw, sh, sw));
        BAD(fastnn_maxpool2d_forward(Y, am, X, n, h, w, c, h + 1, kw, sh, sw));
        BAD(fastnn_avgpool2d_forward(Y, X, n, h, w, c, kh, kw, 0, sw));
        BAD(fastnn_avgpool2d_backward(dX, NULL, n, h, w, c, kh, kw, sh, sw));
        free(X); free(Y); free(dY); free(dX); free(am);
    }
    const int64_t bn[][2] = {{2, 1}, {7, 3}, {1000, 130}, {50000, 3}, {300, 257}};
    for (size_t bi = 0; bi < sizeof bn / sizeof *bn; bi++) {
        int64_t rows = bn[bi][0], c = bn[bi][1];
        float *X = rnd(rows * c), *Y = rnd(rows * c), *dY = rnd(rows * c), *dX = rnd(rows * c);
        float *g = rnd(c), *be = rnd(c), *mu = rnd(c), *is = rnd(c), *rm = rnd(c), *rv = rnd(c), *dg = rnd(c), *db = rnd(c);
        for (int64_t j = 0; j < c; j++) rv[j] = 1.0f;
        OK(fastnn_batchnorm_forward(Y, mu, is, rm, rv, X, g, be, rows, c, 0.1, 1e-5));
        OK(fastnn_batchnorm_inference(Y, X, g, be, rm, rv, rows, c, 1e-5));
        OK(fastnn_batchnorm_inference(Y, X, g, be, rm, rv, 1, c, 1e-5));
        OK(fastnn_batchnorm_backward(dX, dg, db, dY, X, g, mu, is, rows, c));
        BAD(fastnn_batchnorm_forward(Y, mu, is, rm, rv, X, g, be, 1, c, 0.1, 1e-5));
        BAD(fastnn_batchnorm_forward(Y, mu, is, rm, rv, X, g, be, rows, c, 0.1, 0.0));
        BAD(fastnn_batchnorm_inference(Y, X, g, NULL, rm, rv, rows, c, 1e-5));
        BAD(fastnn_batchnorm_backward(dX, dg, db, dY, X, g, mu, is, rows, 0));
        free(X); free(Y); free(dY); free(dX); free(g); free(be); free(mu); free(is); free(rm); free(rv); free(dg); free(db);
    }
    float f = 1.0f;
    BAD(fastnn_conv2d_forward(&f, &f, &f, &f, NULL, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0.0f));
    BAD(fastnn_conv2d_forward(&f, &f, &f, &f, NULL, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 8, 0.0f));
    BAD(fastnn_conv2d_forward(&f, &f, &f, &f, NULL, 1, 1, 1, 1, 1, 2, 1, 1, 1, 0, 0, 0, 0.0f));
    BAD(fastnn_conv2d_backward(&f, &f, NULL, &f, &f, &f, &f, &f, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0.0f));
}

/* The training epoch: exact-size workspaces for 1 and 2 threads, odd sizes,
   a last batch smaller than the thread count, every loss and optimizer. */
/* An epoch hook that counts its calls and stops at call stop_at (0: never). */
struct hook_count {
    int64_t calls, stop_at;
};

static int count_hook(void *ctx, int event, int64_t batch) {
    struct hook_count *h = ctx;
    (void)event; (void)batch;
    return ++h->calls == h->stop_at;
}

/* The hook on an epoch of nb >= 2 batches (run: the dense stack or the
   plan): GRADS + BATCH every 2 batches, all of them, then a stop at the
   second GRADS (batch 1 not applied: n_done 1), then refused settings. */
#define HOOK_CASES(E, run, nb, what)                                                          \
    do {                                                                                   \
        struct hook_count h = {0, 0};                                                      \
        E.hook = count_hook; E.hook_ctx = &h; E.hook_every = 2;                            \
        E.hook_events = (1 << FASTNN_HOOK_GRADS) | (1 << FASTNN_HOOK_BATCH);               \
        OK(run(&E));                                                                       \
        const int64_t want = (nb) + (nb) / 2 + ((nb) % 2);                                 \
        if (E.n_done != (nb) || h.calls != want) { fails++; printf(what ": hook calls %lld of %lld, %lld batches\n", (long long)h.calls, (long long)want, (long long)E.n_done); } \
        h.calls = 0; h.stop_at = 2;                                                        \
        OK(run(&E));                                                                       \
        if (E.n_done != 1) { fails++; printf(what ": stopped hook: %lld batches\n", (long long)E.n_done); } \
        E.hook_events = 1 << 5; BAD(run(&E));                                              \
        E.hook_events = 1 << FASTNN_HOOK_BATCH; E.hook_every = -1; BAD(run(&E));           \
        E.hook = NULL;                                                                     \
    } while (0)

static void epoch_cases(void) {
    /* the last two are wide enough for the epoch to use two threads at the
       batches of 16 and 24 */
    const int64_t dims[][3] = {{6, 9, 3}, {17, 33, 1}, {5, 2, 7}, {700, 390, 9}, {1200, 220, 1}};
    const int64_t sizes[][2] = {{53, 24}, {49, 24}, {1, 1}, {40, 16}, {7, 100}};
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++)
            for (int loss = 0; loss < 4; loss++) {
                const int64_t in = dims[di][0], hid = dims[di][1], out = dims[di][2];
                const int64_t n = sizes[si][0], batch = sizes[si][1];
                fastnn_dense_layer L[2] = {{in, hid, 0, in * hid, FASTNN_ACT_TANH, 0.0f},
                                           {hid, out, in * hid + hid, -1, FASTNN_ACT_IDENTITY, 0.0f}};
                const int64_t n_params = in * hid + hid + hid * out;
                const int threads = fastnn_get_num_threads();
                const int64_t need = fastnn_dense_stack_workspace(L, 2, batch, threads);
                float *params = rnd(n_params), *grads = rnd(n_params), *ws = rnd(need);
                float *m = calloc((size_t)n_params, 4), *v = calloc((size_t)n_params, 4);
                float *X = rnd(n * in), *T = rnd(n * out);
                int32_t *labels = malloc((size_t)n * sizeof *labels);
                for (int64_t i = 0; i < n; i++) labels[i] = (int32_t)(rand() % out);
                const int64_t nb = (n + batch - 1) / batch;
                const int64_t nb_max = (n + 2 + batch - 1) / batch;  /* the gathered epoch's */
                double *bl = malloc((size_t)nb_max * sizeof *bl);
                int64_t *bc = malloc((size_t)nb_max * sizeof *bc);
                fastnn_optimizer opt = {0};
                opt.kind = (int)((di + si + (size_t)loss) % (FASTNN_OPT_RADAM + 1));  /* every kind */
                opt.lr = 1e-3; opt.beta1 = 0.9; opt.beta2 = 0.999; opt.eps = 1e-8; opt.alpha = 0.99;
                opt.momentum = opt.kind == FASTNN_OPT_SGD || opt.kind == FASTNN_OPT_RMSPROP ? 0.5 : 0.0;
                opt.centered = 1; opt.momentum_decay = 4e-3; opt.mu_product = 1.0;
                float *gavg = calloc((size_t)n_params, 4);
                opt.state[0] = m; opt.state[1] = v; opt.state[2] = gavg;
                fastnn_epoch E = {.params = params, .grads = grads, .n_params = n_params, .layers = L,
                                  .n_layers = 2, .opt = opt, .loss = loss, .X = X,
                                  .labels = loss == 0 ? labels : NULL, .T = loss == 0 ? NULL : T,
                                  .n = n, .batch = batch, .l2 = 0.01, .loss_scale = 1.0,
                                  .grad_scale = 1.0, .workspace = ws, .workspace_size = need,
                                  .batch_loss = bl, .batch_correct = bc};
                OK(fastnn_dense_stack_epoch(&E));
                if (E.n_done != nb) { fails++; printf("epoch: %lld of %lld batches\n", (long long)E.n_done, (long long)nb); }
                /* a gathered epoch: rows in reverse order, the first one twice more */
                int64_t *order = malloc((size_t)(n + 2) * sizeof *order);
                for (int64_t i = 0; i < n; i++) order[i] = n - 1 - i;
                order[n] = order[n + 1] = 0;
                E.order = order; E.n_order = n + 2;
                OK(fastnn_dense_stack_epoch(&E));
                fastnn_epoch F = E;
                order[n + 1] = n;  /* out of range */
                BAD(fastnn_dense_stack_epoch(&F));
                free(order);
                F = E; F.order = NULL; F.n_order = 0;
                labels[n - 1] = (int32_t)out;
                if (loss == 0)
                    BAD(fastnn_dense_stack_epoch(&F));
                F.n_params = n_params - 1; F.loss = 1; F.labels = NULL; F.T = T;
                BAD(fastnn_dense_stack_epoch(&F));
                free(params); free(grads); free(ws); free(m); free(v); free(gavg); free(X); free(T);
                free(labels); free(bl); free(bc);
            }
}

/* Three layers wide enough for two threads: the feature split of every
   layer (a 9-wide hidden layer and 3 outputs all on the first thread), both
   forward splits (partial sums, output columns), a last batch of one row,
   the in-kernel gather of an order, and a bias-less layer; exact-size
   workspaces. */
static void deep_epoch_case(int64_t in, int64_t h1);

static void deep_epoch_cases(void) {
    deep_epoch_case(700, 390);  /* the wide layers sum partial products */
    deep_epoch_case(20, 6100);  /* the first layer splits by output (ragged parts) */
}

static void deep_epoch_case(int64_t in, int64_t h1) {
    const int64_t h2 = 9, out = 3, n = 49, batch = 24;
    const int64_t w1 = in * h1, w2 = h1 * h2;
    fastnn_dense_layer L[3] = {{in, h1, 0, w1, FASTNN_ACT_RELU, 0.0f},
                               {h1, h2, w1 + h1, -1, FASTNN_ACT_TANH, 0.0f},
                               {h2, out, w1 + h1 + w2, w1 + h1 + w2 + h2 * out,
                                FASTNN_ACT_IDENTITY, 0.0f}};
    const int64_t n_params = w1 + h1 + w2 + h2 * out + out + 5;  /* 5 owned by no layer */
    for (int loss = 0; loss < 4; loss++)
        for (int ordered = 0; ordered < 2; ordered++) {
            const int64_t need = fastnn_dense_stack_workspace(L, 3, batch, fastnn_get_num_threads());
            float *params = rnd(n_params), *grads = rnd(n_params), *ws = rnd(need);
            float *m = calloc((size_t)n_params, 4), *v = calloc((size_t)n_params, 4);
            float *X = rnd(n * in), *T = rnd(n * out);
            int32_t *labels = malloc((size_t)n * sizeof *labels);
            int64_t *order = malloc((size_t)n * sizeof *order);
            for (int64_t i = 0; i < n; i++) {
                labels[i] = (int32_t)(rand() % out);
                order[i] = (i * 17) % n;
            }
            double bl[3];
            int64_t bc[3];
            fastnn_epoch E = {.params = params, .grads = grads, .n_params = n_params, .layers = L,
                              .n_layers = 3, .loss = loss, .X = X,
                              .labels = loss == 0 ? labels : NULL, .T = loss == 0 ? NULL : T,
                              .n = n, .order = ordered ? order : NULL, .n_order = ordered ? n : 0,
                              .batch = batch, .l2 = 0.01, .loss_scale = 1.0, .grad_scale = 1.0,
                              .workspace = ws, .workspace_size = need, .batch_loss = bl,
                              .batch_correct = bc};
            E.opt.kind = FASTNN_OPT_ADAM;
            E.opt.lr = 1e-3; E.opt.beta1 = 0.9; E.opt.beta2 = 0.999; E.opt.eps = 1e-8;
            E.opt.mu_product = 1.0; E.opt.state[0] = m; E.opt.state[1] = v;
            OK(fastnn_dense_stack_epoch(&E));
            if (E.n_done != 3) { fails++; printf("deep epoch: %lld of 3 batches\n", (long long)E.n_done); }
            HOOK_CASES(E, fastnn_dense_stack_epoch, 3, "deep epoch");
            free(params); free(grads); free(ws); free(m); free(v); free(X); free(T);
            free(labels); free(order);
        }
}

/* The dense stack with post ops on an exact-size workspace: dropout alone
   after a 180-wide ReLU layer (11 mask words + 4 columns, cut into chunks
   when two threads run), BatchNorm + dropout after a 100-wide one, a last
   batch of 2 rows; every SIMD path (the mask's AVX-512 passes and its
   portable tail). */
static void post_epoch_cases(void) {
    const int64_t in = 300, h1 = 180, h2 = 100, out = 10, n = 130, batch = 64;
    const int64_t w1 = in * h1, w2 = h1 * h2, w3 = h2 * out;
    fastnn_dense_layer L[3] = {{in, h1, 0, w1, FASTNN_ACT_RELU, 0.0f},
                               {h1, h2, w1 + h1, w1 + h1 + w2, FASTNN_ACT_RELU, 0.0f},
                               {h2, out, w1 + h1 + w2 + h2, w1 + h1 + w2 + h2 + w3,
                                FASTNN_ACT_IDENTITY, 0.0f}};
    const int64_t gamma = w1 + h1 + w2 + h2 + w3 + out, n_params = gamma + 2 * h2;
    float *rm = calloc((size_t)h2, 4), *rv = calloc((size_t)h2, 4);
    fastnn_post_op post[3] = {{.dropout = 1, .p = 0.3, .seed = 5, .counter = 1},
                              {.bn = 1, .dropout = 1, .gamma = gamma, .beta = gamma + h2,
                               .running_mean = rm, .running_var = rv, .momentum = 0.1,
                               .eps = 1e-5, .p = 0.2, .seed = 6, .counter = 2},
                              {0}};
    const int best = fastnn_simd_best();
    for (int path = 0; path <= best; path++) {
        if (fastnn_set_simd_path(path) != FASTNN_OK) continue;
        const int64_t need = fastnn_dense_stack_post_workspace(L, post, 3, batch,
                                                               fastnn_get_num_threads());
        float *params = rnd(n_params), *grads = rnd(n_params), *ws = rnd(need);
        float *m = calloc((size_t)n_params, 4), *v = calloc((size_t)n_params, 4);
        float *X = rnd(n * in);
        int32_t *labels = malloc((size_t)n * sizeof *labels);
        for (int64_t i = 0; i < n; i++)
            labels[i] = (int32_t)(rand() % out);
        double bl[3];
        int64_t bc[3];
        fastnn_epoch E = {.params = params, .grads = grads, .n_params = n_params, .layers = L,
                          .n_layers = 3, .loss = 0, .X = X, .labels = labels, .n = n,
                          .batch = batch, .loss_scale = 1.0, .grad_scale = 1.0,
                          .workspace = ws, .workspace_size = need, .batch_loss = bl,
                          .batch_correct = bc};
        E.opt.kind = FASTNN_OPT_ADAM;
        E.opt.lr = 1e-3; E.opt.beta1 = 0.9; E.opt.beta2 = 0.999; E.opt.eps = 1e-8;
        E.opt.mu_product = 1.0; E.opt.state[0] = m; E.opt.state[1] = v;
        OK(fastnn_dense_stack_epoch_post(&E, post));
        if (E.n_done != 3) { fails++; printf("post epoch: %lld of 3 batches\n", (long long)E.n_done); }
        /* (short of the 2-thread size the epoch takes fewer threads; short
           of the 1-thread size it refuses) */
        E.workspace_size = fastnn_dense_stack_post_workspace(L, post, 3, batch, 1) - 1;
        BAD(fastnn_dense_stack_epoch_post(&E, post));
        free(params); free(grads); free(ws); free(m); free(v); free(X); free(labels);
    }
    fastnn_set_simd_path(best);
    free(rm); free(rv);
}

/* Dropout on exact-size buffers: odd sizes (a partial last block), in place,
   the parallel split; bad arguments. */
static void dropout_cases(void) {
    const int64_t sizes[] = {0, 1, 3, 5, 4097, 70001};
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        const int64_t s = sizes[si];
        float *x = rnd(s ? s : 1), *y = rnd(s ? s : 1);
        OK(fastnn_dropout_forward(y, x, s, 0.3, 12345, 7));
        OK(fastnn_dropout_backward(x, x, s, 0.999, INT64_MAX, INT64_MAX));
        OK(fastnn_dropout_forward(y, x, s, 0.0, 0, 0));
        free(x); free(y);
    }
    float f = 1.0f;
    BAD(fastnn_dropout_forward(&f, &f, 1, 1.0, 0, 0)); BAD(fastnn_dropout_forward(&f, &f, 1, NAN, 0, 0));
    BAD(fastnn_dropout_forward(&f, &f, 1, 0.5, -1, 0)); BAD(fastnn_dropout_backward(&f, &f, 1, 0.5, 0, -1));
    BAD(fastnn_dropout_forward(NULL, &f, 1, 0.5, 0, 0)); BAD(fastnn_dropout_forward(&f, &f, -1, 0.5, 0, 0));
}

/* A hand-built plan (the Python tests' layout): every record's regions
   packed end to end in exact-size workspaces, so ASan sees any access past
   a region at the end of its buffer. */
struct plan_builder {
    int64_t rec[32][FASTNN_PLAN_FIELDS];
    double sc[32][FASTNN_PLAN_SCALARS];
    int n;
    int64_t B, ws, iws, np, nb, y, dy, h, w, c;
    int64_t pen[32][2];
    int n_pen;
};

static int64_t *pb_record(struct plan_builder *p, int op, int64_t oh, int64_t ow, int64_t oc) {
    int64_t *r = p->rec[p->n];
    for (int f = 0; f < FASTNN_PLAN_FIELDS; f++) r[f] = f <= FASTNN_F_STAT1 ? -1 : 0;
    for (int f = 0; f < FASTNN_PLAN_SCALARS; f++) p->sc[p->n][f] = 0.0;
    r[FASTNN_F_OP] = op; r[FASTNN_F_X] = p->y; r[FASTNN_F_DX] = p->dy;
    r[FASTNN_F_H] = p->h; r[FASTNN_F_W] = p->w; r[FASTNN_F_C] = p->c;
    r[FASTNN_F_OH] = oh; r[FASTNN_F_OW] = ow; r[FASTNN_F_OC] = oc;
    r[FASTNN_F_Y] = p->ws; p->ws += p->B * oh * ow * oc;
    r[FASTNN_F_DY] = p->ws; p->ws += p->B * oh * ow * oc;
    p->y = r[FASTNN_F_Y]; p->dy = r[FASTNN_F_DY]; p->h = oh; p->w = ow; p->c = oc;
    p->n++;
    return r;
}

static void pb_dense(struct plan_builder *p, int64_t oc, int act, int bias) {
    const int64_t in = p->h * p->w * p->c;
    int64_t *r = pb_record(p, FASTNN_OP_DENSE, 1, 1, oc);
    r[FASTNN_F_PARAM] = p->np; p->pen[p->n_pen][0] = p->np; p->pen[p->n_pen++][1] = in * oc;
    p->np += in * oc;
    if (bias) { r[FASTNN_F_BIAS] = p->np; p->np += oc; }
    r[FASTNN_F_ACT] = act;
}

static void pb_conv(struct plan_builder *p, int64_t oc, int64_t k, int64_t s, int64_t pad) {
    const int64_t h = p->h, w = p->w, c = p->c;
    const int64_t oh = (h + 2 * pad - k) / s + 1, ow = (w + 2 * pad - k) / s + 1;
    int64_t *r = pb_record(p, FASTNN_OP_CONV2D, oh, ow, oc);
    r[FASTNN_F_PARAM] = p->np; p->np += k * k * c * oc;
    r[FASTNN_F_BIAS] = p->np; p->np += oc;
    r[FASTNN_F_AUX] = p->ws; p->ws += p->B * oh * ow * k * k * c;
    r[FASTNN_F_KH] = r[FASTNN_F_KW] = k; r[FASTNN_F_SH] = r[FASTNN_F_SW] = s;
    r[FASTNN_F_PH] = r[FASTNN_F_PW] = pad; r[FASTNN_F_ACT] = FASTNN_ACT_RELU;
}

static void pb_pool(struct plan_builder *p, int op, int64_t k) {
    int64_t *r = pb_record(p, op, (p->h - k) / k + 1, (p->w - k) / k + 1, p->c);
    r[FASTNN_F_KH] = r[FASTNN_F_KW] = r[FASTNN_F_SH] = r[FASTNN_F_SW] = k;
    if (op == FASTNN_OP_MAXPOOL2D) {
        r[FASTNN_F_IAUX] = p->iws; p->iws += p->B * r[FASTNN_F_OH] * r[FASTNN_F_OW] * p->c;
    }
}

static void pb_batchnorm(struct plan_builder *p) {
    const int64_t c = p->c;
    if (p->dy == -1) { p->dy = p->ws; p->ws += p->B * p->h * p->w * c; }
    int64_t *r = pb_record(p, FASTNN_OP_BATCHNORM, p->h, p->w, c);
    r[FASTNN_F_PARAM] = p->np; r[FASTNN_F_BIAS] = p->np + c; p->np += 2 * c;
    r[FASTNN_F_STAT0] = p->nb; r[FASTNN_F_STAT1] = p->nb + c; p->nb += 2 * c;
    r[FASTNN_F_AUX] = p->ws; p->ws += 2 * c;
    p->sc[p->n - 1][FASTNN_S_MOMENTUM] = 0.1; p->sc[p->n - 1][FASTNN_S_EPS] = 1e-5;
}

static void plan_case(int kind, int loss, int ordered, int threads) {
    struct plan_builder P = {.B = 7, .y = -1, .dy = -1, .h = 8, .w = 8, .c = 2};
    struct plan_builder *p = &P;
    const int64_t in_size = 8 * 8 * 2, n = 17;  /* batches of 7, 7, 3 */
    if (kind == 0) {  /* every record kind */
        pb_batchnorm(p);
        pb_conv(p, 3, 3, 1, 1);
        pb_pool(p, FASTNN_OP_MAXPOOL2D, 2);
        pb_conv(p, 4, 2, 1, 0);
        pb_pool(p, FASTNN_OP_AVGPOOL2D, 2);
        p->c = p->h * p->w * p->c; p->h = p->w = 1;  /* flatten */
        int64_t *d = pb_record(p, FASTNN_OP_DROPOUT, 1, 1, p->c);
        d[FASTNN_F_SEED] = 3; p->sc[p->n - 1][FASTNN_S_P] = 0.25;
        /* a residual block: fork, dense, activation, add */
        const int64_t a = p->y, sz = p->B * p->c, dbranch = p->ws, dskip = p->ws + sz;
        p->ws += 2 * sz;
        int64_t *f = pb_record(p, FASTNN_OP_FORK, 1, 1, p->c);
        p->ws -= 2 * sz;  /* (a fork has no y, dy of its own: its dy is the branch's) */
        f[FASTNN_F_Y] = a; f[FASTNN_F_DY] = dbranch; f[FASTNN_F_DAUX] = dskip;
        p->y = a; p->dy = dbranch;
        pb_dense(p, p->c, FASTNN_ACT_TANH, 1);
        int64_t *act = pb_record(p, FASTNN_OP_ACTIVATION, 1, 1, p->c);
        act[FASTNN_F_ACT] = FASTNN_ACT_LEAKY_RELU; p->sc[p->n - 1][FASTNN_S_SLOPE] = 0.1;
        int64_t *add = pb_record(p, FASTNN_OP_ADD, 1, 1, p->c);
        add[FASTNN_F_AUX] = a; add[FASTNN_F_DAUX] = dskip;
        pb_batchnorm(p);
        pb_dense(p, 4, FASTNN_ACT_IDENTITY, 1);
        if (loss == FASTNN_LOSS_MSE) pb_record(p, FASTNN_OP_SOFTMAX, 1, 1, 4);
    } else {  /* all dense: the dense-stack path */
        pb_dense(p, 9, FASTNN_ACT_RELU, 1);
        pb_dense(p, 4, FASTNN_ACT_IDENTITY, 0);
    }
    const int64_t out = p->c, xb = p->ws, tb = p->ws + p->B * in_size;
    const int64_t lb = p->iws;
    int64_t ws_size = tb + p->B * out, iws_size = p->iws + p->B;
    if (kind == 1) {
        fastnn_dense_layer L[2] = {{in_size, 9, 0, 0, 0, 0.0f}, {9, 4, 0, -1, 0, 0.0f}};
        const int64_t need = fastnn_dense_stack_workspace(L, 2, p->B, threads);
        if (need > ws_size) ws_size = need;
    }
    float *params = rnd(p->np), *grads = rnd(p->np), *ws = rnd(ws_size), *X = rnd(n * in_size);
    float *T = rnd(n * out), *buffers = rnd(p->nb ? p->nb : 1);
    for (int64_t i = 0; i < p->nb; i++) buffers[i] = 1.0f;
    float *m = calloc((size_t)p->np, 4), *v = calloc((size_t)p->np, 4);
    int32_t *iws = malloc((size_t)iws_size * sizeof *iws), *labels = malloc((size_t)n * sizeof *labels);
    int64_t order[20];
    for (int64_t i = 0; i < n; i++) labels[i] = (int32_t)(rand() % out);
    for (int64_t i = 0; i < 20; i++) order[i] = (i * 5) % n;
    const int64_t rows = ordered ? 20 : n, nbatch = (rows + p->B - 1) / p->B;
    double *bl = malloc((size_t)nbatch * sizeof *bl);
    int64_t *bc = malloc((size_t)nbatch * sizeof *bc);
    fastnn_model_epoch E = {
        .params = params, .grads = grads, .n_params = p->np, .buffers = p->nb ? buffers : NULL,
        .n_buffers = p->nb, .plan = &p->rec[0][0], .plan_scalars = &p->sc[0][0],
        .n_records = p->n, .penalized = &p->pen[0][0], .n_penalized = p->n_pen, .loss = loss,
        .X = X, .labels = loss == 0 ? labels : NULL, .T = loss == 0 ? NULL : T, .n = n,
        .in_size = in_size, .out_size = out, .order = ordered ? order : NULL,
        .n_order = ordered ? 20 : 0, .batch = p->B, .xb = xb, .tb = tb, .lb = lb,
        .output = p->y, .doutput = p->dy, .l2 = 0.01, .loss_scale = 1.0, .grad_scale = 0.5,
        .clip_value = kind == 0 ? 0.5 : 0.0, .clip_norm = kind == 0 ? 1.0 : 0.0,
        .workspace = ws, .workspace_size = ws_size, .iworkspace = iws,
        .iworkspace_size = iws_size, .batch_loss = bl, .batch_correct = bc};
    E.opt.kind = FASTNN_OPT_ADAM; E.opt.lr = 1e-3; E.opt.beta1 = 0.9; E.opt.beta2 = 0.999;
    E.opt.eps = 1e-8; E.opt.mu_product = 1.0; E.opt.state[0] = m; E.opt.state[1] = v;
    OK(fastnn_model_epoch_run(&E));
    if (kind == 1 && loss == 0) {
        /* fit_many's one-thread dense-stack epoch (csrc/many_dense.c on the
           AVX-512 path, else the model epoch) on a workspace of exactly its
           layout, Y | D | Xb | labels; refused with a parameter short */
        const int64_t exact = 2 * p->B * (9 + 4) + p->B * in_size + p->B;
        float *ws2 = rnd(exact > ws_size ? exact : ws_size);
        fastnn_model_epoch G = E;
        int rc1 = 0;
        G.workspace = ws2;
        G.workspace_size = fastnn_simd_path() == FASTNN_SIMD_AVX512 ? exact : ws_size;
        OK(fastnn_model_epochs_run(&G, 1, &rc1));
        if (G.n_done != nbatch) { fails++; printf("many dense epoch: %lld of %lld batches\n", (long long)G.n_done, (long long)nbatch); }
        G.n_params = p->np - 1;
        BAD(fastnn_model_epochs_run(&G, 1, &rc1));
        free(ws2);
    }
    if (E.n_done != nbatch) { fails++; printf("model epoch: %lld of %lld batches\n", (long long)E.n_done, (long long)nbatch); }
    if (nbatch >= 2)
        HOOK_CASES(E, fastnn_model_epoch_run, nbatch, "model epoch");
    /* refusals: one region a float too far, an overflowing size, a bad op */
    fastnn_model_epoch F = E;
    F.workspace_size = E.doutput + p->B * out - 1;  /* the output gradient's last row short */
    BAD(fastnn_model_epoch_run(&F));
    F = E; F.iworkspace_size = kind == 0 ? iws_size - p->B - 1 : iws_size;
    if (kind == 0) BAD(fastnn_model_epoch_run(&F));
    F = E; F.n_params = p->np - 1;
    BAD(fastnn_model_epoch_run(&F));
    int64_t saved = p->rec[0][FASTNN_F_H];
    p->rec[0][FASTNN_F_H] = (int64_t)1 << 62;
    BAD(fastnn_model_epoch_run(&E));
    p->rec[0][FASTNN_F_H] = saved;
    saved = p->rec[p->n - 1][FASTNN_F_OP];
    p->rec[p->n - 1][FASTNN_F_OP] = 11;
    BAD(fastnn_model_epoch_run(&E));
    p->rec[p->n - 1][FASTNN_F_OP] = saved;
    F = E; F.batch = INT64_MAX / 2;
    BAD(fastnn_model_epoch_run(&F));
    /* frozen parameters: the trainable ranges only; refused when they overlap,
       leave params or their count overflows */
    int64_t tr[2][2] = {{0, p->np / 2}, {p->np / 2 + 1, p->np - p->np / 2 - 1}};
    int64_t over[2][2] = {{0, 4}, {2, 4}}, outside[1][2] = {{1, p->np}};
    F = E; F.trainable = &tr[0][0]; F.n_trainable = 2;
    OK(fastnn_model_epoch_run(&F));
    F.trainable = &over[0][0];
    BAD(fastnn_model_epoch_run(&F));
    F.trainable = &outside[0][0]; F.n_trainable = 1;
    BAD(fastnn_model_epoch_run(&F));
    F.trainable = &tr[0][0]; F.n_trainable = INT64_MAX / 2 + 1;  /* 2 n overflows */
    BAD(fastnn_model_epoch_run(&F));
    F.n_trainable = 0;
    BAD(fastnn_model_epoch_run(&F));
    free(params); free(grads); free(ws); free(X); free(T); free(buffers); free(m); free(v);
    free(iws); free(labels); free(bl); free(bc);
}

static void plan_cases(void) {
    for (int kind = 0; kind < 2; kind++)
        for (int loss = 0; loss < 4; loss += 2)  /* softmax_xent, mse */
            for (int ordered = 0; ordered < 2; ordered++)
                plan_case(kind, loss, ordered, fastnn_get_num_threads());
}

/* Sizes whose products or sums pass int64: each call must return EINVAL
   before it reads or writes anything (every buffer is one float on the
   heap, so ASan reports any access), and no arithmetic may overflow
   (UBSan). */
static void overflow_cases(void) {
    const int64_t big = (int64_t)1 << 32, max = INT64_MAX;
    float *f = rnd(1), *g = rnd(1), *h = rnd(1), *u = rnd(1);
    int32_t *lab = calloc(1, sizeof *lab);
    float loss;
    /* a product of two sizes wraps to 0 mod 2^64 */
    BAD(fastnn_gemm(0, 0, big, 1, 1, 1.0f, f, 1, g, 1, 0.0f, h, big));      /* m ldc */
    BAD(fastnn_gemm(0, 0, big, 1, 1, 1.0f, f, big, g, 1, 0.0f, h, 1));      /* m lda */
    BAD(fastnn_gemm(0, 1, 1, big, 1, 1.0f, f, 1, g, big, 0.0f, h, big));    /* n ldb */
    BAD(fastnn_dense_forward(h, f, g, NULL, big, big, 1, 0, 0.0f));          /* n in */
    BAD(fastnn_dense_forward(h, f, g, NULL, 1, big, big, 0, 0.0f));          /* in out */
    BAD(fastnn_dense_backward(NULL, f, NULL, g, g, h, u, u, big, 1, big, 0, 0.0f));
    BAD(fastnn_dense_backward(NULL, f, NULL, g, g, h, u, u, big, big, 1, 0, 0.0f));
    BAD(fastnn_softmax_forward(h, f, big, big));
    BAD(fastnn_softmax_backward(h, f, g, big, big));
    BAD(fastnn_softmax_xent_forward(&loss, h, f, lab, big, big));
    BAD(fastnn_softmax_xent_backward(h, f, lab, big, big));
    /* convolution: a padded height past int64; an image, a window, cols */
    BAD(fastnn_conv2d_forward(h, u, f, g, NULL, 1, max - 1, 1, 1, 1, 2, 1, 1, 1, 1, 0, 0, 0.0f));
    BAD(fastnn_conv2d_forward(h, u, f, g, NULL, big, big, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0.0f));
    BAD(fastnn_conv2d_forward(h, u, f, g, NULL, 1, 1, 1, 1, 1, big, big, 1, 1, big - 1, big - 1, 0,
                              0.0f));
    BAD(fastnn_conv2d_forward(h, u, f, g, NULL, 1, 1, 1, big, big, 1, 1, 1, 1, 0, 0, 0, 0.0f));
    BAD(fastnn_conv2d_backward(NULL, f, NULL, g, u, g, h, h, 1, 1, 1, big, big, 1, 1, 1, 1, 0, 0, 0,
                               0.0f));
    BAD(fastnn_conv2d_backward(NULL, f, NULL, g, u, g, h, h, big, big, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0,
                               0.0f));
    /* pooling: h w wrapped to 0 used to pass the int32 check of argmax */
    int32_t *am = calloc(1, sizeof *am);
    BAD(fastnn_maxpool2d_forward(h, am, f, 1, big, big, 1, 1, 1, 1, 1));
    BAD(fastnn_maxpool2d_backward(h, f, am, 1, big, big, 1, 1, 1, 1, 1));
    BAD(fastnn_avgpool2d_forward(h, f, big, big, 1, 1, 1, 1, 1, 1));
    BAD(fastnn_avgpool2d_backward(h, f, 1, big, 1, big, 1, 1, 1, 1));
    BAD(fastnn_batchnorm_forward(h, f, g, u, f, g, u, f, big, big, 0.1, 1e-5));
    BAD(fastnn_batchnorm_inference(h, f, g, u, f, g, big, big, 1e-5));
    BAD(fastnn_batchnorm_backward(h, f, g, u, f, g, u, f, big, big));
    /* the epoch's workspace: a batch of 2^61 + 12345 made its size wrap negative */
    const int64_t batch = ((int64_t)1 << 61) + 12345;
    fastnn_dense_layer L1[1] = {{1, 1, 0, -1, FASTNN_ACT_IDENTITY, 0.0f}};
    fastnn_dense_layer L2[2] = {{1, big, 0, -1, 0, 0.0f}, {big, big, 0, -1, 0, 0.0f}};
    for (int th = 1; th <= 2; th++) {
        if (fastnn_dense_stack_workspace(L1, 1, batch, th) != -1) { fails++; printf("workspace of batch 2^61 + 12345\n"); }
        if (fastnn_dense_stack_workspace(L2, 2, big, th) != -1) { fails++; printf("workspace of batch 2^32, out 2^32\n"); }
    }
    double bl;
    int64_t bc;
    fastnn_epoch E = {.params = f, .grads = g, .n_params = 1, .layers = L1, .n_layers = 1,
                      .loss = FASTNN_LOSS_MSE, .X = h, .T = u, .n = 1, .batch = batch,
                      .loss_scale = 1.0, .grad_scale = 1.0, .workspace = h, .workspace_size = 1,
                      .batch_loss = &bl, .batch_correct = &bc};
    E.opt.kind = FASTNN_OPT_SGD; E.opt.lr = 0.1;
    BAD(fastnn_dense_stack_epoch(&E));
    /* X (n, in) with n in past int64: a layer of 2^32 inputs over 2^32 params */
    fastnn_dense_layer W[1] = {{big, 1, 0, -1, FASTNN_ACT_IDENTITY, 0.0f}};
    fastnn_epoch F = E;
    F.layers = W; F.n_params = big; F.n = big; F.batch = 1; F.workspace_size = max;
    BAD(fastnn_dense_stack_epoch(&F));
    /* the step counter would pass int64 */
    F = E; F.batch = 1; F.opt.step = max;
    BAD(fastnn_dense_stack_epoch(&F));
    /* NAdam's next step (step + 1) in double, not int64 */
    OK(fastnn_nadam(f, g, h, u, 1, max, 2e-3, 0.9, 0.999, 1e-8, 0.0, 4e-3, 0.5));
    free(f); free(g); free(h); free(u); free(lab); free(am);
}

/* Recurrent kernels (csrc/rnn.c): every cell on exact-size buffers, with and
   without dX and the bias gradients, and the refused arguments. */
static void rnn_cases(void) {
    const int64_t shapes[][4] = {{1, 1, 1, 1}, {3, 2, 3, 5}, {2, 5, 1, 17}, {7, 3, 4, 2}};
    const int cells[][2] = {{FASTNN_CELL_RNN, FASTNN_ACT_TANH}, {FASTNN_CELL_RNN, FASTNN_ACT_RELU},
                            {FASTNN_CELL_GRU, FASTNN_ACT_TANH}, {FASTNN_CELL_LSTM, FASTNN_ACT_TANH}};
    for (int si = 0; si < 4; si++)
        for (int ci = 0; ci < 4; ci++) {
            const int64_t n = shapes[si][0], L = shapes[si][1], c = shapes[si][2], h = shapes[si][3];
            const int cell = cells[ci][0], act = cells[ci][1];
            const int64_t G = cell == FASTNN_CELL_RNN ? 1 : cell == FASTNN_CELL_GRU ? 3 : 4;
            const int64_t K = cell == FASTNN_CELL_RNN ? 1 : cell == FASTNN_CELL_GRU ? 4 : 5;
            float *X = rnd(n * L * c), *Wi = rnd(c * G * h), *Wh = rnd(h * G * h);
            float *bi = rnd(G * h), *bh = rnd(G * h), *Hs = rnd(n * L * h), *Gc = rnd(n * L * K * h);
            float *dX = rnd(n * L * c), *dWi = rnd(c * G * h), *dWh = rnd(h * G * h);
            float *dbi = rnd(G * h), *dbh = rnd(G * h), *dHs = rnd(n * L * h);
            OK(fastnn_rnn_forward(Hs, Gc, X, Wi, Wh, bi, bh, n, L, c, h, cell, act));
            OK(fastnn_rnn_backward(dX, dWi, dWh, dbi, dbh, dHs, Gc, X, Wi, Wh, Hs, n, L, c, h,
                                   cell, act));
            OK(fastnn_rnn_forward(Hs, Gc, X, Wi, Wh, bi, bh, n, L, c, h, cell, act));
            OK(fastnn_rnn_backward(NULL, dWi, dWh, NULL, NULL, dHs, Gc, X, Wi, Wh, Hs, n, L, c, h,
                                   cell, act));
            BAD(fastnn_rnn_forward(Hs, Gc, X, Wi, Wh, bi, bh, n, L, c, h, 7, act));
            BAD(fastnn_rnn_forward(Hs, Gc, X, Wi, Wh, bi, bh, n, 0, c, h, cell, act));
            BAD(fastnn_rnn_backward(dX, dWi, dWh, dbi, dbh, dHs, Gc, X, Wi, Wh, Hs, n, L, c,
                                    INT64_MAX / 2, cell, act));
            BAD(fastnn_rnn_forward(Hs, Gc, X, Wi, Wh, bi, bh, n, L, c, h, cell, FASTNN_ACT_SIGMOID));
            free(X); free(Wi); free(Wh); free(bi); free(bh); free(Hs); free(Gc);
            free(dX); free(dWi); free(dWh); free(dbi); free(dbh); free(dHs);
        }
}

int main(void) {
    overflow_cases();
    for (int th = 1; th <= 2; th++) {
        fastnn_set_num_threads(th);
        epoch_cases();
        deep_epoch_cases();
        post_epoch_cases();
        dropout_cases();
        plan_cases();
        rnn_cases();
    }
    /* the threaded epochs again with every barrier waiter sent to the
       futex at once (spin 0), then spinning without end, then the default */
    fastnn_set_num_threads(2);
    for (int k = 0; k < 2; k++) {
        fastnn_set_barrier_spin(k == 0 ? 0 : INT64_MAX / 1000);
        epoch_cases();
        deep_epoch_cases();
        post_epoch_cases();
    }
    fastnn_set_barrier_spin(-1);
    /* the plan cases with this thread's kernels serial (MLPSearchCV's
       banks side by side, one thread each), at the 2-thread setting */
    const int serial_before = fastnn_run_serial(1);
    plan_cases();
    fastnn_run_serial(serial_before);
    int best = fastnn_simd_best();
    for (int path = 0; path <= best; path++) {
        if (fastnn_set_simd_path(path) != FASTNN_OK) continue;  /* e.g. AVX2 on a CPU without it */
        for (int th = 1; th <= 2; th++) {
            fastnn_set_num_threads(th);
            gemm_cases();
        }
    }
    for (int path = 0; path <= best; path++) {
        if (fastnn_set_simd_path(path) != FASTNN_OK) continue;
        for (int th = 1; th <= 2; th++) {
            fastnn_set_num_threads(th);
            cnn_cases();
        }
    }
    fastnn_set_simd_path(best);
    return elementwise_and_dense();
}
