"""The character model's compiled generation loop (csrc/lstm_generate.c) against
the NumPy loop it replaces on the C backend: the same characters for the same
seed (greedy, sampled, top-k, temperature; across noise blocks and chunks), the
streaming callback, batched samples against single runs, and its argument checks.
"""

import numpy as np
import pytest

from fastlstm.charlm.model import CharModel

c_backend = pytest.importorskip("fastlstm.backends._c", reason="C backend not built")


def _numpy_loop(monkeypatch):
    monkeypatch.setattr(CharModel, "_compiled_loop", lambda self: None)


@pytest.mark.parametrize("input_mode", ["embedding", "scaled"])
@pytest.mark.parametrize("draw", [dict(greedy=True), dict(temperature=0.7, top_k=4), dict(temperature=1.4)],
                         ids=["greedy", "top-k", "temperature"])
@pytest.mark.parametrize("path", c_backend.SUPPORTED_KERNELS)
def test_compiled_loop_gives_the_numpy_loops_characters(monkeypatch, input_mode, draw, path):
    monkeypatch.setenv("FASTLSTM_KERNEL", path)
    model = CharModel(23, 16, 2, embed_dim=5, input_mode=input_mode, seed=4, backend="c")
    assert model._compiled_loop() is c_backend
    length = 1100  # past one block of noise (1024) and many chunks
    compiled = model.generate([3, 1, 4], length, seed=9, **draw)
    with monkeypatch.context() as m:
        _numpy_loop(m)
        reference = model.generate([3, 1, 4], length, seed=9, **draw)
    assert len(compiled) == length
    assert compiled == reference


@pytest.mark.parametrize("weights,path", [("float32", p) for p in c_backend.SUPPORTED_KERNELS] + [("bf16", None)])
@pytest.mark.parametrize("input_mode", ["embedding", "scaled"])
def test_one_sample_loop_on_a_team_with_odd_chunks(monkeypatch, weights, path, input_mode):
    # the one-sample loop (lstm_generate_row) on two threads even for this small model,
    # chunks of odd length (its two h buffers swap at every character), against the NumPy loop
    # (the BLAS path has no such loop: it keeps the batch loop)
    if path is not None:
        monkeypatch.setenv("FASTLSTM_KERNEL", path)
    monkeypatch.setenv("FASTLSTM_MIN_PARALLEL_WORK", "0")
    monkeypatch.setenv("FASTLSTM_NUM_THREADS", "2")
    if weights == "bf16" and "avx512bf16" in c_backend.BF16_KERNELS:
        monkeypatch.setenv("FASTLSTM_BF16_KERNEL", "avx512")  # exact to the NumPy loop's sums
    monkeypatch.setattr(CharModel, "GENERATE_CHUNK", 13)
    model = CharModel(37, 40, 3, embed_dim=7, input_mode=input_mode, seed=6, backend="c")
    model.lstm.params["weight_hh_l2"] *= 3  # peakier output
    draw = dict(seed=5, temperature=0.8, top_k=9, weights=weights)
    compiled = model.generate([3, 1, 4, 1], 401, **draw)
    greedy = model.generate([3, 1, 4, 1], 401, greedy=True, weights=weights)
    with monkeypatch.context() as m:
        _numpy_loop(m)
        assert compiled == model.generate([3, 1, 4, 1], 401, **draw)
        assert greedy == model.generate([3, 1, 4, 1], 401, greedy=True, weights=weights)


def test_one_sample_loop_checks_its_arguments():
    f = np.float32
    L, H, V, E = 2, 4, 6, 3
    W_ih = [np.ones((4 * H, E), f), np.ones((4 * H, H), f)]
    W_hh, b = [np.ones((4 * H, H), f)] * L, [np.zeros(4 * H, f)] * L
    pack = c_backend.pack_generate_row(W_ih, W_hh, b, np.zeros((V, E), f), np.zeros((V, H), f))
    if pack is None:
        pytest.skip("no fused path on this build")
    h, c = np.zeros((L, H), f), np.zeros((L, H), f)
    ids = c_backend.generate_row(pack, np.zeros(V, f), 0, None, h, c, 5)
    assert ids.shape == (5,) and ((0 <= ids) & (ids < V)).all()
    with pytest.raises(ValueError, match="inputs"):
        c_backend.pack_generate_row(W_ih, W_hh, b, np.zeros((V, E + 1), f), np.zeros((V, H), f))
    with pytest.raises(ValueError, match="W_hh"):
        c_backend.pack_generate_row(W_ih, [W_hh[0], np.ones((4 * H, H + 1), f)], b, np.zeros((V, E), f),
                                    np.zeros((V, H), f))
    with pytest.raises(ValueError, match="noise"):
        c_backend.generate_row(pack, np.zeros(V, f), 0, np.zeros((5, V + 1), f), h, c, 5)
    with pytest.raises(ValueError, match="h"):
        c_backend.generate_row(pack, np.zeros(V, f), 0, None, np.zeros((L, H + 1), f), c, 5)
    with pytest.raises(ValueError, match="top_k"):
        c_backend.generate_row(pack, np.zeros(V, f), -1, None, h, c, 5)


def test_compiled_loop_streams_every_character_in_order(monkeypatch):
    model = CharModel(11, 8, 1, embed_dim=3, seed=1, backend="c")
    monkeypatch.setattr(CharModel, "GENERATE_CHUNK", 7)
    seen = []
    out = model.generate([2], 50, seed=3, callback=seen.append)
    assert seen == out and len(out) == 50


def test_numpy_backend_and_float64_keep_the_numpy_loop():
    assert CharModel(11, 8, 1, backend="numpy")._compiled_loop() is None
    assert CharModel(11, 8, 1, dtype=np.float64)._compiled_loop() is None


def test_compiled_loop_checks_its_arguments():
    f = np.float32
    L, H, V, E = 1, 4, 6, 3
    W_ih, W_hh, b = [np.zeros((4 * H, E), f)], [np.zeros((4 * H, H), f)], [np.zeros(4 * H, f)]
    N = 2
    args = dict(emb=np.zeros((V, E), f), WT=np.zeros((H, V), f), bias=np.zeros(V, f), top_k=0,
                noise=None, h_top=np.zeros((N, H), f), h=np.zeros((L, N, H), f), c=np.zeros((L, N, H), f),
                n=5)
    ids = c_backend.generate(W_ih, W_hh, b, **args)
    assert ids.shape == (5, N) and ((0 <= ids) & (ids < V)).all()
    with pytest.raises(ValueError, match="emb"):
        c_backend.generate(W_ih, W_hh, b, **{**args, "emb": np.zeros((V + 1, E), f)})
    with pytest.raises(ValueError, match="noise"):
        c_backend.generate(W_ih, W_hh, b, **{**args, "noise": np.zeros((5, N + 1, V), f)})
    with pytest.raises(ValueError, match="W_hh"):
        c_backend.generate(W_ih, [np.zeros((4 * H, H + 1), f)], b, **args)
    with pytest.raises(ValueError, match="one number per step"):
        c_backend.generate(W_ih, W_hh, b, **{**args, "emb": None})


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy-loop"])
@pytest.mark.parametrize("draw", [dict(greedy=True), dict(temperature=0.9, top_k=5)], ids=["greedy", "top-k"])
def test_batched_samples_are_the_single_runs_of_their_seeds(monkeypatch, compiled, draw):
    if not compiled:
        _numpy_loop(monkeypatch)
    model = CharModel(19, 12, 2, embed_dim=4, seed=2, backend="c")
    assert (model._compiled_loop() is not None) == compiled
    K, length = 5, 300
    seen = []
    batch = model.generate([1, 2], length, seed=40, num_samples=K, callback=seen.append, **draw)
    assert len(batch) == K and all(len(s) == length for s in batch)
    for k in range(K):
        assert batch[k] == model.generate([1, 2], length, seed=40 + k, **draw), k
    assert [list(ids) for ids in seen] == [[batch[k][n] for k in range(K)] for n in range(length)]
    if not draw.get("greedy"):
        assert len({tuple(s) for s in batch}) == K  # independent streams


def test_num_samples_checks():
    model = CharModel(11, 8, 1, embed_dim=3, seed=1)
    with pytest.raises(ValueError, match="num_samples"):
        model.generate([1], 5, num_samples=0)
    with pytest.raises(ValueError, match="rng"):
        model.generate([1], 5, num_samples=2, rng=np.random.default_rng(0))
    assert model.generate([1], 4, num_samples=1, seed=3) == [model.generate([1], 4, seed=3)]


def test_packed_weights_must_fit():
    f = np.float32
    L, H, V, E, N = 1, 4, 6, 3, 2
    W_ih, W_hh, b = [np.ones((4 * H, E), f)], [np.ones((4 * H, H), f)], [np.zeros(4 * H, f)]
    args = dict(emb=np.zeros((V, E), f), WT=np.zeros((H, V), f), bias=np.zeros(V, f), top_k=0,
                noise=None, h_top=np.zeros((N, H), f), h=np.zeros((L, N, H), f), c=np.zeros((L, N, H), f),
                n=3)
    packed = c_backend.pack_generate(W_ih, W_hh)
    if packed is None:
        pytest.skip("no fused path on this build")
    c_backend.generate(W_ih, W_hh, b, **args, packed=packed)
    other = c_backend.pack_generate([np.ones((4 * H, E + 1), f)], W_hh)
    with pytest.raises(ValueError, match="pack_generate"):
        c_backend.generate(W_ih, W_hh, b, **args, packed=other)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy-loop"])
def test_on_chunk_streams_the_same_ids_in_blocks(monkeypatch, compiled):
    if not compiled:
        _numpy_loop(monkeypatch)
    model = CharModel(11, 8, 1, embed_dim=3, seed=1, backend="c")
    monkeypatch.setattr(CharModel, "GENERATE_CHUNK", 7)
    blocks, each = [], []
    out = model.generate([2], 50, seed=3, on_chunk=blocks.append, callback=each.append)
    assert sum(blocks, []) == out == each and all(isinstance(b, list) for b in blocks)
    if compiled:
        assert [len(b) for b in blocks][:7] == [7] * 7
    batch = []
    rows = model.generate([2], 20, seed=3, num_samples=3, on_chunk=batch.append)
    stacked = np.concatenate(batch)
    assert stacked.shape == (20, 3) and [list(stacked[:, k]) for k in range(3)] == rows
