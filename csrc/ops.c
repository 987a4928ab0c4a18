/*
 * ops.c -- every fastnn kernel except gemm and dense_forward (gemm.c):
 * dense backward, activations, softmax, losses, optimizer updates and the
 * flat-buffer utilities of gradient clipping.
 *
 * What these kernels promise, beyond fastnn.h:
 *   - Arguments are checked before anything is written; nothing is
 *     allocated (the column sums of db use a small stack block).
 *   - Per-element math is float32.  Loss values, sum_squares and the column
 *     sums of db accumulate in double; optimizer scalars (bias corrections,
 *     step sizes) are computed once per call in double, as torch.optim does
 *     in Python floats, then rounded to float.
 *   - Where the header lets an output be an input (Y == X, dX == dY, ...),
 *     every element is read before the element of the same index is
 *     written, so the in-place call is exact and `omp simd` stays valid.
 *     Partial overlap is not allowed (the Python checks refuse it).
 *   - NaN propagates as in the numpy reference (ternaries, not fmaxf).
 *
 * Structure: each kernel is a serial "span" function over elements (or rows)
 * [lo, hi), vectorised with `omp simd`, and a public function that checks
 * the arguments and runs the span through RUN_SPANS / SUM_SPANS.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>
#include "fastnn.h"
#include "internal.h"

/* Elements per parallel work item. */
#define CHUNK 4096
/* Parallel only above these many elements: a cheap loop (a few flops per
   element, memory-bound) and a loop with exp/log/tanh per element; times
   fastnn_team_factor() (internal.h). */
#define PAR_MIN_CHEAP ((int64_t)(1 << 15) * fastnn_team_factor())
#define PAR_MIN_EXP ((int64_t)(1 << 12) * fastnn_team_factor())
/* Columns of db summed per pass over dZ (a double accumulator each). */
#define DB_BLOCK 256

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- work splitting --------------------------------------------------------- */
/* RUN_SPANS(n, span, wide, call): run `call` (an expression using lo and hi)
   once over [0, n) on the calling thread when `wide` is false or one
   thread is configured, else over spans of `span` items shared by the team
   (contiguous blocks per thread: schedule(static)).  Small work never enters
   OpenMP: opening a parallel region costs about a microsecond even under a
   false if() clause.  SUM_SPANS does the same for a call returning a double
   and stores the sum in `total` (below: on fixed pieces). */
#define PRAGMA_(x) _Pragma(#x)
#define RUN_SPANS(n, span, wide, ...)                                       \
    do {                                                                         \
        const int64_t n_ = (n), span_ = (span);                                  \
        if (!(wide) || fastnn_get_num_threads() < 2) {                       \
            const int64_t lo = 0, hi = n_;                                       \
            __VA_ARGS__;                                                          \
        } else {                                                                 \
            PRAGMA_(omp parallel for num_threads(fastnn_get_num_threads())       \
                    schedule(static))                                            \
            for (int64_t lo = 0; lo < n_; lo += span_) {                         \
                const int64_t hi = min64(lo + span_, n_);                        \
                __VA_ARGS__;                                                      \
            }                                                                    \
            fastnn_team_rest();                                                  \
        }                                                                        \
    } while (0)

/* The optimizer updates: RUN_SPANS with denormals flushed to zero (see
   FASTNN_DENORMALS_AS_ZERO in internal.h). */
#define UPDATE_SPANS(n, ...)                                                     \
    RUN_SPANS(n, CHUNK, (n) > PAR_MIN_CHEAP, FASTNN_DENORMALS_AS_ZERO(__VA_ARGS__))

/* A sum is cut into pieces on fixed boundaries -- at most MAX_PIECES runs of
   whole spans, where they fall depending only on n and span -- and the
   pieces' sums are added in piece order.  So the value is the same bits
   whatever the thread count (an OpenMP reduction(+) combines the threads'
   partial sums in the order they finish, and each thread's share moves
   with the thread count).  One piece when n fits one span (the small sums
   run as before). */
#define MAX_PIECES 64

/* Piece q of np pieces over `spans` spans of `span` items: [*lo, *hi) of
   [0, n) (no product that could pass int64). */
static inline void piece_bounds(int64_t n, int64_t span, int64_t spans, int64_t np, int64_t q,
                                int64_t *lo, int64_t *hi)
{
    const int64_t base = spans / np, rem = spans % np;
    const int64_t s0 = q * base + (q < rem ? q : rem);
    const int64_t s1 = s0 + base + (q < rem);
    *lo = s0 > n / span ? n : s0 * span;
    *hi = s1 > n / span ? n : s1 * span;
}

#define SUM_SPANS(total, n, span, wide, ...)                                \
    do {                                                                         \
        const int64_t n_ = (n), span_ = (span);                                  \
        const int64_t spans_ = n_ / span_ + (n_ % span_ != 0);                   \
        const int64_t np_ = spans_ < MAX_PIECES ? spans_ : MAX_PIECES;           \
        if (np_ <= 1) {                                                          \
            const int64_t lo = 0, hi = n_;                                       \
            total = (__VA_ARGS__);                                               \
        } else {                                                                 \
            double part_[MAX_PIECES];                                            \
            if (!(wide) || fastnn_get_num_threads() < 2) {                       \
                for (int64_t q_ = 0; q_ < np_; q_++) {                           \
                    int64_t lo, hi;                                              \
                    piece_bounds(n_, span_, spans_, np_, q_, &lo, &hi);          \
                    part_[q_] = (__VA_ARGS__);                                   \
                }                                                                \
            } else {                                                             \
                PRAGMA_(omp parallel for num_threads(fastnn_get_num_threads())   \
                        schedule(static))                                        \
                for (int64_t q_ = 0; q_ < np_; q_++) {                           \
                    int64_t lo, hi;                                              \
                    piece_bounds(n_, span_, spans_, np_, q_, &lo, &hi);          \
                    part_[q_] = (__VA_ARGS__);                                   \
                }                                                                \
                fastnn_team_rest();                                              \
            }                                                                    \
            total = 0.0;                                                         \
            for (int64_t q_ = 0; q_ < np_; q_++)                                 \
                total += part_[q_];                                              \
        }                                                                        \
    } while (0)

/* Rows per span for row kernels: about CHUNK elements, at least one row. */
static inline int64_t row_span(int64_t c) { return c >= CHUNK ? 1 : CHUNK / c; }

/* ---- activations ---------------------------------------------------------- */

static inline int valid_act(int act)
{
    return act >= FASTNN_ACT_IDENTITY && act <= FASTNN_ACT_SOFTPLUS;
}

static inline int64_t act_par_min(int act)
{
    int costly = act == FASTNN_ACT_SIGMOID || act == FASTNN_ACT_TANH
                 || act == FASTNN_ACT_SOFTPLUS;
    return costly ? PAR_MIN_EXP : PAR_MIN_CHEAP;
}

/* act'(x) through the output y = act(x): reference.py `_act_grad`. */
static inline float act_grad_scalar(int act, float y, float slope)
{
    switch (act) {
    case FASTNN_ACT_STEP:
    case FASTNN_ACT_SIGN:
        return 0.0f;
    case FASTNN_ACT_SIGMOID:
        return y * (1.0f - y);
    case FASTNN_ACT_TANH:
        return 1.0f - y * y;
    case FASTNN_ACT_RELU:
        return y > 0.0f ? 1.0f : 0.0f;
    case FASTNN_ACT_LEAKY_RELU:
        return y > 0.0f ? 1.0f : slope;
    case FASTNN_ACT_SOFTPLUS:
        /* y = log(1 + e^x)  =>  sigmoid(x) = 1 - e^-y */
        return -expm1f(-y);
    default:                                            /* identity */
        return 1.0f;
    }
}

/* The span functions switch once; each case inlines the scalar helper with a
   constant `act`, so its switch folds away and every activation gets a loop
   of its own (vectorised where no libm call). */

static inline void act_forward_loop(float *Y, const float *X, int64_t lo, int64_t hi,
                                    int act, float slope)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++)
        Y[i] = fastnn_act_scalar(act, X[i], slope);
}

static inline void act_backward_loop(float *dX, const float *dY, const float *Y,
                                     int64_t lo, int64_t hi, int act, float slope)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++)
        dX[i] = dY[i] * act_grad_scalar(act, Y[i], slope);
}

/* Y = act(X) over [lo, hi); Y may be X. */
FASTNN_CLONES
static void act_forward_span(float *Y, const float *X, int64_t lo, int64_t hi, int act,
                             float slope)
{
    switch (act) {
    case FASTNN_ACT_IDENTITY:
        if (Y != X)
            memcpy(Y + lo, X + lo, (size_t)(hi - lo) * sizeof *Y);
        break;
    case FASTNN_ACT_STEP: act_forward_loop(Y, X, lo, hi, FASTNN_ACT_STEP, slope); break;
    case FASTNN_ACT_SIGN: act_forward_loop(Y, X, lo, hi, FASTNN_ACT_SIGN, slope); break;
    case FASTNN_ACT_SIGMOID: act_forward_loop(Y, X, lo, hi, FASTNN_ACT_SIGMOID, slope); break;
    case FASTNN_ACT_TANH: act_forward_loop(Y, X, lo, hi, FASTNN_ACT_TANH, slope); break;
    case FASTNN_ACT_RELU: act_forward_loop(Y, X, lo, hi, FASTNN_ACT_RELU, slope); break;
    case FASTNN_ACT_LEAKY_RELU:
        act_forward_loop(Y, X, lo, hi, FASTNN_ACT_LEAKY_RELU, slope);
        break;
    default: act_forward_loop(Y, X, lo, hi, FASTNN_ACT_SOFTPLUS, slope); break;
    }
}

/* dX = dY * act'(Y) over [lo, hi); dX may be dY. */
FASTNN_CLONES
static void act_backward_span(float *dX, const float *dY, const float *Y, int64_t lo,
                              int64_t hi, int act, float slope)
{
    switch (act) {
    case FASTNN_ACT_IDENTITY:
        if (dX != dY)
            memcpy(dX + lo, dY + lo, (size_t)(hi - lo) * sizeof *dX);
        break;
    case FASTNN_ACT_STEP:   /* dY * 0, not 0: a NaN or inf in dY shows, as in the reference */
    case FASTNN_ACT_SIGN: act_backward_loop(dX, dY, Y, lo, hi, FASTNN_ACT_STEP, slope); break;
    case FASTNN_ACT_SIGMOID:
        act_backward_loop(dX, dY, Y, lo, hi, FASTNN_ACT_SIGMOID, slope);
        break;
    case FASTNN_ACT_TANH: act_backward_loop(dX, dY, Y, lo, hi, FASTNN_ACT_TANH, slope); break;
    case FASTNN_ACT_RELU: act_backward_loop(dX, dY, Y, lo, hi, FASTNN_ACT_RELU, slope); break;
    case FASTNN_ACT_LEAKY_RELU:
        act_backward_loop(dX, dY, Y, lo, hi, FASTNN_ACT_LEAKY_RELU, slope);
        break;
    default: act_backward_loop(dX, dY, Y, lo, hi, FASTNN_ACT_SOFTPLUS, slope); break;
    }
}

/* The elementwise kernels as slices on the team of an epoch
   (fastnn_team_slices): their arguments, and each slice's call. */
struct ew_ctx {
    float *y;
    const float *x, *z;
    int act;
    float a, b;
};

static int act_forward_slice(const void *p, int64_t lo, int64_t hi)
{
    const struct ew_ctx *c = p;
    act_forward_span(c->y, c->x, lo, hi, c->act, c->a);
    return FASTNN_OK;
}

static int act_backward_slice(const void *p, int64_t lo, int64_t hi)
{
    const struct ew_ctx *c = p;
    act_backward_span(c->y, c->x, c->z, lo, hi, c->act, c->a);
    return FASTNN_OK;
}

int fastnn_activation_forward(float *Y, const float *X, int64_t size, int act, float slope)
{
    if (!Y || !X || size < 0 || !valid_act(act))
        return FASTNN_EINVAL;
    const struct ew_ctx ec = {Y, X, NULL, act, slope, 0.0f};
    int rc;
    if (fastnn_team_slices(0, size, CHUNK, size > act_par_min(act), act_forward_slice, &ec, &rc))
        return rc;
    RUN_SPANS(size, CHUNK, size > act_par_min(act),
              act_forward_span(Y, X, lo, hi, act, slope));
    return FASTNN_OK;
}

int fastnn_activation_backward(float *dX, const float *dY, const float *Y, int64_t size,
                               int act, float slope)
{
    if (!dX || !dY || !Y || size < 0 || !valid_act(act))
        return FASTNN_EINVAL;
    const struct ew_ctx ec = {dX, dY, Y, act, slope, 0.0f};
    int rc;
    if (fastnn_team_slices(0, size, CHUNK, size > act_par_min(act), act_backward_slice, &ec, &rc))
        return rc;
    RUN_SPANS(size, CHUNK, size > act_par_min(act),
              act_backward_span(dX, dY, Y, lo, hi, act, slope));
    return FASTNN_OK;
}

/* Columns [j0, j1) of m rows w apart (internal.h): the public kernels'
   per-element arithmetic, one serial pass a row on the calling thread --
   no validation or thread decision per row (a threaded
   epoch's columns of a 512-row batch were 512 calls). */
void fastnn_act_rows(float *D, const float *Y, int64_t m, int64_t w, int64_t j0, int64_t j1,
                     int act, float slope, int backward)
{
    for (int64_t i = 0; i < m; i++) {
        float *d = D + i * w;
        const float *y = Y + i * w;
        if (backward)
            act_backward_span(d, d, y, j0, j1, act, slope);
        else
            act_forward_span(d, y, j0, j1, act, slope);
    }
}

/* ---- dense layer backward --------------------------------------------------- */

/* db[lo, hi) = column sums of dZ (n,c) in double, DB_BLOCK columns per pass
   so the accumulators stay on the stack and rows are read contiguously. */
FASTNN_CLONES
static void column_sums_span(float *db, const float *dZ, int64_t n, int64_t c,
                             int64_t lo, int64_t hi)
{
    for (int64_t j0 = lo; j0 < hi; j0 += DB_BLOCK) {
        const int64_t w = min64(DB_BLOCK, hi - j0);
        double acc[DB_BLOCK];
        for (int64_t j = 0; j < w; j++)
            acc[j] = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const float *row = dZ + i * c + j0;
#pragma omp simd
            for (int64_t j = 0; j < w; j++)
                acc[j] += row[j];
        }
        for (int64_t j = 0; j < w; j++)
            db[j0 + j] = (float)acc[j];
    }
}

/* dY, Y, dZ (n,out), X (n,in), W (in,out); dW (in,out), db (out), dX (n,in). */
void fastnn_column_sums(float *db, const float *dZ, int64_t n, int64_t c, int64_t lo,
                        int64_t hi)
{
    column_sums_span(db, dZ, n, c, lo, hi);
}

struct db_ctx {
    float *db;
    const float *dZ;
    int64_t n, out;
};

static int db_slice(const void *p, int64_t lo, int64_t hi)
{
    const struct db_ctx *c = p;
    column_sums_span(c->db, c->dZ, c->n, c->out, lo, hi);
    return FASTNN_OK;
}

int fastnn_dense_backward(float *dX, float *dW, float *db, float *dZ,
                          const float *dY, const float *X, const float *W,
                          const float *Y, int64_t n, int64_t in, int64_t out,
                          int act, float slope)
{
    int64_t n_in, in_out, n_out;
    if (!dW || !dZ || !dY || !X || !W || !Y || n < 1 || in < 1 || out < 1
        || !valid_act(act) || !fastnn_product(&n_in, n, in) || !fastnn_product(&in_out, in, out)
        || !fastnn_product(&n_out, n, out))
        return FASTNN_EINVAL;
    int rc = fastnn_activation_backward(dZ, dY, Y, n_out, act, slope);
    if (rc != FASTNN_OK)
        return rc;
    const struct db_ctx dc = {db, dZ, n, out};
    if (db && !fastnn_team_slices(0, out, DB_BLOCK, n_out > PAR_MIN_CHEAP && out > DB_BLOCK,
                                  db_slice, &dc, &rc))
        RUN_SPANS(out, DB_BLOCK, n_out > PAR_MIN_CHEAP && out > DB_BLOCK,
                  column_sums_span(db, dZ, n, out, lo, hi));
    /* dW = X^T dZ: op(A) = X^T is (in, n) read from X (n, in). */
    rc = fastnn_gemm(1, 0, in, out, n, 1.0f, X, in, dZ, out, 0.0f, dW, out);
    /* dX = dZ W^T: op(B) = W^T is (out, in) read from W (in, out). */
    if (rc == FASTNN_OK && dX)
        rc = fastnn_gemm(0, 1, n, in, out, 1.0f, dZ, out, W, out, 0.0f, dX, in);
    return rc;
}

/* ---- softmax ---------------------------------------------------------------- */

/* y (c) = softmax(x), max-shifted; returns log(sum(exp(x))) in double.
   y may be x: the max is taken before anything is written.  The scalar
   form (libm's expf per element): the reference of softmax_row_avx512. */
static double softmax_row_scalar(float *y, const float *x, int64_t c)
{
    float mx = x[0];
    for (int64_t j = 1; j < c; j++)
        mx = x[j] > mx ? x[j] : mx;
    double s = 0.0;
    for (int64_t j = 0; j < c; j++) {
        const float e = expf(x[j] - mx);
        y[j] = e;
        s += e;
    }
    const float sf = (float)s;
#pragma omp simd
    for (int64_t j = 0; j < c; j++)
        y[j] /= sf;
    return (double)mx + log(s);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_SOFTMAX_AVX512 1

/* exp of 16 lanes, within ~2 ulp of expf: x = n ln2 + r (Cody-Waite, n =
   round(x / ln2), |r| <= ln2 / 2), e^r by its degree-7 Taylor polynomial
   (truncation < 6e-9 relative), scaled by 2^n with vscalefps, which gives
   0 below the range (through the denormals, as expf) and inf above it.
   x is clamped to [-104, 89] first (-inf -> 0, +inf -> inf; max/min keep
   a NaN lane NaN: each returns its second operand when either is NaN). */
__attribute__((target("avx512f,fma"))) static inline __m512 exp16(__m512 x)
{
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* The first min(w, 16) of 16 lanes (w >= 1). */
static inline __mmask16 lanes(int64_t w)
{
    return w >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << w) - 1u);
}

/* softmax_row with 16 lanes at a time (masked at the row's end): the max,
   then exp and the sum in double (16 lanes, two 8-lane double sums per
   vector, added in one fixed order), then the division, as the scalar
   form.  A NaN anywhere makes the sum NaN, as there. */
__attribute__((target("avx512f,fma"))) static double softmax_row_avx512(float *y,
                                                                       const float *x,
                                                                       int64_t c)
{
    __m512 vmx = _mm512_set1_ps(x[0]);
    for (int64_t j = 0; j < c; j += 16) {
        const __mmask16 k = lanes(c - j);
        vmx = _mm512_mask_max_ps(vmx, k, vmx, _mm512_maskz_loadu_ps(k, x + j));
    }
    const float mx = _mm512_reduce_max_ps(vmx);
    const __m512 m = _mm512_set1_ps(mx);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t j = 0; j < c; j += 16) {
        const __mmask16 k = lanes(c - j);
        const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), m);
        const __m512 e = _mm512_maskz_mov_ps(k, exp16(d));
        _mm512_mask_storeu_ps(y + j, k, e);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(
                                    _mm512_castps_pd(e), 1))));
    }
    const double s = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    const __m512 sf = _mm512_set1_ps((float)s);
    for (int64_t j = 0; j < c; j += 16) {
        const __mmask16 k = lanes(c - j);
        _mm512_mask_storeu_ps(y + j, k, _mm512_div_ps(_mm512_maskz_loadu_ps(k, y + j), sf));
    }
    return (double)mx + log(s);
}
#endif

/* softmax_row on the SIMD path in use (fastnn_simd_path): the AVX-512
   form, or the scalar one (the other paths; a forced path is kept). */
static int softmax_wide(void)
{
#ifdef HAVE_SOFTMAX_AVX512
    return fastnn_simd_path() == FASTNN_SIMD_AVX512;
#else
    return 0;
#endif
}

static double softmax_row(float *y, const float *x, int64_t c, int wide)
{
#ifdef HAVE_SOFTMAX_AVX512
    if (wide)
        return softmax_row_avx512(y, x, c);
#endif
    (void)wide;
    return softmax_row_scalar(y, x, c);
}

FASTNN_CLONES
static void softmax_rows(float *Y, const float *X, int64_t c, int64_t lo, int64_t hi)
{
    const int wide = softmax_wide();
    for (int64_t i = lo; i < hi; i++)
        softmax_row(Y + i * c, X + i * c, c, wide);
}

/* dX = Y * (dY - rowsum(dY * Y)) over rows [lo, hi); dX may be dY. */
FASTNN_CLONES
static void softmax_backward_rows(float *dX, const float *dY, const float *Y, int64_t c,
                                  int64_t lo, int64_t hi)
{
    for (int64_t i = lo; i < hi; i++) {
        const float *dy = dY + i * c, *y = Y + i * c;
        float *dx = dX + i * c;
        /* The row dot in double: dy - s cancels when dy is near s. */
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < c; j++)
            s += (double)dy[j] * y[j];
        const float sf = (float)s;
#pragma omp simd
        for (int64_t j = 0; j < c; j++)
            dx[j] = y[j] * (dy[j] - sf);
    }
}

/* X, Y (n,c). */
int fastnn_softmax_forward(float *Y, const float *X, int64_t n, int64_t c)
{
    int64_t size;
    if (!Y || !X || n < 1 || c < 1 || !fastnn_product(&size, n, c))
        return FASTNN_EINVAL;
    RUN_SPANS(n, row_span(c), size > PAR_MIN_EXP, softmax_rows(Y, X, c, lo, hi));
    return FASTNN_OK;
}

/* dX, dY, Y (n,c). */
int fastnn_softmax_backward(float *dX, const float *dY, const float *Y, int64_t n,
                            int64_t c)
{
    int64_t size;
    if (!dX || !dY || !Y || n < 1 || c < 1 || !fastnn_product(&size, n, c))
        return FASTNN_EINVAL;
    RUN_SPANS(n, row_span(c), size > PAR_MIN_CHEAP,
              softmax_backward_rows(dX, dY, Y, c, lo, hi));
    return FASTNN_OK;
}

/* ---- losses ------------------------------------------------------------------ */

static int labels_valid(const int32_t *labels, int64_t n, int64_t c)
{
    int bad = 0;
#pragma omp simd reduction(| : bad)
    for (int64_t i = 0; i < n; i++)
        bad |= labels[i] < 0 || labels[i] >= c;
    return !bad;
}

/* P = softmax(Z) over rows [lo, hi); returns the rows' summed cross-entropy. */
FASTNN_CLONES
static double xent_rows(float *P, const float *Z, const int32_t *labels, int64_t c,
                        int64_t lo, int64_t hi)
{
    double total = 0.0;
    const int wide = softmax_wide();
    for (int64_t i = lo; i < hi; i++)
        total += softmax_row(P + i * c, Z + i * c, c, wide) - (double)Z[i * c + labels[i]];
    return total;
}

/* dZ = (P - onehot) / n over rows [lo, hi); dZ may be P. */
FASTNN_CLONES
static void xent_backward_rows(float *dZ, const float *P, const int32_t *labels, int64_t c,
                               float nf, int64_t lo, int64_t hi)
{
    for (int64_t i = lo; i < hi; i++) {
        const float *p = P + i * c;
        float *d = dZ + i * c;
        const int32_t y = labels[i];
        const float p_label = p[y];     /* read before the row is overwritten */
#pragma omp simd
        for (int64_t j = 0; j < c; j++)
            d[j] = p[j] / nf;
        d[y] = (p_label - 1.0f) / nf;
    }
}

/* Z, P (n,c), labels (n).  Labels are checked before P is written. */
int fastnn_softmax_xent_forward(float *loss, float *P, const float *Z,
                                const int32_t *labels, int64_t n, int64_t c)
{
    int64_t size;
    if (!loss || !P || !Z || !labels || n < 1 || c < 1 || !fastnn_product(&size, n, c)
        || !labels_valid(labels, n, c))
        return FASTNN_EINVAL;
    double total;
    SUM_SPANS(total, n, row_span(c), size > PAR_MIN_EXP,
              xent_rows(P, Z, labels, c, lo, hi));
    *loss = (float)(total / (double)n);
    return FASTNN_OK;
}

/* P, dZ (n,c), labels (n). */
int fastnn_softmax_xent_backward(float *dZ, const float *P, const int32_t *labels,
                                 int64_t n, int64_t c)
{
    int64_t size;
    if (!dZ || !P || !labels || n < 1 || c < 1 || !fastnn_product(&size, n, c)
        || !labels_valid(labels, n, c))
        return FASTNN_EINVAL;
    RUN_SPANS(n, row_span(c), size > PAR_MIN_CHEAP,
              xent_backward_rows(dZ, P, labels, c, (float)n, lo, hi));
    return FASTNN_OK;
}

/* Pointwise losses: a span function for the sum of the loss terms (in
   double) and one for the gradient; the gradients may be in place. */

FASTNN_CLONES
static double bce_sum(const float *Z, const float *T, int64_t lo, int64_t hi)
{
    double total = 0.0;
#pragma omp simd reduction(+ : total)
    for (int64_t i = lo; i < hi; i++) {
        const double z = Z[i], t = T[i];
        total += (z > 0.0 ? z : 0.0) - z * t + log1p(exp(-fabs(z)));
    }
    return total;
}

FASTNN_CLONES
static void bce_grad(float *dZ, const float *Z, const float *T, float nf, int64_t lo,
                     int64_t hi)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++)
        dZ[i] = (fastnn_act_scalar(FASTNN_ACT_SIGMOID, Z[i], 0.0f) - T[i]) / nf;
}

FASTNN_CLONES
static double mse_sum(const float *Y, const float *T, int64_t lo, int64_t hi)
{
    double total = 0.0;
#pragma omp simd reduction(+ : total)
    for (int64_t i = lo; i < hi; i++) {
        const double d = (double)Y[i] - (double)T[i];
        total += d * d;
    }
    return total;
}

FASTNN_CLONES
static void mse_grad(float *dY, const float *Y, const float *T, float nf, int64_t lo,
                     int64_t hi)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++)
        dY[i] = 2.0f * (Y[i] - T[i]) / nf;
}

FASTNN_CLONES
static double mae_sum(const float *Y, const float *T, int64_t lo, int64_t hi)
{
    double total = 0.0;
#pragma omp simd reduction(+ : total)
    for (int64_t i = lo; i < hi; i++)
        total += fabs((double)Y[i] - (double)T[i]);
    return total;
}

FASTNN_CLONES
static void mae_grad(float *dY, const float *Y, const float *T, float nf, int64_t lo,
                     int64_t hi)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++)
        dY[i] = fastnn_act_scalar(FASTNN_ACT_SIGN, Y[i] - T[i], 0.0f) / nf;
}

int fastnn_bce_forward(float *loss, const float *Z, const float *T, int64_t size)
{
    if (!loss || !Z || !T || size < 1)
        return FASTNN_EINVAL;
    double total;
    SUM_SPANS(total, size, CHUNK, size > PAR_MIN_EXP, bce_sum(Z, T, lo, hi));
    *loss = (float)(total / (double)size);
    return FASTNN_OK;
}

int fastnn_bce_backward(float *dZ, const float *Z, const float *T, int64_t size)
{
    if (!dZ || !Z || !T || size < 1)
        return FASTNN_EINVAL;
    RUN_SPANS(size, CHUNK, size > PAR_MIN_EXP, bce_grad(dZ, Z, T, (float)size, lo, hi));
    return FASTNN_OK;
}

int fastnn_mse_forward(float *loss, const float *Y, const float *T, int64_t size)
{
    if (!loss || !Y || !T || size < 1)
        return FASTNN_EINVAL;
    double total;
    SUM_SPANS(total, size, CHUNK, size > PAR_MIN_CHEAP, mse_sum(Y, T, lo, hi));
    *loss = (float)(total / (double)size);
    return FASTNN_OK;
}

int fastnn_mse_backward(float *dY, const float *Y, const float *T, int64_t size)
{
    if (!dY || !Y || !T || size < 1)
        return FASTNN_EINVAL;
    RUN_SPANS(size, CHUNK, size > PAR_MIN_CHEAP, mse_grad(dY, Y, T, (float)size, lo, hi));
    return FASTNN_OK;
}

int fastnn_mae_forward(float *loss, const float *Y, const float *T, int64_t size)
{
    if (!loss || !Y || !T || size < 1)
        return FASTNN_EINVAL;
    double total;
    SUM_SPANS(total, size, CHUNK, size > PAR_MIN_CHEAP, mae_sum(Y, T, lo, hi));
    *loss = (float)(total / (double)size);
    return FASTNN_OK;
}

int fastnn_mae_backward(float *dY, const float *Y, const float *T, int64_t size)
{
    if (!dY || !Y || !T || size < 1)
        return FASTNN_EINVAL;
    RUN_SPANS(size, CHUNK, size > PAR_MIN_CHEAP, mae_grad(dY, Y, T, (float)size, lo, hi));
    return FASTNN_OK;
}

/* The epoch's loss over `rows` rows of out (rows, c) (train.c): the sum of
   its terms in *sum (double, not averaged) and its gradient divided by nf
   into dout (not out), one serial pass each -- the same arithmetic per
   element as the public kernels over a whole batch with nf its divisor,
   so that how the rows are split between callers changes no bit of the
   gradient.  labels (softmax_xent) are valid, T (rows, c) otherwise. */
int fastnn_loss_rows(int loss, double *sum, float *dout, const float *out,
                     const int32_t *labels, const float *T, int64_t rows, int64_t c, float nf)
{
    int64_t size;
    if (!sum || !dout || !out || rows < 1 || c < 1 || !fastnn_product(&size, rows, c))
        return FASTNN_EINVAL;
    switch (loss) {
    case FASTNN_LOSS_SOFTMAX_XENT:
        if (!labels)
            return FASTNN_EINVAL;
        *sum = xent_rows(dout, out, labels, c, 0, rows);
        xent_backward_rows(dout, dout, labels, c, nf, 0, rows);
        return FASTNN_OK;
    case FASTNN_LOSS_BCE:
        if (!T) return FASTNN_EINVAL;
        *sum = bce_sum(out, T, 0, size);
        bce_grad(dout, out, T, nf, 0, size);
        return FASTNN_OK;
    case FASTNN_LOSS_MSE:
        if (!T) return FASTNN_EINVAL;
        *sum = mse_sum(out, T, 0, size);
        mse_grad(dout, out, T, nf, 0, size);
        return FASTNN_OK;
    case FASTNN_LOSS_MAE:
        if (!T) return FASTNN_EINVAL;
        *sum = mae_sum(out, T, 0, size);
        mae_grad(dout, out, T, nf, 0, size);
        return FASTNN_OK;
    default:
        return FASTNN_EINVAL;
    }
}

/* ---- optimizer updates -------------------------------------------------------- */
/* One fused pass each, torch.optim's single-tensor equations in float32
   (torch's CPU kernels compute in the parameter dtype too).  The public
   function computes the step's constants once, in double, into a small
   struct; the span function is the per-element loop.  State buffers and
   params never alias (the Python checks refuse it).  Branches on the
   constant flags are unswitched by the compiler; a NULL optional buffer is
   only dereferenced under its flag. */

/* grad + L2 weight decay; skipped when wd == 0, so a non-finite p does not
   leak into g (as the reference and torch). */
static inline float l2_grad(float g, float p, float wd)
{
    return wd != 0.0f ? g + wd * p : g;
}

struct sgd_k { float lr, mom, damp1, wd; int use_mom, first, nesterov; };

FASTNN_CLONES
static void sgd_span(float *params, const float *grads, float *buf, struct sgd_k k,
                     int64_t lo, int64_t hi)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        float g = l2_grad(grads[i], params[i], k.wd);
        if (k.use_mom) {
            /* Step 1 sets the buffer to g without reading it (torch). */
            const float b = k.first ? g : k.mom * buf[i] + k.damp1 * g;
            buf[i] = b;
            g = k.nesterov ? g + k.mom * b : b;
        }
        params[i] -= k.lr * g;
    }
}

int fastnn_sgd(float *params, const float *grads, float *momentum_buf,
               int64_t size, int64_t step, double lr, double momentum,
               double dampening, int nesterov, double weight_decay)
{
    if (!params || !grads || size < 0 || step < 1 || (momentum != 0.0 && !momentum_buf))
        return FASTNN_EINVAL;
    const struct sgd_k k = {(float)lr, (float)momentum, (float)(1.0 - dampening),
                            (float)weight_decay, momentum != 0.0, step == 1, nesterov != 0};
    UPDATE_SPANS(size, sgd_span(params, grads, momentum_buf, k, lo, hi));
    return FASTNN_OK;
}

/* Adam and AdamW differ only in where the weight decay goes: l2 (Adam) or
   shrink = 1 - lr * wd (AdamW). */
/* inv_bc2_sqrt = 1 / sqrt(1 - beta2^t): a multiply where torch divides
   (<= 1 ulp apart); each division or sqrt costs ~5-9 cycles per 16 floats,
   and with two divisions and a sqrt Adam was divider-bound: 235k floats
   123 -> 86 us (1 thread) when one division became this multiply. */
struct adam_k { float step_size, inv_bc2_sqrt, b1, c1, b2, c2, eps, l2, shrink; };

FASTNN_CLONES
static void adam_span(float *params, const float *grads, float *m, float *v,
                      struct adam_k k, int64_t lo, int64_t hi)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        const float p = params[i] * k.shrink;
        const float g = l2_grad(grads[i], p, k.l2);
        const float mi = k.b1 * m[i] + k.c1 * g;
        const float vi = k.b2 * v[i] + k.c2 * (g * g);
        m[i] = mi;
        v[i] = vi;
        /* torch: denom = sqrt(v) / sqrt(bc2) + eps;  p -= (lr / bc1) * m / denom */
        params[i] = p - k.step_size * (mi / (sqrtf(vi) * k.inv_bc2_sqrt + k.eps));
    }
}

static int adam_update(float *params, const float *grads, float *m, float *v,
                       int64_t size, int64_t step, double lr, double beta1,
                       double beta2, double eps, double weight_decay, int decoupled)
{
    if (!params || !grads || !m || !v || size < 0 || step < 1)
        return FASTNN_EINVAL;
    const double bc1 = 1.0 - pow(beta1, (double)step);
    const double bc2 = 1.0 - pow(beta2, (double)step);
    const struct adam_k k = {
        (float)(lr / bc1), (float)(1.0 / sqrt(bc2)), (float)beta1, (float)(1.0 - beta1),
        (float)beta2, (float)(1.0 - beta2), (float)eps,
        decoupled ? 0.0f : (float)weight_decay,
        decoupled ? (float)(1.0 - lr * weight_decay) : 1.0f};
    UPDATE_SPANS(size, adam_span(params, grads, m, v, k, lo, hi));
    return FASTNN_OK;
}

int fastnn_adam(float *params, const float *grads, float *m, float *v,
                int64_t size, int64_t step, double lr, double beta1,
                double beta2, double eps, double weight_decay)
{
    return adam_update(params, grads, m, v, size, step, lr, beta1, beta2, eps,
                       weight_decay, 0);
}

int fastnn_adamw(float *params, const float *grads, float *m, float *v,
                 int64_t size, int64_t step, double lr, double beta1,
                 double beta2, double eps, double weight_decay)
{
    return adam_update(params, grads, m, v, size, step, lr, beta1, beta2, eps,
                       weight_decay, 1);
}

struct rmsprop_k { float lr, a, c, eps, wd, mom; int use_mom, centered; };

FASTNN_CLONES
static void rmsprop_span(float *params, const float *grads, float *square_avg,
                         float *buf, float *grad_avg, struct rmsprop_k k,
                         int64_t lo, int64_t hi)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        const float g = l2_grad(grads[i], params[i], k.wd);
        const float sq = k.a * square_avg[i] + k.c * (g * g);
        square_avg[i] = sq;
        float var = sq;
        if (k.centered) {
            const float ga = k.a * grad_avg[i] + k.c * g;
            grad_avg[i] = ga;
            var = sq - ga * ga;
        }
        const float avg = sqrtf(var) + k.eps;
        if (k.use_mom) {
            const float b = k.mom * buf[i] + g / avg;
            buf[i] = b;
            params[i] -= k.lr * b;
        } else {
            params[i] -= k.lr * (g / avg);
        }
    }
}

int fastnn_rmsprop(float *params, const float *grads, float *square_avg,
                   float *momentum_buf, float *grad_avg, int64_t size,
                   double lr, double alpha, double eps, double weight_decay,
                   double momentum, int centered)
{
    if (!params || !grads || !square_avg || size < 0
        || (momentum != 0.0 && !momentum_buf) || (centered && !grad_avg))
        return FASTNN_EINVAL;
    const struct rmsprop_k k = {(float)lr, (float)alpha, (float)(1.0 - alpha), (float)eps,
                                (float)weight_decay, (float)momentum, momentum > 0.0,
                                centered != 0};
    UPDATE_SPANS(size, rmsprop_span(params, grads, square_avg, momentum_buf, grad_avg, k, lo, hi));
    return FASTNN_OK;
}

/* step_size is lr / bc1, times r_t sqrt(bc2) once the rectification holds
   (adaptive); before that the step is momentum SGD's and v only accumulates. */
struct radam_k { float step_size, b1, c1, b2, c2, eps, wd; int adaptive; };

FASTNN_CLONES
static void radam_span(float *params, const float *grads, float *m, float *v,
                       struct radam_k k, int64_t lo, int64_t hi)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        const float g = l2_grad(grads[i], params[i], k.wd);
        const float mi = k.b1 * m[i] + k.c1 * g;
        const float vi = k.b2 * v[i] + k.c2 * (g * g);
        m[i] = mi;
        v[i] = vi;
        params[i] -= k.step_size * (k.adaptive ? mi / (sqrtf(vi) + k.eps) : mi);
    }
}

int fastnn_radam(float *params, const float *grads, float *m, float *v,
                 int64_t size, int64_t step, double lr, double beta1,
                 double beta2, double eps, double weight_decay)
{
    if (!params || !grads || !m || !v || size < 0 || step < 1)
        return FASTNN_EINVAL;
    const double bc1 = 1.0 - pow(beta1, (double)step), bc2 = 1.0 - pow(beta2, (double)step);
    const double rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    const double rho_t = rho_inf - 2.0 * (double)step * pow(beta2, (double)step) / bc2;
    const int adaptive = rho_t > 5.0;
    const double r = adaptive ? sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                                     / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) : 0.0;
    const struct radam_k k = {(float)(adaptive ? lr / bc1 * r * sqrt(bc2) : lr / bc1),
                              (float)beta1, (float)(1.0 - beta1), (float)beta2,
                              (float)(1.0 - beta2), (float)eps, (float)weight_decay, adaptive};
    UPDATE_SPANS(size, radam_span(params, grads, m, v, k, lo, hi));
    return FASTNN_OK;
}

struct adagrad_k { float clr, wd, eps; };

FASTNN_CLONES
static void adagrad_span(float *params, const float *grads, float *sum_sq,
                         struct adagrad_k k, int64_t lo, int64_t hi)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        const float g = l2_grad(grads[i], params[i], k.wd);
        const float s = sum_sq[i] + g * g;
        sum_sq[i] = s;
        params[i] -= k.clr * (g / (sqrtf(s) + k.eps));
    }
}

int fastnn_adagrad(float *params, const float *grads, float *sum_sq,
                   int64_t size, int64_t step, double lr, double lr_decay,
                   double weight_decay, double eps)
{
    if (!params || !grads || !sum_sq || size < 0 || step < 1)
        return FASTNN_EINVAL;
    const struct adagrad_k k = {(float)(lr / (1.0 + (double)(step - 1) * lr_decay)),
                                (float)weight_decay, (float)eps};
    UPDATE_SPANS(size, adagrad_span(params, grads, sum_sq, k, lo, hi));
    return FASTNN_OK;
}

/* k_grad and k_avg are the step sizes of torch's two addcdiv_ calls. */
struct nadam_k { float k_grad, k_avg, inv_bc2, b1, c1, b2, c2, wd, eps; };

FASTNN_CLONES
static void nadam_span(float *params, const float *grads, float *m, float *v,
                       struct nadam_k k, int64_t lo, int64_t hi)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        const float g = l2_grad(grads[i], params[i], k.wd);
        const float mi = k.b1 * m[i] + k.c1 * g;
        const float vi = k.b2 * v[i] + k.c2 * (g * g);
        m[i] = mi;
        v[i] = vi;
        /* one division for torch's two (as Adam's inv_bc2_sqrt) */
        const float inv_denom = 1.0f / (sqrtf(vi * k.inv_bc2) + k.eps);
        const float p = params[i] - k.k_grad * (g * inv_denom);
        params[i] = p - k.k_avg * (mi * inv_denom);
    }
}

int fastnn_nadam(float *params, const float *grads, float *m, float *v,
                 int64_t size, int64_t step, double lr, double beta1,
                 double beta2, double eps, double weight_decay,
                 double momentum_decay, double mu_product)
{
    if (!params || !grads || !m || !v || size < 0 || step < 1)
        return FASTNN_EINVAL;
    const double mu = fastnn_nadam_mu((double)step, beta1, momentum_decay);
    const double mu_next = fastnn_nadam_mu((double)step + 1.0, beta1, momentum_decay);
    const struct nadam_k k = {
        (float)(lr * (1.0 - mu) / (1.0 - mu_product)),
        (float)(lr * mu_next / (1.0 - mu_product * mu_next)),
        (float)(1.0 / (1.0 - pow(beta2, (double)step))), (float)beta1, (float)(1.0 - beta1),
        (float)beta2, (float)(1.0 - beta2), (float)weight_decay, (float)eps};
    UPDATE_SPANS(size, nadam_span(params, grads, m, v, k, lo, hi));
    return FASTNN_OK;
}

struct adamax_k { float clr, b1, c1, b2, wd, eps; };

FASTNN_CLONES
static void adamax_span(float *params, const float *grads, float *m, float *u,
                        struct adamax_k k, int64_t lo, int64_t hi)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        const float g = l2_grad(grads[i], params[i], k.wd);
        const float mi = k.b1 * m[i] + k.c1 * g;
        const float decayed = k.b2 * u[i], bound = fabsf(g) + k.eps;
        /* max propagating NaN from either side, as np.maximum (a NaN in u
           was dropped by the plain ternary) */
        const float ui = (decayed > bound || decayed != decayed) ? decayed : bound;
        m[i] = mi;
        u[i] = ui;
        params[i] -= k.clr * (mi / ui);
    }
}

int fastnn_adamax(float *params, const float *grads, float *m, float *u,
                  int64_t size, int64_t step, double lr, double beta1,
                  double beta2, double eps, double weight_decay)
{
    if (!params || !grads || !m || !u || size < 0 || step < 1)
        return FASTNN_EINVAL;
    const struct adamax_k k = {(float)(lr / (1.0 - pow(beta1, (double)step))), (float)beta1,
                               (float)(1.0 - beta1), (float)beta2, (float)weight_decay,
                               (float)eps};
    UPDATE_SPANS(size, adamax_span(params, grads, m, u, k, lo, hi));
    return FASTNN_OK;
}

/* ---- flat-buffer utilities ------------------------------------------------------ */

FASTNN_CLONES
static double sum_squares_span(const float *x, int64_t lo, int64_t hi)
{
    double total = 0.0;
#pragma omp simd reduction(+ : total)
    for (int64_t i = lo; i < hi; i++) {
        const double xi = x[i];
        total += xi * xi;
    }
    return total;
}

FASTNN_CLONES
static void scale_span(float *x, float s, int64_t lo, int64_t hi)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++)
        x[i] *= s;
}

FASTNN_CLONES
static void clip_span(float *x, float lo_v, float hi_v, int64_t lo, int64_t hi)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        const float xi = x[i];
        x[i] = xi < lo_v ? lo_v : (xi > hi_v ? hi_v : xi);     /* NaN stays NaN */
    }
}

int fastnn_sum_squares(double *out, const float *x, int64_t size)
{
    if (!out || !x || size < 0)
        return FASTNN_EINVAL;
    double total;
    SUM_SPANS(total, size, CHUNK, size > PAR_MIN_CHEAP, sum_squares_span(x, lo, hi));
    *out = total;
    return FASTNN_OK;
}

static int scale_slice(const void *p, int64_t lo, int64_t hi)
{
    const struct ew_ctx *c = p;
    scale_span(c->y, c->a, lo, hi);
    return FASTNN_OK;
}

static int clip_slice(const void *p, int64_t lo, int64_t hi)
{
    const struct ew_ctx *c = p;
    clip_span(c->y, c->a, c->b, lo, hi);
    return FASTNN_OK;
}

int fastnn_scale(float *x, int64_t size, float s)
{
    if (!x || size < 0)
        return FASTNN_EINVAL;
    const struct ew_ctx ec = {x, NULL, NULL, 0, s, 0.0f};
    int rc;
    if (fastnn_team_slices(0, size, CHUNK, size > PAR_MIN_CHEAP, scale_slice, &ec, &rc))
        return rc;
    RUN_SPANS(size, CHUNK, size > PAR_MIN_CHEAP, scale_span(x, s, lo, hi));
    return FASTNN_OK;
}

/* The bounds are lo_v, hi_v here: RUN_SPANS names the span lo, hi. */
int fastnn_clip(float *x, int64_t size, float lo_v, float hi_v)
{
    if (!x || size < 0 || !(lo_v <= hi_v))
        return FASTNN_EINVAL;
    const struct ew_ctx ec = {x, NULL, NULL, 0, lo_v, hi_v};
    int rc;
    if (fastnn_team_slices(0, size, CHUNK, size > PAR_MIN_CHEAP, clip_slice, &ec, &rc))
        return rc;
    RUN_SPANS(size, CHUNK, size > PAR_MIN_CHEAP, clip_span(x, lo_v, hi_v, lo, hi));
    return FASTNN_OK;
}

FASTNN_CLONES
static void axpy_span(float *y, const float *x, float alpha, int64_t lo, int64_t hi)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++)
        y[i] += alpha * x[i];
}

static int axpy_slice(const void *p, int64_t lo, int64_t hi)
{
    const struct ew_ctx *c = p;
    axpy_span(c->y, c->x, c->a, lo, hi);
    return FASTNN_OK;
}

int fastnn_axpy(float *y, const float *x, int64_t size, float alpha)
{
    if (!y || !x || size < 0)
        return FASTNN_EINVAL;
    const struct ew_ctx ec = {y, x, NULL, 0, alpha, 0.0f};
    int rc;
    if (fastnn_team_slices(0, size, CHUNK, size > PAR_MIN_CHEAP, axpy_slice, &ec, &rc))
        return rc;
    RUN_SPANS(size, CHUNK, size > PAR_MIN_CHEAP, axpy_span(y, x, alpha, lo, hi));
    return FASTNN_OK;
}
