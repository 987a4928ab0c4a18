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

int64_t fastnn_dense_stack_workspace(const fastnn_dense_layer *layers, int n_layers,
                                     int64_t batch)
{
    if (!layers || n_layers < 1 || batch < 1)
        return -1;
    int64_t outs = 0;
    for (int l = 0; l < n_layers; l++)
        outs += layers[l].out;
    return batch * (outs + 2 * widest(layers, n_layers));
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

static int optimizer_step(float *params, const float *grads, int64_t size, fastnn_optimizer *o)
{
    float **s = o->state;
    o->step += 1;
    switch (o->kind) {
    case FASTNN_OPT_SGD:
        return fastnn_sgd(params, grads, s[0], size, o->step, o->lr, o->momentum, o->dampening,
                          o->nesterov, o->weight_decay);
    case FASTNN_OPT_ADAM:
        return fastnn_adam(params, grads, s[0], s[1], size, o->step, o->lr, o->beta1, o->beta2,
                           o->eps, o->weight_decay);
    case FASTNN_OPT_ADAMW:
        return fastnn_adamw(params, grads, s[0], s[1], size, o->step, o->lr, o->beta1, o->beta2,
                            o->eps, o->weight_decay);
    case FASTNN_OPT_RMSPROP:
        return fastnn_rmsprop(params, grads, s[0], s[1], s[2], size, o->lr, o->alpha, o->eps,
                              o->weight_decay, o->momentum, o->centered);
    case FASTNN_OPT_ADAGRAD:
        return fastnn_adagrad(params, grads, s[0], size, o->step, o->lr, o->lr_decay,
                              o->weight_decay, o->eps);
    case FASTNN_OPT_NADAM:
        o->mu_product *= nadam_mu(o->step, o->beta1, o->momentum_decay);
        return fastnn_nadam(params, grads, s[0], s[1], size, o->step, o->lr, o->beta1, o->beta2,
                            o->eps, o->weight_decay, o->momentum_decay, o->mu_product);
    case FASTNN_OPT_ADAMAX:
        return fastnn_adamax(params, grads, s[0], s[1], size, o->step, o->lr, o->beta1,
                             o->beta2, o->eps, o->weight_decay);
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
        fastnn_dense_stack_workspace(layers, n_layers, batch) > workspace_size)
        return FASTNN_EINVAL;
    const int64_t c = layers[n_layers - 1].out, w = widest(layers, n_layers);
    if (loss == FASTNN_LOSS_SOFTMAX_XENT)
        for (int64_t i = 0; i < n; i++)
            if (labels[i] < 0 || labels[i] >= c)
                return FASTNN_EINVAL;

    /* Y_l offsets in the workspace, then the two gradient buffers. */
    int64_t y_off[MAX_LAYERS], off = 0;
    for (int l = 0; l < n_layers; l++) {
        y_off[l] = off;
        off += batch * layers[l].out;
    }
    float *g[2] = {workspace + off, workspace + off + batch * w};
    const int64_t n_batches = (n + batch - 1) / batch;
    int rc = FASTNN_OK;
    *n_done = 0;

    for (int64_t bi = 0; bi < n_batches; bi++) {
        const int64_t lo = bi * batch, m = (lo + batch <= n ? batch : n - lo);
        const float *xb = X + lo * layers[0].in;
        const int32_t *lb = labels ? labels + lo : NULL;
        const float *tb = T ? T + lo * c : NULL;

        /* forward */
        const float *inp = xb;
        for (int l = 0; l < n_layers; l++) {
            const fastnn_dense_layer *L = &layers[l];
            float *Y = workspace + y_off[l];
            rc = fastnn_dense_forward(Y, inp, params + L->w_offset,
                                      L->b_offset >= 0 ? params + L->b_offset : NULL,
                                      m, L->in, L->out, L->act, L->slope);
            if (rc) return rc;
            inp = Y;
        }
        float *out = workspace + y_off[n_layers - 1], *dout = g[0];

        /* loss */
        float value = 0.0f;
        switch (loss) {
        case FASTNN_LOSS_SOFTMAX_XENT: rc = fastnn_softmax_xent_forward(&value, dout, out, lb, m, c); break;
        case FASTNN_LOSS_BCE: rc = fastnn_bce_forward(&value, out, tb, m * c); break;
        case FASTNN_LOSS_MSE: rc = fastnn_mse_forward(&value, out, tb, m * c); break;
        default: rc = fastnn_mae_forward(&value, out, tb, m * c); break;
        }
        if (rc) return rc;
        double total = (double)value * loss_scale;
        if (l2 != 0.0) {
            double sq_all = 0.0;
            for (int l = 0; l < n_layers; l++) {
                double sq;
                fastnn_sum_squares(&sq, params + layers[l].w_offset, layers[l].in * layers[l].out);
                sq_all += sq;
            }
            total += 0.5 * l2 / (double)m * sq_all;
        }
        batch_loss[bi] = total;
        batch_correct[bi] = count_correct(out, lb, tb, m, c, loss);
        *n_done = bi + 1;
        if (!isfinite(total))
            return FASTNN_OK;
        switch (loss) {
        case FASTNN_LOSS_SOFTMAX_XENT: rc = fastnn_softmax_xent_backward(dout, dout, lb, m, c); break;
        case FASTNN_LOSS_BCE: rc = fastnn_bce_backward(dout, out, tb, m * c); break;
        case FASTNN_LOSS_MSE: rc = fastnn_mse_backward(dout, out, tb, m * c); break;
        default: rc = fastnn_mae_backward(dout, out, tb, m * c); break;
        }
        if (rc) return rc;
        if (grad_scale != 1.0)
            fastnn_scale(dout, m * c, (float)grad_scale);

        /* backward: dZ in place over dY, dX into the other buffer */
        int cur = 0;
        for (int l = n_layers - 1; l >= 0; l--) {
            const fastnn_dense_layer *L = &layers[l];
            float *dY = g[cur];
            const float *Xl = l > 0 ? workspace + y_off[l - 1] : xb;
            rc = fastnn_dense_backward(l > 0 ? g[1 - cur] : NULL, grads + L->w_offset,
                                       L->b_offset >= 0 ? grads + L->b_offset : NULL, dY, dY,
                                       Xl, params + L->w_offset, workspace + y_off[l],
                                       m, L->in, L->out, L->act, L->slope);
            if (rc) return rc;
            if (l2 != 0.0)
                fastnn_axpy(grads + L->w_offset, params + L->w_offset, L->in * L->out,
                            (float)(l2 / (double)m));
            cur = 1 - cur;
        }
        rc = optimizer_step(params, grads, n_params, opt);
        if (rc) return rc;
    }
    return FASTNN_OK;
}
