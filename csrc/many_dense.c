/*
 * many_dense.c -- one dense stack's epoch on one thread, for the models of
 * fastnn_model_epochs_run (plan_many.c): the products of a small batch
 * without packing.
 *
 * fastnn_model_epochs_run trains its models one per thread, each epoch on
 * that thread alone.  For a small model at a small batch (the digits'
 * 64-256-128-10 at batch 32) the gemm's packing is a large part of each
 * product: dW = X^T dZ (k = the batch's 32 rows) packs X^T and dZ for 32
 * multiply-adds per packed float, a 10-wide output layer runs one 32-wide
 * tile a quarter full through a scratch tile.  Here the micro-kernel reads
 * op(A) and B where they are (strided broadcasts of A, masked rows of B):
 *
 *     C[i, j] = sum_p a(i, p) B[p, j],  a(i, p) = A[i * rs + p * ps]
 *
 * in 8 x 32 tiles (16 zmm accumulators) or 8 x 16 for narrow outputs, the
 * k loop in order from zero -- the sum the gemm's micro-kernel forms over
 * one k block -- then + bias and the activation as its epilogue.  So while
 * k <= FASTNN_GEMM_KC (one k block of the gemm) every value is the gemm's,
 * bit for bit, and the epoch equals fastnn_dense_stack_epoch's on one
 * thread (its chunked = 0 case: an epoch too small for two threads; larger
 * epochs are not taken here).  dX = dZ W^T, longer k and everything else
 * call the library's kernels as train.c does.
 *
 * Taken when: the AVX-512 path is in use (fastnn_simd_path), the plan is a dense stack (as plan.c's
 * as_dense_stack), no GRADS hook, labels or no shuffled order, and no
 * input wider than 4 k blocks in a chunked epoch.  Otherwise
 * fastnn_model_epoch_run.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "fastnn.h"
#include "gemm_kernels.h"
#include "internal.h"

#define MAX_LAYERS 256
#define LOSS_PIECES 64  /* as train.c: the loss of a batch over fixed pieces */

int fastnn_many_dense_epoch(fastnn_model_epoch *a, int *taken);

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_TILES 1

/* One tile of C: rows [0, mr) (mr <= 8), columns by the masks k0 (0..15)
   and k1 (16..31; 0 with `narrow`), C = act(sum + bias) or C = sum. */
__attribute__((target("avx512f,fma"))) static inline __attribute__((always_inline)) void
tile_body(int64_t kc, const float *a, int64_t rs, int64_t ps, int mr, const float *b,
          int64_t ldb, __mmask16 k0, __mmask16 k1, int narrow, float *c, int64_t ldc,
          const float *bias, int act)
{
    const float *ar[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)  /* rows past mr repeat row 0 (not stored) */
        ar[i] = a + (i < mr ? i : 0) * rs;
    /* (every loop over the 8 rows unrolled: the accumulators stay in
       registers; a loop to a run-time mr put them on the stack) */
    __m512 acc[8][2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        acc[i][0] = _mm512_setzero_ps();
        acc[i][1] = _mm512_setzero_ps();
    }
    if (narrow) {
        for (int64_t p = 0; p < kc; p++) {
            const __m512 b0 = _mm512_maskz_loadu_ps(k0, b + p * ldb);
            const int64_t o = p * ps;
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++)
                acc[i][0] = _mm512_fmadd_ps(_mm512_set1_ps(ar[i][o]), b0, acc[i][0]);
        }
    } else {
        for (int64_t p = 0; p < kc; p++) {
            const __m512 b0 = _mm512_maskz_loadu_ps(k0, b + p * ldb);
            const __m512 b1 = _mm512_maskz_loadu_ps(k1, b + p * ldb + 16);
            const int64_t o = p * ps;
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                const __m512 ai = _mm512_set1_ps(ar[i][o]);
                acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
            }
        }
    }
    const __m512 zero = _mm512_setzero_ps();
    __m512 bias0 = zero, bias1 = zero;
    if (bias) {
        bias0 = _mm512_maskz_loadu_ps(k0, bias);
        bias1 = _mm512_maskz_loadu_ps(k1, bias + 16);
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        if (i >= mr)
            break;
        __m512 v0 = acc[i][0], v1 = acc[i][1];
        if (act >= 0) {  /* the gemm's epilogue: + bias (zeros without), relu */
            v0 = _mm512_add_ps(v0, bias0);
            v1 = _mm512_add_ps(v1, bias1);
            if (act == FASTNN_ACT_RELU) {
                v0 = _mm512_max_ps(zero, v0);
                v1 = _mm512_max_ps(zero, v1);
            }
        }
        _mm512_mask_storeu_ps(c + i * ldc, k0, v0);
        if (!narrow)
            _mm512_mask_storeu_ps(c + i * ldc + 16, k1, v1);
    }
}

__attribute__((target("avx512f,fma"))) static void
tile_wide(int64_t kc, const float *a, int64_t rs, int64_t ps, int mr, const float *b,
          int64_t ldb, __mmask16 k0, __mmask16 k1, float *c, int64_t ldc, const float *bias,
          int act)
{
    tile_body(kc, a, rs, ps, mr, b, ldb, k0, k1, 0, c, ldc, bias, act);
}

__attribute__((target("avx512f,fma"))) static void
tile_narrow(int64_t kc, const float *a, int64_t rs, int64_t ps, int mr, const float *b,
            int64_t ldb, __mmask16 k0, float *c, int64_t ldc, const float *bias, int act)
{
    tile_body(kc, a, rs, ps, mr, b, ldb, k0, 0, 1, c, ldc, bias, act);
}

static __mmask16 mask_of(int64_t w)
{
    return w >= 16 ? (__mmask16)0xFFFF : w <= 0 ? (__mmask16)0 : (__mmask16)((1u << w) - 1u);
}

/* C (m, n; rows ldc apart) = op(A) B with op(A)(i, p) = A[i * rs + p *
   ps], B (k, n) rows ldb apart; with act >= 0 then C = act(C + bias)
   (bias may be NULL: zeros), act being identity or relu -- the gemm's
   fused epilogues; -1: no epilogue.  A column block of B (k x 32) is
   read by every row tile before the next block. */
static void small_product(int64_t m, int64_t n, int64_t k, const float *A, int64_t rs,
                          int64_t ps, const float *B, int64_t ldb, float *C, int64_t ldc,
                          const float *bias, int act)
{
    const int narrow = n <= 16;
    const int64_t step = narrow ? 16 : 32;
    for (int64_t j = 0; j < n; j += step) {
        const int64_t w = n - j < step ? n - j : step;
        const __mmask16 k0 = mask_of(w), k1 = mask_of(w - 16);
        for (int64_t i = 0; i < m; i += 8) {
            const int mr = (int)(m - i < 8 ? m - i : 8);
            if (narrow)
                tile_narrow(k, A + i * rs, rs, ps, mr, B + j, ldb, k0, C + i * ldc + j, ldc,
                            bias ? bias + j : NULL, act);
            else
                tile_wide(k, A + i * rs, rs, ps, mr, B + j, ldb, k0, k1, C + i * ldc + j, ldc,
                          bias ? bias + j : NULL, act);
        }
    }
}
#endif

/* ---- the epoch ------------------------------------------------------------------ */

struct stack {
    fastnn_dense_layer L[MAX_LAYERS];
    int n;
    int64_t row_off[MAX_LAYERS];  /* layer l's rows in Y/D start at batch * row_off[l] */
    int64_t outs;
};

/* The plan as a dense stack (plan.c's as_dense_stack: DENSE records
   chained, the output the last one's, no clipping or frozen ranges, l2
   exactly over the weights in order, parameter ranges disjoint and inside
   params), activations the fused epilogue knows (identity, relu) or any
   other applied after. */
static int read_stack(const fastnn_model_epoch *a, struct stack *s)
{
    const int64_t nr = a->n_records;
    if (nr < 1 || nr > MAX_LAYERS || !a->plan || !a->plan_scalars || a->clip_value > 0.0
        || a->clip_norm > 0.0 || a->trainable || (a->l2 != 0.0 && a->n_penalized != nr)
        || (a->n_penalized > 0 && !a->penalized))
        return 0;
    int64_t r2[2 * MAX_LAYERS][2];
    int n_ranges = 0;
    s->outs = 0;
    for (int64_t l = 0; l < nr; l++) {
        const int64_t *r = a->plan + l * FASTNN_PLAN_FIELDS, *prev = r - FASTNN_PLAN_FIELDS;
        if (r[FASTNN_F_OP] != FASTNN_OP_DENSE || r[FASTNN_F_H] < 1 || r[FASTNN_F_W] < 1
            || r[FASTNN_F_C] < 1 || r[FASTNN_F_OC] < 1)
            return 0;
        int64_t in;
        if (!fastnn_product(&in, r[FASTNN_F_H], r[FASTNN_F_W], r[FASTNN_F_C]))
            return 0;
        const int64_t out = r[FASTNN_F_OC];
        if (l == 0 ? (r[FASTNN_F_X] != -1 || in != a->in_size)
                   : (r[FASTNN_F_X] != prev[FASTNN_F_Y] || r[FASTNN_F_DX] != prev[FASTNN_F_DY]
                      || in != prev[FASTNN_F_OC]))
            return 0;
        const int64_t act = r[FASTNN_F_ACT];
        if (act < FASTNN_ACT_IDENTITY || act > FASTNN_ACT_SOFTPLUS)
            return 0;
        const int64_t w = r[FASTNN_F_PARAM], b = r[FASTNN_F_BIAS];
        if (w < 0 || in > a->n_params / out || w > a->n_params - in * out
            || (b != -1 && (b < 0 || b > a->n_params - out)))
            return 0;
        if (a->l2 != 0.0 && (a->penalized[2 * l] != w || a->penalized[2 * l + 1] != in * out))
            return 0;
        s->L[l] = (fastnn_dense_layer){
            .in = in, .out = out, .w_offset = w, .b_offset = b, .act = (int)act,
            .slope = (float)a->plan_scalars[l * FASTNN_PLAN_SCALARS + FASTNN_S_SLOPE]};
        s->row_off[l] = s->outs;
        if (!fastnn_add(&s->outs, s->outs, out))
            return 0;
        r2[n_ranges][0] = w;
        r2[n_ranges++][1] = w + in * out;
        if (b >= 0) {
            r2[n_ranges][0] = b;
            r2[n_ranges++][1] = b + out;
        }
    }
    s->n = (int)nr;
    const int64_t *last = a->plan + (nr - 1) * FASTNN_PLAN_FIELDS;
    if (a->output != last[FASTNN_F_Y] || a->doutput != last[FASTNN_F_DY]
        || a->out_size != s->L[nr - 1].out)
        return 0;
    for (int i = 1; i < n_ranges; i++)
        for (int j = i; j > 0 && r2[j][0] < r2[j - 1][0]; j--) {
            const int64_t lo = r2[j][0], hi = r2[j][1];
            r2[j][0] = r2[j - 1][0];
            r2[j][1] = r2[j - 1][1];
            r2[j - 1][0] = lo;
            r2[j - 1][1] = hi;
        }
    for (int i = 1; i < n_ranges; i++)
        if (r2[i][0] < r2[i - 1][1])
            return 0;
    return 1;
}

/* The workspace (floats): Y (B, outs) | D (B, outs) | Xb (B, in) | Lb (B
   int32).  The plan's workspace holds every record's output and gradient
   and the gathered batch, so it is at least this (checked); it is often
   16 floats short of train.c's layout, which is why plan.c's
   as_dense_stack rarely takes the dense-stack epoch for a plan. */
static int layout(const fastnn_model_epoch *a, const struct stack *s, int64_t *D, int64_t *Xb,
                  int64_t *Lb)
{
    int64_t part, end;
    if (!fastnn_product(D, a->batch, s->outs) || !fastnn_add(Xb, *D, *D)
        || !fastnn_product(&part, a->batch, s->L[0].in) || !fastnn_add(Lb, *Xb, part)
        || !fastnn_add(&end, *Lb, a->batch))
        return 0;
    return end <= a->workspace_size;
}

/* This epoch's forward: layer l's value, act(X W + b) in one product (the
   gemm's one k block) or, for longer k, the gemm itself. */
static int forward(const fastnn_dense_layer *L, const float *W, const float *b, const float *x,
                   int64_t m, float *Y)
{
#ifdef HAVE_TILES
    /* a 10-wide layer runs 2.9x faster here (2.1 vs 6.0 us at 32 x 128 x
       10, entry 37); wider ones, on the Xeon of entry 37 slower here, are
       faster on Zen 5 for few rows (the gemm packs A: the digits' two
       forward products 16.9 -> 15.6 us a batch of 32, entry 49); many
       rows (the gemm packs B too, then) are left to it, unmeasured */
    if (L->in <= FASTNN_GEMM_KC && (L->out <= 16 || m <= 64)) {
        const int fused = L->act == FASTNN_ACT_IDENTITY || L->act == FASTNN_ACT_RELU;
        small_product(m, L->out, L->in, x, L->in, 1, W, L->out, Y, L->out, b,
                      fused ? L->act : FASTNN_ACT_IDENTITY);
        return fused ? FASTNN_OK : fastnn_activation_forward(Y, Y, m * L->out, L->act, L->slope);
    }
#endif
    return fastnn_dense_partial(Y, L->out, x, L->in, W, L->out, m, L->in, L->out, 0.0f, 1, b,
                                L->act, L->slope);
}

/* train.c's fixed chunks of a feature dimension (internal.h's fastnn_chunk_count
   and fastnn_chunk_bound):
   an epoch two threads would split (chunked) sums a layer's forward over
   1, 2 or 4 chunks of its input, act((P_0 + P_1 + ...) + b), as a chain of
   products; one chunk is the fused product above. */

static int forward_chunks(const fastnn_dense_layer *L, const float *W, const float *b,
                          const float *x, int64_t m, float *Y, int chunked)
{
    const int n = fastnn_chunk_count(chunked, L->in);
    if (n == 1)
        return forward(L, W, b, x, m, Y);
    int rc = FASTNN_OK;
    for (int q = 0; q < n && rc == FASTNN_OK; q++) {
        const int64_t k0 = fastnn_chunk_bound(L->in, n, q), k1 = fastnn_chunk_bound(L->in, n, q + 1);
        rc = fastnn_dense_partial(Y, L->out, x + k0, L->in, W + k0 * L->out, L->out, m,
                                  k1 - k0, L->out, q == 0 ? 0.0f : 1.0f, q == n - 1, b, L->act,
                                  L->slope);
    }
    return rc;
}

/* dW = X^T dZ (k = the m rows). */
static int weight_grad(const fastnn_dense_layer *L, const float *x, const float *dZ, int64_t m,
                       float *dW)
{
#ifdef HAVE_TILES
    if (m <= FASTNN_GEMM_KC) {
        small_product(L->in, L->out, m, x, 1, L->in, dZ, L->out, dW, L->out, NULL, -1);
        return FASTNN_OK;
    }
#endif
    return fastnn_gemm(1, 0, L->in, L->out, m, 1.0f, x, L->in, dZ, L->out, 0.0f, dW, L->out);
}

static int apply_all(fastnn_model_epoch *a, const fastnn_optimizer *o)
{
    return fastnn_optimizer_apply(a->params, a->grads, o, 0, a->n_params);
}

/* The epoch (fastnn_dense_stack_epoch's value on one thread).  *taken = 0:
   not a case of this file, nothing done (the caller runs
   fastnn_model_epoch_run). */
int fastnn_many_dense_epoch(fastnn_model_epoch *a, int *taken)
{
    static struct stack none;
    *taken = 0;
#ifndef HAVE_TILES
    (void)none;
    return FASTNN_OK;
#else
    if (!a || fastnn_simd_path() != FASTNN_SIMD_AVX512)  /* (a forced path is kept) */
        return FASTNN_OK;
    if (a->hook && (a->hook_events & (1 << FASTNN_HOOK_GRADS)))
        return FASTNN_OK;
    struct stack s_, *s = &s_;
    (void)none;
    if (!a->params || !a->grads || a->n_params < 1 || !a->workspace || !a->X || a->n < 1
        || a->in_size < 1 || a->out_size < 1 || a->batch < 1 || !a->batch_loss
        || !a->batch_correct || !read_stack(a, s))
        return FASTNN_OK;
    int64_t macs = 0, size, oD, oXb, oLb;
    for (int l = 0; l < s->n; l++)
        macs += s->L[l].in * s->L[l].out;  /* <= n_params: the layers do not overlap */
    /* train.c's chunks for an epoch two threads would split; inputs wider
       than 4 k blocks (its pairwise tree) are left to it */
    const int chunked = (double)a->batch * (double)macs >= 2 * 2097152.0;
    for (int l = 0; l < s->n; l++)
        if (chunked && s->L[l].in > 4 * (int64_t)FASTNN_GEMM_KC)
            return FASTNN_OK;
    if (!layout(a, s, &oD, &oXb, &oLb))
        return FASTNN_OK;
    const int nl = s->n, labelled = a->loss == FASTNN_LOSS_SOFTMAX_XENT;
    const int64_t in = s->L[0].in, c = s->L[nl - 1].out, B = a->batch;
    if (!fastnn_product(&size, a->n, in) || !fastnn_product(&size, a->n, c)
        || !fastnn_epoch_data_valid(a->loss, a->labels, a->T, a->n, c, a->order, a->n_order)
        || (a->hook && !fastnn_hook_valid(a->hook_every, a->hook_events))
        || (!labelled && a->order))  /* (the gathered targets: train.c's Tb; not here) */
        return FASTNN_OK;
    const int64_t rows = a->order ? a->n_order : a->n, n_batches = (rows - 1) / B + 1;
    if (!fastnn_optimizer_valid(&a->opt, n_batches))
        return FASTNN_OK;
    *taken = 1;

    float *Y = a->workspace, *D = a->workspace + oD, *Xb = a->workspace + oXb;
    int32_t *Lb = (int32_t *)(a->workspace + oLb);
    fastnn_optimizer o = a->opt;
    int rc = FASTNN_OK;
    a->n_done = 0;
    for (int64_t bi = 0; bi < n_batches && rc == FASTNN_OK; bi++) {
        const int64_t lo = bi * B, m = rows - lo < B ? rows - lo : B;
        const float *x = a->X + lo * in;
        const int32_t *lb = labelled ? a->labels + lo : NULL;
        const float *tb = labelled ? NULL : a->T + lo * c;
        if (a->order) {
            for (int64_t i = 0; i < m; i++)
                memcpy(Xb + i * in, a->X + a->order[lo + i] * in, (size_t)in * sizeof(float));
            for (int64_t i = 0; i < m; i++)
                Lb[i] = a->labels[a->order[lo + i]];
            x = Xb;
            lb = Lb;
        }
        for (int l = 0; l < nl && rc == FASTNN_OK; l++) {
            const fastnn_dense_layer *L = &s->L[l];
            rc = forward_chunks(L, a->params + L->w_offset,
                                L->b_offset >= 0 ? a->params + L->b_offset : NULL,
                                l ? Y + B * s->row_off[l - 1] : x, m, Y + B * s->row_off[l],
                                chunked);
        }
        if (rc)
            break;
        /* the loss over train.c's fixed pieces, summed in order */
        const float *out = Y + B * s->row_off[nl - 1];
        float *dout = D + B * s->row_off[nl - 1];
        const float nf = labelled ? (float)m : (float)(m * c);
        double total = 0.0;
        for (int q = 0; q < LOSS_PIECES && rc == FASTNN_OK; q++) {
            const int64_t base = m / LOSS_PIECES, rem = m % LOSS_PIECES;
            const int64_t p0 = q * base + (q < rem ? q : rem);
            const int64_t p1 = (q + 1) * base + (q + 1 < rem ? q + 1 : rem);
            double piece = 0.0;
            if (p1 > p0)
                rc = fastnn_loss_rows(a->loss, &piece, dout + p0 * c, out + p0 * c,
                                      lb ? lb + p0 : NULL, tb ? tb + p0 * c : NULL, p1 - p0, c,
                                      nf);
            total += piece;
        }
        if (rc)
            break;
        const int64_t correct = fastnn_count_correct(out, lb, tb, m, c, a->loss);
        if (a->grad_scale != 1.0)
            fastnn_scale(dout, m * c, (float)a->grad_scale);
        double sq = 0.0;
        if (a->l2 != 0.0)
            for (int l = 0; l < nl; l++) {  /* per layer and chunk, as train.c */
                const fastnn_dense_layer *L = &s->L[l];
                const int n = fastnn_chunk_count(chunked, L->in);
                for (int q = 0; q < n; q++) {
                    const int64_t k0 = fastnn_chunk_bound(L->in, n, q), k1 = fastnn_chunk_bound(L->in, n, q + 1);
                    double part = 0.0;
                    if (k1 > k0)
                        fastnn_sum_squares(&part, a->params + L->w_offset + k0 * L->out,
                                           (k1 - k0) * L->out);
                    sq += part;
                }
            }
        total /= labelled ? (double)m : (double)m * (double)c;
        total = total * a->loss_scale + 0.5 * a->l2 / (double)m * sq;
        /* as train.c: the batch is counted with its loss; a non-finite
           one ends the epoch before the update (the caller sees it) */
        a->batch_loss[bi] = total;
        a->batch_correct[bi] = correct;
        a->n_done = bi + 1;
        if (!isfinite(total))
            break;
        fastnn_optimizer_advance(&o);
        for (int l = nl - 1; l >= 0 && rc == FASTNN_OK; l--) {
            const fastnn_dense_layer *L = &s->L[l];
            float *dZ = D + B * s->row_off[l];
            const float *xin = l ? Y + B * s->row_off[l - 1] : x;
            rc = fastnn_activation_backward(dZ, dZ, Y + B * s->row_off[l], m * L->out, L->act,
                                            L->slope);
            if (rc == FASTNN_OK)
                rc = weight_grad(L, xin, dZ, m, a->grads + L->w_offset);
            if (rc == FASTNN_OK && l > 0)
                rc = fastnn_gemm(0, 1, m, L->in, L->out, 1.0f, dZ, L->out,
                                 a->params + L->w_offset, L->out, 0.0f, D + B * s->row_off[l - 1],
                                 L->in);
            if (rc == FASTNN_OK && a->l2 != 0.0)
                fastnn_axpy(a->grads + L->w_offset, a->params + L->w_offset, L->in * L->out,
                            (float)(a->l2 / (double)m));
            if (rc == FASTNN_OK && L->b_offset >= 0)
                fastnn_column_sums(a->grads + L->b_offset, dZ, m, L->out, 0, L->out);
        }
        if (rc == FASTNN_OK)
            rc = apply_all(a, &o);
        if (rc == FASTNN_OK && a->hook && (a->hook_events & (1 << FASTNN_HOOK_BATCH))
            && (bi == n_batches - 1 || (a->hook_every > 0 && (bi + 1) % a->hook_every == 0))
            && a->hook(a->hook_ctx, FASTNN_HOOK_BATCH, bi))
            break;
    }
    a->opt.step = o.step;
    a->opt.mu_product = o.mu_product;
    return rc;
#endif
}
