"""The C backend's own loops for variable lengths, the reverse direction and
projections, on every kernel path, thread split and input-projection mode,
against the NumPy reference (the functional single-layer API); and that they
really run in C (no fallback warning).
"""

import threading
import warnings

import numpy as np
import pytest

import fastlstm
from lstm_testing import REFERENCE, assert_close

c_backend = pytest.importorskip("fastlstm.backends._c", reason="C backend not built")
PATHS = list(c_backend.SUPPORTED_KERNELS)

# (T, N, I, H, P, lengths): partial panels and row blocks, unsorted lengths with
# T, 1 and 0, ties, a single row, and every length T (the plain loop, reversed).
CASES = [
    (7, 5, 3, 20, 0, [7, 1, 3, 0, 7]),
    (9, 13, 6, 33, 0, [9, 4, 4, 1, 8, 2, 9, 0, 5, 6, 3, 7, 1]),
    (4, 7, 2, 17, 0, None),
    (1, 1, 2, 3, 0, [1]),
    (6, 8, 5, 12, 5, [6, 2, 0, 5, 1, 6, 3, 4]),
    (5, 3, 4, 9, 2, None),
    # the projection's panels (4 vectors of columns each): several of them, the last part full
    (4, 9, 3, 150, 70, [4, 1, 3, 4, 2, 0, 4, 3, 1]),
    # H a multiple of every path's vector: dW_hr in the kernels' own tiles (P in a partial
    # tile of rows), over more than one block of 128 rows without lengths
    (5, 7, 3, 64, 20, [5, 2, 0, 5, 1, 3, 4]),
    (12, 16, 3, 48, 11, None),
]


def _run(backend, dtype, T, N, I, H, P, lengths, reverse):
    rng = np.random.default_rng(T * 1000 + N * 10 + H)
    K = P or H
    s = 0.3 if H <= 64 else 0.3 * (32 / H) ** 0.5  # wide layers: sums of a size float32 keeps to 1e-4
    x = rng.standard_normal((T, N, I)).astype(dtype)
    W_ih = (s * rng.standard_normal((4 * H, I))).astype(dtype)
    W_hh = (s * rng.standard_normal((4 * H, K))).astype(dtype)
    b_ih, b_hh = (rng.standard_normal((2, 4 * H))).astype(dtype)
    W_hr = (s * rng.standard_normal((P, H))).astype(dtype) if P else None
    state = (rng.standard_normal((N, K)).astype(dtype), rng.standard_normal((N, H)).astype(dtype))
    y, (h, c), cache = fastlstm.lstm_forward(x, W_ih, W_hh, b_ih, b_hh, state, lengths=lengths,
                                             reverse=reverse, W_hr=W_hr, backend=backend)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dstate = (rng.standard_normal(h.shape).astype(dtype), rng.standard_normal(c.shape).astype(dtype))
    dx, (dh0, dc0), grads = fastlstm.lstm_backward(cache, dy, dstate)
    return {"y": y, "h_n": h, "c_n": c, "dx": dx, "dh0": dh0, "dc0": dc0,
            **{f"d{k}": g for k, g in grads.items()}}


def _assert_matches(actual, expected, dtype, case):
    assert sorted(actual) == sorted(expected)
    for key, want in expected.items():
        assert_close(actual[key], want, dtype, f"{case}: {key}")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("fuse", ["always", "never", "never-blas"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[0]}-N{c[1]}-H{c[3]}-P{c[4]}"
                         + ("-lengths" if c[5] else ""))
def test_options_match_reference_on_every_path(monkeypatch, threads, path, fuse, case, reverse):
    monkeypatch.setenv("FASTLSTM_KERNEL", path)
    # the input projection fused into the steps, hoisted on the kernels (reading x where
    # it lies in the padded batch, with lengths) or hoisted to BLAS (reading x packed)
    monkeypatch.setenv("FASTLSTM_FUSE_INPUT", fuse.split("-")[0])
    if fuse == "never-blas":
        monkeypatch.setenv("FASTLSTM_PROJECT_X_BYTES", "0")
    T, N, I, H, P, lengths = case
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to NumPy would warn
        actual = _run("c", np.float32, T, N, I, H, P, lengths, reverse)
    expected = _run(REFERENCE, np.float32, T, N, I, H, P, lengths, reverse)
    _assert_matches(actual, expected, np.float32, f"{path}-{threads}-{fuse}")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[0]}-N{c[1]}-H{c[3]}-P{c[4]}"
                         + ("-lengths" if c[5] else ""))
def test_options_match_reference_in_float64(case, reverse):
    T, N, I, H, P, lengths = case
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        actual = _run("c", np.float64, T, N, I, H, P, lengths, reverse)
    _assert_matches(actual, _run(REFERENCE, np.float64, T, N, I, H, P, lengths, reverse),
                    np.float64, "float64")


def test_c_backend_declares_every_option():
    assert set(c_backend.OPTIONS) == {"lengths", "reverse", "projection", "projected", "projected_rows"}


def test_all_lengths_zero_gives_initial_state_and_zero_gradients():
    T, N, I, H = 3, 4, 2, 5
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    W_ih = rng.standard_normal((4 * H, I)).astype(np.float32)
    W_hh = rng.standard_normal((4 * H, H)).astype(np.float32)
    h0, c0 = rng.standard_normal((2, N, H)).astype(np.float32)
    y, (h, c), cache = fastlstm.lstm_forward(x, W_ih, W_hh, state=(h0, c0), lengths=[0] * N, backend="c")
    assert not y.any()
    np.testing.assert_array_equal(h, h0)
    np.testing.assert_array_equal(c, c0)
    dh, dc = rng.standard_normal((2, N, H)).astype(np.float32)
    dx, (dh0, dc0), grads = fastlstm.lstm_backward(cache, np.ones_like(y), (dh, dc))
    assert not dx.any() and not any(g.any() for g in grads.values())
    np.testing.assert_array_equal(dh0, dh)
    np.testing.assert_array_equal(dc0, dc)


def test_packed_loop_refuses_inconsistent_batch():
    # the private packed entry point checks what the C loops trust: T steps of
    # 1..N rows each, non-increasing, summing to the packed rows
    f = np.float32
    H, I, N, rows = 3, 2, 2, 3

    def call(batch, T):
        c_backend._forward_packed(
            np.zeros((rows, I), f), np.zeros((N, H), f), np.zeros((N, H), f), np.zeros((4 * H, I), f),
            np.zeros((4 * H, H), f), np.zeros((0, H), f), np.zeros(4 * H, f), np.array(batch, np.intp),
            np.zeros((rows, H), f), np.zeros((rows, 4 * H), f), np.zeros((rows, H), f),
            np.zeros((0, H), f), True, T)

    call([2, 1], 2)  # consistent
    for batch, T in (([1, 2], 2), ([2, 2], 2), ([3], 1), ([2, 1], 3), ([2, 0, 1], 3)):
        with pytest.raises(ValueError):
            call(batch, T)


def test_directions_run_side_by_side_on_half_the_threads(monkeypatch):
    from fastlstm import _config
    from fastlstm.functional import run_directions

    monkeypatch.setenv("FASTLSTM_NUM_THREADS", "2")
    seen = []

    def task(k):
        def run():
            seen.append((k, threading.current_thread().name, _config.thread_share_now()))
            return k
        return run

    assert run_directions(c_backend, [task(0), task(1)]) == [0, 1]
    (_, first, share0), (_, second, share1) = sorted(seen)
    assert first != second and share0 == share1 == 1
    seen.clear()
    monkeypatch.setenv("FASTLSTM_NUM_THREADS", "1")  # nothing to share: one after the other
    assert run_directions(c_backend, [task(0), task(1)]) == [0, 1]
    assert [s for _, _, s in seen] == [None, None] and seen[0][1] == seen[1][1]


def test_a_failing_direction_raises_after_both_finish(monkeypatch):
    from fastlstm.functional import run_directions

    monkeypatch.setenv("FASTLSTM_NUM_THREADS", "2")
    done = []

    def fails():
        raise ValueError("direction 1")

    with pytest.raises(ValueError, match="direction 1"):
        run_directions(c_backend, [lambda: done.append(0), fails])
    assert done == [0]


@pytest.mark.parametrize("proj_size", [0, 3])
@pytest.mark.parametrize("nthreads", ["1", "2"])
def test_bidirectional_layer_matches_reference(monkeypatch, nthreads, proj_size):
    # two layers, variable lengths, both directions side by side with two threads
    monkeypatch.setenv("FASTLSTM_NUM_THREADS", nthreads)
    monkeypatch.setenv("FASTLSTM_MIN_PARALLEL_WORK", "0")
    T, N, I, H = 6, 5, 4, 9
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    lengths = [6, 2, 0, 5, 1]
    out = {}
    for backend in ("c", REFERENCE):
        m = fastlstm.LSTM(I, H, 2, bidirectional=True, proj_size=proj_size, backend=backend, seed=2)
        y, (h, c) = m.forward(x, lengths=lengths, training=True)
        dx, (dh0, dc0) = m.backward(np.ones_like(y), (np.ones_like(h), np.ones_like(c)))
        out[backend] = {"y": y, "h": h, "c": c, "dx": dx, "dh0": dh0, "dc0": dc0,
                        **{k: g.copy() for k, g in m.grads.items()}}
    _assert_matches(out["c"], out[REFERENCE], np.float32, f"bidirectional-{nthreads}")


_FORKED = {}


def _forward_in_child(x):
    return _FORKED["model"].forward(x)[0]


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_bidirectional_layer_works_in_a_forked_child(monkeypatch):
    # the side thread of the parent does not exist in a child made by fork
    import multiprocessing

    monkeypatch.setenv("FASTLSTM_NUM_THREADS", "2")
    m = fastlstm.LSTM(3, 8, bidirectional=True, backend="c", seed=1)
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    expected, _ = m.forward(x)  # the parent's side thread now exists
    _FORKED["model"] = m
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_forward_in_child, (x,)).get(timeout=60)
    finally:
        _FORKED.clear()
    np.testing.assert_array_equal(got, expected)


def test_scratch_buffers_are_kept_per_slot_and_thread(monkeypatch):
    import threading

    from fastlstm.backends import _steps
    a = _steps.scratch("a", (3, 4), np.float32)
    b = _steps.scratch("b", (3, 4), np.float32)
    assert a.flags.c_contiguous and a.shape == (3, 4) and a.dtype == np.float32
    assert not np.shares_memory(a, b)
    assert np.shares_memory(_steps.scratch("a", (2, 3), np.float64), a)  # the slot's memory again
    seen = []
    thread = threading.Thread(target=lambda: seen.append(_steps.scratch("a", (3, 4), np.float32)))
    thread.start()
    thread.join()
    assert not np.shares_memory(seen[0], a)  # another thread's own
    monkeypatch.setattr(_steps, "SCRATCH_KEEP_BYTES", 1000)
    big = _steps.scratch("a", (100, 100), np.float32)  # above the limit: a fresh array
    assert big.shape == (100, 100) and not np.shares_memory(big, _steps.scratch("a", (100, 100), np.float32))


def test_placed_rows_are_checked():
    # with lengths the float32 loop reads x and writes y in the padded batch, where the
    # private entry point's place and perm say: each must lie inside the arrays
    f = np.float32
    T, N, I, H = 3, 2, 2, 3
    batch = np.array([2, 1, 1], np.intp)
    place, perm = np.array([0, 1, 2, 4], np.intp), np.array([1, 0], np.intp)

    def call(place=place, perm=perm, padded=T * N):
        c_backend._forward_packed(
            np.zeros((padded, I), f), np.zeros((N, H), f), np.zeros((N, H), f), np.zeros((4 * H, I), f),
            np.zeros((4 * H, H), f), np.zeros((0, H), f), np.zeros(4 * H, f), batch, np.zeros((padded, H), f),
            np.zeros((4, 4 * H), f), np.zeros((4, H), f), np.zeros((0, H), f), True, T, None,
            place, perm)

    if PATHS != ["blas"]:  # (a build without the fused paths refuses placed rows)
        call()  # consistent
    for bad in ({"place": np.array([0, 1, 2, 6], np.intp)}, {"place": np.array([0, -1, 2, 4], np.intp)},
                {"perm": np.array([1, 2], np.intp)}, {"perm": np.array([0], np.intp)},
                {"padded": T * N - 1}):
        with pytest.raises(ValueError):
            call(**bad)


@pytest.mark.parametrize("fuse", ["always", "never"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_lengths_write_zeros_over_whatever_y_held(monkeypatch, threads, fuse, reverse):
    # the loop writes y in place with lengths: every padded position must come out 0,
    # whatever the buffer held before (here NaN), and the rest as the reference's
    monkeypatch.setenv("FASTLSTM_FUSE_INPUT", fuse)
    T, N, I, H = 6, 9, 4, 20
    lengths = np.array([6, 0, 2, 5, 1, 6, 3, 2, 4])
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    W_ih, W_hh = (0.3 * rng.standard_normal((2, 4 * H, max(I, H)))).astype(np.float32)
    W_ih, W_hh = np.ascontiguousarray(W_ih[:, :I]), np.ascontiguousarray(W_hh[:, :H])
    b = (0.1 * rng.standard_normal(4 * H)).astype(np.float32)
    h0, c0 = rng.standard_normal((2, N, H)).astype(np.float32)
    y, hT, cT = np.full((T, N, H), np.nan, np.float32), np.empty((N, H), np.float32), np.empty((N, H), np.float32)
    gates, cs = np.empty((T, N, 4 * H), np.float32), np.empty((T, N, H), np.float32)
    c_backend.forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, False, lengths=lengths,
                      reverse=reverse)
    y_ref, (h_ref, c_ref), _ = fastlstm.lstm_forward(x, W_ih, W_hh, b, np.zeros_like(b), (h0, c0),
                                                     lengths=lengths, reverse=reverse, backend=REFERENCE)
    padded = np.arange(T)[:, None] >= lengths[None, :]
    assert not y[padded].any() and not np.isnan(y).any()
    assert_close(y, y_ref, np.float32, "y")
    assert_close(hT, h_ref, np.float32, "h_n")
    assert_close(cT, c_ref, np.float32, "c_n")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["plain", "reverse", "lengths", "reverse-lengths", "full-lengths",
                                  "projection", "blas"])
def test_forward_writes_a_strided_y_in_place(monkeypatch, threads, dtype, kind):
    # y may be one direction's half of a bidirectional output (rows 2K apart): the fused
    # float32 loops write it in place, every other path through a copy; either way the
    # same numbers as into a C-contiguous y, and the other half untouched
    if kind == "blas":
        monkeypatch.setenv("FASTLSTM_KERNEL", "blas")
    T, N, I, H = 5, 7, 3, 16
    P = 5 if kind == "projection" else 0
    K = P or H
    lengths = {"lengths": [5, 1, 3, 0, 5, 2, 4], "reverse-lengths": [5, 1, 3, 0, 5, 2, 4],
               "full-lengths": [5] * N}.get(kind)
    reverse = kind.startswith("reverse")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((T, N, I)).astype(dtype)
    W_ih = (0.3 * rng.standard_normal((4 * H, I))).astype(dtype)
    W_hh = (0.3 * rng.standard_normal((4 * H, K))).astype(dtype)
    W_hr = (0.3 * rng.standard_normal((P, H))).astype(dtype) if P else None
    b = (0.1 * rng.standard_normal(4 * H)).astype(dtype)
    h0 = rng.standard_normal((N, K)).astype(dtype)
    c0 = rng.standard_normal((N, H)).astype(dtype)
    options = {"lengths": lengths, "reverse": reverse, "W_hr": W_hr}
    if P:
        options["ms"] = np.empty((T, N, H), dtype)

    def run(y):
        hT, cT = np.empty((N, K), dtype), np.empty((N, H), dtype)
        gates, cs = np.empty((T, N, 4 * H), dtype), np.empty((T, N, H), dtype)
        c_backend.forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, False, **options)
        return hT, cT

    want = np.full((T, N, K), np.nan, dtype)
    h_want, c_want = run(want)
    both = np.full((T, N, 2 * K), 7.0, dtype)
    h, c = run(both[..., K:])
    np.testing.assert_array_equal(both[..., K:], want)
    np.testing.assert_array_equal(h, h_want)
    np.testing.assert_array_equal(c, c_want)
    assert (both[..., :K] == 7.0).all()


def test_forward_refuses_a_y_of_uneven_rows():
    # rows not evenly spaced (a y cut from a wider batch): the fused loops, which would
    # write it in place, refuse it by name; the BLAS loop (FASTLSTM_KERNEL=blas, or a build
    # without the vector paths) writes a copy into it
    f = np.float32
    T, N, I, H = 3, 4, 2, 8
    rng = np.random.default_rng(2)
    args = (rng.standard_normal((T, N, I)).astype(f), np.zeros((N, H), f), np.zeros((N, H), f),
            rng.standard_normal((4 * H, I)).astype(f), np.zeros((4 * H, H), f), np.zeros(4 * H, f))

    def run(y):
        c_backend.forward(*args, y, np.empty((N, H), f), np.empty((N, H), f),
                          np.empty((T, N, 4 * H), f), np.empty((T, N, H), f), False)

    uneven = np.zeros((T, N + 1, 2 * H), f)[:, :N, :H]
    if c_backend.kernel_path() != "blas":
        with pytest.raises(ValueError, match="evenly spaced"):
            run(uneven)
    else:
        want = np.empty((T, N, H), f)
        run(want)
        run(uneven)
        np.testing.assert_array_equal(uneven, want)


def test_backward_after_a_strided_y(threads):
    # a training forward into a strided y: its backward reads y (a contiguous copy)
    T, N, I, H = 4, 5, 3, 16
    lengths = [4, 2, 3, 1, 4]
    rng = np.random.default_rng(9)
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    W_ih = (0.3 * rng.standard_normal((4 * H, I))).astype(np.float32)
    W_hh = (0.3 * rng.standard_normal((4 * H, H))).astype(np.float32)
    b = np.zeros(4 * H, np.float32)
    h0, c0 = np.zeros((N, H), np.float32), np.zeros((N, H), np.float32)
    dy = rng.standard_normal((T, N, H)).astype(np.float32)
    out = []
    for y in (np.empty((T, N, H), np.float32), np.empty((T, N, 2 * H), np.float32)[..., :H]):
        hT, cT = np.empty((N, H), np.float32), np.empty((N, H), np.float32)
        gates, cs = np.empty((T, N, 4 * H), np.float32), np.empty((T, N, H), np.float32)
        c_backend.forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, True, lengths=lengths)
        grads = [np.zeros_like(W_ih), np.zeros_like(W_hh), np.zeros_like(b)]
        dx, dh0, dc0 = np.empty_like(x), np.empty_like(h0), np.empty_like(c0)
        c_backend.backward(x, h0, c0, W_ih, W_hh, y, gates, cs, dy, np.zeros_like(h0), np.zeros_like(c0),
                           dx, dh0, dc0, *grads, lengths=lengths)
        out.append([dx, dh0, dc0, *grads])
    for a, b_ in zip(*out):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("path", [p for p in PATHS if p != "blas"])
@pytest.mark.parametrize("case", [(6, 9, 5, 64, 0, None), (5, 7, 3, 32, 10, [5, 2, 0, 5, 1, 3, 4])],
                         ids=["plain", "projection-lengths"])
def test_streamed_gates_change_no_bit(monkeypatch, threads, path, case):
    # a training forward whose gates pass FASTLSTM_STREAM_GATES_BYTES stores them past the
    # caches (non-temporal stores where a vector starts a cache line): the same values
    monkeypatch.setenv("FASTLSTM_KERNEL", path)
    runs = []
    for size in ("0", "1"):
        monkeypatch.setenv("FASTLSTM_STREAM_GATES_BYTES", size)
        runs.append(_run("c", np.float32, *case, False))
    # the kept gates start a cache line (a vector of them may be streamed only then)
    x = np.ones((2, 3, 4), np.float32)
    H = case[3]
    _, _, cache = fastlstm.lstm_forward(x, np.ones((4 * H, 4), np.float32), np.ones((4 * H, H), np.float32),
                                        None, None, backend="c")
    assert cache.gates.ctypes.data % 64 == 0
    for key, value in runs[0].items():
        np.testing.assert_array_equal(runs[1][key], value, err_msg=key)


def test_gates_stream_only_where_the_weights_stream_from_l3(monkeypatch):
    from fastlstm import _config as cfg
    monkeypatch.delenv("FASTLSTM_STREAM_GATES_BYTES", raising=False)
    assert cfg.stream_gates_bytes(cfg.FUSE_INPUT_BYTES) == 0  # a thread's weights stay in L2
    assert cfg.stream_gates_bytes(cfg.FUSE_INPUT_BYTES + 1) == cfg.STREAM_GATES_BYTES
    monkeypatch.setenv("FASTLSTM_STREAM_GATES_BYTES", "5")
    assert cfg.stream_gates_bytes(1) == 5
    monkeypatch.setenv("FASTLSTM_STREAM_GATES_BYTES", "-1")
    with pytest.raises(cfg.ConfigError, match="FASTLSTM_STREAM_GATES_BYTES"):
        cfg.stream_gates_bytes(1)
