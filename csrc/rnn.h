/* rnn.h -- the RNN record of a plan (csrc/rnn.c), for plan.c (not API). */
#ifndef FASTNN_RNN_H
#define FASTNN_RNN_H

#include <stdint.h>
#include "fastnn.h"

/* Record r (FASTNN_OP_RNN) well formed and its regions inside the buffers
   for a full batch of B rows (spec.rnn_record_regions); the generic checks
   of x, dx, y, dy are plan.c's. */
int fastnn_rnn_record_valid(const fastnn_model_epoch *a, const int64_t *r, int64_t B);
int fastnn_rnn_record_forward(fastnn_model_epoch *a, const int64_t *r, const float *x,
                              int64_t m);
int fastnn_rnn_record_backward(fastnn_model_epoch *a, const int64_t *r, const float *x,
                               int64_t m);

#endif
