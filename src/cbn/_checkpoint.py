"""fit's checkpoints: the complete training state on disk, so a killed run resumes bit for bit.

A checkpoint is written at a step boundary and holds everything the rest of the run depends
on: parameters, running statistics, optimizer state, step count and learning rate, the
epoch and the steps done in it, the epoch's partial loss and accuracy sums, the history so
far, the state of callbacks that define ``state_dict``/``load_state_dict`` (EarlyStopping
does), and the shuffle: the random generator's state and the permutation as they were when
the epoch in progress began, so the resumed fit reshuffles that epoch exactly as the
interrupted one did and skips the steps already taken.

It also records what the run was (the network's configuration, fit's arguments, and a
SHA-256 of the training and validation data), and a fit whose run differs is refused with a
ValueError rather than resumed or restarted.

SIGTERM (what batch schedulers send before they stop a job) is held back while fit runs
with a checkpoint: at the next step boundary the state is written and fit raises
:class:`TrainingInterrupted`.
"""
import contextlib
import hashlib
import json
import os
import signal
import threading

import numpy as np

from cbn import _validation as check

FORMAT_NAME = "cbn.Checkpoint"
FORMAT_VERSION = 1
# the data's fingerprint reads it this many bytes at a time (a memory map is never copied whole)
_HASH_CHUNK_BYTES = 1 << 24


class TrainingInterrupted(KeyboardInterrupt):
    """fit stopped on SIGTERM after saving its checkpoint; calling it again resumes.

    A subclass of KeyboardInterrupt, like Ctrl-C, so that ``except Exception`` does not
    swallow a request to stop.

    Attributes
    ----------
    checkpoint : str
        The checkpoint file that holds the training state.
    epoch : int
        The epoch (from 1) in progress when fit stopped.
    step : int
        Steps of that epoch already taken (and saved).
    """

    def __init__(self, checkpoint, epoch, step):
        super().__init__(
            f"fit stopped by SIGTERM in epoch {epoch} after step {step} of that epoch; the "
            f"training state is saved in {checkpoint!r}: call fit again with "
            f"checkpoint={checkpoint!r} to resume")
        self.checkpoint, self.epoch, self.step = checkpoint, epoch, step


class Position:
    """Where a fit stands: `epoch` epochs done and `step` steps of the next one taken.

    Mid-epoch (step > 0) it also holds that epoch's partial sums and elapsed seconds.
    """

    def __init__(self, epoch=0, step=0, loss_sum=0.0, correct=0, elapsed=0.0, stopped=False,
                 finished=False):
        self.epoch, self.step = epoch, step
        self.loss_sum, self.correct, self.elapsed = loss_sum, correct, elapsed
        self.stopped, self.finished = stopped, finished


class Run:
    """One fit call's checkpointing: what the run is, where the file is, when to write.

    Parameters
    ----------
    path : str
        The checkpoint file.
    every : int or None
        Also write every `every` optimizer steps (counted over the whole fit).
    net : Network
    signature : dict
        What must be equal for a checkpoint to belong to this run (JSON values).
    """

    def __init__(self, path, every, net, signature):
        self.path, self.every, self.net, self.signature = path, every, net, signature
        self.steps_per_epoch = signature["fit"]["steps_per_epoch"]
        self._epoch_rng = None      # generator state and permutation when the epoch began
        self._epoch_order = None

    # ------------------------------------------------------------------ writing

    def epoch_begins(self, order):
        """Note the shuffle's starting point of the epoch that begins (before its shuffle)."""
        self._epoch_rng = self.net._rng.bit_generator.state
        if order is not None:
            self._epoch_order = order.copy()

    def due(self, epoch, step):
        """Whether step `step` of epoch `epoch` (from 1) ends with a periodic write."""
        if self.every is None or step == self.steps_per_epoch:  # the epoch's write follows
            return False
        return ((epoch - 1) * self.steps_per_epoch + step) % self.every == 0

    def save(self, history, callbacks, position, order):
        """Write the training state atomically; mid-epoch, with the epoch's starting shuffle."""
        net = self.net
        if position.step > 0:
            rng_state, order = self._epoch_rng, self._epoch_order
        else:
            rng_state = net._rng.bit_generator.state
        done = position.epoch
        state = {
            "epoch": done, "step": position.step,
            "loss_sum": float(position.loss_sum).hex(), "correct": position.correct,
            "elapsed": position.elapsed, "stopped": position.stopped,
            "finished": position.finished,
            "optimizer_t": net.optimizer.t, "lr": float(net.optimizer.lr).hex(),
            "rng_state": rng_state,
            # completed epochs only: a resumed epoch records its own 'lr' again
            "history": {key: [float(v).hex() for v in values[:done]]
                        for key, values in history.items()},
            "callbacks": [],
        }
        arrays = {"params": net._params, "running": net._running}
        arrays.update({f"optimizer.{k}": v for k, v in net.optimizer.state.items()})
        if order is not None:
            arrays["fit.order"] = order.astype(np.int64)
        for i, callback in enumerate(callbacks):
            if not hasattr(callback, "state_dict"):
                state["callbacks"].append(None)
                continue
            values = {}
            for key, value in callback.state_dict().items():
                if isinstance(value, np.ndarray):
                    arrays[f"callbacks.{i}.{key}"] = value
                else:
                    values[key] = value
            state["callbacks"].append(values)
        _write(self.path, {"signature": self.signature, "state": state}, arrays)

    # ------------------------------------------------------------------ reading

    def read(self):
        """The checkpoint's (state, arrays), or None if there is no file yet.

        Raises ValueError, naming the file, if it is damaged or belongs to another run.
        """
        if not os.path.exists(self.path):
            return None
        config, arrays = _read(self.path)
        theirs = config.get("signature")
        if theirs != self.signature:
            raise ValueError(f"checkpoint: {self.path!r} was written by a different run and "
                             f"is not resumed: {_difference(theirs, self.signature)}. Use "
                             f"another checkpoint path, or delete this file to start over")
        return config["state"], arrays

    def prepare(self, saved, history, callbacks, order, lr_schedule):
        """Check a checkpoint read by :meth:`read` against this fit, changing nothing.

        Returns (position, restore): the Position to go on from, and a function that puts
        the saved state into the network, history, callbacks and permutation.
        """
        state, arrays = saved
        net = self.net
        try:
            done = check.check_int("epoch", state["epoch"], 0)
            step = check.check_int("step", state["step"], 0)
            t = check.check_int("optimizer_t", state["optimizer_t"], 0)
            saved_history = {key: [float.fromhex(v) for v in values]
                             for key, values in state["history"].items()}
            if set(saved_history) != set(history) \
                    or any(len(values) != done for values in saved_history.values()):
                raise ValueError("its history does not fit the run")
            rates = saved_history.get("lr", [])
            if lr_schedule is not None and step > 0:  # the epoch in progress set its rate
                rates = rates + [float.fromhex(state["lr"])]
            for e, rate in enumerate(rates):
                if lr_schedule(e) != rate:  # the same schedule gives the same rates
                    raise ValueError(f"lr_schedule({e}) gives {lr_schedule(e)!r} but the "
                                     f"checkpointed run used {rate!r}")
            targets = {"params": net._params, "running": net._running}
            targets.update({f"optimizer.{k}": v for k, v in net.optimizer.state.items()})
            if order is not None:
                targets["fit.order"] = order
            copies = [(target, _checked_array(arrays, name, target))
                      for name, target in targets.items()]
            callback_states = []
            for i, (callback, values) in enumerate(zip(callbacks, state["callbacks"])):
                if values is not None:
                    prefix = f"callbacks.{i}."
                    values = dict(values)
                    values.update({k[len(prefix):]: v for k, v in arrays.items()
                                   if k.startswith(prefix)})
                    callback_states.append((callback, values))
            position = Position(done, step, float.fromhex(state["loss_sum"]),
                                state["correct"], float(state["elapsed"]),
                                bool(state["stopped"]), bool(state["finished"]))
            lr = check.check_positive("lr", float.fromhex(state["lr"]))
            rng = type(net._rng.bit_generator)()
            rng.state = state["rng_state"]  # refuses a state of another kind
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise ValueError(f"checkpoint: {self.path!r} does not hold a usable training "
                             f"state ({type(exc).__name__}: {exc})") from None

        def restore():
            for target, source in copies:
                target[...] = source
            for callback, values in callback_states:
                callback.load_state_dict(values)
            net.optimizer.t, net.optimizer.lr = t, lr
            net._rng.bit_generator.state = rng.state
            for key, values in saved_history.items():
                history[key][:] = values
        return position, restore


def _checked_array(arrays, name, target):
    """arrays[name], refused if missing or of another shape or dtype than target."""
    source = arrays.get(name)
    if source is None:
        raise ValueError(f"array {name!r} is missing")
    if source.shape != target.shape or source.dtype != target.dtype:
        raise ValueError(f"array {name!r}: expected {target.dtype} of shape {target.shape}, "
                         f"got {source.dtype} of shape {source.shape}")
    if source.dtype.kind == "f" and not np.isfinite(source).all():
        raise ValueError(f"array {name!r} holds NaN or infinity")
    return source


def _difference(theirs, ours):
    """Describe how two signatures differ, e.g. "fit.batch_size is 32 in the checkpoint but
    64 now"."""
    found = []

    def walk(a, b, where):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in list(b) + [k for k in a if k not in b]:
                if a.get(key) != b.get(key):
                    walk(a.get(key), b.get(key), f"{where}{key}.")
        else:
            found.append(f"{where.rstrip('.') or 'its run description'} is {a!r} in the "
                         f"checkpoint but {b!r} now")
    walk(theirs, ours, "")
    return "; ".join(found)


# ---------------------------------------------------------------------- what the run is

def fingerprint(*arrays):
    """SHA-256 (hex) of the arrays' dtypes, shapes and values, read in chunks of rows."""
    digest = hashlib.sha256()
    for arr in arrays:
        digest.update(f"{arr.dtype.str}{arr.shape}|".encode())
        if arr.ndim == 0 or arr.shape[0] == 0:
            digest.update(np.ascontiguousarray(arr).tobytes())
            continue
        rows = max(1, _HASH_CHUNK_BYTES // max(1, arr[0].nbytes))
        for start in range(0, arr.shape[0], rows):
            digest.update(np.ascontiguousarray(arr[start:start + rows]).data)
    return digest.hexdigest()


def signature(net, X_given, X, targets, validation, fit_args):
    """What identifies a run: the network's configuration, the data and fit's arguments."""
    config = net._config()
    for key in ("format", "format_version", "rng_state", "metadata", "optimizer"):
        config.pop(key, None)
    opt = net.optimizer
    config["optimizer"] = {"name": type(opt).__name__.lower(), "config": opt.get_config()}
    data = {"X_shape": list(X.shape), "y_shape": list(targets.shape),
            "X_dtype": str(getattr(X_given, "dtype", type(X_given).__name__)),
            "sha256": fingerprint(X, targets)}
    if validation is not None:
        data["validation_sha256"] = fingerprint(*validation)
    return json.loads(json.dumps({"network": config, "data": data, "fit": fit_args}))


# ---------------------------------------------------------------------- SIGTERM

@contextlib.contextmanager
def sigterm_held(active):
    """Hold SIGTERM back while fit runs; yields a function that tells whether it came.

    Only when `active` (fit has a checkpoint) and in the main thread; a process that
    ignores SIGTERM keeps ignoring it. The previous handler is put back afterwards.
    """
    if not active or threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield lambda: False
        return
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------- the file

def _write(path, config, arrays):
    """Write config (JSON) and arrays to path atomically (temporary file, fsync, rename)."""
    from cbn.network import _checksum
    config = dict(config, format=FORMAT_NAME, format_version=FORMAT_VERSION)
    config["checksum"] = _checksum(config, arrays)
    partial = path + ".partial"  # one fixed name: a write killed half-way leaves no litter
    try:
        with open(partial, "wb") as f:
            np.savez(f, config=np.array(json.dumps(config)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    _fsync_folder(path)


def _fsync_folder(path):
    """Make the rename durable (a crash of the machine keeps the new file)."""
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read(path):
    """(config, arrays) of a checkpoint file; ValueError naming it if it is not one."""
    from cbn.network import _checksum
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        config = json.loads(str(arrays.pop("config")))
    except Exception as exc:
        raise ValueError(f"checkpoint: {path!r} is not a readable cbn checkpoint, damaged or "
                         f"truncated ({type(exc).__name__}: {exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise ValueError(f"checkpoint: {path!r} is not a cbn checkpoint (format "
                         f"{config.get('format') if isinstance(config, dict) else None!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint: {path!r} has format version "
                         f"{config.get('format_version')!r}, expected {FORMAT_VERSION}")
    if config.pop("checksum", None) != _checksum(config, arrays):
        raise ValueError(f"checkpoint: {path!r} fails its checksum: the file was damaged "
                         f"or edited")
    return config, arrays
