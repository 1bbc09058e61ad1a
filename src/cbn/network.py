"""Network: layers, forward/backward orchestration, fit/predict, save/load.

Every parameter lives in one flat C-contiguous buffer and every gradient in a mirror of it,
so an optimizer step is one kernel call; each layer's W, b, gamma, beta are views into it.
Per batch size, the work buffers of a training step are allocated once and reused.
"""
import contextlib
import functools
import math
import signal
import threading
import time

import numpy as np

from cbn import _checkpoint, _distributed, _kernels, _model_file, _predict, _progress
from cbn import _validation as check
from cbn.optimizers import make_optimizer

# Larger gradients would overflow the squared-gradient averages of RMSprop and Adam.
_GRADIENT_LIMIT = {t: math.sqrt(np.finfo(t).max) for t in (np.float32, np.float64)}
# Work buffers are kept for this many batch sizes (typically the batch and the last, odd one).
MAX_WORKSPACES = 4


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


class History(dict):
    """What ``fit`` records per epoch: lists under 'loss', 'accuracy' (softmax and sigmoid
    outputs), 'val_loss', 'val_accuracy' (with validation data), 'lr' (with a learning-rate
    schedule) and 'time' (seconds)."""

    @property
    def epochs(self):
        """Number of epochs recorded."""
        return len(self.get("loss", ()))

    def plot(self, path=None, *, title=None):
        """Draw the loss and accuracy curves, train and validation; see :func:`cbn.plot_history`."""
        from cbn.plotting import plot_history
        return plot_history(self, path, title=title)


class _Workspace:
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


class Network:
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
        self._update_running_stats(X.shape[0] if self._sync is None else self._sync.n_total)
        self.optimizer.step(self._params, self._grads)
        return loss

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

    @staticmethod
    def _batch_bounds(m, batch_size):
        """(start, stop) of each batch; a 1-row remainder joins the batch before it."""
        starts = list(range(0, m, batch_size))
        stops = starts[1:] + [m]
        if len(starts) > 1 and stops[-1] - starts[-1] == 1:
            starts.pop()
            stops.pop(-2)
        return list(zip(starts, stops))

    def _correct_count(self, ws, targets):
        """Correct predictions of the last training forward (before the update)."""
        logits = ws.dZ_out  # free once backward has run; every buffer here is reused
        np.add(ws.Z[-1], self.layers[-1].b, out=logits)
        if self.output == "softmax":
            np.argmax(logits, axis=1, out=ws.predicted)
            return int(np.count_nonzero(np.equal(ws.predicted, targets, out=ws.hits[:, 0])))
        np.greater(logits, 0, out=ws.hits)
        np.greater(targets, 0.5, out=ws.truths)
        return int(np.count_nonzero(np.equal(ws.hits, ws.truths, out=ws.hits)))

    def fit(self, X, y, *, epochs=10, batch_size=32, shuffle=True, validation_data=None,
            verbose=0, lr_schedule=None, weight_decay=0.0, callbacks=(), checkpoint=None,
            checkpoint_every=None):
        """Train with mini-batch gradient descent.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like
            Targets, see the class docstring.
        epochs : int, default=10
            Passes over the data.
        batch_size : int, default=32
            Rows per step; a 1-row remainder joins the batch before it, so no step sees a
            single row.
        shuffle : bool, default=True
            Reshuffle the rows every epoch (with the network's seeded generator).
        validation_data : (X_val, y_val), optional
            Evaluated in inference mode after every epoch.
        verbose : int, default=0
            0 is silent; 1 shows a progress bar per epoch with the running loss and, at the
            end of the epoch, its metrics (tqdm's bar when tqdm is installed, a plain one
            otherwise); 2 prints one line per epoch.
        lr_schedule : callable, optional
            ``lr_schedule(epoch) -> lr``, epoch counting this call's epochs from 0; sets
            ``optimizer.lr`` before every epoch (which keeps the last value afterwards) and
            records it in ``history['lr']``. See :mod:`cbn.callbacks` for the lecture's decays.
        weight_decay : float, default=0.0
            L2 penalty ``weight_decay / 2 * sum(W**2)`` over the weight matrices W (not b,
            gamma, beta): every step adds ``weight_decay * W`` to ``dW`` before the
            optimizer update. The recorded losses exclude the penalty.
        callbacks : sequence of callables, default=()
            Each is called as ``callback(net, epoch, history)`` after every epoch (epoch
            from 1); a true return value stops training. Optional methods
            ``on_train_begin(net, history)`` and ``on_train_end(net, history)`` are called
            too; see :class:`cbn.EarlyStopping`.
        checkpoint : str or os.PathLike, optional
            A file for the complete training state, written atomically after every epoch
            (and every ``checkpoint_every`` steps; with comm, by rank 0). If it exists, fit
            resumes from it and ends with exactly the network, history and generator state
            of an uninterrupted run; a finished run's checkpoint makes fit return its
            history at once. A checkpoint of another run (network, data or arguments) or a
            damaged one raises ValueError. SIGTERM is then held back: at the next step
            boundary (on every rank) the state is saved and :class:`cbn.TrainingInterrupted`
            is raised. See the README, "Checkpoints and preemptible jobs".
        checkpoint_every : int, optional
            Also write the checkpoint every this many optimizer steps, >= 1.

        Returns
        -------
        History
            Per-epoch 'loss', 'accuracy', 'val_loss', 'val_accuracy', 'time' (and 'lr' with a
            schedule); also kept as ``net.history``, which holds the completed epochs if fit
            stops early.

        Raises
        ------
        FloatingPointError
            If a step produces a non-finite loss or gradient; that step is not applied.
        KeyboardInterrupt
            On Ctrl-C, raised after the step in progress completes (no checkpoint is
            written for it).
        TrainingInterrupted
            On SIGTERM with a checkpoint, raised once the state is saved.

        Notes
        -----
        With ``comm``, fit is collective: each rank passes its own shard (of any size, 0
        rows included; a memory-mapped ``.npy`` array is never copied whole) and
        ``batch_size`` counts the rows of a global step. Every rank takes the same
        S = ceil(N / batch_size) steps per epoch (N: the rows of all shards; a 1-row
        remainder joins the batch before it); each epoch rank r permutes its shard with
        ``numpy.random.default_rng([key, epoch, r])`` (``key`` drawn per fit call from the
        network's generator, identical on all ranks) and takes the s-th of S near-equal
        slices of it as its part of step s (see ``cbn._distributed.epoch_plan``). Every
        example is used once per epoch; the history, callbacks and ``validation_data``
        (each rank its own part) see global values; only rank 0 prints. The other
        arguments must be the same on every rank.
        """
        X_given = X
        (epochs, batch_size, verbose, shuffle, weight_decay, callbacks, X, targets,
         validation) = self._check_fit(X, y, epochs, batch_size, shuffle, validation_data,
                                       verbose, lr_schedule, weight_decay, callbacks)
        checkpoint, checkpoint_every = _checkpoint.check_arguments(
            self, checkpoint, checkpoint_every)
        rng_state = self._rng.bit_generator.state
        plan, n_steps, n_total, shuffle_state = self._batch_plan(X.shape[0], batch_size,
                                                                 shuffle)
        gather = {}  # batches are gathered into buffers made once per batch size
        with_accuracy = self.output != "linear"
        history = History(loss=[], time=[])
        if with_accuracy:
            history["accuracy"] = []
        if validation is not None:
            history["val_loss"] = []
            if with_accuracy:
                history["val_accuracy"] = []
        if lr_schedule is not None:
            history["lr"] = []
        # the share of a target in the epoch's accuracy
        n_targets = targets.size if self._sync is None else self._sync.sum_int(targets.size)
        run = None if checkpoint is None else _checkpoint.open_run(
            self, checkpoint, checkpoint_every, dict(
                epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                weight_decay=weight_decay, lr_schedule=lr_schedule is not None,
                steps_per_epoch=n_steps, callbacks=[
                    type(c).__name__ if hasattr(c, "state_dict") else None for c in callbacks]),
            (X_given, X, targets, validation), history, callbacks, shuffle_state, lr_schedule,
            rng_state)
        position = _checkpoint.Position() if run is None else run.position
        self.history = history
        if position.finished:  # a finished run's checkpoint: nothing left to do
            run.restore()
            return history
        printing = verbose and (self._sync is None or self._sync.rank == 0)
        progress = _progress.Progress(verbose, epochs, n_steps) if printing else None
        for callback in callbacks:
            if hasattr(callback, "on_train_begin"):
                callback.on_train_begin(self, history)
        if run is not None:
            run.restore()
        # under MPI the launcher forwards Ctrl-C to every rank at slightly different steps;
        # holding it back could leave ranks waiting for each other, so it is not held
        holding = _interrupts_between_steps() if self._sync is None \
            else contextlib.nullcontext(lambda: False)
        with holding as interrupted, _checkpoint.sigterm_held(run), \
                self._fit_state(weight_decay, progress):
            for epoch in range(position.epoch + 1, epochs + 1):
                if position.stopped:  # by a callback, before the checkpoint was written
                    break
                start_time = time.perf_counter() - position.elapsed  # resumed: time so far
                if lr_schedule is not None:
                    self.optimizer.lr = check.check_positive(
                        f"lr_schedule({epoch - 1})", lr_schedule(epoch - 1))
                    history["lr"].append(self.optimizer.lr)
                if progress is not None:
                    progress.begin(epoch, done=position.step)
                if run is not None:
                    run.epoch_begins()
                loss_sum, correct = position.loss_sum, position.correct
                # resumed mid-epoch: the same shuffle, without the steps already taken
                for step, (rows, batch_rows) in enumerate(plan(epoch)[position.step:],
                                                          position.step + 1):
                    Xb, tb = self._gather_batch(X, targets, rows, gather)
                    if self._sync is not None:
                        self._sync.n_total = batch_rows
                    loss = self._step(Xb, tb)
                    loss_sum += loss * batch_rows
                    if with_accuracy:
                        correct += self._correct_count(self._workspace(tb.shape[0]), tb)
                    if progress is not None:
                        progress.step(loss)
                    if interrupted():
                        raise KeyboardInterrupt(
                            f"fit interrupted in epoch {epoch} after optimizer step "
                            f"{self.optimizer.t}; the network holds that step's state and "
                            f"net.history the completed epochs")
                    if run is not None:
                        run.after_step(epoch, step, loss_sum, correct, start_time)
                if self._sync is not None:
                    self._sync.check_identical(self, epoch)
                    if with_accuracy:
                        correct = self._sync.sum_int(correct)
                self._end_epoch(history, loss_sum / n_total, correct / n_targets, validation,
                                start_time)
                if progress is not None:
                    progress.end(epoch, history)
                # every callback sees every epoch, even when an earlier one asks to stop
                stop = any([callback(self, epoch, history) for callback in callbacks])
                position = _checkpoint.Position(epoch, stopped=stop)
                if run is not None:
                    run.after_epoch(position)
                if stop:
                    break
        for callback in callbacks:
            if hasattr(callback, "on_train_end"):
                callback.on_train_end(self, history)
        if run is not None:
            run.finish(position)
        return history

    def _check_fit(self, X, y, epochs, batch_size, shuffle, validation_data, verbose,
                   lr_schedule, weight_decay, callbacks):
        """Validate fit's arguments (with comm: on every rank, agreeing, and alike)."""
        def local():
            checked = (check.check_int("epochs", epochs, 1),
                       check.check_int("batch_size", batch_size, self._min_train_rows),
                       check.check_int("verbose", verbose, 0),
                       check.check_bool("shuffle", shuffle),
                       check.check_float("weight_decay", weight_decay, 0.0, math.inf,
                                         high_open=True))
            if lr_schedule is not None and not callable(lr_schedule):
                raise TypeError(
                    f"lr_schedule: expected a function of the epoch, got {lr_schedule!r}")
            checked += (check.check_callbacks(callbacks),)
            if self._sync is None:
                data = self._check_batch(X, y, min_rows=self._min_train_rows)
            else:  # a shard, maybe memory-mapped: checked in chunks, never copied whole
                data = _distributed.check_shard(self, X, y)
            validation = None
            if validation_data is not None:
                X_val, y_val = check.check_validation_data(validation_data)
                validation = self._check_batch(
                    X_val, y_val, min_rows=0 if self._sync else 1,
                    x_name="validation_data[0]", y_name="validation_data[1]")
            return checked + data + (validation,)
        if self._sync is None:
            return local()
        return _distributed.check_fit(self._sync, local, lr_schedule is not None)

    def _batch_plan(self, n_rows, batch_size, shuffle):
        """Which rows each step of an epoch takes.

        Returns (plan, steps per epoch, rows per epoch over all ranks, shuffle state);
        ``plan(epoch)`` lists (rows, rows of the global batch) per step, rows being a slice
        or an index array into this rank's X. Without comm: the rows, reshuffled every epoch
        by the network's generator, cut into batch_size-row batches (a 1-row remainder
        joins the batch before it). With comm: the batch rule of
        :func:`cbn._distributed.epoch_plan`. The shuffle state is the int64 array that,
        with the generator's state, decides the coming plans (a checkpoint saves it): the
        permutation that the next epoch reshuffles, or the key of the batch rule.
        """
        if self._sync is not None:
            return _distributed.batch_plan(self._sync, self, n_rows, batch_size, shuffle)
        bounds = self._batch_bounds(n_rows, batch_size)
        if not shuffle:
            return ((lambda epoch: [(slice(a, b), b - a) for a, b in bounds]), len(bounds),
                    n_rows, None)
        order = np.arange(n_rows, dtype=np.int64)

        def plan(epoch):
            self._rng.shuffle(order)
            return [(order[a:b], b - a) for a, b in bounds]
        return plan, len(bounds), n_rows, order

    def _gather_batch(self, X, targets, rows, buffers):
        """The batch X[rows], targets[rows], in reused buffers (a slice is a view)."""
        if isinstance(rows, slice) and X.dtype == self.dtype:
            return X[rows], targets[rows]
        if isinstance(rows, slice):
            rows = np.arange(rows.start, rows.stop)
        n = rows.shape[0]
        Xb, tb = buffers.get(n) or buffers.setdefault(
            n, (np.empty((n,) + X.shape[1:], self.dtype),
                np.empty((n,) + targets.shape[1:], targets.dtype)))
        _distributed.gather(Xb, X, rows)
        np.take(targets, rows, axis=0, out=tb)
        return Xb, tb

    def recompute_statistics(self, X, *, batch_size=256):
        """Replace the running statistics by population estimates over one pass through X.

        The inference statistics of the batch-norm paper (Ioffe & Szegedy 2015, §3.1,
        Algorithm 2): X is cut into batches as ``fit(shuffle=False)`` would cut it; each
        batch runs through the training-mode forward (every layer normalized with its
        batch's statistics, parameters untouched) and every batch-norm layer's
        ``running_mean`` becomes the mean of its batch means and ``running_var`` the mean of
        its unbiased batch variances ``m / (m - 1) * var_B`` (m the batch's rows; batches
        are equal but for the last). With comm, collective: each rank passes its shard and
        the batches are the global batches of fit's batch rule (without shuffling).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Typically the training data; a memory-mapped array is read batch by batch.
        batch_size : int, default=256
            Rows per batch (over all ranks with comm), >= 2.
        """
        def local():
            size = check.check_int("batch_size", batch_size, 2)
            if self._sync is None:
                return size, check.check_features("X", X, self.layer_sizes[0], self.dtype, 2)
            return size, _distributed.check_features("X", X, self.layer_sizes[0], self.dtype)
        if self._sync is None:
            size, X_checked = local()
            bounds = self._batch_bounds(X_checked.shape[0], size)
            batches = [(slice(a, b), b - a) for a, b in bounds]
        else:
            (size, X_checked), counts = _distributed.agree(
                self._sync.comm, local, count=lambda result: result[1].shape[0])
            self._sync.counts = counts
            plan, _, _, _ = _distributed.batch_plan(self._sync, self, X_checked.shape[0], size,
                                                    False)
            batches = plan(0)
        if not self._bn_cache:
            return
        mean_sum = [np.zeros(layer.n_out) for layer in self.layers if layer.batchnorm]
        var_sum = [np.zeros(layer.n_out) for layer in self.layers if layer.batchnorm]
        buffers = {}
        for rows, m in batches:
            if isinstance(rows, slice):
                Xb = X_checked[rows]
            else:
                n = rows.shape[0]
                if n not in buffers:
                    buffers[n] = np.empty((n, X_checked.shape[1]), self.dtype)
                Xb = _distributed.gather(buffers[n], X_checked, rows)
            if self._sync is not None:
                self._sync.n_total = m
            self._train_forward(Xb, self._workspace(Xb.shape[0]))
            for l, (mean, var, _) in enumerate(self._bn_cache):
                mean_sum[l] += mean
                var_sum[l] += var * (m / (m - 1))
        for layer, total_mean, total_var in zip(
                [layer for layer in self.layers if layer.batchnorm], mean_sum, var_sum):
            layer.running_mean[...] = total_mean / len(batches)
            layer.running_var[...] = total_var / len(batches)

    def _end_epoch(self, history, loss, accuracy, validation, start_time):
        """Record one epoch in history, validating in inference mode."""
        history["loss"].append(loss)
        if "accuracy" in history:
            history["accuracy"].append(accuracy)
        if validation is not None:
            scores = self._evaluate(*validation)
            history["val_loss"].append(scores["loss"])
            if "val_accuracy" in history:
                history["val_accuracy"].append(scores["accuracy"])
        history["time"].append(time.perf_counter() - start_time)

    @contextlib.contextmanager
    def _fit_state(self, weight_decay, progress):
        """Hold fit's per-call state (weight decay, progress bar) and undo it however fit ends."""
        self._weight_decay = weight_decay
        try:
            yield
        finally:
            self._weight_decay = 0.0
            if progress is not None:
                progress.close()

    def _add_weight_decay(self):
        """dW += weight_decay * W for every weight matrix (b, gamma and beta are not decayed)."""
        for key in self._weight_keys:
            self._grad_views[key] += self._weight_decay * self._param_views[key]

    def _snapshot(self, out=None):
        """Copy parameters and running statistics (into ``out`` from an earlier snapshot)."""
        if out is None:
            return self._params.copy(), self._running.copy()
        np.copyto(out[0], self._params)
        np.copyto(out[1], self._running)
        return out

    def _restore(self, snapshot):
        """Put back parameters and running statistics from :meth:`_snapshot`."""
        np.copyto(self._params, snapshot[0])
        np.copyto(self._running, snapshot[1])

    # ------------------------------------------------------------------ inference

    def _logits(self, X):
        """Inference-mode output-layer W.A (without b); state untouched (see cbn._predict)."""
        return _predict.forward(self, X, raw=True)

    def _outputs(self, logits):
        """Apply the output function to logits (in place) and return them."""
        b = self.layers[-1].b
        if self.output == "softmax":
            _kernels.softmax_forward(logits, logits, b)
        else:
            code = _kernels.ACTIVATIONS["sigmoid" if self.output == "sigmoid" else "linear"]
            _kernels.bias_activation_forward(logits, logits, b, code, 0.0)
        return logits

    def predict_proba(self, X):
        """Class probabilities in inference mode (running statistics, left unchanged).

        Returns an ndarray of shape (n_samples, n_out): softmax rows, or per-output
        sigmoid probabilities.
        """
        if self.output == "linear":
            raise ValueError("predict_proba: a network with output='linear' has no "
                             "probabilities; use predict")
        X = check.check_features("X", X, self.layer_sizes[0], self.dtype)
        return _predict.forward(self, X, raw=False)

    def predict(self, X):
        """Predictions in inference mode: class indices (softmax), 0/1 labels (sigmoid) or
        values (linear). Single-output sigmoid and linear networks return shape (n_samples,).
        """
        X = check.check_features("X", X, self.layer_sizes[0], self.dtype)
        outputs = _predict.forward(self, X, raw=False)
        if self.output == "softmax":
            return outputs.argmax(axis=1)
        if self.output == "sigmoid":
            outputs = (outputs > 0.5).astype(np.intp)
        return outputs[:, 0] if outputs.shape[1] == 1 else outputs

    def _evaluate(self, X, targets):
        if self._sync is not None:
            return _distributed.evaluate(self._sync, self, X, targets)
        logits = self._logits(X)
        loss = self._loss(np.empty_like(logits), logits, self.layers[-1].b, targets)
        scores = {"loss": loss}
        if self.output != "linear":
            outputs = self._outputs(logits)
            if self.output == "softmax":
                hits = outputs.argmax(axis=1) == targets
            else:
                hits = (outputs > 0.5) == (targets > 0.5)
            scores["accuracy"] = float(np.mean(hits))
        return scores

    def evaluate(self, X, y):
        """Loss (and accuracy, for softmax and sigmoid outputs) in inference mode.

        Returns a dict with 'loss' and, except for linear outputs, 'accuracy'. With comm,
        collective: each rank passes its shard (0 rows allowed) and all get the scores
        over all shards.
        """
        if self._sync is None:
            X, targets = self._check_batch(X, y)
        else:
            (X, targets), _ = _distributed.agree(
                self._sync.comm, lambda: self._check_batch(X, y, min_rows=0))
        return self._evaluate(X, targets)

    # ------------------------------------------------------------------ save / load

    def _config(self):
        return {
            "layer_sizes": list(self.layer_sizes),
            "activation": self.activation,
            "output": self.output,
            "batchnorm": self.batchnorm,
            "dtype": np.dtype(self.dtype).name,
            "bn_momentum": self.bn_momentum,
            "bn_eps": self.bn_eps,
            "negative_slope": self.negative_slope,
            "seed": self.seed,
            "optimizer": {"name": type(self.optimizer).__name__.lower(),
                          "config": self.optimizer.get_config(), "t": self.optimizer.t},
            "rng_state": self._rng.bit_generator.state,
            "metadata": self.metadata,
        }

    def _arrays(self):
        arrays = {"params": self._params, "running": self._running}
        arrays.update({f"optimizer.{k}": v for k, v in self.optimizer.state.items()})
        return arrays

    def save(self, path):
        """Save weights, batch-norm statistics, optimizer state and hyper-parameters.

        The file is safetensors (format 2, whatever the file name): the tensors under their
        :meth:`parameters` names, the running statistics and the optimizer state, with the
        configuration, the format version and a SHA-256 checksum in its metadata; the
        ``safetensors`` package and the C library (``cbn_model.h``) read it. It is written to
        a temporary file in the same folder and renamed over ``path``, so a failed save
        leaves any previous file intact. With comm, collective: rank 0 writes, every rank
        raises if that fails.
        """
        if self._sync is not None:
            return _distributed.save(self._sync, self, path)
        return self._save_local(path)

    def _save_local(self, path):
        _model_file.save_network(self, path)

    def __reduce__(self):
        # the flat buffers and their views must be rebuilt together, so copies go through
        # the save format (tensors and JSON only) rather than the instance __dict__; a copy
        # has no communicator
        return _network_from_bytes, (self._to_bytes(),)

    def _to_bytes(self):
        return _model_file.network_to_bytes(self)

    @classmethod
    def _from_bytes(cls, data):
        return _network_from_bytes(data)

    @classmethod
    def load(cls, path, comm=None):
        """Load a network saved by :meth:`save`; never unpickles anything.

        Reads format 2 (safetensors) and the ``.npz`` files of format 1, told apart by their
        content. With comm, collective: rank 0 reads the file and every rank gets the
        network, bound to comm.

        Raises ValueError naming the path if the file is not a cbn network, is truncated,
        damaged or edited, or was written by an unknown format version.
        """
        if comm is not None:
            return _distributed.load(cls, path, comm)
        return _model_file.load_network(cls, path)

    def to_onnx(self, path, *, fold_batchnorm=True):
        """Export the inference graph as an ONNX model (opset 13, IR version 7).

        Needs the ``onnx`` package (``pip install 'cbn[onnx]'``). The graph's input "X" has
        shape (N, n_features), its output "Y" shape (N, n_out) in the network's dtype: what
        :meth:`predict_proba` returns (:meth:`predict` for linear outputs).

        Parameters
        ----------
        path : str or os.PathLike
            The file to write (atomically, like :meth:`save`).
        fold_batchnorm : bool, default=True
            Fold batch norm into each layer's Gemm (computed in float64, rounded once), or
            keep it as a BatchNormalization node holding gamma, beta and the running statistics.

        Returns
        -------
        onnx.ModelProto
            The model written.
        """
        from cbn._onnx import to_onnx
        return to_onnx(self, path, fold_batchnorm=fold_batchnorm)


def _network_from_bytes(data):
    """Unpickle a Network from the bytes of its save format (format 2, or 1 in old pickles)."""
    return _model_file.network_from_bytes(Network, data)


@contextlib.contextmanager
def _interrupts_between_steps():
    """Hold Ctrl-C (SIGINT) back until the current training step has finished.

    Yields a function that tells whether Ctrl-C was pressed; the caller stops at the next
    step boundary, so an interrupt never leaves parameters, running statistics and
    optimizer state from different steps. Outside the main thread nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)

