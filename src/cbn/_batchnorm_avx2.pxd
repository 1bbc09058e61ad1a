# The declarations of _batchnorm.pxd, for its AVX2 build (_batchnorm_avx2.pyx).
include "_batchnorm.pxd"
