"""fastnn.fit_many: many trainers on the same data, each ending where its
own fit would."""

import dataclasses

import numpy as np
import pytest

import fastnn
from fastnn import BatchNorm, Dense, Dropout, ReLU, Sequential, Trainer, fit_many, optim
from fastnn.kernels import spec

from .conftest import require
from .test_threads import c_threads


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 10)).astype(np.float32), rng.integers(0, 3, n)


def _trainer(i, backend, optimizer="adam", fused=None, dropout=False):
    layers = [Dense(10, 12), BatchNorm(12), ReLU()] + ([Dropout(0.2)] if dropout else []) \
        + [Dense(12, 3)]
    opt = optim.get(optimizer)
    return Trainer(Sequential(layers, seed=10 + i, backend=backend), "softmax_cross_entropy", opt,
                   fused=fused)


@pytest.mark.parametrize("backend", ["reference", "c", "numba"])
@pytest.mark.parametrize("optimizer", sorted(spec.OPTIMIZERS))
def test_each_trainer_ends_where_its_own_fit_would(optimizer, backend):
    if backend != "reference":
        require(backend)
    X, y = _data()
    rows = [np.arange(0, 100), np.arange(20, 120)[::-1], np.arange(120)]
    together = [_trainer(i, backend, optimizer, dropout=i == 1) for i in range(3)]
    histories = fit_many(together, X, y, epochs=2, batch_size=16, seed=5, rows=rows,
                         verbose=False)
    for i, (tr, h) in enumerate(zip(together, histories)):
        alone = _trainer(i, backend, optimizer, dropout=i == 1)
        h_alone = alone.fit(X[rows[i]], y[rows[i]], epochs=2, batch_size=16, seed=5,
                            verbose=False)
        np.testing.assert_allclose(tr.model.get_params(), alone.model.get_params(),
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(tr.model.get_buffers(), alone.model.get_buffers(),
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(h.loss, h_alone.loss, rtol=1e-6)
        assert h.diverged is None


def test_batch_by_batch_trainers_too():
    X, y = _data()
    together = [_trainer(i, "reference", fused=False) for i in range(2)]
    fit_many(together, X, y, epochs=2, batch_size=32, seed=1, verbose=False)
    for i, tr in enumerate(together):
        alone = _trainer(i, "reference", fused=False)
        alone.fit(X, y, epochs=2, batch_size=32, seed=1, verbose=False)
        np.testing.assert_array_equal(tr.model.get_params(), alone.model.get_params())


def test_a_diverging_trainer_stops_alone():
    X, y = _data()
    X[:, 0] *= 1e4
    good = Trainer(Sequential([Dense(10, 8, "relu"), Dense(8, 3)], seed=1), "softmax_cross_entropy",
                   optim.SGD(lr=1e-3))
    bad = Trainer(Sequential([Dense(10, 8, "relu"), Dense(8, 3)], seed=1), "softmax_cross_entropy",
                  optim.SGD(lr=1e6))
    with pytest.raises(FloatingPointError, match=r"trainer 1: epoch \d+, batch \d+"):
        fit_many([good, bad], X, y, epochs=3, batch_size=16, seed=0, verbose=False)
    good2 = Trainer(Sequential([Dense(10, 8, "relu"), Dense(8, 3)], seed=1),
                    "softmax_cross_entropy", optim.SGD(lr=1e-3))
    bad2 = Trainer(Sequential([Dense(10, 8, "relu"), Dense(8, 3)], seed=1),
                   "softmax_cross_entropy", optim.SGD(lr=1e6))
    hs = fit_many([good2, bad2], X, y, epochs=3, batch_size=16, seed=0, verbose=False,
                  errors="ignore")
    assert hs[0].diverged is None and hs[0].epochs == 3
    epoch, batch = hs[1].diverged
    assert hs[1].epochs == epoch
    assert np.all(np.isfinite(bad2.model.get_params()))  # stopped before the bad update


@pytest.mark.parametrize("kw, match", [
    ({"trainers": []}, "empty"),
    ({"rows": [np.arange(5)]}, "rows"),
    ({"rows": [np.arange(5), np.array([], int)]}, r"rows\[1\]"),
    ({"rows": [np.arange(5), np.array([0, 999])]}, r"rows\[1\]"),
    ({"errors": "warn"}, "errors"),
    ({"epochs": -1}, "epochs"),
    ({"y": np.zeros(7, int)}, "lengths"),
])
def test_bad_input_is_refused_before_training(kw, match):
    X, y = _data()
    trainers = [_trainer(i, "reference") for i in range(2)]
    before = [tr.model.get_params() for tr in trainers]
    args = {"trainers": trainers, "X": X, "y": y, **kw}
    with pytest.raises((ValueError, TypeError), match=match):
        fit_many(args.pop("trainers"), args.pop("X"), args.pop("y"), verbose=False, **args)
    for tr, p in zip(trainers, before):
        np.testing.assert_array_equal(tr.model.get_params(), p)


def test_trainers_on_different_backends_are_refused():
    X, y = _data()
    with pytest.raises(ValueError, match="backend"):
        fit_many([_trainer(0, "reference"), _trainer(1, "c")], X, y, verbose=False)


def test_fit_many_is_exported():
    assert fastnn.fit_many is fit_many


def test_model_epochs_refuses_epochs_that_write_the_same_memory():
    """Many epochs in one call may share what they read (X, targets,
    order), never what they write."""
    X, y = _data(40)
    trainers = [_trainer(i, "c") for i in range(2)]
    built = []
    for tr in trainers:
        run = tr._fit_run(X, tr._targets(y, 40), None, 1, 8, None, True, 0, (), None, plan=True)
        built.append(run.runner.build(run.next_order()))
    k = fastnn.kernels.get("c")
    clash = dataclasses.replace(built[1], workspace=built[0].workspace)
    with pytest.raises(ValueError, match=r"epochs\[1\]\.workspace"):
        k.model_epochs([built[0], clash])
    clash = dataclasses.replace(built[1], X=built[0].workspace[:40 * 10].reshape(40, 10))
    with pytest.raises(ValueError, match=r"epochs\[0\]\.workspace"):
        k.model_epochs([built[0], clash])
    assert [r[0] for r in k.model_epochs(built)] == [5, 5]


def _stack_trainer(i, optimizer, acts=("relu", "tanh"), l2=0.0, width=24):
    layers = [Dense(10, width, activation=acts[0]), Dense(width, 40, activation=acts[1]),
              Dense(40, 3)]
    return Trainer(Sequential(layers, seed=20 + i, backend="c"), "softmax_cross_entropy",
                   optim.get(optimizer), l2=l2)


@pytest.mark.parametrize("optimizer", sorted(spec.OPTIMIZERS))
def test_dense_stacks_end_bit_for_bit_where_their_own_fit_would(optimizer):
    """Small dense stacks take csrc/many_dense.c's one-thread epoch (the
    products without packing); trainer.fit runs train.c's.  Both sum every
    product in the same order: the same bits, on 1 and 2 threads."""
    require("c")
    X, y = _data(150)
    rows = [np.arange(0, 130), np.arange(10, 150)[::-1], None]
    rows[2] = np.arange(150)
    for threads in (1, 2):
        with c_threads(threads):
            together = [_stack_trainer(i, optimizer, l2=0.01 * (i == 1),
                                       acts=("relu", "leaky_relu") if i == 2 else ("relu", "tanh"))
                        for i in range(3)]
            hs = fit_many(together, X, y, epochs=2, batch_size=16, seed=3, rows=rows,
                          verbose=False)
            for i, (tr, h) in enumerate(zip(together, hs)):
                alone = _stack_trainer(i, optimizer, l2=0.01 * (i == 1),
                                       acts=("relu", "leaky_relu") if i == 2 else ("relu", "tanh"))
                h_alone = alone.fit(X[rows[i]], y[rows[i]], epochs=2, batch_size=16, seed=3,
                                    verbose=False)
                np.testing.assert_array_equal(tr.model.get_params(), alone.model.get_params())
                np.testing.assert_array_equal(h.loss, h_alone.loss)
                for name, state in alone.optimizer.state.items():
                    if isinstance(state, np.ndarray):
                        np.testing.assert_array_equal(tr.optimizer.state[name], state)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_chunked_dense_stacks_end_bit_for_bit_too(optimizer):
    """An epoch large enough for train.c to cut each input of >= 128
    features into fixed chunks (batch x multiply-adds >= 4.2M): the
    one-thread epoch chains the same chunks."""
    require("c")
    X, y = _data(300)

    def make(i):
        layers = [Dense(10, 300, activation="relu"), Dense(300, 150, activation="relu"),
                  Dense(150, 3)]
        return Trainer(Sequential(layers, seed=30 + i, backend="c"), "softmax_cross_entropy",
                       optim.get(optimizer), l2=0.001)

    with c_threads(2):
        together = [make(i) for i in range(2)]
        hs = fit_many(together, X, y, epochs=1, batch_size=128, seed=1, verbose=False)
        for i, (tr, h) in enumerate(zip(together, hs)):
            alone = make(i)
            h_alone = alone.fit(X, y, epochs=1, batch_size=128, seed=1, verbose=False)
            np.testing.assert_array_equal(tr.model.get_params(), alone.model.get_params())
            np.testing.assert_array_equal(h.loss, h_alone.loss)


# ---- the front's checks of a bank's static parts, made once ---------------------------

def _built_epochs(n_models=2, rows=40):
    """Each trainer's first epoch as the fit would build it (c backend)."""
    X, y = _data(rows)
    trainers = [_stack_trainer(i, "adam") for i in range(n_models)]
    built = []
    for tr in trainers:
        run = tr._fit_run(X, tr._targets(y, rows), None, 1, 8, None, True, 0, (), None, plan=True)
        built.append(run.runner.build(run.next_order()))
    return trainers, built


def _same_field(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)  # the same memory
                and (a.shape, a.strides, a.dtype) == (b.shape, b.strides, b.dtype)
                and a.__array_interface__["data"] == b.__array_interface__["data"])
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same_field(u, v) for u, v in zip(a, b))
    return type(a) is type(b) and a == b


def test_cached_checks_give_the_full_checks_epoch():
    """The second call of an epoch takes the cache (the static parts are
    not checked again) and hands the kernel what the full check would."""
    from fastnn.kernels import _checks

    _, built = _built_epochs(1)
    e = dataclasses.replace(built[0], step=7, hyper=dict(built[0].hyper, lr=0.5))
    _checks.prepare_model_epoch(built[0], np.float32)
    cached, static = _checks._prepare_model_epoch(e, np.float32)
    assert static is not None and static is _checks._prepare_model_epoch(e, np.float32)[1]
    full = _checks._check_model_epoch(e, np.float32)
    for f in dataclasses.fields(spec.ModelEpoch):
        assert _same_field(getattr(cached, f.name), getattr(full, f.name)), f.name
    assert cached.hyper["lr"] == 0.5 and cached.step == 7


def test_a_new_epoch_in_a_checked_layout_gets_the_full_checks_epoch():
    """Another model's epoch of the same layout (new arrays: a bank's
    others, every fit's first epoch) takes the layout cache -- only its
    memory and the dynamic parts are checked -- and hands the kernel what
    the full check would."""
    from fastnn.kernels import _checks

    _, built = _built_epochs(2)
    _checks.prepare_model_epoch(built[0], np.float32)
    e = dataclasses.replace(built[1], step=3)
    assert id(e.workspace) not in _checks._STATIC
    found, _ = _checks._static_key(e, np.float32)
    assert _checks._layout_key(found) in _checks._LAYOUTS
    cached, static = _checks._prepare_model_epoch(e, np.float32)
    full = _checks._check_model_epoch(e, np.float32)
    for f in dataclasses.fields(spec.ModelEpoch):
        assert _same_field(getattr(cached, f.name), getattr(full, f.name)), f.name
    assert static.key == found and _checks._STATIC[id(e.workspace)][1] is static


def _x_in_the_workspace(e):
    x = e.workspace[:e.X.size].reshape(e.X.shape)
    x[:] = e.X
    return dataclasses.replace(e, X=x), "workspace: output overlaps input X"


def _grads_are_params(e):
    return (dataclasses.replace(e, grads=e.params),
            r"params: output overlaps input grads \(the same array\)")


def _states_share_memory(e):
    return (dataclasses.replace(e, states=(e.states[0], e.states[0])),
            r"v: output overlaps input m \(the same array\)")


@pytest.mark.parametrize("change", [_x_in_the_workspace, _grads_are_params, _states_share_memory])
def test_an_aliased_epoch_in_a_checked_layout_is_refused(change):
    """The layout cache checks the memory of every new epoch: one whose
    outputs meet its inputs or each other gets the full check's
    ValueError, before any kernel runs."""
    k = fastnn.kernels.get("c")
    trainers, built = _built_epochs(2)
    k.model_epoch(built[0])  # its layout checked
    before = trainers[1].model.get_params()
    changed, match = change(built[1])
    with pytest.raises(ValueError, match=match):
        k.model_epoch(changed)
    np.testing.assert_array_equal(trainers[1].model.get_params(), before)


def _plan_outside(e):
    e.plan[-1, spec.F["y"]] = e.workspace.size  # in place: the same array
    return e, r"plan\[\d+\] \(DENSE\): region"


def _workspace_reshaped(e):
    e.workspace.shape = (2, e.workspace.size // 2)  # in place: same object, 2-D
    return e, "workspace: expected a 1-D array"


def _lr_negative(e):
    return dataclasses.replace(e, hyper=dict(e.hyper, lr=-1.0)), "lr: must be >= 0"


def _label_out_of_range(e):
    e.targets[3] = 3  # in place: 3 classes
    return e, r"targets: must lie in \[0, 3\)"


def _order_in_the_workspace(e):
    ws = e.workspace
    order = ws.view(np.int64)[:len(e.order)]
    order[:] = 0
    return dataclasses.replace(e, order=order), "workspace: output overlaps input order"


def _params_replaced(e):
    return dataclasses.replace(e, params=np.zeros(e.params.size - 1, np.float32)), "grads"


def _state_read_only(e):
    e.states[0].flags.writeable = False
    return e, "read-only"


def _step_too_large(e):
    return dataclasses.replace(e, step=2 ** 63), "step"


@pytest.mark.parametrize("change", [_plan_outside, _workspace_reshaped, _lr_negative,
                                    _label_out_of_range, _order_in_the_workspace,
                                    _params_replaced, _state_read_only, _step_too_large])
@pytest.mark.parametrize("many", [False, True])
def test_what_changes_between_epochs_is_checked_again(change, many):
    """After a first call has cached an epoch's static checks, a change
    between epochs (in place or by a new array or value) is refused with
    the ValueError the full check gives, before any kernel runs."""
    k = fastnn.kernels.get("c")
    trainers, built = _built_epochs(2)
    run = (lambda es: k.model_epochs(es)) if many else (lambda es: [k.model_epoch(es[0])])
    run(built)  # fills the cache
    before = [tr.model.get_params() for tr in trainers]
    changed, match = change(built[0])
    with pytest.raises(ValueError, match=match):
        run([changed] + built[1:])
    for tr, params in zip(trainers, before):
        np.testing.assert_array_equal(tr.model.get_params(), params)


def test_an_order_in_another_epochs_memory_is_refused_from_the_cache():
    k = fastnn.kernels.get("c")
    _, built = _built_epochs(2)
    k.model_epochs(built)
    order = built[1].grads.view(np.int64)[:len(built[0].order)]
    order[:] = 0
    with pytest.raises(ValueError, match=r"epochs\[1\]\.grads: output overlaps epochs\[0\]"):
        k.model_epochs([dataclasses.replace(built[0], order=order), built[1]])


def test_the_cache_forgets_a_workspace_that_is_gone():
    import gc

    from fastnn.kernels import _checks

    trainers, built = _built_epochs(1)
    fastnn.kernels.get("c").model_epochs(built)
    key = id(built[0].workspace)
    assert key in _checks._STATIC
    del trainers, built
    gc.collect()
    assert key not in _checks._STATIC
