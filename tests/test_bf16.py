"""bf16 weights for inference (LSTM.inference_weights, CharModel.generate(weights=),
csrc/lstm_bf16.h): the rounding against NumPy's and torch's, every bf16 kernel path of
this CPU against a NumPy emulation and within the derived error bound of float32, the
layer's snapshot rules and errors, the generation loop, and a small trained model whose
held-out loss moves by less than 0.01 nats per character.
"""

import numpy as np
import pytest
from test_trainer import make_text

import fastlstm
from fastlstm._bf16 import UNIT_ROUNDOFF, round_bf16
from fastlstm.charlm.model import CharModel

c_backend = pytest.importorskip("fastlstm.backends._c", reason="C backend not built")
PATHS = c_backend.BF16_KERNELS
needs_kernels = pytest.mark.skipif(not PATHS, reason="this build has no bf16 kernels")


def bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


# ----------------------------------------------------------------------------- rounding
SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, -np.nan,
                    np.finfo(np.float32).max, -np.finfo(np.float32).max, np.finfo(np.float32).tiny,
                    1e-45, -3e-40, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 1 + 2.0 ** -8 + 2.0 ** -20,
                    -(1 + 2.0 ** -8), 3.0e38, 65504.0], np.float32)


def test_reference_rounding_is_nearest_even():
    rng = np.random.default_rng(0)
    x = np.concatenate([SPECIAL, rng.standard_normal(20000).astype(np.float32),
                        (rng.integers(0, 2 ** 32, 20000, dtype=np.uint64)).astype(np.uint32).view(np.float32)])
    r = round_bf16(x)
    finite = np.isfinite(x) & np.isfinite(r)
    assert (bits(r)[finite] & 0xFFFF == 0).all()  # representable in bf16
    # nearest: the other neighbour is never closer; ties go to the even one
    up = (bits(r) + 0x10000).view(np.float32)
    down = (bits(r) - 0x10000).view(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(r.astype(np.float64) - x)
        for other in (up, down):
            ok = np.isfinite(other)
            d2 = np.abs(other.astype(np.float64) - x)
            m = finite & ok
            assert (d[m] <= d2[m]).all()
            tie = m & (d == d2)
            assert ((bits(r)[tie] >> 16) & 1 == 0).all()
    assert round_bf16(np.float32(1 + 2.0 ** -8)) == 1.0  # a tie, to even
    assert round_bf16(np.float32(1 + 3 * 2.0 ** -8)) == np.float32(1 + 2.0 ** -6)
    assert round_bf16(np.finfo(np.float32).max) == np.inf
    nan = round_bf16(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(nan).all() and np.signbit(nan).tolist() == [False, True]
    assert np.isposinf(round_bf16(np.float32(np.inf))) and np.isneginf(round_bf16(np.float32(-np.inf)))
    assert np.signbit(round_bf16(np.float32(-0.0)))


def test_c_rounding_matches_the_reference_bit_for_bit():
    rng = np.random.default_rng(1)
    x = np.concatenate([SPECIAL, (rng.integers(0, 2 ** 32, 100000, dtype=np.uint64)).astype(np.uint32)
                        .view(np.float32)])
    got = c_backend.bf16_round(x)
    assert got.dtype == np.uint16
    want = (bits(round_bf16(x)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    assert (got[~nan] == want[~nan]).all()
    assert np.isnan(c_backend.bf16_widen(got[nan])).all()  # NaN stays NaN (payload may differ)
    widened = c_backend.bf16_widen(got)
    assert (bits(widened)[~nan] == bits(round_bf16(x))[~nan]).all()


def test_rounding_agrees_with_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = np.concatenate([SPECIAL[np.isfinite(SPECIAL)], rng.standard_normal(50000).astype(np.float32) * 100])
    want = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    assert (bits(round_bf16(x)) == bits(want)).all()


# ----------------------------------------------------------------------------- kernels
def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def emulate(x, layers, h0, c0, round_activations, reverse=False):
    """float64 emulation of the bf16 kernels: weights rounded, activations too on the
    avx512bf16 path, sums exact. layers: (W_ih, W_hh, b) float32. Returns y, h_n, c_n."""
    act = round_bf16 if round_activations else (lambda a: a)
    inp = x[::-1] if reverse else x
    hs, cs = [], []
    for k, (W_ih, W_hh, b) in enumerate(layers):
        Wi, Wh = round_bf16(W_ih).astype(np.float64), round_bf16(W_hh).astype(np.float64)
        h, c = h0[k].astype(np.float64), c0[k].astype(np.float64)
        out = []
        for xt in inp:
            g = act(xt).astype(np.float64) @ Wi.T + act(h.astype(np.float32)).astype(np.float64) @ Wh.T + b
            i, f, gg, o = np.split(g, 4, axis=1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(gg)
            h = sigmoid(o) * np.tanh(c)
            out.append(h)
        inp = np.array(out)
        hs.append(h)
        cs.append(c)
    return (inp[::-1] if reverse else inp), np.array(hs), np.array(cs)


def random_stack(rng, L, I0, H, scale=0.6):
    return [(rng.uniform(-scale, scale, (4 * H, I0 if k == 0 else H)).astype(np.float32),
             rng.uniform(-scale, scale, (4 * H, H)).astype(np.float32),
             rng.uniform(-scale, scale, 4 * H).astype(np.float32)) for k in range(L)]


def run_kernel(x, layers, h0, c0, reverse=False):
    T, N, _ = x.shape
    L, H = len(layers), layers[0][1].shape[1]
    y = np.empty((T, N, H), np.float32)
    h_n, c_n = np.empty((L, N, H), np.float32), np.empty((L, N, H), np.float32)
    packed = [c_backend.bf16_pack(W_ih, W_hh, 4) for W_ih, W_hh, _ in layers]
    c_backend.bf16_forward(x, packed, [b for *_, b in layers], h0, c0, y, h_n, c_n, reverse)
    return y, h_n, c_n


@needs_kernels
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("T, N, I0, H, L, reverse", [(1, 1, 5, 7, 1, False), (4, 3, 6, 33, 2, False),
                                                     (3, 6, 64, 40, 2, True), (2, 9, 1, 17, 3, False)])
def test_kernels_match_the_emulation(monkeypatch, path, T, N, I0, H, L, reverse):
    monkeypatch.setenv("FASTLSTM_BF16_KERNEL", path)
    assert c_backend.bf16_path() == path
    rng = np.random.default_rng(T * 100 + H)
    layers = random_stack(rng, L, I0, H)
    x = rng.standard_normal((T, N, I0)).astype(np.float32)
    h0 = (0.5 * rng.standard_normal((L, N, H))).astype(np.float32)
    c0 = (0.5 * rng.standard_normal((L, N, H))).astype(np.float32)
    got = run_kernel(x, layers, h0, c0, reverse)
    want = emulate(x, layers, h0, c0, path == "avx512bf16", reverse)
    # Rounding activations is discontinuous: after a first step (or layer) the emulation's
    # float64 h and the kernel's float32 h may round to neighbouring bf16 values.
    atol = 1e-3 if path == "avx512bf16" and (T > 1 or L > 1) else 3e-5
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=atol)


@needs_kernels
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("N, I0, H", [(1, 64, 300), (5, 3, 21)])
def test_one_step_is_within_the_bf16_bound_of_float32(monkeypatch, path, N, I0, H):
    """|d gate| <= u * sum_k |w_k a_k| per pre-activation (u = 2^-8 per rounded weight,
    twice that plus 2^-16 when the activations a are rounded too, plus float32's K 2^-24),
    then through the cell: sigmoid' <= 1/4, tanh' <= 1, |i|, |g|, |o|, |tanh| <= 1."""
    monkeypatch.setenv("FASTLSTM_BF16_KERNEL", path)
    rng = np.random.default_rng(H)
    layers = random_stack(rng, 1, I0, H, scale=1.0)
    W_ih, W_hh, b = layers[0]
    x = rng.standard_normal((1, N, I0)).astype(np.float32)
    h0 = (0.8 * rng.uniform(-1, 1, (1, N, H))).astype(np.float32)
    c0 = rng.standard_normal((1, N, H)).astype(np.float32)
    _, h, c = run_kernel(x, layers, h0, c0)
    # the exact step (what float32 computes, up to its own rounding)
    a = np.concatenate([x[0], h0[0]], axis=1).astype(np.float64)
    W = np.concatenate([W_ih, W_hh], axis=1).astype(np.float64)
    pre = a @ W.T + b
    i, f, g, o = (sigmoid(p) if k != 2 else np.tanh(p) for k, p in enumerate(np.split(pre, 4, axis=1)))
    c_exact = f * c0[0] + i * g
    h_exact = o * np.tanh(c_exact)
    u = UNIT_ROUNDOFF if path != "avx512bf16" else 2 * UNIT_ROUNDOFF + UNIT_ROUNDOFF ** 2
    u += W.shape[1] * 2.0 ** -24
    d = np.split(u * (np.abs(a) @ np.abs(W).T), 4, axis=1)  # per gate pre-activation
    bound_c = np.abs(c0[0]) * d[1] / 4 + d[0] / 4 + d[2] + d[0] * d[2] / 4
    bound_h = d[3] / 4 + bound_c + d[3] * bound_c / 4
    err_c, err_h = np.abs(c[0] - c_exact), np.abs(h[0] - h_exact)
    assert (err_c <= bound_c + 2e-6).all(), (err_c - bound_c).max()
    assert (err_h <= bound_h + 2e-6).all(), (err_h - bound_h).max()
    assert err_c.max() > 1e-5  # the weights were rounded: not the float32 result


@needs_kernels
@pytest.mark.parametrize("path", PATHS)
def test_dense_product_matches_the_emulation(monkeypatch, path):
    monkeypatch.setenv("FASTLSTM_BF16_KERNEL", path)
    rng = np.random.default_rng(3)
    W = rng.standard_normal((23, 37)).astype(np.float32)
    h = rng.uniform(-1, 1, (6, 37)).astype(np.float32)
    act = round_bf16(h) if path == "avx512bf16" else h
    want = act.astype(np.float64) @ round_bf16(W).T.astype(np.float64)
    np.testing.assert_allclose(c_backend.bf16_dense(h, c_backend.bf16_pack(None, W, 1)), want, atol=2e-5)


def test_unsupported_path_is_a_clear_error(monkeypatch):
    missing = [p for p in ("avx512bf16", "avx512", "avx2", "portable") if p not in PATHS]
    monkeypatch.setenv("FASTLSTM_BF16_KERNEL", "nonsense")
    with pytest.raises(ValueError, match="FASTLSTM_BF16_KERNEL"):
        c_backend.bf16_path()
    if missing and PATHS:
        monkeypatch.setenv("FASTLSTM_BF16_KERNEL", missing[0])
        with pytest.raises(ValueError, match="not supported on this CPU"):
            c_backend.bf16_path()


def test_show_config_names_the_bf16_path():
    info = fastlstm.show_config(mode="dicts")
    assert info["c_bf16_kernel"] == (PATHS[0] if PATHS else "none")
    assert info["c_bf16_kernels_supported"] == PATHS


# ----------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("path", PATHS or ["none"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_bf16_inference_matches_the_emulation(monkeypatch, path, bidirectional):
    if PATHS:
        monkeypatch.setenv("FASTLSTM_BF16_KERNEL", path)
    lstm = fastlstm.LSTM(5, 19, 2, bidirectional=bidirectional, seed=1, backend="c")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 3, 5)).astype(np.float32)
    y32, _ = lstm(x)
    lstm.inference_weights("bf16")
    assert lstm.inference_precision == "bf16"
    y, (h, c) = lstm(x)
    ref = fastlstm.LSTM(5, 19, 2, bidirectional=bidirectional, seed=1, backend="numpy")
    ref.inference_weights("bf16")  # the numpy backend: float32 math on the rounded weights
    yr, (hr, cr) = ref(x)
    tol = 2e-3 if path == "avx512bf16" else 3e-5  # that path rounds the activations too
    np.testing.assert_allclose(y, yr, atol=tol)
    np.testing.assert_allclose(h, hr, atol=tol)
    np.testing.assert_allclose(c, cr, atol=tol)
    assert 0 < np.abs(y - y32).max() < 0.01
    y_exact, _ = lstm(x, weights="float32")  # a per-call override
    np.testing.assert_array_equal(y_exact, y32)
    lstm.inference_weights(None)
    np.testing.assert_array_equal(lstm(x)[0], y32)


@pytest.mark.parametrize("path", PATHS or ["none"])
def test_layer_step_in_bf16_is_forward_step_by_step(monkeypatch, path):
    if PATHS:
        monkeypatch.setenv("FASTLSTM_BF16_KERNEL", path)
    lstm = fastlstm.LSTM(4, 20, 2, seed=2)
    lstm.inference_weights("bf16")
    x = np.random.default_rng(5).standard_normal((5, 2, 4)).astype(np.float32)
    y, (h_n, c_n) = lstm(x)
    state = None
    for t in range(5):
        h_t, state = lstm.step(x[t], state)
        np.testing.assert_allclose(h_t, y[t], atol=1e-6)
    np.testing.assert_allclose(state[0], h_n, atol=1e-6)
    np.testing.assert_allclose(state[1], c_n, atol=1e-6)


def test_layer_rounds_again_when_the_parameters_change():
    lstm = fastlstm.LSTM(3, 12, seed=0)
    other = fastlstm.LSTM(3, 12, seed=9)
    x = np.random.default_rng(6).standard_normal((4, 2, 3)).astype(np.float32)
    lstm.inference_weights("bf16")
    before = lstm(x)[0]
    lstm.load_state_dict(other.state_dict())
    other.inference_weights("bf16")
    np.testing.assert_array_equal(lstm(x)[0], other(x)[0])
    # a training forward precedes every update: the next inference call rounds again
    lstm.forward(x, training=True)
    for p in lstm.params.values():
        p *= 0.5
    fresh = fastlstm.LSTM(3, 12, seed=0)
    fresh.load_state_dict(lstm.state_dict())
    fresh.inference_weights("bf16")
    np.testing.assert_array_equal(lstm(x)[0], fresh(x)[0])
    # a replaced parameter array is seen too
    lstm.params["weight_hh_l0"] = np.ascontiguousarray(other.params["weight_hh_l0"])
    fresh.params["weight_hh_l0"][...] = other.params["weight_hh_l0"]
    fresh.inference_weights("bf16")
    np.testing.assert_array_equal(lstm(x)[0], fresh(x)[0])
    assert not np.array_equal(before, lstm(x)[0])


def test_layer_bf16_errors_name_the_argument():
    lstm = fastlstm.LSTM(3, 4)
    with pytest.raises(ValueError, match="precision must be one of"):
        lstm.inference_weights("fp16")
    with pytest.raises(ValueError, match="weights must be one of"):
        lstm(np.zeros((2, 1, 3), np.float32), weights=16)
    with pytest.raises(ValueError, match="for inference"):
        lstm.forward(np.zeros((2, 1, 3), np.float32), training=True, weights="bf16")
    with pytest.raises(ValueError, match="float32 layer"):
        fastlstm.LSTM(3, 4, dtype=np.float64).inference_weights("bf16")
    with pytest.raises(ValueError, match="float32 layer"):
        fastlstm.LSTM(3, 4, dtype=np.float64).step(np.zeros((1, 3)), weights="bf16")
    # a training forward runs float32 whatever the inference precision
    lstm.inference_weights("bf16")
    x = np.ones((2, 1, 3), np.float32)
    np.testing.assert_array_equal(lstm.forward(x, training=True)[0], lstm.forward(x, weights="float32")[0])


def test_projection_and_lengths_run_float32_kernels_on_the_rounded_weights():
    lstm = fastlstm.LSTM(3, 10, 2, proj_size=4, seed=1)
    ref = fastlstm.LSTM(3, 10, 2, proj_size=4, seed=1, backend="numpy")
    for layer in (lstm, ref):
        layer.inference_weights("bf16")
    x = np.random.default_rng(7).standard_normal((5, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(lstm(x, lengths=[5, 2, 4])[0], ref(x, lengths=[5, 2, 4])[0], atol=1e-5)
    plain = fastlstm.LSTM(3, 10, seed=1)
    plain.inference_weights("bf16")
    full = plain(x)[0]
    np.testing.assert_allclose(plain(x, lengths=[5, 5, 5])[0], full, atol=1e-5)


# ----------------------------------------------------------------------------- generation
@pytest.mark.parametrize("path", PATHS or ["none"])
@pytest.mark.parametrize("num_samples", [None, 3])
def test_compiled_generation_in_bf16_gives_the_numpy_loops_characters(monkeypatch, path, num_samples):
    if PATHS:
        monkeypatch.setenv("FASTLSTM_BF16_KERNEL", path)
    model = CharModel(23, 16, 2, embed_dim=5, seed=4, backend="c")
    model.lstm.params["weight_hh_l1"] *= 3  # peakier output
    assert model._compiled_loop() is c_backend
    draw = dict(seed=9, temperature=0.8, top_k=6, num_samples=num_samples, weights="bf16")
    compiled = model.generate([3, 1, 4], 300, **draw)
    with monkeypatch.context() as m:
        m.setattr(CharModel, "_compiled_loop", lambda self: None)
        reference = model.generate([3, 1, 4], 300, **draw)
    if path == "avx512bf16":  # rounds the activations as well: close scores may swap
        rows = compiled if num_samples else [compiled]
        assert all(len(r) == 300 and 0 <= min(r) and max(r) < 23 for r in rows)
        assert np.mean(np.array(compiled) == np.array(reference)) > 0.5
    else:
        assert compiled == reference
    with pytest.raises(ValueError, match="weights must be one of"):
        model.generate([1], 5, weights="half")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small char model trained 40 steps on a made-up text, and its trainer."""
    from fastlstm.charlm.run import prepare_run, run_training
    p = tmp_path_factory.mktemp("bf16") / "words.txt"
    p.write_text(make_text(8000, seed=3), encoding="utf-8")
    given = dict(text=str(p), hidden_size=48, num_layers=2, embed_dim=16, seq_len=24, batch_size=16,
                 lr=2e-2, eval_every=40, sample_length=0, dropout=0.0, max_steps=40)
    tr = prepare_run(given, p.parent / "run")
    res = run_training(tr, progress="none", write_plot=False)
    assert res["val_loss"] < np.log(len(tr.vocab)) - 0.8  # it learned something
    return tr


def test_trained_model_held_out_loss_in_bf16_is_within_a_hundredth_of_a_nat(trained):
    model = trained.model
    loss32 = trained.evaluate()
    model.lstm.inference_weights("bf16")
    dense = model.dense.params["weight"]
    saved = dense.copy()
    try:
        loss_lstm = trained.evaluate()
        dense[...] = round_bf16(dense)  # and the dense layer's weights, as generation rounds them
        loss16 = trained.evaluate()
    finally:
        dense[...] = saved
        model.lstm.inference_weights("float32")
    assert loss_lstm != loss32 and loss16 != loss32
    assert abs(loss_lstm - loss32) < 0.01
    assert abs(loss16 - loss32) < 0.01


def test_trained_model_outputs_are_within_the_bound(trained):
    """Logits of the trained model, bf16 against float32, on held-out windows: within
    the bf16 bound of the dense layer's inputs plus what the LSTM's outputs moved."""
    model = trained.model
    ids, _ = trained.val_batches[0]
    y32, _ = model.lstm.forward(model._inputs(ids, False))
    y16, _ = model.lstm.forward(model._inputs(ids, False), weights="bf16")
    W = model.dense.params["weight"].astype(np.float64)
    z32 = y32 @ W.T
    z16 = y16 @ round_bf16(W).T.astype(np.float64)
    u = 2 * UNIT_ROUNDOFF if c_backend.BF16_KERNELS[:1] == ["avx512bf16"] else UNIT_ROUNDOFF
    bound = u * (np.abs(y16) @ np.abs(W).T) + np.abs(y16 - y32) @ np.abs(W).T
    assert (np.abs(z16 - z32) <= bound + 1e-5).all()
    assert np.abs(y16 - y32).max() < 0.05


@needs_kernels
def test_generation_loop_checks_the_bf16_panels():
    f = np.float32
    L, H, V, E, N = 1, 4, 6, 3, 1
    W_ih, W_hh, b = [np.zeros((4 * H, E), f)], [np.zeros((4 * H, H), f)], [np.zeros(4 * H, f)]
    args = dict(emb=np.zeros((V, E), f), WT=np.zeros((H, V), f), bias=np.zeros(V, f), top_k=0, noise=None,
                h_top=np.zeros((N, H), f), h=np.zeros((L, N, H), f), c=np.zeros((L, N, H), f), n=4)
    good = ([c_backend.bf16_pack(W_ih[0], W_hh[0], 4)], c_backend.bf16_pack(None, np.zeros((V, H), f), 1))
    ids = c_backend.generate(W_ih, W_hh, b, **args, bf16=good)
    assert ids.shape == (4, N) and ((0 <= ids) & (ids < V)).all()
    for bad in [(good[0], c_backend.bf16_pack(None, np.zeros((V + 1, H), f), 1)),
                ([c_backend.bf16_pack(np.zeros((4 * H, E + 1), f), W_hh[0], 4)], good[1]), ([], good[1])]:
        with pytest.raises(ValueError, match="bf16 was packed from weights of other shapes"):
            c_backend.generate(W_ih, W_hh, b, **args, bf16=bad)
