"""Failures lose nothing: divergence, Ctrl-C during fit, a save that fails half-way, damaged
or hand-edited model files."""
import json
import os
import pickle
import re
import signal
import threading

import numpy as np
import pytest

import cbn
from cbn import _model_file

OPTIMIZERS = [cbn.SGD, cbn.Momentum, cbn.RMSprop, cbn.Adam]
# diverging on purpose: NumPy's overflow warnings are expected noise here
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                                        "ignore:invalid value encountered:RuntimeWarning")


def data(n=32, n_x=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_x)), rng.integers(0, k, n)


def state(net):
    """Everything a training step may change, copied."""
    return {"params": net._params.copy(), "running": net._running.copy(),
            "t": net.optimizer.t, "rng": json.dumps(net._rng.bit_generator.state),
            **{f"optimizer.{k}": v.copy() for k, v in net.optimizer.state.items()}}


def assert_state(net, expected):
    got = state(net)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


# ----------------------------------------------------------------------------- divergence

@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_divergence_keeps_the_state_from_before_the_failing_step(optimizer, dtype):
    huge = float(np.finfo(dtype).max) / 1e4
    net = cbn.Network([4, 8, 8, 3], optimizer=optimizer(lr=huge), dtype=dtype, seed=0)
    X, y = data()
    for _ in range(50):
        before = state(net)
        try:
            net.train_step(X, y)
        except FloatingPointError as exc:
            assert "diverged" in str(exc)
            break
    else:
        pytest.fail(f"a learning rate of {huge:g} never diverged")
    assert_state(net, before)
    with pytest.raises(FloatingPointError):  # the same step fails again, changing nothing
        net.train_step(X, y)
    assert_state(net, before)


def test_non_finite_loss_changes_nothing():
    net = cbn.Network([2, 4, 2], seed=0)
    X, y = data(n_x=2, k=2)
    net.train_step(X, y)
    before = state(net)
    with pytest.raises(FloatingPointError, match="not finite"):
        net.train_step(np.full((4, 2), 3e38) * [[1, -1]], [0, 1, 0, 1])  # overflows to inf/NaN
    assert_state(net, before)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_gradient_too_large_for_squared_averages_changes_nothing(optimizer, tmp_path):
    """Targets of 1e25 give float32 gradients whose squares overflow: before this was
    refused, Adam's and RMSprop's state became inf silently and the saved file unloadable."""
    net = cbn.Network([2, 4, 1], output="linear", optimizer=optimizer(), seed=0)
    X, _ = data(n_x=2)
    net.train_step(X, np.ones(len(X)))
    before = state(net)
    with pytest.raises(FloatingPointError, match="too large"):
        net.train_step(X, np.full(len(X), 1e25))
    assert_state(net, before)
    net.save(tmp_path / "net.safetensors")
    assert_state(cbn.Network.load(tmp_path / "net.safetensors"), before)


def test_weight_decay_is_checked_with_the_gradients():
    net = cbn.Network([4, 8, 3], seed=0)
    X, y = data()
    before = state(net)
    with pytest.raises(FloatingPointError):
        net.fit(X, y, epochs=1, weight_decay=1e38, shuffle=False)
    assert_state(net, before)


def test_fit_stops_on_divergence_with_the_last_good_state_and_history():
    net = cbn.Network([4, 8, 3], optimizer=cbn.SGD(lr=1e30), seed=0)
    X, y = data()
    snapshots = []
    original = net._step

    def step(Xb, tb):
        snapshots.append(state(net))
        return original(Xb, tb)

    net._step = step
    handler = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    with pytest.raises(FloatingPointError):
        net.fit(X, y, epochs=20, batch_size=8)
    assert_state(net, snapshots[-1])
    steps_per_epoch = 4
    assert net.history.epochs == (len(snapshots) - 1) // steps_per_epoch
    assert signal.getsignal(signal.SIGINT) is handler


# ----------------------------------------------------------------------------- Ctrl-C

def run_fit_with_sigint(net, X, y, when, **kwargs):
    """fit, with SIGINT sent to this process during the given optimizer step (counted from 1).

    Returns the state after each completed step."""
    after = []
    original = net._step

    def step(Xb, tb):
        if net.optimizer.t + 1 == when:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the step runs
        loss = original(Xb, tb)
        after.append(state(net))
        return loss

    net._step = step
    with pytest.raises(KeyboardInterrupt, match="interrupted"):
        net.fit(X, y, **kwargs)
    return after


@pytest.mark.parametrize("when", [1, 6, 9])
def test_ctrl_c_during_fit_ends_after_the_step_in_progress(when):
    net = cbn.Network([4, 8, 3], seed=0)
    X, y = data()
    handler = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    after = run_fit_with_sigint(net, X, y, when, epochs=5, batch_size=8)
    assert net.optimizer.t == when == len(after)
    assert_state(net, after[-1])
    assert net.history.epochs == (when - 1) // 4  # 4 steps per epoch: completed epochs only
    assert all(len(values) == net.history.epochs for values in net.history.values())
    assert signal.getsignal(signal.SIGINT) is handler
    net.fit(X, y, epochs=1, batch_size=8)  # and training goes on from there
    assert net.optimizer.t == when + 4


def test_ctrl_c_from_another_thread_leaves_a_consistent_network():
    """A real asynchronous SIGINT, at whatever point the timer fires."""
    net = cbn.Network([4, 16, 3], seed=0)
    X, y = data(n=64)
    after = []
    original = net._step

    def step(Xb, tb):
        loss = original(Xb, tb)
        after.append(state(net))
        return loss

    net._step = step
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            net.fit(X, y, epochs=100_000, batch_size=8)
    finally:
        timer.cancel()
    assert net.optimizer.t == len(after) >= 1
    assert_state(net, after[-1])
    # 8 steps per epoch; the epoch of the interrupted step is not recorded
    assert net.history.epochs == (len(after) - 1) // 8


# ----------------------------------------------------------------------------- atomic save

@pytest.fixture
def saved(tmp_path):
    net = cbn.Network([4, 8, 3], seed=0)
    net.fit(*data(), epochs=1)
    path = tmp_path / "model.safetensors"
    net.save(path)
    return net, path, path.read_bytes()


def fail_half_way(f, *args, **kwargs):
    f.write(b"H\x00\x00\x00\x00\x00\x00\x00{ half a file")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("target, replacement", [
    ("write", fail_half_way),
    ("fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "Input/output error"))),
    ("replace", lambda src, dst: (_ for _ in ()).throw(OSError(13, "Permission denied"))),
    ("write", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())),
])
def test_a_failed_save_leaves_the_previous_file_and_no_temporary(saved, monkeypatch, target,
                                                                  replacement):
    net, path, previous = saved
    net.fit(*data(seed=1), epochs=1)  # the network now differs from the file
    module = _model_file if target == "write" else os
    monkeypatch.setattr(module, target, replacement)
    with pytest.raises((OSError, KeyboardInterrupt)):
        net.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == previous
    assert os.listdir(path.parent) == [path.name]
    assert isinstance(cbn.Network.load(path), cbn.Network)


def test_save_then_load_round_trip(saved):
    net, path, _ = saved
    loaded = cbn.Network.load(path)
    assert_state(loaded, state(net))


# ----------------------------------------------------------------------------- damaged files
# Format 2 (safetensors): hand-edited files, written again with a valid checksum where the
# edit should be caught by a later check.

def read_contents(path):
    """Tensors (writable copies), metadata and parsed configuration of a format-2 file."""
    tensors, metadata = _model_file.read(path.read_bytes())
    config = json.loads(metadata.pop("config"))
    return {k: v.copy() for k, v in tensors.items()}, metadata, config


def write_contents(path, tensors, metadata, config, *, checksum=True):
    metadata = dict(metadata)
    metadata.setdefault("config", json.dumps(config))  # unless the edit replaced its text
    with open(path, "wb") as f:
        _model_file.write(f, tensors, metadata, checksum=checksum)


def edit_meta(key, value):
    def edit(tensors, metadata, config):
        metadata[key] = value
    return edit


def edit_config(key, value):
    def edit(tensors, metadata, config):
        config[key] = value
    return edit


def edit_tensor(name, change):
    def edit(tensors, metadata, config):
        tensors[name] = change(tensors[name])
    return edit


def nan_at(a, index=3):
    a = a.copy()
    a.flat[index] = np.nan
    return a


def as_float64(tensors, metadata, config):
    for name in tensors:
        tensors[name] = tensors[name].astype(np.float64)


def reorder(tensors, metadata, config):
    first = next(iter(tensors))
    tensors[first] = tensors.pop(first)


HAND_EDITS = {  # name: (edit, recompute checksum, expected message)
    "wrong version": (edit_meta("format_version", "3"), True, "format version 2, got '3'"),
    "version 1 inside safetensors": (edit_meta("format_version", "1"), True, "format version"),
    "not a cbn file": (edit_meta("format", "keras"), True, "expected a cbn.Network"),
    "weights edited": (edit_tensor("0.W", lambda a: a * 2), False, "checksum mismatch"),
    "config edited": (edit_config("bn_eps", 0.5), False, "checksum mismatch"),
    "flat key edited": (edit_meta("activation", "tanh"), False, "checksum mismatch"),
    "wrong shape": (edit_tensor("0.W", lambda a: a[:-1]), True, "array '0.W'"),
    "wrong dtype": (as_float64, True, "array '0.W': expected float32"),
    "missing tensor": (lambda t, m, c: t.pop("0.running_var"), True, "missing ['0.running_var']"),
    "extra tensor": (lambda t, m, c: t.update(extra=np.zeros(3, np.float32)), True,
                     "unexpected ['extra']"),
    "tensors reordered": (reorder, True, "not stored in the order"),
    "NaN weight": (edit_tensor("1.W", nan_at), True, "NaN or infinity"),
    "infinite running mean": (edit_tensor("0.running_mean", lambda a: a + np.inf), True,
                              "NaN or infinity"),
    "NaN optimizer state": (edit_tensor("optimizer.v.1.W", nan_at), True, "NaN or infinity"),
    "negative running variance": (edit_tensor("0.running_var", lambda a: -a), True,
                                  "negative variances"),
    "flat key disagrees": (edit_meta("activation", "tanh"), True, "metadata 'activation'"),
    "flat eps disagrees": (edit_meta("bn_eps", (2e-5).hex()), True, "metadata 'bn_eps'"),
    "flat sizes disagree": (edit_meta("layer_sizes", "4,8,4"), True, "metadata 'layer_sizes'"),
    "flat key missing": (lambda t, m, c: m.pop("output"), True, "lacks ['output']"),
    "bad layer sizes": (edit_config("layer_sizes", [4, -8, 3]), True, "layer_sizes"),
    "huge layer sizes": (edit_config("layer_sizes", [10**6, 10**6, 3]), True,
                         "more parameters than the file holds"),
    "bad hyper-parameter": (edit_config("bn_momentum", "0.1"), True, "bn_momentum"),
    "bad optimizer": (edit_config("optimizer", {"name": "os.system", "config": {}, "t": 0}),
                      True, "unknown optimizer"),
    "optimizer without its state": (
        edit_config("optimizer", {"name": "sgd", "config": {}, "t": 0}), True, "unexpected"),
    "negative step count": (edit_config("optimizer", {"name": "adam", "config": {}, "t": -1}),
                            True, "step count"),
    "config not a dict": (lambda t, m, c: m.update(config="[]"), True, "not a JSON object"),
}


@pytest.mark.parametrize("edit, checksum, message", HAND_EDITS.values(), ids=list(HAND_EDITS))
def test_load_rejects_hand_edited_files(saved, tmp_path, edit, checksum, message):
    _, path, _ = saved
    tensors, metadata, config = read_contents(path)
    edit(tensors, metadata, config)
    edited = tmp_path / "edited.safetensors"
    if checksum:
        write_contents(edited, tensors, metadata, config)
    else:  # the edited file, with the checksum of the original
        digest = _model_file.read(path.read_bytes(), checksum=False)[1]["checksum"]
        with open(edited, "wb") as f:
            _model_file.write(f, tensors, dict(metadata, config=json.dumps(config),
                                               checksum=digest), checksum=False)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        cbn.Network.load(edited)
    assert str(info.value).startswith("path: ")


def test_load_rejects_every_truncation_and_every_flipped_bit(saved, tmp_path):
    """The checksum covers every byte, so no damage goes unnoticed."""
    _, path, blob = saved
    damaged = tmp_path / "damaged.safetensors"
    for n in range(len(blob)):
        with pytest.raises(ValueError):
            _model_file.network_from_bytes(cbn.Network, blob[:n])
    for n in range(0, len(blob), 97):  # through Network.load too, which names the path
        damaged.write_bytes(blob[:n])
        with pytest.raises(ValueError, match="^path: "):
            cbn.Network.load(damaged)
    rng = np.random.default_rng(0)
    for i in range(len(blob)):
        corrupted = bytearray(blob)
        corrupted[i] ^= 1 << int(rng.integers(8))
        with pytest.raises(ValueError):
            _model_file.network_from_bytes(cbn.Network, bytes(corrupted))
    with pytest.raises(ValueError, match="8 bytes follow the last tensor"):
        _model_file.network_from_bytes(cbn.Network, blob + b"\0" * 8)


# Format 1 (the .npz archives cbn 0.1 wrote): still read, with all of its checks.

def write_format1(path, config, arrays, *, checksum=True):
    """A format-1 file as cbn 0.1's Network.save wrote it (np.savez of the JSON
    configuration with its checksum, and the flat arrays)."""
    config = dict(config)
    if checksum:
        config.pop("checksum", None)
        config["checksum"] = _model_file.format1_checksum(config, arrays)
    with open(path, "wb") as f:
        np.savez(f, config=np.array(json.dumps(config)), **arrays)


@pytest.fixture
def saved_format1(tmp_path):
    net = cbn.Network([4, 8, 3], seed=0)
    net.fit(*data(), epochs=1)
    path = tmp_path / "model.npz"
    write_format1(path, {"format": "cbn.Network", "format_version": 1, **net._config()},
                  net._arrays())
    return net, path, path.read_bytes()


def read_format1(path):
    with np.load(path, allow_pickle=False) as f:
        arrays = {name: f[name] for name in f.files}
    return json.loads(str(arrays.pop("config"))), arrays


def edit1_config(key, value):
    def edit(config, arrays):
        config[key] = value
    return edit


def edit1_array(name, change):
    def edit(config, arrays):
        arrays[name] = change(arrays[name])
    return edit


HAND_EDITS_FORMAT1 = {  # name: (edit, recompute checksum, expected message)
    "wrong version": (edit1_config("format_version", 99), True, "format version"),
    "not a cbn file": (edit1_config("format", "keras"), True, "expected a cbn.Network"),
    "weights edited": (edit1_array("params", lambda a: a * 2), False, "checksum mismatch"),
    "config edited": (edit1_config("bn_eps", 0.5), False, "checksum mismatch"),
    "checksum edited": (edit1_config("checksum", "0" * 64), False, "checksum mismatch"),
    "wrong shape": (edit1_array("params", lambda a: a[:-1]), True, "array 'params'"),
    "wrong dtype": (edit1_array("params", lambda a: a.astype(np.float64)), True, "array 'params'"),
    "missing array": (lambda c, a: a.pop("running"), True, "expected arrays"),
    "extra array": (lambda c, a: a.update(extra=np.zeros(3)), True, "expected arrays"),
    "NaN weight": (edit1_array("params", nan_at), True, "NaN or infinity"),
    "bad layer sizes": (edit1_config("layer_sizes", [4, -8, 3]), True, "layer_sizes"),
    "huge layer sizes": (edit1_config("layer_sizes", [10**6, 10**6, 3]), True,
                         "more parameters than the file holds"),
    "bad hyper-parameter": (edit1_config("bn_momentum", "0.1"), True, "bn_momentum"),
    "bad optimizer": (edit1_config("optimizer", {"name": "os.system", "config": {}, "t": 0}),
                      True, "unknown optimizer"),
    "negative step count": (edit1_config("optimizer", {"name": "adam", "config": {}, "t": -1}),
                            True, "step count"),
    "config not a dict": (lambda c, a: c.clear(), True, "expected a cbn.Network"),
}


def test_format1_files_still_load(saved_format1):
    net, path, _ = saved_format1
    assert_state(cbn.Network.load(path), state(net))


@pytest.mark.parametrize("edit, checksum, message", HAND_EDITS_FORMAT1.values(),
                         ids=list(HAND_EDITS_FORMAT1))
def test_load_rejects_hand_edited_format1_files(saved_format1, tmp_path, edit, checksum,
                                                message):
    _, path, _ = saved_format1
    config, arrays = read_format1(path)
    edit(config, arrays)
    edited = tmp_path / "edited.npz"
    write_format1(edited, config, arrays, checksum=checksum)
    with pytest.raises(ValueError, match=message) as info:
        cbn.Network.load(edited)
    assert str(info.value).startswith("path: ")


def test_load_rejects_truncated_and_corrupted_format1_files(saved_format1, tmp_path):
    _, path, blob = saved_format1
    damaged = tmp_path / "damaged.npz"
    cuts = list(range(0, len(blob), max(1, len(blob) // 50)))
    for n in cuts:
        damaged.write_bytes(blob[:n])
        with pytest.raises(ValueError, match="^path: "):
            cbn.Network.load(damaged)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(blob), 50, replace=False):
        corrupted = bytearray(blob)
        corrupted[i] ^= 0xFF
        damaged.write_bytes(bytes(corrupted))
        try:
            cbn.Network.load(damaged)  # a byte of zip metadata that nothing reads may change
        except ValueError as exc:
            assert str(exc).startswith("path: ")


class Exploit:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_never_unpickles(saved_format1, tmp_path):
    _, path, _ = saved_format1
    marker = tmp_path / "code-ran"
    config, arrays = read_format1(path)
    # an object array in a format-1 archive: numpy would unpickle it if allowed
    evil = tmp_path / "evil.npz"
    arrays["params"] = np.array([Exploit(str(marker))], dtype=object)
    with open(evil, "wb") as f:
        np.savez(f, config=np.array(json.dumps(config)), **arrays)
    # and a plain pickle under a model's name, and one after a safetensors-like prefix
    pickled = tmp_path / "pickled.safetensors"
    pickled.write_bytes(pickle.dumps(Exploit(str(marker))))
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(b"\x10\0\0\0\0\0\0\0{" + pickle.dumps(Exploit(str(marker))))
    for bad in (evil, pickled, disguised):
        with pytest.raises(ValueError, match="^path: "):
            cbn.Network.load(bad)
    assert not marker.exists()


def test_load_of_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        cbn.Network.load(tmp_path / "nothing.safetensors")
