"""The cuda backend's IEEE edge values against the reference.

Python's max/min (the simulator) and fmaxf/fminf (a GPU) drop a NaN, so the
cuda kernels compare explicitly; these cases pin NaN and +-Inf through the
formulas that compare: relu, sign, leaky_relu and step (elementwise and in
the gemm's store), clip, mae's sign and adamax's running maximum.
"""

import numpy as np
import pytest

from .conftest import require

EDGE = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-40, 1e30, -1e30, 1.0, -2.5],
                np.float32)


@pytest.fixture
def cu():
    return require("cuda")


@pytest.mark.parametrize("activation", ["relu", "sign", "leaky_relu", "step"])
def test_comparing_activations_keep_the_references_nan_and_inf(cu, ref, activation):
    want = ref.activation_forward(np.empty_like(EDGE), EDGE, activation=activation)
    got = cu.activation_forward(np.empty_like(EDGE), EDGE, activation=activation)
    np.testing.assert_array_equal(cu.to_numpy(got), want)
    X, W = EDGE[:, None], np.ones((1, 1), np.float32)
    got = cu.dense_forward(np.empty_like(X), X, W, None, activation=activation)
    np.testing.assert_array_equal(cu.to_numpy(got)[:, 0], want)


def test_clip_keeps_nan(cu, ref):
    want, got = EDGE.copy(), EDGE.copy()
    ref.clip(want, -1.0, 2.0)
    cu.clip(got, -1.0, 2.0)
    np.testing.assert_array_equal(got, want)


def test_mae_backward_keeps_nan(cu, ref):
    T = np.zeros_like(EDGE)
    want, got = np.empty_like(EDGE), np.empty_like(EDGE)
    ref.mae_backward(want, EDGE, T)
    cu.mae_backward(got, EDGE, T)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("nan_state", [False, True])
def test_adamax_state_follows_a_nan_gradient(cu, ref, rng, nan_state):
    p = rng.uniform(-1, 1, EDGE.size).astype(np.float32)
    m = rng.uniform(-1, 1, EDGE.size).astype(np.float32)
    u = rng.uniform(0, 1, EDGE.size).astype(np.float32)
    if nan_state:  # a NaN already in u, under a finite gradient
        u[-1] = np.nan
    runs = []
    for k in (ref, cu):
        bufs = [p.copy(), m.copy(), u.copy()]
        k.adamax(bufs[0], EDGE, bufs[1], bufs[2], step=2, lr=0.01, beta1=0.9, beta2=0.99,
                 eps=1e-8)
        runs.append(bufs)
    for want, got in zip(*runs):
        np.testing.assert_array_equal(got, want)


# ---- recurrent kernels (fastnn.kernels.cuda._rnn) against the reference ---------------
# Tiny shapes: the simulator runs a Python thread per CUDA thread.  Under it
# the step kernels' tile is 4, so H = 5 spans two tiles and the GRU's 3H = 15
# gate columns four.

_RNN_CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("gru", "tanh"), ("lstm", "tanh")]


def _rnn_case(cell, n, L, C, H, seed=0):
    from fastnn.kernels import spec

    code = spec.Cell[cell.upper()]
    gh, k = spec.RNN_GATES[code] * H, spec.RNN_CACHE[code] * H
    r = np.random.default_rng(seed)
    f32 = np.float32
    return dict(X=r.normal(size=(n, L, C)).astype(f32),
                W_ih=(0.6 * r.normal(size=(C, gh))).astype(f32),
                W_hh=(0.6 * r.normal(size=(H, gh))).astype(f32),
                b_ih=(0.5 * r.normal(size=gh)).astype(f32),
                b_hh=(0.5 * r.normal(size=gh)).astype(f32),
                dHs=r.normal(size=(n, L, H)).astype(f32), k=k)


def _rnn_run(kern, c, cell, act, dx=True, biases=True):
    n, L, C = c["X"].shape
    H = c["W_hh"].shape[0]
    Hs, G = np.zeros((n, L, H), np.float32), np.zeros((n, L, c["k"]), np.float32)
    kern.rnn_forward(Hs, G, c["X"], c["W_ih"], c["W_hh"], c["b_ih"], c["b_hh"], cell=cell,
                     activation=act)
    out = {"Hs": Hs, "G": G.copy()}
    grads = {"dW_ih": np.zeros_like(c["W_ih"]), "dW_hh": np.zeros_like(c["W_hh"]),
             "db_ih": np.zeros_like(c["b_ih"]) if biases else None,
             "db_hh": np.zeros_like(c["b_hh"]) if biases else None,
             "dX": np.zeros_like(c["X"]) if dx else None}
    kern.rnn_backward(grads["dX"], grads["dW_ih"], grads["dW_hh"], grads["db_ih"],
                      grads["db_hh"], c["dHs"].copy(), G, c["X"], c["W_ih"], c["W_hh"], Hs,
                      cell=cell, activation=act)
    out.update((k, v) for k, v in grads.items() if v is not None)
    return out


@pytest.mark.parametrize("cell,act", _RNN_CELLS, ids=[f"{c}_{a}" for c, a in _RNN_CELLS])
def test_rnn_kernels_match_the_reference(cu, ref, cell, act):
    """Forward (states and the gate cache the backward reads) and every
    gradient of BPTT, with a gradient at every step."""
    c = _rnn_case(cell, 3, 4, 2, 5)
    want, got = _rnn_run(ref, c, cell, act), _rnn_run(cu, c, cell, act)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_rnn_kernels_one_step_and_optional_outputs(cu, ref):
    """L = 1 (no hidden product, dW_hh = 0), no dX, no bias gradients, and
    device arrays in and out (what the trainer passes)."""
    for cell, L, dx, biases in (("lstm", 1, True, True), ("gru", 3, False, False)):
        c = _rnn_case(cell, 2, L, 3, 2, seed=L)
        want = _rnn_run(ref, c, cell, "tanh", dx, biases)
        got = _rnn_run(cu, c, cell, "tanh", dx, biases)
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{cell} {name}")
        if L == 1:
            assert not got["dW_hh"].any()
    c = _rnn_case("rnn", 2, 3, 2, 3, seed=9)
    d = {k: cu.asarray(v) for k, v in c.items() if k != "k"}
    Hs, G = cu.zeros((2, 3, 3)), cu.zeros((2, 3, c["k"]))
    got = cu.rnn_forward(Hs, G, d["X"], d["W_ih"], d["W_hh"], d["b_ih"], d["b_hh"], cell="rnn")
    assert got is Hs
    np.testing.assert_allclose(cu.to_numpy(Hs), _rnn_run(ref, c, "rnn", "tanh")["Hs"],
                               rtol=1e-5, atol=1e-6)


def test_rnn_layers_train_on_cuda_as_on_the_reference():
    """A GRU(sequences) -> LSTM -> Dense model trained inside the compiled
    epoch (the RNN records on cuda's kernels) with Adam and clipping ==
    the reference's batch-by-batch trajectory.  (test_recurrent covers a
    GRU stack batch by batch and in the epoch.)"""
    import fastnn

    require("cuda")
    r = np.random.default_rng(2)
    X, y = r.normal(size=(8, 3, 2)).astype(np.float32), r.integers(0, 3, 8)

    def fit(backend, fused):
        model = fastnn.Sequential([fastnn.GRU(2, 3, return_sequences=True), fastnn.LSTM(3, 2),
                                   fastnn.Dense(2, 3)], seed=1, backend=backend,
                                  input_shape=(3, 2))
        tr = fastnn.Trainer(model, "softmax_cross_entropy", fastnn.optim.Adam(lr=0.05),
                            fused=fused, clip_norm=0.5)
        hist = tr.fit(X, y, epochs=1, batch_size=4, shuffle=True, seed=3, verbose=False)
        return np.array(model.get_params()), hist.history["loss"]

    want, want_loss = fit("reference", False)
    got, got_loss = fit("cuda", True)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
