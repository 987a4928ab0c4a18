"""fastnn.export: ONNX files run in onnxruntime and torch modules give
model.predict's numbers; torch Sequentials convert to fastnn models."""

import numpy as np
import pytest

import fastnn as fn
from fastnn import export

TOL = dict(rtol=1e-5, atol=1e-5)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _trained_bn(model, X):
    """Give BatchNorms non-trivial running statistics and gamma/beta."""
    for layer in model.walk():
        if isinstance(layer, fn.BatchNorm):
            c = layer.num_features
            layer.gamma[...] = _rng(c).uniform(0.5, 1.5, c)
            layer.beta[...] = _rng(c + 1).normal(size=c)
            layer.state_buffers["running_mean"][...] = _rng(c + 2).normal(size=c)
            layer.state_buffers["running_var"][...] = _rng(c + 3).uniform(0.5, 2.0, c)
    return model


def _cases():
    """(name, model, input) per layer kind, plus a LeNet-like CNN and a
    residual MLP."""
    r = _rng(1)
    img = r.normal(size=(5, 8, 8, 3)).astype(np.float32)
    sig = r.normal(size=(5, 12, 2)).astype(np.float32)
    vec = r.normal(size=(5, 6)).astype(np.float32)
    S = fn.Sequential
    cases = [("dense", S([fn.Dense(6, 4)], seed=0), vec)]
    for act in ("relu", "tanh", "sigmoid", "leaky_relu", "softplus", "step", "sign"):
        cases.append((f"dense_{act}", S([fn.Dense(6, 4, act)], seed=0), vec))
    for cls in (fn.ReLU, fn.Tanh, fn.Sigmoid, fn.Softplus, fn.Identity, fn.Step, fn.Sign):
        cases.append((cls.__name__, S([fn.Dense(6, 5), cls()], seed=0), vec))
    cases += [
        ("LeakyReLU", S([fn.Dense(6, 5), fn.LeakyReLU(0.2)], seed=0), vec),
        ("Softmax", S([fn.Dense(6, 5), fn.Softmax()], seed=0), vec),
        ("Dropout", S([fn.Dense(6, 5, "relu"), fn.Dropout(0.5), fn.Dense(5, 2)], seed=0), vec),
        ("BatchNorm1d", S([fn.Dense(6, 5), fn.BatchNorm(5)], seed=0), vec),
        ("Conv2D", S([fn.Conv2D(3, 4, 3, stride=2, padding=1, activation="relu")], seed=0,
                     input_shape=(8, 8, 3)), img),
        ("Conv2D_rect", S([fn.Conv2D(3, 2, (3, 2), stride=(1, 2))], seed=0,
                          input_shape=(8, 8, 3)), img),
        ("Conv1D", S([fn.Conv1D(2, 3, 3, stride=2, padding=1, activation="tanh")], seed=0,
                     input_shape=(12, 2)), sig),
        ("MaxPool2D", S([fn.Conv2D(3, 2, 1), fn.MaxPool2D(2)], seed=0, input_shape=(8, 8, 3)),
         img),
        ("AvgPool2D", S([fn.Conv2D(3, 2, 1), fn.AvgPool2D(3, stride=2)], seed=0,
                        input_shape=(8, 8, 3)), img),
        ("MaxPool1D", S([fn.Conv1D(2, 2, 1), fn.MaxPool1D(3)], seed=0, input_shape=(12, 2)),
         sig),
        ("AvgPool1D", S([fn.Conv1D(2, 2, 1), fn.AvgPool1D(2)], seed=0, input_shape=(12, 2)),
         sig),
        ("GlobalAvgPool2D", S([fn.Conv2D(3, 4, 3), fn.GlobalAvgPool()], seed=0,
                              input_shape=(8, 8, 3)), img),
        ("GlobalAvgPool1D", S([fn.Conv1D(2, 4, 3), fn.GlobalAvgPool()], seed=0,
                              input_shape=(12, 2)), sig),
        ("BatchNorm2d", S([fn.Conv2D(3, 4, 3), fn.BatchNorm(4)], seed=0, input_shape=(8, 8, 3)),
         img),
        ("BatchNorm_signal", S([fn.Conv1D(2, 4, 3), fn.BatchNorm(4)], seed=0,
                               input_shape=(12, 2)), sig),
        ("Flatten", S([fn.Conv2D(3, 2, 3), fn.Flatten(), fn.Dense(72, 3)], seed=0,
                      input_shape=(8, 8, 3)), img),
        ("Flatten1D", S([fn.Conv1D(2, 3, 3), fn.Flatten(), fn.Dense(30, 2)], seed=0,
                        input_shape=(12, 2)), sig),
        ("Residual_conv_identity", S([fn.Residual(fn.Conv2D(3, 3, 3, padding=1,
                                                            activation="relu"),
                                                  fn.Conv2D(3, 3, 3, padding=1)),
                                      fn.Flatten()], seed=0, input_shape=(8, 8, 3)), img),
        ("conv_output", S([fn.Conv2D(3, 2, 3)], seed=0, input_shape=(8, 8, 3)), img),
        ("Residual_identity", S([fn.Dense(6, 6), fn.Residual(fn.Dense(6, 6, "relu"),
                                                            fn.Dense(6, 6))], seed=0), vec),
        ("Residual_dense_proj", S([fn.Residual(fn.Dense(6, 4, "relu"))], seed=0,
                                  input_shape=(6,)), vec),
        ("Residual_conv_proj", S([fn.Residual(fn.Conv2D(3, 4, 3, stride=2, padding=1,
                                                        activation="relu"), fn.BatchNorm(4)),
                                  fn.GlobalAvgPool()], seed=0, input_shape=(8, 8, 3)), img),
        ("lenet", S([fn.Conv2D(3, 6, 3, padding=1, activation="relu"), fn.MaxPool2D(2),
                     fn.Conv2D(6, 8, 3, activation="relu"), fn.AvgPool2D(2), fn.Flatten(),
                     fn.Dense(8, 16, "relu"), fn.Dropout(0.3), fn.Dense(16, 10), fn.Softmax()],
                    seed=0, input_shape=(8, 8, 3)), img),
        ("residual_mlp", S([fn.Dense(6, 16, "relu"),
                            fn.Residual(fn.Dense(16, 16), fn.BatchNorm(16), fn.ReLU(),
                                        fn.Dense(16, 16)),
                            fn.Residual(fn.Dense(16, 8, "tanh")), fn.Dense(8, 3)], seed=0), vec),
    ]
    seq = r.normal(size=(5, 9, 3)).astype(np.float32)
    for cell, cls, opts in (("rnn_tanh", fn.SimpleRNN, {}),
                            ("rnn_relu", fn.SimpleRNN, {"activation": "relu"}),
                            ("gru", fn.GRU, {}), ("lstm", fn.LSTM, {})):
        for rs in (False, True):
            cases.append((f"{cell}_{'sequences' if rs else 'last'}",
                          S([cls(3, 6, return_sequences=rs, **opts)], seed=2,
                            input_shape=(9, 3)), seq))
    cases += [
        ("gru_gru_dense", S([fn.GRU(3, 8, return_sequences=True), fn.GRU(8, 6),
                             fn.Dense(6, 4), fn.Softmax()], seed=3, input_shape=(9, 3)), seq),
        ("conv1d_lstm_dense", S([fn.Conv1D(3, 5, 3, padding=1, activation="relu"),
                                 fn.MaxPool1D(2), fn.LSTM(5, 7), fn.Dense(7, 2)], seed=4,
                                input_shape=(9, 3)), seq),
        ("rnn_conv1d_gap", S([fn.SimpleRNN(3, 4, return_sequences=True), fn.Conv1D(4, 3, 2),
                              fn.BatchNorm(3), fn.GlobalAvgPool(), fn.Dense(3, 2)], seed=5,
                             input_shape=(9, 3)), seq),
        ("gru_flatten", S([fn.GRU(3, 4, return_sequences=True), fn.Flatten(),
                           fn.Dense(36, 2)], seed=6, input_shape=(9, 3)), seq),
    ]
    return [(name, _trained_bn(model, x), x) for name, model, x in cases]


CASES = _cases()
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name,model,x", CASES, ids=IDS)
def test_onnx_matches_predict(tmp_path, name, model, x):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / f"{name}.onnx"
    export.to_onnx(model, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"input": x})
    np.testing.assert_allclose(got, model.predict(x), **TOL)


@pytest.mark.parametrize("name,model,x", CASES, ids=IDS)
def test_to_torch_matches_predict(name, model, x):
    torch = pytest.importorskip("torch")
    module = export.to_torch(model)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, model.predict(x), **TOL)


def test_onnx_bad_opset(tmp_path):
    pytest.importorskip("onnx")
    with pytest.raises(ValueError, match="opset"):
        export.to_onnx(fn.Sequential([fn.Dense(2, 2)]), tmp_path / "m.onnx", opset=9)


def _torch_cnn(torch):
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, stride=1), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(8, 12), nn.BatchNorm1d(12), nn.Sigmoid(),
        nn.Linear(12, 4))
    with torch.no_grad():  # running statistics that are not the defaults
        for m in net:
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-1, 1)
    return net.eval()


def test_from_torch_cnn_flatten_order():
    """Flatten of (C, H, W) maps before a Linear: the Linear's input
    features are reordered for fastnn's (H, W, C) flatten."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 8, 3), nn.Flatten(), nn.BatchNorm1d(32),
                        nn.Linear(32, 12), nn.Sigmoid(), nn.Linear(12, 4))
    with torch.no_grad():  # BatchNorm over flattened features: reordered too
        net[5].running_mean.uniform_(-1, 1)
        net[5].weight.uniform_(0.5, 1.5)
    net = net.eval()
    x = torch.from_numpy(_rng(2).normal(size=(6, 3, 8, 8)).astype(np.float32))
    model = fn.export.from_torch(net, (3, 8, 8))
    assert model.input_shape == (8, 8, 3)
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(model.predict(x.permute(0, 2, 3, 1).numpy()), want, **TOL)


def test_from_torch_conv1d_and_mlp():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool1d(2),
                        nn.Conv1d(4, 3, 2, stride=2), nn.Flatten(), nn.BatchNorm1d(9),
                        nn.Sequential(nn.Linear(9, 5), nn.Softplus()), nn.Linear(5, 3),
                        nn.Softmax(dim=1)).eval()
    with torch.no_grad():
        net[5].running_mean.uniform_(-1, 1)
        net[5].running_var.uniform_(0.5, 2)
    x = torch.from_numpy(_rng(3).normal(size=(7, 2, 12)).astype(np.float32))
    model = fn.export.from_torch(net, (2, 12))
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(model.predict(x.permute(0, 2, 1).numpy()), want, **TOL)


def test_round_trip_torch_fastnn_torch():
    torch = pytest.importorskip("torch")
    net = _torch_cnn(torch)
    model = fn.export.from_torch(net, (3, 8, 8))
    back = fn.export.to_torch(model)
    x = _rng(4).normal(size=(5, 8, 8, 3)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(back(torch.from_numpy(x)).numpy(), model.predict(x), **TOL)
        want = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(model.predict(x), want, **TOL)


def test_round_trip_fastnn_torch_fastnn():
    pytest.importorskip("torch")
    model = _trained_bn(fn.Sequential([fn.Dense(6, 8, "relu"), fn.BatchNorm(8), fn.Dense(8, 3)],
                                      seed=3), None)
    again = fn.export.from_torch(fn.export.to_torch(model), (6,))
    np.testing.assert_array_equal(again.get_params(), model.get_params())
    np.testing.assert_array_equal(again.get_buffers(), model.get_buffers())


def test_fine_tune_here_and_go_back():
    """A torch MLP converted, trained with fastnn, converted back: the torch
    module computes what the fine-tuned fastnn model does (and no longer
    what the original did)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    rng = _rng(5)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    model = fn.export.from_torch(net, (4,))
    before = model.predict(X)
    tr = fn.Trainer(model, "softmax_cross_entropy", fn.optim.Adam(lr=0.01))
    loss0 = tr.evaluate(X, y)
    tr.fit(X, y, epochs=20, batch_size=32, verbose=False)
    assert tr.evaluate(X, y)["loss"] < 0.7 * loss0["loss"]
    tuned = fn.export.to_torch(model)
    with torch.no_grad():
        got = tuned(torch.from_numpy(X)).numpy()
        orig = net(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(got, model.predict(X), **TOL)
    np.testing.assert_allclose(orig, before, **TOL)
    assert np.abs(got - orig).max() > 0.1


def test_from_torch_refuses():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    with pytest.raises(TypeError, match="GELU"):
        fn.export.from_torch(nn.Sequential(nn.Linear(3, 3), nn.GELU()), (3,))
    with pytest.raises(ValueError, match="groups"):
        fn.export.from_torch(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), (2, 5, 5))
    with pytest.raises(ValueError, match="Flatten"):
        fn.export.from_torch(nn.Sequential(nn.Conv2d(2, 2, 3), nn.Linear(3, 2)), (2, 5, 5))
    with pytest.raises(ValueError, match="in_features"):
        fn.export.from_torch(nn.Sequential(nn.Linear(3, 2)), (4,))
    with pytest.raises(ValueError, match="input_shape"):
        fn.export.from_torch(nn.Sequential(nn.Linear(3, 2)), (0,))
    with pytest.raises(TypeError, match="module"):
        fn.export.from_torch([nn.Linear(3, 2)], (3,))


def test_to_torch_module_pickles(tmp_path):
    torch = pytest.importorskip("torch")
    name, model, x = next(c for c in CASES if c[0] == "Residual_conv_proj")
    module = export.to_torch(model)
    torch.save(module, tmp_path / "m.pt")
    again = torch.load(tmp_path / "m.pt", weights_only=False)
    with torch.no_grad():
        np.testing.assert_allclose(again(torch.from_numpy(x)).numpy(), model.predict(x), **TOL)


# ---- recurrent layers ------------------------------------------------------------

def test_onnx_recurrent_takes_any_batch_size(tmp_path):
    """The batch axis stays symbolic through the time-major transposes."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    name, model, _ = next(c for c in CASES if c[0] == "gru_gru_dense")
    export.to_onnx(model, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        x = _rng(n).normal(size=(n, 9, 3)).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"input": x})[0], model.predict(x), **TOL)


def test_onnx_gru_is_linear_before_reset(tmp_path):
    """torch's GRU (r applied to h W_hn + b_hn) is ONNX's linear_before_reset=1."""
    onnx = pytest.importorskip("onnx")
    proto = export.to_onnx(fn.Sequential([fn.GRU(2, 3)], seed=0, input_shape=(4, 2)),
                           tmp_path / "m.onnx")
    (gru,) = [nd for nd in proto.graph.node if nd.op_type == "GRU"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gru.attribute}
    assert attrs["linear_before_reset"] == 1 and attrs["hidden_size"] == 3


def _recurrent(torch, kind, C, H, seq, **kw):
    from fastnn._torch_modules import Recurrent

    cls = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind]
    return Recurrent(cls(C, H, batch_first=True, **kw), seq)


def test_from_torch_recurrent_stack():
    """GRU(seq) -> RNN(relu) -> Linear in torch, converted: fastnn's predict
    gives torch's outputs on the same (N, L, C) input."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(4)
    net = torch.nn.Sequential(_recurrent(torch, "gru", 3, 8, True),
                              _recurrent(torch, "rnn", 8, 5, False, nonlinearity="relu"),
                              torch.nn.Linear(5, 4)).eval()
    model = fn.export.from_torch(net, (9, 3))
    assert model.input_shape == (9, 3)
    assert [type(la).__name__ for la in model.layers] == ["GRU", "SimpleRNN", "Dense"]
    assert model.layers[1].activation == "relu"
    x = _rng(6).normal(size=(6, 9, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), want, **TOL)


def test_from_torch_conv1d_permute_lstm():
    """Conv1d on channels-first input, Permute to (N, L, C), LSTM, Linear."""
    torch = pytest.importorskip("torch")
    from fastnn._torch_modules import Permute

    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.Tanh(), Permute(0, 2, 1),
                              _recurrent(torch, "lstm", 4, 6, False),
                              torch.nn.Linear(6, 3)).eval()
    model = fn.export.from_torch(net, (2, 12))
    assert model.input_shape == (12, 2)
    x = _rng(7).normal(size=(5, 2, 12)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x.transpose(0, 2, 1)), want, **TOL)


@pytest.mark.parametrize("name", ["conv1d_lstm_dense", "gru_gru_dense", "gru_flatten",
                                  "rnn_relu_sequences"])
def test_round_trip_recurrent_fastnn_torch_fastnn(name):
    pytest.importorskip("torch")
    _, model, x = next(c for c in CASES if c[0] == name)
    again = fn.export.from_torch(fn.export.to_torch(model), model.input_shape)
    assert again.input_shape == model.input_shape
    np.testing.assert_array_equal(again.get_params(), model.get_params())
    np.testing.assert_array_equal(again.predict(x), model.predict(x))


def test_from_torch_refuses_recurrent():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    with pytest.raises(TypeError, match="Recurrent"):
        fn.export.from_torch(nn.Sequential(nn.GRU(3, 4, batch_first=True)), (5, 3))
    with pytest.raises(ValueError, match="one-direction"):
        fn.export.from_torch(nn.Sequential(_recurrent(torch, "gru", 3, 4, False,
                                                      bidirectional=True)), (5, 3))
    with pytest.raises(ValueError, match="batch_first"):
        from fastnn._torch_modules import Recurrent
        fn.export.from_torch(nn.Sequential(Recurrent(nn.LSTM(3, 4), False)), (5, 3))
    with pytest.raises(ValueError, match="Permute"):  # Conv1d's (C, L) into an LSTM
        fn.export.from_torch(nn.Sequential(nn.Conv1d(3, 4, 2),
                                           _recurrent(torch, "lstm", 4, 4, False)), (3, 6))
    with pytest.raises(ValueError, match="input_size"):
        fn.export.from_torch(nn.Sequential(_recurrent(torch, "rnn", 3, 4, False)), (5, 2))


def test_to_torch_recurrent_module_pickles(tmp_path):
    torch = pytest.importorskip("torch")
    _, model, x = next(c for c in CASES if c[0] == "conv1d_lstm_dense")
    torch.save(export.to_torch(model), tmp_path / "m.pt")
    again = torch.load(tmp_path / "m.pt", weights_only=False)
    with torch.no_grad():
        np.testing.assert_allclose(again(torch.from_numpy(x)).numpy(), model.predict(x), **TOL)
