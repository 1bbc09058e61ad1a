"""The C inference library cbn_model.c against Python, compiled the documented way.

tests/embedding/cmodel_run.c drives it: Python writes a model and inputs, the C program
writes outputs, and the bytes must equal predict_proba's (predict's for linear outputs).
Hostile files: a seeded mutator damages saved models in many ways; a sanitizer build of
the loader must return an error code (or load a valid model) for each, and Network.load
must raise ValueError, nothing else.
"""
import hashlib
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

import cbn
from cbn import _inference

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "embedding", "cmodel_run.c")
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")

pytestmark = pytest.mark.skipif(CC is None or sys.platform == "win32",
                                reason="needs a C compiler on a POSIX system")

CBN_OK, CBN_ERR_IO, CBN_ERR_DTYPE, CBN_ERR_ARGUMENT = 0, -1, -7, -8
CBN_ERR_FORMAT, CBN_ERR_VERSION, CBN_ERR_CHECKSUM = -3, -4, -5


def compile_driver(folder, name, extra=()):
    """The documented line: cc -O2 -std=c99 app.c "$CBN"/cbn_model.c -I"$CBN" -lm."""
    inc = cbn.get_include()
    exe = os.path.join(folder, name)
    cmd = [CC, "-O2", "-std=c99", *extra, DRIVER, os.path.join(inc, "cbn_model.c"),
           f"-I{inc}", "-o", exe, "-lm", "-lpthread"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return exe, proc


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    exe, proc = compile_driver(str(tmp_path_factory.mktemp("cmodel")), "cmodel_run",
                               ("-Wall", "-Wextra", "-Werror"))
    assert proc.returncode == 0, proc.stderr
    return exe


def run(exe, *args, **kwargs):
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=600,
                          **kwargs)


def trained(sizes, dtype, activation="relu", output="softmax", batchnorm=True, seed=0):
    """A network whose running statistics and parameters moved away from their initial values."""
    net = cbn.Network(sizes, activation=activation, output=output, batchnorm=batchnorm,
                      dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((64, sizes[0])).astype(dtype)
    if output == "softmax":
        y = rng.integers(0, sizes[-1], 64)
    elif output == "sigmoid":
        y = (rng.random((64, sizes[-1])) > 0.5).astype(dtype)
    else:
        y = rng.standard_normal((64, sizes[-1])).astype(dtype)
    net.fit(X, y, epochs=2, batch_size=16, verbose=0)
    return net


def python_outputs(net, X):
    if net.output == "linear":
        return net.predict(X).reshape(X.shape[0], -1)
    return net.predict_proba(X)


def c_outputs(exe, net, X, tmp_path):
    model, xfile, ofile = tmp_path / "m.safetensors", tmp_path / "x.bin", tmp_path / "o.bin"
    net.save(model)
    X = np.ascontiguousarray(X, net.dtype)
    xfile.write_bytes(X.tobytes())
    proc = run(exe, "predict", model, xfile, X.shape[0], ofile)
    assert proc.returncode == 0 and proc.stdout.strip() == "0", proc.stdout + proc.stderr
    return np.frombuffer(ofile.read_bytes(), net.dtype).reshape(X.shape[0], -1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation,output,batchnorm", [
    ("relu", "softmax", True), ("leaky_relu", "sigmoid", True), ("tanh", "linear", False),
    ("sigmoid", "softmax", False), ("linear", "sigmoid", False), ("tanh", "softmax", True),
])
def test_c_library_gives_pythons_bits(driver, tmp_path, dtype, activation, output, batchnorm):
    net = trained([23, 37, 19, 5], dtype, activation, output, batchnorm)
    X = np.random.default_rng(1).standard_normal((133, 23)).astype(dtype)
    expected = python_outputs(net, X)
    got = c_outputs(driver, net, X, tmp_path)
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_c_library_gives_pythons_bits_on_the_mnist_sized_network(driver, tmp_path, dtype):
    net = cbn.Network([784, 512, 256, 10], dtype=dtype, seed=3)
    rng = np.random.default_rng(2)
    for layer in net.layers[:-1]:   # running statistics away from 0 / 1
        layer.running_mean[...] = rng.standard_normal(layer.n_out)
        layer.running_var[...] = rng.uniform(0.5, 2.0, layer.n_out)
    X = rng.standard_normal((300, 784)).astype(dtype)
    assert c_outputs(driver, net, X, tmp_path).tobytes() == net.predict_proba(X).tobytes()


# Builds of cbn_model.c besides the documented line: the README's faster line (AVX2 and FMA,
# or AVX-512, compiled in where the CPU has them); AVX-512F compiled in (GCC's -mavx512f
# alone, without -mfma); an AVX2 + FMA base that takes the AVX-512 build at run time where
# the CPU has it; the documented line without the AVX-512 build;
# GNU mode, which contracts a*b + c where it can (the file's only multiply-adds are explicit,
# so the builds chosen at run time have nothing left to contract); the portable kernel
# without those builds (fma() lane by lane); no vector extensions at all (what a compiler
# without GCC's extensions runs). "native", "avx512" and "avx2" need a compiler that takes
# the flags (and a CPU that runs them).
BUILDS = {"native": ("-O3", "-march=native", "-ffp-contract=off"),
          "avx512": ("-O2", "-mavx512f", "-ffp-contract=off"),
          "avx2": ("-O2", "-mavx2", "-mfma", "-ffp-contract=off"),
          "no_avx512": ("-DCBN_NO_AVX512",),
          "gnu": ("-std=gnu99",),
          "portable": ("-DCBN_NO_DISPATCH",),
          "scalar": ("-DCBN_NO_VECTORS",)}
OPTIONAL_BUILDS = ("native", "avx512", "avx2")
NEEDS = {"avx512": {"avx512f"}, "avx2": {"avx2", "fma"}}   # CPU flags a build needs to run


def cpu_flags():
    """The CPU's feature flags (Linux), or an empty set."""
    if not os.path.exists("/proc/cpuinfo"):
        return set()
    with open("/proc/cpuinfo") as f:
        return next((set(line.split()) for line in f if line.startswith("flags")), set())


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    folder, exes = str(tmp_path_factory.mktemp("cmodel_builds")), {}
    for name, flags in BUILDS.items():
        if not NEEDS.get(name, set()) <= cpu_flags():
            exes[name] = None   # it would not run here
            continue
        exe, proc = compile_driver(folder, f"cmodel_{name}", ("-Wall", "-Wextra", "-Werror", *flags))
        if proc.returncode != 0 and name in OPTIONAL_BUILDS:
            exe = None   # the compiler does not take these flags here
        else:
            assert proc.returncode == 0, proc.stderr
        exes[name] = exe
    return exes


def build(builds, name):
    if builds[name] is None:
        pytest.skip(f"the compiler does not take {' '.join(BUILDS[name])} here")
    return builds[name]


@pytest.mark.parametrize("name", list(BUILDS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_other_builds_give_the_same_bits(builds, tmp_path, dtype, name):
    exe = build(builds, name)
    net = trained([41, 33, 17, 6], dtype, "tanh", "softmax", True)
    X = np.random.default_rng(5).standard_normal((77, 41)).astype(dtype)
    assert c_outputs(exe, net, X, tmp_path).tobytes() == net.predict_proba(X).tobytes()


def test_each_build_runs_the_instruction_set_it_should(driver, builds):
    flags = cpu_flags()
    x86 = platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= flags
    best = ("avx512" if "avx512f" in flags else "avx2") if x86 else "baseline"
    expected = {"documented": best, "native": best, "avx512": "avx512", "avx2": best,
                "gnu": best,
                "no_avx512": "avx2" if x86 else "baseline",
                "portable": "baseline", "scalar": "baseline"}
    for name, exe in [("documented", driver), *builds.items()]:
        if exe is not None:
            assert run(exe, "isa").stdout.strip() == expected[name], name


@pytest.mark.parametrize("name", ["documented", *BUILDS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_few_rows_in_c_give_the_bits_of_a_large_python_batch(driver, builds, tmp_path, dtype,
                                                             name):
    """1-4 rows take cbn_model.c's few-rows kernels (lanes across units: W packed in panels of
    64 bytes at load, the units past the last panel from tiles of W transposed in registers);
    5 rows and more the row kernels. 91 units: float32 4 panels of 16 side by side + 1 panel +
    a tile of 8 + 3; float64 2 x 4 panels of 8 + 3 panels + 3. K = 8 * 5 + 3."""
    exe = driver if name == "documented" else build(builds, name)
    net = trained([43, 91, 13, 4], dtype, "relu", "softmax", True)
    X = np.random.default_rng(6).standard_normal((150, 43)).astype(dtype)
    full = net.predict_proba(X)
    for n, start in [(1, 0), (1, 149), (2, 17), (3, 64), (4, 100), (5, 31)]:
        got = c_outputs(exe, net, X[start:start + n], tmp_path)
        assert got.tobytes() == full[start:start + n].tobytes(), (n, start)


def test_four_threads_on_one_model_give_the_same_bits(driver, tmp_path, dtype):
    net = trained([31, 40, 7], dtype)
    X = np.random.default_rng(4).standard_normal((517, 31)).astype(dtype)
    net.save(tmp_path / "m.safetensors")
    (tmp_path / "x.bin").write_bytes(X.tobytes())
    proc = run(driver, "threads", tmp_path / "m.safetensors", tmp_path / "x.bin", 517)
    assert proc.returncode == 0 and proc.stdout.strip() == "same", proc.stdout + proc.stderr


def test_misuse_gives_error_codes(driver, tmp_path):
    net = trained([6, 8, 3], np.float32)
    net.save(tmp_path / "m.safetensors")
    proc = run(driver, "errors", tmp_path / "m.safetensors")
    # wrong dtype, NULL model, NULL X, zero rows (fine), a missing file
    assert proc.stdout.split() == [str(c) for c in (CBN_ERR_DTYPE, CBN_ERR_ARGUMENT,
                                                    CBN_ERR_ARGUMENT, CBN_OK, CBN_ERR_IO)]


@pytest.mark.parametrize("n", [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 100003])
def test_sha256_matches_hashlib(driver, tmp_path, n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    (tmp_path / "d").write_bytes(data)
    assert run(driver, "sha256", tmp_path / "d").stdout.strip() == hashlib.sha256(data).hexdigest()
    assert _inference.sha256(np.frombuffer(data, np.uint8)) == hashlib.sha256(data).digest()


def test_edited_files_give_the_right_codes(driver, tmp_path):
    net = trained([6, 8, 3], np.float64)
    path = tmp_path / "m.safetensors"
    net.save(path)
    good = path.read_bytes()
    cases = {
        "flip": (good[:-3] + bytes([good[-3] ^ 1]) + good[-2:], CBN_ERR_CHECKSUM),
        "version": (good.replace(b'"format_version":"2"', b'"format_version":"3"'),
                    CBN_ERR_VERSION),
        "truncated": (good[:-8], CBN_ERR_CHECKSUM),  # the checksum comes first
        "huge header": (b"\xff" * 8 + good[8:], CBN_ERR_FORMAT),
        "empty": (b"", CBN_ERR_FORMAT),
    }
    files = []
    for name, (data, _) in cases.items():
        files.append(tmp_path / name.replace(" ", "_"))
        files[-1].write_bytes(data)
    proc = run(driver, "load", path, *files)
    assert proc.stdout.split() == [str(CBN_OK)] + [str(code) for _, code in cases.values()]


# ---------------------------------------------------------------------- hostile files

def mutations(good, rng, count):
    """Seeded damage: truncation, bit flips, byte insertions/deletions, edited header values,
    oversized header_len, huge shapes and offsets."""
    header_len = int.from_bytes(good[:8], "little")
    header = good[8:8 + header_len]
    numbers = [i for i in range(len(header)) if header[i:i + 1].isdigit()]
    edits = [(b'"F32"', b'"F64"'), (b'"F64"', b'"F32"'), (b'"F64"', b'"I64"'),
             (b'"relu"', b'"tanh"'), (b'"true"', b'"false"'), (b'"softmax"', b'"linear"'),
             (b"[", b"[[" ), (b'"shape":[', b'"shape":[18446744073709551615,'),
             (b'"data_offsets":[', b'"data_offsets":[9007199254740993,'),
             (b'"0.W"', b'"0.W","0.W"'), (b'"dtype"', b'"dtype":"F32","dtype"'),
             (b"p-17", b"p+99999"), (b"0x1.", b"1x1."), (b"\\\"", b"\\u0000"),
             (b'"layer_sizes":"', b'"layer_sizes":"0,'), (b"}", b"}}"), (b",", b",,")]
    for _ in range(count):
        data = bytearray(good)
        kind = rng.integers(9)
        if kind == 0:
            data = data[:rng.integers(len(data))]
        elif kind == 1:
            for _ in range(rng.integers(1, 4)):
                i = rng.integers(len(data))
                data[i] ^= 1 << rng.integers(8)
        elif kind == 2:
            i = rng.integers(len(data) + 1)
            data[i:i] = rng.integers(0, 256, rng.integers(1, 9), dtype=np.uint8).tobytes()
        elif kind == 3:
            i = rng.integers(len(data))
            del data[i:i + rng.integers(1, 9)]
        elif kind == 4:   # a digit of the header changed (shapes, offsets, sizes, checksum)
            i = 8 + numbers[rng.integers(len(numbers))]
            data[i] = ord("0") + rng.integers(10)
        elif kind == 5:
            lengths = [0, 1, 2, header_len + 1, len(good), 2**63, 2**64 - 1, 100_000_001]
            data[:8] = lengths[rng.integers(len(lengths))].to_bytes(8, "little")
        elif kind == 6:
            old, new = edits[rng.integers(len(edits))]
            data = bytearray(bytes(data).replace(old, new, 1))
        elif kind == 7:   # an edited header whose length field still matches (checksum fails)
            old, new = edits[rng.integers(len(edits))]
            h = header.replace(old, new, 1)
            h += b" " * (-(8 + len(h)) % 8)
            data = bytearray(len(h).to_bytes(8, "little") + h + good[8 + header_len:])
        else:             # the body of a valid header replaced by random bytes
            i = 8 + rng.integers(header_len)
            data[i:i + 16] = rng.integers(32, 127, 16, dtype=np.uint8).tobytes()
        yield bytes(data)


def sanitizer_driver(folder):
    exe, proc = compile_driver(folder, "cmodel_run_asan",
                               ("-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"))
    if proc.returncode != 0:
        return None, proc.stderr
    probe = run(exe, "sha256", exe)   # links and runs (some systems lack the runtime)
    return (exe if probe.returncode == 0 else None), probe.stderr


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(12)
    files = []
    nets = [trained([5, 6, 3], np.float32), trained([4, 7, 2], np.float64, "tanh", "sigmoid"),
            trained([3, 5, 4, 2], np.float64, "leaky_relu", "linear", batchnorm=False)]
    per_net = 1000 if os.environ.get("CI") else 400
    for n, net in enumerate(nets):
        net.save(folder / f"good{n}.safetensors")
        good = (folder / f"good{n}.safetensors").read_bytes()
        for i, data in enumerate(mutations(good, rng, per_net)):
            path = folder / f"m{n}_{i}.bin"
            path.write_bytes(data)
            files.append(path)
    return folder, files


def test_sanitized_loader_survives_mutated_files(hostile_files, tmp_path):
    exe, why = sanitizer_driver(str(tmp_path))
    if exe is None:
        pytest.skip(f"the compiler cannot build with -fsanitize=address,undefined: {why[-300:]}")
    folder, files = hostile_files
    codes = []
    for start in range(0, len(files), 500):   # a few processes, not one per file
        proc = run(exe, "load", *files[start:start + 500],
                   env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
                        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"})
        assert proc.returncode == 0 and "runtime error" not in proc.stderr, proc.stderr[-3000:]
        assert "Sanitizer" not in proc.stderr, proc.stderr[-3000:]
        codes += [int(c) for c in proc.stdout.split()]
    assert len(codes) == len(files)
    valid = {CBN_OK, CBN_ERR_FORMAT, CBN_ERR_VERSION, CBN_ERR_CHECKSUM, -6}
    assert set(codes) <= valid
    assert codes.count(CBN_OK) < len(codes) // 10   # the mutator damages almost every file


def test_network_load_refuses_mutated_files_with_value_error(hostile_files):
    folder, files = hostile_files
    loaded = 0
    for path in files:
        try:
            cbn.Network.load(path)
            loaded += 1
        except ValueError:
            pass
    assert loaded < len(files) // 10
