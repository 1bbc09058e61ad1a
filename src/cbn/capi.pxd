# cbn.capi: the public name of cbn's C-level API, for Cython (as scipy.linalg.cython_blas).
#
#     from cbn.capi cimport CBN_OK, CBN_ACT_RELU, cbn_batchnorm_activation_forward_f64
#
# Everything declared in cbn/_capi.pxd (the codes, the functions and their documentation)
# is re-exported here, so a new entry point appears under both names by itself. The
# functions live in the compiled module cbn._capi, which Cython imports for them at run
# time; cbn._capi stays cimportable too. C programs include "_capi_api.h" instead (README).
from cbn._capi cimport *
