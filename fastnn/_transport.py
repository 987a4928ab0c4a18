"""Trainers to and from bytes, for fit_many's banks on other processes
(joblib / Dask workers).

A Trainer holds its backend's kernel table (a module: not picklable),
layers whose weights are views into the model's flat buffers (pickle would
copy each view and lose the aliasing) and weak references from the layers
to their model.  ``dumps`` writes the backend by name, every view of a flat
buffer as (base, offset, shape, strides) and a weak reference as its
object, so ``loads`` gives back a trainer whose layers again see the flat
buffers.
"""

import io
import pickle
import weakref

import numpy as np

from . import kernels


def _flat_bases(trainers):
    bases = {}
    for tr in trainers:
        for arr in (tr.model.params, tr.model.grads, tr.model.buffers):
            if isinstance(arr, np.ndarray):
                bases[id(arr)] = arr
    return bases


def _address(arr):
    return arr.__array_interface__["data"][0]


class _Pickler(pickle.Pickler):
    def __init__(self, file, bases):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.bases = bases

    def persistent_id(self, obj):
        if isinstance(obj, kernels.Backend):
            return ("backend", obj.name)
        if isinstance(obj, weakref.ReferenceType):  # a layer's link to its model
            return ("weakref", obj())
        if isinstance(obj, np.ndarray) and id(obj) not in self.bases and obj.base is not None:
            base = obj.base
            while isinstance(base, np.ndarray) and id(base) not in self.bases \
                    and base.base is not None:
                base = base.base
            if isinstance(base, np.ndarray) and id(base) in self.bases:
                return ("view", base, _address(obj) - _address(base), obj.shape, obj.strides,
                        obj.dtype.str)
        return None


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid):
        if pid[0] == "backend":
            return kernels.get(pid[1])
        if pid[0] == "weakref":
            return _dead if pid[1] is None else weakref.ref(pid[1])
        _, base, offset, shape, strides, dtype = pid
        return np.ndarray(shape, np.dtype(dtype), buffer=base, offset=offset, strides=strides)


def _dead():
    return None


def dumps(obj, trainers):
    """obj (holding `trainers`) as bytes."""
    buf = io.BytesIO()
    _Pickler(buf, _flat_bases(trainers)).dump(obj)
    return buf.getvalue()


def loads(data):
    return _Unpickler(io.BytesIO(data)).load()
