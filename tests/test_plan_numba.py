"""The numba backend's compiled epoch of any model (model_epoch, the plan
interpreter) and the Philox dropout kernels of numba and cuda.

Dropout masks must be bit-identical to reference.dropout_mask.  model_epoch
on numba is compared with reference.run_model_epoch on hand-built plans
(spec.ModelEpoch): over numba's own kernels it must give the same bits (the
same kernels in the same order), over the numpy reference the same numbers
to float32 rounding.  The kernels are called at module level (the backend's
implementations, not the front), so that the test needs nothing but the
specification, the reference and the backend.
"""

import copy

import numpy as np
import pytest

from fastnn.kernels import reference as R
from fastnn.kernels import spec

nb = pytest.importorskip("fastnn.kernels.numba")

F, S, Op = spec.F, spec.S, spec.Op

SIZES = (1, 3, 4, 5, 1000, 100003)
PS = (0.0, 0.1, 0.5, 0.999)
SEEDS = (0, 1, 2 ** 40 + 5, 2 ** 63 - 1)
COUNTERS = (0, 1, 2 ** 32 - 1, 2 ** 32 + 7, 2 ** 62 + 3)


# ---- dropout --------------------------------------------------------------------

def test_philox_known_answers():
    """Random123's kat_vectors for Philox4x32-10 (the contract's)."""
    from fastnn.kernels.numba._dropout import _philox
    u = np.uint64
    cases = [((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
             ((0xffffffff,) * 4, (0xffffffff,) * 2,
              (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
             ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
              (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1))]
    for ctr, key, want in cases:
        got = _philox(*(u(v) for v in ctr), *(u(v) for v in key))
        assert tuple(int(v) for v in got) == want
        ref = R.philox4x32([np.uint64(v) for v in ctr], [np.uint64(v) for v in key])
        assert tuple(int(v) for v in ref) == want


def _bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


@pytest.mark.parametrize("size", SIZES)
def test_numba_dropout_is_the_reference_mask(size):
    rng = np.random.default_rng(size)
    X = rng.standard_normal(size).astype(np.float32)
    X[:min(size, 3)] = [np.nan, np.inf, -0.0][:min(size, 3)]
    for p in PS:
        for seed in SEEDS:
            for counter in COUNTERS[:3] if size > 1000 else COUNTERS:
                mask = R.dropout_mask(size, p, seed, counter)
                want = X * mask
                Y = np.empty_like(X)
                nb.dropout_forward(Y, X, p, seed, counter)
                np.testing.assert_array_equal(_bits(Y), _bits(want), err_msg=f"{p} {seed}")
                dX = np.empty_like(X)
                nb.dropout_backward(dX, X, p, seed, counter)
                np.testing.assert_array_equal(_bits(dX), _bits(want))


def test_numba_dropout_shapes_and_in_place():
    X = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.float32)
    want = R.dropout_forward(np.empty_like(X), X, 0.3, 9, 4)
    Y = np.empty_like(X)
    nb.dropout_forward(Y, X, 0.3, 9, 4)
    np.testing.assert_array_equal(Y, want)
    nb.dropout_forward(X, X, 0.3, 9, 4)  # in place
    np.testing.assert_array_equal(X, want)


def test_numba_dropout_rate():
    X = np.ones(1 << 18, np.float32)
    Y = np.empty_like(X)
    nb.dropout_forward(Y, X, 0.25, 123, 0)
    assert abs(np.mean(Y == 0) - 0.25) < 0.005
    assert np.all(Y[Y != 0] == np.float32(1 / 0.75))


@pytest.fixture(scope="module")
def cu():
    """The cuda backend's module (the simulator without a GPU; conftest)."""
    return pytest.importorskip("fastnn.kernels.cuda")


@pytest.mark.parametrize("size", (1, 3, 4, 5, 37))
def test_cuda_dropout_is_the_reference_mask(cu, size):
    rng = np.random.default_rng(size)
    X = rng.standard_normal(size).astype(np.float32)
    for p in PS:
        for seed in SEEDS:
            for counter in (2 ** 32 + 7, 2 ** 62 + 3):
                want = X * R.dropout_mask(size, p, seed, counter)
                dX = cu.to_device(X)
                Y = cu.empty(size)
                cu.dropout_forward(Y, dX, p, seed, counter)
                np.testing.assert_array_equal(_bits(cu.to_numpy(Y)), _bits(want))
                G = cu.empty(size)
                cu.dropout_backward(G, dX, p, seed, counter)
                np.testing.assert_array_equal(_bits(cu.to_numpy(G)), _bits(want))
    H = np.empty_like(X)  # a host output
    cu.dropout_forward(H, cu.to_device(X), 0.5, 3, 1)
    np.testing.assert_array_equal(_bits(H), _bits(X * R.dropout_mask(size, 0.5, 3, 1)))


# ---- hand-built plans -------------------------------------------------------------

class Plan:
    """Lays a model out as spec.ModelEpoch records: each layer's output and
    its gradient get fresh workspace regions; a layer reads the previous
    output and writes its input gradient into the previous gradient."""

    def __init__(self, shape, batch):
        self.B, self.shape = batch, tuple(shape)
        self.ws = self.iws = self.n_params = self.n_buffers = 0
        self.recs, self.scal, self.penalized, self.init = [], [], [], []
        self.x, self.dx = -1, -1
        self.forks = []

    def alloc(self, n):
        off, self.ws = self.ws, self.ws + self.B * n
        return off

    def param(self, n, scale, penalize=False, fill=None):
        off = self.n_params
        self.n_params += n
        self.init.append((off, n, scale, fill))
        if penalize:
            self.penalized.append((off, n))
        return off

    def record(self, op, oshape, dx=None, **fields):
        r = dict.fromkeys(spec.PLAN_FIELDS, -1)
        for k in ("h", "w", "c", "oh", "ow", "oc", "kh", "kw", "sh", "sw", "ph", "pw",
                  "act", "seed", "counter"):
            r[k] = 0
        h, w, c = self.shape
        oh, ow, oc = oshape
        osz = oh * ow * oc
        r.update(op=int(op), x=self.x, dx=self.dx if dx is None else dx, h=h, w=w, c=c, oh=oh,
                 ow=ow, oc=oc)
        s = dict(slope=0.01, momentum=0.1, eps=1e-5, p=0.0)
        for k, v in fields.items():
            (s if k in s else r)[k] = v
        if op != Op.FORK:
            r["y"] = self.alloc(osz)
        r["dy"] = self.alloc(osz)
        self.recs.append(r)
        self.scal.append(s)
        if op != Op.FORK:
            self.x, self.dx, self.shape = r["y"], r["dy"], tuple(oshape)
        return r

    # layers
    def dense(self, oc, act="identity", bias=True, slope=0.01):
        h, w, c = self.shape
        fi = h * w * c
        W = self.param(fi * oc, 1 / np.sqrt(fi), penalize=True)
        b = self.param(oc, 0.1) if bias else -1
        return self.record(Op.DENSE, (1, 1, oc), param=W, bias=b,
                           act=spec.ACTIVATION_CODES[act], slope=slope)

    def conv(self, oc, k=3, stride=1, pad=1, act="relu", bias=True):
        h, w, c = self.shape
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        W = self.param(k * k * c * oc, 1 / np.sqrt(k * k * c), penalize=True)
        b = self.param(oc, 0.1) if bias else -1
        cols = self.alloc(oh * ow * k * k * c)
        return self.record(Op.CONV2D, (oh, ow, oc), param=W, bias=b, aux=cols, kh=k, kw=k,
                           sh=stride, sw=stride, ph=pad, pw=pad, act=spec.ACTIVATION_CODES[act])

    def pool(self, k=2, stride=None, kind="max"):
        h, w, c = self.shape
        s = stride or k
        oshape = ((h - k) // s + 1, (w - k) // s + 1, c)
        extra = {}
        if kind == "max":
            extra["iaux"] = self.iws
            self.iws += self.B * oshape[0] * oshape[1] * c
        return self.record(Op.MAXPOOL2D if kind == "max" else Op.AVGPOOL2D, oshape, kh=k, kw=k,
                           sh=s, sw=s, **extra)

    def flatten(self):  # a view: the records read (h, w, c) rows as flat rows
        h, w, c = self.shape
        self.shape = (1, 1, h * w * c)
        # (a Dense record reads h*w*c inputs: nothing to do)

    def activation(self, act, slope=0.01):
        return self.record(Op.ACTIVATION, self.shape, act=spec.ACTIVATION_CODES[act],
                           slope=slope)

    def softmax(self):
        return self.record(Op.SOFTMAX, self.shape)

    def batchnorm(self, momentum=0.1, eps=1e-5):
        c = self.shape[2]
        g = self.param(c, 0.0, fill=1.0)
        b = self.param(c, 0.1)
        stat0, stat1 = self.n_buffers, self.n_buffers + c
        self.n_buffers += 2 * c
        aux = self.ws
        self.ws += 2 * c
        dx = self.alloc(int(np.prod(self.shape))) if self.dx == -1 else None
        return self.record(Op.BATCHNORM, self.shape, dx=dx, param=g, bias=b, stat0=stat0,
                           stat1=stat1, aux=aux, momentum=momentum, eps=eps)

    def dropout(self, p, seed, counter=0):
        return self.record(Op.DROPOUT, self.shape, p=p, seed=seed, counter=counter)

    def fork(self):
        assert self.x != -1, "fork the output of a record"
        n = int(np.prod(self.shape))
        daux = self.alloc(n)
        r = self.record(Op.FORK, self.shape, aux=self.x, daux=daux)
        self.forks.append(r)
        self.dx = r["dy"]  # the main branch writes its input gradient here
        return r

    def add(self):
        f = self.forks.pop()
        return self.record(Op.ADD, self.shape, aux=f["aux"], daux=f["daux"])

    def add_input(self):
        """A residual join whose skip is the model's input (no gradient)."""
        return self.record(Op.ADD, self.shape, aux=-1, daux=-1)

    def epoch(self, X, targets, loss="softmax_xent", optimizer="adam", hyper=None, order=None,
              seed=0, **kw):
        rng = np.random.default_rng(seed)
        params = np.empty(self.n_params, np.float32)
        for off, n, scale, fill in self.init:
            params[off:off + n] = fill if fill is not None else rng.uniform(-scale, scale, n)
        buffers = np.zeros(self.n_buffers, np.float32)
        for r in self.recs:
            if r["op"] == Op.BATCHNORM:
                buffers[r["stat1"]:r["stat1"] + r["c"]] = 1.0
        opt = spec.OPTIMIZERS[optimizer]
        h = {x.name: x.default for x in opt.hyper}
        h.update(hyper or {})
        states = tuple(np.zeros(self.n_params, np.float32) for _ in opt.states)
        n_out = int(np.prod(self.shape))
        B = self.B
        xb = self.alloc(int(np.prod(X.shape[1:])))
        tb = self.alloc(n_out)
        lb = self.iws
        n_rows = X.shape[0] if order is None else len(order)
        nb_ = -(-n_rows // B)
        plan = np.array([[r[k] for k in spec.PLAN_FIELDS] for r in self.recs], np.int64)
        scal = np.array([[s[k] for k in spec.PLAN_SCALARS] for s in self.scal], np.float64)
        last = self.recs[-1]
        return spec.ModelEpoch(
            params=params, grads=np.zeros(self.n_params, np.float32), buffers=buffers,
            states=states, workspace=np.full(self.ws, np.nan, np.float32),
            iworkspace=np.zeros(self.iws + B, np.int32), X=X, targets=targets,
            batch_losses=np.zeros(nb_), batch_correct=np.zeros(nb_, np.int64), plan=plan,
            plan_scalars=scal, penalized=np.array(self.penalized, np.int64).reshape(-1, 2),
            in_size=int(np.prod(X.shape[1:])), out_size=n_out, xb=xb, tb=tb, lb=lb,
            output=last["y"], doutput=last["dy"], loss=loss, batch_size=B, optimizer=optimizer,
            hyper=h, order=order, **kw)


def _data(n, shape, n_out, loss, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n,) + tuple(shape)).astype(np.float32)
    if loss == "softmax_xent":
        T = rng.integers(0, n_out, n).astype(np.int32)
    elif loss == "bce":
        T = (rng.uniform(size=(n, n_out)) > 0.5).astype(np.float32)
    else:
        T = rng.uniform(0, 1, (n, n_out)).astype(np.float32)
    return X, T


def _run(fn, epoch):
    e = copy.deepcopy(epoch)
    out = fn(e)
    return e, out


def _compare(epoch, exact=True, rtol=2e-4, atol=2e-5):
    """numba.model_epoch against the reference interpreter over numba's
    kernels (bit for bit when exact) and over the reference's (rounding)."""
    got, res = _run(nb.model_epoch, epoch)
    ref_nb, res_nb = _run(lambda e: R.run_model_epoch(nb, e), epoch)
    ref, res_ref = _run(lambda e: R.run_model_epoch(R, e), epoch)
    assert res[0] == res_nb[0] == res_ref[0]
    assert res[1] == res_nb[1] == res_ref[1]
    np.testing.assert_allclose(res[2], res_ref[2], rtol=1e-12)
    for name in ("params", "grads", "buffers", "batch_losses", "batch_correct"):
        a, b, c = getattr(got, name), getattr(ref_nb, name), getattr(ref, name)
        if exact:
            np.testing.assert_array_equal(a, b, err_msg=name)
        np.testing.assert_allclose(a, c, rtol=rtol, atol=atol, err_msg=name)
    for a, b, c in zip(got.states, ref_nb.states, ref.states):
        if exact:
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=rtol, atol=atol)
    return got


def _mlp(batch=8, act="relu", n_in=6, n_out=4):
    p = Plan((1, 1, n_in), batch)
    p.dense(10, act)
    p.dense(7, "tanh")
    p.dense(n_out)
    return p


@pytest.mark.parametrize("loss", spec.LOSSES)
def test_model_epoch_dense_stack(loss):
    X, T = _data(29, (6,), 4, loss)
    _compare(_mlp().epoch(X, T, loss=loss, hyper={"lr": 0.01}))


@pytest.mark.parametrize("optimizer", sorted(spec.OPTIMIZERS))
def test_model_epoch_every_optimizer(optimizer):
    X, T = _data(37, (6,), 4, "softmax_xent")
    hyper = {"lr": 0.01, "weight_decay": 0.01}
    if optimizer in ("sgd", "rmsprop"):
        hyper["momentum"] = 0.9
    if optimizer == "rmsprop":
        hyper["centered"] = True
    if optimizer == "sgd":
        hyper["nesterov"] = True
    e = _mlp().epoch(X, T, optimizer=optimizer, hyper=hyper, step=3,
                     mu_product=spec.nadam_mu(1, 0.9, 4e-3) if optimizer == "nadam" else 1.0)
    _compare(e)


@pytest.mark.parametrize("kw", [dict(l2=0.1), dict(clip_value=0.01), dict(clip_norm=0.05),
                                dict(l2=0.05, clip_value=0.02, clip_norm=0.1,
                                     loss_scale=0.5, grad_scale=2.0)])
def test_model_epoch_l2_and_clipping(kw):
    X, T = _data(30, (6,), 4, "softmax_xent")
    _compare(_mlp().epoch(X, T, hyper={"lr": 0.01}, **kw))


def test_model_epoch_order():
    X, T = _data(30, (6,), 4, "softmax_xent")
    order = np.random.default_rng(3).integers(0, 30, 27).astype(np.int64)
    _compare(_mlp().epoch(X, T, hyper={"lr": 0.01}, order=order))
    X, T = _data(30, (6,), 4, "mse")
    _compare(_mlp().epoch(X, T, loss="mse", hyper={"lr": 0.01}, order=order))


def test_model_epoch_stops_on_a_non_finite_loss():
    X, T = _data(40, (6,), 4, "softmax_xent")
    X[13, 2] = np.inf  # batch 1 of 8 rows
    got = _compare(_mlp().epoch(X, T, hyper={"lr": 0.01}))
    assert not np.isfinite(got.batch_losses[1])


def _cnn(batch, pool="max"):
    p = Plan((8, 8, 2), batch)
    p.conv(4, 3, pad=1, act="relu")
    p.pool(2, kind=pool)
    p.conv(5, 3, stride=2, pad=1, act="leaky_relu")
    p.flatten()
    p.dense(3)
    return p


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_model_epoch_cnn(pool):
    X, T = _data(11, (8, 8, 2), 3, "softmax_xent")
    _compare(_cnn(4, pool).epoch(X, T, hyper={"lr": 0.01}, l2=0.01))


def test_model_epoch_batchnorm_dropout_softmax_mse():
    X, T = _data(21, (6, 6, 3), 5, "mse")
    p = Plan((6, 6, 3), 8)
    p.batchnorm()  # the first layer: a scratch dx
    # padded: without it a shift of the input is a per-channel shift of the
    # conv's output, which the next batch norm removes, so this batch norm's
    # beta gradient is 0 in exact arithmetic and rounding noise in float32
    p.conv(4, 3, pad=1, act="identity", bias=False)
    p.batchnorm(momentum=0.2, eps=1e-3)
    p.activation("relu")
    p.dropout(0.3, seed=2 ** 40 + 5, counter=17)
    p.pool(2, stride=1, kind="avg")
    p.flatten()
    p.dense(9, "sigmoid")
    p.dropout(0.5, seed=7)
    p.dense(5)
    p.softmax()
    _compare(p.epoch(X, T, loss="mse", hyper={"lr": 0.01}), rtol=1e-3, atol=1e-4)


def test_model_epoch_residual():
    X, T = _data(19, (5,), 3, "softmax_xent")
    p = Plan((1, 1, 5), 6)
    p.dense(8, "tanh")
    p.fork()
    p.dense(8, "relu")
    p.dense(8)
    p.add()
    p.fork()
    p.activation("leaky_relu", 0.1)
    p.add()
    p.dense(3)
    _compare(p.epoch(X, T, optimizer="sgd", hyper={"lr": 0.05, "momentum": 0.5}))


def test_model_epoch_residual_on_the_input():
    X, T = _data(19, (5,), 3, "softmax_xent")
    p = Plan((1, 1, 5), 6)
    p.dense(5, "relu")
    p.add_input()
    p.dense(3)
    _compare(p.epoch(X, T))


@pytest.mark.parametrize("threads", [2])
def test_model_epoch_threads(threads):
    """The parameters after an epoch are the same bits on 1 and 2 threads
    (products big enough for the threaded gemm paths)."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < threads:
        pytest.skip("fewer numba threads")
    X, T = _data(100, (12, 12, 3), 10, "softmax_xent")
    p = Plan((12, 12, 3), 50)
    p.conv(16, 3, pad=1)
    p.batchnorm()
    p.dropout(0.2, seed=5)
    p.pool(2)
    p.conv(32, 3, pad=1)
    p.pool(2, kind="avg")
    p.flatten()
    p.dense(64, "relu")
    p.dense(10)
    e = p.epoch(X, T, hyper={"lr": 0.001}, l2=1e-3, clip_norm=1.0)
    before = numba.get_num_threads()
    try:
        runs = []
        for t in (1, threads):
            numba.set_num_threads(t)
            runs.append(_run(nb.model_epoch, e)[0])
    finally:
        numba.set_num_threads(before)
    for name in ("params", "grads", "buffers", "batch_losses"):
        np.testing.assert_array_equal(getattr(runs[0], name), getattr(runs[1], name),
                                      err_msg=name)


@pytest.mark.parametrize("loss,optimizer", [("softmax_xent", "adam"), ("mse", "nadam"),
                                            ("bce", "sgd")])
def test_dense_stack_any_thread_split_same_bits(loss, optimizer, monkeypatch):
    """A chain of Dense records runs as _epoch.stack_batches: two parallel
    regions a batch, thread t taking rows [t m / nt, (t+1) m / nt) of the
    batch and then the span cuts[t]..cuts[t+1] of the parameters.  Any
    split (1, 2, 3, 5 chunks, here dealt to this machine's threads) gives
    the interpreter's bits: 29-row batches and a 3-row last one (uneven
    rows, a chunk of none), spans cut inside every weight matrix."""
    from fastnn.kernels.numba import _epoch, _plan

    X, T = _data(95, (70,), 5, loss)
    p = Plan((1, 1, 70), 29)
    p.dense(40, "relu")
    p.dense(33, "leaky_relu")
    p.dense(5)
    order = np.random.default_rng(5).permutation(95)[:90]
    hyper = {"lr": 0.01, "momentum": 0.9} if optimizer == "sgd" else {"lr": 0.01}
    e = p.epoch(X, T, loss=loss, optimizer=optimizer, hyper=hyper, order=order, l2=0.02,
                grad_scale=0.5, step=2,
                mu_product=spec.nadam_mu(1, 0.9, 4e-3) * spec.nadam_mu(2, 0.9, 4e-3))
    assert _plan._dense_stack(e, _plan._NO_RANGES) is not None
    want = _compare(e)  # the interpreter's bits, the reference's numbers
    cuts = _epoch._param_cuts
    for nt in (1, 2, 3, 5):
        monkeypatch.setattr(_epoch, "_param_cuts", lambda layers, n, t, nt=nt: cuts(layers, n, nt))
        got, _ = _run(nb.model_epoch, e)
        for name in ("params", "grads", "batch_losses", "batch_correct"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name),
                                          err_msg=f"{name}, {nt} chunks")
        for a, b in zip(got.states, want.states):
            np.testing.assert_array_equal(a, b)


def test_param_cuts_split_on_rows_and_biases():
    """The spans of the params pass: nt + 1 increasing cuts from 0 to the
    buffer's end, each at a weight row start, a bias start or a region's
    end, about size / nt apart."""
    from fastnn.kernels.numba._epoch import _param_cuts

    # (fan_in, fan_out, w, b): a gap of 3 floats after the first bias
    layers = np.array([(70, 40, 0, 2800, 0, 0, 0), (40, 33, 2843, 4163, 0, 0, 0),
                       (33, 5, 4196, 4361, 0, 0, 0)], np.int64)
    size = 4366
    allowed = {0, size, 2840}
    for fi, fo, w, b in layers[:, :4]:
        allowed.update(range(w, w + fi * fo + 1, fo))
        allowed.update((b, b + fo))
    for nt in (1, 2, 3, 5, 8):
        cuts = _param_cuts(layers, size, nt)
        assert len(cuts) == nt + 1 and cuts[0] == 0 and cuts[-1] == size
        assert np.all(np.diff(cuts) >= 0) and set(cuts.tolist()) <= allowed
        assert np.all(np.abs(np.diff(cuts) - size / nt) <= 40), cuts


# ---- plans from fastnn.plan ---------------------------------------------------------

@pytest.mark.parametrize("name", ["cnn", "cnn_bn_gap", "conv1d", "residual_conv",
                                  "residual_first", "mlp_bn_dropout", "softmax_mse", "bce"])
def test_model_epoch_of_compiled_models(name):
    """Models compiled by fastnn.plan: numba's epoch is the reference
    interpreter over numba's kernels, bit for bit (SGD: Adam's normalised
    steps turn the rounding noise of a bias before a BatchNorm into
    differences against the numpy reference)."""
    from fastnn import Sequential, optim
    from fastnn import plan as plan_mod

    from .test_plan import MODELS, data
    layers, shape, loss, outputs = MODELS[name]
    model = Sequential(layers(), seed=7, backend="numba", input_shape=shape)
    plan = plan_mod.compile_model(model, 16)
    opt = optim.SGD(lr=0.05, momentum=0.9)
    opt.bind(model.size, nb, np.float32)
    _, states, hyper = opt.kernel_spec()
    X, y = data(shape, loss, outputs, n=40)
    kloss = {"softmax_cross_entropy": "softmax_xent", "binary_cross_entropy": "bce"}.get(loss,
                                                                                       loss)
    targets = y.astype(np.int32) if kloss == "softmax_xent" else y
    order = np.random.default_rng(1).permutation(40).astype(np.int64)
    e = plan.epoch(params=model.params.copy(), grads=model.grads.copy(),
                   buffers=model.buffers.copy(), states=tuple(s.copy() for s in states),
                   workspace=np.zeros(plan.workspace_size, np.float32),
                   iworkspace=np.zeros(plan.iworkspace_size, np.int32), X=X, targets=targets,
                   batch_losses=np.zeros(3), batch_correct=np.zeros(3, np.int64), loss=kloss,
                   optimizer="sgd", hyper=hyper, order=order, l2=1e-3)
    _compare(e, rtol=2e-3, atol=2e-4)
