"""The model file: safetensors, written and read in pure Python (DESIGN.md §9).

A :class:`~cbn.Network` as tensors and metadata (format 2), on the generic safetensors
layer of cbn._safetensors (:func:`write`, :func:`read`, :func:`atomic_save`, re-exported
here), and the reader of the format-1 ``.npz`` archives older versions wrote (detected by
content). Files that hold a network and more (checkpoints) reuse it:
``write(f, {**network_tensors(net), **extra}, {**network_metadata(net), **more})``, then
:func:`read` and :func:`network_from_contents` on the network's part. Network's ``save``
and ``load`` are the :class:`ModelFileMixin` at the end.

Format 2, exactly (the C loader ``cbn_model.c`` reads the same files)::

    u64 header_len (little-endian) | header_len bytes of UTF-8 JSON, padded with spaces so
    that 8 + header_len is a multiple of 8 | the tensors' bytes (little-endian, C order)

The JSON holds ``"__metadata__"`` first (a string -> string map), then one entry
``{"dtype": "F32"|"F64", "shape": [...], "data_offsets": [begin, end]}`` per tensor: the
parameters in ``parameters()`` order ("0.W", "0.gamma", "0.beta" or "0.b", ..., "L.W",
"L.b"), then "l.running_mean", "l.running_var" per batch-norm layer l, then
"optimizer.<state>.<parameter name>" per optimizer state and parameter. Offsets count from
the start of the data section; the tensors follow each other in that order, without gaps,
the last one ending at the end of the file. The metadata holds "format" ("cbn.Network"),
"format_version" ("2"), "dtype", "layer_sizes" ("784,512,10"), "activation", "output",
"batchnorm" ("true"/"false"), "bn_eps" and "negative_slope" (``float.hex``), "config" (the
full configuration as JSON text: optimizer, rng state, user metadata, ...) and "checksum":
64 lowercase hex digits, the SHA-256 of the whole file with those 64 digits replaced by
64 ASCII '0's.
"""
import hashlib
import io
import json
import math
import os

import numpy as np

from cbn import _distributed
from cbn import _validation as check
# also called as _model_file.write/read/atomic_save (the checkpoint, the ONNX export, tests)
from cbn._safetensors import atomic_save, read, write
from cbn.optimizers import OPTIMIZERS

FORMAT_NAME = "cbn.Network"
FORMAT_VERSION = 2
_NPZ_MAGIC = b"PK\x03\x04"  # every format-1 file is a zip archive
# the metadata keys format 2 repeats from the configuration, for readers without a JSON parser
FLAT_KEYS = ("dtype", "layer_sizes", "activation", "output", "batchnorm", "bn_eps",
             "negative_slope")


# ================================================================== cbn networks

def network_tensors(net):
    """The network's tensors by name, in the file's order (views of its live buffers)."""
    tensors = net.parameters()
    for layer in net.layers:
        if layer.batchnorm:
            tensors[f"{layer.index}.running_mean"] = layer.running_mean
            tensors[f"{layer.index}.running_var"] = layer.running_var
    for state in net.optimizer.state_names:
        flat, offset = net.optimizer.state[state], 0
        for l, name, shape in net._layout():  # the order of the parameter buffer
            size = math.prod(shape)
            tensors[f"optimizer.{state}.{l}.{name}"] = flat[offset:offset + size].reshape(shape)
            offset += size
    return tensors


def network_metadata(net):
    """The network's format-2 metadata, without the checksum (:func:`write` adds it)."""
    return {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        **_flat_metadata(net),
        "config": json.dumps(net._config()),
    }


def _flat_metadata(net):
    return {
        "dtype": np.dtype(net.dtype).name,
        "layer_sizes": ",".join(str(n) for n in net.layer_sizes),
        "activation": net.activation,
        "output": net.output,
        "batchnorm": "true" if net.batchnorm else "false",
        "bn_eps": float(net.bn_eps).hex(),
        "negative_slope": float(net.negative_slope).hex(),
    }


def write_network(f, net):
    """Write ``net`` in format 2 to the binary file object ``f``."""
    write(f, network_tensors(net), network_metadata(net))


def network_to_bytes(net):
    """The bytes of ``net``'s format-2 file (what pickling carries)."""
    f = io.BytesIO()
    write_network(f, net)
    return f.getvalue()


def inference_bytes(net):
    """A format-2 file of ``net`` without its optimizer state: what inference reads
    (:meth:`Network.freeze` hands it to the C library's loader)."""
    tensors = {name: value for name, value in network_tensors(net).items()
               if not name.startswith("optimizer.")}
    f = io.BytesIO()
    write(f, tensors, network_metadata(net))
    return f.getvalue()


def save_network(net, path):
    """``Network.save``: write format 2 to ``path`` atomically."""
    path = check.check_path(path)
    atomic_save(path, lambda f: write_network(f, net))


def read_model_file(path):
    """(path, the file's bytes): a TypeError names a path that is not a file name, a
    ValueError a file that cannot be read; FileNotFoundError stays itself."""
    path = check.check_path(path)
    try:
        with open(path, "rb") as f:
            return path, f.read()
    except FileNotFoundError:
        raise
    except Exception as exc:  # a folder, a device that fails, ...
        raise ValueError(f"path: {os.fspath(path)!r} is not a readable cbn model file "
                         f"({exc})") from None


def load_network(cls, path):
    """``Network.load``: read a format-2 (or format-1) file; ValueErrors name the path."""
    path, data = read_model_file(path)
    try:
        return network_from_bytes(cls, data)
    except ValueError as exc:
        raise ValueError(f"path: {os.fspath(path)!r}: {exc}") from None
    except (KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        raise ValueError(f"path: {os.fspath(path)!r} is not a valid cbn model file "
                         f"({type(exc).__name__}: {exc})") from None


def file_format(prefix):
    """1 or 2 if the first bytes of a file look like that cbn format, else None."""
    if prefix[:4] == _NPZ_MAGIC:
        return 1
    if prefix[8:9] == b"{":
        return 2
    return None


def network_from_bytes(cls, data):
    """A ``cls`` (Network) from the bytes of a format-2 or format-1 file."""
    if file_format(bytes(data[:9])) == 1:
        return _network_from_format1(cls, data)
    try:
        tensors, metadata = read(data)
    except ValueError as exc:
        if str(exc).startswith("checksum mismatch"):
            raise
        raise ValueError(f"not a readable cbn model file ({exc})") from None
    return network_from_contents(cls, tensors, metadata)


def network_from_contents(cls, tensors, metadata):
    """A ``cls`` (Network) from the tensors and metadata :func:`read` returned.

    Exactly the model's tensors must be present, in the file's order; metadata keys other
    than the format's are ignored. A file that stores more (a checkpoint) passes the model's
    part: ``{k: v for k, v in tensors.items() if k in ours}``.
    """
    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"expected a {FORMAT_NAME} file, got format {metadata.get('format')!r}")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(f"expected format version {FORMAT_VERSION}, "
                         f"got {metadata.get('format_version')!r}")
    missing = [key for key in (*FLAT_KEYS, "config") if key not in metadata]
    if missing:
        raise ValueError(f"the metadata lacks {missing}")
    try:
        config = json.loads(metadata["config"])
    except ValueError as exc:
        raise ValueError(f"the configuration is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError("the configuration is not a JSON object")
    # a forged configuration must not make the constructor allocate more than the file holds
    _check_fits(config, sum(t.size for t in tensors.values()))
    net = _network_from_config(cls, config)
    expected = network_tensors(net)
    if list(tensors) != list(expected):
        missing = [name for name in expected if name not in tensors]
        extra = [name for name in tensors if name not in expected]
        if missing or extra:
            raise ValueError(f"the tensors do not match the configuration: missing "
                             f"{missing[:10]}, unexpected {extra[:10]}")
        raise ValueError(f"the tensors are not stored in the order {list(expected)}")
    for name, target in expected.items():
        _copy_checked(name, tensors[name], target)
    for layer in net.layers:
        if layer.batchnorm and (layer.running_var < 0).any():
            raise ValueError(f"tensor '{layer.index}.running_var' holds negative variances")
    for key, value in _flat_metadata(net).items():
        if metadata[key] != value:
            raise ValueError(f"metadata {key!r} is {metadata[key]!r}, but the configuration "
                             f"says {value!r}")
    _restore_state(net, config)
    return net


def _check_fits(config, n_values):
    sizes = check.check_layer_sizes(config["layer_sizes"])
    weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    if weights > n_values:
        raise ValueError(f"layer_sizes {list(sizes)} need more parameters than the file holds")


def _network_from_config(cls, config):
    """A fresh network of the configuration's architecture, hyper-parameters and optimizer."""
    opt = config["optimizer"]
    if opt["name"] not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {opt['name']!r}")
    return cls(config["layer_sizes"], activation=config["activation"],
               output=config["output"], batchnorm=config["batchnorm"],
               optimizer=OPTIMIZERS[opt["name"]](**opt["config"]), dtype=config["dtype"],
               bn_momentum=config["bn_momentum"], bn_eps=config["bn_eps"],
               negative_slope=config["negative_slope"], seed=config["seed"])


def _copy_checked(name, source, target):
    if source.shape != target.shape or source.dtype != target.dtype:
        raise ValueError(f"array {name!r}: expected {target.dtype} of shape {target.shape}, "
                         f"got {source.dtype} of shape {source.shape}")
    if not np.isfinite(source).all():
        raise ValueError(f"array {name!r} holds NaN or infinity")
    target[...] = source


def _restore_state(net, config):
    """Step count, random generator and user metadata from the configuration."""
    net.optimizer.t = check.check_int("optimizer step count", config["optimizer"]["t"], 0)
    net._rng.bit_generator.state = config["rng_state"]
    net.metadata = config.get("metadata", {})


# ================================================================== format 1 (read only)

def _network_from_format1(cls, data):
    """Format 1: an uncompressed np.savez archive of 'config' (JSON text), 'params' (the flat
    parameter buffer), 'running' and 'optimizer.<state>' arrays, with a checksum in config."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            contents = {name: archive[name] for name in archive.files}
    except Exception as exc:  # zip, zlib, header and pickle-refusal errors all mean "damaged"
        raise ValueError(f"not a readable cbn model file ({exc})") from None
    if "config" not in contents or contents["config"].dtype.kind != "U":
        raise ValueError("no cbn configuration in the file")
    config = json.loads(str(contents.pop("config")))
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        got = config.get("format") if isinstance(config, dict) else None
        raise ValueError(f"expected a {FORMAT_NAME} file, got format {got!r}")
    if config.get("format_version") != 1:
        raise ValueError(f"expected format version 1 in an .npz file, "
                         f"got {config.get('format_version')!r}")
    if config.pop("checksum", None) != format1_checksum(config, contents):
        raise ValueError("checksum mismatch: the file was damaged or edited")
    if "params" not in contents:
        raise ValueError("no 'params' array in the file")
    _check_fits(config, contents["params"].size)
    net = _network_from_config(cls, config)
    expected = net._arrays()  # the flat buffers, as format 1 stored them
    if set(contents) != set(expected):
        raise ValueError(f"expected arrays {sorted(expected)}, got {sorted(contents)}")
    for name, target in expected.items():
        _copy_checked(name, contents[name], target)
    _restore_state(net, config)
    return net


def format1_checksum(config, arrays):
    """Format 1's SHA-256 over the configuration and the names, dtypes, shapes and bytes of
    the arrays."""
    # the JSON text round-trips exactly (key order included), unlike sorting mixed-type keys
    digest = hashlib.sha256(json.dumps(config).encode())
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


class ModelFileMixin:
    """``save``, ``load`` and the byte form pickling uses; mixed into :class:`cbn.Network`."""

    def _config(self):
        return {
            "layer_sizes": list(self.layer_sizes),
            "activation": self.activation,
            "output": self.output,
            "batchnorm": self.batchnorm,
            "dtype": np.dtype(self.dtype).name,
            "bn_momentum": self.bn_momentum,
            "bn_eps": self.bn_eps,
            "negative_slope": self.negative_slope,
            "seed": self.seed,
            "optimizer": {"name": type(self.optimizer).__name__.lower(),
                          "config": self.optimizer.get_config(), "t": self.optimizer.t},
            "rng_state": self._rng.bit_generator.state,
            "metadata": self.metadata,
        }

    def _arrays(self):
        arrays = {"params": self._params, "running": self._running}
        arrays.update({f"optimizer.{k}": v for k, v in self.optimizer.state.items()})
        return arrays

    def save(self, path):
        """Save weights, batch-norm statistics, optimizer state and hyper-parameters.

        The file is safetensors (format 2, whatever the file name): the tensors under their
        :meth:`parameters` names, the running statistics and the optimizer state, with the
        configuration, the format version and a SHA-256 checksum in its metadata; the
        ``safetensors`` package and the C library (``cbn_model.h``) read it. It is written to
        a temporary file in the same folder and renamed over ``path``, so a failed save
        leaves any previous file intact. With comm, collective: rank 0 writes, every rank
        raises if that fails.
        """
        if self._sync is not None:
            return _distributed.save(self._sync, self, path)
        return self._save_local(path)

    def _save_local(self, path):
        save_network(self, path)

    def _to_bytes(self):
        if self._sync is not None and self._sync.state_partial:
            raise RuntimeError(
                "optimizer state: under comm each rank holds only its own part of it after a "
                "training step; call net.gather_optimizer_state() on every rank (collective) "
                "before copying or pickling the network (save and checkpoints do it "
                "themselves)")
        return network_to_bytes(self)

    @classmethod
    def _from_bytes(cls, data):
        return network_from_bytes(cls, data)

    @classmethod
    def load(cls, path, comm=None):
        """Load a network saved by :meth:`save`; never unpickles anything.

        Reads format 2 (safetensors) and the ``.npz`` files of format 1, told apart by their
        content. With comm, collective: rank 0 reads the file and every rank gets the
        network, bound to comm.

        Raises ValueError naming the path if the file is not a cbn network, is truncated,
        damaged or edited, or was written by an unknown format version.
        """
        if comm is not None:
            return _distributed.load(cls, path, comm)
        return load_network(cls, path)
