"""Intel AMX in the C kernels (csrc/lstm_amx.h): the backward's weight gradients and the
forward's input product x_t . W_ih^T, each against the NumPy reference and against the
float32 loop it replaces, on shapes with partial tiles, several row blocks and chunks,
lengths, projections, the reverse direction, bidirectional layers and both thread splits;
and the rules that pick them. The AMX tests skip where the CPU or OS has no AMX.
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


# (T, N, I, H, P, lengths) of the forward's input product: rows per step cut short of 16 and
# 32 (and steps of a few rows, with lengths), inputs not a multiple of 32 or more than one
# k-step, units not a multiple of 16, a projection.
INPUT_CASES = [
    (6, 9, 5, 20, 0, None),
    (8, 33, 70, 33, 0, None),
    (5, 40, 128, 50, 0, None),
    (7, 17, 33, 64, 0, [7, 1, 0, 3, 7, 2, 6, 5, 4, 7, 1, 2, 3, 4, 5, 6, 7]),
    (9, 36, 40, 48, 0, [9, 2, 0, 9, 1, 3, 4, 9, 8, 7, 6, 5, 4, 3, 9, 9, 1, 2, 5, 5, 6, 7, 8, 9, 9, 1,
                        1, 2, 2, 3, 3, 4, 4, 5, 6, 7]),
    (6, 34, 24, 40, 11, None),
]


def _amx_input(monkeypatch, rows):
    """The fused input (every size) on the AVX-512 kernels, its product on AMX from `rows` rows."""
    monkeypatch.setenv("FASTLSTM_KERNEL", "avx512")
    monkeypatch.setenv("FASTLSTM_FUSE_INPUT", "always")
    monkeypatch.setenv("FASTLSTM_AMX_INPUT_ROWS", rows)


@needs_amx
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("case", INPUT_CASES, ids=_case_id)
def test_amx_input_product_matches_reference(monkeypatch, threads, case, reverse):
    _amx_input(monkeypatch, "1")  # every batch on AMX
    actual = _run("c", *case, reverse)
    exact = _run(REFERENCE, *case, reverse, dtype=np.float64)
    for key, want in exact.items():
        err = np.linalg.norm(actual[key] - want) / max(np.linalg.norm(want), 1e-30)
        assert err < 1e-5, f"{_case_id(case)}: {key}: relative error {err:.2e}"
    for key, want in _run(REFERENCE, *case, reverse).items():
        assert_close(actual[key], want, np.float32, f"{_case_id(case)}: {key}")


@needs_amx
@pytest.mark.parametrize("case", INPUT_CASES, ids=_case_id)
def test_amx_input_product_stays_within_float32_rounding_of_the_loop(monkeypatch, threads, case):
    runs = []
    for rows in ("0", "1"):
        _amx_input(monkeypatch, rows)
        runs.append(_run("c", *case, False))
    loop, amx = runs
    for key, want in loop.items():
        # float32 sums of the same products in another order, through the recurrence
        err = np.linalg.norm(amx[key] - want) / max(np.linalg.norm(want), 1e-30)
        assert err < 5e-6, f"{_case_id(case)}: {key}: relative difference {err:.2e}"
    assert any(not np.array_equal(amx[k], loop[k]) for k in ("y", "h_n", "c_n")), \
        "the AMX input product did not run"


@needs_amx
@pytest.mark.parametrize("lengths", [False, True], ids=["padded", "lengths"])
def test_amx_input_product_in_a_bidirectional_stack(monkeypatch, lengths):
    """Two bidirectional layers (the second's input is 2H wide), both directions at once on
    two threads, against the NumPy backend: outputs, final states and every gradient."""
    _amx_input(monkeypatch, "1")
    monkeypatch.setenv("FASTLSTM_NUM_THREADS", "2")
    monkeypatch.setenv("FASTLSTM_MIN_PARALLEL_WORK", "0")
    T, N, I, H = 7, 35, 30, 40
    rng = np.random.default_rng(7)
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    dy = rng.standard_normal((T, N, 2 * H)).astype(np.float32)
    lens = rng.integers(0, T + 1, N) if lengths else None
    results = []
    for backend in ("c", REFERENCE):
        m = fastlstm.LSTM(I, H, num_layers=2, bidirectional=True, backend=backend, seed=3)
        y, (h, c) = m.forward(x, lengths=lens, training=True)
        dx, (dh0, dc0) = m.backward(dy)
        results.append({"y": y, "h": h, "c": c, "dx": dx, "dh0": dh0, "dc0": dc0,
                        **{f"d{k}": g for k, g in m.grads.items()}})
    actual, want = results
    assert sorted(actual) == sorted(want)
    for key in want:
        assert_close(actual[key], want[key], np.float32, key)


def test_amx_input_rule(monkeypatch):
    from fastlstm import _config as cfg
    size = cfg.AMX_INPUT_SIZE
    monkeypatch.delenv("FASTLSTM_AMX_INPUT_ROWS", raising=False)
    assert cfg.amx_input_rows(size, size) == cfg.AMX_INPUT_ROWS > 0
    assert cfg.amx_input_rows(size - 1, 1024) == cfg.amx_input_rows(1024, size - 1) == 0
    monkeypatch.setenv("FASTLSTM_AMX_INPUT_ROWS", "5")  # set: for every size
    assert cfg.amx_input_rows(8, 8) == 5
    monkeypatch.setenv("FASTLSTM_AMX_INPUT_ROWS", "0")
    assert cfg.amx_input_rows(1024, 1024) == 0
    monkeypatch.setenv("FASTLSTM_AMX_INPUT_ROWS", "x")
    with pytest.raises(cfg.ConfigError, match="FASTLSTM_AMX_INPUT_ROWS"):
        cfg.amx_input_rows(256, 256)
