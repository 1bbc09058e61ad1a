"""ONNX export: the graph's structure, and onnxruntime's outputs against predict_proba/predict
for every activation, output, batch norm on/off and folding on/off, in both dtypes.

onnx and onnxruntime are optional: without them these tests skip, unless CBN_REQUIRE_ONNX=1
(.ci/run installs both and sets it), when their absence is a failure."""
import importlib
import itertools
import os
import sys

import numpy as np
import pytest

import cbn
from cbn.__main__ import main

ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid", "linear"]
OUTPUTS = ["softmax", "sigmoid", "linear"]
# relative to the largest output: a value near zero (a linear output) has no relative accuracy
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def require(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CBN_REQUIRE_ONNX") == "1":
            raise
        pytest.skip(f"{name} is not installed (pip install 'cbn[onnx]' onnxruntime)")


@pytest.fixture(scope="module")
def onnx():
    return require("onnx")


@pytest.fixture(scope="module")
def ort():
    return require("onnxruntime")


def trained(dtype, activation="leaky_relu", output="softmax", batchnorm=True, seed=0):
    """A network trained a little, with batch-norm parameters and statistics moved off 1 and 0,
    so every tensor takes part."""
    rng = np.random.default_rng(seed)
    net = cbn.Network([6, 9, 7, 4], activation=activation, output=output, batchnorm=batchnorm,
                      dtype=dtype, seed=seed, negative_slope=0.07)
    X = rng.standard_normal((64, 6))
    y = {"softmax": rng.integers(0, 4, 64), "sigmoid": rng.random((64, 4)) > 0.5,
         "linear": rng.standard_normal((64, 4))}[output]
    net.fit(X, y, epochs=2, batch_size=16)
    for layer in net.layers[:-1]:
        if layer.batchnorm:
            n = layer.n_out
            layer.gamma[...] = rng.uniform(0.5, 1.5, n)
            layer.beta[...] = rng.normal(0, 0.5, n)
            layer.running_mean[...] += rng.normal(0, 0.3, n)
            layer.running_var[...] = rng.uniform(0.2, 3.0, n)
            if dtype == np.float64:
                # where eps dominates (ONNX's epsilon is float32); in float32 such a unit's
                # 300-fold gain makes the model's own rounding exceed 1e-5
                layer.running_var[0] = 1e-6
    return net, rng.standard_normal((257, 6)).astype(dtype)


def expected_outputs(net, X):
    if net.output == "linear":
        return net.predict(X).reshape(len(X), -1)
    return net.predict_proba(X)


def run(ort, path, X):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"X": X})[0]


CASES = list(itertools.product(ACTIVATIONS, OUTPUTS, [True, False], [True, False]))


@pytest.mark.parametrize("activation, output, batchnorm, fold", CASES,
                         ids=[f"{a}-{o}-{'bn' if b else 'nobn'}-{'fold' if f else 'nofold'}"
                              for a, o, b, f in CASES])
def test_onnxruntime_matches_cbn(onnx, ort, tmp_path, dtype, activation, output, batchnorm, fold):
    net, X = trained(dtype, activation, output, batchnorm)
    path = tmp_path / "m.onnx"
    model = net.to_onnx(path, fold_batchnorm=fold)
    assert onnx.load(path) == model
    expected = expected_outputs(net, X)
    got = run(ort, path, X)
    assert got.dtype == dtype and got.shape == expected.shape
    rtol = RTOL[dtype]
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max())
    np.testing.assert_allclose(run(ort, path, X[:1]), expected[:1], rtol=rtol,
                               atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("fold", [True, False])
def test_the_graph_is_as_documented(onnx, tmp_path, dtype, fold):
    net, _ = trained(dtype, "leaky_relu", "softmax", batchnorm=True)
    model = net.to_onnx(tmp_path / "m.onnx", fold_batchnorm=fold)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 7
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
    elem = {np.float32: onnx.TensorProto.FLOAT, np.float64: onnx.TensorProto.DOUBLE}[dtype]
    (x,), (y,) = model.graph.input, model.graph.output
    assert x.name == "X" and x.type.tensor_type.elem_type == elem
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == ["N", 6]
    assert y.name == "Y" and [d.dim_param or d.dim_value
                              for d in y.type.tensor_type.shape.dim] == ["N", 4]
    ops = [n.op_type for n in model.graph.node]
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 3
    assert all({a.name: a.i for a in g.attribute} == {"transB": 1} for g in gemms)
    assert ops.count("BatchNormalization") == (0 if fold else 2)
    leaky = ["LeakyRelu"] if dtype == np.float32 else ["Mul", "Max"]
    per_layer = ["Gemm"] + ([] if fold else ["BatchNormalization"]) + leaky
    assert ops == per_layer * 2 + ["Gemm", "Softmax"]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert all(w.dtype == dtype for w in weights.values())
    if fold:  # W * gamma / sqrt(var + eps), in float64, rounded once
        layer = net.layers[1]
        scale = layer.gamma.astype(float) / np.sqrt(layer.running_var.astype(float) + net.bn_eps)
        assert np.array_equal(weights["1.W_folded"],
                              (layer.W.astype(float) * scale[:, None]).astype(dtype))
    else:
        assert np.array_equal(weights["1.W"], net.layers[1].W)
        assert np.array_equal(weights["1.gamma"], net.layers[1].gamma)
        assert np.array_equal(weights["1.running_mean"], net.layers[1].running_mean)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["cbn.output"] == "softmax" and props["cbn.batchnorm_folded"] == str(fold).lower()


def test_export_checks_its_arguments(onnx, tmp_path):
    net, _ = trained(np.float32)
    with pytest.raises(TypeError, match="fold_batchnorm"):
        net.to_onnx(tmp_path / "m.onnx", fold_batchnorm="no")
    with pytest.raises(TypeError, match="path"):
        net.to_onnx(3.5)
    assert os.listdir(tmp_path) == []


def test_without_onnx_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    net = cbn.Network([3, 4, 2], seed=0)
    net.save(tmp_path / "m.safetensors")
    with pytest.raises(ImportError, match=r"pip install 'cbn\[onnx\]'"):
        net.to_onnx(tmp_path / "m.onnx")
    assert main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "m.onnx")]) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_cbn_export(onnx, ort, tmp_path, capsys):
    net, X = trained(np.float64, "tanh", "sigmoid")
    net.save(tmp_path / "m.safetensors")
    assert main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "f.onnx")]) == 0
    assert main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "k.onnx"),
                 "--no-fold"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "f.onnx" in out and "BatchNormalization" in out
    for name, n_bn in (("f.onnx", 0), ("k.onnx", 2)):
        ops = [n.op_type for n in onnx.load(tmp_path / name).graph.node]
        assert ops.count("BatchNormalization") == n_bn
        np.testing.assert_allclose(run(ort, tmp_path / name, X), net.predict_proba(X),
                                   rtol=1e-12, atol=1e-12)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10" + b"\0" * 7 + b"{" * 16)
    assert main(["export", str(tmp_path / "bad.safetensors"), str(tmp_path / "x.onnx")]) == 1
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and err.startswith("cbn: error: ")
    assert "not a readable cbn model file" in err and "missing: no such file" in err
    assert not (tmp_path / "x.onnx").exists()
