"""fit(checkpoint=...): resume bit for bit after a crash, SIGTERM or SIGKILL; refuse the rest.

The kill tests run training in a child interpreter and kill it at seeded random moments
(with SIGKILL, and with SIGTERM, which fit turns into a saved state and TrainingInterrupted),
restart it until it finishes, and compare the result with an uninterrupted child run: every
array, the step count, the generator state and the history (but 'time') must be equal.
"""
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import cbn


def data(n=90, n_x=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_x)), rng.integers(0, 3, n)


def make(**kwargs):
    return cbn.Network([5, 8, 3], seed=1, **kwargs)


def fit_kwargs():
    X, y = data()
    return dict(epochs=5, batch_size=16, validation_data=(X[:30] + 0.5, y[:30]),
                lr_schedule=cbn.ExponentialDecay(1e-2, 0.9),
                callbacks=[cbn.EarlyStopping("loss", patience=2)])


def state(net):
    """Everything a finished fit leaves that the rest of a program could depend on."""
    history = {k: v for k, v in (net.history or {}).items() if k != "time"}
    return {"params": net._params.copy(), "running": net._running.copy(),
            **{f"opt.{k}": v.copy() for k, v in net.optimizer.state.items()},
            "t": net.optimizer.t, "lr": net.optimizer.lr,
            "rng": json.dumps(net._rng.bit_generator.state), "history": json.dumps(history)}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


class Crash(Exception):
    pass


def crash_at(net, step):
    """Make the net's step number `step` (counted over its life, from 1) raise Crash."""
    original = net._step

    def failing(Xb, tb):
        if net.optimizer.t + 1 == step:
            raise Crash
        return original(Xb, tb)
    net._step = failing


# ----------------------------------------------------------------------------- in-process

@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("crash", [1, 5, 6, 12, 17, 25])
def test_resume_after_a_crash_equals_the_uninterrupted_run(tmp_path, shuffle, crash):
    X, y = data()
    reference = make()
    reference.fit(X, y, shuffle=shuffle, **fit_kwargs())
    path = tmp_path / "run.ckpt"
    net = make()
    crash_at(net, crash)
    with pytest.raises(Crash):
        net.fit(X, y, shuffle=shuffle, checkpoint=path, checkpoint_every=4, **fit_kwargs())
    resumed = make()
    history = resumed.fit(X, y, shuffle=shuffle, checkpoint=path, checkpoint_every=4,
                          **fit_kwargs())
    assert history is resumed.history
    assert_same(state(resumed), state(reference))
    assert len(history["time"]) == history.epochs


@pytest.mark.parametrize("options", [
    dict(optimizer="sgd"), dict(optimizer="momentum", dtype="float64"),
    dict(optimizer="rmsprop", batchnorm=False), dict(output="sigmoid"), dict(output="linear"),
])
def test_resume_for_every_optimizer_and_output(tmp_path, options):
    X, y = data()
    if options.get("output") in ("sigmoid", "linear"):
        y = (np.random.default_rng(2).random((90, 3)) > 0.5).astype(float)
    kwargs = dict(epochs=3, batch_size=8, weight_decay=1e-3)
    reference = make(**options)
    reference.fit(X, y, **kwargs)
    net = make(**options)
    crash_at(net, 16)
    with pytest.raises(Crash):
        net.fit(X, y, checkpoint=tmp_path / "c", checkpoint_every=3, **kwargs)
    resumed = make(**options)
    resumed.fit(X, y, checkpoint=tmp_path / "c", checkpoint_every=3, **kwargs)
    assert_same(state(resumed), state(reference))


def test_early_stopping_state_is_restored(tmp_path):
    """EarlyStopping's best value, wait and best weights survive a resume."""
    X, y = data()
    kwargs = dict(epochs=40, batch_size=30, validation_data=(X[:30] + 2.0, y[:30][::-1]))

    def run():
        stopper = cbn.EarlyStopping("val_loss", patience=3)
        return cbn.Network([5, 8, 3], optimizer=cbn.Adam(lr=0.05), seed=1), stopper

    reference, stopper = run()
    reference.fit(X, y, callbacks=[stopper], **kwargs)
    assert stopper.stopped_epoch is not None and stopper.best_epoch < stopper.stopped_epoch
    for crash in (stopper.best_epoch * 3 + 2, stopper.stopped_epoch * 3 - 1):
        path = tmp_path / f"c{crash}"
        net, first = run()
        crash_at(net, crash)
        with pytest.raises(Crash):
            net.fit(X, y, callbacks=[first], checkpoint=path, **kwargs)
        resumed, second = run()
        resumed.fit(X, y, callbacks=[second], checkpoint=path, **kwargs)
        assert_same(state(resumed), state(reference))
        assert (second.best, second.best_epoch, second.stopped_epoch) == \
            (stopper.best, stopper.best_epoch, stopper.stopped_epoch)


def test_a_finished_checkpoint_returns_its_history_at_once(tmp_path):
    X, y = data()
    path = tmp_path / "c"
    first, first_kwargs = make(), fit_kwargs()
    first.fit(X, y, checkpoint=path, **first_kwargs)
    calls = []
    again, kwargs = make(), fit_kwargs()
    again._step = lambda *a: calls.append(a)
    history = again.fit(X, y, checkpoint=path, **kwargs)
    assert calls == []
    assert_same(state(again), state(first))
    assert history["time"] == first.history["time"]
    stopper, restored = first_kwargs["callbacks"][0], kwargs["callbacks"][0]
    assert (restored.best, restored.best_epoch, restored.stopped_epoch) == \
        (stopper.best, stopper.best_epoch, stopper.stopped_epoch)


def sigterm_at(net, step):
    """Send SIGTERM to this process while the net's step number `step` runs."""
    original = net._step

    def step_with_signal(Xb, tb):
        if net.optimizer.t + 1 == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(Xb, tb)
    net._step = step_with_signal


@pytest.mark.parametrize("when", [1, 6, 30])
def test_sigterm_saves_at_the_step_boundary_and_resumes(tmp_path, when):
    X, y = data()
    reference = make()
    reference.fit(X, y, **fit_kwargs())
    path = tmp_path / "c"
    net = make()
    sigterm_at(net, when)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(cbn.TrainingInterrupted) as info:
        net.fit(X, y, checkpoint=path, **fit_kwargs())
    assert signal.getsignal(signal.SIGTERM) is before
    assert isinstance(info.value, KeyboardInterrupt)
    assert net.optimizer.t == when  # the step in progress completed, no further one ran
    steps = 6  # per epoch: 90 rows in batches of 16
    assert (info.value.epoch, info.value.step) == ((when - 1) // steps + 1, (when - 1) % steps + 1)
    assert info.value.checkpoint == str(path) and str(path) in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.checkpoint, copy.epoch, copy.step, str(copy)) == \
        (info.value.checkpoint, info.value.epoch, info.value.step, str(info.value))
    resumed = make()
    resumed.fit(X, y, checkpoint=path, **fit_kwargs())
    assert_same(state(resumed), state(reference))


def test_without_a_checkpoint_fit_leaves_sigterm_alone(tmp_path):
    seen = []
    make().fit(*data(), epochs=1, callbacks=[lambda *a: seen.append(signal.getsignal(signal.SIGTERM))])
    assert seen == [signal.SIG_DFL]
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:  # a process that ignores SIGTERM keeps ignoring it
        make().fit(*data(), epochs=1, checkpoint=tmp_path / "c",
                   callbacks=[lambda *a: seen.append(signal.getsignal(signal.SIGTERM))])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen[1] is signal.SIG_IGN


def test_ctrl_c_stops_as_before_and_writes_nothing(tmp_path):
    X, y = data()
    net = make()
    original = net._step

    def step(Xb, tb):
        if net.optimizer.t + 1 == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(Xb, tb)
    net._step = step
    with pytest.raises(KeyboardInterrupt) as info:
        net.fit(X, y, checkpoint=tmp_path / "c", checkpoint_every=100)
    assert not isinstance(info.value, cbn.TrainingInterrupted)
    assert net.optimizer.t == 3
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- refusals

@pytest.fixture
def written(tmp_path):
    """A mid-run checkpoint of make() on data() with fit_kwargs()."""
    path = tmp_path / "c"
    net = make()
    crash_at(net, 9)
    with pytest.raises(Crash):
        net.fit(*data(), checkpoint=path, checkpoint_every=2, **fit_kwargs())
    return path


def assert_refused(path, match, net=None, X=None, y=None, **changes):
    net = net if net is not None else make()
    X_default, y_default = data()
    kwargs = dict(fit_kwargs(), **changes)
    before = state(net)
    contents = path.read_bytes()
    with pytest.raises(ValueError, match=match) as info:
        net.fit(X if X is not None else X_default, y if y is not None else y_default,
                checkpoint=path, **kwargs)
    assert str(path) in str(info.value)
    assert_same(state(net), before)          # nothing changed ...
    assert path.read_bytes() == contents     # ... not even the file


@pytest.mark.parametrize("net, match", [
    (lambda: cbn.Network([5, 9, 3], seed=1), "layer_sizes is .5, 8, 3. in the checkpoint"),
    (lambda: cbn.Network([5, 8, 3], seed=1, activation="tanh"), "activation"),
    (lambda: cbn.Network([5, 8, 3], seed=1, dtype="float64"), "network.dtype"),
    (lambda: cbn.Network([5, 8, 3], seed=2), "network.seed is 1 in the checkpoint but 2"),
    (lambda: cbn.Network([5, 8, 3], seed=1, optimizer=cbn.Adam(lr=0.1)), "optimizer"),
])
def test_another_network_is_refused(written, net, match):
    assert_refused(written, match, net=net())


@pytest.mark.parametrize("changes, match", [
    (dict(batch_size=17), "fit.batch_size is 16 in the checkpoint but 17"),
    (dict(epochs=6), "fit.epochs is 5 in the checkpoint but 6"),
    (dict(shuffle=False), "fit.shuffle"),
    (dict(weight_decay=1e-4), "fit.weight_decay"),
    (dict(lr_schedule=None), "fit.lr_schedule"),
    (dict(lr_schedule=cbn.ExponentialDecay(1e-2, 0.8)), r"lr_schedule\(1\) gives"),
    (dict(callbacks=[]), "fit.callbacks"),
    (dict(validation_data=None), "validation"),
])
def test_other_fit_arguments_are_refused(written, changes, match):
    assert_refused(written, match, **changes)


def test_other_data_are_refused(written):
    X, y = data()
    assert_refused(written, "data.X_shape is .90, 5. in the checkpoint but .89, 5.",
                   X=X[:89], y=y[:89])
    assert_refused(written, "data.X_dtype is 'float64' in the checkpoint but 'float32'",
                   X=X.astype(np.float32))
    other = X.copy()
    other[40, 2] += 1e-6
    assert_refused(written, "data.sha256", X=other)
    assert_refused(written, "data.sha256", y=np.roll(y, 1))


def flip_byte(path, where):
    contents = bytearray(path.read_bytes())
    contents[where] ^= 0x01
    path.write_bytes(bytes(contents))


@pytest.mark.parametrize("damage", [
    lambda p: flip_byte(p, len(p.read_bytes()) // 2),
    lambda p: flip_byte(p, -100),
    lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]),   # truncated
    lambda p: p.write_bytes(p.read_bytes()[:-1]),
    lambda p: p.write_bytes(b""),
    lambda p: p.write_bytes(b"not a checkpoint at all"),
])
def test_a_damaged_checkpoint_is_refused(written, damage):
    damage(written)
    assert_refused(written, "checkpoint: .* (damaged|truncated|checksum|not a)")


def test_a_model_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "model"
    make().save(path)
    assert_refused(path, "checkpoint:")


def test_checkpoint_arguments_are_checked(tmp_path):
    X, y = data()
    with pytest.raises(ValueError, match="checkpoint_every: needs a checkpoint"):
        make().fit(X, y, checkpoint_every=3)
    with pytest.raises(ValueError, match="checkpoint_every: expected an integer >= 1"):
        make().fit(X, y, checkpoint=tmp_path / "c", checkpoint_every=0)
    with pytest.raises(TypeError, match="checkpoint: expected a file name"):
        make().fit(X, y, checkpoint=3.5)
    with pytest.raises(ValueError, match="checkpoint: expected a file name, got the folder"):
        make().fit(X, y, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="checkpoint: the folder .* does not exist"):
        make().fit(X, y, checkpoint=tmp_path / "missing" / "c")


# ----------------------------------------------------------------------------- atomicity

@pytest.mark.parametrize("target, exception", [
    ("fsync", OSError(5, "Input/output error")),
    ("replace", OSError(13, "Permission denied")),
    ("fsync", KeyboardInterrupt()),
])
def test_a_failed_write_leaves_the_previous_checkpoint(written, monkeypatch, target, exception):
    previous = written.read_bytes()

    def fail(*args):
        raise exception
    monkeypatch.setattr(os, target, fail)
    with pytest.raises(type(exception)):
        make().fit(*data(), checkpoint=written, checkpoint_every=1, **fit_kwargs())
    monkeypatch.undo()
    assert written.read_bytes() == previous
    assert os.listdir(written.parent) == [written.name]


# ----------------------------------------------------------------------------- kills

CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import cbn

    path, result = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1200, 12))
    y = rng.integers(0, 4, 1200)
    net = cbn.Network([12, 64, 32, 4], seed=3)
    original = net._step

    def step(Xb, tb):  # tells the parent that training runs, and from which step
        if step.first:
            print("resumed-from", net.optimizer.t, flush=True)
            step.first = False
        return original(Xb, tb)
    step.first = True
    net._step = step
    kwargs = dict(epochs=6, batch_size=16, validation_data=(X[:40], y[:40]),
                  lr_schedule=cbn.InverseTimeDecay(3e-3, 0.5),
                  callbacks=[cbn.EarlyStopping("val_loss", patience=4)])
    if path != "-":
        kwargs.update(checkpoint=path, checkpoint_every=int(sys.argv[3]))
    try:
        net.fit(X, y, **kwargs)
    except cbn.TrainingInterrupted:
        sys.exit(75)   # EX_TEMPFAIL: run me again
    history = {k: v for k, v in net.history.items() if k != "time"}
    np.savez(result, params=net._params, running=net._running, t=net.optimizer.t,
             lr=net.optimizer.lr, rng=json.dumps(net._rng.bit_generator.state),
             history=json.dumps(history),
             **{"opt." + k: v for k, v in net.optimizer.state.items()})
""")


def child_env():
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def read_result(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def run_with_kills(tmp_path, sig, seed, kills, every, max_delay=0.3):
    """Run the child, killing it `kills` times at seeded random moments after its training
    began (up to max_delay seconds), restarting until it completes.

    Returns (result, the step each run began at, the exit codes)."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ckpt, result = tmp_path / "run.ckpt", tmp_path / "result.npz"
    rand = random.Random(seed)
    starts, codes = [], []
    for attempt in range(kills + 1):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(ckpt), str(result), str(every)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        line = proc.stdout.readline()
        if line.startswith("resumed-from"):
            starts.append(int(line.split()[1]))
            if attempt < kills:
                time.sleep(rand.uniform(0.0, max_delay))
                proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        # SIGTERM in fit: state saved, TrainingInterrupted (75); after fit: the default action
        expected = {0, 75, -signal.SIGTERM} if sig == signal.SIGTERM else {0, -signal.SIGKILL}
        assert proc.returncode in (expected if attempt < kills else {0}), \
            (proc.returncode, line, out, err)
        codes.append(proc.returncode)
        if sig == signal.SIGTERM:  # saved at a step boundary, never half-written
            assert not (tmp_path / "run.ckpt.partial").exists()
        if proc.returncode == 0:
            break
    return read_result(result), starts, codes


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The child's result without kills, and how long its training took with checkpoints."""
    folder = tmp_path_factory.mktemp("reference")
    script = folder / "child.py"
    script.write_text(CHILD)
    subprocess.run([sys.executable, str(script), "-", str(folder / "r.npz")], check=True,
                   env=child_env(), stdout=subprocess.DEVNULL)
    proc = subprocess.Popen([sys.executable, str(script), str(folder / "c"),
                             str(folder / "r2.npz"), "5"], stdout=subprocess.PIPE, text=True,
                            env=child_env())
    proc.stdout.readline()
    start = time.monotonic()
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    return read_result(folder / "r.npz"), time.monotonic() - start


@pytest.mark.parametrize("sig, seed", [(signal.SIGKILL, 0), (signal.SIGKILL, 1),
                                       (signal.SIGTERM, 2), (signal.SIGTERM, 3)])
def test_killed_training_resumes_bit_for_bit(tmp_path, uninterrupted, sig, seed):
    reference, duration = uninterrupted
    # kill points spread over the training, whatever the machine's speed; when the load
    # changes and every run ends before its signal, try again with shorter delays
    for attempt in range(4):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        result, starts, codes = run_with_kills(folder, sig, seed + 10 * attempt, kills=4,
                                               every=5, max_delay=0.5 * duration / 2**attempt)
        assert_same(result, reference)
        if any(t > 0 for t in starts[1:]):
            break
    assert starts[0] == 0
    assert any(t > 0 for t in starts[1:]), starts  # at least one run really resumed
    if sig == signal.SIGTERM:  # and one stopped through TrainingInterrupted
        assert 75 in codes, codes


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux's /proc")
def test_a_kill_during_the_write_leaves_the_previous_checkpoint(tmp_path, uninterrupted):
    """SIGKILL while a checkpoint is half written (the writer is slowed to make sure)."""
    ckpt = tmp_path / "run.ckpt"
    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        real = os.fsync
        def slow_fsync(fd):  # the data are in the temporary file; the rename is still to come
            if os.path.exists(sys.argv[1]) and \
                    os.readlink(f"/proc/self/fd/{fd}").endswith(".partial"):
                print("writing", flush=True)
                time.sleep(30)
            real(fd)
        os.fsync = slow_fsync
    """) + CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt), str(tmp_path / "r.npz"),
                             "7"], stdout=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout.readline().startswith("resumed-from 0")
    assert proc.stdout.readline() == "writing\n"   # the second write is under way
    previous = ckpt.read_bytes()
    proc.kill()
    proc.communicate(timeout=30)
    assert ckpt.read_bytes() == previous
    assert (tmp_path / "run.ckpt.partial").exists()   # the half-written one
    result, starts, _ = run_with_kills(tmp_path, signal.SIGKILL, 0, kills=0, every=7)
    assert starts == [7]
    assert_same(result, uninterrupted[0])


def test_a_crash_in_on_train_end_resumes_to_the_same_end(tmp_path):
    """Training ended but the final write did not happen: the resumed fit ends it again."""
    X, y = data()
    reference = make()
    reference.fit(X, y, **fit_kwargs())

    class FailingEnd:
        def __call__(self, net, epoch, history):
            return False

        def on_train_end(self, net, history):
            raise Crash

    net, kwargs = make(), fit_kwargs()
    with pytest.raises(Crash):
        net.fit(X, y, checkpoint=tmp_path / "c",
                **dict(kwargs, callbacks=kwargs["callbacks"] + [FailingEnd()]))
    resumed, kwargs = make(), fit_kwargs()
    resumed.fit(X, y, checkpoint=tmp_path / "c",
                **dict(kwargs, callbacks=kwargs["callbacks"] + [lambda *a: False]))
    assert_same(state(resumed), state(reference))


def test_sigterm_during_the_final_write_is_delivered_after_it(tmp_path, monkeypatch):
    from cbn import _checkpoint
    X, y = data()
    real_write, received = _checkpoint._write, []

    def write(path, contents, tensors):
        if contents["state"]["finished"]:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the final write runs
        real_write(path, contents, tensors)
    monkeypatch.setattr(_checkpoint, "_write", write)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        net = make()
        net.fit(X, y, checkpoint=tmp_path / "c", **fit_kwargs())
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [signal.SIGTERM]         # delivered to the handler in place before fit
    again = make()
    again.fit(X, y, checkpoint=tmp_path / "c", **fit_kwargs())   # the file is complete
    assert_same(state(again), state(net))
