"""Convolution and pooling of the numba backend (channels-last images).

conv2d is im2col + the gemm of ``_gemm``: the forward's epilogue adds the
bias and applies the activation; the backward is dense_backward's dz / dW /
dX on the cols matrix, and col2im folds dcols back into the image.
"""

import numba  # absolute import: the real numba, not this package
import numpy as np
from numba import njit, prange

from ._gemm import dense_backward, dense_forward, gemm


# ---- convolution -----------------------------------------------------------------

@njit(cache=True, parallel=True)
def _im2col(cols, x, kh, kw, sh, sw, ph, pw, oh, ow):
    """cols[(img, oy, ox), (i, j, ch)] = x[img, oy sh + i - ph, ox sw + j - pw, ch],
    0 in the padding.  Threads own rows of cols: no races."""
    n, h, w, c = x.shape
    for row in prange(n * oh):
        img, oy = row // oh, row % oh
        for ox in range(ow):
            r = row * ow + ox
            for i in range(kh):
                y = oy * sh + i - ph
                for j in range(kw):
                    xx = ox * sw + j - pw
                    q = (i * kw + j) * c
                    if 0 <= y < h and 0 <= xx < w:
                        for ch in range(c):
                            cols[r, q + ch] = x[img, y, xx, ch]
                    else:
                        for ch in range(c):
                            cols[r, q + ch] = 0.0


@njit(cache=True, parallel=True)
def _col2im(dx, cols, kh, kw, sh, sw, ph, pw, oh, ow):
    """dx = the adjoint of _im2col applied to cols.  A gather: each thread owns
    image rows (img, y) of dx and sums the window entries that land on them,
    so no two threads write one element and a batch of 1 still runs parallel."""
    n, h, w, c = dx.shape
    for row in prange(n * h):
        img, y = row // h, row % h
        for xx in range(w):
            for ch in range(c):
                dx[img, y, xx, ch] = 0.0
        for i in range(kh):
            t = y + ph - i  # = oy * sh for the output rows whose window row i is y
            if t < 0 or t % sh != 0 or t // sh >= oh:
                continue
            r0 = (img * oh + t // sh) * ow
            for ox in range(ow):
                for j in range(kw):
                    xx = ox * sw + j - pw
                    if 0 <= xx < w:
                        q = (i * kw + j) * c
                        for ch in range(c):
                            dx[img, y, xx, ch] += cols[r0 + ox, q + ch]


def conv2d_forward(Y, X, W, b, cols, stride, padding, activation, negative_slope):
    n, _, _, c = X.shape
    kh, kw, _, oc = W.shape
    _, oh, ow, _ = Y.shape
    (sh, sw), (ph, pw) = stride, padding
    _im2col(cols, X, kh, kw, sh, sw, ph, pw, oh, ow)
    dense_forward(Y.reshape(n * oh * ow, oc), cols, W.reshape(kh * kw * c, oc), b, activation,
                  negative_slope)


def conv2d_backward(dX, dW, db, dZ, dY, X, W, Y, cols, stride, padding, activation,
                    negative_slope):
    n, _, _, c = X.shape
    kh, kw, _, oc = W.shape
    _, oh, ow, _ = Y.shape
    (sh, sw), (ph, pw) = stride, padding
    m, k = n * oh * ow, kh * kw * c
    z, W2 = dZ.reshape(m, oc), W.reshape(k, oc)
    # dense_backward's dX would overwrite cols while its dW still reads it: gemm after.
    dense_backward(None, dW.reshape(k, oc), db, z, dY.reshape(m, oc), cols, W2, Y.reshape(m, oc),
                   activation, negative_slope)
    if dX is not None:
        gemm(z, W2, cols, False, True, 1.0, 0.0)
        _col2im(dX, cols, kh, kw, sh, sw, ph, pw, oh, ow)


# ---- pooling -----------------------------------------------------------------
# Threads own rows of the output (forward) or of dX (backward); the innermost
# loop runs over the contiguous channel axis, so it vectorises.

@njit(cache=True, parallel=True)
def _maxpool_forward(y, am, x, kh, kw, sh, sw):
    """y = window maxima, am = flat y*W + x index of the first maximum in
    row-major window order; NaN wins (as np.argmax), the first NaN."""
    n, h, w, c = x.shape
    oh, ow = y.shape[1], y.shape[2]
    for row in prange(n * oh):
        img, oy = row // oh, row % oh
        for ox in range(ow):
            for i in range(kh):
                yy = oy * sh + i
                for j in range(kw):
                    xx = ox * sw + j
                    flat = yy * w + xx
                    if i == 0 and j == 0:
                        for ch in range(c):
                            y[img, oy, ox, ch] = x[img, yy, xx, ch]
                            am[img, oy, ox, ch] = flat
                    else:
                        for ch in range(c):
                            v, best = x[img, yy, xx, ch], y[img, oy, ox, ch]
                            if v > best or (v != v and best == best):
                                y[img, oy, ox, ch] = v
                                am[img, oy, ox, ch] = flat


@njit(cache=True, parallel=True)
def _maxpool_backward(dx, dy, am):
    """dx (n, h*w, c) = 0, then dy scattered to am.  Overlapping windows
    of one image may hit one element, so threads own whole images."""
    n, hw, c = dx.shape
    oh, ow = dy.shape[1], dy.shape[2]
    for img in prange(n):
        for p in range(hw):
            for ch in range(c):
                dx[img, p, ch] = 0.0
        for oy in range(oh):
            for ox in range(ow):
                for ch in range(c):
                    dx[img, am[img, oy, ox, ch], ch] += dy[img, oy, ox, ch]


# Average pooling sums in float64 into `acc`, scratch of (spans, c) floats
# (forward) or (spans, w, c) (backward), one row per span of output rows:
# the per-call wrappers allocate it, the compiled epoch once per epoch.  A
# span computes its outputs alone, so the spans do not change the result.

@njit(cache=True, parallel=True)
def _avgpool_forward(y, x, kh, kw, sh, sw, acc_spans):
    n, h, w, c = x.shape
    oh, ow = y.shape[1], y.shape[2]
    spans = acc_spans.shape[0]
    for s in prange(spans):
        acc = acc_spans[s, :c]
        for row in range(s * (n * oh) // spans, (s + 1) * (n * oh) // spans):
            img, oy = row // oh, row % oh
            for ox in range(ow):
                acc[:] = 0.0
                for i in range(kh):
                    for j in range(kw):
                        for ch in range(c):
                            acc[ch] += x[img, oy * sh + i, ox * sw + j, ch]
                for ch in range(c):
                    y[img, oy, ox, ch] = acc[ch] / (kh * kw)


@njit(cache=True, parallel=True)
def _avgpool_backward(dx, dy, kh, kw, sh, sw, acc_spans):
    """A gather over the windows that cover each dx row (img, yy), in float64."""
    n, h, w, c = dx.shape
    oh, ow = dy.shape[1], dy.shape[2]
    spans = acc_spans.shape[0]
    for s in prange(spans):
        acc = acc_spans[s, :w, :c]
        for row in range(s * (n * h) // spans, (s + 1) * (n * h) // spans):
            img, yy = row // h, row % h
            acc[:] = 0.0
            # windows oy with oy sh <= yy < oy sh + kh
            for oy in range(max(0, (yy - kh + sh) // sh), min(oh - 1, yy // sh) + 1):
                for ox in range(ow):
                    for j in range(kw):
                        for ch in range(c):
                            acc[ox * sw + j, ch] += dy[img, oy, ox, ch]
            for xx in range(w):
                for ch in range(c):
                    dx[img, yy, xx, ch] = acc[xx, ch] / (kh * kw)


def _pool_spans(rows):
    """Spans of output rows for the per-call average pooling."""
    return max(1, min(numba.get_num_threads(), rows))


def maxpool2d_forward(Y, X, argmax, pool, stride):
    _maxpool_forward(Y, argmax, X, *pool, *stride)


def maxpool2d_backward(dX, dY, argmax, pool, stride):
    n, h, w, c = dX.shape
    _maxpool_backward(dX.reshape(n, h * w, c), dY, argmax)


def avgpool2d_forward(Y, X, pool, stride):
    n, oh, _, c = Y.shape
    _avgpool_forward(Y, X, *pool, *stride, np.empty((_pool_spans(n * oh), c), np.float64))


def avgpool2d_backward(dX, dY, pool, stride):
    n, h, w, c = dX.shape
    _avgpool_backward(dX, dY, *pool, *stride,
                      np.empty((_pool_spans(n * h), w, c), np.float64))
