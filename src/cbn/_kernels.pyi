# Type stubs of the compiled cbn._kernels (see _kernels.pyx). Floating arrays of one call
# share one dtype, float32 or float64; batch statistics are always float64.
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt

_F = TypeVar("_F", np.float32, np.float64)
_Doubles = npt.NDArray[np.float64]

ACTIVATIONS: Final[dict[str, int]]

def bias_activation_forward(
    A: npt.NDArray[_F], Z: npt.NDArray[_F], b: npt.NDArray[_F],
    activation: int, slope: float = 0.0,
) -> None: ...
def bias_activation_backward(
    dZ: npt.NDArray[_F], db: npt.NDArray[_F], dA: npt.NDArray[_F], A: npt.NDArray[_F],
    activation: int, slope: float = 0.0,
) -> None: ...
def batchnorm_activation_forward(
    A: npt.NDArray[_F], mean: _Doubles, var: _Doubles, rstd: _Doubles,
    Z: npt.NDArray[_F], gamma: npt.NDArray[_F], beta: npt.NDArray[_F],
    eps: float, activation: int, slope: float = 0.0,
) -> None: ...
def batchnorm_activation_backward(
    dZ: npt.NDArray[_F], dgamma: npt.NDArray[_F], dbeta: npt.NDArray[_F],
    dA: npt.NDArray[_F], A: npt.NDArray[_F], Z: npt.NDArray[_F], gamma: npt.NDArray[_F],
    mean: _Doubles, rstd: _Doubles, activation: int, slope: float = 0.0,
) -> None: ...
def batchnorm_activation_inference(
    A: npt.NDArray[_F], Z: npt.NDArray[_F], gamma: npt.NDArray[_F], beta: npt.NDArray[_F],
    running_mean: npt.NDArray[_F], running_var: npt.NDArray[_F],
    eps: float, activation: int, slope: float = 0.0,
) -> None: ...
def batchnorm_update_running(
    running_mean: npt.NDArray[_F], running_var: npt.NDArray[_F],
    mean: _Doubles, var: _Doubles, N: int, momentum: float,
) -> None: ...
def batchnorm_statistics(mean: _Doubles, m2: _Doubles, Z: npt.NDArray[_F]) -> None: ...
def batchnorm_activation_apply(
    A: npt.NDArray[_F], Z: npt.NDArray[_F], gamma: npt.NDArray[_F], beta: npt.NDArray[_F],
    mean: _Doubles, rstd: _Doubles, activation: int, slope: float = 0.0,
) -> None: ...
def batchnorm_activation_backward_sums(
    dZt: npt.NDArray[_F], dgamma: npt.NDArray[_F], dbeta: npt.NDArray[_F],
    sum_dzt: _Doubles, sum_dzt_zc: _Doubles, dA: npt.NDArray[_F], A: npt.NDArray[_F],
    Z: npt.NDArray[_F], mean: _Doubles, rstd: _Doubles, activation: int, slope: float = 0.0,
) -> None: ...
def batchnorm_backward_finish(
    dZ: npt.NDArray[_F], Z: npt.NDArray[_F], gamma: npt.NDArray[_F], mean: _Doubles,
    rstd: _Doubles, sum_dzt: _Doubles, sum_dzt_zc: _Doubles, N_total: float,
) -> None: ...
def softmax_cross_entropy(
    dZ: npt.NDArray[_F], Z: npt.NDArray[_F], b: npt.NDArray[_F], labels: npt.NDArray[np.intp],
) -> float: ...
def softmax_forward(P: npt.NDArray[_F], Z: npt.NDArray[_F], b: npt.NDArray[_F]) -> None: ...
def sigmoid_binary_cross_entropy(
    dZ: npt.NDArray[_F], Z: npt.NDArray[_F], b: npt.NDArray[_F], Y: npt.NDArray[_F],
) -> float: ...
def mean_squared_error(
    dZ: npt.NDArray[_F], Z: npt.NDArray[_F], b: npt.NDArray[_F], Y: npt.NDArray[_F],
) -> float: ...
def sgd_update(param: npt.NDArray[_F], grad: npt.NDArray[_F], lr: float) -> None: ...
def momentum_update(
    param: npt.NDArray[_F], velocity: npt.NDArray[_F], grad: npt.NDArray[_F],
    lr: float, beta: float,
) -> None: ...
def rmsprop_update(
    param: npt.NDArray[_F], sq_avg: npt.NDArray[_F], grad: npt.NDArray[_F],
    lr: float, beta: float, eps: float,
) -> None: ...
def adam_update(
    param: npt.NDArray[_F], m: npt.NDArray[_F], v: npt.NDArray[_F], grad: npt.NDArray[_F],
    lr: float, beta1: float, beta2: float, eps: float, t: int,
) -> None: ...
def largest_magnitude(x: npt.NDArray[_F]) -> float: ...
