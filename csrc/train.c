/*
 * train.c -- a whole training epoch of a stack of dense layers, in C.
 *
 * The trainer's inner loop (forward, loss, backward, optimizer update per
 * mini-batch) written once more on top of the public kernels of this
 * library, so that Python is called once per epoch instead of ~10 times per
 * batch.  Its specification is fastnn.kernels.reference.dense_stack_epoch;
 * the tests run both on the same data and compare the trajectories.
 *
 * Workspace layout (floats): every layer's outputs for a full batch of B
 * rows, then as much again for their gradients:
 *   Y_0 (B, out_0) | Y_1 (B, out_1) | ... | D_0 (B, out_0) | D_1 | ...
 * The loss gradient goes into D_last; layer l's backward turns D_l into dZ
 * in place and writes dX into D_(l-1).  Thread t owns rows [r, r + m_t) of
 * each; a shorter last batch uses the leading rows.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include <omp.h>

#include "fastnn.h"
#include "internal.h"

/* More layers than any dense stack needs; bounds the offset table below. */
#define MAX_LAYERS 1024

int64_t fastnn_dense_stack_workspace(const fastnn_dense_layer *layers, int n_layers,
                                     int64_t batch)
{
    if (!layers || n_layers < 1 || batch < 1)
        return -1;
    int64_t outs = 0;
    for (int l = 0; l < n_layers; l++)
        outs += layers[l].out;
    return 2 * batch * outs;
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

static int optimizer_valid(const fastnn_optimizer *o)
{
    switch (o->kind) {
    case FASTNN_OPT_SGD:
        return o->momentum == 0.0 || o->state[0];
    case FASTNN_OPT_ADAM: case FASTNN_OPT_ADAMW: case FASTNN_OPT_NADAM: case FASTNN_OPT_ADAMAX:
        return o->state[0] && o->state[1];
    case FASTNN_OPT_RMSPROP:
        return o->state[0] && (o->momentum == 0.0 || o->state[1]) && (!o->centered || o->state[2]);
    case FASTNN_OPT_ADAGRAD:
        return o->state[0] != NULL;
    default:
        return 0;
    }
}

static double nadam_mu(int64_t step, double beta1, double momentum_decay)
{
    return beta1 * (1.0 - 0.5 * pow(0.96, (double)step * momentum_decay));
}

/* Advance the step counters: once per batch, before the update. */
static void optimizer_advance(fastnn_optimizer *o)
{
    o->step += 1;
    if (o->kind == FASTNN_OPT_NADAM)
        o->mu_product *= nadam_mu(o->step, o->beta1, o->momentum_decay);
}

/* The update of params[lo, hi) (an elementwise kernel, so any slice). */
static int optimizer_apply(float *params, const float *grads, const fastnn_optimizer *o,
                           int64_t lo, int64_t hi)
{
    float *s[3];
    for (int i = 0; i < 3; i++)
        s[i] = o->state[i] ? o->state[i] + lo : NULL;
    float *p = params + lo;
    const float *g = grads + lo;
    const int64_t size = hi - lo;
    switch (o->kind) {
    case FASTNN_OPT_SGD:
        return fastnn_sgd(p, g, s[0], size, o->step, o->lr, o->momentum, o->dampening,
                          o->nesterov, o->weight_decay);
    case FASTNN_OPT_ADAM:
        return fastnn_adam(p, g, s[0], s[1], size, o->step, o->lr, o->beta1, o->beta2,
                           o->eps, o->weight_decay);
    case FASTNN_OPT_ADAMW:
        return fastnn_adamw(p, g, s[0], s[1], size, o->step, o->lr, o->beta1, o->beta2,
                            o->eps, o->weight_decay);
    case FASTNN_OPT_RMSPROP:
        return fastnn_rmsprop(p, g, s[0], s[1], s[2], size, o->lr, o->alpha, o->eps,
                              o->weight_decay, o->momentum, o->centered);
    case FASTNN_OPT_ADAGRAD:
        return fastnn_adagrad(p, g, s[0], size, o->step, o->lr, o->lr_decay, o->weight_decay,
                              o->eps);
    case FASTNN_OPT_NADAM:
        return fastnn_nadam(p, g, s[0], s[1], size, o->step, o->lr, o->beta1, o->beta2,
                            o->eps, o->weight_decay, o->momentum_decay, o->mu_product);
    case FASTNN_OPT_ADAMAX:
        return fastnn_adamax(p, g, s[0], s[1], size, o->step, o->lr, o->beta1, o->beta2,
                             o->eps, o->weight_decay);
    default:
        return FASTNN_EINVAL;
    }
}

/* Correctly classified rows of out (m, c); see reference.count_correct. */
static int64_t count_correct(const float *out, const int32_t *labels, const float *T, int64_t m,
                             int64_t c, int loss)
{
    int64_t correct = 0;
    if (loss == FASTNN_LOSS_MSE || loss == FASTNN_LOSS_MAE)
        return 0;
    for (int64_t i = 0; i < m; i++) {
        const float *z = out + i * c;
        if (loss == FASTNN_LOSS_BCE && c == 1) {
            correct += (z[0] > 0.0f) == (T[i] > 0.5f);
            continue;
        }
        int64_t best = 0;
        for (int64_t j = 1; j < c; j++)
            if (z[j] > z[best]) best = j;
        if (loss == FASTNN_LOSS_SOFTMAX_XENT) {
            correct += best == labels[i];
        } else {
            const float *t = T + i * c;
            int64_t tbest = 0;
            for (int64_t j = 1; j < c; j++)
                if (t[j] > t[tbest]) tbest = j;
            correct += best == tbest;
        }
    }
    return correct;
}

#define MAX_THREADS 64

/* What the threads of one epoch share. */
struct epoch {
    float *params, *grads;
    int64_t n_params;
    const fastnn_dense_layer *layers;
    int n_layers;
    const fastnn_optimizer *opt;
    int loss;
    const float *X;
    const int32_t *labels;
    const float *T;
    int64_t n, batch;
    double l2, loss_scale, grad_scale;
    float *Y, *D;                 /* the workspace's two halves */
    int64_t *row_off;             /* layer l's rows start at Y/D + batch * row_off[l] */
    const int64_t *gaps;          /* [lo, hi) pairs of params no layer owns */
    int n_gaps;
    double *batch_loss;
    int64_t *batch_correct, *n_done;
    int threads;
    /* per batch, per thread */
    double loss_part[MAX_THREADS], sq_part[MAX_THREADS];
    int64_t correct_part[MAX_THREADS];
    int rc[MAX_THREADS];
    /* the optimizer's counters after the epoch (written by thread 0) */
    int64_t step;
    double mu_product;
};

/* Part t of T of [0, size): balanced, contiguous. */
static int64_t part_lo(int64_t size, int t, int T) { return size * t / T; }

/* Thread t's rows of layer l's weights, as a range of the flat buffer. */
static void weight_part(const struct epoch *e, int l, int t, int64_t *a, int64_t *b)
{
    const fastnn_dense_layer *L = &e->layers[l];
    *a = L->w_offset + part_lo(L->in, t, e->threads) * L->out;
    *b = L->w_offset + part_lo(L->in, t + 1, e->threads) * L->out;
}

/* Sum of squares of thread t's weights (its part of the l2 term). */
static double weight_squares(const struct epoch *e, int t)
{
    double total = 0.0, sq;
    int64_t a, b;
    for (int l = 0; l < e->n_layers; l++) {
        weight_part(e, l, t, &a, &b);
        if (b > a) {
            fastnn_sum_squares(&sq, e->params + a, b - a);
            total += sq;
        }
    }
    return total;
}

/* Forward and loss of rows [r, r + m_t) of the batch starting at sample
   lo (m rows in all): outputs into Y, the loss gradient (scaled to this
   batch's mean) into the last layer's D rows. */
static int forward_rows(struct epoch *e, int t, int64_t lo, int64_t r, int64_t m_t, int64_t m)
{
    const fastnn_dense_layer *layers = e->layers;
    const int nl = e->n_layers, loss = e->loss;
    const int64_t c = layers[nl - 1].out, B = e->batch;
    const int32_t *lb = e->labels ? e->labels + lo + r : NULL;
    const float *tb = e->T ? e->T + (lo + r) * c : NULL;
    const float *inp = e->X + (lo + r) * layers[0].in;
    int rc;
    for (int l = 0; l < nl; l++) {
        const fastnn_dense_layer *L = &layers[l];
        float *Y = e->Y + B * e->row_off[l] + r * L->out;
        rc = fastnn_dense_forward(Y, inp, e->params + L->w_offset,
                                  L->b_offset >= 0 ? e->params + L->b_offset : NULL,
                                  m_t, L->in, L->out, L->act, L->slope);
        if (rc) return rc;
        inp = Y;
    }
    const float *out = inp;
    float *dout = e->D + B * e->row_off[nl - 1] + r * c, value = 0.0f;
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
    const double scale = e->grad_scale * (double)m_t / (double)m;
    if (scale != 1.0)
        fastnn_scale(dout, m_t * c, (float)scale);
    return FASTNN_OK;
}

/* dZ = dY * act'(Y) in place over layer l's D rows [r, r + m_t), then
   (l > 0) dX = dZ W^T into layer l-1's D rows, with W not yet updated. */
static int backward_rows(struct epoch *e, int l, int64_t r, int64_t m_t)
{
    const fastnn_dense_layer *L = &e->layers[l];
    const int64_t B = e->batch;
    float *dZ = e->D + B * e->row_off[l] + r * L->out;
    int rc = fastnn_activation_backward(dZ, dZ, e->Y + B * e->row_off[l] + r * L->out,
                                        m_t * L->out, L->act, L->slope);
    if (rc == FASTNN_OK && l > 0)
        rc = fastnn_gemm(0, 1, m_t, L->in, L->out, 1.0f, dZ, L->out, e->params + L->w_offset,
                         L->out, 0.0f, e->D + B * e->row_off[l - 1] + r * L->in, L->in);
    return rc;
}

/* Thread t's part of layer l's gradient over all m rows of the batch (its
   rows of dW, its columns of db), the l2 term, and the update of exactly
   those parameters. */
static int update_part(struct epoch *e, int l, int t, int64_t lo, int64_t m,
                       const fastnn_optimizer *o)
{
    const fastnn_dense_layer *L = &e->layers[l];
    const int64_t B = e->batch;
    const float *dZ = e->D + B * e->row_off[l];
    const float *Xl = l > 0 ? e->Y + B * e->row_off[l - 1] : e->X + lo * L->in;
    const int64_t i0 = part_lo(L->in, t, e->threads), i1 = part_lo(L->in, t + 1, e->threads);
    int rc = FASTNN_OK;
    if (i1 > i0) {
        const int64_t a = L->w_offset + i0 * L->out, b = L->w_offset + i1 * L->out;
        /* dW[i0:i1] = X[:, i0:i1]^T dZ */
        rc = fastnn_gemm(1, 0, i1 - i0, L->out, m, 1.0f, Xl + i0, L->in, dZ, L->out, 0.0f,
                         e->grads + a, L->out);
        if (rc) return rc;
        if (e->l2 != 0.0)
            fastnn_axpy(e->grads + a, e->params + a, b - a, (float)(e->l2 / (double)m));
        rc = optimizer_apply(e->params, e->grads, o, a, b);
        if (rc) return rc;
    }
    const int64_t j0 = part_lo(L->out, t, e->threads), j1 = part_lo(L->out, t + 1, e->threads);
    if (L->b_offset >= 0 && j1 > j0) {
        fastnn_column_sums(e->grads + L->b_offset, dZ, m, L->out, j0, j1);
        rc = optimizer_apply(e->params, e->grads, o, L->b_offset + j0, L->b_offset + j1);
    }
    return rc;
}

/* The epoch as run by thread t of e->threads (also outside any parallel
   region with one thread: the barriers are then no-ops).

   Per batch: each thread runs the forward, the loss and, layer by layer
   from the last, dZ and dX of its share of the rows; after each layer's
   barrier it computes its rows of that layer's dW (over every row of the
   batch, so no partial gradients to sum) and updates those parameters at
   once, while they are in its cache.  A layer's W is read for dX before
   the barrier and updated only after it; the forward of the next batch
   waits for every update. */
static void epoch_thread(struct epoch *e, int t)
{
    const int T = e->threads, nl = e->n_layers;
    const int64_t n_batches = (e->n + e->batch - 1) / e->batch;
    fastnn_optimizer o = *e->opt;  /* every thread advances its own copy alike */
    int err = FASTNN_OK, stop = 0;  /* err: this thread's first kernel error */

    for (int64_t bi = 0; bi < n_batches && !stop; bi++) {
        const int64_t lo = bi * e->batch, m = lo + e->batch <= e->n ? e->batch : e->n - lo;
        const int64_t base = m / T, extra = m % T;
        const int64_t m_t = base + (t < extra), r = t * base + (t < extra ? t : extra);
        e->loss_part[t] = 0.0;
        e->correct_part[t] = 0;
        if (m_t > 0 && !err)
            err = forward_rows(e, t, lo, r, m_t, m);
        e->sq_part[t] = e->l2 != 0.0 ? weight_squares(e, t) : 0.0;

        for (int l = nl - 1; l >= 0; l--) {
            if (m_t > 0 && !err)
                err = backward_rows(e, l, r, m_t);
            if (l == nl - 1)
                e->rc[t] = err;  /* read by all after the barrier, rewritten
                                    only after the batch's last barrier */
#pragma omp barrier
            if (l == nl - 1) {
                /* every thread sums the same parts in the same order, so
                   all take the same decision without another barrier */
                double total = 0.0, sq = 0.0;
                int64_t correct = 0;
                for (int i = 0; i < T; i++) {
                    total += e->loss_part[i];
                    sq += e->sq_part[i];
                    correct += e->correct_part[i];
                    if (e->rc[i] != FASTNN_OK) stop = 1;
                }
                total = total / (double)m * e->loss_scale + 0.5 * e->l2 / (double)m * sq;
                if (t == 0 && !stop) {
                    e->batch_loss[bi] = total;
                    e->batch_correct[bi] = correct;
                    *e->n_done = bi + 1;
                }
                if (stop || !isfinite(total)) {
                    stop = 1;  /* a non-finite loss is no error: the caller sees it */
                    break;
                }
                optimizer_advance(&o);
            }
            const int rc = update_part(e, l, t, lo, m, &o);
            if (rc && !err) err = rc;
        }
        if (!stop) {
            if (t == 0)  /* alignment gaps and parameters outside the stack */
                for (int i = 0; i < e->n_gaps; i++) {
                    const int rc = optimizer_apply(e->params, e->grads, &o, e->gaps[2 * i],
                                                   e->gaps[2 * i + 1]);
                    if (rc && !err) err = rc;
                }
#pragma omp barrier
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

int fastnn_dense_stack_epoch(float *params, float *grads, int64_t n_params,
                             const fastnn_dense_layer *layers, int n_layers,
                             fastnn_optimizer *opt, int loss,
                             const float *X, const int32_t *labels, const float *T,
                             int64_t n, int64_t batch, double l2, double loss_scale,
                             double grad_scale, float *workspace, int64_t workspace_size,
                             double *batch_loss, int64_t *batch_correct, int64_t *n_done)
{
    if (!params || !grads || !layers || !opt || !X || !workspace || !batch_loss ||
        !batch_correct || !n_done || n_params < 1 || n_layers < 1 || n_layers > MAX_LAYERS ||
        n < 1 || batch < 1)
        return FASTNN_EINVAL;
    if (loss == FASTNN_LOSS_SOFTMAX_XENT ? !labels
        : (loss < FASTNN_LOSS_BCE || loss > FASTNN_LOSS_MAE || !T))
        return FASTNN_EINVAL;
    int64_t gaps[2 * (2 * MAX_LAYERS + 1)];
    int n_gaps;
    if (!stack_valid(n_params, layers, n_layers) || !optimizer_valid(opt) ||
        !find_gaps(layers, n_layers, n_params, gaps, &n_gaps) ||
        fastnn_dense_stack_workspace(layers, n_layers, batch) > workspace_size)
        return FASTNN_EINVAL;
    const int64_t c = layers[n_layers - 1].out;
    if (loss == FASTNN_LOSS_SOFTMAX_XENT)
        for (int64_t i = 0; i < n; i++)
            if (labels[i] < 0 || labels[i] >= c)
                return FASTNN_EINVAL;

    /* As many threads as asked for and worth it: a batch's forward should
       be >= 32k multiply-adds per thread, or the barriers cost more than
       the split saves. */
    int64_t macs = 0, row_off[MAX_LAYERS], outs = 0;
    for (int l = 0; l < n_layers; l++) {
        macs += layers[l].in * layers[l].out;
        row_off[l] = outs;
        outs += layers[l].out;
    }
    int threads = fastnn_get_num_threads();
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    while (threads > 1 && batch * macs < (int64_t)threads * 32768)
        threads--;

    struct epoch e = {
        .params = params, .grads = grads, .n_params = n_params, .layers = layers,
        .n_layers = n_layers, .opt = opt, .loss = loss, .X = X,
        .labels = loss == FASTNN_LOSS_SOFTMAX_XENT ? labels : NULL,
        .T = loss == FASTNN_LOSS_SOFTMAX_XENT ? NULL : T, .n = n, .batch = batch, .l2 = l2,
        .loss_scale = loss_scale, .grad_scale = grad_scale, .Y = workspace,
        .D = workspace + batch * outs, .row_off = row_off, .gaps = gaps, .n_gaps = n_gaps,
        .batch_loss = batch_loss, .batch_correct = batch_correct, .n_done = n_done,
        .threads = threads};
    *n_done = 0;
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
    if (!team_ok) {
        e.threads = 1;
        epoch_thread(&e, 0);
    }
    opt->step = e.step;
    opt->mu_product = e.mu_product;
    for (int i = 0; i < e.threads; i++)
        if (e.rc[i] != FASTNN_OK)
            return e.rc[i];
    return FASTNN_OK;
}
