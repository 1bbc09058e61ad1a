"""The arrays a network is made of: each layer's views into the flat buffers (:class:`Layer`),
and the work buffers one training step writes (:class:`Workspace`). cbn.network builds both.
"""
import numpy as np


class Layer:
    """One fully-connected layer. Its arrays are views into the network's flat buffers.

    Attributes
    ----------
    W : ndarray of shape (n_out, n_in)
    b : ndarray of shape (n_out,), or None on a batch-norm layer (beta replaces it)
    gamma, beta : ndarray of shape (n_out,), or None without batch norm
    running_mean, running_var : ndarray of shape (n_out,), or None without batch norm
    activation : str
        The activation g of a hidden layer; the output function of the last layer.

    The arrays are writable in place (``layer.W[...] = values``); rebinding them is refused,
    because training updates the buffers they view.
    """

    __slots__ = ("index", "n_in", "n_out", "activation", "batchnorm",
                 "W", "b", "gamma", "beta", "running_mean", "running_var")

    def __init__(self, index, n_in, n_out, activation, batchnorm, arrays):
        values = dict(index=index, n_in=n_in, n_out=n_out, activation=activation,
                      batchnorm=batchnorm, b=None, gamma=None, beta=None,
                      running_mean=None, running_var=None)
        values.update(arrays)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(
            f"Layer.{name} cannot be rebound; assign in place instead, e.g. layer.{name}[...] = values")

    def __repr__(self):
        kind = "batchnorm+" if self.batchnorm else ""
        return f"Layer({self.index}: {self.n_in} -> {self.n_out}, {kind}{self.activation})"


class Workspace:
    """The arrays one training step writes, for one batch size m."""

    def __init__(self, layer_sizes, m, dtype):
        hidden = layer_sizes[1:-1]
        self.Z = [np.empty((m, n), dtype) for n in layer_sizes[1:]]   # W·A, output layer last
        self.A = [np.empty((m, n), dtype) for n in hidden]            # activations
        self.G = [np.empty((m, n), dtype) for n in hidden]            # dA, overwritten by dZ
        self.dZ_out = np.empty((m, layer_sizes[-1]), dtype)
        # fit's accuracy count: predicted classes, and elementwise hits of sigmoid outputs
        self.predicted = np.empty(m, np.intp)
        self.hits = np.empty((m, layer_sizes[-1]), bool)
        self.truths = np.empty((m, layer_sizes[-1]), bool)
