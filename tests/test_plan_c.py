"""The c backend's compiled epoch of any model (csrc/plan.c) and its Philox
dropout (csrc/philox.c), against the reference.

The plans are built by hand here (a small builder, the layout a plan
compiler would give): the C interpreter must follow
reference.run_model_epoch's trajectory, refuse a plan whose offsets or sizes
leave its buffers (writing nothing), and give bit-identical results for
every thread count where its kernels do.  Everything calls the backend
module's functions directly (fastnn.kernels.c, bypassing the front).
"""

import copy
import dataclasses

import numpy as np
import pytest

from fastnn.kernels import c as C
from fastnn.kernels import reference as R
from fastnn.kernels import spec

F, S, Op = spec.F, spec.S, spec.Op
ACT = spec.ACTIVATION_CODES


# ---- Philox dropout ------------------------------------------------------------------

KAT = [  # Random123 kat_vectors, Philox4x32-10: counter, key, output
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_reference_philox_known_answers(ctr, key, want):
    got = R.philox4x32([np.uint32(w) for w in ctr], [np.uint32(w) for w in key])
    assert [int(w) for w in got] == list(want)


def _top24_by_dropout(seed, counter, n=4):
    """The top 24 bits of the first n Philox words of call (seed, counter),
    read through the C dropout kernel alone: with p = k / 2^24 the threshold
    is k exactly, so an element is dropped iff its bits are < k (a binary
    search per element)."""
    lo, hi = np.zeros(n, np.int64), np.full(n, 1 << 24, np.int64)  # bits in [lo, hi)
    X = np.ones(n, np.float32)
    Y = np.empty(n, np.float32)
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        for e in range(n):  # one threshold per call: element e's own search
            C.dropout_forward(Y, X, float(mid[e]) / 2 ** 24, seed, counter)
            if Y[e] == 0.0:   # bits < mid
                hi[e] = mid[e]
            else:
                lo[e] = mid[e]
    return [int(v) for v in lo]


def test_c_dropout_reproduces_the_first_known_answer():
    # counter (block 0, call 0), key (seed 0): KAT[0]; the kernel shows a
    # word's top 24 bits (the others are unreachable: block, call and seed
    # are below 2^62 / 2^63 there)
    assert _top24_by_dropout(0, 0) == [w >> 8 for w in KAT[0][2]]


@pytest.mark.parametrize("size", [1, 3, 4, 5, 1000, 100003])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.999])
def test_c_dropout_masks_are_the_reference_bits(size, p):
    rng = np.random.default_rng(size)
    X = rng.normal(size=size).astype(np.float32)
    X[::7] = np.nan  # NaN * 0 = NaN, as numpy
    X[1::11] = np.inf
    for seed in (0, 1, 2 ** 40 + 5, 2 ** 63 - 1):
        for counter in (0, 1, 2 ** 32 + 3, 2 ** 63 - 1):
            want = np.empty_like(X)
            R.dropout_forward(want, X, p, seed, counter)
            got = np.full_like(X, 7.0)
            C.dropout_forward(got, X, p, seed, counter)
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
            dX = np.full_like(X, 7.0)
            C.dropout_backward(dX, X, p, seed, counter)
            np.testing.assert_array_equal(dX.view(np.uint32), want.view(np.uint32))


def test_c_dropout_in_place_and_shaped():
    X = np.random.default_rng(0).normal(size=(3, 5, 7, 11)).astype(np.float32)
    want = np.empty_like(X)
    R.dropout_forward(want, X, 0.3, 9, 4)
    C.dropout_forward(X, X, 0.3, 9, 4)
    np.testing.assert_array_equal(X, want)


def test_c_dropout_drop_rate():
    X = np.ones(1 << 20, np.float32)
    Y = np.empty_like(X)
    for p in (0.1, 0.5, 0.9):
        C.dropout_forward(Y, X, p, 123, 0)
        assert abs(np.mean(Y == 0) - p) < 0.003
        assert np.all((Y == 0) | (Y == np.float32(1 / (1 - p))))


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_c_dropout_is_the_same_on_any_thread_count(threads):
    X = np.random.default_rng(1).normal(size=1 << 18).astype(np.float32)
    want = np.empty_like(X)
    R.dropout_forward(want, X, 0.25, 77, 5)
    got = np.empty_like(X)
    before = C.lib.fastnn_get_num_threads()
    try:
        C.set_num_threads(threads)
        C.dropout_forward(got, X, 0.25, 77, 5)
    finally:
        C.set_num_threads(before)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("args", [(1.0, 0, 0), (-0.1, 0, 0), (float("nan"), 0, 0),
                                  (0.5, -1, 0), (0.5, 0, -1)])
def test_c_dropout_refuses_bad_arguments(args):
    X = np.ones(8, np.float32)
    Y = np.full(8, 3.0, np.float32)
    with pytest.raises(RuntimeError):
        C.dropout_forward(Y, X, *args)
    assert np.all(Y == 3.0)


# ---- a hand-built plan ----------------------------------------------------------------

class Plan:
    """Records laid out as a plan compiler would: every record's output and
    output gradient get their own workspace regions (a full batch of B
    rows); the current value is (y, dy, shape)."""

    def __init__(self, in_shape, batch):
        self.B = batch
        self.in_shape = tuple(in_shape)
        self.ws = self.iws = self.np = self.nb = 0
        self.records, self.scalars, self.penalized = [], [], []
        self.inits = []     # (offset, size, kind, fan_in) of params
        self.bn = []        # (stat0, stat1, c) of buffers
        self.cur = (-1, -1, (1,) * (3 - len(self.in_shape)) + self.in_shape)  # (h, w, c)

    def alloc(self, size):
        off, self.ws = self.ws, self.ws + size
        return off

    def param(self, size, kind, fan_in=1):
        off, self.np = self.np, self.np + size
        self.inits.append((off, size, kind, fan_in))
        return off

    def record(self, op, out_shape, **fields):
        y, dy, (h, w, c) = self.cur
        r = dict.fromkeys(spec.PLAN_FIELDS, -1)
        osz = int(np.prod(out_shape))
        r.update(op=int(op), x=y, dx=dy, h=h, w=w, c=c, oh=out_shape[0], ow=out_shape[1],
                 oc=out_shape[2], kh=0, kw=0, sh=0, sw=0, ph=0, pw=0, act=0, seed=0, counter=0)
        r["y"] = self.alloc(self.B * osz)
        r["dy"] = self.alloc(self.B * osz)
        sc = dict.fromkeys(spec.PLAN_SCALARS, 0.0)
        for k, v in fields.items():
            (sc if k in sc else r)[k] = v
        self.records.append([int(r[k]) for k in spec.PLAN_FIELDS])
        self.scalars.append([float(sc[k]) for k in spec.PLAN_SCALARS])
        self.cur = (r["y"], r["dy"], tuple(out_shape))
        return r

    def size(self):
        return int(np.prod(self.cur[2]))

    def dense(self, oc, act="identity", bias=True, slope=0.01):
        isz = self.size()
        W = self.param(isz * oc, "w", isz)
        self.penalized.append((W, isz * oc))
        b = self.param(oc, "b") if bias else -1
        self.record(Op.DENSE, (1, 1, oc), param=W, bias=b, act=ACT[act], slope=slope)

    def conv(self, oc, k, stride=1, pad=0, act="identity", bias=True):
        h, w, c = self.cur[2]
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        W = self.param(k * k * c * oc, "w", k * k * c)
        self.penalized.append((W, k * k * c * oc))
        b = self.param(oc, "b") if bias else -1
        self.record(Op.CONV2D, (oh, ow, oc), param=W, bias=b, aux=self.alloc(self.B * oh * ow * k * k * c),
                    kh=k, kw=k, sh=stride, sw=stride, ph=pad, pw=pad, act=ACT[act])

    def pool(self, k, stride=None, kind="max"):
        h, w, c = self.cur[2]
        s = stride or k
        out = ((h - k) // s + 1, (w - k) // s + 1, c)
        extra = {}
        if kind == "max":
            extra["iaux"], self.iws = self.iws, self.iws + self.B * int(np.prod(out))
        self.record(Op.MAXPOOL2D if kind == "max" else Op.AVGPOOL2D, out, kh=k, kw=k, sh=s, sw=s,
                    **extra)

    def flatten(self):
        y, dy, shape = self.cur
        self.cur = (y, dy, (1, 1, int(np.prod(shape))))

    def activation(self, act, slope=0.01):
        self.record(Op.ACTIVATION, self.cur[2], act=ACT[act], slope=slope)

    def softmax(self):
        self.record(Op.SOFTMAX, self.cur[2])

    def batchnorm(self, momentum=0.1, eps=1e-5):
        c = self.cur[2][2]
        gamma, beta = self.param(c, "one"), self.param(c, "b")
        s0, self.nb = self.nb, self.nb + 2 * c
        self.bn.append((s0, s0 + c, c))
        if self.cur[1] == -1:  # batch norm always has a dx: a scratch one
            self.cur = (self.cur[0], self.alloc(self.B * self.size()), self.cur[2])
        self.record(Op.BATCHNORM, self.cur[2], param=gamma, bias=beta, stat0=s0, stat1=s0 + c,
                    aux=self.alloc(2 * c), momentum=momentum, eps=eps)

    def dropout(self, p, seed, counter=0):
        self.record(Op.DROPOUT, self.cur[2], p=p, seed=seed, counter=counter)

    def fork(self):
        """FORK: the branch starts at the current value; returns the token
        add() joins with."""
        y, dy, shape = self.cur
        sz = self.B * self.size()
        dbranch, dskip = self.alloc(sz), self.alloc(sz)
        r = dict.fromkeys(spec.PLAN_FIELDS, 0)
        r.update(op=int(Op.FORK), x=y, y=y, dx=dy, dy=dbranch, aux=y, daux=dskip, iaux=-1,
                 param=-1, bias=-1, stat0=-1, stat1=-1, h=shape[0], w=shape[1], c=shape[2],
                 oh=shape[0], ow=shape[1], oc=shape[2])
        self.records.append([int(r[k]) for k in spec.PLAN_FIELDS])
        self.scalars.append([0.0] * len(spec.PLAN_SCALARS))
        self.cur = (y, dbranch, shape)
        return y, dskip

    def add(self, token):
        skip, dskip = token
        self.record(Op.ADD, self.cur[2], aux=skip, daux=dskip)

    def add_input(self):
        """ADD of the batch's input rows (aux -1; daux -1: no gradient)."""
        self.record(Op.ADD, self.cur[2], aux=-1, daux=-1)

    def epoch(self, X, targets, loss="softmax_xent", optimizer="adam", hyper=None, seed=0,
              **kw):
        """A spec.ModelEpoch of this plan over X, targets, with fresh
        parameters (seeded), zero optimizer states."""
        rng = np.random.default_rng(seed)
        B, n = self.B, X.shape[0]
        in_size, out_size = int(np.prod(self.in_shape)), self.size()
        xb, tb = self.alloc(B * in_size), self.alloc(B * out_size)
        lb = self.iws
        params = np.zeros(self.np, np.float32)
        for off, size, kind, fan_in in self.inits:
            params[off:off + size] = (rng.normal(size=size) / np.sqrt(fan_in) if kind == "w"
                                      else 1.0 + 0.1 * rng.normal(size=size) if kind == "one"
                                      else 0.1 * rng.normal(size=size))
        buffers = np.zeros(self.nb, np.float32)
        for s0, s1, c in self.bn:
            buffers[s1:s1 + c] = 1.0
        opt = spec.OPTIMIZERS[optimizer]
        hyper = dict({h.name: h.default for h in opt.hyper}, **(hyper or {}))
        hyper = {h.name: hyper[h.name] for h in opt.hyper}  # the spec's order
        order = kw.get("order")
        rows = n if order is None else len(order)
        n_batches = -(-rows // B)
        return spec.ModelEpoch(
            params=params, grads=np.zeros_like(params), buffers=buffers,
            states=tuple(np.zeros_like(params) for _ in opt.states),
            workspace=np.zeros(self.ws, np.float32),
            iworkspace=np.zeros(self.iws + B, np.int32), X=X.reshape(n, -1),
            targets=targets, batch_losses=np.zeros(n_batches),
            batch_correct=np.zeros(n_batches, np.int64),
            plan=np.array(self.records, np.int64).reshape(-1, len(spec.PLAN_FIELDS)),
            plan_scalars=np.array(self.scalars, np.float64).reshape(-1, len(spec.PLAN_SCALARS)),
            penalized=np.array(self.penalized, np.int64).reshape(-1, 2),
            in_size=in_size, out_size=out_size, xb=xb, tb=tb, lb=lb, output=self.cur[0],
            doutput=self.cur[1], loss=loss, batch_size=B, optimizer=optimizer, hyper=hyper,
            **kw)


def _clone(e):
    """A deep copy of a ModelEpoch (every buffer its own)."""
    return copy.deepcopy(e)


def _outputs(e):
    """What an epoch writes that is a result."""
    return [e.params, e.buffers, *[s for s in e.states if s is not None], e.batch_losses,
            e.batch_correct]


def _data(rng, n, in_shape, out_size, loss):
    X = rng.normal(size=(n, *in_shape)).astype(np.float32)
    if loss == "softmax_xent":
        t = rng.integers(0, out_size, n).astype(np.int32)
    else:
        t = rng.uniform(0, 1, (n, out_size)).astype(np.float32)
    return X, t


def _check_against_reference(e, epochs=1, rtol=2e-4, atol=2e-5):
    want = _clone(e)
    got = _clone(e)
    for _ in range(epochs):
        r_want = R.run_model_epoch(R, want)
        r_got = C.model_epoch(got)
        assert r_got[:2] == r_want[:2]
        np.testing.assert_allclose(r_got[2], r_want[2], rtol=1e-12)
        want.step, want.mu_product = r_want[1], r_want[2]
        got.step, got.mu_product = r_got[1], r_got[2]
    np.testing.assert_allclose(got.batch_losses, want.batch_losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.batch_correct, want.batch_correct)
    np.testing.assert_allclose(got.params, want.params, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got.buffers, want.buffers, rtol=rtol, atol=atol)
    for a, b in zip(got.states, want.states):
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    return got, want


def mlp(B=8):
    p = Plan((6,), B)
    p.dense(9, "relu")
    p.dense(7, "tanh")
    p.dense(3)
    return p


def cnn(B=8):
    p = Plan((8, 8, 2), B)
    p.conv(4, 3, pad=1, act="relu")
    p.pool(2)
    p.conv(5, 3, stride=2, pad=1, act="leaky_relu")
    p.flatten()
    p.dense(3)
    return p


def bn_net(B=8):
    p = Plan((5, 5, 3), B)
    p.batchnorm()
    p.conv(4, 3, pad=1, act="identity", bias=False)  # (padded: a shift of the input survives)
    p.batchnorm(momentum=0.2, eps=1e-3)
    p.activation("relu")
    p.pool(2, kind="avg")
    p.flatten()
    p.dense(6, "sigmoid", bias=False)  # (a bias before batch norm: ~0 gradient, noise)
    p.batchnorm()
    p.dense(3)
    return p


def dropout_net(B=8):
    p = Plan((10,), B)
    p.dropout(0.2, seed=5, counter=3)
    p.dense(12, "relu")
    p.dropout(0.5, seed=2 ** 40 + 5, counter=2 ** 33)
    p.dense(3)
    return p


def residual(B=8):
    p = Plan((6,), B)
    p.dense(8, "relu")
    t = p.fork()
    p.dense(8, "relu")
    p.dense(8)
    p.add(t)
    p.activation("relu")
    t = p.fork()   # an empty branch: y = 2 x
    p.add(t)
    p.dense(3)
    return p


def residual_first(B=8):
    p = Plan((6,), B)
    p.dense(6, "relu")
    p.add_input()
    p.dense(3)
    return p


def softmax_mse(B=8):
    p = Plan((6,), B)
    p.dense(8, "softplus")
    p.dense(4)
    p.softmax()
    return p


NETS = {"mlp": mlp, "cnn": cnn, "batchnorm": bn_net, "dropout": dropout_net,
        "residual": residual, "residual_first": residual_first, "softmax_mse": softmax_mse}


def _net_epoch(name, rng, n=37, loss=None, **kw):
    p = NETS[name]()
    loss = loss or ("mse" if name == "softmax_mse" else "softmax_xent")
    X, t = _data(rng, n, p.in_shape, p.size(), loss)
    return p.epoch(X, t, loss=loss, **kw)


OPTS = [
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", dict(lr=1e-2, weight_decay=0.01)),
    ("adamw", dict(lr=1e-2)),
    ("rmsprop", dict(lr=1e-3, momentum=0.5, centered=True)),
    ("adagrad", dict(lr=0.05, lr_decay=0.01)),
    ("nadam", dict(lr=1e-2)),
    ("adamax", dict(lr=1e-2)),
    ("radam", dict(lr=1e-2)),
]
assert {o for o, _ in OPTS} == set(spec.OPTIMIZERS)


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("opt,hyper", OPTS, ids=[o for o, _ in OPTS])
def test_model_epoch_matches_reference(name, opt, hyper, rng):
    e = _net_epoch(name, rng, optimizer=opt, hyper=hyper)
    _check_against_reference(e, epochs=2)


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("kw", [dict(l2=0.05), dict(clip_value=0.01), dict(clip_norm=0.05),
                                dict(l2=0.01, clip_value=0.05, clip_norm=0.2,
                                     loss_scale=0.5, grad_scale=2.0)],
                         ids=["l2", "clip_value", "clip_norm", "all"])
def test_model_epoch_penalty_and_clipping(name, kw, rng):
    e = _net_epoch(name, rng, optimizer="sgd", hyper=dict(lr=0.1, momentum=0.5), **kw)
    _check_against_reference(e, epochs=2)


@pytest.mark.parametrize("name", list(NETS))
def test_model_epoch_in_a_given_order(name, rng):
    order = rng.integers(0, 37, 45)
    e = _net_epoch(name, rng, optimizer="adam", hyper=dict(lr=1e-2), order=order)
    _check_against_reference(e, epochs=2)


@pytest.mark.parametrize("loss", ["bce", "mse", "mae"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("ordered", [False, True])
def test_model_epoch_losses(name, loss, ordered, rng):
    kw = dict(order=rng.permutation(37)) if ordered else {}
    e = _net_epoch(name, rng, loss=loss, optimizer="adam", hyper=dict(lr=1e-2), **kw)
    _check_against_reference(e, epochs=2)


def test_model_epoch_with_one_output_bce(rng):
    p = Plan((6,), 8)
    p.dense(5, "relu")
    p.dense(1)
    X, t = _data(rng, 30, (6,), 1, "bce")
    t = (t > 0.5).astype(np.float32)
    got, want = _check_against_reference(p.epoch(X, t, loss="bce", optimizer="sgd",
                                                 hyper=dict(lr=0.1)))
    assert got.batch_correct.sum() > 0


def test_model_epoch_dense_stack_and_generic_paths_agree(rng):
    # all DENSE, no clipping: the tuned dense-stack epoch; a clip that never
    # bites makes the same plan run through the generic loop
    e = _net_epoch("mlp", rng, optimizer="adam", hyper=dict(lr=1e-2), l2=0.01)
    stack, generic = _clone(e), _clone(e)
    generic.clip_value = 1e30
    assert C.model_epoch(stack) == C.model_epoch(generic)
    np.testing.assert_allclose(stack.params, generic.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stack.batch_losses, generic.batch_losses, rtol=1e-6)


def test_model_epoch_stops_at_a_non_finite_loss(rng):
    e = _net_epoch("cnn", rng, optimizer="adam", hyper=dict(lr=1e-2))
    e.X[20] = np.nan  # batch 2 of 8 rows
    before = e.params.copy()
    got, want = _check_against_reference(e)
    assert C.model_epoch(_clone(e))[0] == 3
    assert not np.isfinite(got.batch_losses[2]) and np.all(got.batch_losses[3:] == 0)
    assert not np.array_equal(got.params, before)


def test_model_epoch_counts_steps_and_nadam_product(rng):
    e = _net_epoch("dropout", rng, optimizer="nadam", hyper=dict(lr=1e-2), step=7,
                   mu_product=0.5)
    done, step, mu = C.model_epoch(_clone(e))
    assert (done, step) == (5, 12)
    assert mu == pytest.approx(R.run_model_epoch(R, _clone(e))[2], rel=1e-14)


# ---- thread-count independence -------------------------------------------------------

def _with_threads(n, fn):
    before = C.lib.fastnn_get_num_threads()
    try:
        C.set_num_threads(n)
        return fn()
    finally:
        C.set_num_threads(before)


def _bits_over_threads(e, threads=(1, 2, 4)):
    runs = []
    for n in threads:
        got = _clone(e)
        _with_threads(n, lambda: C.model_epoch(got))
        runs.append(got)
    for got in runs[1:]:
        for a, b in zip(_outputs(got)[:-2], _outputs(runs[0])[:-2]):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(got.batch_correct, runs[0].batch_correct)


def _big_cnn(B=64):
    p = Plan((12, 12, 3), B)
    p.conv(16, 3, pad=1, act="relu")
    p.pool(2)
    p.dropout(0.3, seed=11)
    p.conv(16, 3, pad=1, act="relu")
    p.flatten()
    t = p.fork()
    p.dense(576, "relu")
    p.add(t)
    p.dense(10)
    return p


def test_model_epoch_generic_path_is_the_same_on_any_thread_count(rng):
    # conv, pooling, dropout, dense, fork/add, clip_value: kernels that split
    # their work over outputs only (no l2, clip_norm or batch norm: their
    # sums are made deterministic in another branch)
    p = _big_cnn()
    X, t = _data(rng, 150, p.in_shape, p.size(), "softmax_xent")
    e = p.epoch(X, t, optimizer="adam", hyper=dict(lr=1e-3), clip_value=0.5)
    _bits_over_threads(e)


# The sums of sum_squares (l2, clip_norm), batch norm's statistics and the
# dense-stack epoch's partial products run over fixed chunks (independent of
# the thread count): bit-identical too.


@pytest.mark.parametrize("kw", [dict(l2=0.01), dict(clip_norm=0.5)], ids=["l2", "clip_norm"])
def test_model_epoch_sums_are_the_same_on_any_thread_count(kw, rng):
    p = _big_cnn()
    X, t = _data(rng, 150, p.in_shape, p.size(), "softmax_xent")
    _bits_over_threads(p.epoch(X, t, optimizer="adam", hyper=dict(lr=1e-3), **kw))


def test_model_epoch_batchnorm_is_the_same_on_any_thread_count(rng):
    p = Plan((16, 16, 8), 64)
    p.batchnorm()
    p.conv(16, 3, act="relu")
    p.batchnorm()
    p.flatten()
    p.dense(10)
    X, t = _data(rng, 150, p.in_shape, p.size(), "softmax_xent")
    _bits_over_threads(p.epoch(X, t, optimizer="sgd", hyper=dict(lr=0.01)))


def test_model_epoch_dense_stack_is_the_same_on_any_thread_count(rng):
    p = Plan((784,), 128)
    p.dense(256, "relu")
    p.dense(10)
    X, t = _data(rng, 300, p.in_shape, p.size(), "softmax_xent")
    e = p.epoch(X, t, optimizer="adam", hyper=dict(lr=1e-3))
    e.workspace = np.zeros(e.workspace.size + 2 * 4 * 128 * 256, np.float32)  # room for 4
    _bits_over_threads(e)


# ---- refusal of bad plans --------------------------------------------------------------

def _refused(e):
    """model_epoch(e) raises and writes nothing."""
    before = [np.copy(a) for a in (*_outputs(e), e.grads, e.workspace, e.iworkspace)]
    with pytest.raises(RuntimeError):
        C.model_epoch(e)
    for a, b in zip((*_outputs(e), e.grads, e.workspace, e.iworkspace), before):
        np.testing.assert_array_equal(a, b)


def _corrupt_record(e, i, **fields):
    plan = e.plan.copy()
    for k, v in fields.items():
        plan[i, F[k]] = v
    return dataclasses.replace(e, plan=plan)


WS_BIG = 2 ** 62
CORRUPT = {
    "op 0": (0, dict(op=0)),
    "op 11": (0, dict(op=11)),
    "y past the workspace": (1, dict(y="ws")),
    "y negative": (1, dict(y=-2)),
    "dy past the workspace": (-1, dict(dy="ws-1")),
    "x -3": (1, dict(x=-3)),
    "x -1 of the wrong size": (1, dict(x=-1)),
    "dx past the workspace": (1, dict(dx="ws")),
    "cols past the workspace": (0, dict(aux="ws-1")),
    "weights past params": (0, dict(param="np-1")),
    "bias past params": (0, dict(bias="np")),
    "argmax past iworkspace": (1, dict(iaux="iws")),
    "wrong conv output": (0, dict(oh=9)),
    "padding not below the window": (0, dict(ph=3)),
    "zero stride": (0, dict(sh=0)),
    "pool channels": (1, dict(oc=3)),
    "dense of 2-D output": (-1, dict(oh=2)),
    "activation code": (0, dict(act=8)),
    "overflowing sizes": (0, dict(h=2 ** 40, w=2 ** 40, oh=2 ** 40, ow=2 ** 40)),
    "overflowing batch regions": (0, dict(c=2 ** 61, oc=2 ** 61)),
    "huge offset": (1, dict(y=WS_BIG)),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_model_epoch_refuses_a_corrupt_cnn_record(case, rng):
    e = _net_epoch("cnn", rng, optimizer="adam", hyper=dict(lr=1e-2))
    i, fields = CORRUPT[case]
    sizes = {"ws": e.workspace.size, "ws-1": e.workspace.size - 1, "np": e.params.size,
             "np-1": e.params.size - 1, "iws": e.iworkspace.size}
    fields = {k: sizes.get(v, v) if isinstance(v, str) else v for k, v in fields.items()}
    _refused(_corrupt_record(e, i % len(e.plan), **fields))


@pytest.mark.parametrize("case", ["dropout p 1", "dropout p nan", "dropout seed", "dropout counter",
                                  "add skip", "fork daux", "batchnorm no dx",
                                  "batchnorm stats", "batchnorm eps", "softmax size"])
def test_model_epoch_refuses_other_corrupt_records(case, rng):
    if case.startswith("dropout"):
        e = _net_epoch("dropout", rng)
        if case == "dropout p 1":
            e.plan_scalars[0, S["p"]] = 1.0
        elif case == "dropout p nan":
            e.plan_scalars[2, S["p"]] = np.nan
        elif case == "dropout seed":
            e.plan[0, F["seed"]] = -5
        else:  # counter + the epoch's batches past int64
            e.plan[2, F["counter"]] = 2 ** 63 - 3
    elif case in ("add skip", "fork daux"):
        e = _net_epoch("residual", rng)
        ops = list(e.plan[:, F["op"]])
        if case == "add skip":
            e.plan[ops.index(Op.ADD), F["aux"]] = e.workspace.size - 3
        else:
            e.plan[ops.index(Op.FORK), F["daux"]] = -1
    elif case.startswith("batchnorm"):
        e = _net_epoch("batchnorm", rng)
        i = list(e.plan[:, F["op"]]).index(Op.BATCHNORM)
        if case == "batchnorm no dx":
            e.plan[i, F["dx"]] = -1
        elif case == "batchnorm stats":
            e.plan[i, F["stat1"]] = e.buffers.size - 1
        else:
            e.plan_scalars[i, S["eps"]] = 0.0
    else:
        e = _net_epoch("softmax_mse", rng)
        e.plan[-1, F["oc"]] = 5
    _refused(e)


def test_model_epoch_refuses_a_last_batch_too_small_for_batch_norm(rng):
    p = Plan((6,), 8)
    p.dense(5)
    p.batchnorm()
    p.dense(3)
    X, t = _data(rng, 17, (6,), 3, "softmax_xent")  # 8 + 8 + 1
    _refused(p.epoch(X, t))
    C.model_epoch(p.epoch(X[:18 - 2], t[:16]))


@pytest.mark.parametrize("case", ["label", "negative label", "order", "negative order",
                                  "penalized", "penalized size", "state", "output", "doutput",
                                  "xb", "tb", "lb", "step", "workspace size"])
def test_model_epoch_refuses_bad_epoch_fields(case, rng):
    loss = "mse" if case == "tb" else "softmax_xent"
    order = rng.permutation(37) if case in ("order", "negative order", "xb", "tb", "lb") else None
    e = _net_epoch("cnn", rng, loss=loss, optimizer="adam", hyper=dict(lr=1e-2), order=order,
                   l2=0.01)
    if case == "label":
        e.targets[5] = 3
    elif case == "negative label":
        e.targets[36] = -1
    elif case == "order":
        e.order[3] = 37
    elif case == "negative order":
        e.order[0] = -1
    elif case == "penalized":
        e.penalized[0, 0] = e.params.size - 1
    elif case == "penalized size":
        e.penalized[1, 1] = 2 ** 63 - 1
    elif case == "state":
        e.states = (e.states[0], None)
    elif case == "output":
        e.output = e.workspace.size - 1
    elif case == "doutput":
        e.doutput = -1
    elif case == "xb":
        e.xb = e.workspace.size - 8
    elif case == "tb":
        e.tb = e.workspace.size - 1
    elif case == "lb":
        e.lb = e.iworkspace.size - 1
    elif case == "step":
        e.step = 2 ** 63 - 2
    else:
        e.workspace = e.workspace[:e.plan[-1, F["dy"]] + 3]
    _refused(e)


# ---- plans from the compiler (fastnn.plan) ------------------------------------------------

def _compiled(layers, shape, n=45, batch=8, loss="softmax_xent", classes=3, seed=0, **kw):
    """A ModelEpoch of fastnn.plan's compilation of a Sequential (c backend
    parameters), fresh optimizer state."""
    from fastnn import Sequential
    from fastnn import plan as plan_mod
    model = Sequential(layers, seed=seed, backend="c", input_shape=shape)
    plan = plan_mod.compile_model(model, batch)
    rng = np.random.default_rng(seed)
    X, t = _data(rng, n, shape, classes, loss)
    opt = kw.pop("optimizer", "adam")
    o = spec.OPTIMIZERS[opt]
    hyper = dict({h.name: h.default for h in o.hyper}, **kw.pop("hyper", {}))
    n_batches = -(-n // batch)
    return plan.epoch(
        params=model.params.copy(), grads=np.zeros_like(model.params),
        buffers=model.buffers.copy(), states=tuple(np.zeros_like(model.params) for _ in o.states),
        workspace=np.zeros(plan.workspace_size, np.float32),
        iworkspace=np.zeros(plan.iworkspace_size, np.int32), X=X.reshape(n, -1), targets=t,
        batch_losses=np.zeros(n_batches), batch_correct=np.zeros(n_batches, np.int64),
        loss=loss, optimizer=opt, hyper={h.name: hyper[h.name] for h in o.hyper}, **kw)


def _compiled_models():
    from fastnn import (AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool,
                        MaxPool2D, ReLU, Residual)
    return {
        "cnn": ([Conv2D(1, 4, 3, padding=1, activation="relu"), MaxPool2D(2),
                 Conv2D(4, 6, 3, stride=2, padding=1), ReLU(), AvgPool2D(2), Flatten(),
                 Dense(6, 3)], (8, 8, 1)),
        "cnn_bn_dropout": ([Conv2D(2, 4, 3, padding=1, activation="tanh"), BatchNorm(4), ReLU(),
                            Dropout(0.2),  # (tanh: a bias right before BN has ~0 gradient)
                            GlobalAvgPool(), Dense(4, 3)], (7, 7, 2)),
        # conv + max pooling backward as one pass (cnn.c): odd sizes leave a
        # row and a column no window covers; an identity conv before its pool
        "cnn_pool_fused": ([Conv2D(2, 5, 3, padding=1, activation="relu"), MaxPool2D(2),
                            Conv2D(5, 8, 3, padding=1), MaxPool2D(3), Flatten(), Dense(8, 3)],
                           (7, 7, 2)),
        # a first convolution of few channels and its max pooling as one
        # pass (cnn.c, fastnn_conv_pool_small_*): 20 channels = a vector
        # and a 4-lane tail, 9 x 9 leaves a row and a column no window covers
        "cnn_first_pool": ([Conv2D(3, 20, 3, padding=1, activation="relu"), MaxPool2D(2),
                            Conv2D(20, 6, 3, padding=1, activation="relu"), MaxPool2D(2),
                            Flatten(), Dense(24, 3)], (9, 9, 3)),
        # the kernel's shapes without constant loop bounds: 5x5 taps of one
        # channel under a 3x3 window, leaky ReLU; 2 channels 3x3, identity
        "cnn_first_pool_generic": ([Conv2D(1, 7, 5, padding=2, activation="leaky_relu"),
                                    MaxPool2D(3), Flatten(), Dense(28, 3)], (7, 7, 1)),
        "cnn_first_pool_identity": ([Conv2D(2, 16, 3), MaxPool2D(2), ReLU(), Flatten(),
                                     Dense(144, 3)], (8, 8, 2)),
        "residual": ([Dense(10, 8, activation="relu"),
                      Residual(Dense(8, 8, activation="relu"), Dense(8, 8)),
                      Residual(Dense(8, 6)), ReLU(), Dense(6, 3)], (10,)),
        "residual_first": ([Residual(Dense(10, 10, activation="relu")), Dense(10, 3)], (10,)),
        "mlp": ([Dense(10, 8, activation="relu"), Dense(8, 3)], (10,)),
        # the dense stack with BatchNorm / Dropout run inside it (train.c's post ops)
        "mlp_bn_dropout": ([Dense(10, 16, activation="relu"), BatchNorm(16), Dropout(0.2),
                            Dense(16, 8, activation="tanh"), Dropout(0.3),
                            Dense(8, 12, activation="relu"), BatchNorm(12), Dense(12, 3)],
                           (10,)),
        # post ops' mask bits (16 columns a word): a part word alone (36 = 2
        # words + 4), with BatchNorm (20), whole words (48); ReLU's derivative
        # fused into the post ops' last pass, identity's skipped
        "mlp_dropout_words": ([Dense(10, 36, activation="relu"), Dropout(0.3),
                               Dense(36, 20, activation="relu"), BatchNorm(20), Dropout(0.25),
                               Dense(20, 48), Dropout(0.5), Dense(48, 3)], (10,)),
    }


@pytest.mark.parametrize("name", ["cnn", "cnn_bn_dropout", "cnn_pool_fused", "cnn_first_pool",
                                  "cnn_first_pool_generic", "cnn_first_pool_identity", "residual",
                                  "residual_first", "mlp", "mlp_bn_dropout",
                                  "mlp_dropout_words"])
@pytest.mark.parametrize("kw", [{}, dict(l2=0.01, clip_norm=0.5, order=np.arange(45)[::-1])],
                         ids=["plain", "l2_clip_order"])
def test_compiled_plans_match_the_reference(name, kw, rng):
    layers, shape = _compiled_models()[name]
    _check_against_reference(_compiled(layers, shape, **kw), epochs=2)


_FIRST_POOL = ["cnn_first_pool", "cnn_first_pool_generic", "cnn_first_pool_identity"]


def _first_conv_output(e):
    """The workspace region of the plan's first record (a convolution): its
    output, which the one-pass convolution + pooling never writes."""
    r = e.plan[0]
    assert r[spec.F["op"]] == spec.Op.CONV2D
    size = r[spec.F["oh"]] * r[spec.F["ow"]] * r[spec.F["oc"]] * e.batch_size
    return e.workspace[r[spec.F["y"]]:r[spec.F["y"]] + size]


@pytest.mark.parametrize("name", _FIRST_POOL)
def test_first_conv_and_pool_one_pass_agrees_with_the_unfused_path(name):
    # the one pass is AVX-512 only: the AVX2 path runs the convolution, the
    # pooling and the pooled backward as before; same training to float32
    # rounding, and the one pass did run (the convolution's output unwritten)
    if C.lib.fastnn_simd_best() != 2:
        pytest.skip("the one-pass kernels are AVX-512 only")
    e = _compiled(*_compiled_models()[name], l2=0.01, order=np.arange(45)[::-1])
    fused, unfused = _clone(e), _clone(e)
    C.set_simd_path("avx2")
    try:
        r_unfused = C.model_epoch(unfused)
    finally:
        C.set_simd_path("avx512")
    assert C.model_epoch(fused)[:2] == r_unfused[:2]
    assert not _first_conv_output(fused).any() and _first_conv_output(unfused).any()
    np.testing.assert_allclose(fused.params, unfused.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused.batch_losses, unfused.batch_losses, rtol=1e-6)
    np.testing.assert_array_equal(fused.batch_correct, unfused.batch_correct)


def test_first_conv_and_pool_one_pass_edge_values():
    # -0, denormals, huge values and exact ties (a constant patch: every
    # window's candidates equal, so the first wins) in X: the pooled values
    # and argmax of the last batch and the trained parameters as the unfused
    # path's; then a NaN: the pooling takes the window's first NaN, as the
    # unfused one, and the epoch stops on the non-finite loss
    if C.lib.fastnn_simd_best() != 2:
        pytest.skip("the one-pass kernels are AVX-512 only")
    layers, shape = _compiled_models()["cnn_first_pool"]
    e = _compiled(layers, shape)
    X = e.X.reshape(-1, *shape)
    X[0, :3] = -0.0
    X[1, :, :4] = 1e-41
    X[2, 2] = 1e20
    X[3, 4:, 4:] = 0.25
    for nan in (False, True):
        if nan:
            X[0, 5, 6, 1] = np.nan
        fused, unfused = _clone(e), _clone(e)
        r_fused = C.model_epoch(fused)
        C.set_simd_path("avx2")
        try:
            r_unfused = C.model_epoch(unfused)
        finally:
            C.set_simd_path("avx512")
        assert r_fused[:2] == r_unfused[:2]
        pool = fused.plan[1]
        size = pool[spec.F["oh"]] * pool[spec.F["ow"]] * pool[spec.F["oc"]] * e.batch_size
        y, ia = pool[spec.F["y"]], pool[spec.F["iaux"]]
        np.testing.assert_array_equal(fused.iworkspace[ia:ia + size],
                                      unfused.iworkspace[ia:ia + size])
        np.testing.assert_allclose(fused.workspace[y:y + size], unfused.workspace[y:y + size],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fused.params, unfused.params, rtol=1e-5, atol=1e-6)
        if nan:
            assert r_fused[0] == 1 and np.isnan(fused.batch_losses[0])
            np.testing.assert_array_equal(fused.params, e.params)


def _output_region(e):
    """The plan's output region: the dense-stack epoch computes the model's
    output in its own (smaller) layout, so this stays zero there, and the
    generic loop writes it."""
    return e.workspace[e.output:].copy()


@pytest.mark.parametrize("name", ["mlp_bn_dropout", "mlp_dropout_words"])
@pytest.mark.parametrize("kw", [{}, dict(order=np.arange(45)[::-1], l2=0.01)],
                         ids=["plain", "order_l2"])
def test_dense_stack_with_batchnorm_dropout_agrees_with_the_generic_loop(name, kw):
    # Dense-BatchNorm-Dropout chains run as the dense-stack epoch's post ops;
    # a clip that never bites sends the same plan through the generic loop
    e = _compiled(*_compiled_models()[name], **kw)
    stack, generic = _clone(e), _clone(e)
    generic.clip_value = 1e30
    assert C.model_epoch(stack) == C.model_epoch(generic)
    assert not _output_region(stack).any() and _output_region(generic).any()
    np.testing.assert_allclose(stack.params, generic.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stack.buffers, generic.buffers, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stack.batch_losses, generic.batch_losses, rtol=1e-6)


def test_dense_stack_with_batchnorm_dropout_same_bits_on_any_thread_count():
    from fastnn import BatchNorm, Dense, Dropout
    layers = [Dense(256, 256, activation="relu"), BatchNorm(256), Dropout(0.2),
              Dense(256, 128, activation="relu"), BatchNorm(128), Dropout(0.2), Dense(128, 10)]
    e = _compiled(layers, (256,), n=150, batch=64, classes=10)
    _bits_over_threads(e, threads=(1, 2, 3, 4))
    got = _clone(e)
    _with_threads(1, lambda: C.model_epoch(got))
    assert not _output_region(got).any()  # the stack path ran


def test_dense_stack_dropout_words_same_bits_on_any_thread_count():
    # widths past 16-column words and chunks (180 = 11 words + 4), dropout
    # without BatchNorm before a ReLU layer, and with it
    from fastnn import BatchNorm, Dense, Dropout
    layers = [Dense(300, 180, activation="relu"), Dropout(0.2),
              Dense(180, 100, activation="relu"), BatchNorm(100), Dropout(0.3), Dense(100, 10)]
    e = _compiled(layers, (300,), n=150, batch=64, classes=10)
    _bits_over_threads(e, threads=(1, 2, 3, 4))
    got = _clone(e)
    _with_threads(1, lambda: C.model_epoch(got))
    assert not _output_region(got).any()  # the stack path ran


def test_compiled_cnn_is_the_same_on_any_thread_count():
    from fastnn import Conv2D, Dense, Dropout, Flatten, MaxPool2D
    layers = [Conv2D(3, 16, 3, padding=1, activation="relu"), MaxPool2D(2), Dropout(0.25),
              Conv2D(16, 32, 3, padding=1, activation="relu"), MaxPool2D(2), Flatten(),
              Dense(288, 10)]
    _bits_over_threads(_compiled(layers, (12, 12, 3), n=200, batch=64, classes=10,
                                 clip_value=1.0))
