"""Kernel benchmarks, per backend: GEMM on the MLP's training shapes and squares
(GFLOP/s), the fused dense layer, the small-image conv layers (forward +
backward, GFLOP/s), activations and optimizer updates (GB/s), softmax
cross-entropy.  Each checks its result against numpy / the reference
backend before it is timed."""

import numpy as np
import pytest

from fastnn.bench import workloads as wl
from fastnn import kernels

reference = kernels.get("reference")

MB = 1 << 20


def test_gemm(benchmark, backend, gemm_case):
    k = backend
    _, m, n, _, trans_a, trans_b = gemm_case
    A, B = wl.gemm_operands(gemm_case)
    dA, dB, C = k.asarray(A), k.asarray(B), k.empty((m, n))
    k.gemm(dA, dB, C, trans_a=trans_a, trans_b=trans_b)
    wl.assert_close(k.to_numpy(C), wl.gemm_expected(A, B, trans_a, trans_b), 1e-4,
                    f"{k.name} gemm {gemm_case[0]}")

    def run():
        k.gemm(dA, dB, C, trans_a=trans_a, trans_b=trans_b)
        wl.sync(k)

    benchmark(run)
    wl.record(benchmark, k, {"GFLOP/s": wl.gemm_flops(gemm_case) / 1e9})


def _dense_data(n, fan_in=784, fan_out=256, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, fan_in), dtype=np.float32)
    W = rng.standard_normal((fan_in, fan_out), dtype=np.float32) * np.float32(0.05)
    b = rng.standard_normal(fan_out, dtype=np.float32) * np.float32(0.1)
    dY = rng.standard_normal((n, fan_out), dtype=np.float32)
    return X, W, b, dY


@pytest.mark.parametrize("n", wl.TRAIN_BATCHES)
def test_dense_forward_relu(benchmark, backend, n):
    k = backend
    X, W, b, _ = _dense_data(n)
    Y_ref = np.empty((n, 256), np.float32)
    reference.dense_forward(Y_ref, X, W, b, activation="relu")
    dX, dW, db, Y = k.asarray(X), k.asarray(W), k.asarray(b), k.empty((n, 256))
    k.dense_forward(Y, dX, dW, db, activation="relu")
    wl.assert_close(k.to_numpy(Y), Y_ref, 1e-4, f"{k.name} dense_forward")

    def run():
        k.dense_forward(Y, dX, dW, db, activation="relu")
        wl.sync(k)

    benchmark(run)
    wl.record(benchmark, k, {"GFLOP/s": 2.0 * n * 784 * 256 / 1e9})


@pytest.mark.parametrize("n", wl.TRAIN_BATCHES)
def test_dense_backward_relu(benchmark, backend, n):
    k = backend
    X, W, b, dY = _dense_data(n)
    Y = np.empty((n, 256), np.float32)
    reference.dense_forward(Y, X, W, b, activation="relu")
    outs_ref = [np.empty_like(X), np.empty_like(W), np.empty_like(b), np.empty_like(dY)]
    reference.dense_backward(outs_ref[0], outs_ref[1], outs_ref[2], outs_ref[3], dY, X, W, Y,
                             activation="relu")
    ins = [k.asarray(a) for a in (dY, X, W, Y)]
    outs = [k.empty(a.shape) for a in outs_ref]

    def run():
        k.dense_backward(*outs, *ins, activation="relu")
        wl.sync(k)

    run()
    for name, got, want in zip(("dX", "dW", "db", "dZ"), outs, outs_ref):
        wl.assert_close(k.to_numpy(got), want, 1e-4, f"{k.name} dense_backward {name}")
    benchmark(run)
    wl.record(benchmark, k, {"GFLOP/s": 4.0 * n * 784 * 256 / 1e9})


@pytest.mark.parametrize("case,with_dx", wl.conv_runs(),
                         ids=[f"{c[0]}-{'dX' if dx else 'no_dX'}" for c, dx in wl.conv_runs()])
def test_conv2d_forward_backward(benchmark, backend, case, with_dx):
    k = backend
    data = wl.conv_data(case)
    wl.check_conv(k, case, data, with_dx)
    run = wl.conv_step(k, case, data, with_dx)[0]

    def timed():
        run()
        wl.sync(k)

    benchmark(timed)
    wl.record(benchmark, k, {"GFLOP/s": wl.conv_flops(case, with_dx) / 1e9})


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_activation(benchmark, backend, activation, direction):
    k = backend
    size = MB
    rng = np.random.default_rng(0)
    X = rng.standard_normal(size, dtype=np.float32) * np.float32(3)
    Y = np.empty_like(X)
    reference.activation_forward(Y, X, activation=activation)
    if direction == "forward":
        want, ins, nbytes = Y, [k.asarray(X)], 8  # read X, write Y
        fn = k.activation_forward
    else:
        dY = rng.standard_normal(size, dtype=np.float32)
        want = np.empty_like(X)
        reference.activation_backward(want, dY, Y, activation=activation)
        ins, nbytes = [k.asarray(dY), k.asarray(Y)], 12  # read dY, Y, write dX
        fn = k.activation_backward
    out = k.empty(size)

    def run():
        fn(out, *ins, activation=activation)
        wl.sync(k)

    run()
    wl.assert_close(k.to_numpy(out), want, 1e-5, f"{k.name} {activation} {direction}")
    benchmark(run)
    wl.record(benchmark, k, {"GB/s": nbytes * size / 1e9})


@pytest.mark.parametrize("n,c", [(128, 10), (512, 1000)], ids=["128x10", "512x1000"])
def test_softmax_xent(benchmark, backend, n, c):
    k = backend
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((n, c), dtype=np.float32) * np.float32(4)
    labels = rng.integers(0, c, size=n)
    P_ref, dZ_ref = np.empty_like(Z), np.empty_like(Z)
    loss_ref = reference.softmax_xent_forward(P_ref, Z, labels)
    reference.softmax_xent_backward(dZ_ref, P_ref, labels)
    dZin, dlabels = k.asarray(Z), k.asarray(labels, dtype=np.int64)
    P, dZ = k.empty((n, c)), k.empty((n, c))

    def run():
        loss = k.softmax_xent_forward(P, dZin, dlabels)
        k.softmax_xent_backward(dZ, P, dlabels)
        wl.sync(k)
        return loss

    loss = run()
    assert abs(loss - loss_ref) <= 1e-5 * max(1.0, abs(loss_ref)), (loss, loss_ref)
    wl.assert_close(k.to_numpy(dZ), dZ_ref, 1e-5, f"{k.name} softmax_xent_backward")
    benchmark(run)
    # read Z, write P; read P, write dZ
    wl.record(benchmark, k, {"GB/s": 16.0 * n * c / 1e9})


def _optimizer_bench(benchmark, k, name, size):
    nbytes, n_state, call = wl.OPTIMIZERS[name]
    wl.check_optimizer(k, name)
    p, g, state = wl.optimizer_buffers(size, n_state)
    p, g, state = k.asarray(p), k.asarray(g), [k.asarray(s) for s in state]

    def run():
        call(k, p, g, state)
        wl.sync(k)

    benchmark(run)
    wl.record(benchmark, k, {"GB/s": nbytes * size / 1e9})


@pytest.mark.parametrize("name", list(wl.OPTIMIZERS))
def test_optimizer_1M(benchmark, backend, name):
    _optimizer_bench(benchmark, backend, name, MB)


def test_adam_16M(benchmark, backend, full):
    if not full:
        pytest.skip("Adam over 16M parameters runs with --bench-full")
    _optimizer_bench(benchmark, backend, "adam", 16 * MB)
