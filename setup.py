"""Build the Cython kernels. All metadata lives in pyproject.toml.

Compiler directives are set here, once, for every module. ``CBN_CYTHON_DEBUG=1`` at build
time turns bounds, wraparound and initialization checks back on (CI runs the tests once so).
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("CBN_CYTHON_DEBUG", "0") == "1"

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "nonecheck": False,
    "cdivision": True,
    "embedsignature": True,
}

# _capi holds the C-level API (cdef api); cythonize also writes its headers _capi.h and _capi_api.h.
MODULES = ["_activations", "_batchnorm", "_losses", "_optim", "_kernels", "_capi"]


def extension(name):
    compile_args = [] if os.name == "nt" else ["-O3"]
    return Extension(f"cbn.{name}", [f"src/cbn/{name}.pyx"], extra_compile_args=compile_args)


setup(
    ext_modules=cythonize(
        [extension(name) for name in MODULES],
        compiler_directives=directives,
        # A debug build must not reuse C files generated without the checks, and vice versa.
        force=True,
    ),
)
