"""The cuda backend beyond the shared grid: device arrays in and out, the
``__cuda_array_interface__`` route, both time loops (persistent and one launch
per step, W_hh in shared memory or not), the tiled GEMM kernel against NumPy,
errors, and what fastlstm says when numba-cuda is missing. Runs on a GPU or
under Numba's simulator (NUMBA_ENABLE_CUDASIM=1); real-size checks need a GPU.
"""

import subprocess
import sys

import numpy as np
import pytest

import fastlstm
from fastlstm.backends import is_device_array
from lstm_testing import REFERENCE, assert_all_close, check_close, make_inputs, rel_err, run_layer


@pytest.fixture
def cb():
    """The cuda backend module; skips where it is not available."""
    if "cuda" not in fastlstm.available_backends():
        pytest.skip("cuda backend not available (no numba-cuda, or no GPU and NUMBA_ENABLE_CUDASIM unset)")
    from fastlstm.backends import cuda as module
    return module


def _layers(I, H, L, dtype=np.float32, **kw):
    ref = fastlstm.LSTM(I, H, L, dtype=dtype, backend=REFERENCE, seed=11, **kw)
    gpu = fastlstm.LSTM(I, H, L, dtype=dtype, backend="cuda", seed=5, **kw)
    gpu.load_state_dict(ref.state_dict())
    return gpu, ref


class InterfaceOnly:
    """A foreign device array: only ``__cuda_array_interface__`` (like CuPy or torch).

    Under the simulator device memory is host memory, so a NumPy buffer stands in.
    """

    def __init__(self, host):
        self.host = np.ascontiguousarray(host)
        self.dtype = f"foreign.{self.host.dtype}"  # like torch.float32: not a NumPy dtype
        self.__cuda_array_interface__ = {
            "shape": self.host.shape, "typestr": self.host.dtype.str,
            "data": (self.host.ctypes.data, False), "version": 3, "strides": None}


@pytest.mark.parametrize("loop", ["persistent", "steps"])
@pytest.mark.parametrize("smem", ["smem", "global"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_both_time_loops_match_reference(monkeypatch, cb, loop, smem, dtype):
    monkeypatch.setenv("FASTLSTM_CUDA_LOOP", loop)
    monkeypatch.setenv("FASTLSTM_CUDA_SMEM_BYTES", "1000000" if smem == "smem" else "0")
    T, N, I, H, L = 4, 3, 2, 7, 2
    gpu, ref = _layers(I, H, L, dtype)
    x, state, dy, dstate = make_inputs(21, T, N, I, H, L, dtype, state=True, dstate=True)
    assert_all_close(run_layer(gpu, x, state, dy, dstate), run_layer(ref, x, state, dy, dstate),
                     dtype, f"cuda {loop} {smem}")


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
def test_device_arrays_in_device_arrays_out(cb, batch_first):
    T, N, I, H, L = 3, 2, 3, 5, 2
    gpu, ref = _layers(I, H, L, batch_first=batch_first, dropout=0.5)
    x, state, dy, dstate = make_inputs(4, T, N, I, H, L, np.float32, batch_first=batch_first,
                                       state=True, dstate=True)
    ref._rng = np.random.default_rng(99)  # same dropout masks on both
    gpu._rng = np.random.default_rng(99)
    want_y, (want_h, want_c) = ref.forward(x, state, training=True)
    want_dx, (want_dh0, want_dc0) = ref.backward(dy, dstate)
    dev = cb.as_device
    y, (h, c) = gpu.forward(dev(x), (dev(state[0]), dev(state[1])), training=True)
    assert all(is_device_array(a) for a in (y, h, c))
    dx, (dh0, dc0) = gpu.backward(dev(dy), (dev(dstate[0]), dev(dstate[1])))
    assert all(is_device_array(a) for a in (dx, dh0, dc0))
    got = {"y": y, "h_n": h, "c_n": c, "dx": dx, "dh0": dh0, "dc0": dc0}
    want = {"y": want_y, "h_n": want_h, "c_n": want_c, "dx": want_dx, "dh0": want_dh0, "dc0": want_dc0}
    assert_all_close({k: a.copy_to_host() for k, a in got.items()}, want, np.float32, "device")
    assert_all_close(gpu.grads, ref.grads, np.float32, "device grads")


def test_step_on_device_matches_forward(cb):
    T, N, I, H, L = 4, 2, 3, 6, 2
    gpu, ref = _layers(I, H, L)
    x, _, _, _ = make_inputs(6, T, N, I, H, L, np.float32)
    want, _ = ref.forward(x)
    state = None
    for t in range(T):
        h_top, state = gpu.step(cb.as_device(x[t]), state)
        assert is_device_array(h_top) and is_device_array(state[0])
        np.testing.assert_allclose(h_top.copy_to_host(), want[t], rtol=1e-5, atol=1e-6)


def test_cuda_array_interface_input_is_used_in_place(cb):
    if not cb.SIMULATOR:
        pytest.skip("the stand-in interface object wraps host memory: simulator only")
    T, N, I, H = 3, 2, 4, 5
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    W_ih = rng.standard_normal((4 * H, I)).astype(np.float32)
    W_hh = rng.standard_normal((4 * H, H)).astype(np.float32)
    foreign = InterfaceOnly(x)
    view = cb.as_device(foreign)
    view[0, 0, 0] = 42.0  # writes through to the foreign buffer: no copy was made
    assert foreign.host[0, 0, 0] == 42.0
    foreign.host[0, 0, 0] = x[0, 0, 0] = 0.5
    y, (h, c), _ = fastlstm.lstm_forward(foreign, InterfaceOnly(W_ih), W_hh, training=False)
    assert is_device_array(y) and is_device_array(h)
    want, _, _ = fastlstm.lstm_forward(x, W_ih, W_hh, training=False, backend="numpy")
    np.testing.assert_allclose(y.copy_to_host(), want, rtol=1e-5, atol=1e-6)


def test_functional_backward_on_device(cb):
    T, N, I, H = 3, 2, 4, 5
    rng = np.random.default_rng(8)
    args = [rng.standard_normal(s).astype(np.float32) for s in ((T, N, I), (4 * H, I), (4 * H, H), (4 * H,))]
    dy = rng.standard_normal((T, N, H)).astype(np.float32)
    _, _, cache = fastlstm.lstm_forward(*args, backend="numpy")
    want_dx, (want_dh, want_dc), want_g = fastlstm.lstm_backward(cache, dy)
    _, _, cache = fastlstm.lstm_forward(*(cb.as_device(a) for a in args))
    dx, (dh, dc), grads = fastlstm.lstm_backward(cache, cb.as_device(dy))
    assert all(is_device_array(a) for a in [dx, dh, dc, *grads.values()])
    got = {"dx": dx, "dh0": dh, "dc0": dc, **grads}
    want = {"dx": want_dx, "dh0": want_dh, "dc0": want_dc, **want_g}
    assert_all_close({k: a.copy_to_host() for k, a in got.items()}, want, np.float32, "functional")


@pytest.mark.parametrize("ta", [0, 1])
@pytest.mark.parametrize("tb", [0, 1])
def test_tiled_gemm_matches_numpy(cb, ta, tb):
    from fastlstm.backends._cuda_kernels import kernels
    rng = np.random.default_rng(ta * 2 + tb)
    for threads, depth, (M, P, K) in ((4, 4, (19, 23, 9)), (16, 16, (70, 66, 17))):
        if cb.SIMULATOR and threads == 16 and (ta, tb) != (1, 0):
            continue  # the GPU's block shape is slow to simulate: one case of it is enough
        k = kernels(np.float32, threads, depth)
        A = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
        B = rng.standard_normal((P, K) if tb else (K, P)).astype(np.float32)
        C = rng.standard_normal((M, P)).astype(np.float32)
        bias = rng.standard_normal(P).astype(np.float32)
        want = (A.T if ta else A) @ (B.T if tb else B) + bias + C
        dC = cb.as_device(C)
        grid, block = cb.gemm_launch(M, P, k.gemm_tile, threads)
        k.gemm[grid, block](cb.as_device(A), cb.as_device(B), dC, cb.as_device(bias), ta, tb, 1)
        np.testing.assert_allclose(dC.copy_to_host(), want, rtol=1e-5, atol=1e-5)


def test_tiled_gemm_runs_the_layer(monkeypatch, cb):
    monkeypatch.setattr(cb, "GEMM", "tiled")
    T, N, I, H, L = 3, 2, 3, 4, 1
    gpu, ref = _layers(I, H, L)
    x, state, dy, dstate = make_inputs(2, T, N, I, H, L, np.float32, state=True, dstate=True)
    assert_all_close(run_layer(gpu, x, state, dy, dstate), run_layer(ref, x, state, dy, dstate),
                     np.float32, "cuda tiled gemm")


def test_device_array_errors(cb):
    layer = fastlstm.LSTM(3, 4, dtype=np.float32, backend="cuda")
    with pytest.raises(TypeError, match="x is a device array of dtype float64"):
        layer.forward(cb.as_device(np.zeros((2, 1, 3))))
    with pytest.raises(ValueError, match=r"x must have shape \(T, N, I\)"):
        layer.forward(cb.as_device(np.zeros((2, 1, 5), np.float32)))
    host_only = fastlstm.LSTM(3, 4, dtype=np.float32, backend="numpy")
    with pytest.raises(TypeError, match="device array but the 'numpy' backend"):
        host_only.forward(cb.as_device(np.zeros((2, 1, 3), np.float32)))



def test_bad_loop_knob_is_named(monkeypatch, cb):
    monkeypatch.setenv("FASTLSTM_CUDA_LOOP", "fast")
    with pytest.raises(ValueError, match="FASTLSTM_CUDA_LOOP"):
        fastlstm.LSTM(3, 4, backend="cuda").forward(np.zeros((2, 1, 3), np.float32))


def test_auto_backend_sends_device_arrays_to_cuda(cb):
    layer = fastlstm.LSTM(3, 4, dtype=np.float32)
    y, _ = layer.forward(cb.as_device(np.ones((2, 1, 3), np.float32)))
    assert is_device_array(y)
    y_host, _ = layer.forward(np.ones((2, 1, 3), np.float32))
    assert isinstance(y_host, np.ndarray)
    np.testing.assert_allclose(y.copy_to_host(), y_host, rtol=1e-5, atol=1e-6)


def _wide(a):
    """float64 copies of an input, a state tuple or None."""
    if a is None:
        return None
    return tuple(_wide(b) for b in a) if isinstance(a, tuple) else a.astype(np.float64)


def check_float32_against_float64(layer, T, N, I, H):
    """Every output and gradient of a float32 ``layer`` against float64 on the same
    float32 numbers: relative 2-norm error below 1e-5, and each element within
    1e-5 of the array's largest magnitude plus 1e-4 of its own. (At T*N in the
    thousands a plain atol of 1e-5 holds for no float32 code, the NumPy reference's
    included: a dW entry sums T*N terms. How those sums are taken is tested on its
    own by test_long_sums_are_summed_in_slabs.)"""
    exact = fastlstm.LSTM(I, H, 1, dtype=np.float64, backend=REFERENCE)
    exact.load_state_dict({k: v.astype(np.float64) for k, v in layer.state_dict().items()})
    x, state, dy, dstate = make_inputs(1, T, N, I, H, 1, np.float32, state=True, dstate=True)
    want = run_layer(exact, _wide(x), _wide(state), _wide(dy), _wide(dstate))
    got = run_layer(layer, x, state, dy, dstate)
    for key, w in want.items():
        assert rel_err(got[key], w) < 1e-5, key
        check_close(got[key], w, 1e-5 * np.max(np.abs(w)), 1e-4, key)


def test_real_sizes_on_a_gpu(cb):
    if cb.SIMULATOR:
        pytest.skip("real sizes need a GPU (the simulator runs threads in Python)")
    T, N, I, H = 50, 64, 256, 256
    check_float32_against_float64(fastlstm.LSTM(I, H, 1, backend="cuda", seed=5), T, N, I, H)


@pytest.mark.parametrize("kernel", ["gemm", "gemm_simple", "column_sums"])
def test_long_sums_are_summed_in_slabs(cb, kernel):
    """Sums over K = 2**15 positive float32 terms (like dW and db over T*N rows): one
    running sum is off by about 3e-6 relative here, partials of SUM_SLAB terms by 2e-7."""
    from fastlstm.backends._cuda_kernels import kernels
    if cb.SIMULATOR and kernel == "gemm":
        pytest.skip("the tiled kernel's barriers over 2**15 rows take minutes on the simulator")
    K = 1 << 15
    rng = np.random.default_rng(4)
    A = rng.uniform(0.5, 1.5, (K, 8)).astype(np.float32)
    B = rng.uniform(0.5, 1.5, (K, 3)).astype(np.float32)
    k = kernels(np.dtype(np.float32))
    if kernel == "column_sums":
        out = cb.zeros(8, np.float32)
        k.column_sums[1, 8](cb.as_device(A), out)
        want = A.astype(np.float64).sum(axis=0)
    else:
        out = cb.zeros((8, 3), np.float32)
        cb.GEMM, saved = ("tiled" if kernel == "gemm" else "simple"), cb.GEMM
        try:
            cb._gemm(k, cb.as_device(A), cb.as_device(B), out, ta=1)
        finally:
            cb.GEMM = saved
        want = A.astype(np.float64).T @ B.astype(np.float64)
    got = out.copy_to_host()
    assert np.max(np.abs(got - want) / want) < 1e-6


def test_missing_numba_is_reported():
    # Runs everywhere: a process where numba cannot be imported still works on the host.
    code = ("import sys; sys.modules['numba'] = None\n"
            "import fastlstm, numpy as np\n"
            "assert 'cuda' not in fastlstm.available_backends()\n"
            "print(fastlstm.backends.unavailable_reasons()['cuda'])\n"
            "y, _ = fastlstm.LSTM(2, 3)(np.ones((2, 1, 2)))\n"
            "assert y.shape == (2, 1, 3)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "numba-cuda is not installed" in out.stdout
    assert "fastlstm[cuda]" in out.stdout


def test_gpu_check_script_runs(cb, tmp_path):
    """bench/gpu_check.py end to end on tiny sizes (the simulator, or a real GPU)."""
    import json
    import os
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    if not script.exists():
        pytest.skip("bench/gpu_check.py is not in this tree")
    out = tmp_path / "gpu.md"
    cmd = [sys.executable, str(script), "--allow-simulator", "--hs", "8", "--ns", "1", "2",
           "--steps", "3", "--reps", "1", "--out", str(out)]
    env = dict(os.environ)
    root = str(Path(fastlstm.__file__).resolve().parents[1])  # the package under test
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    text = out.read_text()
    assert text.count("| 8 | 1 |") == 2 and text.count("| 8 | 2 |") == 2  # wall and event tables
    assert "| bidirectional H=8 N=2 T=3 |" in text and "| lengths H=8 N=2 T=3 |" in text
    assert "ms (events)" in text and "smem KiB" in text
    assert "Status:" not in text and text.rstrip().endswith("Correctness: all below 1e-5")
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["status"] == "done" and [(r["H"], r["N"]) for r in data["rows"]] == [(8, 1), (8, 2)]
    assert {"fwd_persistent_ev", "fb_steps_ev", "plan"} <= set(data["rows"][0])


@pytest.mark.parametrize("config, lengths", [
    (dict(bidirectional=True), None),
    (dict(proj_size=2), None),
    (dict(), [3, 1, 0]),
    (dict(bidirectional=True, proj_size=3, num_layers=2), [2, 4, 1]),
], ids=["bidir", "proj", "lengths", "bidir-proj-lengths-L2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_lstm_options_match_reference(monkeypatch, cb, config, lengths, dtype):
    """Bidirectional layers, projections and variable lengths on the device kernels
    (one launch per step), against the NumPy reference."""
    T, N, I, H = 4, 3, 2, 5
    ref = fastlstm.LSTM(I, H, dtype=dtype, backend=REFERENCE, seed=11, **config)
    gpu = fastlstm.LSTM(I, H, dtype=dtype, backend="cuda", seed=5, **config)
    gpu.load_state_dict(ref.state_dict())
    D, L, K = 2 if ref.bidirectional else 1, ref.num_layers, ref.proj_size or H
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, N, I)).astype(dtype)
    state = (rng.standard_normal((D * L, N, K)).astype(dtype), rng.standard_normal((D * L, N, H)).astype(dtype))
    dy = rng.standard_normal((T, N, D * K)).astype(dtype)
    dstate = (rng.standard_normal((D * L, N, K)).astype(dtype), rng.standard_normal((D * L, N, H)).astype(dtype))

    def run(layer):
        layer.zero_grad()
        y, (h, c) = layer.forward(x, state, lengths=lengths, training=True)
        dx, (dh0, dc0) = layer.backward(dy, dstate)
        return dict(y=y, h_n=h, c_n=c, dx=dx, dh0=dh0, dc0=dc0,
                    **{f"grad.{k}": g.copy() for k, g in layer.grads.items()})

    assert_all_close(run(gpu), run(ref), dtype, "cuda options")


def test_bidirectional_on_device_arrays(cb):
    """Device input through a bidirectional layer: the directions are joined and split on the device."""
    T, N, I, H = 3, 2, 2, 4
    ref = fastlstm.LSTM(I, H, bidirectional=True, backend=REFERENCE, seed=1)
    gpu = fastlstm.LSTM(I, H, bidirectional=True, backend="cuda")
    gpu.load_state_dict(ref.state_dict())
    x = np.random.default_rng(0).standard_normal((T, N, I)).astype(np.float32)
    y_ref, _ = ref.forward(x, training=True)
    dx_ref, _ = ref.backward(np.ones_like(y_ref))
    y, _ = gpu.forward(cb.as_device(x), training=True)
    assert is_device_array(y) and y.shape == (T, N, 2 * H)
    dx, _ = gpu.backward(cb.as_device(np.ones((T, N, 2 * H), np.float32)))
    np.testing.assert_allclose(y.copy_to_host(), y_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx.copy_to_host(), dx_ref, rtol=1e-5, atol=1e-6)


def test_step_with_a_projection_on_the_device_kernels(cb):
    T, N, I, H = 3, 2, 2, 5
    ref = fastlstm.LSTM(I, H, 2, proj_size=2, backend=REFERENCE, seed=3)
    gpu = fastlstm.LSTM(I, H, 2, proj_size=2, backend="cuda")
    gpu.load_state_dict(ref.state_dict())
    x = np.random.default_rng(1).standard_normal((T, N, I)).astype(np.float32)
    s_ref = s_gpu = None
    for t in range(T):
        h_ref, s_ref = ref.step(x[t], s_ref)
        h_gpu, s_gpu = gpu.step(x[t], s_gpu)
        np.testing.assert_allclose(h_gpu, h_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s_gpu[1], s_ref[1], rtol=1e-5, atol=1e-6)


def test_gemm_launch_fits_the_grid_limits_for_long_inputs(cb):
    """T*N beyond 65,535 row tiles (4.2M rows at tile 64) stays within the grid: rows
    go to grid x (2**31 - 1), not grid y (65,535)."""
    rows = 65_536 * 64 + 5                     # T*N = 4,194,309 > 4,194,240
    (blocks,), block = cb.gemm_launch(rows, 1200, 64, 16)
    assert blocks == 65_537 * 19 and blocks <= cb.MAX_GRID_X and block == (16, 16)
    with pytest.raises(ValueError, match="more than a grid holds"):
        cb.gemm_launch(2**40, 2**20, 64, 16)
