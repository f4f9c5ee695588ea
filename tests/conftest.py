"""Pytest configuration: the ``backend`` fixture (one run per available backend, by name),
the ``threads`` fixture (the C backend's thread counts and splits)
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


@pytest.fixture(params=["1thread", "2threads-units", "2threads-rows"])
def threads(request, monkeypatch):
    """The C backend on one thread, or two splitting each step by hidden units or by batch rows."""
    if request.param.startswith("2threads"):
        monkeypatch.setenv("FASTLSTM_NUM_THREADS", "2")
        monkeypatch.setenv("FASTLSTM_MIN_PARALLEL_WORK", "0")
        monkeypatch.setenv("FASTLSTM_THREAD_SPLIT", request.param.split("-")[1])
    else:
        monkeypatch.setenv("FASTLSTM_NUM_THREADS", "1")
    return request.param
