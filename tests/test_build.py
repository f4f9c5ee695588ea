"""Checks of the build itself: with FASTLSTM_REQUIRE_C=1 (CI's as-built run) the C backend must be there,
with FASTLSTM_REQUIRE_CUDA=1 the cuda backend (on a GPU or the simulator).

Without the variable a missing extension is allowed (pure-NumPy installs) and the test skips.
"""

import os

import pytest

import fastlstm


@pytest.mark.skipif(os.environ.get("FASTLSTM_REQUIRE_C", "") != "1",
                    reason="FASTLSTM_REQUIRE_C=1 not set (the C extension is optional)")
def test_c_backend_is_built():
    from fastlstm.backends import unavailable_reasons
    assert "c" in fastlstm.available_backends(), unavailable_reasons().get("c")
    from fastlstm.backends import _c
    assert _c.NAME == "c"


@pytest.mark.skipif(os.environ.get("FASTLSTM_REQUIRE_CUDA", "") != "1",
                    reason="FASTLSTM_REQUIRE_CUDA=1 not set (the CUDA backend is optional)")
def test_cuda_backend_is_available():
    """CI's as-built run installs the cuda extra and sets NUMBA_ENABLE_CUDASIM=1: cuda must be there."""
    from fastlstm.backends import unavailable_reasons
    assert "cuda" in fastlstm.available_backends(), unavailable_reasons().get("cuda")
