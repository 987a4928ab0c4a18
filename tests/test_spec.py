"""fastnn.kernels.spec is the one specification: the C header agrees with it
(enums, structs, the epoch's workspace) and every backend's implementations
have its parameters."""

import importlib
import inspect
import os
import re

import numpy as np
import pytest

from fastnn import _build_ckernels
from fastnn.kernels import spec

HEADER = os.path.join(_build_ckernels.CSRC, "fastnn.h")


def _header():
    with open(HEADER) as f:
        return f.read()


def _c_enum(name, prefix):
    """{member name without `prefix`: value} of `enum name` in fastnn.h."""
    body = re.search(r"enum\s+%s\s*\{(.*?)\};" % name, _header(), re.S)
    assert body, f"no enum {name} in {HEADER}"
    text = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)
    members = re.findall(r"(\w+)\s*=\s*(\d+)", text)
    assert len(members) == len(text.split(",")), f"enum {name}: give every member a value"
    assert all(m.startswith(prefix) for m, _ in members), members
    return {m[len(prefix):]: int(v) for m, v in members}


def test_c_enums_are_the_spec():
    assert _c_enum("fastnn_activation", "FASTNN_ACT_") == {a.name: int(a) for a in spec.Activation}
    assert _c_enum("fastnn_loss", "FASTNN_LOSS_") == {x.name: int(x) for x in spec.Loss}
    assert _c_enum("fastnn_optimizer_kind", "FASTNN_OPT_") == {
        name.upper(): o.code for name, o in spec.OPTIMIZERS.items()}


# ---- the epoch's structures -----------------------------------------------------

def test_c_layer_struct_takes_a_dense_layer():
    """fastnn.kernels.c builds the layer array from spec.DenseLayer tuples:
    the struct's fields are in the same order."""
    from fastnn._ckernels import ffi

    layer = ffi.new("fastnn_dense_layer[]", [spec.DenseLayer(3, 4, 5, 6, 7, 0.5)])[0]
    assert (getattr(layer, "in"), layer.out, layer.w_offset, layer.b_offset, layer.act,
            layer.slope) == (3, 4, 5, 6, 7, 0.5)
    assert len(ffi.typeof("fastnn_dense_layer").fields) == len(spec.DenseLayer._fields)


def test_c_optimizer_struct_has_every_hyperparameter():
    from fastnn._ckernels import ffi

    fields = dict(ffi.typeof("fastnn_optimizer").fields)
    for o in spec.OPTIMIZERS.values():
        assert set(o.hyper_names) <= set(fields), o.name
        assert len(o.states) <= fields["state"].type.length, o.name


def _c_workspace(layers, batch, threads):
    from fastnn._ckernels import ffi, lib

    return lib.fastnn_dense_stack_workspace(ffi.new("fastnn_dense_layer[]", list(layers)),
                                            len(layers), batch, threads)


def test_c_workspace_is_the_spec_layout():
    rng = np.random.default_rng(7)
    for _ in range(300):
        sizes = [int(s) for s in rng.integers(1, 1200, rng.integers(2, 7))]
        layers = [spec.DenseLayer(i, o, 0, -1, 0, 0.0) for i, o in zip(sizes, sizes[1:])]
        batch = int(rng.choice([1, 2, 7, 32, 100, 513, 4096]))
        for threads in range(1, 9):
            assert _c_workspace(layers, batch, threads) == spec.epoch_workspace(
                layers, batch, threads), (sizes, batch, threads)


@pytest.mark.parametrize("sizes,batch", [((1, 1), 2 ** 61 + 12345),
                                         ((1, 2 ** 32, 2 ** 32), 2 ** 32), ((2 ** 62, 1), 2)])
def test_c_workspace_past_int64_is_refused(sizes, batch):
    layers = [spec.DenseLayer(i, o, 0, -1, 0, 0.0) for i, o in zip(sizes, sizes[1:])]
    for threads in (1, 2):
        assert _c_workspace(layers, batch, threads) == -1
        with pytest.raises(ValueError, match="overflows int64"):
            spec.epoch_workspace(layers, batch, threads)


# ---- the implementations' signatures ----------------------------------------------

@pytest.mark.parametrize("backend", ["c", "numba", "cuda", "reference"])
def test_implementations_have_the_spec_parameters(backend):
    """The front calls impl(*args) in spec order: exactly the spec's
    parameters, positional, without defaults."""
    try:
        module = importlib.import_module("fastnn.kernels." + backend)
    except ImportError as exc:
        pytest.skip(f"{backend}: {exc}")
    wrong = {}
    for name, kernel in spec.KERNELS.items():
        impl = getattr(module, name, None)
        if impl is None:
            continue  # the front stages the reference's
        params = inspect.signature(impl).parameters.values()
        got = tuple(p.name for p in params)
        if got != kernel.params or any(p.kind is not p.POSITIONAL_OR_KEYWORD
                                       or p.default is not p.empty for p in params):
            wrong[name] = str(inspect.signature(impl))
    assert wrong == {}


# ---- the c backend's runtime ------------------------------------------------------

def test_c_set_num_threads_takes_numpy_integers_and_refuses_past_int32():
    c = pytest.importorskip("fastnn.kernels.c")
    before = c.info()["threads"]
    try:
        c.set_num_threads(np.int64(2))
        assert c.info()["threads"] == 2 == c.epoch_threads()
        for bad in (2 ** 31, np.int64(2 ** 40), 0, True, 2.0):
            with pytest.raises(ValueError, match="^n: "):
                c.set_num_threads(bad)
    finally:
        c.set_num_threads(before)
