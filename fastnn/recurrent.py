"""Recurrent layers: SimpleRNN, GRU and LSTM over (N, L, C) sequences.

PyTorch's equations and gate order (GRU r, z, n; LSTM i, f, g, o), both
biases, a zero initial state.  The parameters are views into the model's
flat buffer: ``weight_ih`` (input_size, G*H), ``weight_hh`` (hidden_size,
G*H), ``bias_ih`` and ``bias_hh`` (G*H) -- the transposes of torch's
``weight_ih_l0`` / ``weight_hh_l0``, so weights copy across directly.  The
kernels (``rnn_forward`` / ``rnn_backward``, documented in the reference)
run the input projection of every step as one GEMM, the recurrence step by
step with the gates fused after the hidden GEMM, and backpropagation
through time from the gate activations the forward keeps.
"""

import numpy as np

from .kernels import spec
from .layers import INITS, Layer, _fan_init, register


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _host_last(k, Hs):
    """Hs[:, -1] of a backend array as a host array."""
    return k.to_numpy(Hs)[:, -1]


class _Recurrent(Layer):
    _cell = None

    def __init__(self, input_size, hidden_size, return_sequences=False, init="auto",
                 activation="tanh"):
        super().__init__()
        self.input_size = _positive("input_size", input_size)
        self.hidden_size = _positive("hidden_size", hidden_size)
        if not isinstance(return_sequences, (bool, np.bool_)):
            raise ValueError(f"return_sequences: expected a bool, got {return_sequences!r}")
        self.return_sequences = bool(return_sequences)
        if init != "auto" and init not in INITS:
            raise ValueError(f"init: unknown {init!r}; expected 'auto' (torch's uniform "
                             f"+-1/sqrt(hidden_size)) or one of {', '.join(INITS)}")
        self.init = init
        self.activation = activation
        self._cell_code = spec.cell_code(self._cell)
        if activation not in spec.RNN_ACTIVATIONS or (
                self._cell_code != spec.Cell.RNN and activation != "tanh"):
            raise ValueError(f"activation: expected one of {', '.join(spec.RNN_ACTIVATIONS)}, "
                             f"got {activation!r}")
        self._gh = spec.RNN_GATES[spec.Cell(self._cell_code)] * self.hidden_size
        self._k_cache = spec.RNN_CACHE[spec.Cell(self._cell_code)] * self.hidden_size

    def build(self, in_shape):
        if len(in_shape) != 2 or in_shape[1] != self.input_size:
            raise ValueError(f"{type(self).__name__}: input has per-sample shape "
                             f"{tuple(in_shape)}, expected (L, {self.input_size}) (give the "
                             "model input_shape=(L, C))")
        self._length = int(in_shape[0])
        H = self.hidden_size
        return (self._length, H) if self.return_sequences else (H,)

    def param_shapes(self):
        return [("weight_ih", (self.input_size, self._gh)),
                ("weight_hh", (self.hidden_size, self._gh)),
                ("bias_ih", (self._gh,)), ("bias_hh", (self._gh,))]

    def init_params(self, rng, views):
        H = self.hidden_size
        if self.init == "auto":  # torch: every tensor uniform(-1/sqrt(H), 1/sqrt(H))
            lim = 1.0 / np.sqrt(H)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                views[name][...] = rng.uniform(-lim, lim, views[name].shape)
            return
        for name in ("weight_ih", "weight_hh"):
            shape = views[name].shape
            views[name][...] = _fan_init(rng, shape, shape[0], shape[1], self.init)
        views["bias_ih"][...] = 0.0
        views["bias_hh"][...] = 0.0

    def bind(self, params, grads):
        super().bind(params, grads)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            setattr(self, name, params[name])
            setattr(self, name + "_grad", grads[name])

    def penalized(self):
        return [(self.weight_ih, self.weight_ih_grad), (self.weight_hh, self.weight_hh_grad)]

    def _kw(self):
        return {"cell": self._cell, "activation": self.activation}

    def forward(self, X, training=False):
        n = X.shape[0]
        L, H = self._length, self.hidden_size
        Hs = self._buffer("Hs", (n, L, H))
        G = self._buffer("G", (n, L, self._k_cache))
        self._k.rnn_forward(Hs, G, X, self.weight_ih, self.weight_hh, self.bias_ih,
                            self.bias_hh, **self._kw())
        self._X, self._Hs, self._G = X, Hs, G
        if self.return_sequences:
            return Hs
        Y = self._buffer("Y", (n, H))
        if isinstance(Y, np.ndarray):
            np.copyto(Y, Hs[:, -1])
        else:
            Y.copy_to_device(np.ascontiguousarray(_host_last(self._k, Hs)))
        return Y

    def backward(self, dY, need_dx=True):
        n = self._X.shape[0]
        L, H = self._length, self.hidden_size
        if self.return_sequences:
            dHs = dY  # the protocol lets backward overwrite dY
        else:
            dHs = self._buffer("dHs", (n, L, H))
            host = np.zeros((n, L, H), self._dtype)
            host[:, -1] = self._k.to_numpy(dY).reshape(n, H)
            if isinstance(dHs, np.ndarray):
                np.copyto(dHs, host)
            else:
                dHs.copy_to_device(host)
        dX = self._buffer("dX", self._X.shape) if need_dx else None
        self._k.rnn_backward(dX, self.weight_ih_grad, self.weight_hh_grad, self.bias_ih_grad,
                             self.bias_hh_grad, dHs, self._G, self._X, self.weight_ih,
                             self.weight_hh, self._Hs, **self._kw())
        return dX

    def emit(self, b, x, scope):
        """Plan records (fastnn.plan): one RNN record (spec.rnn_record_regions)."""
        L, H = self._length, self.hidden_size
        if self.return_sequences:
            y = b.value((L, H))
            aux, daux = y.off, y.doff
        else:
            y = b.value((H,))
            aux, daux = b.floats(L * H), b.floats(L * H)
        b.record(spec.Op.RNN, x, y, param=scope.param("weight_ih"),
                 param_hh=scope.param("weight_hh"), bias=scope.param("bias_ih"),
                 bias_hh=scope.param("bias_hh"), aux=aux, daux=daux,
                 cache=b.floats(L * self._k_cache), cell=self._cell_code,
                 act=spec.activation_code(self.activation))
        b.penalize(scope.param("weight_ih"), self.input_size * self._gh)
        b.penalize(scope.param("weight_hh"), self.hidden_size * self._gh)
        return y

    def config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "return_sequences": self.return_sequences, "init": self.init}


@register
class SimpleRNN(_Recurrent):
    """Elman RNN (torch.nn.RNN): ``h' = act(x W_ih + b_ih + h W_hh + b_hh)``.

    Parameters
    ----------
    input_size, hidden_size : int
    activation : "tanh" or "relu"
    return_sequences : bool
        Output every step's state (N, L, H), else the last (N, H).
    init : str
        "auto": torch's uniform(-1/sqrt(H), 1/sqrt(H)) for every tensor;
        or a Dense scheme for the weights (biases zero).

    Input (N, L, input_size), channels last; the initial state is zero.
    """

    _cell = "rnn"

    def __init__(self, input_size, hidden_size, activation="tanh", return_sequences=False,
                 init="auto"):
        super().__init__(input_size, hidden_size, return_sequences, init, activation)

    def config(self):
        return dict(super().config(), activation=self.activation)


@register
class GRU(_Recurrent):
    """Gated recurrent unit (torch.nn.GRU): gates r, z, n,
    ``n = tanh(x W_in + b_in + r * (h W_hn + b_hn))``, ``h' = (1 - z) n + z h``.
    Parameters as SimpleRNN (G = 3 gates)."""

    _cell = "gru"

    def __init__(self, input_size, hidden_size, return_sequences=False, init="auto"):
        super().__init__(input_size, hidden_size, return_sequences, init)


@register
class LSTM(_Recurrent):
    """Long short-term memory (torch.nn.LSTM): gates i, f, g, o,
    ``c' = f c + i g``, ``h' = o tanh(c')``.  Parameters as SimpleRNN
    (G = 4 gates); the cell state starts at zero too."""

    _cell = "lstm"

    def __init__(self, input_size, hidden_size, return_sequences=False, init="auto"):
        super().__init__(input_size, hidden_size, return_sequences, init)
