"""Bias + activation kernels and the loss kernels: NumPy reference and finite differences."""
import numpy as np
import pytest

from cbn import _kernels as K

import _reference as ref
from conftest import RTOL

ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid", "linear"]
SLOPE = 0.05


def bias_activation(Z, b, activation):
    A = np.empty_like(Z)
    K.bias_activation_forward(A, Z, b, K.ACTIVATIONS[activation], SLOPE)
    return A


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bias_activation_forward_and_backward_match_numpy(activation, dtype, rng):
    Z = (2 * rng.standard_normal((9, 70))).astype(dtype)
    b = rng.standard_normal(70).astype(dtype)
    dA = rng.standard_normal((9, 70)).astype(dtype)
    A = bias_activation(Z, b, activation)
    z = Z.astype(float) + b
    np.testing.assert_allclose(A, ref.activate(z, activation, SLOPE), rtol=RTOL[dtype], atol=RTOL[dtype])
    dZ, db = np.empty_like(Z), np.empty_like(b)
    K.bias_activation_backward(dZ, db, dA, A, K.ACTIVATIONS[activation], SLOPE)
    dZ_ref = dA * ref.activation_derivative(z, activation, SLOPE)
    tol = {np.float32: 1e-4, np.float64: 1e-12}[dtype]
    np.testing.assert_allclose(dZ, dZ_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(db, dZ_ref.sum(axis=0), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bias_activation_gradients_match_finite_differences(activation, rng):
    Z = rng.standard_normal((5, 4)) + 0.5
    b = rng.standard_normal(4)
    assert np.abs(Z + b).min() > 1e-3, "test data must stay off the kink at 0"
    upstream = rng.standard_normal((5, 4))
    A = bias_activation(Z, b, activation)
    dZ, db = np.empty_like(Z), np.empty_like(b)
    K.bias_activation_backward(dZ, db, upstream, A, K.ACTIVATIONS[activation], SLOPE)

    def loss():
        return np.sum(upstream * bias_activation(Z, b, activation))

    assert ref.relative_error(dZ, ref.numerical_gradient(loss, Z)) < 1e-7
    assert ref.relative_error(db, ref.numerical_gradient(loss, b)) < 1e-7


def loss_inputs(rng, output, N, K_out, dtype=np.float64):
    Z = (3 * rng.standard_normal((N, K_out))).astype(dtype)
    b = rng.standard_normal(K_out).astype(dtype)
    if output == "softmax":
        targets = rng.integers(0, K_out, N).astype(np.intp)
    elif output == "sigmoid":
        targets = rng.uniform(0, 1, (N, K_out)).astype(dtype)
    else:
        targets = (2 * rng.standard_normal((N, K_out))).astype(dtype)
    return Z, b, targets


LOSS_KERNELS = {
    "softmax": (K.softmax_cross_entropy, ref.softmax_cross_entropy),
    "sigmoid": (K.sigmoid_binary_cross_entropy, ref.sigmoid_binary_cross_entropy),
    "linear": (K.mean_squared_error, ref.mean_squared_error),
}


@pytest.mark.parametrize("output", sorted(LOSS_KERNELS))
def test_loss_kernels_match_numpy(output, dtype, rng):
    kernel, reference = LOSS_KERNELS[output]
    Z, b, targets = loss_inputs(rng, output, 11, 7, dtype)
    dZ = np.empty_like(Z)
    loss = kernel(dZ, Z, b, targets)
    loss_ref, dZ_ref = reference(Z.astype(float) + b, targets)
    assert loss == pytest.approx(loss_ref, rel=RTOL[dtype])
    np.testing.assert_allclose(dZ, dZ_ref, rtol=RTOL[dtype], atol=RTOL[dtype] * np.abs(dZ_ref).max())


@pytest.mark.parametrize("output", sorted(LOSS_KERNELS))
@pytest.mark.parametrize("N", [1, 2, 8])
def test_loss_gradients_match_finite_differences(output, N, rng):
    kernel, _ = LOSS_KERNELS[output]
    Z, b, targets = loss_inputs(rng, output, N, 3)
    dZ = np.empty_like(Z)
    kernel(dZ, Z, b, targets)

    def loss():
        return kernel(np.empty_like(Z), Z, b, targets)

    assert ref.relative_error(dZ, ref.numerical_gradient(loss, Z)) < 1e-7
    db = dZ.sum(axis=0)  # the output bias enters every row alike
    assert ref.relative_error(db, ref.numerical_gradient(loss, b)) < 1e-7


def test_losses_stay_finite_for_huge_logits(dtype):
    """|z| > 100: exp(|z|) overflows float32 at 89; the stable forms must not."""
    Z = np.array([[150.0, -150.0, 0.0], [-500.0, 500.0, 30.0]], dtype)
    b = np.zeros(3, dtype)
    dZ = np.empty_like(Z)
    labels = np.array([1, 1], np.intp)
    loss = K.softmax_cross_entropy(dZ, Z, b, labels)
    assert loss == pytest.approx(300.0 / 2, rel=1e-6)   # row 0 misses by 300, row 1 is right
    assert np.all(np.isfinite(dZ))
    Y = np.array([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype)
    loss = K.sigmoid_binary_cross_entropy(dZ, Z, b, Y)
    # per element max(z,0) - z*y + log1p(exp(-|z|)): 150, 150, log 2, 500, 0, 30 (+tiny)
    assert loss == pytest.approx((150 + 150 + np.log(2) + 500 + 0 + 30) / 6, rel=1e-6)
    assert np.all(np.isfinite(dZ))
    np.testing.assert_allclose(dZ * 6, [[1, -1, -0.5], [-1, 0, 1]], atol=1e-6)


def test_softmax_forward_rows_sum_to_one(dtype, rng):
    Z, b, _ = loss_inputs(rng, "softmax", 6, 4, dtype)
    Z[0, 0] = 1000  # would overflow exp without the max shift
    P = np.empty_like(Z)
    K.softmax_forward(P, Z, b)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=RTOL[dtype])
    np.testing.assert_allclose(P[1:], ref.softmax(Z[1:].astype(float) + b), rtol=RTOL[dtype])
    assert P[0, 0] == pytest.approx(1.0)


def test_softmax_wrapper_refuses_out_of_range_labels():
    Z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="labels must lie in"):
        K.softmax_cross_entropy(np.empty_like(Z), Z, np.zeros(3), np.array([0, 3], np.intp))
