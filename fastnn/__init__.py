"""fastnn: train small and medium neural networks fast on ordinary machines.

Layers and models (:class:`Sequential`, :class:`Dense`, ...) sit on one flat
parameter buffer; :class:`Trainer` drives mini-batch training through the
kernel backends in :mod:`fastnn.kernels` (C, Numba, CUDA, numpy reference).
"""

from . import datasets, kernels, losses, metrics, optim, schedules
from .kernels import get_backend, set_backend, set_num_threads
from .blocks import BatchNorm, Residual
from .conv import (AvgPool1D, AvgPool2D, Conv1D, Conv2D, Flatten, GlobalAvgPool, MaxPool1D,
                   MaxPool2D)
from .layers import (Activation, Dense, Dropout, Identity, LeakyReLU, ReLU, Sigmoid, Sign,
                     Softmax, Softplus, Step, Tanh)
from .recurrent import GRU, LSTM, SimpleRNN
from .model import Sequential, load
from .trainer import EarlyStopping, History, Trainer
from .many import fit_many

__version__ = "0.1.0"

# Imported on first use: Perceptron follows scikit-learn's conventions (its
# warnings and errors), and scikit-learn takes longer to import than the rest
# of fastnn together; `import fastnn` loads neither it, numba nor the C
# extension (tests/test_import.py).
_LAZY = {"Perceptron": ".perceptron"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastnn' has no attribute {name!r}")

__all__ = [
    "GRU", "LSTM", "SimpleRNN",
    "AvgPool1D", "AvgPool2D", "BatchNorm", "Conv1D", "Conv2D", "Flatten", "GlobalAvgPool",
    "MaxPool1D", "MaxPool2D", "Residual",
    "Activation", "Dense", "Dropout", "EarlyStopping", "History", "Identity", "LeakyReLU",
    "Perceptron", "ReLU", "Sequential", "Sigmoid", "Sign", "Softmax", "Softplus", "Step", "Tanh",
    "Trainer", "datasets", "fit_many", "get_backend", "kernels", "load", "losses", "metrics", "optim",
    "schedules", "set_backend", "set_num_threads",
]
