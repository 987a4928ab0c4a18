"""What every file of the numba backend shares: the fastmath flag sets (the
numerics every kernel keeps), how work is cut between threads, and the
empty array that stands for an absent optional one.

Numba freezes module globals into compiled code as constants, and its disk
cache checks only the source file that defines a function: a kernel that
calls a helper or reads a constant of another file keeps the compiled old
version until its own file changes.  After editing a helper here or in
another file, clear the caches (``__pycache__/*.nbi``, ``*.nbc``).
"""

import numba  # absolute import: the real numba, not this package
import numpy as np
from numba import njit

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
