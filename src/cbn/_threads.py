"""How many threads cbn's own kernels use (batch norm, optimizer updates, checks).

By default they follow the BLAS library that NumPy uses: every kernel call asks OpenBLAS
for its current thread count (``openblas_get_num_threads``), so ``OPENBLAS_NUM_THREADS``,
threadpoolctl's ``threadpool_limits`` and ``numpy``'s own settings govern both alike. Where
that count cannot be read (another BLAS), the kernels use threadpoolctl's figure for the
BLAS if threadpoolctl is installed, else one thread. ``CBN_NUM_THREADS`` in the environment
or :func:`cbn.set_num_threads` fix the count instead.

Where the threads come from: with OpenBLAS built on pthreads (NumPy's wheels), a kernel's
parallel region runs on OpenBLAS's own worker threads (``gotoblas_pthread``), the
threads the matrix products of the same step use. A second pool would fight them: after
each product OpenBLAS's idle workers spin for about 0.1 s (on x86-64 without yielding),
so a woken cbn thread shares a core with a spinning one (on 2 cores, two threads then ran batch norm slower than one).
``CBN_THREAD_POOL=own`` keeps cbn's own pool (cbn._parallel), which is also used where
the BLAS offers no such entry, and when more threads are set than the BLAS has.
"""
import ctypes
import glob
import os

from cbn import _parallel

# OpenBLAS's thread-count getter under the names its builds export (NumPy's wheels bundle
# scipy-openblas, whose symbols carry a prefix and a 64_ suffix)
_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
            "openblas_get_num_threads64_", "openblas_get_num_threads")
_PARALLEL = ("scipy_openblas_get_parallel64_", "scipy_openblas_get_parallel",
             "openblas_get_parallel64_", "openblas_get_parallel")


def _openblas_libraries():
    """Paths of the OpenBLAS libraries NumPy may have loaded."""
    import numpy as np
    here = os.path.dirname(os.path.dirname(np.__file__))
    paths = glob.glob(os.path.join(here, "numpy.libs", "*openblas*"))
    paths += glob.glob(os.path.join(here, "numpy", ".dylibs", "*openblas*"))
    return paths


def _function_address(lib, names):
    """Address of the first of names lib exports, or None."""
    for name in names:
        function = getattr(lib, name, None)
        if function is not None:
            return ctypes.cast(function, ctypes.c_void_p).value
    return None


def _find_openblas():
    """(library, thread-count getter address) of the OpenBLAS NumPy uses, or (None, None)."""
    candidates = _openblas_libraries()   # NumPy's own first
    try:
        import threadpoolctl
        candidates += [info["filepath"] for info in threadpoolctl.threadpool_info()
                       if info.get("internal_api") == "openblas"]
    except Exception:  # noqa: BLE001 - threadpoolctl is optional and may fail to inspect
        pass
    candidates.append(None)  # symbols already global in the process (a system OpenBLAS)
    for path in candidates:
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL) \
                if path else ctypes.CDLL(None)
        except OSError:
            continue
        address = _function_address(lib, _GETTERS)
        if address is not None:
            return lib, address
    return None, None


def _blas_runner(lib):
    """Address of OpenBLAS's gotoblas_pthread if lib runs its threads on pthreads, else None.

    gotoblas_pthread(jobs, fn, args, stride) is how OpenBLAS's own drivers run parallel
    work on its thread server; openblas_get_parallel() is 1 for the pthreads server (0:
    sequential build, 2: OpenMP, whose runtime has its own wait policy).
    """
    parallel = _function_address(lib, _PARALLEL)
    if parallel is None or ctypes.CFUNCTYPE(ctypes.c_int)(parallel)() != 1:
        return None
    return _function_address(lib, ("gotoblas_pthread",))


def _blas_threads_once():
    """threadpoolctl's thread count of NumPy's BLAS, or None."""
    try:
        import threadpoolctl
        infos = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
        return infos[0]["num_threads"] if infos else None
    except Exception:  # noqa: BLE001
        return None


def set_num_threads(n):
    """Fix the number of threads cbn's own kernels use; 0 or None follows the BLAS again.

    Parameters
    ----------
    n : int or None
        Threads for batch norm, the optimizer update and the divergence check, from 1 to
        64; 0 or None: follow NumPy's BLAS (the default; ``CBN_NUM_THREADS`` sets it at
        import). Matrix products keep the BLAS's own setting. Results are bit-identical
        for any thread count.
    """
    from cbn._validation import check_int
    n = 0 if n is None else check_int("n", n, 0)
    if n > _parallel.MAX_THREADS:
        raise ValueError(f"n: expected an integer from 0 to {_parallel.MAX_THREADS}, got {n}")
    _parallel._set_explicit_threads(n or _FALLBACK[0])


def get_num_threads():
    """Return the number of threads cbn's kernels use now (fixed, or the BLAS's)."""
    return _parallel._threads_in_use()


# The count "follow the BLAS" means when the BLAS cannot be asked at each call (0: ask it).
_FALLBACK = [0]


def thread_pool():
    """Where the kernels' parallel regions run: 'blas' (OpenBLAS's threads) or 'own'."""
    return "blas" if _parallel._blas_runner() else "own"


def _setup():
    pool = os.environ.get("CBN_THREAD_POOL", "").strip().lower()
    if pool not in ("", "blas", "own"):
        raise ValueError(f"CBN_THREAD_POOL: expected 'blas' or 'own', got {pool!r}")
    lib, address = _find_openblas()
    if address is not None:
        _setup.keep = lib   # keep the library loaded for as long as the process runs
        _parallel._set_blas_thread_getter(address)
        runner = _blas_runner(lib) if pool != "own" else None
        if runner is not None:
            _parallel._set_blas_runner(runner)
    else:
        count = _blas_threads_once()
        _FALLBACK[0] = min(count, _parallel.MAX_THREADS) if count else 1
        _parallel._set_explicit_threads(_FALLBACK[0])
    env = os.environ.get("CBN_NUM_THREADS", "").strip()
    if env:
        try:
            set_num_threads(int(env))
        except ValueError as exc:
            raise ValueError(f"CBN_NUM_THREADS: expected an integer from 0 to "
                             f"{_parallel.MAX_THREADS}, got {env!r}") from exc


_setup()
