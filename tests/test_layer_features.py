"""torch.nn.LSTM's whole surface on fastlstm.LSTM: bidirectional layers, projections,
variable lengths (packed-sequence semantics), unbatched input, a loss on the final
state only; the layer's gradients against finite differences (float64, NumPy
reference) and, with PyTorch installed, every backend against torch."""

import warnings

import numpy as np
import pytest

import fastlstm
from lstm_testing import BACKENDS, REL_TOL, gc_close, numeric_grad, rel_err

T, N, I, H = 5, 4, 3, 6
LENGTHS = [5, 2, 0, 3]  # unsorted, with T and 0
HOST = [b for b in BACKENDS if b != "cuda"]


def _layer(backend, dtype=np.float64, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # backends without an option fall back
        return fastlstm.LSTM(I, H, dtype=dtype, backend=backend, seed=3, **kw)


def _run(layer, x, state, dy, dstate, lengths):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        layer.zero_grad()
        y, (h, c) = layer.forward(x, state, lengths=lengths, training=True)
        dx, (dh0, dc0) = layer.backward(dy, dstate)
    return dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0, **{f"grad.{k}": g.copy() for k, g in layer.grads.items()})


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("config", [dict(bidirectional=True), dict(proj_size=2),
                                    dict(bidirectional=True, proj_size=2, num_layers=2, batch_first=True)],
                         ids=["bidir", "proj", "bidir-proj-L2-bfirst"])
def test_layer_gradients_match_finite_differences(config, lengths):
    layer = _layer("numpy", **config)
    D, L = 2 if layer.bidirectional else 1, layer.num_layers
    K = layer.proj_size or H
    rng = np.random.default_rng(9)
    x = rng.standard_normal((N, T, I) if layer.batch_first else (T, N, I))
    h0, c0 = 0.5 * rng.standard_normal((D * L, N, K)), 0.5 * rng.standard_normal((D * L, N, H))
    R1 = rng.standard_normal(x.shape[:2] + (D * K,))
    R2, R3 = rng.standard_normal(h0.shape), rng.standard_normal(c0.shape)

    def loss():
        y, (h, c) = layer.forward(x, (h0, c0), lengths=lengths)
        return np.sum(y * R1) + np.sum(h * R2) + np.sum(c * R3)

    got = _run(layer, x, (h0, c0), R1, (R2, R3), lengths)
    for name, p in layer.params.items():
        gc_close(got[f"grad.{name}"], numeric_grad(loss, p), f"d{name}")
    gc_close(got["dx"], numeric_grad(loss, x), "dx")
    gc_close(got["dh0"], numeric_grad(loss, h0), "dh0")
    gc_close(got["dc0"], numeric_grad(loss, c0), "dc0")


def _torch_case(torch, layer, dtype, lengths, seed=4):
    """The same computation in torch (packed when lengths are given): outputs, states, grads."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    D, L, K = 2 if layer.bidirectional else 1, layer.num_layers, layer.proj_size or H
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    m = torch.nn.LSTM(I, H, L, bidirectional=layer.bidirectional, proj_size=layer.proj_size,
                      batch_first=layer.batch_first).to(tdt)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, T, I) if layer.batch_first else (T, N, I)).astype(dtype)
    h0 = rng.standard_normal((D * L, N, K)).astype(dtype)
    c0 = rng.standard_normal((D * L, N, H)).astype(dtype)
    dy = rng.standard_normal(x.shape[:2] + (D * K,)).astype(dtype)
    dh, dc = rng.standard_normal(h0.shape).astype(dtype), rng.standard_normal(c0.shape).astype(dtype)
    tx, th0, tc0 = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    inp = tx if lengths is None else pack_padded_sequence(tx, torch.tensor(lengths), enforce_sorted=False,
                                                          batch_first=layer.batch_first)
    out, (hn, cn) = m(inp, (th0, tc0))
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=layer.batch_first, total_length=T)
    (out * torch.from_numpy(dy)).sum().add((hn * torch.from_numpy(dh)).sum()).add(
        (cn * torch.from_numpy(dc)).sum()).backward()
    want = dict(y=out.detach().numpy(), h=hn.detach().numpy(), c=cn.detach().numpy(),
                dx=tx.grad.numpy(), dh0=th0.grad.numpy(), dc0=tc0.grad.numpy(),
                **{f"grad.{k}": p.grad.numpy() for k, p in m.named_parameters()})
    return (x, (h0, c0), dy, (dh, dc)), want


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("lengths", [None, [5, 1, 3, 2]], ids=["full", "lengths"])
@pytest.mark.parametrize("config", [dict(bidirectional=True), dict(proj_size=2),
                                    dict(bidirectional=True, proj_size=3, num_layers=3),
                                    dict(num_layers=2, batch_first=True)],
                         ids=["bidir", "proj", "bidir-proj-L3", "L2-bfirst"])
def test_matches_torch(backend, dtype, lengths, config):
    torch = pytest.importorskip("torch")
    layer = _layer(backend, dtype, **config)
    args, want = _torch_case(torch, layer, dtype, lengths)
    got = _run(layer, *args, lengths)
    assert sorted(got) == sorted(want)
    for key in want:
        assert rel_err(got[key], want[key]) < REL_TOL[np.dtype(dtype)], key


@pytest.mark.parametrize("backend", HOST)
def test_state_dict_round_trips_with_torch(backend):
    torch = pytest.importorskip("torch")
    m = torch.nn.LSTM(I, H, 2, bidirectional=True, proj_size=2)
    layer = _layer(backend, np.float32, num_layers=2, bidirectional=True, proj_size=2)
    assert list(layer.state_dict()) == list(m.state_dict())  # torch's names, in torch's order
    for k, v in layer.state_dict().items():
        assert v.shape == tuple(m.state_dict()[k].shape), k
    layer.load_state_dict(m.state_dict())
    m2 = torch.nn.LSTM(I, H, 2, bidirectional=True, proj_size=2)
    m2.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])


@pytest.mark.parametrize("backend", HOST)
def test_lengths_rows_are_independent(backend):
    """A batch with lengths gives each sequence what it gives alone, cut to its length."""
    layer = _layer(backend, np.float64, bidirectional=True, num_layers=2)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, N, I))
    y, (h, c) = layer(x, lengths=LENGTHS)
    for n, n_len in enumerate(LENGTHS):
        if n_len == 0:
            assert not y[:, n].any() and not h[:, n].any() and not c[:, n].any()
            continue
        y1, (h1, c1) = layer(x[:n_len, n:n + 1])
        np.testing.assert_allclose(y[:n_len, n], y1[:, 0], rtol=1e-12, atol=1e-14)
        assert not y[n_len:, n].any()
        np.testing.assert_allclose(h[:, n], h1[:, 0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c[:, n], c1[:, 0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", HOST)
def test_unbatched_input_is_a_batch_of_one(backend):
    layer = _layer(backend, np.float64, bidirectional=True, proj_size=2, num_layers=2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, I))
    h0, c0 = rng.standard_normal((4, 2)), rng.standard_normal((4, H))
    y, (h, c) = layer.forward(x, (h0, c0), training=True)
    assert y.shape == (T, 4) and h.shape == (4, 2) and c.shape == (4, H)
    dx, (dh0, dc0) = layer.backward(np.ones_like(y), (np.ones_like(h), None))
    g1 = {k: g.copy() for k, g in layer.grads.items()}
    layer.zero_grad()
    yb, (hb, cb) = layer.forward(x[:, None], (h0[:, None], c0[:, None]), training=True)
    dxb, (dh0b, dc0b) = layer.backward(np.ones_like(yb), (np.ones_like(hb), None))
    for a, b in ((y, yb[:, 0]), (h, hb[:, 0]), (c, cb[:, 0]), (dx, dxb[:, 0]), (dh0, dh0b[:, 0]),
                 (dc0, dc0b[:, 0])):
        np.testing.assert_array_equal(a, b)
    for k in g1:
        np.testing.assert_array_equal(g1[k], layer.grads[k])


@pytest.mark.parametrize("backend", HOST)
def test_loss_on_the_final_state_only(backend):
    """backward(dy=None, dstate=...) equals backward with a dy of zeros."""
    layer = _layer(backend, np.float64, proj_size=2)
    x = np.random.default_rng(4).standard_normal((T, N, I))
    layer.forward(x, training=True)
    dx, (dh0, dc0) = layer.backward(None, (np.ones((1, N, 2)), None))
    g1 = {k: g.copy() for k, g in layer.grads.items()}
    layer.zero_grad()
    y, _ = layer.forward(x, training=True)
    dx2, (dh02, dc02) = layer.backward(np.zeros_like(y), (np.ones((1, N, 2)), None))
    np.testing.assert_array_equal(dx, dx2)
    for k in g1:
        np.testing.assert_array_equal(g1[k], layer.grads[k])
    layer.forward(x, training=True)
    with pytest.raises(ValueError, match="backward needs dy or dstate"):
        layer.backward()


@pytest.mark.parametrize("backend", HOST)
def test_step_with_a_projection_matches_forward(backend):
    layer = _layer(backend, np.float64, proj_size=2, num_layers=2)
    x = np.random.default_rng(5).standard_normal((T, N, I))
    y, (h, c) = layer(x)
    state = None
    for t in range(T):
        h_t, state = layer.step(x[t], state)
        np.testing.assert_allclose(h_t, y[t], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state[0], h, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state[1], c, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: _layer("numpy", bidirectional=True).step(np.ones((N, I))), ValueError, "no reverse direction|reverse"),
    (lambda: _layer("numpy", proj_size=H), ValueError, "proj_size has to be smaller than hidden_size"),
    (lambda: _layer("numpy", proj_size=-1), ValueError, "proj_size should be a positive integer"),
    (lambda: _layer("numpy", proj_size=1.5), TypeError, "proj_size must be an integer"),
    (lambda: _layer("numpy")(np.ones((T, N, I)), lengths=[1, 2, 3]), ValueError, r"lengths must have shape \(N,\)"),
    (lambda: _layer("numpy")(np.ones((T, N, I)), lengths=[1, 2, 3, 6]), ValueError, r"lengths must be in \[0, T\]"),
    (lambda: _layer("numpy")(np.ones((T, N, I)), lengths=[1, 2, 3, -1]), ValueError, r"lengths must be in \[0, T\]"),
    (lambda: _layer("numpy")(np.ones((T, N, I)), lengths=[1.0, 2, 3, 4]), TypeError, "lengths must hold integers"),
    (lambda: _layer("numpy")(np.ones((T, N, I)), lengths=[True] * 4), TypeError, "lengths must hold integers"),
    (lambda: _layer("numpy")(np.ones((T, N, I)), lengths=np.ones(4, complex)), TypeError, "lengths must hold"),
    (lambda: _layer("numpy")(np.ones((T, N, I)), lengths=np.array([1, 2, None, 4], object)), TypeError,
     "lengths must hold integers"),
    (lambda: _layer("numpy", bidirectional=True)(np.ones((T, N, I)), (np.zeros((1, N, H)), None)), ValueError,
     r"state\[0\] must have shape \(2\*L, N, H\)"),
    (lambda: _layer("numpy", proj_size=2)(np.ones((T, N, I)), (np.zeros((1, N, H)), None)), ValueError,
     r"state\[0\] must have shape \(L, N, P\) = \(1, 4, 2\)"),
], ids=["step-bidir", "proj-too-big", "proj-negative", "proj-float", "lengths-shape", "lengths-above-T",
        "lengths-negative", "lengths-float", "lengths-bool", "lengths-complex", "lengths-object",
        "state-bidir", "state-proj"])
def test_bad_input_is_named(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_dropout_on_one_layer_warns_as_torch_does():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        fastlstm.LSTM(I, H, 1, dropout=0.2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_is_never_read(backend):
    """Whatever the padding holds (NaN, inf), outputs and gradients are those of zero padding."""
    layer = _layer(backend, np.float64, bidirectional=True, proj_size=2, num_layers=2)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((T, N, I))
    dy = rng.standard_normal((T, N, 4))
    clean, dirty = x.copy(), x.copy()
    for n, n_len in enumerate(LENGTHS):
        clean[n_len:, n] = 0
        dirty[n_len:, n] = np.nan if n % 2 else np.inf
        dy[n_len:, n] = np.nan
    want = _run(layer, clean, None, np.nan_to_num(dy), None, LENGTHS)
    got = _run(layer, dirty, None, dy, None, LENGTHS)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("offset", [0, 4, 16, 60])
@pytest.mark.parametrize("config", [dict(hidden_size=40), dict(hidden_size=37, bidirectional=True)],
                         ids=["H40", "bidir-H37"])
def test_padded_outputs_are_zero_wherever_the_rows_start(config, offset, monkeypatch):
    # the C loops zero a lengths batch's padded rows of y, whole cache lines past the
    # caches and the lines at a row's ends as usual: rows that start anywhere in a line
    # (fresh outputs poisoned with NaN, offset bytes past a line) come out zero there
    # and as the NumPy reference elsewhere
    fresh = fastlstm.functional._new_scratch

    def poisoned(shape, dtype, xp=fastlstm.functional.HostArrays):
        if xp.on_device or np.dtype(dtype) != np.float32:
            return fresh(shape, dtype, xp)
        n = int(np.prod(shape))
        raw = np.full(n + 32, np.nan, np.float32)
        start = (-raw.ctypes.data % 64 + offset) // 4
        return raw[start:start + n].reshape(shape)

    monkeypatch.setattr(fastlstm.functional, "_new_scratch", poisoned)
    monkeypatch.setattr(fastlstm.layer, "_new_scratch", poisoned)
    rng = np.random.default_rng(7)
    Tl, Nl = 9, 21
    lengths = rng.integers(0, Tl + 1, Nl)
    x = rng.standard_normal((Tl, Nl, 16)).astype(np.float32)
    ref = fastlstm.LSTM(16, dtype=np.float32, backend="numpy", seed=2, **config)
    want, _ = ref.forward(x, lengths=lengths)
    for backend in HOST:
        layer = fastlstm.LSTM(16, dtype=np.float32, backend=backend, seed=2, **config)
        y, _ = layer.forward(x, lengths=lengths)
        pad = np.arange(Tl)[:, None] >= lengths[None, :]
        assert np.all(y[pad] == 0), backend
        assert rel_err(y, want) < REL_TOL[np.dtype(np.float32)], backend


@pytest.mark.parametrize("backend", HOST)
def test_buffers_reused_between_calls_change_nothing(backend, monkeypatch):
    # outputs, masks and gradients between layers live in the layer's workspace across calls:
    # with an inference pass and a dropped training pass in between, the same numbers as
    # fresh arrays every time, and the caller's dy left alone. A buffer given back is
    # filled with NaN (or all ones) at once, so that a use after giving it back shows.
    give = fastlstm.functional.Workspace.give

    def poisoned(self, *arrays, **kw):
        for a in arrays:  # (dropout's random words are integers)
            a.fill(np.nan if a.dtype.kind == "f" else np.iinfo(a.dtype).max)
        give(self, *arrays, **kw)

    monkeypatch.setattr(fastlstm.functional.Workspace, "give", poisoned)
    monkeypatch.setattr(fastlstm.functional.Workspace, "SMALL_BYTES", 0)  # these small ones too
    rng = np.random.default_rng(6)
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    dy = rng.standard_normal((T, N, H)).astype(np.float32)
    dy_copy = dy.copy()
    runs = []
    for reuse in (True, False):
        layer = fastlstm.LSTM(I, H, 3, dropout=0.4, backend=backend, seed=5)
        layer._reuse_buffers = reuse
        run = []
        for k in range(3):
            layer.zero_grad()
            y, _ = layer.forward(x, training=True)
            y_eval, _ = layer.forward(x * 2)  # takes and gives back buffers meanwhile
            layer.forward(x * 3, training=True)  # a training pass that never runs backward
            y, _ = layer.forward(x + k, training=True)
            dx, _ = layer.backward(dy)
            run += [y, y_eval, dx] + [g.copy() for g in layer.grads.values()]
        runs.append(run)
    assert np.array_equal(dy, dy_copy)
    for a, b in zip(*runs, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("l2", [None, 1 << 20, 1000], ids=["no-L2", "L2-holds-W_hh", "L2-too-small"])
@pytest.mark.parametrize("N", [1, 3, 8, 70])
def test_bidirectional_inference_runs_directions_apart_below_the_row_limit(monkeypatch, N, l2):
    # a small inference batch runs the two directions one after the other on all the
    # threads, training (and a large batch) side by side on half of them each, and so does
    # an inference batch of a few rows where a core's L2 holds a direction's W_hh (6.4 KB
    # here): the same numbers either way (each unit's sums in the same order on any split)
    pytest.importorskip("fastlstm.backends._c", reason="C backend not built")
    monkeypatch.setattr(fastlstm._config, "_L2_BYTES", [l2])
    cfg = fastlstm._config
    side = N >= cfg.DIRECTIONS_APART_ROWS or (N >= cfg.DIRECTIONS_SIDE_MIN_ROWS and l2 is not None
                                              and 4 * 20 * 20 * 4 <= l2)
    monkeypatch.setenv("FASTLSTM_NUM_THREADS", "2")
    monkeypatch.setenv("FASTLSTM_MIN_PARALLEL_WORK", "0")
    seen = []
    run = fastlstm.layer.run_directions

    def spy(be, tasks, xp, side_by_side=True):
        seen.append(side_by_side)
        return run(be, tasks, xp, side_by_side)

    monkeypatch.setattr(fastlstm.layer, "run_directions", spy)
    layer = fastlstm.LSTM(70, 20, 2, bidirectional=True, backend="c", seed=4)
    x = np.random.default_rng(2).standard_normal((9, N, 70)).astype(np.float32)
    y, (h, c) = layer.forward(x)
    assert seen == [side] * 2
    y_train, (h_train, c_train) = layer.forward(x, training=True)
    assert seen[2:] == [True, True]
    np.testing.assert_array_equal(y, y_train)
    np.testing.assert_array_equal(h, h_train)
    np.testing.assert_array_equal(c, c_train)
    for mode, forced in (("apart", False), ("side-by-side", True)):  # FASTLSTM_DIRECTIONS forces either
        monkeypatch.setenv("FASTLSTM_DIRECTIONS", mode)
        del seen[:]
        np.testing.assert_array_equal(layer.forward(x, training=True)[0], y)
        assert seen == [forced, forced]
    monkeypatch.setenv("FASTLSTM_DIRECTIONS", "sideways")
    with pytest.raises(fastlstm._config.ConfigError, match="FASTLSTM_DIRECTIONS='sideways'"):
        layer.forward(x)


def test_l2_size_is_read_from_sysfs_or_none(monkeypatch, tmp_path):
    cfg = fastlstm._config
    got = cfg._read_l2_bytes()
    assert got is None or (isinstance(got, int) and got > 0)
    calls = []
    monkeypatch.setattr(cfg, "_L2_BYTES", [])
    monkeypatch.setattr(cfg, "_read_l2_bytes", lambda: calls.append(1) or 3 << 20)
    assert cfg.l2_cache_bytes() == 3 << 20 and cfg.l2_cache_bytes() == 3 << 20
    assert calls == [1]  # read once


@pytest.mark.parametrize("l2,want", [(None, True), (1 << 20, True), (2 << 20, False), (32 << 20, False)])
def test_one_row_ahead_runs_below_two_megabytes_of_l2(monkeypatch, l2, want):
    cfg = fastlstm._config
    monkeypatch.setattr(cfg, "_L2_BYTES", [l2])
    monkeypatch.delenv("FASTLSTM_ONE_ROW_AHEAD", raising=False)
    assert cfg.one_row_ahead() is want
    for mode, forced in (("on", True), ("off", False)):
        monkeypatch.setenv("FASTLSTM_ONE_ROW_AHEAD", mode)
        assert cfg.one_row_ahead() is forced
    monkeypatch.setenv("FASTLSTM_ONE_ROW_AHEAD", "sometimes")
    with pytest.raises(cfg.ConfigError, match="FASTLSTM_ONE_ROW_AHEAD='sometimes'"):
        cfg.one_row_ahead()
    assert "FASTLSTM_ONE_ROW_AHEAD" in cfg.settings()[1]
