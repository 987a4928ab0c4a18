"""Compile a Sequential model into a plan: the records of one ``model_epoch``.

A plan is the model as data (``spec.PLAN_FIELDS`` records): each layer
emits its records with offsets into the model's flat parameter buffer (and
gradients, same layout), its buffer of running statistics, and one float
and one int32 workspace holding every activation, gradient and auxiliary
array of a batch.  The backend then runs forward, loss, backward and update
of every batch with no Python in between (``reference.run_model_epoch`` is
the specification).

Layers take part through one method, ``emit(builder, x, scope)``: given the
:class:`Value` of their input they append records and return the
:class:`Value` of their output.  A layer without ``emit`` (a custom Python
layer) makes the model uncompilable: :func:`compile_model` returns None and
the Trainer trains batch by batch.
"""

from typing import NamedTuple

import numpy as np

from .kernels import spec

_ALIGN = 16  # floats: every array starts on a 64-byte boundary


class NotCompilable(Exception):
    """Raised by a layer's emit when it cannot be part of a plan."""


class Value(NamedTuple):
    """An array of the plan: per-sample ``shape``; a batch of it at float
    workspace offset ``off`` (-1: the batch's input rows) and its gradient
    at ``doff`` (-1: no gradient is needed, the model's input)."""

    off: int
    doff: int
    shape: tuple

    @property
    def size(self):
        return int(np.prod(self.shape))


def hwc(shape):
    """A per-sample shape as the records' (h, w, c): features (c,) ->
    (1, 1, c), signals (L, c) -> (1, L, c), images as they are."""
    shape = tuple(int(s) for s in shape)
    return ((1, 1) + shape if len(shape) == 1 else (1,) + shape if len(shape) == 2
            else shape if len(shape) == 3 else (1, 1, int(np.prod(shape))))


class Scope:
    """Where one layer's tensors live: offsets of its parameters in the
    flat buffer and of its state in the buffers, by the names of its
    ``param_shapes`` / ``buffer_shapes``; ``child(key)`` is a block's
    child's scope (its names prefixed "key.")."""

    def __init__(self, params, states, prefix=""):
        self._params, self._states, self._prefix = params, states, prefix

    def param(self, name):
        return self._params[self._prefix + name]

    def state(self, name):
        return self._states[self._prefix + name]

    def child(self, key):
        return Scope(self._params, self._states, f"{self._prefix}{key}.")


class Builder:
    """Collects records and lays out the workspaces for batches of
    ``batch`` rows (a shorter last batch uses the leading rows)."""

    def __init__(self, batch):
        self.batch = int(batch)
        self.ws = 0
        self.iws = 0
        self.records, self.scalars = [], []
        self.penalized = []
        self.dropouts = []  # (record index, layer): counters to set per epoch

    def floats(self, per_sample):
        """Offset of a fresh (batch, per_sample) float array."""
        off = self.ws
        self.ws = -(-(off + self.batch * int(per_sample)) // _ALIGN) * _ALIGN
        return off

    def ints(self, per_sample):
        off = self.iws
        self.iws = -(-(off + self.batch * int(per_sample)) // _ALIGN) * _ALIGN
        return off

    def value(self, shape):
        """A fresh array of per-sample `shape` with its gradient."""
        size = int(np.prod(shape))
        return Value(self.floats(size), self.floats(size), tuple(shape))

    def grad(self, shape):
        """A fresh gradient array (for an input that has none of its own)."""
        return self.floats(int(np.prod(shape)))

    def record(self, op, x, y, **fields):
        """Append a record reading Value x and writing Value y (dx and dy
        are theirs); other fields by name (spec.PLAN_FIELDS / PLAN_SCALARS);
        shapes default to x's and y's.  Returns the record's index."""
        rec = dict.fromkeys(spec.PLAN_FIELDS, -1)
        h, w, c = hwc(x.shape)
        oh, ow, oc = hwc(y.shape)
        rec.update(op=int(op), x=x.off, y=y.off, dx=x.doff, dy=y.doff, h=h, w=w, c=c, oh=oh,
                   ow=ow, oc=oc, kh=1, kw=1, sh=1, sw=1, ph=0, pw=0, act=0, seed=0, counter=0)
        scal = dict.fromkeys(spec.PLAN_SCALARS, 0.0)
        for key, v in fields.items():
            if key in scal:
                scal[key] = float(v)
            elif key in rec:
                rec[key] = int(v)
            else:
                raise KeyError(f"record: no field {key!r}")
        self.records.append([rec[f] for f in spec.PLAN_FIELDS])
        self.scalars.append([scal[f] for f in spec.PLAN_SCALARS])
        return len(self.records) - 1

    def fold_activation(self, x, activation, slope):
        """Fold an activation layer into the dense or conv record that just
        wrote x (when it has none); returns whether it did."""
        if not self.records:
            return False
        last = self.records[-1]
        F = spec.F
        if (last[F["op"]] in (spec.Op.DENSE, spec.Op.CONV2D) and last[F["act"]] == 0
                and last[F["y"]] == x.off and last[F["dy"]] == x.doff):
            last[F["act"]] = spec.activation_code(activation)
            self.scalars[-1][spec.S["slope"]] = float(slope)
            return True
        return False

    def penalize(self, offset, size):
        """The l2 term applies to params[offset:offset + size]."""
        self.penalized.append((int(offset), int(size)))


class Plan:
    """A compiled model for batches of ``batch_size`` rows: the records and
    everything a ``spec.ModelEpoch`` takes besides the buffers."""

    def __init__(self, builder, x, out, in_size):
        self.batch_size = builder.batch
        self.records = np.array(builder.records, dtype=np.int64).reshape(
            -1, len(spec.PLAN_FIELDS))
        self.scalars = np.array(builder.scalars, dtype=np.float64).reshape(
            -1, len(spec.PLAN_SCALARS))
        self.penalized = np.array(builder.penalized, dtype=np.int64).reshape(-1, 2)
        self.dropouts = builder.dropouts
        self.in_size, self.out_size = in_size, out.size
        self.xb, self.tb, self.lb = x
        self.output, self.doutput = out.off, out.doff
        self.workspace_size, self.iworkspace_size = max(builder.ws, 1), max(builder.iws, 1)

    @property
    def dense_stack(self):
        """Whether every record is DENSE (the c and numba backends then run
        their dense-stack scheduling inside model_epoch)."""
        return bool(np.all(self.records[:, spec.F["op"]] == spec.Op.DENSE))

    def epoch(self, trainable=None, **fields):
        """A spec.ModelEpoch of this plan with the given buffers and
        options; dropout counters are the layers' current ones.  trainable:
        the model's trainable_ranges() (None: no frozen layer); the l2 term
        then applies to the trainable weights only."""
        penalized = self.penalized
        if trainable is not None:
            penalized = np.array([(o, n) for o, n in self.penalized
                                  if any(lo <= o and o + n <= lo + size for lo, size in trainable)],
                                 dtype=np.int64).reshape(-1, 2)
        plan = self.records
        if self.dropouts:
            plan = plan.copy()
            for i, layer in self.dropouts:
                plan[i, spec.F["counter"]] = layer.calls
        return spec.ModelEpoch(
            plan=plan, plan_scalars=self.scalars, penalized=penalized, trainable=trainable,
            in_size=self.in_size, out_size=self.out_size, xb=self.xb, tb=self.tb, lb=self.lb,
            output=self.output, doutput=self.doutput, **dict(fields, batch_size=self.batch_size))

    def advance(self, n_batches):
        """After an epoch of n_batches forwards: the dropout layers' call
        counters move on as the batch-by-batch path's would."""
        for _, layer in self.dropouts:
            layer.calls += int(n_batches)


def compile_model(model, batch_size):
    """The model as a :class:`Plan` for batches of `batch_size`, or None
    when a layer cannot be compiled (a custom Python layer)."""
    params = {}
    for i, name, _, off in model._layout:
        params.setdefault(i, {})[name] = off
    states = {}
    for i, name, _, off in model._buffer_layout:
        states.setdefault(i, {})[name] = off
    b = Builder(batch_size)
    in_size = int(np.prod(model.input_shape))
    out_size = int(np.prod(model.output_shape))
    reserved = (b.floats(in_size), b.floats(out_size), b.ints(1))
    v = Value(-1, -1, tuple(model.input_shape))
    try:
        for i, layer in enumerate(model.layers):
            emit = getattr(layer, "emit", None)
            if emit is None:
                raise NotCompilable(type(layer).__name__)
            v = emit(b, v, Scope(params.get(i, {}), states.get(i, {})))
    except NotCompilable:
        return None
    if v.off == -1 or not b.records:  # the output is the input: nothing to train
        return None
    return Plan(b, reserved, v, in_size)
