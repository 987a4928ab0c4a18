"""Optimizers with torch.optim's names, defaults and update equations.

An optimizer is built from hyperparameters only (``Adam(lr=1e-3)``); the
trainer binds it to a model, which allocates its state as flat buffers that
mirror the model's parameter buffer.  Each step is then one fused kernel call
over the whole model (the equations are in the kernels' docstrings,
``fastnn/kernels/reference.py``).

Every class here is derived from its entry in ``fastnn.kernels.spec
.OPTIMIZERS``: the constructor's arguments (torch's names, order and
defaults; ``betas`` for the beta1/beta2 pair), their valid ranges, the state
buffers and the scalar state (NAdam's momentum product).  Adding an
optimizer is a spec entry, its kernels and one line here.

``lr`` may be changed between steps (learning-rate schedules do).
"""

import inspect

import numpy as np

from .kernels import _checks, spec


def _betas(betas):
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}") from None
    return (_checks.check_scalar("betas[0]", b1, 0.0, 1.0),
            _checks.check_scalar("betas[1]", b2, 0.0, 1.0))


class Optimizer:
    """Base class: arguments, state allocation, step counting, the one
    kernel call.  A subclass names its spec entry in ``kernel``."""

    kernel = None  # the name of the update kernel (a key of spec.OPTIMIZERS)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "kernel" in cls.__dict__ and "__init__" not in cls.__dict__:
            cls.__init__ = _make_init(spec.OPTIMIZERS[cls.kernel])

    @property
    def spec(self):
        """This optimizer's entry in the kernel specification."""
        return spec.OPTIMIZERS[self.kernel]

    def _set(self, values):
        """Validate and store the hyperparameters (torch's names)."""
        o = self.spec
        for torch_name, (first, second) in o.pairs.items():
            pair = _betas(values.pop(torch_name))
            setattr(self, torch_name, pair)
            values[first], values[second] = pair
        kernel_hyper = {h.name: values.pop(h.name) for h in o.hyper if h.name in values}
        checked = _checks.check_hyper(o, kernel_hyper)
        for h in o.hyper:
            if not any(h.name in pair for pair in o.pairs.values()):
                setattr(self, h.name, checked[h.name])
        for name, value in values.items():  # initial fills of state buffers
            setattr(self, name, _checks.check_scalar(name, value, low=0.0))
        problem = o.problem(checked)
        if problem:
            raise ValueError(problem)
        self.step_count = 0
        self.state = None
        self._k = None

    def _hyper(self):
        """The kernel's hyperparameters, in spec order."""
        o = self.spec
        unpaired = {h.name: getattr(self, h.name, None) for h in o.hyper}
        for torch_name, names in o.pairs.items():
            unpaired.update(zip(names, getattr(self, torch_name)))
        return unpaired

    def bind(self, size, kernels_module, dtype="float32"):
        """Allocate the state buffers of `size` elements on a backend (zeros,
        or the initial fill the optimizer was given) and reset the counters."""
        o, hyper = self.spec, self._hyper()
        self._k = kernels_module
        self.state = {}
        for name in o.states:
            needed_by = o.optional.get(name)
            if needed_by is not None and not hyper[needed_by]:
                continue
            fill = next((getattr(self, arg) for arg, (state, _) in o.fills.items()
                         if state == name), 0.0)
            self.state[name] = (kernels_module.zeros(size, dtype) if not fill else
                                kernels_module.asarray(np.full(size, fill, dtype), dtype))
        for name, initial in o.scalars.items():
            setattr(self, name, initial)
        self.step_count = 0
        self._size = size
        return self

    def step(self, params, grads, ranges=None):
        """One update of the flat buffer `params` from `grads`.

        ranges: None (the whole buffer) or (offset, size) pairs, increasing
        and disjoint (``Sequential.trainable_ranges()``): only those
        parameters and their state are updated (frozen layers)."""
        if self.state is None or self._size != params.shape[0]:
            raise RuntimeError(f"{type(self).__name__}: not bound to a model of this size; "
                               "the Trainer binds it")
        if ranges is not None:
            ranges = [tuple(int(v) for v in r) for r in
                      _checks.check_ranges("ranges", ranges, params.shape[0])]
        self.step_count += 1
        if ranges is not None and not self.fusable:
            return self._update_keeping(params, grads, ranges)
        self._ranges = ranges
        try:
            self._update(params, grads)
        finally:
            self._ranges = None

    def _update_keeping(self, params, grads, ranges):
        """A subclass's own _update over the whole buffer, then the frozen
        parameters and their state put back as they were."""
        k, kept, start = self._k, [], 0
        for o, size in list(ranges) + [(params.shape[0], 0)]:
            if o > start:
                kept += [(buf, start, o, np.array(k.to_numpy(buf[start:o]), copy=True))
                         for buf in [params, *self.state.values()]]
            start = o + size
        self._update(params, grads)
        for buf, lo, hi, saved in kept:
            if isinstance(buf, np.ndarray):
                buf[lo:hi] = saved
            else:
                buf[lo:hi].copy_to_device(saved)

    def _buf(self, name):
        return self.state.get(name)

    def kernel_spec(self):
        """(kernel name, state buffers in its argument order (None where
        unused), hyperparameters): what one update calls, and what a fused
        epoch needs to know."""
        return self.kernel, tuple(self.state.get(name) for name in self.spec.states), \
            self._hyper()

    def _update(self, params, grads):
        kernel, states, hyper = self.kernel_spec()
        o = self.spec
        if o.step:
            hyper["step"] = self.step_count
        scalars = spec.advance(kernel, {name: getattr(self, name) for name in o.scalars},
                               self.step_count, hyper)
        for name, value in scalars.items():
            setattr(self, name, value)
        update = getattr(self._k, kernel)
        ranges = getattr(self, "_ranges", None)
        if ranges is None:
            update(params, grads, *states, **hyper, **scalars)
            return
        for o, size in ranges:  # frozen parameters and their state stay as they are
            update(params[o:o + size], grads[o:o + size],
                   *(None if st is None else st[o:o + size] for st in states),
                   **hyper, **scalars)

    @property
    def fusable(self):
        """True if an update is exactly ``kernel_spec()``'s kernel, so a fused
        epoch (``dense_stack_epoch``) may run it.  A subclass that overrides
        ``_update`` is run batch by batch."""
        return type(self)._update is Optimizer._update

    def hyperparameters(self):
        """The constructor's arguments (torch's names) and their values."""
        names = list(inspect.signature(type(self).__init__).parameters)[1:]
        return {name: getattr(self, name) for name in names}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


def _make_init(o):
    """``__init__`` with torch's arguments of spec entry `o` (source
    generated so that the signature is real for help() and inspect)."""
    args = []
    seen = set()
    for h in o.hyper:
        pair = next((name for name, names in o.pairs.items() if h.name in names), None)
        if pair is not None:
            if pair not in seen:
                seen.add(pair)
                defaults = tuple(x.default for x in o.hyper if x.name in o.pairs[pair])
                args.append(f"{pair}={defaults!r}")
        else:
            args.append(f"{h.name}={h.default!r}")
    args += [f"{name}={default!r}" for name, (_, default) in o.fills.items()]
    names = [a.split("=")[0] for a in args]
    src = (f"def __init__(self, {', '.join(args)}):\n"
           f"    self._set({{{', '.join(f'{n!r}: {n}' for n in names)}}})\n")
    namespace = {}
    exec(compile(src, f"<fastnn.optim {o.torch}.__init__>", "exec"), namespace)  # noqa: S102
    return namespace["__init__"]


class SGD(Optimizer):
    """torch.optim.SGD: stochastic gradient descent with optional (Nesterov)
    momentum."""

    kernel = "sgd"


class Adagrad(Optimizer):
    """torch.optim.Adagrad."""

    kernel = "adagrad"


class RMSprop(Optimizer):
    """torch.optim.RMSprop (optionally centered, with momentum)."""

    kernel = "rmsprop"


class Adam(Optimizer):
    """torch.optim.Adam.  eps is added to sqrt(v_hat), as in torch
    (scikit-learn differs)."""

    kernel = "adam"


class AdamW(Optimizer):
    """torch.optim.AdamW: decoupled weight decay p *= 1 - lr * weight_decay."""

    kernel = "adamw"


class Adamax(Optimizer):
    """torch.optim.Adamax: Adam with the infinity norm."""

    kernel = "adamax"


class NAdam(Optimizer):
    """torch.optim.NAdam: Adam with Nesterov momentum."""

    kernel = "nadam"


class RAdam(Optimizer):
    """torch.optim.RAdam: Adam with the variance of its adaptive step
    rectified (plain momentum steps while too few gradients are averaged)."""

    kernel = "radam"


OPTIMIZERS = {cls.kernel: cls for cls in (SGD, Adam, AdamW, RMSprop, Adagrad, NAdam, Adamax,
                                          RAdam)}
assert set(OPTIMIZERS) == set(spec.OPTIMIZERS), "every optimizer of the spec has a class here"


def get(optimizer, **kwargs):
    """An optimizer instance from an instance or a name ("adam", ...)."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    try:
        return OPTIMIZERS[str(optimizer).lower()](**kwargs)
    except KeyError:
        raise ValueError(f"optimizer: unknown {optimizer!r}; expected one of "
                         f"{', '.join(OPTIMIZERS)} or an Optimizer") from None
