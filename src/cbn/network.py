"""Network, the hub: the structure, the flat buffers and the forward/backward orchestration.

Every parameter lives in one flat C-contiguous buffer and every gradient in a mirror of it,
so an optimizer step is one kernel call; each layer's W, b, gamma, beta are views into it.
Per batch size, the work buffers of a training step are allocated once and reused.

The rest of Network's methods come from one mixin each, in the module that owns the subject:
the fit loop (cbn._training), inference (cbn._predict), the model file (cbn._model_file) and
ONNX export (cbn._onnx). They use the hub's buffers and step, never import this module.
"""
import functools
import math

import numpy as np

from cbn import _distributed, _kernels, _model_file
from cbn import _validation as check
from cbn._history import History
from cbn._layers import Layer, Workspace as _Workspace
from cbn._model_file import ModelFileMixin
from cbn._onnx import OnnxExportMixin
from cbn._predict import InferenceMixin
from cbn._training import TrainingMixin
from cbn.optimizers import make_optimizer

__all__ = ["Network", "Layer", "History"]  # History and Layer: importable here, as before

# Larger gradients would overflow the squared-gradient averages of RMSprop and Adam.
_GRADIENT_LIMIT = {t: math.sqrt(np.finfo(t).max) for t in (np.float32, np.float64)}
# Work buffers are kept for this many batch sizes (typically the batch and the last, odd one).
MAX_WORKSPACES = 4


class Network(TrainingMixin, InferenceMixin, ModelFileMixin, OnnxExportMixin):
    """A fully-connected network with batch normalization, trained by mini-batch descent.

    Each hidden layer computes ``Z = A_prev @ W.T`` (no bias: beta takes its role),
    normalizes Z over the batch, applies ``gamma * Zhat + beta`` and then the activation.
    The output layer computes ``A_prev @ W.T + b`` followed by the output function, whose
    loss is PyTorch's default: cross-entropy (softmax), binary cross-entropy from logits
    (sigmoid) or mean squared error (linear), each a mean over the batch.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[n_x, hidden sizes..., n_out]``, each >= 1.
    activation : {'relu', 'leaky_relu', 'tanh', 'sigmoid', 'linear'}, default='relu'
        Activation of the hidden layers.
    output : {'softmax', 'sigmoid', 'linear'}, default='softmax'
        Output function; it fixes the loss and the targets ``y``: class indices in
        [0, n_out) for softmax, values in [0, 1] for sigmoid, real values for linear.
    batchnorm : bool, default=True
        Batch norm on every hidden layer. Without it, hidden layers get a bias b.
    optimizer : str or Optimizer, default='adam'
        'sgd', 'momentum', 'rmsprop', 'adam' (default hyper-parameters) or an instance such
        as ``cbn.Adam(lr=1e-3)``. The instance becomes this network's ``optimizer``.
    dtype : {'float32', 'float64'}, default='float32'
        Dtype of parameters and computation; inputs are converted to it once.
    bn_momentum : float, default=0.1
        Weight of the new batch in the running statistics (PyTorch's convention):
        ``running = (1 - bn_momentum) * running + bn_momentum * batch``, in [0, 1].
    bn_eps : float, default=1e-5
        Added to the variance inside the square root, > 0.
    negative_slope : float, default=0.01
        Slope of leaky_relu for negative inputs, in [0, 1).
    seed : int or None, default=None
        Seeds the ``numpy.random.Generator`` used for initialization and shuffling.
    comm : mpi4py communicator, optional
        Data-parallel training over MPI (needs ``cbn[mpi]``; see the README section
        "Data-parallel training (MPI)"). Construction is then collective: every rank passes
        the same arguments (a difference raises ValueError on all ranks) and all start from
        rank 0's initial parameters. ``train_step``, ``loss_and_gradients``, ``fit``,
        ``evaluate``, ``recompute_statistics``, ``save`` and ``load`` become collective:
        each rank passes its own rows and gets the result of one process on all ranks'
        rows; ``predict`` stays local.

    Attributes
    ----------
    history : History or None
        What the latest ``fit`` recorded.
    metadata : dict
        Free-form notes saved with the model (JSON types only), e.g. the feature names and
        class labels the command line stores.

    A network pickles (and deep-copies) through its save format, so the copy holds the
    same weights, statistics, optimizer state and metadata, but no history.
    """

    def __init__(self, layer_sizes, *, activation="relu", output="softmax", batchnorm=True,
                 optimizer="adam", dtype="float32", bn_momentum=0.1, bn_eps=1e-5,
                 negative_slope=0.01, seed=None, comm=None):
        self._sync = None
        setup = functools.partial(
            self._setup, layer_sizes, activation, output, batchnorm, optimizer, dtype,
            bn_momentum, bn_eps, negative_slope, seed)
        if comm is None:
            setup()
        else:
            _distributed.attach(self, comm, setup)

    def _setup(self, layer_sizes, activation, output, batchnorm, optimizer, dtype, bn_momentum,
               bn_eps, negative_slope, seed):
        self.layer_sizes = check.check_layer_sizes(layer_sizes)
        self.activation = check.check_choice("activation", activation, check.ACTIVATIONS)
        self.output = check.check_choice("output", output, check.OUTPUTS)
        self.batchnorm = check.check_bool("batchnorm", batchnorm)
        self.dtype = check.check_dtype(dtype)
        self.bn_momentum = check.check_float("bn_momentum", bn_momentum, 0.0, 1.0)
        self.bn_eps = check.check_positive("bn_eps", bn_eps)
        self.negative_slope = check.check_float(
            "negative_slope", negative_slope, 0.0, 1.0, high_open=True)
        self.seed = check.check_seed(seed)
        if self.output == "softmax" and self.layer_sizes[-1] < 2:
            raise ValueError(
                f"layer_sizes: a softmax output needs at least 2 classes, got {self.layer_sizes[-1]}")
        optimizer = make_optimizer(optimizer)

        self._activation_code = _kernels.ACTIVATIONS[self.activation]
        self._rng = np.random.default_rng(self.seed)
        self._build_buffers()
        self._initialize()
        optimizer._bind(self, self._params.size, self.dtype)
        self.optimizer = optimizer
        self._workspaces = {}
        self._weight_keys = [key for key in self._param_views if key.endswith(".W")]
        self._weight_decay = 0.0  # set by fit for its duration
        self.history = None  # the History of the latest fit, complete or not
        self.metadata = {}

    # ------------------------------------------------------------------ structure

    def _layout(self):
        """Yield (layer index, name, shape) of every parameter, in flat-buffer order."""
        n_layers = len(self.layer_sizes) - 1
        for l, (n_in, n_out) in enumerate(zip(self.layer_sizes[:-1], self.layer_sizes[1:])):
            yield l, "W", (n_out, n_in)
            if l < n_layers - 1 and self.batchnorm:
                yield l, "gamma", (n_out,)
                yield l, "beta", (n_out,)
            else:
                yield l, "b", (n_out,)

    def _build_buffers(self):
        layout = list(self._layout())
        total = sum(math.prod(shape) for _, _, shape in layout)
        self._params = np.zeros(total, dtype=self.dtype)
        self._grads = np.zeros(total, dtype=self.dtype)
        self._param_views, self._grad_views = {}, {}
        offset = 0
        for l, name, shape in layout:
            size = math.prod(shape)
            key = f"{l}.{name}"
            self._param_views[key] = self._params[offset:offset + size].reshape(shape)
            self._grad_views[key] = self._grads[offset:offset + size].reshape(shape)
            offset += size

        hidden = self.layer_sizes[1:-1]
        # running mean and var of every batch-norm layer, in one buffer so save/load is simple
        self._running = np.zeros(2 * sum(hidden) if self.batchnorm else 0, dtype=self.dtype)
        # per batch-norm layer, the forward's cached mean, var, rstd (always double)
        self._bn_cache = []
        self.layers = []
        offset = 0
        n_layers = len(self.layer_sizes) - 1
        for l in range(n_layers):
            n_in, n_out = self.layer_sizes[l], self.layer_sizes[l + 1]
            hidden_layer = l < n_layers - 1
            arrays = {name: self._param_views[f"{l}.{name}"]
                      for name in ("W", "b", "gamma", "beta") if f"{l}.{name}" in self._param_views}
            if hidden_layer and self.batchnorm:
                arrays["running_mean"] = self._running[offset:offset + n_out]
                arrays["running_var"] = self._running[offset + n_out:offset + 2 * n_out]
                offset += 2 * n_out
                self._bn_cache.append(tuple(np.zeros(n_out) for _ in range(3)))
            activation = self.activation if hidden_layer else self.output
            self.layers.append(Layer(l, n_in, n_out, activation, hidden_layer and self.batchnorm, arrays))

    def _initialize(self):
        """He normal for relu-like layers, Glorot normal otherwise; gamma 1, beta 0, b 0."""
        for layer in self.layers:
            hidden = layer is not self.layers[-1]
            if hidden and self.activation in ("relu", "leaky_relu"):
                std = math.sqrt(2.0 / layer.n_in)
            else:
                std = math.sqrt(2.0 / (layer.n_in + layer.n_out))
            # drawn in float64 for every dtype, so float32 and float64 nets start alike
            layer.W[...] = self._rng.standard_normal(layer.W.shape) * std
            if layer.batchnorm:
                layer.gamma[...] = 1.0
                layer.beta[...] = 0.0
                layer.running_mean[...] = 0.0
                layer.running_var[...] = 1.0
            else:
                layer.b[...] = 0.0

    @property
    def n_params(self):
        """Number of trainable parameters."""
        return self._params.size

    def parameters(self):
        """Trainable arrays by name ('0.W', '0.gamma', '0.beta', ..., 'L.W', 'L.b').

        The arrays are the live views that training updates; write them in place.
        """
        return dict(self._param_views)

    def state_dict(self, out=None):
        """A copy of the weights: every parameter and batch-norm running statistic.

        Returns a dict with 'params' (the values of :meth:`parameters`, flat, in that order)
        and 'running' (each batch-norm layer's running_mean, then its running_var, flat).
        The optimizer's state is not part of it. :meth:`load_state_dict` puts it back;
        :class:`cbn.EarlyStopping` keeps the best epoch's weights this way.

        Parameters
        ----------
        out : dict, optional
            An earlier result of this network's ``state_dict``, copied into instead of
            allocating new arrays.
        """
        if out is None:
            return {"params": self._params.copy(), "running": self._running.copy()}
        params, running = check.check_state_dict("out", out, self._params, self._running,
                                                 out=True)
        np.copyto(params, self._params)
        np.copyto(running, self._running)
        return out

    def load_state_dict(self, state):
        """Set the parameters and running statistics from :meth:`state_dict`'s dict.

        Everything is checked (keys, shapes, finite values) before anything is written, so
        a refused state leaves the network as it was. The optimizer's state is left alone.
        """
        params, running = check.check_state_dict("state", state, self._params, self._running)
        np.copyto(self._params, params)
        np.copyto(self._running, running)

    def __repr__(self):
        return (f"Network({list(self.layer_sizes)}, activation={self.activation!r}, "
                f"output={self.output!r}, batchnorm={self.batchnorm}, "
                f"optimizer={self.optimizer!r}, dtype={np.dtype(self.dtype).name!r})")

    # ------------------------------------------------------------------ validation

    @property
    def _min_train_rows(self):
        has_bn = self.batchnorm and len(self.layer_sizes) > 2
        return 2 if has_bn else 1

    def _check_batch(self, X, y, *, min_rows=1, x_name="X", y_name="y"):
        X = check.check_features(x_name, X, self.layer_sizes[0], self.dtype, min_rows)
        targets = check.check_targets(
            y_name, y, self.output, self.layer_sizes[-1], X.shape[0], self.dtype)
        return X, targets

    # ------------------------------------------------------------------ training

    def _workspace(self, m):
        ws = self._workspaces.get(m)
        if ws is None:
            if len(self._workspaces) >= MAX_WORKSPACES:
                self._workspaces.pop(next(iter(self._workspaces)))
            ws = self._workspaces[m] = _Workspace(self.layer_sizes, m, self.dtype)
        return ws

    def _loss(self, dZ, Z, b, targets):
        if self.output == "softmax":
            return _kernels.softmax_cross_entropy(dZ, Z, b, targets)
        if self.output == "sigmoid":
            return _kernels.sigmoid_binary_cross_entropy(dZ, Z, b, targets)
        return _kernels.mean_squared_error(dZ, Z, b, targets)

    def _train_forward(self, X, ws):
        """Training-mode forward up to the output layer's W·A (in ws.Z[-1]); caches the
        batch statistics of every batch-norm layer in self._bn_cache."""
        code, slope = self._activation_code, self.negative_slope
        A_prev = X
        for l, layer in enumerate(self.layers[:-1]):
            Z = ws.Z[l]
            np.matmul(A_prev, layer.W.T, out=Z)
            if layer.batchnorm:
                mean, var, rstd = self._bn_cache[l]
                if self._sync is None:
                    _kernels.batchnorm_activation_forward(
                        ws.A[l], mean, var, rstd, Z, layer.gamma, layer.beta, self.bn_eps,
                        code, slope)
                else:  # statistics over all ranks' rows
                    self._sync.batchnorm_forward(l, ws.A[l], mean, var, rstd, Z, layer.gamma,
                                                 layer.beta, self.bn_eps, code, slope)
            else:
                _kernels.bias_activation_forward(ws.A[l], Z, layer.b, code, slope)
            A_prev = ws.A[l]
        np.matmul(A_prev, self.layers[-1].W.T, out=ws.Z[-1])

    def _forward_backward(self, X, targets, ws, input_gradient=False):
        """Training-mode forward and backward on a validated batch; fills self._grads.

        Returns the loss (and dX when input_gradient). Running statistics are not touched.
        """
        code, slope, grads = self._activation_code, self.negative_slope, self._grad_views
        out = self.layers[-1]
        self._train_forward(X, ws)
        if self._sync is None:
            loss = self._loss(ws.dZ_out, ws.Z[-1], out.b, targets)
        else:  # this rank's rows' share of the global batch's loss
            loss = self._sync.local_loss(self._loss, ws.dZ_out, ws.Z[-1], out.b, targets)

        # backward: dZ of the output layer comes from the loss kernel
        dZ = ws.dZ_out
        L = len(self.layers) - 1
        np.sum(dZ, axis=0, out=grads[f"{L}.b"])
        dX = None
        for l in range(L, -1, -1):
            layer = self.layers[l]
            if l < L:  # hidden: ws.G[l] holds dA; the kernel overwrites it with dZ
                dZ = ws.G[l]
                if layer.batchnorm:
                    mean, var, rstd = self._bn_cache[l]
                    if self._sync is None:
                        _kernels.batchnorm_activation_backward(
                            dZ, grads[f"{l}.gamma"], grads[f"{l}.beta"], dZ, ws.A[l], ws.Z[l],
                            layer.gamma, mean, rstd, code, slope)
                    else:
                        self._sync.batchnorm_backward(
                            l, dZ, grads[f"{l}.gamma"], grads[f"{l}.beta"], dZ, ws.A[l],
                            ws.Z[l], layer.gamma, mean, rstd, code, slope)
                else:
                    _kernels.bias_activation_backward(
                        dZ, grads[f"{l}.b"], dZ, ws.A[l], code, slope)
            A_prev = ws.A[l - 1] if l > 0 else X
            np.matmul(dZ.T, A_prev, out=grads[f"{l}.W"])      # dW = dZ.T @ A_prev
            if l > 0:
                np.matmul(dZ, layer.W, out=ws.G[l - 1])        # dA_prev = dZ @ W
            elif input_gradient:
                dX = dZ @ layer.W
        if self._sync is not None:  # the global loss and gradients, on every rank
            loss = self._sync.sum_gradients(self._grads, loss)
        return (loss, dX) if input_gradient else loss

    def _update_running_stats(self, m):
        for layer, (mean, var, _) in zip(self.layers, self._bn_cache):
            _kernels.batchnorm_update_running(
                layer.running_mean, layer.running_var, mean, var, m, self.bn_momentum)

    def _step(self, X, targets):
        """One training step on a validated batch; returns the loss.

        If the loss or the gradients are not finite, or a gradient is so large that its
        square (kept by RMSprop and Adam) would overflow the dtype, nothing is changed and
        FloatingPointError is raised.
        """
        if self._sync is None:
            loss = self._forward_backward(X, targets, self._workspace(X.shape[0]))
            if self._weight_decay:  # only inside fit(weight_decay=...)
                self._add_weight_decay()
            # one threaded pass; NaN comes back as NaN, inf or a huge value fails the bound
            largest = _kernels.largest_magnitude(self._grads)
        else:  # the ranks decay and check a chunk each (cbn._distributed)
            loss, largest = self._sync.training_gradients(self, X, targets,
                                                          self._workspace(X.shape[0]))
        if not (math.isfinite(loss) and largest <= _GRADIENT_LIMIT[self.dtype]):
            raise FloatingPointError(
                f"training diverged at optimizer step {self.optimizer.t + 1}: the loss or a "
                f"gradient is not finite or too large (loss = {loss}, largest |gradient| = "
                f"{largest}). The network keeps its state from before this step; try a "
                f"smaller learning rate.")
        if self._sync is None:
            self._update_running_stats(X.shape[0])
            self.optimizer.step(self._params, self._grads)
        else:  # each rank updates its chunk of the parameters, then they exchange them
            self._update_running_stats(self._sync.n_total)
            self._sync.update(self)
        return loss

    def gather_optimizer_state(self):
        """With ``comm``, collective: make ``optimizer.state`` complete on every rank.

        In a training step under ``comm`` each rank applies the optimizer to its own 1/P
        of the parameters (the update costs each rank 1/P of one process's), so between
        steps a rank's optimizer state is current on that part only and NaN elsewhere.
        :meth:`save` and checkpoints call this; call it yourself before reading
        ``optimizer.state`` or copying the network. Without ``comm`` it does nothing.
        """
        if self._sync is not None:
            self._sync.gather_state(self)

    def loss_and_gradients(self, X, y, *, input_gradient=False):
        """Training-mode loss and gradients on one batch; changes nothing.

        Neither the running statistics nor the parameters nor the optimizer move, which
        makes this the call for finite-difference checks. With ``comm``, collective: X is
        this rank's rows of one global batch, and every rank gets the global loss and
        gradients (dX: this rank's rows).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like
            Targets, see the class docstring.
        input_gradient : bool, default=False
            Also return the gradient w.r.t. X under the key 'X'.

        Returns
        -------
        loss : float
        grads : dict of str to ndarray
            Keyed like :meth:`parameters`; fresh copies.
        """
        input_gradient = check.check_bool("input_gradient", input_gradient)
        X, targets = self._check_train_batch(X, y)
        ws = self._workspace(X.shape[0])
        result = self._forward_backward(X, targets, ws, input_gradient=input_gradient)
        loss = result[0] if input_gradient else result
        grads = {key: view.copy() for key, view in self._grad_views.items()}
        if input_gradient:
            grads["X"] = result[1]
        return loss, grads

    def train_step(self, X, y):
        """One mini-batch step: forward, backward, running statistics, optimizer update.

        Returns the batch loss (before the update). With batch norm, X needs >= 2 rows
        (with ``comm``: this rank's rows of one global batch, which needs >= 2 rows).
        """
        X, targets = self._check_train_batch(X, y)
        return self._step(X, targets)

    def _check_train_batch(self, X, y):
        """Validate one training batch; with comm, collectively (and set the global N)."""
        if self._sync is None:
            return self._check_batch(X, y, min_rows=self._min_train_rows)
        return _distributed.check_batch(self._sync, self, X, y)


    def _add_weight_decay(self):
        """dW += weight_decay * W for every weight matrix (b, gamma and beta are not decayed)."""
        for key in self._weight_keys:
            self._grad_views[key] += self._weight_decay * self._param_views[key]

    def __reduce__(self):
        # the flat buffers and their views must be rebuilt together, so copies go through
        # the save format (tensors and JSON only) rather than the instance __dict__; a copy
        # has no communicator
        return _network_from_bytes, (self._to_bytes(),)


def _network_from_bytes(data):
    """Unpickle a Network from the bytes of its save format (format 2, or 1 in old pickles)."""
    return _model_file.network_from_bytes(Network, data)


