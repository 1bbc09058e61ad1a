# Inference (predict_proba, predict, evaluate) through the kernel of the C library cbn_model.c,
# compiled into this module, so that Python and C give the same bits and a row's outputs do
# not depend on the batch it is in (see cbn_model.c for the arithmetic). Validation happens
# in Network; these functions trust their arguments.
from concurrent.futures import ThreadPoolExecutor

import numpy as np

cdef extern from "cbn_model.c" nogil:
    ctypedef struct cbn_layer:
        size_t n_in
        size_t n_out
        const void *W
        const void *scale
        const void *shift
    ctypedef struct cbn_model:
        int dtype
        int activation
        int output
        double slope
        size_t n_layers
        const cbn_layer *layers
        size_t max_width
        void *storage
    enum:
        CBN_FLOAT32
        CBN_FLOAT64
        CBN_OK
        CBN_ERR_OVERFLOW
        CBN_ROW_BLOCK_F32
    size_t cbn__workspace_bytes(const cbn_model *m, size_t n_rows)
    void cbn__fold_f32(const float *gamma, const float *beta, const float *mean,
                       const float *var, size_t n, double eps, float *scale, float *shift)
    void cbn__fold_f64(const double *gamma, const double *beta, const double *mean,
                       const double *var, size_t n, double eps, double *scale, double *shift)
    int cbn__forward_f32(const cbn_model *m, const float *X, size_t n_rows, float *out,
                         int raw, void *ws)
    int cbn__forward_f64(const cbn_model *m, const double *X, size_t n_rows, double *out,
                         int raw, void *ws)
    void cbn__sha256_digest(const void *data, size_t n, unsigned char *digest)

cdef extern from *:
    """
    static int cbn__compiled_for_avx2(void) {
    #ifdef __AVX2__
        return 1;
    #else
        return 0;
    #endif
    }
    static int cbn__cpu_has_avx2(void) {
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2");
    #else
        return 0;
    #endif
    }
    """
    int cbn__compiled_for_avx2() nogil
    int cbn__cpu_has_avx2() nogil

INSTRUCTION_SET = "avx2" if cbn__compiled_for_avx2() else "baseline"
OUTPUTS = {"softmax": 0, "sigmoid": 1, "linear": 2}   # CBN_OUT_* of cbn_model.c


def cpu_has_avx2():
    return bool(cbn__cpu_has_avx2())


def sha256(const unsigned char[::1] data):
    """SHA-256 digest of data by cbn_model.c's implementation (tests compare it with hashlib)."""
    cdef unsigned char digest[32]
    cbn__sha256_digest(&data[0] if data.shape[0] else NULL, data.shape[0], digest)
    return bytes(digest[:32])


cdef const void *address(array):
    """The data pointer of a C-contiguous array (cheaper than array.ctypes.data)."""
    cdef const unsigned char[::1] view = array.reshape(-1).view(np.uint8)
    return <const void *> &view[0]


cdef class _Model:
    """A cbn_model over a network's arrays (W as it is, batch norm folded); read-only."""
    cdef cbn_model model
    cdef object keep        # the arrays the model points into
    cdef object layer_bytes

    def __init__(self, layers, dtype, int activation, int output, double slope, double eps):
        cdef size_t l, n_layers = len(layers)
        cdef cbn_layer *cl
        self.keep = []
        self.layer_bytes = np.zeros(n_layers * sizeof(cbn_layer), np.uint8)
        cl = <cbn_layer *> address(self.layer_bytes)
        self.model.dtype = CBN_FLOAT32 if np.dtype(dtype).itemsize == 4 else CBN_FLOAT64
        self.model.activation = activation
        self.model.output = output
        self.model.slope = slope
        self.model.n_layers = n_layers
        self.model.layers = cl
        self.model.max_width = layers[0].W.shape[1]
        self.model.storage = NULL
        for l in range(n_layers):
            layer = layers[l]
            n_out = layer.W.shape[0]
            if layer.gamma is not None:
                scale, shift = np.empty(n_out, dtype), np.empty(n_out, dtype)
                _fold(layer.gamma, layer.beta, layer.running_mean, layer.running_var, eps,
                      scale, shift)
            else:
                scale, shift = None, layer.b
            self.keep += [layer.W, scale, shift]
            cl[l].n_in = layer.W.shape[1]
            cl[l].n_out = n_out
            cl[l].W = address(layer.W)
            cl[l].scale = NULL if scale is None else address(scale)
            cl[l].shift = address(shift)
            self.model.max_width = max(self.model.max_width, n_out)

    def run(self, X, out, size_t start, size_t stop, bint raw):
        """Rows start:stop of X into out; True if an output-layer value was not finite."""
        cdef const unsigned char[:, ::1] Xb = X.view(np.uint8)
        cdef unsigned char[:, ::1] ob = out.view(np.uint8)
        cdef unsigned char[::1] ws = np.empty(
            cbn__workspace_bytes(&self.model, stop - start if stop > start else 1), np.uint8)
        cdef int status
        if stop <= start:
            return False
        with nogil:
            if self.model.dtype == CBN_FLOAT32:
                status = cbn__forward_f32(&self.model, <const float *> &Xb[start, 0],
                                          stop - start, <float *> &ob[start, 0], raw, &ws[0])
            else:
                status = cbn__forward_f64(&self.model, <const double *> &Xb[start, 0],
                                          stop - start, <double *> &ob[start, 0], raw, &ws[0])
        return status == CBN_ERR_OVERFLOW


def _fold(gamma, beta, mean, var, double eps, scale, shift):
    cdef const unsigned char[::1] g = gamma.view(np.uint8), b = beta.view(np.uint8)
    cdef const unsigned char[::1] m = mean.view(np.uint8), v = var.view(np.uint8)
    cdef unsigned char[::1] sc = scale.view(np.uint8), sh = shift.view(np.uint8)
    cdef size_t n = gamma.shape[0]
    if n == 0:
        return
    if gamma.dtype == np.float32:
        cbn__fold_f32(<const float *> &g[0], <const float *> &b[0], <const float *> &m[0],
                      <const float *> &v[0], n, eps, <float *> &sc[0], <float *> &sh[0])
    else:
        cbn__fold_f64(<const double *> &g[0], <const double *> &b[0], <const double *> &m[0],
                      <const double *> &v[0], n, eps, <double *> &sc[0], <double *> &sh[0])


_pool = None


def forward(layers, X, int activation, str output, double slope, double eps, bint raw,
            int n_threads):
    """The network's outputs for X (C-contiguous, the network's dtype), as a new array.

    raw=True returns the output layer's W.a (logits without the bias) instead. Rows are
    split between n_threads threads for large X; each row is computed the same way whatever
    thread or batch it is in. Returns (array, overflowed).
    """
    global _pool
    model = _Model(layers, X.dtype, activation, OUTPUTS[output], slope, eps)
    n = X.shape[0]
    out = np.empty((n, layers[len(layers) - 1].W.shape[0]), X.dtype)
    # a thread gets at least a few row blocks (splitting smaller batches costs more than it saves)
    parts = max(1, min(n_threads, n // (2 * CBN_ROW_BLOCK_F32)))
    if parts == 1:
        return out, model.run(X, out, 0, n, raw)
    if _pool is None or _pool._max_workers < parts:
        _pool = ThreadPoolExecutor(max_workers=parts, thread_name_prefix="cbn-inference")
    bounds = [n * t // parts for t in range(parts + 1)]
    futures = [_pool.submit(model.run, X, out, bounds[t], bounds[t + 1], raw)
               for t in range(parts)]
    overflowed = False
    for f in futures:
        overflowed |= f.result()
    return out, overflowed
