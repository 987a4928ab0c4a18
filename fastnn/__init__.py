"""fastnn: train small and medium neural networks fast on ordinary machines."""

from .kernels import get_backend, set_backend, set_num_threads

__version__ = "0.1.0"

__all__ = ["get_backend", "set_backend", "set_num_threads", "__version__"]
