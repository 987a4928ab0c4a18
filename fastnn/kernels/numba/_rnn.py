"""Recurrent layers on the numba backend: rnn_forward / rnn_backward (the
specification is fastnn/kernels/_reference_rnn.py; the algorithm is
csrc/rnn.c's).  The input projection of every step is one gemm into the
gate cache; each step's hidden gemm accumulates onto the step's slice of
the cache (beta = 1) and the epilogue applies biases and gates in place;
backpropagation through time writes the gate gradients over the cache and
ends with one gemm each for dW_ih and dX.  The gemm is _gemm's (packing
scratch from the caller: allocated once per epoch inside model_epoch)."""

import math

import numpy as np
from numba import njit, prange

from .. import spec
from ._common import _EXACT
from ._gemm import _IDENTITY, _gemm_ws, _pack_floats

_RNN, _GRU, _LSTM = int(spec.Cell.RNN), int(spec.Cell.GRU), int(spec.Cell.LSTM)
_TANH = int(spec.Activation.TANH)
_GATES = (0, 1, 3, 4)   # by cell code
_CACHE = (0, 1, 4, 5)
_NONE = np.empty(0, dtype=np.float32)


@njit(cache=True, fastmath=_EXACT)
def _sigm(x):
    e = math.exp(-abs(x))
    return 1.0 / (1.0 + e) if x >= 0.0 else e / (1.0 + e)


@njit(cache=True)
def _dims(cell, h):
    G = 1 if cell == _RNN else (3 if cell == _GRU else 4)
    K = 1 if cell == _RNN else (4 if cell == _GRU else 5)
    return G * h, K * h


@njit(cache=True)
def _pack_sizes(n, L, c, h, cell):
    """Packing scratch (a, b floats) for every gemm of forward and backward:
    one thread's part, so the gemms pass nt = 1 to _gemm_ws (its split
    inside _gemm_rows, not one region a product)."""
    GH, KH = _dims(cell, h)
    a, b = 0, 0
    for gm, gn, gk in ((n * L, GH, c), (n, GH, h), (n, h, GH), (h, GH, n), (c, GH, n * L),
                       (n * L, c, GH)):
        x, y = _pack_floats(gm, gn, gk)
        a, b = max(a, x), max(b, y)
    return a, b


@njit(cache=True, parallel=True)
def _copy_rows(dst, src):
    """dst (n, h) contiguous = src (n, h) strided."""
    for i in prange(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[i, j] = src[i, j]


@njit(cache=True, parallel=True, fastmath=_EXACT)
def _forward(Hs, Gc, X, W_ih, W_hh, b_ih, b_hh, cell, act, ap, bp, S, hbuf, XP):
    """Scratch: S (n, GH) the step's hidden product, hbuf (n, h) the previous
    state (contiguous), XP (n, L, GH) the input projection."""
    n, L, c = X.shape
    h = W_hh.shape[0]
    GH, KH = _dims(cell, h)
    _gemm_ws(XP.reshape((n * L, GH)), X.reshape((n * L, c)), W_ih, False, False, 1.0, 0.0,
             _NONE, _IDENTITY, 0.0, ap, bp, 1)
    for t in range(L):
        first = t == 0
        if first:
            S[:, :] = 0.0
        else:
            _copy_rows(hbuf, Hs[:, t - 1, :])
            _gemm_ws(S, hbuf, W_hh, False, False, 1.0, 0.0, _NONE, _IDENTITY, 0.0, ap, bp, 1)
        for i in prange(n):
            g = Gc[i, t]
            x = XP[i, t]
            s = S[i]
            ho = Hs[i, t]
            if cell == _RNN:
                for j in range(h):
                    p = np.float32(np.float32(x[j] + s[j]) + np.float32(b_ih[j] + b_hh[j]))
                    g[j] = p
                    ho[j] = math.tanh(p) if act == _TANH else (p if p > 0.0 else 0.0 * p)
            elif cell == _GRU:
                for j in range(h):
                    r = _sigm(np.float32(x[j] + s[j]) + np.float32(b_ih[j] + b_hh[j]))
                    z = _sigm(np.float32(x[h + j] + s[h + j])
                              + np.float32(b_ih[h + j] + b_hh[h + j]))
                    hn = np.float32(s[2 * h + j] + b_hh[2 * h + j])
                    nn = math.tanh(np.float32(x[2 * h + j] + b_ih[2 * h + j]) + r * hn)
                    hv = 0.0 if first else Hs[i, t - 1, j]
                    ho[j] = (1.0 - z) * nn + z * hv
                    g[j] = r
                    g[h + j] = z
                    g[2 * h + j] = hn
                    g[3 * h + j] = nn
            else:
                for j in range(h):
                    ig = _sigm(np.float32(x[j] + s[j]) + np.float32(b_ih[j] + b_hh[j]))
                    fg = _sigm(np.float32(x[h + j] + s[h + j])
                               + np.float32(b_ih[h + j] + b_hh[h + j]))
                    gg = math.tanh(np.float32(x[2 * h + j] + s[2 * h + j])
                                   + np.float32(b_ih[2 * h + j] + b_hh[2 * h + j]))
                    og = _sigm(np.float32(x[3 * h + j] + s[3 * h + j])
                               + np.float32(b_ih[3 * h + j] + b_hh[3 * h + j]))
                    cp = 0.0 if first else Gc[i, t - 1, 4 * h + j]
                    cv = np.float32(fg * cp + ig * gg)
                    ho[j] = og * math.tanh(cv)
                    g[j] = ig
                    g[h + j] = fg
                    g[2 * h + j] = gg
                    g[3 * h + j] = og
                    g[4 * h + j] = cv


@njit(cache=True, parallel=True)
def _column_sums(db, M, acc):
    """db = acc + column sums of M (rows, cols), in float64 (acc may be empty)."""
    rows = M.shape[0]
    for j in prange(db.size):
        s = acc[j] if acc.size > 0 else 0.0
        for i in range(rows):
            s += M[i, j]
        db[j] = s


@njit(cache=True, parallel=True)
def _accumulate_columns(acc, M):
    for j in prange(acc.size):
        s = 0.0
        for i in range(M.shape[0]):
            s += M[i, j]
        acc[j] += s


@njit(cache=True, parallel=True)
def _add_rows(dst, src):
    for i in prange(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[i, j] += src[i, j]


@njit(cache=True, parallel=True, fastmath=_EXACT)
def _backward(dX, dW_ih, dW_hh, db_ih, db_hh, dHs, Gc, X, W_ih, W_hh, Hs, cell, act, ap, bp,
              D, hbuf, E, DG, acc):
    """Scratch: D (n, GH) the step's hidden-gate gradients, hbuf (n, h), E
    (n, h) the push to the previous step, DG (n, L, GH) the input-gate
    gradients, acc (GH) float64 the hidden biases' sums."""
    n, L, c = X.shape
    h = W_hh.shape[0]
    GH, KH = _dims(cell, h)
    dW_hh[:, :] = 0.0
    acc[:] = 0.0
    for t in range(L - 1, -1, -1):
        first, last = t == 0, t == L - 1
        for i in prange(n):
            g = Gc[i, t]
            dg = DG[i, t]
            dd = D[i]
            dh = dHs[i, t]
            if cell == _RNN:
                for j in range(h):
                    hc = Hs[i, t, j]
                    if act == _TANH:
                        v = dh[j] * (1.0 - hc * hc)
                    else:
                        v = dh[j] if hc > 0.0 else 0.0 * dh[j]
                    dg[j] = v
                    dd[j] = v
            elif cell == _GRU:
                for j in range(h):
                    r, z, hn, nn = g[j], g[h + j], g[2 * h + j], g[3 * h + j]
                    hv = 0.0 if first else Hs[i, t - 1, j]
                    d = dh[j]
                    dnp = np.float32(d * (1.0 - z) * (1.0 - nn * nn))
                    dzp = np.float32(d * (hv - nn) * z * (1.0 - z))
                    drp = np.float32(dnp * hn * r * (1.0 - r))
                    dg[j] = drp
                    dg[h + j] = dzp
                    dg[2 * h + j] = dnp
                    dd[j] = drp
                    dd[h + j] = dzp
                    dd[2 * h + j] = dnp * r
                    if not first:
                        dHs[i, t - 1, j] += d * z
            else:
                for j in range(h):
                    ig, fg, gg, og = g[j], g[h + j], g[2 * h + j], g[3 * h + j]
                    tc = math.tanh(g[4 * h + j])
                    d = dh[j]
                    carry = 0.0 if last else Gc[i, t + 1, 4 * h + j]
                    dc = np.float32(d * og * (1.0 - tc * tc) + carry)
                    cp = 0.0 if first else Gc[i, t - 1, 4 * h + j]
                    dg[j] = dd[j] = dc * gg * ig * (1.0 - ig)
                    dg[h + j] = dd[h + j] = dc * cp * fg * (1.0 - fg)
                    dg[2 * h + j] = dd[2 * h + j] = dc * ig * (1.0 - gg * gg)
                    dg[3 * h + j] = dd[3 * h + j] = d * tc * og * (1.0 - og)
                    g[4 * h + j] = dc * fg  # c_t is no longer needed: the carry
        _accumulate_columns(acc, D)
        if first:
            break
        _gemm_ws(E, D, W_hh, False, True, 1.0, 0.0, _NONE, _IDENTITY, 0.0, ap, bp, 1)
        _add_rows(dHs[:, t - 1, :], E)
        _copy_rows(hbuf, Hs[:, t - 1, :])
        _gemm_ws(dW_hh, hbuf, D, True, False, 1.0, 1.0, _NONE, _IDENTITY, 0.0, ap, bp, 1)
    DG2 = DG.reshape((n * L, GH))
    _gemm_ws(dW_ih, X.reshape((n * L, c)), DG2, True, False, 1.0, 0.0, _NONE, _IDENTITY, 0.0,
             ap, bp, 1)
    if db_ih.size > 0:
        _column_sums(db_ih, DG2, acc[:0])
    if db_hh.size > 0:
        for j in range(GH):
            db_hh[j] = acc[j]
    if dX.size > 0:
        _gemm_ws(dX.reshape((n * L, c)), DG2, W_ih, False, True, 1.0, 0.0, _NONE, _IDENTITY,
                 0.0, ap, bp, 1)


@njit(cache=True)
def _scratch_arrays(n, L, c, h, cell):
    GH, KH = _dims(cell, h)
    a, b = _pack_sizes(n, L, c, h, cell)
    return (np.empty(a, np.float32), np.empty(b, np.float32), np.empty((n, GH), np.float32),
            np.empty((n, h), np.float32), np.empty((n, h), np.float32),
            np.empty((n, L, GH), np.float32), np.empty(GH, np.float64))


def rnn_forward(Hs, G, X, W_ih, W_hh, b_ih, b_hh, cell, activation):
    n, L, c = X.shape
    ap, bp, S, hbuf, _, XP, _ = _scratch_arrays(n, L, c, W_hh.shape[0], cell)
    _forward(Hs, G, X, W_ih, W_hh, b_ih, b_hh, cell, activation, ap, bp, S, hbuf, XP)


def rnn_backward(dX, dW_ih, dW_hh, db_ih, db_hh, dHs, G, X, W_ih, W_hh, Hs, cell, activation):
    n, L, c = X.shape
    ap, bp, D, hbuf, E, DG, acc = _scratch_arrays(n, L, c, W_hh.shape[0], cell)
    _backward(np.empty((0, 0, 0), np.float32) if dX is None else dX, dW_ih, dW_hh,
              _NONE if db_ih is None else db_ih, _NONE if db_hh is None else db_hh, dHs, G, X,
              W_ih, W_hh, Hs, cell, activation, ap, bp, D, hbuf, E, DG, acc)


# ---- the RNN record of a plan (numba model_epoch; spec.rnn_record_regions) ----------

_F = spec.F
_RX, _RY, _RDX, _RDY = _F["x"], _F["y"], _F["dx"], _F["dy"]
_RAUX, _RDAUX, _RPARAM, _RBIAS = _F["aux"], _F["daux"], _F["param"], _F["bias"]
_RW, _RC, _ROC, _RACT = _F["w"], _F["c"], _F["oc"], _F["act"]
_RCELL, _RPHH, _RBHH, _RCACHE = _F["cell"], _F["param_hh"], _F["bias_hh"], _F["cache"]
_OP_RNN = int(spec.Op.RNN)


@njit(cache=True)
def record_scratch(plan, bs):
    """(pack a, pack b, floats of the four scratch arrays, acc) an epoch's
    RNN records need at most: zeros when there is none."""
    pa, pb, s1, s2, s4, s5 = 0, 0, 0, 0, 0, 0
    for j in range(plan.shape[0]):
        r = plan[j]
        if r[0] != _OP_RNN:
            continue
        L, c, h, cell = r[_RW], r[_RC], r[_ROC], r[_RCELL]
        GH, KH = _dims(cell, h)
        a, b = _pack_sizes(bs, L, c, h, cell)
        pa, pb = max(pa, a), max(pb, b)
        s1, s2, s4, s5 = max(s1, bs * GH), max(s2, bs * h), max(s4, bs * L * GH), max(s5, GH)
    return pa, pb, s1, s2, s4, s5


@njit(cache=True)
def _record_views(r, m, ws, params):
    L, c, h, cell = r[_RW], r[_RC], r[_ROC], r[_RCELL]
    GH, KH = _dims(cell, h)
    W_ih = params[r[_RPARAM]:r[_RPARAM] + c * GH].reshape((c, GH))
    W_hh = params[r[_RPHH]:r[_RPHH] + h * GH].reshape((h, GH))
    Hs = ws[r[_RAUX]:r[_RAUX] + m * L * h].reshape((m, L, h))
    Gc = ws[r[_RCACHE]:r[_RCACHE] + m * L * KH].reshape((m, L, KH))
    return L, c, h, cell, GH, W_ih, W_hh, Hs, Gc


@njit(cache=True)
def record_forward(r, xin, m, ws, params, ap, bp, f1, f2, f3, f4, acc):
    L, c, h, cell, GH, W_ih, W_hh, Hs, Gc = _record_views(r, m, ws, params)
    _forward(Hs, Gc, xin.reshape((m, L, c)), W_ih, W_hh, params[r[_RBIAS]:r[_RBIAS] + GH],
             params[r[_RBHH]:r[_RBHH] + GH], cell, r[_RACT], ap, bp,
             f1[:m * GH].reshape((m, GH)), f2[:m * h].reshape((m, h)),
             f4[:m * L * GH].reshape((m, L, GH)))
    if r[_RAUX] != r[_RY]:
        y = ws[r[_RY]:r[_RY] + m * h]
        for i in range(m):
            for j in range(h):
                y[i * h + j] = Hs[i, L - 1, j]


@njit(cache=True)
def record_backward(r, xin, m, ws, params, grads, ap, bp, f1, f2, f3, f4, acc):
    L, c, h, cell, GH, W_ih, W_hh, Hs, Gc = _record_views(r, m, ws, params)
    dHs = ws[r[_RDAUX]:r[_RDAUX] + m * L * h].reshape((m, L, h))
    if r[_RDAUX] != r[_RDY]:
        dy = ws[r[_RDY]:r[_RDY] + m * h]
        dHs[:, :, :] = 0.0
        for i in range(m):
            for j in range(h):
                dHs[i, L - 1, j] = dy[i * h + j]
    dX = (ws[r[_RDX]:r[_RDX] + m * L * c].reshape((m, L, c)) if r[_RDX] >= 0
          else np.empty((0, 0, 0), np.float32))
    _backward(dX, grads[r[_RPARAM]:r[_RPARAM] + c * GH].reshape((c, GH)),
              grads[r[_RPHH]:r[_RPHH] + h * GH].reshape((h, GH)),
              grads[r[_RBIAS]:r[_RBIAS] + GH], grads[r[_RBHH]:r[_RBHH] + GH], dHs, Gc,
              xin.reshape((m, L, c)), W_ih, W_hh, Hs, cell, r[_RACT], ap, bp,
              f1[:m * GH].reshape((m, GH)), f2[:m * h].reshape((m, h)),
              f3[:m * h].reshape((m, h)), f4[:m * L * GH].reshape((m, L, GH)), acc[:GH])
