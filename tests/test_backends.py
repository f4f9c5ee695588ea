"""Every available backend against the NumPy reference: outputs and every gradient on a grid
of shapes (T=1, N=1, I=1, odd H, 1-3 layers, initial state, batch_first) in float32 and
float64, the functional API, ``step`` against ``forward``, and backend dispatch.
"""

import itertools

import numpy as np
import pytest

import fastlstm
from fastlstm.backends import get_backend
from lstm_testing import DTYPES, REFERENCE, assert_all_close, assert_close, make_inputs, run_layer, seed_of, shape_id

# T x N x I x H x L (72 shapes), each in float32 and float64; the four
# (initial state, batch_first) combinations and dstate on/off rotate over the
# shapes so that each appears with every dtype (18 times per combination).
SHAPES = list(itertools.product([1, 7], [1, 3], [1, 4], [1, 5, 17], [1, 2, 3]))
GRID = []
for k, (T, N, I, H, L) in enumerate(SHAPES):
    for d, dtype in enumerate(DTYPES):
        combo = (k + d) % 4
        with_state, batch_first = bool(combo & 1), bool(combo & 2)
        with_dstate = bool((k // 4) % 2)
        case_id = "-".join([shape_id(T, N, I, H, L), np.dtype(dtype).name,
                            "state" if with_state else "nostate",
                            "bfirst" if batch_first else "tmajor",
                            "dstate" if with_dstate else "nodstate"])
        GRID.append(pytest.param(T, N, I, H, L, dtype, with_state, batch_first, with_dstate,
                                 id=case_id))


def _pair(backend, I, H, L, dtype, **kw):
    """A layer on ``backend`` and one on the reference with the same weights."""
    ref = fastlstm.LSTM(I, H, L, dtype=dtype, backend=REFERENCE, seed=seed_of(I, H, L), **kw)
    layer = fastlstm.LSTM(I, H, L, dtype=dtype, backend=backend, seed=12345, **kw)
    layer.load_state_dict(ref.state_dict())
    return layer, ref


@pytest.mark.parametrize("T, N, I, H, L, dtype, with_state, batch_first, with_dstate", GRID)
def test_layer_matches_reference(backend, T, N, I, H, L, dtype, with_state, batch_first, with_dstate):
    layer, ref = _pair(backend, I, H, L, dtype, batch_first=batch_first)
    x, state, dy, dstate = make_inputs(seed_of(T, N, I, H, L), T, N, I, H, L, dtype,
                                       batch_first=batch_first, state=with_state, dstate=with_dstate)
    got = run_layer(layer, x, state, dy, dstate)
    want = run_layer(ref, x, state, dy, dstate)
    for key in ("y", "dx"):
        want_shape = (N, T, H if key == "y" else I) if batch_first else (T, N, H if key == "y" else I)
        assert got[key].shape == want_shape, key
    for key in ("h_n", "c_n", "dh0", "dc0"):
        assert got[key].shape == (L, N, H), key
    for key, value in got.items():
        assert value.dtype == np.dtype(dtype), key
        assert np.all(np.isfinite(value)), key
    assert_all_close(got, want, dtype, f"{backend} {shape_id(T, N, I, H, L)}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_layer_without_bias_matches_reference(backend, bias, dtype):
    T, N, I, H, L = 5, 3, 4, 17, 2
    layer, ref = _pair(backend, I, H, L, dtype, bias=bias)
    x, state, dy, dstate = make_inputs(7, T, N, I, H, L, dtype)
    assert_all_close(run_layer(layer, x, state, dy, dstate), run_layer(ref, x, state, dy, dstate),
                     dtype, backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_layer_inference_equals_training_forward(backend, dtype):
    T, N, I, H, L = 6, 3, 4, 5, 2
    layer = fastlstm.LSTM(I, H, L, dtype=dtype, backend=backend, seed=3)
    x, state, _, _ = make_inputs(8, T, N, I, H, L, dtype)
    y_eval, (h_eval, c_eval) = layer(x, state)
    y_train, (h_train, c_train) = layer.forward(x, state, training=True)
    np.testing.assert_array_equal(y_eval, y_train)
    np.testing.assert_array_equal(h_eval, h_train)
    np.testing.assert_array_equal(c_eval, c_train)


FUNCTIONAL = [pytest.param(T, N, I, H, id=shape_id(T, N, I, H))
              for T, N, I, H in [(1, 1, 1, 1), (7, 3, 4, 5), (7, 1, 4, 17), (3, 3, 1, 17), (1, 3, 4, 5)]]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("with_state, bias", [(True, True), (False, True), (True, False)],
                         ids=["state-bias", "nostate-bias", "state-nobias"])
@pytest.mark.parametrize("T, N, I, H", FUNCTIONAL)
def test_functional_matches_reference(backend, T, N, I, H, with_state, bias, dtype):
    rng = np.random.default_rng(seed_of(T, N, I, H, with_state, bias))
    k = 1 / np.sqrt(H)
    W_ih = rng.uniform(-k, k, (4 * H, I)).astype(dtype)
    W_hh = rng.uniform(-k, k, (4 * H, H)).astype(dtype)
    b_ih = rng.uniform(-k, k, 4 * H).astype(dtype) if bias else None
    b_hh = rng.uniform(-k, k, 4 * H).astype(dtype) if bias else None
    x = rng.standard_normal((T, N, I)).astype(dtype)
    state = (0.5 * rng.standard_normal((2, N, H))).astype(dtype) if with_state else None
    dy = rng.standard_normal((T, N, H)).astype(dtype)
    dstate = rng.standard_normal((2, N, H)).astype(dtype)
    state = None if state is None else (state[0], state[1])
    results = {}
    for be in (backend, REFERENCE):
        y, (h_n, c_n), cache = fastlstm.lstm_forward(x, W_ih, W_hh, b_ih, b_hh, state, backend=be)
        dx, (dh0, dc0), grads = fastlstm.lstm_backward(cache, dy, (dstate[0], dstate[1]))
        results[be] = dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0,
                           **{f"grad.{k}": g for k, g in grads.items()})
    got, want = results[backend], results[REFERENCE]
    assert got["y"].shape == (T, N, H) and got["dx"].shape == (T, N, I)
    assert got["h_n"].shape == got["dh0"].shape == (N, H)
    np.testing.assert_array_equal(got["grad.bias_ih"], got["grad.bias_hh"])
    for key, value in got.items():
        assert value.dtype == np.dtype(dtype), key
    assert_all_close(got, want, dtype, f"{backend} {shape_id(T, N, I, H)}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_functional_equals_single_layer(backend, dtype):
    """lstm_forward with a layer's weights computes what the 1-layer LSTM computes."""
    T, N, I, H = 5, 3, 4, 5
    layer = fastlstm.LSTM(I, H, 1, dtype=dtype, backend=backend, seed=11)
    p = layer.state_dict()
    x, state, dy, dstate = make_inputs(12, T, N, I, H, 1, dtype)
    want = run_layer(layer, x, state, dy, dstate)
    y, (h_n, c_n), cache = fastlstm.lstm_forward(x, p["weight_ih_l0"], p["weight_hh_l0"],
                                                 p["bias_ih_l0"], p["bias_hh_l0"],
                                                 (state[0][0], state[1][0]), backend=backend)
    dx, (dh0, dc0), grads = fastlstm.lstm_backward(cache, dy, (dstate[0][0], dstate[1][0]))
    assert_close(y, want["y"], dtype, "y")
    assert_close(h_n, want["h_n"][0], dtype, "h_n")
    assert_close(c_n, want["c_n"][0], dtype, "c_n")
    assert_close(dx, want["dx"], dtype, "dx")
    assert_close(dh0, want["dh0"][0], dtype, "dh0")
    assert_close(dc0, want["dc0"][0], dtype, "dc0")
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        assert_close(grads[name], want[f"grad.{name}_l0"], dtype, name)


STEP = [pytest.param(N, H, L, id=shape_id(T=6, N=N, I=4, H=H, L=L))
        for N, H, L in [(1, 5, 1), (1, 17, 2), (3, 5, 2), (3, 1, 3), (2, 17, 1)]]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "nostate"])
@pytest.mark.parametrize("N, H, L", STEP)
def test_step_matches_forward(backend, N, H, L, with_state, dtype):
    T, I = 6, 4
    layer = fastlstm.LSTM(I, H, L, dtype=dtype, backend=backend, seed=seed_of(N, H, L))
    x, state, _, _ = make_inputs(seed_of(T, N, I, H, L), T, N, I, H, L, dtype, state=with_state)
    y, (h_n, c_n) = layer(x, state)
    carried = state
    for t in range(T):
        h_t, carried = layer.step(x[t], carried)
        assert h_t.shape == (N, H) and h_t.dtype == np.dtype(dtype)
        assert carried[0].shape == carried[1].shape == (L, N, H)
        assert_close(h_t, y[t], dtype, f"step {t} h_t")
        assert_close(carried[0][-1], y[t], dtype, f"step {t} top h")
    assert_close(carried[0], h_n, dtype, "h after T steps")
    assert_close(carried[1], c_n, dtype, "c after T steps")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("N", [1, 3], ids=lambda n: f"N{n}")
def test_step_matches_reference(backend, N, dtype):
    T, I, H, L = 4, 3, 17, 2
    layer, ref = _pair(backend, I, H, L, dtype)
    x, state, _, _ = make_inputs(21, T, N, I, H, L, dtype)
    s_layer = s_ref = state
    for t in range(T):
        h_layer, s_layer = layer.step(x[t], s_layer)
        h_ref, s_ref = ref.step(x[t], s_ref)
        assert_close(h_layer, h_ref, dtype, f"step {t} h_t")
        assert_close(s_layer[1], s_ref[1], dtype, f"step {t} c")


def test_step_does_not_modify_the_state_it_is_given(backend):
    layer = fastlstm.LSTM(3, 5, 2, backend=backend, seed=0)
    x, state, _, _ = make_inputs(1, 1, 2, 3, 5, 2, np.float32)
    h0, c0 = state[0].copy(), state[1].copy()
    _, new = layer.step(x[0], state)
    np.testing.assert_array_equal(state[0], h0)
    np.testing.assert_array_equal(state[1], c0)
    assert not np.array_equal(new[0], h0)


def test_step_and_forward_see_parameters_changed_in_place(backend):
    """The summed bias is rewritten on every call: an optimizer's in-place update counts."""
    layer = fastlstm.LSTM(3, 5, 2, backend=backend, seed=0)
    ref = fastlstm.LSTM(3, 5, 2, backend=REFERENCE, seed=0)
    x, state, _, _ = make_inputs(2, 2, 1, 3, 5, 2, np.float32)
    layer.step(x[0], state)
    layer(x, state)
    for model in (layer, ref):
        model.params["bias_hh_l1"] += 0.5
        model.params["weight_ih_l0"] *= -1.0
    assert_close(layer.step(x[0], state)[0], ref.step(x[0], state)[0], np.float32, "step")
    assert_close(layer(x, state)[0], ref(x, state)[0], np.float32, "forward")


def test_step_alternating_batch_sizes(backend):
    """The step workspace is per batch size: N=1 and N=3 interleaved stay right."""
    layer = fastlstm.LSTM(3, 5, 2, backend=backend, seed=0)
    ref = fastlstm.LSTM(3, 5, 2, backend=REFERENCE, seed=0)
    rng = np.random.default_rng(0)
    for N in (1, 3, 1, 3):
        x_t = rng.standard_normal((N, 3)).astype(np.float32)
        assert_close(layer.step(x_t)[0], ref.step(x_t)[0], np.float32, f"N{N}")


# -- dispatch ---------------------------------------------------------------

def test_explicit_backend_wins_over_environment(backend, monkeypatch):
    other = REFERENCE if backend != REFERENCE else fastlstm.available_backends()[0]
    monkeypatch.setenv("FASTLSTM_BACKEND", other)
    assert get_backend(backend).NAME == backend
    monkeypatch.setenv("FASTLSTM_BACKEND", "no-such-backend")
    assert get_backend(backend).NAME == backend
    layer = fastlstm.LSTM(2, 3, backend=backend, seed=0)
    y, _ = layer(np.ones((2, 1, 2)))  # would raise if the bogus variable were read
    assert y.shape == (2, 1, 3)


def test_environment_picks_backend_for_auto(backend, monkeypatch):
    monkeypatch.setenv("FASTLSTM_BACKEND", backend)
    assert get_backend("auto").NAME == backend
    monkeypatch.setenv("FASTLSTM_BACKEND", f"  {backend.upper()} ")
    assert get_backend("auto").NAME == backend


def test_auto_without_environment_prefers_c(monkeypatch):
    monkeypatch.delenv("FASTLSTM_BACKEND", raising=False)
    host = [b for b in fastlstm.available_backends() if b != "cuda"]
    assert get_backend("auto", (np.zeros((1, 1, 1)),)).NAME == host[0]
    if "c" in fastlstm.available_backends():
        assert host[0] == "c"
    monkeypatch.setenv("FASTLSTM_BACKEND", "auto")
    assert get_backend("auto", (np.zeros((1, 1, 1)),)).NAME == host[0]
