"""Every float32 kernel path of the C backend (avx512, avx2, portable, blas) against
the NumPy reference, single- and multi-threaded, on shapes that leave partial
panels and partial row blocks; the path is forced with FASTLSTM_KERNEL.
"""

import numpy as np
import pytest

import fastlstm
from lstm_testing import REFERENCE, assert_all_close, make_inputs, run_layer, shape_id

c_backend = pytest.importorskip("fastlstm.backends._c", reason="C backend not built")
PATHS = list(c_backend.SUPPORTED_KERNELS)

# H: below, at and past the 16/32-unit panels; N: partial 6- and 12-row blocks.
# N = 1 past 4 steps, I >= 64: the one-row loop that projects rows ahead (I > H and I < H).
SHAPES = [(3, 1, 2, 1, 1), (4, 7, 3, 17, 2), (2, 13, 5, 33, 1), (3, 25, 4, 40, 2), (2, 3, 1, 64, 1),
          (9, 1, 64, 33, 2), (14, 1, 70, 17, 1)]


@pytest.mark.parametrize("projection", ["fused", "hoisted", "hoisted-blas"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("T,N,I,H,L", SHAPES, ids=[shape_id(*s) for s in SHAPES])
def test_path_matches_reference(monkeypatch, threads, path, projection, T, N, I, H, L):
    monkeypatch.setenv("FASTLSTM_KERNEL", path)
    # the input projection fused into each step, or one product over all steps (on the
    # fused kernels while x is small, as here, or by BLAS)
    monkeypatch.setenv("FASTLSTM_FUSE_INPUT", "always" if projection == "fused" else "never")
    if projection == "hoisted-blas":
        monkeypatch.setenv("FASTLSTM_PROJECT_X_BYTES", "0")
    x, state, dy, dstate = make_inputs(7, T, N, I, H, L, np.float32)
    ref = fastlstm.LSTM(I, H, L, backend=REFERENCE, seed=3)
    layer = fastlstm.LSTM(I, H, L, backend="c", seed=3)
    expected = run_layer(ref, x, state, dy, dstate)
    actual = run_layer(layer, x, state, dy, dstate)
    assert_all_close(actual, expected, np.float32, f"{path}-{threads}-{projection}")


@pytest.mark.parametrize("projection", ["fused", "hoisted"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("T,N,I,H,L", SHAPES[1:4], ids=[shape_id(*s) for s in SHAPES[1:4]])
def test_path_inference_matches_training_forward(monkeypatch, threads, path, projection, T, N, I, H, L):
    # an inference pass keeps no gates for backward: the outputs must not change by a bit
    monkeypatch.setenv("FASTLSTM_KERNEL", path)
    monkeypatch.setenv("FASTLSTM_FUSE_INPUT", "always" if projection == "fused" else "never")
    x, state, _, _ = make_inputs(11, T, N, I, H, L, np.float32)
    layer = fastlstm.LSTM(I, H, L, backend="c", seed=5)
    y_train, (h_train, c_train) = layer.forward(x, state, training=True)
    for _ in range(2):  # the second call runs on the workspace the first one left
        y, (h, c) = layer.forward(x, state)
        np.testing.assert_array_equal(y, y_train)
        np.testing.assert_array_equal(h, h_train)
        np.testing.assert_array_equal(c, c_train)
    # and a training pass after them still has its gates for backward
    ref = fastlstm.LSTM(I, H, L, backend=REFERENCE, seed=5)
    assert_all_close(run_layer(layer, x, state), run_layer(ref, x, state), np.float32, path)


@pytest.mark.parametrize("ahead", ["on", "off"])
@pytest.mark.parametrize("path", [p for p in PATHS if p != "blas"])
@pytest.mark.parametrize("T,I,H", [(5, 64, 17), (9, 70, 40), (14, 64, 80), (23, 66, 66)])
def test_one_row_projecting_ahead_changes_no_bit(monkeypatch, threads, path, T, I, H, ahead):
    # one sequence (N = 1) projects its rows ahead inside the steps (where
    # FASTLSTM_ONE_ROW_AHEAD lets it); a batch of two copies of it runs the separate
    # loops: the same sums in the same order
    monkeypatch.setenv("FASTLSTM_KERNEL", path)
    monkeypatch.setenv("FASTLSTM_FUSE_INPUT", "never")
    monkeypatch.setenv("FASTLSTM_ONE_ROW_AHEAD", ahead)
    x, state, _, _ = make_inputs(13, T, 1, I, H, 1, np.float32)
    layer = fastlstm.LSTM(I, H, backend="c", seed=2)
    twice = np.concatenate([x, x], axis=1)
    state2 = tuple(np.concatenate([s, s], axis=1) for s in state)
    for training in (False, True):
        y1, (h1, c1) = layer.forward(x, state, training=training)
        y2, (h2, c2) = layer.forward(twice, state2, training=training)
        for one, two in ((y1, y2), (h1, h2), (c1, c2)):
            np.testing.assert_array_equal(one[:, 0], two[:, 0])
            np.testing.assert_array_equal(two[:, 0], two[:, 1])
    # the reverse direction and a shorter length pack one row per step too
    both = fastlstm.LSTM(I, H, bidirectional=True, backend="c", seed=2)
    two_states = tuple(np.concatenate([s, s], axis=0) for s in state)
    for lengths in (None, [T - 1]):
        y1, (h1, c1) = both.forward(x, two_states, lengths=lengths)
        y2, (h2, c2) = both.forward(twice, tuple(np.concatenate([s, s], axis=1) for s in two_states),
                                    lengths=None if lengths is None else lengths * 2)
        for one, two in ((y1, y2), (h1, h2), (c1, c2)):
            np.testing.assert_array_equal(one[:, 0], two[:, 0])


@pytest.mark.parametrize("path", [p for p in PATHS if p != "blas"])
def test_fused_inference_stores_no_gates(monkeypatch, path):
    # the point of keep=False: the fused kernels skip the T*N*4H stores
    monkeypatch.setenv("FASTLSTM_KERNEL", path)
    monkeypatch.setenv("FASTLSTM_FUSE_INPUT", "always")
    T, N, I, H = 3, 7, 5, 20
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(shape).astype(np.float32)
            for shape in ((T, N, I), (N, H), (N, H), (4 * H, I), (4 * H, H), (4 * H,))]
    outs = [np.empty((T, N, H), np.float32), np.empty((N, H), np.float32), np.empty((N, H), np.float32)]
    for keep in (False, True):
        gates = np.full((T, N, 4 * H), 7.0, np.float32)
        c_backend.forward(*args, *outs, gates, np.empty((T, N, H), np.float32), keep=keep)
        assert (gates == 7.0).all() != keep


@pytest.mark.parametrize("path", [p for p in PATHS if p != "blas"])
@pytest.mark.parametrize("T", [1, 2, 3, 7])
@pytest.mark.parametrize("N", [1, 5, 33])
def test_inference_forward_is_the_training_forward_bit_for_bit(monkeypatch, path, T, N):
    # an inference forward keeps c_t in a ring of two steps' rows (LSTM_KEEP_RING), the
    # last of each row where its last step put it: the same outputs and final states as a
    # training forward (which keeps every step's), with lengths (zeros among them), the
    # reverse direction, one row (N = 1, rows projected ahead), AMX or not, two layers
    monkeypatch.setenv("FASTLSTM_KERNEL", path)
    rng = np.random.default_rng(T * 100 + N)
    for I, H, bidirectional in ((3, 5, True), (130, 96, False), (96, 96, True)):
        layer = fastlstm.LSTM(I, H, 2, bidirectional=bidirectional, backend="c", seed=1)
        x = rng.standard_normal((T, N, I)).astype(np.float32)
        for lengths in (None, rng.integers(0, T + 1, N), rng.integers(1, T + 1, N)):
            y, (h, c) = layer.forward(x, lengths=lengths)
            y_t, (h_t, c_t) = layer.forward(x, lengths=lengths, training=True)
            for got, want in ((y, y_t), (h, h_t), (c, c_t)):
                np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("lengths", [[5, 1, 2], [-1, 2, 3], [4, 4, 9], [1, 2]],
                         ids=["above-T", "negative", "above-T-rest-full", "wrong-shape"])
@pytest.mark.parametrize("keep", [False, True])
def test_backend_forward_names_bad_lengths(lengths, keep):
    # the backend contract called directly (the layer and lstm_forward check lengths
    # first): a ValueError naming lengths, on every path a call can take
    T, N, I, H = 4, 3, 5, 8
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(shape).astype(np.float32)
            for shape in ((T, N, I), (N, H), (N, H), (4 * H, I), (4 * H, H), (4 * H,))]
    outs = [np.empty(shape, np.float32) for shape in ((T, N, H), (N, H), (N, H), (T, N, 4 * H), (T, N, H))]
    with pytest.raises(ValueError, match="lengths must be 3 values in"):
        c_backend.forward(*args, *outs, keep=keep, lengths=np.array(lengths))


@pytest.mark.parametrize("path", PATHS)
def test_path_propagates_nan(monkeypatch, path):
    monkeypatch.setenv("FASTLSTM_KERNEL", path)
    layer = fastlstm.LSTM(3, 20, backend="c", seed=0)
    x = np.ones((4, 2, 3), np.float32)
    x[1, 0, 0] = np.nan
    y, (h_n, c_n) = layer(x)
    assert np.isfinite(y[0]).all()
    assert np.isnan(y[1:, 0]).all() and np.isfinite(y[:, 1]).all()


@pytest.mark.parametrize("path", PATHS)
def test_path_saturates_without_overflow(monkeypatch, path):
    monkeypatch.setenv("FASTLSTM_KERNEL", path)
    layer = fastlstm.LSTM(2, 18, backend="c", seed=0)
    ref = fastlstm.LSTM(2, 18, backend=REFERENCE, seed=0)
    x = np.array([[[1e4, -1e4]], [[-200.0, 90.0]], [[0.0, 0.0]]], np.float32)
    y, _ = layer(x)
    y_ref, _ = ref(x)
    assert np.isfinite(y).all()
    assert_all_close({"y": y}, {"y": y_ref}, np.float32, path)


def test_unknown_kernel_name_is_refused(monkeypatch):
    monkeypatch.setenv("FASTLSTM_KERNEL", "sse9")
    layer = fastlstm.LSTM(2, 3, backend="c")
    with pytest.raises(ValueError, match="FASTLSTM_KERNEL"):
        layer(np.zeros((1, 1, 2), np.float32))


@pytest.mark.parametrize("variable, value", [("FASTLSTM_FUSE_INPUT", "sometimes"),
                                             ("FASTLSTM_THREAD_SPLIT", "diagonal")])
def test_unknown_mode_is_refused(monkeypatch, variable, value):
    monkeypatch.setenv("FASTLSTM_KERNEL", PATHS[0])
    monkeypatch.setenv(variable, value)
    layer = fastlstm.LSTM(2, 3, backend="c")
    if PATHS[0] == "blas":
        pytest.skip("no fused path on this build: the mode is never read")
    with pytest.raises(ValueError, match=variable):
        layer(np.zeros((1, 4, 2), np.float32))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("N", [1, 3])
def test_path_step_matches_forward(monkeypatch, threads, path, N):
    monkeypatch.setenv("FASTLSTM_KERNEL", path)
    layer = fastlstm.LSTM(5, 21, 2, backend="c", seed=2)
    ref = fastlstm.LSTM(5, 21, 2, backend=REFERENCE, seed=2)
    x, state, _, _ = make_inputs(11, 4, N, 5, 21, 2, np.float32)
    y_ref, (h_ref, c_ref) = ref.forward(x, state)
    for t in range(4):
        h_t, state = layer.step(x[t], state)
        assert_all_close({"h_t": h_t}, {"h_t": y_ref[t]}, np.float32, f"{path}-step{t}")
    assert_all_close({"h": state[0], "c": state[1]}, {"h": h_ref, "c": c_ref}, np.float32, path)


def test_thread_split_rule(monkeypatch):
    from fastlstm import _config
    monkeypatch.delenv("FASTLSTM_THREAD_SPLIT", raising=False)
    assert _config.split_by_rows(512 * 1024, 2)             # H=128 fused: 512 KiB
    assert not _config.split_by_rows(1800 * 1024, 2)        # the tutorial's first layer
    assert not _config.split_by_rows(512 * 1024, 1)
    monkeypatch.setenv("FASTLSTM_THREAD_SPLIT", "units")
    assert not _config.split_by_rows(1024, 2)
    monkeypatch.setenv("FASTLSTM_THREAD_SPLIT", "rows")
    assert _config.split_by_rows(1 << 30, 2)


def test_thread_rule(monkeypatch):
    from fastlstm import _config
    monkeypatch.delenv("FASTLSTM_MIN_PARALLEL_WORK", raising=False)
    monkeypatch.setenv("FASTLSTM_NUM_THREADS", "2")
    assert _config.threads_for(1, 64, 8) == 1                      # 16k multiply-adds a step
    assert _config.threads_for(1, 128, 8) == 2                     # 65k
    assert _config.threads_for(1, 64, 8, step=True) == 1           # 16k
    assert _config.threads_for(1, 96, 8, step=True) == 2           # 37k
    monkeypatch.setenv("FASTLSTM_MIN_PARALLEL_WORK", "0")
    assert _config.threads_for(1, 1, 8) == 2


@pytest.mark.parametrize("path", PATHS)
def test_path_step_is_the_same_in_either_weight_order(monkeypatch, threads, path):
    # at N=1 every other call reads the weight rows last to first: same bits
    monkeypatch.setenv("FASTLSTM_KERNEL", path)
    layer = fastlstm.LSTM(7, 23, 2, backend="c", seed=4)
    x, state, _, _ = make_inputs(5, 1, 1, 7, 23, 2, np.float32)
    calls = [layer.step(x[0], state) for _ in range(3)]
    for h_t, (h, c) in calls[1:]:
        np.testing.assert_array_equal(h_t, calls[0][0])
        np.testing.assert_array_equal(h, calls[0][1][0])
        np.testing.assert_array_equal(c, calls[0][1][1])


def test_show_config_names_the_kernel_path():
    info = fastlstm.show_config(mode="dicts")
    assert info["c_kernel"] in PATHS


@pytest.mark.parametrize("path", [p for p in PATHS if p != "blas"])
def test_more_threads_than_cores(monkeypatch, path):
    # a team larger than the machine (5 threads here on 2 cores): the kernels' own barrier
    # spins, then yields the core, so the team still moves on and gets the same numbers
    monkeypatch.setenv("FASTLSTM_KERNEL", path)
    monkeypatch.setenv("FASTLSTM_NUM_THREADS", "5")
    monkeypatch.setenv("FASTLSTM_MIN_PARALLEL_WORK", "0")
    T, N, I, H, L = 12, 7, 64, 80, 2
    x, state, dy, dstate = make_inputs(17, T, N, I, H, L, np.float32)
    ref = fastlstm.LSTM(I, H, L, backend=REFERENCE, seed=6)
    layer = fastlstm.LSTM(I, H, L, backend="c", seed=6)
    assert_all_close(run_layer(layer, x, state, dy, dstate), run_layer(ref, x, state, dy, dstate),
                     np.float32, f"{path}-5threads")
    one = fastlstm.LSTM(I, H, bidirectional=True, backend="c", seed=6)
    y, _ = one.forward(x[:, :1])  # N=1: the one-row loop, directions one after the other
    ref_one = fastlstm.LSTM(I, H, bidirectional=True, backend=REFERENCE, seed=6)
    np.testing.assert_allclose(y, ref_one.forward(x[:, :1])[0], rtol=1e-5, atol=1e-6)
