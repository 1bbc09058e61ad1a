/* A C extension that calls cbn's C-level API (built and checked by tests/test_capi.py).
 *
 * Build with include_dirs=[cbn.get_include()]; no linking against cbn is needed: the
 * function pointers are fetched from the imported cbn._capi module by import_cbn___capi().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "_capi_api.h"

/* Training-mode batch norm + activation: (A, mean, var, rstd, Z, gamma, beta, eps,
 * activation, slope) -> status. N and D follow from the buffer sizes. */
#define BATCHNORM_FORWARD(SUFFIX, T)                                                     \
static PyObject *batchnorm_forward_##SUFFIX(PyObject *self, PyObject *args)             \
{                                                                                        \
    Py_buffer A, mean, var, rstd, Z, gamma, beta;                                        \
    double eps, slope;                                                                   \
    int activation, status;                                                              \
    Py_ssize_t N, D;                                                                     \
    if (!PyArg_ParseTuple(args, "w*w*w*w*y*y*y*did", &A, &mean, &var, &rstd,             \
                          &Z, &gamma, &beta, &eps, &activation, &slope))                 \
        return NULL;                                                                     \
    D = gamma.len / (Py_ssize_t)sizeof(T);                                               \
    N = D > 0 ? Z.len / (Py_ssize_t)sizeof(T) / D : 0;                                   \
    Py_BEGIN_ALLOW_THREADS                                                               \
    status = cbn_batchnorm_activation_forward_##SUFFIX(                                  \
        (T *)A.buf, (double *)mean.buf, (double *)var.buf, (double *)rstd.buf,           \
        (const T *)Z.buf, (const T *)gamma.buf, (const T *)beta.buf,                     \
        N, D, eps, activation, slope);                                                   \
    Py_END_ALLOW_THREADS                                                                 \
    PyBuffer_Release(&A); PyBuffer_Release(&mean); PyBuffer_Release(&var);               \
    PyBuffer_Release(&rstd); PyBuffer_Release(&Z); PyBuffer_Release(&gamma);             \
    PyBuffer_Release(&beta);                                                             \
    return PyLong_FromLong(status);                                                      \
}

BATCHNORM_FORWARD(f32, float)
BATCHNORM_FORWARD(f64, double)

/* One Adam step in double: (param, m, v, grad, lr, beta1, beta2, eps, t) -> status. */
static PyObject *adam_update_f64(PyObject *self, PyObject *args)
{
    Py_buffer param, m, v, grad;
    double lr, beta1, beta2, eps;
    long long t;
    int status;
    if (!PyArg_ParseTuple(args, "w*w*w*y*ddddL", &param, &m, &v, &grad,
                          &lr, &beta1, &beta2, &eps, &t))
        return NULL;
    status = cbn_adam_update_f64((double *)param.buf, (double *)m.buf, (double *)v.buf,
                                 (const double *)grad.buf,
                                 param.len / (Py_ssize_t)sizeof(double),
                                 lr, beta1, beta2, eps, t);
    PyBuffer_Release(&param); PyBuffer_Release(&m); PyBuffer_Release(&v);
    PyBuffer_Release(&grad);
    return PyLong_FromLong(status);
}

/* What the header promises next to what the loaded cbn reports. */
static PyObject *versions(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("iis(iiiii)(ii)", CBN_API_VERSION, cbn_api_version(), cbn_version(),
                         CBN_ACT_LINEAR, CBN_ACT_RELU, CBN_ACT_LEAKY_RELU, CBN_ACT_TANH,
                         CBN_ACT_SIGMOID, CBN_OK, CBN_ERR_ACTIVATION);
}

static PyMethodDef methods[] = {
    {"batchnorm_forward_f32", batchnorm_forward_f32, METH_VARARGS, NULL},
    {"batchnorm_forward_f64", batchnorm_forward_f64, METH_VARARGS, NULL},
    {"adam_update_f64", adam_update_f64, METH_VARARGS, NULL},
    {"versions", versions, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "consumer_c", NULL, -1, methods};

PyMODINIT_FUNC PyInit_consumer_c(void)
{
    if (import_cbn___capi() < 0)  /* once per shared library, before any cbn_* call */
        return NULL;
    return PyModule_Create(&module);
}
