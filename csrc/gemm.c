/*
 * gemm.c -- single-precision GEMM and the dense-layer forward, BLIS-style.
 *
 * C = alpha op(A) op(B) + beta C is five loops around a register-blocked
 * micro-kernel (gemm_kernels.h):
 *
 *   jc over n by NC:  pc over k by KC:  pack op(B)[pc, jc] (KC x NC panel)
 *     ic over m by MC:  pack op(A)[ic, pc] (MC x KC block)
 *       jr over NR columns:  ir over MR rows:  micro-kernel on one tile
 *
 * Packing reads every transpose layout and zero-pads the last sliver, so
 * the micro-kernels see only full MR x NR tiles; an edge tile is computed
 * into a scratch tile on the stack and its valid part copied out, so no
 * write goes out of bounds.  The first k block applies beta (with beta == 0
 * C is overwritten, never read); later k blocks accumulate.  The dense
 * epilogue (bias, activation) runs on the last k block while the tile is in
 * registers.
 *
 * Products with n == 1 skip packing (one multiply-add per matrix element
 * does not pay for it) and run as dot products.
 *
 * Threads: C is cut into one rectangle per thread along tile boundaries
 * (split over n when m is small, e.g. a 32-row batch), and each thread runs
 * the five loops on its own rectangle: no synchronisation and no shared
 * writes; the k loop is never split.  Packing buffers are static
 * thread-local arrays sized by the blocking constants (one A block and one
 * B panel per thread), so no kernel calls malloc; the C runtime creates each
 * thread's copy on its first use.
 */
#include <stddef.h>
#include "fastnn.h"
#include "gemm_kernels.h"
#include "internal.h"

#define MC FASTNN_GEMM_MC
#define KC FASTNN_GEMM_KC
#define NC FASTNN_GEMM_NC
#define ALIGN_FLOATS 16                 /* 64 bytes */

/* Below this many multiply-adds a second thread costs more than it saves
   (times fastnn_team_factor(): more when the team is likely asleep). */
#define MIN_MADDS_PER_THREAD (64.0 * 64.0 * 64.0 * (double)fastnn_team_factor())

static _Thread_local float tls_pack_a[MC * KC + ALIGN_FLOATS];
static _Thread_local float tls_pack_b[KC * NC + ALIGN_FLOATS];

static float *align64(float *p)
{
    return (float *)(((uintptr_t)p + 63) & ~(uintptr_t)63);
}

struct gemm_path {
    int mr, nr;
    fastnn_ukernel kernel;
};

static struct gemm_path current_path(void)
{
    switch (fastnn_simd_path()) {
#ifdef FASTNN_HAVE_X86_KERNELS
    case FASTNN_SIMD_AVX512:
        return (struct gemm_path){FASTNN_AVX512_MR, FASTNN_AVX512_NR, fastnn_ukernel_avx512};
    case FASTNN_SIMD_AVX2:
        return (struct gemm_path){FASTNN_AVX2_MR, FASTNN_AVX2_NR, fastnn_ukernel_avx2};
#endif
    default:
        return (struct gemm_path){FASTNN_GENERIC_MR, FASTNN_GENERIC_NR, fastnn_ukernel_generic};
    }
}

/* ---- portable micro-kernel and scalar epilogue --------------------------- */

void fastnn_tile_act(float *c, int64_t ldc, int mr, int nr, int act, float slope)
{
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            c[i * ldc + j] = fastnn_act_scalar(act, c[i * ldc + j], slope);
}

void fastnn_ukernel_generic(int64_t kc, const float *a, const float *b, int64_t ldb,
                            float *c, int64_t ldc, float alpha, float beta,
                            const fastnn_epilogue *ep)
{
    enum { R = FASTNN_GENERIC_MR, S = FASTNN_GENERIC_NR };
    float acc[R][S] = {{0.0f}};
    for (int64_t p = 0; p < kc; p++, a += R, b += ldb)
        for (int i = 0; i < R; i++)
            for (int j = 0; j < S; j++)
                acc[i][j] += a[i] * b[j];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < S; j++) {
            float v = alpha * acc[i][j];
            if (beta != 0.0f)
                v += beta * c[i * ldc + j];
            if (ep) {
                if (ep->bias)
                    v += ep->bias[j];
                v = fastnn_act_scalar(ep->act, v, ep->slope);
            }
            c[i * ldc + j] = v;
        }
}

/* ---- packing -------------------------------------------------------------
   op(A) block (mc x kc) at A -> slivers of mr rows: sliver s, column p at
   dst + s*mr*kc + p*mr.  op(B) panel (kc x nc) at B -> slivers of nr
   columns: sliver s, row p at dst + s*nr*kc + p*nr.  Rows/columns past the
   edge are zero.  always_inline + constant mr/nr lets the compiler unroll. */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* Eight rows of a row-major matrix, transposed: dst[p*ds + i] = A[i*lda + p]
   for i < 8, p < kc, 8 x 8 blocks transposed in registers.  Packs 8-row
   slivers of a non-transposed A (ds = 8; the scalar gather costs more than
   the multiply on tall products such as a convolution's im2col) and
   8-column strips of a transposed B (ds = nr: dX = dZ W^T of a batch of
   32, 32x256x128, went 45 -> 29 us a call, as the gather had cost more
   than the product).  Only the AVX-512 and AVX2 paths call it, so AVX2 is
   there. */
/* dst[p*ds + i] = r[i][p] for i < 8, p < kc: eight rows anywhere (the
   rows of a shuffled batch, gathered by the packing itself). */
__attribute__((target("avx2")))
static inline void transpose8_gather(float *restrict dst, int64_t ds, const float *const *r,
                                     int64_t kc)
{
    int64_t p = 0;
    for (; p + 8 <= kc; p += 8) {
        __m256 r0 = _mm256_loadu_ps(r[0] + p), r1 = _mm256_loadu_ps(r[1] + p);
        __m256 r2 = _mm256_loadu_ps(r[2] + p), r3 = _mm256_loadu_ps(r[3] + p);
        __m256 r4 = _mm256_loadu_ps(r[4] + p), r5 = _mm256_loadu_ps(r[5] + p);
        __m256 r6 = _mm256_loadu_ps(r[6] + p), r7 = _mm256_loadu_ps(r[7] + p);
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
        __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
        __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        _mm256_storeu_ps(dst + (p + 0) * ds, _mm256_permute2f128_ps(s0, s4, 0x20));
        _mm256_storeu_ps(dst + (p + 1) * ds, _mm256_permute2f128_ps(s1, s5, 0x20));
        _mm256_storeu_ps(dst + (p + 2) * ds, _mm256_permute2f128_ps(s2, s6, 0x20));
        _mm256_storeu_ps(dst + (p + 3) * ds, _mm256_permute2f128_ps(s3, s7, 0x20));
        _mm256_storeu_ps(dst + (p + 4) * ds, _mm256_permute2f128_ps(s0, s4, 0x31));
        _mm256_storeu_ps(dst + (p + 5) * ds, _mm256_permute2f128_ps(s1, s5, 0x31));
        _mm256_storeu_ps(dst + (p + 6) * ds, _mm256_permute2f128_ps(s2, s6, 0x31));
        _mm256_storeu_ps(dst + (p + 7) * ds, _mm256_permute2f128_ps(s3, s7, 0x31));
    }
    for (; p < kc; p++)
        for (int i = 0; i < 8; i++)
            dst[p * ds + i] = r[i][p];
}

/* Eight consecutive rows (lda apart) of a row-major matrix, transposed. */
__attribute__((target("avx2")))
static void transpose8_rows(float *restrict dst, int64_t ds, const float *restrict A,
                            int64_t lda, int64_t kc)
{
    const float *r[8];
    for (int i = 0; i < 8; i++)
        r[i] = A + i * lda;
    transpose8_gather(dst, ds, r, kc);
}
#define HAVE_TRANSPOSE8 1
#endif

/* dst[0:n] = src[0:n] for a compile-time n (the callers are inlined with
   constant mr / nr).  The plain loop is what GCC's loop distribution turns
   into a memcpy call per row -- 32 or 128 bytes a call, 15% of a training
   step's kernel time (perf, bench/NOTES.md 42) -- so the loop is kept a
   loop (and vectorised) here. */
#if defined(__GNUC__) && !defined(__clang__)
#define NO_MEMCPY_LOOPS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define NO_MEMCPY_LOOPS
#endif

static inline __attribute__((always_inline))
void copy_row(float *restrict dst, const float *restrict src, int n)
{
    for (int i = 0; i < n; i++)
        dst[i] = src[i];
}

/* rows: NULL, or the rows of the matrix A is a block of -- row q of the
   stored matrix at A + rows[q] * lda (the rows of a shuffled batch read in
   place, fastnn_gemm_rows): op(A)[i][p] is then A[rows[i] lda + p], or,
   transposed, A[rows[p] lda + i]. */
static inline __attribute__((always_inline))
void pack_a(float *restrict dst, int trans, const float *restrict A, int64_t lda,
            const int64_t *rows_of, int64_t mc, int64_t kc, int mr)
{
    for (int64_t ir = 0; ir < mc; ir += mr, dst += mr * kc) {
        int rows = mc - ir < mr ? (int)(mc - ir) : mr;
        if (rows < mr)          /* edge sliver: zero it whole, one stream */
            for (int64_t q = 0; q < mr * kc; q++)
                dst[q] = 0.0f;
        if (trans) {            /* op(A)[i][p] = A[p][i]: contiguous in i */
            if (rows == mr) {   /* a constant count: copied inline, not by a
                                   memcpy call per row of mr floats */
                for (int64_t p = 0; p < kc; p++)
                    copy_row(dst + p * mr, A + (rows_of ? rows_of[p] : p) * lda + ir, mr);
                continue;
            }
            for (int64_t p = 0; p < kc; p++) {
                const float *src = A + (rows_of ? rows_of[p] : p) * lda + ir;
                for (int i = 0; i < rows; i++)
                    dst[p * mr + i] = src[i];
            }
        } else {                /* op(A)[i][p] = A[i][p]: contiguous in p */
#ifdef HAVE_TRANSPOSE8
            if (mr == 8 && rows == 8) {
                if (!rows_of) {
                    transpose8_rows(dst, 8, A + ir * lda, lda, kc);
                } else {
                    const float *r[8];
                    for (int i = 0; i < 8; i++)
                        r[i] = A + rows_of[ir + i] * lda;
                    transpose8_gather(dst, 8, r, kc);
                }
                continue;
            }
#endif
            for (int i = 0; i < rows; i++) {
                const float *src = A + (rows_of ? rows_of[ir + i] : ir + i) * lda;
                for (int64_t p = 0; p < kc; p++)
                    dst[p * mr + i] = src[p];
            }
        }
    }
}

static inline __attribute__((always_inline))
void pack_b(float *restrict dst, int trans, const float *restrict B, int64_t ldb,
            int64_t kc, int64_t nc, int nr)
{
    for (int64_t jr = 0; jr < nc; jr += nr, dst += nr * kc) {
        int cols = nc - jr < nr ? (int)(nc - jr) : nr;
        if (cols < nr)          /* edge sliver: zero it whole, one stream */
            for (int64_t q = 0; q < nr * kc; q++)
                dst[q] = 0.0f;
        if (trans) {            /* op(B)[p][j] = B[j][p]: contiguous in p */
            const float *src = B + jr * ldb;
#ifdef HAVE_TRANSPOSE8
            if ((nr == FASTNN_AVX512_NR || nr == FASTNN_AVX2_NR) && cols == nr) {
                for (int q = 0; q < nr; q += 8)
                    transpose8_rows(dst + q, nr, src + q * ldb, ldb, kc);
                continue;
            }
#endif
            for (int64_t p = 0; p < kc; p++)
                for (int j = 0; j < cols; j++)
                    dst[p * nr + j] = src[j * ldb + p];
        } else {                /* op(B)[p][j] = B[p][j]: contiguous in j */
            if (cols == nr) {
                for (int64_t p = 0; p < kc; p++)
                    copy_row(dst + p * nr, B + p * ldb + jr, nr);
                continue;
            }
            for (int64_t p = 0; p < kc; p++) {
                const float *src = B + p * ldb + jr;
                for (int j = 0; j < cols; j++)
                    dst[p * nr + j] = src[j];
            }
        }
    }
}

static void pack_a_any(float *dst, int trans, const float *A, int64_t lda,
                       const int64_t *rows, int64_t mc, int64_t kc, int mr)
{
    switch (mr) {   /* one specialisation per path */
    case FASTNN_AVX512_MR: pack_a(dst, trans, A, lda, rows, mc, kc, FASTNN_AVX512_MR); break;
    case FASTNN_AVX2_MR:   pack_a(dst, trans, A, lda, rows, mc, kc, FASTNN_AVX2_MR); break;
    case FASTNN_GENERIC_MR: pack_a(dst, trans, A, lda, rows, mc, kc, FASTNN_GENERIC_MR); break;
    default:               pack_a(dst, trans, A, lda, rows, mc, kc, mr); break;
    }
}

static void pack_b_any(float *dst, int trans, const float *B, int64_t ldb,
                       int64_t kc, int64_t nc, int nr)
{
    switch (nr) {
    case FASTNN_AVX512_NR: pack_b(dst, trans, B, ldb, kc, nc, FASTNN_AVX512_NR); break;
    case FASTNN_AVX2_NR:   pack_b(dst, trans, B, ldb, kc, nc, FASTNN_AVX2_NR); break;
    case FASTNN_GENERIC_NR: pack_b(dst, trans, B, ldb, kc, nc, FASTNN_GENERIC_NR); break;
    default:               pack_b(dst, trans, B, ldb, kc, nc, nr); break;
    }
}

/* ---- the five loops, on one thread ---------------------------------------- */

/* Up to this many rows of C, a non-transposed B is read in place instead of
   packed (a training batch of 32 split over two threads: 16 rows). */
#define DIRECT_B_MAX_M 64

/* (a + b - 1) / b without the sum, which can pass int64 for a near it. */
static int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }
static int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Step of at most `cap` that cuts `len` into equal blocks (a multiple of
   `unit`), so no block is a thin remainder: k = 784 -> 4 x 196, not
   3 x 256 + 16.  cap must be a multiple of unit. */
static int64_t block_step(int64_t len, int64_t cap, int64_t unit)
{
    return round_up(ceil_div(len, ceil_div(len, cap)), unit);
}

/* Address of op(X)[r][c] for X stored row-major with leading dimension ld. */
static const float *op_at(const float *X, int trans, int64_t ld, int64_t r, int64_t c)
{
    return trans ? X + c * ld + r : X + r * ld + c;
}

NO_MEMCPY_LOOPS
static void gemm_serial(const struct gemm_path *P, int ta, int tb,
                        int64_t m, int64_t n, int64_t k, float alpha,
                        const float *A, int64_t lda, const int64_t *arow,
                        const float *B, int64_t ldb,
                        float beta, float *C, int64_t ldc, const fastnn_epilogue *ep)
{
    const int mr = P->mr, nr = P->nr;
    float *pa = align64(tls_pack_a), *pb = align64(tls_pack_b);
    _Alignas(64) float tile[FASTNN_GEMM_MR_MAX * FASTNN_GEMM_NR_MAX];
    const int64_t nc_step = block_step(n, NC, nr);
    const int64_t kc_step = block_step(k, KC, 1);
    const int64_t mc_step = block_step(m, MC, mr);
    const int direct_b = !tb && m <= DIRECT_B_MAX_M;

    for (int64_t jc = 0; jc < n; jc += nc_step) {
        int64_t nc = min64(nc_step, n - jc);
        for (int64_t pc = 0; pc < k; pc += kc_step) {
            int64_t kc = min64(kc_step, k - pc);
            int first = pc == 0, last = pc + kc == k;
            float beta_k = first ? beta : 1.0f;
            const fastnn_epilogue *lep = last ? ep : NULL;
            /* Few rows of C: packing B would cost as much as using it, so
               full-width slivers of a row-major B are read in place (same
               values, same order: the result does not change); only the
               ragged last sliver is packed, zero-padded. */
            const int64_t full = direct_b ? nc / nr * nr : 0;
            if (full < nc)
                pack_b_any(pb, tb, op_at(B, tb, ldb, pc, jc + full), ldb, kc, nc - full, nr);
            for (int64_t ic = 0; ic < m; ic += mc_step) {
                int64_t mc = min64(mc_step, m - ic);
                if (!arow)
                    pack_a_any(pa, ta, op_at(A, ta, lda, ic, pc), lda, NULL, mc, kc, mr);
                else if (ta)  /* the stored rows are op(A)'s columns */
                    pack_a_any(pa, 1, A + ic, lda, arow + pc, mc, kc, mr);
                else
                    pack_a_any(pa, 0, A + pc, lda, arow + ic, mc, kc, mr);
                for (int64_t jr = 0; jr < nc; jr += nr) {
                    int nr_e = (int)min64(nr, nc - jr);
                    const int in_place = jr < full;
                    const float *bs = in_place ? B + pc * ldb + jc + jr : pb + (jr - full) * kc;
                    const int64_t bstride = in_place ? ldb : nr;
                    for (int64_t ir = 0; ir < mc; ir += mr) {
                        int mr_e = (int)min64(mr, mc - ir);
                        const float *as = pa + ir * kc;
                        float *c = C + (ic + ir) * ldc + jc + jr;
                        const float *bias = lep && lep->bias ? lep->bias + jc + jr : NULL;
                        if (mr_e == mr && nr_e == nr) {
                            fastnn_epilogue tep;
                            if (lep)
                                tep = (fastnn_epilogue){bias, lep->act, lep->slope};
                            P->kernel(kc, as, bs, bstride, c, ldc, alpha, beta_k,
                                      lep ? &tep : NULL);
                            continue;
                        }
                        /* Edge tile: full tile into scratch, valid part out. */
                        P->kernel(kc, as, bs, bstride, tile, nr, alpha, 0.0f, NULL);
                        for (int i = 0; i < mr_e; i++)
                            for (int j = 0; j < nr_e; j++) {
                                float v = tile[i * nr + j];
                                if (beta_k != 0.0f)
                                    v += beta_k * c[i * ldc + j];
                                if (lep) {
                                    if (bias)
                                        v += bias[j];
                                    v = fastnn_act_scalar(lep->act, v, lep->slope);
                                }
                                c[i * ldc + j] = v;
                            }
                    }
                }
            }
        }
    }
}

/* ---- matrix-vector shapes (m == 1 or n == 1) ---------------------------
   Packing a matrix costs more than its one multiply-add per element, so a
   gemv-shaped product skips the micro-kernel:  y[l] = alpha sum_p M(l,p)
   x[p] + beta y[l], then bias[l*bs] and the activation, with M(l,p) at
   M[l*ldm + p] (rows: dot products) or M[p*ldm + l] (columns: axpy).  One
   plain C body, compiled once per SIMD path by the wrappers below. */

struct gemv_args {
    int64_t L, K;
    const float *M; int64_t ldm; int rows;
    const float *x; int64_t xs;
    float *y; int64_t ys;
    float alpha, beta;
    const fastnn_epilogue *ep; int64_t bs;
};

static inline __attribute__((always_inline))
float gemv_finish(const struct gemv_args *g, int64_t l, float v, int first, int last)
{
    float *y = g->y + l * g->ys;
    v *= g->alpha;
    if (!first)
        v += *y;
    else if (g->beta != 0.0f)       /* beta == 0: y is never read */
        v += g->beta * *y;
    if (last && g->ep) {
        if (g->ep->bias)
            v += g->ep->bias[l * g->bs];
        v = fastnn_act_scalar(g->ep->act, v, g->ep->slope);
    }
    return v;
}

static inline __attribute__((always_inline))
void gemv_body(const struct gemv_args *g)
{
    enum { W = 16 };                /* independent partial sums (vectorised) */
    if (g->rows) {
        /* x must be contiguous for the dot products: copy it in chunks. */
        const int64_t chunk = g->xs == 1 ? g->K : KC * NC;
        float *xbuf = align64(tls_pack_b);
        for (int64_t p0 = 0; p0 < g->K; p0 += chunk) {
            int64_t kc = min64(chunk, g->K - p0);
            const float *x = g->x + p0;
            if (g->xs != 1) {
                for (int64_t p = 0; p < kc; p++)
                    xbuf[p] = g->x[(p0 + p) * g->xs];
                x = xbuf;
            }
            for (int64_t l = 0; l < g->L; l++) {
                const float *row = g->M + l * g->ldm + p0;
                float part[W] = {0.0f};
                int64_t p = 0;
                for (; p + W <= kc; p += W)
                    for (int w = 0; w < W; w++)
                        part[w] += row[p + w] * x[p + w];
                float dot = 0.0f;
                for (; p < kc; p++)
                    dot += row[p] * x[p];
                for (int w = 0; w < W; w++)
                    dot += part[w];
                g->y[l * g->ys] = gemv_finish(g, l, dot, p0 == 0, p0 + kc == g->K);
            }
        }
    } else {
        /* Columns: accumulate a chunk of y in a contiguous buffer. */
        const int64_t chunk = MC * KC;
        float *acc = align64(tls_pack_a);
        for (int64_t l0 = 0; l0 < g->L; l0 += chunk) {
            int64_t lc = min64(chunk, g->L - l0);
            for (int64_t l = 0; l < lc; l++)
                acc[l] = 0.0f;
            for (int64_t p = 0; p < g->K; p++) {
                const float xp = g->x[p * g->xs];
                const float *col = g->M + p * g->ldm + l0;
                for (int64_t l = 0; l < lc; l++)
                    acc[l] += xp * col[l];
            }
            for (int64_t l = 0; l < lc; l++)
                g->y[(l0 + l) * g->ys] = gemv_finish(g, l0 + l, acc[l], 1, 1);
        }
    }
}

static void gemv_generic(const struct gemv_args *g) { gemv_body(g); }
#ifdef FASTNN_HAVE_X86_KERNELS
__attribute__((target("avx2,fma")))
static void gemv_avx2(const struct gemv_args *g) { gemv_body(g); }
__attribute__((target("avx512f,avx512vl,fma")))
static void gemv_avx512(const struct gemv_args *g) { gemv_body(g); }
#endif

static void gemv_run(const struct gemv_args *g)
{
    switch (fastnn_simd_path()) {
#ifdef FASTNN_HAVE_X86_KERNELS
    case FASTNN_SIMD_AVX512: gemv_avx512(g); return;
    case FASTNN_SIMD_AVX2:   gemv_avx2(g); return;
#endif
    default:                 gemv_generic(g); return;
    }
}

/* C (m,n) with m == 1 or n == 1 as a gemv, split over y between threads
   (called for n == 1; see gemm_driver). */
/* Piece tid of gemv_driver's t (one per thread: the pieces, not the
   threads, fix the bits). */
struct gemv_job {
    const struct gemv_args *g;
    const fastnn_epilogue *ep;
    int64_t pieces;
};

static void gemv_piece(const struct gemv_job *j, int64_t piece)
{
    const struct gemv_args *g = j->g;
    int64_t l0 = piece * g->L / j->pieces, l1 = (piece + 1) * g->L / j->pieces;
    struct gemv_args gp = *g;
    fastnn_epilogue pep;
    gp.L = l1 - l0;
    gp.M = g->rows ? g->M + l0 * g->ldm : g->M + l0;
    gp.y = g->y + l0 * g->ys;
    if (j->ep) {
        pep = *j->ep;
        pep.bias = j->ep->bias ? j->ep->bias + l0 * g->bs : NULL;
        gp.ep = &pep;
    }
    gemv_run(&gp);
}

static void gemv_share(void *arg, int tid, int n)
{
    const struct gemv_job *j = arg;
    for (int64_t piece = tid; piece < j->pieces; piece += n)
        gemv_piece(j, piece);
}

static void gemv_driver(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                        const float *A, int64_t lda, const float *B, int64_t ldb,
                        float beta, float *C, int64_t ldc, const fastnn_epilogue *ep)
{
    struct gemv_args g;
    if (n == 1) {   /* y = C[:,0], M = op(A), x = op(B)[:,0]; bias[0] for all */
        g = (struct gemv_args){m, k, A, lda, !ta, B, tb ? 1 : ldb, C, ldc,
                               alpha, beta, ep, 0};
    } else {        /* y = C[0,:], M(l,p) = op(B)[p][l], x = op(A)[0,:] */
        g = (struct gemv_args){n, k, B, ldb, tb, A, ta ? lda : 1, C, 1,
                               alpha, beta, ep, 1};
    }
    int64_t t = fastnn_team_size();
    double madds = (double)g.L * (double)k;
    const double most = madds / MIN_MADDS_PER_THREAD;   /* one read of the team's state */
    if (t > most)
        t = (int64_t)most;
    if (t > g.L / 64)
        t = g.L / 64;
    if (t <= 1) {
        gemv_run(&g);
        return;
    }
    const struct gemv_job j = {&g, ep, t};
    fastnn_team_run((int)t, gemv_share, (void *)&j);
}

/* ---- threads: one rectangle of C per thread ------------------------------- */

/* gemm_driver's grid of tm x tn rectangles of C, one per thread (the
   rectangles, not the threads, fix the bits). */
struct gemm_job {
    const struct gemm_path *P;
    int ta, tb;
    int64_t m, n, k;
    float alpha;
    const float *A;
    int64_t lda;
    const int64_t *arow;
    const float *B;
    int64_t ldb;
    float beta;
    float *C;
    int64_t ldc;
    const fastnn_epilogue *ep;
    int64_t tiles_m, tiles_n, tm, tn;
};

static void gemm_piece(const struct gemm_job *g, int64_t piece)
{
    const struct gemm_path *P = g->P;
    const int64_t pm = piece / g->tn, pn = piece % g->tn;
    const int64_t i0 = min64(pm * g->tiles_m / g->tm * P->mr, g->m);
    const int64_t i1 = min64((pm + 1) * g->tiles_m / g->tm * P->mr, g->m);
    const int64_t j0 = min64(pn * g->tiles_n / g->tn * P->nr, g->n);
    const int64_t j1 = min64((pn + 1) * g->tiles_n / g->tn * P->nr, g->n);
    if (i1 <= i0 || j1 <= j0)
        return;
    fastnn_epilogue pep, *pepp = NULL;
    if (g->ep) {
        pep = *g->ep;
        pep.bias = g->ep->bias ? g->ep->bias + j0 : NULL;
        pepp = &pep;
    }
    /* gathered rows: a block of op(A)'s rows is a block of the index (not
       transposed) or of the stored columns (transposed) */
    const float *Ap = !g->arow || g->ta ? op_at(g->A, g->ta, g->lda, i0, 0) : g->A;
    const int64_t *rp = g->arow && !g->ta ? g->arow + i0 : g->arow;
    gemm_serial(P, g->ta, g->tb, i1 - i0, j1 - j0, g->k, g->alpha, Ap, g->lda, rp,
                op_at(g->B, g->tb, g->ldb, 0, j0), g->ldb, g->beta, g->C + i0 * g->ldc + j0,
                g->ldc, pepp);
}

static void gemm_share(void *arg, int tid, int n)
{
    const struct gemm_job *g = arg;
    for (int64_t piece = tid; piece < g->tm * g->tn; piece += n)
        gemm_piece(g, piece);
}

static void gemm_driver(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                        const float *A, int64_t lda, const int64_t *arow,
                        const float *B, int64_t ldb,
                        float beta, float *C, int64_t ldc, const fastnn_epilogue *ep)
{
    /* n == 1 only: a row of C then sums in the same order whatever m is.
       m == 1 stays on the micro-kernel, so that a sample's output does not
       depend on the size of its batch (predict(X)[i] == predict(X[i:i+1]),
       which scikit-learn's estimator checks demand) -- at the price of
       packing for single-row products. */
    if (n == 1 && !arow) {   /* (gathered rows: the micro-kernel, below) */
        gemv_driver(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, ep);
        return;
    }
    const struct gemm_path P = current_path();
    const int64_t tiles_m = ceil_div(m, P.mr), tiles_n = ceil_div(n, P.nr);
    int64_t t = fastnn_team_size();
    double madds = (double)m * (double)n * (double)k;
    const double most = madds / MIN_MADDS_PER_THREAD;   /* one read of the team's state */
    if (t > most)
        t = (int64_t)most;
    if (t > tiles_m * tiles_n)
        t = tiles_m * tiles_n;
    /* Grid tm x tn = t: the least work on the busiest thread, each thread's
       rectangle weighed as its tiles plus the packing of its rows and
       columns (~ a multiply-add per 32 packed floats).  If no grid of t
       fits the tiles (t prime, few tiles), try one thread fewer. */
    int64_t tm = 1, tn = 1;
    for (; t > 1; t--) {
        double best = -1.0;
        for (int64_t gm = 1; gm <= t; gm++) {
            if (t % gm || gm > tiles_m || t / gm > tiles_n)
                continue;
            double rows = (double)ceil_div(tiles_m, gm) * P.mr;
            double cols = (double)ceil_div(tiles_n, t / gm) * P.nr;
            double cost = rows * cols + 32.0 * (rows + cols);
            if (best < 0.0 || cost < best) {
                best = cost;
                tm = gm;
                tn = t / gm;
            }
        }
        if (best >= 0.0)
            break;
    }
    if (t <= 1) {
        gemm_serial(&P, ta, tb, m, n, k, alpha, A, lda, arow, B, ldb, beta, C, ldc, ep);
        return;
    }
    const struct gemm_job j = {&P, ta, tb, m, n, k, alpha, A, lda, arow, B, ldb, beta, C, ldc,
                               ep, tiles_m, tiles_n, tm, tn};
    fastnn_team_run((int)(tm * tn), gemm_share, (void *)&j);
}

/* ---- public entry points ---------------------------------------------------- */

int fastnn_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                float alpha, const float *A, int64_t lda,
                const float *B, int64_t ldb,
                float beta, float *C, int64_t ldc)
{
    int64_t size;
    if (m < 1 || n < 1 || k < 1 || !A || !B || !C)
        return FASTNN_EINVAL;
    if (lda < (trans_a ? m : k) || ldb < (trans_b ? k : n) || ldc < n)
        return FASTNN_EINVAL;
    /* A, B and C's rows with their leading dimensions must fit in int64 */
    if (!fastnn_product(&size, trans_a ? k : m, lda) || !fastnn_product(&size, trans_b ? n : k, ldb)
        || !fastnn_product(&size, m, ldc))
        return FASTNN_EINVAL;
    gemm_driver(trans_a != 0, trans_b != 0, m, n, k, alpha, A, lda, NULL, B, ldb,
                beta, C, ldc, NULL);
    return FASTNN_OK;
}

/* fastnn_gemm with A's stored rows gathered (internal.h); the caller (the
   dense epoch) has checked every index and size. */
void fastnn_gemm_rows(int trans_a, int64_t m, int64_t n, int64_t k, const float *A,
                      int64_t lda, const int64_t *rows, const float *B, int64_t ldb, float *C,
                      int64_t ldc)
{
    gemm_driver(trans_a != 0, 0, m, n, k, 1.0f, A, lda, rows, B, ldb, 0.0f, C, ldc, NULL);
}

/* X (n,in), W (in,out), b (out) or NULL, Y (n,out): Y = act(X W + b). */
int fastnn_dense_forward_ld(float *Y, int64_t ldy, const float *X, int64_t ldx,
                            const float *W, int64_t ldw, const float *b, int64_t n,
                            int64_t in, int64_t out, int act, float slope)
{
    int64_t size;
    if (n < 1 || in < 1 || out < 1 || !Y || !X || !W || ldy < out || ldx < in || ldw < out)
        return FASTNN_EINVAL;
    if (!fastnn_product(&size, n, ldy) || !fastnn_product(&size, n, ldx)
        || !fastnn_product(&size, in, ldw))
        return FASTNN_EINVAL;
    if (act < FASTNN_ACT_IDENTITY || act > FASTNN_ACT_SOFTPLUS)
        return FASTNN_EINVAL;
    fastnn_epilogue ep = {b, act, slope};
    gemm_driver(0, 0, n, out, in, 1.0f, X, ldx, NULL, W, ldw, 0.0f, Y, ldy, &ep);
    return FASTNN_OK;
}

/* Y = X W + beta Y, then with `epilogue` Y = act(Y + b): one product of the
   chain that sums a layer's input chunks in a fixed order (train.c). */
int fastnn_dense_partial(float *Y, int64_t ldy, const float *X, int64_t ldx, const float *W,
                         int64_t ldw, int64_t n, int64_t in, int64_t out, float beta,
                         int epilogue, const float *b, int act, float slope)
{
    return fastnn_dense_partial_rows(Y, ldy, X, ldx, NULL, W, ldw, n, in, out, beta, epilogue,
                                     b, act, slope);
}

int fastnn_dense_partial_rows(float *Y, int64_t ldy, const float *X, int64_t ldx,
                              const int64_t *rows, const float *W, int64_t ldw, int64_t n,
                              int64_t in, int64_t out, float beta, int epilogue,
                              const float *b, int act, float slope)
{
    int64_t size;
    if (n < 1 || in < 1 || out < 1 || !Y || !X || !W || ldy < out || ldx < in || ldw < out)
        return FASTNN_EINVAL;
    if (!fastnn_product(&size, n, ldy) || !fastnn_product(&size, n, ldx)
        || !fastnn_product(&size, in, ldw))
        return FASTNN_EINVAL;
    if (act < FASTNN_ACT_IDENTITY || act > FASTNN_ACT_SOFTPLUS)
        return FASTNN_EINVAL;
    fastnn_epilogue ep = {b, act, slope};
    gemm_driver(0, 0, n, out, in, 1.0f, X, ldx, rows, W, ldw, beta, Y, ldy,
                epilogue ? &ep : NULL);
    return FASTNN_OK;
}

int fastnn_dense_forward(float *Y, const float *X, const float *W,
                         const float *b, int64_t n, int64_t in, int64_t out,
                         int act, float slope)
{
    return fastnn_dense_forward_ld(Y, out, X, in, W, out, b, n, in, out, act, slope);
}
