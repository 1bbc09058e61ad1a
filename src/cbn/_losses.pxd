# Output functions and losses with their gradient w.r.t. the output layer's pre-activation.
# Shapes: N rows, K outputs. Logits are Z + b: the output layer's bias is added here.
from cython cimport floating


cdef double softmax_cross_entropy(
    floating* dZ,               # OUT (N, K)  (softmax(Z + b) - onehot(labels)) / N
    const floating* Z,          # IN  (N, K)
    const floating* b,          # IN  (K,)
    const Py_ssize_t* labels,   # IN  (N,)    class indices in [0, K)
    Py_ssize_t N, Py_ssize_t K,
) noexcept nogil

cdef void softmax_forward(
    floating* P,                # OUT (N, K)  softmax(Z + b) row by row
    const floating* Z,          # IN  (N, K)
    const floating* b,          # IN  (K,)
    Py_ssize_t N, Py_ssize_t K,
) noexcept nogil

cdef double sigmoid_binary_cross_entropy(
    floating* dZ,               # OUT (N, K)  (sigmoid(Z + b) - Y) / (N * K)
    const floating* Z,          # IN  (N, K)
    const floating* b,          # IN  (K,)
    const floating* Y,          # IN  (N, K)  targets in [0, 1]
    Py_ssize_t N, Py_ssize_t K,
) noexcept nogil

cdef double mean_squared_error(
    floating* dZ,               # OUT (N, K)  2 * (Z + b - Y) / (N * K)
    const floating* Z,          # IN  (N, K)
    const floating* b,          # IN  (K,)
    const floating* Y,          # IN  (N, K)
    Py_ssize_t N, Py_ssize_t K,
) noexcept nogil
