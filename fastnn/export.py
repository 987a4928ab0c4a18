"""Interchange: ONNX files and PyTorch modules.

``to_onnx(model, path)`` writes an ONNX graph of a :class:`fastnn.Sequential`
(needs the ``onnx`` package: ``pip install fastnn[onnx]``);
``to_torch(model)`` returns a ``torch.nn.Module`` computing the same
function; ``from_torch(module, input_shape)`` converts a torch
``nn.Sequential`` into a fastnn model (to fine-tune it here and go back).

Layouts.  fastnn is channels-last: images (N, H, W, C), signals (N, L, C),
Dense weights (in, out), conv weights (KH, KW, C, OC).  The exported ONNX
graph and torch module take and return fastnn's layout (what
``model.predict`` takes and returns); inside they run convolutions and
pooling channels-first (ONNX's and torch's layout) with transposes where
the layout changes, so a model exported here gives the same numbers as
``model.predict`` for the same input array.  ``from_torch`` goes the
other way: the torch module takes channels-first input, the fastnn model
the same data channels-last, and the first Linear after a Flatten of
feature maps has its input features reordered from torch's (C, H, W)
order to fastnn's (H, W, C).

Dropout exports as the identity and BatchNorm in its inference form (the
running statistics), as a deployed model runs.
"""

import numpy as np

from .blocks import BatchNorm, Residual
from .conv import (AvgPool1D, AvgPool2D, Conv1D, Conv2D, Flatten, GlobalAvgPool, MaxPool1D,
                   MaxPool2D, _Pool1D, _Pool2D)
from .layers import Activation, Dense, Dropout, Softmax
from .recurrent import _Recurrent

__all__ = ["to_onnx", "to_torch", "from_torch"]


# ---- the model as a list of layout-explicit operations ------------------------

def _host_tensors(model):
    """{layer index: {name: host array}} of the model's parameters and
    state buffers (running statistics)."""
    params, buffers = model.get_params(), model.get_buffers()
    out = {}
    for i in range(len(model.layers)):
        t = model._views(params, i)
        t.update(model._views(buffers, i, model._buffer_layout))
        out[i] = t
    return out


def _sub(tensors, key):
    prefix = key + "."
    return {n[len(prefix):]: v for n, v in tensors.items() if n.startswith(prefix)}


class _Ops:
    """Walks the layers tracking the per-sample shape and whether the
    running value is in fastnn's layout ("last": channels last, or flat) or
    channels first ("first", only for 2-D/3-D feature maps); appends tuples
    (kind, ...) that to_onnx and to_torch both translate."""

    def __init__(self, dropout=False):
        self.ops = []
        self.dropout = dropout  # a ("dropout", p) op for each Dropout(p > 0) (to_torch)

    def to_first(self, state):
        shape, layout = state
        if layout == "first" or len(shape) == 1:
            return state
        self.ops.append(("to_first", len(shape)))
        return shape, "first"

    def to_last(self, state):
        shape, layout = state
        if layout == "last":
            return state
        self.ops.append(("to_last", len(shape)))
        return shape, "last"

    def layer(self, layer, tensors, state):
        shape, _ = state
        if isinstance(layer, Residual):
            return self.residual(layer, tensors, state)
        if isinstance(layer, Dense):
            state = self.to_last(state)
            self.ops.append(("dense", tensors["weight"], tensors["bias"]))
            self.act(layer.activation, layer.negative_slope)
            return (layer.out_features,), "last"
        if isinstance(layer, Conv2D):
            state = self.to_first(state)
            w = tensors["weight"]
            if isinstance(layer, Conv1D):  # (K, C, OC) -> (OC, C, K)
                w_cf = np.ascontiguousarray(w.transpose(2, 1, 0))
                stride, pads = (layer.stride[1],), (layer.padding[1],)
            else:  # (KH, KW, C, OC) -> (OC, C, KH, KW)
                w_cf = np.ascontiguousarray(w.transpose(3, 2, 0, 1))
                stride, pads = tuple(layer.stride), tuple(layer.padding)
            self.ops.append(("conv", w_cf, tensors["bias"], stride, pads))
            self.act(layer.activation, layer.negative_slope)
            return tuple(layer.build_output_shape()), "first"
        if isinstance(layer, _Pool2D):
            state = self.to_first(state)
            one_d = isinstance(layer, _Pool1D)
            pool = (layer.pool_size[1],) if one_d else tuple(layer.pool_size)
            stride = (layer.stride[1],) if one_d else tuple(layer.stride)
            self.ops.append(("maxpool" if layer._kind == "max" else "avgpool", pool, stride))
            return tuple(layer._out_shape), "first"
        if isinstance(layer, GlobalAvgPool):
            self.to_first(state)
            self.ops.append(("gap", len(shape)))
            return (shape[-1],), "last"
        if isinstance(layer, BatchNorm):
            state = self.to_first(state)
            self.ops.append(("bn", tensors["gamma"], tensors["beta"], tensors["running_mean"],
                             tensors["running_var"], layer.eps, layer.momentum, len(shape)))
            return state
        if isinstance(layer, Flatten):
            self.to_last(state)
            if len(shape) > 1:
                self.ops.append(("flatten",))
            return (int(np.prod(shape)),), "last"
        if isinstance(layer, _Recurrent):
            state = self.to_last(state)  # (L, C), as the layer takes it
            self.ops.append(("rnn", layer._cell, layer.activation, tensors["weight_ih"],
                             tensors["weight_hh"], tensors["bias_ih"], tensors["bias_hh"],
                             layer.return_sequences))
            H = layer.hidden_size
            return ((shape[0], H) if layer.return_sequences else (H,)), "last"
        if isinstance(layer, Activation):
            self.act(layer.activation, layer.negative_slope)
            return state
        if isinstance(layer, Softmax):
            state = self.to_last(state)
            self.ops.append(("softmax",))
            return state
        if isinstance(layer, Dropout):
            if self.dropout and layer.p > 0:
                self.ops.append(("dropout", layer.p))
            return state  # the identity at inference
        raise TypeError(f"export: no conversion for layer {type(layer).__name__}")

    def act(self, name, slope):
        if name != "identity":
            self.ops.append(("act", name, float(slope)))

    def residual(self, block, tensors, state):
        outer, self.ops = self.ops, []
        inner = state
        for i, layer in enumerate(block.layers):
            inner = self.layer(layer, _sub(tensors, str(i)), inner)
        body, self.ops = self.ops, []
        skip = state
        if block.projection is not None:
            skip = self.layer(block.projection, _sub(tensors, "proj"), skip)
        # both branches end in the body's layout
        skip = self.to_first(skip) if inner[1] == "first" else self.to_last(skip)
        proj, self.ops = self.ops, outer
        self.ops.append(("residual", body, proj))
        return inner


def _model_ops(model, dropout=False):
    ops, tensors = _Ops(dropout), _host_tensors(model)
    state = (tuple(model.input_shape), "last")
    for i, layer in enumerate(model.layers):
        state = ops.layer(layer, tensors[i], state)
    ops.to_last(state)
    return ops.ops


_PERM_FIRST = {2: (0, 2, 1), 3: (0, 3, 1, 2)}  # channels last -> first, by per-sample rank
_PERM_LAST = {2: (0, 2, 1), 3: (0, 2, 3, 1)}

# ONNX's gate order as indices into torch's (= fastnn's): GRU z, r, h of
# torch's r, z, n; LSTM i, o, f, c of torch's i, f, g, o
_ONNX_GATES = {"rnn": (0,), "gru": (1, 0, 2), "lstm": (0, 3, 1, 2)}


def _onnx_gate_order(a, cell, H):
    """a's last axis (G*H gate columns in torch's order) in ONNX's order."""
    return np.concatenate([a[..., g * H:(g + 1) * H] for g in _ONNX_GATES[cell]], axis=-1)


# ---- ONNX -------------------------------------------------------------------------

def to_onnx(model, path, opset=17):
    """Write `model` as an ONNX file.

    The graph's input "input" is (N, *model.input_shape) float32 in fastnn's
    layout (channels last; N symbolic), its output "output" (N,
    *model.output_shape): an ONNX runtime given the array ``model.predict``
    takes returns what it returns.  Every fastnn layer converts (Dense,
    activations, Conv1D/Conv2D, max/average/global pooling, BatchNorm with
    its running statistics, Residual with its projection, Flatten, Softmax,
    SimpleRNN/GRU/LSTM as ONNX's RNN/GRU/LSTM operators -- the GRU with
    ``linear_before_reset=1``, torch's equation --; Dropout as the
    identity).

    Parameters
    ----------
    model : fastnn.Sequential
    path : str or path-like
        Where to write the file.
    opset : int
        ONNX opset (>= 13; default 17).

    Returns
    -------
    onnx.ModelProto
        The model written.
    """
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise ImportError("to_onnx needs the onnx package: pip install 'fastnn[onnx]'") from exc
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 13:
        raise ValueError(f"opset: expected an integer >= 13, got {opset!r}")
    nodes, inits = [], []
    counter = [0]

    def fresh(stem):
        counter[0] += 1
        return f"{stem}_{counter[0]}"

    def const(stem, array):
        name = fresh(stem)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def node(op, inputs, **attrs):
        out = fresh(op.lower())
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def emit(ops, x):
        for op in ops:
            kind = op[0]
            if kind == "to_first":
                x = node("Transpose", [x], perm=list(_PERM_FIRST[op[1]]))
            elif kind == "to_last":
                x = node("Transpose", [x], perm=list(_PERM_LAST[op[1]]))
            elif kind == "dense":
                x = node("Gemm", [x, const("W", op[1]), const("b", op[2])])
            elif kind == "conv":
                _, w, b, stride, pads = op
                x = node("Conv", [x, const("W", w), const("b", b)],
                         kernel_shape=list(w.shape[2:]), strides=list(stride),
                         pads=list(pads) * 2)
            elif kind in ("maxpool", "avgpool"):
                _, pool, stride = op
                x = node("MaxPool" if kind == "maxpool" else "AveragePool", [x],
                         kernel_shape=list(pool), strides=list(stride))
            elif kind == "gap":
                x = node("Flatten", [node("GlobalAveragePool", [x])], axis=1)
            elif kind == "bn":
                _, g, b, m, v, eps = op[:6]
                x = node("BatchNormalization",
                         [x, const("gamma", g), const("beta", b), const("mean", m),
                          const("var", v)], epsilon=float(eps))
            elif kind == "flatten":
                x = node("Flatten", [x], axis=1)
            elif kind == "softmax":
                x = node("Softmax", [x], axis=-1)
            elif kind == "act":
                x = act(op[1], op[2], x)
            elif kind == "residual":
                _, body, proj = op
                x = node("Add", [emit(body, x), emit(proj, x)])
            elif kind == "rnn":
                x = recurrent(op, x)
            else:  # pragma: no cover
                raise AssertionError(kind)
        return x

    def recurrent(op, x):
        """ONNX RNN / GRU / LSTM on fastnn's (N, L, C): time-major inside
        (the operators' default layout), gates in ONNX's order, W and R
        the transposes of fastnn's weight_ih / weight_hh, B = [Wb, Rb]."""
        _, cell, activation, w_ih, w_hh, b_ih, b_hh, sequences = op
        H = w_hh.shape[0]
        W = const("W", _onnx_gate_order(w_ih, cell, H).T[None])
        R = const("R", _onnx_gate_order(w_hh, cell, H).T[None])
        B = const("B", np.concatenate([_onnx_gate_order(b_ih, cell, H),
                                       _onnx_gate_order(b_hh, cell, H)])[None])
        attrs = {"hidden_size": int(H)}
        if cell == "gru":  # torch's n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
            attrs["linear_before_reset"] = 1
        if cell == "rnn":
            attrs["activations"] = [{"tanh": "Tanh", "relu": "Relu"}[activation]]
        time_major = node("Transpose", [x], perm=[1, 0, 2])
        y, y_h = fresh(cell + "_y"), fresh(cell + "_y_h")
        outputs = [y] if sequences else ["", y_h]
        nodes.append(helper.make_node(cell.upper(), [time_major, W, R, B], outputs,
                                      name=fresh(cell), **attrs))
        if sequences:  # Y (L, 1, N, H) -> (N, L, H)
            return node("Transpose", [node("Squeeze", [y, axes(1)])], perm=[1, 0, 2])
        return node("Squeeze", [y_h, axes(0)])  # Y_h (1, N, H) -> (N, H)

    def axes(*values):
        name = fresh("axes")
        inits.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def act(name, slope, x):
        simple = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "sign": "Sign",
                  "softplus": "Softplus"}
        if name in simple:
            return node(simple[name], [x])
        if name == "leaky_relu":
            return node("LeakyRelu", [x], alpha=slope)
        if name == "step":  # 1 where x > 0, else 0
            zero = const("zero", np.zeros((), np.float32))
            return node("Cast", [node("Greater", [x, zero])], to=TensorProto.FLOAT)
        raise ValueError(f"to_onnx: no ONNX form of activation {name!r}")

    out = emit(_model_ops(model), "input")
    nodes.append(helper.make_node("Identity", [out], ["output"], name="output"))
    graph = helper.make_graph(
        nodes, "fastnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                       ["N"] + list(model.input_shape))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                       ["N"] + list(model.output_shape))],
        initializer=inits)
    proto = helper.make_model(graph, producer_name="fastnn",
                              opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = min(proto.ir_version, 8)  # readable by onnxruntime >= 1.17
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return proto


# ---- PyTorch ------------------------------------------------------------------------

def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover
        raise ImportError("to_torch / from_torch need PyTorch (pip install torch)") from exc
    return torch


def to_torch(model):
    """A ``torch.nn.Module`` computing ``model.predict``'s function.

    It takes and returns fastnn's layout (channels last, as model.predict),
    float32; convolutions and pooling run channels first inside, between
    ``Permute`` modules.  Dropout becomes ``nn.Dropout`` with the layer's p
    (the identity in ``eval()`` mode, which the module is returned in) and
    BatchNorm ``nn.BatchNorm1d/2d`` with the running statistics and
    momentum.  SimpleRNN/GRU/LSTM become ``nn.RNN/GRU/LSTM(batch_first=True)``
    inside a ``Recurrent`` module (fastnn._torch_modules) that returns the
    whole sequence or the last step as the layer does.  The module's
    parameters are copies (torch owns them).

    Returns
    -------
    torch.nn.Sequential
    """
    torch = _torch()
    nn = torch.nn
    from ._torch_modules import Permute, Recurrent, ResidualBlock

    def tensor(a):
        return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))

    def build(ops):
        mods = []
        for op in ops:
            kind = op[0]
            if kind in ("to_first", "to_last"):
                mods.append(Permute(*(_PERM_FIRST if kind == "to_first" else _PERM_LAST)[op[1]]))
            elif kind == "dense":
                w, b = op[1], op[2]
                lin = nn.Linear(w.shape[0], w.shape[1])
                with torch.no_grad():
                    lin.weight.copy_(tensor(w.T))
                    lin.bias.copy_(tensor(b))
                mods.append(lin)
            elif kind == "conv":
                _, w, b, stride, pads = op
                cls = nn.Conv1d if w.ndim == 3 else nn.Conv2d
                conv = cls(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=stride,
                           padding=pads)
                with torch.no_grad():
                    conv.weight.copy_(tensor(w))
                    conv.bias.copy_(tensor(b))
                mods.append(conv)
            elif kind in ("maxpool", "avgpool"):
                _, pool, stride = op
                one_d = len(pool) == 1
                cls = {("maxpool", True): nn.MaxPool1d, ("maxpool", False): nn.MaxPool2d,
                       ("avgpool", True): nn.AvgPool1d, ("avgpool", False): nn.AvgPool2d}
                mods.append(cls[(kind, one_d)](pool, stride=stride))
            elif kind == "gap":
                mods += [nn.AdaptiveAvgPool2d(1) if op[1] == 3 else nn.AdaptiveAvgPool1d(1),
                         nn.Flatten()]
            elif kind == "bn":
                _, g, b, m, v, eps, momentum, rank = op
                cls = nn.BatchNorm2d if rank == 3 else nn.BatchNorm1d
                bn = cls(g.shape[0], eps=eps, momentum=momentum)
                with torch.no_grad():
                    bn.weight.copy_(tensor(g))
                    bn.bias.copy_(tensor(b))
                    bn.running_mean.copy_(tensor(m))
                    bn.running_var.copy_(tensor(v))
                mods.append(bn)
            elif kind == "flatten":
                mods.append(nn.Flatten())
            elif kind == "softmax":
                mods.append(nn.Softmax(dim=-1))
            elif kind == "act":
                mods.append(_torch_activation(nn, op[1], op[2]))
            elif kind == "dropout":
                mods.append(nn.Dropout(op[1]))
            elif kind == "residual":
                mods.append(ResidualBlock(build(op[1]), build(op[2])))
            elif kind == "rnn":
                _, cell, activation, w_ih, w_hh, b_ih, b_hh, sequences = op
                C, H = w_ih.shape[0], w_hh.shape[0]
                if cell == "rnn":
                    rnn = nn.RNN(C, H, nonlinearity=activation, batch_first=True)
                else:
                    rnn = (nn.GRU if cell == "gru" else nn.LSTM)(C, H, batch_first=True)
                with torch.no_grad():  # fastnn's weights are the transposes of torch's
                    rnn.weight_ih_l0.copy_(tensor(w_ih.T))
                    rnn.weight_hh_l0.copy_(tensor(w_hh.T))
                    rnn.bias_ih_l0.copy_(tensor(b_ih))
                    rnn.bias_hh_l0.copy_(tensor(b_hh))
                mods.append(Recurrent(rnn, sequences))
        return nn.Sequential(*mods) if len(mods) != 1 else mods[0] if mods else nn.Identity()

    module = build(_model_ops(model, dropout=True))
    if not isinstance(module, nn.Sequential):
        module = nn.Sequential(module)
    return module.eval()


def _torch_activation(nn, name, slope):
    from ._torch_modules import Sign, Step

    table = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus,
             "step": Step, "sign": Sign}
    if name in table:
        return table[name]()
    if name == "leaky_relu":
        return nn.LeakyReLU(slope)
    raise ValueError(f"to_torch: no torch form of activation {name!r}")


def from_torch(module, input_shape, seed=None, backend=None):
    """A fastnn Sequential computing a torch ``nn.Sequential``'s function.

    Parameters
    ----------
    module : torch.nn.Sequential (nested Sequentials are flattened)
        Of Linear, Conv1d, Conv2d (groups = dilation = 1, zero padding given
        as integers), BatchNorm1d/2d (track_running_stats, affine), ReLU,
        LeakyReLU, Tanh, Sigmoid, Softplus (beta 1), MaxPool1d/2d,
        AvgPool1d/2d (no padding, ceil_mode False), Flatten (start_dim 1),
        Dropout, Identity, Softmax (last dim).
        Recurrent layers: ``fastnn._torch_modules.Recurrent`` (what
        to_torch builds: an nn.RNN/GRU/LSTM with batch_first=True, one
        layer, one direction, biases, returning its sequence or last step),
        and ``Permute`` between channels-first and channels-last values.
    input_shape : tuple
        torch's per-sample input shape: (features,), (C, L) or (C, H, W);
        (L, C) / (H, W, C) when the module starts with a recurrent layer or
        a Permute (its input is channels-last, as to_torch's modules take).
        The fastnn model's input_shape is the channels-last (L, C) or
        (H, W, C): feed it ``x.permute(0, 2, 3, 1)`` of what a
        channels-first torch module takes.
    seed, backend : as Sequential's.

    Returns
    -------
    fastnn.Sequential
        With the module's weights in fastnn's layouts (and the running
        statistics of its BatchNorms); Linear after a Flatten of feature
        maps gets its input features reordered from (C, H, W) to (H, W, C).
    """
    torch = _torch()
    nn = torch.nn
    from . import layers as L
    from . import recurrent as R
    from ._torch_modules import Permute, Recurrent
    from .model import Sequential

    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise ValueError(f"input_shape: expected a tuple of ints, got {input_shape!r}") from None
    if len(shape) not in (1, 2, 3) or min(shape) < 1:
        raise ValueError(f"input_shape: expected (features,), (C, L) or (C, H, W) of positive "
                         f"ints, got {input_shape!r}")

    def flat(m):
        if isinstance(m, nn.Sequential):
            for child in m:
                yield from flat(child)
        else:
            yield m

    def arr(t):
        return t.detach().cpu().numpy().astype(np.float32)

    def pair(v, what):
        return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * what

    # torch shape of the running value, whether a feature map is channels
    # first there (None: the input's layout, not yet known), and for a
    # flattened feature map the torch index of each fastnn feature
    cur = shape
    first = None if len(shape) > 1 else True
    input_first = True
    perm = None
    loads = []  # (layer, {param name: array}, {state name: array})

    def need_first(where):
        nonlocal first
        if first is None:
            first = True
        elif not first and len(cur) > 1:
            raise ValueError(f"{where}: takes channels-first input, the value is channels-last "
                             "here; add a Permute")

    for i, m in enumerate(flat(module)):
        where = f"module[{i}] ({type(m).__name__})"
        if isinstance(m, Permute):
            to_first, to_last = _PERM_FIRST.get(len(cur)), _PERM_LAST.get(len(cur))
            if m.perm not in (to_first, to_last):
                raise ValueError(f"{where}: only the channels-first/last permutations of a "
                                 f"(N, C, L) or (N, C, H, W) value convert, got {m.perm}")
            if first is None:  # a leading Permute says the input's layout
                first = input_first = to_first != to_last and m.perm == to_last
            if first == (m.perm == to_first) and to_first != to_last:
                raise ValueError(f"{where}: the value is already channels-"
                                 f"{'first' if first else 'last'}")
            cur = tuple(cur[p - 1] for p in m.perm[1:])
            first = not first
            continue
        if isinstance(m, (nn.RNN, nn.GRU, nn.LSTM)):
            raise TypeError(f"{where}: a bare {type(m).__name__} returns a tuple; wrap it in "
                            "fastnn._torch_modules.Recurrent(module, return_sequences)")
        if isinstance(m, Recurrent):
            rnn = m.rnn
            if not isinstance(rnn, (nn.RNN, nn.GRU, nn.LSTM)) or not rnn.batch_first or \
                    rnn.num_layers != 1 or rnn.bidirectional or not rnn.bias or \
                    getattr(rnn, "proj_size", 0):
                raise ValueError(f"{where}: only one-layer, one-direction nn.RNN/GRU/LSTM with "
                                 "batch_first=True, biases and no projection convert")
            if first is None:
                first, input_first = False, False
            if len(cur) != 2 or first:
                raise ValueError(f"{where}: expects a channels-last (L, C) sequence, input is "
                                 f"{cur}{' channels-first; add a Permute' if first else ''}")
            if cur[1] != rnn.input_size:
                raise ValueError(f"{where}: input_size {rnn.input_size}, input has {cur[1]}")
            H = rnn.hidden_size
            if isinstance(rnn, nn.RNN):
                layer = R.SimpleRNN(rnn.input_size, H, activation=rnn.nonlinearity,
                                    return_sequences=m.return_sequences)
            else:
                layer = (R.GRU if isinstance(rnn, nn.GRU) else R.LSTM)(
                    rnn.input_size, H, return_sequences=m.return_sequences)
            loads.append((layer, {"weight_ih": arr(rnn.weight_ih_l0).T,
                                  "weight_hh": arr(rnn.weight_hh_l0).T,
                                  "bias_ih": arr(rnn.bias_ih_l0),
                                  "bias_hh": arr(rnn.bias_hh_l0)}, {}))
            cur, perm = ((cur[0], H) if m.return_sequences else (H,)), None
            continue
        if isinstance(m, nn.Linear):
            if len(cur) != 1:
                raise ValueError(f"{where}: Linear on a {len(cur) + 1}-D value; add a Flatten")
            if cur[0] != m.in_features:
                raise ValueError(f"{where}: in_features {m.in_features}, input has {cur[0]}")
            w = arr(m.weight)  # (out, in)
            if perm is not None:
                w = w[:, perm]
            b = arr(m.bias) if m.bias is not None else np.zeros(m.out_features, np.float32)
            layer = L.Dense(m.in_features, m.out_features)
            loads.append((layer, {"weight": w.T, "bias": b}, {}))
            cur, perm = (m.out_features,), None
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nd = 1 if isinstance(m, nn.Conv1d) else 2
            need_first(where)
            if len(cur) != nd + 1 or cur[0] != m.in_channels:
                raise ValueError(f"{where}: expects ({m.in_channels}, ...) of rank {nd + 1}, "
                                 f"input is {cur}")
            if m.groups != 1 or any(d != 1 for d in pair(m.dilation, nd)) \
                    or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ValueError(f"{where}: only groups=1, dilation=1 and integer zero padding "
                                 "convert")
            k, s, p = pair(m.kernel_size, nd), pair(m.stride, nd), pair(m.padding, nd)
            w = arr(m.weight)
            b = arr(m.bias) if m.bias is not None else np.zeros(m.out_channels, np.float32)
            if nd == 1:
                layer = Conv1D(m.in_channels, m.out_channels, k[0], s[0], p[0])
                w = w.transpose(2, 1, 0)  # (OC, C, K) -> (K, C, OC)
                cur = (m.out_channels, (cur[1] + 2 * p[0] - k[0]) // s[0] + 1)
            else:
                layer = Conv2D(m.in_channels, m.out_channels, k, s, p)
                w = w.transpose(2, 3, 1, 0)  # (OC, C, KH, KW) -> (KH, KW, C, OC)
                cur = (m.out_channels,) + tuple((n + 2 * pp - kk) // ss + 1
                                                for n, kk, ss, pp in zip(cur[1:], k, s, p))
            loads.append((layer, {"weight": w, "bias": b}, {}))
        elif isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)):
            nd = 1 if isinstance(m, (nn.MaxPool1d, nn.AvgPool1d)) else 2
            need_first(where)
            if len(cur) != nd + 1:
                raise ValueError(f"{where}: input of shape {cur}")
            is_max = isinstance(m, (nn.MaxPool1d, nn.MaxPool2d))
            if any(v != 0 for v in pair(m.padding, nd)) or m.ceil_mode or \
                    (is_max and any(d != 1 for d in pair(m.dilation, nd))):
                raise ValueError(f"{where}: only padding=0, dilation=1, ceil_mode=False convert")
            k = pair(m.kernel_size, nd)
            s = k if m.stride is None or m.stride == () else pair(m.stride, nd)
            if nd == 1:
                layer = (MaxPool1D if is_max else AvgPool1D)(k[0], s[0])
            else:
                layer = (MaxPool2D if is_max else AvgPool2D)(k, s)
            cur = (cur[0],) + tuple((n - kk) // ss + 1 for n, kk, ss in zip(cur[1:], k, s))
            loads.append((layer, {}, {}))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not m.affine or not m.track_running_stats or m.momentum is None:
                raise ValueError(f"{where}: needs affine=True, track_running_stats=True and a "
                                 "momentum")
            need_first(where)
            if cur[0] != m.num_features:
                raise ValueError(f"{where}: {m.num_features} features, input {cur}")
            # after a Flatten of feature maps, the features in fastnn's order
            sel = perm if (perm is not None and len(cur) == 1) else slice(None)
            layer = BatchNorm(m.num_features, momentum=m.momentum, eps=m.eps)
            loads.append((layer, {"gamma": arr(m.weight)[sel], "beta": arr(m.bias)[sel]},
                          {"running_mean": arr(m.running_mean)[sel],
                           "running_var": arr(m.running_var)[sel]}))
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise ValueError(f"{where}: only Flatten(start_dim=1, end_dim=-1) converts")
            if len(cur) > 1:
                if first is None:
                    first = True
                # fastnn's feature j is torch's feature perm[j]: (H, W, C) vs (C, H, W)
                # order (the same order when torch's value is channels-last too)
                idx = np.arange(int(np.prod(cur))).reshape(cur)
                perm = np.moveaxis(idx, 0, -1).reshape(-1) if first else None
                first = True
                loads.append((Flatten(), {}, {}))
                cur = (int(np.prod(cur)),)
        elif isinstance(m, (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Softplus)):
            if isinstance(m, nn.Softplus) and (m.beta != 1 or m.threshold < 20):
                raise ValueError(f"{where}: only Softplus(beta=1) converts")
            layer = (L.LeakyReLU(m.negative_slope) if isinstance(m, nn.LeakyReLU) else
                     {nn.ReLU: L.ReLU, nn.Tanh: L.Tanh, nn.Sigmoid: L.Sigmoid,
                      nn.Softplus: L.Softplus}[type(m)]())
            loads.append((layer, {}, {}))
        elif isinstance(m, nn.Dropout):
            loads.append((L.Dropout(m.p), {}, {}))
        elif isinstance(m, nn.Softmax):
            if len(cur) != 1 or m.dim not in (-1, 1):
                raise ValueError(f"{where}: only Softmax over the features of (N, F) converts")
            loads.append((L.Softmax(), {}, {}))
        elif isinstance(m, nn.Identity):
            continue
        else:
            raise TypeError(f"{where}: no fastnn conversion for {type(m).__name__}")
    if not loads:
        raise ValueError("module: no layer to convert")
    layers = [layer for layer, _, _ in loads]
    fshape = shape if len(shape) == 1 or not input_first else shape[1:] + shape[:1]
    model = Sequential(layers, seed=seed, backend=backend, input_shape=fshape)
    params, buffers = model.get_params(), model.get_buffers()
    for i, (layer, p, st) in enumerate(loads):
        for name, view in model._views(params, i).items():
            view[...] = p[name].reshape(view.shape)
        for name, view in model._views(buffers, i, model._buffer_layout).items():
            view[...] = st[name].reshape(view.shape)
    model.set_params(params)
    model.set_buffers(buffers)
    return model
