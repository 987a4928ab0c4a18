"""The cuda backend's recurrent kernels (rnn_forward / rnn_backward; the
contract is the reference's, fastnn.kernels._reference_rnn).

Forward: the input projection of every step is one gemm into the gate cache
G (``x W_ih + b_ih`` into G[:, :, :G*H]); then one launch per step of a tiled
kernel that computes the step's hidden product ``h W_hh`` for every gate of
a (sample, unit) tile and, in its epilogue, adds b_hh and the cached
projection, applies the gates and writes the new state and the cache
entries in place (rnn p; gru [r, z, hn, n]; lstm [i, f, g, o, c]).

Backward (through time): one launch per step, from the last.  The step's
kernel first forms the carry ``dGh_{t+1} W_hh^T`` (a tiled product over the
gate columns of step t+1's gradient) and, in its epilogue, the gate
gradients of step t, written over the cache: G[:, t, :G*H] becomes dGx (the
input-side gradient of the pre-activations) and, for the GRU, G[:, t, 3H:]
the hidden side of the n gate (dn * r), so that dGh is columns [0, 2H) and
[3H, 4H); the LSTM's cell gradient dc * f travels in G[:, t, 4H:], the GRU's
direct term dh * z in dHs[:, t-1].  After the loop the weight gradients are
one product each over all steps (dW_ih = X^T dGx; dW_hh by a kernel that
pairs step t-1's state with step t's gradient), the bias gradients column
sums, dX one gemm.  Nothing crosses to the host: the step loop only
launches.
"""

import math

from numba import cuda, float32, float64

from .. import spec
from ._device import SIGMOID, TANH, act, maximum
from ._gemm import TILE as _GEMM_TILE, _MAX_GRID_Y, launch_gemm
from ._launch import SIMULATOR, dummy, stages_outputs

RNN = int(spec.Cell.RNN)
GRU = int(spec.Cell.GRU)
LSTM = int(spec.Cell.LSTM)
_MAX_GATES = 4
# Tile edge of these kernels and of the gemms they launch: the gemm's on a
# GPU; 4 under the simulator (one Python thread per CUDA thread: 16 threads a
# block instead of 256, and tiny test shapes still span several tiles).
TILE = 4 if SIMULATOR else _GEMM_TILE
_TILE_PAD = TILE + 1


@cuda.jit(device=True)
def _sig(x):
    return act(SIGMOID, x, float32(0.0))


@cuda.jit
def _forward_step_kernel(Hs, G, W_hh, b_hh, t, cell, code):
    """Step t: acc_g = Hs[b, t-1] . W_hh[:, g*H + j] for each gate g (zero at
    t = 0), then the cell's gates for (sample b, unit j).  Thread (tx, ty) of
    a TILE x TILE block owns unit j = x-tile + tx of sample b = y-tile + ty;
    rows loop over the grid's y limit; every thread reaches every
    syncthreads."""
    sH = cuda.shared.array((TILE, _TILE_PAD), float32)
    sW = cuda.shared.array((_MAX_GATES, TILE, _TILE_PAD), float32)
    acc = cuda.local.array(_MAX_GATES, float32)
    n, L, H = Hs.shape
    ng = W_hh.shape[1] // H
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    j = cuda.blockIdx.x * TILE + tx
    row0 = cuda.blockIdx.y * TILE
    zero = float32(0.0)
    one = float32(1.0)
    while row0 < n:
        b = row0 + ty
        for g in range(_MAX_GATES):
            acc[g] = zero
        if t > 0:
            for kt in range((H + TILE - 1) // TILE):
                k = kt * TILE + tx
                sH[ty, tx] = Hs[b, t - 1, k] if b < n and k < H else zero
                kr = kt * TILE + ty
                for g in range(ng):
                    sW[g, ty, tx] = W_hh[kr, g * H + j] if kr < H and j < H else zero
                cuda.syncthreads()
                for q in range(TILE):
                    hv = sH[ty, q]
                    for g in range(ng):
                        acc[g] += hv * sW[g, q, tx]
                cuda.syncthreads()
        if b < n and j < H:
            if cell == RNN:
                p = G[b, t, j] + acc[0] + b_hh[j]
                G[b, t, j] = p
                Hs[b, t, j] = math.tanh(p) if code == TANH else maximum(p, zero)
            elif cell == GRU:
                r = _sig(G[b, t, j] + acc[0] + b_hh[j])
                z = _sig(G[b, t, H + j] + acc[1] + b_hh[H + j])
                hn = acc[2] + b_hh[2 * H + j]
                nn = math.tanh(G[b, t, 2 * H + j] + r * hn)
                hprev = Hs[b, t - 1, j] if t > 0 else zero
                G[b, t, j] = r
                G[b, t, H + j] = z
                G[b, t, 2 * H + j] = hn
                G[b, t, 3 * H + j] = nn
                Hs[b, t, j] = (one - z) * nn + z * hprev
            else:
                i = _sig(G[b, t, j] + acc[0] + b_hh[j])
                f = _sig(G[b, t, H + j] + acc[1] + b_hh[H + j])
                gg = math.tanh(G[b, t, 2 * H + j] + acc[2] + b_hh[2 * H + j])
                o = _sig(G[b, t, 3 * H + j] + acc[3] + b_hh[3 * H + j])
                cprev = G[b, t - 1, 4 * H + j] if t > 0 else zero
                c = f * cprev + i * gg
                G[b, t, j] = i
                G[b, t, H + j] = f
                G[b, t, 2 * H + j] = gg
                G[b, t, 3 * H + j] = o
                G[b, t, 4 * H + j] = c
                Hs[b, t, j] = o * math.tanh(c)
        row0 += cuda.gridDim.y * TILE


@cuda.jit(device=True)
def _dgh_column(k, H, cell):
    """The cache column of gate-gradient column k of dGh (the GRU's n gate
    sits one block further: columns 3H..4H)."""
    return k + H if cell == GRU and k >= 2 * H else k


@cuda.jit
def _backward_step_kernel(dHs, G, Hs, W_hh, t, cell, code, carry):
    """Step t of BPTT for (sample b, unit i): dh = dHs[b, t, i] (+ the carry
    sum_k dGh[b, t+1, k] W_hh[i, k] when `carry`), then the gate gradients
    over G[b, t] (module docstring).  Tiles as _forward_step_kernel."""
    sA = cuda.shared.array((TILE, _TILE_PAD), float32)   # dGh[b, t+1, k]: [b, k]
    sB = cuda.shared.array((TILE, _TILE_PAD), float32)   # W_hh[i, k]: [k, i]
    n, L, H = Hs.shape
    GH = W_hh.shape[1]
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    col0 = cuda.blockIdx.x * TILE
    i = col0 + tx
    row0 = cuda.blockIdx.y * TILE
    zero = float32(0.0)
    one = float32(1.0)
    while row0 < n:
        b = row0 + ty
        acc = float32(0.0)
        if carry:
            for kt in range((GH + TILE - 1) // TILE):
                k = kt * TILE + tx
                sA[ty, tx] = G[b, t + 1, _dgh_column(k, H, cell)] if b < n and k < GH else zero
                ii = col0 + ty
                sB[tx, ty] = W_hh[ii, k] if ii < H and k < GH else zero
                cuda.syncthreads()
                for q in range(TILE):
                    acc += sA[ty, q] * sB[q, tx]
                cuda.syncthreads()
        if b < n and i < H:
            dh = dHs[b, t, i] + acc
            if cell == RNN:
                h = Hs[b, t, i]
                if code == TANH:
                    G[b, t, i] = dh * (one - h * h)
                else:
                    G[b, t, i] = dh if h > zero else dh * zero
            elif cell == GRU:
                r = G[b, t, i]
                z = G[b, t, H + i]
                hn = G[b, t, 2 * H + i]
                nn = G[b, t, 3 * H + i]
                hprev = Hs[b, t - 1, i] if t > 0 else zero
                dnp = dh * (one - z) * (one - nn * nn)
                G[b, t, i] = dnp * hn * r * (one - r)
                G[b, t, H + i] = dh * (hprev - nn) * z * (one - z)
                G[b, t, 2 * H + i] = dnp
                G[b, t, 3 * H + i] = dnp * r
                if t > 0:
                    dHs[b, t - 1, i] += dh * z
            else:
                ig = G[b, t, i]
                f = G[b, t, H + i]
                gg = G[b, t, 2 * H + i]
                o = G[b, t, 3 * H + i]
                c = G[b, t, 4 * H + i]
                cprev = G[b, t - 1, 4 * H + i] if t > 0 else zero
                dc_next = G[b, t + 1, 4 * H + i] if t + 1 < L else zero
                tc = math.tanh(c)
                dc = dh * o * (one - tc * tc) + dc_next
                G[b, t, i] = dc * gg * ig * (one - ig)
                G[b, t, H + i] = dc * cprev * f * (one - f)
                G[b, t, 2 * H + i] = dc * ig * (one - gg * gg)
                G[b, t, 3 * H + i] = dh * tc * o * (one - o)
                G[b, t, 4 * H + i] = dc * f
        row0 += cuda.gridDim.y * TILE


@cuda.jit
def _hidden_weight_grad_kernel(dW, Hs, G, cell):
    """dW[i, j] = sum over samples b and steps t >= 1 of
    Hs[b, t-1, i] * dGh[b, t, j]: one tiled product over all steps (the
    reduction index q runs over (b, t - 1) pairs)."""
    sA = cuda.shared.array((TILE, _TILE_PAD), float32)   # [i, q]
    sB = cuda.shared.array((TILE, _TILE_PAD), float32)   # [q, j]
    n, L, H = Hs.shape
    GH = dW.shape[1]
    steps = L - 1
    total = n * steps
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    j = cuda.blockIdx.x * TILE + tx
    row0 = cuda.blockIdx.y * TILE
    zero = float32(0.0)
    while row0 < H:
        i = row0 + ty
        acc = float32(0.0)
        for qt in range((total + TILE - 1) // TILE):
            q = qt * TILE + ty           # (b, t-1) of the pair this thread loads
            ia = row0 + tx
            if q < total:
                bq = q // steps
                sq = q - bq * steps
                sA[tx, ty] = Hs[bq, sq, ia] if ia < H else zero
                sB[ty, tx] = G[bq, sq + 1, _dgh_column(j, H, cell)] if j < GH else zero
            else:
                sA[tx, ty] = zero
                sB[ty, tx] = zero
            cuda.syncthreads()
            for qq in range(TILE):
                acc += sA[ty, qq] * sB[qq, tx]
            cuda.syncthreads()
        if i < H and j < GH:
            dW[i, j] = acc
        row0 += cuda.gridDim.y * TILE


@cuda.jit
def _bias_grad_kernel(db_ih, db_hh, G, gh, cell, has_ih, has_hh):
    """db_ih[j] = sum over samples and steps of dGx[:, :, j], db_hh[j] of
    dGh (the same but for the GRU's n gate), in float64 and a fixed order;
    one thread per gate column."""
    n, L, K = G.shape
    H = K // 4 if cell == GRU else 0
    for j in range(cuda.grid(1), gh, cuda.gridsize(1)):
        sx = 0.0
        for b in range(n):
            for t in range(L):
                sx += float64(G[b, t, j])
        if has_ih:
            db_ih[j] = sx
        if has_hh:
            if cell == GRU and j >= 2 * H:
                sh = 0.0
                for b in range(n):
                    for t in range(L):
                        sh += float64(G[b, t, j + H])
                db_hh[j] = sh
            else:
                db_hh[j] = sx


def _grid(cols, rows):
    return (-(-cols // TILE), min(max(1, -(-rows // TILE)), _MAX_GRID_Y))


@stages_outputs
def rnn_forward(Hs, G, X, W_ih, W_hh, b_ih, b_hh, cell, activation):
    n, L, C = X.shape
    H = W_hh.shape[0]
    GH = W_hh.shape[1]
    K = G.shape[2]
    # x W_ih + b_ih of every step, into the cache's first G*H columns
    launch_gemm(X.reshape(n * L, C), W_ih, G.reshape(n * L, K)[:, :GH], False, False, 1.0, 0.0,
                bias=b_ih, tile=TILE)
    grid = _grid(H, n)
    cell, code = int(cell), int(activation)
    for t in range(L):
        _forward_step_kernel[grid, (TILE, TILE)](Hs, G, W_hh, b_hh, t, cell, code)


@stages_outputs
def rnn_backward(dX, dW_ih, dW_hh, db_ih, db_hh, dHs, G, X, W_ih, W_hh, Hs, cell, activation):
    n, L, C = X.shape
    H = W_hh.shape[0]
    GH = W_hh.shape[1]
    K = G.shape[2]
    grid = _grid(H, n)
    cell, code = int(cell), int(activation)
    for t in range(L - 1, -1, -1):
        _backward_step_kernel[grid, (TILE, TILE)](dHs, G, Hs, W_hh, t, cell, code, t < L - 1)
    dGx = G.reshape(n * L, K)[:, :GH]
    launch_gemm(X.reshape(n * L, C), dGx, dW_ih, True, False, 1.0, 0.0, tile=TILE)
    _hidden_weight_grad_kernel[_grid(GH, H), (TILE, TILE)](dW_hh, Hs, G, cell)
    if db_ih is not None or db_hh is not None:
        unused = dummy()  # stands in for an absent bias gradient (never written)
        threads = TILE * TILE
        _bias_grad_kernel[-(-GH // threads), threads](
            unused if db_ih is None else db_ih, unused if db_hh is None else db_hh, G, GH, cell,
            db_ih is not None, db_hh is not None)
    if dX is not None:
        launch_gemm(dGx, W_ih, dX.reshape(n * L, C), False, True, 1.0, 0.0, tile=TILE)
