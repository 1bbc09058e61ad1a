"""ONNX export of a network's inference graph (``Network.to_onnx``, ``cbn export``).

The graph computes what ``predict_proba`` returns (``predict`` for linear outputs) from the
running statistics: per hidden layer a Gemm (transB=1, cbn's W is (n_out, n_in)), batch
norm either folded into that Gemm or kept as a BatchNormalization node, the activation;
then the output layer's Gemm and Softmax (axis=-1), Sigmoid or nothing. Opset 13 and IR
version 7 are pinned, so every onnxruntime since 1.6 loads the file. The ``onnx`` package
is needed only here (``pip install 'cbn[onnx]'``).
"""
import json

import numpy as np

from cbn import _model_file
from cbn import _validation as check
from cbn._version import __version__

OPSET = 13
IR_VERSION = 7
INPUT_NAME = "X"
OUTPUT_NAME = "Y"


def _import_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("Network.to_onnx needs the onnx package: "
                          "pip install 'cbn[onnx]'") from exc
    return onnx


def to_onnx(net, path, *, fold_batchnorm=True):
    """Write the network's inference graph to ``path`` as an ONNX model.

    Parameters
    ----------
    net : Network
    path : str or os.PathLike
        The ``.onnx`` file to write (atomically, like :meth:`Network.save`).
    fold_batchnorm : bool, default=True
        Fold each batch norm into its layer's Gemm (``W * scale[:, None]`` and
        ``beta - running_mean * scale`` with ``scale = gamma / sqrt(running_var + eps)``,
        computed in float64 and rounded once): the fastest graph. False keeps a
        BatchNormalization node per hidden layer, holding gamma, beta and the running
        statistics as they are.

    Returns
    -------
    onnx.ModelProto
        The model written. Its input "X" has shape (N, n_features) with a symbolic batch
        dimension N, its output "Y" shape (N, n_out), both in the network's dtype: softmax
        rows, sigmoid probabilities or linear values.
    """
    fold_batchnorm = check.check_bool("fold_batchnorm", fold_batchnorm)
    path = check.check_path(path)
    onnx = _import_onnx()
    model = _build_model(onnx, net, fold_batchnorm)
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    _model_file.atomic_save(path, lambda f: f.write(data))
    return model


def _build_model(onnx, net, fold_batchnorm):
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    dtype = np.dtype(net.dtype)
    elem = {np.float32: onnx.TensorProto.FLOAT, np.float64: onnx.TensorProto.DOUBLE}[dtype.type]
    nodes, initializers = [], []

    def constant(name, array):
        initializers.append(numpy_helper.from_array(np.asarray(array, dtype), name))
        return name

    def node(op, inputs, output, **attributes):
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    A = INPUT_NAME
    for layer in net.layers[:-1]:
        l = layer.index
        if layer.batchnorm and fold_batchnorm:
            scale, shift = _batchnorm_scale_shift(layer, net.bn_eps)
            W = constant(f"{l}.W_folded", layer.W.astype(np.float64) * scale[:, None])
            b = constant(f"{l}.b_folded", shift)
            A = node("Gemm", [A, W, b], f"{l}.gemm", transB=1)
        elif layer.batchnorm:
            Z = node("Gemm", [A, constant(f"{l}.W", layer.W)], f"{l}.gemm", transB=1)
            # ONNX's epsilon is a float32 attribute; the variance carries the remainder, so
            # input_var + epsilon is cbn's running_var + bn_eps also in float64
            epsilon = float(np.float32(net.bn_eps))
            var = layer.running_var.astype(np.float64)
            if dtype == np.float64:
                var = var + (net.bn_eps - epsilon)
            A = node("BatchNormalization",
                     [Z, constant(f"{l}.gamma", layer.gamma), constant(f"{l}.beta", layer.beta),
                      constant(f"{l}.running_mean", layer.running_mean),
                      constant(f"{l}.running_var", var)],
                     f"{l}.batchnorm", epsilon=epsilon)
        else:
            A = node("Gemm", [A, constant(f"{l}.W", layer.W), constant(f"{l}.b", layer.b)],
                     f"{l}.gemm", transB=1)
        A = _activation(node, constant, net.activation, net.negative_slope, dtype, A, l)

    out = net.layers[-1]
    logits = OUTPUT_NAME if net.output == "linear" else f"{out.index}.gemm"
    node("Gemm", [A, constant(f"{out.index}.W", out.W), constant(f"{out.index}.b", out.b)],
         logits, transB=1)
    if net.output == "softmax":
        node("Softmax", [logits], OUTPUT_NAME, axis=-1)
    elif net.output == "sigmoid":
        node("Sigmoid", [logits], OUTPUT_NAME)

    graph = helper.make_graph(
        nodes, "cbn.Network",
        [helper.make_tensor_value_info(INPUT_NAME, elem, ["N", net.layer_sizes[0]])],
        [helper.make_tensor_value_info(OUTPUT_NAME, elem, ["N", net.layer_sizes[-1]])],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="cbn", producer_version=__version__,
                              doc_string=repr(net))
    model.ir_version = IR_VERSION  # make_model stamps the installed onnx's newest
    helper.set_model_props(model, {
        "cbn.output": net.output, "cbn.batchnorm_folded": str(fold_batchnorm).lower(),
        "cbn.metadata": json.dumps(net.metadata)})
    return model


def _batchnorm_scale_shift(layer, eps):
    """Inference batch norm as z * scale + shift, in float64."""
    scale = layer.gamma.astype(np.float64) / np.sqrt(layer.running_var.astype(np.float64) + eps)
    shift = layer.beta.astype(np.float64) - layer.running_mean.astype(np.float64) * scale
    return scale, shift


def _activation(node, constant, activation, slope, dtype, A, l):
    if activation == "linear":
        return A
    if activation == "leaky_relu":
        if dtype == np.float32:
            return node("LeakyRelu", [A], f"{l}.leaky_relu", alpha=slope)
        # onnxruntime has no float64 LeakyRelu; for 0 <= slope < 1 this is the same function
        scaled = node("Mul", [A, constant(f"{l}.negative_slope", slope)], f"{l}.scaled")
        return node("Max", [A, scaled], f"{l}.leaky_relu")
    op = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[activation]
    return node(op, [A], f"{l}.{activation}")


class OnnxExportMixin:
    """``to_onnx``; mixed into :class:`cbn.Network`."""

    def to_onnx(self, path, *, fold_batchnorm=True):
        """Export the inference graph as an ONNX model (opset 13, IR version 7).

        Needs the ``onnx`` package (``pip install 'cbn[onnx]'``). The graph's input "X" has
        shape (N, n_features), its output "Y" shape (N, n_out) in the network's dtype: what
        :meth:`predict_proba` returns (:meth:`predict` for linear outputs).

        Parameters
        ----------
        path : str or os.PathLike
            The file to write (atomically, like :meth:`save`).
        fold_batchnorm : bool, default=True
            Fold batch norm into each layer's Gemm (computed in float64, rounded once), or
            keep it as a BatchNormalization node holding gamma, beta and the running statistics.

        Returns
        -------
        onnx.ModelProto
            The model written.
        """
        return to_onnx(self, path, fold_batchnorm=fold_batchnorm)

