"""SimpleRNN, GRU and LSTM: gradients by finite differences (float64
reference), parity with torch.nn.RNN/GRU/LSTM (outputs, every parameter
gradient, an Adam trajectory), the compiled epoch against the batch path."""

import numpy as np
import pytest

import fastnn
from fastnn import kernels

CELLS = [("rnn", {}), ("rnn", {"activation": "relu"}), ("gru", {}), ("lstm", {})]
CELL_IDS = ["rnn_tanh", "rnn_relu", "gru", "lstm"]
BACKENDS = [b for b in ("reference", "c", "numba") if kernels.available(b)]
LAYER = {"rnn": fastnn.SimpleRNN, "gru": fastnn.GRU, "lstm": fastnn.LSTM}


def _layer(cell, opts, C, H, seq):
    return LAYER[cell](C, H, return_sequences=seq, **opts)


@pytest.mark.parametrize("seq", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("cell,opts", CELLS, ids=CELL_IDS)
def test_gradients_match_central_differences(cell, opts, seq):
    """Every parameter's and the input's gradient against central finite
    differences of a random linear functional of the output, in float64."""
    rng = np.random.default_rng(1)
    N, L, C, H = 3, 5, 2, 4
    model = fastnn.Sequential([_layer(cell, opts, C, H, seq)], seed=2, backend="reference",
                              dtype=np.float64, input_shape=(L, C))
    if opts.get("activation") == "relu":  # keep pre-activations away from the kink
        model.layers[0].bias_ih[...] += 0.5
    X = rng.normal(size=(N, L, C))
    R = rng.normal(size=(N,) + model.output_shape)

    def loss(Xv):
        return float(np.sum(model.forward(Xv.copy()) * R))

    loss(X)
    dX = model.backward(R.copy(), input_grad=True).copy()
    grads = model.grads.copy()
    p0 = model.get_params().copy()
    eps = 1e-6
    num = np.zeros_like(p0)
    for j in range(p0.size):
        for sign in (1, -1):
            p = p0.copy()
            p[j] += sign * eps
            model.set_params(p)
            num[j] += sign * loss(X) / (2 * eps)
    model.set_params(p0)
    np.testing.assert_allclose(grads, num, rtol=1e-6, atol=1e-8)
    numx = np.zeros_like(X)
    for idx in np.ndindex(X.shape):
        for sign in (1, -1):
            Xp = X.copy()
            Xp[idx] += sign * eps
            numx[idx] += sign * loss(Xp) / (2 * eps)
    np.testing.assert_allclose(dX, numx, rtol=1e-6, atol=1e-8)


def _torch_layer(torch, cell, opts, C, H):
    if cell == "rnn":
        return torch.nn.RNN(C, H, batch_first=True, nonlinearity=opts.get("activation", "tanh"))
    return {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](C, H, batch_first=True)


def _copy_to_torch(torch, tl, layer):
    with torch.no_grad():
        tl.weight_ih_l0.copy_(torch.from_numpy(np.asarray(layer.weight_ih).T.copy()))
        tl.weight_hh_l0.copy_(torch.from_numpy(np.asarray(layer.weight_hh).T.copy()))
        tl.bias_ih_l0.copy_(torch.from_numpy(np.asarray(layer.bias_ih).copy()))
        tl.bias_hh_l0.copy_(torch.from_numpy(np.asarray(layer.bias_hh).copy()))


def _torch_out(tl, x, seq):
    out = tl(x)[0]
    return out if seq else out[:, -1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seq", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("cell,opts", CELLS, ids=CELL_IDS)
def test_outputs_and_gradients_match_torch(cell, opts, seq, backend):
    torch = pytest.importorskip("torch", reason="PyTorch is the optional parity comparator")
    rng = np.random.default_rng(3)
    N, L, C, H = 6, 9, 3, 8
    model = fastnn.Sequential([_layer(cell, opts, C, H, seq)], seed=4, backend=backend,
                              input_shape=(L, C))
    layer = model.layers[0]
    tl = _torch_layer(torch, cell, opts, C, H)
    _copy_to_torch(torch, tl, layer)
    X = rng.normal(size=(N, L, C)).astype(np.float32)
    R = rng.normal(size=(N,) + model.output_shape).astype(np.float32)
    k = kernels.get(backend)
    out = k.to_numpy(model.forward(k.asarray(X))).copy()
    dX = k.to_numpy(model.backward(k.asarray(R.copy()), input_grad=True)).copy()
    xt = torch.from_numpy(X).requires_grad_(True)
    yt = _torch_out(tl, xt, seq)
    (yt * torch.from_numpy(R)).sum().backward()
    np.testing.assert_allclose(out, yt.detach().numpy(), rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(dX, xt.grad.numpy(), rtol=1e-4, atol=2e-5)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        want = getattr(tl, name + "_l0").grad.numpy()
        got = k.to_numpy(getattr(layer, name + "_grad"))
        np.testing.assert_allclose(got, want.T if name.startswith("weight") else want,
                                   rtol=1e-4, atol=2e-5, err_msg=name)


class _TorchStack:
    """torch layers applied in order; recurrent ones give their sequence,
    or their last step where the fastnn layer returns the last state."""

    def __init__(self, torch, layers, fast_layers):
        self.layers, self.seq = layers, [getattr(f, "return_sequences", None) for f in fast_layers]
        self.torch = torch

    def __call__(self, x):
        for tl, seq in zip(self.layers, self.seq):
            if isinstance(tl, self.torch.nn.Linear):
                x = tl(x)
            else:
                x = _torch_out(tl, x, seq)
        return x

    def parameters(self):
        return [p for tl in self.layers for p in tl.parameters()]


def _paired(torch, specs, L, C, backend, seed=5):
    """A fastnn model and the torch stack with the same weights; specs:
    ("gru", C, H, seq) / ("dense", in, out)."""
    fast, tl = [], []
    for kind, a, b, *rest in specs:
        if kind == "dense":
            fast.append(fastnn.Dense(a, b))
            tl.append(torch.nn.Linear(a, b))
        else:
            fast.append(LAYER[kind](a, b, return_sequences=rest[0]))
            tl.append(_torch_layer(torch, kind, {}, a, b))
    model = fastnn.Sequential(fast, seed=seed, backend=backend, input_shape=(L, C))
    for t, f in zip(tl, model.layers):
        if isinstance(t, torch.nn.Linear):
            with torch.no_grad():
                t.weight.copy_(torch.from_numpy(np.asarray(f.weight).T.copy()))
                t.bias.copy_(torch.from_numpy(np.asarray(f.bias).copy()))
        else:
            _copy_to_torch(torch, t, f)
    return model, _TorchStack(torch, tl, model.layers)


STACKS = {
    "rnn": [("rnn", 3, 8, False), ("dense", 8, 4)],
    "gru": [("gru", 3, 8, False), ("dense", 8, 4)],
    "lstm": [("lstm", 3, 8, False), ("dense", 8, 4)],
    "gru_gru": [("gru", 3, 8, True), ("gru", 8, 6, False), ("dense", 6, 4)],
}


def _data(L=7, C=3, n=160, seed=6):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, L, C)).astype(np.float32), rng.integers(0, 4, n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stack", list(STACKS))
def test_adam_trajectory_matches_torch(stack, backend):
    """10 Adam steps batch by batch: every step's loss and the final
    parameters agree with torch's."""
    torch = pytest.importorskip("torch", reason="PyTorch is the optional parity comparator")
    X, y = _data()
    model, tstack = _paired(torch, STACKS[stack], 7, 3, backend)
    trainer = fastnn.Trainer(model, "softmax_cross_entropy", fastnn.optim.Adam(lr=1e-2),
                             fused=False)
    topt = torch.optim.Adam(tstack.parameters(), lr=1e-2)
    ours, theirs = [], []
    for i in range(10):
        xb, yb = X[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16]
        ours.append(trainer.train_step(xb, yb))
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tstack(torch.from_numpy(xb)),
                                                 torch.from_numpy(yb))
        loss.backward()
        topt.step()
        theirs.append(loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    for t, f in zip(tstack.layers, model.layers):
        if isinstance(t, torch.nn.Linear):
            np.testing.assert_allclose(kernels.get(backend).to_numpy(f.weight),
                                       t.weight.detach().numpy().T, rtol=1e-3, atol=1e-4)
        else:
            np.testing.assert_allclose(kernels.get(backend).to_numpy(f.weight_hh),
                                       t.weight_hh_l0.detach().numpy().T, rtol=1e-3, atol=1e-4)


def _fit(stack, backend, fused, epochs=2, clip_norm=None, n=160):
    X, y = _data(n=n)
    layers = []
    for kind, a, b, *rest in STACKS[stack]:
        layers.append(fastnn.Dense(a, b) if kind == "dense"
                      else LAYER[kind](a, b, return_sequences=rest[0]))
    model = fastnn.Sequential(layers, seed=7, backend=backend, input_shape=(7, 3))
    trainer = fastnn.Trainer(model, "softmax_cross_entropy", fastnn.optim.Adam(lr=1e-2),
                             fused=fused, clip_norm=clip_norm)
    hist = trainer.fit(X, y, epochs=epochs, batch_size=32, shuffle=True, seed=3, verbose=False)
    return model.get_params(), hist.history["loss"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stack", list(STACKS))
def test_compiled_epoch_follows_the_batch_path(stack, backend):
    """fit inside the compiled epoch (one model_epoch call per epoch) ==
    batch by batch == the reference's, shuffled, with clipping."""
    want, want_loss = _fit(stack, "reference", False, clip_norm=1.0)
    for fused in (False, True):
        got, got_loss = _fit(stack, backend, fused, clip_norm=1.0)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=f"fused={fused}")
        np.testing.assert_allclose(got_loss, want_loss, rtol=1e-4, err_msg=f"fused={fused}")


def test_compiled_plan_has_rnn_records():
    from fastnn import plan
    from fastnn.kernels import spec

    X, _ = _data()
    model = fastnn.Sequential([fastnn.GRU(3, 8, return_sequences=True), fastnn.LSTM(8, 5),
                               fastnn.Dense(5, 4)], seed=0, input_shape=(7, 3))
    p = plan.compile_model(model, 32)
    ops = p.records[:, spec.F["op"]].tolist()
    assert ops == [spec.Op.RNN, spec.Op.RNN, spec.Op.DENSE]
    assert p.records[0, spec.F["cell"]] == spec.Cell.GRU
    assert p.records[0, spec.F["aux"]] == p.records[0, spec.F["y"]]  # the sequence is the output
    assert p.records[1, spec.F["aux"]] != p.records[1, spec.F["y"]]


def test_save_load_roundtrip(tmp_path):
    X, _ = _data()
    model = fastnn.Sequential([fastnn.SimpleRNN(3, 6, activation="relu", return_sequences=True),
                               fastnn.LSTM(6, 5), fastnn.Dense(5, 4)], seed=1, input_shape=(7, 3))
    model.save(tmp_path / "m.npz")
    again = fastnn.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(again.predict(X), model.predict(X))
    row = [line for line in again.summary().splitlines() if "(LSTM)" in line]
    assert len(row) == 1 and "(None, 5)" in row[0]
    assert row[0].split()[-1] == f"{4 * 5 * (6 + 5) + 2 * 4 * 5:,}"  # weights and both biases


def test_torch_init_bounds():
    model = fastnn.Sequential([fastnn.GRU(3, 16)], seed=0, input_shape=(4, 3))
    p = model.get_params()
    assert np.abs(p).max() <= 0.25 and np.abs(p).max() > 0.24  # uniform(-1/4, 1/4)


@pytest.mark.parametrize("bad,match", [
    (lambda: fastnn.GRU(0, 4), "input_size"),
    (lambda: fastnn.LSTM(3, 2.5), "hidden_size"),
    (lambda: fastnn.SimpleRNN(3, 4, activation="sigmoid"), "activation"),
    (lambda: fastnn.GRU(3, 4, return_sequences="yes"), "return_sequences"),
    (lambda: fastnn.GRU(3, 4, init="zeros"), "init"),
    (lambda: fastnn.Sequential([fastnn.GRU(3, 4)], input_shape=(5, 2)), "expected \\(L, 3\\)"),
])
def test_bad_arguments_name_the_argument(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_checks_name_the_argument(backend):
    k = kernels.get(backend)
    n, L, C, H = 2, 3, 4, 5
    f32 = np.float32
    X = np.zeros((n, L, C), f32)
    Wi, Wh, b = np.zeros((C, 3 * H), f32), np.zeros((H, 3 * H), f32), np.zeros(3 * H, f32)
    Hs, G = np.zeros((n, L, H), f32), np.zeros((n, L, 4 * H), f32)
    with pytest.raises(ValueError, match="cell"):
        k.rnn_forward(Hs, G, X, Wi, Wh, b, b, cell="elman")
    with pytest.raises(ValueError, match="W_hh"):
        k.rnn_forward(Hs, G, X, Wi, Wh[:, :-1], b, b, cell="gru")
    with pytest.raises(ValueError, match="G"):
        k.rnn_forward(Hs, G[:, :, :-1], X, Wi, Wh, b, b, cell="gru")
    with pytest.raises(ValueError, match="W_ih"):
        k.rnn_forward(Hs, G, X, Wi[:-1], Wh, b, b, cell="gru")
    with pytest.raises(ValueError, match="activation"):
        k.rnn_forward(Hs, G, X, Wi, Wh, b, b, cell="gru", activation="relu")
    with pytest.raises(ValueError, match="Hs"):
        k.rnn_forward(X[:, :, :H] if C >= H else Hs[:, :1], G, X, Wi, Wh, b, b, cell="gru")


@pytest.mark.slow  # the CUDA simulator: a Python thread per CUDA thread (~1-8 min)
def test_cuda_gru_stack_follows_the_reference():
    """cuda (the simulator without a GPU): a GRU stack on cuda's recurrent
    kernels, batch by batch and in the epoch.  The default run's checks of
    those kernels, at tinier shapes: tests/test_cuda_backend.py."""
    if not kernels.available("cuda"):
        pytest.skip("cuda backend unavailable")
    want, want_loss = _fit("gru_gru", "reference", False, epochs=1, n=40)
    for fused in (False, True):
        got, got_loss = _fit("gru_gru", "cuda", fused, epochs=1, n=40)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=f"fused={fused}")
        np.testing.assert_allclose(got_loss, want_loss, rtol=1e-4, err_msg=f"fused={fused}")


def _gru_epoch(backend="reference"):
    from fastnn import plan as plan_mod
    from fastnn.kernels import spec

    X, y = _data()
    model = fastnn.Sequential([fastnn.GRU(3, 8), fastnn.Dense(8, 4)], seed=0, backend=backend,
                              input_shape=(7, 3))
    p = plan_mod.compile_model(model, 32)
    opt = spec.OPTIMIZERS["adam"]
    n_batches = -(-len(X) // 32)
    return p.epoch(params=model.params, grads=model.grads, buffers=model.buffers,
                   states=(np.zeros_like(model.params), np.zeros_like(model.params)),
                   workspace=np.zeros(p.workspace_size, np.float32),
                   iworkspace=np.zeros(p.iworkspace_size, np.int32), X=X.reshape(len(X), -1),
                   targets=y.astype(np.int32), batch_losses=np.zeros(n_batches),
                   batch_correct=np.zeros(n_batches, np.int64), loss="softmax_xent",
                   optimizer="adam", hyper={h.name: h.default for h in opt.hyper}, step=0)


@pytest.mark.parametrize("field,value,match", [
    ("cache", 10 ** 9, "region"), ("param_hh", -5, "region"), ("cell", 9, "cell"),
    ("act", 5, "activation"), ("ow", 7, "inconsistent")])
def test_bad_rnn_records_are_refused_before_any_kernel(field, value, match):
    from fastnn.kernels import spec

    for backend in BACKENDS:
        e = _gru_epoch(backend)
        e.plan = e.plan.copy()
        e.plan[0, spec.F[field]] = value
        before = e.params.copy()
        with pytest.raises(ValueError, match=match):
            kernels.get(backend).model_epoch(e)
        np.testing.assert_array_equal(e.params, before)


def test_c_rnn_kernels_refuse_bad_sizes():
    """The C entry points themselves (behind the front): EINVAL, nothing read."""
    if not kernels.available("c"):
        pytest.skip("c backend unavailable")
    from fastnn._ckernels import ffi, lib

    buf = np.zeros(64, np.float32)
    p = ffi.from_buffer("float[]", buf)
    assert lib.fastnn_rnn_forward(p, p, p, p, p, p, p, 1, 1, 1, 1, 9, 4) != 0  # cell
    assert lib.fastnn_rnn_forward(p, p, p, p, p, p, p, 1, 1, 1, 1, 2, 5) != 0  # gru + relu
    assert lib.fastnn_rnn_forward(p, p, p, p, p, p, p, 0, 1, 1, 1, 2, 4) != 0  # n = 0
    assert lib.fastnn_rnn_forward(p, p, p, p, p, p, p, 2 ** 40, 2 ** 20, 2 ** 10, 4, 3, 4) != 0
    assert lib.fastnn_rnn_backward(p, p, p, p, p, p, p, p, p, p, p, 1, 1, 1, 2 ** 62, 1, 4) != 0
    assert lib.fastnn_rnn_forward(ffi.NULL, p, p, p, p, p, p, 1, 1, 1, 1, 1, 4) != 0


def _kernel_case(cell, act, n, L, C, H, seed=11):
    from fastnn.kernels import spec

    G, K = spec.RNN_GATES[spec.Cell[cell.upper()]], spec.RNN_CACHE[spec.Cell[cell.upper()]]
    rng = np.random.default_rng(seed)
    f = np.float32
    arrays = dict(X=rng.normal(size=(n, L, C)).astype(f),
                  W_ih=rng.uniform(-0.5, 0.5, (C, G * H)).astype(f),
                  W_hh=rng.uniform(-0.5, 0.5, (H, G * H)).astype(f),
                  b_ih=rng.uniform(-0.5, 0.5, G * H).astype(f),
                  b_hh=rng.uniform(-0.5, 0.5, G * H).astype(f),
                  dHs=rng.normal(size=(n, L, H)).astype(f))
    return arrays, G, K


def _run_kernels(k, cell, act, a, G, K, biases=True, dtype=np.float32):
    n, L, C = a["X"].shape
    H = a["W_hh"].shape[0]
    cast = {name: np.ascontiguousarray(v, dtype) for name, v in a.items()}
    Hs, Gc = np.zeros((n, L, H), dtype), np.zeros((n, L, K * H), dtype)
    k.rnn_forward(Hs, Gc, cast["X"], cast["W_ih"], cast["W_hh"], cast["b_ih"], cast["b_hh"],
                  cell=cell, activation=act)
    out = dict(Hs=Hs.copy(), dX=np.zeros((n, L, C), dtype),
               dW_ih=np.zeros((C, G * H), dtype), dW_hh=np.zeros((H, G * H), dtype),
               db_ih=np.zeros(G * H, dtype) if biases else None,
               db_hh=np.zeros(G * H, dtype) if biases else None)
    k.rnn_backward(out["dX"], out["dW_ih"], out["dW_hh"], out["db_ih"], out["db_hh"],
                   cast["dHs"].copy(), Gc, cast["X"], cast["W_ih"], cast["W_hh"], Hs,
                   cell=cell, activation=act)
    return {name: v for name, v in out.items() if v is not None}


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@pytest.mark.parametrize("C", [3, 12], ids=["narrow_input", "gemm_projection"])
@pytest.mark.parametrize("cell,act", [("rnn", "tanh"), ("rnn", "relu"), ("gru", "tanh"),
                                      ("lstm", "tanh")])
def test_kernels_match_float64_reference(cell, act, C, backend):
    """The kernels against the reference in float64, with a batch that is no
    multiple of the tile height (37 rows split over threads), inputs narrow
    enough to be projected step by step (C = 3) or by one GEMM (C = 12), and
    the bias gradients asked for or not (dW_ih is computed in the same pass)."""
    a, G, K = _kernel_case(cell, act, n=37, L=6, C=C, H=20)
    want = _run_kernels(kernels.get("reference"), cell, act, a, G, K, dtype=np.float64)
    for biases in (True, False):
        got = _run_kernels(kernels.get(backend), cell, act, a, G, K, biases=biases)
        for name, v in got.items():
            np.testing.assert_allclose(v, want[name], rtol=2e-4, atol=2e-5,
                                       err_msg=f"{name} biases={biases}")


EDGES = np.array([0.0, 1e-38, -1e-38, 1e-30, 1e-8, -1e-8, 3e-5, -1e-4, 0.01, -0.3, 0.6,
                  -0.624, 0.625, 0.7, -1.0, 2.5, -5.0, 9.0, -10.0, 15.0, -20.0, 44.0, -80.0,
                  87.0, -88.0, 100.0, -1e4, np.inf, -np.inf], np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gate_functions_within_ulps_at_edge_values(backend):
    """tanh and sigmoid as the kernels apply them, against float64 at values
    from denormal to overflow and +-inf: SimpleRNN's first state is
    tanh(x W_ih) (x = 1, zero biases: the pre-activation is exactly W_ih),
    and the GRU's cache holds r = sigmoid(W_ir) and n = tanh(W_in) at t = 0."""
    k = kernels.get(backend)
    H = EDGES.size
    v = EDGES[None, :]
    X = np.ones((1, 1, 1), np.float32)
    zeros = np.zeros
    Hs, Gc = zeros((1, 1, H), np.float32), zeros((1, 1, H), np.float32)
    k.rnn_forward(Hs, Gc, X, v.copy(), zeros((H, H), np.float32), zeros(H, np.float32),
                  zeros(H, np.float32), cell="rnn")
    want_tanh = np.tanh(EDGES.astype(np.float64))
    np.testing.assert_array_max_ulp(Hs[0, 0], want_tanh.astype(np.float32), maxulp=2)
    W = np.concatenate([v, v, v], axis=1)
    Hs, Gc = zeros((1, 1, H), np.float32), zeros((1, 1, 4 * H), np.float32)
    k.rnn_forward(Hs, Gc, X, W, zeros((H, 3 * H), np.float32), zeros(3 * H, np.float32),
                  zeros(3 * H, np.float32), cell="gru")
    np.testing.assert_array_max_ulp(Gc[0, 0, 3 * H:], want_tanh.astype(np.float32), maxulp=2)
    with np.errstate(over="ignore"):
        want_sig = 1.0 / (1.0 + np.exp(-EDGES.astype(np.float64)))
    r = Gc[0, 0, :H]
    normal = want_sig > 1.2e-38  # below, exp(x) is a denormal: 0 <= r <= exp(-87.3) allowed
    np.testing.assert_array_max_ulp(r[normal], want_sig[normal].astype(np.float32), maxulp=3)
    assert np.all((r[~normal] >= 0) & (r[~normal] <= 1.25e-38))
    nan = np.full((1, 2), np.nan, np.float32)
    Hs, Gc = zeros((1, 1, 2), np.float32), zeros((1, 1, 2), np.float32)
    k.rnn_forward(Hs, Gc, X, nan, zeros((2, 2), np.float32), zeros(2, np.float32),
                  zeros(2, np.float32), cell="rnn")
    assert np.isnan(Hs).all()
