"""Sequential models over one flat parameter buffer.

All parameters of a model live in one contiguous buffer (``model.params``)
and all gradients in another of the same layout (``model.grads``); every
layer tensor is a view at a 64-byte aligned offset.  So an optimizer step is
one kernel call over the whole model, zeroing is one fill and saving is one
array.  Files are ``.npz`` archives holding the architecture as JSON and the
flat buffer; nothing is pickled.
"""

import json
import math
import os
import re
import tempfile
import weakref

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

    def __init__(self, layers, seed=None, backend=None, dtype=np.float32, input_shape=None,
                 _expect_sizes=None):
        if isinstance(layers, Layer) or not hasattr(layers, "__iter__"):
            raise TypeError(f"layers: expected a list of fastnn layers, got {type(layers).__name__}")
        layers = list(layers)
        if not layers:
            raise ValueError("layers: a model needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}]: expected a fastnn layer, got {type(layer).__name__}")
        self.layers = layers
        self._claim_layers()
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
        self.build(input_shape, _expect_sizes=_expect_sizes)

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

    def build(self, input_shape, _expect_sizes=None):
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
            self._build(layers, seed, backend, _expect_sizes)
        except BaseException:
            self.input_shape = None if not self.built else self.input_shape
            raise
        self.built = True
        return self

    def _build(self, layers, seed, backend, expect=None):
        # expect: load's (params, buffers) sizes from the file, compared before allocating
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
        self.n_parameters = sum(math.prod(s) for _, _, s, _ in self._layout)
        # non-trainable state, laid out the same way in its own buffer
        self._buffer_layout, offset, buffers = [], 0, []
        for i, layer in enumerate(layers):
            for name, bshape, value in layer.buffer_shapes():
                self._buffer_layout.append((i, name, tuple(bshape), offset))
                buffers.append((offset, int(np.prod(bshape)), value))
                offset = _aligned(offset + int(np.prod(bshape)))
        if expect is not None and expect != (self.size, max(offset, 1)):
            # load(): the file's buffers must match before anything is allocated
            raise ValueError(f"the architecture needs a parameter buffer of {self.size} and a "
                             f"state buffer of {max(offset, 1)} floats, the file holds "
                             f"{expect[0]} and {expect[1]}")
        if self.size >= 2 ** 62:
            raise ValueError(f"layers: {self.size} parameters overflow a buffer's size")
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
        for layer in self.walk():  # (only once the model is complete)
            layer._owner = weakref.ref(self)

    def _claim_layers(self):
        """Each layer belongs to one model: its tensors are views into that
        model's buffers, so a layer of a live model (or one listed twice)
        is refused rather than silently re-pointed at this model's."""
        seen = set()
        for layer in self.walk():
            if id(layer) in seen:
                raise ValueError(f"layers: {type(layer).__name__} appears twice in the model; "
                                 "build a new layer for each position")
            seen.add(id(layer))
            owner = getattr(layer, "_owner", None)
            owner = owner() if owner is not None else None
            if owner is not None and owner is not self:
                raise ValueError(f"layers: this {type(layer).__name__} already belongs to another "
                                 "model (its weights are views into that model's buffer); build "
                                 "a new layer, or copy.deepcopy(model) to copy a model")

    def __deepcopy__(self, memo):
        import copy

        cls = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        for layer in self.walk():  # the backends (modules) are shared, not copied
            memo[id(layer._k)] = layer._k
        memo[id(self._k)] = self._k
        for key, value in self.__dict__.items():
            setattr(new, key, copy.deepcopy(value, memo))
        for layer in new.walk():  # the copies are the copy's
            layer._owner = weakref.ref(new)
        if new.built:  # deepcopy copies each view on its own: bind the layers to the copy's buffers
            new._place(new.get_params(), new.backend, new.get_buffers())
        return new

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
        return [pair for layer, frozen in self._walk_frozen() if not frozen
                for pair in layer.penalized()]

    def _walk_frozen(self):
        """(layer, frozen) over :meth:`walk`: frozen when the layer or a
        block holding it has ``trainable = False``."""
        stack = [(layer, False) for layer in self.layers[::-1]]
        while stack:
            layer, outer = stack.pop()
            frozen = outer or not layer.trainable
            yield layer, frozen
            stack += [(child, frozen) for child in layer.children()[::-1]]

    # ---- frozen layers --------------------------------------------------------

    def _resolve_layers(self, layers):
        found = {id(layer) for layer in self.walk()}
        out = []
        for item in layers:
            if isinstance(item, (list, tuple)):
                out += self._resolve_layers(item)
            elif isinstance(item, Layer):
                if id(item) not in found:
                    raise ValueError(f"layers: {item!r} is not a layer of this model")
                out.append(item)
            elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                if not -len(self.layers) <= item < len(self.layers):
                    raise ValueError(f"layers: index {item} out of range for "
                                     f"{len(self.layers)} layers")
                out.append(self.layers[item])
            elif isinstance(item, slice):
                out += self.layers[item]
            else:
                raise TypeError(f"layers: expected layers, indices or slices, got "
                                f"{type(item).__name__}")
        return out

    def freeze(self, *layers):
        """Freeze layers (``layer.trainable = False``): training no longer
        changes their parameters nor those parameters' optimizer state, on
        every path (batch by batch and compiled, every backend).

        Parameters
        ----------
        *layers : Layer, int index, slice, or lists of them
            None given: every layer.  A block freezes the layers inside it.

        Returns self.
        """
        for layer in (self._resolve_layers(layers) if layers else self.layers):
            layer.trainable = False
        return self

    def unfreeze(self, *layers):
        """Make layers trainable again (none given: every layer, nested
        ones included).  Returns self."""
        targets = self._resolve_layers(layers) if layers else list(self.walk())
        for layer in targets:
            layer.trainable = True
            for child in _descendants(layer):
                child.trainable = True
        return self

    def _frozen_params(self):
        """For each entry of the layout, whether its layer is frozen."""
        frozen = []
        for i, name, _, _ in self._layout:
            layer = self.layers[i]
            is_frozen = not layer.trainable
            while not is_frozen and "." in name and hasattr(layer, "_named"):
                key, name = name.split(".", 1)
                layer = dict(layer._named())[key]
                is_frozen = not layer.trainable
            frozen.append(is_frozen)
        return frozen

    def trainable_ranges(self):
        """The (offset, size) ranges of the parameter buffer that training
        updates, as an (k, 2) int64 array (adjacent trainable tensors merged);
        None when no layer is frozen (the whole buffer).  Raises ValueError
        when every parameter is frozen."""
        frozen = self._frozen_params()
        if not any(frozen):
            return None
        ranges = []
        for (_, _, shape, off), fz in zip(self._layout, frozen):
            if fz:
                continue
            end = off + int(np.prod(shape))
            if ranges and _aligned(ranges[-1][1]) == off:  # only padding between
                ranges[-1][1] = end
            else:
                ranges.append([off, end])
        if not ranges:
            raise ValueError("every layer of the model is frozen: nothing to train "
                             "(model.unfreeze(...) some)")
        return np.array([(lo, hi - lo) for lo, hi in ranges], dtype=np.int64)

    @property
    def n_trainable(self):
        """Parameters that training updates (frozen layers' excluded)."""
        return sum(int(np.prod(shape)) for (_, _, shape, _), fz
                   in zip(self._layout, self._frozen_params()) if not fz)

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
        flat = self._check_flat(flat, (self.size,), finite=False)
        if isinstance(self.params, np.ndarray):
            self.params[...] = flat  # in place: views held by users stay valid
        else:
            self.params.copy_to_device(np.ascontiguousarray(flat, self.dtype))

    def set_buffers(self, flat):
        """Load the non-trainable state (host array like ``get_buffers()``):
        finite, and every running variance >= 0."""
        flat = self._check_flat(flat, tuple(self.buffers.shape))
        for i, name, shape, off in self._buffer_layout:
            values = flat[off:off + math.prod(shape)]
            if "var" in name and not np.all(values >= 0):
                raise ValueError(f"flat: {name} of layer {i} ({type(self.layers[i]).__name__}) "
                                 "must be >= 0 (a variance)")
        if isinstance(self.buffers, np.ndarray):
            self.buffers[...] = flat
        else:
            self.buffers.copy_to_device(np.ascontiguousarray(flat, self.dtype))

    def _check_flat(self, flat, shape, finite=True):
        try:
            flat = np.asarray(flat)
        except Exception as exc:  # noqa: BLE001 - ragged input and the like
            raise TypeError(f"flat: cannot convert to an array ({exc})") from exc
        if flat.dtype.kind not in "fiu":
            raise TypeError(f"flat: expected numbers, got dtype {flat.dtype}")
        if flat.shape != shape:
            raise ValueError(f"flat: expected shape {shape}, got {flat.shape}")
        if finite and flat.dtype.kind == "f" and not np.all(np.isfinite(flat)):
            raise ValueError("flat: holds NaN or Inf")
        return flat

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
        """Raw outputs for X (host numpy array), computed in chunks of
        `batch_size` rows (an integer >= 1)."""
        if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        batch_size = int(min(batch_size, 2 ** 62))
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
        cfg = {"format": _FORMAT, "seed": self.seed, "size": self.size,
               "input_shape": list(self.input_shape),
               "layers": [{"type": type(layer).__name__, "config": layer.config()}
                          for layer in self.layers]}
        frozen = [i for i, layer in enumerate(self.walk()) if not layer.trainable]
        if frozen:  # positions in walk() order of the layers with trainable = False
            cfg["frozen"] = frozen
        return cfg

    def save(self, path):
        """Write architecture (JSON) and parameters to an .npz file.

        Written to a temporary file ``.fastnn-<pid>-*.npz`` in the same
        folder and renamed, so a crash never leaves a half-written model
        behind; a save also removes the temporaries of processes that died
        (kill -9) in the middle of one.  The file's mode honours the umask,
        as open() would.
        """
        atomic_savez(path, **self._arrays())

    def _arrays(self):
        """What save writes: the architecture (JSON) and the two buffers."""
        return {"architecture": np.array(json.dumps(self.config())),
                "params": self.get_params().astype(np.float32),
                "buffers": self.get_buffers().astype(np.float32)}

    def summary(self, print_fn=None):
        """A Keras-style table: per layer its name (type), output shape
        (batch axis None) and parameter count, the layers inside blocks
        indented under them, then the totals.

        "Trainable params" are what training updates; "Non-trainable
        params" the frozen layers' parameters plus the non-trainable state
        (BatchNorm's running mean and variance), as Keras counts them.

        Parameters
        ----------
        print_fn : callable or None
            Called with the table (one string); None: returned only.

        Returns
        -------
        str
        """
        if not self.built:
            text = (f"Sequential: not built (its input shape comes with the first data), "
                    f"{len(self.layers)} layers")
            if print_fn is not None:
                print_fn(text)
            return text
        counts, rows = {}, []
        frozen = dict((id(layer), fz) for layer, fz in self._walk_frozen())

        def name_of(layer):
            cls = type(layer).__name__  # Keras's names: Conv2D -> conv2d, ReLU -> re_lu
            base = "".join("_" + c.lower() if c.isupper() and i and cls[i - 1].islower()
                           else c.lower() for i, c in enumerate(cls))
            n = counts.get(base, 0)
            counts[base] = n + 1
            return base if n == 0 else f"{base}_{n}"

        def n_params(layer):
            return sum(int(np.prod(s)) for _, s in layer.param_shapes())

        def visit(layer, shape, depth):
            try:
                out = tuple(layer.build(shape))
            except Exception:  # a custom layer that cannot be rebuilt here
                out = None
            label = "  " * depth + f"{name_of(layer)} ({type(layer).__name__})"
            if frozen.get(id(layer)):
                label += " [frozen]"
            shown = "?" if out is None else str((None,) + out).replace(",)", ")")
            rows.append((label, shown, n_params(layer)))
            if isinstance(layer, blocks.Residual):
                inner = shape
                for child in layer.layers:
                    inner = visit(child, inner, depth + 1)
                if layer.projection is not None:
                    visit(layer.projection, shape, depth + 1)
            return out

        shape = tuple(self.input_shape)
        for layer in self.layers:
            shape = visit(layer, shape, 0) or shape
        states = sum(int(np.prod(s)) for _, _, s, _ in self._buffer_layout)
        trainable = self.n_trainable
        w0 = max([len("Layer (type)")] + [len(r[0]) for r in rows]) + 2
        w1 = max([len("Output Shape")] + [len(r[1]) for r in rows]) + 2
        width = w0 + w1 + 12
        lines = [f'Model: "sequential" (backend {self.backend})', "_" * width,
                 f"{'Layer (type)':<{w0}}{'Output Shape':<{w1}}{'Param #':>10}", "=" * width]
        lines += [f"{a:<{w0}}{b:<{w1}}{c:>10,}" for a, b, c in rows]
        lines += ["=" * width,
                  f"Total params: {self.n_parameters + states:,}",
                  f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {self.n_parameters - trainable + states:,}",
                  "_" * width]
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    def __repr__(self):
        if not self.built:
            return f"Sequential({len(self.layers)} layers, not built, backend {self.backend!r})"
        return (f"Sequential({len(self.layers)} layers, {self.n_parameters:,} parameters, "
                f"backend {self.backend!r})")


def _descendants(layer):
    stack = list(layer.children())
    while stack:
        child = stack.pop()
        yield child
        stack += child.children()


def _umask():
    """The process's umask, read without changing it where Linux tells it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_TEMPORARY = re.compile(r"\.fastnn-(\d+)-\w+\.npz$")


def _remove_stale_temporaries(folder):
    """Remove the save temporaries in `folder` whose process is gone."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = _TEMPORARY.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass
        except (PermissionError, OverflowError):  # alive (someone else's), or not a pid
            pass


def atomic_savez(path, **arrays):
    """np.savez of `arrays` to `path` through a temporary file
    ``.fastnn-<pid>-*.npz`` in the same folder and a rename, so a crash never
    leaves a half-written file; the temporaries of processes that died (kill
    -9) in the middle of a save are removed; the file's mode honours the
    umask, as open() would."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a directory, not a file name")
    folder = os.path.dirname(os.path.abspath(path))
    _remove_stale_temporaries(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".fastnn-{os.getpid()}-", suffix=".npz")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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
    except (ValueError, RecursionError) as exc:  # (RecursionError: a crafted, deeply nested file)
        raise ValueError(f"{path}: not a readable fastnn model (bad architecture JSON: "
                         f"{exc})") from exc
    params, buffers = arrays["params"], arrays["buffers"]
    if not isinstance(cfg, dict) or cfg.get("format") != _FORMAT:
        found = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise ValueError(f"{path}: not a fastnn model (format {found!r})")
    specs = cfg.get("layers")
    if not isinstance(specs, list):
        raise ValueError(f"{path}: 'layers' must be a list, got {type(specs).__name__}")
    shape = cfg.get("input_shape")
    if shape is not None and (not isinstance(shape, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
        raise ValueError(f"{path}: 'input_shape' must be a list of positive integers, got {shape!r}")
    seed = cfg.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise ValueError(f"{path}: 'seed' must be null or an integer >= 0, got {seed!r}")
    for name, arr in (("params", params), ("buffers", buffers)):
        if arr.dtype != np.float32 or arr.ndim != 1:
            raise ValueError(f"{path}: the {name} array must be 1-D float32, got {arr.dtype} of "
                             f"shape {arr.shape}")
    layers = []
    for i, spec in enumerate(specs):
        kind = spec.get("type") if isinstance(spec, dict) else None
        cls = LAYERS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ValueError(f"{path}: layer {i} has unknown type {kind!r}")
        config = spec.get("config", {})
        if not isinstance(config, dict):
            raise ValueError(f"{path}: layer {i} ({kind}): 'config' must be an object")
        try:
            layers.append(cls.from_config(config))
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            raise ValueError(f"{path}: layer {i} ({kind}): {exc}") from exc
    try:
        # the sizes are compared with the file's arrays before any allocation,
        # so a crafted architecture cannot ask for many GiB
        model = Sequential(layers, seed=seed, backend=backend, input_shape=shape,
                           _expect_sizes=(params.shape[0], buffers.shape[0]))
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        raise ValueError(f"{path}: inconsistent architecture: {exc}") from exc
    if not np.all(np.isfinite(params)):
        raise ValueError(f"{path}: parameter buffer holds NaN or Inf")
    if buffers.shape != tuple(model.buffers.shape):
        raise ValueError(f"{path}: state buffer has shape {buffers.shape}, the architecture "
                         f"needs {tuple(model.buffers.shape)}")
    frozen = cfg.get("frozen", [])
    walked = list(model.walk())
    if not isinstance(frozen, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(walked)
            for i in frozen):
        raise ValueError(f"{path}: 'frozen' must list layer positions below {len(walked)}")
    for i in frozen:
        walked[i].trainable = False
    model.set_params(params)
    try:
        model.set_buffers(buffers)
    except ValueError as exc:
        raise ValueError(f"{path}: state buffer: {exc}") from exc
    return model
