"""Sequential models over one flat parameter buffer.

All parameters of a model live in one contiguous buffer (``model.params``)
and all gradients in another of the same layout (``model.grads``); every
layer tensor is a view at a 64-byte aligned offset.  So an optimizer step is
one kernel call over the whole model, zeroing is one fill and saving is one
array.  Files are ``.npz`` archives holding the architecture as JSON and the
flat buffer; nothing is pickled.
"""

import json
import os
import tempfile

import numpy as np

from . import kernels
from . import blocks, conv  # noqa: F401 - registers their layers for load()
from .layers import (LAYERS, Activation, Dense, Layer, LeakyReLU, ReLU, Sigmoid, Sign, Softplus,
                     Step, Tanh)

_ALIGN = 16  # floats: 64 bytes
# activation layers that fold into a preceding Dense(activation=None)
_FOLDABLE = (Activation, Step, Sign, Sigmoid, Tanh, ReLU, LeakyReLU, Softplus)
_FORMAT = "fastnn-sequential-1"


def _aligned(n):
    return -(-n // _ALIGN) * _ALIGN


class Sequential:
    """A stack of layers trained as one.

    Parameters
    ----------
    layers : sequence of Layer
    seed : int or None
        Seeds initialisation (and dropout masks): the same seed gives the
        same model.
    backend : str or None
        Kernel backend (default: :func:`fastnn.get_backend`).  ``Trainer``
        moves the model to its own backend.
    dtype : float32 (default) or float64
        float64 is for gradient checks on the reference backend only.
    input_shape : tuple or None
        Per-sample input shape, e.g. (28, 28, 1) for channels-last images.
        Inferred when the first layer with parameters is a Dense;
        otherwise (a Conv1D/Conv2D or pooling first) the model is built
        from the first data it is given (Keras's deferred build: ``fit``,
        ``predict``, ``train_step``, ``evaluate`` or :meth:`build`), with
        the parameters the same seed gives an eagerly built model.

    Attributes
    ----------
    params, grads : 1-D arrays
        The flat parameter and gradient buffers (device arrays on cuda).
    buffers : 1-D array
        Non-trainable state (BatchNorm's running statistics), saved too.
    layers : list of Layer
    input_shape, output_shape : tuple
        Per-sample shapes.
    """

    def __init__(self, layers, seed=None, backend=None, dtype=np.float32, input_shape=None):
        layers = list(layers)
        if not layers:
            raise ValueError("layers: a model needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}]: expected a fastnn layer, got {type(layer).__name__}")
        self.layers = layers
        self.seed = seed
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        self.built = False
        self.backend = kernels.get_backend() if backend is None else backend
        if input_shape is None:
            try:
                input_shape = self._infer_input_shape()
            except ValueError:
                self.input_shape = None  # deferred: built by the first data (build_for)
                return
        self.build(input_shape)

    _UNBUILT = ("params", "grads", "buffers", "size", "n_parameters", "output_shape", "_layout",
                "_buffer_layout", "_k")

    def __getattr__(self, name):
        # (only called for attributes not set: those build sets)
        if name in Sequential._UNBUILT and not self.__dict__.get("built", True):
            raise RuntimeError(f"Sequential: {name} does not exist yet, the model is not built: "
                               "pass input_shape=... or give it data first (fit, predict, "
                               "build)")
        raise AttributeError(f"{type(self).__name__!s} object has no attribute {name!r}")

    def build_for(self, X):
        """Build a deferred model for the per-sample shape of data X (a
        no-op once built)."""
        if not self.built:
            shape = np.shape(X)
            if len(shape) < 2:
                raise ValueError(f"X: expected (n_samples, *input_shape) to build the model "
                                 f"from, got shape {shape}")
            self.build(shape[1:])
        return self

    def build(self, input_shape):
        """Build for per-sample inputs of `input_shape` (once): the layers'
        shapes, the flat buffers, the initial parameters."""
        if self.built:
            if tuple(input_shape) != self.input_shape:
                raise ValueError(f"input_shape: the model is built for {self.input_shape}, "
                                 f"not {tuple(input_shape)}")
            return self
        layers, seed, backend = self.layers, self.seed, self.backend
        self.input_shape = tuple(int(s) for s in input_shape)
        try:
            self._build(layers, seed, backend)
        except BaseException:
            self.input_shape = None if not self.built else self.input_shape
            raise
        self.built = True
        return self

    def _build(self, layers, seed, backend):
        shape = self.input_shape
        for layer in layers:
            shape = layer.build(shape)
        self.output_shape = tuple(shape)
        for layer, nxt in zip(layers, layers[1:]):  # Dense(...), ReLU(): init for relu
            if hasattr(layer, "_next_activation") and isinstance(nxt, Activation):
                layer._next_activation = nxt.activation

        # the flat layout: (layer index, name, shape, offset)
        self._layout, offset = [], 0
        for i, layer in enumerate(layers):
            for name, pshape in layer.param_shapes():
                self._layout.append((i, name, tuple(pshape), offset))
                offset = _aligned(offset + int(np.prod(pshape)))
        self.size = offset
        self.n_parameters = sum(int(np.prod(s)) for _, _, s, _ in self._layout)
        # non-trainable state, laid out the same way in its own buffer
        self._buffer_layout, offset, buffers = [], 0, []
        for i, layer in enumerate(layers):
            for name, bshape, value in layer.buffer_shapes():
                self._buffer_layout.append((i, name, tuple(bshape), offset))
                buffers.append((offset, int(np.prod(bshape)), value))
                offset = _aligned(offset + int(np.prod(bshape)))
        host_buffers = np.zeros(max(offset, 1), self.dtype)
        for off, size, value in buffers:
            host_buffers[off:off + size] = value

        rng = np.random.default_rng(seed)
        host = np.zeros(self.size, self.dtype)
        for i, layer in enumerate(layers):
            layer.init_params(rng, self._views(host, i))
        for layer in self.walk():
            if hasattr(layer, "reseed"):  # dropout masks follow the model's seed
                layer.reseed(int(rng.integers(2**63)))
        self.backend = None
        self._place(host, backend, host_buffers)

    def walk(self):
        """Every layer of the model, those inside blocks included.

        Yields
        ------
        Layer
            Depth first in model order: each layer, then (recursively) its
            ``children()``.
        """
        stack = self.layers[::-1]
        while stack:
            layer = stack.pop()
            yield layer
            stack += layer.children()[::-1]

    def penalized(self):
        """The (weight, weight_grad) pairs of every layer, nested ones included.

        Returns
        -------
        list of (array, array)
            ``layer.penalized()`` over :meth:`walk`: what the Trainer's
            ``l2`` applies to.
        """
        return [pair for layer in self.walk() for pair in layer.penalized()]

    def _infer_input_shape(self):
        for layer in self.layers:
            if hasattr(layer, "in_features"):
                return (layer.in_features,)
            if hasattr(layer, "input_shape_hint"):
                return layer.input_shape_hint()
            if layer.param_shapes():
                break
        raise ValueError("cannot infer the input shape: pass input_shape=(H, W, C) (or (L, C)) "
                         "when the first layer with parameters is not a Dense")

    def _views(self, flat, layer_index, layout=None):
        return {name: flat[off:off + int(np.prod(shape))].reshape(shape)
                for i, name, shape, off in (self._layout if layout is None else layout)
                if i == layer_index}

    def _place(self, host_params, backend, host_buffers):
        """Put parameters and buffers (host arrays) on `backend`; rebind views."""
        k = kernels.get(backend)
        if self.dtype != np.float32 and backend != "reference":
            raise TypeError(f"dtype float64 models run on the reference backend only, not {backend!r}")
        self._k = k
        self.backend = backend
        self.params = k.asarray(host_params, self.dtype)
        self.grads = k.zeros(self.size, self.dtype)
        self.buffers = k.asarray(host_buffers, self.dtype)
        for i, layer in enumerate(self.layers):
            layer.set_backend(k, self.dtype)
            layer.bind(self._views(self.params, i), self._views(self.grads, i))
            layer.bind_buffers(self._views(self.buffers, i, self._buffer_layout))

    def to(self, backend):
        """Move parameters and buffers to `backend`; returns self."""
        if not self.built:  # (checked now; placed when built)
            kernels.get(backend)
            self.backend = backend
        elif backend != self.backend:
            self._place(self.get_params(), backend, self.get_buffers())
        return self

    def get_buffers(self):
        """A host copy of the non-trainable state buffer."""
        return np.array(self._k.to_numpy(self.buffers), dtype=self.dtype, copy=True)

    def get_params(self):
        """A host copy of the flat parameter buffer."""
        return np.array(self._k.to_numpy(self.params), dtype=self.dtype, copy=True)

    def set_params(self, flat):
        """Load a flat parameter vector (host array of length ``size``)."""
        flat = np.asarray(flat)
        if flat.shape != (self.size,):
            raise ValueError(f"flat: expected shape ({self.size},), got {flat.shape}")
        if isinstance(self.params, np.ndarray):
            self.params[...] = flat  # in place: views held by users stay valid
        else:
            self.params.copy_to_device(np.ascontiguousarray(flat, self.dtype))

    def set_buffers(self, flat):
        """Load the non-trainable state (host array like ``get_buffers()``)."""
        flat = np.asarray(flat)
        if flat.shape != tuple(self.buffers.shape):
            raise ValueError(f"flat: expected shape {tuple(self.buffers.shape)}, got {flat.shape}")
        if isinstance(self.buffers, np.ndarray):
            self.buffers[...] = flat
        else:
            self.buffers.copy_to_device(np.ascontiguousarray(flat, self.dtype))

    def dense_stack(self):
        """The model as dense_stack_epoch's layer list, or None.

        A model qualifies if it is Dense layers, each optionally followed by
        one activation layer (folded into the Dense, which is the same
        function), Identity layers, or Dropout(0).
        """
        from .layers import Dropout, Identity

        stack = []
        offsets = {(i, name): off for i, name, _, off in self._layout}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dense):
                stack.append([layer.in_features, layer.out_features, offsets[(i, "weight")],
                              offsets[(i, "bias")], layer.activation, layer.negative_slope])
            elif isinstance(layer, Identity) or (isinstance(layer, Dropout) and layer.p == 0):
                continue
            elif (type(layer) in _FOLDABLE and stack and stack[-1][4] == "identity"
                    and isinstance(self.layers[i - 1], Dense)):
                stack[-1][4], stack[-1][5] = layer.activation, layer.negative_slope
            else:
                return None
        return [tuple(layer) for layer in stack] or None

    # ---- computation ----------------------------------------------------------

    def _check_input(self, X):
        from .trainer import check_X  # the one input validator

        self.build_for(X)
        return check_X(X, self.input_shape, self.dtype)

    def forward(self, X, training=False):
        """Run the layers on a batch; returns the last layer's output buffer.

        The returned array belongs to the model and is overwritten by the next
        call; copy it to keep it.  X must already be a backend array of the
        model's dtype (``predict`` accepts anything).
        """
        for layer in self.layers:
            X = layer.forward(X, training)
        return X

    def backward(self, dY, input_grad=False):
        """Backpropagate the gradient of the loss w.r.t. the output.

        Fills ``model.grads`` (overwriting it) and returns the gradient
        w.r.t. the input if ``input_grad``.  dY is overwritten.
        """
        last = len(self.layers) - 1
        for i in range(last, -1, -1):
            dY = self.layers[i].backward(dY, need_dx=(i > 0 or input_grad))
        return dY

    def predict(self, X, batch_size=1024):
        """Raw outputs for X (host numpy array), computed in chunks."""
        X = self._check_input(X)
        out = np.empty((X.shape[0],) + self.output_shape, self.dtype)
        for start in range(0, X.shape[0], batch_size):
            xb = self._k.asarray(X[start:start + batch_size], self.dtype)
            out[start:start + batch_size] = self._k.to_numpy(self.forward(xb))
        return out

    __call__ = predict

    # ---- persistence --------------------------------------------------------

    def config(self):
        if not self.built:
            raise RuntimeError("Sequential: not built yet (pass input_shape=... or give it data "
                               "first)")
        return {"format": _FORMAT, "seed": self.seed, "size": self.size,
                "input_shape": list(self.input_shape),
                "layers": [{"type": type(layer).__name__, "config": layer.config()}
                           for layer in self.layers]}

    def save(self, path):
        """Write architecture (JSON) and parameters to an .npz file.

        Written to a temporary file in the same folder and renamed, so a
        crash never leaves a half-written model behind.
        """
        atomic_savez(path, **self._arrays())

    def _arrays(self):
        """What save writes: the architecture (JSON) and the two buffers."""
        return {"architecture": np.array(json.dumps(self.config())),
                "params": self.get_params().astype(np.float32),
                "buffers": self.get_buffers().astype(np.float32)}

    def summary(self):
        if not self.built:
            return (f"Sequential: not built (its input shape comes with the first data), "
                    f"{len(self.layers)} layers")
        lines = [f"Sequential: {self.n_parameters} parameters, backend {self.backend}"]
        lines += [f"  {i}: {layer!r}" for i, layer in enumerate(self.layers)]
        return "\n".join(lines)

    def __repr__(self):
        return self.summary()


def atomic_savez(path, **arrays):
    """np.savez of `arrays` to `path` through a temporary file in the same
    folder and a rename, so a crash never leaves a half-written file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fastnn-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_npz(path, what, expected):
    """{name: array} of an .npz archive holding exactly the arrays
    `expected` (a set; a callable of the names also works), strings
    decoded; ValueError naming `what` for anything else (nothing is
    unpickled)."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            files = set(archive.files)
            ok = expected(files) if callable(expected) else files == set(expected)
            arrays = {name: archive[name] for name in files} if ok else None
    except Exception as exc:  # BadZipFile, EOFError, pickle refusal, truncation
        raise ValueError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") \
            from exc
    if arrays is None:
        raise ValueError(f"{path}: not a {what} (arrays {sorted(files)})")
    return arrays


def load(path, backend=None):
    """Load a model written by :meth:`Sequential.save`.

    Raises ValueError for a file that is not a fastnn model, is truncated or
    whose parameters do not match its architecture.  Nothing is unpickled.
    """
    arrays = read_npz(path, "fastnn model", {"architecture", "params", "buffers"})
    return from_arrays(path, arrays, backend)


def from_arrays(path, arrays, backend=None):
    """The model of a saved archive's architecture/params/buffers arrays."""
    path = os.fspath(path)
    try:
        cfg = json.loads(str(arrays["architecture"]))
    except ValueError as exc:
        raise ValueError(f"{path}: not a readable fastnn model (bad architecture JSON: "
                         f"{exc})") from exc
    params, buffers = arrays["params"], arrays["buffers"]
    if not isinstance(cfg, dict) or cfg.get("format") != _FORMAT:
        found = cfg.get("format") if isinstance(cfg, dict) else None
        raise ValueError(f"{path}: not a fastnn model (format {found!r})")
    layers = []
    for i, spec in enumerate(cfg.get("layers", [])):
        cls = LAYERS.get(spec.get("type"))
        if cls is None:
            raise ValueError(f"{path}: layer {i} has unknown type {spec.get('type')!r}")
        try:
            layers.append(cls.from_config(spec.get("config", {})))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: layer {i} ({spec.get('type')}): {exc}") from exc
    try:
        model = Sequential(layers, seed=cfg.get("seed"), backend=backend,
                           input_shape=cfg.get("input_shape"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: inconsistent architecture: {exc}") from exc
    if params.dtype != np.float32 or params.shape != (model.size,):
        raise ValueError(f"{path}: parameter buffer has shape {params.shape} and dtype "
                         f"{params.dtype}, the architecture needs ({model.size},) float32")
    if not np.all(np.isfinite(params)):
        raise ValueError(f"{path}: parameter buffer holds NaN or Inf")
    if buffers.shape != tuple(model.buffers.shape):
        raise ValueError(f"{path}: state buffer has shape {buffers.shape}, the architecture "
                         f"needs {tuple(model.buffers.shape)}")
    model.set_params(params)
    model.set_buffers(buffers)
    return model
