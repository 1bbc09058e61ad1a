"""Shared fixtures: dtypes, tolerances and a seeded generator."""
import numpy as np
import pytest

# float32 results are compared with the float64 run at this relative tolerance
RTOL = {np.float32: 1e-4, np.float64: 1e-12}


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
