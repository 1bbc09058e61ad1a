"""Safetensors, written and read in pure Python, for any tensors and string metadata.

:func:`write` (to a binary file object), :func:`read` (bytes -> tensors and metadata, every
length, offset, dtype and shape checked) and :func:`atomic_save` (temporary file, fsync,
rename). Both :func:`write` and :func:`read` handle the SHA-256 checksum that cbn's files
carry in their metadata (see cbn._model_file, which builds the model file on this module).
"""
import contextlib
import hashlib
import json
import os
import re
import struct
import tempfile

import numpy as np

# safetensors' own limit; a cbn header is a few kilobytes plus the user's metadata
MAX_HEADER_SIZE = 100_000_000
CHECKSUM_KEY = "checksum"
_PLACEHOLDER = b"0" * 64
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
# safetensors dtype codes -> NumPy (little-endian); BF16 and the float8 codes have no NumPy dtype
DTYPES = {"BOOL": np.dtype("|b1"), "U8": np.dtype("|u1"), "I8": np.dtype("|i1"),
          "U16": np.dtype("<u2"), "I16": np.dtype("<i2"), "U32": np.dtype("<u4"),
          "I32": np.dtype("<i4"), "U64": np.dtype("<u8"), "I64": np.dtype("<i8"),
          "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
_CODES = {dtype: code for code, dtype in DTYPES.items()}


def write(f, tensors, metadata=None, *, checksum=True):
    """Write tensors and string metadata to the binary file object ``f`` as safetensors.

    Parameters
    ----------
    f : binary file object
        Written sequentially (no seek), so a pipe or ``io.BytesIO`` works.
    tensors : dict of str to ndarray
        Stored in this order, each in C order and little-endian, one after the other.
    metadata : dict of str to str, optional
        Stored as ``"__metadata__"``, the first key of the header.
    checksum : bool, default=True
        Add ``metadata["checksum"]``: the SHA-256 of the whole file in which its 64 hex
        digits are replaced by 64 ASCII '0's (:func:`read` verifies it).
    """
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata: expected str keys and values, got {key!r}: {value!r}")
    if checksum:
        if CHECKSUM_KEY in metadata:
            raise ValueError(f"metadata: {CHECKSUM_KEY!r} is written by write() itself")
        metadata[CHECKSUM_KEY] = _PLACEHOLDER.decode()
    header = {"__metadata__": metadata} if metadata else {}
    arrays, offset = [], 0
    for name, array in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"tensors: invalid tensor name {name!r}")
        array = np.asarray(array)
        little = array.dtype.newbyteorder("<")
        if little not in _CODES:
            raise TypeError(f"tensors: {name!r} has dtype {array.dtype}, which safetensors "
                            f"cannot store (expected one of {sorted(_CODES.values())})")
        array = np.asarray(array, little, order="C")  # (ascontiguousarray makes 0-d 1-d)
        header[name] = {"dtype": _CODES[little], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        arrays.append(array.reshape(-1).view(np.uint8))
    # ASCII JSON (non-ASCII escaped), padded with spaces so the tensors start 8-byte aligned
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    text += b" " * (-(8 + len(text)) % 8)
    prefix = struct.pack("<Q", len(text))
    if checksum:
        digest = hashlib.sha256(prefix + text)
        for array in arrays:
            digest.update(array)
        # JSON escapes every quote inside strings, so this key-value pair occurs once
        at = text.index(b'"checksum":"' + _PLACEHOLDER + b'"') + len(b'"checksum":"')
        text = text[:at] + digest.hexdigest().encode() + text[at + 64:]
    f.write(prefix)
    f.write(text)
    for array in arrays:
        f.write(array)


def read(data, *, checksum=True):
    """Parse safetensors bytes, checking everything before anything is trusted.

    Parameters
    ----------
    data : bytes-like
        The whole file.
    checksum : bool, default=True
        Require and verify ``__metadata__["checksum"]`` (see :func:`write`) and leave it out
        of the metadata returned.

    Returns
    -------
    tensors : dict of str to ndarray
        Read-only views of ``data`` (copy them to keep or change them), in the order of their
        bytes in the file; dtypes little-endian.
    metadata : dict of str to str

    Raises ValueError on a header length below 2, above 100 MB or beyond the data; a header
    that is not one JSON object starting with '{'; duplicate keys; metadata that is not a
    string -> string map; an unknown dtype; a shape or offsets that disagree; gaps or
    overlaps between tensors, or data not ending at the end of ``data``; a missing or wrong
    checksum.
    """
    size = len(data)
    if size < 8:
        raise ValueError(f"{size} bytes is too short for a safetensors file (8 bytes of "
                         f"header length first)")
    (header_len,) = struct.unpack_from("<Q", data, 0)
    if not 2 <= header_len <= MAX_HEADER_SIZE:
        raise ValueError(f"header length {header_len} is outside [2, {MAX_HEADER_SIZE}]")
    if 8 + header_len > size:
        raise ValueError(f"header length {header_len} runs past the end of the file "
                         f"({size} bytes)")
    raw = bytes(data[8:8 + header_len])
    if raw[:1] != b"{":
        raise ValueError("the header does not start with '{'")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys,
                            parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("the header nests too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise ValueError(f"the header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("__metadata__ is not a map of strings to strings")
    data_start, data_size = 8 + header_len, size - 8 - header_len
    entries = sorted((_tensor_entry(name, info, data_size) for name, info in header.items()),
                     key=lambda entry: entry[3:5])
    position = 0
    for name, _, _, begin, end in entries:
        if begin != position:
            raise ValueError(f"tensor {name!r} starts at byte {begin} of the data, expected "
                             f"{position} (a gap or an overlap)")
        position = end
    if position != data_size:
        raise ValueError(f"{data_size - position} bytes follow the last tensor (the data "
                         f"section must end where the tensors do)")
    if checksum:
        _verify_checksum(data, raw, metadata)
        metadata = {k: v for k, v in metadata.items() if k != CHECKSUM_KEY}
    tensors = {name: np.frombuffer(data, dtype, (end - begin) // dtype.itemsize,
                                   data_start + begin).reshape(shape)
               for name, dtype, shape, begin, end in entries}
    return tensors, metadata


def _unique_keys(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        raise ValueError(f"duplicate keys {duplicates}")
    return dict(pairs)


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_entry(name, info, data_size):
    """(name, dtype, shape, begin, end) of a header entry, each checked."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"tensor {name!r}: expected an object with exactly dtype, shape "
                         f"and data_offsets, got {str(info)[:200]}")
    dtype = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise ValueError(f"tensor {name!r}: unknown dtype {str(info['dtype'])[:50]!r} "
                         f"(expected one of {sorted(DTYPES)})")
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise ValueError(f"tensor {name!r}: shape must be a list of integers >= 0, "
                         f"got {str(shape)[:200]}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets))
            or offsets[0] > offsets[1]):
        raise ValueError(f"tensor {name!r}: data_offsets must be [begin, end] with "
                         f"0 <= begin <= end, got {str(offsets)[:200]}")
    begin, end = offsets
    # the product stops growing past the data size, so a forged shape costs no time
    nbytes = 0 if 0 in shape else dtype.itemsize
    for n in shape:
        if nbytes > data_size:
            break
        nbytes *= n
    if nbytes != end - begin:
        raise ValueError(f"tensor {name!r}: {info['dtype']} of shape {str(shape)[:200]} does "
                         f"not fit data_offsets {offsets}")
    if end > data_size:
        raise ValueError(f"tensor {name!r} ends at byte {end} of the data, which has "
                         f"{data_size} bytes: the file is truncated")
    return name, dtype, tuple(shape), begin, end


def _verify_checksum(data, raw, metadata):
    """Compare metadata's checksum with the SHA-256 of data with the digest zeroed."""
    digest = metadata.get(CHECKSUM_KEY)
    if not isinstance(digest, str) or not _HEX_DIGEST.fullmatch(digest):
        raise ValueError("checksum mismatch: no valid checksum in the header (64 lowercase "
                         "hex digits expected)")
    at = raw.find(b'"' + digest.encode() + b'"') + 1  # the first occurrence, as specified
    if at == 0:
        raise ValueError("checksum mismatch: the checksum is not written plainly in the header")
    actual = hashlib.sha256(bytes(data[:8]) + raw[:at] + _PLACEHOLDER + raw[at + 64:])
    actual.update(memoryview(data)[8 + len(raw):])
    if actual.hexdigest() != digest:
        raise ValueError("checksum mismatch: the file was damaged or edited")


def atomic_save(path, write_to, *, temporary=None):
    """Create or replace the file ``path`` with what ``write_to(f)`` writes to ``f``.

    The bytes go to a temporary file in the same folder, are flushed to the disk (fsync)
    and then renamed over ``path``, and the folder is flushed too, so readers see the old
    file or the new one, never a part, and the new one survives a crash of the machine; if
    anything fails (an exception, Ctrl-C) the previous file is left intact and the
    temporary file is removed. ``temporary`` names that file (in path's folder) instead of
    a fresh one: fit's checkpoints use one fixed name, so the leftovers of writes killed
    half-way (SIGKILL) do not pile up. The file gets the permissions of any new file
    (0o666 less the umask), as ``open(path, "wb")`` would give it.
    """
    path = os.fsdecode(path)
    folder = os.path.dirname(os.path.abspath(path))
    if temporary is None:
        fd, tmp = tempfile.mkstemp(prefix=".cbn-", suffix=".tmp", dir=folder)
    else:
        tmp = os.fsdecode(temporary)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes it private (0o600)
            write_to(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _umask():
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _fsync_folder(folder):
    """Make a rename in folder durable; a no-op where folders cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

