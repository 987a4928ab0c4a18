"""Every kernel of every backend against the float64 numpy reference.

Inputs are seeded random float32; the reference runs on the same values in
float64, so it is the exact answer up to float64 rounding and the tolerances
below bound the backend's float32 error.  Shapes include 1, primes, and sizes
around the C micro-kernel tiles (8/14/16/32) and cache blocks; the cuda
backend runs under the simulator in CI, so it gets the small shapes only.
"""

import inspect

import numpy as np
import pytest

from fastnn import kernels
from fastnn.kernels import _checks, spec

ACTS = _checks.ACTIVATIONS

GEMM_SHAPES_SMALL = [(1, 1, 1), (1, 7, 3), (5, 1, 2), (3, 5, 7), (17, 16, 15), (13, 33, 9)]
GEMM_SHAPES_LARGE = [(31, 17, 29), (8, 32, 16), (15, 33, 31), (14, 32, 1), (97, 101, 103),
                     (32, 256, 784), (128, 63, 257), (300, 129, 513), (257, 520, 600),
                     (600, 70, 24)]


def is_cuda(backend):
    return backend.__name__ == "fastnn.kernels.cuda"


def shapes_for(backend, small, large):
    return small if is_cuda(backend) else small + large


def f32(rng, *shape, scale=1.0):
    return (rng.uniform(-1, 1, size=shape) * scale).astype(np.float32)


def close(got, want, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol, atol=atol)


# ---- the API itself --------------------------------------------------------------

def test_every_backend_has_the_specification_signatures(backend, ref):
    for kernel in spec.KERNELS.values():
        for k in (backend, ref):
            assert inspect.signature(getattr(k, kernel.name)) == kernel.python_signature()
    for name in spec.RUNTIME:
        assert callable(getattr(backend, name)), f"{backend.__name__} lacks {name}"


def test_header_functions_are_all_exposed():
    import os
    import re

    from fastnn import _build_ckernels
    from fastnn._ckernels import lib

    declared = re.findall(r"\b(fastnn_\w+)\s*\(", _build_ckernels.read_cdef())
    assert len(declared) >= 30
    missing = [fn for fn in declared if not hasattr(lib, fn)]
    assert not missing
    # and the cdef really is the header's region, not a copy
    header = open(os.path.join(_build_ckernels.CSRC, "fastnn.h")).read()
    assert _build_ckernels.read_cdef() in header


def test_backend_selection(monkeypatch):
    import fastnn

    before = fastnn.get_backend()
    try:
        fastnn.set_backend("reference")
        assert fastnn.get_backend() == "reference"
        with pytest.raises(ValueError, match="unknown"):
            fastnn.set_backend("fortran")
    finally:
        fastnn.set_backend(before)
    assert kernels.available("c"), "the C extension must be built by the install"


def test_backend_from_environment(monkeypatch):
    monkeypatch.setattr(kernels, "_default", None)
    monkeypatch.setenv("FASTNN_BACKEND", "numba")
    assert kernels.get_backend() == "numba"
    monkeypatch.setattr(kernels, "_default", None)
    monkeypatch.delenv("FASTNN_BACKEND")
    assert kernels.get_backend() == "c"


def test_default_threads_respect_omp(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert kernels.default_num_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert kernels.default_num_threads() >= 1


# ---- gemm ------------------------------------------------------------------

def _gemm_case(backend, ref, rng, m, n, k, trans_a, trans_b, alpha, beta):
    A = f32(rng, *((k, m) if trans_a else (m, k)))
    B = f32(rng, *((n, k) if trans_b else (k, n)))
    C0 = f32(rng, m, n)
    C = C0.copy()
    if beta == 0.0:
        C[...] = np.nan  # must never be read
    want = C0.astype(np.float64)
    ref.gemm(A.astype(np.float64), B.astype(np.float64), want, trans_a=trans_a, trans_b=trans_b,
             alpha=alpha, beta=beta)
    out = backend.gemm(A, B, C, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
    assert out is C
    close(C, want, rtol=1e-4, atol=3e-6 * k * max(1.0, abs(alpha)) + 1e-6)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_shapes_and_transposes(backend, ref, rng, trans_a, trans_b):
    for m, n, k in shapes_for(backend, GEMM_SHAPES_SMALL, GEMM_SHAPES_LARGE):
        _gemm_case(backend, ref, rng, m, n, k, trans_a, trans_b, 1.0, 0.0)


@pytest.mark.parametrize("path", ["generic", "avx2", "avx512"])
def test_c_gemm_every_simd_path(ref, rng, path):
    """Each micro-kernel and packing routine the c backend can pick (forced
    here; the default is the best the CPU has), on shapes with full and
    ragged tiles, the in-place B of few-row products and all transposes."""
    c = kernels.get("c")
    best = c.info()["simd"]
    try:
        c.set_simd_path(path)
    except ValueError:
        pytest.skip(f"this CPU has no {path}")
    try:
        for m, n, k in [(1, 33, 9), (8, 32, 16), (16, 64, 40), (33, 70, 257), (70, 128, 65)]:
            for trans_a in (False, True):
                for trans_b in (False, True):
                    _gemm_case(c, ref, rng, m, n, k, trans_a, trans_b, 1.0, 0.0)
            _gemm_case(c, ref, rng, m, n, k, False, True, -0.5, 1.5)
    finally:
        c.set_simd_path(best)


def test_c_gemm_rows_independent_of_the_batch(rng):
    """A product's rows have the same bits whatever the number of rows around
    them (tall product, 32-row blocks, single rows: other tile edges, and m
    = 1 on the micro-kernel), for the dense forward (bias + relu epilogue)
    and the transposed gemm of dW."""
    c = kernels.get("c")
    X, W, b = f32(rng, 131, 300), f32(rng, 300, 200), f32(rng, 200)
    Y = np.empty((131, 200), np.float32)
    c.dense_forward(Y, X, W, b, activation="relu")
    for lo in range(0, 131, 32):
        part = np.empty((min(32, 131 - lo), 200), np.float32)
        c.dense_forward(part, X[lo:lo + 32].copy(), W, b, activation="relu")
        np.testing.assert_array_equal(part, Y[lo:lo + 32])
    for i in (0, 64, 130):
        row = np.empty((1, 200), np.float32)
        c.dense_forward(row, X[i:i + 1].copy(), W, b, activation="relu")
        np.testing.assert_array_equal(row, Y[i:i + 1])
    D = f32(rng, 32, 200)  # dW = X^T D over a batch of 32: 300 x 200
    G = np.empty((300, 200), np.float32)
    c.gemm(X[:32].copy(), D, G, trans_a=True, trans_b=False, alpha=1.0, beta=0.0)
    for lo in (0, 290):
        part = np.empty((10, 200), np.float32)
        c.gemm(X[:32, lo:lo + 10].copy(), D, part, trans_a=True, trans_b=False, alpha=1.0,
               beta=0.0)
        np.testing.assert_array_equal(part, G[lo:lo + 10])


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, -2.0), (-1.5, 0.0), (0.0, 0.75),
                                        (2.0, 1.0)])
def test_gemm_alpha_beta(backend, ref, rng, alpha, beta):
    for m, n, k in [(3, 5, 7), (17, 16, 15)] + ([] if is_cuda(backend) else [(70, 45, 300)]):
        _gemm_case(backend, ref, rng, m, n, k, True, False, alpha, beta)
        _gemm_case(backend, ref, rng, m, n, k, False, True, alpha, beta)


def test_gemm_converts_inputs(backend, rng):
    A = rng.uniform(-1, 1, (6, 9))            # float64
    B = np.asfortranarray(f32(rng, 9, 4))     # not C-contiguous
    C = np.empty((6, 4), np.float32)
    backend.gemm(A, B[:, :], C)
    close(C, A @ B.astype(np.float64), rtol=1e-5, atol=1e-5)
    backend.gemm(A[::2], f32(rng, 9, 4), C[:3])  # strided input, contiguous output slice


def test_gemm_bad_input(backend, rng):
    A, B, C = f32(rng, 4, 5), f32(rng, 5, 3), np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="inner dimensions"):
        backend.gemm(A, f32(rng, 4, 3), C)
    with pytest.raises(ValueError, match=r"C: expected shape \(4, 3\), got \(4, 4\)"):
        backend.gemm(A, B, np.zeros((4, 4), np.float32))
    with pytest.raises(TypeError, match="C: output must have dtype float32"):
        backend.gemm(A, B, np.zeros((4, 3), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        backend.gemm(A, B, np.zeros((3, 4), np.float32).T)
    with pytest.raises(ValueError, match="2-D"):
        backend.gemm(A.ravel(), B, C)
    with pytest.raises(ValueError, match=">= 1"):
        backend.gemm(np.zeros((4, 0), np.float32), np.zeros((0, 3), np.float32), C)
    sq = f32(rng, 4, 4)
    with pytest.raises(ValueError, match="overlaps input A"):
        backend.gemm(sq, f32(rng, 4, 4), sq)
    ro = np.zeros((4, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        backend.gemm(A, B, ro)
    with pytest.raises(TypeError):
        backend.gemm(A, B, None)


# ---- dense -----------------------------------------------------------------

DENSE_SHAPES_SMALL = [(1, 1, 1), (3, 7, 5), (16, 9, 17)]
DENSE_SHAPES_LARGE = [(32, 784, 256), (37, 65, 31), (129, 200, 10)]


def _act_input(rng, shape):
    # keep relu/step/sign inputs away from 0, where the derivative is ambiguous
    x = f32(rng, *shape, scale=3.0)
    x[np.abs(x) < 1e-3] = 0.5
    return x


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("bias", [True, False])
def test_dense_forward(backend, ref, rng, activation, bias):
    for n, fi, fo in shapes_for(backend, DENSE_SHAPES_SMALL, DENSE_SHAPES_LARGE):
        X, W = f32(rng, n, fi), f32(rng, fi, fo, scale=1 / np.sqrt(fi))
        b = f32(rng, fo) if bias else None
        Y = np.full((n, fo), np.nan, np.float32)
        backend.dense_forward(Y, X, W, b, activation=activation, negative_slope=0.1)
        want = np.empty((n, fo))
        ref.dense_forward(want, X.astype(np.float64), W.astype(np.float64),
                          None if b is None else b.astype(np.float64),
                          activation=activation, negative_slope=0.1)
        if activation in ("step", "sign"):
            # outputs flip only where the pre-activation is within rounding of 0
            assert np.mean(Y != want) < 0.002
        else:
            close(Y, want, rtol=1e-4, atol=2e-6 * fi + 1e-6)


@pytest.mark.parametrize("activation", ACTS)
def test_dense_backward(backend, ref, rng, activation):
    for n, fi, fo in shapes_for(backend, DENSE_SHAPES_SMALL, DENSE_SHAPES_LARGE):
        X, W = f32(rng, n, fi), f32(rng, fi, fo)
        Y = np.empty((n, fo), np.float32)
        ref.dense_forward(Y, X, W, f32(rng, fo), activation=activation, negative_slope=0.1)
        dY = f32(rng, n, fo)
        got = dict(dX=np.full((n, fi), np.nan, np.float32), dW=np.full((fi, fo), np.nan, np.float32),
                   db=np.full(fo, np.nan, np.float32), dZ=np.full((n, fo), np.nan, np.float32))
        backend.dense_backward(got["dX"], got["dW"], got["db"], got["dZ"], dY, X, W, Y,
                               activation=activation, negative_slope=0.1)
        want = dict(dX=np.empty((n, fi)), dW=np.empty((fi, fo)), db=np.empty(fo), dZ=np.empty((n, fo)))
        d = lambda a: a.astype(np.float64)  # noqa: E731
        ref.dense_backward(want["dX"], want["dW"], want["db"], want["dZ"], d(dY), d(X), d(W), d(Y),
                           activation=activation, negative_slope=0.1)
        for key in got:
            close(got[key], want[key], rtol=1e-4, atol=3e-6 * max(n, fi) + 1e-6)


def test_dense_backward_in_place_and_optional_outputs(backend, ref, rng):
    n, fi, fo = 5, 4, 3
    X, W = f32(rng, n, fi), f32(rng, fi, fo)
    Y = np.empty((n, fo), np.float32)
    ref.dense_forward(Y, X, W, None, activation="tanh")
    dY = f32(rng, n, fo)
    want_dZ, want_dW = np.empty((n, fo)), np.empty((fi, fo))
    ref.dense_backward(None, want_dW, None, want_dZ, dY.astype(np.float64), X.astype(np.float64),
                       W.astype(np.float64), Y.astype(np.float64), activation="tanh")
    dW = np.empty((fi, fo), np.float32)
    backend.dense_backward(None, dW, None, dY, dY, X, W, Y, activation="tanh")  # dZ is dY
    close(dY, want_dZ)
    close(dW, want_dW, rtol=1e-5, atol=1e-6)


def test_dense_bad_input(backend, rng):
    X, W, Y = f32(rng, 4, 3), f32(rng, 3, 2), np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"W: expected shape \(3, \*\)"):
        backend.dense_forward(Y, X, f32(rng, 4, 2), None)
    with pytest.raises(ValueError, match=r"b: expected shape \(2,\)"):
        backend.dense_forward(Y, X, W, f32(rng, 3))
    with pytest.raises(ValueError, match="unknown 'swish'"):
        backend.dense_forward(Y, X, W, None, activation="swish")
    with pytest.raises(ValueError, match="overlaps input X"):
        backend.dense_forward(X.reshape(-1)[:8].reshape(4, 2), X, W, None)
    with pytest.raises(ValueError, match=r"dX: expected shape \(4, 3\)"):
        backend.dense_backward(np.zeros((4, 2), np.float32), np.zeros((3, 2), np.float32), None,
                               np.zeros((4, 2), np.float32), Y, X, W, Y)


# ---- activations and softmax ----------------------------------------------------

ELEM_SHAPES_SMALL = [(1,), (7,), (3, 5), (33,)]
ELEM_SHAPES_LARGE = [(1000, 37), (100003,)]


@pytest.mark.parametrize("activation", ACTS)
def test_activation_forward_backward(backend, ref, rng, activation):
    for shape in shapes_for(backend, ELEM_SHAPES_SMALL, ELEM_SHAPES_LARGE):
        X = _act_input(rng, shape)
        X.flat[0] = 40.0  # saturating sigmoid/softplus/tanh inputs
        if X.size > 1:
            X.flat[1] = -40.0
        Y = np.empty_like(X)
        backend.activation_forward(Y, X, activation=activation, negative_slope=0.2)
        want = np.empty(shape)
        ref.activation_forward(want, X.astype(np.float64), activation=activation, negative_slope=0.2)
        close(Y, want, rtol=2e-6, atol=1e-7)
        assert np.all(np.isfinite(Y))
        dY = f32(rng, *shape)
        dX = np.empty_like(X)
        backend.activation_backward(dX, dY, Y, activation=activation, negative_slope=0.2)
        want_dX = np.empty(shape)
        ref.activation_backward(want_dX, dY.astype(np.float64), Y.astype(np.float64),
                                activation=activation, negative_slope=0.2)
        close(dX, want_dX, rtol=1e-5, atol=1e-7)
        # in place
        backend.activation_forward(X, X, activation=activation, negative_slope=0.2)
        np.testing.assert_array_equal(X, Y)
        backend.activation_backward(dY, dY, Y, activation=activation, negative_slope=0.2)
        np.testing.assert_array_equal(dY, dX)


def test_softmax(backend, ref, rng):
    for n, c in [(1, 1), (3, 10), (7, 33)] + ([] if is_cuda(backend) else [(256, 1000)]):
        X = f32(rng, n, c, scale=5.0)
        X[0, 0] = 1e4  # stability: would overflow exp without the max shift
        Y = np.empty_like(X)
        backend.softmax_forward(Y, X)
        want = np.empty((n, c))
        ref.softmax_forward(want, X.astype(np.float64))
        close(Y, want, rtol=1e-5, atol=1e-7)
        dY = f32(rng, n, c)
        dX = np.empty_like(X)
        backend.softmax_backward(dX, dY, Y)
        want_dX = np.empty((n, c))
        ref.softmax_backward(want_dX, dY.astype(np.float64), Y.astype(np.float64))
        close(dX, want_dX, rtol=1e-4, atol=1e-6)


def test_c_softmax_every_simd_path(ref, rng):
    """The c backend's softmax rows on the scalar path (libm's expf) and the
    AVX-512 one (16 lanes, its own exp): every row width around the
    16-lane vectors, shifted logits over exp's whole float range (results
    through the denormals to 0).  Each is within 4 ulp of float64 plus the
    rounding of x - max in float32 (|x - max| ulp; 3 of the smallest denormal
    where the value is one), the two paths within 6
    ulp of each other; a NaN or +inf logit makes its row NaN, -inf gives 0."""
    c = kernels.get("c")
    best = c.info()["simd"]
    paths = ["generic"] + (["avx512"] if best == "avx512" else [])
    tiny = 3 * 2.0 ** -149
    rows = []
    for n_cols in [1, 2, 7, 15, 16, 17, 31, 32, 33, 48, 100]:
        X = f32(rng, 9, n_cols, scale=30.0)
        X[1] = np.linspace(-120.0, 0.0, n_cols, dtype=np.float32)  # exp's range, 0 at the max
        rows.append((X, rng.integers(0, n_cols, len(X))))
    edges = np.array([[0.0] * 17, [0.0] * 17, [1.0] * 17], np.float32)
    edges[0, 16], edges[1, 3], edges[2, 5] = np.nan, np.inf, -np.inf
    got = {}
    try:
        for path in paths:
            c.set_simd_path(path)
            for i, (X, labels) in enumerate(rows):
                Y = np.empty_like(X)
                c.softmax_forward(Y, X)
                want = np.empty(X.shape)
                ref.softmax_forward(want, X.astype(np.float64))
                ulps = 4.0 + np.abs(X - X.max(axis=1, keepdims=True))
                assert np.all(np.abs(Y - want) <= ulps * 2.0 ** -23 * want + tiny), (path, i)
                P = np.empty_like(X)
                loss = c.softmax_xent_forward(P, X, labels)
                want_loss = ref.softmax_xent_forward(want, X.astype(np.float64), labels)
                assert loss == pytest.approx(want_loss, rel=1e-6), (path, i)
                np.testing.assert_array_equal(P, Y)
                got[path, i] = Y
            Y = np.empty_like(edges)
            c.softmax_forward(Y, edges)
            assert np.isnan(Y[:2]).all(), path
            assert Y[2, 5] == 0.0 and np.allclose(np.delete(Y[2], 5), 1 / 16, rtol=1e-6), path
    finally:
        c.set_simd_path(best)
    for i in range(len(rows)) if len(paths) == 2 else ():
        a, b = got["generic", i], got["avx512", i]
        assert np.all(np.abs(a - b) <= 6 * 2.0 ** -23 * np.abs(a) + tiny), i


# ---- losses ----------------------------------------------------------------------

@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8])
def test_softmax_xent(backend, ref, rng, label_dtype):
    for n, c in [(1, 2), (5, 3), (17, 10)] + ([] if is_cuda(backend) else [(512, 10), (33, 1000)]):
        Z = f32(rng, n, c, scale=4.0)
        Z[0, :] = [80.0] + [-80.0] * (c - 1)  # extreme logits stay finite
        if np.iinfo(label_dtype).max < c:
            continue
        labels = rng.integers(0, c, n).astype(label_dtype)
        labels[0] = c - 1  # and the wrong class is very unlikely: loss ~160
        P = np.empty_like(Z)
        loss = backend.softmax_xent_forward(P, Z, labels)
        want_P = np.empty((n, c))
        want = ref.softmax_xent_forward(want_P, Z.astype(np.float64), labels)
        assert isinstance(loss, float) and np.isfinite(loss)
        assert loss == pytest.approx(want, rel=1e-5, abs=1e-6)
        close(P, want_P, rtol=1e-5, atol=1e-7)
        dZ = np.empty_like(Z)
        backend.softmax_xent_backward(dZ, P, labels)
        want_dZ = np.empty((n, c))
        ref.softmax_xent_backward(want_dZ, want_P, labels)
        close(dZ, want_dZ, rtol=1e-5, atol=1e-7)
        backend.softmax_xent_backward(P, P, labels)  # in place
        np.testing.assert_array_equal(P, dZ)


def test_softmax_xent_bad_labels(backend, rng):
    Z, P = f32(rng, 4, 3), np.empty((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"labels: must lie in \[0, 3\)"):
        backend.softmax_xent_forward(P, Z, np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match=r"labels: must lie in \[0, 3\)"):
        backend.softmax_xent_forward(P, Z, np.array([0, -1, 2, 0]))
    with pytest.raises(TypeError, match="integer class labels"):
        backend.softmax_xent_forward(P, Z, np.array([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match=r"labels: expected shape \(4,\)"):
        backend.softmax_xent_forward(P, Z, np.array([0, 1, 2]))


@pytest.mark.parametrize("loss", ["bce", "mse", "mae"])
def test_pointwise_losses(backend, ref, rng, loss):
    fwd, bwd = loss + "_forward", loss + "_backward"
    for shape in shapes_for(backend, [(1,), (4, 1), (9, 3)], [(1000, 7)]):
        Y = f32(rng, *shape, scale=3.0)
        T = rng.uniform(0, 1, shape).astype(np.float32) if loss == "bce" else f32(rng, *shape)
        if loss == "bce":
            Y.flat[0] = 100.0  # stable for large |logit|
            if Y.size > 1:
                Y.flat[1] = -100.0
        if loss == "mae" and Y.size > 2:
            Y.flat[2] = T.flat[2]  # sign(0) = 0
        got = getattr(backend, fwd)(Y, T)
        want = getattr(ref, fwd)(Y.astype(np.float64), T.astype(np.float64))
        assert isinstance(got, float) and got == pytest.approx(want, rel=1e-5, abs=1e-7)
        dY = np.empty_like(Y)
        getattr(backend, bwd)(dY, Y, T)
        want_dY = np.empty(shape)
        getattr(ref, bwd)(want_dY, Y.astype(np.float64), T.astype(np.float64))
        close(dY, want_dY, rtol=1e-5, atol=1e-9)
        getattr(backend, bwd)(Y, Y, T)  # in place
        np.testing.assert_array_equal(Y, dY)


def test_loss_bad_input(backend, rng):
    with pytest.raises(ValueError, match=r"T: expected shape \(3, 2\)"):
        backend.mse_forward(f32(rng, 3, 2), f32(rng, 2, 3))
    with pytest.raises(ValueError, match="empty"):
        backend.mae_forward(np.zeros(0, np.float32), np.zeros(0, np.float32))


# ---- optimizers --------------------------------------------------------------------

def _torch_defaults(name, **changes):
    """An optimizer's hyperparameters at torch's defaults (from the spec)."""
    return dict({h.name: h.default for h in spec.OPTIMIZERS[name].hyper}, **changes)


# Every optimizer of the specification at torch's defaults (a new one is
# tested without an edit here), then variants that reach its other branches.
OPTIMIZER_CASES = [(name, o.states, _torch_defaults(name, lr=1e-2))
                   for name, o in spec.OPTIMIZERS.items()] + [
    ("sgd", ("momentum_buf",), dict(lr=0.1)),
    ("sgd", ("momentum_buf",), dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("sgd", ("momentum_buf",), dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("sgd", ("momentum_buf",), dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)),
    ("adam", ("m", "v"), dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)),
    ("adam", ("m", "v"), dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1)),
    ("adamw", ("m", "v"), dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)),
    ("rmsprop", ("square_avg", "momentum_buf", "grad_avg"), dict(lr=1e-2, alpha=0.99, eps=1e-8)),
    ("rmsprop", ("square_avg", "momentum_buf", "grad_avg"),
     dict(lr=1e-2, alpha=0.9, eps=1e-8, momentum=0.9, centered=True, weight_decay=0.01)),
    ("adagrad", ("sum_sq",), dict(lr=1e-2)),
    ("adagrad", ("sum_sq",), dict(lr=1e-1, lr_decay=0.01, weight_decay=0.01, eps=1e-10)),
    ("nadam", ("m", "v"), dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8)),
    ("nadam", ("m", "v"), dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                               momentum_decay=0.01)),
    ("adamax", ("m", "u"), dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8)),
    ("adamax", ("m", "u"), dict(lr=2e-3, beta1=0.5, beta2=0.9, eps=1e-8, weight_decay=0.1)),
]


def _run_optimizer(mod, name, states, hp, params, grads_seq, dtype):
    p = params.astype(dtype)
    bufs = {s: np.zeros_like(p) for s in states}
    o = spec.OPTIMIZERS[name]
    kwargs = dict(hp)
    scalars = dict(o.scalars)
    for t, g in enumerate(grads_seq, start=1):
        if o.step:
            kwargs["step"] = t
        scalars = spec.advance(name, scalars, t, dict(o.kernel_defaults(), **hp))
        getattr(mod, name)(p, g.astype(dtype), *[bufs[s] for s in states], **kwargs, **scalars)
    return p, bufs


@pytest.mark.parametrize("name,states,hp", OPTIMIZER_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(OPTIMIZER_CASES)])
def test_optimizer_updates(backend, ref, rng, name, states, hp):
    for size in [1, 7, 1000] + ([] if is_cuda(backend) else [100_003]):
        params = f32(rng, size)
        grads_seq = [f32(rng, size) for _ in range(4)]
        got, got_bufs = _run_optimizer(backend, name, states, hp, params, grads_seq, np.float32)
        want, want_bufs = _run_optimizer(ref, name, states, hp, params, grads_seq, np.float64)
        close(got, want, rtol=1e-5, atol=2e-6)
        for s in states:
            close(got_bufs[s], want_bufs[s], rtol=1e-4, atol=1e-6)


def test_optimizer_bad_input(backend, rng):
    p, g = f32(rng, 10), f32(rng, 10)
    m, v = np.zeros(10, np.float32), np.zeros(10, np.float32)
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    with pytest.raises(ValueError, match=r"grads: expected shape \(10,\)"):
        backend.adam(p, f32(rng, 9), m, v, step=1, **hp)
    with pytest.raises(ValueError, match="step"):
        backend.adam(p, g, m, v, step=0, **hp)
    with pytest.raises(ValueError, match=r"v: output overlaps input m \(the same array\)"):
        backend.adam(p, g, m, m, step=1, **hp)
    with pytest.raises(ValueError, match="m: output overlaps input grads"):
        backend.adam(p, g, g[:], v, step=1, **hp)
    with pytest.raises(ValueError, match="flat 1-D"):
        backend.adam(p.reshape(2, 5), g, m, v, step=1, **hp)
    with pytest.raises(ValueError, match="momentum_buf: required"):
        backend.sgd(p, g, None, step=1, lr=0.1, momentum=0.9)


# ---- flat-buffer utilities --------------------------------------------------------

def test_flat_utilities(backend, ref, rng):
    for size in [1, 17] + ([] if is_cuda(backend) else [100_003]):
        x = f32(rng, size, scale=3.0)
        assert backend.sum_squares(x) == pytest.approx(ref.sum_squares(x.astype(np.float64)), rel=1e-6)
        y = x.copy()
        backend.scale(y, 0.25)
        close(y, x.astype(np.float64) * 0.25, rtol=1e-7, atol=0)
        backend.clip(y, -0.5, 0.3)
        close(y, np.clip(x.astype(np.float64) * 0.25, -0.5, 0.3), rtol=1e-7, atol=0)
    with pytest.raises(ValueError, match="lo: must be <= hi"):
        backend.clip(x, 1.0, -1.0)


def test_arrays_round_trip(backend, rng):
    x = f32(rng, 3, 4)
    a = backend.asarray(x)
    np.testing.assert_array_equal(backend.to_numpy(a), x)
    assert backend.to_numpy(backend.zeros((2, 3))).sum() == 0
    assert tuple(backend.empty((5,)).shape) == (5,)


def test_cuda_device_arrays(rng):
    """The trainer's path on cuda: device arrays in, device arrays out."""
    if not kernels.available("cuda"):
        pytest.skip("cuda backend unavailable")
    cuda = kernels.get("cuda")
    A, B = f32(rng, 5, 3), f32(rng, 3, 4)
    dA, dB, dC = cuda.asarray(A), cuda.asarray(B), cuda.zeros((5, 4))
    cuda.gemm(dA, dB, dC)
    close(cuda.to_numpy(dC), A.astype(np.float64) @ B, rtol=1e-5, atol=1e-6)
