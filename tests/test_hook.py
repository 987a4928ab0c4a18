"""The epoch hook of model_epoch (spec.HookEvent): the events and their
order, the gradients the GRADS event sees (the reference's, and changed in
place they are the ones applied), stop-by-exception (n_done, the exception
unchanged), hook_every, the front's checks -- on every backend, through the
c backend's two schedulers (the plan interpreter and the dense stack)."""

import numpy as np
import pytest

from fastnn import Conv2D, Dense, Dropout, Flatten, MaxPool2D, Sequential, Trainer, kernels
from fastnn import optim
from fastnn.kernels import spec

from .conftest import require

G, B = spec.HookEvent.GRADS, spec.HookEvent.BATCH
BACKENDS = ("reference", "c", "numba")  # (cuda runs the reference's loop: one test below)

MODELS = {
    # a plain dense stack: the c backend's threaded dense-stack scheduler (train.c)
    "mlp": (lambda: [Dense(12, 40, activation="relu"), Dense(40, 3)], (12,)),
    # the plan interpreter (plan.c), dropout's counters included
    "cnn": (lambda: [Conv2D(1, 3, 3, padding=1, activation="relu"), MaxPool2D(2), Flatten(),
                     Dropout(0.2), Dense(12, 3)], (4, 4, 1)),
}
N, BS = 150, 32  # 5 batches, the last of 22 rows


class Recorder:
    """A hook that records (event, batch, grads or params copy); raises
    `stop` at (event, batch) `at`; `scale` multiplies the grads in place at
    GRADS."""

    def __init__(self, epoch_ref, events=(G, B), at=None, stop=None, scale=None):
        self.events = frozenset(events)
        self.log, self.e, self.at, self.stop, self.scale = [], epoch_ref, at, stop, scale

    def __call__(self, event, batch):
        assert isinstance(event, spec.HookEvent)
        e = self.e[0]
        buf = e.grads if event == G else e.params
        self.log.append((event, batch, np.array(buf, copy=True)))
        if event == G and self.scale is not None:
            e.grads[:] = e.grads * self.scale
        if (event, batch) == self.at:
            raise self.stop


def setup(name, backend, optimizer="adam", **trainer_kw):
    """A trainer and one compiled epoch of it, ready to run: (kernel,
    epoch, trainer)."""
    layers, shape = MODELS[name]
    model = Sequential(layers(), seed=5, backend=backend, input_shape=shape)
    opt = optim.get(optimizer) if isinstance(optimizer, str) else optimizer
    tr = Trainer(model, "softmax_cross_entropy", opt, fused=True, **trainer_kw)
    rng = np.random.default_rng(2)
    X = rng.normal(size=(N,) + shape).astype(np.float32)
    y = rng.integers(0, 3, N)
    ce = tr._fused_epoch(N, BS)
    epoch = ce.build(X, tr._targets(y, N), np.random.default_rng(0).permutation(N))
    epoch.batch_losses[:] = np.nan
    return tr._k, epoch, tr


def host(a):
    return np.asarray(kernels.get("cuda").to_numpy(a) if hasattr(a, "copy_to_host") else a)


def run(name, backend, hook_every=0, optimizer="adam", **rec):
    require(backend) if backend != "reference" else None
    k, e, tr = setup(name, backend, optimizer)
    ref = [e]
    hook = Recorder(ref, **rec) if rec.get("events", True) else None
    e.hook, e.hook_every = hook, hook_every
    result = k.model_epoch(e)
    return result, hook, host(tr.model.params).copy(), e


def plain(name, backend, optimizer="adam"):
    require(backend) if backend != "reference" else None
    k, e, tr = setup(name, backend, optimizer)
    return k.model_epoch(e), host(tr.model.params).copy()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_events_in_order_and_the_trajectory_unchanged(name, backend):
    result, hook, params, _ = run(name, backend, hook_every=2)
    assert [(ev, b) for ev, b, _ in hook.log] == [
        (G, 0), (G, 1), (B, 1), (G, 2), (G, 3), (B, 3), (G, 4), (B, 4)]
    assert result[:2] == (5, 5)
    # a hook that only looks changes nothing, bit for bit (the dense stack
    # defers its per-layer updates until after GRADS: the same arithmetic)
    base, base_params = plain(name, backend)
    assert base == result
    np.testing.assert_array_equal(params, base_params)
    # BATCH sees the parameters after the update; the last one the final ones
    np.testing.assert_array_equal(hook.log[-1][2], params)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("backend", ("c", "numba"))
def test_grads_and_params_the_hook_sees_are_the_references(name, backend):
    _, ref_hook, _, _ = run(name, "reference", hook_every=1)
    _, hook, _, _ = run(name, backend, hook_every=1)
    assert [(ev, b) for ev, b, _ in hook.log] == [(ev, b) for ev, b, _ in ref_hook.log]
    for (ev, b, got), (_, _, want) in zip(hook.log, ref_hook.log):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=f"{ev.name} {b}")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_grads_changed_in_place_are_the_ones_applied(name, backend):
    """Plain SGD: gradients doubled by the hook = the learning rate doubled."""
    _, _, params, _ = run(name, backend, optimizer=optim.SGD(lr=0.1), events={G}, scale=2.0)
    _, want = plain(name, backend, optimizer=optim.SGD(lr=0.2))
    np.testing.assert_allclose(params, want, rtol=1e-5, atol=1e-6)


class Stop(Exception):
    pass


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("event", [B, G])
def test_an_exception_stops_the_epoch_and_propagates_unchanged(name, backend, event):
    _, full, _, _ = run(name, backend, hook_every=1)
    after = {b: p for ev, b, p in full.log if ev == B}  # params after batch b's update
    err = Stop("from the hook")
    require(backend) if backend != "reference" else None
    k, e, tr = setup(name, backend)
    steps0 = tr.optimizer.step_count
    states0 = [host(s).copy() for s in tr.optimizer.kernel_spec()[1]]
    e.hook, e.hook_every = Recorder([e], at=(event, 2), stop=err), 1
    with pytest.raises(Stop) as info:
        k.model_epoch(e)
    assert info.value is err
    assert [(ev, b) for ev, b, _ in e.hook.log][-1] == (event, 2)
    losses = host(e.batch_losses)
    # BATCH at 2: batches 0-2 done (n_done 3); GRADS at 2: batch 2's loss
    # computed, its update not applied (n_done 2)
    done = 3 if event == B else 2
    assert np.isfinite(losses[:3]).all() and np.isnan(losses[3:]).all()
    np.testing.assert_array_equal(host(tr.model.params), after[done - 1])
    assert tr.optimizer.step_count == steps0  # (the caller takes the counters back)
    assert any((host(s) != s0).any() for s, s0 in zip(tr.optimizer.kernel_spec()[1], states0))


@pytest.mark.parametrize("backend", ("reference", "c", "numba"))
def test_keyboard_interrupt_in_the_hook_propagates(backend):
    err = KeyboardInterrupt()
    k, e, _ = setup("mlp", backend)
    e.hook, e.hook_every = Recorder([e], events={B}, at=(B, 0), stop=err), 1
    with pytest.raises(KeyboardInterrupt) as info:
        k.model_epoch(e)
    assert info.value is err


@pytest.mark.parametrize("backend", ("reference", "c", "numba"))
@pytest.mark.parametrize("every, want", [(0, [4]), (1, [0, 1, 2, 3, 4]), (3, [2, 4]),
                                         (5, [4]), (100, [4])])
def test_hook_every(backend, every, want):
    _, hook, _, _ = run("mlp", backend, hook_every=every, events={B})
    assert [b for ev, b, _ in hook.log] == want
    assert all(ev == B for ev, _, _ in hook.log)


@pytest.mark.parametrize("backend", ("reference", "c", "numba"))
def test_default_events_are_batch_only(backend):
    k, e, _ = setup("cnn", backend)
    seen = []
    e.hook = lambda event, batch: seen.append((event, batch))
    e.hook_every = 2
    k.model_epoch(e)
    assert seen == [(B, 1), (B, 3), (B, 4)]


@pytest.mark.parametrize("backend", ("reference", "c", "numba"))
def test_a_non_finite_loss_ends_the_epoch_without_a_hook_call(backend):
    k, e, tr = setup("mlp", backend, optimizer=optim.SGD(lr=1e30))
    seen = []
    e.hook, e.hook_every = (lambda ev, b: seen.append((ev, b))), 1
    done, _, _ = k.model_epoch(e)
    assert done < 5 and not np.isfinite(host(e.batch_losses)[done - 1])
    assert seen == [(B, b) for b in range(done - 1)]


@pytest.mark.parametrize("backend", ("reference", "c", "numba"))
def test_front_refuses_bad_hooks_before_running(backend):
    k, e, tr = setup("mlp", backend)
    before = host(tr.model.params).copy()

    class Bad:
        events = {"grads"}

        def __call__(self, event, batch):
            pass

    for over, exc, match in [({"hook": 3}, TypeError, "hook"),
                             ({"hook": Bad()}, ValueError, "hook.events"),
                             ({"hook": print, "hook_every": -1}, ValueError, "hook_every"),
                             ({"hook": print, "hook_every": 1.5}, ValueError, "hook_every")]:
        saved = (e.hook, e.hook_every)
        for key, v in over.items():
            setattr(e, key, v)
        with pytest.raises(exc, match=match):
            k.model_epoch(e)
        e.hook, e.hook_every = saved
    np.testing.assert_array_equal(host(tr.model.params), before)


def test_c_refuses_bad_hook_fields_itself():
    """Past the front: the C epoch checks hook_every and hook_events too."""
    from fastnn._ckernels import lib
    from fastnn.kernels import c as cmod

    k, e, _ = setup("mlp", "c")
    e.hook = print
    (checked,) = spec_checked(k, e)
    struct, keep = cmod._model_epoch_struct(checked)
    for field, value in (("hook_every", -1), ("hook_events", 1 << 5)):
        saved = getattr(struct, field)
        setattr(struct, field, value)
        assert lib.fastnn_model_epoch_run(struct) != 0
        setattr(struct, field, saved)
    del keep


def spec_checked(k, e):
    from fastnn.kernels import _checks

    return _checks.prepare_model_epoch(e, np.float32)


def test_model_epochs_calls_each_epochs_hook():
    k = kernels.get("c")
    runs = [setup(name, "c") for name in ("mlp", "cnn", "mlp")]
    logs = []
    for _, e, _ in runs:
        log = []
        logs.append(log)
        e.hook = (lambda log: lambda ev, b: log.append((ev, b)))(log)
        e.hook_every = 2
    k.model_epochs([e for _, e, _ in runs])
    assert logs == [[(B, 1), (B, 3), (B, 4)]] * 3
    err = Stop()
    runs = [setup("mlp", "c") for _ in range(2)]
    runs[1][1].hook = Recorder([runs[1][1]], events={B}, at=(B, 1), stop=err)
    runs[1][1].hook_every = 1
    with pytest.raises(Stop) as info:
        k.model_epochs([e for _, e, _ in runs])
    assert info.value is err


@pytest.mark.slow  # (the CUDA simulator: ~1 min)
def test_cuda_hook_events_and_stop():
    require("cuda")
    _, hook, params, _ = run("mlp", "cuda", hook_every=2)
    assert [(ev, b) for ev, b, _ in hook.log] == [
        (G, 0), (G, 1), (B, 1), (G, 2), (G, 3), (B, 3), (G, 4), (B, 4)]
    _, ref_hook, _, _ = run("mlp", "reference", hook_every=2)
    for (ev, b, got), (_, _, want) in zip(hook.log, ref_hook.log):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=f"{ev.name} {b}")
    k, e, _ = setup("mlp", "cuda")
    err = Stop()
    e.hook, e.hook_every = Recorder([e], at=(G, 1), stop=err), 1
    with pytest.raises(Stop) as info:
        k.model_epoch(e)
    assert info.value is err and [(ev, b) for ev, b, _ in e.hook.log][-1] == (G, 1)


@pytest.mark.parametrize("threads", [1, 2])
def test_threaded_dense_stack_with_a_grads_hook(threads):
    """The dense-stack scheduler's team (784-256-10 at batch 32 is split
    over two threads): the hook sees the whole gradient, the deferred
    updates give the bits of the epoch without a hook."""
    from fastnn.kernels import c as cmod

    before = cmod.epoch_threads()
    cmod.set_num_threads(threads)
    try:
        def one(hooked):
            model = Sequential([Dense(784, 256, activation="relu"), Dense(256, 10)], seed=1,
                               backend="c")
            tr = Trainer(model, "softmax_cross_entropy", optim.Adam(), fused=True)
            rng = np.random.default_rng(0)
            X = rng.random((200, 784), dtype=np.float32)
            ce = tr._fused_epoch(200, 32)
            e = ce.build(X, tr._targets(rng.integers(0, 10, 200), 200), None)
            if hooked:
                e.hook = Recorder([e], events={G, B})
                e.hook_every = 3
            assert tr._k.model_epoch(e)[:2] == (7, 7)
            return model.get_params(), (e.hook.log if hooked else None)

        plain_params, _ = one(False)
        params, log = one(True)
        np.testing.assert_array_equal(params, plain_params)
        assert [(ev, b) for ev, b, _ in log] == [
            (G, 0), (G, 1), (G, 2), (B, 2), (G, 3), (G, 4), (G, 5), (B, 5), (G, 6), (B, 6)]
        # the first batch's gradient is the reference's
        model = Sequential([Dense(784, 256, activation="relu"), Dense(256, 10)], seed=1,
                           backend="reference")
        tr = Trainer(model, "softmax_cross_entropy", optim.Adam(), fused=True)
        rng = np.random.default_rng(0)
        X = rng.random((200, 784), dtype=np.float32)
        e = tr._fused_epoch(200, 32).build(X, tr._targets(rng.integers(0, 10, 200), 200), None)
        e.hook = Recorder([e], events={G})
        tr._k.model_epoch(e)
        np.testing.assert_allclose(log[0][2], e.hook.log[0][2], rtol=1e-4, atol=1e-6)
        assert cmod.epoch_threads() == threads
    finally:
        cmod.set_num_threads(before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clipping_and_l2_with_a_grads_hook(backend):
    """GRADS sees the gradient with l2's term, before clipping; the epoch's
    bits are those without a hook (numba: the update after the hook is
    _finish_batch's)."""
    kw = dict(l2=0.5, clip_value=0.05, clip_norm=0.1)
    results = []
    for hooked in (False, True):
        k, e, tr = setup("cnn", backend, **kw)
        if hooked:
            e.hook, e.hook_every = Recorder([e], events={G}), 0
        k.model_epoch(e)
        results.append((host(tr.model.params).copy(), e.hook))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    grads0 = results[1][1].log[0][2]
    assert np.abs(grads0).max() > 0.05  # not clipped yet when the hook sees it
    k, e, tr = setup("cnn", "reference", **kw)
    e.hook = Recorder([e], events={G})
    k.model_epoch(e)
    np.testing.assert_allclose(grads0, e.hook.log[0][2], rtol=1e-4, atol=1e-6)
    k, e, tr = setup("cnn", "reference", **dict(kw, l2=0.0))
    e.hook = Recorder([e], events={G})
    k.model_epoch(e)
    assert not np.allclose(grads0, e.hook.log[0][2], rtol=1e-3, atol=1e-5)  # l2 is in
