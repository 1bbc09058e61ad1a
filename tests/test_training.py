"""fit's epoch-level features: schedules, weight decay, callbacks, early stopping, progress,
History and its plot, and copying a network."""
import copy
import io
import pickle

import numpy as np
import pytest

import cbn
from cbn import _progress


def blobs(rng, m=120, n_x=4, k=3, shift=0.0):
    X = rng.standard_normal((m, n_x)) + shift
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    return X, y


def twin_networks(**kw):
    args = dict(activation="tanh", output="softmax", dtype="float64", seed=3)
    args.update(kw)
    return (cbn.Network([4, 8, 6, 3], optimizer=cbn.SGD(lr=0.1), **args),
            cbn.Network([4, 8, 6, 3], optimizer=cbn.SGD(lr=0.1), **args))


# ---------------------------------------------------------------- learning-rate schedules

@pytest.mark.parametrize("schedule, formula", [
    (cbn.InverseTimeDecay(0.1, 0.5), lambda e: 0.1 / (1 + 0.5 * e)),
    (cbn.InverseTimeDecay(0.1, 1.0, every=2), lambda e: 0.1 / (1 + 1.0 * (e // 2))),
    (cbn.ExponentialDecay(0.1, 0.95), lambda e: 0.1 * 0.95 ** e),
    (cbn.StepDecay(0.1, 0.5, every=2), lambda e: 0.1 * 0.5 ** (e // 2)),
])
def test_schedule_sets_the_lr_of_every_epoch(rng, schedule, formula):
    X, y = blobs(rng)
    net, twin = twin_networks()
    history = net.fit(X, y, epochs=5, batch_size=len(X), shuffle=False, lr_schedule=schedule)
    expected = [formula(epoch) for epoch in range(5)]
    np.testing.assert_allclose(history["lr"], expected, rtol=1e-15)
    # the steps really used those rates: replay them by hand on a twin network
    for lr in expected:
        twin.optimizer.lr = lr
        twin.train_step(X, y)
    np.testing.assert_array_equal(net.parameters()["0.W"], twin.parameters()["0.W"])
    np.testing.assert_array_equal(net.parameters()["2.b"], twin.parameters()["2.b"])


def test_schedule_errors(rng):
    X, y = blobs(rng)
    net, _ = twin_networks()
    with pytest.raises(TypeError, match="lr_schedule"):
        net.fit(X, y, lr_schedule=0.1)
    with pytest.raises(ValueError, match=r"lr_schedule\(1\)"):
        net.fit(X, y, epochs=3, lr_schedule=lambda epoch: 0.1 if epoch == 0 else -1.0)
    with pytest.raises(ValueError, match="rate"):
        cbn.ExponentialDecay(0.1, 1.5)


# ---------------------------------------------------------------- weight decay

def test_weight_decay_adds_decay_times_W_to_dW_only(rng):
    X, y = blobs(rng)
    net, twin = twin_networks()
    before = {key: value.copy() for key, value in twin.parameters().items()}
    _, grads = twin.loss_and_gradients(X, y)
    net.fit(X, y, epochs=1, batch_size=len(X), shuffle=False, weight_decay=0.05)
    for key, value in net.parameters().items():
        decay = 0.05 * before[key] if key.endswith(".W") else 0.0
        np.testing.assert_allclose(value, before[key] - 0.1 * (grads[key] + decay),
                                   rtol=1e-12, atol=1e-15, err_msg=key)
    # the decay belongs to that fit only: a later step is plain SGD again
    _, grads = net.loss_and_gradients(X, y)
    W = net.layers[0].W.copy()
    net.train_step(X, y)
    np.testing.assert_allclose(net.layers[0].W, W - 0.1 * grads["0.W"], rtol=1e-12)


def test_weight_decay_must_be_non_negative(rng):
    X, y = blobs(rng)
    with pytest.raises(ValueError, match="weight_decay"):
        twin_networks()[0].fit(X, y, weight_decay=-1e-3)


# ---------------------------------------------------------------- callbacks, early stopping

class Recorder:
    def __init__(self, stop_at=None):
        self.calls, self.stop_at = [], stop_at

    def on_train_begin(self, net, history):
        self.calls.append(("begin", sorted(history)))

    def __call__(self, net, epoch, history):
        self.calls.append((epoch, history.epochs))
        return epoch == self.stop_at

    def on_train_end(self, net, history):
        self.calls.append(("end", history.epochs))


def test_callbacks_see_every_epoch_and_can_stop(rng):
    X, y = blobs(rng)
    net, _ = twin_networks()
    stopper, watcher = Recorder(stop_at=2), Recorder()
    history = net.fit(X, y, epochs=5, callbacks=[stopper, watcher])
    assert history.epochs == 2
    assert watcher.calls == [("begin", ["accuracy", "loss", "time"]), (1, 1), (2, 2), ("end", 2)]
    plain = []
    net.fit(X, y, epochs=3, callbacks=[lambda net, epoch, history: plain.append(epoch)])
    assert plain == [1, 2, 3]
    with pytest.raises(TypeError, match=r"callbacks\[0\]"):
        net.fit(X, y, callbacks=[42])


def test_early_stopping_stops_and_restores_the_best_epoch(rng):
    X, y = blobs(rng, m=200)
    X_val = X[:60]
    y_val = (y[:60] + 1) % 3  # labels the training data contradicts: validation loss rises
    net = cbn.Network([4, 16, 3], optimizer=cbn.Adam(lr=0.01), dtype="float64", seed=0)
    snapshots = []
    stopper = cbn.EarlyStopping("val_loss", patience=3)
    history = net.fit(X, y, epochs=50, validation_data=(X_val, y_val), callbacks=[
        lambda net, epoch, history: snapshots.append(net.parameters()["0.W"].copy()), stopper])
    best = int(np.argmin(history["val_loss"])) + 1
    assert stopper.best_epoch == best and stopper.best == min(history["val_loss"])
    assert stopper.stopped_epoch == history.epochs == best + 3
    np.testing.assert_array_equal(net.parameters()["0.W"], snapshots[best - 1])
    assert net.evaluate(X_val, y_val)["loss"] == pytest.approx(history["val_loss"][best - 1],
                                                               rel=1e-12)


def test_early_stopping_on_training_loss_without_restore(rng):
    X, y = blobs(rng)
    net, _ = twin_networks()
    stopper = cbn.EarlyStopping("loss", patience=2, min_delta=10.0, restore_best_weights=False)
    history = net.fit(X, y, epochs=20, callbacks=[stopper])
    # no epoch improves the loss by 10, so training stops after the first + patience epochs
    assert history.epochs == 3 and stopper.best_epoch == 1 and stopper.stopped_epoch == 3
    with pytest.raises(ValueError, match="validation_data"):
        net.fit(X, y, callbacks=[cbn.EarlyStopping("val_loss")])


# ---------------------------------------------------------------- History and progress

def test_history_records_every_epoch(rng):
    X, y = blobs(rng)
    net, _ = twin_networks()
    history = net.fit(X, y, epochs=4, validation_data=(X[:30], y[:30]))
    assert history is net.history and history.epochs == 4
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy", "time"}
    assert all(len(values) == 4 for values in history.values())
    assert history["val_loss"][-1] == pytest.approx(net.evaluate(X[:30], y[:30])["loss"])
    assert all(t > 0 for t in history["time"])
    regression = cbn.Network([4, 5, 1], output="linear", seed=0).fit(X, X[:, 0], epochs=2)
    assert set(regression) == {"loss", "time"}


def test_verbose_2_prints_one_line_per_epoch(rng, capsys):
    X, y = blobs(rng)
    twin_networks()[0].fit(X, y, epochs=3, validation_data=(X, y), verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("val_accuracy" in line for line in lines)


def test_verbose_1_without_tqdm_redraws_a_bar_on_a_terminal(rng, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(_progress, "_tqdm", lambda: None)
    monkeypatch.setattr(_progress, "REDRAW_SECONDS", 0.0)
    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    X, y = blobs(rng)
    twin_networks()[0].fit(X, y, epochs=2, batch_size=40, verbose=1)
    text = terminal.getvalue()
    assert "\repoch 1/2 [" in text and "3/3  loss" in text
    assert text.count("\n") == 2 and "accuracy" in text.splitlines()[-1]


def test_verbose_1_without_tqdm_prints_only_final_lines_to_a_file(rng, monkeypatch, capsys):
    monkeypatch.setattr(_progress, "_tqdm", lambda: None)
    X, y = blobs(rng)
    twin_networks()[0].fit(X, y, epochs=2, verbose=1)
    out = capsys.readouterr().out
    assert "\r" not in out and len(out.splitlines()) == 2


def test_verbose_1_with_tqdm(rng, capsys):
    pytest.importorskip("tqdm")
    X, y = blobs(rng)
    twin_networks()[0].fit(X, y, epochs=2, batch_size=40, verbose=1)
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "3/3" in out and "accuracy" in out


def test_plot_writes_a_png(rng, tmp_path):
    pytest.importorskip("matplotlib")
    X, y = blobs(rng)
    net, twin = twin_networks()
    first = net.fit(X, y, epochs=3, validation_data=(X, y))
    figure = first.plot(tmp_path / "curves.png", title="blobs")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(figure.axes) == 2  # loss and accuracy
    second = twin.fit(X, y, epochs=3)
    figure = cbn.plot_history({"a": first, "b": second}, tmp_path / "both.png")
    assert len(figure.axes[0].lines) == 3 and (tmp_path / "both.png").stat().st_size > 0
    regression = cbn.Network([4, 3, 1], output="linear", seed=0).fit(X, X[:, 1], epochs=2)
    assert len(regression.plot().axes) == 1  # no accuracy panel
    with pytest.raises(TypeError, match="History"):
        cbn.plot_history({"a": {"loss": [1.0]}})


# ---------------------------------------------------------------- copies and metadata

def test_pickle_and_deepcopy_keep_the_whole_state(rng, tmp_path):
    X, y = blobs(rng)
    net = cbn.Network([4, 8, 3], optimizer="momentum", seed=1)
    net.fit(X, y, epochs=2)
    net.metadata = {"features": ["a", "b", "c", "d"]}
    for make_copy in (lambda: pickle.loads(pickle.dumps(net)), lambda: copy.deepcopy(net)):
        other = make_copy()
        assert other is not net and other.metadata == net.metadata
        np.testing.assert_array_equal(other.predict_proba(X), net.predict_proba(X))
        # both continue training identically, and independently of each other
        assert other.train_step(X, y) == net.train_step(X, y)
        np.testing.assert_array_equal(other.parameters()["1.W"], net.parameters()["1.W"])
        assert other.layers[0].W.base is not net.layers[0].W.base
    net.save(tmp_path / "m.safetensors")
    assert cbn.Network.load(tmp_path / "m.safetensors").metadata == net.metadata
