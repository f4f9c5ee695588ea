"""The trainer's NumPy toolkit (fastlstm.charlm.nn) and the character model against central finite
differences in float64; Adam against its textbook formula; clipping; state round trips.
"""

import numpy as np
import pytest

from fastlstm.charlm import nn
from fastlstm.charlm.model import CharModel
from lstm_testing import assert_close, gc_close, numeric_grad


# ----------------------------------------------------------------------------- layers
def test_embedding_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    emb = nn.Embedding(7, 4, dtype=np.float64, seed=1)
    ids = np.array([[0, 3, 3], [6, 0, 2]])  # repeated ids must accumulate
    R = rng.standard_normal((2, 3, 4))
    out = emb.forward(ids, training=True)
    assert out.shape == (2, 3, 4)
    assert np.array_equal(out[1, 0], emb.params["weight"][6])
    emb.backward(R)
    num = numeric_grad(lambda: np.sum(emb.forward(ids) * R), emb.params["weight"])
    gc_close(emb.grads["weight"], num, "embedding dW")


def test_embedding_default_dtype_is_float32():
    emb = nn.Embedding(5, 3, seed=0)
    assert emb.params["weight"].dtype == np.float32
    assert emb.forward(np.array([1, 2])).dtype == np.float32


@pytest.mark.parametrize("bias", [True, False])
def test_dense_gradients_match_finite_differences(bias):
    rng = np.random.default_rng(2)
    d = nn.Dense(5, 3, bias=bias, dtype=np.float64, seed=3)
    x = rng.standard_normal((2, 4, 5))  # leading dims are flattened into one product
    R = rng.standard_normal((2, 4, 3))
    y = d.forward(x, training=True)
    assert y.shape == (2, 4, 3)
    expected = x @ d.params["weight"].T + (d.params["bias"] if bias else 0)
    gc_close(y, expected, "dense forward")
    dx = d.backward(R)

    def f():
        return np.sum(d.forward(x) * R)

    gc_close(dx, numeric_grad(f, x), "dense dx")
    gc_close(d.grads["weight"], numeric_grad(f, d.params["weight"]), "dense dW")
    if bias:
        gc_close(d.grads["bias"], numeric_grad(f, d.params["bias"]), "dense db")
    else:
        assert "bias" not in d.params


def test_dense_gradients_accumulate():
    rng = np.random.default_rng(4)
    d = nn.Dense(3, 2, dtype=np.float64, seed=0)
    x, R = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    d.forward(x, training=True)
    d.backward(R)
    once = d.grads["weight"].copy()
    d.forward(x, training=True)
    d.backward(R)
    gc_close(d.grads["weight"], 2 * once, "accumulated dW")


def test_dropout_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    drop = nn.Dropout(0.4, seed=6)
    x = rng.standard_normal((3, 4, 5))
    R = rng.standard_normal((3, 4, 5))
    start = drop.rng.bit_generator.state

    def f():  # the same mask every time: the generator restarts from the same state
        drop.rng.bit_generator.state = start
        return np.sum(drop.forward(x, training=True) * R)

    drop.rng.bit_generator.state = start
    y = drop.forward(x, training=True)
    dx = drop.backward(R)
    gc_close(dx, numeric_grad(f, x), "dropout dx")
    kept = y != 0
    gc_close(y[kept], x[kept] / 0.6, "kept elements scaled by 1/(1-p)")


def test_dropout_rate_eval_identity_and_reproducibility():
    x = np.ones((200, 100), np.float32)
    drop = nn.Dropout(0.3, seed=1)
    assert drop.forward(x) is x  # evaluation: identity
    y = drop.forward(x, training=True)
    assert y.dtype == np.float32
    assert abs((y == 0).mean() - 0.3) < 0.02
    assert abs(y.mean() - 1.0) < 0.03
    y2 = nn.Dropout(0.3, seed=1).forward(x, training=True)
    assert np.array_equal(y, y2)
    assert np.array_equal(nn.Dropout(0.0, seed=1).forward(x, training=True), x)
    with pytest.raises(ValueError, match="dropout"):
        nn.Dropout(1.0)


@pytest.mark.parametrize("make", [lambda: nn.Embedding(3, 2, dtype=np.float16),
                                  lambda: nn.Dense(2, 2, dtype=np.int32),
                                  lambda: nn.Dense(2, 2, dtype="no-such-type")],
                         ids=["embedding-float16", "dense-int32", "dense-unknown"])
def test_toolkit_dtype_follows_the_library_rule(make):
    # the toolkit checks dtypes with fastlstm._validate.check_dtype, so it raises what LSTM does
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        make()


@pytest.mark.parametrize("p", [1.0, -0.1, "0.5", True, None])
def test_dropout_rule_is_one_value_error(p):
    with pytest.raises(ValueError, match=r"--dropout must be in \[0, 1\)"):
        nn.check_dropout(p, "--dropout")
    with pytest.raises(ValueError, match="dropout probability"):
        nn.Dropout(p)


def test_softmax_cross_entropy_gradient_matches_finite_differences():
    rng = np.random.default_rng(7)
    logits = 3 * rng.standard_normal((6, 5))
    targets = rng.integers(0, 5, 6)
    loss, d = nn.softmax_cross_entropy(logits, targets)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    naive = -np.mean(np.log(p[np.arange(6), targets]))
    assert abs(loss - naive) < 1e-12
    gc_close(d, numeric_grad(lambda: nn.softmax_cross_entropy(logits, targets)[0], logits), "dlogits")
    inplace = logits.copy()
    loss2, d2 = nn.softmax_cross_entropy(inplace, targets, out=inplace)
    assert loss2 == loss and d2 is inplace and np.array_equal(d2, d)  # same numbers, no temporary
    layer = nn.SoftmaxCrossEntropy()
    assert layer.forward(logits, targets) == loss
    gc_close(layer.backward(), d, "layer dlogits")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [-3e4, -3e4 + 1.0, -3e4]], dtype)
    targets = np.array([0, 1])
    loss, d = nn.softmax_cross_entropy(logits, targets)
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    expected1 = np.log(1 + 2 * np.exp(-1.0)) / 2  # row 0 costs ~0
    assert abs(loss - expected1) < 1e-6
    assert d.dtype == dtype
    lp = nn.log_softmax(logits)
    assert np.all(np.isfinite(lp))
    assert_close(nn.softmax(logits).sum(1), np.ones(2), dtype, "softmax rows sum to 1")


def _numpy_softmax_cross_entropy(monkeypatch, logits, targets):
    with monkeypatch.context() as m:
        m.setattr(nn, "_fused_softmax_xent", lambda *args: None)
        return nn.softmax_cross_entropy(logits.copy(), targets)


def _fused_paths():
    try:
        from fastlstm.backends import _c
    except ImportError:
        return []
    return [p for p in _c.SUPPORTED_KERNELS if p != "blas"]


@pytest.mark.parametrize("path", _fused_paths())
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 16), (33, 17), (6400, 65), (4, 200)])
def test_fused_softmax_cross_entropy_matches_the_numpy_form(monkeypatch, path, shape):
    monkeypatch.setenv("FASTLSTM_KERNEL", path)
    rng = np.random.default_rng(sum(shape))
    logits = (4 * rng.standard_normal(shape)).astype(np.float32)
    logits[0, 0] = 60.0  # a large logit: the shift by the row's maximum matters
    targets = rng.integers(0, shape[1], shape[0])
    want_loss, want = _numpy_softmax_cross_entropy(monkeypatch, logits, targets)
    loss, d = nn.softmax_cross_entropy(logits, targets)
    assert nn._fused_softmax_xent(logits, targets, None) is not None  # the C pass ran
    assert abs(loss - want_loss) <= 1e-6 * abs(want_loss)
    assert d.dtype == np.float32 and d.shape == shape
    # (p - 1 at the target cancels: a few float32 ulps of 1, scaled by 1/M)
    np.testing.assert_allclose(d, want, rtol=2e-6, atol=1e-6 / shape[0])
    inplace = logits.copy()
    loss2, d2 = nn.softmax_cross_entropy(inplace, targets, out=inplace)
    assert loss2 == loss and d2 is inplace and np.array_equal(d2, d)


def test_fused_softmax_cross_entropy_keeps_nan_and_leaves_other_inputs_to_numpy(monkeypatch):
    logits = np.zeros((3, 20), np.float32)
    logits[1, 7] = np.nan
    loss, d = nn.softmax_cross_entropy(logits, np.array([0, 1, 2]))
    assert np.isnan(loss) and np.isnan(d[1]).all() and np.isfinite(d[[0, 2]]).all()
    # float64, a strided array and targets out of range take the NumPy form
    assert nn._fused_softmax_xent(logits.astype(np.float64), np.array([0, 1, 2]), None) is None
    assert nn._fused_softmax_xent(np.zeros((3, 40), np.float32)[:, ::2], np.array([0, 1, 2]), None) is None
    assert nn._fused_softmax_xent(logits, np.array([0, 1, 20]), None) is None
    assert nn._fused_softmax_xent(logits, np.array([0, -1, 2]), None) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 17, 300_001])
def test_fill_zero_zeroes_exactly_its_array(dtype, n):
    buf = np.full(n + 2, 7, dtype)
    nn.fill_zero(buf[1:-1])
    assert not buf[1:-1].any() and buf[0] == 7 and buf[-1] == 7
    strided = np.ones(10, dtype)[::2]
    nn.fill_zero(strided)  # NumPy's assignment
    assert not strided.any()


def test_log_softmax_matches_log_of_softmax():
    rng = np.random.default_rng(8)
    z = rng.standard_normal((4, 6))
    gc_close(nn.log_softmax(z), np.log(nn.softmax(z)), "log_softmax")


# ----------------------------------------------------------------------------- clipping
def test_clip_grad_norm_scales_to_max_norm():
    rng = np.random.default_rng(9)
    grads = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    norm = np.sqrt(sum(np.sum(g ** 2) for g in grads.values()))
    before = {k: g.copy() for k, g in grads.items()}
    got = nn.clip_grad_norm(grads, 0.5)
    assert abs(got - norm) < 1e-12
    assert abs(nn.global_norm(grads) - 0.5) < 1e-6
    for k in grads:  # same direction
        gc_close(grads[k], before[k] * (0.5 / (norm + 1e-6)), f"clipped {k}")
    again = {k: g.copy() for k, g in grads.items()}
    nn.clip_grad_norm(grads, 10.0)  # below the limit: unchanged
    for k in grads:
        assert np.array_equal(grads[k], again[k])
    nn.clip_grad_norm(grads, 0)  # 0 disables
    for k in grads:
        assert np.array_equal(grads[k], again[k])


# ----------------------------------------------------------------------------- Adam
def adam_reference(p, grads, lr, b1, b2, eps):
    """Kingma & Ba with PyTorch's bias corrections, float64, one array."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat = m / (1 - b1 ** t)
        vhat = v / (1 - b2 ** t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


def test_adam_matches_reference_formula():
    rng = np.random.default_rng(10)
    p0 = rng.standard_normal((4, 3))
    gs = [rng.standard_normal((4, 3)) for _ in range(5)]
    params = {"w": p0.copy()}
    opt = nn.Adam(params, lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    for g in gs:
        opt.step({"w": g})
    gc_close(params["w"], adam_reference(p0, gs, 0.01, 0.8, 0.99, 1e-6), "adam")
    assert opt.t == 5


def test_adam_minimises_a_quadratic_in_float32():
    params = {"x": np.array([3.0, -2.0], np.float32)}
    opt = nn.Adam(params, lr=0.1)
    for _ in range(300):
        opt.step({"x": 2 * params["x"]})
    assert params["x"].dtype == np.float32
    assert np.all(np.abs(params["x"]) < 0.05)


def test_adam_state_round_trip_continues_identically():
    rng = np.random.default_rng(11)
    gs = [{"w": rng.standard_normal(6).astype(np.float32)} for _ in range(6)]
    a = {"w": np.ones(6, np.float32)}
    opt_a = nn.Adam(a, lr=0.05)
    for g in gs[:3]:
        opt_a.step(g)
    arrays = {k: v.copy() for k, v in opt_a.state_arrays().items()}
    scalars = dict(opt_a.scalars())
    b = {"w": a["w"].copy()}
    opt_b = nn.Adam(b, lr=123.0)
    opt_b.load_state(arrays, scalars)
    assert opt_b.lr == 0.05 and opt_b.t == 3
    for g in gs[3:]:
        opt_a.step(g)
        opt_b.step(g)
    assert np.array_equal(a["w"], b["w"])
    with pytest.raises(ValueError, match="shape"):
        nn.Adam({"w": np.zeros(5, np.float32)}).load_state(arrays, scalars)
    with pytest.raises(KeyError):
        nn.Adam({"q": np.zeros(6, np.float32)}).load_state(arrays, scalars)


# ----------------------------------------------------------------------------- the model
@pytest.mark.parametrize("input_mode,last_only,fold", [("embedding", False, True), ("embedding", True, True),
                                                       ("embedding", False, False), ("scaled", False, False)])
def test_charmodel_gradients_match_finite_differences(input_mode, last_only, fold):
    V, T, N = 6, 4, 2
    model = CharModel(V, hidden_size=3, num_layers=2, dropout=0.3, embed_dim=3, input_mode=input_mode,
                      seed=1, dtype=np.float64)
    model.fold_embedding = fold  # the embedding folded into layer 0's input projection
    rng = np.random.default_rng(12)
    ids = rng.integers(0, V, (T, N))
    targets = rng.integers(0, V, N if last_only else (T, N))
    start = model.rng_states()

    def f():  # same dropout masks every evaluation
        model.set_rng_states(start)
        logits, _ = model.forward(ids, training=True, last_only=last_only)
        model._saved = None
        return nn.softmax_cross_entropy(logits.reshape(-1, V), targets.reshape(-1))[0]

    model.set_rng_states(start)
    model.zero_grad()
    model.loss_and_backward(ids, targets, last_only=last_only)
    analytic = {k: g.copy() for k, g in model.grads.items()}
    assert (model._proj is not None) == fold  # the fold ran exactly when asked
    if input_mode == "embedding":
        assert "embedding.weight" in analytic
    for name, p in model.params.items():
        gc_close(analytic[name], numeric_grad(f, p), f"d {name}")


def test_flat_buffer_finds_arrays_that_tile_one_buffer():
    flat = np.arange(10.0)
    a, b = flat[:4].reshape(2, 2), flat[4:]
    assert nn.flat_buffer([a, b]) is flat
    assert nn.flat_buffer([b, a]) is None  # out of order
    assert nn.flat_buffer([a]) is None  # not all of it
    assert nn.flat_buffer([a, np.arange(6.0)]) is None
    assert nn.flat_buffer([]) is None


def test_adam_and_clipping_on_a_flat_buffer_match_the_per_array_loop():
    model = CharModel(7, hidden_size=5, num_layers=2, embed_dim=3, seed=2)
    assert nn.flat_buffer(model.params.values()) is not None
    assert nn.flat_buffer(model.grads.values()) is model._flat_grads
    loose = {k: p.copy() for k, p in model.params.items()}  # separate arrays: the loop
    opt_flat, opt_loop = nn.Adam(model.params, lr=0.01, weight_decay=0.1), nn.Adam(loose, lr=0.01, weight_decay=0.1)
    assert opt_flat._flat is not None and opt_loop._flat is None
    rng = np.random.default_rng(4)
    for _ in range(4):
        for g in model.grads.values():
            g[...] = rng.standard_normal(g.shape)
        grads = {k: g.copy() for k, g in model.grads.items()}
        assert nn.clip_grad_norm(model.grads, 1.0) == pytest.approx(nn.clip_grad_norm(grads, 1.0), rel=1e-6)
        for k in grads:
            assert_close(model.grads[k], grads[k], np.float32, k)
        opt_flat.step(model.grads)
        opt_loop.step(grads)
    for k in loose:
        assert_close(model.params[k], loose[k], np.float32, k)
    for k, a in opt_flat.state_arrays().items():
        assert_close(a, opt_loop.state_arrays()[k], np.float32, k)
    model.zero_grad()
    assert not model._flat_grads.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adam_in_one_pass_gives_the_loops_numbers(dtype, weight_decay):
    # the C backend's adam_step (when built) against the NumPy operations, bit for bit
    rng = np.random.default_rng(13)
    p0 = rng.standard_normal(1000).astype(dtype)
    gs = [rng.standard_normal(1000).astype(dtype) for _ in range(5)]
    runs = []
    for fused in (True, False):
        params = {"w": p0.copy()}
        opt = nn.Adam(params, lr=0.01, weight_decay=weight_decay)
        if not fused:
            opt._fused = None
        for g in gs:
            opt.step({"w": g})
        runs.append((params["w"], opt.m["w"], opt.v["w"]))
    for a, b in zip(*runs, strict=True):
        assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- split products
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_matmul_is_matmul_for_every_layout(monkeypatch, dtype, threads):
    # the dense layer's products on the kernels' threads (csrc lstm_parallel_matmul), against
    # NumPy's for C- and F-ordered operands, above and below the size that splits
    import fastlstm.charlm.nn as nn_mod
    rng = np.random.default_rng(3)
    for M, K, N in [(700, 31, 9), (5, 4, 3), (2, 0, 3)]:
        monkeypatch.setattr(nn_mod, "SPLIT_MIN_MACS", 0 if M > 5 else 10 ** 9)
        a = rng.standard_normal((M, K)).astype(dtype)
        b = rng.standard_normal((K, N)).astype(dtype)
        for A in (a, np.asfortranarray(a)):
            for B in (b, np.asfortranarray(b)):
                got = nn_mod.split_matmul(A, B, threads)
                np.testing.assert_allclose(got, a @ b, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
                out = np.full((M, N), np.nan, dtype)
                assert nn_mod.split_matmul(A, B, threads, out=out) is out
                np.testing.assert_allclose(out, a @ b, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


def test_dense_layer_on_threads_matches_one_thread(monkeypatch):
    import fastlstm.charlm.nn as nn_mod
    monkeypatch.setattr(nn_mod, "SPLIT_MIN_MACS", 0)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 40, 12)).astype(np.float32)
    dy = rng.standard_normal((6, 40, 5)).astype(np.float32)
    results = []
    for threads in (1, 2):
        layer = nn.Dense(12, 5, seed=1)
        layer.threads = threads
        y = layer.forward(x, training=True)
        dx = layer.backward(dy)
        results.append((y, dx, layer.grads["weight"].copy(), layer.grads["bias"].copy()))
    for one, two in zip(*results, strict=True):
        np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-5)


def test_backend_matmul_refuses_what_does_not_fit():
    _c = pytest.importorskip("fastlstm.backends._c", reason="C backend not built")
    a, b = np.ones((4, 3), np.float32), np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="do not fit"):
        _c.matmul(a, b, np.empty((4, 3), np.float32), 2)
    with pytest.raises(TypeError, match="float32 or float64"):
        _c.matmul(a, b.astype(np.float64), np.empty((4, 2), np.float32), 2)
    with pytest.raises(ValueError, match="contiguous"):
        _c.matmul(np.ones((4, 6), np.float32)[:, ::2], b, np.empty((4, 2), np.float32), 2)
