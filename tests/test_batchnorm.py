"""Batch-norm kernels: NumPy reference, finite differences, invariants and semantics."""
import numpy as np
import pytest

from cbn import _kernels as K

import _reference as ref
from conftest import RTOL

ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid", "linear"]
EPS = 1e-5
SLOPE = 0.05
# DESIGN.md §2: float64 statistics accumulate in double; float32 ones may use float32
# arithmetic as long as they stay within 1e-6 (relative) of the float64 two-pass values
STATS_RTOL = {np.float32: 1e-6, np.float64: 1e-12}


def bn_forward(Z, gamma, beta, activation, eps=EPS):
    N, D = Z.shape
    A = np.empty_like(Z)
    mean, var, rstd = np.empty(D), np.empty(D), np.empty(D)
    K.batchnorm_activation_forward(A, mean, var, rstd, Z, gamma, beta, eps,
                                   K.ACTIVATIONS[activation], SLOPE)
    return A, mean, var, rstd


def bn_backward(dA, Z, gamma, beta, activation, eps=EPS):
    A, mean, _, rstd = bn_forward(Z, gamma, beta, activation, eps)
    dZ = np.empty_like(Z)
    dgamma, dbeta = np.empty_like(gamma), np.empty_like(gamma)
    K.batchnorm_activation_backward(dZ, dgamma, dbeta, dA, A, Z, gamma, mean, rstd,
                                    K.ACTIVATIONS[activation], SLOPE)
    return dZ, dgamma, dbeta


def layer_inputs(rng, N, D, dtype=np.float64):
    """Non-zero-mean inputs and gamma != 1, as DESIGN.md §5 asks."""
    Z = (3.0 * rng.standard_normal((N, D)) + rng.uniform(-5, 5, D)).astype(dtype)
    gamma = rng.uniform(0.5, 2.0, D).astype(dtype)
    beta = rng.uniform(-1.0, 1.0, D).astype(dtype)
    return Z, gamma, beta


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("N, D", [(2, 3), (8, 5), (37, 130)])  # 130 spans three unit blocks
def test_forward_matches_numpy(activation, N, D, dtype, rng):
    Z, gamma, beta = layer_inputs(rng, N, D, dtype)
    A, mean, var, rstd = bn_forward(Z, gamma, beta, activation)
    A_ref, mean_ref, var_ref, rstd_ref = ref.batchnorm_forward(
        Z.astype(float), gamma.astype(float), beta.astype(float), EPS, activation, SLOPE)
    assert A.dtype == dtype
    tol = STATS_RTOL[dtype]
    np.testing.assert_allclose(mean, mean_ref, rtol=tol, atol=tol * np.sqrt(var_ref).max())
    np.testing.assert_allclose(var, var_ref, rtol=tol)
    np.testing.assert_allclose(rstd, rstd_ref, rtol=tol)
    np.testing.assert_allclose(A, A_ref, rtol=RTOL[dtype], atol=RTOL[dtype])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("N, D", [(2, 3), (8, 5), (37, 130)])
def test_backward_matches_chain_rule(activation, N, D, dtype, rng):
    Z, gamma, beta = layer_inputs(rng, N, D, dtype)
    dA = rng.standard_normal((N, D)).astype(dtype)
    dZ, dgamma, dbeta = bn_backward(dA, Z, gamma, beta, activation)
    dZ_ref, dgamma_ref, dbeta_ref = ref.batchnorm_backward(
        dA.astype(float), Z.astype(float), gamma.astype(float), beta.astype(float), EPS,
        activation, SLOPE)
    tol = {np.float32: 2e-4, np.float64: 1e-10}[dtype]
    scale = np.abs(dZ_ref).max()
    np.testing.assert_allclose(dZ, dZ_ref, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(dgamma, dgamma_ref, rtol=tol, atol=tol * np.abs(dgamma_ref).max())
    np.testing.assert_allclose(dbeta, dbeta_ref, rtol=tol, atol=tol * np.abs(dbeta_ref).max())


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("N", [2, 3, 8])
def test_gradients_match_finite_differences(activation, N, rng):
    # eps comparable to the variance keeps dZ well away from 0 even for N = 2, where
    # Zhat = +-sqrt(var / (var + eps)) leaves dZ only the part that flows through eps
    eps = 0.5
    Z, gamma, beta = layer_inputs(rng, N, 4)
    upstream = rng.standard_normal((N, 4))  # random: all-ones would make dZ and dgamma vanish
    A, mean, _, rstd = bn_forward(Z, gamma, beta, activation, eps)
    if activation in ("relu", "leaky_relu"):
        Zt = gamma * (Z - mean) * rstd + beta
        assert np.abs(Zt).min() > 1e-3, "test data must stay off the kink at 0"

    def loss():
        return np.sum(upstream * bn_forward(Z, gamma, beta, activation, eps)[0])

    dZ, dgamma, dbeta = bn_backward(upstream, Z, gamma, beta, activation, eps)
    for analytic, x in [(dZ, Z), (dgamma, gamma), (dbeta, beta)]:
        assert ref.relative_error(analytic, ref.numerical_gradient(loss, x)) < 1e-6


@pytest.mark.parametrize("N", [2, 8, 100])
def test_backward_invariants(N, dtype, rng):
    """Per unit, sum_i dZ_i = 0 and sum_i dZ_i * Zhat_i = 0 for any upstream gradient.

    The second holds exactly for eps = 0 (with eps it is off by a factor eps / (var + eps)).
    """
    Z, gamma, beta = layer_inputs(rng, N, 6, dtype)
    dA = rng.standard_normal((N, 6)).astype(dtype)
    dZ, _, _ = bn_backward(dA, Z, gamma, beta, "tanh", eps=0.0)
    _, mean, _, rstd = bn_forward(Z, gamma, beta, "tanh", eps=0.0)
    Zhat = (Z - mean) * rstd
    scale = np.abs(dA).sum(axis=0) * gamma * rstd  # size of the terms that cancel
    tol = {np.float32: 1e-5, np.float64: 1e-12}[dtype]
    assert np.all(np.abs(dZ.sum(axis=0)) <= tol * scale)
    assert np.all(np.abs((dZ * Zhat).sum(axis=0)) <= tol * scale * np.abs(Zhat).max())


def test_running_statistics_after_known_batches(dtype):
    """PyTorch's convention: running = 0.9 * running + 0.1 * batch, variance unbiased."""
    running_mean = np.zeros(2, dtype)
    running_var = np.ones(2, dtype)
    batches = [np.array([[1.0, 10.0], [3.0, 10.0]]), np.array([[0.0, 4.0], [2.0, 6.0], [4.0, 8.0]])]
    expected_mean, expected_var = np.zeros(2), np.ones(2)
    for batch in batches:
        Z = batch.astype(dtype)
        _, mean, var, _ = bn_forward(Z, np.ones(2, dtype), np.zeros(2, dtype), "linear")
        K.batchnorm_update_running(running_mean, running_var, mean, var, len(batch), 0.1)
        expected_mean = 0.9 * expected_mean + 0.1 * batch.mean(0)
        expected_var = 0.9 * expected_var + 0.1 * batch.var(0, ddof=1)
    # by hand: batch means (2, 10) then (2, 6); unbiased variances (2, 0) then (4, 4)
    np.testing.assert_allclose(expected_mean, [0.38, 1.5])
    np.testing.assert_allclose(expected_var, [1.39, 1.21])
    np.testing.assert_allclose(running_mean, expected_mean, rtol=RTOL[dtype])
    np.testing.assert_allclose(running_var, expected_var, rtol=RTOL[dtype])


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_inference_uses_running_statistics(activation, dtype, rng):
    Z, gamma, beta = layer_inputs(rng, 7, 5, dtype)
    running_mean = rng.standard_normal(5).astype(dtype)
    running_var = rng.uniform(0.5, 3.0, 5).astype(dtype)
    A = np.empty_like(Z)
    K.batchnorm_activation_inference(A, Z, gamma, beta, running_mean, running_var, EPS,
                                     K.ACTIVATIONS[activation], SLOPE)
    Zt = gamma * (Z - running_mean) / np.sqrt(running_var + EPS) + beta
    np.testing.assert_allclose(A, ref.activate(Zt.astype(float), activation, SLOPE),
                               rtol=RTOL[dtype], atol=RTOL[dtype])


def test_momentum_one_makes_inference_reproduce_training_up_to_bessel(rng):
    """With bn_momentum = 1 the running stats are the last batch's, so eval differs from
    train only by the unbiased variance factor N / (N - 1)."""
    N = 6
    Z, gamma, beta = layer_inputs(rng, N, 3)
    A_train, mean, var, _ = bn_forward(Z, gamma, beta, "linear")
    running_mean, running_var = np.zeros(3), np.ones(3)
    K.batchnorm_update_running(running_mean, running_var, mean, var, N, 1.0)
    A_eval = np.empty_like(Z)
    K.batchnorm_activation_inference(A_eval, Z, gamma, beta, running_mean, running_var, 0.0,
                                     K.ACTIVATIONS["linear"], 0.0)
    A_train_no_eps, _, _, _ = bn_forward(Z, gamma, beta, "linear", eps=0.0)
    np.testing.assert_allclose(A_eval - beta, (A_train_no_eps - beta) * np.sqrt((N - 1) / N),
                               rtol=1e-12)
    assert not np.allclose(A_eval, A_train)


def test_constant_column_gives_beta(dtype):
    Z = np.tile(np.array([[7.25, -3.0, 1e4]], dtype), (5, 1))
    gamma = np.array([2.0, 0.5, 3.0], dtype)
    beta = np.array([0.25, -1.0, 4.0], dtype)
    A, _, var, _ = bn_forward(Z, gamma, beta, "linear")
    assert np.all(var == 0.0)
    assert np.all(A == beta)
    dZ, _, _ = bn_backward(np.ones_like(Z), Z, gamma, beta, "linear")
    assert np.all(np.isfinite(dZ))


def test_large_mean_float32_matches_float64(rng):
    """Mean 1e4, std 1 in float32: no E[x^2] - E[x]^2 cancellation."""
    Z32 = (1e4 + rng.standard_normal((256, 8))).astype(np.float32)
    gamma, beta = np.ones(8), np.zeros(8)
    A32, mean32, var32, _ = bn_forward(Z32, gamma.astype(np.float32), beta.astype(np.float32), "linear")
    A64, mean64, var64, _ = bn_forward(Z32.astype(np.float64), gamma, beta, "linear")
    np.testing.assert_allclose(var32, var64, rtol=1e-6)     # float32 precision (DESIGN.md §2)
    np.testing.assert_allclose(var64, 1.0, rtol=0.25)       # and sensible: the std is 1
    np.testing.assert_allclose(A32, A64, atol=1e-5)
    naive_var = (Z32 ** 2).mean(0, dtype=np.float32) - Z32.mean(0, dtype=np.float32) ** 2
    assert np.abs(naive_var - var64).max() > 0.1  # what a one-pass float32 formula would give


# Columns float32 statistics must get right: large means with small spreads (where the
# deviations, not the values, must be summed), a zero mean, and a spread far above the mean.
HARD_LOCATIONS = np.array([1e4, 1e4, 0.0, -1e3, 1.0, 5e3])
HARD_SPREADS = np.array([1.0, 0.01, 1.0, 0.1, 1e3, 3.0])


def hard_columns(rng, N):
    return (HARD_LOCATIONS + HARD_SPREADS * rng.standard_normal((N, 6))).astype(np.float32)


# 2 and 3 rows, less than a group of four and a chunk of 32 rows, several chunks, remainders
@pytest.mark.parametrize("N", [2, 3, 5, 32, 37, 1000, 4099])
def test_float32_statistics_match_float64_two_pass(N, rng):
    """DESIGN.md §2: float32 mean and var within 1e-6 (relative) of float64 two-pass values."""
    Z = hard_columns(rng, N)
    Z64 = Z.astype(np.float64)   # the same numbers: float64 arithmetic is the reference
    mean_ref = Z64.mean(axis=0)
    var_ref = ((Z64 - mean_ref) ** 2).mean(axis=0)
    gamma, beta = np.ones(6, np.float32), np.zeros(6, np.float32)
    _, mean, var, _ = bn_forward(Z, gamma, beta, "linear")
    assert np.all(np.abs(mean - mean_ref) <= 1e-6 * np.maximum(np.abs(mean_ref), np.sqrt(var_ref)))
    np.testing.assert_allclose(var, var_ref, rtol=1e-6)
    # the phase kernel of data-parallel training runs the same loops: the same bits
    mean2, m2 = np.empty(6), np.empty(6)
    K.batchnorm_statistics(mean2, m2, Z)
    assert np.array_equal(mean2, mean) and np.array_equal(m2 / N, var)


@pytest.mark.parametrize("activation", ["linear", "relu"])
@pytest.mark.parametrize("N", [2, 3, 37, 1000])
def test_float32_backward_matches_float64_where_its_terms_cancel(activation, N, rng):
    """dZ = k * (dZt - dbeta/N - Zhat * dgamma/N): at N = 2 the terms cancel almost exactly.

    On the hard columns (large means with small spreads) float32 must give the float64
    kernel's dZ, dgamma and dbeta to float32 precision of the terms that cancel.
    """
    Z = hard_columns(rng, N)
    gamma = rng.uniform(0.5, 2.0, 6).astype(np.float32)
    beta = rng.uniform(-1.0, 1.0, 6).astype(np.float32)
    dA = rng.standard_normal((N, 6)).astype(np.float32)
    dZ, dgamma, dbeta = bn_backward(dA, Z, gamma, beta, activation)
    dZ64, dgamma64, dbeta64 = bn_backward(dA.astype(float), Z.astype(float), gamma.astype(float),
                                          beta.astype(float), activation)
    _, _, _, rstd = bn_forward(Z.astype(float), gamma.astype(float), beta.astype(float), "linear")
    term = np.abs(dA).max(axis=0) * gamma * rstd        # size of each cancelling term of dZ
    total = np.abs(dA).sum(axis=0)                      # size of the terms of the sums
    assert np.all(np.abs(dZ - dZ64) <= 1e-6 * term)
    assert np.all(np.abs(dbeta - dbeta64) <= 1e-6 * total)
    assert np.all(np.abs(dgamma - dgamma64) <= 1e-6 * total)
    if activation == "linear" and N >= 37:
        # what float32 sums of the raw values (not of their deviations) would give
        naive_dgamma = rstd * ((dA * Z).sum(0, dtype=np.float32)
                               - Z.mean(0, dtype=np.float32) * dA.sum(0, dtype=np.float32))
        assert np.any(np.abs(naive_dgamma - dgamma64) > 1e-4 * total)


def test_a_units_results_do_not_depend_on_the_other_units(dtype, rng):
    """Units are computed block by block (4096 units) and split among threads: the bits of
    a unit must not depend on where its block starts or how wide the layer is."""
    N, D = 37, 4100                     # two blocks, the second 4 units wide
    Z, gamma, beta = layer_inputs(rng, N, D, dtype)
    dA = rng.standard_normal((N, D)).astype(dtype)
    full = bn_forward(Z, gamma, beta, "relu") + bn_backward(dA, Z, gamma, beta, "relu")
    for cols in (slice(4090, 4100), slice(3, 7)):
        part = (bn_forward(np.ascontiguousarray(Z[:, cols]), gamma[cols], beta[cols], "relu")
                + bn_backward(np.ascontiguousarray(dA[:, cols]), np.ascontiguousarray(Z[:, cols]),
                              gamma[cols], beta[cols], "relu"))
        for whole, piece in zip(full, part):
            assert np.array_equal(whole[..., cols], piece)


def test_wrappers_refuse_mismatched_shapes():
    Z = np.zeros((4, 3))
    with pytest.raises(ValueError, match="gamma and beta"):
        K.batchnorm_activation_forward(np.empty((4, 3)), np.empty(3), np.empty(3), np.empty(3),
                                       Z, np.ones(2), np.zeros(3), EPS, 0, 0.0)
    with pytest.raises(ValueError, match="dZ must have Z's shape"):
        K.batchnorm_activation_backward(np.empty((3, 3)), np.empty(3), np.empty(3), Z, Z, Z,
                                        np.ones(3), np.zeros(3), np.ones(3), 0, 0.0)
    with pytest.raises(ValueError, match="N >= 2"):
        K.batchnorm_update_running(np.zeros(3), np.ones(3), np.zeros(3), np.ones(3), 1, 0.1)
    with pytest.raises(TypeError, match="Z: expected an array of float32, got dtype float64"):
        K.batchnorm_activation_forward(np.empty((4, 3), np.float32), np.empty(3), np.empty(3),
                                       np.empty(3), Z, np.ones(3), np.zeros(3), EPS, 0, 0.0)
