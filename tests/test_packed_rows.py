"""fastlstm._packed_rows (what fastlstm.torch.LSTM runs a unidirectional PackedSequence
on): the rows' results are bit for bit those of ``LSTM.forward(x, lengths=...)`` and its
backward on the padded batch (outputs, final states, dx, dh0, dc0, every parameter
gradient), with several layers, a projection, initial states, float32 and float64;
dropout between layers applies exactly the masks drawn for the rows. Needs the C
backend (the row loops are its own)."""

import numpy as np
import pytest

import fastlstm
from fastlstm import _packed_rows

pytestmark = pytest.mark.skipif(not _packed_rows.available(), reason="the C backend is not built")

T, I, H = 7, 5, 8
LENGTHS = np.array([3, 7, 1, 7, 5, 2])  # unsorted, ties, T and 1


def _pack(x, lengths):
    """(rows [rows, F] in PackedSequence order, batch [T], perm [N]): sorted longest first
    (ties in batch order), step after step."""
    perm = np.argsort(-lengths, kind="stable")
    batch = np.array([(lengths > t).sum() for t in range(lengths.max())], np.intp)
    rows = np.concatenate([x[t, perm[:batch[t]]] for t in range(len(batch))])
    return np.ascontiguousarray(rows), batch, perm


def _unpack(rows, batch, perm, like):
    out = np.zeros(like, rows.dtype)
    start = 0
    for t, b in enumerate(batch):
        out[t, perm[:b]] = rows[start:start + b]
        start += b
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", [dict(), dict(num_layers=3), dict(proj_size=3, num_layers=2)],
                         ids=["L1", "L3", "proj-L2"])
def test_rows_equal_the_padded_lengths_path_bit_for_bit(config, dtype):
    layer = fastlstm.LSTM(I, H, dtype=dtype, seed=1, **config)
    L, K, N = layer.num_layers, layer.proj_size or H, len(LENGTHS)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, N, I)).astype(dtype)
    h0, c0 = rng.standard_normal((L, N, K)).astype(dtype), rng.standard_normal((L, N, H)).astype(dtype)
    dy = rng.standard_normal((T, N, K)).astype(dtype)
    dh, dc = rng.standard_normal(h0.shape).astype(dtype), rng.standard_normal(c0.shape).astype(dtype)

    layer.zero_grad()
    y, (h, c) = layer.forward(x, (h0, c0), lengths=LENGTHS, training=True)
    dx, (dh0, dc0) = layer.backward(dy, (dh, dc))
    want = dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0, **{k: g.copy() for k, g in layer.grads.items()})

    layer.zero_grad()
    rows, batch, perm = _pack(x, LENGTHS)
    yr, hr, cr, saved = _packed_rows.forward(layer, rows, batch, perm, h0, c0, training=True)
    dyr = _pack(dy, LENGTHS)[0]
    dxr, dh0r, dc0r = _packed_rows.backward(layer, saved, dyr, dh, dc)
    got = dict(y=_unpack(yr, batch, perm, y.shape), h=hr, c=cr, dx=_unpack(dxr, batch, perm, x.shape),
               dh0=dh0r, dc0=dc0r, **layer.grads)
    for name, a in want.items():
        assert np.array_equal(got[name], a), name


def test_in_order_rows_need_no_permutation():
    layer = fastlstm.LSTM(I, H, seed=1)
    lengths = np.sort(LENGTHS)[::-1].copy()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, len(lengths), I)).astype(np.float32)
    rows, batch, perm = _pack(x, lengths)
    assert np.array_equal(perm, np.arange(len(lengths)))
    zeros = (np.zeros((1, len(lengths), H), np.float32),) * 2
    y, h, c, _ = _packed_rows.forward(layer, rows, batch, None, *zeros, training=False)
    want, (hw, cw) = layer.forward(x, lengths=lengths)
    assert np.array_equal(_unpack(y, batch, perm, want.shape), want)
    assert np.array_equal(h, hw) and np.array_equal(c, cw)


def test_dropout_between_layers_applies_the_rows_masks():
    layer = fastlstm.LSTM(I, H, num_layers=2, dropout=0.4, dtype=np.float64, seed=5)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, len(LENGTHS), I))
    rows, batch, perm = _pack(x, LENGTHS)
    zeros = (np.zeros((2, len(LENGTHS), H)),) * 2
    state = layer._rng.bit_generator.state
    y, h, c, saved = _packed_rows.forward(layer, rows, batch, perm, *zeros, training=True)
    # the same, one layer at a time, with the mask drawn from the same generator state
    layer._rng.bit_generator.state = state
    mask = layer._dropout_mask((len(rows), H))
    assert 0 < np.count_nonzero(mask == 0) < mask.size
    one = [fastlstm.LSTM(I if k == 0 else H, H, dtype=np.float64) for k in range(2)]
    for k, m in enumerate(one):
        for name in m.params:
            m.params[name][...] = layer.params[name[:-1] + str(k)]
    y1 = _packed_rows.forward(one[0], rows, batch, perm, *(z[:1] for z in zeros), training=False)[0]
    y2 = _packed_rows.forward(one[1], y1 * mask, batch, perm, *(z[:1] for z in zeros), training=False)[0]
    assert np.array_equal(y, y2)
    # and the backward sees the same mask: dx against finite differences of one input
    R = rng.standard_normal(y.shape)
    layer.zero_grad()
    dx = _packed_rows.backward(layer, saved, R, np.zeros_like(h), np.zeros_like(c))[0]
    i, j, eps = 9, 2, 1e-6
    loss = []
    for sign in (1, -1):
        moved = rows.copy()
        moved[i, j] += sign * eps
        layer._rng.bit_generator.state = state
        loss.append(np.sum(_packed_rows.forward(layer, moved, batch, perm, *zeros, training=True)[0] * R))
    assert abs((loss[0] - loss[1]) / (2 * eps) - dx[i, j]) < 1e-6 * max(1.0, abs(dx[i, j]))
