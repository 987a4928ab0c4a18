/*
 * plan.c -- a whole training epoch of any compiled model: the interpreter of
 * a plan of layer records (fastnn.h, spec.ModelEpoch), and the Philox
 * dropout kernels.  The specification is fastnn.kernels.reference's
 * run_model_epoch and dropout_mask.
 *
 * (Stubs: the interpreter lands in the next commits.)
 */
#include "fastnn.h"
#include "internal.h"

int fastnn_dropout_forward(float *Y, const float *X, int64_t size, double p, int64_t seed,
                           int64_t counter)
{
    (void)Y; (void)X; (void)size; (void)p; (void)seed; (void)counter;
    return FASTNN_EINVAL;
}

int fastnn_dropout_backward(float *dX, const float *dY, int64_t size, double p, int64_t seed,
                            int64_t counter)
{
    (void)dX; (void)dY; (void)size; (void)p; (void)seed; (void)counter;
    return FASTNN_EINVAL;
}

int fastnn_model_epoch_run(fastnn_model_epoch *epoch)
{
    (void)epoch;
    return FASTNN_EINVAL;
}
