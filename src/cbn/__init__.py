"""cbn: fully-connected networks with batch normalization, trained on the CPU.

The hot loops (batch norm, activations, losses, optimizer updates) are Cython kernels
compiled to C; matrix products go to BLAS through NumPy; :class:`Network` ties them together.
"""
import os

from cbn._version import __version__
from cbn._checkpoint import TrainingInterrupted
from cbn.callbacks import EarlyStopping, ExponentialDecay, InverseTimeDecay, StepDecay
from cbn.network import History, Layer, Network
from cbn._predict import FrozenNetwork
from cbn.optimizers import SGD, Adam, Momentum, Optimizer, RMSprop
from cbn._history import plot_history
from cbn._threads import get_num_threads, set_num_threads


def get_include():
    """Return the folder holding cbn's C headers (_capi.h, _capi_api.h), .pxd files and the
    C inference library (cbn_model.h, cbn_model.c).

    C extensions that call cbn's C-level API add it to their include_dirs; Cython code
    needs it only if cbn is not importable at build time (the .pxd files sit beside it).
    Programs that run saved models without Python compile cbn_model.c from here:
    ``cc -O2 -std=c99 app.c "$CBN"/cbn_model.c -I"$CBN" -lm``.
    """
    return os.path.dirname(os.path.abspath(__file__))


__all__ = [
    "Network", "Layer", "History", "FrozenNetwork",
    "Optimizer", "SGD", "Momentum", "RMSprop", "Adam",
    "InverseTimeDecay", "ExponentialDecay", "StepDecay", "EarlyStopping", "plot_history",
    "TrainingInterrupted", "set_num_threads", "get_num_threads",
    "__version__", "get_include",
]
