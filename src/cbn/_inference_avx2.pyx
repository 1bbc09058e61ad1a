# The inference kernel of _inference.pyx (cbn_model.c), compiled a second time for CPUs with
# AVX2 (see setup.py); the same operation sequence per element, so the same bits.
include "_inference.pyx"
