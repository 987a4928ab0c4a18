"""Learning-rate schedules and gradient clipping against torch's definitions."""

import math

import numpy as np
import pytest

import fastnn
from fastnn import optim, schedules


def _lrs(schedule, epochs, base=0.1, logs=None):
    out = [schedule.start(base)]
    for e in range(epochs - 1):
        out.append(schedule.next(logs[e] if logs else {"loss": 1.0}))
    return out


def test_closed_forms():
    np.testing.assert_allclose(_lrs(schedules.StepLR(3, gamma=0.5), 7),
                               [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025])
    np.testing.assert_allclose(_lrs(schedules.ExponentialLR(0.9), 4), [0.1 * 0.9 ** e for e in range(4)])
    np.testing.assert_allclose(_lrs(schedules.CosineAnnealingLR(4, eta_min=0.01), 5),
                               [0.01 + 0.09 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(5)])
    np.testing.assert_allclose(_lrs(schedules.Warmup(2, start_factor=0.5, after=schedules.StepLR(1, 0.5)), 5),
                               [0.05, 0.075, 0.1, 0.05, 0.025])


def test_reduce_on_plateau():
    losses = [{"loss": v} for v in [1.0, 0.9, 0.9, 0.9, 0.9, 0.5, 0.5, 0.5, 0.5]]
    lrs = _lrs(schedules.ReduceLROnPlateau(factor=0.5, patience=2), 10, logs=losses)
    assert lrs == [0.1, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025]


@pytest.mark.parametrize("make", [
    lambda: (schedules.StepLR(2, 0.5), "StepLR", dict(step_size=2, gamma=0.5)),
    lambda: (schedules.ExponentialLR(0.8), "ExponentialLR", dict(gamma=0.8)),
    lambda: (schedules.CosineAnnealingLR(5, 0.001), "CosineAnnealingLR", dict(T_max=5, eta_min=0.001)),
])
def test_schedules_match_torch(make):
    torch = pytest.importorskip("torch", reason="PyTorch is the optional parity comparator")
    ours, name, kwargs = make()
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = getattr(torch.optim.lr_scheduler, name)(opt, **kwargs)
    theirs = []
    for _ in range(8):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(_lrs(ours, 8), theirs, rtol=1e-12)


def test_schedule_drives_the_trainer():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), rng.normal(size=40)
    trainer = fastnn.Trainer(fastnn.Sequential([fastnn.Dense(3, 1)], seed=0), "mse", optim.SGD(lr=0.1))
    hist = trainer.fit(X, y, epochs=5, batch_size=8, verbose=False,
                       callbacks=[schedules.StepLR(2, gamma=0.1)])
    np.testing.assert_allclose(hist.lr, [0.1, 0.1, 0.01, 0.01, 0.001])


@pytest.mark.parametrize("backend_name", ["reference", "c", "numba"])
@pytest.mark.parametrize("compiled", [False, True], ids=["batch_by_batch", "compiled"])
def test_clipping_matches_torch(backend_name, compiled):
    torch = pytest.importorskip("torch", reason="PyTorch is the optional parity comparator")
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(32, 5)) * 10).astype(np.float32)
    y = rng.integers(0, 3, 32)
    model = fastnn.Sequential([fastnn.Dense(5, 8, "tanh"), fastnn.Dense(8, 3)], seed=0)
    tm = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for tl, fl in zip([tm[0], tm[2]], model.layers):
            tl.weight.copy_(torch.from_numpy(fl.weight.T.copy()))
            tl.bias.copy_(torch.from_numpy(fl.bias.copy()))
    trainer = fastnn.Trainer(model, "softmax_cross_entropy", optim.SGD(lr=0.5), backend=backend_name,
                             clip_value=0.3, clip_norm=0.5)
    assert trainer.fused  # clipping runs in the compiled epoch too
    if compiled:  # one epoch, the same four batches in order
        history = trainer.fit(X, y, epochs=1, batch_size=8, shuffle=False, verbose=False)
    topt = torch.optim.SGD(tm.parameters(), lr=0.5)
    losses = []
    for lo in range(0, 32, 8):
        ours = None if compiled else trainer.train_step(X[lo:lo + 8], y[lo:lo + 8])
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tm(torch.from_numpy(X[lo:lo + 8])),
                                                 torch.from_numpy(y[lo:lo + 8]))
        loss.backward()
        torch.nn.utils.clip_grad_value_(tm.parameters(), 0.3)
        torch.nn.utils.clip_grad_norm_(tm.parameters(), 0.5)
        topt.step()
        losses.append(loss.item())
        if not compiled:
            assert ours == pytest.approx(loss.item(), rel=1e-5)
    if compiled:
        assert history.loss[0] == pytest.approx(np.mean(losses), rel=1e-5)
    np.testing.assert_allclose(model.layers[0].weight, tm[0].weight.detach().numpy().T, rtol=1e-5,
                               atol=1e-6)


def test_clipping_bounds_the_step():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(16, 4)) * 100, rng.normal(size=16) * 100
    model = fastnn.Sequential([fastnn.Dense(4, 1)], seed=0)
    before = model.get_params()
    trainer = fastnn.Trainer(model, "mse", optim.SGD(lr=1.0), clip_norm=0.01)
    trainer.train_step(X, y)
    assert np.linalg.norm(model.get_params() - before) <= 0.01 + 1e-6


@pytest.mark.parametrize("kwargs", [dict(patience=-1), dict(patience=2.5), dict(patience=True),
                                    dict(threshold=float("nan")), dict(threshold=-1.0)])
def test_plateau_refuses_bad_settings(kwargs):
    name = next(iter(kwargs))
    with pytest.raises((TypeError, ValueError), match=name):
        schedules.ReduceLROnPlateau(**kwargs)
