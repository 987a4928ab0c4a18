"""Models, optimizers and the trainer, end to end."""

import numpy as np
import pytest

import fastnn
from fastnn import optim
from fastnn.kernels import spec


def digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split((X / 16).astype(np.float32), y, test_size=0.25, random_state=0,
                            stratify=y)


# ---- the model --------------------------------------------------------------------

def test_flat_buffer_layout_and_views():
    model = fastnn.Sequential([fastnn.Dense(5, 7, "relu"), fastnn.Dense(7, 3)], seed=0)
    d1, d2 = model.layers[0], model.layers[2 - 1]
    assert model.params.ndim == 1 and model.params.dtype == np.float32
    assert model.n_parameters == 5 * 7 + 7 + 7 * 3 + 3
    for layer in (d1, d2):
        for arr in (layer.weight, layer.bias):
            assert np.shares_memory(arr, model.params)
            offset = (arr.__array_interface__["data"][0]
                      - model.params.__array_interface__["data"][0])
            assert offset % 64 == 0
        assert np.shares_memory(layer.weight_grad, model.grads)
    assert d1.weight.shape == (5, 7) and d1.bias.shape == (7,)
    d1.weight[0, 0] = 42.0  # writable view into the buffer
    assert 42.0 in model.params


def test_init_is_seeded_and_scaled():
    a = fastnn.Sequential([fastnn.Dense(400, 300, "relu"), fastnn.Dense(300, 200, "tanh")], seed=7)
    b = fastnn.Sequential([fastnn.Dense(400, 300, "relu"), fastnn.Dense(300, 200, "tanh")], seed=7)
    c = fastnn.Sequential([fastnn.Dense(400, 300, "relu"), fastnn.Dense(300, 200, "tanh")], seed=8)
    np.testing.assert_array_equal(a.get_params(), b.get_params())
    assert not np.array_equal(a.get_params(), c.get_params())
    he, glorot = a.layers[0].weight, a.layers[1].weight
    assert he.std() == pytest.approx(np.sqrt(2 / 400), rel=0.03)            # He normal
    assert glorot.std() == pytest.approx(np.sqrt(2 / (300 + 200)), rel=0.03)  # Glorot uniform
    assert np.all(a.layers[0].bias == 0)
    # a separate activation layer after Dense picks the init too
    d = fastnn.Sequential([fastnn.Dense(400, 300), fastnn.ReLU()], seed=1)
    assert d.layers[0].weight.std() == pytest.approx(np.sqrt(2 / 400), rel=0.03)
    o = fastnn.Sequential([fastnn.Dense(50, 30, init="orthogonal")], seed=1).layers[0].weight
    np.testing.assert_allclose(o.T @ o, np.eye(30), atol=1e-5)


def test_save_load_round_trip(tmp_path):
    model = fastnn.Sequential([fastnn.Dense(6, 8, "leaky_relu", negative_slope=0.2),
                               fastnn.Dropout(0.3), fastnn.Dense(8, 4), fastnn.Softmax()], seed=2)
    X = np.random.default_rng(0).normal(size=(9, 6))
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = fastnn.load(path)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    np.testing.assert_array_equal(loaded.get_params(), model.get_params())
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.layers[0].negative_slope == 0.2 and loaded.layers[1].p == 0.3
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temp file left behind


def test_load_rejects_bad_files(tmp_path):
    model = fastnn.Sequential([fastnn.Dense(3, 2)], seed=0)
    good = tmp_path / "good.npz"
    model.save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.npz").write_text("hello")
    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))
    np.savez(tmp_path / "wrongsize.npz", architecture=np.array(
        '{"format": "fastnn-sequential-1", "layers": [{"type": "Dense", "config": '
        '{"in_features": 3, "out_features": 2}}]}'), params=np.zeros(5, np.float32),
        buffers=np.zeros(1, np.float32))
    np.savez(tmp_path / "badlayer.npz", architecture=np.array(
        '{"format": "fastnn-sequential-1", "layers": [{"type": "Evil", "config": {}}]}'),
        params=np.zeros(5, np.float32), buffers=np.zeros(1, np.float32))
    for name, match in [("trunc", "not a readable"), ("text", "not a readable"),
                        ("foreign", "not a fastnn model"), ("wrongsize", "parameter buffer"),
                        ("badlayer", "unknown type 'Evil'")]:
        with pytest.raises(ValueError, match=match):
            fastnn.load(tmp_path / f"{name}.npz")


# ---- learning ----------------------------------------------------------------------

def test_xor_needs_a_hidden_layer():
    from fastnn.datasets import logic_gate

    X, y = logic_gate("xor")
    model = fastnn.Sequential([fastnn.Dense(2, 8, "tanh"), fastnn.Dense(8, 2)], seed=0)
    trainer = fastnn.Trainer(model, "softmax_cross_entropy", optim.Adam(lr=0.05))
    trainer.fit(X, y, epochs=300, batch_size=4, verbose=False, seed=0)
    assert np.array_equal(trainer.predict(X).argmax(1), y)
    # a single layer cannot separate XOR
    linear = fastnn.Trainer(fastnn.Sequential([fastnn.Dense(2, 2)], seed=0),
                            "softmax_cross_entropy", optim.Adam(lr=0.05))
    linear.fit(X, y, epochs=300, batch_size=4, verbose=False, seed=0)
    assert (linear.predict(X).argmax(1) == y).mean() <= 0.75


@pytest.mark.parametrize("backend_name", ["c", "numba"])
def test_digits_mlp_reaches_97_percent(backend_name):
    Xtr, Xte, ytr, yte = digits_split()
    model = fastnn.Sequential([fastnn.Dense(64, 128, "relu"), fastnn.Dense(128, 10)], seed=0)
    trainer = fastnn.Trainer(model, "softmax_cross_entropy", optim.Adam(lr=1e-3),
                             backend=backend_name)
    history = trainer.fit(Xtr, ytr, epochs=30, batch_size=32, seed=0, verbose=False,
                          validation_data=(Xte, yte))
    assert history.loss[-1] < history.loss[0] / 5
    acc = (trainer.predict(Xte).argmax(1) == yte).mean()
    assert acc >= 0.97
    assert trainer.evaluate(Xte, yte)["accuracy"] == pytest.approx(acc)
    proba = trainer.predict_proba(Xte)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-6)


@pytest.mark.parametrize("loss,act", [("mse", None), ("mae", None)])
def test_regression(loss, act):
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (512, 3))
    y = np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2]
    model = fastnn.Sequential([fastnn.Dense(3, 32, "tanh"), fastnn.Dense(32, 1, act)], seed=0)
    trainer = fastnn.Trainer(model, loss, optim.Adam(lr=1e-2))
    trainer.fit(X, y, epochs=100, batch_size=64, verbose=False, seed=0)
    assert np.mean((trainer.predict(X)[:, 0] - y) ** 2) < 0.01


def test_binary_cross_entropy_on_one_logit():
    from fastnn.datasets import make_spirals

    X, y = make_spirals(n_samples=400, noise=0.0, seed=0)
    model = fastnn.Sequential([fastnn.Dense(2, 64, "tanh"), fastnn.Dense(64, 64, "tanh"),
                               fastnn.Dense(64, 1)], seed=0)
    trainer = fastnn.Trainer(model, "binary_cross_entropy", optim.Adam(lr=1e-2))
    hist = trainer.fit(X, y, epochs=200, batch_size=32, verbose=False, seed=0)
    assert hist.accuracy[-1] > 0.95
    p = trainer.predict_proba(X)
    assert p.shape == (400, 1) and np.all((p > 0) & (p < 1))


def test_full_batch_and_pure_sgd_are_the_same_algorithm():
    """batch_size=len(X) takes one step of the mean gradient per epoch;
    batch_size=1 takes len(X) steps per epoch."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(10, 3)), rng.normal(size=10)
    model = fastnn.Sequential([fastnn.Dense(3, 1)], seed=0)
    w0 = model.get_params()
    full = fastnn.Trainer(model, "mse", optim.SGD(lr=0.1))
    full.fit(X, y, epochs=1, batch_size=10, shuffle=False, verbose=False)
    assert full.optimizer.step_count == 1
    # by hand: one gradient step of the mean squared error
    W, b = w0[:3], w0[16]
    r = X @ W + b - y
    np.testing.assert_allclose(model.layers[0].weight[:, 0], W - 0.1 * 2 * X.T @ r / 10, rtol=1e-5)
    sgd = fastnn.Trainer(fastnn.Sequential([fastnn.Dense(3, 1)], seed=0), "mse", optim.SGD(lr=0.1))
    sgd.fit(X, y, epochs=2, batch_size=1, verbose=False)
    assert sgd.optimizer.step_count == 20


def test_train_step_returns_loss_before_update():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(8, 4)), rng.integers(0, 3, 8)
    trainer = fastnn.Trainer(fastnn.Sequential([fastnn.Dense(4, 3)], seed=0),
                             "softmax_cross_entropy", optim.SGD(lr=0.5))
    before = trainer.evaluate(X, y)["loss"]
    assert trainer.train_step(X, y) == pytest.approx(before, rel=1e-6)
    assert trainer.evaluate(X, y)["loss"] < before


@pytest.mark.parametrize("fused", [True, False])
def test_epoch_runner_is_fit_with_the_callers_permutations(fused):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 4)), rng.integers(0, 3, 50)

    def trainer():
        model = fastnn.Sequential([fastnn.Dense(4, 6, "tanh"), fastnn.Dense(6, 3)], seed=0)
        return fastnn.Trainer(model, "softmax_cross_entropy", optim.SGD(lr=0.1, momentum=0.9),
                              fused=fused, l2=0.1)

    by_fit = trainer()
    history = by_fit.fit(X, y, epochs=3, batch_size=16, seed=4, verbose=False)
    by_order = trainer()
    run = by_order.epoch_runner(X, y, 16)
    perms = np.random.default_rng(4)  # fit's own draws
    losses = [run(perms.permutation(50)) for _ in range(3)]
    np.testing.assert_array_equal(by_order.model.get_params(), by_fit.model.get_params())
    np.testing.assert_allclose(losses, history.loss, rtol=1e-12)
    run(None)  # in order
    with pytest.raises(ValueError, match="features"):
        by_order.epoch_runner(X[:, :3], y, 16)
    with pytest.raises(ValueError, match="different lengths"):
        by_order.epoch_runner(X, y[:-1], 16)
    with pytest.raises(ValueError, match="batch_size"):
        by_order.epoch_runner(X, y, 0)


def test_fit_options_validation_and_early_stopping(capsys):
    Xtr, Xte, ytr, yte = digits_split()
    trainer = fastnn.Trainer(fastnn.Sequential([fastnn.Dense(64, 32, "relu"), fastnn.Dense(32, 10)],
                                               seed=0), "softmax_cross_entropy", optim.Adam(lr=1e-2))
    seen = []
    hist = trainer.fit(Xtr, ytr, epochs=200, batch_size=64, validation_split=0.2, seed=0,
                       early_stopping=fastnn.EarlyStopping(patience=3),
                       callbacks=[lambda tr, epoch, logs: seen.append(epoch)], verbose=True)
    assert 3 < hist.epochs < 200 and seen == list(range(hist.epochs))
    assert set(hist.history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "samples_per_s"}
    assert "epoch 1/200" in capsys.readouterr().out
    es = hist  # best parameters restored: val loss now equals the best seen
    assert min(es.val_loss) == pytest.approx(
        trainer.evaluate(Xtr[-int(round(len(Xtr) * 0.2)):], ytr[-int(round(len(Xtr) * 0.2)):])["loss"],
        rel=1e-5)
    stop = fastnn.Trainer(fastnn.Sequential([fastnn.Dense(64, 10)], seed=0), "softmax_cross_entropy",
                          "sgd")
    h = stop.fit(Xtr, ytr, epochs=10, callbacks=[lambda tr, e, logs: e == 1], verbose=False)
    assert h.epochs == 2


def test_divergence_raises_with_epoch_and_batch():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 4)) * 1e3, rng.normal(size=64) * 1e3
    trainer = fastnn.Trainer(fastnn.Sequential([fastnn.Dense(4, 16, "relu"), fastnn.Dense(16, 1)],
                                               seed=0), "mse", optim.SGD(lr=10.0))
    with pytest.raises(FloatingPointError, match=r"epoch \d+, batch \d+"):
        trainer.fit(X, y, epochs=50, batch_size=8, verbose=False)


def test_dropout_training_and_inference():
    layer_model = fastnn.Sequential([fastnn.Dense(100, 100), fastnn.Dropout(0.25)], seed=0)
    X = np.ones((200, 100), np.float32)
    Y_eval = layer_model.forward(X).copy()
    Y_train = layer_model.forward(X, training=True).copy()
    dropped = Y_train == 0
    assert 0.2 < dropped.mean() < 0.3
    np.testing.assert_allclose(Y_train[~dropped], Y_eval[~dropped] / 0.75, rtol=1e-5)
    dY = np.ones_like(Y_train)
    layer_model.backward(dY)
    assert np.all(dY[dropped] == 0)


# ---- bad input -------------------------------------------------------------------

def test_bad_input_is_refused_before_any_kernel():
    trainer = fastnn.Trainer(fastnn.Sequential([fastnn.Dense(3, 4)], seed=0),
                             "softmax_cross_entropy", "adam")
    X, y = np.zeros((5, 3)), np.array([0, 1, 2, 3, 0])
    cases = [
        ((np.full((5, 3), np.nan), y), ValueError, "X: contains NaN"),
        ((np.zeros(3), y[:1]), ValueError, "2-D"),
        ((np.zeros((0, 3)), y[:0]), ValueError, "no samples"),
        ((np.zeros((5, 2)), y), ValueError, "expected 3 features, got 2"),
        ((X, y[:4]), ValueError, "different lengths: 5 and 4"),
        ((X, np.array([0, 1, 2, 4, 0])), ValueError, r"must lie in \[0, 4\)"),
        ((X, np.array([0.5, 1, 2, 3, 0])), ValueError, "must be integers"),
        ((np.array([["a", "b", "c"]] * 5), y), ValueError, "expected numbers"),
        ((X, np.array(["a"] * 5)), ValueError, "expected numbers"),
    ]
    before = trainer.model.get_params()
    for (Xb, yb), exc, match in cases:
        with pytest.raises(exc, match=match):
            trainer.fit(Xb, yb, verbose=False)
    np.testing.assert_array_equal(trainer.model.get_params(), before)
    with pytest.raises(ValueError, match="NaN"):
        fastnn.Trainer(fastnn.Sequential([fastnn.Dense(3, 1)]), "mse", "sgd").fit(
            X, np.array([1, 2, np.inf, 0, 0]), verbose=False)


def test_odd_input_layouts_are_converted():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 6))
    model = fastnn.Sequential([fastnn.Dense(3, 2)], seed=0)
    want = model.predict(np.ascontiguousarray(X[:, ::2], np.float32))
    np.testing.assert_allclose(model.predict(X[:, ::2]), want)              # strided float64
    np.testing.assert_allclose(model.predict(np.asfortranarray(X[:, ::2])), want)
    np.testing.assert_allclose(model.predict(np.ones((2, 3), np.int64)),
                               model.predict(np.ones((2, 3), np.float32)))


def test_one_hot_targets_equal_labels():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(16, 4)), rng.integers(0, 3, 16)
    runs = []
    for target in (y.astype(np.uint8), np.eye(3)[y]):
        tr = fastnn.Trainer(fastnn.Sequential([fastnn.Dense(4, 3)], seed=0), "softmax_cross_entropy",
                            optim.SGD(lr=0.1))
        runs.append(tr.fit(X, target, epochs=3, batch_size=4, seed=1, verbose=False).loss)
    np.testing.assert_allclose(runs[0], runs[1])


# ---- optimizers --------------------------------------------------------------------

# (torch.optim class, arguments, steps of the numpy check): variants, then
# every optimizer of the specification at torch's defaults with lr and
# weight decay set (a new one is compared with torch without an edit here),
# over 8 steps (RAdam rectifies from step 6).
OPTIMIZERS = [
    ("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1)),
    ("Adam", dict(lr=1e-2)), ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1)),
    ("AdamW", dict(lr=1e-2)), ("RMSprop", dict(lr=1e-2)),
    ("RMSprop", dict(lr=1e-3, momentum=0.9, centered=True, weight_decay=0.01)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
    ("NAdam", dict(lr=1e-2)), ("Adamax", dict(lr=1e-2, weight_decay=0.01)),
]
OPTIMIZERS = [(name, hp, 5) for name, hp in OPTIMIZERS] + [
    (o.torch, dict(lr=1e-2, weight_decay=0.01), 8) for o in spec.OPTIMIZERS.values()]
_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(OPTIMIZERS)]


def test_optimizer_arguments_are_torchs():
    """Every optimizer class takes torch's arguments with torch's defaults
    (read from torch.optim itself)."""
    import inspect

    torch = pytest.importorskip("torch", reason="PyTorch is the optional parity comparator")
    for o in spec.OPTIMIZERS.values():
        ours = inspect.signature(getattr(optim, o.torch)).parameters
        theirs = inspect.signature(getattr(torch.optim, o.torch)).parameters
        for name, p in ours.items():
            assert name in theirs, (o.torch, name)
            assert theirs[name].default == p.default, (o.torch, name)


def test_optimizer_defaults_are_torchs():
    import inspect

    expected = {
        "SGD": dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
        "Adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
        "AdamW": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),
        "RMSprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                        centered=False),
        "Adagrad": dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                        eps=1e-10),
        "NAdam": dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3),
        "Adamax": dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    }
    for name, defaults in expected.items():
        params = inspect.signature(getattr(optim, name)).parameters
        assert {k: p.default for k, p in params.items()} == defaults, name


def _numpy_trajectory(name, hp, w, grads):
    """torch.optim's single-tensor update written out step by step, in float64."""
    w = w.astype(np.float64).copy()
    st = {}
    b1, b2 = hp.get("betas", (0.9, 0.999))
    eps, wd, lr = hp.get("eps", 1e-8), hp.get("weight_decay", 0.0), hp["lr"]
    mu_prod = 1.0
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        if name == "AdamW":
            w *= 1 - lr * (wd or 1e-2)
        elif wd:
            g = g + wd * w
        if name == "SGD":
            mom = hp.get("momentum", 0.0)
            if mom:
                st["b"] = g.copy() if t == 1 else mom * st["b"] + (1 - hp.get("dampening", 0)) * g
                g = g + mom * st["b"] if hp.get("nesterov") else st["b"]
            w -= lr * g
        elif name == "RAdam":
            st["m"] = b1 * st.get("m", 0) + (1 - b1) * g
            st["v"] = b2 * st.get("v", 0) + (1 - b2) * g * g
            m_hat = st["m"] / (1 - b1 ** t)
            rho_inf = 2 / (1 - b2) - 1
            rho_t = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
            if rho_t > 5:
                rect = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                               / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                w -= lr * m_hat * rect * np.sqrt(1 - b2 ** t) / (np.sqrt(st["v"]) + eps)
            else:
                w -= lr * m_hat
        elif name in ("Adam", "AdamW", "NAdam", "Adamax"):
            st["m"] = b1 * st.get("m", 0) + (1 - b1) * g
            if name == "Adamax":
                st["u"] = np.maximum(b2 * st.get("u", 0), np.abs(g) + eps)
                w -= lr / (1 - b1 ** t) * st["m"] / st["u"]
                continue
            st["v"] = b2 * st.get("v", 0) + (1 - b2) * g * g
            if name == "NAdam":
                mu = b1 * (1 - 0.5 * 0.96 ** (t * 4e-3))
                mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * 4e-3))
                mu_prod *= mu
                denom = np.sqrt(st["v"] / (1 - b2 ** t)) + eps
                w -= lr * (1 - mu) / (1 - mu_prod) * g / denom
                w -= lr * mu_next / (1 - mu_prod * mu_next) * st["m"] / denom
            else:
                w -= lr * (st["m"] / (1 - b1 ** t)) / (np.sqrt(st["v"] / (1 - b2 ** t)) + eps)
        elif name == "RMSprop":
            a = hp.get("alpha", 0.99)
            st["sq"] = a * st.get("sq", 0) + (1 - a) * g * g
            avg = st["sq"]
            if hp.get("centered"):
                st["ga"] = a * st.get("ga", 0) + (1 - a) * g
                avg = avg - st["ga"] ** 2
            avg = np.sqrt(avg) + eps
            if hp.get("momentum"):
                st["b"] = hp["momentum"] * st.get("b", 0) + g / avg
                w -= lr * st["b"]
            else:
                w -= lr * g / avg
        elif name == "Adagrad":
            st["s"] = st.get("s", hp.get("initial_accumulator_value", 0.0)) + g * g
            clr = lr / (1 + (t - 1) * hp.get("lr_decay", 0))
            w -= clr * g / (np.sqrt(st["s"]) + hp.get("eps", 1e-10))
        else:
            raise NotImplementedError(f"no transcription of torch.optim.{name} here")
    return w


@pytest.mark.parametrize("name,hp,steps", OPTIMIZERS, ids=_IDS)
def test_optimizer_classes_follow_torch_equations(name, hp, steps, rng):
    size = 37
    w0 = rng.normal(size=size).astype(np.float32)
    grads = [rng.normal(size=size).astype(np.float32) for _ in range(steps)]
    want = _numpy_trajectory(name, hp, w0, grads)
    for backend in ("c", "numba"):
        k = fastnn.kernels.get(backend)
        opt = getattr(optim, name)(**hp).bind(size, k)
        w = w0.copy()
        for g in grads:
            opt.step(w, g)
        np.testing.assert_allclose(w, want, rtol=1e-5, atol=1e-6, err_msg=backend)


@pytest.mark.parametrize("name,hp,steps", OPTIMIZERS, ids=_IDS)
def test_training_trajectory_matches_pytorch(name, hp, steps):
    """Same weights, same batches: the loss trajectory of fastnn and PyTorch
    agree to float32 rounding."""
    torch = pytest.importorskip("torch", reason="PyTorch is the optional parity comparator")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(96, 10)).astype(np.float32)
    y = rng.integers(0, 4, 96)
    model = fastnn.Sequential([fastnn.Dense(10, 16, "relu"), fastnn.Dense(16, 8, "tanh"),
                               fastnn.Dense(8, 4)], seed=0)
    tmodel = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8),
                                 torch.nn.Tanh(), torch.nn.Linear(8, 4))
    with torch.no_grad():
        for tl, fl in zip([tmodel[0], tmodel[2], tmodel[4]], model.layers):
            tl.weight.copy_(torch.from_numpy(fl.weight.T.copy()))
            tl.bias.copy_(torch.from_numpy(fl.bias.copy()))
    thp = dict(hp)
    topt = getattr(torch.optim, name)(tmodel.parameters(), **thp)
    trainer = fastnn.Trainer(model, "softmax_cross_entropy", getattr(optim, name)(**hp))
    ours, theirs = [], []
    for epoch in range(3):
        for lo in range(0, 96, 16):
            xb, yb = X[lo:lo + 16], y[lo:lo + 16]
            ours.append(trainer.train_step(xb, yb))
            topt.zero_grad()
            loss = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(xb)),
                                                     torch.from_numpy(yb))
            loss.backward()
            topt.step()
            theirs.append(loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-6)


def test_cuda_trainer_keeps_state_on_the_device():
    """backend="cuda": parameters, gradients and optimizer state are device
    arrays; the result equals the reference's training (tiny, simulator-sized)."""
    if not fastnn.kernels.available("cuda"):
        pytest.skip("cuda backend unavailable")
    from fastnn.datasets import logic_gate

    X, y = logic_gate("xor")
    runs = {}
    for backend in ("reference", "cuda"):
        model = fastnn.Sequential([fastnn.Dense(2, 4, "tanh"), fastnn.Dense(4, 2)], seed=0)
        trainer = fastnn.Trainer(model, "softmax_cross_entropy", optim.Adam(lr=0.05),
                                 backend=backend)
        hist = trainer.fit(X, y, epochs=3, batch_size=2, shuffle=False, verbose=False)
        runs[backend] = (hist.loss, model.get_params(), trainer.predict(X))
        if backend == "cuda":
            assert not isinstance(model.params, np.ndarray)
            assert all(not isinstance(b, np.ndarray) for b in trainer.optimizer.state.values())
    np.testing.assert_allclose(runs["cuda"][0], runs["reference"][0], rtol=1e-5)
    np.testing.assert_allclose(runs["cuda"][1], runs["reference"][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runs["cuda"][2], runs["reference"][2], rtol=1e-4, atol=1e-5)


def test_finite_check_of_inputs():
    from fastnn.trainer import _all_finite

    x = np.random.default_rng(0).random((50, 7), dtype=np.float32)
    assert _all_finite(x) and _all_finite(np.full((3, 3), 3e38, np.float32))
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[3, 4] = bad
        assert not _all_finite(y)
        assert not _all_finite(y.astype(np.float64))
    y = x.copy()
    y[0, 0], y[1, 1] = np.inf, -np.inf  # their sum is NaN; each alone is Inf
    assert not _all_finite(y)
    assert _all_finite(np.array([[1e308, 1e308]]))  # float64: the sum overflows, the values don't
    assert _all_finite(np.arange(6).reshape(2, 3))
    z = np.full((5, 3), 3e38, np.float32)  # the sum overflows: checked 2 rows at a time
    assert _all_finite(z, rows=2)
    z[4, 2] = np.nan
    assert not _all_finite(z, rows=2)


@pytest.mark.parametrize("backend_name", ["c", "numba"])
def test_predictions_do_not_depend_on_the_batch(backend_name):
    """A sample's output is the same alone as inside a batch (bit for bit)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(37, 20)).astype(np.float32)
    model = fastnn.Sequential([fastnn.Dense(20, 33, "relu"), fastnn.Dense(33, 7, "tanh"),
                               fastnn.Dense(7, 1)], seed=0, backend=backend_name)
    full = model.predict(X)
    for i in (0, 5, 36):
        np.testing.assert_array_equal(model.predict(X[i:i + 1]), full[i:i + 1])
    np.testing.assert_array_equal(model.predict(X[3:20]), full[3:20])
