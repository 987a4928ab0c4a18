/*
 * conv_direct.c -- stride-1 convolution as an implicit GEMM: the micro-kernel
 * reads the (padded, channels-last) image in place, no im2col matrix.
 *
 * One micro-kernel serves the forward, dW and dX.  It computes an MR x NR
 * tile of C as a sum over "segments", each a run of kc steps: at step p of
 * segment s, row i of A is a[aoff[s] + roff[i] + p*sp] (broadcast) and the
 * row of B is b[boff[s] + p*ldb] (NR values, nv of them valid):
 *
 *   forward / dX: rows = MR neighbouring output pixels of one output row
 *     (roff = i*cin), segments = kernel rows (kw*cin contiguous values of
 *     the padded image and the matching kw*cin rows of W), sp = 1;
 *   dW: rows = MR consecutive rows (i, j, ch) of dW (roff = (i*wp + j)*cin
 *     + ch), segments = output rows (kc = ow output pixels, sp = cin), B =
 *     dZ's rows.
 *
 * Edges are masked in the kernel, not padded in memory: invalid rows read
 * row 0's values (and are not stored), invalid columns are masked loads
 * (which never fault) and masked stores, so no tile scratch and no packing.
 * AVX-512 6x64 / 8x32 / 8x16 by the number of columns, AVX2 6x16, portable
 * 4x8, chosen at run time like gemm.c.
 *
 * The same micro-kernel also runs the 16 products of the Winograd F(2x2,
 * 3x3) forward / dX and F(3x3, 2x2) dW of 3x3 stride-1 layers (the end of
 * this file): 2.25x fewer multiply-adds, transforms in blocks of tiles.
 */
#include <stdint.h>
#include <string.h>
#include <omp.h>
#include "fastnn.h"
#include "internal.h"
#include "conv_direct.h"

/* Segments per kernel call (kernel rows of the forward, output rows of a dW
   chunk); more are done in several calls that accumulate. */
#define SEG_MAX 64
/* A dW chunk spans about this many output pixels: the batch reduction runs
   over chunks of output rows fixed by the geometry, so it sums in the same
   order whatever the number of threads.  ~512 pixels of dZ and of the
   padded image stay in L2 while a thread runs its tiles over them. */
#ifndef DW_CHUNK_PIXELS
#define DW_CHUNK_PIXELS 512
#endif
/* Below this many multiply-adds (the ones a kernel does: Winograd's 16 per
   2x2 block, not the direct sum's 36) the kernels stay on the calling
   thread; 8x as many when the team is likely asleep (fastnn_cold_scale,
   internal.h): LeNet's first layer, 14.5M, ~0.4 ms on one core, goes
   parallel, the CLI CNN's second, 4.2M by Winograd, does not. */
#define PAR_MIN_MADDS ((double)(1 << 20) * fastnn_cold_scale(8.0))
#define MR_MAX 8   /* the largest MR of any kernel */

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }

typedef struct {
    const float *a;
    const int64_t *roff;        /* MR row offsets (invalid rows: row 0's) */
    const int64_t *aoff, *boff; /* nseg segment offsets into a and b */
    int64_t nseg, kc, sp;
    const float *b;
    int64_t ldb;
    float *c;
    int64_t ldc;
    int mv, nv;                 /* valid rows and columns of the tile */
    int accumulate;             /* C += tile (else C = tile, C not read) */
    int ep;                     /* then C = act(C + bias): the last call only */
    const float *bias;          /* NR values or NULL */
    int act;
    float slope;
} ctile;

/* The activation of the valid part of a stored tile (the activations the
   SIMD epilogues do not vectorise). */
static void tile_act_scalar(const ctile *t)
{
    for (int i = 0; i < t->mv; i++)
        for (int j = 0; j < t->nv; j++) {
            float *v = t->c + i * t->ldc + j;
            *v = fastnn_act_scalar(t->act, *v, t->slope);
        }
}

static inline int simd_act(int act)
{
    return act == FASTNN_ACT_IDENTITY || act == FASTNN_ACT_RELU || act == FASTNN_ACT_LEAKY_RELU;
}

/* ---- portable kernel: 4 x 8 --------------------------------------------------- */

enum { GEN_MR = 4, GEN_NR = 8 };

static void ck_generic(const ctile *t)
{
    float acc[GEN_MR][GEN_NR] = {{0.0f}};
    for (int64_t s = 0; s < t->nseg; s++) {
        const float *r[GEN_MR];
        for (int i = 0; i < GEN_MR; i++)
            r[i] = t->a + t->aoff[s] + t->roff[i];
        const float *b = t->b + t->boff[s];
        for (int64_t p = 0, o = 0; p < t->kc; p++, o += t->sp, b += t->ldb) {
            float bb[GEN_NR];
            for (int j = 0; j < GEN_NR; j++)
                bb[j] = j < t->nv ? b[j] : 0.0f;
            for (int i = 0; i < GEN_MR; i++)
                for (int j = 0; j < GEN_NR; j++)
                    acc[i][j] += r[i][o] * bb[j];
        }
    }
    for (int i = 0; i < t->mv; i++)
        for (int j = 0; j < t->nv; j++) {
            float *c = t->c + i * t->ldc + j;
            float v = acc[i][j];
            if (t->accumulate)
                v += *c;
            if (t->ep) {
                if (t->bias)
                    v += t->bias[j];
                v = fastnn_act_scalar(t->act, v, t->slope);
            }
            *c = v;
        }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86 1

/* ---- AVX-512: 8 x 32 and 6 x 64 ------------------------------------------------------
   Two tiles, 16 and 24 zmm accumulators: 6 x 64 loads 10 values per 24
   multiply-adds (8 x 32: 10 per 16), which measured 111 against 97 GFLOP/s
   in L1 on this machine's two FMA ports (peak ~121); 8 x 32 serves 32 or
   fewer columns. */

enum { A5_MR = 8, A5_NR = 32, A5W_MR = 6, A5W_NR = 64, A5N_MR = 8, A5N_NR = 16 };

__attribute__((target("avx512f,avx512vl,fma"))) static inline __attribute__((always_inline))
void ck_avx512_body(const ctile *t, const int MR, const int NV, const int full)
{
    __m512 acc[8][4];
    __mmask16 m[4];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
        const int lanes = t->nv - 16 * v;
        m[v] = lanes >= 16 ? 0xFFFF : lanes <= 0 ? 0 : (__mmask16)((1u << lanes) - 1u);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            acc[i][v] = _mm512_setzero_ps();
    const int64_t kc = t->kc, sp = t->sp, ldb = t->ldb;
    for (int64_t s = 0; s < t->nseg; s++) {
        const float *r[8];
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++)
            r[i] = t->a + t->aoff[s] + t->roff[i];
        const float *b = t->b + t->boff[s];
        int64_t o = 0;
#pragma GCC unroll 2
        for (int64_t p = 0; p < kc; p++, o += sp, b += ldb) {
            __m512 bv[4];
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                bv[v] = full ? _mm512_loadu_ps(b + 16 * v) : _mm512_maskz_loadu_ps(m[v], b + 16 * v);
#pragma GCC unroll 8
            for (int i = 0; i < MR; i++) {
                const __m512 ai = _mm512_set1_ps(r[i][o]);
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++)
                    acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
            }
        }
    }
    const __m512 zero = _mm512_setzero_ps();
    __m512 bias[4];
    const int act = t->ep ? t->act : FASTNN_ACT_IDENTITY;
    const __m512 slope = _mm512_set1_ps(t->slope);
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++)
        bias[v] = t->ep && t->bias ? _mm512_maskz_loadu_ps(m[v], t->bias + 16 * v) : zero;
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        if (i >= t->mv)
            break;
        float *ci = t->c + i * t->ldc;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            __m512 x = acc[i][v];
            if (t->accumulate)
                x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m[v], ci + 16 * v));
            x = _mm512_add_ps(x, bias[v]);
            if (act == FASTNN_ACT_RELU)             /* max(0, NaN) keeps the NaN */
                x = _mm512_max_ps(zero, x);
            else if (act == FASTNN_ACT_LEAKY_RELU)
                x = _mm512_mask_mul_ps(x, _mm512_cmp_ps_mask(x, zero, _CMP_LE_OQ), x, slope);
            _mm512_mask_storeu_ps(ci + 16 * v, m[v], x);
        }
    }
    if (!simd_act(act))
        tile_act_scalar(t);
}

/* The masks are spilled and reloaded in the inner loop (GCC), so a tile
   with every column valid gets plain loads. */
__attribute__((target("avx512f,avx512vl,fma")))
static void ck_avx512(const ctile *t)
{
    if (t->nv == A5_NR)
        ck_avx512_body(t, A5_MR, A5_NR / 16, 1);
    else
        ck_avx512_body(t, A5_MR, A5_NR / 16, 0);
}

/* 8 x 16 for 16 or fewer columns (dX of a layer with 16 input channels),
   where 8 x 32 would multiply zeros half the time. */
__attribute__((target("avx512f,avx512vl,fma")))
static void ck_avx512_narrow(const ctile *t)
{
    if (t->nv == A5N_NR)
        ck_avx512_body(t, A5N_MR, 1, 1);
    else
        ck_avx512_body(t, A5N_MR, 1, 0);
}

__attribute__((target("avx512f,avx512vl,fma")))
static void ck_avx512_wide(const ctile *t)
{
    if (t->nv == A5W_NR)
        ck_avx512_body(t, A5W_MR, A5W_NR / 16, 1);
    else
        ck_avx512_body(t, A5W_MR, A5W_NR / 16, 0);
}

/* ---- AVX2: 6 x 16, 12 ymm accumulators ---------------------------------------- */

enum { A2_MR = 6, A2_NR = 16 };

/* full: all 16 columns valid (plain loads); else masked loads. */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline))
void ck_avx2_body(const ctile *t, const int full)
{
    __m256 acc[A2_MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < A2_MR; i++)
        acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i k0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(t->nv), lane);
    const __m256i k1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(t->nv - 8), lane);
    const int64_t kc = t->kc, sp = t->sp, ldb = t->ldb;
    for (int64_t s = 0; s < t->nseg; s++) {
        const float *r[A2_MR];
#pragma GCC unroll 6
        for (int i = 0; i < A2_MR; i++)
            r[i] = t->a + t->aoff[s] + t->roff[i];
        const float *b = t->b + t->boff[s];
        int64_t o = 0;
        for (int64_t p = 0; p < kc; p++, o += sp, b += ldb) {
            const __m256 b0 = full ? _mm256_loadu_ps(b) : _mm256_maskload_ps(b, k0);
            const __m256 b1 = full ? _mm256_loadu_ps(b + 8) : _mm256_maskload_ps(b + 8, k1);
#pragma GCC unroll 6
            for (int i = 0; i < A2_MR; i++) {
                const __m256 ai = _mm256_broadcast_ss(r[i] + o);
                acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
            }
        }
    }
    const __m256 zero = _mm256_setzero_ps();
    __m256 bias0 = zero, bias1 = zero;
    const int act = t->ep ? t->act : FASTNN_ACT_IDENTITY;
    const __m256 slope = _mm256_set1_ps(t->slope);
    if (t->ep && t->bias) {
        bias0 = _mm256_maskload_ps(t->bias, k0);
        bias1 = _mm256_maskload_ps(t->bias + 8, k1);
    }
#pragma GCC unroll 6
    for (int i = 0; i < A2_MR; i++) {
        if (i >= t->mv)
            break;
        float *ci = t->c + i * t->ldc;
        __m256 v0 = acc[i][0], v1 = acc[i][1];
        if (t->accumulate) {
            v0 = _mm256_add_ps(v0, _mm256_maskload_ps(ci, k0));
            v1 = _mm256_add_ps(v1, _mm256_maskload_ps(ci + 8, k1));
        }
        v0 = _mm256_add_ps(v0, bias0);
        v1 = _mm256_add_ps(v1, bias1);
        if (act == FASTNN_ACT_RELU) {
            v0 = _mm256_max_ps(zero, v0);
            v1 = _mm256_max_ps(zero, v1);
        } else if (act == FASTNN_ACT_LEAKY_RELU) {
            v0 = _mm256_blendv_ps(v0, _mm256_mul_ps(v0, slope), _mm256_cmp_ps(v0, zero, _CMP_LE_OQ));
            v1 = _mm256_blendv_ps(v1, _mm256_mul_ps(v1, slope), _mm256_cmp_ps(v1, zero, _CMP_LE_OQ));
        }
        _mm256_maskstore_ps(ci, k0, v0);
        _mm256_maskstore_ps(ci + 8, k1, v1);
    }
    if (!simd_act(act))
        tile_act_scalar(t);
}

__attribute__((target("avx2,fma")))
static void ck_avx2(const ctile *t)
{
    if (t->nv >= A2_NR)
        ck_avx2_body(t, 1);
    else
        ck_avx2_body(t, 0);
}
#endif

typedef struct {
    int mr, nr;
    void (*kernel)(const ctile *);
} cpath;

/* The kernel for a product with `cols` columns. */
static cpath conv_path(int64_t cols)
{
    switch (fastnn_simd_path()) {
#ifdef HAVE_X86
    case FASTNN_SIMD_AVX512:
        return cols > A5_NR    ? (cpath){A5W_MR, A5W_NR, ck_avx512_wide}
               : cols > A5N_NR ? (cpath){A5_MR, A5_NR, ck_avx512}
                               : (cpath){A5N_MR, A5N_NR, ck_avx512_narrow};
    case FASTNN_SIMD_AVX2:   return (cpath){A2_MR, A2_NR, ck_avx2};
#endif
    default:                 return (cpath){GEN_MR, GEN_NR, ck_generic};
    }
}

/* Team size for `madds` multiply-adds over `units` independent pieces. */
static int team(double madds, int64_t units)
{
    int t = fastnn_team_size();
    if (madds < PAR_MIN_MADDS || units < 2)
        return 1;
    return (int)min64(t, units);
}

/* ---- forward (and dX) ----------------------------------------------------------------
   Tiles of MR consecutive output pixels of the flattened (n, oh, ow) grid,
   so a tile may span output rows (each row of A has its own offset) and
   only the batch's last tile is ragged. */

typedef struct {
    const float *in, *W, *bias;
    float *out;
    int64_t hp, wp, cin, cout, kh, kw, oh, ow;
    int64_t mtotal;     /* n oh ow output pixels */
    int act;
    float slope;
} conv_args;

/* Tiles per group of conv_tiles: a group runs one kernel row at a time,
   so that row's slice of W (kw*cin x NR) stays in L1 across the group
   (with all kh rows per tile, W's whole column sliver streamed from L2:
   9*32 x 64 floats for 32 -> 64 channels); the tiles of C accumulate in
   memory between the rows. */
#define SHORT_RUN 64
#ifndef CONV_GROUP
#define CONV_GROUP 4
#endif

/* Pixel tiles [t0, t1) of the output, all column tiles. */
static void conv_tiles(const cpath *P, const conv_args *g, int64_t t0, int64_t t1)
{
    const int64_t run = g->kw * g->cin, pixels = g->oh * g->ow;
    int64_t roff[CONV_GROUP][MR_MAX], aoff[SEG_MAX], boff[SEG_MAX];
    for (int64_t g0 = t0; g0 < t1; g0 += CONV_GROUP) {
        const int64_t gn = min64(CONV_GROUP, t1 - g0);
        int mv[CONV_GROUP];
        for (int64_t u = 0; u < gn; u++) {
            const int64_t m0 = (g0 + u) * P->mr;
            mv[u] = (int)min64(P->mr, g->mtotal - m0);
            /* pixel m0's place by division, the next ones by stepping (the
               divisions cost more than a tile of one input channel) */
            int64_t img = m0 / pixels, oy = m0 % pixels / g->ow, ox = m0 % g->ow;
            for (int i = 0; i < P->mr; i++) {
                roff[u][i] = i < mv[u] ? ((img * g->hp + oy) * g->wp + ox) * g->cin : roff[u][0];
                if (++ox == g->ow) {
                    ox = 0;
                    if (++oy == g->oh) {
                        oy = 0;
                        img++;
                    }
                }
            }
        }
        for (int64_t jc = 0; jc < g->cout; jc += P->nr) {
            const int nv = (int)min64(P->nr, g->cout - jc);
            /* Short kernel rows (few input channels): all rows in one call,
               as the calls and the passes over C would cost more than W's
               reloads. */
            const int64_t step = run < SHORT_RUN ? SEG_MAX : 1;
            for (int64_t i0 = 0; i0 < g->kh; i0 += step) {
                const int64_t nseg = min64(step, g->kh - i0);
                for (int64_t s = 0; s < nseg; s++) {
                    aoff[s] = (i0 + s) * g->wp * g->cin;
                    boff[s] = (i0 + s) * run * g->cout;
                }
                for (int64_t u = 0; u < gn; u++) {
                    const int64_t m0 = (g0 + u) * P->mr;
                    ctile t = {g->in, roff[u], aoff, boff, nseg, run, 1, g->W + jc, g->cout,
                               g->out + m0 * g->cout + jc, g->cout, mv[u], nv, i0 > 0,
                               i0 + nseg == g->kh, g->bias ? g->bias + jc : NULL, g->act,
                               g->slope};
                    P->kernel(&t);
                }
            }
        }
    }
}

/* conv_tiles as a job (fastnn_team_run): share tid of n of the tiles. */
typedef struct {
    const cpath *P;
    const conv_args *g;
    int64_t tiles;
} tiles_job;

static void tiles_share(void *arg, int tid, int n)
{
    const tiles_job *j = arg;
    conv_tiles(j->P, j->g, tid * j->tiles / n, (tid + 1) * j->tiles / n);
}

void fastnn_conv_padded(float *out, const float *in, const float *W, const float *bias,
                        int64_t n, int64_t hp, int64_t wp, int64_t cin, int64_t cout,
                        int64_t kh, int64_t kw, int act, float slope)
{
    const cpath P = conv_path(cout);
    const int64_t oh = hp - kh + 1, ow = wp - kw + 1;
    const conv_args g = {in, W, bias, out, hp, wp, cin, cout, kh, kw, oh, ow, n * oh * ow,
                         act, slope};
    const int64_t tiles = ceil_div(g.mtotal, P.mr);
    const int T = team((double)g.mtotal * kh * kw * cin * cout, tiles);
    if (T < 2) {
        conv_tiles(&P, &g, 0, tiles);
        return;
    }
    const tiles_job j = {&P, &g, tiles};
    fastnn_team_run(T, tiles_share, (void *)&j);
}

/* ---- dW -------------------------------------------------------------------------- */

typedef struct {
    const cpath *P;
    float *dW;
    const float *in, *dZ;
    int64_t hp, wp, cin, cout, oh, ow, run, K, ct, tiles, rows, chunk, chunks;
} dw_job;

/* Share tid of n of fastnn_conv_padded_dw's tiles of dW, over every chunk
   of pixels in order. */
static void dw_share(void *arg, int tid, int nt)
{
    const dw_job *j = arg;
    const cpath *P = j->P;
    const int64_t t0 = tid * j->tiles / nt, t1 = (tid + 1) * j->tiles / nt;
    int64_t aoff[SEG_MAX], boff[SEG_MAX], roff[MR_MAX];
    for (int64_t ch = 0; ch < j->chunks; ch++) {
        const int64_t r0 = ch * j->chunk, nseg = min64(j->chunk, j->rows - r0);
        for (int64_t s = 0; s < nseg; s++) {
            const int64_t img = (r0 + s) / j->oh, oy = (r0 + s) % j->oh;
            aoff[s] = (img * j->hp + oy) * j->wp * j->cin;
            boff[s] = (r0 + s) * j->ow * j->cout;
        }
        for (int64_t tile = t0; tile < t1; tile++) {
            const int64_t k0 = tile / j->ct * P->mr, jc = tile % j->ct * P->nr;
            const int mv = (int)min64(P->mr, j->K - k0), nv = (int)min64(P->nr, j->cout - jc);
            for (int i = 0; i < P->mr; i++) {
                const int64_t k = k0 + (i < mv ? i : 0);
                roff[i] = k / j->run * j->wp * j->cin + k % j->run;
            }
            ctile t = {j->in, roff, aoff, boff, nseg, j->ow, j->cin, j->dZ + jc, j->cout,
                       j->dW + k0 * j->cout + jc, j->cout, mv, nv, ch > 0, 0, NULL,
                       FASTNN_ACT_IDENTITY, 0.0f};
            P->kernel(&t);
        }
    }
}

void fastnn_conv_padded_dw(float *dW, const float *in, const float *dZ, int64_t n, int64_t hp,
                           int64_t wp, int64_t cin, int64_t cout, int64_t kh, int64_t kw)
{
    const cpath P = conv_path(cout);
    const int64_t oh = hp - kh + 1, ow = wp - kw + 1, run = kw * cin, K = kh * run;
    const int64_t rt = ceil_div(K, P.mr), ct = ceil_div(cout, P.nr), tiles = rt * ct;
    const int64_t rows = n * oh;
    const int64_t chunk = max64(1, min64(SEG_MAX, DW_CHUNK_PIXELS / ow));
    const int64_t chunks = ceil_div(rows, chunk);
    const int T = team((double)rows * ow * K * cout, tiles);
    dw_job j = {&P, dW, in, dZ, hp, wp, cin, cout, oh, ow, run, K, ct, tiles, rows, chunk,
                chunks};
    fastnn_team_run(T, dw_share, &j);
}

/* ---- dX by gathering, for few input channels ------------------------------------- */

/* Channels of dZ summed per pass of dx_gather_row: the partial sums of a
   pass are a vector of OB lanes (registers), reduced once per pass, not
   once per tap. */
#define OB 64

FASTNN_CLONES
static void dx_gather_row(float *dX, const float *dZ, const float *W, int64_t h, int64_t w,
                          int64_t c, int64_t oc, int64_t oh, int64_t ow, int64_t kh,
                          int64_t kw, int64_t ph, int64_t pw, int64_t r)
{
    const int64_t img = r / h, y = r % h;
    float *dx = dX + r * w * c;
    for (int64_t x = 0; x < w; x++)
        for (int64_t ch = 0; ch < c; ch++) {
            float acc = 0.0f;
            for (int64_t o0 = 0; o0 < oc; o0 += OB) {
                const int64_t ob = min64(OB, oc - o0);
                float part[OB] = {0.0f};
                for (int64_t i = 0; i < kh; i++) {
                    const int64_t oy = y + ph - i;
                    if (oy < 0 || oy >= oh)
                        continue;
                    for (int64_t j = 0; j < kw; j++) {
                        const int64_t ox = x + pw - j;
                        if (ox < 0 || ox >= ow)
                            continue;
                        const float *dz = dZ + ((img * oh + oy) * ow + ox) * oc + o0;
                        const float *wr = W + ((i * kw + j) * c + ch) * oc + o0;
                        if (ob == OB) {
#pragma omp simd
                            for (int64_t o = 0; o < OB; o++)
                                part[o] += dz[o] * wr[o];
                        } else if (ob == OB / 2) {   /* 32 channels: a common case */
#pragma omp simd
                            for (int64_t o = 0; o < OB / 2; o++)
                                part[o] += dz[o] * wr[o];
                        } else {
#pragma omp simd
                            for (int64_t o = 0; o < ob; o++)
                                part[o] += dz[o] * wr[o];
                        }
                    }
                }
                float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                for (int64_t o = 0; o < OB; o++)
                    sum += part[o];
                acc += sum;
            }
            dx[x * c + ch] = acc;
        }
}

typedef struct {
    float *dX;
    const float *dZ, *W;
    int64_t h, w, c, oc, oh, ow, kh, kw, ph, pw, rows;
} gather_job;

static void gather_share(void *arg, int tid, int n)
{
    const gather_job *j = arg;
    for (int64_t r = tid * j->rows / n; r < (tid + 1) * j->rows / n; r++)
        dx_gather_row(j->dX, j->dZ, j->W, j->h, j->w, j->c, j->oc, j->oh, j->ow, j->kh, j->kw,
                      j->ph, j->pw, r);
}

void fastnn_conv_dx_gather(float *dX, const float *dZ, const float *W, int64_t n, int64_t h,
                           int64_t w, int64_t c, int64_t oc, int64_t kh, int64_t kw,
                           int64_t ph, int64_t pw)
{
    const int64_t oh = h + 2 * ph - kh + 1, ow = w + 2 * pw - kw + 1, rows = n * h;
    const int T = team((double)rows * w * c * kh * kw * oc, rows);
    const gather_job j = {dX, dZ, W, h, w, c, oc, oh, ow, kh, kw, ph, pw, rows};
    fastnn_team_run(T, gather_share, (void *)&j);
}

/* ---- 3x3 stride 1 by Winograd F(2x2, 3x3) ---------------------------------------------
   Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016):
   each 2x2 tile of outputs is A^T [ sum_ch (G g G^T) . (B^T d B) ] A over its
   4x4 input window d, i.e. 16 products (tiles x cin) (cin x cout) instead of
   one (4 tiles' pixels x 9 cin) (9 cin x cout): 2.25x fewer multiply-adds.
   The transforms are +-1 and 0.5 (exact scalings), so the error stays within
   a few rounding steps of the direct sum (the tests' float32 tolerances).

   Blocks of WG_BLOCK tiles: the block's transformed input V (16 x block x
   cin) and products M (16 x block x cout) stay in the thread's L2 between
   the transform, the 16 products (the micro-kernel above, A = V's rows, B =
   U's) and the inverse transform, so memory sees only the padded input and
   the output.  A tile whose window holds a value beyond WG_LIMIT in
   magnitude (an inf, a NaN, a huge value whose transform could overflow
   where the direct sum does not) is computed by the direct sum instead, so
   IEEE special values give what the direct path gives; weights beyond it
   send the whole call to the direct path.  Each tile is computed by one
   thread in a fixed order: the bits do not depend on the thread count. */

#ifndef WG_BLOCK
#define WG_BLOCK 48          /* tiles per block (fewer when the workspace is short) */
#endif
#define WG_LIMIT 0x1p40f

static inline int64_t wg_round16(int64_t x) { return (x + 15) / 16 * 16; }
/* The stride between V's (or M's) 16 matrices: one cache line more than a
   multiple of 16 floats, so that the transforms' 16 streams fall in
   different L1 sets (48 x 64 floats is 3 x 4 KiB: without the extra line
   all 16 share one set). */
static inline int64_t wg_ld(int64_t block, int64_t ch) { return wg_round16(block * ch) + 16; }

/* ws moved to a 64-byte boundary, and *size less the 16 floats this may
   take whatever the shift (so that the blocks and chunks chosen from the
   size do not depend on the buffer's address): unaligned, the transforms'
   and products' loads and stores ran 15-20% slower (numpy's buffers are
   16-byte aligned). */
static float *wg_align(float *ws, int64_t *size)
{
    const uintptr_t mis = (uintptr_t)ws % 64;
    *size -= 16;
    return mis ? ws + (64 - mis) / sizeof *ws : ws;
}

/* Floats of one thread's scratch for blocks of `block` tiles: V, M and
   a gathered window (the forward's; dW's chunks take V and Z only). */
static int64_t wg_scratch(int64_t block, int64_t cin, int64_t cout)
{
    return 16 * wg_ld(block, cin) + 16 * wg_ld(block, cout) + wg_round16(16 * cin);
}

/* U[xi][ch][o] = (G g G^T)[xi] for the 3x3 kernel g = W[.][.][ch][o]; 0 if a
   weight is beyond WG_LIMIT. */
static int wg_filter(float *U, const float *W, int64_t cin, int64_t cout)
{
    int bad = 0;
    const int64_t cc = cin * cout;
    for (int64_t k = 0; k < cc; k++) {
        float g[3][3], t[4][3];
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) {
                g[i][j] = W[(i * 3 + j) * cc + k];
                bad |= !(fabsf(g[i][j]) <= WG_LIMIT);
            }
        for (int j = 0; j < 3; j++) {
            t[0][j] = g[0][j];
            t[1][j] = 0.5f * (g[0][j] + g[1][j] + g[2][j]);
            t[2][j] = 0.5f * (g[0][j] - g[1][j] + g[2][j]);
            t[3][j] = g[2][j];
        }
        for (int r = 0; r < 4; r++) {
            float *u = U + 4 * r * cc + k;
            u[0] = t[r][0];
            u[cc] = 0.5f * (t[r][0] + t[r][1] + t[r][2]);
            u[2 * cc] = 0.5f * (t[r][0] - t[r][1] + t[r][2]);
            u[3 * cc] = t[r][2];
        }
    }
    return !bad;
}

/* V[xi][u][0:cin] = (B^T d B)[xi] of the window d at `src` (4 x 4 pixels
   of a padded image with row stride ldr floats); 1 if a value of d is
   beyond WG_LIMIT. */
FASTNN_CLONES
static int wg_input(float *V, int64_t ldv, const float *src, int64_t ldr, int64_t cin)
{
    int bad = 0;
#pragma omp simd reduction(| : bad)
    for (int64_t ch = 0; ch < cin; ch++) {
        float d[4][4], t[4][4];
        for (int r = 0; r < 4; r++)
            for (int s = 0; s < 4; s++) {
                d[r][s] = src[r * ldr + s * cin + ch];
                bad |= !(fabsf(d[r][s]) <= WG_LIMIT);
            }
        for (int s = 0; s < 4; s++) {
            t[0][s] = d[0][s] - d[2][s];
            t[1][s] = d[1][s] + d[2][s];
            t[2][s] = d[2][s] - d[1][s];
            t[3][s] = d[1][s] - d[3][s];
        }
        for (int r = 0; r < 4; r++) {
            float *v = V + 4 * r * ldv + ch;
            v[0] = t[r][0] - t[r][2];
            v[ldv] = t[r][1] + t[r][2];
            v[2 * ldv] = t[r][2] - t[r][1];
            v[3 * ldv] = t[r][1] - t[r][3];
        }
    }
    return bad;
}

/* The 2x2 outputs at dst (row stride ldr floats) = act(A^T m A + bias) of
   M[xi][u][0:cout] (xi-stride ldm). */
static inline __attribute__((always_inline))
void wg_output_body(float *dst, int64_t ldr, const float *M, int64_t ldm, const float *bias,
                    int64_t cout, int act, float slope)
{
#pragma omp simd
    for (int64_t o = 0; o < cout; o++) {
        float m[4][4], a[2][4];
        for (int r = 0; r < 4; r++)
            for (int s = 0; s < 4; s++)
                m[r][s] = M[(4 * r + s) * ldm + o];
        for (int s = 0; s < 4; s++) {
            a[0][s] = m[0][s] + m[1][s] + m[2][s];
            a[1][s] = m[1][s] - m[2][s] - m[3][s];
        }
        const float b0 = bias ? bias[o] : 0.0f;
        for (int r = 0; r < 2; r++) {
            float y0 = a[r][0] + a[r][1] + a[r][2] + b0;
            float y1 = a[r][1] - a[r][2] - a[r][3] + b0;
            if (act == FASTNN_ACT_RELU) {
                y0 = y0 < 0.0f ? 0.0f : y0;
                y1 = y1 < 0.0f ? 0.0f : y1;
            } else if (act == FASTNN_ACT_LEAKY_RELU) {
                y0 = y0 > 0.0f ? y0 : y0 * slope;
                y1 = y1 > 0.0f ? y1 : y1 * slope;
            }
            dst[r * ldr + o] = y0;
            dst[r * ldr + cout + o] = y1;
        }
    }
}

FASTNN_CLONES
static void wg_output(float *dst, int64_t ldr, const float *M, int64_t ldm, const float *bias,
                      int64_t cout, int act, float slope)
{
    if (act == FASTNN_ACT_RELU)
        wg_output_body(dst, ldr, M, ldm, bias, cout, FASTNN_ACT_RELU, slope);
    else if (act == FASTNN_ACT_LEAKY_RELU)
        wg_output_body(dst, ldr, M, ldm, bias, cout, FASTNN_ACT_LEAKY_RELU, slope);
    else {
        wg_output_body(dst, ldr, M, ldm, bias, cout, FASTNN_ACT_IDENTITY, slope);
        if (act != FASTNN_ACT_IDENTITY)
            for (int r = 0; r < 2; r++)
                for (int64_t o = 0; o < 2 * cout; o++)
                    dst[r * ldr + o] = fastnn_act_scalar(act, dst[r * ldr + o], slope);
    }
}

/* The 2x2 outputs at dst by the direct sum over the 4x4 window at src (a
   tile with a value beyond WG_LIMIT). */
static void wg_direct_tile(float *dst, int64_t ldr, const float *src, int64_t ldi,
                           const float *W, const float *bias, int64_t cin, int64_t cout,
                           int act, float slope)
{
    for (int y = 0; y < 2; y++)
        for (int x = 0; x < 2; x++)
            for (int64_t o = 0; o < cout; o++) {
                float acc = 0.0f;
                for (int i = 0; i < 3; i++)
                    for (int j = 0; j < 3; j++) {
                        const float *in = src + (y + i) * ldi + (x + j) * cin;
                        const float *w = W + (i * 3 + j) * cin * cout + o;
                        for (int64_t ch = 0; ch < cin; ch++)
                            acc += in[ch] * w[ch * cout];
                    }
                if (bias)
                    acc += bias[o];
                dst[y * ldr + x * cout + o] = fastnn_act_scalar(act, acc, slope);
            }
}

#ifdef HAVE_X86
/* The transforms with AVX-512 for channel counts that are multiples of 16:
   GCC's vectorisation of the C versions above spills its 32 pointers and
   ran at ~170 cycles per tile and 16 channels. */
__attribute__((target("avx512f"))) static int wg_input_avx512(float *V, int64_t ldv,
                                                              const float *src, int64_t ldr,
                                                              int64_t cin)
{
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    __m512i big = _mm512_setzero_si512();
    for (int64_t ch = 0; ch < cin; ch += 16) {
        __m512 d[4][4], t[4][4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
            for (int s = 0; s < 4; s++) {
                d[r][s] = _mm512_loadu_ps(src + r * ldr + s * cin + ch);
                big = _mm512_max_epu32(big, _mm512_and_si512(_mm512_castps_si512(d[r][s]),
                                                             absmask));
            }
#pragma GCC unroll 4
        for (int s = 0; s < 4; s++) {
            t[0][s] = _mm512_sub_ps(d[0][s], d[2][s]);
            t[1][s] = _mm512_add_ps(d[1][s], d[2][s]);
            t[2][s] = _mm512_sub_ps(d[2][s], d[1][s]);
            t[3][s] = _mm512_sub_ps(d[1][s], d[3][s]);
        }
        float *v = V + ch;
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            _mm512_storeu_ps(v, _mm512_sub_ps(t[r][0], t[r][2]));
            v += ldv;
            _mm512_storeu_ps(v, _mm512_add_ps(t[r][1], t[r][2]));
            v += ldv;
            _mm512_storeu_ps(v, _mm512_sub_ps(t[r][2], t[r][1]));
            v += ldv;
            _mm512_storeu_ps(v, _mm512_sub_ps(t[r][1], t[r][3]));
            v += ldv;
        }
    }
    /* |x|'s bits above the limit's: beyond it, inf or NaN */
    const float lim = WG_LIMIT;
    int32_t limbits;
    memcpy(&limbits, &lim, sizeof limbits);
    return _mm512_cmpgt_epu32_mask(big, _mm512_set1_epi32(limbits)) != 0;
}

__attribute__((target("avx512f"))) static inline __attribute__((always_inline))
void wg_output_avx512_body(float *dst, int64_t ldr, const float *M, int64_t ldm,
                           const float *bias, int64_t cout, int act, float slope)
{
    const __m512 zero = _mm512_setzero_ps(), sl = _mm512_set1_ps(slope);
    for (int64_t o = 0; o < cout; o += 16) {
        __m512 a[2][4];
        const float *m = M + o;
#pragma GCC unroll 4
        for (int s = 0; s < 4; s++) {
            const __m512 m0 = _mm512_loadu_ps(m + s * ldm), m1 = _mm512_loadu_ps(m + (4 + s) * ldm),
                         m2 = _mm512_loadu_ps(m + (8 + s) * ldm),
                         m3 = _mm512_loadu_ps(m + (12 + s) * ldm);
            a[0][s] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
            a[1][s] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
        }
        const __m512 b0 = bias ? _mm512_loadu_ps(bias + o) : zero;
#pragma GCC unroll 2
        for (int r = 0; r < 2; r++) {
            __m512 y0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a[r][0], a[r][1]), a[r][2]), b0);
            __m512 y1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(a[r][1], a[r][2]), a[r][3]), b0);
            if (act == FASTNN_ACT_RELU) {    /* max(0, NaN) keeps the NaN */
                y0 = _mm512_max_ps(zero, y0);
                y1 = _mm512_max_ps(zero, y1);
            } else if (act == FASTNN_ACT_LEAKY_RELU) {
                y0 = _mm512_mask_mul_ps(y0, _mm512_cmp_ps_mask(y0, zero, _CMP_LE_OQ), y0, sl);
                y1 = _mm512_mask_mul_ps(y1, _mm512_cmp_ps_mask(y1, zero, _CMP_LE_OQ), y1, sl);
            }
            _mm512_storeu_ps(dst + r * ldr + o, y0);
            _mm512_storeu_ps(dst + r * ldr + cout + o, y1);
        }
    }
}

__attribute__((target("avx512f"))) static void wg_output_avx512(float *dst, int64_t ldr,
                                                                const float *M, int64_t ldm,
                                                                const float *bias, int64_t cout,
                                                                int act, float slope)
{
    if (act == FASTNN_ACT_RELU)
        wg_output_avx512_body(dst, ldr, M, ldm, bias, cout, FASTNN_ACT_RELU, slope);
    else if (act == FASTNN_ACT_LEAKY_RELU)
        wg_output_avx512_body(dst, ldr, M, ldm, bias, cout, FASTNN_ACT_LEAKY_RELU, slope);
    else {
        wg_output_avx512_body(dst, ldr, M, ldm, bias, cout, FASTNN_ACT_IDENTITY, slope);
        if (act != FASTNN_ACT_IDENTITY)
            for (int r = 0; r < 2; r++)
                for (int64_t o = 0; o < 2 * cout; o++)
                    dst[r * ldr + o] = fastnn_act_scalar(act, dst[r * ldr + o], slope);
    }
}
#endif

typedef struct {
    const float *in, *W, *U, *bias;
    float *out;
    int64_t ih, iw, ph, pw;   /* in is (n, ih, iw, cin), read as if zero-padded by (ph, pw) */
    int64_t cin, cout, th, tw, tiles, block;
    int act;
    float slope;
} wg_args;

/* The 4x4 window of tile t (its image, tile row, tile column): in place
   when it lies inside the image (*ldr = its row stride), else gathered
   into win (16 cin floats, zeros outside the image; *ldr = 4 cin). */
static const float *wg_window(const wg_args *g, int64_t t, float *win, int64_t *ldr)
{
    const int64_t cin = g->cin, img = t / (g->th * g->tw), y0 = 2 * (t / g->tw % g->th) - g->ph,
                  x0 = 2 * (t % g->tw) - g->pw;
    if (y0 >= 0 && y0 + 4 <= g->ih && x0 >= 0 && x0 + 4 <= g->iw) {
        *ldr = g->iw * cin;
        return g->in + ((img * g->ih + y0) * g->iw + x0) * cin;
    }
    for (int64_t r = 0; r < 4; r++)
        for (int64_t s = 0; s < 4; s++) {
            const int64_t y = y0 + r, x = x0 + s;
            float *d = win + (r * 4 + s) * cin;
            if (y >= 0 && y < g->ih && x >= 0 && x < g->iw)
                memcpy(d, g->in + ((img * g->ih + y) * g->iw + x) * cin, (size_t)cin * sizeof *d);
            else
                memset(d, 0, (size_t)cin * sizeof *d);
        }
    *ldr = 4 * cin;
    return win;
}

/* Blocks [b0, b1) of tiles, with the thread's scratch. */
static void wg_blocks(const cpath *P, const wg_args *g, float *scratch, int64_t b0, int64_t b1)
{
    const int64_t cin = g->cin, cout = g->cout, oh = 2 * g->th, ow = 2 * g->tw;
    const int64_t ldv = wg_ld(g->block, cin), ldm = wg_ld(g->block, cout);
    float *V = scratch, *M = scratch + 16 * ldv, *win = M + 16 * ldm;
    unsigned char bad[WG_BLOCK];
#ifdef HAVE_X86
    const int avx512 = fastnn_simd_path() == FASTNN_SIMD_AVX512;
    const int vin = avx512 && cin % 16 == 0, vout = avx512 && cout % 16 == 0;
#else
#define wg_input_avx512 wg_input
#define wg_output_avx512 wg_output
    const int vin = 0, vout = 0;
#endif
    int64_t roff[MR_MAX], aoff[1], boff[1] = {0};
    for (int64_t blk = b0; blk < b1; blk++) {
        const int64_t t0 = blk * g->block, nb = min64(g->block, g->tiles - t0);
        for (int64_t u = 0; u < nb; u++) {
            int64_t ldr;
            const float *src = wg_window(g, t0 + u, win, &ldr);
            bad[u] = (unsigned char)(vin ? wg_input_avx512(V + u * cin, ldv, src, ldr, cin)
                                         : wg_input(V + u * cin, ldv, src, ldr, cin));
        }
        for (int64_t xi = 0; xi < 16; xi++)
            for (int64_t r0 = 0; r0 < nb; r0 += P->mr) {
                const int mv = (int)min64(P->mr, nb - r0);
                for (int i = 0; i < P->mr; i++)
                    roff[i] = (i < mv ? i : 0) * cin;
                aoff[0] = xi * ldv + r0 * cin;
                for (int64_t jc = 0; jc < cout; jc += P->nr) {
                    ctile t = {V, roff, aoff, boff, 1, cin, 1, g->U + xi * cin * cout + jc, cout,
                               M + xi * ldm + r0 * cout + jc, cout, mv,
                               (int)min64(P->nr, cout - jc), 0, 0, NULL, FASTNN_ACT_IDENTITY,
                               0.0f};
                    P->kernel(&t);
                }
            }
        for (int64_t u = 0; u < nb; u++) {
            const int64_t t = t0 + u, img = t / (g->th * g->tw), ty = t / g->tw % g->th,
                          tx = t % g->tw;
            float *dst = g->out + ((img * oh + 2 * ty) * ow + 2 * tx) * cout;
            if (bad[u]) {
                int64_t ldr;
                const float *src = wg_window(g, t, win, &ldr);
                wg_direct_tile(dst, ow * cout, src, ldr, g->W, g->bias, cin, cout, g->act,
                               g->slope);
            } else if (vout) {
                wg_output_avx512(dst, ow * cout, M + u * cout, ldm, g->bias, cout, g->act,
                                 g->slope);
            } else {
                wg_output(dst, ow * cout, M + u * cout, ldm, g->bias, cout, g->act, g->slope);
            }
        }
    }
}

typedef struct {
    const cpath *P;
    const wg_args *g;
    float *scratch;
    int64_t per, blocks;
} wg_job;

/* Share tid of n of the blocks, with its own scratch. */
static void wg_share(void *arg, int tid, int n)
{
    const wg_job *j = arg;
    wg_blocks(j->P, j->g, j->scratch + tid * j->per, tid * j->blocks / n,
              (tid + 1) * j->blocks / n);
}

int fastnn_conv3x3_winograd(float *out, const float *in, const float *W, const float *bias,
                            int64_t n, int64_t hp, int64_t wp, int64_t cin, int64_t cout, int act,
                            float slope, float *ws, int64_t ws_size)
{
    return fastnn_conv3x3_winograd_pad(out, in, W, bias, n, hp, wp, 0, 0, cin, cout, act, slope,
                                       ws, ws_size);
}

int fastnn_conv3x3_winograd_pad(float *out, const float *in, const float *W, const float *bias,
                                int64_t n, int64_t ih, int64_t iw, int64_t ph, int64_t pw,
                                int64_t cin, int64_t cout, int act, float slope, float *ws,
                                int64_t ws_size)
{
    int64_t hp, wp;
    if (ph < 0 || pw < 0 || ph > 2 || pw > 2 || !fastnn_add(&hp, ih, 2 * ph)
        || !fastnn_add(&wp, iw, 2 * pw))
        return 0;
    const int64_t oh = hp - 2, ow = wp - 2;
    if (cin < WG_MIN_CHANNELS || cout < WG_MIN_CHANNELS || oh < 2 || ow < 2 || oh % 2
        || ow % 2)
        return 0;
    if (ws_size < 16 || (uintptr_t)ws % sizeof *ws)
        return 0;
    ws = wg_align(ws, &ws_size);
    const int64_t th = oh / 2, tw = ow / 2, tiles = n * th * tw;
    const int64_t usize = wg_round16(16 * cin * cout);
    /* The block size from the workspace, never from the thread count (it
       does not change the bits: every tile's sums are its own). */
    int64_t block = min64(WG_BLOCK, tiles), per = wg_scratch(block, cin, cout);
    while (block > 1 && (ws_size < usize || ws_size - usize < per)) {
        block = (block + 1) / 2;
        per = wg_scratch(block, cin, cout);
    }
    if (ws_size < usize || ws_size - usize < per || !wg_filter(ws, W, cin, cout))
        return 0;
    const cpath P = conv_path(cout);
    const int64_t blocks = ceil_div(tiles, block);
    const wg_args g = {in,  W,    ws,   bias, out,   ih,    iw,  ph, pw, cin,
                       cout, th, tw, tiles, block, act, slope};
    float *scratch = ws + usize;
    int T = team((double)n * oh * ow * 4 * cin * cout, blocks);   /* 16 per 2x2 block */
    T = (int)min64(T, (ws_size - usize) / per);   /* the bits do not depend on T */
    if (T < 2) {
        wg_blocks(&P, &g, scratch, 0, blocks);
        return 1;
    }
    const wg_job j = {&P, &g, scratch, per, blocks};
    fastnn_team_run(T, wg_share, (void *)&j);
    return 1;
}

/* ---- dW of a 3x3 stride-1 convolution by Winograd F(3x3, 2x2) ------------------------
   The gradient of F(2x2, 3x3) with respect to its filter: for a 2x2 block z
   of dZ and the 4x4 window d of the padded input under it, the block's
   share of dW is G^T [(A z A^T) . (B^T d B)] G, so the sum over the blocks
   is G^T M G with M[xi] = sum_t V_t[xi]^T Z_t[xi]: 16 products (cin x
   tiles) (tiles x cout), 2.25x fewer multiply-adds than the direct sum.
   The tiles are taken in chunks fixed by the geometry (never by the thread
   count): the team transforms a chunk, then each thread adds the chunk's
   products to its own tiles of M in chunk order, so the bits do not depend
   on the thread count.  A value beyond WG_LIMIT in the input or dZ (inf,
   NaN, huge) stops it: the caller then runs the direct dW. */

#ifndef WG_DW_CHUNK
#define WG_DW_CHUNK 128      /* tiles per chunk (fewer when the workspace is short) */
#endif

/* Z[xi][u][0:cout] = (A z A^T)[xi] of the 2x2 block z at src (row stride
   ldr floats); 1 if a value of z is beyond WG_LIMIT. */
FASTNN_CLONES
static int wg_dz(float *Z, int64_t ldz, const float *src, int64_t ldr, int64_t cout)
{
    int bad = 0;
#pragma omp simd reduction(| : bad)
    for (int64_t o = 0; o < cout; o++) {
        float z[2][2], w[4][2];
        for (int a = 0; a < 2; a++)
            for (int b = 0; b < 2; b++) {
                z[a][b] = src[a * ldr + b * cout + o];
                bad |= !(fabsf(z[a][b]) <= WG_LIMIT);
            }
        for (int b = 0; b < 2; b++) {
            w[0][b] = z[0][b];
            w[1][b] = z[0][b] + z[1][b];
            w[2][b] = z[0][b] - z[1][b];
            w[3][b] = -z[1][b];
        }
        for (int r = 0; r < 4; r++) {
            float *v = Z + 4 * r * ldz + o;
            v[0] = w[r][0];
            v[ldz] = w[r][0] + w[r][1];
            v[2 * ldz] = w[r][0] - w[r][1];
            v[3 * ldz] = -w[r][1];
        }
    }
    return bad;
}

typedef struct {
    const float *in, *dZ;
    float *M, *V, *Z;
    int64_t hp, wp, cin, cout, th, tw, tiles, chunk, ldv, ldz;
} wgdw_args;

/* Chunk tiles [u0, u1) of chunk t0: V and Z; 1 if a value is beyond the limit. */
static int wgdw_transform(const wgdw_args *g, int64_t t0, int64_t u0, int64_t u1, int vin)
{
    int bad = 0;
    const int64_t cin = g->cin, cout = g->cout, oh = 2 * g->th, ow = 2 * g->tw;
    for (int64_t u = u0; u < u1; u++) {
        const int64_t t = t0 + u, img = t / (g->th * g->tw), ty = t / g->tw % g->th,
                      tx = t % g->tw;
        const float *src = g->in + ((img * g->hp + 2 * ty) * g->wp + 2 * tx) * cin;
#ifdef HAVE_X86
        bad |= vin ? wg_input_avx512(g->V + u * cin, g->ldv, src, g->wp * cin, cin)
                   : wg_input(g->V + u * cin, g->ldv, src, g->wp * cin, cin);
#else
        bad |= wg_input(g->V + u * cin, g->ldv, src, g->wp * cin, cin);
#endif
        bad |= wg_dz(g->Z + u * cout, g->ldz, g->dZ + ((img * oh + 2 * ty) * ow + 2 * tx) * cout,
                     ow * cout, cout);
    }
    return bad;
}

/* dW (9 cin, cout) = G^T M[.][ch][o] G. */
static void wgdw_inverse(float *dW, const float *M, int64_t cin, int64_t cout)
{
    const int64_t cc = cin * cout;
    for (int64_t k = 0; k < cc; k++) {
        float m[4][4], t[3][4];
        for (int r = 0; r < 4; r++)
            for (int s = 0; s < 4; s++)
                m[r][s] = M[(4 * r + s) * cc + k];
        for (int s = 0; s < 4; s++) {
            t[0][s] = m[0][s] + 0.5f * (m[1][s] + m[2][s]);
            t[1][s] = 0.5f * (m[1][s] - m[2][s]);
            t[2][s] = 0.5f * (m[1][s] + m[2][s]) + m[3][s];
        }
        for (int i = 0; i < 3; i++) {
            float *d = dW + i * 3 * cc + k;
            d[0] = t[i][0] + 0.5f * (t[i][1] + t[i][2]);
            d[cc] = 0.5f * (t[i][1] - t[i][2]);
            d[2 * cc] = 0.5f * (t[i][1] + t[i][2]) + t[i][3];
        }
    }
}

typedef struct {
    const cpath *P;
    const wgdw_args *g;
    int64_t rt, ct, units, chunks;
    int vin;
    int bad;        /* set (atomically) by the thread whose transform saw a value
                       beyond WG_LIMIT */
} wgdw_job;

/* Share tid of n: per chunk of tiles, its part of the transforms, a
   barrier, its units of M, a barrier. */
static void wgdw_share(void *arg, int tid, int nt)
{
    wgdw_job *j = arg;
    const wgdw_args *g = j->g;
    const cpath *P = j->P;
    const int64_t rt = j->rt, ct = j->ct, units = j->units, cin = g->cin, cout = g->cout;
    int64_t roff[MR_MAX], aoff[1], boff[1] = {0};
    for (int64_t k = 0; k < j->chunks; k++) {
        const int64_t t0 = k * g->chunk, nb = min64(g->chunk, g->tiles - t0);
        if (wgdw_transform(g, t0, tid * nb / nt, (tid + 1) * nb / nt, j->vin)) {
#pragma omp atomic write
            j->bad = 1;
        }
        fastnn_job_barrier(nt);
        int stop;
#pragma omp atomic read
        stop = j->bad;
        if (stop)
            break;   /* every thread reads the same flag between the two barriers */
        for (int64_t unit = tid * units / nt; unit < (tid + 1) * units / nt; unit++) {
            const int64_t xi = unit / (rt * ct), r0 = unit / ct % rt * P->mr,
                          jc = unit % ct * P->nr;
            const int mv = (int)min64(P->mr, cin - r0);
            for (int i = 0; i < P->mr; i++)
                roff[i] = r0 + (i < mv ? i : 0);
            aoff[0] = xi * g->ldv;
            ctile t = {g->V, roff, aoff, boff, 1, nb, cin, g->Z + xi * g->ldz + jc, cout,
                       g->M + xi * cin * cout + r0 * cout + jc, cout, mv,
                       (int)min64(P->nr, cout - jc), k > 0, 0, NULL, FASTNN_ACT_IDENTITY,
                       0.0f};
            P->kernel(&t);
        }
        fastnn_job_barrier(nt);
    }
}

int fastnn_conv3x3_winograd_dw(float *dW, const float *in, const float *dZ, int64_t n,
                               int64_t hp, int64_t wp, int64_t cin, int64_t cout, float *ws,
                               int64_t ws_size)
{
    const int64_t oh = hp - 2, ow = wp - 2;
    if (cin < WG_MIN_CHANNELS || cout < WG_MIN_CHANNELS || oh < 2 || ow < 2 || oh % 2
        || ow % 2)
        return 0;
    if (ws_size < 16 || (uintptr_t)ws % sizeof *ws)
        return 0;
    ws = wg_align(ws, &ws_size);
    const int64_t th = oh / 2, tw = ow / 2, tiles = n * th * tw;
    const int64_t msize = wg_round16(16 * cin * cout);
    int64_t chunk = min64(WG_DW_CHUNK, tiles), need = 16 * (wg_ld(chunk, cin) + wg_ld(chunk, cout));
    while (chunk > 1 && (ws_size < msize || ws_size - msize < need)) {
        chunk = (chunk + 1) / 2;
        need = 16 * (wg_ld(chunk, cin) + wg_ld(chunk, cout));
    }
    if (ws_size < msize || ws_size - msize < need)
        return 0;
    const cpath P = conv_path(cout);
    const int64_t rt = ceil_div(cin, P.mr), ct = ceil_div(cout, P.nr), units = 16 * rt * ct;
    const int64_t chunks = ceil_div(tiles, chunk);
    wgdw_args g = {in, dZ, ws, ws + msize, ws + msize + 16 * wg_ld(chunk, cin), hp, wp, cin,
                   cout, th, tw, tiles, chunk, wg_ld(chunk, cin), wg_ld(chunk, cout)};
#ifdef HAVE_X86
    const int vin = fastnn_simd_path() == FASTNN_SIMD_AVX512 && cin % 16 == 0;
#else
    const int vin = 0;
#endif
    const int T = team((double)n * oh * ow * 4 * cin * cout, units);   /* 16 per 2x2 block */
    wgdw_job j = {&P, &g, rt, ct, units, chunks, vin, 0};
    fastnn_team_run(T, wgdw_share, &j);
    const int bad = j.bad;
    if (bad)
        return 0;
    wgdw_inverse(dW, g.M, cin, cout);
    return 1;
}
