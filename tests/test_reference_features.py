"""The NumPy reference's variable lengths, reverse direction and projection
(the specification the other backends follow), against central finite
differences in float64 and against plain re-statements of their meaning."""

import numpy as np
import pytest

from fastlstm.backends import reference as ref
from lstm_testing import gc_close, numeric_grad

T, N, I, H, P = 4, 4, 3, 5, 2


def _weights(rng, proj):
    k = 1 / np.sqrt(H)
    K = P if proj else H
    W = dict(W_ih=rng.uniform(-k, k, (4 * H, I)), W_hh=rng.uniform(-k, k, (4 * H, K)),
             b=rng.uniform(-k, k, 4 * H))
    if proj:
        W["W_hr"] = rng.uniform(-k, k, (P, H))
    return W


def _run(x, h0, c0, W, lengths, reverse):
    T_, N_ = x.shape[:2]
    K = h0.shape[1]
    y = np.zeros((T_, N_, K))
    hT, cT = np.zeros((N_, K)), np.zeros((N_, H))
    gates, cs, ms = np.zeros((T_, N_, 4 * H)), np.zeros((T_, N_, H)), np.zeros((T_, N_, H))
    ref.forward(x, h0, c0, W["W_ih"], W["W_hh"], W["b"], y, hT, cT, gates, cs,
                lengths=lengths, reverse=reverse, W_hr=W.get("W_hr"), ms=ms)
    return y, hT, cT, gates, cs, ms


CASES = [pytest.param(None, id="full"), pytest.param([4, 1, 0, 2], id="lengths")]


@pytest.mark.parametrize("lengths", CASES)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("proj", [False, True], ids=["noproj", "proj"])
def test_gradients_match_finite_differences(lengths, reverse, proj):
    rng = np.random.default_rng(5)
    W = _weights(rng, proj)
    K = P if proj else H
    x = rng.standard_normal((T, N, I))
    h0, c0 = 0.5 * rng.standard_normal((N, K)), 0.5 * rng.standard_normal((N, H))
    R1, R2, R3 = rng.standard_normal((T, N, K)), rng.standard_normal((N, K)), rng.standard_normal((N, H))

    def loss():
        y, hT, cT, *_ = _run(x, h0, c0, W, lengths, reverse)
        return np.sum(y * R1) + np.sum(hT * R2) + np.sum(cT * R3)

    y, _, _, gates, cs, ms = _run(x, h0, c0, W, lengths, reverse)
    dx, dh0, dc0 = np.zeros_like(x), np.zeros_like(h0), np.zeros_like(c0)
    grads = {k: np.zeros_like(v) for k, v in W.items()}
    ref.backward(x, h0, c0, W["W_ih"], W["W_hh"], y, gates, cs, R1, R2, R3, dx, dh0, dc0,
                 grads["W_ih"], grads["W_hh"], grads["b"], lengths=lengths, reverse=reverse,
                 W_hr=W.get("W_hr"), ms=ms, dW_hr=grads.get("W_hr"))
    for name, w in W.items():
        gc_close(grads[name], numeric_grad(loss, w), f"d{name}")
    gc_close(dx, numeric_grad(loss, x), "dx")
    gc_close(dh0, numeric_grad(loss, h0), "dh0")
    gc_close(dc0, numeric_grad(loss, c0), "dc0")


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("proj", [False, True], ids=["noproj", "proj"])
def test_lengths_mean_each_row_alone(reverse, proj):
    """A row of length l gives what that row alone, cut to l steps, gives; zeros past l;
    a length of 0 gives the initial state back."""
    rng = np.random.default_rng(6)
    W = _weights(rng, proj)
    K = P if proj else H
    x = rng.standard_normal((T, N, I))
    h0, c0 = rng.standard_normal((N, K)), rng.standard_normal((N, H))
    lengths = np.array([2, 4, 0, 1])
    y, hT, cT, *_ = _run(x, h0, c0, W, lengths, reverse)
    for n, n_len in enumerate(lengths):
        y1, h1, c1, *_ = _run(x[:n_len, n:n + 1], h0[n:n + 1], c0[n:n + 1], W, None, reverse)
        np.testing.assert_allclose(y[:n_len, n], y1[:, 0], rtol=1e-13, atol=1e-15)
        assert not y[n_len:, n].any()
        np.testing.assert_allclose(hT[n], h1[0], rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(cT[n], c1[0], rtol=1e-13, atol=1e-15)


def test_reverse_is_forward_on_the_flipped_sequence():
    rng = np.random.default_rng(7)
    W = _weights(rng, False)
    x = rng.standard_normal((T, N, I))
    h0, c0 = rng.standard_normal((N, H)), rng.standard_normal((N, H))
    y, hT, cT, *_ = _run(x, h0, c0, W, None, True)
    y2, h2, c2, *_ = _run(x[::-1].copy(), h0, c0, W, None, False)
    np.testing.assert_allclose(y, y2[::-1], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(hT, h2, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(cT, c2, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("proj", [False, True], ids=["noproj", "proj"])
def test_matches_torch_packed_bidirectional(proj):
    """Both directions of a bidirectional torch.nn.LSTM over a packed batch of unsorted
    lengths (pack_padded_sequence -> LSTM -> pad_packed_sequence), float64."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    rng = np.random.default_rng(8)
    lengths = np.array([3, 4, 1, 2])
    m = torch.nn.LSTM(I, H, bidirectional=True, proj_size=P if proj else 0).double()
    x = rng.standard_normal((T, N, I))
    K = P if proj else H
    h0, c0 = rng.standard_normal((2, N, K)), rng.standard_normal((2, N, H))
    packed = pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(lengths), enforce_sorted=False)
    with torch.no_grad():
        out, (h_n, c_n) = m(packed, (torch.from_numpy(h0), torch.from_numpy(c0)))
    y_t, _ = pad_packed_sequence(out, total_length=T)
    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    for d, suffix in enumerate(("", "_reverse")):
        W = dict(W_ih=sd[f"weight_ih_l0{suffix}"], W_hh=sd[f"weight_hh_l0{suffix}"],
                 b=sd[f"bias_ih_l0{suffix}"] + sd[f"bias_hh_l0{suffix}"])
        if proj:
            W["W_hr"] = sd[f"weight_hr_l0{suffix}"]
        y, hT, cT, *_ = _run(x, h0[d], c0[d], W, lengths, reverse=bool(d))
        np.testing.assert_allclose(y, y_t.numpy()[:, :, d * K:(d + 1) * K], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(hT, h_n.numpy()[d], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(cT, c_n.numpy()[d], rtol=1e-10, atol=1e-12)
