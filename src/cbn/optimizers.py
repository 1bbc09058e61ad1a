"""Optimizers: hyper-parameters and state; each step is one kernel call over all parameters.

The network keeps every parameter in one flat buffer and every gradient in a mirror of it,
so an optimizer's state is flat too (see DESIGN.md §3). The formulas (t counts steps from 1):

    SGD       p -= lr * g
    Momentum  v = beta * v + (1 - beta) * g;  p -= lr * v
    RMSprop   s = beta * s + (1 - beta) * g**2;  p -= lr * g / (sqrt(s) + eps)
    Adam      m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g**2
              p -= lr * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps)

Momentum is the lecture's EMA form: PyTorch's SGD(momentum=beta, dampening=0) with
lr * (1 - beta) makes identical updates.
"""
import numpy as np

from cbn import _kernels
from cbn._validation import check_float, check_positive


class Optimizer:
    """Base class: holds hyper-parameters, the step count ``t`` and flat state arrays."""

    #: Names of the flat state arrays, each the size of the parameter buffer.
    state_names = ()

    def __init__(self, lr):
        self.lr = check_positive("lr", lr)
        self.t = 0
        self.state = {}
        self._owner = None

    def get_config(self):
        """Hyper-parameters as a dict; ``type(opt)(**opt.get_config())`` makes a fresh copy."""
        return {"lr": self.lr}

    def _bind(self, owner, n_params, dtype):
        """Allocate zeroed state for a network with n_params parameters of dtype."""
        if self._owner is not None and self._owner is not owner:
            raise ValueError(
                f"optimizer: this {type(self).__name__} instance already trains another "
                f"Network; give each network its own optimizer (or pass a name such as 'adam')")
        self._owner = owner
        self.t = 0
        self.state = {name: np.zeros(n_params, dtype=dtype) for name in self.state_names}

    def step(self, params, grads, part=None):
        """Update the flat ``params`` in place from the flat ``grads``.

        ``part``, a slice of the flat buffers, limits the update to those elements (and
        their state): under MPI each rank updates its own chunk (cbn._distributed).
        """
        self.t += 1
        # each subclass applies its own formula with one kernel call
        if part is None:
            self._update(params, grads, self.state)
        else:
            self._update(params[part], grads[part],
                         {name: value[part] for name, value in self.state.items()})

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Plain gradient descent: ``p -= lr * g``.

    Parameters
    ----------
    lr : float, default=0.01
        Learning rate, > 0.
    """

    def __init__(self, lr=0.01):
        super().__init__(lr)

    def _update(self, params, grads, state):
        _kernels.sgd_update(params, grads, self.lr)


class Momentum(Optimizer):
    """Gradient descent with momentum, the lecture's EMA form.

    ``v = beta * v + (1 - beta) * g;  p -= lr * v`` with v starting at 0 (no bias correction).
    PyTorch's ``SGD(momentum=beta, dampening=0)`` with learning rate ``lr * (1 - beta)``
    makes identical updates.

    Parameters
    ----------
    lr : float, default=0.01
        Learning rate, > 0.
    beta : float, default=0.9
        Decay of the velocity, in [0, 1).
    """

    state_names = ("velocity",)

    def __init__(self, lr=0.01, beta=0.9):
        super().__init__(lr)
        self.beta = check_float("beta", beta, 0.0, 1.0, high_open=True)

    def get_config(self):
        return {"lr": self.lr, "beta": self.beta}

    def _update(self, params, grads, state):
        _kernels.momentum_update(params, state["velocity"], grads, self.lr, self.beta)


class RMSprop(Optimizer):
    """RMSprop: ``s = beta * s + (1 - beta) * g**2;  p -= lr * g / (sqrt(s) + eps)``.

    eps sits outside the square root, as in PyTorch (Keras puts it inside).

    Parameters
    ----------
    lr : float, default=0.001
        Learning rate, > 0.
    beta : float, default=0.999
        Decay of the squared-gradient average, in [0, 1).
    eps : float, default=1e-8
        Added to the root mean square, > 0.
    """

    state_names = ("sq_avg",)

    def __init__(self, lr=1e-3, beta=0.999, eps=1e-8):
        super().__init__(lr)
        self.beta = check_float("beta", beta, 0.0, 1.0, high_open=True)
        self.eps = check_positive("eps", eps)

    def get_config(self):
        return {"lr": self.lr, "beta": self.beta, "eps": self.eps}

    def _update(self, params, grads, state):
        _kernels.rmsprop_update(params, state["sq_avg"], grads, self.lr, self.beta, self.eps)


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba, 2015), PyTorch's formula and defaults.

    ``m = beta1*m + (1-beta1)*g;  v = beta2*v + (1-beta2)*g**2;
    p -= lr * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps)``, t counting steps from 1.

    Parameters
    ----------
    lr : float, default=0.001
        Learning rate, > 0.
    beta1 : float, default=0.9
        Decay of the first moment, in [0, 1).
    beta2 : float, default=0.999
        Decay of the second moment, in [0, 1).
    eps : float, default=1e-8
        Added to the bias-corrected root of the second moment, > 0.
    """

    state_names = ("m", "v")

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(lr)
        self.beta1 = check_float("beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2 = check_float("beta2", beta2, 0.0, 1.0, high_open=True)
        self.eps = check_positive("eps", eps)

    def get_config(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def _update(self, params, grads, state):
        _kernels.adam_update(params, state["m"], state["v"], grads,
                             self.lr, self.beta1, self.beta2, self.eps, self.t)


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "rmsprop": RMSprop, "adam": Adam}


def make_optimizer(spec):
    """Return an Optimizer from an instance or a name ('sgd', 'momentum', 'rmsprop', 'adam')."""
    if isinstance(spec, Optimizer):
        return spec
    if isinstance(spec, str) and spec.lower() in OPTIMIZERS:
        return OPTIMIZERS[spec.lower()]()
    raise ValueError(
        f"optimizer: expected one of {', '.join(repr(k) for k in OPTIMIZERS)} "
        f"or a cbn optimizer such as cbn.Adam(lr=1e-3), got {spec!r}")
