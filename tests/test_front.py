"""The front of the kernel backends (fastnn.kernels.Backend): validation once,
then the implementation; the reference where a backend has none."""

import inspect
import types

import numpy as np
import pytest

from fastnn import kernels
from fastnn.kernels import spec


def _fake_backend(**impls):
    """A host backend module implementing only `impls`."""
    module = types.ModuleType("fastnn.kernels.fake")
    module.name, module.DTYPE = "fake", np.float32
    ref = kernels.get("reference")
    for attr in spec.RUNTIME:
        setattr(module, attr, getattr(ref.module, attr))
    for name, fn in impls.items():
        setattr(module, name, fn)
    return kernels.Backend(module)


def test_a_backend_can_implement_one_kernel_at_a_time(rng):
    calls = []

    def scale(x, s):
        calls.append((x.dtype, type(s)))
        x *= np.float32(s)

    k = _fake_backend(scale=scale)
    x = np.ones(5, np.float32)
    k.scale(x, np.float64(3))
    assert calls == [(np.float32, float)] and np.all(x == 3)
    # every other kernel is the reference's
    A, B, C = rng.normal(size=(3, 4)), rng.normal(size=(4, 2)), np.empty((3, 2), np.float32)
    assert k.gemm(A, B, C) is C
    np.testing.assert_allclose(C, A @ B, rtol=1e-5)
    assert k.impls.gemm is kernels.get("reference").module.gemm


def test_validation_runs_once_before_the_implementation():
    calls = []
    k = _fake_backend(scale=lambda x, s: calls.append(s),
                      adam=lambda *args: calls.append(args))
    with pytest.raises(ValueError, match="x: expected a flat 1-D buffer"):
        k.scale(np.ones((2, 2), np.float32), 2.0)
    with pytest.raises(ValueError, match="s: must be finite"):
        k.scale(np.ones(2, np.float32), float("nan"))
    p, g, m, v = (np.zeros(4, np.float32) for _ in range(4))
    for bad, match in [(dict(lr=float("nan")), "lr: must be finite"),
                       (dict(lr=-1.0), "lr: must be >= 0"),
                       (dict(beta1=1.5), "beta1: must be < 1"),
                       (dict(eps=-1e-8), "eps: must be >= 0"),
                       (dict(step=0), r"step: expected an integer in \[1, ")]:
        hyper = dict(dict(step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8), **bad)
        with pytest.raises((ValueError, TypeError), match=match):
            k.adam(p, g, m, v, **hyper)
    assert calls == []
    # a valid call reaches the implementation with the normalised arguments in order
    k.adam(p, g, m, v, step=np.int64(2), lr=1, beta1=0.9, beta2=0.999, eps=1e-8)
    assert calls[0][4:] == (2, 1.0, 0.9, 0.999, 1e-8, 0.0)
    assert type(calls[0][4]) is int and type(calls[0][5]) is float


def test_front_signatures_and_docs_come_from_the_spec_and_the_reference():
    ref = kernels.get("reference")
    for kernel in spec.KERNELS.values():
        fn = getattr(ref, kernel.name)
        assert inspect.signature(fn) == kernel.python_signature()
        assert fn.__doc__ == getattr(ref.module, kernel.name).__doc__ and fn.__doc__


def test_labels_are_range_checked_before_narrowing(backend):
    Z, P = np.zeros((2, 3), np.float32), np.empty((2, 3), np.float32)
    for labels in (np.array([0, 2 ** 32 + 1]), np.array([0, -(2 ** 32)]), np.array([0, 3])):
        with pytest.raises(ValueError, match=r"labels: must lie in \[0, 3\)"):
            backend.softmax_xent_forward(P, Z, labels)


def test_epoch_outputs_may_not_overlap_its_inputs(cpu_backend, rng):
    """An epoch writing its batch losses into its own order or labels would
    then index X with what it wrote."""
    X, labels = rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, 8)
    p, g = np.zeros(15, np.float32), np.zeros(15, np.float32)
    ws = np.empty(1000, np.float32)
    order = np.arange(8, dtype=np.int64)
    ok = dict(layers=[(4, 3, 0, 12, "relu", 0.0)], loss="softmax_xent", batch_size=4,
              optimizer="sgd", hyper=dict(lr=0.1), step=0)
    buf = np.zeros(4, np.int64)
    cases = [
        (dict(batch_losses=order[:2].view(np.float64), batch_correct=buf[:2], order=order),
         "batch_losses: output overlaps input order"),
        (dict(batch_losses=np.zeros(2), batch_correct=order[2:4], order=order),
         "batch_correct: output overlaps input order"),
        (dict(batch_losses=np.zeros(2), batch_correct=buf[:2], X=ws[:32].reshape(8, 4)),
         "workspace: output overlaps input X"),
        (dict(batch_losses=np.zeros(2), batch_correct=buf[:2], grads=p),
         "params: output overlaps input grads"),
    ]
    for kw, match in cases:
        args = dict(params=p, grads=g, states=(None,), workspace=ws, X=X, targets=labels,
                    **ok)
        args.update(kw)
        with pytest.raises(ValueError, match=match):
            cpu_backend.dense_stack_epoch(spec.Epoch(**args))
    with pytest.raises(TypeError, match="epoch: expected a fastnn.kernels.spec.Epoch"):
        cpu_backend.dense_stack_epoch(dict(ok))


def test_epoch_workspace_size_overflow_is_refused():
    with pytest.raises(ValueError, match="overflows int64"):
        spec.epoch_workspace([(784, 256, 0, 0)], 2 ** 61 + 12345)


def test_set_num_threads_takes_numpy_integers_and_refuses_huge():
    before = kernels.get("c").info()["threads"]
    try:
        kernels.set_num_threads(np.int64(1))
        assert kernels.get("c").info()["threads"] == 1
    finally:
        kernels.set_num_threads(before)
    for bad in (0, 2 ** 31, 1.5, True):
        with pytest.raises(ValueError, match="n: expected an integer"):
            kernels.set_num_threads(bad)
