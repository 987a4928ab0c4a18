"""The cuda backend's convolution and pooling (channels-last images).

Convolution is im2col + the tiled gemm (bias and activation in its store),
and its backward dense_backward's pieces on the cols matrix.  col2im is a
gather: one thread per dX element sums the cols entries of the windows
covering it.  No atomics and no zero-fill pass, every element written once,
and the sum order is fixed (deterministic); the price is kh*kw index tests
per element.  Pooling runs one thread per output element (forward) or per
dX element (avg backward); consecutive threads take consecutive channels,
so accesses coalesce.
"""

from numba import cuda, float32

from ._elementwise import launch_activation_backward
from ._gemm import launch_gemm
from ._launch import TPB, blocks, flat, stages_outputs
from ._norm import SUM, channel_reduce


@cuda.jit(device=True)
def _unflatten(e, oh, ow, c):
    """(img, oy, ox, ch) of flat index e into an (n, oh, ow, c) array."""
    ch = e % c
    p = e // c
    ox = p % ow
    p //= ow
    return p // oh, p % oh, ox, ch


@cuda.jit
def _im2col_kernel(cols, X, kh, kw, sh, sw, ph, pw, oh, ow):
    """cols[(img, oy, ox), (i, j, ch)] = X[img, oy sh + i - ph, ox sw + j - pw, ch]
    (0 in the padding); consecutive threads take consecutive channels."""
    n, h, w, c = X.shape
    k = cols.shape[1]
    for e in range(cuda.grid(1), cols.shape[0] * k, cuda.gridsize(1)):
        r = e // k
        q = e - r * k
        ij = q // c
        ch = q - ij * c
        i = ij // kw
        j = ij - i * kw
        img = r // (oh * ow)
        o = r - img * (oh * ow)
        oy = o // ow
        y = oy * sh + i - ph
        x = (o - oy * ow) * sw + j - pw
        if 0 <= y < h and 0 <= x < w:
            cols[r, q] = X[img, y, x, ch]
        else:
            cols[r, q] = float32(0.0)


@cuda.jit
def _col2im_kernel(dX, cols, kh, kw, sh, sw, ph, pw, oh, ow):
    n, h, w, c = dX.shape
    for e in range(cuda.grid(1), n * h * w * c, cuda.gridsize(1)):
        img, y, x, ch = _unflatten(e, h, w, c)
        acc = float32(0.0)
        for i in range(kh):
            t = y + ph - i  # = oy * sh for the windows whose row i is y
            if t >= 0 and t % sh == 0 and t // sh < oh:
                r0 = (img * oh + t // sh) * ow
                for j in range(kw):
                    u = x + pw - j
                    if u >= 0 and u % sw == 0 and u // sw < ow:
                        acc += cols[r0 + u // sw, (i * kw + j) * c + ch]
        dX[img, y, x, ch] = acc


@stages_outputs
def conv2d_forward(Y, X, W, b, cols, stride, padding, activation, negative_slope):
    kh, kw, c, oc = W.shape
    n, oh, ow = Y.shape[:3]
    _im2col_kernel[blocks(cols.size), TPB](cols, X, kh, kw, *stride, *padding, oh, ow)
    launch_gemm(cols, W.reshape(kh * kw * c, oc), Y.reshape(n * oh * ow, oc), False, False, 1.0,
                0.0, bias=b, code=activation, slope=negative_slope)


# dX, when wanted, goes through cols: cols = dZ @ W.T, then col2im.
@stages_outputs
def conv2d_backward(dX, dW, db, dZ, dY, X, W, Y, cols, stride, padding, activation,
                    negative_slope):
    kh, kw, c, oc = W.shape
    n, oh, ow = Y.shape[:3]
    m, k = n * oh * ow, kh * kw * c
    z = dZ.reshape(m, oc)
    launch_activation_backward(dZ, dY, Y, activation, negative_slope)
    launch_gemm(cols, z, dW.reshape(k, oc), True, False, 1.0, 0.0)
    if db is not None:
        channel_reduce(SUM, db, None, z)
    if dX is not None:
        launch_gemm(z, W.reshape(k, oc), cols, False, True, 1.0, 0.0)
        _col2im_kernel[blocks(dX.size), TPB](dX, cols, kh, kw, *stride, *padding, oh, ow)


# ---- pooling ---------------------------------------------------------------------

@cuda.jit
def _maxpool_forward_kernel(Y, argmax, X, kh, kw, sh, sw):
    """Window max and the flat index y*W + x of its first occurrence in
    row-major window order; NaN wins (as np.argmax), the first NaN."""
    n, oh, ow, c = Y.shape
    w = X.shape[2]
    for e in range(cuda.grid(1), n * oh * ow * c, cuda.gridsize(1)):
        img, oy, ox, ch = _unflatten(e, oh, ow, c)
        y0 = oy * sh
        x0 = ox * sw
        best = X[img, y0, x0, ch]
        arg = y0 * w + x0
        for i in range(kh):
            for j in range(kw):
                v = X[img, y0 + i, x0 + j, ch]
                if v > best or (v != v and best == best):
                    best = v
                    arg = (y0 + i) * w + x0 + j
        Y[img, oy, ox, ch] = best
        argmax[img, oy, ox, ch] = arg


@cuda.jit
def _zero_kernel(x):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        x[i] = float32(0.0)


@cuda.jit
def _maxpool_backward_kernel(dX, dY, argmax):
    """dX (n, h*w, c) += dY at argmax.  Overlapping windows (stride < pool)
    may hit one element from several threads: atomic adds.  A scatter rather
    than a gather, so any argmax in range is honoured, as the reference does."""
    n, oh, ow, c = dY.shape
    for e in range(cuda.grid(1), n * oh * ow * c, cuda.gridsize(1)):
        img, oy, ox, ch = _unflatten(e, oh, ow, c)
        cuda.atomic.add(dX, (img, argmax[img, oy, ox, ch], ch), dY[img, oy, ox, ch])


@cuda.jit
def _avgpool_forward_kernel(Y, X, kh, kw, sh, sw):
    n, oh, ow, c = Y.shape
    for e in range(cuda.grid(1), n * oh * ow * c, cuda.gridsize(1)):
        img, oy, ox, ch = _unflatten(e, oh, ow, c)
        acc = float32(0.0)
        for i in range(kh):
            for j in range(kw):
                acc += X[img, oy * sh + i, ox * sw + j, ch]
        Y[img, oy, ox, ch] = acc / float32(kh * kw)


@cuda.jit
def _avgpool_backward_kernel(dX, dY, kh, kw, sh, sw):
    """A gather: each dX element sums dY over the windows that cover it."""
    n, h, w, c = dX.shape
    oh, ow = dY.shape[1], dY.shape[2]
    for e in range(cuda.grid(1), n * h * w * c, cuda.gridsize(1)):
        img, y, x, ch = _unflatten(e, h, w, c)
        acc = float32(0.0)
        # windows oy with oy sh <= y < oy sh + kh, likewise ox
        for oy in range(max(0, (y - kh + sh) // sh), min(oh - 1, y // sh) + 1):
            for ox in range(max(0, (x - kw + sw) // sw), min(ow - 1, x // sw) + 1):
                acc += dY[img, oy, ox, ch]
        dX[img, y, x, ch] = acc / float32(kh * kw)


@stages_outputs
def maxpool2d_forward(Y, X, argmax, pool, stride):
    _maxpool_forward_kernel[blocks(Y.size), TPB](Y, argmax, X, *pool, *stride)


@stages_outputs
def maxpool2d_backward(dX, dY, argmax, pool, stride):
    n, h, w, c = dX.shape
    _zero_kernel[blocks(dX.size), TPB](flat(dX))
    _maxpool_backward_kernel[blocks(dY.size), TPB](dX.reshape(n, h * w, c), dY, argmax)


@stages_outputs
def avgpool2d_forward(Y, X, pool, stride):
    _avgpool_forward_kernel[blocks(Y.size), TPB](Y, X, *pool, *stride)


@stages_outputs
def avgpool2d_backward(dX, dY, pool, stride):
    _avgpool_backward_kernel[blocks(dX.size), TPB](dX, dY, *pool, *stride)
