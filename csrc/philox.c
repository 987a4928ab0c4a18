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
#define PAR_MIN ((int64_t)(1 << 14) * fastnn_team_factor())  /* internal.h */

struct mask {
    uint32_t k0, k1;     /* key: seed low, high */
    uint32_t c2, c3;     /* counter words 2, 3: the call, low and high */
    uint32_t threshold;  /* dropped iff (word >> 8) < threshold */
    float scale;         /* kept elements' factor */
};

/* x = Philox4x32-10 of counter (block low, block high, c2, c3) under the key
   (k0, k1): the 4 words of block `block`, one element each.  Scalar; the
   AVX-512 path below runs the same rounds on 16 blocks at once. */
static inline __attribute__((always_inline))
void philox_block(uint32_t x[4], uint64_t block, const struct mask *mk)
{
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
    x[0] = x0, x[1] = x1, x[2] = x2, x[3] = x3;
}

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
            uint32_t x[4];
            philox_block(x, (uint64_t)(b0 + j), mk);
            for (int q = 0; q < 4; q++)
                factor[4 * j + q] = (x[q] >> 8) < threshold ? 0.0f : scale;
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

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX512_PHILOX 1

/* The factors (0 if dropped, else scale) of the 64 elements of blocks
   [b0, b0 + 16), in element order in o[0..3] (element 4 j + q is word q of
   block j): the four words of each block in four registers, transposed. */
__attribute__((target("avx512f"))) static inline void philox_pass_avx512(
    int64_t b0, const struct mask *mk, __m512 o[4])
{
    const __m512i m0 = _mm512_set1_epi32((int)PHILOX_M0), m1 = _mm512_set1_epi32((int)PHILOX_M1);
    const __m512i thr = _mm512_set1_epi32((int)mk->threshold);
    const __m512 scale = _mm512_set1_ps(mk->scale);
    const __m512i steps = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    /* Blocks b0 .. b0 + 7 (h = 0) and b0 + 8 .. b0 + 15 (h = 1) in 64-bit
       lanes, each word in a lane's low half: vpmuludq reads only the low
       halves and gives the whole 64-bit product, so hi = product >> 32 and
       lo = the product itself (its high half is never read as a word:
       only low halves reach a product, the xors are lanewise, and the
       words are taken from the low halves at the end) -- 12 operations a
       round for 16 blocks, where splitting 32-bit lanes into even and odd
       products took ~20. */
    __m512i x0[2], x1[2], x2[2], x3[2];
    for (int h = 0; h < 2; h++) {
        x0[h] = _mm512_add_epi64(_mm512_set1_epi64(b0 + 8 * h), steps);
        x1[h] = _mm512_srli_epi64(x0[h], 32);
        x2[h] = _mm512_set1_epi64((long long)mk->c2);
        x3[h] = _mm512_set1_epi64((long long)mk->c3);
    }
    uint32_t k0 = mk->k0, k1 = mk->k1;
    for (int r = 0; r < PHILOX_ROUNDS; r++) {
        const __m512i key0 = _mm512_set1_epi32((int)k0), key1 = _mm512_set1_epi32((int)k1);
        for (int h = 0; h < 2; h++) {
            const __m512i p0 = _mm512_mul_epu32(x0[h], m0), p1 = _mm512_mul_epu32(x2[h], m1);
            x0[h] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p1, 32), x1[h], key0, 0x96);
            x2[h] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p0, 32), x3[h], key1, 0x96);
            x1[h] = p1;
            x3[h] = p0;
        }
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    /* the words of blocks b0 + j in lane j (16 lanes of 32 bits) */
#define WORDS(x) _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(x[0])), \
                                    _mm512_cvtepi64_epi32(x[1]), 1)
    const __m512i w0 = WORDS(x0), w1 = WORDS(x1), w2 = WORDS(x2), w3 = WORDS(x3);
#undef WORDS
    /* each word's factor: 0 if dropped, else scale */
    const __m512 f0 = _mm512_maskz_mov_ps(
        _mm512_cmpge_epu32_mask(_mm512_srli_epi32(w0, 8), thr), scale);
    const __m512 f1 = _mm512_maskz_mov_ps(
        _mm512_cmpge_epu32_mask(_mm512_srli_epi32(w1, 8), thr), scale);
    const __m512 f2 = _mm512_maskz_mov_ps(
        _mm512_cmpge_epu32_mask(_mm512_srli_epi32(w2, 8), thr), scale);
    const __m512 f3 = _mm512_maskz_mov_ps(
        _mm512_cmpge_epu32_mask(_mm512_srli_epi32(w3, 8), thr), scale);
    /* 4x4 transposes in each 128-bit lane: r_i's lane L holds block 4 L + i */
    const __m512 t0 = _mm512_unpacklo_ps(f0, f1), t1 = _mm512_unpackhi_ps(f0, f1);
    const __m512 t2 = _mm512_unpacklo_ps(f2, f3), t3 = _mm512_unpackhi_ps(f2, f3);
    const __m512 r0 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0),
                                                          _mm512_castps_pd(t2)));
    const __m512 r1 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0),
                                                          _mm512_castps_pd(t2)));
    const __m512 r2 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t1),
                                                          _mm512_castps_pd(t3)));
    const __m512 r3 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t1),
                                                          _mm512_castps_pd(t3)));
    /* lanes in element order: blocks 4k .. 4k + 3 make output vector k */
    const __m512 a = _mm512_shuffle_f32x4(r0, r1, 0x44), b = _mm512_shuffle_f32x4(r2, r3, 0x44);
    const __m512 c = _mm512_shuffle_f32x4(r0, r1, 0xEE), d = _mm512_shuffle_f32x4(r2, r3, 0xEE);
    o[0] = _mm512_shuffle_f32x4(a, b, 0x88);
    o[1] = _mm512_shuffle_f32x4(a, b, 0xDD);
    o[2] = _mm512_shuffle_f32x4(c, d, 0x88);
    o[3] = _mm512_shuffle_f32x4(c, d, 0xDD);
}

/* dropout_blocks with AVX-512 intrinsics, 16 blocks (64 elements) a pass.
   The compiler's vectorisation of the portable loop widens every product
   to 64-bit lanes and ran at ~7 cycles per element; this runs ~1. */
__attribute__((target("avx512f"))) static void dropout_blocks_avx512(
    float *out, const float *in, int64_t size, int64_t b_lo, int64_t b_hi, const struct mask *mk)
{
    int64_t b0 = b_lo;
    for (; b0 + LANES <= b_hi && 4 * (b0 + LANES) <= size; b0 += LANES) {
        __m512 o[4];
        philox_pass_avx512(b0, mk, o);
        const float *x = in + 4 * b0;
        float *y = out + 4 * b0;
        for (int k = 0; k < 4; k++)
            _mm512_storeu_ps(y + 16 * k, _mm512_mul_ps(_mm512_loadu_ps(x + 16 * k), o[k]));
    }
    if (b0 < b_hi)  /* a partial pass: the portable code */
        dropout_blocks(out, in, size, b0, b_hi, mk);
}

/* mask_blocks (below) with AVX-512: a pass's four 16-bit words at once. */
__attribute__((target("avx512f"))) static int64_t mask_blocks_avx512(
    uint16_t *bits, int64_t b_lo, int64_t b_hi, const struct mask *mk)
{
    int64_t b0 = b_lo;
    for (; b0 + LANES <= b_hi; b0 += LANES, bits += 4) {
        __m512 o[4];
        philox_pass_avx512(b0, mk, o);
        for (int k = 0; k < 4; k++)
            bits[k] = (uint16_t)_mm512_cmpneq_ps_mask(o[k], _mm512_setzero_ps());
    }
    return b0;
}
#endif

/* The blocks [b_lo, b_hi) on this CPU's best path. */
static void dropout_span(float *out, const float *in, int64_t size, int64_t b_lo, int64_t b_hi,
                         const struct mask *mk)
{
#ifdef HAVE_AVX512_PHILOX
    if (fastnn_simd_path() == FASTNN_SIMD_AVX512) {
        dropout_blocks_avx512(out, in, size, b_lo, b_hi, mk);
        return;
    }
#endif
    dropout_blocks(out, in, size, b_lo, b_hi, mk);
}

_Static_assert(SPAN_BLOCKS % LANES == 0, "a span is whole passes");

/* The mask (seed, counter) of one dropout call as in `struct mask`. */
static struct mask make_mask(double p, int64_t seed, int64_t counter)
{
    const double t = ceil(p * 16777216.0);  /* exact: p * 2^24 only shifts the exponent */
    return (struct mask){
        .k0 = (uint32_t)seed, .k1 = (uint32_t)((uint64_t)seed >> 32),
        .c2 = (uint32_t)counter, .c3 = (uint32_t)((uint64_t)counter >> 32),
        .threshold = t < 16777216.0 ? (uint32_t)t : 16777216u,
        .scale = (float)(1.0 / (1.0 - p))};
}

/* Spans of SPAN_BLOCKS blocks, in contiguous runs per thread (the masks
   depend on the element, not on who draws them). */
struct dropout_job {
    float *out;
    const float *in;
    int64_t size, blocks;
    const struct mask *mk;
};

static void dropout_share(void *arg, int tid, int n)
{
    const struct dropout_job *j = arg;
    const int64_t spans = j->blocks / SPAN_BLOCKS + (j->blocks % SPAN_BLOCKS != 0);
    for (int64_t s = tid * spans / n; s < (tid + 1) * spans / n; s++) {
        const int64_t b = s * SPAN_BLOCKS;
        dropout_span(j->out, j->in, j->size, b,
                     b + SPAN_BLOCKS < j->blocks ? b + SPAN_BLOCKS : j->blocks, j->mk);
    }
}

static int dropout(float *out, const float *in, int64_t size, double p, int64_t seed,
                   int64_t counter)
{
    if (!out || !in || size < 0 || !(p >= 0.0 && p < 1.0) || seed < 0 || counter < 0)
        return FASTNN_EINVAL;
    const struct mask mk = make_mask(p, seed, counter);
    const int64_t blocks = size / 4 + (size % 4 != 0);
    const int threads = fastnn_team_size();
    if (size <= PAR_MIN || threads < 2) {
        dropout_span(out, in, size, 0, blocks, &mk);
        return FASTNN_OK;
    }
    const struct dropout_job j = {out, in, size, blocks, &mk};
    fastnn_team_run(threads, dropout_share, (void *)&j);
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

/* Bits of blocks [b_lo, b_hi) (b_lo a multiple of 4: whole 16-bit words
   from bits[0]): bit e % 16 of word e / 16 (e counted from 4 b_lo) set iff
   element e is kept; a last partial word's high bits are 0.  Portable, one
   block at a time (the AVX-512 path does the whole passes). */
static void mask_blocks(uint16_t *bits, int64_t b_lo, int64_t b_hi, const struct mask *mk)
{
    for (int64_t b = b_lo; b < b_hi; b++) {
        uint32_t x[4];
        philox_block(x, (uint64_t)b, mk);
        const int64_t e = 4 * (b - b_lo);
        uint16_t *w = bits + e / 16;
        if (e % 16 == 0)
            *w = 0;
        for (int q = 0; q < 4; q++)
            if ((x[q] >> 8) >= mk->threshold)
                *w |= (uint16_t)(1u << (e % 16 + q));
    }
}

float fastnn_dropout_scale(double p)
{
    return make_mask(p, 0, 0).scale;
}

void fastnn_dropout_bits(uint16_t *bits, int64_t bits_ld, int64_t ld, int64_t m, int64_t j0,
                         int64_t j1, double p, int64_t seed, int64_t counter)
{
    if (j1 <= j0 || m < 1)
        return;
    const struct mask mk = make_mask(p, seed, counter);
    for (int64_t i = 0; i < m; i++) {
        uint16_t *w = bits + i * bits_ld + j0 / 16;
        int64_t b = (i * ld + j0) / 4;
        const int64_t b_hi = (i * ld + j1) / 4;
#ifdef HAVE_AVX512_PHILOX
        if (fastnn_simd_path() == FASTNN_SIMD_AVX512) {
            const int64_t b1 = mask_blocks_avx512(w, b, b_hi, &mk);
            w += (b1 - b) / 4;
            b = b1;
        }
#endif
        mask_blocks(w, b, b_hi, &mk);
    }
}
