# The kernels of _batchnorm.pyx, compiled a second time for CPUs with AVX2 (see setup.py).
include "_batchnorm.pyx"
