"""The command line on real files: train, predict, evaluate, info, and bad input."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest

import cbn
from cbn.__main__ import main
from cbn._tables import CommandError, read_share, read_table


@pytest.fixture
def files(tmp_path, rng):
    """A CSV with text labels (classification) and an NPZ with a numeric target (regression)."""
    X = rng.standard_normal((200, 3))
    labels = np.where(X[:, 0] + X[:, 1] > 0.3, "setosa",
                      np.where(X[:, 2] > 0, "versicolor", "virginica"))
    with open(tmp_path / "flowers.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["petal", "sepal", "stem", "species"])
        writer.writerows([*np.round(x, 5), label] for x, label in zip(X, labels))
    np.savez(tmp_path / "reg.npz", X=X, y=2 * X[:, 0] - X[:, 1] + 0.25)
    return tmp_path


def run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def trained(files, capsys, *extra):
    code, out, err = run(capsys, "train", files / "flowers.csv", "--target", "species",
                         "--epochs", 8, "--verbose", 0, "--out", files / "m.safetensors", *extra)
    assert code == 0, err
    return files / "m.safetensors", out


def test_train_saves_a_model_with_its_columns_and_labels(files, capsys):
    model, out = trained(files, capsys)
    assert "160 training and 40 validation rows, 3 features, classes 3" in out
    net = cbn.Network.load(model)
    assert net.layer_sizes == (3, 128, 64, 3) and net.output == "softmax"
    assert net.metadata["features"] == ["petal", "sepal", "stem"]
    assert net.metadata["classes"] == ["setosa", "versicolor", "virginica"]
    assert net.metadata["training"]["epochs"] == 8
    assert net.metadata["training"]["val_accuracy"] > 0.8


def test_train_options(files, capsys):
    code, out, err = run(capsys, "train", files / "flowers.csv", "--target", "species",
                         "--hidden", "16", "--no-batchnorm", "--optimizer", "sgd", "--lr", "0.05",
                         "--epochs", 3, "--batch-size", 16, "--verbose", 2, "--dtype", "float64",
                         "--out", files / "sgd.safetensors")
    assert code == 0, err
    assert [line.split("  ")[0] for line in out.splitlines() if line.startswith("epoch")] == \
        ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    net = cbn.Network.load(files / "sgd.safetensors")
    assert net.layer_sizes == (3, 16, 3) and not net.batchnorm
    assert repr(net.optimizer) == "SGD(lr=0.05)" and net.optimizer.t == 3 * 10


def test_train_writes_model_safetensors_by_default(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    code, out, err = run(capsys, "train", "flowers.csv", "--target", "species", "--epochs", 1,
                         "--verbose", 0)
    assert code == 0, err
    assert "saved model.safetensors" in out
    assert cbn.Network.load(files / "model.safetensors").metadata["target"] == "species"


def test_models_of_format_1_still_work(files, capsys):
    """A model that cbn 0.1 saved as .npz (tests/data) is still read by every command."""
    model = os.path.join(os.path.dirname(__file__), "data", "format1_float32_adam.npz")
    code, out, err = run(capsys, "info", model)
    assert code == 0, err
    assert "Network([4, 5, 3], activation='leaky_relu'" in out and "steps taken: 10" in out
    rows = np.random.default_rng(0).standard_normal((5, 4))
    with open(files / "rows.csv", "w", newline="") as f:
        csv.writer(f).writerows([["a", "b", "c", "d"], *rows.tolist()])
    code, out, err = run(capsys, "predict", model, files / "rows.csv")
    assert code == 0, err
    expected = cbn.Network.load(model).predict(rows)
    assert out.split() == ["prediction", *map(str, expected)]


def test_train_with_early_stopping_and_plot(files, capsys):
    pytest.importorskip("matplotlib")
    _, out = trained(files, capsys, "--patience", "2", "--plot", files / "curves.png")
    assert (files / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_writes_one_label_per_row(files, capsys):
    model, _ = trained(files, capsys)
    code, out, _ = run(capsys, "predict", model, files / "flowers.csv", "--out", files / "p.csv")
    assert code == 0 and "wrote 200 predictions" in out
    with open(files / "p.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["species"] and len(rows) == 201
    with open(files / "flowers.csv") as f:
        truth = [row[-1] for row in csv.reader(f)][1:]
    predicted = [row[0] for row in rows[1:]]
    assert set(predicted) <= {"setosa", "versicolor", "virginica"}
    assert np.mean(np.array(predicted) == np.array(truth)) > 0.8
    code, out, _ = run(capsys, "predict", model, files / "flowers.csv")  # to standard output
    assert code == 0 and out.splitlines() == [",".join(row) for row in rows]


def test_evaluate_and_info(files, capsys):
    model, _ = trained(files, capsys)
    code, out, _ = run(capsys, "evaluate", model, files / "flowers.csv")
    assert code == 0
    accuracy = float(out.split("accuracy ")[1])
    assert out.startswith(f"{files / 'flowers.csv'}: 200 rows, loss ") and accuracy > 0.8
    code, out, _ = run(capsys, "info", model)
    assert code == 0
    assert "Layer(0: 3 -> 128, batchnorm+relu)" in out and "parameters: " in out
    assert f"parameters: {cbn.Network.load(model).n_params}," in out
    assert "features: petal, sepal, stem" in out and "versicolor" in out and '"epochs": 8' in out


def test_regression_on_npz(files, capsys):
    code, out, err = run(capsys, "train", files / "reg.npz", "--epochs", 30, "--verbose", 0,
                         "--lr", 0.01, "--out", files / "r.safetensors")
    assert code == 0, err
    assert "regression" in out
    code, out, _ = run(capsys, "evaluate", files / "r.safetensors", files / "reg.npz")
    assert code == 0 and float(out.split("loss ")[1]) < 0.5  # the target's variance is 5
    code, out, _ = run(capsys, "predict", files / "r.safetensors", files / "reg.npz")
    values = np.array(out.splitlines()[1:], dtype=float)
    assert out.splitlines()[0] == "y" and values.shape == (200,)


def test_train_on_digits_without_data(tmp_path, capsys):
    pytest.importorskip("sklearn")
    code, out, err = run(capsys, "train", "--epochs", 1, "--verbose", 0,
                         "--out", tmp_path / "d.safetensors")
    assert code == 0, err
    assert "digits" in out and cbn.Network.load(tmp_path / "d.safetensors").layer_sizes[0] == 64


def bad_files(files):
    (files / "ragged.csv").write_text("a,b,label\n1,2,x\n3,y\n")
    (files / "words.csv").write_text("a,b,label\n1,2,x\n3,oops,y\n4,5,x\n")
    (files / "empty.csv").write_text("")
    (files / "binary.csv").write_bytes(b"\xff\xfe\x00garbage")
    (files / "nan.csv").write_text("a,b,label\n1,nan,x\n3,4,y\n5,6,x\n")
    np.savez(files / "noX.npz", features=np.ones((4, 3)))
    np.savez(files / "wide.npz", X=np.ones((4, 5)), y=np.ones(4))
    np.savez(files / "short_y.npz", X=np.ones((4, 3)), y=np.ones(3))
    (files / "fake.npz").write_bytes(b"PK\x03\x04 not really a zip")
    model = (files / "m.safetensors").read_bytes()
    (files / "cut.safetensors").write_bytes(model[:len(model) // 2])
    (files / "flipped.safetensors").write_bytes(model[:-1] + bytes([model[-1] ^ 1]))


@pytest.mark.parametrize("argv, message", [
    (["train", "{f}/missing.csv", "--target", "y"], "missing.csv: no such file"),
    (["train", "{f}/flowers.csv", "--target", "colour"], "no column 'colour'"),
    (["train", "{f}/flowers.csv"], "--target"),
    (["train", "{f}/ragged.csv", "--target", "label"], "line 3 has 2 fields"),
    (["train", "{f}/words.csv", "--target", "label"], "column 'b', line 3: expected a number"),
    (["train", "{f}/empty.csv", "--target", "label"], "header row"),
    (["train", "{f}/binary.csv", "--target", "label"], "not a readable CSV"),
    (["train", "{f}/nan.csv", "--target", "label"], "NaN"),
    (["train", "{f}/noX.npz"], "array named 'X'"),
    (["train", "{f}/short_y.npz"], "one value per row"),
    (["train", "{f}/fake.npz"], "not a readable NPZ"),
    (["train", "{f}/flowers.csv", "--target", "species", "--task", "regress"], "numbers"),
    (["train", "{f}/flowers.csv", "--target", "species", "--epochs", "0"], "epochs"),
    (["train", "{f}/flowers.csv", "--target", "species", "--lr", "-1"], "lr"),
    (["predict", "{f}/m.safetensors", "{f}/wide.npz"], "expects 3 features"),
    (["predict", "{f}/m.safetensors", "{f}/words.csv"], "missing column(s) petal, sepal, stem"),
    (["predict", "{f}/flowers.csv", "{f}/flowers.csv"], "not a cbn model file"),
    (["predict", "{f}/fake.npz", "{f}/flowers.csv"], "not a readable cbn model file"),
    (["predict", "{f}/cut.safetensors", "{f}/flowers.csv"], "not a readable cbn model file"),
    (["info", "{f}/flipped.safetensors"], "checksum mismatch"),
    (["evaluate", "{f}/m.safetensors", "{f}/flowers.csv", "--target", "petal"], "not seen in training"),
    (["info", "{f}/nothing.npz"], "no such file"),
    (["info", "{f}/reg.npz"], "no cbn configuration"),
])
def test_bad_input_is_one_line_on_stderr(files, capsys, argv, message):
    trained(files, capsys)
    bad_files(files)
    code, out, err = run(capsys, *[arg.format(f=files) for arg in argv])
    assert code == 1
    assert err.startswith("cbn: error: ") and err.count("\n") == 1, err
    assert message in err


def test_python_m_cbn_exits_cleanly_on_a_bad_file(files):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(cbn.__path__[0])]
                                        + env.get("PYTHONPATH", "").split(os.pathsep))
    result = subprocess.run([sys.executable, "-m", "cbn", "info", str(files / "flowers.csv")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("cbn: error: ")


def test_plot_without_matplotlib_fails_before_training(files, capsys, monkeypatch):
    def missing():
        raise ImportError("plotting needs matplotlib: pip install 'cbn[plot]'")

    monkeypatch.setattr("cbn.__main__.figure_class", missing)
    code, _, err = run(capsys, "train", files / "flowers.csv", "--target", "species",
                       "--plot", files / "c.png", "--out", files / "never.safetensors")
    assert code == 1 and "matplotlib" in err and not (files / "never.safetensors").exists()


def test_demo_still_runs(capsys):
    pytest.importorskip("sklearn")
    code, out, _ = run(capsys, "demo", "--epochs", 1)
    assert code == 0 and out.count("held-out accuracy") == 2


def test_train_with_a_checkpoint_stops_on_sigterm_and_resumes(files, capsys, monkeypatch):
    """--checkpoint: SIGTERM saves and exits with 75; the same command then finishes the run
    with the model an uninterrupted run writes."""
    import signal
    argv = ("train", files / "flowers.csv", "--target", "species", "--epochs", 4,
            "--verbose", 0, "--patience", 3)
    code, _, err = run(capsys, *argv, "--out", files / "plain.safetensors")
    assert code == 0, err
    original = cbn.Network._step

    def step(net, Xb, tb):
        if net.optimizer.t + 1 == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(net, Xb, tb)
    monkeypatch.setattr(cbn.Network, "_step", step)
    resumable = (*argv, "--out", files / "m.safetensors", "--checkpoint", files / "run.ckpt",
                 "--checkpoint-every", 3)
    code, _, err = run(capsys, *resumable)
    assert code == 75 and "SIGTERM" in err and "run.ckpt" in err
    assert not (files / "m.safetensors").exists()
    monkeypatch.undo()
    code, _, err = run(capsys, *resumable)
    assert code == 0, err
    resumed, plain = (cbn.Network.load(files / name) for name in ("m.safetensors",
                                                                   "plain.safetensors"))
    for key, value in plain.parameters().items():
        assert np.array_equal(resumed.parameters()[key], value), key
    assert np.array_equal(resumed._running, plain._running)
    assert resumed.optimizer.t == plain.optimizer.t


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_rank_shares_of_a_csv_make_the_whole_table(files, size):
    """cbn train --mpi: each rank converts and keeps only its contiguous rows of X."""
    X, names, y = read_table(str(files / "flowers.csv"), "species")
    parts = [read_share(str(files / "flowers.csv"), "species", r, size) for r in range(size)]
    assert [start for *_, start in parts] == [r * len(X) // size for r in range(size)]
    assert np.array_equal(np.concatenate([part[0] for part in parts]), X)
    for X_r, names_r, y_r, _ in parts:
        assert X_r.dtype == np.float64 and names_r == names and np.array_equal(y_r, y)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_rank_shares_of_an_npz_are_memory_mapped_where_stored(tmp_path, rng, save):
    X = rng.standard_normal((101, 4)).astype(np.float32)
    save(tmp_path / "d.npz", X=X, y=np.arange(101))
    for r in range(3):
        X_r, names, y, start = read_share(str(tmp_path / "d.npz"), "y", r, 3)
        assert start == r * 101 // 3 and names == ["x0", "x1", "x2", "x3"]
        assert np.array_equal(X_r, X[start:(r + 1) * 101 // 3]) and np.array_equal(y, np.arange(101))
        # np.savez stores X uncompressed: mapped, never held whole; compressed: read whole,
        # the share copied out (not a view keeping the whole array alive)
        assert X_r.dtype == np.float32
        if save is np.savez:
            assert isinstance(X_r, np.memmap)
        else:
            assert not isinstance(X_r, np.memmap) and X_r.base is None


def test_a_damaged_npz_share_is_refused(tmp_path, rng):
    X = rng.standard_normal((50, 3))
    np.savez(tmp_path / "d.npz", X=X, y=np.arange(50))
    data = bytearray((tmp_path / "d.npz").read_bytes())
    data[data.index(X[10].tobytes())] ^= 0x40   # one bit of X's bytes flipped
    (tmp_path / "d.npz").write_bytes(bytes(data))
    with pytest.raises(CommandError, match="CRC"):
        read_share(str(tmp_path / "d.npz"), "y", 0, 2)


def test_a_bad_cell_is_found_by_the_rank_whose_share_holds_it(files):
    lines = (files / "flowers.csv").read_text().splitlines()
    lines[150] = "x," + lines[150].split(",", 1)[1]   # data row 149: rank 1 of 2 has it
    (files / "bad.csv").write_text("\n".join(lines) + "\n")
    read_share(str(files / "bad.csv"), "species", 0, 2)
    with pytest.raises(CommandError, match="column 'petal', line 151: expected a number"):
        read_share(str(files / "bad.csv"), "species", 1, 2)
