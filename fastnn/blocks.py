"""Batch normalisation and residual blocks: the answers to vanishing and
exploding gradients in deeper networks, together with ReLU, He
initialisation, gradient clipping and learning-rate schedules."""

import numpy as np

from .kernels import _checks, spec
from .plan import NotCompilable
from .layers import LAYERS, Dense, Layer, register


def _copy(dst, src):
    """dst[...] = src on any backend's arrays."""
    if isinstance(dst, np.ndarray):
        np.copyto(dst, src)
    else:
        dst.copy_to_device(src)


@register
class BatchNorm(Layer):
    """Batch normalisation over the last axis (features, or channels of
    channels-last images), as torch.nn.BatchNorm1d/2d.

    Training uses the batch statistics and updates the running ones
    (``running = (1 - momentum) * running + momentum * batch``, unbiased
    variance); inference uses the running statistics.  gamma and beta live in
    the model's parameter buffer, the running statistics in its buffer of
    non-trainable state (saved with the model).
    """

    def __init__(self, num_features, momentum=0.1, eps=1e-5):
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) \
                or num_features < 1:
            raise ValueError(f"num_features: expected a positive integer, got {num_features!r}")
        self.num_features = int(num_features)
        self.momentum = _checks.check_scalar("momentum", momentum, 0.0, 1.0)
        self.eps = _checks.check_scalar("eps", eps, low=0.0, low_open=True)

    def build(self, in_shape):
        if not in_shape or in_shape[-1] != self.num_features:
            raise ValueError(f"BatchNorm({self.num_features}): input has per-sample shape "
                             f"{tuple(in_shape)}, expected (..., {self.num_features})")
        self.values_per_sample = int(np.prod(in_shape[:-1]))  # per channel
        return tuple(in_shape)

    def param_shapes(self):
        return [("gamma", (self.num_features,)), ("beta", (self.num_features,))]

    def init_params(self, rng, views):
        views["gamma"][...] = 1.0
        views["beta"][...] = 0.0

    def buffer_shapes(self):
        return [("running_mean", (self.num_features,), 0.0),
                ("running_var", (self.num_features,), 1.0)]

    def bind(self, params, grads):
        super().bind(params, grads)
        self.gamma, self.beta = params["gamma"], params["beta"]

    def forward(self, X, training=False):
        Y = self._buffer("Y", X.shape)
        rm, rv = self.state_buffers["running_mean"], self.state_buffers["running_var"]
        self._training = training
        if training:
            self._mean = self._buffer("mean", (self.num_features,))
            self._invstd = self._buffer("invstd", (self.num_features,))
            self._k.batchnorm_forward(Y, X, self.gamma, self.beta, self._mean, self._invstd, rm,
                                      rv, momentum=self.momentum, eps=self.eps)
            self._X = X
        else:
            self._k.batchnorm_inference(Y, X, self.gamma, self.beta, rm, rv, eps=self.eps)
        return Y

    def backward(self, dY, need_dx=True):
        if not self._training:
            raise RuntimeError("BatchNorm.backward needs a forward with training=True")
        dX = self._buffer("dX", self._X.shape)
        self._k.batchnorm_backward(dX, self.grads["gamma"], self.grads["beta"], dY, self._X,
                                   self.gamma, self._mean, self._invstd)
        return dX

    def emit(self, b, x, scope):
        """A BATCHNORM record (mean and invstd at aux); it always writes a
        dx, so a first layer gets a scratch one."""
        if x.doff == -1:
            x = x._replace(doff=b.grad(x.shape))
        y = b.value(x.shape)
        b.record(spec.Op.BATCHNORM, x, y, param=scope.param("gamma"), bias=scope.param("beta"),
                 stat0=scope.state("running_mean"), stat1=scope.state("running_var"),
                 aux=_stats(b, self.num_features),
                 momentum=self.momentum, eps=self.eps)
        return y

    def config(self):
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps}


def _stats(b, c):
    """Workspace for a BatchNorm record's mean and invstd (2 c floats)."""
    off = b.ws
    b.ws = -(-(off + 2 * int(c)) // 16) * 16
    return off


@register
class Residual(Layer):
    """y = x + F(x), F the given layers; with a projection of x when F
    changes the shape: a Dense (no activation) for feature vectors, a 1x1
    Conv2D with the matching stride for images.

    Parameters live in the model's flat buffer like any layer's; the block
    names them "<index>.<name>" (index "proj" for the projection).
    """

    def __init__(self, *layers, projection=None):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Residual: needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}]: expected a fastnn layer, got {type(layer).__name__}")
        if projection is not None and not isinstance(projection, Layer):
            raise TypeError(f"projection: expected None or a fastnn layer, got "
                            f"{type(projection).__name__}")
        self.layers = list(layers)
        self.projection = projection

    def build(self, in_shape):
        shape = tuple(in_shape)
        for layer in self.layers:
            shape = tuple(layer.build(shape))
        if self.projection is None and shape != tuple(in_shape):
            self.projection = self._make_projection(tuple(in_shape), shape)
        if self.projection is not None:
            proj_out = tuple(self.projection.build(tuple(in_shape)))
            if proj_out != shape:
                raise ValueError(f"Residual: the projection gives {proj_out}, the block {shape}")
        self._in_shape, self._out_shape = tuple(in_shape), shape
        return shape

    @staticmethod
    def _make_projection(in_shape, out_shape):
        from .conv import Conv2D

        if len(in_shape) == 1 and len(out_shape) == 1:
            return Dense(in_shape[0], out_shape[0])
        if len(in_shape) == 3 and len(out_shape) == 3:
            (h, w, c), (oh, ow, oc) = in_shape, out_shape
            sh, sw = -(-h // oh), -(-w // ow)
            if (h - 1) // sh + 1 == oh and (w - 1) // sw + 1 == ow:
                return Conv2D(c, oc, 1, stride=(sh, sw))
        raise ValueError(f"Residual: no projection from {in_shape} to {out_shape}; pass one")

    def children(self):
        """The block's layers, then the projection if there is one."""
        return self.layers + ([self.projection] if self.projection is not None else [])

    def _named(self):
        """children() with the key that prefixes their tensor names."""
        keys = [str(i) for i in range(len(self.layers))] + ["proj"]
        return list(zip(keys, self.children()))

    def param_shapes(self):
        return [(f"{key}.{name}", shape) for key, layer in self._named()
                for name, shape in layer.param_shapes()]

    def buffer_shapes(self):
        return [(f"{key}.{name}", shape, value) for key, layer in self._named()
                for name, shape, value in layer.buffer_shapes()]

    @staticmethod
    def _split(views, key):
        prefix = key + "."
        return {name[len(prefix):]: v for name, v in views.items() if name.startswith(prefix)}

    def init_params(self, rng, views):
        for key, layer in self._named():
            layer.init_params(rng, self._split(views, key))

    def bind(self, params, grads):
        super().bind(params, grads)
        for key, layer in self._named():
            layer.bind(self._split(params, key), self._split(grads, key))

    def bind_buffers(self, views):
        for key, layer in self._named():
            layer.bind_buffers(self._split(views, key))

    def set_backend(self, module, dtype=np.float32):
        super().set_backend(module, dtype)
        for layer in self.children():
            layer.set_backend(module, dtype)

    def forward(self, X, training=False):
        h = X
        for layer in self.layers:
            h = layer.forward(h, training)
        skip = self.projection.forward(X, training) if self.projection is not None else X
        Y = self._buffer("Y", h.shape)
        _copy(Y, h)
        self._k.axpy(Y.reshape(-1), skip.reshape(-1), 1.0)
        return Y

    def backward(self, dY, need_dx=True):
        # sublayers may overwrite their dY in place: the skip path gets a copy
        dskip = self._buffer("dskip", dY.shape)
        _copy(dskip, dY)
        g = dY
        for i in range(len(self.layers) - 1, -1, -1):
            g = self.layers[i].backward(g, need_dx=(i > 0 or need_dx))
        if self.projection is not None:
            dskip = self.projection.backward(dskip, need_dx=need_dx)
        if not need_dx:
            return None
        self._k.axpy(g.reshape(-1), dskip.reshape(-1), 1.0)  # g is ours to overwrite
        return g

    def emit(self, b, x, scope):
        """FORK, the block's layers, the projection, ADD.

        Backward runs them in reverse: ADD hands its gradient to the last
        layer and a copy to the skip path; FORK, last, sums the two
        gradients of x (the layers' and the skip's)."""
        def emit_child(layer, key, v):
            emit = getattr(layer, "emit", None)
            if emit is None:
                raise NotCompilable(type(layer).__name__)
            return emit(b, v, scope.child(key))

        need_dx = x.doff != -1
        g_inner = b.grad(x.shape) if need_dx else -1
        g_skip = b.grad(x.shape) if need_dx else -1
        if need_dx:
            b.record(spec.Op.FORK, x, x._replace(off=-1, doff=g_inner), daux=g_skip)
        h = x._replace(doff=g_inner)
        for i, layer in enumerate(self.layers):
            h = emit_child(layer, str(i), h)
        if self.projection is not None:
            skip = emit_child(self.projection, "proj", x._replace(doff=g_skip))
        else:
            skip = x._replace(doff=g_skip)
        if h.doff == -1 or h.doff == x.doff:  # the layers are aliases of x
            raise NotCompilable("Residual of no computing layer")
        y = b.value(h.shape)._replace(doff=h.doff)  # ADD's dy is the layers' output grad
        b.record(spec.Op.ADD, h, y, aux=skip.off, daux=skip.doff)
        return y

    def config(self):
        cfg = {"layers": [{"type": type(layer).__name__, "config": layer.config()}
                          for layer in self.layers]}
        if self.projection is not None:
            cfg["projection"] = {"type": type(self.projection).__name__,
                                 "config": self.projection.config()}
        return cfg

    @classmethod
    def from_config(cls, cfg):
        def make(spec):
            kind = LAYERS.get(spec.get("type"))
            if kind is None:
                raise ValueError(f"unknown layer type {spec.get('type')!r}")
            return kind.from_config(spec.get("config", {}))

        proj = cfg.get("projection")
        return cls(*[make(spec) for spec in cfg.get("layers", [])],
                   projection=None if proj is None else make(proj))
