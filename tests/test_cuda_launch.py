"""How the cuda backend launches, checked without a GPU: the persistent plan's
shared memory (opting in above 48 KiB, capped by FASTLSTM_CUDA_SMEM_BYTES), the
attribute set before the cooperative-grid query, the caller's stream (which
array names it, nested calls), the kept launch configurations and their silenced
low-occupancy warning, and device buffers kept across calls. Fakes stand in for
the device where the simulator cannot (it has no external streams and no
launch attributes); the simulator runs the rest.
"""

import warnings

import numpy as np
import pytest

import fastlstm

H200 = (132, 232448)   # multiprocessors, shared bytes a block may opt into (an H100/H200)


@pytest.fixture
def cb():
    if "cuda" not in fastlstm.available_backends():
        pytest.skip("cuda backend not available (no numba-cuda, or no GPU and NUMBA_ENABLE_CUDASIM unset)")
    from fastlstm.backends import cuda as module
    return module


@pytest.fixture
def device(cb, monkeypatch):
    """The backend as on a real device (the planning code's non-simulator branch)."""
    monkeypatch.setattr(cb, "SIMULATOR", False)
    monkeypatch.delenv("FASTLSTM_CUDA_LOOP", raising=False)
    monkeypatch.delenv("FASTLSTM_CUDA_SMEM_BYTES", raising=False)
    return cb


def test_h1024_keeps_w_hh_in_opted_in_shared_memory(device):
    plan = device.persistent_plan(64, 1024, 4, limits=H200)
    assert plan.units == 8 and plan.blocks == 128
    assert plan.use_smem and plan.smem_bytes == 4 * 8 * 1024 * 4 == 128 * 1024
    # float64 needs 256 KiB: more than a block may opt into, so W_hh stays in global memory.
    wide = device.persistent_plan(64, 1024, 8, limits=H200)
    assert not wide.use_smem and wide.smem_bytes == 0


def test_smem_cap_from_environment(device, monkeypatch):
    monkeypatch.setenv("FASTLSTM_CUDA_SMEM_BYTES", str(48 * 1024))
    assert not device.persistent_plan(64, 1024, 4, limits=H200).use_smem
    monkeypatch.setenv("FASTLSTM_CUDA_SMEM_BYTES", str(10**9))   # capped at the device's limit
    assert device.persistent_plan(64, 1024, 4, limits=H200).smem_bytes == 128 * 1024
    assert not device.persistent_plan(64, 2048, 4, limits=H200).use_smem   # 256 KiB
    monkeypatch.setenv("FASTLSTM_CUDA_LOOP", "steps")
    assert device.persistent_plan(64, 1024, 4, limits=H200) is None


class FakeCompiled:
    def __init__(self, fits, log):
        self.fits, self.log = fits, log

    def max_cooperative_grid_blocks(self, threads, smem):
        self.log.append(("cooperative", threads, smem))
        return self.fits


class FakeKernel:
    """A dispatcher: kernel[grid, block, stream, smem](*args) logs the launch."""

    def __init__(self, log):
        self.log = log

    def __getitem__(self, config):
        warnings.warn("Grid size 1 will likely result in GPU under-utilization due to low occupancy.",
                      device_warning(), stacklevel=2)
        self.log.append(("configure",) + tuple(config))
        return lambda *args: self.log.append(("launch", len(args)))


def device_warning():
    from fastlstm.backends.cuda import NumbaPerformanceWarning
    return NumbaPerformanceWarning


def _try(device, monkeypatch, fits, plan):
    log = []
    compiled = FakeCompiled(fits, log)
    monkeypatch.setattr(device, "_compile", lambda kernel, args: compiled)
    monkeypatch.setattr(device, "allow_dynamic_shared",
                        lambda c, nbytes: log.append(("allow", nbytes)))
    device._persistent_refused.clear()
    ran = device._try_persistent(FakeKernel(log), plan, ("fwd", 64, 1024, "<f4"), "a", "b")
    return ran, log


def test_shared_memory_attribute_set_before_the_cooperative_query(device, monkeypatch):
    plan = device.persistent_plan(64, 1024, 4, limits=H200)
    ran, log = _try(device, monkeypatch, fits=plan.blocks, plan=plan)
    assert ran
    assert log[0] == ("allow", 128 * 1024)
    assert log[1] == ("cooperative", plan.threads, 128 * 1024)
    assert log[2][0] == "configure" and log[2][1:3] == (plan.blocks, plan.threads) and log[2][4] == 128 * 1024
    assert log[3] == ("launch", 4)   # the two arguments, units per block, use_smem


def test_refused_grid_warns_and_runs_per_step_or_raises_when_forced(device, monkeypatch):
    plan = device.persistent_plan(64, 1024, 4, limits=H200)
    with pytest.warns(RuntimeWarning, match="does not fit"):
        ran, log = _try(device, monkeypatch, fits=plan.blocks - 1, plan=plan)
    assert not ran and not any(entry[0] == "launch" for entry in log)
    monkeypatch.setenv("FASTLSTM_CUDA_LOOP", "persistent")
    with pytest.raises(RuntimeError, match="FASTLSTM_CUDA_LOOP=persistent"):
        _try(device, monkeypatch, fits=plan.blocks - 1, plan=plan)


def test_allow_dynamic_shared_is_a_no_op_within_48k(cb):
    class Untouchable:
        @property
        def _codelibrary(self):
            raise AssertionError("the driver was asked for a kernel that needs no attribute")

    cb.allow_dynamic_shared(Untouchable(), 48 * 1024)
    cb.allow_dynamic_shared(Untouchable(), 0)


def test_launch_configurations_kept_and_low_occupancy_warning_silenced(device, monkeypatch):
    monkeypatch.setattr(device, "_LAUNCHES", {})
    log = []
    kernel = FakeKernel(log)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        device._launch(kernel, 1, 32)("x")
        device._launch(kernel, 1, 32)("y")
        device._launch(kernel, 2, 32)("z")
    assert [entry[0] for entry in log] == ["configure", "launch", "launch", "configure", "launch"]
    # The user's own launches still warn: the filter is ours alone.
    with pytest.warns(device_warning()):
        kernel[1, 32, 0, 0]


class OnStream:
    """A foreign device array whose version-3 interface names a stream."""

    def __init__(self, stream, host=None):
        host = np.zeros(3, np.float32) if host is None else np.ascontiguousarray(host)
        self.host = host
        self.__cuda_array_interface__ = {
            "shape": host.shape, "typestr": host.dtype.str, "data": (host.ctypes.data, False),
            "version": 3, "strides": None, "stream": stream}


class RequiresGrad:
    @property
    def __cuda_array_interface__(self):
        raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")


def test_stream_handle_of_each_kind_of_array(cb):
    assert cb.stream_handle(np.zeros(3)) is None
    assert cb.stream_handle(None) is None
    assert cb.stream_handle(OnStream(None)) is None
    assert cb.stream_handle(OnStream(cb.LEGACY_DEFAULT_STREAM)) is None   # the default stream
    assert cb.stream_handle(OnStream(cb.PER_THREAD_DEFAULT_STREAM)) == cb.PER_THREAD_DEFAULT_STREAM
    assert cb.stream_handle(OnStream(0x7F00)) == 0x7F00
    assert cb.stream_handle(RequiresGrad()) is None
    assert cb.stream_handle(cb.empty((2,), np.float32)) is None   # made on the default stream


def test_callers_stream_first_named_wins_and_nested_calls_keep_it(cb):
    assert cb.buffer_tag() == 0
    with cb.callers_stream(np.zeros(2), OnStream(None), OnStream(0x100), OnStream(0x200)):
        assert cb.buffer_tag() == 0x100
        with cb.callers_stream(OnStream(0x300)):
            assert cb.buffer_tag() == 0x100
    assert cb.buffer_tag() == 0


def test_public_calls_run_on_the_stream_their_arrays_name(cb, monkeypatch):
    if not cb.SIMULATOR:
        pytest.skip("the fake stream handle is for the simulator (a GPU run checks real streams)")
    asked = []
    monkeypatch.setattr(cb, "_stream_object", lambda handle: asked.append(handle) or 0)
    rng = np.random.default_rng(0)
    T, N, I, H = 3, 2, 2, 3
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    W_ih = rng.standard_normal((4 * H, I)).astype(np.float32)
    W_hh = rng.standard_normal((4 * H, H)).astype(np.float32)
    y, (h, c), cache = fastlstm.lstm_forward(OnStream(0x5150, x), W_ih, W_hh, backend="cuda")
    assert asked and set(asked) == {0x5150}
    want, _, _ = fastlstm.lstm_forward(x, W_ih, W_hh, backend="numpy")
    np.testing.assert_allclose(y.copy_to_host(), want, rtol=1e-5, atol=1e-6)
    asked.clear()
    fastlstm.lstm_backward(cache, np.ones((T, N, H), np.float32))
    assert set(asked) == {0x5150}   # the forward's stream, kept in its cache
    layer = fastlstm.LSTM(I, H, backend="cuda", seed=0)
    asked.clear()
    layer.forward(OnStream(0x6160, x), training=True)
    layer.backward(np.ones((T, N, H), np.float32))
    assert set(asked) == {0x6160}


def test_layer_keeps_device_buffers_across_calls(cb):
    rng = np.random.default_rng(1)
    layer = fastlstm.LSTM(2, 3, backend="cuda", seed=0)
    x = cb.as_device(rng.standard_normal((4, 2, 2)).astype(np.float32))
    layer.forward(x, training=True)
    layer.backward(cb.zeros((4, 2, 3), np.float32))
    kept = {id(a) for _, a in layer._workspace._free}
    assert len(kept) == 2   # gates and c_t
    y1, _ = layer.forward(x, training=True)
    assert not {id(a) for _, a in layer._workspace._free} & kept   # taken again, not reallocated
    want, _ = fastlstm.LSTM(2, 3, backend="numpy", seed=0).forward(x.copy_to_host())
    np.testing.assert_allclose(y1.copy_to_host(), want, rtol=1e-5, atol=1e-6)


def test_silenced_warning_is_the_class_numba_cuda_raises(cb):
    dispatcher = pytest.importorskip("numba.cuda.dispatcher")
    errors = getattr(dispatcher, "errors", None)
    if errors is None:
        pytest.skip("this numba-cuda's dispatcher names its warnings otherwise")
    assert cb.NumbaPerformanceWarning is errors.NumbaPerformanceWarning
