"""What every file of the numba backend shares: the fastmath flag sets (the
numerics every kernel keeps), how work is cut between threads, and the
empty array that stands for an absent optional one.

Numba freezes module globals into compiled code as constants, and its disk
cache checks only the source file that defines a function: a kernel that
calls a helper or reads a constant of another file keeps the compiled old
version until its own file changes.  After editing a helper here or in
another file, clear the caches (``__pycache__/*.nbi``, ``*.nbc``).
"""

import platform

import numba  # absolute import: the real numba, not this package
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# FMA contraction only: the same NaN and infinities as the formulas written
# out (spec, IEEE semantics), unless a contracted product would skip an
# overflow the formula has -- rmsprop's sq - ga * ga, compiled without it.
_EXACT = {"contract"}
_REDUCE = {"contract", "reassoc"}  # lets LLVM vectorise sums

# An absent optional array (bias, db, state buffer): empty, so that every
# call has the same argument types and compiles once.
_NO_BUF = np.empty(0, dtype=np.float32)

_CHUNK = 1 << 15  # elements per thread at least: below that, threads cost more than they save


def _chunks(size):
    """Parallel chunks of an elementwise kernel over `size` elements."""
    return max(1, min(numba.get_num_threads(), size // _CHUNK))


@njit(cache=True)
def _spans(size):
    """Spans of at least _CHUNK elements a flat update over `size` elements
    is cut into (prange deals them to the threads in contiguous blocks)."""
    return max(1, size // _CHUNK)


# ---- denormals flushed to zero (the optimizer updates) ---------------------------
# MXCSR FTZ + DAZ on the calling thread, as the c backend's FASTNN_DENORMALS_AS_ZERO
# (csrc/internal.h): the state of a parameter whose gradient stays zero (a dead
# ReLU unit's weights) decays geometrically, m = 0.9^t m, and spends ~150 steps
# in the denormal range, where each operation takes ~100 cycles.  Without it
# the numba MLP epoch on learnable data (bench.compare's synthetic MNIST) ran
# 5-10x slower than on random data (bench/NOTES.md).  A no-op off x86.

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
_FTZ_DAZ = 0x8040


def _mxcsr_fn(builder, name):
    fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])
    return cgutils.get_or_insert_function(builder.module, fnty, name)


def stack_floats(size):
    """An intrinsic returning a float32[size] scratch array on the caller's
    stack (no allocation; it cannot alias any argument): a micro-kernel's
    edge tile, the dropout masks of a pass."""
    arrty = types.Array(types.float32, 1, "C")

    def stack_array(typingctx):
        def codegen(context, builder, sig, args):
            data = cgutils.alloca_once(builder, context.get_value_type(types.float32), size=size)
            ary = context.make_array(arrty)(context, builder)
            itemsize = context.get_constant(types.intp, 4)
            context.populate_array(ary, data=data, shape=[context.get_constant(types.intp, size)],
                                   strides=[itemsize], itemsize=itemsize, meminfo=None)
            return ary._getvalue()

        return arrty(), codegen

    stack_array.__name__ = stack_array.__qualname__ = f"stack_floats_{size}"
    return intrinsic(stack_array)


@intrinsic
def _getcsr(typingctx):
    """The calling thread's MXCSR (0 off x86)."""
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        if not _X86:
            return ir.Constant(i32, 0)
        slot = cgutils.alloca_once(builder, i32)
        builder.call(_mxcsr_fn(builder, "llvm.x86.sse.stmxcsr"),
                     [builder.bitcast(slot, ir.IntType(8).as_pointer())])
        return builder.load(slot)

    return types.uint32(), codegen


@intrinsic
def _setcsr(typingctx, value):
    """Load `value` (uint32) into the calling thread's MXCSR (nothing off x86)."""
    def codegen(context, builder, sig, args):
        if _X86:
            i32 = ir.IntType(32)
            slot = cgutils.alloca_once(builder, i32)
            builder.store(context.cast(builder, args[0], sig.args[0], types.uint32), slot)
            builder.call(_mxcsr_fn(builder, "llvm.x86.sse.ldmxcsr"),
                         [builder.bitcast(slot, ir.IntType(8).as_pointer())])
        return context.get_dummy_value()

    return types.void(value), codegen


@njit(cache=True, inline="always")
def _flush_denormals():
    """Set FTZ + DAZ on this thread; returns the MXCSR to restore (_setcsr)."""
    csr = _getcsr()
    _setcsr(csr | np.uint32(_FTZ_DAZ))
    return csr
