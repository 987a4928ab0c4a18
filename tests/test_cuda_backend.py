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
