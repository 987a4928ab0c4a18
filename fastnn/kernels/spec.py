"""The kernel specification: every kernel and every enumeration, once.

Everything else reads this module: the front that validates arguments
(:mod:`fastnn.kernels` builds each backend's public functions from
:data:`KERNELS`), the backends' codes (activation, loss and optimizer
numbers), the C header's enums (a test parses ``csrc/fastnn.h`` and compares
them with the tables here), the optimizer classes of :mod:`fastnn.optim`
(their state buffers, hyperparameters and torch defaults), the CLI's
choices and the tests' parametrisations.

The calling convention
----------------------
A kernel has one public signature, given here (outputs first, inputs next,
options keyword-only; ``gemm`` keeps the BLAS order).  ``fastnn.kernels
.get(name)`` returns functions with that signature which check and convert
every argument once (``_checks``; errors name the argument) and then call
the backend's implementation with the *same parameters in the same order,
positionally*, normalised:

* arrays: inputs converted to C-contiguous arrays of the backend's dtype
  (labels and argmax int32, order int64; device arrays on cuda), outputs
  checked (exact shape, dtype, contiguity, no overlap with an input);
  optional arrays may be None;
* ``activation``: its integer code (:data:`ACTIVATION_CODES`);
* ``stride``, ``padding``, ``pool``: ``(h, w)`` int pairs (a pooling
  stride of None becomes the pool size);
* scalars: Python floats; flags: bools; ``step``: an int >= 1.

An implementation returns the loss (``*_xent_forward``, ``bce/mse/mae
_forward``) or the sum (``sum_squares``) as a float; every other return value
is ignored and the front returns the kernel's documented output.  A backend
that lacks an implementation gets the reference's (host arrays are staged
for a device backend), so a backend or a kernel can be added one function
at a time.  The numpy reference (:mod:`fastnn.kernels.reference`) is the
oracle; its implementations' docstrings are the kernels' documentation.

IEEE semantics
--------------
The reference's, followed by every backend and tested with NaN, +-inf, +-0,
denormals, +-1e30 and +-1e-30 mixed with ordinary values on every backend
(``tests/test_edge_values.py``; the cuda backend under the simulator):

General
  1. NaN propagates: an output is NaN exactly where the reference's formula,
     evaluated in float32 IEEE arithmetic, gives NaN.
  2. max/min-style operations propagate a NaN from EITHER operand, as numpy's
     maximum/minimum (relu, adamax's u, clip, softmax's row max) -- not C's
     fmaxf/fminf, a one-sided ternary, nor Python's max (the CUDA simulator).
  3. Where the formula is a comparison, NaN compares false and the result
     follows: step(NaN) = 0, and the derivative masks (y > 0) of relu and
     leaky_relu treat a NaN y as not positive.
  4. Overflow gives the correctly signed infinity; inf - inf, 0 * inf and
     inf / inf give NaN, as the formulas written out in float32 do.  An FMA
     (contraction) may change rounding but not the class of a result: a
     product that overflows in the formula must overflow.
  5. Denormals are kept everywhere (no flush to zero), except inside the c
     and numba backends' optimizer updates, which run with FTZ + DAZ
     (csrc/internal.h, kernels/numba/_common.py):
     there |x| < FLT_MIN (1.18e-38) counts as equal to 0 in both results;
     and while a caller has asked c's ``flush_denormals(True)`` (the L-BFGS
     objective of fastnn.sklearn does, around its full-batch epoch).
  6. Zeros have the reference's sign, except where noted (relu and sign of
     -0, mae's gradient, optimizer updates).
  7. Finite values agree within float32 rounding: |got - want| <= 1e-5 *
     max(|want|, scale) + a few denormal ulps, scale being the size of the
     terms that cancel in the element's formula.
Activations (forward Y = act(X); backward dX = dY * act'(Y), from Y)
  8. identity: Y = X bit for bit; dX = dY.
  9. step: x > 0, so step(NaN) = 0 (arguable; the reference's comparison).
     sign: NaN -> NaN, +-inf -> +-1, +-0 -> 0.  Backward of both: dY * 0,
     i.e. NaN for dY = NaN or +-inf, else a zero with dY's sign.
 10. relu: max(x, 0): relu(NaN) = NaN, relu(-inf) = 0.  Backward: dY where
     y > 0, else dY * 0 (NaN for dY = NaN or +-inf).
 11. leaky_relu: x if x > 0 else slope * x: NaN -> NaN, -inf -> -inf.
     Backward dY * (1 if y > 0 else slope).
 12. sigmoid, tanh, softplus: NaN -> NaN, saturating at +-inf (sigmoid(-inf)
     = 0, softplus(-inf) = 0, softplus(inf) = inf); backward from Y: NaN in
     Y or dY gives NaN, inf * 0 gives NaN.
 13. The sign of relu(-0) and sign(-0) is not compared: numpy returns +0
     (np.maximum(-0., 0.), np.sign(-0.)) where the C/numba ternaries keep -0;
     IEEE leaves the sign of max(-0, +0) unspecified, and an activation's
     zero only feeds sums (gemm) and the y > 0 masks, which cannot see it.
Softmax (row-wise, max-shifted)
 14. A NaN anywhere in a row makes the whole row NaN; so does +inf (inf - inf
     in the shift; arguably the row should be one-hot, the reference says
     NaN), and so does an all -inf row; -inf elsewhere gives probability 0.
 15. Backward Y * (dY - rowsum(dY * Y)): a NaN in Y or dY, or 0 * inf in the
     row sum, spreads NaN over the row.
Losses
 16. Loss values are compared after rounding to float32, the precision the c
     ABI returns (float *loss); every backend accumulates the mean in float64,
     so a mean beyond FLT_MAX (mse of +-1e30: 4e60) is inf on c and finite
     on the reference -- the same float32.
 17. softmax_xent: NaN or +inf logits give a NaN P row and a NaN loss; -inf
     off the label gives P = 0, at the label an inf loss.  Backward
     (P - onehot) / n, from P.
 18. bce: max(z, 0) - z t + log1p(exp(-|z|)): z = +inf gives NaN for every t,
     z = -inf gives inf for t > 0 and NaN for t = 0 (arguable: the true loss
     is 0 or inf; the reference's formula says NaN).  Backward (sigmoid(z) -
     t) / n: finite for non-NaN z.  Targets are tested in [0, 1] and NaN.
 19. mse: (y - t)^2 and 2 (y - t) / n: inf - inf = NaN.
 20. mae: |y - t| and sign(y - t) / n: sign(NaN) = NaN (so y = t = inf gives
     NaN), sign(0) = 0, the sign of that zero not compared (np.sign(-0.) =
     +0, as 13).
Optimizer updates (params and every state buffer checked)
 21. The reference's formulas in float32: a NaN or inf in a gradient,
     parameter or state reaches every buffer whose formula reads it.  Weight
     decay 0 skips the + wd * p term (a non-finite p does not leak into g
     then, as torch); SGD's first step sets the momentum buffer without
     reading it.  adamax's u = max(beta2 u, |g| + eps) propagates NaN from
     either side (2); centered rmsprop's sqrt(sq - ga^2) is NaN for a
     negative variance.
 22. Sign of zero not compared: a zero parameter or state comes from
     underflow or cancellation, whose sign depends on contraction (numba
     fuses p - lr * g into an FMA: +0 - 0.1 * 1e-45 rounds to -0 where the
     reference's rounded product gives +0 - +0 = +0) and on DAZ (c); no
     update reads the sign of a zero (its denominators are sqrt(.) + eps or
     max(., |g| + eps)).
 23. Nonnegative states (v, square_avg, sum_sq, u) are tested with their
     nonnegative edge values and NaN only.
Flat utilities
 24. sum_squares (a float64 sum, returned as is): NaN -> NaN, +-inf -> inf,
     +-1e30 -> 1e60.
 25. scale x * s and axpy y + alpha x: IEEE products (0 * inf = NaN).
 26. clip min(max(x, lo), hi): NaN stays NaN (arguable; numpy's clip), +-inf
     are clipped, -0 stays -0 within [0, 0].
"""

import enum
import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


# ---- enumerations -----------------------------------------------------------------
# The numbers are the C enums' (csrc/fastnn.h); tests/test_spec.py proves it.

class Activation(enum.IntEnum):
    """enum fastnn_activation.  Derivatives are computed from the output."""

    IDENTITY = 0
    STEP = 1        # Heaviside: x > 0 ? 1 : 0; derivative 0
    SIGN = 2        # x > 0 ? 1 : (x < 0 ? -1 : 0); derivative 0
    SIGMOID = 3
    TANH = 4
    RELU = 5
    LEAKY_RELU = 6  # x > 0 ? x : slope * x (slope > 0)
    SOFTPLUS = 7    # log(1 + e^x), derivative 1 - e^-y


class Loss(enum.IntEnum):
    """enum fastnn_loss: the losses a whole-epoch kernel computes."""

    SOFTMAX_XENT = 0  # softmax fused with cross-entropy, integer labels
    BCE = 1           # sigmoid fused with binary cross-entropy, targets in [0, 1]
    MSE = 2
    MAE = 3


ACTIVATIONS = tuple(a.name.lower() for a in Activation)
ACTIVATION_CODES = {a.name.lower(): int(a) for a in Activation}
LOSSES = tuple(x.name.lower() for x in Loss)
LOSS_CODES = {x.name.lower(): int(x) for x in Loss}


def activation_code(activation):
    """The code of an activation name (None: identity); ValueError otherwise."""
    if activation is None:
        return 0
    try:
        return ACTIVATION_CODES[activation]
    except (KeyError, TypeError):
        raise ValueError(f"activation: unknown {activation!r}; expected one "
                         f"of {', '.join(ACTIVATIONS)}") from None


# ---- optimizers ---------------------------------------------------------------------

@dataclass(frozen=True)
class Hyper:
    """One hyperparameter of an optimizer update: its kernel name, torch's
    default, its valid range, and whether the update kernel requires it
    (else the kernel's keyword option defaults to torch's default)."""

    name: str
    default: object = None
    low: float = None
    high: float = None
    low_open: bool = False
    high_open: bool = False
    flag: bool = False      # a bool (nesterov, centered), not a real number
    required: bool = False


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer: its update kernel and what the update needs.

    ``states``: the kernel's state buffers (each as long as the parameter
    buffer), in argument order; ``optional`` maps a state to the
    hyperparameter that must be non-zero for it to be needed (None may be
    passed otherwise).  ``scalars``: scalar state carried across steps
    (torch keeps it in the optimizer state), with its initial value; it is
    advanced by :func:`advance` before each update.  ``torch``: the
    torch.optim class the equations follow; ``pairs``: torch arguments that
    bundle two kernel hyperparameters (``betas`` -> beta1, beta2);
    ``fills``: torch arguments that set a state buffer's initial value,
    with their default (Adagrad's initial_accumulator_value); ``rules``:
    (message, predicate of the hyperparameters) pairs a valid setting
    satisfies; ``nonnegative``: the states that can never be negative
    (accumulated squares and norms).
    """

    name: str
    code: int
    torch: str
    states: tuple
    hyper: tuple
    optional: dict = field(default_factory=dict)
    step: bool = True
    scalars: dict = field(default_factory=dict)
    pairs: dict = field(default_factory=dict)
    fills: dict = field(default_factory=dict)
    rules: tuple = ()
    nonnegative: tuple = ()

    @functools.cached_property  # (read on every update's validation)
    def hyper_names(self):
        return tuple(h.name for h in self.hyper)

    def problem(self, hyper):
        """The message of the first rule `hyper` breaks, or None."""
        return next((message for message, ok in self.rules if not ok(hyper)), None)

    def kernel_defaults(self):
        """The defaults of the update kernel's keyword options (the
        hyperparameters it does not require)."""
        return {h.name: h.default for h in self.hyper if not h.required}


_LR = Hyper("lr", 1e-3, low=0.0, required=True)
_WD = Hyper("weight_decay", 0.0, low=0.0)
_EPS = Hyper("eps", 1e-8, low=0.0, required=True)
# betas in [0, 1), as torch: 1 divides by zero in the bias corrections
_BETA1 = Hyper("beta1", 0.9, 0.0, 1.0, high_open=True, required=True)
_BETA2 = Hyper("beta2", 0.999, 0.0, 1.0, high_open=True, required=True)
_ADAM_HYPER = (_LR, _BETA1, _BETA2, _EPS, _WD)
_BETAS = {"betas": ("beta1", "beta2")}

OPTIMIZERS = {o.name: o for o in (
    OptimizerSpec("sgd", 0, "SGD", ("momentum_buf",),
                  (_LR, Hyper("momentum", 0.0, low=0.0), Hyper("dampening", 0.0),
                   Hyper("nesterov", False, flag=True), _WD),
                  optional={"momentum_buf": "momentum"},
                  rules=(("nesterov: requires momentum > 0 and dampening = 0",
                          lambda h: not h["nesterov"] or (h["momentum"] > 0
                                                          and h["dampening"] == 0)),)),
    OptimizerSpec("adam", 1, "Adam", ("m", "v"), _ADAM_HYPER, pairs=_BETAS, nonnegative=("v",)),
    OptimizerSpec("adamw", 2, "AdamW", ("m", "v"),
                  (_LR, _BETA1, _BETA2, _EPS, Hyper("weight_decay", 1e-2, low=0.0)),
                  pairs=_BETAS, nonnegative=("v",)),
    OptimizerSpec("rmsprop", 3, "RMSprop", ("square_avg", "momentum_buf", "grad_avg"),
                  (Hyper("lr", 1e-2, low=0.0, required=True),
                   Hyper("alpha", 0.99, 0.0, 1.0, required=True), _EPS, _WD,
                   Hyper("momentum", 0.0, low=0.0), Hyper("centered", False, flag=True)),
                  optional={"momentum_buf": "momentum", "grad_avg": "centered"}, step=False,
                  nonnegative=("square_avg",)),
    OptimizerSpec("adagrad", 4, "Adagrad", ("sum_sq",),
                  (Hyper("lr", 1e-2, low=0.0, required=True), Hyper("lr_decay", 0.0, low=0.0), _WD,
                   Hyper("eps", 1e-10, low=0.0)),
                  fills={"initial_accumulator_value": ("sum_sq", 0.0)}, nonnegative=("sum_sq",)),
    OptimizerSpec("nadam", 5, "NAdam", ("m", "v"),
                  (Hyper("lr", 2e-3, low=0.0, required=True), _BETA1, _BETA2, _EPS, _WD,
                   Hyper("momentum_decay", 4e-3, low=0.0)),
                  scalars={"mu_product": 1.0}, pairs=_BETAS, nonnegative=("v",)),
    OptimizerSpec("adamax", 6, "Adamax", ("m", "u"),
                  (Hyper("lr", 2e-3, low=0.0, required=True), _BETA1, _BETA2, _EPS, _WD), pairs=_BETAS,
                  nonnegative=("u",)),
    OptimizerSpec("radam", 7, "RAdam", ("m", "v"), _ADAM_HYPER, pairs=_BETAS,
                  nonnegative=("v",)),
)}


def nadam_mu(step, beta1, momentum_decay):
    """mu_t of NAdam's momentum schedule: beta1 * (1 - 0.5 * 0.96^(t * psi))."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))


def advance(optimizer, scalars, step, hyper):
    """The optimizer's scalar state after step `step` (counted from 1):
    NAdam's mu_product = mu_1 * ... * mu_step.  `scalars` is not changed."""
    if optimizer == "nadam":
        return {"mu_product": scalars["mu_product"]
                * nadam_mu(step, hyper["beta1"], hyper["momentum_decay"])}
    return scalars


def radam_rectification(step, beta2):
    """RAdam's r_t: the variance rectification of step t, or 0.0 while the
    approximated SMA length rho_t <= 5 (then the update is un-adapted
    momentum SGD), as torch.optim.RAdam computes it."""
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2 ** step / (1.0 - beta2 ** step)
    if rho_t <= 5.0:
        return 0.0
    return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5


def bias_corrections(step, beta1, beta2):
    """Adam's 1 - beta1^t and 1 - beta2^t (in double, as torch computes them)."""
    return 1.0 - beta1 ** step, 1.0 - beta2 ** step


# ---- the whole-epoch kernel's structures --------------------------------------------

class DenseLayer(NamedTuple):
    """One layer of a dense stack in params: W (fan_in, fan_out) at
    w_offset, b (fan_out) at b_offset (-1: no bias); grads has the same
    layout.  ``activation`` is a name here and its code after validation."""

    fan_in: int
    fan_out: int
    w_offset: int
    b_offset: int
    activation: object = "identity"
    negative_slope: float = 0.01


@dataclass
class Epoch:
    """Everything one training epoch of a dense stack needs: the one
    argument of ``dense_stack_epoch`` (see the reference for the semantics).

    Buffers: ``params`` and ``grads`` (flat), ``states`` (the optimizer's
    state buffers in its kernel's order, None where unused), ``workspace``
    (floats, :func:`epoch_workspace`), ``X`` (n, fan_in of the first layer),
    ``targets`` (labels (n,) for softmax_xent, else (n, fan_out of the last)),
    ``batch_losses`` (float64) and ``batch_correct`` (int64), one entry per
    batch.  ``step`` and the optimizer's scalar state (``mu_product``) are
    the counters before the epoch; the kernel returns them after.
    """

    params: object
    grads: object
    states: tuple
    workspace: object
    X: object
    targets: object
    batch_losses: object
    batch_correct: object
    layers: tuple = ()
    loss: str = "softmax_xent"
    batch_size: int = 32
    optimizer: str = "adam"
    hyper: dict = field(default_factory=dict)
    step: int = 0
    mu_product: float = 1.0
    l2: float = 0.0
    loss_scale: float = 1.0
    grad_scale: float = 1.0
    order: object = None

    @property
    def n_batches(self):
        rows = self.X.shape[0] if self.order is None else len(self.order)
        return -(-rows // self.batch_size)


def _checked_sum(*terms):
    """Sum of non-negative int terms, refused past int64 (sizes go to C)."""
    total = sum(int(t) for t in terms)
    if total >= 2 ** 63:
        raise ValueError(f"size overflows int64 ({total})")
    return total


def epoch_layout(layers, batch_size, threads=1):
    """The workspace of ``dense_stack_epoch`` (floats; one layout for every
    backend, csrc/train.c's): for a full batch of B rows

        Y_0 (B, out_0) | Y_1 | ... | D_0 (B, out_0) | D_1 | ...   outputs, gradients
        | Xb (B, in_0) | Tb (B, out_last) | Lb (B int32)          a gathered batch
        | P (2 * threads, B, widest out), only with threads > 1   partial products

    Returns a dict of offsets (Y and D are lists, one per layer) and "size".
    The loss gradient goes into D_last; layer l's backward turns D_l into dZ
    in place and writes dX into D_(l-1).
    """
    B = int(batch_size)
    outs = [int(layer[1]) for layer in layers]
    y = [_checked_sum(*(B * o for o in outs[:i])) for i in range(len(outs))]
    total = _checked_sum(*(B * o for o in outs))
    d = [total + off for off in y]
    xb = _checked_sum(2 * total)
    tb = _checked_sum(xb, B * int(layers[0][0]))
    lb = _checked_sum(tb, B * outs[-1])
    p = _checked_sum(lb, B)
    size = p if threads <= 1 else _checked_sum(p, 2 * int(threads) * B * max(outs))
    return {"Y": y, "D": d, "Xb": xb, "Tb": tb, "Lb": lb, "P": p, "size": size}


def epoch_workspace(layers, batch_size, threads=1):
    """Floats of workspace :func:`epoch_layout` describes."""
    return epoch_layout(layers, batch_size, threads)["size"]


# ---- the compiled epoch of any model: a plan of layer records --------------------------

class Op(enum.IntEnum):
    """The kinds of record of a model plan (C: ``FASTNN_OP_*``).

    Every record reads its input at workspace offset ``x`` (-1: the batch's
    input rows) and writes its output at ``y``; backward reads the output
    gradient at ``dy`` and writes the input gradient at ``dx`` (-1: not
    needed).  ``dy`` may be overwritten by the backward.  Shapes are per
    sample: input (h, w, c), output (oh, ow, oc); a batch of m rows is
    (m, h, w, c) row-major at the offset.
    """

    DENSE = 1       # y = act(x @ W + b): x (m, c) with c = h*w*c_in flattened; W (c, oc)
    CONV2D = 2      # conv2d_forward with cols at aux (m*oh*ow, kh*kw*c)
    MAXPOOL2D = 3   # argmax (m, oh, ow, oc) int32 at iaux
    AVGPOOL2D = 4   # (GlobalAvgPool: the pool is the whole (h, w))
    ACTIVATION = 5  # elementwise act over h*w*c
    SOFTMAX = 6     # row-wise over c (h = w = 1)
    BATCHNORM = 7   # rows m*h*w, c features; gamma at param, beta at bias; running
                    # mean/var at stat0/stat1 of the model's buffers; mean, invstd at aux, aux + c
    DROPOUT = 8     # y = x * mask, mask from philox(seed, counter + batch index, element)
    ADD = 9         # residual join: y = x + skip (skip at aux, -1: the batch's input
                    # rows); backward dx = dy (may be
                    # the same offset: no copy), daux = dy (a copy)
    FORK = 10       # residual split: forward nothing (y = x); backward dx = dy + daux
    RNN = 11        # a recurrent layer (fastnn.recurrent; the cell kind in field "cell"):
                    # see rnn_record_regions below


# The int64 fields of a record, in order (C: FASTNN_F_<NAME> indices).
PLAN_FIELDS = (
    "op",
    "x", "y", "dx", "dy",          # float workspace offsets (x, dx: -1 see Op)
    "aux", "daux", "iaux",         # auxiliary float offsets, int32 workspace offset
    "param", "bias",               # params/grads offsets (-1: none)
    "stat0", "stat1",              # model buffers offsets (BatchNorm's running stats)
    "h", "w", "c", "oh", "ow", "oc",
    "kh", "kw", "sh", "sw", "ph", "pw",
    "act",                         # Activation code (DENSE, CONV2D, ACTIVATION)
    "seed", "counter",             # DROPOUT: the key and the calls before this epoch
    # RNN (see rnn_record_regions): the cell kind, W_hh and b_hh offsets in
    # params, the gate cache's workspace offset
    "cell", "param_hh", "bias_hh", "cache",
)
# The float64 fields of a record (C: FASTNN_S_<NAME>).
PLAN_SCALARS = ("slope", "momentum", "eps", "p")
F = {name: i for i, name in enumerate(PLAN_FIELDS)}
S = {name: i for i, name in enumerate(PLAN_SCALARS)}


def record_regions(rec, batch):
    """The buffer regions a record touches for a batch of `batch` rows:
    a list of (buffer, offset, size), buffer one of "ws" (float workspace),
    "iws" (int32 workspace), "params" (also grads), "buffers".  Regions with
    offset -1 (absent) are left out.  The front and the C kernel check
    every region lies inside its buffer before anything runs."""
    r = [int(v) for v in rec]
    op = r[F["op"]]
    isz = r[F["h"]] * r[F["w"]] * r[F["c"]]
    osz = r[F["oh"]] * r[F["ow"]] * r[F["oc"]]
    B = int(batch)
    out = []

    def add(buf, field, size):
        if r[F[field]] != -1:
            out.append((buf, r[F[field]], size))

    add("ws", "x", B * isz)
    add("ws", "dx", B * isz)
    if op != Op.FORK:
        add("ws", "y", B * osz)
    add("ws", "dy", B * osz)
    if op in (Op.DENSE, Op.CONV2D):
        add("params", "param", r[F["kh"]] * r[F["kw"]] * r[F["c"]] * r[F["oc"]]
            if op == Op.CONV2D else isz * r[F["oc"]])
        add("params", "bias", r[F["oc"]])
        if op == Op.CONV2D:
            add("ws", "aux", B * r[F["oh"]] * r[F["ow"]] * r[F["kh"]] * r[F["kw"]] * r[F["c"]])
    elif op == Op.MAXPOOL2D:
        add("iws", "iaux", B * osz)
    elif op == Op.BATCHNORM:
        c = r[F["c"]]
        add("params", "param", c)
        add("params", "bias", c)
        add("buffers", "stat0", c)
        add("buffers", "stat1", c)
        add("ws", "aux", 2 * c)
    elif op in (Op.ADD, Op.FORK):
        add("ws", "aux", B * osz)
        add("ws", "daux", B * osz)
    elif op == Op.RNN:
        out.extend(rnn_record_regions(r, B))
    return out


def dropout_threshold(p):
    """Philox words whose top 24 bits are below this are dropped:
    ceil(p * 2^24) (exact in double), so P(drop) = threshold / 2^24."""
    return int(math.ceil(float(p) * 16777216.0))


def dropout_scale(p):
    """The kept elements' factor: float32(1 / (1 - p))."""
    return float(np.float32(1.0 / (1.0 - float(p))))


PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
PHILOX_ROUNDS = 10


@dataclass
class ModelEpoch:
    """Everything one training epoch of any compiled model needs: the one
    argument of ``model_epoch`` (fastnn.plan builds it; the reference's
    ``run_model_epoch`` gives the semantics).

    ``plan`` (records, len(PLAN_FIELDS)) int64 and ``plan_scalars``
    (records, len(PLAN_SCALARS)) float64 are the layer records, run in
    order forward and in reverse backward.  ``workspace`` (float32) and
    ``iworkspace`` (int32) hold every activation, gradient and auxiliary
    buffer at the records' offsets; the batch's gathered input rows are at
    ``xb`` (B, in_size), targets at ``tb`` (B, out_size) and labels at
    ``lb`` of iworkspace.  The model's output and its gradient are at
    ``output`` / ``doutput`` (B, out_size).  ``penalized`` (k, 2) int64 are
    the (offset, size) ranges of params the l2 term applies to.
    ``trainable`` (k, 2) int64, increasing and disjoint, or None (the whole
    buffer): the (offset, size) ranges of params that are clipped and
    updated -- a frozen layer's parameters lie outside them, so neither they
    nor their optimizer state change.
    ``clip_value`` / ``clip_norm``: 0.0 means no clipping.  Other fields as
    :class:`Epoch`.
    """

    params: object
    grads: object
    buffers: object
    states: tuple
    workspace: object
    iworkspace: object
    X: object
    targets: object
    batch_losses: object
    batch_correct: object
    plan: object
    plan_scalars: object
    penalized: object
    in_size: int = 0
    out_size: int = 0
    xb: int = 0
    tb: int = 0
    lb: int = 0
    output: int = 0
    doutput: int = 0
    loss: str = "softmax_xent"
    batch_size: int = 32
    optimizer: str = "adam"
    hyper: dict = field(default_factory=dict)
    step: int = 0
    mu_product: float = 1.0
    l2: float = 0.0
    loss_scale: float = 1.0
    grad_scale: float = 1.0
    clip_value: float = 0.0
    clip_norm: float = 0.0
    order: object = None
    trainable: object = None
    hook: object = None
    hook_every: int = 0

    @property
    def n_batches(self):
        rows = self.X.shape[0] if self.order is None else len(self.order)
        return -(-rows // self.batch_size)


# ---- the epoch hook ---------------------------------------------------------------------

class HookEvent(enum.IntEnum):
    """enum fastnn_hook_event: when ``ModelEpoch.hook(event, batch)`` is called.

    ``GRADS``: after every batch's backward (``epoch.grads`` holds the
    batch's gradient, the l2 term included), before clipping and the
    optimizer update -- a data-parallel all-reduce works here, in place on
    the grads.  Raised only when the hook asks for it (``hook.events``).
    ``BATCH``: after the update of every ``hook_every``-th batch (batch + 1
    a multiple of hook_every; hook_every = 0: none of these) and of the
    epoch's last batch (progress bars: ``epoch.batch_losses[:batch + 1]``
    are written).  ``batch`` is the 0-based batch index in the epoch.

    The hook returns normally to go on (its value is ignored).  If it
    raises, the epoch stops after that batch's update (BATCH: the batch
    counts as done) or before it (GRADS: it does not, the parameters are
    those after the previous batch) and the exception propagates from
    ``model_epoch`` unchanged (KeyboardInterrupt too).  A batch whose loss
    is not finite ends the epoch before its backward, without a hook call.
    """

    GRADS = 1
    BATCH = 2


DEFAULT_HOOK_EVENTS = frozenset({HookEvent.BATCH})


def hook_events(hook):
    """The events `hook` asks for: ``hook.events`` (a set of HookEvent),
    default {BATCH}; an empty frozenset for no hook.  ValueError for an
    events attribute that is not a collection of HookEvent members."""
    if hook is None:
        return frozenset()
    events = getattr(hook, "events", DEFAULT_HOOK_EVENTS)
    bad = ValueError(f"hook.events: expected a set of fastnn.kernels.spec.HookEvent, got "
                     f"{events!r}")
    if not isinstance(events, (set, frozenset, list, tuple)):
        raise bad
    out = set()
    for e in events:
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)) \
                or int(e) not in HookEvent._value2member_map_:
            raise bad
        out.add(HookEvent(int(e)))
    return frozenset(out)


class HookChain:
    """Several epoch hooks as one (the all-reduce and a progress bar): each
    gets the events it asks for, in order; ``events`` is their union."""

    def __init__(self, *hooks):
        self.hooks = [(h, hook_events(h)) for h in hooks if h is not None]
        self.events = frozenset().union(*(ev for _, ev in self.hooks))

    def __getattr__(self, name):  # e.g. a progress hook's counters
        for h, _ in self.__dict__.get("hooks", ()):
            if hasattr(h, name):
                return getattr(h, name)
        raise AttributeError(name)

    def __call__(self, event, batch):
        for h, events in self.hooks:
            if event in events:
                h(event, batch)


def hook_mask(events):
    """The C bit mask of a set of HookEvent (1 << event each)."""
    mask = 0
    for e in events:
        mask |= 1 << int(e)
    return mask


def hook_batch_due(batch, n_batches, every):
    """True if the BATCH event follows batch `batch` (0-based) of an epoch
    of n_batches: batch + 1 a multiple of `every` (> 0), or the last."""
    return batch == n_batches - 1 or (every > 0 and (batch + 1) % every == 0)


# ---- the kernels ----------------------------------------------------------------------

@dataclass(frozen=True)
class Kernel:
    """One kernel: its public signature (a Python parameter list), which
    parameters are outputs, what the public function returns (the name of an
    output; "value": the implementation's value, a float; None: nothing).
    Its arguments are normalised by ``_checks.prepare_<name>`` (the
    optimizers': ``_checks.prepare_optimizer``)."""

    name: str
    signature: str
    outputs: tuple
    returns: str = None

    @property
    def params(self):
        """The parameter names, in order (the implementation's signature)."""
        return tuple(self.python_signature().parameters)

    def python_signature(self):
        """The public signature as an inspect.Signature."""
        return inspect.signature(eval(f"lambda {self.signature}: None"))  # noqa: S307 - our text


_ACT = "activation, negative_slope=0.01"
_ACT_ID = 'activation="identity", negative_slope=0.01'


def _optimizer_kernel(o):
    defaults = o.kernel_defaults()
    opts = ([("step", None)] if o.step else []) + [
        (h.name, defaults.get(h.name)) for h in o.hyper] + [(name, None) for name in o.scalars]
    text = ", ".join(name if d is None else f"{name}={d!r}" for name, d in opts)
    return Kernel(o.name, f"params, grads, {', '.join(o.states)}, *, {text}",
                  ("params",) + o.states)


_V = "value"
KERNELS = {k.name: k for k in (
    Kernel("gemm", "A, B, C, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0", ("C",), "C"),
    Kernel("dense_forward", f"Y, X, W, b, *, {_ACT_ID}", ("Y",), "Y"),
    Kernel("dense_backward", f"dX, dW, db, dZ, dY, X, W, Y, *, {_ACT_ID}",
           ("dX", "dW", "db", "dZ")),
    Kernel("activation_forward", f"Y, X, *, {_ACT}", ("Y",), "Y"),
    Kernel("activation_backward", f"dX, dY, Y, *, {_ACT}", ("dX",), "dX"),
    Kernel("softmax_forward", "Y, X", ("Y",), "Y"),
    Kernel("softmax_backward", "dX, dY, Y", ("dX",), "dX"),
    Kernel("softmax_xent_forward", "P, Z, labels", ("P",), _V),
    Kernel("softmax_xent_backward", "dZ, P, labels", ("dZ",)),
    Kernel("bce_forward", "Z, T", (), _V),
    Kernel("bce_backward", "dZ, Z, T", ("dZ",)),
    Kernel("mse_forward", "Y, T", (), _V),
    Kernel("mse_backward", "dY, Y, T", ("dY",)),
    Kernel("mae_forward", "Y, T", (), _V),
    Kernel("mae_backward", "dY, Y, T", ("dY",)),
    *(_optimizer_kernel(o) for o in OPTIMIZERS.values()),
    Kernel("sum_squares", "x", (), _V),
    Kernel("scale", "x, s", ("x",)),
    Kernel("clip", "x, lo, hi", ("x",)),
    Kernel("axpy", "y, x, alpha", ("y",)),
    Kernel("dense_stack_epoch", "epoch", ("epoch",), _V),
    Kernel("model_epoch", "epoch", ("epoch",), _V),
    Kernel("model_epochs", "epochs", ("epochs",), _V),
    Kernel("dropout_forward", "Y, X, *, p, seed, counter", ("Y",), "Y"),
    Kernel("dropout_backward", "dX, dY, *, p, seed, counter", ("dX",), "dX"),
    Kernel("conv2d_forward", "Y, X, W, b, cols, *, stride=(1, 1), padding=(0, 0), "
           f"{_ACT_ID}", ("Y", "cols"), "Y"),
    Kernel("conv2d_backward", "dX, dW, db, dZ, dY, X, W, Y, cols, *, stride=(1, 1), "
           f"padding=(0, 0), {_ACT_ID}", ("dX", "dW", "db", "dZ", "cols")),
    Kernel("maxpool2d_forward", "Y, X, argmax, *, pool, stride=None", ("Y", "argmax"), "Y"),
    Kernel("maxpool2d_backward", "dX, dY, argmax, *, pool, stride=None", ("dX",)),
    Kernel("avgpool2d_forward", "Y, X, *, pool, stride=None", ("Y",), "Y"),
    Kernel("avgpool2d_backward", "dX, dY, *, pool, stride=None", ("dX",)),
    Kernel("batchnorm_forward", "Y, X, gamma, beta, mean, invstd, running_mean, running_var, "
           "*, momentum=0.1, eps=1e-5", ("Y", "mean", "invstd", "running_mean", "running_var"),
           "Y"),
    Kernel("batchnorm_inference", "Y, X, gamma, beta, running_mean, running_var, *, eps=1e-5",
           ("Y",), "Y"),
    Kernel("batchnorm_backward", "dX, dgamma, dbeta, dY, X, gamma, mean, invstd",
           ("dX", "dgamma", "dbeta")),
)}

# ---- recurrent layers (fastnn.recurrent): their kernels and plan record ------------------

class Cell(enum.IntEnum):
    """enum fastnn_rnn_cell: the cell of a recurrent layer (torch's equations
    and gate order; G gates of H columns each)."""

    RNN = 1    # h' = act(x W_ih + b_ih + h W_hh + b_hh), act tanh or relu
    GRU = 2    # gates r, z, n
    LSTM = 3   # gates i, f, g, o


CELLS = tuple(c.name.lower() for c in Cell)
RNN_GATES = {Cell.RNN: 1, Cell.GRU: 3, Cell.LSTM: 4}
# Floats of the gate cache per sample and step, in units of H: what the
# forward keeps for backpropagation through time (reference.rnn_forward).
RNN_CACHE = {Cell.RNN: 1, Cell.GRU: 4, Cell.LSTM: 5}
RNN_ACTIVATIONS = ("tanh", "relu")


def cell_code(cell):
    """The code of a cell name; ValueError otherwise."""
    try:
        return int(Cell[str(cell).upper()]) if cell in CELLS else int(Cell(cell))
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"cell: unknown {cell!r}; expected one of {', '.join(CELLS)}") from None


def rnn_record_regions(r, B):
    """The regions of an RNN record beyond x, dx, y, dy (record_regions).

    Input (h, w, c) = (1, L, C), output (1, 1, H) or (1, L, H) (``oc`` = H).
    W_ih (C, G H) at param, W_hh (H, G H) at param_hh, b_ih and b_hh (G H)
    at bias and bias_hh; every step's hidden state Hs (B, L, H) at aux and
    its gradient dHs at daux (aux == y and daux == dy: the output is Hs,
    return_sequences; else y is Hs's last step); the gate cache (B, L, K H)
    at cache, K = RNN_CACHE[cell]."""
    L, C, H = r[F["w"]], r[F["c"]], r[F["oc"]]
    cell = r[F["cell"]]
    if cell not in set(Cell.__members__.values()):
        return []  # (the validator refuses the record)
    G = RNN_GATES[Cell(cell)]
    out = []
    for buf, name, size in (("params", "param", C * G * H), ("params", "param_hh", H * G * H),
                            ("params", "bias", G * H), ("params", "bias_hh", G * H),
                            ("ws", "aux", B * L * H), ("ws", "daux", B * L * H),
                            ("ws", "cache", B * L * RNN_CACHE[Cell(cell)] * H)):
        out.append((buf, r[F[name]], size))
    return out


_RNN_OPTS = 'cell, activation="tanh"'
KERNELS.update({k.name: k for k in (
    Kernel("rnn_forward", f"Hs, G, X, W_ih, W_hh, b_ih, b_hh, *, {_RNN_OPTS}", ("Hs", "G"), "Hs"),
    Kernel("rnn_backward", f"dX, dW_ih, dW_hh, db_ih, db_hh, dHs, G, X, W_ih, W_hh, Hs, *, "
           f"{_RNN_OPTS}", ("dX", "dW_ih", "dW_hh", "db_ih", "db_hh", "dHs", "G")),
)})

# Functions every backend module has besides the kernels (not validated by
# the front: they take no arrays from the user or check their own).
RUNTIME = ("info", "empty", "zeros", "asarray", "to_numpy")
