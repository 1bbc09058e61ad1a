"""Losses of the output layer, each returning the mean loss and writing dZ = dLoss/dZ.

The reductions are PyTorch's defaults, so losses compare 1:1 with torch.nn.functional:
cross_entropy (mean over rows), binary_cross_entropy_with_logits and mse_loss (mean over
all N * K elements). Shapes: N rows, K outputs, C-contiguous. Losses are summed in double.
"""
from cython cimport floating
from libc.math cimport exp, fabs, log, log1p

from cbn._activations cimport stable_sigmoid


cdef double softmax_cross_entropy(
    floating* dZ,               # OUT (N, K)  (softmax(Z + b) - onehot(labels)) / N
    const floating* Z,          # IN  (N, K)
    const floating* b,          # IN  (K,)
    const Py_ssize_t* labels,   # IN  (N,)    class indices in [0, K)
    Py_ssize_t N, Py_ssize_t K,
) noexcept nogil:
    """Mean of -log softmax(Z + b)[i, labels[i]] over rows; dZ its gradient."""
    cdef Py_ssize_t i, j, k
    cdef double z_max, total, log_total, p
    cdef double loss = 0.0
    for i in range(N):
        k = i * K
        # logsumexp of the row, shifted by its maximum so exp cannot overflow
        z_max = Z[k] + b[0]
        for j in range(1, K):
            z_max = max(z_max, Z[k + j] + b[j])
        total = 0.0
        for j in range(K):
            p = exp(Z[k + j] + b[j] - z_max)
            dZ[k + j] = <floating>p
            total += p
        log_total = log(total)
        loss += z_max + log_total - (Z[k + labels[i]] + b[labels[i]])
        # dZ = (softmax - onehot) / N, the exponentials are already in dZ
        for j in range(K):
            dZ[k + j] = <floating>(dZ[k + j] / total / N)
        dZ[k + labels[i]] -= <floating>(1.0 / N)
    return loss / N


cdef void softmax_forward(
    floating* P,                # OUT (N, K)  softmax(Z + b) row by row
    const floating* Z,          # IN  (N, K)
    const floating* b,          # IN  (K,)
    Py_ssize_t N, Py_ssize_t K,
) noexcept nogil:
    """P = exp(Z + b - max) / sum(exp(Z + b - max)) per row."""
    cdef Py_ssize_t i, j, k
    cdef double z_max, total, p
    for i in range(N):
        k = i * K
        z_max = Z[k] + b[0]
        for j in range(1, K):
            z_max = max(z_max, Z[k + j] + b[j])
        total = 0.0
        for j in range(K):
            p = exp(Z[k + j] + b[j] - z_max)
            P[k + j] = <floating>p
            total += p
        for j in range(K):
            P[k + j] = <floating>(P[k + j] / total)


cdef double sigmoid_binary_cross_entropy(
    floating* dZ,               # OUT (N, K)  (sigmoid(Z + b) - Y) / (N * K)
    const floating* Z,          # IN  (N, K)
    const floating* b,          # IN  (K,)
    const floating* Y,          # IN  (N, K)  targets in [0, 1]
    Py_ssize_t N, Py_ssize_t K,
) noexcept nogil:
    """Mean over all elements of max(z, 0) - z * y + log1p(exp(-|z|)), z = Z + b.

    This form of -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))] never overflows.
    """
    cdef Py_ssize_t i, j, k
    cdef double z, y
    cdef double loss = 0.0
    cdef double count = <double>N * K
    for i in range(N):
        k = i * K
        for j in range(K):
            z = Z[k + j] + b[j]
            y = Y[k + j]
            loss += max(z, 0.0) - z * y + log1p(exp(-fabs(z)))
            dZ[k + j] = <floating>((stable_sigmoid(z) - y) / count)
    return loss / count


cdef double mean_squared_error(
    floating* dZ,               # OUT (N, K)  2 * (Z + b - Y) / (N * K)
    const floating* Z,          # IN  (N, K)
    const floating* b,          # IN  (K,)
    const floating* Y,          # IN  (N, K)
    Py_ssize_t N, Py_ssize_t K,
) noexcept nogil:
    """Mean over all elements of (Z + b - Y)**2."""
    cdef Py_ssize_t i, j, k
    cdef double r
    cdef double loss = 0.0
    cdef double count = <double>N * K
    for i in range(N):
        k = i * K
        for j in range(K):
            r = Z[k + j] + b[j] - Y[k + j]
            loss += r * r
            dZ[k + j] = <floating>(2.0 * r / count)
    return loss / count
