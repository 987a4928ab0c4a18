"""IEEE edge values through convolution and pooling, on c and numba, against
the reference computing in float32 on the same inputs.

Each edge value of test_edge_values.EDGES is put into X (or into dY for the
backward) at a corner pixel, an interior pixel and an edge pixel of the
images, the rest ordinary values; the outputs must match the reference
under test_edge_values.assert_same_ieee: NaN exactly where the reference
has NaN (a NaN or an inf - inf in a window), the same infinities, finite
values within a tolerance scaled by the magnitude of the summed terms.
Signs of zero are compared for pooling (a max picks one of its inputs; the
backward's 0 + dY turns -0 into +0, as the reference's zeros + add.at) and
not for the convolution (a sum's zero has the sign of its order).
Denormal results may be flushed (ftz) in the convolution's sums.  Shapes
cover the c backend's direct stride-1 path (the few-channel dX gather and
the dX as a convolution of the padded dZ), its Winograd path, its im2col
path (stride 2) and the fused 2x2 pooling paths.
"""

import numpy as np
import pytest

from fastnn import kernels

from .conftest import require
from .test_edge_values import EDGES, assert_same_ieee

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

reference = kernels.get("reference")
F32 = np.float32
TINY = {"denorm_min", "+1e-40", "-1e-40"}

# (n, h, w, c, oc, stride, padding): a 1-channel input (dX gather on c), 9
# channels (dX as a convolution), stride 2 (im2col), 16 channels and even
# sizes (the forward and dX by Winograd, whose tiles holding an edge value
# fall back to the direct sum; dX's reads dZ in place, border tiles
# gathered: padding 1, and 0 where dZ's tiles take two rows of zeros)
CONV_SHAPES = [(2, 6, 5, 1, 4, 1, 1), (2, 5, 6, 9, 3, 1, 1), (2, 7, 7, 3, 5, 2, 1),
               (2, 8, 8, 16, 16, 1, 1), (2, 10, 8, 16, 16, 1, 0)]


def _ordinary(rng, *shape):
    return rng.choice(np.array([0.5, -0.5, 3.0, -3.0, 0.25, -2.0], F32), size=shape)


def _place(a, value):
    """a copy of a (n, h, w, c) with value at a corner, an interior and an
    edge pixel (different channels, images)."""
    a = a.copy()
    n, h, w, c = a.shape
    a[0, 0, 0, 0] = value
    a[n - 1, h // 2, w // 2, c - 1] = value
    a[0, h - 1, w // 2, c // 2] = value
    return a


@pytest.fixture(params=["c", "numba"])
def cpu(request):
    return require(request.param)


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=["c1", "c9", "stride2", "winograd", "winograd_pad0"])
@pytest.mark.parametrize("activation", ["identity", "relu"])
@pytest.mark.parametrize("edge", list(EDGES))
def test_conv2d_edge_values(cpu, shape, activation, edge):
    n, h, w, c, oc, s, p = shape
    rng = np.random.default_rng(7)
    kh = kw = 3
    oh, ow = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
    W = _ordinary(rng, kh, kw, c, oc)
    b = _ordinary(rng, oc)
    args = dict(stride=s, padding=p, activation=activation, negative_slope=0.0)
    ftz = edge in TINY
    for where in ("X", "dY"):
        X = _ordinary(rng, n, h, w, c)
        dY = _ordinary(rng, n, oh, ow, oc)
        if where == "X":
            X = _place(X, EDGES[edge])
        else:
            dY = _place(dY, EDGES[edge])
        out = {}
        for k in (cpu, reference):
            Y = np.full((n, oh, ow, oc), np.nan, F32)
            cols = np.full((n * oh * ow, kh * kw * c), np.nan, F32)
            k.conv2d_forward(Y, X, W, b, cols, **args)
            g = dict(dX=np.full(X.shape, np.nan, F32), dW=np.full(W.shape, np.nan, F32),
                     db=np.full(oc, np.nan, F32), dZ=np.full(Y.shape, np.nan, F32))
            k.conv2d_backward(g["dX"], g["dW"], g["db"], g["dZ"], dY, X, W, Y, cols, **args)
            out[k.name] = dict(Y=Y, **g)
        # the magnitude of the summed terms: the reference on |inputs|
        aX, aW, adY = np.abs(X), np.abs(W), np.abs(dY)
        with np.errstate(all="ignore"):
            Ys = np.empty((n, oh, ow, oc), F32)
            cs = np.empty((n * oh * ow, kh * kw * c), F32)
            reference.conv2d_forward(Ys, aX, aW, np.abs(b), cs, **dict(args, activation="identity"))
            mags = dict(dX=np.empty(X.shape, F32), dW=np.empty(W.shape, F32), db=np.empty(oc, F32),
                        dZ=np.empty(Ys.shape, F32))
            reference.conv2d_backward(mags["dX"], mags["dW"], mags["db"], mags["dZ"], adY, aX, aW,
                                      Ys, cs, **dict(args, activation="identity"))
        mags["Y"] = Ys
        got, want = out[cpu.name], out["reference"]
        for key in ("Y", "dZ", "db", "dW", "dX"):
            assert_same_ieee(got[key], want[key], rtol=1e-5, atol=1e-6, scale=mags[key], ftz=ftz,
                             signed_zero=False,
                             what=f"{cpu.name} conv2d {key}, {edge} in {where}, {shape}, {activation}")


# The c backend's Winograd dW transforms and multiplies its tiles in chunks
# of 128, a chunk's products added to dW's sums before the next chunk is
# transformed: an edge value found in a later chunk must still send the
# whole dW to the direct sum.  10 images of 12 x 12: 360 tiles, three chunks; the value in
# the first, the middle or the last one, on 1 and 2 threads.  The other
# values are positive, so that the direct sum of an inf is +inf, where the
# Winograd transforms' differences (inf - inf) would leave NaN.
@pytest.mark.parametrize("image", [0, 4, 9], ids=["chunk0", "chunk1", "chunk2"])
@pytest.mark.parametrize("where", ["X", "dY"])
@pytest.mark.parametrize("edge", ["nan", "+inf", "+1e30"])
@pytest.mark.parametrize("threads", [1, 2])
def test_winograd_dw_edge_value_in_a_later_chunk(image, where, edge, threads):
    from .test_threads import c_threads

    c = require("c")
    n, h, w, ch, oc = 10, 12, 12, 16, 16
    rng = np.random.default_rng(11)
    pos = np.array([0.5, 3.0, 0.25, 2.0], F32)
    X, dY = rng.choice(pos, size=(n, h, w, ch)), rng.choice(pos, size=(n, h, w, oc))
    W, b = rng.choice(pos, size=(3, 3, ch, oc)), rng.choice(pos, size=oc)
    (X if where == "X" else dY)[image, 5, 7, 3] = EDGES[edge]
    args = dict(stride=1, padding=1, activation="identity", negative_slope=0.0)
    out = {}
    with c_threads(threads):
        for k in (c, reference):
            Y = np.empty((n, h, w, oc), F32)
            cols = np.full((n * h * w, 9 * ch), np.nan, F32)
            k.conv2d_forward(Y, X, W, b, cols, **args)
            dW, db = np.full(W.shape, np.nan, F32), np.full(oc, np.nan, F32)
            k.conv2d_backward(None, dW, db, np.empty_like(Y), dY, X, W, Y, cols, **args)
            out[k.name] = dW
    with np.errstate(all="ignore"):
        mags = np.einsum("nhwc,nhwo->co", np.abs(X), np.abs(dY)).max()
    if edge == "+inf":  # the case that tells the two sums apart
        assert np.isposinf(out["reference"]).any() and not np.isnan(out["reference"]).any()
    assert_same_ieee(out["c"], out["reference"], rtol=1e-5, atol=1e-6, scale=np.full(W.shape, mags),
                     signed_zero=False, what=f"c conv2d dW, {edge} in {where} image {image}")


POOL_SHAPES = [((2, 6, 6, 16), (2, 2), (2, 2)),    # 2x2 tiling: the c fast paths
               ((2, 7, 5, 3), (2, 2), (2, 2)),     # a row and a column no window covers
               ((2, 6, 6, 3), (3, 3), (2, 2))]     # overlapping windows: the general paths


@pytest.mark.parametrize("shape,pool,stride", POOL_SHAPES, ids=["2x2", "2x2_odd", "3x3s2"])
@pytest.mark.parametrize("edge", list(EDGES))
def test_pooling_edge_values(cpu, shape, pool, stride, edge):
    n, h, w, c = shape
    rng = np.random.default_rng(3)
    oh, ow = (h - pool[0]) // stride[0] + 1, (w - pool[1]) // stride[1] + 1
    for where in ("X", "dY"):
        X = _ordinary(rng, *shape)
        X[1, 1, 1, :] = X[1, 1, 0, :]  # ties: the first in the window wins
        X[0, 2, 2, 0], X[0, 2, 3, 0] = 0.0, -0.0  # +0 before -0
        dY = _ordinary(rng, n, oh, ow, c)
        if where == "X":
            X = _place(X, EDGES[edge])
        else:
            dY = _place(dY, EDGES[edge])
        res = {}
        for k in (cpu, reference):
            Y = np.full((n, oh, ow, c), np.nan, F32)
            am = np.full((n, oh, ow, c), -1, np.int32)
            dX = np.full(shape, np.nan, F32)
            k.maxpool2d_forward(Y, X, am, pool=pool, stride=stride)
            k.maxpool2d_backward(dX, dY, am, pool=pool, stride=stride)
            Ya, dXa = np.full(Y.shape, np.nan, F32), np.full(shape, np.nan, F32)
            k.avgpool2d_forward(Ya, X, pool=pool, stride=stride)
            k.avgpool2d_backward(dXa, dY, pool=pool, stride=stride)
            res[k.name] = dict(max_Y=Y, max_argmax=am, max_dX=dX, avg_Y=Ya, avg_dX=dXa)
        got, want = res[cpu.name], res["reference"]
        np.testing.assert_array_equal(got["max_argmax"], want["max_argmax"])
        for key in ("max_Y", "max_dX"):  # picks and copies: exact, with the signs of zero
            assert_same_ieee(got[key], want[key], rtol=0, atol=0,
                             what=f"{cpu.name} {key}, {edge} in {where}, {shape}")
        for key in ("avg_Y", "avg_dX"):  # means in double, rounded once
            assert_same_ieee(got[key], want[key], rtol=1e-6, ftz=False, signed_zero=False,
                             what=f"{cpu.name} {key}, {edge} in {where}, {shape}")
