"""Checks of the build itself: with FASTLSTM_REQUIRE_C=1 (CI's as-built run) the C backend must be there.

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
