/*
 * gemm_kernels.h -- the gemm micro-kernel interface and blocking constants.
 *
 * A micro-kernel computes one full MR x NR tile of C from a packed sliver of
 * A (kc x MR, column p at a + p*MR) and one of B (kc x NR, row p at
 * b + p*ldb: ldb = NR for a packed sliver, or B's own leading dimension when
 * gemm.c reads a full-width sliver of a row-major B in place):
 *
 *     C = alpha * a b + beta * C,   then, if ep: C = act(C + ep->bias)
 *
 * C is read only if beta != 0.  The kernel knows nothing of edges: gemm.c
 * zero-pads the packed slivers and sends edge tiles through a scratch tile.
 * Only the micro-kernels know the instruction set; each lives in its own
 * file with a target attribute, so the build needs no -m flags.
 */
#ifndef FASTNN_GEMM_KERNELS_H
#define FASTNN_GEMM_KERNELS_H

#include <stdint.h>

/* Blocking, all in one place.  MR x NR: register tile.  KC: depth of a
   packed sliver (a kc x NR sliver of B stays in L1).  MC x KC: packed block
   of A (L2, 1 MiB here).  KC x NC: packed panel of B (L3).  MC must be a
   multiple of MR and NC of NR. */
#define FASTNN_GENERIC_MR 4
#define FASTNN_GENERIC_NR 8
#define FASTNN_AVX2_MR 6
#define FASTNN_AVX2_NR 16
#define FASTNN_AVX512_MR 8
#define FASTNN_AVX512_NR 32

#define FASTNN_GEMM_MC 192
#define FASTNN_GEMM_KC 256
#define FASTNN_GEMM_NC 2048

/* Largest register tile over all paths (sizes the scratch tile). */
#define FASTNN_GEMM_MR_MAX 8
#define FASTNN_GEMM_NR_MAX 32

/* Bias and activation applied to the finished tile (dense_forward). */
typedef struct {
    const float *bias;  /* NR values for this tile's columns, or NULL */
    int act;            /* enum fastnn_activation */
    float slope;        /* leaky_relu */
} fastnn_epilogue;

typedef void (*fastnn_ukernel)(int64_t kc, const float *a, const float *b, int64_t ldb,
                               float *c, int64_t ldc, float alpha, float beta,
                               const fastnn_epilogue *ep);

void fastnn_ukernel_generic(int64_t kc, const float *a, const float *b,
                            int64_t ldb, float *c, int64_t ldc, float alpha, float beta,
                            const fastnn_epilogue *ep);
#if defined(__x86_64__) && defined(__GNUC__)
#define FASTNN_HAVE_X86_KERNELS 1
void fastnn_ukernel_avx2(int64_t kc, const float *a, const float *b,
                         int64_t ldb, float *c, int64_t ldc, float alpha, float beta,
                         const fastnn_epilogue *ep);
void fastnn_ukernel_avx512(int64_t kc, const float *a, const float *b,
                           int64_t ldb, float *c, int64_t ldc, float alpha, float beta,
                           const fastnn_epilogue *ep);
#endif

/* Scalar activation over an mr x nr tile of C (the epilogue of activations
   the SIMD kernels do not vectorise). */
void fastnn_tile_act(float *c, int64_t ldc, int mr, int nr, int act, float slope);

#endif /* FASTNN_GEMM_KERNELS_H */
