# Inference (predict_proba, predict, evaluate) through the kernel of the C library cbn_model.c,
# compiled into this module, so that Python and C give the same bits and a row's outputs do
# not depend on the batch it is in (see cbn_model.c for the arithmetic). Validation happens
# in Network; these functions trust their arguments.
import weakref
from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBuffer_Release, PyObject_GetBuffer
from libc.stdlib cimport calloc, free, malloc

from cbn cimport _parallel

import numpy as np

cdef extern from "cbn_model.c" nogil:
    ctypedef struct cbn_layer:
        size_t n_in
        size_t n_out
        const void *W
        const void *Wp
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
        CBN_ERR_NOMEM
        CBN_ROW_BLOCK_F32
        CBN_ROW_BLOCK_F64
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
    const char *cbn_model_instruction_set()
    int cbn_model_load_memory(const void *data, size_t size, cbn_model **model)
    void cbn_model_free(cbn_model *model)
    const char *cbn_model_strerror(int status)

cdef extern from *:
    """
    static int cbn__compiled_for_avx2(void) {
    #if defined(__AVX2__) && defined(__FMA__)
        return 1;
    #else
        return 0;
    #endif
    }
    static int cbn__cpu_has_avx2_fma(void) {
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    #else
        return 0;
    #endif
    }
    static void cbn__limit_isa(int level) {
    #if defined(CBN_DISPATCH) || defined(CBN_DISPATCH_AVX512)
        cbn__isa_limit = level;
    #else
        (void)level;
    #endif
    }
    """
    int cbn__compiled_for_avx2() nogil
    int cbn__cpu_has_avx2_fma() nogil
    void cbn__limit_isa(int level) nogil

# "avx2": compiled for AVX2 and FMA (setup.py's _inference_avx2)
INSTRUCTION_SET = "avx2" if cbn__compiled_for_avx2() else "baseline"
OUTPUTS = {"softmax": 0, "sigmoid": 1, "linear": 2}   # CBN_OUT_* of cbn_model.c


def cpu_has_avx2_fma():
    return bool(cbn__cpu_has_avx2_fma())


def limit_instruction_set(int level):
    """The best build this module may take at run time: 2 AVX-512, 1 AVX2 + FMA, 0 neither
    (CBN_NO_AVX512=1 and CBN_NO_AVX2=1). Builds compiled in are not affected."""
    cbn__limit_isa(level)


def instruction_set():
    """What the kernel runs on this CPU: "avx512", "avx2" or "baseline" (the same bits)."""
    return cbn_model_instruction_set().decode()


def sha256(const unsigned char[::1] data):
    """SHA-256 digest of data by cbn_model.c's implementation (tests compare it with hashlib)."""
    cdef unsigned char digest[32]
    cbn__sha256_digest(&data[0] if data.shape[0] else NULL, data.shape[0], digest)
    return bytes(digest[:32])


cdef const void *address(array):
    """The data pointer of a C-contiguous array (cheaper than array.ctypes.data)."""
    cdef const unsigned char[::1] view = array.reshape(-1).view(np.uint8)
    return <const void *> &view[0]


cdef struct _LayerArrays:
    size_t n_in, n_out
    const void *W
    const void *gamma       # NULL without batch norm
    const void *beta
    const void *mean
    const void *var
    const void *b


cdef class _Model:
    """The addresses of a network's arrays, looked up once per network (a Layer's arrays
    cannot be rebound, only written in place). Each call folds batch norm afresh from the
    current values into its own buffer (prepare), so in-place edits are always seen."""
    cdef int dtype, activation, output
    cdef double slope, eps
    cdef size_t n_layers, max_width, n_folded, item
    cdef _LayerArrays *arrays
    cdef readonly object key   # what the addresses were taken from
    cdef object keep

    def __cinit__(self):
        self.arrays = NULL

    def __dealloc__(self):
        free(self.arrays)

    def __init__(self, key, layers, dtype, int activation, int output, double slope,
                 double eps):
        cdef size_t l
        self.key, self.keep = key, list(layers)
        self.dtype = CBN_FLOAT32 if np.dtype(dtype).itemsize == 4 else CBN_FLOAT64
        self.item = np.dtype(dtype).itemsize
        self.activation, self.output, self.slope, self.eps = activation, output, slope, eps
        self.n_layers = len(layers)
        self.arrays = <_LayerArrays *> calloc(self.n_layers, sizeof(_LayerArrays))
        if self.arrays == NULL:
            raise MemoryError()
        self.max_width = layers[0].W.shape[1]
        self.n_folded = 0
        for l in range(self.n_layers):
            layer = layers[l]
            self.arrays[l].n_in, self.arrays[l].n_out = layer.W.shape[1], layer.W.shape[0]
            self.arrays[l].W = address(layer.W)
            if layer.gamma is not None:
                self.arrays[l].gamma = address(layer.gamma)
                self.arrays[l].beta = address(layer.beta)
                self.arrays[l].mean = address(layer.running_mean)
                self.arrays[l].var = address(layer.running_var)
                self.n_folded += layer.W.shape[0]
            else:
                self.arrays[l].b = address(layer.b)
            self.max_width = max(self.max_width, layer.W.shape[0])

    cdef size_t buffer_bytes(self):
        return self.n_layers * sizeof(cbn_layer) + 2 * self.n_folded * self.item

    cdef cbn_model prepare(self, unsigned char *buf) noexcept nogil:
        """A cbn_model whose layer table and folded batch norm live in buf (buffer_bytes)."""
        cdef cbn_model m
        cdef cbn_layer *cl = <cbn_layer *> buf
        cdef unsigned char *values = buf + self.n_layers * sizeof(cbn_layer)
        cdef size_t l, n
        cdef _LayerArrays *a
        m.dtype, m.activation, m.output, m.slope = self.dtype, self.activation, self.output, self.slope
        m.n_layers, m.layers, m.max_width, m.storage = self.n_layers, cl, self.max_width, NULL
        for l in range(self.n_layers):
            a = &self.arrays[l]
            n = a.n_out
            # no packed copy of W: in-place edits of W must be seen at the next call
            cl[l].n_in, cl[l].n_out, cl[l].W, cl[l].Wp = a.n_in, n, a.W, NULL
            if a.gamma == NULL:
                cl[l].scale, cl[l].shift = NULL, a.b
                continue
            cl[l].scale, cl[l].shift = values, values + n * self.item
            if self.dtype == CBN_FLOAT32:
                cbn__fold_f32(<const float *> a.gamma, <const float *> a.beta,
                              <const float *> a.mean, <const float *> a.var, n, self.eps,
                              <float *> values, <float *> (values + n * self.item))
            else:
                cbn__fold_f64(<const double *> a.gamma, <const double *> a.beta,
                              <const double *> a.mean, <const double *> a.var, n, self.eps,
                              <double *> values, <double *> (values + n * self.item))
            values += 2 * n * self.item
        return m


ctypedef struct RowsTask:
    const cbn_model *model
    const unsigned char *X
    unsigned char *out
    size_t x_row, out_row       # bytes per row
    bint raw
    int status[_parallel.MAX_PARTS]   # run_rows' status per chunk


cdef void rows_task(void *ctx, Py_ssize_t begin, Py_ssize_t end, int chunk) noexcept nogil:
    """Rows [begin, end) of one call: a chunk of parallel_for."""
    cdef RowsTask *t = <RowsTask *> ctx
    t.status[chunk] = run_rows(t.model, t.X + begin * t.x_row, t.out + begin * t.out_row,
                               end - begin, t.raw)


cdef int run_rows(const cbn_model *model, const void *X, void *out, size_t n, bint raw) \
        noexcept nogil:
    """cbn__forward_* over n rows with a workspace of its own: CBN_OK, CBN_ERR_OVERFLOW or
    CBN_ERR_NOMEM."""
    cdef void *ws
    cdef int status
    if n == 0:
        return CBN_OK
    ws = malloc(cbn__workspace_bytes(model, n))
    if ws == NULL:
        return CBN_ERR_NOMEM
    if model.dtype == CBN_FLOAT32:
        status = cbn__forward_f32(model, <const float *> X, n, <float *> out, raw, ws)
    else:
        status = cbn__forward_f64(model, <const double *> X, n, <double *> out, raw, ws)
    free(ws)
    return status


cdef void *data_address(array):
    """The data pointer of a C-contiguous array, by the buffer protocol (the cheapest way)."""
    cdef Py_buffer view
    PyObject_GetBuffer(array, &view, PyBUF_C_CONTIGUOUS)
    address = view.buf
    PyBuffer_Release(&view)
    return address


_models = weakref.WeakKeyDictionary()   # network -> its _Model


def forward(net, X, bint raw):
    """The network's outputs for X (C-contiguous, the network's dtype), as a new array.

    raw=True returns the output layer's W.a (logits without the bias) instead. Large X is
    split by rows between the threads of cbn's kernels (cbn._parallel); each row is
    computed the same way whatever thread or batch it is in. Returns (array, overflowed).
    """
    cdef _Model model
    cdef unsigned char *buf
    cdef cbn_model prepared
    layers = net.layers
    key = (tuple(layers), X.dtype, net._activation_code, net.output, net.negative_slope,
           net.bn_eps)
    found = _models.get(net)
    if found is None or (<_Model> found).key != key:
        found = _Model(key, layers, X.dtype, net._activation_code, OUTPUTS[net.output],
                       net.negative_slope, net.bn_eps)
        _models[net] = found
    model = <_Model> found
    out = np.empty((X.shape[0], layers[len(layers) - 1].W.shape[0]), X.dtype)
    buf = <unsigned char *> malloc(model.buffer_bytes())   # nothing below raises before free
    if buf == NULL:
        raise MemoryError()
    prepared = model.prepare(buf)
    status = run_model(&prepared, X, out, raw)
    free(buf)
    return out, check_status(status)


cdef int run_model(const cbn_model *model, X, out, bint raw):
    """model's outputs for the rows of X (C-contiguous, the model's dtype) into out (C-
    contiguous, rows x n_outputs), split by rows between the threads of cbn's kernels; returns
    CBN_ERR_NOMEM, else CBN_ERR_OVERFLOW or CBN_OK. Raises nothing."""
    cdef RowsTask task
    cdef int k, status = CBN_OK
    cdef size_t item = 4 if model.dtype == CBN_FLOAT32 else 8
    cdef Py_ssize_t n = X.shape[0]
    task.model = model
    task.X = <const unsigned char *> data_address(X)
    task.out = <unsigned char *> data_address(out)
    task.x_row = model.layers[0].n_in * item
    task.out_row = model.layers[model.n_layers - 1].n_out * item
    task.raw = raw
    for k in range(_parallel.MAX_PARTS):
        task.status[k] = CBN_OK
    with nogil:
        # chunks of whole row blocks; a thread gets at least two blocks of float32 rows
        # (splitting smaller batches costs more than it saves)
        _parallel.parallel_for(
            rows_task, &task, n,
            CBN_ROW_BLOCK_F32 if model.dtype == CBN_FLOAT32 else CBN_ROW_BLOCK_F64,
            2 * CBN_ROW_BLOCK_F32)
    for k in range(_parallel.MAX_PARTS):
        if task.status[k] == CBN_ERR_NOMEM:
            return CBN_ERR_NOMEM
        if task.status[k] == CBN_ERR_OVERFLOW:
            status = CBN_ERR_OVERFLOW
    return status


cdef bint check_status(int status) except -1:
    """True if run_model's status says an output overflowed; MemoryError if out of memory."""
    if status == CBN_ERR_NOMEM:
        raise MemoryError()
    return status == CBN_ERR_OVERFLOW


cdef class LoadedModel:
    """A model file loaded by cbn_model.c's loader (cbn_model_load_memory): its own copy of
    the values, W also packed for few rows, immutable, so concurrent calls are safe."""
    cdef cbn_model *model

    def __cinit__(self, const unsigned char[::1] data not None):
        cdef unsigned char empty = 0
        cdef int status
        self.model = NULL
        with nogil:
            status = cbn_model_load_memory(&data[0] if data.shape[0] else &empty,
                                           data.shape[0], &self.model)
        if status != CBN_OK:
            if status == CBN_ERR_NOMEM:
                raise MemoryError()
            raise ValueError(cbn_model_strerror(status).decode())

    def __dealloc__(self):
        cbn_model_free(self.model)

    @property
    def layer_sizes(self):
        cdef size_t l
        return [self.model.layers[0].n_in] + [self.model.layers[l].n_out
                                               for l in range(self.model.n_layers)]

    @property
    def dtype(self):
        return np.float32 if self.model.dtype == CBN_FLOAT32 else np.float64

    @property
    def output(self):
        return self.model.output

    def forward(self, X):
        """What predict_proba returns (predict for linear outputs) for X (validated by the
        caller: C-contiguous rows of n_inputs values of the model's dtype; anything else is
        refused here, the kernel trusts it). Returns (array, overflowed)."""
        dtype = self.dtype
        if not (isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype == dtype
                and X.flags.c_contiguous and X.shape[1] == self.model.layers[0].n_in):
            raise ValueError(f"X: expected a C-contiguous {np.dtype(dtype).name} array of "
                             f"shape (n, {self.model.layers[0].n_in})")
        out = np.empty((X.shape[0], self.model.layers[self.model.n_layers - 1].n_out), dtype)
        return out, check_status(run_model(self.model, X, out, False))

