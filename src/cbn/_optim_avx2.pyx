# The kernels of _optim.pyx, compiled a second time for CPUs with AVX2 (see setup.py).
include "_optim.pyx"
