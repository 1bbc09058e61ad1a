"""Inference through cbn_model.c's fixed-order kernel (cbn._inference): the same bits for a
row whatever batch, chunk position or thread count it comes in, and the same bits as the C
library. The AVX2 build of the kernel is taken when the CPU has AVX2 (CBN_NO_AVX2=1 keeps the
baseline build); both run the same operation sequence per element.

Threads: large batches are split by rows between ``inference_threads()`` threads.
"""
import os

from cbn import _inference, _inference_avx2

_BUILD = (_inference_avx2
          if _inference_avx2.INSTRUCTION_SET == "avx2" and _inference.cpu_has_avx2()
          and os.environ.get("CBN_NO_AVX2", "") in ("", "0") else _inference)
INSTRUCTION_SET = _BUILD.INSTRUCTION_SET


def inference_threads():
    """Threads for inference: CBN_NUM_THREADS, else OMP_NUM_THREADS, else
    OPENBLAS_NUM_THREADS (the variables that also set NumPy's BLAS), else the CPUs this
    process may run on. Read at every call."""
    for name in ("CBN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def forward(net, X, raw):
    """The network's outputs for X (validated, C-contiguous, net.dtype): what predict_proba
    returns, or with raw=True the output layer's W.a without its bias (for the loss).

    Raises FloatingPointError if a value of the output layer overflowed to inf or NaN."""
    import numpy as np

    out, overflowed = _BUILD.forward(net, X, raw, inference_threads())
    if overflowed:
        raise FloatingPointError(
            f"X: the network's outputs overflowed to infinity or NaN; the values of X "
            f"(max |X| = {np.abs(X).max():g}) are too large for "
            f"{np.dtype(net.dtype).name} computation")
    return out
