"""The command line's data files: CSV and NPZ tables read into (X, feature names, y).

CSV: a header row of column names, numbers in every feature column, the target column may
hold any labels. NPZ: an array ``X`` of shape (n_samples, n_features) and a target array.
Problems are :class:`CommandError`, which the command line reports as one line.

Under ``cbn train --mpi`` each rank keeps only its contiguous share of X
(:func:`read_share`): a CSV is read twice (once to count the rows, once to convert the
share's cells), an NPZ's X is memory-mapped where it is stored uncompressed (np.savez; its
CRC-32 is still checked, reading the bytes in pieces; a np.savez_compressed member cannot be
entered mid-stream and is read whole). The target column is read whole on every rank: the
classes are those of all rows.
"""
import csv
import math
import os
import struct
import zipfile
import zlib

import numpy as np


class CommandError(Exception):
    """A problem with the user's files or arguments: reported as one line, no traceback."""


def read_table(path, target=None, features=None):
    """Read a CSV or NPZ data file.

    Returns (X as float64 (n, f), feature names, y as an array or None). ``features`` names
    the columns to use (a model's), in order; otherwise every column but the target.
    """
    X, names, y, _ = _read(path, target, features, None)
    return X, names, y


def read_share(path, target, rank, size):
    """Rank ``rank`` of ``size``'s contiguous share of a CSV or NPZ file's rows.

    Returns (X's rows [start, stop) with start = rank * n // size, stop = (rank + 1) * n //
    size, the feature names, y of all n rows, start). X is float64 from a CSV, and from an
    NPZ a memory map of its stored array where it can be (any number type).
    """
    return _read(path, target, None, (rank, size))


def _read(path, target, features, share):
    if not os.path.isfile(path):
        raise CommandError(f"{path}: no such file")
    if path.lower().endswith(".npz"):
        return _read_npz(path, target, features, share)
    return _read_csv(path, target, features, share)


def share_bounds(n, share):
    """The rows [start, stop) of a share (rank, size) of n rows; all of them for None."""
    if share is None:
        return 0, n
    rank, size = share
    return rank * n // size, (rank + 1) * n // size


def _read_npz(path, target, features, share):
    try:
        # opened here, so the file is closed even when np.load fails on it
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            mapped = _mapped_member(path, "X") if share and "X" in data.files else None
            arrays = {name: data[name] for name in data.files
                      if not (name == "X" and mapped is not None)}
        if mapped is not None:
            arrays["X"] = mapped
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
    start, stop = share_bounds(len(X), share)
    X = X[start:stop]
    if share is None or X.dtype.kind != "f":
        X = X.astype(np.float64)
    elif not isinstance(X, np.memmap):   # a share's floats stay as stored (fit converts
        X = X.copy()                     # per batch), not a view keeping the whole alive
    return X, (features or names), y, start


def _mapped_member(path, name):
    """The array name.npy of an NPZ file, memory-mapped read-only, after the CRC-32 of its
    bytes is checked (read in pieces, as np.load's zipfile would); None where it is stored
    compressed or in a form this reader does not map (then np.load reads it whole)."""
    with zipfile.ZipFile(path) as archive:
        infos = [info for info in archive.infolist() if info.filename in (f"{name}.npy", name)]
    if not infos or infos[0].compress_type != zipfile.ZIP_STORED:
        return None
    info = infos[0]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)   # the member's local file header, then its name and extra field
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"member {info.filename}: no local file header")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        if f.read(name_length) != info.filename.encode():
            raise ValueError(f"member {info.filename}: its local header names another file")
        begin = info.header_offset + 30 + name_length + extra_length
        f.seek(begin)
        crc, left = 0, info.file_size
        while left:
            piece = f.read(min(left, 1 << 24))
            if not piece:
                raise ValueError(f"member {info.filename}: truncated")
            crc, left = zlib.crc32(piece, crc), left - len(piece)
        if crc != info.CRC:
            raise ValueError(f"member {info.filename}: bad CRC-32 (the file is damaged)")
        f.seek(begin)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"member {info.filename} holds Python objects")
    if offset - begin + math.prod(shape) * dtype.itemsize != info.file_size:
        return None   # bytes after the array: np.load decides
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


def _csv_rows(path):
    """The CSV file's rows, blank lines left out."""
    with open(path, newline="", encoding="utf-8") as f:
        yield from (row for row in csv.reader(f) if row)


def _read_csv(path, target, features, share):
    # one pass keeps every row; a share counts them first, then converts its own rows' cells
    kept = [] if share is None else None
    try:
        rows = _csv_rows(path)
        header = [name.strip() for name in next(rows, [])]
        n = 0
        for n, row in enumerate(rows, start=1):
            if len(row) != len(header):
                raise CommandError(f"{path}: line {n + 1} has {len(row)} fields, the header "
                                   f"has {len(header)}")
            if kept is not None:
                kept.append(row)
        if n < 1:
            raise CommandError(f"{path}: expected a header row and at least one data row")
        if target is not None and target not in header:
            raise CommandError(f"{path}: no column {target!r}; columns: {', '.join(header)}")
        if features is None:
            features = [name for name in header if name != target]
            if not features:
                raise CommandError(f"{path}: no feature columns besides the target {target!r}")
        missing = [name for name in features if name not in header]
        if missing:
            raise CommandError(f"{path}: missing column(s) {', '.join(missing)} that the "
                               f"model was trained on")
        start, stop = share_bounds(n, share)
        index = {name: i for i, name in enumerate(header)}   # a repeated name: its last column
        columns = [index[name] for name in features]
        t = index[target] if target is not None else None
        X, y = np.empty((stop - start, len(features))), []
        if kept is None:
            rows = _csv_rows(path)
            next(rows)
        else:
            rows = iter(kept)
        for i, row in enumerate(rows):
            if t is not None:
                y.append(row[t].strip())
            if start <= i < stop:
                for j, c in enumerate(columns):
                    try:
                        X[i - start, j] = float(row[c])
                    except ValueError:
                        raise CommandError(f"{path}: column {features[j]!r}, line {i + 2}: "
                                           f"expected a number, got {row[c]!r}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CommandError(f"{path}: not a readable CSV file ({exc})") from None
    if not np.isfinite(X).all():
        raise CommandError(f"{path}: the feature columns hold NaN or infinity")
    return X, list(features), (np.array(y) if t is not None else None), start


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
