"""Plain-NumPy references for every kernel, and a central-difference gradient helper.

Written for readability, in float64, straight from the formulas in DESIGN.md §2; the Cython
kernels are tested against these.
"""
import numpy as np


def activate(z, name, slope=0.01):
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, z, slope * z)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    return z.copy()


def activation_derivative(z, name, slope=0.01):
    if name == "relu":
        return (z > 0).astype(float)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, slope)
    if name == "tanh":
        return 1.0 - np.tanh(z) ** 2
    if name == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        return s * (1.0 - s)
    return np.ones_like(z)


def batchnorm_forward(Z, gamma, beta, eps, activation, slope=0.01):
    mean = Z.mean(axis=0)
    var = ((Z - mean) ** 2).mean(axis=0)
    rstd = 1.0 / np.sqrt(var + eps)
    Zt = gamma * (Z - mean) * rstd + beta
    return activate(Zt, activation, slope), mean, var, rstd


def batchnorm_backward(dA, Z, gamma, beta, eps, activation, slope=0.01):
    """The textbook chain rule through mean and variance, not the kernel's compact formula."""
    N = Z.shape[0]
    mean = Z.mean(axis=0)
    centred = Z - mean
    var = (centred ** 2).mean(axis=0)
    std = np.sqrt(var + eps)
    Zhat = centred / std
    dZt = dA * activation_derivative(gamma * Zhat + beta, activation, slope)
    dbeta = dZt.sum(axis=0)
    dgamma = (dZt * Zhat).sum(axis=0)
    dZhat = dZt * gamma
    dvar = (dZhat * centred).sum(axis=0) * -0.5 * std ** -3
    dmean = -(dZhat / std).sum(axis=0) + dvar * (-2.0 * centred).mean(axis=0)
    dZ = dZhat / std + dvar * 2.0 * centred / N + dmean / N
    return dZ, dgamma, dbeta


def softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(logits, labels):
    N = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_p[np.arange(N), labels].mean()
    dZ = np.exp(log_p)
    dZ[np.arange(N), labels] -= 1.0
    return loss, dZ / N


def sigmoid_binary_cross_entropy(logits, Y):
    loss = np.mean(np.logaddexp(0.0, logits) - Y * logits)
    return loss, (1.0 / (1.0 + np.exp(-logits)) - Y) / logits.size


def mean_squared_error(pred, Y):
    r = pred - Y
    return np.mean(r ** 2), 2.0 * r / r.size


def sgd(p, g, state, t, lr):
    return p - lr * g


def momentum(p, g, state, t, lr, beta):
    state["v"] = beta * state.get("v", 0.0) + (1 - beta) * g
    return p - lr * state["v"]


def rmsprop(p, g, state, t, lr, beta, eps):
    state["s"] = beta * state.get("s", 0.0) + (1 - beta) * g ** 2
    return p - lr * g / (np.sqrt(state["s"]) + eps)


def adam(p, g, state, t, lr, beta1, beta2, eps):
    state["m"] = beta1 * state.get("m", 0.0) + (1 - beta1) * g
    state["v"] = beta2 * state.get("v", 0.0) + (1 - beta2) * g ** 2
    m_hat = state["m"] / (1 - beta1 ** t)
    v_hat = state["v"] / (1 - beta2 ** t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps)


def numerical_gradient(f, x, h=1e-6):
    """Central differences of the scalar f() w.r.t. every entry of x (changed in place, restored)."""
    grad = np.zeros_like(x, dtype=float)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        f_plus = f()
        x[idx] = old - h
        f_minus = f()
        x[idx] = old
        grad[idx] = (f_plus - f_minus) / (2 * h)
    return grad


def relative_error(analytic, numeric, floor=1e-4):
    """max|a - n| / max(|a| + |n|), with a floor for gradients that are exactly zero.

    Such gradients exist (e.g. beta of a linear layer followed by batch norm: the next
    normalization removes any shift); their central differences are rounding noise of about
    1e-10, which the floor turns into a small error instead of a relative error near 1.
    """
    return np.max(np.abs(analytic - numeric)) / max(np.max(np.abs(analytic) + np.abs(numeric)), floor)
