"""Float32 weights packed once for inference (LSTM.inference_weights("float32",
packed=True), fastlstm/_packed.py, the C backend's PackedForward): bit for bit the
unpacked results on every kernel path, fusion choice, thread count and split and layer
option; the panels are really the ones read; the snapshot rules (a training forward,
load_state_dict and a replaced array repack, an in-place change is not seen until
inference_weights runs again); the errors.
"""

import numpy as np
import pytest

import fastlstm

c_backend = pytest.importorskip("fastlstm.backends._c", reason="C backend not built")
FUSED = [k for k in c_backend.SUPPORTED_KERNELS if k != "blas"]


def data(T, N, I, seed=0):
    return np.random.default_rng(seed).standard_normal((T, N, I)).astype(np.float32)


def both(layer, x, **kwargs):
    """(unpacked, packed) results of one inference forward; the layer is left packed."""
    layer.inference_weights("float32")
    plain = layer.forward(x, **kwargs)
    layer.inference_weights("float32", packed=True)
    return plain, layer.forward(x, **kwargs)


def same(a, b):
    (y0, (h0, c0)), (y1, (h1, c1)) = a, b
    for u, v in ((y0, y1), (h0, h1), (c0, c1)):
        assert u.shape == v.shape
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("path", c_backend.SUPPORTED_KERNELS)
@pytest.mark.parametrize("fuse", ["always", "never"])
@pytest.mark.parametrize("project_x", ["0", "100000000"])
@pytest.mark.parametrize("H,I,N", [(128, 128, 1), (300, 64, 1), (40, 17, 3), (33, 1, 7)])
def test_bit_identical_to_unpacked(monkeypatch, path, fuse, project_x, H, I, N):
    monkeypatch.setenv("FASTLSTM_KERNEL", path)
    monkeypatch.setenv("FASTLSTM_FUSE_INPUT", fuse)
    monkeypatch.setenv("FASTLSTM_PROJECT_X_BYTES", project_x)  # hoisted: BLAS or fused kernels
    layer = fastlstm.LSTM(I, H, seed=1, backend="c")
    same(*both(layer, data(12, N, I)))


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("split", ["rows", "units"])
@pytest.mark.parametrize("options", [{}, {"num_layers": 2}, {"bidirectional": True},
                                     {"proj_size": 20}, {"batch_first": True}])
def test_layer_options_and_threads(monkeypatch, threads, split, options):
    monkeypatch.setenv("FASTLSTM_NUM_THREADS", threads)
    monkeypatch.setenv("FASTLSTM_THREAD_SPLIT", split)
    monkeypatch.setenv("FASTLSTM_MIN_PARALLEL_WORK", "0")  # two threads even at this size
    layer = fastlstm.LSTM(24, 48, seed=2, backend="c", **options)
    x = data(9, 5, 24)
    lengths = np.array([9, 3, 0, 9, 5]) if not options.get("batch_first") else None
    same(*both(layer, x))
    if lengths is not None:
        same(*both(layer, x, lengths=lengths))
    state = (np.ones_like(layer.forward(x)[1][0]), np.full_like(layer.forward(x)[1][1], -0.5))
    same(*both(layer, x, state=state))


@pytest.mark.parametrize("first,then", [("1", "2"), ("2", "1")])
def test_one_snapshot_serves_any_thread_count(monkeypatch, first, then):
    """The panels' layout does not depend on the threads: packed under one count, read
    under another (and under the other split) gives that count's unpacked results."""
    monkeypatch.setenv("FASTLSTM_MIN_PARALLEL_WORK", "0")
    layer = fastlstm.LSTM(64, 96, seed=3, backend="c")
    x = data(10, 1, 64)
    monkeypatch.setenv("FASTLSTM_NUM_THREADS", first)
    layer.inference_weights("float32", packed=True)
    layer.forward(x)  # the panels are made here
    assert bool(layer._f32.panels(c_backend, 0)._panels) == bool(FUSED)  # the BLAS path packs none
    monkeypatch.setenv("FASTLSTM_NUM_THREADS", then)
    for split in ("rows", "units"):
        monkeypatch.setenv("FASTLSTM_THREAD_SPLIT", split)
        packed = layer.forward(x)
        layer.inference_weights("float32")
        unpacked = layer.forward(x)
        layer.inference_weights("float32", packed=True)
        layer.forward(x)
        same(unpacked, packed)


@pytest.mark.skipif(not FUSED, reason="this build has no fused kernels")
@pytest.mark.parametrize("fuse", ["always", "never"])
def test_the_kept_panels_are_what_the_loop_reads(monkeypatch, fuse):
    """Packed once: a second call packs nothing, and the products come from the panels
    (the snapshot's W_ih and W_hh zeroed after packing change nothing), for the fused
    input and for the hoisted projection on the fused kernels."""
    monkeypatch.setenv("FASTLSTM_FUSE_INPUT", fuse)
    monkeypatch.setenv("FASTLSTM_PROJECT_X_BYTES", "100000000")
    layer = fastlstm.LSTM(32, 64, seed=4, backend="c")
    x = data(8, 1, 32)
    layer.inference_weights("float32", packed=True)
    first = layer.forward(x)
    pf = layer._f32.panels(c_backend, 0)
    kept = {k: v for k, v in pf._panels.items()}
    assert [Ip for (_, Ip, hh) in kept if hh] == [32 if fuse == "always" else 0]
    assert any(not hh for (_, _, hh) in kept) == (fuse == "never")
    pf.W_hh[...] = 0  # breaks the contract on purpose: only the panels hold the weights now
    pf.W_ih[...] = 0
    same(first, layer.forward(x))
    assert all(pf._panels[k] is v for k, v in kept.items())


def test_snapshot_rules():
    layer = fastlstm.LSTM(16, 24, num_layers=2, seed=5, backend="c")
    x = data(7, 2, 16)
    layer.inference_weights("float32", packed=True)
    assert layer.inference_packed and layer.inference_precision == "float32"
    before = layer.forward(x)

    def unpacked():
        layer.inference_weights("float32")
        out = layer.forward(x)
        layer.inference_weights("float32", packed=True)
        return out

    # in place: not seen (the snapshot's copy), until inference_weights again
    layer.params["weight_hh_l0"] *= 0.5
    same(before, layer.forward(x))
    layer.inference_weights("float32", packed=True)
    after = layer.forward(x)
    assert not np.array_equal(before[0], after[0])
    same(unpacked(), after)
    # a training forward (an update follows): repacked at the next inference call
    layer.forward(x, training=True)
    layer.params["weight_ih_l1"] += 0.25
    same(unpacked(), layer.forward(x))
    # load_state_dict
    state = {k: v * 0.9 for k, v in layer.state_dict().items()}
    layer.load_state_dict(state)
    same(unpacked(), layer.forward(x))
    # a replaced params array
    layer.params["bias_hh_l1"] = layer.params["bias_hh_l1"] + 1.0
    same(unpacked(), layer.forward(x))
    # back to packing per call
    layer.inference_weights("float32")
    assert not layer.inference_packed
    layer.inference_weights(None)
    assert not layer.inference_packed and layer.inference_precision == "float32"
    layer.inference_weights("bf16", packed=True)
    assert layer.inference_packed and layer.inference_precision == "bf16"


def test_training_reads_the_live_weights():
    layer = fastlstm.LSTM(16, 24, seed=6, backend="c")
    x = data(5, 3, 16)
    layer.inference_weights("float32", packed=True)
    layer.params["weight_hh_l0"] *= 2.0  # not seen by inference, but by training
    y, _ = layer.forward(x, training=True)
    layer.backward(np.ones_like(y))
    layer.inference_weights("float32")
    np.testing.assert_array_equal(y, layer.forward(x)[0])


def test_step_reads_the_snapshot():
    layer = fastlstm.LSTM(16, 24, num_layers=2, seed=7, backend="c")
    x_t = data(1, 3, 16)[0]
    plain = layer.step(x_t)
    layer.inference_weights("float32", packed=True)
    same(plain, layer.step(x_t))
    layer.params["weight_hh_l1"] += 1.0  # in place: not seen
    same(plain, layer.step(x_t))


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_other_backends_and_paths_run_unchanged(monkeypatch, backend):
    """The numpy backend (and the C backend's BLAS path) pack nothing: the snapshot's
    copy runs as the parameters would."""
    if backend == "c":
        monkeypatch.setenv("FASTLSTM_KERNEL", "blas")
    layer = fastlstm.LSTM(12, 20, seed=8, backend=backend)
    same(*both(layer, data(6, 2, 12)))


def test_errors():
    layer = fastlstm.LSTM(4, 8, dtype=np.float64)
    with pytest.raises(ValueError, match="packed=True needs a float32 layer"):
        layer.inference_weights("float32", packed=True)
    layer.inference_weights("float32", packed=False)  # fine
    layer = fastlstm.LSTM(4, 8)
    with pytest.raises(TypeError, match="packed must be a bool"):
        layer.inference_weights("float32", packed="yes")
    W_ih, W_hh = np.zeros((32, 4), np.float32), np.zeros((32, 8), np.float32)
    pf = c_backend.PackedForward(W_ih, W_hh)
    z = np.zeros
    with pytest.raises(ValueError, match="packed must be a PackedForward of this call's"):
        c_backend.forward(z((2, 1, 4), np.float32), z((1, 8), np.float32), z((1, 8), np.float32),
                          W_ih.copy(), W_hh, z(32, np.float32), z((2, 1, 8), np.float32),
                          z((1, 8), np.float32), z((1, 8), np.float32), z((2, 1, 32), np.float32),
                          z((2, 1, 8), np.float32), keep=False, packed=pf)
    with pytest.raises(ValueError, match="W_ih and W_hh must be"):
        c_backend.PackedForward(np.zeros((32, 4), np.float32), np.zeros((16, 8), np.float32))


def test_threads_share_one_snapshot():
    """Inference calls from several threads at once read the same kept panels (made
    once, under a lock) and each gets the unpacked results."""
    from concurrent.futures import ThreadPoolExecutor

    layer = fastlstm.LSTM(20, 36, num_layers=2, seed=9, backend="c")
    xs = [data(6, 2, 20, seed=s) for s in range(8)]
    want = [layer.forward(x) for x in xs]
    layer.inference_weights("float32", packed=True)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(layer.forward, xs))
    for a, b in zip(want, got):
        same(a, b)
