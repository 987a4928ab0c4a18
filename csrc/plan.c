/*
 * plan.c -- a whole training epoch of any compiled model: the interpreter
 * of a plan of layer records (fastnn.h: fastnn_model_epoch; spec.ModelEpoch
 * on the Python side).  The specification is fastnn.kernels.reference's
 * run_model_epoch, followed here step for step with the library's own
 * kernels; the Philox dropout kernels are in philox.c.
 *
 * Validation.  Everything is checked before anything is written: each
 * record's kind and shape (a DENSE record's weights are (h*w*c, oc), a
 * window's output extent is the one its input, padding and stride give,
 * an elementwise record keeps its size, ...), every region it touches
 * (spec.record_regions: offset and size for a full batch, in the float
 * workspace, the int32 workspace, params/grads or buffers), the gathered
 * batch, the output and its gradient, the penalized ranges, the labels
 * (in [0, out_size)), the order (in [0, n)), the optimizer's states and
 * step counter.  Sizes are multiplied and added with overflow checks
 * (fastnn_add / fastnn_product), so no index computed in the loop can pass
 * int64 either.  Overlaps between regions are the plan compiler's
 * business: they give wrong numbers, never an access outside the buffers
 * (copies use memmove).
 *
 * Threads.  The batch loop runs on the calling thread; every kernel it
 * calls splits its own work over the configured threads (outputs only), so
 * the results are those of the kernels for any thread count.  Nothing is
 * allocated.
 *
 * A plan of DENSE records only, chained, without clipping, runs the tuned
 * dense-stack epoch of train.c instead (its own threading and workspace
 * layout, the same semantics), when the workspace is large enough for it;
 * so does one whose DENSE records are followed by a BATCHNORM of their
 * features and/or a DROPOUT (train.c runs them inside its pass over each
 * layer's columns).
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "fastnn.h"
#include "internal.h"
#include "rnn.h"

#define FIELD(r, f) ((r)[FASTNN_F_##f])

/* Dense-stack fast path: at most this many layers (its tables live on the
   stack). */
#define MAX_STACK_LAYERS 256

/* [off, off + size) lies in a buffer of `cap` elements. */
static int inside(int64_t off, int64_t size, int64_t cap)
{
    return off >= 0 && size >= 0 && cap >= 0 && off <= cap - size;
}

/* The same, or off == -1 (absent). */
static int absent_or_inside(int64_t off, int64_t size, int64_t cap)
{
    return off == -1 || inside(off, size, cap);
}

static int act_valid(int64_t act)
{
    return act >= FASTNN_ACT_IDENTITY && act <= FASTNN_ACT_SOFTPLUS;
}

/* One spatial extent of a window: input `in`, window k, stride s, padding
   p (smaller than the window, as the kernels require) gives output `out`. */
static int window_valid(int64_t in, int64_t k, int64_t s, int64_t p, int64_t out)
{
    int64_t padded;
    return k >= 1 && s >= 1 && p >= 0 && p < k && fastnn_add(&padded, in, p)
           && fastnn_add(&padded, padded, p) && padded >= k && out == (padded - k) / s + 1;
}

/* Record r (scalars s) is well formed and every region it touches, for a
   full batch of B rows, lies in its buffer.  m_min: the smallest batch of
   the epoch (batch statistics need two rows); calls: batches in the epoch
   (a dropout's counter + batch index stays in int64). */
static int record_valid(const fastnn_model_epoch *a, const int64_t *r, const double *s,
                        int64_t B, int64_t m_min, int64_t calls)
{
    const int64_t op = FIELD(r, OP);
    const int64_t h = FIELD(r, H), w = FIELD(r, W), c = FIELD(r, C);
    const int64_t oh = FIELD(r, OH), ow = FIELD(r, OW), oc = FIELD(r, OC);
    const int64_t kh = FIELD(r, KH), kw = FIELD(r, KW), sh = FIELD(r, SH), sw = FIELD(r, SW);
    const int64_t ws = a->workspace_size, np = a->n_params;
    int64_t isz, osz, bi, bo, size, last;
    if (op < FASTNN_OP_DENSE || op > FASTNN_OP_RNN || h < 1 || w < 1 || c < 1 || oh < 1
        || ow < 1 || oc < 1 || !fastnn_product(&isz, h, w, c) || !fastnn_product(&osz, oh, ow, oc)
        || !fastnn_product(&bi, B, isz) || !fastnn_product(&bo, B, osz))
        return 0;
    /* x = -1: the batch's input rows, in_size floats each */
    if (FIELD(r, X) == -1 ? isz != a->in_size : !inside(FIELD(r, X), bi, ws))
        return 0;
    if (!absent_or_inside(FIELD(r, DX), bi, ws) || !inside(FIELD(r, DY), bo, ws)
        || (op != FASTNN_OP_FORK && !inside(FIELD(r, Y), bo, ws)))
        return 0;
    switch (op) {
    case FASTNN_OP_DENSE:
        return oh == 1 && ow == 1 && act_valid(FIELD(r, ACT)) && fastnn_product(&size, isz, oc)
               && inside(FIELD(r, PARAM), size, np) && absent_or_inside(FIELD(r, BIAS), oc, np);
    case FASTNN_OP_CONV2D:
        return act_valid(FIELD(r, ACT)) && window_valid(h, kh, sh, FIELD(r, PH), oh)
               && window_valid(w, kw, sw, FIELD(r, PW), ow)
               && fastnn_product(&size, kh, kw, c, oc) && inside(FIELD(r, PARAM), size, np)
               && absent_or_inside(FIELD(r, BIAS), oc, np)
               && fastnn_product(&size, B, oh, ow, kh, kw, c) && inside(FIELD(r, AUX), size, ws);
    case FASTNN_OP_MAXPOOL2D:
    case FASTNN_OP_AVGPOOL2D:
        /* (argmax holds an index y * w + x of the image: h w fits in int32) */
        return oc == c && window_valid(h, kh, sh, 0, oh) && window_valid(w, kw, sw, 0, ow)
               && (op == FASTNN_OP_AVGPOOL2D
                   || (h * w <= INT32_MAX && inside(FIELD(r, IAUX), bo, a->iworkspace_size)));
    case FASTNN_OP_ACTIVATION:
        return isz == osz && act_valid(FIELD(r, ACT));
    case FASTNN_OP_SOFTMAX:
        return isz == osz;
    case FASTNN_OP_BATCHNORM: {
        const double momentum = s[FASTNN_S_MOMENTUM], eps = s[FASTNN_S_EPS];
        return isz == osz && oc == c && FIELD(r, DX) != -1 && m_min * h * w >= 2
               && eps > 0.0 && momentum >= 0.0 && momentum <= 1.0
               && inside(FIELD(r, PARAM), c, np) && inside(FIELD(r, BIAS), c, np)
               && inside(FIELD(r, STAT0), c, a->n_buffers)
               && inside(FIELD(r, STAT1), c, a->n_buffers)
               && fastnn_product(&size, 2, c) && inside(FIELD(r, AUX), size, ws);
    }
    case FASTNN_OP_DROPOUT: {
        const double p = s[FASTNN_S_P];
        return isz == osz && p >= 0.0 && p < 1.0 && FIELD(r, SEED) >= 0
               && FIELD(r, COUNTER) >= 0 && fastnn_add(&last, FIELD(r, COUNTER), calls - 1);
    }
    case FASTNN_OP_RNN:  /* rnn.c */
        return fastnn_rnn_record_valid(a, r, B);
    case FASTNN_OP_ADD:  /* y = x + skip (aux -1: the batch's input rows); backward
                            ws[daux] = dy (-1: the skip needs no gradient) */
        return isz == osz
               && (FIELD(r, AUX) == -1 ? osz == a->in_size : inside(FIELD(r, AUX), bo, ws))
               && absent_or_inside(FIELD(r, DAUX), bo, ws);
    default:  /* FORK: backward dx = dy + ws[daux] (aux unused) */
        return isz == osz && absent_or_inside(FIELD(r, AUX), bo, ws)
               && (FIELD(r, DX) == -1 ? absent_or_inside(FIELD(r, DAUX), bo, ws)
                                      : inside(FIELD(r, DAUX), bo, ws));
    }
}

/* Everything the epoch reads or writes is described by valid sizes and lies
   inside its buffer; *n_batches: the epoch's batches. */
static int epoch_valid(const fastnn_model_epoch *a, int64_t *n_batches)
{
    const int labelled = a->loss == FASTNN_LOSS_SOFTMAX_XENT;
    const int64_t ws = a->workspace_size, B = a->batch;
    int64_t size, fields;
    if (!a->params || !a->grads || a->n_params < 1 || !a->workspace || ws < 0
        || a->n_buffers < 0 || (a->n_buffers > 0 && !a->buffers) || a->iworkspace_size < 0
        || (a->iworkspace_size > 0 && !a->iworkspace) || a->n_records < 0
        || (a->n_records > 0 && (!a->plan || !a->plan_scalars)) || a->n_penalized < 0
        || (a->n_penalized > 0 && !a->penalized) || (a->trainable && a->n_trainable < 1)
        || !a->X || a->n < 1 || a->in_size < 1
        || a->out_size < 1 || B < 1 || !a->batch_loss || !a->batch_correct)
        return 0;
    if (!fastnn_product(&fields, a->n_records, FASTNN_PLAN_FIELDS)
        || !fastnn_product(&fields, a->n_records, FASTNN_PLAN_SCALARS)
        || !fastnn_product(&fields, a->n_penalized, 2)
        || (a->trainable && !fastnn_product(&fields, a->n_trainable, 2)))
        return 0;
    if (!fastnn_product(&size, a->n, a->in_size) || !fastnn_product(&size, a->n, a->out_size)
        || !fastnn_epoch_data_valid(a->loss, a->labels, a->T, a->n, a->out_size, a->order,
                                    a->n_order))
        return 0;
    const int64_t rows = a->order ? a->n_order : a->n;
    *n_batches = (rows - 1) / B + 1;
    const int64_t m_min = rows - (*n_batches - 1) * B;  /* the last batch is the smallest */
    int64_t bin, bout;
    if (!fastnn_product(&bin, B, a->in_size) || !fastnn_product(&bout, B, a->out_size))
        return 0;
    /* the gathered batch (with order only), the output and its gradient */
    if (a->order && (!inside(a->xb, bin, ws)
                     || (labelled ? !inside(a->lb, B, a->iworkspace_size)
                                  : !inside(a->tb, bout, ws))))
        return 0;
    if ((a->output == -1 ? a->in_size != a->out_size : !inside(a->output, bout, ws))
        || !inside(a->doutput, bout, ws))
        return 0;
    for (int64_t i = 0; i < a->n_penalized; i++)
        if (!inside(a->penalized[2 * i], a->penalized[2 * i + 1], a->n_params))
            return 0;
    if (a->trainable)  /* increasing and disjoint: nothing is updated twice */
        for (int64_t i = 0; i < a->n_trainable; i++)
            if (!inside(a->trainable[2 * i], a->trainable[2 * i + 1], a->n_params)
                || (i > 0 && a->trainable[2 * i]
                                 < a->trainable[2 * i - 2] + a->trainable[2 * i - 1]))
                return 0;
    if (a->hook && !fastnn_hook_valid(a->hook_every, a->hook_events))
        return 0;
    for (int64_t i = 0; i < a->n_records; i++)
        if (!record_valid(a, a->plan + i * FASTNN_PLAN_FIELDS,
                          a->plan_scalars + i * FASTNN_PLAN_SCALARS, B, m_min, *n_batches))
            return 0;
    return fastnn_optimizer_valid(&a->opt, *n_batches);
}

/* ---- the generic interpreter ------------------------------------------------ */

/* The batch's rows: the input, and the labels or targets. */
struct batch {
    int64_t index, m;  /* the batch number in the epoch, its rows */
    const float *x;    /* (m, in_size) */
    const int32_t *labels;
    const float *T;    /* (m, out_size) */
};

static float *ws_at(const fastnn_model_epoch *a, int64_t off)
{
    return a->workspace + off;
}

/* Record r's input: the batch's rows or a workspace region. */
static const float *record_input(const fastnn_model_epoch *a, const int64_t *r,
                                 const struct batch *b)
{
    return FIELD(r, X) == -1 ? b->x : ws_at(a, FIELD(r, X));
}

static int record_forward(fastnn_model_epoch *a, const int64_t *r, const double *s,
                          const struct batch *b)
{
    const int64_t m = b->m, h = FIELD(r, H), w = FIELD(r, W), c = FIELD(r, C);
    const int64_t oc = FIELD(r, OC), isz = h * w * c;
    const int op = (int)FIELD(r, OP), act = (int)FIELD(r, ACT);
    const float slope = (float)s[FASTNN_S_SLOPE];
    const float *x = record_input(a, r, b);
    float *P = a->params;
    if (op == FASTNN_OP_FORK)
        return FASTNN_OK;
    float *y = ws_at(a, FIELD(r, Y));
    const float *bias = FIELD(r, BIAS) < 0 ? NULL : P + FIELD(r, BIAS);
    switch (op) {
    case FASTNN_OP_DENSE:
        return fastnn_dense_forward(y, x, P + FIELD(r, PARAM), bias, m, isz, oc, act, slope);
    case FASTNN_OP_CONV2D:
        return fastnn_conv2d_forward(y, ws_at(a, FIELD(r, AUX)), x, P + FIELD(r, PARAM), bias,
                                     m, h, w, c, oc, FIELD(r, KH), FIELD(r, KW), FIELD(r, SH),
                                     FIELD(r, SW), FIELD(r, PH), FIELD(r, PW), act, slope);
    case FASTNN_OP_MAXPOOL2D:
        return fastnn_maxpool2d_forward(y, a->iworkspace + FIELD(r, IAUX), x, m, h, w, c,
                                        FIELD(r, KH), FIELD(r, KW), FIELD(r, SH), FIELD(r, SW));
    case FASTNN_OP_AVGPOOL2D:
        return fastnn_avgpool2d_forward(y, x, m, h, w, c, FIELD(r, KH), FIELD(r, KW),
                                        FIELD(r, SH), FIELD(r, SW));
    case FASTNN_OP_ACTIVATION:
        return fastnn_activation_forward(y, x, m * isz, act, slope);
    case FASTNN_OP_SOFTMAX:
        return fastnn_softmax_forward(y, x, m * isz / c, c);
    case FASTNN_OP_BATCHNORM: {
        float *mean = ws_at(a, FIELD(r, AUX));
        return fastnn_batchnorm_forward(y, mean, mean + c, a->buffers + FIELD(r, STAT0),
                                        a->buffers + FIELD(r, STAT1), x, P + FIELD(r, PARAM),
                                        P + FIELD(r, BIAS), m * isz / c, c,
                                        s[FASTNN_S_MOMENTUM], s[FASTNN_S_EPS]);
    }
    case FASTNN_OP_DROPOUT:
        return fastnn_dropout_forward(y, x, m * isz, s[FASTNN_S_P], FIELD(r, SEED),
                                      FIELD(r, COUNTER) + b->index);
    case FASTNN_OP_RNN:
        return fastnn_rnn_record_forward(a, r, x, m);
    case FASTNN_OP_ADD:
        memmove(y, x, (size_t)(m * isz) * sizeof(float));
        return fastnn_axpy(y, FIELD(r, AUX) == -1 ? b->x : ws_at(a, FIELD(r, AUX)), m * isz,
                           1.0f);
    default:
        return FASTNN_EINVAL;
    }
}

static int record_backward(fastnn_model_epoch *a, const int64_t *r, const double *s,
                           const struct batch *b)
{
    const int64_t m = b->m, h = FIELD(r, H), w = FIELD(r, W), c = FIELD(r, C);
    const int64_t oc = FIELD(r, OC), isz = h * w * c;
    const int op = (int)FIELD(r, OP), act = (int)FIELD(r, ACT);
    const float slope = (float)s[FASTNN_S_SLOPE];
    const float *x = record_input(a, r, b);
    float *P = a->params, *G = a->grads;
    float *dy = ws_at(a, FIELD(r, DY));
    float *dx = FIELD(r, DX) == -1 ? NULL : ws_at(a, FIELD(r, DX));
    const float *y = op == FASTNN_OP_FORK ? NULL : ws_at(a, FIELD(r, Y));
    float *db = FIELD(r, BIAS) < 0 ? NULL : G + FIELD(r, BIAS);
    const size_t bytes = (size_t)(m * isz) * sizeof(float);
    switch (op) {
    case FASTNN_OP_DENSE:
        return fastnn_dense_backward(dx, G + FIELD(r, PARAM), db, dy, dy, x, P + FIELD(r, PARAM),
                                     y, m, isz, oc, act, slope);
    case FASTNN_OP_CONV2D:
        return fastnn_conv2d_backward(dx, G + FIELD(r, PARAM), db, dy, ws_at(a, FIELD(r, AUX)),
                                      dy, P + FIELD(r, PARAM), y, m, h, w, c, oc, FIELD(r, KH),
                                      FIELD(r, KW), FIELD(r, SH), FIELD(r, SW), FIELD(r, PH),
                                      FIELD(r, PW), act, slope);
    case FASTNN_OP_MAXPOOL2D:
        return dx ? fastnn_maxpool2d_backward(dx, dy, a->iworkspace + FIELD(r, IAUX), m, h, w, c,
                                              FIELD(r, KH), FIELD(r, KW), FIELD(r, SH),
                                              FIELD(r, SW))
                  : FASTNN_OK;
    case FASTNN_OP_AVGPOOL2D:
        return dx ? fastnn_avgpool2d_backward(dx, dy, m, h, w, c, FIELD(r, KH), FIELD(r, KW),
                                              FIELD(r, SH), FIELD(r, SW))
                  : FASTNN_OK;
    case FASTNN_OP_ACTIVATION:
        return dx ? fastnn_activation_backward(dx, dy, y, m * isz, act, slope) : FASTNN_OK;
    case FASTNN_OP_SOFTMAX:
        return dx ? fastnn_softmax_backward(dx, dy, y, m * isz / c, c) : FASTNN_OK;
    case FASTNN_OP_BATCHNORM: {
        const float *mean = ws_at(a, FIELD(r, AUX));
        return fastnn_batchnorm_backward(dx, G + FIELD(r, PARAM), G + FIELD(r, BIAS), dy, x,
                                         P + FIELD(r, PARAM), mean, mean + c, m * isz / c, c);
    }
    case FASTNN_OP_DROPOUT:
        return dx ? fastnn_dropout_backward(dx, dy, m * isz, s[FASTNN_S_P], FIELD(r, SEED),
                                            FIELD(r, COUNTER) + b->index)
                  : FASTNN_OK;
    case FASTNN_OP_RNN:
        return fastnn_rnn_record_backward(a, r, x, m);
    case FASTNN_OP_ADD:
        if (FIELD(r, DAUX) != -1)
            memmove(ws_at(a, FIELD(r, DAUX)), dy, bytes);
        if (dx && dx != dy)
            memmove(dx, dy, bytes);
        return FASTNN_OK;
    case FASTNN_OP_FORK:
        if (!dx)
            return FASTNN_OK;
        if (dx != dy)
            memmove(dx, dy, bytes);
        return fastnn_axpy(dx, ws_at(a, FIELD(r, DAUX)), m * isz, 1.0f);
    default:
        return FASTNN_EINVAL;
    }
}

/* 1 if record j is a convolution whose output only a max pooling (record
   j + 1, window = stride) reads and whose gradient only that pooling
   writes, in a geometry whose backward cnn.c runs as one pass: the
   pooling's backward is then skipped and the convolution's takes dZ from
   the pooling's dY and argmax (fastnn_conv2d_pooled_backward), so the
   pooling's dX is never written and read back. */
static int conv_pool_fused(const fastnn_model_epoch *a, int64_t j, int64_t m)
{
    if (j < 0 || j + 1 >= a->n_records)
        return 0;
    const int64_t *r = a->plan + j * FASTNN_PLAN_FIELDS, *p = r + FASTNN_PLAN_FIELDS;
    return FIELD(r, OP) == FASTNN_OP_CONV2D && FIELD(p, OP) == FASTNN_OP_MAXPOOL2D
           && FIELD(p, X) == FIELD(r, Y) && FIELD(p, DX) == FIELD(r, DY) && FIELD(p, DX) != -1
           && FIELD(p, H) == FIELD(r, OH) && FIELD(p, W) == FIELD(r, OW)
           && FIELD(p, C) == FIELD(r, OC)
           && fastnn_conv2d_pool_fusable(m, FIELD(r, H), FIELD(r, W), FIELD(r, C), FIELD(r, OC),
                                         FIELD(r, KH), FIELD(r, KW), FIELD(r, SH), FIELD(r, SW),
                                         FIELD(r, PH), FIELD(r, PW), (int)FIELD(r, ACT),
                                         FIELD(p, KH), FIELD(p, KW), FIELD(p, SH), FIELD(p, SW));
}

/* 1 if conv_pool_fused(a, j, m) holds for a first layer (no dX) of few
   input channels whose output no other record reads (nor is the model's
   output): its forward and the pooling's then run as one pass that never
   writes the convolution's output, and its backward takes dW and db from
   the pooling's dY, argmax and output (cnn.c, fastnn_conv_pool_small_*).
   The forward and the backward of a batch decide alike (same plan, same m). */
static int conv_pool_small(const fastnn_model_epoch *a, int64_t j, int64_t m)
{
    if (!conv_pool_fused(a, j, m))
        return 0;
    const int64_t *r = a->plan + j * FASTNN_PLAN_FIELDS, *p = r + FASTNN_PLAN_FIELDS;
    if (FIELD(r, DX) != -1 || a->output == FIELD(r, Y)
        || !fastnn_conv_pool_small_ok(m, FIELD(r, H), FIELD(r, W), FIELD(r, C), FIELD(r, OC),
                                      FIELD(r, KH), FIELD(r, KW), FIELD(r, SH), FIELD(r, SW),
                                      FIELD(r, PH), FIELD(r, PW), (int)FIELD(r, ACT),
                                      FIELD(p, KH), FIELD(p, KW), FIELD(p, SH), FIELD(p, SW)))
        return 0;
    for (int64_t k = 0; k < a->n_records; k++) {
        const int64_t *q = a->plan + k * FASTNN_PLAN_FIELDS;
        if (k != j + 1 && k != j
            && (FIELD(q, X) == FIELD(r, Y)
                || (FIELD(q, OP) == FASTNN_OP_ADD && FIELD(q, AUX) == FIELD(r, Y))))
            return 0;
    }
    return 1;
}

/* The forward of conv record j and its pooling j + 1 as one pass. */
static int conv_pool_small_forward(fastnn_model_epoch *a, int64_t j, const struct batch *b)
{
    const int64_t *r = a->plan + j * FASTNN_PLAN_FIELDS, *p = r + FASTNN_PLAN_FIELDS;
    const double *s = a->plan_scalars + j * FASTNN_PLAN_SCALARS;
    const float *P = a->params;
    return fastnn_conv_pool_small_forward(
        ws_at(a, FIELD(p, Y)), a->iworkspace + FIELD(p, IAUX), ws_at(a, FIELD(r, AUX)),
        record_input(a, r, b), P + FIELD(r, PARAM), FIELD(r, BIAS) < 0 ? NULL : P + FIELD(r, BIAS),
        b->m, FIELD(r, H), FIELD(r, W), FIELD(r, C), FIELD(r, OC), FIELD(r, KH), FIELD(r, KW),
        FIELD(r, PH), FIELD(r, PW), (int)FIELD(r, ACT), (float)s[FASTNN_S_SLOPE], FIELD(p, KH),
        FIELD(p, KW));
}

/* The backward of conv record j fused with its pooling j + 1. */
static int conv_pool_backward(fastnn_model_epoch *a, int64_t j, const struct batch *b)
{
    const int64_t *r = a->plan + j * FASTNN_PLAN_FIELDS, *p = r + FASTNN_PLAN_FIELDS;
    const double *s = a->plan_scalars + j * FASTNN_PLAN_SCALARS;
    float *P = a->params, *G = a->grads;
    if (conv_pool_small(a, j, b->m))
        return fastnn_conv_pool_small_backward(
            G + FIELD(r, PARAM), FIELD(r, BIAS) < 0 ? NULL : G + FIELD(r, BIAS),
            ws_at(a, FIELD(r, AUX)), ws_at(a, FIELD(p, DY)), a->iworkspace + FIELD(p, IAUX),
            ws_at(a, FIELD(p, Y)), b->m, FIELD(r, H), FIELD(r, W), FIELD(r, C), FIELD(r, OC),
            FIELD(r, KH), FIELD(r, KW), FIELD(r, PH), FIELD(r, PW), (int)FIELD(r, ACT),
            (float)s[FASTNN_S_SLOPE], FIELD(p, KH), FIELD(p, KW));
    return fastnn_conv2d_pooled_backward(
        FIELD(r, DX) == -1 ? NULL : ws_at(a, FIELD(r, DX)), G + FIELD(r, PARAM),
        FIELD(r, BIAS) < 0 ? NULL : G + FIELD(r, BIAS), ws_at(a, FIELD(r, DY)),
        ws_at(a, FIELD(r, AUX)), ws_at(a, FIELD(p, DY)), a->iworkspace + FIELD(p, IAUX),
        P + FIELD(r, PARAM), ws_at(a, FIELD(r, Y)), b->m, FIELD(r, H), FIELD(r, W), FIELD(r, C),
        FIELD(r, OC), FIELD(r, KH), FIELD(r, KW), FIELD(r, SH), FIELD(r, SW), FIELD(r, PH),
        FIELD(r, PW), (int)FIELD(r, ACT), (float)s[FASTNN_S_SLOPE], FIELD(p, KH), FIELD(p, KW));
}

/* Batch number i's rows (gathered into the workspace with an order). */
static void batch_rows(fastnn_model_epoch *a, int64_t i, int64_t rows, struct batch *b)
{
    const int64_t lo = i * a->batch, in = a->in_size, out = a->out_size;
    const int labelled = a->loss == FASTNN_LOSS_SOFTMAX_XENT;
    b->index = i;
    b->m = rows - lo < a->batch ? rows - lo : a->batch;
    if (!a->order) {
        b->x = a->X + lo * in;
        b->labels = labelled ? a->labels + lo : NULL;
        b->T = labelled ? NULL : a->T + lo * out;
        return;
    }
    float *xb = ws_at(a, a->xb), *tb = labelled ? NULL : ws_at(a, a->tb);
    int32_t *lb = labelled ? a->iworkspace + a->lb : NULL;
    for (int64_t j = 0; j < b->m; j++) {
        const int64_t src = a->order[lo + j];
        memcpy(xb + j * in, a->X + src * in, (size_t)in * sizeof(float));
        if (labelled)
            lb[j] = a->labels[src];
        else
            memcpy(tb + j * out, a->T + src * out, (size_t)out * sizeof(float));
    }
    b->x = xb;
    b->labels = lb;
    b->T = tb;
}

/* The loss of the batch's output: its value (before loss_scale), and the
   loss gradient into doutput (P for softmax_xent, then P - onehot). */
static int loss_forward(const fastnn_model_epoch *a, const float *out, float *dout,
                        const struct batch *b, float *value)
{
    const int64_t m = b->m, c = a->out_size;
    switch (a->loss) {
    case FASTNN_LOSS_SOFTMAX_XENT:
        return fastnn_softmax_xent_forward(value, dout, out, b->labels, m, c);
    case FASTNN_LOSS_BCE: return fastnn_bce_forward(value, out, b->T, m * c);
    case FASTNN_LOSS_MSE: return fastnn_mse_forward(value, out, b->T, m * c);
    default: return fastnn_mae_forward(value, out, b->T, m * c);
    }
}

static int loss_backward(const fastnn_model_epoch *a, const float *out, float *dout,
                         const struct batch *b)
{
    const int64_t m = b->m, c = a->out_size;
    switch (a->loss) {
    case FASTNN_LOSS_SOFTMAX_XENT:
        return fastnn_softmax_xent_backward(dout, dout, b->labels, m, c);
    case FASTNN_LOSS_BCE: return fastnn_bce_backward(dout, out, b->T, m * c);
    case FASTNN_LOSS_MSE: return fastnn_mse_backward(dout, out, b->T, m * c);
    default: return fastnn_mae_backward(dout, out, b->T, m * c);
    }
}

/* reference.run_model_epoch, step for step, of batch b of n_batches.
   *stop: a non-finite loss, or the hook asked to stop. */
static int run_batch(fastnn_model_epoch *a, fastnn_optimizer *o, const struct batch *b,
                     int64_t n_batches, int *stop)
{
    const int64_t m = b->m, nr = a->n_records, c = a->out_size;
    const int64_t *plan = a->plan;
    const double *scal = a->plan_scalars;
    int rc;
    /* 1. forward */
    for (int64_t j = 0; j < nr; j++) {
        if (conv_pool_small(a, j, m)) {  /* the pooling's forward too */
            if ((rc = conv_pool_small_forward(a, j, b)))
                return rc;
            j++;
            continue;
        }
        if ((rc = record_forward(a, plan + j * FASTNN_PLAN_FIELDS,
                                 scal + j * FASTNN_PLAN_SCALARS, b)))
            return rc;
    }
    /* 2. the loss */
    const float *out = a->output == -1 ? b->x : ws_at(a, a->output);
    float *dout = ws_at(a, a->doutput), v;
    if ((rc = loss_forward(a, out, dout, b, &v)))
        return rc;
    double value = (double)v * a->loss_scale, sq = 0.0, part;
    if (a->l2 != 0.0) {
        for (int64_t i = 0; i < a->n_penalized; i++) {
            if ((rc = fastnn_sum_squares(&part, a->params + a->penalized[2 * i],
                                         a->penalized[2 * i + 1])))
                return rc;
            sq += part;
        }
        value += 0.5 * a->l2 / (double)m * sq;
    }
    a->batch_loss[b->index] = value;
    a->batch_correct[b->index] = fastnn_count_correct(out, b->labels, b->T, m, c, a->loss);
    a->n_done = b->index + 1;
    if (!isfinite(value)) {
        *stop = 1;
        return FASTNN_OK;
    }
    /* 3. backward */
    if ((rc = loss_backward(a, out, dout, b)))
        return rc;
    if (a->grad_scale != 1.0 && (rc = fastnn_scale(dout, m * c, (float)a->grad_scale)))
        return rc;
    for (int64_t j = nr - 1; j >= 0; j--) {
        if (conv_pool_fused(a, j - 1, m))  /* done by the convolution's backward */
            continue;
        rc = conv_pool_fused(a, j, m) ? conv_pool_backward(a, j, b)
                                      : record_backward(a, plan + j * FASTNN_PLAN_FIELDS,
                                                        scal + j * FASTNN_PLAN_SCALARS, b);
        if (rc)
            return rc;
    }
    /* 4. l2, clipping, the update */
    if (a->l2 != 0.0)
        for (int64_t i = 0; i < a->n_penalized; i++) {
            const int64_t off = a->penalized[2 * i];
            if ((rc = fastnn_axpy(a->grads + off, a->params + off, a->penalized[2 * i + 1],
                                  (float)(a->l2 / (double)m))))
                return rc;
        }
    if (a->hook && (a->hook_events & (1 << FASTNN_HOOK_GRADS))
        && a->hook(a->hook_ctx, FASTNN_HOOK_GRADS, b->index)) {
        a->n_done = b->index;  /* stopped before this batch's update */
        *stop = 1;
        return FASTNN_OK;
    }
    /* the trainable ranges (the whole buffer without frozen layers) */
    const int64_t whole[2] = {0, a->n_params};
    const int64_t *tr = a->trainable ? a->trainable : whole;
    const int64_t n_tr = a->trainable ? a->n_trainable : 1;
    if (a->clip_value > 0.0)
        for (int64_t i = 0; i < n_tr; i++)
            if ((rc = fastnn_clip(a->grads + tr[2 * i], tr[2 * i + 1], (float)-a->clip_value,
                                  (float)a->clip_value)))
                return rc;
    if (a->clip_norm > 0.0) {
        sq = 0.0;
        for (int64_t i = 0; i < n_tr; i++) {
            if ((rc = fastnn_sum_squares(&part, a->grads + tr[2 * i], tr[2 * i + 1])))
                return rc;
            sq += part;
        }
        const double coef = a->clip_norm / (sqrt(sq) + 1e-6);
        if (coef < 1.0)
            for (int64_t i = 0; i < n_tr; i++)
                if ((rc = fastnn_scale(a->grads + tr[2 * i], tr[2 * i + 1], (float)coef)))
                    return rc;
    }
    fastnn_optimizer_advance(o);
    for (int64_t i = 0; i < n_tr; i++)
        if ((rc = fastnn_optimizer_apply(a->params, a->grads, o, tr[2 * i],
                                         tr[2 * i] + tr[2 * i + 1])))
            return rc;
    if (a->hook && (a->hook_events & (1 << FASTNN_HOOK_BATCH))
        && (b->index == n_batches - 1
            || (a->hook_every > 0 && (b->index + 1) % a->hook_every == 0))
        && a->hook(a->hook_ctx, FASTNN_HOOK_BATCH, b->index))
        *stop = 1;
    return FASTNN_OK;
}

/* ---- the dense-stack fast path ------------------------------------------------ */

/* The plan as a dense stack (layers) if it is one: DENSE records chained
   input to output (record 0 reads the batch's rows, each next one the
   previous output, passing its input gradient to that output's gradient),
   each but the last optionally followed by a BATCHNORM over its out
   features and/or a DROPOUT of its out features (post[l], run inside the
   stack's pass over the layer: train.c), the model's output the last
   DENSE record's, no clipping, the l2 ranges exactly the weights in layer
   order, parameter ranges disjoint; and the workspace holds the stack's
   layout.  Returns the number of layers, or 0. */
static int as_dense_stack(const fastnn_model_epoch *a, fastnn_dense_layer *layers,
                          fastnn_post_op *post, int *any_post)
{
    const int64_t nr = a->n_records;
    if (nr < 1 || a->clip_value > 0.0 || a->clip_norm > 0.0 || a->trainable)
        return 0;
    int64_t ranges[4 * MAX_STACK_LAYERS][2];
    int n_ranges = 0, nl = 0;
    const int64_t *prev = NULL;  /* the previous layer's last record */
    *any_post = 0;
    for (int64_t j = 0; j < nr; j++) {
        const int64_t *r = a->plan + j * FASTNN_PLAN_FIELDS;
        const int64_t in = FIELD(r, H) * FIELD(r, W) * FIELD(r, C), out = FIELD(r, OC);
        if (FIELD(r, OP) != FASTNN_OP_DENSE || nl == MAX_STACK_LAYERS)
            return 0;
        if (!prev ? FIELD(r, X) != -1
                  : (FIELD(r, X) != FIELD(prev, Y) || FIELD(r, DX) != FIELD(prev, DY)
                     || in != layers[nl - 1].out))
            return 0;
        if (a->l2 != 0.0 && (nl >= a->n_penalized || a->penalized[2 * nl] != FIELD(r, PARAM)
                             || a->penalized[2 * nl + 1] != in * out))
            return 0;
        layers[nl] = (fastnn_dense_layer){
            .in = in, .out = out, .w_offset = FIELD(r, PARAM), .b_offset = FIELD(r, BIAS),
            .act = (int)FIELD(r, ACT),
            .slope = (float)a->plan_scalars[j * FASTNN_PLAN_SCALARS + FASTNN_S_SLOPE]};
        post[nl] = (fastnn_post_op){.bn = 0, .dropout = 0};
        ranges[n_ranges][0] = FIELD(r, PARAM);
        ranges[n_ranges++][1] = FIELD(r, PARAM) + in * out;
        if (FIELD(r, BIAS) >= 0) {
            ranges[n_ranges][0] = FIELD(r, BIAS);
            ranges[n_ranges++][1] = FIELD(r, BIAS) + out;
        }
        prev = r;
        /* BATCHNORM of the out features, then DROPOUT, each chained */
        const int64_t *q = j + 1 < nr ? r + FASTNN_PLAN_FIELDS : NULL;
        if (q && FIELD(q, OP) == FASTNN_OP_BATCHNORM && FIELD(q, H) == 1 && FIELD(q, W) == 1
            && FIELD(q, C) == out && FIELD(q, X) == FIELD(prev, Y)
            && FIELD(q, DX) == FIELD(prev, DY)) {
            const double *qs = a->plan_scalars + (j + 1) * FASTNN_PLAN_SCALARS;
            post[nl].bn = 1;
            post[nl].gamma = FIELD(q, PARAM);
            post[nl].beta = FIELD(q, BIAS);
            post[nl].running_mean = a->buffers + FIELD(q, STAT0);
            post[nl].running_var = a->buffers + FIELD(q, STAT1);
            post[nl].momentum = qs[FASTNN_S_MOMENTUM];
            post[nl].eps = qs[FASTNN_S_EPS];
            ranges[n_ranges][0] = FIELD(q, PARAM);
            ranges[n_ranges++][1] = FIELD(q, PARAM) + out;
            ranges[n_ranges][0] = FIELD(q, BIAS);
            ranges[n_ranges++][1] = FIELD(q, BIAS) + out;
            prev = q;
            j++;
            q = j + 1 < nr ? q + FASTNN_PLAN_FIELDS : NULL;
        }
        if (q && FIELD(q, OP) == FASTNN_OP_DROPOUT && out % 4 == 0
            && FIELD(q, H) * FIELD(q, W) * FIELD(q, C) == out && FIELD(q, X) == FIELD(prev, Y)
            && FIELD(q, DX) == FIELD(prev, DY) && FIELD(q, DX) != -1) {
            post[nl].dropout = 1;
            post[nl].p = a->plan_scalars[(j + 1) * FASTNN_PLAN_SCALARS + FASTNN_S_P];
            post[nl].seed = FIELD(q, SEED);
            post[nl].counter = FIELD(q, COUNTER);
            prev = q;
            j++;
        }
        *any_post |= post[nl].bn || post[nl].dropout;
        nl++;
    }
    /* no post op after the last layer: the model's output is its Y */
    if (post[nl - 1].bn || post[nl - 1].dropout || a->output != FIELD(prev, Y)
        || a->doutput != FIELD(prev, DY) || (a->l2 != 0.0 && a->n_penalized != nl))
        return 0;
    for (int i = 1; i < n_ranges; i++)  /* insertion sort: short, mostly sorted */
        for (int k = i; k > 0 && ranges[k][0] < ranges[k - 1][0]; k--) {
            const int64_t lo = ranges[k][0], hi = ranges[k][1];
            ranges[k][0] = ranges[k - 1][0];
            ranges[k][1] = ranges[k - 1][1];
            ranges[k - 1][0] = lo;
            ranges[k - 1][1] = hi;
        }
    for (int i = 1; i < n_ranges; i++)
        if (ranges[i][0] < ranges[i - 1][1])
            return 0;
    const int64_t need = fastnn_dense_stack_post_workspace(layers, *any_post ? post : NULL, nl,
                                                           a->batch, 1);
    return need >= 0 && need <= a->workspace_size ? nl : 0;
}

static int run_dense_stack(fastnn_model_epoch *a, const fastnn_dense_layer *layers,
                           const fastnn_post_op *post, int n_layers)
{
    fastnn_epoch e = {
        .params = a->params, .grads = a->grads, .n_params = a->n_params, .layers = layers,
        .n_layers = n_layers, .opt = a->opt, .loss = a->loss, .X = a->X, .labels = a->labels,
        .T = a->T, .n = a->n, .order = a->order, .n_order = a->n_order, .batch = a->batch,
        .l2 = a->l2, .loss_scale = a->loss_scale, .grad_scale = a->grad_scale,
        .workspace = a->workspace, .workspace_size = a->workspace_size,
        .batch_loss = a->batch_loss, .batch_correct = a->batch_correct, .hook = a->hook,
        .hook_ctx = a->hook_ctx, .hook_every = a->hook_every, .hook_events = a->hook_events};
    const int rc = fastnn_dense_stack_epoch_post(&e, post);
    a->n_done = e.n_done;
    a->opt.step = e.opt.step;
    a->opt.mu_product = e.opt.mu_product;
    return rc;
}

/* The batch loop (on the calling thread; its kernels share their work with
   the team of fastnn_team_epoch when there is one). */
struct batches {
    fastnn_model_epoch *a;
    int64_t n_batches;
};

static int run_batches(void *arg)
{
    const struct batches *L = arg;
    fastnn_model_epoch *a = L->a;
    const int64_t rows = a->order ? a->n_order : a->n;
    fastnn_optimizer o = a->opt;
    struct batch b;
    int rc = FASTNN_OK, stop = 0;
    a->n_done = 0;
    for (int64_t i = 0; i < L->n_batches && !stop && rc == FASTNN_OK; i++) {
        batch_rows(a, i, rows, &b);
        rc = run_batch(a, &o, &b, L->n_batches, &stop);
    }
    a->opt.step = o.step;
    a->opt.mu_product = o.mu_product;
    return rc;
}

/* Whether the plan runs its batches with one team for the epoch
   (fastnn_team_epoch, fastnn_set_epoch_team): its kernels that are written
   as jobs share their work with the team, and the rest run on the calling
   thread alone -- so not a plan of recurrent records, whose kernels are
   not jobs. */
static int team_plan(const fastnn_model_epoch *a)
{
    for (int64_t j = 0; j < a->n_records; j++)
        if (a->plan[j * FASTNN_PLAN_FIELDS + FASTNN_F_OP] == FASTNN_OP_RNN)
            return 0;
    return fastnn_set_epoch_team(-1);
}

int fastnn_model_epoch_run(fastnn_model_epoch *a)
{
    int64_t n_batches;
    if (!a || !epoch_valid(a, &n_batches))
        return FASTNN_EINVAL;
    fastnn_dense_layer layers[MAX_STACK_LAYERS];
    fastnn_post_op post[MAX_STACK_LAYERS];
    int any_post;
    const int n_layers = as_dense_stack(a, layers, post, &any_post);
    if (n_layers > 0)
        return run_dense_stack(a, layers, any_post ? post : NULL, n_layers);

    struct batches L = {a, n_batches};
    const int threads = fastnn_get_num_threads();
    return fastnn_team_epoch(threads > 1 && team_plan(a) ? threads : 1, run_batches, &L);
}
