"""NumPy reference backend: the specification of every fastlstm kernel.

Plain, readable NumPy for one LSTM layer. Every other backend offers the same
three functions with the same caller-allocates signatures and is tested
against these. Arrays are C-contiguous, time-major, one dtype (float32 or
float64); the public API (fastlstm.functional, fastlstm.layer) validates and
allocates. Letters: T steps, N batch, I input size, H hidden size, G = 4H.
Gate order i, f, g, o (PyTorch's).

Backend contract
----------------
forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, keep=True)
    x      [T, N, I] IN    input sequence
    h0, c0 [N, H]    IN    initial state
    W_ih   [G, I]    IN    input weights (PyTorch layout)
    W_hh   [G, H]    IN    recurrent weights
    b      [G]       IN    b_ih + b_hh
    y      [T, N, H] OUT   h_t for every step
    hT, cT [N, H]    OUT   final state
    gates  [T, N, G] OUT   activated gates (sigma i, sigma f, tanh g, sigma o): kept for backward
    cs     [T, N, H] OUT   c_t for every step: kept for backward
    keep   False: no backward will follow (inference); a backend may then
           leave gates unwritten or use it as scratch (y, hT, cT are the same)

backward(x, h0, c0, W_ih, W_hh, y, gates, cs, dy, dhT, dcT, dx, dh0, dc0, dW_ih, dW_hh, db)
    x, h0, c0, W_ih, W_hh, y, cs   IN as above (y and cs from the forward pass)
    gates  [T, N, G] INOUT activated gates in; overwritten with the
                           pre-activation gradients (a workspace, consumed)
    dy     [T, N, H] IN    gradient of the loss w.r.t. y
    dhT, dcT [N, H]  IN    gradient w.r.t. the final state
    dx     [T, N, I] OUT
    dh0, dc0 [N, H]  OUT
    dW_ih  [G, I]    INOUT accumulated (+=)
    dW_hh  [G, H]    INOUT accumulated (+=)
    db     [G]       INOUT accumulated (+=); the gradient of b_ih and of b_hh

step(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates)
    x_t    [N, I]    IN
    h, c   [N, H]    IN    carried state
    h_out, c_out [N, H] OUT  new state (may not alias h, c)
    gates  [N, G]    OUT   workspace

step_layers(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates)
    One step of an L-layer stack (generation): W_ih, W_hh, b are lists of L
    arrays as above (layer l > 0 takes I = H); h, c, h_out, c_out [L, N, H];
    layer l's input is x_t for l = 0, else h_out[l - 1].
"""

import numpy as np

NAME = "numpy"


def _sigmoid(z):
    # exp of a non-positive number only: no overflow for any z, NaN stays NaN.
    e = np.exp(-np.abs(z))
    s = 1.0 / (1.0 + e)
    return np.where(z >= 0, s, e * s).astype(z.dtype, copy=False)


def _activate(pre, H):
    """Pre-activations [N, G] -> activated gates [N, G] (i, f, g, o)."""
    out = np.empty_like(pre)
    out[:, 0:2 * H] = _sigmoid(pre[:, 0:2 * H])
    out[:, 2 * H:3 * H] = np.tanh(pre[:, 2 * H:3 * H])
    out[:, 3 * H:] = _sigmoid(pre[:, 3 * H:])
    return out


def _cell(pre, c_prev, H):
    """One fused step on pre-activations: returns (activated gates, c, h)."""
    a = _activate(pre, H)
    i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    c = f * c_prev + i * g
    h = o * np.tanh(c)
    return a, c, h


def forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, keep=True):
    T, N, _ = x.shape
    H = h0.shape[1]
    # One product for the input projection of every step.
    gates[...] = (x.reshape(T * N, x.shape[2]) @ W_ih.T + b).reshape(T, N, 4 * H)
    h, c = h0, c0
    for t in range(T):
        a, c, h = _cell(gates[t] + h @ W_hh.T, c, H)
        gates[t] = a
        cs[t] = c
        y[t] = h
    hT[...] = h
    cT[...] = c


def backward(x, h0, c0, W_ih, W_hh, y, gates, cs, dy, dhT, dcT,
             dx, dh0, dc0, dW_ih, dW_hh, db):
    T, N, I = x.shape
    H = h0.shape[1]
    dh_next = dhT.copy()
    dc = dcT.copy()
    for t in range(T - 1, -1, -1):
        a = gates[t]
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        c_prev = cs[t - 1] if t > 0 else c0
        dh = dy[t] + dh_next
        tc = np.tanh(cs[t])
        dct = dc + dh * o * (1 - tc * tc)
        dpre = np.concatenate([
            dct * g * i * (1 - i),
            dct * c_prev * f * (1 - f),
            dct * i * (1 - g * g),
            dh * tc * o * (1 - o),
        ], axis=1)
        dc = dct * f
        gates[t] = dpre
        dh_next = dpre @ W_hh
    dh0[...] = dh_next
    dc0[...] = dc
    if T == 0:
        dx[...] = 0
        return
    dP = gates.reshape(T * N, 4 * H)
    h_prev = np.concatenate([h0[None], y[:-1]]).reshape(T * N, H)
    dx[...] = (dP @ W_ih).reshape(T, N, I)
    dW_ih += dP.T @ x.reshape(T * N, I)
    dW_hh += dP.T @ h_prev
    db += dP.sum(axis=0)


def step(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates):
    H = h.shape[1]
    a, c_new, h_new = _cell(x_t @ W_ih.T + b + h @ W_hh.T, c, H)
    gates[...] = a
    c_out[...] = c_new
    h_out[...] = h_new


def step_layers(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates):
    for layer in range(len(W_ih)):
        inp = x_t if layer == 0 else h_out[layer - 1]
        step(inp, h[layer], c[layer], W_ih[layer], W_hh[layer], b[layer],
             h_out[layer], c_out[layer], gates)
