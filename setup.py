"""Build the Cython kernels. All metadata lives in pyproject.toml.

Compiler directives are set here, once, for every module. ``CBN_CYTHON_DEBUG=1`` at build
time turns bounds, wraparound and initialization checks back on (CI runs the tests once so).
"""
import os
import sysconfig

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
# _batchnorm_avx2 and _optim_avx2 compile _batchnorm and _optim again, for AVX2 (below).
# _parallel is the kernels' thread pool (pthreads).
MODULES = ["_parallel", "_activations", "_batchnorm", "_batchnorm_avx2", "_losses", "_optim",
           "_optim_avx2", "_kernels", "_capi", "_inference", "_inference_avx2"]

# The AVX2 builds use AVX2 where the target is certain to be x86-64 with GCC or clang (Linux);
# elsewhere they are plain copies that cbn._dispatch never picks. No fused multiply-add
# (-ffp-contract=off), so both builds give the same results bit for bit. CBN_AVX2=0 or 1
# overrides.
AVX2 = os.environ.get("CBN_AVX2", "1" if sysconfig.get_platform() == "linux-x86_64" else "0") == "1"


def extension(name):
    compile_args = [] if os.name == "nt" else ["-O3", "-fno-math-errno"]
    if name.endswith("_avx2") and AVX2:
        compile_args += ["-mavx2", "-ffp-contract=off"]
        if name == "_inference_avx2":
            # cbn_model.c adds products by explicit fused multiply-adds (the same bits in
            # every build); cbn._predict takes this build where the CPU has AVX2 and FMA
            compile_args += ["-mfma"]
    elif name.startswith("_inference") and os.name != "nt":
        # cbn_model.c contracts nothing but its explicit fused multiply-adds (GCC would fuse
        # a*b + c by default in GNU mode where the target has FMA, e.g. aarch64); where the
        # AVX2 build exists, this one is the portable kernel (fma() per product), without
        # the AVX2 + FMA kernel that cbn_model.c would otherwise pick at run time
        compile_args += ["-ffp-contract=off"] + (["-DCBN_NO_DISPATCH"] if AVX2 else [])
    link_args = ["-pthread"] if name == "_parallel" and os.name != "nt" else []
    compile_args += link_args
    return Extension(f"cbn.{name}", [f"src/cbn/{name}.pyx"], extra_compile_args=compile_args,
                     extra_link_args=link_args)


setup(
    ext_modules=cythonize(
        [extension(name) for name in MODULES],
        compiler_directives=directives,
        # A debug build must not reuse C files generated without the checks, and vice versa.
        force=True,
    ),
)
