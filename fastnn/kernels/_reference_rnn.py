"""The reference's recurrent kernels (imported into fastnn.kernels.reference;
their docstrings document the public kernels rnn_forward / rnn_backward)."""

import numpy as np

from .spec import Activation as A, Cell


def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _dtype(out):
    return np.float64 if out.dtype == np.float64 else np.float32


def rnn_forward(Hs, G, X, W_ih, W_hh, b_ih, b_hh, cell, activation):
    """A recurrent layer over whole sequences, from a zero initial state.

    X (N, L, C) channels-last; W_ih (C, G*H), W_hh (H, G*H), b_ih, b_hh
    (G*H): torch's ``weight_ih_l0.T``, ``weight_hh_l0.T`` and biases, gates
    in torch's order (G = 1, 3, 4 for cell "rnn", "gru", "lstm").  Writes
    every step's hidden state into Hs (N, L, H) and, for the backward, the
    gate cache G (N, L, K*H), per sample and step (K = spec.RNN_CACHE):

    * rnn (activation tanh or relu): ``p = x W_ih + b_ih + h W_hh + b_hh``,
      ``h' = act(p)``; G holds p.
    * gru: ``r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)``, z likewise,
      ``hn = h W_hn + b_hn``, ``n = tanh(x W_in + b_in + r * hn)``,
      ``h' = (1 - z) * n + z * h``; G holds [r, z, hn, n].
    * lstm: i, f, o sigmoid and g tanh of ``x W_ih + b_ih + h W_hh + b_hh``,
      ``c' = f * c + i * g``, ``h' = o * tanh(c')``; G holds [i, f, g, o, c'].

    The input projection of all steps is one product (X as (N*L, C)).
    """
    n, L, C = X.shape
    H = W_hh.shape[0]
    dt = _dtype(Hs)
    X, W_ih, W_hh, b_ih, b_hh = (a.astype(dt, copy=False) for a in (X, W_ih, W_hh, b_ih, b_hh))
    xp = (X.reshape(n * L, C) @ W_ih + b_ih).reshape(n, L, -1)
    h = np.zeros((n, H), dt)
    c = np.zeros((n, H), dt)
    for t in range(L):
        hp = h @ W_hh + b_hh
        if cell == Cell.RNN:
            p = xp[:, t] + hp
            h = np.tanh(p) if activation == A.TANH else np.maximum(p, 0)
            G[:, t] = p
        elif cell == Cell.GRU:
            r = _sigmoid(xp[:, t, :H] + hp[:, :H])
            z = _sigmoid(xp[:, t, H:2 * H] + hp[:, H:2 * H])
            hn = hp[:, 2 * H:]
            nn = np.tanh(xp[:, t, 2 * H:] + r * hn)
            h = (1 - z) * nn + z * h
            G[:, t] = np.concatenate([r, z, hn, nn], axis=1)
        else:
            p = xp[:, t] + hp
            i, f = _sigmoid(p[:, :H]), _sigmoid(p[:, H:2 * H])
            g, o = np.tanh(p[:, 2 * H:3 * H]), _sigmoid(p[:, 3 * H:])
            c = f * c + i * g
            h = o * np.tanh(c)
            G[:, t] = np.concatenate([i, f, g, o, c], axis=1)
        Hs[:, t] = h
    return Hs


def rnn_backward(dX, dW_ih, dW_hh, db_ih, db_hh, dHs, G, X, W_ih, W_hh, Hs, cell, activation):
    """Backpropagation through time of rnn_forward.

    dHs (N, L, H): the loss gradient with respect to every step's hidden
    state (zeros but the last step for a layer that returns the last state
    only).  Writes (overwriting) dW_ih, dW_hh, db_ih, db_hh (either bias
    gradient may be None) and dX (N, L, C) if given, from the forward's Hs
    and gate cache G.  dHs and G are scratch: overwritten with unspecified
    values.
    """
    n, L, C = X.shape
    H = W_hh.shape[0]
    dt = _dtype(dW_ih)
    X, W_ih, W_hh, Hs, G, dHs_ = (np.asarray(a, dt) for a in (X, W_ih, W_hh, Hs, G, dHs))
    GH = W_hh.shape[1]
    dGx = np.zeros((n, L, GH), dt)
    dGh = np.zeros((n, L, GH), dt)
    carry = np.zeros((n, H), dt)
    dc_next = np.zeros((n, H), dt)
    zero = np.zeros((n, H), dt)
    for t in range(L - 1, -1, -1):
        dh = dHs_[:, t] + carry
        hprev = Hs[:, t - 1] if t else zero
        direct = 0
        if cell == Cell.RNN:
            h = Hs[:, t]
            dp = dh * ((1 - h * h) if activation == A.TANH else (h > 0).astype(dt))
            dgx = dgh = dp
        elif cell == Cell.GRU:
            r, z, hn, nn = (G[:, t, k * H:(k + 1) * H] for k in range(4))
            dnp = dh * (1 - z) * (1 - nn * nn)
            dzp = dh * (hprev - nn) * z * (1 - z)
            drp = dnp * hn * r * (1 - r)
            dgx = np.concatenate([drp, dzp, dnp], axis=1)
            dgh = np.concatenate([drp, dzp, dnp * r], axis=1)
            direct = dh * z
        else:
            i, f, g, o, c = (G[:, t, k * H:(k + 1) * H] for k in range(5))
            cprev = G[:, t - 1, 4 * H:] if t else zero
            tc = np.tanh(c)
            dc = dh * o * (1 - tc * tc) + dc_next
            dc_next = dc * f
            dgx = dgh = np.concatenate([dc * g * i * (1 - i), dc * cprev * f * (1 - f),
                                        dc * i * (1 - g * g), dh * tc * o * (1 - o)], axis=1)
        dGx[:, t], dGh[:, t] = dgx, dgh
        carry = dgh @ W_hh.T + direct
    dW_hh[...] = sum(Hs[:, t - 1].T @ dGh[:, t] for t in range(1, L)) if L > 1 else 0
    dW_ih[...] = X.reshape(n * L, C).T @ dGx.reshape(n * L, GH)
    if db_ih is not None:
        db_ih[...] = dGx.sum(axis=(0, 1))
    if db_hh is not None:
        db_hh[...] = dGh.sum(axis=(0, 1))
    if dX is not None:
        dX[...] = (dGx.reshape(n * L, GH) @ W_ih.T).reshape(n, L, C)


# ---- the RNN record of a plan (reference.run_model_epoch) ------------------------------

def _views(k, e, r, xin, m):
    from .spec import F, RNN_CACHE, RNN_GATES
    ws, P, Gr = e.workspace, e.params, e.grads
    L, C, H, cell = r[F["w"]], r[F["c"]], r[F["oc"]], r[F["cell"]]
    GH = RNN_GATES[Cell(cell)] * H
    K = RNN_CACHE[Cell(cell)] * H

    def at(buf, field, size, shape):
        return buf[r[F[field]]:r[F[field]] + size].reshape(shape)

    v = dict(L=L, C=C, H=H, cell=cell, act=r[F["act"]],
             X=xin.reshape(m, L, C),
             W_ih=at(P, "param", C * GH, (C, GH)), W_hh=at(P, "param_hh", H * GH, (H, GH)),
             b_ih=at(P, "bias", GH, (GH,)), b_hh=at(P, "bias_hh", GH, (GH,)),
             dW_ih=at(Gr, "param", C * GH, (C, GH)), dW_hh=at(Gr, "param_hh", H * GH, (H, GH)),
             db_ih=at(Gr, "bias", GH, (GH,)), db_hh=at(Gr, "bias_hh", GH, (GH,)),
             Hs=at(ws, "aux", m * L * H, (m, L, H)), dHs=at(ws, "daux", m * L * H, (m, L, H)),
             G=at(ws, "cache", m * L * K, (m, L, K)),
             sequences=r[F["aux"]] == r[F["y"]])
    return v


def _store(dst, host):
    """dst[...] = host (a host array) on a host or device array."""
    if isinstance(dst, np.ndarray):
        np.copyto(dst, host)
    else:
        dst.copy_to_device(np.ascontiguousarray(host, dtype=dst.dtype))


def record_forward(k, e, r, xin, m):
    """An RNN record forward (spec.rnn_record_regions): rnn_forward into Hs,
    then, unless the output is Hs itself, its last step into y."""
    from .spec import F
    v = _views(k, e, r, xin, m)
    k.rnn_forward(v["Hs"], v["G"], v["X"], v["W_ih"], v["W_hh"], v["b_ih"], v["b_hh"],
                  v["cell"], v["act"])
    if not v["sequences"]:
        y = e.workspace[r[F["y"]]:r[F["y"]] + m * v["H"]].reshape(m, v["H"])
        _store(y, k.to_numpy(v["Hs"])[:, -1])


def record_backward(k, e, r, xin, m):
    """An RNN record backward: dHs is dy itself (return_sequences) or zeros
    with dy at the last step; then rnn_backward (dx where asked for)."""
    from .spec import F
    v = _views(k, e, r, xin, m)
    if not v["sequences"]:
        dy = k.to_numpy(e.workspace[r[F["dy"]]:r[F["dy"]] + m * v["H"]]).reshape(m, v["H"])
        host = np.zeros((m, v["L"], v["H"]), dy.dtype)
        host[:, -1] = dy
        _store(v["dHs"], host)
    dX = None if r[F["dx"]] < 0 else e.workspace[r[F["dx"]]:r[F["dx"]] + m * v["L"] * v["C"]] \
        .reshape(m, v["L"], v["C"])
    k.rnn_backward(dX, v["dW_ih"], v["dW_hh"], v["db_ih"], v["db_hh"], v["dHs"], v["G"], v["X"],
                   v["W_ih"], v["W_hh"], v["Hs"], v["cell"], v["act"])
