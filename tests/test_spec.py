"""fastnn.kernels.spec is the one specification: the C header agrees with it
(enums, structs, the epoch's workspace) and every backend's implementations
have its parameters."""

import dataclasses
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


def test_c_hook_events_are_the_spec():
    assert _c_enum("fastnn_hook_event", "FASTNN_HOOK_") == {e.name: int(e)
                                                          for e in spec.HookEvent}


def test_c_plan_enums_are_the_spec():
    """The plan's record kinds and field indices (fastnn.plan writes the
    records, csrc/plan.c reads them by these indices)."""
    assert _c_enum("fastnn_op", "FASTNN_OP_") == {op.name: int(op) for op in spec.Op}
    fields = _c_enum("fastnn_plan_field", "FASTNN_")
    assert fields.pop("PLAN_FIELDS") == len(spec.PLAN_FIELDS)
    assert fields == {f"F_{name.upper()}": i for i, name in enumerate(spec.PLAN_FIELDS)}
    scalars = _c_enum("fastnn_plan_scalar", "FASTNN_")
    assert scalars.pop("PLAN_SCALARS") == len(spec.PLAN_SCALARS)
    assert scalars == {f"S_{name.upper()}": i for i, name in enumerate(spec.PLAN_SCALARS)}


def test_c_model_epoch_struct_has_every_field_of_the_spec():
    """Each ModelEpoch field reaches C (arrays with their sizes, the
    optimizer as fastnn_optimizer)."""
    from fastnn._ckernels import ffi

    fields = set(dict(ffi.typeof("fastnn_model_epoch").fields))
    renamed = {"states": "opt", "optimizer": "opt", "hyper": "opt", "step": "opt",
               "mu_product": "opt", "targets": "T", "batch_size": "batch",
               "batch_losses": "batch_loss"}
    for f in dataclasses.fields(spec.ModelEpoch):
        assert renamed.get(f.name, f.name) in fields, f.name


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
