"""Inputs of every kind on every backend (strided, Fortran, other dtypes, lists, NaN, huge
values, T=0, T=20000) and the layer's bookkeeping: dropout, state_dict, gradient
accumulation, initialisation, show_config/available_backends.
"""

import warnings

import numpy as np
import pytest

import fastlstm
from lstm_testing import (
    BACKENDS,
    DTYPES,
    GRADCHECK,
    REFERENCE,
    SIMULATED_CUDA,
    assert_all_close,
    assert_close,
    check_close,
    make_inputs,
    run_layer,
    skip_if_too_big_to_simulate,
)

T, N, I, H, L = 5, 3, 4, 6, 2


def _reference_run(x, state=None, dy=None, dstate=None, dtype=np.float32, **kw):
    layer = fastlstm.LSTM(I, H, L, dtype=dtype, backend=REFERENCE, seed=1, **kw)
    return run_layer(layer, x, state, dy, dstate)


# -- conversions ------------------------------------------------------------

def _base(dtype=np.float32):
    return make_inputs(3, T, N, I, H, L, dtype)


CONVERSIONS = {
    # name: (inputs as given to the layer) -> the C-contiguous float32 inputs they mean
    "strided-slice": lambda x, s, dy, ds: (np.repeat(x, 2, axis=2)[:, :, ::2], s, dy, ds),
    "strided-time": lambda x, s, dy, ds: (np.repeat(x, 3, axis=0)[::3],
                                          (np.repeat(s[0], 2, axis=1)[:, ::2], s[1]),
                                          np.repeat(dy, 2, axis=1)[:, ::2], ds),
    "fortran": lambda x, s, dy, ds: (np.asfortranarray(x), tuple(np.asfortranarray(a) for a in s),
                                     np.asfortranarray(dy), tuple(np.asfortranarray(a) for a in ds)),
    "float64": lambda x, s, dy, ds: (x.astype(np.float64), tuple(a.astype(np.float64) for a in s),
                                     dy.astype(np.float64), tuple(a.astype(np.float64) for a in ds)),
    "float16": lambda x, s, dy, ds: (x.astype(np.float16), s, dy, ds),
    "int": lambda x, s, dy, ds: (x.astype(np.int32), s, dy.astype(np.int64), ds),
    "bool": lambda x, s, dy, ds: (x > 0, s, dy, ds),
    "nested-list": lambda x, s, dy, ds: (x.tolist(), tuple(a.tolist() for a in s), dy.tolist(),
                                         tuple(a.tolist() for a in ds)),
}


def _meaning(name, x, s, dy, ds):
    """What a converted input must equal once made float32 and contiguous."""
    if name == "float16":
        x = x.astype(np.float16)
    elif name == "int":
        x, dy = x.astype(np.int32), dy.astype(np.int64)
    elif name == "bool":
        x = x > 0
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return f32(x), tuple(map(f32, s)), f32(dy), tuple(map(f32, ds))


@pytest.mark.parametrize("name", list(CONVERSIONS))
def test_converted_inputs_equal_contiguous_float(backend, name):
    x, s, dy, ds = _base()
    layer = fastlstm.LSTM(I, H, L, backend=backend, seed=1)
    given = CONVERSIONS[name](x, s, dy, ds)
    if name.startswith("strided"):
        assert not given[0].flags.c_contiguous
    got = run_layer(layer, *given)
    want = run_layer(layer, *_meaning(name, x, s, dy, ds))
    for key, value in got.items():
        assert value.dtype == np.float32, key
        assert value.flags.c_contiguous, key
    assert_all_close(got, want, np.float32, name)


def test_strided_batch_first_input(backend):
    x, s, dy, ds = make_inputs(4, T, N, I, H, L, np.float32, batch_first=True)
    layer = fastlstm.LSTM(I, H, L, batch_first=True, backend=backend, seed=1)
    dy_strided = dy.transpose(1, 0, 2).copy().transpose(1, 0, 2)  # same values, not C-contiguous
    assert not dy_strided.flags.c_contiguous
    got = run_layer(layer, np.repeat(x, 2, axis=1)[:, ::2], s, dy_strided, ds)
    want = run_layer(layer, x, s, dy, ds)
    assert_all_close(got, want, np.float32, "batch_first strided")


def test_batch_first_equals_time_major(backend):
    x, s, dy, ds = _base()
    tm = fastlstm.LSTM(I, H, L, backend=backend, seed=1)
    bf = fastlstm.LSTM(I, H, L, batch_first=True, backend=backend, seed=1)
    got = run_layer(bf, x.transpose(1, 0, 2), s, dy.transpose(1, 0, 2), ds)
    want = run_layer(tm, x, s, dy, ds)
    for key in ("y", "dx"):
        got[key] = got[key].transpose(1, 0, 2)
    assert_all_close(got, want, np.float32, "batch_first")


def test_float32_into_float64_layer(backend):
    x, s, dy, ds = _base(np.float32)
    layer = fastlstm.LSTM(I, H, L, dtype=np.float64, backend=backend, seed=1)
    got = run_layer(layer, x, s, dy, ds)
    up = lambda a: a.astype(np.float64)  # noqa: E731
    want = run_layer(layer, up(x), tuple(map(up, s)), up(dy), tuple(map(up, ds)))
    for key, value in got.items():
        assert value.dtype == np.float64, key
    assert_all_close(got, want, np.float64, "float32 in")


def test_functional_converts_inputs(backend):
    rng = np.random.default_rng(0)
    W_ih = rng.uniform(-0.4, 0.4, (4 * H, I))
    W_hh = rng.uniform(-0.4, 0.4, (4 * H, H))
    b = rng.uniform(-0.4, 0.4, 4 * H)
    x = rng.standard_normal((T, N, I))
    h0 = rng.standard_normal((N, H))
    y, (h_n, c_n), cache = fastlstm.lstm_forward(x, W_ih, W_hh, b, b, (h0, h0), backend=backend)
    y2, (h2, c2), cache2 = fastlstm.lstm_forward(
        np.asfortranarray(x).tolist(), W_ih.tolist(), np.asfortranarray(W_hh), b[::-1][::-1].tolist(),
        list(b), (h0.tolist(), np.asfortranarray(h0)), backend=backend)
    assert y.dtype == y2.dtype == np.float64  # the weights' dtype sets the computation's
    assert_close(y2, y, np.float64, "y")
    assert_close(h2, h_n, np.float64, "h_n")
    assert_close(c2, c_n, np.float64, "c_n")
    dx, (dh0, _), grads = fastlstm.lstm_backward(cache, np.ones_like(y))
    dx2, (dh02, _), grads2 = fastlstm.lstm_backward(cache2, np.ones((T, N, H), int).tolist())
    assert_close(dx2, dx, np.float64, "dx")
    assert_close(dh02, dh0, np.float64, "dh0")
    for k in grads:
        assert_close(grads2[k], grads[k], np.float64, k)
    y32, _, _ = fastlstm.lstm_forward(x, W_ih.astype(np.float32), W_hh, backend=backend)
    assert y32.dtype == np.float32


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_inputs_are_not_modified(backend, dtype):
    x, s, dy, ds = make_inputs(5, T, N, I, H, L, dtype)
    copies = [x.copy(), s[0].copy(), s[1].copy(), dy.copy(), ds[0].copy(), ds[1].copy()]
    layer = fastlstm.LSTM(I, H, L, dtype=dtype, backend=backend, seed=1)
    params = layer.state_dict()
    run_layer(layer, x, s, dy, ds)
    layer.step(x[0], s)
    for before, after in zip(copies, [x, s[0], s[1], dy, ds[0], ds[1]]):
        np.testing.assert_array_equal(after, before)
    for k, p in params.items():
        np.testing.assert_array_equal(layer.params[k], p, err_msg=k)


# -- NaN and huge values ----------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_nan_propagates_only_where_it_should(backend, dtype):
    t0, n0 = 2, 1
    x, s, dy, ds = make_inputs(6, T, N, I, H, L, dtype)
    x[t0, n0, 0] = np.nan
    layer = fastlstm.LSTM(I, H, L, dtype=dtype, backend=backend, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN arithmetic may warn; it must not raise
        got = run_layer(layer, x, s, dy, ds)
    others = [n for n in range(N) if n != n0]
    y, h_n, c_n, dx = got["y"], got["h_n"], got["c_n"], got["dx"]
    assert np.isnan(y[t0:, n0]).all()
    assert np.isfinite(y[:t0]).all() and np.isfinite(y[:, others]).all()
    assert np.isnan(h_n[:, n0]).all() and np.isnan(c_n[:, n0]).all()
    assert np.isfinite(h_n[:, others]).all() and np.isfinite(c_n[:, others]).all()
    assert np.isnan(dx[:, n0]).all()
    assert np.isfinite(dx[:, others]).all()
    assert np.isnan(got["dh0"][:, n0]).all() and np.isfinite(got["dh0"][:, others]).all()
    assert np.isnan(got["grad.weight_ih_l0"]).any()
    # Same values (and NaNs in the same places) as the reference.
    ref = fastlstm.LSTM(I, H, L, dtype=dtype, backend=REFERENCE, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = run_layer(ref, x, s, dy, ds)
    assert_all_close(got, want, dtype, "NaN input")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_nan_in_step(backend, dtype):
    layer = fastlstm.LSTM(I, H, L, dtype=dtype, backend=backend, seed=1)
    x_t = np.ones((N, I), dtype)
    x_t[0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        h_t, (h, c) = layer.step(x_t)
    assert np.isnan(h_t[0]).all() and np.isfinite(h_t[1:]).all()
    assert np.isnan(c[:, 0]).all() and np.isfinite(c[:, 1:]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_huge_inputs_saturate_without_overflow(backend, dtype):
    x, s, dy, ds = make_inputs(7, T, N, I, H, L, dtype)
    x = (x * (1e4 if dtype == np.float32 else 1e150)).astype(dtype)
    layer = fastlstm.LSTM(I, H, L, dtype=dtype, backend=backend, seed=1)
    ref = fastlstm.LSTM(I, H, L, dtype=dtype, backend=REFERENCE, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in exp would warn
        got = run_layer(layer, x, s, dy, ds)
        want = run_layer(ref, x, s, dy, ds)
    for key, value in got.items():
        assert np.isfinite(value).all(), key
    assert np.abs(got["y"]).max() <= 1 and np.abs(got["h_n"]).max() <= 1
    assert_all_close(got, want, dtype, "huge x")


# -- T = 0, N = 0 and very long sequences -----------------------------------

@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_empty_sequence(backend, dtype, batch_first):
    x, s, _, ds = make_inputs(8, 0, N, I, H, L, dtype, batch_first=batch_first)
    layer = fastlstm.LSTM(I, H, L, batch_first=batch_first, dtype=dtype, backend=backend, seed=1)
    y, (h_n, c_n) = layer.forward(x, s, training=True)
    assert y.shape == ((N, 0, H) if batch_first else (0, N, H)) and y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(h_n, s[0])
    np.testing.assert_array_equal(c_n, s[1])
    dx, (dh0, dc0) = layer.backward(np.empty_like(y), ds)
    assert dx.shape == ((N, 0, I) if batch_first else (0, N, I))
    np.testing.assert_array_equal(dh0, ds[0])
    np.testing.assert_array_equal(dc0, ds[1])
    for k, g in layer.grads.items():
        assert not g.any(), k
    y0, (h0, _) = layer(x)  # zero state
    assert y0.shape == y.shape and not h0.any()
    fy, (fh, fc), cache = fastlstm.lstm_forward(np.empty((0, N, I)), layer.params["weight_ih_l0"],
                                                 layer.params["weight_hh_l0"], state=(s[0][0], s[1][0]),
                                                 backend=backend)
    assert fy.shape == (0, N, H)
    np.testing.assert_array_equal(fh, s[0][0])
    fdx, (fdh, _), grads = fastlstm.lstm_backward(cache, np.empty((0, N, H)), (ds[0][0], ds[1][0]))
    assert fdx.shape == (0, N, I)
    np.testing.assert_array_equal(fdh, ds[0][0])
    assert not grads["weight_hh"].any()


def test_empty_batch(backend):
    layer = fastlstm.LSTM(I, H, L, backend=backend, seed=1)
    y, (h_n, c_n) = layer.forward(np.empty((T, 0, I)), training=True)
    assert y.shape == (T, 0, H) and h_n.shape == c_n.shape == (L, 0, H)
    dx, (dh0, _) = layer.backward(np.empty((T, 0, H)))
    assert dx.shape == (T, 0, I) and dh0.shape == (L, 0, H)
    for k, g in layer.grads.items():
        assert not g.any(), k


LONG = dict(T=20000, N=2, I=3, H=8, L=1)


def _long_inputs():
    return make_inputs(9, LONG["T"], LONG["N"], LONG["I"], LONG["H"], LONG["L"], np.float64)


@pytest.fixture(scope="module")
def long_reference():
    layer = fastlstm.LSTM(LONG["I"], LONG["H"], LONG["L"], dtype=np.float64, backend=REFERENCE, seed=2)
    return run_layer(layer, *_long_inputs())


def test_very_long_sequence(backend, long_reference):
    skip_if_too_big_to_simulate(backend, LONG["T"], LONG["N"], LONG["I"], LONG["H"], LONG["L"])
    layer = fastlstm.LSTM(LONG["I"], LONG["H"], LONG["L"], dtype=np.float64, backend=backend, seed=2)
    got = run_layer(layer, *_long_inputs())
    assert got["y"].shape == (LONG["T"], LONG["N"], LONG["H"])
    for key, value in got.items():
        assert np.isfinite(value).all(), key
    assert_all_close(got, long_reference, np.float64, "T=20000")


def test_very_long_sequence_float32(backend):
    """float32 over 20000 steps stays finite and bounded (no accumulation blow-up)."""
    skip_if_too_big_to_simulate(backend, LONG["T"], LONG["N"], LONG["I"], LONG["H"])
    layer = fastlstm.LSTM(LONG["I"], LONG["H"], 1, backend=backend, seed=2)
    x, s, dy, ds = make_inputs(10, LONG["T"], LONG["N"], LONG["I"], LONG["H"], 1, np.float32)
    got = run_layer(layer, x, s, dy, ds)
    for key, value in got.items():
        assert np.isfinite(value).all(), key
    assert np.abs(got["y"]).max() <= 1


# -- dropout ------------------------------------------------------------------

def _dropout_layer(backend, dtype=np.float32, seed=5, L=2, dropout=0.5):
    return fastlstm.LSTM(I, H, L, dropout=dropout, dtype=dtype, backend=backend, seed=seed)


def test_dropout_training_differs_from_eval(backend):
    x, s, _, _ = _base()
    layer = _dropout_layer(backend)
    y_eval1, _ = layer(x, s)
    y_train1, _ = layer.forward(x, s, training=True)
    y_train2, _ = layer.forward(x, s, training=True)
    y_eval2, _ = layer(x, s)
    np.testing.assert_array_equal(y_eval1, y_eval2)  # eval is deterministic
    assert not np.allclose(y_train1, y_eval1)
    assert not np.allclose(y_train1, y_train2)  # a fresh mask every training pass
    no_dropout = fastlstm.LSTM(I, H, 2, backend=backend, seed=5)
    np.testing.assert_array_equal(no_dropout(x, s)[0], y_eval1)


def test_dropout_does_not_touch_the_last_layer(backend):
    x, s, _, _ = make_inputs(3, T, N, I, H, 1, np.float32)
    layer = _dropout_layer(backend, L=1)
    y_eval, (h_eval, _) = layer(x, s)
    y_train, (h_train, _) = layer.forward(x, s, training=True)
    np.testing.assert_array_equal(y_train, y_eval)
    np.testing.assert_array_equal(h_train, h_eval)


def test_dropout_same_seed_same_result(backend):
    x, s, dy, ds = _base()
    a = run_layer(_dropout_layer(backend), x, s, dy, ds)
    b = run_layer(_dropout_layer(backend), x, s, dy, ds)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dropout_matches_reference_with_same_seed(backend, dtype):
    x, s, dy, ds = make_inputs(11, T, N, I, H, 3, dtype)
    got = run_layer(_dropout_layer(backend, dtype, L=3), x, s, dy, ds)
    want = run_layer(_dropout_layer(REFERENCE, dtype, L=3), x, s, dy, ds)
    assert_all_close(got, want, dtype, "dropout")


def test_dropout_gradients_match_finite_differences(backend):
    """With the mask fixed (a fresh layer of the same seed per evaluation), backward is exact."""
    if backend == "cuda" and SIMULATED_CUDA:
        pytest.skip("hundreds of forward passes: minutes on the CUDA simulator (the grid covers cuda)")
    t, n, i, h = 3, 2, 3, 4
    rng = np.random.default_rng(12)
    x = rng.standard_normal((t, n, i))
    R1 = rng.standard_normal((t, n, h))
    R2 = rng.standard_normal((2, n, h))

    def make():
        return fastlstm.LSTM(i, h, 2, dropout=0.4, dtype=np.float64, backend=backend, seed=13)

    params = make().state_dict()

    def loss():
        layer = make()
        layer.load_state_dict(params)
        y, (h_n, _) = layer.forward(x, training=True)
        return np.sum(y * R1) + np.sum(h_n * R2)

    layer = make()
    y, _ = layer.forward(x, training=True)
    dx, _ = layer.backward(R1, (R2, np.zeros_like(R2)))
    assert not np.allclose(y, make()(x)[0])  # dropout really was applied

    eps = GRADCHECK["eps"]

    def numeric(arr):
        g = np.zeros_like(arr)
        for k in range(arr.size):
            orig = arr.flat[k]
            arr.flat[k] = orig + eps
            fp = loss()
            arr.flat[k] = orig - eps
            fm = loss()
            arr.flat[k] = orig
            g.flat[k] = (fp - fm) / (2 * eps)
        return g

    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "weight_ih_l1", "bias_hh_l1"):
        check_close(layer.grads[name], numeric(params[name]), GRADCHECK["atol"], GRADCHECK["rtol"], name)
    check_close(dx, numeric(x), GRADCHECK["atol"], GRADCHECK["rtol"], "dx")


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_dropout_zeroes_and_rescales_the_layer_output(backend, p):
    """What layer 1 receives is layer 0's output with a fraction ~p zeroed and the rest / (1-p).

    Layer 1 is set up to be invertible per unit (W_hh = 0, i and o gates saturated
    open, f gate shut, g rows = identity), so its output reveals its input u:
    y1 = sigmoid(30) * tanh(tanh(u)).
    """
    t, n = 6, 4
    layer = fastlstm.LSTM(I, H, 2, dropout=p, dtype=np.float64, backend=backend, seed=21)
    sd = layer.state_dict()
    W = np.zeros((4 * H, H))
    W[2 * H:3 * H] = np.eye(H)
    sd["weight_ih_l1"], sd["weight_hh_l1"] = W, np.zeros((4 * H, H))
    b = np.zeros(4 * H)
    b[:H], b[H:2 * H], b[3 * H:] = 30.0, -30.0, 30.0
    sd["bias_ih_l1"], sd["bias_hh_l1"] = b, np.zeros(4 * H)
    layer.load_state_dict(sd)
    first = fastlstm.LSTM(I, H, 1, dtype=np.float64, backend=backend)
    first.load_state_dict({k[:-1] + "0": v for k, v in sd.items() if k.endswith("_l0")})
    x = np.random.default_rng(22).standard_normal((t, n, I))
    y0, _ = first(x)

    def layer1_input(y1):
        return np.arctanh(np.arctanh(y1 * (1 + np.exp(-30.0))))

    np.testing.assert_allclose(layer1_input(layer(x)[0]), y0, atol=1e-9)  # eval: no dropout
    u = layer1_input(layer.forward(x, training=True)[0])
    dropped = np.abs(u) < 1e-9
    np.testing.assert_allclose(u[~dropped], y0[~dropped] / (1 - p), rtol=1e-9, atol=1e-9)
    assert abs(dropped.mean() - p) < 0.15, dropped.mean()


def test_dropout_zero_equals_no_dropout(backend):
    x, s, dy, ds = _base()
    a = run_layer(fastlstm.LSTM(I, H, L, dropout=0.0, backend=backend, seed=1), x, s, dy, ds)
    b = run_layer(fastlstm.LSTM(I, H, L, backend=backend, seed=1), x, s, dy, ds)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# -- state_dict -------------------------------------------------------------

def _torch_keys(L, bias=True):
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if bias else ("weight_ih", "weight_hh")
    return [f"{n}_l{k}" for k in range(L) for n in names]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_state_dict_keys_and_shapes_are_pytorchs(backend, dtype, bias):
    layer = fastlstm.LSTM(I, H, 3, bias=bias, dtype=dtype, backend=backend, seed=0)
    sd = layer.state_dict()
    assert list(sd) == _torch_keys(3, bias)
    for k in range(3):
        assert sd[f"weight_ih_l{k}"].shape == (4 * H, I if k == 0 else H)
        assert sd[f"weight_hh_l{k}"].shape == (4 * H, H)
        if bias:
            assert sd[f"bias_ih_l{k}"].shape == sd[f"bias_hh_l{k}"].shape == (4 * H,)
    for value in sd.values():
        assert value.dtype == np.dtype(dtype)
    assert list(layer.grads) == list(sd)
    for key, g in layer.grads.items():
        assert g.shape == sd[key].shape and g.dtype == sd[key].dtype and not g.any()


def test_state_dict_round_trip(backend):
    x, s, dy, ds = _base()
    src = fastlstm.LSTM(I, H, L, backend=backend, seed=1)
    dst = fastlstm.LSTM(I, H, L, backend=backend, seed=2)
    assert not np.array_equal(dst(x, s)[0], src(x, s)[0])
    dst.load_state_dict(src.state_dict())
    a, b = run_layer(src, x, s, dy, ds), run_layer(dst, x, s, dy, ds)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_state_dict_is_a_copy_both_ways(backend):
    layer = fastlstm.LSTM(I, H, L, backend=backend, seed=1)
    sd = layer.state_dict()
    sd["weight_ih_l0"][...] = 7
    assert not (layer.params["weight_ih_l0"] == 7).any()
    layer.load_state_dict(sd)
    sd["weight_ih_l0"][...] = 8
    assert (layer.params["weight_ih_l0"] == 7).all()


def test_state_dict_loads_lists_and_other_dtypes(backend):
    src = fastlstm.LSTM(I, H, L, dtype=np.float64, backend=backend, seed=1)
    dst32 = fastlstm.LSTM(I, H, L, backend=backend, seed=2)
    dst32.load_state_dict(src.state_dict())
    for key, value in src.state_dict().items():
        np.testing.assert_array_equal(dst32.params[key], value.astype(np.float32), err_msg=key)
        assert dst32.params[key].dtype == np.float32
    dst64 = fastlstm.LSTM(I, H, L, dtype=np.float64, backend=backend, seed=2)
    dst64.load_state_dict({k: v.tolist() for k, v in src.state_dict().items()})
    for key, value in src.state_dict().items():
        np.testing.assert_array_equal(dst64.params[key], value, err_msg=key)


def test_state_dict_across_backends():
    """A state_dict from one backend's layer gives the same results on every backend."""
    x, s, dy, ds = _base(np.float64)
    src = fastlstm.LSTM(I, H, L, dtype=np.float64, backend=REFERENCE, seed=1)
    want = run_layer(src, x, s, dy, ds)
    for b in BACKENDS:
        dst = fastlstm.LSTM(I, H, L, dtype=np.float64, backend=b, seed=99)
        dst.load_state_dict(src.state_dict())
        assert_all_close(run_layer(dst, x, s, dy, ds), want, np.float64, b)


# -- gradients accumulate -----------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_grads_accumulate_and_zero_grad_clears(backend, dtype):
    x, s, dy, ds = make_inputs(13, T, N, I, H, L, dtype)
    layer = fastlstm.LSTM(I, H, L, dtype=dtype, backend=backend, seed=1)
    once = run_layer(layer, x, s, dy, ds)  # zeroes first
    layer.forward(x, s, training=True)
    layer.backward(dy, ds)
    for key, g in layer.grads.items():
        assert g.any(), key
        assert_close(g, 2 * once[f"grad.{key}"], dtype, key)
    layer.zero_grad()
    for key, g in layer.grads.items():
        assert not g.any(), key
    layer.forward(x, s, training=True)
    layer.backward(dy, ds)
    for key, g in layer.grads.items():
        assert_close(g, once[f"grad.{key}"], dtype, key)


def test_bias_grads_are_equal(backend):
    layer = fastlstm.LSTM(I, H, L, backend=backend, seed=1)
    run_layer(layer, *_base())
    for k in range(L):
        np.testing.assert_array_equal(layer.grads[f"bias_ih_l{k}"], layer.grads[f"bias_hh_l{k}"])


# -- initialisation ---------------------------------------------------------

@pytest.mark.parametrize("hidden", [1, 5, 64], ids=lambda h: f"H{h}")
def test_initialisation_bounds_and_seed(hidden):
    k = 1 / np.sqrt(hidden)
    a = fastlstm.LSTM(I, hidden, 2, seed=7)
    b = fastlstm.LSTM(I, hidden, 2, seed=7)
    c = fastlstm.LSTM(I, hidden, 2, seed=8)
    for key, p in a.params.items():
        assert p.dtype == np.float32
        assert np.all(np.abs(p) <= np.float32(k)), key
        np.testing.assert_array_equal(p, b.params[key], err_msg=key)
        assert not np.array_equal(p, c.params[key]), key
    every = np.concatenate([p.ravel() for p in a.params.values()])
    assert every.max() > 0.8 * k and every.min() < -0.8 * k  # spread over the interval
    assert abs(every.mean()) < 0.1 * k


def test_initialisation_same_on_every_backend_and_dtype():
    ref = fastlstm.LSTM(I, H, L, dtype=np.float64, seed=3, backend=REFERENCE)
    for b in BACKENDS:
        for dtype in DTYPES:
            layer = fastlstm.LSTM(I, H, L, dtype=dtype, seed=3, backend=b)
            for key, p in layer.params.items():
                np.testing.assert_array_equal(p, ref.params[key].astype(dtype), err_msg=f"{b} {key}")


def test_unseeded_layers_differ():
    a, b = fastlstm.LSTM(I, H), fastlstm.LSTM(I, H)
    assert not np.array_equal(a.params["weight_hh_l0"], b.params["weight_hh_l0"])


# -- introspection ------------------------------------------------------------

def test_available_backends_has_numpy():
    names = fastlstm.available_backends()
    assert isinstance(names, list) and "numpy" in names
    assert names[-1] == "numpy"  # fastest first, the fallback last
    assert set(names) <= {"c", "cuda", "numpy"}


def test_show_config(capsys):
    assert fastlstm.show_config() is None  # printed once in a REPL, not echoed again
    out = capsys.readouterr().out
    info = fastlstm.show_config(mode="dicts")
    assert isinstance(info, dict)
    assert info["backends"] == fastlstm.available_backends()
    assert info["fastlstm"] == fastlstm.__version__
    assert "backends" in out and "numpy" in out
    for name in info["unavailable"]:
        assert name not in info["backends"]


def test_repr_names_the_configuration(backend):
    text = repr(fastlstm.LSTM(I, H, 2, batch_first=True, dropout=0.25, dtype=np.float64, backend=backend))
    for part in (f"LSTM({I}, {H}", "num_layers=2", "batch_first=True", "dropout=0.25", "float64", backend):
        assert part in text


def test_show_config_reports_bad_settings(capsys, monkeypatch):
    """A bad or unknown FASTLSTM_* variable is listed by show_config, never raised."""
    monkeypatch.setenv("FASTLSTM_KERNEL", "avx3")
    monkeypatch.setenv("FASTLSTM_NUM_THREADS", "two")
    monkeypatch.setenv("FASTLSTM_KERNLE", "avx2")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    fastlstm.show_config()
    out = capsys.readouterr().out
    info = fastlstm.show_config(mode="dicts")
    problems = info["setting_problems"]
    assert "FASTLSTM_KERNEL='avx3'" in problems["FASTLSTM_KERNEL"]
    assert "FASTLSTM_NUM_THREADS='two'" in problems["FASTLSTM_NUM_THREADS"]
    assert "not a fastlstm variable" in problems["FASTLSTM_KERNLE"]
    assert info["settings"]["FASTLSTM_KERNEL"] == "avx3"
    assert "Haswell" in info["OPENBLAS_CORETYPE"]
    assert "FASTLSTM_KERNEL" in out and "avx3" in out
    if "c" in info["backends"]:
        assert info["c_kernel"].startswith("error: FASTLSTM_KERNEL='avx3'")


def test_show_config_mode_is_checked():
    with pytest.raises(ValueError, match="mode must be"):
        fastlstm.show_config(mode="json")
