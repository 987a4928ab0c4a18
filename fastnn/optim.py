"""Optimizers with torch.optim's names, defaults and update equations.

An optimizer is built from hyperparameters only (``Adam(lr=1e-3)``); the
trainer binds it to a model, which allocates its state as flat buffers that
mirror the model's parameter buffer.  Each step is then one fused kernel call
over the whole model (see the kernels' docstrings in
``fastnn/kernels/reference.py`` for the equations).  Ordered by increasing
complexity, as in tinygrad.

``lr`` may be changed between steps (learning-rate schedules do).
"""

from .kernels import _checks, reference


def _betas(betas):
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}") from None
    return (_checks.check_scalar("betas[0]", b1, 0.0, 1.0), _checks.check_scalar("betas[1]", b2, 0.0, 1.0))


class Optimizer:
    """Base class: state allocation, step counting, the one kernel call."""

    _state = ()  # names of the state buffers, in the kernel's argument order

    def __init__(self, lr, weight_decay):
        self.lr = _checks.check_scalar("lr", lr, low=0.0)
        self.weight_decay = _checks.check_scalar("weight_decay", weight_decay, low=0.0)
        self.step_count = 0
        self.state = None
        self._k = None

    def bind(self, size, kernels_module, dtype="float32"):
        """Allocate zeroed state buffers of `size` elements on a backend."""
        self._k = kernels_module
        self.state = {name: kernels_module.zeros(size, dtype) for name in self._state_buffers()}
        self.step_count = 0
        self._size = size
        return self

    def _state_buffers(self):
        return self._state

    def step(self, params, grads):
        """One update of the flat buffer `params` from `grads`."""
        if self.state is None or self._size != params.shape[0]:
            raise RuntimeError(f"{type(self).__name__}: not bound to a model of this size; "
                               "the Trainer binds it")
        self.step_count += 1
        self._update(params, grads)

    def _buf(self, name):
        return self.state.get(name)

    def kernel_spec(self):
        """(kernel name, state buffers in its argument order, hyperparameters):
        what one update calls, and what a fused epoch needs to know."""
        raise NotImplementedError

    def _update(self, params, grads):
        kernel, states, hyper = self.kernel_spec()
        if kernel != "rmsprop":  # the one update without a step counter
            hyper["step"] = self.step_count
        if kernel == "nadam":  # torch keeps NAdam's momentum product as state
            self.mu_product *= reference.nadam_mu(self.step_count, self.betas[0],
                                                  self.momentum_decay)
            hyper["mu_product"] = self.mu_product
        getattr(self._k, kernel)(params, grads, *states, **hyper)

    @property
    def fusable(self):
        """True if an update is exactly ``kernel_spec()``'s kernel, so a fused
        epoch (``dense_stack_epoch``) may run it.  A subclass that overrides
        ``_update`` is run batch by batch."""
        return type(self)._update is Optimizer._update

    def hyperparameters(self):
        return {k: v for k, v in vars(self).items()
                if not k.startswith("_") and k not in ("state", "step_count")}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum.

    torch.optim.SGD(lr=1e-3, momentum=0, dampening=0, weight_decay=0,
    nesterov=False).
    """

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(lr, weight_decay)
        self.momentum = _checks.check_scalar("momentum", momentum, low=0.0)
        self.dampening = _checks.check_scalar("dampening", dampening)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov: requires momentum > 0 and dampening = 0")

    def _state_buffers(self):
        return ("momentum_buf",) if self.momentum != 0 else ()

    def kernel_spec(self):
        return "sgd", (self._buf("momentum_buf"),), dict(
            lr=self.lr, momentum=self.momentum, dampening=self.dampening,
            nesterov=self.nesterov, weight_decay=self.weight_decay)


class Adagrad(Optimizer):
    """torch.optim.Adagrad(lr=1e-2, lr_decay=0, weight_decay=0,
    initial_accumulator_value=0, eps=1e-10)."""

    _state = ("sum_sq",)

    def __init__(self, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10):
        super().__init__(lr, weight_decay)
        self.lr_decay = _checks.check_scalar("lr_decay", lr_decay, low=0.0)
        self.initial_accumulator_value = _checks.check_scalar(
            "initial_accumulator_value", initial_accumulator_value, low=0.0)
        self.eps = _checks.check_scalar("eps", eps, low=0.0)

    def bind(self, size, kernels_module, dtype="float32"):
        super().bind(size, kernels_module, dtype)
        if self.initial_accumulator_value:
            import numpy as np

            self.state["sum_sq"] = kernels_module.asarray(
                np.full(size, self.initial_accumulator_value, dtype), dtype)
        return self

    def kernel_spec(self):
        return "adagrad", (self.state["sum_sq"],), dict(
            lr=self.lr, lr_decay=self.lr_decay, weight_decay=self.weight_decay, eps=self.eps)


class RMSprop(Optimizer):
    """torch.optim.RMSprop(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0,
    momentum=0, centered=False)."""

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False):
        super().__init__(lr, weight_decay)
        self.alpha = _checks.check_scalar("alpha", alpha, 0.0, 1.0)
        self.eps = _checks.check_scalar("eps", eps, low=0.0)
        self.momentum = _checks.check_scalar("momentum", momentum, low=0.0)
        self.centered = bool(centered)

    def _state_buffers(self):
        return (("square_avg",) + (("momentum_buf",) if self.momentum > 0 else ())
                + (("grad_avg",) if self.centered else ()))

    def kernel_spec(self):
        return "rmsprop", (self.state["square_avg"], self._buf("momentum_buf"),
                           self._buf("grad_avg")), dict(
            lr=self.lr, alpha=self.alpha, eps=self.eps, weight_decay=self.weight_decay,
            momentum=self.momentum, centered=self.centered)


class Adam(Optimizer):
    """torch.optim.Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0).

    eps is added to sqrt(v_hat), as in torch (scikit-learn differs).
    """

    _state = ("m", "v")
    _kernel = "adam"  # AdamW and Adamax differ only in kernel (and Adamax's state name)

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        self.betas = _betas(betas)
        self.eps = _checks.check_scalar("eps", eps, low=0.0)

    def kernel_spec(self):
        return self._kernel, tuple(self.state[name] for name in self._state), dict(
            lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
            weight_decay=self.weight_decay)


class AdamW(Adam):
    """torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=1e-2): decoupled weight decay p *= 1 - lr * weight_decay."""

    _kernel = "adamw"

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(lr, betas, eps, weight_decay)


class Adamax(Adam):
    """torch.optim.Adamax(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0):
    Adam with the infinity norm."""

    _state = ("m", "u")
    _kernel = "adamax"

    def __init__(self, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(lr, betas, eps, weight_decay)


class NAdam(Adam):
    """torch.optim.NAdam(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
    momentum_decay=4e-3): Adam with Nesterov momentum."""

    _kernel = "nadam"

    def __init__(self, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3):
        super().__init__(lr, betas, eps, weight_decay)
        self.momentum_decay = _checks.check_scalar("momentum_decay", momentum_decay, low=0.0)

    def bind(self, size, kernels_module, dtype="float32"):
        self.mu_product = 1.0
        return super().bind(size, kernels_module, dtype)

    def kernel_spec(self):
        kernel, states, hyper = super().kernel_spec()
        return kernel, states, dict(hyper, momentum_decay=self.momentum_decay)


    def hyperparameters(self):
        hp = super().hyperparameters()
        hp.pop("mu_product", None)
        return hp


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad,
              "nadam": NAdam, "adamax": Adamax}


def get(optimizer, **kwargs):
    """An optimizer instance from an instance or a name ("adam", ...)."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    try:
        return OPTIMIZERS[str(optimizer).lower()](**kwargs)
    except KeyError:
        raise ValueError(f"optimizer: unknown {optimizer!r}; expected one of "
                         f"{', '.join(OPTIMIZERS)} or an Optimizer") from None
