"""Convolution and pooling layers on channels-last data.

Images are (N, H, W, C) and signals (N, L, C), as the kernels want them
(the channel axis contiguous).  A 1-D layer is its 2-D kernel on (N, 1, L, C)
views: the same code, a window of height 1.  Convolutions are im2col + the
project's GEMM with the bias and activation in its epilogue; the im2col
matrix is a buffer of the layer, reused by the backward.
"""

import numpy as np

from .kernels import _checks, spec
from .plan import hwc
from .layers import Layer, _Affine, register


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


@register
class Conv2D(_Affine):
    """2-D convolution of (N, H, W, C) images (channels last).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding : int or (h, w)
        Zero padding; output size (H + 2 p - k) // s + 1 per axis.
    activation : str or None
        Fused into the convolution (see Dense).
    init : str
        As Dense; fans are computed as torch does (fan_in = KH*KW*C).

    Attributes
    ----------
    weight : (KH, KW, C, OC) view into the model's parameter buffer
    bias : (OC,)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 activation=None, init="auto", negative_slope=0.01):
        self.in_channels = _positive("in_channels", in_channels)
        self.out_channels = _positive("out_channels", out_channels)
        self.kernel_size = _checks._pair("kernel_size", kernel_size, 1)
        self.stride = _checks._pair("stride", stride, 1)
        self.padding = _checks._pair("padding", padding, 0)
        if any(p >= k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"padding: must be smaller than kernel_size {self.kernel_size}, "
                             f"got {self.padding}")
        super().__init__(activation, init, negative_slope)

    def _weight_shape(self):
        return self.kernel_size + (self.in_channels, self.out_channels)

    def build(self, in_shape):
        if len(in_shape) != 3 or in_shape[2] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: input has per-sample shape {tuple(in_shape)}, "
                             f"expected (H, W, {self.in_channels})")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        oh = _checks.conv_output_size(in_shape[0], kh, sh, ph)
        ow = _checks.conv_output_size(in_shape[1], kw, sw, pw)
        if oh < 1 or ow < 1:
            raise ValueError(f"{type(self).__name__}: input {tuple(in_shape[:2])} is smaller than "
                             f"the kernel {self.kernel_size} with padding {self.padding}")
        self._in_shape, self._out_shape = tuple(in_shape), (oh, ow, self.out_channels)
        return self._out_shape

    def param_shapes(self):
        return [("weight", self._weight_shape()), ("bias", (self.out_channels,))]

    def _fans(self):
        kh, kw = self.kernel_size
        return kh * kw * self.in_channels, kh * kw * self.out_channels

    def _kernel_args(self):
        return dict(stride=self.stride, padding=self.padding, activation=self.activation,
                    negative_slope=self.negative_slope)

    def _as4d(self, a):
        return a  # Conv1D views (N, L, C) as (N, 1, L, C)

    def _w4d(self, w):
        return w

    def forward(self, X, training=False):
        n = X.shape[0]
        oh, ow, oc = self._out_shape
        kh, kw = self.kernel_size
        X4 = self._as4d(X)
        Y = self._buffer("Y", (n, oh, ow, oc))
        cols = self._buffer("cols", (n * oh * ow, kh * kw * self.in_channels))
        self._k.conv2d_forward(Y, X4, self._w4d(self.weight), self.bias, cols,
                               **self._kernel_args())
        self._X, self._Y = X4, Y
        return self._out(Y)

    def _out(self, Y):
        return Y

    def backward(self, dY, need_dx=True):
        dY = self._as4d(dY)
        dX = self._buffer("dX", self._X.shape) if need_dx else None
        self._k.conv2d_backward(dX, self._w4d(self.weight_grad), self.bias_grad, dY, dY, self._X,
                                self._w4d(self.weight), self._Y, self._buffers["cols"],
                                **self._kernel_args())
        return None if dX is None else dX.reshape((dX.shape[0],) + self._in_shape)

    def emit(self, b, x, scope):
        """Plan records: one CONV2D (the activation fused, im2col at aux)."""
        oh, ow, oc = self._out_shape
        kh, kw = self.kernel_size
        y = b.value(self.build_output_shape())
        b.record(spec.Op.CONV2D, x, y, param=scope.param("weight"), bias=scope.param("bias"),
                 aux=b.floats(oh * ow * kh * kw * self.in_channels), kh=kh, kw=kw,
                 sh=self.stride[0], sw=self.stride[1], ph=self.padding[0], pw=self.padding[1],
                 act=spec.activation_code(self.activation), slope=self.negative_slope)
        b.penalize(scope.param("weight"), kh * kw * self.in_channels * self.out_channels)
        return y

    def build_output_shape(self):
        """The per-sample output shape build() returned."""
        return self._out_shape

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "activation": self.activation,
                "init": self.init, "negative_slope": self.negative_slope}


@register
class Conv1D(Conv2D):
    """1-D convolution of (N, L, C) signals (channels last): Conv2D with a
    window of height 1.  weight is (K, C, OC)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 activation=None, init="auto", negative_slope=0.01):
        k, s = _positive("kernel_size", kernel_size), _positive("stride", stride)
        if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"padding: expected an integer >= 0, got {padding!r}")
        super().__init__(in_channels, out_channels, (1, k), (1, s), (0, int(padding)),
                         activation, init, negative_slope)

    def build(self, in_shape):
        if len(in_shape) != 2:
            raise ValueError(f"Conv1D: input has per-sample shape {tuple(in_shape)}, expected "
                             f"(L, {self.in_channels})")
        oh, ow, oc = super().build((1,) + tuple(in_shape))
        self._in_shape = tuple(in_shape)
        return (ow, oc)

    def _weight_shape(self):
        return (self.kernel_size[1], self.in_channels, self.out_channels)

    def build_output_shape(self):
        return self._out_shape[1:]

    def _as4d(self, a):
        return a.reshape((a.shape[0], 1) + tuple(a.shape[1:])) if len(a.shape) == 3 else a

    def _w4d(self, w):
        return w.reshape((1,) + tuple(w.shape))

    def _out(self, Y):
        return Y.reshape((Y.shape[0], Y.shape[2], Y.shape[3]))

    def config(self):
        cfg = super().config()
        cfg.update(kernel_size=self.kernel_size[1], stride=self.stride[1], padding=self.padding[1])
        return cfg


class _Pool2D(Layer):
    """Max or average pooling over (N, H, W, C), no padding."""

    _kind = None

    def __init__(self, pool_size=2, stride=None):
        super().__init__()
        self.pool_size = _checks._pair("pool_size", pool_size, 1)
        self.stride = self.pool_size if stride is None else _checks._pair("stride", stride, 1)

    def build(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"{type(self).__name__}: input has per-sample shape {tuple(in_shape)}, "
                             "expected (H, W, C)")
        (kh, kw), (sh, sw) = self.pool_size, self.stride
        oh = _checks.conv_output_size(in_shape[0], kh, sh, 0)
        ow = _checks.conv_output_size(in_shape[1], kw, sw, 0)
        if oh < 1 or ow < 1:
            raise ValueError(f"{type(self).__name__}: input {tuple(in_shape[:2])} is smaller than "
                             f"the pool {self.pool_size}")
        self._in_shape, self._out_shape = tuple(in_shape), (oh, ow, in_shape[2])
        return self._out_shape

    def _as4d(self, a):
        return a

    def forward(self, X, training=False):
        X4 = self._as4d(X)
        Y = self._buffer("Y", (X4.shape[0],) + self._out4())
        if self._kind == "max":
            self._argmax = self._buffer_int("argmax", Y.shape)
            self._k.maxpool2d_forward(Y, X4, self._argmax, pool=self.pool_size, stride=self.stride)
        else:
            self._k.avgpool2d_forward(Y, X4, pool=self.pool_size, stride=self.stride)
        self._n = X4.shape[0]
        return Y.reshape((Y.shape[0],) + self._out_shape)

    def _out4(self):
        return self._out_shape

    def _in4(self):
        return self._in_shape

    def backward(self, dY, need_dx=True):
        if not need_dx:
            return None
        dY4 = dY.reshape((self._n,) + self._out4())
        dX = self._buffer("dX", (self._n,) + self._in4())
        if self._kind == "max":
            self._k.maxpool2d_backward(dX, dY4, self._argmax, pool=self.pool_size, stride=self.stride)
        else:
            self._k.avgpool2d_backward(dX, dY4, pool=self.pool_size, stride=self.stride)
        return dX.reshape((self._n,) + self._in_shape)

    def emit(self, b, x, scope):
        y = b.value(self._out_shape)
        op = spec.Op.MAXPOOL2D if self._kind == "max" else spec.Op.AVGPOOL2D
        oh, ow, c = hwc(self._out_shape)
        extra = {"iaux": b.ints(oh * ow * c)} if self._kind == "max" else {}
        b.record(op, x, y, kh=self.pool_size[0], kw=self.pool_size[1], sh=self.stride[0],
                 sw=self.stride[1], **extra)
        return y

    def _buffer_int(self, key, shape):
        buf = self._buffers.get(key)
        if buf is None or tuple(buf.shape) != tuple(shape):
            buf = self._buffers[key] = self._k.empty(shape, np.int32)
        return buf

    def config(self):
        return {"pool_size": list(self.pool_size), "stride": list(self.stride)}


@register
class MaxPool2D(_Pool2D):
    """Max pooling of (N, H, W, C); stride defaults to the pool size."""

    _kind = "max"


@register
class AvgPool2D(_Pool2D):
    """Average pooling of (N, H, W, C); stride defaults to the pool size."""

    _kind = "avg"


class _Pool1D(_Pool2D):
    def __init__(self, pool_size=2, stride=None):
        p = _positive("pool_size", pool_size)
        super().__init__((1, p), (1, p if stride is None else _positive("stride", stride)))

    def build(self, in_shape):
        if len(in_shape) != 2:
            raise ValueError(f"{type(self).__name__}: input has per-sample shape {tuple(in_shape)}, "
                             "expected (L, C)")
        oh, ow, c = super().build((1,) + tuple(in_shape))
        self._in_shape, self._out_shape = tuple(in_shape), (ow, c)
        return self._out_shape

    def _as4d(self, a):
        return a.reshape((a.shape[0], 1) + tuple(a.shape[1:]))

    def _out4(self):
        return (1,) + self._out_shape

    def _in4(self):
        return (1,) + self._in_shape

    def config(self):
        return {"pool_size": self.pool_size[1], "stride": self.stride[1]}


@register
class MaxPool1D(_Pool1D):
    """Max pooling of (N, L, C) signals."""

    _kind = "max"


@register
class AvgPool1D(_Pool1D):
    """Average pooling of (N, L, C) signals."""

    _kind = "avg"


@register
class GlobalAvgPool(Layer):
    """Mean over every spatial position: (N, H, W, C) or (N, L, C) -> (N, C)."""

    def build(self, in_shape):
        if len(in_shape) not in (2, 3):
            raise ValueError(f"GlobalAvgPool: input has per-sample shape {tuple(in_shape)}, "
                             "expected (H, W, C) or (L, C)")
        self._in_shape = tuple(in_shape)
        self._hw = tuple(in_shape[:-1]) if len(in_shape) == 3 else (1, in_shape[0])
        return (in_shape[-1],)

    def forward(self, X, training=False):
        n, c = X.shape[0], self._in_shape[-1]
        Y = self._buffer("Y", (n, 1, 1, c))
        self._k.avgpool2d_forward(Y, X.reshape((n,) + self._hw + (c,)), pool=self._hw)
        self._n = n
        return Y.reshape(n, c)

    def backward(self, dY, need_dx=True):
        if not need_dx:
            return None
        c = self._in_shape[-1]
        dX = self._buffer("dX", (self._n,) + self._hw + (c,))
        self._k.avgpool2d_backward(dX, dY.reshape(self._n, 1, 1, c), pool=self._hw)
        return dX.reshape((self._n,) + self._in_shape)

    def emit(self, b, x, scope):
        y = b.value((self._in_shape[-1],))
        b.record(spec.Op.AVGPOOL2D, x, y, kh=self._hw[0], kw=self._hw[1], sh=self._hw[0],
                 sw=self._hw[1])
        return y


@register
class Flatten(Layer):
    """(N, ...) -> (N, prod(...)); a view, no copy."""

    def build(self, in_shape):
        self._in_shape = tuple(in_shape)
        return (int(np.prod(in_shape)),)

    def forward(self, X, training=False):
        return X.reshape(X.shape[0], -1)

    def backward(self, dY, need_dx=True):
        return dY.reshape((dY.shape[0],) + self._in_shape) if need_dx else None

    def emit(self, b, x, scope):
        """No record: the same arrays, seen flat."""
        return x._replace(shape=(x.size,))
