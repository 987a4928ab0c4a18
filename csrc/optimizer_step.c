/*
 * optimizer_step.c -- what every whole-epoch kernel does after its backward
 * pass and with its output: the optimizer's validity check, step counters
 * and update, and the count of correctly classified samples.  Shared by the
 * dense-stack epoch (train.c) and the model epoch (plan.c); declared in
 * internal.h.
 */
#include <stddef.h>

#include "fastnn.h"
#include "internal.h"

/* The states the kind needs are there, and its step counter, advanced once
   per batch, stays >= 1 and in int64. */
int fastnn_optimizer_valid(const fastnn_optimizer *o, int64_t n_batches)
{
    int64_t last;
    if (o->step < 0 || !fastnn_add(&last, o->step, n_batches))
        return 0;
    switch (o->kind) {
    case FASTNN_OPT_SGD:
        return o->momentum == 0.0 || o->state[0];
    case FASTNN_OPT_ADAM: case FASTNN_OPT_ADAMW: case FASTNN_OPT_NADAM: case FASTNN_OPT_ADAMAX:
    case FASTNN_OPT_RADAM:
        return o->state[0] && o->state[1];
    case FASTNN_OPT_RMSPROP:
        return o->state[0] && (o->momentum == 0.0 || o->state[1]) && (!o->centered || o->state[2]);
    case FASTNN_OPT_ADAGRAD:
        return o->state[0] != NULL;
    default:
        return 0;
    }
}

/* Advance the step counters: once per batch, before the update. */
void fastnn_optimizer_advance(fastnn_optimizer *o)
{
    o->step += 1;
    if (o->kind == FASTNN_OPT_NADAM)
        o->mu_product *= fastnn_nadam_mu((double)o->step, o->beta1, o->momentum_decay);
}

/* The update as slices on the team of an epoch (fastnn_team_slices):
   every element's update is its own. */
struct apply_ctx {
    float *params;
    const float *grads;
    const fastnn_optimizer *o;
};

static int apply_slice(const void *p, int64_t lo, int64_t hi)
{
    const struct apply_ctx *c = p;
    return fastnn_optimizer_apply(c->params, c->grads, c->o, lo, hi);
}

/* The update of params[lo, hi) (an elementwise kernel, so any slice). */
int fastnn_optimizer_apply(float *params, const float *grads, const fastnn_optimizer *o,
                           int64_t lo, int64_t hi)
{
    const struct apply_ctx ac = {params, grads, o};
    int rc;
    const int64_t wide = ((int64_t)1 << 15) * fastnn_team_factor();   /* ops.c's PAR_MIN_CHEAP */
    if (hi > lo && fastnn_team_slices(lo, hi - lo, 4096, hi - lo > wide, apply_slice, &ac, &rc))
        return rc;
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
    case FASTNN_OPT_RADAM:
        return fastnn_radam(p, g, s[0], s[1], size, o->step, o->lr, o->beta1, o->beta2,
                            o->eps, o->weight_decay);
    default:
        return FASTNN_EINVAL;
    }
}

int fastnn_hook_valid(int64_t hook_every, int hook_events)
{
    const int known = (1 << FASTNN_HOOK_GRADS) | (1 << FASTNN_HOOK_BATCH);
    return hook_every >= 0 && (hook_events & ~known) == 0;
}

/* The targets an epoch's loss needs are there (labels for softmax_xent,
   else T, and the loss is known), every label is in [0, classes) and
   every order entry in [0, n) (n_order >= 1 when order is given). */
int fastnn_epoch_data_valid(int loss, const int32_t *labels, const float *T, int64_t n,
                            int64_t classes, const int64_t *order, int64_t n_order)
{
    const int labelled = loss == FASTNN_LOSS_SOFTMAX_XENT;
    if (labelled ? !labels : (loss < FASTNN_LOSS_BCE || loss > FASTNN_LOSS_MAE || !T))
        return 0;
    if (labelled)
        for (int64_t i = 0; i < n; i++)
            if (labels[i] < 0 || labels[i] >= classes)
                return 0;
    if (order) {
        if (n_order < 1)
            return 0;
        for (int64_t i = 0; i < n_order; i++)
            if (order[i] < 0 || order[i] >= n)
                return 0;
    }
    return 1;
}

/* Correctly classified rows of out (m, c); see reference.count_correct. */
int64_t fastnn_count_correct(const float *out, const int32_t *labels, const float *T, int64_t m,
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
