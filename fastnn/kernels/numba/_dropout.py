"""Dropout of the numba backend: masks from the counter-based Philox4x32-10
generator (spec.PHILOX_*, reference.dropout_mask), recomputed by the backward
(nothing is stored), bit-identical on every backend and for any thread count.

Element e of a call takes word e % 4 of philox(counter = (e // 4 low, e // 4
high, call low, call high), key = (seed low, seed high)).  The arithmetic is
uint64 (numba has no wrapping uint32 multiply-high): a product of two 32-bit
words fits in 64 bits.  Every value is kept uint64 (numba turns int64 op
uint64 into float64).
"""

import numpy as np
from numba import njit, prange

from .. import spec
from ._common import _CHUNK, stack_floats

_M0, _M1 = np.uint64(spec.PHILOX_M[0]), np.uint64(spec.PHILOX_M[1])
_W0, _W1 = np.uint64(spec.PHILOX_W[0]), np.uint64(spec.PHILOX_W[1])
_LO32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_S8 = np.uint64(8)
_ROUNDS = spec.PHILOX_ROUNDS


@njit(cache=True, inline="always")
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of the counter words c0..c3 and key words k0, k1; the
    four output words as uint64 values < 2^32.  Each word lives in the low
    half of a uint64 whose high half may hold garbage: only low halves reach
    a product (masked there: LLVM makes the masked product one vpmuludq) and
    the xors are lanewise, so the words are exact -- csrc/philox.c's trick,
    half the operations of masking every step."""
    for r in range(_ROUNDS):
        if r > 0:
            k0 = k0 + _W0
            k1 = k1 + _W1
        p0 = _M0 * (c0 & _LO32)
        p1 = _M1 * (c2 & _LO32)
        c0, c1, c2, c3 = (p1 >> _S32) ^ c1 ^ k0, p1, (p0 >> _S32) ^ c3 ^ k1, p0
    return c0 & _LO32, c1 & _LO32, c2 & _LO32, c3 & _LO32


@njit(cache=True)
def _threshold(p):
    """spec.dropout_threshold: ceil(p * 2^24) as uint64 (at most 2^24)."""
    return np.uint64(min(np.ceil(p * 16777216.0), 16777216.0))


# Blocks a pass: the factors of a pass's blocks go word by word into a
# stack scratch (four rows of _PASS), a loop that LLVM vectorises (the
# element-order loop it did not: ~5 ns an element, now ~1.3).
_PASS = 256
_pass_factors = stack_floats(4 * _PASS)


@njit(cache=True, error_model="numpy")
def _dropout_span(y, x, b_lo, b_hi, threshold, keep, k0, k1, n0, n1):
    """y[e] = x[e] * mask[e] for the elements of Philox blocks [b_lo, b_hi)."""
    size = x.size
    zero = np.float32(0.0)
    f = _pass_factors()
    for p0 in range(b_lo, b_hi, _PASS):
        nb = min(_PASS, b_hi - p0)
        for i in range(nb):
            bu = np.uint64(p0 + i)
            w0, w1, w2, w3 = _philox(bu, bu >> _S32, n0, n1, k0, k1)
            f[i] = zero if (w0 >> _S8) < threshold else keep
            f[_PASS + i] = zero if (w1 >> _S8) < threshold else keep
            f[2 * _PASS + i] = zero if (w2 >> _S8) < threshold else keep
            f[3 * _PASS + i] = zero if (w3 >> _S8) < threshold else keep
        e0 = 4 * p0
        full = min(nb, (size - e0) // 4)
        for i in range(full):
            for q in range(4):
                y[e0 + 4 * i + q] = x[e0 + 4 * i + q] * f[q * _PASS + i]
        for j in range(4 * full, min(4 * nb, size - e0)):  # a partial last block
            y[e0 + j] = x[e0 + j] * f[j % 4 * _PASS + j // 4]


@njit(cache=True, parallel=True)
def _dropout(y, x, p, seed, counter):
    """y = x * dropout_mask(x.size, p, seed, counter) over flat arrays (y may
    be x).  Elementwise: the spans (a function of the size only) do not
    change the result."""
    nblocks = (x.size + 3) // 4
    threshold = _threshold(p)
    keep = np.float32(1.0 / (1.0 - p))
    su, cu = np.uint64(seed), np.uint64(counter)
    k0, k1 = su & _LO32, su >> _S32
    n0, n1 = cu & _LO32, cu >> _S32
    spans = max(1, x.size // _CHUNK)
    if spans == 1:
        _dropout_span(y, x, 0, nblocks, threshold, keep, k0, k1, n0, n1)
        return
    for s in prange(spans):
        _dropout_span(y, x, s * nblocks // spans, (s + 1) * nblocks // spans, threshold, keep,
                      k0, k1, n0, n1)


def dropout_forward(Y, X, p, seed, counter):
    _dropout(Y.reshape(-1), X.reshape(-1), float(p), int(seed), int(counter))


def dropout_backward(dX, dY, p, seed, counter):
    _dropout(dX.reshape(-1), dY.reshape(-1), float(p), int(seed), int(counter))
