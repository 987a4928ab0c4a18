"""Convolution, pooling and batch-norm kernels: every backend against the
float64 reference, and the reference against PyTorch (when installed).

Images are channels-last (N, H, W, C); conv weights (KH, KW, C, OC).
"""

import numpy as np
import pytest

from fastnn import kernels
from fastnn.kernels import _checks

from .test_kernels import close, f32, is_cuda

reference = kernels.get("reference")

# (n, h, w, c, oc, kh, kw, stride, padding): 1x1, stride > 1, kernel larger
# than the stride, padding, a batch of 1, odd sizes
CONV_SMALL = [(1, 3, 3, 1, 1, 1, 1, 1, 0), (2, 5, 4, 3, 2, 3, 3, 1, 1), (1, 6, 7, 2, 3, 3, 2, (2, 1), (1, 0))]
CONV_LARGE = [(3, 9, 11, 5, 7, 3, 3, 2, 1), (4, 14, 14, 8, 16, 3, 3, 1, 1), (2, 8, 8, 3, 4, 5, 5, 3, 2),
              (16, 28, 28, 1, 32, 3, 3, 1, 1), (2, 7, 7, 17, 33, 1, 1, 2, 0)]
POOLS = [(2, None), (3, 2), ((2, 3), (1, 2)), (1, 1)]


def _out(h, kh, s, p):
    return (h + 2 * p - kh) // s + 1


def _pair(v):
    return (v, v) if isinstance(v, int) else v


def _conv_case(backend, rng, n, h, w, c, oc, kh, kw, stride, padding, activation, bias=True):
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    oh, ow = _out(h, kh, sh, ph), _out(w, kw, sw, pw)
    X, W = f32(rng, n, h, w, c), f32(rng, kh, kw, c, oc, scale=1 / np.sqrt(kh * kw * c))
    b = f32(rng, oc) if bias else None
    d = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    kw_args = dict(stride=stride, padding=padding, activation=activation, negative_slope=0.1)
    Y, cols = np.full((n, oh, ow, oc), np.nan, np.float32), np.full((n * oh * ow, kh * kw * c), np.nan, np.float32)
    backend.conv2d_forward(Y, X, W, b, cols, **kw_args)
    Yr, colsr = np.empty((n, oh, ow, oc)), np.empty((n * oh * ow, kh * kw * c))
    reference.conv2d_forward(Yr, d(X), d(W), d(b), colsr, **kw_args)
    tol = 3e-6 * kh * kw * c + 1e-6
    close(Y, Yr, rtol=1e-4, atol=tol)
    # c and numba keep their own workspace in cols (a padded X on c's stride 1 path, on
    # numba's direct path: 16 or 32 output channels with AVX-512)
    if backend.name not in ("c", "numba"):
        close(cols, colsr, rtol=0, atol=0)
    dY = f32(rng, n, oh, ow, oc)
    got = dict(dX=np.full((n, h, w, c), np.nan, np.float32), dW=np.full((kh, kw, c, oc), np.nan, np.float32),
               db=np.full(oc, np.nan, np.float32), dZ=np.full((n, oh, ow, oc), np.nan, np.float32))
    backend.conv2d_backward(got["dX"], got["dW"], got["db"], got["dZ"], dY, X, W, Y, cols, **kw_args)
    want = dict(dX=np.empty((n, h, w, c)), dW=np.empty((kh, kw, c, oc)), db=np.empty(oc),
                dZ=np.empty((n, oh, ow, oc)))
    reference.conv2d_backward(want["dX"], want["dW"], want["db"], want["dZ"], d(dY), d(X), d(W),
                              d(Y), colsr, **kw_args)
    for key in got:
        close(got[key], want[key], rtol=1e-4, atol=3e-6 * max(n * oh * ow, kh * kw * oc) + 1e-6)


@pytest.mark.parametrize("activation", ["identity", "relu", "tanh"])
def test_conv2d(backend, rng, activation):
    shapes = CONV_SMALL if is_cuda(backend) else CONV_SMALL + CONV_LARGE
    for shape in shapes:
        _conv_case(backend, rng, *shape, activation)


# Stride 1 with 16+ channels: the c backend's direct path with dX as a
# convolution of the padded dZ; 37 and 70 output channels leave masked
# columns in both AVX-512 tiles (32 and 64 wide), 5x4 kernels pad unevenly.
CONV_DIRECT = [(2, 6, 9, 20, 37, 3, 3, 1, 1), (3, 5, 7, 16, 70, 3, 3, 1, 1),
               (2, 8, 7, 33, 16, 5, 4, 1, (2, 1)), (2, 6, 6, 24, 64, 1, 1, 1, 0)]


# 3x3 stride 1 with 16+ channels and even output sizes: the c backend's
# Winograd F(2x2, 3x3) forward and dX (conv_direct.c), through the AVX-512
# transforms (16, 32, 48, 64 channels) and the C ones (20, 37), pad 1 and 0
# (dX then reads dZ padded by 2) and 2 (dX reads dZ unpadded: every window
# inside it); dX's Winograd reads dZ in place, its border tiles gathered;
# the workspace left by these small batches makes blocks of fewer tiles.
CONV_WINOGRAD = [(8, 6, 8, 16, 37, 3, 3, 1, 1), (4, 10, 10, 20, 48, 3, 3, 1, 1),
                 (8, 8, 6, 16, 16, 3, 3, 1, 0), (8, 14, 14, 32, 64, 3, 3, 1, 1),
                 (4, 6, 6, 16, 32, 3, 3, 1, 2)]


# The simulator runs one Python thread per CUDA thread: one small shape with
# 16+ channels and a masked tile column is enough there.
CONV_DIRECT_CUDA = [(1, 4, 4, 16, 18, 3, 3, 1, 1)]


def test_conv2d_stride1_many_channels(backend, rng):
    for shape in CONV_DIRECT + CONV_WINOGRAD if not is_cuda(backend) else CONV_DIRECT_CUDA:
        _conv_case(backend, rng, *shape, "relu")


# numba's direct path: 1 to 4 vectors of output channels (16-64 with AVX-512, 8-32 with
# AVX2; tile calls of two vectors, then an odd one), dX direct for as many input channels
# at stride 1 -- uneven padding, a 3x2 kernel, no padding, stride 2 (dX through cols), a
# last pixel tile of 1..7 rows; 48 and 64 channels each way (the pairs and the odd vector).
CONV_NUMBA_DIRECT = [(2, 6, 5, 16, 16, 3, 3, 1, 1), (3, 7, 6, 32, 32, 3, 2, 1, (2, 0)),
                     (1, 5, 7, 16, 32, 3, 3, 1, 0), (2, 9, 7, 3, 16, 3, 3, 2, 1),
                     (1, 3, 3, 16, 16, 3, 3, 1, 2), (2, 5, 6, 32, 48, 3, 3, 1, 1),
                     (1, 6, 5, 48, 64, 3, 3, 1, 1), (2, 4, 5, 64, 16, 3, 2, 1, (1, 0))]


@pytest.mark.parametrize("activation", ["leaky_relu", "tanh"])
def test_conv2d_numba_direct_shapes(cpu_backend, rng, activation):
    for shape in CONV_NUMBA_DIRECT:  # numba's CPU shapes: c and numba only
        _conv_case(cpu_backend, rng, *shape, activation)


@pytest.mark.parametrize("path", ["generic", "avx2", "avx512"])
def test_c_conv2d_every_simd_path(rng, path):
    c = kernels.get("c")
    best = c.info()["simd"]
    try:
        c.set_simd_path(path)
    except ValueError:
        pytest.skip(f"{path} not supported here")
    try:
        for shape in CONV_DIRECT + CONV_WINOGRAD[:3] + [(2, 9, 8, 1, 9, 3, 3, 1, 1),
                                                        (3, 9, 11, 5, 7, 3, 3, 2, 1)]:
            _conv_case(c, rng, *shape, "leaky_relu")
    finally:
        c.set_simd_path(best)


def _conv_outputs(k, X, W, b, dY, **kw_args):
    n, h, w, c = X.shape
    kh, kw, _, oc = W.shape
    Y = np.empty(dY.shape, np.float32)
    cols = np.empty((dY.shape[0] * dY.shape[1] * dY.shape[2], kh * kw * c), np.float32)
    k.conv2d_forward(Y, X, W, b, cols, **kw_args)
    out = dict(Y=Y, dX=np.empty_like(X), dW=np.empty_like(W), db=np.empty_like(b), dZ=np.empty_like(dY))
    k.conv2d_backward(out["dX"], out["dW"], out["db"], out["dZ"], dY, X, W, Y, cols, **kw_args)
    return out


@pytest.mark.parametrize("shape", [(64, 14, 14, 32, 64), (64, 28, 28, 1, 32), (48, 9, 11, 5, 7)])
def test_c_conv2d_same_bits_on_any_thread_count(rng, shape):
    """Work is split over outputs only, and the batch sums of dW and db run
    over chunks fixed by the geometry: 1, 2 and 4 threads agree bit for bit."""
    c = kernels.get("c")
    n, h, w, ch, oc = shape
    X, W, b = f32(rng, n, h, w, ch), f32(rng, 3, 3, ch, oc, scale=0.1), f32(rng, oc)
    dY = f32(rng, n, h, w, oc)
    before = c.info()["threads"]
    try:
        got = []
        for threads in (1, 2, 4):
            c.set_num_threads(threads)
            got.append(_conv_outputs(c, X, W, b, dY, padding=1, activation="relu"))
    finally:
        c.set_num_threads(before)
    for other in got[1:]:
        for key in got[0]:
            np.testing.assert_array_equal(other[key], got[0][key], err_msg=key)


def test_conv2d_without_bias_and_optional_grads(backend, rng):
    _conv_case(backend, rng, 2, 5, 5, 2, 3, 3, 3, 1, 1, "identity", bias=False)
    X, W = f32(rng, 1, 4, 4, 2), f32(rng, 3, 3, 2, 2)
    Y, cols = np.empty((1, 2, 2, 2), np.float32), np.empty((4, 18), np.float32)
    backend.conv2d_forward(Y, X, W, None, cols)
    dY = f32(rng, 1, 2, 2, 2)
    want_dW, colsr = np.empty((3, 3, 2, 2)), np.empty((4, 18))
    reference.conv2d_forward(np.empty((1, 2, 2, 2)), X, W, None, colsr)
    reference.conv2d_backward(None, want_dW, None, np.empty((1, 2, 2, 2)), dY.astype(np.float64),
                              X, W, Y, colsr)
    dW = np.empty((3, 3, 2, 2), np.float32)
    backend.conv2d_backward(None, dW, None, dY, dY, X, W, Y, cols)  # dZ is dY, no dX/db
    close(dW, want_dW, rtol=1e-5, atol=1e-6)


def test_conv2d_bad_input(backend, rng):
    X, W = f32(rng, 1, 4, 4, 2), f32(rng, 3, 3, 2, 5)
    Y, cols = np.empty((1, 2, 2, 5), np.float32), np.empty((4, 18), np.float32)
    with pytest.raises(ValueError, match=r"W: expected shape \(\*, \*, 2, \*\)"):
        backend.conv2d_forward(Y, X, f32(rng, 3, 3, 3, 5), None, cols)
    with pytest.raises(ValueError, match=r"Y: expected shape \(1, 2, 2, 5\)"):
        backend.conv2d_forward(np.empty((1, 4, 4, 5), np.float32), X, W, None, cols)
    with pytest.raises(ValueError, match=r"cols: expected shape \(4, 18\)"):
        backend.conv2d_forward(Y, X, W, None, np.empty((4, 17), np.float32))
    with pytest.raises(ValueError, match="smaller than the window"):
        backend.conv2d_forward(Y, f32(rng, 1, 2, 2, 2), W, None, cols)
    with pytest.raises(ValueError, match="stride"):
        backend.conv2d_forward(Y, X, W, None, cols, stride=0)
    with pytest.raises(ValueError, match="padding: must be smaller than the kernel"):
        backend.conv2d_forward(Y, X, W, None, cols, padding=3)
    with pytest.raises(ValueError, match="4-D"):
        backend.conv2d_forward(Y, X[0], W, None, cols)


@pytest.mark.parametrize("pool,stride", POOLS)
def test_pooling(backend, rng, pool, stride):
    shapes = [(1, 4, 4, 1), (2, 7, 6, 3)] + ([] if is_cuda(backend) else [(8, 28, 28, 16), (3, 9, 13, 5)])
    for n, h, w, c in shapes:
        (kh, kw) = _pair(pool)
        sh, sw = _pair(stride) if stride is not None else (kh, kw)
        oh, ow = _out(h, kh, sh, 0), _out(w, kw, sw, 0)
        X = f32(rng, n, h, w, c)
        X[0, 0, 0, 0] = X[0, 0, 1, 0] = 5.0  # a tie: the first in the window wins
        for kind in ("max", "avg"):
            Y = np.full((n, oh, ow, c), np.nan, np.float32)
            Yr = np.empty((n, oh, ow, c))
            dY = f32(rng, n, oh, ow, c)
            dX, dXr = np.full((n, h, w, c), np.nan, np.float32), np.empty((n, h, w, c))
            if kind == "max":
                am, amr = np.full((n, oh, ow, c), -7, np.int32), np.empty((n, oh, ow, c), np.int32)
                backend.maxpool2d_forward(Y, X, am, pool=pool, stride=stride)
                reference.maxpool2d_forward(Yr, X.astype(np.float64), amr, pool=pool, stride=stride)
                np.testing.assert_array_equal(am, amr)
                backend.maxpool2d_backward(dX, dY, am, pool=pool, stride=stride)
                reference.maxpool2d_backward(dXr, dY.astype(np.float64), amr, pool=pool, stride=stride)
            else:
                backend.avgpool2d_forward(Y, X, pool=pool, stride=stride)
                reference.avgpool2d_forward(Yr, X.astype(np.float64), pool=pool, stride=stride)
                backend.avgpool2d_backward(dX, dY, pool=pool, stride=stride)
                reference.avgpool2d_backward(dXr, dY.astype(np.float64), pool=pool, stride=stride)
            close(Y, Yr, rtol=1e-6, atol=1e-7)
            close(dX, dXr, rtol=1e-6, atol=1e-7)


def test_pooling_bad_input(backend, rng):
    X = f32(rng, 1, 4, 4, 2)
    with pytest.raises(ValueError, match=r"argmax: expected shape \(1, 2, 2, 2\)"):
        backend.maxpool2d_forward(np.empty((1, 2, 2, 2), np.float32), X,
                                  np.empty((1, 2, 2, 1), np.int32), pool=2)
    with pytest.raises(ValueError, match=r"argmax: indices must lie in \[0, 16\)"):
        backend.maxpool2d_backward(np.empty((1, 4, 4, 2), np.float32), f32(rng, 1, 2, 2, 2),
                                   np.full((1, 2, 2, 2), 16, np.int32), pool=2)
    with pytest.raises(ValueError, match="pool"):
        backend.avgpool2d_forward(np.empty((1, 2, 2, 2), np.float32), X, pool=0)


@pytest.mark.parametrize("shape", [(2, 3), (4, 3, 3, 5), (64, 7), (32, 14, 14, 16)])
def test_batchnorm(backend, rng, shape):
    if is_cuda(backend) and np.prod(shape) > 1000:
        pytest.skip("simulator: small shapes only")
    c = shape[-1]
    X = f32(rng, *shape, scale=3.0) + 1.5
    gamma, beta = f32(rng, c) + 1.0, f32(rng, c)
    Y = np.empty_like(X)
    mean, invstd = np.empty(c, np.float32), np.empty(c, np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    backend.batchnorm_forward(Y, X, gamma, beta, mean, invstd, rm, rv, momentum=0.1, eps=1e-5)
    d = lambda a: a.astype(np.float64)  # noqa: E731
    Yr, meanr, invr, rmr, rvr = np.empty(shape), np.empty(c), np.empty(c), np.zeros(c), np.ones(c)
    reference.batchnorm_forward(Yr, d(X), d(gamma), d(beta), meanr, invr, rmr, rvr, momentum=0.1, eps=1e-5)
    for got, want in ((Y, Yr), (mean, meanr), (invstd, invr), (rm, rmr), (rv, rvr)):
        close(got, want, rtol=1e-4, atol=1e-5)
    dY = f32(rng, *shape)
    dX, dg, db = np.empty_like(X), np.empty(c, np.float32), np.empty(c, np.float32)
    backend.batchnorm_backward(dX, dg, db, dY, X, gamma, mean, invstd)
    dXr, dgr, dbr = np.empty(shape), np.empty(c), np.empty(c)
    reference.batchnorm_backward(dXr, dgr, dbr, d(dY), d(X), d(gamma), meanr, invr)
    for got, want in ((dX, dXr), (dg, dgr), (db, dbr)):
        close(got, want, rtol=1e-4, atol=1e-4)
    Yi, Yir = np.empty_like(X), np.empty(shape)
    backend.batchnorm_inference(Yi, X, gamma, beta, rm, rv, eps=1e-5)
    reference.batchnorm_inference(Yir, d(X), d(gamma), d(beta), d(rm), d(rv), eps=1e-5)
    close(Yi, Yir, rtol=1e-5, atol=1e-5)


def test_batchnorm_bad_input(backend, rng):
    X = f32(rng, 1, 3)
    c3 = lambda: np.zeros(3, np.float32)  # noqa: E731
    with pytest.raises(ValueError, match="at least 2 values"):
        backend.batchnorm_forward(np.empty_like(X), X, c3(), c3(), c3(), c3(), c3(), c3())
    with pytest.raises(ValueError, match=r"gamma: expected shape \(3,\)"):
        backend.batchnorm_inference(np.empty((2, 3), np.float32), f32(rng, 2, 3), np.zeros(2),
                                    c3(), c3(), c3())


# ---- the reference itself against PyTorch ----------------------------------------------

def test_reference_matches_torch():
    torch = pytest.importorskip("torch", reason="PyTorch is the optional parity comparator")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    for n, h, w, c, oc, kh, kw, stride, padding in CONV_SMALL + CONV_LARGE:
        (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
        oh, ow = _out(h, kh, sh, ph), _out(w, kw, sw, pw)
        X, W, b = rng.normal(size=(n, h, w, c)), rng.normal(size=(kh, kw, c, oc)), rng.normal(size=oc)
        Y, cols = np.empty((n, oh, ow, oc)), np.empty((n * oh * ow, kh * kw * c))
        reference.conv2d_forward(Y, X, W, b, cols, stride=stride, padding=padding)
        tX = torch.tensor(X.transpose(0, 3, 1, 2), requires_grad=True)
        tW = torch.tensor(W.transpose(3, 2, 0, 1), requires_grad=True)
        tb = torch.tensor(b, requires_grad=True)
        tY = F.conv2d(tX, tW, tb, stride=(sh, sw), padding=(ph, pw))
        np.testing.assert_allclose(Y, tY.detach().numpy().transpose(0, 2, 3, 1), atol=1e-10)
        dY = rng.normal(size=Y.shape)
        tY.backward(torch.tensor(dY.transpose(0, 3, 1, 2)))
        dX, dW, db = np.empty_like(X), np.empty_like(W), np.empty_like(b)
        reference.conv2d_backward(dX, dW, db, np.empty_like(Y), dY, X, W, Y, cols, stride=stride,
                                  padding=padding)
        np.testing.assert_allclose(dX, tX.grad.numpy().transpose(0, 2, 3, 1), atol=1e-10)
        np.testing.assert_allclose(dW, tW.grad.numpy().transpose(2, 3, 1, 0), atol=1e-10)
        np.testing.assert_allclose(db, tb.grad.numpy(), atol=1e-10)
    X = rng.normal(size=(2, 9, 8, 3))
    for pool, stride in POOLS:
        for kind, fn in (("max", F.max_pool2d), ("avg", F.avg_pool2d)):
            tX = torch.tensor(X.transpose(0, 3, 1, 2), requires_grad=True)
            tY = fn(tX, pool, stride=stride)
            Y = np.empty(tY.shape).transpose(0, 2, 3, 1).copy()
            dY = rng.normal(size=Y.shape)
            tY.backward(torch.tensor(dY.transpose(0, 3, 1, 2)))
            dX = np.empty_like(X)
            if kind == "max":
                am = np.empty(Y.shape, np.int32)
                reference.maxpool2d_forward(Y, X, am, pool=pool, stride=stride)
                reference.maxpool2d_backward(dX, dY, am, pool=pool, stride=stride)
            else:
                reference.avgpool2d_forward(Y, X, pool=pool, stride=stride)
                reference.avgpool2d_backward(dX, dY, pool=pool, stride=stride)
            np.testing.assert_allclose(Y, tY.detach().numpy().transpose(0, 2, 3, 1), atol=1e-12)
            np.testing.assert_allclose(dX, tX.grad.numpy().transpose(0, 2, 3, 1), atol=1e-12)
    X = rng.normal(size=(4, 3, 3, 5)) * 2 + 1
    bn = torch.nn.BatchNorm2d(5).double()
    bn.weight.data, bn.bias.data = torch.tensor(rng.normal(size=5)), torch.tensor(rng.normal(size=5))
    tX = torch.tensor(X.transpose(0, 3, 1, 2), requires_grad=True)
    tY = bn(tX)
    g, bta = bn.weight.detach().numpy(), bn.bias.detach().numpy()
    Y, mean, invstd, rm, rv = np.empty_like(X), np.empty(5), np.empty(5), np.zeros(5), np.ones(5)
    reference.batchnorm_forward(Y, X, g, bta, mean, invstd, rm, rv, momentum=0.1, eps=1e-5)
    np.testing.assert_allclose(Y, tY.detach().numpy().transpose(0, 2, 3, 1), atol=1e-12)
    np.testing.assert_allclose(rm, bn.running_mean.numpy(), atol=1e-12)
    np.testing.assert_allclose(rv, bn.running_var.numpy(), atol=1e-12)
    dY = rng.normal(size=X.shape)
    tY.backward(torch.tensor(dY.transpose(0, 3, 1, 2)))
    dX, dg, db = np.empty_like(X), np.empty(5), np.empty(5)
    reference.batchnorm_backward(dX, dg, db, dY, X, g, mean, invstd)
    np.testing.assert_allclose(dX, tX.grad.numpy().transpose(0, 2, 3, 1), atol=1e-12)
    np.testing.assert_allclose(dg, bn.weight.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(db, bn.bias.grad.numpy(), atol=1e-12)


def test_pair_arguments():
    assert _checks._pair("stride", 2, 1) == (2, 2)
    assert _checks._pair("stride", (1, 3), 1) == (1, 3)
    with pytest.raises(ValueError):
        _checks._pair("stride", (1, 2, 3), 1)


def test_maxpool_backward_any_valid_argmax(backend, rng):
    """Windows that tile the image (stride = window: c writes dX without a
    scatter) with indices that need not name a pixel of their own window:
    every valid index is honoured, repeated ones accumulate (the scatter's
    semantics, c's fallback)."""
    n, h, w, c = 2, 6, 5, 3
    dY = f32(rng, n, 3, 2, c)
    am = rng.integers(0, h * w, size=dY.shape).astype(np.int32)
    am[0, 0, 0, :] = 0   # in its window, and
    am[0, 0, 1, :] = 0   # the same pixel from the next window
    dX, dXr = np.full((n, h, w, c), np.nan, np.float32), np.empty((n, h, w, c))
    backend.maxpool2d_backward(dX, dY, am, pool=2)
    reference.maxpool2d_backward(dXr, dY.astype(np.float64), am, pool=2)
    close(dX, dXr, rtol=1e-6, atol=1e-7)
