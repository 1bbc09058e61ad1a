"""Inference through cbn_model.c's fixed-order kernel (cbn._inference): the same bits for a
row whatever batch, chunk position or thread count it comes in, and the same bits as the C
library. The AVX2 + FMA build of the kernel is taken when the CPU has both (CBN_NO_AVX2=1 keeps
the baseline build); both run the same operation sequence per element (explicit fused
multiply-adds, exactly rounded).

Threads: large batches are split by rows between as many threads as cbn's other kernels use
(:func:`cbn.get_num_threads`: the BLAS's count, or :func:`cbn.set_num_threads`).
"""
import os

from cbn import _inference, _inference_avx2
from cbn._threads import get_num_threads

_BUILD = (_inference_avx2
          if _inference_avx2.INSTRUCTION_SET == "avx2" and _inference.cpu_has_avx2_fma()
          and os.environ.get("CBN_NO_AVX2", "") in ("", "0") else _inference)
INSTRUCTION_SET = _BUILD.INSTRUCTION_SET


def forward(net, X, raw):
    """The network's outputs for X (validated, C-contiguous, net.dtype): what predict_proba
    returns, or with raw=True the output layer's W.a without its bias (for the loss).

    Raises FloatingPointError if a value of the output layer overflowed to inf or NaN."""
    import numpy as np

    out, overflowed = _BUILD.forward(net, X, raw, get_num_threads())
    if overflowed:
        raise FloatingPointError(
            f"X: the network's outputs overflowed to infinity or NaN; the values of X "
            f"(max |X| = {np.abs(X).max():g}) are too large for "
            f"{np.dtype(net.dtype).name} computation")
    return out
