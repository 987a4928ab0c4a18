"""Layers: thin objects that call kernels on buffers they own.

A layer never owns its parameters: :class:`fastnn.Sequential` gives it views
into the model's one flat parameter buffer and one flat gradient buffer.
Activations and gradients are owned by the layer, allocated once per batch
size through the backend (``_buffer``) and reused for every batch of that
size, so training allocates nothing per batch.

Each layer implements::

    build(in_shape) -> out_shape          per-sample shapes, batch axis excluded
    param_shapes() -> [(name, shape)]     tensors it keeps in the flat buffer
    buffer_shapes() -> [(name, shape, v)] non-trainable state (running statistics)
    init_params(rng, views)               fill its views at model creation
    forward(X, training) -> Y             Y is a buffer the layer owns
    backward(dY, need_dx) -> dX or None   may overwrite dY
    config() -> dict                      JSON-able constructor arguments
    children() -> [Layer]                 the layers a block holds; default []
    penalized() -> [(W, dW)]              weights the L2 penalty applies to; default []
    trainable                             False: frozen (Sequential.freeze)

A block passes build, bind and the rest on to its children itself; the model
finds nested layers only through ``children()`` (:meth:`fastnn.Sequential.walk`),
which is how the L2 penalty and dropout seeding reach inside blocks.
"""

import numpy as np

from .kernels import _checks, spec

_ACTIVATION_ALIASES = {None: "identity", "linear": "identity", "logistic": "sigmoid",
                       "heaviside": "step"}


def canonical_activation(activation):
    """The kernel name of an activation ("linear" -> "identity", ...)."""
    if activation is not None and not isinstance(activation, str):  # (unhashable too)
        raise ValueError(f"activation: expected a name (one of {', '.join(spec.ACTIVATIONS)}), "
                         f"got {activation!r}")
    name = _ACTIVATION_ALIASES.get(activation, activation)
    _checks.activation_code(name)  # ValueError for unknown names
    return name


# Layer classes by name, for loading saved models (fastnn.load).
LAYERS = {}


def register(cls):
    """Class decorator: make a layer class loadable by its name."""
    LAYERS[cls.__name__] = cls
    return cls


class Layer:
    """Base class; see the module docstring for the protocol."""

    _k = None  # kernel backend module, set by the model
    _dtype = np.float32  # float64 only on the reference backend (gradient checks)
    #: False freezes the layer (and the layers inside it): training leaves its
    #: parameters and their optimizer state as they are (its gradients are
    #: still computed where an earlier layer needs them; BatchNorm's running
    #: statistics still update in training, as in torch).
    trainable = True

    def __init__(self):
        self._buffers = {}

    def build(self, in_shape):
        return in_shape

    def param_shapes(self):
        return []

    def init_params(self, rng, views):
        pass

    def buffer_shapes(self):
        """Non-trainable state kept and saved with the model (e.g. running
        statistics): [(name, shape, initial value)]."""
        return []

    def bind_buffers(self, views):
        self.state_buffers = views

    def bind(self, params, grads):
        """Receive the views of this layer's tensors (dicts name -> array)."""
        self.params, self.grads = params, grads

    def set_backend(self, module, dtype=np.float32):
        self._k, self._dtype = module, dtype
        self._buffers = {}

    def _buffer(self, key, shape):
        """A backend array for `key` with `shape`, allocated on first use."""
        buf = self._buffers.get(key)
        if buf is None or tuple(buf.shape) != tuple(shape):
            buf = self._buffers[key] = self._k.empty(shape, self._dtype)
        return buf

    def config(self):
        return {}

    def children(self):
        """The layers this layer contains.

        Returns
        -------
        list of Layer
            Direct children only (a block's own layers, not theirs); empty
            for a layer that holds no others.
        """
        return []

    def penalized(self):
        """The tensors the L2 penalty applies to.

        The penalty is scikit-learn's MLP ``alpha``, ``Trainer(l2=...)``:
        ``l2 / (2 m) * sum(weight**2)`` added to the loss of a batch of m
        samples and ``l2 / m * weight`` to ``weight_grad``.

        Returns
        -------
        list of (array, array)
            (weight, weight_grad) pairs of views into the model's parameter
            and gradient buffers: the weights of this layer itself (not its
            children's, not biases or normalisation parameters); empty by
            default.
        """
        return []

    @classmethod
    def from_config(cls, config):
        """The layer that ``config()`` describes (used by fastnn.load)."""
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


# ---- dense -------------------------------------------------------------------

def _fan_init(rng, shape, fan_in, fan_out, scheme):
    """Initial weights for a (fan_in, fan_out) matrix; never zeros."""
    if scheme == "he_normal":
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    if scheme == "he_uniform":
        lim = np.sqrt(6.0 / fan_in)
        return rng.uniform(-lim, lim, shape)
    if scheme == "glorot_normal":
        return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), shape)
    if scheme == "glorot_uniform":
        lim = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-lim, lim, shape)
    if scheme == "orthogonal":  # of the (everything but the last axis, last axis) matrix
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        flat = rng.normal(0.0, 1.0, (max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(flat)
        q *= np.sign(np.diag(r))  # a uniform draw over orthogonal matrices
        q = q if rows >= cols else q.T
        return q.reshape(shape)
    raise ValueError(f"init: unknown {scheme!r}; expected one of 'auto', {', '.join(INITS)}")


INITS = ("he_normal", "he_uniform", "glorot_normal", "glorot_uniform", "orthogonal")
_RELU_FAMILY = ("relu", "leaky_relu", "softplus")


def auto_init(activation):
    """He for the ReLU family, Glorot for everything else (sigmoid, tanh, ...)."""
    return "he_normal" if activation in _RELU_FAMILY else "glorot_uniform"


class _Affine(Layer):
    """A layer with a ``weight`` and a ``bias`` and a fused activation (Dense,
    Conv1D/2D): the activation, init and negative_slope arguments, the
    fan-based initialisation, the views and the L2 penalty are shared;
    a subclass says its fans (``_fans``)."""

    def __init__(self, activation, init, negative_slope):
        super().__init__()
        self.activation = canonical_activation(activation)
        if init != "auto" and init not in INITS:
            raise ValueError(f"init: unknown {init!r}; expected 'auto' or one of {', '.join(INITS)}")
        self.init = init
        self.negative_slope = _checks.check_scalar("negative_slope", negative_slope, low=0.0)
        self._next_activation = None  # set by Sequential when an activation layer follows

    def _fans(self):
        """(fan_in, fan_out) of the weight, as torch counts them."""
        raise NotImplementedError

    def init_params(self, rng, views):
        act = self.activation if self.activation != "identity" else (self._next_activation or "identity")
        scheme = auto_init(act) if self.init == "auto" else self.init
        views["weight"][...] = _fan_init(rng, views["weight"].shape, *self._fans(), scheme)
        views["bias"][...] = 0.0

    def bind(self, params, grads):
        super().bind(params, grads)
        self.weight, self.bias = params["weight"], params["bias"]
        self.weight_grad, self.bias_grad = grads["weight"], grads["bias"]

    def penalized(self):
        return [(self.weight, self.weight_grad)]


class Dense(_Affine):
    """Fully connected layer ``Y = act(X @ weight + bias)``.

    Parameters
    ----------
    in_features, out_features : int
    activation : str or None
        Fused into the dense kernel: identity (None), step, sign, sigmoid,
        tanh, relu, leaky_relu, softplus.
    init : str
        "auto" (He normal for the ReLU family, Glorot uniform otherwise),
        "he_normal", "he_uniform", "glorot_normal", "glorot_uniform",
        "orthogonal".  Biases start at zero.
    negative_slope : float
        Slope of leaky_relu for x < 0.

    Attributes
    ----------
    weight : array (in_features, out_features)
    bias : array (out_features,)
        Writable views into the model's parameter buffer (after the layer is
        part of a model).
    """

    def __init__(self, in_features, out_features, activation=None, init="auto",
                 negative_slope=0.01):
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        if self.in_features * self.out_features >= 2 ** 62:
            raise ValueError(f"in_features * out_features: {self.in_features} x "
                             f"{self.out_features} weights overflow a buffer's int64 size")
        super().__init__(activation, init, negative_slope)

    def build(self, in_shape):
        if tuple(in_shape) != (self.in_features,):
            raise ValueError(f"Dense({self.in_features}, {self.out_features}): input has "
                             f"per-sample shape {tuple(in_shape)}, expected ({self.in_features},)")
        return (self.out_features,)

    def param_shapes(self):
        return [("weight", (self.in_features, self.out_features)), ("bias", (self.out_features,))]

    def _fans(self):
        return self.in_features, self.out_features

    def forward(self, X, training=False):
        Y = self._buffer("Y", (X.shape[0], self.out_features))
        self._k.dense_forward(Y, X, self.weight, self.bias, activation=self.activation,
                              negative_slope=self.negative_slope)
        self._X, self._Y = X, Y
        return Y

    def backward(self, dY, need_dx=True):
        dX = self._buffer("dX", self._X.shape) if need_dx else None
        self._k.dense_backward(dX, self.weight_grad, self.bias_grad, dY, dY, self._X,
                               self.weight, self._Y, activation=self.activation,
                               negative_slope=self.negative_slope)
        return dX

    def emit(self, b, x, scope):
        """Plan records (fastnn.plan): one DENSE with the activation fused."""
        y = b.value((self.out_features,))
        b.record(spec.Op.DENSE, x, y, param=scope.param("weight"), bias=scope.param("bias"),
                 act=spec.activation_code(self.activation), slope=self.negative_slope)
        b.penalize(scope.param("weight"), self.in_features * self.out_features)
        return y

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "activation": self.activation, "init": self.init,
                "negative_slope": self.negative_slope}


# ---- activations as layers ---------------------------------------------------

class Activation(Layer):
    """An elementwise activation as its own layer (see Dense for the names)."""

    def __init__(self, activation, negative_slope=0.01):
        super().__init__()
        self.activation = canonical_activation(activation)
        self.negative_slope = _checks.check_scalar("negative_slope", negative_slope, low=0.0)

    def forward(self, X, training=False):
        Y = self._buffer("Y", X.shape)
        self._k.activation_forward(Y, X, activation=self.activation,
                                   negative_slope=self.negative_slope)
        self._Y = Y
        return Y

    def backward(self, dY, need_dx=True):
        if not need_dx:
            return None
        self._k.activation_backward(dY, dY, self._Y, activation=self.activation,
                                    negative_slope=self.negative_slope)
        return dY

    def emit(self, b, x, scope):
        """Folded into the dense or conv record before it when that has no
        activation of its own; else an ACTIVATION record."""
        if self.activation == "identity":
            return x
        if b.fold_activation(x, self.activation, self.negative_slope):
            return x
        y = b.value(x.shape)
        b.record(spec.Op.ACTIVATION, x, y, act=spec.activation_code(self.activation),
                 slope=self.negative_slope)
        return y

    def config(self):
        cfg = {"activation": self.activation}
        if self.activation == "leaky_relu":
            cfg["negative_slope"] = self.negative_slope
        return cfg


def _activation_layer(cls_name, activation, doc):
    def __init__(self):
        Activation.__init__(self, activation)

    def config(self):
        return {}

    return type(cls_name, (Activation,), {"__init__": __init__, "config": config, "__doc__": doc})


Identity = _activation_layer("Identity", "identity", "y = x.")
Step = _activation_layer("Step", "step", "Heaviside step: y = 1 if x > 0 else 0 (gradient 0).")
Sign = _activation_layer("Sign", "sign", "y = sign(x) (gradient 0).")
Sigmoid = _activation_layer("Sigmoid", "sigmoid", "y = 1 / (1 + exp(-x)).")
Tanh = _activation_layer("Tanh", "tanh", "y = tanh(x).")
ReLU = _activation_layer("ReLU", "relu", "y = max(x, 0).")
Softplus = _activation_layer("Softplus", "softplus", "y = log(1 + exp(x)).")


class LeakyReLU(Activation):
    """y = x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope=0.01):
        super().__init__("leaky_relu", negative_slope)

    def config(self):
        return {"negative_slope": self.negative_slope}


class Softmax(Layer):
    """Row-wise softmax over the last axis of (n, c) input.

    For classification, prefer raw logits with the ``softmax_cross_entropy``
    loss, which fuses the softmax and is stable; use this layer when the
    probabilities themselves are the output.
    """

    def forward(self, X, training=False):
        Y = self._buffer("Y", X.shape)
        self._k.softmax_forward(Y, X)
        self._Y = Y
        return Y

    def backward(self, dY, need_dx=True):
        if not need_dx:
            return None
        self._k.softmax_backward(dY, dY, self._Y)
        return dY

    def emit(self, b, x, scope):
        y = b.value(x.shape)
        b.record(spec.Op.SOFTMAX, x, y)
        return y


class Dropout(Layer):
    """Inverted dropout: in training, zero each input with probability p and
    scale the rest by 1 / (1 - p); the identity at inference.

    The masks come from a counter-based generator (Philox4x32-10, see
    ``reference.dropout_mask``) keyed by the layer's ``seed`` (drawn from the
    model's seed) and counted by ``calls``, its training forwards so far:
    the same masks on every backend, for any thread count, batch by batch
    or in a compiled epoch.
    """

    def __init__(self, p=0.5):
        super().__init__()
        self.p = _checks.check_scalar("p", p, low=0.0, high=1.0)
        if self.p == 1.0:
            raise ValueError("p: must be < 1 (p = 1 drops everything)")
        self.seed = int(np.random.default_rng().integers(2 ** 63))
        self.calls = 0

    def reseed(self, seed):
        """Key the masks by `seed` and restart their count (the model does
        this from its own seed)."""
        self.seed, self.calls = int(seed), 0

    def forward(self, X, training=False):
        self._active = training and self.p > 0.0
        if not self._active:
            return X
        Y = self._buffer("Y", X.shape)
        self._call = self.calls
        self.calls += 1
        self._k.dropout_forward(Y, X, p=self.p, seed=self.seed, counter=self._call)
        return Y

    def backward(self, dY, need_dx=True):
        if not need_dx:
            return None
        if self._active:
            self._k.dropout_backward(dY, dY, p=self.p, seed=self.seed, counter=self._call)
        return dY

    def emit(self, b, x, scope):
        if self.p == 0.0:
            return x
        y = b.value(x.shape)
        index = b.record(spec.Op.DROPOUT, x, y, seed=self.seed, counter=self.calls, p=self.p)
        b.dropouts.append((index, self))
        return y

    def config(self):
        return {"p": self.p}


for _cls in (Dense, Identity, Step, Sign, Sigmoid, Tanh, ReLU, LeakyReLU, Softplus, Softmax,
             Dropout, Activation):
    register(_cls)
