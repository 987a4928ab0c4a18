"""Matrix multiply and the dense layer of the numba backend.

gemm.  BLIS-style: op(A) and op(B) are packed into slivers of MR rows and NR
columns (zero-padded at the edges, so the micro-kernel is branch-free), and
an MR x NR micro-kernel written as LLVM vector IR (``_micro_kernel``; numba
compiles the same loop in Python to scalar code) accumulates each tile in
registers and stores or adds alpha times it into C; bias and activation
follow on the last panel of k, while the tile is in cache.  Threads split
the tiles of C; small products stay on one thread.  The packing buffers are
allocated once per call of ``gemm``; the fused epoch allocates them once
per epoch.

The dense layer is this gemm: the forward with bias and activation in the
epilogue, the backward as dZ = dY act'(Y) and column sums (``_dense_dz``)
followed by two products.
"""

import numba  # absolute import: the real numba, not this package
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from llvmlite import ir
from numba.extending import intrinsic

from ._common import _NO_BUF, stack_floats
from ._elementwise import _IDENTITY, _act_span, _grad_span


# ---- matrix multiply -----------------------------------------------------------

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


# A float32[MR*NR] scratch array on the stack (the micro-kernel's output
# tile; it cannot alias C, the bias or the panels).
_register_tile = stack_floats(_MR * _NR)


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
        if code != _IDENTITY:
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
# ... and a block of one panel with fewer than this runs its packing and tiles
# on the calling thread (LeNet's first-layer dW, 9 x 16 over k = 100k: 37k
# multiply-adds a panel).
_PAR_MIN_BLOCK_MACS = 1 << 18


@njit(cache=True, parallel=True, error_model="numpy")
def _gemm_rows(C, A, B, a_row0, trans_a, trans_b, alpha, beta, bias, code, slope, ap_buf, bp_buf,
               threads):
    """C = act(alpha op(A)[a_row0:a_row0 + m] op(B) + beta C + bias), C (m, n)
    with unit column stride: rows a_row0... of the product (a thread's
    rows of dW = X^T dZ in the dense stack's epoch); ap_buf and bp_buf are
    scratch of at least _pack_floats(m, n, k) floats.  BLIS order: per KC
    panel of k (op(B) packed on its first block of rows), per block of rows
    (op(A) packed, by the threads when it is large), the threads split the
    block's MR x NR tiles of C (each tile is one thread's: no races) --
    unless not `threads` (a caller already inside a parallel region).
    beta != 0 scales C first and every panel accumulates; else the first
    panel stores.  Each element of C is the same sum, in the same order,
    whatever m, a_row0 and the thread split: the k blocking depends on k
    alone."""
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
    epilogue = bias.size > 0 or code != _IDENTITY
    par = threads and m * n * k >= _PAR_MIN_MACS
    for p0 in range(0, max(k, 1), _KC):  # k == 0: one empty panel (C = beta C + bias)
        kc = min(_KC, k - p0)
        accumulate = p0 > 0 or beta != 0.0
        last = p0 + kc >= k
        mb = _block_rows(m, kc)
        for i0 in range(0, m, mb):
            mc = min(mb, m - i0)
            msl = (mc + _MR - 1) // _MR
            # A parallel region per block of one panel only when the block has
            # the work for it (dW-shaped products, a few tiles over a long k,
            # opened 2 regions per KC panel: 784 a batch for LeNet's first
            # layer, each a wait for the other core when it is busy).
            par_block = par and mc * n * kc >= _PAR_MIN_BLOCK_MACS
            if par_block and mc * kc >= 1 << 14:
                for q in prange(_PACK_PARTS):
                    _pack_a(ap_buf, A, trans_a, a_row0 + i0, mc, p0, kc, q, _PACK_PARTS)
            else:
                _pack_a(ap_buf, A, trans_a, a_row0 + i0, mc, p0, kc, 0, 1)
            if i0 == 0:
                if par_block:
                    for js in prange(nsl):
                        if not (direct_b and js * _NR + _NR <= n):
                            _pack_b(bp_buf, B, trans_b, n, p0, kc, js)
                else:
                    for js in range(nsl):
                        if not (direct_b and js * _NR + _NR <= n):
                            _pack_b(bp_buf, B, trans_b, n, p0, kc, js)
            # Threads take contiguous runs of the block's tiles, column sliver
            # by column sliver (each sliver of op(B) stays in cache for its run).
            if par_block:
                for tix in prange(nsl * msl):
                    _tile(C, B, ap_buf, bp_buf, _register_tile(), tix // msl, tix % msl, i0, p0,
                          kc, direct_b, a32, accumulate, last and epilogue, bias, code, slope)
            else:
                tile = _register_tile()
                for tix in range(nsl * msl):
                    _tile(C, B, ap_buf, bp_buf, tile, tix // msl, tix % msl, i0, p0, kc,
                          direct_b, a32, accumulate, last and epilogue, bias, code, slope)


@njit(cache=True)
def _row_cut(m, t, pieces):
    """Start of piece t of m rows cut into `pieces` runs of whole MR slivers."""
    msl = (m + _MR - 1) // _MR
    return min(m, t * msl // pieces * _MR)


@njit(cache=True, parallel=True, error_model="numpy")
def _gemm_split(C, A, B, trans_a, trans_b, alpha, beta, bias, code, slope, ap_buf, bp_buf,
                pieces, ap_piece, bp_piece):
    """One parallel region for the whole product: piece t (a thread's) is
    rows _row_cut(m, t) .. _row_cut(m, t + 1) of C, packed into its own
    part of the buffers."""
    m = C.shape[0]
    for t in prange(pieces):
        r0, r1 = _row_cut(m, t, pieces), _row_cut(m, t + 1, pieces)
        if r1 > r0:
            _gemm_rows(C[r0:r1], A, B, r0, trans_a, trans_b, alpha, beta, bias, code, slope,
                       ap_buf[t * ap_piece:(t + 1) * ap_piece],
                       bp_buf[t * bp_piece:(t + 1) * bp_piece], False)


@njit(cache=True)
def _gemm_ws(C, A, B, trans_a, trans_b, alpha, beta, bias, code, slope, ap_buf, bp_buf, nt):
    """_gemm_rows over all of C's rows, threads allowed.  With buffers of
    _pack_floats(m, n, k) times nt (numba's thread count) and enough rows, the
    threads take runs of rows in one parallel region (a region costs ~35 us
    once numba's workers sleep, and _gemm_rows opens up to three per panel
    of k: bench/NOTES.md entry 54); the same bits either way (_gemm_rows)."""
    m, n = C.shape
    k = A.shape[0] if trans_a else A.shape[1]
    msl = (m + _MR - 1) // _MR
    if nt > 1 and m * n * k >= _PAR_MIN_MACS and msl >= 2 * nt:
        a_need, b_need = _pack_floats((msl + nt - 1) // nt * _MR, n, k)
        ap_piece, bp_piece = ap_buf.size // nt, bp_buf.size // nt
        if ap_piece >= a_need and bp_piece >= b_need:
            _gemm_split(C, A, B, trans_a, trans_b, alpha, beta, bias, code, slope, ap_buf,
                        bp_buf, nt, ap_piece, bp_piece)
            return
    _gemm_rows(C, A, B, 0, trans_a, trans_b, alpha, beta, bias, code, slope, ap_buf, bp_buf,
               True)


@njit(cache=True)
def _gemm(C, A, B, trans_a, trans_b, alpha, beta, bias, code, slope, nt):
    """_gemm_ws with its packing buffers (one part a thread) allocated for
    this call."""
    m, n = C.shape
    k = A.shape[0] if trans_a else A.shape[1]
    ap_size, bp_size = _pack_floats(m, n, k)
    _gemm_ws(C, A, B, trans_a, trans_b, alpha, beta, bias, code, slope,
             np.empty(nt * ap_size, dtype=np.float32), np.empty(nt * bp_size, dtype=np.float32),
             nt)


def gemm(A, B, C, trans_a, trans_b, alpha, beta):
    _gemm(C, A, B, trans_a, trans_b, alpha, beta, _NO_BUF, _IDENTITY, 0.0, numba.get_num_threads())


# ---- dense layer -----------------------------------------------------------------

def dense_forward(Y, X, W, b, activation, negative_slope):
    _gemm(Y, X, W, False, False, 1.0, 0.0, _NO_BUF if b is None else b, activation,
          negative_slope, numba.get_num_threads())


@njit(cache=True)
def _column_sums(db, dz, sums):
    """db = column sums of dz (n, c), in float64 in row order (sums:
    float64 scratch of at least c)."""
    n, c = dz.shape
    for j in range(c):
        sums[j] = 0.0
    for r in range(n):
        for j in range(c):
            sums[j] += dz[r, j]
    for j in range(c):
        db[j] = sums[j]


@njit(cache=True)
def _dense_dz(dz, db, dy, y, code, slope, sums):
    """dz = dy * act'(y); db = column sums of dz (if db.size), in float64
    (sums: float64 scratch of at least c)."""
    n, c = y.shape
    _grad_span(dz.reshape(-1), dy.reshape(-1), y.reshape(-1), 0, n * c, code, slope)
    if db.size > 0:
        _column_sums(db, dz, sums)


def dense_backward(dX, dW, db, dZ, dY, X, W, Y, activation, negative_slope):
    _dense_dz(dZ, _NO_BUF if db is None else db, dY, Y, activation, negative_slope,
              np.empty(dZ.shape[1], dtype=np.float64))
    _gemm(dW, X, dZ, True, False, 1.0, 0.0, _NO_BUF, _IDENTITY, 0.0, numba.get_num_threads())
    if dX is not None:
        _gemm(dX, dZ, W, False, True, 1.0, 0.0, _NO_BUF, _IDENTITY, 0.0, numba.get_num_threads())
