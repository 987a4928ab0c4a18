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
 *   | P[t][parity] (B, widest out), 2 per thread, threads > 1   partial products
 * The loss gradient goes into D_last; layer l's backward turns D_l into dZ
 * in place and writes dX into D_(l-1).  Which thread writes what is told
 * at epoch_thread.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include <omp.h>

#include "fastnn.h"
#include "internal.h"

/* More layers than any dense stack needs; bounds the offset table below. */
#define MAX_LAYERS 1024

/* Where the parts of the workspace start (floats; Y_0 at 0): the layout
   above, spec.epoch_layout. */
struct layout {
    int64_t D, Xb, Tb, Lb, P, size;
};

/* Fills w for `threads` threads; 0 for invalid arguments or a size past
   int64. */
static int workspace_layout(struct layout *w, const fastnn_dense_layer *layers, int n_layers,
                            int64_t batch, int threads)
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
        || !fastnn_add(&w->Lb, w->Tb, part) || !fastnn_add(&w->P, w->Lb, batch))
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
    return workspace_layout(&w, layers, n_layers, batch, threads) ? w.size : -1;
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

/* What the threads of one epoch share: the caller's arguments and what
   the epoch derives from them. */
struct epoch {
    fastnn_epoch *a;
    int64_t rows;                 /* the epoch's samples: n, or n_order with order */
    float *Y, *D, *P;             /* the workspace: outputs, gradients, partials */
    float *Xb, *Tb;               /* ... a batch's gathered rows of X and T */
    int32_t *Lb;                  /* ... and labels (with order only) */
    int64_t *row_off;             /* layer l's rows start at Y/D + batch * row_off[l] */
    int64_t widest_out;           /* a partial buffer's width */
    const int64_t *gaps;          /* [lo, hi) pairs of params no layer owns */
    int n_gaps;
    int threads;
    /* per batch, per thread */
    double loss_part[MAX_THREADS], sq_part[MAX_THREADS];
    int64_t correct_part[MAX_THREADS];
    int rc[MAX_THREADS];
    /* the optimizer's counters after the epoch (written by thread 0) */
    int64_t step;
    double mu_product;
};

/* Thread t's part [*lo, *hi) of a feature dimension d: contiguous, in
   multiples of 16 floats (64 bytes) so that threads never write the same
   cache line of a row; may be empty. */
static void part(int64_t d, int t, int T, int64_t *lo, int64_t *hi)
{
    const int64_t per = ((d + T - 1) / T + 15) / 16 * 16;
    *lo = per * t < d ? per * t : d;
    *hi = *lo + per < d ? *lo + per : d;
}

/* Sum of squares of thread t's weights (its part of the l2 term): its
   rows of every W. */
static double weight_squares(const struct epoch *e, int t)
{
    const fastnn_epoch *a = e->a;
    double total = 0.0, sq;
    for (int l = 0; l < a->n_layers; l++) {
        const fastnn_dense_layer *L = &a->layers[l];
        int64_t k0, k1;
        part(L->in, t, e->threads, &k0, &k1);
        if (k1 > k0) {
            fastnn_sum_squares(&sq, a->params + L->w_offset + k0 * L->out, (k1 - k0) * L->out);
            total += sq;
        }
    }
    return total;
}

/* Y[:, j0:j1] = b[j0:j1] + the sum of the partial products (m rows). */
FASTNN_CLONES
static void sum_partials(float *Y, int64_t ldy, const float *const *P, int np, int64_t ldp,
                         const float *b, int64_t m, int64_t j0, int64_t j1)
{
    for (int64_t i = 0; i < m; i++) {
        float *y = Y + i * ldy;
#pragma omp simd
        for (int64_t j = j0; j < j1; j++)
            y[j] = b ? b[j] : 0.0f;
        for (int q = 0; q < np; q++) {
            const float *p = P[q] + i * ldp;
#pragma omp simd
            for (int64_t j = j0; j < j1; j++)
                y[j] += p[j];
        }
    }
}

/* The activation (forward, or its derivative into D in place) of columns
   [j0, j1) of m rows of width w. */
static int act_columns(float *D, const float *Y, int64_t m, int64_t w, int64_t j0, int64_t j1,
                       const fastnn_dense_layer *L, int backward)
{
    int rc = FASTNN_OK;
    if (j1 <= j0)
        return rc;
    const int whole = j0 == 0 && j1 == w;  /* then one call over all rows */
    const int64_t rows = whole ? 1 : m, len = whole ? m * w : j1 - j0;
    for (int64_t i = 0; i < rows && rc == FASTNN_OK; i++) {
        float *d = D + i * w + j0;
        const float *y = Y + i * w + j0;
        rc = backward ? fastnn_activation_backward(d, d, y, len, L->act, L->slope)
                      : fastnn_activation_forward(d, y, len, L->act, L->slope);
    }
    return rc;
}

/* Whether a layer's forward on several threads splits its output columns
   rather than its input columns.  Splitting the input (partial products,
   summed) keeps each thread on its own rows of W but writes and re-reads T
   partial (B, out) products; splitting the output has each thread read
   every row of W (the other threads' rows, updated by them in the last
   batch, come over from their cores) but sums nothing.  Per batch the
   partials move ~T B out floats and the shared W ~in out: split by output
   from B T >= 2 in (the factor 2: the measured gains were within the
   noise at B T ~ in, +7-10% at 784-256-128-10 batch 512; bench/NOTES.md
   19). */
static int split_outputs(const struct epoch *e, const fastnn_dense_layer *L)
{
    return e->a->batch * e->threads >= 2 * L->in;
}

/* Layer l's forward for the m rows of the batch.  One thread: the fused
   dense_forward.  Several, split by input (split_outputs false): thread t
   multiplies its columns of the input by its rows of W into its partial
   buffer; after a barrier it sums the partials of its part of the output
   columns (its input columns of the next layer) and applies bias and
   activation.  Split by output: after a barrier (every column of the input
   written, every row of W updated), thread t computes its part of the
   output columns whole, bias and activation in the gemm epilogue.  Either
   way thread t writes only its part of Y's columns. */
static int forward_layer(struct epoch *e, int l, int t, const float *in, int64_t m)
{
    const fastnn_epoch *a = e->a;
    const fastnn_dense_layer *L = &a->layers[l];
    const int T = e->threads;
    const float *W = a->params + L->w_offset;
    const float *b = L->b_offset >= 0 ? a->params + L->b_offset : NULL;
    float *Y = e->Y + a->batch * e->row_off[l];
    if (T == 1)
        return fastnn_dense_forward(Y, in, W, b, m, L->in, L->out, L->act, L->slope);
    int64_t k0, k1, j0, j1;
    int rc = FASTNN_OK;
    if (split_outputs(e, L)) {
#pragma omp barrier
        part(L->out, t, T, &j0, &j1);
        if (j1 > j0)
            rc = fastnn_dense_forward_ld(Y + j0, L->out, in, L->in, W + j0, L->out,
                                         b ? b + j0 : NULL, m, L->in, j1 - j0, L->act, L->slope);
        return rc;
    }
    const int64_t psize = a->batch * e->widest_out;
    float *mine = e->P + (2 * (int64_t)t + (l & 1)) * psize;
    part(L->in, t, T, &k0, &k1);
    if (k1 > k0)
        rc = fastnn_gemm(0, 0, m, L->out, k1 - k0, 1.0f, in + k0, L->in, W + k0 * L->out, L->out,
                         0.0f, mine, L->out);
#pragma omp barrier
    const float *parts[MAX_THREADS];
    int np = 0;
    for (int q = 0; q < T; q++) {
        int64_t q0, q1;
        part(L->in, q, T, &q0, &q1);
        if (q1 > q0)
            parts[np++] = e->P + (2 * (int64_t)q + (l & 1)) * psize;
    }
    part(L->out, t, T, &j0, &j1);
    if (j1 > j0) {
        sum_partials(Y, L->out, parts, np, L->out, b, m, j0, j1);
        if (rc == FASTNN_OK)
            rc = act_columns(Y, Y, m, L->out, j0, j1, L, 0);
    }
    return rc;
}

/* The loss of rows [r, r + m_t) of the batch starting at sample lo (m rows
   in all): its value and correct answers into this thread's parts, the
   loss gradient (scaled to the batch's mean) into the last layer's D. */
static int loss_rows(struct epoch *e, int t, int64_t lo, int64_t r, int64_t m_t, int64_t m)
{
    const fastnn_epoch *a = e->a;
    const int nl = a->n_layers, loss = a->loss, labelled = loss == FASTNN_LOSS_SOFTMAX_XENT;
    const int64_t c = a->layers[nl - 1].out, B = a->batch;
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
    float *dout = e->D + B * e->row_off[nl - 1] + r * c, value = 0.0f;
    int rc;
    switch (loss) {
    case FASTNN_LOSS_SOFTMAX_XENT:
        rc = fastnn_softmax_xent_forward(&value, dout, out, lb, m_t, c);
        break;
    case FASTNN_LOSS_BCE: rc = fastnn_bce_forward(&value, out, tb, m_t * c); break;
    case FASTNN_LOSS_MSE: rc = fastnn_mse_forward(&value, out, tb, m_t * c); break;
    default: rc = fastnn_mae_forward(&value, out, tb, m_t * c); break;
    }
    if (rc) return rc;
    e->loss_part[t] = (double)value * (double)m_t;
    e->correct_part[t] = count_correct(out, lb, tb, m_t, c, loss);
    switch (loss) {
    case FASTNN_LOSS_SOFTMAX_XENT: rc = fastnn_softmax_xent_backward(dout, dout, lb, m_t, c); break;
    case FASTNN_LOSS_BCE: rc = fastnn_bce_backward(dout, out, tb, m_t * c); break;
    case FASTNN_LOSS_MSE: rc = fastnn_mse_backward(dout, out, tb, m_t * c); break;
    default: rc = fastnn_mae_backward(dout, out, tb, m_t * c); break;
    }
    if (rc) return rc;
    /* the kernels average over this thread's rows; the batch averages over m */
    const double scale = a->grad_scale * (double)m_t / (double)m;
    if (scale != 1.0)
        fastnn_scale(dout, m_t * c, (float)scale);
    return FASTNN_OK;
}

/* Layer l's backward, thread t's share, once every column of dZ is in D
   (see epoch_thread): its rows of dW over the whole batch (+ l2), its
   columns of dX (from its rows of W, before their update), its columns of
   db, then the update of exactly those parameters. */
static int backward_layer(struct epoch *e, int l, int t, const float *in, int64_t m,
                          const fastnn_optimizer *o)
{
    const fastnn_epoch *a = e->a;
    const fastnn_dense_layer *L = &a->layers[l];
    const int64_t B = a->batch;
    const float *dZ = e->D + B * e->row_off[l], *W = a->params + L->w_offset;
    int64_t k0, k1, j0, j1;
    int rc = FASTNN_OK;
    part(L->in, t, e->threads, &k0, &k1);
    if (k1 > k0) {
        /* this thread's rows of W: params[p0, p1) */
        const int64_t p0 = L->w_offset + k0 * L->out, p1 = L->w_offset + k1 * L->out;
        /* dW[k0:k1] = X[:, k0:k1]^T dZ */
        rc = fastnn_gemm(1, 0, k1 - k0, L->out, m, 1.0f, in + k0, L->in, dZ, L->out, 0.0f,
                         a->grads + p0, L->out);
        /* dX[:, k0:k1] = dZ W[k0:k1]^T: the previous layer's dY */
        if (rc == FASTNN_OK && l > 0)
            rc = fastnn_gemm(0, 1, m, k1 - k0, L->out, 1.0f, dZ, L->out, W + k0 * L->out,
                             L->out, 0.0f, e->D + B * e->row_off[l - 1] + k0, L->in);
        if (rc) return rc;
        if (a->l2 != 0.0)
            fastnn_axpy(a->grads + p0, a->params + p0, p1 - p0, (float)(a->l2 / (double)m));
        rc = optimizer_apply(a->params, a->grads, o, p0, p1);
        if (rc) return rc;
    }
    part(L->out, t, e->threads, &j0, &j1);
    if (L->b_offset >= 0 && j1 > j0) {
        fastnn_column_sums(a->grads + L->b_offset, dZ, m, L->out, j0, j1);
        rc = optimizer_apply(a->params, a->grads, o, L->b_offset + j0, L->b_offset + j1);
    }
    return rc;
}

/* The epoch as run by thread t of e->threads (also outside any parallel
   region with one thread: the barriers are then no-ops).

   Threads own feature ranges (part()): thread t owns rows part(in) of each
   W and entries part(out) of each b, and only it writes them; only it
   reads them too, except in the forward of a layer split by output
   (split_outputs) -- a weight written by one core and read by another
   costs a cache-line transfer each batch, which made a row-split forward's
   sliced update 2-3x slower on two cores.  Per batch:
     forward, per layer (forward_layer): partial products over t's input
       columns, barrier, t's output columns summed (+ bias, activation); or,
       for a layer split by output, barrier, t's output columns computed;
     barrier; the loss of t's rows; barrier; every thread reads the batch's
       loss and takes the same stop/continue decision;
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
        const int64_t base = m / T, extra = m % T;
        const int64_t m_t = base + (t < extra), r = t * base + (t < extra ? t : extra);
        const int64_t n_in = a->layers[0].in;
        const float *x = e->Xb;
        if (!a->order) {
            x = a->X + lo * n_in;
        } else {
            /* the batch's rows of X, gathered: each thread copies the
               columns it multiplies (its part of the first layer's input) */
            int64_t k0, k1;
            part(n_in, t, T, &k0, &k1);
            for (int64_t i = 0; i < m && k1 > k0; i++)
                memcpy(e->Xb + i * n_in + k0, a->X + a->order[lo + i] * n_in + k0,
                       (size_t)(k1 - k0) * sizeof(float));
        }
        for (int l = 0; l < nl; l++) {
            const int rc = forward_layer(e, l, t, l > 0 ? e->Y + B * e->row_off[l - 1] : x, m);
            if (rc && !err) err = rc;
        }
#pragma omp barrier
        e->loss_part[t] = 0.0;
        e->correct_part[t] = 0;
        if (m_t > 0 && !err)
            err = loss_rows(e, t, lo, r, m_t, m);
        e->sq_part[t] = a->l2 != 0.0 ? weight_squares(e, t) : 0.0;
        e->rc[t] = err;  /* read by all after the barrier, rewritten only
                            after the next batch's barriers */
#pragma omp barrier
        {
            /* every thread sums the same parts in the same order, so all
               take the same decision */
            double total = 0.0, sq = 0.0;
            int64_t correct = 0;
            for (int i = 0; i < T; i++) {
                total += e->loss_part[i];
                sq += e->sq_part[i];
                correct += e->correct_part[i];
                if (e->rc[i] != FASTNN_OK) stop = 1;
            }
            total = total / (double)m * a->loss_scale + 0.5 * a->l2 / (double)m * sq;
            if (t == 0 && !stop) {
                a->batch_loss[bi] = total;
                a->batch_correct[bi] = correct;
                a->n_done = bi + 1;
            }
            if (stop || !isfinite(total)) {
                stop = 1;  /* a non-finite loss is no error: the caller sees it */
                break;
            }
            optimizer_advance(&o);
        }
        for (int l = nl - 1; l >= 0; l--) {
            const fastnn_dense_layer *L = &a->layers[l];
            int64_t j0, j1;
            part(L->out, t, T, &j0, &j1);
            int rc = act_columns(e->D + B * e->row_off[l], e->Y + B * e->row_off[l], m, L->out,
                                 j0, j1, L, 1);
#pragma omp barrier
            if (rc == FASTNN_OK)
                rc = backward_layer(e, l, t, l > 0 ? e->Y + B * e->row_off[l - 1] : x, m, &o);
            if (rc && !err) err = rc;
        }
        if (t == 0)  /* alignment gaps and parameters outside the stack */
            for (int i = 0; i < e->n_gaps; i++) {
                const int rc = optimizer_apply(a->params, a->grads, &o, e->gaps[2 * i],
                                               e->gaps[2 * i + 1]);
                if (rc && !err) err = rc;
            }
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
static int find_gaps(const fastnn_dense_layer *layers, int n_layers, int64_t n_params,
                     int64_t *gaps, int *n_gaps)
{
    int64_t r[2 * MAX_LAYERS][2];
    int nr = 0;
    for (int l = 0; l < n_layers; l++) {
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
    const int labelled = a->loss == FASTNN_LOSS_SOFTMAX_XENT;
    if (!a->params || !a->grads || !a->X || !a->workspace || !a->batch_loss
        || !a->batch_correct || a->n_params < 1 || a->n < 1 || w->size > a->workspace_size)
        return 0;
    if (labelled ? !a->labels : (a->loss < FASTNN_LOSS_BCE || a->loss > FASTNN_LOSS_MAE || !a->T))
        return 0;
    const int64_t in = a->layers[0].in, c = a->layers[a->n_layers - 1].out;
    if (!stack_valid(a->n_params, a->layers, a->n_layers) || !fastnn_product(&size, a->n, in)
        || !fastnn_product(&size, a->n, c))
        return 0;
    if (labelled)
        for (int64_t i = 0; i < a->n; i++)
            if (a->labels[i] < 0 || a->labels[i] >= c)
                return 0;
    if (a->order) {
        if (a->n_order < 1)
            return 0;
        for (int64_t i = 0; i < a->n_order; i++)
            if (a->order[i] < 0 || a->order[i] >= a->n)
                return 0;
    }
    const int64_t rows = a->order ? a->n_order : a->n;
    return optimizer_valid(&a->opt, (rows - 1) / a->batch + 1);
}

int fastnn_dense_stack_epoch(fastnn_epoch *a)
{
    struct layout w;
    int64_t gaps[2 * (2 * MAX_LAYERS + 1)];
    int n_gaps;
    /* (the layout checks layers, n_layers and batch) */
    if (!a || a->n_layers > MAX_LAYERS || !workspace_layout(&w, a->layers, a->n_layers, a->batch, 1)
        || !epoch_valid(a, &w) || !find_gaps(a->layers, a->n_layers, a->n_params, gaps, &n_gaps))
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
                           || !workspace_layout(&wt, a->layers, a->n_layers, a->batch, threads)
                           || wt.size > a->workspace_size))
        threads--;

    float *ws = a->workspace;
    struct epoch e = {
        .a = a, .rows = a->order ? a->n_order : a->n, .Y = ws, .D = ws + w.D, .P = ws + w.P,
        .Xb = ws + w.Xb, .Tb = ws + w.Tb, .Lb = (int32_t *)(ws + w.Lb), .row_off = row_off,
        .widest_out = widest_out, .gaps = gaps, .n_gaps = n_gaps, .threads = threads};
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
    }
    if (!team_ok) {  /* (a 1-thread epoch uses no partial buffers) */
        e.threads = 1;
        const int before = fastnn_run_serial(1);  /* no fork-join per gemm either */
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
