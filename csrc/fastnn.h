/*
 * fastnn.h -- the one declaration of fastnn's C kernel API.
 *
 * The cffi definitions are read from the region between the CDEF markers
 * below (fastnn/_build_ckernels.py), so this file is the single source of
 * truth for Python too.  Keep that region free of preprocessor directives.
 *
 * Conventions (after llm.c):
 *   - Outputs first, inputs next, sizes and hyperparameters last.  The one
 *     exception is fastnn_gemm, which keeps the BLAS order.
 *   - Every buffer comes from the caller; no kernel allocates.
 *   - Matrices are row-major float32.  `=` in a comment means the output is
 *     overwritten (its old content is never read), `+=` that it is
 *     accumulated into.
 *   - Every function returns FASTNN_OK (0) or a negative error code; a call
 *     with invalid sizes or a NULL required pointer does nothing and returns
 *     FASTNN_EINVAL, and so does one whose sizes multiply (a buffer's
 *     element count, a padded image) past int64.  Sizes must describe the
 *     buffers passed: the Python front (fastnn.kernels) checks that before
 *     any call.
 *   - The enums below are fastnn.kernels.spec's (tests/test_spec.py parses
 *     them and compares).
 *   - Scalars that feed bias corrections are double, as in torch.optim,
 *     which computes them in Python floats.
 */
#ifndef FASTNN_H
#define FASTNN_H

#include <stdint.h>

#define FASTNN_OK 0
#define FASTNN_EINVAL (-1)

/* Activation codes: spec.Activation. */
enum fastnn_activation {
    FASTNN_ACT_IDENTITY = 0,
    FASTNN_ACT_STEP = 1,       /* Heaviside: x > 0 ? 1 : 0; derivative 0   */
    FASTNN_ACT_SIGN = 2,       /* x > 0 ? 1 : (x < 0 ? -1 : 0); derivative 0 */
    FASTNN_ACT_SIGMOID = 3,
    FASTNN_ACT_TANH = 4,
    FASTNN_ACT_RELU = 5,
    FASTNN_ACT_LEAKY_RELU = 6, /* x > 0 ? x : slope * x (slope > 0)        */
    FASTNN_ACT_SOFTPLUS = 7    /* log(1 + e^x), derivative 1 - e^-y        */
};

/* SIMD code paths of the gemm micro-kernel, chosen at load time. */
enum fastnn_simd {
    FASTNN_SIMD_GENERIC = 0,
    FASTNN_SIMD_AVX2 = 1,      /* AVX2 + FMA */
    FASTNN_SIMD_AVX512 = 2     /* AVX-512F   */
};

/* Losses of fastnn_dense_stack_epoch: spec.Loss. */
enum fastnn_loss {
    FASTNN_LOSS_SOFTMAX_XENT = 0,
    FASTNN_LOSS_BCE = 1,
    FASTNN_LOSS_MSE = 2,
    FASTNN_LOSS_MAE = 3
};

/* Optimizers of fastnn_dense_stack_epoch: spec.OPTIMIZERS[name].code. */
enum fastnn_optimizer_kind {
    FASTNN_OPT_SGD = 0,
    FASTNN_OPT_ADAM = 1,
    FASTNN_OPT_ADAMW = 2,
    FASTNN_OPT_RMSPROP = 3,
    FASTNN_OPT_ADAGRAD = 4,
    FASTNN_OPT_NADAM = 5,
    FASTNN_OPT_ADAMAX = 6,
    FASTNN_OPT_RADAM = 7
};

/* CDEF BEGIN */

/* ---- runtime ------------------------------------------------------------ */
void fastnn_set_num_threads(int n);
int fastnn_get_num_threads(void);
/* The SIMD path in use (enum fastnn_simd) and the best this CPU supports. */
int fastnn_simd_path(void);
int fastnn_simd_best(void);
/* Force a path (tests run every path the CPU supports); EINVAL if the CPU
   lacks it. */
int fastnn_set_simd_path(int path);
/* Denormals flushed to zero (on != 0: MXCSR FTZ + DAZ) or kept (on == 0)
   by the calling thread and the OpenMP threads, until set again; returns
   the calling thread's setting before.  No-op (returns 0) off x86. */
int fastnn_flush_denormals(int on);
/* While on != 0, every kernel called by the calling thread runs on it
   alone (fastnn_get_num_threads() returns 1), as inside a parallel region:
   for a training epoch that found a batch too small to split, and for
   threads that each run their own kernels side by side (MLPSearchCV's
   banks).  Returns the thread's previous setting, to restore. */
int fastnn_run_serial(int on);
/* A kernel whose work is small for a team stays on the calling thread when
   the OpenMP team has probably gone to sleep since its last parallel region
   (libgomp's workers sleep after GOMP_SPINCOUNT spins; waking them costs
   ~60-90 us on a virtual machine): its thresholds for going parallel are
   then multiplied by `factor` (default 16; 1: the same thresholds whether
   the team spins or sleeps, as the tests of the parallel paths want).
   Returns the previous factor; factor < 1 leaves it.  Results never depend
   on it (nor on the thread count). */
int fastnn_set_cold_factor(int factor);
/* How long, in microseconds, a thread of a training epoch's team spins at
   one of the epoch's barriers before it sleeps (a futex on Linux) until the
   last thread arrives: us >= 0 sets it, -1 restores the default, < -1
   leaves it.  The default: 0 under OMP_WAIT_POLICY=passive, forever under
   OMP_WAIT_POLICY=active or GOMP_SPINCOUNT=infinite, else 50 us or
   libgomp's own spin if longer, down to ~10 us for the rest of an epoch
   whose threads are preempted more than 100 times a second (they share
   the cores with other work).  Whatever the setting, a team of more
   threads than processors does not spin (the thread waited for may need
   the core).  The short GOMP_SPINCOUNT fastnn asks for between calls had
   the epoch's threads sleep and wake at its barriers (bench/NOTES.md entry
   60).  Returns the previous setting in us (-1: the default).  Results
   never depend on it. */
int64_t fastnn_set_barrier_spin(int64_t us);

/* Whether a threaded epoch of a plan that is not a dense stack
   (fastnn_model_epoch_run with threads > 1, no recurrent record) keeps one
   team of threads for the whole epoch: the calling thread runs the batch
   loop and hands each kernel's shares to the others, which wait at a
   spinning barrier (spin as fastnn_set_barrier_spin's, 2 ms by default,
   ~10 us and then no shares at all for the rest of an epoch whose threads
   are preempted more than 100 times a second) -- instead of every kernel
   opening a parallel region of its own and waking libgomp's workers, which
   sleep ~10 us after each (bench/NOTES.md entry 61).  on = 1 (the default)
   or 0 sets it, < 0 leaves it; returns the previous setting.  Results never
   depend on it. */
int fastnn_set_epoch_team(int on);

/* ---- matrix multiply ---------------------------------------------------- */
/* C (m,n) = alpha * op(A) * op(B) + beta * C, row-major with leading
   dimensions lda/ldb/ldc.  op(A) is (m,k): A is (m,k), or (k,m) if trans_a.
   op(B) is (k,n): B is (k,n), or (n,k) if trans_b.  With beta == 0, C is
   overwritten and never read (it may hold NaN). */
int fastnn_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                float alpha, const float *A, int64_t lda,
                const float *B, int64_t ldb,
                float beta, float *C, int64_t ldc);

/* ---- dense layer -------------------------------------------------------- */
/* X (n,in), W (in,out), b (out) or NULL, Y (n,out).
   Y = act(X W + b), bias and activation applied in the gemm epilogue. */
int fastnn_dense_forward(float *Y, const float *X, const float *W,
                         const float *b, int64_t n, int64_t in, int64_t out,
                         int act, float slope);

/* dZ (n,out) = dY * act'(Y), from the cached output Y (dZ may equal dY);
   dW (in,out) = X^T dZ;  db (out) = column sums of dZ (NULL: skipped);
   dX (n,in) = dZ W^T (NULL: skipped, e.g. for the first layer). */
int fastnn_dense_backward(float *dX, float *dW, float *db, float *dZ,
                          const float *dY, const float *X, const float *W,
                          const float *Y, int64_t n, int64_t in, int64_t out,
                          int act, float slope);

/* ---- activations (elementwise over `size` floats) ------------------------ */
/* Y = act(X); Y may equal X. */
int fastnn_activation_forward(float *Y, const float *X, int64_t size,
                              int act, float slope);
/* dX = dY * act'(Y) computed from the output Y; dX may equal dY. */
int fastnn_activation_backward(float *dX, const float *dY, const float *Y,
                               int64_t size, int act, float slope);
/* Row-wise softmax: X, Y (n,c); Y may equal X. */
int fastnn_softmax_forward(float *Y, const float *X, int64_t n, int64_t c);
/* dX = Y * (dY - rowsum(dY * Y)); dX may equal dY. */
int fastnn_softmax_backward(float *dX, const float *dY, const float *Y,
                            int64_t n, int64_t c);

/* ---- losses: forward writes the batch mean to *loss ---------------------- */
/* Z logits (n,c), labels (n) in [0,c), P (n,c) = softmax(Z);
   *loss = mean_i (logsumexp(Z_i) - Z_i,label_i).  EINVAL on a bad label. */
int fastnn_softmax_xent_forward(float *loss, float *P, const float *Z,
                                const int32_t *labels, int64_t n, int64_t c);
/* dZ (n,c) = (P - onehot(labels)) / n; dZ may equal P. */
int fastnn_softmax_xent_backward(float *dZ, const float *P,
                                 const int32_t *labels, int64_t n, int64_t c);
/* Sigmoid fused with binary cross-entropy on logits Z, targets T in [0,1]:
   *loss = mean(max(z,0) - z t + log1p(exp(-|z|))). */
int fastnn_bce_forward(float *loss, const float *Z, const float *T,
                       int64_t size);
/* dZ = (sigmoid(Z) - T) / size; dZ may equal Z. */
int fastnn_bce_backward(float *dZ, const float *Z, const float *T,
                        int64_t size);
/* *loss = mean((Y - T)^2);  dY = 2 (Y - T) / size. */
int fastnn_mse_forward(float *loss, const float *Y, const float *T,
                       int64_t size);
int fastnn_mse_backward(float *dY, const float *Y, const float *T,
                        int64_t size);
/* *loss = mean(|Y - T|);  dY = sign(Y - T) / size (0 where Y == T). */
int fastnn_mae_forward(float *loss, const float *Y, const float *T,
                       int64_t size);
int fastnn_mae_backward(float *dY, const float *Y, const float *T,
                        int64_t size);

/* ---- optimizer updates: one pass over flat buffers of `size` floats ------
   All follow torch.optim's equations; `step` counts from 1; weight_decay is
   L2 added to the gradient (AdamW: decoupled).  grads is only read. */
/* momentum_buf may be NULL when momentum == 0. */
int fastnn_sgd(float *params, const float *grads, float *momentum_buf,
               int64_t size, int64_t step, double lr, double momentum,
               double dampening, int nesterov, double weight_decay);
int fastnn_adam(float *params, const float *grads, float *m, float *v,
                int64_t size, int64_t step, double lr, double beta1,
                double beta2, double eps, double weight_decay);
int fastnn_adamw(float *params, const float *grads, float *m, float *v,
                 int64_t size, int64_t step, double lr, double beta1,
                 double beta2, double eps, double weight_decay);
/* momentum_buf may be NULL when momentum == 0, grad_avg when !centered. */
int fastnn_rmsprop(float *params, const float *grads, float *square_avg,
                   float *momentum_buf, float *grad_avg, int64_t size,
                   double lr, double alpha, double eps, double weight_decay,
                   double momentum, int centered);
int fastnn_adagrad(float *params, const float *grads, float *sum_sq,
                   int64_t size, int64_t step, double lr, double lr_decay,
                   double weight_decay, double eps);
/* mu_product: product of mu_1 .. mu_step, this step's mu included, kept by
   the caller (torch keeps it as optimizer state). */
int fastnn_nadam(float *params, const float *grads, float *m, float *v,
                 int64_t size, int64_t step, double lr, double beta1,
                 double beta2, double eps, double weight_decay,
                 double momentum_decay, double mu_product);
int fastnn_adamax(float *params, const float *grads, float *m, float *u,
                  int64_t size, int64_t step, double lr, double beta1,
                  double beta2, double eps, double weight_decay);
/* RAdam: Adam's step rectified by r_t once rho_t > 5, momentum SGD before. */
int fastnn_radam(float *params, const float *grads, float *m, float *v,
                 int64_t size, int64_t step, double lr, double beta1,
                 double beta2, double eps, double weight_decay);

/* ---- flat-buffer utilities (gradient clipping) --------------------------- */
/* *out = sum(x^2), accumulated in double. */
int fastnn_sum_squares(double *out, const float *x, int64_t size);
/* x *= s. */
int fastnn_scale(float *x, int64_t size, float s);
/* x = min(max(x, lo), hi). */
int fastnn_clip(float *x, int64_t size, float lo, float hi);
/* y += alpha * x; y must not overlap x. */
int fastnn_axpy(float *y, const float *x, int64_t size, float alpha);

/* ---- convolution, pooling, batch normalisation (channels-last) ------------ */
/* Specification: fastnn.kernels.reference.  Images are (n, h, w, c); a
   window is (kh, kw) with stride (sh, sw) and zero padding (ph, pw) (pooling:
   none); oh = (h + 2 ph - kh) / sh + 1, ow likewise. */

/* X (n,h,w,c), W (kh,kw,c,oc), b (oc) or NULL, Y (n,oh,ow,oc);
   Y = act(im2col(X) W + b).  cols (n*oh*ow, kh*kw*c) is the kernels'
   workspace, left for the backward: im2col(X), or with stride 1 the
   zero-padded X (n, h+2ph, w+2pw, c) at its start (cnn.c). */
int fastnn_conv2d_forward(float *Y, float *cols, const float *X, const float *W,
                          const float *b, int64_t n, int64_t h, int64_t w, int64_t c,
                          int64_t oc, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                          int64_t ph, int64_t pw, int act, float slope);
/* dZ = dY * act'(Y) (dZ may equal dY); dW = im2col(X)^T dZ, X read from
   cols as the forward left it; db = column sums of dZ (NULL: skipped); dX
   = col2im(dZ W^T) (NULL: skipped), computed through cols, which is
   overwritten.  Results do not depend on the thread count. */
int fastnn_conv2d_backward(float *dX, float *dW, float *db, float *dZ, float *cols,
                           const float *dY, const float *W, const float *Y, int64_t n,
                           int64_t h, int64_t w, int64_t c, int64_t oc, int64_t kh,
                           int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                           int act, float slope);
/* Y (n,oh,ow,c) = window maxima; argmax = flat index y * w + x of each in
   its image (first in row-major window order on ties). */
int fastnn_maxpool2d_forward(float *Y, int32_t *argmax, const float *X, int64_t n, int64_t h,
                             int64_t w, int64_t c, int64_t kh, int64_t kw, int64_t sh,
                             int64_t sw);
/* dX (n,h,w,c) = 0, then += dY at argmax; EINVAL on an index outside [0, h*w). */
int fastnn_maxpool2d_backward(float *dX, const float *dY, const int32_t *argmax, int64_t n,
                              int64_t h, int64_t w, int64_t c, int64_t kh, int64_t kw,
                              int64_t sh, int64_t sw);
int fastnn_avgpool2d_forward(float *Y, const float *X, int64_t n, int64_t h, int64_t w,
                             int64_t c, int64_t kh, int64_t kw, int64_t sh, int64_t sw);
/* dX = each dY / (kh kw) spread over its window (overlaps accumulate). */
int fastnn_avgpool2d_backward(float *dX, const float *dY, int64_t n, int64_t h, int64_t w,
                              int64_t c, int64_t kh, int64_t kw, int64_t sh, int64_t sw);
/* X, Y (rows, c); statistics per channel over the rows.  Writes mean,
   invstd = 1/sqrt(var + eps) (biased var) and Y = (X - mean) invstd gamma +
   beta; running = (1 - momentum) running + momentum * batch (unbiased var). */
int fastnn_batchnorm_forward(float *Y, float *mean, float *invstd, float *running_mean,
                             float *running_var, const float *X, const float *gamma,
                             const float *beta, int64_t rows, int64_t c, double momentum,
                             double eps);
int fastnn_batchnorm_inference(float *Y, const float *X, const float *gamma, const float *beta,
                               const float *running_mean, const float *running_var,
                               int64_t rows, int64_t c, double eps);
/* dbeta = sum dY, dgamma = sum dY xhat, dX = gamma invstd / rows *
   (rows dY - dbeta - xhat dgamma), xhat = (X - mean) invstd. */
int fastnn_batchnorm_backward(float *dX, float *dgamma, float *dbeta, const float *dY,
                              const float *X, const float *gamma, const float *mean,
                              const float *invstd, int64_t rows, int64_t c);

/* ---- a whole training epoch of a stack of dense layers ------------------- */
/* The trainer's inner loop in C, so Python is not on the per-batch path.
   The specification is fastnn.kernels.reference.dense_stack_epoch. */

/* The epoch hook (spec.HookEvent): hook(hook_ctx, event, batch), batch the
   0-based batch index, on the thread running the epoch (the caller's; in
   fastnn_model_epochs_run the worker's).  FASTNN_HOOK_GRADS: after
   every batch's backward (grads hold its gradient, l2 included), before
   clipping and the update, when hook_events has bit 1 << GRADS.
   FASTNN_HOOK_BATCH: after the update of every hook_every-th batch ((batch
   + 1) % hook_every == 0; hook_every 0: none of these) and of the last
   batch, when hook_events has bit 1 << BATCH.  A non-zero return stops
   the epoch: for BATCH after the batch (counted in n_done), for GRADS
   before its update (not counted; step not advanced).  hook NULL: none
   (hook_events and hook_every are then ignored). */
enum fastnn_hook_event {
    FASTNN_HOOK_GRADS = 1,
    FASTNN_HOOK_BATCH = 2
};

typedef int (*fastnn_hook)(void *ctx, int event, int64_t batch);

/* One layer: the fields in the order of spec.DenseLayer (fastnn.kernels.c
   builds the array from those tuples). */
typedef struct {
    int64_t in, out;      /* features in and out                              */
    int64_t w_offset;     /* W (in,out) at params + w_offset, dW at grads + w_offset */
    int64_t b_offset;     /* b (out) likewise; -1: no bias                     */
    int act;              /* enum fastnn_activation                            */
    float slope;          /* leaky_relu's negative slope                       */
} fastnn_dense_layer;

/* The optimizer update after each batch: the hyperparameters are named as
   in spec.OPTIMIZERS (those the kind does not use are ignored). */
typedef struct {
    int kind;             /* enum fastnn_optimizer_kind                        */
    double lr, beta1, beta2, eps, weight_decay;
    double momentum, dampening, alpha, lr_decay, momentum_decay;
    int nesterov, centered;
    float *state[3];      /* += the update kernel's state buffers, in its
                             argument order (NULL where unused), n_params each */
    int64_t step;         /* in: steps taken before; out: after the epoch      */
    double mu_product;    /* NAdam's running product; in and out               */
} fastnn_optimizer;

/* One epoch's arguments (spec.Epoch).  `=` outputs are overwritten, `+=`
   buffers updated in place.

   For each batch of `batch` samples -- the last may be shorter --: forward,
   loss (targets: labels (n) for softmax_xent, else T (n, out)), backward,
   optimizer update over all n_params.  The samples are the rows of X (n,
   layers[0].in) in order, or with order != NULL the n_order rows order[0],
   order[1], ... (each in [0, n); a shuffle without a shuffled copy of X:
   each batch's rows are gathered into the workspace).
   batch_loss[i] = loss_scale * loss + l2 / (2 m) * sum(W^2);
   batch_correct[i] = correctly classified samples (0 for mse/mae).
   n_done = batches run; a batch with a non-finite loss ends the epoch
   before its update.  l2 adds l2 / m * W to dW (weights only) and
   grad_scale scales the loss gradient (scikit-learn's conventions).
   Layers' parameter ranges must not overlap; parameters no layer owns are
   updated with whatever grads holds there (as the reference does).

   The workspace (floats; spec.epoch_layout), for a full batch of B rows:
     Y_0 (B, out_0) | Y_1 | ... | D_0 (B, out_0) | D_1 | ...   outputs, gradients
     | Xb (B, in_0) | Tb (B, out_last) | Lb (B int32)          a gathered batch
     | P (2 * threads, B, widest out), only with threads > 1   partial products
   fastnn_dense_stack_workspace gives its size.

   With several threads (fastnn_get_num_threads(), fewer for small
   batches or a workspace sized for fewer; one parallel region per epoch)
   each thread owns a contiguous part of every feature dimension: its rows
   of each W, its entries of each b, and only it reads or writes them.  A
   layer's forward sums the threads' partial products; its backward gives
   each thread its rows of dW over the whole batch and its columns of dX,
   and the thread updates its parameters at once.  No gradient is summed
   across threads; the trajectory equals the single-threaded one up to
   float32 rounding (the order of the forward's sums differs). */
typedef struct {
    float *params;                    /* += (n_params) */
    float *grads;                     /* =  (n_params), each batch's gradient */
    int64_t n_params;
    const fastnn_dense_layer *layers; /* (n_layers) */
    int n_layers;
    fastnn_optimizer opt;             /* += its states, step and mu_product */
    int loss;                         /* enum fastnn_loss */
    const float *X;                   /* (n, layers[0].in) */
    const int32_t *labels;            /* (n) in [0, out_last): softmax_xent */
    const float *T;                   /* (n, out_last): the other losses */
    int64_t n;
    const int64_t *order;             /* (n_order) or NULL */
    int64_t n_order;
    int64_t batch;
    double l2, loss_scale, grad_scale;
    float *workspace;                 /* = (workspace_size) */
    int64_t workspace_size;
    double *batch_loss;               /* = (n_batches) */
    int64_t *batch_correct;           /* = (n_batches) */
    int64_t n_done;                   /* = */
    fastnn_hook hook;                 /* the epoch hook, as fastnn_model_epoch's */
    void *hook_ctx;
    int64_t hook_every;
    int hook_events;
} fastnn_epoch;

/* Floats of workspace an epoch needs with `threads` threads (the layout
   above; spec.epoch_workspace).  -1 for invalid arguments or a size past
   int64. */
int64_t fastnn_dense_stack_workspace(const fastnn_dense_layer *layers, int n_layers,
                                     int64_t batch, int threads);

/* The epoch; every argument is checked first (EINVAL: nothing written). */
int fastnn_dense_stack_epoch(fastnn_epoch *epoch);

/* ---- dropout masks from Philox4x32-10 ------------------------------------- */
/* Y = X * mask over `size` elements (X flat, C order): element e takes word
   e % 4 of Philox4x32-10 at counter (e/4 low 32 bits, e/4 high, counter
   low, counter high) and key (seed low, seed high); it is dropped (mask 0)
   when the word's top 24 bits are < ceil(p * 2^24), kept with mask
   (float)(1 / (1 - p)) otherwise (fastnn.kernels.reference.dropout_mask).
   0 <= p < 1; seed, counter >= 0.  The backward recomputes the mask:
   dX = dY * mask.  Bit-identical on every backend and thread count. */
int fastnn_dropout_forward(float *Y, const float *X, int64_t size, double p, int64_t seed,
                           int64_t counter);
int fastnn_dropout_backward(float *dX, const float *dY, int64_t size, double p, int64_t seed,
                            int64_t counter);

/* ---- recurrent layers (csrc/rnn.c; reference.rnn_forward / rnn_backward) ---- */
/* The cell kinds (spec.Cell). */
enum fastnn_rnn_cell {
    FASTNN_CELL_RNN = 1,
    FASTNN_CELL_GRU = 2,
    FASTNN_CELL_LSTM = 3
};

/* X (n, L, c), W_ih (c, G h), W_hh (h, G h), b_ih, b_hh (G h): every step's
   hidden state into Hs (n, L, h) and the gate cache into G (n, L, K h)
   (G = 1/3/4, K = 1/4/5 for rnn/gru/lstm; act: tanh or relu for rnn). */
int fastnn_rnn_forward(float *Hs, float *G, const float *X, const float *W_ih,
                       const float *W_hh, const float *b_ih, const float *b_hh, int64_t n,
                       int64_t L, int64_t c, int64_t h, int cell, int act);
/* Backpropagation through time: dHs (n, L, h) the gradient of every step's
   state (overwritten, as is G); writes dW_ih, dW_hh, db_ih, db_hh (either
   may be NULL) and dX (n, L, c) or NULL. */
int fastnn_rnn_backward(float *dX, float *dW_ih, float *dW_hh, float *db_ih, float *db_hh,
                        float *dHs, float *G, const float *X, const float *W_ih,
                        const float *W_hh, const float *Hs, int64_t n, int64_t L, int64_t c,
                        int64_t h, int cell, int act);

/* ---- a whole training epoch of any compiled model ------------------------ */
/* The record kinds of a plan (spec.Op) and the indices of a record's fields
   (spec.PLAN_FIELDS, int64; spec.PLAN_SCALARS, double).  The semantics of
   each kind is fastnn.kernels.reference's _record_forward/_record_backward
   and run_model_epoch; the regions each record touches are
   spec.record_regions (every one must lie inside its buffer: checked
   before anything runs). */
enum fastnn_op {
    FASTNN_OP_DENSE = 1,
    FASTNN_OP_CONV2D = 2,
    FASTNN_OP_MAXPOOL2D = 3,
    FASTNN_OP_AVGPOOL2D = 4,
    FASTNN_OP_ACTIVATION = 5,
    FASTNN_OP_SOFTMAX = 6,
    FASTNN_OP_BATCHNORM = 7,
    FASTNN_OP_DROPOUT = 8,
    FASTNN_OP_ADD = 9,
    FASTNN_OP_FORK = 10,
    FASTNN_OP_RNN = 11
};

enum fastnn_plan_field {
    FASTNN_F_OP = 0,
    FASTNN_F_X = 1, FASTNN_F_Y = 2, FASTNN_F_DX = 3, FASTNN_F_DY = 4,
    FASTNN_F_AUX = 5, FASTNN_F_DAUX = 6, FASTNN_F_IAUX = 7,
    FASTNN_F_PARAM = 8, FASTNN_F_BIAS = 9,
    FASTNN_F_STAT0 = 10, FASTNN_F_STAT1 = 11,
    FASTNN_F_H = 12, FASTNN_F_W = 13, FASTNN_F_C = 14,
    FASTNN_F_OH = 15, FASTNN_F_OW = 16, FASTNN_F_OC = 17,
    FASTNN_F_KH = 18, FASTNN_F_KW = 19, FASTNN_F_SH = 20, FASTNN_F_SW = 21,
    FASTNN_F_PH = 22, FASTNN_F_PW = 23,
    FASTNN_F_ACT = 24,
    FASTNN_F_SEED = 25, FASTNN_F_COUNTER = 26,
    FASTNN_F_CELL = 27, FASTNN_F_PARAM_HH = 28, FASTNN_F_BIAS_HH = 29, FASTNN_F_CACHE = 30,
    FASTNN_PLAN_FIELDS = 31
};

enum fastnn_plan_scalar {
    FASTNN_S_SLOPE = 0, FASTNN_S_MOMENTUM = 1, FASTNN_S_EPS = 2, FASTNN_S_P = 3,
    FASTNN_PLAN_SCALARS = 4
};

/* One epoch of a compiled model (spec.ModelEpoch).  For each batch of m <=
   batch rows: every record forward, the loss of the output, every record
   backward in reverse, l2, clipping, one optimizer update over n_params
   (reference.model_epoch).  Offsets are in floats of workspace (x, y, dx,
   dy, aux, daux; x = -1: the batch's input rows, dx = -1: not needed), in
   int32s of iworkspace (iaux), in floats of params/grads (param, bias) and
   of buffers (stat0, stat1). */
typedef struct {
    float *params;                    /* += (n_params) */
    float *grads;                     /* =  (n_params) */
    int64_t n_params;
    float *buffers;                   /* += (n_buffers): running statistics */
    int64_t n_buffers;
    const int64_t *plan;              /* (n_records, FASTNN_PLAN_FIELDS) */
    const double *plan_scalars;       /* (n_records, FASTNN_PLAN_SCALARS) */
    int64_t n_records;
    const int64_t *penalized;         /* (n_penalized, 2): offset, size in params */
    int64_t n_penalized;
    const int64_t *trainable;         /* (n_trainable, 2): offset, size in params, in
                                         increasing disjoint order: the ranges clipped
                                         and updated (frozen layers' are not); NULL:
                                         the whole buffer */
    int64_t n_trainable;
    fastnn_optimizer opt;             /* += its states, step and mu_product */
    int loss;                         /* enum fastnn_loss */
    const float *X;                   /* (n, in_size) */
    const int32_t *labels;            /* (n): softmax_xent */
    const float *T;                   /* (n, out_size): the other losses */
    int64_t n, in_size, out_size;
    const int64_t *order;             /* (n_order) or NULL */
    int64_t n_order;
    int64_t batch;
    int64_t xb, tb, lb;               /* gathered batch: X rows and T rows in
                                         workspace, labels in iworkspace */
    int64_t output, doutput;          /* the model's output and its gradient */
    double l2, loss_scale, grad_scale;
    double clip_value, clip_norm;     /* 0: none */
    float *workspace;                 /* = (workspace_size) */
    int64_t workspace_size;
    int32_t *iworkspace;              /* = (iworkspace_size) */
    int64_t iworkspace_size;
    double *batch_loss;               /* = (n_batches) */
    int64_t *batch_correct;           /* = (n_batches) */
    int64_t n_done;                   /* = */
    int (*hook)(void *ctx, int event, int64_t batch);  /* NULL or the epoch hook
                                         (see fastnn_hook_event) */
    void *hook_ctx;
    int64_t hook_every;               /* >= 0 */
    int hook_events;                  /* bit mask: 1 << FASTNN_HOOK_* */
} fastnn_model_epoch;

/* The epoch; every argument is checked first (EINVAL: nothing written). */
int fastnn_model_epoch_run(fastnn_model_epoch *epoch);

/* One epoch of each of `count` models, side by side (one model per thread
   at a time; each as fastnn_model_epoch_run alone): rcs[i] is epoch i's
   return code; returns the first non-zero one.  The epochs may share X, T,
   labels and order (read only), nothing they write. */
int fastnn_model_epochs_run(fastnn_model_epoch *epochs, int64_t count, int *rcs);

/* CDEF END */

#endif /* FASTNN_H */
