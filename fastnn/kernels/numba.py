"""The Numba backend: every kernel of ``reference`` compiled for the CPU.

Same functions, signatures and in-place rules as ``fastnn.kernels.reference``
(which documents them); float32 arrays only.  Each public function validates
its arguments with the shared ``_checks`` and then calls an ``@njit`` kernel.

Nothing is compiled at import time: kernels are compiled on first call and
cached on disk (``cache=True``, in ``__pycache__``); :func:`warmup` compiles
all of them at once (benchmarks call it so that timings exclude compilation).

Numerics.  ``fastmath`` is limited to ``contract`` (FMA) and ``reassoc`` (so
that LLVM can vectorise reductions): NaN and Inf propagate as in the
reference.  Losses and ``sum_squares`` accumulate in float64.  Elementwise
math mixes float32 arrays with float64 scalars, so it runs in float64 and
rounds once on store.

gemm.  Numba turns off LLVM's SLP vectoriser, so the micro-kernel is written
for the loop vectoriser: it computes an MR x NR tile of C as MR*NR dot
products along k, from panels of op(A) and op(B) packed k-contiguous
(``_pack``), with the accumulators in a stack array that LLVM keeps in
vector registers.  Packing pads edge tiles with zeros, so the micro-kernel is
branch-free; the epilogue (alpha, beta, bias, activation) is applied while the
tile is still in registers.  The packing buffers are allocated once per call.
"""

import math
import sys

import numba  # absolute import: the real numba, not this module
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _checks as ck
from . import reference as _reference

name = "numba"

_F32 = np.float32
_EXACT = {"contract"}              # FMA only: same NaN/Inf semantics
_REDUCE = {"contract", "reassoc"}  # lets LLVM vectorise sums
_NO_BIAS = np.empty(0, dtype=_F32)
_NO_BUF = np.empty(0, dtype=_F32)

# gemm blocking: MR x NR register tile, KC the depth of one packed panel
# (an MR x KC panel of A and an NR x KC panel of B fill half of L1).
_MR, _NR, _KC = 4, 4, 512


def info():
    """What this backend is: a dict with at least 'backend' and 'threads'."""
    return {"backend": name, "threads": numba.get_num_threads(), "simd": "llvm",
            "numba": numba.__version__}


def set_num_threads(n):
    """Threads used by the parallel kernels (clamped to NUMBA_NUM_THREADS)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    numba.set_num_threads(min(int(n), numba.config.NUMBA_NUM_THREADS))


# ---- arrays ------------------------------------------------------------------

def empty(shape, dtype=np.float32):
    """An uninitialised backend array."""
    return np.empty(shape, dtype=dtype)


def zeros(shape, dtype=np.float32):
    """A zero-filled backend array."""
    return np.zeros(shape, dtype=dtype)


def asarray(x, dtype=np.float32):
    """x as a C-contiguous backend array of `dtype` (no copy if it already is)."""
    return np.ascontiguousarray(x, dtype=dtype)


def to_numpy(x):
    """A host numpy array with the content of backend array x."""
    return np.asarray(x)


# ---- activations: the one scalar definition every kernel uses ------------------

@njit(cache=True, inline="always")
def _act(code, x, slope):
    """act(x) for activation `code` (see _checks.ACTIVATIONS); NaN propagates
    except through step, as in the reference."""
    if code == 0:
        return x
    if code == 1:
        return 1.0 if x > 0 else 0.0
    if code == 2:
        return 1.0 if x > 0 else (-1.0 if x < 0 else x)  # sign(+-0) = 0, NaN stays
    if code == 3:
        e = math.exp(-abs(x))  # stable: exp of a non-positive number only
        return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)
    if code == 4:
        return math.tanh(x)
    if code == 5:
        return 0.0 if x < 0 else x
    if code == 6:
        return x if x > 0 else x * slope
    return (x if x > 0 else 0.0) + math.log1p(math.exp(-abs(x)))


@njit(cache=True, inline="always")
def _act_grad(code, y, slope):
    """act'(x) expressed through the output y = act(x)."""
    if code == 0:
        return 1.0
    if code == 1 or code == 2:
        return 0.0
    if code == 3:
        return y * (1.0 - y)
    if code == 4:
        return 1.0 - y * y
    if code == 5:
        return 1.0 if y > 0 else 0.0
    if code == 6:
        return 1.0 if y > 0 else slope
    return -math.expm1(-y)  # softplus: sigmoid(x) = 1 - e^-y


@njit(cache=True, inline="always")
def _act_loop(y, x, lo, hi, code, slope):
    for i in range(lo, hi):
        y[i] = _act(code, x[i], slope)


@njit(cache=True, inline="always")
def _grad_loop(dx, dy, y, lo, hi, code, slope):
    for i in range(lo, hi):
        dx[i] = dy[i] * _act_grad(code, y[i], slope)


@njit(cache=True)
def _act_span(y, x, lo, hi, code, slope):
    """y[lo:hi] = act(x[lo:hi]).  One loop per activation: `code` is a
    constant in each, so the branch leaves the loop and LLVM can vectorise."""
    if code == 0:
        _act_loop(y, x, lo, hi, 0, slope)
    elif code == 1:
        _act_loop(y, x, lo, hi, 1, slope)
    elif code == 2:
        _act_loop(y, x, lo, hi, 2, slope)
    elif code == 3:
        _act_loop(y, x, lo, hi, 3, slope)
    elif code == 4:
        _act_loop(y, x, lo, hi, 4, slope)
    elif code == 5:
        _act_loop(y, x, lo, hi, 5, slope)
    elif code == 6:
        _act_loop(y, x, lo, hi, 6, slope)
    else:
        _act_loop(y, x, lo, hi, 7, slope)


@njit(cache=True)
def _grad_span(dx, dy, y, lo, hi, code, slope):
    """dx[lo:hi] = dy * act'(y) over [lo, hi); one loop per activation."""
    if code == 0:
        _grad_loop(dx, dy, y, lo, hi, 0, slope)
    elif code == 1 or code == 2:
        _grad_loop(dx, dy, y, lo, hi, 1, slope)
    elif code == 3:
        _grad_loop(dx, dy, y, lo, hi, 3, slope)
    elif code == 4:
        _grad_loop(dx, dy, y, lo, hi, 4, slope)
    elif code == 5:
        _grad_loop(dx, dy, y, lo, hi, 5, slope)
    elif code == 6:
        _grad_loop(dx, dy, y, lo, hi, 6, slope)
    else:
        _grad_loop(dx, dy, y, lo, hi, 7, slope)


_CHUNK = 1 << 15  # elements per thread at least: below that, threads cost more than they save


def _chunks(size):
    return max(1, min(numba.get_num_threads(), size // _CHUNK))


@njit(cache=True, parallel=True)
def _activation_forward(y, x, code, slope, nchunks):
    for c in prange(nchunks):
        _act_span(y, x, c * x.size // nchunks, (c + 1) * x.size // nchunks, code, slope)


@njit(cache=True, parallel=True)
def _activation_backward(dx, dy, y, code, slope, nchunks):
    for c in prange(nchunks):
        _grad_span(dx, dy, y, c * y.size // nchunks, (c + 1) * y.size // nchunks, code, slope)


def activation_forward(Y, X, *, activation, negative_slope=0.01):
    """Y = act(X) elementwise; Y may be X (in place).  See reference."""
    X, code, slope = ck.prepare_activation_forward(Y, X, activation, negative_slope, _F32)
    _activation_forward(Y.reshape(-1), X.reshape(-1), code, slope, _chunks(X.size))
    return Y


def activation_backward(dX, dY, Y, *, activation, negative_slope=0.01):
    """dX = dY * act'(x) from the output Y = act(x); dX may be dY.  See reference."""
    dY, Y, code, slope = ck.prepare_activation_backward(dX, dY, Y, activation,
                                                        negative_slope, _F32)
    _activation_backward(dX.reshape(-1), dY.reshape(-1), Y.reshape(-1), code, slope,
                         _chunks(Y.size))
    return dX


@njit(cache=True, fastmath=_EXACT)
def _softmax_forward(y, x):
    n, c = x.shape
    for r in range(n):
        xmax = x[r, 0]
        for j in range(1, c):
            xmax = max(xmax, x[r, j])
        s = 0.0
        for j in range(c):
            e = math.exp(x[r, j] - xmax)
            y[r, j] = e
            s += e
        inv = 1.0 / s
        for j in range(c):
            y[r, j] *= inv


@njit(cache=True, fastmath=_REDUCE)
def _softmax_backward(dx, dy, y):
    n, c = y.shape
    for r in range(n):
        dot = 0.0
        for j in range(c):
            dot += dy[r, j] * y[r, j]
        for j in range(c):
            dx[r, j] = y[r, j] * (dy[r, j] - dot)


def softmax_forward(Y, X):
    """Row-wise softmax of X (n, c) into Y; Y may be X.  Stable: max-shifted."""
    X, n, c = ck.prepare_softmax_forward(Y, X, _F32)
    _softmax_forward(Y, X)
    return Y


def softmax_backward(dX, dY, Y):
    """dX = Y * (dY - rowsum(dY * Y)) for Y = softmax(X); dX may be dY."""
    dY, Y, n, c = ck.prepare_softmax_backward(dX, dY, Y, _F32)
    _softmax_backward(dX, dY, Y)
    return dX


# ---- matrix multiply -------------------------------------------------------

@intrinsic
def _register_tile(typingctx):
    """A float32[MR*NR] scratch array on the stack.  Unlike np.empty it cannot
    alias the panels, so LLVM promotes it to registers."""
    arrty = types.Array(types.float32, 1, "C")

    def codegen(context, builder, sig, args):
        data = cgutils.alloca_once(builder, context.get_value_type(types.float32),
                                   size=_MR * _NR)
        ary = context.make_array(arrty)(context, builder)
        itemsize = context.get_constant(types.intp, 4)
        context.populate_array(ary, data=data,
                               shape=[context.get_constant(types.intp, _MR * _NR)],
                               strides=[itemsize], itemsize=itemsize, meminfo=None)
        return ary._getvalue()

    return arrty(), codegen


@njit(cache=True, fastmath=_REDUCE)
def _micro_tile(C, i0, j0, ap, bp, kc, alpha, beta, first, last, bias, code, slope):
    """C[i0:i0+MR, j0:j0+NR] (clipped to C) from panels ap (MR, >=kc) and
    bp (NR, >=kc).  first: apply beta (beta == 0 never reads C), else
    accumulate; last: add bias (if any) and apply the activation."""
    acc = _register_tile()
    for t in range(_MR * _NR):
        acc[t] = 0.0
    for p in range(kc):  # vectorised along p: MR*NR vector accumulators
        for i in range(_MR):
            a = ap[i, p]
            for j in range(_NR):
                acc[i * _NR + j] += a * bp[j, p]
    m, n = C.shape
    for i in range(_MR):  # constant indices into acc, so it stays in registers
        for j in range(_NR):
            if i0 + i < m and j0 + j < n:
                v = alpha * acc[i * _NR + j]
                if not first:
                    v += C[i0 + i, j0 + j]
                elif beta != 0.0:
                    v += beta * C[i0 + i, j0 + j]
                if last:
                    if bias.size > 0:
                        v += bias[j0 + j]
                    v = _act(code, v, slope)
                C[i0 + i, j0 + j] = v


@njit(cache=True, parallel=True)
def _pack(dst, src, trans, r0, p0, kc):
    """dst[s, t, p] = op(src)[s*T + t + r0, p0 + p] for p < kc, zero-padded
    rows; op(src) is src.T if trans.  dst is (strips, T, KC)."""
    strips, tile = dst.shape[0], dst.shape[1]
    rows = src.shape[1] if trans else src.shape[0]
    for s in prange(strips):
        for t in range(tile):
            r = s * tile + t + r0
            if r >= rows:
                for p in range(kc):
                    dst[s, t, p] = 0.0
            elif trans:
                for p in range(kc):
                    dst[s, t, p] = src[p0 + p, r]
            else:
                for p in range(kc):
                    dst[s, t, p] = src[r, p0 + p]


@njit(cache=True, parallel=True)
def _gemm(C, A, B, trans_a, trans_b, alpha, beta, bias, code, slope):
    """C = act(alpha op(A) op(B) + beta C + bias); see _micro_tile."""
    m, n = C.shape
    k = A.shape[0] if trans_a else A.shape[1]
    kcmax = min(k, _KC)
    mstrips = (m + _MR - 1) // _MR
    nstrips = (n + _NR - 1) // _NR
    ap = np.empty((mstrips, _MR, kcmax), dtype=np.float32)
    bp = np.empty((nstrips, _NR, kcmax), dtype=np.float32)
    for p0 in range(0, k, _KC):
        kc = min(_KC, k - p0)
        # op(B) is (k, n): its columns are the rows of B.T
        _pack(bp, B, not trans_b, 0, p0, kc)
        _pack(ap, A, trans_a, 0, p0, kc)
        first, last = p0 == 0, p0 + kc >= k
        # Threads split the columns of C: each owns its tiles, no races.
        for js in prange(nstrips):
            for is_ in range(mstrips):
                _micro_tile(C, is_ * _MR, js * _NR, ap[is_], bp[js], kc, alpha, beta,
                            first, last, bias, code, slope)


def gemm(A, B, C, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """C = alpha * op(A) @ op(B) + beta * C, in place; returns C.  See reference."""
    A, B, m, n, k, alpha, beta = ck.prepare_gemm(A, B, C, trans_a, trans_b, alpha, beta, _F32)
    _gemm(C, A, B, bool(trans_a), bool(trans_b), alpha, beta, _NO_BIAS, 0, 0.0)
    return C


# ---- dense layer -----------------------------------------------------------

def dense_forward(Y, X, W, b, *, activation="identity", negative_slope=0.01):
    """Y = act(X @ W + b), bias and activation in the gemm epilogue."""
    X, W, b, n, fan_in, fan_out, code, slope = ck.prepare_dense_forward(
        Y, X, W, b, activation, negative_slope, _F32)
    _gemm(Y, X, W, False, False, 1.0, 0.0, _NO_BIAS if b is None else b, code, slope)
    return Y


@njit(cache=True)
def _dense_dz(dz, db, dy, y, code, slope):
    """dz = dy * act'(y); db = column sums of dz (if db.size), in float64."""
    n, c = y.shape
    _grad_span(dz.reshape(-1), dy.reshape(-1), y.reshape(-1), 0, n * c, code, slope)
    if db.size > 0:
        sums = np.zeros(c, dtype=np.float64)
        for r in range(n):
            for j in range(c):
                sums[j] += dz[r, j]
        for j in range(c):
            db[j] = sums[j]


def dense_backward(dX, dW, db, dZ, dY, X, W, Y, *, activation="identity",
                   negative_slope=0.01):
    """Backward of ``dense_forward`` from its cached input X and output Y.

    dZ = dY * act'(Y) (dZ may be dY), dW = X.T @ dZ, db = dZ.sum(0) (skipped
    if None), dX = dZ @ W.T (skipped if None).  See reference.
    """
    dY, X, W, Y, n, fan_in, fan_out, code, slope = ck.prepare_dense_backward(
        dX, dW, db, dZ, dY, X, W, Y, activation, negative_slope, _F32)
    _dense_dz(dZ, _NO_BUF if db is None else db, dY, Y, code, slope)
    _gemm(dW, X, dZ, True, False, 1.0, 0.0, _NO_BIAS, 0, 0.0)
    if dX is not None:
        _gemm(dX, dZ, W, False, True, 1.0, 0.0, _NO_BIAS, 0, 0.0)


# ---- losses ----------------------------------------------------------------

@njit(cache=True)
def _softmax_xent_forward(p, z, labels):
    n, c = z.shape
    total = 0.0
    for r in range(n):
        zmax = z[r, 0]
        for j in range(1, c):
            zmax = max(zmax, z[r, j])
        s = 0.0
        for j in range(c):
            e = math.exp(np.float64(z[r, j]) - zmax)
            p[r, j] = e
            s += e
        inv = 1.0 / s
        for j in range(c):
            p[r, j] *= inv
        total += zmax + math.log(s) - z[r, labels[r]]
    return total / n


@njit(cache=True)
def _softmax_xent_backward(dz, p, labels):
    n, c = p.shape
    inv_n = 1.0 / n
    for r in range(n):
        for j in range(c):
            g = p[r, j] - 1.0 if j == labels[r] else p[r, j]
            dz[r, j] = g * inv_n


def softmax_xent_forward(P, Z, labels):
    """P = softmax(Z); returns mean cross-entropy against integer labels."""
    Z, labels, n, c = ck.prepare_softmax_xent_forward(P, Z, labels, _F32)
    return float(_softmax_xent_forward(P, Z, labels))


def softmax_xent_backward(dZ, P, labels):
    """dZ = (P - onehot(labels)) / n; dZ may be P (in place)."""
    P, labels, n, c = ck.prepare_softmax_xent_backward(dZ, P, labels, _F32)
    _softmax_xent_backward(dZ, P, labels)


@njit(cache=True, fastmath=_REDUCE)
def _pointwise_loss(kind, y, t):
    """Mean over all elements, in float64: 0 bce (y = logits), 1 mse, 2 mae."""
    s = 0.0
    for i in range(y.size):
        a, b = np.float64(y[i]), np.float64(t[i])
        if kind == 0:
            s += (a if a > 0 else 0.0) - a * b + math.log1p(math.exp(-abs(a)))
        elif kind == 1:
            s += (a - b) * (a - b)
        else:
            s += abs(a - b)
    return s / y.size


@njit(cache=True, parallel=True)
def _pointwise_loss_backward(kind, dy, y, t):
    """0 bce: (sigmoid(y) - t)/size; 1 mse: 2 (y - t)/size; 2 mae: sign(y - t)/size."""
    inv = 1.0 / y.size
    for i in prange(y.size):
        if kind == 0:
            g = _act(3, y[i], 0.0) - t[i]
        elif kind == 1:
            g = 2.0 * (y[i] - t[i])
        else:
            d = y[i] - t[i]
            g = 1.0 if d > 0 else (-1.0 if d < 0 else d)
        dy[i] = g * inv


def _loss(kind, Y, T, y_name="Y"):
    Y, T = ck.prepare_pointwise_loss(Y, T, _F32, y_name=y_name)
    return float(_pointwise_loss(kind, Y.reshape(-1), T.reshape(-1)))


def _loss_backward(kind, dY, Y, T, y_name="Y"):
    Y, T = ck.prepare_pointwise_loss_backward(dY, Y, T, _F32, y_name=y_name)
    _pointwise_loss_backward(kind, dY.reshape(-1), Y.reshape(-1), T.reshape(-1))


def bce_forward(Z, T):
    """Sigmoid + binary cross-entropy on logits Z; mean, as BCEWithLogitsLoss."""
    return _loss(0, Z, T, y_name="Z")


def bce_backward(dZ, Z, T):
    """dZ = (sigmoid(Z) - T) / Z.size; dZ may be Z (in place)."""
    _loss_backward(0, dZ, Z, T, y_name="Z")


def mse_forward(Y, T):
    """Mean over all elements of (Y - T)^2, as torch.nn.MSELoss."""
    return _loss(1, Y, T)


def mse_backward(dY, Y, T):
    """dY = 2 (Y - T) / Y.size; dY may be Y (in place)."""
    _loss_backward(1, dY, Y, T)


def mae_forward(Y, T):
    """Mean over all elements of |Y - T|, as torch.nn.L1Loss."""
    return _loss(2, Y, T)


def mae_backward(dY, Y, T):
    """dY = sign(Y - T) / Y.size (0 where Y == T); dY may be Y (in place)."""
    _loss_backward(2, dY, Y, T)


# ---- optimizer updates -----------------------------------------------------
# One fused pass each over flat buffers; the per-step scalars (bias
# corrections, step sizes) are computed once in Python float64.  Equations:
# see the reference docstrings (torch.optim).

@njit(cache=True, parallel=True)
def _sgd(p, g, buf, lr, momentum, dampening, nesterov, weight_decay, first):
    for i in prange(p.size):
        d = g[i] + weight_decay * p[i]
        if momentum != 0.0:
            b = d if first else momentum * buf[i] + (1.0 - dampening) * d
            buf[i] = b
            d = d + momentum * b if nesterov else b
        p[i] -= lr * d


def sgd(params, grads, momentum_buf, *, step, lr, momentum=0.0, dampening=0.0,
        nesterov=False, weight_decay=0.0):
    """torch.optim.SGD; ``momentum_buf`` may be None when momentum == 0."""
    grads, size = ck.prepare_update(params, grads, {"momentum_buf": momentum_buf}, _F32)
    step = ck.check_step(step)
    if momentum != 0.0 and momentum_buf is None:
        raise ValueError("momentum_buf: required when momentum != 0")
    _sgd(params, grads, _NO_BUF if momentum_buf is None else momentum_buf, float(lr),
         float(momentum), float(dampening), bool(nesterov), float(weight_decay), step == 1)


@njit(cache=True, parallel=True)
def _adam(p, g, m, v, decay, l2, beta1, beta2, inv_sqrt_bc2, eps, step_size):
    for i in prange(p.size):
        w = p[i] * decay
        d = g[i] + l2 * w
        mi = beta1 * m[i] + (1.0 - beta1) * d
        vi = beta2 * v[i] + (1.0 - beta2) * d * d
        m[i] = mi
        v[i] = vi
        p[i] = w - step_size * mi / (math.sqrt(vi) * inv_sqrt_bc2 + eps)


def _adam_step(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    grads, size = ck.prepare_update(params, grads, {"m": m, "v": v}, _F32)
    t = ck.check_step(step)
    lr, beta1, beta2, eps, wd = (float(s) for s in (lr, beta1, beta2, eps, weight_decay))
    # torch's form: denom = sqrt(v) / sqrt(bc2) + eps;  p -= (lr / bc1) m / denom
    bc1, bc2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
    decay, l2 = (1.0 - lr * wd, 0.0) if decoupled else (1.0, wd)
    _adam(params, grads, m, v, decay, l2, beta1, beta2, 1.0 / math.sqrt(bc2), eps, lr / bc1)


def adam(params, grads, m, v, *, step, lr, beta1, beta2, eps, weight_decay=0.0):
    """torch.optim.Adam (amsgrad=False), L2 weight decay."""
    _adam_step(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, False)


def adamw(params, grads, m, v, *, step, lr, beta1, beta2, eps, weight_decay=0.0):
    """torch.optim.AdamW: p = p * (1 - lr * weight_decay), then Adam without L2."""
    _adam_step(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, True)


@njit(cache=True, parallel=True)
def _rmsprop(p, g, sq, buf, ga, lr, alpha, eps, weight_decay, momentum, centered):
    for i in prange(p.size):
        d = g[i] + weight_decay * p[i]
        s = alpha * sq[i] + (1.0 - alpha) * d * d
        sq[i] = s
        if centered:
            a = alpha * ga[i] + (1.0 - alpha) * d
            ga[i] = a
            s -= a * a
        step = d / (math.sqrt(s) + eps)
        if momentum > 0.0:
            step += momentum * buf[i]
            buf[i] = step
        p[i] -= lr * step


def rmsprop(params, grads, square_avg, momentum_buf, grad_avg, *, lr, alpha, eps,
            weight_decay=0.0, momentum=0.0, centered=False):
    """torch.optim.RMSprop; ``momentum_buf`` may be None when momentum == 0,
    ``grad_avg`` when not centered."""
    grads, size = ck.prepare_update(
        params, grads, {"square_avg": square_avg, "momentum_buf": momentum_buf,
                        "grad_avg": grad_avg}, _F32)
    if momentum != 0.0 and momentum_buf is None:
        raise ValueError("momentum_buf: required when momentum != 0")
    if centered and grad_avg is None:
        raise ValueError("grad_avg: required when centered")
    _rmsprop(params, grads, square_avg, _NO_BUF if momentum_buf is None else momentum_buf,
             _NO_BUF if grad_avg is None else grad_avg, float(lr), float(alpha), float(eps),
             float(weight_decay), float(momentum), bool(centered))


@njit(cache=True, parallel=True)
def _adagrad(p, g, sum_sq, clr, weight_decay, eps):
    for i in prange(p.size):
        d = g[i] + weight_decay * p[i]
        s = sum_sq[i] + d * d
        sum_sq[i] = s
        p[i] -= clr * d / (math.sqrt(s) + eps)


def adagrad(params, grads, sum_sq, *, step, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10):
    """torch.optim.Adagrad."""
    grads, size = ck.prepare_update(params, grads, {"sum_sq": sum_sq}, _F32)
    t = ck.check_step(step)
    clr = float(lr) / (1.0 + (t - 1) * float(lr_decay))
    _adagrad(params, grads, sum_sq, clr, float(weight_decay), float(eps))


def nadam_mu(step, beta1, momentum_decay):
    """mu_t of NAdam's momentum schedule: beta1 * (1 - 0.5 * 0.96^(t * psi))."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))


@njit(cache=True, parallel=True)
def _nadam(p, g, m, v, weight_decay, beta1, beta2, bc2, eps, c_grad, c_avg):
    for i in prange(p.size):
        d = g[i] + weight_decay * p[i]
        mi = beta1 * m[i] + (1.0 - beta1) * d
        vi = beta2 * v[i] + (1.0 - beta2) * d * d
        m[i] = mi
        v[i] = vi
        p[i] -= (c_grad * d + c_avg * mi) / (math.sqrt(vi / bc2) + eps)


def nadam(params, grads, m, v, *, step, lr, beta1, beta2, eps, weight_decay=0.0,
          momentum_decay=4e-3, mu_product):
    """torch.optim.NAdam (decoupled_weight_decay=False); ``mu_product`` is
    mu_1 * ... * mu_t, kept by the caller."""
    grads, size = ck.prepare_update(params, grads, {"m": m, "v": v}, _F32)
    t = ck.check_step(step)
    lr, beta1, beta2, mu_product = float(lr), float(beta1), float(beta2), float(mu_product)
    mu = nadam_mu(t, beta1, momentum_decay)
    mu_next = nadam_mu(t + 1, beta1, momentum_decay)
    _nadam(params, grads, m, v, float(weight_decay), beta1, beta2, 1.0 - beta2 ** t,
           float(eps), lr * (1.0 - mu) / (1.0 - mu_product),
           lr * mu_next / (1.0 - mu_product * mu_next))


@njit(cache=True, parallel=True)
def _adamax(p, g, m, u, weight_decay, beta1, beta2, eps, step_size):
    for i in prange(p.size):
        d = g[i] + weight_decay * p[i]
        mi = beta1 * m[i] + (1.0 - beta1) * d
        decayed, fresh = beta2 * u[i], abs(d) + eps
        ui = decayed if decayed > fresh or decayed != decayed else fresh  # NaN wins
        m[i] = mi
        u[i] = ui
        p[i] -= step_size * mi / ui


def adamax(params, grads, m, u, *, step, lr, beta1, beta2, eps, weight_decay=0.0):
    """torch.optim.Adamax."""
    grads, size = ck.prepare_update(params, grads, {"m": m, "u": u}, _F32)
    t = ck.check_step(step)
    beta1 = float(beta1)
    _adamax(params, grads, m, u, float(weight_decay), beta1, float(beta2), float(eps),
            float(lr) / (1.0 - beta1 ** t))


# ---- flat-buffer utilities -------------------------------------------------

@njit(cache=True, fastmath=_REDUCE)
def _sum_squares(x):
    s = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        s += v * v
    return s


@njit(cache=True)
def _scale(x, s):
    for i in range(x.size):
        x[i] *= s


@njit(cache=True)
def _clip(x, lo, hi):
    for i in range(x.size):
        v = x[i]
        if v < lo:
            v = lo
        if v > hi:
            v = hi
        x[i] = v


def sum_squares(x):
    """sum(x^2) over a flat buffer, accumulated in float64; returns a float."""
    x = ck.as_input("x", x, _F32, ndim=1)
    return float(_sum_squares(x))


def scale(x, s):
    """x *= s in place (gradient clipping by norm)."""
    ck.prepare_flat("x", x, _F32)
    _scale(x, np.float32(ck.check_scalar("s", s)))


def clip(x, lo, hi):
    """x = min(max(x, lo), hi) in place (gradient clipping by value)."""
    ck.prepare_flat("x", x, _F32)
    lo, hi = ck.check_scalar("lo", lo), ck.check_scalar("hi", hi)
    if lo > hi:
        raise ValueError(f"lo: must be <= hi, got lo={lo}, hi={hi}")
    _clip(x, np.float32(lo), np.float32(hi))


@njit(cache=True, parallel=True)
def _axpy(y, x, alpha):
    for i in prange(y.size):
        y[i] += alpha * x[i]


def axpy(y, x, alpha):
    """y += alpha * x in place."""
    x = ck.prepare_axpy(y, x, _F32)
    _axpy(y, x, np.float32(ck.check_scalar("alpha", alpha)))


def dense_stack_epoch(params, grads, states, workspace, X, targets, batch_losses,
                      batch_correct, *, layers, loss, batch_size, optimizer, hyper, step,
                      mu_product=1.0, l2=0.0, loss_scale=1.0, grad_scale=1.0):
    """One training epoch of a dense stack (see reference).

    # TODO: a fused @njit epoch loop; this runs the reference loop over this
    # backend's kernels, so Python is still on the per-batch path.
    """
    return _reference.run_dense_stack_epoch(
        sys.modules[__name__], params, grads, states, workspace, X, targets, batch_losses,
        batch_correct, layers=layers, loss=loss, batch_size=batch_size, optimizer=optimizer,
        hyper=hyper, step=step, mu_product=mu_product, l2=l2, loss_scale=loss_scale,
        grad_scale=grad_scale)


# ---- compilation -------------------------------------------------------------

def warmup():
    """Compile (or load from the disk cache) every kernel on tiny inputs."""
    x = np.linspace(-1.0, 1.0, 6, dtype=_F32).reshape(2, 3)
    w = np.ones((3, 3), dtype=_F32)
    out = np.empty_like(x)
    labels = np.array([0, 2])
    gemm(x, w, out)
    dense_forward(out, x, w, w[0], activation="relu")
    dense_backward(np.empty_like(x), np.empty_like(w), np.empty(3, _F32), np.empty_like(x),
                   x, x, w, out, activation="relu")
    activation_forward(out, x, activation="tanh")
    activation_backward(out, x, x, activation="tanh")
    softmax_forward(out, x)
    softmax_backward(out, x, x)
    softmax_xent_forward(out, x, labels)
    softmax_xent_backward(out, x, labels)
    for forward, backward in ((bce_forward, bce_backward), (mse_forward, mse_backward),
                              (mae_forward, mae_backward)):
        forward(x, x)
        backward(out, x, x)
    p, g = np.zeros(4, _F32), np.ones(4, _F32)
    s1, s2, s3 = np.zeros(4, _F32), np.zeros(4, _F32), np.zeros(4, _F32)
    sgd(p, g, s1, step=1, lr=0.1, momentum=0.9)
    adam(p, g, s1, s2, step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    rmsprop(p, g, s1, s2, s3, lr=0.1, alpha=0.99, eps=1e-8, momentum=0.9, centered=True)
    adagrad(p, g, s1, step=1, lr=0.1)
    nadam(p, g, s1, s2, step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8,
          mu_product=nadam_mu(1, 0.9, 4e-3))
    adamax(p, g, s1, s2, step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    sum_squares(p)
    scale(p, 0.5)
    clip(p, -1.0, 1.0)
