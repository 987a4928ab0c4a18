/*
 * philox.c -- dropout masks from Philox4x32-10 (Salmon et al. 2011, the
 * Random123 generator), fastnn.kernels.reference.dropout_mask.
 *
 * Element e of a call's flat buffer takes word e % 4 of the generator at
 * counter (e / 4 low 32 bits, e / 4 high, call low, call high) and key
 * (seed low, seed high); it is dropped when the word's top 24 bits are
 * below ceil(p * 2^24).  Each element's mask is a pure function of (seed,
 * call, e), so the threads split the elements any way and the result is
 * bit-identical for every thread count (and equal to the numpy reference).
 *
 * The generator runs on LANES blocks of 4 words at once, structure of
 * arrays, with the round loop outside the lane loop: the 32x32->64 bit
 * products vectorise (pmuludq), and FASTNN_CLONES compiles AVX-512 / AVX2 /
 * baseline variants chosen at load time.
 */
#include <stddef.h>
#include <stdint.h>

#include "fastnn.h"
#include "internal.h"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u
#define PHILOX_ROUNDS 10

/* Blocks of 4 words per pass (64 elements), and per parallel work item. */
#define LANES 16
#define SPAN_BLOCKS 1024
/* Parallel from this many elements (10 rounds of 2 products per 4 words). */
#define PAR_MIN (1 << 14)

struct mask {
    uint32_t k0, k1;     /* key: seed low, high */
    uint32_t c2, c3;     /* counter words 2, 3: the call, low and high */
    uint32_t threshold;  /* dropped iff (word >> 8) < threshold */
    float scale;         /* kept elements' factor */
};

/* Out[e] = in[e] * mask(e) for the elements of blocks [b_lo, b_hi) below
   `size` (so the last block may be partial). */
FASTNN_CLONES
static void dropout_blocks(float *out, const float *in, int64_t size, int64_t b_lo,
                           int64_t b_hi, const struct mask *mk)
{
    const uint32_t threshold = mk->threshold;
    const float scale = mk->scale;
    for (int64_t b0 = b_lo; b0 < b_hi; b0 += LANES) {
        float factor[4 * LANES];
#pragma omp simd
        for (int j = 0; j < LANES; j++) {
            const uint64_t block = (uint64_t)(b0 + j);
            uint32_t x0 = (uint32_t)block, x1 = (uint32_t)(block >> 32), x2 = mk->c2, x3 = mk->c3;
            uint32_t k0 = mk->k0, k1 = mk->k1;
#pragma GCC unroll 10
            for (int r = 0; r < PHILOX_ROUNDS; r++) {
                const uint64_t p0 = (uint64_t)PHILOX_M0 * x0;
                const uint64_t p1 = (uint64_t)PHILOX_M1 * x2;
                x0 = (uint32_t)(p1 >> 32) ^ x1 ^ k0;
                x2 = (uint32_t)(p0 >> 32) ^ x3 ^ k1;
                x1 = (uint32_t)p1;
                x3 = (uint32_t)p0;
                k0 += PHILOX_W0;
                k1 += PHILOX_W1;
            }
            factor[4 * j] = (x0 >> 8) < threshold ? 0.0f : scale;
            factor[4 * j + 1] = (x1 >> 8) < threshold ? 0.0f : scale;
            factor[4 * j + 2] = (x2 >> 8) < threshold ? 0.0f : scale;
            factor[4 * j + 3] = (x3 >> 8) < threshold ? 0.0f : scale;
        }
        const int64_t b1 = b0 + LANES < b_hi ? b0 + LANES : b_hi;
        const int64_t e0 = 4 * b0, e1 = 4 * b1 < size ? 4 * b1 : size;
        float *o = out + e0;
        const float *x = in + e0;
        if (e1 - e0 == 4 * LANES) {
#pragma omp simd
            for (int i = 0; i < 4 * LANES; i++)
                o[i] = x[i] * factor[i];
        } else {
            for (int64_t i = 0; i < e1 - e0; i++)
                o[i] = x[i] * factor[i];
        }
    }
}

_Static_assert(SPAN_BLOCKS % LANES == 0, "a span is whole passes");

static int dropout(float *out, const float *in, int64_t size, double p, int64_t seed,
                   int64_t counter)
{
    if (!out || !in || size < 0 || !(p >= 0.0 && p < 1.0) || seed < 0 || counter < 0)
        return FASTNN_EINVAL;
    const double t = ceil(p * 16777216.0);  /* exact: p * 2^24 only shifts the exponent */
    const struct mask mk = {
        .k0 = (uint32_t)seed, .k1 = (uint32_t)((uint64_t)seed >> 32),
        .c2 = (uint32_t)counter, .c3 = (uint32_t)((uint64_t)counter >> 32),
        .threshold = t < 16777216.0 ? (uint32_t)t : 16777216u,
        .scale = (float)(1.0 / (1.0 - p))};
    const int64_t blocks = size / 4 + (size % 4 != 0);
    if (size <= PAR_MIN || fastnn_get_num_threads() < 2) {
        dropout_blocks(out, in, size, 0, blocks, &mk);
        return FASTNN_OK;
    }
#pragma omp parallel for num_threads(fastnn_get_num_threads()) schedule(static)
    for (int64_t b = 0; b < blocks; b += SPAN_BLOCKS)
        dropout_blocks(out, in, size, b, b + SPAN_BLOCKS < blocks ? b + SPAN_BLOCKS : blocks,
                       &mk);
    return FASTNN_OK;
}

int fastnn_dropout_forward(float *Y, const float *X, int64_t size, double p, int64_t seed,
                           int64_t counter)
{
    return dropout(Y, X, size, p, seed, counter);
}

int fastnn_dropout_backward(float *dX, const float *dY, int64_t size, double p, int64_t seed,
                            int64_t counter)
{
    return dropout(dX, dY, size, p, seed, counter);
}
