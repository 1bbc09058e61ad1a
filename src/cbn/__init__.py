"""cbn: fully-connected networks with batch normalization, trained on the CPU.

The hot loops (batch norm, activations, losses, optimizer updates) are Cython kernels
compiled to C; matrix products go to BLAS through NumPy; :class:`Network` ties them together.
"""
from importlib.metadata import PackageNotFoundError, version as _version

from cbn.callbacks import EarlyStopping, ExponentialDecay, InverseTimeDecay, StepDecay
from cbn.network import History, Layer, Network
from cbn.optimizers import SGD, Adam, Momentum, Optimizer, RMSprop
from cbn.plotting import plot_history

try:
    __version__ = _version("cbn")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "Network", "Layer", "History",
    "Optimizer", "SGD", "Momentum", "RMSprop", "Adam",
    "InverseTimeDecay", "ExponentialDecay", "StepDecay", "EarlyStopping", "plot_history",
    "__version__",
]
