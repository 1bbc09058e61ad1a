# A Cython extension that cimports cbn (built and checked by tests/test_capi.py).
# It needs no include_dirs: Cython finds cbn's .pxd files next to the installed package.
from cython cimport floating

from cbn._batchnorm cimport batchnorm_activation_forward   # a fused kernel: float and double
from cbn.capi cimport CBN_API_VERSION, cbn_adam_update_f64, cbn_api_version   # the public name
# the old name, still cimportable, reaches the same functions
from cbn._capi cimport CBN_API_VERSION as OLD_API_VERSION, cbn_api_version as old_api_version


def batchnorm_forward(floating[:, ::1] A, double[::1] mean, double[::1] var, double[::1] rstd,
                      const floating[:, ::1] Z, const floating[::1] gamma,
                      const floating[::1] beta, double eps, int activation, double slope):
    with nogil:
        batchnorm_activation_forward(&A[0, 0], &mean[0], &var[0], &rstd[0], &Z[0, 0],
                                     &gamma[0], &beta[0], Z.shape[0], Z.shape[1],
                                     eps, activation, slope)


def adam_update_f64(double[::1] param, double[::1] m, double[::1] v, const double[::1] grad,
                    double lr, double beta1, double beta2, double eps, long long t):
    cdef int status
    with nogil:
        status = cbn_adam_update_f64(&param[0], &m[0], &v[0], &grad[0], param.shape[0],
                                     lr, beta1, beta2, eps, t)
    return status


def versions():
    return CBN_API_VERSION, cbn_api_version()


def old_name_versions():
    return OLD_API_VERSION, old_api_version()
