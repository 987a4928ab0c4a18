"""The cuda backend's dropout: Philox4x32-10 as a device function (one
thread per block of four elements, grid-stride), the mask of
reference.dropout_mask bit for bit; the backward recomputes it.

The 32-bit words are held in uint64 values below 2^32: a word product is
then exact in 64 bits (the high word is the product >> 32, what CUDA's
__umulhi gives), and the simulator's numpy scalars and the device compute
the same bits.  Every constant is uint64, so that no operation mixes a
signed integer in (numba would promote uint64 op int64 to float64).
"""

import numpy as np
from numba import cuda

from .. import spec
from ._launch import TPB, blocks, flat, stages_outputs

M0, M1 = np.uint64(spec.PHILOX_M[0]), np.uint64(spec.PHILOX_M[1])
W0, W1 = np.uint64(spec.PHILOX_W[0]), np.uint64(spec.PHILOX_W[1])
LO32 = np.uint64(0xFFFFFFFF)
S32 = np.uint64(32)
S8 = np.uint64(8)
ROUNDS = spec.PHILOX_ROUNDS


@cuda.jit(device=True)
def philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of counter words c0..c3 and key words k0, k1 (uint64
    values < 2^32); returns the four output words."""
    for r in range(ROUNDS):
        if r > 0:
            k0 = (k0 + W0) & LO32
            k1 = (k1 + W1) & LO32
        p0 = M0 * c0
        p1 = M1 * c2
        n0 = (p1 >> S32) ^ c1 ^ k0
        n2 = (p0 >> S32) ^ c3 ^ k1
        c0, c1, c2, c3 = n0, p1 & LO32, n2, p0 & LO32
    return c0, c1, c2, c3


@cuda.jit(device=True)
def masked(x, w, threshold, keep):
    """x times the mask of Philox word w."""
    return x * (np.float32(0.0) if (w >> S8) < threshold else keep)


@cuda.jit
def _dropout_kernel(Y, X, threshold, keep, k0, k1, n0, n1):
    size = X.shape[0]
    for b in range(cuda.grid(1), (size + 3) // 4, cuda.gridsize(1)):
        bu = np.uint64(b)
        w0, w1, w2, w3 = philox(bu & LO32, bu >> S32, n0, n1, k0, k1)
        e = 4 * b
        Y[e] = masked(X[e], w0, threshold, keep)
        if e + 1 < size:
            Y[e + 1] = masked(X[e + 1], w1, threshold, keep)
        if e + 2 < size:
            Y[e + 2] = masked(X[e + 2], w2, threshold, keep)
        if e + 3 < size:
            Y[e + 3] = masked(X[e + 3], w3, threshold, keep)


def launch_dropout(Y, X, p, seed, counter):
    """Y = X * dropout_mask(X.size, p, seed, counter), flat device arrays."""
    y, x = flat(Y), flat(X)
    seed, counter = int(seed), int(counter)
    u = np.uint64
    threshold = u(min(spec.dropout_threshold(p), 1 << 24))
    _dropout_kernel[blocks(-(-x.shape[0] // 4)), TPB](
        y, x, threshold, np.float32(spec.dropout_scale(p)), u(seed & 0xFFFFFFFF), u(seed >> 32),
        u(counter & 0xFFFFFFFF), u(counter >> 32))


@stages_outputs
def dropout_forward(Y, X, p, seed, counter):
    launch_dropout(Y, X, p, seed, counter)


@stages_outputs
def dropout_backward(dX, dY, p, seed, counter):
    launch_dropout(dX, dY, p, seed, counter)
