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
import time

import numpy as np

from cbn import _model_file
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

    def __reduce__(self):  # pickles (e.g. to a parent process) with its attributes
        return type(self), (self.checkpoint, self.epoch, self.step)


class Position:
    """Where a fit stands: `epoch` epochs done and `step` steps of the next one taken.

    Mid-epoch (step > 0) it also holds that epoch's partial sums and elapsed seconds.
    """

    def __init__(self, epoch=0, step=0, loss_sum=0.0, correct=0, elapsed=0.0, stopped=False,
                 finished=False):
        self.epoch, self.step = epoch, step
        self.loss_sum, self.correct, self.elapsed = loss_sum, correct, elapsed
        self.stopped, self.finished = stopped, finished


def check_arguments(net, checkpoint, every):
    """fit's checkpoint and checkpoint_every, checked (on every rank, agreeing, with comm;
    the file's folder only where it is written): (path as str or None, every or None)."""
    if net is not None and net._sync is not None:
        from cbn import _distributed
        writer = net._sync.rank == 0
        return _distributed.agree(
            net._sync.comm, lambda: _check_arguments(checkpoint, every, writer))[0]
    return _check_arguments(checkpoint, every, True)


def _check_arguments(checkpoint, every, writer):
    if every is not None:
        if checkpoint is None:
            raise ValueError(f"checkpoint_every: needs a checkpoint file (checkpoint=path), "
                             f"got checkpoint=None and checkpoint_every={every!r}")
        every = check.check_int("checkpoint_every", every, 1)
    if checkpoint is None:
        return None, None
    path = os.fsdecode(check.check_path(checkpoint, "checkpoint"))
    folder = os.path.dirname(os.path.abspath(path))
    if writer and os.path.isdir(path):
        raise ValueError(f"checkpoint: expected a file name, got the folder {path!r}")
    if writer and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
        # found now rather than when the first epoch is done
        raise ValueError(f"checkpoint: the folder {folder!r} of {path!r} does not exist or "
                         f"is not writable")
    return path, every


class Run:
    """One fit call's checkpoint: what the run is, what was saved, when to write.

    Made by :func:`open_run`; fit calls :meth:`restore` once its callbacks have begun,
    :meth:`epoch_begins` before each epoch's shuffle, :meth:`after_step`,
    :meth:`after_epoch` and :meth:`finish`. With comm, every method is collective: the
    ranks agree on SIGTERM after every step (one integer all-reduce), rank 0 reads and
    writes the file, and a failure raises on every rank.
    """

    def __init__(self, net, path, every, signature, history, callbacks, shuffle_state,
                 lr_schedule):
        self.net, self.path, self.every, self.signature = net, path, every, signature
        self.sync = net._sync
        self.history, self.callbacks, self.lr_schedule = history, callbacks, lr_schedule
        self.shuffle_state = shuffle_state
        self.steps_per_epoch = signature["fit"]["steps_per_epoch"]
        self.position, self.restore = Position(), lambda: None
        self.stop_requested = False   # set by the SIGTERM handler
        self._epoch_rng = None        # generator state and shuffle state when the epoch began
        self._epoch_shuffle = None

    # ------------------------------------------------------------------ during fit

    def epoch_begins(self):
        """Note the shuffle's starting point of the epoch that begins (before its shuffle)."""
        self._epoch_rng = self.net._rng.bit_generator.state
        if self.shuffle_state is not None:
            self._epoch_shuffle = self.shuffle_state.copy()

    def after_step(self, epoch, step, loss_sum, correct, start_time):
        """After step `step` of epoch `epoch` (from 1): write if due or asked to stop."""
        stop = self._stop_agreed()
        due = self.every is not None and step != self.steps_per_epoch \
            and ((epoch - 1) * self.steps_per_epoch + step) % self.every == 0
        if stop or due:   # (at the epoch's last step, the epoch's own write follows)
            self._save(Position(epoch - 1, step, loss_sum, correct,
                                time.perf_counter() - start_time))
        if stop:
            raise TrainingInterrupted(self.path, epoch, step)

    def after_epoch(self, position):
        """After an epoch and its callbacks: write; stop here if asked to."""
        stop = self._stop_agreed()
        # when training ends here, finish() writes once on_train_end has run
        if stop or not (position.stopped or position.epoch == self.signature["fit"]["epochs"]):
            self._save(position)
        if stop:
            raise TrainingInterrupted(self.path, position.epoch, self.steps_per_epoch)

    def finish(self, position):
        """After on_train_end: the final write, so a fit called again returns at once.

        A SIGTERM during the write is delivered once the file is complete.
        """
        position.finished = True
        self.stop_requested = False
        with sigterm_held(self):
            self._save(position)
        if self.stop_requested:
            signal.raise_signal(signal.SIGTERM)

    def _stop_agreed(self):
        if self.sync is None:
            return self.stop_requested
        return self.sync.sum_int(self.stop_requested) > 0  # SIGTERM on any rank stops all

    # ------------------------------------------------------------------ writing

    def _save(self, position):
        """Write the training state atomically; mid-epoch, with the epoch's starting shuffle."""
        net = self.net
        if position.step > 0:
            rng_state, shuffle_state = self._epoch_rng, self._epoch_shuffle
        else:
            rng_state, shuffle_state = net._rng.bit_generator.state, self.shuffle_state
        correct = position.correct
        if self.sync is not None:  # each rank counts its own rows' hits until the epoch ends
            correct = self.sync.comm.allgather(int(correct))
        done = position.epoch
        state = {
            "epoch": done, "step": position.step,
            "loss_sum": float(position.loss_sum).hex(), "correct": correct,
            "elapsed": position.elapsed, "stopped": position.stopped,
            "finished": position.finished,
            "optimizer_t": net.optimizer.t, "lr": float(net.optimizer.lr).hex(),
            "rng_state": rng_state,
            # completed epochs only: a resumed epoch records its own 'lr' again
            "history": {key: [float(v).hex() for v in values[:done]]
                        for key, values in self.history.items()},
            "callbacks": [],
        }
        if self.sync is not None:
            self.sync.gather_state(net)   # collective; the file holds the whole state
        arrays = _state_arrays(net)
        if shuffle_state is not None:
            arrays["fit.shuffle"] = shuffle_state   # I64
        for i, callback in enumerate(self.callbacks):
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
        contents = {"signature": self.signature, "state": state}
        if self.sync is None:
            _write(self.path, contents, arrays)
        else:
            from cbn import _distributed
            _distributed.agree(self.sync.comm, lambda: _write(self.path, contents, arrays)
                               if self.sync.rank == 0 else None)

    # ------------------------------------------------------------------ reading

    def _read(self):
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

    def _prepare(self, saved):
        """Check a saved state against this fit, changing nothing; set position and restore."""
        state, arrays = saved
        net, history = self.net, self.history
        try:
            done = check.check_int("epoch", state["epoch"], 0)
            step = check.check_int("step", state["step"], 0)
            t = check.check_int("optimizer_t", state["optimizer_t"], 0)
            correct = state["correct"]
            if self.sync is not None:
                correct = correct[self.sync.rank]
            correct = check.check_int("correct", correct, 0)
            saved_history = {key: [float.fromhex(v) for v in values]
                             for key, values in state["history"].items()}
            if set(saved_history) != set(history) \
                    or any(len(values) != done for values in saved_history.values()):
                raise ValueError("its history does not fit the run")
            rates = saved_history.get("lr", [])
            if self.lr_schedule is not None and step > 0:  # the epoch in progress set its rate
                rates = rates + [float.fromhex(state["lr"])]
            for e, rate in enumerate(rates):
                if self.lr_schedule(e) != rate:  # the same schedule gives the same rates
                    raise ValueError(f"lr_schedule({e}) gives {self.lr_schedule(e)!r} but the "
                                     f"checkpointed run used {rate!r}")
            targets = _state_arrays(net)
            if self.shuffle_state is not None:
                targets["fit.shuffle"] = self.shuffle_state
            copies = [(target, _checked_array(arrays, name, target))
                      for name, target in targets.items()]
            callback_states = []
            for i, (callback, values) in enumerate(zip(self.callbacks, state["callbacks"])):
                if values is not None:
                    prefix = f"callbacks.{i}."
                    values = dict(values)
                    values.update({k[len(prefix):]: v for k, v in arrays.items()
                                   if k.startswith(prefix)})
                    callback_states.append((callback, values))
            position = Position(done, step, float.fromhex(state["loss_sum"]), correct,
                                float(state["elapsed"]), bool(state["stopped"]),
                                bool(state["finished"]))
            lr = check.check_positive("lr", float.fromhex(state["lr"]))
            rng = type(net._rng.bit_generator)()
            rng.state = state["rng_state"]  # refuses a state of another kind
        except (KeyError, IndexError, TypeError, ValueError, AttributeError,
                OverflowError) as exc:
            raise ValueError(f"checkpoint: {self.path!r} does not hold a usable training "
                             f"state ({type(exc).__name__}: {exc})") from None

        def restore():
            for target, source in copies:
                target[...] = source
            for callback, values in callback_states:
                callback.load_state_dict(values)
            net.optimizer.t, net.optimizer.lr = t, lr
            if net._sync is not None:
                net._sync.state_partial = False   # the whole state, from the file
            net._rng.bit_generator.state = rng.state
            for key, values in saved_history.items():
                history[key][:] = values
        self.position, self.restore = position, restore


def open_run(net, path, every, fit_args, data, history, callbacks, shuffle_state,
             lr_schedule, rng_state):
    """The Run of a fit with a checkpoint, with any saved state checked (not yet restored).

    `data` is (X as given, X checked, targets, validation); `rng_state` is the generator's
    state before fit's batch plan, put back if the checkpoint is refused (with comm the
    plan draws its key first). Collective with comm.
    """
    sync = net._sync
    try:
        signature = run_signature(net, fit_args, *data)
        run = Run(net, path, every, signature, history, callbacks, shuffle_state, lr_schedule)
        if sync is None:
            saved = run._read()
            if saved is not None:
                run._prepare(saved)
            return run
        from cbn import _distributed
        saved, _ = _distributed.agree(sync.comm,
                                      lambda: run._read() if sync.rank == 0 else None)
        saved = sync.comm.bcast(saved, root=0)
        if saved is not None:
            _distributed.agree(sync.comm, lambda: run._prepare(saved))
        return run
    except BaseException:
        net._rng.bit_generator.state = rng_state
        raise


@contextlib.contextmanager
def sigterm_held(run):
    """While fit runs with a checkpoint, turn SIGTERM into ``run.stop_requested``.

    Only in the main thread; a process that ignores SIGTERM keeps ignoring it. The previous
    handler is put back afterwards.
    """
    if run is None or threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return

    def request_stop(signum, frame):
        run.stop_requested = True
    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _state_arrays(net):
    """The network's tensors a checkpoint holds, named as in the model file (live views)."""
    return _model_file.network_tensors(net)


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


def run_signature(net, fit_args, X_given, X, targets, validation):
    """What identifies a run: the network's configuration, fit's arguments and the data
    (with comm: every rank's shard). JSON values."""
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
    if net._sync is not None:
        data = {"ranks": net._sync.comm.allgather(data)}
    return json.loads(json.dumps({"network": config, "data": data, "fit": fit_args}))


# ---------------------------------------------------------------------- the file

def _write(path, contents, tensors):
    """Write the JSON-able contents and the tensors to path as safetensors, atomically.

    The metadata holds "format", "format_version" and each key of contents as JSON text;
    the model file's writer adds the SHA-256 checksum.
    """
    metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)}
    metadata.update({key: json.dumps(value) for key, value in contents.items()})
    _model_file.atomic_save(path, lambda f: _model_file.write(f, tensors, metadata),
                            temporary=path + ".partial")


def _read(path):
    """(contents, tensors) of a checkpoint file; ValueError naming it if it is not one."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        tensors, metadata = _model_file.read(data)
    except ValueError as exc:
        raise ValueError(f"checkpoint: {path!r} is not a readable cbn checkpoint: damaged, "
                         f"truncated or not a checkpoint ({exc})") from None
    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"checkpoint: {path!r} is not a cbn checkpoint (its format is "
                         f"{metadata.get('format')!r}, expected {FORMAT_NAME!r})")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(f"checkpoint: {path!r} has format version "
                         f"{metadata.get('format_version')!r}, expected {FORMAT_VERSION}")
    try:
        contents = {key: json.loads(metadata[key]) for key in ("signature", "state")}
    except (KeyError, ValueError) as exc:
        raise ValueError(f"checkpoint: {path!r} does not hold a training state "
                         f"({type(exc).__name__}: {exc})") from None
    return contents, tensors
