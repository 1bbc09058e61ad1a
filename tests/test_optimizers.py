"""Optimizer kernels and classes: NumPy reference over 50 steps, hand-computed first steps."""
import numpy as np
import pytest

import cbn
from cbn import _kernels as K

import _reference as ref

CASES = {
    "sgd": (cbn.SGD, {"lr": 0.1}, ref.sgd),
    "momentum": (cbn.Momentum, {"lr": 0.1, "beta": 0.8}, ref.momentum),
    "rmsprop": (cbn.RMSprop, {"lr": 0.01, "beta": 0.9, "eps": 1e-8}, ref.rmsprop),
    "adam": (cbn.Adam, {"lr": 0.01, "beta1": 0.8, "beta2": 0.95, "eps": 1e-8}, ref.adam),
}


def run_steps(name, dtype, steps, rng):
    """Apply `steps` random gradients with cbn's optimizer; return (cbn result, reference)."""
    cls, config, reference = CASES[name]
    opt = cls(**config)
    n = 1000
    params = rng.standard_normal(n).astype(dtype)
    opt._bind(object(), n, dtype)
    expected, state = params.astype(np.float64), {}
    for t in range(1, steps + 1):
        grad = rng.standard_normal(n).astype(dtype)
        opt.step(params, grad)
        expected = reference(expected, grad.astype(np.float64), state, t, **config)
    assert opt.t == steps
    return params, expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_fifty_steps_match_numpy_reference(name):
    params, expected = run_steps(name, np.float64, 50, np.random.default_rng(0))
    np.testing.assert_allclose(params, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_agrees_with_float64(name):
    p32, _ = run_steps(name, np.float32, 50, np.random.default_rng(1))
    p64, _ = run_steps(name, np.float64, 50, np.random.default_rng(1))
    # the same gradients, rounded to float32; the state is float32 too
    np.testing.assert_allclose(p32, p64, rtol=1e-4, atol=1e-4)


def one_step(opt, param, grad):
    params = np.array([param], np.float64)
    opt._bind(object(), 1, np.float64)
    opt.step(params, np.array([grad], np.float64))
    return params[0]


def test_first_steps_by_hand():
    # SGD: 1 - 0.1 * 3
    assert one_step(cbn.SGD(lr=0.1), 1.0, 3.0) == pytest.approx(0.7, abs=1e-15)
    # Momentum, EMA form: v = 0.1 * 3 = 0.3; p = 1 - 0.1 * 0.3
    assert one_step(cbn.Momentum(lr=0.1, beta=0.9), 1.0, 3.0) == pytest.approx(0.97, abs=1e-15)
    # RMSprop on loss var**2 / 2 at var = 10 (g = 10), lr 0.1. PyTorch's alpha 0.99:
    # s = 0.01 * 100 = 1, step = 0.1 * 10 / 1 -> 9.0; Keras' documented example, rho 0.9:
    # s = 10, step = 0.1 * 10 / sqrt(10) -> 9.683772
    assert one_step(cbn.RMSprop(lr=0.1, beta=0.99, eps=1e-8), 10.0, 10.0) == pytest.approx(9.0, abs=1e-7)
    assert one_step(cbn.RMSprop(lr=0.1, beta=0.9, eps=1e-8), 10.0, 10.0) == pytest.approx(
        9.683772, abs=1e-6)
    # Adam's first step is -lr * sign(g) when |g| >> eps
    for g in (3.0, -250.0, 1e-3):
        step = one_step(cbn.Adam(lr=1e-3), 0.0, g)
        assert step == pytest.approx(-1e-3 * np.sign(g), rel=1e-4)
    # where eps sits: with g = 1e-9, PyTorch's form gives -lr * 1e-9 / (1e-9 + 1e-8) = -9.09e-5
    assert one_step(cbn.Adam(lr=1e-3), 0.0, 1e-9) == pytest.approx(-1e-3 / 11, rel=1e-9)


def test_adam_bias_correction_uses_the_step_count():
    """Second step by hand: the corrections are 1 - beta**t with t = 2, not beta**2 or t = 1."""
    opt = cbn.Adam(lr=0.1, beta1=0.5, beta2=0.5, eps=0.0 + 1e-300)
    params = np.array([0.0])
    opt._bind(object(), 1, np.float64)
    opt.step(params, np.array([2.0]))
    opt.step(params, np.array([1.0]))
    m = 0.5 * (0.5 * 2.0) + 0.5 * 1.0          # 1.0
    v = 0.5 * (0.5 * 4.0) + 0.5 * 1.0          # 1.5
    second = 0.1 * (m / 0.75) / np.sqrt(v / 0.75)
    assert params[0] == pytest.approx(-0.1 - second, rel=1e-12)


def test_optimizer_names_and_defaults():
    net = cbn.Network([3, 2], output="linear", optimizer="rmsprop")
    assert isinstance(net.optimizer, cbn.RMSprop)
    assert net.optimizer.get_config() == {"lr": 1e-3, "beta": 0.999, "eps": 1e-8}
    assert cbn.Adam().get_config() == {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    assert repr(cbn.Momentum(lr=0.5)) == "Momentum(lr=0.5, beta=0.9)"


@pytest.mark.parametrize("cls, kwargs, message", [
    (cbn.SGD, {"lr": 0}, "lr: expected a finite number in"),
    (cbn.SGD, {"lr": -1e-3}, "lr: expected"),
    (cbn.Adam, {"lr": float("nan")}, "lr: expected"),
    (cbn.Adam, {"beta1": 1.0}, r"beta1: expected a finite number in \[0, 1\)"),
    (cbn.Adam, {"beta2": -0.1}, "beta2: expected"),
    (cbn.Adam, {"eps": 0}, "eps: expected"),
    (cbn.Momentum, {"beta": 1.5}, "beta: expected"),
    (cbn.RMSprop, {"eps": float("inf")}, "eps: expected"),
])
def test_bad_hyper_parameters_are_named(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_hyper_parameter_types_are_checked():
    with pytest.raises(TypeError, match="lr: expected a real number, got '0.1'"):
        cbn.SGD(lr="0.1")
    with pytest.raises(TypeError, match="beta: expected a real number, got True"):
        cbn.Momentum(beta=True)


def test_an_optimizer_trains_one_network_only():
    opt = cbn.Adam()
    cbn.Network([3, 2], output="linear", optimizer=opt)
    with pytest.raises(ValueError, match="optimizer: this Adam instance already trains another"):
        cbn.Network([3, 2], output="linear", optimizer=opt)


def test_adam_kernel_refuses_step_zero():
    p = np.zeros(3)
    with pytest.raises(ValueError, match="t counts steps from 1"):
        K.adam_update(p, np.zeros(3), np.zeros(3), np.zeros(3), 1e-3, 0.9, 0.999, 1e-8, 0)
