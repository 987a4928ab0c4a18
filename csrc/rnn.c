/*
 * rnn.c -- recurrent layers: SimpleRNN, GRU and LSTM over (n, L, c)
 * sequences (fastnn.h: fastnn_rnn_forward / fastnn_rnn_backward; the
 * specification is fastnn/kernels/_reference_rnn.py).
 *
 * Forward: the batch is split over the threads (samples are independent
 * through the recurrence: each thread runs every step on its own block of
 * rows, one barrier per call).  The input projection of every step is one
 * GEMM, X (n L, c) W_ih written straight into the gate cache G (rows L K h
 * apart per sample) -- or, for inputs up to FUSE_C wide, c multiply-adds
 * per element on the step's rows just before they are used; then per step
 * one GEMM h_{t-1} W_hh into a contiguous per-thread scratch (GRU's cache
 * is [r, z, hn, n]: h W_hh covers r, z and the n gate's hidden part hn,
 * kept apart from x W_in) and the epilogue adds it and both biases and
 * applies the gate nonlinearities, leaving the activations in G for the
 * backward.  Backward through time, split the same way: per step the gate
 * gradients overwrite the step's slice of G and one GEMM pushes dh to the
 * previous step (into dHs, beta = 1); after the loop dW_hh is one GEMM over
 * all steps (plus a correction for the pairs that straddle two samples),
 * the bias gradients (and dW_ih for narrow inputs) one pass over G, dW_ih =
 * X^T dG and dX = dG W_ih^T one GEMM each.  The GEMMs are gemm.c's
 * (threaded outside the split, serial inside it).  Nothing is allocated
 * (the scratch is a static thread-local array).
 *
 * Checks: sizes >= 1, the cell and activation, and every element count
 * (n L K h, ...) overflow-checked in int64; buffers are the caller's (the
 * front checks their shapes, plan.c the records' regions).
 */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "fastnn.h"
#include "internal.h"
#include "rnn.h"

#define FIELD(r, f) ((r)[FASTNN_F_##f])

/* exp(x) for x <= 0 (NaN stays NaN), vectorisable: Cephes' expf (range
   reduction by ln 2 in two parts, degree-5 polynomial, 2^n from its bits),
   ~1 ulp; below -87.3 it returns exp(-87.3) ~ 1.2e-38 (a normal float)
   instead of a denormal or 0 -- invisible after the 1 + e of the gates.
   glibc's scalar expf/tanhf took ~80% of a GRU step's time. */
static inline __attribute__((always_inline)) float exp_neg(float x)
{
    const float xc = x > -87.3f ? x : -87.3f;  /* (NaN -> -87.3, restored below) */
    const float n = floorf(xc * 1.44269504088896341f + 0.5f);
    const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x == x ? p * scale : x;
}

/* sigmoid and tanh from exp_neg: exp of a non-positive number only, so
   stable both ways; NaN propagates. */
static inline __attribute__((always_inline)) float sigm(float x)
{
    const float e = exp_neg(-fabsf(x)), s = 1.0f / (1.0f + e);
    return x >= 0.0f ? s : e * s;
}

/* tanh: (1 - e) / (1 + e), e = exp(-2|x|), loses the relative accuracy of
   1 - e for small |x| (tanh(1e-4) ~2,500 ulp off): below 0.625 an odd
   polynomial (Cephes tanhf's minimax coefficients) instead, both computed
   and one selected so that the loop stays vectorised.  Within 2 ulp of
   tanh in float64 (tests/test_recurrent.py); NaN propagates, +-inf -> +-1. */
static inline __attribute__((always_inline)) float tanh_f(float x)
{
    const float a = fabsf(x), e = exp_neg(-2.0f * a);
    const float big = (1.0f - e) / (1.0f + e);
    const float s = x * x;
    float p = -5.70498872745e-3f;
    p = p * s + 2.06390887954e-2f;
    p = p * s - 5.37397155531e-2f;
    p = p * s + 1.33314422036e-1f;
    p = p * s - 3.33332819422e-1f;
    const float small = p * s * x + x;
    return a < 0.625f ? small : copysignf(big, x);
}

/* gates G and cache width K (in units of h) of a cell; 0 if invalid. */
static int cell_dims(int cell, int act, int64_t *G, int64_t *K)
{
    switch (cell) {
    case FASTNN_CELL_RNN:
        *G = 1; *K = 1;
        return act == FASTNN_ACT_TANH || act == FASTNN_ACT_RELU;
    case FASTNN_CELL_GRU:
        *G = 3; *K = 4;
        return act == FASTNN_ACT_TANH;
    case FASTNN_CELL_LSTM:
        *G = 4; *K = 5;
        return act == FASTNN_ACT_TANH;
    default:
        return 0;
    }
}

/* Sizes valid and every array's element count within int64. */
static int dims_valid(int64_t n, int64_t L, int64_t c, int64_t h, int cell, int act,
                      int64_t *G, int64_t *K)
{
    int64_t s;
    return n >= 1 && L >= 1 && c >= 1 && h >= 1 && cell_dims(cell, act, G, K)
           && fastnn_product(&s, n, L, *K, h) && fastnn_product(&s, n, L, *G, h)
           && fastnn_product(&s, n, L, c) && fastnn_product(&s, c, *G, h)
           && fastnn_product(&s, h, *G, h);
}

/* Threads for a pass over `work` elements: below 256k one (a parallel
   region's barrier costs a time slice on a busy machine when a thread is
   descheduled: per-step regions once took a GRU epoch from 0.4 s to 5.6 s). */
static int threads_for(int64_t work)
{
    const int t = fastnn_get_num_threads();
    return work < (1 << 18) ? 1 : t;
}

/* One sample's epilogue of step t (first: t == 0): g its cache slice
   holding x W_ih, sh the step's h W_hh (GRU: r, z and hn parts) from the
   scratch, or NULL (t = 0, or a layer too wide for the scratch: then g
   holds x W_ih + h W_hh already), ho its new state, hp the previous (NULL
   at t = 0).  Compiled for AVX-512, AVX2 and the baseline. */
FASTNN_CLONES
static void forward_row(int cell, int act, int64_t h, int64_t KH, int first, float *g,
            const float *sh, float *ho, const float *hp, const float *b_ih,
            const float *b_hh)
{
#define HW(j) (sh ? sh[j] : 0.0f)
    if (cell == FASTNN_CELL_RNN) {
#pragma omp simd
        for (int64_t j = 0; j < h; j++) {
            const float p = g[j] + HW(j) + b_ih[j] + b_hh[j];
            g[j] = p;
            ho[j] = act == FASTNN_ACT_TANH ? tanh_f(p) : (p < 0.0f ? 0.0f : p);
        }
    } else if (cell == FASTNN_CELL_GRU) {
#pragma omp simd
        for (int64_t j = 0; j < h; j++) {
            const float r = sigm(g[j] + HW(j) + b_ih[j] + b_hh[j]);
            const float z = sigm(g[h + j] + HW(h + j) + b_ih[h + j] + b_hh[h + j]);
            const float hn = (sh ? sh[2 * h + j] : g[2 * h + j]) + b_hh[2 * h + j];
            const float nn = tanh_f(g[3 * h + j] + b_ih[2 * h + j] + r * hn);
            const float hv = hp ? hp[j] : 0.0f;
            ho[j] = (1.0f - z) * nn + z * hv;
            g[j] = r;
            g[h + j] = z;
            g[2 * h + j] = hn;
            g[3 * h + j] = nn;
        }
    } else {
        const float *cprev = first ? NULL : g - KH + 4 * h;
#pragma omp simd
        for (int64_t j = 0; j < h; j++) {
            const float ig = sigm(g[j] + HW(j) + b_ih[j] + b_hh[j]);
            const float fg = sigm(g[h + j] + HW(h + j) + b_ih[h + j] + b_hh[h + j]);
            const float gg = tanh_f(g[2 * h + j] + HW(2 * h + j) + b_ih[2 * h + j]
                                    + b_hh[2 * h + j]);
            const float og = sigm(g[3 * h + j] + HW(3 * h + j) + b_ih[3 * h + j]
                                  + b_hh[3 * h + j]);
            const float cv = fg * (cprev ? cprev[j] : 0.0f) + ig * gg;
            ho[j] = og * tanh_f(cv);
            g[j] = ig;
            g[h + j] = fg;
            g[2 * h + j] = gg;
            g[3 * h + j] = og;
            g[4 * h + j] = cv;
        }
    }
#undef HW
}

/* Inputs at most this wide are projected step by step inside the
   recurrence (c multiply-adds per gate element on the rows about to be
   used) instead of by one GEMM over all steps: a GEMM with k = c that small
   is bound by writing the whole cache (N L K h floats, megabytes, out of
   cache) and reading it back at every step -- 3 ms of a GRU(1 -> 128)
   batch's 26. */
#define FUSE_C 8

/* x W_ih of one sample and step (x its c inputs) into its cache slice g
   (GRU: r and z parts into slots 0-1, the n part into slot 3, slot 2
   zeroed for the hidden GEMM to accumulate onto). */
FASTNN_CLONES
static void project_row(int cell, int64_t c, int64_t h, int64_t GH, float *g, const float *x,
                        const float *W_ih)
{
    const int64_t w = cell == FASTNN_CELL_GRU ? 2 * h : GH;
    const float x0 = x[0];
#pragma omp simd
    for (int64_t j = 0; j < w; j++)
        g[j] = x0 * W_ih[j];
    for (int64_t k = 1; k < c; k++) {
        const float xk = x[k];
        const float *wk = W_ih + k * GH;
#pragma omp simd
        for (int64_t j = 0; j < w; j++)
            g[j] += xk * wk[j];
    }
    if (cell != FASTNN_CELL_GRU)
        return;
    float *gn = g + 3 * h;
#pragma omp simd
    for (int64_t j = 0; j < h; j++) {
        g[2 * h + j] = 0.0f;
        gn[j] = x0 * W_ih[2 * h + j];
    }
    for (int64_t k = 1; k < c; k++) {
        const float xk = x[k];
        const float *wk = W_ih + k * GH + 2 * h;
#pragma omp simd
        for (int64_t j = 0; j < h; j++)
            gn[j] += xk * wk[j];
    }
}

/* The recurrence splits the batch: samples are independent until the
   weight gradients' sums, so each thread runs every step on its own block
   of samples -- no barrier per step (a per-step parallel region cost a time
   slice per barrier on a busy machine) and no product too small to split.
   Blocks are cut at multiples of 8 rows (the micro-kernel's tile height);
   every row's arithmetic is the same whatever the blocks, so the results do
   not depend on the thread count. */
static int sample_blocks(int64_t n)
{
    const int64_t tiles = (n + 7) / 8;
    const int t = fastnn_get_num_threads();
    return tiles < t ? (int)tiles : t;
}

static void block_rows(int64_t n, int nb, int b, int64_t *lo, int64_t *hi)
{
    const int64_t tiles = (n + 7) / 8, per = tiles / nb, extra = tiles % nb;
    const int64_t t0 = b * per + (b < extra ? b : extra);
    const int64_t t1 = t0 + per + (b < extra ? 1 : 0);
    *lo = t0 * 8 < n ? t0 * 8 : n;
    *hi = t1 * 8 < n ? t1 * 8 : n;
}

/* Each step's h W_hh goes to a contiguous per-thread scratch (rows of G H
   floats) rather than onto the cache: the cache's rows are L K h floats
   apart (80 KB for the GRU(1 -> 128) of length 40, a multiple of 4 KB, so
   every row of a tile falls into the same L1 set), and the products'
   tiles written there ran at ~60 GFLOP/s against ~100 into contiguous
   rows.  Samples go through in chunks of as many rows as fit. */
#define SCRATCH_FLOATS (64 * 1024)
static _Thread_local float tls_scratch[SCRATCH_FLOATS];

/* Steps 0..L-1 of the samples [i0, i1). */
static int forward_block(int cell, int act, int64_t i0, int64_t i1, int64_t L, int64_t c,
                         int64_t h, int64_t GH, int64_t KH, int fuse, float *Hs, float *Gc,
                         const float *X, const float *W_ih, const float *W_hh,
                         const float *b_ih, const float *b_hh)
{
    const int64_t ldg = L * KH, ldh = L * h;
    const int64_t fit = SCRATCH_FLOATS / GH;
    const int64_t chunk = fit >= 8 ? fit / 8 * 8 : fit;  /* 0: no scratch */
    float *S = chunk ? tls_scratch : NULL;
    for (int64_t r0 = i0; r0 < i1; r0 += chunk ? chunk : i1 - i0) {
        const int64_t m = chunk && i1 - r0 > chunk ? chunk : i1 - r0;
        for (int64_t t = 0; t < L; t++) {
            float *gt = Gc + r0 * ldg + t * KH;
            if (fuse)
                for (int64_t i = 0; i < m; i++)
                    project_row(cell, c, h, GH, gt + i * ldg, X + ((r0 + i) * L + t) * c, W_ih);
            if (t > 0) {
                const float *hprev = Hs + r0 * ldh + (t - 1) * h;
                const int rc = S ? fastnn_gemm(0, 0, m, GH, h, 1.0f, hprev, ldh, W_hh, GH, 0.0f,
                                               S, GH)
                                 : fastnn_gemm(0, 0, m, GH, h, 1.0f, hprev, ldh, W_hh, GH, 1.0f,
                                               gt, ldg);
                if (rc)
                    return rc;
            }
            for (int64_t i = 0; i < m; i++) {
                float *ho = Hs + (r0 + i) * ldh + t * h;
                forward_row(cell, act, h, KH, t == 0, gt + i * ldg,
                            S && t > 0 ? S + i * GH : NULL, ho, t == 0 ? NULL : ho - h, b_ih,
                            b_hh);
            }
        }
    }
    return FASTNN_OK;
}

int fastnn_rnn_forward(float *Hs, float *Gc, const float *X, const float *W_ih,
                       const float *W_hh, const float *b_ih, const float *b_hh, int64_t n,
                       int64_t L, int64_t c, int64_t h, int cell, int act)
{
    int64_t G, K;
    if (!Hs || !Gc || !X || !W_ih || !W_hh || !b_ih || !b_hh
        || !dims_valid(n, L, c, h, cell, act, &G, &K))
        return FASTNN_EINVAL;
    const int64_t GH = G * h, KH = K * h;
    const int fuse = c <= FUSE_C;
    int rc = FASTNN_OK;
    if (fuse) {
        /* projected step by step (project_row) */
    } else if (cell == FASTNN_CELL_GRU) {
        /* cache [r, z, hn, n]: x W_ir, x W_iz to slots 0-1, x W_in to slot 3,
           slot 2 zero (each step's one hidden GEMM adds h W_hh onto 0-2) */
        if ((rc = fastnn_gemm(0, 0, n * L, 2 * h, c, 1.0f, X, c, W_ih, GH, 0.0f, Gc, KH))
            || (rc = fastnn_gemm(0, 0, n * L, h, c, 1.0f, X, c, W_ih + 2 * h, GH, 0.0f,
                                 Gc + 3 * h, KH)))
            return rc;
        for (int64_t row = 0; row < n * L; row++)
            memset(Gc + row * KH + 2 * h, 0, (size_t)h * sizeof(float));
    } else if ((rc = fastnn_gemm(0, 0, n * L, GH, c, 1.0f, X, c, W_ih, GH, 0.0f, Gc, KH))) {
        return rc;
    }
    const int nb = sample_blocks(n);
#pragma omp parallel num_threads(nb) if (nb > 1)
    {
        int64_t lo, hi;
        block_rows(n, omp_get_num_threads(), omp_get_thread_num(), &lo, &hi);
        const int e = lo < hi ? forward_block(cell, act, lo, hi, L, c, h, GH, KH, fuse, Hs, Gc,
                                              X, W_ih, W_hh, b_ih, b_hh)
                              : FASTNN_OK;
        if (e) {
#pragma omp atomic write
            rc = e;
        }
    }
    if (nb > 1)
        fastnn_team_rest();
    return rc;
}

/* One pass over columns [col0, col0 + cols) of the gate gradients M (rows
   ld apart), in double: db1[j] = db2[j] = sum over rows of M[row, col0 + j]
   (either NULL), and with dW (c <= FUSE_C) dW[k ldw + j] = sum over rows of
   X[row, k] M[row, col0 + j] -- the input weights' gradient, X^T M.  Row by
   row over blocks of columns (the rows are ld apart: a column at a time
   would miss the cache on every element), a block per thread: the sums'
   order is fixed, whatever the thread count.  One pass instead of one per
   sum (GRU: five passes over the megabytes of cache before). */
#define SUM_BLOCK 128
FASTNN_CLONES
static void sum_block(double *acc, const float *M, int64_t rows, int64_t ld, int64_t w,
                      const float *X, int64_t c)
{
    for (int64_t i = 0; i < rows; i++) {
        const float *row = M + i * ld;
#pragma omp simd
        for (int64_t j = 0; j < w; j++)
            acc[j] += row[j];
        if (X)
            for (int64_t k = 0; k < c; k++) {
                const double xk = X[i * c + k];
                double *ak = acc + (k + 1) * SUM_BLOCK;
#pragma omp simd
                for (int64_t j = 0; j < w; j++)
                    ak[j] += xk * row[j];
            }
    }
}

static void column_pass(float *db1, float *db2, float *dW, int64_t ldw, const float *X,
                        int64_t c, const float *M, int64_t rows, int64_t ld, int64_t col0,
                        int64_t cols)
{
    const int64_t blocks = (cols + SUM_BLOCK - 1) / SUM_BLOCK;
    const int64_t sums = dW ? c + 1 : 1;
    const int threads = threads_for(rows * cols * sums);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t q = 0; q < blocks; q++) {
        double acc[(FUSE_C + 1) * SUM_BLOCK];
        const int64_t j0 = q * SUM_BLOCK;
        const int64_t w = cols - j0 < SUM_BLOCK ? cols - j0 : SUM_BLOCK;
        for (int64_t k = 0; k < sums; k++)
            for (int64_t j = 0; j < w; j++)
                acc[k * SUM_BLOCK + j] = 0.0;
        sum_block(acc, M + col0 + j0, rows, ld, w, dW ? X : NULL, c);
        for (int64_t j = 0; j < w; j++) {
            if (db1)
                db1[j0 + j] = (float)acc[j];
            if (db2)
                db2[j0 + j] = (float)acc[j];
        }
        if (dW)
            for (int64_t k = 0; k < c; k++)
                for (int64_t j = 0; j < w; j++)
                    dW[k * ldw + j0 + j] = (float)acc[(k + 1) * SUM_BLOCK + j];
    }
    if (threads > 1)
        fastnn_team_rest();
}

/* One sample's gate gradients at step t over its cache slice g (dh its
   state's gradient, dhp the previous one's or NULL, hc / hp the states). */
FASTNN_CLONES
static void backward_row(int cell, int act, int64_t h, int64_t KH, int first, int last,
             float *g, const float *dh, float *dhp, const float *hc,
             const float *hp)
{
    if (cell == FASTNN_CELL_RNN) {
        for (int64_t j = 0; j < h; j++)
            g[j] = act == FASTNN_ACT_TANH ? dh[j] * (1.0f - hc[j] * hc[j])
                                          : (hc[j] > 0.0f ? dh[j] : 0.0f * dh[j]);
    } else if (cell == FASTNN_CELL_GRU) {
#pragma omp simd
        for (int64_t j = 0; j < h; j++) {
            const float r = g[j], z = g[h + j], hn = g[2 * h + j], nn = g[3 * h + j];
            const float hv = hp ? hp[j] : 0.0f, d = dh[j];
            const float dnp = d * (1.0f - z) * (1.0f - nn * nn);
            const float dzp = d * (hv - nn) * z * (1.0f - z);
            const float drp = dnp * hn * r * (1.0f - r);
            g[j] = drp;
            g[h + j] = dzp;
            g[2 * h + j] = dnp * r;  /* the hidden gates' gradients: slots 0-2 */
            g[3 * h + j] = dnp;
            if (dhp)
                dhp[j] += d * z;
        }
    } else {
        const float *cprev = first ? NULL : g - KH + 4 * h;
        const float *carry = last ? NULL : g + KH + 4 * h;
#pragma omp simd
        for (int64_t j = 0; j < h; j++) {
            const float ig = g[j], fg = g[h + j], gg = g[2 * h + j], og = g[3 * h + j];
            const float tc = tanh_f(g[4 * h + j]), d = dh[j];
            const float dc = d * og * (1.0f - tc * tc) + (carry ? carry[j] : 0.0f);
            const float cp = cprev ? cprev[j] : 0.0f;
            g[j] = dc * gg * ig * (1.0f - ig);
            g[h + j] = dc * cp * fg * (1.0f - fg);
            g[2 * h + j] = dc * ig * (1.0f - gg * gg);
            g[3 * h + j] = d * tc * og * (1.0f - og);
            g[4 * h + j] = dc * fg;  /* c_t is no longer needed: the carry */
        }
    }
}

/* Backpropagation through time of the samples [i0, i1): the gate
   gradients over the cache, dh pushed back a step per step. */
static int backward_block(int cell, int act, int64_t i0, int64_t i1, int64_t L, int64_t h,
                          int64_t GH, int64_t KH, float *dHs, float *Gc, const float *W_hh,
                          const float *Hs)
{
    const int64_t ldg = L * KH, ldh = L * h, m = i1 - i0;
    for (int64_t t = L - 1; t >= 0; t--) {
        float *gt = Gc + i0 * ldg + t * KH;
        const int first = t == 0, last = t == L - 1;
        for (int64_t i = 0; i < m; i++) {
            float *dh = dHs + (i0 + i) * ldh + t * h;
            const float *hc = Hs + (i0 + i) * ldh + t * h;
            backward_row(cell, act, h, KH, first, last, gt + i * ldg, dh, first ? NULL : dh - h,
                         hc, first ? NULL : hc - h);
        }
        if (first)
            break;
        const int rc = fastnn_gemm(0, 1, m, h, GH, 1.0f, gt, ldg, W_hh, GH, 1.0f,
                                   dHs + i0 * ldh + (t - 1) * h, ldh);
        if (rc)
            return rc;
    }
    return FASTNN_OK;
}

int fastnn_rnn_backward(float *dX, float *dW_ih, float *dW_hh, float *db_ih, float *db_hh,
                        float *dHs, float *Gc, const float *X, const float *W_ih,
                        const float *W_hh, const float *Hs, int64_t n, int64_t L, int64_t c,
                        int64_t h, int cell, int act)
{
    int64_t G, K;
    if (!dW_ih || !dW_hh || !dHs || !Gc || !X || !W_ih || !W_hh || !Hs
        || !dims_valid(n, L, c, h, cell, act, &G, &K))
        return FASTNN_EINVAL;
    const int64_t GH = G * h, KH = K * h, ldg = L * KH, ldh = L * h;
    int rc = FASTNN_OK;
    if (L == 1)
        memset(dW_hh, 0, (size_t)(h * GH) * sizeof(float));
    const int nb = sample_blocks(n);
#pragma omp parallel num_threads(nb) if (nb > 1)
    {
        int64_t lo, hi;
        block_rows(n, omp_get_num_threads(), omp_get_thread_num(), &lo, &hi);
        const int e = lo < hi ? backward_block(cell, act, lo, hi, L, h, GH, KH, dHs, Gc, W_hh,
                                               Hs)
                              : FASTNN_OK;
        if (e) {
#pragma omp atomic write
            rc = e;
        }
    }
    if (nb > 1)
        fastnn_team_rest();
    if (rc)
        return rc;
    /* dW_hh = sum over steps t >= 1 of h_{t-1}^T dGh_t, as two products over
       all rows at once: row r of Hs (n L, h) against row r + 1 of the hidden
       gate gradients, then minus the pairs that straddle two samples (the
       last step of sample i - 1 against the first of sample i). */
    if (L > 1) {
        if ((rc = fastnn_gemm(1, 0, h, GH, n * L - 1, 1.0f, Hs, h, Gc + KH, KH, 0.0f, dW_hh,
                              GH)))
            return rc;
        if (n > 1 && (rc = fastnn_gemm(1, 0, h, GH, n - 1, -1.0f, Hs + (L - 1) * h, ldh,
                                       Gc + ldg, ldg, 1.0f, dW_hh, GH)))
            return rc;
    }
    /* the bias gradients (db_ih == db_hh but for the GRU's n gate) and, for a
       narrow input, dW_ih in one pass; else dW_ih = X^T dG by GEMM.  The
       input gates' gradients are slots [0, G) of the cache (GRU: dr, dz in
       0-1, dn in 3), the hidden ones [0, G) (GRU: dr, dz, dr * hn in 0-2). */
    const int fuse = c <= FUSE_C;
    const int64_t gi = cell == FASTNN_CELL_GRU ? 2 * h : GH;  /* columns shared */
    column_pass(db_ih, db_hh, fuse ? dW_ih : NULL, GH, X, c, Gc, n * L, KH, 0, gi);
    if (cell == FASTNN_CELL_GRU) {
        if (db_hh)
            column_pass(NULL, db_hh + 2 * h, NULL, GH, X, c, Gc, n * L, KH, 2 * h, h);
        column_pass(db_ih ? db_ih + 2 * h : NULL, NULL, fuse ? dW_ih + 2 * h : NULL, GH, X, c,
                    Gc, n * L, KH, 3 * h, h);
    }
    if (!fuse) {
        if ((rc = fastnn_gemm(1, 0, c, gi, n * L, 1.0f, X, c, Gc, KH, 0.0f, dW_ih, GH)))
            return rc;
        if (cell == FASTNN_CELL_GRU
            && (rc = fastnn_gemm(1, 0, c, h, n * L, 1.0f, X, c, Gc + 3 * h, KH, 0.0f,
                                 dW_ih + 2 * h, GH)))
            return rc;
    }
    if (dX && !(rc = fastnn_gemm(0, 1, n * L, c, gi, 1.0f, Gc, KH, W_ih, GH, 0.0f, dX, c))
        && cell == FASTNN_CELL_GRU)
        rc = fastnn_gemm(0, 1, n * L, c, h, 1.0f, Gc + 3 * h, KH, W_ih + 2 * h, GH, 1.0f, dX, c);
    return rc;
}

/* ---- the plan record -------------------------------------------------------- */

static int inside(int64_t off, int64_t size, int64_t cap)
{
    return off >= 0 && size >= 0 && cap >= 0 && off <= cap - size;
}

int fastnn_rnn_record_valid(const fastnn_model_epoch *a, const int64_t *r, int64_t B)
{
    const int64_t L = FIELD(r, W), c = FIELD(r, C), h = FIELD(r, OC);
    const int64_t ws = a->workspace_size, np = a->n_params;
    const int seq = FIELD(r, AUX) == FIELD(r, Y);
    int64_t G, K, s_ih, s_hh, gh, states, cache;
    if (FIELD(r, CELL) < FASTNN_CELL_RNN || FIELD(r, CELL) > FASTNN_CELL_LSTM
        || FIELD(r, ACT) < FASTNN_ACT_IDENTITY || FIELD(r, ACT) > FASTNN_ACT_SOFTPLUS)
        return 0;
    if (FIELD(r, H) != 1 || FIELD(r, OH) != 1 || !dims_valid(B, L, c, h, (int)FIELD(r, CELL),
                                                             (int)FIELD(r, ACT), &G, &K))
        return 0;
    if (seq ? (FIELD(r, OW) != L || FIELD(r, DAUX) != FIELD(r, DY)) : FIELD(r, OW) != 1)
        return 0;
    return fastnn_product(&s_ih, c, G, h) && fastnn_product(&s_hh, h, G, h)
           && fastnn_product(&gh, G, h) && fastnn_product(&states, B, L, h)
           && fastnn_product(&cache, B, L, K, h)
           && inside(FIELD(r, PARAM), s_ih, np) && inside(FIELD(r, PARAM_HH), s_hh, np)
           && inside(FIELD(r, BIAS), gh, np) && inside(FIELD(r, BIAS_HH), gh, np)
           && inside(FIELD(r, AUX), states, ws) && inside(FIELD(r, DAUX), states, ws)
           && inside(FIELD(r, CACHE), cache, ws);
}

int fastnn_rnn_record_forward(fastnn_model_epoch *a, const int64_t *r, const float *x,
                              int64_t m)
{
    const int64_t L = FIELD(r, W), c = FIELD(r, C), h = FIELD(r, OC);
    float *ws = a->workspace, *P = a->params, *Hs = ws + FIELD(r, AUX);
    int rc = fastnn_rnn_forward(Hs, ws + FIELD(r, CACHE), x, P + FIELD(r, PARAM),
                                P + FIELD(r, PARAM_HH), P + FIELD(r, BIAS),
                                P + FIELD(r, BIAS_HH), m, L, c, h, (int)FIELD(r, CELL),
                                (int)FIELD(r, ACT));
    if (rc || FIELD(r, AUX) == FIELD(r, Y))
        return rc;
    float *y = ws + FIELD(r, Y);
    for (int64_t i = 0; i < m; i++)
        memmove(y + i * h, Hs + (i * L + L - 1) * h, (size_t)h * sizeof(float));
    return FASTNN_OK;
}

int fastnn_rnn_record_backward(fastnn_model_epoch *a, const int64_t *r, const float *x,
                               int64_t m)
{
    const int64_t L = FIELD(r, W), c = FIELD(r, C), h = FIELD(r, OC);
    float *ws = a->workspace, *P = a->params, *Gr = a->grads, *dHs = ws + FIELD(r, DAUX);
    if (FIELD(r, DAUX) != FIELD(r, DY)) {
        const float *dy = ws + FIELD(r, DY);
        memset(dHs, 0, (size_t)(m * L * h) * sizeof(float));
        for (int64_t i = 0; i < m; i++)
            memmove(dHs + (i * L + L - 1) * h, dy + i * h, (size_t)h * sizeof(float));
    }
    return fastnn_rnn_backward(FIELD(r, DX) == -1 ? NULL : ws + FIELD(r, DX),
                               Gr + FIELD(r, PARAM), Gr + FIELD(r, PARAM_HH),
                               Gr + FIELD(r, BIAS), Gr + FIELD(r, BIAS_HH), dHs,
                               ws + FIELD(r, CACHE), x, P + FIELD(r, PARAM),
                               P + FIELD(r, PARAM_HH), ws + FIELD(r, AUX), m, L, c, h,
                               (int)FIELD(r, CELL), (int)FIELD(r, ACT));
}
