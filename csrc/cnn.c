/*
 * cnn.c -- convolution, pooling and batch normalisation on channels-last
 * images (n, h, w, c); the specification is fastnn/kernels/reference.py.
 *
 * What these kernels promise, beyond fastnn.h:
 *   - Arguments (sizes, NULLs, and maxpool's argmax indices) are checked
 *     before anything is written; nothing is allocated (small per-channel
 *     blocks live on the stack).
 *   - Stride-1 convolution is direct: cols keeps the zero-padded X
 *     and conv_direct.c's micro-kernel reads the windows from it in place;
 *     see "direct (stride-1) convolution" below.  3x3 kernels with 16+
 *     channels and even output sizes run the forward, dW and dX by
 *     Winograd (conv_direct.c) in the rest of cols, falling back to the
 *     direct kernels where it does not apply.
 *   - Other strides are im2col + the project's gemm: the forward is
 *     fastnn_dense_forward on cols (bias and activation in the gemm
 *     epilogue), the backward fastnn_dense_backward for dZ, dW and db, then
 *     fastnn_gemm for dZ W^T and col2im.  Channels-last makes every window
 *     row (kw pixels x c channels) one contiguous run of X, so im2col and
 *     col2im move whole runs.
 *   - Threads never write the same element: im2col and pooling forwards
 *     split output rows; col2im and maxpool backward scatter into dX, so
 *     they split images; avgpool backward gathers, so it splits input rows;
 *     batch-norm sums are OpenMP array reductions into per-thread copies.
 *   - Batch-norm statistics and sums, and average pooling, accumulate in
 *     double; the mean and variance take two passes (no cancellation).
 *     Maxpool propagates NaN (the first NaN of a window wins, as np.argmax).
 */
#include <stdint.h>
#include <string.h>
#include <math.h>
#include "fastnn.h"
#include "internal.h"
#include "conv_direct.h"
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86 1
#endif

/* Below this many floats of work a kernel stays on the calling thread
   (times fastnn_team_factor(): 16 when the team is likely asleep). */
#define PAR_MIN ((int64_t)(1 << 15) * fastnn_team_factor())
/* Channels per block of the double accumulators on the stack. */
#define CB 128
/* Rows per span of the batch-norm row loops. */
#define BN_SPAN 256

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* TEAM_FOR(count, wide, row, ctx): row(ctx, i) for i in [0, count), shared
   by the team in contiguous blocks when `wide` and more than one thread is
   set -- a job (internal.h), so shared with the team of a whole epoch too
   (fastnn_team_epoch); small work never opens a parallel region (that
   costs about a microsecond even under a false if() clause).
   ROW_FN(name, ctx type, stmt) defines name(const void *, int64_t i)
   running stmt with c the context. */
#define TEAM_FOR(count, wide, row, ctx)                                       \
    do {                                                                      \
        const int64_t count_ = (count);                                       \
        const int threads_ = fastnn_team_size();                              \
        if (!(wide) || threads_ < 2 || count_ < 2) {                          \
            for (int64_t i_ = 0; i_ < count_; i_++)                           \
                row(ctx, i_);                                                 \
        } else {                                                              \
            fastnn_team_for(threads_, count_, row, ctx);                      \
        }                                                                     \
    } while (0)
#define ROW_FN(name, type, stmt)                                              \
    static void name(const void *ctx_, int64_t i)                             \
    {                                                                         \
        const type *c = ctx_;                                                 \
        stmt;                                                                 \
    }

/* ---- window geometry ----------------------------------------------------------- */

typedef struct {
    int64_t n, h, w, c, kh, kw, sh, sw, ph, pw, oh, ow;
    int64_t in_size;     /* n h w c: the floats of an input (or its gradient) */
    int64_t out_pixels;  /* n oh ow: the rows of cols */
    int64_t window;      /* kh kw */
} geom;

/* Fills g; 0 if the sizes are invalid (padding must be smaller than the
   window, as the Python checks require, so every window overlaps X) or a
   padded extent or size product overflows int64. */
static int make_geom(geom *g, int64_t n, int64_t h, int64_t w, int64_t c, int64_t kh,
                     int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw)
{
    int64_t hp, wp;  /* the padded image */
    if (n < 1 || h < 1 || w < 1 || c < 1 || kh < 1 || kw < 1 || sh < 1 || sw < 1
        || ph < 0 || pw < 0 || ph >= kh || pw >= kw)
        return 0;
    if (!fastnn_add(&hp, h, ph) || !fastnn_add(&hp, hp, ph) || !fastnn_add(&wp, w, pw)
        || !fastnn_add(&wp, wp, pw) || hp < kh || wp < kw)
        return 0;
    const int64_t oh = (hp - kh) / sh + 1, ow = (wp - kw) / sw + 1;
    int64_t in_size, out_pixels, window;
    if (!fastnn_product(&in_size, n, h, w, c) || !fastnn_product(&out_pixels, n, oh, ow)
        || !fastnn_product(&window, kh, kw))
        return 0;
    *g = (geom){n, h, w, c, kh, kw, sh, sw, ph, pw, oh, ow, in_size, out_pixels, window};
    return 1;
}

/* The window columns [*jlo, *jhi) of output column ox that fall inside X. */
static inline void window_cols(const geom *g, int64_t ox, int64_t *jlo, int64_t *jhi)
{
    const int64_t x0 = ox * g->sw - g->pw;
    *jlo = max64(0, -x0);
    *jhi = max64(*jlo, min64(g->kw, g->w - x0));
}

/* ---- convolution ----------------------------------------------------------------- */

/* cols rows (img, oy, 0..ow) = the windows of output row oy: for each
   kernel row i, the run of kw*c values X[img, iy, x0 .. x0+kw, :], zero
   outside the image. */
static void im2col_row(float *cols, const float *X, const geom *g, int64_t img, int64_t oy)
{
    const int64_t c = g->c, run = g->kw * c, K = g->kh * run;
    float *dst = cols + (img * g->oh + oy) * g->ow * K;
    for (int64_t ox = 0; ox < g->ow; ox++, dst += K) {
        int64_t jlo, jhi;
        window_cols(g, ox, &jlo, &jhi);
        const int64_t x0 = ox * g->sw - g->pw;
        for (int64_t i = 0; i < g->kh; i++) {
            float *d = dst + i * run;
            const int64_t iy = oy * g->sh - g->ph + i;
            if (iy < 0 || iy >= g->h) {
                memset(d, 0, (size_t)run * sizeof *d);
                continue;
            }
            const float *s = X + ((img * g->h + iy) * g->w + x0 + jlo) * c;
            for (int64_t k = 0; k < jlo * c; k++)
                d[k] = 0.0f;
            for (int64_t k = 0; k < (jhi - jlo) * c; k++)
                d[jlo * c + k] = s[k];
            for (int64_t k = jhi * c; k < run; k++)
                d[k] = 0.0f;
        }
    }
}

/* dX image img = the sum of its windows' rows of cols (the adjoint of
   im2col).  Windows overlap, so one thread owns a whole image. */
static void col2im_image(float *dX, const float *cols, const geom *g, int64_t img)
{
    const int64_t c = g->c, run = g->kw * c, K = g->kh * run;
    float *dx = dX + img * g->h * g->w * c;
    memset(dx, 0, (size_t)(g->h * g->w * c) * sizeof *dx);
    const float *src = cols + img * g->oh * g->ow * K;
    for (int64_t oy = 0; oy < g->oh; oy++)
        for (int64_t ox = 0; ox < g->ow; ox++, src += K) {
            int64_t jlo, jhi;
            window_cols(g, ox, &jlo, &jhi);
            const int64_t x0 = ox * g->sw - g->pw;
            for (int64_t i = 0; i < g->kh; i++) {
                const int64_t iy = oy * g->sh - g->ph + i;
                if (iy < 0 || iy >= g->h)
                    continue;
                float *d = dx + (iy * g->w + x0 + jlo) * c;
                const float *s = src + i * run + jlo * c;
#pragma omp simd
                for (int64_t k = 0; k < (jhi - jlo) * c; k++)
                    d[k] += s[k];
            }
        }
}

/* make_geom, and *K = kh kw c (the rows of W); 0 also if W (K, oc), cols
   (n oh ow, K) or Y (n oh ow, oc) has more elements than int64 counts. */
static int conv_geom(geom *g, int64_t *K, int64_t n, int64_t h, int64_t w, int64_t c,
                     int64_t oc, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                     int64_t pw, int act)
{
    int64_t size;
    return oc >= 1 && act >= FASTNN_ACT_IDENTITY && act <= FASTNN_ACT_SOFTPLUS
           && make_geom(g, n, h, w, c, kh, kw, sh, sw, ph, pw)
           && fastnn_product(K, g->window, c) && fastnn_product(&size, *K, oc)
           && fastnn_product(&size, g->out_pixels, *K)
           && fastnn_product(&size, g->out_pixels, oc);
}

/* ---- direct (stride-1) convolution ------------------------------------------------
   With stride 1 the padded image fits in cols (h+2ph = oh+kh-1 <= oh kh, and
   so for the width; direct_ok still checks), and the forward stores in cols the zero-padded copy of X (n, h+2ph, w+2pw, c)
   instead of im2col(X), and conv_direct.c's micro-kernel reads the windows
   from it in place (no im2col matrix is written or read).  The backward
   takes dW from that copy, then reuses cols for dX: the zero-padded dZ and
   the flipped, transposed W, so that dX is the forward convolution of the
   padded dZ (or a gather for few channels).  The forward and the backward
   make the same choice from the geometry alone.  Measured (batch 128, 1
   thread, 3x3 pad 1, forward + backward with dX, bench.compare): 14x14x32
   -> 64 77-93 -> 39-52 ms, torch 47-58 ms. */

/* Floats of the padded image (channels ch, padding qh, qw) of n images of
   size hh x ww, and its size *hp x *wp; 0 if that overflows int64. */
static int64_t padded_size(int64_t n, int64_t hh, int64_t ww, int64_t ch, int64_t qh,
                           int64_t qw, int64_t *hp, int64_t *wp)
{
    int64_t size;
    if (!fastnn_add(hp, hh, qh) || !fastnn_add(hp, *hp, qh) || !fastnn_add(wp, ww, qw)
        || !fastnn_add(wp, *wp, qw) || !fastnn_product(&size, n, *hp, *wp, ch))
        return 0;
    return size;
}

/* 1 if g runs the direct path with cols of cols_size floats. */
static int direct_ok(const geom *g, int64_t cols_size)
{
    int64_t hp, wp;
    if (g->sh != 1 || g->sw != 1)
        return 0;
    const int64_t size = padded_size(g->n, g->h, g->w, g->c, g->ph, g->pw, &hp, &wp);
    return size > 0 && size <= cols_size;
}

/* Row r (image r / hp, padded row r % hp) of the padded copy of src (n,
   hh, ww, ch) with padding (qh, qw): zeros around the image. */
static void pad_row(float *dst, const float *src, int64_t hh, int64_t ww, int64_t ch,
                    int64_t qh, int64_t qw, int64_t r)
{
    const int64_t hp = hh + 2 * qh, wp = ww + 2 * qw, img = r / hp, y = r % hp - qh;
    float *d = dst + r * wp * ch;
    if (y < 0 || y >= hh) {
        memset(d, 0, (size_t)(wp * ch) * sizeof *d);
        return;
    }
    memset(d, 0, (size_t)(qw * ch) * sizeof *d);
    memcpy(d + qw * ch, src + (img * hh + y) * ww * ch, (size_t)(ww * ch) * sizeof *d);
    memset(d + (qw + ww) * ch, 0, (size_t)(qw * ch) * sizeof *d);
}

/* Input channels from which dX is a GEMM over the padded dZ (fewer: a
   gather per pixel, as a c-column GEMM would waste the register tile). */
#define DX_GEMM_MIN_C 8
/* Output rows per chunk of the dZ pass; the chunks are also the fixed
   blocks of db's sum over the batch. */
#define DZ_CHUNK_ROWS 16

/* The gradient of a max pooling that tiles the convolution's output (window
   = stride, fastnn_conv2d_pooled_backward): dY of the pooling (n, poh,
   pow, oc) and its argmax. */
typedef struct {
    const float *dy;
    const int32_t *argmax;
    int64_t kh, kw, oh, ow;
} pooled;

/* dZ rows [r0, r1) of the (n oh, ow) grid = the pooling's backward: dY of
   the window where the argmax names the pixel, else 0 (also the pixels no
   window covers).  Only compares indices, never follows one. */
FASTNN_CLONES
static void unpool_rows(float *dZ, const pooled *pl, const geom *g, int64_t oc, int64_t r0,
                        int64_t r1)
{
    const int64_t ow = g->ow, covered_h = pl->oh * pl->kh, covered_w = pl->ow * pl->kw;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t img = r / g->oh, oy = r % g->oh;
        float *d = dZ + r * ow * oc;
        if (oy >= covered_h) {
            memset(d, 0, (size_t)(ow * oc) * sizeof *d);
            continue;
        }
        const int64_t prow = (img * pl->oh + oy / pl->kh) * pl->ow * oc;
        for (int64_t px = 0; px < pl->ow; px++) {
            const float *dy = pl->dy + prow + px * oc;
            const int32_t *am = pl->argmax + prow + px * oc;
            for (int64_t j = 0; j < pl->kw; j++) {
                const int64_t ox = px * pl->kw + j;
                const int32_t p = (int32_t)(oy * ow + ox);
                float *dp = d + ox * oc;
#pragma omp simd
                for (int64_t k = 0; k < oc; k++)
                    dp[k] = am[k] == p ? dy[k] + 0.0f : 0.0f;  /* + 0: -0 -> +0, as 0 + dy */
            }
        }
        if (covered_w < ow)
            memset(d + covered_w * oc, 0, (size_t)((ow - covered_w) * oc) * sizeof *d);
    }
}

/* Rows [r0, r1) of the (n oh, ow) output grid: dZ = dY act'(Y) (with pl,
   dY is the unpooled gradient, written into dZ first); if part,
   part[0:oc] = their column sums of dZ; if zpad, their rows of the padded
   dZ (n, oh+2qh, ow+2qw, oc), and the zero border rows above and below an
   image next to its first and last rows. */
typedef struct {
    float *dst;
    const float *src;
    int64_t hh, ww, ch, qh, qw;
} pad_ctx;
ROW_FN(pad_row_i, pad_ctx, pad_row(c->dst, c->src, c->hh, c->ww, c->ch, c->qh, c->qw, i))

static void dz_pass_chunk(float *dZ, float *part, float *zpad, const float *dY, const float *Y,
                          const pooled *pl, const geom *g, int64_t oc, int64_t qh, int64_t qw,
                          int act, float slope, int64_t r0, int64_t r1)
{
    const int64_t run = g->ow * oc, lo = r0 * run;
    if (pl) {
        unpool_rows(dZ, pl, g, oc, r0, r1);
        if (act != FASTNN_ACT_IDENTITY)
            fastnn_activation_backward(dZ + lo, dZ + lo, Y + lo, (r1 - r0) * run, act, slope);
    } else {
        fastnn_activation_backward(dZ + lo, dY + lo, Y + lo, (r1 - r0) * run, act, slope);
    }
    if (part)
        fastnn_column_sums(part, dZ + lo, (r1 - r0) * g->ow, oc, 0, oc);
    if (!zpad)
        return;
    const int64_t hz = g->oh + 2 * qh, wz = g->ow + 2 * qw;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t img = r / g->oh, oy = r % g->oh;
        if (oy == 0)
            memset(zpad + img * hz * wz * oc, 0, (size_t)(qh * wz * oc) * sizeof *zpad);
        pad_row(zpad, dZ, g->oh, g->ow, oc, qh, qw, img * hz + qh + oy);
        if (oy == g->oh - 1)
            memset(zpad + (img * hz + qh + g->oh) * wz * oc, 0,
                   (size_t)(qh * wz * oc) * sizeof *zpad);
    }
}

/* Wt[i][j][o][ch] = W[kh-1-i][kw-1-j][ch][o]: the weights of dX as a
   convolution of dZ. */
static void flip_weights(float *Wt, const float *W, int64_t kh, int64_t kw, int64_t c, int64_t oc)
{
    for (int64_t i = 0; i < kh; i++)
        for (int64_t j = 0; j < kw; j++) {
            const float *src = W + ((kh - 1 - i) * kw + (kw - 1 - j)) * c * oc;
            float *dst = Wt + (i * kw + j) * oc * c;
            for (int64_t o = 0; o < oc; o++)
                for (int64_t ch = 0; ch < c; ch++)
                    dst[o * c + ch] = src[ch * oc + o];
        }
}
typedef struct {
    float *dZ, *part, *zpad;
    const float *dY, *Y;
    const pooled *pl;
    const geom *g;
    int64_t oc, qh, qw, rows;
    int act;
    float slope;
} dz_ctx;
ROW_FN(dz_pass_i, dz_ctx,
       dz_pass_chunk(c->dZ, c->part ? c->part + i * c->oc : NULL, c->zpad, c->dY, c->Y, c->pl,
                     c->g, c->oc, c->qh, c->qw, c->act, c->slope, i * DZ_CHUNK_ROWS,
                     min64(c->rows, (i + 1) * DZ_CHUNK_ROWS)))

typedef struct {
    float *db;
    const float *dZ;
    int64_t n, oc, span;
} colsum_ctx;
ROW_FN(colsum_i, colsum_ctx,
       fastnn_column_sums(c->db, c->dZ, c->n, c->oc, i * c->span,
                          min64(c->oc, i * c->span + c->span)))


/* The direct backward: dZ, db (NULL: skipped), dW, dX (NULL: skipped).
   cols holds the padded X (xsize floats) until dW is done; the space after
   it takes, when it fits, db's per-chunk sums (at the end) and the padded
   dZ and flipped W for dX, so that one pass over dY and Y writes dZ, its
   padded copy and db's partial sums.  If the padded dZ does not fit there,
   it is written over the padded X after dW; if not even that, or for few
   input channels, dX is a gather. */
static void direct_backward(float *dX, float *dW, float *db, float *dZ, float *cols,
                            const float *dY, const pooled *pl, const float *Y, const float *W,
                            const geom *g, int64_t oc, int64_t cols_size, int act, float slope)
{
    const int64_t n = g->n, c = g->c, kh = g->kh, kw = g->kw, rows = n * g->oh;
    int64_t hp = 0, wp = 0, hz = 0, wz = 0, wsize = 0;
    const int64_t xsize = padded_size(n, g->h, g->w, c, g->ph, g->pw, &hp, &wp);
    int64_t spare = cols_size - xsize;
    const int64_t chunks = (rows + DZ_CHUNK_ROWS - 1) / DZ_CHUNK_ROWS;
    float *part = NULL;
    if (db && chunks <= spare / oc) {
        spare -= chunks * oc;
        part = cols + xsize + spare;
    }
    const int64_t qh = kh - 1 - g->ph, qw = kw - 1 - g->pw;
    int64_t zsize = 0;
    int dx_mode = 0;    /* 0 gather, 1 padded dZ after X, 2 padded dZ over X after dW */
    if (dX && c >= DX_GEMM_MIN_C) {
        zsize = padded_size(n, g->oh, g->ow, oc, qh, qw, &hz, &wz);
        if (zsize > 0 && fastnn_product(&wsize, g->window, c, oc)) {
            if (zsize <= spare && wsize <= spare - zsize)
                dx_mode = 1;
            else if (zsize <= cols_size && wsize <= cols_size - zsize)
                dx_mode = 2;
        }
    }
    /* dX by Winograd straight from dZ (its border tiles gathered): then the
       padded dZ is written only if that declines (workspace, weights). */
    const int wg_dx = dx_mode != 0 && kh == 3 && kw == 3 && c >= WG_MIN_CHANNELS
                      && oc >= WG_MIN_CHANNELS && g->h % 2 == 0 && g->w % 2 == 0 && qh >= 0
                      && qh <= 2 && qw >= 0 && qw <= 2;
    float *const zdst = dx_mode == 1 ? cols + xsize : cols;   /* the padded dZ's place */
    float *zpad = dx_mode == 1 && !wg_dx ? zdst : NULL;
    const dz_ctx dzc = {dZ, part, zpad, dY, Y, pl, g, oc, qh, qw, rows, act, slope};
    TEAM_FOR(chunks, rows * g->ow * oc > PAR_MIN, dz_pass_i, &dzc);
    if (db && part) {   /* the chunks' sums in chunk order */
        for (int64_t o = 0; o < oc; o++) {
            double sum = 0.0;
            for (int64_t ch = 0; ch < chunks; ch++)
                sum += part[ch * oc + o];
            db[o] = (float)sum;
        }
    } else if (db) {
        const int64_t span = 16;
        const colsum_ctx csc = {db, dZ, g->out_pixels, oc, span};
        TEAM_FOR((oc + span - 1) / span, rows * oc > PAR_MIN, colsum_i, &csc);
    }
    /* dW's workspace: after the padded X, or after the padded dZ when that
       follows it (db's partial sums are done with) */
    float *dw_ws = dx_mode == 1 ? zdst + zsize : cols + xsize;
    if (!(kh == 3 && kw == 3
          && fastnn_conv3x3_winograd_dw(dW, cols, dZ, n, hp, wp, c, oc, dw_ws,
                                        cols + cols_size - dw_ws)))
        fastnn_conv_padded_dw(dW, cols, dZ, n, hp, wp, c, oc, kh, kw);
    if (!dX)
        return;
    if (dx_mode == 0) {
        fastnn_conv_dx_gather(dX, dZ, W, n, g->h, g->w, c, oc, kh, kw, g->ph, g->pw);
        return;
    }
    float *Wt = zdst + zsize;
    flip_weights(Wt, W, kh, kw, c, oc);
    /* Winograd's workspace: the space after Wt, or the padded X's (dead
       after dW) when the padded dZ follows it and that is larger. */
    float *ws = Wt + wsize;
    int64_t ws_size = cols + cols_size - ws;
    if (dx_mode == 1 && xsize > ws_size) {
        ws = cols;
        ws_size = xsize;
    }
    if (wg_dx
        && fastnn_conv3x3_winograd_pad(dX, dZ, Wt, NULL, n, g->oh, g->ow, qh, qw, oc, c,
                                       FASTNN_ACT_IDENTITY, 0.0f, ws, ws_size))
        return;
    if (!zpad) {   /* mode 2, or Winograd declined: the padded dZ now */
        zpad = zdst;
        const pad_ctx pc = {zpad, dZ, g->oh, g->ow, oc, qh, qw};
        TEAM_FOR(n * hz, zsize > PAR_MIN, pad_row_i, &pc);
    }
    if (!wg_dx && kh == 3 && kw == 3
        && fastnn_conv3x3_winograd(dX, zpad, Wt, NULL, n, hz, wz, oc, c, FASTNN_ACT_IDENTITY,
                                   0.0f, ws, ws_size))
        return;
    fastnn_conv_padded(dX, zpad, Wt, NULL, n, hz, wz, oc, c, kh, kw, FASTNN_ACT_IDENTITY, 0.0f);
}

/* X (n,h,w,c), W (kh,kw,c,oc) = the (kh*kw*c, oc) matrix, b (oc) or NULL,
   cols (n*oh*ow, kh*kw*c), Y (n,oh,ow,oc). */
typedef struct {
    float *dst;
    const float *src;
    int64_t span, total;
} copy_ctx;
ROW_FN(copy_i, copy_ctx,
       memcpy(c->dst + i * c->span, c->src + i * c->span,
              (size_t)min64(c->span, c->total - i * c->span) * sizeof(float)))

typedef struct {
    float *dst;
    const float *src;
    const geom *g;
} rows_ctx;   /* a row function over an output and an input of one geometry */
ROW_FN(im2col_i, rows_ctx, im2col_row(c->dst, c->src, c->g, i / c->g->oh, i % c->g->oh))
ROW_FN(col2im_i, rows_ctx, col2im_image(c->dst, c->src, c->g, i))

int fastnn_conv2d_forward(float *Y, float *cols, const float *X, const float *W,
                          const float *b, int64_t n, int64_t h, int64_t w, int64_t c,
                          int64_t oc, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                          int64_t ph, int64_t pw, int act, float slope)
{
    geom g;
    int64_t K;
    if (!Y || !cols || !X || !W
        || !conv_geom(&g, &K, n, h, w, c, oc, kh, kw, sh, sw, ph, pw, act))
        return FASTNN_EINVAL;
    const int64_t rows = g.out_pixels;
    if (direct_ok(&g, rows * K)) {
        const int64_t hp = h + 2 * ph, wp = w + 2 * pw;
        const pad_ctx pc = {cols, X, h, w, c, ph, pw};
        TEAM_FOR(n * hp, g.in_size > PAR_MIN, pad_row_i, &pc);
        const int64_t xsize = n * hp * wp * c;
        if (kh == 3 && kw == 3
            && fastnn_conv3x3_winograd(Y, cols, W, b, n, hp, wp, c, oc, act, slope,
                                       cols + xsize, rows * K - xsize))
            return FASTNN_OK;
        fastnn_conv_padded(Y, cols, W, b, n, hp, wp, c, oc, kh, kw, act, slope);
        return FASTNN_OK;
    }
    if (kh == 1 && kw == 1 && sh == 1 && sw == 1) {
        /* 1x1, stride 1 (so no padding): im2col(X) is X itself.  The copy is
           still made because the backward has no X, only cols. */
        const int64_t span = 1 << 14, total = rows * K;
        const copy_ctx cc = {cols, X, span, total};
        TEAM_FOR((total + span - 1) / span, total > PAR_MIN, copy_i, &cc);
    } else {
        const rows_ctx ic = {cols, X, &g};
        TEAM_FOR(n * g.oh, rows * K > PAR_MIN, im2col_i, &ic);
    }
    return fastnn_dense_forward(Y, cols, W, b, rows, K, oc, act, slope);
}

/* dY, Y, dZ (n,oh,ow,oc), cols (n*oh*ow, kh*kw*c), W and dW (kh,kw,c,oc),
   db (oc) or NULL, dX (n,h,w,c) or NULL. */
int fastnn_conv2d_backward(float *dX, float *dW, float *db, float *dZ, float *cols,
                           const float *dY, const float *W, const float *Y, int64_t n,
                           int64_t h, int64_t w, int64_t c, int64_t oc, int64_t kh,
                           int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                           int act, float slope)
{
    geom g;
    int64_t K;
    if (!dW || !dZ || !cols || !dY || !W || !Y
        || !conv_geom(&g, &K, n, h, w, c, oc, kh, kw, sh, sw, ph, pw, act))
        return FASTNN_EINVAL;
    const int64_t rows = g.out_pixels;
    if (direct_ok(&g, rows * K)) {
        direct_backward(dX, dW, db, dZ, cols, dY, NULL, Y, W, &g, oc, rows * K, act, slope);
        return FASTNN_OK;
    }
    int rc = fastnn_dense_backward(NULL, dW, db, dZ, dY, cols, W, Y, rows, K, oc, act, slope);
    if (rc != FASTNN_OK || !dX)
        return rc;
    /* cols = dZ W^T: op(B) = W^T (oc, K) read from W (K, oc). */
    rc = fastnn_gemm(0, 1, rows, K, oc, 1.0f, dZ, oc, W, oc, 0.0f, cols, K);
    if (rc != FASTNN_OK)
        return rc;
    const rows_ctx ic = {dX, cols, &g};
    TEAM_FOR(n, rows * K > PAR_MIN, col2im_i, &ic);
    return FASTNN_OK;
}

/* 1 if the backward of a convolution (stride 1: the direct path) followed
   by a max pooling of its output with window = stride (pkh, pkw) can run
   as one pass, fastnn_conv2d_pooled_backward.  Sizes as the kernels'. */
int fastnn_conv2d_pool_fusable(int64_t n, int64_t h, int64_t w, int64_t c, int64_t oc,
                               int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                               int64_t pw, int act, int64_t pkh, int64_t pkw, int64_t psh,
                               int64_t psw)
{
    geom g;
    int64_t K;
    return conv_geom(&g, &K, n, h, w, c, oc, kh, kw, sh, sw, ph, pw, act)
           && direct_ok(&g, g.out_pixels * K) && pkh >= 1 && pkw >= 1 && psh == pkh
           && psw == pkw && pkh <= g.oh && pkw <= g.ow && g.oh <= INT32_MAX / g.ow;
}

/* fastnn_conv2d_backward of a fusable convolution (above) whose dY is the
   input gradient of the max pooling of Y: from that pooling's pdY (n, oh /
   pkh, ow / pkw, oc) and argmax, without the pooling's dX.  An argmax
   outside its own window contributes nothing (the pooling's forward never
   writes one). */
int fastnn_conv2d_pooled_backward(float *dX, float *dW, float *db, float *dZ, float *cols,
                                  const float *pdY, const int32_t *argmax, const float *W,
                                  const float *Y, int64_t n, int64_t h, int64_t w, int64_t c,
                                  int64_t oc, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                  int64_t ph, int64_t pw, int act, float slope, int64_t pkh,
                                  int64_t pkw)
{
    geom g;
    int64_t K;
    if (!dW || !dZ || !cols || !pdY || !argmax || !W || !Y
        || !fastnn_conv2d_pool_fusable(n, h, w, c, oc, kh, kw, sh, sw, ph, pw, act, pkh, pkw,
                                       pkh, pkw)
        || !conv_geom(&g, &K, n, h, w, c, oc, kh, kw, sh, sw, ph, pw, act))
        return FASTNN_EINVAL;
    const pooled pl = {pdY, argmax, pkh, pkw, g.oh / pkh, g.ow / pkw};
    direct_backward(dX, dW, db, dZ, cols, NULL, &pl, Y, W, &g, oc, g.out_pixels * K, act,
                    slope);
    return FASTNN_OK;
}

/* ---- few input channels: convolution, activation and max pooling in one pass ----
   The first layer of a digits / MNIST / RGB network (c = 1-4 channels,
   stride 1) followed by a max pooling that tiles its output (window =
   stride): the direct path writes the convolution's whole output (LeNet's
   first layer: 128 x 28 x 28 x 16 floats, 6.4 MB, past L2), the pooling
   reads it back, and the backward writes and reads a dZ as large.  Here the
   forward computes each pooling window's candidates in registers (kh kw c
   multiply-adds each, broadcasts of the padded X against a 16-channel
   vector of W) and stores only the pooled value and its argmax; the
   backward takes dW and db straight from the pooling's dY, its argmax and
   the pooled values: the gradient at a window's argmax is dY act'(y) with y
   the pooled value (= the convolution's output there), 0 elsewhere, so
   neither the convolution's output nor its dZ is ever written.  For that
   act'(y) must be what the unfused path computes for the other pixels too
   (0 times it): identity, ReLU and leaky ReLU only (a finite constant or
   0/1).  No dX (a first layer).  dW sums over fixed chunks of images in
   order (then in double over the chunks): the same bits for any thread
   count; not the bits of the unfused path (another order of the same sums).
   AVX-512 only (intrinsics: GCC's generic vectors turned the comparisons
   into scalar code without AVX512DQ); other paths keep the unfused kernels.
   Measured (LeNet-like, batch 128, Trainer.fit): 1 thread 6.3-7k -> 11.3k
   samples/s, 2 threads 10.3-11.8k -> 13.4-14.1k. */

#define FP_LANES 16
#define FP_MAX_TAPS 32        /* kh kw c */
#define FP_MAX_WIN 16         /* pkh pkw candidates a window */
#define FP_MAX_C 4
#define FP_CHUNK_IMAGES 2     /* images per partial sum of dW */
#define FP_PAR_MIN ((double)(1 << 20) * fastnn_cold_scale(8.0))

typedef struct {
    int64_t n, hp, wp, c, oc, oh, ow, pkh, pkw, prows, pcols, taps, win;
    int act;
    float slope;
    int64_t off[FP_MAX_TAPS];  /* tap t = (i kw + j) c + ch: (i wp + j) c + ch in the padded X */
    int64_t qoff[FP_MAX_WIN];  /* candidate q = a pkw + b: (a wp + b) c */
    int32_t qpos[FP_MAX_WIN];  /* and a ow + b in the output grid */
} fp_geom;

#ifdef HAVE_X86
#define FP_TARGET __attribute__((target("avx512f,fma")))
#define FP_INLINE FP_TARGET static inline __attribute__((always_inline))

/* fastnn_act_scalar of identity, relu (z < 0 ? 0 : z) and leaky relu */
FP_INLINE __m512 fp_act(__m512 z, int act, float slope)
{
    const __m512 zero = _mm512_setzero_ps();
    if (act == FASTNN_ACT_RELU)
        return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, zero, _CMP_LT_OQ), z, zero);
    if (act == FASTNN_ACT_LEAKY_RELU)
        return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, zero, _CMP_GT_OQ),
                                    _mm512_mul_ps(z, _mm512_set1_ps(slope)), z);
    return z;
}

/* act_grad_scalar (ops.c) of the same three, from the output y */
FP_INLINE __m512 fp_grad(__m512 y, int act, float slope)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    const __mmask16 pos = _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ);
    if (act == FASTNN_ACT_RELU)
        return _mm512_maskz_mov_ps(pos, one);
    if (act == FASTNN_ACT_LEAKY_RELU)
        return _mm512_mask_blend_ps(pos, _mm512_set1_ps(slope), one);
    return one;
}

/* NPX neighbouring windows (px0 ...) of pooled row (img, py), the channels
   [o0, o0 + 16) of mask mk: each candidate's sum over the taps in order, +
   bias, the activation, then maxpool_row's rule in window order (a later
   value wins if larger, or if NaN over a number). */
FP_INLINE void fp_forward_px(float *P, int32_t *argmax, const float *Xp, const __m512 *wv,
                             __m512 bv, const fp_geom *f, int64_t img, int64_t py, int64_t px0,
                             int64_t o0, __mmask16 mk, const int NPX, const int TAPS,
                             const int WIN)
{
    __m512 z[2 * FP_MAX_WIN];
    const float *xq[2 * FP_MAX_WIN];
    for (int u = 0; u < NPX; u++)
        for (int q = 0; q < WIN; q++) {
            xq[u * WIN + q] = Xp + ((img * f->hp + py * f->pkh) * f->wp + (px0 + u) * f->pkw)
                                       * f->c + f->qoff[q];
            z[u * WIN + q] = _mm512_setzero_ps();
        }
    for (int t = 0; t < TAPS; t++) {
        const int64_t o = f->off[t];
        for (int k = 0; k < NPX * WIN; k++)
            z[k] = _mm512_fmadd_ps(wv[t], _mm512_set1_ps(xq[k][o]), z[k]);
    }
    for (int u = 0; u < NPX; u++) {
        const int64_t px = px0 + u;
        const int32_t p0 = (int32_t)(py * f->pkh * f->ow + px * f->pkw);
        __m512 best = fp_act(_mm512_add_ps(z[u * WIN], bv), f->act, f->slope);
        __m512i at = _mm512_set1_epi32(p0 + f->qpos[0]);
        for (int q = 1; q < WIN; q++) {
            const __m512 v = fp_act(_mm512_add_ps(z[u * WIN + q], bv), f->act, f->slope);
            const __mmask16 take = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ)
                                   | (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q)
                                      & _mm512_cmp_ps_mask(best, best, _CMP_ORD_Q));
            best = _mm512_mask_blend_ps(take, best, v);
            at = _mm512_mask_blend_epi32(take, at, _mm512_set1_epi32(p0 + f->qpos[q]));
        }
        const int64_t idx = ((img * f->prows + py) * f->pcols + px) * f->oc + o0;
        _mm512_mask_storeu_ps(P + idx, mk, best);
        _mm512_mask_storeu_epi32(argmax + idx, mk, at);
    }
}

FP_INLINE void fp_forward_body(float *P, int32_t *argmax, const float *Xp, const float *W,
                               const float *bias, const fp_geom *f, int64_t r, const int TAPS,
                               const int WIN)
{
    const int64_t img = r / f->prows, py = r % f->prows, oc = f->oc;
    for (int64_t o0 = 0; o0 < oc; o0 += FP_LANES) {
        const __mmask16 mk = (__mmask16)((1u << min64(FP_LANES, oc - o0)) - 1u);
        __m512 wv[FP_MAX_TAPS];
        for (int t = 0; t < TAPS; t++)
            wv[t] = _mm512_maskz_loadu_ps(mk, W + t * oc + o0);
        const __m512 bv = bias ? _mm512_maskz_loadu_ps(mk, bias + o0) : _mm512_setzero_ps();
        int64_t px = 0;
        for (; px + 2 <= f->pcols; px += 2)
            fp_forward_px(P, argmax, Xp, wv, bv, f, img, py, px, o0, mk, 2, TAPS, WIN);
        if (px < f->pcols)
            fp_forward_px(P, argmax, Xp, wv, bv, f, img, py, px, o0, mk, 1, TAPS, WIN);
    }
}

/* The shapes the forward and the backward compile with constant loop bounds
   (their sums and candidates in registers), as X(taps, window): 3x3 and 5x5
   kernels over 1 or 3 channels under a 2x2 window.  Other shapes run with
   the geometry's bounds. */
#define FP_SHAPES(X) X(9, 4) X(27, 4) X(25, 4)

/* Pooled row r. */
FP_TARGET static void fp_forward_row(float *P, int32_t *argmax, const float *Xp,
                                     const float *W, const float *bias, const fp_geom *f,
                                     int64_t r)
{
#define FP_CASE(T, N)                                                  \
    if (f->taps == (T) && f->win == (N)) {                             \
        fp_forward_body(P, argmax, Xp, W, bias, f, r, (T), (N));       \
        return;                                                        \
    }
    FP_SHAPES(FP_CASE)
#undef FP_CASE
    fp_forward_body(P, argmax, Xp, W, bias, f, r, (int)f->taps, (int)f->win);
}

/* Chunk ch's partial sums, part[(ch (taps + 1) + t) oc + o]: dW's rows t
   and db's (t = taps), over its images' windows in order. */
FP_INLINE void fp_backward_body(float *part, const float *dP, const int32_t *argmax,
                                const float *Py, const float *Xp, const fp_geom *f, int64_t ch,
                                const int TAPS, const int WIN)
{
    const int64_t oc = f->oc, i0 = ch * FP_CHUNK_IMAGES;
    const int64_t i1 = min64(f->n, i0 + FP_CHUNK_IMAGES);
    for (int64_t o0 = 0; o0 < oc; o0 += FP_LANES) {
        const __mmask16 mk = (__mmask16)((1u << min64(FP_LANES, oc - o0)) - 1u);
        __m512 acc[FP_MAX_TAPS], dbv = _mm512_setzero_ps();
        for (int t = 0; t < TAPS; t++)
            acc[t] = _mm512_setzero_ps();
        for (int64_t img = i0; img < i1; img++)
            for (int64_t py = 0; py < f->prows; py++)
                for (int64_t px = 0; px < f->pcols; px++) {
                    const int64_t idx = ((img * f->prows + py) * f->pcols + px) * oc + o0;
                    /* (dY + 0) act'(y): as the unpooling (-0 -> +0), then the activation */
                    const __m512 g = _mm512_mul_ps(
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mk, dP + idx), _mm512_setzero_ps()),
                        fp_grad(_mm512_maskz_loadu_ps(mk, Py + idx), f->act, f->slope));
                    const __m512i am = _mm512_maskz_loadu_epi32(mk, argmax + idx);
                    const int32_t p0 = (int32_t)(py * f->pkh * f->ow + px * f->pkw);
                    const float *x0 = Xp + ((img * f->hp + py * f->pkh) * f->wp + px * f->pkw)
                                               * f->c;
                    for (int q = 0; q < WIN; q++) {
                        const __mmask16 hit =
                            _mm512_cmpeq_epi32_mask(am, _mm512_set1_epi32(p0 + f->qpos[q]));
                        const __m512 gq = _mm512_maskz_mov_ps(hit, g);
                        const float *xq = x0 + f->qoff[q];
                        dbv = _mm512_add_ps(dbv, gq);
                        for (int t = 0; t < TAPS; t++)
                            acc[t] = _mm512_fmadd_ps(gq, _mm512_set1_ps(xq[f->off[t]]), acc[t]);
                    }
                }
        float *dst = part + ch * (f->taps + 1) * oc + o0;
        for (int t = 0; t < TAPS; t++)
            _mm512_mask_storeu_ps(dst + t * oc, mk, acc[t]);
        _mm512_mask_storeu_ps(dst + f->taps * oc, mk, dbv);
    }
}

FP_TARGET static void fp_backward_chunk(float *part, const float *dP, const int32_t *argmax,
                                        const float *Py, const float *Xp, const fp_geom *f,
                                        int64_t ch)
{
#define FP_CASE(T, N)                                                  \
    if (f->taps == (T) && f->win == (N)) {                             \
        fp_backward_body(part, dP, argmax, Py, Xp, f, ch, (T), (N));   \
        return;                                                        \
    }
    FP_SHAPES(FP_CASE)
#undef FP_CASE
    fp_backward_body(part, dP, argmax, Py, Xp, f, ch, (int)f->taps, (int)f->win);
}

#endif /* HAVE_X86 */

/* The geometry of a fused small-channel convolution + pooling, and the
   floats its backward needs in cols (the padded X, then the partial sums);
   0 if the pair does not qualify or cols (cols_size floats) is too small. */
static int fp_make(fp_geom *f, int64_t *xsize, int64_t *need, int64_t n, int64_t h, int64_t w,
                   int64_t c, int64_t oc, int64_t kh, int64_t kw, int64_t ph, int64_t pw,
                   int act, float slope, int64_t pkh, int64_t pkw)
{
    geom g;
    int64_t K, hp, wp, chunks_part;
#ifndef HAVE_X86
    return 0;
#endif
    if (fastnn_simd_path() != FASTNN_SIMD_AVX512 || c > FP_MAX_C
        || (act != FASTNN_ACT_IDENTITY && act != FASTNN_ACT_RELU
            && act != FASTNN_ACT_LEAKY_RELU)
        || !fastnn_conv2d_pool_fusable(n, h, w, c, oc, kh, kw, 1, 1, ph, pw, act, pkh, pkw, pkh,
                                       pkw)
        || !conv_geom(&g, &K, n, h, w, c, oc, kh, kw, 1, 1, ph, pw, act) || K > FP_MAX_TAPS
        || pkh * pkw > FP_MAX_WIN)
        return 0;
    *xsize = padded_size(n, h, w, c, ph, pw, &hp, &wp);
    const int64_t chunks = (n + FP_CHUNK_IMAGES - 1) / FP_CHUNK_IMAGES;
    if (*xsize <= 0 || !fastnn_product(&chunks_part, chunks, K + 1, oc)
        || !fastnn_add(need, *xsize, chunks_part) || *need > g.out_pixels * K)
        return 0;
    *f = (fp_geom){.n = n, .hp = hp, .wp = wp, .c = c, .oc = oc, .oh = g.oh, .ow = g.ow,
                   .pkh = pkh, .pkw = pkw, .prows = g.oh / pkh, .pcols = g.ow / pkw, .taps = K,
                   .win = pkh * pkw, .act = act, .slope = slope};
    for (int64_t t = 0; t < K; t++) {
        const int64_t i = t / (kw * c), j = t / c % kw, ch = t % c;
        f->off[t] = (i * wp + j) * c + ch;
    }
    for (int64_t q = 0; q < f->win; q++) {
        f->qoff[q] = (q / pkw * wp + q % pkw) * c;
        f->qpos[q] = (int32_t)(q / pkw * g.ow + q % pkw);
    }
    return 1;
}

#ifdef HAVE_X86
typedef struct {
    float *P;
    int32_t *argmax;
    const float *Xp, *W, *bias;
    const fp_geom *f;
} fpf_ctx;
ROW_FN(fp_forward_i, fpf_ctx, fp_forward_row(c->P, c->argmax, c->Xp, c->W, c->bias, c->f, i))

typedef struct {
    float *part;
    const float *dP;
    const int32_t *argmax;
    const float *Py, *Xp;
    const fp_geom *f;
} fpb_ctx;
ROW_FN(fp_backward_i, fpb_ctx,
       fp_backward_chunk(c->part, c->dP, c->argmax, c->Py, c->Xp, c->f, i))
#endif

int fastnn_conv_pool_small_ok(int64_t n, int64_t h, int64_t w, int64_t c, int64_t oc,
                              int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                              int64_t pw, int act, int64_t pkh, int64_t pkw, int64_t psh,
                              int64_t psw)
{
    fp_geom f;
    int64_t xsize, need;
    return sh == 1 && sw == 1 && psh == pkh && psw == pkw
           && fp_make(&f, &xsize, &need, n, h, w, c, oc, kh, kw, ph, pw, act, 0.0f, pkh, pkw);
}

int fastnn_conv_pool_small_forward(float *P, int32_t *argmax, float *cols, const float *X,
                                   const float *W, const float *b, int64_t n, int64_t h,
                                   int64_t w, int64_t c, int64_t oc, int64_t kh, int64_t kw,
                                   int64_t ph, int64_t pw, int act, float slope, int64_t pkh,
                                   int64_t pkw)
{
    fp_geom f;
    int64_t xsize, need;
    if (!P || !argmax || !cols || !X || !W
        || !fp_make(&f, &xsize, &need, n, h, w, c, oc, kh, kw, ph, pw, act, slope, pkh, pkw))
        return FASTNN_EINVAL;
    const pad_ctx pc = {cols, X, h, w, c, ph, pw};
    TEAM_FOR(n * f.hp, xsize > PAR_MIN, pad_row_i, &pc);
    const double madds = (double)n * (double)(f.prows * f.pcols * f.win) * (double)(f.taps * oc);
#ifdef HAVE_X86
    const fpf_ctx fc = {P, argmax, cols, W, b, &f};
    TEAM_FOR(n * f.prows, madds > FP_PAR_MIN, fp_forward_i, &fc);
#endif
    return FASTNN_OK;
}

int fastnn_conv_pool_small_backward(float *dW, float *db, float *cols, const float *dP,
                                    const int32_t *argmax, const float *Py, int64_t n,
                                    int64_t h, int64_t w, int64_t c, int64_t oc, int64_t kh,
                                    int64_t kw, int64_t ph, int64_t pw, int act, float slope,
                                    int64_t pkh, int64_t pkw)
{
    fp_geom f;
    int64_t xsize, need;
    if (!dW || !cols || !dP || !argmax || !Py
        || !fp_make(&f, &xsize, &need, n, h, w, c, oc, kh, kw, ph, pw, act, slope, pkh, pkw))
        return FASTNN_EINVAL;
    const int64_t chunks = (n + FP_CHUNK_IMAGES - 1) / FP_CHUNK_IMAGES, K = f.taps;
    float *part = cols + xsize;
    const double madds = (double)n * (double)(f.prows * f.pcols * f.win) * (double)(K * oc);
#ifdef HAVE_X86
    const fpb_ctx bc = {part, dP, argmax, Py, cols, &f};
    TEAM_FOR(chunks, madds > FP_PAR_MIN, fp_backward_i, &bc);
#endif
    for (int64_t t = 0; t <= K; t++) {
        float *dst = t < K ? dW + t * oc : db;
        if (!dst)
            continue;
        for (int64_t o = 0; o < oc; o++) {
            double sum = 0.0;
            for (int64_t ch = 0; ch < chunks; ch++)
                sum += part[(ch * (K + 1) + t) * oc + o];
            dst[o] = (float)sum;
        }
    }
    return FASTNN_OK;
}

/* ---- pooling ------------------------------------------------------------------- */

/* make_geom without padding, and *out = n oh ow c (the floats of Y); 0 also
   if that overflows. */
static int pool_geom(geom *g, int64_t *out, int64_t n, int64_t h, int64_t w, int64_t c,
                     int64_t kh, int64_t kw, int64_t sh, int64_t sw)
{
    return make_geom(g, n, h, w, c, kh, kw, sh, sw, 0, 0)
           && fastnn_product(out, g->out_pixels, c);
}

/* A pooling kernel's work: an output's window per output float (in double:
   a threshold, and the product can pass int64 where no buffer does). */
static double pool_work(const geom *g, int64_t out)
{
    return (double)out * (double)g->window;
}

/* Output row (img, oy): each window's maximum over the channels at once,
   scanned in row-major window order; a later value wins only if larger, or
   if it is NaN and the best is not (np.argmax's rule). */
static void maxpool_row(float *Y, int32_t *argmax, const float *X, const geom *g,
                        int64_t img, int64_t oy)
{
    const int64_t c = g->c, o = (img * g->oh + oy) * g->ow * c;
    const float *x = X + img * g->h * g->w * c;
    for (int64_t ox = 0; ox < g->ow; ox++) {
        float *y = Y + o + ox * c;
        int32_t *am = argmax + o + ox * c;
        const int64_t p0 = oy * g->sh * g->w + ox * g->sw;
        for (int64_t ch = 0; ch < c; ch++) {
            y[ch] = x[p0 * c + ch];
            am[ch] = (int32_t)p0;
        }
        for (int64_t i = 0; i < g->kh; i++)
            for (int64_t j = i == 0; j < g->kw; j++) {
                const int64_t p = p0 + i * g->w + j;
                const float *xs = x + p * c;
#pragma omp simd
                for (int64_t ch = 0; ch < c; ch++) {
                    const float v = xs[ch], best = y[ch];
                    const int take = v > best || (v != v && best == best);
                    y[ch] = take ? v : best;
                    am[ch] = take ? (int32_t)p : am[ch];
                }
            }
    }
}

/* maxpool_row for 2x2 windows (any stride): the four candidates of a
   channel compared in registers, one pass over the channels per output
   pixel instead of four passes through Y and argmax in memory.  The same
   order and rule as maxpool_row, so the same results. */
FASTNN_CLONES
static void maxpool_row_2x2(float *Y, int32_t *argmax, const float *X, const geom *g,
                            int64_t img, int64_t oy)
{
    const int64_t c = g->c, w = g->w, o = (img * g->oh + oy) * g->ow * c;
    const float *x = X + img * g->h * w * c;
    for (int64_t ox = 0; ox < g->ow; ox++) {
        float *y = Y + o + ox * c;
        int32_t *am = argmax + o + ox * c;
        const int64_t p0 = oy * g->sh * w + ox * g->sw;
        const float *x0 = x + p0 * c, *x1 = x0 + c, *x2 = x0 + w * c, *x3 = x2 + c;
        const int32_t q0 = (int32_t)p0, q1 = q0 + 1, q2 = (int32_t)(p0 + w), q3 = q2 + 1;
#pragma omp simd
        for (int64_t ch = 0; ch < c; ch++) {
            float best = x0[ch], v;
            int32_t at = q0;
            int take;
            v = x1[ch];
            take = v > best || (v != v && best == best);
            best = take ? v : best;
            at = take ? q1 : at;
            v = x2[ch];
            take = v > best || (v != v && best == best);
            best = take ? v : best;
            at = take ? q2 : at;
            v = x3[ch];
            take = v > best || (v != v && best == best);
            best = take ? v : best;
            at = take ? q3 : at;
            y[ch] = best;
            am[ch] = at;
        }
    }
}

/* X (n,h,w,c), Y and argmax (n,oh,ow,c). */
typedef struct {
    float *Y;
    int32_t *argmax;
    const float *X;
    const geom *g;
} pool_ctx;
ROW_FN(maxpool_2x2_i, pool_ctx,
       maxpool_row_2x2(c->Y, c->argmax, c->X, c->g, i / c->g->oh, i % c->g->oh))
ROW_FN(maxpool_i, pool_ctx, maxpool_row(c->Y, c->argmax, c->X, c->g, i / c->g->oh, i % c->g->oh))

int fastnn_maxpool2d_forward(float *Y, int32_t *argmax, const float *X, int64_t n, int64_t h,
                             int64_t w, int64_t c, int64_t kh, int64_t kw, int64_t sh,
                             int64_t sw)
{
    geom g;
    int64_t out;
    /* argmax holds an index y * w + x of the image: h w must fit in int32 */
    if (!Y || !argmax || !X || !pool_geom(&g, &out, n, h, w, c, kh, kw, sh, sw)
        || h > INT32_MAX / w)
        return FASTNN_EINVAL;
    const pool_ctx pc = {Y, argmax, X, &g};
    if (kh == 2 && kw == 2)
        TEAM_FOR(n * g.oh, pool_work(&g, out) > PAR_MIN, maxpool_2x2_i, &pc);
    else
        TEAM_FOR(n * g.oh, pool_work(&g, out) > PAR_MIN, maxpool_i, &pc);
    return FASTNN_OK;
}

/* 1 if every index of argmax[lo, hi) lies in [0, hw). */
static int indices_valid(const int32_t *argmax, int64_t lo, int64_t hi, int64_t hw)
{
    int bad = 0;
#pragma omp simd reduction(| : bad)
    for (int64_t k = lo; k < hi; k++)
        bad |= argmax[k] < 0 || argmax[k] >= hw;
    return !bad;
}

/* dX image img = 0, then each dY of the image added at its argmax. */
static void maxpool_back_image(float *dX, const float *dY, const int32_t *argmax,
                               const geom *g, int64_t img)
{
    const int64_t c = g->c, hwc = g->h * g->w * c, per = g->oh * g->ow * c;
    float *dx = dX + img * hwc;
    memset(dx, 0, (size_t)hwc * sizeof *dx);
    const float *dy = dY + img * per;
    const int32_t *am = argmax + img * per;
    for (int64_t o = 0; o < per; o += c)
        for (int64_t ch = 0; ch < c; ch++)
            dx[(int64_t)am[o + ch] * c + ch] += dy[o + ch];
}

/* maxpool_back_image for windows that tile the image (stride = window):
   every element of dX is written once, dY where its window's argmax names
   it and 0 elsewhere (also the pixels no window covers), so no memset and
   no scatter.  Returns 0 (dX of the image then unspecified) if some argmax
   does not lie in its own window -- legal input, which the scatter handles. */
FASTNN_CLONES
static int maxpool_back_tiled(float *dX, const float *dY, const int32_t *argmax,
                              const geom *g, int64_t img)
{
    const int64_t c = g->c, w = g->w, kh = g->kh, kw = g->kw, ow = g->ow;
    const int64_t covered_h = g->oh * kh, covered_w = ow * kw;
    float *dx = dX + img * g->h * w * c;
    const float *dy = dY + img * g->oh * ow * c;
    const int32_t *am = argmax + img * g->oh * ow * c;
    int64_t hits = 0;
    for (int64_t iy = 0; iy < g->h; iy++) {
        float *d = dx + iy * w * c;
        if (iy >= covered_h) {
            memset(d, 0, (size_t)(w * c) * sizeof *d);
            continue;
        }
        if (covered_w < w)
            memset(d + covered_w * c, 0, (size_t)((w - covered_w) * c) * sizeof *d);
    }
    /* channel blocks of CB, with per-lane match counts (no horizontal sum
       per pixel) */
    for (int64_t c0 = 0; c0 < c; c0 += CB) {
        const int64_t cb = min64(CB, c - c0);
        int32_t cnt[CB] = {0};
        for (int64_t iy = 0; iy < covered_h; iy++) {
            const int64_t orow = iy / kh * ow * c + c0;
            for (int64_t ox = 0; ox < ow; ox++)
                for (int64_t j = 0; j < kw; j++) {
                    const int64_t ix = ox * kw + j, o = orow + ox * c;
                    const int32_t p = (int32_t)(iy * w + ix);
                    float *dp = dx + (iy * w + ix) * c + c0;
#pragma omp simd
                    for (int64_t k = 0; k < cb; k++) {
                        const int match = am[o + k] == p;
                        dp[k] = match ? dy[o + k] + 0.0f : 0.0f;  /* -0 -> +0, as 0 + dy */
                        cnt[k] += match;
                    }
                }
        }
        for (int64_t k = 0; k < cb; k++)
            hits += cnt[k];
    }
    /* each output's argmax matched at most once (positions are distinct) */
    return hits == g->oh * ow * c;
}

static void maxpool_back_image_any(float *dX, const float *dY, const int32_t *argmax,
                                   const geom *g, int64_t img)
{
    if (g->sh == g->kh && g->sw == g->kw && maxpool_back_tiled(dX, dY, argmax, g, img))
        return;
    maxpool_back_image(dX, dY, argmax, g, img);
}

/* dY and argmax (n,oh,ow,c), dX (n,h,w,c). */
typedef struct {
    float *dX;
    const float *dY;
    const int32_t *argmax;
    const geom *g;
} unpool_ctx;
ROW_FN(maxpool_back_i, unpool_ctx, maxpool_back_image_any(c->dX, c->dY, c->argmax, c->g, i))

int fastnn_maxpool2d_backward(float *dX, const float *dY, const int32_t *argmax, int64_t n,
                              int64_t h, int64_t w, int64_t c, int64_t kh, int64_t kw,
                              int64_t sh, int64_t sw)
{
    geom g;
    int64_t total;
    if (!dX || !dY || !argmax || !pool_geom(&g, &total, n, h, w, c, kh, kw, sh, sw)
        || !indices_valid(argmax, 0, total, h * w))
        return FASTNN_EINVAL;
    const unpool_ctx uc = {dX, dY, argmax, &g};
    TEAM_FOR(n, (double)total + (double)g.in_size > PAR_MIN, maxpool_back_i, &uc);
    return FASTNN_OK;
}

/* out[0:c] = scale * the sum of the c-vectors of pixels [y0, y1) x [x0, x1)
   of one channels-last image of width w, in double, CB channels at a time:
   the one sum of both average-pooling passes (a window's mean forward; the
   windows covering a pixel backward). */
static void scaled_pixel_sum(float *out, const float *img, int64_t w, int64_t c, int64_t y0,
                             int64_t y1, int64_t x0, int64_t x1, double scale)
{
    for (int64_t c0 = 0; c0 < c; c0 += CB) {
        const int64_t cb = min64(CB, c - c0);
        double acc[CB] = {0};
        for (int64_t y = y0; y < y1; y++)
            for (int64_t x = x0; x < x1; x++) {
                const float *s = img + (y * w + x) * c + c0;
#pragma omp simd
                for (int64_t k = 0; k < cb; k++)
                    acc[k] += s[k];
            }
        for (int64_t k = 0; k < cb; k++)
            out[c0 + k] = (float)(acc[k] * scale);
    }
}

/* Output row (img, oy): window means. */
static void avgpool_row(float *Y, const float *X, const geom *g, int64_t img, int64_t oy)
{
    const int64_t c = g->c;
    const double inv = 1.0 / (double)g->window;
    const float *x = X + img * g->h * g->w * c;
    for (int64_t ox = 0; ox < g->ow; ox++)
        scaled_pixel_sum(Y + ((img * g->oh + oy) * g->ow + ox) * c, x, g->w, c, oy * g->sh,
                         oy * g->sh + g->kh, ox * g->sw, ox * g->sw + g->kw, inv);
}

/* X (n,h,w,c), Y (n,oh,ow,c). */
ROW_FN(avgpool_i, rows_ctx, avgpool_row(c->dst, c->src, c->g, i / c->g->oh, i % c->g->oh))

int fastnn_avgpool2d_forward(float *Y, const float *X, int64_t n, int64_t h, int64_t w,
                             int64_t c, int64_t kh, int64_t kw, int64_t sh, int64_t sw)
{
    geom g;
    int64_t out;
    if (!Y || !X || !pool_geom(&g, &out, n, h, w, c, kh, kw, sh, sw))
        return FASTNN_EINVAL;
    const rows_ctx ac = {Y, X, &g};
    TEAM_FOR(n * g.oh, pool_work(&g, out) > PAR_MIN, avgpool_i, &ac);
    return FASTNN_OK;
}

/* The outputs [*lo, *hi) along one axis whose windows (size k, stride s)
   cover input position x. */
static inline void covering(int64_t x, int64_t k, int64_t s, int64_t out,
                            int64_t *lo, int64_t *hi)
{
    *lo = x >= k ? (x - k) / s + 1 : 0;
    *hi = max64(*lo, min64(out, x / s + 1));
}

/* Input row (img, iy) of dX: each pixel gathers dY / (kh kw) of the
   windows covering it, in double, so no two threads write one element. */
static void avgpool_back_row(float *dX, const float *dY, const geom *g, int64_t img,
                             int64_t iy)
{
    const int64_t c = g->c;
    const double inv = 1.0 / (double)g->window;
    const float *dy = dY + img * g->oh * g->ow * c;
    int64_t ylo, yhi;
    covering(iy, g->kh, g->sh, g->oh, &ylo, &yhi);
    for (int64_t ix = 0; ix < g->w; ix++) {
        int64_t xlo, xhi;
        covering(ix, g->kw, g->sw, g->ow, &xlo, &xhi);
        scaled_pixel_sum(dX + ((img * g->h + iy) * g->w + ix) * c, dy, g->ow, c, ylo, yhi, xlo,
                         xhi, inv);
    }
}

/* dY (n,oh,ow,c), dX (n,h,w,c). */
ROW_FN(avgpool_back_i, rows_ctx,
       avgpool_back_row(c->dst, c->src, c->g, i / c->g->h, i % c->g->h))

int fastnn_avgpool2d_backward(float *dX, const float *dY, int64_t n, int64_t h, int64_t w,
                              int64_t c, int64_t kh, int64_t kw, int64_t sh, int64_t sw)
{
    geom g;
    int64_t out;
    if (!dX || !dY || !pool_geom(&g, &out, n, h, w, c, kh, kw, sh, sw))
        return FASTNN_EINVAL;
    const rows_ctx ac = {dX, dY, &g};
    TEAM_FOR(n * h, g.in_size > PAR_MIN, avgpool_back_i, &ac);
    return FASTNN_OK;
}

/* ---- batch normalisation ---------------------------------------------------------
   Every kernel walks the channels in blocks of CB: per-block statistics and
   coefficients sit in stack arrays, and each pass over the rows of a block
   is parallel over row spans.  Sums are per piece of rows (channel_sums:
   fixed pieces, each its own accumulators, added in piece order), so no
   two threads add into one accumulator and the thread count changes no
   bit. */

enum sum_kind {
    SUM_X,          /* s1 += x                                  */
    SUM_SQDEV,      /* s1 += (x - m)^2                          */
    SUM_GRADS       /* s1 += dy,  s2 += dy (x - m)   (A = dY)   */
};

/* Channel sums over rows [lo, hi) of channels [c0, c0 + cb) of X (rows, c). */
static void sums_span(double *s1, double *s2, enum sum_kind kind, const float *X,
                      const float *A, const double *m, int64_t c, int64_t c0, int64_t cb,
                      int64_t lo, int64_t hi)
{
    for (int64_t r = lo; r < hi; r++) {
        const float *x = X + r * c + c0, *a = A + r * c + c0;
        if (kind == SUM_X) {
#pragma omp simd
            for (int64_t k = 0; k < cb; k++)
                s1[k] += x[k];
        } else if (kind == SUM_SQDEV) {
#pragma omp simd
            for (int64_t k = 0; k < cb; k++) {
                const double d = x[k] - m[k];
                s1[k] += d * d;
            }
        } else {
#pragma omp simd
            for (int64_t k = 0; k < cb; k++) {
                s1[k] += a[k];
                s2[k] += a[k] * (x[k] - m[k]);
            }
        }
    }
}

/* The rows are summed in at most BN_PIECES pieces of whole BN_SPAN spans,
   on boundaries that depend only on rows, and the pieces' sums added in
   piece order: the same bits whatever the thread count (an OpenMP
   reduction adds the threads' copies in the order they finish, each over a
   share that moves with the thread count). */
#define BN_PIECES 16

/* Piece q of np over `spans` spans of rows: [*lo, *hi). */
static void bn_piece(int64_t rows, int64_t spans, int64_t np, int64_t q, int64_t *lo,
                     int64_t *hi)
{
    const int64_t base = spans / np, rem = spans % np;
    const int64_t s0 = q * base + (q < rem ? q : rem), s1 = s0 + base + (q < rem);
    *lo = s0 > rows / BN_SPAN ? rows : s0 * BN_SPAN;
    *hi = s1 > rows / BN_SPAN ? rows : s1 * BN_SPAN;
}

/* Piece q of channel_sums's: its sums into a1[q], a2[q]. */
typedef struct {
    double (*a1)[CB], (*a2)[CB];
    enum sum_kind kind;
    const float *X, *A;
    const double *m;
    int64_t rows, spans, np, c, c0, cb;
} piece_ctx;

static void piece_sums_i(const void *ctx, int64_t q)
{
    const piece_ctx *p = ctx;
    int64_t lo, hi;
    bn_piece(p->rows, p->spans, p->np, q, &lo, &hi);
    for (int64_t k = 0; k < p->cb; k++)
        p->a1[q][k] = p->a2[q][k] = 0.0;
    sums_span(p->a1[q], p->a2[q], p->kind, p->X, p->A, p->m, p->c, p->c0, p->cb, lo, hi);
}

static void channel_sums(double *s1, double *s2, enum sum_kind kind, const float *X,
                         const float *A, const double *m, int64_t rows, int64_t c,
                         int64_t c0, int64_t cb)
{
    const int64_t spans = rows / BN_SPAN + (rows % BN_SPAN != 0);
    const int64_t np = spans < BN_PIECES ? spans : BN_PIECES;
    double a1[BN_PIECES][CB], a2[BN_PIECES][CB];
    const piece_ctx pc = {a1, a2, kind, X, A, m, rows, spans, np, c, c0, cb};
    TEAM_FOR(np, rows * cb > PAR_MIN, piece_sums_i, &pc);
    for (int64_t k = 0; k < cb; k++) {
        s1[k] = s2[k] = 0.0;
        for (int64_t q = 0; q < np; q++) {
            s1[k] += a1[q][k];
            s2[k] += a2[q][k];
        }
    }
}

/* Y = (X - center) scale + shift over rows [lo, hi), channels [c0, c0+cb). */
static void affine_span(float *Y, const float *X, const float *center, const float *scale,
                        const float *shift, int64_t c, int64_t c0, int64_t cb, int64_t lo,
                        int64_t hi)
{
    for (int64_t r = lo; r < hi; r++) {
        const float *x = X + r * c + c0;
        float *y = Y + r * c + c0;
#pragma omp simd
        for (int64_t k = 0; k < cb; k++)
            y[k] = (x[k] - center[k]) * scale[k] + shift[k];
    }
}

typedef struct {
    float *Y;
    const float *X, *center, *scale, *shift;
    int64_t c, c0, cb, rows;
} affine_ctx;
ROW_FN(affine_i, affine_ctx,
       affine_span(c->Y, c->X, c->center, c->scale, c->shift, c->c, c->c0, c->cb, i * BN_SPAN,
                   min64((i + 1) * BN_SPAN, c->rows)))

static void affine(float *Y, const float *X, const float *center, const float *scale,
                   const float *shift, int64_t rows, int64_t c, int64_t c0, int64_t cb)
{
    const int64_t spans = (rows + BN_SPAN - 1) / BN_SPAN;
    const affine_ctx ac = {Y, X, center, scale, shift, c, c0, cb, rows};
    TEAM_FOR(spans, rows * cb > PAR_MIN, affine_i, &ac);
}

/* X, Y (rows,c); gamma, beta, mean, invstd, running_mean, running_var (c). */
int fastnn_batchnorm_forward(float *Y, float *mean, float *invstd, float *running_mean,
                             float *running_var, const float *X, const float *gamma,
                             const float *beta, int64_t rows, int64_t c, double momentum,
                             double eps)
{
    int64_t size;
    if (!Y || !mean || !invstd || !running_mean || !running_var || !X || !gamma || !beta
        || rows < 2 || c < 1 || !fastnn_product(&size, rows, c) || !(eps > 0.0)
        || !(momentum >= 0.0 && momentum <= 1.0))
        return FASTNN_EINVAL;
    for (int64_t c0 = 0; c0 < c; c0 += CB) {
        const int64_t cb = min64(CB, c - c0);
        double mu[CB], var[CB], unused[CB];
        float center[CB], scale[CB];
        channel_sums(mu, unused, SUM_X, X, X, NULL, rows, c, c0, cb);
        for (int64_t k = 0; k < cb; k++)
            mu[k] /= (double)rows;
        channel_sums(var, unused, SUM_SQDEV, X, X, mu, rows, c, c0, cb);
        for (int64_t k = 0; k < cb; k++) {
            const int64_t j = c0 + k;
            var[k] /= (double)rows;
            const double istd = 1.0 / sqrt(var[k] + eps);
            mean[j] = center[k] = (float)mu[k];
            invstd[j] = (float)istd;
            scale[k] = (float)(istd * gamma[j]);
            running_mean[j] = (float)((1.0 - momentum) * running_mean[j] + momentum * mu[k]);
            running_var[j] = (float)((1.0 - momentum) * running_var[j]
                                     + momentum * var[k] * (double)rows / (double)(rows - 1));
        }
        affine(Y, X, center, scale, beta + c0, rows, c, c0, cb);
    }
    return FASTNN_OK;
}

/* X, Y (rows,c); gamma, beta, running_mean, running_var (c). */
int fastnn_batchnorm_inference(float *Y, const float *X, const float *gamma, const float *beta,
                               const float *running_mean, const float *running_var,
                               int64_t rows, int64_t c, double eps)
{
    int64_t size;
    if (!Y || !X || !gamma || !beta || !running_mean || !running_var || rows < 1 || c < 1
        || !fastnn_product(&size, rows, c) || !(eps > 0.0))
        return FASTNN_EINVAL;
    for (int64_t c0 = 0; c0 < c; c0 += CB) {
        const int64_t cb = min64(CB, c - c0);
        float scale[CB];
        for (int64_t k = 0; k < cb; k++)
            scale[k] = (float)(gamma[c0 + k] / sqrt((double)running_var[c0 + k] + eps));
        affine(Y, X, running_mean + c0, scale, beta + c0, rows, c, c0, cb);
    }
    return FASTNN_OK;
}

/* dX = a (dY - dbeta / M - (X - mean) g) over rows [lo, hi) of a channel
   block, with a = gamma invstd and g = dgamma invstd / M per channel. */
static void bn_backward_span(float *dX, const float *dY, const float *X, const float *mean,
                             const float *a, const float *mb, const float *g, int64_t c,
                             int64_t c0, int64_t cb, int64_t lo, int64_t hi)
{
    for (int64_t r = lo; r < hi; r++) {
        const float *x = X + r * c + c0, *dy = dY + r * c + c0;
        float *dx = dX + r * c + c0;
#pragma omp simd
        for (int64_t k = 0; k < cb; k++)
            dx[k] = a[k] * (dy[k] - mb[k] - (x[k] - mean[k]) * g[k]);
    }
}

/* dY, X, dX (rows,c); gamma, mean, invstd, dgamma, dbeta (c). */
typedef struct {
    float *dX;
    const float *dY, *X, *mean, *a, *mb, *g;
    int64_t c, c0, cb, rows;
} bnb_ctx;
ROW_FN(bn_backward_i, bnb_ctx,
       bn_backward_span(c->dX, c->dY, c->X, c->mean, c->a, c->mb, c->g, c->c, c->c0, c->cb,
                        i * BN_SPAN, min64((i + 1) * BN_SPAN, c->rows)))

int fastnn_batchnorm_backward(float *dX, float *dgamma, float *dbeta, const float *dY,
                              const float *X, const float *gamma, const float *mean,
                              const float *invstd, int64_t rows, int64_t c)
{
    int64_t size;
    if (!dX || !dgamma || !dbeta || !dY || !X || !gamma || !mean || !invstd || rows < 1
        || c < 1 || !fastnn_product(&size, rows, c))
        return FASTNN_EINVAL;
    const int64_t spans = (rows + BN_SPAN - 1) / BN_SPAN;
    for (int64_t c0 = 0; c0 < c; c0 += CB) {
        const int64_t cb = min64(CB, c - c0);
        double m[CB], sdy[CB], sdyx[CB];
        float a[CB], mb[CB], g[CB];
        for (int64_t k = 0; k < cb; k++)
            m[k] = mean[c0 + k];
        channel_sums(sdy, sdyx, SUM_GRADS, X, dY, m, rows, c, c0, cb);
        for (int64_t k = 0; k < cb; k++) {
            const int64_t j = c0 + k;
            const double dg = sdyx[k] * invstd[j];
            dbeta[j] = (float)sdy[k];
            dgamma[j] = (float)dg;
            a[k] = (float)((double)gamma[j] * invstd[j]);
            mb[k] = (float)(sdy[k] / (double)rows);
            g[k] = (float)(dg * invstd[j] / (double)rows);
        }
        const bnb_ctx bc = {dX, dY, X, mean + c0, a, mb, g, c, c0, cb, rows};
        TEAM_FOR(spans, rows * cb > PAR_MIN, bn_backward_i, &bc);
    }
    return FASTNN_OK;
}
