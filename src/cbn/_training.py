"""The training loop of :class:`cbn.Network`: ``fit`` and ``recompute_statistics``.

:class:`TrainingMixin` is one of the classes ``Network`` is made of (as Keras' ``Model``
inherits its ``Trainer``): it plans the batches of every epoch, runs ``Network._step`` on
each, records the :class:`~cbn.History`, calls the callbacks, holds Ctrl-C back to a step
boundary and drives the checkpoint (:mod:`cbn._checkpoint`, which also holds SIGTERM).
The step itself, and the buffers it writes, belong to ``Network`` (cbn.network).
"""
import contextlib
import math
import signal
import threading
import time

import numpy as np

from cbn import _batches, _checkpoint, _distributed, _progress
from cbn import _validation as check
from cbn._history import History


class TrainingMixin:
    """``fit``, ``recompute_statistics`` and their helpers; mixed into :class:`cbn.Network`."""

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
        slices of it as its part of step s (see ``cbn._batches.epoch_plan``). Every
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
                if self._sync is not None:   # before a step's exchange would hide a change
                    self._sync.check_identical(self, epoch)
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
                if self._sync is not None and with_accuracy:
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
                data = _batches.check_shard(self, X, y)
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
        :func:`cbn._batches.epoch_plan`. The shuffle state is the int64 array that,
        with the generator's state, decides the coming plans (a checkpoint saves it): the
        permutation that the next epoch reshuffles, or the key of the batch rule.
        """
        if self._sync is not None:
            return _batches.batch_plan(self._sync, self, n_rows, batch_size, shuffle)
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
        _batches.gather(Xb, X, rows)
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
            return size, _batches.check_features("X", X, self.layer_sizes[0], self.dtype)
        if self._sync is None:
            size, X_checked = local()
            bounds = self._batch_bounds(X_checked.shape[0], size)
            batches = [(slice(a, b), b - a) for a, b in bounds]
        else:
            (size, X_checked), counts = _distributed.agree(
                self._sync.comm, local, count=lambda result: result[1].shape[0])
            self._sync.counts = counts
            plan, _, _, _ = _batches.batch_plan(self._sync, self, X_checked.shape[0], size,
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
                Xb = _batches.gather(buffers[n], X_checked, rows)
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

