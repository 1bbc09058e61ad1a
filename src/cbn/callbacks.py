"""Epoch-level training helpers for ``Network.fit``: learning-rate schedules, early stopping.

Learning-rate schedules (the course's decay formulas) are callables ``schedule(epoch) -> lr``,
``epoch`` counting the epochs of one ``fit`` call from 0, so the first epoch trains with
``lr0``. ``fit(lr_schedule=...)`` sets ``net.optimizer.lr`` before every epoch and records
it in ``history['lr']``; any function of the epoch works the same way.

Callbacks are callables ``callback(net, epoch, history)`` that ``fit`` calls after every
epoch (``epoch`` counts from 1, ``history`` already holds that epoch); a true return value
stops training. A callback may also define ``on_train_begin(net, history)`` (called before
the first epoch, with the history's keys in place) and ``on_train_end(net, history)``
(called when training ends normally or by a callback, not on an error or Ctrl-C).

With ``fit(checkpoint=...)``, a callback that also defines ``state_dict()`` (a dict of JSON
values and NumPy arrays) and ``load_state_dict(state)`` has that state saved in the
checkpoint and put back on resume, after its ``on_train_begin``; EarlyStopping does. Other
callbacks keep their own state: on resume they see ``on_train_begin`` again, with the
history of the completed epochs.
"""
import math

from cbn import _validation as check


class InverseTimeDecay:
    """``lr = lr0 / (1 + decay * floor(epoch / every))``.

    With ``every=1`` this is the lecture's ``alpha0 / (1 + decay_rate * epoch_num)``; a larger
    ``every`` gives the staircase ("fixed interval") version.
    """

    def __init__(self, lr0, decay, every=1):
        self.lr0 = check.check_positive("lr0", lr0)
        self.decay = check.check_float("decay", decay, 0.0, math.inf, high_open=True)
        self.every = check.check_int("every", every, 1)

    def __call__(self, epoch):
        return self.lr0 / (1.0 + self.decay * (epoch // self.every))

    def __repr__(self):
        return f"InverseTimeDecay(lr0={self.lr0!r}, decay={self.decay!r}, every={self.every!r})"


class ExponentialDecay:
    """``lr = lr0 * rate ** epoch`` (the lecture's ``0.95**epoch_num * alpha0``)."""

    def __init__(self, lr0, rate):
        self.lr0 = check.check_positive("lr0", lr0)
        self.rate = check.check_float("rate", rate, 0.0, 1.0, low_open=True)

    def __call__(self, epoch):
        return self.lr0 * self.rate ** epoch

    def __repr__(self):
        return f"ExponentialDecay(lr0={self.lr0!r}, rate={self.rate!r})"


class StepDecay:
    """``lr = lr0 * drop ** floor(epoch / every)``: multiply by ``drop`` every ``every`` epochs."""

    def __init__(self, lr0, drop, every):
        self.lr0 = check.check_positive("lr0", lr0)
        self.drop = check.check_float("drop", drop, 0.0, 1.0, low_open=True)
        self.every = check.check_int("every", every, 1)

    def __call__(self, epoch):
        return self.lr0 * self.drop ** (epoch // self.every)

    def __repr__(self):
        return f"StepDecay(lr0={self.lr0!r}, drop={self.drop!r}, every={self.every!r})"


class EarlyStopping:
    """Stop when a loss has not improved for ``patience`` epochs; restore the best weights.

    An epoch improves when ``value < best - min_delta``. With ``restore_best_weights``, the
    parameters and batch-norm running statistics of the best epoch are put back when training
    ends (whether it stopped early or ran out of epochs); the optimizer's state and step
    count stay those of the last step.

    Parameters
    ----------
    monitor : {'val_loss', 'loss'}, default='val_loss'
        'val_loss' needs ``validation_data`` in ``fit``.
    patience : int, default=5
        Epochs without improvement before stopping, >= 1.
    min_delta : float, default=0.0
        Smallest decrease that counts as an improvement, >= 0.
    restore_best_weights : bool, default=True

    Attributes
    ----------
    best : float
        Best monitored value of the latest fit.
    best_epoch : int
        Epoch (from 1) that reached it.
    stopped_epoch : int or None
        Epoch after which training stopped, or None if it ran all its epochs.
    """

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, restore_best_weights=True):
        self.monitor = check.check_choice("monitor", monitor, ("val_loss", "loss"))
        self.patience = check.check_int("patience", patience, 1)
        self.min_delta = check.check_float("min_delta", min_delta, 0.0, math.inf, high_open=True)
        self.restore_best_weights = bool(restore_best_weights)
        self.best, self.best_epoch, self.stopped_epoch = math.inf, 0, None
        self._wait = 0
        self._best_state = None

    def on_train_begin(self, net, history):
        if self.monitor not in history:
            raise ValueError(f"EarlyStopping: monitor={self.monitor!r} needs validation_data "
                             f"in fit (or use monitor='loss')")
        self.best, self.best_epoch, self.stopped_epoch = math.inf, 0, None
        self._wait = 0
        self._best_state = None

    def __call__(self, net, epoch, history):
        value = history[self.monitor][-1]
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self._wait = value, epoch, 0
            if self.restore_best_weights:
                self._best_state = net.state_dict(out=self._best_state)
            return False
        self._wait += 1
        if self._wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def state_dict(self):
        """What a checkpoint keeps: the best value and epoch, the wait, the best weights."""
        state = {"best": float(self.best).hex(), "best_epoch": self.best_epoch,
                 "stopped_epoch": self.stopped_epoch, "wait": self._wait}
        if self._best_state is not None:
            state["best_params"] = self._best_state["params"]
            state["best_running"] = self._best_state["running"]
        return state

    def load_state_dict(self, state):
        """Put back what :meth:`state_dict` returned."""
        self.best = float.fromhex(state["best"])
        self.best_epoch, self.stopped_epoch = state["best_epoch"], state["stopped_epoch"]
        self._wait = state["wait"]
        self._best_state = None
        if "best_params" in state:
            self._best_state = {"params": state["best_params"].copy(),
                                "running": state["best_running"].copy()}

    def on_train_end(self, net, history):
        if self._best_state is not None and self.best_epoch != history.epochs:
            net.load_state_dict(self._best_state)

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience!r}, "
                f"min_delta={self.min_delta!r}, "
                f"restore_best_weights={self.restore_best_weights!r})")
