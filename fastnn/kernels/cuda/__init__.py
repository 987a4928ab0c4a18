"""The cuda backend: every kernel of ``reference`` as numba.cuda kernels.

Arrays live on the device: the trainer allocates with :func:`empty`,
:func:`zeros` and :func:`asarray` and passes numba device arrays, which run
with no host traffic except the one scalar a loss returns.  Host numpy arrays
are accepted too, for tests and convenience: host inputs are copied to the
device; a host output runs on a device copy that is copied back into it, so
in-place semantics (an output that is one of the inputs) are kept.

Compute dtype is float32 (accumulations that feed a returned scalar or a
row/column reduction are float64).  Kernels compile lazily on first call.
Without a GPU, set ``NUMBA_ENABLE_CUDASIM=1`` before numba is imported to run
everything under numba's CUDA simulator (slow: one Python thread per CUDA
thread, so use small shapes there).

Labels given as device arrays cannot be range-checked on the host: a label
outside [0, c) makes ``softmax_xent_forward`` return NaN and is ignored by
``softmax_xent_backward`` (never an out-of-bounds access).
"""

import math
import sys

import numpy as np

from . import _checks as ck
from . import reference as _reference
from .reference import dense_stack_workspace, nadam_mu  # noqa: F401 - shared by every backend

try:
    from numba import cuda, float32, float64
except ImportError as exc:  # numba-cuda or the CUDA Python bindings missing
    raise ImportError(f"cuda backend: numba.cuda cannot be imported: {exc}") from exc
if not cuda.is_available():
    raise ImportError("cuda backend: no usable CUDA GPU or driver; set NUMBA_ENABLE_CUDASIM=1 "
                      "before importing numba to use the simulator")
try:
    from numba.cuda.core.config import ENABLE_CUDASIM as _SIMULATOR
except ImportError:  # numba's built-in cuda target
    from numba.config import ENABLE_CUDASIM as _SIMULATOR

name = "cuda"

_F32 = np.dtype(np.float32)
_TILE = 16          # gemm tile edge: a block of TILE x TILE threads, one C element each
_TILE_PAD = _TILE + 1  # shared tile row length (shapes must be constants, not expressions)
_TPB = 128          # threads per block of 1-D kernels (a power of two: block reduction)
_MAX_BLOCKS = 1024  # 1-D grids are capped; grid-stride loops cover the rest
_MAX_GRID_Y = 65535


def info():
    """What this backend is: backend, threads (per block), simulator, device."""
    device = cuda.get_current_device()
    dev_name = getattr(device, "name", "simulator")
    if isinstance(dev_name, bytes):
        dev_name = dev_name.decode()
    return {"backend": name, "threads": _TPB, "simulator": bool(_SIMULATOR),
            "device": str(dev_name)}


# ---- arrays ------------------------------------------------------------------

def _is_device(x):
    # the simulator's arrays have copy_to_host but no __cuda_array_interface__
    return not isinstance(x, np.ndarray) and hasattr(x, "copy_to_host")


def empty(shape, dtype=np.float32):
    """An uninitialised device array."""
    return cuda.device_array(shape, dtype=dtype)


def zeros(shape, dtype=np.float32):
    """A zero-filled device array."""
    return cuda.to_device(np.zeros(shape, dtype=dtype))


def asarray(x, dtype=np.float32):
    """x as a C-contiguous device array of `dtype` (no copy if it already is)."""
    if _is_device(x):
        if np.dtype(x.dtype) == np.dtype(dtype) and x.is_c_contiguous():
            return x
        x = x.copy_to_host()
    return cuda.to_device(np.ascontiguousarray(x, dtype=dtype))


def to_numpy(x):
    """A host numpy array with the content of x (device or host)."""
    return x.copy_to_host() if _is_device(x) else np.asarray(x)


class _Staging:
    """Device arrays for the host arrays of one kernel call.

    Host outputs run on device copies that ``finish`` copies back.  Outputs
    must be staged before inputs: an input that is the very same host array as
    an output (in place) then maps to the output's device copy.  The
    ``ck.prepare_*`` calls get no ``dev`` converter, so their overlap checks
    see the caller's host arrays rather than fresh device copies (which never
    overlap anything); inputs move to the device here, after validation.
    """

    def __init__(self):
        self._pairs = []

    def out(self, x):
        if x is None or _is_device(x):
            return x
        dev = self.inp(x)
        self._pairs.append((x, dev))
        return dev

    def inp(self, x):
        if x is None or _is_device(x):
            return x
        for host, dev in self._pairs:
            if host is x:
                return dev
        return cuda.to_device(x)

    def finish(self):
        for host, dev in self._pairs:
            dev.copy_to_host(host)


_dummy_cache = {}


def _dummy(dtype=np.float32):
    """A 1-element device array standing in for an unused optional buffer."""
    if dtype not in _dummy_cache:
        _dummy_cache[dtype] = cuda.device_array(1, dtype=dtype)
    return _dummy_cache[dtype]


def _flat(x):
    return x.reshape(int(np.prod(x.shape, dtype=np.int64)))


def _blocks(count):
    return min(max(1, -(-count // _TPB)), _MAX_BLOCKS)


# ---- device functions ----------------------------------------------------------

@cuda.jit(device=True)
def _act(code, x, slope):
    """act(x) for activation `code` (see _checks.ACTIVATIONS), in float32."""
    one = float32(1.0)
    zero = float32(0.0)
    if code == 1:
        return one if x > zero else zero
    if code == 2:
        return one if x > zero else (-one if x < zero else zero)
    if code == 3:
        # Stable both ways: exp of a non-positive number only.
        e = math.exp(-abs(x))
        return one / (one + e) if x >= zero else e / (one + e)
    if code == 4:
        return math.tanh(x)
    if code == 5:
        return x if x > zero else zero
    if code == 6:
        return x if x > zero else x * slope
    if code == 7:
        return (x if x > zero else zero) + math.log1p(math.exp(-abs(x)))
    return x


@cuda.jit(device=True)
def _act_grad(code, y, slope):
    """act'(x) expressed through the output y = act(x)."""
    one = float32(1.0)
    zero = float32(0.0)
    if code == 0:
        return one
    if code == 1 or code == 2:
        return zero
    if code == 3:
        return y * (one - y)
    if code == 4:
        return one - y * y
    if code == 5:
        return one if y > zero else zero
    if code == 6:
        return one if y > zero else slope
    # softplus: y = log(1 + e^x)  =>  sigmoid(x) = 1 - e^-y
    return -math.expm1(-y)


# Pointwise losses by kind; sum_squares reuses the reduction with T = Y.
_BCE, _MSE, _MAE, _SUMSQ = 0, 1, 2, 3


@cuda.jit(device=True)
def _loss_term(kind, y, t):
    """One element's loss term, in float64 (the mean is taken on the host)."""
    z = float64(y)
    if kind == 0:
        return max(z, 0.0) - z * float64(t) + math.log1p(math.exp(-abs(z)))
    if kind == 3:
        return z * z
    d = z - float64(t)
    if kind == 1:
        return d * d
    return abs(d)


@cuda.jit(device=True)
def _loss_grad(kind, y, t, size):
    """d(mean loss)/dy for one element; `size` is the element count (float32)."""
    zero = float32(0.0)
    if kind == 0:
        return (_act(3, y, zero) - t) / size
    d = y - t
    if kind == 1:
        return float32(2.0) * d / size
    return (float32(1.0) if d > zero else (float32(-1.0) if d < zero else zero)) / size


@cuda.jit(device=True)
def _block_sum_into(out, buf, acc):
    """out[0] += sum of `acc` over the block (shared tree, one atomic per block).

    `buf` is a shared float64 array of _TPB; every thread of the block must call.
    """
    t = cuda.threadIdx.x
    buf[t] = acc
    cuda.syncthreads()
    s = _TPB // 2
    while s > 0:
        if t < s:
            buf[t] += buf[t + s]
        cuda.syncthreads()
        s //= 2
    if t == 0:
        cuda.atomic.add(out, 0, buf[0])


# ---- matrix multiply -----------------------------------------------------------

@cuda.jit
def _gemm_kernel(A, B, C, trans_a, trans_b, alpha, beta, bias, has_bias, code, slope):
    """C = act(alpha op(A) op(B) + beta C + bias): shared-memory tiled matmul.

    Thread (tx, ty) of a TILE x TILE block owns C[i, j].  Tiles are loaded so
    that consecutive tx read consecutive addresses for every transpose case
    (a transposed operand is stored transposed into shared memory); the +1
    column pads those strided shared stores off a single bank.  Rows are
    covered by a tile-stride loop, uniform over the block, when m exceeds the
    grid's y limit.  No thread returns early: all reach every syncthreads.
    """
    sA = cuda.shared.array((_TILE, _TILE_PAD), float32)
    sB = cuda.shared.array((_TILE, _TILE_PAD), float32)
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
        for t in range((k + _TILE - 1) // _TILE):
            k0 = t * _TILE
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
            for q in range(_TILE):
                acc += sA[ty, q] * sB[q, tx]
            cuda.syncthreads()
        if i < m and j < n:
            v = alpha * acc
            if beta != zero:  # beta == 0: C is never read (it may hold NaN)
                v += beta * C[i, j]
            if has_bias:
                v += bias[j]
            C[i, j] = _act(code, v, slope)
        row0 += cuda.gridDim.y * _TILE
        i += cuda.gridDim.y * _TILE


def _launch_gemm(A, B, C, trans_a, trans_b, alpha, beta, bias=None, code=0, slope=0.0):
    m, n = C.shape
    grid = (-(-n // _TILE), min(-(-m // _TILE), _MAX_GRID_Y))
    _gemm_kernel[grid, (_TILE, _TILE)](
        A, B, C, bool(trans_a), bool(trans_b), np.float32(alpha), np.float32(beta),
        _dummy() if bias is None else bias, bias is not None, code, np.float32(slope))


def gemm(A, B, C, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """C = alpha * op(A) @ op(B) + beta * C, in place; returns C.

    op(A) is A, or A.T if ``trans_a``; likewise B.  Any m, n, k >= 1.  With
    ``beta == 0`` the old content of C is never read (it may hold NaN).
    """
    A, B, m, n, k, alpha, beta = ck.prepare_gemm(A, B, C, trans_a, trans_b, alpha, beta, _F32)
    st = _Staging()
    C_d = st.out(C)
    _launch_gemm(st.inp(A), st.inp(B), C_d, trans_a, trans_b, alpha, beta)
    st.finish()
    return C


# ---- activations -----------------------------------------------------------------

@cuda.jit
def _activation_forward_kernel(Y, X, code, slope):
    for i in range(cuda.grid(1), Y.shape[0], cuda.gridsize(1)):
        Y[i] = _act(code, X[i], slope)


@cuda.jit
def _activation_backward_kernel(dX, dY, Y, code, slope):
    for i in range(cuda.grid(1), dX.shape[0], cuda.gridsize(1)):
        dX[i] = dY[i] * _act_grad(code, Y[i], slope)


def _launch_activation_backward(dX, dY, Y, code, slope):
    dX, dY, Y = _flat(dX), _flat(dY), _flat(Y)
    _activation_backward_kernel[_blocks(dX.shape[0]), _TPB](dX, dY, Y, code, np.float32(slope))


def activation_forward(Y, X, *, activation, negative_slope=0.01):
    """Y = act(X) elementwise; Y may be X (in place).

    Activations: identity, step (x > 0), sign, sigmoid, tanh, relu,
    leaky_relu (slope ``negative_slope`` for x < 0), softplus.
    """
    X, code, slope = ck.prepare_activation_forward(Y, X, activation, negative_slope, _F32)
    st = _Staging()
    y = _flat(st.out(Y))
    x = _flat(st.inp(X))
    _activation_forward_kernel[_blocks(y.shape[0]), _TPB](y, x, code, np.float32(slope))
    st.finish()
    return Y


def activation_backward(dX, dY, Y, *, activation, negative_slope=0.01):
    """dX = dY * act'(x), computed from the cached output Y = act(x).

    dX may be dY (in place).  step and sign have derivative 0 everywhere it
    exists.  leaky_relu's derivative is read from the sign of Y, which needs
    ``negative_slope > 0``.
    """
    dY, Y, code, slope = ck.prepare_activation_backward(dX, dY, Y, activation, negative_slope,
                                                        _F32)
    st = _Staging()
    dX_d = st.out(dX)
    _launch_activation_backward(dX_d, st.inp(dY), st.inp(Y), code, slope)
    st.finish()
    return dX


# One thread per row: rows are short here (classes), and a row's three passes
# stay in one thread's registers and cache lines.

@cuda.jit
def _softmax_forward_kernel(Y, X):
    n, c = X.shape
    for r in range(cuda.grid(1), n, cuda.gridsize(1)):
        mx = X[r, 0]
        for j in range(1, c):
            mx = max(mx, X[r, j])
        s = 0.0
        for j in range(c):
            e = math.exp(X[r, j] - mx)
            Y[r, j] = e  # Y may be X: element j of X is not read again
            s += e
        for j in range(c):
            Y[r, j] = Y[r, j] / s


@cuda.jit
def _softmax_backward_kernel(dX, dY, Y):
    n, c = Y.shape
    for r in range(cuda.grid(1), n, cuda.gridsize(1)):
        s = 0.0
        for j in range(c):
            s += dY[r, j] * Y[r, j]
        s32 = float32(s)
        for j in range(c):
            dX[r, j] = Y[r, j] * (dY[r, j] - s32)


def softmax_forward(Y, X):
    """Row-wise softmax of X (n, c) into Y; Y may be X.  Stable: max-shifted."""
    X, n, c = ck.prepare_softmax_forward(Y, X, _F32)
    st = _Staging()
    Y_d = st.out(Y)
    _softmax_forward_kernel[_blocks(n), _TPB](Y_d, st.inp(X))
    st.finish()
    return Y


def softmax_backward(dX, dY, Y):
    """dX = Y * (dY - rowsum(dY * Y)) for Y = softmax(X); dX may be dY."""
    dY, Y, n, c = ck.prepare_softmax_backward(dX, dY, Y, _F32)
    st = _Staging()
    dX_d = st.out(dX)
    _softmax_backward_kernel[_blocks(n), _TPB](dX_d, st.inp(dY), st.inp(Y))
    st.finish()
    return dX


# ---- dense layer -----------------------------------------------------------------

def dense_forward(Y, X, W, b, *, activation="identity", negative_slope=0.01):
    """Y = act(X @ W + b): X (n, in), W (in, out), b (out,) or None, Y (n, out).

    Bias and activation are applied in the gemm kernel's store.
    """
    X, W, b, n, fan_in, fan_out, code, slope = ck.prepare_dense_forward(
        Y, X, W, b, activation, negative_slope, _F32)
    st = _Staging()
    Y_d = st.out(Y)
    _launch_gemm(st.inp(X), st.inp(W), Y_d, False, False, 1.0, 0.0, bias=st.inp(b), code=code,
                 slope=slope)
    st.finish()
    return Y


def dense_backward(dX, dW, db, dZ, dY, X, W, Y, *, activation="identity",
                   negative_slope=0.01):
    """Backward of ``dense_forward`` from its cached input X and output Y.

    dZ (n, out) = dY * act'(Y); dZ may be dY (in place).
    dW (in, out) = X.T @ dZ;  db (out,) = dZ.sum(0), skipped if None;
    dX (n, in) = dZ @ W.T, skipped if None (a first layer needs no dX).
    Every output is overwritten, never accumulated.
    """
    dY, X, W, Y, n, fan_in, fan_out, code, slope = ck.prepare_dense_backward(
        dX, dW, db, dZ, dY, X, W, Y, activation, negative_slope, _F32)
    st = _Staging()
    dZ_d, dW_d, db_d, dX_d = st.out(dZ), st.out(dW), st.out(db), st.out(dX)
    _launch_activation_backward(dZ_d, st.inp(dY), st.inp(Y), code, slope)
    _launch_gemm(st.inp(X), dZ_d, dW_d, True, False, 1.0, 0.0)
    if db is not None:
        _channel_reduce(_SUM, db_d, None, dZ_d)
    if dX is not None:
        _launch_gemm(dZ_d, st.inp(W), dX_d, False, True, 1.0, 0.0)
    st.finish()


# ---- losses ----------------------------------------------------------------------

@cuda.jit
def _softmax_xent_forward_kernel(loss, P, Z, labels):
    buf = cuda.shared.array(_TPB, float64)
    n, c = Z.shape
    acc = 0.0
    for r in range(cuda.grid(1), n, cuda.gridsize(1)):
        mx = Z[r, 0]
        for j in range(1, c):
            mx = max(mx, Z[r, j])
        s = 0.0
        for j in range(c):
            e = math.exp(Z[r, j] - mx)
            P[r, j] = e
            s += e
        for j in range(c):
            P[r, j] = P[r, j] / s
        lab = labels[r]
        if 0 <= lab < c:
            acc += math.log(s) + float64(mx) - float64(Z[r, lab])
        else:
            acc += math.nan
    _block_sum_into(loss, buf, acc)


@cuda.jit
def _softmax_xent_backward_kernel(dZ, P, labels):
    n, c = P.shape
    nf = float32(n)
    for i in range(cuda.grid(1), n * c, cuda.gridsize(1)):
        r = i // c
        j = i - r * c
        g = P[r, j]
        if labels[r] == j:
            g -= float32(1.0)
        dZ[r, j] = g / nf


def _device_sum(kernel, count, *args):
    """Run a reduction kernel that adds into a float64 scalar; return it."""
    out = cuda.to_device(np.zeros(1, np.float64))
    kernel[_blocks(count), _TPB](out, *args)
    return float(out.copy_to_host()[0])


def softmax_xent_forward(P, Z, labels):
    """Softmax fused with cross-entropy on logits Z (n, c) and integer labels.

    Writes P = softmax(Z) and returns mean_i(logsumexp(Z_i) - Z[i, labels_i])
    (stable for any logits), as torch.nn.CrossEntropyLoss.
    """
    Z, labels, n, c = ck.prepare_softmax_xent_forward(P, Z, labels, _F32)
    st = _Staging()
    P_d = st.out(P)
    total = _device_sum(_softmax_xent_forward_kernel, n, P_d, st.inp(Z), st.inp(labels))
    st.finish()
    return total / n


def softmax_xent_backward(dZ, P, labels):
    """dZ = (P - onehot(labels)) / n; dZ may be P (in place)."""
    P, labels, n, c = ck.prepare_softmax_xent_backward(dZ, P, labels, _F32)
    st = _Staging()
    dZ_d = st.out(dZ)
    _softmax_xent_backward_kernel[_blocks(n * c), _TPB](dZ_d, st.inp(P), st.inp(labels))
    st.finish()


@cuda.jit
def _loss_sum_kernel(total, Y, T, kind):
    buf = cuda.shared.array(_TPB, float64)
    acc = 0.0
    for i in range(cuda.grid(1), Y.shape[0], cuda.gridsize(1)):
        acc += _loss_term(kind, Y[i], T[i])
    _block_sum_into(total, buf, acc)


@cuda.jit
def _loss_grad_kernel(dY, Y, T, kind):
    size = float32(dY.shape[0])
    for i in range(cuda.grid(1), dY.shape[0], cuda.gridsize(1)):
        dY[i] = _loss_grad(kind, Y[i], T[i], size)


def _loss_forward(kind, Y, T):
    st = _Staging()
    Y, T = _flat(st.inp(Y)), _flat(st.inp(T))
    return _device_sum(_loss_sum_kernel, Y.shape[0], Y, T, kind) / Y.shape[0]


def _loss_backward(kind, dY, Y, T):
    st = _Staging()
    dy = _flat(st.out(dY))
    y, t = _flat(st.inp(Y)), _flat(st.inp(T))
    _loss_grad_kernel[_blocks(dy.shape[0]), _TPB](dy, y, t, kind)
    st.finish()


def bce_forward(Z, T):
    """Sigmoid fused with binary cross-entropy on logits Z, targets T in [0, 1].

    Returns mean(max(z, 0) - z t + log1p(exp(-|z|))), stable for any |z|, as
    torch.nn.BCEWithLogitsLoss.
    """
    Z, T = ck.prepare_pointwise_loss(Z, T, _F32, y_name="Z")
    return _loss_forward(_BCE, Z, T)


def bce_backward(dZ, Z, T):
    """dZ = (sigmoid(Z) - T) / Z.size; dZ may be Z (in place)."""
    Z, T = ck.prepare_pointwise_loss_backward(dZ, Z, T, _F32, y_name="Z")
    _loss_backward(_BCE, dZ, Z, T)


def mse_forward(Y, T):
    """Mean over all elements of (Y - T)^2, as torch.nn.MSELoss."""
    Y, T = ck.prepare_pointwise_loss(Y, T, _F32)
    return _loss_forward(_MSE, Y, T)


def mse_backward(dY, Y, T):
    """dY = 2 (Y - T) / Y.size; dY may be Y (in place)."""
    Y, T = ck.prepare_pointwise_loss_backward(dY, Y, T, _F32)
    _loss_backward(_MSE, dY, Y, T)


def mae_forward(Y, T):
    """Mean over all elements of |Y - T|, as torch.nn.L1Loss."""
    Y, T = ck.prepare_pointwise_loss(Y, T, _F32)
    return _loss_forward(_MAE, Y, T)


def mae_backward(dY, Y, T):
    """dY = sign(Y - T) / Y.size (0 where Y == T); dY may be Y (in place)."""
    Y, T = ck.prepare_pointwise_loss_backward(dY, Y, T, _F32)
    _loss_backward(_MAE, dY, Y, T)


# ---- optimizer updates -------------------------------------------------------------
# One fused kernel per optimizer: each element's parameter and state are read
# and written once.  Step-dependent scalars are computed on the host in float64
# (as torch does in Python floats) and passed as float32, so the arithmetic is
# float32 throughout, as in the reference.  Unused optional buffers are a
# 1-element dummy that is never touched.

def _f(x):
    return np.float32(x)


def _run_update(kernel, params, grads, states, *scalars):
    st = _Staging()
    p = st.out(params)
    bufs = [_dummy() if s is None else st.out(s) for s in states]
    kernel[_blocks(p.shape[0]), _TPB](p, st.inp(grads), *bufs, *scalars)
    st.finish()


@cuda.jit
def _sgd_kernel(params, grads, buf, lr, weight_decay, momentum, one_m_damp, first, nesterov):
    zero = float32(0.0)
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        g = grads[i]
        if weight_decay != zero:
            g = g + weight_decay * params[i]
        if momentum != zero:
            b = g if first else momentum * buf[i] + one_m_damp * g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        params[i] = params[i] - lr * g


def sgd(params, grads, momentum_buf, *, step, lr, momentum=0.0, dampening=0.0,
        nesterov=False, weight_decay=0.0):
    """torch.optim.SGD::

        g = grad + weight_decay * p
        if momentum != 0:
            buf = g                                    (step 1)
            buf = momentum * buf + (1 - dampening) * g (later)
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g

    ``momentum_buf`` may be None when momentum == 0.
    """
    grads, size, step = ck.prepare_sgd(params, grads, momentum_buf, step, momentum, _F32)
    _run_update(_sgd_kernel, params, grads, [momentum_buf], _f(lr), _f(weight_decay),
                _f(momentum), _f(1 - dampening), step == 1, bool(nesterov))


@cuda.jit
def _adam_kernel(params, grads, m, v, decay, weight_decay, beta1, one_m_b1, beta2, one_m_b2,
                 step_size, sqrt_bc2, eps, decoupled):
    zero = float32(0.0)
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        p = params[i]
        g = grads[i]
        if decoupled:
            p = p * decay
        elif weight_decay != zero:
            g = g + weight_decay * p
        mi = beta1 * m[i] + one_m_b1 * g
        vi = beta2 * v[i] + one_m_b2 * g * g
        m[i] = mi
        v[i] = vi
        params[i] = p - step_size * mi / (math.sqrt(vi) / sqrt_bc2 + eps)


def adam(params, grads, m, v, *, step, lr, beta1, beta2, eps, weight_decay=0.0):
    """torch.optim.Adam (amsgrad=False)::

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        p = p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    eps is added to sqrt(v_hat), as torch and llm.c do (scikit-learn folds the
    bias correction into the step size instead).  Computed in torch's form
    sqrt(v) / sqrt(1 - beta2^t) + eps.
    """
    grads, size = ck.prepare_update(params, grads, {"m": m, "v": v}, _F32)
    _adam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled=False)


def adamw(params, grads, m, v, *, step, lr, beta1, beta2, eps, weight_decay=0.0):
    """torch.optim.AdamW: p = p * (1 - lr * weight_decay), then Adam without L2."""
    grads, size = ck.prepare_update(params, grads, {"m": m, "v": v}, _F32)
    _adam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled=True)


def _adam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    t = ck.check_step(step)
    bc1 = 1.0 - beta1 ** t
    bc2 = 1.0 - beta2 ** t
    _run_update(_adam_kernel, params, grads, [m, v], _f(1 - lr * weight_decay),
                _f(weight_decay), _f(beta1), _f(1 - beta1), _f(beta2), _f(1 - beta2),
                _f(lr / bc1), _f(math.sqrt(bc2)), _f(eps), bool(decoupled))


@cuda.jit
def _rmsprop_kernel(params, grads, square_avg, buf, grad_avg, lr, alpha, one_m_alpha, eps,
                    weight_decay, momentum, centered):
    zero = float32(0.0)
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        p = params[i]
        g = grads[i]
        if weight_decay != zero:
            g = g + weight_decay * p
        sq = alpha * square_avg[i] + one_m_alpha * g * g
        square_avg[i] = sq
        if centered:
            ga = alpha * grad_avg[i] + one_m_alpha * g
            grad_avg[i] = ga
            avg = math.sqrt(sq - ga * ga) + eps
        else:
            avg = math.sqrt(sq) + eps
        if momentum > zero:
            b = momentum * buf[i] + g / avg
            buf[i] = b
            params[i] = p - lr * b
        else:
            params[i] = p - lr * g / avg


def rmsprop(params, grads, square_avg, momentum_buf, grad_avg, *, lr, alpha, eps,
            weight_decay=0.0, momentum=0.0, centered=False):
    """torch.optim.RMSprop::

        g = grad + weight_decay * p
        sq = alpha * sq + (1 - alpha) * g^2
        if centered: ga = alpha * ga + (1 - alpha) * g;  avg = sqrt(sq - ga^2) + eps
        else:        avg = sqrt(sq) + eps
        if momentum > 0: buf = momentum * buf + g / avg;  p = p - lr * buf
        else:            p = p - lr * g / avg

    ``momentum_buf`` may be None when momentum == 0, ``grad_avg`` when not
    centered.
    """
    grads, size = ck.prepare_rmsprop(params, grads, square_avg, momentum_buf, grad_avg, momentum,
                                     centered, _F32)
    _run_update(_rmsprop_kernel, params, grads, [square_avg, momentum_buf, grad_avg], _f(lr),
                _f(alpha), _f(1 - alpha), _f(eps), _f(weight_decay), _f(momentum),
                bool(centered))


@cuda.jit
def _adagrad_kernel(params, grads, sum_sq, clr, weight_decay, eps):
    zero = float32(0.0)
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        p = params[i]
        g = grads[i]
        if weight_decay != zero:
            g = g + weight_decay * p
        s = sum_sq[i] + g * g
        sum_sq[i] = s
        params[i] = p - clr * g / (math.sqrt(s) + eps)


def adagrad(params, grads, sum_sq, *, step, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10):
    """torch.optim.Adagrad::

        g = grad + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        sum_sq = sum_sq + g^2
        p = p - clr * g / (sqrt(sum_sq) + eps)

    (initial_accumulator_value is the caller's initial fill of ``sum_sq``.)
    """
    grads, size = ck.prepare_update(params, grads, {"sum_sq": sum_sq}, _F32)
    t = ck.check_step(step)
    clr = lr / (1 + (t - 1) * lr_decay)
    _run_update(_adagrad_kernel, params, grads, [sum_sq], _f(clr), _f(weight_decay), _f(eps))


@cuda.jit
def _nadam_kernel(params, grads, m, v, weight_decay, beta1, one_m_b1, beta2, one_m_b2, bc2,
                  eps, coef_g, coef_m):
    zero = float32(0.0)
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        p = params[i]
        g = grads[i]
        if weight_decay != zero:
            g = g + weight_decay * p
        mi = beta1 * m[i] + one_m_b1 * g
        vi = beta2 * v[i] + one_m_b2 * g * g
        m[i] = mi
        v[i] = vi
        denom = math.sqrt(vi / bc2) + eps
        p = p - coef_g * g / denom
        params[i] = p - coef_m * mi / denom


def nadam(params, grads, m, v, *, step, lr, beta1, beta2, eps, weight_decay=0.0,
          momentum_decay=4e-3, mu_product):
    """torch.optim.NAdam (decoupled_weight_decay=False)::

        g = grad + weight_decay * p
        mu, mu_next = nadam_mu(t), nadam_mu(t + 1)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        denom = sqrt(v / (1 - beta2^t)) + eps
        p = p - lr * (1 - mu) / (1 - mu_product) * g / denom
              - lr * mu_next / (1 - mu_product * mu_next) * m / denom

    ``mu_product`` is mu_1 * ... * mu_t (this step's mu included), which the
    caller keeps, as torch keeps it in the optimizer state.
    """
    grads, size = ck.prepare_update(params, grads, {"m": m, "v": v}, _F32)
    t = ck.check_step(step)
    mu = nadam_mu(t, beta1, momentum_decay)
    mu_next = nadam_mu(t + 1, beta1, momentum_decay)
    _run_update(_nadam_kernel, params, grads, [m, v], _f(weight_decay), _f(beta1),
                _f(1 - beta1), _f(beta2), _f(1 - beta2), _f(1 - beta2 ** t), _f(eps),
                _f(lr * (1 - mu) / (1 - mu_product)),
                _f(lr * mu_next / (1 - mu_product * mu_next)))


@cuda.jit
def _adamax_kernel(params, grads, m, u, weight_decay, beta1, one_m_b1, beta2, eps, step_size):
    zero = float32(0.0)
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        p = params[i]
        g = grads[i]
        if weight_decay != zero:
            g = g + weight_decay * p
        mi = beta1 * m[i] + one_m_b1 * g
        ui = max(beta2 * u[i], abs(g) + eps)
        m[i] = mi
        u[i] = ui
        params[i] = p - step_size * mi / ui


def adamax(params, grads, m, u, *, step, lr, beta1, beta2, eps, weight_decay=0.0):
    """torch.optim.Adamax::

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        u = max(beta2 * u, |g| + eps)
        p = p - lr / (1 - beta1^t) * m / u
    """
    grads, size = ck.prepare_update(params, grads, {"m": m, "u": u}, _F32)
    t = ck.check_step(step)
    _run_update(_adamax_kernel, params, grads, [m, u], _f(weight_decay), _f(beta1),
                _f(1 - beta1), _f(beta2), _f(eps), _f(lr / (1 - beta1 ** t)))


# ---- flat-buffer utilities -----------------------------------------------------------

@cuda.jit
def _scale_kernel(x, s):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        x[i] = x[i] * s


@cuda.jit
def _clip_kernel(x, lo, hi):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        x[i] = min(max(x[i], lo), hi)


def sum_squares(x):
    """sum(x^2) over a flat buffer, accumulated in float64; returns a float."""
    x = _Staging().inp(ck.as_input("x", x, _F32, ndim=1))
    return _device_sum(_loss_sum_kernel, x.shape[0], x, x, _SUMSQ)


def scale(x, s):
    """x *= s in place (gradient clipping by norm)."""
    ck.prepare_flat("x", x, _F32)
    s = ck.check_scalar("s", s)
    st = _Staging()
    xd = st.out(x)
    _scale_kernel[_blocks(xd.shape[0]), _TPB](xd, _f(s))
    st.finish()


@cuda.jit
def _axpy_kernel(y, x, alpha):
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        y[i] = y[i] + alpha * x[i]


def axpy(y, x, alpha):
    """y += alpha * x in place."""
    ck.prepare_axpy(y, x, _F32)
    alpha = ck.check_scalar("alpha", alpha)
    st = _Staging()
    yd = st.out(y)
    _axpy_kernel[_blocks(yd.shape[0]), _TPB](yd, st.inp(x), _f(alpha))
    st.finish()


def dense_stack_epoch(params, grads, states, workspace, X, targets, batch_losses,
                      batch_correct, *, layers, loss, batch_size, optimizer, hyper, step,
                      mu_product=1.0, l2=0.0, loss_scale=1.0, grad_scale=1.0, order=None):
    """One training epoch of a dense stack (see reference): the reference loop
    over this backend's kernels, on device arrays when given them (rows
    picked by `order` are gathered on the host)."""
    return _reference.run_dense_stack_epoch(
        sys.modules[__name__], params, grads, states, workspace, X, targets, batch_losses,
        batch_correct, layers=layers, loss=loss, batch_size=batch_size, optimizer=optimizer,
        hyper=hyper, step=step, mu_product=mu_product, l2=l2, loss_scale=loss_scale,
        grad_scale=grad_scale, order=order)


def clip(x, lo, hi):
    """x = min(max(x, lo), hi) in place (gradient clipping by value)."""
    ck.prepare_flat("x", x, _F32)
    lo, hi = ck.check_scalar("lo", lo), ck.check_scalar("hi", hi)
    if lo > hi:
        raise ValueError(f"lo: must be <= hi, got lo={lo}, hi={hi}")
    st = _Staging()
    xd = st.out(x)
    _clip_kernel[_blocks(xd.shape[0]), _TPB](xd, _f(lo), _f(hi))
    st.finish()


# ---- convolution (channels-last) -------------------------------------------------
# im2col + the tiled gemm above (bias and activation in its store), and for
# the backward dense_backward's pieces on the cols matrix.  col2im is a gather:
# one thread per dX element sums the cols entries of the windows covering it.
# No atomics and no zero-fill pass, every element written once, and the sum
# order is fixed (deterministic); the price is kh*kw index tests per element.

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
        ch = e % c
        p = e // c
        x = p % w
        p //= w
        y = p % h
        img = p // h
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


def conv2d_forward(Y, X, W, b, cols, *, stride=(1, 1), padding=(0, 0), activation="identity",
                   negative_slope=0.01):
    """2-D convolution (cross-correlation) of channels-last images.

    X (N, H, W, C), W (KH, KW, C, OC), b (OC,) or None, Y (N, OH, OW, OC):
    Y = act(im2col(X) @ W.reshape(KH*KW*C, OC) + b), and ``cols`` (N*OH*OW,
    KH*KW*C) is left holding im2col(X) for ``conv2d_backward``.  See reference.
    """
    X, W, b, g, code, slope = ck.prepare_conv2d_forward(Y, X, W, b, cols, stride, padding,
                                                        activation, negative_slope, _F32)
    n, h, w, c, oh, ow, oc, kh, kw, sh, sw, ph, pw = g
    st = _Staging()
    Y_d, cols_d = st.out(Y), st.out(cols)
    _im2col_kernel[_blocks(cols_d.size), _TPB](cols_d, st.inp(X), kh, kw, sh, sw, ph, pw, oh, ow)
    _launch_gemm(cols_d, st.inp(W).reshape(kh * kw * c, oc), Y_d.reshape(n * oh * ow, oc),
                 False, False, 1.0, 0.0, bias=st.inp(b), code=code, slope=slope)
    st.finish()
    return Y


def conv2d_backward(dX, dW, db, dZ, dY, X, W, Y, cols, *, stride=(1, 1), padding=(0, 0),
                    activation="identity", negative_slope=0.01):
    """Backward of ``conv2d_forward`` from its X, output Y and ``cols``.

    dZ = dY * act'(Y) (dZ may be dY); dW = cols.T @ dZ; db = sums of dZ (None:
    skipped); dX = col2im(dZ @ W.T) (None: skipped), which overwrites ``cols``.
    """
    dY, X, W, Y, g, code, slope = ck.prepare_conv2d_backward(
        dX, dW, db, dZ, dY, X, W, Y, cols, stride, padding, activation, negative_slope, _F32)
    n, h, w, c, oh, ow, oc, kh, kw, sh, sw, ph, pw = g
    m, k = n * oh * ow, kh * kw * c
    st = _Staging()
    dZ_d, dW_d, db_d, dX_d, cols_d = st.out(dZ), st.out(dW), st.out(db), st.out(dX), st.out(cols)
    z = dZ_d.reshape(m, oc)
    _launch_activation_backward(dZ_d, st.inp(dY), st.inp(Y), code, slope)
    _launch_gemm(cols_d, z, dW_d.reshape(k, oc), True, False, 1.0, 0.0)
    if db is not None:
        _channel_reduce(_SUM, db_d, None, z)
    if dX is not None:
        _launch_gemm(z, st.inp(W).reshape(k, oc), cols_d, False, True, 1.0, 0.0)
        _col2im_kernel[_blocks(dX_d.size), _TPB](dX_d, cols_d, kh, kw, sh, sw, ph, pw, oh, ow)
    st.finish()


# ---- pooling ---------------------------------------------------------------------
# One thread per output element (forward) or per dX element (avg backward);
# consecutive threads take consecutive channels, so accesses coalesce.

@cuda.jit(device=True)
def _unflatten(e, oh, ow, c):
    """(img, oy, ox, ch) of flat index e into an (n, oh, ow, c) array."""
    ch = e % c
    p = e // c
    ox = p % ow
    p //= ow
    return p // oh, p % oh, ox, ch


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


def maxpool2d_forward(Y, X, argmax, *, pool, stride=None):
    """Max pooling of channels-last images, no padding; ``argmax`` (int32)
    receives the flat index h * W + w of each maximum.  See reference."""
    X, (n, h, w, c, oh, ow, kh, kw, sh, sw) = ck.prepare_pool_forward(Y, X, argmax, pool,
                                                                       stride, _F32)
    st = _Staging()
    Y_d, am_d = st.out(Y), st.out(argmax)
    _maxpool_forward_kernel[_blocks(Y_d.size), _TPB](Y_d, am_d, st.inp(X), kh, kw, sh, sw)
    st.finish()
    return Y


def maxpool2d_backward(dX, dY, argmax, *, pool, stride=None):
    """dX = 0, then each dY added at its argmax.  See reference."""
    dY, argmax, (n, h, w, c, oh, ow, kh, kw, sh, sw) = ck.prepare_pool_backward(
        dX, dY, argmax, pool, stride, _F32)
    st = _Staging()
    dX_d = st.out(dX)
    _zero_kernel[_blocks(dX_d.size), _TPB](_flat(dX_d))
    _maxpool_backward_kernel[_blocks(n * oh * ow * c), _TPB](
        dX_d.reshape(n, h * w, c), st.inp(dY), st.inp(argmax))
    st.finish()


def avgpool2d_forward(Y, X, *, pool, stride=None):
    """Average pooling of channels-last images, no padding.  See reference."""
    X, (n, h, w, c, oh, ow, kh, kw, sh, sw) = ck.prepare_pool_forward(Y, X, None, pool, stride,
                                                                       _F32)
    st = _Staging()
    Y_d = st.out(Y)
    _avgpool_forward_kernel[_blocks(Y_d.size), _TPB](Y_d, st.inp(X), kh, kw, sh, sw)
    st.finish()
    return Y


def avgpool2d_backward(dX, dY, *, pool, stride=None):
    """dX: each dY / (KH*KW) added over its window.  See reference."""
    dY, _, (n, h, w, c, oh, ow, kh, kw, sh, sw) = ck.prepare_pool_backward(dX, dY, None, pool,
                                                                          stride, _F32)
    st = _Staging()
    dX_d = st.out(dX)
    _avgpool_backward_kernel[_blocks(dX_d.size), _TPB](dX_d, st.inp(dY), kh, kw, sh, sw)
    st.finish()


# ---- per-channel reductions and batch normalisation ----------------------------------
# Sums over the rows of a (rows, C) array, in float64, without atomics and in a
# fixed order.  A block covers G = min(C, TPB) channels with TPB // G row lanes
# (so a block reads whole contiguous rows when C is small) and a slice of the
# rows; each block writes its partial sums to part[:, slice, channel], and a
# second kernel, one thread per channel, adds the slices in order.

_SUM, _CENTRED, _GRAD = 0, 1, 2  # what _channel_partials_kernel sums
_MAX_SLICES = 64                 # row slices (grid.y) of the partial sums


@cuda.jit
def _channel_partials_kernel(part, kind, A, B, shift, scale):
    """part[0/1, blockIdx.y, ch]: kind _SUM: sum A; _CENTRED, d = A - shift:
    sum d, sum d^2; _GRAD: sum A, sum A (B - shift) scale."""
    s0 = cuda.shared.array(_TPB, float64)
    s1 = cuda.shared.array(_TPB, float64)
    rows, c = A.shape
    t = cuda.threadIdx.x
    g = min(c, _TPB)
    lanes = _TPB // g
    ch = cuda.blockIdx.x * g + t % g
    lane = t // g
    a0 = 0.0
    a1 = 0.0
    if lane < lanes and ch < c:
        for r in range(cuda.blockIdx.y * lanes + lane, rows, cuda.gridDim.y * lanes):
            v = float64(A[r, ch])
            if kind == _CENTRED:
                v -= float64(shift[ch])
                a1 += v * v
            elif kind == _GRAD:
                a1 += v * (float64(B[r, ch]) - float64(shift[ch])) * float64(scale[ch])
            a0 += v
    s0[t] = a0
    s1[t] = a1
    cuda.syncthreads()
    if t < g and ch < c:  # lane 0 adds the other lanes of its channel, in order
        for q in range(1, lanes):
            a0 += s0[t + q * g]
            a1 += s1[t + q * g]
        part[0, cuda.blockIdx.y, ch] = a0
        part[1, cuda.blockIdx.y, ch] = a1


@cuda.jit(device=True)
def _slices_total(part, q, ch):
    s = 0.0
    for k in range(part.shape[1]):
        s += part[q, k, ch]
    return s


@cuda.jit
def _sum_finish_kernel(out0, out1, part, both):
    """out0 = the first sums, and out1 the second if ``both``."""
    for ch in range(cuda.grid(1), out0.shape[0], cuda.gridsize(1)):
        out0[ch] = _slices_total(part, 0, ch)
        if both:
            out1[ch] = _slices_total(part, 1, ch)


def _partials(kind, A, B=None, shift=None, scale=None):
    """The (2, slices, C) partial sums of ``_channel_partials_kernel``."""
    rows, c = A.shape
    g = min(c, _TPB)
    lanes = _TPB // g
    slices = max(1, min(_MAX_SLICES, rows // (8 * lanes)))
    part = cuda.device_array((2, slices, c), np.float64)
    dummy = _dummy()
    _channel_partials_kernel[(-(-c // g), slices), _TPB](
        part, kind, A, dummy if B is None else B, dummy if shift is None else shift,
        dummy if scale is None else scale)
    return part


def _channel_reduce(kind, out0, out1, A, B=None, shift=None, scale=None):
    """out0[ch] (and out1[ch] unless None) = the float64 sums of ``_partials``."""
    part = _partials(kind, A, B, shift, scale)
    _sum_finish_kernel[_blocks(out0.shape[0]), _TPB](out0, _dummy() if out1 is None else out1,
                                                     part, out1 is not None)


@cuda.jit
def _batchnorm_stats_kernel(mean, invstd, rm, rv, part, shift, rows, momentum, eps):
    """mean, invstd and torch's running update from the shifted sums."""
    for ch in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        d = _slices_total(part, 0, ch) / rows
        var = max(_slices_total(part, 1, ch) / rows - d * d, 0.0)
        mu = float64(shift[ch]) + d
        mean[ch] = mu
        invstd[ch] = 1.0 / math.sqrt(var + eps)
        rm[ch] = (1.0 - momentum) * rm[ch] + momentum * mu
        rv[ch] = (1.0 - momentum) * rv[ch] + momentum * var * rows / (rows - 1)


@cuda.jit
def _batchnorm_apply_kernel(Y, X, center, spread, gamma, beta, eps, spread_is_var):
    """Y = (X - center) * gamma / s + beta per channel, s = sqrt(spread + eps)
    if spread_is_var (inference: running stats) else 1 / spread (invstd)."""
    c = center.shape[0]
    for e in range(cuda.grid(1), Y.shape[0], cuda.gridsize(1)):
        ch = e % c
        if spread_is_var:
            scale = gamma[ch] / math.sqrt(spread[ch] + eps)
        else:
            scale = gamma[ch] * spread[ch]
        Y[e] = (X[e] - center[ch]) * scale + beta[ch]


@cuda.jit
def _batchnorm_backward_kernel(dX, dY, X, gamma, mean, invstd, dgamma, dbeta, rows):
    """dX = gamma invstd (dY - dbeta / M - xhat dgamma / M)."""
    c = mean.shape[0]
    for e in range(cuda.grid(1), dX.shape[0], cuda.gridsize(1)):
        ch = e % c
        xhat = (X[e] - mean[ch]) * invstd[ch]
        dX[e] = gamma[ch] * invstd[ch] * (dY[e] - dbeta[ch] / rows - xhat * dgamma[ch] / rows)


def batchnorm_forward(Y, X, gamma, beta, mean, invstd, running_mean, running_var, *,
                      momentum=0.1, eps=1e-5):
    """Batch normalisation in training mode over the last axis of X (..., C).

    Per-channel mean and biased variance in float64 (shifted by the first
    row, so the one-pass variance does not cancel); ``mean`` and ``invstd``
    are kept for the backward; the running statistics follow torch
    (unbiased variance).  See reference.
    """
    X, gamma, beta, rows, c, momentum, eps = ck.prepare_batchnorm_forward(
        Y, X, gamma, beta, mean, invstd, running_mean, running_var, momentum, eps, _F32)
    st = _Staging()
    Y_d, mean_d, invstd_d = st.out(Y), st.out(mean), st.out(invstd)
    rm_d, rv_d = st.out(running_mean), st.out(running_var)
    x = st.inp(X).reshape(rows, c)
    part = _partials(_CENTRED, x, shift=x[0])
    _batchnorm_stats_kernel[_blocks(c), _TPB](mean_d, invstd_d, rm_d, rv_d, part, x[0],
                                              float(rows), momentum, eps)
    _batchnorm_apply_kernel[_blocks(rows * c), _TPB](_flat(Y_d), _flat(x), mean_d, invstd_d,
                                                     st.inp(gamma), st.inp(beta), _f(eps),
                                                     False)
    st.finish()
    return Y


def batchnorm_inference(Y, X, gamma, beta, running_mean, running_var, *, eps=1e-5):
    """Batch normalisation in evaluation mode: the running statistics."""
    X, gamma, beta, rm, rv, rows, c, eps = ck.prepare_batchnorm_inference(
        Y, X, gamma, beta, running_mean, running_var, eps, _F32)
    st = _Staging()
    Y_d = st.out(Y)
    _batchnorm_apply_kernel[_blocks(rows * c), _TPB](_flat(Y_d), _flat(st.inp(X)), st.inp(rm),
                                                     st.inp(rv), st.inp(gamma), st.inp(beta),
                                                     _f(eps), True)
    st.finish()
    return Y


def batchnorm_backward(dX, dgamma, dbeta, dY, X, gamma, mean, invstd):
    """Backward of ``batchnorm_forward`` (training mode) from X and the saved
    mean and invstd: dbeta = sum(dY), dgamma = sum(dY * xhat) (float64 sums),
    dX = gamma * invstd / M * (M dY - dbeta - xhat * dgamma)."""
    dY, X, gamma, mean, invstd, rows, c = ck.prepare_batchnorm_backward(
        dX, dgamma, dbeta, dY, X, gamma, mean, invstd, _F32)
    st = _Staging()
    dX_d, dgamma_d, dbeta_d = st.out(dX), st.out(dgamma), st.out(dbeta)
    dy, x = st.inp(dY).reshape(rows, c), st.inp(X).reshape(rows, c)
    mean_d, invstd_d = st.inp(mean), st.inp(invstd)
    _channel_reduce(_GRAD, dbeta_d, dgamma_d, dy, x, mean_d, invstd_d)
    _batchnorm_backward_kernel[_blocks(rows * c), _TPB](
        _flat(dX_d), _flat(dy), _flat(x), st.inp(gamma), mean_d, invstd_d, dgamma_d, dbeta_d,
        _f(rows))
    st.finish()
