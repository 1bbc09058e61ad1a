# The declarations of _optim.pxd, for its AVX2 build (_optim_avx2.pyx).
include "_optim.pxd"
