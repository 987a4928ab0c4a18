/*
 * internal.h -- helpers shared by the C kernel files (not part of the API).
 *
 * fastnn_act_scalar is the one scalar definition of every activation, the
 * C transcription of fastnn/kernels/reference.py `_act`: the gemm epilogue
 * (gemm.c) and the elementwise kernels (ops.c) both use it, so the two can
 * never disagree.  NaN propagates through every activation except step.
 *
 * Thread count: every C kernel uses fastnn_get_num_threads() (runtime.c).
 */
#ifndef FASTNN_INTERNAL_H
#define FASTNN_INTERNAL_H

#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include "fastnn.h"

/* Elementwise loops are compiled for AVX-512, AVX2 and the baseline side by
   side; the loader picks the best the CPU has (GCC function multiversioning,
   no -march flag).  The optimizer updates do a sqrt and a division per
   element, so on cache-resident buffers they are compute-bound and the
   wider vectors pay (Adam over 235k floats: 4-wide SSE2 ~280 us). */
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define FASTNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTNN_CLONES
#endif

/* Run a statement with denormals flushed to zero (MXCSR FTZ + DAZ, this
   thread only, restored after).  The optimizer updates use it: the state
   of a parameter whose gradient stays zero (a dead ReLU's weights) decays
   geometrically, m = 0.9^t m, and spends ~150 steps in the denormal range,
   where each operation takes ~100 cycles; in an MLP epoch with a few dead
   units that made Adam 2x slower.  Values below 1.2e-38 change an update
   by less than float32 can show. */
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define FASTNN_DENORMALS_AS_ZERO(...)                                              \
    do {                                                                           \
        const unsigned csr_ = _mm_getcsr();                                        \
        _mm_setcsr(csr_ | 0x8040u);                                                \
        __VA_ARGS__;                                                               \
        _mm_setcsr(csr_);                                                          \
    } while (0)
#else
#define FASTNN_DENORMALS_AS_ZERO(...) do { __VA_ARGS__; } while (0)
#endif

/* Overflow-checked size arithmetic.  The kernels index a buffer with int64
   products of the caller's sizes (row i of an (n, c) matrix starts at
   i * c), so each checks that the element count of every buffer it is
   given fits in int64 -- then every index below it does too.  Unchecked, a
   product past int64 is undefined behaviour and in practice wraps to a
   small or negative number that passes the size checks (a batch of 2^61
   rows made the epoch's workspace size negative).  Both return 1 and set
   *r when the result fits, else 0. */
static inline int fastnn_add(int64_t *r, int64_t a, int64_t b)
{
    return !__builtin_add_overflow(a, b, r);
}

static inline int fastnn_product_of(int64_t *r, const int64_t *factors, int count)
{
    int64_t p = 1;
    for (int i = 0; i < count; i++)
        if (__builtin_mul_overflow(p, factors[i], &p))
            return 0;
    *r = p;
    return 1;
}

/* fastnn_product(&r, a, b, ...): r = a * b * ..., 0 on overflow. */
#define fastnn_product(r, ...)                                                     \
    fastnn_product_of((r), (const int64_t[]){__VA_ARGS__},                         \
                      (int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))

/* The fixed chunks of a feature dimension of d features (train.c's "fixed
   chunks" note; many_dense.c must cut the same way to give the same bits):
   1 below 128 or when the epoch is too small to ever use two threads
   (chunked == 0), 2 below 512, else 4; chunk q of n starts at feature
   fastnn_chunk_bound(d, n, q), a multiple of 16 floats. */
static inline int fastnn_chunk_count(int chunked, int64_t d)
{
    if (!chunked || d < 128)
        return 1;
    return d < 512 ? 2 : 4;
}

static inline int64_t fastnn_chunk_bound(int64_t d, int n, int q)
{
    const int64_t lines = d / 16 + (d % 16 != 0);
    const int64_t at = 16 * ((q * lines + n - 1) / n);
    return at < d ? at : d;
}

/* mu_t of NAdam's momentum schedule, spec.nadam_mu (t in double: the step
   after the caller's may be past int64). */
static inline double fastnn_nadam_mu(double t, double beta1, double momentum_decay)
{
    return beta1 * (1.0 - 0.5 * pow(0.96, t * momentum_decay));
}

static inline float fastnn_act_scalar(int act, float x, float slope)
{
    switch (act) {
    case FASTNN_ACT_STEP:
        return x > 0.0f ? 1.0f : 0.0f;
    case FASTNN_ACT_SIGN:
        return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x);  /* keeps 0 and NaN */
    case FASTNN_ACT_SIGMOID: {
        /* Stable both ways: exp of a non-positive number only. */
        float e = expf(-fabsf(x));
        return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
    }
    case FASTNN_ACT_TANH:
        return tanhf(x);
    case FASTNN_ACT_RELU:
        return x < 0.0f ? 0.0f : x;                      /* keeps NaN */
    case FASTNN_ACT_LEAKY_RELU:
        return x > 0.0f ? x : x * slope;
    case FASTNN_ACT_SOFTPLUS:
        /* log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow. */
        return (x > 0.0f ? x : 0.0f) + log1pf(expf(-fabsf(x)));
    default:                                            /* identity */
        return x;
    }
}

/* fastnn_run_serial: fastnn.h */

/* Whether the OpenMP team is likely still spinning (runtime.c).  After a
   parallel region libgomp's workers spin for GOMP_SPINCOUNT iterations
   (fastnn asks for 1000: ~10-20 us) and then sleep; a region that has to
   wake them costs ~60-90 us on a virtual machine (a futex wake per
   thread; 1-2 us while they spin; bench/NOTES.md entry 53).  So a small
   kernel that runs after a serial stretch gains nothing from the team and
   loses the wake-up: each kernel's thresholds for going parallel are
   multiplied by fastnn_team_factor() -- 1 within the spin window of the
   last region's end (fastnn_team_rest, called after every region of the
   kernels), FASTNN_COLD_FACTOR (or fastnn_set_cold_factor's) after it.
   Which threads run a piece never changes the bits (every sum is cut on
   fixed boundaries), so neither does this. */
#define FASTNN_COLD_FACTOR 16
void fastnn_team_rest(void);
int64_t fastnn_team_factor(void);
/* The factor for kernels whose threshold already stands for ~30 us of one
   core's work (the convolutions': 1M multiply-adds at the narrow kernels'
   rate) rather than ~3-10 us: `multiple` times the threshold when the team
   is likely asleep (in proportion to fastnn_set_cold_factor's factor), 1
   while it spins. */
static inline double fastnn_cold_scale(double multiple)
{
    const int64_t f = fastnn_team_factor();
    return f > 1 ? multiple * (double)f / FASTNN_COLD_FACTOR : 1.0;
}

/* A barrier for the threads of one parallel region that spins before it
   sleeps (runtime.c): libgomp's own barrier spins GOMP_SPINCOUNT
   iterations, which fastnn keeps short (~10 us) so that idle workers give
   the cores back between calls -- inside one long region, such as a
   training epoch, that made threads sleep and pay a futex wake at barriers
   a batch (bench/NOTES.md entry 60).  Zero it before the region; every
   thread of the n calls fastnn_barrier_wait at the same points.  The wait
   orders memory as an OpenMP barrier: what any thread wrote before it is
   visible to every thread after it.  n == 1: no-op. */
struct fastnn_barrier {
    _Atomic int arrived;      /* threads at the current barrier */
    _Atomic int generation;   /* barriers completed (a futex word) */
    _Atomic int sleepers;     /* threads in the futex wait */
    _Atomic int busy;         /* the team shares its cores: spin short (runtime.c) */
    _Atomic int preempted;    /* the waiters' preemptions seen in the region */
    _Atomic int64_t t0;       /* the first wait's time, CLOCK_MONOTONIC ns */
    int64_t spin_ns;          /* > 0: a longer default spin (set before the region) */
};
void fastnn_barrier_wait(struct fastnn_barrier *b, int n);

/* ---- one team for a whole epoch (runtime.c) --------------------------------
   A kernel's parallel region wakes libgomp's workers, which fastnn lets
   sleep ~10 us after each region (GOMP_SPINCOUNT=1000, fastnn/kernels/c.py),
   so the small kernels of a plan's batch either run on one thread or pay a
   wake each (bench/NOTES.md 61).  fastnn_team_epoch runs body(arg) on the
   calling thread inside one parallel region of `threads`, the other
   threads waiting at a fastnn_barrier (spin, then sleep; the spin
   shortened when the cores are shared) for jobs: a kernel written as a
   job, fn(arg, tid, n) for tid in [0, n), runs through fastnn_team_run,
   which hands the shares to that team when the caller is in one and opens
   its own parallel region of `threads` otherwise.  Every other kernel
   body calls runs on the calling thread alone (fastnn_get_num_threads()
   is 1 inside the region), as with one thread: the bits never depend on
   which threads ran a share.  A job's threads synchronise inside it with
   fastnn_job_barrier(n) (every share's thread, at the same points).
   fastnn_team_size() is the n to ask for: the team's outside a job,
   fastnn_get_num_threads() with no team. */
typedef void (*fastnn_job)(void *arg, int tid, int n);
struct fastnn_team {
    struct fastnn_barrier bar, job_bar;
    int n;                    /* the team's threads */
    fastnn_job fn;            /* the job posted (NULL: the epoch is over) */
    void *arg;
    int job_n;                /* threads taking a share */
    _Atomic int64_t rest_ns;  /* when the last job ended */
    /* the leader's alone (runtime.c team_account): its shares' time x
       (n - 1) and its waits for the others' in this window of jobs, the
       jobs in it, how slow the others proved (0, 1: cold, 2: off) and
       since when */
    int64_t own_ns, wait_ns;
    int window_jobs, slow;
    int64_t slow_since;
};
int fastnn_team_epoch(int threads, int (*body)(void *), void *arg);
void fastnn_team_run(int threads, fastnn_job fn, void *arg);
void fastnn_job_barrier(int n);
/* row(ctx, i) for i in [0, count), in contiguous blocks, as a job. */
void fastnn_team_for(int threads, int64_t count, void (*row)(const void *, int64_t),
                     const void *ctx);
int fastnn_team_size(void);
/* 1 if the calling thread leads a team of fastnn_team_epoch (outside a job). */
int fastnn_team_leader(void);
/* An elementwise kernel on that team: fn(ctx, a, b) over slices [a, b) of
   [lo, lo + n), each a run of whole spans (the thread's), when `wide` and
   the caller leads a team -- then 1, with *rc a slice's non-zero return or
   FASTNN_OK; else 0 (the caller runs its own path).  Only for kernels
   whose every element is its own (the bits do not depend on the slices).
   fn runs inside a job: the kernels it calls run on their thread alone. */
typedef int (*fastnn_slice_fn)(const void *ctx, int64_t lo, int64_t hi);
int fastnn_team_slices(int64_t lo, int64_t n, int64_t span, int wide, fastnn_slice_fn fn,
                       const void *ctx, int *rc);

/* fastnn_dense_forward with leading dimensions: Y (n, out) in rows ldy
   apart, X (n, in) ldx apart, W (in, out) ldw apart, b (out) or NULL --
   e.g. a block of columns of a wider layer (gemm.c). */
int fastnn_dense_forward_ld(float *Y, int64_t ldy, const float *X, int64_t ldx,
                            const float *W, int64_t ldw, const float *b, int64_t n,
                            int64_t in, int64_t out, int act, float slope);

/* Y = X W + beta Y (leading dimensions as above), then, with epilogue != 0,
   Y = act(Y + b) (gemm.c).  With beta = 1 and in <= FASTNN_GEMM_KC (one k
   block) the product is added to Y exactly as Y + (X W computed alone). */
int fastnn_dense_partial(float *Y, int64_t ldy, const float *X, int64_t ldx, const float *W,
                         int64_t ldw, int64_t n, int64_t in, int64_t out, float beta,
                         int epilogue, const float *b, int act, float slope);
/* The same with X's rows gathered: row i of the product's X is X + rows[i]
   ldx (rows NULL: row i at X + i ldx) -- a shuffled batch multiplied where
   it lies, the packing doing the gather (gemm.c).  The bits are those of
   the product of the gathered copy.  The caller checks rows. */
int fastnn_dense_partial_rows(float *Y, int64_t ldy, const float *X, int64_t ldx,
                              const int64_t *rows, const float *W, int64_t ldw, int64_t n,
                              int64_t in, int64_t out, float beta, int epilogue,
                              const float *b, int act, float slope);
/* C (m, n) = op(A) B, A's stored rows gathered: op(A) = A's rows rows[0..m)
   (not transposed; A + rows[i] lda) or, transposed, the transpose of the k
   rows rows[0..k); ldc >= n, checked by the caller as the indices
   (gemm.c).  The bits are fastnn_gemm's on the gathered copy. */
void fastnn_gemm_rows(int trans_a, int64_t m, int64_t n, int64_t k, const float *A,
                      int64_t lda, const int64_t *rows, const float *B, int64_t ldb, float *C,
                      int64_t ldc);

/* The activation over columns [j0, j1) of m rows w apart (ops.c; serial):
   backward, D = D * act'(Y) in place; forward, D = act(Y) (D may be Y).
   The same bits as fastnn_activation_backward / _forward over each row's
   span; act must be valid (the caller's epoch checked it). */
void fastnn_act_rows(float *D, const float *Y, int64_t m, int64_t w, int64_t j0, int64_t j1,
                     int act, float slope, int backward);

/* db[lo:hi] = column sums of dZ (n, c) over columns [lo, hi) (ops.c;
   accumulated in double, serial). */
void fastnn_column_sums(float *db, const float *dZ, int64_t n, int64_t c, int64_t lo,
                        int64_t hi);

/* The optimizer step of the whole-epoch kernels (optimizer_step.c).
   fastnn_optimizer_valid: the states the kind needs are there and its step
   counter, advanced once per batch for n_batches, stays in int64;
   fastnn_optimizer_advance: step += 1 (and NAdam's mu_product), once per
   batch before the update; fastnn_optimizer_apply: the update of
   params[lo, hi) (an elementwise kernel, so any slice). */
/* A stride-1 convolution's backward fused with the backward of a max
   pooling (window = stride) of its output (cnn.c; the plan interpreter
   uses it): dZ comes from the pooling's dY and argmax directly. */
int fastnn_conv2d_pool_fusable(int64_t n, int64_t h, int64_t w, int64_t c, int64_t oc,
                               int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                               int64_t pw, int act, int64_t pkh, int64_t pkw, int64_t psh,
                               int64_t psw);
int fastnn_conv2d_pooled_backward(float *dX, float *dW, float *db, float *dZ, float *cols,
                                  const float *pdY, const int32_t *argmax, const float *W,
                                  const float *Y, int64_t n, int64_t h, int64_t w, int64_t c,
                                  int64_t oc, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                  int64_t ph, int64_t pw, int act, float slope, int64_t pkh,
                                  int64_t pkw);
/* The same pair for a first layer of few input channels (cnn.c): the
   forward writes the pooling's output and argmax (and the padded X into
   cols), never the convolution's output; the backward takes dW and db from
   the pooling's dY, argmax and output, no dZ, no dX.  _ok: 1 if the pair
   qualifies (identity / ReLU / leaky ReLU, c <= 4, kh kw c <= 32, window
   <= 16, cols = the convolution's n oh ow kh kw c floats large enough). */
int fastnn_conv_pool_small_ok(int64_t n, int64_t h, int64_t w, int64_t c, int64_t oc,
                              int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                              int64_t pw, int act, int64_t pkh, int64_t pkw, int64_t psh,
                              int64_t psw);
int fastnn_conv_pool_small_forward(float *P, int32_t *argmax, float *cols, const float *X,
                                   const float *W, const float *b, int64_t n, int64_t h,
                                   int64_t w, int64_t c, int64_t oc, int64_t kh, int64_t kw,
                                   int64_t ph, int64_t pw, int act, float slope, int64_t pkh,
                                   int64_t pkw);
int fastnn_conv_pool_small_backward(float *dW, float *db, float *cols, const float *dP,
                                    const int32_t *argmax, const float *Py, int64_t n,
                                    int64_t h, int64_t w, int64_t c, int64_t oc, int64_t kh,
                                    int64_t kw, int64_t ph, int64_t pw, int act, float slope,
                                    int64_t pkh, int64_t pkw);
int fastnn_optimizer_valid(const fastnn_optimizer *o, int64_t n_batches);
void fastnn_optimizer_advance(fastnn_optimizer *o);
int fastnn_optimizer_apply(float *params, const float *grads, const fastnn_optimizer *o,
                           int64_t lo, int64_t hi);

/* An epoch's targets present and its labels and order entries in range
   (optimizer_step.c). */
int fastnn_epoch_data_valid(int loss, const int32_t *labels, const float *T, int64_t n,
                            int64_t classes, const int64_t *order, int64_t n_order);

/* An epoch hook's settings are valid: hook_every >= 0, hook_events only
   bits 1 << FASTNN_HOOK_* (optimizer_step.c). */
int fastnn_hook_valid(int64_t hook_every, int hook_events);

/* Correctly classified rows of out (m, c) against labels (softmax_xent) or
   targets T (bce: one output, logit > 0 vs target > 0.5; else argmax);
   0 for mse/mae (reference.count_correct). */
int64_t fastnn_count_correct(const float *out, const int32_t *labels, const float *T, int64_t m,
                             int64_t c, int loss);

/* The loss of `rows` rows for the epoch, its sum and its gradient / nf
   (ops.c, serial; see there). */
int fastnn_loss_rows(int loss, double *sum, float *dout, const float *out,
                     const int32_t *labels, const float *T, int64_t rows, int64_t c, float nf);

/* The dropout mask of columns [j0, j1) of m rows (ld apart) of a dropout
   call's flat (m, ld) buffer, element i ld + j exactly as
   fastnn_dropout_forward over the whole buffer gives it (philox.c), as
   bits: bit j % 16 of bits[i bits_ld + j / 16] set iff the element is kept
   (multiplied by fastnn_dropout_scale(p); else by 0).  ld and j1 multiples
   of 4, j0 of 16 (whole words; the bits of a last partial word past j1 are
   0); not parallel. */
void fastnn_dropout_bits(uint16_t *bits, int64_t bits_ld, int64_t ld, int64_t m, int64_t j0,
                         int64_t j1, double p, int64_t seed, int64_t counter);
float fastnn_dropout_scale(double p);

/* What follows a layer of the dense-stack epoch inside its own pass over
   the layer's columns (train.c, from plan.c's BATCHNORM and DROPOUT
   records): BatchNorm over the batch rows (scale params[gamma:gamma+out],
   shift params[beta:...], running statistics, as fastnn_batchnorm_forward
   / _backward), then Dropout(p) with the Philox masks of
   fastnn_dropout_forward at (seed, counter + batch index). */
typedef struct {
    int bn, dropout;
    int64_t gamma, beta;
    float *running_mean, *running_var;
    double momentum, eps;
    double p;
    int64_t seed, counter;
} fastnn_post_op;

/* fastnn_dense_stack_epoch with post[l] after layer l (post NULL: none;
   never after the last layer).  Its workspace: fastnn_dense_stack_post_workspace. */
int fastnn_dense_stack_epoch_post(fastnn_epoch *epoch, const fastnn_post_op *post);
int64_t fastnn_dense_stack_post_workspace(const fastnn_dense_layer *layers,
                                          const fastnn_post_op *post, int n_layers,
                                          int64_t batch, int threads);

#endif /* FASTNN_INTERNAL_H */
