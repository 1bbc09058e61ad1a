"""The model file, format 2 (safetensors): its exact layout, the safetensors package as an
oracle, bit-for-bit round trips, forged headers, and the format-1 files older versions wrote.
Hand-edited files and damage of every byte: test_failures.py."""
import hashlib
import json
import os
import struct

import numpy as np
import pytest

import cbn
from cbn import _model_file

DATA = os.path.join(os.path.dirname(__file__), "data")


def trained(optimizer="adam", dtype="float32", batchnorm=True, output="softmax", seed=0):
    rng = np.random.default_rng(seed)
    sizes = [5, 7, 6, 3]
    net = cbn.Network(sizes, optimizer=optimizer, dtype=dtype, batchnorm=batchnorm,
                      output=output, activation="leaky_relu", seed=seed, negative_slope=0.03)
    X = rng.standard_normal((40, 5))
    y = {"softmax": rng.integers(0, 3, 40), "sigmoid": rng.random((40, 3)) > 0.5,
         "linear": rng.standard_normal((40, 3))}[output]
    net.fit(X, y, epochs=2, batch_size=8)
    net.metadata = {"features": list("abcde"), "note": "ünïcödé \"quoted\" \\ " + "0" * 64}
    return net, X, y


def parse(blob):
    """The file by the specification alone: header length, header JSON, data section."""
    (n,) = struct.unpack("<Q", blob[:8])
    return n, json.loads(blob[8:8 + n]), blob[8 + n:]


def spec_checksum(blob):
    """SHA-256 of the file with the checksum's 64 digits replaced by '0's, as specified."""
    n, header, _ = parse(blob)
    digest = header["__metadata__"]["checksum"].encode()
    at = blob.index(b'"' + digest + b'"', 8) + 1
    assert at < 8 + n
    return hashlib.sha256(blob[:at] + b"0" * 64 + blob[at + 64:]).hexdigest()


# ----------------------------------------------------------------------------- the layout

@pytest.mark.parametrize("batchnorm", [True, False])
def test_the_file_is_laid_out_as_specified(tmp_path, dtype, batchnorm):
    net, _, _ = trained(dtype=dtype, batchnorm=batchnorm)
    net.save(tmp_path / "m.any-name")
    blob = (tmp_path / "m.any-name").read_bytes()
    n, header, data = parse(blob)
    assert (8 + n) % 8 == 0 and blob[8:9] == b"{"
    text = blob[8:8 + n].decode("ascii")
    assert text == text.rstrip() + " " * (len(text) - len(text.rstrip()))  # space-padded
    names = list(header)
    assert names[0] == "__metadata__"
    hidden = [0, 1]
    params = ([f"{l}.{p}" for l in hidden for p in (("W", "gamma", "beta") if batchnorm
                                                     else ("W", "b"))] + ["2.W", "2.b"])
    running = [f"{l}.running_{s}" for l in hidden for s in ("mean", "var")] if batchnorm else []
    optimizer = [f"optimizer.{s}.{p}" for s in ("m", "v") for p in params]
    assert names[1:] == params + running + optimizer
    assert params == list(net.parameters())
    code = {"float32": "F32", "float64": "F64"}[np.dtype(dtype).name]
    itemsize = np.dtype(dtype).itemsize
    position = 0
    for name in names[1:]:
        entry = header[name]
        assert entry["dtype"] == code
        begin, end = entry["data_offsets"]
        assert begin == position and end - begin == itemsize * int(np.prod(entry["shape"]))
        position = end
    assert position == len(data)
    assert header["0.W"]["shape"] == [7, 5] and header["2.b"]["shape"] == [3]
    meta = header["__metadata__"]
    assert meta == {
        "format": "cbn.Network", "format_version": "2", "dtype": np.dtype(dtype).name,
        "layer_sizes": "5,7,6,3", "activation": "leaky_relu", "output": "softmax",
        "batchnorm": "true" if batchnorm else "false", "bn_eps": "0x1.4f8b588e368f1p-17",
        "negative_slope": (0.03).hex(), "config": meta["config"], "checksum": meta["checksum"]}
    assert list(meta)[-1] == "checksum"
    assert meta["checksum"] == spec_checksum(blob)
    config = json.loads(meta["config"])
    assert config["optimizer"]["name"] == "adam" and config["metadata"] == net.metadata
    # the tensors' bytes, read by offset alone, are the network's arrays
    W = np.frombuffer(data, np.dtype(dtype).newbyteorder("<"),
                      offset=header["1.W"]["data_offsets"][0], count=6 * 7).reshape(6, 7)
    assert np.array_equal(W, net.layers[1].W)


def test_the_safetensors_package_reads_the_file(tmp_path, dtype):
    safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors absent")
    from safetensors import safe_open
    net, _, _ = trained(dtype=dtype)
    path = tmp_path / "m.safetensors"
    net.save(path)
    theirs = safetensors_numpy.load_file(path)
    ours = _model_file.network_tensors(net)
    assert sorted(theirs) == sorted(ours)
    for name, array in ours.items():
        assert theirs[name].dtype == array.dtype and np.array_equal(theirs[name], array), name
    with safe_open(path, "np") as f:
        metadata = f.metadata()
    assert metadata["format_version"] == "2" and metadata["checksum"] == spec_checksum(
        path.read_bytes())
    # and our reader reads what the package writes (no checksum: read(..., checksum=False))
    other = tmp_path / "theirs.safetensors"
    safetensors_numpy.save_file(ours, other, metadata={"k": "v"})
    tensors, meta = _model_file.read(other.read_bytes(), checksum=False)
    assert meta == {"k": "v"} and sorted(tensors) == sorted(ours)
    for name, array in ours.items():
        assert np.array_equal(tensors[name], array)


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "rmsprop", "adam"])
@pytest.mark.parametrize("batchnorm, output", [(True, "softmax"), (False, "sigmoid"),
                                               (True, "linear")])
def test_round_trip_is_bit_for_bit_and_training_resumes_identically(tmp_path, dtype, optimizer,
                                                                     batchnorm, output):
    net, X, y = trained(optimizer, dtype, batchnorm, output)
    path = tmp_path / "m.safetensors"
    net.save(path)
    loaded = cbn.Network.load(path)
    assert repr(loaded) == repr(net)
    for name in ("bn_momentum", "bn_eps", "negative_slope", "seed", "metadata"):
        assert getattr(loaded, name) == getattr(net, name), name
    ours, theirs = _model_file.network_tensors(net), _model_file.network_tensors(loaded)
    assert list(ours) == list(theirs)
    for name in ours:
        assert np.array_equal(ours[name], theirs[name]), name
    assert loaded.optimizer.t == net.optimizer.t
    assert loaded._rng.bit_generator.state == net._rng.bit_generator.state
    assert np.array_equal(loaded.predict(X), net.predict(X))
    if output != "linear":
        assert np.array_equal(loaded.predict_proba(X), net.predict_proba(X))
    # saving again gives the same bytes, and training goes on step for step
    loaded.save(tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()
    assert net.fit(X, y, epochs=2, batch_size=8)["loss"] == \
        loaded.fit(X, y, epochs=2, batch_size=8)["loss"]
    for name, array in net._arrays().items():
        assert np.array_equal(array, loaded._arrays()[name]), name


@pytest.mark.parametrize("name, layer_sizes, optimizer, dtype", [
    ("format1_float32_adam.npz", (4, 5, 3), "Adam", "float32"),
    ("format1_float64_momentum.npz", (4, 3, 2), "Momentum", "float64"),
])
def test_format1_files_written_by_cbn_0_1_still_load(tmp_path, name, layer_sizes, optimizer,
                                                     dtype):
    """tests/data holds files that cbn 0.1's own Network.save wrote (format 1, .npz)."""
    path = os.path.join(DATA, name)
    net = cbn.Network.load(path)
    assert net.layer_sizes == layer_sizes and type(net.optimizer).__name__ == optimizer
    assert np.dtype(net.dtype).name == dtype and net.optimizer.t == 10
    with np.load(path, allow_pickle=False) as archive:  # the oracle: the archive itself
        config = json.loads(str(archive["config"]))
        assert np.array_equal(net._params, archive["params"])
        assert np.array_equal(net._running, archive["running"])
        for state, array in net.optimizer.state.items():
            assert np.array_equal(array, archive[f"optimizer.{state}"])
    assert config["format_version"] == 1
    assert net._rng.bit_generator.state == config["rng_state"]
    assert net.metadata == config["metadata"]
    # save converts it to format 2, with the same state
    net.save(tmp_path / "converted.safetensors")
    again = cbn.Network.load(tmp_path / "converted.safetensors")
    for key, array in net._arrays().items():
        assert np.array_equal(array, again._arrays()[key]), key
    X = np.random.default_rng(0).standard_normal((9, layer_sizes[0]))
    assert np.array_equal(again.predict_proba(X), net.predict_proba(X))


def test_pickles_of_format1_bytes_still_unpickle():
    """A Network pickled by cbn 0.1 carries format-1 bytes to cbn.network._network_from_bytes."""
    from cbn.network import _network_from_bytes
    with open(os.path.join(DATA, "format1_float32_adam.npz"), "rb") as f:
        net = _network_from_bytes(f.read())
    assert net.layer_sizes == (4, 5, 3) and net.optimizer.t == 10


# ----------------------------------------------------------------------------- forged files
# Built by hand, with the checksum computed here from the specification, so each forgery
# reaches the check it is aimed at.

def assemble(header, data=b"", *, pad=True):
    """A file from a header (dict, or JSON text as bytes) and a data section, checksummed."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        text += b" " * (-(8 + len(text)) % 8)
    blob = struct.pack("<Q", len(text)) + text + data
    if b'"' + b"0" * 64 + b'"' in text:
        at = blob.index(b'"' + b"0" * 64 + b'"') + 1
        digest = hashlib.sha256(blob).hexdigest().encode()
        blob = blob[:at] + digest + blob[at + 64:]
    return blob


def meta(**extra):
    return {"checksum": "0" * 64, **extra}


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


FORGED = {  # name: (file bytes, expected message)
    "empty": (b"", "too short"),
    "seven bytes": (b"\x02\0\0\0\0\0\0", "too short"),
    "header_len 0": (b"\0" * 16, "header length 0"),
    "header_len 1": (b"\x01" + b"\0" * 7 + b"{", "header length 1"),
    "header_len over 100 MB": (struct.pack("<Q", 100_000_001) + b"{}", "header length"),
    "header_len 2**64 - 1": (b"\xff" * 8 + b"{}      ", "header length"),
    "header_len past the end": (struct.pack("<Q", 4096) + b"{}      ", "runs past the end"),
    "header not an object": (assemble(b'["__metadata__"]'), "does not start with '{'"),
    "leading space": (assemble(b' {"__metadata__":{"checksum":"' + b"0" * 64 + b'"}}'),
                      "does not start with '{'"),
    "not JSON": (assemble(b"{nope}"), "not valid JSON"),
    "not UTF-8": (assemble(b'{"\xff":1}'), "not valid JSON"),
    "NaN constant": (assemble(b'{"__metadata__":{"checksum":"' + b"0" * 64 + b'"},"x":NaN}'),
                     "NaN is not JSON"),
    "trailing garbage": (assemble(b'{"__metadata__":{"checksum":"' + b"0" * 64 + b'"}}\0\0\0'),
                         "not valid JSON"),
    "duplicate tensor": (assemble(b'{"__metadata__":{"checksum":"' + b"0" * 64 + b'"},'
                                  b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                                  b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
                                  b"\0" * 8), "duplicate keys ['a']"),
    "duplicate metadata key": (assemble(b'{"__metadata__":{"checksum":"' + b"0" * 64 +
                                        b'","k":"1","k":"2"}}'), "duplicate keys ['k']"),
    "metadata not strings": (assemble({"__metadata__": {**meta(), "n": 1}}), "strings to strings"),
    "no checksum": (assemble({"__metadata__": {"k": "v"}}), "no valid checksum"),
    "uppercase checksum": (assemble({"__metadata__": {"checksum": "A" * 64}}),
                           "no valid checksum"),
    "checksum escaped": (assemble(b'{"__metadata__":{"checksum":"\\u0030' + b"0" * 63 + b'"}}'),
                         "not written plainly"),
    "wrong checksum": (assemble({"__metadata__": {"checksum": "1" * 64}}), "checksum mismatch"),
    "unknown dtype": (assemble({"__metadata__": meta(), "a": entry("F8")}, b"\0" * 8),
                      "unknown dtype 'F8'"),
    "extra entry field": (assemble({"__metadata__": meta(), "a": {**entry(), "x": 1}},
                                   b"\0" * 8), "exactly dtype, shape and data_offsets"),
    "negative dim": (assemble({"__metadata__": meta(), "a": entry(shape=(-2,))}, b"\0" * 8),
                     "shape must be"),
    "bool dim": (assemble({"__metadata__": meta(), "a": entry(shape=(True, 2))}, b"\0" * 8),
                 "shape must be"),
    "float offsets": (assemble({"__metadata__": meta(), "a": entry(offsets=(0.0, 8))},
                               b"\0" * 8), "data_offsets must be"),
    "reversed offsets": (assemble({"__metadata__": meta(), "a": entry(offsets=(8, 0))},
                                  b"\0" * 8), "data_offsets must be"),
    "huge shape": (assemble({"__metadata__": meta(), "a": entry(shape=(10**12, 10**12))},
                            b"\0" * 8), "does not fit"),
    "a million dims": (assemble({"__metadata__": meta(), "a": entry(shape=(2,) * 10**6)},
                                b"\0" * 8), "does not fit"),
    "shape and offsets disagree": (assemble({"__metadata__": meta(), "a": entry(shape=(3,))},
                                            b"\0" * 8), "does not fit"),
    "past the end": (assemble({"__metadata__": meta(), "a": entry(offsets=(0, 8))}, b"\0" * 4),
                     "truncated"),
    "gap": (assemble({"__metadata__": meta(), "a": entry(shape=(1,), offsets=(4, 8))},
                     b"\0" * 8), "a gap or an overlap"),
    "overlap": (assemble({"__metadata__": meta(), "a": entry(), "b": entry(offsets=(4, 12))},
                         b"\0" * 12), "a gap or an overlap"),
    "bytes after the data": (assemble({"__metadata__": meta(), "a": entry()}, b"\0" * 16),
                             "8 bytes follow the last tensor"),
}


@pytest.mark.parametrize("blob, message", FORGED.values(), ids=list(FORGED))
def test_forged_files_are_refused(tmp_path, blob, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        _model_file.read(blob)
    path = tmp_path / "forged.safetensors"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match="^path: "):
        cbn.Network.load(path)


def test_a_valid_safetensors_file_that_is_no_cbn_model_is_refused(tmp_path):
    blob = assemble({"__metadata__": meta(format="other"), "a": entry()}, b"\0" * 8)
    assert list(_model_file.read(blob)[0]) == ["a"]  # a fine file...
    (tmp_path / "other.safetensors").write_bytes(blob)
    with pytest.raises(ValueError, match="expected a cbn.Network file, got format 'other'"):
        cbn.Network.load(tmp_path / "other.safetensors")  # ...but not a model


def test_forged_layer_sizes_allocate_nothing_big(tmp_path):
    """A checksummed file claiming a 10^6 x 10^6 network refuses before allocating it."""
    net, _, _ = trained()
    tensors = _model_file.network_tensors(net)
    metadata = _model_file.network_metadata(net)
    config = json.loads(metadata["config"])
    config["layer_sizes"] = [10**6, 10**6, 3]
    metadata.update(config=json.dumps(config), layer_sizes="1000000,1000000,3")
    with open(tmp_path / "big.safetensors", "wb") as f:
        _model_file.write(f, tensors, metadata)
    with pytest.raises(ValueError, match="more parameters than the file holds"):
        cbn.Network.load(tmp_path / "big.safetensors")


# ----------------------------------------------------------------------------- generic layer

def test_generic_write_and_read_keep_any_tensors_and_metadata():
    import io
    tensors = {"f16": np.arange(3, dtype=np.float16), "i64": np.array([-1, 2**62]),
               "u8": np.frombuffer(b"\x00\xff\x07", np.uint8), "flag": np.array([True, False]),
               "scalar": np.float64(2.5), "empty": np.zeros((0, 3), np.float32),
               "big-endian": np.arange(4, dtype=">i4"), "fortran": np.asfortranarray(
                   np.arange(6.0).reshape(2, 3))}
    for checksum in (True, False):
        f = io.BytesIO()
        _model_file.write(f, tensors, {"note": "é"}, checksum=checksum)
        blob = f.getvalue()
        assert (8 + struct.unpack("<Q", blob[:8])[0]) % 8 == 0
        got, metadata = _model_file.read(blob, checksum=checksum)
        assert metadata == {"note": "é"} and list(got) == list(tensors)
        for name, array in tensors.items():
            assert got[name].shape == np.shape(array) and np.array_equal(got[name], array)
            assert got[name].dtype == np.asarray(array).dtype.newbyteorder("<")
            assert not got[name].flags.writeable
    with pytest.raises(TypeError, match="complex128"):
        _model_file.write(io.BytesIO(), {"c": np.zeros(2, complex)})
    with pytest.raises(TypeError, match="metadata"):
        _model_file.write(io.BytesIO(), {}, {"n": 1})
    with pytest.raises(ValueError, match="checksum"):
        _model_file.write(io.BytesIO(), {}, {"checksum": "x"})


def test_atomic_save_replaces_or_keeps(tmp_path):
    path = tmp_path / "f.bin"
    _model_file.atomic_save(path, lambda f: f.write(b"one"))
    _model_file.atomic_save(os.fsencode(path), lambda f: f.write(b"two"))  # bytes paths too
    assert path.read_bytes() == b"two"

    def fail(f):
        f.write(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        _model_file.atomic_save(path, fail)
    assert path.read_bytes() == b"two" and os.listdir(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_get_the_permissions_of_any_new_file(tmp_path, umask):
    # a temporary file from mkstemp is private (0o600); the saved model must not stay so
    previous = os.umask(umask)
    try:
        cbn.Network([3, 4, 2], seed=0).save(tmp_path / "m.safetensors")
        _model_file.atomic_save(tmp_path / "other", lambda f: f.write(b"x"), temporary=tmp_path / "t")
    finally:
        os.umask(previous)
    for name in ("m.safetensors", "other"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask
