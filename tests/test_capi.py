"""cbn's C-level API (cbn._capi) against the Python kernels (cbn._kernels).

1. Every entry point, called through its exported function pointer (ctypes), gives exactly
   the Python wrapper's results, and rejects bad sizes and scalars with its status code.
2. A C extension that includes the generated header and a Cython extension that cimports
   cbn are compiled now, against the cbn that is imported, and give the same results.
"""
import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import cbn
from cbn import _capi, _kernels

EMBEDDING = Path(__file__).parent / "embedding"

# The status codes documented in _capi.pxd (the C consumer checks the header agrees).
STATUS = {"OK": 0, "SIZE": -1, "ACTIVATION": -2, "SLOPE": -3, "EPS": -4, "MOMENTUM": -5,
          "LABEL": -6, "STEP": -7}
LOSSES = ("softmax_cross_entropy", "sigmoid_binary_cross_entropy", "mean_squared_error")
LEAKY = _kernels.ACTIVATIONS["leaky_relu"]
SUFFIX = {np.float32: "f32", np.float64: "f64"}


# ---- 1. every entry point through its function pointer ----

_C_TYPES = {"int": ctypes.c_int, "double": ctypes.c_double, "Py_ssize_t": ctypes.c_ssize_t,
            "PY_LONG_LONG": ctypes.c_longlong, "char const *": ctypes.c_char_p}


def c_function(name):
    """The C function `name` of cbn._capi, typed from the signature its capsule carries."""
    capsule = _capi.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    signature = get_name(capsule)  # e.g. b"int (double *, double const *, Py_ssize_t, double)"
    returns, params = re.fullmatch(r"(.+?) ?\((.*)\)", signature.decode()).groups()
    argtypes = [ctypes.c_void_p if p.endswith("*") else _C_TYPES[p]
                for p in params.split(", ") if p != "void"]
    return ctypes.CFUNCTYPE(_C_TYPES[returns], *argtypes)(get_pointer(capsule, signature))


def cases(rng, dtype):
    """name -> (arrays, Python scalars, C sizes and scalars), arrays in the kernels' order."""
    N, D, n = 6, 5, 11

    def data(*shape, positive=False, of=dtype):
        x = rng.standard_normal(shape)
        return (np.abs(x) + 0.5 if positive else x).astype(of)

    def stats(positive=False):
        return data(D, positive=positive, of=np.float64)

    act, slope, eps, momentum = LEAKY, 0.2, 1e-3, 0.1
    labels = rng.integers(0, D, N).astype(np.intp)
    Y = rng.uniform(size=(N, D)).astype(dtype)
    return {
        "bias_activation_forward": ([data(N, D), data(N, D), data(D)],
                                    (act, slope), (N, D, act, slope)),
        "bias_activation_backward": ([data(N, D), data(D), data(N, D), data(N, D)],
                                     (act, slope), (N, D, act, slope)),
        "batchnorm_activation_forward": (
            [data(N, D), stats(), stats(), stats(), data(N, D), data(D), data(D)],
            (eps, act, slope), (N, D, eps, act, slope)),
        "batchnorm_activation_backward": (
            [data(N, D), data(D), data(D), data(N, D), data(N, D), data(N, D), data(D),
             stats(), stats(positive=True)],
            (act, slope), (N, D, act, slope)),
        "batchnorm_activation_inference": (
            [data(N, D), data(N, D), data(D), data(D), data(D), data(D, positive=True)],
            (eps, act, slope), (N, D, eps, act, slope)),
        "batchnorm_update_running": (
            [data(D), data(D, positive=True), stats(), stats(positive=True)],
            (N, momentum), (N, D, momentum)),
        "softmax_cross_entropy": ([data(N, D), data(N, D), data(D), labels], (), (N, D)),
        "softmax_forward": ([data(N, D), data(N, D), data(D)], (), (N, D)),
        "sigmoid_binary_cross_entropy": ([data(N, D), data(N, D), data(D), Y], (), (N, D)),
        "mean_squared_error": ([data(N, D), data(N, D), data(D), data(N, D)], (), (N, D)),
        "sgd_update": ([data(n), data(n)], (0.1,), (n, 0.1)),
        "momentum_update": ([data(n), data(n), data(n)], (0.1, 0.9), (n, 0.1, 0.9)),
        "rmsprop_update": ([data(n), data(n, positive=True), data(n)],
                           (0.1, 0.9, 1e-8), (n, 0.1, 0.9, 1e-8)),
        "adam_update": ([data(n), data(n), data(n, positive=True), data(n)],
                        (0.1, 0.9, 0.999, 1e-8, 3), (n, 0.1, 0.9, 0.999, 1e-8, 3)),
    }


KERNELS = sorted(cases(np.random.default_rng(0), np.float64))


def call_c(name, dtype, arrays, c_scalars):
    """Call cbn_<name>_<f32|f64> on the arrays; return (status, loss or None)."""
    loss = ctypes.c_double(np.nan)
    pointers = [a.ctypes.data for a in arrays]
    if name in LOSSES:
        pointers.insert(0, ctypes.addressof(loss))
    status = c_function(f"cbn_{name}_{SUFFIX[dtype]}")(*pointers, *c_scalars)
    return status, (loss.value if name in LOSSES else None)


def test_capi_exports_every_kernel_in_both_precisions():
    expected = {f"cbn_{name}_{s}" for name in KERNELS for s in SUFFIX.values()}
    assert set(_capi.__pyx_capi__) == expected | {"cbn_version", "cbn_api_version"}


def test_version_functions():
    assert c_function("cbn_version")() == cbn.__version__.encode()
    assert c_function("cbn_api_version")() >= 1


@pytest.mark.parametrize("name", KERNELS)
def test_entry_point_matches_python_kernel(name, dtype, rng):
    arrays, py_scalars, c_scalars = cases(rng, dtype)[name]
    py_arrays = [a.copy() for a in arrays]
    c_arrays = [a.copy() for a in arrays]
    py_loss = getattr(_kernels, name)(*py_arrays, *py_scalars)
    status, c_loss = call_c(name, dtype, c_arrays, c_scalars)
    assert status == STATUS["OK"]
    assert c_loss == py_loss
    for got, expected in zip(c_arrays, py_arrays):
        np.testing.assert_array_equal(got, expected)
    assert any(not np.array_equal(a, b) for a, b in zip(c_arrays, arrays)), "nothing written"


# (kernel, C sizes and scalars that are wrong, expected status)
BAD_CALLS = [
    ("bias_activation_forward", (6, 5, 99, 0.0), "ACTIVATION"),
    ("bias_activation_forward", (6, 5, -1, 0.0), "ACTIVATION"),
    ("bias_activation_backward", (6, 5, LEAKY, -0.5), "SLOPE"),
    ("bias_activation_backward", (-1, 5, LEAKY, 0.1), "SIZE"),
    ("batchnorm_activation_forward", (0, 5, 1e-3, LEAKY, 0.2), "SIZE"),
    ("batchnorm_activation_forward", (6, 5, -1e-3, LEAKY, 0.2), "EPS"),
    ("batchnorm_activation_forward", (6, 5, float("nan"), LEAKY, 0.2), "EPS"),
    ("batchnorm_activation_backward", (6, 5, LEAKY, float("nan")), "SLOPE"),
    ("batchnorm_activation_inference", (6, -5, 1e-3, LEAKY, 0.2), "SIZE"),
    ("batchnorm_update_running", (1, 5, 0.1), "SIZE"),
    ("batchnorm_update_running", (6, 5, 1.5), "MOMENTUM"),
    ("softmax_forward", (6, 0), "SIZE"),
    ("mean_squared_error", (0, 5), "SIZE"),
    ("sgd_update", (-1, 0.1), "SIZE"),
    ("adam_update", (11, 0.1, 0.9, 0.999, 1e-8, 0), "STEP"),
]


@pytest.mark.parametrize("name, c_scalars, error", BAD_CALLS)
def test_entry_point_rejects_bad_scalars_and_writes_nothing(name, c_scalars, error, dtype, rng):
    arrays = cases(rng, dtype)[name][0]
    before = [a.copy() for a in arrays]
    status, _ = call_c(name, dtype, arrays, c_scalars)
    assert status == STATUS[error]
    for after, original in zip(arrays, before):
        np.testing.assert_array_equal(after, original)


def test_softmax_cross_entropy_rejects_labels_outside_the_classes(dtype, rng):
    arrays, _, c_scalars = cases(rng, dtype)["softmax_cross_entropy"]
    for bad in (-1, c_scalars[1]):
        arrays[3][2] = bad
        before = arrays[0].copy()
        assert call_c("softmax_cross_entropy", dtype, arrays, c_scalars)[0] == STATUS["LABEL"]
        np.testing.assert_array_equal(arrays[0], before)


# ---- 2. a C and a Cython consumer, compiled now ----

def have_c_compiler():
    if os.name == "nt":
        return True  # setuptools locates MSVC itself; it is not on PATH
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(cc.split()[0]) is not None


def load_extension(folder, name):
    path = folder / (name + sysconfig.get_config_var("EXT_SUFFIX"))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def consumers(tmp_path_factory):
    """tests/embedding/ built by its setup.py against the imported cbn (no extra paths)."""
    pytest.importorskip("Cython", reason="building the consumers needs Cython")
    if not have_c_compiler():
        pytest.skip("no C compiler on this machine")
    folder = tmp_path_factory.mktemp("consumers")
    for source in ("setup.py", "consumer_c.c", "consumer_cy.pyx"):
        shutil.copy(EMBEDDING / source, folder)
    # The build imports the same cbn as this test, wherever it was found (site-packages or src).
    cbn_parent = str(Path(cbn.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (cbn_parent, os.environ.get("PYTHONPATH")) if p))
    build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                           cwd=folder, env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    return {name: load_extension(folder, name) for name in ("consumer_c", "consumer_cy")}


def test_c_consumer_sees_the_header_constants_and_the_running_version(consumers):
    header_api, runtime_api, version, activations, statuses = consumers["consumer_c"].versions()
    assert header_api == runtime_api == c_function("cbn_api_version")()
    assert version == cbn.__version__
    names = ("linear", "relu", "leaky_relu", "tanh", "sigmoid")
    assert activations == tuple(_kernels.ACTIVATIONS[name] for name in names)
    assert statuses == (STATUS["OK"], STATUS["ACTIVATION"])
    assert consumers["consumer_cy"].versions() == (header_api, runtime_api)


def test_cython_cimports_the_public_and_the_old_name(consumers):
    # consumer_cy.pyx cimports cbn.capi (the public re-export of cbn/_capi.pxd) and cbn._capi
    assert consumers["consumer_cy"].old_name_versions() == consumers["consumer_cy"].versions()
    assert consumers["consumer_cy"].versions()[1] == c_function("cbn_api_version")()
    public = (Path(cbn.get_include()) / "capi.pxd").read_text()
    assert "from cbn._capi cimport *" in public


def batchnorm_inputs(rng, dtype, N=9, D=4):
    outputs = [np.zeros((N, D), dtype)] + [np.zeros(D) for _ in range(3)]  # A, mean, var, rstd
    inputs = [rng.standard_normal((N, D)).astype(dtype) * 3 + 1,
              rng.standard_normal(D).astype(dtype), rng.standard_normal(D).astype(dtype)]
    return outputs, inputs


@pytest.mark.parametrize("consumer", ["consumer_c", "consumer_cy"])
def test_consumer_batchnorm_forward_equals_python(consumers, consumer, dtype, rng):
    outputs, inputs = batchnorm_inputs(rng, dtype)
    scalars = (1e-5, _kernels.ACTIVATIONS["tanh"], 0.0)
    expected = [a.copy() for a in outputs]
    _kernels.batchnorm_activation_forward(*expected, *inputs, *scalars)
    if consumer == "consumer_c":
        forward = getattr(consumers[consumer], f"batchnorm_forward_{SUFFIX[dtype]}")
        assert forward(*outputs, *inputs, *scalars) == STATUS["OK"]
    else:
        consumers[consumer].batchnorm_forward(*outputs, *inputs, *scalars)
    for got, want in zip(outputs, expected):
        np.testing.assert_array_equal(got, want)
    assert np.abs(outputs[0]).max() > 0


@pytest.mark.parametrize("consumer", ["consumer_c", "consumer_cy"])
def test_consumer_adam_steps_equal_python(consumers, consumer, rng):
    state = [rng.standard_normal(13), np.zeros(13), np.zeros(13)]  # param, m, v
    expected = [a.copy() for a in state]
    for t in (1, 2, 3):
        grad = rng.standard_normal(13)
        _kernels.adam_update(*expected, grad, 0.01, 0.9, 0.999, 1e-8, t)
        assert consumers[consumer].adam_update_f64(*state, grad, 0.01, 0.9, 0.999, 1e-8, t) == 0
    for got, want in zip(state, expected):
        np.testing.assert_array_equal(got, want)
