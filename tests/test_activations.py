"""The fused kernels' sigmoid and tanh against float64, on every fused path:
error in units in the last place over a wide sample, NaN, zeros and tiny
values, saturation and the far negative end of sigmoid.
"""

import numpy as np
import pytest

c_backend = pytest.importorskip("fastlstm.backends._c", reason="C backend not built")
FUSED = [p for p in c_backend.SUPPORTED_KERNELS if p != "blas"]
if not FUSED:
    pytest.skip("no fused kernel paths on this build", allow_module_level=True)

#: Bound the kernels keep (the documented accuracy, with the sample's maximum below it).
MAX_ULP = 3.0


def sample():
    rng = np.random.default_rng(0)
    scales = (1e-7, 1e-4, 1e-2, 0.1, 0.5, 1.0, 3.0, 10.0, 30.0)
    x = np.concatenate([rng.standard_normal(100_000) * s for s in scales]
                       + [rng.uniform(-90.0, 90.0, 100_000)])
    return np.concatenate([x, -x]).astype(np.float32)


def ulp_error(got, exact):
    """|got - exact| in units of the float32 spacing at exact."""
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - exact) / spacing


@pytest.mark.parametrize("path", FUSED)
def test_within_a_few_ulp(path):
    x = sample()
    sig, th = c_backend.activations(path, x)
    xd = x.astype(np.float64)
    with np.errstate(over="ignore"):
        sig_exact = 1.0 / (1.0 + np.exp(-xd))
    normal = sig_exact > 1e-37  # below, only an absolute bound (next test)
    assert ulp_error(sig[normal], sig_exact[normal]).max() <= MAX_ULP
    assert ulp_error(th, np.tanh(xd)).max() <= MAX_ULP


@pytest.mark.parametrize("path", FUSED)
def test_ends_zeros_and_nan(path):
    x = np.array([np.nan, 0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 88.0, 1e4, -86.0, -87.5, -200.0, -1e4,
                  np.inf, -np.inf], np.float32)
    sig, th = c_backend.activations(path, x)
    assert np.isnan(sig[0]) and np.isnan(th[0])
    assert sig[1] == sig[2] == 0.5
    assert th[1] == th[2] == 0.0
    assert th[3] == np.float32(1e-30) and th[4] == np.float32(-1e-30)
    assert th[5] == 1.0 and th[6] == -1.0 and th[13] == 1.0 and th[14] == -1.0
    assert sig[7] == sig[8] == sig[13] == 1.0
    assert sig[9] > 0 and sig[9] == pytest.approx(np.exp(-86.0), rel=1e-5)
    # far negative: 0 or a tiny positive value, never more than about exp(-87)
    far = sig[10:13].tolist() + [sig[14]]
    assert all(0.0 <= v <= 2e-38 for v in far)


def test_refuses_a_path_without_fused_kernels():
    with pytest.raises(ValueError, match="blas"):
        c_backend.activations("blas", np.zeros(3, np.float32))
