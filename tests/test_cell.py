"""fastlstm.LSTMCell: torch.nn.LSTMCell's names and shapes, one step equal to the
layer's, backpropagation through time by calling backward in reverse order
(against the multi-layer LSTM and finite differences), unbatched input, errors."""

import numpy as np
import pytest

import fastlstm
from lstm_testing import BACKENDS, REL_TOL, gc_close, numeric_grad, rel_err

T, N, I, H = 4, 3, 2, 5
HOST = [b for b in BACKENDS if b != "cuda"]


def _pair(seed, dtype=np.float64):
    cell = fastlstm.LSTMCell(I, H, dtype=dtype, backend="numpy", seed=seed)
    layer = fastlstm.LSTM(I, H, dtype=dtype, backend="numpy")
    layer.load_state_dict({f"{k}_l0": p for k, p in cell.params.items()})
    return cell, layer


@pytest.mark.parametrize("backend", HOST)
def test_bptt_by_steps_equals_the_layer(backend):
    cell, layer = _pair(1)
    cell.backend = backend
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, N, I))
    h0, c0 = rng.standard_normal((N, H)), rng.standard_normal((N, H))
    dy = rng.standard_normal((T, N, H))
    state = (h0, c0)
    hs = []
    for t in range(T):
        state = cell.forward(x[t], state, training=True)
        hs.append(state[0])
    y, (h_n, c_n) = layer.forward(x, (h0[None], c0[None]), training=True)
    np.testing.assert_allclose(np.stack(hs), y, rtol=1e-12, atol=1e-14)
    dh, dc = np.zeros((N, H)), np.zeros((N, H))
    dxs = []
    for t in range(T - 1, -1, -1):
        dx, (dh, dc) = cell.backward(dy[t] + dh, dc)
        dxs.append(dx)
    dx_l, (dh0, dc0) = layer.backward(dy)
    np.testing.assert_allclose(np.stack(dxs[::-1]), dx_l, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(dh, dh0[0], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(dc, dc0[0], rtol=1e-11, atol=1e-13)
    for k, g in cell.grads.items():
        np.testing.assert_allclose(g, layer.grads[f"{k}_l0"], rtol=1e-11, atol=1e-13)


def test_gradients_match_finite_differences():
    cell, _ = _pair(2)
    rng = np.random.default_rng(1)
    x, h0, c0 = rng.standard_normal((N, I)), rng.standard_normal((N, H)), rng.standard_normal((N, H))
    R1, R2 = rng.standard_normal((N, H)), rng.standard_normal((N, H))

    def loss():
        h, c = cell(x, (h0, c0))
        return np.sum(h * R1) + np.sum(c * R2)

    cell.forward(x, (h0, c0), training=True)
    dx, (dh, dc) = cell.backward(R1, R2)
    for name, p in cell.params.items():
        gc_close(cell.grads[name], numeric_grad(loss, p), f"d{name}")
    gc_close(dx, numeric_grad(loss, x), "dx")
    gc_close(dh, numeric_grad(loss, h0), "dh")
    gc_close(dc, numeric_grad(loss, c0), "dc")


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_matches_torch_lstmcell(backend, dtype):
    torch = pytest.importorskip("torch")
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    m = torch.nn.LSTMCell(I, H).to(tdt)
    cell = fastlstm.LSTMCell(I, H, dtype=dtype, backend=backend)
    assert list(cell.state_dict()) == list(m.state_dict())
    cell.load_state_dict(m.state_dict())
    rng = np.random.default_rng(3)
    x, h0, c0 = (rng.standard_normal(s).astype(dtype) for s in ((N, I), (N, H), (N, H)))
    tx, th, tc = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    h_t, c_t = m(tx, (th, tc))
    (h_t.sum() + 2 * c_t.sum()).backward()
    h, c = cell.forward(x, (h0, c0), training=True)
    dx, (dh, dc) = cell.backward(np.ones_like(h), 2 * np.ones_like(c))
    tol = REL_TOL[np.dtype(dtype)]
    for got, want in ((h, h_t), (c, c_t), (dx, tx.grad), (dh, th.grad), (dc, tc.grad)):
        assert rel_err(got, want.detach().numpy()) < tol
    for k, p in m.named_parameters():
        assert rel_err(cell.grads[k], p.grad.numpy()) < tol, k


def test_unbatched_and_errors():
    cell, _ = _pair(4)
    h, c = cell.forward(np.ones(I), training=True)
    assert h.shape == c.shape == (H,)
    dx, (dh, dc) = cell.backward(np.ones(H))
    assert dx.shape == (I,) and dh.shape == dc.shape == (H,)
    with pytest.raises(RuntimeError, match="not yet back-propagated"):
        cell.backward(np.ones(H))
    cell.forward(np.ones((N, I)), training=True)
    with pytest.raises(ValueError, match="needs dh or dc"):
        cell.backward()
    with pytest.raises(ValueError, match=r"x_t must have shape \(N, I\)"):
        cell(np.ones((N, I + 1)))
    with pytest.raises(ValueError, match=r"state\[1\] must have shape \(N, H\)"):
        cell(np.ones((N, I)), (None, np.ones((N, H + 1))))
