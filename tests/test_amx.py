"""The C backward's weight gradients on Intel AMX (csrc/lstm_amx.h): against the NumPy
reference and against the float32 loop they replace, on shapes with partial tiles, several
row blocks and chunks, lengths, projections, the reverse direction and both thread splits;
and the rule that picks them. The AMX tests skip where the CPU or OS has no AMX.
"""

import numpy as np
import pytest

import fastlstm
from lstm_testing import REFERENCE, assert_close

c_backend = pytest.importorskip("fastlstm.backends._c", reason="C backend not built")
needs_amx = pytest.mark.skipif(not c_backend.amx_ready(), reason="no AMX on this CPU or OS")

# (T, N, I, H, P, lengths): gate and column tiles cut short (G, W not multiples of 32),
# rows not a multiple of 32, more rows than one block of 384, a projection, lengths, and
# columns enough (I + H > 4000) that a thread's rows come in several chunks.
CASES = [
    (20, 9, 5, 20, 0, None),
    (30, 13, 6, 33, 0, [30, 4, 4, 1, 28, 2, 30, 0, 5, 16, 3, 17, 1]),
    (50, 20, 17, 40, 0, None),
    (12, 16, 3, 48, 11, None),
    (9, 14, 8, 40, 9, [9, 2, 0, 9, 1, 3, 4, 9, 8, 7, 6, 5, 4, 3]),
    (40, 32, 4000, 96, 0, None),
]


def _run(backend, T, N, I, H, P, lengths, reverse, dtype=np.float32):
    """Every output and gradient of one layer's forward and backward on float32 inputs,
    computed in dtype."""
    rng = np.random.default_rng(T * 1000 + N * 10 + H)
    K = P or H
    s = 0.3 * min(1.0, (32 / (I + K)) ** 0.5)

    def draw(shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32).astype(dtype)
    x = draw((T, N, I))
    W_ih, W_hh = draw((4 * H, I), s), draw((4 * H, K), s)
    b_ih, b_hh = draw((4 * H,)), draw((4 * H,))
    W_hr = draw((P, H), s) if P else None
    state = (draw((N, K)), draw((N, H)))
    y, (h, c), cache = fastlstm.lstm_forward(x, W_ih, W_hh, b_ih, b_hh, state, lengths=lengths,
                                             reverse=reverse, W_hr=W_hr, backend=backend)
    dy = draw(y.shape)
    dstate = (draw(h.shape), draw(c.shape))
    dx, (dh0, dc0), grads = fastlstm.lstm_backward(cache, dy, dstate)
    return {"y": y, "h_n": h, "c_n": c, "dx": dx, "dh0": dh0, "dc0": dc0,
            **{f"d{k}": g for k, g in grads.items()}}


def _case_id(c):
    return f"T{c[0]}-N{c[1]}-I{c[2]}-H{c[3]}-P{c[4]}" + ("-lengths" if c[5] else "")


@needs_amx
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_amx_weight_gradients_match_reference(monkeypatch, threads, case, reverse):
    monkeypatch.setenv("FASTLSTM_KERNEL", "avx512")
    monkeypatch.setenv("FASTLSTM_AMX_ROWS", "1")  # every block on AMX
    actual = _run("c", *case, reverse)
    exact = _run(REFERENCE, *case, reverse, dtype=np.float64)
    assert sorted(actual) == sorted(exact)
    for key, want in exact.items():
        # the measure: relative 2-norm error of at most 1e-5 in float32
        err = np.linalg.norm(actual[key] - want) / max(np.linalg.norm(want), 1e-30)
        assert err < 1e-5, f"{_case_id(case)}: {key}: relative error {err:.2e}"
    if case[2] < 1000:  # and elementwise against the float32 reference, where sums stay short
        for key, want in _run(REFERENCE, *case, reverse).items():
            assert_close(actual[key], want, np.float32, f"{_case_id(case)}: {key}")


@needs_amx
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_amx_changes_only_the_weight_gradients_and_them_below_float32_rounding(monkeypatch, threads,
                                                                             case):
    monkeypatch.setenv("FASTLSTM_KERNEL", "avx512")
    runs = []
    for rows in ("0", "1"):
        monkeypatch.setenv("FASTLSTM_AMX_ROWS", rows)
        runs.append(_run("c", *case, False))
    loop, amx = runs
    weights = {"dweight_ih", "dweight_hh"}
    for key, want in loop.items():
        if key in weights:
            # both are float32 sums of the same products, in another order
            err = np.linalg.norm(amx[key] - want) / max(np.linalg.norm(want), 1e-30)
            assert err < 2e-6, f"{key}: relative difference {err:.2e}"
        else:
            np.testing.assert_array_equal(amx[key], want, err_msg=key)


def test_amx_rule(monkeypatch):
    from fastlstm import _config as cfg
    monkeypatch.delenv("FASTLSTM_AMX_ROWS", raising=False)
    assert cfg.amx_rows() == cfg.AMX_ROWS > 0
    monkeypatch.setenv("FASTLSTM_AMX_ROWS", "0")
    assert cfg.amx_rows() == 0
    monkeypatch.setenv("FASTLSTM_AMX_ROWS", "-1")
    with pytest.raises(cfg.ConfigError, match="FASTLSTM_AMX_ROWS"):
        cfg.amx_rows()
    assert isinstance(c_backend.amx_ready(), bool)
