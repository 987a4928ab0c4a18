# The C kernels are built by cffi's out-of-line API mode; see
# fastnn/_build_ckernels.py.  Everything else lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["fastnn/_build_ckernels.py:ffibuilder"])
