"""A unidirectional ``fastlstm.LSTM`` run on rows that are packed already (the C backend).

torch's ``PackedSequence.data`` is the layout the C loops work in: step t's rows follow
step t-1's, the sequences sorted longest first. ``fastlstm.torch.LSTM`` hands such rows
here, and every layer runs on them as they are (``forward_rows`` and ``backward_rows`` of
the C backend), where ``LSTM.forward(x, lengths=...)`` would pad the batch, gather the
rows in step order, scatter the outputs back and do the same again in the backward pass.
Exact: the same loops on the same rows in the same order as the padded path, so the
results are bit for bit those of ``LSTM.forward(..., lengths=...)`` without dropout
(dropout masks are drawn for the packed rows here, for the padded batch there).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import get_backend


def available(backend: str = "auto") -> bool:
    """Whether ``backend`` (the one a layer made with it uses) has the row loops here;
    the layer must also be unidirectional."""
    return hasattr(get_backend(backend), "forward_rows")


class RowLayout:
    """Where each packed row lives: ``batch`` [T] rows per step (non-increasing, >= 1).

    Attributes
    ----------
    N, T, rows : int
        Sequences (``batch[0]``), steps and packed rows.
    last : [N] intp
        The row of each sorted sequence's last step.
    prev : [rows - N] intp
        For each row after the first step, the row its sequence ran at the step before.
    """

    def __init__(self, batch: np.ndarray) -> None:
        self.batch = np.ascontiguousarray(batch, np.intp)
        self.T = len(self.batch)
        self.N = int(self.batch[0]) if self.T else 0
        starts = np.concatenate([[0], np.cumsum(self.batch)]).astype(np.intp)
        self.rows = int(starts[-1])
        lengths = (self.batch[:, None] > np.arange(self.N)).sum(0)  # sorted, longest first
        self.last = starts[lengths - 1] + np.arange(self.N, dtype=np.intp)
        step = np.repeat(np.arange(self.T, dtype=np.intp), self.batch)
        self.prev = np.arange(self.N, self.rows, dtype=np.intp) - self.batch[step[self.N:] - 1]

    def h_prev(self, h0: np.ndarray, y: np.ndarray) -> np.ndarray:
        """[rows, K]: the h each row read: h0 (sorted) at the first step, else y one step back."""
        hp = np.empty((self.rows, h0.shape[1]), h0.dtype)
        hp[:self.N] = h0
        np.take(y, self.prev, axis=0, out=hp[self.N:])
        return hp


def forward(layer: Any, data: np.ndarray, batch: np.ndarray, perm: np.ndarray | None,
            h0: np.ndarray, c0: np.ndarray, training: bool) -> tuple[np.ndarray, np.ndarray,
                                                                     np.ndarray, Any]:
    """Run ``layer`` (unidirectional, on a backend that ``available`` accepts) on packed rows.

    Parameters
    ----------
    data : [rows, I] ndarray of the layer's dtype, C-contiguous
    batch : [T] integers, rows per step
    perm : [N] integers or None
        Sorted sequence r is batch row ``perm[r]`` (torch's ``sorted_indices``); None: in order.
    h0, c0 : (L, N, H_out) and (L, N, H), batch order
    training : bool
        Keep what ``backward`` needs, and apply dropout between layers.

    Returns
    -------
    y : [rows, H_out], the top layer's output in the rows' layout
    h_n, c_n : (L, N, H_out) and (L, N, H), batch order
    saved : what ``backward`` takes (None unless training)
    """
    be = get_backend(layer.backend)
    lay = RowLayout(batch)
    L, H, dt = layer.num_layers, layer.hidden_size, layer.dtype
    K = layer.proj_size or H
    order = np.arange(lay.N) if perm is None else np.asarray(perm, np.intp)
    h_n, c_n = np.empty_like(h0), np.empty_like(c0)
    if training:
        layer._parameters_loaded()
    layers, inp = [], data
    for k in range(L):
        W_ih, W_hh, b, W_hr = layer._layer_weights(k)
        hs, cs0 = h0[k][order], c0[k][order]
        y = np.empty((lay.rows, K), dt)
        gates = np.empty((lay.rows, 4 * H), dt)
        cs = np.empty((lay.rows, H), dt)
        ms = np.empty((lay.rows, H), dt) if W_hr is not None else None
        be.forward_rows(inp, hs, cs0, W_ih, W_hh, b, lay.batch, y, gates, cs, training, W_hr=W_hr, ms=ms)
        h_n[k][order] = y[lay.last]
        c_n[k][order] = cs[lay.last]
        mask = None
        out = y
        if training and layer.dropout > 0 and k < L - 1:
            mask = layer._dropout_mask(y.shape)
            out = y * mask
        if training:
            layers.append((inp, hs, cs0, W_ih, W_hh, W_hr, y, gates, cs, ms, mask))
        inp = out
    saved = (be, lay, order, layers) if training else None
    return inp, h_n, c_n, saved


def backward(layer: Any, saved: Any, dy: np.ndarray, dh_n: np.ndarray,
             dc_n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Back-propagate a ``forward(..., training=True)``: dy [rows, H_out] in the rows'
    layout, dh_n and dc_n shaped like its final states. Parameter gradients add to
    ``layer.grads``; returns (dx [rows, I], dh0, dc0) (the states in batch order)."""
    be, lay, order, layers = saved
    g = layer.grads
    dh0, dc0 = np.empty_like(dh_n), np.empty_like(dc_n)
    grad = np.ascontiguousarray(dy)
    for k in range(layer.num_layers - 1, -1, -1):
        x, hs, cs0, W_ih, W_hh, W_hr, y, gates, cs, ms, mask = layers[k]
        if mask is not None:
            grad = grad * mask
        ih, hh, b_ih, b_hh, hr = layer._layer_keys[k]
        dh, dc = dh_n[k][order], dc_n[k][order]
        dx = np.empty(x.shape, x.dtype)
        db = np.zeros(4 * layer.hidden_size, x.dtype)
        be.backward_rows(x, hs, cs0, W_ih, W_hh, y, lay.h_prev(hs, y), gates, cs, grad, dh, dc, dx,
                         g[ih], g[hh], db, lay.batch, W_hr=W_hr, ms=ms,
                         dW_hr=None if hr is None else g[hr])
        if layer.bias:
            g[b_ih] += db
            g[b_hh] += db
        dh0[k][order] = dh
        dc0[k][order] = dc
        grad = dx
    return grad, dh0, dc0
