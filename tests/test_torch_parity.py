"""Step-by-step parity with PyTorch (optional: skipped when torch is not installed).

The same weights and the same batches in float64 must give the same losses, parameters
and running statistics as torch.nn + torch.optim, which pins down cbn's conventions: bias-free
Linear -> BatchNorm1d (momentum 0.1, unbiased running variance) -> activation, PyTorch's loss
reductions, and its optimizer formulas.
"""
import numpy as np
import pytest

import cbn

torch = pytest.importorskip("torch")

TORCH_ACTIVATIONS = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid,
                     "leaky_relu": lambda: torch.nn.LeakyReLU(0.01), "linear": torch.nn.Identity}


def torch_twin(net):
    """A torch.nn.Sequential with the network's architecture and current weights."""
    modules = []
    for layer in net.layers:
        linear = torch.nn.Linear(layer.n_in, layer.n_out, bias=layer.b is not None).double()
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(layer.W))
            if layer.b is not None:
                linear.bias.copy_(torch.from_numpy(layer.b))
        modules.append(linear)
        if layer is net.layers[-1]:
            break
        if layer.batchnorm:
            bn = torch.nn.BatchNorm1d(layer.n_out, eps=net.bn_eps, momentum=net.bn_momentum).double()
            with torch.no_grad():
                bn.weight.copy_(torch.from_numpy(layer.gamma))
                bn.bias.copy_(torch.from_numpy(layer.beta))
            modules.append(bn)
        modules.append(TORCH_ACTIVATIONS[net.activation]())
    return torch.nn.Sequential(*modules)


def torch_loss(output, logits, y):
    if output == "softmax":
        return torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    target = torch.from_numpy(y.reshape(logits.shape).astype(np.float64))
    if output == "sigmoid":
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    return torch.nn.functional.mse_loss(logits, target)


def torch_optimizer(opt, params):
    if isinstance(opt, cbn.Adam):
        return torch.optim.Adam(params, lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps)
    if isinstance(opt, cbn.RMSprop):
        return torch.optim.RMSprop(params, lr=opt.lr, alpha=opt.beta, eps=opt.eps)
    if isinstance(opt, cbn.Momentum):  # the EMA form is SGD with momentum and lr * (1 - beta)
        return torch.optim.SGD(params, lr=opt.lr * (1 - opt.beta), momentum=opt.beta)
    return torch.optim.SGD(params, lr=opt.lr)


def batches(output, steps, rng, m=16, n_x=6, k=3):
    for _ in range(steps):
        X = rng.standard_normal((m, n_x)) * 2 + 1
        if output == "softmax":
            y = rng.integers(0, k, m)
        elif output == "sigmoid":
            y = rng.integers(0, 2, (m, k)).astype(float)
        else:
            y = rng.standard_normal((m, k))
        yield X, y


@pytest.mark.parametrize("activation, output, batchnorm, optimizer", [
    ("relu", "softmax", True, cbn.Adam(lr=1e-2)),
    ("tanh", "sigmoid", True, cbn.Adam(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6)),
    ("leaky_relu", "linear", True, cbn.Adam(lr=1e-2)),
    ("relu", "softmax", False, cbn.Adam(lr=1e-2)),
    ("sigmoid", "softmax", True, cbn.SGD(lr=0.1)),
    ("relu", "softmax", True, cbn.Momentum(lr=0.1, beta=0.9)),
    ("tanh", "softmax", True, cbn.RMSprop(lr=1e-3, beta=0.99)),
])
def test_twenty_steps_match_pytorch(activation, output, batchnorm, optimizer):
    net = cbn.Network([6, 10, 8, 3], activation=activation, output=output, batchnorm=batchnorm,
                      optimizer=type(optimizer)(**optimizer.get_config()), dtype="float64", seed=0)
    model = torch_twin(net)
    opt = torch_optimizer(net.optimizer, model.parameters())
    model.train()
    for X, y in batches(output, 20, np.random.default_rng(1)):
        loss = net.train_step(X, y)
        opt.zero_grad()
        torch_value = torch_loss(output, model(torch.from_numpy(X)), y)
        torch_value.backward()
        opt.step()
        assert loss == pytest.approx(torch_value.item(), rel=1e-10, abs=1e-12)
    twin = torch_twin(net)  # cbn's trained parameters, laid out like model's
    for (name, mine), theirs in zip(twin.named_parameters(), model.parameters()):
        np.testing.assert_allclose(mine.detach().numpy(), theirs.detach().numpy(),
                                   rtol=1e-9, atol=1e-12, err_msg=name)
    for layer, bn in zip(net.layers, [m for m in model if isinstance(m, torch.nn.BatchNorm1d)]):
        np.testing.assert_allclose(layer.running_mean, bn.running_mean.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.running_var, bn.running_var.numpy(), rtol=1e-10)
    model.eval()
    X = np.random.default_rng(2).standard_normal((5, 6))
    with torch.no_grad():
        logits = model(torch.from_numpy(X))
    expected = {"softmax": torch.softmax(logits, 1), "sigmoid": torch.sigmoid(logits),
                "linear": logits}[output].numpy()
    got = net.predict_proba(X) if output != "linear" else net.predict(X)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
