# cbn._capi has no Python-level API: its C functions are reached from C (_capi_api.h) or
# Cython (cimport). Python sees only the table of their PyCapsules, keyed by C name.
__pyx_capi__: dict[str, object]
