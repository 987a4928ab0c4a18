"""The bad-input probe suite (issue 13, part 2).

Every public kernel (``fastnn.kernels.get(name)`` for c, numba and the
reference) and public function is called with wrong types, shapes and
dtypes, overlapping outputs and inputs, sizes near and past the int32/int64
limits, NaN/Inf, empty and single-sample inputs and malicious model files;
each must give a clear TypeError/ValueError naming the argument before any
kernel runs (or, where the input is legitimate, the right result).

Each probe is a piece of Python run in a subprocess (tests/_probe_runner.py,
with the helpers of tests/_probe_prelude.py), many probes per process: a
crash (SIGSEGV, abort) fails the probe that was running, and the rest of
its batch goes on in a fresh process.  ``pytest -m slow`` adds the
exhaustive variant (every overlap shift and every optimizer hyperparameter
edge on every backend).
"""

import json
import os
import subprocess
import sys

import pytest

from fastnn.kernels import spec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _probe_prelude import EPOCH_WRITES  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BACKENDS = ("c", "numba", "reference")

PROBES = {}  # group -> {name: source}


def probe(group, name, source):
    assert name not in PROBES.setdefault(group, {}), name
    PROBES[group][name] = source


# ---- every kernel, generated from the specification ------------------------------------

def _kernel_probes(backend, exhaustive=False):
    g = f"kernels-{backend}" + ("-slow" if exhaustive else "")
    b = repr(backend)
    for name in spec.KERNELS:
        if name in ("dense_stack_epoch", "model_epoch", "model_epochs"):
            continue
        kernel = spec.KERNELS[name]
        n = repr(name)
        pre = f"a = valid({n}); k = kernels.get({b})\n"
        probe(g, f"{backend}.{name}.valid", pre + f"r = call({b}, {n}, a)\n"
              "for v in a.values():\n"
              "    if isinstance(v, np.ndarray) and v.dtype.kind == 'f': assert np.isfinite(v).all()\n")
        arrays = [p for p in kernel.params if p not in ("activation",)]
        # which parameters hold arrays in the valid call
        probe(g, f"{backend}.{name}.unknown-keyword",
              pre + f"raises(TypeError, 'unexpected', getattr(k, {n}), **a, bogus=1)")
        for p in kernel.params:
            P = repr(p)
            chk = f"if isinstance(a[{P}], np.ndarray):\n    "
            opt = f"{P} in optional_arrays({n})"
            probe(g, f"{backend}.{name}.{p}.none", pre + chk +
                  f"(call({b}, {n}, dict(a, **{{{P}: None}})) if {opt} else "
                  f"refused(call, {P}, {b}, {n}, dict(a, **{{{P}: None}})))\n"
                  "else:\n    pass")
            probe(g, f"{backend}.{name}.{p}.string", pre +
                  f"refused(call, list(a), {b}, {n}, dict(a, **{{{P}: 'abc'}}))")
            probe(g, f"{backend}.{name}.{p}.list-of-strings", pre +
                  f"refused(call, list(a), {b}, {n}, dict(a, **{{{P}: ['x', 'y']}}))")
            probe(g, f"{backend}.{name}.{p}.extra-dim", pre + chk +
                  f"refused(call, list(a), {b}, {n}, dict(a, **{{{P}: a[{P}][None, None]}}))")
            single = sum(q not in ("activation",) and q in kernel.params for q in kernel.params) and \
                name in ("sum_squares", "scale", "clip")
            probe(g, f"{backend}.{name}.{p}.short", pre + chk + ("pass #" if single else "") +
                  f"refused(call, list(a), {b}, {n}, dict(a, **{{{P}: a[{P}][:-1]}}))")
            probe(g, f"{backend}.{name}.{p}.complex", pre + chk +
                  f"refused(call, list(a), {b}, {n}, dict(a, **{{{P}: a[{P}].astype(complex)}}))")
            if p in kernel.outputs:
                if backend != "reference":
                    probe(g, f"{backend}.{name}.{p}.out-float64", pre + chk +
                          f"refused(call, {P}, {b}, {n}, dict(a, **{{{P}: a[{P}].astype(np.float64)}}))")
                probe(g, f"{backend}.{name}.{p}.out-strided", pre + chk +
                      f"x = np.repeat(a[{P}], 2, axis=-1)[..., ::2]\n    "
                      f"refused(call, {P}, {b}, {n}, dict(a, **{{{P}: x}}))")
                probe(g, f"{backend}.{name}.{p}.out-readonly", pre + chk +
                      f"a[{P}].flags.writeable = False\n    "
                      f"refused(call, {P}, {b}, {n}, a)")
                probe(g, f"{backend}.{name}.{p}.out-list", pre + chk +
                      f"refused(call, {P}, {b}, {n}, dict(a, **{{{P}: a[{P}].tolist()}}))")
                shifts = (8, 4, 12) if exhaustive else (8,)
                for q in kernel.params:
                    if q == p:
                        continue
                    for sh in shifts:
                        probe(g, f"{backend}.{name}.{p}-overlaps-{q}" + (f"@{sh}" if sh != 8 else ""),
                              pre + f"if isinstance(a[{P}], np.ndarray) and isinstance(a[{q!r}], np.ndarray) "
                              f"and a[{P}].nbytes > {sh}:\n"
                              f"    o, i = overlapping(a[{P}], a[{q!r}], {sh})\n"
                              f"    raises(ValueError, 'overlap', call, {b}, {n}, dict(a, **{{{P}: o, {q!r}: i}}))")
        # scalars: NaN, inf, strings, out of range
        for p in kernel.params:
            P = repr(p)
            scal = f"if isinstance(a[{P}], float) and not isinstance(a[{P}], bool):\n    "
            for bad in ("float('nan')", "float('inf')", "-float('inf')", "'1.0x'", "[1.0]", "None"):
                probe(g, f"{backend}.{name}.{p}=float:{bad}", pre + scal +
                      f"refused(call, {P}, {b}, {n}, dict(a, **{{{P}: {bad}}}))")
            intp = f"if isinstance(a[{P}], int) and not isinstance(a[{P}], bool) and {P} not in ('stride', 'padding', 'pool'):\n    "
            for bad in ("-1", "2.5", "2**64", "'1'", "None", "True" if p == "step" else "-2**63"):
                probe(g, f"{backend}.{name}.{p}=int:{bad}", pre + intp +
                      f"refused(call, {P}, {b}, {n}, dict(a, **{{{P}: {bad}}}))")
        if "activation" in kernel.params:
            for bad in ("'nope'", "['relu']", "{'relu': 1}", "3", "b'relu'"):
                probe(g, f"{backend}.{name}.activation={bad}",
                      pre + f"refused(call, 'activation', {b}, {n}, dict(a, activation={bad}))")
            probe(g, f"{backend}.{name}.negative_slope=-1",
                  pre + f"refused(call, 'negative_slope', {b}, {n}, dict(a, negative_slope=-1.0))")
        for p in ("stride", "padding", "pool"):
            if p in kernel.params:
                for bad in ("2.5", "0" if p != "padding" else "-1", "(1,)", "'a'", "(1, 2, 3)",
                            "True", "2**63", "(np.int64(2**40), 1)"):
                    # a huge but well-typed window: any argument may be blamed
                    names = "list(a)" if "2**" in bad else repr(p)
                    probe(g, f"{backend}.{name}.{p}={bad}",
                          pre + f"refused(call, {names}, {b}, {n}, dict(a, **{{{p!r}: {bad}}}))")
        if name in spec.OPTIMIZERS:
            o = spec.OPTIMIZERS[name]
            for h in o.hyper:
                if h.flag:
                    continue
                bads = ["float('nan')"]
                if h.low is not None:
                    bads.append(repr(h.low - 0.5))
                if h.high is not None:
                    bads.append(repr(h.high + 0.5))
                for bad in bads:
                    probe(g, f"{backend}.{name}.hyper.{h.name}={bad}",
                          pre + f"refused(call, {h.name!r}, {b}, {n}, dict(a, **{{{h.name!r}: {bad}}}))")
    # kernel-specific neighbours
    pre = f"k = kernels.get({b})\n"
    probe(g, f"{backend}.labels-int64-past-int32",
          pre + "a = valid('softmax_xent_forward'); a['labels'] = np.array([0, 1, 2**32 + 1])\n"
          f"refused(call, 'labels', {b}, 'softmax_xent_forward', a)\n"
          "a = valid('softmax_xent_backward'); a['labels'] = np.array([0, 2**32, 1])\n"
          f"refused(call, 'labels', {b}, 'softmax_xent_backward', a)")
    probe(g, f"{backend}.labels-uint64-huge",
          pre + "a = valid('softmax_xent_forward'); a['labels'] = np.array([0, 1, 2**64 - 1], np.uint64)\n"
          f"refused(call, 'labels', {b}, 'softmax_xent_forward', a)")
    probe(g, f"{backend}.labels-negative",
          pre + "a = valid('softmax_xent_forward'); a['labels'] = np.array([0, -1, 1])\n"
          f"refused(call, 'labels', {b}, 'softmax_xent_forward', a)")
    probe(g, f"{backend}.labels-float",
          pre + "a = valid('softmax_xent_forward'); a['labels'] = np.array([0., 1., 2.])\n"
          f"refused(call, 'labels', {b}, 'softmax_xent_forward', a)")
    probe(g, f"{backend}.labels-int64-ok",
          pre + "a = valid('softmax_xent_forward'); a['labels'] = np.array([0, 1, 3], np.int64)\n"
          f"l1 = call({b}, 'softmax_xent_forward', a)\n"
          "a2 = valid('softmax_xent_forward'); l2 = call('reference', 'softmax_xent_forward', a2)\n"
          "assert abs(l1 - l2) < 1e-5, (l1, l2)")
    probe(g, f"{backend}.argmax-int64-past-int32",
          pre + "a = valid('maxpool2d_backward'); a['argmax'] = a['argmax'].astype(np.int64) + 2**32\n"
          f"refused(call, 'argmax', {b}, 'maxpool2d_backward', a)")
    probe(g, f"{backend}.argmax-out-of-window",
          pre + "a = valid('maxpool2d_backward'); a['argmax'][0, 0, 0, 0] = 16\n"
          f"refused(call, 'argmax', {b}, 'maxpool2d_backward', a)")
    probe(g, f"{backend}.argmax-negative",
          pre + "a = valid('maxpool2d_backward'); a['argmax'][1, 1, 1, 2] = -1\n"
          f"refused(call, 'argmax', {b}, 'maxpool2d_backward', a)")
    probe(g, f"{backend}.argmax-float",
          pre + "a = valid('maxpool2d_backward'); a['argmax'] = a['argmax'] + 0.5\n"
          f"refused(call, 'argmax', {b}, 'maxpool2d_backward', a)")
    for name in ("activation_forward", "dropout_forward", "scale"):
        probe(g, f"{backend}.{name}.empty",
              pre + f"a = valid({name!r})\n"
              "for key, v in list(a.items()):\n"
              "    if isinstance(v, np.ndarray): a[key] = v[:0]\n"
              f"try:\n    call({b}, {name!r}, a)\n"
              "except (TypeError, ValueError) as e:\n    assert ':' in str(e), e\n")
    probe(g, f"{backend}.gemm-empty", pre +
          f"refused(call, 'gemm', {b}, 'gemm', dict(A=zeros(0, 4), B=f32(4, 5), C=zeros(0, 5)))")
    probe(g, f"{backend}.softmax-empty-rows", pre +
          f"refused(call, 'X', {b}, 'softmax_forward', dict(Y=zeros(0, 4), X=zeros(0, 4)))")
    probe(g, f"{backend}.mse-empty", pre +
          f"refused(call, 'Y', {b}, 'mse_forward', dict(Y=zeros(0), T=zeros(0)))")
    probe(g, f"{backend}.batchnorm-one-value", pre +
          "a = valid('batchnorm_forward'); a['X'] = a['X'][:1]; a['Y'] = a['Y'][:1]\n"
          f"refused(call, 'X', {b}, 'batchnorm_forward', a)")
    probe(g, f"{backend}.batchnorm-inference-one-sample", pre +
          "a = valid('batchnorm_inference'); a['X'] = a['X'][:1]; a['Y'] = a['Y'][:1]\n"
          f"call({b}, 'batchnorm_inference', a)\n"
          "r = valid('batchnorm_inference'); r['X'] = r['X'][:1]; r['Y'] = r['Y'][:1]\n"
          "call('reference', 'batchnorm_inference', r)\n"
          "assert np.allclose(a['Y'], r['Y'], atol=1e-5)")
    probe(g, f"{backend}.batchnorm-negative-running-var", pre +
          "a = valid('batchnorm_inference'); a['running_var'] = np.array([1., -1., 1.], np.float32)\n"
          f"refused(call, 'running_var', {b}, 'batchnorm_inference', a)")
    probe(g, f"{backend}.single-sample-dense", pre +
          "a = valid('dense_forward'); a['X'] = a['X'][:1]; a['Y'] = a['Y'][:1]\n"
          f"call({b}, 'dense_forward', a)\n"
          "want = np.maximum(a['X'] @ a['W'] + a['b'], 0)\n"
          "assert np.allclose(a['Y'], want, atol=1e-5)")
    probe(g, f"{backend}.nan-propagates-dense", pre +
          "a = valid('dense_forward'); a['X'][1, 2] = np.nan; a['activation'] = 'identity'\n"
          f"call({b}, 'dense_forward', a)\n"
          "assert np.isnan(a['Y'][1]).all() and np.isfinite(a['Y'][[0, 2]]).all()")
    probe(g, f"{backend}.conv-huge-padding-overflow", pre +
          "a = valid('conv2d_forward'); a['padding'] = (2**62, 2**62)\n"
          f"refused(call, 'padding', {b}, 'conv2d_forward', a)")
    probe(g, f"{backend}.conv-huge-stride", pre +
          "a = valid('conv2d_forward'); a['stride'] = (2**63 - 1, 2**63 - 1); a['Y'] = zeros(2, 1, 1, 4); a['cols'] = zeros(2, 27)\n"
          f"call({b}, 'conv2d_forward', a)\n"
          "r = valid('conv2d_forward'); r['stride'] = (2**63 - 1, 2**63 - 1); r['Y'] = zeros(2, 1, 1, 4); r['cols'] = zeros(2, 27)\n"
          "call('reference', 'conv2d_forward', r); assert np.allclose(a['Y'], r['Y'], atol=1e-5)")
    probe(g, f"{backend}.pool-huge-stride", pre +
          "a = valid('maxpool2d_forward'); a['stride'] = 2**40\n"
          "a['Y'] = zeros(2, 1, 1, 3); a['argmax'] = zeros(2, 1, 1, 3, dtype=np.int32)\n"
          f"call({b}, 'maxpool2d_forward', a)\n"
          "assert np.allclose(a['Y'][:, 0, 0], a['X'][:, :2, :2].max(axis=(1, 2)))")
    probe(g, f"{backend}.dropout-counter-at-int64-limit", pre +
          "for seed, counter in ((2**63 - 1, 2**63 - 1), (0, 2**63 - 13), (2**32, 2**32 - 1)):\n"
          "    a = dict(valid('dropout_forward'), seed=seed, counter=counter)\n"
          "    r = dict(valid('dropout_forward'), seed=seed, counter=counter)\n"
          f"    call({b}, 'dropout_forward', a); call('reference', 'dropout_forward', r)\n"
          "    assert np.array_equal(a['Y'], r['Y'])")
    probe(g, f"{backend}.dropout-p-one", pre +
          f"refused(call, 'p', {b}, 'dropout_forward', dict(valid('dropout_forward'), p=1.0))")
    probe(g, f"{backend}.clip-lo-above-hi", pre +
          f"refused(call, 'lo', {b}, 'clip', dict(valid('clip'), lo=1.0, hi=-1.0))")
    probe(g, f"{backend}.nesterov-without-momentum", pre +
          "try:\n"
          f"    call({b}, 'sgd', dict(valid('sgd'), nesterov=True))\n"
          "except (TypeError, ValueError) as e:\n    assert 'nesterov' in str(e) or 'momentum' in str(e), e\n")
    probe(g, f"{backend}.sgd-momentum-needs-buffer", pre +
          f"refused(call, 'momentum_buf', {b}, 'sgd', dict(valid('sgd'), momentum=0.9, momentum_buf=None))")
    probe(g, f"{backend}.step-zero", pre +
          f"refused(call, 'step', {b}, 'adam', dict(valid('adam'), step=0))")
    probe(g, f"{backend}.step-numpy-int", pre +
          f"call({b}, 'adam', dict(valid('adam'), step=np.int64(3)))")
    probe(g, f"{backend}.betas-one", pre +
          "try:\n"
          f"    call({b}, 'adam', dict(valid('adam'), beta1=1.0, beta2=1.0))\n"
          "except ValueError as e:\n    assert 'beta' in str(e), e\n"
          "else:\n    a = valid('adam'); call({b}, 'adam', dict(a, beta1=1.0, beta2=1.0)); assert np.isfinite(a['params']).all()\n".replace("{b}", b))
    probe(g, f"{backend}.set_num_threads", pre +
          "fastnn.set_num_threads(np.int64(2)); fastnn.set_num_threads(1)\n"
          "refused(fastnn.set_num_threads, 'n', 2**31)\n"
          "refused(fastnn.set_num_threads, 'n', 0)\n"
          "refused(fastnn.set_num_threads, 'n', 2.0)\n"
          "refused(fastnn.set_num_threads, 'n', True)\n"
          "if k.name == 'c':  # (numba's clamps to NUMBA_NUM_THREADS)\n"
          "    k.module.set_num_threads(np.int64(2))\n"
          "    refused(k.module.set_num_threads, 'n', 2**31)\n"
          "    refused(k.module.set_num_threads, 'n', -1)\n"
          "    k.module.set_num_threads(1)")
    return g


# ---- the whole-epoch kernels: every output against every input --------------------------

def _epoch_probes(backend, exhaustive=False):
    g = f"epochs-{backend}" + ("-slow" if exhaustive else "")
    b = repr(backend)
    kinds = [("dense", "dense_stack_epoch", f"dense_epoch({b})"),
             ("model", "model_epoch", f"model_epoch({b})"),
             ("cnn", "model_epoch", f"model_epoch({b}, cnn=True)")]
    if exhaustive:
        kinds.append(("dense-mse", "dense_stack_epoch", f"dense_epoch({b}, loss='mse')"))
    for kind, kname, make in kinds:
        pre = f"k = kernels.get({b}); e = {make}\n"
        probe(g, f"{backend}.{kind}.valid", pre + f"r = k.{kname}(e); assert r[0] == len(e.batch_losses), r")
        fields = {"dense": ["params", "grads", "states[0]", "states[1]", "workspace", "X", "targets",
                            "batch_losses", "batch_correct", "order"]}.get(
            kind.split("-")[0], ["params", "grads", "buffers", "states[0]", "states[1]", "workspace",
                                 "iworkspace", "X", "targets", "batch_losses", "batch_correct",
                                 "order", "plan", "plan_scalars", "penalized"])
        if kind == "model":
            fields.remove("penalized")  # no l2: empty
        if kind == "model" or kind == "cnn":
            pass
        for o in fields:
            for i in fields:
                if o == i or not (o in ("params", "grads", "workspace", "iworkspace", "batch_losses",
                                        "batch_correct", "buffers") or o.startswith("states")):
                    continue
                probe(g, f"{backend}.{kind}.{o}-overlaps-{i}", pre +
                      f"arrs = dict(epoch_arrays(e))\n"
                      f"if arrs[{o!r}].nbytes > 8:\n"
                      f"    x, y = overlapping(arrs[{o!r}], arrs[{i!r}])\n"
                      f"    raises(ValueError, 'overlap', k.{kname}, with_arrays(e, **{{{o!r}: x, {i!r}: y}}))\n"
                      # (an input is written last: its values stay valid)
                      f"if arrs[{o!r}].nbytes > 8 and written({i!r}):\n"
                      f"    x, y = overlapping(arrs[{i!r}], arrs[{o!r}])\n"
                      f"    raises(ValueError, 'overlap', k.{kname}, with_arrays(e, **{{{i!r}: x, {o!r}: y}}))")
            if not (o in EPOCH_WRITES or o.startswith("states")):
                continue
            probe(g, f"{backend}.{kind}.{o}-same-as-X", pre +
                  f"arrs = dict(epoch_arrays(e))\n"
                  f"if arrs[{o!r}].dtype == e.X.dtype and arrs[{o!r}].size >= e.X.size:\n"
                  f"    x = arrs[{o!r}]; v = x[:e.X.size].reshape(e.X.shape); v[...] = e.X\n"
                  f"    raises(ValueError, 'overlap', k.{kname}, with_arrays(e, X=v))")
        for bad, what in (("2**61 + 12345", "overflow"), ("2**63 - 1", "huge"), ("2**31", "int32"),
                          ("0", "zero"), ("-1", "negative"), ("2.5", "float"), ("True", "bool"),
                          ("'8'", "string"), ("2**64", "past-int64")):
            probe(g, f"{backend}.{kind}.batch_size-{what}", pre +
                  f"refused(k.{kname}, ('batch_size', 'workspace', 'batch_losses', 'size', 'plan'), dataclasses.replace(e, batch_size={bad}))")
        probe(g, f"{backend}.{kind}.workspace-for-huge-batch", pre +
              "refused(k.dense_stack_workspace, ('batch_size', 'size', 'layers'), [(5, 6, 0, -1, 'relu', 0.0)], 2**61 + 12345)"
              if kind == "dense" else pre + "pass")
        for f, bad in (("step", "-1"), ("step", "2**64"), ("l2", "float('nan')"), ("l2", "-1.0"),
                       ("loss_scale", "float('inf')"), ("grad_scale", "float('nan')"),
                       ("mu_product", "float('nan')"), ("optimizer", "'nope'"), ("optimizer", "['adam']"),
                       ("loss", "'nope'"), ("loss", "['mse']"), ("hyper", "{'lr': float('nan')}"),
                       ("hyper", "{'lr': -1.0}"), ("hyper", "{'beta1': 1.5}"), ("hyper", "{'eps': -1.0}"),
                       ("hyper", "{'bogus': 1.0}"), ("hyper", "{'lr': '0.1'}"), ("states", "()"),
                       ("states", "(None, None)"), ("X", "None"), ("X", "'abc'"), ("targets", "None"),
                       ("params", "None"), ("params", "e.params.astype(np.float64)"),
                       ("grads", "e.grads[:-1]"), ("workspace", "e.workspace[:5]"), ("workspace", "None"),
                       ("batch_losses", "e.batch_losses[:-1]"), ("batch_losses", "e.batch_losses.astype(np.float32)"),
                       ("batch_correct", "e.batch_correct.astype(np.int32)"), ("batch_correct", "None"),
                       ("order", "e.order[:0]"), ("order", "e.order + 2**32"), ("order", "e.order - 1"),
                       ("order", "e.order.astype(float)"), ("order", "np.full(3, 2**63 - 1)"),
                       ("targets", "e.targets.astype(np.int64) + 2**32"), ("targets", "e.targets[:-1]"),
                       ("targets", "e.targets.astype(float)"), ("X", "e.X[:, :-1]"),
                       ("X", "e.X.astype(complex)")):
            if kind == "dense-mse" and f == "targets" and "astype" in bad:
                continue  # float (regression) targets: any number is valid
            probe(g, f"{backend}.{kind}.{f}={bad}", pre +
                  f"refused(k.{kname}, ({f!r}, 'hyper', 'lr', 'beta1', 'eps', 'states', 'optimizer', 'm', 'plan'), dataclasses.replace(e, {f}={bad}))")
        probe(g, f"{backend}.{kind}.not-an-epoch", pre + f"refused(k.{kname}, 'epoch', vars(e))")
        probe(g, f"{backend}.{kind}.single-sample", pre.replace(f"{make}", make[:-1] + (", " if make[-2] != "(" else "") + "n=1, batch=1)") +
              f"r = k.{kname}(e); assert r[0] == 1 and np.isfinite(e.params).all()"
              if kind != "cnn" else pre + f"r = k.{kname}(dataclasses.replace(e, X=e.X[:1], targets=e.targets[:1], order=None, batch_losses=np.zeros(1), batch_correct=np.zeros(1, np.int64)))\n"
              "assert r[0] == 1 and np.isfinite(e.params).all()  # (16 values a channel for the BatchNorm)")
        probe(g, f"{backend}.{kind}.nan-X-stops", pre +
              "e.X[:] = np.nan\n"
              f"r = k.{kname}(e); assert r[0] <= 1 and not np.isfinite(e.batch_losses[r[0] - 1 if r[0] else 0]), r")
    if True:
        pre = f"k = kernels.get({b})\n"
        probe(g, f"{backend}.model.plan-corrupt", pre +
              "e = model_epoch(" + b + ")\n"
              "for field, v in (('x', 10**12), ('y', -5), ('c', 2**40), ('h', 2**62), ('op', 99)):\n"
              "    p = e.plan.copy(); p[0, spec.F[field]] = v\n"
              "    refused(k.model_epoch, ('plan', 'xb', 'tb', 'output'), dataclasses.replace(e, plan=p))")
        probe(g, f"{backend}.model.plan-every-field-huge", pre +
              "e = model_epoch(" + b + ", cnn=True)\n"
              "for field in spec.PLAN_FIELDS:\n"
              "    for v in (2**31, 2**62, -2**62):\n"
              "        p = e.plan.copy(); p[:, spec.F[field]] = v\n"
              "        try:\n"
              "            k.model_epoch(dataclasses.replace(e, plan=p))\n"
              "        except (TypeError, ValueError):\n"
              "            pass\n")
        probe(g, f"{backend}.model.penalized-outside", pre +
              "e = model_epoch(" + b + ")\n"
              "refused(k.model_epoch, 'penalized', dataclasses.replace(e, penalized=np.array([[0, 10**9]]), l2=0.1))\n"
              "refused(k.model_epoch, 'penalized', dataclasses.replace(e, penalized=np.array([[2**62, 2**62]]), l2=0.1))")
        probe(g, f"{backend}.model.offsets-huge", pre +
              "e = model_epoch(" + b + ")\n"
              "for f in ('xb', 'tb', 'lb', 'output', 'doutput'):\n"
              "    for v in (-2, 2**62, 2**63 - 1):\n"
              "        refused(k.model_epoch, f, dataclasses.replace(e, **{f: v}))")
        probe(g, f"{backend}.model.in_size-wrong", pre +
              "e = model_epoch(" + b + ")\n"
              "refused(k.model_epoch, ('in_size', 'X', 'plan', 'xb', 'tb'), dataclasses.replace(e, in_size=4))\n"
              "refused(k.model_epoch, ('in_size', 'X'), dataclasses.replace(e, in_size=0))\n"
              "refused(k.model_epoch, ('out_size', 'targets', 'plan', 'output', 'tb'), dataclasses.replace(e, out_size=2**62))")
        probe(g, f"{backend}.model.plan_scalars-nan", pre +
              "e = model_epoch(" + b + ")\n"
              "s = e.plan_scalars.copy(); s[0, 0] = np.nan\n"
              "refused(k.model_epoch, 'plan_scalars', dataclasses.replace(e, plan_scalars=s))")
        probe(g, f"{backend}.model_epochs.cross-overlap", pre +
              "e1, e2 = model_epoch(" + b + "), model_epoch(" + b + ")\n"
              "raises(ValueError, 'overlap', k.model_epochs, [e1, dataclasses.replace(e2, params=e1.params)])\n"
              "raises(ValueError, 'overlap', k.model_epochs, [e1, dataclasses.replace(e2, workspace=e1.workspace)])\n"
              "refused(k.model_epochs, 'epochs', e1)\n"
              "refused(k.model_epochs, 'epochs', [])\n"
              "bad = e1.X.astype(np.float32)\n"
              "w = e2.workspace; v = w[:bad.size].reshape(bad.shape); v[...] = bad\n"
              "raises(ValueError, 'overlap', k.model_epochs, [dataclasses.replace(e1, X=v), e2])")
    return g


# ---- the Python front: models, layers, the trainer, files ------------------------------

def _front_probes():
    g = "front"
    P = lambda name, src: probe(g, name, src)  # noqa: E731
    P("predict.batch_size-bad", "m = small_model(); X = f32(10, 4)\n"
      "for bad in (-1, 0, 2.5, True, None, '4', np.float64(3.0)):\n"
      "    refused(m.predict, 'batch_size', X, batch_size=bad)")
    P("predict.batch_size-huge-ok", "m = small_model(); X = f32(10, 4)\n"
      "assert np.allclose(m.predict(X, batch_size=2**62), m.predict(X, batch_size=3), atol=1e-6)")
    P("predict.batch_size-numpy-int", "m = small_model(); X = f32(10, 4)\n"
      "assert np.allclose(m.predict(X, batch_size=np.int64(4)), m.predict(X), atol=1e-6)")
    P("trainer.predict.batch_size-bad", "t = trainer(); X = f32(10, 4)\n"
      "for bad in (-1, 0, 2.5, True, '4'):\n"
      "    refused(t.predict, 'batch_size', X, batch_size=bad)")
    P("predict.X-bad", "m = small_model()\n"
      "refused(m.predict, 'X', f32(10, 5)); refused(m.predict, 'X', f32(4))\n"
      "refused(m.predict, 'X', np.zeros((0, 4))); refused(m.predict, 'X', np.array([['a'] * 4]))\n"
      "x = f32(3, 4); x[1, 1] = np.inf; refused(m.predict, 'X', x)\n"
      "x = f32(3, 4); x[1, 1] = np.nan; refused(m.predict, 'X', x)\n"
      "refused(m.predict, 'X', None); refused(m.predict, 'X', [[1, 2], [3]])\n"
      "refused(m.predict, 'X', f32(3, 4).astype(complex))")
    P("predict.single-sample", "m = small_model(); X = f32(5, 4)\n"
      "assert np.allclose(m.predict(X[:1]), m.predict(X)[:1], atol=1e-6)")
    P("predict.float64-and-fortran", "m = small_model(); X = f32(5, 4)\n"
      "assert np.allclose(m.predict(np.asfortranarray(X.astype(np.float64))), m.predict(X), atol=1e-6)")
    P("layer-reuse", "d1, d2 = fastnn.Dense(4, 8, 'relu'), fastnn.Dense(8, 3)\n"
      "m1 = fastnn.Sequential([d1, d2], seed=0); X = f32(5, 4); before = m1.predict(X)\n"
      "try:\n"
      "    m2 = fastnn.Sequential([d1, fastnn.Dense(8, 3)], seed=1)\n"
      "except (TypeError, ValueError) as e:\n"
      "    assert 'layer' in str(e), e\n"
      "else:\n"
      "    assert np.array_equal(m1.predict(X), before), 'm1 now predicts with m2 weights'\n"
      "    m2.params[:] = 0; assert np.array_equal(m1.predict(X), before)\n"
      "    assert not np.shares_memory(m1.params, m2.params)")
    P("model-deepcopy", "import copy\n"
      "m = fastnn.Sequential([fastnn.Dense(4, 8, 'relu'), fastnn.BatchNorm(8), fastnn.Dense(8, 3)], seed=0)\n"
      "X = f32(5, 4); m2 = copy.deepcopy(m)\n"
      "assert np.array_equal(m.predict(X), m2.predict(X))\n"
      "assert not np.shares_memory(m.params, m2.params)\n"
      "m2.params[:] = 0; assert np.allclose(m2.predict(X), 0) and not np.allclose(m.predict(X), 0)\n"
      "t = trainer(m2); t.fit(X, np.array([0, 1, 2, 0, 1]), epochs=1, batch_size=5, verbose=False)\n"
      "assert np.array_equal(m.predict(X), copy.deepcopy(m).predict(X))")
    P("layer-reuse-same-model", "d = fastnn.Dense(4, 4, 'relu')\n"
      "try:\n"
      "    m = fastnn.Sequential([d, d, fastnn.Dense(4, 3)], seed=0)\n"
      "except (TypeError, ValueError) as e:\n"
      "    assert 'layer' in str(e), e\n"
      "else:\n"
      "    X = f32(5, 4); y = m.predict(X)\n"
      "    w = [l for l in m.layers]; assert w[0] is not w[1] or True")
    P("layer-reuse-nested-block", "import fastnn.blocks as B\n"
      "names = [n for n in dir(B) if isinstance(getattr(B, n), type)]\n"
      "d = fastnn.Dense(4, 4)\n"
      "m1 = fastnn.Sequential([d, fastnn.Dense(4, 3)], seed=0); X = f32(5, 4); before = m1.predict(X)\n"
      "try:\n"
      "    m2 = fastnn.Sequential([fastnn.Dense(4, 4), d, fastnn.Dense(4, 3)], seed=1)\n"
      "except (TypeError, ValueError):\n"
      "    pass\n"
      "assert np.array_equal(m1.predict(X), before)")
    P("sequential.bad-layers", "refused(fastnn.Sequential, 'layers', [])\n"
      "refused(fastnn.Sequential, 'layers', [1, 2])\n"
      "refused(fastnn.Sequential, 'layers', None)\n"
      "refused(fastnn.Sequential, 'layers', 5)\n"
      "refused(fastnn.Sequential, 'dtype', [fastnn.Dense(2, 2)], dtype=np.int32)\n"
      "refused(fastnn.Sequential, ('input_shape', 'Conv2D', 'shape'), [fastnn.Conv2D(1, 2, 3)], input_shape=(2, 2))\n"
      "refused(fastnn.Sequential, ('backend',), [fastnn.Dense(2, 2)], backend='nope')\n"
      "refused(fastnn.Sequential, ('Dense', 'takes', 'in', 'features', 'shape'), [fastnn.Dense(2, 3), fastnn.Dense(4, 1)])")
    P("set_params-bad", "m = small_model()\n"
      "refused(m.set_params, 'flat', np.zeros(3))\n"

      "refused(m.set_params, 'flat', ['a'] * m.size)")
    P("set_buffers-bad", "m = fastnn.Sequential([fastnn.Dense(4, 3), fastnn.BatchNorm(3)], seed=0)\n"
      "b = m.get_buffers(); b[:] = np.nan\n"
      "refused(m.set_buffers, ('flat', 'running_var', 'buffers'), b)")
    # layers' arguments
    layer_bad = [
        ("Dense", "(4.5, 3)"), ("Dense", "(0, 3)"), ("Dense", "(-1, 3)"), ("Dense", "(4, 3, 'nope')"),
        ("Dense", "(4, 3, ['relu'])"), ("Dense", "(4, 3, {'a': 1})"), ("Dense", "('4', 3)"),
        ("Dense", "(True, 3)"), ("Dense", "(2**62, 2**62)"), ("Dense", "(4, 3, init='nope')"),
        ("Dense", "(4, 3, 'leaky_relu', negative_slope=float('nan'))"),
        ("Conv2D", "(1, 2, 2.5)"), ("Conv2D", "(1, 2, 0)"), ("Conv2D", "(1, 2, (3,))"),
        ("Conv2D", "(1, 2, 3, stride=0)"), ("Conv2D", "(1, 2, 3, stride=1.5)"),
        ("Conv2D", "(1, 2, 3, padding=-1)"), ("Conv2D", "(1, 2, 3, padding=3)"),
        ("Conv2D", "(1, 2, 3, padding='same!')"), ("Conv2D", "(1.5, 2, 3)"), ("Conv2D", "(1, 0, 3)"),
        ("Conv2D", "(1, 2, 3, activation=['relu'])"), ("Conv2D", "(1, 2, 3, activation='nope')"),
        ("MaxPool2D", "(2.5)"), ("MaxPool2D", "(0)"), ("MaxPool2D", "(2, stride=0)"),
        ("MaxPool2D", "('2')"), ("AvgPool2D", "(2.5)"), ("AvgPool2D", "(-1)"),
        ("BatchNorm", "(0)"), ("BatchNorm", "(2.5)"), ("BatchNorm", "(3, momentum=2.0)"),
        ("BatchNorm", "(3, momentum=float('nan'))"), ("BatchNorm", "(3, eps=0.0)"),
        ("BatchNorm", "(3, eps=-1.0)"), ("BatchNorm", "(3, eps=float('nan'))"),
        ("Dropout", "(1.0)"), ("Dropout", "(-0.1)"), ("Dropout", "(float('nan'))"), ("Dropout", "('0.5')"),
        ("Activation", "('nope')"), ("Activation", "(['relu'])"), ("Activation", "(None, negative_slope=-1.0)"),
        ("LeakyReLU", "(negative_slope=float('nan'))"), ("LeakyReLU", "(negative_slope=-1.0)"),
    ]
    for cls, args in layer_bad:
        P(f"layer.{cls}{args}", f"cls = getattr(fastnn, {cls!r}, None)\n"
          "if cls is not None:\n"
          f"    raises((TypeError, ValueError), r'^[a-z_]+( |:)|{cls}', lambda: cls{args})")
    P("layers.unhashable-activation-message", "e = raises((TypeError, ValueError), 'activation', fastnn.Dense, 4, 3, ['relu'])\n"
      "assert 'unhashable' not in str(e), e")
    P("layers.conv-kernel-float-message", "e = raises((TypeError, ValueError), 'kernel_size', fastnn.Conv2D, 1, 2, 2.5)")
    P("blocks-and-others-bad-args", "import fastnn.blocks as B, inspect\n"
      "bad = 0\n"
      "for name in ('Residual', 'Sequential', 'Embedding', 'LSTM', 'GRU', 'RNN', 'LayerNorm', 'GlobalAvgPool2D', 'Flatten', 'Identity'):\n"
      "    cls = getattr(fastnn, name, None) or getattr(B, name, None)\n"
      "    if cls is None: continue\n"
      "    sig = inspect.signature(cls)\n"
      "    req = [p for p in sig.parameters.values() if p.default is p.empty and p.kind == p.POSITIONAL_OR_KEYWORD]\n"
      "    for bad_value in ('x', -1, 2.5, None):\n"
      "        if not req: break\n"
      "        try:\n"
      "            cls(*[bad_value] * len(req))\n"
      "        except (TypeError, ValueError):\n"
      "            pass\n"
      "        except Exception as e:\n"
      "            raise ProbeFailed(f'{name}({bad_value!r}): {type(e).__name__}: {e}')")
    # the trainer: wrong types before anything trains
    fit_bad = [
        ("early_stopping", "'yes'"), ("early_stopping", "3.5"), ("early_stopping", "[1]"),
        ("early_stopping", "-1"), ("early_stopping", "True"),
        ("callbacks", "5"), ("callbacks", "[5]"), ("callbacks", "'abc'"), ("callbacks", "lambda *a: None"),
        ("validation_data", "5"), ("validation_data", "(f32(5, 4),)"), ("validation_data", "f32(5, 4)"),
        ("validation_data", "(f32(5, 3), np.zeros(5, int))"), ("validation_data", "(f32(5, 4), np.zeros(4, int))"),
        ("validation_data", "(f32(5, 4), np.full(5, 7))"), ("validation_data", "'abc'"),
        ("validation_split", "'0.1'"), ("validation_split", "float('nan')"), ("validation_split", "1.0"),
        ("validation_split", "-0.1"), ("validation_split", "None"), ("validation_split", "[0.1]"),
        ("validation_split", "0.999"),
        ("epochs", "-1"), ("epochs", "2.5"), ("epochs", "'3'"), ("epochs", "None"), ("epochs", "True"),
        ("batch_size", "0"), ("batch_size", "-1"), ("batch_size", "2.5"), ("batch_size", "'8'"),
        ("batch_size", "None"), ("seed", "'x'"), ("seed", "2.5"), ("seed", "-1"), ("shuffle", "'no'"),
    ]
    for arg, bad in fit_bad:
        P(f"fit.{arg}={bad}", "t = trainer(); X, y = toy(); p0 = t.model.get_params()\n"
          f"refused(t.fit, ({arg!r},), X, y, epochs=1 if {arg!r} != 'epochs' else {bad}, "
          + (f"{arg}={bad}, " if arg != "epochs" else "") + "verbose=False)\n"
          "assert np.array_equal(t.model.get_params(), p0), 'trained before refusing'")
    P("fit.callbacks-generator", "t = trainer(); X, y = toy(); seen = []\n"
      "t.fit(X, y, epochs=2, verbose=False, callbacks=(f for f in [lambda tr, ep, logs: seen.append(ep)]))\n"
      "assert seen == [0, 1], seen")
    P("fit.batch_size-overflow", "t = trainer(); X, y = toy(); p0 = t.model.get_params()\n"
      "h = t.fit(X, y, epochs=1, batch_size=2**61 + 12345, verbose=False)\n"
      "t2 = trainer(); h2 = t2.fit(X, y, epochs=1, batch_size=len(X), verbose=False)\n"
      "assert np.allclose(t.model.get_params(), t2.model.get_params(), atol=1e-6)")
    P("fit.batch_size-past-int64", "t = trainer(); X, y = toy()\n"
      "try:\n    t.fit(X, y, epochs=1, batch_size=2**64, verbose=False)\n"
      "except (TypeError, ValueError) as e:\n    assert 'batch_size' in str(e)\n")
    P("fit.X-y-bad", "t = trainer(); X, y = toy()\n"
      "refused(t.fit, 'X', X[:, :3], y, verbose=False)\n"
      "refused(t.fit, ('y', 'targets', 'labels'), X, y[:-1], verbose=False)\n"
      "refused(t.fit, ('y', 'targets', 'labels'), X, y + 2**32, verbose=False)\n"
      "refused(t.fit, ('y', 'targets', 'labels'), X, -y - 1, verbose=False)\n"
      "refused(t.fit, ('y', 'targets', 'labels'), X, y.astype(float) + 0.5, verbose=False)\n"
      "refused(t.fit, ('y', 'targets', 'labels'), X, np.full(len(y), 3), verbose=False)\n"
      "refused(t.fit, ('y', 'targets', 'labels'), X, y.astype(str), verbose=False)\n"
      "Xn = X.copy(); Xn[3, 1] = np.nan; refused(t.fit, 'X', Xn, y, verbose=False)\n"
      "Xi = X.copy(); Xi[3, 1] = -np.inf; refused(t.fit, 'X', Xi, y, verbose=False)\n"
      "refused(t.fit, 'X', X[:0], y[:0], verbose=False)\n"
      "refused(t.fit, ('y', 'targets', 'labels'), X, None, verbose=False)")
    P("fit.single-sample", "t = trainer(); X, y = toy()\n"
      "h = t.fit(X[:1], y[:1], epochs=2, batch_size=4, verbose=False)\n"
      "assert np.isfinite(t.model.get_params()).all()")
    P("fit.int64-labels-near-limit-valid", "t = trainer(); X, y = toy()\n"
      "t.fit(X, y.astype(np.int64), epochs=1, verbose=False); t.fit(X, y.astype(np.uint8), epochs=1, verbose=False)")
    P("fit.batchnorm-last-batch-one", "m = fastnn.Sequential([fastnn.Dense(4, 6), fastnn.BatchNorm(6), fastnn.Dense(6, 3)], seed=0)\n"
      "t = trainer(m); X, y = toy(n=33); p0 = m.get_params()\n"
      "try:\n"
      "    t.fit(X, y, epochs=1, batch_size=8, verbose=False)\n"
      "except ValueError as e:\n"
      "    assert 'batch_size' in str(e), e\n"
      "    assert np.array_equal(m.get_params(), p0)\n"
      "else:\n"
      "    assert np.isfinite(m.get_params()).all()")
    P("fit.nan-diverges-clearly", "t = fastnn.Trainer(small_model(), 'softmax_cross_entropy', fastnn.optim.SGD(lr=1e30))\n"
      "X, y = toy(); X = X * 1e30\n"
      "try:\n"
      "    t.fit(X, y, epochs=3, verbose=False)\n"
      "except FloatingPointError as e:\n"
      "    assert 'epoch' in str(e)\n")
    P("trainer.bad-construction", "m = small_model()\n"
      "refused(fastnn.Trainer, ('model',), None, 'softmax_cross_entropy', fastnn.optim.Adam())\n"
      "refused(fastnn.Trainer, ('loss',), m, 'nope', fastnn.optim.Adam())\n"
      "refused(fastnn.Trainer, ('loss',), m, ['mse'], fastnn.optim.Adam())\n"
      "refused(fastnn.Trainer, ('optimizer',), m, 'mse', 5)")
    P("optim.bad-hyper", "import fastnn.optim as O\n"
      "for cls, kw in ((O.Adam, dict(lr=float('nan'))), (O.Adam, dict(lr=-1.0)), (O.Adam, dict(betas=(1.5, 0.9))),\n"
      "                (O.Adam, dict(betas=(0.9,))), (O.Adam, dict(eps=-1.0)), (O.SGD, dict(lr=0.1, momentum=-1.0)),\n"
      "                (O.SGD, dict(lr=0.1, nesterov=True)), (O.Adam, dict(lr='0.1')), (O.Adam, dict(weight_decay=float('inf')))):\n"
      "    refused(cls, ('lr', 'betas', 'beta1', 'beta2', 'eps', 'momentum', 'nesterov', 'weight_decay'), **kw)\n"
      "refused(O.get, ('name', 'optimizer'), 'nope')")
    # files
    P("save.umask-and-no-temporaries", "m = small_model()\n"
      "d = tempfile.mkdtemp(); old = os.umask(0o022)\n"
      "try:\n"
      "    m.save(os.path.join(d, 'a.npz'))\n"
      "finally:\n"
      "    os.umask(old)\n"
      "mode = os.stat(os.path.join(d, 'a.npz')).st_mode & 0o777\n"
      "assert mode == 0o644, oct(mode)\n"
      "os.umask(0o077)\n"
      "try:\n"
      "    m.save(os.path.join(d, 'b.npz'))\n"
      "finally:\n"
      "    os.umask(old)\n"
      "assert os.stat(os.path.join(d, 'b.npz')).st_mode & 0o777 == 0o600\n"
      "assert sorted(os.listdir(d)) == ['a.npz', 'b.npz'], os.listdir(d)")
    P("save.kill-9-leaves-nothing-behind", "d = tempfile.mkdtemp(); path = os.path.join(d, 'm.npz')\n"
      "code = ('import os, signal, numpy as np, fastnn\\n'\n"
      "        'm = fastnn.Sequential([fastnn.Dense(300, 3000), fastnn.Dense(3000, 300)], seed=0)\\n'\n"
      "        'orig = np.savez\\n'\n"
      "        'def dying(*a, **k):\\n'\n"
      "        '    os.kill(os.getpid(), signal.SIGKILL)\\n'\n"
      "        'np.savez = dying\\n'\n"
      f"        'm.save({{path!r}})\\n')\n"
      "subprocess.run([sys.executable, '-c', code.format(path=path)])\n"
      "left = os.listdir(d)\n"
      "small_model().save(path)\n"
      "assert sorted(os.listdir(d)) == ['m.npz'], (left, os.listdir(d))")
    P("save.unwritable", "m = small_model()\n"
      "raises(OSError, None, m.save, '/proc/nope/x.npz')\n"
      "d = tempfile.mkdtemp(); os.chmod(d, 0o500)\n"
      "try:\n"
      "    if os.geteuid() != 0: raises(OSError, None, m.save, os.path.join(d, 'x.npz'))\n"
      "finally:\n"
      "    os.chmod(d, 0o700)\n"
      "assert os.listdir(d) == []")
    P("save.to-directory", "m = small_model(); d = tempfile.mkdtemp()\n"
      "raises((OSError, ValueError), None, m.save, d)\n"
      "assert os.listdir(d) == []")
    P("save-load.roundtrip", "m = fastnn.Sequential([fastnn.Dense(4, 6), fastnn.BatchNorm(6), fastnn.Dense(6, 3)], seed=0)\n"
      "t = trainer(m); X, y = toy(); t.fit(X, y, epochs=1, batch_size=10, verbose=False)\n"
      "d = tempfile.mkdtemp(); p = os.path.join(d, 'm.npz'); m.save(p)\n"
      "m2 = fastnn.load(p); assert np.array_equal(m2.predict(X), m.predict(X))")

    def crafted(name, body, match="m.npz"):
        P(f"load.{name}", "d = tempfile.mkdtemp(); path = os.path.join(d, 'm.npz')\n"
          "m = fastnn.Sequential([fastnn.Dense(4, 6), fastnn.BatchNorm(6), fastnn.Dense(6, 3)], seed=0)\n"
          "m.save(path)\n"
          "with np.load(path) as z: arch = json.loads(str(z['architecture'])); params = z['params']; buffers = z['buffers']\n"
          "def write(arch=arch, params=params, buffers=buffers, raw=None, **extra):\n"
          "    np.savez(path, architecture=np.array(raw if raw is not None else json.dumps(arch)), params=params, buffers=buffers, **extra)\n"
          + body + "\n"
          "with memory_limit(1 << 30):\n"
          f"    raises(ValueError, {match!r}, fastnn.load, path)")

    crafted("huge-dense", "arch['layers'][0]['config'].update(in_features=2**20, out_features=2**20)\n"
            "arch['input_shape'] = [2**20]; arch['layers'][1]['config']['num_features'] = 2**20\n"
            "arch['layers'][2]['config']['in_features'] = 2**20; write()")
    crafted("huge-dense-overflow", "arch['layers'][0]['config'].update(in_features=2**40, out_features=2**40)\n"
            "arch['input_shape'] = [2**40]; write()")
    crafted("huge-batchnorm", "arch['layers'][1]['config']['num_features'] = 2**33; write()")
    crafted("huge-conv", "arch['input_shape'] = [2**16, 2**16, 1]\n"
            "arch['layers'] = [{'type': 'Conv2D', 'config': {'in_channels': 1, 'out_channels': 2**20, 'kernel_size': [64, 64]}}]; write()")
    crafted("nan-running-var", "b = buffers.copy(); b[16:22] = np.nan; write(buffers=b)")
    crafted("negative-running-var", "b = buffers.copy(); b[16:22] = -1.0; write(buffers=b)")
    crafted("nan-running-mean", "b = buffers.copy(); b[:6] = np.nan; write(buffers=b)")
    crafted("float64-buffers", "write(buffers=buffers.astype(np.float64) + 1e300)")
    crafted("nan-params", "p = params.copy(); p[0] = np.nan; write(params=p)")
    crafted("short-params", "write(params=params[:-1])")
    crafted("int-params", "write(params=params.astype(np.int64))")
    crafted("2d-params", "write(params=params[None])")
    crafted("json-list", "write(raw='[1, 2, 3]')")
    crafted("json-string", "write(raw='\"fastnn-sequential-1\"')")
    crafted("json-null", "write(raw='null')")
    crafted("json-bad", "write(raw='{not json')")
    crafted("json-nan", "write(raw='NaN')")
    crafted("json-deep", "write(raw='[' * 100000 + ']' * 100000)")
    crafted("layers-not-list", "arch['layers'] = 5; write()")
    crafted("layers-dict", "arch['layers'] = {'a': 1}; write()")
    crafted("layer-not-dict", "arch['layers'][0] = 'Dense'; write()")
    crafted("layer-type-unhashable", "arch['layers'][0]['type'] = ['Dense']; write()")
    crafted("layer-config-not-dict", "arch['layers'][0]['config'] = [4, 6]; write()")
    crafted("layer-config-extra-key", "arch['layers'][0]['config']['bogus'] = 1; write()")
    crafted("layer-config-string-size", "arch['layers'][0]['config']['in_features'] = '4'; write()")
    crafted("layer-config-float-size", "arch['layers'][0]['config']['in_features'] = 4.5; write()")
    crafted("layer-config-negative", "arch['layers'][0]['config']['out_features'] = -6; write()")
    crafted("layer-activation-unhashable", "arch['layers'][0]['config']['activation'] = ['relu']; write()")
    crafted("input_shape-bad", "arch['input_shape'] = 'abc'; write()")
    crafted("input_shape-negative", "arch['input_shape'] = [-4]; write()")
    crafted("input_shape-dict", "arch['input_shape'] = {'a': 1}; write()")
    crafted("seed-bad", "arch['seed'] = 'x'; write()")
    crafted("seed-float", "arch['seed'] = 1.5; write()")
    crafted("no-layers", "arch['layers'] = []; write()")
    crafted("format-missing", "del arch['format']; write()")
    crafted("format-unhashable", "arch['format'] = ['x']; write()")
    crafted("extra-array", "write(extra=np.zeros(3))")
    crafted("object-array", "np.savez(path, architecture=np.array([{'a': 1}], dtype=object), params=params, buffers=buffers)")
    crafted("not-a-zip", "open(path, 'wb').write(b'PK\\x03\\x04garbage' * 10)")
    crafted("empty-file", "open(path, 'wb').close()")
    crafted("architecture-bytes", "np.savez(path, architecture=np.frombuffer(b'xyz', np.uint8), params=params, buffers=buffers)")
    crafted("architecture-2d", "np.savez(path, architecture=np.array([[json.dumps(arch)]]), params=params, buffers=buffers)")
    P("load.missing-file", "raises((OSError, ValueError), 'nope', fastnn.load, '/nonexistent/nope.npz')")
    P("load.directory", "d = tempfile.mkdtemp(); raises((OSError, ValueError), None, fastnn.load, d)")
    P("kernels.get-bad", "refused(kernels.get, 'backend', 'nope'); refused(kernels.get, 'backend', ['c'])\n"
      "refused(fastnn.set_backend, 'backend', 'nope')")
    P("set_num_threads-numpy-and-limit", "fastnn.set_num_threads(np.int64(2)); fastnn.set_num_threads(np.int32(1))\n"
      "for bad in (2**31, 2**63, 0, -1, 1.5, '2', None, True):\n"
      "    refused(fastnn.set_num_threads, 'n', bad)")
    P("metrics-bad", "from fastnn import metrics as M\n"
      "refused(M.accuracy, ('y_true', 'y_pred', 'length', 'shape'), [0, 1], [0])\n"
      "refused(M.confusion_matrix, ('y_true', 'y_pred', 'labels', 'length', 'shape'), [0, 1], [0, 1, 1])")
    P("one-hot-like-targets-mse", "m = small_model(); t = fastnn.Trainer(m, 'mse', fastnn.optim.Adam())\n"
      "X, _ = toy(); T = f32(40, 3); T[0, 0] = np.nan\n"
      "refused(t.fit, ('y', 'targets', 'T'), X, T, epochs=1, verbose=False)\n"
      "refused(t.fit, ('y', 'targets', 'T'), X, f32(40, 2), epochs=1, verbose=False)")
    # neighbours: the other public functions
    for expr in ("fastnn.schedules.StepLR(0)", "fastnn.schedules.StepLR(2.5)", "fastnn.schedules.StepLR(2, gamma=float('nan'))",
                 "fastnn.schedules.StepLR(2, gamma=-1.0)", "fastnn.schedules.ExponentialLR(float('inf'))",
                 "fastnn.schedules.CosineAnnealingLR(0)", "fastnn.schedules.CosineAnnealingLR('10')",
                 "fastnn.schedules.CosineAnnealingLR(10, eta_min=float('nan'))",
                 "fastnn.schedules.ReduceLROnPlateau(factor=1.5)",
                 "fastnn.schedules.ReduceLROnPlateau(factor=float('nan'))",
                 "fastnn.datasets.make_xor(0)", "fastnn.datasets.make_xor(10, noise=-1.0)",
                 "fastnn.datasets.make_xor(10, noise=float('nan'))", "fastnn.datasets.make_xor(2.5)",
                 "fastnn.datasets.make_spirals(10, n_classes=0)",
                 "fastnn.datasets.logic_gate('nope')", "fastnn.datasets.logic_gate(['and'])",
                 "fastnn.datasets.load_mnist('/nonexistent')", "fastnn.datasets.load_mnist('.', kind='nope')",
                 "fastnn.datasets.read_idx('/nonexistent')",
                 "fastnn.Conv1D(1, 2, 2.5)", "fastnn.Conv1D(1, 2, 0)", "fastnn.MaxPool1D(0)", "fastnn.AvgPool1D(1.5)",
                 "fastnn.Residual(5)", "fastnn.Residual([])", "fastnn.Residual([fastnn.Dense(2, 3)], projection='x')",
                 "fastnn.losses.get('nope')", "fastnn.losses.get(['mse'])", "fastnn.losses.get(5)",
                 "fastnn.optim.get(['adam'])", "fastnn.optim.get(5)",
                 "fastnn.metrics.accuracy([], [])", "fastnn.metrics.precision([0, 1], [0, 1], average='nope')",
                 "fastnn.metrics.roc_auc([0, 1, 1], [0.1, float('nan'), 0.3])", "fastnn.metrics.roc_auc([0, 1], [0.5])",
                 "fastnn.metrics.confusion_matrix([0, 1], [1, 0], labels=[])",
                 "fastnn.metrics.accuracy([[0, 1]], [[0, 1]])",
                 "fastnn.EarlyStopping(patience=-1)", "fastnn.EarlyStopping(patience='x')",
                 "fastnn.EarlyStopping(min_delta=float('nan'))"):
        P(f"api.{expr}", "try:\n"
          f"    {expr}\n"
          "except (TypeError, ValueError, OSError) as e:\n"
          "    assert str(e) and 'object has no attribute' not in str(e) and 'not supported between' not in str(e), e\n"
          "except Exception as e:\n"
          "    raise ProbeFailed(f'{type(e).__name__}: {e}')\n"
          + ("else:\n    raise ProbeFailed('accepted')\n" if "accuracy([[" not in expr else ""))
    P("idx-crafted", "d = tempfile.mkdtemp()\n"
      "for blob in (b'', b'\\x00\\x00\\x08\\x03', b'\\x00\\x00\\x08\\x03' + (2**31 - 1).to_bytes(4, 'big') * 3,\n"
      "             b'\\x00\\x00\\x08\\xff' + b'\\x00' * 8, b'\\x00\\x00\\x0d\\x01' + (5).to_bytes(4, 'big') + b'\\x00' * 3):\n"
      "    p = os.path.join(d, 'x.idx'); open(p, 'wb').write(blob)\n"
      "    with memory_limit(1 << 30):\n"
      "        raises(ValueError, 'x.idx', fastnn.datasets.read_idx, p)")
    P("csv-crafted", "d = tempfile.mkdtemp()\n"
      "for text in ('', '\\n\\n', '1,2\\n3', 'a,b\\nc,d\\n', '1,2,3\\n4,5\\n', '1,inf,0\\n'):\n"
      "    p = os.path.join(d, 'x.csv'); open(p, 'w').write(text)\n"
      "    try:\n"
      "        X, y = fastnn.datasets.load_csv(p)\n"
      "    except ValueError as e:\n"
      "        assert 'x.csv' in str(e) or ':' in str(e), e\n"
      "    else:\n"
      "        assert text.startswith('1,inf'), (text, X, y)\n")
    P("fit_many-bad", "X, y = toy()\n"
      "refused(fastnn.fit_many, 'trainers', [], X, y)\n"
      "refused(fastnn.fit_many, 'trainers', 5, X, y)\n"
      "refused(fastnn.fit_many, 'trainers', [trainer(), 5], X, y)\n"
      "t = trainer(); refused(fastnn.fit_many, ('trainers', 'twice', 'same'), [t, t], X, y)\n"
      "refused(fastnn.fit_many, 'batch_size', [trainer(), trainer()], X, y, batch_size=0)\n"
      "refused(fastnn.fit_many, 'epochs', [trainer(), trainer()], X, y, epochs=-1)\n"
      "refused(fastnn.fit_many, 'validation_data', [trainer(), trainer()], X, y, validation_data=5)")
    P("perceptron-bad", "P = fastnn.Perceptron\n"
      "for kw in (dict(eta0=float('nan')), dict(eta0=-1.0), dict(max_iter=0), dict(max_iter=2.5)):\n"
      "    try:\n"
      "        P(**kw).fit(np.zeros((4, 2)), np.array([0, 1, 0, 1]))\n"
      "    except (TypeError, ValueError) as e:\n"
      "        assert str(e)\n"
      "    else:\n"
      "        raise ProbeFailed(f'accepted {kw}')\n"
      "x = np.zeros((4, 2)); x[0, 0] = np.nan\n"
      "raises(ValueError, None, P().fit, x, np.array([0, 1, 0, 1]))")
    return g


# ---- the command line ------------------------------------------------------------------

def _cli_probes():
    g = "cli"
    P = lambda name, src: probe(g, name, src)  # noqa: E731
    for opt, bad in (("--epochs", "-1"), ("--epochs", "abc"), ("--batch-size", "0"),
                     ("--batch-size", "-5"), ("--lr", "nan"), ("--lr", "-1"), ("--lr", "inf"),
                     ("--threads", "0"), ("--threads", "2147483648"), ("--test-size", "1.5"),
                     ("--test-size", "0"), ("--test-size", "nan"), ("--val-size", "1.0"),
                     ("--val-size", "-0.1"), ("--momentum", "nan"), ("--weight-decay", "-1"),
                     ("--layers", "0"), ("--layers", "a,b")):
        P(f"cli{opt}={bad}", f"cli_error('train', '--quiet', '{opt}={bad}', option={opt!r})")
    P("cli.huge-layer", "with memory_limit(1 << 30):\n"
      "    cli_error('train', '--quiet', '--layers', '100000000000', option='layers')")
    P("cli.real-process", "rc, out, err = run_cli('train', '--epochs', '0')\n"
      "assert rc == 2 and 'Traceback' not in err and '--epochs' in err.strip().splitlines()[-1], err")
    P("cli.val-size-too-small", "d = tempfile.mkdtemp(); p = os.path.join(d, 'x.csv')\n"
      "open(p, 'w').write('\\n'.join(f'{i},{i % 2}' for i in range(12)))\n"
      "cli_error('train', '--quiet', '--dataset', 'csv', '--data-path', p, '--val-size', '0.01', option='val-size')")
    P("cli.csv-missing", "cli_error('train', '--dataset', 'csv', '--data-path', '/nonexistent.csv', option='data-path|nonexistent')")
    P("cli.csv-needs-path", "cli_error('train', '--dataset', 'csv', option='data-path')")
    for what, text in (("empty", ""), ("ragged", "1,2,0\\n3,1\\n4,5,1\\n"), ("non-numeric", "1,x,0\\n3,4,1\\n"),
                       ("header-only", "a,b,label\\n"), ("one-row", "1,2,0\\n"),
                       ("nan", "1,nan,0\\n2,3,1\\n4,5,0\\n6,7,1\\n")):
        P(f"cli.csv-{what}", "d = tempfile.mkdtemp(); p = os.path.join(d, 'x.csv')\n"
          f"open(p, 'w').write('{text}')\n"
          "cli_error('train', '--quiet', '--dataset', 'csv', '--data-path', p, option='data-path|x.csv|csv')")
    P("cli.mnist-missing-folder", "cli_error('train', '--dataset', 'mnist', '--data-path', '/nonexistent', option='data-path|nonexistent')")
    P("cli.mnist-empty-folder", "d = tempfile.mkdtemp(); cli_error('train', '--dataset', 'mnist', '--data-path', d, option='data-path|mnist|MNIST')")
    P("cli.cuda-without-gpu", "from fastnn import kernels\n"
      "if kernels.available('cuda'):\n    pass  # a GPU (or the simulator) is here\n"
      "else:\n    cli_error('train', '--quiet', '--backend', 'cuda', '--epochs', '1', option='backend')")
    P("cli.save-unwritable-checked-first", "import time\n"
      "t0 = time.time()\n"
      "err = cli_error('train', '--quiet', '--epochs', '500', '--save', '/nonexistent/dir/m.npz', option='save')\n"
      "assert time.time() - t0 < 60")
    P("cli.save-to-directory", "d = tempfile.mkdtemp(); cli_error('train', '--quiet', '--epochs', '500', '--save', d, option='save')")
    P("cli.cnn-on-csv", "d = tempfile.mkdtemp(); p = os.path.join(d, 'x.csv')\n"
      "open(p, 'w').write('\\n'.join(f'{i},{i % 2}' for i in range(20)))\n"
      "cli_error('train', '--dataset', 'csv', '--data-path', p, '--model', 'cnn', option='model')")
    P("cli.ok-small", "d = tempfile.mkdtemp(); p = os.path.join(d, 'm.npz')\n"
      "rc, out, err = cli_main('train', '--quiet', '--epochs', '1', '--layers', '8', '--save', p)\n"
      "assert rc == 0, err; assert os.path.exists(p) and 'test accuracy' in out\n"
      "assert sorted(os.listdir(d)) == ['m.npz']")
    return g


GROUPS = [_kernel_probes(b) for b in BACKENDS] + [_epoch_probes(b) for b in BACKENDS] \
    + [_front_probes(), _cli_probes()]
SLOW_GROUPS = [_kernel_probes(b, exhaustive=True) for b in BACKENDS] \
    + [_epoch_probes(b, exhaustive=True) for b in BACKENDS]
for _g in SLOW_GROUPS:  # the exhaustive variant runs only what the default run does not
    _base = PROBES[_g[:-len("-slow")]]
    PROBES[_g] = {n: src for n, src in PROBES[_g].items() if n not in _base}


def run_group(group, timeout=300):
    """{name: (passed, reason)} of every probe of `group`; a crashed or
    hung process fails the probe that was running and the rest go on."""
    todo = list(PROBES[group].items())
    results = {}
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONFAULTHANDLER="1")
    while todo:
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "_probe_runner.py")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        try:
            out, err = proc.communicate(json.dumps(todo), timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err = "timeout " + err
        running = None
        for line in out.splitlines():
            word, _, rest = line.partition(" ")
            index, _, reason = rest.partition(" ")
            if word == "START" and index.isdigit():
                running = int(index)
            elif word in ("PASS", "FAIL") and index.isdigit() and int(index) == running:
                results[todo[running][0]] = (word == "PASS", reason)
                running = None
        if running is not None:  # the process died in this probe
            results[todo[running][0]] = (False, f"crashed (exit {proc.returncode}): {err[-800:]}")
        elif not all(name in results for name, _ in todo):
            first = next(name for name, _ in todo if name not in results)
            results[first] = (False, f"runner failed (exit {proc.returncode}): {err[-800:]}")
        todo = [(n, s) for n, s in todo if n not in results]
    return results


_cache = {}


def _results(group):
    if group not in _cache:
        _cache[group] = run_group(group)
    return _cache[group]


def _bucket(group, name):
    """The pytest case a probe is reported in: one per kernel and backend
    (thousands of generated probes), one per probe of the front and CLI."""
    if group.startswith(("kernels", "epochs")):
        return ".".join(name.split(".")[:2])
    return name


def _cases(groups):
    cases = {}
    for g in groups:
        for n in PROBES[g]:
            cases.setdefault((g, _bucket(g, n)), []).append(n)
    return cases


CASES, SLOW_CASES = _cases(GROUPS), _cases(SLOW_GROUPS)


def _check(group, names):
    results = _results(group)
    failed = [f"{n}: {results[n][1]}" for n in names if not results[n][0]]
    assert not failed, f"{len(failed)} of {len(names)} probes failed:\n" + "\n".join(failed[:30])


@pytest.mark.parametrize("group,bucket", list(CASES), ids=[b for _, b in CASES])
def test_probes(group, bucket):
    _check(group, CASES[group, bucket])


@pytest.mark.slow
@pytest.mark.parametrize("group,bucket", list(SLOW_CASES), ids=[b for _, b in SLOW_CASES])
def test_probes_exhaustive(group, bucket):
    _check(group, SLOW_CASES[group, bucket])


if __name__ == "__main__":  # python tests/test_probes.py [group ...]: a summary
    groups = sys.argv[1:] or GROUPS
    total = failed = 0
    for g in groups:
        res = run_group(g)
        bad = {n: r for n, (ok, r) in res.items() if not ok}
        total += len(res)
        failed += len(bad)
        print(f"{g}: {len(res) - len(bad)}/{len(res)} pass")
        for n, r in sorted(bad.items()):
            print(f"  FAIL {n}: {r[:300]}")
    print(f"total: {total - failed}/{total} pass")
