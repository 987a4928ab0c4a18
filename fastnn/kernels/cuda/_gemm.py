"""The cuda backend's matrix multiply (a shared-memory tiled gemm whose store
applies beta, a bias and an activation) and the dense layer built on it."""

import numpy as np
from numba import cuda, float32

from ._device import IDENTITY, act
from ._elementwise import launch_activation_backward
from ._launch import dummy, stages_outputs
from ._norm import SUM, channel_reduce

TILE = 16              # gemm tile edge: a block of TILE x TILE threads, one C element each
_MAX_GRID_Y = 65535


def _make_gemm_kernel(tile):
    """The gemm kernel for TILE x TILE blocks of edge `tile` (a constant
    of the compiled kernel: shared arrays need constant shapes)."""
    pad = tile + 1

    @cuda.jit
    def _gemm_kernel(A, B, C, trans_a, trans_b, alpha, beta, bias, has_bias, code, slope):
        """C = act(alpha op(A) op(B) + beta C + bias): shared-memory tiled matmul.

        Thread (tx, ty) of a tile x tile block owns C[i, j].  Tiles are loaded so
        that consecutive tx read consecutive addresses for every transpose case
        (a transposed operand is stored transposed into shared memory); the +1
        column pads those strided shared stores off a single bank.  Rows are
        covered by a tile-stride loop, uniform over the block, when m exceeds the
        grid's y limit.  No thread returns early: all reach every syncthreads.
        """
        sA = cuda.shared.array((tile, pad), float32)
        sB = cuda.shared.array((tile, pad), float32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        m, n = C.shape
        k = A.shape[0] if trans_a else A.shape[1]
        j, i = cuda.grid(2)
        row0 = i - ty
        col0 = j - tx
        zero = float32(0.0)
        while row0 < m:
            acc = float32(0.0)
            for t in range((k + tile - 1) // tile):
                k0 = t * tile
                if trans_a:    # A is (k, m): read along m
                    kk = k0 + ty
                    r = row0 + tx
                    sA[tx, ty] = A[kk, r] if kk < k and r < m else zero
                else:          # A is (m, k): read along k
                    kk = k0 + tx
                    sA[ty, tx] = A[i, kk] if i < m and kk < k else zero
                if trans_b:    # B is (n, k): read along k
                    kk = k0 + tx
                    c = col0 + ty
                    sB[tx, ty] = B[c, kk] if c < n and kk < k else zero
                else:          # B is (k, n): read along n
                    kk = k0 + ty
                    sB[ty, tx] = B[kk, j] if kk < k and j < n else zero
                cuda.syncthreads()
                for q in range(tile):
                    acc += sA[ty, q] * sB[q, tx]
                cuda.syncthreads()
            if i < m and j < n:
                v = alpha * acc
                if beta != zero:  # beta == 0: C is never read (it may hold NaN)
                    v += beta * C[i, j]
                if has_bias:
                    v += bias[j]
                C[i, j] = act(code, v, slope)
            row0 += cuda.gridDim.y * tile
            i += cuda.gridDim.y * tile

    return _gemm_kernel


_KERNELS = {}


def _gemm_kernel_of(tile):
    if tile not in _KERNELS:
        _KERNELS[tile] = _make_gemm_kernel(tile)
    return _KERNELS[tile]


def launch_gemm(A, B, C, trans_a, trans_b, alpha, beta, bias=None, code=IDENTITY,
                slope=0.0, tile=TILE):
    """C = act(alpha op(A) op(B) + beta C + bias) on blocks of tile x tile
    threads (the recurrent kernels pass a smaller tile under the simulator)."""
    m, n = C.shape
    grid = (-(-n // tile), min(-(-m // tile), _MAX_GRID_Y))
    _gemm_kernel_of(tile)[grid, (tile, tile)](
        A, B, C, bool(trans_a), bool(trans_b), np.float32(alpha), np.float32(beta),
        dummy() if bias is None else bias, bias is not None, code, np.float32(slope))


@stages_outputs
def gemm(A, B, C, trans_a, trans_b, alpha, beta):
    launch_gemm(A, B, C, trans_a, trans_b, alpha, beta)


# Bias and activation are applied in the gemm kernel's store.
@stages_outputs
def dense_forward(Y, X, W, b, activation, negative_slope):
    launch_gemm(X, W, Y, False, False, 1.0, 0.0, bias=b, code=activation, slope=negative_slope)


@stages_outputs
def dense_backward(dX, dW, db, dZ, dY, X, W, Y, activation, negative_slope):
    launch_activation_backward(dZ, dY, Y, activation, negative_slope)
    launch_gemm(X, dZ, dW, True, False, 1.0, 0.0)
    if db is not None:
        channel_reduce(SUM, db, None, dZ)
    if dX is not None:
        launch_gemm(dZ, W, dX, False, True, 1.0, 0.0)
