"""Convolution and pooling of the numba backend (channels-last images).

conv2d with 1 to _DMAXV vectors of output channels (``direct``: 16 to 64
with AVX-512) is a direct implicit GEMM over the zero-padded image (the
forward, dW, and dX at stride 1 as the forward over the padded dZ); the
others are im2col + the gemm of ``_gemm`` (the forward's epilogue adds the
bias and applies the activation; dW and dX are products with the cols
matrix, col2im folds dcols back into the image).  dZ and db are one pass.
"""

import numba  # absolute import: the real numba, not this package
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._common import _NO_BUF, stack_floats
from ._elementwise import _IDENTITY, _act_span, _grad_span
from ._gemm import _W, _gemm, dense_forward, gemm


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


# ---- direct convolution ------------------------------------------------------------
# An implicit GEMM over the zero-padded image, as csrc/conv_direct.c: a
# register tile of _DMR rows x NV vectors of output channels reads A in
# place through offset tables (XNNPACK's indirection, without the buffer of
# pointers): A[i, p] = xpad[rows[i] + ks[p]].  Forward: rows = output pixels'
# window corners, ks = the taps' offsets (i, j, ch), B = W.  dW: rows = the
# taps, ks = the pixels, B = dZ.  A first layer on images was the worst case
# of im2col + gemm: k = kh kw c = 9, 16 output channels in the gemm's 32-wide
# tile, every tile an edge tile (bench/NOTES.md, entry 44).

_DMR = 8
# dW: pixels per chunk of the batch sum (one float32 partial each, summed in
# float64 in chunk order: the geometry fixes the chunks, not the threads).
_DW_CHUNK = 512


def _make_conv_tile(nv):
    """The tile kernel for nv vectors of output channels (oc = nv * _W)."""
    @intrinsic
    def conv_tile(typingctx, a, rows, r_off, ks, k_off, kc, b, b_off, ldb, out, o_off, ldo):
        """out[o_off + i ldo + j] = sum over p < kc of
        a[rows[r_off + i] + ks[k_off + p]] b[b_off + p ldb + j] for i < _DMR,
        j < nv * _W, in p order with one fused multiply-add each (the gemm
        micro-kernel's rounding)."""
        sig = types.void(a, rows, r_off, ks, k_off, kc, b, b_off, ldb, out, o_off, ldo)

        def codegen(context, builder, sig, args):
            a_v, rows_v, r_off_v, ks_v, k_off_v, kc_v, b_v, b_off_v, ldb_v, out_v, o_off_v, \
                ldo_v = args
            f32, i32 = ir.FloatType(), ir.IntType(32)
            vec = ir.VectorType(f32, _W)
            vptr = vec.as_pointer()

            def data(k, value):
                return context.make_array(sig.args[k])(context, builder, value).data

            a_ptr = data(0, a_v)
            rows_ptr = builder.gep(data(1, rows_v), [r_off_v])
            ks_ptr = builder.gep(data(3, ks_v), [k_off_v])
            b_ptr = builder.gep(data(6, b_v), [b_off_v])
            o_ptr = builder.gep(data(9, out_v), [o_off_v])
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fmuladd.v{_W}f32")
            undef = ir.Constant(vec, ir.Undefined)
            zeros = ir.Constant(ir.VectorType(i32, _W), [0] * _W)
            i64 = ir.IntType(64)
            row_ptrs = [builder.gep(a_ptr, [builder.load(builder.gep(rows_ptr,
                                                                    [ir.Constant(i64, i)]))])
                        for i in range(_DMR)]
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * _W))
                     for _ in range(nv)] for _ in range(_DMR)]
            with cgutils.for_range(builder, kc_v) as loop:
                kofs = builder.load(builder.gep(ks_ptr, [loop.index]))
                brow = builder.gep(b_ptr, [builder.mul(loop.index, ldb_v)])
                bv = [builder.load(builder.bitcast(builder.gep(brow, [ir.Constant(i64, v * _W)]),
                                                   vptr), align=4) for v in range(nv)]
                for i in range(_DMR):
                    x = builder.load(builder.gep(row_ptrs[i], [kofs]))
                    s = builder.shuffle_vector(builder.insert_element(undef, x,
                                                                      ir.Constant(i32, 0)),
                                               undef, zeros)
                    for v in range(nv):
                        builder.store(builder.call(fma, [s, bv[v], builder.load(accs[i][v])]),
                                      accs[i][v])
            for i in range(_DMR):
                orow = builder.gep(o_ptr, [builder.mul(ir.Constant(i64, i), ldo_v)])
                for v in range(nv):
                    dst = builder.bitcast(builder.gep(orow, [ir.Constant(i64, v * _W)]), vptr)
                    builder.store(builder.load(accs[i][v]), dst, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return conv_tile


_conv_tile1, _conv_tile2 = _make_conv_tile(1), _make_conv_tile(2)


# Vectors of output channels the direct kernels take: a tile call covers one
# or two (the compiled tiles), wider layers run ceil(nv / 2) calls per tile of
# rows, their A rows still in L1 (NOTES 57: 32 -> 64 channels 3x3 ~1.5x faster
# than im2col + gemm here, which writes a 9x copy of the image).
_DMAXV = 4


@njit(cache=True)
def direct(c, oc, pad_floats, cols_floats):
    """Whether conv2d of c -> oc channels runs the direct forward and dW:
    oc 1 to _DMAXV vectors, and the padded image fits the cols scratch (it
    stays there from the forward to dW)."""
    return oc % _W == 0 and oc // _W <= _DMAXV and pad_floats <= cols_floats


_dtile = stack_floats(_DMR * _DMAXV * _W)  # a float32[_DMR * _DMAXV * _W] edge tile on the stack


@njit(cache=True, inline="always")
def _tile_call(nv, a, rows, r_off, ks, k_off, kc, b, b_off, ldb, out, o_off, ldo):
    """The tile of nv vectors of columns: pairs of them, then the odd one
    (each column's sum is the same whatever the call that computes it)."""
    for v0 in range(0, nv - 1, 2):
        _conv_tile2(a, rows, r_off, ks, k_off, kc, b, b_off + v0 * _W, ldb, out,
                    o_off + v0 * _W, ldo)
    if nv % 2 == 1:
        v0 = nv - 1
        _conv_tile1(a, rows, r_off, ks, k_off, kc, b, b_off + v0 * _W, ldb, out,
                    o_off + v0 * _W, ldo)


@njit(cache=True, parallel=True)
def _pad(xpad, x, ph, pw):
    """xpad (n, h + 2 ph, w + 2 pw, c) = x framed by zeros."""
    n, h, w, c = x.shape
    hp, wp = h + 2 * ph, w + 2 * pw
    xp = xpad[:n * hp * wp * c].reshape((n, hp, wp, c))
    for row in prange(n * hp):
        img, yy = row // hp, row % hp
        r = xp[img, yy]
        if yy < ph or yy >= h + ph:
            for q in range(wp):
                for ch in range(c):
                    r[q, ch] = 0.0
            continue
        for q in range(pw):
            for ch in range(c):
                r[q, ch] = 0.0
                r[wp - 1 - q, ch] = 0.0
        for xx in range(w):
            for ch in range(c):
                r[pw + xx, ch] = x[img, yy - ph, xx, ch]


@njit(cache=True)
def _tap_offsets(taps, kh, kw, c, wp):
    """taps[(i kw + j) c + ch] = (i wp + j) c + ch, 0 past kh kw c (up to a multiple of _DMR)."""
    k = kh * kw * c
    for t in range(taps.size):
        taps[t] = 0
    for i in range(kh):
        for j in range(kw):
            for ch in range(c):
                taps[(i * kw + j) * c + ch] = (i * wp + j) * c + ch


@njit(cache=True, inline="always")
def _pixel_offsets(pix, lo, hi, oh, ow, hp, wp, c, sh, sw):
    """pix[q] = output pixel q's window corner in xpad (hp x wp images), for
    q in [lo, hi) of the flat (n, oh, ow) grid (two divisions, then steps)."""
    hw = oh * ow
    img, rem = lo // hw, lo % hw
    oy, ox = rem // ow, rem % ow
    for q in range(lo, hi):
        pix[q] = ((img * hp + oy * sh) * wp + ox * sw) * c
        ox += 1
        if ox == ow:
            ox = 0
            oy += 1
            if oy == oh:
                oy = 0
                img += 1


# Output pixels per parallel chunk of the forward (a multiple of _DMR).
_FWD_CHUNK = 16 * _DMR


@njit(cache=True, parallel=True, error_model="numpy")
def _direct_forward(y, xpad, w, b, oh, ow, c, kh, kw, sh, sw, hp, wp, code, slope, pix, taps):
    """y (M = n oh ow, oc) = act(conv(x, w) + b) from xpad (_pad: hp x wp
    images), w (k = kh kw c, oc); pix: int64 scratch of M + _DMR, taps of
    k + _DMR.  Threads own chunks of _FWD_CHUNK output pixels; the bias and
    activation follow per chunk, while it is in cache."""
    M, oc = y.shape
    k = kh * kw * c
    nv = oc // _W
    _tap_offsets(taps, kh, kw, c, wp)
    yf, wf = y.reshape(-1), w.reshape(-1)
    for ch in prange((M + _FWD_CHUNK - 1) // _FWD_CHUNK):
        p0 = ch * _FWD_CHUNK
        p1 = min(M, p0 + _FWD_CHUNK)
        _pixel_offsets(pix, p0, p1, oh, ow, hp, wp, c, sh, sw)
        for q in range(p1, min(pix.size, (p1 + _DMR - 1) // _DMR * _DMR)):
            pix[q] = 0  # (the last tile's rows past M read pixel 0)
        for r0 in range(p0, p1, _DMR):
            if r0 + _DMR <= p1:
                _tile_call(nv, xpad, pix, r0, taps, 0, k, wf, 0, oc, yf, r0 * oc, oc)
            else:
                buf = _dtile()
                _tile_call(nv, xpad, pix, r0, taps, 0, k, wf, 0, oc, buf, 0, oc)
                for q in range((p1 - r0) * oc):
                    yf[r0 * oc + q] = buf[q]
        if b.size > 0:
            yc = yf[p0 * oc:p1 * oc]  # (flat from 0: _elementwise's loops say why)
            for r in range(p1 - p0):
                for o in range(oc):
                    yc[r * oc + o] += b[o]
        if code != _IDENTITY:
            _act_span(yf, yf, p0 * oc, p1 * oc, code, slope)


@njit(cache=True)
def dw_chunks(M):
    """dW's partial sums for M output pixels."""
    return (M + _DW_CHUNK - 1) // _DW_CHUNK


@njit(cache=True, parallel=True, error_model="numpy")
def _direct_dw(dw, xpad, dz, oh, ow, c, kh, kw, sh, sw, hp, wp, pix, taps, part):
    """dw (k = kh kw c, oc) = cols(x)^T dz, dz (M = n oh ow, oc), from xpad;
    threads own chunks of _DW_CHUNK pixels, each a float32 partial in part
    (dw_chunks(M) x (k up to a multiple of _DMR) x oc floats), summed in chunk
    order in float64 (the same bits on any thread count)."""
    k, oc = dw.shape
    M = dz.shape[0]
    nv = oc // _W
    kp = (k + _DMR - 1) // _DMR * _DMR
    _tap_offsets(taps, kh, kw, c, wp)
    chunks = dw_chunks(M)
    zf = dz.reshape(-1)
    for q in prange(chunks):
        p0 = q * _DW_CHUNK
        p1 = min(M, p0 + _DW_CHUNK)
        _pixel_offsets(pix, p0, p1, oh, ow, hp, wp, c, sh, sw)
        for s in range(kp // _DMR):
            _tile_call(nv, xpad, taps, s * _DMR, pix, p0, p1 - p0, zf, p0 * oc, oc, part,
                       (q * kp + s * _DMR) * oc, oc)
    for t in range(k):
        for o in range(oc):
            acc = 0.0
            for q in range(chunks):
                acc += part[(q * kp + t) * oc + o]
            dw[t, o] = acc


@njit(cache=True)
def direct_dx(c, kh, kw, sh, sw, ph, pw, zpad_floats, cols_floats):
    """Whether dX runs as the direct forward convolution of dZ padded by
    (kh - 1 - ph, kw - 1 - pw) with W flipped and transposed (_flip): stride
    1, c 1 to _DMAXV vectors, the padded dZ fits the cols scratch."""
    return (sh == 1 and sw == 1 and ph <= kh - 1 and pw <= kw - 1 and c % _W == 0
            and c // _W <= _DMAXV and zpad_floats <= cols_floats)


@njit(cache=True)
def _flip(wf, w, kh, kw, c, oc):
    """wf (kh kw oc, c)[(i kw + j) oc + o, ch] =
    w (kh kw c, oc)[((kh-1-i) kw + kw-1-j) c + ch, o]."""
    for i in range(kh):
        for j in range(kw):
            for o in range(oc):
                dst = wf[(i * kw + j) * oc + o]
                src = ((kh - 1 - i) * kw + kw - 1 - j) * c
                for ch in range(c):
                    dst[ch] = w[src + ch, o]


@njit(cache=True)
def _direct_dx(dx, z, w, kh, kw, ph, pw, cols, wf, pix, taps, no_bias):
    """dx (n, h, w, c) = the adjoint of the stride-1 convolution applied to
    z (n oh ow, oc): the direct forward over z padded into cols, with wf =
    _flip(w) (scratch of kh kw oc c floats); pix: int64 scratch of n h w +
    _DMR, taps of kh kw oc + _DMR; no_bias: an empty float32 array."""
    n, h, wd, c = dx.shape
    oc = z.shape[1]
    oh, ow = h + 2 * ph - kh + 1, wd + 2 * pw - kw + 1
    qh, qw = kh - 1 - ph, kw - 1 - pw
    _flip(wf, w, kh, kw, c, oc)
    _pad(cols, z.reshape((n, oh, ow, oc)), qh, qw)
    _direct_forward(dx.reshape((n * h * wd, c)), cols, wf, no_bias, h, wd, oc, kh, kw, 1, 1,
                    oh + 2 * qh, ow + 2 * qw, _IDENTITY, 0.0, pix, taps)


# ---- dZ of a convolution -----------------------------------------------------------

_DZ_ROWS = 2048  # output pixels per chunk of the dZ pass (fixed: db's rounding)


@njit(cache=True)
def dz_chunks(M):
    """Chunks of _conv_dz over M output pixels (its float64 scratch: chunks x oc)."""
    return max(1, (M + _DZ_ROWS - 1) // _DZ_ROWS)


@njit(cache=True, parallel=True)
def _conv_dz(z, db, dy, y, code, slope, part):
    """z (M = n oh ow, oc) = dy act'(y) and db = z's column sums (if
    db.size), in float64 per chunk of _DZ_ROWS rows, the chunks in order
    (the same bits on any thread count); z may be dy.  Threads own chunks;
    part: float64 scratch (dz_chunks(M), oc)."""
    M, oc = z.shape
    chunks = dz_chunks(M)
    for q in prange(chunks):
        r0, r1 = q * _DZ_ROWS, min(M, (q + 1) * _DZ_ROWS)
        _grad_span(z[r0:r1].reshape(-1), dy[r0:r1].reshape(-1), y[r0:r1].reshape(-1), 0,
                   (r1 - r0) * oc, code, slope)
        if db.size > 0:
            s = part[q]
            for j in range(oc):
                s[j] = 0.0
            zc = z[r0:r1].reshape(-1)
            for r in range(r1 - r0):
                for j in range(oc):
                    s[j] += zc[r * oc + j]
    if db.size > 0:
        for j in range(oc):
            acc = 0.0
            for q in range(chunks):
                acc += part[q, j]
            db[j] = acc


def conv2d_forward(Y, X, W, b, cols, stride, padding, activation, negative_slope):
    n, _, _, c = X.shape
    kh, kw, _, oc = W.shape
    _, oh, ow, _ = Y.shape
    (sh, sw), (ph, pw) = stride, padding
    hp, wp = X.shape[1] + 2 * ph, X.shape[2] + 2 * pw
    if direct(c, oc, n * hp * wp * c, cols.size):
        xpad = cols.reshape(-1)
        _pad(xpad, X, ph, pw)
        _direct_forward(Y.reshape(n * oh * ow, oc), xpad, W.reshape(kh * kw * c, oc),
                        _NO_BUF if b is None else b, oh, ow, c, kh, kw, sh, sw, hp, wp,
                        activation, negative_slope, np.empty(n * oh * ow + _DMR, np.int64),
                        np.empty(kh * kw * c + _DMR, np.int64))
        return
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
    _conv_dz(z, _NO_BUF if db is None else db, dY.reshape(m, oc), Y.reshape(m, oc), activation,
             negative_slope, np.empty((dz_chunks(m), oc), np.float64))
    hp, wp = X.shape[1] + 2 * ph, X.shape[2] + 2 * pw
    if direct(c, oc, n * hp * wp * c, cols.size):  # (cols holds the forward's padded X)
        kp = (k + _DMR - 1) // _DMR * _DMR
        _direct_dw(dW.reshape(k, oc), cols.reshape(-1), z, oh, ow, c, kh, kw, sh, sw, hp, wp,
                   np.empty(m + _DMR, np.int64), np.empty(kp + _DMR, np.int64),
                   np.empty(dw_chunks(m) * kp * oc, np.float32))
    else:  # (dcols overwrites cols after dW has read them)
        _gemm(dW.reshape(k, oc), cols, z, True, False, 1.0, 0.0, _NO_BUF, _IDENTITY, 0.0,
              numba.get_num_threads())
    if dX is None:
        return
    if direct_dx(c, kh, kw, sh, sw, ph, pw, n * (oh + 2 * (kh - 1 - ph)) * (ow + 2 * (kw - 1 - pw))
                 * oc, cols.size):
        h, w = X.shape[1], X.shape[2]
        _direct_dx(dX, z, W2, kh, kw, ph, pw, cols.reshape(-1),
                   np.empty((kh * kw * oc, c), np.float32), np.empty(n * h * w + _DMR, np.int64),
                   np.empty(kh * kw * oc + _DMR, np.int64), _NO_BUF)
    else:
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
