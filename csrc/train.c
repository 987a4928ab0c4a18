/*
 * train.c -- a whole training epoch of a stack of dense layers, in C.
 *
 * The trainer's inner loop (forward, loss, backward, optimizer update per
 * mini-batch) written once more on top of the public kernels of this
 * library, so that Python is called once per epoch instead of ~10 times per
 * batch.  Its specification is fastnn.kernels.reference.dense_stack_epoch;
 * the tests run both on the same data and compare the trajectories.
 *
 * The arguments are one struct, fastnn_epoch (fastnn.h; spec.Epoch on the
 * Python side).  Workspace layout (floats; spec.epoch_layout, the same on
 * every backend), for a full batch of B rows (a shorter last batch uses the
 * leading rows):
 *   Y_0 (B, out_0) | Y_1 | ... | D_0 (B, out_0) | D_1 | ...    outputs, gradients
 *   | Xb (B, in_0) | Tb (B, out_last) | Lb (B int32)            a gathered batch
 *   (Xb only when the first layer has one output: wider ones read the
 *   shuffled rows of X where they lie, the gemm's packing gathering them --
 *   fastnn_gemm_rows; the same bits as multiplying the copy)
 *   | P[2 T] (B, widest out), threads > 1                       partial products
 * (layer l's partial products use buffers [(l & 1) T, (l & 1) T + T), see slab).
 * The loss gradient goes into D_last; layer l's backward turns D_l into dZ
 * in place and writes dX into D_(l-1).  Which thread writes what is told
 * at epoch_thread.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include <omp.h>

#include "fastnn.h"
#include "gemm_kernels.h"
#include "internal.h"

/* More layers than any dense stack needs; bounds the offset table below. */
#define MAX_LAYERS 1024

/* Where the parts of the workspace start (floats; Y_0 at 0): the layout
   above, spec.epoch_layout. */
struct layout {
    int64_t D, Xb, Tb, Lb, Z, P, size;
};

/* 16-bit words of a row of dropout mask bits, of c columns. */
static int64_t bit_words(int64_t c)
{
    return c / 16 + (c % 16 != 0);
}

/* *size = the floats of a layer's post-op region (Z, mean and invstd, and
   with dropout its mask of B rows of bit_words(c), rounded up to floats);
   0 past int64. */
static int post_region(int64_t *size, const fastnn_post_op *q, int64_t batch, int64_t c)
{
    int64_t words = 0;
    if (!fastnn_product(size, batch + 2, c)
        || (q->dropout && !fastnn_product(&words, batch, bit_words(c))))
        return 0;
    return fastnn_add(size, *size, words / 2 + words % 2);
}

/* Fills w for `threads` threads; 0 for invalid arguments or a size past
   int64. */
static int workspace_layout(struct layout *w, const fastnn_dense_layer *layers,
                            const fastnn_post_op *post, int n_layers, int64_t batch, int threads)
{
    if (!layers || n_layers < 1 || batch < 1 || threads < 1)
        return 0;
    int64_t outs = 0, widest = 0, part;
    for (int l = 0; l < n_layers; l++) {
        if (layers[l].in < 1 || layers[l].out < 1 || !fastnn_add(&outs, outs, layers[l].out))
            return 0;
        widest = layers[l].out > widest ? layers[l].out : widest;
    }
    if (!fastnn_product(&w->D, batch, outs) || !fastnn_add(&w->Xb, w->D, w->D)
        || !fastnn_product(&part, batch, layers[0].in) || !fastnn_add(&w->Tb, w->Xb, part)
        || !fastnn_product(&part, batch, layers[n_layers - 1].out)
        || !fastnn_add(&w->Lb, w->Tb, part) || !fastnn_add(&w->Z, w->Lb, batch))
        return 0;
    /* post ops, per layer: Z_l (B, out_l), mean, invstd (out_l each), then
       with dropout the mask bits (post_region) */
    w->P = w->Z;
    for (int l = 0; post && l < n_layers; l++)
        if ((post[l].bn || post[l].dropout)
            && (!post_region(&part, &post[l], batch, layers[l].out)
                || !fastnn_add(&w->P, w->P, part)))
            return 0;
    if (threads == 1) {
        w->size = w->P;
        return 1;
    }
    return fastnn_product(&part, 2, threads, batch, widest) && fastnn_add(&w->size, w->P, part);
}

int64_t fastnn_dense_stack_workspace(const fastnn_dense_layer *layers, int n_layers,
                                     int64_t batch, int threads)
{
    struct layout w;
    return workspace_layout(&w, layers, NULL, n_layers, batch, threads) ? w.size : -1;
}

int64_t fastnn_dense_stack_post_workspace(const fastnn_dense_layer *layers,
                                          const fastnn_post_op *post, int n_layers,
                                          int64_t batch, int threads)
{
    struct layout w;
    return workspace_layout(&w, layers, post, n_layers, batch, threads) ? w.size : -1;
}

/* Every size and offset describes memory inside the caller's buffers. */
static int stack_valid(int64_t n_params, const fastnn_dense_layer *layers, int n_layers)
{
    for (int l = 0; l < n_layers; l++) {
        const fastnn_dense_layer *L = &layers[l];
        if (L->in < 1 || L->out < 1 || L->act < FASTNN_ACT_IDENTITY || L->act > FASTNN_ACT_SOFTPLUS)
            return 0;
        if (l > 0 && L->in != layers[l - 1].out)
            return 0;
        if (L->w_offset < 0 || L->in > n_params / L->out || L->w_offset > n_params - L->in * L->out)
            return 0;
        if (L->b_offset != -1 && (L->b_offset < 0 || L->b_offset > n_params - L->out))
            return 0;
    }
    return 1;
}

/* The optimizer step and count_correct are shared with the model epoch
   (optimizer_step.c, internal.h); the short names of this file: */
#define optimizer_valid fastnn_optimizer_valid
#define optimizer_advance fastnn_optimizer_advance
#define optimizer_apply fastnn_optimizer_apply
#define count_correct fastnn_count_correct

#define MAX_THREADS 64
/* The loss of a batch is summed over this many fixed pieces of its rows. */
#define LOSS_PIECES 64
/* A feature dimension is cut into at most this many fixed chunks. */
#define MAX_CHUNKS 4

/* What the threads of one epoch share: the caller's arguments and what
   the epoch derives from them. */
struct epoch {
    fastnn_epoch *a;
    int64_t rows;                 /* the epoch's samples: n, or n_order with order */
    float *Y, *D, *P;             /* the workspace: outputs, gradients, partials */
    float *Xb, *Tb;               /* ... a batch's gathered rows of X and T */
    int gather_in_gemm;           /* the first layer's gemms read X's rows through the
                                     order (no copy into Xb) */
    int32_t *Lb;                  /* ... and labels (with order only) */
    int64_t *row_off;             /* layer l's rows start at Y/D + batch * row_off[l] */
    int64_t widest_out;           /* a partial buffer's width */
    const int64_t *gaps;          /* [lo, hi) pairs of params no layer owns */
    int n_gaps;
    int threads;
    int chunked;                  /* feature dimensions are cut into chunks (n_chunks) */
    signed char *split_in;        /* per layer: forward split by input (threads > 1) */
    const fastnn_post_op *post;   /* per layer, or NULL */
    float **Z;                    /* per layer: the post ops' output (next input), or NULL */
    float **stats;                /* ... and BatchNorm's mean, invstd (out each) */
    uint16_t **bits;              /* ... and Dropout's mask (fastnn_dropout_bits) */
    /* per batch */
    double loss_piece[LOSS_PIECES];
    double (*sq_chunk)[MAX_CHUNKS];  /* per layer and input chunk: sum of W^2 */
    int64_t correct_part[MAX_THREADS];
    int rc[MAX_THREADS];
    /* the optimizer's counters after the epoch (written by thread 0) */
    int64_t step;
    double mu_product;
    /* the hook: which events, and its last answer (written by thread 0
       between two barriers, read by all after the second) */
    int grads_hook, batch_hook;
    int hook_stop;
    /* the team's barrier (fastnn_barrier_wait: it spins before it sleeps) */
    struct fastnn_barrier bar;
};

/* ---- fixed chunks ----------------------------------------------------------
   Results must not depend on the thread count, so every sum the threads
   split is cut on boundaries that do not depend on it, and its parts are
   added in one fixed order.  A feature dimension d (a layer's input or
   output) is cut into n_chunks(d) chunks, on multiples of 16 floats (64
   bytes, so that threads never write one cache line of a row); thread t of
   T owns chunks [t C / T, (t + 1) C / T) -- its rows of each W, its entries
   of each b, its columns of each Y and D.

   A layer's forward, whatever the threads, is the value
     act((((P_0 + P_1) + P_2) + P_3) + b)     (C chunks: P_0 .. P_(C-1))
   with P_q = X[:, chunk q] W[chunk q, :] one gemm call (its own k blocking).
   A sum S + P_q is computed either from P_q apart, or by the gemm adding
   P_q onto S in place (beta = 1, `chain`; then with the bias and the
   activation in its epilogue for the last chunk): the same bits while a
   chunk is one k block of the gemm (<= FASTNN_GEMM_KC = 256 columns: the
   gemm then adds the block's fresh sum to C, C + P_q, which chunks of
   inputs up to 1024 are).  So one thread computes a layer as one chain of
   C products (the fused gemm when C = 1), and several threads compute the
   first thread's chunks as a chain and the others' apart.

   Wider chunks (inputs > 1024) would not add exactly; their value is
     act(((P_0 + P_1) + (P_2 + P_3)) + b)
   with each pair only ever chained: one thread chains both pairs (the
   second into a scratch buffer) and adds them, and the forward is split
   by input only when every thread owns whole pairs (split_by_input). */

/* Chunks of a feature dimension (internal.h: fastnn_chunk_count/bound). */
static int n_chunks(const struct epoch *e, int64_t d)
{
    return fastnn_chunk_count(e->chunked, d);
}


/* The chunks [*c0, *c1) thread t of T owns, of n. */
static void owned_chunks(int n, int t, int T, int *c0, int *c1)
{
    *c0 = (int)((int64_t)t * n / T);
    *c1 = (int)((int64_t)(t + 1) * n / T);
}

/* Thread t's features [*lo, *hi) of a dimension of d: its chunks. */
static void own(const struct epoch *e, int64_t d, int t, int64_t *lo, int64_t *hi)
{
    const int n = n_chunks(e, d);
    int c0, c1;
    owned_chunks(n, t, e->threads, &c0, &c1);
    *lo = fastnn_chunk_bound(d, n, c0);
    *hi = fastnn_chunk_bound(d, n, c1);
}

/* Sum of squares of thread t's weights (its part of the l2 term), per
   layer and input chunk, into e->sq_chunk. */
static void weight_squares(struct epoch *e, int t)
{
    const fastnn_epoch *a = e->a;
    for (int l = 0; l < a->n_layers; l++) {
        const fastnn_dense_layer *L = &a->layers[l];
        const int n = n_chunks(e, L->in);
        int c0, c1;
        owned_chunks(n, t, e->threads, &c0, &c1);
        for (int q = c0; q < c1; q++) {
            const int64_t k0 = fastnn_chunk_bound(L->in, n, q), k1 = fastnn_chunk_bound(L->in, n, q + 1);
            double sq = 0.0;
            if (k1 > k0)
                fastnn_sum_squares(&sq, a->params + L->w_offset + k0 * L->out, (k1 - k0) * L->out);
            e->sq_chunk[l][q] = sq;
        }
    }
}

/* The l2 term's sum of squares, from every layer's chunks in order. */
static double all_squares(const struct epoch *e)
{
    double sq = 0.0;
    for (int l = 0; l < e->a->n_layers; l++) {
        const int n = n_chunks(e, e->a->layers[l].in);
        for (int q = 0; q < n; q++)
            sq += e->sq_chunk[l][q];
    }
    return sq;
}

/* Columns [j0, j1) of m rows of Y (rows ldy apart), the chunk products not
   yet in Y added in the header's order: narrow chunks, Y = (((Y + p[0]) +
   p[1]) + ...) + b over the np buffers; wide (tree), Y = ((Y [+ p[0]]) +
   (p[1] [+ p[2]])) + b, p[0] and p[2] may be NULL.  The buffers have rows
   ldp apart and the same column indices as Y. */
FASTNN_CLONES
static void merge_partials(float *Y, int64_t ldy, const float *const *p, int np, int tree,
                           int64_t ldp, const float *b, int64_t m, int64_t j0, int64_t j1)
{
    for (int64_t i = 0; i < m; i++) {
        float *y = Y + i * ldy;
        if (!tree) {
            for (int q = 0; q < np; q++) {
                const float *r = p[q] + i * ldp;
#pragma omp simd
                for (int64_t j = j0; j < j1; j++)
                    y[j] += r[j];
            }
        } else {
            if (p[0]) {
                const float *r = p[0] + i * ldp;
#pragma omp simd
                for (int64_t j = j0; j < j1; j++)
                    y[j] += r[j];
            }
            const float *r1 = p[1] + i * ldp;
            if (p[2]) {
                const float *r2 = p[2] + i * ldp;
#pragma omp simd
                for (int64_t j = j0; j < j1; j++)
                    y[j] += r1[j] + r2[j];
            } else {
#pragma omp simd
                for (int64_t j = j0; j < j1; j++)
                    y[j] += r1[j];
            }
        }
        if (b) {
#pragma omp simd
            for (int64_t j = j0; j < j1; j++)
                y[j] += b[j];
        }
    }
}

/* Whether a dimension's chunks are wider than a gemm k block (the tree). */
static int wide(int64_t d)
{
    return d > 4 * (int64_t)FASTNN_GEMM_KC;
}

/* The activation (forward, or its derivative into D in place) of columns
   [j0, j1) of m rows of width w: one call over all rows when they are
   whole, else one pass a row without the public kernel's per-call checks
   (stack_valid checked the activation).  The same bits either way. */
static int act_columns(float *D, const float *Y, int64_t m, int64_t w, int64_t j0, int64_t j1,
                       const fastnn_dense_layer *L, int backward)
{
    if (j1 <= j0)
        return FASTNN_OK;
    if (j0 == 0 && j1 == w)
        return backward ? fastnn_activation_backward(D, D, Y, m * w, L->act, L->slope)
                        : fastnn_activation_forward(D, Y, m * w, L->act, L->slope);
    fastnn_act_rows(D, Y, m, w, j0, j1, L->act, L->slope, backward);
    return FASTNN_OK;
}

/* C[:, j0:j1] (rows ldc apart) = the products of input chunks [q0, q1) of
   n chained: the first written, each next added by the gemm; with `ep`,
   the last one adds b and applies the activation. */
static int chain(const fastnn_dense_layer *L, const float *W, const float *b, const float *in,
                 const int64_t *rows, int64_t m, int n, int q0, int q1, float *C, int64_t ldc,
                 int64_t j0, int64_t j1, int ep)
{
    int rc = FASTNN_OK;
    for (int q = q0; q < q1 && rc == FASTNN_OK; q++) {
        const int64_t k0 = fastnn_chunk_bound(L->in, n, q), k1 = fastnn_chunk_bound(L->in, n, q + 1);
        rc = fastnn_dense_partial_rows(C + j0, ldc, in + k0, L->in, rows, W + k0 * L->out + j0,
                                       L->out, m, k1 - k0, j1 - j0, q == q0 ? 0.0f : 1.0f,
                                       ep && q == q1 - 1, b ? b + j0 : NULL, L->act, L->slope);
    }
    return rc;
}

/* Whether a layer's forward on several threads splits its output columns
   rather than its input columns.  Splitting the input (partial products,
   summed) keeps each thread on its own rows of W but writes and re-reads
   partial (B, out) products; splitting the output has each thread read
   every row of W (the other threads' rows, updated by them in the last
   batch, come over from their cores) but sums nothing.  Per batch the
   partials move ~T B out floats and the shared W ~in out: split by output
   from B T >= 2 in (the factor 2: the measured gains were within the
   noise at B T ~ in, +7-10% at 784-256-128-10 batch 512; bench/NOTES.md
   19); and by output when the input is one chunk, or when its chunks are
   wider than a k block and the threads would split a pair. */
static int split_by_input(const struct epoch *e, const fastnn_dense_layer *L)
{
    const int n = n_chunks(e, L->in), T = e->threads;
    if (T == 1 || n < 2 || e->a->batch * T >= 2 * L->in)
        return 0;
    if (wide(L->in))  /* pairs must stay whole */
        for (int t = 0; t < T; t++) {
            int c0, c1;
            owned_chunks(n, t, T, &c0, &c1);
            if (c1 > c0 && (c0 % 2 || c1 % 2))
                return 0;
        }
    return 1;
}

/* Partial buffer s of layer l: layers alternate between the first and the
   last T buffers of the 2 T, so that a layer's partials are never written
   while the threads still read the previous layer's. */
static float *slab(const struct epoch *e, int l, int s)
{
    return e->P + ((int64_t)(l & 1) * e->threads + s) * (e->a->batch * e->widest_out);
}

/* Columns [j0, j1) of layer l's output for the m rows, computed whole by
   one thread: the value of the header above, one chain (wide chunks: the
   second pair's chain in `scratch`, rows `out` apart, the same column
   indices). */
static int forward_columns(const struct epoch *e, int l, const float *in, const int64_t *rows,
                           int64_t m,
                           int64_t j0, int64_t j1, float *scratch)
{
    const fastnn_epoch *a = e->a;
    const fastnn_dense_layer *L = &a->layers[l];
    const float *W = a->params + L->w_offset;
    const float *b = L->b_offset >= 0 ? a->params + L->b_offset : NULL;
    float *Y = e->Y + a->batch * e->row_off[l];
    const int n = n_chunks(e, L->in), half = n / 2;
    if (j1 <= j0)
        return FASTNN_OK;
    if (!wide(L->in))
        return chain(L, W, b, in, rows, m, n, 0, n, Y, L->out, j0, j1, 1);
    int rc = chain(L, W, b, in, rows, m, n, 0, half, Y, L->out, j0, j1, 0);
    if (rc == FASTNN_OK)
        rc = chain(L, W, b, in, rows, m, n, half, n, scratch, L->out, j0, j1, 0);
    if (rc == FASTNN_OK) {
        const float *p[3] = {NULL, scratch, NULL};
        merge_partials(Y, L->out, p, 3, 1, L->out, b, m, j0, j1);
        rc = act_columns(Y, Y, m, L->out, j0, j1, L, 0);
    }
    return rc;
}

/* Layer l's forward for the m rows of the batch, by thread t.  One thread:
   forward_columns over all columns (D_l, unused until the backward, as the
   scratch).  Split by output: after a barrier (every column of the input
   written, every row of W updated), thread t computes its columns whole.
   Split by input: thread t computes the products of its input chunks (its
   rows of W): the owner of chunk 0 chains its chunks [0, e0) into Y, every
   other chunk q goes apart into partial buffer q - e0 (wide chunks: a
   thread owns whole pairs, and the second pair's chain goes into buffer
   0); after a barrier thread t merges them in order for its columns (its
   input columns of the next layer), then bias and activation.  Either way
   the value is the header's, and thread t writes only its part of Y's
   columns -- but for the owner of chunk 0, which writes all of Y's columns
   before the barrier, when no thread reads Y_l. */
static int forward_layer(struct epoch *e, int l, int t, const float *in, const int64_t *rows,
                         int64_t m)
{
    const fastnn_epoch *a = e->a;
    const fastnn_dense_layer *L = &a->layers[l];
    const int T = e->threads;
    int64_t j0, j1;
    if (T == 1)
        return forward_columns(e, l, in, rows, m, 0, L->out, e->D + a->batch * e->row_off[l]);
    if (!e->split_in[l]) {
        fastnn_barrier_wait(&e->bar, e->threads);
        own(e, L->out, t, &j0, &j1);
        return forward_columns(e, l, in, rows, m, j0, j1, slab(e, l, t));
    }
    const float *W = a->params + L->w_offset;
    const float *b = L->b_offset >= 0 ? a->params + L->b_offset : NULL;
    float *Y = e->Y + a->batch * e->row_off[l];
    const int n = n_chunks(e, L->in), tree = wide(L->in);
    int c0, c1, e0 = 0, rc = FASTNN_OK;
    owned_chunks(n, t, T, &c0, &c1);
    for (int u = 1; u <= T && e0 == 0; u++)  /* the first thread's end: e0 > 0 */
        e0 = (int)((int64_t)u * n / T);
    if (c1 > c0) {
        if (c0 == 0)
            rc = chain(L, W, b, in, rows, m, n, 0, c1, Y, L->out, 0, L->out, 0);
        else if (tree)  /* the second pair, whole (split_by_input) */
            rc = chain(L, W, b, in, rows, m, n, c0, c1, slab(e, l, 0), L->out, 0, L->out, 0);
        else
            for (int q = c0; q < c1 && rc == FASTNN_OK; q++)
                rc = chain(L, W, b, in, rows, m, n, q, q + 1, slab(e, l, q - e0), L->out, 0,
                           L->out, 0);
    }
    fastnn_barrier_wait(&e->bar, e->threads);
    own(e, L->out, t, &j0, &j1);
    if (j1 > j0) {
        const float *p[MAX_CHUNKS] = {NULL};
        int np = 0;
        if (tree) {
            p[1] = slab(e, l, 0);
            np = 3;
        } else {
            for (int q = e0; q < n; q++)
                p[np++] = slab(e, l, q - e0);
        }
        merge_partials(Y, L->out, p, np, tree, L->out, b, m, j0, j1);
        if (rc == FASTNN_OK)
            rc = act_columns(Y, Y, m, L->out, j0, j1, L, 0);
    }
    return rc;
}

/* Piece q of the LOSS_PIECES a batch of m rows is cut into starts at row
   piece_start(m, q) (pieces of m / LOSS_PIECES or one more rows). */
static int64_t piece_start(int64_t m, int q)
{
    const int64_t base = m / LOSS_PIECES, rem = m % LOSS_PIECES;
    return q * base + (q < rem ? q : rem);
}

/* The loss of thread t's pieces of the batch of m rows starting at sample
   lo: each piece's sum into e->loss_piece (added in piece order, so the
   batch's loss does not depend on the threads), the correct answers into
   this thread's part, the loss gradient (the batch's mean, times
   grad_scale) into the last layer's D. */
static int loss_rows(struct epoch *e, int t, int64_t lo, int64_t m)
{
    const fastnn_epoch *a = e->a;
    const int nl = a->n_layers, loss = a->loss, labelled = loss == FASTNN_LOSS_SOFTMAX_XENT;
    const int64_t c = a->layers[nl - 1].out, B = a->batch;
    int q0, q1;
    owned_chunks(LOSS_PIECES, t, e->threads, &q0, &q1);
    for (int q = q0; q < q1; q++)
        e->loss_piece[q] = 0.0;
    e->correct_part[t] = 0;
    const int64_t r = piece_start(m, q0), m_t = piece_start(m, q1) - r;
    if (m_t < 1)
        return FASTNN_OK;
    const int32_t *lb = NULL;  /* the rows' labels, or */
    const float *tb = NULL;    /* their targets */
    if (!a->order) {
        if (labelled)
            lb = a->labels + lo + r;
        else
            tb = a->T + (lo + r) * c;
    } else {  /* this thread's rows of the batch's targets, gathered */
        const int64_t *idx = a->order + lo + r;
        if (labelled) {
            for (int64_t i = 0; i < m_t; i++)
                e->Lb[r + i] = a->labels[idx[i]];
            lb = e->Lb + r;
        } else {
            for (int64_t i = 0; i < m_t; i++)
                memcpy(e->Tb + (r + i) * c, a->T + idx[i] * c, (size_t)c * sizeof(float));
            tb = e->Tb + r * c;
        }
    }
    const float *out = e->Y + B * e->row_off[nl - 1] + r * c;
    float *dout = e->D + B * e->row_off[nl - 1] + r * c;
    /* the divisor of the batch's mean, as the public kernels over it */
    const float nf = labelled ? (float)m : (float)(m * c);
    for (int q = q0; q < q1; q++) {
        const int64_t p0 = piece_start(m, q) - r, rows = piece_start(m, q + 1) - r - p0;
        if (rows < 1)
            continue;
        const int rc = fastnn_loss_rows(loss, &e->loss_piece[q], dout + p0 * c, out + p0 * c,
                                        lb ? lb + p0 : NULL, tb ? tb + p0 * c : NULL, rows, c,
                                        nf);
        if (rc) return rc;
    }
    e->correct_part[t] = count_correct(out, lb, tb, m_t, c, loss);
    if (a->grad_scale != 1.0)
        fastnn_scale(dout, m_t * c, (float)a->grad_scale);
    return FASTNN_OK;
}

/* Layer l's backward, thread t's share, once every column of dZ is in D
   (see epoch_thread): its rows of dW over the whole batch (+ l2), its
   columns of dX (from its rows of W, before their update), its columns of
   db, then the update of exactly those parameters (with a GRADS hook the
   updates wait for update_owned, after the hook). */
static int backward_layer(struct epoch *e, int l, int t, const float *in, const int64_t *rows,
                          int64_t m, const fastnn_optimizer *o)
{
    const int defer = e->grads_hook;
    const fastnn_epoch *a = e->a;
    const fastnn_dense_layer *L = &a->layers[l];
    const int64_t B = a->batch;
    const float *dZ = e->D + B * e->row_off[l], *W = a->params + L->w_offset;
    int64_t k0, k1, j0, j1;
    int rc = FASTNN_OK;
    own(e, L->in, t, &k0, &k1);
    if (k1 > k0) {
        /* this thread's rows of W: params[p0, p1) */
        const int64_t p0 = L->w_offset + k0 * L->out, p1 = L->w_offset + k1 * L->out;
        /* dW[k0:k1] = X[:, k0:k1]^T dZ */
        if (rows)
            fastnn_gemm_rows(1, k1 - k0, L->out, m, in + k0, L->in, rows, dZ, L->out,
                             a->grads + p0, L->out);
        else
            rc = fastnn_gemm(1, 0, k1 - k0, L->out, m, 1.0f, in + k0, L->in, dZ, L->out, 0.0f,
                             a->grads + p0, L->out);
        /* dX[:, k0:k1] = dZ W[k0:k1]^T: the previous layer's dY */
        if (rc == FASTNN_OK && l > 0)
            rc = fastnn_gemm(0, 1, m, k1 - k0, L->out, 1.0f, dZ, L->out, W + k0 * L->out,
                             L->out, 0.0f, e->D + B * e->row_off[l - 1] + k0, L->in);
        if (rc) return rc;
        if (a->l2 != 0.0)
            fastnn_axpy(a->grads + p0, a->params + p0, p1 - p0, (float)(a->l2 / (double)m));
        if (!defer && (rc = optimizer_apply(a->params, a->grads, o, p0, p1)))
            return rc;
    }
    own(e, L->out, t, &j0, &j1);
    if (L->b_offset >= 0 && j1 > j0) {
        fastnn_column_sums(a->grads + L->b_offset, dZ, m, L->out, j0, j1);
        if (!defer)
            rc = optimizer_apply(a->params, a->grads, o, L->b_offset + j0, L->b_offset + j1);
    }
    return rc;
}

/* The update backward_layer leaves to after a GRADS hook: thread t's rows
   of every W and entries of every b (the parameters it owns). */
static int update_owned(struct epoch *e, int t, const fastnn_optimizer *o)
{
    const fastnn_epoch *a = e->a;
    int rc = FASTNN_OK;
    for (int l = 0; l < a->n_layers && rc == FASTNN_OK; l++) {
        const fastnn_dense_layer *L = &a->layers[l];
        int64_t k0, k1, j0, j1;
        own(e, L->in, t, &k0, &k1);
        if (k1 > k0)
            rc = optimizer_apply(a->params, a->grads, o, L->w_offset + k0 * L->out,
                                 L->w_offset + k1 * L->out);
        own(e, L->out, t, &j0, &j1);
        if (rc == FASTNN_OK && L->b_offset >= 0 && j1 > j0)
            rc = optimizer_apply(a->params, a->grads, o, L->b_offset + j0, L->b_offset + j1);
        if (rc == FASTNN_OK && e->post && e->post[l].bn && j1 > j0) {
            rc = optimizer_apply(a->params, a->grads, o, e->post[l].gamma + j0,
                                 e->post[l].gamma + j1);
            if (rc == FASTNN_OK)
                rc = optimizer_apply(a->params, a->grads, o, e->post[l].beta + j0,
                                     e->post[l].beta + j1);
        }
    }
    return rc;
}

/* ---- post ops: BatchNorm and Dropout after a layer ------------------------
   Both work per column (a BatchNorm channel is a column of the batch), so
   thread t runs them on the columns it owns, right after computing them
   and before anyone reads them (the next layer reads exactly its own
   input chunks, or waits at a barrier): no extra barrier, no shared sum,
   and each column's sums run over the rows in one fixed order, so the
   results do not depend on the thread count.  The arithmetic is
   fastnn_batchnorm_forward / _backward's per channel (double sums; the
   rows summed in row order rather than in its 16 pieces, and the forward's
   mean and variance from one pass of shifted sums, so the last bits can
   differ from the batch-by-batch path) and the masks are the dropout
   kernel's own.  Z_l = dropout(bn(Y_l)) is the next layer's input; the
   backward turns D_l (the gradient of Z_l) into that of Y_l in place. */

/* Columns at a time of the sums (their double accumulators on the stack). */
#define POST_CB 64

static const float *layer_input(const struct epoch *e, int l, const float *x)
{
    if (l == 0)
        return x;
    return e->Z && e->Z[l - 1] ? e->Z[l - 1] : e->Y + e->a->batch * e->row_off[l - 1];
}

/* A row's dropout factors come from its mask bits 16 columns (one word) at
   a time, inside the pass that uses them: factor = bit ? scale : 0, the
   multiply the whole-buffer kernel does.  The mask is drawn once per batch
   by the forward (fastnn_dropout_bits) and read again by the backward. */
#define WORD 16

/* Columns [j0, j1) of thread t's Z_l for the m rows: the dropout mask's
   bits, BatchNorm's statistics of its columns (one pass), then one pass
   normalising, shifting and multiplying by the dropout factors (without
   BatchNorm: Y_l times the factors). */
/* One 16-column word of post_forward's BatchNorm + dropout pass over n <=
   WORD columns: z = ((x - center) scale + shift) * the word's dropout
   factor.  Called with n = WORD (a constant: one vector) or the last word's
   count. */
static inline __attribute__((always_inline))
void bn_dropout_word(float *z, const float *x, const float *center, const float *scale,
                     const float *shift, uint32_t word, float fs, int64_t n)
{
#pragma omp simd
    for (int64_t k = 0; k < n; k++) {
        const float v = (x[k] - center[k]) * scale[k] + shift[k];
        z[k] = v * ((word >> k) & 1u ? fs : 0.0f);
    }
}

/* One word of post_backward's pass of sums with dropout, over n <= WORD
   columns: dy *= the word's factor (written back), sdy += dy, sdyx += dy
   (x - mk).  n = WORD or the last word's count, as bn_dropout_word. */
static inline __attribute__((always_inline))
void dropout_bn_sums_word(float *dy, double *sdy, double *sdyx, const float *x,
                          const double *mk, uint32_t word, float fs, int64_t n)
{
#pragma omp simd
    for (int64_t k = 0; k < n; k++) {
        const float v = dy[k] * ((word >> k) & 1u ? fs : 0.0f);
        dy[k] = v;
        sdy[k] += v;
        sdyx[k] += v * (x[k] - mk[k]);
    }
}

FASTNN_CLONES
static void post_forward(struct epoch *e, int l, int t, int64_t m, int64_t bi)
{
    const fastnn_epoch *a = e->a;
    const fastnn_post_op *q = &e->post[l];
    const int64_t c = a->layers[l].out, ldb = bit_words(c);
    const float *A = e->Y + a->batch * e->row_off[l];
    float *Z = e->Z[l];
    int64_t j0, j1;
    own(e, c, t, &j0, &j1);
    if (j1 <= j0)
        return;
    const uint16_t *bits = e->bits[l];
    const float fs = q->dropout ? fastnn_dropout_scale(q->p) : 1.0f;
    if (q->dropout)
        fastnn_dropout_bits(e->bits[l], ldb, c, m, j0, j1, q->p, q->seed, q->counter + bi);
    if (!q->bn && !q->dropout) {
        for (int64_t i = 0; i < m; i++)
            memcpy(Z + i * c + j0, A + i * c + j0, (size_t)(j1 - j0) * sizeof(float));
        return;
    }
    const float *gamma = q->bn ? a->params + q->gamma : NULL;
    const float *beta = q->bn ? a->params + q->beta : NULL;
    float *mean = e->stats[l], *invstd = mean + c;
    for (int64_t c0 = j0; c0 < j1; c0 += POST_CB) {  /* (c0: whole words) */
        const int64_t cb = j1 - c0 < POST_CB ? j1 - c0 : POST_CB;
        float center[POST_CB], scale[POST_CB], shift[POST_CB];
        if (q->bn) {
            /* one pass: the sums of d = x - x_0 (the first row's value, exact
               in double) and of d^2, so mean = x_0 + S1 / m and var = (S2 -
               S1^2 / m) / m -- the shift keeps the cancellation small
               (|mean - x_0| ~ a standard deviation), and in double the
               result is the two-pass value to ~1e-15, far below a float's
               rounding */
            double mu[POST_CB], var[POST_CB], s1[POST_CB] = {0.0}, s2[POST_CB] = {0.0};
            float x0[POST_CB];
            for (int64_t k = 0; k < cb; k++)
                x0[k] = A[c0 + k];
            for (int64_t i = 0; i < m; i++) {
                const float *x = A + i * c + c0;
#pragma omp simd
                for (int64_t k = 0; k < cb; k++) {
                    const double d = (double)x[k] - (double)x0[k];
                    s1[k] += d;
                    s2[k] += d * d;
                }
            }
            for (int64_t k = 0; k < cb; k++) {
                const int64_t j = c0 + k;
                mu[k] = (double)x0[k] + s1[k] / (double)m;
                var[k] = (s2[k] - s1[k] * s1[k] / (double)m) / (double)m;
                if (var[k] < 0.0)  /* (rounding of a constant column) */
                    var[k] = 0.0;
                const double istd = 1.0 / sqrt(var[k] + q->eps);
                mean[j] = center[k] = (float)mu[k];
                invstd[j] = (float)istd;
                scale[k] = (float)(istd * gamma[j]);
                shift[k] = beta[j];
                q->running_mean[j] = (float)((1.0 - q->momentum) * q->running_mean[j]
                                             + q->momentum * mu[k]);
                q->running_var[j] = (float)((1.0 - q->momentum) * q->running_var[j]
                                            + q->momentum * var[k] * (double)m / (double)(m - 1));
            }
        }
        for (int64_t i = 0; i < m; i++) {
            const float *x = A + i * c + c0;
            float *z = Z + i * c + c0;
            const uint16_t *w = q->dropout ? bits + i * ldb + c0 / WORD : NULL;
            for (int64_t g = 0; g < cb; g += WORD) {
                const int64_t n = cb - g < WORD ? cb - g : WORD;
                const uint32_t word = w ? w[g / WORD] : 0xFFFFu;
                if (q->bn && n == WORD)  /* (a constant count: one vector) */
                    bn_dropout_word(z + g, x + g, center + g, scale + g, shift + g, word, fs,
                                    WORD);
                else if (q->bn)
                    bn_dropout_word(z + g, x + g, center + g, scale + g, shift + g, word, fs, n);
                else {
#pragma omp simd
                    for (int64_t k = 0; k < n; k++)
                        z[g + k] = x[g + k] * ((word >> k) & 1u ? fs : 0.0f);
                }
            }
        }
    }
}

/* D_l's columns of thread t, the gradient of Z_l, into that of Y_l (in
   place), with BatchNorm's dgamma, dbeta (and their update unless a GRADS
   hook defers it): the dropout factors applied inside BatchNorm's pass of
   sums, and a ReLU's (or identity's) derivative inside its last pass --
   then *act_done = 1 and the caller skips act_columns. */
FASTNN_CLONES
static int post_backward(struct epoch *e, int l, int t, int64_t m,
                         const fastnn_optimizer *o, int *act_done)
{
    const fastnn_epoch *a = e->a;
    const fastnn_post_op *q = &e->post[l];
    const fastnn_dense_layer *L = &a->layers[l];
    const int64_t c = L->out, ldb = bit_words(c);
    const float *X = e->Y + a->batch * e->row_off[l];
    float *D = e->D + a->batch * e->row_off[l];
    const int relu = L->act == FASTNN_ACT_RELU;
    int64_t j0, j1;
    *act_done = relu || L->act == FASTNN_ACT_IDENTITY;
    own(e, c, t, &j0, &j1);
    if (j1 <= j0)
        return FASTNN_OK;
    const uint16_t *bits = e->bits[l];
    const float fs = q->dropout ? fastnn_dropout_scale(q->p) : 1.0f;
    if (!q->bn) {
        if (!q->dropout && !relu)
            return FASTNN_OK;
        for (int64_t i = 0; i < m; i++) {
            const float *x = X + i * c;
            float *d = D + i * c;
            const uint16_t *w = q->dropout ? bits + i * ldb : NULL;
            for (int64_t g = j0; g < j1; g += WORD) {
                const int64_t n = j1 - g < WORD ? j1 - g : WORD;
                const uint32_t word = w ? w[g / WORD] : 0xFFFFu;
#pragma omp simd
                for (int64_t k = 0; k < n; k++) {
                    float v = d[g + k];
                    if (q->dropout)
                        v *= (word >> k) & 1u ? fs : 0.0f;
                    if (relu)
                        v *= x[g + k] > 0.0f ? 1.0f : 0.0f;
                    d[g + k] = v;
                }
            }
        }
        return FASTNN_OK;
    }
    const float *gamma = a->params + q->gamma, *mean = e->stats[l], *invstd = mean + c;
    float *dgamma = a->grads + q->gamma, *dbeta = a->grads + q->beta;
    for (int64_t c0 = j0; c0 < j1; c0 += POST_CB) {
        const int64_t cb = j1 - c0 < POST_CB ? j1 - c0 : POST_CB;
        double mk[POST_CB], sdy[POST_CB] = {0.0}, sdyx[POST_CB] = {0.0};
        float ak[POST_CB], mb[POST_CB], g[POST_CB], mf[POST_CB];
        for (int64_t k = 0; k < cb; k++)
            mk[k] = mf[k] = mean[c0 + k];
        for (int64_t i = 0; i < m; i++) {
            const float *x = X + i * c + c0;
            float *dy = D + i * c + c0;
            if (q->dropout) {  /* the factors, written back for the next pass */
                const uint16_t *w = bits + i * ldb + c0 / WORD;
                for (int64_t h = 0; h < cb; h += WORD) {
                    const int64_t n = cb - h < WORD ? cb - h : WORD;
                    const uint32_t word = w[h / WORD];
                    if (n == WORD)  /* (a constant count: one vector) */
                        dropout_bn_sums_word(dy + h, sdy + h, sdyx + h, x + h, mk + h, word, fs,
                                             WORD);
                    else
                        dropout_bn_sums_word(dy + h, sdy + h, sdyx + h, x + h, mk + h, word, fs,
                                             n);
                }
            } else {
#pragma omp simd
                for (int64_t k = 0; k < cb; k++) {
                    sdy[k] += dy[k];
                    sdyx[k] += dy[k] * (x[k] - mk[k]);
                }
            }
        }
        for (int64_t k = 0; k < cb; k++) {
            const int64_t j = c0 + k;
            const double dg = sdyx[k] * invstd[j];
            dbeta[j] = (float)sdy[k];
            dgamma[j] = (float)dg;
            ak[k] = (float)((double)gamma[j] * invstd[j]);
            mb[k] = (float)(sdy[k] / (double)m);
            g[k] = (float)(dg * invstd[j] / (double)m);
        }
        for (int64_t i = 0; i < m; i++) {
            const float *x = X + i * c + c0;
            float *d = D + i * c + c0;
            if (relu) {
#pragma omp simd
                for (int64_t k = 0; k < cb; k++) {
                    const float v = ak[k] * (d[k] - mb[k] - (x[k] - mf[k]) * g[k]);
                    d[k] = v * (x[k] > 0.0f ? 1.0f : 0.0f);
                }
            } else {
#pragma omp simd
                for (int64_t k = 0; k < cb; k++)
                    d[k] = ak[k] * (d[k] - mb[k] - (x[k] - mf[k]) * g[k]);
            }
        }
    }
    int rc = FASTNN_OK;
    if (!e->grads_hook) {
        rc = optimizer_apply(a->params, a->grads, o, q->gamma + j0, q->gamma + j1);
        if (rc == FASTNN_OK)
            rc = optimizer_apply(a->params, a->grads, o, q->beta + j0, q->beta + j1);
    }
    return rc;
}

/* Thread 0 calls the hook; every thread returns its answer (non-zero:
   stop).  Called by every thread of the team at the same point. */
static int call_hook(struct epoch *e, int t, int event, int64_t batch)
{
    fastnn_barrier_wait(&e->bar, e->threads);
    if (t == 0)
        e->hook_stop = e->a->hook(e->a->hook_ctx, event, batch) != 0;
    fastnn_barrier_wait(&e->bar, e->threads);
    return e->hook_stop;
}

/* The epoch as run by thread t of e->threads (also outside any parallel
   region with one thread: the barriers are then no-ops).

   Threads own feature ranges (own(): fixed chunks dealt to the threads):
   thread t owns rows own(in) of each W and entries own(out) of each b, and
   only it writes them; only it reads them too, except in the forward of a
   layer split by output (split_by_input false) -- a weight written by one core and read by another
   costs a cache-line transfer each batch, which made a row-split forward's
   sliced update 2-3x slower on two cores.  Per batch:
     forward, per layer (forward_layer): partial products over t's input
       chunks, barrier, t's output columns summed (+ bias, activation); or,
       for a layer split by output, barrier, t's output columns computed;
     barrier; the loss of t's pieces of rows; barrier; every thread sums
       the batch's loss from the pieces in order and takes the same
       stop/continue decision;
     backward, per layer from the last: dZ = dY * act'(Y) for t's columns,
       barrier, then backward_layer (t's rows of dW and columns of dX -- the
       columns of the next dZ that t owns -- and its update). */
static void epoch_thread(struct epoch *e, int t)
{
    fastnn_epoch *a = e->a;
    const int T = e->threads, nl = a->n_layers;
    const int64_t B = a->batch, n_batches = (e->rows - 1) / B + 1;
    fastnn_optimizer o = a->opt;  /* every thread advances its own copy alike */
    int err = FASTNN_OK, stop = 0;  /* err: this thread's first kernel error */

    for (int64_t bi = 0; bi < n_batches && !stop; bi++) {
        const int64_t lo = bi * B, m = e->rows - lo < B ? e->rows - lo : B;
        const int64_t n_in = a->layers[0].in;
        const float *x = e->Xb;
        const int64_t *rows = NULL;  /* the first layer's rows of X, gathered by its gemms */
        if (!a->order) {
            x = a->X + lo * n_in;
        } else if (e->gather_in_gemm) {
            x = a->X;
            rows = a->order + lo;
        } else {
            /* the batch's rows of X, gathered: each thread copies the
               columns it multiplies (its part of the first layer's input) */
            int64_t k0, k1;
            own(e, n_in, t, &k0, &k1);
            for (int64_t i = 0; i < m && k1 > k0; i++)
                memcpy(e->Xb + i * n_in + k0, a->X + a->order[lo + i] * n_in + k0,
                       (size_t)(k1 - k0) * sizeof(float));
        }
        for (int l = 0; l < nl; l++) {
            const int rc = forward_layer(e, l, t, layer_input(e, l, x), l ? NULL : rows, m);
            if (rc && !err) err = rc;
            if (e->Z && e->Z[l])
                post_forward(e, l, t, m, bi);
        }
        fastnn_barrier_wait(&e->bar, e->threads);
        if (!err)
            err = loss_rows(e, t, lo, m);
        if (a->l2 != 0.0)
            weight_squares(e, t);
        e->rc[t] = err;  /* read by all after the barrier, rewritten only
                            after the next batch's barriers */
        fastnn_barrier_wait(&e->bar, e->threads);
        {
            /* every thread sums the same parts in the same order, so all
               take the same decision */
            double total = 0.0;
            int64_t correct = 0;
            for (int q = 0; q < LOSS_PIECES; q++)
                total += e->loss_piece[q];
            for (int i = 0; i < T; i++) {
                correct += e->correct_part[i];
                if (e->rc[i] != FASTNN_OK) stop = 1;
            }
            const double sq = a->l2 != 0.0 ? all_squares(e) : 0.0;
            const int64_t c = a->layers[nl - 1].out;
            total /= a->loss == FASTNN_LOSS_SOFTMAX_XENT ? (double)m : (double)m * (double)c;
            total = total * a->loss_scale + 0.5 * a->l2 / (double)m * sq;
            if (t == 0 && !stop) {
                a->batch_loss[bi] = total;
                a->batch_correct[bi] = correct;
                a->n_done = bi + 1;
            }
            if (stop || !isfinite(total)) {
                stop = 1;  /* a non-finite loss is no error: the caller sees it */
                break;
            }
            if (!e->grads_hook)
                optimizer_advance(&o);
        }
        for (int l = nl - 1; l >= 0; l--) {
            const fastnn_dense_layer *L = &a->layers[l];
            int64_t j0, j1;
            own(e, L->out, t, &j0, &j1);
            int act_done = 0;
            int rc = e->Z && e->Z[l] ? post_backward(e, l, t, m, &o, &act_done) : FASTNN_OK;
            if (rc == FASTNN_OK && !act_done)
                rc = act_columns(e->D + B * e->row_off[l], e->Y + B * e->row_off[l], m, L->out,
                                 j0, j1, L, 1);
            fastnn_barrier_wait(&e->bar, e->threads);
            if (rc == FASTNN_OK)
                rc = backward_layer(e, l, t, layer_input(e, l, x), l ? NULL : rows, m, &o);
            if (rc && !err) err = rc;
        }
        if (e->grads_hook) {
            /* every gradient is in grads (and l2's term): the hook, then
               the update backward_layer left (a kernel error is noticed
               at the next batch's loss, as without a hook) */
            if (call_hook(e, t, FASTNN_HOOK_GRADS, bi)) {
                if (t == 0)
                    a->n_done = bi;  /* this batch was not applied */
                break;
            }
            optimizer_advance(&o);
            const int rc = update_owned(e, t, &o);
            if (rc && !err) err = rc;
        }
        if (t == 0)  /* alignment gaps and parameters outside the stack */
            for (int i = 0; i < e->n_gaps; i++) {
                const int rc = optimizer_apply(a->params, a->grads, &o, e->gaps[2 * i],
                                               e->gaps[2 * i + 1]);
                if (rc && !err) err = rc;
            }
        if (e->batch_hook
            && (bi == n_batches - 1 || (a->hook_every > 0 && (bi + 1) % a->hook_every == 0))
            && call_hook(e, t, FASTNN_HOOK_BATCH, bi))
            break;
    }
    if (e->rc[t] != err)  /* (after a stop, err is what was published) */
        e->rc[t] = err;
    if (t == 0) {
        e->step = o.step;
        e->mu_product = o.mu_product;
    }
}

/* The parameter ranges of the stack sorted; 0 if two overlap.  The
   complement in [0, n_params) goes to gaps (at most 2 * n_layers + 1). */
static int find_gaps(const fastnn_dense_layer *layers, const fastnn_post_op *post,
                     int n_layers, int64_t n_params, int64_t *gaps, int *n_gaps)
{
    int64_t r[4 * MAX_LAYERS][2];
    int nr = 0;
    for (int l = 0; l < n_layers; l++) {
        if (post && post[l].bn) {
            r[nr][0] = post[l].gamma;
            r[nr++][1] = post[l].gamma + layers[l].out;
            r[nr][0] = post[l].beta;
            r[nr++][1] = post[l].beta + layers[l].out;
        }
        r[nr][0] = layers[l].w_offset;
        r[nr++][1] = layers[l].w_offset + layers[l].in * layers[l].out;
        if (layers[l].b_offset >= 0) {
            r[nr][0] = layers[l].b_offset;
            r[nr++][1] = layers[l].b_offset + layers[l].out;
        }
    }
    for (int i = 1; i < nr; i++)  /* insertion sort: short and mostly sorted */
        for (int j = i; j > 0 && r[j][0] < r[j - 1][0]; j--) {
            const int64_t a = r[j][0], b = r[j][1];
            r[j][0] = r[j - 1][0]; r[j][1] = r[j - 1][1];
            r[j - 1][0] = a; r[j - 1][1] = b;
        }
    int64_t at = 0;
    *n_gaps = 0;
    for (int i = 0; i < nr; i++) {
        if (r[i][0] < at)
            return 0;
        if (r[i][0] > at) {
            gaps[2 * *n_gaps] = at;
            gaps[2 * (*n_gaps)++ + 1] = r[i][0];
        }
        at = r[i][1];
    }
    if (at < n_params) {
        gaps[2 * *n_gaps] = at;
        gaps[2 * (*n_gaps)++ + 1] = n_params;
    }
    return 1;
}

/* Every size of a fits in int64 and every index lies in its buffer. */
static int epoch_valid(const fastnn_epoch *a, const struct layout *w)
{
    int64_t size;
    if (!a->params || !a->grads || !a->X || !a->workspace || !a->batch_loss
        || !a->batch_correct || a->n_params < 1 || a->n < 1 || w->size > a->workspace_size)
        return 0;
    const int64_t in = a->layers[0].in, c = a->layers[a->n_layers - 1].out;
    if (!stack_valid(a->n_params, a->layers, a->n_layers) || !fastnn_product(&size, a->n, in)
        || !fastnn_product(&size, a->n, c)
        || !fastnn_epoch_data_valid(a->loss, a->labels, a->T, a->n, c, a->order, a->n_order)
        || (a->hook && !fastnn_hook_valid(a->hook_every, a->hook_events)))
        return 0;
    const int64_t rows = a->order ? a->n_order : a->n;
    return optimizer_valid(&a->opt, (rows - 1) / a->batch + 1);
}

/* The post ops describe valid work: none after the last layer; BatchNorm's
   parameters inside params, its statistics given, >= 2 rows in every batch,
   eps > 0 and momentum in [0, 1]; Dropout's p in [0, 1), seed and counter
   (+ the batch index) in range, the layer's width a multiple of 4 (the
   masks' blocks of 4 never straddle two threads' columns). */
static int post_valid(const fastnn_epoch *a, const fastnn_post_op *post)
{
    const int64_t rows = a->order ? a->n_order : a->n;
    const int64_t n_batches = (rows - 1) / a->batch + 1, m_min = rows - (n_batches - 1) * a->batch;
    int64_t last;
    for (int l = 0; post && l < a->n_layers; l++) {
        const fastnn_post_op *q = &post[l];
        const int64_t c = a->layers[l].out;
        if (!q->bn && !q->dropout)
            continue;
        if (l == a->n_layers - 1)
            return 0;
        if (q->bn && (m_min < 2 || !(q->eps > 0.0) || !(q->momentum >= 0.0 && q->momentum <= 1.0)
                      || !q->running_mean || !q->running_var || q->gamma < 0 || q->beta < 0
                      || q->gamma > a->n_params - c || q->beta > a->n_params - c))
            return 0;
        if (q->dropout && (!(q->p >= 0.0 && q->p < 1.0) || q->seed < 0 || q->counter < 0
                           || !fastnn_add(&last, q->counter, n_batches - 1) || c % 4 != 0))
            return 0;
    }
    return 1;
}

int fastnn_dense_stack_epoch(fastnn_epoch *a)
{
    return fastnn_dense_stack_epoch_post(a, NULL);
}

int fastnn_dense_stack_epoch_post(fastnn_epoch *a, const fastnn_post_op *post)
{
    struct layout w;
    int64_t gaps[2 * (4 * MAX_LAYERS + 1)];
    int n_gaps;
    /* (the layout checks layers, n_layers and batch) */
    if (!a || a->n_layers > MAX_LAYERS
        || !workspace_layout(&w, a->layers, post, a->n_layers, a->batch, 1)
        || !epoch_valid(a, &w) || !post_valid(a, post)
        || !find_gaps(a->layers, post, a->n_layers, a->n_params, gaps, &n_gaps))
        return FASTNN_EINVAL;

    /* As many threads as asked for and worth it: a batch's forward should
       be >= 2M multiply-adds per thread, or the 2 * layers + 2 barriers and
       the partial sums of a batch cost more than the split saves (measured:
       the digits' 64-256-128-10 at batch 32, 1.6M, ran 13% slower on two
       threads; 784-256-128-10 at batch 32, 7.5M, 1.7x faster).  (macs <=
       n_params: the layers do not overlap.) */
    int64_t macs = 0, row_off[MAX_LAYERS], outs = 0, widest_out = 0;
    for (int l = 0; l < a->n_layers; l++) {
        const fastnn_dense_layer *L = &a->layers[l];
        macs += L->in * L->out;
        row_off[l] = outs;
        outs += L->out;
        widest_out = L->out > widest_out ? L->out : widest_out;
    }
    int threads = fastnn_get_num_threads();
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    struct layout wt;
    while (threads > 1 && ((double)a->batch * (double)macs < threads * 2097152.0
                           || !workspace_layout(&wt, a->layers, post, a->n_layers, a->batch,
                                                threads)
                           || wt.size > a->workspace_size))
        threads--;

    float *ws = a->workspace;
    double sq_chunk[MAX_LAYERS][MAX_CHUNKS];
    signed char split_in[MAX_LAYERS];
    float *zbuf[MAX_LAYERS], *sbuf[MAX_LAYERS];
    uint16_t *bbuf[MAX_LAYERS];
    int any_post = 0;
    int64_t at = 0, region = 0;
    for (int l = 0; l < a->n_layers; l++) {
        zbuf[l] = sbuf[l] = NULL;
        bbuf[l] = NULL;
        if (post && (post[l].bn || post[l].dropout)) {
            zbuf[l] = ws + w.Z + at;
            sbuf[l] = zbuf[l] + a->batch * a->layers[l].out;
            if (post[l].dropout)  /* (floats are 4-byte aligned: so are the words) */
                bbuf[l] = (uint16_t *)(sbuf[l] + 2 * a->layers[l].out);
            post_region(&region, &post[l], a->batch, a->layers[l].out);  /* (checked above) */
            at += region;
            any_post = 1;
        }
    }
    struct epoch e = {
        .a = a, .rows = a->order ? a->n_order : a->n, .Y = ws, .D = ws + w.D, .P = ws + w.P,
        .Xb = ws + w.Xb, .Tb = ws + w.Tb, .Lb = (int32_t *)(ws + w.Lb), .row_off = row_off,
        .widest_out = widest_out, .gaps = gaps, .n_gaps = n_gaps, .threads = threads,
        /* the chunks depend on the sizes, never on the threads: an epoch
           that two threads would not split has one chunk per dimension
           (then the one-thread forward is the fused gemm, as before) */
        .chunked = (double)a->batch * (double)macs >= 2 * 2097152.0,
        .split_in = split_in, .sq_chunk = sq_chunk, .post = any_post ? post : NULL,
        .Z = any_post ? zbuf : NULL, .stats = any_post ? sbuf : NULL,
        .bits = any_post ? bbuf : NULL,
        .grads_hook = a->hook && (a->hook_events & (1 << FASTNN_HOOK_GRADS)),
        .batch_hook = a->hook && (a->hook_events & (1 << FASTNN_HOOK_BATCH)),
        /* (a one-column first layer keeps the copy: its products are
           gemv-shaped, and the gemv reads no gathered rows) */
        .gather_in_gemm = a->order && a->layers[0].out > 1};
    for (int l = 0; l < a->n_layers; l++)
        split_in[l] = (signed char)split_by_input(&e, &a->layers[l]);
    a->n_done = 0;
    int team_ok = threads > 1;
    if (team_ok) {
#pragma omp parallel num_threads(threads)
        {
            /* OpenMP may give fewer threads than asked for (e.g. nested in
               a caller's parallel region): then nobody starts, and the
               epoch runs on one thread below. */
            if (omp_get_num_threads() == threads)
                epoch_thread(&e, omp_get_thread_num());
            else
                team_ok = 0;  /* every thread writes the same value */
        }
        fastnn_team_rest();
    }
    if (!team_ok) {  /* (a 1-thread epoch uses no partial buffers) */
        e.threads = 1;
        const int before = fastnn_run_serial(1);  /* no fork-join per gemm either */
        /* in a region of its own: inside a caller's parallel region
           (fastnn_model_epochs_run) the barriers of epoch_thread would
           otherwise bind to the caller's team and wait for it */
#pragma omp parallel num_threads(1)
        epoch_thread(&e, 0);
        fastnn_run_serial(before);
    }
    a->opt.step = e.step;
    a->opt.mu_product = e.mu_product;
    for (int i = 0; i < e.threads; i++)
        if (e.rc[i] != FASTNN_OK)
            return e.rc[i];
    return FASTNN_OK;
}
