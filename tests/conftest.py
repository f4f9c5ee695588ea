"""Pytest configuration: the ``backend`` fixture (one run per available backend, by name)
and the shared helpers of tests/lstm_testing.py (TOL, assert_close, seeded inputs) re-exported.
An explicit backend= wins over FASTLSTM_BACKEND, so CI's "numpy" run still covers every backend.
"""

import pytest

from lstm_testing import (  # noqa: F401
    BACKENDS,
    DTYPES,
    GRADCHECK,
    REFERENCE,
    TOL,
    assert_close,
    check_close,
    make_inputs,
    randn,
    seed_of,
    shape_id,
    tol,
)


@pytest.fixture(params=BACKENDS, ids=lambda b: b)
def backend(request):
    """Each available backend by name ("c", "numpy", ...)."""
    return request.param
