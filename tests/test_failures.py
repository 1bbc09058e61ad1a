"""Failures lose nothing: divergence, Ctrl-C during fit, a save that fails half-way, damaged
or hand-edited model files."""
import json
import os
import pickle
import signal
import threading

import numpy as np
import pytest

import cbn
from cbn import network as network_module

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
    net.save(tmp_path / "net.npz")
    assert_state(cbn.Network.load(tmp_path / "net.npz"), before)


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
    with pytest.raises(FloatingPointError):
        net.fit(X, y, epochs=20, batch_size=8)
    assert_state(net, snapshots[-1])
    steps_per_epoch = 4
    assert net.history.epochs == (len(snapshots) - 1) // steps_per_epoch
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


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
    after = run_fit_with_sigint(net, X, y, when, epochs=5, batch_size=8)
    assert net.optimizer.t == when == len(after)
    assert_state(net, after[-1])
    assert net.history.epochs == (when - 1) // 4  # 4 steps per epoch: completed epochs only
    assert all(len(values) == net.history.epochs for values in net.history.values())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
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
    path = tmp_path / "model.npz"
    net.save(path)
    return net, path, path.read_bytes()


def fail_half_way(f, *args, **kwargs):
    f.write(b"PK\x03\x04 half a file")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("target, replacement", [
    ("savez", fail_half_way),
    ("fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "Input/output error"))),
    ("replace", lambda src, dst: (_ for _ in ()).throw(OSError(13, "Permission denied"))),
    ("savez", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())),
])
def test_a_failed_save_leaves_the_previous_file_and_no_temporary(saved, monkeypatch, target,
                                                                  replacement):
    net, path, previous = saved
    net.fit(*data(seed=1), epochs=1)  # the network now differs from the file
    module = np if target == "savez" else os
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

def read_arrays(blob_path):
    with np.load(blob_path, allow_pickle=False) as f:
        arrays = {name: f[name] for name in f.files}
    return json.loads(str(arrays.pop("config"))), arrays


def write(path, config, arrays, *, checksum=True):
    """Write a hand-edited model file, with a valid checksum unless told otherwise."""
    config = dict(config)
    if checksum:
        config.pop("checksum", None)
        config["checksum"] = network_module._checksum(config, arrays)
    with open(path, "wb") as f:
        np.savez(f, config=np.array(json.dumps(config)), **arrays)


def edit_config(key, value):
    def edit(config, arrays):
        config[key] = value
    return edit


def edit_array(name, change):
    def edit(config, arrays):
        arrays[name] = change(arrays[name])
    return edit


def nan_weight(a):
    a = a.copy()
    a[3] = np.nan
    return a


HAND_EDITS = {  # name: (edit, recompute checksum, expected message)
    "wrong version": (edit_config("format_version", 99), True, "format version"),
    "not a cbn file": (edit_config("format", "keras"), True, "expected a cbn.Network"),
    "weights edited": (edit_array("params", lambda a: a * 2), False, "checksum mismatch"),
    "config edited": (edit_config("bn_eps", 0.5), False, "checksum mismatch"),
    "checksum edited": (edit_config("checksum", "0" * 64), False, "checksum mismatch"),
    "wrong shape": (edit_array("params", lambda a: a[:-1]), True, "array 'params'"),
    "wrong dtype": (edit_array("params", lambda a: a.astype(np.float64)), True, "array 'params'"),
    "missing array": (lambda c, a: a.pop("running"), True, "expected arrays"),
    "extra array": (lambda c, a: a.update(extra=np.zeros(3)), True, "expected arrays"),
    "NaN weight": (edit_array("params", nan_weight), True, "NaN or infinity"),
    "bad layer sizes": (edit_config("layer_sizes", [4, -8, 3]), True, "layer_sizes"),
    "huge layer sizes": (edit_config("layer_sizes", [10**6, 10**6, 3]), True,
                         "more parameters than the file holds"),
    "bad hyper-parameter": (edit_config("bn_momentum", "0.1"), True, "bn_momentum"),
    "bad optimizer": (edit_config("optimizer", {"name": "os.system", "config": {}, "t": 0}),
                      True, "unknown optimizer"),
    "negative step count": (edit_config("optimizer", {"name": "adam", "config": {}, "t": -1}),
                            True, "step count"),
    "config not a dict": (lambda c, a: c.clear(), True, "expected a cbn.Network"),
}


@pytest.mark.parametrize("edit, checksum, message", HAND_EDITS.values(), ids=list(HAND_EDITS))
def test_load_rejects_hand_edited_files(saved, tmp_path, edit, checksum, message):
    _, path, _ = saved
    config, arrays = read_arrays(path)
    edit(config, arrays)
    edited = tmp_path / "edited.npz"
    write(edited, config, arrays, checksum=checksum)
    with pytest.raises(ValueError, match=message) as info:
        cbn.Network.load(edited)
    assert str(info.value).startswith("path: ")


def test_load_rejects_truncated_and_corrupted_files(saved, tmp_path):
    _, path, blob = saved
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


def test_load_never_unpickles(saved, tmp_path):
    _, path, _ = saved
    marker = tmp_path / "code-ran"
    config, arrays = read_arrays(path)
    # an object array in the archive: numpy would unpickle it if allowed
    evil = tmp_path / "evil.npz"
    arrays["params"] = np.array([Exploit(str(marker))], dtype=object)
    with open(evil, "wb") as f:
        np.savez(f, config=np.array(json.dumps(config)), **arrays)
    # and a plain pickle under a model's name
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps(Exploit(str(marker))))
    for bad in (evil, pickled):
        with pytest.raises(ValueError, match="^path: "):
            cbn.Network.load(bad)
    assert not marker.exists()


def test_load_of_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        cbn.Network.load(tmp_path / "nothing.npz")
