"""The command line's data files: CSV and NPZ tables read into (X, feature names, y).

CSV: a header row of column names, numbers in every feature column, the target column may
hold any labels. NPZ: an array ``X`` of shape (n_samples, n_features) and a target array.
Problems are :class:`CommandError`, which the command line reports as one line.
"""
import csv
import os

import numpy as np


class CommandError(Exception):
    """A problem with the user's files or arguments: reported as one line, no traceback."""


def read_table(path, target=None, features=None):
    """Read a CSV or NPZ data file.

    Returns (X as float64 (n, f), feature names, y as an array or None). ``features`` names
    the columns to use (a model's), in order; otherwise every column but the target.
    """
    if not os.path.isfile(path):
        raise CommandError(f"{path}: no such file")
    if path.lower().endswith(".npz"):
        return _read_npz(path, target, features)
    return _read_csv(path, target, features)


def _read_npz(path, target, features):
    try:
        # opened here, so the file is closed even when np.load fails on it
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as exc:  # zip, header and pickle-refusal errors alike
        raise CommandError(f"{path}: not a readable NPZ file ({exc})") from None
    if "X" not in arrays:
        raise CommandError(f"{path}: expected an array named 'X', found {sorted(arrays)}")
    X = arrays["X"]
    if X.ndim != 2 or X.dtype.kind not in "biuf":
        raise CommandError(f"{path}: 'X' must be a 2-D array of numbers, got {X.dtype} of "
                           f"shape {X.shape}")
    names = [f"x{i}" for i in range(X.shape[1])]
    if features is not None and len(features) != X.shape[1]:
        raise CommandError(f"{path}: the model expects {len(features)} features, 'X' has "
                           f"{X.shape[1]} columns")
    y = None
    if target is not None:
        if target not in arrays:
            raise CommandError(f"{path}: no target array {target!r}; arrays: {sorted(arrays)}")
        y = arrays[target]
        if y.ndim != 1 or len(y) != len(X):
            raise CommandError(f"{path}: target {target!r} must have shape ({len(X)},), one "
                               f"value per row of 'X', got shape {y.shape}")
    return X.astype(np.float64), (features or names), y


def _read_csv(path, target, features):
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CommandError(f"{path}: not a readable CSV file ({exc})") from None
    rows = [row for row in rows if row]  # blank lines
    if len(rows) < 2:
        raise CommandError(f"{path}: expected a header row and at least one data row")
    header = [name.strip() for name in rows[0]]
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise CommandError(f"{path}: line {line} has {len(row)} fields, the header has "
                               f"{len(header)}")
    columns = dict(zip(header, zip(*rows[1:])))
    if target is not None and target not in columns:
        raise CommandError(f"{path}: no column {target!r}; columns: {', '.join(header)}")
    if features is None:
        features = [name for name in header if name != target]
        if not features:
            raise CommandError(f"{path}: no feature columns besides the target {target!r}")
    missing = [name for name in features if name not in columns]
    if missing:
        raise CommandError(f"{path}: missing column(s) {', '.join(missing)} that the model "
                           f"was trained on")
    X = np.empty((len(rows) - 1, len(features)))
    for j, name in enumerate(features):
        for i, text in enumerate(columns[name]):
            try:
                X[i, j] = float(text)
            except ValueError:
                raise CommandError(f"{path}: column {name!r}, line {i + 2}: expected a number, "
                                   f"got {text!r}") from None
    if not np.isfinite(X).all():
        raise CommandError(f"{path}: the feature columns hold NaN or infinity")
    y = np.array([text.strip() for text in columns[target]]) if target is not None else None
    return X, list(features), y


def as_numbers(values):
    """values as float64, or None if any of them is not a number."""
    try:
        return values.astype(np.float64)
    except ValueError:
        return None


def is_classification(y, task):
    if task != "auto":
        return task == "classify"
    numbers = as_numbers(y)
    # labels that are text, or whole numbers (0/1, digits, grades), are classes
    return numbers is None or bool(np.all(numbers == np.round(numbers)))
