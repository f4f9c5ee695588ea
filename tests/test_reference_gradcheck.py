"""The NumPy reference backend against central finite differences in float64.

Every element of every parameter, of the input and of the initial state, through
the multi-layer ``fastlstm.LSTM`` and through the functional single-layer API.
"""

import numpy as np
import pytest

import fastlstm
from lstm_testing import gc_close, numeric_grad

T, N, I, H, L = 4, 2, 3, 5, 2


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
def test_layer_gradients_match_finite_differences(bias, batch_first):
    rng = np.random.default_rng(1)
    layer = fastlstm.LSTM(I, H, num_layers=L, bias=bias, batch_first=batch_first,
                          dtype=np.float64, backend="numpy", seed=2)
    xshape = (N, T, I) if batch_first else (T, N, I)
    x = rng.standard_normal(xshape)
    h0 = 0.5 * rng.standard_normal((L, N, H))
    c0 = 0.5 * rng.standard_normal((L, N, H))
    yshape = (N, T, H) if batch_first else (T, N, H)
    R1 = rng.standard_normal(yshape)
    R2 = rng.standard_normal((L, N, H))
    R3 = rng.standard_normal((L, N, H))

    def loss():
        y, (h_n, c_n) = layer.forward(x, (h0, c0))
        return np.sum(y * R1) + np.sum(h_n * R2) + np.sum(c_n * R3)

    layer.zero_grad()
    layer.forward(x, (h0, c0), training=True)
    dx, (dh0, dc0) = layer.backward(R1, (R2, R3))
    analytic = {name: g.copy() for name, g in layer.grads.items()}

    expected_names = {f"{w}_l{k}" for k in range(L)
                      for w in (("weight_ih", "weight_hh", "bias_ih", "bias_hh") if bias
                                else ("weight_ih", "weight_hh"))}
    assert set(layer.params) == expected_names
    for name, p in layer.params.items():
        gc_close(analytic[name], numeric_grad(loss, p), f"d{name}")
    gc_close(dx, numeric_grad(loss, x), "dx")
    gc_close(dh0, numeric_grad(loss, h0), "dh0")
    gc_close(dc0, numeric_grad(loss, c0), "dc0")


@pytest.mark.parametrize("with_state", [True, False], ids=["state", "nostate"])
def test_functional_gradients_match_finite_differences(with_state):
    rng = np.random.default_rng(3)
    k = 1 / np.sqrt(H)
    W_ih = rng.uniform(-k, k, (4 * H, I))
    W_hh = rng.uniform(-k, k, (4 * H, H))
    b_ih = rng.uniform(-k, k, 4 * H)
    b_hh = rng.uniform(-k, k, 4 * H)
    x = rng.standard_normal((T, N, I))
    h0 = 0.5 * rng.standard_normal((N, H))
    c0 = 0.5 * rng.standard_normal((N, H))
    R1 = rng.standard_normal((T, N, H))
    R2 = rng.standard_normal((N, H))
    R3 = rng.standard_normal((N, H))
    state = (h0, c0) if with_state else None

    def loss():
        y, (h_n, c_n), _ = fastlstm.lstm_forward(x, W_ih, W_hh, b_ih, b_hh, state,
                                                 training=False, backend="numpy")
        return np.sum(y * R1) + np.sum(h_n * R2) + np.sum(c_n * R3)

    _, _, cache = fastlstm.lstm_forward(x, W_ih, W_hh, b_ih, b_hh, state, backend="numpy")
    dx, (dh0, dc0), grads = fastlstm.lstm_backward(cache, R1, (R2, R3))

    assert set(grads) == {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}
    gc_close(grads["weight_ih"], numeric_grad(loss, W_ih), "dweight_ih")
    gc_close(grads["weight_hh"], numeric_grad(loss, W_hh), "dweight_hh")
    gc_close(grads["bias_ih"], numeric_grad(loss, b_ih), "dbias_ih")
    gc_close(grads["bias_hh"], numeric_grad(loss, b_hh), "dbias_hh")
    gc_close(dx, numeric_grad(loss, x), "dx")
    if with_state:
        gc_close(dh0, numeric_grad(loss, h0), "dh0")
        gc_close(dc0, numeric_grad(loss, c0), "dc0")
    else:
        # The zero initial state is still an input: its gradient is returned.
        def loss0():
            y, (h_n, c_n), _ = fastlstm.lstm_forward(x, W_ih, W_hh, b_ih, b_hh, (z_h, z_c),
                                                     training=False, backend="numpy")
            return np.sum(y * R1) + np.sum(h_n * R2) + np.sum(c_n * R3)
        z_h, z_c = np.zeros((N, H)), np.zeros((N, H))
        gc_close(dh0, numeric_grad(loss0, z_h), "dh0")
        gc_close(dc0, numeric_grad(loss0, z_c), "dc0")


def test_saturated_gates_gradients_match_finite_differences():
    """Large pre-activations (sigmoid/tanh near 0 or 1): derivatives on saved outputs stay right."""
    rng = np.random.default_rng(4)
    W_ih = 3.0 * rng.standard_normal((4 * H, I))
    W_hh = 3.0 * rng.standard_normal((4 * H, H))
    x = 2.0 * rng.standard_normal((T, N, I))
    R1 = rng.standard_normal((T, N, H))

    def loss():
        y, _, _ = fastlstm.lstm_forward(x, W_ih, W_hh, training=False, backend="numpy")
        return np.sum(y * R1)

    _, _, cache = fastlstm.lstm_forward(x, W_ih, W_hh, backend="numpy")
    dx, _, grads = fastlstm.lstm_backward(cache, R1)
    gc_close(grads["weight_ih"], numeric_grad(loss, W_ih), "dweight_ih")
    gc_close(grads["weight_hh"], numeric_grad(loss, W_hh), "dweight_hh")
    gc_close(dx, numeric_grad(loss, x), "dx")
