/*
 * train.c -- a whole training epoch of a stack of dense layers, in C.
 *
 * The trainer's inner loop (forward, loss, backward, optimizer update per
 * mini-batch) written once more on top of the public kernels of this
 * library, so that Python is called once per epoch instead of ~10 times per
 * batch.  Its specification is fastnn.kernels.reference.dense_stack_epoch;
 * the tests run both on the same data and compare the trajectories.
 *
 * Workspace layout (floats, all for a full batch of B rows):
 *   Y_0 (B, out_0) | Y_1 (B, out_1) | ... | G_0 (B, widest) | G_1 (B, widest)
 * The loss gradient goes into G_0; backward ping-pongs dY/dX between G_0
 * and G_1, with dZ computed in place over dY.  A shorter last batch uses the
 * leading rows of the same buffers.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include <omp.h>

#include "fastnn.h"

/* More layers than any dense stack needs; bounds the offset table below. */
#define MAX_LAYERS 1024

static int64_t widest(const fastnn_dense_layer *layers, int n_layers)
{
    int64_t w = 0;
    for (int l = 0; l < n_layers; l++) {
        if (layers[l].in > w) w = layers[l].in;
        if (layers[l].out > w) w = layers[l].out;
    }
    return w;
}

/* Rows of a batch one thread handles at most. */
static int64_t share(int64_t batch, int threads) { return (batch + threads - 1) / threads; }

int64_t fastnn_dense_stack_workspace(const fastnn_dense_layer *layers, int n_layers,
                                     int64_t batch, int64_t n_params, int threads)
{
    if (!layers || n_layers < 1 || batch < 1 || n_params < 0 || threads < 1)
        return -1;
    int64_t outs = 0;
    for (int l = 0; l < n_layers; l++)
        outs += layers[l].out;
    return threads * share(batch, threads) * (outs + 2 * widest(layers, n_layers))
           + (threads - 1) * n_params;
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
    fastnn_optimizer *opt;
    int loss;
    const float *X;
    const int32_t *labels;
    const float *T;
    int64_t n, batch;
    double l2, loss_scale, grad_scale;
    float *workspace;
    double *batch_loss;
    int64_t *batch_correct, *n_done;
    int threads;
    /* per batch, per thread */
    double loss_part[MAX_THREADS], sq_part[MAX_THREADS];
    int64_t correct_part[MAX_THREADS], rows_part[MAX_THREADS];
    int rc[MAX_THREADS];
    int stop;
};

/* The part [*a, *b) of layer l's weights inside [lo, hi); 0 if empty. */
static int weights_within(const struct epoch *e, int l, int64_t lo, int64_t hi,
                          int64_t *a, int64_t *b)
{
    const int64_t w0 = e->layers[l].w_offset, w1 = w0 + e->layers[l].in * e->layers[l].out;
    *a = w0 > lo ? w0 : lo;
    *b = w1 < hi ? w1 : hi;
    return *a < *b;
}

/* Sum of squares of the weights inside params[lo, hi) (the l2 term). */
static double weight_squares(const struct epoch *e, int64_t lo, int64_t hi)
{
    double total = 0.0, sq;
    int64_t a, b;
    for (int l = 0; l < e->n_layers; l++)
        if (weights_within(e, l, lo, hi, &a, &b)) {
            fastnn_sum_squares(&sq, e->params + a, b - a);
            total += sq;
        }
    return total;
}

/* dW += l2 / m * W for the weights inside [lo, hi). */
static void weight_decay_l2(const struct epoch *e, int64_t lo, int64_t hi, float coef)
{
    int64_t a, b;
    for (int l = 0; l < e->n_layers; l++)
        if (weights_within(e, l, lo, hi, &a, &b))
            fastnn_axpy(e->grads + a, e->params + a, b - a, coef);
}

/* Forward, loss and backward of rows [r0, r0 + m_t) of a batch of m rows,
   on thread t's workspace, into gradient buffer `grads`. */
static int rows_pass(struct epoch *e, int t, int64_t r0, int64_t m_t, int64_t m, float *grads)
{
    const fastnn_dense_layer *layers = e->layers;
    const int nl = e->n_layers;
    const int64_t c = layers[nl - 1].out, w = widest(layers, nl);
    const int64_t rows = share(e->batch, e->threads);
    int64_t outs = 0;
    for (int l = 0; l < nl; l++)
        outs += layers[l].out;
    float *ws = e->workspace + (int64_t)t * rows * (outs + 2 * w);
    float *g[2] = {ws + rows * outs, ws + rows * outs + rows * w};
    const float *xb = e->X + r0 * layers[0].in;
    const int32_t *lb = e->labels ? e->labels + r0 : NULL;
    const float *tb = e->T ? e->T + r0 * c : NULL;
    int rc;

    const float *inp = xb;
    float *Y = ws;
    for (int l = 0; l < nl; l++) {
        const fastnn_dense_layer *L = &layers[l];
        rc = fastnn_dense_forward(Y, inp, e->params + L->w_offset,
                                  L->b_offset >= 0 ? e->params + L->b_offset : NULL,
                                  m_t, L->in, L->out, L->act, L->slope);
        if (rc) return rc;
        inp = Y;
        Y += rows * L->out;
    }
    float *out = (float *)inp, *dout = g[0];
    float value = 0.0f;
    switch (e->loss) {
    case FASTNN_LOSS_SOFTMAX_XENT: rc = fastnn_softmax_xent_forward(&value, dout, out, lb, m_t, c); break;
    case FASTNN_LOSS_BCE: rc = fastnn_bce_forward(&value, out, tb, m_t * c); break;
    case FASTNN_LOSS_MSE: rc = fastnn_mse_forward(&value, out, tb, m_t * c); break;
    default: rc = fastnn_mae_forward(&value, out, tb, m_t * c); break;
    }
    if (rc) return rc;
    e->loss_part[t] = (double)value * (double)m_t;
    e->correct_part[t] = count_correct(out, lb, tb, m_t, c, e->loss);
    switch (e->loss) {
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

    int cur = 0;
    int64_t y_off = rows * (outs - layers[nl - 1].out);
    for (int l = nl - 1; l >= 0; l--) {
        const fastnn_dense_layer *L = &layers[l];
        float *dY = g[cur];
        const float *Xl = l > 0 ? ws + y_off - rows * layers[l - 1].out : xb;
        rc = fastnn_dense_backward(l > 0 ? g[1 - cur] : NULL, grads + L->w_offset,
                                   L->b_offset >= 0 ? grads + L->b_offset : NULL, dY, dY, Xl,
                                   e->params + L->w_offset, ws + y_off, m_t, L->in, L->out,
                                   L->act, L->slope);
        if (rc) return rc;
        if (l > 0)
            y_off -= rows * layers[l - 1].out;
        cur = 1 - cur;
    }
    return FASTNN_OK;
}

/* The epoch as run by thread t of e->threads (also outside any parallel
   region with one thread: the barriers are then no-ops). */
static void epoch_thread(struct epoch *e, int t)
{
    const int T = e->threads;
    const int64_t n_batches = (e->n + e->batch - 1) / e->batch;
    /* this thread's slice of the parameters for the sum and the update,
       64-byte aligned */
    const int64_t per = ((e->n_params + T - 1) / T + 15) / 16 * 16;
    const int64_t p_lo = per * t < e->n_params ? per * t : e->n_params;
    const int64_t p_hi = p_lo + per < e->n_params ? p_lo + per : e->n_params;
    const int64_t rows = share(e->batch, T);
    int64_t outs = 0;
    for (int l = 0; l < e->n_layers; l++)
        outs += e->layers[l].out;
    float *partial = e->workspace + (int64_t)T * rows * (outs + 2 * widest(e->layers, e->n_layers));
    e->rc[t] = FASTNN_OK;
    /* The backward writes every weight and bias, never the alignment gaps
       between them: those stay zero (the workspace comes uninitialised). */
    if (t > 0)
        memset(partial + (int64_t)(t - 1) * e->n_params, 0, (size_t)e->n_params * sizeof(float));

    for (int64_t bi = 0; bi < n_batches; bi++) {
        const int64_t lo = bi * e->batch, m = lo + e->batch <= e->n ? e->batch : e->n - lo;
        const int64_t base = m / T, extra = m % T;
        const int64_t m_t = base + (t < extra), r0 = lo + t * base + (t < extra ? t : extra);
        float *grads_t = t == 0 ? e->grads : partial + (int64_t)(t - 1) * e->n_params;
        e->rows_part[t] = m_t;
        e->loss_part[t] = 0.0;
        e->correct_part[t] = 0;
        if (m_t > 0 && e->rc[t] == FASTNN_OK)
            e->rc[t] = rows_pass(e, t, r0, m_t, m, grads_t);
        e->sq_part[t] = e->l2 != 0.0 ? weight_squares(e, p_lo, p_hi) : 0.0;
#pragma omp barrier
#pragma omp master
        {
            double total = 0.0, sq = 0.0;
            int64_t correct = 0;
            for (int i = 0; i < T; i++) {
                total += e->loss_part[i];
                sq += e->sq_part[i];
                correct += e->correct_part[i];
                if (e->rc[i] != FASTNN_OK) e->stop = e->rc[i];
            }
            total = total / (double)m * e->loss_scale + 0.5 * e->l2 / (double)m * sq;
            e->batch_loss[bi] = total;
            e->batch_correct[bi] = correct;
            *e->n_done = bi + 1;
            if (!e->stop && !isfinite(total))
                e->stop = 1;  /* not an error: the caller sees the loss */
            if (!e->stop)
                optimizer_advance(e->opt);
        }
#pragma omp barrier
        if (e->stop)
            break;
        /* sum the partial gradients of the threads that had rows, add the
           l2 gradient and update, each thread on its slice */
        for (int i = 1; i < T; i++)
            if (e->rows_part[i] > 0)
                fastnn_axpy(e->grads + p_lo, partial + (int64_t)(i - 1) * e->n_params + p_lo,
                            p_hi - p_lo, 1.0f);
        if (e->l2 != 0.0)
            weight_decay_l2(e, p_lo, p_hi, (float)(e->l2 / (double)m));
        if (p_hi > p_lo) {
            int rc = optimizer_apply(e->params, e->grads, e->opt, p_lo, p_hi);
            if (rc) e->rc[t] = rc;
        }
#pragma omp barrier
    }
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
    if (!stack_valid(n_params, layers, n_layers) || !optimizer_valid(opt) ||
        fastnn_dense_stack_workspace(layers, n_layers, batch, n_params, 1) > workspace_size)
        return FASTNN_EINVAL;
    const int64_t c = layers[n_layers - 1].out;
    if (loss == FASTNN_LOSS_SOFTMAX_XENT)
        for (int64_t i = 0; i < n; i++)
            if (labels[i] < 0 || labels[i] >= c)
                return FASTNN_EINVAL;

    /* As many threads as asked for, the workspace holds, and make sense:
       at least 8 rows each. */
    int threads = fastnn_get_num_threads();
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    while (threads > 1 && (batch / threads < 8 ||
           fastnn_dense_stack_workspace(layers, n_layers, batch, n_params, threads)
               > workspace_size))
        threads--;

    struct epoch e = {params, grads, n_params, layers, n_layers, opt, loss, X,
                      loss == FASTNN_LOSS_SOFTMAX_XENT ? labels : NULL,
                      loss == FASTNN_LOSS_SOFTMAX_XENT ? NULL : T, n, batch, l2, loss_scale,
                      grad_scale, workspace, batch_loss, batch_correct, n_done, threads,
                      {0}, {0}, {0}, {0}, {0}, 0};
    *n_done = 0;
    int team_ok = threads > 1;
    if (team_ok) {
#pragma omp parallel num_threads(threads)
        {
            /* OpenMP may give fewer threads than asked for (e.g. nested in
               a caller's parallel region): then nobody starts, and the
               epoch runs on one thread below, whose layout always fits. */
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
    for (int i = 0; i < threads; i++)
        if (e.rc[i] != FASTNN_OK)
            return e.rc[i];
    return e.stop > 1 || e.stop < 0 ? e.stop : FASTNN_OK;
}
