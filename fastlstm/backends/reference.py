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
           leave gates and cs unwritten or use them as scratch (y, hT, cT are the
           same; the C backend keeps c_t in two steps' rows of cs)

    Keyword options (variable lengths, the reverse direction, projections):
    lengths [N] integers in [0, T], or None (every row runs T steps): row n runs
           its own lengths[n] steps; y past them is zero; hT, cT are the state
           after its last step (h0, c0 for a length of 0)
    reverse  run each row from its own last step (lengths[n] - 1) down to 0
    W_hr   [P, H] IN   projection (0 < P < H): h_t = W_hr . (o * tanh c_t); then
           h0, hT, y and the rows of W_hh have P columns/features, not H
    ms     [T, N, H] OUT with W_hr: o * tanh c_t before the projection (kept for backward)
    projected  gates is IN as well: it holds the input projection x . W_ih^T + b on
           entry (the caller's, e.g. rows of a table gathered by id); x is then
           [T, N, 0], W_ih [G, 0], and b is not read. Without lengths, reverse or
           W_hr only. Backward, with the same empty x and W_ih, leaves the gradient
           of that projection (dP) in gates, in this [T, N, G] layout.
    projected_rows  (table [V, G], ids [T * N] int64 in [0, V)), with projected: row r
           of the projection is table[ids[r]], and gates need not hold it on entry (a
           backend with this option reads the rows from the table in its loop; for the
           others, this one included, fastlstm.functional.run_forward gathers them).
    gates, cs and ms are the backend's own between forward and backward: with these
           options a backend may keep them in another layout (the C backend packs the
           steps that ran, fastlstm/backends/_steps.py); pass them back unchanged.

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
    lengths, reverse, W_hr, ms: as given to forward; dy at padded steps is
           ignored and dx there is zero; dhT, dcT reach each row's last step
    dW_hr  [P, H]    INOUT with W_hr: accumulated (+=)

scatter_add_rows(ids, src, dst)
    ids    [rows] int64 IN   values in [0, V)
    src    [rows, G]  IN
    dst    [V, G]     INOUT  dst[ids[r]] += src[r] (the gradient of the gather dst[ids])

step(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates, *, W_hr=None)
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
#: The keyword options of the contract this backend runs.
OPTIONS = ("lengths", "reverse", "projection", "projected")


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


def _lengths(lengths, T, N):
    """Each row's own length ([N] integers in [0, T]); T for every row when None."""
    return np.full(N, T, np.int64) if lengths is None else np.asarray(lengths, np.int64)


def _active(s, lens, reverse):
    """Step s of every sequence still running: (its rows, the time index each reads).

    Forward, step s of a row is time s; reverse, it is time len - 1 - s (each
    sequence runs from its own last step down to 0)."""
    rows = np.flatnonzero(lens > s)
    t = lens[rows] - 1 - s if reverse else np.full(rows.size, s)
    return rows, t


def forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, keep=True, *,
            lengths=None, reverse=False, W_hr=None, ms=None, projected=False):
    T, N, _ = x.shape
    H = cs.shape[2]
    lens = _lengths(lengths, T, N)
    if projected:
        if lengths is not None or reverse or W_hr is not None:
            raise NotImplementedError("projected gates run without lengths, reverse or a projection")
    else:
        # One product for the input projection of every step.
        gates[...] = (x.reshape(T * N, x.shape[2]) @ W_ih.T + b).reshape(T, N, 4 * H)
    y[...] = 0  # outputs past each sequence's end are zero
    h, c = h0.copy(), c0.copy()
    for s in range(T):
        rows, t = _active(s, lens, reverse)
        if rows.size == 0:
            break  # lengths only shrink the active set
        a, c_new, m = _cell(gates[t, rows] + h[rows] @ W_hh.T, c[rows], H)
        h_new = m if W_hr is None else m @ W_hr.T
        gates[t, rows] = a
        cs[t, rows] = c_new
        if W_hr is not None:
            ms[t, rows] = m
        y[t, rows] = h_new
        h[rows] = h_new
        c[rows] = c_new
    hT[...] = h
    cT[...] = c


def backward(x, h0, c0, W_ih, W_hh, y, gates, cs, dy, dhT, dcT,
             dx, dh0, dc0, dW_ih, dW_hh, db, *, lengths=None, reverse=False,
             W_hr=None, ms=None, dW_hr=None):
    T, N, I = x.shape
    H = cs.shape[2]
    lens = _lengths(lengths, T, N)
    valid = np.arange(T)[:, None] < lens[None, :]          # [T, N]: steps that ran
    gates[~valid] = 0  # no gradient at padded steps: the products below skip them
    dh = dhT.copy()    # gradient reaching each row's latest h (its final state first)
    dc = dcT.copy()
    for s in range(T - 1, -1, -1):
        rows, t = _active(s, lens, reverse)
        if rows.size == 0:
            continue
        a = gates[t, rows]
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        if s == 0:
            c_prev = c0[rows]
        else:
            c_prev = cs[t + 1 if reverse else t - 1, rows]
        dh_t = dy[t, rows] + dh[rows]
        if W_hr is not None:  # h = W_hr . m: the gradient reaches m through W_hr
            dW_hr += dh_t.T @ ms[t, rows]
            dh_t = dh_t @ W_hr
        tc = np.tanh(cs[t, rows])
        dct = dc[rows] + dh_t * o * (1 - tc * tc)
        dpre = np.concatenate([
            dct * g * i * (1 - i),
            dct * c_prev * f * (1 - f),
            dct * i * (1 - g * g),
            dh_t * tc * o * (1 - o),
        ], axis=1)
        dc[rows] = dct * f
        gates[t, rows] = dpre
        dh[rows] = dpre @ W_hh
    dh0[...] = dh
    dc0[...] = dc
    if T == 0:
        dx[...] = 0
        return
    dP = gates.reshape(T * N, 4 * H)
    # The h each step read: h0 at each sequence's first step, else the output of
    # the step before it in the direction of the run.
    if reverse:
        h_prev = np.concatenate([y[1:], h0[None]])
        last = lens > 0
        h_prev[lens[last] - 1, np.flatnonzero(last)] = h0[last]
    else:
        h_prev = np.concatenate([h0[None], y[:-1]])
    dx[...] = (dP @ W_ih).reshape(T, N, I)
    if lengths is not None:  # padding may hold anything (NaN too): it must not reach dW_ih
        x = np.where(valid[:, :, None], x, 0)
    dW_ih += dP.T @ x.reshape(T * N, I)
    dW_hh += dP.T @ h_prev.reshape(T * N, h0.shape[1])
    db += dP.sum(axis=0)


def scatter_add_rows(ids, src, dst):
    np.add.at(dst, ids, src)


def step(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates, *, W_hr=None):
    H = c.shape[1]
    a, c_new, m = _cell(x_t @ W_ih.T + b + h @ W_hh.T, c, H)
    gates[...] = a
    c_out[...] = c_new
    h_out[...] = m if W_hr is None else m @ W_hr.T


def step_layers(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates, *, W_hr=None):
    for layer in range(len(W_ih)):
        inp = x_t if layer == 0 else h_out[layer - 1]
        step(inp, h[layer], c[layer], W_ih[layer], W_hh[layer], b[layer],
             h_out[layer], c_out[layer], gates, W_hr=None if W_hr is None else W_hr[layer])
