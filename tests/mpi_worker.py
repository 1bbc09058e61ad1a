"""The checks of tests/test_mpi.py, run on every rank of one ``mpiexec -n P`` job.

Usage: mpiexec -n P python tests/mpi_worker.py MODE FOLDER. Every rank runs the same checks;
a failed assertion prints a traceback and aborts the job (non-zero exit). Rank 0 prints
"CHECK name" after each check that passed on every rank.
"""
import copy
import os
import pickle
import signal
import sys
import time
import traceback

import numpy as np
from mpi4py import MPI

import cbn
from cbn import _batches

sys.path.insert(0, os.path.dirname(__file__))
from _reference import batchnorm_forward  # noqa: E402

comm = MPI.COMM_WORLD
rank, P = comm.Get_rank(), comm.Get_size()
FOLDER = sys.argv[2] if len(sys.argv) > 2 else "."
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "linear")
OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam")


def passed(name):
    comm.Barrier()
    if rank == 0:
        print(f"CHECK {name}", flush=True)


def close(a, b, name, rtol=1e-12, scale=0.0):
    """max |a - b| <= rtol * max |b| (or scale, the size of the whole vector b is part of)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.max(np.abs(b)) if b.size else 0.0, scale, 1e-300)
    err = np.max(np.abs(a - b)) / scale if a.size else 0.0
    assert err <= rtol, f"{name}: relative difference {err:.3g} > {rtol:g}"


def identical_on_all_ranks(net, name):
    net.gather_optimizer_state()   # each rank keeps its own part of it between steps
    mine = net._params.tobytes() + net._running.tobytes() + b"".join(
        v.tobytes() for v in net.optimizer.state.values())
    everyone = comm.allgather(mine)
    assert all(x == everyone[0] for x in everyone), f"{name}: ranks differ"


def data(n, n_in, output, n_out, seed):
    g = np.random.default_rng(seed)
    X = g.normal(3.0, 2.0, (n, n_in))
    if output == "softmax":
        y = g.integers(0, n_out, n)
    elif output == "sigmoid":
        y = (g.random((n, n_out)) > 0.5).astype(float)
    else:
        y = g.normal(size=(n, n_out))
    return X, y


def parts(n_total, step):
    """Uneven row counts per rank, with 0- and 1-row ranks."""
    patterns = {2: [[0, n_total], [1, n_total - 1], [3, n_total - 3]],
                3: [[0, 1, n_total - 1], [n_total - 3, 0, 3], [2, 2, n_total - 4]]}
    counts = patterns.get(P, [[n_total // P] * (P - 1) + [n_total - (P - 1) * (n_total // P)]])
    counts = counts[step % len(counts)]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return offsets[rank], offsets[rank + 1]


def make(comm_=None, **kw):
    kw.setdefault("dtype", "float64")
    kw.setdefault("seed", 3)
    return cbn.Network(kw.pop("sizes", [5, 6, 4, 3]), comm=comm_, **kw)


def check_equal_to_one_process():
    # With linear hidden activations, beta of a layer followed by another batch norm has a
    # gradient that is 0 up to rounding; Adam and RMSprop divide it by its own size, which
    # turns rounding into full steps in any implementation: that case uses SGD
    combos = [dict(activation=a) for a in ACTIVATIONS if a != "linear"]
    combos += [dict(activation="linear", optimizer="sgd")]
    combos += [dict(output=o, sizes=[5, 6, 4, k]) for o, k in
               (("sigmoid", 2), ("linear", 2), ("linear", 1))]
    combos += [dict(optimizer=o) for o in OPTIMIZERS]
    combos += [dict(batchnorm=False, activation=a) for a in ("relu", "tanh")]
    combos += [dict(batchnorm=False, output="linear", sizes=[5, 4, 2])]
    for kw in combos:
        one, many = make(**kw), make(comm, **kw)
        output = kw.get("output", "softmax")
        for step in range(3):
            X, y = data(9, 5, output, many.layer_sizes[-1], 10 + step)
            a, b = parts(9, step)
            loss_1, grads_1 = one.loss_and_gradients(X, y)
            loss_p, grads_p = many.loss_and_gradients(X[a:b], y[a:b])
            close(loss_p, loss_1, f"{kw} loss")
            # relative to the largest gradient: some (beta before a linear activation and
            # batch norm) are 0 up to rounding
            largest = max(np.max(np.abs(g)) for g in grads_1.values())
            for key in grads_1:
                close(grads_p[key], grads_1[key], f"{kw} gradient {key}", scale=largest)
            close(many.train_step(X[a:b], y[a:b]), one.train_step(X, y), f"{kw} step loss")
            close(many._params, one._params, f"{kw} parameters")
            close(many._running, one._running, f"{kw} running statistics")
            mine = many._sync._chunk[rank]   # each rank keeps its own part of the state
            for name, value in many.optimizer.state.items():
                close(value[mine], one.optimizer.state[name][mine], f"{kw} {name}, own part")
                assert np.isnan(value[:mine.start]).all() and np.isnan(value[mine.stop:]).all()
            identical_on_all_ranks(many, f"{kw} step {step}")   # gathers the state
            for name, value in many.optimizer.state.items():
                close(value, one.optimizer.state[name], f"{kw} optimizer {name}")
    passed("equal to one process (every activation, output, optimizer, BN on/off)")

    # input gradients, and float32 (to float32 precision)
    one, many = make(), make(comm)
    X, y = data(8, 5, "softmax", 3, 99)
    a, b = parts(8, 1)
    _, g1 = one.loss_and_gradients(X, y, input_gradient=True)
    _, gp = many.loss_and_gradients(X[a:b], y[a:b], input_gradient=True)
    close(gp["X"], g1["X"][a:b], "input gradient")
    one, many = make(dtype="float32"), make(comm, dtype="float32")
    for step in range(3):
        a, b = parts(8, step)
        close(many.train_step(X[a:b], y[a:b]), one.train_step(X, y), "float32 loss", 1e-5)
        identical_on_all_ranks(many, "float32")
    close(many._params, one._params, "float32 parameters", 1e-4)
    passed("input gradients; float32")


def check_fit_rule():
    for shards, batch_size, shuffle, decay in (([7, 0, 12, 5], 6, True, 0.0),
                                               ([3, 9, 4, 1], 4, False, 0.05),
                                               ([1, 1, 1, 1], 2, True, 0.0)):
        counts = np.array((shards * P)[:P])
        if counts.sum() < 2:
            continue
        X, y = data(int(counts.sum()), 5, "softmax", 3, 5)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        shard = slice(offsets[rank], offsets[rank + 1])
        net, ref = make(comm), make()
        key = int(copy.deepcopy(net._rng).integers(2**63))
        cb_calls = []
        history = net.fit(X[shard], y[shard], epochs=3, batch_size=batch_size, shuffle=shuffle,
                          lr_schedule=lambda e: 1e-2 / (1 + e), weight_decay=decay,
                          callbacks=[lambda n, e, h: cb_calls.append(e)])
        ref._weight_decay = decay   # what fit(weight_decay=) sets for its steps
        losses = []
        for epoch in range(1, 4):
            ref.optimizer.lr = 1e-2 / epoch
            plans = [_batches.epoch_plan(counts, q, batch_size, key, epoch, shuffle)
                     for q in range(P)]
            seen, total = [], 0.0
            for s in range(len(plans[0])):
                rows = np.concatenate([offsets[q] + plans[q][s] for q in range(P)])
                seen.append(rows)
                total += ref.train_step(X[rows], y[rows]) * rows.size
            assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(counts.sum())), \
                "every example once per epoch"
            losses.append(total / counts.sum())
        close(net._params, ref._params, f"fit {counts} parameters")
        close(net._running, ref._running, f"fit {counts} running statistics")
        close(history["loss"], losses, "fit history")
        assert cb_calls == [1, 2, 3]
        identical_on_all_ranks(net, "fit")
    passed("fit equals one process on the same global batches")

    # validation data, early stopping, verbose (rank 0 prints)
    X, y = data(40, 5, "softmax", 3, 6)
    Xv, yv = data(12, 5, "softmax", 3, 7)
    a, b = parts(40, 2)
    va, vb = parts(12, 0)
    net = make(comm)
    stop = cbn.EarlyStopping(patience=1, min_delta=1e9, restore_best_weights=False)  # 2 epochs
    history = net.fit(X[a:b], y[a:b], epochs=5, batch_size=8,
                      validation_data=(Xv[va:vb], yv[va:vb]), callbacks=[stop], verbose=2)
    assert history.epochs == 2, history
    ref = net.evaluate(Xv[va:vb], yv[va:vb])
    assert history["val_loss"][-1] == ref["loss"]
    everyone = comm.allgather({k: v for k, v in history.items() if k != "time"})
    assert all(h == everyone[0] for h in everyone), "history differs between ranks"
    passed("validation_data, early stopping, verbose")

    # a network changed on one rank only is caught at the end of the epoch
    if rank == 1:
        net.layers[0].W[0, 0] += 1.0
    expect_all_raise(RuntimeError, lambda: net.fit(X[a:b], y[a:b], epochs=2, batch_size=8),
                     ["rank 1", "differ", "epoch 1"])
    # each rank updates its own chunk: a learning rate set on one rank would act there only
    net = make(comm)
    if rank == 1:
        net.optimizer.lr *= 2
    expect_all_raise(RuntimeError, lambda: net.fit(X[a:b], y[a:b], epochs=1, batch_size=8),
                     ["rank 1", "optimizer settings", "epoch 1"])
    passed("a network changed on one rank only is refused")


def check_evaluate_save_load():
    X, y = data(11, 5, "softmax", 3, 8)
    one, many = make(), make(comm)
    a, b = parts(11, 0)
    for step in range(2):
        s0, s1 = parts(11, step + 1)
        one.train_step(X, y)
        many.train_step(X[s0:s1], y[s0:s1])
    s1, sp = one.evaluate(X, y), many.evaluate(X[a:b], y[a:b])
    close(sp["loss"], s1["loss"], "evaluate loss")
    assert sp["accuracy"] == s1["accuracy"]
    assert np.array_equal(many.predict(X[:3]), one.predict(X[:3]))
    try:   # each rank holds only its part of the optimizer state after a step
        pickle.dumps(many)
    except RuntimeError as exc:
        assert "gather_optimizer_state" in str(exc), exc
    else:
        raise AssertionError("a network with partial optimizer state was pickled")
    if rank == 1:   # local: one rank alone freezes, with its partial optimizer state
        assert many.freeze().predict_proba(X).tobytes() == many.predict_proba(X).tobytes()
    path = os.path.join(FOLDER, "model.npz")
    many.metadata["note"] = "from rank 0"
    many.save(path)   # gathers the state
    loaded = cbn.Network.load(path, comm=comm)
    assert loaded._params.tobytes() == many._params.tobytes()
    copied = pickle.loads(pickle.dumps(many))
    for name, value in one.optimizer.state.items():
        close(loaded.optimizer.state[name], value, f"saved optimizer {name}")
        assert copied.optimizer.state[name].tobytes() == many.optimizer.state[name].tobytes()
    assert loaded.metadata == {"note": "from rank 0"}
    identical_on_all_ranks(loaded, "load")
    loaded.train_step(X[a:b], y[a:b])   # bound to comm: collective
    identical_on_all_ranks(loaded, "after load")
    # a failed save (folder missing) raises on all ranks
    try:
        many.save(os.path.join(FOLDER, "missing", "model.npz"))
    except OSError as exc:   # FileNotFoundError on rank 0, OSError on the others
        assert "rank 0" in str(exc)
    else:
        raise AssertionError("save into a missing folder did not raise")
    passed("evaluate, predict, save and load with comm")


def numpy_population_statistics(net, batches):
    means = [np.zeros(n) for n in net.layer_sizes[1:-1]]
    variances = [np.zeros(n) for n in net.layer_sizes[1:-1]]
    for Xb in batches:
        A = Xb
        for l, layer in enumerate(net.layers[:-1]):
            A, mean, var, _ = batchnorm_forward(A @ layer.W.T, layer.gamma, layer.beta,
                                                net.bn_eps, net.activation)
            m = Xb.shape[0]
            means[l] += mean / len(batches)
            variances[l] += var * m / (m - 1) / len(batches)
    return means, variances


def check_recompute_statistics():
    X, _ = data(37, 5, "softmax", 3, 9)
    a, b = parts(37, 0)
    counts = np.array(comm.allgather(b - a))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    net = make(comm, activation="tanh")
    net.recompute_statistics(X[a:b], batch_size=8)
    plans = [_batches.epoch_plan(counts, q, 8, 0, 0, False) for q in range(P)]
    batches = [X[np.concatenate([offsets[q] + plans[q][s] for q in range(P)])]
               for s in range(len(plans[0]))]
    means, variances = numpy_population_statistics(net, batches)
    for layer, mean, var in zip(net.layers, means, variances):
        close(layer.running_mean, mean, "population mean")
        close(layer.running_var, var, "population variance")
    identical_on_all_ranks(net, "recompute_statistics")
    passed("recompute_statistics over all shards")


def expect_all_raise(kind, call, words):
    try:
        call()
    except kind as exc:
        text = str(exc)
        for word in words:
            assert word in text, f"{word!r} not in {text!r}"
    else:
        raise AssertionError(f"{call} did not raise {kind.__name__}")


def check_bad_input():
    X, y = data(9, 5, "softmax", 3, 11)
    a, b = parts(9, 2)
    net = make(comm)
    bad_rank = 1
    before = net._params.copy(), net._running.copy()
    cases = {
        "NaN": (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 0, np.nan, X), y),
                ValueError, ["rank 1", "X", "finite"]),
        "shape": (lambda X, y: (X[:, :4], y), ValueError, ["rank 1", "X", "features"]),
        "labels": (lambda X, y: (X, y + 7), ValueError, ["rank 1", "y", "class indices"]),
        "type": (lambda X, y: ("text", y), TypeError, ["rank 1", "X"]),
        "rows": (lambda X, y: (X, y[:-1] if len(y) else np.zeros(3, int)), ValueError,
                 ["rank 1", "y"]),
    }
    for name, (spoil, kind, words) in cases.items():
        Xr, yr = (spoil(X[a:b], y[a:b]) if rank == bad_rank else (X[a:b], y[a:b]))
        expect_all_raise(kind, lambda: net.train_step(Xr, yr), words)
        expect_all_raise(kind, lambda: net.loss_and_gradients(Xr, yr), words)
        expect_all_raise(kind, lambda: net.fit(Xr, yr, epochs=1, batch_size=4), words)
        expect_all_raise(kind, lambda: net.evaluate(Xr, yr), words)
        assert np.array_equal(net._params, before[0]) and np.array_equal(net._running, before[1])
    # an argument of fit on one rank
    expect_all_raise(ValueError, lambda: net.fit(X[a:b], y[a:b], epochs=1 if rank else 2,
                                                 batch_size=4), ["epochs", "rank"])
    expect_all_raise(ValueError, lambda: net.fit(X[a:b], y[a:b], batch_size=0 if rank == 1
                                                 else 4), ["rank 1", "batch_size"])
    # a global batch of fewer than 2 rows
    expect_all_raise(ValueError, lambda: net.train_step(X[:1] if rank == 0 else X[:0],
                                                        y[:1] if rank == 0 else y[:0]),
                     ["at least 2 rows"])
    assert np.array_equal(net._params, before[0])
    net.train_step(X[a:b], y[a:b])   # the communicator is still usable
    identical_on_all_ranks(net, "after bad input")
    passed("bad input on one rank raises on all ranks and changes nothing")

    # a different or invalid configuration on one rank
    expect_all_raise(ValueError, lambda: make(comm, activation="tanh" if rank == 1 else "relu"),
                     ["rank 1", "activation"])
    expect_all_raise(ValueError, lambda: make(comm, activation="bogus" if rank == 1 else "relu"),
                     ["rank 1", "activation"])
    expect_all_raise(ValueError, lambda: make(comm, seed=rank), ["seed"])
    passed("a different configuration on one rank is refused at construction")

    # a divergent step is refused on all ranks together
    net = make(comm)
    net.layers[-1].W[...] = 1e300
    before = net._params.copy()
    expect_all_raise(FloatingPointError, lambda: net.train_step(X[a:b], y[a:b]), ["diverged"])
    assert np.array_equal(net._params, before)
    # a finite loss, one too large gradient (by weight decay) in the chunk of the sum that
    # rank 0, then the last rank, checks: refused everywhere, nothing changes
    for where in ("0.W", f"{len(net.layers) - 1}.W"):
        net = make(comm, dtype="float32", optimizer="adam")
        net.train_step(X[a:b], y[a:b])
        net.parameters()[where].flat[0] = 1e25
        before = net._params.copy(), net._running.copy(), [
            v.copy() for v in net.optimizer.state.values()]
        expect_all_raise(FloatingPointError, lambda: net.fit(
            X[a:b], y[a:b], epochs=1, batch_size=9, weight_decay=0.1), ["diverged"])
        assert np.array_equal(net._params, before[0]) and net.optimizer.t == 1
        assert np.array_equal(net._running, before[1])
        assert all(np.array_equal(v, w, equal_nan=True)   # NaN: other ranks' parts
                   for v, w in zip(net.optimizer.state.values(), before[2]))
        identical_on_all_ranks(net, f"after a divergent step ({where})")
    # the weight decay overflows in rank 0's chunk under np.seterr(over="raise"): every rank
    # refuses the step (none is left waiting for rank 0's sum)
    net = make(comm, dtype="float32")
    net.parameters()["0.W"].flat[0] = 1e37
    before = net._params.copy()
    with np.errstate(over="raise"):
        expect_all_raise(FloatingPointError, lambda: net.fit(
            X[a:b], y[a:b], epochs=1, batch_size=9, weight_decay=100.0), ["diverged"])
    assert np.array_equal(net._params, before)
    passed("a divergent step is refused on all ranks")


def check_memmap():
    """fit on a memory-mapped shard of >= 2 GB: anonymous memory stays near the buffers."""
    n_features = 8192
    rows = (2 << 30) // (4 * n_features) + 8
    path = os.path.join(FOLDER, f"shard{rank}.npy")
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, n_features))
    block = np.random.default_rng(rank).normal(size=(4096, n_features)).astype(np.float32)
    for start in range(0, rows, 4096):
        X[start:start + 4096] = block[:min(4096, rows - start)]
    X.flush()
    del X
    X = np.load(path, mmap_mode="r")
    y = (np.arange(rows) % 2).astype(np.intp)
    net = cbn.Network([n_features, 8, 2], comm=comm, seed=0)

    def anon_kib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssAnon"))
    before = anon_kib()
    batch = rows // 16 * P
    during = []   # measured at the end of the epoch, while fit's batch buffers are alive
    net.fit(X, y, epochs=1, batch_size=batch, shuffle=True,
            callbacks=[lambda net, epoch, history: during.append(anon_kib())])
    buffers_kib = (batch // P + 1) * n_features * 4 // 1024   # the gathered batch
    grown = during[0] - before
    print(f"rank {rank}: shard {X.nbytes / 2**30:.2f} GiB, RssAnon grew {grown / 1024:.0f} MiB "
          f"during fit (batch buffer {buffers_kib / 1024:.0f} MiB)", flush=True)
    # up to two batch sizes (the near-equal slices), so up to two buffers
    assert grown < 2 * buffers_kib + 100 * 1024, "fit copied the shard"
    del X
    os.unlink(path)
    passed("memory-mapped 2 GB shard not copied")


def kill_one_rank():
    net = make(comm)
    X, y = data(8, 5, "softmax", 3, 1)
    net.train_step(X, y)
    if rank == P - 1:
        os.kill(os.getpid(), signal.SIGKILL)
    for _ in range(10**6):   # the others keep stepping; the launcher must end them
        net.train_step(X, y)
        time.sleep(0.001)


MODES = {
    "all": [check_equal_to_one_process, check_fit_rule, check_evaluate_save_load,
            check_recompute_statistics, check_bad_input],
    "memmap": [check_memmap],
    "kill": [kill_one_rank],
}

if __name__ == "__main__":
    try:
        for check in MODES[sys.argv[1]]:
            check()
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        comm.Abort(1)
