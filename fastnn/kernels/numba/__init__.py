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
rounds once on store -- except the optimizer updates, which run in float32
as the c backend's do (see their section).

gemm.  BLIS-style: op(A) and op(B) are packed into slivers of MR rows and NR
columns (zero-padded at the edges, so the micro-kernel is branch-free), and
an MR x NR micro-kernel written as LLVM vector IR (``_micro_kernel``; numba
compiles the same loop in Python to scalar code) accumulates each tile in
registers and stores or adds alpha times it into C; bias and activation
follow on the last panel of k, while the tile is in cache.  Threads split
the tiles of C; small products stay on one thread.  The packing buffers are
allocated once per call of ``gemm``; the fused epoch allocates them once
per epoch.

dense_stack_epoch.  One ``@njit`` loop over the mini-batches, made of the
same kernels as the per-call functions (the same rounding points, so the
trajectory is the per-batch one); its scratch (packing buffers, column sums)
is allocated once per epoch, nothing per batch.
"""

import math

import numba  # absolute import: the real numba, not this module
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from llvmlite import ir
from numba.extending import intrinsic

from .. import _checks as ck
from ..reference import (asarray, dense_stack_workspace, empty,  # noqa: F401 - as the reference
                        to_numpy, zeros)

name = "numba"

_F32 = np.float32
_EXACT = {"contract"}              # FMA only: same NaN/Inf semantics
_REDUCE = {"contract", "reassoc"}  # lets LLVM vectorise sums
_NO_BIAS = np.empty(0, dtype=_F32)
_NO_BUF = np.empty(0, dtype=_F32)


def info():
    """What this backend is: a dict with at least 'backend' and 'threads'."""
    return {"backend": name, "threads": numba.get_num_threads(),
            "simd": f"llvm, {_W}-float vectors", "numba": numba.__version__}


def set_num_threads(n):
    """Threads used by the parallel kernels (clamped to NUMBA_NUM_THREADS)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    numba.set_num_threads(min(int(n), numba.config.NUMBA_NUM_THREADS))


# ---- arrays ------------------------------------------------------------------

# Host numpy arrays, as on the reference backend: empty, zeros, asarray,
# to_numpy are the reference's (imported above).


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

def _vector_floats():
    """float32 lanes of the widest vector register of the CPU numba compiles
    for (NUMBA_CPU_FEATURES if set, else the host's)."""
    features = numba.config.CPU_FEATURES
    if features is None:
        import llvmlite.binding as ll
        features = ll.get_host_cpu_features().flatten()
    if "+avx512f" in features:
        return 16
    return 8 if "+avx" in features else 4


# gemm blocking (BLIS): an MR x NR register tile (NR = two vectors: 16
# accumulators of 16 floats with AVX-512, 12 of 8 with AVX/AVX2), KC the depth
# of a packed panel, MC the rows of C per packed block of op(A).
_W = _vector_floats()
_MR, _NR = (8 if _W == 16 else 6), 2 * _W
_KC, _MC = 256, 192
_NV = _NR // _W


@intrinsic
def _register_tile(typingctx):
    """A float32[MR*NR] scratch array on the stack (the micro-kernel's
    output tile; it cannot alias C, the bias or the panels)."""
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


@intrinsic
def _micro_kernel(typingctx, ap, a_off, bp, b_off, ldb, kc, out, o_off, ldo, alpha, accumulate):
    """out[o_off + i ldo + j] (+)= alpha * sum over p < kc of
    ap[a_off + p MR + i] bp[b_off + p ldb + j], for the MR x NR tile: the
    product of a packed sliver of op(A) (MR floats per p) and a sliver of
    op(B) (NR floats per p, ldb apart: packed, or B itself), added to `out`
    if accumulate, else stored.  `out` is C (full tiles) or a tile buffer.

    Written as LLVM vector IR -- MR*NV vector accumulators, NV vector loads
    of B and MR broadcasts of A per step, one fused multiply-add each --
    because numba compiles with LLVM's SLP vectoriser off and fully unrolls
    small constant loops before the loop vectoriser sees them: the same loop
    in Python compiled to scalar FMAs (5 GFLOP/s against ~115 for this one,
    in L1).  <W x float> is the widest register (_vector_floats); elsewhere
    LLVM splits it, correct but slower."""
    sig = types.void(ap, a_off, bp, b_off, ldb, kc, out, o_off, ldo, alpha, accumulate)

    def codegen(context, builder, sig, args):
        ap_v, a_off_v, bp_v, b_off_v, ldb_v, kc_v, out_v, o_off_v, ldo_v, alpha_v, acc_v = args
        f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
        vec = ir.VectorType(f32, _W)
        vptr = vec.as_pointer()

        def data(k, value, offset):
            return builder.gep(context.make_array(sig.args[k])(context, builder, value).data,
                               [offset])

        def at(ptr, index, lanes):  # pointer to element `index` as a vector pointer
            return builder.bitcast(builder.gep(ptr, [index]), vptr) if lanes else \
                builder.gep(ptr, [index])

        def const(v):
            return ir.Constant(i64, v)

        a_ptr, b_ptr = data(0, ap_v, a_off_v), data(2, bp_v, b_off_v)
        o_ptr = data(6, out_v, o_off_v)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fmuladd.v{_W}f32")
        undef = ir.Constant(vec, ir.Undefined)
        zeros = ir.Constant(ir.VectorType(i32, _W), [0] * _W)

        def splat(x):
            return builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(i32, 0)),
                                          undef, zeros)

        accs = [[cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * _W))
                 for _ in range(_NV)] for _ in range(_MR)]
        with cgutils.for_range(builder, kc_v) as loop:
            b_row = builder.mul(loop.index, ldb_v)
            b = [builder.load(at(b_ptr, builder.add(b_row, const(v * _W)), True), align=4)
                 for v in range(_NV)]
            a_row = builder.mul(loop.index, const(_MR))
            for i in range(_MR):
                a = splat(builder.load(at(a_ptr, builder.add(a_row, const(i)), False)))
                for v in range(_NV):
                    builder.store(builder.call(fma, [a, b[v], builder.load(accs[i][v])]),
                                  accs[i][v])
        scale = splat(context.cast(builder, alpha_v, sig.args[9], types.float32))
        add = builder.icmp_unsigned("!=", context.cast(builder, acc_v, sig.args[10], types.uint8),
                                    ir.Constant(ir.IntType(8), 0))
        for i in range(_MR):
            row = builder.mul(const(i), ldo_v)
            for v in range(_NV):
                dst = at(o_ptr, builder.add(row, const(v * _W)), True)
                value = builder.fmul(scale, builder.load(accs[i][v]))
                with builder.if_else(add) as (then, otherwise):
                    with then:
                        builder.store(builder.fadd(value, builder.load(dst, align=4)), dst,
                                      align=4)
                    with otherwise:
                        builder.store(value, dst, align=4)
        return context.get_dummy_value()

    return sig, codegen


# The packing loops copy through 1-D slices indexed from 0, one loop per
# layout: with a 2-D index and the transpose flag in the inner loop they
# ran at ~0.7 Gfloat/s, which at n = 64 (a conv layer's dW) cost as much
# as the product; like this 2-3.5 Gfloat/s.

@njit(cache=True, error_model="numpy")
def _pack_a(dst, A, trans, i0, mc, p0, kc, q, nq):
    """Part q of nq of the packed block op(A)[i0:i0+mc, p0:p0+kc]:
    dst[(s kc + p) MR + t] = op(A)[i0 + s MR + t, p0 + p] for its slivers s,
    zero past mc; op(A) is A.T if trans.  A transposed is copied row by row
    of A (part q: a range of p), so that the reads stream."""
    msl = (mc + _MR - 1) // _MR
    if trans:  # op(A)'s rows are A's columns: row p of A feeds every sliver
        for p in range(q * kc // nq, (q + 1) * kc // nq):
            src = A[p0 + p, i0:i0 + mc]
            for s in range(msl):
                d = dst[(s * kc + p) * _MR:(s * kc + p + 1) * _MR]
                rows = min(_MR, mc - s * _MR)
                for t in range(rows):
                    d[t] = src[s * _MR + t]
                for t in range(rows, _MR):
                    d[t] = 0.0
        return
    for s in range(q * msl // nq, (q + 1) * msl // nq):  # each row strided into its sliver
        base = s * kc * _MR
        rows = min(_MR, mc - s * _MR)
        for t in range(rows):
            src = A[i0 + s * _MR + t, p0:p0 + kc]
            d = dst[base + t:base + kc * _MR]
            for p in range(kc):
                d[p * _MR] = src[p]
        for t in range(rows, _MR):
            d = dst[base + t:base + kc * _MR]
            for p in range(kc):
                d[p * _MR] = 0.0


@njit(cache=True, error_model="numpy")
def _pack_b(dst, B, trans, n, p0, kc, s):
    """Sliver s of the packed panel op(B)[p0:p0+kc, :]:
    dst[(s kc + p) NR + t] = op(B)[p0 + p, s NR + t], zero past n;
    op(B) is B.T if trans."""
    base = s * kc * _NR
    cols = min(_NR, n - s * _NR)
    j0 = s * _NR
    if trans:  # op(B)'s columns are B's rows: each strided into the sliver
        for t in range(cols):
            src = B[j0 + t, p0:p0 + kc]
            d = dst[base + t:base + kc * _NR]
            for p in range(kc):
                d[p * _NR] = src[p]
    else:
        for p in range(kc):
            src = B[p0 + p, j0:j0 + cols]
            d = dst[base + p * _NR:base + (p + 1) * _NR]
            for t in range(cols):
                d[t] = src[t]
    if cols < _NR:
        for p in range(kc):
            d = dst[base + p * _NR:base + (p + 1) * _NR]
            for t in range(cols, _NR):
                d[t] = 0.0


@njit(cache=True, error_model="numpy")
def _edge_tile(C, i0, j0, tile, accumulate):
    """C[i0:i0+MR, j0:j0+NR] clipped to C (+)= the tile buffer."""
    m, n = C.shape
    nr = min(_NR, n - j0)
    for i in range(min(_MR, m - i0)):
        c = C[i0 + i, j0:j0 + nr]
        t = tile[i * _NR:i * _NR + nr]
        if accumulate:
            for j in range(nr):
                c[j] += t[j]
        else:
            for j in range(nr):
                c[j] = t[j]


@njit(cache=True, error_model="numpy")
def _finish_tile(C, i0, j0, bias, code, slope):
    """Bias (if any) and activation over C[i0:i0+MR, j0:j0+NR] clipped to C."""
    m, n = C.shape
    nr = min(_NR, n - j0)
    for i in range(min(_MR, m - i0)):
        c = C[i0 + i, j0:j0 + nr]
        if bias.size > 0:
            bj = bias[j0:j0 + nr]
            for j in range(nr):
                c[j] += bj[j]
        if code != 0:
            _act_span(c, c, 0, nr, code, slope)


@njit(cache=True)
def _block_rows(m, kc):
    """Rows of op(A) per packed block at depth kc: MC at full depth, more
    when k is short (dW over a mini-batch), so that a block is about MC x KC
    floats and a thin product is not cut into many parallel launches."""
    return min(m, max(_MC, _MC * _KC // max(kc, 1) // _MR * _MR))


@njit(cache=True)
def _pack_floats(m, n, k):
    """Floats of the two packing buffers of an (m x k) (k x n) product:
    one block of op(A) (_block_rows x KC), one KC x n panel of op(B)."""
    kc = min(k, _KC)
    return ((_block_rows(m, kc) + _MR - 1) // _MR * _MR * kc, (n + _NR - 1) // _NR * _NR * kc)


# A large block of op(A) is packed in this many parts, dealt to the threads.
_PACK_PARTS = 8

# Up to this many rows of C, the full-width slivers of a non-transposed B are
# read in place: packing B (all of it, once per call) costs more than the
# few row slivers of A gain from it.
_DIRECT_B_MAX_M = 64


@njit(cache=True, error_model="numpy", inline="always")
def _tile(C, B, ap_buf, bp_buf, tile, js, is_, i0, p0, kc, direct_b, alpha, accumulate, finish,
          bias, code, slope):
    """Tile (is_, js) of the block of rows from i0 over the panel from p0:
    full tiles straight into C, edge tiles through the `tile` buffer."""
    m, n = C.shape
    ldc = C.strides[0] // 4
    j0, r0 = js * _NR, i0 + is_ * _MR
    if direct_b and j0 + _NR <= n:
        b_src, b_off, ldb = B.reshape(-1), p0 * n + j0, n
    else:
        b_src, b_off, ldb = bp_buf, js * kc * _NR, _NR
    if j0 + _NR <= n and r0 + _MR <= m:
        _micro_kernel(ap_buf, is_ * kc * _MR, b_src, b_off, ldb, kc, C, r0 * ldc + j0, ldc,
                      alpha, accumulate)
    else:
        _micro_kernel(ap_buf, is_ * kc * _MR, b_src, b_off, ldb, kc, tile, 0, _NR, alpha, False)
        _edge_tile(C, r0, j0, tile, accumulate)
    if finish:
        _finish_tile(C, r0, j0, bias, code, slope)


# Products of fewer multiply-adds than this run on the calling thread: a
# prange launch costs ~1.5 us, and at the digits' batch 32 (0.1-1M per
# product) the fused epoch on two threads took 0.86 s against 0.44 s on one.
_PAR_MIN_MACS = 1 << 21


@njit(cache=True, parallel=True, error_model="numpy")
def _gemm_ws(C, A, B, trans_a, trans_b, alpha, beta, bias, code, slope, ap_buf, bp_buf):
    """C = act(alpha op(A) op(B) + beta C + bias), C (m, n) with unit column
    stride; ap_buf and bp_buf are scratch of at least _pack_floats(m, n, k)
    floats.  BLIS order: per KC panel of k (op(B) packed on its first
    block of rows), per block of rows (op(A) packed, by the threads when it
    is large), the threads split the block's MR x NR tiles of C (each tile
    is one thread's: no races).  beta != 0 scales C first and every panel
    accumulates; else the first panel stores."""
    m, n = C.shape
    k = A.shape[0] if trans_a else A.shape[1]
    if m == 0 or n == 0:
        return
    if beta != 0.0 and beta != 1.0:
        b32 = np.float32(beta)
        for i in range(m):
            c = C[i]
            for j in range(n):
                c[j] *= b32
    a32 = np.float32(alpha)
    nsl = (n + _NR - 1) // _NR
    direct_b = not trans_b and m <= _DIRECT_B_MAX_M
    epilogue = bias.size > 0 or code != 0
    par = m * n * k >= _PAR_MIN_MACS
    for p0 in range(0, max(k, 1), _KC):  # k == 0: one empty panel (C = beta C + bias)
        kc = min(_KC, k - p0)
        accumulate = p0 > 0 or beta != 0.0
        last = p0 + kc >= k
        mb = _block_rows(m, kc)
        for i0 in range(0, m, mb):
            mc = min(mb, m - i0)
            msl = (mc + _MR - 1) // _MR
            if par and mc * kc >= 1 << 14:
                for q in prange(_PACK_PARTS):
                    _pack_a(ap_buf, A, trans_a, i0, mc, p0, kc, q, _PACK_PARTS)
            else:
                _pack_a(ap_buf, A, trans_a, i0, mc, p0, kc, 0, 1)
            if i0 == 0:
                if par:
                    for js in prange(nsl):
                        if not (direct_b and js * _NR + _NR <= n):
                            _pack_b(bp_buf, B, trans_b, n, p0, kc, js)
                else:
                    for js in range(nsl):
                        if not (direct_b and js * _NR + _NR <= n):
                            _pack_b(bp_buf, B, trans_b, n, p0, kc, js)
            # Threads take contiguous runs of the block's tiles, column sliver
            # by column sliver (each sliver of op(B) stays in cache for its run).
            if par:
                for tix in prange(nsl * msl):
                    _tile(C, B, ap_buf, bp_buf, _register_tile(), tix // msl, tix % msl, i0, p0,
                          kc, direct_b, a32, accumulate, last and epilogue, bias, code, slope)
            else:
                tile = _register_tile()
                for tix in range(nsl * msl):
                    _tile(C, B, ap_buf, bp_buf, tile, tix // msl, tix % msl, i0, p0, kc,
                          direct_b, a32, accumulate, last and epilogue, bias, code, slope)


@njit(cache=True)
def _gemm(C, A, B, trans_a, trans_b, alpha, beta, bias, code, slope):
    """_gemm_ws with its packing buffers allocated for this call."""
    m, n = C.shape
    k = A.shape[0] if trans_a else A.shape[1]
    ap_size, bp_size = _pack_floats(m, n, k)
    _gemm_ws(C, A, B, trans_a, trans_b, alpha, beta, bias, code, slope,
             np.empty(ap_size, dtype=np.float32), np.empty(bp_size, dtype=np.float32))


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
def _dense_dz(dz, db, dy, y, code, slope, sums):
    """dz = dy * act'(y); db = column sums of dz (if db.size), in float64
    (sums: float64 scratch of at least c)."""
    n, c = y.shape
    _grad_span(dz.reshape(-1), dy.reshape(-1), y.reshape(-1), 0, n * c, code, slope)
    if db.size > 0:
        for j in range(c):
            sums[j] = 0.0
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
    _dense_dz(dZ, _NO_BUF if db is None else db, dY, Y, code, slope,
              np.empty(fan_out, dtype=np.float64))
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
# corrections, step sizes) are computed once per step in float64 by the small
# helpers below, which the per-call functions and the fused epoch share.
# Equations: see the reference docstrings (torch.optim).  Powers take a float
# exponent so that they call libm's pow, as Python's float ** int does.
#
# The per-element math is float32, as the c backend's (the scalars are rounded
# to float32 once per step; in float64 the divisions and square roots ran at
# half the lanes).  Each update is a serial "span" loop compiled with
# error_model="numpy" over slices starting at 0: with Python's error model a
# division carries a zero check, and with indices from `lo` a wraparound
# check, and either stops LLVM from vectorising the loop.  Adam over 235k
# parameters, 1 thread: 234 -> 99 us (c: 97 us).  An update runs on the
# calling thread below 2 * _CHUNK elements (a prange launch costs more than it
# saves there), else in spans of at least _CHUNK dealt out by prange.  Each
# update repeats that dispatch: one generic dispatcher taking the span
# function as an argument is not cached on disk by numba (it recompiled in
# every new process).

@njit(cache=True)
def _spans(size):
    """Spans of at least _CHUNK elements an update over `size` elements is
    cut into (prange deals them to the threads in contiguous blocks)."""
    return max(1, size // _CHUNK)


@njit(cache=True, fastmath=_EXACT, error_model="numpy", inline="always")
def _l2_grad(g, p, wd):
    """grad + L2 weight decay; skipped when wd == 0, so a non-finite p does
    not leak into g (as the reference and torch)."""
    return g + wd * p if wd != 0.0 else g


@njit(cache=True, fastmath=_EXACT, error_model="numpy")
def _sgd_span(p, g, buf, lo, hi, k, nesterov, first):
    lr, mom, damp1, wd = k
    p, g, buf = p[lo:hi], g[lo:hi], buf[lo:hi]
    for i in range(p.size):
        d = _l2_grad(g[i], p[i], wd)
        if mom != 0.0:
            b = d if first else mom * buf[i] + damp1 * d
            buf[i] = b
            d = d + mom * b if nesterov else b
        p[i] -= lr * d


@njit(cache=True, parallel=True)
def _sgd(p, g, buf, lr, momentum, dampening, nesterov, weight_decay, first):
    f, n, s = np.float32, p.size, _spans(p.size)
    k = (f(lr), f(momentum), f(1.0 - dampening), f(weight_decay))
    if s == 1:
        _sgd_span(p, g, buf, 0, n, k, nesterov, first)
        return
    for c in prange(s):
        _sgd_span(p, g, buf, c * n // s, (c + 1) * n // s, k, nesterov, first)


def sgd(params, grads, momentum_buf, *, step, lr, momentum=0.0, dampening=0.0,
        nesterov=False, weight_decay=0.0):
    """torch.optim.SGD; ``momentum_buf`` may be None when momentum == 0."""
    grads, size, step = ck.prepare_sgd(params, grads, momentum_buf, step, momentum, _F32)
    _sgd(params, grads, _NO_BUF if momentum_buf is None else momentum_buf, float(lr),
         float(momentum), float(dampening), bool(nesterov), float(weight_decay), step == 1)


@njit(cache=True, fastmath=_EXACT, error_model="numpy")
def _adam_span(p, g, m, v, lo, hi, k):
    decay, l2, b1, c1, b2, c2, inv_sqrt_bc2, eps, step_size = k
    p, g, m, v = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
    for i in range(p.size):
        w = p[i] * decay
        d = _l2_grad(g[i], w, l2)
        mi = b1 * m[i] + c1 * d
        vi = b2 * v[i] + c2 * (d * d)
        m[i] = mi
        v[i] = vi
        # torch: denom = sqrt(v) / sqrt(bc2) + eps;  p -= (lr / bc1) * m / denom
        p[i] = w - step_size * (mi / (math.sqrt(vi) * inv_sqrt_bc2 + eps))


@njit(cache=True, parallel=True)
def _adam(p, g, m, v, decay, l2, beta1, beta2, inv_sqrt_bc2, eps, step_size):
    f, n, s = np.float32, p.size, _spans(p.size)
    k = (f(decay), f(l2), f(beta1), f(1.0 - beta1), f(beta2), f(1.0 - beta2),
         f(inv_sqrt_bc2), f(eps), f(step_size))
    if s == 1:
        _adam_span(p, g, m, v, 0, n, k)
        return
    for c in prange(s):
        _adam_span(p, g, m, v, c * n // s, (c + 1) * n // s, k)


@njit(cache=True)
def _adam_scalars(t, lr, beta1, beta2, weight_decay, decoupled):
    """(decay, l2, 1 / sqrt(bc2), step size) of Adam(W) step t, in torch's
    form: denom = sqrt(v) / sqrt(bc2) + eps;  p -= (lr / bc1) m / denom."""
    bc1, bc2 = 1.0 - beta1 ** np.float64(t), 1.0 - beta2 ** np.float64(t)
    decay, l2 = (1.0 - lr * weight_decay, 0.0) if decoupled else (1.0, weight_decay)
    return decay, l2, 1.0 / math.sqrt(bc2), lr / bc1


def _adam_step(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    grads, size = ck.prepare_update(params, grads, {"m": m, "v": v}, _F32)
    t = ck.check_step(step)
    beta1, beta2 = float(beta1), float(beta2)
    decay, l2, inv_sqrt_bc2, step_size = _adam_scalars(t, float(lr), beta1, beta2,
                                                       float(weight_decay), decoupled)
    _adam(params, grads, m, v, decay, l2, beta1, beta2, inv_sqrt_bc2, float(eps), step_size)


def adam(params, grads, m, v, *, step, lr, beta1, beta2, eps, weight_decay=0.0):
    """torch.optim.Adam (amsgrad=False), L2 weight decay."""
    _adam_step(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, False)


def adamw(params, grads, m, v, *, step, lr, beta1, beta2, eps, weight_decay=0.0):
    """torch.optim.AdamW: p = p * (1 - lr * weight_decay), then Adam without L2."""
    _adam_step(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, True)


@njit(cache=True, fastmath=_EXACT, error_model="numpy")
def _rmsprop_span(p, g, sq, buf, ga, lo, hi, k, centered):
    lr, a, c, eps, wd, mom = k
    p, g, sq, buf, ga = p[lo:hi], g[lo:hi], sq[lo:hi], buf[lo:hi], ga[lo:hi]
    for i in range(p.size):
        d = _l2_grad(g[i], p[i], wd)
        s = a * sq[i] + c * (d * d)
        sq[i] = s
        if centered:
            avg = a * ga[i] + c * d
            ga[i] = avg
            s -= avg * avg
        step = d / (math.sqrt(s) + eps)
        if mom > 0.0:
            step += mom * buf[i]
            buf[i] = step
        p[i] -= lr * step


@njit(cache=True, parallel=True)
def _rmsprop(p, g, sq, buf, ga, lr, alpha, eps, weight_decay, momentum, centered):
    f, n, s = np.float32, p.size, _spans(p.size)
    k = (f(lr), f(alpha), f(1.0 - alpha), f(eps), f(weight_decay), f(momentum))
    if s == 1:
        _rmsprop_span(p, g, sq, buf, ga, 0, n, k, centered)
        return
    for c in prange(s):
        _rmsprop_span(p, g, sq, buf, ga, c * n // s, (c + 1) * n // s, k, centered)


def rmsprop(params, grads, square_avg, momentum_buf, grad_avg, *, lr, alpha, eps,
            weight_decay=0.0, momentum=0.0, centered=False):
    """torch.optim.RMSprop; ``momentum_buf`` may be None when momentum == 0,
    ``grad_avg`` when not centered."""
    grads, size = ck.prepare_rmsprop(params, grads, square_avg, momentum_buf, grad_avg, momentum,
                                     centered, _F32)
    _rmsprop(params, grads, square_avg, _NO_BUF if momentum_buf is None else momentum_buf,
             _NO_BUF if grad_avg is None else grad_avg, float(lr), float(alpha), float(eps),
             float(weight_decay), float(momentum), bool(centered))


@njit(cache=True, fastmath=_EXACT, error_model="numpy")
def _adagrad_span(p, g, sum_sq, lo, hi, k):
    clr, wd, eps = k
    p, g, sum_sq = p[lo:hi], g[lo:hi], sum_sq[lo:hi]
    for i in range(p.size):
        d = _l2_grad(g[i], p[i], wd)
        s = sum_sq[i] + d * d
        sum_sq[i] = s
        p[i] -= clr * (d / (math.sqrt(s) + eps))


@njit(cache=True, parallel=True)
def _adagrad(p, g, sum_sq, clr, weight_decay, eps):
    f, n, s = np.float32, p.size, _spans(p.size)
    k = (f(clr), f(weight_decay), f(eps))
    if s == 1:
        _adagrad_span(p, g, sum_sq, 0, n, k)
        return
    for c in prange(s):
        _adagrad_span(p, g, sum_sq, c * n // s, (c + 1) * n // s, k)


def adagrad(params, grads, sum_sq, *, step, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10):
    """torch.optim.Adagrad."""
    grads, size = ck.prepare_update(params, grads, {"sum_sq": sum_sq}, _F32)
    t = ck.check_step(step)
    _adagrad(params, grads, sum_sq, _adagrad_lr(t, float(lr), float(lr_decay)),
             float(weight_decay), float(eps))


@njit(cache=True)
def _adagrad_lr(t, lr, lr_decay):
    """Adagrad's decayed learning rate at step t."""
    return lr / (1.0 + (t - 1) * lr_decay)


@njit(cache=True)
def _nadam_mu(t, beta1, momentum_decay):
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))


def nadam_mu(step, beta1, momentum_decay):
    """mu_t of NAdam's momentum schedule: beta1 * (1 - 0.5 * 0.96^(t * psi))."""
    return float(_nadam_mu(float(step), float(beta1), float(momentum_decay)))


@njit(cache=True)
def _nadam_scalars(t, lr, beta1, beta2, momentum_decay, mu_product):
    """(bc2, grad coefficient, average coefficient) of NAdam step t, with
    mu_product = mu_1 ... mu_t."""
    mu = _nadam_mu(np.float64(t), beta1, momentum_decay)
    mu_next = _nadam_mu(np.float64(t + 1), beta1, momentum_decay)
    return (1.0 - beta2 ** np.float64(t), lr * (1.0 - mu) / (1.0 - mu_product),
            lr * mu_next / (1.0 - mu_product * mu_next))


@njit(cache=True, fastmath=_EXACT, error_model="numpy")
def _nadam_span(p, g, m, v, lo, hi, k):
    wd, b1, c1, b2, c2, inv_bc2, eps, c_grad, c_avg = k
    p, g, m, v = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
    for i in range(p.size):
        d = _l2_grad(g[i], p[i], wd)
        mi = b1 * m[i] + c1 * d
        vi = b2 * v[i] + c2 * (d * d)
        m[i] = mi
        v[i] = vi
        # one division for torch's two addcdiv_ (as the c backend)
        inv_denom = np.float32(1.0) / (math.sqrt(vi * inv_bc2) + eps)
        w = p[i] - c_grad * (d * inv_denom)
        p[i] = w - c_avg * (mi * inv_denom)


@njit(cache=True, parallel=True)
def _nadam(p, g, m, v, weight_decay, beta1, beta2, bc2, eps, c_grad, c_avg):
    f, n, s = np.float32, p.size, _spans(p.size)
    k = (f(weight_decay), f(beta1), f(1.0 - beta1), f(beta2), f(1.0 - beta2), f(1.0 / bc2),
         f(eps), f(c_grad), f(c_avg))
    if s == 1:
        _nadam_span(p, g, m, v, 0, n, k)
        return
    for c in prange(s):
        _nadam_span(p, g, m, v, c * n // s, (c + 1) * n // s, k)


def nadam(params, grads, m, v, *, step, lr, beta1, beta2, eps, weight_decay=0.0,
          momentum_decay=4e-3, mu_product):
    """torch.optim.NAdam (decoupled_weight_decay=False); ``mu_product`` is
    mu_1 * ... * mu_t, kept by the caller."""
    grads, size = ck.prepare_update(params, grads, {"m": m, "v": v}, _F32)
    t = ck.check_step(step)
    beta1, beta2 = float(beta1), float(beta2)
    bc2, c_grad, c_avg = _nadam_scalars(t, float(lr), beta1, beta2, float(momentum_decay),
                                        float(mu_product))
    _nadam(params, grads, m, v, float(weight_decay), beta1, beta2, bc2, float(eps), c_grad, c_avg)


@njit(cache=True, fastmath=_EXACT, error_model="numpy")
def _adamax_span(p, g, m, u, lo, hi, k):
    wd, b1, c1, b2, eps, step_size = k
    p, g, m, u = p[lo:hi], g[lo:hi], m[lo:hi], u[lo:hi]
    for i in range(p.size):
        d = _l2_grad(g[i], p[i], wd)
        mi = b1 * m[i] + c1 * d
        decayed, fresh = b2 * u[i], abs(d) + eps
        ui = decayed if decayed > fresh or decayed != decayed else fresh  # NaN wins
        m[i] = mi
        u[i] = ui
        p[i] -= step_size * (mi / ui)


@njit(cache=True, parallel=True)
def _adamax(p, g, m, u, weight_decay, beta1, beta2, eps, step_size):
    f, n, s = np.float32, p.size, _spans(p.size)
    k = (f(weight_decay), f(beta1), f(1.0 - beta1), f(beta2), f(eps), f(step_size))
    if s == 1:
        _adamax_span(p, g, m, u, 0, n, k)
        return
    for c in prange(s):
        _adamax_span(p, g, m, u, c * n // s, (c + 1) * n // s, k)


def adamax(params, grads, m, u, *, step, lr, beta1, beta2, eps, weight_decay=0.0):
    """torch.optim.Adamax."""
    grads, size = ck.prepare_update(params, grads, {"m": m, "u": u}, _F32)
    t = ck.check_step(step)
    beta1 = float(beta1)
    _adamax(params, grads, m, u, float(weight_decay), beta1, float(beta2), float(eps),
            _adamax_step_size(t, float(lr), beta1))


@njit(cache=True)
def _adamax_step_size(t, lr, beta1):
    return lr / (1.0 - beta1 ** np.float64(t))


# The fused epoch's optimizer: its index in _OPTIMIZERS and its
# hyperparameters packed in a float64 array in _HYPER order (unused ones 0).
_OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "nadam", "adamax")
_HYPER = ("lr", "momentum", "dampening", "nesterov", "weight_decay", "beta1", "beta2", "eps",
          "alpha", "centered", "lr_decay", "momentum_decay")


@njit(cache=True)
def _optimizer_step(kind, p, g, s0, s1, s2, h, t, mu_product):
    """Step t of optimizer `kind` with state buffers s0, s1, s2 (as the
    kernel takes them; empty where unused); returns NAdam's mu_product."""
    lr, momentum, dampening, nesterov, wd = h[0], h[1], h[2], h[3] != 0.0, h[4]
    beta1, beta2, eps, alpha, centered = h[5], h[6], h[7], h[8], h[9] != 0.0
    if kind == 0:
        _sgd(p, g, s0, lr, momentum, dampening, nesterov, wd, t == 1)
    elif kind == 1 or kind == 2:
        decay, l2, inv_sqrt_bc2, step_size = _adam_scalars(t, lr, beta1, beta2, wd, kind == 2)
        _adam(p, g, s0, s1, decay, l2, beta1, beta2, inv_sqrt_bc2, eps, step_size)
    elif kind == 3:
        _rmsprop(p, g, s0, s1, s2, lr, alpha, eps, wd, momentum, centered)
    elif kind == 4:
        _adagrad(p, g, s0, _adagrad_lr(t, lr, h[10]), wd, eps)
    elif kind == 5:
        mu_product *= _nadam_mu(np.float64(t), beta1, h[11])
        bc2, c_grad, c_avg = _nadam_scalars(t, lr, beta1, beta2, h[11], mu_product)
        _nadam(p, g, s0, s1, wd, beta1, beta2, bc2, eps, c_grad, c_avg)
    else:
        _adamax(p, g, s0, s1, wd, beta1, beta2, eps, _adamax_step_size(t, lr, beta1))
    return mu_product


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


@njit(cache=True, fastmath=_EXACT, error_model="numpy")
def _axpy_span(y, x, lo, hi, alpha):
    y, x = y[lo:hi], x[lo:hi]
    for i in range(y.size):
        y[i] += alpha * x[i]


@njit(cache=True, parallel=True)
def _axpy(y, x, alpha):
    """y += alpha x; on the calling thread below 2 spans (as the updates)."""
    n, s = y.size, _spans(y.size)
    if s == 1:
        _axpy_span(y, x, 0, n, alpha)
        return
    for c in prange(s):
        _axpy_span(y, x, c * n // s, (c + 1) * n // s, alpha)


def axpy(y, x, alpha):
    """y += alpha * x in place."""
    x = ck.prepare_axpy(y, x, _F32)
    _axpy(y, x, np.float32(ck.check_scalar("alpha", alpha)))


# ---- a whole epoch of a dense stack ---------------------------------------------

_EPOCH_LOSSES = {"softmax_xent": -1, "bce": 0, "mse": 1, "mae": 2}  # else _pointwise_loss kinds
_NO_LABELS = np.empty(0, dtype=np.int32)
_NO_TARGETS = np.empty((0, 1), dtype=_F32)
_NO_ORDER = np.empty(0, dtype=np.int64)


@njit(cache=True)
def _count_correct(out, labels, t, loss):
    """reference.count_correct for a batch out (m, c) against labels (m,) or
    flat targets t (m * c)."""
    m, c = out.shape
    if loss == 1 or loss == 2:
        return 0
    correct = 0
    for i in range(m):
        if loss == 0 and c == 1:
            correct += (out[i, 0] > 0) == (t[i] > 0.5)
        elif loss < 0:
            correct += np.argmax(out[i]) == labels[i]
        else:
            correct += np.argmax(out[i]) == np.argmax(t[i * c:(i + 1) * c])
    return correct


@njit(cache=True)
def _dense_stack_epoch(params, grads, s0, s1, s2, ws, X, labels, T, order, batch_losses,
                       batch_correct, layers, slopes, loss, bs, opt, hyper, step, mu_product,
                       l2, loss_scale, grad_scale):
    """reference.run_dense_stack_epoch over this module's kernels, in its
    order and with its workspace layout: Y_0 | ... | Y_last | G_0 | G_1,
    each for bs rows.  layers: int64 rows
    (in, out, w_offset, b_offset, activation code), slopes their negative
    slopes; loss: -1 softmax_xent (labels) or a _pointwise_loss kind (T);
    opt, hyper: see _optimizer_step; order: the samples' rows of X (empty:
    X in its order), each batch gathered into buffers of its own.
    Returns (n_done, step, mu_product)."""
    n_layers = layers.shape[0]
    n, n_in, c = X.shape[0], layers[0, 0], layers[n_layers - 1, 1]
    gather = order.shape[0] > 0
    if gather:
        n = order.shape[0]
    # Everything that is not a view is allocated here, once per epoch.
    y_off = np.empty(n_layers, dtype=np.int64)
    widest, off, ap_size, bp_size = 0, 0, 0, 0
    for l in range(n_layers):
        fi, fo = layers[l, 0], layers[l, 1]
        widest = max(widest, fi, fo)
        y_off[l] = off
        off += bs * fo
        # panels of the layer's three gemms: Y = X W, dW = X^T dZ, dX = dZ W^T
        for gm, gn, gk in ((bs, fo, fi), (fi, fo, bs), (bs, fi, fo)):
            a_floats, b_floats = _pack_floats(gm, gn, gk)
            ap_size, bp_size = max(ap_size, a_floats), max(bp_size, b_floats)
    g_off = (off, off + bs * widest)
    ap = np.empty(ap_size, dtype=np.float32)
    bp = np.empty(bp_size, dtype=np.float32)
    sums = np.empty(widest, dtype=np.float64)
    no_bias = params[:0]
    x_flat, t_flat = X.reshape(-1), T.reshape(-1)
    xg = np.empty((bs if gather else 0) * n_in, dtype=np.float32)
    lg = np.empty(bs if gather else 0, dtype=labels.dtype)
    tg = np.empty((bs if gather and T.shape[0] > 0 else 0) * c, dtype=np.float32)
    n_batches = (n + bs - 1) // bs
    for bi in range(n_batches):
        lo = bi * bs
        m = min(bs, n - lo)
        if gather:
            for i in range(m):
                row = order[lo + i]
                xg[i * n_in:(i + 1) * n_in] = x_flat[row * n_in:(row + 1) * n_in]
                if labels.shape[0] > 0:
                    lg[i] = labels[row]
                else:
                    tg[i * c:(i + 1) * c] = t_flat[row * c:(row + 1) * c]
            xb = xg[:m * n_in].reshape((m, n_in))
            lb, tb = lg[:m if labels.shape[0] > 0 else 0], tg[:m * c]
        else:
            xb = x_flat[lo * n_in:(lo + m) * n_in].reshape((m, n_in))
            lb, tb = labels[lo:lo + m], t_flat[lo * c:(lo + m) * c]  # the unused one is empty

        inp = xb
        for l in range(n_layers):
            fi, fo, w, b = layers[l, 0], layers[l, 1], layers[l, 2], layers[l, 3]
            y = ws[y_off[l]:y_off[l] + m * fo].reshape((m, fo))
            _gemm_ws(y, inp, params[w:w + fi * fo].reshape((fi, fo)), False, False, 1.0,
                         0.0, params[b:b + fo] if b >= 0 else no_bias, layers[l, 4], slopes[l],
                         ap, bp)
            inp = y
        out = inp
        dout = ws[g_off[0]:g_off[0] + m * c].reshape((m, c))

        if loss < 0:
            value = _softmax_xent_forward(dout, out, lb)
        else:
            value = _pointwise_loss(loss, out.reshape(-1), tb)
        value *= loss_scale
        if l2 != 0.0:
            sq = 0.0
            for l in range(n_layers):
                w = layers[l, 2]
                sq += _sum_squares(params[w:w + layers[l, 0] * layers[l, 1]])
            value += 0.5 * l2 / m * sq
        batch_losses[bi] = value
        batch_correct[bi] = _count_correct(out, lb, tb, loss)
        if not math.isfinite(value):
            return bi + 1, step, mu_product
        if loss < 0:
            _softmax_xent_backward(dout, dout, lb)
        else:
            _pointwise_loss_backward(loss, dout.reshape(-1), out.reshape(-1), tb)
        if grad_scale != 1.0:
            _scale(dout.reshape(-1), np.float32(grad_scale))

        # backward: dZ in place over dY, dX into the other gradient buffer
        cur = 0
        for l in range(n_layers - 1, -1, -1):
            fi, fo, w, b = layers[l, 0], layers[l, 1], layers[l, 2], layers[l, 3]
            dy = ws[g_off[cur]:g_off[cur] + m * fo].reshape((m, fo))
            x_l = ws[y_off[l - 1]:y_off[l - 1] + m * fi].reshape((m, fi)) if l > 0 else xb
            W, dW = params[w:w + fi * fo], grads[w:w + fi * fo]
            _dense_dz(dy, grads[b:b + fo] if b >= 0 else no_bias, dy,
                      ws[y_off[l]:y_off[l] + m * fo].reshape((m, fo)), layers[l, 4], slopes[l],
                      sums)
            _gemm_ws(dW.reshape((fi, fo)), x_l, dy, True, False, 1.0, 0.0, no_bias, 0, 0.0,
                         ap, bp)
            if l > 0:
                dx = ws[g_off[1 - cur]:g_off[1 - cur] + m * fi].reshape((m, fi))
                _gemm_ws(dx, dy, W.reshape((fi, fo)), False, True, 1.0, 0.0, no_bias, 0,
                             0.0, ap, bp)
            if l2 != 0.0:
                _axpy(dW, W, np.float32(l2 / m))
            cur = 1 - cur
        step += 1
        mu_product = _optimizer_step(opt, params, grads, s0, s1, s2, hyper, step, mu_product)
    return n_batches, step, mu_product


def dense_stack_epoch(params, grads, states, workspace, X, targets, batch_losses,
                      batch_correct, *, layers, loss, batch_size, optimizer, hyper, step,
                      mu_product=1.0, l2=0.0, loss_scale=1.0, grad_scale=1.0, order=None):
    """One training epoch of a dense stack in one compiled call (see reference)."""
    X, targets, layers, n_batches, hyper, order = ck.prepare_dense_stack_epoch(
        params, grads, states, workspace, X, targets, batch_losses, batch_correct, layers,
        loss, batch_size, optimizer, hyper, step, l2, loss_scale, grad_scale, _F32,
        order=order)
    spec = np.array([(fan_in, fan_out, w_off, b_off, ck.activation_code(act))
                     for fan_in, fan_out, w_off, b_off, act, _ in layers], dtype=np.int64)
    slopes = np.array([layer[5] for layer in layers], dtype=np.float64)
    packed = np.zeros(len(_HYPER))
    for key, value in hyper.items():
        packed[_HYPER.index(key)] = float(value)
    s0, s1, s2 = [_NO_BUF if s is None else s for s in states] + [_NO_BUF] * (3 - len(states))
    is_labels = loss == "softmax_xent"
    done, step, mu_product = _dense_stack_epoch(
        params, grads, s0, s1, s2, workspace, X, targets if is_labels else _NO_LABELS,
        _NO_TARGETS if is_labels else targets, _NO_ORDER if order is None else order,
        batch_losses, batch_correct, spec, slopes,
        _EPOCH_LOSSES[loss], int(batch_size), _OPTIMIZERS.index(optimizer), packed, int(step),
        float(mu_product), float(l2), float(loss_scale), float(grad_scale))
    return int(done), int(step), float(mu_product)


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
    layers = [(3, 3, 0, -1, "relu", 0.0)]
    params, grads = np.zeros(9, _F32), np.zeros(9, _F32)
    dense_stack_epoch(params, grads, (None,), np.empty(18, _F32), x, labels, np.empty(1),
                      np.empty(1, np.int64), layers=layers, loss="softmax_xent", batch_size=2,
                      optimizer="sgd", hyper=dict(lr=0.1), step=0)
    _warmup_cnn()


# ---- convolution (channels-last) ---------------------------------------------
# conv2d is im2col + the gemm above: the forward's epilogue adds the bias and
# applies the activation; the backward is dense_backward's dz / dW / dX on the
# cols matrix, and col2im folds dcols back into the image.

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


def conv2d_forward(Y, X, W, b, cols, *, stride=(1, 1), padding=(0, 0), activation="identity",
                   negative_slope=0.01):
    """Y = act(im2col(X) @ W + b), channels-last; ``cols`` keeps im2col(X).  See reference."""
    X, W, b, g, _, _ = ck.prepare_conv2d_forward(Y, X, W, b, cols, stride, padding, activation,
                                                 negative_slope, _F32)
    n, h, w, c, oh, ow, oc, kh, kw, sh, sw, ph, pw = g
    _im2col(cols, X, kh, kw, sh, sw, ph, pw, oh, ow)
    dense_forward(Y.reshape(n * oh * ow, oc), cols, W.reshape(kh * kw * c, oc), b,
                  activation=activation, negative_slope=negative_slope)
    return Y


def conv2d_backward(dX, dW, db, dZ, dY, X, W, Y, cols, *, stride=(1, 1), padding=(0, 0),
                    activation="identity", negative_slope=0.01):
    """dZ = dY act'(Y), dW = cols.T @ dZ, db = sums of dZ, dX = col2im(dZ @ W.T)
    (``cols`` is overwritten with dZ @ W.T when dX is given).  See reference."""
    dY, X, W, Y, g, _, _ = ck.prepare_conv2d_backward(
        dX, dW, db, dZ, dY, X, W, Y, cols, stride, padding, activation, negative_slope, _F32)
    n, h, w, c, oh, ow, oc, kh, kw, sh, sw, ph, pw = g
    m, k = n * oh * ow, kh * kw * c
    z, W2 = dZ.reshape(m, oc), W.reshape(k, oc)
    # dense_backward's dX would overwrite cols while its dW still reads it: gemm after.
    dense_backward(None, dW.reshape(k, oc), db, z, dY.reshape(m, oc), cols, W2, Y.reshape(m, oc),
                   activation=activation, negative_slope=negative_slope)
    if dX is not None:
        gemm(z, W2, cols, trans_b=True)
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


@njit(cache=True, parallel=True)
def _avgpool_forward(y, x, kh, kw, sh, sw):
    n, h, w, c = x.shape
    oh, ow = y.shape[1], y.shape[2]
    for row in prange(n * oh):
        img, oy = row // oh, row % oh
        acc = np.empty(c, dtype=np.float64)
        for ox in range(ow):
            acc[:] = 0.0
            for i in range(kh):
                for j in range(kw):
                    for ch in range(c):
                        acc[ch] += x[img, oy * sh + i, ox * sw + j, ch]
            for ch in range(c):
                y[img, oy, ox, ch] = acc[ch] / (kh * kw)


@njit(cache=True, parallel=True)
def _avgpool_backward(dx, dy, kh, kw, sh, sw):
    """A gather over the windows that cover each dx row (img, yy), in float64."""
    n, h, w, c = dx.shape
    oh, ow = dy.shape[1], dy.shape[2]
    for row in prange(n * h):
        img, yy = row // h, row % h
        acc = np.zeros((w, c), dtype=np.float64)
        # windows oy with oy sh <= yy < oy sh + kh
        for oy in range(max(0, (yy - kh + sh) // sh), min(oh - 1, yy // sh) + 1):
            for ox in range(ow):
                for j in range(kw):
                    for ch in range(c):
                        acc[ox * sw + j, ch] += dy[img, oy, ox, ch]
        for xx in range(w):
            for ch in range(c):
                dx[img, yy, xx, ch] = acc[xx, ch] / (kh * kw)


def maxpool2d_forward(Y, X, argmax, *, pool, stride=None):
    """Max pooling, channels-last, no padding; argmax for the backward.  See reference."""
    X, (n, h, w, c, oh, ow, kh, kw, sh, sw) = ck.prepare_pool_forward(Y, X, argmax, pool,
                                                                       stride, _F32)
    _maxpool_forward(Y, argmax, X, kh, kw, sh, sw)
    return Y


def maxpool2d_backward(dX, dY, argmax, *, pool, stride=None):
    """dX = 0, then each dY added at its argmax.  See reference."""
    dY, argmax, (n, h, w, c, oh, ow, kh, kw, sh, sw) = ck.prepare_pool_backward(
        dX, dY, argmax, pool, stride, _F32)
    _maxpool_backward(dX.reshape(n, h * w, c), dY, argmax)


def avgpool2d_forward(Y, X, *, pool, stride=None):
    """Average pooling, channels-last, no padding.  See reference."""
    X, (n, h, w, c, oh, ow, kh, kw, sh, sw) = ck.prepare_pool_forward(Y, X, None, pool, stride,
                                                                       _F32)
    _avgpool_forward(Y, X, kh, kw, sh, sw)
    return Y


def avgpool2d_backward(dX, dY, *, pool, stride=None):
    """dX: each dY / (KH*KW) added over its window.  See reference."""
    dY, _, (n, h, w, c, oh, ow, kh, kw, sh, sw) = ck.prepare_pool_backward(dX, dY, None, pool,
                                                                          stride, _F32)
    _avgpool_backward(dX, dY, kh, kw, sh, sw)


# ---- batch normalisation -----------------------------------------------------
# Per-channel sums over the rows of X (rows, C) in float64: each thread sums a
# chunk of rows into its own row of `part`, then the chunks are added in a
# fixed order (deterministic for a given thread count).

@njit(cache=True, parallel=True)
def _channel_sums(a, b, shift, scale, kind, nchunks):
    """(2, C) float64 sums over rows: kind 0, d = a - shift: sum d, sum d^2;
    kind 1: sum a, sum a (b - shift) scale."""
    rows, c = a.shape
    part = np.zeros((nchunks, 2, c), dtype=np.float64)
    for k in prange(nchunks):
        s0, s1 = part[k, 0], part[k, 1]
        for r in range(k * rows // nchunks, (k + 1) * rows // nchunks):
            if kind == 0:
                for ch in range(c):
                    d = np.float64(a[r, ch]) - shift[ch]
                    s0[ch] += d
                    s1[ch] += d * d
            else:
                for ch in range(c):
                    g = np.float64(a[r, ch])
                    s0[ch] += g
                    s1[ch] += g * ((np.float64(b[r, ch]) - shift[ch]) * scale[ch])
    return part.sum(axis=0)


@njit(cache=True, parallel=True)
def _batchnorm_forward(y, x, gamma, beta, mean, invstd, rm, rv, momentum, eps, nchunks):
    rows, c = x.shape
    # Shifted by the first row, so the one-pass variance does not cancel.
    shift = x[0].astype(np.float64)
    s = _channel_sums(x, x, shift, shift, 0, nchunks)
    mu = np.empty(c, dtype=np.float64)
    scale = np.empty(c, dtype=np.float64)
    for ch in range(c):
        d = s[0, ch] / rows
        var = max(s[1, ch] / rows - d * d, 0.0)
        mu[ch] = shift[ch] + d
        istd = 1.0 / math.sqrt(var + eps)
        mean[ch] = mu[ch]
        invstd[ch] = istd
        scale[ch] = istd * gamma[ch]
        rm[ch] = (1.0 - momentum) * rm[ch] + momentum * mu[ch]
        rv[ch] = (1.0 - momentum) * rv[ch] + momentum * var * rows / (rows - 1)
    for r in prange(rows):
        for ch in range(c):
            y[r, ch] = (x[r, ch] - mu[ch]) * scale[ch] + beta[ch]


@njit(cache=True, parallel=True)
def _batchnorm_inference(y, x, gamma, beta, rm, rv, eps):
    rows, c = x.shape
    scale = np.empty(c, dtype=np.float64)
    for ch in range(c):
        scale[ch] = gamma[ch] / math.sqrt(np.float64(rv[ch]) + eps)
    for r in prange(rows):
        for ch in range(c):
            y[r, ch] = (x[r, ch] - np.float64(rm[ch])) * scale[ch] + beta[ch]


@njit(cache=True, parallel=True)
def _batchnorm_backward(dx, dgamma, dbeta, dy, x, gamma, mean, invstd, nchunks):
    rows, c = x.shape
    mu, istd = mean.astype(np.float64), invstd.astype(np.float64)
    s = _channel_sums(dy, x, mu, istd, 1, nchunks)
    k0 = np.empty(c, dtype=np.float64)
    for ch in range(c):
        dbeta[ch] = s[0, ch]
        dgamma[ch] = s[1, ch]
        k0[ch] = gamma[ch] * istd[ch] / rows
    # dX = gamma invstd / M (M dY - dbeta - xhat dgamma), from the float64 sums
    for r in prange(rows):
        for ch in range(c):
            xhat = (x[r, ch] - mu[ch]) * istd[ch]
            dx[r, ch] = k0[ch] * (rows * np.float64(dy[r, ch]) - s[0, ch] - xhat * s[1, ch])


def batchnorm_forward(Y, X, gamma, beta, mean, invstd, running_mean, running_var, *,
                      momentum=0.1, eps=1e-5):
    """Training-mode batch norm over the last axis; torch's running-stat update.  See reference."""
    X, gamma, beta, rows, c, momentum, eps = ck.prepare_batchnorm_forward(
        Y, X, gamma, beta, mean, invstd, running_mean, running_var, momentum, eps, _F32)
    _batchnorm_forward(Y.reshape(rows, c), X.reshape(rows, c), gamma, beta, mean, invstd,
                       running_mean, running_var, float(momentum), float(eps),
                       _chunks(rows * c))
    return Y


def batchnorm_inference(Y, X, gamma, beta, running_mean, running_var, *, eps=1e-5):
    """Evaluation-mode batch norm with the running statistics.  See reference."""
    X, gamma, beta, rm, rv, rows, c, eps = ck.prepare_batchnorm_inference(
        Y, X, gamma, beta, running_mean, running_var, eps, _F32)
    _batchnorm_inference(Y.reshape(rows, c), X.reshape(rows, c), gamma, beta, rm, rv, float(eps))
    return Y


def batchnorm_backward(dX, dgamma, dbeta, dY, X, gamma, mean, invstd):
    """Backward of training-mode ``batchnorm_forward``.  See reference."""
    dY, X, gamma, mean, invstd, rows, c = ck.prepare_batchnorm_backward(
        dX, dgamma, dbeta, dY, X, gamma, mean, invstd, _F32)
    _batchnorm_backward(dX.reshape(rows, c), dgamma, dbeta, dY.reshape(rows, c),
                        X.reshape(rows, c), gamma, mean, invstd, _chunks(rows * c))


def _warmup_cnn():
    """Compile (or load from the disk cache) the conv, pooling and batch-norm
    kernels on tiny inputs (``warmup`` covers the dense ones)."""
    x = np.linspace(-1.0, 1.0, 32, dtype=_F32).reshape(1, 4, 4, 2)
    w = np.ones((3, 3, 2, 2), dtype=_F32)
    y, cols = np.empty((1, 2, 2, 2), _F32), np.empty((4, 18), _F32)
    conv2d_forward(y, x, w, w[0, 0, 0], cols, activation="relu")
    conv2d_backward(np.empty_like(x), np.empty_like(w), np.empty(2, _F32), np.empty_like(y), y,
                    x, w, y, cols, activation="relu")
    am = np.empty((1, 2, 2, 2), np.int32)
    maxpool2d_forward(y, x, am, pool=2)
    maxpool2d_backward(np.empty_like(x), y, am, pool=2)
    avgpool2d_forward(y, x, pool=2)
    avgpool2d_backward(np.empty_like(x), y, pool=2)
    c2, c3, c4 = np.ones(2, _F32), np.ones(2, _F32), np.ones(2, _F32)
    batchnorm_forward(np.empty_like(x), x, c2, c2, c3, c4, np.zeros(2, _F32), np.ones(2, _F32))
    batchnorm_inference(np.empty_like(x), x, c2, c2, c3, c4)
    batchnorm_backward(np.empty_like(x), np.empty(2, _F32), np.empty(2, _F32), x, x, c2, c3, c4)
