/*
 * plan_many.c -- the compiled epochs of many models in one call
 * (fastnn.fit_many, MLPSearchCV's banks): the models train side by side,
 * one per thread at a time, each epoch exactly as fastnn_model_epoch_run
 * alone runs it (its kernels, called inside this parallel region, run
 * serially on their thread: fastnn_get_num_threads).  Small models gain
 * most: a 64-256-128-10 MLP at batch 32 splits poorly over two threads
 * (two barriers per layer per batch), two such models do not share at all.
 * A small dense stack runs through many_dense.c's one-thread epoch (its
 * products without packing; the same values); any other model through
 * fastnn_model_epoch_run.
 */
#include <omp.h>

#include "fastnn.h"
#include "internal.h"

int fastnn_many_dense_epoch(fastnn_model_epoch *a, int *taken);

static int one_epoch(fastnn_model_epoch *e)
{
    int taken = 0;
    /* one thread's epoch: its products serial even outside a team (a
       lone model; a fork-join per small product costs more than it saves) */
    const int before = fastnn_run_serial(1);
    const int rc = fastnn_many_dense_epoch(e, &taken);
    fastnn_run_serial(before);
    return taken ? rc : fastnn_model_epoch_run(e);
}

int fastnn_model_epochs_run(fastnn_model_epoch *epochs, int64_t count, int *rcs)
{
    if (!epochs || !rcs || count < 1)
        return FASTNN_EINVAL;
    int threads = fastnn_get_num_threads();
    if (threads > count)
        threads = (int)count;
    /* dynamic: the models of a bank may differ in size */
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
    for (int64_t i = 0; i < count; i++)
        rcs[i] = one_epoch(&epochs[i]);
    if (threads > 1)
        fastnn_team_rest();
    for (int64_t i = 0; i < count; i++)
        if (rcs[i] != FASTNN_OK)
            return rcs[i];
    return FASTNN_OK;
}
