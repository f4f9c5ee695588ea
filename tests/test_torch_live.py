"""Live comparison of every backend with torch.nn.LSTM (skipped without PyTorch).

Same weights both sides: outputs, final states and every gradient, float32 and
float64, plus state_dict round trips and the carried-state ``step``.
"""

import numpy as np
import pytest

import fastlstm

torch = pytest.importorskip("torch")

from lstm_testing import REL_TOL, rel_err, skip_if_too_big_to_simulate  # noqa: E402 (after the skip)

TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}

BACKENDS = fastlstm.available_backends()
DTYPES = [np.float32, np.float64]


def _configs():
    """(T, N, I, H, L, bias, batch_first): edge cases, then a few seeded random ones."""
    cfgs = [
        (7, 4, 5, 8, 1, True, False),
        (6, 3, 4, 7, 3, True, False),     # 3 layers
        (5, 2, 3, 6, 2, True, True),      # batch_first
        (4, 3, 6, 5, 2, False, False),    # no bias
        (8, 1, 3, 4, 2, True, False),     # N=1
        (1, 3, 4, 5, 2, True, True),      # T=1
        (9, 5, 1, 4, 1, True, False),     # I=1
        (12, 9, 17, 67, 3, True, False),  # H not a multiple of any block size
    ]
    rng = np.random.default_rng(2024)
    for _ in range(3):
        T, N, I, H = (int(v) for v in rng.integers([1, 1, 1, 1], [25, 20, 40, 70]))
        cfgs.append((T, N, I, H, int(rng.integers(1, 4)), bool(rng.integers(2)), bool(rng.integers(2))))
    return cfgs


CONFIGS = _configs()


def cfg_id(c):
    T, N, I, H, L, bias, bf = c
    return f"T{T}-N{N}-I{I}-H{H}-L{L}" + ("" if bias else "-nobias") + ("-bf" if bf else "")


def assert_close(got, want, dtype, what):
    tol = REL_TOL[np.dtype(dtype)]
    bad = {}
    for name in want:
        assert np.asarray(got[name]).dtype == np.dtype(dtype), name
        err = rel_err(got[name], want[name])
        if not err < tol:
            bad[name] = err
    assert not bad, f"{what}: relative error above {tol:g}: {bad}"


def t2n(t):
    return t.detach().cpu().numpy()


def make_torch(cfg, dtype, seed=0):
    T, N, I, H, L, bias, bf = cfg
    torch.manual_seed(seed)
    return torch.nn.LSTM(I, H, num_layers=L, bias=bias, batch_first=bf).to(TORCH_DTYPE[np.dtype(dtype)])


def make_ours(cfg, dtype, backend, seed=1):
    T, N, I, H, L, bias, bf = cfg
    return fastlstm.LSTM(I, H, L, bias=bias, batch_first=bf, dtype=dtype, backend=backend, seed=seed)


def make_data(cfg, dtype, seed=0):
    T, N, I, H, L, bias, bf = cfg
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    x = r(N, T, I) if bf else r(T, N, I)
    dy = r(N, T, H) if bf else r(T, N, H)
    return dict(x=x, h0=0.5 * r(L, N, H), c0=0.5 * r(L, N, H), dy=dy, dh_n=r(L, N, H), dc_n=r(L, N, H))


def torch_run(lstm, d, dtype, with_state=True):
    """torch forward + backward; numpy outputs and gradients."""
    td = TORCH_DTYPE[np.dtype(dtype)]
    tt = lambda a: torch.tensor(a, dtype=td, requires_grad=True)  # noqa: E731
    x = tt(d["x"])
    lstm.zero_grad()
    if with_state:
        h0, c0 = tt(d["h0"]), tt(d["c0"])
        y, (h_n, c_n) = lstm(x, (h0, c0))
    else:
        y, (h_n, c_n) = lstm(x)
    torch.autograd.backward([y, h_n, c_n], [torch.tensor(d[k], dtype=td) for k in ("dy", "dh_n", "dc_n")])
    out = {"y": t2n(y), "h_n": t2n(h_n), "c_n": t2n(c_n), "dx": t2n(x.grad)}
    if with_state:
        out.update(dh0=t2n(h0.grad), dc0=t2n(c0.grad))
    for name, p in lstm.named_parameters():
        out[f"grad_{name}"] = t2n(p.grad)
    return out


def ours_run(model, d, with_state=True):
    state = (d["h0"], d["c0"]) if with_state else None
    y, (h_n, c_n) = model.forward(d["x"], state, training=True)
    dx, (dh0, dc0) = model.backward(d["dy"], (d["dh_n"], d["dc_n"]))
    out = {"y": y, "h_n": h_n, "c_n": c_n, "dx": dx}
    if with_state:
        out.update(dh0=dh0, dc0=dc0)
    out.update({f"grad_{k}": v for k, v in model.grads.items()})
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_backward_match_torch(backend, cfg, dtype):
    skip_if_too_big_to_simulate(backend, *cfg[:5])
    lstm = make_torch(cfg, dtype)
    model = make_ours(cfg, dtype, backend)
    model.load_state_dict({k: t2n(v) for k, v in lstm.state_dict().items()})
    d = make_data(cfg, dtype)
    want = torch_run(lstm, d, dtype)
    got = ours_run(model, d)
    assert sorted(got) == sorted(want)
    assert_close(got, want, dtype, f"{backend} {cfg_id(cfg)}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_default_zero_state_matches_torch(backend, dtype):
    cfg = (6, 3, 4, 5, 2, True, False)
    lstm = make_torch(cfg, dtype, seed=3)
    model = make_ours(cfg, dtype, backend)
    model.load_state_dict(lstm.state_dict())
    d = make_data(cfg, dtype, seed=3)
    assert_close(ours_run(model, d, with_state=False), torch_run(lstm, d, dtype, with_state=False),
                 dtype, f"{backend} state=None")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[3]], ids=cfg_id)
def test_state_dict_round_trip_through_torch(cfg, dtype):
    ours = make_ours(cfg, dtype, "numpy", seed=7)
    sd = ours.state_dict()
    lstm = make_torch(cfg, dtype, seed=99)
    lstm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    back = {k: t2n(v) for k, v in lstm.state_dict().items()}
    assert list(back) == list(sd)
    other = make_ours(cfg, dtype, "numpy", seed=8)
    other.load_state_dict(back)
    again = other.state_dict()
    assert list(again) == list(sd)
    for k in sd:
        assert again[k].dtype == sd[k].dtype and again[k].shape == sd[k].shape, k
        np.testing.assert_array_equal(again[k], sd[k], err_msg=k)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_state_dict_tensors_load_and_match(backend, dtype):
    cfg = CONFIGS[2]
    skip_if_too_big_to_simulate(backend, *cfg[:5])
    lstm = make_torch(cfg, dtype, seed=5)
    model = make_ours(cfg, dtype, backend)
    model.load_state_dict(lstm.state_dict())  # torch tensors, as they come
    for k, v in lstm.state_dict().items():
        np.testing.assert_array_equal(model.params[k], t2n(v), err_msg=k)
    d = make_data(cfg, dtype, seed=5)
    td = TORCH_DTYPE[np.dtype(dtype)]
    with torch.no_grad():
        y, (h_n, c_n) = lstm(torch.from_numpy(d["x"]).to(td),
                             (torch.from_numpy(d["h0"]).to(td), torch.from_numpy(d["c0"]).to(td)))
    ours_y, (ours_h, ours_c) = model.forward(d["x"], (d["h0"], d["c0"]))
    assert_close({"y": ours_y, "h_n": ours_h, "c_n": ours_c},
                 {"y": t2n(y), "h_n": t2n(h_n), "c_n": t2n(c_n)}, dtype, backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[4]], ids=cfg_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_step_carried_over_time_matches_torch(backend, cfg, dtype):
    T, N, I, H, L, bias, bf = cfg
    skip_if_too_big_to_simulate(backend, T, N, I, H, L)
    cfg = (T, N, I, H, L, bias, False)  # step takes (N, I): time-major data
    lstm = make_torch(cfg, dtype, seed=11)
    model = make_ours(cfg, dtype, backend)
    model.load_state_dict(lstm.state_dict())
    d = make_data(cfg, dtype, seed=11)
    td = TORCH_DTYPE[np.dtype(dtype)]
    with torch.no_grad():
        y, (h_n, c_n) = lstm(torch.from_numpy(d["x"]).to(td),
                             (torch.from_numpy(d["h0"]).to(td), torch.from_numpy(d["c0"]).to(td)))
    state = (d["h0"], d["c0"])
    ys = []
    for t in range(T):
        h_t, state = model.step(d["x"][t], state)
        ys.append(h_t)
    assert_close({"y": np.stack(ys), "h_n": state[0], "c_n": state[1]},
                 {"y": t2n(y), "h_n": t2n(h_n), "c_n": t2n(c_n)}, dtype, f"{backend} step")
