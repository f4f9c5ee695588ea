"""The embedding fold: ``LSTM.forward(input_projection=...)`` on every host backend against the same
layer on x, the backends' ``scatter_add_rows``, and the char model with the fold on against finite
differences (float64: tests/test_nn.py, fold on and off), PyTorch (float32, relative 1e-5) and
the unfolded model (same losses).
"""

import numpy as np
import pytest

import fastlstm
from fastlstm.backends import get_backend, reference
from fastlstm.charlm import nn
from fastlstm.charlm.model import CharModel
from lstm_testing import DTYPES, REL_TOL, assert_close, rel_err

HOST = [b for b in fastlstm.available_backends() if b != "cuda"]


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", DTYPES)
def test_input_projection_equals_the_layer_on_x(backend, dtype):
    T, N, I, H = 7, 5, 4, 9
    lstm = fastlstm.LSTM(I, H, 2, dtype=dtype, backend=backend, seed=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, N, I)).astype(dtype)
    dy = rng.standard_normal((T, N, H)).astype(dtype)
    y, (h, c) = lstm.forward(x, training=True)
    dx, (dh0, dc0) = lstm.backward(dy)
    want = {k: g.copy() for k, g in lstm.grads.items()}
    lstm.zero_grad()
    p = lstm.params
    proj = np.ascontiguousarray(x @ p["weight_ih_l0"].T + p["bias_ih_l0"] + p["bias_hh_l0"], dtype)
    y2, (h2, c2) = lstm.forward(None, training=True, input_projection=proj)
    dproj, (dh02, dc02) = lstm.backward(dy)
    for name, got, exp in [("y", y2, y), ("h", h2, h), ("c", c2, c), ("dh0", dh02, dh0), ("dc0", dc02, dc0),
                           ("dx = dproj . W_ih", dproj @ p["weight_ih_l0"], dx)]:
        assert_close(got, exp, dtype, name)
    assert dproj.shape == (T, N, 4 * H) and np.shares_memory(dproj, proj)  # in the caller's buffer
    assert not lstm.grads["weight_ih_l0"].any()  # the caller's projection owns that gradient
    assert_close(np.einsum("tng,tni->gi", dproj, x), want["weight_ih_l0"], dtype, "dW_ih")
    for name in want:
        if name != "weight_ih_l0":
            assert_close(lstm.grads[name], want[name], dtype, name)


def test_input_projection_rules():
    lstm = fastlstm.LSTM(3, 4, 1)
    proj = np.zeros((2, 3, 16), np.float32)
    with pytest.raises(ValueError, match="not both"):
        lstm.forward(np.zeros((2, 3, 3), np.float32), input_projection=proj)
    with pytest.raises(ValueError, match=r"\(T, N, 4H\)"):
        lstm.forward(None, input_projection=np.zeros((2, 3, 12), np.float32))
    with pytest.raises(ValueError, match=r"\(T, N, 4H\)"):
        lstm.forward(None, input_projection=proj.astype(np.float64))
    with pytest.raises(ValueError, match="unidirectional"):
        fastlstm.LSTM(3, 4, 1, bidirectional=True).forward(None, input_projection=proj)


def _kernel_paths():
    try:
        from fastlstm.backends import _c
    except ImportError:
        return ["none"]
    return list(_c.SUPPORTED_KERNELS)


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", _kernel_paths())
@pytest.mark.parametrize("T, N", [(6, 7), (3, 5)], ids=["rows-in-parts", "few-rows"])
def test_input_rows_equal_the_gathered_projection(monkeypatch, backend, dtype, path, T, N):
    # (below 16 rows a thread, the C loops' weight gradients are BLAS products, and the
    # table's gradient one pass over dP after them; above, each thread's rows as it sums)
    if path != "none":
        monkeypatch.setenv("FASTLSTM_KERNEL", path)
    H, V = 9, 5
    lstm = fastlstm.LSTM(4, H, 2, dtype=dtype, backend=backend, seed=2)
    rng = np.random.default_rng(1)
    table = rng.standard_normal((V, 4 * H)).astype(dtype)
    ids = rng.integers(0, V, (T, N))
    ids[0, 0], ids[-1, -1] = 0, V - 1
    dy = rng.standard_normal((T, N, H)).astype(dtype)
    y, (h, c) = lstm.forward(None, training=True, input_projection=np.ascontiguousarray(table[ids]))
    dproj, (dh0, dc0) = lstm.backward(dy)
    want = {k: g.copy() for k, g in lstm.grads.items()}
    lstm.zero_grad()
    where = np.full((T, N, 4 * H), np.nan, dtype)  # its contents on entry are not read
    y2, (h2, c2) = lstm.forward(None, training=True, input_projection=where, input_rows=(table, ids))
    dtab = np.full((V, 4 * H), 0.5, dtype)  # the table's gradient is added to it
    dproj2, (dh02, dc02) = lstm.backward(dy, input_rows_grad=dtab)
    assert np.shares_memory(dproj2, where)
    want_dtab = np.full((V, 4 * H), 0.5, dtype)
    np.add.at(want_dtab, ids.reshape(-1), dproj.reshape(-1, 4 * H))
    assert_close(dtab, want_dtab, dtype, "the table's gradient")
    # the same numbers: the loops read the same rows, from the table instead of the gathered copy
    for name, got, exp in [("y", y2, y), ("h", h2, h), ("c", c2, c), ("dproj", dproj2, dproj),
                           ("dh0", dh02, dh0), ("dc0", dc02, dc0)]:
        np.testing.assert_array_equal(got, exp, err_msg=name)
    for name in want:
        np.testing.assert_array_equal(lstm.grads[name], want[name], err_msg=name)


def test_input_rows_rules():
    lstm = fastlstm.LSTM(3, 4, 1)
    proj = np.zeros((2, 3, 16), np.float32)
    table = np.zeros((5, 16), np.float32)
    ids = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match="needs input_projection"):
        lstm.forward(np.zeros((2, 3, 3), np.float32), input_rows=(table, ids))
    with pytest.raises(ValueError, match="a pair"):
        lstm.forward(None, input_projection=proj, input_rows=table)
    with pytest.raises(ValueError, match=r"table must be a float32 ndarray of shape \(V, 4H\)"):
        lstm.forward(None, input_projection=proj, input_rows=(table[:, :12], ids))
    with pytest.raises(ValueError, match="table must be"):
        lstm.forward(None, input_projection=proj, input_rows=(table.astype(np.float64), ids))
    with pytest.raises(ValueError, match=r"ids must be integers of shape \(T, N\) = \(2, 3\)"):
        lstm.forward(None, input_projection=proj, input_rows=(table, ids.reshape(3, 2)))
    with pytest.raises(ValueError, match="ids must be integers"):
        lstm.forward(None, input_projection=proj, input_rows=(table, ids.astype(np.float32)))
    for bad in (-1, 5):
        wrong = ids.copy()
        wrong[1, 2] = bad
        with pytest.raises(ValueError, match=r"ids must lie in \[0, 5\)"):
            lstm.forward(None, input_projection=proj, input_rows=(table, wrong))


def test_input_rows_grad_rules():
    lstm = fastlstm.LSTM(3, 4, 1)
    proj = np.zeros((2, 3, 16), np.float32)
    table = np.zeros((5, 16), np.float32)
    ids = np.zeros((2, 3), np.int64)
    dy = np.ones((2, 3, 4), np.float32)
    lstm.forward(None, training=True, input_projection=proj)
    with pytest.raises(ValueError, match="needs a forward with input_rows"):
        lstm.backward(dy, input_rows_grad=np.zeros((5, 16), np.float32))
    lstm.backward(dy)  # the forward is still there to back-propagate
    lstm.forward(None, training=True, input_projection=proj, input_rows=(table, ids))
    for bad in (np.zeros((5, 12), np.float32), np.zeros((4, 16), np.float32), np.zeros((5, 16)),
                np.zeros((16, 5), np.float32).T):
        with pytest.raises(ValueError, match=r"input_rows_grad must be a C-contiguous float32 ndarray "
                                             r"of the table's shape \(5, 16\)"):
            lstm.backward(dy, input_rows_grad=bad)


@pytest.mark.skipif("c" not in HOST, reason="the C backend is not built")
def test_c_forward_checks_the_rows_of_projected_rows():
    from fastlstm.backends import _c
    T, N, H = 2, 3, 4
    G = 4 * H
    args = [np.zeros((T, N, 0), np.float32), np.zeros((N, H), np.float32), np.zeros((N, H), np.float32),
            np.zeros((G, 0), np.float32), np.zeros((G, H), np.float32), np.zeros(G, np.float32),
            np.zeros((T, N, H), np.float32), np.zeros((N, H), np.float32), np.zeros((N, H), np.float32),
            np.zeros((T, N, G), np.float32), np.zeros((T, N, H), np.float32)]
    table = np.zeros((5, G), np.float32)
    with pytest.raises(ValueError, match="ids must lie in"):
        _c.forward(*args, projected=True, projected_rows=(table, np.full(T * N, 5)))
    with pytest.raises(ValueError, match="5 ids for 6 rows"):
        _c.forward(*args, projected=True, projected_rows=(table, np.zeros(5, np.int64)))
    with pytest.raises(ValueError, match="needs projected"):
        _c.forward(*args, projected_rows=(table, np.zeros(T * N, np.int64)))


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scatter_add_rows_sums_rows_by_id(backend, dtype):
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 5, 40).astype(np.int64)
    src = rng.standard_normal((40, 7)).astype(dtype)
    dst = rng.standard_normal((5, 7)).astype(dtype)
    want = dst.astype(np.float64) + np.stack([src[ids == v].sum(0) for v in range(5)])
    get_backend(backend).scatter_add_rows(ids, src, dst)
    assert_close(dst, want, dtype, "dst")
    if backend == "c":
        with pytest.raises(IndexError):
            get_backend(backend).scatter_add_rows(np.array([5], np.int64), src[:1], dst)


def test_folded_model_gradients_match_torch():
    torch = pytest.importorskip("torch")
    V, T, N, E, H = 11, 9, 5, 6, 7
    model = CharModel(V, hidden_size=H, num_layers=2, dropout=0.0, embed_dim=E, seed=4, dtype=np.float32)
    assert model.fold_embedding
    rng = np.random.default_rng(5)
    ids = rng.integers(0, V, (T, N))
    targets = rng.integers(0, V, (T, N))
    model.zero_grad()
    loss = model.loss_and_backward(ids, targets)
    assert model._proj is not None
    emb = torch.nn.Embedding(V, E)
    lstm = torch.nn.LSTM(E, H, 2)
    fc = torch.nn.Linear(H, V)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(model.params["embedding.weight"]))
        for name, p in lstm.named_parameters():
            p.copy_(torch.from_numpy(model.params["lstm." + name]))
        fc.weight.copy_(torch.from_numpy(model.params["dense.weight"]))
        fc.bias.copy_(torch.from_numpy(model.params["dense.bias"]))
    y, _ = lstm(emb(torch.from_numpy(ids)))
    t_loss = torch.nn.functional.cross_entropy(fc(y).reshape(-1, V), torch.from_numpy(targets).reshape(-1))
    t_loss.backward()
    want = {"embedding.weight": emb.weight.grad, "dense.weight": fc.weight.grad, "dense.bias": fc.bias.grad}
    want.update({"lstm." + k: p.grad for k, p in lstm.named_parameters()})
    assert abs(loss - t_loss.item()) < 1e-5 * abs(loss)
    bad = {k: rel_err(model.grads[k], w.numpy()) for k, w in want.items()
           if not rel_err(model.grads[k], w.numpy()) < REL_TOL[np.dtype(np.float32)]}
    assert not bad, f"relative error above 1e-5: {bad}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_with_the_fold_gives_the_same_losses(dtype):
    losses = []
    for fold in (True, False):
        m = CharModel(30, hidden_size=20, num_layers=2, dropout=0.2, embed_dim=8, seed=3, dtype=dtype)
        m.fold_embedding = fold
        opt = nn.Adam(m.params, lr=4e-3)
        rng = np.random.default_rng(0)
        run = []
        for _ in range(15):
            ids, tg = rng.integers(0, 30, (12, 6)), rng.integers(0, 30, (12, 6))
            m.zero_grad()
            run.append(m.loss_and_backward(ids, tg))
            nn.clip_grad_norm(m.grads, 5.0)
            opt.step(m.grads)
        assert (m._proj is not None) == fold
        losses.append(run)
    assert_close(losses[0], losses[1], dtype, "losses")
    assert losses[0][-1] < losses[0][0]


def test_reference_scatter_is_the_contract():
    assert reference.scatter_add_rows is get_backend("numpy").scatter_add_rows
